//! genbench harness: everything above a single generator. It knows the families only through
//! [`model_registry::FAMILIES`] (one line per family; the families' own knowledge lives in
//! `genbench_models`).
//!
//! * [`model_registry`]: the family list and request -> generator ([`model_registry::resolve`]).
//! * [`suite`]: suite files (vocabulary, raw file, resolution, located errors), checked at load.
//! * [`runner`], [`records`], [`manifest`], [`report`], [`plots`]: running suites and reporting.
//! * [`profile`]: per-step time and FLOPs of one generator; [`autonat_search`]: AutoNAT's
//!   finite-difference strategy search (resumable); [`fit`], [`fit_command`], [`sweep_log`]:
//!   power-law fits; [`quickstart`]: the README's main job; [`papers`]: the published tables.
//!
//! Resolving a request reads configurations and settings, never weights, so a bad request fails
//! before anything is loaded:
//!
//! ```
//! use genbench_harness::model_registry::{resolve, ModelRequest};
//!
//! let request = ModelRequest { model: Some("var-d16".into()), random_init: true, ..Default::default() };
//! let model = resolve(&request).unwrap();
//! assert_eq!((model.num_classes, model.image_size), (1000, 256));
//! assert_eq!(model.settings["cfg"], 1.5); // VAR's README recipe
//! let unknown = ModelRequest { model: Some("var-d99".into()), ..Default::default() };
//! assert!(resolve(&unknown).err().unwrap().to_string().contains("unknown model `var-d99`"));
//! ```

pub mod autonat_search;
pub mod bench_inception;
pub mod eval_command;
pub mod fit;
pub mod fit_command;
pub mod manifest;
pub mod model_registry;
pub mod papers;
pub mod plots;
pub mod profile;
pub mod quickstart;
pub mod records;
pub mod report;
pub mod runner;
pub mod sample_command;
pub mod sampling;
pub mod slurm;
pub mod suite;
pub mod suite_shards;
pub mod sweep_log;
