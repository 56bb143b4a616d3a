//! `genbench sample`: draw class-conditional samples into an ADM-format `.npz`. The binary's
//! `src/cmd/sample.rs` maps its flags onto [`SampleCommand`].
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

use std::path::PathBuf;

use anyhow::{Context, Result};
use genbench_metrics::features::{ExtractorOptions, InceptionExtractor};
use genbench_models::family::ModelRequest;
use genbench_runtime::{DTypePolicy, DeviceChoice};

use crate::model_registry::resolve;
use crate::sampling::{plan_labels, ProcessOptions, SampleJob, Shard};

/// One `genbench sample`.
#[derive(Debug, Clone)]
pub struct SampleCommand {
    /// Which generator, its weights and sampler settings.
    pub model: ModelRequest,
    /// Number of images (labels cycle over the classes, shuffled with the seed).
    pub n: Option<i64>,
    /// Exactly these class ids, in this order (comma-separated).
    pub labels: Option<String>,
    pub seed: u64,
    /// Images per forward batch and per part file.
    pub batch: usize,
    /// Output .npz (ADM format).
    pub out: PathBuf,
    /// None: the Slurm array task when its variables are set, else everything.
    pub shard: Option<Shard>,
    pub save_tokens: bool,
    pub features: bool,
    pub device: DeviceChoice,
    pub dtype: DTypePolicy,
    /// Stop after sampling this many batches, leaving the run resumable (tests of resumption).
    pub stop_after_batches: Option<usize>,
}

/// Runs one `genbench sample` (see the module docs); progress and outcome go to stderr.
pub fn run_sample_command(args: &SampleCommand) -> Result<()> {
    // 1. Everything that can be checked without weights.
    let shard = match args.shard {
        Some(s) => Some(s),
        None => Shard::from_slurm(|k| std::env::var(k).ok())?,
    };
    let resolved = resolve(&args.model)?;
    let labels = plan_labels(args.n, args.labels.as_deref(), resolved.num_classes, args.seed)?;
    let n = labels.len();
    let config_text = match &args.model.config {
        Some(p) => std::fs::read_to_string(p).with_context(|| format!("cannot read --config {}", p.display()))?,
        None => String::new(),
    };
    let settings = serde_json::json!({
        "model": resolved.name,
        "family": resolved.family,
        "config": serde_json::from_str::<serde_json::Value>(&config_text).unwrap_or(serde_json::Value::Null),
        "ckpt": args.model.ckpt.as_ref().map(|p| p.display().to_string()),
        "vae": args.model.vae.as_ref().map(|p| p.display().to_string()),
        "random_init": args.model.random_init,
        "settings": resolved.settings,
        "dtype": args.dtype.name(),
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
    let device = args.device.open()?;
    let dtype = args.dtype.compute_dtype(&device)?;
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
