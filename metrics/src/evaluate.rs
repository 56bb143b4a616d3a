//! The one evaluation pipeline: image sources are streamed batch by batch through the Inception
//! extractor ([`collect_features`]), each side is reduced to what the requested metrics need
//! ([`FeatureCollector`] -> [`FeatureSummary`]: running statistics, and feature rows only where a
//! metric needs them), and [`evaluate`] turns two summaries into values, diagnostics and
//! warnings. `genbench eval`, `genbench stats` and the suite runner all go through here, so a
//! number and its warnings mean the same thing wherever they are reported.
//!
//! The metric functions themselves ([`crate::fid`], [`crate::inception_score`],
//! [`crate::precision_recall`], [`crate::kid`]) stay pure functions over features.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};

use crate::checks::{class_sorted_warning_from_logits, rank_deficiency_warning};
use crate::convention::{Convention, IsSplits};
use crate::features::{FeatureCache, Features, InceptionExtractor};
use crate::fid::{frechet_distance, spatial_frechet_distance, FidResult};
use crate::images::ImageFolder;
use crate::inception::{LOGITS_DIM, POOL3_DIM, SPATIAL_DIM};
use crate::inception_score::InceptionScore;
use crate::kid::{kernel_inception_distance, KidConfig, KidResult};
use crate::npz::{self, ImagesInfo, NpzStatistics};
use crate::precision_recall::{precision_recall, PrConfig, PrecisionRecall};
use crate::stats::{FeatureStats, StatsAccumulator};

/// ADM flags an imaginary part above this in its sqrtm.
pub const ADM_IMAGINARY_LIMIT: f64 = 1e-3;

// ---------------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------------

/// Every quantity genbench reports, in one vocabulary for the CLI, suite files, results and
/// reports. The image metrics are computed here by [`evaluate`]; the cost metrics are measured by
/// the harness's profiler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    Fid,
    Sfid,
    Is,
    Precision,
    Recall,
    Kid,
    /// Wall-clock seconds per generated image.
    SecPerImage,
    /// `sec_per_image` divided by that of the run named in `relative_to`.
    RelTime,
    /// Analytic forward GFLOP per image.
    GflopPerImage,
    /// `gflop_per_image` divided by that of the run named in `relative_to`.
    RelGflop,
}

impl Metric {
    pub const ALL: [Metric; 10] = [
        Metric::Fid,
        Metric::Sfid,
        Metric::Is,
        Metric::Precision,
        Metric::Recall,
        Metric::Kid,
        Metric::SecPerImage,
        Metric::RelTime,
        Metric::GflopPerImage,
        Metric::RelGflop,
    ];

    /// The image metrics, in the order they are reported.
    pub const IMAGE: [Metric; 6] = [Metric::Fid, Metric::Sfid, Metric::Is, Metric::Precision, Metric::Recall, Metric::Kid];

    /// Name in files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Fid => "fid",
            Metric::Sfid => "sfid",
            Metric::Is => "is",
            Metric::Precision => "precision",
            Metric::Recall => "recall",
            Metric::Kid => "kid",
            Metric::SecPerImage => "sec_per_image",
            Metric::RelTime => "rel_time",
            Metric::GflopPerImage => "gflop_per_image",
            Metric::RelGflop => "rel_gflop",
        }
    }

    /// Name in messages and tables.
    pub fn label(self) -> &'static str {
        match self {
            Metric::Fid => "FID",
            Metric::Sfid => "sFID",
            Metric::Is => "IS",
            Metric::Precision => "precision",
            Metric::Recall => "recall",
            Metric::Kid => "KID",
            other => other.name(),
        }
    }

    /// Computed from Inception features of images.
    pub fn is_image_metric(self) -> bool {
        Self::IMAGE.contains(&self)
    }

    /// Compares samples with a reference set (IS alone does not).
    pub fn needs_reference(self) -> bool {
        self.is_image_metric() && self != Metric::Is
    }

    /// The absolute metric a relative one divides, if it is relative.
    pub fn relative_base(self) -> Option<Metric> {
        match self {
            Metric::RelTime => Some(Metric::SecPerImage),
            Metric::RelGflop => Some(Metric::GflopPerImage),
            _ => None,
        }
    }

    /// A comma-separated list of image metrics (`fid,sfid,is,pr,kid`; `pr`, `precision` and
    /// `recall` each give both, as one pass computes them), deduplicated, in report order.
    /// `flag` names the option in errors.
    pub fn parse_image_list(list: &str, flag: &str) -> Result<Vec<Metric>> {
        let mut out = Vec::new();
        for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let metrics: &[Metric] = match name.to_ascii_lowercase().as_str() {
                "fid" => &[Metric::Fid],
                "sfid" => &[Metric::Sfid],
                "is" => &[Metric::Is],
                "pr" | "precision" | "recall" => &[Metric::Precision, Metric::Recall],
                "kid" => &[Metric::Kid],
                other => bail!("unknown metric '{other}' in {flag}: expected fid, sfid, is, pr, kid"),
            };
            out.extend_from_slice(metrics);
        }
        ensure!(!out.is_empty(), "{flag} is empty: give some of fid, sfid, is, pr, kid");
        out.sort();
        out.dedup();
        Ok(out)
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

// ---------------------------------------------------------------------------------------------
// Features of one side, streamed
// ---------------------------------------------------------------------------------------------

/// What to keep while extracting features from one image set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FeatureNeeds {
    /// Running pool3 mean/covariance (FID).
    pub pool_stats: bool,
    /// Running spatial mean/covariance (sFID).
    pub spatial_stats: bool,
    /// Every pool3 row (precision/recall, KID need the rows themselves).
    pub pool_rows: bool,
    /// Every logit row (IS).
    pub logits: bool,
}

impl FeatureNeeds {
    /// What the sample side needs for `metrics`.
    pub fn samples(metrics: &[Metric]) -> Self {
        Self {
            pool_stats: metrics.contains(&Metric::Fid),
            spatial_stats: metrics.contains(&Metric::Sfid),
            pool_rows: metrics.iter().any(|m| matches!(m, Metric::Precision | Metric::Recall | Metric::Kid)),
            logits: metrics.contains(&Metric::Is),
        }
    }

    /// What the reference side needs for `metrics`, given statistics it already has.
    pub fn reference(metrics: &[Metric], file_stats: &NpzStatistics) -> Self {
        Self {
            pool_stats: metrics.contains(&Metric::Fid) && file_stats.pool.is_none(),
            spatial_stats: metrics.contains(&Metric::Sfid) && file_stats.spatial.is_none(),
            logits: false,
            ..Self::samples(metrics)
        }
    }

    pub fn any(&self) -> bool {
        self.pool_stats || self.spatial_stats || self.pool_rows || self.logits
    }
}

/// What the metrics need from one image set: statistics accumulated batch by batch, and the
/// rows only where a metric needs every row. Built by [`FeatureCollector`].
#[derive(Clone, Debug, Default)]
pub struct FeatureSummary {
    /// Images behind the summary (0 for statistics read from a file that does not record it).
    pub n: usize,
    pub pool_stats: Option<FeatureStats>,
    pub spatial_stats: Option<FeatureStats>,
    /// Row-major `[n, 2048]`.
    pub pool_rows: Option<Vec<f32>>,
    /// Row-major `[n, 1008]`; `None` also when the weights have no classifier.
    pub logits: Option<Vec<f32>>,
}

impl FeatureSummary {
    /// Statistics read from a file (an ADM reference batch's `mu`/`sigma`/`mu_s`/`sigma_s`) fill
    /// in what extraction did not compute.
    pub fn with_file_stats(mut self, file: &NpzStatistics) -> Self {
        if self.pool_stats.is_none() {
            self.pool_stats = file.pool.clone();
        }
        if self.spatial_stats.is_none() {
            self.spatial_stats = file.spatial.clone();
        }
        self
    }
}

/// Accumulates extracted feature batches into a [`FeatureSummary`], keeping only what
/// [`FeatureNeeds`] asks for: memory grows with the number of images only for the metrics that
/// need every row (precision/recall, KID, IS).
pub struct FeatureCollector {
    needs: FeatureNeeds,
    n: usize,
    pool: Option<StatsAccumulator>,
    spatial: Option<StatsAccumulator>,
    pool_rows: Option<Vec<f32>>,
    logits: Option<Vec<f32>>,
    logits_missing: bool,
}

impl FeatureCollector {
    pub fn new(needs: FeatureNeeds) -> Self {
        Self {
            needs,
            n: 0,
            pool: needs.pool_stats.then(|| StatsAccumulator::new(POOL3_DIM)),
            spatial: needs.spatial_stats.then(|| StatsAccumulator::new(SPATIAL_DIM)),
            pool_rows: needs.pool_rows.then(Vec::new),
            logits: needs.logits.then(Vec::new),
            logits_missing: false,
        }
    }

    pub fn needs(&self) -> FeatureNeeds {
        self.needs
    }

    /// Images pushed so far.
    pub fn count(&self) -> usize {
        self.n
    }

    /// Adds one batch of features.
    pub fn push(&mut self, f: &Features) -> Result<()> {
        ensure!(f.pool3.len() == f.n * POOL3_DIM, "feature batch of {} images has {} pool3 values", f.n, f.pool3.len());
        ensure!(f.spatial.len() == f.n * SPATIAL_DIM, "feature batch of {} images has {} spatial values", f.n, f.spatial.len());
        if let Some(acc) = self.pool.as_mut() {
            acc.push_batch(&f.pool3, POOL3_DIM).context("pool3 features")?;
        }
        if let Some(acc) = self.spatial.as_mut() {
            acc.push_batch(&f.spatial, SPATIAL_DIM).context("spatial features")?;
        }
        if let Some(rows) = self.pool_rows.as_mut() {
            rows.extend_from_slice(&f.pool3);
        }
        match (self.logits.as_mut(), f.logits.as_ref()) {
            (Some(all), Some(batch)) => all.extend_from_slice(batch),
            (Some(_), None) => self.logits_missing = true,
            _ => {}
        }
        self.n += f.n;
        Ok(())
    }

    pub fn finish(self) -> Result<FeatureSummary> {
        Ok(FeatureSummary {
            n: self.n,
            pool_stats: self.pool.map(StatsAccumulator::finish).transpose().context("pool3 statistics")?,
            spatial_stats: self.spatial.map(StatsAccumulator::finish).transpose().context("spatial statistics")?,
            pool_rows: self.pool_rows,
            logits: if self.logits_missing { None } else { self.logits },
        })
    }
}

/// Reports extraction progress: `f(images done, images in all)` after every batch.
pub type ProgressFn<'a> = &'a mut dyn FnMut(usize, usize);

/// Runs the network over every batch of `source` (through `cache` when given) into a
/// collector for `needs`; nothing holds more than one batch of images.
pub fn collect_features(
    extractor: &InceptionExtractor,
    cache: Option<&FeatureCache>,
    source: &ImageSource,
    needs: FeatureNeeds,
    batch: usize,
    progress: ProgressFn<'_>,
) -> Result<FeatureSummary> {
    let info = source.info();
    let mut collector = FeatureCollector::new(needs);
    source.for_each_batch(batch, |pixels, count| {
        let f = match cache {
            Some(cache) => cache.extract(extractor, pixels, count, info.h, info.w)?.0,
            None => extractor.extract(pixels, count, info.h, info.w)?,
        };
        ensure!(f.n == count, "feature extractor returned {} rows for {count} images", f.n);
        collector.push(&f)?;
        progress(collector.count(), info.n);
        Ok(())
    })?;
    collector.finish()
}

// ---------------------------------------------------------------------------------------------
// Inputs: image sources and references
// ---------------------------------------------------------------------------------------------

/// An image source: an npz batch (`arr_0`) or an image folder, read batch by batch.
pub enum ImageSource {
    Npz { path: PathBuf, info: ImagesInfo },
    Folder(ImageFolder),
}

impl ImageSource {
    /// Opens and validates `path` (headers only); `role` names it in errors.
    pub fn open(path: &Path, role: &str) -> Result<Self> {
        if path.is_dir() {
            let folder = ImageFolder::open(path).with_context(|| format!("{role} folder"))?;
            folder.check_headers().with_context(|| format!("{role} folder"))?;
            return Ok(Self::Folder(folder));
        }
        let info = npz::read_images_info(path).with_context(|| format!("{role} images"))?;
        Ok(Self::Npz { path: path.to_owned(), info })
    }

    pub fn info(&self) -> ImagesInfo {
        match self {
            Self::Npz { info, .. } => *info,
            Self::Folder(folder) => folder.info(),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Self::Npz { .. } => "npz",
            Self::Folder(_) => "folder",
        }
    }

    /// `f(pixels, count)` per batch of at most `batch` images (uint8 NHWC RGB).
    pub fn for_each_batch(&self, batch: usize, f: impl FnMut(&[u8], usize) -> Result<()>) -> Result<()> {
        match self {
            Self::Npz { path, .. } => npz::for_each_image_batch(path, batch, f).map(|_| ()),
            Self::Folder(folder) => folder.for_each_batch(batch, f),
        }
    }
}

/// The reference side: statistics from the file where present (as ADM's evaluator uses them),
/// images where a metric needs them.
pub struct Reference {
    pub path: PathBuf,
    pub file_stats: NpzStatistics,
    pub images: Option<ImageSource>,
}

impl Reference {
    /// Opens an ADM reference batch (`arr_0` and/or `mu`, `sigma`, `mu_s`, `sigma_s`) or an image
    /// folder, checking the statistics' shapes before any network runs.
    pub fn open(path: &Path) -> Result<Self> {
        if path.is_dir() {
            let images = ImageSource::open(path, "reference")?;
            return Ok(Self { path: path.to_owned(), file_stats: NpzStatistics::default(), images: Some(images) });
        }
        let file_stats = npz::read_statistics(path).context("reference statistics")?;
        check_stats_dim(path, file_stats.pool.as_ref(), "mu/sigma", POOL3_DIM, "pool3 (FID)")?;
        check_stats_dim(path, file_stats.spatial.as_ref(), "mu_s/sigma_s", SPATIAL_DIM, "spatial (sFID)")?;
        let has_images = npz::array_names(path)?.iter().any(|n| n == npz::IMAGES_KEY);
        let images = if has_images { Some(ImageSource::open(path, "reference")?) } else { None };
        ensure!(
            images.is_some() || file_stats.has_any(),
            "{}: neither images (arr_0) nor statistics (mu, sigma, mu_s, sigma_s); give an ADM reference batch",
            path.display()
        );
        if let Some(n) = images.as_ref().map(|i| i.info().n) {
            ensure!(n >= 2, "{}: {n} reference image(s); evaluation needs at least 2", path.display());
        }
        Ok(Self { path: path.to_owned(), file_stats, images })
    }

    /// What must be extracted from the reference images for `metrics`.
    pub fn needs(&self, metrics: &[Metric]) -> FeatureNeeds {
        FeatureNeeds::reference(metrics, &self.file_stats)
    }

    /// Drops metrics this reference cannot support: an error when `explicit` (the user named
    /// them), a warning otherwise (they came from a default list).
    pub fn feasible(&self, requested: Vec<Metric>, explicit: bool, warnings: &mut Vec<String>) -> Result<Vec<Metric>> {
        if self.images.is_some() {
            return Ok(requested);
        }
        let mut kept = Vec::new();
        for metric in requested {
            let missing = match metric {
                Metric::Fid if self.file_stats.pool.is_none() => Some("mu/sigma or arr_0"),
                Metric::Sfid if self.file_stats.spatial.is_none() => Some("mu_s/sigma_s or arr_0"),
                Metric::Precision | Metric::Recall | Metric::Kid => Some("reference images (arr_0)"),
                _ => None,
            };
            match missing {
                None => kept.push(metric),
                Some(what) if explicit => bail!(
                    "{}: {} needs {what}, which this file does not have; drop it from the metrics or give a reference batch with images",
                    self.path.display(),
                    metric.label()
                ),
                Some(what) => {
                    let w = format!("{} skipped: the reference has no {what}", metric.label());
                    if !warnings.contains(&w) {
                        warnings.push(w);
                    }
                }
            }
        }
        ensure!(!kept.is_empty(), "{}: none of the requested metrics can be computed from this reference", self.path.display());
        Ok(kept)
    }

    /// Extracts what `metrics` need from the reference images and adds the file's statistics.
    pub fn summarize(
        &self,
        extractor: &InceptionExtractor,
        cache: Option<&FeatureCache>,
        metrics: &[Metric],
        batch: usize,
        progress: ProgressFn<'_>,
    ) -> Result<FeatureSummary> {
        let needs = self.needs(metrics);
        let extracted = match (&self.images, needs.any()) {
            (Some(images), true) => collect_features(extractor, cache, images, needs, batch, progress)?,
            _ => FeatureSummary { n: self.images.as_ref().map_or(0, |i| i.info().n), ..FeatureSummary::default() },
        };
        Ok(extracted.with_file_stats(&self.file_stats))
    }
}

/// File statistics must match the extractor's feature size; checked before the network runs.
fn check_stats_dim(path: &Path, stats: Option<&FeatureStats>, keys: &str, expected: usize, what: &str) -> Result<()> {
    match stats {
        Some(s) if s.dim() != expected => bail!(
            "{}: {keys} have {} dims but the Inception {what} features have {expected}; the feature dims \
             of samples and reference differ, so this reference was made with another extractor \
             (recompute it with `genbench stats`)",
            path.display(),
            s.dim()
        ),
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------
// Evaluation
// ---------------------------------------------------------------------------------------------

/// Settings of the metric formulas (ADM's by default).
#[derive(Clone, Debug, Serialize)]
pub struct EvalOptions {
    pub pr: PrConfig,
    pub kid: KidConfig,
    /// Whose IS splits (and, through `kid`, KID subsets) to follow: ADM's by default.
    pub convention: Convention,
    /// Why the samples have no logits (weights without the classifier), if so: IS is then
    /// reported unavailable with this reason and every other metric is kept.
    #[serde(skip)]
    pub no_logits_reason: Option<String>,
    /// Names the reference in errors (its path).
    #[serde(skip)]
    pub reference_label: String,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self {
            pr: PrConfig::default(),
            kid: Convention::Adm.kid_config(None),
            convention: Convention::Adm,
            no_logits_reason: None,
            reference_label: "the reference".to_owned(),
        }
    }
}

/// The Inception Score, or why it could not be computed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct IsDiagnostics {
    pub available: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(flatten)]
    pub score: Option<InceptionScore>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub splits: Option<IsSplits>,
}

/// Everything each metric computed besides its headline value.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Diagnostics {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fid: Option<FidResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sfid: Option<FidResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inception_score: Option<IsDiagnostics>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub precision_recall: Option<PrecisionRecall>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kid: Option<KidResult>,
}

/// Result of [`evaluate`].
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Evaluation {
    /// Headline value of every metric that could be computed (KID: the mean).
    pub values: BTreeMap<Metric, f64>,
    pub diagnostics: Diagnostics,
    /// Conditions a reader should know about (rank-deficient covariances, ADM's eps retry,
    /// fp16 fall-backs, unavailable IS, class-sorted samples).
    pub warnings: Vec<String>,
    /// Metrics that were requested but could not be computed, with the reason.
    pub unavailable: BTreeMap<Metric, String>,
}

/// Image metrics of `samples` against `reference` with ADM's formulas. Metrics other than image
/// metrics are ignored. IS without logits is reported in [`Evaluation::unavailable`]; any
/// other missing input is an error.
pub fn evaluate(
    samples: &FeatureSummary,
    reference: Option<&FeatureSummary>,
    metrics: &[Metric],
    options: &EvalOptions,
) -> Result<Evaluation> {
    let mut out = Evaluation::default();
    let reference = |m: Metric| reference.with_context(|| format!("{} needs a reference set", m.label()));
    let mut wanted: Vec<Metric> = metrics.iter().copied().filter(|m| m.is_image_metric()).collect();
    wanted.sort();
    wanted.dedup();
    for m in wanted {
        match m {
            Metric::Fid | Metric::Sfid => {
                let (what, s, r, compute): (_, _, _, fn(&FeatureStats, &FeatureStats) -> Result<FidResult>) = if m == Metric::Fid {
                    ("FID", samples.pool_stats.as_ref(), reference(m)?.pool_stats.as_ref(), frechet_distance)
                } else {
                    ("sFID", samples.spatial_stats.as_ref(), reference(m)?.spatial_stats.as_ref(), spatial_frechet_distance)
                };
                let result = fid_for(what, s, r, &options.reference_label, compute, &mut out.warnings)?;
                out.values.insert(m, result.value);
                if m == Metric::Fid {
                    out.diagnostics.fid = Some(result);
                } else {
                    out.diagnostics.sfid = Some(result);
                }
            }
            Metric::Is => match samples.logits.as_ref().filter(|_| options.convention.no_is_reason().is_none()) {
                Some(logits) => {
                    out.warnings.extend(class_sorted_warning_from_logits(logits, LOGITS_DIM));
                    let is = options.convention.inception_score(logits, LOGITS_DIM).context("IS")?;
                    out.values.insert(m, is.mean);
                    out.diagnostics.inception_score =
                        Some(IsDiagnostics { available: true, reason: None, score: Some(is), splits: options.convention.is_splits() });
                }
                None => {
                    let reason = match options.convention.no_is_reason() {
                        Some(why) => why.to_owned(),
                        None => options
                            .no_logits_reason
                            .clone()
                            .unwrap_or_else(|| "the classifier logits were not collected for these samples".to_owned()),
                    };
                    out.warnings.push(format!("IS unavailable: {reason}"));
                    out.diagnostics.inception_score =
                        Some(IsDiagnostics { available: false, reason: Some(reason.clone()), score: None, splits: None });
                    out.unavailable.insert(m, reason);
                }
            },
            Metric::Precision | Metric::Recall => {
                if out.diagnostics.precision_recall.is_some() {
                    continue; // one pass gives both
                }
                let rows = reference(m)?.pool_rows.as_deref().context("precision/recall needs the reference's pool3 rows")?;
                let samples_rows = samples.pool_rows.as_deref().context("precision/recall needs the samples' pool3 rows")?;
                let pr = precision_recall(rows, samples_rows, POOL3_DIM, &options.pr).context("precision/recall")?;
                if pr.fp32_fallback_blocks > 0 {
                    out.warnings.push(format!(
                        "precision/recall: {} fp16 distance block(s) overflowed and were recomputed in float32 (as ADM does)",
                        pr.fp32_fallback_blocks
                    ));
                }
                // Both values are reported whenever either is asked for: they come together.
                out.values.insert(Metric::Precision, pr.precision);
                out.values.insert(Metric::Recall, pr.recall);
                out.diagnostics.precision_recall = Some(pr);
            }
            Metric::Kid => {
                let rows = reference(m)?.pool_rows.as_deref().context("KID needs the reference's pool3 rows")?;
                let samples_rows = samples.pool_rows.as_deref().context("KID needs the samples' pool3 rows")?;
                let kid = kernel_inception_distance(samples_rows, rows, POOL3_DIM, &options.kid).context("KID")?;
                out.values.insert(m, kid.mean);
                out.diagnostics.kid = Some(kid);
            }
            _ => unreachable!("filtered to image metrics"),
        }
    }
    // Only the metrics asked for are headline values (precision/recall come as a pair).
    out.values.retain(|m, _| metrics.contains(m) || matches!(m, Metric::Precision | Metric::Recall));
    Ok(out)
}

fn fid_for(
    what: &str,
    sample: Option<&FeatureStats>,
    reference: Option<&FeatureStats>,
    reference_label: &str,
    compute: fn(&FeatureStats, &FeatureStats) -> Result<FidResult>,
    warnings: &mut Vec<String>,
) -> Result<FidResult> {
    let sample = sample.with_context(|| format!("{what} needs the samples' statistics"))?;
    let reference = reference.with_context(|| format!("{what} needs the reference's statistics"))?;
    if sample.dim() != reference.dim() {
        bail!(
            "{what}: sample features have {} dims but the reference statistics in {reference_label} have {}; \
             the reference was made with a different feature extractor, recompute it with `genbench stats`",
            sample.dim(),
            reference.dim()
        );
    }
    let result = compute(sample, reference).with_context(|| format!("{what} against {reference_label}"))?;
    warnings.extend(rank_deficiency_warning(sample.n, sample.dim(), what, "the sample set"));
    warnings.extend(rank_deficiency_warning(reference.n, reference.dim(), what, "the reference set"));
    if result.eps_retry_used {
        warnings.push(format!("{what}: non-finite first attempt; 1e-6 was added to both covariance diagonals (as ADM does)"));
    }
    if result.max_imaginary > ADM_IMAGINARY_LIMIT {
        warnings.push(format!(
            "{what}: clipped negative eigenvalues up to an imaginary part of {:.2e} (> {ADM_IMAGINARY_LIMIT}, where ADM's evaluator would raise)",
            result.max_imaginary
        ));
    }
    Ok(result)
}

// ---------------------------------------------------------------------------------------------
// Resizing before scoring
// ---------------------------------------------------------------------------------------------

/// Resizes uint8 NHWC RGB images to `out x out` with PyTorch's `F.interpolate(mode='bicubic')`
/// arithmetic (Keys cubic, a = -0.75, half-pixel centres, borders clamped, no antialias),
/// rounding back to uint8. LlamaGen scores its 384 px models at 256 this way
/// (LlamaGen@ce98ec4 `autoregressive/sample/sample_c2i_ddp.py`); it resizes the decoder's float
/// output before quantising, while genbench's generators hand over uint8 images, so values can
/// differ by one grey level.
pub fn resize_bicubic_torch_u8(images: &[u8], n: usize, h: usize, w: usize, out: usize) -> Result<Vec<u8>> {
    ensure!(images.len() == n * h * w * 3, "expected {n} images of {h}x{w}x3, got {} bytes", images.len());
    ensure!(out > 0, "resize target must be at least 1 pixel");
    if h == out && w == out {
        return Ok(images.to_vec());
    }
    let ys = cubic_taps(h, out);
    let xs = cubic_taps(w, out);
    let mut dst = vec![0u8; n * out * out * 3];
    let mut rows = vec![0f32; out * w * 3];
    for (img, dst) in images.chunks_exact(h * w * 3).zip(dst.chunks_exact_mut(out * out * 3)) {
        // Vertical pass into float rows, then horizontal pass with rounding.
        for (oy, (y0, wy)) in ys.iter().enumerate() {
            for x in 0..w * 3 {
                let mut acc = 0f32;
                for (k, wk) in wy.iter().enumerate() {
                    let y = (*y0 + k as isize).clamp(0, h as isize - 1) as usize;
                    acc += wk * f32::from(img[y * w * 3 + x]);
                }
                rows[oy * w * 3 + x] = acc;
            }
        }
        for oy in 0..out {
            for (ox, (x0, wx)) in xs.iter().enumerate() {
                for c in 0..3 {
                    let mut acc = 0f32;
                    for (k, wk) in wx.iter().enumerate() {
                        let x = (*x0 + k as isize).clamp(0, w as isize - 1) as usize;
                        acc += wk * rows[oy * w * 3 + x * 3 + c];
                    }
                    dst[(oy * out + ox) * 3 + c] = acc.round().clamp(0.0, 255.0) as u8;
                }
            }
        }
    }
    Ok(dst)
}

/// First source index and the four Keys weights of each output pixel along one axis.
fn cubic_taps(input: usize, output: usize) -> Vec<(isize, [f32; 4])> {
    const A: f32 = -0.75;
    let near = |x: f32| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let far = |x: f32| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    let scale = input as f32 / output as f32;
    (0..output)
        .map(|o| {
            let src = (o as f32 + 0.5) * scale - 0.5;
            let floor = src.floor();
            let t = src - floor;
            (floor as isize - 1, [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)])
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_lists() {
        assert_eq!(Metric::parse_image_list("pr, FID,fid", "--metrics").unwrap(), vec![Metric::Fid, Metric::Precision, Metric::Recall]);
        let err = Metric::parse_image_list("fid,lpips", "--metrics").unwrap_err().to_string();
        assert!(err.contains("lpips") && err.contains("--metrics"), "{err}");
        assert!(Metric::parse_image_list(" , ", "--metrics").is_err());
        assert!(Metric::IMAGE.iter().all(|m| m.is_image_metric()));
        assert!(!Metric::SecPerImage.is_image_metric());
    }

    fn features(n: usize, seed: u32, logits: bool) -> Features {
        let v = |i: usize, k: u32| ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(k * 97 + seed) % 1000) as f32 / 1000.0;
        Features {
            n,
            pool3: (0..n * POOL3_DIM).map(|i| v(i, 1)).collect(),
            spatial: (0..n * SPATIAL_DIM).map(|i| v(i, 2)).collect(),
            logits: logits.then(|| (0..n * LOGITS_DIM).map(|i| v(i, 3)).collect()),
        }
    }

    #[test]
    fn streamed_summary_equals_one_pass_and_keeps_only_what_is_needed() {
        let all = features(6, 1, false);
        let mut c = FeatureCollector::new(FeatureNeeds::samples(&[Metric::Fid]));
        c.push(&all.slice(0, 4)).unwrap();
        c.push(&all.slice(4, 6)).unwrap();
        let s = c.finish().unwrap();
        assert_eq!(s.n, 6);
        assert!(s.pool_rows.is_none() && s.spatial_stats.is_none() && s.logits.is_none(), "FID alone keeps no rows");
        let one_pass = FeatureStats::from_features(&all.pool3, POOL3_DIM).unwrap();
        let streamed = s.pool_stats.unwrap();
        let max_diff = one_pass.sigma.iter().zip(&streamed.sigma).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        // Both paths buffer the rows into one GEMM update (fewer than 2048 rows), so they agree
        // to f64 rounding.
        assert!(max_diff < 1e-12, "{max_diff}");
    }

    #[test]
    fn missing_logits_make_is_unavailable_and_keep_the_rest() {
        let metrics = [Metric::Fid, Metric::Is, Metric::Precision];
        let summarize = |f: &Features| {
            let mut c = FeatureCollector::new(FeatureNeeds::samples(&metrics));
            c.push(f).unwrap();
            c.finish().unwrap()
        };
        let samples = summarize(&features(5, 1, false));
        let reference = summarize(&features(5, 2, false));
        let options = EvalOptions { no_logits_reason: Some("no classifier in these weights".into()), ..EvalOptions::default() };
        let e = evaluate(&samples, Some(&reference), &metrics, &options).unwrap();
        assert!(e.values[&Metric::Fid] > 0.0);
        assert!(e.values.contains_key(&Metric::Precision) && e.values.contains_key(&Metric::Recall));
        assert!(!e.values.contains_key(&Metric::Is));
        assert_eq!(e.unavailable[&Metric::Is], "no classifier in these weights");
        assert!(e.warnings.iter().any(|w| w.contains("IS unavailable")));
        assert!(e.warnings.iter().any(|w| w.contains("rank-deficient")), "{:?}", e.warnings);
        let json = serde_json::to_value(&e.diagnostics).unwrap();
        assert_eq!(json["inception_score"]["available"], false);
        assert!(json["inception_score"].get("mean").is_none());
        assert!(json["fid"]["value"].as_f64().unwrap() > 0.0);
        // A metric needing the reference without one is an error naming it.
        let err = evaluate(&samples, None, &[Metric::Fid], &options).unwrap_err().to_string();
        assert!(err.contains("FID") && err.contains("reference"), "{err}");
    }

    #[test]
    fn torch_bicubic_resize_known_cases() {
        // Constant images stay constant; identity size is a copy.
        let constant = vec![77u8; 2 * 6 * 6 * 3];
        assert_eq!(resize_bicubic_torch_u8(&constant, 2, 6, 6, 4).unwrap(), vec![77u8; 2 * 4 * 4 * 3]);
        assert_eq!(resize_bicubic_torch_u8(&constant, 2, 6, 6, 6).unwrap(), constant);
        // 2x downscale: output pixel 0 samples source position 0.5, i.e. taps at -1..2 with
        // t = 0.5 (weights -0.09375, 0.59375, 0.59375, -0.09375), the -1 tap clamped to 0.
        let row: Vec<u8> = (0..4u8).flat_map(|x| [x * 40, x * 40, x * 40]).collect();
        let img: Vec<u8> = (0..4).flat_map(|_| row.clone()).collect();
        let out = resize_bicubic_torch_u8(&img, 1, 4, 4, 2).unwrap();
        let expected0 = -0.09375f32 * 0.0 + 0.59375 * 0.0 + 0.59375 * 40.0 - 0.09375 * 80.0;
        assert_eq!(out[0], expected0.round() as u8);
        assert!(resize_bicubic_torch_u8(&img, 2, 4, 4, 2).is_err());
    }
}
