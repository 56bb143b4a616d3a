//! The tensors MAR-B / L / H and the KL-16 VAE ask for, by name, shape and dtype, against the
//! published key lists (`tests/fixtures/reference/checkpoint-keys/mar_*.txt`, dumped from the
//! reference modules' `state_dict()`), and the same check against the fixture's own
//! `keys.txt` for its tiny configuration. The models are built on a weight-free recorder, so
//! the full-size networks cost nothing.

mod common;

use candle_core::DType;
use common::{fixture_dir, load_json};
use genbench_models::checkpoint::{compare_keys, parse_key_list, KeyShape, ShapeRecorder};
use genbench_models::generators::mar::{configs_from_json, Mar, MarConfig};
use genbench_models::tokenizers::kl16::{Kl16Config, Kl16Vae};
use std::path::PathBuf;

fn published(name: &str) -> Vec<KeyShape> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/reference/checkpoint-keys").join(name);
    parse_key_list(&std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

fn mar_keys(cfg: &MarConfig) -> Vec<KeyShape> {
    let rec = ShapeRecorder::new();
    Mar::load(cfg, rec.var_builder(DType::F32)).expect("build on the recorder");
    rec.records()
}

fn params(keys: &[KeyShape]) -> usize {
    keys.iter().map(|k| k.shape.iter().product::<usize>()).sum()
}

#[test]
fn mar_base_keys_match_published_list() {
    let keys = mar_keys(&MarConfig::mar_base());
    compare_keys(&keys, &published("mar_base.txt")).unwrap();
    // `mar_base(diffloss_d=6, diffloss_w=1024)` (the released DiffLoss) of LTH14/mar@fe470ac
    // models/mar.py: 207,924,768 parameters.
    assert_eq!(params(&keys), 207_924_768);
}

#[test]
fn mar_large_keys_match_published_list() {
    let keys = mar_keys(&MarConfig::mar_large());
    compare_keys(&keys, &published("mar_large.txt")).unwrap();
    assert_eq!(params(&keys), 478_326_304);
}

#[test]
fn mar_huge_keys_match_published_list() {
    let keys = mar_keys(&MarConfig::mar_huge());
    compare_keys(&keys, &published("mar_huge.txt")).unwrap();
    assert_eq!(params(&keys), 942_403_104);
}

#[test]
fn kl16_keys_match_published_list() {
    let rec = ShapeRecorder::new();
    Kl16Vae::load(&Kl16Config::published(), rec.var_builder(DType::F32)).unwrap();
    let keys = rec.records();
    compare_keys(&keys, &published("mar_vae_kl16.txt")).unwrap();
    assert_eq!(params(&keys), 66_456_019);
}

/// The fixture's `keys.txt` lists `file:dictkey/param`; the model reads `model_ema` of the
/// generator file and `model` of the VAE file.
#[test]
fn fixture_configs_request_exactly_the_fixture_keys() {
    let dir = fixture_dir("GENBENCH_FIXTURE_MAR", "mar");
    let (mar_cfg, vae_cfg) = configs_from_json(&load_json(&dir, "config.json")).unwrap();
    let text = std::fs::read_to_string(dir.join("keys.txt")).unwrap();
    let section = |prefix: &str| -> Vec<KeyShape> {
        let lines: Vec<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix(prefix))
            .map(|rest| {
                // `name [d0, d1] float32` -> the published `name (d0, d1) float32` form.
                rest.replacen('[', "(", 1).replacen(']', ")", 1)
            })
            .collect();
        parse_key_list(&lines.join("\n")).unwrap()
    };
    let ema = section("checkpoint-last.pth:model_ema/");
    assert!(!ema.is_empty(), "keys.txt lists no model_ema tensors");
    compare_keys(&mar_keys(&mar_cfg), &ema).unwrap();
    let rec = ShapeRecorder::new();
    Kl16Vae::load(&vae_cfg, rec.var_builder(DType::F32)).unwrap();
    compare_keys(&rec.records(), &section("kl16.ckpt:model/")).unwrap();
}
