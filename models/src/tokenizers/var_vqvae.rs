//! VAR's multi-scale VQVAE (`FoundationVision/VAR: models/vqvae.py, quant.py, basic_vae.py`).
//!
//! * Encoder/Decoder: the shared conv autoencoder ([`crate::nn::conv_ae`]) with a fused `qkv`
//!   attention conv and 3x3 `quant_conv` / `post_quant_conv`.
//! * [`MultiScaleQuantizer`] (`VectorQuantizer2`): K scales `patch_nums`, one codebook `(V, Cvae)`,
//!   and the phi convs `phi(h) = (1 - r) h + r conv3x3(h)` (r = `quant_resi` = 0.5), shared over
//!   scales as `quant_resi.qresi_ls.{0..3}` and picked per scale by [`phi_index`] (numpy's float64
//!   argmin, which resolves the two exact ties of the 10-scale schedule to 1 and 3).
//!   Down-sampling is PyTorch `area`, up-sampling `bicubic` ([`crate::nn::interpolate`]).
//!
//! Published file: `vae_ch160v4096z32.pth` = [`VarVqVaeConfig::published`]; smaller configs come
//! from a reference `config.json` ([`VarVqVaeConfig::from_reference_json`]).

use crate::checkpoint::get_buffer;
use crate::nn::conv::{conv2d, Conv2d};
use crate::nn::conv_ae::{ConvAeConfig, Decoder, Encoder};
use crate::nn::interpolate::{Mode, Resize2d};
use crate::nn::vq::Codebook;
use crate::reference_config::{from_value_at, yes};
use anyhow::{bail, Context};
use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};
use serde::{Deserialize, Serialize};

/// `config.json['VQVAE']` of a reference fixture: the `VQVAE(...)` keyword arguments (defaults
/// as in `models/vqvae.py`) and the Encoder/Decoder arguments, under `ddconfig` or, in files
/// without one, `derived`.
#[derive(Deserialize)]
struct VqVaeKwargs {
    vocab_size: usize,
    z_channels: usize,
    ch: usize,
    #[serde(default)]
    using_znorm: bool,
    #[serde(default = "default_quant_conv_ks")]
    quant_conv_ks: usize,
    #[serde(default = "default_quant_resi")]
    quant_resi: f64,
    #[serde(default = "default_share_quant_resi")]
    share_quant_resi: usize,
    #[serde(default)]
    default_qresi_counts: usize,
    v_patch_nums: Vec<usize>,
    ddconfig: Option<VqVaeDdconfig>,
    derived: Option<VqVaeDdconfig>,
}

/// The `ddconfig` fields that shape the reference Encoder/Decoder.
#[derive(Deserialize)]
struct VqVaeDdconfig {
    ch_mult: Vec<usize>,
    num_res_blocks: usize,
    #[serde(default = "yes")]
    using_sa: bool,
    #[serde(default = "yes")]
    using_mid_sa: bool,
}

fn default_quant_conv_ks() -> usize {
    3
}
fn default_quant_resi() -> f64 {
    0.5
}
fn default_share_quant_resi() -> usize {
    4
}

/// Constructor arguments of the reference `VQVAE` (plus the Encoder/Decoder `ddconfig` it builds).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VarVqVaeConfig {
    pub vocab_size: usize,
    pub z_channels: usize,
    pub ch: usize,
    pub ch_mult: Vec<usize>,
    pub num_res_blocks: usize,
    pub using_sa: bool,
    pub using_mid_sa: bool,
    /// `using_znorm`: nearest code by cosine instead of L2 (False in every release).
    pub using_znorm: bool,
    pub quant_conv_ks: usize,
    /// phi mixing ratio r: `phi(h) = (1 - |r|) h + |r| conv(h)`; |r| <= 1e-6 means no phi.
    pub quant_resi: f64,
    /// 0 = one phi per scale, 1 = one shared phi, n >= 2 = n phis picked by position.
    pub share_quant_resi: usize,
    /// Number of phis when `share_quant_resi == 0` (0 = one per scale).
    pub default_qresi_counts: usize,
    pub patch_nums: Vec<usize>,
}

impl VarVqVaeConfig {
    /// `vae_ch160v4096z32.pth` with the 256-px schedule (1,2,3,4,5,6,8,10,13,16).
    pub fn published() -> Self {
        Self::published_with_patch_nums(&[1, 2, 3, 4, 5, 6, 8, 10, 13, 16])
    }

    /// The published VAE driven at another schedule (512 px: 1,2,3,4,6,9,13,18,24,32).
    pub fn published_with_patch_nums(patch_nums: &[usize]) -> Self {
        Self {
            vocab_size: 4096,
            z_channels: 32,
            ch: 160,
            ch_mult: vec![1, 1, 2, 2, 4],
            num_res_blocks: 2,
            using_sa: true,
            using_mid_sa: true,
            using_znorm: false,
            quant_conv_ks: 3,
            quant_resi: 0.5,
            share_quant_resi: 4,
            default_qresi_counts: 0,
            patch_nums: patch_nums.to_vec(),
        }
    }

    /// Reads `config.json['VQVAE']` of a reference fixture: the `VQVAE` kwargs and its
    /// `ddconfig` (or `derived`) Encoder/Decoder arguments.
    pub fn from_reference_json(vqvae: &serde_json::Value) -> anyhow::Result<Self> {
        let kw: VqVaeKwargs = from_value_at(vqvae, "VQVAE")?;
        let dd = kw.ddconfig.or(kw.derived).context("config `VQVAE` has neither `ddconfig` nor `derived`")?;
        Ok(Self {
            vocab_size: kw.vocab_size,
            z_channels: kw.z_channels,
            ch: kw.ch,
            ch_mult: dd.ch_mult,
            num_res_blocks: dd.num_res_blocks,
            using_sa: dd.using_sa,
            using_mid_sa: dd.using_mid_sa,
            using_znorm: kw.using_znorm,
            quant_conv_ks: kw.quant_conv_ks,
            quant_resi: kw.quant_resi,
            share_quant_resi: kw.share_quant_resi,
            default_qresi_counts: kw.default_qresi_counts,
            patch_nums: kw.v_patch_nums,
        })
    }

    pub fn conv_ae(&self) -> ConvAeConfig {
        ConvAeConfig::var_vqvae(self.ch, &self.ch_mult, self.num_res_blocks, self.z_channels, self.using_sa, self.using_mid_sa)
    }

    /// Side of the latent map (= the last patch number).
    pub fn latent_hw(&self) -> usize {
        *self.patch_nums.last().unwrap_or(&0)
    }

    /// Image side in pixels.
    pub fn image_size(&self) -> usize {
        self.latent_hw() * self.conv_ae().downsample_factor()
    }

    /// Number of phi convs stored in the checkpoint.
    pub fn num_phis(&self) -> usize {
        if self.quant_resi.abs() <= 1e-6 {
            return 0;
        }
        match self.share_quant_resi {
            0 => {
                if self.default_qresi_counts > 0 {
                    self.default_qresi_counts
                } else {
                    self.patch_nums.len()
                }
            }
            n => n,
        }
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if self.patch_nums.len() < 2 {
            bail!("VQVAE patch_nums {:?}: need at least two scales", self.patch_nums);
        }
        if self.patch_nums.windows(2).any(|w| w[0] >= w[1]) {
            bail!("VQVAE patch_nums {:?} must increase strictly", self.patch_nums);
        }
        if self.ch_mult.is_empty() || !self.ch.is_multiple_of(32) {
            bail!("VQVAE ch {} / ch_mult {:?}: GroupNorm(32) needs ch divisible by 32 and at least one level", self.ch, self.ch_mult);
        }
        Ok(())
    }
}

/// Which phi conv scale `si` of `num_scales` uses (`quant.py: Phi*.__getitem__(si / (K-1))`):
/// `argmin_j |ticks_j - si/(K-1)|` over numpy `linspace` ticks, float64, first minimum wins.
pub fn phi_index(si: usize, num_scales: usize, num_phis: usize, share_quant_resi: usize) -> usize {
    if share_quant_resi == 1 || num_phis <= 1 {
        return 0;
    }
    let k = num_phis as f64;
    // ticks = linspace(1/3/K, 1-1/3/K, K) if K == 4 else linspace(1/2/K, 1-1/2/K, K)
    let (start, stop) = if num_phis == 4 { (1.0 / 3.0 / k, 1.0 - 1.0 / 3.0 / k) } else { (1.0 / 2.0 / k, 1.0 - 1.0 / 2.0 / k) };
    let step = (stop - start) / (k - 1.0);
    let ticks: Vec<f64> = (0..num_phis).map(|i| if i + 1 == num_phis { stop } else { i as f64 * step + start }).collect();
    let at = si as f64 / (num_scales - 1) as f64;
    let mut best = 0;
    for (j, t) in ticks.iter().enumerate() {
        if (t - at).abs() < (ticks[best] - at).abs() {
            best = j;
        }
    }
    best
}

/// `Phi`: `(1 - r) h + r conv3x3(h)`.
#[derive(Clone, Debug)]
pub struct Phi {
    conv: Conv2d,
    ratio: f64,
}

impl Phi {
    pub fn forward(&self, h: &Tensor) -> Result<Tensor> {
        (h * (1.0 - self.ratio))? + (self.conv.forward(h)? * self.ratio)?
    }
}

/// Everything the quantiser computes for one scale (for parity tests and debugging).
#[derive(Clone, Debug)]
pub struct ScaleTrace {
    /// `area(f_rest, pn)` (f_rest itself at the last scale), `(B, C, pn, pn)`.
    pub z: Tensor,
    /// `||z||^2 + ||e||^2 - 2 z.e`, `(B*pn*pn, V)`.
    pub dist: Tensor,
    /// Chosen codes `(B, pn*pn)` u32.
    pub idx: Tensor,
    pub h_emb: Tensor,
    pub h_up: Tensor,
    pub h_phi: Tensor,
    pub f_rest: Tensor,
    pub f_hat: Tensor,
}

/// The multi-scale residual quantiser `VectorQuantizer2`.
#[derive(Clone, Debug)]
pub struct MultiScaleQuantizer {
    codebook: Codebook,
    using_znorm: bool,
    phis: Vec<Phi>,
    /// phi conv used at each scale (None = identity when quant_resi is 0).
    phi_of_scale: Vec<Option<usize>>,
    patch_nums: Vec<usize>,
    z_channels: usize,
    /// bicubic pn -> latent side, per scale.
    up: Vec<Resize2d>,
    /// area latent side -> pn, per scale.
    down: Vec<Resize2d>,
}

impl MultiScaleQuantizer {
    /// `vb` points at `quantize`.
    pub fn load(cfg: &VarVqVaeConfig, vb: VarBuilder) -> Result<Self> {
        let device = vb.device().clone();
        let dtype = vb.dtype();
        // Training statistics buffer: requested so strict loading accounts for it; unused.
        get_buffer(&vb, (cfg.patch_nums.len(), cfg.vocab_size), "ema_vocab_hit_SV", DType::F32)?;
        let codebook = Codebook::load(vb.pp("embedding"), cfg.vocab_size, cfg.z_channels, false)?;
        let n_phis = cfg.num_phis();
        let ratio = cfg.quant_resi.abs();
        let conv_cfg = Conv2dConfig { padding: 1, ..Default::default() };
        let qvb = vb.pp("quant_resi");
        let mut phis = vec![];
        for j in 0..n_phis {
            let pvb = match cfg.share_quant_resi {
                0 => qvb.pp(j),
                1 => qvb.pp("qresi"),
                _ => qvb.pp("qresi_ls").pp(j),
            };
            phis.push(Phi { conv: conv2d(cfg.z_channels, cfg.z_channels, 3, conv_cfg, pvb)?, ratio });
        }
        let k = cfg.patch_nums.len();
        let phi_of_scale = (0..k).map(|si| if n_phis == 0 { None } else { Some(phi_index(si, k, n_phis, cfg.share_quant_resi)) }).collect();
        let hw = cfg.latent_hw();
        let mut up = vec![];
        let mut down = vec![];
        for &pn in &cfg.patch_nums {
            up.push(Resize2d::new(Mode::Bicubic, (pn, pn), (hw, hw), dtype, &device)?);
            down.push(Resize2d::new(Mode::Area, (hw, hw), (pn, pn), dtype, &device)?);
        }
        Ok(Self {
            codebook,
            using_znorm: cfg.using_znorm,
            phis,
            phi_of_scale,
            patch_nums: cfg.patch_nums.clone(),
            z_channels: cfg.z_channels,
            up,
            down,
        })
    }

    pub fn codebook(&self) -> &Codebook {
        &self.codebook
    }
    pub fn patch_nums(&self) -> &[usize] {
        &self.patch_nums
    }
    /// phi conv index used at each scale.
    pub fn phi_schedule(&self) -> Vec<Option<usize>> {
        self.phi_of_scale.clone()
    }

    /// `quant_resi[si/(K-1)](h)`.
    pub fn phi(&self, si: usize, h: &Tensor) -> Result<Tensor> {
        match self.phi_of_scale[si] {
            Some(j) => self.phis[j].forward(h),
            None => Ok(h.clone()),
        }
    }

    /// Bicubic up-sampling of scale `si`'s map to the latent size.
    pub fn upsample(&self, si: usize, h: &Tensor) -> Result<Tensor> {
        self.up[si].forward(h)
    }

    /// Area down-sampling of a latent-size map to scale `si`.
    pub fn downsample(&self, si: usize, f: &Tensor) -> Result<Tensor> {
        self.down[si].forward(f)
    }

    fn nearest(&self, z_nc: &Tensor) -> Result<(Tensor, Tensor)> {
        if self.using_znorm {
            // argmax of cosine similarity = argmin of squared distance between unit vectors.
            let cb = Codebook::new(self.codebook.embedding().clone(), true)?;
            let d = cb.distances(z_nc)?;
            Ok((d.argmin(1)?, d))
        } else {
            let d = self.codebook.distances(z_nc)?;
            Ok((d.argmin(1)?, d))
        }
    }

    /// `f_to_idxBl_or_fhat` with every intermediate: quantises `f (B, C, hw, hw)` scale by scale.
    pub fn quantize_traced(&self, f: &Tensor) -> Result<Vec<ScaleTrace>> {
        let (b, c, _, _) = f.dims4()?;
        let k = self.patch_nums.len();
        let mut f_rest = f.clone();
        let mut f_hat = f.zeros_like()?;
        let mut out = Vec::with_capacity(k);
        for (si, &pn) in self.patch_nums.iter().enumerate() {
            let last = si + 1 == k;
            let z = if last { f_rest.clone() } else { self.downsample(si, &f_rest)? };
            let z_nc = z.permute((0, 2, 3, 1))?.reshape((b * pn * pn, c))?;
            let (idx_n, dist) = self.nearest(&z_nc)?;
            let idx = idx_n.reshape((b, pn * pn))?;
            let h_emb = self.codebook.lookup_map(&idx, pn, pn)?;
            let h_up = if last { h_emb.clone() } else { self.upsample(si, &h_emb)? };
            let h_phi = self.phi(si, &h_up)?;
            f_hat = (f_hat + &h_phi)?;
            f_rest = (f_rest - &h_phi)?;
            out.push(ScaleTrace { z, dist, idx, h_emb, h_up, h_phi, f_rest: f_rest.clone(), f_hat: f_hat.clone() });
        }
        Ok(out)
    }

    /// Code indices per scale `(B, pn^2)` for a latent `f`.
    pub fn f_to_idx(&self, f: &Tensor) -> Result<Vec<Tensor>> {
        Ok(self.quantize_traced(f)?.into_iter().map(|t| t.idx).collect())
    }

    /// `embed_to_fhat(all_to_max_scale=True)`: the running f_hat after each scale for given
    /// per-scale indices.
    pub fn idx_to_fhats(&self, idx: &[Tensor]) -> Result<Vec<Tensor>> {
        let k = self.patch_nums.len();
        if idx.len() != k {
            candle_core::bail!("expected indices for {k} scales, got {}", idx.len());
        }
        let mut f_hat: Option<Tensor> = None;
        let mut out = Vec::with_capacity(k);
        for (si, &pn) in self.patch_nums.iter().enumerate() {
            let h = self.codebook.lookup_map(&idx[si], pn, pn)?;
            let h = if si + 1 < k { self.upsample(si, &h)? } else { h };
            let h = self.phi(si, &h)?;
            let next = match f_hat {
                Some(f) => (f + h)?,
                None => h,
            };
            out.push(next.clone());
            f_hat = Some(next);
        }
        Ok(out)
    }

    /// `idxBl_to_var_input`: teacher-forcing inputs of scales 1..K-1, `(B, L - pn0^2, C)`.
    pub fn idx_to_var_input(&self, idx: &[Tensor]) -> Result<Tensor> {
        let fhats = self.idx_to_fhats(idx)?;
        let k = self.patch_nums.len();
        let mut parts = vec![];
        for (si, fhat) in fhats.iter().enumerate().take(k - 1) {
            let next = self.downsample(si + 1, fhat)?;
            let (b, c, h, w) = next.dims4()?;
            parts.push(next.reshape((b, c, h * w))?.transpose(1, 2)?);
        }
        Tensor::cat(&parts, 1)
    }

    /// `get_next_autoregressive_input`: adds scale `si`'s contribution `phi(up(h))` to `f_hat`
    /// and returns (new f_hat, the map for the next scale `area(f_hat, pn_{si+1})`, or f_hat at
    /// the last scale).
    pub fn next_autoregressive_input(&self, si: usize, f_hat: &Tensor, h: &Tensor) -> Result<(Tensor, Tensor)> {
        let k = self.patch_nums.len();
        if si + 1 < k {
            let f_hat = (f_hat + self.phi(si, &self.upsample(si, h)?)?)?;
            let next = self.downsample(si + 1, &f_hat)?;
            Ok((f_hat, next))
        } else {
            let f_hat = (f_hat + self.phi(si, h)?)?;
            Ok((f_hat.clone(), f_hat))
        }
    }

    pub fn z_channels(&self) -> usize {
        self.z_channels
    }
}

/// The VQVAE: encoder, quant_conv, quantiser, post_quant_conv, decoder.
#[derive(Clone, Debug)]
pub struct VarVqVae {
    cfg: VarVqVaeConfig,
    pub encoder: Encoder,
    pub decoder: Decoder,
    pub quant_conv: Conv2d,
    pub post_quant_conv: Conv2d,
    pub quantize: MultiScaleQuantizer,
}

impl VarVqVae {
    /// `vb` at the checkpoint root (`encoder.*`, `decoder.*`, `quantize.*`, `quant_conv.*`, ...).
    pub fn load(cfg: &VarVqVaeConfig, vb: VarBuilder) -> anyhow::Result<Self> {
        cfg.validate()?;
        let ae = cfg.conv_ae();
        let pad = cfg.quant_conv_ks / 2;
        let conv_cfg = Conv2dConfig { padding: pad, ..Default::default() };
        let encoder = Encoder::load(&ae, vb.pp("encoder"))?;
        let decoder = Decoder::load(&ae, vb.pp("decoder"))?;
        let quantize = MultiScaleQuantizer::load(cfg, vb.pp("quantize"))?;
        let quant_conv = conv2d(cfg.z_channels, cfg.z_channels, cfg.quant_conv_ks, conv_cfg, vb.pp("quant_conv"))?;
        let post_quant_conv = conv2d(cfg.z_channels, cfg.z_channels, cfg.quant_conv_ks, conv_cfg, vb.pp("post_quant_conv"))?;
        Ok(Self { cfg: cfg.clone(), encoder, decoder, quant_conv, post_quant_conv, quantize })
    }

    pub fn config(&self) -> &VarVqVaeConfig {
        &self.cfg
    }

    /// `quant_conv(encoder(img))`, img in [-1, 1].
    pub fn encode(&self, img: &Tensor) -> Result<Tensor> {
        self.quant_conv.forward(&self.encoder.forward(img)?)
    }

    /// `img_to_idxBl`.
    pub fn img_to_idx(&self, img: &Tensor) -> Result<Vec<Tensor>> {
        self.quantize.f_to_idx(&self.encode(img)?)
    }

    /// `decoder(post_quant_conv(f_hat))` before the clamp.
    pub fn decode_unclamped(&self, f_hat: &Tensor) -> Result<Tensor> {
        self.decoder.forward(&self.post_quant_conv.forward(f_hat)?)
    }

    /// `fhat_to_img`: decoded image clamped to [-1, 1].
    pub fn fhat_to_img(&self, f_hat: &Tensor) -> Result<Tensor> {
        self.decode_unclamped(f_hat)?.clamp(-1f32, 1f32)
    }

    /// `idxBl_to_img(same_shape=True, last_one=True)`.
    pub fn idx_to_img(&self, idx: &[Tensor]) -> Result<Tensor> {
        let fhats = self.quantize.idx_to_fhats(idx)?;
        self.fhat_to_img(fhats.last().expect("at least one scale"))
    }

    /// FLOPs of one decode (post_quant_conv + decoder) per image.
    pub fn decode_flops(&self) -> f64 {
        let hw = self.cfg.latent_hw();
        crate::flops::conv2d(hw, hw, self.cfg.z_channels, self.cfg.z_channels, self.cfg.quant_conv_ks)
            + Decoder::flops(&self.cfg.conv_ae(), (hw, hw))
    }

    pub fn device(&self) -> &Device {
        self.quantize.codebook().embedding().device()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phi_index_matches_published_table() {
        // shared/reference/tables/var_phi_index.txt: si 2 and 7 are exact ties resolved to 1 and 3.
        let got: Vec<usize> = (0..10).map(|si| phi_index(si, 10, 4, 4)).collect();
        assert_eq!(got, vec![0, 0, 1, 1, 1, 2, 2, 3, 3, 3]);
        // the fixture's 4-scale schedule
        let got: Vec<usize> = (0..4).map(|si| phi_index(si, 4, 4, 4)).collect();
        assert_eq!(got, vec![0, 1, 2, 3]);
        assert_eq!(phi_index(5, 10, 1, 1), 0);
    }

    #[test]
    fn published_geometry() {
        let c = VarVqVaeConfig::published();
        assert_eq!(c.image_size(), 256);
        assert_eq!(c.num_phis(), 4);
        assert_eq!(VarVqVaeConfig::published_with_patch_nums(&[1, 2, 3, 4, 6, 9, 13, 18, 24, 32]).image_size(), 512);
    }
}
