//! Feature statistics (mean and covariance) with ADM / `np.cov` semantics.
//!
//! * Covariance: float64, centred by the float64 mean, divided by N-1 (`np.cov(rowvar=False)`).
//! * Mean: float64 here. ADM's `np.mean` accumulates the float32 rows sequentially in float32;
//!   we keep the exact f64 mean because it is the better estimate and the difference is far below
//!   FID's reporting precision: on the fixture's real pool3 split it moves FID by less than 1e-4
//!   (measured by `golden_metrics::fid_f32_mean_effect_is_negligible`, which prints the value).
//!   [`adm_f32_mean`] reproduces numpy's float32 mean when bit-parity of `mu` is wanted.
//!
//! [`StatsAccumulator`] streams rows in blocks: each block is centred on its own f64 mean and its
//! co-moment `Xc^T Xc` comes from one GEMM (lower triangle only); blocks and shards combine with
//! Chan et al.'s pairwise update, so sharded runs merge to the one-pass result within rounding.

use anyhow::{bail, ensure, Result};
use faer::linalg::matmul::triangular::{matmul as tri_matmul, BlockStructure};
use faer::{Accum, Mat};

use crate::numeric::{default_par, row_major};

/// Mean and covariance of a feature set. `sigma` is `d*d`, row-major, symmetric.
#[derive(Clone, Debug, PartialEq)]
pub struct FeatureStats {
    /// Number of feature rows behind the statistics; 0 when unknown (read from a file that
    /// does not record it, e.g. an ADM reference batch).
    pub n: usize,
    pub mu: Vec<f64>,
    pub sigma: Vec<f64>,
}

impl FeatureStats {
    /// Statistics of `features` (row-major `[n, d]`) in one pass.
    pub fn from_features(features: &[f32], d: usize) -> Result<Self> {
        let mut acc = StatsAccumulator::new(d);
        acc.push_batch(features, d)?;
        acc.finish()
    }

    /// Feature dimension.
    pub fn dim(&self) -> usize {
        self.mu.len()
    }

    /// Checks the shapes agree and every value is finite; `what` names the source in errors.
    pub fn validate(&self, what: &str) -> Result<()> {
        let d = self.dim();
        ensure!(d > 0, "{what}: empty mean vector");
        ensure!(self.sigma.len() == d * d, "{what}: covariance has {} entries, expected {d}x{d} to match the mean", self.sigma.len());
        if let Some(i) = self.mu.iter().position(|v| !v.is_finite()) {
            bail!("{what}: mean contains a non-finite value ({}) at index {i}", self.mu[i]);
        }
        // The vectorised check first; the position only for the error message.
        if !crate::numeric::all_finite(&self.sigma) {
            let i = self.sigma.iter().position(|v| !v.is_finite()).unwrap_or(0);
            bail!("{what}: covariance contains a non-finite value ({}) at [{}, {}]", self.sigma[i], i / d, i % d);
        }
        Ok(())
    }

    /// Sum of the covariance diagonal.
    pub fn trace(&self) -> f64 {
        let d = self.dim();
        (0..d).map(|i| self.sigma[i * d + i]).sum()
    }
}

/// numpy's `np.mean(acts, axis=0)` on float32 activations: rows added sequentially in float32,
/// then divided by N in float32 (what ADM stores as `mu`).
pub fn adm_f32_mean(features: &[f32], d: usize) -> Vec<f32> {
    let n = features.len() / d;
    let mut sum = vec![0f32; d];
    for row in features.chunks_exact(d) {
        for (s, &v) in sum.iter_mut().zip(row) {
            *s += v;
        }
    }
    sum.iter().map(|&s| s / n as f32).collect()
}

/// Rows gathered before one GEMM update: large enough for GEMM efficiency, small enough that
/// callers feeding small extraction batches do not pay a d*d merge per batch.
const FLUSH_ROWS: usize = 2048;

/// Streaming, mergeable mean/covariance accumulator (f64).
#[derive(Clone, Debug)]
pub struct StatsAccumulator {
    d: usize,
    n: usize,
    mean: Vec<f64>,
    /// Sum of outer products of centred rows; only the lower triangle is maintained.
    comoment: Mat<f64>,
    pending: Vec<f32>,
}

impl StatsAccumulator {
    pub fn new(d: usize) -> Self {
        Self { d, n: 0, mean: vec![0.0; d], comoment: Mat::zeros(d, d), pending: Vec::new() }
    }

    /// Feature dimension.
    pub fn dim(&self) -> usize {
        self.d
    }

    /// Rows seen so far (including buffered ones).
    pub fn count(&self) -> usize {
        self.n + self.pending.len() / self.d.max(1)
    }

    /// Adds row-major `[rows, d]` features.
    pub fn push_batch(&mut self, features: &[f32], d: usize) -> Result<()> {
        ensure!(d == self.d, "feature dimension {d} does not match the accumulator's {}", self.d);
        ensure!(
            d > 0 && features.len().is_multiple_of(d),
            "feature buffer of {} values is not a whole number of {d}-dim rows",
            features.len()
        );
        if let Some(i) = features.iter().position(|v| !v.is_finite()) {
            bail!("feature row {} contains a non-finite value ({})", self.count() + i / d, features[i]);
        }
        self.pending.extend_from_slice(features);
        if self.pending.len() >= FLUSH_ROWS * d {
            self.flush();
        }
        Ok(())
    }

    /// Combines another accumulator (e.g. another shard) into this one.
    pub fn merge(&mut self, mut other: StatsAccumulator) -> Result<()> {
        ensure!(other.d == self.d, "cannot merge {}-dim statistics into {}-dim", other.d, self.d);
        self.flush();
        other.flush();
        self.combine(other.n, &other.mean, Some(&other.comoment));
        Ok(())
    }

    /// Mean and covariance (N-1 normalisation). Needs at least 2 rows.
    pub fn finish(mut self) -> Result<FeatureStats> {
        self.flush();
        ensure!(self.n >= 2, "need at least 2 feature rows for a covariance, got {}", self.n);
        let d = self.d;
        let scale = 1.0 / (self.n - 1) as f64;
        let mut sigma = vec![0.0; d * d];
        for j in 0..d {
            for i in j..d {
                let v = self.comoment[(i, j)] * scale;
                sigma[i * d + j] = v;
                sigma[j * d + i] = v;
            }
        }
        Ok(FeatureStats { n: self.n, mu: self.mean, sigma })
    }

    /// Folds the buffered rows in as one block.
    fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let d = self.d;
        let rows = self.pending.len() / d;
        let block_mean = column_means(&self.pending, d);
        let centred: Vec<f64> =
            self.pending.chunks_exact(d).flat_map(|row| row.iter().zip(&block_mean).map(|(&v, &m)| v as f64 - m)).collect();
        self.pending.clear();
        let mut block_comoment = Mat::<f64>::zeros(d, d);
        let x = row_major(&centred, rows, d);
        tri_matmul(
            block_comoment.as_mut(),
            BlockStructure::TriangularLower,
            Accum::Replace,
            x.transpose(),
            BlockStructure::Rectangular,
            x,
            BlockStructure::Rectangular,
            1.0,
            default_par(),
        );
        self.combine(rows, &block_mean, Some(&block_comoment));
    }

    /// Chan et al.: M = Ma + Mb + delta delta^T * na nb / n, mean = ma + delta nb / n.
    fn combine(&mut self, other_n: usize, other_mean: &[f64], other_comoment: Option<&Mat<f64>>) {
        if other_n == 0 {
            return;
        }
        let d = self.d;
        let (na, nb) = (self.n as f64, other_n as f64);
        let n = na + nb;
        let delta: Vec<f64> = other_mean.iter().zip(&self.mean).map(|(b, a)| b - a).collect();
        let weight = na * nb / n;
        if let Some(mb) = other_comoment {
            for j in 0..d {
                let dj = delta[j] * weight;
                for i in j..d {
                    self.comoment[(i, j)] += mb[(i, j)] + delta[i] * dj;
                }
            }
        }
        for (m, dl) in self.mean.iter_mut().zip(&delta) {
            *m += dl * nb / n;
        }
        self.n += other_n;
    }
}

/// Per-column f64 means of row-major `[rows, d]` data.
fn column_means(data: &[f32], d: usize) -> Vec<f64> {
    let rows = data.len() / d;
    let mut sum = vec![0f64; d];
    for row in data.chunks_exact(d) {
        for (s, &v) in sum.iter_mut().zip(row) {
            *s += v as f64;
        }
    }
    sum.iter().map(|s| s / rows as f64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random_features(n: usize, d: usize, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        // Non-zero mean and unequal scales, like post-ReLU pool3 features.
        (0..n * d).map(|i| rng.random::<f32>() * (1 + i % d) as f32 + 3.0).collect()
    }

    /// Two-pass textbook statistics in f64 (np.mean / np.cov on f64-promoted data).
    fn naive_stats(x: &[f32], d: usize) -> (Vec<f64>, Vec<f64>) {
        let n = x.len() / d;
        let mut mu = vec![0f64; d];
        for row in x.chunks_exact(d) {
            for j in 0..d {
                mu[j] += row[j] as f64;
            }
        }
        mu.iter_mut().for_each(|m| *m /= n as f64);
        let mut sigma = vec![0f64; d * d];
        for row in x.chunks_exact(d) {
            for i in 0..d {
                for j in 0..d {
                    sigma[i * d + j] += (row[i] as f64 - mu[i]) * (row[j] as f64 - mu[j]);
                }
            }
        }
        sigma.iter_mut().for_each(|s| *s /= (n - 1) as f64);
        (mu, sigma)
    }

    fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
    }

    #[test]
    fn one_pass_matches_two_pass_reference() {
        let d = 13;
        let x = random_features(5000, d, 1);
        let stats = FeatureStats::from_features(&x, d).unwrap();
        let (mu, sigma) = naive_stats(&x, d);
        assert_eq!(stats.n, 5000);
        // Both are f64 computations of the same quantities; only summation order differs.
        assert!(max_abs_diff(&stats.mu, &mu) < 1e-12);
        assert!(max_abs_diff(&stats.sigma, &sigma) < 1e-11);
    }

    #[test]
    fn merged_shards_equal_one_pass() {
        let d = 17;
        let n = 7000;
        let x = random_features(n, d, 2);
        let one_pass = FeatureStats::from_features(&x, d).unwrap();
        // Uneven shards, each fed in uneven batches (exercises both buffering and merging).
        let cuts = [0, 1, 3, 2500, 2501, 6999, 7000];
        let mut merged = StatsAccumulator::new(d);
        for w in cuts.windows(2) {
            let mut shard = StatsAccumulator::new(d);
            for batch in x[w[0] * d..w[1] * d].chunks(37 * d) {
                shard.push_batch(batch, d).unwrap();
            }
            merged.merge(shard).unwrap();
        }
        let merged = merged.finish().unwrap();
        assert_eq!(merged.n, n);
        assert!(max_abs_diff(&merged.mu, &one_pass.mu) < 1e-12);
        assert!(max_abs_diff(&merged.sigma, &one_pass.sigma) < 1e-12);
    }

    #[test]
    fn covariance_is_symmetric_and_unbiased() {
        // Two rows: var = (a-b)^2 / 2 with the N-1 normalisation.
        let stats = FeatureStats::from_features(&[1.0, 5.0, 3.0, 1.0], 2).unwrap();
        assert_eq!(stats.mu, vec![2.0, 3.0]);
        assert_eq!(stats.sigma, vec![2.0, -4.0, -4.0, 8.0]);
    }

    #[test]
    fn fewer_than_two_rows_is_an_error() {
        let err = FeatureStats::from_features(&[1.0, 2.0], 2).unwrap_err();
        assert!(err.to_string().contains("at least 2"), "{err}");
        let err = StatsAccumulator::new(3).finish().unwrap_err();
        assert!(err.to_string().contains("got 0"), "{err}");
    }

    #[test]
    fn bad_batches_are_rejected() {
        let mut acc = StatsAccumulator::new(3);
        assert!(acc.push_batch(&[1.0, 2.0], 3).is_err());
        assert!(acc.push_batch(&[1.0, 2.0, 3.0], 4).is_err());
        let err = acc.push_batch(&[1.0, f32::NAN, 3.0], 3).unwrap_err();
        assert!(err.to_string().contains("non-finite"), "{err}");
        assert!(acc.merge(StatsAccumulator::new(2)).is_err());
    }

    #[test]
    fn validate_names_the_bad_entry() {
        let mut s = FeatureStats { n: 3, mu: vec![0.0, 1.0], sigma: vec![1.0, 0.0, 0.0, 1.0] };
        s.validate("x").unwrap();
        s.sigma[2] = f64::INFINITY;
        let err = s.validate("ref.npz sigma").unwrap_err().to_string();
        assert!(err.contains("ref.npz sigma") && err.contains("[1, 0]"), "{err}");
        s.sigma.pop();
        assert!(s.validate("x").is_err());
    }

    #[test]
    fn adm_mean_is_float32_sequential() {
        let x = vec![1.0f32, 1e8, 1e-8, -1e8];
        // Sequential f32: (1 + 1e-8) rounds to 1, (1e8 + -1e8) = 0.
        assert_eq!(adm_f32_mean(&x, 2), vec![0.5, 0.0]);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let y: Vec<f32> = (0..300).map(|_| rng.random::<f32>()).collect();
        let exact = FeatureStats::from_features(&y, 3).unwrap();
        for (a, b) in adm_f32_mean(&y, 3).iter().zip(&exact.mu) {
            assert!((*a as f64 - b).abs() < 1e-5);
        }
    }
}
