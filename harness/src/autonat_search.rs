//! AutoNAT's automatic generation-strategy search
//! (LeapLabTHU/ImprovedNAT `train.py --mode search`, class `DisPatcher`), measured with
//! genbench's own metrics.
//!
//! The strategy of a T-step sampler is a vector of 4T-2 numbers (per-step mask ratios,
//! re-masking temperatures, sampling temperatures, guidance scales). The search minimises the
//! FID of [`SearchJob::samples`] generated images against a reference batch by finite-difference gradient
//! descent, as the paper and the reference code do:
//! * gradient: one-sided differences, one coordinate at a time, step 0.01 for the ratios (the
//!   perturbed ratio clipped to [0, 1]) and 0.1 for everything else (floored at 1e-4);
//!   `g_i = (FID(theta + d e_i) - FID(theta)) / d_actual`, i.e. 4T-2 extra evaluations per update;
//! * update: SGD with momentum 0.5 (PyTorch semantics: `buf = 0.5 buf + g`, first `buf = g`;
//!   `theta -= lr buf`), learning rate 1e-3 for the ratios and 0.1 for the rest, optional
//!   gradient clipping; then ratios are clamped to [0, 0.99] and the rest to >= 1e-4.
//!
//! Differences from the reference, on purpose:
//! * Every FID evaluation uses the same class labels and the same random stream (common random
//!   numbers, all from `--seed`). The reference draws fresh labels and noise for every
//!   evaluation, so its finite differences also measure sampling noise; fixing them makes each
//!   difference a function of the strategy alone and makes a re-run reproduce the whole search.
//! * If a ratio sits at 1 (where the +0.01 step is clipped away) the difference is taken
//!   downwards, -0.01, instead of dividing by zero.
//! * FID uses genbench's Inception port on uint8 images (ADM preprocessing); the reference feeds
//!   float [0, 1] images to pytorch-fid's network.
//!
//! Reference statistics are computed once (or read from the npz) before the first evaluation.
//! Outputs in `--out`: `strategy.yaml` (best base FID so far), `strategies/stp_<k>.yaml` (the
//! strategy after each update, as `DisPatcher.save`), `iterations.csv` (FID per iteration and
//! the time split), `evaluations.csv` (every FID evaluation), `fid.png` / `fid.svg`, and
//! `summary.json`. Every file is rewritten atomically after each iteration, and `state.json`
//! after every FID evaluation: running the same command again continues an interrupted search
//! where it stopped (at most the evaluation in flight is lost) and gives the same result as an
//! uninterrupted run; a larger `--iters` extends a finished one. Any other changed setting is
//! refused, naming it.

use anyhow::{bail, ensure, Context, Result};
use candle_core::Device;
use genbench_metrics::features::{ExtractorOptions, InceptionExtractor};
use genbench_metrics::fid::frechet_distance;
use genbench_metrics::inception::network::POOL3_DIM;
use genbench_metrics::inception::weights::{default_cache_dir, WeightsSource};
use genbench_metrics::npz;
use genbench_metrics::stats::{FeatureStats, StatsAccumulator};
use genbench_models::generator::{to_uint8_nhwc_from_unit, NoObserver};
use genbench_models::generators::autonat::{autonat_model, AutoNatGenerator, AutoNatSpec};
use genbench_models::generators::autonat_strategy::{ParamGroup, Strategy};
use genbench_runtime::timer::Stopwatch;
use genbench_runtime::{RandomSource, SeededSource};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

use crate::model_registry::{ModelRequest, RawSettings};
use crate::plots::{palette, write_chart, Chart, Marker, Series, Style};

/// A whole search: the network, the evaluation set, the optimiser and where the outputs go.
/// (`genbench autonat-search` fills it from its flags; the messages name those flags.)
#[derive(Clone, Debug)]
pub struct SearchJob {
    /// The network (published name or fixture-style `config.json`, weights); its sampler
    /// settings are ignored: the search sets the step count and the strategy.
    pub model: ModelRequest,
    /// Generation steps T.
    pub steps: usize,
    /// Images generated per FID evaluation (the reference uses 50,000).
    pub samples: usize,
    /// Reference batch: an ADM-style npz with `mu`/`sigma` statistics or `arr_0` images.
    pub reference: Option<PathBuf>,
    /// Starting strategy: a YAML file or a built-in (search-init, maskgit-cosine, autonat-l-t8).
    pub init: String,
    /// Seed of the labels and of every evaluation's random stream.
    pub seed: u64,
    /// Images per generation call.
    pub batch: usize,
    /// Output folder.
    pub out: PathBuf,
    pub settings: SearchSettings,
    pub device: Device,
    /// The generator's float type (the runtime's dtype table decides what the device allows);
    /// the Inception always runs in f32.
    pub dtype: genbench_runtime::DTypePolicy,
    /// Inception weights file; None: the cached FID Inception, fetched on first use.
    pub inception_weights: Option<PathBuf>,
    /// Cache folder (None: the metrics crate's default).
    pub cache_dir: Option<PathBuf>,
    /// Images per Inception forward.
    pub inception_batch: usize,
}

/// The optimiser's settings (see the module docs).
#[derive(Clone, Debug, Serialize)]
pub struct SearchSettings {
    pub iters: usize,
    pub lr_ratios: f64,
    pub lr_others: f64,
    pub momentum: f64,
    pub step_ratios: f64,
    pub step_others: f64,
    pub clip_grad: Option<f64>,
}

impl SearchSettings {
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("lr-ratios", self.lr_ratios),
            ("lr-others", self.lr_others),
            ("step-ratios", self.step_ratios),
            ("step-others", self.step_others),
        ] {
            ensure!(v > 0.0 && v.is_finite(), "--{name} must be a positive number, got {v}");
        }
        ensure!((0.0..1.0).contains(&self.momentum), "--momentum must be in [0, 1), got {}", self.momentum);
        if let Some(c) = self.clip_grad {
            ensure!(c > 0.0, "--clip-grad must be positive, got {c}");
        }
        Ok(())
    }
}

/// Wall time of one FID evaluation, split by phase.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct EvalTiming {
    pub generation_s: f64,
    pub inception_s: f64,
    pub fid_s: f64,
}

impl EvalTiming {
    fn add(&mut self, o: &EvalTiming) {
        self.generation_s += o.generation_s;
        self.inception_s += o.inception_s;
        self.fid_s += o.fid_s;
    }
    fn total(&self) -> f64 {
        self.generation_s + self.inception_s + self.fid_s
    }
}

/// One FID evaluation of the search.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Evaluation {
    /// Update index the evaluation belongs to (0 = before the first update).
    pub iter: usize,
    /// `base` or `grad` (a finite-difference probe).
    pub phase: String,
    /// The perturbed parameter (`manual_cfg[3]`), empty for base evaluations.
    pub param: String,
    pub fid: f64,
    pub timing: EvalTiming,
}

/// One iteration's summary: the base FID after `iter` updates and what the iteration cost.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IterationRecord {
    pub iter: usize,
    pub fid: f64,
    pub best_fid: f64,
    /// Sum over the iteration's evaluations (the 4T-2 probes of the gradient that led here
    /// plus this base evaluation; only the base one for iteration 0).
    pub evaluations: usize,
    pub timing: EvalTiming,
    /// Wall time of the iteration (summed over sessions when it was resumed).
    pub wall_s: f64,
    pub params: Vec<f64>,
}

/// Everything the search needs to continue after an interruption, saved after every FID
/// evaluation (`state.json`): an interrupted search loses at most the evaluation in flight.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SearchState {
    pub steps: usize,
    /// Current parameters (after `iterations.len() - 1` updates).
    pub theta: Vec<f64>,
    pub momentum_buf: Option<Vec<f64>>,
    /// Finite-difference entries of the update in progress, in parameter order.
    pub grad: Vec<f64>,
    /// Time spent so far on the update in progress.
    pub pending_timing: EvalTiming,
    pub pending_wall_s: f64,
    pub best_params: Vec<f64>,
    pub best_fid: f64,
    /// Completed iterations (0 = the initial strategy's evaluation).
    pub iterations: Vec<IterationRecord>,
    pub evaluations: Vec<Evaluation>,
}

impl SearchState {
    fn new(init: &Strategy) -> Self {
        let theta = init.to_params();
        SearchState {
            steps: init.steps(),
            best_params: theta.clone(),
            theta,
            momentum_buf: None,
            grad: vec![],
            pending_timing: EvalTiming::default(),
            pending_wall_s: 0.0,
            best_fid: f64::INFINITY,
            iterations: vec![],
            evaluations: vec![],
        }
    }

    /// Updates completed so far (`None` before the initial evaluation).
    pub fn updates_done(&self) -> Option<usize> {
        self.iterations.last().map(|r| r.iter)
    }

    pub fn outcome(&self) -> Result<SearchOutcome> {
        Ok(SearchOutcome {
            best: Strategy::from_params(self.steps, &self.best_params)?,
            best_fid: self.best_fid,
            last: Strategy::from_params(self.steps, &self.theta)?,
            iterations: self.iterations.clone(),
            evaluations: self.evaluations.clone(),
        })
    }
}

/// Result of a search.
#[derive(Clone, Debug)]
pub struct SearchOutcome {
    pub best: Strategy,
    pub best_fid: f64,
    pub last: Strategy,
    pub iterations: Vec<IterationRecord>,
    pub evaluations: Vec<Evaluation>,
}

/// Something that scores a strategy (lower is better) and says how long it took.
pub trait Objective {
    fn evaluate(&mut self, strategy: &Strategy) -> Result<(f64, EvalTiming)>;
}

/// What the search reports to its caller.
pub enum Progress<'a> {
    /// After every FID evaluation: the state to save.
    Evaluated(&'a SearchState),
    /// After every base evaluation (iteration 0 included), once the state is saved.
    IterationDone(&'a SearchState),
}

/// The finite-difference SGD search over a strategy's parameter vector, from `init` or from a
/// saved `resume` state (which then carries the strategy; `init` is ignored). Runs until
/// `settings.iters` updates are done. The objective must not depend on the call history for
/// the resumed search to equal an uninterrupted one (the FID objective uses fixed streams).
pub fn run_search(
    objective: &mut dyn Objective,
    init: Strategy,
    settings: &SearchSettings,
    resume: Option<SearchState>,
    on_progress: &mut dyn FnMut(Progress<'_>) -> Result<()>,
) -> Result<SearchOutcome> {
    settings.validate()?;
    let mut st = match resume {
        Some(s) => s,
        None => {
            init.validate()?;
            SearchState::new(&init)
        }
    };
    let steps = st.steps;
    let groups = Strategy::param_groups(steps);
    ensure!(st.theta.len() == groups.len() && st.grad.len() < groups.len(), "saved search state does not fit a {steps}-step strategy");
    let mut session_start = std::time::Instant::now();

    if st.iterations.is_empty() {
        let (fid, t) = objective.evaluate(&Strategy::from_params(steps, &st.theta)?)?;
        st.evaluations.push(Evaluation { iter: 0, phase: "base".into(), param: String::new(), fid, timing: t });
        st.best_fid = fid;
        st.best_params = st.theta.clone();
        st.iterations.push(IterationRecord {
            iter: 0,
            fid,
            best_fid: fid,
            evaluations: 1,
            timing: t,
            wall_s: session_start.elapsed().as_secs_f64(),
            params: st.theta.clone(),
        });
        on_progress(Progress::Evaluated(&st))?;
        on_progress(Progress::IterationDone(&st))?;
        session_start = std::time::Instant::now();
    }

    while st.iterations.len() <= settings.iters {
        let iter = st.iterations.len();
        let base_fid = st.iterations.last().unwrap().fid;
        let wall = |st: &SearchState, since: std::time::Instant| st.pending_wall_s + since.elapsed().as_secs_f64();
        // Finite-difference gradient, one coordinate at a time (continuing a saved partial one).
        for i in st.grad.len()..st.theta.len() {
            let (lo, hi, step) = match groups[i] {
                ParamGroup::Ratio => (0.0, 1.0, settings.step_ratios),
                ParamGroup::Unbounded => (1e-4, f64::INFINITY, settings.step_others),
            };
            let mut probe = st.theta.clone();
            probe[i] = (st.theta[i] + step).clamp(lo, hi);
            if probe[i] == st.theta[i] {
                // The bound blocks the upward step: difference downwards instead.
                probe[i] = (st.theta[i] - step).clamp(lo, hi);
            }
            let delta = probe[i] - st.theta[i];
            ensure!(delta != 0.0, "parameter {} cannot be perturbed", Strategy::param_name(steps, i));
            let (fid, t) = objective.evaluate(&Strategy::from_params(steps, &probe)?)?;
            st.pending_timing.add(&t);
            st.evaluations.push(Evaluation { iter, phase: "grad".into(), param: Strategy::param_name(steps, i), fid, timing: t });
            st.grad.push((fid - base_fid) / delta);
            st.pending_wall_s = wall(&st, session_start);
            session_start = std::time::Instant::now();
            on_progress(Progress::Evaluated(&st))?;
        }
        let mut grad = std::mem::take(&mut st.grad);
        if let Some(c) = settings.clip_grad {
            grad.iter_mut().for_each(|g| *g = g.clamp(-c, c));
        }
        // SGD with momentum (torch.optim.SGD, dampening 0, no Nesterov).
        let buf: Vec<f64> = match st.momentum_buf.take() {
            None => grad,
            Some(b) => b.iter().zip(&grad).map(|(b, g)| settings.momentum * b + g).collect(),
        };
        for (i, theta) in st.theta.iter_mut().enumerate() {
            let (lr, lo, hi) = match groups[i] {
                ParamGroup::Ratio => (settings.lr_ratios, 0.0, 0.99),
                ParamGroup::Unbounded => (settings.lr_others, 1e-4, f64::INFINITY),
            };
            *theta = (*theta - lr * buf[i]).clamp(lo, hi);
        }
        st.momentum_buf = Some(buf);
        let (fid, t) = objective.evaluate(&Strategy::from_params(steps, &st.theta)?)?;
        let mut timing = std::mem::take(&mut st.pending_timing);
        timing.add(&t);
        st.evaluations.push(Evaluation { iter, phase: "base".into(), param: String::new(), fid, timing: t });
        if fid < st.best_fid {
            st.best_fid = fid;
            st.best_params = st.theta.clone();
        }
        st.iterations.push(IterationRecord {
            iter,
            fid,
            best_fid: st.best_fid,
            evaluations: st.theta.len() + 1,
            timing,
            wall_s: wall(&st, session_start),
            params: st.theta.clone(),
        });
        st.pending_wall_s = 0.0;
        on_progress(Progress::Evaluated(&st))?;
        on_progress(Progress::IterationDone(&st))?;
        // An iteration's wall time covers its evaluations, not the writing of the outputs.
        session_start = std::time::Instant::now();
    }
    st.outcome()
}

/// FID of a strategy: generate `labels.len()` images with the same labels and the same random
/// streams every time, extract Inception pool3 features, Fréchet distance to the reference.
pub struct FidObjective<'a> {
    pub generator: &'a mut AutoNatGenerator,
    pub extractor: &'a InceptionExtractor,
    pub reference: &'a FeatureStats,
    pub labels: Vec<u32>,
    pub batch: usize,
    pub seed: u64,
}

/// Class labels of the evaluation set: uniform over `0..num_classes` from `seed` (stream 0).
pub fn evaluation_labels(n: usize, num_classes: usize, seed: u64) -> Result<Vec<u32>> {
    let u = SeededSource::for_stream(seed, 0).uniform(n)?;
    Ok(u.into_iter().map(|x| ((x as f64 * num_classes as f64) as usize).min(num_classes - 1) as u32).collect())
}

impl Objective for FidObjective<'_> {
    fn evaluate(&mut self, strategy: &Strategy) -> Result<(f64, EvalTiming)> {
        self.generator.set_strategy("search", strategy.clone())?;
        let device = self.generator.device().clone();
        let sw = Stopwatch::start(&device)?;
        let mut images = Vec::new();
        let (mut h, mut w) = (0, 0);
        for (b, chunk) in self.labels.chunks(self.batch).enumerate() {
            // Stream 1 + b for batch b: identical draws for every strategy evaluated.
            let mut rng = SeededSource::for_stream(self.seed, 1 + b as u64);
            let out = self.generator.generate(chunk, &mut rng, &mut NoObserver, None)?;
            let (bytes, _, hh, ww) = to_uint8_nhwc_from_unit(&out.images.clamp(0f32, 1f32)?)?;
            images.extend_from_slice(&bytes);
            (h, w) = (hh, ww);
        }
        let generation_s = sw.elapsed()?.as_secs_f64();
        let n = self.labels.len();
        let t = std::time::Instant::now();
        let features = self.extractor.extract(&images, n, h, w)?;
        let inception_s = t.elapsed().as_secs_f64();
        let t = std::time::Instant::now();
        let stats = FeatureStats::from_features(&features.pool3, POOL3_DIM)?;
        let fid = frechet_distance(&stats, self.reference)?.value;
        let fid_s = t.elapsed().as_secs_f64();
        ensure!(fid.is_finite(), "FID is not finite for strategy {strategy:?}");
        Ok((fid, EvalTiming { generation_s, inception_s, fid_s }))
    }
}

/// Reference statistics from an npz: its `mu`/`sigma` if present, else the features of its
/// `arr_0` images (computed once, through the feature cache).
pub fn reference_stats(path: &Path, extractor: &InceptionExtractor, batch: usize) -> Result<FeatureStats> {
    let stats = npz::read_statistics(path)?;
    if let Some(pool) = stats.pool {
        pool.validate(&path.display().to_string())?;
        ensure!(pool.dim() == POOL3_DIM, "{}: mu has {} entries, expected {POOL3_DIM}", path.display(), pool.dim());
        return Ok(pool);
    }
    let names = npz::array_names(path)?;
    if !names.iter().any(|n| n == "arr_0") {
        bail!("{}: no reference statistics (mu/sigma) and no images (arr_0); the search needs one of them", path.display());
    }
    let info = npz::read_images_info(path)?;
    let mut acc = StatsAccumulator::new(POOL3_DIM);
    npz::for_each_image_batch(path, batch.max(1), |imgs, count| {
        let (f, _) = extractor.extract_cached(imgs, count, info.h, info.w)?;
        acc.push_batch(&f.pool3, POOL3_DIM)
    })?;
    ensure!(info.n >= 2, "{}: {} reference image(s); FID needs at least 2", path.display(), info.n);
    acc.finish()
}

/// Runs (or continues, see the module docs) the search `job` describes, writing its outputs.
pub fn run_search_job(job: &SearchJob) -> Result<SearchOutcome> {
    let args = job;
    let reference_path = args.reference.clone().with_context(|| {
        "the search measures FID against a reference batch: pass --reference FILE.npz, an ADM-style npz with \
         `mu`/`sigma` statistics (e.g. fid_stats_imagenet256_guided_diffusion.npz) or `arr_0` uint8 images \
         (e.g. VIRTUAL_imagenet256_labeled.npz)"
    })?;
    ensure!(reference_path.is_file(), "reference batch {} does not exist", reference_path.display());
    ensure!(args.steps >= 1, "--steps must be at least 1");
    ensure!(args.samples >= 2, "--samples must be at least 2 (FID needs a covariance)");
    ensure!(args.batch >= 1, "--batch must be at least 1");
    let settings = &args.settings;
    settings.validate()?;
    let init = Strategy::resolve(&args.init, args.steps).context("--init")?;

    let device = args.device.clone();
    let request = ModelRequest {
        settings: RawSettings::from_iter([("num_iter".to_string(), args.steps.into()), ("strategy".to_string(), args.init.clone().into())]),
        ..args.model.clone()
    };
    let config = match &request.config {
        Some(p) => Some(serde_json::from_str::<serde_json::Value>(
            &std::fs::read_to_string(p).with_context(|| format!("cannot read --config {}", p.display()))?,
        )?),
        None => None,
    };
    if let Some(c) = &config {
        ensure!(AutoNatSpec::is_fixture_config(c), "--config {} is not an AutoNAT config", request.config.as_ref().unwrap().display());
    }
    let (spec, weights) = autonat_model(&request, config.as_ref())?;
    let mut generator = spec.build(&weights, &device, args.dtype.compute_dtype(&device)?)?;

    let cache_dir = args.cache_dir.clone().unwrap_or_else(default_cache_dir);
    let extractor = InceptionExtractor::new_in(
        ExtractorOptions {
            device: device.clone(),
            batch_size: args.inception_batch,
            weights: args.inception_weights.clone().map(WeightsSource::File).unwrap_or_default(),
            ..Default::default()
        },
        &cache_dir,
    )?;
    let t = std::time::Instant::now();
    let reference = reference_stats(&reference_path, &extractor, args.inception_batch)?;
    let reference_s = t.elapsed().as_secs_f64();
    eprintln!("reference statistics from {} ({:.1} s, computed once)", reference_path.display(), reference_s);

    let labels = evaluation_labels(args.samples, genbench_models::generator::Generator::num_classes(&generator), args.seed)?;
    std::fs::create_dir_all(args.out.join("strategies")).with_context(|| format!("cannot create {}", args.out.display()))?;
    // What defines the search: a saved state is continued only under the same key.
    let search_key = serde_json::json!({
        "model": spec.name,
        "config": request.config.as_ref().map(|p| p.display().to_string()),
        "ckpt": request.ckpt.as_ref().map(|p| p.display().to_string()),
        "vae": request.vae.as_ref().map(|p| p.display().to_string()),
        "random_init": request.random_init,
        "steps": args.steps,
        "samples": args.samples,
        "batch": args.batch,
        "seed": args.seed,
        "dtype": args.dtype.name(),
        "init": args.init,
        "reference": reference_path.display().to_string(),
        "lr_ratios": settings.lr_ratios,
        "lr_others": settings.lr_others,
        "momentum": settings.momentum,
        "step_ratios": settings.step_ratios,
        "step_others": settings.step_others,
        "clip_grad": settings.clip_grad,
        "inception_weights_sha1": extractor.weights_sha1(),
    });
    let meta = serde_json::json!({
        "genbench_version": env!("CARGO_PKG_VERSION"),
        "search": search_key,
        "iters": settings.iters,
        "reference_stats_s": reference_s,
        "device": format!("{device:?}"),
    });
    let state_path = args.out.join("state.json");
    let resume = load_saved_state(&state_path, &search_key)?;
    if let Some(s) = &resume {
        eprintln!(
            "resuming the search in {}: {} update(s) done, {} of {} probes of the next one",
            args.out.display(),
            s.updates_done().unwrap_or(0),
            s.grad.len(),
            s.theta.len()
        );
    }
    let mut objective = FidObjective {
        generator: &mut generator,
        extractor: &extractor,
        reference: &reference,
        labels,
        batch: args.batch,
        seed: args.seed,
    };
    let out_dir = args.out.clone();
    let outcome = run_search(&mut objective, init, settings, resume, &mut |progress| match progress {
        Progress::Evaluated(st) => {
            write_atomic(&state_path, &serde_json::to_string(&serde_json::json!({ "search": search_key, "state": st }))?)
        }
        Progress::IterationDone(st) => {
            let last = st.iterations.last().unwrap();
            eprintln!(
                "iter {:>3}: FID {:.4} (best {:.4}); {:.1} s = generation {:.1} + Inception {:.1} + FID {:.2} over {} evaluation(s)",
                last.iter,
                last.fid,
                last.best_fid,
                last.wall_s,
                last.timing.generation_s,
                last.timing.inception_s,
                last.timing.fid_s,
                last.evaluations
            );
            write_outputs(&out_dir, &st.outcome()?, &meta)
        }
    })?;
    eprintln!("best FID {:.4}; strategy written to {}", outcome.best_fid, args.out.join("strategy.yaml").display());
    Ok(outcome)
}

/// The saved state in `path` if there is one, after checking it belongs to the same search.
fn load_saved_state(path: &Path, key: &serde_json::Value) -> Result<Option<SearchState>> {
    if !path.is_file() {
        return Ok(None);
    }
    let fix = "delete it (and the folder's other files) to start afresh, or choose another --out";
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    #[derive(Deserialize)]
    struct Saved {
        search: serde_json::Value,
        state: SearchState,
    }
    let saved: Saved =
        serde_json::from_str(&text).with_context(|| format!("{} is not a readable genbench search state; {fix}", path.display()))?;
    if let (Some(want), Some(have)) = (key.as_object(), saved.search.as_object()) {
        for (field, value) in want {
            let old = have.get(field).unwrap_or(&serde_json::Value::Null);
            ensure!(
                old == value,
                "{} holds a search with a different `{field}` ({old} there, {value} now); resume it with the same \
                 settings (only --iters may change), or {fix}",
                path.display()
            );
        }
    }
    Ok(Some(saved.state))
}

fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot move {} into place", path.display()))
}

/// Writes every output file for the search so far.
pub fn write_outputs(dir: &Path, o: &SearchOutcome, meta: &serde_json::Value) -> Result<()> {
    let steps = o.last.steps();
    o.best.write_yaml(&dir.join("strategy.yaml"))?;
    let last = o.iterations.last().unwrap();
    o.last.write_yaml(&dir.join("strategies").join(format!("stp_{}.yaml", last.iter)))?;

    let mut csv = String::from("iter,fid,best_fid,evaluations,wall_s,generation_s,inception_s,fid_s,params\n");
    for r in &o.iterations {
        let params: Vec<String> = r.params.iter().map(|p| format!("{p:.17}")).collect();
        csv.push_str(&format!(
            "{},{:.17},{:.17},{},{:.3},{:.3},{:.3},{:.3},\"{}\"\n",
            r.iter,
            r.fid,
            r.best_fid,
            r.evaluations,
            r.wall_s,
            r.timing.generation_s,
            r.timing.inception_s,
            r.timing.fid_s,
            params.join(" ")
        ));
    }
    write_atomic(&dir.join("iterations.csv"), &csv)?;
    let mut csv = String::from("iter,phase,param,fid,generation_s,inception_s,fid_s\n");
    for e in &o.evaluations {
        csv.push_str(&format!(
            "{},{},{},{:.17},{:.3},{:.3},{:.3}\n",
            e.iter, e.phase, e.param, e.fid, e.timing.generation_s, e.timing.inception_s, e.timing.fid_s
        ));
    }
    write_atomic(&dir.join("evaluations.csv"), &csv)?;

    let points: Vec<(f64, f64)> = o.iterations.iter().map(|r| (r.iter as f64, r.fid)).collect();
    let best: Vec<(f64, f64)> = o.iterations.iter().map(|r| (r.iter as f64, r.best_fid)).collect();
    let mut chart = Chart::new(format!("AutoNAT strategy search (T = {steps})"), "iteration (strategy updates)", "FID");
    chart.series.push(Series::new("FID", points, Style::LinePoints(Marker::Circle), palette(0)));
    chart.series.push(Series::new("best so far", best, Style::Dashed, palette(1)));
    write_chart(&chart, &dir.join("fid"))?;

    let evals: Vec<&Evaluation> = o.evaluations.iter().collect();
    let mean = |f: &dyn Fn(&EvalTiming) -> f64| evals.iter().map(|e| f(&e.timing)).sum::<f64>() / evals.len() as f64;
    let full_iters: Vec<&IterationRecord> = o.iterations.iter().filter(|r| r.iter > 0).collect();
    let summary = serde_json::json!({
        "meta": meta,
        "best_fid": o.best_fid,
        "best_strategy": o.best.to_yaml_string(),
        "iterations": o.iterations.len() - 1,
        "evaluations": o.evaluations.len(),
        "per_evaluation_mean_s": {
            "generation": mean(&|t| t.generation_s),
            "inception": mean(&|t| t.inception_s),
            "fid": mean(&|t| t.fid_s),
            "total": mean(&|t| t.total()),
        },
        "per_iteration_wall_s": full_iters.iter().map(|r| r.wall_s).collect::<Vec<_>>(),
    });
    write_atomic(&dir.join("summary.json"), &serde_json::to_string_pretty(&summary)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A smooth objective with a known minimum: sum of squared distances to a target strategy.
    struct Quadratic {
        target: Vec<f64>,
        calls: usize,
    }
    impl Objective for Quadratic {
        fn evaluate(&mut self, s: &Strategy) -> Result<(f64, EvalTiming)> {
            self.calls += 1;
            let v = s.to_params().iter().zip(&self.target).map(|(a, b)| (a - b) * (a - b)).sum();
            Ok((v, EvalTiming::default()))
        }
    }

    fn settings(iters: usize) -> SearchSettings {
        SearchSettings { iters, lr_ratios: 1e-3, lr_others: 0.1, momentum: 0.5, step_ratios: 0.01, step_others: 0.1, clip_grad: None }
    }

    #[test]
    fn first_update_is_a_finite_difference_sgd_step() {
        // T = 2: params [ratio, remask, tau0, tau1, s0, s1].
        let init = Strategy::search_init(2).unwrap();
        let theta0 = init.to_params();
        let target = vec![0.2, 0.9, 1.2, 0.8, 0.5, 1.5];
        let mut q = Quadratic { target: target.clone(), calls: 0 };
        let out = run_search(&mut q, init, &settings(1), None, &mut |_| Ok(())).unwrap();
        assert_eq!(q.calls, 1 + 6 + 1, "base, 4T-2 probes, new base");
        // One-sided difference of (x - t)^2 with step d: 2 (x - t) + d.
        let theta1 = &out.iterations[1].params;
        for i in 0..6 {
            let (d, lr) = if i == 0 { (0.01, 1e-3) } else { (0.1, 0.1) };
            let g = 2.0 * (theta0[i] - target[i]) + d;
            let want = (theta0[i] - lr * g).max(if i == 0 { 0.0 } else { 1e-4 });
            assert!((theta1[i] - want).abs() < 1e-9, "param {i}: {} vs {want}", theta1[i]);
        }
        assert!(out.iterations[1].fid < out.iterations[0].fid);
        assert_eq!(out.evaluations.iter().filter(|e| e.phase == "grad").count(), 6);
        assert_eq!(out.evaluations[1].param, "manual_ratios[0]");
    }

    #[test]
    fn momentum_and_clamps() {
        // Second update uses buf = 0.5 * g1 + g2; cfg pushed below 1e-4 is clamped.
        let init = Strategy::new(vec![0.985], vec![0.5], vec![1.0, 1.0], vec![0.05, 1.0]).unwrap();
        let target = vec![1.0, 0.5, 1.0, 1.0, -10.0, 1.0];
        let mut q = Quadratic { target, calls: 0 };
        let out = run_search(&mut q, init, &settings(2), None, &mut |_| Ok(())).unwrap();
        let p1 = &out.iterations[1].params;
        let p2 = &out.iterations[2].params;
        assert!(p1[0] <= 0.99 && p2[0] <= 0.99, "ratios are clamped to 0.99");
        assert_eq!(p1[4], 1e-4, "guidance floored at 1e-4");
        // Coordinate 1 (remask temp at its target 0.5): g = d = 0.1 each time (one-sided bias),
        // so theta2 = 0.5 - 0.1*0.1 - 0.1*(0.5*0.1 + (2*(p1-0.5) + 0.1)).
        let g1 = 0.1;
        let g2 = 2.0 * (p1[1] - 0.5) + 0.1;
        let want = p1[1] - 0.1 * (0.5 * g1 + g2);
        assert!((p2[1] - want).abs() < 1e-12, "{} vs {want}", p2[1]);
    }

    #[test]
    fn a_ratio_at_one_is_probed_downwards() {
        let init = Strategy::new(vec![1.0], vec![0.5], vec![1.0, 1.0], vec![0.0, 1.0]).unwrap();
        let mut q = Quadratic { target: vec![0.5, 0.5, 1.0, 1.0, 0.0, 1.0], calls: 0 };
        let out = run_search(&mut q, init, &settings(1), None, &mut |_| Ok(())).unwrap();
        assert!(out.iterations[1].params[0].is_finite());
        assert!(out.iterations[1].params[0] < 0.99 + 1e-12);
    }

    /// Fails (as a killed process would) once `fail_at` evaluations have been made.
    struct Interrupted {
        inner: Quadratic,
        fail_at: usize,
    }
    impl Objective for Interrupted {
        fn evaluate(&mut self, s: &Strategy) -> Result<(f64, EvalTiming)> {
            ensure!(self.inner.calls < self.fail_at, "interrupted");
            self.inner.evaluate(s)
        }
    }

    #[test]
    fn an_interrupted_search_resumes_to_the_same_result() {
        // T = 2 (6 parameters), 3 updates: 1 + 3 x 7 = 22 evaluations. Interrupt after 1, 4
        // (mid-gradient), 8 (right after an update's base evaluation) and 20 evaluations;
        // resume from the last saved state, through its JSON form as on disk.
        let target = vec![0.3, 0.8, 1.3, 0.6, 0.4, 1.7];
        let init = Strategy::search_init(2).unwrap();
        let mut whole = Quadratic { target: target.clone(), calls: 0 };
        let want = run_search(&mut whole, init.clone(), &settings(3), None, &mut |_| Ok(())).unwrap();
        assert_eq!(whole.calls, 22);
        for fail_at in [1, 4, 8, 20] {
            let mut saved: Option<String> = None;
            let mut first = Interrupted { inner: Quadratic { target: target.clone(), calls: 0 }, fail_at };
            let e = run_search(&mut first, init.clone(), &settings(3), None, &mut |p| {
                if let Progress::Evaluated(st) = p {
                    saved = Some(serde_json::to_string(st)?);
                }
                Ok(())
            });
            assert!(e.is_err());
            let state: SearchState = serde_json::from_str(saved.as_deref().unwrap()).unwrap();
            assert_eq!(state.evaluations.len(), fail_at, "every finished evaluation was saved");
            let mut rest = Quadratic { target: target.clone(), calls: 0 };
            // `init` is ignored when resuming: pass a different one to prove it.
            let got = run_search(&mut rest, Strategy::search_init(2).unwrap(), &settings(3), Some(state), &mut |_| Ok(())).unwrap();
            assert_eq!(rest.calls, 22 - fail_at, "no evaluation repeated or lost (fail_at {fail_at})");
            let fids = |o: &SearchOutcome| o.evaluations.iter().map(|e| (e.iter, e.param.clone(), e.fid)).collect::<Vec<_>>();
            assert_eq!(fids(&got), fids(&want));
            let params = |o: &SearchOutcome| o.iterations.iter().map(|r| r.params.clone()).collect::<Vec<_>>();
            assert_eq!(params(&got), params(&want));
            assert_eq!(got.best.to_params(), want.best.to_params());
        }
        // More updates later: a finished 3-update state extended to 4 equals a 4-update run.
        let mut saved = None;
        let mut q = Quadratic { target: target.clone(), calls: 0 };
        run_search(&mut q, init.clone(), &settings(3), None, &mut |p| {
            if let Progress::Evaluated(st) = p {
                saved = Some(st.clone());
            }
            Ok(())
        })
        .unwrap();
        let mut more = Quadratic { target: target.clone(), calls: 0 };
        let extended = run_search(&mut more, init.clone(), &settings(4), saved, &mut |_| Ok(())).unwrap();
        assert_eq!(more.calls, 7);
        let mut q4 = Quadratic { target, calls: 0 };
        let direct = run_search(&mut q4, init, &settings(4), None, &mut |_| Ok(())).unwrap();
        assert_eq!(extended.last.to_params(), direct.last.to_params());
    }

    #[test]
    fn bad_settings_are_refused() {
        let mut s = settings(1);
        s.momentum = 1.0;
        let mut q = Quadratic { target: vec![0.0; 6], calls: 0 };
        let e = run_search(&mut q, Strategy::search_init(2).unwrap(), &s, None, &mut |_| Ok(())).unwrap_err();
        assert!(e.to_string().contains("--momentum"), "{e}");
    }

    fn fixture_dir() -> PathBuf {
        std::env::var_os("GENBENCH_FIXTURE_AUTONAT")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models/autonat"))
    }

    /// A reference batch made from the fixture's tokenizer input images: the images and their
    /// horizontal / vertical / both flips (uint8, ADM npz).
    fn fixture_reference(dir: &Path) -> PathBuf {
        let io = candle_core::safetensors::load(fixture_dir().join("io.safetensors"), &candle_core::Device::Cpu).unwrap();
        let x = io["vq.image_in"].clone();
        let flips = [x.clone(), x.flip(&[3]).unwrap(), x.flip(&[2]).unwrap(), x.flip(&[2]).unwrap().flip(&[3]).unwrap()];
        let all = candle_core::Tensor::cat(&flips, 0).unwrap();
        let (n, _, h, w) = all.dims4().unwrap();
        // The images were made as uint8 / 255: round back exactly.
        let bytes: Vec<u8> = (all.permute((0, 2, 3, 1)).unwrap() * 255.0)
            .unwrap()
            .round()
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .into_iter()
            .map(|v| v as u8)
            .collect();
        let path = dir.join("reference.npz");
        npz::write_images_npz(&path, &bytes, n, h, w, &[]).unwrap();
        path
    }

    fn tiny_args(out: PathBuf, reference: Option<PathBuf>) -> SearchJob {
        SearchJob {
            model: ModelRequest { config: Some(fixture_dir().join("config.json")), ..Default::default() },
            steps: 1,
            samples: 4,
            reference,
            init: "search-init".into(),
            seed: 5,
            batch: 4,
            out,
            settings: settings(1),
            device: Device::Cpu,
            dtype: Default::default(),
            inception_weights: None,
            cache_dir: None,
            inception_batch: 8,
        }
    }

    fn run(job: SearchJob) -> Result<SearchOutcome> {
        run_search_job(&job)
    }

    #[test]
    fn tiny_search_on_the_fixture_model_is_reproducible() {
        // The fixture network (4x4 tokens, 64 px), 4 samples, T = 1, one update: 1 + 2 + 1 FID
        // evaluations, each generation + Inception + FID, against a reference made of fixture
        // images. Twice with the same seed: the same FIDs and the same strategy, bit for bit.
        // (Kept this small because each FID with N < 2048 samples costs seconds: the 2048 x 2048
        // eigendecomposition. The optimiser itself is covered on an analytic objective above.)
        let tmp = tempfile::tempdir().unwrap();
        let reference = fixture_reference(tmp.path());
        let runs: Vec<PathBuf> = (0..2).map(|i| tmp.path().join(format!("run{i}"))).collect();
        for out in &runs {
            run(tiny_args(out.clone(), Some(reference.clone()))).unwrap();
        }
        let read = |p: &Path| std::fs::read_to_string(p).unwrap();
        let fid_columns =
            |text: String| -> Vec<String> { text.lines().skip(1).map(|l| l.split(',').take(4).collect::<Vec<_>>().join(",")).collect() };
        let evals = fid_columns(read(&runs[0].join("evaluations.csv")));
        assert_eq!(evals.len(), 4, "{evals:?}");
        assert_eq!(evals, fid_columns(read(&runs[1].join("evaluations.csv"))));
        assert_eq!(read(&runs[0].join("strategy.yaml")), read(&runs[1].join("strategy.yaml")));
        assert_eq!(read(&runs[0].join("strategies/stp_1.yaml")), read(&runs[1].join("strategies/stp_1.yaml")));
        let iters = read(&runs[0].join("iterations.csv"));
        assert_eq!(iters.lines().count(), 3, "header + iterations 0 and 1");
        for f in ["fid.png", "fid.svg", "summary.json", "strategies/stp_0.yaml"] {
            assert!(runs[0].join(f).is_file(), "{f} written");
        }
        // The probes really moved the FID (the objective depends on the strategy).
        let fids: Vec<f64> = evals.iter().map(|l| l.split(',').nth(3).unwrap().parse().unwrap()).collect();
        assert!(fids.iter().all(|f| f.is_finite() && *f > 0.0));
        assert!(fids.iter().any(|f| *f != fids[0]), "{fids:?}");
        // The written strategy is valid and has T = 1 step.
        assert_eq!(Strategy::from_yaml_file(&runs[0].join("strategy.yaml")).unwrap().steps(), 1);
        // Run again into a finished folder: its saved state is complete, nothing is evaluated.
        // (Full text compared: a re-evaluation would change the timing columns.)
        let before = read(&runs[0].join("evaluations.csv"));
        run(tiny_args(runs[0].clone(), Some(reference.clone()))).unwrap();
        assert_eq!(before, read(&runs[0].join("evaluations.csv")));
        // A different search into the same folder is refused, naming the setting.
        let mut other = tiny_args(runs[0].clone(), Some(reference));
        other.seed = 6;
        let e = format!("{:#}", run(other).unwrap_err());
        assert!(e.contains("state.json") && e.contains("`seed`"), "{e}");
    }

    #[test]
    fn a_search_without_a_reference_says_what_it_needs() {
        let tmp = tempfile::tempdir().unwrap();
        let e = format!("{:#}", run(tiny_args(tmp.path().join("out"), None)).unwrap_err());
        assert!(e.contains("--reference") && e.contains("mu") && e.contains("arr_0"), "{e}");
        let bad = tmp.path().join("empty.npz");
        npz::write_npz(&bad, &[]).unwrap();
        let mut args = tiny_args(tmp.path().join("out"), Some(bad));
        args.settings.iters = 0;
        let e = format!("{:#}", run(args).unwrap_err());
        assert!(e.contains("no reference statistics") || e.contains("arr_0"), "{e}");
    }

    #[test]
    fn labels_are_seeded_and_in_range() {
        let a = evaluation_labels(100, 10, 3).unwrap();
        assert_eq!(a, evaluation_labels(100, 10, 3).unwrap());
        assert_ne!(a, evaluation_labels(100, 10, 4).unwrap());
        assert!(a.iter().all(|&y| y < 10));
        assert!((0..10).all(|c| a.contains(&c)));
    }
}
