//! `genbench autonat-search`: flags and wiring for AutoNAT's strategy search
//! (`genbench_harness::autonat_search`, whose module docs describe the method and the outputs).

use anyhow::Result;
use clap::Args;
use genbench_harness::autonat_search::{run_search_job, SearchJob, SearchSettings};
use std::path::PathBuf;

use super::model_registry::ModelArgs;
use super::DeviceArgs;

#[derive(Args, Clone, Debug)]
#[command(group(clap::ArgGroup::new("network").args(["model", "config"]).required(true)))]
pub struct AutonatSearchArgs {
    /// The network: autonat-l, autonat-s or maskgit (`--model`), or a fixture-style
    /// config.json (`--config`, checkpoints read from its folder unless --ckpt / --vae are
    /// given); the search sets the strategy.
    #[command(flatten)]
    pub generator: ModelArgs,
    /// Generation steps T.
    #[arg(long)]
    pub steps: usize,
    /// Images generated per FID evaluation (the reference uses 50,000).
    #[arg(long)]
    pub samples: usize,
    /// Strategy updates (the reference's --max_upd, default 100 there).
    #[arg(long)]
    pub iters: usize,
    /// Reference batch: an ADM-style npz with `mu`/`sigma` statistics or `arr_0` images.
    #[arg(long)]
    pub reference: Option<PathBuf>,
    /// Starting strategy: a YAML file or a built-in (search-init, maskgit-cosine, autonat-l-t8).
    #[arg(long, default_value = "search-init")]
    pub init: String,
    /// Seed of the labels and of every evaluation's random stream.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Images per generation call.
    #[arg(long, default_value_t = 25)]
    pub batch: usize,
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 1e-3)]
    pub lr_ratios: f64,
    #[arg(long, default_value_t = 0.1)]
    pub lr_others: f64,
    #[arg(long, default_value_t = 0.5)]
    pub momentum: f64,
    #[arg(long, default_value_t = 0.01)]
    pub step_ratios: f64,
    #[arg(long, default_value_t = 0.1)]
    pub step_others: f64,
    /// Clip every gradient entry to [-c, c] before the update (the reference's --clip_grad).
    #[arg(long)]
    pub clip_grad: Option<f64>,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Inception weights file; default: the cached FID Inception, fetched on first use.
    #[arg(long)]
    pub inception_weights: Option<PathBuf>,
    /// Cache folder (default: $GENBENCH_CACHE, $XDG_CACHE_HOME/genbench or ~/.cache/genbench).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Images per Inception forward.
    #[arg(long, default_value_t = 25)]
    pub inception_batch: usize,
}

pub fn run(args: AutonatSearchArgs) -> Result<()> {
    let job = SearchJob {
        model: args.generator.request(Default::default()),
        steps: args.steps,
        samples: args.samples,
        reference: args.reference,
        init: args.init,
        seed: args.seed,
        batch: args.batch,
        out: args.out,
        settings: SearchSettings {
            iters: args.iters,
            lr_ratios: args.lr_ratios,
            lr_others: args.lr_others,
            momentum: args.momentum,
            step_ratios: args.step_ratios,
            step_others: args.step_others,
            clip_grad: args.clip_grad,
        },
        device: args.device.device().open()?,
        dtype: args.device.generator_dtype(),
        inception_weights: args.inception_weights,
        cache_dir: args.cache_dir,
        inception_batch: args.inception_batch,
    };
    run_search_job(&job).map(|_| ())
}
