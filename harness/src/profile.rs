//! Profiles of a generator: per-step wall time, FLOPs and throughput.
//!
//! For each batch size: `warmup` untimed sampling runs, then `repeats` observed runs. Every
//! network pass (transformer steps and the tokenizer decode) is one row of `steps.csv`:
//! `batch, repeat, step, kind, tokens, attended, ms, gflop, gflop_s`. `summary.json` and the
//! printed table hold per-step medians, totals per image, and each step's throughput as a share
//! of plain matmuls of the step's own weight-product shapes (`Generator::step_matmuls`), timed in
//! the same run on the same device, median of [`SAME_SHAPE_RUNS`] runs. A 1024x1024 f32 matmul
//! rate is kept as the machine's headline figure.
//! FLOPs follow `genbench_models::flops::CONVENTION` (2 x MACs, attention counted with the
//! attended key count, whole batch including the CFG rows).

use anyhow::{ensure, Context, Result};
use candle_core::{Device, Tensor};
use genbench_models::flops::{gflops_per_s, CONVENTION};
use genbench_models::generator::{Generator, MatmulShape, StepKind, StepLog, StepRecord, StepSize};
use genbench_runtime::timer::{median, Stopwatch};
use genbench_runtime::{RandomSource, SeededSource};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What to measure.
#[derive(Clone, Debug)]
pub struct ProfileOptions {
    /// Batch sizes, in order.
    pub batches: Vec<usize>,
    /// Observed runs per batch size (medians are reported).
    pub repeats: usize,
    /// Untimed runs per batch size first.
    pub warmup: usize,
    /// Seed of the labels and of the sampling runs.
    pub seed: u64,
}

impl ProfileOptions {
    /// Refuses options that measure nothing (checked before any model is built).
    pub fn validate(&self) -> Result<()> {
        ensure!(!self.batches.is_empty() && self.batches.iter().all(|&b| b > 0), "--batch sizes must be positive");
        ensure!(self.repeats > 0, "--repeats must be at least 1");
        Ok(())
    }
}

/// A finished profile: the per-step rows, the summary and the human-readable table.
#[derive(Clone, Debug)]
pub struct Profile {
    /// `steps.csv`: one row per observed network pass.
    pub steps_csv: String,
    /// `summary.json`.
    pub summary: serde_json::Value,
    /// Per-batch tables of per-step medians, for the console.
    pub table: String,
}

impl Profile {
    /// What `genbench profile` prints: the FLOPs convention and per-image FLOPs, the per-step
    /// table, and which kernel route ran (with the fast CPU kernels' call counts).
    pub fn console_report(&self, flops: &genbench_models::generator::FlopsPerImage) -> String {
        let mut out = format!("FLOPs: {CONVENTION}\n");
        let mlp = if flops.diffusion_mlp > 0.0 { format!("diffusion MLP {:.1} GFLOP, ", flops.diffusion_mlp / 1e9) } else { String::new() };
        let _ = writeln!(out, "per image: transformer {:.1} GFLOP, {mlp}decoder {:.1} GFLOP", flops.transformer / 1e9, flops.decoder / 1e9);
        out += &self.table;
        let fast = genbench_runtime::kernels::fast_calls();
        let fast =
            if fast.is_empty() { "none".to_string() } else { fast.iter().map(|(k, n)| format!("{k} x{n}")).collect::<Vec<_>>().join(", ") };
        let _ = writeln!(out, "\nkernel route: {}; fast CPU kernels run: {fast}", genbench_runtime::kernels::route());
        out
    }

    /// Writes `steps.csv` and `summary.json` into `dir` (created if needed); returns their paths.
    pub fn write(&self, dir: &Path) -> Result<(PathBuf, PathBuf)> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let (csv, summary) = (dir.join("steps.csv"), dir.join("summary.json"));
        std::fs::write(&csv, &self.steps_csv).with_context(|| format!("cannot write {}", csv.display()))?;
        std::fs::write(&summary, serde_json::to_string_pretty(&self.summary)?)
            .with_context(|| format!("cannot write {}", summary.display()))?;
        Ok((csv, summary))
    }
}

/// Parses a comma-separated list of positive batch sizes (`1,8`).
pub fn parse_batches(text: &str) -> Result<Vec<usize>> {
    let batches: Vec<usize> = text
        .split(',')
        .map(|s| s.trim().parse::<usize>().with_context(|| format!("--batch: `{s}` is not a number")))
        .collect::<Result<_>>()?;
    ensure!(batches.iter().all(|&b| b > 0), "--batch sizes must be positive");
    Ok(batches)
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

/// Timed runs of a step's matmul shapes whose median is the step's reference rate (after one
/// untimed warm-up run).
pub const SAME_SHAPE_RUNS: usize = 5;

/// Median GFLOP/s of `runs` calls of `run_once` (each returns its wall time in seconds for
/// `flops` FLOPs), after one untimed call.
pub fn median_rate(flops: f64, runs: usize, mut run_once: impl FnMut() -> Result<f64>) -> Result<f64> {
    ensure!(runs > 0, "at least one timed run is needed");
    run_once()?;
    let times = (0..runs).map(|_| run_once().map(Duration::from_secs_f64)).collect::<Result<Vec<_>>>()?;
    Ok(gflops_per_s(flops, median(times).unwrap_or_default().as_secs_f64()))
}

/// GFLOP/s of plain f32 matmuls of `shapes` on `device`: one run multiplies every shape once
/// (random operands, allocated once), the rate is total FLOPs over the run's time, median of
/// `runs` runs.
pub fn same_shape_matmul_gflops(device: &Device, shapes: &[MatmulShape], runs: usize) -> Result<f64> {
    ensure!(!shapes.is_empty(), "no matmul shapes to time");
    let operands = shapes
        .iter()
        .map(|s| Ok((Tensor::randn(0f32, 1.0, (s.m, s.k), device)?, Tensor::randn(0f32, 1.0, (s.k, s.n), device)?)))
        .collect::<Result<Vec<_>>>()?;
    let flops: f64 = shapes.iter().map(MatmulShape::flops).sum();
    median_rate(flops, runs, || {
        let sw = Stopwatch::start(device)?;
        for (a, b) in &operands {
            drop(a.matmul(b)?);
        }
        Ok(sw.elapsed()?.as_secs_f64())
    })
}

/// The size of a recorded pass (what `Generator::step_matmuls` takes).
fn step_size(rec: &StepRecord) -> StepSize {
    StepSize {
        step: rec.step,
        kind: rec.kind,
        batch: rec.batch,
        tokens_decoded: rec.tokens_decoded,
        tokens_attended: rec.tokens_attended,
        flops: rec.flops,
    }
}

/// Profiles `generator` (named `name`, running on `device` in `dtype_name`) as `opts` says.
pub fn profile_generator(
    generator: &mut dyn Generator,
    name: &str,
    device: &Device,
    dtype_name: &str,
    opts: &ProfileOptions,
) -> Result<Profile> {
    opts.validate()?;
    let num_classes = generator.num_classes();
    let threads = genbench_runtime::threads::num_threads();
    let flops_ref = generator.flops_per_image();
    let mut csv = String::from("batch,repeat,step,kind,tokens,attended,ms,gflop,gflop_s\n");
    let mut summary_batches = vec![];
    let mut matmul_rates = vec![matmul_1024_gflops(device, 10)?];
    let mut table = String::new();
    for &b in &opts.batches {
        let mut rng = SeededSource::new(opts.seed ^ b as u64);
        let labels: Vec<u32> =
            rng.uniform(b)?.into_iter().map(|u| ((u as f64 * num_classes as f64) as u32).min(num_classes as u32 - 1)).collect();
        for w in 0..opts.warmup {
            generator.sample(&labels, opts.seed + w as u64, &mut StepLog::default())?;
        }
        // Peak device memory of the observed runs (CUDA; nothing elsewhere).
        genbench_runtime::cuda::reset_peak_memory(device)?;
        // (step, kind) -> (tokens, attended, flops, wall times)
        let mut per_step: BTreeMap<(usize, u8), (StepRecord, Vec<Duration>)> = BTreeMap::new();
        for r in 0..opts.repeats {
            let mut log = StepLog::default();
            generator.sample(&labels, opts.seed + r as u64, &mut log)?;
            for rec in &log.records {
                let ms = rec.wall.as_secs_f64() * 1e3;
                writeln!(
                    csv,
                    "{b},{r},{},{},{},{},{ms:.3},{:.4},{:.2}",
                    rec.step,
                    rec.kind.name(),
                    rec.tokens_decoded,
                    rec.tokens_attended,
                    rec.flops / 1e9,
                    gflops_per_s(rec.flops, rec.wall.as_secs_f64())
                )?;
                per_step.entry((rec.step, rec.kind as u8)).or_insert_with(|| (rec.clone(), vec![])).1.push(rec.wall);
            }
        }
        let memory = genbench_runtime::cuda::memory(device)?;
        let mm = matmul_1024_gflops(device, 10)?;
        matmul_rates.push(mm);
        // The same-shape reference rate of each step, measured once per distinct shape list
        // (LlamaGen's decode steps all share one).
        let mut same_shape: BTreeMap<Vec<MatmulShape>, f64> = BTreeMap::new();
        let mut reference_rate = |rec: &StepRecord| -> Result<Option<f64>> {
            let shapes = generator.step_matmuls(&step_size(rec));
            if shapes.is_empty() {
                return Ok(None);
            }
            if let Some(r) = same_shape.get(&shapes) {
                return Ok(Some(*r));
            }
            let r = same_shape_matmul_gflops(device, &shapes, SAME_SHAPE_RUNS)?;
            same_shape.insert(shapes, r);
            Ok(Some(r))
        };
        let mut steps_json = vec![];
        let (mut total_s, mut total_flops, mut tr_s, mut tr_flops) = (0.0, 0.0, 0.0, 0.0);
        // Transformer FLOPs with a same-shape rate, and the time the matmuls would take for them.
        let (mut tr_ref_flops, mut tr_ref_s, mut tr_ref_own_s) = (0.0, 0.0, 0.0);
        // MAR: the diffusion-MLP denoising passes and the decode, reported apart from the transformer.
        let (mut mlp_s, mut mlp_flops, mut dec_s) = (0.0, 0.0, 0.0);
        writeln!(
            table,
            "\n{name}, batch {b} (medians of {} runs; matmul 1024^3 in this run: {mm:.1} GFLOP/s; %matmul: of plain matmuls of \
             the step's own shapes, median of {SAME_SHAPE_RUNS} runs in this run)",
            opts.repeats
        )?;
        writeln!(
            table,
            "{:>4} {:>12} {:>6} {:>8} {:>10} {:>9} {:>9} {:>8}",
            "step", "kind", "tokens", "attended", "ms", "GFLOP", "GFLOP/s", "%matmul"
        )?;
        for (rec, walls) in per_step.values() {
            let t = median(walls.clone()).unwrap_or_default().as_secs_f64();
            let rate = gflops_per_s(rec.flops, t);
            let reference = reference_rate(rec)?;
            total_s += t;
            total_flops += rec.flops;
            match rec.kind {
                StepKind::Transformer => {
                    tr_s += t;
                    tr_flops += rec.flops;
                    if let Some(r) = reference {
                        tr_ref_flops += rec.flops;
                        tr_ref_s += rec.flops / (r * 1e9);
                        tr_ref_own_s += t;
                    }
                }
                StepKind::DiffusionMlp => {
                    mlp_s += t;
                    mlp_flops += rec.flops;
                }
                StepKind::Decode => dec_s += t,
            }
            let share = reference.map_or_else(|| "-".to_string(), |r| format!("{:.0}%", 100.0 * rate / r));
            writeln!(
                table,
                "{:>4} {:>12} {:>6} {:>8} {:>10.1} {:>9.2} {:>9.1} {:>8}",
                rec.step,
                rec.kind.name(),
                rec.tokens_decoded,
                rec.tokens_attended,
                t * 1e3,
                rec.flops / 1e9,
                rate,
                share
            )?;
            steps_json.push(serde_json::json!({
                "step": rec.step, "kind": rec.kind.name(), "tokens": rec.tokens_decoded, "attended": rec.tokens_attended,
                "median_ms": t * 1e3, "gflop": rec.flops / 1e9, "gflop_s": rate,
                "same_shape_matmul_gflop_s": reference, "fraction_of_matmul": reference.map(|r| rate / r),
                "fraction_of_matmul_1024": rate / mm,
            }));
        }
        let tr_rate = gflops_per_s(tr_flops, tr_s);
        // Time the same-shape matmuls would take for the steps' FLOPs over the steps' own time.
        let tr_fraction = (tr_ref_flops > 0.0).then(|| tr_ref_s / tr_ref_own_s);
        writeln!(
            table,
            "transformer steps: {:.1} ms, {:.1} GFLOP, {:.1} GFLOP/s ({} of same-shape matmul); all passes: {:.1} ms = {:.1} ms/image",
            tr_s * 1e3,
            tr_flops / 1e9,
            tr_rate,
            tr_fraction.map_or_else(|| "-".to_string(), |f| format!("{:.0}%", 100.0 * f)),
            total_s * 1e3,
            total_s * 1e3 / b as f64
        )?;
        if mlp_flops > 0.0 {
            let rate = gflops_per_s(mlp_flops, mlp_s);
            writeln!(
                table,
                "diffusion-MLP steps: {:.1} ms, {:.1} GFLOP, {rate:.1} GFLOP/s ({:.0}% of matmul 1024^3); decode {:.1} ms; per image: transformer {:.1} ms, MLP {:.1} ms, decode {:.1} ms",
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
            "transformer_fraction_of_matmul": tr_fraction, "transformer_fraction_of_matmul_1024": tr_rate / mm,
            "total_ms": total_s * 1e3, "total_gflop": total_flops / 1e9, "ms_per_image": total_s * 1e3 / b as f64,
        }));
    }
    let summary = serde_json::json!({
        "model": name,
        "device": genbench_runtime::device::describe(device),
        "cuda_device": genbench_runtime::cuda::device_info(device)?,
        "threads": threads,
        "dtype": dtype_name,
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
    Ok(Profile { steps_csv: csv, summary, table })
}

#[cfg(test)]
mod tests {
    use super::*;
    use genbench_models::generator::{Family, FlopsPerImage, Samples, StepObserver};

    #[test]
    fn median_rate_is_the_median_of_the_timed_runs_after_one_warm_up() {
        // Warm-up 100 s (ignored), then 4, 1, 2, 8, 3 s: median 3 s for 6 GFLOP = 2 GFLOP/s.
        let mut times = vec![100.0, 4.0, 1.0, 2.0, 8.0, 3.0].into_iter();
        let mut calls = 0;
        let rate = median_rate(6e9, 5, || {
            calls += 1;
            Ok(times.next().unwrap())
        })
        .unwrap();
        assert_eq!(calls, 6);
        assert!((rate - 2.0).abs() < 1e-12, "rate {rate}");
        assert!(median_rate(1.0, 0, || Ok(1.0)).is_err());
    }

    /// Two transformer steps of different sizes and one decode; remembers what it was asked.
    struct FakeGenerator {
        asked: std::cell::RefCell<Vec<(usize, StepKind, usize, usize)>>,
    }

    impl Generator for FakeGenerator {
        fn name(&self) -> &str {
            "fake"
        }
        fn family(&self) -> Family {
            Family::Var
        }
        fn image_size(&self) -> usize {
            8
        }
        fn num_classes(&self) -> usize {
            10
        }
        fn settings(&self) -> serde_json::Value {
            serde_json::json!({})
        }
        fn flops_per_image(&self) -> FlopsPerImage {
            FlopsPerImage { transformer: 0.0, diffusion_mlp: 0.0, decoder: 0.0, per_step: vec![] }
        }
        fn sample(&mut self, labels: &[u32], _: u64, observer: &mut dyn StepObserver) -> Result<Samples> {
            let b = labels.len();
            for (step, kind, tokens) in [(0, StepKind::Transformer, 1), (1, StepKind::Transformer, 4), (2, StepKind::Decode, 0)] {
                let rec = StepRecord {
                    step,
                    kind,
                    batch: b,
                    tokens_decoded: tokens,
                    tokens_attended: tokens,
                    wall: Duration::from_millis(1),
                    flops: 1e6,
                };
                observer.on_step(&rec);
            }
            Ok(Samples { images: vec![0; b * 8 * 8 * 3], n: b, height: 8, width: 8, token_ids: None, latents: None })
        }
        fn step_matmuls(&self, step: &StepSize) -> Vec<MatmulShape> {
            self.asked.borrow_mut().push((step.step, step.kind, step.batch, step.tokens_decoded));
            match step.kind {
                StepKind::Transformer => vec![MatmulShape::new(step.batch * step.tokens_decoded, 16, 64)],
                _ => vec![],
            }
        }
    }

    #[test]
    fn each_step_is_compared_with_matmuls_of_its_own_shapes() {
        let mut g = FakeGenerator { asked: Default::default() };
        let opts = ProfileOptions { batches: vec![2], repeats: 1, warmup: 0, seed: 0 };
        let p = profile_generator(&mut g, "fake", &Device::Cpu, "f32", &opts).unwrap();
        // Asked once per recorded (step, kind) with the step's own batch and token count.
        assert_eq!(
            *g.asked.borrow(),
            vec![(0, StepKind::Transformer, 2, 1), (1, StepKind::Transformer, 2, 4), (2, StepKind::Decode, 2, 0)]
        );
        let steps = p.summary["batches"][0]["steps"].as_array().unwrap().clone();
        for s in &steps[..2] {
            assert!(s["same_shape_matmul_gflop_s"].as_f64().unwrap() > 0.0, "{s}");
            assert!(s["fraction_of_matmul"].as_f64().unwrap() > 0.0, "{s}");
        }
        // A pass with no described matmuls gets no ratio rather than the 1024^3 one.
        assert!(steps[2]["fraction_of_matmul"].is_null(), "{}", steps[2]);
        assert!(p.summary["batches"][0]["transformer_fraction_of_matmul"].as_f64().unwrap() > 0.0);
    }
}
