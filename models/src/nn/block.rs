//! Pre-LayerNorm transformer block: `x = x + attn(norm1(x)); x = x + mlp(norm2(x))`.
//!
//! timm's `vision_transformer.Block` (MAR encoder/decoder, AutoNAT/U-ViT) with
//! `norm1`, `attn.{qkv,proj}`, `norm2`, `mlp.{fc1,fc2}`, exact GELU and no layer scale /
//! drop-path at inference; taming's minGPT block has the same shape with other names
//! (`ln1`, `attn.{query,key,value,proj}`, `ln2`, `mlp.{0,2}`), so the parts are public and the
//! block can be assembled from them.

use super::attention::MultiHeadAttention;
use super::elementwise::add;
use super::mlp::{Activation, Mlp};
use super::norm::LayerNorm;
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

#[derive(Clone, Debug)]
pub struct PreNormBlock {
    pub norm1: LayerNorm,
    pub attn: MultiHeadAttention,
    pub norm2: LayerNorm,
    pub mlp: Mlp,
}

impl PreNormBlock {
    /// timm `Block(dim, num_heads, mlp_ratio, qkv_bias, norm_layer=LayerNorm(eps))`: fused
    /// `attn.qkv` (bias as given) and `attn.proj` (bias), `mlp.fc1` / `mlp.fc2` with biases and
    /// exact GELU, hidden `int(dim * mlp_ratio)`.
    pub fn load_timm(vb: VarBuilder, dim: usize, num_heads: usize, mlp_ratio: f64, qkv_bias: bool, eps: f64) -> Result<Self> {
        let hidden = (dim as f64 * mlp_ratio) as usize;
        Ok(Self {
            norm1: LayerNorm::load(dim, eps, vb.pp("norm1"))?,
            attn: MultiHeadAttention::load_fused(vb.pp("attn"), dim, num_heads, ("qkv", "proj"), qkv_bias, true)?,
            norm2: LayerNorm::load(dim, eps, vb.pp("norm2"))?,
            mlp: Mlp::load(vb.pp("mlp"), dim, hidden, Activation::GeluErf)?,
        })
    }

    /// Bidirectional forward over `(B, T, C)` with an optional additive attention mask.
    pub fn forward_masked(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        // Residual adds through `elementwise::add` (multi-threaded on the CPU).
        let x = add(x, &self.attn.forward(&self.norm1.forward(x)?, mask, None)?)?;
        add(&x, &self.mlp.forward(&self.norm2.forward(&x)?)?)
    }
}

impl Module for PreNormBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_masked(x, None)
    }
}
