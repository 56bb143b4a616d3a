//! Float-type policy: ONE table ([`SUPPORT`]) says which compute dtype runs on which device; every
//! command and the suite runner ask [`DTypePolicy::compute_dtype`], so an unsupported pair fails
//! the same way everywhere, before any work.
//!
//! Generators run in f32, f16 or bf16. Metrics (the FID Inception) always run in f32
//! ([`METRICS_DTYPE`], parity with the reference evaluators) and accumulate statistics in f64.

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

/// The FID Inception's dtype, whatever `--dtype` says (the ADM numbers are float32 numbers).
pub const METRICS_DTYPE: DType = DType::F32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    Cpu,
    Cuda,
    Metal,
}

impl DeviceKind {
    pub fn of(dev: &Device) -> Self {
        match dev {
            Device::Cpu => Self::Cpu,
            Device::Cuda(_) => Self::Cuda,
            Device::Metal(_) => Self::Metal,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Support {
    Yes,
    /// Needs at least this CUDA compute capability (candle compiles the kernels only there).
    MinCapability(u32, u32),
    No,
}

/// Which generator dtype runs where, and why. On the CPU candle has no bf16 conv2d kernel
/// (its im2col feeds gemm, which has no bf16 path): genbench's `Conv2d` computes bf16
/// convolutions in f32 and rounds the result to bf16, as PyTorch's CPU bf16 convolution
/// accumulates in f32. candle's bf16 CUDA kernels are compiled for sm_80 and newer only.
pub const SUPPORT: &[(DeviceKind, DTypePolicy, Support)] = &[
    (DeviceKind::Cpu, DTypePolicy::F32, Support::Yes),
    (DeviceKind::Cpu, DTypePolicy::F16, Support::Yes),
    (DeviceKind::Cpu, DTypePolicy::BF16, Support::Yes),
    (DeviceKind::Cuda, DTypePolicy::F32, Support::Yes),
    (DeviceKind::Cuda, DTypePolicy::F16, Support::MinCapability(5, 3)),
    (DeviceKind::Cuda, DTypePolicy::BF16, Support::MinCapability(8, 0)),
    (DeviceKind::Metal, DTypePolicy::F32, Support::Yes),
    (DeviceKind::Metal, DTypePolicy::F16, Support::Yes),
    (DeviceKind::Metal, DTypePolicy::BF16, Support::No),
];

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
    pub fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::F16 => DType::F16,
            Self::BF16 => DType::BF16,
        }
    }

    /// The dtype generator weights and activations use on `dev`, or an error naming the device,
    /// the dtype and what to pick instead.
    pub fn compute_dtype(self, dev: &Device) -> Result<DType> {
        let kind = DeviceKind::of(dev);
        let support = SUPPORT.iter().find(|(k, p, _)| *k == kind && *p == self).map(|(_, _, s)| *s).unwrap_or(Support::No);
        match support {
            Support::Yes => Ok(self.dtype()),
            Support::No => bail!("--dtype {} is not supported on {kind:?} devices; use --dtype f32", self.name()),
            Support::MinCapability(major, minor) => {
                let info = crate::cuda::device_info(dev)?;
                match info {
                    Some(info) if info.capability() >= (major, minor) => Ok(self.dtype()),
                    Some(info) => bail!(
                        "--dtype {} needs CUDA compute capability {major}.{minor} or newer, but cuda:{} ({}) has {}; use --dtype {} or f32",
                        self.name(),
                        info.ordinal,
                        info.name,
                        info.compute_capability,
                        if self == Self::BF16 { "f16" } else { "f32" }
                    ),
                    None => bail!("--dtype {}: could not read the device's compute capability", self.name()),
                }
            }
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
        assert_eq!(DTypePolicy::BF16.compute_dtype(&Device::Cpu).unwrap(), DType::BF16);
        assert_eq!(DTypePolicy::F16.compute_dtype(&Device::Cpu).unwrap(), DType::F16);
        assert_eq!(DTypePolicy::F32.compute_dtype(&Device::Cpu).unwrap(), DType::F32);
        assert!(DTypePolicy::from_str("f8").is_err());
    }
    #[test]
    fn the_table_covers_every_pair_once() {
        for kind in [DeviceKind::Cpu, DeviceKind::Cuda, DeviceKind::Metal] {
            for p in [DTypePolicy::F32, DTypePolicy::F16, DTypePolicy::BF16] {
                assert_eq!(SUPPORT.iter().filter(|(k, q, _)| *k == kind && *q == p).count(), 1, "{kind:?} {p:?}");
            }
        }
        assert_eq!(METRICS_DTYPE, DType::F32);
    }
}
