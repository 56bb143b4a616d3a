//! `genbench bench inception`: throughput of the FID Inception on this machine, in images per
//! second, measured the way `shared/tools/torch_inception_bench.py` measures PyTorch (forward
//! passes on a fixed batch of normalised 299x299 inputs), so the two can be run side by side.
//! It also times the whole extraction from uint8 images (preprocessing included).

use anyhow::{Context, Result};
use genbench_metrics::features::{ExtractorOptions, InceptionExtractor};
use genbench_metrics::inception::network::INPUT_SIZE;
use genbench_metrics::inception::weights::{default_cache_dir, fold_batch_norm, WeightsSource};
use genbench_metrics::inception::InceptionNet;
use genbench_metrics::preprocess::Preprocess;
use genbench_runtime::timer::{median, Stopwatch};
use genbench_runtime::DeviceChoice;
use std::path::PathBuf;
use std::time::Duration;

/// What `bench inception` measures.
#[derive(Debug, Clone)]
pub struct InceptionBench {
    /// Images per forward pass.
    pub batch: usize,
    /// Timed passes (the median is reported).
    pub iters: usize,
    /// Untimed passes first (page faults, lazy allocations).
    pub warmup: usize,
    pub device: DeviceChoice,
    /// None: the cached FID Inception, fetched on first use.
    pub inception_weights: Option<PathBuf>,
    /// None: the metrics crate's default cache folder.
    pub cache_dir: Option<PathBuf>,
    /// Also report the time per layer (summed over threads) of the CPU engine.
    pub profile: bool,
    /// Source image size of the end-to-end extraction timing (0 skips it).
    pub image_size: usize,
}

/// Deterministic pseudo-random values in [lo, hi): the benchmark needs realistic, non-constant
/// activations, not any particular distribution.
fn pseudo_random(n: usize, lo: f32, hi: f32) -> Vec<f32> {
    let mut s: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            lo + (hi - lo) * ((s >> 40) as f32 / (1u64 << 24) as f32)
        })
        .collect()
}

/// User + system CPU time of this process (all threads), from `/proc/self/stat` (Linux only).
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // USER_HZ is 100 on every Linux configuration that exposes /proc this way.
    Some(ticks / 100.0)
}

/// Times the Inception forward (and, with `image_size > 0`, the whole extraction from uint8
/// images) and returns the result lines, in the format `shared/tools/torch_inception_bench.py`
/// prints for PyTorch so the two can be compared line by line.
pub fn run_inception_bench(a: &InceptionBench) -> Result<Vec<String>> {
    anyhow::ensure!(a.batch > 0 && a.iters > 0, "--batch and --iters must be at least 1");
    let device = a.device.open()?;
    let mut lines = Vec::new();
    let cache_dir = a.cache_dir.clone().unwrap_or_else(default_cache_dir);
    let source = match &a.inception_weights {
        Some(p) => WeightsSource::File(p.clone()),
        None => WeightsSource::Default,
    };
    let resolved = source.resolve(&cache_dir).context("cannot load the Inception weights")?;
    eprintln!("weights: {} (sha1 {})", resolved.origin, resolved.sha1);
    let folded = fold_batch_norm(&resolved.tensors)?;
    let net = InceptionNet::new(&folded, &device)?;
    let threads = genbench_runtime::threads::num_threads();
    let x = pseudo_random(a.batch * INPUT_SIZE * INPUT_SIZE * 3, -1.0, 1.0);

    for _ in 0..a.warmup {
        net.forward_nhwc(&x, a.batch)?;
    }
    let mut times = Vec::with_capacity(a.iters);
    let cpu0 = process_cpu_seconds();
    for _ in 0..a.iters {
        let sw = Stopwatch::start(&device)?;
        let out = net.forward_nhwc(&x, a.batch)?;
        times.push(sw.elapsed()?);
        // Keep the result observable so the pass cannot be optimised away.
        std::hint::black_box(&out.pool3);
    }
    if a.profile {
        genbench_metrics::inception::cpu::set_profiling(true);
        let _ = genbench_metrics::inception::cpu::take_profile();
        net.forward_nhwc(&x, a.batch)?;
        genbench_metrics::inception::cpu::set_profiling(false);
        let prof = genbench_metrics::inception::cpu::take_profile();
        let layers: f64 = prof.iter().filter(|(k, _)| !k.starts_with('[')).map(|(_, e)| e.time.as_secs_f64()).sum();
        let macs: u64 = prof.iter().filter(|(k, _)| !k.starts_with('[')).map(|(_, e)| e.macs).sum();
        lines.push(format!(
            "per-operation thread time of one forward ({:.3} s in operations, {:.1} GMAC, {:.1} GMAC/s per thread; \
             [block] rows include their layers):",
            layers,
            macs as f64 / 1e9,
            macs as f64 / 1e9 / layers
        ));
        for (name, e) in &prof {
            let secs = e.time.as_secs_f64();
            let share = if name.starts_with('[') { String::new() } else { format!("{:5.1}%", 100.0 * secs / layers) };
            let rate = if e.macs > 0 { format!("{:6.1} GMAC/s", e.macs as f64 / 1e9 / secs) } else { String::new() };
            lines.push(format!("  {:>9.2} ms {share:>6} {rate:>13}  {name}", secs * 1e3));
        }
    }
    // CPU time of the whole process over the timed passes: on a shared machine img/s depends on
    // the other load, CPU-seconds per image much less so.
    let cpu_per_img = match (cpu0, process_cpu_seconds()) {
        (Some(a0), Some(a1)) => format!(" cpu_s_per_img={:.3}", (a1 - a0) / (a.iters * a.batch) as f64),
        _ => String::new(),
    };
    let med = median(times.clone()).unwrap_or(Duration::ZERO);
    let fmt = |ds: &[Duration]| ds.iter().map(|d| format!("{:.3}", d.as_secs_f64())).collect::<Vec<_>>().join(",");
    lines.push(format!(
        "genbench-inception forward batch={} threads={} device={} iters={} median_s={:.3} times_s=[{}] img_per_s={:.2}{cpu_per_img}",
        a.batch,
        threads,
        genbench_runtime::device::describe(&device),
        a.iters,
        med.as_secs_f64(),
        fmt(&times),
        a.batch as f64 / med.as_secs_f64()
    ));

    if a.image_size > 0 {
        // End to end: uint8 images -> ADM preprocessing (TF1 resize) -> features.
        let extractor = InceptionExtractor::new_in(
            ExtractorOptions { preprocess: Preprocess::Adm, device: device.clone(), batch_size: a.batch, weights: source },
            &cache_dir,
        )?;
        let s = a.image_size;
        let images: Vec<u8> = pseudo_random(a.batch * s * s * 3, 0.0, 256.0).into_iter().map(|v| v as u8).collect();
        let mut times = Vec::with_capacity(a.iters);
        for _ in 0..a.iters {
            let sw = Stopwatch::start(&device)?;
            let f = extractor.extract(&images, a.batch, s, s)?;
            times.push(sw.elapsed()?);
            std::hint::black_box(&f.pool3);
        }
        let med = median(times.clone()).unwrap_or(Duration::ZERO);
        lines.push(format!(
            "genbench-inception extract {s}x{s} uint8 batch={} threads={} iters={} median_s={:.3} times_s=[{}] img_per_s={:.2}",
            a.batch,
            threads,
            a.iters,
            med.as_secs_f64(),
            fmt(&times),
            a.batch as f64 / med.as_secs_f64()
        ));
    }
    Ok(lines)
}
