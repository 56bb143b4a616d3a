//! 2-D convolution with a fast CPU path for the conv autoencoders' decoders.
//!
//! [`Conv2d`] has the interface of `candle_nn::Conv2d` (same constructors, `Module`), and the same
//! math. On the CPU in f32 (groups 1, dilation 1) it runs its own NCHW kernel instead of
//! candle's: candle 0.11 converts the input to NHWC serially, then builds 512-pixel im2col tiles
//! with column-strided writes and packs the weights per tile, which leaves a 3x3 conv at 256x256
//! with 128 channels at ~10 GFLOP/s on a machine whose matmul does 60-200.
//!
//! Here, per image and per band of output rows, the im2col matrix is built in the layout
//! `[(cin, ky, kx), pixels]`: row `(c, ky, kx)` is input plane `c` shifted by `(ky, kx)`, so it is
//! filled by contiguous row copies (zero-padded at the borders), and its row order matches the
//! PyTorch weight layout `(cout, cin, kh, kw)` so the weight tensor is used as the GEMM's left
//! matrix as it is. One GEMM per band writes straight into the NCHW output (row stride H*W) on
//! top of the bias. A 1x1 stride-1 convolution needs no im2col at all: the input plane is the
//! right matrix. Other devices and dtypes use candle's `conv2d`.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};
use genbench_runtime::threads::SendPtr;
use rayon::prelude::*;

/// A convolution layer: weight `(cout, cin / groups, k, k)`, optional bias `(cout,)`.
#[derive(Clone, Debug)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    config: Conv2dConfig,
    /// The weights in Winograd form, computed on the first forward that takes that path.
    winograd: WinogradWeights,
}

/// `winograd::transform_weights` of the layer's weights, once (shared by clones).
#[derive(Clone, Default)]
struct WinogradWeights(std::sync::Arc<std::sync::OnceLock<Vec<f32>>>);

impl std::fmt::Debug for WinogradWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WinogradWeights({})", if self.0.get().is_some() { "computed" } else { "not computed" })
    }
}

/// `<vb>.weight` and `<vb>.bias` (as `candle_nn::conv2d`).
pub fn conv2d(cin: usize, cout: usize, k: usize, config: Conv2dConfig, vb: VarBuilder) -> Result<Conv2d> {
    let weight = vb.get((cout, cin / config.groups, k, k), "weight")?;
    let bias = vb.get(cout, "bias")?;
    Ok(Conv2d::new(weight, Some(bias), config))
}

/// `<vb>.weight` only (as `candle_nn::conv2d_no_bias`).
pub fn conv2d_no_bias(cin: usize, cout: usize, k: usize, config: Conv2dConfig, vb: VarBuilder) -> Result<Conv2d> {
    let weight = vb.get((cout, cin / config.groups, k, k), "weight")?;
    Ok(Conv2d::new(weight, None, config))
}

/// Output rows per im2col band are chosen so the band holds about this many floats (8 MiB):
/// large enough to amortise the GEMM's packing, small enough to stay in the outer caches.
const BAND_FLOATS: usize = 2 << 20;

impl Conv2d {
    pub fn new(weight: Tensor, bias: Option<Tensor>, config: Conv2dConfig) -> Self {
        Self { weight, bias, config, winograd: WinogradWeights::default() }
    }
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
    pub fn config(&self) -> &Conv2dConfig {
        &self.config
    }

    fn fast_path_applies(&self, x: &Tensor) -> bool {
        genbench_runtime::kernels::fast_on(x.device())
            && x.dtype() == DType::F32
            && self.weight.dtype() == DType::F32
            && self.config.groups == 1
            && self.config.dilation == 1
            && x.rank() == 4
    }

    /// candle's convolution plus bias (any device / dtype).
    fn forward_candle(&self, x: &Tensor) -> Result<Tensor> {
        let c = &self.config;
        let y = x.conv2d(&self.weight, c.padding, c.stride, c.dilation, c.groups)?;
        match &self.bias {
            Some(b) => y.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1))?),
            None => Ok(y),
        }
    }

    fn forward_cpu(&self, x: &Tensor) -> Result<Tensor> {
        let (b, cin, h, w) = x.dims4()?;
        let (cout, wcin, kh, kw) = self.weight.dims4()?;
        if wcin != cin {
            candle_core::bail!("conv2d: input has {cin} channels, the weight expects {wcin}");
        }
        let (s, p) = (self.config.stride, self.config.padding);
        if h + 2 * p < kh || w + 2 * p < kw {
            candle_core::bail!("conv2d: input {h}x{w} (padding {p}) is smaller than the {kh}x{kw} kernel");
        }
        let ho = (h + 2 * p - kh) / s + 1;
        let wo = (w + 2 * p - kw) / s + 1;
        let x = x.contiguous()?;
        let weight = self.weight.contiguous()?;
        let bias = match &self.bias {
            Some(b) => Some(b.to_dtype(DType::F32)?.to_vec1::<f32>()?),
            None => None,
        };
        let (x_guard, x_layout) = x.storage_and_layout();
        let (w_guard, w_layout) = weight.storage_and_layout();
        let xs = cpu_f32(&x_guard)?;
        let ws = cpu_f32(&w_guard)?;
        let xs = &xs[x_layout.start_offset()..x_layout.start_offset() + b * cin * h * w];
        let ws = &ws[w_layout.start_offset()..w_layout.start_offset() + cout * cin * kh * kw];

        let plane_out = ho * wo;
        if super::winograd::applies(cin, cout, (kh, kw), s, p, (ho, wo)) {
            genbench_runtime::kernels::record_fast("conv2d-winograd");
            let u = self.winograd.0.get_or_init(|| super::winograd::transform_weights(ws, cout, cin));
            // Every value is written by the output transform.
            let mut out = crate::nn::fused::uninit_f32(b * cout * plane_out);
            super::winograd::conv3x3(xs, (b, cin, h, w), u, cout, bias.as_deref(), &mut out);
            drop(x_guard);
            drop(w_guard);
            return Tensor::from_vec(out, (b, cout, ho, wo), &Device::Cpu);
        }
        let k = cin * kh * kw;
        // Every value is written: by the bias fill or, without a bias, by the bands' GEMMs.
        let mut out = crate::nn::fused::uninit_f32(b * cout * plane_out);
        let threads = rayon::current_num_threads().max(1);
        let pointwise = kh == 1 && kw == 1 && s == 1 && p == 0;
        let band_rows = if pointwise { ho } else { (BAND_FLOATS / (k * wo).max(1)).clamp(1, ho) };
        if let Some(bias) = &bias {
            out.par_chunks_mut(plane_out).enumerate().for_each(|(i, row)| row.fill(bias[i % cout]));
        }
        // Every (image, band of output rows): independent GEMMs writing disjoint output rows.
        let bands: Vec<(usize, usize, usize)> =
            (0..b).flat_map(|bi| (0..ho).step_by(band_rows).map(move |oy0| (bi, oy0, band_rows.min(ho - oy0)))).collect();
        let dst = SendPtr::new(out.as_mut_ptr());
        let geometry = BandGeometry { cin, h, w, kh, kw, s, p, wo, cout, k, plane_out, pointwise, accumulate: bias.is_some() };
        if threads > 1 && bands.len() >= 2 * threads {
            // Enough bands: one contiguous share per thread, each with its own im2col buffer and a
            // single-threaded GEMM (no synchronisation inside a GEMM, which scales better than
            // one parallel GEMM per band at these sizes).
            let per = bands.len().div_ceil(threads);
            bands.par_chunks(per).for_each(|share| {
                let mut col = if pointwise { Vec::new() } else { crate::nn::fused::uninit_f32(k * band_rows * wo) };
                for &band in share {
                    // SAFETY: see `run_band`; shares hold disjoint bands.
                    unsafe { geometry.run_band(band, xs, ws, &mut col, dst, gemm::Parallelism::None) };
                }
            });
        } else {
            let par = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
            let mut col = if pointwise { Vec::new() } else { crate::nn::fused::uninit_f32(k * band_rows * wo) };
            for &band in &bands {
                // SAFETY: see `run_band`.
                unsafe { geometry.run_band(band, xs, ws, &mut col, dst, par) };
            }
        }
        drop(x_guard);
        drop(w_guard);
        Tensor::from_vec(out, (b, cout, ho, wo), &Device::Cpu)
    }
}

/// Shapes of one convolution, for the per-band work.
struct BandGeometry {
    cin: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    s: usize,
    p: usize,
    wo: usize,
    cout: usize,
    k: usize,
    plane_out: usize,
    pointwise: bool,
    /// Add to the output (which holds the bias) instead of overwriting it.
    accumulate: bool,
}

impl BandGeometry {
    /// `out[bi, :, oy0..oy0+rows, :] (+)= W[cout, k] @ im2col_band[k, rows*wo]`.
    ///
    /// SAFETY: `dst` must point to a `(b, cout, ho, wo)` buffer with `bi < b` and
    /// `oy0 + rows <= ho`, and no other thread may write the same (image, rows) band meanwhile.
    unsafe fn run_band(
        &self,
        (bi, oy0, rows): (usize, usize, usize),
        xs: &[f32],
        ws: &[f32],
        col: &mut [f32],
        dst: SendPtr,
        par: gemm::Parallelism,
    ) {
        let img = &xs[bi * self.cin * self.h * self.w..(bi + 1) * self.cin * self.h * self.w];
        let n = rows * self.wo;
        let rhs: &[f32] = if self.pointwise {
            img
        } else {
            let col = &mut col[..self.k * n];
            fill_band(col, img, (self.cin, self.h, self.w), (self.kh, self.kw), self.s, self.p, (oy0, rows, self.wo));
            col
        };
        // dst[cout, n] (+)= W[cout, k] @ rhs[k, n]; destination rows strided by the output plane.
        gemm::gemm(
            self.cout,
            n,
            self.k,
            dst.add(bi * self.cout * self.plane_out + oy0 * self.wo),
            1,
            self.plane_out as isize,
            self.accumulate,
            ws.as_ptr(),
            1,
            self.k as isize,
            rhs.as_ptr(),
            1,
            n as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

fn cpu_f32(s: &candle_core::Storage) -> Result<&[f32]> {
    match s {
        candle_core::Storage::Cpu(c) => c.as_slice::<f32>(),
        _ => candle_core::bail!("conv2d fast path: expected CPU storage"),
    }
}

/// Fills the im2col band `col[(c, ky, kx), (r, ox)]` for output rows `oy0..oy0+rows`.
fn fill_band(
    col: &mut [f32],
    img: &[f32],
    (cin, h, w): (usize, usize, usize),
    (kh, kw): (usize, usize),
    s: usize,
    p: usize,
    (oy0, rows, wo): (usize, usize, usize),
) {
    let n = rows * wo;
    // One chunk per input channel: kh * kw rows of the band.
    col.par_chunks_mut(kh * kw * n).enumerate().take(cin).for_each(|(c, chunk)| {
        let plane = &img[c * h * w..(c + 1) * h * w];
        for ky in 0..kh {
            for kx in 0..kw {
                let row = &mut chunk[(ky * kw + kx) * n..(ky * kw + kx + 1) * n];
                // Output columns whose input column ox*s + kx - p lies inside [0, w).
                let ox_lo = (p.saturating_sub(kx)).div_ceil(s).min(wo);
                let ox_hi = if w + p > kx { ((w + p - kx - 1) / s + 1).min(wo) } else { 0 };
                for r in 0..rows {
                    let dst = &mut row[r * wo..(r + 1) * wo];
                    let iy = ((oy0 + r) * s + ky) as isize - p as isize;
                    if iy < 0 || iy >= h as isize || ox_lo >= ox_hi {
                        dst.fill(0.0);
                        continue;
                    }
                    let src_row = &plane[iy as usize * w..(iy as usize + 1) * w];
                    dst[..ox_lo].fill(0.0);
                    dst[ox_hi..].fill(0.0);
                    let ix0 = ox_lo * s + kx - p;
                    if s == 1 {
                        dst[ox_lo..ox_hi].copy_from_slice(&src_row[ix0..ix0 + (ox_hi - ox_lo)]);
                    } else {
                        for (j, d) in dst[ox_lo..ox_hi].iter_mut().enumerate() {
                            *d = src_row[ix0 + j * s];
                        }
                    }
                }
            }
        }
    });
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.device().is_cpu() && x.dtype() == DType::BF16 {
            // candle's CPU conv2d has no bf16 kernel: compute in f32 and round the result to
            // bf16 (PyTorch's CPU bf16 convolution also accumulates in f32).
            let f32_conv =
                Self::new(self.weight.to_dtype(DType::F32)?, self.bias.as_ref().map(|b| b.to_dtype(DType::F32)).transpose()?, self.config);
            return f32_conv.forward(&x.to_dtype(DType::F32)?)?.to_dtype(DType::BF16);
        }
        if self.fast_path_applies(x) {
            genbench_runtime::kernels::record_fast("conv2d-nchw");
            self.forward_cpu(x)
        } else {
            self.forward_candle(x)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(b: usize, cin: usize, cout: usize, k: usize, stride: usize, padding: usize, hw: (usize, usize), bias: bool) {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (b, cin, hw.0, hw.1), &dev).unwrap();
        let wt = Tensor::randn(0f32, 1.0, (cout, cin, k, k), &dev).unwrap();
        let bt = bias.then(|| Tensor::randn(0f32, 1.0, cout, &dev).unwrap());
        let conv = Conv2d::new(wt, bt, Conv2dConfig { padding, stride, ..Default::default() });
        let fast = conv.forward_cpu(&x).unwrap();
        let reference = conv.forward_candle(&x).unwrap();
        assert_eq!(fast.dims(), reference.dims());
        let err = (fast - &reference).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        // Same products, different summation order: relative to the sqrt(K)-sized outputs.
        assert!(err < 1e-4 * ((cin * k * k) as f32).sqrt(), "b{b} {cin}->{cout} k{k} s{stride} p{padding} {hw:?}: {err}");
    }

    #[test]
    fn matches_candle_conv2d() {
        check(2, 5, 7, 3, 1, 1, (9, 11), true);
        check(1, 4, 3, 3, 2, 0, (9, 8), false); // VAR / taming Downsample: stride 2, no padding
        check(2, 6, 4, 1, 1, 0, (5, 7), true); // pointwise
        check(1, 3, 2, 1, 2, 0, (6, 6), true); // 1x1 with stride
        check(1, 2, 3, 3, 1, 2, (4, 4), true); // padding wider than needed
        check(3, 8, 8, 3, 1, 1, (1, 1), false); // 1x1 image
                                                // Several bands: 64 channels x 9 taps x 1024 columns exceeds one band.
        check(1, 64, 16, 3, 1, 1, (40, 1024), true);
    }

    #[test]
    fn winograd_matches_candle_conv2d() {
        // 3x3 / stride 1 / padding 1 with >= 16 channels and >= 32x32 outputs take the Winograd
        // path; odd sizes drop a tile's second row / column. On one thread and two, so both
        // the per-thread band shares and the parallel stages of single bands run.
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                assert!(super::super::winograd::applies(16, 24, (3, 3), 1, 1, (32, 32)));
                check(1, 16, 24, 3, 1, 1, (32, 32), true); // one band
                check(2, 20, 16, 3, 1, 1, (33, 35), false); // odd sizes, two images
                check(1, 16, 17, 3, 1, 1, (9, 130), true); // odd tile count per row
                check(1, 32, 16, 3, 1, 1, (70, 64), true); // several bands per image
                check(3, 16, 16, 3, 1, 1, (48, 40), true);
            });
        }
    }

    #[test]
    fn winograd_weights_are_computed_once_and_shared_by_clones() {
        let dev = Device::Cpu;
        let conv =
            Conv2d::new(Tensor::randn(0f32, 1.0, (16, 16, 3, 3), &dev).unwrap(), None, Conv2dConfig { padding: 1, ..Default::default() });
        let copy = conv.clone();
        let x = Tensor::randn(0f32, 1.0, (1, 16, 32, 32), &dev).unwrap();
        let a = conv.forward_cpu(&x).unwrap();
        assert!(copy.winograd.0.get().is_some(), "a clone sees the transformed weights");
        let b = copy.forward_cpu(&x).unwrap();
        let diff = (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(diff, 0.0);
    }

    #[test]
    fn non_contiguous_input() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (1, 6, 5, 3), &dev).unwrap().transpose(2, 3).unwrap();
        let conv =
            Conv2d::new(Tensor::randn(0f32, 1.0, (4, 6, 3, 3), &dev).unwrap(), None, Conv2dConfig { padding: 1, ..Default::default() });
        let a = conv.forward(&x).unwrap();
        let b = conv.forward_candle(&x).unwrap();
        let err = (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert!(err < 1e-4);
    }
}
