//! `genbench quickstart`: the README's main job. Runs the embedded quickstart suite (random-weight
//! profiling of every family at a matched small shape, resolution sweeps, the metric self-check
//! on the bundled test images), then derives what the suite report alone does not show: speed-up
//! ratios between families and the fitted cost exponents (wall clock and analytic FLOPs against
//! resolution, log-log slope per family), written to `quickstart.md` beside the report.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::fit::{fit_power_law, format_sig, AxisNames, Point, PowerLawFit};
use crate::plots::write_atomically;
use crate::runner::{run_suite, ProfilePoint, RunnerOptions, SuiteOutcome};
use crate::suite::Suite;

/// The suite the quickstart runs, compiled in so the command needs no suite file.
pub const QUICKSTART_SUITE: &str = include_str!("../../suites/quickstart.toml");

/// Where the embedded suite is taken to live: its relative paths (the bundled test images under
/// `tests/fixtures/inception/`) resolve against this repository's `suites/` directory. When the
/// binary runs away from its checkout those inputs are missing and the self-check is reported as
/// skipped with the path, like any run with a missing input.
pub fn default_suite_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("suites").join("quickstart.toml")
}

/// Speed of one family relative to another, from the matched-shape profile.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SpeedRatio {
    pub model: String,
    pub batch: u32,
    pub sec_per_image: f64,
    /// Baseline seconds / this model's seconds (> 1 = faster than the baseline).
    pub speedup: f64,
    /// The same for the sampling steps alone (decode excluded).
    pub sampling_speedup: f64,
    pub gflop_per_image: f64,
    /// Baseline GFLOP / this model's GFLOP.
    pub flop_ratio: f64,
}

/// Log-log slope of cost against resolution for one swept run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CostExponent {
    pub run: String,
    pub model: String,
    pub resolutions: Vec<u32>,
    /// Sampling steps' wall clock (decode excluded) against resolution.
    pub time_fit: PowerLawFit,
    /// Sampling steps' analytic FLOPs against resolution.
    pub flop_fit: PowerLawFit,
    /// Whole-image wall clock, decode included.
    pub total_time_fit: PowerLawFit,
}

#[derive(Debug)]
pub struct QuickstartSummary {
    pub outcome: SuiteOutcome,
    pub baseline: String,
    pub ratios: Vec<SpeedRatio>,
    pub exponents: Vec<CostExponent>,
    /// `quickstart.md` (ratios and exponents) beside `report.md`.
    pub summary_path: PathBuf,
    pub text: String,
}

/// Runs the embedded quickstart suite as `opts` say (results root, device, dtype) and
/// summarises it.
pub fn run_quickstart(opts: &RunnerOptions) -> Result<QuickstartSummary> {
    let path = default_suite_path();
    let suite = Suite::parse(&path, QUICKSTART_SUITE, &|name| std::env::var(name).ok()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let outcome = run_suite(&suite, opts)?;
    let profile_points: Vec<&ProfilePoint> = outcome.profile.iter().filter(|p| p.run.starts_with("profile-")).collect();
    let (baseline, ratios) = speed_ratios(&profile_points);
    let exponents = cost_exponents(&outcome.profile);
    let text = summary_markdown(&baseline, &ratios, &exponents);
    let summary_path = outcome.dir.join("quickstart.md");
    write_atomically(&summary_path, |tmp| std::fs::write(tmp, &text).with_context(|| format!("writing {}", tmp.display())))?;
    // The report is what the command points at, so it carries the summary too (one level down).
    let report_path = outcome.dir.join("report.md");
    let report = std::fs::read_to_string(&report_path).with_context(|| format!("reading {}", report_path.display()))?;
    let combined = format!(
        "{report}\n{}",
        text.replace("\n# Quickstart summary", "\n## Quickstart summary")
            .replacen("# Quickstart summary", "## Quickstart summary", 1)
            .replace("\n## Speed-up", "\n### Speed-up")
            .replace("\n## Cost exponents", "\n### Cost exponents")
    );
    write_atomically(&report_path, |tmp| std::fs::write(tmp, &combined).with_context(|| format!("writing {}", tmp.display())))?;
    Ok(QuickstartSummary { outcome, baseline, ratios, exponents, summary_path, text })
}

/// Speed-ups against the raster AR model (the sequential baseline the other families improve
/// on), per batch size, at the profile's own resolution.
pub fn speed_ratios(points: &[&ProfilePoint]) -> (String, Vec<SpeedRatio>) {
    let baseline_model =
        points.iter().find(|p| p.family == "raster_ar").or_else(|| points.first()).map(|p| p.model.clone()).unwrap_or_default();
    let mut out = Vec::new();
    for p in points {
        let Some(base) = points.iter().find(|b| b.model == baseline_model && b.batch == p.batch && b.resolution == p.resolution) else {
            continue;
        };
        out.push(SpeedRatio {
            model: p.model.clone(),
            batch: p.batch,
            sec_per_image: p.sec_per_image,
            speedup: base.sec_per_image / p.sec_per_image,
            sampling_speedup: base.sampling_sec_per_image / p.sampling_sec_per_image,
            gflop_per_image: p.gflop_per_image,
            flop_ratio: base.gflop_per_image / p.gflop_per_image,
        });
    }
    (baseline_model, out)
}

/// Power-law fits of seconds and GFLOP per image against resolution, per run swept over at
/// least three resolutions (two points always fit exactly: no slope worth reporting).
pub fn cost_exponents(points: &[ProfilePoint]) -> Vec<CostExponent> {
    // Distinct runs in first-seen order (points of different runs may interleave).
    let mut runs: Vec<&str> = Vec::new();
    for p in points {
        if !runs.contains(&p.run.as_str()) {
            runs.push(&p.run);
        }
    }
    let mut out = Vec::new();
    for run in runs {
        let rows: Vec<&ProfilePoint> = points.iter().filter(|p| p.run == run).collect();
        let batch = rows.iter().map(|p| p.batch).min().unwrap_or(1);
        let mut rows: Vec<&ProfilePoint> = rows.into_iter().filter(|p| p.batch == batch).collect();
        rows.sort_by_key(|p| p.resolution);
        if rows.len() < 3 {
            continue;
        }
        let pts = |y: &dyn Fn(&ProfilePoint) -> f64| -> Vec<Point> {
            rows.iter().enumerate().map(|(i, p)| Point { x: f64::from(p.resolution), y: y(p), line: i + 1 }).collect()
        };
        let names = AxisNames { x: "resolution".into(), y: "cost".into() };
        let (Ok(time_fit), Ok(flop_fit), Ok(total_time_fit)) = (
            fit_power_law(&pts(&|p| p.sampling_sec_per_image), &names, None),
            fit_power_law(&pts(&|p| p.sampling_gflop_per_image), &names, None),
            fit_power_law(&pts(&|p| p.sec_per_image), &names, None),
        ) else {
            continue;
        };
        out.push(CostExponent {
            run: run.to_string(),
            model: rows[0].model.clone(),
            resolutions: rows.iter().map(|p| p.resolution).collect(),
            time_fit,
            flop_fit,
            total_time_fit,
        });
    }
    out
}

pub fn summary_markdown(baseline: &str, ratios: &[SpeedRatio], exponents: &[CostExponent]) -> String {
    let mut s = String::from("# Quickstart summary\n\nRandom weights, matched small shape; CPU timings of this machine.\n\n");
    s.push_str(&format!("## Speed-up vs {baseline} (same batch)\n\n| model | batch | s/image | speed-up | speed-up, sampling steps only | GFLOP/image | FLOP ratio |\n|---|---|---|---|---|---|---|\n"));
    for r in ratios {
        s.push_str(&format!(
            "| {} | {} | {} | {}x | {}x | {} | {}x |\n",
            r.model,
            r.batch,
            format_sig(r.sec_per_image, 3),
            format_sig(r.speedup, 3),
            format_sig(r.sampling_speedup, 3),
            format_sig(r.gflop_per_image, 3),
            format_sig(r.flop_ratio, 3)
        ));
    }
    s.push_str(
        "\n## Cost exponents (log-log slope against resolution)\n\nVAR's paper claims O(n^4) generation cost for VAR against O(n^6) for raster AR, for an n x n token map; resolution is proportional to n, so these slopes are the measured counterparts. At small sizes the linear layers (cost proportional to n^2) dominate, so measured slopes sit below the asymptotic ones.\n\nSlopes are of the sampling steps (tokenizer decode excluded) unless marked.\n\n| run | model | resolutions | time slope | 95% CI | FLOP slope | time slope with decode |\n|---|---|---|---|---|---|---|\n",
    );
    for e in exponents {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} to {} | {} | {} |\n",
            e.run,
            e.model,
            e.resolutions.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(", "),
            format_sig(e.time_fit.alpha, 3),
            format_sig(e.time_fit.alpha_ci95[0], 3),
            format_sig(e.time_fit.alpha_ci95[1], 3),
            format_sig(e.flop_fit.alpha, 3),
            format_sig(e.total_time_fit.alpha, 3)
        ));
    }
    s
}
