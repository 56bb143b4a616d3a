//! Every shipped suite loads and resolves its published values; every kind of bad input fails
//! before anything runs, naming file, line and key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use genbench_harness::runner::{refusal, sample_cache_key};
use genbench_harness::suite::{Convention, DistancePrecision, Metric, Suite, Task, Tolerance, Weights};

fn suites_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../suites")
}

fn env_with_dirs(name: &str) -> Option<String> {
    match name {
        "GENBENCH_WEIGHTS" => Some("/weights".into()),
        "GENBENCH_DATA" => Some("/data".into()),
        _ => None,
    }
}

fn load(name: &str) -> Suite {
    let path = suites_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    Suite::parse(&path, &text, &env_with_dirs).unwrap_or_else(|e| panic!("{e}"))
}

/// What `genbench suite --dry-run` reports as refused (on the CPU, with each suite's own dtype)
/// is empty for every shipped suite: each run either runs or is skipped with a reason (missing
/// weights, or a row genbench cannot build, which says why).
#[test]
fn every_shipped_suite_dry_runs_without_refusal() {
    let mut checked = 0;
    for entry in std::fs::read_dir(suites_dir()).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if !name.ends_with(".toml") {
            continue;
        }
        let suite = load(&name);
        let dir = suite.path.parent().unwrap().to_path_buf();
        for run in &suite.runs {
            let refused = refusal(run, &dir, &candle_core::Device::Cpu, None);
            assert_eq!(refused, None, "{name}: run `{}` would be refused", run.id);
            checked += 1;
        }
    }
    assert!(checked >= 20, "{checked} runs checked");
    // The one row genbench cannot build is skipped with its reason, and the rest of its suite runs.
    let table3 = load("var_table3_speed.toml");
    let row2 = table3.runs.iter().find(|r| r.id == "row2-ar-to-var").unwrap();
    assert!(row2.skip_reason().unwrap().contains("not supported: VAR without AdaLN"), "{:?}", row2.skip_reason());
    assert!(table3.runs.iter().filter(|r| r.id != "row2-ar-to-var").all(|r| r.skip_reason().is_none()));
    // A run the runner would refuse is reported with the reason: an override the registry does
    // not have (torch-fidelity's KID on too few samples: harness/tests/runner.rs). bf16 on the
    // CPU is allowed by the runtime's dtype table, so it is not refused.
    let bad = |edit: &str| {
        let text = std::fs::read_to_string(suites_dir().join("quickstart.toml"))
            .unwrap()
            .replace("id = \"profile-var\"\nfamily = \"var\"", &format!("id = \"profile-var\"\nfamily = \"var\"\n{edit}"));
        let path = suites_dir().join("quickstart.toml");
        let suite = Suite::parse(&path, &text, &|_| None).unwrap();
        let run = suite.runs.iter().find(|r| r.id == "profile-var").unwrap().clone();
        refusal(&run, &suites_dir(), &candle_core::Device::Cpu, None).unwrap_or_default()
    };
    assert_eq!(bad("dtype = \"bf16\""), "", "bf16 runs on the CPU");
    let why = bad("arch = { depth = 6, width = 384, heads = 6, adaln = false }");
    assert!(why.contains("adaln"), "{why}");
}

#[test]
fn every_shipped_suite_validates() {
    let mut names: Vec<String> = std::fs::read_dir(suites_dir())
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.ends_with(".toml"))
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["autonat_in256.toml", "llamagen_c2i.toml", "mar_system.toml", "quickstart.toml", "var_table1.toml", "var_table3_speed.toml"]
    );
    for name in &names {
        let suite = load(name);
        assert!(!suite.runs.is_empty(), "{name} has no runs");
        assert_eq!(format!("{}.toml", suite.name), *name, "suite name should match its file");
    }
}

fn target(suite: &Suite, run: &str, metric: Metric) -> (f64, Tolerance) {
    let r = suite.runs.iter().find(|r| r.id == run).unwrap_or_else(|| panic!("no run {run}"));
    let t = r.published.as_ref().unwrap().targets.iter().find(|t| t.metric == metric).unwrap();
    (t.published, t.tolerance)
}

#[test]
fn var_table1_resolves_the_readme_rows() {
    let s = load("var_table1.toml");
    let ids: Vec<&str> = s.runs.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["var-d16", "var-d20", "var-d24", "var-d30"]);
    assert_eq!(target(&s, "var-d16", Metric::Fid), (3.55, Tolerance::Abs(0.3)));
    assert_eq!(target(&s, "var-d20", Metric::Fid).0, 2.95);
    assert_eq!(target(&s, "var-d24", Metric::Fid).0, 2.33);
    assert_eq!(target(&s, "var-d30", Metric::Fid), (1.97, Tolerance::Abs(0.2)));
    assert_eq!(target(&s, "var-d16", Metric::Is).0, 280.4);
    // Defaults reach every run; a run's own value wins.
    let Task::Generate { model, batch, samples, reference, .. } = &s.runs[3].task else { panic!("not generate") };
    assert_eq!((*batch, *samples), (25, 50000));
    assert_eq!(model.sampler["top_k"], 900);
    assert_eq!(reference.as_ref().unwrap().resolved, Ok(PathBuf::from("/data/VIRTUAL_imagenet256_labeled.npz")));
    match &model.weights {
        Weights::Checkpoint { checkpoint, .. } => {
            assert_eq!(checkpoint.resolved, Ok(PathBuf::from("/weights/var/var_d30.pth")))
        }
        Weights::Random => panic!("random weights"),
    }
    let p = s.runs[0].published.as_ref().unwrap();
    assert!(p.source.starts_with("var_table1.csv line "), "{}", p.source);
    assert!(p.citation.as_deref().unwrap().contains("github:FoundationVision/VAR"));
}

#[test]
fn var_table3_cost_column_and_relative_runs() {
    let s = load("var_table3_speed.toml");
    assert_eq!(target(&s, "row2-ar-to-var", Metric::RelTime), (0.013, Tolerance::Factor(2.5)));
    assert_eq!(target(&s, "row7-scale-up", Metric::RelTime).0, 0.052);
    assert!(s.runs[1..].iter().all(|r| r.relative_to.as_deref() == Some("ar-baseline")));
    assert!(s.runs[0].relative_to.is_none());
    assert!(s.runs.iter().all(|r| matches!(&r.task, Task::Profile { model, .. } if model.weights == Weights::Random)));
}

#[test]
fn llamagen_rows_are_told_apart_by_token_grid() {
    let s = load("llamagen_c2i.toml");
    assert_eq!(target(&s, "llamagen-b-256", Metric::Fid).0, 5.46);
    assert_eq!(target(&s, "llamagen-b-384", Metric::Fid).0, 6.09);
    assert_eq!(target(&s, "llamagen-3b-384", Metric::Fid).0, 2.18);
    let Task::Generate { eval_resolution, model, .. } = &s.runs[1].task else { panic!() };
    assert_eq!((*eval_resolution, model.resolution), (Some(256), 384));
}

#[test]
fn quickstart_metric_check_reads_the_golden_values() {
    let s = load("quickstart.toml");
    let (fid, tol) = target(&s, "metric-self-check", Metric::Fid);
    assert!((fid - 270.1524355211694).abs() < 1e-9);
    assert_eq!(tol, Tolerance::Abs(1e-3));
    let check = s.runs.iter().find(|r| r.id == "metric-self-check").unwrap();
    // The bundled images exist, so nothing would be skipped.
    assert_eq!(check.missing_inputs(), Vec::<String>::new());
    let Task::MetricCheck { images, split_at, pr_distances, .. } = &check.task else { panic!() };
    assert_eq!((images.len(), *split_at), (4, 18));
    // The golden precision/recall were computed in float32, so the check must be too.
    assert_eq!(*pr_distances, DistancePrecision::F32);
    // Model defaults did not leak into the metric check, and profile runs got them.
    let var = s.runs.iter().find(|r| r.id == "resolution-var").unwrap();
    let Task::Profile { profile, model, .. } = &var.task else { panic!() };
    assert_eq!(profile.resolutions, [64, 128, 256]);
    assert_eq!(profile.repeats, 1);
    assert_eq!(model.arch.depth, Some(6));
}

#[test]
fn missing_weights_make_a_run_skippable_not_invalid() {
    let path = suites_dir().join("var_table1.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let s = Suite::parse(&path, &text, &|_| None).unwrap();
    let missing = s.runs[0].missing_inputs();
    assert_eq!(missing.len(), 3, "{missing:?}");
    assert!(missing[0].starts_with("checkpoint `${GENBENCH_WEIGHTS}/var/var_d16.pth`: environment variable GENBENCH_WEIGHTS is not set"));
    let s = load("var_table1.toml");
    assert!(s.runs[0].missing_inputs()[0].contains("/weights/var/var_d16.pth does not exist"));
}

#[test]
fn only_selects_runs_and_rejects_unknown_ids() {
    let s = load("var_table1.toml");
    let picked: Vec<&str> = s.select(&["var-d24".into()]).unwrap().iter().map(|r| r.id.as_str()).collect();
    assert_eq!(picked, ["var-d24"]);
    let e = s.select(&["var-d21".into()]).unwrap_err();
    assert!(e.contains("no run with id `var-d21`; the runs are: var-d16, var-d20, var-d24, var-d30"), "{e}");
}

#[test]
fn cache_keys_follow_what_changes_the_images() {
    let s = load("var_table1.toml");
    let hashes: BTreeMap<String, String> = [("checkpoint".to_string(), "aa".to_string())].into();
    let k16 = sample_cache_key(&s.runs[0], &hashes).unwrap();
    assert_eq!(k16, sample_cache_key(&s.runs[0], &hashes).unwrap());
    assert_ne!(k16, sample_cache_key(&s.runs[1], &hashes).unwrap());
    let other: BTreeMap<String, String> = [("checkpoint".to_string(), "bb".to_string())].into();
    assert_ne!(k16, sample_cache_key(&s.runs[0], &other).unwrap());
    // Adding a metric does not change the sample key (no finished work is redone; features are
    // keyed by the samples' content).
    let mut more = s.runs[0].clone();
    more.metrics.push(Metric::Kid);
    assert_eq!(sample_cache_key(&more, &hashes).unwrap(), k16);
}

// --- bad input ---------------------------------------------------------------------------

/// A valid minimal suite beside a papers directory holding one small table.
fn scratch(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir.join("papers")).unwrap();
    std::fs::write(
        dir.join("papers/t1.csv"),
        "version,model,fid,is,source\nv2,VAR-d16,3.30,274.4,paper\nv1,VAR-d16,3.55,280.4,readme\nv2,ADM,10.94,-,paper\n",
    )
    .unwrap();
    dir.join("s.toml")
}

const GOOD: &str = r#"[suite]
name = "t"

[[run]]
id = "a"
family = "var"
model = "var-d16"
checkpoint = "w.pth"
resolution = 256
samples = 10
batch = 2
seeds = [0]
metrics = ["fid", "is"]
reference = "ref.npz"
[run.published]
table = "t1"
row = { model = "VAR-d16", version = "v1" }
tolerance = { fid = { abs = 0.3 } }
"#;

fn error_for(text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = scratch(dir.path());
    std::fs::write(&path, text).unwrap();
    match Suite::load(&path) {
        Ok(_) => panic!("suite unexpectedly valid:\n{text}"),
        Err(e) => e.to_string().replace(&path.display().to_string(), "s.toml"),
    }
}

#[test]
fn the_good_suite_is_good() {
    let dir = tempfile::tempdir().unwrap();
    let path = scratch(dir.path());
    std::fs::write(&path, GOOD).unwrap();
    let s = Suite::load(&path).unwrap();
    assert_eq!(target(&s, "a", Metric::Fid).0, 3.55);
}

#[test]
fn unknown_key_names_line_and_key() {
    let e = error_for(&GOOD.replace("checkpoint = \"w.pth\"", "chekpoint = \"w.pth\""));
    assert!(e.starts_with("s.toml:8:1: run[0].chekpoint: unknown field `chekpoint`, expected one of"), "{e}");
    let e = error_for(&GOOD.replace("[run.published]", "[run.sampler]\ncfgg = 1.5\n[run.published]"));
    assert!(e.starts_with("s.toml:16:1: run[0].sampler.cfgg: unknown field `cfgg`"), "{e}");
}

#[test]
fn wrong_type_names_line_and_key() {
    let e = error_for(&GOOD.replace("batch = 2", "batch = \"two\""));
    assert!(e.starts_with("s.toml:11:9: run[0].batch: invalid type: string \"two\", expected u32"), "{e}");
    let e = error_for(&GOOD.replace("family = \"var\"", "family = \"vat\""));
    assert!(e.starts_with("s.toml:6:10: run[0].family: unknown variant `vat`"), "{e}");
    let e = error_for(&GOOD.replace("metrics = [\"fid\", \"is\"]", "metrics = [\"fid\", \"fidd\"]"));
    assert!(e.starts_with("s.toml:13:19: run[0].metrics[1]: unknown variant `fidd`"), "{e}");
}

/// `GOOD` with `edit` applied, loaded (it must be valid).
fn load_ok(text: &str) -> Suite {
    let dir = tempfile::tempdir().unwrap();
    let path = scratch(dir.path());
    std::fs::write(&path, text).unwrap();
    Suite::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

fn conventions(s: &Suite) -> Vec<Convention> {
    s.runs.iter().map(|r| r.convention().expect("a generate run has a convention")).collect()
}

#[test]
fn metric_convention_is_validated_at_load_and_recorded() {
    // A wrong value is refused at load, naming file:line:column, the key and what is accepted.
    let e = error_for(&GOOD.replace("seeds = [0]", "seeds = [0]\nconvention = \"tf\""));
    assert_eq!(e, "s.toml:13:14: run[0].convention: unknown convention 'tf': expected adm, torch-fidelity or clean-fid");
    let e = error_for(&GOOD.replace("seeds = [0]", "seeds = [0]\nconvention = 3"));
    assert!(e.starts_with("s.toml:13:14: run[0].convention: invalid type: integer `3`, expected a string"), "{e}");
    // `evaluator` (the key's former name) and `convention` together are one key given twice.
    let e = error_for(&GOOD.replace("seeds = [0]", "seeds = [0]\nconvention = \"adm\"\nevaluator = \"adm\""));
    assert!(e.contains("run[0]") && e.contains("duplicate field `convention`"), "{e}");

    // Default adm; a run's own value; [defaults]; the former key name and spelling.
    assert_eq!(conventions(&load_ok(GOOD)), [Convention::Adm]);
    let s = load_ok(&GOOD.replace("seeds = [0]", "seeds = [0]\nconvention = \"torch-fidelity\""));
    assert_eq!(conventions(&s), [Convention::TorchFidelity]);
    // Recorded with the run's settings (results.json / manifest): the tool's own spelling.
    assert_eq!(s.runs[0].settings_json()["convention"], "torch-fidelity");
    let s = load_ok(&GOOD.replace("[[run]]", "[defaults]\nconvention = \"clean-fid\"\n\n[[run]]"));
    assert_eq!(conventions(&s), [Convention::CleanFid]);
    let s = load_ok(&GOOD.replace("seeds = [0]", "seeds = [0]\nevaluator = \"torch_fidelity\""));
    assert_eq!(conventions(&s), [Convention::TorchFidelity]);
    // `genbench suite --convention` overrides the file.
    assert_eq!(conventions(&s.with_convention(Convention::Adm)), [Convention::Adm]);

    // Features depend on the convention through its preprocessing only (the feature cache keys
    // by content, weights and preprocessing): torch-fidelity's is ADM's, clean-fid's is not.
    let preprocess = |c: &str| {
        let s = load_ok(&GOOD.replace("seeds = [0]", &format!("seeds = [0]\nconvention = \"{c}\"")));
        conventions(&s)[0].preprocess()
    };
    assert_eq!(preprocess("adm"), preprocess("torch-fidelity"));
    assert_ne!(preprocess("adm"), preprocess("clean-fid"));
}

#[test]
fn missing_field_names_the_run() {
    let e = error_for(&GOOD.replace("model = \"var-d16\"\n", ""));
    assert_eq!(e, "s.toml:4:1: run[0]: missing `model` (set it in the run or in [defaults])");
    let e = error_for(&GOOD.replace("reference = \"ref.npz\"\n", ""));
    assert_eq!(e, "s.toml:4:1: run[0]: missing `reference` (the reference batch `fid` compares against)");
    let e = error_for("[suite]\nname = \"t\"\n");
    assert_eq!(e, "s.toml:1:1: suite: the suite has no [[run]]");
}

#[test]
fn paper_references_that_do_not_resolve() {
    let e = error_for(&GOOD.replace("version = \"v1\"", "version = \"v3\""));
    assert_eq!(
        e,
        "s.toml:17:1: run[0].published.row: no row of t1.csv has model = \"VAR-d16\", version = \"v3\"; `model` takes the values: \"VAR-d16\", \"ADM\""
    );
    let e = error_for(&GOOD.replace(", version = \"v1\"", ""));
    assert!(e.starts_with("s.toml:17:1: run[0].published.row: 2 rows of t1.csv (lines 2, 3) have model = \"VAR-d16\"; add a column to the key, e.g. `version`"), "{e}");
    let e = error_for(&GOOD.replace("table = \"t1\"", "table = \"t9\""));
    assert!(e.starts_with("s.toml:16:1: run[0].published.table: no paper table `t9` in "), "{e}");
    assert!(e.ends_with("papers; available: t1"), "{e}");
}

#[test]
fn published_values_must_be_numbers_and_measured() {
    let e = error_for(
        &GOOD.replace("model = \"VAR-d16\", version = \"v1\"", "model = \"ADM\"").replace("fid = { abs = 0.3 }", "is = { rel = 0.05 }"),
    );
    assert_eq!(e, "s.toml:18:15: run[0].published.tolerance.is: t1.csv line 4, column `is` holds `-`, which is not a number");
    let e = error_for(&GOOD.replace("fid = { abs = 0.3 }", "kid = { abs = 0.3 }"));
    assert_eq!(e, "s.toml:18:15: run[0].published.tolerance.kid: `kid` has a tolerance but is not in this run's metrics");
    let e = error_for(&GOOD.replace("fid = { abs = 0.3 }", "fid = { abs = 0.3, rel = 0.1 }"));
    assert_eq!(e, "s.toml:18:15: run[0].published.tolerance.fid: give exactly one of `abs`, `rel` or `factor`");
}

#[test]
fn several_problems_are_reported_together_in_line_order() {
    let e = error_for(&GOOD.replace("resolution = 256", "resolution = 250").replace("seeds = [0]", "seeds = []"));
    let lines: Vec<&str> = e.lines().collect();
    assert_eq!(lines.len(), 2, "{e}");
    assert!(lines[0].starts_with("s.toml:9:1: run[0].resolution: 250 is not a positive multiple of 16"), "{e}");
    assert!(lines[1].starts_with("s.toml:12:1: run[0].seeds: needs at least one seed"), "{e}");
}

#[test]
fn relative_runs_must_point_at_a_run_measuring_the_base() {
    let base = r#"[suite]
name = "t"
[defaults]
kind = "profile"
family = "var"
model = "var-d16"
random_weights = true
resolution = 256
batch = 1
[[run]]
id = "base"
metrics = ["gflop_per_image"]
[[run]]
id = "rel"
metrics = ["sec_per_image", "rel_time"]
relative_to = "base"
"#;
    let e = error_for(base);
    assert_eq!(e, "s.toml:16:1: run[1].relative_to: run `base` does not measure `sec_per_image`, which this run divides by");
    let e = error_for(&base.replace("relative_to = \"base\"", "relative_to = \"bse\""));
    assert_eq!(e, "s.toml:16:1: run[1].relative_to: no run has id `bse`; the runs are: base, rel");
    let e = error_for(&base.replace("relative_to = \"base\"\n", ""));
    assert_eq!(e, "s.toml:15:1: run[1].metrics: `rel_time` needs `relative_to` = the id of the run it is relative to");
    let e = error_for(&base.replace("id = \"rel\"", "id = \"base\""));
    assert!(e.contains("s.toml:14:1: run[1].id: id `base` is used by an earlier run"), "{e}");
}

#[test]
fn env_syntax_errors_are_load_errors() {
    let e = error_for(&GOOD.replace("checkpoint = \"w.pth\"", "checkpoint = \"${W/w.pth\""));
    assert_eq!(e, "s.toml:8:1: run[0].checkpoint: `${W/w.pth`: unterminated `${`");
}

#[test]
fn toml_syntax_errors_have_a_line() {
    let e = error_for(&GOOD.replace("batch = 2", "batch = = 2"));
    assert!(e.starts_with("s.toml:11:9: "), "{e}");
}
