//! Device choice: `cpu`, `cuda:N` or `auto` (first GPU when compiled with `cuda` and one is present).

use anyhow::{bail, Result};
use candle_core::Device;
use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    #[default]
    Cpu,
    Cuda(usize),
    Auto,
}

impl FromStr for DeviceChoice {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim().to_ascii_lowercase();
        match s.as_str() {
            "cpu" => Ok(Self::Cpu),
            "auto" => Ok(Self::Auto),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            _ => match s.strip_prefix("cuda:") {
                Some(n) => match n.parse() {
                    Ok(i) => Ok(Self::Cuda(i)),
                    Err(_) => bail!("bad device '{s}': expected cpu, cuda:N or auto"),
                },
                None => bail!("bad device '{s}': expected cpu, cuda:N or auto"),
            },
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => write!(f, "cpu"),
            Self::Cuda(i) => write!(f, "cuda:{i}"),
            Self::Auto => write!(f, "auto"),
        }
    }
}

impl DeviceChoice {
    /// Opens the device. A CUDA request in a build without the `cuda` feature is an error that
    /// says how to get one, never a silent fall-back to the CPU.
    pub fn open(self) -> Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Auto => {
                if candle_core::utils::cuda_is_available() {
                    Ok(Device::new_cuda(0)?)
                } else {
                    Ok(Device::Cpu)
                }
            }
            Self::Cuda(i) => {
                if !candle_core::utils::cuda_is_available() {
                    bail!(
                        "device cuda:{i} requested, but this genbench was built without CUDA; \
                         rebuild with `cargo build --release --features cuda` (needs the CUDA toolkit) or use --device cpu"
                    );
                }
                let dev = Device::new_cuda(i)?;
                Ok(dev)
            }
        }
    }
}

/// Human-readable device name for manifests and logs.
pub fn describe(dev: &Device) -> String {
    match dev {
        Device::Cpu => format!("cpu ({} threads)", crate::threads::num_threads()),
        Device::Cuda(_) => "cuda".to_string(),
        Device::Metal(_) => "metal".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn parses_device_strings() {
        assert_eq!("cpu".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cpu);
        assert_eq!("cuda:1".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cuda(1));
        assert_eq!("AUTO".parse::<DeviceChoice>().unwrap(), DeviceChoice::Auto);
        assert!("tpu".parse::<DeviceChoice>().is_err());
        assert!("cuda:x".parse::<DeviceChoice>().is_err());
    }
    #[test]
    fn auto_opens_something() {
        DeviceChoice::Auto.open().unwrap();
    }
    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_feature_is_a_clear_error() {
        let e = DeviceChoice::Cuda(0).open().unwrap_err().to_string();
        assert!(e.contains("--features cuda"), "{e}");
    }
}
