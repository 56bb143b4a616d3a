//! genbench: one binary to sample, profile and evaluate image generators.
//!
//! Thin dispatch only: each subcommand lives in `cmd/<name>.rs` and calls into the library
//! crates (runtime, metrics, models, harness).

use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod cmd;

#[derive(Parser)]
#[command(name = "genbench", version, about = "Benchmark and evaluation harness for image generators")]
struct Cli {
    /// CPU threads for tensor work (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// CPU kernel route: `fast` (genbench's CPU kernels) or `generic` (candle ops only, the route
    /// GPUs take). Default: $GENBENCH_KERNELS, else fast.
    #[arg(long, global = true, value_name = "generic|fast")]
    kernels: Option<genbench_runtime::kernels::KernelRoute>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print versions, machine facts and the compiled features.
    Info,
    /// Evaluate samples against a reference: FID, sFID, IS, precision/recall (ADM), KID.
    Eval(cmd::eval::EvalArgs),
    /// FID/sFID statistics (mu, sigma, mu_s, sigma_s) of an image set, written as an .npz.
    Stats(cmd::eval::StatsArgs),
    /// Fetch ADM's reference batch (imagenet256 | imagenet512) into the cache; prints its path.
    FetchRef(cmd::fetch_ref::FetchRefArgs),
    /// Micro-benchmarks: `bench inception` prints the FID Inception's img/s.
    Bench(cmd::bench::BenchArgs),
    /// AutoNAT strategy search: finite-difference SGD on FID over the per-step strategy.
    AutonatSearch(cmd::autonat_search::AutonatSearchArgs),
    /// Sample class-conditional images into an ADM-format .npz (resumable).
    Sample(Box<cmd::sample::SampleArgs>),
    /// Assemble the parts of sharded `sample` runs into one .npz (same bytes as one run).
    Merge(cmd::merge::MergeArgs),
    /// Per-step wall time, FLOPs and GFLOP/s of a generator (CSV + summary).
    Profile(Box<cmd::profile::ProfileArgs>),
    /// Fit L = (beta X)^alpha to a sweep or training log (CSV / JSON lines), or to its compute frontier.
    Fit(cmd::fit::FitArgs),
    /// Run a suite file: every run in order, cached, with a report; `--dry-run` plans it.
    Suite(cmd::suite::SuiteArgs),
    /// The main job: profile every family at a matched small size, fit cost exponents, self-check metrics.
    Quickstart(cmd::quickstart::QuickstartArgs),
}

fn main() -> ExitCode {
    genbench_runtime::memory::keep_freed_memory();
    let cli = Cli::parse();
    genbench_runtime::threads::configure(cli.threads);
    if let Err(err) = genbench_runtime::kernels::configure(cli.kernels) {
        eprintln!("error: {err:#}");
        return ExitCode::FAILURE;
    }
    let result = match cli.command {
        Command::Info => cmd::info::run(),
        Command::Eval(args) => cmd::eval::run_eval(args),
        Command::Stats(args) => cmd::eval::run_stats(args),
        Command::FetchRef(args) => cmd::fetch_ref::run(args),
        Command::Bench(args) => cmd::bench::run(args),
        Command::AutonatSearch(args) => cmd::autonat_search::run(args),
        Command::Sample(args) => cmd::sample::run(*args),
        Command::Merge(args) => cmd::merge::run(args),
        Command::Profile(args) => cmd::profile::run(*args),
        Command::Fit(args) => cmd::fit::run_fit(args),
        Command::Suite(args) => cmd::suite::run(args),
        Command::Quickstart(args) => cmd::quickstart::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // `{:#}` prints the whole context chain on one line: file, problem, what to do.
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
