//! Results of a suite run on disk: `metrics.csv`, `steps.csv`, `report.md` (ours beside
//! published, deltas, pass/fail per tolerance) and `manifest.json`. All text is built by pure
//! functions over [`RunResult`]s, then written atomically.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::fit::format_sig;
use crate::manifest::Manifest;
use crate::plots::write_atomically;
use crate::records::{RunResult, RunStatus};
use crate::suite::{Metric, Run, Suite, Tolerance};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    Fail,
    /// A published value exists but the run did not produce the metric (skipped, failed, or the
    /// relative base is missing).
    NotMeasured,
    /// Measured, with nothing published to compare against.
    NoReference,
}

impl Verdict {
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "FAIL",
            Verdict::NotMeasured => "not measured",
            Verdict::NoReference => "-",
        }
    }
}

/// One metric of one run, ours beside published.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    pub run: String,
    pub family: String,
    pub model: String,
    pub status: String,
    pub metric: Metric,
    pub ours: Option<f64>,
    pub published: Option<f64>,
    /// ours - published.
    pub delta: Option<f64>,
    /// (ours - published) / |published|.
    pub rel_delta: Option<f64>,
    pub tolerance: Option<Tolerance>,
    pub verdict: Verdict,
    /// Where the published value came from.
    pub origin: Option<String>,
}

/// Fills `rel_time` / `rel_gflop` of each completed result from the run named in its
/// `relative_to`. The runner calls this once all runs are done, so the order of runs in the suite
/// does not matter.
pub fn derive_relative_metrics(runs: &[&Run], results: &mut [RunResult]) {
    let absolute: BTreeMap<(String, Metric), f64> = results
        .iter()
        .filter(|r| r.status == RunStatus::Completed)
        .flat_map(|r| r.metrics.iter().map(move |(m, v)| ((r.id.clone(), *m), *v)))
        .collect();
    for result in results.iter_mut().filter(|r| r.status == RunStatus::Completed) {
        let Some(run) = runs.iter().find(|r| r.id == result.id) else {
            continue;
        };
        let Some(base_run) = &run.relative_to else { continue };
        for metric in &run.metrics {
            let Some(base_metric) = metric.relative_base() else {
                continue;
            };
            let ours = result.metrics.get(&base_metric).copied();
            let base = absolute.get(&(base_run.clone(), base_metric)).copied();
            if let (Some(ours), Some(base)) = (ours, base) {
                if base > 0.0 {
                    result.metrics.insert(*metric, ours / base);
                }
            }
        }
    }
}

/// Ours against published for every metric a run targets or measured, in suite order.
pub fn compare(runs: &[&Run], results: &[RunResult]) -> Vec<Comparison> {
    let mut out = Vec::new();
    for result in results {
        let run = runs.iter().find(|r| r.id == result.id);
        let targets = run.and_then(|r| r.published.as_ref()).map(|p| p.targets.as_slice()).unwrap_or(&[]);
        let mut metrics: Vec<Metric> = run.map(|r| r.metrics.clone()).unwrap_or_default();
        for m in result.metrics.keys() {
            if !metrics.contains(m) {
                metrics.push(*m);
            }
        }
        for metric in metrics {
            let ours = result.metrics.get(&metric).copied();
            let target = targets.iter().find(|t| t.metric == metric);
            let (published, tolerance, origin) = match target {
                Some(t) => (Some(t.published), Some(t.tolerance), Some(t.origin.clone())),
                None => (None, None, None),
            };
            let delta = ours.zip(published).map(|(o, p)| o - p);
            let rel_delta = delta.zip(published).and_then(|(d, p)| (p != 0.0).then(|| d / p.abs()));
            let verdict = match (ours, target) {
                (Some(o), Some(t)) => {
                    if t.tolerance.passes(o, t.published) {
                        Verdict::Pass
                    } else {
                        Verdict::Fail
                    }
                }
                (None, Some(_)) => Verdict::NotMeasured,
                _ => Verdict::NoReference,
            };
            out.push(Comparison {
                run: result.id.clone(),
                family: result.family.clone(),
                model: result.model.clone(),
                status: result.status.label().to_string(),
                metric,
                ours,
                published,
                delta,
                rel_delta,
                tolerance,
                verdict,
                origin,
            });
        }
    }
    out
}

fn opt(v: Option<f64>) -> String {
    v.map(|v| format!("{v}")).unwrap_or_default()
}

/// `metrics.csv`: one row per (run, metric), full precision.
pub fn metrics_csv(comparisons: &[Comparison]) -> Result<String> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "run",
        "family",
        "model",
        "status",
        "metric",
        "value",
        "published",
        "delta",
        "rel_delta",
        "tolerance",
        "verdict",
        "published_from",
    ])?;
    for c in comparisons {
        w.write_record([
            c.run.as_str(),
            &c.family,
            &c.model,
            &c.status,
            c.metric.name(),
            &opt(c.ours),
            &opt(c.published),
            &opt(c.delta),
            &opt(c.rel_delta),
            &c.tolerance.map(Tolerance::describe).unwrap_or_default(),
            c.verdict.label(),
            c.origin.as_deref().unwrap_or(""),
        ])?;
    }
    Ok(String::from_utf8(w.into_inner()?)?)
}

/// `steps.csv`: every step record of every run.
pub fn steps_csv(results: &[RunResult]) -> Result<String> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(["run", "family", "model", "batch", "step", "kind", "tokens", "attended", "ms", "gflop"])?;
    for r in results {
        for s in &r.steps {
            w.write_record([
                r.id.as_str(),
                &s.family,
                &s.model,
                &s.batch.to_string(),
                &s.step.to_string(),
                &s.kind,
                &s.tokens.to_string(),
                &s.attended.to_string(),
                &format!("{}", s.ms),
                &format!("{}", s.gflop),
            ])?;
        }
    }
    Ok(String::from_utf8(w.into_inner()?)?)
}

fn num(v: Option<f64>) -> String {
    v.map(|v| format_sig(v, 4)).unwrap_or_else(|| "-".into())
}

fn signed(v: Option<f64>, percent: bool) -> String {
    match v {
        None => "-".into(),
        Some(v) if percent => format!("{}{}%", if v >= 0.0 { "+" } else { "" }, format_sig(v * 100.0, 3)),
        Some(v) => format!("{}{}", if v >= 0.0 { "+" } else { "" }, format_sig(v, 3)),
    }
}

fn seed_list(seeds: &[u64]) -> String {
    seeds.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
}

/// Escapes `|` so cell text cannot break a markdown table.
fn cell(s: &str) -> String {
    s.replace('|', "\\|")
}

/// `report.md`. `plots` are paths relative to the report's directory.
pub fn report_markdown(
    suite: &Suite,
    manifest: &Manifest,
    results: &[RunResult],
    comparisons: &[Comparison],
    plots: &[(String, PathBuf)],
) -> String {
    let mut md = String::new();
    md.push_str(&format!("# Suite `{}`\n\n", suite.name));
    if !suite.description.trim().is_empty() {
        md.push_str(&format!("{}\n\n", suite.description.trim()));
    }
    let git = match &manifest.git {
        Some(g) => format!("commit {}{}", &g.commit[..g.commit.len().min(12)], if g.dirty { " with uncommitted changes" } else { "" }),
        None => "no git commit recorded".into(),
    };
    md.push_str(&format!(
        "genbench {}, {git}; device {}; CPU {} ({} logical CPUs, {} threads); {} to {}.\n\n",
        manifest.genbench_version,
        manifest.device,
        manifest.machine.cpu_model,
        manifest.machine.logical_cpus,
        manifest.machine.threads,
        manifest.started_utc,
        manifest.finished_utc
    ));

    let count = |run: &str, v: Verdict| comparisons.iter().filter(|c| c.run == run && c.verdict == v).count();
    md.push_str("## Summary\n\n| run | family | model | status | pass | fail | wall clock |\n|---|---|---|---|---|---|---|\n");
    for r in results {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} s |\n",
            cell(&r.id),
            cell(&r.family),
            cell(&r.model),
            r.status.label(),
            count(&r.id, Verdict::Pass),
            count(&r.id, Verdict::Fail),
            format_sig(r.wall_seconds, 3)
        ));
    }
    let (pass, fail) = (
        comparisons.iter().filter(|c| c.verdict == Verdict::Pass).count(),
        comparisons.iter().filter(|c| c.verdict == Verdict::Fail).count(),
    );
    md.push_str(&format!("\nWithin tolerance: {pass}; outside: {fail}.\n\n## Ours vs published\n"));

    for r in results {
        let run = suite.runs.iter().find(|x| x.id == r.id);
        md.push_str(&format!("\n### {} ({} / {})\n\n", r.id, r.family, r.model));
        match &r.status {
            RunStatus::Skipped { reason } => md.push_str(&format!("Skipped: {reason}\n\n")),
            RunStatus::Failed { error } => md.push_str(&format!("Failed: {error}\n\n")),
            RunStatus::Completed => {}
        }
        if let Some(p) = run.and_then(|x| x.published.as_ref()) {
            md.push_str(&format!("Published values: {}", cell(&p.source)));
            if let Some(c) = &p.citation {
                md.push_str(&format!("; source: {}", cell(c)));
            }
            md.push_str("\n\n");
        }
        // Rows with neither a measurement nor a published value (a skipped run's plain metrics)
        // say nothing.
        let rows: Vec<&Comparison> = comparisons.iter().filter(|c| c.run == r.id && (c.ours.is_some() || c.published.is_some())).collect();
        if rows.is_empty() {
            continue;
        }
        if !r.spread.is_empty() {
            md.push_str(&format!(
                "Mean over {} seeds ({}), ± the sample standard deviation across them.\n\n",
                r.seeds.len(),
                seed_list(&r.seeds)
            ));
        }
        md.push_str("| metric | ours | published | Δ | Δ% | tolerance | result |\n|---|---|---|---|---|---|---|\n");
        for c in rows {
            let ours = match (c.ours, r.spread.get(&c.metric)) {
                (Some(v), Some(sd)) => format!("{} ± {}", format_sig(v, 4), format_sig(*sd, 2)),
                _ => num(c.ours),
            };
            let verdict = match r.unavailable.get(&c.metric) {
                Some(_) if c.ours.is_none() => "unavailable",
                _ => c.verdict.label(),
            };
            md.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} |\n",
                c.metric,
                ours,
                num(c.published),
                signed(c.delta, false),
                signed(c.rel_delta, true),
                c.tolerance.map(Tolerance::describe).unwrap_or_else(|| "-".into()),
                verdict
            ));
        }
        for (m, why) in &r.unavailable {
            md.push_str(&format!("\n{} unavailable: {}\n", m.label(), cell(why)));
        }
        if !r.warnings.is_empty() {
            md.push_str("\nWarnings:\n\n");
            for w in &r.warnings {
                md.push_str(&format!("- {w}\n"));
            }
        }
    }

    if !plots.is_empty() {
        md.push_str("\n## Plots\n\n");
        for (title, path) in plots {
            md.push_str(&format!("![{}]({})\n\n", cell(title), path.display()));
        }
    }
    md.push_str("\nFiles: `metrics.csv` (every metric at full precision), `steps.csv` (per-step time and FLOPs), `manifest.json` (versions, machine, settings, seeds, weight hashes).\n");
    md
}

/// The end-of-suite verdicts: one line per run, and per published value a run was checked
/// against; whether anything failed.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdicts {
    pub lines: Vec<String>,
    /// Runs that were attempted and failed.
    pub failed_runs: usize,
    /// Measured values outside their published tolerance.
    pub failed_checks: usize,
}

impl Verdicts {
    /// Nothing failed: skipped runs (missing inputs) and unavailable metrics do not fail a suite.
    pub fn ok(&self) -> bool {
        self.failed_runs == 0 && self.failed_checks == 0
    }

    /// `Ok` when nothing failed, else an error naming `what` (e.g. "suite `x`"), the counts and
    /// the report to read: what `suite` and `quickstart` exit with.
    pub fn ensure_ok(&self, what: &str, report: &std::path::Path) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.ok(),
            "{what}: {} run(s) failed and {} check(s) came out outside their tolerance (see {})",
            self.failed_runs,
            self.failed_checks,
            report.display()
        );
        Ok(())
    }

    pub fn text(&self) -> String {
        let mut s = String::from("Verdicts:\n");
        for l in &self.lines {
            s.push_str(&format!("  {l}\n"));
        }
        s.push_str(&format!("{} run(s) failed, {} check(s) outside tolerance.\n", self.failed_runs, self.failed_checks));
        s
    }
}

/// Verdicts of every run: `pass` / `FAIL` per published value, `skipped` with the reason (the
/// run's missing inputs, or why a metric was unavailable), `failed` with the error.
pub fn verdicts(results: &[RunResult], comparisons: &[Comparison]) -> Verdicts {
    let mut out = Verdicts { lines: Vec::new(), failed_runs: 0, failed_checks: 0 };
    for r in results {
        match &r.status {
            RunStatus::Skipped { reason } => out.lines.push(format!("skipped  {}: {reason}", r.id)),
            RunStatus::Failed { error } => {
                out.failed_runs += 1;
                out.lines.push(format!("failed   {}: {error}", r.id));
            }
            RunStatus::Completed => {
                let checked: Vec<&Comparison> = comparisons.iter().filter(|c| c.run == r.id && c.published.is_some()).collect();
                if checked.is_empty() {
                    out.lines.push(format!("done     {}: nothing published to compare with", r.id));
                }
                for c in checked {
                    let published =
                        format!("published {}{}", num(c.published), c.tolerance.map(|t| format!(" {}", t.describe())).unwrap_or_default());
                    let line = match (c.verdict, r.unavailable.get(&c.metric)) {
                        (Verdict::Pass, _) => format!("pass     {} {}: {} ({published})", r.id, c.metric, num(c.ours)),
                        (Verdict::Fail, _) => {
                            out.failed_checks += 1;
                            format!("FAIL     {} {}: {} ({published})", r.id, c.metric, num(c.ours))
                        }
                        (_, Some(why)) => format!("skipped  {} {}: unavailable: {why}", r.id, c.metric),
                        _ => format!("skipped  {} {}: not measured", r.id, c.metric),
                    };
                    out.lines.push(line);
                }
                for (m, why) in r
                    .unavailable
                    .iter()
                    .filter(|(m, _)| !comparisons.iter().any(|c| c.run == r.id && c.metric == **m && c.published.is_some()))
                {
                    out.lines.push(format!("skipped  {} {m}: unavailable: {why}", r.id));
                }
            }
        }
    }
    out
}

/// Writes `manifest.json`, `metrics.csv`, `steps.csv` and `report.md` into `dir` (created if
/// needed). Plots are expected under `dir/plots/` already; pass their titles and paths relative
/// to `dir`.
pub fn write_results(
    dir: &Path,
    suite: &Suite,
    manifest: &Manifest,
    results: &[RunResult],
    plots: &[(String, PathBuf)],
) -> Result<Vec<Comparison>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let runs: Vec<&Run> = suite.runs.iter().collect();
    let comparisons = compare(&runs, results);
    let write = |name: &str, text: String| {
        write_atomically(&dir.join(name), |tmp| std::fs::write(tmp, &text).with_context(|| format!("writing {}", tmp.display())))
    };
    write("manifest.json", serde_json::to_string_pretty(manifest)?)?;
    write("metrics.csv", metrics_csv(&comparisons)?)?;
    write("steps.csv", steps_csv(results)?)?;
    write("report.md", report_markdown(suite, manifest, results, &comparisons, plots))?;
    Ok(comparisons)
}
