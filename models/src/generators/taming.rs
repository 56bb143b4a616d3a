//! The taming-transformers class-conditional baseline (CompVis/taming-transformers,
//! `Net2NetTransformer` with a minGPT and a VQGAN f16 first stage): the raster-scan AR row of
//! VAR's tables (FID 15.78 at the README settings).
//!
//! What differs from LlamaGen: the class id is fed as an ordinary token through the SAME
//! `tok_emb` table as the image codes (`Labelator`), positions are a learned absolute table
//! `pos_emb`, blocks are pre-LN with LayerNorm, separate biased q/k/v/proj Linears and an exact
//! (erf) GELU MLP, the head has no bias, and there is no classifier-free guidance.
//! `sample_with_past`: step 0 feeds the class token at position 0, step n >= 1 feeds z_{n-1} at
//! position n attending over the whole cache; N steps give z_0..z_{N-1}.

use crate::checkpoint::StrictWeights;
use crate::family::{check_range, parse_settings, ModelFamily, ModelRequest, RawSettings, ResolvedModel, SettingsError};
use crate::generator::{
    record_step, to_uint8_nhwc_from_signed, Family, FlopsPerImage, Generator, Samples, StepKind, StepObserver, StepSize,
};
use crate::nn::attention::{self, reset_layer_caches, KvCache, MultiHeadAttention};
use crate::nn::linear::RowLinear;
use crate::nn::mlp::{Activation, Mlp};
use crate::nn::norm::LayerNorm;
use crate::nn::sampling::TokenSampler;
use crate::reference_config::from_value_at;
use crate::tokenizers::taming_vqgan::{TamingVqgan, TamingVqganConfig, VqganParams};
use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, IndexOp, Module, Tensor};
use candle_nn::{Embedding, VarBuilder};
use genbench_runtime::rng::{RandomSource, SeededSource};
use serde::{Deserialize, Serialize};

/// minGPT's constructor arguments (`taming.modules.transformer.mingpt.GPT`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TamingGptConfig {
    pub vocab_size: usize,
    pub block_size: usize,
    pub n_layer: usize,
    /// minGPT's default (8) when the YAML leaves it out.
    #[serde(default = "mingpt_default_n_head")]
    pub n_head: usize,
    pub n_embd: usize,
}

fn mingpt_default_n_head() -> usize {
    8
}

/// A taming `config.json` as the fixture holds it: the `instantiate_from_config` tree under
/// `model` and, optionally, the image size (default: the first stage's resolution).
#[derive(Deserialize)]
struct TamingJson {
    model: Instantiate<Net2NetParams>,
    image_size: Option<usize>,
}

/// One `{target, params}` node of an `instantiate_from_config` tree.
#[derive(Deserialize)]
struct Instantiate<P> {
    params: P,
}

/// `Net2NetTransformer(...)` arguments that shape the model.
#[derive(Deserialize)]
struct Net2NetParams {
    transformer_config: Instantiate<TamingGptConfig>,
    first_stage_config: Instantiate<VqganParams>,
    cond_stage_config: Instantiate<LabelatorParams>,
}

/// `Labelator(n_classes)`: the class id is the conditioning token.
#[derive(Deserialize)]
struct LabelatorParams {
    n_classes: usize,
}

impl TamingGptConfig {
    /// The published ImageNet cin transformer (`2021-04-03T19-39-50_cin_transformer`):
    /// vocab 16384, block 256, 48 layers, width 1536 (1.41B parameters).
    ///
    /// `n_head` = 24 (head_dim 64). The head count changes no tensor shape, so the checkpoint
    /// cannot tell; the project.yaml that states it ships only inside the checkpoint archive,
    /// which is not available here, so 24 is believed but unconfirmed.
    /// 24 is the value that gives the 64-wide heads of every other minGPT config of the
    /// paper's family (e.g. faceshq 1024 / 16). A model whose project.yaml says otherwise is
    /// loaded with `--config` (the fixture-format JSON carries `n_head` explicitly).
    pub fn cin() -> Self {
        Self { vocab_size: 16384, block_size: 256, n_layer: 48, n_head: 24, n_embd: 1536 }
    }
    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }
    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.n_head > 0 && self.n_embd.is_multiple_of(self.n_head),
            "n_embd {} is not divisible by n_head {}",
            self.n_embd,
            self.n_head
        );
        ensure!(self.vocab_size > 0 && self.block_size > 0 && self.n_layer > 0, "vocab_size, block_size and n_layer must be positive");
        Ok(())
    }
}

/// A whole taming class-conditional model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TamingConfig {
    pub gpt: TamingGptConfig,
    pub vq: TamingVqganConfig,
    /// Class ids `0..n_classes` (they index `tok_emb`).
    pub n_classes: usize,
    pub image_size: usize,
}

impl TamingConfig {
    /// The published cin model: minGPT [`TamingGptConfig::cin`] + VQGAN f16-16384, 256 px.
    pub fn cin() -> Self {
        Self { gpt: TamingGptConfig::cin(), vq: TamingVqganConfig::f16(16384), n_classes: 1000, image_size: 256 }
    }

    /// Tokens per image (the latent grid squared).
    pub fn tokens_per_image(&self) -> usize {
        let g = self.grid();
        g * g
    }
    pub fn grid(&self) -> usize {
        self.image_size / self.vq.downsample_factor()
    }

    /// Reads a taming config as the fixture's `config.json` holds it: the instantiate_from_config
    /// tree under `model` (`params.transformer_config.params`, `params.first_stage_config.params`,
    /// `params.cond_stage_config.params.n_classes`), plus `image_size`.
    pub fn from_reference_json(v: &serde_json::Value) -> Result<Self> {
        let TamingJson { model, image_size } = from_value_at(v, "")?;
        let vq = model.params.first_stage_config.params.into_config()?;
        let image_size = image_size.unwrap_or(vq.resolution);
        let cfg = Self {
            gpt: model.params.transformer_config.params,
            vq,
            n_classes: model.params.cond_stage_config.params.n_classes,
            image_size,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// True when `v` looks like a taming reference config (for `--config` detection).
    pub fn is_reference_json(v: &serde_json::Value) -> bool {
        v.pointer("/model/params/transformer_config").is_some() && v.pointer("/model/params/first_stage_config").is_some()
    }

    pub fn validate(&self) -> Result<()> {
        self.gpt.validate()?;
        self.vq.validate()?;
        ensure!(
            self.vq.n_embed == self.gpt.vocab_size,
            "the VQGAN codebook has {} entries but the GPT's vocabulary is {}: they do not belong together",
            self.vq.n_embed,
            self.gpt.vocab_size
        );
        ensure!(
            self.n_classes <= self.gpt.vocab_size,
            "{} classes cannot index a {}-entry token table",
            self.n_classes,
            self.gpt.vocab_size
        );
        ensure!(
            self.tokens_per_image() <= self.gpt.block_size,
            "{} px with {}x downsampling gives {} tokens, more than the GPT's block_size {}",
            self.image_size,
            self.vq.downsample_factor(),
            self.tokens_per_image(),
            self.gpt.block_size
        );
        Ok(())
    }
}

/// Sampling settings of `sample_with_past` as `scripts/sample_fast.py` drives it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TamingSampling {
    /// `None` = no filtering at all (top_p is then ignored too, as in the reference).
    pub top_k: Option<usize>,
    pub top_p: f64,
    pub temperature: f64,
}

impl Default for TamingSampling {
    /// sample_fast.py's defaults: top_k 250, top_p 1.0, temperature 1.0.
    fn default() -> Self {
        Self { top_k: Some(250), top_p: 1.0, temperature: 1.0 }
    }
}

impl TamingSampling {
    /// The recipe with the settings that were given applied over it.
    pub fn with_settings(self, s: &TamingSettings) -> Self {
        Self {
            top_k: s.top_k.map(Some).unwrap_or(self.top_k),
            top_p: s.top_p.unwrap_or(self.top_p),
            temperature: s.temperature.unwrap_or(self.temperature),
        }
    }
}

/// The taming transformer's sampler settings as written (absent = `sample_fast.py`'s
/// defaults). It has no classifier-free guidance: `cfg` is accepted only as 0 or 1 (off).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TamingSettings {
    pub cfg: Option<f64>,
    pub top_k: Option<usize>,
    pub top_p: Option<f64>,
    pub temperature: Option<f64>,
}

impl crate::family::SamplerSettings for TamingSettings {
    fn validate(&self) -> std::result::Result<(), SettingsError> {
        if let Some(c) = self.cfg.filter(|&c| c != 0.0 && c != 1.0) {
            return Err(SettingsError::new("cfg", format!("the taming transformer has no classifier-free guidance (cfg {c} requested)")));
        }
        check_range("top_p", self.top_p, |p| p > 0.0 && p <= 1.0, "must be in (0, 1]")?;
        check_range("temperature", self.temperature, |t| t > 0.0, "must be > 0 (taming divides by it)")
    }
}

/// The taming-transformers class-conditional ImageNet transformer (CompVis/taming-transformers,
/// VQGAN f16-16384 + GPT): `taming-cin` and fixture configs.
pub struct TamingFamily;

impl ModelFamily for TamingFamily {
    fn family(&self) -> Family {
        Family::RasterAr
    }
    fn label(&self) -> &'static str {
        "taming"
    }
    fn names(&self) -> &'static [&'static str] {
        &["taming-cin"]
    }
    fn recognises_config(&self, v: &serde_json::Value) -> bool {
        TamingConfig::is_reference_json(v)
    }
    fn check_settings(&self, settings: &RawSettings) -> std::result::Result<(), SettingsError> {
        parse_settings::<TamingSettings>(settings).map(|_| ())
    }
    fn pixels_per_token(&self) -> usize {
        TamingConfig::cin().vq.downsample_factor()
    }
    fn default_settings(&self, _name: &str) -> Result<serde_json::Value> {
        Ok(serde_json::to_value(TamingSampling::default())?)
    }
    fn resolve(&self, req: &ModelRequest, config: Option<&serde_json::Value>) -> Result<ResolvedModel> {
        let (name, mut cfg, beside) = match config {
            Some(v) => {
                let cfg = TamingConfig::from_reference_json(v).with_context(|| req.config_source())?;
                let name = req.model.clone().unwrap_or_else(|| format!("taming-{}x{}-custom", cfg.gpt.n_layer, cfg.gpt.n_embd));
                (name, cfg, v["checkpoint"].as_str().map(|f| req.config_dir().join(f)))
            }
            None => (req.model.clone().context("taming: give a model name or a config")?, TamingConfig::cin(), None),
        };
        req.arch.refuse_unsupported("taming", &["depth", "width", "heads"])?;
        req.arch.apply_shape(&mut cfg.gpt.n_layer, &mut cfg.gpt.n_embd, &mut cfg.gpt.n_head, None)?;
        if let Some(px) = req.resolution.filter(|&px| px != cfg.image_size) {
            bail!("taming-cin runs at {} px only (its GPT has learned positions for that grid), not {px}", cfg.image_size);
        }
        let settings = parse_settings::<TamingSettings>(&req.settings).map_err(|e| anyhow::anyhow!("taming: {e}"))?;
        let sampling = TamingSampling::default().with_settings(&settings);
        // The VQGAN normally comes from the cin checkpoint itself (`first_stage_model.*`); --vae
        // may give a separate vqgan_imagenet_f16_16384 file.
        let paths = req.weight_paths((beside, None), ("last.ckpt (the cin transformer)", ""))?;
        let (num_classes, image_size) = (cfg.n_classes, cfg.image_size);
        let model_name = name.clone();
        Ok(ResolvedModel::new(
            name,
            Family::RasterAr,
            num_classes,
            image_size,
            serde_json::to_value(&sampling)?,
            Box::new(move |device, dtype| {
                let g = match &paths {
                    Some((ckpt, vq)) => TamingGenerator::load(&model_name, cfg, ckpt, vq.as_deref(), sampling, device, dtype)?,
                    None => TamingGenerator::random_init(&model_name, cfg, sampling, 0, device, dtype)?,
                };
                Ok(Box::new(g) as Box<dyn Generator>)
            }),
        ))
    }
}

struct Block {
    ln1: LayerNorm,
    ln2: LayerNorm,
    attn: MultiHeadAttention,
    mlp: Mlp,
}

/// Sub-results of one block, for the block parity test.
pub struct BlockParts {
    pub ln1_out: Tensor,
    pub attn_out: Tensor,
    pub h: Tensor,
    pub mlp_out: Tensor,
    pub out: Tensor,
}

/// minGPT as used by the cin transformer.
pub struct TamingGpt {
    cfg: TamingGptConfig,
    tok_emb: Embedding,
    /// `(block_size, C)`.
    pos_emb: Tensor,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    head: RowLinear,
    device: Device,
    dtype: DType,
}

impl TamingGpt {
    /// Builds the GPT from `vb` with the checkpoint's names (after stripping `transformer.`).
    pub fn new(cfg: &TamingGptConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let c = cfg.n_embd;
        let tok_emb = candle_nn::embedding(cfg.vocab_size, c, vb.pp("tok_emb"))?;
        let pos_emb = vb.get((1, cfg.block_size, c), "pos_emb")?.squeeze(0)?;
        let mut blocks = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let vb = vb.pp("blocks").pp(i);
            // The causal mask is a stored buffer (1, 1, block, block); it is read so a checkpoint
            // without it (or with another block size) is rejected, then recomputed on the fly.
            let _mask = vb.pp("attn").get((1, 1, cfg.block_size, cfg.block_size), "mask")?;
            blocks.push(Block {
                ln1: LayerNorm::load(c, 1e-5, vb.pp("ln1"))?,
                ln2: LayerNorm::load(c, 1e-5, vb.pp("ln2"))?,
                attn: MultiHeadAttention::load_separate(vb.pp("attn"), c, cfg.n_head, ("query", "key", "value"), "proj", true)?,
                mlp: Mlp::load_named(vb.pp("mlp"), c, 4 * c, c, Activation::GeluErf, ("0", "2"), true)?,
            });
        }
        let ln_f = LayerNorm::load(c, 1e-5, vb.pp("ln_f"))?;
        let head = RowLinear::from_linear(&candle_nn::linear_no_bias(c, cfg.vocab_size, vb.pp("head"))?)?;
        Ok(Self { cfg: cfg.clone(), tok_emb, pos_emb, blocks, ln_f, head, device: vb.device().clone(), dtype: vb.dtype() })
    }

    pub fn config(&self) -> &TamingGptConfig {
        &self.cfg
    }
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// `tok_emb(ids) + pos_emb[start..start+T]` for ids `(B, T)`.
    pub fn embed(&self, ids: &Tensor, start: usize) -> Result<Tensor> {
        let t = ids.dim(1)?;
        ensure!(start + t <= self.cfg.block_size, "positions {start}..{} exceed block_size {}", start + t, self.cfg.block_size);
        let max = ids.flatten_all()?.max(0)?.to_dtype(DType::U32)?.to_scalar::<u32>()?;
        ensure!((max as usize) < self.cfg.vocab_size, "token id {max} outside the {}-entry table", self.cfg.vocab_size);
        Ok(self.tok_emb.forward(ids)?.broadcast_add(&self.pos_emb.narrow(0, start, t)?)?)
    }

    fn mask(&self, t: usize, start: usize) -> Result<Option<Tensor>> {
        if t <= 1 {
            // A single token attends to the whole cache, unmasked (as `forward_with_past`).
            return Ok(None);
        }
        Ok(Some(attention::causal_mask(t, start + t, start, self.dtype, &self.device)?))
    }

    fn block_forward(&self, b: &Block, x: &Tensor, start: usize, cache: Option<&mut KvCache>) -> Result<Tensor> {
        let mask = self.mask(x.dim(1)?, start)?;
        let h = (x + b.attn.forward(&b.ln1.forward(x)?, mask.as_ref(), cache)?)?;
        Ok((&h + b.mlp.forward(&b.ln2.forward(&h)?)?)?)
    }

    /// Every intermediate of block `layer` over `x` (no cache, causal), for parity tests.
    pub fn block_parts(&self, layer: usize, x: &Tensor) -> Result<BlockParts> {
        let b = self.blocks.get(layer).context("layer index out of range")?;
        let mask = self.mask(x.dim(1)?, 0)?;
        let ln1_out = b.ln1.forward(x)?;
        let attn_out = b.attn.forward(&ln1_out, mask.as_ref(), None)?;
        let h = (x + &attn_out)?;
        let mlp_out = b.mlp.forward(&b.ln2.forward(&h)?)?;
        let out = (&h + &mlp_out)?;
        Ok(BlockParts { ln1_out, attn_out, h, mlp_out, out })
    }

    /// Runs the blocks from embeddings `x (B, T, C)` at positions `start..`, through `caches`
    /// (one per block) when given; returns each block's output and the f32 logits `(B, T, V)`.
    fn run(&self, x: Tensor, start: usize, mut caches: Option<&mut [KvCache]>) -> Result<(Vec<Tensor>, Tensor)> {
        let mut h = x;
        let mut outs = Vec::with_capacity(self.blocks.len());
        for (i, b) in self.blocks.iter().enumerate() {
            h = self.block_forward(b, &h, start, caches.as_deref_mut().map(|cs| &mut cs[i]))?;
            outs.push(h.clone());
        }
        let logits = self.head.forward(&self.ln_f.forward(&h)?)?.to_dtype(DType::F32)?;
        Ok((outs, logits))
    }

    /// Teacher forcing on `[c, z_0 .. z_{N-2}]` (`Net2NetTransformer.forward`): logits
    /// `(B, N, V)` (position p predicts z_p) and the hidden states (embeddings, each block).
    pub fn teacher_forcing(&self, labels: &[u32], tokens: &Tensor) -> Result<(Tensor, Vec<Tensor>)> {
        let (bsz, n) = tokens.dims2()?;
        ensure!(labels.len() == bsz, "{} labels for a batch of {bsz}", labels.len());
        let cls = Tensor::new(labels, &self.device)?.unsqueeze(1)?.to_dtype(tokens.dtype())?;
        let seq = Tensor::cat(&[&cls, &tokens.narrow(1, 0, n - 1)?], 1)?;
        let x = self.embed(&seq, 0)?;
        let (mut hidden, logits) = self.run(x.clone(), 0, None)?;
        hidden.insert(0, x);
        Ok((logits, hidden))
    }

    /// Prepares `caches` as one KV cache per block for `batch` rows and `capacity` positions,
    /// reusing the buffers when the shape is unchanged.
    fn reset_caches(&self, caches: &mut Vec<KvCache>, batch: usize, capacity: usize) -> Result<()> {
        let layers = self.blocks.iter().map(|b| &b.attn);
        Ok(reset_layer_caches(caches, layers, batch, capacity, self.dtype, &self.device)?)
    }

    /// Bytes one cached step reads: all weights but the embedding tables, plus `k` cached
    /// keys and values per row.
    pub fn step_read_bytes(&self, rows: usize, k: usize) -> f64 {
        let c = self.cfg.n_embd;
        let per_layer = 4 * (c * c + c) + (4 * c * c + 4 * c) + (4 * c * c + c) + 4 * c;
        let weights = self.cfg.n_layer * per_layer + 2 * c + self.cfg.vocab_size * c;
        let cache = 2 * self.cfg.n_layer * rows * k * c;
        ((weights + cache) * self.dtype.size_in_bytes()) as f64
    }
}

/// FLOPs (2 x MACs) of one minGPT forward of `q` tokens attending `k` keys, one sequence:
/// `L (24 q C^2 + 4 q k C) + 2 q C V` (the convention of [`crate::flops`]).
pub fn taming_forward_flops(c: &TamingGptConfig, q: usize, k: usize) -> f64 {
    use crate::flops;
    let d = c.n_embd;
    c.n_layer as f64 * (flops::self_attention(q, k, d) + flops::mlp(q, d, 4 * d)) + flops::linear(q, d, c.vocab_size)
}

/// Per-step FLOPs of one image: step t feeds one token attending t + 1 keys.
pub fn taming_step_flops(c: &TamingGptConfig, tokens: usize) -> Vec<f64> {
    (0..tokens).map(|t| taming_forward_flops(c, 1, t + 1)).collect()
}

/// Per-step record of the cached loop, for parity tests.
#[derive(Clone, Debug)]
pub struct StepTrace {
    /// Last-position logits `(B, V)` before temperature / filtering.
    pub logits: Tensor,
    pub input_ids: Vec<u32>,
    pub input_pos: usize,
}

impl TamingGpt {
    /// `sample_with_past(labels[:, None], transformer, steps=tokens, ...)`: returns `(B, tokens)`
    /// ids row-major, class token cut off. The caller owns the per-block KV caches and lends
    /// them (as candle-transformers' `llama::Llama::forward` takes `&mut Cache`); a later call
    /// of the same shape reuses their buffers.
    #[allow(clippy::too_many_arguments)]
    pub fn generate(
        &self,
        labels: &[u32],
        tokens: usize,
        s: &TamingSampling,
        caches: &mut Vec<KvCache>,
        rng: &mut dyn RandomSource,
        observer: &mut dyn StepObserver,
        mut trace: Option<&mut Vec<StepTrace>>,
    ) -> Result<Vec<u32>> {
        let b = labels.len();
        ensure!(b > 0, "no labels to sample");
        ensure!(tokens <= self.cfg.block_size, "{tokens} tokens exceed block_size {}", self.cfg.block_size);
        if let Some(&bad) = labels.iter().find(|&&l| l as usize >= self.cfg.vocab_size) {
            bail!("class id {bad} cannot index the {}-entry token table", self.cfg.vocab_size);
        }
        // Step n writes position n; the last sampled token is never fed back.
        self.reset_caches(caches, b, tokens)?;
        let mut out = vec![0u32; b * tokens];
        let mut input = labels.to_vec();
        for step in 0..tokens {
            let size = StepSize {
                step,
                kind: StepKind::Transformer,
                batch: b,
                tokens_decoded: 1,
                tokens_attended: step + 1,
                flops: b as f64 * taming_forward_flops(&self.cfg, 1, step + 1),
            };
            let device = self.device.clone();
            let (last, next) = record_step(observer, &device, size, || {
                // Forward through the caches.
                let ids = Tensor::new(input.as_slice(), &device)?.unsqueeze(1)?;
                let x = self.embed(&ids, step)?;
                let (_, logits) = self.run(x, step, Some(caches.as_mut_slice()))?;
                let last = logits.i((.., 0, ..))?;
                // Sample (no guidance): logits / temperature; the HF top-k + top-p filter only
                // when top_k is given; softmax; multinomial.
                let sampler = match s.top_k {
                    Some(k) => TokenSampler::hugging_face(s.temperature, k, s.top_p),
                    None => TokenSampler::hugging_face(s.temperature, 0, 1.0),
                };
                let next = sampler.sample(&last, rng)?.to_vec1::<u32>()?;
                Ok((last, next))
            })?;
            if let Some(tr) = trace.as_deref_mut() {
                tr.push(StepTrace { logits: last, input_ids: input.clone(), input_pos: step });
            }
            for (i, &t) in next.iter().enumerate() {
                out[i * tokens + step] = t;
            }
            input = next;
        }
        Ok(out)
    }
}

/// The taming cin generator behind the [`Generator`] interface.
pub struct TamingGenerator {
    name: String,
    cfg: TamingConfig,
    gpt: TamingGpt,
    /// The GPT's KV caches, kept between `sample` calls so a same-sized batch allocates nothing.
    caches: Vec<KvCache>,
    vq: TamingVqgan,
    sampling: TamingSampling,
}

impl TamingGenerator {
    /// `gpt_vb` / `vq_vb` address the weights without the `transformer.` / `first_stage_model.`
    /// prefixes.
    pub fn new(name: &str, cfg: TamingConfig, gpt_vb: VarBuilder, vq_vb: VarBuilder, sampling: TamingSampling) -> Result<Self> {
        cfg.validate()?;
        let gpt = TamingGpt::new(&cfg.gpt, gpt_vb)?;
        let vq = TamingVqgan::new(&cfg.vq, vq_vb)?;
        Ok(Self { name: name.to_string(), cfg, gpt, caches: Vec::new(), vq, sampling })
    }
    /// Loads a Lightning checkpoint (weights under `state_dict`): the cin transformer's
    /// `last.ckpt` holds the GPT under `transformer.` and the VQGAN under `first_stage_model.`.
    /// `vqgan_ckpt` optionally takes the VQGAN from a separate `vqgan_imagenet_f16_*` file
    /// (unprefixed names). `loss.*` entries (LPIPS, discriminator) are never read. Strict
    /// otherwise; the codebook size is checked against the GPT's vocabulary before building.
    pub fn load(
        name: &str,
        cfg: TamingConfig,
        ckpt: &std::path::Path,
        vqgan_ckpt: Option<&std::path::Path>,
        sampling: TamingSampling,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        cfg.validate()?;
        let w = StrictWeights::open(ckpt, &["state_dict", ""], &[], device)?;
        let gpt_prefix = if w.tensors().keys().any(|k| k.starts_with("transformer.")) { "transformer" } else { "" };
        let sep = vqgan_ckpt.map(|p| StrictWeights::open(p, &["state_dict", ""], &[], device)).transpose()?;
        let (vq_w, vq_prefix) = match &sep {
            Some(v) => (v, ""),
            None => (&w, "first_stage_model"),
        };
        let cb_key =
            if vq_prefix.is_empty() { "quantize.embedding.weight".to_string() } else { format!("{vq_prefix}.quantize.embedding.weight") };
        if let Some(cb) = vq_w.tensors().get(&cb_key) {
            ensure!(
                cb.dim(0)? == cfg.gpt.vocab_size,
                "{}: the VQGAN codebook has {} entries but the GPT's vocabulary is {}: this first stage does not belong to this GPT",
                vq_w.source(),
                cb.dim(0)?,
                cfg.gpt.vocab_size
            );
        }
        let pp = |vb: VarBuilder<'static>, p: &str| if p.is_empty() { vb } else { vb.pp(p) };
        let gpt = TamingGpt::new(&cfg.gpt, pp(w.var_builder(dtype, device), gpt_prefix))?;
        let vq = TamingVqgan::new(&cfg.vq, pp(vq_w.var_builder(DType::F32, device), vq_prefix))?;
        let is_loss = |k: &str| k.starts_with("loss.") || k.starts_with("first_stage_model.loss.");
        match &sep {
            // The cin file's own first stage is then not used.
            Some(v) => {
                w.ensure_all_used(|k| is_loss(k) || k.starts_with("first_stage_model."))?;
                v.ensure_all_used(is_loss)?;
            }
            None => w.ensure_all_used(is_loss)?,
        }
        Ok(Self { name: name.to_string(), cfg, gpt, caches: Vec::new(), vq, sampling })
    }

    /// Random weights (`--random-init`), for timing and FLOP work; images are noise.
    pub fn random_init(name: &str, cfg: TamingConfig, sampling: TamingSampling, seed: u64, device: &Device, dtype: DType) -> Result<Self> {
        let rnd = crate::checkpoint::RandomWeights::new(seed);
        Self::new(name, cfg, rnd.var_builder(dtype, device), rnd.var_builder(DType::F32, device), sampling)
    }

    pub fn gpt(&mut self) -> &mut TamingGpt {
        &mut self.gpt
    }
    pub fn vq(&self) -> &TamingVqgan {
        &self.vq
    }
    pub fn config(&self) -> &TamingConfig {
        &self.cfg
    }
    pub fn set_sampling(&mut self, s: TamingSampling) {
        self.sampling = s;
    }
    pub fn sampling(&self) -> &TamingSampling {
        &self.sampling
    }
}

impl Generator for TamingGenerator {
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
        self.cfg.n_classes
    }
    fn settings(&self) -> serde_json::Value {
        serde_json::json!({
            "top_k": self.sampling.top_k,
            "top_p": self.sampling.top_p,
            "temperature": self.sampling.temperature,
            "cfg": null,
            "image_size": self.cfg.image_size,
            "n_head": self.cfg.gpt.n_head,
        })
    }
    fn flops_per_image(&self) -> FlopsPerImage {
        let per_step = taming_step_flops(&self.cfg.gpt, self.cfg.tokens_per_image());
        let g = self.cfg.grid();
        FlopsPerImage { transformer: per_step.iter().sum(), diffusion_mlp: 0.0, decoder: self.vq.decoder_flops(g, g), per_step }
    }
    fn sample(&mut self, labels: &[u32], seed: u64, observer: &mut dyn StepObserver) -> Result<Samples> {
        let nc = self.cfg.n_classes as u32;
        if let Some(&bad) = labels.iter().find(|&&l| l >= nc) {
            bail!("class id {bad} is out of range (0..{nc})");
        }
        let mut rng = SeededSource::new(seed);
        let n = self.cfg.tokens_per_image();
        let tokens = self.gpt.generate(labels, n, &self.sampling, &mut self.caches, &mut rng, observer, None)?;
        let g = self.cfg.grid();
        let size = StepSize {
            step: n,
            kind: StepKind::Decode,
            batch: labels.len(),
            tokens_decoded: 0,
            tokens_attended: 0,
            flops: labels.len() as f64 * self.vq.decoder_flops(g, g),
        };
        let device = self.gpt.device().clone();
        let img = record_step(observer, &device, size, || {
            let ids = Tensor::from_slice(&tokens, (labels.len(), n), &device)?;
            self.vq.decode_code(&ids, g, g)
        })?;
        // sample_fast.py: uint8((255 * (x + 1) / 2).clip(0, 255)), truncating: the ADM rule.
        let (images, n_img, height, width) = to_uint8_nhwc_from_signed(&img)?;
        Ok(Samples { images, n: n_img, height, width, token_ids: Some(tokens), latents: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cin_flops_match_reference_table() {
        // flops_summary.txt: taming cin GPT (48x1536, 256 tokens, no CFG): 718.4 GF per image.
        let total: f64 = taming_step_flops(&TamingGptConfig::cin(), 256).iter().sum::<f64>() / 1e9;
        assert!((total - 718.4).abs() < 0.06, "{total}");
    }
}
