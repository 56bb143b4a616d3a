//! Device choice: `cpu`, `cuda:N` or `auto` (first GPU when compiled with `cuda` and the driver sees one).

use anyhow::{anyhow, bail, Result};
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

/// Written as on the command line (`cpu`, `cuda:0`, `auto`), e.g. in a suite's manifest.
impl serde::Serialize for DeviceChoice {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
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
    /// Opens the device. Every way a CUDA request can fail is an error that says which and what
    /// to do, before any work, never a silent fall-back to the CPU: a build without the `cuda`
    /// feature, a driver that does not start, an ordinal out of range.
    pub fn open(self) -> Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            // The first GPU when this build has CUDA and the driver sees one; else the CPU.
            Self::Auto => match crate::cuda::device_count() {
                Ok(n) if n > 0 => Self::Cuda(0).open(),
                _ => Ok(Device::Cpu),
            },
            Self::Cuda(i) => {
                if !cfg!(feature = "cuda") {
                    bail!(
                        "device cuda:{i} requested, but this genbench was built without CUDA; \
                         rebuild with `cargo build --release --features cuda` (needs the CUDA toolkit) or use --device cpu"
                    );
                }
                let n = crate::cuda::device_count().map_err(|e| {
                    anyhow!(
                        "device cuda:{i} requested, but the CUDA driver did not start ({e:#}); check that an NVIDIA \
                         driver is installed and a GPU is visible (`nvidia-smi`, CUDA_VISIBLE_DEVICES), or use --device cpu"
                    )
                })?;
                if i >= n {
                    let have = match n {
                        0 => "no CUDA device".to_string(),
                        1 => "one CUDA device (cuda:0)".to_string(),
                        n => format!("{n} CUDA devices (cuda:0 to cuda:{})", n - 1),
                    };
                    bail!("device cuda:{i} requested, but this machine has {have}; pick another --device (or cpu)");
                }
                Device::new_cuda(i).map_err(|e| anyhow!("device cuda:{i} could not be opened: {e}; pick another --device (or cpu)"))
            }
        }
    }
}

/// Human-readable device name for manifests and logs, e.g. `cpu (2 threads)` or
/// `cuda:0 (NVIDIA H200, sm 9.0, 139.8 GiB, driver CUDA 12.8, toolkit 13.4)`.
pub fn describe(dev: &Device) -> String {
    match dev {
        Device::Cpu => format!("cpu ({} threads)", crate::threads::num_threads()),
        Device::Cuda(_) => match crate::cuda::device_info(dev) {
            Ok(Some(info)) => format!("cuda:{} ({})", info.ordinal, info.summary()),
            Ok(None) => "cuda".to_string(),
            Err(e) => format!("cuda (facts unavailable: {e:#})"),
        },
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
