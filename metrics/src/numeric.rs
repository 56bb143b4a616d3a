//! Small numeric helpers shared by the metrics: numpy-compatible float32 summation and
//! row-major GEMM wrappers over faer.

use faer::{MatMut, MatRef, Par};

/// Block size below which numpy's pairwise summation switches to an 8-way unrolled loop.
const NUMPY_PAIRWISE_BLOCK: usize = 128;

/// Sum of a contiguous f32 slice exactly as numpy's `add.reduce` does it (pairwise summation
/// with 8 accumulators, in float32). numpy uses this for reductions along a contiguous axis,
/// e.g. `np.sum(x, axis=1)` on a C-order matrix or `np.mean` of a 1-d array; matching it keeps
/// float32 metrics (ADM's IS) bit-compatible where the order of additions matters.
pub fn numpy_sum_f32(values: &[f32]) -> f32 {
    let n = values.len();
    if n < 8 {
        // numpy starts from -0.0 in its scalar tail; the sign only matters for an all -0.0 input.
        return values.iter().fold(-0.0f32, |acc, &v| acc + v);
    }
    if n <= NUMPY_PAIRWISE_BLOCK {
        let mut lanes = [0f32; 8];
        lanes.copy_from_slice(&values[..8]);
        let unrolled_end = n - n % 8;
        for chunk in values[8..unrolled_end].chunks_exact(8) {
            for (lane, &v) in lanes.iter_mut().zip(chunk) {
                *lane += v;
            }
        }
        let mut total = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
        for &v in &values[unrolled_end..] {
            total += v;
        }
        return total;
    }
    let mut half = n / 2;
    half -= half % 8;
    numpy_sum_f32(&values[..half]) + numpy_sum_f32(&values[half..])
}

/// faer view of a row-major `rows x cols` slice.
pub fn row_major<T>(data: &[T], rows: usize, cols: usize) -> MatRef<'_, T> {
    MatRef::from_row_major_slice(data, rows, cols)
}

/// faer mutable view of a row-major `rows x cols` slice.
pub fn row_major_mut<T>(data: &mut [T], rows: usize, cols: usize) -> MatMut<'_, T> {
    MatMut::from_row_major_slice_mut(data, rows, cols)
}

/// `dst = a * b^T` for row-major `a` [m, k] and `b` [n, k]; `dst` is row-major [m, n].
/// This is the Gram block every pairwise-distance and kernel computation needs.
pub fn gemm_abt_f32(dst: &mut [f32], a: &[f32], m: usize, b: &[f32], n: usize, k: usize, par: Par) {
    gemm_abt_any(dst, a, m, b, n, k, 1.0, par);
}

/// f64 version of [`gemm_abt_f32`].
pub fn gemm_abt_f64(dst: &mut [f64], a: &[f64], m: usize, b: &[f64], n: usize, k: usize, par: Par) {
    gemm_abt_any(dst, a, m, b, n, k, 1.0, par);
}

fn gemm_abt_any<T: Copy + Send + Sync + 'static>(dst: &mut [T], a: &[T], m: usize, b: &[T], n: usize, k: usize, one: T, par: Par) {
    debug_assert_eq!(a.len(), m * k);
    debug_assert_eq!(b.len(), n * k);
    let out = row_major_mut(&mut dst[..m * n], m, n);
    gemm_any(out, false, row_major(a, m, k), row_major(b, n, k).transpose(), one, one, par);
}

/// `dst = (dst if accumulate) + scale * lhs * rhs` in f64, any strides, through the `gemm` crate:
/// its AVX-512 kernels run at about 190 GFLOP/s on 2 cores here, faer 0.24's `matmul` at 80.
pub fn gemm_f64(dst: MatMut<'_, f64>, accumulate: bool, lhs: MatRef<'_, f64>, rhs: MatRef<'_, f64>, scale: f64, par: Par) {
    gemm_any(dst, accumulate, lhs, rhs, 1.0, scale, par);
}

/// [`gemm_f64`] for f32 or f64; `one` is the type's 1 (the `gemm` crate takes the destination's
/// factor as a value).
fn gemm_any<T: Copy + Send + Sync + 'static>(
    dst: MatMut<'_, T>,
    accumulate: bool,
    lhs: MatRef<'_, T>,
    rhs: MatRef<'_, T>,
    one: T,
    scale: T,
    par: Par,
) {
    let (m, n, k) = (dst.nrows(), dst.ncols(), lhs.ncols());
    assert!(lhs.nrows() == m && rhs.nrows() == k && rhs.ncols() == n, "gemm: shapes do not match");
    let threads = match par {
        Par::Seq => 1,
        Par::Rayon(threads) => threads.get(),
    };
    // A product with a thin output (a matrix times a few vectors) gains little from `gemm`'s own
    // threads; one sequential product per slab of the long side, one slab per thread, runs at
    // nearly the thread count times the one-thread speed.
    if threads > 1 && m.min(n) < 128 && m.max(n) >= 256 * threads {
        let rest = Par::Rayon(std::num::NonZeroUsize::new(threads - 1).unwrap());
        let rest = if threads > 2 { rest } else { Par::Seq };
        if m >= n {
            let rows = m.div_ceil(threads);
            let (top, bottom) = dst.split_at_row_mut(rows);
            rayon::join(
                || gemm_any(top, accumulate, lhs.subrows(0, rows), rhs, one, scale, Par::Seq),
                || gemm_any(bottom, accumulate, lhs.subrows(rows, m - rows), rhs, one, scale, rest),
            );
        } else {
            let cols = n.div_ceil(threads);
            let (left, right) = dst.split_at_col_mut(cols);
            rayon::join(
                || gemm_any(left, accumulate, lhs, rhs.subcols(0, cols), one, scale, Par::Seq),
                || gemm_any(right, accumulate, lhs, rhs.subcols(cols, n - cols), one, scale, rest),
            );
        }
        return;
    }
    let parallelism = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    // SAFETY: the pointers and strides come from live faer views of exactly these shapes, and
    // `dst` is a unique borrow, so it cannot alias `lhs` or `rhs`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_ptr_mut(),
            dst.col_stride(),
            dst.row_stride(),
            accumulate,
            lhs.as_ptr(),
            lhs.col_stride(),
            lhs.row_stride(),
            rhs.as_ptr(),
            rhs.col_stride(),
            rhs.row_stride(),
            one,
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Parallelism used for the dense linear algebra: all rayon threads.
pub fn default_par() -> Par {
    Par::rayon(0)
}

/// Largest `|v|`, or `None` if a value is infinite or NaN; in SIMD registers (a scalar scan of
/// a 2048-d covariance took 4 ms).
pub fn largest_magnitude(values: &[f64]) -> Option<f64> {
    pulp::Arch::new().dispatch(LargestMagnitude(values))
}

struct LargestMagnitude<'a>(&'a [f64]);

impl pulp::WithSimd for LargestMagnitude<'_> {
    type Output = Option<f64>;

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) -> Option<f64> {
        let (head, tail) = S::as_simd_f64s(self.0);
        let (mut top, mut poison) = (simd.splat_f64s(0.0), simd.splat_f64s(0.0));
        for &v in head {
            let magnitude = simd.abs_f64s(v);
            top = simd.max_f64s(top, magnitude);
            // |v| - |v| is 0 for a finite value and NaN for an infinite or NaN one.
            poison = simd.add_f64s(poison, simd.sub_f64s(magnitude, magnitude));
        }
        let (mut top, mut poison) = (simd.reduce_max_f64s(top), simd.reduce_sum_f64s(poison));
        for &v in tail {
            top = top.max(v.abs());
            poison += v.abs() - v.abs();
        }
        (!poison.is_nan()).then_some(top)
    }
}

/// Whether every value is finite; large slices are checked on rayon's threads.
pub fn all_finite(values: &[f64]) -> bool {
    use rayon::prelude::*;
    values.par_chunks(1 << 18).all(|chunk| largest_magnitude(chunk).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn largest_magnitude_sees_signs_and_non_finite_values() {
        assert_eq!(largest_magnitude(&[1.0, -3.5, 2.0, -0.0]), Some(3.5));
        assert_eq!(largest_magnitude(&[]), Some(0.0));
        assert_eq!(largest_magnitude(&[1e-310, -2e-310]), Some(2e-310));
        for bad in [f64::INFINITY, f64::NEG_INFINITY, f64::NAN, -f64::NAN] {
            assert_eq!(largest_magnitude(&[1.0, bad, 2.0]), None, "{bad}");
            let mut big = vec![0.5; 600_000];
            assert!(all_finite(&big));
            big[599_999] = bad;
            assert!(!all_finite(&big), "{bad}");
        }
    }

    #[test]
    fn numpy_sum_matches_plain_sum_on_exact_values() {
        // Small integers are exact in f32, so every summation order gives the same answer.
        for n in [0usize, 1, 7, 8, 9, 127, 128, 129, 1000, 1008] {
            let v: Vec<f32> = (0..n).map(|i| (i % 17) as f32).collect();
            let expected: f32 = v.iter().sum();
            assert_eq!(numpy_sum_f32(&v), expected, "n = {n}");
        }
    }

    #[test]
    fn numpy_sum_is_pairwise_not_sequential() {
        // 1 followed by many tiny values: sequential f32 summation loses every tiny value,
        // pairwise summation adds them up in blocks first.
        let mut v = vec![1e-8f32; 4096];
        v[0] = 1.0;
        let sequential = v.iter().fold(0f32, |a, &b| a + b);
        let pairwise = numpy_sum_f32(&v);
        assert_eq!(sequential, 1.0);
        assert!((pairwise as f64 - (1.0 + 4095e-8)).abs() < 1e-6, "{pairwise}");
    }

    #[test]
    fn gemm_abt_matches_naive() {
        let (m, n, k) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| i as f32 * 0.5 - 2.0).collect();
        let b: Vec<f32> = (0..n * k).map(|i| (i as f32).sin()).collect();
        let mut out = vec![0f32; m * n];
        gemm_abt_f32(&mut out, &a, m, &b, n, k, Par::Seq);
        for i in 0..m {
            for j in 0..n {
                let naive: f32 = (0..k).map(|t| a[i * k + t] * b[j * k + t]).sum();
                assert!((out[i * n + j] - naive).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn gemm_f64_matches_naive_on_every_route() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let mut random = |r: usize, c: usize| faer::Mat::<f64>::from_fn(r, c, |_, _| rng.random::<f64>() - 0.5);
        // Square (gemm's own threads), tall-thin and wide-thin (one slab per thread), transposed
        // operands (strided views) and accumulation into a non-zero destination.
        for (m, n, k) in [(70, 50, 40), (1100, 8, 300), (8, 1100, 300), (600, 600, 20)] {
            for par in [Par::Seq, Par::rayon(2), Par::rayon(3)] {
                let (a, bt, start) = (random(m, k), random(n, k), random(m, n));
                let mut got = start.clone();
                gemm_f64(got.as_mut(), true, a.as_ref(), bt.transpose(), -0.5, par);
                for i in 0..m {
                    for j in 0..n {
                        let naive = start[(i, j)] - 0.5 * (0..k).map(|t| a[(i, t)] * bt[(j, t)]).sum::<f64>();
                        assert!((got[(i, j)] - naive).abs() < 1e-12 * k as f64, "{m}x{n}x{k} {par:?} at ({i}, {j})");
                    }
                }
                let mut replaced = start.clone();
                gemm_f64(replaced.as_mut(), false, a.as_ref(), bt.transpose(), 1.0, par);
                let expected = (0..k).map(|t| a[(m - 1, t)] * bt[(n - 1, t)]).sum::<f64>();
                assert!((replaced[(m - 1, n - 1)] - expected).abs() < 1e-12 * k as f64);
            }
        }
    }
}
