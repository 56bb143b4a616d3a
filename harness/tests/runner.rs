//! The suite runner end to end on fixture-size models: results files, caching across re-runs,
//! skipped runs with their reason, `--only`, and the dry-run plan.

use std::path::{Path, PathBuf};

use genbench_harness::records::RunStatus;
use genbench_harness::runner::{format_plan, plan, run_suite, RunnerOptions};
use genbench_harness::suite::{Metric, Suite};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

/// A suite of the tiny VAR fixture: a profile with a two-point resolution sweep, a generate
/// run with the fixture's real (tiny) weights scored against a synthetic reference batch, and a
/// generate run whose checkpoint directory variable is unset. `metrics` are the generate run's.
fn tiny_suite(dir: &Path, metrics: &str) -> Suite {
    let var = fixtures().join("models/var");
    // 8 reference images of 64 px: any fixed images will do, the test checks caching, not FID.
    let reference = dir.join("reference.npz");
    if !reference.exists() {
        let px: Vec<u8> = (0..8 * 64 * 64 * 3).map(|i| ((i * 2_654_435_761usize) >> 13) as u8).collect();
        genbench_metrics::npz::write_images_npz(&reference, &px, 8, 64, 64, &[]).unwrap();
    }
    let text = format!(
        r#"
[suite]
name = "tiny"
description = "fixture-size runner test"

[defaults]
family = "var"
model = "{config}"
resolution = 64
dtype = "f32"
seeds = [3]

[[run]]
id = "profile-var"
kind = "profile"
random_weights = true
metrics = ["sec_per_image", "gflop_per_image"]
profile = {{ warmup = 0, repeats = 1, batches = [1, 2], resolutions = [32, 64], record_steps = true }}

[[run]]
id = "generate-var"
kind = "generate"
checkpoint = "{ckpt}"
tokenizer = "{vae}"
samples = 4
batch = 2
reference = "reference.npz"
metrics = {metrics}

[[run]]
id = "missing-checkpoint"
kind = "generate"
checkpoint = "${{GENBENCH_TEST_CKPT_DIR}}/var_d16.pth"
tokenizer = "${{GENBENCH_TEST_CKPT_DIR}}/vae_ch160v4096z32.pth"
samples = 4
batch = 2
reference = "reference.npz"
metrics = ["fid"]
"#,
        config = var.join("config.json").display(),
        ckpt = var.join("var.pth").display(),
        vae = var.join("vae.pth").display(),
    );
    let path = dir.join("tiny.toml");
    std::fs::write(&path, &text).unwrap();
    // No environment: `${GENBENCH_TEST_CKPT_DIR}` is unset whatever the machine has.
    Suite::parse(&path, &text, &|_| None).unwrap()
}

fn options(dir: &Path, only: &[&str]) -> RunnerOptions {
    RunnerOptions {
        results_root: dir.join("results"),
        only: only.iter().map(|s| s.to_string()).collect(),
        inception_cache: None,
        inception_weights: None,
        verbose: false,
        device: genbench_runtime::DeviceChoice::Cpu,
        dtype: None,
    }
}

#[test]
fn tiny_suite_runs_caches_and_skips() {
    let tmp = tempfile::tempdir().unwrap();
    let suite = tiny_suite(tmp.path(), r#"["fid"]"#);
    let first = run_suite(&suite, &options(tmp.path(), &[])).unwrap();

    // Every run is accounted for, in suite order.
    let ids: Vec<&str> = first.results.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["profile-var", "generate-var", "missing-checkpoint"]);
    for r in &first.results[..2] {
        assert_eq!(r.status, RunStatus::Completed, "{}: {:?}", r.id, r.status);
    }
    let RunStatus::Skipped { reason } = &first.results[2].status else {
        panic!("missing checkpoint not skipped: {:?}", first.results[2].status)
    };
    assert!(reason.contains("GENBENCH_TEST_CKPT_DIR"), "{reason}");

    // Profile: both resolutions and batches measured; FLOPs grow with resolution.
    assert_eq!(first.profile.len(), 4);
    let gflop = |px| first.profile.iter().find(|p| p.resolution == px).unwrap().gflop_per_image;
    assert!(gflop(64) > gflop(32), "{} vs {}", gflop(64), gflop(32));
    let profile = &first.results[0];
    assert!(profile.metrics[&Metric::SecPerImage] > 0.0);
    assert!(!profile.steps.is_empty());
    let fid = first.results[1].metrics[&Metric::Fid];
    assert!(fid.is_finite() && fid > 0.0, "{fid}");

    // First run: everything computed.
    assert_eq!(first.cache.sample_batches_generated, 2);
    assert_eq!(first.cache.sample_batches_reused, 0);
    assert_eq!(first.cache.feature_sets_extracted, 2, "samples + reference");

    // Result files.
    for f in ["manifest.json", "metrics.csv", "steps.csv", "profile.csv", "report.md", "plots/step_time.png", "plots/resolution.png"] {
        assert!(first.dir.join(f).is_file(), "{f} missing in {}", first.dir.display());
    }
    let report = std::fs::read_to_string(first.dir.join("report.md")).unwrap();
    assert!(report.contains("Skipped:") && report.contains("GENBENCH_TEST_CKPT_DIR"), "{report}");
    let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(first.dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["runs"][1]["weight_hashes"]["checkpoint"].as_str().unwrap().len(), 64);
    let steps = std::fs::read_to_string(first.dir.join("steps.csv")).unwrap();
    assert!(steps.lines().count() > 4, "{steps}");

    // Re-run with one more metric, only the generate run: samples and features come from the
    // cache, and the new metric is computed from the cached features.
    std::thread::sleep(std::time::Duration::from_millis(1100)); // a new timestamped directory
    let suite = tiny_suite(tmp.path(), r#"["fid", "kid"]"#);
    let second = run_suite(&suite, &options(tmp.path(), &["generate-var"])).unwrap();
    assert_eq!(second.results.len(), 1, "--only selects");
    assert_eq!(second.cache.sample_batches_generated, 0, "no sampling redone");
    assert_eq!(second.cache.sample_batches_reused, 2);
    assert_eq!(second.cache.feature_sets_extracted, 0, "no features re-extracted");
    assert_eq!(second.cache.feature_sets_reused, 2);
    let r = &second.results[0];
    assert_eq!(r.metrics[&Metric::Fid], fid, "same cached samples, same FID");
    assert!(r.metrics.contains_key(&Metric::Kid));
    assert_ne!(second.dir, first.dir);

    // Unknown ids are refused with the list of ids.
    let err = run_suite(&suite, &options(tmp.path(), &["nope"])).unwrap_err().to_string();
    assert!(err.contains("nope") && err.contains("generate-var"), "{err}");
}

#[test]
fn dry_run_plans_with_flops_and_skips() {
    let tmp = tempfile::tempdir().unwrap();
    let suite = tiny_suite(tmp.path(), r#"["fid"]"#);
    let rows = plan(&suite, &[], 10.0, &candle_core::Device::Cpu, None).unwrap();
    assert_eq!(rows.len(), 3);
    let profile = &rows[0];
    // 2 resolutions x (1 + 2) images x 1 repeat.
    assert_eq!(profile.images, 6);
    let gflop = profile.gflop_per_image.unwrap();
    assert!(gflop > 0.0);
    // At 10 GFLOP/s the estimate is FLOPs / 10.
    let total = profile.tflop_total.unwrap() * 1e3;
    assert!((profile.estimated_seconds.unwrap() - total / 10.0).abs() < 1e-9 * total.max(1.0));
    assert!(rows[2].note.starts_with("skipped:"), "{}", rows[2].note);
    let text = format_plan(&suite, &rows, 10.0);
    assert!(text.contains("profile-var") && text.contains("GFLOP/s"), "{text}");
}

#[test]
fn quickstart_ratios_and_exponents_from_profile_points() {
    use genbench_harness::quickstart::{cost_exponents, speed_ratios};
    use genbench_harness::runner::ProfilePoint;
    let point = |run: &str, family: &str, model: &str, px: u32, secs: f64, gflop: f64| ProfilePoint {
        run: run.into(),
        family: family.into(),
        model: model.into(),
        resolution: px,
        batch: 1,
        sec_per_image: secs + 1.0,
        gflop_per_image: gflop + 10.0,
        steps_per_image: 1,
        sampling_sec_per_image: secs,
        sampling_gflop_per_image: gflop,
    };
    // Sampling cost exactly proportional to px^4 (VAR) and px^6 (raster AR): the fits recover them.
    let mut points = Vec::new();
    for px in [64u32, 128, 256] {
        let r = f64::from(px) / 64.0;
        points.push(point("res-var", "var", "v", px, 0.01 * r.powi(4), 2.0 * r.powi(4)));
        points.push(point("res-ar", "raster_ar", "a", px, 0.02 * r.powi(6), 3.0 * r.powi(6)));
    }
    let fits = cost_exponents(&points);
    assert_eq!(fits.len(), 2);
    assert!((fits[0].time_fit.alpha - 4.0).abs() < 1e-9 && (fits[0].flop_fit.alpha - 4.0).abs() < 1e-9);
    assert!((fits[1].time_fit.alpha - 6.0).abs() < 1e-9);
    // Two resolutions give no exponent.
    assert!(cost_exponents(&points[..4]).is_empty());

    // Speed-ups are relative to the raster AR model at the same batch and resolution.
    let at_64: Vec<&ProfilePoint> = points.iter().filter(|p| p.resolution == 64).collect();
    let (baseline, ratios) = speed_ratios(&at_64);
    assert_eq!(baseline, "a");
    let var = ratios.iter().find(|r| r.model == "v").unwrap();
    assert!((var.sampling_speedup - 2.0).abs() < 1e-12, "{}", var.sampling_speedup);
    assert!((var.speedup - 1.02 / 1.01).abs() < 1e-12);
}

/// Every seed of a list is sampled and scored: the result is their mean, with the spread and each
/// seed's evaluation (diagnostics as `genbench eval` reports them). A run the runner cannot
/// complete (torch-fidelity's KID on fewer samples than its subset size) is refused with the
/// run named, by the runner and by the dry-run plan alike.
#[test]
fn all_seeds_are_scored_and_dtype_refusals_name_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    tiny_suite(tmp.path(), r#"["fid"]"#); // writes reference.npz
    let var = fixtures().join("models/var");
    let text = format!(
        r#"
[suite]
name = "seeds"

[defaults]
family = "var"
model = "{config}"
resolution = 64
checkpoint = "{ckpt}"
tokenizer = "{vae}"
samples = 4
batch = 2
reference = "reference.npz"
metrics = ["fid", "is"]

[[run]]
id = "two-seeds"
seeds = [3, 4]

[[run]]
id = "torch-fidelity-kid"
seeds = [3]
convention = "torch-fidelity"
metrics = ["kid"]

[[run]]
id = "bf16-on-cpu"
seeds = [3]
dtype = "bf16"
metrics = ["fid"]
"#,
        config = var.join("config.json").display(),
        ckpt = var.join("var.pth").display(),
        vae = var.join("vae.pth").display(),
    );
    let path = tmp.path().join("seeds.toml");
    std::fs::write(&path, &text).unwrap();
    let suite = Suite::parse(&path, &text, &|_| None).unwrap();

    let rows = plan(&suite, &[], 10.0, &candle_core::Device::Cpu, None).unwrap();
    assert!(rows[0].note.is_empty() && rows[0].refusal.is_none(), "{rows:?}");
    let refused = rows[1].refusal.as_deref().unwrap_or_default();
    // torch-fidelity's KID needs 1000 samples per subset: refused before anything is sampled.
    assert!(refused.contains("torch-fidelity") && refused.contains("exactly 1000 samples") && refused.contains("makes 4"), "{refused}");
    // The runtime's one dtype table allows bf16 on the CPU (candle runs it; see
    // harness/tests/half_precision.rs), so that run is planned, not refused.
    assert!(rows[2].refusal.is_none(), "{rows:?}");
    let text = format_plan(&suite, &rows, 10.0);
    assert!(text.contains("REFUSED: convention `torch-fidelity`") && text.contains("1 run(s) would be refused"), "{text}");

    let out = run_suite(&suite, &options(tmp.path(), &[])).unwrap();
    let two = &out.results[0];
    assert_eq!(two.status, RunStatus::Completed, "{:?}", two.status);
    assert_eq!(out.cache.sample_batches_generated, 6, "2 batches for each of 2 seeds, and 2 for the bf16 run");
    assert_eq!(two.evaluations.len(), 2);
    let per_seed: Vec<f64> = two.evaluations.iter().map(|e| e.values[&Metric::Fid]).collect();
    assert_ne!(per_seed[0], per_seed[1], "different seeds, different samples");
    assert!((two.metrics[&Metric::Fid] - (per_seed[0] + per_seed[1]) / 2.0).abs() < 1e-9);
    let sd = (per_seed[0] - per_seed[1]).abs() / 2f64.sqrt();
    assert!((two.spread[&Metric::Fid] - sd).abs() < 1e-9);
    // The diagnostics are eval's: the FID's own record, rank-deficiency warnings for 4 rows.
    assert!(two.evaluations[0].diagnostics["fid"]["trace_sqrt"].is_number());
    assert!(two.warnings.iter().any(|w| w.contains("rank-deficient")), "{:?}", two.warnings);
    // IS: measured when the weights carry the classifier, else unavailable with the reason,
    // and the run keeps its FID either way.
    assert!(two.metrics.contains_key(&Metric::Is) || two.unavailable[&Metric::Is].contains("classifier"), "{:?}", two.unavailable);
    let report = std::fs::read_to_string(out.dir.join("report.md")).unwrap();
    assert!(report.contains("Mean over 2 seeds (3, 4)"), "{report}");
    let evaluations: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.dir.join("evaluations.json")).unwrap()).unwrap();
    assert_eq!(evaluations["runs"][0]["seeds"].as_array().unwrap().len(), 2);

    let RunStatus::Failed { error } = &out.results[1].status else { panic!("{:?}", out.results[1].status) };
    assert!(error.contains("exactly 1000 samples"), "{error}");
    assert_eq!(out.results[2].status, RunStatus::Completed, "bf16 on the CPU runs: {:?}", out.results[2].status);
}

/// The fixture standing in for each family's published checkpoints: (config, checkpoint,
/// tokenizer) under `tests/fixtures/models/`. Every fixture generates 64 px images.
fn fixture_for(family: &str) -> (PathBuf, PathBuf, PathBuf) {
    let (dir, ckpt, vae) = match family {
        "var" => ("var", "var.pth", "vae.pth"),
        "raster_ar" => ("ar_llamagen", "c2i_tiny.pt", "vq_ds16_c2i_tiny.pt"),
        "mar" => ("mar", "checkpoint-last.pth", "kl16.ckpt"),
        "auto_nat" => ("autonat", "nnet_ema.pth", "vqgan_jax_strongaug.ckpt"),
        other => panic!("no fixture for family {other}"),
    };
    let d = fixtures().join("models").join(dir);
    (d.join("config.json"), d.join(ckpt), d.join(vae))
}

/// A shipped paper suite with its published models mapped onto the tiny fixtures: the same runs,
/// sampler recipes, metrics, published rows and tolerances, but each model is its family's
/// fixture (64 px), 4 samples in one batch, scored against `reference`; a suite that resizes
/// before scoring (`eval_resolution`) resizes to 32 px.
fn on_fixtures(name: &str, reference: &Path, dir: &Path) -> Suite {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../suites").join(name);
    let mut doc: toml_edit::DocumentMut = std::fs::read_to_string(&shipped).unwrap().parse().unwrap();
    let defaults_family = doc.get("defaults").and_then(|d| d.get("family")).and_then(|f| f.as_str()).map(str::to_owned);
    // The paper tables stay the shipped ones.
    doc["suite"]["papers"] = toml_edit::value(shipped.parent().unwrap().join("papers").display().to_string());
    let resizes = doc.get("defaults").and_then(|d| d.get("eval_resolution")).is_some();
    if let Some(d) = doc.get_mut("defaults").and_then(|d| d.as_table_mut()) {
        d.remove("tokenizer");
        d.remove("eval_resolution");
        // MAR reveals at least one token per step: its step count is capped by the fixture's
        // token count (from the fixture's own config).
        if defaults_family.as_deref() == Some("mar") {
            let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture_for("mar").0).unwrap()).unwrap();
            let tokens = config["generator"]["derived"]["seq_len"].as_i64().unwrap();
            d["sampler"]["num_iter"] = toml_edit::value(tokens);
        }
    }
    let runs = doc["run"].as_array_of_tables_mut().unwrap();
    for (i, run) in runs.iter_mut().enumerate() {
        // Runs of one family map onto the same fixture; a seed per run keeps their samples apart
        // (identical settings would share the sample cache, as they should).
        run["seeds"] = toml_edit::value(toml_edit::Array::from_iter([i as i64]));
        let family = run.get("family").and_then(|f| f.as_str()).map(str::to_owned).or(defaults_family.clone()).unwrap();
        let (config, ckpt, vae) = fixture_for(&family);
        println!("{name}: {} `{}` -> {}", run["id"], run.get("model").and_then(|m| m.as_str()).unwrap_or("?"), config.display());
        run["model"] = toml_edit::value(config.display().to_string());
        run["checkpoint"] = toml_edit::value(ckpt.display().to_string());
        run["tokenizer"] = toml_edit::value(vae.display().to_string());
        run["resolution"] = toml_edit::value(64);
        run["samples"] = toml_edit::value(4);
        run["batch"] = toml_edit::value(4);
        run["reference"] = toml_edit::value(reference.display().to_string());
        if resizes || run.contains_key("eval_resolution") {
            run["eval_resolution"] = toml_edit::value(32);
        }
    }
    let path = dir.join(name);
    std::fs::write(&path, doc.to_string()).unwrap();
    let text = doc.to_string();
    Suite::parse(&path, &text, &|_| None).unwrap_or_else(|e| panic!("{e}"))
}

/// `var_table1`, `llamagen_c2i`, `mar_system` and `autonat_in256` end to end on the tiny fixtures
/// (published names mapped to fixture checkpoints): every run completes, and metrics.csv,
/// report.md, evaluations.json and the plots are written with finite values for every run.
#[test]
fn paper_suites_run_end_to_end_on_fixtures() {
    let tmp = tempfile::tempdir().unwrap();
    // 8 reference images of 64 px (any fixed images do: the test checks the pipeline, not FID).
    let reference = tmp.path().join("reference.npz");
    let px: Vec<u8> = (0..8 * 64 * 64 * 3).map(|i| ((i * 2_654_435_761usize) >> 13) as u8).collect();
    genbench_metrics::npz::write_images_npz(&reference, &px, 8, 64, 64, &[]).unwrap();
    for name in ["var_table1.toml", "llamagen_c2i.toml", "mar_system.toml", "autonat_in256.toml"] {
        let suite = on_fixtures(name, &reference, tmp.path());
        let out = run_suite(&suite, &options(tmp.path(), &[])).unwrap();
        assert_eq!(out.results.len(), suite.runs.len());
        for r in &out.results {
            assert_eq!(r.status, RunStatus::Completed, "{name} {}: {:?}", r.id, r.status);
            for m in [Metric::Fid, Metric::Precision, Metric::Recall, Metric::SecPerImage, Metric::GflopPerImage] {
                let v = r.metrics.get(&m).copied().unwrap_or(f64::NAN);
                assert!(v.is_finite() && v >= 0.0, "{name} {}: {m} = {v}", r.id);
            }
            assert!(r.metrics.contains_key(&Metric::Is) || r.unavailable.contains_key(&Metric::Is), "{name} {}", r.id);
        }
        for f in ["metrics.csv", "report.md", "evaluations.json", "manifest.json", "plots/step_time.png", "plots/step_gflop.png"] {
            assert!(out.dir.join(f).is_file(), "{name}: {f} missing in {}", out.dir.display());
        }
        let csv = std::fs::read_to_string(out.dir.join("metrics.csv")).unwrap();
        for run in &suite.runs {
            assert!(
                csv.lines().any(|l| l.starts_with(&format!("{},", run.id)) && l.contains(",completed,fid,")),
                "{name}: {}\n{csv}",
                run.id
            );
        }
        let report = std::fs::read_to_string(out.dir.join("report.md")).unwrap();
        assert!(report.contains("## Ours vs published") && report.contains("| fid |"), "{report}");
    }
}

/// `convention` decides how a suite scores: torch-fidelity's IS (rows shuffled by
/// `RandomState(2020)`, 10 splits) and its refusal of KID below 1000 rows, ADM's IS (contiguous
/// splits) and KID subsets shrunk to the rows there are; each run records its convention. The
/// cached default weights lack the 1008-way classifier, so the test adds a seeded random one to
/// them and passes the file as `inception_weights` (the IS arithmetic only needs logits; the
/// formulas themselves are checked against torch-fidelity in metrics/tests/conventions.rs).
#[test]
fn metric_convention_selects_is_splits_and_kid_subsets() {
    use candle_core::{Device, Tensor};
    use genbench_harness::runner::{inception_extractor, suite_feature_cache};
    use genbench_harness::suite::Convention;
    use genbench_metrics::inception::{default_cache_dir, WeightsSource, LOGITS_DIM, POOL3_DIM};
    use genbench_runtime::RandomSource;

    let tmp = tempfile::tempdir().unwrap();
    let mut tensors: std::collections::HashMap<String, Tensor> =
        WeightsSource::Default.resolve(&default_cache_dir()).expect("the default Inception weights").tensors.into_iter().collect();
    let fc: Vec<f32> = genbench_runtime::SeededSource::new(12).normal(LOGITS_DIM * POOL3_DIM).unwrap().iter().map(|v| v * 0.05).collect();
    tensors.insert("output.weight".into(), Tensor::from_vec(fc, (LOGITS_DIM, POOL3_DIM), &Device::Cpu).unwrap());
    let weights = tmp.path().join("inception_with_classifier.safetensors");
    candle_core::safetensors::save(&tensors, &weights).unwrap();
    drop(tensors);

    let groups = ["photos128", "photos299", "photos512", "gray64"];
    let files: Vec<PathBuf> = groups.iter().map(|g| fixtures().join(format!("inception/{g}_images.npy"))).collect();
    let images: Vec<String> = files.iter().map(|f| format!("\"{}\"", f.display())).collect();
    let split_at = 18;
    let text = format!(
        r#"
[suite]
name = "conventions"

[defaults]
kind = "metric_check"
images = [{images}]
split_at = {split_at}

[[run]]
id = "adm"
metrics = ["is", "kid"]

[[run]]
id = "torch-fidelity"
convention = "torch-fidelity"
metrics = ["is"]

[[run]]
id = "torch-fidelity-kid"
convention = "torch-fidelity"
metrics = ["kid"]
"#,
        images = images.join(", ")
    );
    let path = tmp.path().join("conventions.toml");
    std::fs::write(&path, &text).unwrap();
    let suite = Suite::parse(&path, &text, &|_| None).unwrap();
    let opts = RunnerOptions { inception_weights: Some(weights.clone()), ..options(tmp.path(), &[]) };
    let out = run_suite(&suite, &opts).unwrap();

    // The logits the runner scored: the same extractor and feature cache (every batch a hit).
    let extractor = inception_extractor(Convention::Adm.preprocess(), None, Some(&weights), &Device::Cpu).unwrap();
    let cache = suite_feature_cache(&tmp.path().join("results/conventions/cache"));
    let mut logits = Vec::new();
    for f in &files {
        let (px, info) = genbench_metrics::npz::read_npy_images(f).unwrap();
        let (features, hit) = cache.extract(&extractor, &px, info.n, info.h, info.w).unwrap();
        assert!(hit, "{}: the runner cached these features", f.display());
        logits.extend(features.logits.expect("weights with the classifier give logits"));
    }
    let samples = &logits[split_at * LOGITS_DIM..];
    let is = |c: Convention| c.inception_score(samples, LOGITS_DIM).unwrap().mean;
    let (adm_is, tf_is) = (is(Convention::Adm), is(Convention::TorchFidelity));
    assert!((adm_is - tf_is).abs() > 1e-3, "the two conventions must differ on these rows: {adm_is} vs {tf_is}");

    let [adm, tf, tf_kid] = &out.results[..] else { panic!("{:?}", out.results) };
    assert_eq!(adm.status, RunStatus::Completed, "{:?}", adm.status);
    assert_eq!(tf.status, RunStatus::Completed, "{:?}", tf.status);
    // Same function, same logits: equal to the last bit up to summation order (none here).
    assert!((adm.metrics[&Metric::Is] - adm_is).abs() <= 1e-12 * adm_is, "{} vs {adm_is}", adm.metrics[&Metric::Is]);
    assert!((tf.metrics[&Metric::Is] - tf_is).abs() <= 1e-12 * tf_is, "{} vs {tf_is}", tf.metrics[&Metric::Is]);
    assert_eq!(tf.evaluations[0].diagnostics["inception_score"]["splits"]["rule"], "shuffled");
    assert_eq!(adm.evaluations[0].diagnostics["inception_score"]["splits"]["rule"], "contiguous");
    // Recorded with each run's settings (results.json, manifest).
    assert_eq!(tf.settings["task"]["convention"], "torch-fidelity");
    assert_eq!(tf.settings["is_splits"]["rule"], "shuffled");
    assert_eq!(adm.settings["task"]["convention"], "adm");
    // KID: ADM's subsets shrink to the 18 rows; torch-fidelity refuses, with its message.
    assert_eq!(adm.evaluations[0].diagnostics["kid"]["subset_size"].as_u64(), Some(split_at as u64));
    assert_eq!(adm.settings["kid"]["rule"], "shrink");
    let RunStatus::Failed { error } = &tf_kid.status else { panic!("{:?}", tf_kid.status) };
    assert!(error.contains("subset size 1000") && error.contains(&format!("samples: {split_at}")), "{error}");
}
