//! `genbench suite --slurm --submit` on a real single-node Slurm cluster (started by
//! `ci/slurm-up.sh` in a temporary folder and stopped at the end): a tiny-fixture suite runs as
//! an array of 3 shard tasks plus the dependent merge/evaluate job, and its metrics.csv must
//! match a single-process run's (see `assert_metrics_match`). Where Slurm is not installed the
//! test says so and passes, except under CI (`CI=true`), where it fails.

mod common;
use common::assert_metrics_match;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn on_path(bin: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
}

fn genbench() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_genbench"));
    for v in ["SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN", "SLURM_CONF"] {
        cmd.env_remove(v);
    }
    cmd
}

fn ok(o: &Output) -> String {
    let out = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "command failed:\n{out}");
    out
}

/// The daemons of `ci/slurm-up.sh start DIR`, stopped when dropped (also on a failed assert).
struct Cluster {
    dir: PathBuf,
    conf: PathBuf,
}

impl Cluster {
    fn start(dir: &Path) -> Cluster {
        let o = Command::new(root().join("ci/slurm-up.sh")).arg("start").arg(dir).output().unwrap();
        let cluster = Cluster { dir: dir.to_path_buf(), conf: dir.join("slurm.conf") };
        assert!(
            o.status.success(),
            "ci/slurm-up.sh start failed:\n{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        cluster
    }

    fn command(&self, bin: &str) -> Command {
        let mut cmd = Command::new(bin);
        cmd.env("SLURM_CONF", &self.conf);
        cmd
    }

    /// `JobState` of a job (scontrol keeps finished jobs for MinJobAge, 300 s by default).
    fn job_state(&self, id: &str) -> String {
        let o = self.command("scontrol").args(["show", "job", id]).output().unwrap();
        let text = String::from_utf8_lossy(&o.stdout);
        text.split_whitespace().find_map(|w| w.strip_prefix("JobState=")).unwrap_or("UNKNOWN").to_string()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(root().join("ci/slurm-up.sh")).arg("stop").arg(&self.dir).output();
    }
}

fn write_suite(dir: &Path) -> PathBuf {
    let var = root().join("tests/fixtures/models/var");
    let reference = dir.join("reference.npz");
    let px: Vec<u8> = (0..8 * 64 * 64 * 3).map(|i| ((i * 2_654_435_761usize) >> 13) as u8).collect();
    genbench_metrics::npz::write_images_npz(&reference, &px, 8, 64, 64, &[]).unwrap();
    let mut text = format!(
        r#"
[suite]
name = "tiny-slurm"
description = "fixture-size suite over a Slurm array"

[defaults]
family = "var"
model = "{config}"
resolution = 64
dtype = "f32"
checkpoint = "{ckpt}"
tokenizer = "{vae}"
reference = "reference.npz"
metrics = ["fid", "precision", "recall"]
"#,
        config = var.join("config.json").display(),
        ckpt = var.join("var.pth").display(),
        vae = var.join("vae.pth").display(),
    );
    // Two generate runs of 4 batches each (the last one short): uneven over 3 shards.
    for (id, seed) in [("var-seed3", 3), ("var-seed4", 4)] {
        text.push_str(&format!("\n[[run]]\nid = \"{id}\"\nkind = \"generate\"\nsamples = 7\nbatch = 2\nseeds = [{seed}]\n"));
    }
    let path = dir.join("tiny.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The one `metrics.csv` under `results/tiny-slurm/<timestamp>/`.
fn metrics_csv(results: &Path) -> String {
    let suite_dir = results.join("tiny-slurm");
    let mut found: Vec<PathBuf> =
        std::fs::read_dir(&suite_dir).unwrap().map(|e| e.unwrap().path().join("metrics.csv")).filter(|p| p.is_file()).collect();
    assert_eq!(found.len(), 1, "one results folder in {}: {found:?}", suite_dir.display());
    std::fs::read_to_string(found.remove(0)).unwrap()
}

#[test]
fn suite_over_a_slurm_array_equals_a_single_process_run() {
    let missing: Vec<&str> = ["sbatch", "scontrol", "sinfo", "slurmctld", "slurmd", "munged"]
        .into_iter()
        .filter(|b| !on_path(b) && !Path::new("/usr/sbin").join(b).is_file())
        .collect();
    if !missing.is_empty() {
        let msg = format!(
            "Slurm is not installed here ({} not found): install Debian's slurmctld slurmd slurm-client munge (.ci/run does)",
            missing.join(", ")
        );
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{msg}; CI must run this test");
        }
        eprintln!("SKIPPED suite_over_a_slurm_array_equals_a_single_process_run: {msg}");
        return;
    }
    let t0 = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let suite = write_suite(tmp.path());

    // One process.
    let single = tmp.path().join("single");
    ok(&genbench().args(["--threads", "1", "suite"]).arg(&suite).arg("--results").arg(&single).output().unwrap());
    let want = metrics_csv(&single);
    assert!(want.lines().count() == 1 + 2 * 3 && !want.contains(",failed,"), "{want}");

    // Slurm: an array of 3 shard tasks and the dependent merge job.
    let cluster = Cluster::start(&tmp.path().join("cluster"));
    let results = tmp.path().join("slurm");
    let mut submit = genbench();
    // Exported to the jobs by sbatch: one thread each, as the 2-core node runs two tasks at once.
    submit.env("SLURM_CONF", &cluster.conf).env("RAYON_NUM_THREADS", "1");
    submit.args(["suite"]).arg(&suite).arg("--results").arg(&results).args(["--slurm", "--array-size", "3", "--time", "10", "--submit"]);
    let out = ok(&submit.output().unwrap());
    let ids: Vec<String> = out
        .lines()
        .find(|l| l.starts_with("submitted array job"))
        .unwrap_or_else(|| panic!("no submission line in:\n{out}"))
        .split_whitespace()
        .filter(|w| w.chars().all(|c| c.is_ascii_digit()))
        .map(str::to_string)
        .collect();
    assert_eq!(ids.len(), 2, "{out}");
    let merge_job = &ids[1];
    let deadline = Instant::now() + Duration::from_secs(300);
    let state = loop {
        let s = cluster.job_state(merge_job);
        if ["COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"].contains(&s.as_str()) || Instant::now() > deadline
        {
            break s;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let logs_dir = results.join("tiny-slurm/slurm/logs");
    let logs: Vec<(String, String)> = std::fs::read_dir(&logs_dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().path())
                .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read_to_string(&p).unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    let show = || logs.iter().map(|(n, t)| format!("== {n}\n{t}")).collect::<Vec<_>>().join("\n");
    assert_eq!(state, "COMPLETED", "merge job {merge_job} ended {state}; logs:\n{}", show());
    let shard_logs: Vec<&(String, String)> = logs.iter().filter(|(n, _)| n.starts_with("generate-")).collect();
    assert_eq!(shard_logs.len(), 3, "three array tasks:\n{}", show());
    for i in 0..3 {
        assert!(shard_logs.iter().any(|(_, t)| t.contains(&format!("shard {i}/3 done"))), "shard {i}/3 did not finish:\n{}", show());
    }
    assert_metrics_match(&metrics_csv(&results), &want);
    drop(cluster);
    eprintln!(
        "Slurm suite test wall time: {:.1} s (single-process run, cluster start, 3 array tasks + merge job, stop)",
        t0.elapsed().as_secs_f64()
    );
}
