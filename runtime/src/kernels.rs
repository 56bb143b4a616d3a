//! Which kernel route CPU tensor work takes, and a record of the fast kernels that ran.
//!
//! genbench's own CPU kernels (the NHWC/NCHW conv engines, fused linear/attention, fast_math,
//! row-parallel element-wise ops, the Inception gemm engine) apply only on the CPU in f32; every
//! other device and dtype takes a fallback made of plain candle ops. [`KernelRoute::Generic`]
//! makes the CPU take that fallback too, so the route a GPU runs is checked by the CPU parity
//! tests and the only code a GPU run adds is candle's own device kernels.
//!
//! The route comes from `--kernels generic|fast` ([`configure`]) or else from the
//! `GENBENCH_KERNELS` environment variable (read on first use), default `fast`. Each fast kernel
//! calls [`record_fast`] when it runs, so a run can say which kernels it used and a test can
//! prove that the generic route used none.

use anyhow::{bail, Result};
use candle_core::Device;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;

/// The environment variable that selects the route when `--kernels` is not given.
pub const ENV_VAR: &str = "GENBENCH_KERNELS";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum KernelRoute {
    /// genbench's CPU kernels where they apply (CPU, f32), candle ops elsewhere.
    #[default]
    Fast,
    /// candle ops everywhere: the route every non-CPU device takes.
    Generic,
}

impl FromStr for KernelRoute {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "fast" => Ok(Self::Fast),
            "generic" => Ok(Self::Generic),
            _ => bail!("bad kernel route '{s}': expected `fast` (genbench's CPU kernels) or `generic` (candle ops, the GPU route)"),
        }
    }
}

impl fmt::Display for KernelRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl KernelRoute {
    pub fn name(self) -> &'static str {
        match self {
            Self::Fast => "fast",
            Self::Generic => "generic",
        }
    }
}

const UNSET: u8 = 0;
const FAST: u8 = 1;
const GENERIC: u8 = 2;

static ROUTE: AtomicU8 = AtomicU8::new(UNSET);
static FAST_CALLS: Mutex<BTreeMap<&'static str, u64>> = Mutex::new(BTreeMap::new());

fn encode(r: KernelRoute) -> u8 {
    match r {
        KernelRoute::Fast => FAST,
        KernelRoute::Generic => GENERIC,
    }
}

/// The route named by `GENBENCH_KERNELS` (unset or empty: fast).
pub fn route_from_env() -> Result<KernelRoute> {
    match std::env::var(ENV_VAR) {
        Ok(v) if !v.trim().is_empty() => v.parse().map_err(|e| anyhow::anyhow!("{ENV_VAR}: {e}")),
        _ => Ok(KernelRoute::Fast),
    }
}

/// Sets the route for this process: `flag` (from `--kernels`) wins over `GENBENCH_KERNELS`.
/// A bad environment value is an error here, before any work.
pub fn configure(flag: Option<KernelRoute>) -> Result<KernelRoute> {
    let route = match flag {
        Some(r) => r,
        None => route_from_env()?,
    };
    set_route(route);
    Ok(route)
}

/// Switches the route (tests compare both routes in one process).
pub fn set_route(route: KernelRoute) {
    ROUTE.store(encode(route), Ordering::Relaxed);
}

/// The route in force. Without [`configure`] it is read from `GENBENCH_KERNELS` on first use;
/// a value that is neither `fast` nor `generic` then stops the process with that message
/// (the binary checks it up front through [`configure`]; this is for tests and library users).
pub fn route() -> KernelRoute {
    match ROUTE.load(Ordering::Relaxed) {
        FAST => KernelRoute::Fast,
        GENERIC => KernelRoute::Generic,
        _ => {
            let r = route_from_env().unwrap_or_else(|e| panic!("{e:#}"));
            set_route(r);
            r
        }
    }
}

/// Whether genbench's fast CPU kernels may run for a tensor on `device` (the callers check
/// dtype and layout themselves).
pub fn fast_on(device: &Device) -> bool {
    device.is_cpu() && route() == KernelRoute::Fast
}

/// Notes that the fast kernel `name` ran once.
pub fn record_fast(name: &'static str) {
    let mut calls = FAST_CALLS.lock().unwrap_or_else(|p| p.into_inner());
    *calls.entry(name).or_insert(0) += 1;
}

/// Calls per fast kernel since start (or the last [`reset_fast_calls`]).
pub fn fast_calls() -> BTreeMap<&'static str, u64> {
    FAST_CALLS.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// All fast-kernel calls since start (or the last [`reset_fast_calls`]).
pub fn total_fast_calls() -> u64 {
    fast_calls().values().sum()
}

pub fn reset_fast_calls() {
    FAST_CALLS.lock().unwrap_or_else(|p| p.into_inner()).clear();
}

/// What ran, for profiles and manifests: the route and the fast kernels' call counts.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RouteReport {
    pub route: &'static str,
    pub fast_kernel_calls: BTreeMap<&'static str, u64>,
}

pub fn report() -> RouteReport {
    RouteReport { route: route().name(), fast_kernel_calls: fast_calls() }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn parses_routes() {
        assert_eq!("generic".parse::<KernelRoute>().unwrap(), KernelRoute::Generic);
        assert_eq!(" FAST ".parse::<KernelRoute>().unwrap(), KernelRoute::Fast);
        let e = "gpu".parse::<KernelRoute>().unwrap_err().to_string();
        assert!(e.contains("expected `fast`") && e.contains("'gpu'"), "{e}");
    }
    #[test]
    fn flag_wins_and_counts_accumulate() {
        // The only test in this crate that touches the global route.
        assert_eq!(configure(Some(KernelRoute::Generic)).unwrap(), KernelRoute::Generic);
        assert!(!fast_on(&Device::Cpu));
        set_route(KernelRoute::Fast);
        assert!(fast_on(&Device::Cpu));
        reset_fast_calls();
        record_fast("a");
        record_fast("a");
        record_fast("b");
        assert_eq!(total_fast_calls(), 3);
        assert_eq!(fast_calls().get("a"), Some(&2));
        let r = report();
        assert_eq!(r.route, "fast");
        reset_fast_calls();
        assert_eq!(total_fast_calls(), 0);
    }
}
