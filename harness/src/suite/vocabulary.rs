//! The suite vocabulary: families, run kinds, metrics, dtypes and evaluators as suite files
//! write them.

use serde::{Deserialize, Serialize};

/// Generator families, sampler settings and architecture overrides are the models crate's own
/// types, and each family validates its own settings, so a suite file accepts exactly what the
/// generators accept.
pub use genbench_models::family::{ArchOverrides, RawSettings};
pub use genbench_models::generator::Family;

/// The family as written in suite files (its serde name, which the models crate owns).
pub fn family_name(family: Family) -> &'static str {
    family.name()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunKind {
    /// Sample with real weights and score against a reference batch.
    #[default]
    Generate,
    /// Time sampling (real or random weights), per step; no image metrics.
    Profile,
    /// Compute metrics on fixed images and compare with known values.
    MetricCheck,
}

/// The workspace's one metric vocabulary (image metrics and cost metrics).
pub use genbench_metrics::evaluate::Metric;
pub use genbench_metrics::precision_recall::DistancePrecision;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dtype {
    #[default]
    F32,
    F16,
    Bf16,
}

/// Whose preprocessing, IS splits and KID subsets the metrics follow (suite key `convention`,
/// `genbench eval --convention`): `adm` (guided-diffusion's evaluator, the default; VAR,
/// LlamaGen, MAR, DiT numbers), `torch-fidelity` or `clean-fid`.
pub use genbench_metrics::convention::Convention;
