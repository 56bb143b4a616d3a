//! Wall time of the FID linear algebra at a given dimension (default 2048), release mode:
//!
//! ```text
//! cargo run --release -p genbench-metrics --example fid_timing -- [dim] [repeats]
//! ```
//!
//! Prints the median of `repeats` runs of `frechet_distance` on two full-rank statistics (the
//! normal case: 10k/50k samples), of the eigen route used for rank-deficient statistics, and the
//! time of a 10k x dim statistics accumulation.

use std::time::Instant;

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, Par};
use genbench_metrics::fid::{frechet_distance, trace_sqrt_product_eigen};
use genbench_metrics::stats::FeatureStats;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A random full-rank covariance `A A^T / d + 0.01 I` and a random mean.
fn random_stats(d: usize, seed: u64) -> FeatureStats {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let a = Mat::<f64>::from_fn(d, d, |_, _| rng.random::<f64>() - 0.5);
    let mut cov = Mat::<f64>::zeros(d, d);
    matmul(cov.as_mut(), Accum::Replace, a.as_ref(), a.transpose(), 1.0 / d as f64, Par::rayon(0));
    let sigma = (0..d * d).map(|k| cov[(k / d, k % d)] + if k / d == k % d { 0.01 } else { 0.0 }).collect();
    FeatureStats { n: 0, mu: (0..d).map(|_| rng.random::<f64>()).collect(), sigma }
}

fn median_seconds(repeats: usize, mut f: impl FnMut()) -> f64 {
    let mut times: Vec<f64> = (0..repeats)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("numeric argument")).collect();
    let d = args.first().copied().unwrap_or(2048);
    let repeats = args.get(1).copied().unwrap_or(5);
    println!("threads: {}, dim {d}, {repeats} repeats", rayon::current_num_threads());
    let (s1, s2) = (random_stats(d, 1), random_stats(d, 2));

    let mut last = None;
    let fid = median_seconds(repeats, || last = Some(frechet_distance(&s1, &s2).unwrap()));
    println!("frechet_distance (full rank): median {fid:.3} s   {:?}", last.unwrap());

    let mut eig = None;
    let eigen = median_seconds(repeats.min(3), || eig = Some(trace_sqrt_product_eigen(&s1.sigma, &s2.sigma, d, Par::rayon(0)).unwrap()));
    println!("eigen route (rank-deficient fallback): median {eigen:.3} s   {:?}", eig.unwrap());

    let n = 10_000;
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let features: Vec<f32> = (0..n * d).map(|_| rng.random::<f32>()).collect();
    let t = Instant::now();
    let stats = FeatureStats::from_features(&features, d).unwrap();
    println!("statistics of {n} x {d}: {:.3} s (n = {})", t.elapsed().as_secs_f64(), stats.n);
}
