//! The tensors the AutoNAT U-ViT and the MAGE VQGAN ask for, by name, shape and dtype, against
//! the published key lists (`tests/fixtures/reference/checkpoint-keys/autonat_*.txt`, dumped
//! from the reference modules' `state_dict()`), and against the fixture's own `keys.txt` for its
//! tiny configuration (sizes from the folder's `config.json`). Models are built on the
//! weight-free recorder, so the full-size networks cost nothing. Also the analytic FLOPs and
//! the released T=8 strategy against the reference tables (`tests/fixtures/reference/tables`).

mod common;

use candle_core::DType;
use common::{fixture_dir, load_json};
use genbench_models::checkpoint::{compare_keys, parse_key_list, KeyShape, ShapeRecorder};
use genbench_models::generator::Generator;
use genbench_models::generators::autonat::{AutoNatGenerator, AutoNatSpec, UViT, UViTConfig};
use genbench_models::generators::autonat_strategy::{mask_len, Strategy};
use genbench_models::tokenizers::mage_vqgan::{MageVqgan, MageVqganConfig};
use std::path::PathBuf;

fn published(name: &str) -> (Vec<KeyShape>, String) {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/reference/checkpoint-keys").join(name);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (parse_key_list(&text).unwrap(), text)
}

/// The parameter total stated in a published list's header (`# total parameters ...: 1,234 (..)`).
fn stated_total(text: &str) -> usize {
    let line = text.lines().find(|l| l.contains("total parameters")).expect("total line");
    let num = line.split(':').nth(1).unwrap().split_whitespace().next().unwrap();
    num.replace(',', "").parse().unwrap()
}

fn uvit_keys(cfg: &UViTConfig) -> Vec<KeyShape> {
    let rec = ShapeRecorder::new();
    UViT::load(cfg, rec.var_builder(DType::F32)).expect("build on the recorder");
    rec.records()
}

fn vqgan_keys(cfg: &MageVqganConfig) -> Vec<KeyShape> {
    let rec = ShapeRecorder::new();
    MageVqgan::load(cfg, rec.var_builder(DType::F32)).expect("build on the recorder");
    rec.records()
}

fn params(keys: &[KeyShape]) -> usize {
    keys.iter().map(|k| k.shape.iter().product::<usize>()).sum()
}

#[test]
fn autonat_l_keys_match_published_list() {
    let keys = uvit_keys(&UViTConfig::autonat_l());
    let (list, text) = published("autonat_L.txt");
    compare_keys(&keys, &list).unwrap();
    assert_eq!(params(&keys), stated_total(&text));
    assert_eq!(params(&keys), 193_655_297, "UViT(**configs/AutoNAT_L.yaml nnet), LeapLabTHU/ImprovedNAT@2ca9994 libs/nat_model.py");
}

#[test]
fn mage_vqgan_keys_match_published_list() {
    let keys = vqgan_keys(&MageVqganConfig::maskgit_f16_256());
    let (list, text) = published("autonat_vqgan_jax_strongaug.txt");
    compare_keys(&keys, &list).unwrap();
    assert_eq!(params(&keys), stated_total(&text));
    assert_eq!(params(&keys), 54_515_587, "VQModel(**configs/vq-f16-jax.yaml), LeapLabTHU/ImprovedNAT@2ca9994 taming/models/vqgan.py");
}

#[test]
fn autonat_s_is_the_u_vit_small_shape() {
    // Not published: checks the assumed shape builds and has the expected size (~45.6M).
    let keys = uvit_keys(&UViTConfig::autonat_s());
    let n = params(&keys);
    assert!((45_000_000..46_500_000).contains(&n), "{n}");
    assert_eq!(keys.iter().filter(|k| k.name.ends_with("skip_linear.weight")).count(), 6);
}

#[test]
fn fixture_models_match_fixture_keys() {
    let dir = fixture_dir("GENBENCH_FIXTURE_AUTONAT", "autonat");
    let spec = AutoNatSpec::from_fixture_config(&load_json(&dir, "config.json"), "fixture").unwrap();
    let text = std::fs::read_to_string(dir.join("keys.txt")).unwrap();
    // keys.txt holds one section per checkpoint file, each opened by a `# <file>` header.
    let mut sections: Vec<(String, String)> = vec![];
    for line in text.lines() {
        if let Some(header) = line.strip_prefix("# ") {
            sections.push((header.split_whitespace().next().unwrap_or("").to_string(), String::new()));
        } else if let Some((_, body)) = sections.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    let section = |file: &str| {
        let (_, body) = sections.iter().find(|(f, _)| f == file).unwrap_or_else(|| panic!("no `# {file}` section"));
        parse_key_list(body).unwrap()
    };
    compare_keys(&uvit_keys(&spec.net), &section("nnet_ema.pth")).unwrap();
    compare_keys(&vqgan_keys(&spec.tokenizer), &section("vqgan_jax_strongaug.ckpt")).unwrap();
}

fn reference_table(name: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/reference/tables").join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The numbers after `label` on the line that contains it, e.g. `104.01` after "forward (257 tokens):".
fn numbers_after(text: &str, label: &str) -> Vec<f64> {
    let line = text.lines().find(|l| l.contains(label)).unwrap_or_else(|| panic!("no line with `{label}`"));
    line[line.find(label).unwrap() + label.len()..]
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter(|s| !s.is_empty() && *s != ".")
        .map(|s| s.parse().unwrap())
        .collect()
}

#[test]
fn autonat_l_flops_match_the_reference_summary() {
    // flops_summary.txt: "AutoNAT-L one forward (257 tokens): 104.01 GF; per step (cond+uncond)
    // 208.01 GF; 8 steps 1664.1 GF per image". The table rounds to 0.01 / 0.1 GF.
    let text = reference_table("flops_summary.txt");
    let n = numbers_after(&text, "AutoNAT-L one forward (257 tokens):");
    let (forward, step, total) = (n[0], n[1], n[3]);
    assert_eq!(n[2], 8.0, "the table's step count");
    // Built on the weight-free recorder: the generator's own accounting, strategy included.
    let rec = ShapeRecorder::new();
    let net = UViT::load(&UViTConfig::autonat_l(), rec.var_builder(DType::F32)).unwrap();
    let vq = MageVqgan::load(&MageVqganConfig::maskgit_f16_256(), rec.var_builder(DType::F32)).unwrap();
    let gen = AutoNatGenerator::new("autonat-l".into(), net, vq, "autonat-l-t8".into(), Strategy::autonat_l_t8()).unwrap();
    let f = gen.flops_per_image();
    let gf = |x: f64| x / 1e9;
    assert!((gf(UViTConfig::autonat_l().flops_per_forward()) - forward).abs() < 0.006, "one forward");
    assert_eq!(f.per_step.len(), 8);
    assert!(f.per_step.iter().all(|&s| (gf(s) - step).abs() < 0.011), "two forwards per step: {:?}", f.per_step);
    assert!((gf(f.transformer) - total).abs() < 0.06, "{}", gf(f.transformer));
    // Decoder: 186.55 GFLOP per image by torch.utils.flop_counter over the decoder of
    // LeapLabTHU/ImprovedNAT@2ca9994 taming/models/vqgan.py (configs/vq-f16-jax.yaml).
    assert!((gf(f.decoder) - 186.6).abs() < 0.1, "{}", gf(f.decoder));
    // Total: the table's 1664.1 GF of transformer plus the decoder's 186.6, about 1.85 TFLOP.
    assert!((f.total() / 1e12 - 1.85).abs() < 0.005, "{}", f.total() / 1e12);
}

#[test]
fn released_strategy_matches_the_expanded_table() {
    // tables/autonat_L_T8_strategy_table.txt, one row per step:
    // step | masked_in | mask_ratio_after | mask_len_after | newly_fixed | samp_temp | remask_temp | cfg
    let s = Strategy::autonat_l_t8();
    let l = UViTConfig::autonat_l().seq_len();
    let rows: Vec<Vec<f64>> = reference_table("autonat_L_T8_strategy_table.txt")
        .lines()
        .filter(|line| !line.starts_with('#') && line.contains('|'))
        .map(|line| line.split('|').map(|c| c.trim().parse().unwrap()).collect())
        .collect();
    assert_eq!(rows.len(), s.steps());
    let mut masked = l;
    for (t, r) in rows.iter().enumerate() {
        let after = if t + 1 == s.steps() { 0 } else { mask_len(l, s.ratio_at(t), masked) };
        assert_eq!(r[1] as usize, masked, "step {t}: masked in");
        assert!((r[2] - s.ratio_at(t)).abs() < 1e-6, "step {t}: ratio");
        assert_eq!(r[3] as usize, after, "step {t}: mask length after");
        assert_eq!(r[4] as usize, masked - after, "step {t}: newly fixed");
        assert!((r[5] - s.samp_temps[t]).abs() < 1e-6, "step {t}: sampling temperature");
        assert!((r[6] - s.remask_temp_at(t)).abs() < 1e-6, "step {t}: re-mask temperature");
        assert!((r[7] - s.cfg[t]).abs() < 1e-6, "step {t}: guidance");
        masked = after;
    }
    // And the search initialisation quoted under the table.
    let init = Strategy::search_init(8).unwrap();
    let text = reference_table("autonat_L_T8_strategy_table.txt");
    let ratios = numbers_after(&text, "[1:-1] =");
    assert_eq!(ratios.len(), 7);
    for (a, b) in init.ratios.iter().zip(&ratios) {
        assert!((a - b).abs() < 1e-6);
    }
}
