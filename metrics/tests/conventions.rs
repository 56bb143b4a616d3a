//! Each `--convention` against the tool it names, on the fixture features and images: KID with
//! torch-fidelity's and clean-fid's subset draws, IS with torch-fidelity's splits, clean-fid's
//! "clean" resize. Expected values come from the tools' own functions
//! (`tests/fixtures/metrics/conventions_golden.json`, see that folder's README).
//!
//! Tolerances: 1e-6 relative against the tools' values computed on float64 features (the same
//! code, draws and estimator; what remains is summation order, ~1e-12). The tools' default
//! float32 runs differ from their own float64 runs by float32 rounding of the kernel sums
//! (measured: 2.3e-6 relative on the synthetic features, 2.2e-5 on the real ones), so against
//! those values the bound is 1e-4 relative. The resize is compared to 1e-3 of a 0..255 pixel
//! (float32 accumulation order only).

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use genbench_metrics::convention::Convention;
use genbench_metrics::kid::{kernel_inception_distance, KidConfig, KidSubsetRule};
use genbench_metrics::preprocess::{preprocess_batch, OUT_SIZE};
use serde_json::Value;

const REL: f64 = 1e-6;
const REL_VS_FLOAT32: f64 = 1e-4;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn inception_dir() -> PathBuf {
    std::env::var_os("GENBENCH_FIXTURE_INCEPTION").map(PathBuf::from).unwrap_or_else(|| repo().join("tests/fixtures/inception"))
}

fn golden() -> Value {
    let p = repo().join("tests/fixtures/metrics/conventions_golden.json");
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

fn npy_f32(path: &Path) -> (Vec<f32>, Vec<usize>) {
    let npy = npyz::NpyFile::new(BufReader::new(File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))).unwrap();
    let shape = npy.shape().iter().map(|&s| s as usize).collect();
    (npy.into_vec::<f32>().unwrap(), shape)
}

fn npy_u8(path: &Path) -> (Vec<u8>, Vec<usize>) {
    let npy = npyz::NpyFile::new(BufReader::new(File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))).unwrap();
    let shape = npy.shape().iter().map(|&s| s as usize).collect();
    (npy.into_vec::<u8>().unwrap(), shape)
}

/// Group names of golden.json in file order (serde_json's map is sorted; read the text).
fn group_order(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(dir.join("golden.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let mut names: Vec<(usize, String)> =
        v["groups"].as_object().unwrap().keys().map(|k| (text.find(&format!("\"{k}\"")).unwrap(), k.clone())).collect();
    names.sort();
    names.into_iter().map(|(_, k)| k).collect()
}

/// The two feature sets a golden case names, and their width.
fn feature_sets(case: &Value) -> (Vec<f32>, Vec<f32>, usize) {
    let dir = inception_dir();
    match case["set"].as_str().unwrap() {
        "synthetic" => {
            let (x, sx) = npy_f32(&dir.join(case["x"].as_str().unwrap()));
            let (y, sy) = npy_f32(&dir.join(case["y"].as_str().unwrap()));
            assert_eq!(sx[1], sy[1]);
            (x, y, sx[1])
        }
        "real_split" => {
            let mut all = Vec::new();
            let mut d = 0;
            for g in group_order(&dir) {
                let (rows, shape) = npy_f32(&dir.join(format!("{g}_pool3.npy")));
                d = shape[1];
                all.extend(rows);
            }
            let at = case["split_at"].as_u64().unwrap() as usize * d;
            (all[..at].to_vec(), all[at..].to_vec(), d)
        }
        other => panic!("unknown feature set {other}"),
    }
}

fn f(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or_else(|| panic!("golden value {k}"))
}

fn u(v: &Value, k: &str) -> usize {
    v[k].as_u64().unwrap_or_else(|| panic!("golden value {k}")) as usize
}

fn assert_rel(name: &str, ours: f64, want: f64, rel: f64) {
    let err = (ours - want).abs() / want.abs();
    println!("{name}: ours {ours:.15e} vs {want:.15e}: rel err {err:.2e} (bound {rel:e})");
    assert!(err <= rel, "{name}: {ours} vs {want}: relative error {err:.2e} > {rel:e}");
}

#[test]
fn kid_matches_torch_fidelity() {
    let g = golden();
    let cases = g["kid_torch_fidelity"].as_array().unwrap();
    assert!(!cases.is_empty());
    for case in cases {
        let (x, y, d) = feature_sets(case);
        let name = format!("torch-fidelity KID {} ({} x {}, seed {})", case["set"], case["subsets"], case["subset_size"], case["seed"]);
        let cfg = KidConfig {
            subsets: u(case, "subsets"),
            subset_size: u(case, "subset_size"),
            ..Convention::TorchFidelity.kid_config(Some(u(case, "seed") as u64))
        };
        let r = kernel_inception_distance(&x, &y, d, &cfg).unwrap();
        assert_eq!(r.subset_size, cfg.subset_size);
        assert_rel(&format!("{name} mean"), r.mean, f(case, "mean"), REL);
        assert_rel(&format!("{name} std"), r.std, f(case, "std"), REL);
        assert_rel(&format!("{name} mean vs its float32 run"), r.mean, f(case, "mean_float32"), REL_VS_FLOAT32);
        assert_rel(&format!("{name} std vs its float32 run"), r.std, f(case, "std_float32"), REL_VS_FLOAT32);
    }
    // The default convention settings are torch-fidelity's own defaults.
    let c = Convention::TorchFidelity.kid_config(None);
    assert_eq!((c.subsets, c.subset_size, c.seed, c.rule), (100, 1000, 2020, KidSubsetRule::Exact));
}

#[test]
fn kid_refuses_subsets_larger_than_a_set_like_torch_fidelity() {
    let g = golden();
    let case = &g["kid_torch_fidelity_refuses"];
    let (x, y, d) = feature_sets(case);
    let cfg = KidConfig { subset_size: u(case, "subset_size"), subsets: 2, ..Convention::TorchFidelity.kid_config(None) };
    let err = kernel_inception_distance(&x, &y, d, &cfg).unwrap_err().to_string();
    assert!(
        err.contains(&format!("subset size {}", cfg.subset_size)) && err.contains("samples: ") && err.contains("smaller subset size"),
        "{err}"
    );
    // torch-fidelity refused the same case.
    assert!(case["message"].as_str().unwrap().contains(&format!("subset size {}", cfg.subset_size)));
}

#[test]
fn kid_matches_clean_fid() {
    let g = golden();
    let cases = g["kid_clean_fid"].as_array().unwrap();
    assert!(!cases.is_empty());
    for case in cases {
        let (x, y, d) = feature_sets(case);
        let name = format!("clean-fid KID {} (np.random.seed({}))", case["set"], case["seed"]);
        let cfg = KidConfig {
            subsets: u(case, "subsets"),
            subset_size: u(case, "max_subset_size"),
            ..Convention::CleanFid.kid_config(Some(u(case, "seed") as u64))
        };
        let r = kernel_inception_distance(&x, &y, d, &cfg).unwrap();
        assert_eq!(r.subset_size, u(case, "subset_rows"), "{name}: rows per subset");
        assert_rel(&name, r.mean, f(case, "kid"), REL);
        assert_rel(&format!("{name} vs its float32 run"), r.mean, f(case, "kid_float32"), REL_VS_FLOAT32);
    }
}

#[test]
fn inception_score_matches_torch_fidelity() {
    let g = golden();
    let case = &g["is_torch_fidelity"];
    let (logits, shape) = npy_f32(&inception_dir().join(case["logits_file"].as_str().unwrap()));
    let conv = Convention::TorchFidelity;
    match conv.is_splits() {
        Some(genbench_metrics::convention::IsSplits::Shuffled { splits, seed }) => {
            assert_eq!((splits, seed as usize), (u(case, "splits"), u(case, "seed")), "torch-fidelity's IS defaults");
        }
        other => panic!("torch-fidelity's IS rule is a seeded shuffle, got {other:?}"),
    }
    let is = conv.inception_score(&logits, shape[1]).unwrap();
    assert_rel("torch-fidelity IS mean", is.mean, f(case, "mean"), REL);
    assert_rel("torch-fidelity IS std", is.std, f(case, "std"), REL);
}

#[test]
fn clean_fid_preprocessing_matches_its_resize() {
    let g = golden();
    let dir = inception_dir();
    let cases = g["clean_resize"].as_array().unwrap();
    assert!(!cases.is_empty());
    for case in cases {
        let group = case["group"].as_str().unwrap();
        let (images, shape) = npy_u8(&dir.join(format!("{group}_images.npy")));
        let (h, w) = (shape[1], shape[2]);
        let i = u(case, "image_index");
        let one = &images[i * h * w * 3..(i + 1) * h * w * 3];
        let ours = preprocess_batch(one, 1, h, w, Convention::CleanFid.preprocess()).unwrap();
        // Back to clean-fid's pixel scale: ours is (clip(resize) - 128) / 128, exactly invertible.
        let pixels: Vec<f64> = ours.iter().map(|&v| v as f64 * 128.0 + 128.0).collect();
        let sum: f64 = pixels.iter().sum();
        let (want, wshape) = npy_f32(&repo().join("tests/fixtures/metrics").join(case["file"].as_str().unwrap()));
        let stride = u(case, "stride");
        let mut worst = 0f64;
        for (r, oy) in (0..OUT_SIZE).step_by(stride).enumerate() {
            for (c, ox) in (0..OUT_SIZE).step_by(stride).enumerate() {
                for ch in 0..3 {
                    let a = pixels[(oy * OUT_SIZE + ox) * 3 + ch];
                    let e = want[(r * wshape[1] + c) * 3 + ch] as f64;
                    worst = worst.max((a - e).abs());
                }
            }
        }
        println!("clean resize {group}: max |ours - clean-fid| = {worst:e} (of 255); full-image sum {sum} vs {}", f(case, "full_sum"));
        assert!(worst <= 1e-3, "clean resize {group}: {worst}");
        // The whole image, not only the kept pixels: sums agree to the same per-pixel bound.
        assert!((sum - f(case, "full_sum")).abs() <= 1e-3 * pixels.len() as f64, "clean resize {group}: sum {sum}");
    }
}
