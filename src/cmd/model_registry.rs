//! The command-line side of the model registry: clap's sampler options. The registry itself
//! (names / `--config` -> generator) lives in `genbench_harness::model_registry`, shared with the
//! suite runner.

use std::path::PathBuf;

pub use genbench_harness::model_registry::*;

/// Sampler options every family's command line shares; each family reads the ones it
/// understands and refuses the others by name.
#[derive(clap::Args, serde::Serialize, Clone, Debug, Default)]
pub struct SamplerArgs {
    /// Classifier-free guidance scale (family formula; VAR ramps it linearly over the scales).
    #[arg(long)]
    pub cfg: Option<f64>,
    /// Guidance schedule (`linear` / `constant`; MAR).
    #[arg(long)]
    pub cfg_schedule: Option<String>,
    /// LlamaGen: guide only the first N tokens (-1 = all).
    #[arg(long, allow_hyphen_values = true)]
    pub cfg_interval: Option<i64>,
    /// Keep the k most likely tokens (0 = off).
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Nucleus sampling mass (family rule).
    #[arg(long)]
    pub top_p: Option<f64>,
    #[arg(long)]
    pub temperature: Option<f64>,
    /// VAR: Gumbel-softmax smoothing (visualisation only, not for FID).
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub more_smooth: bool,
    /// MAR / AutoNAT: generation steps.
    #[arg(long)]
    pub num_iter: Option<usize>,
    /// MAR: diffusion steps of the MLP head.
    #[arg(long)]
    pub num_sampling_steps: Option<usize>,
    /// AutoNAT: strategy YAML or built-in name.
    #[arg(long)]
    pub strategy: Option<String>,
}

impl SamplerArgs {
    /// The settings that were given, by their one name (`cfg`, `top_k`, ...); the family
    /// refuses the ones it has no use for.
    pub fn to_settings(&self) -> RawSettings {
        // The field names are the settings' names; flags not given are left out.
        let serde_json::Value::Object(given) = serde_json::to_value(self).unwrap_or_default() else { return RawSettings::new() };
        given.into_iter().filter(|(_, v)| !v.is_null()).collect()
    }
}

/// Which generator and which weights: the options `sample`, `profile` and `autonat-search`
/// share.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ModelArgs {
    /// Published model name (e.g. var-d16, autonat-l); with --config, a label for the run.
    #[arg(long)]
    pub model: Option<String>,
    /// Reference constructor arguments for sizes that were not published (e.g. a fixture's
    /// config.json).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Generator checkpoint (e.g. var_d16.pth, nnet_ema.pth).
    #[arg(long)]
    pub ckpt: Option<PathBuf>,
    /// Tokenizer / VAE checkpoint (e.g. vae_ch160v4096z32.pth, vqgan_jax_strongaug.ckpt).
    #[arg(long)]
    pub vae: Option<PathBuf>,
    /// Random weights instead of checkpoints (timing and smoke tests; the images are noise).
    #[arg(long)]
    pub random_init: bool,
}

impl ModelArgs {
    /// The registry request for these options with `settings`, at the published shapes and
    /// resolutions (shape and resolution overrides are for suites).
    pub fn request(&self, settings: RawSettings) -> ModelRequest {
        ModelRequest {
            model: self.model.clone(),
            config: self.config.clone(),
            ckpt: self.ckpt.clone(),
            vae: self.vae.clone(),
            random_init: self.random_init,
            settings,
            ..Default::default()
        }
    }
}
