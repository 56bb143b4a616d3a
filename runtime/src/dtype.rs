//! Float-type policy. Metrics always run in f32 (parity with the reference evaluators) and
//! accumulate statistics in f64; generators may run in f16/bf16 on a GPU for speed, but the
//! parity tests and CPU runs use f32 (candle's CPU conv has no bf16 kernel).

use anyhow::{bail, Result};
use candle_core::{DType, Device};
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DTypePolicy {
    #[default]
    F32,
    F16,
    BF16,
}

impl FromStr for DTypePolicy {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(Self::F32),
            "f16" | "fp16" | "float16" => Ok(Self::F16),
            "bf16" | "bfloat16" => Ok(Self::BF16),
            _ => bail!("bad dtype '{s}': expected f32, f16 or bf16"),
        }
    }
}

impl DTypePolicy {
    /// The dtype generator weights and activations use on `dev`.
    pub fn compute_dtype(self, dev: &Device) -> Result<DType> {
        match (self, dev) {
            (Self::F32, _) => Ok(DType::F32),
            (Self::BF16, Device::Cpu) => {
                bail!("bf16 is not supported on the CPU (candle's CPU conv has no bf16 kernel); use --dtype f32")
            }
            (Self::F16, _) => Ok(DType::F16),
            (Self::BF16, _) => Ok(DType::BF16),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::BF16 => "bf16",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn policy() {
        assert_eq!(DTypePolicy::from_str("bf16").unwrap(), DTypePolicy::BF16);
        assert!(DTypePolicy::BF16.compute_dtype(&Device::Cpu).is_err());
        assert_eq!(DTypePolicy::F32.compute_dtype(&Device::Cpu).unwrap(), DType::F32);
    }
}
