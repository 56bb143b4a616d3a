//! `genbench suite FILE`: runs a suite (or plans it with `--dry-run`).

use std::path::PathBuf;

use anyhow::Result;
use genbench_harness::runner::{format_plan, matmul_gflops_probe, plan, run_suite, RunnerOptions};
use genbench_harness::suite::Suite;

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
    /// Sharded and Slurm modes (`--shard`, `--merge-shards`, `--slurm`).
    #[command(flatten)]
    pub cluster: super::suite_cluster::ClusterArgs,
}

pub fn run(args: SuiteArgs) -> Result<()> {
    let suite = Suite::load(&args.file).map_err(|e| anyhow::anyhow!("{e}"))?;
    if args.dry_run {
        let gflops = matmul_gflops_probe(&candle_core::Device::Cpu)?;
        let rows = plan(&suite, &args.only, gflops)?;
        print!("{}", format_plan(&suite, &rows, gflops));
        return Ok(());
    }
    let opts = RunnerOptions { results_root: args.results.clone(), only: args.only.clone(), inception_cache: args.cache_dir.clone(), verbose: true };
    if args.cluster.any() {
        return super::suite_cluster::run(&suite, &args, opts);
    }
    let outcome = run_suite(&suite, &opts)?;
    let skipped = outcome.results.iter().filter(|r| r.status.label() == "skipped").count();
    let failed = outcome.results.iter().filter(|r| r.status.label() == "failed").count();
    println!(
        "{} runs: {} completed, {skipped} skipped, {failed} failed. Report: {}",
        outcome.results.len(),
        outcome.results.len() - skipped - failed,
        outcome.dir.join("report.md").display()
    );
    Ok(())
}
