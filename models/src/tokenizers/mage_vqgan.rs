//! The MAGE port of the MaskGIT (JAX) VQGAN tokenizer, as AutoNAT uses it
//! (`vqgan_jax_strongaug.ckpt`; LeapLabTHU/ImprovedNAT@2ca9994 `taming/models/vqgan.py` with
//! `taming/modules/diffusionmodules/model.py`, config `configs/vq-f16-jax.yaml`).
//!
//! It differs from the taming/LDM autoencoder (taming/modules/diffusionmodules/model.py of
//! CompVis/taming-transformers@3ba01b2 against that of LeapLabTHU/ImprovedNAT@2ca9994): no
//! attention anywhere (the config's `attn_resolutions` is ignored), no quant / post-quant
//! convs, bias-free ResnetBlock convs with the shortcut applied to the residual branch
//! ([`ResnetBlock::load_mage`]), 2x2 average-pool downsampling, a 1x1 encoder `conv_out`,
//! `num_res_blocks` (not + 1) decoder blocks per level, and images in [0, 1] (the decoder
//! output is not clamped here; the reference clamps before Inception).

use crate::checkpoint::StrictWeights;
use crate::flops;
use crate::nn::conv::{conv2d, conv2d_no_bias, Conv2d};
use crate::nn::conv_ae::{NormSpec, ResnetBlock, Upsample};
use crate::nn::norm::GroupNorm;
use crate::nn::vq::Codebook;
use crate::reference_config::from_value_at;
use anyhow::{ensure, Context, Result};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// taming `VQModel(ddconfig, n_embed, embed_dim)` keyword arguments as a config writes them.
#[derive(Deserialize)]
struct VqModelKwargs {
    ddconfig: VqModelDdconfig,
    n_embed: usize,
    embed_dim: usize,
}

/// The `ddconfig` fields that shape the MAGE Encoder/Decoder (`attn_resolutions` is ignored:
/// they have no attention).
#[derive(Deserialize)]
struct VqModelDdconfig {
    ch: usize,
    ch_mult: Vec<usize>,
    num_res_blocks: usize,
    z_channels: usize,
    resolution: usize,
    in_channels: usize,
    out_ch: usize,
    #[serde(default)]
    double_z: bool,
}

/// `VQModel(ddconfig, n_embed, embed_dim)` arguments that fix the network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MageVqganConfig {
    pub ch: usize,
    pub ch_mult: Vec<usize>,
    pub num_res_blocks: usize,
    pub z_channels: usize,
    /// Image side in pixels.
    pub resolution: usize,
    pub in_channels: usize,
    pub out_ch: usize,
    /// Codebook entries.
    pub n_embed: usize,
    /// Codebook vector size (equal to `z_channels`: there is no quant conv).
    pub embed_dim: usize,
}

impl MageVqganConfig {
    /// `configs/vq-f16-jax.yaml`: 256 px, f16, 1024 x 256 codebook; 54,515,587 parameters.
    pub fn maskgit_f16_256() -> Self {
        Self {
            ch: 128,
            ch_mult: vec![1, 1, 2, 2, 4],
            num_res_blocks: 2,
            z_channels: 256,
            resolution: 256,
            in_channels: 3,
            out_ch: 3,
            n_embed: 1024,
            embed_dim: 256,
        }
    }

    /// From taming `VQModel` kwargs as JSON: `{"ddconfig": {...}, "n_embed": .., "embed_dim": ..}`.
    pub fn from_taming_kwargs(kwargs: &serde_json::Value) -> Result<Self> {
        let VqModelKwargs { ddconfig: dd, n_embed, embed_dim } = from_value_at(kwargs, "")?;
        ensure!(!dd.double_z, "the MAGE VQGAN has double_z = false");
        Ok(Self {
            ch: dd.ch,
            ch_mult: dd.ch_mult,
            num_res_blocks: dd.num_res_blocks,
            z_channels: dd.z_channels,
            resolution: dd.resolution,
            in_channels: dd.in_channels,
            out_ch: dd.out_ch,
            n_embed,
            embed_dim,
        })
    }

    pub fn levels(&self) -> usize {
        self.ch_mult.len()
    }
    /// Latent grid side (`resolution / 2^(levels-1)`).
    pub fn latent_side(&self) -> usize {
        self.resolution >> (self.levels() - 1)
    }
    fn level_channels(&self, i: usize) -> usize {
        self.ch * self.ch_mult[i]
    }

    fn validate(&self) -> Result<()> {
        ensure!(!self.ch_mult.is_empty(), "MAGE VQGAN: empty ch_mult");
        ensure!(
            self.embed_dim == self.z_channels,
            "MAGE VQGAN has no quant conv: embed_dim ({}) must equal z_channels ({})",
            self.embed_dim,
            self.z_channels
        );
        ensure!(
            self.resolution.is_multiple_of(1 << (self.levels() - 1)),
            "resolution {} is not divisible by the down-sampling factor",
            self.resolution
        );
        Ok(())
    }

    /// Analytic decoder FLOPs per image (convs only, 2 x MACs): 186.55 GFLOP for the published
    /// 256 px configuration, as torch.utils.flop_counter counts the reference decoder.
    pub fn decoder_flops(&self) -> f64 {
        let mut side = self.latent_side();
        let top = self.level_channels(self.levels() - 1);
        let mut f = flops::conv2d(side, side, self.z_channels, top, 3);
        f += 2.0 * ResnetBlock::flops_mage(top, top, (side, side));
        let mut block_in = top;
        for i in (0..self.levels()).rev() {
            let out = self.level_channels(i);
            for _ in 0..self.num_res_blocks {
                f += ResnetBlock::flops_mage(block_in, out, (side, side));
                block_in = out;
            }
            if i != 0 {
                side *= 2;
                f += flops::conv2d(side, side, block_in, block_in, 3);
            }
        }
        f + flops::conv2d(side, side, block_in, self.out_ch, 3)
    }
}

fn conv3(vb: VarBuilder, cin: usize, cout: usize, bias: bool) -> candle_core::Result<Conv2d> {
    let cfg = Conv2dConfig { padding: 1, ..Default::default() };
    if bias {
        conv2d(cin, cout, 3, cfg, vb)
    } else {
        conv2d_no_bias(cin, cout, 3, cfg, vb)
    }
}

/// The encoder: `conv_in` (no bias), per level `num_res_blocks` blocks then 2x2 average
/// pooling (not after the last level), `mid.block_{1,2}`, `norm_out`, swish, 1x1 `conv_out`.
#[derive(Clone, Debug)]
pub struct MageEncoder {
    conv_in: Conv2d,
    levels: Vec<Vec<ResnetBlock>>,
    mid: [ResnetBlock; 2],
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

/// The decoder: `conv_in`, `mid.block_{1,2}`, levels from the lowest resolution up (stored as
/// `up.{i}` with `up.{levels-1}` run first), each `num_res_blocks` blocks and (except level 0)
/// nearest x2 + 3x3 conv, `norm_out`, swish, `conv_out`.
#[derive(Clone, Debug)]
pub struct MageDecoder {
    conv_in: Conv2d,
    mid: [ResnetBlock; 2],
    /// Indexed by level (0 = full resolution), as stored.
    up: Vec<(Vec<ResnetBlock>, Option<Upsample>)>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

/// Intermediate outputs recorded by the traced encode / decode (the fixture's hook points).
#[derive(Clone, Debug)]
pub struct VqTrace {
    pub encoder_mid: Option<Tensor>,
    pub decoder_conv_in: Option<Tensor>,
    pub decoder_mid: Option<Tensor>,
    /// Output of the lowest-resolution decoder level's last block, before its upsample.
    pub decoder_lowest_level: Option<Tensor>,
}

/// The tokenizer: encoder, codebook, decoder.
#[derive(Clone, Debug)]
pub struct MageVqgan {
    cfg: MageVqganConfig,
    encoder: MageEncoder,
    decoder: MageDecoder,
    codebook: Codebook,
}

impl MageVqgan {
    /// Loads with the checkpoint's names (`encoder.*`, `decoder.*`, `quantize.embedding.weight`).
    pub fn load(cfg: &MageVqganConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let norm = NormSpec::default();
        let n = cfg.levels();

        let e = vb.pp("encoder");
        let conv_in = conv3(e.pp("conv_in"), cfg.in_channels, cfg.ch, false)?;
        let mut levels = Vec::with_capacity(n);
        let mut block_in = cfg.ch;
        for i in 0..n {
            let out = cfg.level_channels(i);
            let mut blocks = Vec::with_capacity(cfg.num_res_blocks);
            for j in 0..cfg.num_res_blocks {
                blocks.push(ResnetBlock::load_mage(e.pp("down").pp(i).pp("block").pp(j), block_in, out, norm)?);
                block_in = out;
            }
            levels.push(blocks);
        }
        let mid = [
            ResnetBlock::load_mage(e.pp("mid").pp("block_1"), block_in, block_in, norm)?,
            ResnetBlock::load_mage(e.pp("mid").pp("block_2"), block_in, block_in, norm)?,
        ];
        let encoder = MageEncoder {
            conv_in,
            levels,
            mid,
            norm_out: GroupNorm::load(norm.groups, block_in, norm.eps, e.pp("norm_out"))?,
            conv_out: conv2d(block_in, cfg.z_channels, 1, Default::default(), e.pp("conv_out"))?,
        };

        let d = vb.pp("decoder");
        let mut block_in = cfg.level_channels(n - 1);
        let conv_in = conv3(d.pp("conv_in"), cfg.z_channels, block_in, true)?;
        let mid = [
            ResnetBlock::load_mage(d.pp("mid").pp("block_1"), block_in, block_in, norm)?,
            ResnetBlock::load_mage(d.pp("mid").pp("block_2"), block_in, block_in, norm)?,
        ];
        let mut up_rev = Vec::with_capacity(n);
        for i in (0..n).rev() {
            let out = cfg.level_channels(i);
            let mut blocks = Vec::with_capacity(cfg.num_res_blocks);
            for j in 0..cfg.num_res_blocks {
                blocks.push(ResnetBlock::load_mage(d.pp("up").pp(i).pp("block").pp(j), block_in, out, norm)?);
                block_in = out;
            }
            let upsample = if i != 0 { Some(Upsample::load(d.pp("up").pp(i).pp("upsample"), block_in)?) } else { None };
            up_rev.push((blocks, upsample));
        }
        up_rev.reverse();
        let decoder = MageDecoder {
            conv_in,
            mid,
            up: up_rev,
            norm_out: GroupNorm::load(norm.groups, block_in, norm.eps, d.pp("norm_out"))?,
            conv_out: conv3(d.pp("conv_out"), block_in, cfg.out_ch, true)?,
        };
        let codebook = Codebook::load(vb.pp("quantize").pp("embedding"), cfg.n_embed, cfg.embed_dim, false)?;
        Ok(Self { cfg: cfg.clone(), encoder, decoder, codebook })
    }

    /// Loads `vqgan_jax_strongaug.ckpt` as published: a flat state dict, or one nested under
    /// `"state_dict"` (`VQModel.init_from_ckpt`); strict (missing, mis-shaped and unused
    /// tensors are errors).
    pub fn load_file(cfg: &MageVqganConfig, path: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let weights = StrictWeights::open(path, &["state_dict", ""], &[], device)?;
        let model = Self::load(cfg, weights.var_builder(dtype, device))
            .with_context(|| format!("loading the MAGE VQGAN from {}", path.display()))?;
        weights.ensure_all_used(|_| false)?;
        Ok(model)
    }

    pub fn config(&self) -> &MageVqganConfig {
        &self.cfg
    }
    pub fn codebook(&self) -> &Codebook {
        &self.codebook
    }
    pub fn decoder_flops(&self) -> f64 {
        self.cfg.decoder_flops()
    }

    /// `encoder(x)` for images `(B, 3, H, W)` in [0, 1]: the quantiser input `(B, z, h, w)`.
    pub fn encode_features(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.encode_impl(x, None)?)
    }

    /// Token ids `(B, h*w)` u32 (row-major positions, `VQModel.encode(x)[-1][-1]` reshaped).
    pub fn encode(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.codebook.nearest_map(&self.encode_features(x)?)?)
    }

    /// As [`encode_features`](Self::encode_features), also returning the output of
    /// `encoder.mid.block_2`.
    pub fn encode_traced(&self, x: &Tensor) -> Result<(Tensor, VqTrace)> {
        let mut trace = VqTrace::empty();
        let z = self.encode_impl(x, Some(&mut trace))?;
        Ok((z, trace))
    }

    fn encode_impl(&self, x: &Tensor, trace: Option<&mut VqTrace>) -> candle_core::Result<Tensor> {
        let e = &self.encoder;
        let mut h = e.conv_in.forward(x)?;
        let last = e.levels.len() - 1;
        for (i, blocks) in e.levels.iter().enumerate() {
            for b in blocks {
                h = b.forward(&h)?;
            }
            if i != last {
                h = h.avg_pool2d(2)?;
            }
        }
        h = e.mid[1].forward(&e.mid[0].forward(&h)?)?;
        if let Some(t) = trace {
            t.encoder_mid = Some(h.clone());
        }
        e.conv_out.forward(&e.norm_out.forward_swish(&h)?)
    }

    /// The decoder on a latent map `(B, z, h, w)`: images `(B, 3, H, W)`, unclamped.
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        Ok(self.decode_impl(z, None)?)
    }

    /// `decode_code`: ids `(B, h*w)` (any integer dtype) -> codebook rows -> decoder.
    pub fn decode_code(&self, ids: &Tensor) -> Result<Tensor> {
        let side = self.cfg.latent_side();
        self.decode(&self.codebook.lookup_map(&ids.to_dtype(DType::U32)?, side, side)?)
    }

    /// As [`decode`](Self::decode), recording `decoder.conv_in`, `decoder.mid.block_2` and the
    /// lowest-resolution level's output.
    pub fn decode_traced(&self, z: &Tensor) -> Result<(Tensor, VqTrace)> {
        let mut trace = VqTrace::empty();
        let img = self.decode_impl(z, Some(&mut trace))?;
        Ok((img, trace))
    }

    fn decode_impl(&self, z: &Tensor, mut trace: Option<&mut VqTrace>) -> candle_core::Result<Tensor> {
        let d = &self.decoder;
        let mut h = d.conv_in.forward(z)?;
        if let Some(t) = trace.as_deref_mut() {
            t.decoder_conv_in = Some(h.clone());
        }
        h = d.mid[1].forward(&d.mid[0].forward(&h)?)?;
        if let Some(t) = trace.as_deref_mut() {
            t.decoder_mid = Some(h.clone());
        }
        let lowest = d.up.len() - 1;
        for (i, (blocks, upsample)) in d.up.iter().enumerate().rev() {
            for b in blocks {
                h = b.forward(&h)?;
            }
            if i == lowest {
                if let Some(t) = trace.as_deref_mut() {
                    t.decoder_lowest_level = Some(h.clone());
                }
            }
            if let Some(u) = upsample {
                h = u.forward(&h)?;
            }
        }
        d.conv_out.forward(&d.norm_out.forward_swish(&h)?)
    }
}

impl VqTrace {
    fn empty() -> Self {
        Self { encoder_mid: None, decoder_conv_in: None, decoder_mid: None, decoder_lowest_level: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_decoder_flops() {
        // The decoder of `VQModel(**configs/vq-f16-jax.yaml)` (LeapLabTHU/ImprovedNAT@2ca9994
        // taming/models/vqgan.py) at a 16x16 latent: 186.55 GFLOP by torch.utils.flop_counter
        // (convolutions only: it has no attention), 186.6 to one decimal. Any miscounted layer
        // would be off by >= 0.13 GFLOP (the smallest conv, the 1x1 shortcut at 32x32).
        let f = MageVqganConfig::maskgit_f16_256().decoder_flops() / 1e9;
        assert!((f - 186.6).abs() < 0.1, "{f}");
        assert_eq!(MageVqganConfig::maskgit_f16_256().latent_side(), 16);
    }
}
