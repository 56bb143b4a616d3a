//! Key lists of the raster-AR models: a full-size model built from each published config
//! (weight-free, through the shape recorder) requests exactly the names, shapes and dtypes of
//! the published checkpoints (`shared/reference/checkpoint-keys/llamagen_*.txt`, `taming_*.txt`,
//! copied next to this crate's fixtures when `shared/` is absent), and the tiny fixture models
//! request exactly their fixture's `keys.txt`.

mod common;

use candle_core::DType;
use genbench_models::checkpoint::{compare_keys, parse_key_list, KeyShape, ShapeRecorder};
use genbench_models::generators::llamagen::{LlamaGenConfig, LlamaGenGpt, LlamaGenGptConfig};
use genbench_models::generators::taming::{TamingConfig, TamingGpt, TamingGptConfig};
use genbench_models::tokenizers::llamagen_vq::{LlamaGenVq, LlamaGenVqConfig};
use genbench_models::tokenizers::taming_vqgan::{TamingVqgan, TamingVqganConfig};
use std::path::PathBuf;

/// The published key list, from the repo's copy in `tests/fixtures/reference/checkpoint-keys`
/// (carried over from the shared reference material so a plain clone runs this check).
fn published_keys(name: &str) -> Vec<KeyShape> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let path = root.join("../tests/fixtures/reference/checkpoint-keys").join(name);
    eprintln!("published key list: {}", path.display());
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    parse_key_list(&text).unwrap()
}

fn record(build: impl FnOnce(candle_nn::VarBuilder<'static>)) -> Vec<KeyShape> {
    let rec = ShapeRecorder::new();
    build(rec.var_builder(DType::F32));
    rec.records()
}

fn params(keys: &[KeyShape]) -> usize {
    keys.iter().map(|k| k.shape.iter().product::<usize>()).sum()
}

fn check_published(list: &str, requested: &[KeyShape]) {
    let published = published_keys(list);
    compare_keys(requested, &published).unwrap_or_else(|e| panic!("{list}:\n{e}"));
    eprintln!("{list}: {} tensors, {} values: exact match", requested.len(), params(requested));
}

#[test]
fn llamagen_gpts_match_published_keys() {
    for (list, cfg) in [
        ("llamagen_GPT-B.txt", LlamaGenGptConfig::gpt_b(256)),
        ("llamagen_GPT-L.txt", LlamaGenGptConfig::gpt_l(256)),
        ("llamagen_GPT-XL.txt", LlamaGenGptConfig::gpt_xl(576)),
        ("llamagen_GPT-XXL.txt", LlamaGenGptConfig::gpt_xxl(576)),
    ] {
        let keys = record(|vb| {
            LlamaGenGpt::new(&cfg, vb).unwrap();
        });
        check_published(list, &keys);
    }
    // GPT-B: 110,888,448 parameters, the count of `GPT_B(vocab_size=16384, block_size=256,
    // num_classes=1000)` of FoundationVision/LlamaGen@ce98ec4 autoregressive/models/gpt.py
    // (independent of the key list).
    let b = record(|vb| {
        LlamaGenGpt::new(&LlamaGenGptConfig::gpt_b(256), vb).unwrap();
    });
    assert_eq!(params(&b), 110_888_448);
    // GPT-3B has no published key list here: its size (3.1B) and widths are checked instead.
    let k = record(|vb| {
        LlamaGenGpt::new(&LlamaGenGptConfig::gpt_3b(576), vb).unwrap();
    });
    let n = params(&k);
    assert!((3.05e9..3.15e9).contains(&(n as f64)), "GPT-3B has {n} parameters");
    let w1 = k.iter().find(|k| k.name == "layers.0.feed_forward.w1.weight").unwrap();
    assert_eq!(w1.shape, vec![8704, 3200]);
}

#[test]
fn llamagen_vq16_matches_published_keys() {
    let keys = record(|vb| {
        LlamaGenVq::new(&LlamaGenVqConfig::vq_16(), vb).unwrap();
    });
    check_published("llamagen_vq_ds16_c2i.txt", &keys);
    // `VQ_16(codebook_size=16384, codebook_embed_dim=8)` of FoundationVision/LlamaGen@ce98ec4
    // tokenizer/tokenizer_image/vq_model.py: 71,883,403 parameters (the 65536-entry usage
    // buffer is not one).
    assert_eq!(params(&keys) - 65536, 71_883_403);
}

#[test]
fn taming_models_match_published_keys() {
    let gpt = record(|vb| {
        TamingGpt::new(&TamingGptConfig::cin(), vb).unwrap();
    });
    check_published("taming_cin_transformer.txt", &gpt);
    // 1,410,640,896 parameters plus 48 causal-mask buffers of 256 x 256.
    assert_eq!(params(&gpt) - 48 * 256 * 256, 1_410_640_896);
    for (list, n) in [("taming_vqgan_imagenet_f16_1024.txt", 1024), ("taming_vqgan_imagenet_f16_16384.txt", 16384)] {
        let keys = record(|vb| {
            TamingVqgan::new(&TamingVqganConfig::f16(n), vb).unwrap();
        });
        check_published(list, &keys);
    }
}

/// A fixture's `keys.txt` (`<file>:<entry>/<name> (shape) dtype`) restricted to one file, with
/// the `<file>:<entry>/` part and an optional name prefix removed.
fn fixture_keys(dir: &std::path::Path, file: &str, strip: &str) -> Vec<KeyShape> {
    let text = std::fs::read_to_string(dir.join("keys.txt")).unwrap();
    let lines: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{file}:")))
        .map(|l| l.split_once('/').map(|(_, rest)| rest).unwrap_or(l))
        .filter_map(|l| l.strip_prefix(strip))
        .map(str::to_string)
        .collect();
    assert!(!lines.is_empty(), "keys.txt lists nothing for {file}{strip}");
    parse_key_list(&lines.join("\n")).unwrap()
}

#[test]
fn fixture_models_match_fixture_keys() {
    let dir = common::fixture_dir("GENBENCH_FIXTURE_LLAMAGEN", "ar_llamagen");
    let config = common::load_json(&dir, "config.json");
    let cfg = LlamaGenConfig::from_reference_json(&config).unwrap();
    let gpt = record(|vb| {
        LlamaGenGpt::new(&cfg.gpt, vb).unwrap();
    });
    compare_keys(&gpt, &fixture_keys(&dir, config["gpt"]["checkpoint"].as_str().unwrap(), "")).unwrap();
    let vq = record(|vb| {
        LlamaGenVq::new(&cfg.vq, vb).unwrap();
    });
    compare_keys(&vq, &fixture_keys(&dir, config["vq"]["checkpoint"].as_str().unwrap(), "")).unwrap();

    let dir = common::fixture_dir("GENBENCH_FIXTURE_TAMING", "ar_taming");
    let config = common::load_json(&dir, "config.json");
    let cfg = TamingConfig::from_reference_json(&config).unwrap();
    let ckpt = config["checkpoint"].as_str().unwrap();
    let gpt = record(|vb| {
        TamingGpt::new(&cfg.gpt, vb).unwrap();
    });
    compare_keys(&gpt, &fixture_keys(&dir, ckpt, "transformer.")).unwrap();
    let vq = record(|vb| {
        TamingVqgan::new(&cfg.vq, vb).unwrap();
    });
    compare_keys(&vq, &fixture_keys(&dir, ckpt, "first_stage_model.")).unwrap();
}
