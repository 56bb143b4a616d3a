//! placeholder

// Evaluation core: pure metric functions over features, and metric I/O.
pub mod checks;
pub mod convention;
pub mod download;
pub mod fid;
pub mod images;
pub mod inception_score;
pub mod kid;
pub mod npz;
pub mod numeric;
pub mod numpy_rng;
pub mod precision_recall;
pub mod stats;

// FID Inception network, preprocessing and batched feature extraction.
pub mod features;
pub mod inception;
pub mod preprocess;
