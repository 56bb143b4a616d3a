//! The taming / LDM convolutional autoencoder that the tokenizers share: `Encoder` / `Decoder`
//! of CompVis/taming-transformers@3ba01b2 taming/modules/diffusionmodules/model.py, and the
//! variants FoundationVision/VAR@78b9539 models/basic_vae.py, LTH14/mar@fe470ac models/vae.py
//! (from LDM's KL-VAE) and FoundationVision/LlamaGen@ce98ec4 tokenizer/tokenizer_image/vq_model.py
//! (modified from taming) define.
//!
//! Blocks: [`ResnetBlock`], [`AttnBlock`] (single-head spatial attention; fused `qkv` conv as in
//! VAR, or separate `q`/`k`/`v` as in taming/LDM/LlamaGen), [`Downsample`] (pad right/bottom, 3x3
//! stride 2), [`Upsample`] (nearest x2, 3x3), [`swish`]. [`Encoder`] and [`Decoder`] assemble them
//! from a [`ConvAeConfig`], whose [`ModuleNaming`] picks the checkpoint layout:
//! * [`ModuleNaming::Taming`] (taming, LDM KL-16 in MAR, VAR): `down.{i}.block.{j}`,
//!   `down.{i}.attn.{j}`, `down.{i}.downsample`, `mid.{block_1,attn_1,block_2}`; decoder
//!   `up.{i}` indexed by resolution level (`up.{n-1}` runs first).
//! * [`ModuleNaming::LlamaGen`]: `conv_blocks.{i}.res.{j}`, `conv_blocks.{i}.attn.{j}`,
//!   `mid.{0,1,2}`; decoder `conv_blocks.{e}` in execution order (`conv_blocks.0` = lowest
//!   resolution).
//!
//! Published layouts have constructors ([`ConvAeConfig::var_vqvae`], [`ConvAeConfig::taming_f16`],
//! [`ConvAeConfig::llamagen_vq16`], [`ConvAeConfig::ldm_kl16`]); `models/tests/conv_ae_keys.rs`
//! checks each against the published key lists. The MAGE/MaskGIT VQGAN (no attention, bias-free
//! convs, average-pool downsampling, shortcut on h) is a different network: its ResnetBlock is
//! [`ResnetBlock::load_mage`], assembled in `tokenizers/mage_vqgan.rs`.

use crate::flops;
use crate::nn::elementwise::{add, upsample_nearest2x};
use crate::nn::norm::GroupNorm;
use candle_core::{Module, Result, Tensor};
// Convolutions through `nn::conv` (candle's interface, a faster CPU kernel).
use crate::nn::conv::{conv2d, conv2d_no_bias, Conv2d};
use candle_nn::{Conv2dConfig, VarBuilder};

/// `x * sigmoid(x)`.
pub fn swish(x: &Tensor) -> Result<Tensor> {
    x.silu()
}

fn conv(vb: VarBuilder, cin: usize, cout: usize, k: usize, stride: usize, padding: usize) -> Result<Conv2d> {
    conv2d(cin, cout, k, Conv2dConfig { padding, stride, ..Default::default() }, vb)
}

/// How an AttnBlock stores its q/k/v projections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttnQkv {
    /// One 1x1 conv `qkv` with 3C outputs split q|k|v (VAR).
    Fused,
    /// Three 1x1 convs `q`, `k`, `v` (taming, LDM, LlamaGen).
    Separate,
}

/// Checkpoint module layout of the encoder / decoder stacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModuleNaming {
    Taming,
    LlamaGen,
}

/// GroupNorm parameters of every `Normalize` in the network.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NormSpec {
    pub groups: usize,
    pub eps: f64,
}

impl Default for NormSpec {
    fn default() -> Self {
        Self { groups: 32, eps: 1e-6 }
    }
}

/// `h = conv1(swish(norm1(x))); h = conv2(swish(norm2(h))); shortcut(x) + h` (dropout is 0 at
/// inference); `nin_shortcut` (1x1) exists only when the channel count changes.
#[derive(Clone, Debug)]
pub struct ResnetBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    norm2: GroupNorm,
    conv2: Conv2d,
    nin_shortcut: Option<Conv2d>,
    /// MAGE / MaskGIT-JAX variant: the shortcut conv is applied to the residual branch `h`
    /// (`nin_shortcut(h) + h`), not to `x`.
    shortcut_on_branch: bool,
}

impl ResnetBlock {
    pub fn load(vb: VarBuilder, cin: usize, cout: usize, norm: NormSpec) -> Result<Self> {
        Ok(Self {
            norm1: GroupNorm::load(norm.groups, cin, norm.eps, vb.pp("norm1"))?,
            conv1: conv(vb.pp("conv1"), cin, cout, 3, 1, 1)?,
            norm2: GroupNorm::load(norm.groups, cout, norm.eps, vb.pp("norm2"))?,
            conv2: conv(vb.pp("conv2"), cout, cout, 3, 1, 1)?,
            nin_shortcut: if cin != cout { Some(conv(vb.pp("nin_shortcut"), cin, cout, 1, 1, 0)?) } else { None },
            shortcut_on_branch: false,
        })
    }

    /// The MAGE port of the MaskGIT-JAX ResnetBlock (the AutoNAT/MAGE tokenizer,
    /// `taming/modules/diffusionmodules/model.py` in LeapLabTHU/ImprovedNAT): `conv1`, `conv2`
    /// without bias; when `cin != cout` a bias-free 1x1 `nin_shortcut` **cout -> cout applied to
    /// the branch output h**: `out = nin_shortcut(h) + h` (x is then not used at all, faithful to
    /// the JAX code); otherwise `x + h`.
    pub fn load_mage(vb: VarBuilder, cin: usize, cout: usize, norm: NormSpec) -> Result<Self> {
        let conv_nb = |vb: VarBuilder, cin: usize, cout: usize, k: usize, padding: usize| {
            conv2d_no_bias(cin, cout, k, Conv2dConfig { padding, ..Default::default() }, vb)
        };
        Ok(Self {
            norm1: GroupNorm::load(norm.groups, cin, norm.eps, vb.pp("norm1"))?,
            conv1: conv_nb(vb.pp("conv1"), cin, cout, 3, 1)?,
            norm2: GroupNorm::load(norm.groups, cout, norm.eps, vb.pp("norm2"))?,
            conv2: conv_nb(vb.pp("conv2"), cout, cout, 3, 1)?,
            nin_shortcut: if cin != cout { Some(conv_nb(vb.pp("nin_shortcut"), cout, cout, 1, 0)?) } else { None },
            shortcut_on_branch: true,
        })
    }

    /// FLOPs of [`load_mage`](Self::load_mage)'s block at `hw` (its shortcut is cout -> cout).
    pub fn flops_mage(cin: usize, cout: usize, (h, w): (usize, usize)) -> f64 {
        let mut f = flops::conv2d(h, w, cin, cout, 3) + flops::conv2d(h, w, cout, cout, 3);
        if cin != cout {
            f += flops::conv2d(h, w, cout, cout, 1);
        }
        f
    }

    /// FLOPs at spatial size `hw` (convs only).
    pub fn flops(cin: usize, cout: usize, (h, w): (usize, usize)) -> f64 {
        let mut f = flops::conv2d(h, w, cin, cout, 3) + flops::conv2d(h, w, cout, cout, 3);
        if cin != cout {
            f += flops::conv2d(h, w, cin, cout, 1);
        }
        f
    }
}

impl Module for ResnetBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.conv1.forward(&self.norm1.forward_swish(x)?)?;
        let h = self.conv2.forward(&self.norm2.forward_swish(&h)?)?;
        match &self.nin_shortcut {
            Some(s) if self.shortcut_on_branch => add(&s.forward(&h)?, &h),
            Some(s) => add(&s.forward(x)?, &h),
            None => add(x, &h),
        }
    }
}

#[derive(Clone, Debug)]
enum QkvConvs {
    Fused(Conv2d),
    Separate { q: Conv2d, k: Conv2d, v: Conv2d },
}

/// Single-head spatial self-attention: `x + proj_out(v softmax(q^T k / sqrt(C))^T)` over the
/// `H*W` positions.
#[derive(Clone, Debug)]
pub struct AttnBlock {
    norm: GroupNorm,
    qkv: QkvConvs,
    proj_out: Conv2d,
    channels: usize,
}

impl AttnBlock {
    pub fn load(vb: VarBuilder, c: usize, qkv: AttnQkv, norm: NormSpec) -> Result<Self> {
        let qkv = match qkv {
            AttnQkv::Fused => QkvConvs::Fused(conv(vb.pp("qkv"), c, 3 * c, 1, 1, 0)?),
            AttnQkv::Separate => QkvConvs::Separate {
                q: conv(vb.pp("q"), c, c, 1, 1, 0)?,
                k: conv(vb.pp("k"), c, c, 1, 1, 0)?,
                v: conv(vb.pp("v"), c, c, 1, 1, 0)?,
            },
        };
        Ok(Self {
            norm: GroupNorm::load(norm.groups, c, norm.eps, vb.pp("norm"))?,
            qkv,
            proj_out: conv(vb.pp("proj_out"), c, c, 1, 1, 0)?,
            channels: c,
        })
    }

    /// FLOPs at `hw`: four 1x1 convs plus scores and weighted sum over `n = h*w` positions.
    pub fn flops(c: usize, (h, w): (usize, usize)) -> f64 {
        let n = h * w;
        4.0 * flops::conv2d(h, w, c, c, 1) + flops::attention_core(n, n, c)
    }
}

impl Module for AttnBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let n = self.norm.forward(x)?;
        let (q, k, v) = match &self.qkv {
            QkvConvs::Fused(qkv) => {
                let y = qkv.forward(&n)?;
                (y.narrow(1, 0, c)?, y.narrow(1, c, c)?, y.narrow(1, 2 * c, c)?)
            }
            QkvConvs::Separate { q, k, v } => (q.forward(&n)?, k.forward(&n)?, v.forward(&n)?),
        };
        let q = q.reshape((b, c, h * w))?.transpose(1, 2)?.contiguous()?; // (B, HW, C)
        let k = k.reshape((b, c, h * w))?.contiguous()?; // (B, C, HW)
        let v = v.reshape((b, c, h * w))?.contiguous()?; // (B, C, HW)
        let scores = (q.matmul(&k)? * (self.channels as f64).powf(-0.5))?; // (B, HWq, HWk)
        let weights = candle_nn::ops::softmax_last_dim(&scores)?;
        let out = v.matmul(&weights.t()?)?.reshape((b, c, h, w))?; // (B, C, HWq)
        x + self.proj_out.forward(&out)?
    }
}

/// `conv3x3_stride2(pad(x, right=1, bottom=1))`.
#[derive(Clone, Debug)]
pub struct Downsample {
    conv: Conv2d,
}

impl Downsample {
    pub fn load(vb: VarBuilder, c: usize) -> Result<Self> {
        Ok(Self { conv: conv(vb.pp("conv"), c, c, 3, 2, 0)? })
    }
}

impl Module for Downsample {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.conv.forward(&x.pad_with_zeros(3, 0, 1)?.pad_with_zeros(2, 0, 1)?)
    }
}

/// `conv3x3(nearest_upsample_x2(x))`.
#[derive(Clone, Debug)]
pub struct Upsample {
    conv: Conv2d,
}

impl Upsample {
    pub fn load(vb: VarBuilder, c: usize) -> Result<Self> {
        Ok(Self { conv: conv(vb.pp("conv"), c, c, 3, 1, 1)? })
    }
}

impl Module for Upsample {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.conv.forward(&upsample_nearest2x(x)?)
    }
}

/// Everything that fixes the shapes and names of an encoder/decoder pair.
#[derive(Clone, Debug, PartialEq)]
pub struct ConvAeConfig {
    /// Image channels (input of the encoder, output of the decoder).
    pub image_channels: usize,
    pub ch: usize,
    /// Channel multiplier per resolution level, level 0 = full resolution.
    pub ch_mult: Vec<usize>,
    /// ResnetBlocks per encoder level.
    pub encoder_res_blocks: usize,
    /// ResnetBlocks per decoder level (taming/LDM/VAR/LlamaGen: `num_res_blocks + 1`).
    pub decoder_res_blocks: usize,
    /// Latent channels (decoder input).
    pub z_channels: usize,
    /// Encoder output is `2 * z_channels` (mean and log-variance of a KL autoencoder).
    pub double_z: bool,
    /// Per level: an AttnBlock after each ResnetBlock (encoder).
    pub encoder_attn: Vec<bool>,
    /// Per level (resolution index, not execution order): AttnBlocks in the decoder.
    pub decoder_attn: Vec<bool>,
    /// Attention between the two middle ResnetBlocks.
    pub mid_attn: bool,
    pub attn_qkv: AttnQkv,
    pub naming: ModuleNaming,
    pub norm: NormSpec,
}

impl ConvAeConfig {
    /// Attention after every ResnetBlock of the lowest-resolution level only (VAR's `using_sa`;
    /// taming's `attn_resolutions=[16]` at 256 px is the same level).
    pub fn lowest_level_only(levels: usize, on: bool) -> Vec<bool> {
        (0..levels).map(|i| on && i + 1 == levels).collect()
    }

    /// VAR's VQVAE Encoder/Decoder (`models/basic_vae.py`); the published file is
    /// `var_vqvae(160, &[1, 1, 2, 2, 4], 2, 32, true, true)`.
    pub fn var_vqvae(ch: usize, ch_mult: &[usize], num_res_blocks: usize, z_channels: usize, using_sa: bool, using_mid_sa: bool) -> Self {
        Self {
            image_channels: 3,
            ch,
            ch_mult: ch_mult.to_vec(),
            encoder_res_blocks: num_res_blocks,
            decoder_res_blocks: num_res_blocks + 1,
            z_channels,
            double_z: false,
            encoder_attn: Self::lowest_level_only(ch_mult.len(), using_sa),
            decoder_attn: Self::lowest_level_only(ch_mult.len(), using_sa),
            mid_attn: using_mid_sa,
            attn_qkv: AttnQkv::Fused,
            naming: ModuleNaming::Taming,
            norm: NormSpec::default(),
        }
    }

    /// taming-transformers VQGAN f16 (`configs/imagenet_vqgan.yaml`, both codebook sizes).
    pub fn taming_f16() -> Self {
        Self { attn_qkv: AttnQkv::Separate, ..Self::var_vqvae(128, &[1, 1, 2, 2, 4], 2, 256, true, true) }
    }

    /// LlamaGen VQ-16 (`tokenizer/tokenizer_image/vq_model.py`, `z_channels 256`).
    pub fn llamagen_vq16() -> Self {
        Self { naming: ModuleNaming::LlamaGen, ..Self::taming_f16() }
    }

    /// The LDM KL-16 autoencoder MAR uses (`embed_dim 16`, `double_z`): attention in the encoder's
    /// lowest level and both middles, none in the decoder levels.
    pub fn ldm_kl16() -> Self {
        Self { z_channels: 16, double_z: true, decoder_attn: vec![false; 5], ..Self::taming_f16() }
    }

    pub fn levels(&self) -> usize {
        self.ch_mult.len()
    }
    /// Output channels of level `i`.
    pub fn level_channels(&self, i: usize) -> usize {
        self.ch * self.ch_mult[i]
    }
    /// Spatial down-sampling factor `2^(levels-1)`.
    pub fn downsample_factor(&self) -> usize {
        1 << (self.levels() - 1)
    }
    fn check(&self) -> Result<()> {
        let n = self.levels();
        if n == 0 || self.encoder_attn.len() != n || self.decoder_attn.len() != n {
            candle_core::bail!(
                "conv autoencoder config: {} levels but {} / {} attention flags",
                n,
                self.encoder_attn.len(),
                self.decoder_attn.len()
            );
        }
        Ok(())
    }

    fn encoder_level_prefix<'a>(&self, vb: &VarBuilder<'a>, i: usize) -> VarBuilder<'a> {
        match self.naming {
            ModuleNaming::Taming => vb.pp("down").pp(i),
            ModuleNaming::LlamaGen => vb.pp("conv_blocks").pp(i),
        }
    }
    fn decoder_level_prefix<'a>(&self, vb: &VarBuilder<'a>, i: usize) -> VarBuilder<'a> {
        match self.naming {
            ModuleNaming::Taming => vb.pp("up").pp(i),
            ModuleNaming::LlamaGen => vb.pp("conv_blocks").pp(self.levels() - 1 - i),
        }
    }
    fn res_name(&self) -> &'static str {
        match self.naming {
            ModuleNaming::Taming => "block",
            ModuleNaming::LlamaGen => "res",
        }
    }
    fn mid_names(&self) -> [&'static str; 3] {
        match self.naming {
            ModuleNaming::Taming => ["block_1", "attn_1", "block_2"],
            ModuleNaming::LlamaGen => ["0", "1", "2"],
        }
    }
}

/// ResnetBlocks of one level, each optionally followed by an AttnBlock.
#[derive(Clone, Debug)]
struct Level {
    blocks: Vec<ResnetBlock>,
    attns: Vec<AttnBlock>,
}

impl Level {
    fn forward(&self, mut h: Tensor) -> Result<Tensor> {
        for (j, block) in self.blocks.iter().enumerate() {
            h = block.forward(&h)?;
            if let Some(attn) = self.attns.get(j) {
                h = attn.forward(&h)?;
            }
        }
        Ok(h)
    }
}

#[derive(Clone, Debug)]
struct Mid {
    block_1: ResnetBlock,
    attn_1: Option<AttnBlock>,
    block_2: ResnetBlock,
}

impl Mid {
    fn load(cfg: &ConvAeConfig, vb: &VarBuilder, c: usize) -> Result<Self> {
        let vb = vb.pp("mid");
        let [b1, a1, b2] = cfg.mid_names();
        Ok(Self {
            block_1: ResnetBlock::load(vb.pp(b1), c, c, cfg.norm)?,
            attn_1: if cfg.mid_attn { Some(AttnBlock::load(vb.pp(a1), c, cfg.attn_qkv, cfg.norm)?) } else { None },
            block_2: ResnetBlock::load(vb.pp(b2), c, c, cfg.norm)?,
        })
    }
    fn forward(&self, h: &Tensor) -> Result<Tensor> {
        let h = self.block_1.forward(h)?;
        let h = match &self.attn_1 {
            Some(a) => a.forward(&h)?,
            None => h,
        };
        self.block_2.forward(&h)
    }
    fn flops(cfg: &ConvAeConfig, c: usize, hw: (usize, usize)) -> f64 {
        2.0 * ResnetBlock::flops(c, c, hw) + if cfg.mid_attn { AttnBlock::flops(c, hw) } else { 0.0 }
    }
}

/// Image `(B, 3, H, W)` -> latent `(B, z or 2z, H/f, W/f)`.
#[derive(Clone, Debug)]
pub struct Encoder {
    conv_in: Conv2d,
    levels: Vec<Level>,
    downsamples: Vec<Option<Downsample>>,
    mid: Mid,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Encoder {
    /// `vb` points at the encoder (e.g. `encoder`).
    pub fn load(cfg: &ConvAeConfig, vb: VarBuilder) -> Result<Self> {
        cfg.check()?;
        let n = cfg.levels();
        let conv_in = conv(vb.pp("conv_in"), cfg.image_channels, cfg.ch, 3, 1, 1)?;
        let mut levels = Vec::with_capacity(n);
        let mut downsamples = Vec::with_capacity(n);
        let mut block_in = cfg.ch;
        for i in 0..n {
            let lvb = cfg.encoder_level_prefix(&vb, i);
            let block_out = cfg.level_channels(i);
            let mut blocks = vec![];
            let mut attns = vec![];
            for j in 0..cfg.encoder_res_blocks {
                blocks.push(ResnetBlock::load(lvb.pp(cfg.res_name()).pp(j), block_in, block_out, cfg.norm)?);
                block_in = block_out;
                if cfg.encoder_attn[i] {
                    attns.push(AttnBlock::load(lvb.pp("attn").pp(j), block_in, cfg.attn_qkv, cfg.norm)?);
                }
            }
            levels.push(Level { blocks, attns });
            downsamples.push(if i + 1 != n { Some(Downsample::load(lvb.pp("downsample"), block_in)?) } else { None });
        }
        let mid = Mid::load(cfg, &vb, block_in)?;
        let out_ch = if cfg.double_z { 2 * cfg.z_channels } else { cfg.z_channels };
        Ok(Self {
            conv_in,
            levels,
            downsamples,
            mid,
            norm_out: GroupNorm::load(cfg.norm.groups, block_in, cfg.norm.eps, vb.pp("norm_out"))?,
            conv_out: conv(vb.pp("conv_out"), block_in, out_ch, 3, 1, 1)?,
        })
    }
}

/// Intermediate feature maps of one encoder pass (the reference's forward hooks), for parity
/// tests and debugging.
#[derive(Clone, Debug)]
pub struct EncoderTrace {
    /// After each level (including its downsample), in execution order.
    pub level_outs: Vec<Tensor>,
    /// After the middle stack.
    pub mid_out: Tensor,
    pub out: Tensor,
}

impl Encoder {
    /// The same computation as `forward`, keeping the intermediate maps.
    pub fn forward_traced(&self, x: &Tensor) -> Result<EncoderTrace> {
        let mut h = self.conv_in.forward(x)?;
        let mut level_outs = Vec::with_capacity(self.levels.len());
        for (level, down) in self.levels.iter().zip(&self.downsamples) {
            h = level.forward(h)?;
            if let Some(d) = down {
                h = d.forward(&h)?;
            }
            level_outs.push(h.clone());
        }
        let mid_out = self.mid.forward(&h)?;
        let out = self.conv_out.forward(&swish(&self.norm_out.forward(&mid_out)?)?)?;
        Ok(EncoderTrace { level_outs, mid_out, out })
    }
}

impl Module for Encoder {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = self.conv_in.forward(x)?;
        for (level, down) in self.levels.iter().zip(&self.downsamples) {
            h = level.forward(h)?;
            if let Some(d) = down {
                h = d.forward(&h)?;
            }
        }
        let h = self.mid.forward(&h)?;
        self.conv_out.forward(&swish(&self.norm_out.forward(&h)?)?)
    }
}

/// Latent `(B, z, h, w)` -> image `(B, 3, h*f, w*f)` (not clamped).
#[derive(Clone, Debug)]
pub struct Decoder {
    conv_in: Conv2d,
    mid: Mid,
    /// In execution order: lowest resolution first.
    levels: Vec<Level>,
    upsamples: Vec<Option<Upsample>>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Decoder {
    /// `vb` points at the decoder (e.g. `decoder`).
    pub fn load(cfg: &ConvAeConfig, vb: VarBuilder) -> Result<Self> {
        cfg.check()?;
        let n = cfg.levels();
        let mut block_in = cfg.level_channels(n - 1);
        let conv_in = conv(vb.pp("conv_in"), cfg.z_channels, block_in, 3, 1, 1)?;
        let mid = Mid::load(cfg, &vb, block_in)?;
        let mut levels = Vec::with_capacity(n);
        let mut upsamples = Vec::with_capacity(n);
        for i in (0..n).rev() {
            let lvb = cfg.decoder_level_prefix(&vb, i);
            let block_out = cfg.level_channels(i);
            let mut blocks = vec![];
            let mut attns = vec![];
            for j in 0..cfg.decoder_res_blocks {
                blocks.push(ResnetBlock::load(lvb.pp(cfg.res_name()).pp(j), block_in, block_out, cfg.norm)?);
                block_in = block_out;
                if cfg.decoder_attn[i] {
                    attns.push(AttnBlock::load(lvb.pp("attn").pp(j), block_in, cfg.attn_qkv, cfg.norm)?);
                }
            }
            levels.push(Level { blocks, attns });
            upsamples.push(if i != 0 { Some(Upsample::load(lvb.pp("upsample"), block_in)?) } else { None });
        }
        Ok(Self {
            conv_in,
            mid,
            levels,
            upsamples,
            norm_out: GroupNorm::load(cfg.norm.groups, block_in, cfg.norm.eps, vb.pp("norm_out"))?,
            conv_out: conv(vb.pp("conv_out"), block_in, cfg.image_channels, 3, 1, 1)?,
        })
    }

    /// Analytic FLOPs (2 x MACs) of one decoder pass on a `latent` = (h, w) map: convolutions
    /// and attention matmuls; norms, activations and resampling are not counted.
    pub fn flops(cfg: &ConvAeConfig, (h, w): (usize, usize)) -> f64 {
        let n = cfg.levels();
        let mut c = cfg.level_channels(n - 1);
        let (mut h, mut w) = (h, w);
        let mut total = flops::conv2d(h, w, cfg.z_channels, c, 3);
        total += Mid::flops(cfg, c, (h, w));
        for i in (0..n).rev() {
            let out = cfg.level_channels(i);
            for _ in 0..cfg.decoder_res_blocks {
                total += ResnetBlock::flops(c, out, (h, w));
                c = out;
                if cfg.decoder_attn[i] {
                    total += AttnBlock::flops(c, (h, w));
                }
            }
            if i != 0 {
                h *= 2;
                w *= 2;
                total += flops::conv2d(h, w, c, c, 3);
            }
        }
        total + flops::conv2d(h, w, c, cfg.image_channels, 3)
    }
}

/// Intermediate feature maps of one decoder pass (the reference's forward hooks), for parity
/// tests and debugging.
#[derive(Clone, Debug)]
pub struct DecoderTrace {
    pub conv_in_out: Tensor,
    pub mid_out: Tensor,
    /// After each level (including its upsample), in execution order: lowest resolution first.
    pub level_outs: Vec<Tensor>,
    pub out: Tensor,
}

impl Decoder {
    /// The same computation as `forward`, keeping the intermediate maps.
    pub fn forward_traced(&self, z: &Tensor) -> Result<DecoderTrace> {
        let conv_in_out = self.conv_in.forward(z)?;
        let mid_out = self.mid.forward(&conv_in_out)?;
        let mut h = mid_out.clone();
        let mut level_outs = Vec::with_capacity(self.levels.len());
        for (level, up) in self.levels.iter().zip(&self.upsamples) {
            h = level.forward(h)?;
            if let Some(u) = up {
                h = u.forward(&h)?;
            }
            level_outs.push(h.clone());
        }
        let out = self.conv_out.forward(&swish(&self.norm_out.forward(&h)?)?)?;
        Ok(DecoderTrace { conv_in_out, mid_out, level_outs, out })
    }
}

impl Module for Decoder {
    fn forward(&self, z: &Tensor) -> Result<Tensor> {
        let mut h = self.mid.forward(&self.conv_in.forward(z)?)?;
        for (level, up) in self.levels.iter().zip(&self.upsamples) {
            h = level.forward(h)?;
            if let Some(u) = up {
                h = u.forward(&h)?;
            }
        }
        self.conv_out.forward(&swish(&self.norm_out.forward(&h)?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn var_decoder_flops_match_reference_total() {
        // VAR's ch=160 decoder at 256 px (16x16 latent): torch.utils.flop_counter counts 393.71
        // GFLOP for `Decoder(ch=160, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, z_channels=32)` of
        // FoundationVision/VAR@78b9539 models/basic_vae.py.
        let cfg = ConvAeConfig::var_vqvae(160, &[1, 1, 2, 2, 4], 2, 32, true, true);
        let gf = Decoder::flops(&cfg, (16, 16)) / 1e9;
        assert!((gf - 393.7).abs() < 0.5, "{gf}");
        // taming f16 decoder: 252.8 (see tokenizers/taming_vqgan.rs); LlamaGen VQ-16: 252.7 (same network)
        let gf = Decoder::flops(&ConvAeConfig::taming_f16(), (16, 16)) / 1e9;
        assert!((gf - 252.8).abs() < 0.5, "{gf}");
    }
}
