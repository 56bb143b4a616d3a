//! IS out of the box: `genbench eval` on a fresh cache and an empty torch hub folder fetches the
//! full Inception weights (with the 1008-way classifier) and reports the Inception Score. A local
//! HTTP server on 127.0.0.1 stands in for pytorch-fid's release host (unreachable from the build
//! machines), serving a stand-in file the test builds: the real network (the pip weights) plus a
//! seeded classifier, named with its own SHA-256 prefix as the release file is.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use genbench_metrics::inception::weights::{default_cache_dir, resolve_default_with, torch_hub_checkpoints_dir, INCEPTION_URL_ENV};
use genbench_metrics::npz::{read_npy_images, write_images_npz};
use serde_json::Value;

/// Serves `body` at `/name` (404 elsewhere) on an ephemeral 127.0.0.1 port; returns the URL.
fn serve_one(name: String, body: Vec<u8>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/{name}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            let _ = reader.read_line(&mut request);
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                line.clear();
            }
            let ok = request.split_whitespace().nth(1) == Some(&format!("/{name}"));
            let head = if ok {
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len())
            } else {
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string()
            };
            let _ = stream.write_all(head.as_bytes()).and_then(|_| if ok { stream.write_all(&body) } else { Ok(()) });
        }
    });
    url
}

fn fixture_dir() -> PathBuf {
    std::env::var_os("GENBENCH_FIXTURE_INCEPTION")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/inception"))
}

#[test]
fn eval_on_a_fresh_cache_fetches_the_classifier_and_gives_is() {
    let tmp = tempfile::tempdir().unwrap();
    // The stand-in release file.
    let default = resolve_default_with(&default_cache_dir(), &torch_hub_checkpoints_dir(), None).expect("pip Inception weights");
    let mut tensors = default.tensors.clone();
    let fc: Vec<f32> = (0..1008 * 2048).map(|i| ((i * 2654435761usize) % 1000) as f32 / 1e3 - 0.5).collect();
    tensors.insert("output.weight".into(), candle_core::Tensor::from_vec(fc, (1008, 2048), &candle_core::Device::Cpu).unwrap());
    tensors.insert("output.bias".into(), candle_core::Tensor::zeros(1008, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap());
    let staged = tmp.path().join("standin.safetensors");
    genbench_runtime::checkpoint::save_safetensors_atomic(&tensors, &staged).unwrap();
    let bytes = std::fs::read(&staged).unwrap();
    let name = format!("inception-standin-{}.safetensors", &genbench_runtime::hash::sha256_bytes(&bytes)[..8]);
    let url = serve_one(name.clone(), bytes);

    // Samples and reference: the photos128 group in two halves.
    let (images, info) = read_npy_images(&fixture_dir().join("photos128_images.npy")).unwrap();
    let half = info.n / 2;
    let b = info.image_bytes();
    let (samples, reference) = (tmp.path().join("s.npz"), tmp.path().join("r.npz"));
    write_images_npz(&samples, &images[..half * b], half, info.h, info.w, &[]).unwrap();
    write_images_npz(&reference, &images[half * b..2 * half * b], half, info.h, info.w, &[]).unwrap();

    let (cache, torch_home) = (tmp.path().join("fresh_cache"), tmp.path().join("torch_home"));
    let result = tmp.path().join("result.json");
    let out = Command::new(env!("CARGO_BIN_EXE_genbench"))
        .args(["eval", "--samples", samples.to_str().unwrap(), "--ref", reference.to_str().unwrap(), "--metrics", "fid,is"])
        .args(["--device", "cpu", "--out", result.to_str().unwrap()])
        .env("GENBENCH_CACHE", &cache)
        .env("TORCH_HOME", &torch_home)
        .env(INCEPTION_URL_ENV, &url)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("stderr: {stderr}");
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("fetching the full Inception weights"), "{stderr}");
    assert!(cache.join("inception").join(&name).is_file(), "the download is kept in the cache");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&result).unwrap()).unwrap();
    assert_eq!(report["weights"]["has_fc"], Value::Bool(true));
    let is = &report["metrics"]["inception_score"];
    assert_eq!(is["available"], Value::Bool(true), "{is}");
    let mean = is["mean"].as_f64().unwrap();
    assert!(mean.is_finite() && mean >= 1.0, "IS {mean}");
    assert!(report["metrics"]["fid"]["value"].as_f64().unwrap().is_finite());
}

/// A stand-in for ADM's reference batch at `resolution`: 2 images and the four statistics
/// (identity covariances; mu 2048-d as the FID Inception's, mu_s `spatial_dim`-d).
fn standin_reference_batch(path: &Path, resolution: u64, pool_dim: usize) -> Vec<u8> {
    use genbench_metrics::npz::{write_npz, NpyArray};
    let images = vec![7u8; (2 * resolution * resolution * 3) as usize];
    let (d, ds) = (pool_dim as u64, 16u64);
    let eye = |n: u64| -> Vec<f64> { (0..n * n).map(|i| if i % (n + 1) == 0 { 1.0 } else { 0.0 }).collect() };
    let (mu, sigma, mu_s, sigma_s) = (vec![0.5f64; d as usize], eye(d), vec![0.25f64; ds as usize], eye(ds));
    write_npz(
        path,
        &[
            NpyArray::U8 { name: "arr_0", shape: &[2, resolution, resolution, 3], data: &images },
            NpyArray::F64 { name: "mu", shape: &[d], data: &mu },
            NpyArray::F64 { name: "sigma", shape: &[d, d], data: &sigma },
            NpyArray::F64 { name: "mu_s", shape: &[ds], data: &mu_s },
            NpyArray::F64 { name: "sigma_s", shape: &[ds, ds], data: &sigma_s },
        ],
    )
    .unwrap();
    std::fs::read(path).unwrap()
}

fn fetch_ref(cache: &Path, base_url: &str, extra: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_genbench"))
        .args(["fetch-ref", "imagenet256", "--cache-dir"])
        .arg(cache)
        .args(extra)
        .env(genbench_metrics::reference_batches::REFERENCE_URL_ENV, base_url)
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout).to_string(), String::from_utf8_lossy(&out.stderr).to_string());
    println!("stdout: {stdout}\nstderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    (out.status.success(), stdout, stderr)
}

/// `genbench fetch-ref imagenet256` against a local server: a batch of the published structure is
/// kept with its SHA-256 recorded; a wrong `--sha256`, a file of another structure and a cached
/// file that changed are refused, naming the problem, and nothing half-checked is kept.
#[test]
fn fetch_ref_checks_structure_records_and_pins_the_hash() {
    let tmp = tempfile::tempdir().unwrap();
    let name = "VIRTUAL_imagenet256_labeled.npz";
    let body = standin_reference_batch(&tmp.path().join("good.npz"), 256, 2048);
    let base = |url: String| url.trim_end_matches(name).trim_end_matches('/').to_string();

    // A pinned hash that the file does not have: refused during the download, nothing kept.
    let cache = tmp.path().join("cache");
    let (ok, _, stderr) = fetch_ref(&cache, &base(serve_one(name.into(), body.clone())), &["--sha256", &"0".repeat(64)]);
    assert!(!ok && stderr.contains("expected SHA-256 0000"), "{stderr}");
    let kept = cache.join("reference-batches").join(name);
    assert!(!kept.exists(), "a download with the wrong hash was kept");

    // The published structure: kept, its hash recorded, the path printed; a second call finds it.
    let sha = genbench_runtime::hash::sha256_bytes(&body);
    let (ok, stdout, _) = fetch_ref(&cache, &base(serve_one(name.into(), body.clone())), &[]);
    assert!(ok && stdout.trim() == kept.display().to_string(), "{stdout}");
    assert_eq!(std::fs::read_to_string(kept.with_extension("npz.sha256")).unwrap().trim(), sha);
    let (ok, _, _) = fetch_ref(&cache, "http://127.0.0.1:9", &["--sha256", &sha]);
    assert!(ok, "the cached batch was not found (or its matching --sha256 refused)");

    // The cached file changed after it was fetched: refused, naming both hashes.
    let mut changed = body.clone();
    let last = changed.len() - 1;
    changed[last] ^= 1;
    std::fs::write(&kept, &changed).unwrap();
    let (ok, _, stderr) = fetch_ref(&cache, "http://127.0.0.1:9", &[]);
    assert!(!ok && stderr.contains("recorded when it was fetched") && stderr.contains(&sha), "{stderr}");

    // Another structure (512 px images where 256 are published; a 64-d mu): not kept.
    for (res, dim, why) in [(512, 2048, "expected ImageNet images of 256x256"), (256, 64, "expected the FID Inception's 2048")] {
        let cache = tmp.path().join(format!("cache-{res}-{dim}"));
        let body = standin_reference_batch(&tmp.path().join(format!("bad-{res}-{dim}.npz")), res, dim);
        let (ok, _, stderr) = fetch_ref(&cache, &base(serve_one(name.into(), body)), &[]);
        assert!(!ok && stderr.contains(why) && stderr.contains("it was not kept"), "{stderr}");
        assert!(!cache.join("reference-batches").join(name).exists());
    }

    // No server: a clear message saying what to do instead.
    let (ok, _, stderr) = fetch_ref(&tmp.path().join("cache-offline"), "http://127.0.0.1:9", &[]);
    assert!(!ok && stderr.contains("download") && stderr.contains("--ref"), "{stderr}");
}
