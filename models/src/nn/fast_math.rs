//! Element-wise activations on the CPU, row-parallel and vectorised.
//!
//! candle's CPU `gelu` / `silu` run on one thread and call `tanhf` / `expf` per element
//! (measured here: 62 ms for a 512 x 4096 GELU-tanh, about as long as the 4096 x 1024 matmul
//! before it). These kernels use the exact identities
//! * `gelu_tanh(x) = 0.5 x (1 + tanh(u)) = x / (1 + exp(-2u))`, `u = sqrt(2/pi) (x + 0.044715 x^3)`,
//! * `silu(x) = x / (1 + exp(-x))`,
//!
//! with an `exp` built from `2^n * 2^f` (n integer, |f| <= 1/2, degree-7 polynomial for `2^f`,
//! relative error < 2e-7, i.e. within two float32 ulps), compiled for AVX2+FMA when the CPU has
//! them and split over rayon's pool. Other devices and dtypes fall back to candle's ops.
//! The exact GELU uses a rational approximation of erf instead (no exp; see [`gelu_erf`]).
//! Users: VAR (GELU-tanh FFN), LlamaGen (SwiGLU's SiLU), MAR / AutoNAT / taming (exact GELU),
//! anything calling
//! [`crate::nn::mlp::Activation::apply`].

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::nn::fused::{f32_inputs, fast_route, uninit_f32};

const LOG2E: f32 = std::f32::consts::LOG2_E;

/// `exp(x)` for f32 via `2^n 2^f`; saturates outside [-87, 88].
#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let t = x * LOG2E;
    // Round to nearest with the 1.5 * 2^23 trick: vectorises without SSE4.1's roundps.
    const MAGIC: f32 = 12_582_912.0;
    let shifted = t + MAGIC;
    let n = shifted - MAGIC;
    // The same integer read from the bits of `shifted` (mantissa = MAGIC's + n): integer ops
    // only, so the loop vectorises (a float-to-int `as` cast saturates and may not).
    let n_int = shifted.to_bits().wrapping_sub(MAGIC.to_bits()) as i32;
    // Cody-Waite: f = x - n ln2 with ln2 split in two so n * LN2_HI is exact (|f| <= ln2 / 2).
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let f = (x - n * LN2_HI) - n * LN2_LO;
    // e^f, Taylor to degree 7: remainder < (0.347^8 / 8!) ~ 5e-9.
    let p = 1.0 + f * (1.0 + f * (0.5 + f * (1.0 / 6.0 + f * (1.0 / 24.0 + f * (1.0 / 120.0 + f * (1.0 / 720.0 + f * (1.0 / 5040.0)))))));
    let bits = ((n_int + 127) << 23) as u32;
    p * f32::from_bits(bits)
}

#[inline(always)]
fn gelu_tanh_scalar(x: f32) -> f32 {
    const K: f32 = 0.797_884_6; // sqrt(2/pi)
    let u = K * (x + 0.044715 * x * x * x);
    x / (1.0 + exp_f32(-2.0 * u))
}

/// `erf(x)` for f32 as a rational function of x (odd degree-13 numerator over even degree-8
/// denominator, the minimax fit Eigen and XLA use), with x clamped to [-4, 4] where erf is
/// +-1 in f32. No exp, no branch: it vectorises fully. Absolute error <= 3.3e-7 (tested below).
#[inline(always)]
fn erf_f32(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2 * -2.726_142_3e-10 + 2.770_681_4e-8;
    p = x2 * p - 2.101_024e-6;
    p = x2 * p - 5.692_506_4e-5;
    p = x2 * p - 7.349_906_3e-4;
    p = x2 * p - 2.954_6e-3;
    p = x2 * p - 1.609_603_3e-2;
    let mut q = x2 * -1.456_607_2e-5 - 2.133_740_6e-4;
    q = x2 * q - 1.682_827e-3;
    q = x2 * q - 7.373_329e-3;
    q = x2 * q - 1.426_473_9e-2;
    // Beyond |x| = 3.92 erf rounds to +-1 in f32; returning it exactly keeps GELU's tail at 0
    // (the fit leaves ~1e-7 there, which x / 2 would magnify). A select: still branch-free.
    if x2 > 3.92 * 3.92 {
        1f32.copysign(x)
    } else {
        x * p / q
    }
}

/// Exact (erf) GELU, `nn.GELU()`: `0.5 x (1 + erf(x / sqrt 2))`.
#[inline(always)]
fn gelu_erf_scalar(x: f32) -> f32 {
    0.5 * x * (1.0 + erf_f32(x * std::f32::consts::FRAC_1_SQRT_2))
}

#[inline(always)]
fn silu_scalar(x: f32) -> f32 {
    x / (1.0 + exp_f32(-x))
}

macro_rules! dispatch_kernel {
    ($name:ident, $scalar:ident) => {
        fn $name(src: &[f32], dst: &mut [f32]) {
            #[inline(always)]
            fn body(src: &[f32], dst: &mut [f32]) {
                for (d, &s) in dst.iter_mut().zip(src) {
                    *d = $scalar(s);
                }
            }
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2(src: &[f32], dst: &mut [f32]) {
                    body(src, dst)
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the features were detected at run time.
                    unsafe { avx2(src, dst) };
                    return;
                }
            }
            body(src, dst)
        }
    };
}

dispatch_kernel!(gelu_tanh_kernel, gelu_tanh_scalar);
dispatch_kernel!(silu_kernel, silu_scalar);
dispatch_kernel!(gelu_erf_kernel, gelu_erf_scalar);

/// SiLU over a slice in place, vectorised, on the calling thread (callers that already split
/// work over threads, such as the fused GroupNorm + swish, use it per chunk).
pub(crate) fn silu_in_place(x: &mut [f32]) {
    #[inline(always)]
    fn body(x: &mut [f32]) {
        for v in x.iter_mut() {
            *v = silu_scalar(*v);
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2(x: &mut [f32]) {
            body(x)
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the features were detected at run time.
            unsafe { avx2(x) };
            return;
        }
    }
    body(x)
}

struct Elementwise {
    name: &'static str,
    kernel: fn(&[f32], &mut [f32]),
}

impl CustomOp1 for Elementwise {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let [src] = f32_inputs(self.name, [(storage, layout)])?;
        let mut dst = uninit_f32(src.len());
        const CHUNK: usize = 16 * 1024;
        dst.par_chunks_mut(CHUNK).zip(src.par_chunks(CHUNK)).for_each(|(d, s)| (self.kernel)(s, d));
        Ok((CpuStorage::F32(dst), layout.shape().clone()))
    }
}

/// GELU with the tanh approximation (`nn.GELU(approximate='tanh')`).
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    if fast_route(x) {
        x.contiguous()?.apply_op1_no_bwd(&Elementwise { name: "gelu-tanh", kernel: gelu_tanh_kernel })
    } else {
        x.gelu()
    }
}

/// Exact GELU (`nn.GELU()`, erf form): timm / MAR / AutoNAT / taming MLPs, AutoNAT's MLM head.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    if fast_route(x) {
        x.contiguous()?.apply_op1_no_bwd(&Elementwise { name: "gelu-erf", kernel: gelu_erf_kernel })
    } else {
        x.gelu_erf()
    }
}

/// SiLU / swish `x * sigmoid(x)`.
pub fn silu(x: &Tensor) -> Result<Tensor> {
    if fast_route(x) {
        x.contiguous()?.apply_op1_no_bwd(&Elementwise { name: "silu", kernel: silu_kernel })
    } else {
        x.silu()
    }
}

/// Largest entry of a row. Reductions use 8 independent lanes so they vectorise (a single
/// running f32 max or sum would be evaluated in order).
#[inline(always)]
fn row_max(row: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let chunks = row.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for i in 0..8 {
            lanes[i] = lanes[i].max(c[i]);
        }
    }
    tail.iter().copied().fold(lanes.iter().copied().fold(f32::NEG_INFINITY, f32::max), f32::max)
}

/// Divides a row of exponentials by their sum (8-lane reduction, as [`row_max`]).
#[inline(always)]
fn normalise_row(row: &mut [f32]) {
    let mut sums = [0f32; 8];
    let chunks = row.chunks_exact(8);
    let tail_sum: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for i in 0..8 {
            sums[i] += c[i];
        }
    }
    let inv = 1.0 / (sums.iter().sum::<f32>() + tail_sum);
    row.iter_mut().for_each(|d| *d *= inv);
}

/// Numerically safe softmax of one row (`exp(x - max) / sum`).
#[inline(always)]
fn softmax_row(src: &[f32], dst: &mut [f32]) {
    let max = row_max(src);
    if max == f32::NEG_INFINITY {
        // Fully masked row: PyTorch gives NaN; keep it explicit rather than dividing by zero.
        dst.iter_mut().for_each(|d| *d = f32::NAN);
        return;
    }
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = exp_f32(s - max);
    }
    normalise_row(dst);
}

fn softmax_rows(src: &[f32], dst: &mut [f32], cols: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2(src: &[f32], dst: &mut [f32], cols: usize) {
            for (s, d) in src.chunks(cols).zip(dst.chunks_mut(cols)) {
                softmax_row(s, d)
            }
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the features were detected at run time.
            unsafe { avx2(src, dst, cols) };
            return;
        }
    }
    for (s, d) in src.chunks(cols).zip(dst.chunks_mut(cols)) {
        softmax_row(s, d)
    }
}

/// `row[i] = exp(row[i] - shift)`, kept a separate loop so that it vectorises.
#[inline(always)]
fn exp_shifted_inplace(row: &mut [f32], shift: f32) {
    for d in row.iter_mut() {
        *d = exp_f32(*d - shift);
    }
}

/// In-place softmax of each `cols`-wide row of `buf` (fused attention's score tiles).
pub(crate) fn softmax_rows_inplace(buf: &mut [f32], cols: usize) {
    #[inline(always)]
    fn body(buf: &mut [f32], cols: usize) {
        for row in buf.chunks_mut(cols) {
            let max = row_max(row);
            if max == f32::NEG_INFINITY {
                row.iter_mut().for_each(|d| *d = f32::NAN);
                continue;
            }
            exp_shifted_inplace(row, max);
            normalise_row(row);
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2(buf: &mut [f32], cols: usize) {
            body(buf, cols)
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the features were detected at run time.
            unsafe { avx2(buf, cols) };
            return;
        }
    }
    body(buf, cols)
}

struct SoftmaxLastDim;

impl CustomOp1 for SoftmaxLastDim {
    fn name(&self) -> &'static str {
        "softmax-last-dim"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let [src] = f32_inputs(self.name(), [(storage, layout)])?;
        let cols = *layout.shape().dims().last().unwrap_or(&1);
        let mut dst = uninit_f32(src.len());
        // Chunks of whole rows, about 16k values each (nothing to do for empty rows).
        if let Some(rows) = (16 * 1024usize).checked_div(cols) {
            let rows_per_chunk = rows.max(1);
            dst.par_chunks_mut(rows_per_chunk * cols)
                .zip(src.par_chunks(rows_per_chunk * cols))
                .for_each(|(d, s)| softmax_rows(s, d, cols));
        }
        Ok((CpuStorage::F32(dst), layout.shape().clone()))
    }
}

/// Softmax over the last dimension (attention scores, sampling).
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if fast_route(x) {
        x.contiguous()?.apply_op1_no_bwd(&SoftmaxLastDim)
    } else {
        candle_nn::ops::softmax_last_dim(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn exp_is_accurate_over_the_range() {
        for i in -8700..8800 {
            let x = i as f32 * 0.01;
            let (a, e) = (exp_f32(x), (x as f64).exp());
            assert!(((a as f64 - e) / e).abs() < 3e-7, "exp({x}) = {a} vs {e}");
        }
    }

    #[test]
    fn erf_and_exact_gelu_are_accurate() {
        use candle_core::cpu::erf::erf_f64;
        let xs: Vec<f32> = (-6000..6000).map(|i| i as f32 * 0.001).chain([-100.0, -9.0, 9.0, 100.0]).collect();
        let t = Tensor::new(xs.as_slice(), &Device::Cpu).unwrap();
        let g = gelu_erf(&t).unwrap().to_vec1::<f32>().unwrap();
        for (&x, &gv) in xs.iter().zip(&g) {
            let e = erf_f64(x as f64);
            // The fit is good to ~3.2e-7 absolute (about 5 float32 ulps near +-1).
            assert!((erf_f32(x) as f64 - e).abs() < 4e-7, "erf({x}) = {} vs {e}", erf_f32(x));
            let ge = 0.5 * x as f64 * (1.0 + erf_f64(x as f64 / std::f64::consts::SQRT_2));
            // 2e-6 absolute: for x near -5.6, `1 + erf` cancels to ~4e-7 and the erf's 3e-7
            // error shows; activations there are ~0 and the error stays below 1.2e-6.
            assert!((gv as f64 - ge).abs() <= 2e-6 * (1.0 + ge.abs()), "gelu({x}) = {gv} vs {ge}");
        }
    }

    #[test]
    fn softmax_matches_candle() {
        let x = (Tensor::randn(0f32, 3.0, (7, 33), &Device::Cpu).unwrap() - 40.0).unwrap();
        let a = softmax_last_dim(&x).unwrap();
        let b = candle_nn::ops::softmax_last_dim(&x).unwrap();
        let d = (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 1e-6, "{d}");
    }

    #[test]
    fn activations_match_their_definitions() {
        let xs: Vec<f32> = (-2000..2000).map(|i| i as f32 * 0.005).chain([-100.0, -30.0, 30.0, 100.0]).collect();
        let t = Tensor::new(xs.as_slice(), &Device::Cpu).unwrap();
        let g = gelu_tanh(&t).unwrap().to_vec1::<f32>().unwrap();
        let s = silu(&t).unwrap().to_vec1::<f32>().unwrap();
        for ((&x, &gv), &sv) in xs.iter().zip(&g).zip(&s) {
            let x64 = x as f64;
            let ge = 0.5 * x64 * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x64 + 0.044715 * x64.powi(3))).tanh());
            let se = x64 / (1.0 + (-x64).exp());
            assert!((gv as f64 - ge).abs() <= 1e-6 * (1.0 + ge.abs()), "gelu({x}) = {gv} vs {ge}");
            assert!((sv as f64 - se).abs() <= 1e-6 * (1.0 + se.abs()), "silu({x}) = {sv} vs {se}");
        }
    }
}
