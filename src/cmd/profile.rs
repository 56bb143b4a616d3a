//! `genbench profile`: flags and wiring for `genbench_harness::profile` (per-step wall time,
//! FLOPs and throughput of a generator).

use super::model_registry::{resolve, ModelArgs, SamplerArgs};
use super::DeviceArgs;
use anyhow::Result;
use clap::Args;
use genbench_harness::profile::{parse_batches, profile_generator, ProfileOptions};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ProfileArgs {
    #[command(flatten)]
    pub generator: ModelArgs,
    /// Batch sizes, comma-separated.
    #[arg(long, default_value = "1")]
    pub batch: String,
    /// Observed runs per batch size (medians are reported).
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Untimed runs per batch size first.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    #[command(flatten)]
    pub sampler: SamplerArgs,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output folder (default results/profile/MODEL).
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub device: DeviceArgs,
}

pub fn run(args: ProfileArgs) -> Result<()> {
    let opts = ProfileOptions { batches: parse_batches(&args.batch)?, repeats: args.repeats, warmup: args.warmup, seed: args.seed };
    opts.validate()?;
    // Device and dtype first: a CUDA or dtype problem is reported before any work.
    let dtype_policy = args.device.generator_dtype();
    let device = args.device.device().open()?;
    let dtype = dtype_policy.compute_dtype(&device)?;
    let resolved = resolve(&args.generator.request(args.sampler.to_settings()))?;
    let name = resolved.name.clone();
    let out = args.out.clone().unwrap_or_else(|| PathBuf::from("results/profile").join(&name));
    std::fs::create_dir_all(&out).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", out.display()))?;
    eprintln!(
        "profiling {name} on {} ({}, {} kernel route)",
        genbench_runtime::device::describe(&device),
        dtype_policy.name(),
        genbench_runtime::kernels::route()
    );
    let mut generator = resolved.build(&device, dtype)?;
    let profile = profile_generator(generator.as_mut(), &name, &device, dtype_policy.name(), &opts)?;
    let (csv, summary) = profile.write(&out)?;
    print!("{}", profile.console_report(&generator.flops_per_image()));
    println!("\nwrote {} and {}", csv.display(), summary.display());
    Ok(())
}
