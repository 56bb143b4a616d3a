//! The VQGAN body that taming's `VQModel` and LlamaGen's `VQModel` share: conv encoder, 1x1
//! `quant_conv`, nearest-codebook quantiser, 1x1 `post_quant_conv`, conv decoder. The two
//! tokenizers differ only in module naming, attention placement (both in [`ConvAeConfig`]) and
//! the codebook rule (raw rows or L2-normalised, in [`Codebook`]), so each one builds this with
//! its own config and codebook and adds only its own loading and config parsing.

use crate::nn::conv::{conv2d, Conv2d};
use crate::nn::conv_ae::{ConvAeConfig, Decoder, DecoderTrace, Encoder, EncoderTrace};
use crate::nn::vq::Codebook;
use anyhow::{ensure, Result};
use candle_core::{Module, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

pub struct VqAutoencoder {
    ae: ConvAeConfig,
    embed_dim: usize,
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: Conv2d,
    post_quant_conv: Conv2d,
    codebook: Codebook,
}

impl VqAutoencoder {
    /// `vb` addresses `encoder.*`, `decoder.*`, `quant_conv.*` and `post_quant_conv.*`; the
    /// codebook (`embed_dim`-wide rows) is loaded by the caller, whose rule it follows.
    pub fn load(ae: &ConvAeConfig, embed_dim: usize, codebook: Codebook, vb: VarBuilder) -> Result<Self> {
        let one = Conv2dConfig::default();
        Ok(Self {
            encoder: Encoder::load(ae, vb.pp("encoder"))?,
            decoder: Decoder::load(ae, vb.pp("decoder"))?,
            quant_conv: conv2d(ae.z_channels, embed_dim, 1, one, vb.pp("quant_conv"))?,
            post_quant_conv: conv2d(embed_dim, ae.z_channels, 1, one, vb.pp("post_quant_conv"))?,
            codebook,
            embed_dim,
            ae: ae.clone(),
        })
    }

    /// The codebook as used (rows L2-normalised if the tokenizer's rule says so).
    pub fn codebook(&self) -> &Codebook {
        &self.codebook
    }
    pub fn encoder_forward(&self, image: &Tensor) -> Result<Tensor> {
        Ok(self.encoder.forward(image)?)
    }
    pub fn encoder_forward_traced(&self, image: &Tensor) -> Result<EncoderTrace> {
        Ok(self.encoder.forward_traced(image)?)
    }
    pub fn quant_conv_forward(&self, h: &Tensor) -> Result<Tensor> {
        Ok(self.quant_conv.forward(h)?)
    }

    /// `encode` / `encode_to_z`: image `(B, 3, H, W)` in [-1, 1] -> (quantised map
    /// `(B, e, h, w)`, indices `(B, h*w)` u32 row-major). The map is the codebook entries
    /// themselves (the reference's straight-through `z + (z_q - z)` equals them up to rounding).
    pub fn encode(&self, image: &Tensor) -> Result<(Tensor, Tensor)> {
        let z = self.quant_conv.forward(&self.encoder.forward(image)?)?;
        let (_, _, h, w) = z.dims4()?;
        let indices = self.codebook.nearest_map(&z)?;
        Ok((self.codebook.lookup_map(&indices, h, w)?, indices))
    }

    /// `get_codebook_entry`: indices `(B, h*w)` -> `(B, e, h, w)` codebook rows.
    pub fn codebook_entry(&self, indices: &Tensor, h: usize, w: usize) -> Result<Tensor> {
        Ok(self.codebook.lookup_map(indices, h, w)?)
    }
    pub fn post_quant_conv_forward(&self, q: &Tensor) -> Result<Tensor> {
        Ok(self.post_quant_conv.forward(q)?)
    }
    pub fn decoder_forward_traced(&self, x: &Tensor) -> Result<DecoderTrace> {
        Ok(self.decoder.forward_traced(x)?)
    }

    /// `decode_code` / `decode_to_img`: indices `(B, h*w)` -> image `(B, 3, fh, fw)` in about
    /// [-1, 1], unclamped.
    pub fn decode_code(&self, indices: &Tensor, h: usize, w: usize) -> Result<Tensor> {
        let (_, n) = indices.dims2()?;
        ensure!(n == h * w, "{n} token ids per image do not fill a {h}x{w} grid");
        let q = self.codebook_entry(indices, h, w)?;
        Ok(self.decoder.forward(&self.post_quant_conv.forward(&q)?)?)
    }

    /// Analytic FLOPs of decoding one image from an `h x w` grid: post_quant_conv plus the
    /// decoder (2 x MACs).
    pub fn decoder_flops(&self, h: usize, w: usize) -> f64 {
        crate::flops::conv2d(h, w, self.embed_dim, self.ae.z_channels, 1) + Decoder::flops(&self.ae, (h, w))
    }
}
