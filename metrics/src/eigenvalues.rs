//! Eigenvalues (no eigenvectors) of a dense symmetric f64 matrix, in two stages:
//!
//! 1. dense -> band of half-width [`BAND`]: block Householder QR of each panel and a two-sided
//!    update of the trailing matrix, all in matrix-matrix products (the `gemm` crate's AVX-512
//!    kernels: about 190 GFLOP/s on 2 cores here, against 80 for faer's);
//! 2. band -> tridiagonal by bulge chasing: short Householder reflectors on `BAND x BAND` blocks
//!    that stay in L1;
//! 3. implicit QL on the tridiagonal matrix.
//!
//! A one-stage tridiagonalisation (LAPACK `dsytrd`, faer's solver) streams the whole trailing
//! matrix through a matrix-vector product once per column: memory-bound, about 0.5 s at 2048-d.
//! Two stages touch the trailing matrix once per panel instead. This is the scheme of LAPACK's
//! `dsytrd_sy2sb` / `dsytrd_sb2st` (Haidar, Ltaief, Dongarra 2011), written here for the
//! eigenvalue-only case.

use anyhow::{bail, ensure, Result};
use faer::reborrow::{Reborrow, ReborrowMut};
use faer::{Mat, MatMut, MatRef, Par};
use pulp::Simd;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::numeric::gemm_f64;

/// Half-bandwidth after stage 1. Wider bands make the stage-1 products more efficient (inner
/// dimension 2 x BAND) and stage 2 slower (its cost grows as BAND n^2).
pub const BAND: usize = 32;

/// Eigenvalues (ascending) of the symmetric matrix whose lower triangle is `a`; the whole of
/// `a` is used as workspace and overwritten.
pub fn symmetric_eigenvalues_in_place(mut a: MatMut<'_, f64>, par: Par) -> Result<Vec<f64>> {
    let n = a.nrows();
    assert_eq!(n, a.ncols(), "symmetric_eigenvalues_in_place needs a square matrix");
    if n == 0 {
        return Ok(Vec::new());
    }
    // Scaled by a power of two (exact) to a norm near 1, so that no sum of squares in the
    // reflectors underflows or overflows; the eigenvalues are scaled back at the end.
    assert_eq!(a.row_stride(), 1, "symmetric_eigenvalues_in_place needs a column-major matrix");
    let mut largest = 0.0f64;
    for j in 0..n {
        let col = a.rb().col(j).subrows(j, n - j).try_as_col_major().unwrap().as_slice();
        // max(|v|) ignores NaN, so non-finite entries are counted separately.
        let (top, bad) = col.iter().fold((0.0f64, false), |(m, bad), v| (m.max(v.abs()), bad | !v.is_finite()));
        if bad {
            bail!("symmetric eigenvalues: the matrix has a non-finite entry");
        }
        largest = largest.max(top);
    }
    if largest == 0.0 {
        return Ok(vec![0.0; n]);
    }
    let scale = 2f64.powi(-(largest.log2().round() as i32));
    scale_and_mirror_lower(a.rb_mut(), scale);
    let band = BAND.min(n - 1).max(1);
    reduce_to_band(a.rb_mut(), band, par);
    let (mut diag, mut offdiag) = band_to_tridiagonal(a.rb(), band, par);
    tridiagonal_eigenvalues(&mut diag, &mut offdiag)?;
    diag.iter_mut().for_each(|v| *v /= scale);
    diag.sort_by(f64::total_cmp);
    Ok(diag)
}

/// Scales the lower triangle by `scale` and copies it onto the upper one (stage 1 works on the
/// full matrix, so its products are plain GEMMs). Tiled, so both sides are read and written in
/// cache-sized blocks.
fn scale_and_mirror_lower(a: MatMut<'_, f64>, scale: f64) {
    const TILE: usize = 64;
    let (n, ld) = (a.nrows(), a.col_stride() as usize);
    // SAFETY: `a` is a unique, column-major view: entry (i, j) is at i + j * ld.
    let data = unsafe { std::slice::from_raw_parts_mut(a.as_ptr_mut(), (n - 1) * ld + n) };
    for j0 in (0..n).step_by(TILE) {
        for j in j0..(j0 + TILE).min(n) {
            data[j * ld + j..j * ld + n].iter_mut().for_each(|v| *v *= scale);
        }
        for i0 in (j0..n).step_by(TILE) {
            for j in j0..(j0 + TILE).min(n) {
                for i in i0.max(j + 1)..(i0 + TILE).min(n) {
                    data[i * ld + j] = data[j * ld + i];
                }
            }
        }
    }
}

/// `x` -> `beta e1` by `H = I - tau v v^T` (LAPACK's `dlarfg` convention, `v[0] = 1`). Writes `v`
/// over `x[1..]` and returns `(tau, beta)`; `tau = 0` when `x` is already reduced.
fn householder(x: &mut [f64]) -> (f64, f64) {
    let alpha = x[0];
    let sigma: f64 = x[1..].iter().map(|t| t * t).sum();
    if sigma == 0.0 {
        return (0.0, alpha);
    }
    let norm = (alpha * alpha + sigma).sqrt();
    let beta = if alpha >= 0.0 { -norm } else { norm };
    let scale = 1.0 / (alpha - beta);
    x[1..].iter_mut().for_each(|t| *t *= scale);
    x[0] = 1.0;
    ((beta - alpha) / beta, beta)
}

/// Stage 1: `Q^T A Q` is band with half-width `band`; `a` full symmetric on entry and exit.
///
/// Panel `A[p0.., k..k+band]` (p0 = k + band) is factored `Q R` by Householder QR, with
/// `Q = I - V T V^T` (compact WY). The trailing matrix becomes `Q^T A22 Q = A22 - V Y^T - Y V^T`
/// with `X = A22 V T` and `Y = X - V (T^T (V^T X)) / 2`.
fn reduce_to_band(mut a: MatMut<'_, f64>, band: usize, par: Par) {
    let n = a.nrows();
    let mut k = 0;
    while k + band + 1 < n {
        let (p0, width) = (k + band, band);
        let m = n - p0;
        let r = width.min(m);
        // Householder QR of the panel; V holds the reflectors with their unit diagonal.
        let mut panel = a.rb().submatrix(p0, k, m, width).to_owned();
        let mut v = Mat::<f64>::zeros(m, r);
        let mut taus = vec![0.0; r];
        pulp::Arch::new().dispatch(PanelQr { panel: panel.as_mut(), v: v.as_mut(), taus: &mut taus });
        // R back into the lower triangle (its mirror above the diagonal is never read again).
        a.rb_mut().submatrix_mut(p0, k, m, width).copy_from(panel.as_ref());
        // T upper triangular with H_0 H_1 ... H_{r-1} = I - V T V^T (LAPACK's dlarft, forward).
        let mut gram = Mat::<f64>::zeros(r, r);
        gemm_f64(gram.as_mut(), false, v.transpose(), v.as_ref(), 1.0, Par::Seq);
        let mut t = Mat::<f64>::zeros(r, r);
        for i in 0..r {
            t[(i, i)] = taus[i];
            if taus[i] == 0.0 {
                continue;
            }
            for row in 0..i {
                let tz: f64 = (row..i).map(|q| t[(row, q)] * gram[(q, i)]).sum();
                t[(row, i)] = -taus[i] * tz;
            }
        }
        let mut a22 = a.rb_mut().submatrix_mut(p0, p0, m, m);
        // Transposed products (A22 is symmetric): a wide r x m output runs at square-GEMM speed,
        // a tall m x r one at a third of it.
        let mut x_t = Mat::<f64>::zeros(r, m);
        gemm_f64(x_t.as_mut(), false, v.transpose(), a22.rb(), 1.0, par);
        // (X T)^T = T^T X^T, then V^T (X T) and C = T^T V^T X T.
        let mut xt_t = Mat::<f64>::zeros(r, m);
        gemm_f64(xt_t.as_mut(), false, t.transpose(), x_t.as_ref(), 1.0, par);
        let mut vtx = Mat::<f64>::zeros(r, r);
        gemm_f64(vtx.as_mut(), false, v.transpose(), xt_t.transpose(), 1.0, Par::Seq);
        let mut c = Mat::<f64>::zeros(r, r);
        gemm_f64(c.as_mut(), false, t.transpose(), vtx.as_ref(), 1.0, Par::Seq);
        // Y^T = (X T)^T - C^T V^T / 2.
        gemm_f64(xt_t.as_mut(), true, c.transpose(), v.transpose(), -0.5, par);
        // U = [V Y], W = [Y V]: one rank-2r product A22 -= U W^T.
        let mut u = Mat::<f64>::zeros(m, 2 * r);
        u.as_mut().submatrix_mut(0, 0, m, r).copy_from(v.as_ref());
        u.as_mut().submatrix_mut(0, r, m, r).copy_from(xt_t.transpose());
        let mut w = Mat::<f64>::zeros(m, 2 * r);
        w.as_mut().submatrix_mut(0, 0, m, r).copy_from(xt_t.transpose());
        w.as_mut().submatrix_mut(0, r, m, r).copy_from(v.as_ref());
        gemm_f64(a22.rb_mut(), true, u.as_ref(), w.transpose(), -1.0, par);
        k += band;
    }
}

/// Householder QR of a stage-1 panel in place (R in its upper triangle, zeros below), with the
/// reflectors written to the columns of `v` (unit diagonal, zeros above) and their `taus`.
struct PanelQr<'a> {
    panel: MatMut<'a, f64>,
    v: MatMut<'a, f64>,
    taus: &'a mut [f64],
}

impl pulp::WithSimd for PanelQr<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let Self { mut panel, mut v, taus } = self;
        let (m, width) = (panel.nrows(), panel.ncols());
        for (i, tau_slot) in taus.iter_mut().enumerate() {
            let col = panel.rb_mut().col_mut(i).subrows_mut(i, m - i).try_as_col_major_mut().unwrap().as_slice_mut();
            let (tau, beta) = householder(col);
            let vi = v.rb_mut().col_mut(i).subrows_mut(i, m - i).try_as_col_major_mut().unwrap().as_slice_mut();
            vi.copy_from_slice(col);
            vi[0] = 1.0;
            col[0] = beta;
            col[1..].fill(0.0);
            *tau_slot = tau;
            if tau == 0.0 {
                continue;
            }
            let vi = v.rb().col(i).subrows(i, m - i).try_as_col_major().unwrap().as_slice();
            for c in i + 1..width {
                let pc = panel.rb_mut().col_mut(c).subrows_mut(i, m - i).try_as_col_major_mut().unwrap().as_slice_mut();
                let s = dot(simd, vi, pc);
                axpy(simd, pc, -tau * s, vi);
            }
        }
    }
}

/// Stage 2: band (half-width `band`, lower triangle) -> tridiagonal, in place.
///
/// Sweep `st` zeroes column `st` below its sub-diagonal with a reflector on rows
/// `st+1..=st+band`, applies it to that diagonal block from both sides and to the block below
/// from the right, which fills the block (the bulge). A new reflector from the bulge's first
/// column is applied from the left, moving the rest of the bulge one block down, and so on to
/// the end of the matrix. What each sweep leaves outside the band lies inside the next sweep's
/// blocks (they are one row further down), so after the last sweep the matrix is tridiagonal.
///
/// Step `j` of sweep `st` works on the columns of its diagonal block only, and those of step `j`
/// of sweep `st + 1` overlap steps `j` and `j + 1` of sweep `st`. So with one sweep per thread in
/// turn, sweep `st + 1` may run step `j` as soon as sweep `st` has finished step `j + 1`: the
/// sweeps run as a pipeline, two blocks apart.
fn band_to_tridiagonal(a: MatRef<'_, f64>, band: usize, par: Par) -> (Vec<f64>, Vec<f64>) {
    let n = a.nrows();
    let sweeps = n.saturating_sub(2);
    let threads = match par {
        Par::Seq => 1,
        Par::Rayon(t) => t.get(),
    }
    .min(sweeps.div_ceil(2 * band).max(1));
    // Compact band storage (LAPACK's layout): column j holds rows j..j+2*band, the band and the
    // room its bulge needs. Columns of the dense matrix are 16 KB apart at 2048-d, so their
    // segments would all fall in the same few cache sets; here a sweep walks contiguous memory.
    let ld = 2 * band;
    let mut storage = vec![0.0; n * ld];
    for (j, col) in storage.chunks_mut(ld).enumerate() {
        let len = (band + 1).min(n - j);
        for (i, slot) in col[..len].iter_mut().enumerate() {
            *slot = a[(j + i, j)];
        }
    }
    let shared = SharedColumns { ptr: storage.as_mut_ptr(), n, ld };
    let progress: Vec<AtomicUsize> = (0..sweeps).map(|_| AtomicUsize::new(0)).collect();
    let worker = |first: usize| {
        pulp::Arch::new().dispatch(SweepWorker { a: &shared, band, first, stride: threads, progress: &progress });
    };
    if threads == 1 {
        worker(0);
    } else {
        std::thread::scope(|scope| {
            for t in 1..threads {
                let worker = &worker;
                scope.spawn(move || worker(t));
            }
            worker(0);
        });
    }
    let diag = (0..n).map(|j| storage[j * ld]).collect();
    let offdiag = (0..n).map(|j| if j + 1 < n { storage[j * ld + 1] } else { 0.0 }).collect();
    (diag, offdiag)
}

/// The band matrix shared by the sweep threads; each thread only touches the columns that the
/// progress counters hand it (see [`band_to_tridiagonal`]).
struct SharedColumns {
    ptr: *mut f64,
    n: usize,
    /// Entries per column: row `i` of column `j` sits at `j * ld + (i - j)`.
    ld: usize,
}

// SAFETY: the threads access disjoint columns at any time, ordered by the Release/Acquire
// progress counters.
unsafe impl Sync for SharedColumns {}

impl SharedColumns {
    /// Rows `first..first+len` of column `j`.
    ///
    /// # Safety
    /// No other thread may access these entries while the slice lives.
    #[allow(clippy::mut_from_ref)]
    unsafe fn column(&self, j: usize, first: usize, len: usize) -> &mut [f64] {
        debug_assert!(j < self.n && first >= j && first + len <= self.n && first + len - j <= self.ld);
        std::slice::from_raw_parts_mut(self.ptr.add(j * self.ld + first - j), len)
    }
}

/// Runs sweeps `first, first + stride, ...`, each step after the previous sweep has finished
/// the step after it.
struct SweepWorker<'a> {
    a: &'a SharedColumns,
    band: usize,
    first: usize,
    stride: usize,
    progress: &'a [AtomicUsize],
}

impl pulp::WithSimd for SweepWorker<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let Self { a, band, first, stride, progress } = self;
        let n = a.n;
        let (mut v, mut v_next, mut y) = (vec![0.0; band], vec![0.0; band], vec![0.0; band]);
        let wait_for = |st: usize, step: usize| {
            if st == 0 {
                return;
            }
            let mut spins = 0u32;
            while progress[st - 1].load(Ordering::Acquire) < step + 2 {
                spins += 1;
                if spins < 64 {
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
            }
        };
        // SAFETY (every `a.column` below): the entries lie in the columns of the current step's
        // diagonal block, which no other sweep touches until this step is published.
        for st in (first..progress.len()).step_by(stride) {
            wait_for(st, 0);
            let (mut r0, mut r1) = (st + 1, (st + band).min(n - 1));
            let len = r1 - r0 + 1;
            let x = unsafe { a.column(st, r0, len) };
            let (mut tau, beta) = householder(x);
            v[..len].copy_from_slice(x);
            x[0] = beta;
            x[1..].fill(0.0);
            let mut step = 0;
            loop {
                if step > 0 {
                    wait_for(st, step);
                }
                let len = r1 - r0 + 1;
                if tau != 0.0 {
                    two_sided_lower(simd, a, r0, &v[..len], tau, &mut y[..len]);
                }
                let n0 = r1 + 1;
                if n0 >= n {
                    break;
                }
                let n1 = (r1 + band).min(n - 1);
                let rows = n1 - n0 + 1;
                // Bulge block B = A[n0..=n1, r0..=r1] <- B H.
                if tau != 0.0 {
                    let z = &mut v_next[..rows];
                    z.fill(0.0);
                    for (c, &vc) in v[..len].iter().enumerate() {
                        axpy(simd, z, vc, unsafe { a.column(r0 + c, n0, rows) });
                    }
                    for (c, &vc) in v[..len].iter().enumerate() {
                        axpy(simd, unsafe { a.column(r0 + c, n0, rows) }, -tau * vc, z);
                    }
                }
                // Reflector from B's first column, applied to the rest of B from the left.
                let first_col = unsafe { a.column(r0, n0, rows) };
                let (tau_next, beta) = householder(first_col);
                v_next[..rows].copy_from_slice(first_col);
                first_col[0] = beta;
                first_col[1..].fill(0.0);
                if tau_next != 0.0 {
                    for c in 1..len {
                        let bc = unsafe { a.column(r0 + c, n0, rows) };
                        let s = dot(simd, &v_next[..rows], bc);
                        axpy(simd, bc, -tau_next * s, &v_next[..rows]);
                    }
                }
                std::mem::swap(&mut v, &mut v_next);
                tau = tau_next;
                (r0, r1) = (n0, n1);
                step += 1;
                progress[st].store(step, Ordering::Release);
            }
            progress[st].store(usize::MAX, Ordering::Release);
        }
    }
}

/// `D <- H D H` for the symmetric block `D = A[r0.., r0..]` of size `v.len()`, lower triangle
/// only: `D - v w^T - w v^T` with `y = tau D v`, `w = y - tau (y.v) v / 2`.
#[inline(always)]
fn two_sided_lower<S: Simd>(simd: S, a: &SharedColumns, r0: usize, v: &[f64], tau: f64, y: &mut [f64]) {
    let len = v.len();
    y.fill(0.0);
    for c in 0..len {
        // SAFETY: the caller's block (see `SweepWorker`).
        let col = unsafe { a.column(r0 + c, r0 + c, len - c) };
        let (head, below) = col.split_first().unwrap();
        y[c] += head * v[c] + dot(simd, below, &v[c + 1..]);
        axpy(simd, &mut y[c + 1..], v[c], below);
    }
    y.iter_mut().for_each(|t| *t *= tau);
    let alpha = -0.5 * tau * dot(simd, y, v);
    axpy(simd, y, alpha, v);
    for c in 0..len {
        // SAFETY: as above.
        let col = unsafe { a.column(r0 + c, r0 + c, len - c) };
        let (wc, vc) = (y[c], v[c]);
        axpy(simd, col, -wc, &v[c..]);
        axpy(simd, col, -vc, &y[c..]);
    }
}

#[inline(always)]
fn dot<S: Simd>(simd: S, x: &[f64], y: &[f64]) -> f64 {
    let (xv, xt) = S::as_simd_f64s(x);
    let (yv, yt) = S::as_simd_f64s(&y[..x.len()]);
    let mut acc = simd.splat_f64s(0.0);
    for (a, b) in xv.iter().zip(yv) {
        acc = simd.mul_add_f64s(*a, *b, acc);
    }
    let mut sum = simd.reduce_sum_f64s(acc);
    for (a, b) in xt.iter().zip(yt) {
        sum += a * b;
    }
    sum
}

/// `y += alpha x`.
#[inline(always)]
fn axpy<S: Simd>(simd: S, y: &mut [f64], alpha: f64, x: &[f64]) {
    let (xv, xt) = S::as_simd_f64s(&x[..y.len()]);
    let (yv, yt) = S::as_mut_simd_f64s(y);
    let a = simd.splat_f64s(alpha);
    for (p, q) in yv.iter_mut().zip(xv) {
        *p = simd.mul_add_f64s(a, *q, *p);
    }
    for (p, q) in yt.iter_mut().zip(xt) {
        *p += alpha * q;
    }
}

/// Eigenvalues of the symmetric tridiagonal matrix with diagonal `d` and sub-diagonal `e`
/// (`e[i]` couples rows i and i+1; `e[n-1]` is ignored), left in `d`, unsorted. Implicit QL with
/// Wilkinson shifts, eigenvalues only: O(n^2).
pub(crate) fn tridiagonal_eigenvalues(d: &mut [f64], e: &mut [f64]) -> Result<()> {
    // Scaled by a power of two (exact) so that ||T|| is about 1: the rotations can then use
    // sqrt(f^2 + g^2) without overflow instead of the much slower `hypot`; squares that
    // underflow belong to entries far below eps ||T||.
    let norm = d.iter().chain(e.iter()).fold(0.0f64, |m, v| m.max(v.abs()));
    if norm == 0.0 || !norm.is_finite() {
        ensure!(norm == 0.0, "tridiagonal matrix has a non-finite entry");
        return Ok(());
    }
    let scale = 2f64.powi(-(norm.log2().round() as i32));
    d.iter_mut().chain(e.iter_mut()).for_each(|v| *v *= scale);
    ql_implicit(d, e)?;
    d.iter_mut().for_each(|v| *v /= scale);
    Ok(())
}

fn ql_implicit(d: &mut [f64], e: &mut [f64]) -> Result<()> {
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
                let r = (f * f + g * g).sqrt();
                e[i + 1] = r;
                if r == 0.0 {
                    // Underflow: the block splits here; retry from l.
                    d[i + 1] -= p;
                    e[m] = 0.0;
                    deflated = true;
                    break;
                }
                // One division instead of two: it sits on the loop's critical path.
                let inv = 1.0 / r;
                s = f * inv;
                c = g * inv;
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
    use faer::linalg::matmul::matmul;
    use faer::Accum;

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
    fn two_stage_eigenvalues_match_faer() {
        // Sizes around the band width (no stage 1 below BAND + 2), several panels, odd and even;
        // one and two sweep threads; a lower triangle only on input (the upper one is garbage).
        let sizes = [(1, Par::Seq), (2, Par::Seq), (3, Par::Seq), (BAND, Par::Seq), (BAND + 1, Par::Seq), (BAND + 2, Par::rayon(2))];
        let more = [(2 * BAND + 3, Par::Seq), (97, Par::rayon(2)), (300, Par::rayon(2)), (301, Par::Seq)];
        for (n, par) in sizes.into_iter().chain(more) {
            let a = random_symmetric(n, n as u64);
            let mut input = a.clone();
            for j in 1..n {
                for i in 0..j {
                    input[(i, j)] = f64::NAN;
                }
            }
            let expected = a.self_adjoint_eigenvalues(faer::Side::Lower).unwrap();
            let got = symmetric_eigenvalues_in_place(input.as_mut(), par).unwrap();
            let scale = expected.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            // Both are backward-stable f64 solvers: eigenvalues agree to a few ulps of ||A||.
            for (g, e) in got.iter().zip(&expected) {
                assert!((g - e).abs() <= 1e-12 * scale, "n = {n}: {g} vs {e} (scale {scale})");
            }
        }
    }

    #[test]
    fn two_stage_eigenvalues_of_diagonal_and_repeated_spectra() {
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
    fn eigenvalues_scale_exactly_at_extreme_magnitudes() {
        // The tridiagonal iteration squares entries; its power-of-two scaling keeps 1e-200 and
        // 1e200 matrices from underflowing or overflowing: the spectrum scales with the matrix.
        let n = 80;
        let a = random_symmetric(n, 7);
        let base = symmetric_eigenvalues_in_place(a.clone().as_mut(), Par::Seq).unwrap();
        let top = base.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        for factor in [1e-200, 1e200] {
            let scaled = Mat::from_fn(n, n, |i, j| a[(i, j)] * factor);
            let got = symmetric_eigenvalues_in_place(scaled.clone().as_mut(), Par::Seq).unwrap();
            for (g, b) in got.iter().zip(&base) {
                assert!((g / factor - b).abs() <= 1e-12 * top, "factor {factor:e}: {g:e} vs {b:e}");
            }
        }
    }

    #[test]
    fn non_finite_entries_are_an_error() {
        let mut a = random_symmetric(40, 3);
        for bad in [f64::INFINITY, f64::NAN] {
            a[(30, 2)] = bad;
            let err = symmetric_eigenvalues_in_place(a.clone().as_mut(), Par::Seq).unwrap_err().to_string();
            assert!(err.contains("non-finite"), "{err}");
        }
    }
}
