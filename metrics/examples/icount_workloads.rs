//! Small fixed workloads for the instruction-count regression gate (`bench/icount.sh`), run one at
//! a time under valgrind's callgrind:
//!
//! ```text
//! valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*icount_region*' \
//!     target/release/examples/icount_workloads <workload>
//! ```
//!
//! Only the `icount_region_*` function is counted (set-up, weight loading and input generation
//! are not). It runs inside a one-thread rayon pool so that work rayon hands to its pool runs on
//! the counted thread. Inputs are seeded: the counts are deterministic for a given binary and
//! SIMD path (valgrind does not run AVX-512, so runtime dispatch picks the AVX2+FMA kernels).

use anyhow::{bail, Result};
use faer::{Mat, Par};
use genbench_metrics::eigenvalues::symmetric_eigenvalues_in_place;
use genbench_metrics::fid::frechet_distance;
use genbench_metrics::inception::cpu::GemmInception;
use genbench_metrics::inception::network::INPUT_SIZE;
use genbench_metrics::inception::weights::{default_cache_dir, fold_batch_norm, WeightsSource};
use genbench_metrics::inception::InceptionNet;
use genbench_metrics::precision_recall::{precision_recall, PrConfig};
use genbench_metrics::stats::FeatureStats;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::hint::black_box;

/// The workloads the gate runs (`list`), in table order. `inception_b1` (one 299x299 image) also
/// runs on demand but takes several minutes under valgrind on the shared 2-core machine, too long
/// for CI; `inception_107` runs the same layers on a 107x107 image.
const WORKLOADS: [&str; 4] = ["fid_256", "eig_320", "pr_block", "inception_107"];

/// Side of the `inception_107` input: the smallest at which every block still sees more than one
/// position (Mixed_7b/c run at 2x2, Mixed_6b-e at 5x5, Mixed_5b-d at 11x11).
const SMALL_INPUT: usize = 107;

fn features(n: usize, d: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n * d).map(|_| rng.random::<f32>()).collect()
}

/// A fixed NHWC image of side `size` in [-1, 1].
fn image(size: usize) -> Vec<f32> {
    (0..size * size * 3).map(|i| ((i * 7919) % 2001) as f32 / 1000.0 - 1.0).collect()
}

#[inline(never)]
fn icount_region_fid(a: &FeatureStats, b: &FeatureStats) -> f64 {
    frechet_distance(a, b).unwrap().value
}

#[inline(never)]
fn icount_region_eigenvalues(mut a: Mat<f64>) -> f64 {
    symmetric_eigenvalues_in_place(a.as_mut(), Par::Seq).unwrap().iter().sum()
}

#[inline(never)]
fn icount_region_pr(reference: &[f32], samples: &[f32], d: usize) -> f64 {
    let r = precision_recall(reference, samples, d, &PrConfig::default()).unwrap();
    r.precision + r.recall
}

#[inline(never)]
fn icount_region_inception_small(net: &GemmInception, x: &[f32]) -> usize {
    net.pool3_at_size(x, 1, SMALL_INPUT).unwrap().len()
}

#[inline(never)]
fn icount_region_inception(net: &InceptionNet, x: &[f32]) -> usize {
    net.forward_nhwc(x, 1).unwrap().pool3.len()
}

fn main() -> Result<()> {
    let name = std::env::args().nth(1).unwrap_or_default();
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    match name.as_str() {
        // FID from two 256-d statistics (Cholesky congruence + faer's one-stage eigenvalue solver below 640-d).
        "fid_256" => {
            let d = 256;
            let (a, b) = (FeatureStats::from_features(&features(600, d, 1), d)?, FeatureStats::from_features(&features(500, d, 2), d)?);
            black_box(pool.install(|| icount_region_fid(&a, &b)));
        }
        // The two-stage symmetric eigenvalue solver (FID's from 640-d up) on a 320 x 320 matrix:
        // 10 panels and the bulge-chasing sweeps at a size valgrind runs in seconds.
        "eig_320" => {
            let n = 320;
            let x = features(n, n, 5);
            // Symmetric with a spread spectrum: (X + X^T) / 2 plus a ramp on the diagonal.
            let a =
                Mat::<f64>::from_fn(n, n, |i, j| 0.5 * (x[i * n + j] + x[j * n + i]) as f64 + if i == j { i as f64 / 10.0 } else { 0.0 });
            black_box(pool.install(|| icount_region_eigenvalues(a)));
        }
        // ADM precision/recall (fp16 distances, k = 3) on a 256 x 256 block of 64-d features.
        "pr_block" => {
            let d = 64;
            let (reference, samples) = (features(256, d, 3), features(256, d, 4));
            black_box(pool.install(|| icount_region_pr(&reference, &samples, d)));
        }
        // One 107x107 image through every layer of the FID Inception network's GEMM engine, on
        // the calling thread (weights from the normal cache; pool_3 only, no classifier).
        "inception_107" => {
            let resolved = WeightsSource::Default.resolve(&default_cache_dir())?;
            let net = GemmInception::new(&fold_batch_norm(&resolved.tensors)?)?;
            let x = image(SMALL_INPUT);
            black_box(pool.install(|| icount_region_inception_small(&net, &x)));
        }
        // One image through the FID Inception network (weights from the normal cache).
        "inception_b1" => {
            let resolved = WeightsSource::Default.resolve(&default_cache_dir())?;
            let net = InceptionNet::new(&fold_batch_norm(&resolved.tensors)?, &candle_core::Device::Cpu)?;
            let x = image(INPUT_SIZE);
            black_box(pool.install(|| icount_region_inception(&net, &x)));
        }
        "list" => println!("{}", WORKLOADS.join("\n")),
        other => bail!("unknown workload '{other}'; one of: {}, inception_b1 (or 'list')", WORKLOADS.join(", ")),
    }
    Ok(())
}
