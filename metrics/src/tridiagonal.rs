//! Eigenvalues (no eigenvectors) of a symmetric tridiagonal matrix: implicit QL, and on two
//! threads one level of divide and conquer around it.
//!
//! QL is a serial chain of rotations (a square root and a division on each link), so it uses
//! one core: 54 ms at 2048-d, the last stage of FID's route. Divide and conquer (Cuppen 1981; the
//! scheme of LAPACK's `dstedc`) splits `T` into two halves plus a rank-one term, solves the
//! halves side by side (each a quarter of the QL work), and finds the eigenvalues of
//! `diag(lambda) + rho z z^T` as roots of the secular equation, also in parallel. `z` needs one
//! row of each half's eigenvector matrix, which QL carries along at two multiplies per rotation.

use anyhow::{bail, ensure, Result};
use faer::Par;
use pulp::Simd;
use rayon::prelude::*;

/// From this size up, and with two threads or more, one divide-and-conquer level is used.
const SPLIT_MIN_DIM: usize = 384;

/// Eigenvalues of the symmetric tridiagonal matrix with diagonal `d` and sub-diagonal `e`
/// (`e[i]` couples rows i and i+1; `e[n-1]` is ignored), left in `d`, unsorted.
pub(crate) fn tridiagonal_eigenvalues(d: &mut [f64], e: &mut [f64], par: Par) -> Result<()> {
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
    let threads = match par {
        Par::Seq => 1,
        Par::Rayon(t) => t.get(),
    };
    if threads > 1 && d.len() >= SPLIT_MIN_DIM {
        divide_and_conquer(d, e)?;
    } else {
        ql_implicit(d, e, None)?;
    }
    d.iter_mut().for_each(|v| *v /= scale);
    Ok(())
}

/// `T = diag(T1, T2) + rho v v^T` with `v = e_{k-1} + sign e_k` and `rho = |e[k-1]|`, where
/// `T1`, `T2` are `T`'s halves with `rho` taken off their touching diagonal entries. With
/// `Ti = Qi Li Qi^T`, `T` is similar to `diag(L1, L2) + rho z z^T`, `z = (Q1^T e_last, sign Q2^T e_first)`;
/// `diag(I, -I)` maps the `sign = -1` case onto `sign = 1`, so the eigenvalues do not depend on it.
fn divide_and_conquer(d: &mut [f64], e: &mut [f64]) -> Result<()> {
    let n = d.len();
    let k = n / 2;
    let coupling = e[k - 1];
    let (d1, d2) = d.split_at_mut(k);
    let (e1, e2) = e.split_at_mut(k);
    if coupling == 0.0 {
        let (r1, r2) = rayon::join(|| ql_implicit(d1, e1, None), || ql_implicit(d2, e2, None));
        return r1.and(r2);
    }
    let rho = coupling.abs();
    d1[k - 1] -= rho;
    d2[0] -= rho;
    let (mut w1, mut w2) = (vec![0.0; k], vec![0.0; n - k]);
    w1[k - 1] = 1.0;
    w2[0] = 1.0;
    let (r1, r2) = rayon::join(|| ql_implicit(d1, e1, Some(&mut w1)), || ql_implicit(d2, e2, Some(&mut w2)));
    r1?;
    r2?;
    let mut poles: Vec<(f64, f64)> = d1.iter().copied().zip(w1).chain(d2.iter().copied().zip(w2)).collect();
    // |z|^2 is 2 up to rounding (two unit rows); fold it into rho exactly as computed.
    let z_norm2: f64 = poles.iter().map(|(_, z)| z * z).sum();
    let z_norm = z_norm2.sqrt();
    poles.iter_mut().for_each(|(_, z)| *z /= z_norm);
    let values = rank_one_update_eigenvalues(poles, rho * z_norm2)?;
    d.copy_from_slice(&values);
    Ok(())
}

/// Eigenvalues of `diag(d) + rho z z^T` for `poles = [(d_j, z_j)]`, `|z| = 1`, `rho > 0`.
///
/// Poles whose `z_j` is negligible, or that nearly coincide with the next pole (a rotation then
/// moves all of their `z` weight onto it), are eigenvalues as they stand (LAPACK's `dlaed2`
/// deflation). The others interlace the eigenvalues: one root of the secular equation
/// `1/rho + sum z_j^2 / (d_j - lambda)` in each gap, the last one above the largest pole.
fn rank_one_update_eigenvalues(mut poles: Vec<(f64, f64)>, rho: f64) -> Result<Vec<f64>> {
    poles.sort_by(|a, b| a.0.total_cmp(&b.0));
    let largest = poles.iter().fold(0.0f64, |m, (d, _)| m.max(d.abs()));
    let tol = 8.0 * f64::EPSILON * largest.max(rho);
    let mut values = Vec::with_capacity(poles.len());
    let mut kept: Vec<(f64, f64)> = Vec::with_capacity(poles.len());
    for (dj, zj) in poles {
        if rho * zj.abs() <= tol {
            values.push(dj);
            continue;
        }
        if let Some(&(dp, zp)) = kept.last() {
            // Rotation in the plane of the two poles that zeroes the previous pole's weight; it
            // leaves an off-diagonal (dj - dp) c s, negligible when the poles nearly coincide.
            let tau = zp.hypot(zj);
            let (c, s) = (zj / tau, -zp / tau);
            if ((dj - dp) * c * s).abs() <= tol {
                values.push(dp * c * c + dj * s * s);
                *kept.last_mut().unwrap() = (dp * s * s + dj * c * c, tau);
                continue;
            }
        }
        kept.push((dj, zj));
    }
    let poles: Vec<f64> = kept.iter().map(|p| p.0).collect();
    let weights: Vec<f64> = kept.iter().map(|p| p.1 * p.1).collect();
    let roots: Vec<Result<f64>> =
        (0..poles.len()).into_par_iter().with_min_len(16).map(|i| secular_root(&poles, &weights, rho, i)).collect();
    for root in roots {
        values.push(root?);
    }
    Ok(values)
}

/// Root `i` of `f(lambda) = 1/rho + sum_j w_j / (d_j - lambda)` (`d` ascending, `w_j > 0`): in
/// `(d_i, d_{i+1})`, or above `d_last` for the last one.
///
/// Measured from the nearer pole (`lambda = d_origin + tau`, with `d_j - lambda` formed as
/// `(d_j - d_origin) - tau`) so that a root close to a pole keeps its relative accuracy. Each step
/// models the poles left and right of the gap by one rational term each, matching value and slope
/// at the current `tau` (Bunch, Nielsen and Sorensen 1978), and solves the model's quadratic;
/// a step that leaves the bracket is replaced by bisection.
fn secular_root(d: &[f64], w: &[f64], rho: f64, i: usize) -> Result<f64> {
    let k = d.len();
    let last = i + 1 == k;
    let inv_rho = 1.0 / rho;
    let arch = pulp::Arch::new();
    // (psi, psi', phi, phi') at `lambda = origin + tau`: psi over poles 0..=i, phi over the rest.
    let sums = |origin: f64, tau: f64| {
        let (psi, dpsi) = arch.dispatch(WeightedSums { d: &d[..=i], w: &w[..=i], origin, tau });
        let (phi, dphi) = arch.dispatch(WeightedSums { d: &d[i + 1..], w: &w[i + 1..], origin, tau });
        (psi, dpsi, phi, dphi)
    };
    let (origin_index, mut lo, mut hi, mut tau) = if last {
        let top: f64 = w.iter().sum::<f64>() * rho;
        (i, 0.0, top, 0.5 * top)
    } else {
        let half = 0.5 * (d[i + 1] - d[i]);
        let (psi, _, phi, _) = sums(d[i], half);
        if inv_rho + psi + phi >= 0.0 {
            (i, 0.0, half, half)
        } else {
            (i + 1, -half, 0.0, -half)
        }
    };
    let origin = d[origin_index];
    const MAX_STEPS: usize = 100;
    for _ in 0..MAX_STEPS {
        let (psi, dpsi, phi, dphi) = sums(origin, tau);
        let f = inv_rho + psi + phi;
        // Rounding bound on f (each term relative error a few eps).
        let noise = 8.0 * f64::EPSILON * (k as f64) * (inv_rho + psi.abs() + phi.abs());
        if f.abs() <= noise || hi - lo <= 2.0 * f64::EPSILON * lo.abs().max(hi.abs()) {
            return Ok(origin + tau);
        }
        if f < 0.0 {
            lo = tau;
        } else {
            hi = tau;
        }
        // Model: A + a / (D1 - eta) + c / (D2 - eta), with D1, D2 the distances from tau to the
        // poles bounding the gap (no right pole for the last root).
        let delta1 = (d[i] - origin) - tau;
        let a = dpsi * delta1 * delta1;
        let step = if last {
            // A + a / (D1 - eta) = 0.
            let big_a = f - dpsi * delta1;
            if big_a > 0.0 {
                delta1 + a / big_a
            } else {
                f64::NAN
            }
        } else {
            let delta2 = (d[i + 1] - origin) - tau;
            let c = dphi * delta2 * delta2;
            let big_a = f - dpsi * delta1 - dphi * delta2;
            // A eta^2 - B eta + C = 0 with C = D1 D2 f.
            let b = big_a * (delta1 + delta2) + a + c;
            let cc = delta1 * delta2 * f;
            let disc = (b * b - 4.0 * big_a * cc).max(0.0).sqrt();
            // The root between the poles, in its cancellation-free form.
            if b >= 0.0 {
                2.0 * cc / (b + disc)
            } else {
                (b - disc) / (2.0 * big_a)
            }
        };
        let next = tau + step;
        tau = if next.is_finite() && next > lo && next < hi { next } else { 0.5 * (lo + hi) };
    }
    bail!("secular equation: root {i} of {k} did not converge in {MAX_STEPS} steps")
}

/// `(sum w_j / (d_j - origin - tau), sum w_j / (d_j - origin - tau)^2)`.
struct WeightedSums<'a> {
    d: &'a [f64],
    w: &'a [f64],
    origin: f64,
    tau: f64,
}

impl pulp::WithSimd for WeightedSums<'_> {
    type Output = (f64, f64);

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) -> (f64, f64) {
        let Self { d, w, origin, tau } = self;
        let (dv, dt) = S::as_simd_f64s(d);
        let (wv, wt) = S::as_simd_f64s(w);
        let (o, t, one) = (simd.splat_f64s(origin), simd.splat_f64s(tau), simd.splat_f64s(1.0));
        let (mut s0, mut s1) = (simd.splat_f64s(0.0), simd.splat_f64s(0.0));
        for (&dj, &wj) in dv.iter().zip(wv) {
            let r = simd.div_f64s(one, simd.sub_f64s(simd.sub_f64s(dj, o), t));
            let term = simd.mul_f64s(wj, r);
            s0 = simd.add_f64s(s0, term);
            s1 = simd.mul_add_f64s(term, r, s1);
        }
        let (mut sum, mut slope) = (simd.reduce_sum_f64s(s0), simd.reduce_sum_f64s(s1));
        for (&dj, &wj) in dt.iter().zip(wt) {
            let r = 1.0 / ((dj - origin) - tau);
            sum += wj * r;
            slope += wj * r * r;
        }
        (sum, slope)
    }
}

/// Implicit QL with Wilkinson shifts, eigenvalues only: O(n^2). With `row`, the row of the
/// eigenvector matrix it starts as (a unit vector: a row of the identity) is carried through
/// the rotations, so that on return `row[j]` belongs to eigenvalue `d[j]`.
fn ql_implicit(d: &mut [f64], e: &mut [f64], mut row: Option<&mut [f64]>) -> Result<()> {
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
                if let Some(row) = row.as_deref_mut() {
                    // Off the critical path: the out-of-order core overlaps it with the chain.
                    let (zi, zi1) = (row[i], row[i + 1]);
                    row[i + 1] = s * zi + c * zi1;
                    row[i] = c * zi - s * zi1;
                }
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
    use rand::{Rng, SeedableRng};

    /// Reference: faer's dense symmetric solver on the same tridiagonal matrix.
    fn dense_eigenvalues(d: &[f64], e: &[f64]) -> Vec<f64> {
        let n = d.len();
        let a = faer::Mat::<f64>::from_fn(n, n, |i, j| {
            if i == j {
                d[i]
            } else if i == j + 1 {
                e[j]
            } else if j == i + 1 {
                e[i]
            } else {
                0.0
            }
        });
        let mut v = a.self_adjoint_eigenvalues(faer::Side::Lower).unwrap();
        v.sort_by(f64::total_cmp);
        v
    }

    fn check(d: &[f64], e: &[f64], what: &str) {
        let expected = dense_eigenvalues(d, e);
        let scale = expected.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(f64::MIN_POSITIVE);
        for par in [Par::Seq, Par::rayon(2)] {
            let (mut got, mut e2) = (d.to_vec(), e.to_vec());
            tridiagonal_eigenvalues(&mut got, &mut e2, par).unwrap();
            got.sort_by(f64::total_cmp);
            // Backward-stable solvers: every eigenvalue within a few ulps of ||T||.
            let worst = got.iter().zip(&expected).map(|(g, x)| (g - x).abs()).fold(0.0, f64::max);
            assert!(worst <= 1e-13 * scale, "{what}, {par:?}: worst error {worst:e} (scale {scale:e})");
        }
    }

    #[test]
    fn divide_and_conquer_matches_a_dense_solver() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for n in [384, 385, 600, 1001] {
            let d: Vec<f64> = (0..n).map(|_| rng.random::<f64>() - 0.5).collect();
            let e: Vec<f64> = (0..n).map(|_| rng.random::<f64>() - 0.5).collect();
            check(&d, &e, &format!("random n = {n}"));
        }
    }

    #[test]
    fn divide_and_conquer_deflates_clusters_and_zero_couplings() {
        let n = 500;
        // The (1, 2, 1) Laplacian: closely spaced eigenvalues, every coupling equal.
        check(&vec![2.0; n], &vec![-1.0; n], "laplacian");
        // Repeated diagonal with tiny couplings: heavy deflation of equal poles.
        let d: Vec<f64> = (0..n).map(|i| (i % 4) as f64).collect();
        check(&d, &vec![1e-13; n], "repeated poles");
        // Split exactly at the middle (zero coupling) and a graded matrix spanning 1e-12..1.
        let mut e: Vec<f64> = (0..n).map(|i| 0.3 / (1.0 + i as f64)).collect();
        e[n / 2 - 1] = 0.0;
        let d: Vec<f64> = (0..n).map(|i| 10f64.powf(-12.0 * i as f64 / n as f64)).collect();
        check(&d, &e, "graded, split in the middle");
        // A PSD matrix of rank n/4 (like a congruence from a rank-deficient covariance): many
        // eigenvalues at zero.
        let b: Vec<f64> = (0..n).map(|i| if i % 4 == 0 { 1.0 + i as f64 / n as f64 } else { 0.0 }).collect();
        // T = B B^T for the lower bidiagonal B with diagonal b and sub-diagonal b too.
        let d: Vec<f64> = (0..n).map(|i| b[i] * b[i] + if i > 0 { b[i - 1] * b[i - 1] } else { 0.0 }).collect();
        let e: Vec<f64> = (0..n).map(|i| if i + 1 < n { b[i] * b[i] } else { 0.0 }).collect();
        check(&d, &e, "rank-deficient PSD");
    }

    #[test]
    fn non_finite_entries_are_an_error() {
        let (mut d, mut e) = (vec![1.0, f64::NAN, 2.0], vec![0.5, 0.5, 0.0]);
        assert!(tridiagonal_eigenvalues(&mut d, &mut e, Par::Seq).is_err());
    }
}
