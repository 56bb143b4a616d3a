//! `genbench suite FILE`: runs a suite (or plans it with `--dry-run`).

use std::path::PathBuf;

use anyhow::{ensure, Result};
use genbench_harness::report::verdicts;
use genbench_harness::runner::{format_plan, matmul_gflops_probe, plan, run_suite, RunnerOptions};

use super::DeviceArgs;
use genbench_harness::suite::{Convention, Suite};
use genbench_harness::suite_shards::merge_suite_shards;

#[derive(clap::Args, Debug)]
pub struct SuiteArgs {
    /// Suite file (`suites/*.toml`).
    pub file: PathBuf,
    /// Print the plan (runs, analytic FLOPs, estimated time) and run nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Run only these run ids (repeat or comma-separate).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Results root: writes `<root>/<suite>/<timestamp>/`, caches in `<root>/<suite>/cache/`.
    #[arg(long, default_value = "results")]
    pub results: PathBuf,
    /// Inception weights / feature cache folder (default: $GENBENCH_CACHE or ~/.cache/genbench).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Inception weights file (TorchScript .pt, pytorch-fid .pth or safetensors) instead of the
    /// default ones.
    #[arg(long)]
    pub inception_weights: Option<PathBuf>,
    /// Every run follows this metric convention (adm, torch-fidelity or clean-fid: IS splits,
    /// KID subsets, preprocessing), whatever its suite file's `convention` says.
    #[arg(long)]
    pub convention: Option<Convention>,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Sharded and Slurm modes (`--shard`, `--merge-shards`, `--slurm`).
    #[command(flatten)]
    pub cluster: super::suite_cluster::ClusterArgs,
}

pub fn run(args: SuiteArgs) -> Result<()> {
    let mut suite = Suite::load(&args.file).map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(convention) = args.convention {
        suite = suite.with_convention(convention);
    }
    // `--device`, else the suite file's `device`, else auto.
    let device_choice = args.device.device.or(suite.device).unwrap_or(genbench_runtime::DeviceChoice::Auto);
    if args.dry_run {
        let device = device_choice.open()?;
        let gflops = matmul_gflops_probe(&device)?;
        let rows = plan(&suite, &args.only, gflops, &device, args.device.dtype)?;
        print!("{}", format_plan(&suite, &rows, gflops));
        let refused: Vec<&str> = rows.iter().filter(|r| r.refusal.is_some()).map(|r| r.id.as_str()).collect();
        ensure!(refused.is_empty(), "suite `{}`: the runner would refuse {} (reasons above)", suite.name, refused.join(", "));
        return Ok(());
    }
    let opts = RunnerOptions {
        results_root: args.results.clone(),
        only: args.only.clone(),
        inception_cache: args.cache_dir.clone(),
        inception_weights: args.inception_weights.clone(),
        verbose: true,
        device: device_choice,
        dtype: args.device.dtype,
    };
    if args.cluster.any() && !args.cluster.merge_shards {
        return super::suite_cluster::run(&suite, &args, opts);
    }
    // `--merge-shards` checks every shard is done first; both then report the same way.
    let outcome = if args.cluster.merge_shards { merge_suite_shards(&suite, &opts)? } else { run_suite(&suite, &opts)? };
    let skipped = outcome.results.iter().filter(|r| r.status.label() == "skipped").count();
    let failed = outcome.results.iter().filter(|r| r.status.label() == "failed").count();
    let verdicts = verdicts(&outcome.results, &outcome.comparisons);
    print!("{}", verdicts.text());
    let report = outcome.dir.join("report.md");
    println!(
        "{} runs: {} completed, {skipped} skipped, {failed} failed. Report: {}",
        outcome.results.len(),
        outcome.results.len() - skipped - failed,
        report.display()
    );
    verdicts.ensure_ok(&format!("suite `{}`", suite.name), &report)
}
