//! `genbench eval` and `genbench stats`: flags and wiring for `genbench_harness::eval_command`
//! (whose module docs describe inputs, outputs and checks).

use std::path::PathBuf;

use anyhow::Result;
use genbench_harness::eval_command::{run_eval_job, run_stats_job, EvalJob, ExtractorSettings, StatsJob};
use genbench_metrics::convention::Convention;
use genbench_metrics::precision_recall::DistancePrecision;
use genbench_metrics::preprocess::Preprocess;

use super::DeviceArgs;

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
    #[arg(long, default_value = "fp16")]
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

impl ExtractorArgs {
    fn settings(&self, command: &str) -> Result<ExtractorSettings> {
        self.device.require_f32(command)?;
        Ok(ExtractorSettings {
            preprocess: self.preprocess,
            device: self.device.device(),
            batch_size: self.batch_size,
            inception_weights: self.inception_weights.clone(),
        })
    }
}

/// `genbench eval`.
pub fn run_eval(args: EvalArgs) -> Result<()> {
    let job = EvalJob {
        metrics_explicit: args.metrics != DEFAULT_METRICS,
        extractor: args.extractor.settings("eval")?,
        samples: args.samples,
        reference: args.reference,
        metrics: args.metrics,
        out: args.out,
        pr_precision: args.pr_precision,
        seed: args.seed,
        convention: args.convention,
    };
    let outcome = run_eval_job(&job)?;
    for w in &outcome.warnings {
        eprintln!("warning: {w}");
    }
    println!("{}", outcome.summary);
    if let Some(out) = &job.out {
        eprintln!("wrote {}", out.display());
    }
    Ok(())
}

/// `genbench stats`.
pub fn run_stats(args: StatsArgs) -> Result<()> {
    let job = StatsJob { extractor: args.extractor.settings("stats")?, input: args.input, out: args.out };
    let (summary, warnings) = run_stats_job(&job)?;
    for w in warnings {
        eprintln!("warning: {w}");
    }
    println!("wrote {} ({summary})", job.out.display());
    Ok(())
}
