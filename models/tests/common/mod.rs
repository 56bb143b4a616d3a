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
