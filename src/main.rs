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
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print versions, machine facts and the compiled features.
    Info,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    genbench_runtime::threads::configure(cli.threads);
    let result = match cli.command {
        Command::Info => cmd::info::run(),
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
