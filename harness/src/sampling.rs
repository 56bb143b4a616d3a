//! Sharded, resumable sampling into one ADM-format `.npz` (`genbench sample`, `genbench merge`).
//!
//! * A job (labels, batch size, seed, model settings) is cut into batches of `batch` labels.
//!   Batch `b` is sampled with a seed derived from `(seed, b)` only, so every batch's images are
//!   the same whichever process, shard or restart produces it, and the merged file does not
//!   depend on how the work was split.
//! * Batches go to `<out>.parts/batch_XXXXX.npz` (written atomically), beside a `manifest.json`
//!   holding the settings and their hash. Each batch file also records that hash and its own
//!   index, so a part copied in from another job is recognised.
//! * Claims: a process takes batch `b` by holding an exclusive `flock` on `batch_XXXXX.lock`
//!   while it samples and writes it. The lock is released when the process ends, however it
//!   ends, so a killed task's batch is taken over by the next process; on NFS, Linux maps flock
//!   to the server's byte-range locks. Several processes on one `--out` (GPUs of a node,
//!   restarted array tasks) therefore split the batches and never sample one twice at once.
//! * `--shard I/N` restricts a process to the batches `b` with `b mod N == I`; the first shard
//!   run records N in `shards.json`, and a later `--shard` with another N is refused.
//! * Optional Inception features per batch (`batch_XXXXX.features.safetensors`): the merge
//!   concatenates them and writes the FID/sFID statistics, so the evaluation does not
//!   re-extract the images.
//! * [`merge_parts`] checks every part (settings, index, count, labels) before writing anything
//!   and refuses missing batches (naming them), duplicates and parts of other jobs; it writes
//!   the final file through [`genbench_metrics::npz::write_npz_streamed`], one batch in memory
//!   at a time. A single-process run ends with the same merge, hence the same bytes.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{bail, ensure, Context, Result};
use genbench_metrics::features::{Features, InceptionExtractor};
use genbench_metrics::inception::{POOL3_DIM, SPATIAL_DIM};
use genbench_metrics::npz::{self, NpyArray, IMAGES_KEY, LABELS_KEY};
use genbench_metrics::stats::StatsAccumulator;
use genbench_models::generator::{Generator, NoObserver};
use genbench_runtime::progress::Progress;
use genbench_runtime::{RandomSource, SeededSource};

use crate::model_registry::parse_labels;

/// Name of the optional token array (ids, or MAR's latents).
pub const TOKENS_KEY: &str = "tokens";
/// Batch-file bookkeeping arrays (not copied into the merged file).
const BATCH_INDEX_KEY: &str = "genbench_batch_index";
const SETTINGS_HASH_KEY: &str = "genbench_settings_sha256";

/// Which of N disjoint parts of a job a process does: batches `b` with `b mod count == index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    pub fn new(index: usize, count: usize) -> Result<Self> {
        ensure!(count >= 1, "shard count N must be at least 1, got {count}");
        ensure!(index < count, "shard index {index} is outside 0..{count}: shards of N = {count} are numbered 0 to {}", count - 1);
        Ok(Self { index, count })
    }

    /// The shard of a Slurm array task (`SLURM_ARRAY_TASK_ID` minus `SLURM_ARRAY_TASK_MIN`, of
    /// `SLURM_ARRAY_TASK_COUNT`), or None outside an array job. `var` reads the environment.
    pub fn from_slurm(var: impl Fn(&str) -> Option<String>) -> Result<Option<Self>> {
        let (Some(id), Some(count)) = (var("SLURM_ARRAY_TASK_ID"), var("SLURM_ARRAY_TASK_COUNT")) else {
            return Ok(None);
        };
        let num = |name: &str, v: &str| -> Result<usize> {
            v.trim().parse().with_context(|| format!("{name}={v:?} is not a non-negative integer"))
        };
        let id = num("SLURM_ARRAY_TASK_ID", &id)?;
        let count = num("SLURM_ARRAY_TASK_COUNT", &count)?;
        let min = var("SLURM_ARRAY_TASK_MIN").map(|v| num("SLURM_ARRAY_TASK_MIN", &v)).transpose()?.unwrap_or(0);
        ensure!(id >= min, "SLURM_ARRAY_TASK_ID={id} is below SLURM_ARRAY_TASK_MIN={min}");
        Self::new(id - min, count)
            .context(
                "the Slurm array must be contiguous (--array=0-(N-1)) for its task ids to name shards; \
             or pass --shard I/N explicitly",
            )
            .map(Some)
    }

    pub fn owns(&self, batch: usize) -> bool {
        batch % self.count == self.index
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Shard {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        // Flat messages: clap shows only the outermost one.
        let (i, n) = s.split_once('/').with_context(|| format!("shard {s:?}: expected I/N, e.g. 0/4 (the first of four parts)"))?;
        let parse = |v: &str, what: &str| -> Result<usize> {
            v.trim().parse().map_err(|_| anyhow::anyhow!("shard {s:?}: {what} {v:?} is not a non-negative integer"))
        };
        Self::new(parse(i, "index")?, parse(n, "count")?).map_err(|e| anyhow::anyhow!("shard {s:?}: {e}"))
    }
}

/// The labels of a run: given (`"5,2,9"`), or `i mod classes` for i < n shuffled with the seed.
pub fn plan_labels(n: Option<i64>, labels: Option<&str>, num_classes: usize, seed: u64) -> Result<Vec<u32>> {
    let labels = match (n, labels) {
        (_, Some(l)) => {
            let l = parse_labels(l)?;
            ensure!(!l.is_empty(), "--labels is empty");
            l
        }
        (Some(n), None) => {
            ensure!(n > 0, "--n must be positive, got {n}");
            let n = n as usize;
            // A stream of its own so the label order does not depend on the batch streams.
            let mut rng = SeededSource::for_stream(seed, u64::MAX);
            let perm = rng.permutation(n)?;
            perm.into_iter().map(|i| (i % num_classes) as u32).collect()
        }
        (None, None) => bail!("give --n N or --labels a,b,c"),
    };
    if let Some(&bad) = labels.iter().find(|&&l| l as usize >= num_classes) {
        bail!("class id {bad} is out of range: the model has {num_classes} classes (0..{})", num_classes - 1);
    }
    Ok(labels)
}

/// Seed of batch `b`: a function of `(seed, b)` only.
pub fn batch_seed(seed: u64, batch: usize) -> u64 {
    SeededSource::for_stream(seed, batch as u64).next_u64()
}

/// `<out>.parts`.
pub fn parts_dir(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".parts");
    PathBuf::from(s)
}

fn batch_path(parts: &Path, b: usize) -> PathBuf {
    parts.join(format!("batch_{b:05}.npz"))
}

fn features_path(parts: &Path, b: usize) -> PathBuf {
    parts.join(format!("batch_{b:05}.features.safetensors"))
}

fn lock_path(parts: &Path, b: usize) -> PathBuf {
    parts.join(format!("batch_{b:05}.lock"))
}

/// `samples.npz` -> `samples.features.safetensors` (every image's Inception features).
pub fn merged_features_path(out: &Path) -> PathBuf {
    out.with_extension("features.safetensors")
}

/// `samples.npz` -> `samples_stats.npz` (mu, sigma, mu_s, sigma_s as ADM's evaluator reads them).
pub fn merged_stats_path(out: &Path) -> PathBuf {
    let stem = out.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    out.with_file_name(format!("{stem}_stats.npz"))
}

/// One sampling job.
#[derive(Clone, Debug)]
pub struct SampleJob {
    /// The final `.npz`; parts go to `<out>.parts/`.
    pub out: PathBuf,
    pub labels: Vec<u32>,
    /// Images per forward batch and per part file.
    pub batch: usize,
    pub seed: u64,
    /// Everything else that determines the images (model, weights, sampler settings, dtype...):
    /// parts made with other settings are refused.
    pub settings: serde_json::Value,
    /// Also store the sampled tokens (ids, or MAR's latents) as `tokens`.
    pub save_tokens: bool,
    /// Also extract Inception features per batch (merged into features + statistics files).
    pub features: bool,
}

/// What one process did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SampleReport {
    pub batches_total: usize,
    /// Batches this process was to see to (its shard's, or all).
    pub batches_assigned: usize,
    /// Batches this process sampled.
    pub batches_sampled: usize,
    /// Of the assigned batches, those already on disk (an earlier or concurrent process).
    pub batches_found: usize,
    /// Stopped early on request (`stop_after_batches`).
    pub stopped: bool,
}

/// How one process takes part in a job.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessOptions {
    pub shard: Option<Shard>,
    /// Stop after sampling this many batches, leaving the job resumable (tests of resumption).
    pub stop_after_batches: Option<usize>,
}

impl SampleJob {
    pub fn batches(&self) -> usize {
        self.labels.len().div_ceil(self.batch)
    }

    fn batch_labels(&self, b: usize) -> &[u32] {
        &self.labels[b * self.batch..((b + 1) * self.batch).min(self.labels.len())]
    }

    fn manifest(&self) -> serde_json::Value {
        let label_bytes: Vec<u8> = self.labels.iter().flat_map(|l| l.to_le_bytes()).collect();
        serde_json::json!({
            "settings": self.settings,
            "seed": self.seed,
            "batch": self.batch,
            "n": self.labels.len(),
            "batches": self.batches(),
            "labels_sha256": genbench_runtime::hash::sha256_bytes(&label_bytes),
            "save_tokens": self.save_tokens,
        })
    }

    fn settings_hash(&self) -> Result<String> {
        Ok(genbench_runtime::hash::sha256_bytes(serde_json::to_string(&self.manifest())?.as_bytes()))
    }

    /// Checks what can be checked before any work (output path, parts on disk, shard record)
    /// and creates the parts folder with its manifest. Nothing on disk is changed when it fails.
    pub fn prepare(&self, shard: Option<Shard>) -> Result<PathBuf> {
        ensure!(self.batch > 0, "--batch must be at least 1");
        ensure!(!self.labels.is_empty(), "no labels to sample");
        if self.out.exists() {
            bail!("--out {} already exists; remove it or choose another name", self.out.display());
        }
        check_writable(&self.out)?;
        let parts = parts_dir(&self.out);
        let hash = self.settings_hash()?;
        let manifest_path = parts.join("manifest.json");
        if manifest_path.is_file() {
            check_manifest(&manifest_path, &hash)?;
        }
        if let Some(s) = shard {
            check_shard_record(&parts, s)?;
        }
        std::fs::create_dir_all(&parts).with_context(|| format!("cannot create {}", parts.display()))?;
        let body = serde_json::json!({ "settings_sha256": hash, "run": self.manifest() });
        if create_once(&manifest_path, &serde_json::to_string_pretty(&body)?)?.is_some() {
            // Another process wrote it between our check and now.
            check_manifest(&manifest_path, &hash)?;
        }
        if let Some(s) = shard {
            record_shard_count(&parts, s)?;
        }
        Ok(parts)
    }

    /// Samples this process's missing batches (and their features when asked). `generator` and
    /// `extractor` are built only when some batch needs them. Batches held by another process
    /// are waited for at the end, so on return every assigned batch is on disk (unless stopped).
    pub fn sample(
        &self,
        parts: &Path,
        opts: ProcessOptions,
        generator: &mut dyn FnMut() -> Result<Box<dyn Generator>>,
        extractor: &mut dyn FnMut() -> Result<InceptionExtractor>,
    ) -> Result<SampleReport> {
        let hash = self.settings_hash()?;
        let assigned: Vec<usize> = (0..self.batches()).filter(|&b| opts.shard.is_none_or(|s| s.owns(b))).collect();
        let mut report = SampleReport { batches_total: self.batches(), batches_assigned: assigned.len(), ..Default::default() };
        let done = |b: usize| batch_path(parts, b).is_file() && (!self.features || features_path(parts, b).is_file());
        report.batches_found = assigned.iter().filter(|&&b| done(b)).count();
        let assigned_images: usize = assigned.iter().map(|&b| self.batch_labels(b).len()).sum();
        let found_images: usize = assigned.iter().filter(|&&b| done(b)).map(|&b| self.batch_labels(b).len()).sum();
        if found_images > 0 {
            eprintln!("resuming: {found_images} of {assigned_images} images already in {}", parts.display());
        }
        if report.batches_found == assigned.len() {
            return Ok(report);
        }
        let mut gen: Option<Box<dyn Generator>> = None;
        let mut ext: Option<InceptionExtractor> = None;
        let label = match opts.shard {
            Some(s) => format!("sampling (shard {s})"),
            None => "sampling".to_string(),
        };
        // Plain progress lines about every 2% of the batches (Slurm logs stay short).
        let mut progress =
            Progress::new(&label, "images", assigned_images as u64, found_images as u64, (assigned.len() as u64 / 50).max(1));
        let limit = opts.stop_after_batches.unwrap_or(usize::MAX);
        let mut waiting = Vec::new();
        // Another process of the same job may finish it (merge and remove the parts) while this
        // one waits for a lock: then the batch files are gone but `out` exists. `out` is renamed
        // into place before the parts are removed, so checking it after `done` is race-free.
        let finished_elsewhere = || self.out.is_file();
        let mut work = |b: usize, lock: File, report: &mut SampleReport, progress: &mut Progress| -> Result<bool> {
            // Re-checked under the lock: another process may have finished it meanwhile.
            if done(b) || finished_elsewhere() {
                return Ok(false);
            }
            if report.batches_sampled >= limit {
                report.stopped = true;
                return Ok(false);
            }
            self.produce_batch(parts, b, &hash, &mut gen, &mut ext, generator, extractor)?;
            report.batches_sampled += 1;
            progress.inc(self.batch_labels(b).len() as u64);
            drop(lock);
            Ok(true)
        };
        for &b in assigned.iter().filter(|&&b| !done(b)) {
            match try_claim(parts, b) {
                Ok(Some(lock)) => {
                    work(b, lock, &mut report, &mut progress)?;
                }
                Ok(None) => waiting.push(b),
                Err(_) if finished_elsewhere() => break,
                Err(e) => return Err(e),
            }
        }
        // Batches another process holds: wait for it; if it died, the lock is free and the
        // batch is done here.
        for b in waiting {
            match claim_blocking(parts, b) {
                Ok(lock) => {
                    work(b, lock, &mut report, &mut progress)?;
                }
                Err(_) if finished_elsewhere() => break,
                Err(e) => return Err(e),
            }
        }
        progress.finish();
        Ok(report)
    }

    #[allow(clippy::too_many_arguments)]
    fn produce_batch(
        &self,
        parts: &Path,
        b: usize,
        hash: &str,
        gen: &mut Option<Box<dyn Generator>>,
        ext: &mut Option<InceptionExtractor>,
        make_generator: &mut dyn FnMut() -> Result<Box<dyn Generator>>,
        make_extractor: &mut dyn FnMut() -> Result<InceptionExtractor>,
    ) -> Result<()> {
        let path = batch_path(parts, b);
        let labels = self.batch_labels(b);
        if !path.is_file() {
            if gen.is_none() {
                *gen = Some(make_generator()?);
            }
            let g = gen.as_mut().expect("built above");
            let samples = g.sample(labels, batch_seed(self.seed, b), &mut NoObserver)?;
            ensure!(samples.n == labels.len(), "generator returned {} images for {} labels", samples.n, labels.len());
            let lab: Vec<i64> = labels.iter().map(|&l| i64::from(l)).collect();
            let lab_shape = [lab.len() as u64];
            let index = [b as i64];
            let hash_shape = [hash.len() as u64];
            let mut extra = vec![
                NpyArray::I64 { name: LABELS_KEY, shape: &lab_shape, data: &lab },
                NpyArray::I64 { name: BATCH_INDEX_KEY, shape: &[], data: &index },
                NpyArray::U8 { name: SETTINGS_HASH_KEY, shape: &hash_shape, data: hash.as_bytes() },
            ];
            let tok_shape;
            if self.save_tokens {
                match (&samples.token_ids, &samples.latents) {
                    (Some(t), _) => {
                        tok_shape = [samples.n as u64, (t.len() / samples.n) as u64];
                        extra.push(NpyArray::U32 { name: TOKENS_KEY, shape: &tok_shape, data: t });
                    }
                    (None, Some(l)) => {
                        tok_shape = [samples.n as u64, (l.len() / samples.n) as u64];
                        extra.push(NpyArray::F32 { name: TOKENS_KEY, shape: &tok_shape, data: l });
                    }
                    (None, None) => bail!("this generator returns neither token ids nor latents (--save-tokens)"),
                }
            }
            if self.features {
                // Features first: the batch file is the mark of a finished batch.
                self.extract_features(parts, b, &samples.images, samples.n, samples.height, samples.width, ext, make_extractor)?;
            }
            npz::write_images_npz(&path, &samples.images, samples.n, samples.height, samples.width, &extra)?;
        } else if self.features {
            // Sampled by a run without features: extract from the stored images.
            let (images, info) = npz::read_images(&path)?;
            self.extract_features(parts, b, &images, info.n, info.h, info.w, ext, make_extractor)?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn extract_features(
        &self,
        parts: &Path,
        b: usize,
        images: &[u8],
        n: usize,
        h: usize,
        w: usize,
        ext: &mut Option<InceptionExtractor>,
        make_extractor: &mut dyn FnMut() -> Result<InceptionExtractor>,
    ) -> Result<()> {
        if ext.is_none() {
            *ext = Some(make_extractor()?);
        }
        let f = ext.as_ref().expect("built above").extract(images, n, h, w)?;
        f.save(&features_path(parts, b))
    }

    /// Waits until no other process is merging, then merges unless another process already
    /// wrote `out`. Returns false when another process had written it.
    pub fn finish(&self, parts: &Path) -> Result<bool> {
        if self.out.is_file() {
            return Ok(false);
        }
        let lock = match open_lock(&parts.join("merge.lock")) {
            Ok(lock) => lock,
            // The parts folder is gone: another process merged.
            Err(_) if self.out.is_file() => return Ok(false),
            Err(e) => return Err(e),
        };
        lock.lock().with_context(|| format!("cannot lock {}", parts.join("merge.lock").display()))?;
        if self.out.is_file() {
            return Ok(false);
        }
        merge_parts(&self.out, &[parts.to_path_buf()], false)?;
        Ok(true)
    }
}

/// Fails unless files can be created next to `out` (checked by creating and removing a probe).
pub fn check_writable(out: &Path) -> Result<()> {
    ensure!(!out.is_dir(), "--out {} is a directory; give a file name such as samples.npz", out.display());
    let dir = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    ensure!(dir.is_dir(), "--out {}: folder {} does not exist", out.display(), dir.display());
    let probe = dir.join(format!(".genbench-write-probe-{}", std::process::id()));
    std::fs::write(&probe, b"").with_context(|| format!("--out {}: cannot write in {}", out.display(), dir.display()))?;
    std::fs::remove_file(&probe).ok();
    Ok(())
}

fn check_manifest(path: &Path, hash: &str) -> Result<()> {
    let parts = path.parent().unwrap_or(Path::new("."));
    let old: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path)?)
        .with_context(|| format!("{} is corrupt; delete {} to start over", path.display(), parts.display()))?;
    if old.get("settings_sha256").and_then(|v| v.as_str()) != Some(hash) {
        bail!(
            "{} holds a run with other settings (previous: {}); delete that folder to start over, or rerun with the same settings",
            parts.display(),
            serde_json::to_string(old.get("run").unwrap_or(&old))?
        );
    }
    Ok(())
}

/// The shard count recorded by the first `--shard` run, if any.
fn recorded_shard_count(parts: &Path) -> Result<Option<usize>> {
    let path = parts.join("shards.json");
    if !path.is_file() {
        return Ok(None);
    }
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)
        .with_context(|| format!("{} is corrupt; delete it (the batches stay valid)", path.display()))?;
    let n = v.get("count").and_then(|c| c.as_u64()).with_context(|| format!("{}: no count", path.display()))?;
    Ok(Some(n as usize))
}

/// Records `shard.count` in `dir/shards.json` unless a count is there; refuses another count.
pub fn record_shard_count(dir: &Path, shard: Shard) -> Result<()> {
    check_shard_record(dir, shard)?;
    let record = serde_json::json!({ "count": shard.count });
    if create_once(&dir.join("shards.json"), &serde_json::to_string(&record)?)?.is_some() {
        check_shard_record(dir, shard)?;
    }
    Ok(())
}

/// The shard count recorded in `dir/shards.json`, if any.
pub fn recorded_shards(dir: &Path) -> Result<Option<usize>> {
    recorded_shard_count(dir)
}

/// `0, 3-5, 9`: batch indices for messages.
pub fn batch_ranges(v: &[usize]) -> String {
    format_ranges(v)
}

fn check_shard_record(parts: &Path, shard: Shard) -> Result<()> {
    if let Some(n) = recorded_shard_count(parts)? {
        ensure!(
            n == shard.count,
            "--shard {shard} disagrees with the parts already in {}: they were made as {n} shards; \
             use --shard I/{n} (0 <= I < {n}), or delete {} to split the job another way \
             (the batches on disk stay valid whatever N is)",
            parts.display(),
            parts.join("shards.json").display()
        );
    }
    Ok(())
}

/// Creates `path` holding `content` unless it exists (atomically: written beside it, then
/// hard-linked into place). Returns the existing content when it was there already.
fn create_once(path: &Path, content: &str) -> Result<Option<String>> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.{}", hostname(), std::process::id()));
    std::fs::write(&tmp, content).with_context(|| format!("cannot write {}", tmp.display()))?;
    let linked = std::fs::hard_link(&tmp, path);
    std::fs::remove_file(&tmp).ok();
    match linked {
        Ok(()) => Ok(None),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(Some(std::fs::read_to_string(path)?)),
        Err(e) => Err(e).with_context(|| format!("cannot create {}", path.display())),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_else(|_| "host".into())
}

fn open_lock(path: &Path) -> Result<File> {
    OpenOptions::new().create(true).truncate(false).write(true).open(path).with_context(|| format!("cannot open {}", path.display()))
}

/// The batch's lock if no other process holds it.
fn try_claim(parts: &Path, b: usize) -> Result<Option<File>> {
    try_claim_path(&lock_path(parts, b))
}

fn claim_blocking(parts: &Path, b: usize) -> Result<File> {
    claim_path_blocking(&lock_path(parts, b))
}

/// An exclusive lock on the file at `path` (created if absent) if no other process holds it;
/// held until the returned file is dropped or the process ends.
pub fn try_claim_path(path: &Path) -> Result<Option<File>> {
    let file = open_lock(path)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(e).with_context(|| format!("cannot lock {}", path.display())),
    }
}

/// As [`try_claim_path`], waiting for the holder to release it.
pub fn claim_path_blocking(path: &Path) -> Result<File> {
    let file = open_lock(path)?;
    file.lock().with_context(|| format!("cannot lock {}", path.display()))?;
    Ok(file)
}

/// What a merge wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct MergeReport {
    pub images: usize,
    pub batches: usize,
    /// `<out stem>.features.safetensors` and `<out stem>_stats.npz`, when every batch had features.
    pub features: Option<(PathBuf, PathBuf)>,
}

/// `0, 3-5, 9`.
fn format_ranges(v: &[usize]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        out.push(if i == j { v[i].to_string() } else { format!("{}-{}", v[i], v[j]) });
        i = j + 1;
    }
    out.join(", ")
}

/// One parts folder's manifest.
fn read_manifest(dir: &Path) -> Result<(String, serde_json::Value)> {
    let path = dir.join("manifest.json");
    ensure!(path.is_file(), "{}: no manifest.json; is this a parts folder written by `genbench sample`?", dir.display());
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path)?).with_context(|| format!("{} is corrupt", path.display()))?;
    let hash = v.get("settings_sha256").and_then(|h| h.as_str()).with_context(|| format!("{}: no settings_sha256", path.display()))?;
    Ok((hash.to_string(), v.get("run").cloned().unwrap_or_default()))
}

/// Assembles the batches in `dirs` (usually just `<out>.parts`) into `out`, in batch order;
/// with features on every batch, also the merged features and statistics. Every part is checked
/// before anything is written; on success the parts folders are removed unless `keep_parts`.
pub fn merge_parts(out: &Path, dirs: &[PathBuf], keep_parts: bool) -> Result<MergeReport> {
    ensure!(!dirs.is_empty(), "no parts folder given");
    if out.exists() {
        bail!("{} already exists; remove it or choose another --out", out.display());
    }
    check_writable(out)?;
    // 1. One job: every folder's manifest has the same settings.
    let (hash, run) = read_manifest(&dirs[0])?;
    for d in &dirs[1..] {
        let (h, r) = read_manifest(d)?;
        ensure!(
            h == hash,
            "{} holds parts of another job than {} (settings {} vs {}); merge only parts of one job",
            d.display(),
            dirs[0].display(),
            serde_json::to_string(&r)?,
            serde_json::to_string(&run)?
        );
    }
    let get = |k: &str| run.get(k).and_then(|v| v.as_u64()).with_context(|| format!("{}: manifest has no {k}", dirs[0].display()));
    let (n, batch, batches) = (get("n")? as usize, get("batch")? as usize, get("batches")? as usize);
    let save_tokens = run.get("save_tokens").and_then(|v| v.as_bool()).unwrap_or(false);

    // 2. Every batch once.
    let mut found: BTreeMap<usize, PathBuf> = BTreeMap::new();
    for d in dirs {
        for entry in std::fs::read_dir(d).with_context(|| format!("cannot list {}", d.display()))? {
            let path = entry?.path();
            let name = path.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            let Some(idx) = name.strip_prefix("batch_").and_then(|s| s.strip_suffix(".npz")) else { continue };
            let b: usize = idx.parse().with_context(|| format!("{}: not a batch file name", path.display()))?;
            ensure!(b < batches, "{}: batch {b} is outside this job's {batches} batches", path.display());
            if let Some(first) = found.insert(b, path.clone()) {
                bail!("batch {b} is there twice: {} and {}; keep one of them", first.display(), path.display());
            }
        }
    }
    // 3. Each part is the batch of this job it claims to be (checked before naming the missing
    // ones: a foreign part is the first thing to fix).
    let mut labels: Vec<i64> = Vec::with_capacity(n);
    let mut shape: Option<(usize, usize)> = None;
    let mut tokens: Option<(String, u64)> = None;
    for (&b, path) in &found {
        let stored_hash = npz::read_int_array(path, SETTINGS_HASH_KEY)?.map(|v| v.into_iter().map(|c| c as u8).collect::<Vec<u8>>());
        ensure!(
            stored_hash.as_deref() == Some(hash.as_bytes()),
            "{}: made with other settings than this job's manifest (or not by `genbench sample`); remove it and rerun its shard",
            path.display()
        );
        let index = npz::read_int_array(path, BATCH_INDEX_KEY)?;
        ensure!(index == Some(vec![b as i64]), "{}: holds batch {index:?}, not {b}; was it renamed?", path.display());
        let info = npz::read_images_info(path)?;
        let want = batch.min(n - b * batch);
        ensure!(info.n == want, "{}: {} images, batch {b} has {want}", path.display(), info.n);
        match shape {
            None => shape = Some((info.h, info.w)),
            Some(s) => ensure!(s == (info.h, info.w), "{}: {}x{} images, the others are {}x{}", path.display(), info.h, info.w, s.0, s.1),
        }
        labels.extend(npz::read_int_array(path, LABELS_KEY)?.with_context(|| format!("{}: no labels (arr_1)", path.display()))?);
        if save_tokens {
            let t = npz::read_raw_array(path, TOKENS_KEY)?.with_context(|| format!("{}: no tokens", path.display()))?;
            ensure!(t.shape.len() == 2 && t.shape[0] == info.n as u64, "{}: tokens have shape {:?}", path.display(), t.shape);
            match &tokens {
                None => tokens = Some((t.descr, t.shape[1])),
                Some((d, w)) => ensure!(
                    (d, *w) == (&t.descr, t.shape[1]),
                    "{}: tokens {} x {} per image, the others {d} x {w}",
                    path.display(),
                    t.descr,
                    t.shape[1]
                ),
            }
        }
    }
    let missing: Vec<usize> = (0..batches).filter(|b| !found.contains_key(b)).collect();
    if !missing.is_empty() {
        let shards = recorded_shard_count(&dirs[0])?;
        let by_shard = match shards {
            Some(count) => {
                let mut owners: Vec<usize> = missing.iter().map(|b| b % count).collect();
                owners.sort_unstable();
                owners.dedup();
                format!(
                    "; they belong to shard(s) {} of {count}: rerun `genbench sample ... --shard I/{count}` for those",
                    owners.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
                )
            }
            None => "; rerun the same `genbench sample` command to produce them".to_string(),
        };
        bail!("{} of {batches} batches are missing (batch_XXXXX.npz for {}){by_shard}", missing.len(), format_ranges(&missing),);
    }
    let label_bytes: Vec<u8> = labels.iter().flat_map(|&l| (l as u32).to_le_bytes()).collect();
    ensure!(
        run.get("labels_sha256").and_then(|v| v.as_str()) == Some(&genbench_runtime::hash::sha256_bytes(&label_bytes)),
        "the parts' labels do not match the job's labels; the parts folder is inconsistent, delete it and sample again"
    );
    let with_features: Vec<usize> =
        found.keys().copied().filter(|&b| features_path(found[&b].parent().unwrap_or(Path::new(".")), b).is_file()).collect();
    ensure!(
        with_features.is_empty() || with_features.len() == batches,
        "features exist for {} of {batches} batches; rerun the sampling with --features to complete them",
        with_features.len()
    );

    // 4. Write.
    let (h, w) = shape.expect("at least one batch");
    npz::write_npz_streamed(out, |z| {
        z.start_array(IMAGES_KEY, "|u1", &[n as u64, h as u64, w as u64, 3])?;
        for path in found.values() {
            npz::for_each_image_batch(path, batch, |bytes, _| z.write(bytes))?;
        }
        z.start_array(LABELS_KEY, "<i8", &[n as u64])?;
        z.write(&labels.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>())?;
        if let Some((descr, width)) = &tokens {
            z.start_array(TOKENS_KEY, descr, &[n as u64, *width])?;
            for path in found.values() {
                z.write(&npz::read_raw_array(path, TOKENS_KEY)?.context("tokens vanished")?.data)?;
            }
        }
        Ok(())
    })?;
    let features = if with_features.len() == batches {
        let feats_out = merged_features_path(out);
        let stats_out = merged_stats_path(out);
        let mut all = Vec::with_capacity(batches);
        let (mut pool, mut spatial) = (StatsAccumulator::new(POOL3_DIM), StatsAccumulator::new(SPATIAL_DIM));
        for (&b, path) in &found {
            let f = Features::load(&features_path(path.parent().unwrap_or(Path::new(".")), b))?;
            ensure!(f.n == batch.min(n - b * batch), "features of batch {b} hold {} images", f.n);
            // Streamed in batch order: the statistics are those of one pass over all features,
            // whichever processes extracted them.
            pool.push_batch(&f.pool3, POOL3_DIM)?;
            spatial.push_batch(&f.spatial, SPATIAL_DIM)?;
            all.push(f);
        }
        Features::concat(all)?.save(&feats_out)?;
        npz::write_statistics(&stats_out, &pool.finish()?, Some(&spatial.finish()?))?;
        Some((feats_out, stats_out))
    } else {
        None
    };
    if !keep_parts {
        for d in dirs {
            std::fs::remove_dir_all(d).with_context(|| format!("{} written, but {} could not be removed", out.display(), d.display()))?;
        }
    }
    Ok(MergeReport { images: n, batches, features })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_cycle_classes_in_shuffled_order() {
        let l = plan_labels(Some(40), None, 10, 0).unwrap();
        let mut counts = [0; 10];
        l.iter().for_each(|&c| counts[c as usize] += 1);
        assert_eq!(counts, [4; 10]);
        assert_ne!(l, (0..40).map(|i| (i % 10) as u32).collect::<Vec<_>>(), "must be shuffled");
        assert_eq!(l, plan_labels(Some(40), None, 10, 0).unwrap());
        assert_ne!(l, plan_labels(Some(40), None, 10, 1).unwrap());
        assert_eq!(plan_labels(None, Some("5,2,9"), 10, 0).unwrap(), vec![5, 2, 9]);
        assert!(plan_labels(Some(0), None, 10, 0).unwrap_err().to_string().contains("--n must be positive"));
        assert!(plan_labels(Some(-3), None, 10, 0).is_err());
        assert!(plan_labels(None, Some("3,10"), 10, 0).unwrap_err().to_string().contains("class id 10 is out of range"));
    }

    #[test]
    fn shard_specs_parse_and_bad_ones_say_why() {
        assert_eq!("2/4".parse::<Shard>().unwrap(), Shard { index: 2, count: 4 });
        assert_eq!("0/1".parse::<Shard>().unwrap().to_string(), "0/1");
        for (spec, needle) in [
            ("4/4", "outside 0..4"),
            ("0/0", "at least 1"),
            ("-1/3", "not a non-negative"),
            ("3", "expected I/N"),
            ("a/2", "not a non-negative"),
        ] {
            let err = format!("{:#}", spec.parse::<Shard>().unwrap_err());
            assert!(err.contains(needle), "{spec}: {err}");
        }
        let s = Shard::new(1, 3).unwrap();
        assert_eq!((0..7).filter(|&b| s.owns(b)).collect::<Vec<_>>(), vec![1, 4]);
    }

    #[test]
    fn slurm_array_variables_name_the_shard() {
        let env =
            |vars: &'static [(&'static str, &'static str)]| move |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string());
        assert_eq!(Shard::from_slurm(env(&[])).unwrap(), None);
        assert_eq!(
            Shard::from_slurm(env(&[("SLURM_ARRAY_TASK_ID", "2"), ("SLURM_ARRAY_TASK_COUNT", "3")])).unwrap(),
            Some(Shard { index: 2, count: 3 })
        );
        let offset = env(&[("SLURM_ARRAY_TASK_ID", "5"), ("SLURM_ARRAY_TASK_COUNT", "3"), ("SLURM_ARRAY_TASK_MIN", "4")]);
        assert_eq!(Shard::from_slurm(offset).unwrap(), Some(Shard { index: 1, count: 3 }));
        let gap = env(&[("SLURM_ARRAY_TASK_ID", "6"), ("SLURM_ARRAY_TASK_COUNT", "3")]);
        assert!(format!("{:#}", Shard::from_slurm(gap).unwrap_err()).contains("contiguous"));
    }

    #[test]
    fn batch_seeds_depend_on_seed_and_index_only() {
        assert_eq!(batch_seed(3, 5), batch_seed(3, 5));
        assert_ne!(batch_seed(3, 5), batch_seed(3, 6));
        assert_ne!(batch_seed(3, 5), batch_seed(4, 5));
        assert_eq!(format_ranges(&[0, 3, 4, 5, 9]), "0, 3-5, 9");
    }

    #[test]
    fn unwritable_output_is_refused() {
        assert!(check_writable(Path::new("/nonexistent-dir/x.npz")).is_err());
        let d = tempfile::tempdir().unwrap();
        check_writable(&d.path().join("x.npz")).unwrap();
        assert!(check_writable(d.path()).is_err());
    }

    #[test]
    fn create_once_keeps_the_first_content() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("shards.json");
        assert_eq!(create_once(&p, "first").unwrap(), None);
        assert_eq!(create_once(&p, "second").unwrap().as_deref(), Some("first"));
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1, "no temporary file left");
    }
}
