//! genbench-runtime: the small layer that metrics and models both stand on.
//!
//! It owns everything that must behave identically for a feature extractor and a generator:
//! where tensors live ([`device`]), which float type they use ([`dtype`]), how time is measured
//! on an asynchronous device ([`timer`]), how many CPU threads run ([`threads`]), where
//! randomness comes from ([`rng`]), how published PyTorch checkpoints are read
//! ([`checkpoint`]), how long loops report progress ([`progress`]), and how the allocator treats
//! large tensors ([`memory`]). It knows nothing about any model or metric.
//!
//! A device choice as the command line writes it, the dtype the table allows there, and a
//! seeded random stream that replays exactly:
//!
//! ```
//! use genbench_runtime::{DTypePolicy, DeviceChoice, RandomSource, SeededSource};
//!
//! let device = "cpu".parse::<DeviceChoice>()?.open()?;
//! let dtype = DTypePolicy::F32.compute_dtype(&device)?;
//! assert_eq!(dtype, candle_core::DType::F32);
//! let (mut a, mut b) = (SeededSource::new(7), SeededSource::new(7));
//! assert_eq!(a.normal(4)?, b.normal(4)?);
//! # anyhow::Ok(())
//! ```

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
