//! Feed-forward blocks.
//!
//! * [`Mlp`]: `fc2(act(fc1(x)))`. VAR's `ffn.{fc1,fc2}` (GELU tanh), timm's `mlp.{fc1,fc2}` in MAR
//!   and AutoNAT (exact GELU), taming's `mlp.{0,2}` (exact GELU). The sub-module names are
//!   arguments so each family keeps its checkpoint naming.
//! * [`SwiGlu`]: LlamaGen's `w2(SiLU(w1 x) * w3 x)` without biases.

use crate::nn::linear::RowLinear;
use candle_core::{Module, Result, Tensor};
use candle_nn::{linear, linear_no_bias, Linear, VarBuilder};

/// Element-wise nonlinearity of an MLP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `nn.GELU(approximate='tanh')` (VAR).
    GeluTanh,
    /// `nn.GELU()` (erf form; timm, taming, MAR).
    GeluErf,
    /// `x * sigmoid(x)` (a.k.a. swish).
    Silu,
}

impl Activation {
    pub fn apply(self, x: &Tensor) -> Result<Tensor> {
        match self {
            // Row-parallel vectorised kernels on the CPU (see `nn::fast_math`).
            Self::GeluTanh => crate::nn::fast_math::gelu_tanh(x),
            Self::GeluErf => crate::nn::fast_math::gelu_erf(x),
            Self::Silu => crate::nn::fast_math::silu(x),
        }
    }
}

/// Two-layer MLP `fc2(act(fc1(x)))`.
#[derive(Clone, Debug)]
pub struct Mlp {
    // Row layout (weights transposed once): see `nn::linear` for why it matters for few rows.
    fc1: RowLinear,
    fc2: RowLinear,
    act: Activation,
    hidden: usize,
}

impl Mlp {
    pub fn new(fc1: Linear, fc2: Linear, act: Activation) -> Result<Self> {
        let hidden = fc1.weight().dim(0)?;
        Ok(Self { fc1: RowLinear::from_linear(&fc1)?, fc2: RowLinear::from_linear(&fc2)?, act, hidden })
    }

    /// Loads `<vb>.<fc1_name>.{weight,bias}` `(hidden, in_dim)` and `<vb>.<fc2_name>.*`
    /// `(out_dim, hidden)`.
    pub fn load_named(
        vb: VarBuilder,
        in_dim: usize,
        hidden: usize,
        out_dim: usize,
        act: Activation,
        (fc1_name, fc2_name): (&str, &str),
        bias: bool,
    ) -> Result<Self> {
        let (fc1, fc2) = if bias {
            (linear(in_dim, hidden, vb.pp(fc1_name))?, linear(hidden, out_dim, vb.pp(fc2_name))?)
        } else {
            (linear_no_bias(in_dim, hidden, vb.pp(fc1_name))?, linear_no_bias(hidden, out_dim, vb.pp(fc2_name))?)
        };
        Self::new(fc1, fc2, act)
    }

    /// The common `fc1` / `fc2` naming with biases, `out_dim == in_dim`.
    pub fn load(vb: VarBuilder, dim: usize, hidden: usize, act: Activation) -> Result<Self> {
        Self::load_named(vb, dim, hidden, dim, act, ("fc1", "fc2"), true)
    }

    pub fn hidden(&self) -> usize {
        self.hidden
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.act.apply(&self.fc1.forward(x)?)?;
        self.fc2.forward(&h)
    }
}

/// SwiGLU feed-forward `w2(SiLU(w1 x) * w3 x)` (LlamaGen `feed_forward.{w1,w2,w3}`, no biases).
#[derive(Clone, Debug)]
pub struct SwiGlu {
    w1: RowLinear,
    w3: RowLinear,
    w2: RowLinear,
}

impl SwiGlu {
    pub fn load(vb: VarBuilder, dim: usize, hidden: usize) -> Result<Self> {
        Ok(Self {
            w1: RowLinear::from_linear(&linear_no_bias(dim, hidden, vb.pp("w1"))?)?,
            w3: RowLinear::from_linear(&linear_no_bias(dim, hidden, vb.pp("w3"))?)?,
            w2: RowLinear::from_linear(&linear_no_bias(hidden, dim, vb.pp("w2"))?)?,
        })
    }

    /// LlamaGen's hidden size: `find_multiple(int(2 * 4 * dim / 3), multiple_of)`.
    pub fn llama_hidden(dim: usize, multiple_of: usize) -> usize {
        let h = 2 * 4 * dim / 3;
        h.div_ceil(multiple_of) * multiple_of
    }
}

impl Module for SwiGlu {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gate = crate::nn::fast_math::silu(&self.w1.forward(x)?)?;
        self.w2.forward(&(gate * self.w3.forward(x)?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama_hidden_sizes_match_published_configs() {
        // GPT-B/L/XL/XXL hidden sizes: `w1.out_features` of `FeedForward` in
        // FoundationVision/LlamaGen@ce98ec4 autoregressive/models/gpt.py (dim 768 ... 1536).
        assert_eq!(SwiGlu::llama_hidden(768, 256), 2048);
        assert_eq!(SwiGlu::llama_hidden(1024, 256), 2816);
        assert_eq!(SwiGlu::llama_hidden(1280, 256), 3584);
        assert_eq!(SwiGlu::llama_hidden(1536, 256), 4096);
    }

    #[test]
    fn gelu_variants_differ_as_expected() {
        let x = Tensor::new(&[1.0f32], &candle_core::Device::Cpu).unwrap();
        let t = Activation::GeluTanh.apply(&x).unwrap().to_vec1::<f32>().unwrap()[0];
        let e = Activation::GeluErf.apply(&x).unwrap().to_vec1::<f32>().unwrap()[0];
        assert!((e - 0.841_344_7).abs() < 1e-6, "{e}");
        assert!((t - 0.841_192).abs() < 1e-5, "{t}");
    }
}
