//! VAR: next-scale prediction (FoundationVision/VAR `models/var.py`, `basic_var.py`).
//!
//! The transformer predicts all tokens of scale `si` (a `pn x pn` map) in one forward pass,
//! attending to every token of the scales before it through a per-block KV cache. Sampling
//! (`autoregressive_infer_cfg`) runs `K = len(patch_nums)` passes over a doubled batch
//! `[conditional ; unconditional (class = num_classes)]`, guides the logits with
//! `(1 + t) c - t u`, `t = cfg * si / (K - 1)`, draws tokens with top-k / top-p, and feeds
//! `word_embed(area(f_hat, pn_{si+1}))` to the next scale; the VQVAE decodes the final `f_hat`.
//!
//! Block (`AdaLNSelfAttn`): modulation rows `ada_lin(cond)` = gamma1, gamma2, scale1, scale2,
//! shift1, shift2 (or `ada_gss + shared_ada_lin(cond)` for `shared_aln`);
//! `x += gamma1 * attn(LN(x) (1 + scale1) + shift1)`; `x += gamma2 * ffn(LN(x) (1 + scale2) + shift2)`,
//! LN without affine (eps 1e-6), FFN with GELU-tanh, attention with L2-normalised q/k, a learned
//! per-head q scale `exp(min(scale_mul_1H11, ln 100))` and softmax scale 1. Head:
//! `head(LN(x) (1 + scale) + shift)` with `[scale, shift] = head_nm.ada_lin(cond)` in f32.
//!
//! Work done once per `sample` call instead of at every scale (same values, less work): the
//! position+level table `lvl_pos`, and every modulation row (they depend on the class only).
//! With `cfg == 0` the guided logits equal the conditional ones exactly, so the unconditional
//! half is not computed.

use crate::checkpoint::{get_buffer, StrictWeights};
use crate::family::{check_range, parse_settings, ModelFamily, ModelRequest, RawSettings, ResolvedModel, SettingsError};
use crate::flops;
use crate::generator::{
    record_step, to_uint8_nhwc_from_unit, transformer_block_matmuls, Family, FlopsPerImage, Generator, MatmulShape, Samples, StepKind,
    StepObserver, StepSize,
};
use crate::nn::adaln::AdaLnModulation;
use crate::nn::attention::{block_causal_mask, KvCache, MultiHeadAttention, QkNorm, QkvProjection};
use crate::nn::cfg;
use crate::nn::fused::{gated_residual, ln_modulate};
use crate::nn::linear::RowLinear;
use crate::nn::mlp::{Activation, Mlp};
use crate::nn::norm::LayerNorm;
use crate::nn::sampling::{gumbel_softmax, TokenSampler};
use crate::reference_config::{section, yes};
use crate::tokenizers::var_vqvae::{VarVqVae, VarVqVaeConfig};
use anyhow::{bail, ensure, Context};
use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{embedding, linear, linear_no_bias, Embedding, Linear, VarBuilder};
use genbench_runtime::{RandomSource, SeededSource};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Constructor arguments of the reference `VAR` (inference-relevant ones) plus the two VQVAE
/// numbers it reads (`V`, `Cvae`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VarConfig {
    pub depth: usize,
    pub embed_dim: usize,
    pub num_heads: usize,
    pub mlp_ratio: f64,
    pub num_classes: usize,
    pub norm_eps: f64,
    pub shared_aln: bool,
    pub attn_l2_norm: bool,
    pub patch_nums: Vec<usize>,
    /// Codebook size V (= head outputs).
    pub vocab_size: usize,
    /// VQVAE latent channels (= word_embed inputs).
    pub cvae: usize,
}

/// `config.json['VAR']`: the `VAR(...)` keyword arguments that shape the network (the others
/// are training and kernel options). Defaults as in `models/var.py`, except `attn_l2_norm`:
/// true, as `build_vae_var` passes it for every released model.
#[derive(Deserialize)]
struct VarKwargs {
    depth: usize,
    embed_dim: usize,
    num_heads: usize,
    #[serde(default = "default_mlp_ratio")]
    mlp_ratio: f64,
    num_classes: usize,
    #[serde(default = "default_norm_eps")]
    norm_eps: f64,
    #[serde(default)]
    shared_aln: bool,
    #[serde(default = "yes")]
    attn_l2_norm: bool,
    /// Absent: the VQVAE's `v_patch_nums`.
    patch_nums: Option<Vec<usize>>,
}

fn default_mlp_ratio() -> f64 {
    4.0
}
fn default_norm_eps() -> f64 {
    1e-6
}

/// The 256-px schedule of every published 256-px model.
pub const PATCH_NUMS_256: [usize; 10] = [1, 2, 3, 4, 5, 6, 8, 10, 13, 16];
/// The 512-px schedule of VAR-d36-s.
pub const PATCH_NUMS_512: [usize; 10] = [1, 2, 3, 4, 6, 9, 13, 18, 24, 32];

impl VarConfig {
    /// `build_vae_var(depth=d, ...)`: width 64 d, d heads, MLP ratio 4, 1000 classes, V 4096,
    /// Cvae 32, L2-normalised attention.
    pub fn from_depth(depth: usize, patch_nums: &[usize], shared_aln: bool) -> Self {
        Self {
            depth,
            embed_dim: 64 * depth,
            num_heads: depth,
            mlp_ratio: 4.0,
            num_classes: 1000,
            norm_eps: 1e-6,
            shared_aln,
            attn_l2_norm: true,
            patch_nums: patch_nums.to_vec(),
            vocab_size: 4096,
            cvae: 32,
        }
    }
    /// `var_d16.pth` (310M, FID 3.55).
    pub fn var_d16() -> Self {
        Self::from_depth(16, &PATCH_NUMS_256, false)
    }
    /// `var_d20.pth` (601M).
    pub fn var_d20() -> Self {
        Self::from_depth(20, &PATCH_NUMS_256, false)
    }
    /// `var_d24.pth` (1.0B).
    pub fn var_d24() -> Self {
        Self::from_depth(24, &PATCH_NUMS_256, false)
    }
    /// `var_d30.pth` (2.0B).
    pub fn var_d30() -> Self {
        Self::from_depth(30, &PATCH_NUMS_256, false)
    }
    /// `var_d36.pth`: 512 px, shared AdaLN (2.35B).
    pub fn var_d36() -> Self {
        Self::from_depth(36, &PATCH_NUMS_512, true)
    }

    /// Published model by name (`var-d16` ... `var-d36`) with its VQVAE config.
    pub fn published(name: &str) -> Option<(Self, VarVqVaeConfig)> {
        let cfg = match name {
            "var-d16" => Self::var_d16(),
            "var-d20" => Self::var_d20(),
            "var-d24" => Self::var_d24(),
            "var-d30" => Self::var_d30(),
            "var-d36" => Self::var_d36(),
            _ => return None,
        };
        let vae = VarVqVaeConfig::published_with_patch_nums(&cfg.patch_nums);
        Some((cfg, vae))
    }

    /// Names accepted by [`published`](Self::published).
    pub const PUBLISHED: [&'static str; 5] = ["var-d16", "var-d20", "var-d24", "var-d30", "var-d36"];

    /// Reads a reference `config.json` (the VAR fixtures' format): `VAR` holds the `VAR(...)`
    /// kwargs, `VQVAE` the `VQVAE(...)` kwargs with its `ddconfig`.
    pub fn from_reference_json(v: &serde_json::Value) -> anyhow::Result<(Self, VarVqVaeConfig)> {
        let var: VarKwargs = section(v, "/VAR")?;
        let vae = VarVqVaeConfig::from_reference_json(v.get("VQVAE").context("config has no `VQVAE`")?)?;
        let cfg = Self {
            depth: var.depth,
            embed_dim: var.embed_dim,
            num_heads: var.num_heads,
            mlp_ratio: var.mlp_ratio,
            num_classes: var.num_classes,
            norm_eps: var.norm_eps,
            shared_aln: var.shared_aln,
            attn_l2_norm: var.attn_l2_norm,
            patch_nums: var.patch_nums.unwrap_or_else(|| vae.patch_nums.clone()),
            vocab_size: vae.vocab_size,
            cvae: vae.z_channels,
        };
        cfg.validate_with(&vae)?;
        Ok((cfg, vae))
    }

    /// Consistency of the transformer config with itself and with a VQVAE config.
    pub fn validate_with(&self, vae: &VarVqVaeConfig) -> anyhow::Result<()> {
        ensure!(self.depth > 0 && self.num_heads > 0, "VAR depth and num_heads must be positive");
        ensure!(
            self.embed_dim.is_multiple_of(self.num_heads),
            "VAR embed_dim {} does not split into {} heads",
            self.embed_dim,
            self.num_heads
        );
        ensure!(
            vae.vocab_size == self.vocab_size,
            "the VQVAE codebook has {} entries but the transformer predicts {} classes",
            vae.vocab_size,
            self.vocab_size
        );
        ensure!(vae.z_channels == self.cvae, "the VQVAE latent has {} channels but the transformer embeds {}", vae.z_channels, self.cvae);
        ensure!(
            vae.patch_nums == self.patch_nums,
            "the VQVAE scales {:?} do not match the transformer's patch_nums {:?}",
            vae.patch_nums,
            self.patch_nums
        );
        vae.validate()
    }

    pub fn head_dim(&self) -> usize {
        self.embed_dim / self.num_heads
    }
    /// `round(embed_dim * mlp_ratio)`.
    pub fn mlp_hidden(&self) -> usize {
        (self.embed_dim as f64 * self.mlp_ratio).round() as usize
    }
    pub fn num_scales(&self) -> usize {
        self.patch_nums.len()
    }
    /// Total tokens L = sum pn^2.
    pub fn seq_len(&self) -> usize {
        self.patch_nums.iter().map(|p| p * p).sum()
    }
    /// `[begin, end)` token range of each scale.
    pub fn begin_ends(&self) -> Vec<(usize, usize)> {
        let mut cur = 0;
        self.patch_nums
            .iter()
            .map(|p| {
                let r = (cur, cur + p * p);
                cur += p * p;
                r
            })
            .collect()
    }
    /// Tokens decoded at step `si` (pn^2).
    pub fn tokens_at(&self, si: usize) -> usize {
        self.patch_nums[si] * self.patch_nums[si]
    }
    /// Keys attended at step `si` (all tokens of scales 0..=si).
    pub fn keys_at(&self, si: usize) -> usize {
        self.begin_ends()[si].1
    }

    /// Reference FLOPs per image of step `si` in the convention of [`crate::flops`] (what the reference
    /// loop executes, ada_lin recomputed at every scale):
    /// `2 x [ d (24 q C^2 + 4 q k C + 12 C^2) + 4 C^2 + 2 q C V + 2 q' Cvae C ]` with CFG
    /// (the factor 2), `12 C^2` once instead of per block for shared AdaLN.
    pub fn reference_step_flops(&self, si: usize, with_cfg: bool) -> f64 {
        let (c, d) = (self.embed_dim, self.depth);
        let q = self.tokens_at(si);
        let k = self.keys_at(si);
        let q_next = if si + 1 < self.num_scales() { self.tokens_at(si + 1) } else { 0 };
        let cf = |x: usize| x as f64;
        // qkv + proj (8 q C^2), FFN (4 q C H = 16 q C^2 for H = 4C), scores + weighted sum.
        let per_block = 8.0 * cf(q) * cf(c) * cf(c) + 4.0 * cf(q) * cf(c) * cf(self.mlp_hidden()) + 4.0 * cf(q) * cf(k) * cf(c);
        let ada = 12.0 * cf(c) * cf(c) * if self.shared_aln { 1.0 } else { cf(d) };
        let body = cf(d) * per_block
            + ada
            + 4.0 * cf(c) * cf(c)
            + 2.0 * cf(q) * cf(c) * cf(self.vocab_size)
            + 2.0 * cf(q_next) * cf(self.cvae) * cf(c);
        body * if with_cfg { 2.0 } else { 1.0 }
    }
}

/// Modulation rows of one block for a batch, each `(N, 1, C)` contiguous; `1 + scale`
/// precomputed.
#[derive(Clone, Debug)]
pub struct BlockModulation {
    pub gamma1: Tensor,
    pub gamma2: Tensor,
    pub scale1_plus_one: Tensor,
    pub scale2_plus_one: Tensor,
    pub shift1: Tensor,
    pub shift2: Tensor,
}

impl BlockModulation {
    /// From `(N, 6, C)` rows in the reference order gamma1, gamma2, scale1, scale2, shift1, shift2.
    fn from_rows(rows: &Tensor) -> Result<Self> {
        let row = |i: usize| rows.narrow(1, i, 1)?.contiguous();
        Ok(Self {
            gamma1: row(0)?,
            gamma2: row(1)?,
            scale1_plus_one: (row(2)? + 1.0)?,
            scale2_plus_one: (row(3)? + 1.0)?,
            shift1: row(4)?,
            shift2: row(5)?,
        })
    }
}

#[derive(Clone, Debug)]
enum AdaSource {
    /// `blocks.N.ada_lin = Sequential(SiLU, Linear(D, 6C))`.
    PerBlock(AdaLnModulation),
    /// `blocks.N.ada_gss (1, 1, 6, C)` added to `shared_ada_lin(cond)`.
    Shared { ada_gss: Tensor },
}

/// Intermediate tensors of one block call (parity tests).
#[derive(Clone, Debug)]
pub struct BlockTrace {
    pub attn_in: Tensor,
    pub attn_out: Tensor,
    pub x_mid: Tensor,
    pub ffn_in: Tensor,
    pub ffn_out: Tensor,
    pub out: Tensor,
}

/// `AdaLNSelfAttn`.
#[derive(Clone, Debug)]
pub struct VarBlock {
    ada: AdaSource,
    attn: MultiHeadAttention,
    ffn: Mlp,
    ln: LayerNorm,
}

impl VarBlock {
    fn load(cfg: &VarConfig, vb: VarBuilder) -> Result<Self> {
        let c = cfg.embed_dim;
        let h = cfg.num_heads;
        // Parameter order of the reference state dict: own parameters (ada_gss), attn, ffn, ada_lin.
        let ada_gss = if cfg.shared_aln { Some(vb.get((1, 1, 6, c), "ada_gss")?) } else { None };
        let avb = vb.pp("attn");
        let (qk_norm, softmax_scale) = if cfg.attn_l2_norm {
            let scale_mul = avb.get((1, h, 1, 1), "scale_mul_1H11")?;
            // exp(min(scale_mul, ln 100)): the clamp is active in trained weights.
            let q_scale = scale_mul.minimum(100f64.ln())?.exp()?;
            (QkNorm::L2WithHeadScale { q_scale }, 1.0)
        } else {
            (QkNorm::None, 0.25 / (cfg.head_dim() as f64).sqrt())
        };
        let q_bias = avb.get(c, "q_bias")?;
        let v_bias = avb.get(c, "v_bias")?;
        let zero_k_bias = avb.get(c, "zero_k_bias")?;
        let mat_qkv = linear_no_bias(c, 3 * c, avb.pp("mat_qkv"))?;
        let qkv = Linear::new(mat_qkv.weight().clone(), Some(Tensor::cat(&[&q_bias, &zero_k_bias, &v_bias], 0)?));
        let proj = linear(c, c, avb.pp("proj"))?;
        let attn = MultiHeadAttention::new(QkvProjection::Fused(qkv), proj, h, cfg.head_dim(), softmax_scale, qk_norm)?;
        let ffn = Mlp::load_named(vb.pp("ffn"), c, cfg.mlp_hidden(), c, Activation::GeluTanh, ("fc1", "fc2"), true)?;
        let ada = match ada_gss {
            Some(ada_gss) => AdaSource::Shared { ada_gss },
            None => AdaSource::PerBlock(AdaLnModulation::load(vb.pp("ada_lin"), c, c, 6)?),
        };
        let ln = LayerNorm::no_affine(c, cfg.norm_eps, vb.dtype(), vb.device())?;
        Ok(Self { ada, attn, ffn, ln })
    }

    /// The block's modulation from the raw class embedding `cond (N, C)` or, with shared AdaLN,
    /// from `shared_ada_lin(cond)` `(N, 6, C)`.
    pub fn modulation(&self, cond_or_shared: &Tensor) -> Result<BlockModulation> {
        let rows = match &self.ada {
            AdaSource::PerBlock(ada) => ada.forward(cond_or_shared)?,
            AdaSource::Shared { ada_gss } => cond_or_shared.broadcast_add(&ada_gss.squeeze(0)?)?,
        };
        BlockModulation::from_rows(&rows)
    }

    pub fn forward(&self, x: &Tensor, m: &BlockModulation, mask: Option<&Tensor>, cache: Option<&mut KvCache>) -> Result<Tensor> {
        // x = x + gamma1 * attn(LN(x) (1 + scale1) + shift1)
        let attn_in = ln_modulate(x, self.ln.eps(), &m.scale1_plus_one, &m.shift1)?;
        let x = gated_residual(x, &self.attn.forward(&attn_in, mask, cache)?, &m.gamma1)?;
        // x = x + gamma2 * ffn(LN(x) (1 + scale2) + shift2)
        let ffn_in = ln_modulate(&x, self.ln.eps(), &m.scale2_plus_one, &m.shift2)?;
        gated_residual(&x, &self.ffn.forward(&ffn_in)?, &m.gamma2)
    }

    /// `forward` keeping every intermediate.
    pub fn forward_traced(&self, x: &Tensor, m: &BlockModulation, mask: Option<&Tensor>) -> Result<BlockTrace> {
        let attn_in = ln_modulate(x, self.ln.eps(), &m.scale1_plus_one, &m.shift1)?;
        let attn_out = self.attn.forward(&attn_in, mask, None)?;
        let x_mid = gated_residual(x, &attn_out, &m.gamma1)?;
        let ffn_in = ln_modulate(&x_mid, self.ln.eps(), &m.scale2_plus_one, &m.shift2)?;
        let ffn_out = self.ffn.forward(&ffn_in)?;
        let out = gated_residual(&x_mid, &ffn_out, &m.gamma2)?;
        Ok(BlockTrace { attn_in, attn_out, x_mid, ffn_in, ffn_out, out })
    }

    pub fn attention(&self) -> &MultiHeadAttention {
        &self.attn
    }
}

/// Everything derived from the class labels once per sampling call.
#[derive(Clone, Debug)]
pub struct Conditioning {
    /// Raw class embedding `(N, C)` (`cond_BD`).
    pub cond: Tensor,
    pub blocks: Vec<BlockModulation>,
    /// Head AdaLN `1 + scale` and `shift`, `(N, 1, C)` in f32.
    pub head_scale_plus_one: Tensor,
    pub head_shift: Tensor,
}

/// Outputs of a teacher-forcing forward and its intermediates.
#[derive(Clone, Debug)]
pub struct TeacherForcing {
    pub cond: Tensor,
    pub x_in: Tensor,
    pub block_outs: Vec<Tensor>,
    pub head_nm_out: Tensor,
    pub logits: Tensor,
}

/// The VAR transformer.
#[derive(Clone, Debug)]
pub struct VarTransformer {
    cfg: VarConfig,
    word_embed: RowLinear,
    class_emb: Embedding,
    pos_start: Tensor,
    /// `lvl_embed(lvl_1L) + pos_1LC`, `(1, L, C)`, computed once at load.
    lvl_pos: Tensor,
    shared_ada_lin: Option<AdaLnModulation>,
    blocks: Vec<VarBlock>,
    head_nm: AdaLnModulation,
    head: RowLinear,
    ln_f32: LayerNorm,
    device: Device,
    dtype: DType,
}

impl VarTransformer {
    /// `vb` at the root of a `var_d*.pth` state dict. Head and head AdaLN are kept in f32 (the
    /// reference computes logits in float32 whatever the autocast dtype).
    pub fn load(cfg: &VarConfig, vb: VarBuilder) -> Result<Self> {
        let (c, l, k) = (cfg.embed_dim, cfg.seq_len(), cfg.num_scales());
        let first_l = cfg.patch_nums[0] * cfg.patch_nums[0];
        let device = vb.device().clone();
        let dtype = vb.dtype();
        let pos_start = vb.get((1, first_l, c), "pos_start")?;
        let pos_1lc = vb.get((1, l, c), "pos_1LC")?;
        // Buffers of the published files: requested for the strict check; the level of each token
        // and the block-causal mask are recomputed from patch_nums below.
        get_buffer(&vb, (1, l), "lvl_1L", DType::I64)?;
        get_buffer(&vb, (1, 1, l, l), "attn_bias_for_masking", DType::F32)?;
        let word_embed = RowLinear::from_linear(&linear(cfg.cvae, c, vb.pp("word_embed"))?)?;
        let class_emb = embedding(cfg.num_classes + 1, c, vb.pp("class_emb"))?;
        let lvl_embed = vb.pp("lvl_embed").get((k, c), "weight")?;
        let shared_ada_lin = if cfg.shared_aln { Some(AdaLnModulation::load(vb.pp("shared_ada_lin"), c, c, 6)?) } else { None };
        let blocks = (0..cfg.depth).map(|i| VarBlock::load(cfg, vb.pp("blocks").pp(i))).collect::<Result<Vec<_>>>()?;
        let vb32 = vb.set_dtype(DType::F32);
        let head_nm = AdaLnModulation::load(vb32.pp("head_nm").pp("ada_lin"), c, c, 2)?;
        let head = RowLinear::from_linear(&linear(c, cfg.vocab_size, vb32.pp("head"))?)?;

        let lvl: Vec<u32> = cfg.patch_nums.iter().enumerate().flat_map(|(i, p)| std::iter::repeat_n(i as u32, p * p)).collect();
        let lvl = Tensor::from_vec(lvl, l, &device)?;
        let lvl_pos = lvl_embed.contiguous()?.index_select(&lvl, 0)?.unsqueeze(0)?.broadcast_add(&pos_1lc)?.contiguous()?;
        Ok(Self {
            cfg: cfg.clone(),
            word_embed,
            class_emb,
            pos_start,
            lvl_pos,
            shared_ada_lin,
            blocks,
            head_nm,
            head,
            ln_f32: LayerNorm::no_affine(c, cfg.norm_eps, DType::F32, &device)?,
            device,
            dtype,
        })
    }

    pub fn config(&self) -> &VarConfig {
        &self.cfg
    }
    pub fn device(&self) -> &Device {
        &self.device
    }
    pub fn blocks(&self) -> &[VarBlock] {
        &self.blocks
    }

    /// `class_emb(labels)` for u32/i64 labels `(N,)`.
    pub fn class_embedding(&self, labels: &Tensor) -> Result<Tensor> {
        self.class_emb.forward(&labels.to_dtype(DType::U32)?)
    }

    /// All modulation rows for `cond (N, C)`.
    pub fn conditioning(&self, cond: &Tensor) -> Result<Conditioning> {
        let shared = match &self.shared_ada_lin {
            Some(s) => Some(s.forward(cond)?),
            None => None,
        };
        let src = shared.as_ref().unwrap_or(cond);
        let blocks = self.blocks.iter().map(|b| b.modulation(src)).collect::<Result<Vec<_>>>()?;
        // AdaLNBeforeHead gets the raw class embedding, also with shared AdaLN.
        let head = self.head_nm.forward(&cond.to_dtype(DType::F32)?)?;
        Ok(Conditioning {
            cond: cond.clone(),
            blocks,
            head_scale_plus_one: (head.narrow(1, 0, 1)? + 1.0)?,
            head_shift: head.narrow(1, 1, 1)?.contiguous()?,
        })
    }

    /// Input of scale 0: `cond + pos_start + lvl_pos[:, :first_l]`, `(N, first_l, C)`.
    pub fn first_scale_input(&self, cond: &Tensor) -> Result<Tensor> {
        let first_l = self.cfg.tokens_at(0);
        let pos = (&self.pos_start + self.lvl_pos.narrow(1, 0, first_l)?)?;
        cond.unsqueeze(1)?.broadcast_add(&pos)
    }

    /// Input of scale `si >= 1` from its token map `(B, Cvae, pn, pn)`:
    /// `word_embed(map as (B, pn^2, Cvae)) + lvl_pos[scale si]`.
    pub fn scale_input(&self, si: usize, token_map: &Tensor) -> Result<Tensor> {
        let (b, cv, h, w) = token_map.dims4()?;
        let tokens = token_map.reshape((b, cv, h * w))?.transpose(1, 2)?.contiguous()?.to_dtype(self.dtype)?;
        let (begin, end) = self.cfg.begin_ends()[si];
        self.word_embed.forward(&tokens)?.broadcast_add(&self.lvl_pos.narrow(1, begin, end - begin)?)
    }

    /// `head_nm(x) -> (N, l, C)` in f32.
    pub fn head_norm(&self, x: &Tensor, c: &Conditioning) -> Result<Tensor> {
        ln_modulate(&x.to_dtype(DType::F32)?, self.ln_f32.eps(), &c.head_scale_plus_one, &c.head_shift)
    }

    /// `get_logits`: `(N, l, V)` f32.
    pub fn logits(&self, x: &Tensor, c: &Conditioning) -> Result<Tensor> {
        self.head.forward(&self.head_norm(x, c)?)
    }

    /// All blocks over `x`, with per-block caches (sampling) or a mask (teacher forcing).
    /// `block_outs` collects each block's output when given.
    pub fn forward_blocks(
        &self,
        mut x: Tensor,
        c: &Conditioning,
        mask: Option<&Tensor>,
        mut caches: Option<&mut [KvCache]>,
        mut block_outs: Option<&mut Vec<Tensor>>,
    ) -> Result<Tensor> {
        for (i, block) in self.blocks.iter().enumerate() {
            let cache = caches.as_deref_mut().map(|cs| &mut cs[i]);
            x = block.forward(&x, &c.blocks[i], mask, cache)?;
            if let Some(outs) = block_outs.as_deref_mut() {
                outs.push(x.clone());
            }
        }
        Ok(x)
    }

    /// `VAR.forward(label_B, x_BLCv_wo_first_l)` with `cond_drop_rate = 0`: teacher-forced logits
    /// `(B, L, V)` under the block-causal mask.
    pub fn teacher_forcing(&self, labels: &Tensor, x_blcv_wo_first_l: &Tensor) -> Result<TeacherForcing> {
        let cond = self.class_embedding(labels)?;
        let c = self.conditioning(&cond)?;
        let sos = self.first_scale_input(&cond)?;
        let rest = self.word_embed.forward(&x_blcv_wo_first_l.to_dtype(self.dtype)?)?;
        let first_l = self.cfg.tokens_at(0);
        let l = first_l + rest.dim(1)?;
        let rest = rest.broadcast_add(&self.lvl_pos.narrow(1, first_l, l - first_l)?)?;
        let x_in = Tensor::cat(&[&sos, &rest], 1)?;
        let sizes: Vec<usize> = self.cfg.patch_nums.iter().map(|p| p * p).collect();
        let mask = block_causal_mask(&sizes, self.dtype, &self.device)?;
        let mask = mask.narrow(2, 0, l)?.narrow(3, 0, l)?;
        let mut block_outs = vec![];
        let x = self.forward_blocks(x_in.clone(), &c, Some(&mask), None, Some(&mut block_outs))?;
        let head_nm_out = self.head_norm(&x, &c)?;
        let logits = self.head.forward(&head_nm_out)?;
        Ok(TeacherForcing { cond, x_in, block_outs, head_nm_out, logits })
    }

    /// FLOPs executed by our sampler at step `si` for `rows` transformer rows (2B with CFG, B
    /// without) and `batch` images: blocks, head, the next scale's word_embed (on B rows) and
    /// the phi conv; the conditioning (all AdaLN rows) is computed at step 0 only.
    pub fn executed_step_flops(&self, si: usize, rows: usize, batch: usize, vae: &VarVqVaeConfig) -> f64 {
        let cfg = &self.cfg;
        let c = cfg.embed_dim;
        let q = cfg.tokens_at(si);
        let k = cfg.keys_at(si);
        let block = flops::self_attention(q, k, c) + flops::mlp(q, c, cfg.mlp_hidden());
        let per_row = cfg.depth as f64 * block + flops::linear(q, c, cfg.vocab_size);
        let mut total = rows as f64 * per_row;
        if si + 1 < cfg.num_scales() {
            total += batch as f64 * flops::linear(cfg.tokens_at(si + 1), cfg.cvae, c);
        }
        if vae.num_phis() > 0 {
            let hw = vae.latent_hw();
            total += batch as f64 * flops::conv2d(hw, hw, cfg.cvae, cfg.cvae, 3);
        }
        if si == 0 {
            let ada_blocks = if cfg.shared_aln { 1 } else { cfg.depth };
            total += rows as f64 * (ada_blocks as f64 * flops::linear(1, c, 6 * c) + flops::linear(1, c, 2 * c));
        }
        total
    }
}

/// Sampler settings of `autoregressive_infer_cfg`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VarSampling {
    pub cfg: f64,
    pub top_k: usize,
    pub top_p: f64,
    pub more_smooth: bool,
}

impl Default for VarSampling {
    /// The README's FID setting: cfg 1.5, top-k 900, top-p 0.96, no smoothing.
    fn default() -> Self {
        Self { cfg: 1.5, top_k: 900, top_p: 0.96, more_smooth: false }
    }
}

impl VarSampling {
    /// The recipe with the settings that were given applied over it.
    pub fn with_settings(self, s: &VarSettings) -> Self {
        Self {
            cfg: s.cfg.unwrap_or(self.cfg),
            top_k: s.top_k.unwrap_or(self.top_k),
            top_p: s.top_p.unwrap_or(self.top_p),
            more_smooth: s.more_smooth.unwrap_or(self.more_smooth),
        }
    }
}

/// VAR's sampler settings as written (absent = the README recipe, [`VarSampling::default`]).
/// The guidance always ramps linearly over the scales and the step count is fixed by
/// `patch_nums`, so there is nothing else to set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VarSettings {
    /// Guidance scale at the last scale (the ramp's end).
    pub cfg: Option<f64>,
    /// Keep the k most likely tokens (0 = off).
    pub top_k: Option<usize>,
    /// Nucleus mass, VAR's rule (`1 - top_p` of the ascending cumsum removed).
    pub top_p: Option<f64>,
    /// Gumbel-softmax smoothing (visualisation only, not for FID).
    pub more_smooth: Option<bool>,
}

impl crate::family::SamplerSettings for VarSettings {
    fn validate(&self) -> std::result::Result<(), SettingsError> {
        check_range("cfg", self.cfg, |c| c >= 0.0, "must be a non-negative number")?;
        check_range("top_p", self.top_p, |p| (0.0..=1.0).contains(&p), "must lie in [0, 1]")
    }
}

/// VAR's scale schedule for an output resolution: 256 and 512 px are the published schedules; a
/// smaller side cuts the 256 px schedule after the scale whose side is `resolution / 16` (128 px =
/// the first 7 scales, ending at 8x8), which is what a VAR trained at that size would run.
pub fn patch_nums_for(resolution: usize) -> anyhow::Result<Vec<usize>> {
    if resolution == 512 {
        return Ok(PATCH_NUMS_512.to_vec());
    }
    let side = resolution / 16;
    match PATCH_NUMS_256.iter().position(|&p| p == side) {
        Some(i) if side * 16 == resolution => Ok(PATCH_NUMS_256[..=i].to_vec()),
        _ => bail!("VAR: no scale schedule for {resolution} px (512, or 16 x one of the 256 px scales {:?})", PATCH_NUMS_256),
    }
}

/// The VAR family (FoundationVision/VAR): `var-d16` ... `var-d36` and fixture configs.
pub struct VarFamily;

impl ModelFamily for VarFamily {
    fn family(&self) -> Family {
        Family::Var
    }
    fn label(&self) -> &'static str {
        "VAR"
    }
    fn names(&self) -> &'static [&'static str] {
        &VarConfig::PUBLISHED
    }
    fn recognises_config(&self, v: &serde_json::Value) -> bool {
        v.get("VAR").is_some() && v.get("VQVAE").is_some()
    }
    fn check_settings(&self, settings: &RawSettings) -> std::result::Result<(), SettingsError> {
        parse_settings::<VarSettings>(settings).map(|_| ())
    }
    fn pixels_per_token(&self) -> usize {
        16
    }
    fn default_settings(&self, _name: &str) -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::to_value(VarSampling::default())?)
    }
    fn resolve(&self, req: &ModelRequest, config: Option<&serde_json::Value>) -> anyhow::Result<ResolvedModel> {
        let (name, mut cfg, mut vae_cfg) = match config {
            Some(v) => {
                let (cfg, vae) = VarConfig::from_reference_json(v).with_context(|| req.config_source())?;
                (req.model.clone().unwrap_or_else(|| format!("var-d{}-custom", cfg.depth)), cfg, vae)
            }
            None => {
                let name = req.model.clone().context("VAR: give a model name or a config")?;
                let (cfg, vae) = VarConfig::published(&name).with_context(|| format!("not a VAR model: {name}"))?;
                (name, cfg, vae)
            }
        };
        // `adaln = false` (Table 3 row 2) would need a start-token-conditioned VAR, which this
        // implementation does not have; refusing it is better than timing a different network.
        req.arch.refuse_unsupported("VAR", &["depth", "width", "heads", "mlp_ratio", "attn_norm"])?;
        req.arch.apply_shape(&mut cfg.depth, &mut cfg.embed_dim, &mut cfg.num_heads, Some(&mut cfg.mlp_ratio))?;
        if let Some(norm) = req.arch.attn_norm {
            cfg.attn_l2_norm = norm;
        }
        if let Some(px) = req.resolution.filter(|&px| px != vae_cfg.image_size()) {
            cfg.patch_nums = patch_nums_for(px)?;
            vae_cfg = VarVqVaeConfig { patch_nums: cfg.patch_nums.clone(), ..vae_cfg };
        }
        let settings = parse_settings::<VarSettings>(&req.settings).map_err(|e| anyhow::anyhow!("VAR: {e}"))?;
        let sampling = VarSampling::default().with_settings(&settings);
        let paths = req.weight_paths((None, None), ("var_dNN.pth", "vae_ch160v4096z32.pth"))?;
        let (num_classes, image_size) = (cfg.num_classes, vae_cfg.image_size());
        let model_name = name.clone();
        Ok(ResolvedModel::new(
            name,
            Family::Var,
            num_classes,
            image_size,
            serde_json::to_value(&sampling)?,
            Box::new(move |device, dtype| {
                let weights = match &paths {
                    Some((var, Some(vae))) => VarWeights::Checkpoints { var, vae },
                    _ => VarWeights::RandomInit,
                };
                let g = VarGenerator::load(&model_name, &cfg, &vae_cfg, weights, sampling, device, dtype)?;
                Ok(Box::new(g) as Box<dyn Generator>)
            }),
        ))
    }
}

/// Per-step intermediates of a sampling run (parity tests).
#[derive(Clone, Debug, Default)]
pub struct SampleTrace {
    pub cond: Option<Tensor>,
    pub x_in: Vec<Tensor>,
    pub block_outs: Vec<Vec<Tensor>>,
    pub logits_raw: Vec<Tensor>,
    pub logits_guided: Vec<Tensor>,
    pub t: Vec<f64>,
    pub idx: Vec<Tensor>,
    pub f_hat: Vec<Tensor>,
    pub next_map: Vec<Tensor>,
    /// Block 0's cached (k, v) after the last step, `(N, H, L, Dh)`.
    pub kv_block0: Option<(Tensor, Tensor)>,
}

/// Transformer + VQVAE.
#[derive(Clone, Debug)]
pub struct VarModel {
    pub transformer: VarTransformer,
    pub vae: VarVqVae,
}

impl VarModel {
    pub fn new(transformer: VarTransformer, vae: VarVqVae) -> anyhow::Result<Self> {
        transformer.config().validate_with(vae.config())?;
        Ok(Self { transformer, vae })
    }

    /// `autoregressive_infer_cfg` up to the final `f_hat` `(B, Cvae, hw, hw)`; returns it with the
    /// sampled indices per scale `(B, pn^2)`. Each scale is reported to `observer` as one
    /// transformer step (forward, guidance, sampling and next-input preparation).
    pub fn sample_fhat(
        &self,
        labels: &[u32],
        s: &VarSampling,
        rng: &mut dyn RandomSource,
        observer: &mut dyn StepObserver,
        mut trace: Option<&mut SampleTrace>,
    ) -> anyhow::Result<(Tensor, Vec<Tensor>)> {
        let tr = &self.transformer;
        let cfg = tr.config();
        let dev = tr.device().clone();
        let b = labels.len();
        ensure!(b > 0, "no labels to sample");
        if let Some(&bad) = labels.iter().find(|&&l| l as usize >= cfg.num_classes) {
            bail!("class id {bad} is out of range: this model has {} classes (0..{})", cfg.num_classes, cfg.num_classes - 1);
        }
        let k = cfg.num_scales();
        let guided = s.cfg != 0.0;
        let rows = if guided { 2 * b } else { b };
        let all_labels = if guided { cfg::double_labels(labels, cfg.num_classes as u32) } else { labels.to_vec() };
        let sampler = TokenSampler::var(s.top_k, s.top_p);
        let vae_cfg = self.vae.config();
        let hw = vae_cfg.latent_hw();
        let codebook = self.vae.quantize.codebook();

        let mut caches =
            tr.blocks().iter().map(|blk| blk.attention().new_cache(rows, cfg.seq_len(), tr.dtype, &dev)).collect::<Result<Vec<_>>>()?;
        let mut f_hat = Tensor::zeros((b, cfg.cvae, hw, hw), DType::F32, &dev)?;
        let mut idx_per_scale = Vec::with_capacity(k);
        let mut conditioning: Option<Conditioning> = None;
        let mut next_input: Option<Tensor> = None;
        let keep_block_outs = trace.is_some();
        for si in 0..k {
            let size = StepSize {
                step: si,
                kind: StepKind::Transformer,
                batch: b,
                tokens_decoded: cfg.tokens_at(si),
                tokens_attended: cfg.keys_at(si),
                flops: tr.executed_step_flops(si, rows, b, vae_cfg),
            };
            let (x, outs, logits, guided_logits, idx, next_map) = record_step(observer, &dev, size, || {
                if conditioning.is_none() {
                    // Everything that depends on the class only, computed once (inside step 0's time).
                    let label_t = Tensor::from_vec(all_labels.clone(), rows, &dev)?;
                    let cond = tr.class_embedding(&label_t)?;
                    conditioning = Some(tr.conditioning(&cond)?);
                    next_input = Some(tr.first_scale_input(&cond)?);
                    if let Some(t) = trace.as_deref_mut() {
                        t.cond = Some(cond);
                    }
                }
                let c = conditioning.as_ref().expect("set at step 0");
                // Forward: this scale's input through the blocks, attending to the cached scales.
                let x = next_input.take().expect("input of every scale is prepared by the previous one");
                let mut outs = keep_block_outs.then(Vec::new);
                let h = tr.forward_blocks(x.clone(), c, None, Some(caches.as_mut_slice()), outs.as_mut())?;
                let logits = tr.logits(&h, c)?;
                // Guide: (1 + t) c - t u with t ramping up over the scales.
                let guided_logits = if guided {
                    let (lc, lu) = cfg::split_halves(&logits)?;
                    cfg::var_guidance(&lc, &lu, cfg::linear_ramp(s.cfg, si, k))?
                } else {
                    logits.clone()
                };
                // Sample: top-k / top-p, then one draw per token (or Gumbel-softmax codes).
                let filtered = sampler.filter(&guided_logits)?;
                let idx = crate::nn::sampling::multinomial(&filtered, rng)?; // (B, l)
                let pn = cfg.patch_nums[si];
                let h_map = if s.more_smooth {
                    let ratio = si as f64 / (k - 1) as f64;
                    let tau = (0.27 * (1.0 - ratio * 0.95)).max(0.005);
                    let soft = gumbel_softmax(&(&filtered * (1.0 + ratio))?, tau, rng)?; // (B, l, V)
                    let emb = soft.to_dtype(codebook.embedding().dtype())?.broadcast_matmul(codebook.embedding())?; // (B, l, Cvae)
                    emb.transpose(1, 2)?.reshape((b, cfg.cvae, pn, pn))?
                } else {
                    codebook.lookup_map(&idx, pn, pn)?
                };
                // Feed back: accumulate f_hat and embed it at the next scale's size.
                let (new_f_hat, next_map) = self.vae.quantize.next_autoregressive_input(si, &f_hat, &h_map)?;
                f_hat = new_f_hat;
                if si + 1 < k {
                    let inp = tr.scale_input(si + 1, &next_map)?;
                    next_input = Some(if guided { cfg::repeat_batch(&inp)? } else { inp });
                }
                Ok((x, outs, logits, guided_logits, idx, next_map))
            })?;
            if let Some(t) = trace.as_deref_mut() {
                t.x_in.push(x);
                t.block_outs.push(outs.unwrap_or_default());
                t.logits_raw.push(logits);
                t.logits_guided.push(guided_logits);
                t.t.push(cfg::linear_ramp(s.cfg, si, k));
                t.idx.push(idx.clone());
                t.f_hat.push(f_hat.clone());
                if si + 1 < k {
                    t.next_map.push(next_map);
                }
            }
            idx_per_scale.push(idx);
        }
        if let Some(t) = trace {
            t.kv_block0 = Some((caches[0].keys()?, caches[0].values()?));
        }
        Ok((f_hat, idx_per_scale))
    }

    /// Decodes `f_hat` to images in [0, 1] `(B, 3, H, W)`, reported as one decode step.
    pub fn decode(&self, f_hat: &Tensor, step: usize, observer: &mut dyn StepObserver) -> anyhow::Result<Tensor> {
        let dev = self.vae.device().clone();
        let b = f_hat.dim(0)?;
        let size = StepSize {
            step,
            kind: StepKind::Decode,
            batch: b,
            tokens_decoded: 0,
            tokens_attended: 0,
            flops: b as f64 * self.vae.decode_flops(),
        };
        record_step(observer, &dev, size, || {
            let f_hat = f_hat.to_dtype(self.vae.quantize.codebook().embedding().dtype())?;
            Ok(((self.vae.fhat_to_img(&f_hat)? + 1.0)? * 0.5)?)
        })
    }
}

/// Reads the shapes that tie a VAR checkpoint to a VQVAE checkpoint and says plainly when they
/// do not fit each other or the configuration (before any strict per-tensor check).
pub fn check_checkpoints_fit(cfg: &VarConfig, var: &StrictWeights, vae: &StrictWeights) -> anyhow::Result<()> {
    let dims = |w: &StrictWeights, name: &str| w.tensors().get(name).map(|t| t.dims().to_vec());
    if let Some(emb) = dims(vae, "quantize.embedding.weight") {
        if let Some(head) = dims(var, "head.weight") {
            ensure!(
                emb[0] == head[0],
                "the VQVAE ({}) has a codebook of {} entries but the transformer ({}) predicts {} classes (head.weight {:?})",
                vae.source(),
                emb[0],
                var.source(),
                head[0],
                head
            );
        }
        if let Some(we) = dims(var, "word_embed.weight") {
            ensure!(
                emb.get(1) == we.get(1),
                "the VQVAE ({}) codes have {} channels but the transformer embeds {} (word_embed.weight {:?})",
                vae.source(),
                emb[1],
                we[1],
                we
            );
        }
    }
    if let Some(hits) = dims(vae, "quantize.ema_vocab_hit_SV") {
        ensure!(
            hits[0] == cfg.num_scales(),
            "the VQVAE ({}) was trained for {} scales but the transformer's patch_nums {:?} have {}",
            vae.source(),
            hits[0],
            cfg.patch_nums,
            cfg.num_scales()
        );
    }
    if let Some(pos) = dims(var, "pos_1LC") {
        ensure!(
            pos[1] == cfg.seq_len(),
            "the transformer checkpoint ({}) has {} token positions but patch_nums {:?} give L = {}",
            var.source(),
            pos[1],
            cfg.patch_nums,
            cfg.seq_len()
        );
    }
    if let Some(lvl) = dims(var, "lvl_embed.weight") {
        ensure!(
            lvl[0] == cfg.num_scales(),
            "the transformer checkpoint ({}) has {} scale embeddings but patch_nums {:?} have {} scales",
            var.source(),
            lvl[0],
            cfg.patch_nums,
            cfg.num_scales()
        );
    }
    Ok(())
}

/// Where the weights come from.
pub enum VarWeights<'a> {
    /// `var_d*.pth` and `vae_ch160v4096z32.pth` (or files of the same layout).
    Checkpoints { var: &'a Path, vae: &'a Path },
    /// Random weights (profiling only; images are noise).
    RandomInit,
}

/// The harness-facing VAR generator.
pub struct VarGenerator {
    name: String,
    model: VarModel,
    sampling: VarSampling,
}

impl VarGenerator {
    /// Builds and loads a model. Checks that the two checkpoints fit each other and the config,
    /// then loads strictly (every expected tensor present with its shape; no unexpected ones).
    pub fn load(
        name: &str,
        cfg: &VarConfig,
        vae_cfg: &VarVqVaeConfig,
        weights: VarWeights,
        sampling: VarSampling,
        device: &Device,
        dtype: DType,
    ) -> anyhow::Result<Self> {
        cfg.validate_with(vae_cfg)?;
        let model = match weights {
            VarWeights::Checkpoints { var, vae } => {
                let var_w = StrictWeights::open(var, &[""], &[], device)?;
                let vae_w = StrictWeights::open(vae, &[""], &[], device)?;
                check_checkpoints_fit(cfg, &var_w, &vae_w)?;
                let transformer = VarTransformer::load(cfg, var_w.var_builder(dtype, device))?;
                var_w.ensure_all_used(|_| false)?;
                let vq = VarVqVae::load(vae_cfg, vae_w.var_builder(DType::F32, device))?;
                vae_w.ensure_all_used(|_| false)?;
                VarModel::new(transformer, vq)?
            }
            VarWeights::RandomInit => {
                let rnd = crate::checkpoint::RandomWeights::new(0);
                let transformer = VarTransformer::load(cfg, rnd.var_builder(dtype, device))?;
                let vq = VarVqVae::load(vae_cfg, rnd.var_builder(DType::F32, device))?;
                VarModel::new(transformer, vq)?
            }
        };
        Ok(Self { name: name.to_string(), model, sampling })
    }

    pub fn model(&self) -> &VarModel {
        &self.model
    }
    pub fn sampling(&self) -> &VarSampling {
        &self.sampling
    }
    pub fn set_sampling(&mut self, s: VarSampling) {
        self.sampling = s;
    }

    /// Samples and returns images in [0, 1] NCHW plus the token ids per scale.
    pub fn sample_images(&self, labels: &[u32], seed: u64, observer: &mut dyn StepObserver) -> anyhow::Result<(Tensor, Vec<Tensor>)> {
        let mut rng = SeededSource::new(seed);
        let (f_hat, idx) = self.model.sample_fhat(labels, &self.sampling, &mut rng, observer, None)?;
        let img = self.model.decode(&f_hat, self.model.transformer.config().num_scales(), observer)?;
        Ok((img, idx))
    }
}

impl Generator for VarGenerator {
    fn name(&self) -> &str {
        &self.name
    }
    fn family(&self) -> Family {
        Family::Var
    }
    fn image_size(&self) -> usize {
        self.model.vae.config().image_size()
    }
    fn num_classes(&self) -> usize {
        self.model.transformer.config().num_classes
    }
    fn settings(&self) -> serde_json::Value {
        serde_json::json!({
            "cfg": self.sampling.cfg,
            "cfg_schedule": "linear ramp t = cfg * si / (K - 1), logits = (1 + t) c - t u",
            "top_k": self.sampling.top_k,
            "top_p": self.sampling.top_p,
            "top_p_rule": "VAR (ascending cumsum <= 1 - top_p removed, largest kept)",
            "more_smooth": self.sampling.more_smooth,
            "patch_nums": self.model.transformer.config().patch_nums,
            "image_size": self.image_size(),
            "uint8": "x in [0,1]: (x * 255) truncated, clamped",
        })
    }
    fn flops_per_image(&self) -> FlopsPerImage {
        let cfg = self.model.transformer.config();
        let rows = if self.sampling.cfg != 0.0 { 2 } else { 1 };
        let per_step: Vec<f64> =
            (0..cfg.num_scales()).map(|si| self.model.transformer.executed_step_flops(si, rows, 1, self.model.vae.config())).collect();
        FlopsPerImage { transformer: per_step.iter().sum(), diffusion_mlp: 0.0, decoder: self.model.vae.decode_flops(), per_step }
    }
    fn step_matmuls(&self, step: &StepSize) -> Vec<MatmulShape> {
        if step.kind != StepKind::Transformer {
            return vec![];
        }
        let cfg = self.model.transformer.config();
        let rows = step.batch * if self.sampling.cfg != 0.0 { 2 } else { 1 };
        let (m, c) = (rows * step.tokens_decoded, cfg.embed_dim);
        let mut shapes = transformer_block_matmuls(m, c, &[(c, cfg.mlp_hidden()), (cfg.mlp_hidden(), c)]);
        shapes.push(MatmulShape::new(m, c, cfg.vocab_size));
        shapes
    }
    fn sample(&mut self, labels: &[u32], seed: u64, observer: &mut dyn StepObserver) -> anyhow::Result<Samples> {
        let (img, idx) = self.sample_images(labels, seed, observer)?;
        let (images, n, height, width) = to_uint8_nhwc_from_unit(&img)?;
        let ids = Tensor::cat(&idx, 1)?.flatten_all()?.to_vec1::<u32>()?;
        Ok(Samples { images, n, height, width, token_ids: Some(ids), latents: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_flops_match_the_published_summary() {
        // shared/reference/tables/flops_summary.txt: VAR-d16 with CFG = 600.8 GFLOP; per scale
        // without CFG 0.617, 1.852, 3.914, 6.815, 10.574, 15.222, 27.169, 42.992, 74.384, 116.841.
        let c = VarConfig::var_d16();
        let per: Vec<f64> = (0..10).map(|s| c.reference_step_flops(s, false) / 1e9).collect();
        let expected = [0.617, 1.852, 3.914, 6.815, 10.574, 15.222, 27.169, 42.992, 74.384, 116.841];
        for (g, e) in per.iter().zip(expected) {
            assert!((g - e).abs() < 0.0015, "{per:?}");
        }
        let total = |c: &VarConfig| (0..10).map(|s| c.reference_step_flops(s, true)).sum::<f64>() / 1e9;
        assert!((total(&c) - 600.8).abs() < 0.1);
        assert!((total(&VarConfig::var_d20()) - 1150.6).abs() < 0.1);
        assert!((total(&VarConfig::var_d24()) - 1963.7).abs() < 0.1);
        assert!((total(&VarConfig::var_d30()) - 3790.1).abs() < 0.1);
    }

    #[test]
    fn schedule_geometry() {
        let c = VarConfig::var_d16();
        assert_eq!(c.seq_len(), 680);
        assert_eq!((0..10).map(|s| c.keys_at(s)).collect::<Vec<_>>(), vec![1, 5, 14, 30, 55, 91, 155, 255, 424, 680]);
        assert_eq!(VarConfig::var_d36().seq_len(), 2240);
        assert_eq!(VarConfig::var_d36().embed_dim, 2304);
    }

    #[test]
    fn settings_are_checked() {
        let raw = |v: serde_json::Value| v.as_object().unwrap().clone();
        let s = parse_settings::<VarSettings>(&raw(serde_json::json!({"cfg": 4.0, "top_k": 900}))).unwrap();
        let s = VarSampling::default().with_settings(&s);
        assert_eq!((s.cfg, s.top_k, s.top_p), (4.0, 900, 0.96));
        let e = VarFamily.check_settings(&raw(serde_json::json!({"temperature": 0.5}))).unwrap_err();
        assert_eq!(e.setting.as_deref(), Some("temperature"));
        let e = VarFamily.check_settings(&raw(serde_json::json!({"top_p": 1.5}))).unwrap_err();
        assert_eq!((e.setting.as_deref(), e.message.as_str()), (Some("top_p"), "1.5 must lie in [0, 1]"));
    }

    #[test]
    fn scale_schedules_per_resolution() {
        assert_eq!(patch_nums_for(128).unwrap(), [1, 2, 3, 4, 5, 6, 8]);
        assert_eq!(patch_nums_for(64).unwrap(), [1, 2, 3, 4]);
        assert_eq!(patch_nums_for(512).unwrap().last(), Some(&32));
        assert!(patch_nums_for(112).unwrap_err().to_string().contains("112 px"));
    }
}
