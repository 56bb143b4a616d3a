//! Per-step timing of the VAR sampler's transformer steps (no decoder), with random weights:
//! the quick loop for performance work. `genbench profile` is the full measurement.
//!
//! `cargo run --release -p genbench-models --example var_steps -- [depth] [batch,...] [repeats]`

use candle_core::{DType, Device, Tensor};
use genbench_models::checkpoint::RandomWeights;
use genbench_models::generator::StepLog;
use genbench_models::generators::var::{VarConfig, VarModel, VarSampling, VarTransformer};
use genbench_models::tokenizers::var_vqvae::{VarVqVae, VarVqVaeConfig};
use genbench_runtime::SeededSource;
use std::time::Instant;

fn matmul_gflops(dev: &Device) -> f64 {
    let a = Tensor::randn(0f32, 1.0, (1024, 1024), dev).unwrap();
    a.matmul(&a).unwrap();
    let mut t = vec![];
    for _ in 0..9 {
        let s = Instant::now();
        a.matmul(&a).unwrap();
        t.push(s.elapsed().as_secs_f64());
    }
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    2.0 * 1024f64.powi(3) / t[4] / 1e9
}

fn main() -> anyhow::Result<()> {
    // Large tensors reused from the heap, as in the genbench binary (timings comparable).
    genbench_runtime::memory::keep_freed_memory();
    // As `genbench sample/profile` do: candle's elementwise pool must not spin against the matmuls.
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "0");
    }
    let args: Vec<String> = std::env::args().collect();
    let depth: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(16);
    let batches: Vec<usize> = args.get(2).map(|s| s.split(',').map(|x| x.parse().unwrap()).collect()).unwrap_or(vec![1, 8]);
    let repeats: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(3);
    let dev = Device::Cpu;
    let cfg = VarConfig::from_depth(depth, &genbench_models::generators::var::PATCH_NUMS_256, false);
    let vae_cfg = VarVqVaeConfig::published_with_patch_nums(&cfg.patch_nums);
    let t0 = Instant::now();
    let rnd = RandomWeights::new(0);
    let model = VarModel::new(
        VarTransformer::load(&cfg, rnd.var_builder(DType::F32, &dev))?,
        VarVqVae::load(&vae_cfg, rnd.var_builder(DType::F32, &dev))?,
    )?;
    eprintln!("built VAR-d{depth} in {:.1}s; threads {}", t0.elapsed().as_secs_f64(), genbench_runtime::threads::num_threads());
    let s = VarSampling::default();
    for &b in &batches {
        let labels: Vec<u32> = (0..b as u32).map(|i| (i * 37) % 1000).collect();
        let mut per_step: Vec<Vec<f64>> = vec![vec![]; cfg.num_scales()];
        let mut flops = vec![0.0; cfg.num_scales()];
        for r in 0..=repeats {
            let mut log = StepLog::default();
            model.sample_fhat(&labels, &s, &mut SeededSource::new(r as u64), &mut log, None)?;
            if r == 0 {
                continue; // warm-up
            }
            for rec in &log.records {
                per_step[rec.step].push(rec.wall.as_secs_f64());
                flops[rec.step] = rec.flops;
            }
        }
        let mm = matmul_gflops(&dev);
        println!("batch {b}: matmul 1024^3 {mm:.1} GFLOP/s");
        let (mut tt, mut tf) = (0.0, 0.0);
        for (si, ts) in per_step.iter_mut().enumerate() {
            ts.sort_by(|a, b| a.partial_cmp(b).unwrap());
            let t = ts[ts.len() / 2];
            tt += t;
            tf += flops[si];
            println!(
                "  step {si}: {:8.1} ms {:8.2} GFLOP {:6.1} GFLOP/s ({:3.0}%)",
                t * 1e3,
                flops[si] / 1e9,
                flops[si] / t / 1e9,
                100.0 * flops[si] / t / 1e9 / mm
            );
        }
        println!("  total {:.1} ms, {:.1} GFLOP/s ({:.0}% of matmul)", tt * 1e3, tf / tt / 1e9, 100.0 * tf / tt / 1e9 / mm);
    }
    Ok(())
}
