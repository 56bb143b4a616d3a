//! genbench-models: the generator families (VAR, LlamaGen and taming raster AR, MAR,
//! AutoNAT/MaskGIT) on candle, loading the published checkpoints as they are.
//!
//! * [`family`]: the family interface every family file implements once ([`family::ModelFamily`]):
//!   published names, reference-config recognition, typed sampler settings whose own `validate`
//!   is the only validation, default recipes, and request -> [`family::ResolvedModel`] ->
//!   generator (`build(device, dtype)`).
//! * [`generator`]: the [`generator::Generator`] trait the harness drives, the per-step
//!   [`generator::StepObserver`] and [`generator::record_step`], which times every network pass
//!   with device synchronisation.
//! * [`generators`]: one file per family; [`nn`]: building blocks written once and shared by every
//!   family; [`tokenizers`]: the image tokenizers / VAEs; [`checkpoint`]: strict loading.
//!
//! A family checks sampler settings before any weights are read, naming the setting at fault:
//!
//! ```
//! use genbench_models::family::ModelFamily;
//! use genbench_models::generators::var::VarFamily;
//!
//! let settings = serde_json::json!({ "cfg": 1.5, "top_k": 900, "top_p": 0.96 });
//! assert!(VarFamily.check_settings(settings.as_object().unwrap()).is_ok());
//! // VAR's sampler has no temperature: refused by name, listing the settings it has.
//! let bad = serde_json::json!({ "temperature": 0.9 });
//! let err = VarFamily.check_settings(bad.as_object().unwrap()).unwrap_err();
//! assert_eq!(err.setting.as_deref(), Some("temperature"));
//! assert!(err.message.contains("expected one of `cfg`, `top_k`, `top_p`, `more_smooth`"));
//! ```

pub mod checkpoint;
pub mod family;
pub mod flops;
pub mod generator;
pub mod generators;
pub mod nn;
pub mod reference_config;
pub mod tokenizers;
