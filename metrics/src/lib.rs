//! ADM-evaluator metrics for generated images: FID, sFID, Inception Score, improved
//! precision/recall and KID, with a Rust port of the FID Inception network.
//!
//! The crate has three layers:
//!
//! * **Features** ([`features`], [`inception`], [`preprocess`]): uint8 NHWC images go through
//!   the preprocessing of a reference implementation (ADM's TF1 bilinear resize by default) and
//!   the `inception-2015-12-05` network, giving pool3 (2048), spatial (2023) and, when the
//!   weights carry the classifier, logit (1008) rows. [`features::FeatureCache`] keeps them on
//!   disk keyed by image content, weights hash and preprocessing.
//! * **The pipeline** ([`evaluate`]): image sources are streamed batch by batch into a
//!   [`evaluate::FeatureCollector`], which keeps running statistics and only the rows a metric
//!   needs; [`evaluate::evaluate`] turns two such summaries into values, diagnostics and
//!   warnings. `genbench eval` and the suite runner both call it.
//! * **Metric functions** ([`stats`], [`fid`], [`inception_score`], [`precision_recall`],
//!   [`kid`]): pure functions over row-major `f32` feature rows (`&[f32]` plus the row width)
//!   and `f64` statistics, with ADM's numerics (float64 `np.cov`, the eps retry, fp16 distances).
//!
//! Feature matrices cross the API as row-major slices with their width, the layout the network
//! writes and npz files store, so no copy or conversion sits between extraction and the metrics.
//!
//! ```
//! use genbench_metrics::evaluate::{evaluate, EvalOptions, FeatureSummary, Metric};
//! use genbench_metrics::stats::FeatureStats;
//!
//! // Two small 2-d feature sets: FID is the Fréchet distance of their Gaussians.
//! let a = FeatureStats::from_features(&[0.0, 0.0, 1.0, 0.5, 2.0, 1.5, 0.5, 2.0], 2).unwrap();
//! let b = FeatureStats::from_features(&[1.0, 0.0, 2.0, 0.5, 3.0, 1.5, 1.5, 2.0], 2).unwrap();
//! let summary = |s: &FeatureStats| FeatureSummary { n: s.n, pool_stats: Some(s.clone()), ..Default::default() };
//! let e = evaluate(&summary(&a), Some(&summary(&b)), &[Metric::Fid], &EvalOptions::default()).unwrap();
//! // Same covariance, means 1 apart along x: FID = |mu_a - mu_b|^2 = 1.
//! assert!((e.values[&Metric::Fid] - 1.0).abs() < 1e-9);
//! ```

// Evaluation core: pure metric functions over features, and metric I/O.
pub mod checks;
pub mod convention;
pub mod download;
pub mod eigenvalues;
pub mod evaluate;
pub mod fid;
pub mod images;
pub mod inception_score;
pub mod kid;
pub mod npz;
pub mod numeric;
pub mod numpy_rng;
pub mod precision_recall;
pub mod reference_batches;
pub mod stats;
mod tridiagonal;

// FID Inception network, preprocessing and batched feature extraction.
pub mod features;
pub mod inception;
pub mod preprocess;
