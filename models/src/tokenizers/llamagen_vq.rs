//! LlamaGen's VQ tokenizer (`tokenizer/tokenizer_image/vq_model.py`, `VQ_16`): the shared
//! conv autoencoder in LlamaGen's module layout (`conv_blocks.{i}.res.{j}`, `mid.{0,1,2}`,
//! decoder `conv_blocks.0` = lowest resolution), 1x1 `quant_conv` / `post_quant_conv`, and a
//! codebook whose rows (and the queries) are L2-normalised at use time (`codebook_l2_norm`).
//! The stored rows are not unit-norm: a port that gathered the raw rows would decode wrongly.

use super::vq_autoencoder::VqAutoencoder;
use crate::nn::conv_ae::{ConvAeConfig, NormSpec};
use crate::nn::vq::Codebook;
use crate::reference_config::{from_value_at, yes};
use anyhow::{ensure, Result};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

/// Size of LlamaGen's `quantize.codebook_used` buffer (a fixed 65536-entry usage histogram,
/// whatever the codebook size; unused at inference but present in every checkpoint).
const CODEBOOK_USED_LEN: usize = 65536;

/// A LlamaGen fixture's `vq` section: `VQModel`'s `ModelArgs` and the arguments its Encoder,
/// Decoder and GroupNorms were built with.
#[derive(Deserialize)]
struct VqSection {
    #[serde(rename = "ModelArgs")]
    model_args: VqModelArgs,
    encoder: CoderArgs,
    decoder: CoderArgs,
    #[serde(default)]
    groupnorm: GroupNormArgs,
}

/// `ModelArgs` of vq_model.py (the fields that shape the network).
#[derive(Deserialize)]
struct VqModelArgs {
    codebook_size: usize,
    codebook_embed_dim: usize,
    #[serde(default = "yes")]
    codebook_l2_norm: bool,
    #[serde(default = "yes")]
    codebook_show_usage: bool,
    z_channels: usize,
}

/// `Encoder(...)` / `Decoder(...)` arguments (`in_channels` is the encoder's, `out_channels`
/// the decoder's; both default to RGB).
#[derive(Deserialize)]
struct CoderArgs {
    ch: usize,
    ch_mult: Vec<usize>,
    num_res_blocks: usize,
    z_channels: usize,
    #[serde(default = "rgb")]
    in_channels: usize,
    #[serde(default = "rgb")]
    out_channels: usize,
}

fn rgb() -> usize {
    3
}

/// `nn.GroupNorm(num_groups=32, eps=1e-6)` as vq_model.py's `Normalize` builds it.
#[derive(Deserialize)]
#[serde(default)]
struct GroupNormArgs {
    num_groups: usize,
    eps: f64,
}

impl Default for GroupNormArgs {
    fn default() -> Self {
        Self { num_groups: 32, eps: 1e-6 }
    }
}

/// `VQModel`'s constructor arguments plus the Encoder/Decoder widths.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LlamaGenVqConfig {
    pub codebook_size: usize,
    pub codebook_embed_dim: usize,
    pub codebook_l2_norm: bool,
    /// The checkpoint carries `quantize.codebook_used` (codebook_show_usage).
    pub codebook_show_usage: bool,
    pub z_channels: usize,
    pub ch: usize,
    pub ch_mult: Vec<usize>,
    pub num_res_blocks: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub norm_groups: usize,
    pub norm_eps: f64,
}

impl LlamaGenVqConfig {
    /// The published VQ-16 (`vq_ds16_c2i.pt`): 16384 x 8 codebook, ch 128, ch_mult (1,1,2,2,4),
    /// z 256, 2 res blocks, GroupNorm(32, 1e-6).
    pub fn vq_16() -> Self {
        Self {
            codebook_size: 16384,
            codebook_embed_dim: 8,
            codebook_l2_norm: true,
            codebook_show_usage: true,
            z_channels: 256,
            ch: 128,
            ch_mult: vec![1, 1, 2, 2, 4],
            num_res_blocks: 2,
            in_channels: 3,
            out_channels: 3,
            norm_groups: 32,
            norm_eps: 1e-6,
        }
    }

    /// Reads the fixture-format `vq` section (`ModelArgs`, `encoder`, `decoder`, `groupnorm`).
    pub fn from_reference_json(v: &serde_json::Value) -> Result<Self> {
        let VqSection { model_args: args, encoder: enc, decoder: dec, groupnorm: gn } = from_value_at(v, "vq")?;
        ensure!(enc.ch_mult == dec.ch_mult, "vq: encoder ch_mult {:?} differs from decoder ch_mult {:?}", enc.ch_mult, dec.ch_mult);
        ensure!(enc.ch == dec.ch, "vq: encoder and decoder ch differ");
        ensure!(enc.num_res_blocks == dec.num_res_blocks, "vq: encoder and decoder num_res_blocks differ");
        ensure!(
            enc.z_channels == args.z_channels && dec.z_channels == args.z_channels,
            "vq: z_channels disagree between ModelArgs, encoder and decoder"
        );
        let cfg = Self {
            codebook_size: args.codebook_size,
            codebook_embed_dim: args.codebook_embed_dim,
            codebook_l2_norm: args.codebook_l2_norm,
            codebook_show_usage: args.codebook_show_usage,
            z_channels: args.z_channels,
            ch: enc.ch,
            ch_mult: enc.ch_mult,
            num_res_blocks: enc.num_res_blocks,
            in_channels: enc.in_channels,
            out_channels: dec.out_channels,
            norm_groups: gn.num_groups,
            norm_eps: gn.eps,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        ensure!(!self.ch_mult.is_empty(), "vq: ch_mult is empty");
        ensure!(self.codebook_size > 0 && self.codebook_embed_dim > 0, "vq: empty codebook");
        ensure!(self.in_channels == self.out_channels, "vq: in_channels {} != out_channels {}", self.in_channels, self.out_channels);
        Ok(())
    }

    /// Spatial downsampling factor (16 for VQ-16).
    pub fn downsample_factor(&self) -> usize {
        1 << (self.ch_mult.len() - 1)
    }

    /// The shared conv-autoencoder layout: LlamaGen naming, separate q/k/v attention convs,
    /// attention after every res block of the lowest-resolution level and in the middle,
    /// `num_res_blocks + 1` res blocks per decoder level.
    pub fn conv_ae(&self) -> ConvAeConfig {
        let n = self.ch_mult.len();
        ConvAeConfig {
            image_channels: self.in_channels,
            ch: self.ch,
            ch_mult: self.ch_mult.clone(),
            encoder_res_blocks: self.num_res_blocks,
            decoder_res_blocks: self.num_res_blocks + 1,
            z_channels: self.z_channels,
            double_z: false,
            encoder_attn: ConvAeConfig::lowest_level_only(n, true),
            decoder_attn: ConvAeConfig::lowest_level_only(n, true),
            norm: NormSpec { groups: self.norm_groups, eps: self.norm_eps },
            ..ConvAeConfig::llamagen_vq16()
        }
    }
}

/// The VQ-16 model: the shared VQGAN body in LlamaGen's layout; its encode / decode methods
/// are those of [`VqAutoencoder`] (through `Deref`).
pub struct LlamaGenVq {
    cfg: LlamaGenVqConfig,
    body: VqAutoencoder,
}

impl LlamaGenVq {
    /// `vb` addresses `vq_ds16_c2i.pt["model"]` (`encoder.*`, `decoder.*`, `quantize.*`, ...).
    pub fn new(cfg: &LlamaGenVqConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let e = cfg.codebook_embed_dim;
        let codebook = Codebook::load(vb.pp("quantize").pp("embedding"), cfg.codebook_size, e, cfg.codebook_l2_norm)?;
        if cfg.codebook_show_usage {
            // Read (and drop) so the strict loader accounts for it and a wrong file is caught.
            let _ = vb.pp("quantize").get(CODEBOOK_USED_LEN, "codebook_used")?;
        }
        Ok(Self { body: VqAutoencoder::load(&cfg.conv_ae(), e, codebook, vb)?, cfg: cfg.clone() })
    }

    pub fn config(&self) -> &LlamaGenVqConfig {
        &self.cfg
    }
}

impl std::ops::Deref for LlamaGenVq {
    type Target = VqAutoencoder;
    fn deref(&self) -> &VqAutoencoder {
        &self.body
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::conv_ae::Decoder;

    #[test]
    fn vq16_decoder_flops_match_reference() {
        // `post_quant_conv` + `decoder` of `VQ_16` (FoundationVision/LlamaGen@ce98ec4
        // tokenizer/tokenizer_image/vq_model.py) at a 16x16 / 24x24 latent (256 / 384 px):
        // 252.72 / 570.12 GFLOP by torch.utils.flop_counter.
        let cfg = LlamaGenVqConfig::vq_16();
        let dec = |g: usize| (crate::flops::conv2d(g, g, 8, 256, 1) + Decoder::flops(&cfg.conv_ae(), (g, g))) / 1e9;
        assert!((dec(16) - 252.7).abs() < 0.5, "{}", dec(16));
        assert!((dec(24) - 570.1).abs() < 1.0, "{}", dec(24));
    }
}
