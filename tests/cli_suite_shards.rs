//! `genbench suite FILE --shard I/N` and `--merge-shards` without Slurm (the shards run here,
//! out of order), and the refusals of the cluster options: a bad or disagreeing shard, merging
//! before every shard is done, a Slurm option without --slurm, --submit without sbatch. Each
//! refusal exits non-zero with the reason and leaves what was written untouched.

mod common;
use common::assert_metrics_match;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn genbench() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_genbench"));
    for v in ["SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN", "SLURM_CONF"] {
        cmd.env_remove(v);
    }
    cmd.args(["--threads", "1"]);
    cmd
}

fn suite_cmd(suite: &Path, results: &Path, extra: &[&str]) -> Output {
    genbench().arg("suite").arg(suite).arg("--results").arg(results).args(extra).output().unwrap()
}

fn ok(o: &Output) -> String {
    let out = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "genbench failed:\n{out}");
    out
}

fn refused(o: &Output, needle: &str) {
    let out = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(!o.status.success(), "expected a refusal containing {needle:?}, got success:\n{out}");
    assert!(out.contains(needle), "expected {needle:?} in:\n{out}");
}

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// A generate run of the VAR fixture: 5 samples in batches of 2 (3 batches), FID only.
fn write_suite(dir: &Path) -> PathBuf {
    let var = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/var");
    let reference = dir.join("reference.npz");
    let px: Vec<u8> = (0..6 * 64 * 64 * 3).map(|i| ((i * 2_654_435_761usize) >> 11) as u8).collect();
    genbench_metrics::npz::write_images_npz(&reference, &px, 6, 64, 64, &[]).unwrap();
    let text = format!(
        r#"
[suite]
name = "tiny-shards"
description = "suite shards without Slurm"

[[run]]
id = "var"
kind = "generate"
family = "var"
model = "{config}"
resolution = 64
dtype = "f32"
seeds = [5]
checkpoint = "{ckpt}"
tokenizer = "{vae}"
samples = 5
batch = 2
reference = "reference.npz"
metrics = ["fid"]
"#,
        config = var.join("config.json").display(),
        ckpt = var.join("var.pth").display(),
        vae = var.join("vae.pth").display(),
    );
    let path = dir.join("tiny.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn metrics_csv(results: &Path) -> String {
    let dir = results.join("tiny-shards");
    let runs: Vec<PathBuf> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path().join("metrics.csv")).filter(|p| p.is_file()).collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    std::fs::read_to_string(&runs[0]).unwrap()
}

#[test]
fn suite_shards_then_merge_equal_one_process_and_bad_requests_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let suite = write_suite(tmp.path());
    let single = tmp.path().join("single");
    ok(&suite_cmd(&suite, &single, &[]));
    let want = metrics_csv(&single);

    let results = tmp.path().join("sharded");
    // Bad shard specs, before any work.
    refused(&suite_cmd(&suite, &results, &["--shard", "2/2"]), "outside 0..2");
    refused(&suite_cmd(&suite, &results, &["--shard", "0/0"]), "at least 1");
    assert!(!results.exists(), "nothing written by a refused shard");
    // Slurm options need --slurm; --shard and --merge-shards exclude each other.
    refused(&suite_cmd(&suite, &results, &["--array-size", "3"]), "--slurm");
    refused(&suite_cmd(&suite, &results, &["--submit"]), "--slurm");
    refused(&suite_cmd(&suite, &results, &["--shard", "0/2", "--merge-shards"]), "cannot be used with");
    assert!(!results.exists());

    // Shard 1 of 2, then merging too early names the missing batches and their shard.
    let out = ok(&suite_cmd(&suite, &results, &["--shard", "1/2"]));
    assert!(out.contains("shard 1/2 done"), "{out}");
    let before = snapshot(&results);
    refused(&suite_cmd(&suite, &results, &["--merge-shards"]), "batches 0, 2 of 3 missing");
    refused(&suite_cmd(&suite, &results, &["--merge-shards"]), "shard(s) 0 of 2");
    // Another shard count than the one on disk.
    refused(&suite_cmd(&suite, &results, &["--shard", "0/3"]), "made as 2 shards");
    assert_eq!(snapshot(&results), before, "refusals leave the results untouched");

    ok(&suite_cmd(&suite, &results, &["--shard", "0/2"]));
    let out = ok(&suite_cmd(&suite, &results, &["--merge-shards"]));
    assert!(out.contains("completed, 0 skipped, 0 failed"), "{out}");
    assert_metrics_match(&metrics_csv(&results), &want);

    // --slurm writes the two scripts; --submit without sbatch on PATH is refused before writing.
    let slurm_results = tmp.path().join("slurm");
    let o = genbench()
        .env("PATH", tmp.path())
        .arg("suite")
        .arg(&suite)
        .arg("--results")
        .arg(&slurm_results)
        .args(["--slurm", "--submit"])
        .output()
        .unwrap();
    refused(&o, "sbatch");
    assert!(!slurm_results.exists(), "nothing written when sbatch is missing");
    let out = ok(&suite_cmd(&suite, &slurm_results, &["--slurm", "--array-size", "4", "--partition", "gpu", "--gpus-per-task", "1"]));
    assert!(out.contains("sbatch --parsable") && out.contains("afterok"), "{out}");
    let script = std::fs::read_to_string(slurm_results.join("tiny-shards/slurm/generate.sbatch")).unwrap();
    assert!(script.contains("#SBATCH --array=0-3") && script.contains("#SBATCH --partition=gpu") && script.contains("--shard"), "{script}");
    let merge = std::fs::read_to_string(slurm_results.join("tiny-shards/slurm/merge.sbatch")).unwrap();
    assert!(merge.contains("--merge-shards") && merge.contains(&suite.display().to_string()), "{merge}");
}
