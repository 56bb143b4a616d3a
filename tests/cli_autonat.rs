//! `genbench sample` and `genbench profile` end to end on the AutoNAT fixture (its config.json
//! as --config, its checkpoints, its strategy YAML): ADM-format output with tokens, resumption
//! equal to an uninterrupted run, --labels, built-in strategies, the per-step profile, and bad
//! strategies refused (naming the field) before any work.

use genbench_metrics::npz::{read_images, read_int_array};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/autonat")
}

fn genbench(sub: &str, extra: &[&str]) -> Output {
    let fx = fixture();
    Command::new(env!("CARGO_BIN_EXE_genbench"))
        .args(["--threads", "2", sub, "--device", "cpu", "--config"])
        .arg(fx.join("config.json"))
        .arg("--ckpt")
        .arg(fx.join("nnet_ema.pth"))
        .arg("--vae")
        .arg(fx.join("vqgan_jax_strongaug.ckpt"))
        .args(extra)
        .output()
        .unwrap()
}

fn sample(out: &Path, extra: &[&str]) -> Output {
    let strategy = fixture().join("strategy_T4.yaml");
    let mut args = vec!["--batch", "2", "--seed", "3", "--out", out.to_str().unwrap()];
    if !extra.contains(&"--strategy") {
        args.extend(["--strategy", strategy.to_str().unwrap()]);
    }
    args.extend(extra);
    genbench("sample", &args)
}

fn ok(o: &Output) {
    assert!(o.status.success(), "genbench failed:\n{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn sample_resumes_and_takes_strategies_and_labels() {
    let dir = tempfile::tempdir().unwrap();
    // The fixture network: 4 x 4 tokens over a 64-entry codebook, 64 px images, 11 classes
    // (class 10 is the unconditional one, so 10 are valid labels).
    let full = dir.path().join("full.npz");
    ok(&sample(&full, &["--n", "6", "--save-tokens"]));
    let (images, info) = read_images(&full).unwrap();
    assert_eq!((info.n, info.h, info.w), (6, 64, 64));
    let tokens = read_int_array(&full, "tokens").unwrap().unwrap();
    assert_eq!(tokens.len(), 6 * 16);
    assert!(tokens.iter().all(|&t| (0..64).contains(&t)), "ids of the last step, mask id never kept");
    let labels = read_int_array(&full, "arr_1").unwrap().unwrap();
    assert!(labels.iter().all(|&l| (0..10).contains(&l)));

    // Interrupted after one shard, resumed: the same bytes and tokens.
    let resumed = dir.path().join("resumed.npz");
    ok(&sample(&resumed, &["--n", "6", "--save-tokens", "--stop-after-shards", "1"]));
    assert!(!resumed.exists(), "no final file before all shards exist");
    ok(&sample(&resumed, &["--n", "6", "--save-tokens"]));
    assert_eq!(read_images(&resumed).unwrap().0, images, "resumed run differs from the uninterrupted one");
    assert_eq!(read_int_array(&resumed, "tokens").unwrap().unwrap(), tokens);

    // --labels in that order; a built-in strategy with its step count.
    let chosen = dir.path().join("chosen.npz");
    ok(&sample(&chosen, &["--labels", "7,0,7"]));
    assert_eq!(read_int_array(&chosen, "arr_1").unwrap().unwrap(), vec![7, 0, 7]);
    let cosine = dir.path().join("cosine.npz");
    ok(&sample(&cosine, &["--labels", "7,0,7", "--strategy", "maskgit-cosine", "--num-iter", "3"]));
    assert_ne!(read_images(&cosine).unwrap().0, read_images(&chosen).unwrap().0, "the strategy changes the images");
    // A strategy file fixes T; asking for another T is refused before any work.
    let o = sample(&dir.path().join("x.npz"), &["--n", "2", "--num-iter", "5"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("strategy has 4 steps") && err.contains("5 generation steps"), "{err}");
    assert!(!dir.path().join("x.npz.parts").exists());
}

#[test]
fn profile_has_one_row_per_step_and_the_decode() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("prof");
    let strategy = fixture().join("strategy_T4.yaml");
    let o = genbench(
        "profile",
        &["--strategy", strategy.to_str().unwrap(), "--batch", "1,2", "--repeats", "1", "--warmup", "0", "--out", out.to_str().unwrap()],
    );
    ok(&o);
    let csv = std::fs::read_to_string(out.join("steps.csv")).unwrap();
    let rows: Vec<Vec<&str>> = csv.lines().skip(1).map(|l| l.split(',').collect()).collect();
    // batch 1 and 2: 4 transformer steps (cond + uncond passes) + 1 decode each.
    assert_eq!(rows.len(), 2 * 5, "{csv}");
    for batch in ["1", "2"] {
        let kinds: Vec<&str> = rows.iter().filter(|r| r[0] == batch).map(|r| r[3]).collect();
        assert_eq!(kinds, ["transformer", "transformer", "transformer", "transformer", "decode"], "{csv}");
    }
    // Every step attends all 16 tokens + the class token, and costs FLOPs.
    for r in rows.iter().filter(|r| r[3] == "transformer") {
        assert_eq!(r[5], "17", "{csv}");
        assert!(r[7].parse::<f64>().unwrap() > 0.0);
    }
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert!(summary["flops_convention"].as_str().unwrap().contains("2 x MACs"));
}

#[test]
fn bad_strategies_are_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "short.yaml",
            "manual_ratios: [0.5]\nmanual_temp: [1.0, 1.0, 1.0]\nmanual_samp_temp: [1, 1, 1, 1]\nmanual_cfg: [0, 0, 0, 0]\n",
            "manual_ratios has 1 entries",
        ),
        (
            "range.yaml",
            "manual_ratios: [0.5, 1.5, 0.1]\nmanual_temp: [1.0, 1.0, 1.0]\nmanual_samp_temp: [1, 1, 1, 1]\nmanual_cfg: [0, 0, 0, 0]\n",
            "manual_ratios[1] = 1.5 is outside [0, 1]",
        ),
        (
            "neg.yaml",
            "manual_ratios: [0.5, 0.3, 0.1]\nmanual_temp: [1.0, 1.0, 1.0]\nmanual_samp_temp: [1, -2, 1, 1]\nmanual_cfg: [0, 0, 0, 0]\n",
            "manual_samp_temp[1] = -2 is negative",
        ),
    ];
    for (name, text, needle) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let out = dir.path().join("out.npz");
        let o = sample(&out, &["--n", "2", "--strategy", path.to_str().unwrap()]);
        assert!(!o.status.success(), "{name}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(needle) && err.contains(name), "{name}: {err}");
        assert!(!dir.path().join("out.npz.parts").exists() && !out.exists(), "{name}: nothing written");
    }
}
