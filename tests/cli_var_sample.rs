//! `genbench sample` and `genbench merge` end to end on the VAR fixture (its config.json as
//! --config, its checkpoints): ADM-format output, resumption equal to an uninterrupted run,
//! shards (in any order, concurrent, from Slurm array variables) merging to the same bytes as
//! one run, concurrent processes on one --out splitting the work, and bad requests failing
//! before any work with nothing on disk lost.

use genbench_metrics::npz::{read_images, read_int_array};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/var")
}

fn genbench() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_genbench"));
    // The tests may themselves run inside a Slurm array task (the Slurm CI test): its
    // variables must not shard these runs.
    for v in ["SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN"] {
        cmd.env_remove(v);
    }
    cmd
}

fn sample_cmd(out: &Path, extra: &[&str]) -> Command {
    let fx = fixture();
    let mut cmd = genbench();
    cmd.args(["--threads", "1", "sample", "--device", "cpu", "--config"])
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
    cmd
}

fn sample(out: &Path, extra: &[&str]) -> Output {
    sample_cmd(out, extra).output().unwrap()
}

fn spawn(mut cmd: Command) -> Child {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
}

fn merge(out: &Path, extra: &[&str]) -> Output {
    genbench().args(["merge", "--out"]).arg(out).args(extra).output().unwrap()
}

fn ok(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "genbench failed:\n{err}");
    err
}

fn refused(o: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "expected a refusal containing {needle:?}, got success:\n{err}");
    assert!(err.contains(needle), "expected {needle:?} in:\n{err}");
}

/// Names and contents of the files in a folder, to show nothing was lost or changed.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap())
        })
        .collect();
    v.sort();
    v
}

fn parts(out: &Path) -> PathBuf {
    PathBuf::from(format!("{}.parts", out.display()))
}

/// The number in "sampled K batches here" / "shard I/N done (K batches sampled here".
fn batches_sampled_here(stderr: &str) -> usize {
    let line = stderr.lines().find(|l| l.contains("sampled here") || l.contains("batches here")).expect("a summary line");
    let before = line.split(" batches").next().unwrap();
    before.rsplit(|c: char| !c.is_ascii_digit()).find(|s| !s.is_empty()).unwrap().parse().unwrap()
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
    assert!(!parts(&full).exists(), "parts folder removed after completion");

    // Interrupted after two batches, then resumed.
    let resumed = dir.path().join("resumed.npz");
    ok(&sample(&resumed, &["--n", "10", "--save-tokens", "--stop-after-batches", "2"]));
    assert!(!resumed.exists(), "no final file before all batches exist");
    let batch_files =
        std::fs::read_dir(parts(&resumed)).unwrap().filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "npz")).count();
    assert_eq!(batch_files, 2);
    // Other settings are refused.
    refused(&sample(&resumed, &["--n", "10", "--save-tokens", "--seed", "8"]), "other settings");
    ok(&sample(&resumed, &["--n", "10", "--save-tokens"]));
    assert_eq!(std::fs::read(&resumed).unwrap(), std::fs::read(&full).unwrap(), "resumed run differs from the uninterrupted one");
    assert_eq!(read_images(&resumed).unwrap().0, images);

    // --labels: exactly those classes in that order.
    let chosen = dir.path().join("chosen.npz");
    ok(&sample(&chosen, &["--labels", "5,2,9,2"]));
    assert_eq!(read_int_array(&chosen, "arr_1").unwrap().unwrap(), vec![5, 2, 9, 2]);
}

#[test]
fn shards_in_any_order_or_at_once_merge_to_the_bytes_of_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let job = ["--n", "10", "--save-tokens"]; // 4 batches of 3, 3, 3, 1
    let full = dir.path().join("full.npz");
    ok(&sample(&full, &job));
    let want = std::fs::read(&full).unwrap();

    // One after another, out of order.
    let seq = dir.path().join("seq.npz");
    for k in ["2/3", "0/3", "1/3"] {
        let err = ok(&sample(&seq, &[&job[..], &["--shard", k]].concat()));
        assert!(err.contains(&format!("shard {k} done")), "{err}");
        assert!(!seq.exists(), "a shard never writes the final file");
    }
    ok(&merge(&seq, &[]));
    assert_eq!(std::fs::read(&seq).unwrap(), want, "sequential shards + merge differ from one run");
    // stderr is a pipe here, as in a Slurm log: plain progress lines with rate and ETA.
    let err = ok(&sample(&dir.path().join("progress.npz"), &["--n", "4"]));
    assert!(err.lines().any(|l| l.starts_with("sampling: 4/4 images (100.0%), ") && l.contains("images/s") && l.contains("eta")), "{err}");
    assert!(!parts(&seq).exists(), "merge removes the parts after success");

    // All three at once.
    let conc = dir.path().join("conc.npz");
    let children: Vec<Child> =
        ["0/3", "1/3", "2/3"].iter().map(|k| spawn(sample_cmd(&conc, &[&job[..], &["--shard", k]].concat()))).collect();
    let sampled: usize = children.into_iter().map(|c| batches_sampled_here(&ok(&c.wait_with_output().unwrap()))).sum();
    assert_eq!(sampled, 4, "each batch sampled exactly once");
    ok(&merge(&conc, &[]));
    assert_eq!(std::fs::read(&conc).unwrap(), want, "concurrent shards + merge differ from one run");

    // The shard from Slurm's array variables when --shard is absent, with 2 shards this time.
    let slurm = dir.path().join("slurm.npz");
    for id in ["1", "0"] {
        let mut cmd = sample_cmd(&slurm, &job);
        cmd.env("SLURM_ARRAY_TASK_ID", id).env("SLURM_ARRAY_TASK_COUNT", "2");
        let err = ok(&cmd.output().unwrap());
        assert!(err.contains(&format!("shard {id}/2 done")), "{err}");
    }
    ok(&merge(&slurm, &[]));
    assert_eq!(std::fs::read(&slurm).unwrap(), want, "Slurm-array shards + merge differ from one run");
}

#[test]
fn concurrent_runs_on_one_out_split_the_work_and_write_one_file() {
    let dir = tempfile::tempdir().unwrap();
    let job = ["--n", "12", "--save-tokens"]; // 4 batches of 3
    let full = dir.path().join("full.npz");
    ok(&sample(&full, &job));
    let shared = dir.path().join("shared.npz");
    let children: Vec<Child> = (0..2).map(|_| spawn(sample_cmd(&shared, &job))).collect();
    let errs: Vec<String> = children.into_iter().map(|c| ok(&c.wait_with_output().unwrap())).collect();
    let sampled: usize = errs.iter().map(|e| batches_sampled_here(e)).sum();
    assert_eq!(sampled, 4, "each batch sampled exactly once:\n{}", errs.join("\n---\n"));
    assert_eq!(std::fs::read(&shared).unwrap(), std::fs::read(&full).unwrap(), "two processes on one --out differ from one run");
    assert!(!parts(&shared).exists());
}

#[test]
fn bad_requests_fail_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.npz");
    for (args, needle) in [
        (vec!["--n", "0"], "--n must be positive"),
        (vec!["--n", "-5"], "--n must be positive"),
        (vec!["--labels", "3,10"], "class id 10 is out of range"),
        (vec!["--n", "4", "--shard", "3/3"], "outside 0..3"),
        (vec!["--n", "4", "--shard", "0/0"], "at least 1"),
        (vec!["--n", "4", "--shard", "-1/2"], "not a non-negative integer"),
        (vec!["--n", "4", "--shard", "2"], "expected I/N"),
    ] {
        refused(&sample(&out, &args), needle);
        assert!(!parts(&out).exists(), "{args:?} must fail before creating anything");
    }
    // Slurm variables that name no shard.
    let mut cmd = sample_cmd(&out, &["--n", "4"]);
    cmd.env("SLURM_ARRAY_TASK_ID", "5").env("SLURM_ARRAY_TASK_COUNT", "3");
    refused(&cmd.output().unwrap(), "contiguous");
    assert!(!parts(&out).exists());
    refused(&sample(Path::new("/nonexistent-folder/x.npz"), &["--n", "4"]), "does not exist");

    // A shard count that disagrees with the parts on disk; nothing there is touched.
    let job = ["--n", "10"];
    ok(&sample(&out, &[&job[..], &["--shard", "0/3"]].concat()));
    let before = snapshot(&parts(&out));
    refused(&sample(&out, &[&job[..], &["--shard", "1/4"]].concat()), "made as 3 shards");
    assert_eq!(snapshot(&parts(&out)), before);

    // Merging with batches missing names them and the shard to rerun; nothing is written.
    refused(&merge(&out, &[]), "batch_XXXXX.npz for 1-2");
    refused(&merge(&out, &[]), "shard(s) 1, 2 of 3");
    assert!(!out.exists());
    assert_eq!(snapshot(&parts(&out)), before);

    // Parts of another job (another seed) are refused, by folder and by file.
    let other = dir.path().join("other.npz");
    ok(&sample(&other, &["--n", "10", "--seed", "8", "--shard", "1/3"]));
    let o = genbench()
        .args(["merge", "--keep-parts", "--out"])
        .arg(&out)
        .arg("--parts")
        .arg(parts(&out))
        .arg("--parts")
        .arg(parts(&other))
        .output()
        .unwrap();
    refused(&o, "another job");
    std::fs::copy(parts(&other).join("batch_00001.npz"), parts(&out).join("batch_00001.npz")).unwrap();
    refused(&merge(&out, &[]), "made with other settings");
    assert!(!out.exists());
    std::fs::remove_file(parts(&out).join("batch_00001.npz")).unwrap();

    // The same batch in two folders is a duplicate.
    ok(&sample(&out, &[&job[..], &["--shard", "1/3"]].concat()));
    ok(&sample(&out, &[&job[..], &["--shard", "2/3"]].concat()));
    let copy = dir.path().join("copy.parts");
    std::fs::create_dir(&copy).unwrap();
    for f in ["manifest.json", "batch_00000.npz"] {
        std::fs::copy(parts(&out).join(f), copy.join(f)).unwrap();
    }
    let o = genbench().args(["merge", "--out"]).arg(&out).arg("--parts").arg(parts(&out)).arg("--parts").arg(&copy).output().unwrap();
    refused(&o, "batch 0 is there twice");
    assert!(!out.exists() && copy.join("batch_00000.npz").exists());
    // The complete set merges.
    ok(&merge(&out, &[]));
    assert_eq!(read_images(&out).unwrap().1.n, 10);
    refused(&merge(&out, &[]), "already exists");
}

/// `--features`: Inception features per batch, merged into the features file and FID/sFID
/// statistics, equal to one pass of `genbench stats` over the merged images.
#[test]
fn per_shard_features_merge_to_the_single_pass_statistics() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("feat.npz");
    // 4 batches over 2 shards, the second shard with features from the start and the first
    // sampled without them, then completed with --features (features from the stored images).
    let job = ["--n", "10"];
    ok(&sample(&out, &[&job[..], &["--shard", "0/2"]].concat()));
    for k in ["1/2", "0/2"] {
        ok(&sample(&out, &[&job[..], &["--shard", k, "--features"]].concat()));
    }
    let err = ok(&merge(&out, &[]));
    let stats_path = dir.path().join("feat_stats.npz");
    assert!(err.contains("feat_stats.npz") && dir.path().join("feat.features.safetensors").is_file(), "{err}");
    let merged = genbench_metrics::npz::read_statistics(&stats_path).unwrap();
    let single_path = dir.path().join("single_stats.npz");
    let o = genbench().args(["--threads", "1", "stats", "--device", "cpu"]).arg(&out).arg("--out").arg(&single_path).output().unwrap();
    ok(&o);
    let single = genbench_metrics::npz::read_statistics(&single_path).unwrap();
    // Tolerance: both sides come from f32 Inception features of the same images, extracted in
    // batches of 3 here and of 10 by `genbench stats`; a different batch composition may change
    // the last bits of a feature (relative 1e-7) and so of the f64 statistics. 1e-5 of the
    // largest entry leaves room for that; a lost, doubled or foreign batch moves them by far more.
    for (name, a, b) in [
        ("mu", &merged.pool.as_ref().unwrap().mu, &single.pool.as_ref().unwrap().mu),
        ("sigma", &merged.pool.as_ref().unwrap().sigma, &single.pool.as_ref().unwrap().sigma),
        ("mu_s", &merged.spatial.as_ref().unwrap().mu, &single.spatial.as_ref().unwrap().mu),
        ("sigma_s", &merged.spatial.as_ref().unwrap().sigma, &single.spatial.as_ref().unwrap().sigma),
    ] {
        assert_eq!(a.len(), b.len(), "{name}");
        let scale = b.iter().fold(0f64, |m, v| m.max(v.abs()));
        let diff = a.iter().zip(b.iter()).fold(0f64, |m, (x, y)| m.max((x - y).abs()));
        assert!(diff <= 1e-5 * scale, "{name}: merged and single-pass differ by {diff} (largest entry {scale})");
    }
    assert_eq!(merged.pool.unwrap().n, 10);
}

/// A task killed mid-run (as Slurm does at a time limit or on preemption) holds no claim
/// afterwards: the kernel drops its locks, and the rerun finishes the job with the same bytes.
#[test]
fn killed_run_resumes_to_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let job = ["--n", "60", "--shard", "0/1"]; // 20 batches
    let killed = dir.path().join("killed.npz");
    let mut child = spawn(sample_cmd(&killed, &job));
    let parts_dir = parts(&killed);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    // Finished batches only: a kill can leave the temporary file of the batch being written
    // (`.batch_00001.npz.<pid>.partial.npz`), which is not a batch and which the rerun ignores.
    let batch_count = || {
        std::fs::read_dir(&parts_dir)
            .map(|rd| {
                rd.filter(|e| {
                    let name = e.as_ref().unwrap().file_name().to_string_lossy().into_owned();
                    name.starts_with("batch_") && name.ends_with(".npz")
                })
                .count()
            })
            .unwrap_or(0)
    };
    while batch_count() == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    let done_before = batch_count();
    assert!(done_before >= 1, "the run never wrote a batch");
    let err = ok(&sample(&killed, &job));
    if !status.success() {
        // Killed before the end (the usual case): the rerun did the rest and only the rest.
        assert_eq!(batches_sampled_here(&err) + done_before, 20, "{err}");
    }
    ok(&merge(&killed, &[]));
    let full = dir.path().join("full.npz");
    ok(&sample(&full, &["--n", "60"]));
    assert_eq!(std::fs::read(&killed).unwrap(), std::fs::read(&full).unwrap());
}
