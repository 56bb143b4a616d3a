//! HTTPS downloads of published files into the cache, verified before they are used.
//!
//! The body is streamed to a temporary sibling of the destination while its SHA-256 is computed;
//! the file is renamed into place only when the byte count matches `Content-Length` and the hash
//! matches, so a truncated or tampered download never lands in the cache. Two checks exist:
//! a full pinned SHA-256, or torch hub's rule for release files that carry the first hex digits
//! of their SHA-256 in the name (`…-6726825d.pth`, `check_hash=True` in
//! `torch.hub.download_url_to_file`).

use anyhow::{bail, ensure, Context, Result};
use sha2::Digest as _;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What the downloaded bytes must hash to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashCheck {
    /// The full SHA-256 (hex).
    Sha256(String),
    /// A SHA-256 prefix (hex), as carried in a release file's name.
    Sha256Prefix(String),
    /// No published hash exists: the caller checks the content itself before using it.
    Unpinned,
}

impl HashCheck {
    /// torch hub's rule: the hex digits between the last `-` and the first `.` after it in the
    /// URL's file name (`pt_inception-2015-12-05-6726825d.pth` -> `6726825d`).
    pub fn from_file_name(url_or_name: &str) -> Result<Self> {
        let name = file_name(url_or_name);
        let stem = name.split('.').next().unwrap_or("");
        let prefix = stem.rsplit('-').next().unwrap_or("");
        ensure!(
            prefix.len() >= 8 && prefix.chars().all(|c| c.is_ascii_hexdigit()) && stem.contains('-'),
            "{name}: the file name carries no SHA-256 prefix (expected `<name>-<hex>.<ext>`), so the download cannot be verified"
        );
        Ok(Self::Sha256Prefix(prefix.to_ascii_lowercase()))
    }

    fn matches(&self, sha256: &str) -> bool {
        match self {
            Self::Sha256(full) => sha256.eq_ignore_ascii_case(full),
            Self::Sha256Prefix(prefix) => sha256.to_ascii_lowercase().starts_with(&prefix.to_ascii_lowercase()),
            Self::Unpinned => true,
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::Sha256(full) => format!("SHA-256 {full}"),
            Self::Sha256Prefix(prefix) => format!("a SHA-256 starting with {prefix} (the prefix in the file name)"),
            Self::Unpinned => "any SHA-256 (none is published)".to_string(),
        }
    }
}

/// The last path segment of a URL (or a bare name).
pub fn file_name(url: &str) -> &str {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    path.rsplit('/').next().unwrap_or(path)
}

/// Downloads `url` to `dest` (created atomically) and checks it; returns the SHA-256.
pub fn fetch_verified(url: &str, dest: &Path, check: &HashCheck) -> Result<String> {
    let dir = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create the folder {}", dir.display()))?;
    let nonce = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let part = PathBuf::from(format!("{}.part-{}-{nonce}", dest.display(), std::process::id()));
    let result = download_to(url, &part, check);
    match result {
        Ok(sha256) => {
            std::fs::rename(&part, dest).with_context(|| format!("cannot move the download into {}", dest.display()))?;
            Ok(sha256)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            Err(e)
        }
    }
}

fn download_to(url: &str, part: &Path, check: &HashCheck) -> Result<String> {
    let agent = ureq::AgentBuilder::new().timeout_connect(Duration::from_secs(15)).timeout_read(Duration::from_secs(60)).build();
    let response = match agent.get(url).call() {
        Ok(r) => r,
        Err(ureq::Error::Status(code, r)) => bail!("cannot download {url}: the server answered HTTP {code} {}", r.status_text()),
        Err(e) => bail!("cannot download {url}: {e}"),
    };
    let expected_len: Option<u64> = response.header("Content-Length").and_then(|v| v.trim().parse().ok());
    let mut reader = response.into_reader();
    let mut file = std::fs::File::create(part).with_context(|| format!("cannot create {}", part.display()))?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => bail!("download of {url} broke off after {total} bytes{}: {e}", of_expected(expected_len)),
        };
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n]).with_context(|| format!("cannot write {}", part.display()))?;
        total += n as u64;
    }
    file.sync_all().with_context(|| format!("cannot write {}", part.display()))?;
    if let Some(len) = expected_len {
        ensure!(total == len, "download of {url} is truncated: got {total} of {len} bytes; try again");
    }
    let sha256 = hex::encode(hasher.finalize());
    ensure!(
        check.matches(&sha256),
        "download of {url} ({total} bytes) has SHA-256 {sha256}, expected {}: the file is corrupt or not the published one; it was not kept",
        check.describe()
    );
    Ok(sha256)
}

fn of_expected(len: Option<u64>) -> String {
    len.map(|l| format!(" of {l}")).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_prefix_comes_from_the_file_name() {
        let url = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth";
        assert_eq!(HashCheck::from_file_name(url).unwrap(), HashCheck::Sha256Prefix("6726825d".into()));
        assert_eq!(file_name("http://h/a/b.npz?x=1"), "b.npz");
        let err = HashCheck::from_file_name("http://h/VIRTUAL_imagenet256_labeled.npz").unwrap_err().to_string();
        assert!(err.contains("no SHA-256 prefix"), "{err}");
        assert!(HashCheck::Sha256Prefix("6726825d".into()).matches("6726825DABCD"));
        assert!(!HashCheck::Sha256Prefix("6726825d".into()).matches("6726825eabcd"));
    }
}
