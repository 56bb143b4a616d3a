//! Raster-AR speed figures (random weights, so no checkpoint is needed):
//!
//! 1. A plain memory-copy bandwidth, measured in this same process.
//! 2. LlamaGen's incremental decode steps: bytes each step must read (every weight but the
//!    embedding tables, plus the cached keys and values) over its wall time, against (1).
//! 3. Per-image wall time (transformer steps + VQ decode) at each batch size.
//! 4. Optionally VAR at the same batch sizes, for the AR-vs-VAR ratio.
//!
//! ```text
//! cargo run --release -p genbench-models --example raster_ar_speed -- \
//!     --models llamagen-b,llamagen-l --var var-d16 --batch 1,8 --threads 2 --repeats 2
//! ```
//! Every figure is the median over `--repeats` runs after `--warmup` (default 1) untimed ones.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use genbench_models::generator::{Generator, StepKind, StepLog};
use genbench_models::generators::llamagen::{LlamaGenConfig, LlamaGenGenerator, LlamaGenSampling};
use genbench_models::generators::taming::{TamingConfig, TamingGenerator, TamingSampling};
use genbench_models::generators::var::{VarConfig, VarGenerator, VarSampling, VarWeights};
use std::time::{Duration, Instant};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// STREAM-style copy bandwidth: (bytes read + bytes written) / time, over a buffer far larger
/// than the caches, median of 5 copies.
fn memcpy_bandwidth(bytes: usize) -> f64 {
    let n = bytes / 4;
    let src: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let mut dst = vec![0f32; n];
    dst.copy_from_slice(&src); // touch the pages
    let mut rates = vec![];
    for _ in 0..5 {
        let t = Instant::now();
        dst.copy_from_slice(&src);
        let s = t.elapsed().as_secs_f64();
        std::hint::black_box(&dst);
        rates.push(2.0 * bytes as f64 / s);
    }
    median(rates)
}

struct Args {
    models: Vec<String>,
    var: Vec<String>,
    batches: Vec<usize>,
    threads: Option<usize>,
    repeats: usize,
    warmup: usize,
    cfg: Option<f64>,
}

fn parse_args() -> Result<Args> {
    let mut a = Args { models: vec!["llamagen-b".into()], var: vec![], batches: vec![1], threads: None, repeats: 2, warmup: 1, cfg: None };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().with_context(|| format!("{k} needs a value"));
        match k.as_str() {
            "--models" => a.models = v()?.split(',').map(str::to_string).collect(),
            "--var" => a.var = v()?.split(',').map(str::to_string).collect(),
            "--batch" => a.batches = v()?.split(',').map(|s| s.parse()).collect::<Result<_, _>>()?,
            "--threads" => a.threads = Some(v()?.parse()?),
            "--repeats" => a.repeats = v()?.parse()?,
            "--warmup" => a.warmup = v()?.parse()?,
            "--cfg" => a.cfg = Some(v()?.parse()?),
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(a)
}

enum Ar {
    LlamaGen(Box<LlamaGenGenerator>),
    Taming(Box<TamingGenerator>),
}

impl Ar {
    fn generator(&mut self) -> &mut dyn Generator {
        match self {
            Ar::LlamaGen(g) => g.as_mut(),
            Ar::Taming(g) => g.as_mut(),
        }
    }
    /// Bytes a cached step with `rows` sequences and `k` keys must read.
    fn step_bytes(&mut self, rows: usize, k: usize) -> f64 {
        match self {
            Ar::LlamaGen(g) => g.gpt().step_read_bytes(rows, k),
            Ar::Taming(g) => g.gpt().step_read_bytes(rows, k),
        }
    }
    fn rows(&self, batch: usize) -> usize {
        match self {
            Ar::LlamaGen(g) => batch * if g.sampling().uses_cfg() { 2 } else { 1 },
            Ar::Taming(_) => batch,
        }
    }
}

fn build_ar(name: &str, cfg: Option<f64>) -> Result<Ar> {
    let dev = Device::Cpu;
    if name == "taming-cin" {
        let g = TamingGenerator::random_init(name, TamingConfig::cin(), TamingSampling::default(), 0, &dev, DType::F32)?;
        return Ok(Ar::Taming(Box::new(g)));
    }
    let size = name.strip_prefix("llamagen-").with_context(|| format!("unknown model {name}"))?;
    // GETTING_STARTED.md's guidance for B / L.
    let s = LlamaGenSampling::fid_recipe(cfg.unwrap_or(2.0));
    let g = LlamaGenGenerator::random_init(name, LlamaGenConfig::published(size, 256)?, s, 0, &dev, DType::F32)?;
    Ok(Ar::LlamaGen(Box::new(g)))
}

fn labels(batch: usize) -> Vec<u32> {
    (0..batch as u32).map(|i| (i * 97 + 1) % 1000).collect()
}

/// Runs one generation, returning (total wall, per-record log).
fn run(g: &mut dyn Generator, batch: usize, seed: u64) -> Result<(Duration, StepLog)> {
    let mut log = StepLog::default();
    let t = Instant::now();
    g.sample(&labels(batch), seed, &mut log)?;
    Ok((t.elapsed(), log))
}

fn main() -> Result<()> {
    // Large tensors reused from the heap, as in the genbench binary (timings comparable).
    genbench_runtime::memory::keep_freed_memory();
    let a = parse_args()?;
    let threads = genbench_runtime::threads::configure(a.threads);
    println!("threads: {threads}; weights: random (f32); timings: median of {} runs after {} warm-up run(s)", a.repeats, a.warmup);
    let bw = memcpy_bandwidth(1 << 30);
    println!("memcpy bandwidth (read + write, 1 GiB buffer): {:.2} GB/s", bw / 1e9);

    let mut per_image: Vec<(String, usize, f64, f64, f64)> = vec![]; // name, batch, s/img, transformer s/img, decode s/img
    for name in &a.models {
        let mut ar = build_ar(name, a.cfg)?;
        for &b in &a.batches {
            let rows = ar.rows(b);
            for _ in 0..a.warmup {
                run(ar.generator(), b, 0)?; // allocates caches, touches every weight
            }
            let mut totals = vec![];
            let mut trans = vec![];
            let mut dec = vec![];
            let mut step_bw = vec![];
            let mut step_ms = vec![];
            for r in 0..a.repeats {
                let (wall, log) = run(ar.generator(), b, 1 + r as u64)?;
                totals.push(wall.as_secs_f64());
                let mut t_sum = 0.0;
                for rec in &log.records {
                    let s = rec.wall.as_secs_f64();
                    match rec.kind {
                        StepKind::Transformer => {
                            t_sum += s;
                            // Decode steps (one token attending the cache); the prefill is the
                            // same size here but is left out to report the steady state.
                            if rec.step > 0 {
                                step_bw.push(ar.step_bytes(rows, rec.tokens_attended) / s);
                                step_ms.push(s * 1e3);
                            }
                        }
                        StepKind::Decode => dec.push(s / b as f64),
                        StepKind::DiffusionMlp => {}
                    }
                }
                trans.push(t_sum / b as f64);
            }
            let bytes0 = ar.step_bytes(rows, 1);
            let bytes_last = ar.step_bytes(rows, 256);
            println!(
                "{name} batch {b} ({rows} rows): decode step median {:.2} ms, reads {:.1}-{:.1} MB/step, achieved {:.2} GB/s = {:.0}% of memcpy; \
                 per image {:.3} s (transformer {:.3} s + VQ decode {:.3} s)",
                median(step_ms),
                bytes0 / 1e6,
                bytes_last / 1e6,
                median(step_bw.clone()) / 1e9,
                100.0 * median(step_bw) / bw,
                median(totals.clone()) / b as f64,
                median(trans.clone()),
                median(dec.clone()),
            );
            per_image.push((name.clone(), b, median(totals) / b as f64, median(trans), median(dec)));
        }
    }
    for name in &a.var {
        let (cfg, vae) = VarConfig::published(name).with_context(|| format!("unknown VAR model {name}"))?;
        let mut g = VarGenerator::load(name, &cfg, &vae, VarWeights::RandomInit, VarSampling::default(), &Device::Cpu, DType::F32)?;
        for &b in &a.batches {
            for _ in 0..a.warmup {
                run(&mut g, b, 0)?;
            }
            let mut totals = vec![];
            let mut trans = vec![];
            let mut dec = vec![];
            for r in 0..a.repeats {
                let (wall, log) = run(&mut g, b, 1 + r as u64)?;
                totals.push(wall.as_secs_f64());
                let t: f64 = log.records.iter().filter(|r| r.kind == StepKind::Transformer).map(|r| r.wall.as_secs_f64()).sum();
                let d: f64 = log.records.iter().filter(|r| r.kind == StepKind::Decode).map(|r| r.wall.as_secs_f64()).sum();
                trans.push(t / b as f64);
                dec.push(d / b as f64);
            }
            println!(
                "{name} batch {b}: per image {:.3} s (transformer {:.3} s + VQVAE decode {:.3} s)",
                median(totals.clone()) / b as f64,
                median(trans.clone()),
                median(dec.clone())
            );
            per_image.push((name.clone(), b, median(totals) / b as f64, median(trans), median(dec)));
        }
    }
    if !a.var.is_empty() {
        println!("\nAR / VAR wall-clock per image (same batch):");
        println!("| AR model | VAR model | batch | AR s/img | VAR s/img | AR/VAR |");
        println!("|---|---|---|---|---|---|");
        for (vn, vb, vs, _, _) in per_image.iter().filter(|p| a.var.contains(&p.0)) {
            for (an, ab, as_, _, _) in per_image.iter().filter(|p| a.models.contains(&p.0)) {
                if ab == vb {
                    println!("| {an} | {vn} | {ab} | {as_:.2} | {vs:.2} | {:.2}x |", as_ / vs);
                }
            }
        }
    }
    Ok(())
}
