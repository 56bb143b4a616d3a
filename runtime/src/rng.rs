//! Randomness. Every sampler takes its random draws from a [`RandomSource`] passed in as an
//! argument: a [`SeededSource`] in normal use (reproducible from a u64 seed), or a
//! [`ReplaySource`] that hands back the draws a reference implementation recorded, so parity
//! tests can follow the exact same path through a stochastic sampler.

use anyhow::{bail, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use std::collections::VecDeque;

pub trait RandomSource {
    /// Standard normal draws, `numel` values in C order.
    fn normal(&mut self, numel: usize) -> Result<Vec<f32>>;
    /// Uniform [0, 1) draws.
    fn uniform(&mut self, numel: usize) -> Result<Vec<f32>>;
    /// Standard Gumbel(0, 1) draws.
    fn gumbel(&mut self, numel: usize) -> Result<Vec<f32>>;
    /// A uniformly random permutation of 0..n.
    fn permutation(&mut self, n: usize) -> Result<Vec<usize>>;
    /// One index per row of `probs` (row-major, `cols` entries per row, rows need not be
    /// normalised but must be non-negative with a positive sum).
    fn categorical(&mut self, probs: &[f32], cols: usize) -> Result<Vec<u32>>;
    /// Beta(alpha, beta) draws (e.g. AutoNAT's training mask ratio). The default builds them
    /// from this source's own normal and uniform draws (Marsaglia-Tsang gamma variates,
    /// X / (X + Y)), so every source can provide them; sources override it when they have a
    /// faster sampler or a recording.
    fn beta(&mut self, numel: usize, alpha: f64, beta: f64) -> Result<Vec<f32>> {
        if !(alpha > 0.0 && beta > 0.0 && alpha.is_finite() && beta.is_finite()) {
            bail!("beta: parameters must be positive and finite, got ({alpha}, {beta})");
        }
        let mut out = Vec::with_capacity(numel);
        for _ in 0..numel {
            let x = gamma_from_source(self, alpha)?;
            let y = gamma_from_source(self, beta)?;
            out.push((x / (x + y)) as f32);
        }
        Ok(out)
    }
}

/// One Gamma(shape, 1) variate by Marsaglia and Tsang's method, from `src`'s normal and uniform
/// draws; shapes below 1 use the boost `G(a) = G(a + 1) * U^(1/a)`.
fn gamma_from_source<S: RandomSource + ?Sized>(src: &mut S, shape: f64) -> Result<f64> {
    if shape < 1.0 {
        let g = gamma_from_source(src, shape + 1.0)?;
        let u = (src.uniform(1)?[0] as f64).max(f64::MIN_POSITIVE);
        return Ok(g * u.powf(1.0 / shape));
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let x = src.normal(1)?[0] as f64;
        let v = 1.0 + c * x;
        if v <= 0.0 {
            continue;
        }
        let v = v * v * v;
        let u = (src.uniform(1)?[0] as f64).max(f64::MIN_POSITIVE);
        if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
            return Ok(d * v);
        }
    }
}

/// Seeded source: ChaCha8, so the same seed gives the same images on every platform.
pub struct SeededSource {
    rng: ChaCha8Rng,
}

impl SeededSource {
    pub fn new(seed: u64) -> Self {
        Self { rng: ChaCha8Rng::seed_from_u64(seed) }
    }
    /// An independent stream for (seed, index), e.g. one per shard of a long run, so a resumed
    /// run draws exactly what the uninterrupted one would have.
    pub fn for_stream(seed: u64, stream: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(stream);
        Self { rng }
    }
    pub fn next_u64(&mut self) -> u64 {
        self.rng.random()
    }
}

impl RandomSource for SeededSource {
    fn normal(&mut self, numel: usize) -> Result<Vec<f32>> {
        Ok((0..numel).map(|_| StandardNormal.sample(&mut self.rng)).collect())
    }
    fn uniform(&mut self, numel: usize) -> Result<Vec<f32>> {
        Ok((0..numel).map(|_| self.rng.random::<f32>()).collect())
    }
    fn gumbel(&mut self, numel: usize) -> Result<Vec<f32>> {
        // -log(-log u) with u in (0, 1): shift away from 0 so the logs stay finite.
        Ok((0..numel)
            .map(|_| {
                let u: f64 = self.rng.random::<f64>().max(f64::MIN_POSITIVE);
                (-(-u.ln()).ln()) as f32
            })
            .collect())
    }
    fn permutation(&mut self, n: usize) -> Result<Vec<usize>> {
        let mut p: Vec<usize> = (0..n).collect();
        // Fisher-Yates.
        for i in (1..n).rev() {
            let j = self.rng.random_range(0..=i);
            p.swap(i, j);
        }
        Ok(p)
    }
    fn categorical(&mut self, probs: &[f32], cols: usize) -> Result<Vec<u32>> {
        sample_rows(probs, cols, || self.rng.random::<f64>())
    }
    fn beta(&mut self, numel: usize, alpha: f64, beta: f64) -> Result<Vec<f32>> {
        let dist = rand_distr::Beta::new(alpha, beta).map_err(|e| anyhow::anyhow!("beta: invalid parameters ({alpha}, {beta}): {e}"))?;
        Ok((0..numel).map(|_| dist.sample(&mut self.rng) as f32).collect())
    }
}

/// Inverse-CDF sampling per row, accumulated in f64: the index of the first cumulative sum
/// strictly above `u * total`. This is also how `torch.multinomial(probs, 1, True)` is
/// replayed from recorded uniforms (`k = #{j : cumsum[j] <= u * cumsum[-1]}`).
fn sample_rows(probs: &[f32], cols: usize, mut u: impl FnMut() -> f64) -> Result<Vec<u32>> {
    if cols == 0 || !probs.len().is_multiple_of(cols) {
        bail!("categorical: {} probabilities do not split into rows of {cols}", probs.len());
    }
    probs
        .chunks(cols)
        .enumerate()
        .map(|(r, row)| {
            let total: f64 = row.iter().map(|&p| p as f64).sum();
            if total.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) || !total.is_finite() || row.iter().any(|&p| p < 0.0) {
                bail!("categorical: row {r} has no valid probability mass (sum {total})");
            }
            let target = u() * total;
            let mut acc = 0.0;
            let mut last_nonzero = 0;
            for (i, &p) in row.iter().enumerate() {
                if p > 0.0 {
                    last_nonzero = i;
                }
                acc += p as f64;
                if acc > target && p > 0.0 {
                    return Ok(i as u32);
                }
            }
            Ok(last_nonzero as u32)
        })
        .collect()
}

/// Hands back recorded draws in the order they were recorded. Each kind of draw is its own
/// queue; asking for more than was recorded, or for a different amount than the next recorded
/// call, is an error (it means the port consumes randomness differently from the reference).
#[derive(Default)]
pub struct ReplaySource {
    pub normals: VecDeque<f32>,
    pub uniforms: VecDeque<f32>,
    pub gumbels: VecDeque<f32>,
    pub permutations: VecDeque<Vec<usize>>,
    pub categoricals: VecDeque<u32>,
    /// Uniforms for categorical draws made by inverse CDF (one per row), used when
    /// `categoricals` is empty: a reference that recorded the uniforms behind its multinomial
    /// draws rather than the drawn indices is replayed through the port's own probabilities.
    pub categorical_uniforms: VecDeque<f32>,
    pub betas: VecDeque<f32>,
    /// When set, the size of every `normal` call, in order: a call of another size (or one
    /// more call than recorded) is an error naming the call, so a port that draws the same
    /// total in differently shaped pieces is caught at the first wrong call.
    pub normal_call_sizes: Option<VecDeque<usize>>,
    normal_calls_made: usize,
}

fn take<T: Copy>(q: &mut VecDeque<T>, n: usize, what: &str) -> Result<Vec<T>> {
    if q.len() < n {
        bail!("replay: asked for {n} {what} draws but only {} remain in the recording", q.len());
    }
    Ok(q.drain(..n).collect())
}

impl ReplaySource {
    pub fn new() -> Self {
        Self::default()
    }
    /// Normal draws to be handed back in calls of exactly the recorded sizes (see
    /// [`normal_call_sizes`](Self::normal_call_sizes)).
    pub fn with_normal_calls(mut self, values: impl IntoIterator<Item = f32>, call_sizes: impl IntoIterator<Item = usize>) -> Self {
        self.normals.extend(values);
        self.normal_call_sizes.get_or_insert_with(VecDeque::new).extend(call_sizes);
        self
    }

    /// True when every recorded draw has been consumed (tests assert this at the end).
    pub fn is_exhausted(&self) -> bool {
        self.normal_call_sizes.as_ref().is_none_or(|c| c.is_empty())
            && self.normals.is_empty()
            && self.uniforms.is_empty()
            && self.gumbels.is_empty()
            && self.permutations.is_empty()
            && self.categoricals.is_empty()
            && self.categorical_uniforms.is_empty()
            && self.betas.is_empty()
    }
}

impl RandomSource for ReplaySource {
    fn normal(&mut self, numel: usize) -> Result<Vec<f32>> {
        let call = self.normal_calls_made;
        self.normal_calls_made += 1;
        if let Some(sizes) = self.normal_call_sizes.as_mut() {
            match sizes.pop_front() {
                Some(n) if n == numel => {}
                Some(n) => bail!("replay: normal call #{call} asks for {numel} values but the recording's call #{call} drew {n}"),
                None => bail!("replay: normal call #{call} ({numel} values) is one more than the recording holds"),
            }
        }
        take(&mut self.normals, numel, "normal")
    }
    fn uniform(&mut self, numel: usize) -> Result<Vec<f32>> {
        take(&mut self.uniforms, numel, "uniform")
    }
    fn gumbel(&mut self, numel: usize) -> Result<Vec<f32>> {
        take(&mut self.gumbels, numel, "gumbel")
    }
    fn permutation(&mut self, n: usize) -> Result<Vec<usize>> {
        match self.permutations.pop_front() {
            Some(p) if p.len() == n => Ok(p),
            Some(p) => bail!("replay: asked for a permutation of {n} but the recording holds one of {}", p.len()),
            None => bail!("replay: no recorded permutation left"),
        }
    }
    fn categorical(&mut self, probs: &[f32], cols: usize) -> Result<Vec<u32>> {
        let rows = probs.len().checked_div(cols).unwrap_or(0);
        if self.categoricals.is_empty() && !self.categorical_uniforms.is_empty() {
            let u = take(&mut self.categorical_uniforms, rows, "categorical uniform")?;
            let mut it = u.into_iter();
            return sample_rows(probs, cols, || it.next().map_or(0.0, f64::from));
        }
        take(&mut self.categoricals, rows, "categorical")
    }
    fn beta(&mut self, numel: usize, _alpha: f64, _beta: f64) -> Result<Vec<f32>> {
        take(&mut self.betas, numel, "beta")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_is_reproducible_and_streams_differ() {
        let a = SeededSource::new(7).normal(5).unwrap();
        let b = SeededSource::new(7).normal(5).unwrap();
        let c = SeededSource::for_stream(7, 1).normal(5).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn permutation_is_a_permutation() {
        let mut p = SeededSource::new(1).permutation(100).unwrap();
        assert_ne!(p, (0..100).collect::<Vec<_>>());
        p.sort();
        assert_eq!(p, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn categorical_follows_probabilities() {
        let mut s = SeededSource::new(3);
        let probs: Vec<f32> = (0..4000).flat_map(|_| [0.1f32, 0.0, 0.9]).collect();
        let draws = s.categorical(&probs, 3).unwrap();
        assert!(draws.iter().all(|&d| d != 1), "zero-probability class drawn");
        let frac2 = draws.iter().filter(|&&d| d == 2).count() as f64 / draws.len() as f64;
        assert!((frac2 - 0.9).abs() < 0.02, "{frac2}");
        assert!(s.categorical(&[0.0, 0.0], 2).is_err());
        assert!(s.categorical(&[0.5, 0.5, 0.1], 2).is_err());
    }

    #[test]
    fn gumbel_mean_is_euler_gamma() {
        let g = SeededSource::new(5).gumbel(200_000).unwrap();
        let mean = g.iter().map(|&x| x as f64).sum::<f64>() / g.len() as f64;
        assert!((mean - 0.5772).abs() < 0.01, "{mean}");
    }

    #[test]
    fn replayed_uniforms_drive_inverse_cdf_categoricals() {
        let mut r = ReplaySource::new();
        // Row CDF (0.2, 0.5, 1.0): u = 0.1 -> 0, u = 0.2 -> 1 (cdf <= target counts), u = 0.7 -> 2.
        r.categorical_uniforms.extend([0.1f32, 0.2, 0.7]);
        let probs = [0.2f32, 0.3, 0.5].repeat(3);
        assert_eq!(r.categorical(&probs, 3).unwrap(), vec![0, 1, 2]);
        assert!(r.categorical(&probs[..3], 3).is_err(), "the recording is used up");
        assert!(r.is_exhausted());
    }

    #[test]
    fn beta_draws_have_the_right_moments() {
        // Beta(12, 3): mean 0.8, variance a b / ((a+b)^2 (a+b+1)) = 0.01.
        for draws in [
            SeededSource::new(11).beta(40_000, 12.0, 3.0).unwrap(),
            // The generic construction from normal + uniform draws (used by other sources).
            {
                struct ViaDefault(SeededSource);
                impl RandomSource for ViaDefault {
                    fn normal(&mut self, n: usize) -> Result<Vec<f32>> {
                        self.0.normal(n)
                    }
                    fn uniform(&mut self, n: usize) -> Result<Vec<f32>> {
                        self.0.uniform(n)
                    }
                    fn gumbel(&mut self, n: usize) -> Result<Vec<f32>> {
                        self.0.gumbel(n)
                    }
                    fn permutation(&mut self, n: usize) -> Result<Vec<usize>> {
                        self.0.permutation(n)
                    }
                    fn categorical(&mut self, p: &[f32], c: usize) -> Result<Vec<u32>> {
                        self.0.categorical(p, c)
                    }
                }
                ViaDefault(SeededSource::new(12)).beta(40_000, 12.0, 3.0).unwrap()
            },
        ] {
            let n = draws.len() as f64;
            let mean = draws.iter().map(|&x| x as f64).sum::<f64>() / n;
            let var = draws.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
            assert!(draws.iter().all(|&x| (0.0..=1.0).contains(&x)));
            assert!((mean - 0.8).abs() < 0.003, "mean {mean}");
            assert!((var - 0.01).abs() < 0.0008, "variance {var}");
        }
        assert!(SeededSource::new(1).beta(1, 0.0, 1.0).is_err());
    }

    #[test]
    fn replay_hands_back_recording_and_detects_mismatch() {
        let mut r = ReplaySource::new();
        r.normals.extend([1.0, 2.0, 3.0]);
        r.permutations.push_back(vec![2, 0, 1]);
        assert_eq!(r.normal(2).unwrap(), vec![1.0, 2.0]);
        assert!(r.normal(2).is_err());
        assert!(r.permutation(4).is_err());
        assert!(r.normal(1).is_ok());
        assert!(r.is_exhausted());
    }

    #[test]
    fn replay_checks_call_sizes_when_recorded() {
        let mut r = ReplaySource::new().with_normal_calls([1.0, 2.0, 3.0, 4.0], [1, 3]);
        assert!(!r.is_exhausted());
        assert_eq!(r.normal(1).unwrap(), vec![1.0]);
        // Same total, different piece: refused although enough values remain.
        let err = r.normal(2).unwrap_err().to_string();
        assert!(err.contains("call #1") && err.contains("drew 3"), "{err}");
        let mut r = ReplaySource::new().with_normal_calls([1.0, 2.0], [2]);
        assert_eq!(r.normal(2).unwrap(), vec![1.0, 2.0]);
        assert!(r.is_exhausted());
        assert!(r.normal(0).is_err(), "a call beyond the recording must fail");
    }
}
