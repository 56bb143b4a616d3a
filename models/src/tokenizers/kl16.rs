//! The LDM KL-16 autoencoder MAR generates in (LTH14/mar `models/vae.py`, `AutoencoderKL`):
//! a conv encoder to `2·embed_dim` moments, `quant_conv` (1×1), a diagonal Gaussian posterior
//! with log-variance clamped to [-30, 20]; decode = `decoder(post_quant_conv(z))`.
//! MAR's tokens are latents times [`LATENT_SCALE`]; images come out in [-1, 1] (not clamped).
//!
//! The published file `kl16.ckpt` is `torch.save({"model": state_dict})`.

use crate::checkpoint::StrictWeights;
use crate::nn::conv::{conv2d, Conv2d};
use crate::nn::conv_ae::{ConvAeConfig, Decoder, Encoder};
use crate::reference_config::{from_value_at, yes};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};
use genbench_runtime::checkpoint::TorchCheckpoint;
use serde::Deserialize;
use std::path::Path;

/// `vae_embed_dim`-latent scale MAR trains and samples with (tokens = latent · 0.2325).
pub const LATENT_SCALE: f64 = 0.2325;
/// Entry of `kl16.ckpt` holding the weights.
pub const CHECKPOINT_KEY: &str = "model";

/// A MAR fixture's `tokenizer` object: `AutoencoderKL(embed_dim, ch_mult)` and the arguments
/// its Encoder and Decoder were built with.
#[derive(Deserialize)]
struct Kl16Json {
    encoder_kwargs: EncoderKwargs,
    decoder_kwargs: DecoderKwargs,
    kwargs: AutoencoderKwargs,
    #[serde(default = "default_latent_scale")]
    latent_scale: f64,
}

#[derive(Deserialize)]
struct AutoencoderKwargs {
    embed_dim: usize,
}

/// `Encoder(...)` arguments that shape it (LDM's `double_z` defaults to true).
#[derive(Deserialize)]
struct EncoderKwargs {
    ch: usize,
    ch_mult: Vec<usize>,
    num_res_blocks: usize,
    z_channels: usize,
    resolution: usize,
    in_channels: usize,
    #[serde(default)]
    attn_resolutions: Vec<usize>,
    #[serde(default = "yes")]
    double_z: bool,
}

/// `Decoder(...)` arguments that shape it.
#[derive(Deserialize)]
struct DecoderKwargs {
    ch: usize,
    ch_mult: Vec<usize>,
    num_res_blocks: usize,
    z_channels: usize,
    resolution: usize,
    #[serde(default)]
    attn_resolutions: Vec<usize>,
}

fn default_latent_scale() -> f64 {
    LATENT_SCALE
}

/// Level i runs at the nominal resolution `resolution / 2^i` and gets attention if that is
/// listed in `attn_resolutions` (the reference's rule).
fn attention_levels(resolution: usize, attn_resolutions: &[usize], levels: usize) -> Vec<bool> {
    (0..levels).map(|i| attn_resolutions.contains(&(resolution >> i))).collect()
}

#[derive(Clone, Debug, PartialEq)]
pub struct Kl16Config {
    /// Latent channels (`embed_dim`, = the encoder's `z_channels`).
    pub embed_dim: usize,
    pub ae: ConvAeConfig,
    pub latent_scale: f64,
}

impl Kl16Config {
    /// `AutoencoderKL(embed_dim=16, ch_mult=(1, 1, 2, 2, 4))` as released with MAR.
    pub fn published() -> Self {
        Self { embed_dim: 16, ae: ConvAeConfig::ldm_kl16(), latent_scale: LATENT_SCALE }
    }

    /// From the reference `Encoder` / `Decoder` keyword arguments (the `tokenizer` object of a
    /// fixture `config.json`: `encoder_kwargs`, `decoder_kwargs`, `kwargs.embed_dim`,
    /// `latent_scale`). Attention levels follow the reference's rule: level i runs at the
    /// nominal resolution `resolution / 2^i` and gets attention if that is listed.
    pub fn from_reference_kwargs(tokenizer: &serde_json::Value) -> Result<Self> {
        let Kl16Json { encoder_kwargs: enc, decoder_kwargs: dec, kwargs, latent_scale } = from_value_at(tokenizer, "tokenizer")?;
        let embed_dim = kwargs.embed_dim;
        if dec.ch_mult != enc.ch_mult || dec.ch != enc.ch {
            bail!("tokenizer config: encoder and decoder channel layouts differ");
        }
        if enc.z_channels != embed_dim || dec.z_channels != embed_dim {
            bail!("tokenizer config: z_channels ({}) must equal embed_dim ({embed_dim})", enc.z_channels);
        }
        let levels = enc.ch_mult.len();
        let ae = ConvAeConfig {
            image_channels: enc.in_channels,
            ch: enc.ch,
            encoder_res_blocks: enc.num_res_blocks,
            decoder_res_blocks: dec.num_res_blocks + 1,
            z_channels: embed_dim,
            double_z: enc.double_z,
            encoder_attn: attention_levels(enc.resolution, &enc.attn_resolutions, levels),
            decoder_attn: attention_levels(dec.resolution, &dec.attn_resolutions, levels),
            ch_mult: enc.ch_mult,
            ..ConvAeConfig::ldm_kl16()
        };
        Ok(Self { embed_dim, ae, latent_scale })
    }

    pub fn downsample_factor(&self) -> usize {
        self.ae.downsample_factor()
    }

    /// FLOPs (2 × MACs) of one decode (`post_quant_conv` + decoder) of an `h × w` latent.
    pub fn decode_flops(&self, (h, w): (usize, usize)) -> f64 {
        let e = self.embed_dim as f64;
        2.0 * (h * w) as f64 * e * e + Decoder::flops(&self.ae, (h, w))
    }
}

/// `DiagonalGaussianDistribution(moments)` of an encode.
pub struct Posterior {
    /// `quant_conv(encoder(x))`: `[mean | logvar]` before the clamp, `(B, 2·embed_dim, h, w)`.
    pub moments: Tensor,
    pub mean: Tensor,
    /// Clamped to [-30, 20].
    pub logvar: Tensor,
    /// `exp(0.5·logvar)`.
    pub std: Tensor,
}

impl Posterior {
    /// `posterior.sample()` = `mean + std · noise` with the given standard-normal draw.
    pub fn sample_with(&self, noise: &Tensor) -> Result<Tensor> {
        Ok((&self.mean + (&self.std * noise)?)?)
    }
}

pub struct Kl16Vae {
    cfg: Kl16Config,
    pub encoder: Encoder,
    pub decoder: Decoder,
    quant_conv: Conv2d,
    post_quant_conv: Conv2d,
}

impl Kl16Vae {
    /// `vb` is rooted at the state dict (`kl16.ckpt["model"]`).
    pub fn load(cfg: &Kl16Config, vb: VarBuilder) -> Result<Self> {
        let e = cfg.embed_dim;
        let c1 = Conv2dConfig::default();
        Ok(Self {
            encoder: Encoder::load(&cfg.ae, vb.pp("encoder"))?,
            decoder: Decoder::load(&cfg.ae, vb.pp("decoder"))?,
            quant_conv: conv2d(2 * e, 2 * e, 1, c1, vb.pp("quant_conv"))?,
            post_quant_conv: conv2d(e, e, 1, c1, vb.pp("post_quant_conv"))?,
            cfg: cfg.clone(),
        })
    }

    /// Reads `kl16.ckpt` (weights under `"model"`), refusing a file whose latent width differs
    /// from `cfg.embed_dim` with a message naming both.
    pub fn from_checkpoint(cfg: &Kl16Config, path: &Path, device: &Device) -> Result<Self> {
        Self::from_checkpoint_with_dtype(cfg, path, device, DType::F32)
    }

    /// [`from_checkpoint`](Self::from_checkpoint) with the weights in `dtype`.
    pub fn from_checkpoint_with_dtype(cfg: &Kl16Config, path: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let ckpt = TorchCheckpoint::open(path)?;
        if !ckpt.has_prefix(CHECKPOINT_KEY) {
            bail!(
                "{}: no `{CHECKPOINT_KEY}` entry (the KL-16 VAE file stores its weights under it); the file holds: {}",
                path.display(),
                ckpt.top_level_keys().join(", ")
            );
        }
        let pq = format!("{CHECKPOINT_KEY}.post_quant_conv.weight");
        if let Some((_, dims, _)) = ckpt.names().find(|(n, _, _)| *n == pq) {
            if dims[0] != cfg.embed_dim {
                bail!(
                    "{}: this VAE has embed_dim {} (post_quant_conv {:?}) but {} latent channels are expected",
                    path.display(),
                    dims[0],
                    dims,
                    cfg.embed_dim
                );
            }
        }
        let weights = StrictWeights::new(ckpt.load(CHECKPOINT_KEY, None, device)?, format!("{}[{CHECKPOINT_KEY}]", path.display()));
        let vae = Self::load(cfg, weights.var_builder(dtype, device))
            .with_context(|| format!("loading the KL-16 VAE from {}", path.display()))?;
        // Training-only entries of LDM checkpoints (the discriminator / LPIPS loss) are not
        // part of the autoencoder.
        weights.ensure_all_used(|k| k.starts_with("loss."))?;
        Ok(vae)
    }

    pub fn config(&self) -> &Kl16Config {
        &self.cfg
    }
    pub fn embed_dim(&self) -> usize {
        self.cfg.embed_dim
    }

    /// `vae.encode(x)` for images in [-1, 1].
    pub fn encode(&self, x: &Tensor) -> Result<Posterior> {
        let x = x.to_dtype(self.quant_conv.weight().dtype())?;
        let moments = self.quant_conv.forward(&self.encoder.forward(&x)?)?;
        let e = self.cfg.embed_dim;
        let mean = moments.narrow(1, 0, e)?;
        let logvar = moments.narrow(1, e, e)?.clamp(-30f32, 20f32)?;
        let std = (&logvar * 0.5)?.exp()?;
        Ok(Posterior { moments, mean, logvar, std })
    }

    /// `vae.decode(z)` = `decoder(post_quant_conv(z))` for an unscaled latent (cast to the
    /// weights' dtype: MAR's latents are f32 whatever the VAE runs in).
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        let z = z.to_dtype(self.post_quant_conv.weight().dtype())?;
        Ok(self.decoder.forward(&self.post_quant_conv.forward(&z)?)?)
    }

    /// Decodes MAR tokens (latents multiplied by the latent scale): `decode(tokens / scale)`.
    pub fn decode_tokens(&self, tokens: &Tensor) -> Result<Tensor> {
        // A true division by the f32 scale, as `lat / 0.2325` is in the reference.
        let scale = Tensor::new(self.cfg.latent_scale as f32, tokens.device())?.to_dtype(tokens.dtype())?;
        self.decode(&tokens.broadcast_div(&scale)?)
    }
}
