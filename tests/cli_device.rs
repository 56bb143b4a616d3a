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

/// Every command that runs a network takes the same two flags, with the same help (one default
/// and one meaning: `DeviceArgs`).
#[test]
fn every_network_command_takes_device_and_dtype() {
    let commands: [&[&str]; 8] =
        [&["suite"], &["quickstart"], &["sample"], &["eval"], &["stats"], &["profile"], &["autonat-search"], &["bench", "inception"]];
    let mut helps = Vec::new();
    for cmd in commands {
        let out = genbench(&[cmd, &["--help"]].concat());
        assert!(out.status.success(), "{cmd:?} --help failed");
        let help = String::from_utf8_lossy(&out.stdout).to_string();
        for flag in ["--device <DEVICE>", "--dtype <DTYPE>"] {
            assert!(help.contains(flag), "`genbench {}` has no {flag}", cmd.join(" "));
        }
        // The device flag's help text, up to the next flag: the same words everywhere.
        let start = help.find("--device <DEVICE>").unwrap();
        let end = help[start..].find("--dtype").map(|e| start + e).unwrap();
        helps.push((cmd, help[start..end].split_whitespace().collect::<Vec<_>>().join(" ")));
    }
    for (cmd, h) in &helps[1..] {
        assert_eq!(h, &helps[0].1, "`genbench {}` describes --device differently from `genbench suite`", cmd.join(" "));
    }
}

/// The refusal comes before any output exists, for the commands that gained the shared flags.
#[test]
fn sample_and_autonat_search_refuse_cuda_without_the_feature_before_writing() {
    let tmp = tempfile::tempdir().unwrap();
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/models/var/config.json");
    let ckpt = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/models/var/var.pth");
    let vae = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/models/var/vae.pth");
    let sample_out = tmp.path().join("samples.npz");
    let search_out = tmp.path().join("search");
    let reference = tmp.path().join("ref.npz");
    std::fs::write(&reference, b"not used: the device is refused first").unwrap();
    let cases: Vec<Vec<&str>> = vec![
        vec![
            "sample",
            "--config",
            fixture,
            "--ckpt",
            ckpt,
            "--vae",
            vae,
            "--n",
            "2",
            "--out",
            sample_out.to_str().unwrap(),
            "--device",
            "cuda:0",
        ],
        vec![
            "autonat-search",
            "--model",
            "autonat-s",
            "--random-init",
            "--steps",
            "2",
            "--samples",
            "2",
            "--iters",
            "1",
            "--reference",
            reference.to_str().unwrap(),
            "--out",
            search_out.to_str().unwrap(),
            "--device",
            "cuda:0",
        ],
    ];
    for args in cases {
        let out = genbench(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: expected failure");
        assert!(!stderr.contains("panicked"), "panic: {stderr}");
        assert!(stderr.contains("built without CUDA"), "{args:?}: {stderr}");
    }
    assert!(std::fs::read_dir(tmp.path()).unwrap().count() == 1, "an output was written before the device was refused");
}

/// `bench inception` runs the Inception in f32 only: another --dtype is refused with the reason.
#[test]
fn bench_inception_refuses_half_precision() {
    let out = genbench(&["bench", "inception", "--dtype", "bf16", "--device", "cpu"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("f32 only") && stderr.contains("bf16"), "{stderr}");
}

/// A suite file may say where it runs; `--device` overrides it; a bad value is a located error.
#[test]
fn suite_files_set_the_device() {
    let tmp = tempfile::tempdir().unwrap();
    let write = |name: &str, device: &str| {
        let p = tmp.path().join(name);
        std::fs::write(
            &p,
            format!(
                "[suite]\nname = \"devices\"\ndevice = \"{device}\"\n\n[[run]]\nid = \"p\"\nkind = \"profile\"\nfamily = \"var\"\nmodel = \"var-d16\"\nrandom_weights = true\nresolution = 64\nbatch = 1\n"
            ),
        )
        .unwrap();
        p
    };
    let cuda = write("cuda.toml", "cuda:0");
    let out = genbench(&["suite", cuda.to_str().unwrap(), "--dry-run"]);
    assert!(!out.status.success(), "a suite asking for cuda:0 ran on a build without CUDA");
    assert!(String::from_utf8_lossy(&out.stderr).contains("built without CUDA"));
    // The flag wins over the file.
    let out = genbench(&["suite", cuda.to_str().unwrap(), "--dry-run", "--device", "cpu"]);
    assert!(out.status.success(), "--device cpu did not override the suite's device");
    let bad = write("bad.toml", "tpu:0");
    let out = genbench(&["suite", bad.to_str().unwrap(), "--dry-run", "--device", "cpu"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("bad.toml:3:") && stderr.contains("tpu:0"), "expected a located error at line 3: {stderr}");
}
