//! VAR key lists and bad-input checks.
//!
//! * A full-size transformer built from each published config (d16, d20, d24, d30, d36-s 512 px)
//!   and the published VQVAE request exactly the names, shapes and int/float kinds of the
//!   published checkpoints (`reference/checkpoint-keys/var_*.txt`, copied into
//!   tests/fixtures/reference from shared/). The models are built through the shape recorder, so
//!   no weights are allocated.
//! * The fixture's tiny models request exactly the fixture's `keys.txt`.
//! * Broken checkpoints and mismatched pairs fail with messages that name the problem.

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;
use genbench_models::checkpoint::{compare_keys, parse_key_list, KeyShape, ShapeRecorder, StrictWeights};
use genbench_models::generator::NoObserver;
use genbench_models::generators::var::{check_checkpoints_fit, VarConfig, VarModel, VarSampling, VarTransformer};
use genbench_models::tokenizers::var_vqvae::{VarVqVae, VarVqVaeConfig};
use genbench_runtime::checkpoint::TorchCheckpoint;
use genbench_runtime::SeededSource;
use std::collections::BTreeMap;
use std::path::PathBuf;

fn published_keys(name: &str) -> Vec<KeyShape> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let candidates = [
        root.join("../tests/fixtures/reference/checkpoint-keys").join(name),
        root.join("../../shared/reference/checkpoint-keys").join(name),
    ];
    let path = candidates.iter().find(|p| p.is_file()).unwrap_or_else(|| panic!("key list {name} not found in {candidates:?}"));
    eprintln!("published key list: {}", path.display());
    parse_key_list(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn record(build: impl FnOnce(candle_nn::VarBuilder<'static>)) -> Vec<KeyShape> {
    let rec = ShapeRecorder::new();
    build(rec.var_builder(DType::F32));
    rec.records()
}

fn values(keys: &[KeyShape]) -> usize {
    keys.iter().map(|k| k.shape.iter().product::<usize>()).sum()
}

#[test]
fn published_transformers_request_the_published_keys() {
    for (list, cfg) in [
        ("var_d16.txt", VarConfig::var_d16()),
        ("var_d20.txt", VarConfig::var_d20()),
        ("var_d24.txt", VarConfig::var_d24()),
        ("var_d30.txt", VarConfig::var_d30()),
        ("var_d36_saln_512.txt", VarConfig::var_d36()),
    ] {
        let keys = record(|vb| {
            VarTransformer::load(&cfg, vb).unwrap();
        });
        let published = published_keys(list);
        compare_keys(&keys, &published).unwrap_or_else(|e| panic!("{list}:\n{e}"));
        eprintln!("{list}: {} tensors, {} values: exact match", keys.len(), values(&keys));
    }
}

#[test]
fn published_vqvae_requests_the_published_keys() {
    for patch_nums in [&[1usize, 2, 3, 4, 5, 6, 8, 10, 13, 16][..], &[1, 2, 3, 4, 6, 9, 13, 18, 24, 32][..]] {
        let cfg = VarVqVaeConfig::published_with_patch_nums(patch_nums);
        let keys = record(|vb| {
            VarVqVae::load(&cfg, vb).unwrap();
        });
        compare_keys(&keys, &published_keys("var_vae_ch160v4096z32.txt")).unwrap_or_else(|e| panic!("{e}"));
        // 108,948,355 parameters + the (10, 4096) ema_vocab_hit_SV buffer.
        assert_eq!(values(&keys), 108_948_355 + 10 * 4096);
    }
}

/// Splits a fixture keys.txt into its `# <file>: ...` sections.
fn fixture_sections(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if let Some(h) = line.strip_prefix("# ") {
            if let Some(file) = h.split(':').next().filter(|f| f.ends_with(".pth")) {
                current = Some(file.to_string());
                out.insert(file.to_string(), String::new());
                continue;
            }
        }
        if let Some(c) = &current {
            let s = out.get_mut(c).unwrap();
            s.push_str(line);
            s.push('\n');
        }
    }
    out
}

#[test]
fn fixture_models_request_the_fixture_keys() {
    let dir = fixture_dir("GENBENCH_FIXTURE_VAR", "var");
    let (var_cfg, vae_cfg) = VarConfig::from_reference_json(&load_json(&dir, "config.json")).unwrap();
    let sections = fixture_sections(&std::fs::read_to_string(dir.join("keys.txt")).unwrap());
    let var_keys = record(|vb| {
        VarTransformer::load(&var_cfg, vb).unwrap();
    });
    compare_keys(&var_keys, &parse_key_list(&sections["var.pth"]).unwrap()).unwrap();
    let vae_keys = record(|vb| {
        VarVqVae::load(&vae_cfg, vb).unwrap();
    });
    compare_keys(&vae_keys, &parse_key_list(&sections["vae.pth"]).unwrap()).unwrap();
}

fn fixture_weights(file: &str) -> BTreeMap<String, Tensor> {
    let dir = fixture_dir("GENBENCH_FIXTURE_VAR", "var");
    TorchCheckpoint::open(&dir.join(file)).unwrap().load("", None, &Device::Cpu).unwrap()
}

fn fixture_configs() -> (VarConfig, VarVqVaeConfig) {
    let dir = fixture_dir("GENBENCH_FIXTURE_VAR", "var");
    VarConfig::from_reference_json(&load_json(&dir, "config.json")).unwrap()
}

#[test]
fn missing_or_misshaped_tensors_name_the_key_and_expected_shape() {
    let (cfg, _) = fixture_configs();
    let (c, hidden) = (cfg.embed_dim, cfg.mlp_hidden());
    // Missing.
    let mut w = fixture_weights("var.pth");
    w.remove("blocks.1.ffn.fc1.bias");
    let sw = StrictWeights::new(w, "var.pth");
    let e = VarTransformer::load(&cfg, sw.var_builder(DType::F32, &Device::Cpu)).unwrap_err().to_string();
    assert!(e.contains("missing tensor `blocks.1.ffn.fc1.bias`") && e.contains(&format!("[{hidden}]")), "{e}");
    // Mis-shaped: the first offending key in module order is reported.
    let mut w = fixture_weights("var.pth");
    w.insert("blocks.0.attn.proj.weight".into(), Tensor::zeros((c, c + 1), DType::F32, &Device::Cpu).unwrap());
    w.insert("head.weight".into(), Tensor::zeros((3, c), DType::F32, &Device::Cpu).unwrap());
    let sw = StrictWeights::new(w, "var.pth");
    let e = VarTransformer::load(&cfg, sw.var_builder(DType::F32, &Device::Cpu)).unwrap_err().to_string();
    assert!(
        e.contains("`blocks.0.attn.proj.weight`") && e.contains(&format!("[{c}, {}]", c + 1)) && e.contains(&format!("[{c}, {c}]")),
        "{e}"
    );
    // Unexpected extra entries are reported after a successful build.
    let mut w = fixture_weights("var.pth");
    w.insert("blocks.99.attn.proj.weight".into(), Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap());
    let sw = StrictWeights::new(w, "var.pth");
    VarTransformer::load(&cfg, sw.var_builder(DType::F32, &Device::Cpu)).unwrap();
    let e = sw.ensure_all_used(|_| false).unwrap_err().to_string();
    assert!(e.contains("`blocks.99.attn.proj.weight`"), "{e}");
}

#[test]
fn vae_that_does_not_fit_the_transformer_says_so() {
    let (cfg, vae_cfg) = fixture_configs();
    let var = StrictWeights::new(fixture_weights("var.pth"), "var.pth");
    check_checkpoints_fit(&cfg, &var, &StrictWeights::new(fixture_weights("vae.pth"), "vae.pth")).unwrap();
    // Codebook size.
    let mut vae = fixture_weights("vae.pth");
    vae.insert("quantize.embedding.weight".into(), Tensor::zeros((cfg.vocab_size + 1, cfg.cvae), DType::F32, &Device::Cpu).unwrap());
    let e = check_checkpoints_fit(&cfg, &var, &StrictWeights::new(vae, "big_vae.pth")).unwrap_err().to_string();
    assert!(
        e.contains(&format!("codebook of {} entries", cfg.vocab_size + 1)) && e.contains(&format!("predicts {} classes", cfg.vocab_size)),
        "{e}"
    );
    // Number of scales of the VAE.
    let mut vae = fixture_weights("vae.pth");
    vae.insert(
        "quantize.ema_vocab_hit_SV".into(),
        Tensor::zeros((cfg.num_scales() + 6, cfg.vocab_size), DType::F32, &Device::Cpu).unwrap(),
    );
    let e = check_checkpoints_fit(&cfg, &var, &StrictWeights::new(vae, "vae10.pth")).unwrap_err().to_string();
    assert!(e.contains(&format!("trained for {} scales", cfg.num_scales() + 6)), "{e}");
    // patch_nums of the configuration against the transformer checkpoint.
    let mut other = cfg.clone();
    other.patch_nums.push(cfg.patch_nums.last().unwrap() + 1);
    let e = check_checkpoints_fit(&other, &var, &StrictWeights::new(fixture_weights("vae.pth"), "vae.pth")).unwrap_err().to_string();
    assert!(e.contains("scales") || e.contains("token positions"), "{e}");
    // Configs that disagree.
    let mut bad_vae = vae_cfg.clone();
    bad_vae.patch_nums = vec![1, 2, 4];
    let e = cfg.validate_with(&bad_vae).unwrap_err().to_string();
    assert!(e.contains("do not match the transformer's patch_nums"), "{e}");
    let mut bad_vae = vae_cfg;
    bad_vae.vocab_size += 1;
    assert!(cfg.validate_with(&bad_vae).unwrap_err().to_string().contains("codebook"));
}

#[test]
fn class_id_out_of_range_fails_before_any_work() {
    let (cfg, vae_cfg) = fixture_configs();
    let tr = VarTransformer::load(&cfg, StrictWeights::new(fixture_weights("var.pth"), "var.pth").var_builder(DType::F32, &Device::Cpu))
        .unwrap();
    let vae =
        VarVqVae::load(&vae_cfg, StrictWeights::new(fixture_weights("vae.pth"), "vae.pth").var_builder(DType::F32, &Device::Cpu)).unwrap();
    let model = VarModel::new(tr, vae).unwrap();
    let mut log = genbench_models::generator::StepLog::default();
    let e = model
        .sample_fhat(&[0, cfg.num_classes as u32], &VarSampling::default(), &mut SeededSource::new(0), &mut log, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains(&format!("class id {} is out of range", cfg.num_classes)), "{e}");
    assert!(log.records.is_empty(), "no step may run");
    assert!(model.sample_fhat(&[], &VarSampling::default(), &mut SeededSource::new(0), &mut NoObserver, None).is_err());
}
