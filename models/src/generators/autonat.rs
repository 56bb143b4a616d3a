//! AutoNAT (LeapLabTHU/ImprovedNAT) and MaskGIT-style non-autoregressive masked-token
//! generation: the U-ViT network, the generation loop with an explicit per-step strategy, and
//! the [`Generator`] implementation.
//!
//! Network (`libs/nat_model.py: UViT`):
//! 1. `e = LN_1e-6(word_emb[ids] + pos_emb)` for the L image tokens (id `codebook_size` =
//!    `[MASK]`); `c = LN_1e-6(ctx_word_emb[label] + ctx_pos_emb)`; sequence `[c, e]` (1 + L).
//! 2. `depth / 2` in-blocks (outputs pushed on a stack), one mid block, `depth / 2` out-blocks,
//!    each first computing `skip_linear(cat[x, stack.pop()])` (x first, LIFO); pre-LN timm
//!    blocks, LayerNorm eps 1e-5, exact GELU, qkv without bias.
//! 3. `norm`, then the MLM head `LN(GELU(fc(x))) @ word_emb^T + bias` tied to the token
//!    embedding over all `codebook_size + 1` rows, sliced to `[:, 1:, :codebook_size]`.
//!
//! Generation (`libs/nat_misc.py: NATSchedule.generate`, `train.py: cfg_nnet`): see
//! [`generate_tokens`] for the exact per-step rules.

use super::autonat_strategy::{mask_len, Strategy, BUILTIN_NAMES, MIN_SAMPLING_TEMPERATURE};
use crate::checkpoint::{RandomWeights, StrictWeights};
use crate::family::{parse_settings, ModelFamily, ModelRequest, RawSettings, ResolvedModel, SettingsError};
use crate::flops;
use crate::generator::{
    record_sized_step, record_step, to_uint8_nhwc_from_unit, transformer_block_matmuls, Family, FlopsPerImage, Generator, MatmulShape,
    Samples, StepKind, StepObserver, StepSize,
};
use crate::nn::block::PreNormBlock;
use crate::nn::cfg::{cond_plus_scaled_diff, double_labels, split_halves};
use crate::nn::linear::RowLinear;
use crate::nn::mlp::Activation;
use crate::nn::norm::LayerNorm;
use crate::nn::sampling::multinomial;
use crate::reference_config::section;
use crate::tokenizers::mage_vqgan::{MageVqgan, MageVqganConfig};
use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::VarBuilder;
use genbench_runtime::{RandomSource, SeededSource};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// LayerNorm eps of the two embedding LayerNorms (`BertEmbeddings`).
pub const EMBEDDING_LN_EPS: f64 = 1e-6;
/// LayerNorm eps everywhere else (blocks, final `norm`, `mlm_layer.ln`): `nn.LayerNorm` default.
pub const BLOCK_LN_EPS: f64 = 1e-5;

/// `UViT(**kwargs)` constructor arguments (the `nnet` section of `configs/AutoNAT_L.yaml`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UViTConfig {
    /// Side of the token grid (16 for 256 px with the f16 tokenizer): L = img_size^2 tokens.
    pub img_size: usize,
    pub codebook_size: usize,
    pub embed_dim: usize,
    /// In-blocks + out-blocks (the mid block comes on top: depth + 1 blocks).
    pub depth: usize,
    pub num_heads: usize,
    pub mlp_ratio: f64,
    pub qkv_bias: bool,
    /// Rows of the class table, the last one being the null (unconditional) class.
    pub num_classes: usize,
    #[serde(default = "default_true")]
    pub skip: bool,
}

fn default_true() -> bool {
    true
}

impl UViTConfig {
    /// AutoNAT-L (`configs/AutoNAT_L.yaml`): 193,655,297 parameters.
    pub fn autonat_l() -> Self {
        Self {
            img_size: 16,
            codebook_size: 1024,
            embed_dim: 768,
            depth: 24,
            num_heads: 8,
            mlp_ratio: 4.0,
            qkv_bias: false,
            num_classes: 1001,
            skip: true,
        }
    }

    /// AutoNAT-S. Not released and not in the repository's configs: this is U-ViT's "Small"
    /// shape (width 512, 13 blocks, 8 heads, MLP ratio 4; about 45.6M parameters with
    /// AutoNAT's embeddings and head), which is what the paper's S model is assumed to be.
    /// Use it for timing and FLOP comparisons, not to load weights.
    pub fn autonat_s() -> Self {
        Self { embed_dim: 512, depth: 12, ..Self::autonat_l() }
    }

    pub fn seq_len(&self) -> usize {
        self.img_size * self.img_size
    }
    /// The `[MASK]` id (= codebook_size; the input vocabulary has codebook_size + 1 entries).
    pub fn mask_id(&self) -> u32 {
        self.codebook_size as u32
    }
    /// The null class used for the unconditional pass (`num_classes - 1`, 1000 for ImageNet).
    pub fn null_class(&self) -> u32 {
        (self.num_classes - 1) as u32
    }
    pub fn mlp_hidden(&self) -> usize {
        // timm: int(dim * mlp_ratio)
        (self.embed_dim as f64 * self.mlp_ratio) as usize
    }
    pub fn blocks_per_side(&self) -> usize {
        self.depth / 2
    }

    fn validate(&self) -> Result<()> {
        ensure!(self.depth.is_multiple_of(2), "UViT depth {} must be even (depth/2 in-blocks and out-blocks)", self.depth);
        ensure!(
            self.num_heads > 0 && self.embed_dim.is_multiple_of(self.num_heads),
            "UViT embed_dim {} is not divisible by num_heads {}",
            self.embed_dim,
            self.num_heads
        );
        ensure!(self.num_classes >= 2, "UViT needs at least one class plus the null class");
        Ok(())
    }

    /// Analytic FLOPs of one forward of one image as executed here (2 x MACs): blocks
    /// `(depth + 1) x (8 n C^2 + 4 n^2 C + 4 n C H)` with n = L + 1, the out-blocks'
    /// `skip_linear` `2 n (2C) C`, and the MLM head on the L image positions
    /// (`2 L C^2` + the tied projection `2 L C V` over the V = codebook_size kept entries).
    /// For AutoNAT-L: 104.01 GFLOP (`flops_summary.txt`).
    pub fn flops_per_forward(&self) -> f64 {
        let n = self.seq_len() + 1;
        let l = self.seq_len();
        let c = self.embed_dim;
        let per_block = flops::self_attention(n, n, c) + flops::mlp(n, c, self.mlp_hidden());
        let skips = if self.skip { self.blocks_per_side() as f64 * flops::linear(n, 2 * c, c) } else { 0.0 };
        let head = flops::linear(l, c, c) + flops::linear(l, c, self.codebook_size);
        (self.depth + 1) as f64 * per_block + skips + head
    }

    /// The weight products of one forward over `rows` sequences (what
    /// [`Generator::step_matmuls`] lists): an out-block (its `skip_linear`, then the block's
    /// products) over the class token + L image tokens, and the MLM head over the L image
    /// positions (`fc`, then the tied projection onto the kept codebook entries).
    pub fn forward_matmuls(&self, rows: usize) -> Vec<MatmulShape> {
        let (m, c, h) = (rows * (self.seq_len() + 1), self.embed_dim, self.mlp_hidden());
        let mut shapes = if self.skip { vec![MatmulShape::new(m, 2 * c, c)] } else { vec![] };
        shapes.extend(transformer_block_matmuls(m, c, &[(c, h), (h, c)]));
        let m_head = rows * self.seq_len();
        shapes.extend([MatmulShape::new(m_head, c, c), MatmulShape::new(m_head, c, self.codebook_size)]);
        shapes
    }
}

/// An out-block: `skip_linear(cat[x, skip])` then the usual pre-LN block.
#[derive(Clone, Debug)]
pub struct OutBlock {
    pub skip_linear: Option<RowLinear>,
    pub block: PreNormBlock,
}

impl OutBlock {
    pub fn forward(&self, x: &Tensor, skip: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let x = match (&self.skip_linear, skip) {
            (Some(lin), Some(s)) => lin.forward(&Tensor::cat(&[x, s], D::Minus1)?)?,
            (None, _) => x.clone(),
            (Some(_), None) => candle_core::bail!("U-ViT out-block with skip_linear called without a skip input"),
        };
        self.block.forward(&x)
    }
}

/// Token or class embedding: `LN(word[ids] + pos[0..n])` (`BertEmbeddings`, eps 1e-6).
#[derive(Clone, Debug)]
struct BertEmbeddings {
    word: Tensor,
    pos: Tensor,
    ln: LayerNorm,
}

impl BertEmbeddings {
    fn load(vb: VarBuilder, vocab: usize, positions: usize, dim: usize) -> candle_core::Result<Self> {
        Ok(Self {
            word: vb.pp("word_embeddings").get((vocab, dim), "weight")?,
            pos: vb.pp("position_embeddings").get((positions, dim), "weight")?,
            ln: LayerNorm::load(dim, EMBEDDING_LN_EPS, vb.pp("LayerNorm"))?,
        })
    }

    /// ids `(B, n)` u32 -> `(B, n, C)`.
    fn forward(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let (b, n) = ids.dims2()?;
        let c = self.word.dim(1)?;
        let e = self.word.index_select(&ids.flatten_all()?, 0)?.reshape((b, n, c))?;
        self.ln.forward(&e.broadcast_add(&self.pos.narrow(0, 0, n)?)?)
    }
}

/// The AutoNAT network.
#[derive(Clone, Debug)]
pub struct UViT {
    cfg: UViTConfig,
    token_emb: BertEmbeddings,
    context_emb: BertEmbeddings,
    in_blocks: Vec<PreNormBlock>,
    mid_block: PreNormBlock,
    out_blocks: Vec<OutBlock>,
    norm: LayerNorm,
    mlm_fc: RowLinear,
    mlm_ln: LayerNorm,
    /// `token_emb.word_embeddings.weight` `(V+1, C)` and `mlm_layer.bias` `(1, 1, V+1)`: the
    /// full tied head (traced forwards record it).
    mlm_bias: Tensor,
    /// The first V rows of the tied table, transposed `(C, V)` and the matching bias `(V,)`:
    /// the sliced head computed once at load so each forward multiplies only what it keeps.
    head_weight_t: Tensor,
    head_bias: Tensor,
}

/// Named intermediate outputs of a traced forward, in execution order.
pub type Trace = Vec<(String, Tensor)>;

impl UViT {
    /// Loads with prefixes mirroring `nnet_ema.pth` (`token_emb.*`, `in_blocks.N.*`, ...).
    pub fn load(cfg: &UViTConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let c = cfg.embed_dim;
        let vocab_in = cfg.codebook_size + 1;
        let token_emb = BertEmbeddings::load(vb.pp("token_emb"), vocab_in, cfg.seq_len(), c)?;
        let context_emb = BertEmbeddings::load(vb.pp("context_embed"), cfg.num_classes, 1, c)?;
        let block = |vb: VarBuilder| PreNormBlock::load_timm(vb, c, cfg.num_heads, cfg.mlp_ratio, cfg.qkv_bias, BLOCK_LN_EPS);
        let in_blocks = (0..cfg.blocks_per_side()).map(|i| block(vb.pp("in_blocks").pp(i))).collect::<candle_core::Result<Vec<_>>>()?;
        let mid_block = block(vb.pp("mid_block"))?;
        let out_blocks = (0..cfg.blocks_per_side())
            .map(|i| {
                let vb = vb.pp("out_blocks").pp(i);
                Ok(OutBlock {
                    skip_linear: if cfg.skip { Some(RowLinear::load(2 * c, c, vb.pp("skip_linear"))?) } else { None },
                    block: block(vb)?,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let norm = LayerNorm::load(c, BLOCK_LN_EPS, vb.pp("norm"))?;
        let mlm = vb.pp("mlm_layer");
        let mlm_fc = RowLinear::load(c, c, mlm.pp("fc"))?;
        let mlm_ln = LayerNorm::load(c, BLOCK_LN_EPS, mlm.pp("ln"))?;
        let mlm_bias = mlm.get((1, 1, vocab_in), "bias")?;
        let head_weight_t = token_emb.word.narrow(0, 0, cfg.codebook_size)?.t()?.contiguous()?;
        let head_bias = mlm_bias.flatten_all()?.narrow(0, 0, cfg.codebook_size)?.contiguous()?;
        Ok(Self {
            cfg: cfg.clone(),
            token_emb,
            context_emb,
            in_blocks,
            mid_block,
            out_blocks,
            norm,
            mlm_fc,
            mlm_ln,
            mlm_bias,
            head_weight_t,
            head_bias,
        })
    }

    pub fn config(&self) -> &UViTConfig {
        &self.cfg
    }
    pub fn in_block(&self, i: usize) -> &PreNormBlock {
        &self.in_blocks[i]
    }
    pub fn mid_block(&self) -> &PreNormBlock {
        &self.mid_block
    }
    pub fn out_block(&self, i: usize) -> &OutBlock {
        &self.out_blocks[i]
    }

    /// Logits `(B, L, codebook_size)` (f32 whatever the weights' dtype) for token ids `(B, L)`
    /// and class labels `(B,)` (the reference's `(B, 1)` context).
    pub fn forward(&self, ids: &Tensor, labels: &Tensor) -> Result<Tensor> {
        self.forward_impl(ids, labels, None)
    }

    /// As [`forward`](Self::forward), recording the reference's hook points: `token_emb`,
    /// `context_emb`, `in_blocks.i`, `mid_block`, `out_blocks.i`, `norm`, `mlm_full`
    /// (`(B, 1+L, V+1)`, the head before slicing).
    pub fn forward_traced(&self, ids: &Tensor, labels: &Tensor) -> Result<(Tensor, Trace)> {
        let mut trace = Vec::new();
        let logits = self.forward_impl(ids, labels, Some(&mut trace))?;
        Ok((logits, trace))
    }

    fn forward_impl(&self, ids: &Tensor, labels: &Tensor, mut trace: Option<&mut Trace>) -> Result<Tensor> {
        let (b, l) = ids.dims2()?;
        ensure!(l == self.cfg.seq_len(), "UViT expects {} tokens per image, got {l}", self.cfg.seq_len());
        ensure!(labels.dims1()? == b, "UViT: {} labels for a batch of {b}", labels.dims1()?);
        let mut record = |name: String, t: &Tensor| {
            if let Some(tr) = trace.as_deref_mut() {
                tr.push((name, t.clone()));
            }
        };
        let x = self.token_emb.forward(&ids.to_dtype(DType::U32)?)?;
        record("token_emb".into(), &x);
        let ctx = self.context_emb.forward(&labels.to_dtype(DType::U32)?.unsqueeze(1)?)?;
        record("context_emb".into(), &ctx);
        let mut x = Tensor::cat(&[&ctx, &x], 1)?;
        let mut skips = Vec::with_capacity(self.in_blocks.len());
        for (i, blk) in self.in_blocks.iter().enumerate() {
            x = blk.forward(&x)?;
            record(format!("in_blocks.{i}"), &x);
            if self.cfg.skip {
                skips.push(x.clone());
            }
        }
        x = self.mid_block.forward(&x)?;
        record("mid_block".into(), &x);
        for (i, blk) in self.out_blocks.iter().enumerate() {
            // LIFO: out-block i pairs with in-block depth/2 - 1 - i.
            x = blk.forward(&x, skips.pop().as_ref())?;
            record(format!("out_blocks.{i}"), &x);
        }
        x = self.norm.forward(&x)?;
        record("norm".into(), &x);
        let c = self.cfg.embed_dim;
        let v = self.cfg.codebook_size;
        if let Some(tr) = trace {
            // The reference head: every position, every entry of the tied table.
            let h = self.mlm_ln.forward(&Activation::GeluErf.apply(&self.mlm_fc.forward(&x)?)?)?;
            let full = h
                .reshape((b * (l + 1), c))?
                .matmul(&self.token_emb.word.t()?)?
                .reshape((b, l + 1, v + 1))?
                .broadcast_add(&self.mlm_bias)?;
            tr.push(("mlm_full".into(), full.clone()));
            return Ok(full.narrow(1, 1, l)?.narrow(2, 0, v)?.to_dtype(DType::F32)?);
        }
        // The kept slice only: the context position and the [MASK] column are dropped by the
        // reference after the head, and the head is per position / per column.
        let h = x.narrow(1, 1, l)?.contiguous()?;
        let h = self.mlm_ln.forward(&Activation::GeluErf.apply(&self.mlm_fc.forward(&h)?)?)?;
        let logits = h.reshape((b * l, c))?.matmul(&self.head_weight_t)?.broadcast_add(&self.head_bias)?;
        Ok(logits.reshape((b, l, v))?.to_dtype(DType::F32)?)
    }

    /// `cond + s (cond - uncond)` (`train.py: cfg_nnet`): both passes always run (also for
    /// s = 0), here as one forward over the doubled batch `[labels; null]`, which gives the
    /// same rows as the reference's two calls.
    pub fn guided_logits(&self, ids: &Tensor, labels: &[u32], scale: f64) -> Result<Tensor> {
        let device = ids.device();
        let both_ids = Tensor::cat(&[ids, ids], 0)?;
        let both_labels = Tensor::new(double_labels(labels, self.cfg.null_class()).as_slice(), device)?;
        let logits = self.forward(&both_ids, &both_labels)?;
        let (cond, uncond) = split_halves(&logits)?;
        Ok(cond_plus_scaled_diff(&cond, &uncond, scale)?)
    }
}

/// What happened at one generation step (per-step parity and inspection). Counts are those of
/// batch element 0, which is what the reference's mask length is computed from.
#[derive(Clone, Debug, Default)]
pub struct StepTrace {
    /// Ids entering the step `(B * L)` row-major.
    pub ids_in: Vec<u32>,
    /// The guided logits `(B, L, V)` of the step (f32, on the generator's device).
    pub logits: Option<Tensor>,
    /// The categorical draw at every position, known positions included.
    pub sampled_raw: Vec<u32>,
    /// `where(ids_in == MASK, sampled_raw, ids_in)`.
    pub sampled_ids: Vec<u32>,
    /// `log_softmax(logits)[sampled_raw]` at masked positions, +inf at known ones.
    pub conf_pre: Vec<f32>,
    /// `conf_pre + f32(temperature * gumbel)`.
    pub confidence: Vec<f32>,
    pub num_masked_before: usize,
    pub mask_len: usize,
    pub num_masked_after: usize,
}

impl StepTrace {
    pub fn num_fixed(&self) -> usize {
        self.num_masked_before - self.num_masked_after
    }
}

/// The AutoNAT generation loop (`NATSchedule.generate`), independent of the network:
/// `guided_logits(step, ids (B, L) u32, cfg_scale)` returns the guided logits `(B, L, V)` f32.
///
/// Per step t, with r = ratio (0 at the last step), g = re-masking temperature (0 at the last
/// step), s = guidance scale, tau = sampling temperature:
/// 1. `sampled_raw ~ Categorical(softmax(logits / max(tau, 1e-4)))` at every position
///    (`rng.categorical`, one row per (b, l), row-major);
/// 2. confidence = `log_softmax(logits)[sampled_raw]` (temperature 1, not tau) at masked
///    positions, +inf at known ones; known positions keep their id;
/// 3. `mask_len = max(1, min(#masked(row 0) - 1, floor(L r)))`, shared by all rows;
/// 4. confidence += `f32(f64(g) * gumbel)` (`rng.gumbel(B * L)`, drawn every step, also
///    when g = 0);
/// 5. per row: cut = the `mask_len`-th smallest confidence; positions with confidence <= cut
///    become `[MASK]` again.
///
/// Returns the last step's `sampled_ids` (`B * L`), which is what the reference decodes.
pub fn generate_tokens(
    batch: usize,
    seq_len: usize,
    mask_id: u32,
    strategy: &Strategy,
    rng: &mut dyn RandomSource,
    guided_logits: &mut dyn FnMut(usize, &[u32], f64) -> Result<Tensor>,
    mut on_step: Option<&mut dyn FnMut(usize, StepTrace) -> Result<()>>,
) -> Result<Vec<u32>> {
    strategy.validate()?;
    let mut ids = vec![mask_id; batch * seq_len];
    let mut last_sampled = ids.clone();
    for step in 0..strategy.steps() {
        let logits = guided_logits(step, &ids, strategy.cfg[step])?;
        let trace = sample_and_remask(step, strategy, batch, seq_len, mask_id, &mut ids, logits, rng)?;
        last_sampled.clone_from(&trace.sampled_ids);
        if let Some(f) = on_step.as_deref_mut() {
            f(step, trace)?;
        }
    }
    Ok(last_sampled)
}

/// The logits the step's categorical draws from: `logits / max(samp_temp, 1e-4)` (the
/// reference's `Categorical(logits=logits / max(samp_temp, 1e-4))`).
pub fn tempered_logits(logits: &Tensor, samp_temp: f64) -> Result<Tensor> {
    Ok((logits / samp_temp.max(MIN_SAMPLING_TEMPERATURE))?)
}

/// `conf_pre + f32(f64(remask_temp) * gumbel)`: the reference forms the noise in float64
/// (numpy), casts it to float32, then adds (`add_gumbel_noise`).
pub fn remask_confidence(conf_pre: &[f32], gumbel: &[f32], remask_temp: f64) -> Vec<f32> {
    conf_pre.iter().zip(gumbel).map(|(&c, &g)| c + (remask_temp * g as f64) as f32).collect()
}

/// Re-masking per row of `seq_len`: cut = the `keep_masked`-th smallest confidence; positions
/// with confidence <= cut become `mask_id`, the others keep their `sampled_ids`.
pub fn remask(confidence: &[f32], sampled_ids: &[u32], seq_len: usize, keep_masked: usize, mask_id: u32) -> Vec<u32> {
    let mut next = Vec::with_capacity(confidence.len());
    let mut sorted = vec![0f32; seq_len];
    for (row, ids) in confidence.chunks(seq_len).zip(sampled_ids.chunks(seq_len)) {
        sorted.copy_from_slice(row);
        sorted.sort_by(f32::total_cmp);
        let cut = sorted[keep_masked - 1];
        next.extend(row.iter().zip(ids).map(|(&c, &id)| if c <= cut { mask_id } else { id }));
    }
    next
}

/// Steps 1-5 of [`generate_tokens`] for step `step`: samples every position from the guided
/// `logits (B, L, V)`, re-masks the least confident ones and leaves the next step's input in
/// `ids`. Returns the step's trace.
#[allow(clippy::too_many_arguments)]
pub fn sample_and_remask(
    step: usize,
    strategy: &Strategy,
    batch: usize,
    seq_len: usize,
    mask_id: u32,
    ids: &mut Vec<u32>,
    logits: Tensor,
    rng: &mut dyn RandomSource,
) -> Result<StepTrace> {
    let steps = strategy.steps();
    let n = batch * seq_len;
    let ratio = strategy.ratio_at(step);
    let remask_temp = strategy.remask_temp_at(step);
    let (lb, ll, v) = logits.dims3()?;
    ensure!(lb == batch && ll == seq_len, "guided logits {:?} for a batch of {batch} x {seq_len}", logits.dims());
    let logits = logits.to_dtype(DType::F32)?.contiguous()?;

    let sampled_raw_t = multinomial(&tempered_logits(&logits, strategy.samp_temps[step])?, rng)?;
    let log_probs = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let conf_sampled = log_probs.gather(&sampled_raw_t.unsqueeze(D::Minus1)?, D::Minus1)?.squeeze(D::Minus1)?;
    let sampled_raw = sampled_raw_t.flatten_all()?.to_vec1::<u32>()?;
    let conf_sampled = conf_sampled.flatten_all()?.to_vec1::<f32>()?;
    ensure!(sampled_raw.iter().all(|&k| (k as usize) < v), "sampled id out of range");

    let mut sampled_ids = Vec::with_capacity(n);
    let mut conf_pre = Vec::with_capacity(n);
    for i in 0..n {
        if ids[i] == mask_id {
            sampled_ids.push(sampled_raw[i]);
            conf_pre.push(conf_sampled[i]);
        } else {
            sampled_ids.push(ids[i]);
            conf_pre.push(f32::INFINITY);
        }
    }
    let masked_row0 = ids[..seq_len].iter().filter(|&&x| x == mask_id).count();
    let keep_masked = mask_len(seq_len, ratio, masked_row0);
    let gumbel = rng.gumbel(n)?;
    let confidence = remask_confidence(&conf_pre, &gumbel, remask_temp);
    let next = remask(&confidence, &sampled_ids, seq_len, keep_masked, mask_id);
    let masked_after_row0 = next[..seq_len].iter().filter(|&&x| x == mask_id).count();
    Ok(StepTrace {
        ids_in: std::mem::replace(ids, next),
        logits: Some(logits),
        sampled_raw,
        sampled_ids,
        conf_pre,
        confidence,
        num_masked_before: masked_row0,
        mask_len: keep_masked,
        // After the last step nothing is masked: the sampled ids are decoded.
        num_masked_after: if step + 1 == steps { 0 } else { masked_after_row0 },
    })
}

/// Where the weights come from.
#[derive(Clone, Debug)]
pub enum WeightSource {
    /// `nnet_ema.pth` and `vqgan_jax_strongaug.ckpt` as published.
    Files { nnet: PathBuf, vqgan: PathBuf },
    /// Seeded random weights (timing and FLOP work without checkpoints).
    Random { seed: u64 },
}

/// Everything needed to build an AutoNAT / MaskGIT generator.
#[derive(Clone, Debug)]
pub struct AutoNatSpec {
    /// Model name as listed by the CLI (`autonat-l`, `autonat-s`, `maskgit`, or a fixture name).
    pub name: String,
    pub net: UViTConfig,
    pub tokenizer: MageVqganConfig,
    /// Strategy file path or built-in name; None = the model's default for the step count.
    pub strategy: Option<String>,
    pub steps: usize,
}

impl AutoNatSpec {
    /// AutoNAT-L with the released T = 8 strategy by default.
    pub fn autonat_l() -> Self {
        Self {
            name: "autonat-l".into(),
            net: UViTConfig::autonat_l(),
            tokenizer: MageVqganConfig::maskgit_f16_256(),
            strategy: None,
            steps: 8,
        }
    }
    /// AutoNAT-S (assumed U-ViT-S shape, see [`UViTConfig::autonat_s`]).
    pub fn autonat_s() -> Self {
        Self { name: "autonat-s".into(), net: UViTConfig::autonat_s(), ..Self::autonat_l() }
    }
    /// MaskGIT decoding (cosine schedule, choice temperature 4.5, no guidance) on the AutoNAT-L
    /// network: the baseline AutoNAT's searched strategy replaces.
    pub fn maskgit() -> Self {
        Self { name: "maskgit".into(), strategy: Some("maskgit-cosine".into()), ..Self::autonat_l() }
    }

    /// A fixture folder's `config.json` (the format of `tests/fixtures/models/autonat`):
    /// `generator.kwargs` and `tokenizer.kwargs`.
    pub fn from_fixture_config(config: &serde_json::Value, name: &str) -> Result<Self> {
        let net: UViTConfig = section(config, "/generator/kwargs")?;
        let tokenizer = MageVqganConfig::from_taming_kwargs(&config["tokenizer"]["kwargs"])
            .context("config.json: tokenizer.kwargs is not a VQModel configuration")?;
        Ok(Self { name: name.into(), net, tokenizer, strategy: None, steps: 8 })
    }

    /// True when a JSON config looks like an AutoNAT fixture config (for `--config` detection).
    pub fn is_fixture_config(config: &serde_json::Value) -> bool {
        config["generator"]["cls"].as_str() == Some("libs.nat_model.UViT")
    }

    /// Applies the sampler settings: `num_iter` (steps) and `strategy`.
    pub fn apply_settings(&mut self, s: &AutoNatSettings) {
        if let Some(t) = s.num_iter {
            self.steps = t;
        }
        if let Some(st) = &s.strategy {
            self.strategy = Some(st.clone());
            // A strategy file fixes T: without `num_iter` the steps come from the file. (A bad
            // file is reported by `resolve_strategy`, with the field at fault.)
            if s.num_iter.is_none() && !BUILTIN_NAMES.contains(&st.as_str()) {
                if let Ok(file) = Strategy::from_yaml_file(Path::new(st)) {
                    self.steps = file.steps();
                }
            }
        }
    }

    /// The strategy this spec generates with.
    pub fn resolve_strategy(&self) -> Result<(String, Strategy)> {
        match &self.strategy {
            Some(name) => Ok((name.clone(), Strategy::resolve(name, self.steps)?)),
            None if self.steps == 8 && self.net == UViTConfig::autonat_l() => Ok(("autonat-l-t8".into(), Strategy::autonat_l_t8())),
            None => bail!(
                "{}: no strategy for {} steps (the released one is AutoNAT-L at T=8); pass a strategy YAML \
                 file or a built-in: maskgit-cosine, search-init",
                self.name,
                self.steps
            ),
        }
    }

    /// Builds the generator on `device` in `dtype`.
    pub fn build(&self, weights: &WeightSource, device: &Device, dtype: DType) -> Result<AutoNatGenerator> {
        let (strategy_name, strategy) = self.resolve_strategy()?;
        let (net, tokenizer) = match weights {
            WeightSource::Files { nnet, vqgan } => {
                (load_uvit_file(&self.net, nnet, dtype, device)?, MageVqgan::load_file(&self.tokenizer, vqgan, dtype, device)?)
            }
            WeightSource::Random { seed } => {
                let vb = RandomWeights::new(*seed).var_builder(dtype, device);
                (UViT::load(&self.net, vb.pp("nnet"))?, MageVqgan::load(&self.tokenizer, vb.pp("vqgan"))?)
            }
        };
        AutoNatGenerator::new(self.name.clone(), net, tokenizer, strategy_name, strategy)
    }
}

/// AutoNAT's sampler settings as written. Per-step guidance and temperatures come from the
/// strategy, so there is no `cfg`, `top_k` or `temperature` to set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoNatSettings {
    /// Generation steps T (default: the strategy file's, else 8).
    pub num_iter: Option<usize>,
    /// A strategy YAML file (`manual_ratios`, `manual_temp`, `manual_samp_temp`, `manual_cfg`)
    /// or a built-in name (`maskgit-cosine`, `search-init`, `autonat-l-t8`).
    pub strategy: Option<String>,
}

impl crate::family::SamplerSettings for AutoNatSettings {
    fn validate(&self) -> std::result::Result<(), SettingsError> {
        if self.num_iter == Some(0) {
            return Err(SettingsError::new("num_iter", "must be at least 1"));
        }
        Ok(())
    }
}

/// AutoNAT-L (released), AutoNAT-S (assumed U-ViT-S shape, no weights published) and MaskGIT
/// decoding (cosine schedule) on the AutoNAT-L network.
pub const PUBLISHED_NAMES: [&str; 3] = ["autonat-l", "autonat-s", "maskgit"];

/// The AutoNAT spec (sampler settings applied) and weights a request names. With a
/// fixture-style `config.json`, checkpoints default to the files it names beside it.
pub fn autonat_model(req: &ModelRequest, config: Option<&serde_json::Value>) -> Result<(AutoNatSpec, WeightSource)> {
    let (mut spec, beside_config) = match config {
        Some(v) => {
            let label = req.model.clone().unwrap_or_else(|| "autonat-config".into());
            let dir = req.config_dir();
            let file = |section: &str| v[section]["checkpoint"].as_str().map(|f| dir.join(f));
            (AutoNatSpec::from_fixture_config(v, &label).with_context(|| req.config_source())?, (file("generator"), file("tokenizer")))
        }
        None => {
            let spec = match req.model.as_deref() {
                Some("autonat-l") => AutoNatSpec::autonat_l(),
                Some("autonat-s") => AutoNatSpec::autonat_s(),
                Some("maskgit") => AutoNatSpec::maskgit(),
                other => bail!("not an AutoNAT model: {other:?}"),
            };
            (spec, (None, None))
        }
    };
    req.arch.refuse_unsupported("AutoNAT", &["depth", "width", "heads", "mlp_ratio"])?;
    req.arch.apply_shape(&mut spec.net.depth, &mut spec.net.embed_dim, &mut spec.net.num_heads, Some(&mut spec.net.mlp_ratio))?;
    if let Some(px) = req.resolution.filter(|&px| px != spec.tokenizer.resolution) {
        // The VQGAN is convolutional; the U-ViT's token grid (and its learned positions) follow.
        spec.tokenizer.resolution = px;
        spec.net.img_size = spec.tokenizer.latent_side();
    }
    let settings = parse_settings::<AutoNatSettings>(&req.settings).map_err(|e| {
        anyhow::anyhow!(
            "{}: {e} (AutoNAT/MaskGIT take per-step guidance and temperatures from the strategy: `strategy` is a YAML \
             file or a built-in, `num_iter` the step count)",
            spec.name
        )
    })?;
    spec.apply_settings(&settings);
    // Fails early (before any weights are read) on a bad strategy file or step count.
    spec.resolve_strategy()?;
    let weights = match req.weight_paths(beside_config, ("nnet_ema.pth", "vqgan_jax_strongaug.ckpt (the MAGE VQGAN)"))? {
        None => WeightSource::Random { seed: 0 },
        Some((nnet, Some(vqgan))) => WeightSource::Files { nnet, vqgan },
        Some((_, None)) => bail!("{} needs --vae vqgan_jax_strongaug.ckpt (the MAGE VQGAN)", spec.name),
    };
    Ok((spec, weights))
}

/// The AutoNAT family (LeapLabTHU/ImprovedNAT): `autonat-l`, `autonat-s`, `maskgit` and
/// fixture configs.
pub struct AutoNatFamily;

impl ModelFamily for AutoNatFamily {
    fn family(&self) -> Family {
        Family::AutoNat
    }
    fn label(&self) -> &'static str {
        "AutoNAT"
    }
    fn names(&self) -> &'static [&'static str] {
        &PUBLISHED_NAMES
    }
    fn recognises_config(&self, v: &serde_json::Value) -> bool {
        AutoNatSpec::is_fixture_config(v)
    }
    fn check_settings(&self, settings: &RawSettings) -> std::result::Result<(), SettingsError> {
        parse_settings::<AutoNatSettings>(settings).map(|_| ())
    }
    fn file_settings(&self, settings: &RawSettings) -> Vec<&'static str> {
        match settings.get("strategy").and_then(|v| v.as_str()) {
            Some(s) if !BUILTIN_NAMES.contains(&s) => vec!["strategy"],
            _ => vec![],
        }
    }
    fn pixels_per_token(&self) -> usize {
        let c = MageVqganConfig::maskgit_f16_256();
        c.resolution / c.latent_side()
    }
    fn default_settings(&self, name: &str) -> Result<serde_json::Value> {
        let (spec, _) = autonat_model(&ModelRequest { model: Some(name.into()), random_init: true, ..Default::default() }, None)?;
        let (strategy, s) = spec.resolve_strategy()?;
        Ok(serde_json::json!({ "num_iter": s.steps(), "strategy": strategy }))
    }
    fn resolve(&self, req: &ModelRequest, config: Option<&serde_json::Value>) -> Result<ResolvedModel> {
        let (spec, weights) = autonat_model(req, config)?;
        let (strategy_name, strategy) = spec.resolve_strategy()?;
        let settings = serde_json::json!({
            "num_iter": strategy.steps(),
            "strategy": strategy_name,
            "manual_ratios": strategy.ratios,
            "manual_temp": strategy.remask_temps,
            "manual_samp_temp": strategy.samp_temps,
            "manual_cfg": strategy.cfg,
        });
        Ok(ResolvedModel::new(
            spec.name.clone(),
            Family::AutoNat,
            spec.net.null_class() as usize,
            spec.tokenizer.resolution,
            settings,
            Box::new(move |device, dtype| Ok(Box::new(spec.build(&weights, device, dtype)?) as Box<dyn Generator>)),
        ))
    }
}

/// Loads `nnet_ema.pth` (a flat state_dict) strictly: every tensor the network needs, with the
/// right shape, and nothing left over.
pub fn load_uvit_file(cfg: &UViTConfig, path: &Path, dtype: DType, device: &Device) -> Result<UViT> {
    let weights = StrictWeights::open(path, &[""], &[], device)?;
    let net = UViT::load(cfg, weights.var_builder(dtype, device))
        .with_context(|| format!("loading the AutoNAT network from {}", path.display()))?;
    // Training checkpoints may carry BERT `position_ids` buffers; the reference drops them.
    weights.ensure_all_used(|k| k.ends_with("position_ids"))?;
    Ok(net)
}

/// The AutoNAT / MaskGIT generator: U-ViT, strategy, MAGE VQGAN decoder.
pub struct AutoNatGenerator {
    name: String,
    net: UViT,
    tokenizer: MageVqgan,
    strategy_name: String,
    strategy: Strategy,
    device: Device,
}

/// The outputs of [`AutoNatGenerator::generate`].
pub struct Generated {
    /// Final token ids `(B * L)` (the last step's sampled ids).
    pub token_ids: Vec<u32>,
    /// Decoded images `(B, 3, H, W)` f32, unclamped (the reference clamps to [0, 1] later).
    pub images: Tensor,
}

impl AutoNatGenerator {
    pub fn new(name: String, net: UViT, tokenizer: MageVqgan, strategy_name: String, strategy: Strategy) -> Result<Self> {
        ensure!(
            tokenizer.config().n_embed == net.config().codebook_size,
            "tokenizer codebook ({}) and network vocabulary ({}) differ",
            tokenizer.config().n_embed,
            net.config().codebook_size
        );
        ensure!(
            tokenizer.config().latent_side() == net.config().img_size,
            "tokenizer latent grid {} and network token grid {} differ",
            tokenizer.config().latent_side(),
            net.config().img_size
        );
        strategy.validate()?;
        let device = net.token_emb.word.device().clone();
        Ok(Self { name, net, tokenizer, strategy_name, strategy, device })
    }

    pub fn net(&self) -> &UViT {
        &self.net
    }
    pub fn tokenizer(&self) -> &MageVqgan {
        &self.tokenizer
    }
    pub fn strategy(&self) -> &Strategy {
        &self.strategy
    }
    pub fn device(&self) -> &Device {
        &self.device
    }
    /// Replaces the strategy (the search evaluates many on one loaded model).
    pub fn set_strategy(&mut self, name: impl Into<String>, strategy: Strategy) -> Result<()> {
        strategy.validate()?;
        self.strategy_name = name.into();
        self.strategy = strategy;
        Ok(())
    }

    /// Generates one image per label with the current strategy, drawing from `rng`, reporting
    /// each step to `observer` and, if given, each step's trace to `on_trace`.
    pub fn generate(
        &self,
        labels: &[u32],
        rng: &mut dyn RandomSource,
        observer: &mut dyn StepObserver,
        mut on_trace: Option<&mut dyn FnMut(usize, &StepTrace)>,
    ) -> Result<Generated> {
        let cfg = self.net.config();
        ensure!(!labels.is_empty(), "no labels to generate for");
        if let Some(&bad) = labels.iter().find(|&&y| y >= cfg.null_class()) {
            bail!("class label {bad} is out of range: {} has classes 0..{}", self.name, cfg.null_class() - 1);
        }
        let batch = labels.len();
        let seq_len = cfg.seq_len();
        let per_forward = cfg.flops_per_forward();
        let strategy = &self.strategy;
        strategy.validate()?;
        // The loop of `generate_tokens`, each step timed and reported.
        let mut ids = vec![cfg.mask_id(); batch * seq_len];
        let mut token_ids = ids.clone();
        for step in 0..strategy.steps() {
            let size_of = |trace: &StepTrace| StepSize {
                step,
                kind: StepKind::Transformer,
                batch,
                tokens_decoded: trace.num_fixed(),
                tokens_attended: seq_len + 1,
                // Two forwards (conditional and unconditional) of every image.
                flops: 2.0 * per_forward * batch as f64,
            };
            let trace = record_sized_step(
                observer,
                &self.device,
                || {
                    // Forward and guide: conditional and unconditional passes mixed by this step's scale.
                    let input = Tensor::from_slice(&ids, (batch, seq_len), &self.device)?;
                    let logits = self.net.guided_logits(&input, labels, strategy.cfg[step])?;
                    // Sample, re-mask the least confident, feed back.
                    sample_and_remask(step, strategy, batch, seq_len, cfg.mask_id(), &mut ids, logits, rng)
                },
                size_of,
            )?;
            if let Some(f) = on_trace.as_deref_mut() {
                f(step, &trace);
            }
            token_ids = trace.sampled_ids;
        }
        let size = StepSize {
            step: self.strategy.steps(),
            kind: StepKind::Decode,
            batch,
            tokens_decoded: 0,
            tokens_attended: 0,
            flops: self.tokenizer.decoder_flops() * batch as f64,
        };
        let images = record_step(observer, &self.device, size, || {
            let ids = Tensor::from_slice(&token_ids, (batch, seq_len), &self.device)?;
            self.tokenizer.decode_code(&ids)
        })?;
        Ok(Generated { token_ids, images })
    }
}

impl Generator for AutoNatGenerator {
    fn name(&self) -> &str {
        &self.name
    }
    fn family(&self) -> Family {
        Family::AutoNat
    }
    fn image_size(&self) -> usize {
        self.tokenizer.config().resolution
    }
    fn num_classes(&self) -> usize {
        self.net.config().null_class() as usize
    }
    fn settings(&self) -> serde_json::Value {
        serde_json::json!({
            "num_iter": self.strategy.steps(),
            "strategy": self.strategy_name,
            "manual_ratios": self.strategy.ratios,
            "manual_temp": self.strategy.remask_temps,
            "manual_samp_temp": self.strategy.samp_temps,
            "manual_cfg": self.strategy.cfg,
            "guidance": "c + s (c - u), both passes every step",
            "network": self.net.config(),
        })
    }
    fn flops_per_image(&self) -> FlopsPerImage {
        let per_step = 2.0 * self.net.config().flops_per_forward();
        let steps = self.strategy.steps();
        FlopsPerImage {
            transformer: per_step * steps as f64,
            diffusion_mlp: 0.0,
            decoder: self.tokenizer.decoder_flops(),
            per_step: vec![per_step; steps],
        }
    }
    fn step_matmuls(&self, step: &StepSize) -> Vec<MatmulShape> {
        match step.kind {
            // Both guidance passes run as one forward over 2 x batch sequences.
            StepKind::Transformer => self.net.config().forward_matmuls(2 * step.batch),
            _ => vec![],
        }
    }
    fn sample(&mut self, labels: &[u32], seed: u64, observer: &mut dyn StepObserver) -> Result<Samples> {
        let mut rng = SeededSource::new(seed);
        let out = self.generate(labels, &mut rng, observer, None)?;
        // eval_step: samples.clamp_(0, 1) before Inception.
        let (images, n, height, width) = to_uint8_nhwc_from_unit(&out.images.clamp(0f32, 1f32)?)?;
        Ok(Samples { images, n, height, width, token_ids: Some(out.token_ids), latents: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn autonat_l_flops_match_the_reference_table() {
        // flops_summary.txt: one forward (257 tokens) 104.01 GF; 8 steps 1664.1 GF per image.
        let f = UViTConfig::autonat_l().flops_per_forward();
        assert!((f / 1e9 - 104.01).abs() < 0.01, "{}", f / 1e9);
        assert!((16.0 * f / 1e9 - 1664.1).abs() < 0.1);
    }

    #[test]
    fn forward_matmuls_are_the_weight_products_of_the_analytic_forward() {
        // Every block has one out-block's products but the skip_linear (out-blocks only) and the
        // attention core (not a weight product); the head comes once. Rows: 2 (one image, CFG).
        for cfg in [UViTConfig::autonat_l(), UViTConfig::autonat_s(), UViTConfig { skip: false, ..UViTConfig::autonat_l() }] {
            let shapes = cfg.forward_matmuls(2);
            let n = cfg.seq_len() + 1;
            let (skip, rest) = shapes.split_at(usize::from(cfg.skip));
            let (block, head) = rest.split_at(rest.len() - 2);
            assert!(block.iter().chain(skip).all(|s| s.m == 2 * n), "{shapes:?}");
            assert!(head.iter().all(|s| s.m == 2 * cfg.seq_len()), "{shapes:?}");
            let sum = |v: &[MatmulShape]| v.iter().map(MatmulShape::flops).sum::<f64>();
            let weight_products = (cfg.depth + 1) as f64 * sum(block) + cfg.blocks_per_side() as f64 * sum(skip) + sum(head);
            let attention_cores = (cfg.depth + 1) as f64 * flops::attention_core(n, n, cfg.embed_dim);
            let want = 2.0 * (cfg.flops_per_forward() - attention_cores);
            assert!((weight_products / want - 1.0).abs() < 1e-12, "{weight_products} vs {want}");
        }
    }

    #[test]
    fn configs() {
        let l = UViTConfig::autonat_l();
        assert_eq!((l.seq_len(), l.mask_id(), l.null_class(), l.mlp_hidden()), (256, 1024, 1000, 3072));
        let s = UViTConfig::autonat_s();
        assert_eq!((s.embed_dim, s.depth, s.num_heads), (512, 12, 8));
        assert!(UViTConfig { depth: 5, ..l.clone() }.validate().is_err());
    }
}
