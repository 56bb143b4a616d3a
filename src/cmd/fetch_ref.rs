//! `genbench fetch-ref`: flags for `genbench_metrics::reference_batches` (ADM's reference batches).

use anyhow::Result;
use genbench_metrics::inception::weights::default_cache_dir;
use genbench_metrics::reference_batches::fetch_reference_batch;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct FetchRefArgs {
    /// imagenet256 or imagenet512.
    pub name: String,
    /// Expected SHA-256 (none is published: by default the file's structure is checked and its
    /// hash recorded for later uses).
    #[arg(long)]
    pub sha256: Option<String>,
    /// Cache folder (default: $GENBENCH_CACHE, $XDG_CACHE_HOME/genbench or ~/.cache/genbench).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
}

pub fn run(a: FetchRefArgs) -> Result<()> {
    let path = fetch_reference_batch(&a.name, a.sha256.as_deref(), &a.cache_dir.unwrap_or_else(default_cache_dir))?;
    println!("{}", path.display());
    Ok(())
}
