//! `--device cuda:N` on a build without the `cuda` feature: a clear message naming the device and
//! what to do (rebuild with `--features cuda` or use `--device cpu`), a non-zero exit, no panic,
//! and no work done (no output folder).
#![cfg(not(feature = "cuda"))]

use std::process::{Command, Output};

fn genbench(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_genbench")).args(args).output().expect("run genbench");
    println!("stdout: {}\nstderr: {}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    out
}

#[test]
fn cuda_device_without_the_feature_is_refused_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("profile_out");
    let cases: Vec<Vec<&str>> = vec![
        vec!["bench", "inception", "--device", "cuda:0"],
        vec!["profile", "--model", "var-d16", "--device", "cuda:1", "--dtype", "bf16", "--out", out_dir.to_str().unwrap()],
    ];
    for args in cases {
        let out = genbench(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: expected failure");
        assert!(!stderr.contains("panicked"), "panic: {stderr}");
        for needle in ["cuda:", "built without CUDA", "--features cuda", "--device cpu"] {
            assert!(stderr.contains(needle), "{args:?}: stderr lacks {needle:?}: {stderr}");
        }
    }
    assert!(!out_dir.exists(), "profile created its output folder before refusing the device");
}
