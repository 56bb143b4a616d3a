//! `genbench sample`: flags and wiring for `genbench_harness::sample_command` (whose module docs
//! describe labels, sharding, resumption and the outputs).

use super::model_registry::{ModelArgs, SamplerArgs};
use super::DeviceArgs;
use anyhow::Result;
use clap::Args;
use genbench_harness::sample_command::{run_sample_command, SampleCommand};
use genbench_harness::sampling::Shard;
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
    run_sample_command(&SampleCommand {
        model: args.generator.request(args.sampler.to_settings()),
        n: args.n,
        labels: args.labels,
        seed: args.seed,
        batch: args.batch,
        out: args.out,
        shard: args.shard,
        save_tokens: args.save_tokens,
        features: args.features,
        device: args.device.device(),
        dtype: args.device.generator_dtype(),
        stop_after_batches: args.stop_after_batches,
    })
}
