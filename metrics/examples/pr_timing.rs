//! Precision/recall cost against the bare matrix products it needs, measured in the same run:
//!
//! ```text
//! cargo run --release -p genbench-metrics --example pr_timing -- [n_ref] [n_samples] [dim]
//! ```
//!
//! Defaults: 5000 reference x 10000 samples x 2048 (ADM's real case is 10000 x 50000; the cost
//! of both parts scales with the same `n_ref^2 + n_smp^2 + n_ref n_smp` products).
//! "Bare GEMM" runs the three Gram products (reference x reference, samples x samples,
//! reference x samples) with the same tiling P/R uses, without norms, rounding, selection or
//! comparisons.

use std::time::Instant;

use genbench_metrics::numeric::{default_par, gemm_abt_f32};
use genbench_metrics::precision_recall::{precision_recall, DistancePrecision, PrConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Rows per GEMM tile inside a block, as in `precision_recall`.
const TILE_ROWS: usize = 1024;

/// Non-negative features of pool3-like scale.
fn features(n: usize, d: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n * d).map(|_| rng.random::<f32>() * rng.random::<f32>()).collect()
}

/// All `a x b^T` products over `block x block` blocks in row tiles, as P/R computes them.
fn tiled_gram(a: &[f32], b: &[f32], d: usize, block: usize, buf: &mut [f32]) {
    let (na, nb) = (a.len() / d, b.len() / d);
    for r0 in (0..na).step_by(block) {
        for c0 in (0..nb).step_by(block) {
            let cw = block.min(nb - c0);
            for t0 in (r0..(r0 + block).min(na)).step_by(TILE_ROWS) {
                let th = TILE_ROWS.min((r0 + block).min(na) - t0);
                gemm_abt_f32(buf, &a[t0 * d..(t0 + th) * d], th, &b[c0 * d..(c0 + cw) * d], cw, d, default_par());
            }
        }
    }
}

fn seconds(f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64()
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("numeric argument")).collect();
    let n_ref = args.first().copied().unwrap_or(5000);
    let n_smp = args.get(1).copied().unwrap_or(10_000);
    let d = args.get(2).copied().unwrap_or(2048);
    let block = PrConfig::default().row_block;
    println!("threads: {}, reference {n_ref} x samples {n_smp} x dim {d}", rayon::current_num_threads());
    let reference = features(n_ref, d, 1);
    let samples = features(n_smp, d, 2);

    let mut buf = vec![0f32; TILE_ROWS * block];
    let gemm = seconds(|| {
        tiled_gram(&reference, &reference, d, block, &mut buf);
        tiled_gram(&samples, &samples, d, block, &mut buf);
        tiled_gram(&reference, &samples, d, block, &mut buf);
    });
    let flops = 2.0 * d as f64 * (n_ref * n_ref + n_smp * n_smp + n_ref * n_smp) as f64;
    println!("bare GEMM:        {gemm:7.2} s  ({:.0} GFLOP/s)", flops / gemm / 1e9);

    for precision in [DistancePrecision::F32, DistancePrecision::Fp16Adm] {
        let cfg = PrConfig { precision, ..PrConfig::default() };
        let mut result = None;
        let t = seconds(|| result = Some(precision_recall(&reference, &samples, d, &cfg).unwrap()));
        println!("P/R {precision:?}: {t:7.2} s  ratio to bare GEMM {:.2}  {:?}", t / gemm, result.unwrap());
    }
}
