//! Versions and machine facts recorded with every result.

use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct RuntimeInfo {
    pub genbench_runtime_version: &'static str,
    pub candle_version: &'static str,
    pub threads: usize,
    pub cpu_model: String,
    pub logical_cpus: usize,
    pub avx2: bool,
    pub avx512f: bool,
    pub cuda_compiled: bool,
    /// Every CUDA device the driver sees: name, compute capability, driver and toolkit versions.
    pub cuda_devices: Vec<crate::cuda::CudaDeviceInfo>,
    /// Why no CUDA device could be listed (driver missing or failing), if so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cuda_error: Option<String>,
    /// `fast` or `generic` (see [`crate::kernels`]).
    pub kernel_route: &'static str,
    pub os: &'static str,
    pub arch: &'static str,
}

/// candle's version as pinned in the workspace lock file (kept in step by a test).
pub const CANDLE_VERSION: &str = "0.11.1";

pub fn runtime_info() -> RuntimeInfo {
    let (cuda_devices, cuda_error) = match crate::cuda::all_devices() {
        Ok(d) => (d, None),
        Err(e) => (vec![], Some(e)),
    };
    RuntimeInfo {
        genbench_runtime_version: env!("CARGO_PKG_VERSION"),
        candle_version: CANDLE_VERSION,
        threads: crate::threads::num_threads(),
        cpu_model: cpu_model(),
        logical_cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        avx2: cfg!(target_arch = "x86_64") && has_feature("avx2"),
        avx512f: cfg!(target_arch = "x86_64") && has_feature("avx512f"),
        cuda_compiled: cfg!(feature = "cuda"),
        cuda_devices,
        cuda_error,
        kernel_route: crate::kernels::route().name(),
        os: std::env::consts::OS,
        arch: std::env::consts::ARCH,
    }
}

#[allow(unused_variables)]
fn has_feature(name: &str) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        match name {
            "avx2" => std::arch::is_x86_feature_detected!("avx2"),
            "avx512f" => std::arch::is_x86_feature_detected!("avx512f"),
            _ => false,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).map(|m| m.trim().to_string()))
        .unwrap_or_else(|| "unknown".to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn candle_version_matches_lock_file() {
        let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock")).unwrap();
        let needle = format!("name = \"candle-core\"\nversion = \"{}\"", super::CANDLE_VERSION);
        assert!(lock.contains(&needle), "update info::CANDLE_VERSION to the locked candle-core");
    }
}
