//! Which tool's conventions an evaluation follows (METRICS.md sections 1, 3, 8, 10). The metric
//! definitions are shared; the tools differ in the preprocessing in front of the network, in how
//! the Inception Score splits its rows, and in how KID draws its subsets.
//!
//! | | preprocessing | IS | KID subsets |
//! |---|---|---|---|
//! | `adm` (guided-diffusion evaluator) | TF1 bilinear | contiguous splits of 5000, float32 | ADM has none: torch-fidelity's draws, subset shrunk to the smaller set |
//! | `torch-fidelity` | TF1 bilinear (bit-identical) | `RandomState(2020)` shuffle, 10 splits, float64 | `RandomState(2020)`, exactly 1000 rows (fewer is an error) |
//! | `clean-fid` | Pillow bicubic ("clean") | none (clean-fid defines no IS) | `np.random.seed(seed)`, `min(n_x, n_y, 1000)` rows |

use anyhow::{bail, Result};
use std::fmt;
use std::str::FromStr;

use crate::inception_score::{
    inception_score_adm, inception_score_torch_fidelity, InceptionScore, ADM_SPLIT_SIZE, TORCH_FIDELITY_SEED, TORCH_FIDELITY_SPLITS,
};
use crate::kid::{KidConfig, KidSubsetRule, TORCH_FIDELITY_KID_SEED};
use crate::preprocess::Preprocess;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Convention {
    #[default]
    Adm,
    TorchFidelity,
    CleanFid,
}

/// How the Inception Score splits its rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "rule", rename_all = "kebab-case")]
pub enum IsSplits {
    /// ADM: contiguous blocks of `split_size` rows in file order, float32.
    Contiguous { split_size: usize },
    /// torch-fidelity: rows permuted by `RandomState(seed)`, `splits` splits `i N / s`, float64.
    Shuffled { splits: usize, seed: u32 },
}

impl Convention {
    pub const ALL: [Convention; 3] = [Convention::Adm, Convention::TorchFidelity, Convention::CleanFid];

    pub fn name(self) -> &'static str {
        match self {
            Self::Adm => "adm",
            Self::TorchFidelity => "torch-fidelity",
            Self::CleanFid => "clean-fid",
        }
    }

    /// The resize / normalisation the tool applies before the network.
    pub fn preprocess(self) -> Preprocess {
        match self {
            Self::Adm | Self::TorchFidelity => Preprocess::Adm,
            Self::CleanFid => Preprocess::Clean,
        }
    }

    /// The tool's IS splits, or `None` where the tool computes no IS.
    pub fn is_splits(self) -> Option<IsSplits> {
        match self {
            Self::Adm => Some(IsSplits::Contiguous { split_size: ADM_SPLIT_SIZE }),
            Self::TorchFidelity => Some(IsSplits::Shuffled { splits: TORCH_FIDELITY_SPLITS, seed: TORCH_FIDELITY_SEED }),
            Self::CleanFid => None,
        }
    }

    /// Why IS is not computed under this convention (`None` where it is).
    pub fn no_is_reason(self) -> Option<&'static str> {
        match self {
            Self::CleanFid => Some("clean-fid defines no Inception Score; use --convention torch-fidelity or adm for IS"),
            _ => None,
        }
    }

    /// IS of `logits` (row-major `[n, classes]`) the tool's way.
    pub fn inception_score(self, logits: &[f32], classes: usize) -> Result<InceptionScore> {
        match self.is_splits() {
            Some(IsSplits::Contiguous { split_size }) => inception_score_adm(logits, classes, split_size),
            Some(IsSplits::Shuffled { splits, seed }) => inception_score_torch_fidelity(logits, classes, splits, seed),
            None => bail!("{}", self.no_is_reason().unwrap_or("no Inception Score under this convention")),
        }
    }

    /// The tool's KID subsets; `seed` overrides the default seed (torch-fidelity's 2020; for
    /// clean-fid, which draws from numpy's unseeded global generator, 2020 as well so that a run
    /// is reproducible: clean-fid gives the same value after `np.random.seed(2020)`).
    pub fn kid_config(self, seed: Option<u64>) -> KidConfig {
        let rule = match self {
            Self::TorchFidelity => KidSubsetRule::Exact,
            Self::Adm | Self::CleanFid => KidSubsetRule::Shrink,
        };
        KidConfig { seed: seed.unwrap_or(TORCH_FIDELITY_KID_SEED), rule, ..KidConfig::default() }
    }
}

impl FromStr for Convention {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "adm" => Ok(Self::Adm),
            "torch-fidelity" | "torchfidelity" => Ok(Self::TorchFidelity),
            "clean-fid" | "cleanfid" => Ok(Self::CleanFid),
            other => bail!("unknown convention '{other}': expected adm, torch-fidelity or clean-fid"),
        }
    }
}

impl fmt::Display for Convention {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl serde::Serialize for Convention {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// The same names as [`FromStr`] (suite files), its message as the error.
impl<'de> serde::Deserialize<'de> for Convention {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(|e: anyhow::Error| serde::de::Error::custom(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_bad_names_are_named() {
        for c in Convention::ALL {
            assert_eq!(c.to_string().parse::<Convention>().unwrap(), c);
        }
        assert_eq!("clean_fid".parse::<Convention>().unwrap(), Convention::CleanFid);
        let err = "tf".parse::<Convention>().unwrap_err().to_string();
        assert!(err.contains("'tf'") && err.contains("torch-fidelity"), "{err}");
    }

    #[test]
    fn each_tool_selects_its_own_rules() {
        assert_eq!(Convention::CleanFid.preprocess(), Preprocess::Clean);
        assert_eq!(Convention::TorchFidelity.preprocess(), Preprocess::Adm);
        assert_eq!(Convention::TorchFidelity.kid_config(None).rule, KidSubsetRule::Exact);
        assert_eq!(Convention::CleanFid.kid_config(Some(5)).seed, 5);
        assert!(Convention::CleanFid.inception_score(&[0.0; 8], 2).unwrap_err().to_string().contains("clean-fid"));
        // Class-sorted logits: contiguous splits see one class each (IS 1), a shuffle mixes them.
        let logits: Vec<f32> = (0..20).flat_map(|i| [if i < 10 { 20.0 } else { 0.0 }, if i < 10 { 0.0 } else { 20.0 }]).collect();
        let adm = inception_score_adm(&logits, 2, 10).unwrap();
        assert!((adm.mean - 1.0).abs() < 1e-4);
        let tf = Convention::TorchFidelity.inception_score(&logits, 2).unwrap();
        assert_eq!(tf.split_scores.len(), TORCH_FIDELITY_SPLITS);
    }
}
