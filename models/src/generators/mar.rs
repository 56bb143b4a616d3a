//! MAR (LTH14/mar, "Autoregressive Image Generation without Vector Quantization"): a masked
//! autoencoder over continuous KL-16 latent tokens, generating in random order a few tokens per
//! step, each token sampled by a small diffusion MLP conditioned on the decoder's output.
//!
//! Layout mirrors `models/mar.py`: [`Mar::forward_mae_encoder`] (the buffer rows, all set to
//! the class embedding, then the visible tokens), [`Mar::forward_mae_decoder`] (`mask_token`
//! at masked positions, the learned diffusion position embedding added after dropping the
//! buffer) and [`Mar::sample_tokens`] (random orders, cosine mask schedule, CFG on the predicted
//! noise). The diffusion head lives in [`super::mar_diffusion`]; the tokenizer in
//! [`crate::tokenizers::kl16`].
//!
//! All randomness comes from the [`RandomSource`] handed to the sampler: per-image orders via
//! `permutation(seq_len)` (image 0 first), then per AR step the diffusion head's Gaussian draws.

use super::mar_diffusion::{load_diffusion_head, DiffusionHead, DiffusionHeadConfig};
use crate::checkpoint::StrictWeights;
use crate::family::{check_range, parse_settings, ModelFamily, ModelRequest, RawSettings, ResolvedModel, SettingsError};
use crate::flops;
use crate::generator::{
    record_step, to_uint8_nhwc_rounded_from_signed, transformer_block_matmuls, Family, FlopsPerImage, Generator, MatmulShape, Samples,
    StepKind, StepObserver, StepSize,
};
use crate::nn::block::PreNormBlock;
use crate::nn::norm::LayerNorm;
use crate::reference_config::from_value_at;
use crate::tokenizers::kl16::{Kl16Config, Kl16Vae};
use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Linear, VarBuilder};
use genbench_runtime::checkpoint::TorchCheckpoint;
use genbench_runtime::{RandomSource, SeededSource};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The checkpoint entry holding the weights the published results were sampled with.
pub const EMA_KEY: &str = "model_ema";

/// Constructor arguments of `models.mar.MAR` (inference-relevant ones; their names, so a
/// reference `generator.kwargs` deserializes as it is).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MarConfig {
    pub img_size: usize,
    pub vae_stride: usize,
    pub patch_size: usize,
    pub encoder_embed_dim: usize,
    pub encoder_depth: usize,
    pub encoder_num_heads: usize,
    pub decoder_embed_dim: usize,
    pub decoder_depth: usize,
    pub decoder_num_heads: usize,
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
    pub vae_embed_dim: usize,
    pub class_num: usize,
    pub buffer_size: usize,
    pub diffloss_d: usize,
    pub diffloss_w: usize,
    /// `num_sampling_steps` the model was built with (the sampler may override it); the
    /// reference passes it as a string (`'100'`), which is read as the number it holds.
    #[serde(default = "default_num_sampling_steps", deserialize_with = "usize_or_numeric_string")]
    pub num_sampling_steps: usize,
    /// LayerNorm eps of every norm (`partial(nn.LayerNorm, eps=1e-6)`; no keyword argument).
    #[serde(default = "default_norm_eps")]
    pub norm_eps: f64,
}

fn default_mlp_ratio() -> f64 {
    4.0
}
fn default_num_sampling_steps() -> usize {
    100
}
fn default_norm_eps() -> f64 {
    1e-6
}

/// A whole number, written as a number or as a string holding one (`"100"`).
fn usize_or_numeric_string<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<usize, D::Error> {
    use serde::de::Error;
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => s.trim().parse().map_err(|_| D::Error::custom(format!("{s:?} is not a whole number"))),
        v => v.as_u64().map(|n| n as usize).ok_or_else(|| D::Error::custom(format!("{v} is not a whole number"))),
    }
}

impl MarConfig {
    fn published(width: usize, depth: usize, heads: usize, diffloss_d: usize, diffloss_w: usize) -> Self {
        Self {
            img_size: 256,
            vae_stride: 16,
            patch_size: 1,
            encoder_embed_dim: width,
            encoder_depth: depth,
            encoder_num_heads: heads,
            decoder_embed_dim: width,
            decoder_depth: depth,
            decoder_num_heads: heads,
            mlp_ratio: 4.0,
            vae_embed_dim: 16,
            class_num: 1000,
            buffer_size: 64,
            diffloss_d,
            diffloss_w,
            num_sampling_steps: 100,
            norm_eps: 1e-6,
        }
    }
    /// `mar_base` with the released DiffLoss (6 × 1024).
    pub fn mar_base() -> Self {
        Self::published(768, 12, 12, 6, 1024)
    }
    /// `mar_large` with the released DiffLoss (8 × 1280).
    pub fn mar_large() -> Self {
        Self::published(1024, 16, 16, 8, 1280)
    }
    /// `mar_huge` with the released DiffLoss (12 × 1536).
    pub fn mar_huge() -> Self {
        Self::published(1280, 20, 16, 12, 1536)
    }

    /// From the `generator.kwargs` object of a fixture / export `config.json` (the reference
    /// constructor's keyword arguments; `num_sampling_steps` may be a string as in Python).
    pub fn from_kwargs(kw: &serde_json::Value) -> Result<Self> {
        from_value_at(kw, "generator.kwargs")
    }

    /// Tokens per side.
    pub fn seq_h(&self) -> usize {
        self.img_size / self.vae_stride / self.patch_size
    }
    pub fn seq_len(&self) -> usize {
        self.seq_h() * self.seq_h()
    }
    /// Channels per token: `vae_embed_dim · patch_size²`.
    pub fn token_embed_dim(&self) -> usize {
        self.vae_embed_dim * self.patch_size * self.patch_size
    }
    pub fn diffusion_head(&self) -> DiffusionHeadConfig {
        DiffusionHeadConfig {
            target_channels: self.token_embed_dim(),
            z_channels: self.decoder_embed_dim,
            width: self.diffloss_w,
            depth: self.diffloss_d,
        }
    }

    /// FLOPs (2 × MACs) of one MAE encoder + decoder forward for one image with `visible`
    /// known tokens, the project's convention ([`crate::flops`]): encoder length
    /// `n_e = buffer + visible`, decoder length `n_d = buffer + seq_len`, pre-LN blocks
    /// (attention over all keys + MLP), plus `z_proj` and `decoder_embed` on the encoder rows.
    pub fn mae_flops(&self, visible: usize) -> f64 {
        let ne = self.buffer_size + visible;
        let nd = self.buffer_size + self.seq_len();
        let (ce, cd) = (self.encoder_embed_dim, self.decoder_embed_dim);
        let block = |n: usize, c: usize| flops::self_attention(n, n, c) + flops::mlp(n, c, (c as f64 * self.mlp_ratio) as usize);
        flops::linear(ne, self.token_embed_dim(), ce)
            + self.encoder_depth as f64 * block(ne, ce)
            + flops::linear(ne, ce, cd)
            + self.decoder_depth as f64 * block(nd, cd)
    }
}

/// How the guidance scale moves over the AR steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CfgSchedule {
    /// Muse-style: `1 + (cfg − 1)·(L − mask_len)/L` (the reference default).
    Linear,
    Constant,
}

impl std::str::FromStr for CfgSchedule {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "linear" => Ok(Self::Linear),
            "constant" => Ok(Self::Constant),
            other => bail!("cfg_schedule {other:?}: expected `linear` or `constant`"),
        }
    }
}

/// `sample_tokens` arguments.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MarSampling {
    pub num_iter: usize,
    pub num_sampling_steps: usize,
    pub cfg: f64,
    pub cfg_schedule: CfgSchedule,
    pub temperature: f64,
}

impl Default for MarSampling {
    /// `main_mar.py` defaults: 64 iterations, 100 diffusion steps, cfg 1.0 (linear), temperature 1.0.
    fn default() -> Self {
        Self { num_iter: 64, num_sampling_steps: 100, cfg: 1.0, cfg_schedule: CfgSchedule::Linear, temperature: 1.0 }
    }
}

impl MarSampling {
    /// The defaults with the settings that were given applied over them; the model's own
    /// `num_sampling_steps` is the default (100 for the released models; a fixture's config may
    /// say otherwise).
    pub fn for_model(s: &MarSettings, cfg: &MarConfig) -> Self {
        let d = Self::default();
        Self {
            num_iter: s.num_iter.unwrap_or(d.num_iter),
            num_sampling_steps: s.num_sampling_steps.unwrap_or(cfg.num_sampling_steps),
            cfg: s.cfg.unwrap_or(d.cfg),
            cfg_schedule: s.cfg_schedule.unwrap_or(d.cfg_schedule),
            temperature: s.temperature.unwrap_or(d.temperature),
        }
    }

    /// Refuses iteration counts the reference cannot run: at least one token must be revealed
    /// per step, so `1 <= num_iter <= seq_len`.
    pub fn validate(&self, seq_len: usize) -> Result<()> {
        if self.num_iter < 1 || self.num_iter > seq_len {
            bail!("num_iter {} is out of range: MAR reveals at least one of its {seq_len} tokens per step, so num_iter must be in 1..={seq_len}", self.num_iter);
        }
        Ok(())
    }

    pub fn uses_cfg(&self) -> bool {
        self.cfg != 1.0
    }
}

/// MAR's sampler settings as written (absent = `main_mar.py`'s defaults). MAR samples
/// continuous tokens with a diffusion head: no top-k / top-p.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MarSettings {
    /// AR steps (1..=seq_len; the upper bound is checked against the model when resolving).
    pub num_iter: Option<usize>,
    /// Diffusion steps of the MLP head.
    pub num_sampling_steps: Option<usize>,
    pub cfg: Option<f64>,
    pub cfg_schedule: Option<CfgSchedule>,
    pub temperature: Option<f64>,
}

impl crate::family::SamplerSettings for MarSettings {
    fn validate(&self) -> std::result::Result<(), SettingsError> {
        for (name, v) in [("num_iter", self.num_iter), ("num_sampling_steps", self.num_sampling_steps)] {
            if v == Some(0) {
                return Err(SettingsError::new(name, "must be at least 1"));
            }
        }
        check_range("cfg", self.cfg, |c| c >= 0.0, "must be a finite non-negative number")?;
        check_range("temperature", self.temperature, |t| t >= 0.0, "must be finite and >= 0")
    }
}

/// MAR-B / L / H with the released DiffLoss sizes (256 px, KL-16 VAE).
pub const PUBLISHED_NAMES: [&str; 3] = ["mar-b", "mar-l", "mar-h"];

/// The MAR family (LTH14/mar): `--ckpt checkpoint-last.pth` (its `model_ema` weights) and
/// `--vae kl16.ckpt`; with a fixture-style `config.json`, both default to the files beside it.
pub struct MarFamily;

impl ModelFamily for MarFamily {
    fn family(&self) -> Family {
        Family::Mar
    }
    fn label(&self) -> &'static str {
        "MAR"
    }
    fn names(&self) -> &'static [&'static str] {
        &PUBLISHED_NAMES
    }
    fn recognises_config(&self, v: &serde_json::Value) -> bool {
        is_mar_config(v)
    }
    fn check_settings(&self, settings: &RawSettings) -> std::result::Result<(), SettingsError> {
        parse_settings::<MarSettings>(settings).map(|_| ())
    }
    fn pixels_per_token(&self) -> usize {
        let cfg = MarConfig::mar_base();
        cfg.vae_stride * cfg.patch_size
    }
    fn default_settings(&self, _name: &str) -> Result<serde_json::Value> {
        Ok(serde_json::to_value(MarSampling::default())?)
    }
    fn resolve(&self, req: &ModelRequest, config: Option<&serde_json::Value>) -> Result<ResolvedModel> {
        let (name, mut cfg, vae_cfg, beside) = match config {
            Some(v) => {
                let (cfg, vae_cfg) = configs_from_json(v).with_context(|| req.config_source())?;
                let dir = req.config_dir();
                let exists = |f: &str| Some(dir.join(f)).filter(|p| p.is_file());
                let name = req.model.clone().unwrap_or_else(|| format!("mar-{}x{}-custom", cfg.encoder_depth, cfg.encoder_embed_dim));
                (name, cfg, vae_cfg, (exists("checkpoint-last.pth"), exists("kl16.ckpt")))
            }
            None => {
                let name = req.model.clone().context("MAR: give a model name or a config")?;
                let cfg = match name.as_str() {
                    "mar-b" => MarConfig::mar_base(),
                    "mar-l" => MarConfig::mar_large(),
                    "mar-h" => MarConfig::mar_huge(),
                    other => bail!("not a MAR model: {other}"),
                };
                (name, cfg, Kl16Config::published(), (None, None))
            }
        };
        // MAR has an encoder and a decoder of the same shape; an override sets both (so `depth = 6`
        // gives 6 + 6 blocks, as MAR-B has 12 + 12). The diffusion MLP keeps its size.
        req.arch.refuse_unsupported("MAR", &["depth", "width", "heads", "mlp_ratio"])?;
        req.arch.apply_shape(&mut cfg.encoder_depth, &mut cfg.encoder_embed_dim, &mut cfg.encoder_num_heads, Some(&mut cfg.mlp_ratio))?;
        req.arch.apply_shape(&mut cfg.decoder_depth, &mut cfg.decoder_embed_dim, &mut cfg.decoder_num_heads, None)?;
        if let Some(px) = req.resolution {
            cfg.img_size = px;
        }
        // Settings are checked before any weights are read (num_iter range, refused options).
        let settings = parse_settings::<MarSettings>(&req.settings).map_err(|e| anyhow::anyhow!("MAR: {e}"))?;
        let sampling = MarSampling::for_model(&settings, &cfg);
        sampling.validate(cfg.seq_len())?;
        let paths = req.weight_paths(beside, ("checkpoint-last.pth (weights under model_ema)", "kl16.ckpt"))?;
        let (num_classes, image_size) = (cfg.class_num, cfg.img_size);
        let model_name = name.clone();
        Ok(ResolvedModel::new(
            name,
            Family::Mar,
            num_classes,
            image_size,
            serde_json::to_value(&sampling)?,
            Box::new(move |device, dtype| {
                let g = match &paths {
                    Some((ckpt, Some(vae))) => MarGenerator::load(&model_name, &cfg, ckpt, &vae_cfg, vae, sampling, device, dtype)?,
                    Some((_, None)) => bail!("MAR needs --vae kl16.ckpt"),
                    None => MarGenerator::random_init(&model_name, &cfg, &vae_cfg, sampling, 0, device, dtype)?,
                };
                Ok(Box::new(g) as Box<dyn Generator>)
            }),
        ))
    }
}

/// `mask_len` of AR step `step` as the reference computes it: `floor(L·cos(π/2·(step+1)/num_iter))`
/// in float64, stored in a float32 tensor, clamped to `[1, masked − 1]`. Tokens still masked
/// after the step (on the last step only the linear CFG reads it).
pub fn mask_len(seq_len: usize, step: usize, num_iter: usize, masked_now: usize) -> f32 {
    let mask_ratio = (std::f64::consts::PI / 2.0 * (step + 1) as f64 / num_iter as f64).cos();
    let target = (seq_len as f64 * mask_ratio).floor() as f32;
    1f32.max((masked_now as f32 - 1.0).min(target))
}

/// Linear-schedule guidance of one step in float32, in the reference's operation order:
/// `1 + (cfg − 1)·(L − mask_len)/L`.
pub fn linear_cfg(cfg: f64, seq_len: usize, mask_len: f32) -> f32 {
    let remaining = seq_len as f32 - mask_len;
    1f32 + ((cfg - 1.0) as f32 * remaining) / seq_len as f32
}

/// Which tokens each image still has to generate (true = masked), `(batch, seq_len)` row-major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenMask {
    pub batch: usize,
    pub seq_len: usize,
    pub masked: Vec<bool>,
}

impl TokenMask {
    pub fn all_masked(batch: usize, seq_len: usize) -> Self {
        Self { batch, seq_len, masked: vec![true; batch * seq_len] }
    }
    /// From a `(B, L)` float/int tensor (1 = masked).
    pub fn from_tensor(t: &Tensor) -> Result<Self> {
        let (batch, seq_len) = t.dims2()?;
        let v = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        Ok(Self { batch, seq_len, masked: v.iter().map(|&x| x != 0.0).collect() })
    }
    /// The first `mask_len` entries of each image's order are masked (`mask_by_order`).
    pub fn by_order(orders: &[Vec<usize>], mask_len: usize, seq_len: usize) -> Self {
        let mut masked = vec![false; orders.len() * seq_len];
        for (b, order) in orders.iter().enumerate() {
            for &pos in &order[..mask_len] {
                masked[b * seq_len + pos] = true;
            }
        }
        Self { batch: orders.len(), seq_len, masked }
    }
    pub fn row(&self, b: usize) -> &[bool] {
        &self.masked[b * self.seq_len..(b + 1) * self.seq_len]
    }
    pub fn count_masked(&self, b: usize) -> usize {
        self.row(b).iter().filter(|&&m| m).count()
    }
    /// Stacks the mask on itself (the CFG batch).
    pub fn doubled(&self) -> Self {
        let mut masked = self.masked.clone();
        masked.extend_from_slice(&self.masked);
        Self { batch: 2 * self.batch, seq_len: self.seq_len, masked }
    }
    /// Element-wise XOR (`logical_xor(mask, mask_next)`).
    pub fn xor(&self, other: &Self) -> Self {
        let masked = self.masked.iter().zip(&other.masked).map(|(a, b)| a ^ b).collect();
        Self { batch: self.batch, seq_len: self.seq_len, masked }
    }
    /// Flat `(b·L + pos)` indices of the set entries, ordered by (image, position) as
    /// `nonzero(as_tuple=True)` returns them.
    pub fn set_indices(&self) -> Vec<u32> {
        self.masked.iter().enumerate().filter(|(_, &m)| m).map(|(i, _)| i as u32).collect()
    }
}

/// What one AR step of [`Mar::sample_tokens_traced`] decided and produced.
#[derive(Clone, Debug)]
pub struct TokenStepTrace {
    /// Tokens left masked after the step (as the reference's float `mask_len`).
    pub mask_len: f32,
    /// Tokens predicted in this step (per image of the un-doubled batch).
    pub mask_to_pred: TokenMask,
    /// Decoder conditions of the predicted rows, ordered (image, position); under CFG the
    /// conditional rows, then the same positions of the unconditional batch.
    pub z_pred: Tensor,
    /// Guidance scale handed to the diffusion head.
    pub cfg_iter: f32,
    /// Sampled token latents `(predicted rows, token_embed_dim)` (conditional half).
    pub sampled: Tensor,
}

/// The MAE encoder/decoder with its diffusion head: `models.mar.MAR` at inference.
pub struct Mar {
    cfg: MarConfig,
    class_emb: Tensor,
    fake_latent: Tensor,
    z_proj: Linear,
    z_proj_ln: LayerNorm,
    encoder_pos_embed_learned: Tensor,
    pub encoder_blocks: Vec<PreNormBlock>,
    encoder_norm: LayerNorm,
    decoder_embed: Linear,
    mask_token: Tensor,
    decoder_pos_embed_learned: Tensor,
    pub decoder_blocks: Vec<PreNormBlock>,
    decoder_norm: LayerNorm,
    diffusion_pos_embed_learned: Tensor,
    pub diffloss: DiffusionHead,
    device: Device,
}

impl Mar {
    /// `vb` is rooted at the state dict (`checkpoint["model_ema"]`).
    pub fn load(cfg: &MarConfig, vb: VarBuilder) -> Result<Self> {
        let (ce, cd) = (cfg.encoder_embed_dim, cfg.decoder_embed_dim);
        let (buf, l) = (cfg.buffer_size, cfg.seq_len());
        let eps = cfg.norm_eps;
        let encoder_blocks = (0..cfg.encoder_depth)
            .map(|i| PreNormBlock::load_timm(vb.pp(format!("encoder_blocks.{i}")), ce, cfg.encoder_num_heads, cfg.mlp_ratio, true, eps))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let decoder_blocks = (0..cfg.decoder_depth)
            .map(|i| PreNormBlock::load_timm(vb.pp(format!("decoder_blocks.{i}")), cd, cfg.decoder_num_heads, cfg.mlp_ratio, true, eps))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            class_emb: vb.get((cfg.class_num, ce), "class_emb.weight")?,
            fake_latent: vb.get((1, ce), "fake_latent")?,
            z_proj: candle_nn::linear(cfg.token_embed_dim(), ce, vb.pp("z_proj"))?,
            z_proj_ln: LayerNorm::load(ce, eps, vb.pp("z_proj_ln"))?,
            encoder_pos_embed_learned: vb.get((1, buf + l, ce), "encoder_pos_embed_learned")?,
            encoder_blocks,
            encoder_norm: LayerNorm::load(ce, eps, vb.pp("encoder_norm"))?,
            decoder_embed: candle_nn::linear(ce, cd, vb.pp("decoder_embed"))?,
            mask_token: vb.get((1, 1, cd), "mask_token")?,
            decoder_pos_embed_learned: vb.get((1, buf + l, cd), "decoder_pos_embed_learned")?,
            decoder_blocks,
            decoder_norm: LayerNorm::load(cd, eps, vb.pp("decoder_norm"))?,
            diffusion_pos_embed_learned: vb.get((1, l, cd), "diffusion_pos_embed_learned")?,
            diffloss: load_diffusion_head(&cfg.diffusion_head(), cfg.num_sampling_steps, vb.pp("diffloss.net"))?,
            device: vb.device().clone(),
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &MarConfig {
        &self.cfg
    }
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Rebuilds the diffusion head's schedule for another number of sampling steps.
    pub fn set_num_sampling_steps(&mut self, steps: usize) -> Result<()> {
        if steps != self.diffloss.num_steps() {
            self.diffloss.set_schedule(super::mar_diffusion::DiffusionSchedule::mar_sampling(steps)?);
        }
        Ok(())
    }

    /// `(B, c, h, w)` -> `(B, h/p · w/p, c·p²)`, token index = row·(w/p) + col, channels
    /// ordered (c, p, q).
    pub fn patchify(&self, x: &Tensor) -> Result<Tensor> {
        patchify(x, self.cfg.patch_size)
    }
    /// Inverse of [`patchify`](Self::patchify) for this model's grid.
    pub fn unpatchify(&self, x: &Tensor) -> Result<Tensor> {
        unpatchify(x, self.cfg.patch_size, self.cfg.vae_embed_dim, self.cfg.seq_h(), self.cfg.seq_h())
    }

    /// `class_emb(labels)` rows `(B, C)`.
    pub fn class_embedding(&self, labels: &[u32]) -> Result<Tensor> {
        if let Some(&bad) = labels.iter().find(|&&l| l as usize >= self.cfg.class_num) {
            bail!("class label {bad} is out of range: this MAR has {} classes (0..{})", self.cfg.class_num, self.cfg.class_num - 1);
        }
        let idx = Tensor::new(labels, &self.device)?;
        Ok(self.class_emb.index_select(&idx, 0)?)
    }
    /// The unconditional (`fake_latent`) embedding repeated `(B, C)`.
    pub fn fake_latent(&self, batch: usize) -> Result<Tensor> {
        Ok(self.fake_latent.repeat((batch, 1))?)
    }

    /// Flat indices into the `(B·(buffer+L))` rows of the kept (buffer + unmasked) rows, per
    /// image in position order, and their count per image.
    fn kept_rows(&self, mask: &TokenMask) -> Result<(Vec<u32>, usize)> {
        let (buf, l) = (self.cfg.buffer_size, self.cfg.seq_len());
        ensure!(mask.seq_len == l, "mask has {} tokens per image, the model {l}", mask.seq_len);
        let mut idx = Vec::new();
        let mut per_image = None;
        for b in 0..mask.batch {
            let base = b * (buf + l);
            let before = idx.len();
            idx.extend((0..buf).map(|j| (base + j) as u32));
            idx.extend(mask.row(b).iter().enumerate().filter(|(_, &m)| !m).map(|(j, _)| (base + buf + j) as u32));
            let n = idx.len() - before;
            match per_image {
                None => per_image = Some(n),
                Some(p) if p != n => bail!("every image must have the same number of masked tokens ({p} vs {n} kept rows)"),
                _ => {}
            }
        }
        Ok((idx, per_image.unwrap_or(buf)))
    }

    /// The encoder blocks' input: `z_proj(tokens)` after the buffer rows (all set to the class
    /// embedding), `+ encoder_pos_embed_learned`, `z_proj_ln`, masked rows dropped.
    /// `(B, buffer + visible, C_enc)`.
    pub fn encoder_input(&self, tokens: &Tensor, mask: &TokenMask, class_embedding: &Tensor) -> Result<Tensor> {
        let (b, l, _) = tokens.dims3()?;
        let c = self.cfg.encoder_embed_dim;
        let buf = self.cfg.buffer_size;
        ensure!(mask.batch == b, "mask batch {} does not match tokens batch {b}", mask.batch);
        // Token latents are float32 (the sampler's buffer); the projection runs in the weights' dtype.
        let x = self.z_proj.forward(&tokens.to_dtype(self.z_proj.weight().dtype())?)?;
        let buffer = class_embedding.unsqueeze(1)?.broadcast_as((b, buf, c))?;
        let x = Tensor::cat(&[&buffer.to_dtype(x.dtype())?, &x], 1)?;
        let x = x.broadcast_add(&self.encoder_pos_embed_learned)?;
        let x = self.z_proj_ln.forward(&x)?;
        let (idx, kept) = self.kept_rows(mask)?;
        let idx = Tensor::from_vec(idx, b * kept, &self.device)?;
        Ok(x.reshape((b * (buf + l), c))?.index_select(&idx, 0)?.reshape((b, kept, c))?)
    }

    /// `forward_mae_encoder(tokens, mask, class_embedding)`: `(B, buffer + visible, C_enc)`.
    pub fn forward_mae_encoder(&self, tokens: &Tensor, mask: &TokenMask, class_embedding: &Tensor) -> Result<Tensor> {
        let mut x = self.encoder_input(tokens, mask, class_embedding)?;
        for block in &self.encoder_blocks {
            x = block.forward(&x)?;
        }
        Ok(self.encoder_norm.forward(&x)?)
    }

    /// The decoder blocks' input: `decoder_embed(x)` scattered back to all buffer + L
    /// positions, `mask_token` at masked ones, `+ decoder_pos_embed_learned`.
    pub fn decoder_input(&self, x: &Tensor, mask: &TokenMask) -> Result<Tensor> {
        let (b, kept, _) = x.dims3()?;
        let cd = self.cfg.decoder_embed_dim;
        let (buf, l) = (self.cfg.buffer_size, self.cfg.seq_len());
        let x = self.decoder_embed.forward(x)?.reshape((b * kept, cd))?;
        // One gather: source rows = the kept rows, then the mask token as row b·kept.
        let source = Tensor::cat(&[&x, &self.mask_token.reshape((1, cd))?.to_dtype(x.dtype())?], 0)?;
        let mask_row = (b * kept) as u32;
        let mut idx = Vec::with_capacity(b * (buf + l));
        for i in 0..b {
            let mut next = (i * kept) as u32;
            for pos in 0..buf + l {
                let masked = pos >= buf && mask.row(i)[pos - buf];
                if masked {
                    idx.push(mask_row);
                } else {
                    idx.push(next);
                    next += 1;
                }
            }
            ensure!(
                next as usize == (i + 1) * kept,
                "mask keeps {} rows of image {i}, the encoder output has {kept}",
                next as usize - i * kept
            );
        }
        let idx = Tensor::from_vec(idx, b * (buf + l), &self.device)?;
        let x = source.index_select(&idx, 0)?.reshape((b, buf + l, cd))?;
        Ok(x.broadcast_add(&self.decoder_pos_embed_learned)?)
    }

    /// `forward_mae_decoder(x, mask)`: per-token conditions `(B, L, C_dec)` (buffer rows dropped,
    /// `+ diffusion_pos_embed_learned`).
    pub fn forward_mae_decoder(&self, x: &Tensor, mask: &TokenMask) -> Result<Tensor> {
        let mut x = self.decoder_input(x, mask)?;
        for block in &self.decoder_blocks {
            x = block.forward(&x)?;
        }
        let x = self.decoder_norm.forward(&x)?;
        let x = x.narrow(1, self.cfg.buffer_size, self.cfg.seq_len())?;
        Ok(x.broadcast_add(&self.diffusion_pos_embed_learned)?)
    }

    /// `sample_tokens(bsz, num_iter, cfg, cfg_schedule, labels, temperature)`: token latents
    /// `(B, vae_embed_dim, h, w)`, still multiplied by the latent scale.
    ///
    /// Reports one [`StepKind::Transformer`] record (encoder + decoder over the batch, CFG
    /// doubled) and one [`StepKind::DiffusionMlp`] record (the whole reverse diffusion of the
    /// tokens predicted in that step) per AR step.
    pub fn sample_tokens(
        &self,
        labels: &[u32],
        s: &MarSampling,
        rng: &mut dyn RandomSource,
        observer: &mut dyn StepObserver,
    ) -> Result<Tensor> {
        self.sample_tokens_traced(labels, s, rng, observer, None)
    }

    /// [`sample_tokens`](Self::sample_tokens), optionally recording every step's bookkeeping
    /// (for step-by-step parity checks).
    pub fn sample_tokens_traced(
        &self,
        labels: &[u32],
        s: &MarSampling,
        rng: &mut dyn RandomSource,
        observer: &mut dyn StepObserver,
        mut trace: Option<&mut Vec<TokenStepTrace>>,
    ) -> Result<Tensor> {
        let (l, d) = (self.cfg.seq_len(), self.cfg.token_embed_dim());
        s.validate(l)?;
        ensure!(
            s.num_sampling_steps == self.diffloss.num_steps(),
            "the diffusion head is set for {} sampling steps, the sampler asks for {}",
            self.diffloss.num_steps(),
            s.num_sampling_steps
        );
        let bsz = labels.len();
        ensure!(bsz > 0, "sample_tokens needs at least one label");
        let cfg_on = s.uses_cfg();
        let temperature = s.temperature as f32;

        let mut mask = TokenMask::all_masked(bsz, l);
        let mut tokens = vec![0f32; bsz * l * d];
        // MAR.sample_orders: one shuffle per image, image 0 first.
        let orders = (0..bsz).map(|_| rng.permutation(l)).collect::<Result<Vec<_>>>()?;

        let cond_embedding = self.class_embedding(labels)?;
        let class_embedding = if cfg_on { Tensor::cat(&[&cond_embedding, &self.fake_latent(bsz)?], 0)? } else { cond_embedding };
        let rows_mult = if cfg_on { 2 } else { 1 };

        for step in 0..s.num_iter {
            // Which tokens this step reveals: the cosine schedule over the random orders.
            let visible = l - mask.count_masked(0);
            let mask_len = mask_len(l, step, s.num_iter, mask.count_masked(0));
            let mask_next = TokenMask::by_order(&orders, mask_len as usize, l);
            let mask_to_pred = if step + 1 >= s.num_iter { mask.clone() } else { mask.xor(&mask_next) };
            let pred_idx = mask_to_pred.set_indices();
            let n_pred = pred_idx.len();

            // Forward: the MAE encoder and decoder (batch doubled under CFG), then the decoder
            // rows of the tokens to predict.
            let size = StepSize {
                step,
                kind: StepKind::Transformer,
                batch: bsz,
                tokens_decoded: n_pred / bsz,
                tokens_attended: self.cfg.buffer_size + visible,
                flops: (rows_mult * bsz) as f64 * self.cfg.mae_flops(visible),
            };
            let z_rows = record_step(observer, &self.device, size, || {
                let tok = Tensor::from_slice(&tokens, (bsz, l, d), &self.device)?;
                let (tok, mask_in) = if cfg_on { (Tensor::cat(&[&tok, &tok], 0)?, mask.doubled()) } else { (tok, mask.clone()) };
                let x = self.forward_mae_encoder(&tok, &mask_in, &class_embedding)?;
                let z = self.forward_mae_decoder(&x, &mask_in)?;
                let all_idx: Vec<u32> = if cfg_on {
                    pred_idx.iter().copied().chain(pred_idx.iter().map(|&i| i + (bsz * l) as u32)).collect()
                } else {
                    pred_idx.clone()
                };
                let cd = self.cfg.decoder_embed_dim;
                let rows = Tensor::from_vec(all_idx, rows_mult * n_pred, &self.device)?;
                Ok(z.reshape((rows_mult * bsz * l, cd))?.index_select(&rows, 0)?)
            })?;
            mask = mask_next;

            // Guide and sample: the diffusion head denoises those rows, guiding the predicted
            // noise with this step's scale; under CFG only the conditional half is kept.
            let cfg_iter = match s.cfg_schedule {
                CfgSchedule::Linear => linear_cfg(s.cfg, l, mask_len),
                CfgSchedule::Constant => s.cfg as f32,
            };
            let size = StepSize {
                step,
                kind: StepKind::DiffusionMlp,
                batch: bsz,
                tokens_decoded: n_pred / bsz,
                tokens_attended: 0,
                flops: self.diffloss.sample_flops(rows_mult * n_pred),
            };
            let (sampled, sampled_values) = record_step(observer, &self.device, size, || {
                let sampled = self.diffloss.sample(&z_rows, temperature, cfg_iter, rng)?.narrow(0, 0, n_pred)?;
                let values = sampled.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                Ok((sampled, values))
            })?;
            if let Some(t) = trace.as_deref_mut() {
                t.push(TokenStepTrace { mask_len, mask_to_pred, z_pred: z_rows, cfg_iter, sampled });
            }

            // Feed back: the sampled tokens join the known ones.
            let sampled = sampled_values;
            for (r, &flat) in pred_idx.iter().enumerate() {
                let flat = flat as usize;
                tokens[flat * d..(flat + 1) * d].copy_from_slice(&sampled[r * d..(r + 1) * d]);
            }
        }
        let tokens = Tensor::from_vec(tokens, (bsz, l, d), &self.device)?;
        self.unpatchify(&tokens)
    }

    /// Tokens predicted per image at each step, and visible tokens at each step's start, for
    /// the given iteration count (the schedule is deterministic; only the order is random).
    pub fn step_plan(&self, num_iter: usize) -> Vec<(usize, usize)> {
        step_plan(self.cfg.seq_len(), num_iter)
    }
}

/// `(visible at step start, tokens predicted)` per AR step of `sample_tokens`.
pub fn step_plan(seq_len: usize, num_iter: usize) -> Vec<(usize, usize)> {
    let mut masked = seq_len;
    let mut plan = Vec::with_capacity(num_iter);
    for step in 0..num_iter {
        let ml = mask_len(seq_len, step, num_iter, masked) as usize;
        let pred = if step + 1 >= num_iter { masked } else { masked - ml };
        plan.push((seq_len - masked, pred));
        masked -= pred;
    }
    plan
}

/// `MAR.patchify` for patch size `p`.
pub fn patchify(x: &Tensor, p: usize) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    ensure!(h % p == 0 && w % p == 0, "latent {h}x{w} is not divisible by the patch size {p}");
    let (hp, wp) = (h / p, w / p);
    // nchpwq -> nhwcpq
    Ok(x.reshape((b, c, hp, p, wp, p))?.permute((0, 2, 4, 1, 3, 5))?.contiguous()?.reshape((b, hp * wp, c * p * p))?)
}

/// `MAR.unpatchify`: `(B, h·w, c·p²)` -> `(B, c, h·p, w·p)`.
pub fn unpatchify(x: &Tensor, p: usize, c: usize, h: usize, w: usize) -> Result<Tensor> {
    let b = x.dim(0)?;
    // nhwcpq -> nchpwq
    Ok(x.reshape((b, h, w, c, p, p))?.permute((0, 3, 1, 4, 2, 5))?.contiguous()?.reshape((b, c, h * p, w * p))?)
}

/// True when a `config.json` describes a MAR export in the fixture format
/// (`generator.cls == "models.mar.MAR"`).
pub fn is_mar_config(json: &serde_json::Value) -> bool {
    json.pointer("/generator/cls").and_then(|v| v.as_str()) == Some("models.mar.MAR")
}

/// Generator and tokenizer configs from such a `config.json`.
pub fn configs_from_json(json: &serde_json::Value) -> Result<(MarConfig, Kl16Config)> {
    ensure!(is_mar_config(json), "config.json does not describe a MAR model (generator.cls != models.mar.MAR)");
    let mar = MarConfig::from_kwargs(json.pointer("/generator/kwargs").context("config.json: generator.kwargs missing")?)?;
    let vae = Kl16Config::from_reference_kwargs(json.get("tokenizer").context("config.json: tokenizer missing")?)?;
    Ok((mar, vae))
}

/// Reads `checkpoint-last.pth` and builds the model from its `model_ema` entry (the pickled
/// `args`, `epoch`, `scaler` and the raw `model` weights are ignored).
pub fn load_mar_checkpoint(cfg: &MarConfig, path: &Path, device: &Device) -> Result<Mar> {
    load_mar_checkpoint_with_dtype(cfg, path, device, DType::F32)
}

/// [`load_mar_checkpoint`] with the weights in `dtype` (the diffusion loop's latents stay f32).
pub fn load_mar_checkpoint_with_dtype(cfg: &MarConfig, path: &Path, device: &Device, dtype: DType) -> Result<Mar> {
    let ckpt = TorchCheckpoint::open(path)?;
    if !ckpt.has_prefix(EMA_KEY) {
        bail!(
            "{}: no `{EMA_KEY}` entry; MAR samples with the EMA weights (checkpoint-last.pth holds `model` and `{EMA_KEY}`); this file holds: {}",
            path.display(),
            ckpt.top_level_keys().join(", ")
        );
    }
    let weights = StrictWeights::new(ckpt.load(EMA_KEY, None, device)?, format!("{}[{EMA_KEY}]", path.display()));
    let mar =
        Mar::load(cfg, weights.var_builder(dtype, device)).with_context(|| format!("loading MAR from {}[{EMA_KEY}]", path.display()))?;
    weights.ensure_all_used(|_| false)?;
    Ok(mar)
}

/// Analytic FLOPs per image (project convention, [`crate::flops`]) split into the MAE
/// transformer, the diffusion MLP and the KL-16 decode; under CFG the transformer and the MLP
/// run on the doubled batch.
pub fn flops_per_image(cfg: &MarConfig, s: &MarSampling, vae: &Kl16Config) -> FlopsPerImage {
    let cfg_mult = if s.uses_cfg() { 2.0 } else { 1.0 };
    let mlp_per_token = s.num_sampling_steps as f64 * cfg.diffusion_head().flops_per_row();
    let mut out = FlopsPerImage::default();
    for (visible, predicted) in step_plan(cfg.seq_len(), s.num_iter) {
        let t = cfg_mult * cfg.mae_flops(visible);
        let m = cfg_mult * predicted as f64 * mlp_per_token;
        out.transformer += t;
        out.diffusion_mlp += m;
        out.per_step.push(t + m);
    }
    let side = cfg.seq_h() * cfg.patch_size;
    out.decoder = vae.decode_flops((side, side));
    out
}

/// MAR + KL-16 behind the harness's [`Generator`] trait.
pub struct MarGenerator {
    name: String,
    mar: Mar,
    vae: Kl16Vae,
    sampling: MarSampling,
}

impl MarGenerator {
    /// Checks that the pair fits (the VAE's latent width is the generator's `vae_embed_dim`,
    /// the latent grid matches) and the settings are valid, before anything is sampled.
    pub fn new(name: &str, mut mar: Mar, vae: Kl16Vae, sampling: MarSampling) -> Result<Self> {
        let cfg = mar.config().clone();
        if vae.embed_dim() != cfg.vae_embed_dim {
            bail!(
                "the VAE has embed_dim {} but {name} generates tokens of {} latent channels (vae_embed_dim); use the KL-16 VAE it was trained with",
                vae.embed_dim(),
                cfg.vae_embed_dim
            );
        }
        if vae.config().downsample_factor() != cfg.vae_stride {
            bail!("the VAE downsamples by {} but {name} expects a stride of {}", vae.config().downsample_factor(), cfg.vae_stride);
        }
        sampling.validate(cfg.seq_len())?;
        mar.set_num_sampling_steps(sampling.num_sampling_steps)?;
        Ok(Self { name: name.to_string(), mar, vae, sampling })
    }

    /// Loads `checkpoint-last.pth` (its `model_ema` weights) and the KL-16 VAE with weights in
    /// `dtype`. In f16/bf16 the MAE, the diffusion MLP and the VAE compute in half while the
    /// token latents and the diffusion loop's arithmetic stay f32, as under the reference's
    /// `torch.cuda.amp.autocast()` sampling (engine_mar.py).
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        name: &str,
        cfg: &MarConfig,
        mar_checkpoint: &Path,
        vae_cfg: &Kl16Config,
        vae_checkpoint: &Path,
        sampling: MarSampling,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        // Cheap checks first: a mismatched VAE is refused before the large generator is read.
        if vae_cfg.embed_dim != cfg.vae_embed_dim {
            bail!("VAE config has embed_dim {} but {name} uses vae_embed_dim {}", vae_cfg.embed_dim, cfg.vae_embed_dim);
        }
        let vae = Kl16Vae::from_checkpoint_with_dtype(vae_cfg, vae_checkpoint, device, dtype)?;
        let mar = load_mar_checkpoint_with_dtype(cfg, mar_checkpoint, device, dtype)?;
        Self::new(name, mar, vae, sampling)
    }

    /// Random weights (`checkpoint::RandomWeights`, N(0, 1/fan_in)) for timing and FLOP
    /// studies without the published files.
    pub fn random_init(
        name: &str,
        cfg: &MarConfig,
        vae_cfg: &Kl16Config,
        sampling: MarSampling,
        seed: u64,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let weights = crate::checkpoint::RandomWeights::new(seed);
        let mar = Mar::load(cfg, weights.var_builder(dtype, device))?;
        let vae = Kl16Vae::load(vae_cfg, weights.var_builder(dtype, device))?;
        Self::new(name, mar, vae, sampling)
    }

    pub fn mar(&self) -> &Mar {
        &self.mar
    }
    pub fn vae(&self) -> &Kl16Vae {
        &self.vae
    }
    pub fn sampling(&self) -> &MarSampling {
        &self.sampling
    }

    /// Latent tokens (scaled) and images in [-1, 1] for the labels, drawing from `rng`.
    pub fn sample_with(&self, labels: &[u32], rng: &mut dyn RandomSource, observer: &mut dyn StepObserver) -> Result<(Tensor, Tensor)> {
        let latents = self.mar.sample_tokens(labels, &self.sampling, rng, observer)?;
        let (_, _, h, w) = latents.dims4()?;
        let size = StepSize {
            step: self.sampling.num_iter,
            kind: StepKind::Decode,
            batch: labels.len(),
            tokens_decoded: h * w,
            tokens_attended: 0,
            flops: labels.len() as f64 * self.vae.config().decode_flops((h, w)),
        };
        let images = record_step(observer, self.mar.device(), size, || self.vae.decode_tokens(&latents))?;
        ensure_finite(&latents, &images)?;
        Ok((latents, images))
    }
}

/// Refuses inf/NaN images rather than returning blank ones. In f16 they come from latents
/// beyond float16's range (the MAE input and the VAE decode cast the f32 latents to half): a
/// diffusion head that does not denoise (random or mismatched weights) grows them to ~1e5
/// (tests/fixtures/models/mar/README.md, "Numerics"); bf16 has float32's range.
fn ensure_finite(latents: &Tensor, images: &Tensor) -> Result<()> {
    let finite = |t: &Tensor| -> Result<Vec<f32>> { Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?) };
    if finite(images)?.iter().all(|v| v.is_finite()) {
        return Ok(());
    }
    let largest = finite(latents)?.iter().filter(|v| v.is_finite()).fold(0f32, |m, v| m.max(v.abs()));
    bail!(
        "MAR produced non-finite images in {:?} (largest finite token latent {largest:.3e}; float16 holds values up to 65504): use --dtype bf16 or f32",
        images.dtype()
    )
}

impl Generator for MarGenerator {
    fn name(&self) -> &str {
        &self.name
    }
    fn family(&self) -> Family {
        Family::Mar
    }
    fn image_size(&self) -> usize {
        self.mar.config().img_size
    }
    fn num_classes(&self) -> usize {
        self.mar.config().class_num
    }
    fn settings(&self) -> serde_json::Value {
        serde_json::json!({
            "num_iter": self.sampling.num_iter,
            "num_sampling_steps": self.sampling.num_sampling_steps,
            "cfg": self.sampling.cfg,
            "cfg_schedule": self.sampling.cfg_schedule,
            "temperature": self.sampling.temperature,
            "weights": EMA_KEY,
        })
    }
    fn flops_per_image(&self) -> FlopsPerImage {
        flops_per_image(self.mar.config(), &self.sampling, self.vae.config())
    }
    fn step_matmuls(&self, step: &StepSize) -> Vec<MatmulShape> {
        let c = self.mar.config();
        let rows = step.batch * if self.sampling.uses_cfg() { 2 } else { 1 };
        let hidden = |d: usize| (d as f64 * c.mlp_ratio) as usize;
        match step.kind {
            // One encoder block over buffer + visible tokens, one decoder block over buffer + all.
            StepKind::Transformer => {
                let (de, dd) = (c.encoder_embed_dim, c.decoder_embed_dim);
                let mut shapes = transformer_block_matmuls(rows * step.tokens_attended, de, &[(de, hidden(de)), (hidden(de), de)]);
                let m_dec = rows * (c.buffer_size + c.seq_len());
                shapes.extend(transformer_block_matmuls(m_dec, dd, &[(dd, hidden(dd)), (hidden(dd), dd)]));
                shapes
            }
            // One reverse-diffusion evaluation of the MLP over the predicted tokens' rows: input
            // projection, the fused adaLN modulation of every block, each block's two layers, the output.
            StepKind::DiffusionMlp => {
                let h = c.diffusion_head();
                let (m, w) = (rows * step.tokens_decoded, h.width);
                let mut shapes = vec![MatmulShape::new(m, h.target_channels, w), MatmulShape::new(m, w, (3 * h.depth + 2) * w)];
                shapes.extend((0..2 * h.depth).map(|_| MatmulShape::new(m, w, w)));
                shapes.push(MatmulShape::new(m, w, 2 * h.target_channels));
                shapes
            }
            StepKind::Decode => vec![],
        }
    }
    fn sample(&mut self, labels: &[u32], seed: u64, observer: &mut dyn StepObserver) -> Result<Samples> {
        let mut rng = SeededSource::new(seed);
        let (latents, images) = self.sample_with(labels, &mut rng, observer)?;
        let (images, n, height, width) = to_uint8_nhwc_rounded_from_signed(&images)?;
        let latents = latents.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        Ok(Samples { images, n, height, width, token_ids: None, latents: Some(latents) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gf(x: f64) -> f64 {
        x / 1e9
    }

    /// `tables/flops_summary.txt` (reference FLOP script): per image with CFG, 100 diffusion steps.
    #[test]
    fn flops_match_reference_summary() {
        let vae = Kl16Config::published();
        let cases = [
            (MarConfig::mar_base(), 64, 10996.9, 3655.8),
            (MarConfig::mar_base(), 256, 47332.8, 3655.8),
            (MarConfig::mar_large(), 64, 25681.2, 7388.3),
            (MarConfig::mar_large(), 256, 110508.6, 7388.3),
            (MarConfig::mar_huge(), 64, 49707.0, 15469.4),
            (MarConfig::mar_huge(), 256, 213860.1, 15469.4),
        ];
        for (cfg, num_iter, transformer, mlp) in cases {
            let s = MarSampling { num_iter, cfg: 2.9, ..MarSampling::default() };
            let f = flops_per_image(&cfg, &s, &vae);
            assert!(
                (gf(f.transformer) - transformer).abs() < 0.1,
                "{} x{num_iter}: transformer {}",
                cfg.encoder_embed_dim,
                gf(f.transformer)
            );
            assert!((gf(f.diffusion_mlp) - mlp).abs() < 0.1, "{} x{num_iter}: mlp {}", cfg.encoder_embed_dim, gf(f.diffusion_mlp));
            assert!((gf(f.decoder) - 250.1).abs() < 0.1, "decoder {}", gf(f.decoder));
            assert_eq!(f.per_step.len(), num_iter);
            // Without CFG both halves are gone.
            let f1 = flops_per_image(&cfg, &MarSampling { num_iter, ..MarSampling::default() }, &vae);
            assert!((f1.transformer * 2.0 - f.transformer).abs() < 1.0);
        }
        // MAR-B DiffLoss: 71.40 MFLOP per token and diffusion step.
        assert!((MarConfig::mar_base().diffusion_head().flops_per_row() / 1e6 - 71.40).abs() < 0.01);
    }

    #[test]
    fn step_plan_matches_reference_schedule() {
        // tables/flops_summary.txt: tokens predicted per step for num_iter = 64.
        let expected = "1,1,1,1,1,1,1,1,1,1,1,1,1,2,3,2,2,3,3,3,3,3,3,4,3,4,4,4,4,4,4,4,5,5,4,5,5,5,5,5,6,5,5,6,5,6,6,6,5,6,6,6,6,6,6,7,6,6,6,6,7,6,6,6";
        let expected: Vec<usize> = expected.split(',').map(|x| x.parse().unwrap()).collect();
        let plan = step_plan(256, 64);
        assert_eq!(plan.iter().map(|p| p.1).collect::<Vec<_>>(), expected);
        assert_eq!(plan.iter().map(|p| p.1).sum::<usize>(), 256);
        assert_eq!(&plan.iter().map(|p| p.0).collect::<Vec<_>>()[..16], &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 15, 18]);
        // 256 iterations: exactly one token per step.
        assert!(step_plan(256, 256).iter().all(|p| p.1 == 1));
        // The last step's linear CFG is 1 + (cfg - 1)·255/256, not cfg (mask_len clamps to 1).
        assert_eq!(mask_len(256, 63, 64, 6), 1.0);
        assert_eq!(linear_cfg(3.0, 256, 1.0), 1.0 + 2.0 * 255.0 / 256.0);
    }
}
