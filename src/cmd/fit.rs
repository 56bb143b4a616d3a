//! `genbench fit`: least-squares power law `L = (beta X)^alpha` in log space for a sweep or
//! training log (CSV or JSON lines), with 95% intervals, residuals, a JSON report and a plot.

use std::path::PathBuf;

use anyhow::{Context, Result};
use genbench_harness::fit_command::{run, FitRequest};

#[derive(clap::Args, Debug)]
pub struct FitArgs {
    /// Sweep or training log: CSV with a header row, or JSON lines (one object per line).
    #[arg(long)]
    pub log: PathBuf,
    /// Column on the x axis: `params`, `compute` (each also matches common spellings such as
    /// `n_params`, `flops`) or any column name.
    #[arg(long)]
    pub x: String,
    /// Column on the y axis: `loss` (also `test_loss`, `val_loss`, ...) or any column name.
    #[arg(long)]
    pub y: String,
    /// Fit each value of this column separately (e.g. `--group model` for per-model curves).
    /// With --frontier it only colours the plot.
    #[arg(long)]
    pub group: Option<String>,
    /// Irreducible loss L_inf, subtracted before the fit: L - L_inf = (beta X)^alpha.
    #[arg(long, value_name = "L_INF")]
    pub irreducible: Option<f64>,
    /// Fit the lower envelope of loss against compute across all rows (the C_min frontier of
    /// VAR Fig. 6) instead of every row.
    #[arg(long)]
    pub frontier: bool,
    /// Write the fit (parameters, intervals, residuals) as JSON to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Plot path; `.png` and `.svg` are written. Default: beside `--out` (else in the current
    /// directory), `<log stem>.fit-<y>-vs-<x>.png`; never in the log's folder.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Do not draw the plot.
    #[arg(long, conflicts_with = "plot")]
    pub no_plot: bool,
}

pub fn run_fit(args: FitArgs) -> Result<()> {
    let request = FitRequest {
        log: args.log,
        x: args.x,
        y: args.y,
        group: args.group,
        irreducible: args.irreducible,
        frontier: args.frontier,
        plot: args.plot,
        out_dir: args.out.as_deref().and_then(|o| o.parent()).filter(|p| !p.as_os_str().is_empty()).map(Into::into),
        no_plot: args.no_plot,
    };
    let outcome = run(&request)?;
    print!("{}", outcome.table());
    if let Some(out) = &args.out {
        let json = serde_json::to_string_pretty(&outcome)?;
        genbench_harness::plots::write_atomically(out, |tmp| {
            std::fs::write(tmp, &json).with_context(|| format!("writing {}", tmp.display()))
        })?;
        println!("fit written to {}", out.display());
    }
    if let Some(files) = &outcome.plot {
        println!("plot written to {} and {}", files.png.display(), files.svg.display());
    }
    Ok(())
}
