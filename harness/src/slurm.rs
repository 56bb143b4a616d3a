//! Slurm batch scripts for a suite: an array job whose task I of N runs
//! `genbench suite FILE --shard I/N` (generation + features), and a job that depends on it
//! (`afterok`) and runs `genbench suite FILE --merge-shards` (merge, evaluate, report).
//! [`submit`] hands both to `sbatch`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};

/// The cluster options of `genbench suite --slurm`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlurmSettings {
    /// `--partition` (cluster default when None).
    pub partition: Option<String>,
    /// GPUs per array task (`--gpus-per-task`); None: no GPU request.
    pub gpus_per_task: Option<u32>,
    /// Array tasks N (shards).
    pub array_size: usize,
    /// Time limit per job (`--time`, Slurm's formats, e.g. `4:00:00`).
    pub time: Option<String>,
}

/// The files a suite job reads and writes, as given on the command line.
pub struct SuiteInputs<'a> {
    pub file: &'a Path,
    pub results: &'a Path,
    pub cache_dir: Option<&'a Path>,
    pub inception_weights: Option<&'a Path>,
}

/// The `genbench suite` arguments both jobs repeat: the files as absolute paths (the jobs start
/// elsewhere), `--only`, and each `(flag, value)` that has a value (`--device`, `--dtype`, ...).
pub fn suite_job_args(inputs: &SuiteInputs, only: &[String], flags: &[(&str, Option<String>)]) -> Result<Vec<String>> {
    let absolute = |p: &Path| std::path::absolute(p).with_context(|| format!("cannot make {} absolute", p.display()));
    let mut args = vec![absolute(inputs.file)?.display().to_string(), "--results".into(), absolute(inputs.results)?.display().to_string()];
    if !only.is_empty() {
        args.extend(["--only".into(), only.join(",")]);
    }
    for (flag, path) in [("--cache-dir", inputs.cache_dir), ("--inception-weights", inputs.inception_weights)] {
        if let Some(p) = path {
            args.extend([flag.to_string(), absolute(p)?.display().to_string()]);
        }
    }
    for (flag, value) in flags {
        args.extend(value.clone().map(|v| [flag.to_string(), v]).into_iter().flatten());
    }
    Ok(args)
}

/// The two scripts written for a suite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlurmScripts {
    pub dir: PathBuf,
    pub generate: PathBuf,
    pub merge: PathBuf,
}

impl SlurmScripts {
    /// The shell line that submits both jobs by hand, the merge job after the array.
    pub fn submit_command(&self) -> String {
        format!("jid=$(sbatch --parsable {}) && sbatch --dependency=afterok:$jid {}", self.generate.display(), self.merge.display())
    }
}

/// POSIX shell single-quoting.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c)) {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn header(name: &str, log: &Path, s: &SlurmSettings, array: Option<usize>) -> String {
    let mut h = String::from("#!/bin/bash\n");
    h.push_str(&format!("#SBATCH --job-name={}\n", shell_quote(name)));
    h.push_str(&format!("#SBATCH --output={}\n", shell_quote(&log.display().to_string())));
    if let Some(n) = array {
        h.push_str(&format!("#SBATCH --array=0-{}\n", n - 1));
    }
    h.push_str("#SBATCH --ntasks=1\n");
    if let Some(p) = &s.partition {
        h.push_str(&format!("#SBATCH --partition={}\n", shell_quote(p)));
    }
    if let Some(g) = s.gpus_per_task {
        h.push_str(&format!("#SBATCH --gpus-per-task={g}\n"));
    }
    if let Some(t) = &s.time {
        h.push_str(&format!("#SBATCH --time={}\n", shell_quote(t)));
    }
    h.push_str("set -euo pipefail\n");
    h
}

/// Writes `generate.sbatch` and `merge.sbatch` into `dir` (logs into `dir/logs`).
/// `genbench` is the binary to run, `suite_args` the arguments both jobs pass to `suite`
/// (the suite file and options such as `--results`), absolute paths so the jobs run anywhere.
pub fn write_scripts(dir: &Path, suite_name: &str, genbench: &Path, suite_args: &[String], s: &SlurmSettings) -> Result<SlurmScripts> {
    ensure!(s.array_size >= 1, "--array-size must be at least 1, got {}", s.array_size);
    ensure!(s.gpus_per_task != Some(0), "--gpus-per-task must be at least 1 (leave it out for no GPU)");
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let exe = shell_quote(&genbench.display().to_string());
    let args: Vec<String> = suite_args.iter().map(|a| shell_quote(a)).collect();
    let args = args.join(" ");
    let mut generate = header(&format!("genbench-{suite_name}-generate"), &logs.join("generate-%A_%a.log"), s, Some(s.array_size));
    generate.push_str("# Shard I of N: samples and Inception features of every generate run (array task I).\n");
    generate.push_str(&format!(
        "exec {exe} suite {args} --shard \"$((SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN))/${{SLURM_ARRAY_TASK_COUNT}}\"\n"
    ));
    let merge_settings = SlurmSettings { gpus_per_task: s.gpus_per_task.map(|_| 1), ..s.clone() };
    let mut merge = header(&format!("genbench-{suite_name}-merge"), &logs.join("merge-%j.log"), &merge_settings, None);
    merge.push_str("# After every array task succeeded: merge, evaluate, profile, report.\n");
    merge.push_str(&format!("exec {exe} suite {args} --merge-shards\n"));
    let scripts = SlurmScripts { dir: dir.to_path_buf(), generate: dir.join("generate.sbatch"), merge: dir.join("merge.sbatch") };
    for (path, text) in [(&scripts.generate, &generate), (&scripts.merge, &merge)] {
        genbench_metrics::npz::write_file_atomically(path, |f| {
            use std::io::Write;
            f.write_all(text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))
        })?;
    }
    Ok(scripts)
}

/// `sbatch` on PATH, or an error saying what to do.
pub fn find_sbatch() -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join("sbatch");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "--submit needs Slurm's `sbatch`, which is not on PATH; run this on a Slurm login node, or \
         leave out --submit and submit the scripts there yourself"
    )
}

/// Job ids of a submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    pub generate_job: String,
    pub merge_job: String,
}

fn sbatch(sbatch: &Path, args: &[String]) -> Result<String> {
    let out = Command::new(sbatch).args(args).output().with_context(|| format!("cannot run {}", sbatch.display()))?;
    ensure!(out.status.success(), "sbatch {} failed ({}): {}", args.join(" "), out.status, String::from_utf8_lossy(&out.stderr).trim());
    // `--parsable` prints `jobid` or `jobid;cluster`.
    let text = String::from_utf8_lossy(&out.stdout);
    let id = text.trim().split(';').next().unwrap_or("").to_string();
    ensure!(!id.is_empty() && id.chars().all(|c| c.is_ascii_digit()), "sbatch printed no job id: {text:?}");
    Ok(id)
}

/// Submits the array job, then the merge job with `--dependency=afterok:<array job>`.
pub fn submit(sbatch_path: &Path, scripts: &SlurmScripts) -> Result<Submitted> {
    let generate_job = sbatch(sbatch_path, &["--parsable".into(), scripts.generate.display().to_string()])?;
    let merge_job = sbatch(
        sbatch_path,
        &[
            "--parsable".into(),
            format!("--dependency=afterok:{generate_job}"),
            "--kill-on-invalid-dep=yes".into(),
            scripts.merge.display().to_string(),
        ],
    )
    .with_context(|| {
        format!("the array job {generate_job} was submitted; cancel it with `scancel {generate_job}` or submit the merge job by hand")
    })?;
    Ok(Submitted { generate_job, merge_job })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_name_the_shard_and_the_dependency_work() {
        let d = tempfile::tempdir().unwrap();
        let s = SlurmSettings { partition: Some("gpu".into()), gpus_per_task: Some(2), array_size: 8, time: Some("4:00:00".into()) };
        let args = vec!["/data/my suite.toml".to_string(), "--results".into(), "/scratch/results".into()];
        let scripts = write_scripts(d.path(), "tiny", Path::new("/opt/genbench"), &args, &s).unwrap();
        let g = std::fs::read_to_string(&scripts.generate).unwrap();
        for needle in [
            "#SBATCH --array=0-7",
            "#SBATCH --partition=gpu",
            "#SBATCH --gpus-per-task=2",
            "#SBATCH --time=4:00:00",
            "'/data/my suite.toml'",
            "--shard \"$((SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN))/${SLURM_ARRAY_TASK_COUNT}\"",
        ] {
            assert!(g.contains(needle), "{needle} not in\n{g}");
        }
        let m = std::fs::read_to_string(&scripts.merge).unwrap();
        assert!(m.contains("--merge-shards") && !m.contains("--array") && m.contains("--gpus-per-task=1"), "{m}");
        assert!(d.path().join("logs").is_dir());
        let bad = SlurmSettings { array_size: 0, ..s };
        assert!(write_scripts(d.path(), "tiny", Path::new("/opt/genbench"), &args, &bad).unwrap_err().to_string().contains("at least 1"));
    }

    #[test]
    fn quoting_survives_the_shell() {
        assert_eq!(shell_quote("plain/path.toml"), "plain/path.toml");
        assert_eq!(shell_quote("it's here"), r"'it'\''s here'");
        assert_eq!(shell_quote(""), "''");
    }
}
