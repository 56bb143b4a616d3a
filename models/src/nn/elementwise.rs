//! Memory-bound tensor operations with row-parallel CPU paths.
//!
//! candle 0.11 runs its CPU binary ops and `upsample_nearest2d` on one thread. In a decoder at
//! 256 x 256 x 128 that is ~15-20 ms per residual add or upsample, executed serially between
//! multi-threaded convolutions (about a tenth of the MAGE VQGAN decode on two threads). These
//! do the same arithmetic split over rayon's pool; other devices, dtypes and layouts fall back
//! to candle.
//! Users: the conv-autoencoder blocks (residual adds, nearest upsampling), pre-LN transformer
//! blocks (residual adds).

use candle_core::{DType, Device, Result, Tensor};
use rayon::prelude::*;

/// Elements per parallel task: big enough to amortise the task, small enough to spread.
const CHUNK: usize = 64 * 1024;

fn cpu_f32_contiguous(t: &Tensor) -> bool {
    genbench_runtime::kernels::fast_on(t.device()) && t.dtype() == DType::F32 && t.is_contiguous()
}

/// Runs `f` on the f32 slice of a contiguous CPU tensor.
fn with_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let (guard, layout) = t.storage_and_layout();
    let data = match &*guard {
        candle_core::Storage::Cpu(c) => c.as_slice::<f32>()?,
        _ => candle_core::bail!("expected CPU storage"),
    };
    Ok(f(&data[layout.start_offset()..layout.start_offset() + t.elem_count()]))
}

/// `a + b` for tensors of the same shape (no broadcasting on the fast path).
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.dims() != b.dims() || !cpu_f32_contiguous(a) || !cpu_f32_contiguous(b) {
        return a + b;
    }
    genbench_runtime::kernels::record_fast("add-rows");
    let mut out = crate::nn::fused::uninit_f32(a.elem_count()); // every value written below
    with_slice(a, |xa| {
        with_slice(b, |xb| {
            out.par_chunks_mut(CHUNK).zip(xa.par_chunks(CHUNK).zip(xb.par_chunks(CHUNK))).for_each(|(o, (x, y))| {
                for ((o, &x), &y) in o.iter_mut().zip(x).zip(y) {
                    *o = x + y;
                }
            })
        })
    })??;
    Tensor::from_vec(out, a.dims(), &Device::Cpu)
}

/// Nearest-neighbour upsampling by 2 of `(B, C, H, W)` (`F.interpolate(scale_factor=2,
/// mode="nearest")`): output pixel (y, x) copies input (y / 2, x / 2).
pub fn upsample_nearest2x(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    if !(genbench_runtime::kernels::fast_on(x.device()) && x.dtype() == DType::F32) {
        return x.upsample_nearest2d(2 * h, 2 * w);
    }
    genbench_runtime::kernels::record_fast("upsample-nearest2x");
    let x = x.contiguous()?;
    let mut out = crate::nn::fused::uninit_f32(b * c * 4 * h * w); // every value written below
    with_slice(&x, |src| {
        out.par_chunks_mut(4 * h * w).zip(src.par_chunks(h * w)).for_each(|(dst, plane)| {
            for (y, row) in plane.chunks(w).enumerate() {
                let (even, odd) = dst[2 * y * 2 * w..(2 * y + 2) * 2 * w].split_at_mut(2 * w);
                for (i, &v) in row.iter().enumerate() {
                    even[2 * i] = v;
                    even[2 * i + 1] = v;
                }
                odd.copy_from_slice(even);
            }
        })
    })?;
    Tensor::from_vec(out, (b, c, 2 * h, 2 * w), &Device::Cpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn match_candle() {
        let dev = Device::Cpu;
        let a = Tensor::randn(0f32, 1.0, (2, 3, 5, 7), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, (2, 3, 5, 7), &dev).unwrap();
        let v = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(v(add(&a, &b).unwrap()), v((&a + &b).unwrap()));
        assert_eq!(v(upsample_nearest2x(&a).unwrap()), v(a.upsample_nearest2d(10, 14).unwrap()));
        // Non-contiguous and broadcasting inputs take candle's path and still agree.
        let t = a.transpose(2, 3).unwrap();
        assert_eq!(v(upsample_nearest2x(&t).unwrap()), v(t.upsample_nearest2d(14, 10).unwrap()));
        let row = Tensor::randn(0f32, 1.0, (1, 3, 1, 1), &dev).unwrap();
        assert!(add(&a, &row).is_err(), "different shapes are not broadcast (as candle's `+`)");
        // Large enough for several parallel chunks.
        let big = Tensor::randn(0f32, 1.0, (1, 4, 256, 300), &dev).unwrap();
        assert_eq!(v(add(&big, &big).unwrap()), v((&big + &big).unwrap()));
        assert_eq!(v(upsample_nearest2x(&big).unwrap()), v(big.upsample_nearest2d(512, 600).unwrap()));
    }
}
