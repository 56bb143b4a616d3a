//! Inception Score from 1008-way logits (pool3 times the fc weights, no bias).
//!
//! * [`inception_score_adm`]: ADM's evaluator: float32 softmax, contiguous splits of
//!   `split_size` (5000) in file order, float32 KL `p * (log p - log mean(p, 0))` summed the way
//!   numpy does (sequential column means, pairwise row sums), mean of `exp(mean KL)` over splits.
//! * [`inception_score_torch_fidelity`]: float64 softmax / log-softmax, rows permuted by numpy's
//!   `RandomState(seed).permutation(N)`, `splits` splits `[i N / s, (i+1) N / s)`, mean and
//!   population std.

use anyhow::{bail, ensure, Result};

use crate::numeric::numpy_sum_f32;
use crate::numpy_rng::Mt19937;

/// ADM's IS split size.
pub const ADM_SPLIT_SIZE: usize = 5000;
/// torch-fidelity's IS defaults.
pub const TORCH_FIDELITY_SPLITS: usize = 10;
pub const TORCH_FIDELITY_SEED: u32 = 2020;

/// IS over splits: mean, population std and the per-split scores.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct InceptionScore {
    pub mean: f64,
    pub std: f64,
    pub split_scores: Vec<f64>,
}

fn check_logits(logits: &[f32], classes: usize) -> Result<usize> {
    ensure!(classes >= 2, "IS needs at least 2 classes, got {classes}");
    ensure!(logits.len().is_multiple_of(classes), "logit buffer of {} values is not a whole number of {classes}-class rows", logits.len());
    let n = logits.len() / classes;
    ensure!(n >= 1, "IS needs at least one logit row");
    if let Some(i) = logits.iter().position(|v| !v.is_finite()) {
        bail!("logit row {} contains a non-finite value", i / classes);
    }
    Ok(n)
}

/// Row-wise float32 softmax (max-subtracted).
pub fn softmax_f32(logits: &[f32], classes: usize) -> Vec<f32> {
    let mut out = logits.to_vec();
    for row in out.chunks_exact_mut(classes) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        row.iter_mut().for_each(|v| *v = (*v - max).exp());
        let total = numpy_sum_f32(row);
        row.iter_mut().for_each(|v| *v /= total);
    }
    out
}

/// ADM: IS of `logits` (row-major `[n, classes]`) in float32 with contiguous splits.
pub fn inception_score_adm(logits: &[f32], classes: usize, split_size: usize) -> Result<InceptionScore> {
    let n = check_logits(logits, classes)?;
    ensure!(split_size >= 1, "IS split size must be at least 1");
    let probs = softmax_f32(logits, classes);
    let scores: Vec<f32> = probs.chunks(split_size * classes).map(|part| split_score_f32(part, classes)).collect();
    if let Some(i) = scores.iter().position(|s| !s.is_finite()) {
        bail!(
            "IS split {i} is not finite: a softmax probability underflowed to 0 and numpy's \
             p*log(p) gives NaN (ADM would print nan); the logits have extreme values"
        );
    }
    debug_assert_eq!(scores.len(), n.div_ceil(split_size));
    let mean = numpy_sum_f32(&scores) / scores.len() as f32;
    let deviations: Vec<f32> = scores.iter().map(|s| (s - mean) * (s - mean)).collect();
    let std = (numpy_sum_f32(&deviations) / scores.len() as f32).sqrt();
    Ok(InceptionScore { mean: mean as f64, std: std as f64, split_scores: scores.iter().map(|&s| s as f64).collect() })
}

/// `exp(mean_i sum_c p_ic (log p_ic - log mean_i p_ic))` in float32 for one split.
fn split_score_f32(part: &[f32], classes: usize) -> f32 {
    let rows = part.len() / classes;
    // np.mean(part, 0): rows added one after another, then divided by the count.
    let mut marginal = vec![0f32; classes];
    for row in part.chunks_exact(classes) {
        marginal.iter_mut().zip(row).for_each(|(m, &p)| *m += p);
    }
    let log_marginal: Vec<f32> = marginal.iter().map(|&m| (m / rows as f32).ln()).collect();
    let mut kl_row = vec![0f32; classes];
    let row_kl: Vec<f32> = part
        .chunks_exact(classes)
        .map(|row| {
            for ((k, &p), &lm) in kl_row.iter_mut().zip(row).zip(&log_marginal) {
                *k = p * (p.ln() - lm);
            }
            numpy_sum_f32(&kl_row)
        })
        .collect();
    (numpy_sum_f32(&row_kl) / rows as f32).exp()
}

/// torch-fidelity: IS in float64 over `splits` splits of the rows permuted with
/// `RandomState(seed)`.
pub fn inception_score_torch_fidelity(logits: &[f32], classes: usize, splits: usize, seed: u32) -> Result<InceptionScore> {
    let n = check_logits(logits, classes)?;
    ensure!(splits >= 1 && splits <= n, "IS with {splits} splits needs at least {splits} rows, got {n}");
    let order = Mt19937::new(seed).permutation(n);
    let log_probs: Vec<Vec<f64>> = order.iter().map(|&i| log_softmax_f64(&logits[i * classes..(i + 1) * classes])).collect();
    let split_scores: Vec<f64> = (0..splits).map(|s| split_score_f64(&log_probs[s * n / splits..(s + 1) * n / splits])).collect();
    let mean = split_scores.iter().sum::<f64>() / splits as f64;
    let std = (split_scores.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / splits as f64).sqrt();
    Ok(InceptionScore { mean, std, split_scores })
}

fn log_softmax_f64(row: &[f32]) -> Vec<f64> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let log_total = row.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
    row.iter().map(|&v| v as f64 - max - log_total).collect()
}

fn split_score_f64(log_probs: &[Vec<f64>]) -> f64 {
    let classes = log_probs[0].len();
    let rows = log_probs.len() as f64;
    let mut marginal = vec![0f64; classes];
    for row in log_probs {
        marginal.iter_mut().zip(row).for_each(|(m, &lp)| *m += lp.exp());
    }
    let log_marginal: Vec<f64> = marginal.iter().map(|m| (m / rows).ln()).collect();
    let mean_kl =
        log_probs.iter().map(|row| row.iter().zip(&log_marginal).map(|(&lp, &lm)| lp.exp() * (lp - lm)).sum::<f64>()).sum::<f64>() / rows;
    mean_kl.exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_predictions_score_one() {
        let logits = vec![0.5f32; 40 * 8];
        let adm = inception_score_adm(&logits, 8, 10).unwrap();
        assert!((adm.mean - 1.0).abs() < 1e-6 && adm.std < 1e-6);
        let tf = inception_score_torch_fidelity(&logits, 8, 4, 2020).unwrap();
        assert!((tf.mean - 1.0).abs() < 1e-12);
    }

    #[test]
    fn confident_distinct_classes_score_the_class_count() {
        // One-hot-like predictions spread evenly over 4 classes: IS -> 4.
        let classes = 4;
        let logits: Vec<f32> = (0..40).flat_map(|i| (0..classes).map(move |c| if c == i % classes { 30.0 } else { 0.0 })).collect();
        let adm = inception_score_adm(&logits, classes, 40).unwrap();
        assert!((adm.mean - 4.0).abs() < 1e-3, "{adm:?}");
        let tf = inception_score_torch_fidelity(&logits, classes, 1, 2020).unwrap();
        assert!((tf.mean - 4.0).abs() < 1e-9, "{tf:?}");
    }

    #[test]
    fn adm_splits_are_contiguous_and_last_is_partial() {
        // Class-sorted input: each split of 10 rows sees a single class -> IS 1 per split; the
        // 5-row tail split too. A shuffle would mix classes and raise the score.
        let classes = 3;
        let logits: Vec<f32> = (0..25).flat_map(|i| (0..classes).map(move |c| if c == (i / 10) % classes { 20.0 } else { 0.0 })).collect();
        let adm = inception_score_adm(&logits, classes, 10).unwrap();
        assert_eq!(adm.split_scores.len(), 3);
        assert!(adm.split_scores.iter().all(|s| (s - 1.0).abs() < 1e-4), "{adm:?}");
        let shuffled = inception_score_torch_fidelity(&logits, classes, 1, 2020).unwrap();
        assert!(shuffled.mean > 2.5, "{shuffled:?}");
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert!(inception_score_adm(&[1.0; 7], 2, 5).is_err());
        assert!(inception_score_adm(&[], 2, 5).is_err());
        assert!(inception_score_adm(&[1.0, f32::NAN], 2, 5).is_err());
        assert!(inception_score_torch_fidelity(&[1.0; 6], 2, 10, 2020).is_err());
        // A probability that underflows to exactly 0 makes numpy's KL NaN: reported, not hidden.
        let err = inception_score_adm(&[0.0, 200.0, 200.0, 0.0], 2, 5).unwrap_err();
        assert!(err.to_string().contains("underflowed"), "{err}");
    }
}
