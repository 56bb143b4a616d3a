//! MAR's per-token diffusion head ("DiffLoss", LTH14/mar `models/diffloss.py` + `diffusion/`):
//! the respaced cosine DDPM schedule, the `SimpleMLPAdaLN` noise-prediction network and the
//! reverse (ancestral) sampling loop with classifier-free guidance on the predicted noise.
//!
//! Numerics follow the reference: the schedule is computed in f64 (numpy) and each coefficient
//! is rounded to f32 where it is used (`_extract_into_tensor(...).float()`); all tensor math is
//! f32 in the reference's operation order.

use crate::flops;
use crate::nn::adaln::modulate;
use crate::nn::cfg::uncond_plus_scaled_diff;
use crate::nn::linear::RowLinear;
use crate::nn::norm::LayerNorm;
use anyhow::{bail, ensure, Context, Result};
use candle_core::{Device, Module, Tensor};
use candle_nn::VarBuilder;
use genbench_runtime::RandomSource;

/// Length of the diffusion process the head was trained with (`create_diffusion(diffusion_steps=1000)`).
pub const TRAIN_DIFFUSION_STEPS: usize = 1000;
/// Width of the sinusoidal timestep embedding fed to `time_embed` (`frequency_embedding_size`).
pub const TIMESTEP_FREQ_DIM: usize = 256;
/// LayerNorm epsilon of the head (`nn.LayerNorm(channels, eps=1e-6)`).
const HEAD_LN_EPS: f64 = 1e-6;

// ------------------------------------------------------------------------------------------
// Schedule
// ------------------------------------------------------------------------------------------

/// `betas_for_alpha_bar(n, cos²((t + 0.008)/1.008 · π/2), max_beta = 0.999)`: the IDDPM cosine
/// schedule, in f64 exactly as the reference evaluates it.
pub fn cosine_betas(num_steps: usize) -> Vec<f64> {
    let alpha_bar = |t: f64| ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0).cos().powi(2);
    (0..num_steps)
        .map(|i| {
            let t1 = i as f64 / num_steps as f64;
            let t2 = (i + 1) as f64 / num_steps as f64;
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999)
        })
        .collect()
}

/// Parses a respacing string as the reference accepts it: comma-separated step counts per
/// equal section of the original process (`"100"`, `"25,50"`). The `ddimN` form is not used
/// by MAR and is refused.
pub fn parse_respacing(spec: &str) -> Result<Vec<usize>> {
    if spec.starts_with("ddim") {
        bail!("respacing {spec:?}: the ddim striding is not used by MAR's sampler");
    }
    spec.split(',').map(|s| s.trim().parse::<usize>().with_context(|| format!("respacing {spec:?}: {s:?} is not a step count"))).collect()
}

/// `space_timesteps(num_timesteps, section_counts)`: which original steps are kept, ascending.
/// The index walk accumulates a float stride and rounds with Python's `round` (half to even),
/// which decides ties such as 60.5 -> 60: `f64::round_ties_even` reproduces it.
pub fn space_timesteps(num_timesteps: usize, section_counts: &[usize]) -> Result<Vec<usize>> {
    ensure!(!section_counts.is_empty(), "respacing needs at least one section");
    let size_per = num_timesteps / section_counts.len();
    let extra = num_timesteps % section_counts.len();
    let mut start_idx = 0usize;
    let mut all_steps = Vec::new();
    for (i, &section_count) in section_counts.iter().enumerate() {
        let size = size_per + usize::from(i < extra);
        if size < section_count {
            bail!("cannot divide a section of {size} diffusion steps into {section_count} sampling steps");
        }
        let frac_stride = if section_count <= 1 { 1.0 } else { (size - 1) as f64 / (section_count - 1) as f64 };
        let mut cur_idx = 0.0f64;
        for _ in 0..section_count {
            all_steps.push(start_idx + cur_idx.round_ties_even() as usize);
            cur_idx += frac_stride;
        }
        start_idx += size;
    }
    all_steps.sort_unstable();
    all_steps.dedup();
    Ok(all_steps)
}

/// The tables of a (respaced) `GaussianDiffusion`, index i = respaced step, all f64 as numpy
/// computes them. [`DiffusionSchedule::f32`] gives the value the sampler multiplies with.
#[derive(Clone, Debug)]
pub struct DiffusionSchedule {
    /// Respaced index i -> original timestep (what the network's time embedding sees).
    pub timestep_map: Vec<usize>,
    pub betas: Vec<f64>,
    pub alphas_cumprod: Vec<f64>,
    pub alphas_cumprod_prev: Vec<f64>,
    pub sqrt_recip_alphas_cumprod: Vec<f64>,
    pub sqrt_recipm1_alphas_cumprod: Vec<f64>,
    pub posterior_variance: Vec<f64>,
    /// log of the posterior variance with entry 0 replaced by entry 1 (it is 0 at i = 0).
    pub posterior_log_variance_clipped: Vec<f64>,
    pub posterior_mean_coef1: Vec<f64>,
    pub posterior_mean_coef2: Vec<f64>,
    pub log_betas: Vec<f64>,
}

impl DiffusionSchedule {
    /// `GaussianDiffusion.__init__` for the given betas.
    pub fn from_betas(betas: Vec<f64>, timestep_map: Vec<usize>) -> Result<Self> {
        let n = betas.len();
        ensure!(n >= 2, "a diffusion schedule needs at least 2 steps, got {n}");
        ensure!(timestep_map.len() == n, "timestep map has {} entries for {n} betas", timestep_map.len());
        ensure!(betas.iter().all(|&b| b > 0.0 && b <= 1.0), "betas must lie in (0, 1]");
        let mut alphas_cumprod = Vec::with_capacity(n);
        let mut acc = 1.0f64;
        for &b in &betas {
            acc *= 1.0 - b;
            alphas_cumprod.push(acc);
        }
        let alphas_cumprod_prev: Vec<f64> = std::iter::once(1.0).chain(alphas_cumprod[..n - 1].iter().copied()).collect();
        let sqrt_recip_alphas_cumprod = alphas_cumprod.iter().map(|&a| (1.0 / a).sqrt()).collect();
        let sqrt_recipm1_alphas_cumprod = alphas_cumprod.iter().map(|&a| (1.0 / a - 1.0).sqrt()).collect();
        let posterior_variance: Vec<f64> = (0..n).map(|i| betas[i] * (1.0 - alphas_cumprod_prev[i]) / (1.0 - alphas_cumprod[i])).collect();
        let posterior_log_variance_clipped =
            (0..n).map(|i| if i == 0 { posterior_variance[1].ln() } else { posterior_variance[i].ln() }).collect();
        let posterior_mean_coef1 = (0..n).map(|i| betas[i] * alphas_cumprod_prev[i].sqrt() / (1.0 - alphas_cumprod[i])).collect();
        let posterior_mean_coef2 =
            (0..n).map(|i| (1.0 - alphas_cumprod_prev[i]) * (1.0 - betas[i]).sqrt() / (1.0 - alphas_cumprod[i])).collect();
        let log_betas = betas.iter().map(|b| b.ln()).collect();
        Ok(Self {
            timestep_map,
            betas,
            alphas_cumprod,
            alphas_cumprod_prev,
            sqrt_recip_alphas_cumprod,
            sqrt_recipm1_alphas_cumprod,
            posterior_variance,
            posterior_log_variance_clipped,
            posterior_mean_coef1,
            posterior_mean_coef2,
            log_betas,
        })
    }

    /// `create_diffusion(respacing, "cosine")`: the 1000-step cosine process with only the
    /// steps of `space_timesteps` kept, each kept beta recomputed as `1 - ᾱ_i / ᾱ_prev_kept`
    /// (so the last one is not clipped to 0.999).
    pub fn cosine_respaced(num_train_steps: usize, section_counts: &[usize]) -> Result<Self> {
        let base = Self::from_betas(cosine_betas(num_train_steps), (0..num_train_steps).collect())?;
        let keep = space_timesteps(num_train_steps, section_counts)?;
        let mut last = 1.0f64;
        let mut betas = Vec::with_capacity(keep.len());
        for &i in &keep {
            let ac = base.alphas_cumprod[i];
            betas.push(1.0 - ac / last);
            last = ac;
        }
        Self::from_betas(betas, keep)
    }

    /// MAR's sampling schedule for `num_sampling_steps` steps (`create_diffusion(str(n), "cosine")`).
    pub fn mar_sampling(num_sampling_steps: usize) -> Result<Self> {
        ensure!(
            (2..=TRAIN_DIFFUSION_STEPS).contains(&num_sampling_steps),
            "num_sampling_steps must be in 2..={TRAIN_DIFFUSION_STEPS}, got {num_sampling_steps}"
        );
        Self::cosine_respaced(TRAIN_DIFFUSION_STEPS, &[num_sampling_steps])
    }

    pub fn num_steps(&self) -> usize {
        self.betas.len()
    }

    /// Rounds a table to f32, as the sampler uses it.
    pub fn f32(table: &[f64]) -> Vec<f32> {
        table.iter().map(|&v| v as f32).collect()
    }
}

// ------------------------------------------------------------------------------------------
// SimpleMLPAdaLN
// ------------------------------------------------------------------------------------------

/// Sizes of the head (`DiffLoss(target_channels, z_channels, depth, width)`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DiffusionHeadConfig {
    /// Token channels predicted (16 for KL-16 with patch size 1).
    pub target_channels: usize,
    /// Width of the per-token condition from the MAE decoder.
    pub z_channels: usize,
    /// `diffloss_w`.
    pub width: usize,
    /// `diffloss_d`: residual blocks.
    pub depth: usize,
}

impl DiffusionHeadConfig {
    /// FLOPs (2 × MACs) of one network evaluation on one row, as the project counts them
    /// (the FLOP convention of [`crate::flops`], `M = (10 d + 6)·w² + 2w·(256 + z + in + out)`): every Linear of the
    /// network, the time embedding included.
    pub fn flops_per_row(&self) -> f64 {
        let (w, d) = (self.width, self.depth);
        let (inp, out) = (self.target_channels, 2 * self.target_channels);
        let lin = |i, o| flops::linear(1, i, o);
        lin(inp, w)
            + lin(TIMESTEP_FREQ_DIM, w)
            + lin(w, w)
            + lin(self.z_channels, w)
            + d as f64 * (2.0 * lin(w, w) + lin(w, 3 * w))
            + lin(w, 2 * w)
            + lin(w, out)
    }
}

/// `TimestepEmbedder.timestep_embedding(t, 256)` in f32 as the reference computes it:
/// `freqs_k = exp(-ln(10000)·k/128)`, `args = t·freqs`, output `[cos(args) | sin(args)]`.
pub fn timestep_frequency_embedding(timesteps: &[f32], dim: usize) -> Vec<f32> {
    let half = dim / 2;
    let neg_log_period = -(10000f64.ln()) as f32;
    let freqs: Vec<f32> = (0..half).map(|k| (neg_log_period * k as f32 / half as f32).exp()).collect();
    let mut out = Vec::with_capacity(timesteps.len() * dim);
    for &t in timesteps {
        out.extend(freqs.iter().map(|&f| (t * f).cos()));
        out.extend(freqs.iter().map(|&f| (t * f).sin()));
        if dim % 2 == 1 {
            out.push(0.0);
        }
    }
    out
}

/// `ResBlock`: AdaLN-modulated two-layer SiLU MLP with a gated residual. Its
/// `adaLN_modulation.1` Linear lives in the network's fused modulation matmul.
struct AdaLnResBlock {
    in_ln: LayerNorm,
    mlp_0: RowLinear,
    mlp_2: RowLinear,
}

impl AdaLnResBlock {
    fn new(w: usize, vb: &VarBuilder) -> Result<Self> {
        Ok(Self {
            in_ln: LayerNorm::load(w, HEAD_LN_EPS, vb.pp("in_ln"))?,
            mlp_0: RowLinear::load(w, w, vb.pp("mlp.0"))?,
            mlp_2: RowLinear::load(w, w, vb.pp("mlp.2"))?,
        })
    }

    /// `modulation` = this block's `adaLN_modulation(y)`: (N, 3w) = [shift | scale | gate].
    fn forward(&self, x: &Tensor, modulation: &Tensor) -> Result<Tensor> {
        let w = x.dim(1)?;
        let (shift, scale, gate) = (modulation.narrow(1, 0, w)?, modulation.narrow(1, w, w)?, modulation.narrow(1, 2 * w, w)?);
        let h = modulate(&self.in_ln.forward(x)?, &scale, &shift)?;
        let h = self.mlp_2.forward(&self.mlp_0.forward(&h)?.silu()?)?;
        Ok((x + (gate * h)?)?)
    }
}

/// `SimpleMLPAdaLN(in=target_channels, model_channels=width, out=2·target_channels,
/// z_channels, num_res_blocks=depth)`: predicts [eps | variance interpolation v] per row.
///
/// Every `adaLN_modulation` (each block's `Linear(w, 3w)` and the final layer's `Linear(w, 2w)`)
/// reads the same `SiLU(y)`, so they run as one `(w, (3d + 2)·w)` matmul: the sampler calls
/// this network on a few rows 100 times per AR step, where one large weight streams faster
/// than seven small ones. All Linears keep a transposed copy for the same reason
/// ([`RowLinear`]).
pub struct SimpleMlpAdaLn {
    cfg: DiffusionHeadConfig,
    /// `time_embed.mlp`: Linear(256, w), SiLU, Linear(w, w).
    time_embed_0: RowLinear,
    time_embed_2: RowLinear,
    cond_embed: RowLinear,
    input_proj: RowLinear,
    res_blocks: Vec<AdaLnResBlock>,
    /// [res_blocks.0 | ... | res_blocks.{d-1} | final_layer] adaLN_modulation.1, fused.
    ada_ln_modulation: RowLinear,
    /// `final_layer.norm_final`: LayerNorm without affine parameters.
    norm_final: LayerNorm,
    final_linear: RowLinear,
    device: Device,
}

impl SimpleMlpAdaLn {
    /// `vb` points at `diffloss.net`.
    pub fn new(cfg: &DiffusionHeadConfig, vb: VarBuilder) -> Result<Self> {
        let w = cfg.width;
        let mut res_blocks = Vec::with_capacity(cfg.depth);
        let mut ada = Vec::with_capacity(cfg.depth + 1);
        for i in 0..cfg.depth {
            let bvb = vb.pp(format!("res_blocks.{i}"));
            res_blocks.push(AdaLnResBlock::new(w, &bvb)?);
            ada.push(RowLinear::load(w, 3 * w, bvb.pp("adaLN_modulation.1"))?);
        }
        let fvb = vb.pp("final_layer");
        let final_linear = RowLinear::load(w, 2 * cfg.target_channels, fvb.pp("linear"))?;
        ada.push(RowLinear::load(w, 2 * w, fvb.pp("adaLN_modulation.1"))?);
        let ada_refs: Vec<&RowLinear> = ada.iter().collect();
        Ok(Self {
            cfg: cfg.clone(),
            time_embed_0: RowLinear::load(TIMESTEP_FREQ_DIM, w, vb.pp("time_embed.mlp.0"))?,
            time_embed_2: RowLinear::load(w, w, vb.pp("time_embed.mlp.2"))?,
            cond_embed: RowLinear::load(cfg.z_channels, w, vb.pp("cond_embed"))?,
            input_proj: RowLinear::load(cfg.target_channels, w, vb.pp("input_proj"))?,
            res_blocks,
            ada_ln_modulation: RowLinear::concat(&ada_refs)?,
            norm_final: LayerNorm::no_affine(w, HEAD_LN_EPS, vb.dtype(), vb.device())?,
            final_linear,
            device: vb.device().clone(),
        })
    }

    pub fn config(&self) -> &DiffusionHeadConfig {
        &self.cfg
    }

    /// `timestep_embedding(t, 256)` for original timesteps, (N, 256) on the model's device.
    pub fn timestep_frequencies(&self, timesteps: &[f32]) -> Result<Tensor> {
        let v = timestep_frequency_embedding(timesteps, TIMESTEP_FREQ_DIM);
        Ok(Tensor::from_vec(v, (timesteps.len(), TIMESTEP_FREQ_DIM), &self.device)?)
    }

    /// `time_embed(t)`: (N, w).
    pub fn time_embed(&self, timesteps: &[f32]) -> Result<Tensor> {
        // Frequencies in f32 (as the reference), the MLP in the weights' dtype.
        let f = self.timestep_frequencies(timesteps)?.to_dtype(self.time_embed_0.dtype())?;
        Ok(self.time_embed_2.forward(&self.time_embed_0.forward(&f)?.silu()?)?)
    }

    /// `cond_embed(c)`: (N, w). Constant over the reverse loop, so the sampler computes it once.
    pub fn cond_embed(&self, c: &Tensor) -> Result<Tensor> {
        Ok(self.cond_embed.forward(&c.to_dtype(self.cond_embed.dtype())?)?)
    }

    /// The network body given `y = time_embed(t) + cond_embed(c)` ((N, w), or a (1, w) time
    /// embedding broadcast over the rows' condition embeddings).
    pub fn forward_embedded(&self, x_t: &Tensor, t_emb: &Tensor, c_emb: &Tensor) -> Result<Tensor> {
        let w = self.cfg.width;
        let y = t_emb.broadcast_add(c_emb)?;
        let modulation = self.ada_ln_modulation.forward(&y.silu()?)?;
        // x_t may be the sampler's f32 latents; the network runs in the weights' dtype.
        let mut x = self.input_proj.forward(&x_t.to_dtype(self.input_proj.dtype())?)?;
        for (i, block) in self.res_blocks.iter().enumerate() {
            x = block.forward(&x, &modulation.narrow(1, 3 * w * i, 3 * w)?)?;
        }
        // FinalLayer: (shift, scale) modulation of the non-affine LayerNorm, then the linear.
        let fin = modulation.narrow(1, 3 * w * self.res_blocks.len(), 2 * w)?;
        let x = modulate(&self.norm_final.forward(&x)?, &fin.narrow(1, w, w)?, &fin.narrow(1, 0, w)?)?;
        Ok(self.final_linear.forward(&x)?)
    }

    /// `net(x_t, t, c)` with one original timestep per row: (N, 2·target_channels).
    pub fn forward(&self, x_t: &Tensor, timesteps: &[f32], c: &Tensor) -> Result<Tensor> {
        let t_emb = self.time_embed(timesteps)?;
        self.forward_embedded(x_t, &t_emb, &self.cond_embed(c)?)
    }

    /// `forward_with_cfg` given embeddings: rows are [cond half ; uncond half]; both halves see
    /// the first half of `x_t`; eps = u + s·(c − u) is written to both halves while each half
    /// keeps its own variance channels.
    pub fn forward_with_cfg_embedded(&self, x_t: &Tensor, t_emb: &Tensor, c_emb: &Tensor, cfg_scale: f32) -> Result<Tensor> {
        let rows = x_t.dim(0)?;
        ensure!(rows % 2 == 0, "CFG needs [cond ; uncond] rows, got an odd count {rows}");
        let half = x_t.narrow(0, 0, rows / 2)?;
        let combined = Tensor::cat(&[&half, &half], 0)?;
        let out = self.forward_embedded(&combined, t_emb, c_emb)?;
        let ch = self.cfg.target_channels;
        let eps = out.narrow(1, 0, ch)?;
        let rest = out.narrow(1, ch, out.dim(1)? - ch)?;
        let cond_eps = eps.narrow(0, 0, rows / 2)?;
        let uncond_eps = eps.narrow(0, rows / 2, rows / 2)?;
        let half_eps = uncond_plus_scaled_diff(&cond_eps, &uncond_eps, cfg_scale as f64)?;
        let eps = Tensor::cat(&[&half_eps, &half_eps], 0)?;
        Ok(Tensor::cat(&[&eps, &rest], 1)?)
    }

    /// `forward_with_cfg(x, t, c, cfg_scale)` with one original timestep per row.
    pub fn forward_with_cfg(&self, x_t: &Tensor, timesteps: &[f32], c: &Tensor, cfg_scale: f32) -> Result<Tensor> {
        let t_emb = self.time_embed(timesteps)?;
        self.forward_with_cfg_embedded(x_t, &t_emb, &self.cond_embed(c)?, cfg_scale)
    }
}

// ------------------------------------------------------------------------------------------
// Reverse diffusion
// ------------------------------------------------------------------------------------------

/// Everything one reverse step computes (`p_mean_variance` + `p_sample`), for step-by-step
/// parity checks and for the loop itself.
pub struct ReverseStep {
    pub model_out: Tensor,
    pub pred_xstart: Tensor,
    pub mean: Tensor,
    pub log_variance: Tensor,
    /// x for the next step.
    pub sample: Tensor,
}

/// The head with its sampling schedule: `DiffLoss.sample`.
pub struct DiffusionHead {
    pub net: SimpleMlpAdaLn,
    schedule: DiffusionSchedule,
    // f32 copies of the coefficients the loop multiplies with.
    sqrt_recip_ac: Vec<f32>,
    sqrt_recipm1_ac: Vec<f32>,
    coef1: Vec<f32>,
    coef2: Vec<f32>,
    min_log: Vec<f32>,
    max_log: Vec<f32>,
}

impl DiffusionHead {
    pub fn new(net: SimpleMlpAdaLn, schedule: DiffusionSchedule) -> Self {
        let mut head = Self {
            net,
            schedule: schedule.clone(),
            sqrt_recip_ac: vec![],
            sqrt_recipm1_ac: vec![],
            coef1: vec![],
            coef2: vec![],
            min_log: vec![],
            max_log: vec![],
        };
        head.set_schedule(schedule);
        head
    }

    /// Switches to another sampling schedule (e.g. another number of sampling steps).
    pub fn set_schedule(&mut self, schedule: DiffusionSchedule) {
        let f = DiffusionSchedule::f32;
        self.sqrt_recip_ac = f(&schedule.sqrt_recip_alphas_cumprod);
        self.sqrt_recipm1_ac = f(&schedule.sqrt_recipm1_alphas_cumprod);
        self.coef1 = f(&schedule.posterior_mean_coef1);
        self.coef2 = f(&schedule.posterior_mean_coef2);
        self.min_log = f(&schedule.posterior_log_variance_clipped);
        self.max_log = f(&schedule.log_betas);
        self.schedule = schedule;
    }

    pub fn num_steps(&self) -> usize {
        self.schedule.num_steps()
    }

    pub fn schedule(&self) -> &DiffusionSchedule {
        &self.schedule
    }

    pub fn target_channels(&self) -> usize {
        self.net.cfg.target_channels
    }

    /// The (1, w) time embedding of respaced step i (the network sees `timestep_map[i]`).
    pub fn step_time_embedding(&self, i: usize) -> Result<Tensor> {
        self.net.time_embed(&[self.schedule.timestep_map[i] as f32])
    }

    /// One reverse step at respaced index `i` for rows `x` (N, C) with condition embeddings
    /// `c_emb` (N, w); `cfg_scale == 1.0` takes the unguided path, as `DiffLoss.sample` does.
    /// `noise` is the `randn_like(x)` draw of this step (used only for i > 0).
    pub fn p_sample(&self, x: &Tensor, i: usize, c_emb: &Tensor, cfg_scale: f32, noise: &Tensor, temperature: f32) -> Result<ReverseStep> {
        let t_emb = self.step_time_embedding(i)?;
        let model_out = if cfg_scale == 1.0 {
            self.net.forward_embedded(x, &t_emb, c_emb)?
        } else {
            self.net.forward_with_cfg_embedded(x, &t_emb, c_emb, cfg_scale)?
        };
        // In f16/bf16 the network output is half; the diffusion arithmetic stays in x's dtype
        // (f32), as under the reference's autocast.
        let model_out = model_out.to_dtype(x.dtype())?;
        let ch = self.target_channels();
        let eps = model_out.narrow(1, 0, ch)?;
        let v = model_out.narrow(1, ch, ch)?;
        // LEARNED_RANGE: v in [-1, 1] interpolates log-variance between the clipped posterior
        // variance (min) and beta (max).
        let frac = ((v + 1.0)? * 0.5)?;
        let one_minus_frac = frac.affine(-1.0, 1.0)?;
        let log_variance = (frac.affine(self.max_log[i] as f64, 0.0)? + one_minus_frac.affine(self.min_log[i] as f64, 0.0)?)?;
        // EPSILON prediction, no clipping of x0 (clip_denoised=False).
        let pred_xstart = (x.affine(self.sqrt_recip_ac[i] as f64, 0.0)? - eps.affine(self.sqrt_recipm1_ac[i] as f64, 0.0)?)?;
        let mean = (pred_xstart.affine(self.coef1[i] as f64, 0.0)? + x.affine(self.coef2[i] as f64, 0.0)?)?;
        let sample = if i > 0 {
            let sigma_noise = ((log_variance.clone() * 0.5)?.exp()? * noise)?;
            (&mean + sigma_noise.affine(temperature as f64, 0.0)?)?
        } else {
            // The reference multiplies the last step's noise by a zero mask.
            mean.clone()
        };
        Ok(ReverseStep { model_out, pred_xstart, mean, log_variance, sample })
    }

    /// `DiffLoss.sample(z, temperature, cfg)`: draws the initial noise (for half the rows,
    /// duplicated, under CFG), runs every respaced step from the last to 0 drawing one
    /// `randn_like(x)` per step (also at i = 0, where it is unused), returns x (N, C).
    /// With CFG the caller keeps the first half.
    pub fn sample(&self, z: &Tensor, temperature: f32, cfg_scale: f32, rng: &mut dyn RandomSource) -> Result<Tensor> {
        let rows = z.dim(0)?;
        let ch = self.target_channels();
        let device = z.device();
        let x0 = if cfg_scale != 1.0 {
            ensure!(rows % 2 == 0, "CFG sampling needs [cond ; uncond] rows, got {rows}");
            let noise = Tensor::from_vec(rng.normal(rows / 2 * ch)?, (rows / 2, ch), device)?;
            Tensor::cat(&[&noise, &noise], 0)?
        } else {
            Tensor::from_vec(rng.normal(rows * ch)?, (rows, ch), device)?
        };
        let c_emb = self.net.cond_embed(z)?;
        let mut x = x0;
        for i in (0..self.num_steps()).rev() {
            let noise = Tensor::from_vec(rng.normal(rows * ch)?, (rows, ch), device)?;
            x = self.p_sample(&x, i, &c_emb, cfg_scale, &noise, temperature)?.sample;
        }
        Ok(x)
    }

    /// FLOPs (project convention) of one `sample` call on `rows` rows.
    pub fn sample_flops(&self, rows: usize) -> f64 {
        rows as f64 * self.num_steps() as f64 * self.net.cfg.flops_per_row()
    }
}

/// Loads `diffloss.net` from a VarBuilder rooted at the generator and builds the head with
/// MAR's sampling schedule.
pub fn load_diffusion_head(cfg: &DiffusionHeadConfig, num_sampling_steps: usize, vb_diffloss_net: VarBuilder) -> Result<DiffusionHead> {
    let net = SimpleMlpAdaLn::new(cfg, vb_diffloss_net)?;
    Ok(DiffusionHead::new(net, DiffusionSchedule::mar_sampling(num_sampling_steps)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn respacing_matches_the_reference_maps() {
        // create_diffusion("10") as recorded in the MAR fixture and the 100-step map of
        // `space_timesteps(1000, "100")` (LTH14/mar@fe470ac `diffusion/respace.py`).
        assert_eq!(space_timesteps(1000, &[10]).unwrap(), vec![0, 111, 222, 333, 444, 555, 666, 777, 888, 999]);
        let m100 = space_timesteps(1000, &[100]).unwrap();
        assert_eq!(m100.len(), 100);
        assert_eq!(&m100[..8], &[0, 10, 20, 30, 40, 50, 61, 71]);
        assert_eq!(*m100.last().unwrap(), 999);
        assert!(space_timesteps(10, &[11]).is_err());
        // Stride 1.5: Python's round(1.5) = 2, round(4.5) = 4, round(7.5) = 8 (half to even).
        assert_eq!(space_timesteps(10, &[7]).unwrap(), vec![0, 2, 3, 4, 6, 8, 9]);
        assert_eq!(parse_respacing("25, 50").unwrap(), vec![25, 50]);
        assert!(parse_respacing("ddim25").is_err());
    }

    #[test]
    fn last_respaced_beta_is_not_clipped() {
        let s = DiffusionSchedule::mar_sampling(100).unwrap();
        let last = *s.betas.last().unwrap();
        assert!(last > 0.999 && last < 1.0, "{last}");
        assert_eq!(s.alphas_cumprod_prev[0], 1.0);
        assert_eq!(s.posterior_log_variance_clipped[0], s.posterior_variance[1].ln());
    }

    #[test]
    fn frequency_embedding_is_cos_then_sin() {
        let e = timestep_frequency_embedding(&[0.0, 3.0], 8);
        assert_eq!(&e[..8], &[1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
        assert!((e[8] - 3f32.cos()).abs() < 1e-7 && (e[12] - 3f32.sin()).abs() < 1e-7);
    }
}
