//! Wall time of the FID linear algebra at a given dimension (default 2048), release mode:
//!
//! ```text
//! cargo run --release -p genbench-metrics --example fid_timing -- [dim] [repeats]
//! ```
//!
//! Prints the median of `repeats` runs of `frechet_distance` on two full-rank statistics (the
//! normal case: 10k/50k samples) next to the route it replaced (faer's triangular products and
//! one-stage eigenvalue solver), with the FID values of both; the same for two rank-deficient statistics (N < d on both sides: the
//! pivoted-Cholesky fallback next to the eigen route it replaced); and the time of a 10k x dim
//! statistics accumulation. Runs of the new and previous routes alternate, so load from other
//! processes hits both alike: compare the ratios.

use std::time::Instant;

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, Par};
use genbench_metrics::fid::{frechet_distance, trace_sqrt_product, trace_sqrt_product_eigen, trace_sqrt_product_previous_route};
use genbench_metrics::stats::FeatureStats;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A random covariance `A A^T / d + ridge I` with `A` of size `d x rank`, and a random mean.
fn random_stats(d: usize, rank: usize, ridge: f64, seed: u64) -> FeatureStats {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let a = Mat::<f64>::from_fn(d, rank, |_, _| rng.random::<f64>() - 0.5);
    let mut cov = Mat::<f64>::zeros(d, d);
    matmul(cov.as_mut(), Accum::Replace, a.as_ref(), a.transpose(), 1.0 / d as f64, Par::rayon(0));
    let sigma = (0..d * d).map(|k| cov[(k / d, k % d)] + if k / d == k % d { ridge } else { 0.0 }).collect();
    FeatureStats { n: 0, mu: (0..d).map(|_| rng.random::<f64>()).collect(), sigma }
}

fn seconds(f: &mut impl FnMut()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64()
}

fn median(mut times: Vec<f64>) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Medians of `repeats` alternating runs of `new` and `old`.
fn alternate(repeats: usize, mut new: impl FnMut(), mut old: impl FnMut()) -> (f64, f64) {
    let (mut t_new, mut t_old) = (Vec::new(), Vec::new());
    for _ in 0..repeats {
        t_new.push(seconds(&mut new));
        t_old.push(seconds(&mut old));
    }
    (median(t_new), median(t_old))
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("numeric argument")).collect();
    let d = args.first().copied().unwrap_or(2048);
    let repeats = args.get(1).copied().unwrap_or(5);
    println!("threads: {}, dim {d}, {repeats} repeats", rayon::current_num_threads());
    let (s1, s2) = (random_stats(d, d, 0.01, 1), random_stats(d, d, 0.01, 2));
    let (mut fid, mut old) = (None, None);
    let (t_new, t_old) = alternate(
        repeats,
        || fid = Some(frechet_distance(&s1, &s2).unwrap()),
        || old = Some(trace_sqrt_product_previous_route(&s1.sigma, &s2.sigma, d, Par::rayon(0)).unwrap()),
    );
    let (fid, old) = (fid.unwrap(), old.unwrap());
    println!("full rank: frechet_distance median {t_new:.3} s; previous route {t_old:.3} s; speed-up {:.2}x", t_old / t_new);
    let old_fid = fid.value + 2.0 * fid.trace_sqrt - 2.0 * old.value;
    println!(
        "  tr sqrt: two-stage {:.12} previous {:.12} rel diff {:.1e}; FID {:.12} vs {:.12} rel diff {:.1e}",
        fid.trace_sqrt,
        old.value,
        (fid.trace_sqrt - old.value).abs() / old.value,
        fid.value,
        old_fid,
        (fid.value - old_fid).abs() / old_fid
    );

    // N < d on both sides (e.g. 1000 samples against a 1500-sample reference at 2048-d).
    let (r1, r2) = (random_stats(d, d / 2, 0.0, 3), random_stats(d, 3 * d / 4, 0.0, 4));
    let (mut fast, mut eig) = (None, None);
    let (t_fast, t_eig) = alternate(
        repeats.min(3),
        || fast = Some(trace_sqrt_product(&r1.sigma, &r2.sigma, d, Par::rayon(0)).unwrap()),
        || eig = Some(trace_sqrt_product_eigen(&r1.sigma, &r2.sigma, d, Par::rayon(0)).unwrap()),
    );
    let (fast, eig) = (fast.unwrap(), eig.unwrap());
    println!(
        "rank-deficient fallback: {:?} median {t_fast:.3} s; previous eigen route {t_eig:.3} s; ratio {:.2}x",
        fast.route,
        t_eig / t_fast
    );
    println!("  tr sqrt: new {:.12} previous {:.12} rel diff {:.1e}", fast.value, eig.value, (fast.value - eig.value).abs() / eig.value);

    let n = 10_000;
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let features: Vec<f32> = (0..n * d).map(|_| rng.random::<f32>()).collect();
    let t = Instant::now();
    let stats = FeatureStats::from_features(&features, d).unwrap();
    println!("statistics of {n} x {d}: {:.3} s (n = {})", t.elapsed().as_secs_f64(), stats.n);
}
