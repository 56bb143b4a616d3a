//! What a suite run produces: the plain records the runner fills in and the report, manifest and
//! plots read. Nothing here knows how the numbers were measured.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::suite::Metric;

/// One timed piece of one sampling step (a transformer forward, a decoder pass, a diffusion
/// loop), for one batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub family: String,
    pub model: String,
    /// Images sampled together in this call.
    pub batch: u32,
    /// 0-based step index within one image's generation.
    pub step: u32,
    /// What ran: e.g. `transformer`, `decoder`, `diffusion_head`.
    pub kind: String,
    /// New tokens processed in this step, per image.
    pub tokens: u64,
    /// Keys each new token attended to (KV-cache length or full sequence), per image.
    pub attended: u64,
    /// Wall-clock milliseconds for the whole batch, device synchronised.
    pub ms: f64,
    /// Analytic forward GFLOP (2 x MAC) for the whole batch.
    pub gflop: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum RunStatus {
    Completed,
    /// Not attempted, e.g. a checkpoint is missing; the reason says which and where.
    Skipped {
        reason: String,
    },
    /// Attempted and failed.
    Failed {
        error: String,
    },
}

impl RunStatus {
    pub fn label(&self) -> &'static str {
        match self {
            RunStatus::Completed => "completed",
            RunStatus::Skipped { .. } => "skipped",
            RunStatus::Failed { .. } => "failed",
        }
    }
}

/// Outcome of one suite run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResult {
    /// The run's `id` in the suite.
    pub id: String,
    pub family: String,
    pub model: String,
    pub status: RunStatus,
    /// Measured metrics; absent entries were not measured (skipped or failed runs have none).
    pub metrics: BTreeMap<Metric, f64>,
    /// Images generated (or evaluated, for metric checks).
    pub images: u64,
    pub seeds: Vec<u64>,
    /// Wall-clock seconds for the whole run.
    pub wall_seconds: f64,
    /// Settings as actually used (paths expanded, defaults applied).
    pub settings: serde_json::Value,
    /// SHA-256 of each weight file used, keyed by its role (`checkpoint`, `tokenizer`, ...).
    pub weight_hashes: BTreeMap<String, String>,
    pub steps: Vec<StepRecord>,
    /// Spread of each metric measured over several seeds: the sample standard deviation (N-1)
    /// of the per-seed values, whose mean is in `metrics`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub spread: BTreeMap<Metric, f64>,
    /// Image-metric evaluations, one per seed, with the diagnostics `genbench eval` reports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub evaluations: Vec<SeedEvaluation>,
    /// Metrics the run asked for that could not be computed, with the reason (e.g. IS with
    /// Inception weights that lack the classifier); the run's other metrics are kept.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub unavailable: BTreeMap<Metric, String>,
    /// Conditions a reader should know about (rank-deficient covariances, fp16 fall-backs, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// One seed's image-metric evaluation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SeedEvaluation {
    pub seed: u64,
    pub values: BTreeMap<Metric, f64>,
    /// [`genbench_metrics::evaluate::Diagnostics`] as JSON.
    pub diagnostics: serde_json::Value,
}

impl RunResult {
    /// A run that was not attempted.
    pub fn skipped(id: &str, family: &str, model: &str, reason: impl Into<String>) -> Self {
        Self {
            id: id.to_string(),
            family: family.to_string(),
            model: model.to_string(),
            status: RunStatus::Skipped { reason: reason.into() },
            metrics: BTreeMap::new(),
            images: 0,
            seeds: Vec::new(),
            wall_seconds: 0.0,
            settings: serde_json::Value::Null,
            weight_hashes: BTreeMap::new(),
            steps: Vec::new(),
            spread: BTreeMap::new(),
            evaluations: Vec::new(),
            unavailable: BTreeMap::new(),
            warnings: Vec::new(),
        }
    }
}
