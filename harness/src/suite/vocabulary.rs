//! The suite vocabulary: families, run kinds, metrics, dtypes and evaluators as suite files
//! write them.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Generator families, sampler settings and architecture overrides are the models crate's own
/// types, and each family validates its own settings, so a suite file accepts exactly what the
/// generators accept.
pub use genbench_models::family::{ArchOverrides, RawSettings};
pub use genbench_models::generator::Family;

/// The family as written in suite files (its serde name).
pub fn family_name(family: Family) -> &'static str {
    match family {
        Family::Var => "var",
        Family::RasterAr => "raster_ar",
        Family::Mar => "mar",
        Family::AutoNat => "auto_nat",
    }
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    Fid,
    Sfid,
    Is,
    Precision,
    Recall,
    Kid,
    /// Wall-clock seconds per generated image.
    SecPerImage,
    /// `sec_per_image` divided by that of the run named in `relative_to`.
    RelTime,
    /// Analytic forward GFLOP per image.
    GflopPerImage,
    /// `gflop_per_image` divided by that of the run named in `relative_to`.
    RelGflop,
}

impl Metric {
    pub const ALL: [Metric; 10] = [
        Metric::Fid,
        Metric::Sfid,
        Metric::Is,
        Metric::Precision,
        Metric::Recall,
        Metric::Kid,
        Metric::SecPerImage,
        Metric::RelTime,
        Metric::GflopPerImage,
        Metric::RelGflop,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Metric::Fid => "fid",
            Metric::Sfid => "sfid",
            Metric::Is => "is",
            Metric::Precision => "precision",
            Metric::Recall => "recall",
            Metric::Kid => "kid",
            Metric::SecPerImage => "sec_per_image",
            Metric::RelTime => "rel_time",
            Metric::GflopPerImage => "gflop_per_image",
            Metric::RelGflop => "rel_gflop",
        }
    }

    /// Computed from Inception features of images.
    pub fn is_image_metric(self) -> bool {
        matches!(
            self,
            Metric::Fid | Metric::Sfid | Metric::Is | Metric::Precision | Metric::Recall | Metric::Kid
        )
    }

    /// Compares samples with a reference set (IS alone does not).
    pub fn needs_reference(self) -> bool {
        self.is_image_metric() && self != Metric::Is
    }

    /// The absolute metric a relative one divides, if it is relative.
    pub fn relative_base(self) -> Option<Metric> {
        match self {
            Metric::RelTime => Some(Metric::SecPerImage),
            Metric::RelGflop => Some(Metric::GflopPerImage),
            _ => None,
        }
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dtype {
    #[default]
    F32,
    F16,
    Bf16,
}

/// Which reference implementation's preprocessing and formulas the metrics follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Evaluator {
    /// guided-diffusion `evaluations/evaluator.py` (VAR, LlamaGen, MAR, DiT numbers).
    #[default]
    Adm,
    TorchFidelity,
    CleanFid,
}

