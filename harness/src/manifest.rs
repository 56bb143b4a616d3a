//! `manifest.json`: everything needed to tell later whether two result sets are comparable —
//! genbench version and git commit, crate versions, machine, device, and per run the settings,
//! seeds and weight hashes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::records::RunResult;
use crate::suite::Suite;

/// Crates whose versions change numbers or speed; recorded from the lock file this binary was
/// built with.
const RECORDED_CRATES: &[&str] = &[
    "genbench",
    "genbench-runtime",
    "genbench-metrics",
    "genbench-models",
    "genbench-harness",
    "candle-core",
    "candle-nn",
    "gemm",
    "faer",
    "half",
    "safetensors",
    "image",
    "fast_image_resize",
    "npyz",
    "rayon",
    "statrs",
    "plotters",
];

/// The lock file of the workspace this crate was built in: its versions are the ones compiled.
const CARGO_LOCK: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock"));

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    pub cpu_model: String,
    /// Distinct (package, core) pairs; `None` where /proc/cpuinfo does not say.
    pub physical_cores: Option<usize>,
    pub logical_cpus: usize,
    /// Threads genbench's tensor work uses.
    pub threads: usize,
    pub memory_gib: Option<f64>,
    pub os: String,
    pub arch: String,
    pub avx2: bool,
    pub avx512f: bool,
    pub cuda_compiled: bool,
}

impl Machine {
    pub fn detect() -> Self {
        let info = genbench_runtime::info::runtime_info();
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Self {
            cpu_model: info.cpu_model,
            physical_cores: physical_cores(&cpuinfo),
            logical_cpus: info.logical_cpus,
            threads: info.threads,
            memory_gib: memory_gib(&meminfo),
            os: info.os.to_string(),
            arch: info.arch.to_string(),
            avx2: info.avx2,
            avx512f: info.avx512f,
            cuda_compiled: info.cuda_compiled,
        }
    }
}

/// Counts distinct `(physical id, core id)` pairs; VMs often omit `core id`, in which case the
/// per-package `cpu cores` field is used.
fn physical_cores(cpuinfo: &str) -> Option<usize> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    let mut cores_per_package: Option<usize> = None;
    let mut packages: Vec<String> = Vec::new();
    for block in cpuinfo.split("\n\n") {
        let field = |name: &str| {
            block.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == name).then(|| v.trim().to_string())
            })
        };
        let package = field("physical id").unwrap_or_default();
        if let Some(core) = field("core id") {
            if !pairs.contains(&(package.clone(), core.clone())) {
                pairs.push((package.clone(), core));
            }
        }
        if let Some(n) = field("cpu cores").and_then(|v| v.parse().ok()) {
            cores_per_package = Some(n);
            if !packages.contains(&package) {
                packages.push(package);
            }
        }
    }
    if !pairs.is_empty() {
        Some(pairs.len())
    } else {
        cores_per_package.map(|n| n * packages.len().max(1))
    }
}

fn memory_gib(meminfo: &str) -> Option<f64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some((kib / (1024.0 * 1024.0) * 10.0).round() / 10.0)
}

/// Versions of the `RECORDED_CRATES` in a Cargo.lock text.
pub fn crate_versions_from_lock(lock: &str) -> BTreeMap<String, String> {
    let mut versions = BTreeMap::new();
    for block in lock.split("[[package]]").skip(1) {
        let value = |key: &str| {
            block.lines().find_map(|l| {
                let rest = l.trim().strip_prefix(key)?.trim_start().strip_prefix('=')?;
                Some(rest.trim().trim_matches('"').to_string())
            })
        };
        if let (Some(name), Some(version)) = (value("name"), value("version")) {
            if RECORDED_CRATES.contains(&name.as_str()) {
                versions.insert(name, version);
            }
        }
    }
    versions
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GitState {
    pub commit: String,
    /// Uncommitted changes in tracked files when the suite ran.
    pub dirty: bool,
}

/// `git rev-parse HEAD` in `dir`, if git and a repository are there.
pub fn git_state(dir: &Path) -> Option<GitState> {
    let run = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(dir)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = run(&["rev-parse", "HEAD"])?;
    let dirty = run(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    Some(GitState { commit, dirty })
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestRun {
    pub id: String,
    pub family: String,
    pub model: String,
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub settings: serde_json::Value,
    pub seeds: Vec<u64>,
    pub weight_hashes: BTreeMap<String, String>,
    pub wall_seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub genbench_version: String,
    pub git: Option<GitState>,
    pub crate_versions: BTreeMap<String, String>,
    pub machine: Machine,
    /// As the runner describes it, e.g. `cpu (2 threads)` or `cuda:0 (NVIDIA H100)`.
    pub device: String,
    /// CPU kernel route (`fast` or `generic`, `GENBENCH_KERNELS` / `--kernels`) and how often
    /// each of genbench's fast CPU kernels ran during the suite (none under `generic`).
    #[serde(default)]
    pub kernel_route: String,
    #[serde(default)]
    pub fast_kernel_calls: BTreeMap<String, u64>,
    pub suite_name: String,
    pub suite_file: PathBuf,
    /// SHA-256 of the suite file, so an edited suite is not mistaken for the one that ran.
    pub suite_sha256: Option<String>,
    pub started_utc: String,
    pub finished_utc: String,
    pub runs: Vec<ManifestRun>,
}

impl Manifest {
    /// Assembles the manifest from what the runner measured; `machine` and `git` are passed in
    /// so that tests (and reports for other machines) stay deterministic.
    pub fn new(
        suite: &Suite,
        results: &[RunResult],
        machine: Machine,
        git: Option<GitState>,
        device: &str,
        started: SystemTime,
        finished: SystemTime,
    ) -> Self {
        let suite_sha256 = std::fs::read(&suite.path).ok().map(|b| genbench_runtime::hash::sha256_bytes(&b));
        Self {
            genbench_version: env!("CARGO_PKG_VERSION").to_string(),
            git,
            crate_versions: crate_versions_from_lock(CARGO_LOCK),
            machine,
            device: device.to_string(),
            kernel_route: genbench_runtime::kernels::route().name().to_string(),
            fast_kernel_calls: genbench_runtime::kernels::fast_calls().into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            suite_name: suite.name.clone(),
            suite_file: suite.path.clone(),
            suite_sha256,
            started_utc: iso_utc(started),
            finished_utc: iso_utc(finished),
            runs: results
                .iter()
                .map(|r| ManifestRun {
                    id: r.id.clone(),
                    family: r.family.clone(),
                    model: r.model.clone(),
                    status: r.status.label().to_string(),
                    reason: match &r.status {
                        crate::records::RunStatus::Skipped { reason } => Some(reason.clone()),
                        crate::records::RunStatus::Failed { error } => Some(error.clone()),
                        crate::records::RunStatus::Completed => None,
                    },
                    settings: r.settings.clone(),
                    seeds: r.seeds.clone(),
                    weight_hashes: r.weight_hashes.clone(),
                    wall_seconds: r.wall_seconds,
                })
                .collect(),
        }
    }
}

/// `results/<suite>/<UTC timestamp>/`, the timestamp sortable and free of `:`.
pub fn results_dir(root: &Path, suite_name: &str, time: SystemTime) -> PathBuf {
    root.join(suite_name).join(compact_utc(time))
}

/// Civil date from days since 1970-01-01 (Howard Hinnant's algorithm), to avoid a date crate
/// for one timestamp.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn utc_parts(time: SystemTime) -> (i64, u32, u32, u64, u64, u64) {
    let secs = time.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    (y, m, d, rem / 3600, rem % 3600 / 60, rem % 60)
}

/// `2024-04-05T12:40:00Z`.
pub fn iso_utc(time: SystemTime) -> String {
    let (y, mo, d, h, mi, s) = utc_parts(time);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// `20240405T124000Z`, for directory names.
pub fn compact_utc(time: SystemTime) -> String {
    let (y, mo, d, h, mi, s) = utc_parts(time);
    format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}Z")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps() {
        // 2024-04-05 12:40:00 UTC, the time of VAR's "[fix] FID" README commit.
        let t = UNIX_EPOCH + Duration::from_secs(1_712_320_800);
        assert_eq!(iso_utc(t), "2024-04-05T12:40:00Z");
        assert_eq!(compact_utc(t), "20240405T124000Z");
        assert_eq!(iso_utc(UNIX_EPOCH + Duration::from_secs(951_782_400)), "2000-02-29T00:00:00Z");
        assert_eq!(results_dir(Path::new("results"), "quickstart", t), PathBuf::from("results/quickstart/20240405T124000Z"));
    }

    #[test]
    fn cpuinfo_core_counting() {
        let two_threads_one_core = "processor\t: 0\nphysical id\t: 0\ncore id\t: 0\ncpu cores\t: 1\n\nprocessor\t: 1\nphysical id\t: 0\ncore id\t: 0\ncpu cores\t: 1\n";
        assert_eq!(physical_cores(two_threads_one_core), Some(1));
        let no_core_ids = "processor\t: 0\ncpu cores\t: 2\n\nprocessor\t: 1\ncpu cores\t: 2\n";
        assert_eq!(physical_cores(no_core_ids), Some(2));
        assert_eq!(physical_cores(""), None);
        assert_eq!(memory_gib("MemTotal:       24576000 kB\n"), Some(23.4));
    }

    #[test]
    fn lock_versions() {
        let lock = "[[package]]\nname = \"candle-core\"\nversion = \"0.11.1\"\n\n[[package]]\nname = \"other\"\nversion = \"1.0.0\"\n";
        let v = crate_versions_from_lock(lock);
        assert_eq!(v.get("candle-core").map(String::as_str), Some("0.11.1"));
        assert!(!v.contains_key("other"));
        // The real lock file has this crate.
        assert!(crate_versions_from_lock(CARGO_LOCK).contains_key("genbench-harness"));
    }
}
