//! One attention step with the preallocated KV cache, at the shapes the samplers run:
//! * VAR-d16 last scale: 256 new tokens over 680 cached keys (424 already cached), C = 1024,
//!   16 heads, batch 2 (1 image with CFG) and 16 (8 images);
//! * raster AR decode (LlamaGen GPT-L-like): 1 new token over 256 cached keys, batch 2.
//!
//! Each iteration rewinds the cache to its prefix length and appends the new keys in place, so
//! the measured work is: q/k/v projection, in-place cache write, attention over the cache, output
//! projection. Besides the full step, the attention core (`attention_merged` over the cached
//! views) is timed alone. `cargo bench -p genbench-models --bench attention_step -- --quick`.

use candle_core::{DType, Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use genbench_models::checkpoint::RandomWeights;
use genbench_models::flops;
use genbench_models::nn::attention::MultiHeadAttention;
use genbench_models::nn::fused::attention_merged;
use std::hint::black_box;
use std::time::Duration;

fn bench_attention(c: &mut Criterion) {
    let dev = Device::Cpu;
    let dim = 1024;
    let heads = 16;
    let vb = RandomWeights::new(0).var_builder(DType::F32, &dev);
    let attn = MultiHeadAttention::load_fused(vb, dim, heads, ("qkv", "proj"), true, true).unwrap();
    let mut group = c.benchmark_group("attention_step");
    for (label, batch, prefix, new, capacity) in
        [("var_d16_last_scale_b2", 2, 424, 256, 680), ("var_d16_last_scale_b16", 16, 424, 256, 680), ("raster_decode_b2", 2, 255, 1, 264)]
    {
        let x = Tensor::randn(0f32, 1.0, (batch, new, dim), &dev).unwrap();
        let mut cache = attn.new_cache(batch, capacity, DType::F32, &dev).unwrap();
        // Fill the prefix once.
        let fill = Tensor::randn(0f32, 1.0, (batch, prefix, dim), &dev).unwrap();
        attn.forward(&fill, None, Some(&mut cache)).unwrap();
        let keys = prefix + new;
        group.throughput(Throughput::Elements((batch * new) as u64));
        let step_flops = batch as f64 * flops::self_attention(new, keys, dim);
        eprintln!("{label}: {:.2} GFLOP per step (projections + attention over {keys} keys)", step_flops / 1e9);
        group.bench_function(format!("{label}_full_step"), |b| {
            b.iter(|| {
                cache.set_len(prefix).unwrap();
                black_box(attn.forward(black_box(&x), None, Some(&mut cache)).unwrap())
            })
        });
        let (q, _, _) = attn.project_qkv(&x).unwrap();
        cache.set_len(keys).unwrap();
        let (k, v) = (cache.keys().unwrap(), cache.values().unwrap());
        group.bench_function(format!("{label}_attention_core"), |b| b.iter(|| black_box(attention_merged(&q, &k, &v, 1.0, None).unwrap())));
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    targets = bench_attention
}
criterion_main!(benches);
