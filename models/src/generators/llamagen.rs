//! LlamaGen class-conditional (c2i) raster-scan generator: the Llama-style GPT of
//! FoundationVision/LlamaGen (`autoregressive/models/gpt.py`), its cached generation loop
//! (`autoregressive/models/generate.py`) and the VQ-16 tokenizer.
//!
//! Sequence layout: position 0 is the class token (its embedding from `cls_embedding`, whose
//! extra row `num_classes` is the CFG null class), position `n + 1` is image token `z_n`. The
//! prefill consumes the class token and yields `z_0`; each of the `N - 1` decode steps feeds one
//! token and yields the next; the last token is never fed back.
//!
//! Exactness points (FoundationVision/LlamaGen@ce98ec4 `autoregressive/models/gpt.py`
//! `precompute_freqs_cis_2d`, `apply_rotary_emb`, `RMSNorm`; `generate.py` for the guidance): the class token's RoPE rows are all zero, so
//! its q and k vanish in every layer; 2-D RoPE pairs are interleaved, rows in the first half of
//! the pairs and columns in the second; RMSNorm runs in f32; no biases anywhere; guidance is
//! `u + s (c - u)` with the conditional half first in the doubled batch.

use crate::checkpoint::StrictWeights;
use crate::family::{check_range, parse_settings, ModelFamily, ModelRequest, RawSettings, ResolvedModel, SettingsError};
use crate::generator::{
    record_step, transformer_block_matmuls, Family, FlopsPerImage, Generator, MatmulShape, Samples, StepKind, StepObserver, StepSize,
};
use crate::nn::attention::{self, reset_layer_caches, KvCache, MultiHeadAttention};
use crate::nn::cfg;
use crate::nn::linear::RowLinear;
use crate::nn::mlp::SwiGlu;
use crate::nn::norm::RmsNorm;
use crate::nn::rope::Rope2d;
use crate::nn::sampling::TokenSampler;
use crate::reference_config::section;
use crate::tokenizers::llamagen_vq::{LlamaGenVq, LlamaGenVqConfig};
use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, IndexOp, Module, Tensor};
use candle_nn::{Embedding, VarBuilder};
use genbench_runtime::rng::{RandomSource, SeededSource};
use serde::{Deserialize, Serialize};

/// `find_multiple(n, k)`: the smallest multiple of `k` that is >= `n`.
fn find_multiple(n: usize, k: usize) -> usize {
    n.div_ceil(k) * k
}

/// The GPT's constructor arguments (`ModelArgs` of gpt.py), inference-relevant fields only.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LlamaGenGptConfig {
    pub dim: usize,
    pub n_layer: usize,
    pub n_head: usize,
    /// Key/value heads (grouped-query attention); `None` = `n_head` (all published models).
    pub n_kv_head: Option<usize>,
    pub multiple_of: usize,
    pub ffn_dim_multiplier: Option<f64>,
    pub rope_base: f64,
    pub norm_eps: f64,
    pub num_classes: usize,
    /// > 0 means the class table has the extra null row `num_classes` used by CFG.
    pub class_dropout_prob: f64,
    pub vocab_size: usize,
    pub cls_token_num: usize,
    /// Image tokens per image (= latent grid squared); sets the RoPE grid.
    pub block_size: usize,
}

impl LlamaGenGptConfig {
    fn published(dim: usize, n_layer: usize, n_head: usize, block_size: usize) -> Self {
        Self {
            dim,
            n_layer,
            n_head,
            n_kv_head: None,
            multiple_of: 256,
            ffn_dim_multiplier: None,
            rope_base: 10000.0,
            norm_eps: 1e-5,
            num_classes: 1000,
            class_dropout_prob: 0.1,
            vocab_size: 16384,
            cls_token_num: 1,
            block_size,
        }
    }
    /// GPT-B (111M): 12 layers, 12 heads, width 768. `block_size` 256 (256 px) or 576 (384 px).
    pub fn gpt_b(block_size: usize) -> Self {
        Self::published(768, 12, 12, block_size)
    }
    /// GPT-L (343M): 24 layers, 16 heads, width 1024.
    pub fn gpt_l(block_size: usize) -> Self {
        Self::published(1024, 24, 16, block_size)
    }
    /// GPT-XL (775M): 36 layers, 20 heads, width 1280.
    pub fn gpt_xl(block_size: usize) -> Self {
        Self::published(1280, 36, 20, block_size)
    }
    /// GPT-XXL (1.4B): 48 layers, 24 heads, width 1536.
    pub fn gpt_xxl(block_size: usize) -> Self {
        Self::published(1536, 48, 24, block_size)
    }
    /// GPT-3B (3.1B): 24 layers, 32 heads, width 3200 (head_dim 100).
    pub fn gpt_3b(block_size: usize) -> Self {
        Self::published(3200, 24, 32, block_size)
    }

    pub fn head_dim(&self) -> usize {
        self.dim / self.n_head
    }
    pub fn kv_heads(&self) -> usize {
        self.n_kv_head.unwrap_or(self.n_head)
    }
    /// SwiGLU hidden width: `find_multiple(int(ffn_dim_multiplier * int(2 * 4 * dim / 3)), multiple_of)`.
    pub fn ffn_hidden(&self) -> usize {
        let mut hidden = (2 * 4 * self.dim) / 3;
        if let Some(m) = self.ffn_dim_multiplier {
            hidden = (m * hidden as f64) as usize;
        }
        find_multiple(hidden, self.multiple_of)
    }
    /// Rows of the class table: `num_classes + 1` when class dropout (CFG) is enabled.
    pub fn class_table_rows(&self) -> usize {
        self.num_classes + usize::from(self.class_dropout_prob > 0.0)
    }
    /// Side of the latent token grid.
    pub fn grid(&self) -> usize {
        (self.block_size as f64).sqrt().round() as usize
    }

    pub fn validate(&self) -> Result<()> {
        ensure!(self.n_head > 0 && self.dim.is_multiple_of(self.n_head), "dim {} is not divisible by n_head {}", self.dim, self.n_head);
        ensure!(self.head_dim().is_multiple_of(4), "2-D RoPE needs head_dim divisible by 4, got {}", self.head_dim());
        // Every published c2i model has n_kv_head = n_head (the fused `wqkv` is then 3 x dim).
        ensure!(
            self.kv_heads() == self.n_head,
            "grouped-query attention (n_kv_head {} < n_head {}) is not supported: no c2i checkpoint uses it",
            self.kv_heads(),
            self.n_head
        );
        ensure!(self.grid() * self.grid() == self.block_size, "block_size {} is not a square token grid", self.block_size);
        ensure!(self.cls_token_num == 1, "class-conditional LlamaGen uses one class token, config says {}", self.cls_token_num);
        ensure!(self.vocab_size > 0 && self.num_classes > 0, "vocab_size and num_classes must be positive");
        Ok(())
    }
}

/// A whole LlamaGen model: GPT, VQ tokenizer, image size.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LlamaGenConfig {
    pub gpt: LlamaGenGptConfig,
    pub vq: LlamaGenVqConfig,
    pub image_size: usize,
}

impl LlamaGenConfig {
    /// Published model by size name (`b`, `l`, `xl`, `xxl`, `3b`) at 256 or 384 px.
    pub fn published(size: &str, image_size: usize) -> Result<Self> {
        ensure!(image_size == 256 || image_size == 384, "LlamaGen c2i is published at 256 and 384 px, not {image_size}");
        let block = (image_size / 16) * (image_size / 16);
        let gpt = match size {
            "b" => LlamaGenGptConfig::gpt_b(block),
            "l" => LlamaGenGptConfig::gpt_l(block),
            "xl" => LlamaGenGptConfig::gpt_xl(block),
            "xxl" => LlamaGenGptConfig::gpt_xxl(block),
            "3b" => LlamaGenGptConfig::gpt_3b(block),
            other => bail!("unknown LlamaGen size {other:?} (b, l, xl, xxl, 3b)"),
        };
        Ok(Self { gpt, vq: LlamaGenVqConfig::vq_16(), image_size })
    }

    /// Reads the `config.json` of a LlamaGen fixture (the reference constructors' arguments:
    /// `gpt.ModelArgs`, `vq.ModelArgs`, `vq.encoder`, `vq.decoder`, `vq.groupnorm`, `image_size`).
    pub fn from_reference_json(v: &serde_json::Value) -> Result<Self> {
        let gpt: LlamaGenGptConfig = section(v, "/gpt/ModelArgs")?;
        if let Some(t) = v.pointer("/gpt/ModelArgs/model_type").and_then(|x| x.as_str()) {
            ensure!(t == "c2i", "only class-conditional (c2i) LlamaGen is supported, config has model_type {t:?}");
        }
        let vq = LlamaGenVqConfig::from_reference_json(v.get("vq").context("config has no `vq`")?)?;
        let cfg = Self { gpt, vq, image_size: section(v, "/image_size")? };
        cfg.validate()?;
        Ok(cfg)
    }

    /// True when `v` looks like a LlamaGen reference config (for `--config` detection).
    pub fn is_reference_json(v: &serde_json::Value) -> bool {
        v.pointer("/gpt/ModelArgs").is_some() && v.pointer("/vq/ModelArgs").is_some()
    }

    pub fn validate(&self) -> Result<()> {
        self.gpt.validate()?;
        self.vq.validate()?;
        let grid = self.image_size / self.vq.downsample_factor();
        ensure!(
            grid * self.vq.downsample_factor() == self.image_size && grid * grid == self.gpt.block_size,
            "image_size {} with the VQ's {}x downsampling gives a {grid}x{grid} grid, but the GPT's block_size is {}",
            self.image_size,
            self.vq.downsample_factor(),
            self.gpt.block_size
        );
        ensure!(
            self.vq.codebook_size == self.gpt.vocab_size,
            "the VQ codebook has {} entries but the GPT's vocabulary is {}: they do not belong together",
            self.vq.codebook_size,
            self.gpt.vocab_size
        );
        Ok(())
    }
}

/// Sampling settings of `generate()`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LlamaGenSampling {
    /// Guidance scale; `> 1` doubles the batch with null-class rows. (`cfg_scale` in the
    /// reference; written `cfg` like every family's guidance scale.)
    #[serde(rename = "cfg")]
    pub cfg_scale: f64,
    /// Decode steps `i <= cfg_interval` are guided (the prefill always is); -1 = every step.
    pub cfg_interval: i64,
    /// 0 = off.
    pub top_k: usize,
    /// 1.0 = off.
    pub top_p: f64,
    pub temperature: f64,
}

impl LlamaGenSampling {
    /// The FID recipe of `sample_c2i_ddp.py` (top-k off, top-p 1, temperature 1) with the
    /// per-model guidance scale from GETTING_STARTED.md (2.0 for B/L, 1.75 for XL/XXL, 1.65 for 3B).
    pub fn fid_recipe(cfg_scale: f64) -> Self {
        Self { cfg_scale, cfg_interval: -1, top_k: 0, top_p: 1.0, temperature: 1.0 }
    }

    /// The recipe with the settings that were given applied over it.
    pub fn with_settings(self, s: &LlamaGenSettings) -> Self {
        Self {
            cfg_scale: s.cfg.unwrap_or(self.cfg_scale),
            cfg_interval: s.cfg_interval.unwrap_or(self.cfg_interval),
            top_k: s.top_k.unwrap_or(self.top_k),
            top_p: s.top_p.unwrap_or(self.top_p),
            temperature: s.temperature.unwrap_or(self.temperature),
        }
    }

    pub fn uses_cfg(&self) -> bool {
        self.cfg_scale > 1.0
    }
}

/// LlamaGen's sampler settings as written (absent = [`LlamaGenSampling::fid_recipe`] with the
/// published size's guidance scale). One token per step: no step count or strategy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlamaGenSettings {
    /// Guidance scale (`cfg_scale` of `sample_c2i_ddp.py`).
    pub cfg: Option<f64>,
    /// Guide only decode steps `i <= cfg_interval` (-1 = every step).
    pub cfg_interval: Option<i64>,
    /// 0 = off.
    pub top_k: Option<usize>,
    /// 1.0 = off.
    pub top_p: Option<f64>,
    pub temperature: Option<f64>,
}

impl crate::family::SamplerSettings for LlamaGenSettings {
    fn validate(&self) -> std::result::Result<(), SettingsError> {
        check_range("cfg", self.cfg, |c| c >= 0.0, "must be a finite non-negative number")?;
        if let Some(i) = self.cfg_interval.filter(|&i| i < -1) {
            return Err(SettingsError::new("cfg_interval", format!("{i}: must be -1 (always) or a step index >= 0")));
        }
        check_range("top_p", self.top_p, |p| p > 0.0 && p <= 1.0, "must be in (0, 1]")?;
        check_range("temperature", self.temperature, |t| t >= 0.0, "must be >= 0")
    }
}

/// LlamaGen c2i: `llamagen-<size>` is the size at the resolution of its published checkpoint
/// (B, L: 256 px; XL, XXL, 3B: 384 px, the only ones released for them); `-256` / `-384` pick the
/// resolution explicitly (it changes the RoPE grid and the token count, not the weights' shapes).
pub const PUBLISHED_NAMES: [&str; 15] = [
    "llamagen-b",
    "llamagen-l",
    "llamagen-xl",
    "llamagen-xxl",
    "llamagen-3b",
    "llamagen-b-256",
    "llamagen-l-256",
    "llamagen-xl-256",
    "llamagen-xxl-256",
    "llamagen-3b-256",
    "llamagen-b-384",
    "llamagen-l-384",
    "llamagen-xl-384",
    "llamagen-xxl-384",
    "llamagen-3b-384",
];

/// (size, image size, guidance scale) of a published name; the scales are those of
/// FoundationVision/LlamaGen@ce98ec4 `GETTING_STARTED.md` (2.0 for B/L, 1.75 for XL/XXL, 1.65 for 3B).
fn published_recipe(name: &str) -> Result<(&str, usize, f64)> {
    let rest = name.strip_prefix("llamagen-").with_context(|| format!("not a LlamaGen model: {name}"))?;
    let (size, px) = match rest.split_once('-') {
        Some((size, px)) => (size, px.parse::<usize>().with_context(|| format!("{name}: bad resolution"))?),
        None => (rest, if rest == "b" || rest == "l" { 256 } else { 384 }),
    };
    let cfg = match size {
        "b" | "l" => 2.0,
        "xl" | "xxl" => 1.75,
        "3b" => 1.65,
        other => bail!("unknown LlamaGen size `{other}`"),
    };
    Ok((size, px, cfg))
}

/// The LlamaGen c2i family (FoundationVision/LlamaGen): published sizes and fixture configs.
pub struct LlamaGenFamily;

impl ModelFamily for LlamaGenFamily {
    fn family(&self) -> Family {
        Family::RasterAr
    }
    fn label(&self) -> &'static str {
        "LlamaGen"
    }
    fn names(&self) -> &'static [&'static str] {
        &PUBLISHED_NAMES
    }
    fn recognises_config(&self, v: &serde_json::Value) -> bool {
        LlamaGenConfig::is_reference_json(v)
    }
    fn check_settings(&self, settings: &RawSettings) -> std::result::Result<(), SettingsError> {
        parse_settings::<LlamaGenSettings>(settings).map(|_| ())
    }
    fn pixels_per_token(&self) -> usize {
        LlamaGenVqConfig::vq_16().downsample_factor()
    }
    fn default_settings(&self, name: &str) -> Result<serde_json::Value> {
        Ok(serde_json::to_value(LlamaGenSampling::fid_recipe(published_recipe(name)?.2))?)
    }
    fn resolve(&self, req: &ModelRequest, config: Option<&serde_json::Value>) -> Result<ResolvedModel> {
        let (name, mut cfg, default_cfg, beside) = match config {
            Some(v) => {
                let cfg = LlamaGenConfig::from_reference_json(v).with_context(|| req.config_source())?;
                let dir = req.config_dir();
                let file = |section: &str| v[section]["checkpoint"].as_str().map(|f| dir.join(f));
                let name = req.model.clone().unwrap_or_else(|| format!("llamagen-{}x{}-custom", cfg.gpt.n_layer, cfg.gpt.dim));
                // sample_c2i_ddp.py's default guidance for unnamed configurations.
                (name, cfg, 1.5, (file("gpt"), file("vq")))
            }
            None => {
                let name = req.model.clone().context("LlamaGen: give a model name or a config")?;
                let (size, px, cfg_scale) = published_recipe(&name)?;
                let cfg = LlamaGenConfig::published(size, px)?;
                (name, cfg, cfg_scale, (None, None))
            }
        };
        req.arch.refuse_unsupported("LlamaGen", &["depth", "width", "heads"])?;
        req.arch.apply_shape(&mut cfg.gpt.n_layer, &mut cfg.gpt.dim, &mut cfg.gpt.n_head, None)?;
        if let Some(px) = req.resolution {
            // One token per patch; the RoPE grid and the KV cache follow the block size.
            let grid = px / cfg.vq.downsample_factor();
            cfg.image_size = px;
            cfg.gpt.block_size = grid * grid;
            cfg.validate()?;
        }
        let settings = parse_settings::<LlamaGenSettings>(&req.settings).map_err(|e| anyhow::anyhow!("LlamaGen: {e}"))?;
        let sampling = LlamaGenSampling::fid_recipe(default_cfg).with_settings(&settings);
        let paths = req.weight_paths(beside, ("c2i_*.pt", "vq_ds16_c2i.pt"))?;
        let (num_classes, image_size) = (cfg.gpt.num_classes, cfg.image_size);
        let model_name = name.clone();
        Ok(ResolvedModel::new(
            name,
            Family::RasterAr,
            num_classes,
            image_size,
            serde_json::to_value(&sampling)?,
            Box::new(move |device, dtype| {
                let g = match &paths {
                    Some((gpt, Some(vq))) => LlamaGenGenerator::load(&model_name, cfg, gpt, vq, sampling, device, dtype)?,
                    Some((_, None)) => bail!("LlamaGen needs --vae vq_ds16_c2i.pt"),
                    None => LlamaGenGenerator::random_init(&model_name, cfg, sampling, 0, device, dtype)?,
                };
                Ok(Box::new(g) as Box<dyn Generator>)
            }),
        ))
    }
}

/// One transformer layer (`layers.N`).
struct Block {
    attention: MultiHeadAttention,
    feed_forward: SwiGlu,
    attention_norm: RmsNorm,
    ffn_norm: RmsNorm,
}

/// Sub-results of one layer, for the block parity test.
pub struct BlockParts {
    pub attention_norm_out: Tensor,
    /// q and k after RoPE, `(B, heads, T, head_dim)`.
    pub q_rope: Tensor,
    pub k_rope: Tensor,
    /// Attention output after `wo`, before the residual.
    pub attention_out: Tensor,
    pub h: Tensor,
    pub ffn_out: Tensor,
    pub out: Tensor,
}

/// The LlamaGen c2i GPT.
pub struct LlamaGenGpt {
    cfg: LlamaGenGptConfig,
    cls_embedding: Embedding,
    tok_embeddings: Embedding,
    layers: Vec<Block>,
    norm: RmsNorm,
    output: RowLinear,
    rope: Rope2d,
    device: Device,
    dtype: DType,
}

impl LlamaGenGpt {
    /// Builds the GPT from `vb` (prefixes as in the checkpoint: `layers.N.attention.wqkv`, ...).
    pub fn new(cfg: &LlamaGenGptConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let (d, hd) = (cfg.dim, cfg.head_dim());
        let cls_embedding = candle_nn::embedding(cfg.class_table_rows(), d, vb.pp("cls_embedding").pp("embedding_table"))?;
        let tok_embeddings = candle_nn::embedding(cfg.vocab_size, d, vb.pp("tok_embeddings"))?;
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let vb = vb.pp("layers").pp(i);
            layers.push(Block {
                attention: MultiHeadAttention::load_fused(vb.pp("attention"), d, cfg.n_head, ("wqkv", "wo"), false, false)?,
                feed_forward: SwiGlu::load(vb.pp("feed_forward"), d, cfg.ffn_hidden())?,
                attention_norm: RmsNorm::load(d, cfg.norm_eps, vb.pp("attention_norm"))?,
                ffn_norm: RmsNorm::load(d, cfg.norm_eps, vb.pp("ffn_norm"))?,
            });
        }
        let norm = RmsNorm::load(d, cfg.norm_eps, vb.pp("norm"))?;
        let output = RowLinear::from_linear(&candle_nn::linear_no_bias(d, cfg.vocab_size, vb.pp("output"))?)?;
        let rope = Rope2d::new(cfg.grid(), hd, cfg.rope_base, cfg.cls_token_num, vb.device())?;
        Ok(Self {
            cfg: cfg.clone(),
            cls_embedding,
            tok_embeddings,
            layers,
            norm,
            output,
            rope,
            device: vb.device().clone(),
            dtype: vb.dtype(),
        })
    }

    pub fn config(&self) -> &LlamaGenGptConfig {
        &self.cfg
    }
    pub fn rope(&self) -> &Rope2d {
        &self.rope
    }
    pub fn device(&self) -> &Device {
        &self.device
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    fn ids(&self, ids: &[u32]) -> Result<Tensor> {
        Ok(Tensor::new(ids, &self.device)?)
    }

    /// Class-token embeddings `(B, 1, C)`; `labels` may include the null row `num_classes`.
    pub fn class_embeddings(&self, labels: &[u32]) -> Result<Tensor> {
        let rows = self.cfg.class_table_rows() as u32;
        if let Some(&bad) = labels.iter().find(|&&l| l >= rows) {
            bail!("class id {bad} is outside the class table (0..{rows})");
        }
        Ok(self.cls_embedding.forward(&self.ids(labels)?)?.unsqueeze(1)?)
    }

    /// Token embeddings `(B, T, C)` of image token ids laid out `(B, T)`.
    pub fn token_embeddings(&self, tokens: &Tensor) -> Result<Tensor> {
        Ok(self.tok_embeddings.forward(tokens)?)
    }

    /// Causal mask for `t` new tokens when they are more than one (a single token sees every
    /// cached key, which is what the reference's masked row over the filled slots amounts to).
    fn mask(&self, t: usize, start: usize) -> Result<Option<Tensor>> {
        if t <= 1 {
            return Ok(None);
        }
        Ok(Some(attention::causal_mask(t, start + t, start, self.dtype, &self.device)?))
    }

    /// One layer over `x (B, T, C)` at positions `start..start+T`, through `cache` if given.
    fn block_forward(&self, b: &Block, x: &Tensor, start: usize, cache: Option<&mut KvCache>) -> Result<Tensor> {
        let mask = self.mask(x.dim(1)?, start)?;
        let rope = |q: &Tensor, k: &Tensor| -> candle_core::Result<(Tensor, Tensor)> {
            Ok((self.rope.apply(q, start)?, self.rope.apply(k, start)?))
        };
        let attn = b.attention.forward_with_qk_transform(&b.attention_norm.forward(x)?, mask.as_ref(), cache, &rope)?;
        let h = (x + attn)?;
        Ok((&h + b.feed_forward.forward(&b.ffn_norm.forward(&h)?)?)?)
    }

    /// Every intermediate of layer `layer` over `x` without cache (positions from 0, causal),
    /// for the block parity test.
    pub fn block_parts(&self, layer: usize, x: &Tensor) -> Result<BlockParts> {
        let b = self.layers.get(layer).context("layer index out of range")?;
        let attention_norm_out = b.attention_norm.forward(x)?;
        let (q, k, v) = b.attention.project_qkv(&attention_norm_out)?;
        let (q_rope, k_rope) = (self.rope.apply(&q, 0)?, self.rope.apply(&k, 0)?);
        let mask = self.mask(x.dim(1)?, 0)?;
        let attention_out = b.attention.attend(&q_rope, &k_rope, &v, mask.as_ref(), None)?;
        let h = (x + &attention_out)?;
        let ffn_out = b.feed_forward.forward(&b.ffn_norm.forward(&h)?)?;
        let out = (&h + &ffn_out)?;
        Ok(BlockParts { attention_norm_out, q_rope, k_rope, attention_out, h, ffn_out, out })
    }

    /// Runs the layers over `x` (B, T, C) at positions `start..start+T`, through `caches` (one
    /// per layer) when given. Returns every layer's output and the final-norm output (the
    /// reference's hooks) and the logits `(B, T, V)` in f32.
    fn run(&self, x: Tensor, start: usize, mut caches: Option<&mut [KvCache]>) -> Result<(Vec<Tensor>, Tensor)> {
        let mut h = x;
        let mut outs = Vec::with_capacity(self.layers.len() + 1);
        for (i, b) in self.layers.iter().enumerate() {
            h = self.block_forward(b, &h, start, caches.as_deref_mut().map(|cs| &mut cs[i]))?;
            outs.push(h.clone());
        }
        let normed = self.norm.forward(&h)?;
        outs.push(normed.clone());
        let logits = self.output.forward(&normed)?.to_dtype(DType::F32)?;
        Ok((outs, logits))
    }

    /// Teacher forcing: the sequence `[class, z_0 .. z_{N-2}]` with causal attention, no cache.
    /// Returns logits `(B, N, V)` (position p predicts z_p) and the hidden states: the input of
    /// the first block, each block's output, the final-norm output.
    pub fn teacher_forcing(&self, labels: &[u32], tokens: &Tensor) -> Result<(Tensor, Vec<Tensor>)> {
        let (bsz, n) = tokens.dims2()?;
        ensure!(labels.len() == bsz, "{} labels for a batch of {bsz}", labels.len());
        ensure!(n <= self.cfg.block_size, "{n} tokens exceed block_size {}", self.cfg.block_size);
        let cls = self.class_embeddings(labels)?.to_dtype(self.dtype)?;
        let mut parts = vec![cls];
        if n > 1 {
            parts.push(self.token_embeddings(&tokens.narrow(1, 0, n - 1)?)?);
        }
        let x = Tensor::cat(&parts, 1)?;
        let (mut hidden, logits) = self.run(x.clone(), 0, None)?;
        hidden.insert(0, x);
        Ok((logits, hidden))
    }

    /// Prepares `caches` as one KV cache per layer for `batch` rows and `capacity` positions,
    /// reusing the buffers when the shape is unchanged.
    fn reset_caches(&self, caches: &mut Vec<KvCache>, batch: usize, capacity: usize) -> Result<()> {
        let layers = self.layers.iter().map(|b| &b.attention);
        Ok(reset_layer_caches(caches, layers, batch, capacity, self.dtype, &self.device)?)
    }

    /// Analytic FLOPs of one forward of `q` new tokens attending `k` keys, per sequence.
    pub fn forward_flops(&self, q: usize, k: usize) -> f64 {
        llamagen_forward_flops(&self.cfg, q, k)
    }

    /// Bytes one forward step must read: every weight except the embedding tables (a step
    /// gathers one row of them) plus the keys and values of `k` cached positions per row.
    pub fn step_read_bytes(&self, rows: usize, k: usize) -> f64 {
        let c = &self.cfg;
        let (d, h) = (c.dim, c.ffn_hidden());
        let per_layer = 3 * d * d + d * d + 3 * d * h + 2 * d;
        let weights = c.n_layer * per_layer + d + c.vocab_size * d;
        let cache = 2 * c.n_layer * rows * k * d;
        ((weights + cache) * self.dtype.size_in_bytes()) as f64
    }
}

/// FLOPs (2 x MACs) of one LlamaGen forward over `q` new tokens attending `k` keys, one
/// sequence: `L (2 q d (d + 2 kv) + 2 q d^2 + 6 q d H + 4 q k d) + 2 q d V`. With kv = d this is
/// The [`crate::flops`] convention's `L (8 d^2 + 6 d H + 4 k d) + 2 d V` per token.
pub fn llamagen_forward_flops(c: &LlamaGenGptConfig, q: usize, k: usize) -> f64 {
    use crate::flops;
    let (d, kv) = (c.dim, c.kv_heads() * c.head_dim());
    let per_layer =
        flops::linear(q, d, d + 2 * kv) + flops::linear(q, d, d) + flops::swiglu(q, d, c.ffn_hidden()) + flops::attention_core(q, k, d);
    c.n_layer as f64 * per_layer + flops::linear(q, d, c.vocab_size)
}

/// Per-step transformer FLOPs of one image's generation (CFG doubling included): step t feeds
/// one token attending t + 1 keys.
pub fn llamagen_step_flops(c: &LlamaGenGptConfig, cfg: bool) -> Vec<f64> {
    let mult = if cfg { 2.0 } else { 1.0 };
    (0..c.block_size).map(|t| mult * llamagen_forward_flops(c, 1, t + 1)).collect()
}

/// What one generation step computed, for parity tests (the reference's forward hooks).
#[derive(Clone, Debug)]
pub struct StepTrace {
    /// Logits the model returned for the last position, `(B', V)` (B' = 2B with CFG, cond first).
    pub raw_logits: Tensor,
    /// Logits handed to the sampler (after guidance), `(B, V)`.
    pub guided_logits: Tensor,
    /// Whether guidance was applied at this step.
    pub guided: bool,
    /// Ids the forward consumed: class ids (prefill) or the previous tokens, `B'` of them.
    pub input_ids: Vec<u32>,
    /// Sequence position of the forward.
    pub input_pos: usize,
}

impl LlamaGenGpt {
    /// The cached generation loop (`generate()` of generate.py). Returns token ids `(B, N)`
    /// row-major. `trace` receives one [`StepTrace`] per forward when given.
    ///
    /// The caller owns the per-layer KV caches and lends them (the way candle-transformers'
    /// `llama::Llama::forward` takes `&mut Cache`); they are resized here and, when a later
    /// call has the same shape, reused without allocating.
    pub fn generate(
        &self,
        labels: &[u32],
        s: &LlamaGenSampling,
        caches: &mut Vec<KvCache>,
        rng: &mut dyn RandomSource,
        observer: &mut dyn StepObserver,
        mut trace: Option<&mut Vec<StepTrace>>,
    ) -> Result<Vec<u32>> {
        let b = labels.len();
        ensure!(b > 0, "no labels to sample");
        let nc = self.cfg.num_classes as u32;
        if let Some(&bad) = labels.iter().find(|&&l| l >= nc) {
            bail!("class id {bad} is out of range (0..{nc})");
        }
        let use_cfg = s.uses_cfg();
        ensure!(
            !use_cfg || self.cfg.class_table_rows() > self.cfg.num_classes,
            "cfg {} needs the null class row, but this GPT was built with class_dropout_prob 0",
            s.cfg_scale
        );
        let n = self.cfg.block_size;
        let rows = if use_cfg { 2 * b } else { b };
        // The last token is never fed back: the cache holds the class token + N - 1 tokens.
        self.reset_caches(caches, rows, self.cfg.cls_token_num + n - 1)?;
        let mut cond: Vec<u32> = labels.to_vec();
        if use_cfg {
            cond.extend(std::iter::repeat_n(nc, b));
        }
        let mut tokens = vec![0u32; b * n];
        let mut input_ids = cond.clone();
        let mut cfg_flag = true;
        for step in 0..n {
            // Decode loop index i = step - 1 stops guiding after cfg_interval.
            if step >= 1 && s.cfg_interval > -1 && (step as i64 - 1) > s.cfg_interval {
                cfg_flag = false;
            }
            let guided_now = use_cfg && cfg_flag;
            let size = StepSize {
                step,
                kind: StepKind::Transformer,
                batch: b,
                tokens_decoded: 1,
                tokens_attended: step + 1,
                flops: rows as f64 * self.forward_flops(1, step + 1),
            };
            let (raw, guided, next) = record_step(observer, &self.device, size, || {
                // Forward: the class token (prefill) or the previous token, through the caches.
                let x = if step == 0 {
                    self.class_embeddings(&input_ids)?.to_dtype(self.dtype)?
                } else {
                    self.token_embeddings(&self.ids(&input_ids)?.unsqueeze(1)?)?
                };
                let (_, logits) = self.run(x, step, Some(caches.as_mut_slice()))?;
                let raw = logits.i((.., logits.dim(1)? - 1, ..))?; // (rows, V)
                                                                   // Guide.
                let guided = match (use_cfg, guided_now) {
                    (true, true) => {
                        let (c, u) = cfg::split_halves(&raw)?;
                        cfg::uncond_plus_scaled_diff(&c, &u, s.cfg_scale)?
                    }
                    (true, false) => cfg::split_halves(&raw)?.0,
                    (false, _) => raw.clone(),
                };
                // Sample (sample(): logits / max(temperature, 1e-5), top-k with ties kept, top-p
                // by the HF rule, softmax, multinomial).
                let next = TokenSampler::hugging_face(s.temperature, s.top_k, s.top_p).sample(&guided, rng)?.to_vec1::<u32>()?;
                Ok((raw, guided, next))
            })?;
            if let Some(tr) = trace.as_deref_mut() {
                tr.push(StepTrace {
                    raw_logits: raw,
                    guided_logits: guided,
                    guided: guided_now,
                    input_ids: input_ids.clone(),
                    input_pos: step,
                });
            }
            for (i, &t) in next.iter().enumerate() {
                tokens[i * n + step] = t;
            }
            // Both CFG halves are fed the same sampled token.
            input_ids = if use_cfg { next.iter().chain(next.iter()).copied().collect() } else { next };
        }
        Ok(tokens)
    }
}

/// A LlamaGen generator: GPT + VQ-16 behind the [`Generator`] interface.
pub struct LlamaGenGenerator {
    name: String,
    cfg: LlamaGenConfig,
    gpt: LlamaGenGpt,
    /// The GPT's KV caches, kept between `sample` calls so a same-sized batch allocates nothing.
    caches: Vec<KvCache>,
    vq: LlamaGenVq,
    sampling: LlamaGenSampling,
}

impl LlamaGenGenerator {
    /// `gpt_vb` / `vq_vb` address the weights with the checkpoint's own names (`layers.0...`,
    /// `encoder.conv_in...`). The VQ codebook must match the GPT vocabulary.
    pub fn new(name: &str, cfg: LlamaGenConfig, gpt_vb: VarBuilder, vq_vb: VarBuilder, sampling: LlamaGenSampling) -> Result<Self> {
        cfg.validate()?;
        let gpt = LlamaGenGpt::new(&cfg.gpt, gpt_vb)?;
        let vq = LlamaGenVq::new(&cfg.vq, vq_vb)?;
        Ok(Self { name: name.to_string(), cfg, gpt, caches: Vec::new(), vq, sampling })
    }

    /// Loads the published files: the GPT checkpoint (`c2i_*.pt`: weights under `model` for DDP
    /// saves, or at the top level for the FSDP ones; a stale `freqs_cis` entry is tolerated) and
    /// the VQ checkpoint (`vq_ds16_c2i.pt`, weights under `model`). Loading is strict: a missing
    /// or mis-shaped tensor names the key and the expected shape, and a checkpoint holding
    /// tensors the model does not use is refused. The VQ codebook must have one row per GPT
    /// vocabulary entry; that is checked before anything is built. The VQ runs in f32 (CPU
    /// convolutions have no bf16 kernel), the GPT in `dtype`.
    pub fn load(
        name: &str,
        cfg: LlamaGenConfig,
        gpt_ckpt: &std::path::Path,
        vq_ckpt: &std::path::Path,
        sampling: LlamaGenSampling,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        cfg.validate()?;
        let vq_w = StrictWeights::open(vq_ckpt, &["model", "state_dict", ""], &[], device)?;
        if let Some(cb) = vq_w.tensors().get("quantize.embedding.weight") {
            ensure!(
                cb.dim(0)? == cfg.gpt.vocab_size,
                "{}: the VQ codebook has {} entries but the GPT's vocabulary is {}: this tokenizer does not belong to this GPT",
                vq_w.source(),
                cb.dim(0)?,
                cfg.gpt.vocab_size
            );
        }
        let gpt_w = StrictWeights::open(gpt_ckpt, &["model", "module", "state_dict", ""], &[], device)?;
        let gen = Self::new(name, cfg, gpt_w.var_builder(dtype, device), vq_w.var_builder(DType::F32, device), sampling)?;
        gpt_w.ensure_all_used(|k| k == "freqs_cis" || k.contains(".kv_cache."))?;
        vq_w.ensure_all_used(|_| false)?;
        Ok(gen)
    }

    /// Random weights (`--random-init`: timing and FLOP work without the published files;
    /// images are noise). Same shapes, dtypes and code path as [`load`](Self::load).
    pub fn random_init(
        name: &str,
        cfg: LlamaGenConfig,
        sampling: LlamaGenSampling,
        seed: u64,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let rnd = crate::checkpoint::RandomWeights::new(seed);
        Self::new(name, cfg, rnd.var_builder(dtype, device), rnd.var_builder(DType::F32, device), sampling)
    }

    pub fn gpt(&mut self) -> &mut LlamaGenGpt {
        &mut self.gpt
    }
    pub fn vq(&self) -> &LlamaGenVq {
        &self.vq
    }
    pub fn set_sampling(&mut self, s: LlamaGenSampling) {
        self.sampling = s;
    }
    pub fn sampling(&self) -> &LlamaGenSampling {
        &self.sampling
    }

    /// Decodes token ids `(B, N)` to images in [-1, 1] `(B, 3, H, W)`, reporting a decode step.
    pub fn decode(&self, tokens: &[u32], batch: usize, step: usize, observer: &mut dyn StepObserver) -> Result<Tensor> {
        let g = self.cfg.gpt.grid();
        let size = StepSize {
            step,
            kind: StepKind::Decode,
            batch,
            tokens_decoded: 0,
            tokens_attended: 0,
            flops: batch as f64 * self.vq.decoder_flops(g, g),
        };
        let device = self.gpt.device().clone();
        let img = record_step(observer, &device, size, || {
            let ids = Tensor::from_slice(tokens, (batch, g * g), &device)?;
            self.vq.decode_code(&ids, g, g)
        })?;
        Ok(img)
    }
}

/// LlamaGen's own uint8 conversion (`sample_c2i_ddp.py`): `clamp(127.5 x + 128, 0, 255)`
/// truncated, NHWC. The `+ 128` (not 127.5) is the reference's; it shifts values by half a level.
pub fn llamagen_to_uint8_nhwc(x: &Tensor) -> Result<(Vec<u8>, usize, usize, usize)> {
    let (n, c, h, w) = x.dims4()?;
    ensure!(c == 3, "expected 3 channels, got {c}");
    let v = ((x.permute((0, 2, 3, 1))?.to_dtype(DType::F32)? * 127.5)? + 128.0)?.clamp(0f32, 255f32)?.flatten_all()?.to_vec1::<f32>()?;
    Ok((v.into_iter().map(|f| f as u8).collect(), n, h, w))
}

impl Generator for LlamaGenGenerator {
    fn name(&self) -> &str {
        &self.name
    }
    fn family(&self) -> Family {
        Family::RasterAr
    }
    fn image_size(&self) -> usize {
        self.cfg.image_size
    }
    fn num_classes(&self) -> usize {
        self.cfg.gpt.num_classes
    }
    fn settings(&self) -> serde_json::Value {
        serde_json::json!({
            "cfg": self.sampling.cfg_scale,
            "cfg_interval": self.sampling.cfg_interval,
            "top_k": self.sampling.top_k,
            "top_p": self.sampling.top_p,
            "temperature": self.sampling.temperature,
            "image_size": self.cfg.image_size,
            "uint8": "clamp(127.5 x + 128, 0, 255) truncated (sample_c2i_ddp.py)",
        })
    }
    fn flops_per_image(&self) -> FlopsPerImage {
        let per_step = llamagen_step_flops(&self.cfg.gpt, self.sampling.uses_cfg());
        let g = self.cfg.gpt.grid();
        FlopsPerImage { transformer: per_step.iter().sum(), diffusion_mlp: 0.0, decoder: self.vq.decoder_flops(g, g), per_step }
    }
    fn step_matmuls(&self, step: &StepSize) -> Vec<MatmulShape> {
        if step.kind != StepKind::Transformer {
            return vec![];
        }
        let c = &self.cfg.gpt;
        let rows = step.batch * if self.sampling.uses_cfg() { 2 } else { 1 };
        let (m, d, h) = (rows * step.tokens_decoded, c.dim, c.ffn_hidden());
        let mut shapes = transformer_block_matmuls(m, d, &[(d, h), (d, h), (h, d)]);
        shapes.push(MatmulShape::new(m, d, c.vocab_size));
        shapes
    }
    fn sample(&mut self, labels: &[u32], seed: u64, observer: &mut dyn StepObserver) -> Result<Samples> {
        let mut rng = SeededSource::new(seed);
        let tokens = self.gpt.generate(labels, &self.sampling, &mut self.caches, &mut rng, observer, None)?;
        let img = self.decode(&tokens, labels.len(), self.cfg.gpt.block_size, observer)?;
        let (images, n, height, width) = llamagen_to_uint8_nhwc(&img)?;
        Ok(Samples { images, n, height, width, token_ids: Some(tokens), latents: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_ffn_widths() {
        assert_eq!(LlamaGenGptConfig::gpt_b(256).ffn_hidden(), 2048);
        assert_eq!(LlamaGenGptConfig::gpt_l(256).ffn_hidden(), 2816);
        assert_eq!(LlamaGenGptConfig::gpt_xl(256).ffn_hidden(), 3584);
        assert_eq!(LlamaGenGptConfig::gpt_xxl(256).ffn_hidden(), 4096);
        assert_eq!(LlamaGenGptConfig::gpt_3b(576).ffn_hidden(), 8704);
        assert_eq!(LlamaGenGptConfig::gpt_3b(576).head_dim(), 100);
    }

    #[test]
    fn flops_match_reference_table() {
        // flops_summary.txt: GPT-B 102.3, L 339.3, XL 782.5, XXL 1436.7 GF (256 px, CFG, ideal causal),
        // GPT-B 384 px 236.9 GF.
        for (cfg, want) in [
            (LlamaGenGptConfig::gpt_b(256), 102.3),
            (LlamaGenGptConfig::gpt_l(256), 339.3),
            (LlamaGenGptConfig::gpt_xl(256), 782.5),
            (LlamaGenGptConfig::gpt_xxl(256), 1436.7),
            (LlamaGenGptConfig::gpt_b(576), 236.9),
        ] {
            let total: f64 = llamagen_step_flops(&cfg, true).iter().sum::<f64>() / 1e9;
            assert!((total - want).abs() < 0.06, "dim {} block {}: {total:.2} GF vs {want}", cfg.dim, cfg.block_size);
        }
    }
}
