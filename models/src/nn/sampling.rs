//! Batched token sampling from logits `(..., V)`: every row (image x token) at once.
//!
//! Filters, in the order the references apply them: temperature, top-k, top-p. Both top-k and
//! top-p keep every token whose logit is >= a per-row threshold, so tokens tied at the boundary
//! are all kept (the references' `logits < kth_value` rule for top-k; for top-p the reference
//! outcome on exact ties depends on an unstable sort, and keeping them is the order-free choice).
//! * top-p, [`TopPRule::Var`] (VAR `sample_with_top_k_top_p_`): sort ascending, remove tokens
//!   whose cumulative probability is `<= 1 - p`, never the largest. Off when `p <= 0`.
//! * top-p, [`TopPRule::HuggingFace`] (LlamaGen, taming): sort descending, keep tokens up to and
//!   including the first whose cumulative probability exceeds `p`. Off when `p >= 1`.
//!
//! Draws come from a [`RandomSource`] so a run is reproducible from its seed and a parity test
//! can replay recorded draws: [`Draw::Multinomial`] (inverse CDF over `softmax(logits)`, like
//! `torch.multinomial`) or [`Draw::GumbelMax`] (`argmax(logits + g)`). [`gumbel_softmax`] gives
//! VAR's `more_smooth` soft one-hot rows.
//!
//! Devices: on the CPU the filters run row-parallel over host memory (select-nth for top-k,
//! one sort per row for top-p: O(V log V), never candle's O(V^2) matmul `cumsum`); on other
//! devices, and on the CPU under the generic kernel route, they are tensor ops (`sort_last_dim`,
//! `cumsum`, `gather`) and stay on the device.
//! Users: VAR, LlamaGen, taming, AutoNAT/MaskGIT.

use candle_core::{DType, Device, Result, Tensor, D};
use genbench_runtime::RandomSource;
use rayon::prelude::*;

/// Which top-p convention to apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopPRule {
    Var,
    HuggingFace,
}

/// How the final index is drawn from the filtered logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Draw {
    /// `multinomial(softmax(logits))` by inverse CDF with one uniform per row.
    Multinomial,
    /// `argmax(logits + Gumbel noise)`: the same distribution, one Gumbel draw per logit.
    GumbelMax,
    /// `argmax(logits)`, no randomness.
    Greedy,
}

/// A complete sampling rule.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenSampler {
    /// Logits are divided by `max(temperature, 1e-5)`; 1.0 leaves them unchanged.
    pub temperature: f64,
    /// 0 = off.
    pub top_k: usize,
    pub top_p: f64,
    pub top_p_rule: TopPRule,
    pub draw: Draw,
}

impl TokenSampler {
    /// VAR's `sample_with_top_k_top_p_` (no temperature; `top_p <= 0` = off; multinomial).
    pub fn var(top_k: usize, top_p: f64) -> Self {
        Self { temperature: 1.0, top_k, top_p, top_p_rule: TopPRule::Var, draw: Draw::Multinomial }
    }

    /// LlamaGen / taming: temperature, top-k, Hugging Face top-p (`top_p >= 1` = off), multinomial.
    pub fn hugging_face(temperature: f64, top_k: usize, top_p: f64) -> Self {
        Self { temperature, top_k, top_p, top_p_rule: TopPRule::HuggingFace, draw: Draw::Multinomial }
    }

    fn top_p_active(&self) -> bool {
        match self.top_p_rule {
            TopPRule::Var => self.top_p > 0.0,
            TopPRule::HuggingFace => self.top_p < 1.0,
        }
    }

    /// Temperature, top-k and top-p applied: f32 logits with removed entries at -inf.
    pub fn filter(&self, logits: &Tensor) -> Result<Tensor> {
        let mut x = logits.to_dtype(DType::F32)?;
        if self.temperature != 1.0 {
            x = (x / self.temperature.max(1e-5))?;
        }
        if self.top_k > 0 {
            x = top_k_filter(&x, self.top_k)?;
        }
        if self.top_p_active() {
            x = top_p_filter(&x, self.top_p, self.top_p_rule)?;
        }
        Ok(x)
    }

    /// Filters and draws one index per row: `(..., V)` -> `(...)` u32.
    pub fn sample(&self, logits: &Tensor, rng: &mut dyn RandomSource) -> Result<Tensor> {
        let filtered = self.filter(logits)?;
        match self.draw {
            Draw::Multinomial => multinomial(&filtered, rng),
            Draw::GumbelMax => gumbel_max(&filtered, rng),
            Draw::Greedy => filtered.argmax(D::Minus1),
        }
    }
}

/// Applies `per_row(row) -> threshold` on the host, row-parallel, and masks `row < threshold`.
fn mask_below_row_threshold_cpu(logits: &Tensor, per_row: impl Fn(&[f32]) -> f32 + Sync) -> Result<Tensor> {
    let dims = logits.dims().to_vec();
    let v = *dims.last().unwrap_or(&0);
    if v == 0 {
        return Ok(logits.clone());
    }
    let mut data = logits.flatten_all()?.to_vec1::<f32>()?;
    data.par_chunks_mut(v).for_each(|row| {
        let thr = per_row(row);
        for x in row.iter_mut() {
            if *x < thr {
                *x = f32::NEG_INFINITY;
            }
        }
    });
    Tensor::from_vec(data, dims, logits.device())
}

/// Widest rows sorted on a GPU: candle's CUDA argsort keeps a padded row of u32 in shared
/// memory, and 16384 columns (LlamaGen, taming) would need 64 KB, over the 48 KB a kernel gets
/// by default. Wider rows are filtered on the host.
const DEVICE_SORT_MAX_COLS: usize = 8192;

/// Whether a filter over rows of `cols` logits on `device` runs on the host: always on the CPU
/// under the fast kernel route; under the generic route (the one other devices take) only rows
/// too wide for the device sort, which a GPU also filters on the host.
fn host_filter(device: &Device, cols: usize, kernel: &'static str) -> bool {
    if genbench_runtime::kernels::fast_on(device) {
        genbench_runtime::kernels::record_fast(kernel);
        return true;
    }
    device.is_cpu() && cols > DEVICE_SORT_MAX_COLS
}

/// Masks logits below the row's k-th largest value to -inf (ties with it kept).
pub fn top_k_filter(logits: &Tensor, k: usize) -> Result<Tensor> {
    let v = logits.dim(D::Minus1)?;
    if k == 0 || k >= v {
        return Ok(logits.clone());
    }
    let logits = logits.to_dtype(DType::F32)?;
    if !logits.device().is_cpu() && v > DEVICE_SORT_MAX_COLS {
        return top_k_filter(&logits.to_device(&Device::Cpu)?, k)?.to_device(logits.device());
    }
    if host_filter(logits.device(), v, "top-k-host") {
        mask_below_row_threshold_cpu(&logits, |row| {
            let mut scratch = row.to_vec();
            let (_, kth, _) = scratch.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
            *kth
        })
    } else {
        let (sorted, _) = logits.contiguous()?.sort_last_dim(false)?;
        let kth = sorted.narrow(D::Minus1, k - 1, 1)?;
        mask_below(&logits, &kth)
    }
}

/// `logits` with entries below `threshold` (broadcast over the last dim) set to -inf.
fn mask_below(logits: &Tensor, threshold: &Tensor) -> Result<Tensor> {
    let below = logits.broadcast_lt(threshold)?;
    let neg_inf = Tensor::full(f32::NEG_INFINITY, logits.shape(), logits.device())?.to_dtype(logits.dtype())?;
    below.where_cond(&neg_inf, logits)
}

/// Softmax of one row (f32 values, f64 accumulation), as probabilities in f32.
fn softmax_row(row: &[f32]) -> Vec<f32> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = row.iter().map(|&x| (x - max).exp()).collect();
    let sum: f64 = exps.iter().map(|&e| e as f64).sum();
    exps.iter().map(|&e| (e as f64 / sum) as f32).collect()
}

/// Top-p (nucleus) filtering under `rule` (see the module docs).
pub fn top_p_filter(logits: &Tensor, p: f64, rule: TopPRule) -> Result<Tensor> {
    let logits = logits.to_dtype(DType::F32)?;
    if host_filter(logits.device(), logits.dim(D::Minus1)?, "top-p-host") {
        return mask_below_row_threshold_cpu(&logits, |row| top_p_threshold(row, p, rule));
    }
    if logits.dim(D::Minus1)? > DEVICE_SORT_MAX_COLS {
        return top_p_filter(&logits.to_device(&Device::Cpu)?, p, rule)?.to_device(logits.device());
    }
    // Device path: the kept tokens are a contiguous run of the sorted row, so one threshold
    // per row (gathered from the sorted values) decides.
    let v = logits.dim(D::Minus1)?;
    let logits = logits.contiguous()?;
    match rule {
        TopPRule::Var => {
            let (sorted, _) = logits.sort_last_dim(true)?;
            let cum = candle_nn::ops::softmax_last_dim(&sorted)?.cumsum(D::Minus1)?;
            let removed = cum.le((1.0 - p) as f32)?.to_dtype(DType::U32)?.sum_keepdim(D::Minus1)?;
            let removed = removed.minimum((v - 1) as u32)?;
            mask_below(&logits, &sorted.gather(&removed.contiguous()?, D::Minus1)?)
        }
        TopPRule::HuggingFace => {
            let (sorted, _) = logits.sort_last_dim(false)?;
            let cum = candle_nn::ops::softmax_last_dim(&sorted)?.cumsum(D::Minus1)?;
            // kept = (#cum <= p) + 1, at most V; threshold = sorted_desc[kept - 1].
            let within = cum.le(p as f32)?.to_dtype(DType::U32)?.sum_keepdim(D::Minus1)?;
            let last_kept = within.minimum((v - 1) as u32)?;
            mask_below(&logits, &sorted.gather(&last_kept.contiguous()?, D::Minus1)?)
        }
    }
}

/// The smallest logit kept by top-p in one row.
fn top_p_threshold(row: &[f32], p: f64, rule: TopPRule) -> f32 {
    let probs = softmax_row(row);
    // Entries already at -inf (removed by top-k) have probability 0: under either rule they are
    // removed or irrelevant, so only the finite ones need sorting (900 of 4096 after VAR's top-k).
    let mut order: Vec<usize> = (0..row.len()).filter(|&i| row[i] > f32::NEG_INFINITY).collect();
    if order.is_empty() {
        return f32::NEG_INFINITY;
    }
    match rule {
        TopPRule::Var => {
            order.sort_unstable_by(|&a, &b| row[a].total_cmp(&row[b]));
            // cumsum accumulated in double like PyTorch's CPU kernel, compared in f32.
            let limit = (1.0 - p) as f32;
            let mut cum = 0f64;
            let mut removed = 0;
            for &i in &order[..order.len() - 1] {
                cum += probs[i] as f64;
                if (cum as f32) <= limit {
                    removed += 1;
                } else {
                    break;
                }
            }
            row[order[removed]]
        }
        TopPRule::HuggingFace => {
            order.sort_unstable_by(|&a, &b| row[b].total_cmp(&row[a]));
            let limit = p as f32;
            let mut cum = 0f64;
            for &i in &order {
                cum += probs[i] as f64;
                if (cum as f32) > limit {
                    return row[i];
                }
            }
            row[order[order.len() - 1]]
        }
    }
}

/// `softmax(logits)` in f32 over the last dim: the distribution [`multinomial`] draws from.
/// Removed entries (-inf) get exactly 0: the fast CPU exp clamps its argument at -87, which
/// would leave them ~1e-38 each, and an inverse-CDF draw with a uniform near 0 could then pick
/// a token the filter removed.
pub fn probabilities(logits: &Tensor) -> Result<Tensor> {
    let logits = logits.to_dtype(DType::F32)?.contiguous()?;
    let probs = crate::nn::fast_math::softmax_last_dim(&logits)?;
    let removed = logits.eq(f32::NEG_INFINITY)?;
    removed.where_cond(&probs.zeros_like()?, &probs)
}

/// One index per row drawn from `softmax(logits)` with `rng.categorical` (inverse CDF).
pub fn multinomial(logits: &Tensor, rng: &mut dyn RandomSource) -> Result<Tensor> {
    let dims = logits.dims().to_vec();
    let v = *dims.last().ok_or_else(|| candle_core::Error::Msg("multinomial on a scalar".into()))?;
    let probs = probabilities(logits)?;
    let host = probs.flatten_all()?.to_vec1::<f32>()?;
    let ids = rng.categorical(&host, v).map_err(|e| candle_core::Error::Msg(format!("{e:#}")))?;
    Tensor::from_vec(ids, &dims[..dims.len() - 1], logits.device())
}

/// Gumbel noise of the logits' shape from `rng`, on the logits' device.
fn gumbel_noise(logits: &Tensor, rng: &mut dyn RandomSource) -> Result<Tensor> {
    let g = rng.gumbel(logits.elem_count()).map_err(|e| candle_core::Error::Msg(format!("{e:#}")))?;
    Tensor::from_vec(g, logits.dims(), &Device::Cpu)?.to_device(logits.device())?.to_dtype(logits.dtype())
}

/// `argmax(logits + g)` with standard Gumbel noise g: a draw from `softmax(logits)`.
pub fn gumbel_max(logits: &Tensor, rng: &mut dyn RandomSource) -> Result<Tensor> {
    let logits = logits.to_dtype(DType::F32)?;
    (&logits + gumbel_noise(&logits, rng)?)?.argmax(D::Minus1)
}

/// `softmax((logits + g) / tau)` (soft, `hard=False`), as VAR's `gumbel_softmax_with_rng`.
pub fn gumbel_softmax(logits: &Tensor, tau: f64, rng: &mut dyn RandomSource) -> Result<Tensor> {
    let logits = logits.to_dtype(DType::F32)?;
    let noisy = ((&logits + gumbel_noise(&logits, rng)?)? / tau)?;
    candle_nn::ops::softmax_last_dim(&noisy.contiguous()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use genbench_runtime::SeededSource;

    fn row(v: &[f32]) -> Tensor {
        Tensor::new(v, &Device::Cpu).unwrap().reshape((1, v.len())).unwrap()
    }
    fn kept(t: &Tensor) -> Vec<bool> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|x| x.is_finite()).collect()
    }

    #[test]
    fn top_k_keeps_ties() {
        let x = row(&[1.0, 3.0, 2.0, 3.0, 2.0]);
        assert_eq!(kept(&top_k_filter(&x, 1).unwrap()), vec![false, true, false, true, false]);
        assert_eq!(kept(&top_k_filter(&x, 3).unwrap()), vec![false, true, true, true, true]);
        assert_eq!(kept(&top_k_filter(&x, 0).unwrap()), vec![true; 5]);
    }

    #[test]
    fn top_p_rules() {
        // probabilities 0.5, 0.25, 0.125, 0.125 (log-probs as logits)
        let x = row(&[0.5f32.ln(), 0.25f32.ln(), 0.125f32.ln(), 0.125f32.ln() - 1e-3]);
        // VAR: ascending cumsum 0.125, 0.25, 0.5, 1 ; remove <= 1 - 0.6 = 0.4 -> two smallest
        assert_eq!(kept(&top_p_filter(&x, 0.6, TopPRule::Var).unwrap()), vec![true, true, false, false]);
        // HF: descending cumsum 0.5, 0.75, ... ; first exceeding 0.6 is the second -> keep two
        assert_eq!(kept(&top_p_filter(&x, 0.6, TopPRule::HuggingFace).unwrap()), vec![true, true, false, false]);
        // HF with p = 0.4: the first token already exceeds -> keep one
        assert_eq!(kept(&top_p_filter(&x, 0.4, TopPRule::HuggingFace).unwrap()), vec![true, false, false, false]);
        // VAR never removes the largest, even with p tiny
        assert_eq!(kept(&top_p_filter(&x, 1e-6, TopPRule::Var).unwrap()), vec![true, false, false, false]);
    }

    #[test]
    fn draws_follow_the_distribution() {
        let mut rng = SeededSource::new(11);
        let logits = Tensor::new(&[[0f32, (3f32).ln()]], &Device::Cpu).unwrap().broadcast_as((4000, 2)).unwrap().contiguous().unwrap();
        for draw in [Draw::Multinomial, Draw::GumbelMax] {
            let s = TokenSampler { draw, ..TokenSampler::var(0, 0.0) };
            let ids = s.sample(&logits, &mut rng).unwrap().to_vec1::<u32>().unwrap();
            let frac = ids.iter().filter(|&&i| i == 1).count() as f64 / ids.len() as f64;
            assert!((frac - 0.75).abs() < 0.03, "{draw:?}: {frac}");
        }
        // top-k 1 is deterministic whatever the draw
        let s = TokenSampler::var(1, 0.0);
        let ids = s.sample(&logits, &mut rng).unwrap().to_vec1::<u32>().unwrap();
        assert!(ids.iter().all(|&i| i == 1));
    }

    #[test]
    fn gumbel_softmax_rows_sum_to_one() {
        let mut rng = SeededSource::new(1);
        let y = gumbel_softmax(&row(&[0.0, 1.0, 2.0]), 0.5, &mut rng).unwrap();
        let s: f32 = y.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().sum();
        assert!((s - 1.0).abs() < 1e-5);
    }
}
