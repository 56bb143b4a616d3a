//! `genbench eval` and `genbench stats`: ADM-style evaluation of a sample set against a reference.
//!
//! Inputs are `.npz` batches (`arr_0` uint8 `[N, H, W, 3]`, optional `mu`/`sigma`/`mu_s`/`sigma_s`)
//! or folders of PNG/JPEG images. As in ADM's evaluator, a reference npz that carries statistics
//! supplies FID/sFID directly; its images are only read for precision/recall and KID (or when a
//! statistic is missing). Everything is validated before the network runs, and the JSON result is
//! written atomically at the very end, so a failed run never leaves a file that looks complete.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use genbench_metrics::convention::Convention;
use genbench_metrics::checks::{class_sorted_warning_from_labels, class_sorted_warning_from_logits, rank_deficiency_warning};
use genbench_metrics::features::{ExtractorOptions, InceptionExtractor};
use genbench_metrics::fid::{frechet_distance, spatial_frechet_distance, FidResult};
use genbench_metrics::images::ImageFolder;
use genbench_metrics::inception::{WeightsSource, LOGITS_DIM, POOL3_DIM, SPATIAL_DIM};
use genbench_metrics::inception_score::InceptionScore;
use genbench_metrics::kid::{kernel_inception_distance, KidResult};
use genbench_metrics::npz::{self, ImagesInfo, NpzStatistics};
use genbench_metrics::precision_recall::{precision_recall, DistancePrecision, PrConfig, PrecisionRecall};
use genbench_metrics::preprocess::Preprocess;
use genbench_metrics::stats::{FeatureStats, StatsAccumulator};
use genbench_runtime::device::DeviceChoice;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::{json, Value};

/// ADM's metrics; KID is opt-in.
const DEFAULT_METRICS: &str = "fid,sfid,is,pr";
/// ADM flags an imaginary part above this in its sqrtm.
const ADM_IMAGINARY_LIMIT: f64 = 1e-3;

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// Samples: an .npz with arr_0 (uint8 [N,H,W,3]) or a folder of PNG/JPEG images.
    #[arg(long)]
    pub samples: PathBuf,
    /// Reference: an .npz (arr_0 and/or mu, sigma, mu_s, sigma_s) or an image folder.
    #[arg(long = "ref")]
    pub reference: PathBuf,
    /// Comma-separated subset of fid,sfid,is,pr,kid.
    #[arg(long, default_value = DEFAULT_METRICS)]
    pub metrics: String,
    #[command(flatten)]
    pub extractor: ExtractorArgs,
    /// Write the results as JSON to this file (atomically).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Arithmetic of the precision/recall distances: fp16 (ADM's TF path) or f32.
    #[arg(long, default_value = "fp16", value_parser = parse_pr_precision)]
    pub pr_precision: DistancePrecision,
    /// Seed of the KID subset draws (numpy RandomState; default 2020, torch-fidelity's).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Whose conventions to follow: adm (guided-diffusion evaluator), torch-fidelity or
    /// clean-fid. Selects the IS splits, the KID subsets and the preprocessing (unless
    /// --preprocess is given).
    #[arg(long, default_value = "adm")]
    pub convention: Convention,
}

#[derive(clap::Args, Debug)]
pub struct StatsArgs {
    /// An .npz with arr_0 (uint8 [N,H,W,3]) or a folder of PNG/JPEG images.
    pub input: PathBuf,
    /// Output statistics file (mu, sigma, mu_s, sigma_s as ADM's evaluator reads them).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub extractor: ExtractorArgs,
}

/// Feature-extractor settings shared by `eval` and `stats`.
#[derive(clap::Args, Debug)]
pub struct ExtractorArgs {
    /// Resize/normalisation: adm (TF1 bilinear), clean (Pillow bicubic) or pytorch; default:
    /// the convention's (adm for `stats`).
    #[arg(long)]
    pub preprocess: Option<Preprocess>,
    /// cpu, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    /// Images per forward pass.
    #[arg(long, default_value_t = 50)]
    pub batch_size: usize,
    /// Inception weights file (TorchScript .pt, pytorch-fid .pth or safetensors); default: the
    /// cached FID Inception, fetched on first use.
    #[arg(long)]
    pub inception_weights: Option<PathBuf>,
}

fn parse_pr_precision(s: &str) -> Result<DistancePrecision, String> {
    match s.to_ascii_lowercase().as_str() {
        "fp16" | "f16" | "adm" => Ok(DistancePrecision::Fp16Adm),
        "f32" | "fp32" => Ok(DistancePrecision::F32),
        other => Err(format!("unknown precision '{other}': expected fp16 or f32")),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
enum Metric {
    Fid,
    Sfid,
    Is,
    Pr,
    Kid,
}

impl Metric {
    fn parse_list(list: &str) -> Result<Vec<Metric>> {
        let mut out = Vec::new();
        for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let metric = match name.to_ascii_lowercase().as_str() {
                "fid" => Metric::Fid,
                "sfid" => Metric::Sfid,
                "is" => Metric::Is,
                "pr" | "precision" | "recall" => Metric::Pr,
                "kid" => Metric::Kid,
                other => bail!("unknown metric '{other}' in --metrics: expected fid, sfid, is, pr, kid"),
            };
            if !out.contains(&metric) {
                out.push(metric);
            }
        }
        ensure!(!out.is_empty(), "--metrics is empty: give some of fid, sfid, is, pr, kid");
        out.sort();
        Ok(out)
    }

    fn label(self) -> &'static str {
        match self {
            Metric::Fid => "FID",
            Metric::Sfid => "sFID",
            Metric::Is => "IS",
            Metric::Pr => "precision/recall",
            Metric::Kid => "KID",
        }
    }
}

/// An image source: an npz batch or an image folder.
enum ImageSource {
    Npz { path: PathBuf, info: ImagesInfo },
    Folder(ImageFolder),
}

impl ImageSource {
    fn open(path: &Path, role: &str) -> Result<Self> {
        if path.is_dir() {
            let folder = ImageFolder::open(path).with_context(|| format!("{role} folder"))?;
            folder.check_headers().with_context(|| format!("{role} folder"))?;
            return Ok(Self::Folder(folder));
        }
        let info = npz::read_images_info(path).with_context(|| format!("{role} images"))?;
        Ok(Self::Npz { path: path.to_owned(), info })
    }

    fn info(&self) -> ImagesInfo {
        match self {
            Self::Npz { info, .. } => *info,
            Self::Folder(folder) => folder.info(),
        }
    }

    fn for_each_batch(&self, batch: usize, f: impl FnMut(&[u8], usize) -> Result<()>) -> Result<()> {
        match self {
            Self::Npz { path, .. } => npz::for_each_image_batch(path, batch, f).map(|_| ()),
            Self::Folder(folder) => folder.for_each_batch(batch, f),
        }
    }

    fn describe(&self) -> Value {
        let info = self.info();
        let kind = match self {
            Self::Npz { .. } => "npz",
            Self::Folder(_) => "folder",
        };
        json!({ "kind": kind, "n": info.n, "height": info.h, "width": info.w })
    }
}

/// What to keep while extracting features from one side.
#[derive(Clone, Copy, Debug, Default)]
struct Wanted {
    pool_stats: bool,
    spatial_stats: bool,
    pool_rows: bool,
    logits: bool,
}

impl Wanted {
    fn any(&self) -> bool {
        self.pool_stats || self.spatial_stats || self.pool_rows || self.logits
    }
}

/// Features gathered from one side.
struct Collected {
    n: usize,
    pool_stats: Option<FeatureStats>,
    spatial_stats: Option<FeatureStats>,
    pool_rows: Vec<f32>,
    logits: Option<Vec<f32>>,
}

fn make_extractor(args: &ExtractorArgs, preprocess: Preprocess) -> Result<InceptionExtractor> {
    ensure!(args.batch_size > 0, "--batch-size must be at least 1");
    let weights = match &args.inception_weights {
        Some(path) => WeightsSource::File(path.clone()),
        None => WeightsSource::Default,
    };
    let device = args.device.open()?;
    InceptionExtractor::new(ExtractorOptions { preprocess, device, batch_size: args.batch_size, weights })
        .context("cannot set up the Inception feature extractor")
}

fn progress_bar(len: usize, label: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    let style = ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} images ({per_sec}, eta {eta})")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(label.to_owned());
    bar
}

/// Runs the network over `source`, keeping what `wanted` asks for.
fn extract(extractor: &InceptionExtractor, source: &ImageSource, wanted: Wanted, batch: usize, label: &str) -> Result<Collected> {
    let info = source.info();
    let mut pool = wanted.pool_stats.then(|| StatsAccumulator::new(POOL3_DIM));
    let mut spatial = wanted.spatial_stats.then(|| StatsAccumulator::new(SPATIAL_DIM));
    let mut pool_rows = Vec::new();
    let mut logits: Option<Vec<f32>> = (wanted.logits && extractor.has_logits()).then(Vec::new);
    let bar = progress_bar(info.n, label);
    source.for_each_batch(batch, |pixels, count| {
        let f = extractor.extract(pixels, count, info.h, info.w)?;
        ensure!(f.n == count, "feature extractor returned {} rows for {count} images", f.n);
        if let Some(acc) = pool.as_mut() {
            acc.push_batch(&f.pool3, POOL3_DIM).context("pool3 features")?;
        }
        if let Some(acc) = spatial.as_mut() {
            acc.push_batch(&f.spatial, SPATIAL_DIM).context("spatial features")?;
        }
        if wanted.pool_rows {
            pool_rows.extend_from_slice(&f.pool3);
        }
        if let (Some(all), Some(batch_logits)) = (logits.as_mut(), f.logits.as_ref()) {
            all.extend_from_slice(batch_logits);
        }
        bar.inc(count as u64);
        Ok(())
    })?;
    bar.finish_and_clear();
    Ok(Collected {
        n: info.n,
        pool_stats: pool.map(StatsAccumulator::finish).transpose()?,
        spatial_stats: spatial.map(StatsAccumulator::finish).transpose()?,
        pool_rows,
        logits,
    })
}

/// The reference side: statistics from the file where present, images where needed.
struct ReferenceInput {
    path: PathBuf,
    file_stats: NpzStatistics,
    images: Option<ImageSource>,
}

impl ReferenceInput {
    fn open(path: &Path) -> Result<Self> {
        if path.is_dir() {
            let images = ImageSource::open(path, "reference")?;
            return Ok(Self { path: path.to_owned(), file_stats: NpzStatistics::default(), images: Some(images) });
        }
        let file_stats = npz::read_statistics(path).context("reference statistics")?;
        check_stats_dim(path, file_stats.pool.as_ref(), "mu/sigma", POOL3_DIM, "pool3 (FID)")?;
        check_stats_dim(path, file_stats.spatial.as_ref(), "mu_s/sigma_s", SPATIAL_DIM, "spatial (sFID)")?;
        let has_images = npz::array_names(path)?.iter().any(|n| n == npz::IMAGES_KEY);
        let images = if has_images { Some(ImageSource::open(path, "reference")?) } else { None };
        ensure!(
            images.is_some() || file_stats.has_any(),
            "{}: neither images (arr_0) nor statistics (mu, sigma, mu_s, sigma_s); give an ADM reference batch",
            path.display()
        );
        Ok(Self { path: path.to_owned(), file_stats, images })
    }

    /// What must be extracted from the reference images for `metrics`.
    fn wanted(&self, metrics: &[Metric]) -> Wanted {
        Wanted {
            pool_stats: metrics.contains(&Metric::Fid) && self.file_stats.pool.is_none(),
            spatial_stats: metrics.contains(&Metric::Sfid) && self.file_stats.spatial.is_none(),
            pool_rows: metrics.contains(&Metric::Pr) || metrics.contains(&Metric::Kid),
            logits: false,
        }
    }
}

/// File statistics must match the extractor's feature size; checked before the network runs.
fn check_stats_dim(path: &Path, stats: Option<&FeatureStats>, keys: &str, expected: usize, what: &str) -> Result<()> {
    match stats {
        Some(s) if s.dim() != expected => bail!(
            "{}: {keys} have {} dims but the Inception {what} features have {expected}; the feature dims \
             of samples and reference differ, so this reference was made with another extractor \
             (recompute it with `genbench stats`)",
            path.display(),
            s.dim()
        ),
        _ => Ok(()),
    }
}

/// Drops metrics the reference cannot support: an error when the user asked for them
/// explicitly, a warning when they came from the default list.
fn feasible_metrics(requested: Vec<Metric>, explicit: bool, reference: &ReferenceInput, warnings: &mut Vec<String>) -> Result<Vec<Metric>> {
    if reference.images.is_some() {
        return Ok(requested);
    }
    let mut kept = Vec::new();
    for metric in requested {
        let missing = match metric {
            Metric::Fid if reference.file_stats.pool.is_none() => Some("mu/sigma or arr_0"),
            Metric::Sfid if reference.file_stats.spatial.is_none() => Some("mu_s/sigma_s or arr_0"),
            Metric::Pr | Metric::Kid => Some("reference images (arr_0)"),
            _ => None,
        };
        match missing {
            None => kept.push(metric),
            Some(what) if explicit => bail!(
                "{}: {} needs {what}, which this file does not have; drop it from --metrics or give a reference batch with images",
                reference.path.display(),
                metric.label()
            ),
            Some(what) => warnings.push(format!("{} skipped: the reference has no {what}", metric.label())),
        }
    }
    ensure!(!kept.is_empty(), "{}: none of the requested metrics can be computed from this reference", reference.path.display());
    Ok(kept)
}

fn sample_wanted(metrics: &[Metric]) -> Wanted {
    Wanted {
        pool_stats: metrics.contains(&Metric::Fid),
        spatial_stats: metrics.contains(&Metric::Sfid),
        pool_rows: metrics.contains(&Metric::Pr) || metrics.contains(&Metric::Kid),
        logits: metrics.contains(&Metric::Is),
    }
}

/// Results of every metric that was computed, ready for the table and the JSON.
#[derive(Default, Serialize)]
struct MetricResults {
    #[serde(skip_serializing_if = "Option::is_none")]
    fid: Option<FidResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sfid: Option<FidResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    inception_score: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    precision_recall: Option<PrecisionRecall>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kid: Option<KidResult>,
}

fn fid_for(
    what: &str,
    sample: Option<&FeatureStats>,
    reference: Option<&FeatureStats>,
    reference_path: &Path,
    compute: fn(&FeatureStats, &FeatureStats) -> Result<FidResult>,
    warnings: &mut Vec<String>,
) -> Result<FidResult> {
    let (sample, reference) = (sample.context("internal: sample statistics missing")?, reference.context("internal: reference statistics missing")?);
    if sample.dim() != reference.dim() {
        bail!(
            "{what}: sample features have {} dims but the reference statistics in {} have {}; \
             the reference was made with a different feature extractor, recompute it with `genbench stats`",
            sample.dim(),
            reference_path.display(),
            reference.dim()
        );
    }
    let result = compute(sample, reference).with_context(|| format!("{what} against {}", reference_path.display()))?;
    warnings.extend(rank_deficiency_warning(sample.n, sample.dim(), what, "the sample set"));
    warnings.extend(rank_deficiency_warning(reference.n, reference.dim(), what, "the reference set"));
    if result.eps_retry_used {
        warnings.push(format!("{what}: non-finite first attempt; 1e-6 was added to both covariance diagonals (as ADM does)"));
    }
    if result.max_imaginary > ADM_IMAGINARY_LIMIT {
        warnings.push(format!(
            "{what}: clipped negative eigenvalues up to an imaginary part of {:.2e} (> {ADM_IMAGINARY_LIMIT}, where ADM's evaluator would raise)",
            result.max_imaginary
        ));
    }
    Ok(result)
}

fn inception_score_json(convention: Convention, extractor: &InceptionExtractor, logits: Option<&Vec<f32>>, warnings: &mut Vec<String>) -> Result<Value> {
    if let Some(reason) = convention.no_is_reason() {
        warnings.push(format!("IS unavailable: {reason}"));
        return Ok(json!({ "available": false, "reason": reason }));
    }
    let Some(logits) = logits.filter(|_| extractor.has_logits()) else {
        warnings.push(format!("IS unavailable: {}", extractor.no_fc_message()));
        return Ok(json!({ "available": false, "reason": extractor.no_fc_message() }));
    };
    warnings.extend(class_sorted_warning_from_logits(logits, LOGITS_DIM));
    let is: InceptionScore = convention.inception_score(logits, LOGITS_DIM)?;
    Ok(json!({ "available": true, "mean": is.mean, "std": is.std, "splits": convention.is_splits(), "split_scores": is.split_scores }))
}

fn format_table(results: &MetricResults, n_samples: usize, n_reference: usize) -> String {
    let mut cells = Vec::new();
    if let Some(r) = &results.fid {
        cells.push(format!("FID {:.4}", r.value));
    }
    if let Some(r) = &results.sfid {
        cells.push(format!("sFID {:.4}", r.value));
    }
    if let Some(is) = &results.inception_score {
        match is["mean"].as_f64() {
            Some(mean) => cells.push(format!("IS {mean:.4}")),
            None => cells.push("IS unavailable".to_owned()),
        }
    }
    if let Some(pr) = &results.precision_recall {
        cells.push(format!("Precision {:.4}", pr.precision));
        cells.push(format!("Recall {:.4}", pr.recall));
    }
    if let Some(kid) = &results.kid {
        cells.push(format!("KID {:.5} ± {:.5}", kid.mean, kid.std));
    }
    let reference = if n_reference > 0 { n_reference.to_string() } else { "stats".to_owned() };
    cells.push(format!("N {n_samples} vs {reference}"));
    cells.join(" | ")
}

/// `genbench eval`.
pub fn run_eval(args: EvalArgs) -> Result<()> {
    let started = Instant::now();
    let explicit = args.metrics != DEFAULT_METRICS;
    let mut warnings = Vec::new();

    // Validate both inputs before loading the network.
    let samples = ImageSource::open(&args.samples, "samples")?;
    let n_samples = samples.info().n;
    ensure!(n_samples >= 2, "{}: {n_samples} sample image(s); evaluation needs at least 2", args.samples.display());
    let reference = ReferenceInput::open(&args.reference)?;
    let metrics = feasible_metrics(Metric::parse_list(&args.metrics)?, explicit, &reference, &mut warnings)?;
    if let Some(n_ref) = reference.images.as_ref().map(|r| r.info().n) {
        ensure!(n_ref >= 2, "{}: {n_ref} reference image(s); evaluation needs at least 2", args.reference.display());
    }
    if let ImageSource::Npz { path, .. } = &samples {
        if let Some(labels) = npz::read_int_array(path, npz::LABELS_KEY)? {
            warnings.extend(class_sorted_warning_from_labels(&labels));
        }
        if npz::array_names(path)?.iter().any(|n| n == "mu") {
            warnings.push(format!(
                "{} carries mu/sigma statistics; ADM's evaluator would use them instead of the images, \
                 genbench recomputes them from arr_0",
                path.display()
            ));
        }
    }
    if let Some(out) = &args.out {
        check_output_dir(out)?;
    }

    let extractor = make_extractor(&args.extractor, args.extractor.preprocess.unwrap_or(args.convention.preprocess()))?;
    if metrics.iter().any(|m| matches!(m, Metric::Fid | Metric::Sfid)) {
        // Statistics written by `genbench stats` under another mode or network are refused.
        reference.file_stats.check_made_with(&reference.path, &extractor.preprocess().to_string(), extractor.weights_sha1())?;
    }
    let batch = args.extractor.batch_size;
    let sample_features = extract(&extractor, &samples, sample_wanted(&metrics), batch, "samples")?;
    let ref_wanted = reference.wanted(&metrics);
    let ref_features = match (&reference.images, ref_wanted.any()) {
        (Some(images), true) => Some(extract(&extractor, images, ref_wanted, batch, "reference")?),
        _ => None,
    };
    let ref_pool = reference.file_stats.pool.as_ref().or(ref_features.as_ref().and_then(|f| f.pool_stats.as_ref()));
    let ref_spatial = reference.file_stats.spatial.as_ref().or(ref_features.as_ref().and_then(|f| f.spatial_stats.as_ref()));

    let mut results = MetricResults::default();
    for metric in &metrics {
        match metric {
            Metric::Fid => {
                results.fid = Some(fid_for("FID", sample_features.pool_stats.as_ref(), ref_pool, &reference.path, frechet_distance, &mut warnings)?)
            }
            Metric::Sfid => {
                results.sfid = Some(fid_for(
                    "sFID",
                    sample_features.spatial_stats.as_ref(),
                    ref_spatial,
                    &reference.path,
                    spatial_frechet_distance,
                    &mut warnings,
                )?)
            }
            Metric::Is => {
                results.inception_score = Some(inception_score_json(args.convention, &extractor, sample_features.logits.as_ref(), &mut warnings)?)
            }
            Metric::Pr => {
                let rows = &ref_features.as_ref().context("internal: reference features missing")?.pool_rows;
                let cfg = PrConfig { precision: args.pr_precision, ..PrConfig::default() };
                let pr = precision_recall(rows, &sample_features.pool_rows, POOL3_DIM, &cfg).context("precision/recall")?;
                if pr.fp32_fallback_blocks > 0 {
                    warnings.push(format!("precision/recall: {} fp16 distance block(s) overflowed and were recomputed in float32 (as ADM does)", pr.fp32_fallback_blocks));
                }
                results.precision_recall = Some(pr);
            }
            Metric::Kid => {
                let rows = &ref_features.as_ref().context("internal: reference features missing")?.pool_rows;
                let cfg = args.convention.kid_config(args.seed);
                results.kid = Some(kernel_inception_distance(&sample_features.pool_rows, rows, POOL3_DIM, &cfg).context("KID")?);
            }
        }
    }

    let n_reference = reference.images.as_ref().map_or(0, |r| r.info().n);
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    println!("{}", format_table(&results, n_samples, n_reference));
    if let Some(out) = &args.out {
        let report = eval_report(&args, &metrics, &samples, &reference, &extractor, &results, &warnings, started);
        write_json(out, &report)?;
        eprintln!("wrote {}", out.display());
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn eval_report(
    args: &EvalArgs,
    metrics: &[Metric],
    samples: &ImageSource,
    reference: &ReferenceInput,
    extractor: &InceptionExtractor,
    results: &MetricResults,
    warnings: &[String],
    started: Instant,
) -> Value {
    let mut reference_json = json!({
        "path": reference.path,
        "statistics_from_file": {
            "fid": reference.file_stats.pool.is_some(),
            "sfid": reference.file_stats.spatial.is_some(),
        },
    });
    if let Some(images) = &reference.images {
        reference_json["images"] = images.describe();
    }
    let mut samples_json = samples.describe();
    samples_json["path"] = json!(args.samples);
    json!({
        "genbench_version": env!("CARGO_PKG_VERSION"),
        "candle_version": genbench_runtime::info::CANDLE_VERSION,
        "runtime": genbench_runtime::info::runtime_info(),
        "samples": samples_json,
        "reference": reference_json,
        "settings": {
            "metrics": metrics,
            "convention": args.convention,
            "preprocess": extractor.preprocess().to_string(),
            "device": args.extractor.device.to_string(),
            "batch_size": args.extractor.batch_size,
            "pr": PrConfig { precision: args.pr_precision, ..PrConfig::default() },
            "is_splits": args.convention.is_splits(),
            "kid": args.convention.kid_config(args.seed),
            "covariance": "float64, N-1 (np.cov); mean float64",
        },
        "weights": {
            "sha1": extractor.weights_sha1(),
            "has_fc": extractor.has_logits(),
            "file": args.extractor.inception_weights,
        },
        "metrics": results,
        "warnings": warnings,
        "wall_time_s": started.elapsed().as_secs_f64(),
    })
}

fn check_output_dir(out: &Path) -> Result<()> {
    let dir = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    ensure!(dir.is_dir(), "--out {}: directory {} does not exist", out.display(), dir.display());
    Ok(())
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value)? + "\n";
    npz::write_file_atomically(path, |f| {
        use std::io::Write;
        f.write_all(text.as_bytes())?;
        Ok(())
    })
}

/// `genbench stats`.
pub fn run_stats(args: StatsArgs) -> Result<()> {
    let source = ImageSource::open(&args.input, "input")?;
    let n = source.info().n;
    ensure!(n >= 2, "{}: {n} image(s); statistics need at least 2", args.input.display());
    check_output_dir(&args.out)?;
    let preprocess = args.extractor.preprocess.unwrap_or_default();
    let extractor = make_extractor(&args.extractor, preprocess)?;
    let wanted = Wanted { pool_stats: true, spatial_stats: true, ..Wanted::default() };
    let features = extract(&extractor, &source, wanted, args.extractor.batch_size, "images")?;
    let pool = features.pool_stats.context("internal: pool statistics missing")?;
    let spatial = features.spatial_stats.context("internal: spatial statistics missing")?;
    for w in [rank_deficiency_warning(n, pool.dim(), "FID", "this set"), rank_deficiency_warning(n, spatial.dim(), "sFID", "this set")]
        .into_iter()
        .flatten()
    {
        eprintln!("warning: {w}");
    }
    let provenance = npz::StatsProvenance { preprocess: preprocess.to_string(), weights_sha1: extractor.weights_sha1().to_owned() };
    npz::write_statistics_with(&args.out, &pool, Some(&spatial), Some(&provenance))?;
    let summary: BTreeMap<&str, Value> = BTreeMap::from([
        ("n", json!(features.n)),
        ("weights_sha1", json!(extractor.weights_sha1())),
        ("preprocess", json!(preprocess.to_string())),
    ]);
    println!("wrote {} ({})", args.out.display(), serde_json::to_string(&summary)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_lists() {
        assert_eq!(Metric::parse_list("pr, FID,fid").unwrap(), vec![Metric::Fid, Metric::Pr]);
        assert!(Metric::parse_list("fid,lpips").unwrap_err().to_string().contains("lpips"));
        assert!(Metric::parse_list(" , ").is_err());
        assert_eq!(parse_pr_precision("F32"), Ok(DistancePrecision::F32));
        assert!(parse_pr_precision("bf16").is_err());
    }
}
