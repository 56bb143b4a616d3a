//! `genbench quickstart`: the README's main job (see `genbench_harness::quickstart`).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use genbench_harness::quickstart::run_quickstart;

#[derive(clap::Args, Debug)]
pub struct QuickstartArgs {
    /// Results root: writes `<root>/quickstart/<timestamp>/`.
    #[arg(long, default_value = "results")]
    pub results: PathBuf,
    /// Inception weights / feature cache folder (default: $GENBENCH_CACHE or ~/.cache/genbench).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
}

pub fn run(args: QuickstartArgs) -> Result<()> {
    let t = Instant::now();
    let summary = run_quickstart(&args.results, args.cache_dir, true)?;
    println!("\n{}", summary.text);
    for r in &summary.outcome.results {
        if let genbench_harness::records::RunStatus::Skipped { reason } | genbench_harness::records::RunStatus::Failed { error: reason } = &r.status {
            println!("{} {}: {reason}", r.id, r.status.label());
        }
    }
    println!(
        "Quickstart finished in {:.0} s. Report: {} (summary: {})",
        t.elapsed().as_secs_f64(),
        summary.outcome.dir.join("report.md").display(),
        summary.summary_path.display()
    );
    Ok(())
}
