//! ADM's reference batches (guided-diffusion's `evaluations/README.md`): the ImageNet images and
//! FID/sFID statistics every paper in this harness compares against, fetched into the cache
//! over HTTPS with [`crate::download`].
//!
//! No checksum of these files is published (not in the guided-diffusion repository, its README
//! or its issues), so none can be pinned here honestly. A download is accepted only when it
//! has the published structure (a uint8 `arr_0` of `[N, R, R, 3]` at the batch's resolution,
//! and `mu`/`sigma` (2048) and `mu_s`/`sigma_s` statistics, finite); its SHA-256 is then written
//! beside it (`<file>.sha256`), and every later use checks the file against that record, so a
//! file that changes after it was fetched is refused. `--sha256` pins a hash the user trusts
//! (e.g. one a lab has recorded), checked during the download as the Inception weights' are.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};

use crate::download::{fetch_verified, file_name, HashCheck};
use crate::npz;

/// Overrides the base URL the batches are fetched from (a mirror; the tests' local server).
pub const REFERENCE_URL_ENV: &str = "GENBENCH_REFERENCE_BATCH_URL";

/// The published batches: (name, resolution, URL).
pub const REFERENCE_BATCHES: &[(&str, usize, &str)] = &[
    (
        "imagenet256",
        256,
        "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/imagenet/256/VIRTUAL_imagenet256_labeled.npz",
    ),
    ("imagenet512", 512, "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/imagenet/512/VIRTUAL_imagenet512.npz"),
];

/// Where `name`'s batch lives in `cache_dir`.
pub fn cached_path(cache_dir: &Path, url: &str) -> PathBuf {
    cache_dir.join("reference-batches").join(file_name(url))
}

/// Fetches the batch `name` into `cache_dir` (or finds it there) and returns its path. A cached
/// file is checked against the SHA-256 recorded when it was fetched (and `sha256`, if given).
pub fn fetch_reference_batch(name: &str, sha256: Option<&str>, cache_dir: &Path) -> Result<PathBuf> {
    let Some(&(_, resolution, published_url)) = REFERENCE_BATCHES.iter().find(|(n, _, _)| *n == name) else {
        bail!("unknown reference batch `{name}`; known: {}", REFERENCE_BATCHES.iter().map(|(n, _, _)| *n).collect::<Vec<_>>().join(", "));
    };
    let url = match std::env::var(REFERENCE_URL_ENV) {
        Ok(base) => format!("{}/{}", base.trim_end_matches('/'), file_name(published_url)),
        Err(_) => published_url.to_string(),
    };
    let path = cached_path(cache_dir, &url);
    let record = PathBuf::from(format!("{}.sha256", path.display()));
    if path.is_file() {
        let actual = genbench_runtime::hash::sha256_file(&path)?;
        let recorded = std::fs::read_to_string(&record).unwrap_or_default();
        for (what, expected) in [("the SHA-256 recorded when it was fetched", recorded.trim()), ("--sha256", sha256.unwrap_or(""))] {
            ensure!(
                expected.is_empty() || actual.eq_ignore_ascii_case(expected),
                "{}: SHA-256 {actual} differs from {what} ({expected}); delete it and fetch again",
                path.display()
            );
        }
        check_structure(&path, resolution)?;
        return Ok(path);
    }
    // Without a pinned hash the download is accepted by its structure (see the module docs).
    let check = sha256.map_or(HashCheck::Unpinned, |h| HashCheck::Sha256(h.to_ascii_lowercase()));
    let got = fetch_verified(&url, &path, &check).with_context(|| {
        format!("cannot fetch the reference batch `{name}`; without network, download {published_url} elsewhere and pass it as --ref")
    })?;
    if let Err(e) = check_structure(&path, resolution) {
        let _ = std::fs::remove_file(&path);
        return Err(e.context(format!("{url} is not ADM's reference batch `{name}`; it was not kept")));
    }
    npz::write_file_atomically(&record, |f| {
        use std::io::Write;
        Ok(writeln!(f, "{got}")?)
    })?;
    Ok(path)
}

/// The published structure of a reference batch at `resolution` (see the module docs).
pub fn check_structure(path: &Path, resolution: usize) -> Result<()> {
    let info = npz::read_images_info(path)?;
    ensure!(
        info.h == resolution && info.w == resolution && info.n >= 2,
        "{}: arr_0 holds {} images of {}x{}, expected ImageNet images of {resolution}x{resolution}",
        path.display(),
        info.n,
        info.h,
        info.w
    );
    let stats = npz::read_statistics(path)?;
    ensure!(stats.missing.is_empty(), "{}: the statistics {} are missing", path.display(), stats.missing.join(", "));
    let dim = stats.pool.as_ref().map_or(0, |s| s.dim());
    ensure!(dim == 2048, "{}: mu has {dim} values, expected the FID Inception's 2048", path.display());
    Ok(())
}
