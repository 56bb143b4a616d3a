//! genbench-runtime: the small layer that metrics and models both stand on.
//!
//! It owns everything that must behave identically for a feature extractor and a generator:
//! where tensors live ([`device`]), which float type they use ([`dtype`]), how time is measured
//! on an asynchronous device ([`timer`]), how many CPU threads run ([`threads`]), where
//! randomness comes from ([`rng`]), and how published PyTorch checkpoints are read
//! ([`checkpoint`]), how long loops report progress ([`progress`]), and how the allocator treats large tensors ([`memory`]). It knows nothing about any model or metric.

pub mod checkpoint;
pub mod cuda;
pub mod device;
pub mod dtype;
pub mod hash;
pub mod info;
pub mod kernels;
pub mod memory;
pub mod progress;
pub mod rng;
pub mod threads;
pub mod timer;

pub use device::DeviceChoice;
pub use dtype::DTypePolicy;
pub use rng::{RandomSource, ReplaySource, SeededSource};
pub use timer::Stopwatch;
