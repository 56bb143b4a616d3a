//! The kernel-route switch for the FID Inception: under `GENBENCH_KERNELS=generic` /
//! `--kernels generic` the CPU runs the candle-op engine that CUDA runs, not the NHWC gemm
//! engine, and the two agree. One test function: the route is process-wide.

use genbench_metrics::inception::network::{InceptionNet, INPUT_SIZE};
use genbench_metrics::inception::weights::{default_cache_dir, fold_batch_norm, WeightsSource};
use genbench_metrics::preprocess::{preprocess_batch, Preprocess};
use genbench_runtime::kernels::{self, KernelRoute};
use std::path::{Path, PathBuf};

/// As `inception_parity.rs`: 1e-3 absolute on pool_3 features of O(1) (two engines that differ
/// only in summation order, ~1e-6 relative per layer over 94 layers).
const TOL: f32 = 1e-3;

fn fixture_dir() -> PathBuf {
    std::env::var_os("GENBENCH_FIXTURE_INCEPTION")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/inception"))
}

#[test]
fn generic_route_takes_the_candle_engine() {
    let resolved = WeightsSource::Default.resolve(&default_cache_dir()).unwrap();
    let folded = fold_batch_norm(&resolved.tensors).unwrap();
    // One 299x299 fixture photo (no resize involved).
    let path = fixture_dir().join("photos299_images.npy");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    assert_eq!(shape[1..], [INPUT_SIZE, INPUT_SIZE, 3], "{}", path.display());
    let images: Vec<u8> = npy.into_vec().unwrap();
    let x = preprocess_batch(&images[..INPUT_SIZE * INPUT_SIZE * 3], 1, INPUT_SIZE, INPUT_SIZE, Preprocess::Adm).unwrap();

    kernels::set_route(KernelRoute::Fast);
    kernels::reset_fast_calls();
    let net = InceptionNet::new(&folded, &candle_core::Device::Cpu).unwrap();
    assert!(matches!(net, InceptionNet::Cpu(_)), "fast route: expected the NHWC gemm engine");
    let fast = net.forward_nhwc(&x, 1).unwrap();
    assert_eq!(kernels::fast_calls().get("inception-nhwc-gemm"), Some(&1));

    kernels::set_route(KernelRoute::Generic);
    kernels::reset_fast_calls();
    let net = InceptionNet::new(&folded, &candle_core::Device::Cpu).unwrap();
    assert!(matches!(net, InceptionNet::Candle(_)), "generic route: expected the candle engine");
    let generic = net.forward_nhwc(&x, 1).unwrap();
    assert_eq!(kernels::total_fast_calls(), 0, "fast kernels ran on the generic route: {:?}", kernels::fast_calls());
    kernels::set_route(KernelRoute::Fast);

    let d = fast.pool3.iter().zip(&generic.pool3).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    let scale = fast.pool3.iter().fold(0f32, |m, v| m.max(v.abs()));
    println!("pool3: fast vs generic max |diff| {d:e} (max |value| {scale})");
    assert!(scale > 0.1, "features look empty");
    assert!(d <= TOL, "pool3 differs by {d}");
}
