//! `genbench eval` and `genbench stats`: ADM-style evaluation of a sample set against a reference.
//!
//! Inputs are `.npz` batches (`arr_0` uint8 `[N, H, W, 3]`, optional `mu`/`sigma`/`mu_s`/`sigma_s`)
//! or folders of PNG/JPEG images. As in ADM's evaluator, a reference npz that carries statistics
//! supplies FID/sFID directly; its images are only read for precision/recall and KID (or when a
//! statistic is missing). Everything is validated before the network runs, and the JSON result is
//! written atomically at the very end, so a failed run never leaves a file that looks complete.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use genbench_metrics::checks::{class_sorted_warning_from_labels, rank_deficiency_warning};
use genbench_metrics::convention::Convention;
use genbench_metrics::evaluate::{
    collect_features, evaluate, EvalOptions, Evaluation, FeatureNeeds, ImageSource, Metric, ProgressLine, Reference,
};
use genbench_metrics::features::{ExtractorOptions, InceptionExtractor};
use genbench_metrics::inception::WeightsSource;
use genbench_metrics::npz;
use genbench_metrics::precision_recall::{DistancePrecision, PrConfig};
use genbench_metrics::preprocess::Preprocess;

use super::DeviceArgs;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

/// ADM's metrics; KID is opt-in.
const DEFAULT_METRICS: &str = "fid,sfid,is,pr";

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// Samples: an .npz with arr_0 (uint8, N x H x W x 3) or a folder of PNG/JPEG images.
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
    /// An .npz with arr_0 (uint8, N x H x W x 3) or a folder of PNG/JPEG images.
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
    #[command(flatten)]
    pub device: DeviceArgs,
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

fn make_extractor(args: &ExtractorArgs, preprocess: Preprocess, command: &str) -> Result<InceptionExtractor> {
    ensure!(args.batch_size > 0, "--batch-size must be at least 1");
    args.device.require_f32(command)?;
    let weights = match &args.inception_weights {
        Some(path) => WeightsSource::File(path.clone()),
        None => WeightsSource::Default,
    };
    let device = args.device.device.open()?;
    InceptionExtractor::new(ExtractorOptions { preprocess, device, batch_size: args.batch_size, weights })
        .context("cannot set up the Inception feature extractor")
}

/// Progress of an Inception pass: a bar on a terminal, plain lines (every 10 s, with rate and
/// ETA) otherwise, as in a batch job's log.
fn progress(label: &str, total: usize) -> Box<dyn FnMut(usize, usize)> {
    if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(total as u64);
        let style = ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} images ({per_sec}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        bar.set_style(style);
        bar.set_message(label.to_owned());
        Box::new(move |done, total| {
            bar.set_position(done as u64);
            if done >= total {
                bar.finish_and_clear();
            }
        })
    } else {
        let mut line = ProgressLine::new(format!("Inception features ({label})"), 10.0);
        Box::new(move |done, total| line.update(done, total))
    }
}

fn describe(source: &ImageSource) -> Value {
    let info = source.info();
    json!({ "kind": source.kind(), "n": info.n, "height": info.h, "width": info.w })
}

fn format_table(e: &Evaluation, n_samples: usize, n_reference: usize) -> String {
    let mut cells = Vec::new();
    if let Some(r) = &e.diagnostics.fid {
        cells.push(format!("FID {:.4}", r.value));
    }
    if let Some(r) = &e.diagnostics.sfid {
        cells.push(format!("sFID {:.4}", r.value));
    }
    if let Some(is) = &e.diagnostics.inception_score {
        match &is.score {
            Some(score) => cells.push(format!("IS {:.4}", score.mean)),
            None => cells.push("IS unavailable".to_owned()),
        }
    }
    if let Some(pr) = &e.diagnostics.precision_recall {
        cells.push(format!("Precision {:.4}", pr.precision));
        cells.push(format!("Recall {:.4}", pr.recall));
    }
    if let Some(kid) = &e.diagnostics.kid {
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
    let reference = Reference::open(&args.reference)?;
    let metrics = reference.feasible(Metric::parse_image_list(&args.metrics, "--metrics")?, explicit, &mut warnings)?;
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

    let extractor = make_extractor(&args.extractor, args.extractor.preprocess.unwrap_or(args.convention.preprocess()), "eval")?;
    if metrics.iter().any(|m| matches!(m, Metric::Fid | Metric::Sfid)) {
        // Statistics written by `genbench stats` under another mode or network are refused.
        reference.file_stats.check_made_with(&reference.path, &extractor.preprocess().to_string(), extractor.weights_sha1())?;
    }
    let batch = args.extractor.batch_size;
    let sample_summary =
        collect_features(&extractor, None, &samples, FeatureNeeds::samples(&metrics), batch, &mut *progress("samples", n_samples))?;
    let n_reference = reference.images.as_ref().map_or(0, |r| r.info().n);
    let reference_summary = reference.summarize(&extractor, None, &metrics, batch, &mut *progress("reference", n_reference))?;
    let options = eval_options(&args, &extractor, &reference.path);
    let evaluation = evaluate(&sample_summary, Some(&reference_summary), &metrics, &options)?;
    warnings.extend(evaluation.warnings.iter().cloned());

    for w in &warnings {
        eprintln!("warning: {w}");
    }
    println!("{}", format_table(&evaluation, n_samples, n_reference));
    if let Some(out) = &args.out {
        let report = eval_report(&args, &metrics, &samples, &reference, &extractor, &options, &evaluation, &warnings, started);
        write_json(out, &report)?;
        eprintln!("wrote {}", out.display());
    }
    Ok(())
}

fn eval_options(args: &EvalArgs, extractor: &InceptionExtractor, reference: &Path) -> EvalOptions {
    EvalOptions {
        pr: PrConfig { precision: args.pr_precision, ..PrConfig::default() },
        kid: args.convention.kid_config(args.seed),
        convention: args.convention,
        no_logits_reason: (!extractor.has_logits()).then(|| extractor.no_fc_message().to_owned()),
        reference_label: reference.display().to_string(),
        ..EvalOptions::default()
    }
}

#[allow(clippy::too_many_arguments)]
fn eval_report(
    args: &EvalArgs,
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
            "device": args.extractor.device.device.to_string(),
            "batch_size": args.extractor.batch_size,
            "pr": options.pr,
            "is_splits": args.convention.is_splits(),
            "kid": options.kid,
            "covariance": "float64, N-1 (np.cov); mean float64",
        },
        "weights": {
            "sha1": extractor.weights_sha1(),
            "has_fc": extractor.has_logits(),
            "file": args.extractor.inception_weights,
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

/// `genbench stats`.
pub fn run_stats(args: StatsArgs) -> Result<()> {
    let source = ImageSource::open(&args.input, "input")?;
    let n = source.info().n;
    ensure!(n >= 2, "{}: {n} image(s); statistics need at least 2", args.input.display());
    check_output_dir(&args.out)?;
    let preprocess = args.extractor.preprocess.unwrap_or_default();
    let extractor = make_extractor(&args.extractor, preprocess, "stats")?;
    let needs = FeatureNeeds { pool_stats: true, spatial_stats: true, ..FeatureNeeds::default() };
    let summary = collect_features(&extractor, None, &source, needs, args.extractor.batch_size, &mut *progress("images", n))?;
    let pool = summary.pool_stats.context("internal: pool statistics missing")?;
    let spatial = summary.spatial_stats.context("internal: spatial statistics missing")?;
    for w in [rank_deficiency_warning(n, pool.dim(), "FID", "this set"), rank_deficiency_warning(n, spatial.dim(), "sFID", "this set")]
        .into_iter()
        .flatten()
    {
        eprintln!("warning: {w}");
    }
    let provenance = npz::StatsProvenance { preprocess: preprocess.to_string(), weights_sha1: extractor.weights_sha1().to_owned() };
    npz::write_statistics_with(&args.out, &pool, Some(&spatial), Some(&provenance))?;
    let summary: BTreeMap<&str, Value> = BTreeMap::from([
        ("n", json!(summary.n)),
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
    fn pr_precision_names() {
        assert_eq!(parse_pr_precision("F32"), Ok(DistancePrecision::F32));
        assert!(parse_pr_precision("bf16").is_err());
    }
}
