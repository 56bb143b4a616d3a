//! The family interface: what a generator family tells the rest of genbench about itself.
//!
//! Each family file in [`crate::generators`] implements [`ModelFamily`] once: its published
//! names, how it recognises its reference `config.json`, its sampler settings (a typed struct,
//! serde with `deny_unknown_fields`, whose own `validate` is the only validation), the default
//! recipe per published size, and how a [`ModelRequest`] (name or config, weights or random
//! init, shape and resolution overrides) becomes a [`ResolvedModel`], which then builds the
//! generator with `build(device, dtype)`. The harness only lists the families.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};

use crate::generator::{Family, Generator};

/// Sampler settings as written (a suite's `[run.sampler]` table, the command line's flags):
/// setting name -> value. Each family parses it into its own typed settings struct.
pub type RawSettings = serde_json::Map<String, serde_json::Value>;

/// Architecture overrides, for configurations without a released checkpoint (profiling at
/// matched sizes, VAR Table 3's ablation rows). Absent means the named model's own value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub depth: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heads: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mlp_ratio: Option<f64>,
    /// VAR: class conditioning by AdaLN (true) or by a start token only (false; Table 3 row 2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adaln: Option<bool>,
    /// VAR: normalised attention (Table 3 row 6).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attn_norm: Option<bool>,
}

impl ArchOverrides {
    pub fn is_empty(&self) -> bool {
        *self == ArchOverrides::default()
    }

    /// Refuses every override that is set but not in `supported` (by its suite key).
    pub fn refuse_unsupported(&self, family: &str, supported: &[&str]) -> Result<()> {
        let set = [
            ("depth", self.depth.is_some()),
            ("width", self.width.is_some()),
            ("heads", self.heads.is_some()),
            ("mlp_ratio", self.mlp_ratio.is_some()),
            ("adaln", self.adaln.is_some()),
            ("attn_norm", self.attn_norm.is_some()),
        ];
        let refused: Vec<&str> = set.iter().filter(|(k, on)| *on && !supported.contains(k)).map(|(k, _)| *k).collect();
        if !refused.is_empty() {
            bail!("{family} has no architecture override for {} (it supports {})", refused.join(", "), supported.join(", "));
        }
        Ok(())
    }

    /// Applies depth / width / heads / mlp_ratio to one transformer's shape.
    pub fn apply_shape(&self, depth: &mut usize, width: &mut usize, heads: &mut usize, mlp_ratio: Option<&mut f64>) -> Result<()> {
        if let Some(d) = self.depth {
            *depth = d as usize;
        }
        if let Some(w) = self.width {
            *width = w as usize;
        }
        if let Some(h) = self.heads {
            *heads = h as usize;
        }
        if let (Some(r), Some(m)) = (self.mlp_ratio, mlp_ratio) {
            *m = r;
        }
        if *heads == 0 || !(*width).is_multiple_of(*heads) {
            bail!("width {} is not divisible by {} heads", width, heads);
        }
        Ok(())
    }
}

/// What a caller asks for: a model and how to sample it.
#[derive(Clone, Debug, Default)]
pub struct ModelRequest {
    /// Published name (`var-d16`) or, with `config`, a free label.
    pub model: Option<String>,
    /// Reference constructor arguments (`config.json` of a fixture, or written by hand).
    pub config: Option<PathBuf>,
    /// Generator checkpoint.
    pub ckpt: Option<PathBuf>,
    /// Tokenizer / VAE checkpoint.
    pub vae: Option<PathBuf>,
    /// Random weights instead of checkpoints (profiling only).
    pub random_init: bool,
    /// Sampler settings as written; the family parses and validates them.
    pub settings: RawSettings,
    /// Shape overrides for configurations without a released checkpoint; a family refuses the
    /// ones it has no counterpart for, by name.
    pub arch: ArchOverrides,
    /// Output resolution in pixels (None = the model's own); each family maps it onto its grid.
    pub resolution: Option<usize>,
}

impl ModelRequest {
    /// What an error in the reference configuration is about: `--config PATH`.
    pub fn config_source(&self) -> String {
        match &self.config {
            Some(path) => format!("--config {}", path.display()),
            None => "the reference config".to_string(),
        }
    }

    /// The folder of `--config` (where a fixture keeps its checkpoints).
    pub fn config_dir(&self) -> PathBuf {
        self.config.as_deref().and_then(Path::parent).map(Path::to_path_buf).unwrap_or_default()
    }

    /// Checkpoint paths: `ckpt` / `vae`, else the files a config names beside it (`beside`);
    /// `None` for random weights. `what` names the expected files for the error messages (an
    /// empty VAE name: the family needs no separate tokenizer file).
    pub fn weight_paths(
        &self,
        beside: (Option<PathBuf>, Option<PathBuf>),
        what: (&str, &str),
    ) -> Result<Option<(PathBuf, Option<PathBuf>)>> {
        if self.random_init {
            if self.ckpt.is_some() || self.vae.is_some() {
                bail!("--random-init builds random weights; do not also give --ckpt / --vae");
            }
            return Ok(None);
        }
        let ckpt = self.ckpt.clone().or(beside.0).with_context(|| format!("needs --ckpt {} (or --random-init for profiling)", what.0))?;
        let vae = self.vae.clone().or(beside.1);
        for p in std::iter::once(&ckpt).chain(vae.as_ref()) {
            if !p.is_file() {
                bail!("{}: file not found", p.display());
            }
        }
        if vae.is_none() && !what.1.is_empty() {
            bail!("needs --vae {}", what.1);
        }
        Ok(Some((ckpt, vae)))
    }
}

/// Builds the generator once device and dtype are known.
pub type Builder = Box<dyn FnOnce(&Device, DType) -> Result<Box<dyn Generator>>>;

/// A model whose configuration and sampler settings are known and whose weights are not
/// loaded yet.
pub struct ResolvedModel {
    pub name: String,
    pub family: Family,
    pub num_classes: usize,
    pub image_size: usize,
    /// The sampler settings with the family's defaults applied, as every manifest writes them
    /// (the same serialisation the built generator's [`Generator::settings`] starts from).
    pub settings: serde_json::Value,
    builder: Builder,
}

impl ResolvedModel {
    pub fn new(name: String, family: Family, num_classes: usize, image_size: usize, settings: serde_json::Value, builder: Builder) -> Self {
        Self { name, family, num_classes, image_size, settings, builder }
    }

    /// Loads the weights and returns the generator.
    pub fn build(self, device: &Device, dtype: DType) -> Result<Box<dyn Generator>> {
        (self.builder)(device, dtype)
    }
}

/// A problem with sampler settings: the setting at fault (when one is) and what is wrong.
#[derive(Clone, Debug, PartialEq)]
pub struct SettingsError {
    pub setting: Option<String>,
    pub message: String,
}

impl SettingsError {
    pub fn new(setting: &str, message: impl Into<String>) -> Self {
        Self { setting: Some(setting.to_string()), message: message.into() }
    }
}

impl fmt::Display for SettingsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.setting {
            Some(s) => write!(f, "sampler setting `{s}`: {}", self.message),
            None => write!(f, "sampler settings: {}", self.message),
        }
    }
}

impl std::error::Error for SettingsError {}

/// A family's typed sampler settings.
pub trait SamplerSettings: DeserializeOwned + Serialize + Default {
    /// Every range and consistency rule of the settings (no weights or files read).
    fn validate(&self) -> Result<(), SettingsError>;
}

/// Parses `raw` into the family's typed settings and validates them. Unknown settings are
/// refused by name (serde's `deny_unknown_fields` message, which lists the known ones).
pub fn parse_settings<S: SamplerSettings>(raw: &RawSettings) -> Result<S, SettingsError> {
    let settings: S = serde_json::from_value(serde_json::Value::Object(raw.clone())).map_err(|e| {
        let message = e.to_string();
        // serde names the offending key in backquotes: "unknown field `cfgg`, expected ...".
        let setting = message
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.split('`').next())
            .or_else(|| raw.keys().find(|k| message.contains(&format!("`{k}`"))).map(String::as_str))
            .map(str::to_string)
            // Type errors name no key: find the one that fails on its own.
            .or_else(|| {
                raw.iter()
                    .find(|(k, v)| {
                        let one = serde_json::Map::from_iter([((*k).clone(), (*v).clone())]);
                        serde_json::from_value::<S>(serde_json::Value::Object(one)).is_err()
                    })
                    .map(|(k, _)| k.clone())
            });
        SettingsError { setting, message }
    })?;
    settings.validate()?;
    Ok(settings)
}

/// Checks that an optional number is finite and passes `ok`.
pub fn check_range(setting: &str, value: Option<f64>, ok: impl Fn(f64) -> bool, rule: &str) -> Result<(), SettingsError> {
    match value {
        Some(v) if !v.is_finite() || !ok(v) => Err(SettingsError::new(setting, format!("{v} {rule}"))),
        _ => Ok(()),
    }
}

/// One generator family, as the harness and the command line see it.
pub trait ModelFamily: Sync {
    fn family(&self) -> Family;
    /// Name of the family in messages (`VAR`, `LlamaGen`, ...).
    fn label(&self) -> &'static str;
    /// Published model names this family builds.
    fn names(&self) -> &'static [&'static str];
    /// True when a reference `config.json` belongs to this family.
    fn recognises_config(&self, config: &serde_json::Value) -> bool;
    /// Parses and validates sampler settings (no weights read): the check suites run at load.
    fn check_settings(&self, settings: &RawSettings) -> Result<(), SettingsError>;
    /// Settings whose values are files (relative to the suite or the working directory), so
    /// callers can resolve them and treat them as inputs like checkpoints.
    fn file_settings(&self, _settings: &RawSettings) -> Vec<&'static str> {
        Vec::new()
    }
    /// The image side must be a positive multiple of this (pixels per token side).
    fn pixels_per_token(&self) -> usize;
    /// The sampler recipe a published name runs with when no setting is given.
    fn default_settings(&self, name: &str) -> Result<serde_json::Value>;
    /// Reads the configuration (`config`: the request's `config.json`, already parsed) and
    /// the settings; no weights are read.
    fn resolve(&self, request: &ModelRequest, config: Option<&serde_json::Value>) -> Result<ResolvedModel>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Demo {
        cfg: Option<f64>,
    }
    impl SamplerSettings for Demo {
        fn validate(&self) -> Result<(), SettingsError> {
            check_range("cfg", self.cfg, |v| v >= 0.0, "must be >= 0")
        }
    }

    #[test]
    fn settings_errors_name_the_setting() {
        let raw = |v: serde_json::Value| v.as_object().unwrap().clone();
        let e = parse_settings::<Demo>(&raw(serde_json::json!({"cfgg": 1.0}))).err().unwrap();
        assert_eq!(e.setting.as_deref(), Some("cfgg"));
        assert!(e.message.starts_with("unknown field `cfgg`, expected `cfg`"), "{}", e.message);
        let e = parse_settings::<Demo>(&raw(serde_json::json!({"cfg": -1.0}))).err().unwrap();
        assert_eq!((e.setting.as_deref(), e.message.as_str()), (Some("cfg"), "-1 must be >= 0"));
        let e = parse_settings::<Demo>(&raw(serde_json::json!({"cfg": "x"}))).err().unwrap();
        assert_eq!(e.setting.as_deref(), Some("cfg"));
        assert!(e.message.contains("invalid type"), "{}", e.message);
        assert_eq!(parse_settings::<Demo>(&raw(serde_json::json!({"cfg": 2}))).unwrap().cfg, Some(2.0));
    }
}
