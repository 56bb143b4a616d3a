//! `genbench profile`: flags and wiring for `genbench_harness::profile` (per-step wall time,
//! FLOPs and throughput of a generator).

use super::model_registry::{resolve, ModelArgs, SamplerArgs};
use anyhow::Result;
use clap::Args;
use genbench_harness::profile::{parse_batches, profile_generator, ProfileOptions};
use genbench_models::flops::CONVENTION;
use genbench_runtime::{DTypePolicy, DeviceChoice};
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
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    #[arg(long, default_value = "f32")]
    pub dtype: DTypePolicy,
}

pub fn run(args: ProfileArgs) -> Result<()> {
    let opts = ProfileOptions { batches: parse_batches(&args.batch)?, repeats: args.repeats, warmup: args.warmup, seed: args.seed };
    opts.validate()?;
    // Device and dtype first: a CUDA or dtype problem is reported before any work.
    let device = args.device.open()?;
    let dtype = args.dtype.compute_dtype(&device)?;
    let resolved = resolve(&args.generator.request(args.sampler.to_settings()))?;
    let name = resolved.name.clone();
    let out = args.out.clone().unwrap_or_else(|| PathBuf::from("results/profile").join(&name));
    std::fs::create_dir_all(&out).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", out.display()))?;
    eprintln!(
        "profiling {name} on {} ({}, {} kernel route)",
        genbench_runtime::device::describe(&device),
        args.dtype.name(),
        genbench_runtime::kernels::route()
    );
    let mut generator = resolved.build(&device, dtype)?;
    let profile = profile_generator(generator.as_mut(), &name, &device, args.dtype.name(), &opts)?;
    let (csv, summary) = profile.write(&out)?;
    let flops = generator.flops_per_image();
    println!("FLOPs: {CONVENTION}");
    println!(
        "per image: transformer {:.1} GFLOP, {}decoder {:.1} GFLOP",
        flops.transformer / 1e9,
        if flops.diffusion_mlp > 0.0 { format!("diffusion MLP {:.1} GFLOP, ", flops.diffusion_mlp / 1e9) } else { String::new() },
        flops.decoder / 1e9
    );
    print!("{}", profile.table);
    let fast = genbench_runtime::kernels::fast_calls();
    println!(
        "\nkernel route: {}; fast CPU kernels run: {}",
        genbench_runtime::kernels::route(),
        if fast.is_empty() { "none".to_string() } else { fast.iter().map(|(k, n)| format!("{k} x{n}")).collect::<Vec<_>>().join(", ") }
    );
    println!("\nwrote {} and {}", csv.display(), summary.display());
    Ok(())
}
