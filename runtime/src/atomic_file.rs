//! Results that are either complete or absent: every output file is written under a temporary
//! name beside its destination, synced, and renamed over it only when the writer succeeded.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Runs `write` on a temporary file beside `path` (same extension, so encoders that look at it
/// still work), syncs it and renames it over `path`. On error the temporary file is removed and
/// `path` is left as it was. Missing parent directories are created.
pub fn write_atomically(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = temporary_sibling(path)?;
    let result = (|| {
        write(&tmp)?;
        File::open(&tmp).and_then(|f| f.sync_all()).with_context(|| format!("cannot sync {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot move {} to {}", tmp.display(), path.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {} failed; nothing was written there", path.display()))
}

/// [`write_atomically`] for writers that take the open file.
pub fn write_file_atomically(path: &Path, write: impl FnOnce(&mut File) -> Result<()>) -> Result<()> {
    write_atomically(path, |tmp| {
        let mut file = File::create(tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        write(&mut file)
    })
}

fn temporary_sibling(path: &Path) -> Result<PathBuf> {
    let name = path.file_name().and_then(|n| n.to_str()).with_context(|| format!("{}: not a file path", path.display()))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create the output directory {}", dir.display()))?;
    }
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("tmp");
    Ok(path.with_file_name(format!(".{name}.{}.partial.{ext}", std::process::id())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn failed_writes_leave_the_target_and_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keep.json");
        std::fs::write(&path, "old").unwrap();
        let err = write_file_atomically(&path, |f| {
            f.write_all(b"partial")?;
            anyhow::bail!("simulated failure")
        })
        .unwrap_err();
        assert!(format!("{err:#}").contains("simulated failure") && format!("{err:#}").contains("keep.json"), "{err:#}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn successful_writes_replace_the_target_and_create_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new").join("plot.svg");
        write_atomically(&path, |tmp| {
            assert_eq!(tmp.extension().unwrap(), "svg", "encoders look at the extension");
            Ok(std::fs::write(tmp, "<svg/>")?)
        })
        .unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "<svg/>");
        assert_eq!(std::fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
    }
}
