//! Golden values of the metric arithmetic (no network needed): the fixture's Inception features
//! and synthetic features against values computed with numpy/scipy (`golden.json`, see the
//! fixture README), and numpy's RandomState permutations (`tests/fixtures/metrics`).
//!
//! The fixture folder is `$GENBENCH_FIXTURE_INCEPTION` or `<repo>/tests/fixtures/inception`;
//! every size and setting is taken from its own `golden.json`.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use genbench_metrics::fid::{frechet_distance, trace_sqrt_product, trace_sqrt_product_eigen, trace_sqrt_product_general_eigenvalues};
use genbench_metrics::inception_score::{inception_score_adm, inception_score_torch_fidelity};
use genbench_metrics::kid::mmd2_unbiased_f32;
use genbench_metrics::numeric::default_par;
use genbench_metrics::numpy_rng::Mt19937;
use genbench_metrics::precision_recall::{precision_recall, DistancePrecision, PrConfig};
use genbench_metrics::stats::{adm_f32_mean, FeatureStats};
use serde_json::Value;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn fixture_dir() -> PathBuf {
    let dir =
        std::env::var_os("GENBENCH_FIXTURE_INCEPTION").map(PathBuf::from).unwrap_or_else(|| repo_root().join("tests/fixtures/inception"));
    println!("inception fixture folder: {}", dir.display());
    dir
}

fn golden() -> (PathBuf, Value, String) {
    let dir = fixture_dir();
    let text = std::fs::read_to_string(dir.join("golden.json")).expect("golden.json in the fixture folder");
    (dir, serde_json::from_str(&text).unwrap(), text)
}

fn numpy_golden() -> Value {
    let path = repo_root().join("tests/fixtures/metrics/numpy_golden.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A float32 .npy as (values, shape).
fn read_npy_f32(path: &Path) -> (Vec<f32>, Vec<usize>) {
    let npy = npyz::NpyFile::new(BufReader::new(File::open(path).unwrap())).unwrap();
    let shape = npy.shape().iter().map(|&s| s as usize).collect();
    (npy.into_vec::<f32>().unwrap(), shape)
}

fn f(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or_else(|| panic!("golden value {key}"))
}

fn u(v: &Value, key: &str) -> usize {
    v[key].as_u64().unwrap_or_else(|| panic!("golden value {key}")) as usize
}

/// Group names in the order they appear in golden.json (serde_json's map is sorted, so the
/// order is recovered from the text).
fn group_order(golden: &Value, text: &str) -> Vec<String> {
    let mut names: Vec<String> = golden["groups"].as_object().unwrap().keys().cloned().collect();
    names.sort_by_key(|name| text.find(&format!("\"{name}\"")).unwrap());
    names
}

/// pool3 rows of all groups concatenated in group order, checked against the group sizes.
fn real_pool3(dir: &Path, golden: &Value, text: &str) -> (Vec<f32>, usize) {
    let mut all = Vec::new();
    let mut dim = 0;
    for name in group_order(golden, text) {
        let (rows, shape) = read_npy_f32(&dir.join(format!("{name}_pool3.npy")));
        assert_eq!(shape[0], u(&golden["groups"][&name], "n"), "{name} rows");
        dim = shape[1];
        all.extend(rows);
    }
    (all, dim)
}

fn synthetic(dir: &Path) -> (Vec<f32>, Vec<f32>, usize) {
    let (x, sx) = read_npy_f32(&dir.join("synthetic_x.npy"));
    let (y, sy) = read_npy_f32(&dir.join("synthetic_y.npy"));
    assert_eq!(sx[1], sy[1]);
    (x, y, sx[1])
}

#[test]
fn fid_real_split() {
    let (dir, g, text) = golden();
    let (rows, d) = real_pool3(&dir, &g, &text);
    let split = u(&g["fid_real_split"], "split_at");
    let a = FeatureStats::from_features(&rows[..split * d], d).unwrap();
    let b = FeatureStats::from_features(&rows[split * d..], d).unwrap();
    let fid = frechet_distance(&a, &b).unwrap();
    println!("real split FID {fid:?}");
    // N << 2048: both covariances are rank-deficient and the trace term's noise eigenvalues
    // differ between methods at ~1e-5; the fixture README says to trust ~1e-3.
    for key in ["fid_sqrtm", "fid_eigvals"] {
        let expected = f(&g["fid_real_split"], key);
        assert!((fid.value - expected).abs() < 1e-3, "{key}: {} vs {expected}", fid.value);
    }
    assert!(!fid.eps_retry_used);
}

#[test]
fn fid_real_split_independent_route_agrees() {
    let (dir, g, text) = golden();
    let (rows, d) = real_pool3(&dir, &g, &text);
    let split = u(&g["fid_real_split"], "split_at");
    let a = FeatureStats::from_features(&rows[..split * d], d).unwrap();
    let b = FeatureStats::from_features(&rows[split * d..], d).unwrap();
    let fast = trace_sqrt_product(&a.sigma, &b.sigma, d, default_par()).unwrap();
    let eigen = trace_sqrt_product_eigen(&a.sigma, &b.sigma, d, default_par()).unwrap();
    println!("trace sqrt: default route {fast:?}, eigen route {eigen:?}");
    // Same tolerance reasoning as above: rank-deficient, ~1e-5 between methods.
    assert!((fast.value - eigen.value).abs() < 1e-4, "{fast:?} vs {eigen:?}");
}

#[test]
fn fid_f32_mean_effect_is_negligible() {
    // ADM stores np.mean of float32 activations (float32 accumulation); we use an f64 mean.
    // Measure what that changes on the real split.
    let (dir, g, text) = golden();
    let (rows, d) = real_pool3(&dir, &g, &text);
    let split = u(&g["fid_real_split"], "split_at");
    let (xa, xb) = rows.split_at(split * d);
    let (a, b) = (FeatureStats::from_features(xa, d).unwrap(), FeatureStats::from_features(xb, d).unwrap());
    let exact = frechet_distance(&a, &b).unwrap().value;
    let with_f32_mean =
        |s: &FeatureStats, x: &[f32]| FeatureStats { mu: adm_f32_mean(x, d).iter().map(|&m| m as f64).collect(), ..s.clone() };
    let adm_like = frechet_distance(&with_f32_mean(&a, xa), &with_f32_mean(&b, xb)).unwrap().value;
    println!("FID with f64 mean {exact}, with ADM's float32 mean {adm_like}, delta {:e}", adm_like - exact);
    assert!((adm_like - exact).abs() < 1e-4);
}

#[test]
fn fid_synthetic() {
    let (dir, g, _) = golden();
    let (x, y, d) = synthetic(&dir);
    let gs = &g["fid_synthetic"];
    let sx = FeatureStats::from_features(&x, d).unwrap();
    let sy = FeatureStats::from_features(&y, d).unwrap();
    let fid = frechet_distance(&sx, &sy).unwrap();
    println!("synthetic FID {fid:?}");
    // Well conditioned and f64 throughout: sqrtm and eigvals agree to 1e-11 in the golden file.
    // What remains is the mean (ours f64, numpy's f32 accumulation: ~1e-8 on |dmu|^2) and
    // covariance summation order (~1e-13), so 1e-6 is a safe bound with 100x margin.
    for key in ["fid_sqrtm", "fid_eigvals"] {
        assert!((fid.value - f(gs, key)).abs() < 1e-6, "{key}: {} vs {}", fid.value, f(gs, key));
    }
    assert_eq!(fid.clipped_eigenvalues, 0);
    // Independent f64 routes on the same statistics agree to rounding.
    let general = trace_sqrt_product_general_eigenvalues(&sx.sigma, &sy.sigma, d).unwrap();
    let eigen = trace_sqrt_product_eigen(&sx.sigma, &sy.sigma, d, default_par()).unwrap();
    assert!((fid.trace_sqrt - general).abs() < 1e-10 * general, "{} vs {general}", fid.trace_sqrt);
    assert!((fid.trace_sqrt - eigen.value).abs() < 1e-10 * general);
}

#[test]
fn fid_identity_and_mean_shift_only() {
    let (dir, g, _) = golden();
    let (x, y, d) = synthetic(&dir);
    let sx = FeatureStats::from_features(&x, d).unwrap();
    let sy = FeatureStats::from_features(&y, d).unwrap();
    let identical = frechet_distance(&sx, &sx).unwrap().value;
    assert!(identical.abs() < 1e-8, "FID(x, x) = {identical}");
    // Equal covariances: FID is exactly |mu_x - mu_y|^2 up to the trace cancellation.
    let shifted = FeatureStats { mu: sy.mu.clone(), ..sx.clone() };
    let fid = frechet_distance(&shifted, &sx).unwrap().value;
    let expected = f(&g["fid_synthetic"], "mean_shift_only");
    let mean_term: f64 = sx.mu.iter().zip(&sy.mu).map(|(a, b)| (a - b).powi(2)).sum();
    assert!((fid - mean_term).abs() < 1e-8, "{fid} vs {mean_term}");
    // f64 vs numpy's f32 means: ~1e-8 relative.
    assert!((fid - expected).abs() < 1e-6 * expected, "{fid} vs {expected}");
}

fn pr_f32() -> PrConfig {
    PrConfig { precision: DistancePrecision::F32, ..PrConfig::default() }
}

#[test]
fn precision_recall_synthetic() {
    let (dir, g, _) = golden();
    let (x, y, d) = synthetic(&dir);
    let gp = &g["precision_recall_synthetic"];
    assert_eq!((x.len() / d, y.len() / d), (u(gp, "ref_rows"), u(gp, "sample_rows")));
    let cfg = PrConfig { k: u(gp, "k"), ..pr_f32() };
    let pr = precision_recall(&x, &y, d, &cfg).unwrap();
    println!("synthetic P/R {pr:?}");
    // Exact: these are counts over 1200/1500 points in float32 like the golden run. Only a point
    // within float32 rounding (~1e-6 relative) of a ball boundary could flip, and none is here;
    // a change in the GEMM's summation order could in principle make this fragile.
    assert_eq!(pr.precision, f(gp, "precision"));
    assert_eq!(pr.recall, f(gp, "recall"));
}

#[test]
fn precision_recall_real_split() {
    let (dir, g, text) = golden();
    let (rows, d) = real_pool3(&dir, &g, &text);
    let split = u(&g["fid_real_split"], "split_at");
    let gp = &g["precision_recall_real_split"];
    let cfg = PrConfig { k: u(gp, "k"), ..pr_f32() };
    let pr = precision_recall(&rows[..split * d], &rows[split * d..], d, &cfg).unwrap();
    println!("real split P/R {pr:?}");
    assert_eq!(pr.precision, f(gp, "precision"));
    assert_eq!(pr.recall, f(gp, "recall"));
    // The fp16 emulation runs on the same data (no golden: it rounds distances to fp16 ulps).
    let fp16 = precision_recall(&rows[..split * d], &rows[split * d..], d, &PrConfig { k: cfg.k, ..PrConfig::default() }).unwrap();
    println!("real split P/R in fp16 mode {fp16:?}");
    assert_eq!(fp16.fp32_fallback_blocks, 0);
}

#[test]
fn inception_score_adm_mode() {
    let (dir, g, _) = golden();
    let gi = &g["inception_score"];
    let (logits, shape) = read_npy_f32(&dir.join(gi["logits_file"].as_str().unwrap()));
    let is = inception_score_adm(&logits, shape[1], u(gi, "split_size")).unwrap();
    println!("ADM IS {is:?}");
    // float32 arithmetic like numpy's; exp/log may differ by an ulp between libms.
    let (mean, std) = (f(gi, "mean"), f(gi, "std"));
    assert!((is.mean - mean).abs() < 1e-4 * mean, "{} vs {mean}", is.mean);
    assert!((is.std - std).abs() < 1e-4 * mean, "{} vs {std}", is.std);
}

#[test]
fn inception_score_torch_fidelity_mode() {
    let (dir, g, _) = golden();
    let ng = numpy_golden();
    let gi = &ng["inception_score_torch_fidelity"];
    let (logits, shape) = read_npy_f32(&dir.join(g["inception_score"]["logits_file"].as_str().unwrap()));
    let is = inception_score_torch_fidelity(&logits, shape[1], u(gi, "splits"), u(gi, "shuffle_seed") as u32).unwrap();
    println!("torch-fidelity IS {is:?}");
    // float64 on both sides; only summation order differs.
    assert!((is.mean - f(gi, "mean")).abs() < 1e-12, "{} vs {}", is.mean, f(gi, "mean"));
    assert!((is.std - f(gi, "std")).abs() < 1e-12, "{} vs {}", is.std, f(gi, "std"));
}

#[test]
fn kid_one_subset() {
    let (dir, g, _) = golden();
    let (x, y, d) = synthetic(&dir);
    let gk = &g["kid_synthetic_one_subset"];
    assert_eq!((x.len() / d, y.len() / d), (u(gk, "rows_x"), u(gk, "rows_y")));
    let kid = mmd2_unbiased_f32(&x, &y, d).unwrap();
    // f64 kernel sums over ~3.6M terms of size ~1 on both sides: agreement to ~1e-12 absolute;
    // 1e-9 relative leaves room for a float32 Gram in the reference.
    let expected = f(gk, "kid");
    assert!((kid - expected).abs() < 1e-9 * expected.abs().max(1e-3), "{kid} vs {expected}");
}

#[test]
fn numpy_random_state_permutations() {
    let ng = numpy_golden();
    for (key, case) in ng["permutations"].as_object().unwrap() {
        let perm = Mt19937::new(u(case, "seed") as u32).permutation(u(case, "n"));
        let expected: Vec<usize> = case["perm"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        assert_eq!(perm, expected, "permutation {key}");
    }
    for (key, case) in ng["permutation_checks"].as_object().unwrap() {
        let n = u(case, "n");
        let perm = Mt19937::new(u(case, "seed") as u32).permutation(n);
        let as_vec = |k: &str| -> Vec<usize> { case[k].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect() };
        assert_eq!(perm[..16].to_vec(), as_vec("first"), "{key}");
        assert_eq!(perm[n - 16..].to_vec(), as_vec("last"), "{key}");
        let weighted: u64 = perm.iter().enumerate().map(|(i, &p)| (i * p) as u64).sum();
        assert_eq!(weighted, case["weighted_sum"].as_u64().unwrap(), "{key}");
    }
}
