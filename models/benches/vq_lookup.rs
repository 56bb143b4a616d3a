//! Nearest-codebook search and embedding gather at the tokenizers' sizes:
//! * VAR: V = 4096 codes of 32 channels, a 16 x 16 latent (last scale), batch 8;
//! * LlamaGen VQ-16: V = 16384 codes of 8 channels, L2-normalised, 16 x 16, batch 8;
//! * taming f16-16384: V = 16384 codes of 256 channels, 16 x 16, batch 8.
//!
//! `cargo bench -p genbench-models --bench vq_lookup -- --quick`.

use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use genbench_models::nn::vq::Codebook;
use std::hint::black_box;
use std::time::Duration;

fn bench_vq(c: &mut Criterion) {
    let dev = Device::Cpu;
    let mut group = c.benchmark_group("vq_lookup");
    for (label, vocab, dim, l2) in
        [("var_4096x32", 4096, 32, false), ("llamagen_16384x8_l2", 16384, 8, true), ("taming_16384x256", 16384, 256, false)]
    {
        let cb = Codebook::new(Tensor::randn(0f32, 1.0, (vocab, dim), &dev).unwrap(), l2).unwrap();
        let (b, hw) = (8, 16);
        let z = Tensor::randn(0f32, 1.0, (b, dim, hw, hw), &dev).unwrap();
        group.throughput(Throughput::Elements((b * hw * hw) as u64));
        group.bench_function(format!("{label}_nearest"), |bch| bch.iter(|| black_box(cb.nearest_map(black_box(&z)).unwrap())));
        let ids = cb.nearest_map(&z).unwrap();
        group.bench_function(format!("{label}_gather"), |bch| bch.iter(|| black_box(cb.lookup_map(black_box(&ids), hw, hw).unwrap())));
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = bench_vq
}
criterion_main!(benches);
