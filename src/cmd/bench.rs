//! `genbench bench inception`: flags and wiring for `genbench_harness::bench_inception`.

use anyhow::Result;
use clap::{Args, Subcommand};
use genbench_harness::bench_inception::{run_inception_bench, InceptionBench};
use std::path::PathBuf;

#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    target: BenchTarget,
}

#[derive(Subcommand)]
enum BenchTarget {
    /// Inception forward throughput (img/s) on random 299x299 inputs, plus end-to-end extraction.
    Inception(InceptionBenchArgs),
}

#[derive(Args)]
struct InceptionBenchArgs {
    /// Images per forward pass.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Timed forward passes (the median is reported).
    #[arg(long, default_value_t = 5)]
    iters: usize,
    /// Untimed passes first (page faults, lazy allocations).
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    #[command(flatten)]
    device: super::DeviceArgs,
    /// Inception weights file; default: the cached FID Inception, fetched on first use.
    #[arg(long)]
    inception_weights: Option<PathBuf>,
    /// Cache folder (default: $GENBENCH_CACHE, $XDG_CACHE_HOME/genbench or ~/.cache/genbench).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Also print the time per layer (summed over threads) of the CPU engine.
    #[arg(long)]
    profile: bool,
    /// Source image size for the end-to-end extraction timing (0 skips it).
    #[arg(long, default_value_t = 256)]
    image_size: usize,
}

pub fn run(args: BenchArgs) -> Result<()> {
    match args.target {
        BenchTarget::Inception(a) => run_inception(a),
    }
}

fn run_inception(a: InceptionBenchArgs) -> Result<()> {
    a.device.require_f32("bench inception")?;
    let bench = InceptionBench {
        batch: a.batch,
        iters: a.iters,
        warmup: a.warmup,
        device: a.device.device(),
        inception_weights: a.inception_weights,
        cache_dir: a.cache_dir,
        profile: a.profile,
        image_size: a.image_size,
    };
    for line in run_inception_bench(&bench)? {
        println!("{line}");
    }
    Ok(())
}
