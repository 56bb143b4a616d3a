//! The generator families genbench knows, and request -> generator over them. Everything a
//! family knows about itself (names, configs, settings, defaults, construction) lives in its
//! file in `genbench_models::generators`, behind [`ModelFamily`]; adding a family is one line
//! in [`FAMILIES`].

use anyhow::{bail, Context, Result};
use genbench_models::generator::Family;
use genbench_models::generators::{autonat::AutoNatFamily, llamagen::LlamaGenFamily, mar::MarFamily, taming::TamingFamily, var::VarFamily};
use std::path::Path;

pub use genbench_models::family::{ArchOverrides, ModelFamily, ModelRequest, RawSettings, ResolvedModel, SettingsError};

/// Every family, in the order help and error messages list them.
pub const FAMILIES: &[&dyn ModelFamily] = &[&VarFamily, &LlamaGenFamily, &TamingFamily, &MarFamily, &AutoNatFamily];

/// Every published name, for help and error messages.
pub fn known_models() -> Vec<&'static str> {
    FAMILIES.iter().flat_map(|f| f.names().iter().copied()).collect()
}

fn read_config(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read --config {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("--config {} is not valid JSON", path.display()))
}

/// The family that builds `model` (a published name, or a reference `config.json` path),
/// among those of kind `family`. A config that cannot be read yet (a path still to be resolved
/// or created) falls back to the only family of that kind, if there is one.
pub fn family_of(family: Family, model: &str, config_dir: &Path) -> Result<&'static dyn ModelFamily> {
    let candidates: Vec<&'static dyn ModelFamily> = FAMILIES.iter().copied().filter(|f| f.family() == family).collect();
    if let Some(f) = candidates.iter().find(|f| f.names().contains(&model)) {
        return Ok(*f);
    }
    if model.ends_with(".json") {
        if let Ok(cfg) = read_config(&config_dir.join(model)) {
            if let Some(f) = candidates.iter().find(|f| f.recognises_config(&cfg)) {
                return Ok(*f);
            }
        }
    }
    match candidates.as_slice() {
        [only] if model.ends_with(".json") => Ok(*only),
        _ => bail!(
            "unknown {family:?} model `{model}`; known: {} (or a reference config.json)",
            candidates.iter().flat_map(|f| f.names().iter().copied()).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// Finds the family and reads the configuration and the settings; no weights are read.
pub fn resolve(req: &ModelRequest) -> Result<ResolvedModel> {
    let config = req.config.as_deref().map(read_config).transpose()?;
    let family = match (&config, req.model.as_deref()) {
        (Some(cfg), _) => FAMILIES.iter().find(|f| f.recognises_config(cfg)).with_context(|| {
            format!(
                "--config {}: not a configuration of any known family ({}; e.g. a VAR fixture's config.json has `VAR` and `VQVAE` sections)",
                req.config.as_ref().unwrap().display(),
                FAMILIES.iter().map(|f| f.label()).collect::<Vec<_>>().join(", ")
            )
        })?,
        (None, Some(name)) => FAMILIES.iter().find(|f| f.names().contains(&name)).with_context(|| {
            format!("unknown model `{name}`; known: {} (or give --config FILE.json)", known_models().join(", "))
        })?,
        (None, None) => bail!("give --model NAME (one of {}) or --config FILE.json", known_models().join(", ")),
    };
    family.resolve(req, config.as_ref())
}

/// Parses `--labels 5,2,7`.
pub fn parse_labels(s: &str) -> Result<Vec<u32>> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(|x| x.parse::<u32>().with_context(|| format!("--labels: `{x}` is not a class id")))
        .collect()
}
#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use std::path::PathBuf;

    #[test]
    fn resolves_published_and_config_models() {
        let r = resolve(&ModelRequest { model: Some("var-d16".into()), random_init: true, ..Default::default() }).unwrap();
        assert_eq!((r.num_classes, r.image_size, r.family), (1000, 256, Family::Var));
        let r = resolve(&ModelRequest { model: Some("var-d36".into()), random_init: true, ..Default::default() }).unwrap();
        assert_eq!(r.image_size, 512);
        let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models/var/config.json");
        let r = resolve(&ModelRequest { config: Some(fixture), random_init: true, ..Default::default() }).unwrap();
        assert_eq!((r.num_classes, r.image_size), (10, 64));
        let e = resolve(&ModelRequest { model: Some("var-d99".into()), ..Default::default() }).err().unwrap().to_string();
        assert!(e.contains("unknown model `var-d99`") && e.contains("var-d16"), "{e}");
        let e = resolve(&ModelRequest { model: Some("var-d16".into()), ..Default::default() }).err().unwrap().to_string();
        assert!(e.contains("--ckpt"), "{e}");
        // AutoNAT: published names, the fixture config, strategies, refused settings.
        let r = resolve(&ModelRequest { model: Some("autonat-l".into()), random_init: true, ..Default::default() }).unwrap();
        assert_eq!((r.num_classes, r.image_size, r.family), (1000, 256, Family::AutoNat));
        assert_eq!(r.settings["strategy"], "autonat-l-t8");
        let mut req = ModelRequest { model: Some("maskgit".into()), random_init: true, ..Default::default() };
        req.settings.insert("num_iter".into(), serde_json::json!(12));
        assert_eq!(resolve(&req).unwrap().settings["num_iter"], 12);
        let mut req = ModelRequest { model: Some("autonat-l".into()), random_init: true, ..Default::default() };
        req.settings.insert("num_iter".into(), serde_json::json!(4));
        let e = resolve(&req).err().unwrap().to_string();
        assert!(e.contains("no strategy for 4 steps"), "{e}");
        req.settings.insert("top_k".into(), serde_json::json!(5));
        let e = resolve(&req).err().unwrap().to_string();
        assert!(e.contains("`top_k`"), "{e}");
        let autonat_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models/autonat");
        let mut req = ModelRequest { config: Some(autonat_dir.join("config.json")), ..Default::default() };
        req.settings.insert("strategy".into(), serde_json::json!(autonat_dir.join("strategy_T4.yaml").display().to_string()));
        req.settings.insert("num_iter".into(), serde_json::json!(4));
        let r = resolve(&req).unwrap();
        assert_eq!((r.num_classes, r.image_size, r.family), (10, 64, Family::AutoNat));
        assert_eq!(parse_labels("5, 2,7").unwrap(), vec![5, 2, 7]);
        assert!(parse_labels("5,x").is_err());
    }

    #[test]
    fn shape_and_resolution_overrides() {
        let small = ArchOverrides { depth: Some(6), width: Some(384), heads: Some(6), ..Default::default() };
        let req = |model: &str, px: usize| ModelRequest {
            model: Some(model.into()),
            random_init: true,
            arch: small.clone(),
            resolution: Some(px),
            ..Default::default()
        };
        assert_eq!(resolve(&req("var-d16", 128)).unwrap().image_size, 128);
        assert_eq!(resolve(&req("llamagen-b", 192)).unwrap().image_size, 192);
        assert_eq!(resolve(&req("mar-b", 128)).unwrap().image_size, 128);
        // A reshaped AutoNAT-L is not the released model, so its strategy is named explicitly.
        let mut r = req("autonat-l", 128);
        r.settings.insert("strategy".into(), serde_json::json!("autonat-l-t8"));
        assert_eq!(resolve(&r).unwrap().image_size, 128);
        let e = resolve(&req("taming-cin", 128)).err().unwrap().to_string();
        assert!(e.contains("256 px only"), "{e}");
        // Refused overrides name themselves; an indivisible width is caught before building.
        let mut r = req("var-d16", 256);
        r.arch.adaln = Some(false);
        let e = resolve(&r).err().unwrap().to_string();
        assert!(e.contains("adaln"), "{e}");
        let mut r = req("llamagen-b", 256);
        r.arch.heads = Some(5);
        assert!(resolve(&r).err().unwrap().to_string().contains("not divisible"));
        // The override reaches the network: a smaller VAR has fewer FLOPs than VAR-d16.
        let build = |r: ModelRequest| resolve(&r).unwrap().build(&Device::Cpu, DType::F32).unwrap().flops_per_image();
        let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models/var/config.json");
        let base = ModelRequest { config: Some(fixture), random_init: true, ..Default::default() };
        let mut deeper = base.clone();
        deeper.arch.depth = Some(4);
        assert!(build(deeper).transformer > 1.9 * build(base.clone()).transformer, "fixture depth 2 -> 4");
        let mut smaller = base.clone();
        smaller.resolution = Some(32);
        assert!(build(smaller).total() < build(base).total());
    }

    #[test]
    fn resolves_mar_models() {
        let r = resolve(&ModelRequest { model: Some("mar-b".into()), random_init: true, ..Default::default() }).unwrap();
        assert_eq!((r.num_classes, r.image_size, r.family), (1000, 256, Family::Mar));
        assert_eq!(r.settings["num_iter"], 64);
        let e = resolve(&ModelRequest { model: Some("mar-h".into()), ..Default::default() }).err().unwrap().to_string();
        assert!(e.contains("--ckpt") && e.contains("model_ema"), "{e}");
        let mut req = ModelRequest { model: Some("mar-l".into()), random_init: true, ..Default::default() };
        req.settings.insert("num_iter".into(), serde_json::json!(257));
        let e = resolve(&req).err().unwrap().to_string();
        assert!(e.contains("1..=256"), "{e}");
        req.settings.insert("num_iter".into(), serde_json::json!(0));
        assert!(resolve(&req).is_err());
        req.settings.remove("num_iter");
        req.settings.insert("top_p".into(), serde_json::json!(0.9));
        assert!(resolve(&req).err().unwrap().to_string().contains("top_p"));
        // The fixture's config.json is a valid --config with its checkpoints beside it.
        let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models/mar/config.json");
        let mut req = ModelRequest { config: Some(fixture), ..Default::default() };
        req.settings.insert("num_iter".into(), serde_json::json!(4));
        req.settings.insert("cfg".into(), serde_json::json!(3.0));
        let r = resolve(&req).unwrap();
        assert_eq!(r.settings["num_sampling_steps"], 10, "the config's own diffusion step count is the default");
        assert_eq!((r.num_classes, r.image_size, r.family), (10, 64, Family::Mar));
        let mut g = r.build(&Device::Cpu, DType::F32).unwrap();
        let mut log = genbench_models::generator::StepLog::default();
        let s = g.sample(&[1, 2], 7, &mut log).unwrap();
        assert_eq!((s.n, s.height, s.width), (2, 64, 64));
        assert_eq!(s.latents.as_ref().unwrap().len(), 2 * 16 * 4 * 4);
        use genbench_models::generator::StepKind;
        let count = |k| log.records.iter().filter(|r| r.kind == k).count();
        assert_eq!((count(StepKind::Transformer), count(StepKind::DiffusionMlp), count(StepKind::Decode)), (4, 4, 1));
    }

    #[test]
    fn resolves_raster_ar_models() {
        let r = resolve(&ModelRequest { model: Some("llamagen-b".into()), random_init: true, ..Default::default() }).unwrap();
        assert_eq!((r.num_classes, r.image_size, r.family), (1000, 256, Family::RasterAr));
        assert_eq!(r.settings["cfg"], 2.0);
        let r = resolve(&ModelRequest { model: Some("llamagen-xl".into()), random_init: true, ..Default::default() }).unwrap();
        assert_eq!(r.image_size, 384);
        let r = resolve(&ModelRequest { model: Some("llamagen-3b-256".into()), random_init: true, ..Default::default() }).unwrap();
        assert_eq!(r.image_size, 256);
        let mut req = ModelRequest { model: Some("llamagen-l".into()), random_init: true, ..Default::default() };
        req.settings.insert("cfg_interval".into(), serde_json::json!(3));
        req.settings.insert("cfg".into(), serde_json::json!(4.0));
        let r = resolve(&req).unwrap();
        assert_eq!((r.settings["cfg_interval"].as_i64(), r.settings["cfg"].as_f64()), (Some(3), Some(4.0)));
        let e = resolve(&ModelRequest { model: Some("llamagen-b".into()), ..Default::default() }).err().unwrap().to_string();
        assert!(e.contains("--ckpt"), "{e}");
        let r = resolve(&ModelRequest { model: Some("taming-cin".into()), random_init: true, ..Default::default() }).unwrap();
        assert_eq!((r.num_classes, r.image_size), (1000, 256));
        let mut req = ModelRequest { model: Some("taming-cin".into()), random_init: true, ..Default::default() };
        req.settings.insert("cfg".into(), serde_json::json!(2.0));
        assert!(resolve(&req).err().unwrap().to_string().contains("guidance"));
        // The fixtures' config.json are valid --config, with their checkpoints beside them.
        let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models");
        for (dir, classes, size) in [("ar_llamagen", 10, 64), ("ar_taming", 10, 64)] {
            let req = ModelRequest { config: Some(fixtures.join(dir).join("config.json")), ..Default::default() };
            let r = resolve(&req).unwrap();
            assert_eq!((r.num_classes, r.image_size, r.family), (classes, size, Family::RasterAr), "{dir}");
            let mut g = r.build(&Device::Cpu, DType::F32).unwrap();
            let mut log = genbench_models::generator::StepLog::default();
            let s = g.sample(&[1, 2], 7, &mut log).unwrap();
            assert_eq!((s.n, s.height, s.width, s.images.len()), (2, 64, 64, 2 * 64 * 64 * 3), "{dir}");
            assert_eq!(s.token_ids.as_ref().unwrap().len(), 2 * 16);
            assert_eq!(log.records.len(), 17, "{dir}: 16 token steps + 1 decode");
        }
    }
}
