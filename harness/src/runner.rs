//! The suite runner: executes the runs of a [`Suite`] in order and writes
//! `results/<suite>/<timestamp>/` (manifest, metrics.csv, steps.csv, profile.csv, report.md,
//! plots/).
//!
//! Work that does not depend on the moment is cached under `results/<suite>/cache/`, keyed by the
//! settings that produced it ([`sample_cache_key`]; features by the samples' content, or the image
//! files' content for metric checks), and written atomically: samples per batch (an interrupted
//! run resumes at the first missing batch), Inception features per sample set (adding a metric
//! reuses them). Timings are never cached: a profile measures this machine now.
//!
//! A run whose inputs are missing is reported as skipped with the reason, in the console and in
//! the report; a run that fails is reported as failed and the suite goes on.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device};
use genbench_metrics::evaluate::{
    evaluate, resize_bicubic_torch_u8, EvalOptions, Evaluation, FeatureCollector, FeatureNeeds, FeatureSummary, Reference,
};
use genbench_metrics::features::{ExtractorOptions, FeatureCache, Features, InceptionExtractor};
use genbench_metrics::inception::weights::WeightsSource;
use genbench_metrics::precision_recall::{DistancePrecision, PrConfig};
use genbench_metrics::preprocess::Preprocess;
use genbench_models::generator::{Generator, StepKind, StepLog};
use genbench_runtime::progress::Progress;
use genbench_runtime::{DTypePolicy, DeviceChoice};

use crate::fit::format_sig;
use crate::manifest::{git_state, results_dir, Machine, Manifest};
use crate::model_registry::{resolve, ModelRequest, ResolvedModel};
use crate::plots::{per_step_chart, resolution_chart, write_atomically, write_chart, ResolutionPoint, StepQuantity};
use crate::records::{RunResult, RunStatus, SeedEvaluation, StepRecord};
use crate::report::{derive_relative_metrics, write_results, Comparison};
use crate::suite::{family_name, Convention, Dtype, Metric, ModelSpec, ProfileSettings, Run, Suite, Task, Weights};

/// How the runner is asked to run a suite.
#[derive(Debug, Clone)]
pub struct RunnerOptions {
    /// `results/`: the suite writes `<root>/<suite>/<timestamp>/` and caches in `<root>/<suite>/cache/`.
    pub results_root: PathBuf,
    /// Run ids to run (`--only`); empty = all.
    pub only: Vec<String>,
    /// Inception weights and their own feature cache (None = the metrics crate's default).
    pub inception_cache: Option<PathBuf>,
    /// An Inception weights file to use instead of the default ones (`--inception-weights`).
    pub inception_weights: Option<PathBuf>,
    /// Print progress lines to stderr.
    pub verbose: bool,
    /// Where generators and the Inception network run (`--device`).
    pub device: DeviceChoice,
    /// Overrides every run's dtype (`--dtype`); the runtime's dtype policy decides what the
    /// device can run, and a refusal names the run.
    pub dtype: Option<DTypePolicy>,
}

impl RunnerOptions {
    pub fn new(results_root: impl Into<PathBuf>, device: DeviceChoice) -> Self {
        Self {
            results_root: results_root.into(),
            only: Vec::new(),
            inception_cache: None,
            inception_weights: None,
            verbose: true,
            device,
            dtype: None,
        }
    }
}

/// Time of one (run, resolution, batch) profile cell.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ProfilePoint {
    pub run: String,
    pub family: String,
    pub model: String,
    pub resolution: u32,
    pub batch: u32,
    /// Mean over the timed repeats of wall clock / batch.
    pub sec_per_image: f64,
    /// Analytic GFLOP per image at this resolution (sampler settings included, e.g. CFG).
    pub gflop_per_image: f64,
    /// Generation steps per image (network passes before the decode).
    pub steps_per_image: usize,
    /// Wall clock of the sampling steps alone (tokenizer / VAE decode excluded) per image: the
    /// part whose growth with resolution the families' cost claims are about; at small sizes the
    /// convolutional decoder would otherwise dominate every family alike.
    pub sampling_sec_per_image: f64,
    /// Analytic GFLOP of the sampling steps alone (decode excluded) per image.
    pub sampling_gflop_per_image: f64,
}

/// What a cache lookup did, per kind of cached work; tests and the console read these.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheCounts {
    pub sample_batches_generated: usize,
    pub sample_batches_reused: usize,
    pub feature_sets_extracted: usize,
    pub feature_sets_reused: usize,
}

/// Everything a suite run produced.
#[derive(Debug)]
pub struct SuiteOutcome {
    /// `results/<suite>/<timestamp>/`.
    pub dir: PathBuf,
    pub results: Vec<RunResult>,
    pub comparisons: Vec<Comparison>,
    pub profile: Vec<ProfilePoint>,
    pub cache: CacheCounts,
    /// (title, path relative to `dir`) of each plot written.
    pub plots: Vec<(String, PathBuf)>,
}

/// Copies a run's scored image metrics into its result.
fn record_scored(result: &mut RunResult, scored: Scored) {
    result.metrics = scored.metrics;
    result.spread = scored.spread;
    result.evaluations = scored.evaluations;
    result.unavailable = scored.unavailable;
    result.warnings = scored.warnings;
}

fn log(opts: &RunnerOptions, msg: impl AsRef<str>) {
    if opts.verbose {
        eprintln!("{}", msg.as_ref());
    }
}

fn dtype_policy(d: Dtype) -> DTypePolicy {
    match d {
        Dtype::F32 => DTypePolicy::F32,
        Dtype::F16 => DTypePolicy::F16,
        Dtype::Bf16 => DTypePolicy::BF16,
    }
}

/// The dtype a run's generator uses on `device`: `--dtype` if given, else the run's own, as the
/// runtime's dtype policy allows it (a refusal names the run).
pub fn run_dtype(run_id: &str, model: &ModelSpec, device: &Device, dtype_override: Option<DTypePolicy>) -> Result<DType> {
    let policy = dtype_override.unwrap_or_else(|| dtype_policy(model.dtype));
    policy
        .compute_dtype(device)
        .with_context(|| format!("run `{run_id}` asks for {} on {}", policy.name(), genbench_runtime::device::describe(device)))
}

/// The registry request for a model spec, at `resolution`. `model` is a published name, or a
/// reference `config.json` (a fixture's, or one written by hand; relative to the suite file's
/// directory `suite_dir`) for shapes that have no name.
pub fn model_request(model: &ModelSpec, resolution: u32, suite_dir: &Path) -> ModelRequest {
    let (ckpt, vae) = match &model.weights {
        Weights::Checkpoint { checkpoint, tokenizer } => {
            (checkpoint.resolved.clone().ok(), tokenizer.as_ref().and_then(|t| t.resolved.clone().ok()))
        }
        Weights::Random => (None, None),
    };
    let config = model.model.ends_with(".json").then(|| suite_dir.join(&model.model));
    ModelRequest {
        model: config.is_none().then(|| model.model.clone()),
        config,
        ckpt,
        vae,
        random_init: matches!(model.weights, Weights::Random),
        settings: model.sampler.clone(),
        arch: model.arch.clone(),
        resolution: Some(resolution as usize),
    }
}

/// The registry's model for a spec at `resolution`: the runner's one call into the registry.
fn resolve_model(model: &ModelSpec, resolution: u32, suite_dir: &Path) -> Result<ResolvedModel> {
    let resolved = resolve(&model_request(model, resolution, suite_dir))?;
    // The suite names the family for its tables; a model of another family is a suite mistake.
    ensure!(
        resolved.family == model.family,
        "`{}` is a {} model, but the run says family = \"{}\"",
        model.model,
        family_name(resolved.family),
        family_name(model.family)
    );
    Ok(resolved)
}

pub fn build_generator(model: &ModelSpec, resolution: u32, suite_dir: &Path, device: &Device, dtype: DType) -> Result<Box<dyn Generator>> {
    resolve_model(model, resolution, suite_dir)?.build(device, dtype)
}

/// Converts the generator's step records into the report's, for one batch.
fn step_records(family: &str, model: &str, batch: u32, log: &StepLog) -> Vec<StepRecord> {
    log.records
        .iter()
        .map(|r| StepRecord {
            family: family.to_string(),
            model: model.to_string(),
            batch,
            step: r.step as u32,
            kind: r.kind.name().to_string(),
            tokens: r.tokens_decoded as u64,
            attended: r.tokens_attended as u64,
            ms: r.wall.as_secs_f64() * 1e3,
            gflop: r.flops / 1e9,
        })
        .collect()
}

/// Class labels of a batch: classes in turn, as ADM-style evaluation batches are class balanced.
pub fn labels_for(start: usize, n: usize, num_classes: usize) -> Vec<u32> {
    (start..start + n).map(|i| (i % num_classes.max(1)) as u32).collect()
}

fn profile_resolutions(model: &ModelSpec, profile: &ProfileSettings) -> Vec<u32> {
    if profile.resolutions.is_empty() {
        vec![model.resolution]
    } else {
        profile.resolutions.clone()
    }
}

// ---------------------------------------------------------------------------------------------
// Profile runs
// ---------------------------------------------------------------------------------------------

struct ProfileOutput {
    metrics: BTreeMap<Metric, f64>,
    steps: Vec<StepRecord>,
    points: Vec<ProfilePoint>,
    images: u64,
    settings: serde_json::Value,
}

fn run_profile(
    run: &Run,
    model: &ModelSpec,
    seeds: &[u64],
    profile: &ProfileSettings,
    suite_dir: &Path,
    device: &Device,
    opts: &RunnerOptions,
) -> Result<ProfileOutput> {
    let family = family_name(model.family).to_string();
    let first_seed = seeds.first().copied().unwrap_or(0);
    // Every seed's timed repeats count: the timings average over all of them.
    let timed: Vec<u64> = seeds.iter().flat_map(|&s| (0..u64::from(profile.repeats.max(1))).map(move |r| s + 1000 + r)).collect();
    let mut points = Vec::new();
    let mut steps = Vec::new();
    let mut images = 0u64;
    let mut generator_settings = BTreeMap::new();
    let resolutions = profile_resolutions(model, profile);
    let dtype = run_dtype(&run.id, model, device, opts.dtype)?;
    for &px in &resolutions {
        let mut generator =
            build_generator(model, px, suite_dir, device, dtype).with_context(|| format!("building {} at {px} px", model.model))?;
        generator_settings.insert(px.to_string(), generator.settings());
        let flops = generator.flops_per_image();
        for &batch in &profile.batches {
            let labels = labels_for(0, batch as usize, generator.num_classes());
            for w in 0..profile.warmup {
                generator.sample(&labels, first_seed + u64::from(w), &mut genbench_models::generator::NoObserver)?;
            }
            let mut total = 0.0;
            let mut sampling_total = 0.0;
            let mut last_log = StepLog::default();
            let mut n_steps = 0;
            for &sample_seed in &timed {
                let mut step_log = StepLog::default();
                let t = Instant::now();
                let s = generator.sample(&labels, sample_seed, &mut step_log)?;
                total += t.elapsed().as_secs_f64();
                sampling_total += step_log.records.iter().filter(|r| r.kind != StepKind::Decode).map(|r| r.wall.as_secs_f64()).sum::<f64>();
                ensure!(s.n == batch as usize, "{}: asked for {batch} images, got {}", model.model, s.n);
                images += s.n as u64;
                n_steps = step_log.records.iter().filter(|r| r.kind != StepKind::Decode).map(|r| r.step + 1).max().unwrap_or(0);
                last_log = step_log;
            }
            let sec_per_image = total / timed.len() as f64 / f64::from(batch);
            let sampling_sec_per_image = sampling_total / timed.len() as f64 / f64::from(batch);
            log(
                opts,
                format!(
                    "  {} {px} px batch {batch}: {} s/image ({} s sampling steps), {} GFLOP/image",
                    run.id,
                    format_sig(sec_per_image, 3),
                    format_sig(sampling_sec_per_image, 3),
                    format_sig(flops.total() / 1e9, 3)
                ),
            );
            // Steps of the last timed repeat (warm caches), one set per (resolution, batch);
            // the base resolution's only, so the per-step plot compares like with like.
            if profile.record_steps
                && px == *resolutions.iter().find(|&&r| r == model.resolution).unwrap_or(&resolutions[resolutions.len() - 1])
            {
                steps.extend(step_records(&family, &model.model, batch, &last_log));
            }
            points.push(ProfilePoint {
                run: run.id.clone(),
                family: family.clone(),
                model: model.model.clone(),
                resolution: px,
                batch,
                sec_per_image,
                gflop_per_image: flops.total() / 1e9,
                steps_per_image: n_steps,
                sampling_sec_per_image,
                sampling_gflop_per_image: (flops.total() - flops.decoder) / 1e9,
            });
        }
    }
    // The run's headline numbers: at the model's own resolution when it was measured, else the
    // last resolution; at the largest batch (the throughput a user would run at).
    let base_px = if resolutions.contains(&model.resolution) { model.resolution } else { resolutions[resolutions.len() - 1] };
    let headline = points.iter().filter(|p| p.resolution == base_px).max_by_key(|p| p.batch).context("no profile measurement")?;
    let mut metrics = BTreeMap::new();
    for m in &run.metrics {
        match m {
            Metric::SecPerImage => {
                metrics.insert(*m, headline.sec_per_image);
            }
            Metric::GflopPerImage => {
                metrics.insert(*m, headline.gflop_per_image);
            }
            // Relative metrics are derived once every run is done.
            Metric::RelTime | Metric::RelGflop => {}
            other => bail!("a profile run cannot measure `{other}` (it generates no images to score)"),
        }
    }
    let settings = serde_json::json!({
        "task": run.settings_json(),
        "generator": generator_settings,
        "headline": { "resolution": base_px, "batch": headline.batch },
    });
    Ok(ProfileOutput { metrics, steps, points, images, settings })
}

// ---------------------------------------------------------------------------------------------
// Scoring: one extractor, one feature cache, the metrics crate's pipeline
// ---------------------------------------------------------------------------------------------

/// The Inception extractors (built lazily, one per preprocessing the suite's conventions use:
/// suites without image metrics never load one) and the suite's feature cache
/// (`<cache>/features/`, keyed by image content, weights hash and preprocessing: [`FeatureCache`]).
struct Scorer {
    weights_dir: Option<PathBuf>,
    weights_file: Option<PathBuf>,
    device: Device,
    cache: FeatureCache,
    extractors: HashMap<Preprocess, InceptionExtractor>,
}

impl Scorer {
    fn new(opts: &RunnerOptions, device: &Device, cache_root: &Path) -> Self {
        Scorer {
            weights_dir: opts.inception_cache.clone(),
            weights_file: opts.inception_weights.clone(),
            device: device.clone(),
            cache: suite_feature_cache(cache_root),
            extractors: HashMap::new(),
        }
    }

    /// The extractor with `convention`'s preprocessing.
    fn extractor(&mut self, convention: Convention) -> Result<&InceptionExtractor> {
        let preprocess = convention.preprocess();
        if !self.extractors.contains_key(&preprocess) {
            let e = inception_extractor(preprocess, self.weights_dir.as_deref(), self.weights_file.as_deref(), &self.device)?;
            self.extractors.insert(preprocess, e);
        }
        Ok(&self.extractors[&preprocess])
    }

    /// Features of one batch of images, from the cache when it has them.
    fn features(&mut self, convention: Convention, pixels: &[u8], n: usize, h: usize, w: usize) -> Result<Features> {
        self.extractor(convention)?;
        let extractor = &self.extractors[&convention.preprocess()];
        Ok(self.cache.extract(extractor, pixels, n, h, w)?.0)
    }

    /// The metric formulas' settings under `convention` (its IS splits and KID subsets), with
    /// why IS is unavailable when the weights lack the classifier.
    fn options(&mut self, convention: Convention, pr_distances: DistancePrecision, reference: &str) -> Result<EvalOptions> {
        let extractor = self.extractor(convention)?;
        let options = EvalOptions {
            pr: PrConfig { precision: pr_distances, ..PrConfig::default() },
            kid: convention.kid_config(None),
            convention,
            no_logits_reason: (!extractor.has_logits()).then(|| extractor.no_fc_message().to_owned()),
            reference_label: reference.to_owned(),
        };
        Ok(options)
    }

    /// Runs `f` and counts it as one feature set extracted (any batch ran the network) or reused.
    fn counted<T>(&mut self, counts: &mut CacheCounts, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        let (_, misses) = self.cache.counts();
        let out = f(self)?;
        if self.cache.counts().1 > misses {
            counts.feature_sets_extracted += 1;
        } else {
            counts.feature_sets_reused += 1;
        }
        Ok(out)
    }
}

/// What the per-seed evaluations of a run add up to: the mean of each metric over seeds, its
/// spread, every seed's diagnostics, and the warnings and unavailable metrics of any seed.
#[derive(Default)]
struct Scored {
    metrics: BTreeMap<Metric, f64>,
    spread: BTreeMap<Metric, f64>,
    evaluations: Vec<SeedEvaluation>,
    unavailable: BTreeMap<Metric, String>,
    warnings: Vec<String>,
}

impl Scored {
    fn add(&mut self, seed: u64, e: Evaluation) {
        for w in e.warnings {
            if !self.warnings.contains(&w) {
                self.warnings.push(w);
            }
        }
        self.unavailable.extend(e.unavailable);
        self.evaluations.push(SeedEvaluation {
            seed,
            values: e.values,
            diagnostics: serde_json::to_value(&e.diagnostics).unwrap_or(serde_json::Value::Null),
        });
    }

    /// Mean over seeds, and the sample standard deviation (N-1) where there are several.
    fn finish(mut self) -> Self {
        let metrics: Vec<Metric> = self.evaluations.iter().flat_map(|e| e.values.keys().copied()).collect();
        for m in metrics {
            let values: Vec<f64> = self.evaluations.iter().filter_map(|e| e.values.get(&m).copied()).collect();
            let n = values.len() as f64;
            let mean = values.iter().sum::<f64>() / n;
            self.metrics.insert(m, mean);
            if values.len() > 1 {
                let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
                self.spread.insert(m, var.sqrt());
            }
        }
        self
    }
}

// ---------------------------------------------------------------------------------------------
// Metric checks
// ---------------------------------------------------------------------------------------------

struct CheckOutput {
    scored: Scored,
    images: u64,
    settings: serde_json::Value,
}

#[allow(clippy::too_many_arguments)]
fn run_metric_check(
    run: &Run,
    images: &[crate::suite::PathSpec],
    split_at: usize,
    convention: Convention,
    pr_distances: DistancePrecision,
    scorer: &mut Scorer,
    counts: &mut CacheCounts,
) -> Result<CheckOutput> {
    let mut parts = Vec::new();
    let mut pool3_check = serde_json::Map::new();
    for spec in images {
        let path = spec.resolved.clone().map_err(anyhow::Error::msg)?;
        let (px, info) = genbench_metrics::npz::read_npy_images(&path)?;
        let f = scorer.counted(counts, |s| s.features(convention, &px, info.n, info.h, info.w))?;
        // A `<name>_pool3.npy` beside `<name>_images.npy` holds the reference network's own
        // features: the extractor must agree with it, not only the metrics downstream.
        if let Some(stem) = path.file_name().and_then(|s| s.to_str()).and_then(|s| s.strip_suffix("_images.npy")) {
            let expected = path.with_file_name(format!("{stem}_pool3.npy"));
            if expected.is_file() {
                let (want, _) = genbench_metrics::npz::read_npy_f32(&expected)?;
                ensure!(want.len() == f.pool3.len(), "{}: {} values, extracted {}", expected.display(), want.len(), f.pool3.len());
                let max_diff = want.iter().zip(&f.pool3).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                pool3_check.insert(stem.to_string(), serde_json::json!(max_diff));
                ensure!(max_diff <= 1e-3, "{}: extracted pool3 differs from the reference features by {max_diff} (> 1e-3)", path.display());
            }
        }
        parts.push(f);
    }
    let all = Features::concat(parts)?;
    ensure!(split_at > 0 && split_at < all.n, "split_at {split_at} must leave images on both sides of {}", all.n);
    let summarize = |f: &Features, needs: FeatureNeeds| -> Result<FeatureSummary> {
        let mut c = FeatureCollector::new(needs);
        c.push(f)?;
        c.finish()
    };
    let reference = summarize(&all.slice(0, split_at), FeatureNeeds::reference(&run.metrics, &Default::default()))?;
    let samples = summarize(&all.slice(split_at, all.n), FeatureNeeds::samples(&run.metrics))?;
    let options = scorer.options(convention, pr_distances, &format!("the first {split_at} images"))?;
    let mut scored = Scored::default();
    scored.add(0, evaluate(&samples, Some(&reference), &run.metrics, &options)?);
    Ok(CheckOutput {
        scored: scored.finish(),
        images: all.n as u64,
        settings: serde_json::json!({
            "task": run.settings_json(),
            "pool3_max_abs_diff": pool3_check,
            "pr": options.pr,
            "kid": options.kid,
            "is_splits": convention.is_splits(),
        }),
    })
}

// ---------------------------------------------------------------------------------------------
// Generate runs
// ---------------------------------------------------------------------------------------------

struct GenerateOutput {
    metrics: BTreeMap<Metric, f64>,
    scored: Scored,
    images: u64,
    steps: Vec<StepRecord>,
    settings: serde_json::Value,
    weight_hashes: BTreeMap<String, String>,
}

/// Reads a cached sample batch (uint8 NHWC) with its height and width.
fn read_batch(path: &Path) -> Result<(Vec<u8>, usize, usize)> {
    let (px, info) = genbench_metrics::npz::read_images(path)?;
    Ok((px, info.h, info.w))
}

/// The hashes of a generate run's weight files and the folder of its sample cache (one
/// `seed-S/` folder per seed inside). The suite-level shards write the same files.
pub fn generate_sample_dir(run: &Run, model: &ModelSpec, cache_root: &Path) -> Result<(BTreeMap<String, String>, PathBuf)> {
    let mut weight_hashes = BTreeMap::new();
    if let Weights::Checkpoint { checkpoint, tokenizer } = &model.weights {
        for (role, spec) in std::iter::once(("checkpoint", checkpoint)).chain(tokenizer.iter().map(|t| ("tokenizer", t))) {
            let p = spec.resolved.clone().map_err(anyhow::Error::msg)?;
            weight_hashes.insert(role.to_string(), genbench_runtime::hash::sha256_file(&p)?);
        }
    }
    let sample_key = sample_cache_key(run, &weight_hashes).context("generate runs have a sample key")?;
    let sample_dir = cache_root.join(&sample_key);
    Ok((weight_hashes, sample_dir))
}

/// Batch `b` of seed `seed` of a generate run's samples.
pub fn sample_batch_path(sample_dir: &Path, seed: u64, b: usize) -> PathBuf {
    sample_dir.join(format!("seed-{seed}")).join(format!("batch-{b:05}.npz"))
}

/// Seed of batch `b` of a generate run: one per batch, derived from the run's seed, so batches
/// are independent of order and of which process samples them.
pub fn generate_batch_seed(seed: u64, b: usize) -> u64 {
    seed.wrapping_mul(1_000_003).wrapping_add(b as u64)
}

/// The images that are scored: resized first when the run sets `eval_resolution` (as LlamaGen
/// scores its 384 px models at 256).
pub fn scoring_images(pixels: Vec<u8>, h: usize, w: usize, eval_resolution: Option<u32>) -> Result<(Vec<u8>, usize, usize)> {
    match eval_resolution {
        Some(px) => {
            let n = pixels.len() / (h * w * 3);
            Ok((resize_bicubic_torch_u8(&pixels, n, h, w, px as usize)?, px as usize, px as usize))
        }
        None => Ok((pixels, h, w)),
    }
}

/// Key of the generated samples: everything that changes the images, and nothing else, so a
/// re-run after an interruption or after adding a metric finds its samples. `weight_hashes`
/// maps role (`checkpoint`, `tokenizer`) to content hash, so replaced weights under the same
/// path do not hit a stale cache. Batch size is included because samplers draw noise per
/// batch. `None` for runs that generate nothing (metric checks).
pub fn sample_cache_key(run: &Run, weight_hashes: &BTreeMap<String, String>) -> Option<String> {
    let Task::Generate { model, samples, batch, seeds, .. } = &run.task else {
        return None;
    };
    let identity = serde_json::json!({
        "family": model.family,
        "model": model.model,
        "arch": model.arch,
        "random_weights": matches!(model.weights, Weights::Random),
        "weights": weight_hashes,
        "resolution": model.resolution,
        "dtype": model.dtype,
        "sampler": model.sampler,
        "samples": samples,
        "batch": batch,
        "seeds": seeds,
    });
    // First 16 hex digits of SHA-256: short enough for directory names, far from colliding.
    Some(genbench_runtime::hash::sha256_bytes(identity.to_string().as_bytes())[..16].to_string())
}

/// The Inception extractor with `preprocess` on `device`, as the runner and the shards build
/// it: weights from `weights_file` if given, else the default ones found in / fetched into
/// `weights_dir` (default: the cache).
pub fn inception_extractor(
    preprocess: Preprocess,
    weights_dir: Option<&Path>,
    weights_file: Option<&Path>,
    device: &Device,
) -> Result<InceptionExtractor> {
    let weights = weights_file.map_or(WeightsSource::Default, |f| WeightsSource::File(f.to_path_buf()));
    let opts = ExtractorOptions { device: device.clone(), preprocess, weights, ..ExtractorOptions::default() };
    match weights_dir {
        Some(dir) => InceptionExtractor::new_in(opts, dir),
        None => InceptionExtractor::new(opts),
    }
}

/// The suite's feature cache (`<cache>/features/`), shared by the runner and the shards.
pub fn suite_feature_cache(cache_root: &Path) -> FeatureCache {
    FeatureCache::in_folder(cache_root)
}

#[allow(clippy::too_many_arguments)]
fn run_generate(
    run: &Run,
    model: &ModelSpec,
    samples: u64,
    batch: u32,
    seeds: &[u64],
    reference: Option<&crate::suite::PathSpec>,
    convention: Convention,
    pr_distances: DistancePrecision,
    eval_resolution: Option<u32>,
    cache_root: &Path,
    suite_dir: &Path,
    device: &Device,
    scorer: &mut Scorer,
    counts: &mut CacheCounts,
    opts: &RunnerOptions,
) -> Result<GenerateOutput> {
    let (weight_hashes, sample_dir) = generate_sample_dir(run, model, cache_root)?;
    let dtype = run_dtype(&run.id, model, device, opts.dtype)?;
    let image_metrics: Vec<Metric> = run.metrics.iter().copied().filter(|m| m.is_image_metric()).collect();

    // The reference first: a bad reference fails the run before any sampling.
    let reference_summary = match reference {
        Some(spec) if image_metrics.iter().any(|m| m.needs_reference()) => {
            let path = spec.resolved.clone().map_err(anyhow::Error::msg)?;
            let reference = Reference::open(&path)?;
            reference.feasible(image_metrics.clone(), true, &mut Vec::new())?;
            let summary = scorer.counted(counts, |s| {
                s.extractor(convention)?;
                let extractor = &s.extractors[&convention.preprocess()];
                let mut line: Option<Progress> = None;
                let mut progress = |done: usize, total: usize| {
                    if opts.verbose {
                        let line = line.get_or_insert_with(|| {
                            // Cached features arrive all at once: done before this process, not a rate.
                            let before = if done >= total { total } else { 0 };
                            let every = (total / 32 / 50).max(1) as u64; // about 50 lines (batches of 32)
                            Progress::new(&format!("  {}: reference features", run.id), "images", total as u64, before as u64, every)
                        });
                        line.set_position(done as u64);
                    }
                };
                let summary = reference.summarize(extractor, Some(&s.cache), &image_metrics, 32, &mut progress);
                if let Some(line) = line {
                    line.finish();
                }
                summary
            })?;
            Some((path, summary))
        }
        _ => None,
    };

    // The generator is built only if some batch is missing: a finished run re-scores from cache.
    let mut generator: Option<Box<dyn Generator>> = None;
    let family = family_name(model.family).to_string();
    let mut steps = Vec::new();
    let batches = samples.div_ceil(u64::from(batch.max(1))) as usize;
    let mut scored = Scored::default();
    for &seed in seeds {
        let seed_dir = sample_batch_path(&sample_dir, seed, 0).parent().expect("a batch file has a folder").to_path_buf();
        std::fs::create_dir_all(&seed_dir).with_context(|| format!("creating {}", seed_dir.display()))?;
        // Generation feeds feature extraction batch by batch: no more than one batch of images
        // is held at a time, whatever the number of samples.
        let mut collector = FeatureCollector::new(FeatureNeeds::samples(&image_metrics));
        let extracted_before = scorer.cache.counts().1;
        let mut line = opts.verbose.then(|| {
            let done = (0..batches).take_while(|&b| sample_batch_path(&sample_dir, seed, b).is_file()).count() as u64;
            Progress::new(
                &format!("  {} seed {seed}", run.id),
                "images",
                samples,
                (done * u64::from(batch)).min(samples),
                (batches as u64 / 50).max(1),
            )
        });
        for b in 0..batches {
            let path = sample_batch_path(&sample_dir, seed, b);
            let images = if path.is_file() {
                counts.sample_batches_reused += 1;
                if image_metrics.is_empty() {
                    None
                } else {
                    Some(read_batch(&path)?)
                }
            } else {
                if generator.is_none() {
                    generator = Some(build_generator(model, model.resolution, suite_dir, device, dtype)?);
                }
                let g = generator.as_mut().expect("built above");
                let start = b * batch as usize;
                let n = (samples as usize - start).min(batch as usize);
                let labels = labels_for(start, n, g.num_classes());
                let mut step_log = StepLog::default();
                // One seed per batch, derived from the run's seed, so batches are independent of order.
                let s = g.sample(&labels, generate_batch_seed(seed, b), &mut step_log)?;
                if steps.is_empty() {
                    steps.extend(step_records(&family, &model.model, batch, &step_log));
                }
                let labels_i64: Vec<i64> = labels.iter().map(|&l| i64::from(l)).collect();
                let shape = [n as u64];
                genbench_metrics::npz::write_images_npz(
                    &path,
                    &s.images,
                    s.n,
                    s.height,
                    s.width,
                    &[genbench_metrics::npz::NpyArray::I64 { name: "arr_1", shape: &shape, data: &labels_i64 }],
                )?;
                counts.sample_batches_generated += 1;
                Some((s.images, s.height, s.width))
            };
            if let Some((pixels, h, w)) = images {
                let (pixels, h, w) = scoring_images(pixels, h, w, eval_resolution)?;
                let n = pixels.len() / (h * w * 3);
                let f = scorer.features(convention, &pixels, n, h, w)?;
                collector.push(&f)?;
            }
            if let Some(line) = line.as_mut() {
                line.set_position((((b + 1) * batch as usize) as u64).min(samples));
            }
        }
        if let Some(line) = line {
            line.finish();
        }
        if !image_metrics.is_empty() {
            let extracted_now = scorer.cache.counts().1;
            if extracted_now > extracted_before {
                counts.feature_sets_extracted += 1;
            } else {
                counts.feature_sets_reused += 1;
            }
            let summary = collector.finish()?;
            let label = reference_summary.as_ref().map(|(p, _)| p.display().to_string()).unwrap_or_default();
            let options = scorer.options(convention, pr_distances, &label)?;
            scored.add(seed, evaluate(&summary, reference_summary.as_ref().map(|(_, s)| s), &image_metrics, &options)?);
        }
    }
    let scored = scored.finish();
    let mut metrics = scored.metrics.clone();
    if run.metrics.contains(&Metric::GflopPerImage) {
        let g = match generator.as_ref() {
            Some(g) => g,
            None => {
                generator = Some(build_generator(model, model.resolution, suite_dir, device, dtype)?);
                generator.as_ref().expect("built")
            }
        };
        metrics.insert(Metric::GflopPerImage, g.flops_per_image().total() / 1e9);
    }
    if run.metrics.contains(&Metric::SecPerImage) && !steps.is_empty() {
        let secs: f64 = steps.iter().map(|s| s.ms).sum::<f64>() / 1e3;
        metrics.insert(Metric::SecPerImage, secs / f64::from(batch));
    }
    Ok(GenerateOutput {
        metrics,
        scored,
        images: samples * seeds.len() as u64,
        steps,
        settings: serde_json::json!({
            "task": run.settings_json(),
            "sample_cache": sample_dir.file_name().map(|n| n.to_string_lossy().into_owned()),
            "eval_resolution": eval_resolution,
            "reference": reference_summary.as_ref().map(|(p, _)| p),
        }),
        weight_hashes,
    })
}

// ---------------------------------------------------------------------------------------------
// The suite
// ---------------------------------------------------------------------------------------------

/// Runs the selected runs of `suite` and writes the results directory.
pub fn run_suite(suite: &Suite, opts: &RunnerOptions) -> Result<SuiteOutcome> {
    let selected = suite.select(&opts.only).map_err(anyhow::Error::msg)?;
    let started = SystemTime::now();
    let dir = results_dir(&opts.results_root, &suite.name, started);
    let cache_root = opts.results_root.join(&suite.name).join("cache");
    let device = opts.device.open()?;
    let suite_dir = suite.path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut scorer = Scorer::new(opts, &device, &cache_root);
    let mut counts = CacheCounts::default();
    let mut results = Vec::new();
    let mut profile_points = Vec::new();

    for (i, run) in selected.iter().enumerate() {
        let (family, model) = run.family_and_model();
        log(opts, format!("[{}/{}] {} ({family} / {model})", i + 1, selected.len(), run.id));
        if let Some(reason) = run.skip_reason() {
            log(opts, format!("  skipped: {reason}"));
            results.push(RunResult::skipped(&run.id, &family, &model, reason));
            continue;
        }
        let t0 = Instant::now();
        let mut result = RunResult::skipped(&run.id, &family, &model, "");
        let outcome: Result<()> = (|| {
            match &run.task {
                Task::Profile { model: spec, seeds, profile } => {
                    let out = run_profile(run, spec, seeds, profile, &suite_dir, &device, opts)?;
                    result.metrics = out.metrics;
                    result.steps = out.steps;
                    result.images = out.images;
                    result.settings = out.settings;
                    result.seeds = seeds.clone();
                    profile_points.extend(out.points);
                }
                Task::MetricCheck { images, split_at, convention, pr_distances } => {
                    let out = run_metric_check(run, images, *split_at, *convention, *pr_distances, &mut scorer, &mut counts)?;
                    result.images = out.images;
                    result.settings = out.settings;
                    record_scored(&mut result, out.scored);
                }
                Task::Generate { model: spec, samples, batch, seeds, reference, convention, pr_distances, eval_resolution } => {
                    check_kid_samples(run)?;
                    let out = run_generate(
                        run,
                        spec,
                        *samples,
                        *batch,
                        seeds,
                        reference.as_ref(),
                        *convention,
                        *pr_distances,
                        *eval_resolution,
                        &cache_root,
                        &suite_dir,
                        &device,
                        &mut scorer,
                        &mut counts,
                        opts,
                    )?;
                    record_scored(&mut result, out.scored);
                    result.metrics = out.metrics;
                    result.images = out.images;
                    result.steps = out.steps;
                    result.settings = out.settings;
                    result.weight_hashes = out.weight_hashes;
                    result.seeds = seeds.clone();
                }
            }
            Ok(())
        })();
        result.wall_seconds = t0.elapsed().as_secs_f64();
        result.status = match outcome {
            Ok(()) => RunStatus::Completed,
            Err(e) => {
                log(opts, format!("  failed: {e:#}"));
                RunStatus::Failed { error: format!("{e:#}") }
            }
        };
        if result.status == RunStatus::Completed {
            let shown: Vec<String> = result.metrics.iter().map(|(m, v)| format!("{m} {}", format_sig(*v, 4))).collect();
            log(opts, format!("  done in {} s: {}", format_sig(result.wall_seconds, 3), shown.join(", ")));
        }
        results.push(result);
    }
    derive_relative_metrics(&selected, &mut results);

    std::fs::create_dir_all(dir.join("plots")).with_context(|| format!("creating {}", dir.join("plots").display()))?;
    let plots = write_plots(&dir, &results, &profile_points)?;
    write_profile_csv(&dir.join("profile.csv"), &profile_points)?;
    write_evaluations_json(&dir.join("evaluations.json"), &results)?;
    let finished = SystemTime::now();
    let manifest = Manifest::new(
        suite,
        &results,
        Machine::detect(),
        suite.path.parent().and_then(git_state),
        &genbench_runtime::device::describe(&device),
        started,
        finished,
    );
    let comparisons = write_results(&dir, suite, &manifest, &results, &plots)?;
    Ok(SuiteOutcome { dir, results, comparisons, profile: profile_points, cache: counts, plots })
}

/// `evaluations.json`: per run, every seed's image-metric values and diagnostics (the same
/// object `genbench eval --out` writes under `metrics`), the spread over seeds, metrics that were
/// unavailable and why, and the warnings.
fn write_evaluations_json(path: &Path, results: &[RunResult]) -> Result<()> {
    let runs: Vec<serde_json::Value> = results
        .iter()
        .filter(|r| !r.evaluations.is_empty())
        .map(|r| {
            serde_json::json!({
                "run": r.id,
                "seeds": r.evaluations,
                "mean": r.metrics.iter().filter(|(m, _)| m.is_image_metric()).collect::<BTreeMap<_, _>>(),
                "spread": r.spread,
                "unavailable": r.unavailable,
                "warnings": r.warnings,
            })
        })
        .collect();
    let text = serde_json::to_string_pretty(&serde_json::json!({ "runs": runs }))? + "\n";
    write_atomically(path, |tmp| std::fs::write(tmp, &text).with_context(|| format!("writing {}", tmp.display())))
}

fn write_profile_csv(path: &Path, points: &[ProfilePoint]) -> Result<()> {
    let mut text = String::from(
        "run,family,model,resolution,batch,sec_per_image,gflop_per_image,steps_per_image,sampling_sec_per_image,sampling_gflop_per_image\n",
    );
    for p in points {
        text.push_str(&format!(
            "{},{},{},{},{},{:e},{:e},{},{:e},{:e}\n",
            p.run,
            p.family,
            p.model,
            p.resolution,
            p.batch,
            p.sec_per_image,
            p.gflop_per_image,
            p.steps_per_image,
            p.sampling_sec_per_image,
            p.sampling_gflop_per_image
        ));
    }
    write_atomically(path, |tmp| std::fs::write(tmp, &text).with_context(|| format!("writing {}", tmp.display())))
}

/// Per-step time and FLOPs of every run that recorded steps, and wall clock vs resolution of
/// every run that swept resolutions (one line per run).
fn write_plots(dir: &Path, results: &[RunResult], points: &[ProfilePoint]) -> Result<Vec<(String, PathBuf)>> {
    let mut plots = Vec::new();
    // One line per model at its smallest batch (eight lines of four models in two batches are
    // unreadable; steps.csv keeps them all), decode excluded: it is not a sampling step, and
    // summed into the last step it would hide that step's own cost.
    // A model profiled by several runs (a profile and a sweep) is drawn from its first run only:
    // the chart keys lines by model and batch and would add the runs' steps together.
    let mut steps: Vec<StepRecord> = Vec::new();
    let mut drawn: Vec<&str> = Vec::new();
    for r in results {
        if drawn.contains(&r.model.as_str()) {
            continue;
        }
        let Some(batch) = r.steps.iter().map(|s| s.batch).min() else { continue };
        drawn.push(&r.model);
        steps.extend(r.steps.iter().filter(|s| s.batch == batch && s.kind != StepKind::Decode.name()).cloned());
    }
    if !steps.is_empty() {
        for (stem, q) in [("step_time", StepQuantity::Milliseconds), ("step_gflop", StepQuantity::Gflop)] {
            let mut chart = per_step_chart(&steps, q);
            chart.title = format!("{} (decode excluded)", chart.title);
            write_chart(&chart, &dir.join("plots").join(stem))?;
            plots.push((chart.title.clone(), PathBuf::from("plots").join(format!("{stem}.png"))));
        }
    }
    let sweep = resolution_points(points);
    if !sweep.is_empty() {
        let chart = resolution_chart("Wall clock per image vs resolution", &sweep);
        write_chart(&chart, &dir.join("plots").join("resolution"))?;
        plots.push((chart.title.clone(), PathBuf::from("plots").join("resolution.png")));
    }
    Ok(plots)
}

/// Resolution sweeps (runs measured at two or more resolutions), at the smallest batch measured
/// (batch 1: latency), labelled by model.
pub fn resolution_points(points: &[ProfilePoint]) -> Vec<ResolutionPoint> {
    let mut out = Vec::new();
    // Distinct runs in first-seen order (points of different runs may interleave).
    let mut runs: Vec<&str> = Vec::new();
    for p in points {
        if !runs.contains(&p.run.as_str()) {
            runs.push(&p.run);
        }
    }
    for run in runs {
        let rows: Vec<&ProfilePoint> = points.iter().filter(|p| p.run == run).collect();
        let mut resolutions: Vec<u32> = rows.iter().map(|p| p.resolution).collect();
        resolutions.sort_unstable();
        resolutions.dedup();
        if resolutions.len() < 2 {
            continue;
        }
        let batch = rows.iter().map(|p| p.batch).min().unwrap_or(1);
        // Sampling steps alone (what the cost claims are about) and the whole image with its
        // decode, so the decoder's share is visible.
        for p in rows.iter().filter(|p| p.batch == batch) {
            out.push(ResolutionPoint {
                family: format!("{}, sampling steps", p.model),
                resolution: f64::from(p.resolution),
                seconds: p.sampling_sec_per_image,
            });
        }
        for p in rows.iter().filter(|p| p.batch == batch) {
            out.push(ResolutionPoint {
                family: format!("{}, with decode", p.model),
                resolution: f64::from(p.resolution),
                seconds: p.sec_per_image,
            });
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Dry run
// ---------------------------------------------------------------------------------------------

/// Dense f32 matmul throughput of this machine (GFLOP/s), from a short probe: the calibration of
/// `--dry-run`'s time estimates. Generators spend most of their FLOPs in such matmuls; attention
/// at small sizes, sampling and decoding overheads run slower, so estimates are lower bounds.
pub fn matmul_gflops_probe(device: &Device) -> Result<f64> {
    let n = 512;
    let a = candle_core::Tensor::randn(0f32, 1.0, (n, n), device)?;
    let b = candle_core::Tensor::randn(0f32, 1.0, (n, n), device)?;
    let _ = a.matmul(&b)?; // warm-up: thread pool, caches
    let reps = 8;
    let t = Instant::now();
    for _ in 0..reps {
        let c = a.matmul(&b)?;
        device.synchronize()?;
        drop(c);
    }
    let secs = t.elapsed().as_secs_f64();
    Ok(2.0 * (n * n * n) as f64 * f64::from(reps) / secs / 1e9)
}

/// One line of the dry-run plan.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PlanRow {
    pub id: String,
    pub kind: &'static str,
    pub model: String,
    /// Images sampled (profile: warm-up + timed, over batches and resolutions).
    pub images: u64,
    /// Analytic GFLOP per image at the model's resolution (None when it cannot be built).
    pub gflop_per_image: Option<f64>,
    /// Total TFLOP of the run's sampling.
    pub tflop_total: Option<f64>,
    pub estimated_seconds: Option<f64>,
    /// Skipped (missing inputs, not supported) or why FLOPs are unknown.
    pub note: String,
    /// Why the runner would refuse this run (it would fail, not be skipped), if it would.
    pub refusal: Option<String>,
}

/// torch-fidelity refuses KID on fewer rows than its subset size: a generate run under that
/// convention is refused before its samples are made, not after.
fn check_kid_samples(run: &Run) -> Result<()> {
    if let Task::Generate { convention, samples, .. } = &run.task {
        let kid = convention.kid_config(None);
        ensure!(
            !run.metrics.contains(&Metric::Kid)
                || kid.rule != genbench_metrics::kid::KidSubsetRule::Exact
                || *samples >= kid.subset_size as u64,
            "convention `{convention}` computes KID on subsets of exactly {} samples as torch-fidelity does; this run makes \
             {samples}: raise `samples`, drop `kid`, or use convention = \"adm\" (subsets shrink to the sample count)",
            kid.subset_size
        );
    }
    Ok(())
}

/// Why the runner would refuse `run` (fail it before or while running), checked without
/// building anything heavy: KID under torch-fidelity's convention on fewer samples than its
/// subset size, the dtype on `device`, the registry's resolution of
/// the model at every resolution it runs at (unknown names, unsupported overrides, settings the
/// family refuses), and a reference batch that is present but cannot serve the metrics. A run
/// the suite marks `unsupported` is skipped, not refused.
pub fn refusal(run: &Run, suite_dir: &Path, device: &Device, dtype_override: Option<DTypePolicy>) -> Option<String> {
    if run.unsupported.is_some() {
        return None;
    }
    let check = || -> Result<()> {
        check_kid_samples(run)?;
        if let Some(spec) = run.model_spec() {
            run_dtype(&run.id, spec, device, dtype_override)?;
            let mut random = spec.clone();
            random.weights = Weights::Random;
            let resolutions = match &run.task {
                Task::Profile { profile, .. } => profile_resolutions(spec, profile),
                _ => vec![spec.resolution],
            };
            for px in resolutions {
                resolve_model(&random, px, suite_dir).with_context(|| format!("{} at {px} px", spec.model))?;
            }
        }
        if let Task::Generate { reference: Some(spec), .. } = &run.task {
            let image_metrics: Vec<Metric> = run.metrics.iter().copied().filter(|m| m.needs_reference()).collect();
            if let (Ok(path), false) = (&spec.resolved, image_metrics.is_empty()) {
                if path.exists() {
                    Reference::open(path)?.feasible(image_metrics, true, &mut Vec::new())?;
                }
            }
        }
        Ok(())
    };
    check().err().map(|e| format!("{e:#}"))
}

/// The plan of `--dry-run`: per run, analytic FLOPs (built with random weights: the FLOP count
/// depends on shapes only) and an estimated time = FLOPs / the probed matmul throughput.
pub fn plan(
    suite: &Suite,
    only: &[String],
    gflops_per_s: f64,
    device: &Device,
    dtype_override: Option<DTypePolicy>,
) -> Result<Vec<PlanRow>> {
    let suite_dir = suite.path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut rows = Vec::new();
    for run in suite.select(only).map_err(anyhow::Error::msg)? {
        let skip = run.skip_reason();
        let (kind, images_by_px): (&'static str, Vec<(u32, u64)>) = match &run.task {
            Task::Profile { model, profile, seeds } => {
                let calls = u64::from(profile.warmup) + u64::from(profile.repeats.max(1)) * seeds.len().max(1) as u64;
                let per_px: u64 = profile.batches.iter().map(|&b| u64::from(b) * calls).sum();
                ("profile", profile_resolutions(model, profile).into_iter().map(|px| (px, per_px)).collect())
            }
            Task::Generate { model, samples, .. } => ("generate", vec![(model.resolution, *samples)]),
            Task::MetricCheck { .. } => ("metric_check", vec![]),
        };
        let mut row = PlanRow {
            id: run.id.clone(),
            kind,
            model: run.family_and_model().1,
            images: images_by_px.iter().map(|(_, n)| n).sum(),
            gflop_per_image: None,
            tflop_total: None,
            estimated_seconds: None,
            note: skip.map(|r| format!("skipped: {r}")).unwrap_or_default(),
            refusal: refusal(run, &suite_dir, device, dtype_override),
        };
        if let (Some(spec), None, None) = (run.model_spec(), &row.refusal, &run.unsupported) {
            // FLOPs need only the shapes: count them on a random-weight build of the same shape.
            let mut random = spec.clone();
            random.weights = Weights::Random;
            let mut total = 0.0;
            let mut ok = true;
            let dtype = run_dtype(&run.id, spec, device, dtype_override);
            for (px, n) in &images_by_px {
                match dtype
                    .as_ref()
                    .map_err(|e| anyhow::anyhow!("{e:#}"))
                    .and_then(|d| build_generator(&random, *px, &suite_dir, device, *d))
                {
                    Ok(g) => {
                        let gflop = g.flops_per_image().total() / 1e9;
                        if *px == spec.resolution || row.gflop_per_image.is_none() {
                            row.gflop_per_image = Some(gflop);
                        }
                        total += gflop * *n as f64;
                    }
                    Err(e) => {
                        ok = false;
                        row.refusal = Some(format!("cannot build: {e:#}"));
                    }
                }
            }
            if ok {
                row.tflop_total = Some(total / 1e3);
                row.estimated_seconds = Some(total / gflops_per_s);
            }
        }
        rows.push(row);
    }
    Ok(rows)
}

/// The plan as a table for the console.
pub fn format_plan(suite: &Suite, rows: &[PlanRow], gflops_per_s: f64) -> String {
    let mut s = format!("Plan for suite `{}` ({} runs)\n", suite.name, rows.len());
    s.push_str(&format!(
        "{:<22} {:<12} {:<14} {:>7} {:>12} {:>10} {:>10}  note\n",
        "run", "kind", "model", "images", "GFLOP/image", "TFLOP", "est. time"
    ));
    let opt = |v: Option<f64>| v.map(|x| format_sig(x, 3)).unwrap_or_else(|| "-".into());
    for r in rows {
        s.push_str(&format!(
            "{:<22} {:<12} {:<14} {:>7} {:>12} {:>10} {:>10}  {}\n",
            r.id,
            r.kind,
            r.model,
            r.images,
            opt(r.gflop_per_image),
            opt(r.tflop_total),
            r.estimated_seconds.map(|x| format!("{} s", format_sig(x, 2))).unwrap_or_else(|| "-".into()),
            match &r.refusal {
                Some(why) => format!("REFUSED: {why}"),
                None => r.note.clone(),
            }
        ));
    }
    let refused = rows.iter().filter(|r| r.refusal.is_some()).count();
    if refused > 0 {
        s.push_str(&format!("{refused} run(s) would be refused by the runner (REFUSED above, with the reason).\n"));
    }
    // Skipped and refused runs are not counted. `+ 0.0`: an empty f64 sum is -0.0, which would print as "-0".
    let total: f64 =
        rows.iter().filter(|r| r.note.is_empty() && r.refusal.is_none()).filter_map(|r| r.estimated_seconds).sum::<f64>() + 0.0;
    s.push_str(&format!(
        "Estimated sampling time of the runs that will run {} s: analytic FLOPs / {} GFLOP/s (a 512x512 f32 matmul probe on this machine just now); a lower bound, as attention, sampling and decoding overheads run below matmul peak. Metric checks and Inception feature extraction are not included.\n",
        format_sig(total, 3),
        format_sig(gflops_per_s, 3)
    ));
    s
}
