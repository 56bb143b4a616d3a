//! `genbench sample`: draw class-conditional samples into an ADM-format `.npz`.
//!
//! * `--n N`: N labels cycling over the classes (`i mod num_classes`, so 50 per class for 50k),
//!   shuffled with the seed: `arr_0` is in random class order, `arr_1` holds the labels.
//!   `--labels 5,2,...`: exactly those classes in that order.
//! * Resumable and shardable (see `genbench_harness::sampling`): batches of `--batch` images go
//!   to `<out>.parts/`, each sampled with a seed derived from `(seed, batch index)` and claimed
//!   with a lock, so a restart resumes, several processes on one `--out` split the work, and the
//!   result does not depend on how it was split. `--shard I/N` (or, without it, the Slurm array
//!   variables) makes this process do the I-th of N disjoint parts; `genbench merge --out OUT`
//!   then assembles them. Without a shard the process writes `<out>` itself once every batch
//!   exists (waiting for batches that another process is sampling).
//! * `--save-tokens`: also stores the sampled tokens as `tokens`: ids (uint32, `[N, T]`) for the
//!   discrete families, latent tokens (float32, `[N, C·h·w]`, MAR: still scaled by 0.2325, in
//!   the latent's `(C, h, w)` order) for MAR.
//! * `--features`: also extracts the FID Inception features of each batch; the merge writes
//!   `<stem>.features.safetensors` and `<stem>_stats.npz`, so evaluation need not re-extract.
//! * Bad requests fail before any model is loaded: n <= 0, class ids out of range, an output
//!   path that cannot be written, a shard count that disagrees with the parts on disk.

use super::model_registry::{resolve, ModelArgs, SamplerArgs};
use super::DeviceArgs;
use anyhow::{Context, Result};
use clap::Args;
use genbench_harness::sampling::{plan_labels, ProcessOptions, SampleJob, Shard};
use genbench_metrics::features::{ExtractorOptions, InceptionExtractor};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct SampleArgs {
    #[command(flatten)]
    pub generator: ModelArgs,
    /// Number of images (labels cycle over the classes, shuffled with the seed).
    #[arg(long, allow_hyphen_values = true)]
    pub n: Option<i64>,
    /// Exactly these class ids, in this order (comma-separated).
    #[arg(long, conflicts_with = "n")]
    pub labels: Option<String>,
    #[command(flatten)]
    pub sampler: SamplerArgs,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Images per forward batch and per part file.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Output .npz (ADM format).
    #[arg(long)]
    pub out: PathBuf,
    /// Do the I-th of N disjoint parts (0 <= I < N), then `genbench merge`. Default: the Slurm
    /// array task (SLURM_ARRAY_TASK_ID of SLURM_ARRAY_TASK_COUNT) when set, else everything.
    #[arg(long, allow_hyphen_values = true)]
    pub shard: Option<Shard>,
    /// Also store the sampled tokens (`tokens`): ids, or MAR's latents.
    #[arg(long)]
    pub save_tokens: bool,
    /// Also extract FID Inception features per batch (merged into features + statistics files).
    #[arg(long)]
    pub features: bool,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Stop after sampling this many batches, leaving the run resumable (tests of resumption).
    #[arg(long, hide = true, alias = "stop-after-shards")]
    pub stop_after_batches: Option<usize>,
}

pub fn run(args: SampleArgs) -> Result<()> {
    // 1. Everything that can be checked without weights.
    let shard = match args.shard {
        Some(s) => Some(s),
        None => Shard::from_slurm(|k| std::env::var(k).ok())?,
    };
    let req = args.generator.request(args.sampler.to_settings());
    let resolved = resolve(&req)?;
    let labels = plan_labels(args.n, args.labels.as_deref(), resolved.num_classes, args.seed)?;
    let n = labels.len();
    let config_text = match &args.generator.config {
        Some(p) => std::fs::read_to_string(p).with_context(|| format!("cannot read --config {}", p.display()))?,
        None => String::new(),
    };
    let settings = serde_json::json!({
        "model": resolved.name,
        "family": resolved.family,
        "config": serde_json::from_str::<serde_json::Value>(&config_text).unwrap_or(serde_json::Value::Null),
        "ckpt": args.generator.ckpt.as_ref().map(|p| p.display().to_string()),
        "vae": args.generator.vae.as_ref().map(|p| p.display().to_string()),
        "random_init": args.generator.random_init,
        "settings": resolved.settings,
        "dtype": args.device.generator_dtype().name(),
        "image_size": resolved.image_size,
    });
    let job = SampleJob {
        out: args.out.clone(),
        labels,
        batch: args.batch,
        seed: args.seed,
        settings,
        save_tokens: args.save_tokens,
        features: args.features,
    };
    // The device and dtype: a CUDA or dtype problem is reported before the parts folder exists.
    let device = args.device.device().open()?;
    let dtype = args.device.generator_dtype().compute_dtype(&device)?;
    // 2. The parts folder (refuses other settings or another shard count).
    let parts = job.prepare(shard)?;
    if let Some(s) = shard {
        eprintln!("shard {s}: {} of the job's {} batches", (0..job.batches()).filter(|&b| s.owns(b)).count(), job.batches());
    }

    // 3. Sampling: the model and Inception network are loaded only if some batch needs them.
    let device = &device;
    let description = format!(
        "{} ({}; {} classes, {} px)",
        resolved.name,
        serde_json::to_string(&resolved.settings)?,
        resolved.num_classes,
        resolved.image_size
    );
    let mut unbuilt = Some(resolved);
    let mut make_generator = || {
        eprintln!("loading {description} on {}", genbench_runtime::device::describe(device));
        unbuilt.take().context("the generator is built once per process")?.build(device, dtype)
    };
    let mut make_extractor = || InceptionExtractor::new(ExtractorOptions { device: device.clone(), ..Default::default() });
    let opts = ProcessOptions { shard, stop_after_batches: args.stop_after_batches };
    let report = job.sample(&parts, opts, &mut make_generator, &mut make_extractor)?;
    if report.stopped {
        eprintln!("stopped after {} batch(es) as asked; run the same command again to continue", report.batches_sampled);
        return Ok(());
    }

    // 4. A shard stops here; a whole run writes the final file.
    match shard {
        Some(s) => eprintln!(
            "shard {s} done ({} batches sampled here, {} were there); once every shard is done: genbench merge --out {}",
            report.batches_sampled,
            report.batches_found,
            args.out.display()
        ),
        None => {
            eprintln!("sampled {} batches here ({} were there)", report.batches_sampled, report.batches_found);
            if job.finish(&parts)? {
                eprintln!("wrote {} ({n} images)", args.out.display());
            } else {
                eprintln!("{} was written by another process of the same job", args.out.display());
            }
        }
    }
    Ok(())
}
