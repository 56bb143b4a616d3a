//! Kernel Inception Distance: unbiased MMD^2 with the cubic polynomial kernel
//! `k(x, y) = (x.y / d + 1)^3`, averaged over random subsets (torch-fidelity / StyleGAN
//! definition; not part of ADM). Dot products come from an f64 GEMM and all sums are f64.
//!
//! Subsets are drawn as torch-fidelity and clean-fid draw them: one numpy
//! `RandomState(seed)` for the whole loop, per subset first the sample rows, then the reference
//! rows, each `choice(n, m, replace=False)` = the first `m` entries of `permutation(n)`
//! ([`Mt19937`]). The two tools differ only in the subset size: torch-fidelity refuses fewer rows
//! than `subset_size`, clean-fid (and StyleGAN) shrink it to `min(n_x, n_y, subset_size)`.
//! clean-fid draws from the global numpy generator, so its value equals ours after
//! `np.random.seed(seed)`. Both tools compute the kernels in float32; ours are float64, so a
//! float32 run of theirs differs from ours by its own rounding (measured in the fixture README).

use anyhow::{bail, ensure, Result};
use faer::linalg::matmul::triangular::{matmul as tri_matmul, BlockStructure};
use faer::{Accum, Mat};

use crate::numeric::{default_par, gemm_abt_f64};
use crate::numpy_rng::Mt19937;

/// torch-fidelity's `rng_seed` default.
pub const TORCH_FIDELITY_KID_SEED: u64 = 2020;

/// How many rows a subset takes when a set is smaller than `subset_size`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KidSubsetRule {
    /// clean-fid / StyleGAN: `m = min(n_x, n_y, subset_size)`.
    #[default]
    Shrink,
    /// torch-fidelity: exactly `subset_size`; a smaller set is an error.
    Exact,
}

/// Subset settings: torch-fidelity's defaults are 100 subsets of 1000 with seed 2020.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct KidConfig {
    pub subsets: usize,
    pub subset_size: usize,
    /// Seed of numpy's `RandomState` (0 ..= 2^32 - 1, as numpy accepts).
    pub seed: u64,
    pub rule: KidSubsetRule,
}

impl Default for KidConfig {
    fn default() -> Self {
        Self { subsets: 100, subset_size: 1000, seed: TORCH_FIDELITY_KID_SEED, rule: KidSubsetRule::Shrink }
    }
}

/// Mean and population std of MMD^2 over the subsets.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct KidResult {
    pub mean: f64,
    pub std: f64,
    /// Rows per subset actually used.
    pub subset_size: usize,
    pub subsets: usize,
}

/// KID between feature sets `x` and `y` (row-major, `d` columns).
pub fn kernel_inception_distance(x: &[f32], y: &[f32], d: usize, cfg: &KidConfig) -> Result<KidResult> {
    let (nx, ny) = (rows_of(x, d, "samples")?, rows_of(y, d, "reference")?);
    ensure!(cfg.subsets >= 1, "KID needs at least one subset");
    let seed = u32::try_from(cfg.seed)
        .map_err(|_| anyhow::anyhow!("KID seed {} is outside numpy's RandomState range 0..=4294967295", cfg.seed))?;
    let m = match cfg.rule {
        KidSubsetRule::Shrink => nx.min(ny).min(cfg.subset_size),
        KidSubsetRule::Exact => {
            ensure!(
                nx >= cfg.subset_size && ny >= cfg.subset_size,
                "KID subset size {} is larger than the number of rows (samples: {nx}, reference: {ny}), which \
                 torch-fidelity refuses; give at least {} images on each side or a smaller subset size",
                cfg.subset_size,
                cfg.subset_size
            );
            cfg.subset_size
        }
    };
    ensure!(m >= 2, "KID needs at least 2 rows per subset, got {m}");
    let mut rng = Mt19937::new(seed);
    let mut values = Vec::with_capacity(cfg.subsets);
    for _ in 0..cfg.subsets {
        // np.random.RandomState.choice(n, m, replace=False) = permutation(n)[:m].
        let xs = gather_rows(x, d, &rng.permutation(nx)[..m]);
        let ys = gather_rows(y, d, &rng.permutation(ny)[..m]);
        values.push(mmd2_unbiased(&xs, m, &ys, m, d));
    }
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    let std = (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / values.len() as f64).sqrt();
    Ok(KidResult { mean, std, subset_size: m, subsets: cfg.subsets })
}

/// Unbiased MMD^2 of two whole sets (sizes may differ):
/// `sum_{i!=j} k(x_i,x_j) / (n(n-1)) + sum_{i!=j} k(y_i,y_j) / (m(m-1)) - 2 sum k(x_i,y_j) / (nm)`.
pub fn mmd2_unbiased_f32(x: &[f32], y: &[f32], d: usize) -> Result<f64> {
    let (nx, ny) = (rows_of(x, d, "first set")?, rows_of(y, d, "second set")?);
    ensure!(nx >= 2 && ny >= 2, "unbiased MMD^2 needs at least 2 rows per set");
    Ok(mmd2_unbiased(&to_f64(x), nx, &to_f64(y), ny, d))
}

fn mmd2_unbiased(x: &[f64], nx: usize, y: &[f64], ny: usize, d: usize) -> f64 {
    let kxx = self_kernel_sum_off_diagonal(x, nx, d);
    let kyy = self_kernel_sum_off_diagonal(y, ny, d);
    let mut gram = vec![0f64; nx * ny];
    gemm_abt_f64(&mut gram, x, nx, y, ny, d, default_par());
    let kxy: f64 = gram.iter().map(|&g| poly_kernel(g, d)).sum();
    let (nxf, nyf) = (nx as f64, ny as f64);
    kxx / (nxf * (nxf - 1.0)) + kyy / (nyf * (nyf - 1.0)) - 2.0 * kxy / (nxf * nyf)
}

#[inline]
fn poly_kernel(dot: f64, d: usize) -> f64 {
    (dot / d as f64 + 1.0).powi(3)
}

/// `sum_{i != j} k(x_i, x_j)` from the strict lower triangle of the Gram matrix (doubled).
fn self_kernel_sum_off_diagonal(x: &[f64], n: usize, d: usize) -> f64 {
    let rows = Mat::from_fn(n, d, |i, j| x[i * d + j]);
    let mut gram = Mat::<f64>::zeros(n, n);
    tri_matmul(
        gram.as_mut(),
        BlockStructure::StrictTriangularLower,
        Accum::Replace,
        rows.as_ref(),
        BlockStructure::Rectangular,
        rows.transpose(),
        BlockStructure::Rectangular,
        1.0,
        default_par(),
    );
    let mut total = 0.0;
    for j in 0..n {
        for i in j + 1..n {
            total += poly_kernel(gram[(i, j)], d);
        }
    }
    2.0 * total
}

fn rows_of(x: &[f32], d: usize, what: &str) -> Result<usize> {
    ensure!(d > 0 && x.len().is_multiple_of(d), "KID {what}: buffer is not a whole number of {d}-dim rows");
    if let Some(i) = x.iter().position(|v| !v.is_finite()) {
        bail!("KID {what}: feature row {} contains a non-finite value", i / d);
    }
    Ok(x.len() / d)
}

fn to_f64(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

fn gather_rows(x: &[f32], d: usize, rows: &[usize]) -> Vec<f64> {
    rows.iter().flat_map(|&r| x[r * d..(r + 1) * d].iter().map(|&v| v as f64)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random(n: usize, d: usize, shift: f32, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n * d).map(|_| rng.random::<f32>() + shift).collect()
    }

    /// Direct double loop over all pairs.
    fn naive_mmd2(x: &[f32], y: &[f32], d: usize) -> f64 {
        let k = |a: &[f32], b: &[f32]| poly_kernel(a.iter().zip(b).map(|(p, q)| *p as f64 * *q as f64).sum(), d);
        let (xs, ys): (Vec<&[f32]>, Vec<&[f32]>) = (x.chunks(d).collect(), y.chunks(d).collect());
        let off_diag = |s: &[&[f32]]| {
            let mut t = 0.0;
            for i in 0..s.len() {
                for j in 0..s.len() {
                    if i != j {
                        t += k(s[i], s[j]);
                    }
                }
            }
            t / (s.len() * (s.len() - 1)) as f64
        };
        let cross: f64 = xs.iter().flat_map(|a| ys.iter().map(move |b| k(a, b))).sum();
        off_diag(&xs) + off_diag(&ys) - 2.0 * cross / (xs.len() * ys.len()) as f64
    }

    #[test]
    fn mmd_matches_naive_double_loop() {
        let d = 5;
        let (x, y) = (random(40, d, 0.0, 1), random(31, d, 0.3, 2));
        let fast = mmd2_unbiased_f32(&x, &y, d).unwrap();
        let naive = naive_mmd2(&x, &y, d);
        assert!((fast - naive).abs() < 1e-12 * naive.abs().max(1.0), "{fast} {naive}");
        assert!(fast > 0.0);
    }

    #[test]
    fn same_distribution_is_near_zero_and_seed_reproducible() {
        let d = 4;
        let (x, y) = (random(600, d, 0.0, 3), random(500, d, 0.0, 4));
        let cfg = KidConfig { subsets: 20, subset_size: 100, seed: 7, rule: KidSubsetRule::Exact };
        let a = kernel_inception_distance(&x, &y, d, &cfg).unwrap();
        let b = kernel_inception_distance(&x, &y, d, &cfg).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.subset_size, 100);
        assert!(a.mean.abs() < 3.0 * a.std / (20f64).sqrt() + 1e-3, "{a:?}");
        let shifted = kernel_inception_distance(&x, &random(500, d, 0.5, 5), d, &cfg).unwrap();
        assert!(shifted.mean > 10.0 * a.mean.abs(), "{shifted:?} vs {a:?}");
        let other_seed = kernel_inception_distance(&x, &y, d, &KidConfig { seed: 8, ..cfg }).unwrap();
        assert_ne!(a.mean, other_seed.mean);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let cfg = KidConfig::default();
        assert!(kernel_inception_distance(&[0.0; 3], &[0.0; 4], 2, &cfg).is_err());
        assert!(kernel_inception_distance(&[0.0; 2], &[0.0; 4], 2, &cfg).is_err());
        assert!(kernel_inception_distance(&[0.0, f32::INFINITY, 1.0, 1.0], &[0.0; 4], 2, &cfg).is_err());
        // torch-fidelity's rule refuses sets smaller than the subset size; the shrink rule uses them.
        let (x, y) = (random(30, 2, 0.0, 1), random(40, 2, 0.0, 2));
        let exact = KidConfig { subset_size: 35, rule: KidSubsetRule::Exact, ..cfg };
        let err = kernel_inception_distance(&x, &y, 2, &exact).unwrap_err().to_string();
        assert!(err.contains("subset size 35") && err.contains("samples: 30"), "{err}");
        let shrunk = kernel_inception_distance(&x, &y, 2, &KidConfig { rule: KidSubsetRule::Shrink, ..exact }).unwrap();
        assert_eq!(shrunk.subset_size, 30);
        assert!(kernel_inception_distance(&x, &y, 2, &KidConfig { seed: 1 << 32, ..cfg }).is_err());
    }
}
