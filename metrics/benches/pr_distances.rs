//! Precision/recall distance kernel against the bare GEMM it needs, at reduced size
//! (1000 reference x 2000 samples x 2048-d; the full ADM case is 10k x 50k, see
//! `examples/pr_timing.rs`). `cargo bench --bench pr_distances -- --quick` for a brief CI run.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use genbench_metrics::numeric::{default_par, gemm_abt_f32};
use genbench_metrics::precision_recall::{manifold_radii, precision_recall, DistancePrecision, PrConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const N_REF: usize = 1000;
const N_SMP: usize = 2000;
const DIM: usize = 2048;

fn features(n: usize, d: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n * d).map(|_| rng.random::<f32>() * rng.random::<f32>()).collect()
}

fn bench_pr(c: &mut Criterion) {
    let reference = features(N_REF, DIM, 1);
    let samples = features(N_SMP, DIM, 2);
    let mut buf = vec![0f32; N_SMP * N_SMP];
    let mut group = c.benchmark_group("pr_1000x2000x2048");
    // The three Gram products P/R needs: ref x ref, samples x samples, ref x samples.
    group.bench_function("bare_gemm", |b| {
        b.iter(|| {
            gemm_abt_f32(&mut buf, &reference, N_REF, &reference, N_REF, DIM, default_par());
            gemm_abt_f32(&mut buf, &samples, N_SMP, &samples, N_SMP, DIM, default_par());
            gemm_abt_f32(&mut buf, &reference, N_REF, &samples, N_SMP, DIM, default_par());
            black_box(&buf);
        })
    });
    for precision in [DistancePrecision::F32, DistancePrecision::Fp16Adm] {
        let cfg = PrConfig { precision, ..PrConfig::default() };
        group.bench_function(format!("precision_recall_{precision:?}"), |b| {
            b.iter(|| precision_recall(black_box(&reference), black_box(&samples), DIM, &cfg).unwrap())
        });
    }
    let cfg = PrConfig { precision: DistancePrecision::F32, ..PrConfig::default() };
    group.bench_function("manifold_radii_samples_F32", |b| b.iter(|| manifold_radii(black_box(&samples), DIM, &cfg).unwrap()));
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    targets = bench_pr
}
criterion_main!(benches);
