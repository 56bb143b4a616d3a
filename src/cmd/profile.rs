//! `genbench profile`: per-step wall time, FLOPs and throughput of a generator.
//!
//! For each batch size: `--warmup` untimed sampling runs, then `--repeats` observed runs. Every
//! network pass (transformer steps and the tokenizer decode) is one row of `steps.csv`:
//! `batch, repeat, step, kind, tokens, attended, ms, gflop, gflop_s`. `summary.json` and the
//! printed table hold per-step medians, totals per image, and the same-run throughput of a
//! plain 1024x1024 f32 matmul on the same device with each step's ratio to it.
//! FLOPs follow `genbench_models::flops::CONVENTION` (2 x MACs, attention counted with the
//! attended key count, whole batch including the CFG rows).

use super::model_registry::{resolve, ModelArgs, SamplerArgs};
use anyhow::{ensure, Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::Args;
use genbench_models::flops::{gflops_per_s, CONVENTION};
use genbench_models::generator::{StepKind, StepLog, StepRecord};
use genbench_runtime::timer::{median, Stopwatch};
use genbench_runtime::{DTypePolicy, DeviceChoice, RandomSource, SeededSource};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct ProfileArgs {
    #[command(flatten)]
    pub generator: ModelArgs,
    /// Batch sizes, comma-separated.
    #[arg(long, default_value = "1")]
    pub batch: String,
    /// Observed runs per batch size (medians are reported).
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Untimed runs per batch size first.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    #[command(flatten)]
    pub sampler: SamplerArgs,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output folder (default results/profile/<model>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    #[arg(long, default_value = "f32")]
    pub dtype: DTypePolicy,
}

/// Median GFLOP/s of a 1024 x 1024 x 1024 f32 matmul on `device` (the machine's reference rate).
pub fn matmul_1024_gflops(device: &Device, iters: usize) -> Result<f64> {
    let a = Tensor::randn(0f32, 1.0, (1024, 1024), device)?;
    let b = Tensor::randn(0f32, 1.0, (1024, 1024), device)?;
    a.matmul(&b)?; // warm-up
    let mut times = vec![];
    for _ in 0..iters {
        let sw = Stopwatch::start(device)?;
        let c = a.matmul(&b)?;
        times.push(sw.elapsed()?);
        drop(c);
    }
    let t = median(times).unwrap_or(Duration::ZERO).as_secs_f64();
    Ok(gflops_per_s(2.0 * 1024f64.powi(3), t))
}

fn kind_name(k: StepKind) -> &'static str {
    match k {
        StepKind::Transformer => "transformer",
        StepKind::DiffusionMlp => "diffusion_mlp",
        StepKind::Decode => "decode",
    }
}

pub fn run(args: ProfileArgs) -> Result<()> {
    let batches: Vec<usize> = args
        .batch
        .split(',')
        .map(|s| s.trim().parse::<usize>().with_context(|| format!("--batch: `{s}` is not a number")))
        .collect::<Result<_>>()?;
    ensure!(batches.iter().all(|&b| b > 0), "--batch sizes must be positive");
    ensure!(args.repeats > 0, "--repeats must be at least 1");
    // Device and dtype first: a CUDA or dtype problem is reported before any work.
    let device = args.device.open()?;
    let dtype: DType = args.dtype.compute_dtype(&device)?;
    let req = args.generator.request(args.sampler.to_settings());
    let resolved = resolve(&req)?;
    let name = resolved.name.clone();
    let num_classes = resolved.num_classes;
    let out = args.out.clone().unwrap_or_else(|| PathBuf::from("results/profile").join(&name));
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let threads = genbench_runtime::threads::num_threads();
    eprintln!(
        "profiling {name} on {} ({}, {} kernel route)",
        genbench_runtime::device::describe(&device),
        args.dtype.name(),
        genbench_runtime::kernels::route()
    );
    let mut generator = resolved.build(&device, dtype)?;
    let flops_ref = generator.flops_per_image();

    let mut csv = String::from("batch,repeat,step,kind,tokens,attended,ms,gflop,gflop_s\n");
    let mut summary_batches = vec![];
    let mut matmul_rates = vec![matmul_1024_gflops(&device, 10)?];
    let mut table = String::new();
    for &b in &batches {
        let mut rng = SeededSource::new(args.seed ^ b as u64);
        let labels: Vec<u32> = rng.uniform(b)?.into_iter().map(|u| ((u as f64 * num_classes as f64) as u32).min(num_classes as u32 - 1)).collect();
        for w in 0..args.warmup {
            generator.sample(&labels, args.seed + w as u64, &mut StepLog::default())?;
        }
        // Peak device memory of the observed runs (CUDA; nothing elsewhere).
        genbench_runtime::cuda::reset_peak_memory(&device)?;
        // (step, kind) -> (tokens, attended, flops, wall times)
        let mut per_step: BTreeMap<(usize, u8), (StepRecord, Vec<Duration>)> = BTreeMap::new();
        for r in 0..args.repeats {
            let mut log = StepLog::default();
            generator.sample(&labels, args.seed + r as u64, &mut log)?;
            for rec in &log.records {
                let ms = rec.wall.as_secs_f64() * 1e3;
                writeln!(
                    csv,
                    "{b},{r},{},{},{},{},{ms:.3},{:.4},{:.2}",
                    rec.step,
                    kind_name(rec.kind),
                    rec.tokens_decoded,
                    rec.tokens_attended,
                    rec.flops / 1e9,
                    gflops_per_s(rec.flops, rec.wall.as_secs_f64())
                )?;
                per_step.entry((rec.step, rec.kind as u8)).or_insert_with(|| (rec.clone(), vec![])).1.push(rec.wall);
            }
        }
        let memory = genbench_runtime::cuda::memory(&device)?;
        let mm = matmul_1024_gflops(&device, 10)?;
        matmul_rates.push(mm);
        let mut steps_json = vec![];
        let (mut total_s, mut total_flops, mut tr_s, mut tr_flops) = (0.0, 0.0, 0.0, 0.0);
        // MAR: the diffusion-MLP denoising passes and the decode, reported apart from the transformer.
        let (mut mlp_s, mut mlp_flops, mut dec_s) = (0.0, 0.0, 0.0);
        writeln!(table, "\n{name}, batch {b} (medians of {} runs; matmul 1024^3 in this run: {mm:.1} GFLOP/s)", args.repeats)?;
        writeln!(table, "{:>4} {:>12} {:>6} {:>8} {:>10} {:>9} {:>9} {:>8}", "step", "kind", "tokens", "attended", "ms", "GFLOP", "GFLOP/s", "%matmul")?;
        for (rec, walls) in per_step.values() {
            let t = median(walls.clone()).unwrap_or_default().as_secs_f64();
            let rate = gflops_per_s(rec.flops, t);
            total_s += t;
            total_flops += rec.flops;
            match rec.kind {
                StepKind::Transformer => {
                    tr_s += t;
                    tr_flops += rec.flops;
                }
                StepKind::DiffusionMlp => {
                    mlp_s += t;
                    mlp_flops += rec.flops;
                }
                StepKind::Decode => dec_s += t,
            }
            writeln!(
                table,
                "{:>4} {:>12} {:>6} {:>8} {:>10.1} {:>9.2} {:>9.1} {:>7.0}%",
                rec.step,
                kind_name(rec.kind),
                rec.tokens_decoded,
                rec.tokens_attended,
                t * 1e3,
                rec.flops / 1e9,
                rate,
                100.0 * rate / mm
            )?;
            steps_json.push(serde_json::json!({
                "step": rec.step, "kind": kind_name(rec.kind), "tokens": rec.tokens_decoded, "attended": rec.tokens_attended,
                "median_ms": t * 1e3, "gflop": rec.flops / 1e9, "gflop_s": rate, "fraction_of_matmul": rate / mm,
            }));
        }
        let tr_rate = gflops_per_s(tr_flops, tr_s);
        writeln!(
            table,
            "transformer steps: {:.1} ms, {:.1} GFLOP, {:.1} GFLOP/s ({:.0}% of matmul); all passes: {:.1} ms = {:.1} ms/image",
            tr_s * 1e3,
            tr_flops / 1e9,
            tr_rate,
            100.0 * tr_rate / mm,
            total_s * 1e3,
            total_s * 1e3 / b as f64
        )?;
        if mlp_flops > 0.0 {
            let rate = gflops_per_s(mlp_flops, mlp_s);
            writeln!(
                table,
                "diffusion-MLP steps: {:.1} ms, {:.1} GFLOP, {rate:.1} GFLOP/s ({:.0}% of matmul); decode {:.1} ms; per image: transformer {:.1} ms, MLP {:.1} ms, decode {:.1} ms",
                mlp_s * 1e3,
                mlp_flops / 1e9,
                100.0 * rate / mm,
                dec_s * 1e3,
                tr_s * 1e3 / b as f64,
                mlp_s * 1e3 / b as f64,
                dec_s * 1e3 / b as f64
            )?;
        }
        if let Some(m) = &memory {
            let gib = |x: u64| x as f64 / (1u64 << 30) as f64;
            writeln!(
                table,
                "device memory: peak {:.2} GiB held by tensors, {:.2} GiB now; whole device {:.2} of {:.2} GiB in use",
                gib(m.peak_bytes),
                gib(m.current_bytes),
                gib(m.device_used_bytes),
                gib(m.total_bytes)
            )?;
        }
        summary_batches.push(serde_json::json!({
            "batch": b, "matmul_1024_gflop_s": mm, "steps": steps_json, "device_memory": memory,
            "diffusion_mlp_ms": mlp_s * 1e3, "diffusion_mlp_gflop": mlp_flops / 1e9, "decode_ms": dec_s * 1e3,
            "transformer_ms": tr_s * 1e3, "transformer_gflop": tr_flops / 1e9, "transformer_gflop_s": tr_rate,
            "transformer_fraction_of_matmul": tr_rate / mm,
            "total_ms": total_s * 1e3, "total_gflop": total_flops / 1e9, "ms_per_image": total_s * 1e3 / b as f64,
        }));
    }
    let summary = serde_json::json!({
        "model": name,
        "device": genbench_runtime::device::describe(&device),
        "cuda_device": genbench_runtime::cuda::device_info(&device)?,
        "threads": threads,
        "dtype": args.dtype.name(),
        "kernels": genbench_runtime::kernels::report(),
        "settings": generator.settings(),
        "flops_convention": CONVENTION,
        "flops_per_image_gflop": {
            "transformer": flops_ref.transformer / 1e9, "decoder": flops_ref.decoder / 1e9,
            "diffusion_mlp": flops_ref.diffusion_mlp / 1e9, "per_step": flops_ref.per_step.iter().map(|f| f / 1e9).collect::<Vec<_>>(),
        },
        "matmul_1024_gflop_s_samples": matmul_rates,
        "batches": summary_batches,
    });
    std::fs::write(out.join("steps.csv"), csv)?;
    std::fs::write(out.join("summary.json"), serde_json::to_string_pretty(&summary)?)?;
    println!("FLOPs: {CONVENTION}");
    println!(
        "per image: transformer {:.1} GFLOP, {}decoder {:.1} GFLOP",
        flops_ref.transformer / 1e9,
        if flops_ref.diffusion_mlp > 0.0 { format!("diffusion MLP {:.1} GFLOP, ", flops_ref.diffusion_mlp / 1e9) } else { String::new() },
        flops_ref.decoder / 1e9
    );
    print!("{table}");
    let fast = genbench_runtime::kernels::fast_calls();
    println!(
        "\nkernel route: {}; fast CPU kernels run: {}",
        genbench_runtime::kernels::route(),
        if fast.is_empty() { "none".to_string() } else { fast.iter().map(|(k, n)| format!("{k} x{n}")).collect::<Vec<_>>().join(", ") }
    );
    println!("\nwrote {} and {}", out.join("steps.csv").display(), out.join("summary.json").display());
    Ok(())
}
