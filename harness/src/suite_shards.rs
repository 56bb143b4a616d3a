//! A suite split over processes or Slurm array tasks: [`run_suite_shard`] samples shard I of N
//! of every generate run's batches and extracts their Inception features (the array's work);
//! [`merge_suite_shards`] checks that every batch is there, assembles the features and then
//! runs the suite as usual, which finds all samples and features in its cache and only
//! evaluates, profiles and reports (the dependent job's work).
//!
//! The shards write exactly the runner's cache (same batch files, labels, seeds and the same
//! content-keyed feature cache: the runner's public pieces), so the merged result equals a
//! single-process run's and the merge job finds every batch's features in the cache instead of
//! extracting them again. Batches are claimed with the same locks as `genbench sample`, so
//! several processes on one shard never sample a batch twice, and N is recorded in the cache so
//! a disagreeing `--shard` is refused.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use genbench_metrics::features::{FeatureCache, InceptionExtractor};
use genbench_metrics::npz::{self, NpyArray, LABELS_KEY};
use genbench_metrics::preprocess::Preprocess;
use genbench_models::generator::{Generator, NoObserver};
use genbench_runtime::progress::Progress;

use crate::runner::{
    build_generator, generate_batch_seed, generate_sample_dir, inception_extractor, labels_for, run_dtype, run_suite, sample_batch_path,
    scoring_images, suite_feature_cache, RunnerOptions, SuiteOutcome,
};
use crate::sampling::{batch_ranges, claim_path_blocking, record_shard_count, recorded_shards, Shard};
use crate::suite::{Run, Suite, Task};

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

/// The generate runs a shard works on: inputs present (a skipped run is reported by the merge).
fn generate_runs<'a>(suite: &'a Suite, opts: &RunnerOptions) -> Result<Vec<&'a Run>> {
    Ok(suite
        .select(&opts.only)
        .map_err(anyhow::Error::msg)?
        .into_iter()
        .filter(|r| matches!(r.task, Task::Generate { .. }) && r.missing_inputs().is_empty())
        .collect())
}

/// Whether a run is scored on Inception features, which the shards then extract into the
/// suite's feature cache (after `eval_resolution`'s resize, as the runner does).
fn shard_extracts_features(run: &Run) -> bool {
    matches!(&run.task, Task::Generate { .. }) && run.metrics.iter().any(|m| m.is_image_metric())
}

/// Samples (and extracts the features of) shard `shard` of every generate run's batches, for
/// every seed of the run.
pub fn run_suite_shard(suite: &Suite, opts: &RunnerOptions, shard: Shard) -> Result<ShardOutcome> {
    let root = cache_root(suite, opts);
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    record_shard_count(&root, shard)?;
    let suite_dir = suite.path.parent().map(Path::to_path_buf).unwrap_or_default();
    // The runner's device, extractor and cache, so the cache means the same thing.
    let device = opts.device.open()?;
    let cache = suite_feature_cache(&root);
    // One extractor per preprocessing the runs' conventions use, built on first need.
    let mut extractors: HashMap<Preprocess, InceptionExtractor> = HashMap::new();
    let mut outcome = ShardOutcome::default();
    let runs = generate_runs(suite, opts)?;
    for (i, run) in runs.iter().enumerate() {
        let Task::Generate { model, samples, batch, seeds, eval_resolution, convention, .. } = &run.task else { continue };
        let (_, sample_dir) = generate_sample_dir(run, model, &root)?;
        let dtype = run_dtype(&run.id, model, &device, opts.dtype)?;
        let batch = (*batch).max(1) as usize;
        let batches = (*samples as usize).div_ceil(batch);
        let mine: Vec<usize> = (0..batches).filter(|&b| shard.owns(b)).collect();
        let features = shard_extracts_features(run);
        let seeds: Vec<u64> = if seeds.is_empty() { vec![0] } else { seeds.clone() };
        let total = mine.len() * seeds.len();
        log(
            opts,
            format!("[{}/{}] {} shard {shard}: {} of {batches} batches x {} seed(s)", i + 1, runs.len(), run.id, mine.len(), seeds.len()),
        );
        let mut generator: Option<Box<dyn Generator>> = None;
        let mut sampled = 0;
        let mut found = 0;
        let mut progress = Progress::new(&format!("  {} shard {shard}", run.id), "batches", total as u64, 0, (total as u64 / 50).max(1));
        for &seed in &seeds {
            for &b in &mine {
                let path = sample_batch_path(&sample_dir, seed, b);
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
                }
                // Another process on this shard may hold it: wait, then look again.
                let _lock = claim_path_blocking(&path.with_extension("lock"))?;
                let (images, h, w) = if path.is_file() {
                    found += 1;
                    if !features {
                        progress.inc(1);
                        continue;
                    }
                    let (px, info) = npz::read_images(&path)?;
                    (px, info.h, info.w)
                } else {
                    if generator.is_none() {
                        generator = Some(build_generator(model, model.resolution, &suite_dir, &device, dtype)?);
                    }
                    let g = generator.as_mut().expect("built above");
                    let start = b * batch;
                    let n = (*samples as usize - start).min(batch);
                    let labels = labels_for(start, n, g.num_classes());
                    let s = g.sample(&labels, generate_batch_seed(seed, b), &mut NoObserver)?;
                    let labels_i64: Vec<i64> = labels.iter().map(|&l| i64::from(l)).collect();
                    let shape = [n as u64];
                    npz::write_images_npz(
                        &path,
                        &s.images,
                        s.n,
                        s.height,
                        s.width,
                        &[NpyArray::I64 { name: LABELS_KEY, shape: &shape, data: &labels_i64 }],
                    )?;
                    sampled += 1;
                    (s.images, s.height, s.width)
                };
                if features {
                    let extractor = match extractors.entry(convention.preprocess()) {
                        Entry::Occupied(e) => e.into_mut(),
                        Entry::Vacant(e) => {
                            let preprocess = *e.key();
                            e.insert(inception_extractor(
                                preprocess,
                                opts.inception_cache.as_deref(),
                                opts.inception_weights.as_deref(),
                                &device,
                            )?)
                        }
                    };
                    extract_batch_features(extractor, &cache, scoring_images(images, h, w, *eval_resolution)?)?;
                }
                progress.inc(1);
            }
        }
        progress.finish();
        outcome.runs.push((run.id.clone(), sampled, found));
    }
    Ok(outcome)
}

/// Puts one batch's features into the suite's feature cache (a no-op when they are there).
fn extract_batch_features(extractor: &InceptionExtractor, cache: &FeatureCache, (images, h, w): (Vec<u8>, usize, usize)) -> Result<()> {
    let n = images.len() / (h * w * 3);
    cache.extract(extractor, &images, n, h, w)?;
    Ok(())
}

/// Checks every shard's batches are there (naming the missing ones and their shard), then runs
/// the suite, which finds every sample and its features in the cache.
pub fn merge_suite_shards(suite: &Suite, opts: &RunnerOptions) -> Result<SuiteOutcome> {
    let root = cache_root(suite, opts);
    let shards = recorded_shards(&root)?;
    let mut problems = Vec::new();
    for run in generate_runs(suite, opts)? {
        let Task::Generate { model, samples, batch, seeds, .. } = &run.task else { continue };
        let (_, sample_dir) = generate_sample_dir(run, model, &root)?;
        let batches = (*samples as usize).div_ceil((*batch).max(1) as usize);
        let seeds: Vec<u64> = if seeds.is_empty() { vec![0] } else { seeds.clone() };
        for &seed in &seeds {
            let missing: Vec<usize> = (0..batches).filter(|&b| !sample_batch_path(&sample_dir, seed, b).is_file()).collect();
            if missing.is_empty() {
                continue;
            }
            let owners = match shards {
                Some(n) => {
                    let mut o: Vec<usize> = missing.iter().map(|b| b % n).collect();
                    o.sort_unstable();
                    o.dedup();
                    format!(" (shard(s) {} of {n})", o.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", "))
                }
                None => String::new(),
            };
            problems.push(format!(
                "run {} seed {seed}: batches {} of {batches} missing in {}{owners}",
                run.id,
                batch_ranges(&missing),
                sample_dir.join(format!("seed-{seed}")).display()
            ));
        }
    }
    if !problems.is_empty() {
        bail!(
            "the shards are not all done: {}; rerun those shards (`genbench suite FILE --shard I/N`) before merging",
            problems.join("; ")
        );
    }
    let outcome = run_suite(suite, opts)?;
    // The shards must have left the runner nothing to sample; if they did not, they wrote
    // somewhere the runner does not look, and their work was wasted.
    ensure!(
        outcome.cache.sample_batches_generated == 0,
        "the merge had to sample {} batches that the shards should have made (the shards' cache and the runner's disagree); \
         the results in {} are complete but were not produced from the shards",
        outcome.cache.sample_batches_generated,
        outcome.dir.display()
    );
    Ok(outcome)
}
