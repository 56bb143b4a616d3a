//! One module per subcommand.
pub mod autonat_search;
pub mod bench;
pub mod eval;
pub mod fetch_ref;
pub mod fit;
pub mod info;
pub mod merge;
pub mod model_registry;
pub mod profile;
pub mod quickstart;
pub mod sample;
pub mod suite;
pub mod suite_cluster;

use genbench_runtime::{DTypePolicy, DeviceChoice};

/// Where networks run and in which float type: the same two flags, with the same defaults and
/// meaning, on every command that runs a network (`#[command(flatten)]` it).
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct DeviceArgs {
    /// cpu, cuda:N or auto (the first GPU when built with `--features cuda` and one is present,
    /// else the CPU). Default: auto (a suite file's `device` for `suite`).
    #[arg(long)]
    pub device: Option<DeviceChoice>,
    /// Float type of generator weights and activations: f32, f16 or bf16. Default: what each run
    /// or model asks for (f32 unless set). The runtime's dtype table refuses what the device
    /// cannot run (e.g. bf16 below compute capability 8.0). Metrics always run in f32.
    #[arg(long)]
    pub dtype: Option<DTypePolicy>,
}

impl DeviceArgs {
    /// `--device`, else auto.
    pub fn device(&self) -> DeviceChoice {
        self.device.unwrap_or(DeviceChoice::Auto)
    }

    /// The generator's dtype for commands without a per-run setting: `--dtype`, else f32.
    pub fn generator_dtype(&self) -> DTypePolicy {
        self.dtype.unwrap_or_default()
    }

    /// For commands whose networks run in f32 only (the metrics: parity with the reference
    /// evaluators): refuses any other `--dtype` with the reason.
    pub fn require_f32(&self, command: &str) -> anyhow::Result<()> {
        match self.dtype {
            None | Some(DTypePolicy::F32) => Ok(()),
            Some(other) => anyhow::bail!(
                "`genbench {command}` runs the Inception network in f32 only (parity with the ADM evaluator); --dtype {} is not allowed here",
                other.name()
            ),
        }
    }
}
