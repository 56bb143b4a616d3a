//! Eigenvalues (no eigenvectors) of a dense symmetric f64 matrix, in two stages:
//!
//! 1. dense -> band of half-width [`BAND`]: block Householder QR of each panel and a two-sided
//!    update of the trailing matrix, all in matrix-matrix products over column blocks of the
//!    lower triangle (the `gemm` crate's AVX-512 kernels: about 190 GFLOP/s on 2 cores here,
//!    against 80 for faer's), with the next panel factored on one thread while the other
//!    updates the rest (look-ahead);
//! 2. band -> tridiagonal by bulge chasing: short Householder reflectors on `BAND x BAND` blocks
//!    that stay in L1, the sweeps pipelined across threads in groups;
//! 3. eigenvalues of the tridiagonal matrix (`tridiagonal.rs`: QL, or one divide-and-conquer
//!    level on two threads).
//!
//! A one-stage tridiagonalisation (LAPACK `dsytrd`, faer's solver) streams the whole trailing
//! matrix through a matrix-vector product once per column: memory-bound, about 0.5 s at 2048-d.
//! Two stages touch the trailing matrix once per panel instead. This is the scheme of LAPACK's
//! `dsytrd_sy2sb` / `dsytrd_sb2st` (Haidar, Ltaief, Dongarra 2011), written here for the
//! eigenvalue-only case.
//!
//! At 2048-d on 2 threads (`examples/fid_timing.rs`, FID's whole route about 0.34 s): stage 1
//! about 130 ms, stage 2 about 33 ms, the tridiagonal eigenvalues about 19 ms.

use anyhow::{bail, Result};
use faer::reborrow::{Reborrow, ReborrowMut};
use faer::{Mat, MatMut, MatRef, Par};
use pulp::Simd;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::numeric::{gemm_f64, largest_magnitude};
use crate::tridiagonal::tridiagonal_eigenvalues;

/// Half-bandwidth after stage 1. Wider bands make the stage-1 products more efficient (inner
/// dimension 2 x BAND) and stage 2 slower (its cost grows as BAND n^2).
pub const BAND: usize = 32;

/// Width of stage 1's column blocks: wide enough for the products to run near GEMM speed, narrow
/// enough that the whole diagonal blocks (computed twice over) stay a small share.
const SYMM_BLOCK: usize = 256;

/// Eigenvalues (ascending) of the symmetric matrix whose lower triangle is `a`; the whole of
/// `a` is used as workspace and overwritten.
pub fn symmetric_eigenvalues_in_place(a: MatMut<'_, f64>, par: Par) -> Result<Vec<f64>> {
    eigenvalues_in_blocks(a, SYMM_BLOCK, par)
}

/// [`symmetric_eigenvalues_in_place`] with stage 1's column blocks `block` wide (tests use
/// narrow ones to cover many blocks on small matrices).
fn eigenvalues_in_blocks(mut a: MatMut<'_, f64>, block: usize, par: Par) -> Result<Vec<f64>> {
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
        let Some(top) = largest_magnitude(col) else {
            bail!("symmetric eigenvalues: the matrix has a non-finite entry");
        };
        largest = largest.max(top);
    }
    if largest == 0.0 {
        return Ok(vec![0.0; n]);
    }
    let scale = 2f64.powi(-(largest.log2().round() as i32));
    scale_lower_and_fill_diagonal_blocks(a.rb_mut(), scale, block);
    let band = BAND.min(n - 1).max(1);
    reduce_to_band(a.rb_mut(), band, block, par);
    let (mut diag, mut offdiag) = band_to_tridiagonal(a.rb(), band, par);
    tridiagonal_eigenvalues(&mut diag, &mut offdiag, par)?;
    diag.iter_mut().for_each(|v| *v /= scale);
    diag.sort_by(f64::total_cmp);
    Ok(diag)
}

/// Scales the lower triangle by `scale` and fills the upper triangles of the diagonal blocks
/// (see [`column_blocks`]) from it: the state stage 1 starts from.
fn scale_lower_and_fill_diagonal_blocks(a: MatMut<'_, f64>, scale: f64, block: usize) {
    let (n, ld) = (a.nrows(), a.col_stride() as usize);
    // SAFETY: `a` is a unique, column-major view: entry (i, j) is at i + j * ld.
    let data = unsafe { std::slice::from_raw_parts_mut(a.as_ptr_mut(), (n - 1) * ld + n) };
    for j in 0..n {
        data[j * ld + j..j * ld + n].iter_mut().for_each(|v| *v *= scale);
    }
    for (c0, c1) in column_blocks(0, n, block) {
        for j in c0..c1 {
            for i in c0..j {
                data[j * ld + i] = data[i * ld + j];
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

/// Stage 1: `Q^T A Q` is band with half-width `band`. Only the lower triangle of `a` and its
/// diagonal blocks (see [`column_blocks`]) are read and kept up to date.
///
/// Panel `A[p0.., k..k+band]` (p0 = k + band) is factored `Q R` by Householder QR, with
/// `Q = I - V T V^T` (compact WY). The trailing matrix becomes `Q^T A22 Q = A22 - V Y^T - Y V^T`
/// with `X = A22 V T` and `Y = X - V (T^T (V^T X)) / 2`. `A22 V` and the rank-2r update run as
/// products over column blocks of the lower triangle: `4 r m^2` flops per panel instead of the
/// `6 r m^2` of full-matrix products.
fn reduce_to_band(mut a: MatMut<'_, f64>, band: usize, block: usize, par: Par) {
    let n = a.nrows();
    if band + 1 >= n {
        return;
    }
    // Workspaces for the largest panel, reused (sub-views) by the smaller ones.
    let rows = n - band;
    let mut v_full = Mat::<f64>::zeros(rows, band);
    let mut x_t_full = Mat::<f64>::zeros(band, rows);
    // U = [V Y] and W = [Y V] for the rank-2r update A22 -= U W^T.
    let mut u_full = Mat::<f64>::zeros(rows, 2 * band);
    let mut w_full = Mat::<f64>::zeros(rows, 2 * band);
    let mut taus = vec![0.0; band];
    let (mut gram, mut t, mut vtx, mut c) =
        (Mat::<f64>::zeros(band, band), Mat::<f64>::zeros(band, band), Mat::<f64>::zeros(band, band), Mat::<f64>::zeros(band, band));
    let first_r = band.min(rows);
    factor_panel(
        a.rb_mut().submatrix_mut(band, 0, rows, band),
        v_full.as_mut().submatrix_mut(0, 0, rows, first_r),
        &mut taus,
        gram.as_mut(),
        t.as_mut(),
    );
    let mut k = 0;
    while k + band + 1 < n {
        // Panel k..k+band is factored: V (m x r) and T (r x r).
        let p0 = k + band;
        let m = n - p0;
        let r = band.min(m);
        let (v, t_r) = (v_full.as_ref().submatrix(0, 0, m, r), t.as_ref().submatrix(0, 0, r, r));
        let blocks = column_blocks(p0, n, block);
        // X^T = V^T A22 (transposed, so that each block's product has a wide r x w output).
        // Columns C of A22 are stored from their diagonal block down; above it they are the
        // transpose of row block C left of the diagonal block. Every block costs 2 r w m flops.
        let mut x_t = x_t_full.as_mut().submatrix_mut(0, 0, r, m);
        {
            let a22 = a.rb().submatrix(p0, p0, m, m);
            let outputs = split_columns(x_t.rb_mut(), &blocks);
            for_each_block(par, outputs.into_iter().zip(&blocks).collect(), |(mut out, &(c0, c1))| {
                let (c, w) = (c0 - p0, c1 - c0);
                gemm_f64(out.rb_mut(), false, v.submatrix(c, 0, m - c, r).transpose(), a22.submatrix(c, c, m - c, w), 1.0, Par::Seq);
                if c > 0 {
                    gemm_f64(out.rb_mut(), true, v.submatrix(0, 0, c, r).transpose(), a22.submatrix(c, 0, w, c).transpose(), 1.0, Par::Seq);
                }
            });
        }
        // Y = X T - V C / 2 with C = T^T V^T X T, written into U's right half.
        let mut u = u_full.as_mut().submatrix_mut(0, 0, m, 2 * r);
        u.rb_mut().submatrix_mut(0, 0, m, r).copy_from(v);
        let (_, mut y) = u.rb_mut().split_at_col_mut(r);
        gemm_f64(y.rb_mut(), false, x_t.rb().transpose(), t_r, 1.0, Par::Seq);
        let mut vtx = vtx.as_mut().submatrix_mut(0, 0, r, r);
        gemm_f64(vtx.rb_mut(), false, v.transpose(), y.rb(), 1.0, Par::Seq);
        let mut c = c.as_mut().submatrix_mut(0, 0, r, r);
        gemm_f64(c.rb_mut(), false, t_r.transpose(), vtx.rb(), 1.0, Par::Seq);
        gemm_f64(y.rb_mut(), true, v, c.rb(), -0.5, Par::Seq);
        let mut w = w_full.as_mut().submatrix_mut(0, 0, m, 2 * r);
        w.rb_mut().submatrix_mut(0, 0, m, r).copy_from(y.rb());
        w.rb_mut().submatrix_mut(0, r, m, r).copy_from(v);
        // A22 -= U W^T on each block's columns from its diagonal block down (the diagonal block
        // whole, so it stays symmetric).
        let (u, w) = (u.rb(), w.rb());
        let update = |a22: MatMut<'_, f64>, blocks: &[(usize, usize)]| {
            // `a22` holds rows p0.. of the blocks' columns.
            let outputs = split_columns(a22, blocks);
            for_each_block(par, outputs.into_iter().zip(blocks).collect(), |(out, &(c0, c1))| {
                let (c, cols) = (c0 - p0, c1 - c0);
                gemm_f64(
                    out.subrows_mut(c, m - c),
                    true,
                    u.submatrix(c, 0, m - c, 2 * r),
                    w.submatrix(c, 0, cols, 2 * r).transpose(),
                    -1.0,
                    Par::Seq,
                );
            });
        };
        let a22 = a.rb_mut().submatrix_mut(p0, p0, m, m);
        if p0 + band + 1 < n {
            // Look-ahead: the next panel (A22's first `band` columns) is updated first and
            // factored on one thread while the other updates the rest of A22.
            let (mut next, rest) = a22.split_at_col_mut(band);
            gemm_f64(next.rb_mut(), true, u, w.submatrix(0, 0, band, 2 * r).transpose(), -1.0, par);
            let factor_next = || {
                let m_next = m - band;
                let r_next = band.min(m_next);
                factor_panel(
                    next.subrows_mut(band, m_next),
                    v_full.as_mut().submatrix_mut(0, 0, m_next, r_next),
                    &mut taus,
                    gram.as_mut(),
                    t.as_mut(),
                );
            };
            let rest_blocks = column_blocks(p0 + band, n, block);
            join(par, factor_next, || update(rest, &rest_blocks));
        } else {
            update(a22, &blocks);
        }
        k += band;
    }
}

/// Householder QR of a stage-1 panel in place (R in its upper triangle, zeros below), its
/// reflectors in `v` (unit diagonal, zeros above) and `T` (upper triangular, `r x r` corner of
/// `t`) with `H_0 H_1 ... H_{r-1} = I - V T V^T` (LAPACK's `dlarft`, forward).
fn factor_panel(panel: MatMut<'_, f64>, mut v: MatMut<'_, f64>, taus: &mut [f64], mut gram: MatMut<'_, f64>, mut t: MatMut<'_, f64>) {
    let r = v.ncols();
    v.fill(0.0);
    pulp::Arch::new().dispatch(PanelQr { panel, v: v.rb_mut(), taus: &mut taus[..r] });
    let (mut gram, mut t) = (gram.rb_mut().submatrix_mut(0, 0, r, r), t.rb_mut().submatrix_mut(0, 0, r, r));
    gemm_f64(gram.rb_mut(), false, v.rb().transpose(), v.rb(), 1.0, Par::Seq);
    t.fill(0.0);
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
}

/// `(a(), b())`, side by side when `par` allows.
fn join<A: FnOnce() + Send, B: FnOnce() + Send>(par: Par, a: A, b: B) {
    match par {
        Par::Seq => {
            a();
            b();
        }
        Par::Rayon(_) => {
            rayon::join(a, b);
        }
    }
}

/// Column blocks `[c0, c1)` of `from..n` for stage 1's products. Their boundaries are fixed
/// multiples of `block`, so a diagonal block is the same square from panel to panel and can be
/// kept whole (both triangles) while the rest of the matrix keeps only its lower triangle.
fn column_blocks(from: usize, n: usize, block: usize) -> Vec<(usize, usize)> {
    let mut blocks = Vec::new();
    let mut c0 = from;
    while c0 < n {
        let c1 = ((c0 / block + 1) * block).min(n);
        blocks.push((c0, c1));
        c0 = c1;
    }
    blocks
}

/// Consecutive column ranges of `m` with the widths of `blocks`, as disjoint views.
fn split_columns<'a>(mut m: MatMut<'a, f64>, blocks: &[(usize, usize)]) -> Vec<MatMut<'a, f64>> {
    let mut views = Vec::with_capacity(blocks.len());
    for &(c0, c1) in blocks {
        let (left, right) = m.split_at_col_mut(c1 - c0);
        views.push(left);
        m = right;
    }
    views
}

/// Runs `f` on each item, on rayon's threads when `par` allows (largest blocks first: they come
/// first in `items`, and rayon hands out single items, so the tail stays balanced).
fn for_each_block<T: Send>(par: Par, items: Vec<T>, f: impl Fn(T) + Sync + Send) {
    use rayon::prelude::*;
    match par {
        Par::Seq => items.into_iter().for_each(f),
        Par::Rayon(_) => items.into_par_iter().with_max_len(1).for_each(f),
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
/// of sweep `st + 1` overlap steps `j` and `j + 1` of sweep `st`. So sweep `st + 1` may run step
/// `j` as soon as sweep `st` has finished step `j + 1`: the sweeps run as a pipeline, two blocks
/// apart, the threads taking groups of [`SWEEP_GROUP`] consecutive sweeps in turn.
fn band_to_tridiagonal(a: MatRef<'_, f64>, band: usize, par: Par) -> (Vec<f64>, Vec<f64>) {
    let n = a.nrows();
    let sweeps = n.saturating_sub(2);
    let threads = match par {
        Par::Seq => 1,
        Par::Rayon(t) => t.get(),
    }
    .min(sweeps.div_ceil(SWEEP_GROUP).max(1));
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
    /// The `FULL` storage slots of column `j` from its diagonal down: rows `j..j+FULL`, the
    /// rows past the matrix's end included (slots that hold zeros).
    ///
    /// # Safety
    /// No other thread may access these entries while the slice lives.
    #[allow(clippy::mut_from_ref)]
    unsafe fn column_from_diagonal(&self, j: usize) -> &mut [f64; FULL] {
        debug_assert!(j < self.n && FULL <= self.ld);
        &mut *self.ptr.add(j * self.ld).cast::<[f64; FULL]>()
    }

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

/// Sweeps per group: a thread runs a group of consecutive sweeps as a wavefront (below), so the
/// blocks they share stay in its cache and move to the other thread's core once per group, and
/// only a group's first sweep waits on the other thread. With one sweep per thread in turn (every
/// step waiting on the other core and pulling its block across) stage 2 took 57 ms at 2048-d on
/// 2 threads; with groups of 8, 43 ms (4: 45, 16: 55, where the wavefronts' ramps leave threads
/// waiting), measured before the fixed-size kernels.
const SWEEP_GROUP: usize = 8;

/// Runs the sweep groups `first, first + stride, ...` (of [`SWEEP_GROUP`] sweeps each).
struct SweepWorker<'a> {
    a: &'a SharedColumns,
    band: usize,
    first: usize,
    stride: usize,
    progress: &'a [AtomicUsize],
}

/// Where one sweep stands: its current reflector on rows `r0..=r1` and the steps done.
struct Sweep {
    st: usize,
    r0: usize,
    r1: usize,
    v: Vec<f64>,
    tau: f64,
    step: usize,
    done: bool,
}

impl pulp::WithSimd for SweepWorker<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let Self { a, band, first, stride, progress } = self;
        let sweeps = progress.len();
        let (mut v_next, mut y) = (vec![0.0; band], vec![0.0; band]);
        // Step `step` of sweep `st` may run once sweep `st - 1` has finished step `step + 1`.
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
        let mut group: Vec<Sweep> = Vec::with_capacity(SWEEP_GROUP);
        for g0 in (first * SWEEP_GROUP..sweeps).step_by(stride * SWEEP_GROUP) {
            group.clear();
            group.extend((g0..(g0 + SWEEP_GROUP).min(sweeps)).map(|st| Sweep {
                st,
                r0: 0,
                r1: 0,
                v: vec![0.0; band],
                tau: 0.0,
                step: 0,
                done: false,
            }));
            // Wavefront: at time t, sweep g0 + i runs its step t - 2i. That step needs step
            // t - 2i + 1 of the sweep before, which ran at time t - 1 (in this thread, or for the
            // group's first sweep in the other one: waited for).
            let mut t = 0;
            while !group.last().unwrap().done {
                for (i, sweep) in group.iter_mut().enumerate() {
                    if sweep.done || t < 2 * i || t - 2 * i != sweep.step {
                        continue;
                    }
                    if i == 0 {
                        wait_for(sweep.st, sweep.step);
                    }
                    // SAFETY: the wavefront order and `wait_for` give this step its block alone.
                    unsafe { sweep_step(simd, a, band, sweep, &mut v_next, &mut y) };
                    progress[sweep.st].store(if sweep.done { usize::MAX } else { sweep.step }, Ordering::Release);
                }
                t += 1;
            }
        }
    }
}

/// One step of a sweep: its first step makes the reflector that zeroes column `st` below the
/// sub-diagonal; every step applies the current reflector to its diagonal block from both sides
/// and to the block below from the right, which fills that block (the bulge), and makes the
/// next reflector from the bulge's first column, applied to the rest of it from the left.
///
/// # Safety
/// No other thread may touch the columns of the step's diagonal block and of the block below.
#[inline(always)]
unsafe fn sweep_step<S: Simd>(simd: S, a: &SharedColumns, band: usize, sweep: &mut Sweep, v_next: &mut [f64], y: &mut [f64]) {
    let n = a.n;
    if sweep.step == 0 {
        let st = sweep.st;
        (sweep.r0, sweep.r1) = (st + 1, (st + band).min(n - 1));
        let len = sweep.r1 - sweep.r0 + 1;
        let x = a.column(st, sweep.r0, len);
        let (tau, beta) = householder(x);
        sweep.v[..len].copy_from_slice(x);
        x[0] = beta;
        x[1..].fill(0.0);
        sweep.tau = tau;
    }
    let (r0, r1, tau) = (sweep.r0, sweep.r1, sweep.tau);
    let len = r1 - r0 + 1;
    let v = &sweep.v[..len];
    if tau != 0.0 && len == FULL {
        two_sided_full(simd, a, r0, v.try_into().unwrap(), tau);
    } else if tau != 0.0 {
        two_sided_lower(simd, a, r0, v, tau, &mut y[..len]);
    }
    let n0 = r1 + 1;
    if n0 >= n {
        sweep.done = true;
        return;
    }
    let n1 = (r1 + band).min(n - 1);
    let rows = n1 - n0 + 1;
    // Bulge block B = A[n0..=n1, r0..=r1] <- B H, then the reflector from B's first column,
    // applied to the rest of B from the left. The common full-size block goes through the same
    // code with its lengths as compile-time constants: the compiler unrolls the vector loops and
    // drops the tails (stage 2: 42 -> 35 ms at 2048-d).
    let tau_next = if rows == FULL && len == FULL {
        bulge_step(simd, a, r0, n0, FULL, &sweep.v[..FULL], tau, &mut v_next[..FULL])
    } else {
        bulge_step(simd, a, r0, n0, rows, v, tau, &mut v_next[..rows])
    };
    sweep.v[..rows].copy_from_slice(&v_next[..rows]);
    sweep.tau = tau_next;
    (sweep.r0, sweep.r1) = (n0, n1);
    sweep.step += 1;
}

/// The bulge block `B = A[n0..n0+rows, r0..r0+v.len()]` becomes `B H` (`H = I - tau v v^T`);
/// the reflector that zeroes `B`'s first column below its first entry is made (written to
/// `v_next`, tau returned) and applied to the rest of `B` from the left.
///
/// # Safety
/// As [`sweep_step`].
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn bulge_step<S: Simd>(
    simd: S,
    a: &SharedColumns,
    r0: usize,
    n0: usize,
    rows: usize,
    v: &[f64],
    tau: f64,
    v_next: &mut [f64],
) -> f64 {
    if tau != 0.0 {
        let z = &mut v_next[..rows];
        z.fill(0.0);
        for (c, &vc) in v.iter().enumerate() {
            axpy(simd, z, vc, a.column(r0 + c, n0, rows));
        }
        for (c, &vc) in v.iter().enumerate() {
            axpy(simd, a.column(r0 + c, n0, rows), -tau * vc, z);
        }
    }
    let first_col = a.column(r0, n0, rows);
    let (tau_next, beta) = householder(first_col);
    v_next[..rows].copy_from_slice(first_col);
    first_col[0] = beta;
    first_col[1..].fill(0.0);
    if tau_next != 0.0 {
        for c in 1..v.len() {
            let bc = a.column(r0 + c, n0, rows);
            let s = dot(simd, &v_next[..rows], bc);
            axpy(simd, bc, -tau_next * s, &v_next[..rows]);
        }
    }
    tau_next
}

/// [`two_sided_lower`] for a full `FULL x FULL` block, with every vector `FULL` long: column `c`
/// of the block is read from its diagonal `FULL` rows down, past the block into the bulge rows
/// below it (this step's, finite), which meet zeros in the padded `v` and `y` and so neither
/// contribute nor change.
#[inline(always)]
fn two_sided_full<S: Simd>(simd: S, a: &SharedColumns, r0: usize, v: &[f64; FULL], tau: f64) {
    let (mut v_pad, mut y_pad) = ([0.0f64; 2 * FULL], [0.0f64; 2 * FULL]);
    v_pad[..FULL].copy_from_slice(v);
    for c in 0..FULL {
        // SAFETY: the caller's block and the bulge rows below it (see `SweepWorker`).
        let col = unsafe { a.column_from_diagonal(r0 + c) };
        // y[c] += col[1..] . v[c+1..]; y[c..] += v[c] col (its first term is col[0] v[c]).
        let below = dot(simd, col, &v_pad[c..c + FULL]) - col[0] * v[c];
        axpy(simd, &mut y_pad[c..c + FULL], v[c], col);
        y_pad[c] += below;
    }
    y_pad[FULL..].fill(0.0);
    let y = &mut y_pad[..FULL];
    y.iter_mut().for_each(|t| *t *= tau);
    let alpha = -0.5 * tau * dot(simd, y, v);
    axpy(simd, y, alpha, v);
    for c in 0..FULL {
        // SAFETY: as above.
        let col = unsafe { a.column_from_diagonal(r0 + c) };
        let (wc, vc) = (y_pad[c], v[c]);
        axpy(simd, col, -wc, &v_pad[c..c + FULL]);
        axpy(simd, col, -vc, &y_pad[c..c + FULL]);
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

/// Length of a full stage-2 block column ([`BAND`]), for the fixed-size kernels.
const FULL: usize = BAND;

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
    fn stage_one_column_blocks_of_any_width_give_the_same_eigenvalues() {
        // Many column blocks, block edges on and off the panel edges (multiples of BAND or not),
        // a first block cut short by the panel start; one thread and two.
        for (n, block, par) in
            [(150, 40, Par::Seq), (150, 64, Par::rayon(2)), (257, 33, Par::rayon(2)), (200, BAND, Par::Seq), (90, 1000, Par::Seq)]
        {
            let a = random_symmetric(n, 11 + n as u64);
            let mut input = a.clone();
            for j in 1..n {
                for i in 0..j {
                    input[(i, j)] = f64::NAN;
                }
            }
            let expected = a.self_adjoint_eigenvalues(faer::Side::Lower).unwrap();
            let got = eigenvalues_in_blocks(input.as_mut(), block, par).unwrap();
            let scale = expected.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            for (g, e) in got.iter().zip(&expected) {
                assert!((g - e).abs() <= 1e-12 * scale, "n = {n}, block {block}: {g} vs {e} (scale {scale})");
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
