//! Classifier-free guidance: the three formulas the families use, each under its own name, and
//! the batch layout they share (conditional rows first, unconditional rows second).
//!
//! | family | formula | function |
//! |---|---|---|
//! | VAR | `(1 + t) c - t u`, `t = cfg * si / (K - 1)` | [`var_guidance`], [`linear_ramp`] |
//! | MAR (on eps), LlamaGen (on logits) | `u + s (c - u)` | [`uncond_plus_scaled_diff`] |
//! | AutoNAT | `c + s (c - u)` | [`cond_plus_scaled_diff`] |

use candle_core::{Result, Tensor};

/// VAR: `(1 + t) * cond - t * uncond`.
pub fn var_guidance(cond: &Tensor, uncond: &Tensor, t: f64) -> Result<Tensor> {
    (cond * (1.0 + t))? - (uncond * t)?
}

/// MAR / LlamaGen: `uncond + scale * (cond - uncond)`.
pub fn uncond_plus_scaled_diff(cond: &Tensor, uncond: &Tensor, scale: f64) -> Result<Tensor> {
    uncond + ((cond - uncond)? * scale)?
}

/// AutoNAT: `cond + scale * (cond - uncond)`.
pub fn cond_plus_scaled_diff(cond: &Tensor, uncond: &Tensor, scale: f64) -> Result<Tensor> {
    cond + ((cond - uncond)? * scale)?
}

/// VAR's linear ramp: guidance strength `cfg * step / (steps - 1)` (0 at the first step, `cfg`
/// at the last; `cfg` itself when there is a single step).
pub fn linear_ramp(cfg: f64, step: usize, steps: usize) -> f64 {
    if steps <= 1 {
        cfg
    } else {
        cfg * step as f64 / (steps - 1) as f64
    }
}

/// `[labels ; null_class x B]`: the doubled label batch, conditional rows first.
pub fn double_labels(labels: &[u32], null_class: u32) -> Vec<u32> {
    labels.iter().copied().chain(std::iter::repeat_n(null_class, labels.len())).collect()
}

/// Splits a doubled batch `(2B, ...)` into its conditional and unconditional halves.
pub fn split_halves(x: &Tensor) -> Result<(Tensor, Tensor)> {
    let n = x.dim(0)?;
    if n % 2 != 0 {
        candle_core::bail!("classifier-free guidance batch has odd size {n}");
    }
    Ok((x.narrow(0, 0, n / 2)?, x.narrow(0, n / 2, n / 2)?))
}

/// `(B, ...)` -> `(2B, ...)` by repeating the batch (the same inputs for both halves).
pub fn repeat_batch(x: &Tensor) -> Result<Tensor> {
    Tensor::cat(&[x, x], 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn formulas() {
        let d = Device::Cpu;
        let c = Tensor::new(&[2f32], &d).unwrap();
        let u = Tensor::new(&[1f32], &d).unwrap();
        let v = |t: Tensor| t.to_vec1::<f32>().unwrap()[0];
        assert_eq!(v(var_guidance(&c, &u, 0.5).unwrap()), 2.5);
        assert_eq!(v(uncond_plus_scaled_diff(&c, &u, 3.0).unwrap()), 4.0);
        assert_eq!(v(cond_plus_scaled_diff(&c, &u, 3.0).unwrap()), 5.0);
        assert_eq!(linear_ramp(1.5, 0, 10), 0.0);
        assert_eq!(linear_ramp(1.5, 9, 10), 1.5);
        assert_eq!(linear_ramp(3.0, 1, 4), 1.0);
        assert_eq!(double_labels(&[3, 7], 10), vec![3, 7, 10, 10]);
        let x = Tensor::new(&[1f32, 2., 3., 4.], &d).unwrap();
        let (a, b) = split_halves(&x).unwrap();
        assert_eq!(a.to_vec1::<f32>().unwrap(), vec![1., 2.]);
        assert_eq!(b.to_vec1::<f32>().unwrap(), vec![3., 4.]);
    }
}
