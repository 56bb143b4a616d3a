//! genbench-models: the four generator families on candle, loading the published checkpoints
//! as they are.
//!
//! * [`nn`]: building blocks written once and shared by every family (attention with a
//!   preallocated KV cache, AdaLN, MLPs, norms, conv-autoencoder blocks, VQ lookup, the batched
//!   sampler, classifier-free guidance).
//! * `tokenizers`: the image tokenizers / VAEs.
//! * `generators`: one file per family.
//! * [`generator`]: the `Generator` trait the harness drives, and the per-step observer.

pub mod family;
pub mod generator;
pub mod generators;
pub mod checkpoint;
pub mod flops;
pub mod nn;
pub mod tokenizers;
