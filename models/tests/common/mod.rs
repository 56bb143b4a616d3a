//! Helpers shared by the parity tests: locating a fixture folder (env override, default the
//! repo's copy), reading its `io.safetensors` / `config.json` / `golden.json`, and comparing
//! tensors with a stated tolerance and a useful failure message.
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::PathBuf;

/// The fixture folder: `$env_var` if set, else `<repo>/tests/fixtures/models/<default_sub>`.
/// Prints the folder so a CI log shows which fixture a test ran against.
pub fn fixture_dir(env_var: &str, default_sub: &str) -> PathBuf {
    let dir = match std::env::var_os(env_var) {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models").join(default_sub),
    };
    eprintln!("fixture folder ({env_var}): {}", dir.display());
    assert!(dir.is_dir(), "fixture folder {} does not exist (set {env_var})", dir.display());
    dir
}

/// All tensors of `<dir>/io.safetensors`, on the CPU, in their stored dtype.
pub fn load_io(dir: &std::path::Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join("io.safetensors"), &Device::Cpu).expect("io.safetensors")
}

pub fn load_json(dir: &std::path::Path, name: &str) -> serde_json::Value {
    let p = dir.join(name);
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Largest absolute difference and the largest reference magnitude.
pub fn max_abs_diff(actual: &Tensor, expected: &Tensor) -> (f64, f64) {
    assert_eq!(actual.dims(), expected.dims(), "shape mismatch");
    let a = actual.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let e = expected.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let mut worst = 0f64;
    let mut scale = 0f64;
    for (x, y) in a.iter().zip(&e) {
        assert!(x.is_finite(), "non-finite value in output");
        worst = worst.max((x - y).abs());
        scale = scale.max(y.abs());
    }
    (worst, scale)
}

/// Asserts |a - e| <= atol + rtol * max|e| elementwise-max, printing the achieved error.
pub fn assert_close(name: &str, actual: &Tensor, expected: &Tensor, rtol: f64, atol: f64) {
    let (err, scale) = max_abs_diff(actual, expected);
    let bound = atol + rtol * scale;
    eprintln!("{name}: max|err| = {err:.3e} (max|ref| = {scale:.3e}, bound {bound:.3e})");
    assert!(err <= bound, "{name}: max|err| {err:.3e} exceeds {bound:.3e} (rtol {rtol}, atol {atol})");
}

/// Asserts two integer tensors are identical.
pub fn assert_same_ids(name: &str, actual: &Tensor, expected: &Tensor) {
    let a = actual.to_dtype(DType::I64).unwrap().flatten_all().unwrap().to_vec1::<i64>().unwrap();
    let e = expected.to_dtype(DType::I64).unwrap().flatten_all().unwrap().to_vec1::<i64>().unwrap();
    assert_eq!(actual.dims(), expected.dims(), "{name}: shape mismatch");
    let bad = a.iter().zip(&e).filter(|(x, y)| x != y).count();
    assert_eq!(bad, 0, "{name}: {bad} of {} ids differ", a.len());
    eprintln!("{name}: all {} ids equal", a.len());
}

/// The folder for a half-precision parity test: the selected fixture folder
/// (`fixture_dir(env_var, default_sub)`) when it has an `io_half.safetensors`, else the repo's
/// own copy, which always has one. A fixture set of the same format without half-precision
/// references (another fixture set run through `GENBENCH_FIXTURE_<FAM>`) thus still runs the
/// half test, on the repo's fixture; the folder used is printed.
pub fn half_fixture_dir(env_var: &str, default_sub: &str) -> PathBuf {
    let selected = fixture_dir(env_var, default_sub);
    if selected.join("io_half.safetensors").is_file() {
        return selected;
    }
    let own = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models").join(default_sub);
    eprintln!("{} has no io_half.safetensors: the half-precision test uses the repo's fixture {}", selected.display(), own.display());
    assert!(own.join("io_half.safetensors").is_file(), "{} has no io_half.safetensors", own.display());
    own
}

/// One output computed in half precision, checked against the reference run in the same
/// precision (`ref_half`, from `io_half.safetensors`) and the float32 reference (`ref_f32`).
/// `e_ref` = max |ref_half - ref_f32| is how far the reference's own half run lands from f32:
/// two half-precision implementations differ by their rounding, of that size. Asserts that
/// ours is within `k_same x e_ref` of the reference's half output and within `k_f32 x e_ref`
/// of the f32 reference, and that it really ran in half (more than 0.1 x e_ref from f32; f32
/// runs agree to ~1e-6 relative). Prints the three errors.
pub fn assert_half_close(key: &str, dtype: &str, ours: &Tensor, ref_half: &Tensor, ref_f32: &Tensor, k_same: f64, k_f32: f64) {
    let ours = ours.to_dtype(DType::F32).unwrap();
    let (e_ref, scale) = max_abs_diff(ref_half, ref_f32);
    let (e_same, _) = max_abs_diff(&ours, ref_half);
    let (e_f32, _) = max_abs_diff(&ours, ref_f32);
    eprintln!(
        "{key} {dtype}: ours vs reference {dtype} {e_same:.3e} ({:.2} e_ref); ours vs f32 {e_f32:.3e} ({:.2} e_ref); reference {dtype} vs f32 e_ref {e_ref:.3e} (max|ref| {scale:.3})",
        e_same / e_ref,
        e_f32 / e_ref
    );
    assert!(e_ref > 0.0 && e_ref < 0.1 * scale, "{key}.{dtype}: implausible reference half error {e_ref}");
    assert!(e_f32 > 0.1 * e_ref, "{key} {dtype}: {e_f32:.3e} from f32 looks like an f32 run");
    assert!(e_same <= k_same * e_ref, "{key} {dtype}: {e_same:.3e} from the reference's {dtype} run exceeds {k_same} x {e_ref:.3e}");
    assert!(e_f32 <= k_f32 * e_ref, "{key} {dtype}: {e_f32:.3e} from the f32 reference exceeds {k_f32} x {e_ref:.3e}");
}
