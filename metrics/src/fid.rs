//! Fréchet distance (FID, and sFID on the spatial features) with ADM semantics.
//!
//! `FID = |mu1 - mu2|^2 + tr S1 + tr S2 - 2 tr sqrt(S1 S2)`, sigma1 = samples, sigma2 = reference.
//!
//! `tr sqrt(S1 S2)` is the sum of square roots of the eigenvalues of `S1 S2`. Those equal the
//! eigenvalues of the symmetric PSD matrix `L^T S2 L` for any factor `S1 = L L^T`, so we use a
//! symmetric eigen-solver on that matrix (never on the non-symmetric product):
//! 1. Cholesky of S1 (or of S2 with the roles swapped, since `S1 S2` and `S2 S1` share
//!    eigenvalues) -> `L^T S_other L` with triangular products;
//! 2. if neither is positive definite (N < d): a rank-revealing (pivoted) Cholesky factor
//!    `P^T S1 P = F F^T` with `F` of size `d x r`, r the numerical rank, and the eigenvalues of
//!    the `r x r` matrix `F^T (P^T S2 P) F`. (`trace_sqrt_product_eigen`, which factors S1 by its
//!    full eigendecomposition, is the slower independent check of this route.)
//!
//! Only eigenvalues are computed (the two-stage solver of [`crate::eigenvalues`] from
//! [`TWO_STAGE_MIN_DIM`] up, faer's one-stage solver below); no eigenvector is formed on any
//! default route. The products go through the `gemm` crate's AVX-512 kernels.
//!
//! Negative eigenvalues of the final symmetric matrix are rounding noise (a sqrtm would put
//! them in the imaginary part); they are clipped to 0 and the largest `sqrt(|lambda|)` is reported
//! as `max_imaginary`. If the result is not finite, ADM's retry with 1e-6 added to both
//! diagonals is applied.

use anyhow::{anyhow, bail, ensure, Context, Result};
use faer::diag::Diag;
use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::cholesky::llt::factor::{cholesky_in_place, cholesky_in_place_scratch};
use faer::linalg::cholesky::llt_pivoting::factor::{
    cholesky_in_place as pivoted_cholesky, cholesky_in_place_scratch as pivoted_cholesky_scratch,
};
use faer::linalg::evd::{self_adjoint_evd, self_adjoint_evd_scratch, ComputeEigenvectors};
use faer::linalg::matmul::matmul;
use faer::linalg::matmul::triangular::{matmul as tri_matmul, BlockStructure};
use faer::reborrow::{Reborrow, ReborrowMut};
use faer::{Accum, Mat, MatMut, MatRef, Par};

use crate::eigenvalues::symmetric_eigenvalues_in_place;
use crate::numeric::{default_par, gemm_f64};
use crate::stats::FeatureStats;

/// From this size up, the congruence runs as `gemm`-crate block products and the eigenvalues come
/// from the two-stage solver; below it the matrix (3.2 MB at 640) stays in the L2 caches, where
/// faer's one-stage solver is not memory-bound and the route before them was as fast or faster
/// (whole route measured at 0.90x of the previous one at 512-d, 1.09x at 768-d and 1.55x at
/// 2048-d, one thread to two).
pub const TWO_STAGE_MIN_DIM: usize = 640;

/// ADM's diagonal offset for the retry when the first attempt is not finite.
pub const ADM_RETRY_EPS: f64 = 1e-6;

/// How `tr sqrt(S1 S2)` was computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TraceRoute {
    /// Cholesky factor of the sample covariance.
    CholeskySample,
    /// Cholesky factor of the reference covariance (sample covariance was singular).
    CholeskyReference,
    /// Symmetric square root of the sample covariance from its eigendecomposition.
    Eigen,
    /// Rank-revealing (pivoted) Cholesky factor of the sample covariance (neither covariance was
    /// positive definite).
    PivotedCholesky,
}

/// Result of one Fréchet distance.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct FidResult {
    pub value: f64,
    /// `tr sqrt(S1 S2)`.
    pub trace_sqrt: f64,
    /// Largest `sqrt(|lambda|)` over the negative eigenvalues that were clipped: the size of the
    /// imaginary part a matrix square root would have shown (ADM raises above 1e-3).
    pub max_imaginary: f64,
    /// Whether ADM's eps=1e-6 diagonal retry was needed.
    pub eps_retry_used: bool,
    /// Number of negative eigenvalues clipped to 0.
    pub clipped_eigenvalues: usize,
    pub route: TraceRoute,
}

/// `tr sqrt(S1 S2)` with its diagnostics.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TraceSqrt {
    pub value: f64,
    pub max_imaginary: f64,
    pub clipped_eigenvalues: usize,
    pub route: TraceRoute,
}

/// FID between sample statistics and reference statistics (ADM argument order).
pub fn frechet_distance(sample: &FeatureStats, reference: &FeatureStats) -> Result<FidResult> {
    check_compatible(sample, reference, "FID")?;
    let d = sample.dim();
    let mean_term: f64 = sample.mu.iter().zip(&reference.mu).map(|(a, b)| (a - b) * (a - b)).sum();
    let trace_terms = sample.trace() + reference.trace();
    let par = default_par();

    let (trace, eps_retry_used) = match trace_sqrt_product(&sample.sigma, &reference.sigma, d, par) {
        Ok(t) if t.value.is_finite() => (t, false),
        _ => {
            let s1 = with_diagonal_offset(&sample.sigma, d, ADM_RETRY_EPS);
            let s2 = with_diagonal_offset(&reference.sigma, d, ADM_RETRY_EPS);
            let t = trace_sqrt_product(&s1, &s2, d, par).context("tr sqrt(S1 S2) failed even with 1e-6 added to the diagonals")?;
            (t, true)
        }
    };
    let value = mean_term + trace_terms - 2.0 * trace.value;
    ensure!(value.is_finite(), "Fréchet distance is not finite ({value})");
    Ok(FidResult {
        value,
        trace_sqrt: trace.value,
        max_imaginary: trace.max_imaginary,
        eps_retry_used,
        clipped_eigenvalues: trace.clipped_eigenvalues,
        route: trace.route,
    })
}

/// sFID: the same Fréchet distance on ADM's 2023-d spatial (`mixed_6/conv`) statistics.
pub fn spatial_frechet_distance(sample: &FeatureStats, reference: &FeatureStats) -> Result<FidResult> {
    check_compatible(sample, reference, "sFID")?;
    frechet_distance(sample, reference)
}

fn check_compatible(sample: &FeatureStats, reference: &FeatureStats, what: &str) -> Result<()> {
    if sample.dim() != reference.dim() {
        bail!(
            "{what}: feature dimensions differ (samples {}, reference {}); both sides must come \
             from the same feature extractor",
            sample.dim(),
            reference.dim()
        );
    }
    sample.validate(&format!("{what} sample statistics"))?;
    reference.validate(&format!("{what} reference statistics"))
}

fn with_diagonal_offset(sigma: &[f64], d: usize, eps: f64) -> Vec<f64> {
    let mut out = sigma.to_vec();
    for i in 0..d {
        out[i * d + i] += eps;
    }
    out
}

/// `tr sqrt(S1 S2)` for symmetric PSD row-major `d x d` matrices by the symmetric routes
/// described in the module docs.
pub fn trace_sqrt_product(s1: &[f64], s2: &[f64], d: usize, par: Par) -> Result<TraceSqrt> {
    let (m1, m2) = (view(s1, d)?, view(s2, d)?);
    match cholesky_of_either(m1, m2, par) {
        Some((l, other, route)) => congruence_trace(l.as_ref(), other, par, route),
        None => pivoted_cholesky_trace(m1, m2, par),
    }
}

/// The lower Cholesky factor of S1, else of S2 (`S1 S2` and `S2 S1` share eigenvalues), with the
/// other covariance and the route; `None` when neither is positive definite.
fn cholesky_of_either<'a>(m1: MatRef<'a, f64>, m2: MatRef<'a, f64>, par: Par) -> Option<(Zeroed, MatRef<'a, f64>, TraceRoute)> {
    if let Some(l) = cholesky_lower(m1, par) {
        return Some((l, m2, TraceRoute::CholeskySample));
    }
    cholesky_lower(m2, par).map(|l| (l, m1, TraceRoute::CholeskyReference))
}

/// Both covariances singular: `P^T S1 P = F F^T` by pivoted Cholesky, stopped at the numerical
/// rank r (faer's tolerance: d * eps * max diagonal, as LAPACK's `dpstrf`), then the eigenvalues
/// of `F^T (P^T S2 P) F` (r x r). The nonzero eigenvalues of `S1 S2` are those of that matrix;
/// what is dropped is the rounding-level part of S1 that the eigen route clips or keeps as
/// ~sqrt(eps)-sized noise eigenvalues.
fn pivoted_cholesky_trace(s1: MatRef<'_, f64>, s2: MatRef<'_, f64>, par: Par) -> Result<TraceSqrt> {
    let d = s1.nrows();
    let max_diagonal = (0..d).map(|i| s1[(i, i)]).fold(0.0f64, f64::max);
    if max_diagonal <= 0.0 {
        // S1 = 0 (every sample identical): S1 S2 = 0.
        return Ok(sum_sqrt_clipped(&[], TraceRoute::PivotedCholesky));
    }
    let mut factor = Mat::<f64>::zeros(d, d);
    factor.copy_from_triangular_lower(s1);
    let (mut perm, mut perm_inv) = (vec![0usize; d], vec![0usize; d]);
    let mut mem = MemBuffer::new(pivoted_cholesky_scratch::<usize, f64>(d, par, Default::default()));
    let (info, _) = pivoted_cholesky(factor.as_mut(), &mut perm, &mut perm_inv, par, MemStack::new(&mut mem), Default::default())
        .map_err(|e| anyhow!("pivoted Cholesky of the sample covariance failed: {e:?}"))?;
    let rank = info.rank;
    let f = Mat::<f64>::from_fn(d, rank, |i, j| if i >= j { factor[(i, j)] } else { 0.0 });
    let s2_permuted = Mat::<f64>::from_fn(d, d, |i, j| s2[(perm[i], perm[j])]);
    // F is lower trapezoidal: the blocked congruence skips its zeros and the unread part of S2 F
    // (about half the flops of two full products at r = d/2). It takes a row-major view of S2;
    // the permuted copy is symmetric, so its transpose is the same matrix.
    let mut congruent = congruence_lower(f.as_ref(), s2_permuted.transpose(), par);
    sum_sqrt_eigenvalues(congruent.as_mut().submatrix_mut(0, 0, rank, rank), par, TraceRoute::PivotedCholesky)
}

/// The eigen route on its own: `S1 = U Lambda U^T`, `F = U sqrt(max(Lambda, 0))`, eigenvalues of
/// `F^T S2 F`. Works for singular S1; also serves as an independent check of the Cholesky route.
pub fn trace_sqrt_product_eigen(s1: &[f64], s2: &[f64], d: usize, par: Par) -> Result<TraceSqrt> {
    let (m1, m2) = (view(s1, d)?, view(s2, d)?);
    let (values, vectors) = symmetric_eigen(m1, par)?;
    let factor = Mat::from_fn(d, d, |i, j| vectors[(i, j)] * values[j].max(0.0).sqrt());
    let mut product = Mat::<f64>::zeros(d, d);
    matmul(product.as_mut(), Accum::Replace, m2, factor.as_ref(), 1.0, par);
    let mut congruent = Mat::<f64>::zeros(d, d);
    matmul(congruent.as_mut(), Accum::Replace, factor.transpose(), product.as_ref(), 1.0, par);
    symmetrize(&mut congruent);
    sum_sqrt_eigenvalues(congruent.as_mut(), par, TraceRoute::Eigen)
}

/// `sum sqrt(eig(L^T S L))` using the triangular structure of `L`.
fn congruence_trace(l: MatRef<'_, f64>, s: MatRef<'_, f64>, par: Par, route: TraceRoute) -> Result<TraceSqrt> {
    if l.nrows() >= TWO_STAGE_MIN_DIM {
        sum_sqrt_eigenvalues(congruence_lower(l, s, par).as_mut(), par, route)
    } else {
        sum_sqrt_eigenvalues(congruence_lower_faer(l, s, par).as_mut(), par, route)
    }
}

/// The lower triangle of `L^T S L` for a lower-trapezoidal `d x r` factor `L` (zero above its
/// diagonal) and symmetric `S`, as the top `r x r` block of the returned `d x r` buffer (its
/// entries above the diagonal are workspace). Column and row blocks skip the zeros of `L` and
/// the part of `S L` that the result never reads: at `r = d`, `2 d^3 / 3 + d^3 / 3` flops
/// instead of the `4 d^3` of two full products. The buffer holds the lower block triangle of
/// `S L` and then, row block by row block, the result.
fn congruence_lower(l: MatRef<'_, f64>, s: MatRef<'_, f64>, par: Par) -> Zeroed {
    const BLOCK: usize = 256;
    let (d, r) = (l.nrows(), l.ncols());
    let mut out = Zeroed::new(d, r);
    // (S L)[j0.., J] = S[j0.., j0..] L[j0.., J] for the column block J = j0..j1: the row blocks
    // below read column block J from row j0 down only, so rows above j0 are never formed (a
    // third of the product's flops at r = d; -26 ms minimum, -45 ms median at 2048-d on 2
    // threads, same bits). `s` is a symmetric row-major view; read column-major (the same
    // matrix) its columns are contiguous, which the products pack faster (-7 ms at 2048-d).
    let s = s.transpose();
    for j0 in (0..r).step_by(BLOCK) {
        let w = BLOCK.min(r - j0);
        gemm_f64(
            out.as_mut().submatrix_mut(j0, j0, d - j0, w),
            false,
            s.submatrix(j0, j0, d - j0, d - j0),
            l.submatrix(j0, j0, d - j0, w),
            1.0,
            par,
        );
    }
    // (L^T S L)[I, ..i1] = L[i0.., I]^T (S L)[i0.., ..i1] for the row block I = i0..i1. It reads
    // rows i0.. of S L only, so it replaces rows I once computed.
    let mut rows = Mat::<f64>::zeros(BLOCK.min(r), r);
    for i0 in (0..r).step_by(BLOCK) {
        let h = BLOCK.min(r - i0);
        let lhs = l.submatrix(i0, i0, d - i0, h).transpose();
        let mut block = rows.as_mut().submatrix_mut(0, 0, h, i0 + h);
        gemm_f64(block.rb_mut(), false, lhs, out.as_ref().submatrix(i0, 0, d - i0, i0 + h), 1.0, par);
        out.as_mut().submatrix_mut(i0, 0, h, i0 + h).copy_from(block.rb());
    }
    out
}

/// The same with faer's triangular products: the route below [`TWO_STAGE_MIN_DIM`] (where a
/// 256-wide block would make the blocked version compute a full product) and that of
/// [`trace_sqrt_product_previous_route`].
fn congruence_lower_faer(l: MatRef<'_, f64>, s: MatRef<'_, f64>, par: Par) -> Mat<f64> {
    let d = l.nrows();
    let mut s_l = Mat::<f64>::zeros(d, d);
    tri_matmul(
        s_l.as_mut(),
        BlockStructure::Rectangular,
        Accum::Replace,
        s,
        BlockStructure::Rectangular,
        l,
        BlockStructure::TriangularLower,
        1.0,
        par,
    );
    let mut congruent = Mat::<f64>::zeros(d, d);
    tri_matmul(
        congruent.as_mut(),
        BlockStructure::TriangularLower,
        Accum::Replace,
        l.transpose(),
        BlockStructure::TriangularUpper,
        s_l.as_ref(),
        BlockStructure::Rectangular,
        1.0,
        par,
    );
    congruent
}

/// The Cholesky route as it was before the two-stage solver: faer's triangular products and
/// faer's one-stage self-adjoint solver (eigenvalues only). An independent check of the default
/// route, and its time is the "before" of `examples/fid_timing.rs`.
pub fn trace_sqrt_product_previous_route(s1: &[f64], s2: &[f64], d: usize, par: Par) -> Result<TraceSqrt> {
    let (m1, m2) = (view(s1, d)?, view(s2, d)?);
    let Some((l, other, route)) = cholesky_of_either(m1, m2, par) else {
        bail!("neither covariance is positive definite: no Cholesky route");
    };
    let values = faer_symmetric_eigenvalues(congruence_lower_faer(l.as_ref(), other, par).as_ref(), par)?;
    Ok(sum_sqrt_clipped(&values, route))
}

/// Sum of square roots of the eigenvalues of a symmetric matrix (lower triangle read and used
/// as workspace), clipping negative ones.
fn sum_sqrt_eigenvalues(a: MatMut<'_, f64>, par: Par, route: TraceRoute) -> Result<TraceSqrt> {
    let values =
        if a.nrows() >= TWO_STAGE_MIN_DIM { symmetric_eigenvalues_in_place(a, par)? } else { faer_symmetric_eigenvalues(a.rb(), par)? };
    Ok(sum_sqrt_clipped(&values, route))
}

fn sum_sqrt_clipped(values: &[f64], route: TraceRoute) -> TraceSqrt {
    let mut value = 0.0;
    let mut most_negative = 0.0f64;
    let mut clipped = 0;
    for &lambda in values {
        if lambda < 0.0 {
            clipped += 1;
            most_negative = most_negative.min(lambda);
        } else {
            value += lambda.sqrt();
        }
    }
    TraceSqrt { value, max_imaginary: most_negative.abs().sqrt(), clipped_eigenvalues: clipped, route }
}

/// The row-major `d x d` covariance as a matrix view (no copy).
fn view(s: &[f64], d: usize) -> Result<MatRef<'_, f64>> {
    ensure!(s.len() == d * d, "covariance has {} entries, expected {d}x{d}", s.len());
    Ok(MatRef::from_row_major_slice(s, d, d))
}

fn symmetrize(m: &mut Mat<f64>) {
    let d = m.nrows();
    for j in 0..d {
        for i in j + 1..d {
            let v = 0.5 * (m[(i, j)] + m[(j, i)]);
            m[(i, j)] = v;
            m[(j, i)] = v;
        }
    }
}

/// Lower Cholesky factor, or `None` if the matrix is not numerically positive definite.
fn cholesky_lower(a: MatRef<'_, f64>, par: Par) -> Option<Zeroed> {
    use rayon::prelude::*;
    let d = a.nrows();
    // `a` is symmetric and row-major, so its entries in column-major order are the same matrix:
    // contiguous column copies instead of a transposing one. (Our covariances are mirrored
    // exactly; a reference batch's may differ from its transpose by rounding, which moves FID by
    // ~1e-15.) In parallel, so that the buffer's page faults are taken on both threads.
    let mut buffer = Zeroed::square(d);
    let source = a.transpose().try_as_col_major().expect("a row-major covariance view");
    let copy_column =
        |(j, column): (usize, &mut [f64])| column[j..].copy_from_slice(&source.col(j).try_as_col_major().unwrap().as_slice()[j..]);
    match par {
        Par::Seq => buffer.data.chunks_mut(d).enumerate().for_each(copy_column),
        Par::Rayon(_) => buffer.data.par_chunks_mut(d).enumerate().for_each(copy_column),
    }
    let mut l = buffer.as_mut();
    let mut mem = MemBuffer::new(cholesky_in_place_scratch::<f64>(d, par, Default::default()));
    let stack = MemStack::new(&mut mem);
    cholesky_in_place(l.rb_mut(), Default::default(), par, stack, Default::default()).ok()?;
    // faer's blocked factorisation uses the strict upper triangle as workspace; the block
    // products read `l` densely, so it must be zero there.
    for j in 1..d {
        l.rb_mut().col_mut(j).subrows_mut(0, j).fill(0.0);
    }
    let diagonal_ok = (0..d).all(|i| l[(i, i)].is_finite() && l[(i, i)] > 0.0);
    diagonal_ok.then_some(buffer)
}

/// A zero-filled column-major matrix whose pages are first touched by whatever fills it.
/// `Mat::zeros` writes every zero on one thread: at 2048-d, 8192 page faults and about 12 ms
/// per matrix here. This buffer comes zeroed from the allocator (`calloc`), and the parallel
/// products or copies that fill it take those faults on both threads.
struct Zeroed {
    data: Vec<f64>,
    rows: usize,
    cols: usize,
}

impl Zeroed {
    fn new(rows: usize, cols: usize) -> Self {
        Self { data: vec![0.0; rows * cols], rows, cols }
    }

    fn square(d: usize) -> Self {
        Self::new(d, d)
    }

    fn as_ref(&self) -> MatRef<'_, f64> {
        MatRef::from_column_major_slice(&self.data, self.rows, self.cols)
    }

    fn as_mut(&mut self) -> MatMut<'_, f64> {
        MatMut::from_column_major_slice_mut(&mut self.data, self.rows, self.cols)
    }
}

fn faer_symmetric_eigenvalues(a: MatRef<'_, f64>, par: Par) -> Result<Vec<f64>> {
    let d = a.nrows();
    let mut s = Diag::<f64>::zeros(d);
    let mut mem = MemBuffer::new(self_adjoint_evd_scratch::<f64>(d, ComputeEigenvectors::No, par, Default::default()));
    self_adjoint_evd(a, s.as_mut(), None, par, MemStack::new(&mut mem), Default::default())
        .map_err(|e| anyhow!("symmetric eigenvalue solver did not converge: {e:?}"))?;
    Ok(s.column_vector().iter().copied().collect())
}

fn symmetric_eigen(a: MatRef<'_, f64>, par: Par) -> Result<(Vec<f64>, Mat<f64>)> {
    let d = a.nrows();
    let mut s = Diag::<f64>::zeros(d);
    let mut u = Mat::<f64>::zeros(d, d);
    let mut mem = MemBuffer::new(self_adjoint_evd_scratch::<f64>(d, ComputeEigenvectors::Yes, par, Default::default()));
    self_adjoint_evd(a, s.as_mut(), Some(u.as_mut()), par, MemStack::new(&mut mem), Default::default())
        .map_err(|e| anyhow!("symmetric eigendecomposition did not converge: {e:?}"))?;
    Ok((s.column_vector().iter().copied().collect(), u))
}

/// `sum Re sqrt(lambda)` over the eigenvalues of the non-symmetric product `S1 S2` from a general
/// eigen-solver: torch-fidelity's formula. Slow (O(d^3) with a large constant); for tests and
/// cross-checks only.
pub fn trace_sqrt_product_general_eigenvalues(s1: &[f64], s2: &[f64], d: usize) -> Result<f64> {
    let (m1, m2) = (view(s1, d)?.to_owned(), view(s2, d)?.to_owned());
    let product = &m1 * &m2;
    let values = product.eigenvalues().map_err(|e| anyhow!("general eigenvalue solver did not converge: {e:?}"))?;
    Ok(values.iter().map(|z| z.sqrt().re).sum())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random_stats(n: usize, d: usize, shift: f32, seed: u64) -> FeatureStats {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let x: Vec<f32> = (0..n * d).map(|_| rng.random::<f32>() + shift).collect();
        FeatureStats::from_features(&x, d).unwrap()
    }

    #[test]
    fn identical_statistics_give_zero() {
        let s = random_stats(500, 24, 0.0, 1);
        let r = frechet_distance(&s, &s).unwrap();
        assert!(r.value.abs() < 1e-10, "{}", r.value);
        assert_eq!(r.route, TraceRoute::CholeskySample);
        assert!(!r.eps_retry_used);
    }

    #[test]
    fn cholesky_eigen_and_general_routes_agree() {
        let (a, b) = (random_stats(400, 20, 0.0, 2), random_stats(300, 20, 0.1, 3));
        let d = 20;
        let par = Par::Seq;
        let chol = trace_sqrt_product(&a.sigma, &b.sigma, d, par).unwrap();
        let eig = trace_sqrt_product_eigen(&a.sigma, &b.sigma, d, par).unwrap();
        let general = trace_sqrt_product_general_eigenvalues(&a.sigma, &b.sigma, d).unwrap();
        // Well conditioned, f64 throughout: the routes agree to rounding (~1e-15 relative).
        assert!((chol.value - eig.value).abs() < 1e-12 * chol.value, "{chol:?} {eig:?}");
        assert!((chol.value - general).abs() < 1e-12 * chol.value, "{chol:?} {general}");
    }

    #[test]
    fn singular_sample_covariance_uses_other_factor() {
        // 5 samples in 8 dims: S1 has rank 4, the reference is full rank.
        let (a, b) = (random_stats(5, 8, 0.0, 4), random_stats(200, 8, 0.0, 5));
        let r = frechet_distance(&a, &b).unwrap();
        assert_eq!(r.route, TraceRoute::CholeskyReference);
        let eig = trace_sqrt_product_eigen(&a.sigma, &b.sigma, 8, Par::Seq).unwrap();
        // S1 S2 has 4 zero eigenvalues, which come out as rounding noise of either sign, each
        // adding at most sqrt(eps ||S1|| ||S2||) when positive; the 4 true ones agree to rounding.
        let noise_bound = 4.0 * (f64::EPSILON * a.trace() * b.trace()).sqrt();
        assert!((r.trace_sqrt - eig.value).abs() <= noise_bound, "{r:?} {eig:?}, bound {noise_bound:e}");
    }

    /// Statistics whose last feature is constant: an exactly zero variance, so no Cholesky.
    fn stats_with_constant_feature(n: usize, d: usize, seed: u64) -> FeatureStats {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let x: Vec<f32> = (0..n * d).map(|i| if i % d == d - 1 { 0.5 } else { rng.random::<f32>() }).collect();
        FeatureStats::from_features(&x, d).unwrap()
    }

    #[test]
    fn both_singular_falls_back_to_pivoted_cholesky_route() {
        let (a, b) = (stats_with_constant_feature(40, 8, 6), stats_with_constant_feature(30, 8, 7));
        let r = frechet_distance(&a, &b).unwrap();
        assert_eq!(r.route, TraceRoute::PivotedCholesky);
        let general = trace_sqrt_product_general_eigenvalues(&a.sigma, &b.sigma, 8).unwrap();
        // One exactly-zero eigenvalue (clipped or not): the routes agree to rounding.
        assert!((r.trace_sqrt - general).abs() < 1e-7, "{r:?} {general}");
    }

    /// Random statistics with a spread spectrum at a size where the two-stage solver runs several
    /// panels and bulge-chasing sweeps on two threads.
    fn spread_stats(n: usize, d: usize, seed: u64) -> FeatureStats {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let x: Vec<f32> = (0..n * d).map(|i| rng.random::<f32>() * (1.0 + (i % d) as f32 / 16.0)).collect();
        FeatureStats::from_features(&x, d).unwrap()
    }

    #[test]
    fn blocked_congruence_matches_dense_product_on_the_lower_triangle() {
        // d = 600: two 256-wide blocks and a ragged one, each skipping the rows of S L above it;
        // r = 600 is the Cholesky route's square factor, r = 300 the pivoted route's trapezoid.
        let d = 600;
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let g = Mat::<f64>::from_fn(d, d, |_, _| rng.random::<f64>() - 0.5);
        let s = &g + g.transpose();
        for r in [d, 300] {
            let l = Mat::<f64>::from_fn(d, r, |i, j| if i >= j { rng.random::<f64>() - 0.5 } else { 0.0 });
            let dense = l.transpose() * &s * &l;
            let blocked = congruence_lower(l.as_ref(), s.as_ref(), Par::rayon(2));
            assert_eq!((blocked.rows, blocked.cols), (d, r));
            let scale = dense.norm_max();
            for j in 0..r {
                for i in j..r {
                    // Sums of ~d products of O(1) terms in another order: rounding is ~1e-13 of
                    // the scale.
                    let diff = (blocked.as_ref()[(i, j)] - dense[(i, j)]).abs();
                    assert!(diff <= 1e-12 * scale, "r = {r}, ({i}, {j}): {} vs {}", blocked.as_ref()[(i, j)], dense[(i, j)]);
                }
            }
        }
    }

    #[test]
    fn blocked_pivoted_route_matches_eigen_route() {
        // From TWO_STAGE_MIN_DIM up the fallback runs the blocked congruence on the d x r factor,
        // and with r = 659 the two-stage solver on its r x r corner (column stride d, not r).
        let d = TWO_STAGE_MIN_DIM + 60;
        let (a, b) = (spread_stats(660, d, 16), spread_stats(680, d, 17));
        let par = Par::rayon(2);
        let fast = trace_sqrt_product(&a.sigma, &b.sigma, d, par).unwrap();
        let eigen = trace_sqrt_product_eigen(&a.sigma, &b.sigma, d, par).unwrap();
        assert_eq!(fast.route, TraceRoute::PivotedCholesky);
        // As in the test above: the routes differ by the d - r noise directions of S1 only.
        let noise_bound = (d - 659) as f64 * (f64::EPSILON * a.trace() * b.trace()).sqrt();
        assert!((fast.value - eigen.value).abs() <= noise_bound, "{fast:?} vs {eigen:?}, bound {noise_bound:e}");
        assert!((fast.value - eigen.value).abs() <= 1e-7 * eigen.value, "{fast:?} vs {eigen:?}");
    }

    #[test]
    fn two_stage_route_matches_previous_route_full_rank() {
        let d = TWO_STAGE_MIN_DIM + 30;
        let (a, b) = (spread_stats(1500, d, 10), spread_stats(1200, d, 11));
        let par = Par::rayon(2);
        let new = trace_sqrt_product(&a.sigma, &b.sigma, d, par).unwrap();
        let old = trace_sqrt_product_previous_route(&a.sigma, &b.sigma, d, par).unwrap();
        assert_eq!(new.route, TraceRoute::CholeskySample);
        // The bar: the same value as the previous route to 1e-9 relative.
        assert!((new.value - old.value).abs() <= 1e-9 * old.value, "{new:?} vs {old:?}");
        assert_eq!(new.clipped_eigenvalues, old.clipped_eigenvalues);
    }

    #[test]
    fn two_stage_route_matches_previous_route_rank_deficient_sample() {
        // 500 samples in 670 dims: S1 has rank 499, the reference route factors S2. L^T S1 L has
        // 171 rounding-level eigenvalues of either sign. Both solvers see the same matrix, but
        // which noise eigenvalues come out positive (and add their sqrt, at most about
        // `max_imaginary` each) is rounding: the sums can differ by up to 171 such terms. The
        // 499 true eigenvalues agree to rounding.
        let d = TWO_STAGE_MIN_DIM + 30;
        let (a, b) = (spread_stats(500, d, 12), spread_stats(1500, d, 13));
        let par = Par::rayon(2);
        let new = trace_sqrt_product(&a.sigma, &b.sigma, d, par).unwrap();
        let old = trace_sqrt_product_previous_route(&a.sigma, &b.sigma, d, par).unwrap();
        assert_eq!(new.route, TraceRoute::CholeskyReference);
        let noise = (d - 499) as f64 * new.max_imaginary.max(old.max_imaginary);
        assert!((new.value - old.value).abs() <= noise, "{new:?} vs {old:?}, noise bound {noise:e}");
        // In practice far inside that bound: 1.4e-9 relative measured, 1e-8 allowed.
        assert!((new.value - old.value).abs() <= 1e-8 * old.value, "{new:?} vs {old:?}");
    }

    #[test]
    fn pivoted_cholesky_route_matches_eigen_route_both_rank_deficient() {
        // Both sides N < d: the fallback route. Against the eigen route (full eigendecomposition
        // of S1): the r = 69 true eigenvalues agree to rounding; the routes differ only in the
        // ~d - r noise directions of S1 (dropped by the pivoted factor, kept as sqrt(eps)-sized
        // terms by the eigen route): at most (d - r) * sqrt(eps * ||S1|| * ||S2||) apart.
        let d = 150;
        let (a, b) = (spread_stats(70, d, 14), spread_stats(90, d, 15));
        let par = Par::rayon(2);
        let fast = trace_sqrt_product(&a.sigma, &b.sigma, d, par).unwrap();
        let eigen = trace_sqrt_product_eigen(&a.sigma, &b.sigma, d, par).unwrap();
        assert_eq!(fast.route, TraceRoute::PivotedCholesky);
        let norm = |s: &FeatureStats| s.trace();
        let noise_bound = (d - 69) as f64 * (f64::EPSILON * norm(&a) * norm(&b)).sqrt();
        assert!((fast.value - eigen.value).abs() <= noise_bound, "{fast:?} vs {eigen:?}, bound {noise_bound:e}");
        // And far tighter than the bound in practice: the same value to 1e-7 relative.
        assert!((fast.value - eigen.value).abs() <= 1e-7 * eigen.value, "{fast:?} vs {eigen:?}");
    }

    #[test]
    fn zero_sample_covariance_gives_zero_trace() {
        let zero = FeatureStats { n: 3, mu: vec![0.5; 6], sigma: vec![0.0; 36] };
        let r = frechet_distance(&zero, &zero).unwrap();
        assert_eq!(r.trace_sqrt, 0.0);
        assert_eq!(r.route, TraceRoute::PivotedCholesky);
    }

    #[test]
    fn mismatched_or_bad_statistics_are_errors() {
        let a = random_stats(50, 4, 0.0, 8);
        let b = random_stats(50, 5, 0.0, 9);
        let err = frechet_distance(&a, &b).unwrap_err().to_string();
        assert!(err.contains("dimensions differ"), "{err}");
        let mut c = a.clone();
        c.sigma[5] = f64::NAN;
        let err = frechet_distance(&a, &c).unwrap_err().to_string();
        assert!(err.contains("reference") && err.contains("non-finite"), "{err}");
    }
}
