//! The taming-transformers VQGAN (`taming/models/vqgan.py: VQModel`), f16 ImageNet models with
//! 1024 or 16384 codes: the shared conv autoencoder in the taming layout (`down.{i}.block.{j}`,
//! decoder `up.{i}` indexed by resolution level), attention placed by the CONFIG resolution
//! (`curr_res in attn_resolutions`), 1x1 `quant_conv` / `post_quant_conv`, and the legacy
//! `VectorQuantizer2` (plain squared-L2 argmin over raw rows, no normalisation).

use super::vq_autoencoder::VqAutoencoder;
use crate::nn::conv_ae::{AttnQkv, ConvAeConfig, ModuleNaming, NormSpec};
use crate::nn::vq::Codebook;
use crate::reference_config::from_value_at;
use anyhow::{ensure, Result};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

/// `VQModel(ddconfig, lossconfig, n_embed, embed_dim)` keyword arguments as a config file
/// writes them (`first_stage_config.params`): the fields that shape the network.
#[derive(Deserialize)]
pub struct VqganParams {
    embed_dim: usize,
    n_embed: usize,
    ddconfig: VqganDdconfig,
}

/// The `ddconfig` the taming Encoder/Decoder are built with.
#[derive(Deserialize)]
struct VqganDdconfig {
    z_channels: usize,
    resolution: usize,
    in_channels: usize,
    out_ch: usize,
    ch: usize,
    ch_mult: Vec<usize>,
    num_res_blocks: usize,
    attn_resolutions: Vec<usize>,
    #[serde(default)]
    double_z: bool,
}

impl VqganParams {
    /// The validated configuration.
    pub fn into_config(self) -> Result<TamingVqganConfig> {
        let dd = self.ddconfig;
        ensure!(!dd.double_z, "vqgan: double_z is a KL-autoencoder setting, not a VQGAN one");
        let cfg = TamingVqganConfig {
            embed_dim: self.embed_dim,
            n_embed: self.n_embed,
            z_channels: dd.z_channels,
            resolution: dd.resolution,
            in_channels: dd.in_channels,
            out_ch: dd.out_ch,
            ch: dd.ch,
            ch_mult: dd.ch_mult,
            num_res_blocks: dd.num_res_blocks,
            attn_resolutions: dd.attn_resolutions,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// `VQModel(embed_dim, n_embed, ddconfig)` (the `ddconfig` fields that shape the network).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TamingVqganConfig {
    pub embed_dim: usize,
    pub n_embed: usize,
    pub z_channels: usize,
    /// The config's nominal image size; with `attn_resolutions` it decides where attention is.
    pub resolution: usize,
    pub in_channels: usize,
    pub out_ch: usize,
    pub ch: usize,
    pub ch_mult: Vec<usize>,
    pub num_res_blocks: usize,
    pub attn_resolutions: Vec<usize>,
}

impl TamingVqganConfig {
    /// `vqgan_imagenet_f16_1024` / `vqgan_imagenet_f16_16384` (`configs/imagenet_vqgan.yaml`):
    /// embed_dim 256, z 256, ch 128, ch_mult `[1, 1, 2, 2, 4]`, 2 res blocks, attention at 16 px.
    pub fn f16(n_embed: usize) -> Self {
        Self {
            embed_dim: 256,
            n_embed,
            z_channels: 256,
            resolution: 256,
            in_channels: 3,
            out_ch: 3,
            ch: 128,
            ch_mult: vec![1, 1, 2, 2, 4],
            num_res_blocks: 2,
            attn_resolutions: vec![16],
        }
    }

    /// Reads `first_stage_config.params` (`embed_dim`, `n_embed`, `ddconfig`).
    pub fn from_reference_json(p: &serde_json::Value) -> Result<Self> {
        from_value_at::<VqganParams>(p, "first_stage_config.params")?.into_config()
    }

    pub fn validate(&self) -> Result<()> {
        ensure!(!self.ch_mult.is_empty(), "vqgan: ch_mult is empty");
        ensure!(self.n_embed > 0 && self.embed_dim > 0, "vqgan: empty codebook");
        ensure!(self.in_channels == self.out_ch, "vqgan: in_channels {} != out_ch {}", self.in_channels, self.out_ch);
        Ok(())
    }

    pub fn downsample_factor(&self) -> usize {
        1 << (self.ch_mult.len() - 1)
    }

    /// Per level: does `curr_res = resolution / 2^i` appear in `attn_resolutions`.
    pub fn attn_levels(&self) -> Vec<bool> {
        (0..self.ch_mult.len()).map(|i| self.attn_resolutions.contains(&(self.resolution >> i))).collect()
    }

    pub fn conv_ae(&self) -> ConvAeConfig {
        ConvAeConfig {
            image_channels: self.in_channels,
            ch: self.ch,
            ch_mult: self.ch_mult.clone(),
            encoder_res_blocks: self.num_res_blocks,
            decoder_res_blocks: self.num_res_blocks + 1,
            z_channels: self.z_channels,
            double_z: false,
            encoder_attn: self.attn_levels(),
            decoder_attn: self.attn_levels(),
            mid_attn: true,
            attn_qkv: AttnQkv::Separate,
            naming: ModuleNaming::Taming,
            norm: NormSpec::default(),
        }
    }
}

/// The taming VQGAN: the shared VQGAN body in taming's layout with raw codebook rows; its
/// encode / decode methods are those of [`VqAutoencoder`] (through `Deref`).
pub struct TamingVqgan {
    cfg: TamingVqganConfig,
    body: VqAutoencoder,
}

impl TamingVqgan {
    /// `vb` addresses the VQGAN weights without prefix (`encoder.*`, `quantize.embedding.weight`,
    /// ...; the cin checkpoint's `first_stage_model.` stripped, `loss.*` never read).
    pub fn new(cfg: &TamingVqganConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let codebook = Codebook::load(vb.pp("quantize").pp("embedding"), cfg.n_embed, cfg.embed_dim, false)?;
        Ok(Self { body: VqAutoencoder::load(&cfg.conv_ae(), cfg.embed_dim, codebook, vb)?, cfg: cfg.clone() })
    }

    pub fn config(&self) -> &TamingVqganConfig {
        &self.cfg
    }
}

impl std::ops::Deref for TamingVqgan {
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
    fn attention_follows_config_resolution() {
        assert_eq!(TamingVqganConfig::f16(1024).attn_levels(), vec![false, false, false, false, true]);
        let mut c = TamingVqganConfig::f16(1024);
        c.resolution = 64;
        c.attn_resolutions = vec![4];
        assert_eq!(c.attn_levels(), vec![false, false, false, false, true]);
        c.attn_resolutions = vec![32];
        assert_eq!(c.attn_levels(), vec![false, true, false, false, false]);
    }

    #[test]
    fn f16_decoder_flops_match_reference() {
        // `post_quant_conv` + `Decoder` (CompVis/taming-transformers@3ba01b2
        // taming/modules/diffusionmodules/model.py, configs/imagenet_vqgan.yaml) at a 16x16
        // latent (256 px): 252.75 GFLOP by torch.utils.flop_counter.
        let c = TamingVqganConfig::f16(16384);
        let gf = (crate::flops::conv2d(16, 16, 256, 256, 1) + Decoder::flops(&c.conv_ae(), (16, 16))) / 1e9;
        assert!((gf - 252.8).abs() < 0.5, "{gf}");
    }
}
