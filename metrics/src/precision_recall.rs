//! Improved precision / recall (Kynkäänniemi et al. 2019) as ADM's `ManifoldEstimator` computes
//! it: k = 3, squared L2 distances from a GEMM, radius of a point = the (k+1)-th smallest
//! distance to its own set counting itself (index k of a partition), a point is inside a ball
//! when `distance <= radius`.
//!
//! * precision = fraction of samples inside some reference ball;
//! * recall = fraction of reference points inside some sample ball.
//!
//! ADM processes `row_block x col_block` (10000 x 10000) blocks; in fp16 mode its fallback to
//! float32 is decided per block, so blocks are kept as the unit here. Inside a block, rows are
//! processed in tiles so only `TILE_ROWS x col_block` distances are held at once; per-row k-th
//! smallest values are found with `select_nth_unstable` and merged across column blocks.

use std::borrow::Cow;
use std::ops::Range;

use anyhow::{bail, ensure, Result};
use rayon::prelude::*;

use crate::numeric::{default_par, gemm_abt_f32, numpy_sum_f32};

/// Arithmetic of the squared distances.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DistancePrecision {
    /// Float32 throughout (the fixture's golden values; ADM's fallback path).
    F32,
    /// ADM's TensorFlow fp16 path: inputs, squares, norms, the GEMM result and every elementwise
    /// op rounded to fp16 (GEMM and norm sums accumulate in f32); a block with any non-finite
    /// distance is recomputed in float32.
    Fp16Adm,
}

/// As the command line writes it: `fp16` (also `f16`, `adm`) or `f32` (also `fp32`).
impl std::str::FromStr for DistancePrecision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "fp16" | "f16" | "adm" => Ok(Self::Fp16Adm),
            "f32" | "fp32" => Ok(Self::F32),
            other => Err(format!("unknown precision '{other}': expected fp16 or f32")),
        }
    }
}

/// Settings of the manifold estimator.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct PrConfig {
    /// Neighbourhood size (ADM: 3).
    pub k: usize,
    pub row_block: usize,
    pub col_block: usize,
    pub precision: DistancePrecision,
}

impl Default for PrConfig {
    fn default() -> Self {
        Self { k: 3, row_block: 10_000, col_block: 10_000, precision: DistancePrecision::Fp16Adm }
    }
}

/// Precision and recall with how often fp16 mode fell back to float32.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct PrecisionRecall {
    pub precision: f64,
    pub recall: f64,
    /// Number of distance blocks recomputed in float32 because fp16 gave a non-finite value.
    pub fp32_fallback_blocks: usize,
}

/// Rows of one distance tile: bounds memory to `TILE_ROWS * col_block` floats while keeping the
/// GEMM large enough to run near peak.
const TILE_ROWS: usize = 1024;

/// A feature set ready for distance computations: values and squared norms in the arithmetic
/// of `mode` (fp16-rounded values are stored as f32).
struct Prepared<'a> {
    rows: usize,
    d: usize,
    values: Cow<'a, [f32]>,
    norms: Vec<f32>,
}

impl<'a> Prepared<'a> {
    fn new(features: &'a [f32], d: usize, mode: DistancePrecision) -> Self {
        let rows = features.len() / d;
        match mode {
            DistancePrecision::F32 => {
                // np.sum(np.square(u), axis=1) in float32.
                let norms = features.par_chunks(d).map(|row| numpy_sum_f32(&row.iter().map(|v| v * v).collect::<Vec<_>>())).collect();
                Self { rows, d, values: Cow::Borrowed(features), norms }
            }
            DistancePrecision::Fp16Adm => {
                let values: Vec<f32> = features.par_iter().map(|&v| round_f16(v)).collect();
                let norms = values.par_chunks(d).map(|row| round_f16(row.iter().map(|&v| round_f16(v * v)).sum::<f32>())).collect();
                Self { rows, d, values: Cow::Owned(values), norms }
            }
        }
    }

    fn rows_slice(&self, r: &Range<usize>) -> &[f32] {
        &self.values[r.start * self.d..r.end * self.d]
    }
}

/// Smallest positive normal fp16 value; below it fp16 has a fixed quantum of 2^-24.
const F16_MIN_NORMAL: f32 = 6.103_515_6e-5;
/// Magnitudes that round to at least this overflow to infinity in fp16 (max finite: 65504).
const F16_OVERFLOW: f32 = 65536.0;

/// Rounds an f32 to the nearest fp16 value (ties to even), returned as f32; identical to
/// `half::f16::from_f32(v).to_f32()`. Done with plain f32 arithmetic because the hardware
/// conversion is very slow for fp16-subnormal results on some CPUs, and small post-ReLU
/// features land there often.
#[inline]
fn round_f16(v: f32) -> f32 {
    if v.is_nan() {
        return v;
    }
    let a = v.abs();
    let rounded = if a < F16_MIN_NORMAL {
        // 0.5 has an f32 ulp of 2^-24, the fp16 subnormal quantum: the addition rounds `a` to it.
        (a + 0.5) - 0.5
    } else {
        // Round the 23-bit f32 mantissa to fp16's 10 bits, ties to even.
        let bits = a.to_bits();
        let r = f32::from_bits((bits + 0x0fff + ((bits >> 13) & 1)) & !0x1fff);
        if r >= F16_OVERFLOW {
            f32::INFINITY
        } else {
            r
        }
    };
    rounded.copysign(v)
}

/// The same feature set in both arithmetics (float32 is needed for fp16's fallback).
struct FeatureSet<'a> {
    primary: Prepared<'a>,
    fallback: Option<Prepared<'a>>,
}

impl<'a> FeatureSet<'a> {
    fn new(features: &'a [f32], d: usize, mode: DistancePrecision) -> Self {
        let fallback = (mode == DistancePrecision::Fp16Adm).then(|| Prepared::new(features, d, DistancePrecision::F32));
        Self { primary: Prepared::new(features, d, mode), fallback }
    }

    fn rows(&self) -> usize {
        self.primary.rows
    }

    /// The float32 version (the primary one in F32 mode, the fallback copy in fp16 mode).
    fn float32(&self) -> &Prepared<'a> {
        self.fallback.as_ref().unwrap_or(&self.primary)
    }
}

/// Computes one tile of squared distances `D[i, j]` for `u` rows x `v` rows into `out`
/// (row-major), returning whether every value is finite.
fn distance_tile(u: &Prepared, ur: &Range<usize>, v: &Prepared, vr: &Range<usize>, mode: DistancePrecision, out: &mut [f32]) -> bool {
    let (m, n) = (ur.len(), vr.len());
    let out = &mut out[..m * n];
    gemm_abt_f32(out, u.rows_slice(ur), m, v.rows_slice(vr), n, u.d, default_par());
    let nv = &v.norms[vr.clone()];
    out.par_chunks_mut(n)
        .zip(u.norms[ur.clone()].par_iter())
        .map(|(row, &nu)| match mode {
            DistancePrecision::F32 => distances_f32_row(row, nu, nv),
            DistancePrecision::Fp16Adm => distances_f16_row(row, nu, nv),
        })
        .reduce(|| true, |a, b| a && b)
}

/// `max((nu - 2 g) + nv, 0)` in float32, evaluated in numpy's order.
fn distances_f32_row(row: &mut [f32], nu: f32, nv: &[f32]) -> bool {
    let mut finite = true;
    for (g, &nvj) in row.iter_mut().zip(nv) {
        let dist = (nu - 2.0 * *g) + nvj;
        *g = if dist < 0.0 { 0.0 } else { dist };
        finite &= g.is_finite();
    }
    finite
}

/// The same with every op rounded to fp16. Rounding an f32 result of an op on fp16 operands
/// equals the fp16 op (24 >= 2*11 + 2 bits, so double rounding is harmless). `max` keeps NaN like
/// TF's Eigen `maximum`, so a NaN triggers the float32 fallback.
fn distances_f16_row(row: &mut [f32], nu: f32, nv: &[f32]) -> bool {
    let mut finite = true;
    for (g, &nvj) in row.iter_mut().zip(nv) {
        let two_g = round_f16(2.0 * round_f16(*g));
        let dist = round_f16(round_f16(nu - two_g) + nvj);
        *g = if dist < 0.0 { 0.0 } else { dist };
        finite &= g.is_finite();
    }
    finite
}

/// One ADM distance block: rows `ur` of `u` against rows `vr` of `v`.
struct Block<'a> {
    u: &'a FeatureSet<'a>,
    ur: Range<usize>,
    v: &'a FeatureSet<'a>,
    vr: Range<usize>,
    mode: DistancePrecision,
}

impl Block<'_> {
    /// Feeds every row tile of the block to `tile_fn` (tile rows, distances). If fp16 gives a
    /// non-finite value, `reset` clears the block's partial results and the block is redone in
    /// float32, as ADM's `tf.cond` does. Returns whether that fallback was used.
    fn for_each_tile<S>(
        &self,
        buf: &mut Vec<f32>,
        state: &mut S,
        reset: impl Fn(&mut S),
        mut tile_fn: impl FnMut(&mut S, Range<usize>, &mut [f32]),
    ) -> bool {
        buf.resize(TILE_ROWS.min(self.ur.len()) * self.vr.len(), 0.0);
        if self.run(&self.u.primary, &self.v.primary, self.mode, buf, state, &mut tile_fn) {
            return false;
        }
        reset(state);
        self.run(self.u.float32(), self.v.float32(), DistancePrecision::F32, buf, state, &mut tile_fn);
        true
    }

    /// Returns false (early) when fp16 produced a non-finite distance.
    fn run<S>(
        &self,
        u: &Prepared,
        v: &Prepared,
        mode: DistancePrecision,
        buf: &mut [f32],
        state: &mut S,
        tile_fn: &mut impl FnMut(&mut S, Range<usize>, &mut [f32]),
    ) -> bool {
        let width = self.vr.len();
        for tile in block_ranges(self.ur.clone(), TILE_ROWS) {
            let dists = &mut buf[..tile.len() * width];
            let finite = distance_tile(u, &tile, v, &self.vr, mode, dists);
            if !finite && mode == DistancePrecision::Fp16Adm {
                return false;
            }
            tile_fn(state, tile, dists);
        }
        true
    }
}

/// Consecutive sub-ranges of `range` of length `block` (the last one shorter).
fn block_ranges(range: Range<usize>, block: usize) -> impl Iterator<Item = Range<usize>> {
    let end = range.end;
    range.step_by(block.max(1)).map(move |s| s..(s + block).min(end))
}

/// Radii of a feature set's own manifold: for every row, the (k+1)-th smallest squared distance
/// to all rows of the set, itself included. Returns the radii and the fp16 fallback count.
fn manifold_radii_of(set: &FeatureSet, cfg: &PrConfig) -> (Vec<f32>, usize) {
    let n = set.rows();
    let keep = cfg.k + 1;
    let mut smallest = vec![f32::INFINITY; n * keep];
    let mut fallbacks = 0;
    let mut buf = Vec::new();
    for rows in block_ranges(0..n, cfg.row_block) {
        for cols in block_ranges(0..n, cfg.col_block) {
            // Block-local candidates: committed only once the block's arithmetic is settled.
            let mut candidates = vec![f32::INFINITY; rows.len() * keep];
            let row0 = rows.start;
            let width = cols.len();
            let block = Block { u: set, ur: rows.clone(), v: set, vr: cols, mode: cfg.precision };
            let used_fallback = block.for_each_tile(
                &mut buf,
                &mut candidates,
                |c| c.fill(f32::INFINITY),
                |c, tile, dists| {
                    let tile_candidates = &mut c[(tile.start - row0) * keep..(tile.end - row0) * keep];
                    dists
                        .par_chunks_mut(width)
                        .zip(tile_candidates.par_chunks_mut(keep))
                        .for_each(|(row, best)| merge_smallest(best, smallest_of(row, keep)));
                },
            );
            fallbacks += usize::from(used_fallback);
            for (best, cand) in smallest[row0 * keep..rows.end * keep].chunks_mut(keep).zip(candidates.chunks(keep)) {
                merge_smallest(best, cand);
            }
        }
    }
    let radii = smallest.chunks(keep).map(|s| s[cfg.k]).collect();
    (radii, fallbacks)
}

/// The `keep` smallest values of `row` (unordered), via a partial selection in place.
fn smallest_of(row: &mut [f32], keep: usize) -> &[f32] {
    if row.len() > keep {
        row.select_nth_unstable_by(keep - 1, f32::total_cmp);
        &row[..keep]
    } else {
        row
    }
}

/// Merges `new` into `best` (sorted ascending, fixed length) keeping the smallest values.
fn merge_smallest(best: &mut [f32], new: &[f32]) {
    for &v in new {
        let last = best.len() - 1;
        if v.total_cmp(&best[last]).is_lt() {
            best[last] = v;
            let mut i = last;
            while i > 0 && best[i].total_cmp(&best[i - 1]).is_lt() {
                best.swap(i, i - 1);
                i -= 1;
            }
        }
    }
}

/// Per ADM: which reference rows lie in some sample ball, which samples in some reference ball.
struct Membership {
    ref_in: Vec<bool>,
    sample_in: Vec<bool>,
}

fn evaluate_membership(
    reference: &FeatureSet,
    ref_radii: &[f32],
    samples: &FeatureSet,
    sample_radii: &[f32],
    cfg: &PrConfig,
) -> (Membership, usize) {
    let mut total = Membership { ref_in: vec![false; reference.rows()], sample_in: vec![false; samples.rows()] };
    let mut fallbacks = 0;
    let mut buf = Vec::new();
    for rows in block_ranges(0..reference.rows(), cfg.row_block) {
        for cols in block_ranges(0..samples.rows(), cfg.col_block) {
            let mut block = Membership { ref_in: vec![false; rows.len()], sample_in: vec![false; cols.len()] };
            let (row0, col_radii) = (rows.start, &sample_radii[cols.clone()]);
            let job = Block { u: reference, ur: rows.clone(), v: samples, vr: cols.clone(), mode: cfg.precision };
            let used_fallback = job.for_each_tile(
                &mut buf,
                &mut block,
                |b| {
                    b.ref_in.fill(false);
                    b.sample_in.fill(false);
                },
                |b, tile, dists| {
                    let tile_radii = &ref_radii[tile.clone()];
                    let tile_ref_in = &mut b.ref_in[tile.start - row0..tile.end - row0];
                    let cols_in = tile_membership(dists, tile_radii, col_radii, tile_ref_in);
                    b.sample_in.iter_mut().zip(cols_in).for_each(|(a, c)| *a |= c);
                },
            );
            fallbacks += usize::from(used_fallback);
            total.ref_in[rows.clone()].iter_mut().zip(&block.ref_in).for_each(|(a, &b)| *a |= b);
            total.sample_in[cols].iter_mut().zip(&block.sample_in).for_each(|(a, &b)| *a |= b);
        }
    }
    (total, fallbacks)
}

/// For a tile of distances (rows = reference, columns = samples): marks reference rows inside
/// some sample ball in `ref_in` and returns, per column, whether the sample is inside some
/// reference ball of this tile.
fn tile_membership(dists: &[f32], ref_radii: &[f32], col_radii: &[f32], ref_in: &mut [bool]) -> Vec<bool> {
    let width = col_radii.len();
    dists
        .par_chunks(width)
        .zip(ref_radii.par_iter())
        .zip(ref_in.par_iter_mut())
        .fold(
            || vec![false; width],
            |mut cols_in, ((row, &r_ref), row_in)| {
                let mut inside_sample_ball = false;
                for ((&dist, &r_col), col_in) in row.iter().zip(col_radii).zip(cols_in.iter_mut()) {
                    inside_sample_ball |= dist <= r_col;
                    *col_in |= dist <= r_ref;
                }
                *row_in |= inside_sample_ball;
                cols_in
            },
        )
        .reduce(
            || vec![false; width],
            |mut a, b| {
                a.iter_mut().zip(b).for_each(|(x, y)| *x |= y);
                a
            },
        )
}

fn check_features(features: &[f32], d: usize, k: usize, what: &str) -> Result<()> {
    ensure!(d > 0 && features.len().is_multiple_of(d), "{what}: buffer is not a whole number of {d}-dim rows");
    let rows = features.len() / d;
    ensure!(rows > k, "{what}: precision/recall with k = {k} needs more than {k} feature rows, got {rows}");
    if let Some(i) = features.iter().position(|v| !v.is_finite()) {
        bail!("{what}: feature row {} contains a non-finite value", i / d);
    }
    Ok(())
}

/// Radii of the k-NN balls of `features` (row-major `[n, d]`) as ADM's `manifold_radii`.
pub fn manifold_radii(features: &[f32], d: usize, cfg: &PrConfig) -> Result<Vec<f32>> {
    check_features(features, d, cfg.k, "features")?;
    Ok(manifold_radii_of(&FeatureSet::new(features, d, cfg.precision), cfg).0)
}

/// ADM precision and recall of `samples` against `reference` (both row-major `[n, d]`).
pub fn precision_recall(reference: &[f32], samples: &[f32], d: usize, cfg: &PrConfig) -> Result<PrecisionRecall> {
    ensure!(cfg.k >= 1 && cfg.row_block >= 1 && cfg.col_block >= 1, "invalid precision/recall settings {cfg:?}");
    check_features(reference, d, cfg.k, "reference")?;
    check_features(samples, d, cfg.k, "samples")?;
    let ref_set = FeatureSet::new(reference, d, cfg.precision);
    let sample_set = FeatureSet::new(samples, d, cfg.precision);
    let (ref_radii, f1) = manifold_radii_of(&ref_set, cfg);
    let (sample_radii, f2) = manifold_radii_of(&sample_set, cfg);
    let (inside, f3) = evaluate_membership(&ref_set, &ref_radii, &sample_set, &sample_radii, cfg);
    Ok(PrecisionRecall { precision: fraction(&inside.sample_in), recall: fraction(&inside.ref_in), fp32_fallback_blocks: f1 + f2 + f3 })
}

fn fraction(flags: &[bool]) -> f64 {
    flags.iter().filter(|&&b| b).count() as f64 / flags.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn distance_precision_names() {
        assert_eq!("F32".parse::<DistancePrecision>(), Ok(DistancePrecision::F32));
        assert_eq!("adm".parse::<DistancePrecision>(), Ok(DistancePrecision::Fp16Adm));
        assert!("bf16".parse::<DistancePrecision>().is_err());
    }

    fn random(n: usize, d: usize, scale: f32, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n * d).map(|_| rng.random::<f32>() * scale).collect()
    }

    /// Brute-force reference in f64 with exact distances (no GEMM), for well separated data.
    fn brute_force(reference: &[f32], samples: &[f32], d: usize, k: usize) -> (f64, f64) {
        let dist = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>();
        let radii = |x: &[f32]| -> Vec<f64> {
            x.chunks(d)
                .map(|a| {
                    let mut ds: Vec<f64> = x.chunks(d).map(|b| dist(a, b)).collect();
                    ds.sort_by(f64::total_cmp);
                    ds[k]
                })
                .collect()
        };
        let (rr, rs) = (radii(reference), radii(samples));
        let covered = |pts: &[f32], centres: &[f32], r: &[f64]| {
            pts.chunks(d).filter(|p| centres.chunks(d).zip(r).any(|(c, &rad)| dist(p, c) <= rad)).count() as f64 / (pts.len() / d) as f64
        };
        (covered(samples, reference, &rr), covered(reference, samples, &rs))
    }

    #[test]
    fn matches_brute_force_with_any_blocking() {
        let d = 6;
        let reference = random(300, d, 1.0, 1);
        let samples = random(250, d, 1.2, 2);
        let (p, r) = brute_force(&reference, &samples, d, 3);
        for (row_block, col_block) in [(10_000, 10_000), (7, 13), (64, 1000), (1, 5)] {
            let cfg = PrConfig { row_block, col_block, precision: DistancePrecision::F32, ..Default::default() };
            let pr = precision_recall(&reference, &samples, d, &cfg).unwrap();
            assert_eq!((pr.precision, pr.recall), (p, r), "blocks {row_block}x{col_block}");
            assert_eq!(pr.fp32_fallback_blocks, 0);
        }
    }

    #[test]
    fn radius_counts_self_as_first_neighbour() {
        // Points on a line at 0, 1, 3, 6, 10: distances from 0 are 0, 1, 9, 36, 100.
        let x = [0.0f32, 1.0, 3.0, 6.0, 10.0];
        let cfg = PrConfig { precision: DistancePrecision::F32, ..Default::default() };
        let radii = manifold_radii(&x, 1, &cfg).unwrap();
        assert_eq!(radii[0], 36.0);
        // From 3: 0, 4, 9, 9 (to 0 and 6), 49 -> 4th smallest is 9.
        assert_eq!(radii[2], 9.0);
    }

    #[test]
    fn boundary_point_is_inside() {
        // Reference radius of 0 (k=3) is 36; a sample exactly at distance^2 36 counts (<=).
        let reference = [0.0f32, 1.0, 3.0, 6.0, 10.0];
        let samples = [-6.0f32, 100.0, 101.0, 103.0, 106.0];
        let cfg = PrConfig { precision: DistancePrecision::F32, ..Default::default() };
        let pr = precision_recall(&reference, &samples, 1, &cfg).unwrap();
        assert_eq!(pr.precision, 0.2);
    }

    #[test]
    fn fp16_rounds_distances_and_falls_back_on_overflow() {
        let d = 8;
        let reference = random(200, d, 1.0, 3);
        let samples = random(200, d, 1.0, 4);
        let f16cfg = PrConfig::default();
        let f32cfg = PrConfig { precision: DistancePrecision::F32, ..Default::default() };
        let a = precision_recall(&reference, &samples, d, &f16cfg).unwrap();
        let b = precision_recall(&reference, &samples, d, &f32cfg).unwrap();
        assert_eq!(a.fp32_fallback_blocks, 0);
        // Quantisation moves a few boundary points at most.
        assert!((a.precision - b.precision).abs() < 0.05 && (a.recall - b.recall).abs() < 0.05);
        // Squared norms above 65504 overflow fp16: every block falls back to f32, so the
        // result must equal the f32 result exactly.
        let big_ref: Vec<f32> = reference.iter().map(|v| v * 200.0).collect();
        let big_smp: Vec<f32> = samples.iter().map(|v| v * 200.0).collect();
        let a = precision_recall(&big_ref, &big_smp, d, &f16cfg).unwrap();
        let b = precision_recall(&big_ref, &big_smp, d, &f32cfg).unwrap();
        assert_eq!(a.fp32_fallback_blocks, 3);
        assert_eq!((a.precision, a.recall), (b.precision, b.recall));
    }

    #[test]
    fn f16_rounding_matches_the_half_crate() {
        let specials = [
            0.0f32,
            -0.0,
            1.0,
            65504.0,
            65519.99,
            65520.0,
            1e9,
            f32::INFINITY,
            f32::NEG_INFINITY,
            5.96e-8,
            2.98e-8,
            2.99e-8,
            6.1e-5,
            6.103_515_6e-5,
            f32::MIN_POSITIVE,
        ];
        let strided = (0..u32::MAX / 251).map(|i| f32::from_bits(i * 251));
        for v in specials.into_iter().flat_map(|s| [s, -s]).chain(strided) {
            let expected = half::f16::from_f32(v).to_f32();
            let got = round_f16(v);
            assert!(got.to_bits() == expected.to_bits() || (got.is_nan() && expected.is_nan()), "{v:e}: {got:e} vs {expected:e}");
        }
    }

    #[test]
    fn fp16_row_arithmetic() {
        // nu = 1000.5 is not representable in fp16 (ulp 0.5 at 1024 > x >= 512): inputs are
        // already fp16 here, so check the op rounding: (1000 - 2*0.3) + 0.1 in fp16.
        let mut row = [0.3f32];
        distances_f16_row(&mut row, 1000.0, &[0.1]);
        let expected = round_f16(round_f16(1000.0 - round_f16(2.0 * round_f16(0.3))) + 0.1);
        assert_eq!(row[0], expected);
        assert_eq!(row[0], 999.5);
    }

    #[test]
    fn too_few_rows_or_bad_values_are_errors() {
        let cfg = PrConfig::default();
        let err = precision_recall(&[0.0; 6], &[0.0; 10], 2, &cfg).unwrap_err().to_string();
        assert!(err.contains("reference") && err.contains("got 3"), "{err}");
        let mut x = vec![0.5f32; 10];
        x[7] = f32::NAN;
        let err = precision_recall(&[0.0; 10], &x, 2, &cfg).unwrap_err().to_string();
        assert!(err.contains("samples") && err.contains("row 3"), "{err}");
    }
}
