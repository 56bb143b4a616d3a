//! The cluster side of `genbench suite`: `--shard I/N` (generation + features of one shard of
//! every generate run), `--merge-shards` (merge, evaluate, report), and `--slurm` (write, and
//! with `--submit` submit, an sbatch array for the first and a dependent job for the second).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use genbench_harness::runner::RunnerOptions;
use genbench_harness::sampling::Shard;
use genbench_harness::slurm::{find_sbatch, submit, write_scripts, SlurmSettings};
use genbench_harness::suite::Suite;
use genbench_harness::suite_shards::run_suite_shard;

use super::suite::SuiteArgs;

#[derive(clap::Args, Debug, Default)]
pub struct ClusterArgs {
    /// Sample and extract features for shard I of N of every generate run, then stop (the work
    /// of one Slurm array task); afterwards `--merge-shards`.
    #[arg(long, allow_hyphen_values = true, conflicts_with_all = ["merge_shards", "slurm", "dry_run"])]
    pub shard: Option<Shard>,
    /// Check that every shard is done, merge their samples and features, evaluate and report.
    #[arg(long, conflicts_with_all = ["slurm", "dry_run"])]
    pub merge_shards: bool,
    /// Write Slurm scripts: an array job of `--shard` tasks and a dependent `--merge-shards` job.
    #[arg(long, conflicts_with = "dry_run")]
    pub slurm: bool,
    /// Slurm partition of both jobs.
    #[arg(long, requires = "slurm")]
    pub partition: Option<String>,
    /// GPUs per array task (the merge job gets one).
    #[arg(long, requires = "slurm")]
    pub gpus_per_task: Option<u32>,
    /// Number of array tasks (shards).
    #[arg(long, requires = "slurm")]
    pub array_size: Option<usize>,
    /// Time limit of each job (Slurm format, e.g. 4:00:00).
    #[arg(long, requires = "slurm")]
    pub time: Option<String>,
    /// Also submit both jobs with sbatch.
    #[arg(long, requires = "slurm")]
    pub submit: bool,
}

impl ClusterArgs {
    pub fn any(&self) -> bool {
        self.shard.is_some() || self.merge_shards || self.slurm
    }
}

fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("cannot make {} absolute", p.display()))
}

/// Runs `--shard` or `--slurm` (`--merge-shards` reports like a plain run, in `suite.rs`).
pub fn run(suite: &Suite, args: &SuiteArgs, opts: RunnerOptions) -> Result<()> {
    let c = &args.cluster;
    if let Some(shard) = c.shard {
        let outcome = run_suite_shard(suite, &opts, shard)?;
        let sampled: usize = outcome.runs.iter().map(|r| r.1).sum();
        println!(
            "shard {shard} done: {sampled} batches sampled over {} generate runs; when every shard is done: genbench suite {} --merge-shards",
            outcome.runs.len(),
            args.file.display()
        );
        return Ok(());
    }
    // --slurm: everything is checked before anything is written.
    let settings = SlurmSettings {
        partition: c.partition.clone(),
        gpus_per_task: c.gpus_per_task,
        array_size: c.array_size.unwrap_or(1),
        time: c.time.clone(),
    };
    let sbatch = if c.submit { Some(find_sbatch()?) } else { None };
    let exe = std::env::current_exe().context("cannot find the genbench binary's path")?;
    let results = absolute(&args.results)?;
    let mut suite_args = vec![absolute(&args.file)?.display().to_string(), "--results".into(), results.display().to_string()];
    if !args.only.is_empty() {
        suite_args.extend(["--only".into(), args.only.join(",")]);
    }
    if let Some(dir) = &args.cache_dir {
        suite_args.extend(["--cache-dir".into(), absolute(dir)?.display().to_string()]);
    }
    suite_args.extend(["--device".into(), args.device.device.to_string()]);
    if let Some(dtype) = args.device.dtype {
        suite_args.extend(["--dtype".into(), dtype.name().to_string()]);
    }
    if let Some(convention) = args.convention {
        suite_args.extend(["--convention".into(), convention.to_string()]);
    }
    if let Some(file) = &args.inception_weights {
        suite_args.extend(["--inception-weights".into(), absolute(file)?.display().to_string()]);
    }
    let dir = results.join(&suite.name).join("slurm");
    let scripts = write_scripts(&dir, &suite.name, &exe, &suite_args, &settings)?;
    println!("wrote {} (array of {} tasks) and {}", scripts.generate.display(), settings.array_size, scripts.merge.display());
    match sbatch {
        Some(sbatch) => {
            let ids = submit(&sbatch, &scripts)?;
            println!("submitted array job {} and merge job {} (afterok:{})", ids.generate_job, ids.merge_job, ids.generate_job);
        }
        None => println!(
            "submit with: jid=$(sbatch --parsable {}) && sbatch --dependency=afterok:$jid {}",
            scripts.generate.display(),
            scripts.merge.display()
        ),
    }
    Ok(())
}
