//! `genbench eval` and `genbench stats`: ADM-style evaluation of a sample set against a reference,
//! and reference statistics. The binary's `src/cmd/eval.rs` only maps flags onto [`EvalJob`] /
//! [`StatsJob`] and prints; the metrics themselves are `genbench_metrics::evaluate`'s.
//!
//! Inputs are `.npz` batches (`arr_0` uint8 `[N, H, W, 3]`, optional `mu`/`sigma`/`mu_s`/`sigma_s`)
//! or folders of PNG/JPEG images. As in ADM's evaluator, a reference npz that carries statistics
//! supplies FID/sFID directly; its images are only read for precision/recall and KID (or when a
//! statistic is missing). Everything is validated before the network runs, and the JSON result is
//! written atomically at the very end, so a failed run never leaves a file that looks complete.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use genbench_metrics::checks::{class_sorted_warning_from_labels, rank_deficiency_warning};
use genbench_metrics::convention::Convention;
use genbench_metrics::evaluate::{collect_features, evaluate, EvalOptions, Evaluation, FeatureNeeds, ImageSource, Metric, Reference};
use genbench_metrics::features::{ExtractorOptions, InceptionExtractor};
use genbench_metrics::inception::WeightsSource;
use genbench_metrics::npz;
use genbench_metrics::precision_recall::{DistancePrecision, PrConfig};
use genbench_metrics::preprocess::Preprocess;
use genbench_runtime::progress::Progress;
use genbench_runtime::DeviceChoice;
use serde_json::{json, Value};

/// How Inception features are extracted (shared by eval and stats). The network runs in f32.
#[derive(Debug, Clone)]
pub struct ExtractorSettings {
    /// None: the convention's (adm for stats).
    pub preprocess: Option<Preprocess>,
    pub device: DeviceChoice,
    /// Images per forward pass.
    pub batch_size: usize,
    /// None: the cached FID Inception, fetched on first use.
    pub inception_weights: Option<PathBuf>,
}

/// One `genbench eval`.
#[derive(Debug, Clone)]
pub struct EvalJob {
    pub samples: PathBuf,
    pub reference: PathBuf,
    /// Comma-separated subset of fid,sfid,is,pr,kid.
    pub metrics: String,
    /// Whether the metrics were chosen by the user: one that the inputs cannot give is then an
    /// error, not a warning.
    pub metrics_explicit: bool,
    pub extractor: ExtractorSettings,
    /// JSON result, written atomically at the end.
    pub out: Option<PathBuf>,
    pub pr_precision: DistancePrecision,
    /// Seed of the KID subset draws (None: the convention's).
    pub seed: Option<u64>,
    pub convention: Convention,
}

/// What an evaluation gave: the metrics with their diagnostics, every warning (input checks and
/// the evaluation's), and the one-line summary the command prints.
pub struct EvalOutcome {
    pub evaluation: Evaluation,
    pub warnings: Vec<String>,
    pub summary: String,
}

fn make_extractor(settings: &ExtractorSettings, preprocess: Preprocess) -> Result<InceptionExtractor> {
    ensure!(settings.batch_size > 0, "--batch-size must be at least 1");
    let weights = match &settings.inception_weights {
        Some(path) => WeightsSource::File(path.clone()),
        None => WeightsSource::Default,
    };
    let device = settings.device.open()?;
    InceptionExtractor::new(ExtractorOptions { preprocess, device, batch_size: settings.batch_size, weights })
        .context("cannot set up the Inception feature extractor")
}

/// Progress of an Inception pass as a `(done, total)` callback (bar on a terminal, plain lines
/// with rate and ETA in a log).
fn progress(label: &str, total: usize) -> impl FnMut(usize, usize) {
    let mut display = Some(Progress::new(&format!("Inception features ({label})"), "images", total as u64, 0, 20));
    let mut reported = 0;
    move |done, total| {
        if let Some(p) = display.as_mut() {
            p.inc(done.saturating_sub(reported) as u64);
            reported = done;
        }
        if done >= total {
            if let Some(p) = display.take() {
                p.finish();
            }
        }
    }
}

fn describe(source: &ImageSource) -> Value {
    let info = source.info();
    json!({ "kind": source.kind(), "n": info.n, "height": info.h, "width": info.w })
}

/// `FID 12.3456 | sFID ... | N 50000 vs stats`.
pub fn summary_line(e: &Evaluation, n_samples: usize, n_reference: usize) -> String {
    let d = &e.diagnostics;
    let mut cells = Vec::new();
    cells.extend(d.fid.as_ref().map(|r| format!("FID {:.4}", r.value)));
    cells.extend(d.sfid.as_ref().map(|r| format!("sFID {:.4}", r.value)));
    if let Some(is) = &d.inception_score {
        cells.push(is.score.as_ref().map_or("IS unavailable".to_owned(), |s| format!("IS {:.4}", s.mean)));
    }
    if let Some(pr) = &d.precision_recall {
        cells.push(format!("Precision {:.4}", pr.precision));
        cells.push(format!("Recall {:.4}", pr.recall));
    }
    cells.extend(d.kid.as_ref().map(|kid| format!("KID {:.5} ± {:.5}", kid.mean, kid.std)));
    let reference = if n_reference > 0 { n_reference.to_string() } else { "stats".to_owned() };
    cells.push(format!("N {n_samples} vs {reference}"));
    cells.join(" | ")
}

/// Runs one evaluation (see the module docs) and writes `job.out` if set.
pub fn run_eval_job(job: &EvalJob) -> Result<EvalOutcome> {
    let started = Instant::now();
    let mut warnings = Vec::new();

    // Validate both inputs before loading the network.
    let samples = ImageSource::open(&job.samples, "samples")?;
    let n_samples = samples.info().n;
    ensure!(n_samples >= 2, "{}: {n_samples} sample image(s); evaluation needs at least 2", job.samples.display());
    let reference = Reference::open(&job.reference)?;
    let metrics = reference.feasible(Metric::parse_image_list(&job.metrics, "--metrics")?, job.metrics_explicit, &mut warnings)?;
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
    if let Some(out) = &job.out {
        check_output_dir(out)?;
    }

    let extractor = make_extractor(&job.extractor, job.extractor.preprocess.unwrap_or(job.convention.preprocess()))?;
    if metrics.iter().any(|m| matches!(m, Metric::Fid | Metric::Sfid)) {
        // Statistics written by `genbench stats` under another mode or network are refused.
        reference.file_stats.check_made_with(&reference.path, &extractor.preprocess().to_string(), extractor.weights_sha1())?;
    }
    let batch = job.extractor.batch_size;
    let sample_summary =
        collect_features(&extractor, None, &samples, FeatureNeeds::samples(&metrics), batch, &mut progress("samples", n_samples))?;
    let n_reference = reference.images.as_ref().map_or(0, |r| r.info().n);
    let reference_summary = reference.summarize(&extractor, None, &metrics, batch, &mut progress("reference", n_reference))?;
    let options = EvalOptions {
        pr: PrConfig { precision: job.pr_precision, ..PrConfig::default() },
        kid: job.convention.kid_config(job.seed),
        convention: job.convention,
        no_logits_reason: (!extractor.has_logits()).then(|| extractor.no_fc_message().to_owned()),
        reference_label: reference.path.display().to_string(),
    };
    let evaluation = evaluate(&sample_summary, Some(&reference_summary), &metrics, &options)?;
    warnings.extend(evaluation.warnings.iter().cloned());
    if let Some(out) = &job.out {
        let report = eval_report(job, &metrics, &samples, &reference, &extractor, &options, &evaluation, &warnings, started);
        write_json(out, &report)?;
    }
    let summary = summary_line(&evaluation, n_samples, n_reference);
    Ok(EvalOutcome { evaluation, warnings, summary })
}

#[allow(clippy::too_many_arguments)]
fn eval_report(
    job: &EvalJob,
    metrics: &[Metric],
    samples: &ImageSource,
    reference: &Reference,
    extractor: &InceptionExtractor,
    options: &EvalOptions,
    evaluation: &Evaluation,
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
        reference_json["images"] = describe(images);
    }
    let mut samples_json = describe(samples);
    samples_json["path"] = json!(job.samples);
    json!({
        "genbench_version": env!("CARGO_PKG_VERSION"),
        "candle_version": genbench_runtime::info::CANDLE_VERSION,
        "runtime": genbench_runtime::info::runtime_info(),
        "samples": samples_json,
        "reference": reference_json,
        "settings": {
            "metrics": metrics,
            "convention": job.convention,
            "preprocess": extractor.preprocess().to_string(),
            "device": job.extractor.device.to_string(),
            "batch_size": job.extractor.batch_size,
            "pr": options.pr,
            "is_splits": job.convention.is_splits(),
            "kid": options.kid,
            "covariance": "float64, N-1 (np.cov); mean float64",
        },
        "weights": {
            "sha1": extractor.weights_sha1(),
            "has_fc": extractor.has_logits(),
            "file": job.extractor.inception_weights,
        },
        "metrics": evaluation.diagnostics,
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

/// One `genbench stats`: FID and sFID statistics of an image set, with the preprocessing and
/// the weights' hash stored beside them (eval refuses them under another).
#[derive(Debug, Clone)]
pub struct StatsJob {
    pub input: PathBuf,
    pub out: PathBuf,
    pub extractor: ExtractorSettings,
}

/// Writes `job.out` and returns the one-line summary (n, weights hash, preprocessing) and the
/// rank-deficiency warnings.
pub fn run_stats_job(job: &StatsJob) -> Result<(String, Vec<String>)> {
    let source = ImageSource::open(&job.input, "input")?;
    let n = source.info().n;
    ensure!(n >= 2, "{}: {n} image(s); statistics need at least 2", job.input.display());
    check_output_dir(&job.out)?;
    let preprocess = job.extractor.preprocess.unwrap_or_default();
    let extractor = make_extractor(&job.extractor, preprocess)?;
    let needs = FeatureNeeds { pool_stats: true, spatial_stats: true, ..FeatureNeeds::default() };
    let summary = collect_features(&extractor, None, &source, needs, job.extractor.batch_size, &mut progress("images", n))?;
    let pool = summary.pool_stats.context("internal: pool statistics missing")?;
    let spatial = summary.spatial_stats.context("internal: spatial statistics missing")?;
    let warnings =
        [rank_deficiency_warning(n, pool.dim(), "FID", "this set"), rank_deficiency_warning(n, spatial.dim(), "sFID", "this set")]
            .into_iter()
            .flatten()
            .collect();
    let provenance = npz::StatsProvenance { preprocess: preprocess.to_string(), weights_sha1: extractor.weights_sha1().to_owned() };
    npz::write_statistics_with(&job.out, &pool, Some(&spatial), Some(&provenance))?;
    let line: BTreeMap<&str, Value> = BTreeMap::from([
        ("n", json!(summary.n)),
        ("weights_sha1", json!(extractor.weights_sha1())),
        ("preprocess", json!(preprocess.to_string())),
    ]);
    Ok((serde_json::to_string(&line)?, warnings))
}
