//! Model names -> generator constructors, shared by the CLI (`sample`, `profile`, ...) and the
//! suite runner. The clap front end of the sampler options stays in the binary
//! (`src/cmd/model_registry.rs`); everything that builds a generator lives here, once.
//!
//! Each family contributes one [`RegistryEntry`] to [`REGISTRY`]: the published names it
//! answers to, a test that recognises its reference `config.json` (for `--config FILE.json`),
//! and a `resolve` function that reads the configuration (no weights yet) and returns what the
//! command must know before any work starts (class count, image size) plus a builder that loads
//! the weights. Adding a family = adding an entry.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use genbench_models::generator::{Family, Generator, SamplerSettings};
use genbench_models::generators::autonat::{AutoNatSpec, WeightSource as AutoNatWeights};
use genbench_models::generators::mar::{self as mar, MarConfig, MarGenerator, MarSampling};
use genbench_models::tokenizers::kl16::Kl16Config;
use genbench_models::generators::llamagen::{LlamaGenConfig, LlamaGenGenerator, LlamaGenSampling};
use genbench_models::generators::taming::{TamingConfig, TamingGenerator, TamingSampling};
use genbench_models::generators::var::{VarConfig, VarGenerator, VarSampling, VarWeights};
use std::path::{Path, PathBuf};

/// What the user asked for on the command line.
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
    pub settings: SamplerSettings,
    /// Shape overrides (depth, width, heads, ...) for configurations without a released
    /// checkpoint: profiling at matched sizes, VAR Table 3's ablation rows. A family refuses the
    /// ones it has no counterpart for, by name.
    pub arch: ArchOverrides,
    /// Output resolution in pixels (None = the model's own). Each family maps it onto its token
    /// grid; see [`var_patch_nums_for`] for VAR's scale schedule.
    pub resolution: Option<usize>,
}

pub use crate::suite::ArchOverrides;

/// Refuses every override in `arch` that is set but not in `supported` (by its suite key).
fn refuse_unsupported_arch(family: &str, arch: &ArchOverrides, supported: &[&str]) -> Result<()> {
    let set = [
        ("depth", arch.depth.is_some()),
        ("width", arch.width.is_some()),
        ("heads", arch.heads.is_some()),
        ("mlp_ratio", arch.mlp_ratio.is_some()),
        ("adaln", arch.adaln.is_some()),
        ("attn_norm", arch.attn_norm.is_some()),
    ];
    let refused: Vec<&str> = set.iter().filter(|(k, on)| *on && !supported.contains(k)).map(|(k, _)| *k).collect();
    if !refused.is_empty() {
        bail!("{family} has no architecture override for {} (it supports {})", refused.join(", "), supported.join(", "));
    }
    Ok(())
}

/// VAR's scale schedule for an output resolution: 256 and 512 px are the published schedules; a
/// smaller side cuts the 256 px schedule after the scale whose side is `resolution / 16` (128 px =
/// the first 7 scales, ending at 8x8), which is what a VAR trained at that size would run.
pub fn var_patch_nums_for(resolution: usize) -> Result<Vec<usize>> {
    use genbench_models::generators::var::{PATCH_NUMS_256, PATCH_NUMS_512};
    if resolution == 512 {
        return Ok(PATCH_NUMS_512.to_vec());
    }
    let side = resolution / 16;
    match PATCH_NUMS_256.iter().position(|&p| p == side) {
        Some(i) if side * 16 == resolution => Ok(PATCH_NUMS_256[..=i].to_vec()),
        _ => bail!(
            "VAR: no scale schedule for {resolution} px (512, or 16 x one of the 256 px scales {:?})",
            PATCH_NUMS_256
        ),
    }
}

/// Applies depth / width / heads / mlp_ratio overrides to one transformer's shape.
fn apply_shape(arch: &ArchOverrides, depth: &mut usize, width: &mut usize, heads: &mut usize, mlp_ratio: Option<&mut f64>) -> Result<()> {
    if let Some(d) = arch.depth {
        *depth = d as usize;
    }
    if let Some(w) = arch.width {
        *width = w as usize;
    }
    if let Some(h) = arch.heads {
        *heads = h as usize;
    }
    if let (Some(r), Some(m)) = (arch.mlp_ratio, mlp_ratio) {
        *m = r;
    }
    if *heads == 0 || !(*width).is_multiple_of(*heads) {
        bail!("width {} is not divisible by {} heads", width, heads);
    }
    Ok(())
}

/// A model whose configuration is known and whose weights are not loaded yet.
pub struct ResolvedModel {
    pub name: String,
    pub family: Family,
    pub num_classes: usize,
    pub image_size: usize,
    /// Settings after the family applied its defaults (for manifests), before loading.
    pub settings: serde_json::Value,
    builder: Box<dyn FnOnce(&Device, DType) -> Result<Box<dyn Generator>>>,
}

impl ResolvedModel {
    /// Loads the weights and returns the generator.
    pub fn build(self, device: &Device, dtype: DType) -> Result<Box<dyn Generator>> {
        (self.builder)(device, dtype)
    }
}

/// One family's entry.
pub struct RegistryEntry {
    pub family: Family,
    /// Published model names this entry builds.
    pub names: &'static [&'static str],
    /// True when a reference `config.json` belongs to this family.
    pub recognises_config: fn(&serde_json::Value) -> bool,
    pub resolve: fn(&ModelRequest, Option<&serde_json::Value>) -> Result<ResolvedModel>,
}

/// All families. Other families append their entries here.
pub const REGISTRY: &[RegistryEntry] = &[
    RegistryEntry {
        family: Family::Var,
        names: &VarConfig::PUBLISHED,
        recognises_config: |v| v.get("VAR").is_some() && v.get("VQVAE").is_some(),
        resolve: resolve_var,
    },
    RegistryEntry {
        family: Family::RasterAr,
        names: &LLAMAGEN_NAMES,
        recognises_config: LlamaGenConfig::is_reference_json,
        resolve: resolve_llamagen,
    },
    RegistryEntry {
        family: Family::RasterAr,
        names: &TAMING_NAMES,
        recognises_config: TamingConfig::is_reference_json,
        resolve: resolve_taming,
    },
    RegistryEntry {
        family: Family::Mar,
        names: &MAR_NAMES,
        recognises_config: mar::is_mar_config,
        resolve: resolve_mar,
    },
    RegistryEntry {
        family: Family::AutoNat,
        names: &AUTONAT_NAMES,
        recognises_config: AutoNatSpec::is_fixture_config,
        resolve: resolve_autonat,
    },
];

/// Every published name, for help and error messages.
pub fn known_models() -> Vec<&'static str> {
    REGISTRY.iter().flat_map(|e| e.names.iter().copied()).collect()
}

fn read_config(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read --config {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("--config {} is not valid JSON", path.display()))
}

/// Finds the family and reads the configuration; no weights are read.
pub fn resolve(req: &ModelRequest) -> Result<ResolvedModel> {
    let config = req.config.as_deref().map(read_config).transpose()?;
    let entry = match (&config, req.model.as_deref()) {
        (Some(cfg), _) => REGISTRY.iter().find(|e| (e.recognises_config)(cfg)).with_context(|| {
            format!(
                "--config {}: not a configuration of any known family ({:?}; e.g. a VAR fixture's config.json has `VAR` and `VQVAE` sections)",
                req.config.as_ref().unwrap().display(),
                REGISTRY.iter().map(|e| e.family).collect::<Vec<_>>()
            )
        })?,
        (None, Some(name)) => REGISTRY.iter().find(|e| e.names.contains(&name)).with_context(|| {
            format!("unknown model `{name}`; known: {} (or give --config FILE.json)", known_models().join(", "))
        })?,
        (None, None) => bail!("give --model NAME (one of {}) or --config FILE.json", known_models().join(", ")),
    };
    (entry.resolve)(req, config.as_ref())
}

fn resolve_var(req: &ModelRequest, config: Option<&serde_json::Value>) -> Result<ResolvedModel> {
    let (name, cfg, vae_cfg) = match config {
        Some(v) => {
            let (cfg, vae) = VarConfig::from_reference_json(v)?;
            let name = req.model.clone().unwrap_or_else(|| format!("var-d{}-custom", cfg.depth));
            (name, cfg, vae)
        }
        None => {
            let name = req.model.clone().expect("resolve checked the name");
            let (cfg, vae) = VarConfig::published(&name).expect("registry names are published");
            (name, cfg, vae)
        }
    };
    let (mut cfg, mut vae_cfg) = (cfg, vae_cfg);
    // `adaln = false` (Table 3 row 2) would need a start-token-conditioned VAR, which the VAR
    // implementation does not have; refusing it is better than timing a different network.
    refuse_unsupported_arch("VAR", &req.arch, &["depth", "width", "heads", "mlp_ratio", "attn_norm"])?;
    apply_shape(&req.arch, &mut cfg.depth, &mut cfg.embed_dim, &mut cfg.num_heads, Some(&mut cfg.mlp_ratio))?;
    if let Some(norm) = req.arch.attn_norm {
        cfg.attn_l2_norm = norm;
    }
    if let Some(px) = req.resolution.filter(|&px| px != vae_cfg.image_size()) {
        cfg.patch_nums = var_patch_nums_for(px)?;
        vae_cfg = genbench_models::tokenizers::var_vqvae::VarVqVaeConfig { patch_nums: cfg.patch_nums.clone(), ..vae_cfg };
    }
    let sampling = VarSampling::from_settings(&req.settings)?;
    let paths = if req.random_init {
        if req.ckpt.is_some() || req.vae.is_some() {
            bail!("--random-init builds random weights; do not also give --ckpt / --vae");
        }
        None
    } else {
        let ckpt = req.ckpt.clone().context("VAR needs --ckpt var_dNN.pth (or --random-init for profiling)")?;
        let vae = req.vae.clone().context("VAR needs --vae vae_ch160v4096z32.pth")?;
        for p in [&ckpt, &vae] {
            if !p.is_file() {
                bail!("{}: file not found", p.display());
            }
        }
        Some((ckpt, vae))
    };
    let num_classes = cfg.num_classes;
    let image_size = vae_cfg.image_size();
    let settings = serde_json::to_value(&sampling)?;
    let model_name = name.clone();
    Ok(ResolvedModel {
        name,
        family: Family::Var,
        num_classes,
        image_size,
        settings,
        builder: Box::new(move |device, dtype| {
            let weights = match &paths {
                Some((var, vae)) => VarWeights::Checkpoints { var, vae },
                None => VarWeights::RandomInit,
            };
            let g = VarGenerator::load(&model_name, &cfg, &vae_cfg, weights, sampling, device, dtype)?;
            Ok(Box::new(g) as Box<dyn Generator>)
        }),
    })
}

/// AutoNAT-L (released), AutoNAT-S (assumed U-ViT-S shape, no weights published) and MaskGIT
/// decoding (cosine schedule) on the AutoNAT-L network.
pub const AUTONAT_NAMES: [&str; 3] = ["autonat-l", "autonat-s", "maskgit"];

/// The AutoNAT spec (sampler settings applied) and weights a request names. With `--config`
/// (a fixture-style `config.json`), checkpoints default to the files it names beside it.
pub fn autonat_model(req: &ModelRequest, config: Option<&serde_json::Value>) -> Result<(AutoNatSpec, AutoNatWeights)> {
    let (mut spec, beside_config) = match config {
        Some(v) => {
            let label = req.model.clone().unwrap_or_else(|| "autonat-config".into());
            let dir = req.config.as_deref().and_then(Path::parent).map(Path::to_path_buf).unwrap_or_default();
            let file = |section: &str| v[section]["checkpoint"].as_str().map(|f| dir.join(f));
            (AutoNatSpec::from_fixture_config(v, &label)?, (file("generator"), file("tokenizer")))
        }
        None => {
            let spec = match req.model.as_deref() {
                Some("autonat-l") => AutoNatSpec::autonat_l(),
                Some("autonat-s") => AutoNatSpec::autonat_s(),
                Some("maskgit") => AutoNatSpec::maskgit(),
                other => bail!("not an AutoNAT model: {other:?}"),
            };
            (spec, (None, None))
        }
    };
    refuse_unsupported_arch("AutoNAT", &req.arch, &["depth", "width", "heads", "mlp_ratio"])?;
    apply_shape(&req.arch, &mut spec.net.depth, &mut spec.net.embed_dim, &mut spec.net.num_heads, Some(&mut spec.net.mlp_ratio))?;
    if let Some(px) = req.resolution.filter(|&px| px != spec.tokenizer.resolution) {
        // The VQGAN is convolutional; the U-ViT's token grid (and its learned positions) follow.
        spec.tokenizer.resolution = px;
        spec.net.img_size = spec.tokenizer.latent_side();
    }
    spec.apply_settings(&req.settings)?;
    // Fails early (before any weights are read) on a bad strategy file or step count.
    spec.resolve_strategy()?;
    let weights = if req.random_init {
        if req.ckpt.is_some() || req.vae.is_some() {
            bail!("--random-init builds random weights; do not also give --ckpt / --vae");
        }
        AutoNatWeights::Random { seed: 0 }
    } else {
        let nnet = req.ckpt.clone().or(beside_config.0).with_context(|| {
            format!("{} needs --ckpt nnet_ema.pth (or --random-init for profiling)", spec.name)
        })?;
        let vqgan = req.vae.clone().or(beside_config.1).with_context(|| {
            format!("{} needs --vae vqgan_jax_strongaug.ckpt (the MAGE VQGAN)", spec.name)
        })?;
        for p in [&nnet, &vqgan] {
            if !p.is_file() {
                bail!("{}: file not found", p.display());
            }
        }
        AutoNatWeights::Files { nnet, vqgan }
    };
    Ok((spec, weights))
}

fn resolve_autonat(req: &ModelRequest, config: Option<&serde_json::Value>) -> Result<ResolvedModel> {
    let (spec, weights) = autonat_model(req, config)?;
    let (strategy_name, strategy) = spec.resolve_strategy()?;
    let settings = serde_json::json!({
        "num_iter": strategy.steps(),
        "strategy": strategy_name,
        "manual_ratios": strategy.ratios,
        "manual_temp": strategy.remask_temps,
        "manual_samp_temp": strategy.samp_temps,
        "manual_cfg": strategy.cfg,
    });
    Ok(ResolvedModel {
        name: spec.name.clone(),
        family: Family::AutoNat,
        num_classes: spec.net.null_class() as usize,
        image_size: spec.tokenizer.resolution,
        settings,
        builder: Box::new(move |device, dtype| Ok(Box::new(spec.build(&weights, device, dtype)?) as Box<dyn Generator>)),
    })
}

/// LlamaGen c2i: `llamagen-<size>` is the size at the resolution of its published checkpoint
/// (B, L: 256 px; XL, XXL, 3B: 384 px, the only ones released for them); `-256` / `-384` pick the
/// resolution explicitly (it changes the RoPE grid and the token count, not the weights' shapes).
pub const LLAMAGEN_NAMES: [&str; 15] = [
    "llamagen-b",
    "llamagen-l",
    "llamagen-xl",
    "llamagen-xxl",
    "llamagen-3b",
    "llamagen-b-256",
    "llamagen-l-256",
    "llamagen-xl-256",
    "llamagen-xxl-256",
    "llamagen-3b-256",
    "llamagen-b-384",
    "llamagen-l-384",
    "llamagen-xl-384",
    "llamagen-xxl-384",
    "llamagen-3b-384",
];

/// The taming-transformers class-conditional ImageNet transformer (VQGAN f16-16384 + GPT).
pub const TAMING_NAMES: [&str; 1] = ["taming-cin"];

/// (size, image size, GETTING_STARTED.md guidance scale) of a published LlamaGen name.
fn llamagen_published(name: &str) -> Result<(&str, usize, f64)> {
    let rest = name.strip_prefix("llamagen-").with_context(|| format!("not a LlamaGen model: {name}"))?;
    let (size, px) = match rest.split_once('-') {
        Some((size, px)) => (size, px.parse::<usize>().with_context(|| format!("{name}: bad resolution"))?),
        None => (rest, if rest == "b" || rest == "l" { 256 } else { 384 }),
    };
    let cfg = match size {
        "b" | "l" => 2.0,
        "xl" | "xxl" => 1.75,
        "3b" => 1.65,
        other => bail!("unknown LlamaGen size `{other}`"),
    };
    Ok((size, px, cfg))
}

/// Checkpoint paths: `--ckpt` / `--vae`, else the files a `--config` names beside it.
fn weight_paths(req: &ModelRequest, beside: (Option<PathBuf>, Option<PathBuf>), what: (&str, &str)) -> Result<Option<(PathBuf, Option<PathBuf>)>> {
    if req.random_init {
        if req.ckpt.is_some() || req.vae.is_some() {
            bail!("--random-init builds random weights; do not also give --ckpt / --vae");
        }
        return Ok(None);
    }
    let ckpt = req.ckpt.clone().or(beside.0).with_context(|| format!("needs --ckpt {} (or --random-init for profiling)", what.0))?;
    let vae = req.vae.clone().or(beside.1);
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

fn resolve_llamagen(req: &ModelRequest, config: Option<&serde_json::Value>) -> Result<ResolvedModel> {
    let (name, cfg, default_cfg, beside) = match config {
        Some(v) => {
            let cfg = LlamaGenConfig::from_reference_json(v)?;
            let dir = req.config.as_deref().and_then(Path::parent).map(Path::to_path_buf).unwrap_or_default();
            let file = |section: &str| v[section]["checkpoint"].as_str().map(|f| dir.join(f));
            let name = req.model.clone().unwrap_or_else(|| format!("llamagen-{}x{}-custom", cfg.gpt.n_layer, cfg.gpt.dim));
            // sample_c2i_ddp.py's default guidance for unnamed configurations.
            (name, cfg, 1.5, (file("gpt"), file("vq")))
        }
        None => {
            let name = req.model.clone().expect("resolve checked the name");
            let (size, px, cfg_scale) = llamagen_published(&name)?;
            let cfg = LlamaGenConfig::published(size, px)?;
            (name, cfg, cfg_scale, (None, None))
        }
    };
    let mut cfg = cfg;
    refuse_unsupported_arch("LlamaGen", &req.arch, &["depth", "width", "heads"])?;
    apply_shape(&req.arch, &mut cfg.gpt.n_layer, &mut cfg.gpt.dim, &mut cfg.gpt.n_head, None)?;
    if let Some(px) = req.resolution {
        // One token per 16x16 patch; the RoPE grid and the KV cache follow the block size.
        let grid = px / cfg.vq.downsample_factor();
        cfg.image_size = px;
        cfg.gpt.block_size = grid * grid;
        cfg.validate()?;
    }
    let sampling = LlamaGenSampling::fid_recipe(default_cfg).with_settings(&req.settings)?;
    let paths = weight_paths(req, beside, ("c2i_*.pt", "vq_ds16_c2i.pt"))?;
    let settings = serde_json::to_value(&sampling)?;
    let (num_classes, image_size) = (cfg.gpt.num_classes, cfg.image_size);
    let model_name = name.clone();
    Ok(ResolvedModel {
        name,
        family: Family::RasterAr,
        num_classes,
        image_size,
        settings,
        builder: Box::new(move |device, dtype| {
            let g = match &paths {
                Some((gpt, Some(vq))) => LlamaGenGenerator::load(&model_name, cfg, gpt, vq, sampling, dtype, device)?,
                Some((_, None)) => unreachable!("weight_paths demands --vae"),
                None => LlamaGenGenerator::random_init(&model_name, cfg, sampling, 0, dtype, device)?,
            };
            Ok(Box::new(g) as Box<dyn Generator>)
        }),
    })
}

fn resolve_taming(req: &ModelRequest, config: Option<&serde_json::Value>) -> Result<ResolvedModel> {
    let (name, cfg, beside) = match config {
        Some(v) => {
            let cfg = TamingConfig::from_reference_json(v)?;
            let dir = req.config.as_deref().and_then(Path::parent).map(Path::to_path_buf).unwrap_or_default();
            let name = req.model.clone().unwrap_or_else(|| format!("taming-{}x{}-custom", cfg.gpt.n_layer, cfg.gpt.n_embd));
            (name, cfg, v["checkpoint"].as_str().map(|f| dir.join(f)))
        }
        None => (req.model.clone().expect("resolve checked the name"), TamingConfig::cin(), None),
    };
    let mut cfg = cfg;
    refuse_unsupported_arch("taming", &req.arch, &["depth", "width", "heads"])?;
    apply_shape(&req.arch, &mut cfg.gpt.n_layer, &mut cfg.gpt.n_embd, &mut cfg.gpt.n_head, None)?;
    if let Some(px) = req.resolution.filter(|&px| px != cfg.image_size) {
        bail!("taming-cin runs at {} px only (its GPT has learned positions for that grid), not {px}", cfg.image_size);
    }
    let sampling = TamingSampling::default().with_settings(&req.settings)?;
    // The VQGAN normally comes from the cin checkpoint itself (`first_stage_model.*`); --vae
    // may give a separate vqgan_imagenet_f16_16384 file.
    let paths = weight_paths(req, (beside, None), ("last.ckpt (the cin transformer)", ""))?;
    let settings = serde_json::to_value(&sampling)?;
    let (num_classes, image_size) = (cfg.n_classes, cfg.image_size);
    let model_name = name.clone();
    Ok(ResolvedModel {
        name,
        family: Family::RasterAr,
        num_classes,
        image_size,
        settings,
        builder: Box::new(move |device, dtype| {
            let g = match &paths {
                Some((ckpt, vq)) => TamingGenerator::load(&model_name, cfg, ckpt, vq.as_deref(), sampling, dtype, device)?,
                None => TamingGenerator::random_init(&model_name, cfg, sampling, 0, dtype, device)?,
            };
            Ok(Box::new(g) as Box<dyn Generator>)
        }),
    })
}

/// MAR-B / L / H with the released DiffLoss sizes (256 px, KL-16 VAE).
pub const MAR_NAMES: [&str; 3] = ["mar-b", "mar-l", "mar-h"];

/// MAR: `--ckpt checkpoint-last.pth` (its `model_ema` weights) and `--vae kl16.ckpt`; with
/// `--config` (a fixture-style `config.json`), both default to the files beside it.
fn resolve_mar(req: &ModelRequest, config: Option<&serde_json::Value>) -> Result<ResolvedModel> {
    let (name, cfg, vae_cfg, beside) = match config {
        Some(v) => {
            let (cfg, vae_cfg) = mar::configs_from_json(v)?;
            let dir = req.config.as_deref().and_then(Path::parent).map(Path::to_path_buf).unwrap_or_default();
            let exists = |f: &str| Some(dir.join(f)).filter(|p| p.is_file());
            let name = req.model.clone().unwrap_or_else(|| format!("mar-{}x{}-custom", cfg.encoder_depth, cfg.encoder_embed_dim));
            (name, cfg, vae_cfg, (exists("checkpoint-last.pth"), exists("kl16.ckpt")))
        }
        None => {
            let name = req.model.clone().expect("resolve checked the name");
            let cfg = match name.as_str() {
                "mar-b" => MarConfig::mar_base(),
                "mar-l" => MarConfig::mar_large(),
                "mar-h" => MarConfig::mar_huge(),
                other => bail!("not a MAR model: {other}"),
            };
            (name, cfg, Kl16Config::published(), (None, None))
        }
    };
    let mut cfg = cfg;
    // MAR has an encoder and a decoder of the same shape; an override sets both (so `depth = 6`
    // gives 6 + 6 blocks, as MAR-B has 12 + 12). The diffusion MLP keeps its size.
    refuse_unsupported_arch("MAR", &req.arch, &["depth", "width", "heads", "mlp_ratio"])?;
    apply_shape(&req.arch, &mut cfg.encoder_depth, &mut cfg.encoder_embed_dim, &mut cfg.encoder_num_heads, Some(&mut cfg.mlp_ratio))?;
    apply_shape(&req.arch, &mut cfg.decoder_depth, &mut cfg.decoder_embed_dim, &mut cfg.decoder_num_heads, None)?;
    if let Some(px) = req.resolution {
        cfg.img_size = px;
    }
    // Settings are checked before any weights are read (num_iter range, refused options).
    let sampling = MarSampling::for_model(&req.settings, &cfg)?;
    sampling.validate(cfg.seq_len())?;
    let paths = weight_paths(req, beside, ("checkpoint-last.pth (weights under model_ema)", "kl16.ckpt"))?;
    let settings = serde_json::to_value(&sampling)?;
    let (num_classes, image_size) = (cfg.class_num, cfg.img_size);
    let model_name = name.clone();
    let generic = req.settings.clone();
    Ok(ResolvedModel {
        name,
        family: Family::Mar,
        num_classes,
        image_size,
        settings,
        builder: Box::new(move |device, dtype| {
            if dtype != DType::F32 {
                bail!("MAR runs in float32 (its diffusion loop multiplies latents of magnitude up to 1e5 by schedule coefficients rounded to f32, as the reference does); use --dtype f32");
            }
            let g = match &paths {
                Some((ckpt, Some(vae))) => MarGenerator::from_checkpoints(&model_name, &cfg, ckpt, &vae_cfg, vae, device, &generic)?,
                Some((_, None)) => unreachable!("weight_paths demands --vae"),
                None => MarGenerator::random(&model_name, &cfg, &vae_cfg, 0, device, &generic)?,
            };
            Ok(Box::new(g) as Box<dyn Generator>)
        }),
    })
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
        req.settings.num_iter = Some(12);
        assert_eq!(resolve(&req).unwrap().settings["num_iter"], 12);
        let mut req = ModelRequest { model: Some("autonat-l".into()), random_init: true, ..Default::default() };
        req.settings.num_iter = Some(4);
        let e = resolve(&req).err().unwrap().to_string();
        assert!(e.contains("no strategy for 4 steps"), "{e}");
        req.settings.top_k = Some(5);
        let e = resolve(&req).err().unwrap().to_string();
        assert!(e.contains("`top_k`"), "{e}");
        let autonat_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models/autonat");
        let mut req = ModelRequest { config: Some(autonat_dir.join("config.json")), ..Default::default() };
        req.settings.strategy = Some(autonat_dir.join("strategy_T4.yaml").display().to_string());
        req.settings.num_iter = Some(4);
        let r = resolve(&req).unwrap();
        assert_eq!((r.num_classes, r.image_size, r.family), (10, 64, Family::AutoNat));
        assert_eq!(parse_labels("5, 2,7").unwrap(), vec![5, 2, 7]);
        assert!(parse_labels("5,x").is_err());
    }

    #[test]
    fn shape_and_resolution_overrides() {
        assert_eq!(var_patch_nums_for(128).unwrap(), [1, 2, 3, 4, 5, 6, 8]);
        assert_eq!(var_patch_nums_for(64).unwrap(), [1, 2, 3, 4]);
        assert_eq!(var_patch_nums_for(512).unwrap().last(), Some(&32));
        assert!(var_patch_nums_for(112).unwrap_err().to_string().contains("112 px"));
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
        r.settings.strategy = Some("autonat-l-t8".into());
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
        req.settings.num_iter = Some(257);
        let e = resolve(&req).err().unwrap().to_string();
        assert!(e.contains("1..=256"), "{e}");
        req.settings.num_iter = Some(0);
        assert!(resolve(&req).is_err());
        req.settings.num_iter = None;
        req.settings.top_p = Some(0.9);
        assert!(resolve(&req).err().unwrap().to_string().contains("top_p"));
        // The fixture's config.json is a valid --config with its checkpoints beside it.
        let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models/mar/config.json");
        let mut req = ModelRequest { config: Some(fixture), ..Default::default() };
        req.settings.num_iter = Some(4);
        req.settings.cfg = Some(3.0);
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
        assert_eq!(r.settings["cfg_scale"], 2.0);
        let r = resolve(&ModelRequest { model: Some("llamagen-xl".into()), random_init: true, ..Default::default() }).unwrap();
        assert_eq!(r.image_size, 384);
        let r = resolve(&ModelRequest { model: Some("llamagen-3b-256".into()), random_init: true, ..Default::default() }).unwrap();
        assert_eq!(r.image_size, 256);
        let mut req = ModelRequest { model: Some("llamagen-l".into()), random_init: true, ..Default::default() };
        req.settings.cfg_interval = Some(3);
        req.settings.cfg = Some(4.0);
        let r = resolve(&req).unwrap();
        assert_eq!((r.settings["cfg_interval"].as_i64(), r.settings["cfg_scale"].as_f64()), (Some(3), Some(4.0)));
        let e = resolve(&ModelRequest { model: Some("llamagen-b".into()), ..Default::default() }).err().unwrap().to_string();
        assert!(e.contains("--ckpt"), "{e}");
        let r = resolve(&ModelRequest { model: Some("taming-cin".into()), random_init: true, ..Default::default() }).unwrap();
        assert_eq!((r.num_classes, r.image_size), (1000, 256));
        let mut req = ModelRequest { model: Some("taming-cin".into()), random_init: true, ..Default::default() };
        req.settings.cfg = Some(2.0);
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
