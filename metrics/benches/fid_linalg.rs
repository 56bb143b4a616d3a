//! FID linear algebra at 2048-d: `tr sqrt(S1 S2)` by the Cholesky route (the normal, full-rank
//! case), the eigen route (the slow independent check of the rank-deficient fallback), and the
//! whole `frechet_distance`.
//! Few samples by default so CI can run it briefly (`cargo bench --bench fid_linalg -- --quick`).

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, Par};
use genbench_metrics::fid::{frechet_distance, trace_sqrt_product, trace_sqrt_product_eigen};
use genbench_metrics::stats::FeatureStats;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const DIM: usize = 2048;

/// A random full-rank covariance `A A^T / d + 0.01 I` and a random mean.
fn random_stats(d: usize, seed: u64) -> FeatureStats {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let a = Mat::<f64>::from_fn(d, d, |_, _| rng.random::<f64>() - 0.5);
    let mut cov = Mat::<f64>::zeros(d, d);
    matmul(cov.as_mut(), Accum::Replace, a.as_ref(), a.transpose(), 1.0 / d as f64, Par::rayon(0));
    let sigma = (0..d * d).map(|k| cov[(k / d, k % d)] + if k / d == k % d { 0.01 } else { 0.0 }).collect();
    FeatureStats { n: 0, mu: (0..d).map(|_| rng.random::<f64>()).collect(), sigma }
}

fn bench_fid(c: &mut Criterion) {
    let (s1, s2) = (random_stats(DIM, 1), random_stats(DIM, 2));
    let mut group = c.benchmark_group("fid_2048");
    group.bench_function("frechet_distance", |b| b.iter(|| frechet_distance(black_box(&s1), black_box(&s2)).unwrap()));
    group.bench_function("trace_sqrt_cholesky", |b| {
        b.iter(|| trace_sqrt_product(black_box(&s1.sigma), black_box(&s2.sigma), DIM, Par::rayon(0)).unwrap())
    });
    group.bench_function("trace_sqrt_eigen", |b| {
        b.iter(|| trace_sqrt_product_eigen(black_box(&s1.sigma), black_box(&s2.sigma), DIM, Par::rayon(0)).unwrap())
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    targets = bench_fid
}
criterion_main!(benches);
