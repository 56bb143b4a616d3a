//! `genbench merge --out OUT`: assembles the parts that `genbench sample --shard I/N` runs left
//! in `OUT.parts/` (or the given `--parts` folders) into `OUT`, byte-identical to a
//! single-process run. Refuses missing batches (naming them), duplicates and parts of another
//! job before writing anything.

use anyhow::Result;
use genbench_harness::sampling::{merge_parts, parts_dir};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct MergeArgs {
    /// The final .npz (the `--out` the sample runs were given).
    #[arg(long)]
    pub out: PathBuf,
    /// Parts folders to merge (repeat; e.g. copies gathered from machines without a shared
    /// disk). Default: OUT.parts.
    #[arg(long)]
    pub parts: Vec<PathBuf>,
    /// Keep the parts folders after a successful merge (default: remove them).
    #[arg(long)]
    pub keep_parts: bool,
}

pub fn run(args: MergeArgs) -> Result<()> {
    let dirs = if args.parts.is_empty() { vec![parts_dir(&args.out)] } else { args.parts.clone() };
    let report = merge_parts(&args.out, &dirs, args.keep_parts)?;
    eprintln!("wrote {} ({} images from {} batches)", args.out.display(), report.images, report.batches);
    if let Some((features, stats)) = &report.features {
        eprintln!("wrote {} and {}", features.display(), stats.display());
    }
    Ok(())
}
