//! `genbench sample` end to end on the VAR fixture (its config.json as --config, its checkpoints):
//! ADM-format output, resumption equal to an uninterrupted run, refusal to resume with other
//! settings, and bad requests failing before any work.

use genbench_metrics::npz::{read_images, read_int_array};
use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/var")
}

fn sample(out: &Path, extra: &[&str]) -> std::process::Output {
    let fx = fixture();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_genbench"));
    cmd.args(["--threads", "2", "sample", "--device", "cpu", "--config"])
        .arg(fx.join("config.json"))
        .arg("--ckpt")
        .arg(fx.join("var.pth"))
        .arg("--vae")
        .arg(fx.join("vae.pth"))
        .args(["--cfg", "1.5", "--top-k", "20", "--top-p", "0.9", "--batch", "3", "--out"])
        .arg(out)
        .args(extra);
    if !extra.contains(&"--seed") {
        cmd.args(["--seed", "7"]);
    }
    cmd.output().unwrap()
}

fn ok(o: &std::process::Output) {
    assert!(o.status.success(), "genbench failed:\n{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn resumed_run_equals_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full.npz");
    ok(&sample(&full, &["--n", "10", "--save-tokens"]));
    let (images, info) = read_images(&full).unwrap();
    assert_eq!((info.n, info.h, info.w), (10, 64, 64));
    let labels = read_int_array(&full, "arr_1").unwrap().unwrap();
    let mut counts = [0; 10];
    labels.iter().for_each(|&l| counts[l as usize] += 1);
    assert_eq!(counts, [1; 10], "n = 10 over 10 classes: each class once");
    assert_ne!(labels, (0..10).collect::<Vec<i64>>(), "labels must be shuffled");
    let tokens = read_int_array(&full, "tokens").unwrap().unwrap();
    assert_eq!(tokens.len(), 10 * 30);
    assert!(tokens.iter().all(|&t| (0..64).contains(&t)));
    assert!(!dir.path().join("full.npz.parts").exists(), "parts folder removed after completion");

    // Interrupted after two shards, then resumed.
    let resumed = dir.path().join("resumed.npz");
    ok(&sample(&resumed, &["--n", "10", "--save-tokens", "--stop-after-shards", "2"]));
    assert!(!resumed.exists(), "no final file before all shards exist");
    assert_eq!(std::fs::read_dir(dir.path().join("resumed.npz.parts")).unwrap().count(), 3, "manifest + 2 shards");
    // Other settings are refused.
    let o = sample(&resumed, &["--n", "10", "--save-tokens", "--seed", "8"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("other settings"), "{}", String::from_utf8_lossy(&o.stderr));
    ok(&sample(&resumed, &["--n", "10", "--save-tokens"]));
    let (images2, _) = read_images(&resumed).unwrap();
    assert_eq!(images, images2, "resumed run differs from the uninterrupted one");
    assert_eq!(read_int_array(&resumed, "tokens").unwrap().unwrap(), tokens);

    // --labels: exactly those classes in that order.
    let chosen = dir.path().join("chosen.npz");
    ok(&sample(&chosen, &["--labels", "5,2,9,2"]));
    assert_eq!(read_int_array(&chosen, "arr_1").unwrap().unwrap(), vec![5, 2, 9, 2]);
}

#[test]
fn bad_requests_fail_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.npz");
    for (args, needle) in [
        (vec!["--n", "0"], "--n must be positive"),
        (vec!["--n", "-5"], "--n must be positive"),
        (vec!["--labels", "3,10"], "class id 10 is out of range"),
    ] {
        let o = sample(&out, &args);
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!dir.path().join("x.npz.parts").exists(), "{args:?} must fail before creating anything");
    }
    let o = sample(Path::new("/nonexistent-folder/x.npz"), &["--n", "4"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("does not exist"));
}
