//! The FID Inception-v3 graph (`inception-2015-12-05`): layer table and a device-generic candle
//! forward pass. The CPU engine in [`super::cpu`] runs the same graph in NHWC with its own
//! im2col + gemm; both are built from the same [`FoldedWeights`] and checked against each other.
//!
//! Every convolution is `relu(conv(x, W') + b')` with batch norm folded in (see
//! [`super::weights::fold_batch_norm`]). Quirks of the TF graph kept here (METRICS.md 2.2):
//! stride-2 convolutions and pools are VALID; the average pools inside the blocks divide by the
//! number of non-padded elements (TF SAME pooling, `count_include_pad=False`); Mixed_7c's pool
//! branch is a *max* pool; 1008 logits.

use super::weights::FoldedWeights;
use anyhow::{anyhow, bail, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;

pub const INPUT_SIZE: usize = 299;
pub const POOL3_DIM: usize = 2048;
/// sFID tap: `mixed_6.conv` output is 17x17x192; the first 7 channels, flattened H,W,C.
pub const SPATIAL_CHANNELS: usize = 7;
pub const SPATIAL_SIZE: usize = 17;
pub const SPATIAL_DIM: usize = SPATIAL_SIZE * SPATIAL_SIZE * SPATIAL_CHANNELS;
pub const LOGITS_DIM: usize = 1008;

/// How a convolution is padded: VALID (none) or SAME (`(k-1)/2` on each side, per axis; all
/// SAME layers are stride 1 with odd kernels, so TF SAME equals symmetric padding here).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Padding {
    Valid,
    Same,
}

/// Every convolution layer (TorchScript path under `layers.`) with its stride and padding.
/// Kernel sizes and channel counts come from the weights themselves.
pub const LAYERS: &[(&str, usize, Padding)] = {
    use Padding::*;
    &[
        ("conv", 2, Valid),
        ("conv_1", 1, Valid),
        ("conv_2", 1, Same),
        ("conv_3", 1, Valid),
        ("conv_4", 1, Valid),
        // InceptionA x3
        ("mixed.conv", 1, Same),
        ("mixed.tower.conv", 1, Same),
        ("mixed.tower.conv_1", 1, Same),
        ("mixed.tower_1.conv", 1, Same),
        ("mixed.tower_1.conv_1", 1, Same),
        ("mixed.tower_1.conv_2", 1, Same),
        ("mixed.tower_2.conv", 1, Same),
        ("mixed_1.conv", 1, Same),
        ("mixed_1.tower.conv", 1, Same),
        ("mixed_1.tower.conv_1", 1, Same),
        ("mixed_1.tower_1.conv", 1, Same),
        ("mixed_1.tower_1.conv_1", 1, Same),
        ("mixed_1.tower_1.conv_2", 1, Same),
        ("mixed_1.tower_2.conv", 1, Same),
        ("mixed_2.conv", 1, Same),
        ("mixed_2.tower.conv", 1, Same),
        ("mixed_2.tower.conv_1", 1, Same),
        ("mixed_2.tower_1.conv", 1, Same),
        ("mixed_2.tower_1.conv_1", 1, Same),
        ("mixed_2.tower_1.conv_2", 1, Same),
        ("mixed_2.tower_2.conv", 1, Same),
        // InceptionB
        ("mixed_3.conv", 2, Valid),
        ("mixed_3.tower.conv", 1, Same),
        ("mixed_3.tower.conv_1", 1, Same),
        ("mixed_3.tower.conv_2", 2, Valid),
        // InceptionC x4
        ("mixed_4.conv", 1, Same),
        ("mixed_4.tower.conv", 1, Same),
        ("mixed_4.tower.conv_1", 1, Same),
        ("mixed_4.tower.conv_2", 1, Same),
        ("mixed_4.tower_1.conv", 1, Same),
        ("mixed_4.tower_1.conv_1", 1, Same),
        ("mixed_4.tower_1.conv_2", 1, Same),
        ("mixed_4.tower_1.conv_3", 1, Same),
        ("mixed_4.tower_1.conv_4", 1, Same),
        ("mixed_4.tower_2.conv", 1, Same),
        ("mixed_5.conv", 1, Same),
        ("mixed_5.tower.conv", 1, Same),
        ("mixed_5.tower.conv_1", 1, Same),
        ("mixed_5.tower.conv_2", 1, Same),
        ("mixed_5.tower_1.conv", 1, Same),
        ("mixed_5.tower_1.conv_1", 1, Same),
        ("mixed_5.tower_1.conv_2", 1, Same),
        ("mixed_5.tower_1.conv_3", 1, Same),
        ("mixed_5.tower_1.conv_4", 1, Same),
        ("mixed_5.tower_2.conv", 1, Same),
        ("mixed_6.conv", 1, Same),
        ("mixed_6.tower.conv", 1, Same),
        ("mixed_6.tower.conv_1", 1, Same),
        ("mixed_6.tower.conv_2", 1, Same),
        ("mixed_6.tower_1.conv", 1, Same),
        ("mixed_6.tower_1.conv_1", 1, Same),
        ("mixed_6.tower_1.conv_2", 1, Same),
        ("mixed_6.tower_1.conv_3", 1, Same),
        ("mixed_6.tower_1.conv_4", 1, Same),
        ("mixed_6.tower_2.conv", 1, Same),
        ("mixed_7.conv", 1, Same),
        ("mixed_7.tower.conv", 1, Same),
        ("mixed_7.tower.conv_1", 1, Same),
        ("mixed_7.tower.conv_2", 1, Same),
        ("mixed_7.tower_1.conv", 1, Same),
        ("mixed_7.tower_1.conv_1", 1, Same),
        ("mixed_7.tower_1.conv_2", 1, Same),
        ("mixed_7.tower_1.conv_3", 1, Same),
        ("mixed_7.tower_1.conv_4", 1, Same),
        ("mixed_7.tower_2.conv", 1, Same),
        // InceptionD
        ("mixed_8.tower.conv", 1, Same),
        ("mixed_8.tower.conv_1", 2, Valid),
        ("mixed_8.tower_1.conv", 1, Same),
        ("mixed_8.tower_1.conv_1", 1, Same),
        ("mixed_8.tower_1.conv_2", 1, Same),
        ("mixed_8.tower_1.conv_3", 2, Valid),
        // InceptionE x2 (flattened attribute names in the TorchScript)
        ("mixed_9.conv", 1, Same),
        ("mixed_9.tower_conv", 1, Same),
        ("mixed_9.tower_mixed_conv", 1, Same),
        ("mixed_9.tower_mixed_conv_1", 1, Same),
        ("mixed_9.tower_1_conv", 1, Same),
        ("mixed_9.tower_1_conv_1", 1, Same),
        ("mixed_9.tower_1_mixed_conv", 1, Same),
        ("mixed_9.tower_1_mixed_conv_1", 1, Same),
        ("mixed_9.tower_2_conv", 1, Same),
        ("mixed_10.conv", 1, Same),
        ("mixed_10.tower_conv", 1, Same),
        ("mixed_10.tower_mixed_conv", 1, Same),
        ("mixed_10.tower_mixed_conv_1", 1, Same),
        ("mixed_10.tower_1_conv", 1, Same),
        ("mixed_10.tower_1_conv_1", 1, Same),
        ("mixed_10.tower_1_mixed_conv", 1, Same),
        ("mixed_10.tower_1_mixed_conv_1", 1, Same),
        ("mixed_10.tower_2_conv", 1, Same),
    ]
};

/// The 94 convolution layer paths, in graph order.
pub fn conv_layer_names() -> Vec<&'static str> {
    LAYERS.iter().map(|(n, _, _)| *n).collect()
}

/// Stride and per-axis padding of a layer, given its kernel size.
pub fn layer_geometry(name: &str, kh: usize, kw: usize) -> Result<(usize, usize, usize)> {
    let (_, stride, padding) = LAYERS.iter().find(|(n, _, _)| *n == name).ok_or_else(|| anyhow!("unknown Inception layer {name}"))?;
    Ok(match padding {
        Padding::Valid => (*stride, 0, 0),
        Padding::Same => (*stride, (kh - 1) / 2, (kw - 1) / 2),
    })
}

/// The kind of each mixed block, in graph order.
pub const BLOCKS: &[(&str, BlockKind)] = &[
    ("mixed", BlockKind::A),
    ("mixed_1", BlockKind::A),
    ("mixed_2", BlockKind::A),
    ("mixed_3", BlockKind::B),
    ("mixed_4", BlockKind::C),
    ("mixed_5", BlockKind::C),
    ("mixed_6", BlockKind::C),
    ("mixed_7", BlockKind::C),
    ("mixed_8", BlockKind::D),
    ("mixed_9", BlockKind::E { max_pool: false }),
    // TF quirk kept by every FID implementation: Mixed_7c pools with max, not average.
    ("mixed_10", BlockKind::E { max_pool: true }),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockKind {
    A,
    B,
    C,
    D,
    E { max_pool: bool },
}

/// The block whose `conv` (1x1 branch) output is the sFID tap.
pub const SPATIAL_TAP_BLOCK: &str = "mixed_6";

/// Network outputs for a batch, row-major.
#[derive(Clone, Debug, Default)]
pub struct NetOutput {
    /// [N, 2048]
    pub pool3: Vec<f32>,
    /// [N, 2023]: `mixed_6.conv` channels 0..7, H,W,C order.
    pub spatial: Vec<f32>,
    /// [N, 1008] `pool3 · Wᵀ` without bias, when the classifier is present.
    pub logits: Option<Vec<f32>>,
}

// ------------------------------------------------------------------------------------------------
// Device-generic candle implementation (used for CUDA, and on CPU as the cross-check of the
// NHWC engine).

struct CandleConv {
    /// OIHW
    weight: Tensor,
    /// [1, Cout, 1, 1]
    bias: Tensor,
    stride: usize,
    pad_h: usize,
    pad_w: usize,
}

pub struct CandleInception {
    convs: HashMap<&'static str, CandleConv>,
    /// [2048, 1008]: the classifier weight transposed once, so logits are one matmul.
    fc_t: Option<Tensor>,
    device: Device,
}

impl CandleInception {
    pub fn new(folded: &FoldedWeights, device: &Device) -> Result<Self> {
        let mut convs = HashMap::new();
        for (name, _, _) in LAYERS {
            let f = folded.convs.get(*name).ok_or_else(|| anyhow!("missing folded layer {name}"))?;
            let (stride, pad_h, pad_w) = layer_geometry(name, f.kh, f.kw)?;
            let weight = Tensor::from_slice(&f.weight, (f.cout, f.cin, f.kh, f.kw), device)?;
            let bias = Tensor::from_slice(&f.bias, (1, f.cout, 1, 1), device)?;
            convs.insert(*name, CandleConv { weight, bias, stride, pad_h, pad_w });
        }
        let fc_t = match &folded.fc_weight {
            Some(w) => Some(Tensor::from_slice(w, (LOGITS_DIM, POOL3_DIM), device)?.t()?.contiguous()?),
            None => None,
        };
        Ok(Self { convs, fc_t, device: device.clone() })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    fn conv(&self, name: &str, x: &Tensor) -> Result<Tensor> {
        let c = self.convs.get(name).ok_or_else(|| anyhow!("unknown layer {name}"))?;
        // candle's conv2d takes one padding for both axes: pad asymmetric kernels by hand.
        let y = if c.pad_h == c.pad_w {
            x.conv2d(&c.weight, c.pad_h, c.stride, 1, 1)?
        } else {
            x.pad_with_zeros(2, c.pad_h, c.pad_h)?.pad_with_zeros(3, c.pad_w, c.pad_w)?.conv2d(&c.weight, 0, c.stride, 1, 1)?
        };
        Ok(y.broadcast_add(&c.bias)?.relu()?)
    }

    fn chain(&self, names: &[String], x: &Tensor) -> Result<Tensor> {
        let mut y = x.clone();
        for n in names {
            y = self.conv(n, &y)?;
        }
        Ok(y)
    }

    /// 3x3, stride 1, padding 1, dividing by the number of non-padded elements.
    fn avg_pool_exclude_pad(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let summed_mean = x.pad_with_zeros(2, 1, 1)?.pad_with_zeros(3, 1, 1)?.avg_pool2d_with_stride(3, 1)?;
        // avg_pool2d divides by 9 everywhere; rescale each position by 9 / (valid count).
        let rescale: Vec<f32> = (0..h)
            .flat_map(|y| (0..w).map(move |x| (y, x)))
            .map(|(y, x)| {
                let rows = 3 - usize::from(y == 0) - usize::from(y + 1 == h);
                let cols = 3 - usize::from(x == 0) - usize::from(x + 1 == w);
                9.0 / (rows * cols) as f32
            })
            .collect();
        let rescale = Tensor::from_vec(rescale, (1, 1, h, w), x.device())?;
        Ok(summed_mean.broadcast_mul(&rescale)?)
    }

    /// 3x3 max pool, stride 1, padding 1. Edge replication is exact for a max: the replicated
    /// value already lies inside the window.
    fn max_pool_same(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.pad_with_same(2, 1, 1)?.pad_with_same(3, 1, 1)?.max_pool2d_with_stride(3, 1)?)
    }

    fn block(&self, name: &str, kind: BlockKind, x: &Tensor, spatial: &mut Option<Tensor>) -> Result<Tensor> {
        let p = |s: &str| format!("{name}.{s}");
        let seq = |ss: &[&str]| ss.iter().map(|s| p(s)).collect::<Vec<_>>();
        let parts = match kind {
            BlockKind::A => vec![
                self.conv(&p("conv"), x)?,
                self.chain(&seq(&["tower.conv", "tower.conv_1"]), x)?,
                self.chain(&seq(&["tower_1.conv", "tower_1.conv_1", "tower_1.conv_2"]), x)?,
                self.conv(&p("tower_2.conv"), &self.avg_pool_exclude_pad(x)?)?,
            ],
            BlockKind::B => vec![
                self.conv(&p("conv"), x)?,
                self.chain(&seq(&["tower.conv", "tower.conv_1", "tower.conv_2"]), x)?,
                x.max_pool2d_with_stride(3, 2)?,
            ],
            BlockKind::C => {
                let branch1x1 = self.conv(&p("conv"), x)?;
                if name == SPATIAL_TAP_BLOCK {
                    *spatial = Some(branch1x1.clone());
                }
                vec![
                    branch1x1,
                    self.chain(&seq(&["tower.conv", "tower.conv_1", "tower.conv_2"]), x)?,
                    self.chain(&seq(&["tower_1.conv", "tower_1.conv_1", "tower_1.conv_2", "tower_1.conv_3", "tower_1.conv_4"]), x)?,
                    self.conv(&p("tower_2.conv"), &self.avg_pool_exclude_pad(x)?)?,
                ]
            }
            BlockKind::D => vec![
                self.chain(&seq(&["tower.conv", "tower.conv_1"]), x)?,
                self.chain(&seq(&["tower_1.conv", "tower_1.conv_1", "tower_1.conv_2", "tower_1.conv_3"]), x)?,
                x.max_pool2d_with_stride(3, 2)?,
            ],
            BlockKind::E { max_pool } => {
                let a = self.conv(&p("tower_conv"), x)?;
                let b = self.chain(&seq(&["tower_1_conv", "tower_1_conv_1"]), x)?;
                let pooled = if max_pool { self.max_pool_same(x)? } else { self.avg_pool_exclude_pad(x)? };
                vec![
                    self.conv(&p("conv"), x)?,
                    self.conv(&p("tower_mixed_conv"), &a)?,
                    self.conv(&p("tower_mixed_conv_1"), &a)?,
                    self.conv(&p("tower_1_mixed_conv"), &b)?,
                    self.conv(&p("tower_1_mixed_conv_1"), &b)?,
                    self.conv(&p("tower_2_conv"), &pooled)?,
                ]
            }
        };
        Ok(Tensor::cat(&parts, 1)?)
    }

    /// Forward pass on normalised NCHW input [N, 3, 299, 299] (f32, on this device).
    pub fn forward_nchw(&self, x: &Tensor) -> Result<(Tensor, Tensor, Option<Tensor>)> {
        let (_, c, h, w) = x.dims4()?;
        if c != 3 || h != INPUT_SIZE || w != INPUT_SIZE {
            bail!("Inception input must be [N, 3, 299, 299], got {:?}", x.dims());
        }
        let mut y = self.chain(&["conv".into(), "conv_1".into(), "conv_2".into()], x)?;
        y = y.max_pool2d_with_stride(3, 2)?;
        y = self.chain(&["conv_3".into(), "conv_4".into()], &y)?;
        y = y.max_pool2d_with_stride(3, 2)?;
        let mut tap = None;
        for (name, kind) in BLOCKS {
            y = self.block(name, *kind, &y, &mut tap)?;
        }
        let pool3 = y.mean((2, 3))?;
        let tap = tap.ok_or_else(|| anyhow!("the sFID tap block did not run"))?;
        let n = tap.dim(0)?;
        // NHWC flatten order: idx = (h*17 + w)*7 + c, as ADM's reference statistics use.
        let spatial = tap.narrow(1, 0, SPATIAL_CHANNELS)?.permute((0, 2, 3, 1))?.contiguous()?.reshape((n, SPATIAL_DIM))?;
        let logits = match &self.fc_t {
            Some(w) => Some(pool3.matmul(w)?),
            None => None,
        };
        Ok((pool3, spatial, logits))
    }

    /// Forward pass on normalised NHWC input held on the host.
    pub fn forward_nhwc(&self, x: &[f32], n: usize) -> Result<NetOutput> {
        let t = Tensor::from_slice(x, (n, INPUT_SIZE, INPUT_SIZE, 3), &self.device)?.permute((0, 3, 1, 2))?.contiguous()?;
        let (pool3, spatial, logits) = self.forward_nchw(&t)?;
        let host = |t: Tensor| -> Result<Vec<f32>> { Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?) };
        Ok(NetOutput { pool3: host(pool3)?, spatial: host(spatial)?, logits: logits.map(host).transpose()? })
    }
}

/// Which engine runs the network.
pub enum InceptionNet {
    /// NHWC im2col + gemm on the CPU (the fast path).
    Cpu(super::cpu::GemmInception),
    /// candle ops on any device (CUDA; on CPU only as a reference).
    Candle(CandleInception),
}

impl InceptionNet {
    /// The best engine for `device`: the NHWC gemm engine on CPU, candle elsewhere (and on the
    /// CPU under the generic kernel route, `GENBENCH_KERNELS=generic`).
    pub fn new(folded: &FoldedWeights, device: &Device) -> Result<Self> {
        if genbench_runtime::kernels::fast_on(device) {
            Ok(Self::Cpu(super::cpu::GemmInception::new(folded)?))
        } else {
            Ok(Self::Candle(CandleInception::new(folded, device)?))
        }
    }

    pub fn forward_nhwc(&self, x: &[f32], n: usize) -> Result<NetOutput> {
        if x.len() != n * INPUT_SIZE * INPUT_SIZE * 3 {
            bail!("expected {n} images of 299x299x3 ({} floats), got {}", n * INPUT_SIZE * INPUT_SIZE * 3, x.len());
        }
        match self {
            Self::Cpu(net) => net.forward(x, n),
            Self::Candle(net) => net.forward_nhwc(x, n),
        }
    }

    pub fn device(&self) -> Device {
        match self {
            Self::Cpu(_) => Device::Cpu,
            Self::Candle(net) => net.device().clone(),
        }
    }
}
