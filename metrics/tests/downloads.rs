//! The HTTPS fetch of published files, against a local HTTP server on 127.0.0.1 that the test
//! starts (the real hosts are not reachable from the build machines): a good file, a truncated
//! one, one with the wrong hash, a server that answers 404 and one that refuses connections;
//! then the full Inception weights fetched through `resolve_default_with` into a fresh cache.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use genbench_metrics::download::{fetch_verified, HashCheck};
use genbench_metrics::inception::weights::{
    cached_default_path, cached_download_path, default_cache_dir, resolve_default_with, torch_hub_checkpoints_dir,
};
use genbench_runtime::hash::sha256_bytes;

#[derive(Clone)]
enum Reply {
    Body(Vec<u8>),
    /// Announces `claimed` bytes, sends `body`, closes.
    Truncated {
        body: Vec<u8>,
        claimed: usize,
    },
    Status(u16),
}

/// Serves `replies` by path on an ephemeral 127.0.0.1 port; returns the base URL and a request counter.
fn serve(replies: HashMap<String, Reply>) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
            }
            seen.fetch_add(1, Ordering::SeqCst);
            let path = request_line.split_whitespace().nth(1).unwrap_or("/").to_string();
            let _ = match replies.get(&path).cloned().unwrap_or(Reply::Status(404)) {
                Reply::Body(b) => stream
                    .write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", b.len()).as_bytes())
                    .and_then(|_| stream.write_all(&b)),
                Reply::Truncated { body, claimed } => stream
                    .write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {claimed}\r\nConnection: close\r\n\r\n").as_bytes())
                    .and_then(|_| stream.write_all(&body)),
                Reply::Status(code) => {
                    stream.write_all(format!("HTTP/1.1 {code} Nope\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes())
                }
            };
        }
    });
    (base, count)
}

/// `<stem>-<first 8 hex of its SHA-256>.<ext>`, the release naming.
fn release_name(stem: &str, ext: &str, bytes: &[u8]) -> String {
    format!("{stem}-{}.{ext}", &sha256_bytes(bytes)[..8])
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

#[test]
fn good_truncated_wrong_hash_and_refusing_servers() {
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let good = release_name("payload", "bin", &payload);
    let mut tampered = payload.clone();
    tampered[1234] ^= 1;
    let mut replies = HashMap::new();
    replies.insert(format!("/{good}"), Reply::Body(payload.clone()));
    replies.insert("/cut/payload.bin".to_string(), Reply::Truncated { body: payload[..50_000].to_vec(), claimed: payload.len() });
    replies.insert(format!("/bad/{good}"), Reply::Body(tampered));
    replies.insert("/forbidden.bin".to_string(), Reply::Status(403));
    let (base, _) = serve(replies);
    let tmp = tempfile::tempdir().unwrap();

    // Good file: in place, same bytes, the returned hash is the file's.
    let dest = tmp.path().join("good").join(&good);
    let url = format!("{base}/{good}");
    let sha = fetch_verified(&url, &dest, &HashCheck::from_file_name(&url).unwrap()).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), payload);
    assert_eq!(sha, sha256_bytes(&payload));
    assert_eq!(leftovers(dest.parent().unwrap()), vec![good.clone()], "no temporary file left");
    // A full pinned hash works the same way.
    let pinned = tmp.path().join("pinned.bin");
    fetch_verified(&url, &pinned, &HashCheck::Sha256(sha256_bytes(&payload))).unwrap();

    // Truncated: refused, nothing kept.
    let dir = tmp.path().join("cut");
    let dest = dir.join("payload.bin");
    let err = format!("{:#}", fetch_verified(&format!("{base}/cut/payload.bin"), &dest, &HashCheck::Sha256(sha)).unwrap_err());
    assert!(err.contains("cut/payload.bin") && (err.contains("truncated") || err.contains("broke off")), "{err}");
    assert!(leftovers(&dir).is_empty(), "{:?}", leftovers(&dir));

    // Wrong hash: named with both hashes, nothing kept.
    let dir = tmp.path().join("bad");
    let url = format!("{base}/bad/{good}");
    let err = format!("{:#}", fetch_verified(&url, &dir.join(&good), &HashCheck::from_file_name(&url).unwrap()).unwrap_err());
    assert!(err.contains("SHA-256") && err.contains(&good[good.len() - 12..good.len() - 4]) && err.contains("not kept"), "{err}");
    assert!(leftovers(&dir).is_empty());

    // A server that says no, and one that refuses the connection.
    let err = format!(
        "{:#}",
        fetch_verified(&format!("{base}/forbidden.bin"), &tmp.path().join("f.bin"), &HashCheck::Sha256("00".into())).unwrap_err()
    );
    assert!(err.contains("HTTP 403") && err.contains("forbidden.bin"), "{err}");
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/x-12345678.bin", l.local_addr().unwrap())
    };
    let err =
        format!("{:#}", fetch_verified(&closed, &tmp.path().join("x.bin"), &HashCheck::from_file_name(&closed).unwrap()).unwrap_err());
    assert!(err.contains("cannot download") && err.contains(&closed), "{err}");
    assert!(!tmp.path().join("x.bin").exists() && !tmp.path().join("f.bin").exists());
}

#[test]
fn full_inception_weights_are_fetched_into_a_fresh_cache_once() {
    // A stand-in for pytorch-fid's release file: the real network (the pip weights) plus a seeded
    // 1008-way classifier, named with its own hash prefix like the release file.
    let default = resolve_default_with(&default_cache_dir(), &torch_hub_checkpoints_dir(), None).expect("pip Inception weights");
    let mut tensors = default.tensors.clone();
    let fc: Vec<f32> = (0..1008 * 2048).map(|i| ((i * 2654435761usize) % 1000) as f32 / 1e4 - 0.05).collect();
    tensors.insert("output.weight".into(), candle_core::Tensor::from_vec(fc, (1008, 2048), &candle_core::Device::Cpu).unwrap());
    tensors.insert("output.bias".into(), candle_core::Tensor::zeros(1008, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap());
    let tmp = tempfile::tempdir().unwrap();
    let staged = tmp.path().join("standin.safetensors");
    genbench_runtime::checkpoint::save_safetensors_atomic(&tensors, &staged).unwrap();
    let bytes = std::fs::read(&staged).unwrap();
    let name = release_name("inception-standin", "safetensors", &bytes);
    let mut tampered = bytes.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x20;
    let (base, requests) =
        serve(HashMap::from([(format!("/{name}"), Reply::Body(bytes)), (format!("/bad/{name}"), Reply::Body(tampered))]));

    let (cache, hub) = (tmp.path().join("cache"), tmp.path().join("hub"));
    std::fs::create_dir_all(&hub).unwrap();
    let url = format!("{base}/{name}");
    let w = resolve_default_with(&cache, &hub, Some(&url)).unwrap();
    assert!(w.has_fc(), "the fetched file has the classifier: {}", w.origin);
    assert!(cached_download_path(&cache, &url).is_file());
    assert_eq!(requests.load(Ordering::SeqCst), 1);
    // Second use: from the cache, no request.
    let again = resolve_default_with(&cache, &hub, Some(&url)).unwrap();
    assert!(again.has_fc());
    assert_eq!(requests.load(Ordering::SeqCst), 1);

    // A tampered release file is not kept; the pip weights (here already cached) still give FID.
    let cache2 = tmp.path().join("cache2");
    std::fs::create_dir_all(cached_default_path(&cache2).parent().unwrap()).unwrap();
    std::fs::copy(cached_default_path(&default_cache_dir()), cached_default_path(&cache2)).unwrap();
    let bad_url = format!("{base}/bad/{name}");
    let w = resolve_default_with(&cache2, &hub, Some(&bad_url)).unwrap();
    assert!(!w.has_fc());
    assert!(!cached_download_path(&cache2, &bad_url).exists());
}
