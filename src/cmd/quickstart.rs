//! `genbench quickstart`: the README's main job (see `genbench_harness::quickstart`).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use genbench_harness::quickstart::run_quickstart;
use genbench_harness::report::verdicts;
use genbench_harness::runner::RunnerOptions;

use super::DeviceArgs;

#[derive(clap::Args, Debug)]
pub struct QuickstartArgs {
    /// Results root: writes `<root>/quickstart/<timestamp>/`.
    #[arg(long, default_value = "results")]
    pub results: PathBuf,
    /// Inception weights / feature cache folder (default: $GENBENCH_CACHE or ~/.cache/genbench).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    #[command(flatten)]
    pub device: DeviceArgs,
}

pub fn run(args: QuickstartArgs) -> Result<()> {
    let t = Instant::now();
    let opts = RunnerOptions {
        results_root: args.results,
        only: Vec::new(),
        inception_cache: args.cache_dir,
        inception_weights: None,
        verbose: true,
        device: args.device.device(),
        dtype: args.device.dtype,
    };
    let summary = run_quickstart(&opts)?;
    println!("\n{}", summary.text);
    let verdicts = verdicts(&summary.outcome.results, &summary.outcome.comparisons);
    print!("{}", verdicts.text());
    let report = summary.outcome.dir.join("report.md");
    println!(
        "Quickstart finished in {:.0} s. Report: {} (summary: {})",
        t.elapsed().as_secs_f64(),
        report.display(),
        summary.summary_path.display()
    );
    verdicts.ensure_ok("quickstart", &report)
}
