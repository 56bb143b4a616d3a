//! The interface between generator families and the harness.
//!
//! A generator turns class labels into uint8 NHWC images. While it works it reports every
//! network forward (and the tokenizer decode) to a [`StepObserver`]: that is where per-step
//! wall time and FLOPs come from, for every family alike.

use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// What kind of network pass a step is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// A transformer forward (with CFG: over the doubled batch, or both passes).
    Transformer,
    /// The diffusion-MLP denoising of one AR step (MAR).
    DiffusionMlp,
    /// The tokenizer / VAE decode to pixels.
    Decode,
}

impl StepKind {
    /// The kind as written in step tables and manifests (its serde name).
    pub fn name(self) -> &'static str {
        match self {
            StepKind::Transformer => "transformer",
            StepKind::DiffusionMlp => "diffusion_mlp",
            StepKind::Decode => "decode",
        }
    }
}

/// One observed step. FLOPs are analytic (2 x MACs, attention counted with the cache length),
/// for the whole batch as executed, CFG duplication included.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StepRecord {
    /// 0-based index of the generation step this pass belongs to.
    pub step: usize,
    pub kind: StepKind,
    /// Images in the batch (before CFG doubling).
    pub batch: usize,
    /// New tokens produced (or predicted) per image in this pass.
    pub tokens_decoded: usize,
    /// Keys attended per query (cache length, or sequence length for bidirectional passes).
    pub tokens_attended: usize,
    /// Wall time with device synchronisation before and after.
    pub wall: Duration,
    /// FLOPs of this pass for the whole batch.
    pub flops: f64,
}

pub trait StepObserver {
    fn on_step(&mut self, record: &StepRecord);
}

/// The size of one pass: a [`StepRecord`] but for its wall time.
#[derive(Clone, Copy, Debug)]
pub struct StepSize {
    pub step: usize,
    pub kind: StepKind,
    pub batch: usize,
    pub tokens_decoded: usize,
    pub tokens_attended: usize,
    pub flops: f64,
}

/// Runs one pass between two device synchronisations (`runtime::timer::Stopwatch`, so an
/// asynchronous launch is not mistaken for its run) and reports it to `observer` with its
/// size: the one place every family's sampler loop records a step.
pub fn record_step<T>(
    observer: &mut dyn StepObserver,
    device: &candle_core::Device,
    size: StepSize,
    pass: impl FnOnce() -> Result<T>,
) -> Result<T> {
    record_sized_step(observer, device, pass, |_| size)
}

/// [`record_step`] for a pass whose size is known only from its result (AutoNAT: how many
/// tokens a step fixes depends on ties in its re-masking); `size_of` runs after the timing.
pub fn record_sized_step<T>(
    observer: &mut dyn StepObserver,
    device: &candle_core::Device,
    pass: impl FnOnce() -> Result<T>,
    size_of: impl FnOnce(&T) -> StepSize,
) -> Result<T> {
    let stopwatch = genbench_runtime::timer::Stopwatch::start(device)?;
    let out = pass()?;
    let wall = stopwatch.elapsed()?;
    let StepSize { step, kind, batch, tokens_decoded, tokens_attended, flops } = size_of(&out);
    observer.on_step(&StepRecord { step, kind, batch, tokens_decoded, tokens_attended, wall, flops });
    Ok(out)
}

/// Observer that ignores everything.
pub struct NoObserver;
impl StepObserver for NoObserver {
    fn on_step(&mut self, _: &StepRecord) {}
}

/// Observer that keeps every record (profiling, tests).
#[derive(Default)]
pub struct StepLog {
    pub records: Vec<StepRecord>,
}
impl StepObserver for StepLog {
    fn on_step(&mut self, record: &StepRecord) {
        self.records.push(record.clone());
    }
}

/// Images produced by a generator.
#[derive(Clone, Debug)]
pub struct Samples {
    /// uint8 RGB, NHWC.
    pub images: Vec<u8>,
    pub n: usize,
    pub height: usize,
    pub width: usize,
    /// The sampled token ids (discrete families) flattened per image, when available.
    pub token_ids: Option<Vec<u32>>,
    /// The sampled continuous latents (MAR) flattened per image, when available.
    pub latents: Option<Vec<f32>>,
}

/// Analytic FLOPs per image, split by part (2 x MACs).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FlopsPerImage {
    pub transformer: f64,
    pub diffusion_mlp: f64,
    pub decoder: f64,
    /// Per generation step (transformer + MLP), in step order.
    pub per_step: Vec<f64>,
}

impl FlopsPerImage {
    pub fn total(&self) -> f64 {
        self.transformer + self.diffusion_mlp + self.decoder
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    Var,
    RasterAr,
    Mar,
    AutoNat,
}

impl Family {
    /// The name suite files and manifests write (the serde name).
    pub fn name(self) -> &'static str {
        match self {
            Self::Var => "var",
            Self::RasterAr => "raster_ar",
            Self::Mar => "mar",
            Self::AutoNat => "auto_nat",
        }
    }
}

pub trait Generator {
    /// Model name, e.g. `var-d16`.
    fn name(&self) -> &str;
    fn family(&self) -> Family;
    /// Output image side in pixels.
    fn image_size(&self) -> usize;
    /// Number of valid class labels (0..num_classes).
    fn num_classes(&self) -> usize;
    /// The settings actually used (defaults applied), for manifests.
    fn settings(&self) -> serde_json::Value;
    /// Analytic FLOPs per image with the current settings.
    fn flops_per_image(&self) -> FlopsPerImage;
    /// Samples one image per label. The same (labels, seed) gives the same images.
    fn sample(&mut self, labels: &[u32], seed: u64, observer: &mut dyn StepObserver) -> Result<Samples>;
    /// The weight products of one pass of `step`'s size (whole batch, CFG rows included): one
    /// transformer block's products (every block has the same) and the output head, so that a
    /// timed run of the list weighs each shape as the pass does. `genbench profile` times them as
    /// the same-shape reference matmul. Empty where not described (no ratio is shown then).
    fn step_matmuls(&self, step: &StepSize) -> Vec<MatmulShape> {
        let _ = step;
        vec![]
    }
}

/// One product `(m x k) · (k x n)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MatmulShape {
    pub m: usize,
    pub k: usize,
    pub n: usize,
}

impl MatmulShape {
    pub fn new(m: usize, k: usize, n: usize) -> Self {
        Self { m, k, n }
    }
    /// 2 x MACs.
    pub fn flops(&self) -> f64 {
        2.0 * (self.m * self.k * self.n) as f64
    }
}

/// The weight products of one pre-norm transformer block over `m` rows of width `d`: the fused
/// QKV projection, the output projection and the MLP's `mlp` products (`(k, n)` each, in order).
pub fn transformer_block_matmuls(m: usize, d: usize, mlp: &[(usize, usize)]) -> Vec<MatmulShape> {
    let mut out = vec![MatmulShape::new(m, d, 3 * d), MatmulShape::new(m, d, d)];
    out.extend(mlp.iter().map(|&(k, n)| MatmulShape::new(m, k, n)));
    out
}

/// Converts images in [-1, 1] (NCHW f32) to uint8 NHWC the way ADM samplers do:
/// `((x + 1) * 127.5).clamp(0, 255)` truncated to uint8.
pub fn to_uint8_nhwc_from_signed(x: &candle_core::Tensor) -> Result<(Vec<u8>, usize, usize, usize)> {
    let (n, c, h, w) = x.dims4()?;
    anyhow::ensure!(c == 3, "expected 3 channels, got {c}");
    let v = ((x.permute((0, 2, 3, 1))?.to_dtype(candle_core::DType::F32)? + 1.0)? * 127.5)?
        .clamp(0f32, 255f32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    Ok((v.into_iter().map(|f| f as u8).collect(), n, h, w))
}

/// Converts images in [-1, 1] (NCHW) to uint8 NHWC the way MAR's `engine_mar.py` writes its
/// PNGs: `round(clip((x + 1) / 2 * 255, 0, 255))` in float32 with NumPy's half-to-even rounding
/// (not truncation as ADM does).
pub fn to_uint8_nhwc_rounded_from_signed(x: &candle_core::Tensor) -> Result<(Vec<u8>, usize, usize, usize)> {
    let (n, c, h, w) = x.dims4()?;
    anyhow::ensure!(c == 3, "expected 3 channels, got {c}");
    let v = x.permute((0, 2, 3, 1))?.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let px = v.into_iter().map(|f| ((((f + 1.0) / 2.0) * 255.0).clamp(0.0, 255.0)).round_ties_even() as u8).collect();
    Ok((px, n, h, w))
}

/// Converts images in [0, 1] (NCHW f32) to uint8 NHWC: `(x * 255).clamp(0, 255)` truncated.
pub fn to_uint8_nhwc_from_unit(x: &candle_core::Tensor) -> Result<(Vec<u8>, usize, usize, usize)> {
    to_uint8_nhwc_from_signed(&((x * 2.0)? - 1.0)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn family_names_are_the_serde_names() {
        for f in [Family::Var, Family::RasterAr, Family::Mar, Family::AutoNat] {
            assert_eq!(serde_json::to_value(f).unwrap(), f.name());
            assert_eq!(serde_json::from_value::<Family>(f.name().into()).unwrap(), f);
        }
    }
    #[test]
    fn record_step_reports_the_pass_with_its_wall_time() {
        let mut log = StepLog::default();
        let size = StepSize { step: 3, kind: StepKind::Decode, batch: 2, tokens_decoded: 0, tokens_attended: 0, flops: 5.0 };
        let v = record_step(&mut log, &Device::Cpu, size, || {
            std::thread::sleep(Duration::from_millis(2));
            Ok(7)
        })
        .unwrap();
        assert_eq!(v, 7);
        let r = &log.records[0];
        assert_eq!((log.records.len(), r.step, r.kind, r.batch, r.flops), (1, 3, StepKind::Decode, 2, 5.0));
        assert!(r.wall >= Duration::from_millis(2));
        // A failing pass is not reported.
        assert!(record_step(&mut log, &Device::Cpu, size, || -> Result<()> { anyhow::bail!("no") }).is_err());
        assert_eq!(log.records.len(), 1);
        // A size read from the result.
        let v = record_sized_step(&mut log, &Device::Cpu, || Ok(4usize), |&n| StepSize { tokens_decoded: n, ..size }).unwrap();
        assert_eq!((v, log.records.len(), log.records[1].tokens_decoded), (4, 2, 4));
    }

    #[test]
    fn step_kind_names_are_their_serde_names() {
        for kind in [StepKind::Transformer, StepKind::DiffusionMlp, StepKind::Decode] {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.name());
        }
    }

    #[test]
    fn uint8_conversion_truncates_like_adm() {
        let x = Tensor::new(&[-1.0f32, -0.5, 0.0, 0.999, 1.0, 2.0], &Device::Cpu).unwrap().reshape((1, 3, 1, 2)).unwrap();
        let (v, n, h, w) = to_uint8_nhwc_from_signed(&x).unwrap();
        assert_eq!((n, h, w), (1, 1, 2));
        // NHWC: pixel 0 = channels (-1, 0, 1), pixel 1 = (-0.5, 0.999, 2.0)
        assert_eq!(v, vec![0, 127, 255, 63, 254, 255]);
        // MAR rounds half to even: 0 -> 127.5 -> 128, 0.999 -> 254.87 -> 255, -0.5 -> 63.75 -> 64.
        let (v, ..) = to_uint8_nhwc_rounded_from_signed(&x).unwrap();
        assert_eq!(v, vec![0, 128, 255, 64, 255, 255]);
    }
}
