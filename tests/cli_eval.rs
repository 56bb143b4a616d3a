//! `genbench eval` / `genbench stats` from the outside: every bad input gives a clear message
//! naming the file, a non-zero exit, no panic and no result file; plus end-to-end runs on tiny
//! npz batches built from the Inception fixture images (these load the FID Inception weights,
//! fetched once via pip into the genbench cache).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use genbench_metrics::fid::frechet_distance;
use genbench_metrics::npz::{read_npy_f32, read_npy_images, write_images_npz, write_npz, NpyArray};
use genbench_metrics::stats::FeatureStats;
use serde_json::Value;

fn fixture_dir() -> PathBuf {
    let dir = std::env::var_os("GENBENCH_FIXTURE_INCEPTION")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/inception"));
    println!("inception fixture folder: {}", dir.display());
    dir
}

fn genbench(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_genbench")).args(args).output().expect("run genbench");
    println!("stdout: {}", String::from_utf8_lossy(&out.stdout));
    println!("stderr: {}", String::from_utf8_lossy(&out.stderr));
    out
}

fn arg(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Asserts a clean failure: non-zero exit, no panic, stderr mentions every needle, and the
/// requested result file does not exist.
fn assert_clean_failure(out: &Output, needles: &[&str], result_file: &Path) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "stderr lacks {needle:?}: {stderr}");
    }
    assert!(!result_file.exists(), "{} must not exist after a failure", result_file.display());
}

/// A tiny valid sample batch: the fixture's grey 64x64 images.
fn small_samples(dir: &Path) -> PathBuf {
    let (images, info) = read_npy_images(&fixture_dir().join("gray64_images.npy")).unwrap();
    let path = dir.join("samples.npz");
    write_images_npz(&path, &images, info.n, info.h, info.w, &[]).unwrap();
    path
}

/// Runs `eval` expecting failure with the given samples/reference.
fn eval_fails(samples: &Path, reference: &Path, extra: &[&str], needles: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let out_file = tmp.path().join("result.json");
    let mut args = vec!["eval", "--samples", arg(samples), "--ref", arg(reference), "--out", arg(&out_file)];
    args.extend_from_slice(extra);
    assert_clean_failure(&genbench(&args), needles, &out_file);
}

#[test]
fn missing_samples_file() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope.npz");
    eval_fails(&missing, &missing, &[], &["nope.npz", "not found"]);
}

#[test]
fn missing_reference_file() {
    let tmp = tempfile::tempdir().unwrap();
    let samples = small_samples(tmp.path());
    eval_fails(&samples, &tmp.path().join("ref_missing.npz"), &[], &["ref_missing.npz", "not found"]);
}

#[test]
fn corrupt_npz() {
    let tmp = tempfile::tempdir().unwrap();
    let corrupt = tmp.path().join("corrupt.npz");
    std::fs::write(&corrupt, b"this is not a zip archive at all").unwrap();
    eval_fails(&corrupt, &corrupt, &[], &["corrupt.npz", "not a readable .npz"]);
}

#[test]
fn float_images_are_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("float.npz");
    write_npz(&path, &[NpyArray::F32 { name: "arr_0", shape: &[2, 4, 4, 3], data: &[0.5; 96] }]).unwrap();
    eval_fails(&path, &path, &[], &["float.npz", "<f4", "uint8"]);
}

#[test]
fn single_channel_images_are_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("gray.npz");
    write_npz(&path, &[NpyArray::U8 { name: "arr_0", shape: &[2, 4, 4, 1], data: &[9; 32] }]).unwrap();
    eval_fails(&path, &path, &[], &["gray.npz", "[2, 4, 4, 1]", "[N, H, W, 3]"]);
}

#[test]
fn unreadable_image_in_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("imgs");
    std::fs::create_dir(&folder).unwrap();
    image::RgbImage::from_pixel(8, 8, image::Rgb([1, 2, 3])).save(folder.join("a.png")).unwrap();
    image::RgbImage::from_pixel(8, 8, image::Rgb([1, 2, 3])).save(folder.join("b.png")).unwrap();
    std::fs::write(folder.join("c.png"), b"not a png").unwrap();
    let reference = small_samples(tmp.path());
    eval_fails(&folder, &reference, &[], &["c.png"]);
}

#[test]
fn reference_statistics_with_other_feature_dims() {
    let tmp = tempfile::tempdir().unwrap();
    let samples = small_samples(tmp.path());
    let reference = tmp.path().join("ref64.npz");
    let sigma: Vec<f64> = (0..64 * 64).map(|i| if i % 65 == 0 { 1.0 } else { 0.0 }).collect();
    write_npz(
        &reference,
        &[NpyArray::F32 { name: "mu", shape: &[64], data: &[0.0; 64] }, NpyArray::F64 { name: "sigma", shape: &[64, 64], data: &sigma }],
    )
    .unwrap();
    eval_fails(&samples, &reference, &["--metrics", "fid"], &["ref64.npz", "64 dims", "2048", "differ"]);
}

#[test]
fn nan_in_reference_sigma() {
    let tmp = tempfile::tempdir().unwrap();
    let samples = small_samples(tmp.path());
    let reference = tmp.path().join("nan_ref.npz");
    let mut sigma = vec![0.0f64; 2048 * 2048];
    sigma[5] = f64::NAN;
    write_npz(
        &reference,
        &[
            NpyArray::F32 { name: "mu", shape: &[2048], data: &[0.0; 2048] },
            NpyArray::F64 { name: "sigma", shape: &[2048, 2048], data: &sigma },
        ],
    )
    .unwrap();
    eval_fails(&samples, &reference, &["--metrics", "fid"], &["nan_ref.npz", "sigma", "non-finite"]);
}

#[test]
fn fewer_than_two_samples() {
    let tmp = tempfile::tempdir().unwrap();
    let one = tmp.path().join("one.npz");
    write_images_npz(&one, &[7u8; 8 * 8 * 3], 1, 8, 8, &[]).unwrap();
    let reference = small_samples(tmp.path());
    eval_fails(&one, &reference, &[], &["one.npz", "at least 2"]);
    let out_file = tmp.path().join("stats.npz");
    assert_clean_failure(&genbench(&["stats", arg(&one), "--out", arg(&out_file)]), &["one.npz", "at least 2"], &out_file);
}

#[test]
fn unknown_metric() {
    let tmp = tempfile::tempdir().unwrap();
    let samples = small_samples(tmp.path());
    eval_fails(&samples, &samples, &["--metrics", "fid,lpips"], &["lpips"]);
}

#[test]
fn explicit_metric_the_reference_cannot_support() {
    // A statistics-only reference has no images, so precision/recall cannot be computed.
    let tmp = tempfile::tempdir().unwrap();
    let samples = small_samples(tmp.path());
    let reference = tmp.path().join("stats_only.npz");
    let sigma: Vec<f64> = (0..2048 * 2048).map(|i| if i % 2049 == 0 { 1.0 } else { 0.0 }).collect();
    write_npz(
        &reference,
        &[
            NpyArray::F32 { name: "mu", shape: &[2048], data: &[0.0; 2048] },
            NpyArray::F64 { name: "sigma", shape: &[2048, 2048], data: &sigma },
        ],
    )
    .unwrap();
    eval_fails(&samples, &reference, &["--metrics", "fid,pr"], &["stats_only.npz", "arr_0"]);
}

// ---------------------------------------------------------------------------------------------
// End to end (needs the Inception weights).

fn read_pool3(group: &str, rows: std::ops::Range<usize>) -> Vec<f32> {
    let (all, _) = read_npy_f32(&fixture_dir().join(format!("{group}_pool3.npy"))).unwrap();
    all[rows.start * 2048..rows.end * 2048].to_vec()
}

#[test]
fn end_to_end_eval_and_stats() {
    let tmp = tempfile::tempdir().unwrap();
    let (images, info) = read_npy_images(&fixture_dir().join("photos128_images.npy")).unwrap();
    let half = info.n / 2;
    let bytes = info.image_bytes();
    let samples = tmp.path().join("samples.npz");
    let reference = tmp.path().join("reference.npz");
    write_images_npz(&samples, &images[..half * bytes], half, info.h, info.w, &[]).unwrap();
    write_images_npz(&reference, &images[half * bytes..], info.n - half, info.h, info.w, &[]).unwrap();
    let result = tmp.path().join("result.json");
    let half_s = half.to_string();
    let out = genbench(&[
        "eval",
        "--samples",
        arg(&samples),
        "--ref",
        arg(&reference),
        "--metrics",
        "fid,sfid,is,pr,kid",
        "--device",
        "cpu",
        "--batch-size",
        &half_s,
        "--pr-precision",
        "f32",
        "--out",
        arg(&result),
    ]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("FID ") && stdout.contains("Precision ") && stdout.contains(&format!("N {half} vs {}", info.n - half)),
        "{stdout}"
    );
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&result).unwrap()).unwrap();

    // FID against the same arithmetic on the fixture's reference (PyTorch) pool3 features: the
    // network reproduces them to ~1e-4 relative; with 12 vs 12 rank-deficient statistics that
    // moves FID by well under 0.1 %.
    let expected = frechet_distance(
        &FeatureStats::from_features(&read_pool3("photos128", 0..half), 2048).unwrap(),
        &FeatureStats::from_features(&read_pool3("photos128", half..info.n), 2048).unwrap(),
    )
    .unwrap()
    .value;
    let fid = report["metrics"]["fid"]["value"].as_f64().unwrap();
    println!("FID from the CLI {fid}, from the fixture features {expected}");
    assert!((fid - expected).abs() < 1e-3 * expected, "{fid} vs {expected}");
    assert!(report["metrics"]["sfid"]["value"].as_f64().unwrap() > 0.0);
    let pr = &report["metrics"]["precision_recall"];
    for key in ["precision", "recall"] {
        let v = pr[key].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&v), "{key} {v}");
    }
    assert!(report["metrics"]["kid"]["mean"].as_f64().unwrap().is_finite());

    // IS: a number with the classifier, otherwise "unavailable" with the extractor's message.
    let is = &report["metrics"]["inception_score"];
    if report["weights"]["has_fc"].as_bool().unwrap() {
        assert!(is["mean"].as_f64().unwrap() >= 1.0);
    } else {
        assert_eq!(is["available"], Value::Bool(false));
        assert!(is["reason"].as_str().unwrap().contains("classifier"));
        assert!(is.get("mean").is_none());
        assert!(stdout.contains("IS unavailable"));
    }
    assert_eq!(report["samples"]["n"], half);
    assert_eq!(report["reference"]["images"]["n"], info.n - half);
    assert_eq!(report["weights"]["sha1"].as_str().unwrap().len(), 40);
    assert!(report["genbench_version"].is_string() && report["candle_version"].is_string());
    let warnings = report["warnings"].as_array().unwrap();
    assert!(warnings.iter().any(|w| w.as_str().unwrap().contains("rank-deficient")), "{warnings:?}");

    // `stats` then `eval` against the statistics file: the reference mu/sigma are used as they
    // are (ADM), so the samples against their own statistics give FID ~ 0. Not exactly 0: with
    // 12 samples the covariance has rank 11, and the ~2000 rounding-noise eigenvalues of S*S
    // (~1e-16 relative) contribute square roots of ~1e-8 each (~1e-6 in all); a full-rank set
    // gives < 1e-8 (golden_metrics::fid_identity_and_mean_shift_only).
    let stats_file = tmp.path().join("stats.npz");
    let out = genbench(&["stats", arg(&samples), "--out", arg(&stats_file), "--device", "cpu", "--batch-size", &half_s]);
    assert!(out.status.success());
    let self_result = tmp.path().join("self.json");
    let out = genbench(&[
        "eval",
        "--samples",
        arg(&samples),
        "--ref",
        arg(&stats_file),
        "--metrics",
        "fid,sfid",
        "--device",
        "cpu",
        "--batch-size",
        &half_s,
        "--out",
        arg(&self_result),
    ]);
    assert!(out.status.success());
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&self_result).unwrap()).unwrap();
    assert_eq!(report["reference"]["statistics_from_file"]["fid"], Value::Bool(true));
    for key in ["fid", "sfid"] {
        let v = report["metrics"][key]["value"].as_f64().unwrap();
        assert!(v.abs() < 1e-4, "{key} of a set against its own statistics: {v}");
    }
}

/// A metric-check suite over the Inception fixture images, checked against `golden` (a JSON
/// file with `fid`, `precision`, `recall`), plus a run whose images do not exist.
fn verdict_suite(dir: &Path, file: &str, golden: &Value) -> PathBuf {
    let fixtures = fixture_dir();
    let images: Vec<String> = ["photos128", "photos299", "photos512", "gray64"]
        .iter()
        .map(|g| format!("\"{}\"", fixtures.join(format!("{g}_images.npy")).display()))
        .collect();
    let golden_path = dir.join(format!("{file}.json"));
    std::fs::write(&golden_path, golden.to_string()).unwrap();
    let text = format!(
        r#"
[suite]
name = "verdicts"

[[run]]
id = "self-check"
kind = "metric_check"
images = [{images}]
split_at = 18
metrics = ["fid", "precision", "recall", "is"]
pr_distances = "f32"
[run.published]
json = "{golden}"
tolerance.fid = {{ abs = 1e-3, pointer = "/fid" }}
tolerance.precision = {{ abs = 1e-6, pointer = "/precision" }}
tolerance.recall = {{ abs = 1e-6, pointer = "/recall" }}

[[run]]
id = "missing-images"
kind = "metric_check"
images = ["{missing}"]
split_at = 1
metrics = ["fid"]
"#,
        images = images.join(", "),
        golden = golden_path.display(),
        missing = dir.join("nowhere/x_images.npy").display(),
    );
    let path = dir.join(format!("{file}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn suite_exit_code_follows_the_verdicts() {
    let tmp = tempfile::tempdir().unwrap();
    let golden: Value = serde_json::from_str(&std::fs::read_to_string(fixture_dir().join("golden.json")).unwrap()).unwrap();
    let good = serde_json::json!({
        "fid": golden["fid_real_split"]["fid_sqrtm"],
        "precision": golden["precision_recall_real_split"]["precision"],
        "recall": golden["precision_recall_real_split"]["recall"],
    });
    let results = tmp.path().join("results");
    let run = |suite: &Path| genbench(&["suite", arg(suite), "--results", arg(&results), "--device", "cpu"]);

    // Every check within tolerance, one run skipped for its missing input: success, with the
    // verdicts printed and the path that was looked for.
    let out = run(&verdict_suite(tmp.path(), "good", &good));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    for needle in [
        "Verdicts:",
        "pass     self-check fid",
        "pass     self-check precision",
        "pass     self-check recall",
        "skipped  missing-images",
        "nowhere/x_images.npy",
    ] {
        assert!(stdout.contains(needle), "stdout lacks {needle:?}: {stdout}");
    }
    // IS is computed, or reported unavailable with the reason; FID and the rest are kept.
    assert!(stdout.contains("self-check is: unavailable: ") || !stdout.contains("unavailable"), "{stdout}");

    // A check outside its tolerance: the suite still reports everything, then exits non-zero.
    let mut bad = good.clone();
    bad["fid"] = serde_json::json!(good["fid"].as_f64().unwrap() + 10.0);
    let out = run(&verdict_suite(tmp.path(), "bad", &bad));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stdout}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stdout.contains("FAIL     self-check fid") && stdout.contains("pass     self-check precision"), "{stdout}");
    assert!(stderr.contains("1 check(s) came out outside their tolerance"), "{stderr}");
}
