//! Building blocks shared by every generator family, each written once.
//!
//! | module | what | used by |
//! |---|---|---|
//! | [`attention`] | multi-head attention (fused or separate q/k/v, optional L2 q/k-norm with a per-head scale, optional positional transform such as RoPE), a preallocated in-place [`attention::KvCache`], masks | VAR (per-scale blocks with cache), LlamaGen / taming (single-token decode with cache), MAR / AutoNAT (bidirectional, no cache) |
//! | [`adaln`] | `Linear(SiLU(cond))` modulation rows and `x * (1 + scale) + shift` | VAR blocks and head, MAR DiffLoss (DiT-style) |
//! | [`block`] | pre-LayerNorm transformer block `x + attn(norm1 x)`, `x + mlp(norm2 x)` (timm `Block`) | MAR, AutoNAT; taming (assembled from the parts) |
//! | [`mlp`] | 2-layer MLP (GELU-tanh, exact GELU, SiLU) and SwiGLU | VAR, MAR, AutoNAT, taming (MLP); LlamaGen (SwiGLU) |
//! | [`norm`] | LayerNorm (affine or not), RMSNorm computed in f32, GroupNorm | all |
//! | [`conv`] | 2-D convolution (`candle_nn::Conv2d` interface) with a fast NCHW im2col + GEMM CPU path and Winograd F(2x2, 3x3) for 3x3 stride-1 layers | every conv autoencoder (through [`conv_ae`]), MAGE VQGAN |
//! | [`elementwise`] | row-parallel CPU residual add and nearest x2 upsampling (candle runs them on one thread) | conv autoencoders, pre-LN blocks |
//! | [`conv_ae`] | the taming/LDM conv autoencoder: ResnetBlock, AttnBlock, Up/Downsample, Encoder, Decoder with a naming/config struct | VAR VQVAE, taming VQGAN, LlamaGen VQ-16, LDM KL-16 (MAR) |
//! | [`vq`] | nearest-codebook lookup (squared L2, optional L2-normalisation) and embedding gather | VAR, taming, LlamaGen, MAGE VQGAN |
//! | [`sampling`] | batched on-device token sampling: temperature, top-k (ties kept), top-p (VAR and Hugging Face rules), multinomial / Gumbel-max through a `RandomSource`, Gumbel-softmax | VAR, LlamaGen, taming, AutoNAT/MaskGIT |
//! | [`cfg`](mod@cfg) | classifier-free guidance formulas as named functions, batch doubling and splitting | VAR, MAR, AutoNAT, LlamaGen |
//! | [`rope`] | 2-D rotary position embedding over a token grid (interleaved pairs, rows in the first half and columns in the second, zero rows for prefix tokens) | LlamaGen |
//! | [`fast_math`] | row-parallel, vectorised GELU-tanh and SiLU on the CPU (candle's run on one thread) | VAR, LlamaGen, any [`mlp::Activation`] user |
//! | [`fused`] | fused CPU passes around the matmuls: LN+modulate, gated residual, q/k/v head split with L2 q/k-norm, head merge | VAR (all), attention users (split/merge) |
//! | [`linear`] | `RowLinear`: weight stored transposed `(in, out)` once at load (3-4x faster gemm for few rows) | attention, MLPs, AdaLN (all families) |
//! | [`interpolate`] | separable resampling as matrices: PyTorch `area` (adaptive average pooling) and `bicubic` (A = -0.75, align_corners=False) | VAR quantiser; any family that resizes feature maps |
//!
//! Conventions: activations are `(B, T, C)` for token sequences and `(B, C, H, W)` for feature
//! maps; linear weights use PyTorch's `(out, in)` layout; VarBuilder prefixes mirror the
//! checkpoint key names so that `vb.pp("blocks").pp(i).pp("attn")` reads like the reference.

pub mod adaln;
pub mod attention;
pub mod block;
pub mod cfg;
pub mod conv;
pub mod conv_ae;
pub mod elementwise;
pub mod fast_math;
pub mod fused;
pub mod interpolate;
pub mod linear;
pub mod mlp;
pub mod norm;
pub mod rope;
pub mod sampling;
pub mod vq;
mod winograd;
