//! The cluster side of `genbench suite`: `--shard I/N` (generation + features of one shard of
//! every generate run), `--merge-shards` (merge, evaluate, report), and `--slurm` (write, and
//! with `--submit` submit, an sbatch array for the first and a dependent job for the second).

use anyhow::{Context, Result};
use genbench_harness::runner::RunnerOptions;
use genbench_harness::sampling::Shard;
use genbench_harness::slurm::{find_sbatch, submit, suite_job_args, write_scripts, SlurmSettings, SuiteInputs};
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
    let flags = [
        ("--device", args.device.device.map(|d| d.to_string())),
        ("--dtype", args.device.dtype.map(|d| d.name().to_string())),
        ("--convention", args.convention.map(|c| c.to_string())),
    ];
    let inputs = SuiteInputs {
        file: &args.file,
        results: &args.results,
        cache_dir: args.cache_dir.as_deref(),
        inception_weights: args.inception_weights.as_deref(),
    };
    let suite_args = suite_job_args(&inputs, &args.only, &flags)?;
    let results = std::path::absolute(&args.results).context("cannot make --results absolute")?;
    let dir = results.join(&suite.name).join("slurm");
    let scripts = write_scripts(&dir, &suite.name, &exe, &suite_args, &settings)?;
    println!("wrote {} (array of {} tasks) and {}", scripts.generate.display(), settings.array_size, scripts.merge.display());
    match sbatch {
        Some(sbatch) => {
            let ids = submit(&sbatch, &scripts)?;
            println!("submitted array job {} and merge job {} (afterok:{})", ids.generate_job, ids.merge_job, ids.generate_job);
        }
        None => println!("submit with: {}", scripts.submit_command()),
    }
    Ok(())
}
