//! The FID Inception network (`inception-2015-12-05`, the TF graph every FID anchor uses),
//! ported to Rust: weights ([`weights`]), the graph and its device-generic candle forward
//! ([`network`]), and the fast NHWC CPU engine ([`cpu`], with Winograd F(4x4, 3x3) and
//! F(2x2, 5x5) for its larger 3x3 and 5x5 layers and F(m, r) along one axis for its 1x7, 7x1,
//! 1x3 and 3x1 layers).
//!
//! Outputs per image: pool_3 (2048, FID/KID/P-R), the sFID tap (`mixed_6/conv`, 7 channels,
//! H,W,C order, 2023) and, when the weights carry the classifier, the 1008 logits without bias
//! (IS). Feature extraction from uint8 images lives in [`crate::features`].

pub mod cpu;
pub mod network;
pub mod weights;
mod winograd;
mod winograd_1d;

pub use network::{InceptionNet, NetOutput, INPUT_SIZE, LOGITS_DIM, POOL3_DIM, SPATIAL_DIM};
pub use weights::{default_cache_dir, FoldedWeights, ResolvedWeights, WeightsSource};
