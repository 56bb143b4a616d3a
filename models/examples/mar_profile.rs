//! Per-image time of MAR (random weights) split into MAE transformer, diffusion MLP and KL-16
//! decode, plus the GFLOP/s of the batched MLP denoising against a plain matmul of the same
//! shape measured in the same run.
//!
//! Every AR step's transformer pass runs with the real shapes (encoder length = buffer +
//! visible tokens, batch doubled under CFG). A diffusion-MLP denoising call costs the same for
//! the same number of rows, so it is timed once per distinct row count in the step plan and
//! counted once per step that uses it (`--full-mlp` runs every call instead). `--stride k` runs
//! the transformer on every k-th step only and counts it k times (for long runs on a busy host).
//!
//! `cargo run --release -p genbench-models --example mar_profile -- --model mar-b --num-iter 64 --cfg 2.9`

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use genbench_models::generators::mar::{step_plan, MarConfig, MarGenerator, MarSampling, TokenMask};
use genbench_models::tokenizers::kl16::Kl16Config;
use genbench_runtime::timer::Stopwatch;
use genbench_runtime::{RandomSource, SeededSource};
use std::collections::BTreeMap;
use std::time::Duration;

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() -> Result<()> {
    // Large tensors reused from the heap, as in the genbench binary (timings comparable).
    genbench_runtime::memory::keep_freed_memory();
    let args: Vec<String> = std::env::args().collect();
    let model: String = arg(&args, "--model", "mar-b".to_string());
    let num_iter: usize = arg(&args, "--num-iter", 64);
    let cfg_scale: f64 = arg(&args, "--cfg", 2.9);
    let batch: usize = arg(&args, "--batch", 1);
    let full_mlp = args.iter().any(|a| a == "--full-mlp");
    // Run the transformer only on steps with step % stride == 0, counting each stride times.
    let stride: usize = arg(&args, "--stride", 1).max(1);
    if let Some(t) = args.iter().position(|a| a == "--threads").and_then(|i| args.get(i + 1)) {
        std::env::set_var("RAYON_NUM_THREADS", t);
    }
    let cfg = match model.as_str() {
        "mar-b" => MarConfig::mar_base(),
        "mar-l" => MarConfig::mar_large(),
        "mar-h" => MarConfig::mar_huge(),
        other => bail!("unknown model {other}"),
    };
    let dev = Device::Cpu;
    let sampling = MarSampling { cfg: cfg_scale, num_iter, num_sampling_steps: cfg.num_sampling_steps, ..MarSampling::default() };
    let gen = MarGenerator::random_init(&model, &cfg, &Kl16Config::published(), sampling, 0, &dev, DType::F32)?;
    let mar = gen.mar();
    let (l, d) = (cfg.seq_len(), cfg.token_embed_dim());
    let mult = if cfg_scale != 1.0 { 2 } else { 1 };
    let mut rng = SeededSource::new(0);

    // --- transformer: every step with its real shapes ---
    let order = rng.permutation(l)?;
    let orders = vec![order; batch];
    let labels: Vec<u32> = (0..batch as u32).map(|i| (i * 97) % 1000).collect();
    let ce = mar.class_embedding(&labels)?;
    let ce = if mult == 2 { Tensor::cat(&[&ce, &mar.fake_latent(batch)?], 0)? } else { ce };
    let tokens = Tensor::from_vec(rng.normal(mult * batch * l * d)?, (mult * batch, l, d), &dev)?;
    let plan = step_plan(l, num_iter);
    let mut t_transformer = Duration::ZERO;
    let mut masked = l;
    for (step, &(_, predicted)) in plan.iter().enumerate() {
        if step % stride == 0 {
            let mask = TokenMask::by_order(&orders, masked, l);
            let mask = if mult == 2 { mask.doubled() } else { mask };
            let sw = Stopwatch::start(&dev)?;
            let x = mar.forward_mae_encoder(&tokens, &mask, &ce)?;
            let _z = mar.forward_mae_decoder(&x, &mask)?;
            t_transformer += sw.elapsed()? * stride as u32;
        }
        masked -= predicted;
    }

    // --- diffusion MLP: one call per distinct row count (or every call) ---
    let head = &mar.diffloss;
    let mut per_rows: BTreeMap<usize, (usize, Duration)> = BTreeMap::new();
    for &(_, predicted) in &plan {
        per_rows.entry(mult * batch * predicted).or_insert((0, Duration::ZERO)).0 += 1;
    }
    let temperature = 1.0f32;
    let cfg_iter = cfg_scale as f32;
    for (&rows, entry) in per_rows.iter_mut() {
        let z = Tensor::from_vec(rng.normal(rows * cfg.decoder_embed_dim)?, (rows, cfg.decoder_embed_dim), &dev)?;
        let calls = if full_mlp { entry.0 } else { 1 };
        let mut times = vec![];
        for _ in 0..calls {
            let sw = Stopwatch::start(&dev)?;
            head.sample(&z, temperature, cfg_iter, &mut rng)?;
            times.push(sw.elapsed()?);
        }
        let per_call = times.iter().sum::<Duration>() / calls as u32;
        entry.1 = per_call;
    }
    let t_mlp: Duration = per_rows.values().map(|(n, t)| *t * *n as u32).sum();

    // --- decode ---
    let lat = Tensor::from_vec(rng.normal(batch * l * d)?, (batch, d, cfg.seq_h(), cfg.seq_h()), &dev)?;
    let sw = Stopwatch::start(&dev)?;
    gen.vae().decode_tokens(&lat)?;
    let t_decode = sw.elapsed()?;

    let b = batch as f64;
    let secs = |t: Duration| t.as_secs_f64() / b;
    println!("{model} batch {batch} num_iter {num_iter} cfg {cfg_scale} stride {stride} threads {}", candle_core::utils::get_num_threads());
    println!(
        "per_image_s total {:.3} transformer {:.3} mlp {:.3} decode {:.3}",
        secs(t_transformer + t_mlp + t_decode),
        secs(t_transformer),
        secs(t_mlp),
        secs(t_decode)
    );
    let m = cfg.diffusion_head().flops_per_row() * head.num_steps() as f64;
    for (rows, (n, t)) in &per_rows {
        println!("mlp rows {rows:3}: {n:3} call(s) x {:.3} s = {:.2} GFLOP/s", t.as_secs_f64(), *rows as f64 * m / t.as_secs_f64() / 1e9);
    }

    // --- plain matmuls of the MLP's shapes, same run: the weight as the MLP stores it
    // ((in, out) contiguous, nn::linear::RowLinear) and as PyTorch's layout viewed transposed ---
    let w = cfg.diffloss_w;
    for &rows in per_rows.keys().take(1).chain(per_rows.keys().last()) {
        for out in [w, 3 * w] {
            let a = Tensor::randn(0f32, 1.0, (rows, w), &dev)?;
            let weight = Tensor::randn(0f32, 1.0, (out, w), &dev)?;
            let weight_t = weight.t()?.contiguous()?;
            let reps = 200;
            let rate = |rhs: &Tensor| -> Result<f64> {
                a.matmul(rhs)?;
                let sw = Stopwatch::start(&dev)?;
                for _ in 0..reps {
                    a.matmul(rhs)?;
                }
                let t = sw.elapsed()?.as_secs_f64() / reps as f64;
                Ok(2.0 * (rows * w * out) as f64 / t / 1e9)
            };
            println!(
                "matmul {rows}x{w} by {w}x{out}: {:.2} GFLOP/s (in,out) contiguous, {:.2} GFLOP/s (out,in) viewed transposed",
                rate(&weight_t)?,
                rate(&weight.t()?)?
            );
        }
    }
    Ok(())
}
