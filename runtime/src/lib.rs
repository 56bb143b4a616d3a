//! genbench-runtime: the small layer that metrics and models both stand on.
//!
//! It owns everything that must behave identically for a feature extractor and a generator:
//! where tensors live ([`device`]), which float type they use ([`dtype`]), how time is measured
//! on an asynchronous device ([`timer`]), how many CPU threads run ([`threads`]), where
//! randomness comes from ([`rng`]), and how published PyTorch checkpoints are read
//! ([`checkpoint`]), how long loops report progress ([`progress`]), and how the allocator
//! treats large tensors ([`memory`]). It knows nothing about any model or metric.
//!
//! Every random choice takes a seed, and a parity test replays the draws a reference run
//! recorded through the same [`RandomSource`] interface, call by call:
//!
//! ```
//! use genbench_runtime::{DTypePolicy, DeviceChoice, RandomSource, ReplaySource, SeededSource};
//!
//! // The device as the command line writes it, and the dtype the table allows there.
//! let device = "cpu".parse::<DeviceChoice>().unwrap().open().unwrap();
//! assert_eq!(DTypePolicy::F32.compute_dtype(&device).unwrap(), candle_core::DType::F32);
//!
//! let (mut a, mut b) = (SeededSource::new(7), SeededSource::new(7));
//! assert_eq!(a.permutation(16).unwrap(), b.permutation(16).unwrap());
//!
//! // Two recorded `torch.randn` calls, of 2 and 1 values: a call of another size is refused.
//! let mut replay = ReplaySource::new().with_normal_calls([0.5, -1.0, 2.0], [2, 1]);
//! assert_eq!(replay.normal(2).unwrap(), vec![0.5, -1.0]);
//! assert!(replay.normal(2).is_err());
//! ```

pub mod atomic_file;
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
pub mod winograd;

pub use device::DeviceChoice;
pub use dtype::DTypePolicy;
pub use rng::{RandomSource, ReplaySource, SeededSource};
pub use timer::Stopwatch;
