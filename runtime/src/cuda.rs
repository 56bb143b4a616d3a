//! CUDA facts, device memory and event timing, through cudarc (feature `cuda`).
//!
//! Without the `cuda` feature every query answers "no CUDA" (`None`, 0 devices) and
//! [`EventTimer::start`] is never reached (there is no CUDA device to time).
//!
//! Memory: candle allocates with `cuMemAllocAsync` from the device's default memory pool, so the
//! pool's `USED_MEM_CURRENT` / `USED_MEM_HIGH` attributes are exactly the bytes genbench's tensors
//! hold now and at most since [`reset_peak_memory`]; `device_used_bytes` (total - free) also counts
//! the context, cuBLAS workspaces and other processes.

use anyhow::Result;
use candle_core::Device;
use serde::Serialize;

/// What a CUDA device is, for `genbench info` and every manifest.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct CudaDeviceInfo {
    pub ordinal: usize,
    pub name: String,
    /// `major.minor`, e.g. `9.0`.
    pub compute_capability: String,
    /// The newest CUDA version the installed driver supports (`cuDriverGetVersion`), e.g. `12.8`.
    pub driver_cuda_version: String,
    /// The CUDA toolkit of the loaded NVRTC library (`nvrtcVersion`), e.g. `13.4`.
    pub toolkit_cuda_version: String,
    pub total_memory_bytes: u64,
}

impl CudaDeviceInfo {
    /// One line: `NVIDIA H200, sm 9.0, 139.8 GiB, driver CUDA 12.8, toolkit 13.4`.
    pub fn summary(&self) -> String {
        format!(
            "{}, sm {}, {:.1} GiB, driver CUDA {}, toolkit {}",
            self.name,
            self.compute_capability,
            self.total_memory_bytes as f64 / (1u64 << 30) as f64,
            self.driver_cuda_version,
            self.toolkit_cuda_version
        )
    }
    /// `(major, minor)` of the compute capability.
    pub fn capability(&self) -> (u32, u32) {
        let mut it = self.compute_capability.split('.').map(|x| x.parse().unwrap_or(0));
        (it.next().unwrap_or(0), it.next().unwrap_or(0))
    }
}

/// Device memory now and at its highest since [`reset_peak_memory`].
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Default)]
pub struct DeviceMemory {
    /// Bytes held by tensors (default memory pool, `USED_MEM_CURRENT`).
    pub current_bytes: u64,
    /// Highest `current_bytes` since the last reset (`USED_MEM_HIGH`).
    pub peak_bytes: u64,
    /// Whole-device use (total - free): also the context, libraries and other processes.
    pub device_used_bytes: u64,
    pub total_bytes: u64,
}

#[cfg(feature = "cuda")]
mod imp {
    use super::*;
    use anyhow::{anyhow, Context};
    use cudarc::driver::{sys, CudaContext, CudaEvent, CudaStream};
    use std::sync::Arc;

    fn stream(dev: &Device) -> Option<Arc<CudaStream>> {
        match dev {
            Device::Cuda(d) => Some(d.cuda_stream()),
            _ => None,
        }
    }

    pub fn device_count() -> Result<usize> {
        let n = CudaContext::device_count().map_err(|e| anyhow!("{e:?}"))?;
        Ok(n.max(0) as usize)
    }

    fn version_string(v: i32) -> String {
        format!("{}.{}", v / 1000, (v % 1000) / 10)
    }

    pub fn context_info(ctx: &Arc<CudaContext>) -> Result<CudaDeviceInfo> {
        let err = |e: cudarc::driver::DriverError| anyhow!("{e:?}");
        let (major, minor) = ctx.compute_capability().map_err(err)?;
        let mut driver = 0i32;
        // SAFETY: writes one int; the driver is initialised (a context exists).
        unsafe { sys::cuDriverGetVersion(&mut driver) }.result().map_err(err)?;
        let (mut nv_major, mut nv_minor) = (0i32, 0i32);
        // SAFETY: writes two ints; NVRTC needs no initialisation.
        let toolkit = match unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut nv_major, &mut nv_minor) }.result() {
            Ok(()) => format!("{nv_major}.{nv_minor}"),
            Err(e) => format!("unknown ({e:?})"),
        };
        Ok(CudaDeviceInfo {
            ordinal: ctx.ordinal(),
            name: ctx.name().map_err(err)?,
            compute_capability: format!("{major}.{minor}"),
            driver_cuda_version: version_string(driver),
            toolkit_cuda_version: toolkit,
            total_memory_bytes: ctx.total_mem().map_err(err)? as u64,
        })
    }

    pub fn ordinal_info(ordinal: usize) -> Result<CudaDeviceInfo> {
        let ctx = CudaContext::new(ordinal).map_err(|e| anyhow!("{e:?}"))?;
        context_info(&ctx)
    }

    pub fn device_info(dev: &Device) -> Result<Option<CudaDeviceInfo>> {
        match stream(dev) {
            Some(s) => Ok(Some(context_info(s.context())?)),
            None => Ok(None),
        }
    }

    fn pool(ctx: &Arc<CudaContext>) -> Result<sys::CUmemoryPool> {
        ctx.bind_to_thread().map_err(|e| anyhow!("{e:?}"))?;
        let mut pool = std::ptr::null_mut();
        // SAFETY: writes one pool handle for a valid device.
        unsafe { sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()) }.result().map_err(|e| anyhow!("{e:?}"))?;
        Ok(pool)
    }

    fn pool_attr(pool: sys::CUmemoryPool, attr: sys::CUmemPool_attribute) -> Result<u64> {
        let mut v = 0u64;
        // SAFETY: the USED_MEM_* attributes are cuuint64_t.
        unsafe { sys::cuMemPoolGetAttribute(pool, attr, &mut v as *mut u64 as *mut std::ffi::c_void) }
            .result()
            .map_err(|e| anyhow!("{e:?}"))?;
        Ok(v)
    }

    pub fn memory(dev: &Device) -> Result<Option<DeviceMemory>> {
        let Some(s) = stream(dev) else { return Ok(None) };
        let ctx = s.context();
        let pool = pool(ctx).context("default memory pool")?;
        let (free, total) = ctx.mem_get_info().map_err(|e| anyhow!("{e:?}"))?;
        Ok(Some(DeviceMemory {
            current_bytes: pool_attr(pool, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_CURRENT)?,
            peak_bytes: pool_attr(pool, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH)?,
            device_used_bytes: (total - free) as u64,
            total_bytes: total as u64,
        }))
    }

    pub fn reset_peak_memory(dev: &Device) -> Result<()> {
        let Some(s) = stream(dev) else { return Ok(()) };
        let pool = pool(s.context())?;
        let mut zero = 0u64;
        // SAFETY: resetting USED_MEM_HIGH takes a cuuint64_t 0.
        unsafe {
            sys::cuMemPoolSetAttribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
                &mut zero as *mut u64 as *mut std::ffi::c_void,
            )
        }
        .result()
        .map_err(|e| anyhow!("{e:?}"))
    }

    /// A start event recorded on the device's stream.
    pub struct EventTimer {
        start: CudaEvent,
        stream: Arc<CudaStream>,
    }

    impl EventTimer {
        pub fn start(dev: &Device) -> candle_core::Result<Option<Self>> {
            let Some(stream) = stream(dev) else { return Ok(None) };
            let start = stream
                .record_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(|e| candle_core::Error::Msg(format!("cuda event: {e:?}")))?;
            Ok(Some(Self { start, stream }))
        }
        /// Records the stop event and waits for it alone (no device-wide synchronisation).
        pub fn elapsed(&self) -> candle_core::Result<std::time::Duration> {
            let err = |e: cudarc::driver::DriverError| candle_core::Error::Msg(format!("cuda event: {e:?}"));
            let stop = self.stream.record_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT)).map_err(err)?;
            let ms = self.start.elapsed_ms(&stop).map_err(err)?;
            Ok(std::time::Duration::from_secs_f64(ms.max(0.0) as f64 / 1e3))
        }
    }
}

#[cfg(not(feature = "cuda"))]
mod imp {
    use super::*;

    pub fn device_count() -> Result<usize> {
        Ok(0)
    }
    pub fn ordinal_info(ordinal: usize) -> Result<CudaDeviceInfo> {
        anyhow::bail!("cuda:{ordinal}: this genbench was built without the `cuda` feature")
    }
    pub fn device_info(_dev: &Device) -> Result<Option<CudaDeviceInfo>> {
        Ok(None)
    }
    pub fn memory(_dev: &Device) -> Result<Option<DeviceMemory>> {
        Ok(None)
    }
    pub fn reset_peak_memory(_dev: &Device) -> Result<()> {
        Ok(())
    }
    /// Never constructed without CUDA.
    pub struct EventTimer(());
    impl EventTimer {
        pub fn start(_dev: &Device) -> candle_core::Result<Option<Self>> {
            Ok(None)
        }
        pub fn elapsed(&self) -> candle_core::Result<std::time::Duration> {
            Ok(std::time::Duration::ZERO)
        }
    }
}

/// CUDA devices the driver sees (0 without the feature; an error when the driver cannot start).
pub fn device_count() -> Result<usize> {
    imp::device_count()
}
/// Facts about device `ordinal` (opens its primary context).
pub fn ordinal_info(ordinal: usize) -> Result<CudaDeviceInfo> {
    imp::ordinal_info(ordinal)
}
/// Facts about `dev` when it is a CUDA device.
pub fn device_info(dev: &Device) -> Result<Option<CudaDeviceInfo>> {
    imp::device_info(dev)
}
/// Memory of `dev` when it is a CUDA device.
pub fn memory(dev: &Device) -> Result<Option<DeviceMemory>> {
    imp::memory(dev)
}
/// Starts a new peak (`DeviceMemory::peak_bytes`) for `dev`; nothing for other devices.
pub fn reset_peak_memory(dev: &Device) -> Result<()> {
    imp::reset_peak_memory(dev)
}
pub use imp::EventTimer;

/// Every visible CUDA device, or why none could be listed (`Err` text) — for `genbench info`.
pub fn all_devices() -> std::result::Result<Vec<CudaDeviceInfo>, String> {
    let n = device_count().map_err(|e| format!("{e:#}"))?;
    (0..n).map(|i| ordinal_info(i).map_err(|e| format!("cuda:{i}: {e:#}"))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn capability_parses() {
        let info = CudaDeviceInfo {
            ordinal: 0,
            name: "x".into(),
            compute_capability: "8.6".into(),
            driver_cuda_version: "12.8".into(),
            toolkit_cuda_version: "13.4".into(),
            total_memory_bytes: 1 << 30,
        };
        assert_eq!(info.capability(), (8, 6));
        assert!(info.summary().contains("sm 8.6, 1.0 GiB"), "{}", info.summary());
    }
    #[cfg(not(feature = "cuda"))]
    #[test]
    fn no_cuda_without_the_feature() {
        assert_eq!(device_count().unwrap(), 0);
        assert_eq!(memory(&Device::Cpu).unwrap(), None);
        assert!(EventTimer::start(&Device::Cpu).unwrap().is_none());
    }
}
