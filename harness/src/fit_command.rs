//! `genbench fit`: read a sweep or training log, fit `L = (beta X)^alpha` (per group, or on the
//! compute frontier), and produce a table, a JSON document and a plot. The binary's
//! `src/cmd/fit.rs` only parses arguments and prints; everything testable lives here.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::fit::{fit_power_law, format_sig, frontier, AxisNames, Point, PowerLawFit};
use crate::plots::{axis_symbol, frontier_chart, power_law_chart, write_chart, PlotFiles};
use crate::sweep_log::SweepLog;

#[derive(Debug, Clone)]
pub struct FitRequest {
    pub log: PathBuf,
    /// Column name or alias (`params`, `compute`).
    pub x: String,
    /// Column name or alias (`loss`).
    pub y: String,
    /// Fit each value of this column separately; with `frontier`, only colours the plot.
    pub group: Option<String>,
    pub irreducible: Option<f64>,
    /// Fit the lower envelope of loss over compute across all rows (VAR Fig. 6, `C_min`).
    pub frontier: bool,
    /// Where to write the plot: this path's extension is replaced by `png` and `svg`. `None`
    /// writes into `out_dir` ([`default_plot_path`]).
    pub plot: Option<PathBuf>,
    /// Folder of the outputs (the `--out` file's folder); `None` = the current directory. The
    /// log's own folder is never written to: it may be read-only or shared.
    pub out_dir: Option<PathBuf>,
    pub no_plot: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Residual {
    pub line: usize,
    pub x: f64,
    pub y: f64,
    /// `ln(y - L_inf) - (c + alpha ln x)`.
    pub residual: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupFit {
    pub group: String,
    #[serde(flatten)]
    pub fit: PowerLawFit,
    /// The formula with the fitted numbers, e.g. `L = (2.03e-9·N)^-0.233`.
    pub formula: String,
    pub points: Vec<Residual>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FitOutcome {
    pub log: PathBuf,
    pub x_column: String,
    pub y_column: String,
    pub group_column: Option<String>,
    pub irreducible: Option<f64>,
    pub frontier: bool,
    /// How the frontier is taken, when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frontier_definition: Option<&'static str>,
    /// How the beta interval is computed.
    pub beta_ci_method: &'static str,
    pub fits: Vec<GroupFit>,
    #[serde(skip)]
    pub plot: Option<PlotFiles>,
}

pub const FRONTIER_DEFINITION: &str = "all rows sorted by compute ascending (ties: lower loss first); a row is kept iff its \
     loss is strictly below every loss at smaller or equal compute";
pub const BETA_CI_METHOD: &str =
    "delta method on ln(beta) = c/alpha with the full (c, alpha) covariance, Student t with n-2 dof, mapped back by exp";

/// `<out_dir>/<log stem>.fit-<y>-vs-<x>[-frontier].png` (the SVG goes beside it).
pub fn default_plot_path(out_dir: &Path, log: &Path, x: &str, y: &str, frontier: bool) -> PathBuf {
    let stem = log.file_stem().and_then(|s| s.to_str()).unwrap_or("log");
    let suffix = if frontier { "-frontier" } else { "" };
    out_dir.join(format!("{stem}.fit-{}-vs-{}{suffix}.png", sanitize(y), sanitize(x)))
}

fn sanitize(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' }).collect()
}

pub fn run(req: &FitRequest) -> Result<FitOutcome> {
    if let Some(l) = req.irreducible {
        if !l.is_finite() {
            bail!("--irreducible {l} is not a finite number");
        }
    }
    let log = SweepLog::read(&req.log)?;
    let extracted = log.extract(&req.x, &req.y, req.group.as_deref())?;
    let names = AxisNames { x: extracted.x_column.clone(), y: extracted.y_column.clone() };
    let what = format!("{}: fitting {} against {}", req.log.display(), names.y, names.x);

    let mut fits = Vec::new();
    let frontier_points: Option<Vec<Point>> = if req.frontier {
        let all: Vec<Point> = extracted.groups.iter().flat_map(|(_, p)| p.iter().copied()).collect();
        let f = frontier(&all);
        let fit = fit_power_law(&f, &names, req.irreducible).with_context(|| format!("{what} on the compute frontier"))?;
        fits.push(group_fit("frontier", fit, &f, &names));
        Some(f)
    } else {
        for (group, points) in &extracted.groups {
            let context = match &extracted.group_column {
                Some(col) => format!("{what} for {col} = {group}"),
                None => what.clone(),
            };
            let fit = fit_power_law(points, &names, req.irreducible).with_context(|| context)?;
            fits.push(group_fit(group, fit, points, &names));
        }
        None
    };

    let plot = if req.no_plot {
        None
    } else {
        let stem = req.plot.clone().unwrap_or_else(|| {
            default_plot_path(req.out_dir.as_deref().unwrap_or(Path::new(".")), &req.log, &names.x, &names.y, req.frontier)
        });
        let title = format!("{} vs {} ({})", names.y, names.x, req.log.file_name().and_then(|n| n.to_str()).unwrap_or(""));
        let chart = match &frontier_points {
            Some(f) => frontier_chart(&title, &names, &extracted.groups, f, &fits[0].fit),
            None => {
                let refs: Vec<(String, &PowerLawFit, Vec<Point>)> = fits
                    .iter()
                    .zip(&extracted.groups)
                    .map(|(gf, (label, points))| {
                        let label = if extracted.groups.len() == 1 { "fit".to_string() } else { label.clone() };
                        (label, &gf.fit, points.clone())
                    })
                    .collect();
                power_law_chart(&title, &names, &extracted.groups, &refs)
            }
        };
        Some(write_chart(&chart, &stem)?)
    };

    Ok(FitOutcome {
        log: req.log.clone(),
        x_column: names.x,
        y_column: names.y,
        group_column: extracted.group_column,
        irreducible: req.irreducible,
        frontier: req.frontier,
        frontier_definition: req.frontier.then_some(FRONTIER_DEFINITION),
        beta_ci_method: BETA_CI_METHOD,
        fits,
        plot,
    })
}

fn group_fit(group: &str, fit: PowerLawFit, points: &[Point], names: &AxisNames) -> GroupFit {
    let formula = fit.formula(&axis_symbol(&names.x), &axis_symbol(&names.y));
    let points = points.iter().zip(&fit.residuals).map(|(p, r)| Residual { line: p.line, x: p.x, y: p.y, residual: *r }).collect();
    GroupFit { group: group.to_string(), fit, formula, points }
}

impl FitOutcome {
    /// The table printed by `genbench fit`.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{} against {} in {}{}{}\n",
            self.y_column,
            self.x_column,
            self.log.display(),
            if self.frontier { ", on the compute frontier" } else { "" },
            self.irreducible.map(|l| format!(", L_inf = {} removed", format_sig(l, 6))).unwrap_or_default()
        );
        let header = ["group", "n", "alpha", "alpha 95% CI", "beta", "beta 95% CI", "r", "R^2", "max |res|"];
        let rows: Vec<[String; 9]> = self
            .fits
            .iter()
            .map(|g| {
                let f = &g.fit;
                let max_res = f.residuals.iter().fold(0.0f64, |m, r| m.max(r.abs()));
                [
                    g.group.clone(),
                    f.n.to_string(),
                    format_sig(f.alpha, 4),
                    format!("[{}, {}]", format_sig(f.alpha_ci95[0], 4), format_sig(f.alpha_ci95[1], 4)),
                    format_sig(f.beta, 4),
                    format!("[{}, {}]", format_sig(f.beta_ci95[0], 3), format_sig(f.beta_ci95[1], 3)),
                    format!("{:.5}", f.pearson_r),
                    format!("{:.5}", f.r2),
                    format_sig(max_res, 3),
                ]
            })
            .collect();
        let widths: Vec<usize> =
            (0..header.len()).map(|c| rows.iter().map(|r| r[c].chars().count()).chain([header[c].len()]).max().unwrap_or(0)).collect();
        let line = |cells: Vec<String>| {
            cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect::<Vec<_>>().join("  ").trim_end().to_string() + "\n"
        };
        out.push_str(&line(header.iter().map(|s| s.to_string()).collect()));
        for r in rows {
            out.push_str(&line(r.to_vec()));
        }
        for g in &self.fits {
            out.push_str(&format!("{}: {}\n", g.group, g.formula));
        }
        out.push_str(&format!("beta interval: {}\n", self.beta_ci_method));
        if let Some(def) = self.frontier_definition {
            out.push_str(&format!("frontier definition: {def}\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_plot_name_sits_in_the_output_folder() {
        assert_eq!(
            default_plot_path(Path::new("out"), Path::new("logs/sweep.csv"), "params", "loss_last", false),
            PathBuf::from("out/sweep.fit-loss_last-vs-params.png")
        );
        assert_eq!(
            default_plot_path(Path::new("."), Path::new("data/run.jsonl"), "compute", "loss", true),
            PathBuf::from("./run.fit-loss-vs-compute-frontier.png")
        );
    }
}
