//! Small numeric helpers shared by the metrics: numpy-compatible float32 summation and
//! row-major GEMM wrappers over faer.

use anyhow::{bail, Result};
use faer::linalg::matmul::matmul;
use faer::linalg::matmul::triangular::{matmul as tri_matmul, BlockStructure};
use faer::reborrow::{Reborrow, ReborrowMut};
use faer::{Accum, Mat, MatMut, MatRef, Par};

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
    debug_assert_eq!(a.len(), m * k);
    debug_assert_eq!(b.len(), n * k);
    let out = row_major_mut(&mut dst[..m * n], m, n);
    matmul(out, Accum::Replace, row_major(a, m, k), row_major(b, n, k).transpose(), 1.0f32, par);
}

/// f64 version of [`gemm_abt_f32`].
pub fn gemm_abt_f64(dst: &mut [f64], a: &[f64], m: usize, b: &[f64], n: usize, k: usize, par: Par) {
    debug_assert_eq!(a.len(), m * k);
    debug_assert_eq!(b.len(), n * k);
    let out = row_major_mut(&mut dst[..m * n], m, n);
    matmul(out, Accum::Replace, row_major(a, m, k), row_major(b, n, k).transpose(), 1.0f64, par);
}

/// Parallelism used for the dense linear algebra: all rayon threads.
pub fn default_par() -> Par {
    Par::rayon(0)
}

/// Panel width of the blocked tridiagonalisation: half of the flops go through a rank-2k
/// update of this width (matrix-matrix speed), the other half are matrix-vector products.
const TRIDIAG_PANEL: usize = 32;

/// Eigenvalues (ascending) of the symmetric matrix whose lower triangle is `a`; `a` is used as
/// workspace and overwritten.
///
/// Blocked Householder tridiagonalisation (the panel/rank-2k scheme of LAPACK's `dsytrd`; faer's
/// own solver is unblocked and streams the whole trailing matrix twice per column), then the
/// implicit QL iteration on the tridiagonal matrix. Eigenvectors are never formed.
pub fn symmetric_eigenvalues_in_place(mut a: MatMut<'_, f64>, par: Par) -> Result<Vec<f64>> {
    let n = a.nrows();
    assert_eq!(n, a.ncols(), "symmetric_eigenvalues_in_place needs a square matrix");
    let mut diag = vec![0.0; n];
    let mut offdiag = vec![0.0; n];
    if n == 0 {
        return Ok(diag);
    }
    let mut v_panel = Mat::<f64>::zeros(n, TRIDIAG_PANEL);
    let mut w_panel = Mat::<f64>::zeros(n, TRIDIAG_PANEL);
    let mut y = vec![0.0; n];
    let mut y_partial = Vec::new();
    let mut k = 0;
    while k + 1 < n {
        let nb = TRIDIAG_PANEL.min(n - 1 - k);
        let m = n - k;
        // Panel rows are relative to k: row r of V/W is row k + r of A.
        let mut v = v_panel.as_mut().submatrix_mut(0, 0, m, nb);
        let mut w = w_panel.as_mut().submatrix_mut(0, 0, m, nb);
        v.fill(0.0);
        w.fill(0.0);
        for i in 0..nb {
            let j = k + i;
            // Apply the panel's earlier reflectors to column j (rows j..n).
            {
                let col = a.rb_mut().col_mut(j).subrows_mut(j, n - j).try_as_col_major_mut().unwrap().as_slice_mut();
                for q in 0..i {
                    let (wq, vq) = (w[(i, q)], v[(i, q)]);
                    let vcol = v.rb().col(q).subrows(i, m - i).try_as_col_major().unwrap().as_slice();
                    let wcol = w.rb().col(q).subrows(i, m - i).try_as_col_major().unwrap().as_slice();
                    for ((c, &vv), &ww) in col.iter_mut().zip(vcol).zip(wcol) {
                        *c -= vv * wq + ww * vq;
                    }
                }
            }
            diag[j] = a[(j, j)];
            // Householder reflector I - tau u u^T mapping A[j+1.., j] to beta e1 (u[0] = 1).
            let len = n - j - 1;
            let x = a.rb_mut().col_mut(j).subrows_mut(j + 1, len).try_as_col_major_mut().unwrap().as_slice_mut();
            let alpha = x[0];
            let sigma: f64 = x[1..].iter().map(|t| t * t).sum();
            let (tau, beta) = if sigma == 0.0 {
                (0.0, alpha)
            } else {
                let norm = (alpha * alpha + sigma).sqrt();
                let beta = if alpha >= 0.0 { -norm } else { norm };
                let scale = 1.0 / (alpha - beta);
                x[1..].iter_mut().for_each(|t| *t *= scale);
                ((beta - alpha) / beta, beta)
            };
            x[0] = 1.0;
            offdiag[j] = beta;
            let p = i + 1;
            v.rb_mut().col_mut(i).subrows_mut(p, len).try_as_col_major_mut().unwrap().as_slice_mut().copy_from_slice(x);
            if tau == 0.0 {
                continue;
            }
            // w = tau (A22 u - V (W^T u) - W (V^T u)), A22 = A[j+1.., j+1..] before this panel.
            let a22 = a.rb().submatrix(j + 1, j + 1, len, len);
            let u_slice = v.rb().col(i).subrows(p, len).try_as_col_major().unwrap().as_slice();
            symmetric_lower_matvec(a22, u_slice, &mut y[..len], &mut y_partial, par);
            let mut yv = MatMut::from_column_major_slice_mut(&mut y[..len], len, 1);
            let u = v.rb().col(i).subrows(p, len);
            if i > 0 {
                let (vp, wp) = (v.rb().submatrix(p, 0, len, i), w.rb().submatrix(p, 0, len, i));
                let mut wt_u = Mat::<f64>::zeros(i, 1);
                let mut vt_u = Mat::<f64>::zeros(i, 1);
                matmul(wt_u.as_mut(), Accum::Replace, wp.transpose(), u.as_mat(), 1.0, Par::Seq);
                matmul(vt_u.as_mut(), Accum::Replace, vp.transpose(), u.as_mat(), 1.0, Par::Seq);
                matmul(yv.rb_mut(), Accum::Add, vp, wt_u.as_ref(), -1.0, Par::Seq);
                matmul(yv.rb_mut(), Accum::Add, wp, vt_u.as_ref(), -1.0, Par::Seq);
            }
            let u = u.try_as_col_major().unwrap().as_slice();
            let yl = &mut y[..len];
            let dot: f64 = yl.iter().zip(u).map(|(a, b)| a * b).sum();
            let shift = -0.5 * tau * tau * dot;
            let wcol = w.rb_mut().col_mut(i).subrows_mut(p, len).try_as_col_major_mut().unwrap().as_slice_mut();
            for ((wv, &yv), &uv) in wcol.iter_mut().zip(yl.iter()).zip(u) {
                *wv = tau * yv + shift * uv;
            }
        }
        // Rank-2k update of the trailing matrix (lower triangle only).
        let rest = m - nb;
        if rest > 0 {
            let (vr, wr) = (v.rb().submatrix(nb, 0, rest, nb), w.rb().submatrix(nb, 0, rest, nb));
            let mut trailing = a.rb_mut().submatrix_mut(k + nb, k + nb, rest, rest);
            for (lhs, rhs) in [(vr, wr), (wr, vr)] {
                tri_matmul(
                    trailing.rb_mut(),
                    BlockStructure::TriangularLower,
                    Accum::Add,
                    lhs,
                    BlockStructure::Rectangular,
                    rhs.transpose(),
                    BlockStructure::Rectangular,
                    -1.0,
                    par,
                );
            }
        }
        k += nb;
    }
    diag[n - 1] = a[(n - 1, n - 1)];
    offdiag[n - 1] = 0.0;
    tridiagonal_eigenvalues(&mut diag, &mut offdiag)?;
    diag.sort_by(f64::total_cmp);
    Ok(diag)
}

/// `y = A x` for the symmetric matrix whose lower triangle is the column-major `a`, reading each
/// stored entry once (it serves both `A_ij x_j` and, mirrored, `A_ji x_i`). With more than one
/// thread, columns are split into ranges of equal work, each with its own partial `y`.
fn symmetric_lower_matvec(a: MatRef<'_, f64>, x: &[f64], y: &mut [f64], partial: &mut Vec<f64>, par: Par) {
    let n = x.len();
    let threads = par.degree().max(1);
    // Below ~128^2/2 entries the matrix sits in L1/L2 and a thread hand-off costs more than it saves.
    if threads == 1 || n < 128 {
        y.fill(0.0);
        lower_matvec_columns(a, x, y, 0, n);
        return;
    }
    // Column c costs n - c: split the triangle into `threads` equal areas.
    let bounds: Vec<usize> = (0..=threads)
        .map(|t| {
            let share = t as f64 / threads as f64;
            ((1.0 - (1.0 - share).sqrt()) * n as f64).round() as usize
        })
        .collect();
    partial.resize(threads * n, 0.0);
    use rayon::prelude::*;
    partial.par_chunks_mut(n).enumerate().for_each(|(t, part)| {
        part.fill(0.0);
        lower_matvec_columns(a, x, part, bounds[t], bounds[t + 1]);
    });
    y.copy_from_slice(&partial[..n]);
    for part in partial[n..].chunks(n) {
        for (yi, pi) in y.iter_mut().zip(part) {
            *yi += pi;
        }
    }
}

/// Adds the contribution of lower-triangle columns `first..last` of `a` to `y = A x`.
fn lower_matvec_columns(a: MatRef<'_, f64>, x: &[f64], y: &mut [f64], first: usize, last: usize) {
    pulp::Arch::new().dispatch(LowerMatvecColumns { a, x, y, first, last });
}

struct LowerMatvecColumns<'a, 'y> {
    a: MatRef<'a, f64>,
    x: &'a [f64],
    y: &'y mut [f64],
    first: usize,
    last: usize,
}

impl pulp::WithSimd for LowerMatvecColumns<'_, '_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) {
        let Self { a, x, y, first, last } = self;
        let n = x.len();
        for c in first..last {
            let col = &a.col(c).try_as_col_major().unwrap().as_slice()[c..];
            let (below, xs) = (&col[1..], &x[c + 1..n]);
            let (y_head, ys) = y[c..n].split_first_mut().unwrap();
            let (a_vec, a_tail) = S::as_simd_f64s(below);
            let (x_vec, x_tail) = S::as_simd_f64s(xs);
            let (y_vec, y_tail) = S::as_mut_simd_f64s(ys);
            let xc = simd.splat_f64s(x[c]);
            // Two accumulators hide the FMA latency of the dot product.
            let (mut dot0, mut dot1) = (simd.splat_f64s(0.0), simd.splat_f64s(0.0));
            let pairs = a_vec.len() / 2;
            for q in 0..pairs {
                let (i0, i1) = (2 * q, 2 * q + 1);
                y_vec[i0] = simd.mul_add_f64s(a_vec[i0], xc, y_vec[i0]);
                y_vec[i1] = simd.mul_add_f64s(a_vec[i1], xc, y_vec[i1]);
                dot0 = simd.mul_add_f64s(a_vec[i0], x_vec[i0], dot0);
                dot1 = simd.mul_add_f64s(a_vec[i1], x_vec[i1], dot1);
            }
            if a_vec.len() % 2 == 1 {
                let i = a_vec.len() - 1;
                y_vec[i] = simd.mul_add_f64s(a_vec[i], xc, y_vec[i]);
                dot0 = simd.mul_add_f64s(a_vec[i], x_vec[i], dot0);
            }
            let mut dot = simd.reduce_sum_f64s(simd.add_f64s(dot0, dot1));
            for ((yv, &av), &xv) in y_tail.iter_mut().zip(a_tail).zip(x_tail) {
                *yv += av * x[c];
                dot += av * xv;
            }
            *y_head += col[0] * x[c] + dot;
        }
    }
}

/// Eigenvalues of the symmetric tridiagonal matrix with diagonal `d` and sub-diagonal `e`
/// (`e[i]` couples rows i and i+1; `e[n-1]` is ignored), left in `d`, unsorted. Implicit QL with
/// Wilkinson shifts, eigenvalues only: O(n^2).
fn tridiagonal_eigenvalues(d: &mut [f64], e: &mut [f64]) -> Result<()> {
    let n = d.len();
    const MAX_SWEEPS: usize = 60;
    // An entry below eps ||T|| is negligible in absolute terms too (the same backward error the
    // tridiagonalisation already made); without it, clusters of zero eigenvalues (rank-deficient
    // covariances) never satisfy the relative test.
    let norm = (0..n).map(|i| d[i].abs() + if i + 1 < n { e[i].abs() } else { 0.0 }).fold(0.0, f64::max);
    let negligible = |e: f64, d0: f64, d1: f64| e.abs() <= f64::EPSILON * (d0.abs() + d1.abs()) || e.abs() <= f64::EPSILON * norm;
    for l in 0..n {
        let mut sweeps = 0;
        loop {
            // First negligible sub-diagonal entry at or after l splits off the block l..=m.
            let mut m = l;
            while m + 1 < n && !negligible(e[m], d[m], d[m + 1]) {
                m += 1;
            }
            if m == l {
                break;
            }
            sweeps += 1;
            if sweeps > MAX_SWEEPS {
                bail!("tridiagonal QL iteration did not converge for eigenvalue {l} after {MAX_SWEEPS} sweeps");
            }
            // Wilkinson shift from the leading 2x2 block.
            let mut g = (d[l + 1] - d[l]) / (2.0 * e[l]);
            let r = g.hypot(1.0);
            g = d[m] - d[l] + e[l] / (g + r.copysign(g));
            let (mut s, mut c, mut p) = (1.0f64, 1.0f64, 0.0f64);
            let mut deflated = false;
            for i in (l..m).rev() {
                let f = s * e[i];
                let b = c * e[i];
                let r = f.hypot(g);
                e[i + 1] = r;
                if r == 0.0 {
                    // Underflow: the block splits here; retry from l.
                    d[i + 1] -= p;
                    e[m] = 0.0;
                    deflated = true;
                    break;
                }
                s = f / r;
                c = g / r;
                g = d[i + 1] - p;
                let t = (d[i] - g) * s + 2.0 * c * b;
                p = s * t;
                d[i + 1] = g + p;
                g = c * t - b;
            }
            if deflated {
                continue;
            }
            d[l] -= p;
            e[l] = g;
            e[m] = 0.0;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// Random symmetric matrix with a spread spectrum; seeded.
    fn random_symmetric(n: usize, seed: u64) -> Mat<f64> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let b = Mat::<f64>::from_fn(n, n, |_, _| rng.random::<f64>() - 0.5);
        let mut a = Mat::<f64>::zeros(n, n);
        matmul(a.as_mut(), Accum::Replace, b.as_ref(), b.transpose(), 1.0, Par::Seq);
        // Make it indefinite too: the solver must not assume PSD input.
        Mat::from_fn(n, n, |i, j| a[(i, j)] - if i == j { 0.1 * n as f64 } else { 0.0 })
    }

    #[test]
    fn blocked_eigenvalues_match_faer() {
        // Sizes around the panel width and the parallel threshold, odd and even; both the
        // sequential and the threaded matrix-vector product.
        for (n, par) in [(1, Par::Seq), (2, Par::Seq), (31, Par::Seq), (33, Par::Seq), (97, Par::Seq), (300, Par::rayon(2))] {
            let a = random_symmetric(n, n as u64);
            let expected = a.self_adjoint_eigenvalues(faer::Side::Lower).unwrap();
            let got = symmetric_eigenvalues_in_place(a.clone().as_mut(), par).unwrap();
            let scale = expected.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            // Both are backward-stable f64 solvers: eigenvalues agree to a few ulps of ||A||.
            for (g, e) in got.iter().zip(&expected) {
                assert!((g - e).abs() <= 1e-12 * scale, "n = {n}: {g} vs {e} (scale {scale})");
            }
        }
    }

    #[test]
    fn blocked_eigenvalues_of_diagonal_and_repeated_spectra() {
        // Already tridiagonal (every reflector is the identity) with repeated eigenvalues.
        let n = 70;
        let a = Mat::<f64>::from_fn(n, n, |i, j| if i == j { (i % 3) as f64 } else { 0.0 });
        let got = symmetric_eigenvalues_in_place(a.clone().as_mut(), Par::Seq).unwrap();
        let mut expected: Vec<f64> = (0..n).map(|i| (i % 3) as f64).collect();
        expected.sort_by(f64::total_cmp);
        assert_eq!(got, expected);
        // Rank one: one eigenvalue n, the rest zero to rounding.
        let ones = Mat::<f64>::from_fn(n, n, |_, _| 1.0);
        let got = symmetric_eigenvalues_in_place(ones.clone().as_mut(), Par::Seq).unwrap();
        assert!((got[n - 1] - n as f64).abs() < 1e-12 * n as f64, "{got:?}");
        assert!(got[..n - 1].iter().all(|v| v.abs() < 1e-12 * n as f64), "{got:?}");
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
}
