//! A suite split over processes or Slurm array tasks: [`run_suite_shard`] samples shard I of N
//! of every generate run's batches and extracts their Inception features (the array's work);
//! [`merge_suite_shards`] checks that every batch is there, assembles the features and then
//! runs the suite as usual, which finds all samples and features in its cache and only
//! evaluates, profiles and reports (the dependent job's work).
//!
//! The shards write exactly the runner's cache (same batch files, labels, seeds: the runner's
//! public pieces), so the merged result equals a single-process run's. Batches are claimed
//! with the same locks as `genbench sample`, so several processes on one shard never sample a
//! batch twice, and N is recorded in the cache so a disagreeing `--shard` is refused.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use candle_core::Device;
use genbench_metrics::features::{ExtractorOptions, Features, InceptionExtractor};
use genbench_metrics::npz::{self, NpyArray, LABELS_KEY};
use genbench_models::generator::{Generator, NoObserver};
use genbench_runtime::progress::Progress;

use crate::runner::{build_generator, generate_batch_seed, generate_cache, labels_for, run_suite, sample_batch_path, RunnerOptions, SuiteOutcome};
use crate::sampling::{batch_ranges, claim_path_blocking, record_shard_count, recorded_shards, Shard};
use crate::suite::{Evaluator, Run, Suite, Task};

/// What one shard process did, per generate run: (run id, batches sampled here, batches found).
#[derive(Debug, Default)]
pub struct ShardOutcome {
    pub runs: Vec<(String, usize, usize)>,
}

fn log(opts: &RunnerOptions, msg: impl AsRef<str>) {
    if opts.verbose {
        eprintln!("{}", msg.as_ref());
    }
}

fn cache_root(suite: &Suite, opts: &RunnerOptions) -> PathBuf {
    opts.results_root.join(&suite.name).join("cache")
}

/// Features of batch file `batch-XXXXX.npz`: `batch-XXXXX.features.safetensors` beside it.
fn batch_features_path(batch: &Path) -> PathBuf {
    batch.with_extension("features.safetensors")
}

/// The generate runs a shard works on: inputs present (a skipped run is reported by the merge).
fn generate_runs<'a>(suite: &'a Suite, opts: &RunnerOptions) -> Result<Vec<&'a Run>> {
    Ok(suite
        .select(&opts.only)
        .map_err(anyhow::Error::msg)?
        .into_iter()
        .filter(|r| matches!(r.task, Task::Generate { .. }) && r.missing_inputs().is_empty())
        .collect())
}

/// Whether the shards extract a run's features: the runner's ADM features of the images as
/// sampled. With `eval_resolution` the images are resized first, so the merge job extracts.
fn shard_extracts_features(run: &Run) -> bool {
    match &run.task {
        Task::Generate { evaluator, eval_resolution, .. } => {
            *evaluator == Evaluator::Adm && eval_resolution.is_none() && run.metrics.iter().any(|m| m.is_image_metric())
        }
        _ => false,
    }
}

/// Samples (and extracts the features of) shard `shard` of every generate run's batches.
pub fn run_suite_shard(suite: &Suite, opts: &RunnerOptions, shard: Shard) -> Result<ShardOutcome> {
    let root = cache_root(suite, opts);
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    record_shard_count(&root, shard)?;
    let suite_dir = suite.path.parent().map(Path::to_path_buf).unwrap_or_default();
    // The runner's device and extractor settings, so the cache means the same thing.
    let device = Device::Cpu;
    let mut extractor: Option<InceptionExtractor> = None;
    let mut outcome = ShardOutcome::default();
    let runs = generate_runs(suite, opts)?;
    for (i, run) in runs.iter().enumerate() {
        let Task::Generate { model, samples, batch, seeds, .. } = &run.task else { continue };
        let cache = generate_cache(run, model, &root)?;
        std::fs::create_dir_all(&cache.sample_dir).with_context(|| format!("creating {}", cache.sample_dir.display()))?;
        let batch = (*batch).max(1) as usize;
        let batches = (*samples as usize).div_ceil(batch);
        let mine: Vec<usize> = (0..batches).filter(|&b| shard.owns(b)).collect();
        let features = shard_extracts_features(run);
        let done = |b: usize| {
            let p = sample_batch_path(&cache.sample_dir, b);
            p.is_file() && (!features || batch_features_path(&p).is_file())
        };
        let found = mine.iter().filter(|&&b| done(b)).count();
        log(opts, format!("[{}/{}] {} shard {shard}: {} of {batches} batches, {found} already done", i + 1, runs.len(), run.id, mine.len()));
        let mut generator: Option<Box<dyn Generator>> = None;
        let mut sampled = 0;
        let mut progress = Progress::new(&format!("  {} shard {shard}", run.id), "batches", mine.len() as u64, found as u64, (mine.len() as u64 / 50).max(1));
        let seed = seeds.first().copied().unwrap_or(0);
        for &b in &mine {
            if done(b) {
                continue;
            }
            let path = sample_batch_path(&cache.sample_dir, b);
            // Another process on this shard may hold it: wait, then re-check.
            let _lock = claim_path_blocking(&path.with_extension("lock"))?;
            if done(b) {
                continue;
            }
            let (images, n, h, w) = if path.is_file() {
                let (px, info) = npz::read_images(&path)?;
                (px, info.n, info.h, info.w)
            } else {
                if generator.is_none() {
                    generator = Some(build_generator(model, model.resolution, &suite_dir, &device)?);
                }
                let g = generator.as_mut().expect("built above");
                let start = b * batch;
                let n = (*samples as usize - start).min(batch);
                let labels = labels_for(start, n, g.num_classes());
                let s = g.sample(&labels, generate_batch_seed(seed, b), &mut NoObserver)?;
                let labels_i64: Vec<i64> = labels.iter().map(|&l| i64::from(l)).collect();
                let shape = [n as u64];
                if features {
                    // Features first: the batch file marks a finished batch.
                    extract_batch_features(&mut extractor, opts, &s.images, s.n, s.height, s.width, &path)?;
                }
                npz::write_images_npz(&path, &s.images, s.n, s.height, s.width, &[NpyArray::I64 { name: LABELS_KEY, shape: &shape, data: &labels_i64 }])?;
                sampled += 1;
                progress.inc(1);
                continue;
            };
            if features {
                extract_batch_features(&mut extractor, opts, &images, n, h, w, &path)?;
            }
            progress.inc(1);
        }
        progress.finish();
        outcome.runs.push((run.id.clone(), sampled, found));
    }
    Ok(outcome)
}

fn extract_batch_features(
    extractor: &mut Option<InceptionExtractor>,
    opts: &RunnerOptions,
    images: &[u8],
    n: usize,
    h: usize,
    w: usize,
    batch_path: &Path,
) -> Result<()> {
    if extractor.is_none() {
        let eopts = ExtractorOptions::default();
        *extractor = Some(match &opts.inception_cache {
            Some(dir) => InceptionExtractor::new_in(eopts, dir)?,
            None => InceptionExtractor::new(eopts)?,
        });
    }
    extractor.as_ref().expect("built above").extract(images, n, h, w)?.save(&batch_features_path(batch_path))
}

/// Checks every shard's batches are there (naming the missing ones and their shard), puts the
/// per-batch features together where the runner looks for them, then runs the suite.
pub fn merge_suite_shards(suite: &Suite, opts: &RunnerOptions) -> Result<SuiteOutcome> {
    let root = cache_root(suite, opts);
    let shards = recorded_shards(&root)?;
    let mut problems = Vec::new();
    let mut assemble = Vec::new();
    for run in generate_runs(suite, opts)? {
        let Task::Generate { model, samples, batch, .. } = &run.task else { continue };
        let cache = generate_cache(run, model, &root)?;
        let batches = (*samples as usize).div_ceil((*batch).max(1) as usize);
        let paths: Vec<PathBuf> = (0..batches).map(|b| sample_batch_path(&cache.sample_dir, b)).collect();
        let missing: Vec<usize> = (0..batches).filter(|&b| !paths[b].is_file()).collect();
        if !missing.is_empty() {
            let owners = match shards {
                Some(n) => {
                    let mut o: Vec<usize> = missing.iter().map(|b| b % n).collect();
                    o.dedup();
                    o.sort_unstable();
                    o.dedup();
                    format!(" (shard(s) {} of {n})", o.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", "))
                }
                None => String::new(),
            };
            problems.push(format!("run {}: batches {} of {batches} missing in {}{owners}", run.id, batch_ranges(&missing), cache.sample_dir.display()));
            continue;
        }
        let with_features = paths.iter().all(|p| batch_features_path(p).is_file());
        if shard_extracts_features(run) && with_features && !cache.feature_path.is_file() {
            assemble.push((paths, cache.feature_path));
        }
    }
    if !problems.is_empty() {
        bail!(
            "the shards are not all done: {}; rerun those shards (`genbench suite FILE --shard I/N`) before merging",
            problems.join("; ")
        );
    }
    for (paths, feature_path) in assemble {
        let parts: Vec<Features> = paths.iter().map(|p| Features::load(&batch_features_path(p))).collect::<Result<_>>()?;
        if let Some(dir) = feature_path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        Features::concat(parts)?.save(&feature_path)?;
    }
    let outcome = run_suite(suite, opts)?;
    // The shards must have left the runner nothing to sample; if they did not, they wrote
    // somewhere the runner does not look, and their work was wasted.
    ensure!(
        outcome.cache.sample_batches_generated == 0,
        "the merge had to sample {} batches that the shards should have made (the shards' cache and the runner's disagree);          the results in {} are complete but were not produced from the shards",
        outcome.cache.sample_batches_generated,
        outcome.dir.display()
    );
    Ok(outcome)
}
