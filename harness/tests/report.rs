//! Reports, CSVs and manifests from plain run results (no models involved).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use genbench_harness::manifest::{GitState, Machine, Manifest};
use genbench_harness::records::{RunResult, RunStatus, StepRecord};
use genbench_harness::report::{compare, derive_relative_metrics, metrics_csv, report_markdown, steps_csv, write_results, Verdict};
use genbench_harness::suite::{Metric, Run, Suite};

fn suite() -> Suite {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../suites/var_table3_speed.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    Suite::parse(&path, &text, &|_| None).unwrap()
}

fn completed(id: &str, family: &str, model: &str, sec: f64, gflop: f64) -> RunResult {
    RunResult {
        id: id.into(),
        family: family.into(),
        model: model.into(),
        status: RunStatus::Completed,
        metrics: [(Metric::SecPerImage, sec), (Metric::GflopPerImage, gflop)].into_iter().collect(),
        images: 80,
        seeds: vec![0],
        wall_seconds: sec * 80.0,
        settings: serde_json::json!({"batch": 16}),
        weight_hashes: BTreeMap::new(),
        steps: vec![StepRecord {
            family: family.into(),
            model: model.into(),
            batch: 16,
            step: 0,
            kind: "transformer".into(),
            tokens: 1,
            attended: 1,
            ms: 1.5,
            gflop: 0.62,
        }],
        spread: BTreeMap::new(),
        evaluations: Vec::new(),
        unavailable: BTreeMap::new(),
        warnings: Vec::new(),
    }
}

fn machine() -> Machine {
    Machine {
        cpu_model: "Test CPU".into(),
        physical_cores: Some(2),
        logical_cpus: 2,
        threads: 2,
        memory_gib: Some(24.0),
        os: "linux".into(),
        arch: "x86_64".into(),
        avx2: true,
        avx512f: false,
        cuda_compiled: false,
    }
}

/// Baseline 10 s/img; row 2 at 0.15 s/img (ratio 0.015, published 0.013: inside ×÷2.5);
/// row 7 at 2.0 s/img (0.2 against 0.052: outside); row 3 skipped.
fn results(s: &Suite) -> Vec<RunResult> {
    let runs: Vec<&Run> = s.runs.iter().collect();
    let mut r = vec![
        completed("ar-baseline", "raster_ar", "taming-cin", 10.0, 100.0),
        completed("row2-ar-to-var", "var", "var-d16", 0.15, 600.0),
        RunResult::skipped("row3-adaln", "var", "var-d16", "checkpoint /w/var_d16.pth does not exist"),
        completed("row7-scale-up", "var", "var-d30", 2.0, 7580.0),
    ];
    derive_relative_metrics(&runs, &mut r);
    r
}

#[test]
fn relative_metrics_and_verdicts() {
    let s = suite();
    let r = results(&s);
    assert!((r[1].metrics[&Metric::RelTime] - 0.015).abs() < 1e-12);
    assert!((r[1].metrics[&Metric::RelGflop] - 6.0).abs() < 1e-12);
    assert!(!r[0].metrics.contains_key(&Metric::RelTime), "the baseline has no ratio");
    let runs: Vec<&Run> = s.runs.iter().collect();
    let c = compare(&runs, &r);
    let find = |run: &str, m: Metric| c.iter().find(|x| x.run == run && x.metric == m).unwrap();
    let row2 = find("row2-ar-to-var", Metric::RelTime);
    assert_eq!(row2.verdict, Verdict::Pass);
    assert_eq!(row2.published, Some(0.013));
    assert!((row2.delta.unwrap() - 0.002).abs() < 1e-12);
    assert_eq!(find("row7-scale-up", Metric::RelTime).verdict, Verdict::Fail);
    assert_eq!(find("row3-adaln", Metric::RelTime).verdict, Verdict::NotMeasured);
    assert_eq!(find("ar-baseline", Metric::SecPerImage).verdict, Verdict::NoReference);
}

#[test]
fn csvs_and_markdown() {
    let s = suite();
    let r = results(&s);
    let runs: Vec<&Run> = s.runs.iter().collect();
    let c = compare(&runs, &r);
    let csv = metrics_csv(&c).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next().unwrap(), "run,family,model,status,metric,value,published,delta,rel_delta,tolerance,verdict,published_from");
    let row2 = csv.lines().find(|l| l.starts_with("row2-ar-to-var,var,var-d16,completed,rel_time,")).unwrap();
    assert!(
        row2.ends_with(",0.013,0.002,0.15384615384615385,×÷2.5,pass,\"var_table3_ablation.csv line 3, column cost_rel_baseline\""),
        "{row2}"
    );
    assert!(csv.contains("row3-adaln,var,var-d16,skipped,rel_time,,0.016,,,×÷2.5,not measured,"));

    let steps = steps_csv(&r).unwrap();
    assert_eq!(steps.lines().next().unwrap(), "run,family,model,batch,step,kind,tokens,attended,ms,gflop");
    assert_eq!(steps.lines().count(), 1 + 3);
    assert!(steps.contains("row7-scale-up,var,var-d30,16,0,transformer,1,1,1.5,0.62"));

    let t0 = UNIX_EPOCH + Duration::from_secs(1_712_320_800);
    let m = Manifest::new(
        &s,
        &r,
        machine(),
        Some(GitState { commit: "0123456789abcdef0123".into(), dirty: true }),
        "cpu (2 threads)",
        t0,
        t0 + Duration::from_secs(90),
    );
    let md = report_markdown(&s, &m, &r, &c, &[("FID vs time".into(), PathBuf::from("plots/fid_vs_time.png"))]);
    assert!(md.starts_with("# Suite `var_table3_speed`\n"));
    assert!(md.contains("genbench 0.1.0, commit 0123456789ab with uncommitted changes; device cpu (2 threads); CPU Test CPU"), "{md}");
    assert!(md.contains("| rel_time | 0.015 | 0.013 | +0.002 | +15.4% | ×÷2.5 | pass |"), "{md}");
    assert!(md.contains("| rel_time | 0.2 | 0.052 | +0.148 | +285% | ×÷2.5 | FAIL |"), "{md}");
    // The skipped run shows only its published target.
    assert!(md.contains("| rel_time | - | 0.016 | - | - | ×÷2.5 | not measured |\n\n"), "{md}");
    assert!(md.contains("Skipped: checkpoint /w/var_d16.pth does not exist"));
    assert!(md.contains("| row2-ar-to-var | var | var-d16 | completed | 1 | 0 |"));
    assert!(md.contains("Within tolerance: 1; outside: 1."), "{md}");
    assert!(md.contains("![FID vs time](plots/fid_vs_time.png)"));
}

#[test]
fn manifest_and_files_on_disk() {
    let s = suite();
    let r = results(&s);
    let t0 = UNIX_EPOCH + Duration::from_secs(1_712_320_800);
    let m = Manifest::new(&s, &r, machine(), None, "cpu", t0, t0);
    assert_eq!(m.started_utc, "2024-04-05T12:40:00Z");
    assert_eq!(m.suite_name, "var_table3_speed");
    assert_eq!(m.suite_sha256.as_ref().map(String::len), Some(64));
    assert!(m.crate_versions.contains_key("candle-core"));
    assert_eq!(m.runs[2].status, "skipped");
    assert_eq!(m.runs[2].reason.as_deref(), Some("checkpoint /w/var_d16.pth does not exist"));

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("results/var_table3_speed/20240405T124000Z");
    let comparisons = write_results(&out, &s, &m, &r, &[]).unwrap();
    assert_eq!(comparisons.iter().filter(|c| c.verdict == Verdict::Fail).count(), 1);
    for f in ["manifest.json", "metrics.csv", "steps.csv", "report.md"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let back: Manifest = serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(back, m);
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 4, "temporary files left behind");
}
