//! Resampling of feature maps `(B, C, H, W)` exactly as PyTorch's `F.interpolate` does it, written
//! as two small matrices applied on each side (`rows @ x @ cols^T`).
//!
//! Both modes used by VAR's multi-scale quantiser are separable:
//! * `mode='area'` = `adaptive_avg_pool2d`: output i averages input `[floor(i*in/out),
//!   ceil((i+1)*in/out))`; windows overlap when `out` does not divide `in` (16 -> 13).
//! * `mode='bicubic'`, `align_corners=False`: source coordinate `(dst + 0.5) * in/out - 0.5`,
//!   cubic convolution with A = -0.75, source indices clamped to the border. Coefficients are
//!   computed in f32 like PyTorch's CPU kernel.
//!
//! A matrix product costs `2*B*C*(H*W*ow + oh*H*ow)` FLOPs: negligible next to the networks, and
//! it runs on any device.

use candle_core::{DType, Device, Result, Tensor};

/// Interpolation mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Area,
    Bicubic,
}

/// `(out, in)` row-major weights of adaptive average pooling along one axis.
pub fn area_weights(in_size: usize, out_size: usize) -> Vec<f32> {
    let mut w = vec![0f32; out_size * in_size];
    for i in 0..out_size {
        let start = (i * in_size) / out_size;
        let end = ((i + 1) * in_size).div_ceil(out_size);
        let n = (end - start) as f32;
        for j in start..end {
            w[i * in_size + j] = 1.0 / n;
        }
    }
    w
}

/// PyTorch `cubic_convolution1`: `((A + 2) x - (A + 3)) x^2 + 1` for |x| <= 1.
fn cubic1(x: f32, a: f32) -> f32 {
    ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
}

/// PyTorch `cubic_convolution2`: `((A x - 5A) x + 8A) x - 4A` for 1 < |x| < 2.
fn cubic2(x: f32, a: f32) -> f32 {
    ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
}

/// `(out, in)` row-major weights of bicubic interpolation (align_corners=False, A=-0.75,
/// border-clamped), as `upsample_bicubic2d` computes them.
pub fn bicubic_weights(in_size: usize, out_size: usize) -> Vec<f32> {
    const A: f32 = -0.75;
    let scale = in_size as f32 / out_size as f32;
    let mut w = vec![0f32; out_size * in_size];
    for i in 0..out_size {
        let real = scale * (i as f32 + 0.5) - 0.5;
        let base = real.floor();
        let t = real - base;
        let coeffs = [cubic2(t + 1.0, A), cubic1(t, A), cubic1(1.0 - t, A), cubic2(2.0 - t, A)];
        for (k, c) in coeffs.iter().enumerate() {
            let src = (base as i64 - 1 + k as i64).clamp(0, in_size as i64 - 1) as usize;
            w[i * in_size + src] += c;
        }
    }
    w
}

/// A fixed resize `(in_h, in_w) -> (out_h, out_w)` in one mode.
#[derive(Clone, Debug)]
pub struct Resize2d {
    rows: Tensor,
    cols_t: Tensor,
    out: (usize, usize),
    identity: bool,
}

impl Resize2d {
    pub fn new(mode: Mode, (in_h, in_w): (usize, usize), (out_h, out_w): (usize, usize), dtype: DType, device: &Device) -> Result<Self> {
        let weights = |i, o| match mode {
            Mode::Area => area_weights(i, o),
            Mode::Bicubic => bicubic_weights(i, o),
        };
        let rows = Tensor::from_vec(weights(in_h, out_h), (out_h, in_h), device)?.to_dtype(dtype)?;
        let cols_t = Tensor::from_vec(weights(in_w, out_w), (out_w, in_w), device)?.to_dtype(dtype)?.t()?.contiguous()?;
        // Same size: both PyTorch modes reduce to the identity (area windows of one pixel; bicubic
        // at t = 0 has weights (0, 1, 0, 0)).
        let identity = in_h == out_h && in_w == out_w;
        Ok(Self { rows, cols_t, out: (out_h, out_w), identity })
    }

    pub fn output_size(&self) -> (usize, usize) {
        self.out
    }

    /// `(B, C, in_h, in_w)` -> `(B, C, out_h, out_w)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.identity {
            return Ok(x.clone());
        }
        let (b, c, h, w) = x.dims4()?;
        let (oh, ow) = self.out;
        // Width: (B*C*H, W) @ (W, ow); height: (oh, H) @ (B*C, H, ow) per map.
        let y = x.contiguous()?.reshape((b * c * h, w))?.matmul(&self.cols_t)?.reshape((b * c, h, ow))?;
        self.rows.broadcast_left(b * c)?.matmul(&y)?.reshape((b, c, oh, ow))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn area_windows_overlap_like_adaptive_avg_pool() {
        // 4 -> 3: windows [0,2), [1,3), [2,4)
        let w = area_weights(4, 3);
        assert_eq!(w, vec![0.5, 0.5, 0., 0., 0., 0.5, 0.5, 0., 0., 0., 0.5, 0.5]);
        // 16 -> 13: every row sums to one
        let w = area_weights(16, 13);
        for r in w.chunks(16) {
            assert!((r.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
    }

    #[test]
    fn bicubic_rows_sum_to_one_and_match_torch_values() {
        for (i, o) in [(1, 16), (2, 16), (3, 16), (13, 16), (4, 8)] {
            for r in bicubic_weights(i, o).chunks(i) {
                assert!((r.iter().sum::<f32>() - 1.0).abs() < 1e-5);
            }
        }
        // [0, 1] resized to 4 samples, worked by hand from PyTorch's formulas: output 0 sits at
        // -0.25 (t = 0.75, taps -2..1 clamped), weight on pixel 1 = cubic2(1.25) = -0.10546875;
        // output 1 at 0.25: cubic1(0.75) + cubic2(1.75) = 0.2265625; the rest by symmetry.
        let w = bicubic_weights(2, 4);
        let y: Vec<f32> = w.chunks(2).map(|r| r[1]).collect();
        let expected = [-0.10546875f32, 0.2265625, 0.7734375, 1.105_468_8];
        for (a, e) in y.iter().zip(expected) {
            assert!((a - e).abs() < 1e-6, "{y:?}");
        }
    }

    #[test]
    fn resize_is_separable_and_identity_at_same_size() {
        let dev = Device::Cpu;
        let x = Tensor::arange(0f32, 32., &dev).unwrap().reshape((1, 2, 4, 4)).unwrap();
        let r = Resize2d::new(Mode::Area, (4, 4), (2, 2), DType::F32, &dev).unwrap();
        let y = r.forward(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(&y[..4], &[2.5, 4.5, 10.5, 12.5]);
        let same = Resize2d::new(Mode::Bicubic, (4, 4), (4, 4), DType::F32, &dev).unwrap();
        assert_eq!(
            same.forward(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            x.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
    }
}
