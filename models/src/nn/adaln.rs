//! Adaptive LayerNorm: modulation rows computed from a condition vector.
//!
//! The reference modules are `nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, n * width))`, so the
//! Linear lives at index `1` of the sequential (`ada_lin.1.weight`). The output is viewed as
//! `(B, n, width)`; what each row means is the caller's business:
//! * VAR blocks: n = 6, rows gamma1, gamma2, scale1, scale2, shift1, shift2;
//! * VAR head (`AdaLNBeforeHead`): n = 2, rows scale, shift;
//! * DiT-style blocks (MAR DiffLoss `adaLN_modulation`): n = 3, rows shift, scale, gate.

use crate::nn::linear::RowLinear;
use candle_core::{Module, Result, Tensor};
use candle_nn::{linear, VarBuilder};

/// `Sequential(SiLU, Linear(cond_dim, rows * width))` viewed as `(B, rows, width)`.
#[derive(Clone, Debug)]
pub struct AdaLnModulation {
    lin: RowLinear,
    rows: usize,
    width: usize,
}

impl AdaLnModulation {
    /// `vb` points at the Sequential (e.g. `blocks.0.ada_lin`); the Linear is read from `vb.1`.
    pub fn load(vb: VarBuilder, cond_dim: usize, width: usize, rows: usize) -> Result<Self> {
        Self::load_at(vb, "1", cond_dim, width, rows)
    }

    /// As [`load`](Self::load) with the Linear's sub-module name given explicitly.
    pub fn load_at(vb: VarBuilder, linear_name: &str, cond_dim: usize, width: usize, rows: usize) -> Result<Self> {
        Ok(Self { lin: RowLinear::from_linear(&linear(cond_dim, rows * width, vb.pp(linear_name))?)?, rows, width })
    }

    /// `(B, D)` condition -> `(B, rows, width)` modulation rows.
    pub fn forward(&self, cond: &Tensor) -> Result<Tensor> {
        let b = cond.dim(0)?;
        self.lin.forward(&crate::nn::fast_math::silu(cond)?)?.reshape((b, self.rows, self.width))
    }

    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn width(&self) -> usize {
        self.width
    }
}

/// Row `i` of `(B, rows, C)` modulation as `(B, 1, C)`, ready to broadcast over tokens.
pub fn modulation_row(rows: &Tensor, i: usize) -> Result<Tensor> {
    rows.narrow(1, i, 1)
}

/// `x * (1 + scale) + shift`, broadcasting `scale`/`shift` (e.g. `(B, 1, C)`) over `x`.
pub fn modulate(x: &Tensor, scale: &Tensor, shift: &Tensor) -> Result<Tensor> {
    x.broadcast_mul(&(scale + 1.0)?)?.broadcast_add(shift)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use std::collections::HashMap;

    #[test]
    fn modulation_rows_and_modulate() {
        let dev = Device::Cpu;
        let mut m = HashMap::new();
        // width 1, rows 2: weight (2, 1), bias (2)
        m.insert("1.weight".to_string(), Tensor::new(&[[1f32], [2.]], &dev).unwrap());
        m.insert("1.bias".to_string(), Tensor::new(&[0f32, 1.], &dev).unwrap());
        let ada = AdaLnModulation::load(VarBuilder::from_tensors(m, DType::F32, &dev), 1, 1, 2).unwrap();
        let cond = Tensor::new(&[[1f32]], &dev).unwrap();
        let rows = ada.forward(&cond).unwrap();
        assert_eq!(rows.dims(), &[1, 2, 1]);
        let silu1 = 1.0 / (1.0 + (-1f32).exp());
        let v = rows.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!((v[0] - silu1).abs() < 1e-6 && (v[1] - (2.0 * silu1 + 1.0)).abs() < 1e-6);
        let x = Tensor::new(&[[[2f32]]], &dev).unwrap();
        let y = modulate(&x, &modulation_row(&rows, 0).unwrap(), &modulation_row(&rows, 1).unwrap()).unwrap();
        let y = y.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0];
        assert!((y - (2.0 * (1.0 + v[0]) + v[1])).abs() < 1e-6);
    }
}
