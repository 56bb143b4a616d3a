//! Suite files (`suites/*.toml`): what to run, and which published numbers each run should
//! reproduce within which tolerance.
//!
//! A suite has a `[suite]` header, optional `[defaults]` (any run field except `id` and
//! `published`; a run's own value wins, and `sampler`, `arch` and `profile` merge key by key) and
//! `[[run]]` tables. Loading parses, applies defaults, resolves every published value against the
//! paper tables and checks everything a run needs *before* anything runs. Every problem is
//! reported as `file:line:column: key: message`; unknown keys, wrong types, missing fields and
//! references to paper rows that do not exist are all caught here.
//!
//! Paths may use `${VAR}` or `${VAR:-default}`; relative paths are relative to the suite file.
//! An unset variable or an absent file is *not* a load error: the run is reported as skipped with
//! the reason ([`Run::missing_inputs`]), so one missing checkpoint does not stop a suite.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::papers::PaperLibrary;

// ---------------------------------------------------------------------------------------------
// Vocabulary
// ---------------------------------------------------------------------------------------------

/// Generator families and sampler settings are the models crate's own types, so a suite file
/// accepts exactly what the generators accept.
pub use genbench_models::generator::{Family, SamplerSettings};

/// The family as written in suite files (its serde name).
pub fn family_name(family: Family) -> &'static str {
    match family {
        Family::Var => "var",
        Family::RasterAr => "raster_ar",
        Family::Mar => "mar",
        Family::AutoNat => "auto_nat",
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunKind {
    /// Sample with real weights and score against a reference batch.
    #[default]
    Generate,
    /// Time sampling (real or random weights), per step; no image metrics.
    Profile,
    /// Compute metrics on fixed images and compare with known values.
    MetricCheck,
}

/// The workspace's one metric vocabulary (image metrics and cost metrics).
pub use genbench_metrics::evaluate::Metric;
pub use genbench_metrics::precision_recall::DistancePrecision;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dtype {
    #[default]
    F32,
    F16,
    Bf16,
}

/// Which reference implementation's preprocessing and formulas the metrics follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Evaluator {
    /// guided-diffusion `evaluations/evaluator.py` (VAR, LlamaGen, MAR, DiT numbers).
    #[default]
    Adm,
    TorchFidelity,
    CleanFid,
}

/// Architecture overrides, for configurations without a released checkpoint (profiling at
/// matched sizes, VAR Table 3's ablation rows). Absent means the named model's own value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub depth: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heads: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mlp_ratio: Option<f64>,
    /// VAR: class conditioning by AdaLN (true) or by a start token only (false; Table 3 row 2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adaln: Option<bool>,
    /// VAR: normalised attention (Table 3 row 6).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attn_norm: Option<bool>,
}

impl ArchOverrides {
    pub fn is_empty(&self) -> bool {
        *self == ArchOverrides::default()
    }
}

// ---------------------------------------------------------------------------------------------
// The file as written (everything optional, so defaults can fill gaps and we can say precisely
// what is missing).
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SuiteFile {
    suite: SuiteHeader,
    #[serde(default)]
    defaults: Option<RunTable>,
    #[serde(default)]
    run: Vec<RunTable>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SuiteHeader {
    name: String,
    #[serde(default)]
    description: String,
    /// Directory of paper tables, relative to the suite file; default `papers`.
    papers: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunTable {
    id: Option<String>,
    kind: Option<RunKind>,
    family: Option<Family>,
    model: Option<String>,
    checkpoint: Option<String>,
    tokenizer: Option<String>,
    random_weights: Option<bool>,
    arch: Option<ArchOverrides>,
    resolution: Option<u32>,
    eval_resolution: Option<u32>,
    dtype: Option<Dtype>,
    samples: Option<u64>,
    batch: Option<u32>,
    seeds: Option<Vec<u64>>,
    metrics: Option<Vec<Metric>>,
    reference: Option<String>,
    evaluator: Option<Evaluator>,
    /// Arithmetic of precision/recall's distances (default ADM's fp16).
    pr_distances: Option<DistancePrecision>,
    relative_to: Option<String>,
    /// Why genbench cannot run this row (a configuration the paper does not describe well
    /// enough to build): the run is reported as skipped with this reason.
    unsupported: Option<String>,
    images: Option<Vec<String>>,
    split_at: Option<usize>,
    sampler: Option<SamplerSettings>,
    profile: Option<ProfileTable>,
    published: Option<PublishedTable>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileTable {
    warmup: Option<u32>,
    repeats: Option<u32>,
    batches: Option<Vec<u32>>,
    resolutions: Option<Vec<u32>>,
    record_steps: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishedTable {
    /// Paper table name (`suites/papers/<table>.csv`).
    table: Option<String>,
    /// Column = value pairs that pick exactly one row.
    row: Option<BTreeMap<String, toml::Value>>,
    /// Or: a JSON file of known values (metric self-checks), read with a JSON pointer per metric.
    json: Option<String>,
    tolerance: BTreeMap<Metric, ToleranceTable>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ToleranceTable {
    abs: Option<f64>,
    rel: Option<f64>,
    factor: Option<f64>,
    /// Paper column holding the value, when it is not named like the metric.
    column: Option<String>,
    /// JSON pointer, for `json` sources.
    pointer: Option<String>,
}

/// Field-by-field `run.or(defaults)`.
macro_rules! merge_fields {
    ($run:expr, $defaults:expr; $($field:ident),*) => {
        $( if $run.$field.is_none() { $run.$field = $defaults.$field.clone(); } )*
    };
}

impl RunTable {
    /// The defaults that apply to a run of `kind`: one `[defaults]` table can serve model runs
    /// and metric checks alike, so fields a kind does not use are not inherited (a run that sets
    /// one itself still gets an error).
    fn defaults_for(&self, kind: RunKind) -> RunTable {
        let mut d = self.clone();
        match kind {
            RunKind::MetricCheck => {
                d.family = None;
                d.model = None;
                d.checkpoint = None;
                d.tokenizer = None;
                d.random_weights = None;
                d.arch = None;
                d.resolution = None;
                d.eval_resolution = None;
                d.dtype = None;
                d.samples = None;
                d.batch = None;
                d.seeds = None;
                d.reference = None;
                d.relative_to = None;
                d.sampler = None;
                d.profile = None;
            }
            RunKind::Profile => {
                d.reference = None;
                d.samples = None;
                d.eval_resolution = None;
                d.evaluator = None;
                d.pr_distances = None;
                d.images = None;
                d.split_at = None;
            }
            RunKind::Generate => {
                d.images = None;
                d.split_at = None;
                d.profile = None;
            }
        }
        d
    }

    fn with_defaults(mut self, all_defaults: &RunTable) -> RunTable {
        let d = &all_defaults.defaults_for(self.kind.or(all_defaults.kind).unwrap_or_default());
        merge_fields!(self, d; kind, family, model, checkpoint, tokenizer, random_weights, resolution,
            eval_resolution, dtype, samples, batch, seeds, metrics, reference, evaluator, pr_distances,
            relative_to, images, split_at);
        self.sampler = match (self.sampler.take(), &d.sampler) {
            (Some(mut s), Some(ds)) => {
                merge_fields!(s, ds; cfg, cfg_schedule, cfg_interval, top_k, top_p, temperature, more_smooth, num_iter,
                    num_sampling_steps, strategy);
                Some(s)
            }
            (s, ds) => s.or_else(|| ds.clone()),
        };
        self.arch = match (self.arch.take(), &d.arch) {
            (Some(mut a), Some(da)) => {
                merge_fields!(a, da; depth, width, heads, mlp_ratio, adaln, attn_norm);
                Some(a)
            }
            (a, da) => a.or_else(|| da.clone()),
        };
        self.profile = match (self.profile.take(), &d.profile) {
            (Some(mut p), Some(dp)) => {
                merge_fields!(p, dp; warmup, repeats, batches, resolutions, record_steps);
                Some(p)
            }
            (p, dp) => p.or_else(|| dp.clone()),
        };
        self
    }
}

// ---------------------------------------------------------------------------------------------
// Resolved suite
// ---------------------------------------------------------------------------------------------

/// A path from the suite: as written, and as resolved (or why it could not be).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PathSpec {
    pub raw: String,
    pub resolved: Result<PathBuf, String>,
}

impl PathSpec {
    /// Why this input is not usable now, if it is not.
    pub fn problem(&self, role: &str) -> Option<String> {
        match &self.resolved {
            Err(why) => Some(format!("{role} `{}`: {why}", self.raw)),
            Ok(p) if !p.exists() => Some(format!("{role} {} does not exist", p.display())),
            Ok(_) => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Weights {
    Checkpoint {
        checkpoint: PathSpec,
        tokenizer: Option<PathSpec>,
    },
    /// Seeded random initialisation: for timing only.
    Random,
}

/// What is sampled: shared by generate and profile runs.
#[derive(Debug, Clone, Serialize)]
pub struct ModelSpec {
    pub family: Family,
    pub model: String,
    pub weights: Weights,
    #[serde(skip_serializing_if = "ArchOverrides::is_empty")]
    pub arch: ArchOverrides,
    pub resolution: u32,
    pub dtype: Dtype,
    /// Sampler settings; a `strategy` given as a file holds the resolved path.
    pub sampler: SamplerSettings,
    /// The strategy file as written and resolved, an input like the checkpoint (absent for
    /// built-in strategy names).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strategy_file: Option<PathSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProfileSettings {
    /// Untimed batches before timing starts.
    pub warmup: u32,
    /// Timed batches per (batch size, resolution).
    pub repeats: u32,
    pub batches: Vec<u32>,
    pub resolutions: Vec<u32>,
    pub record_steps: bool,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Task {
    Generate {
        model: ModelSpec,
        samples: u64,
        batch: u32,
        seeds: Vec<u64>,
        reference: Option<PathSpec>,
        evaluator: Evaluator,
        pr_distances: DistancePrecision,
        /// Images are resized to this before scoring (LlamaGen's 384 -> 256 protocol).
        eval_resolution: Option<u32>,
    },
    Profile {
        model: ModelSpec,
        seeds: Vec<u64>,
        profile: ProfileSettings,
    },
    MetricCheck {
        images: Vec<PathSpec>,
        /// The first `split_at` images are the reference set, the rest the samples.
        split_at: usize,
        evaluator: Evaluator,
        /// Golden values computed in float32 (numpy) need `f32` here.
        pr_distances: DistancePrecision,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Tolerance {
    /// |ours - published| <= value.
    Abs(f64),
    /// |ours - published| <= value * |published|.
    Rel(f64),
    /// published / value <= ours <= published * value (for ratios such as relative cost).
    Factor(f64),
}

impl Tolerance {
    pub fn passes(self, ours: f64, published: f64) -> bool {
        match self {
            Tolerance::Abs(t) => (ours - published).abs() <= t,
            Tolerance::Rel(t) => (ours - published).abs() <= t * published.abs(),
            Tolerance::Factor(f) => ours >= published / f && ours <= published * f,
        }
    }

    pub fn describe(self) -> String {
        match self {
            Tolerance::Abs(t) => format!("±{}", crate::fit::format_sig(t, 3)),
            Tolerance::Rel(t) => format!("±{}%", crate::fit::format_sig(t * 100.0, 3)),
            Tolerance::Factor(f) => format!("×÷{}", crate::fit::format_sig(f, 3)),
        }
    }
}

/// One published value a run should reproduce.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Target {
    pub metric: Metric,
    pub published: f64,
    pub tolerance: Tolerance,
    /// Where the value came from (table, line, column or JSON pointer).
    pub origin: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Published {
    /// e.g. `var_table1.csv line 26 (model = "VAR-d16", ...)`.
    pub source: String,
    /// The row's own `source` column (the paper, README or note it was read from).
    pub citation: Option<String>,
    pub targets: Vec<Target>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub id: String,
    /// Position among the file's `[[run]]` tables (0-based), and the line of its header.
    pub index: usize,
    pub line: usize,
    pub task: Task,
    pub metrics: Vec<Metric>,
    pub relative_to: Option<String>,
    /// Set when genbench cannot run this row, with the reason (the file's `unsupported`).
    pub unsupported: Option<String>,
    pub published: Option<Published>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Suite {
    pub path: PathBuf,
    pub name: String,
    pub description: String,
    pub runs: Vec<Run>,
}

impl Run {
    pub fn model_spec(&self) -> Option<&ModelSpec> {
        match &self.task {
            Task::Generate { model, .. } | Task::Profile { model, .. } => Some(model),
            Task::MetricCheck { .. } => None,
        }
    }

    /// Family and model names for tables; metric checks have neither.
    pub fn family_and_model(&self) -> (String, String) {
        match self.model_spec() {
            Some(m) => (family_name(m.family).to_string(), m.model.clone()),
            None => ("-".to_string(), "metric-check".to_string()),
        }
    }

    /// Every input file this run needs that is unset or absent, each with its role. A runner
    /// reports a run with any as skipped, giving these as the reason.
    pub fn missing_inputs(&self) -> Vec<String> {
        let mut missing = Vec::new();
        let mut check = |spec: &PathSpec, role: &str| missing.extend(spec.problem(role));
        if let Some(model) = self.model_spec() {
            if let Weights::Checkpoint { checkpoint, tokenizer } = &model.weights {
                check(checkpoint, "checkpoint");
                if let Some(t) = tokenizer {
                    check(t, "tokenizer");
                }
            }
            if let Some(strategy) = &model.strategy_file {
                check(strategy, "sampler strategy");
            }
        }
        match &self.task {
            Task::Generate { reference: Some(r), .. } => check(r, "reference batch"),
            Task::MetricCheck { images, .. } => {
                for (i, im) in images.iter().enumerate() {
                    check(im, &format!("images[{i}]"));
                }
            }
            _ => {}
        }
        missing
    }

    /// Why the runner skips this run, if it does: not supported, or inputs missing.
    pub fn skip_reason(&self) -> Option<String> {
        if let Some(why) = &self.unsupported {
            return Some(format!("not supported: {why}"));
        }
        let missing = self.missing_inputs();
        (!missing.is_empty()).then(|| missing.join("; "))
    }

    /// Settings as JSON, for manifests.
    pub fn settings_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.task).unwrap_or(serde_json::Value::Null)
    }

    /// Key of the generated samples: everything that changes the images, and nothing else, so a
    /// re-run after an interruption or after adding a metric finds its samples. `weight_hashes`
    /// maps role (`checkpoint`, `tokenizer`) to content hash, so replaced weights under the same
    /// path do not hit a stale cache. Batch size is included because samplers draw noise per
    /// batch. `None` for runs that generate nothing (metric checks).
    pub fn sample_cache_key(&self, weight_hashes: &BTreeMap<String, String>) -> Option<String> {
        let Task::Generate {
            model,
            samples,
            batch,
            seeds,
            ..
        } = &self.task
        else {
            return None;
        };
        let identity = serde_json::json!({
            "family": model.family,
            "model": model.model,
            "arch": model.arch,
            "random_weights": matches!(model.weights, Weights::Random),
            "weights": weight_hashes,
            "resolution": model.resolution,
            "dtype": model.dtype,
            "sampler": model.sampler,
            "samples": samples,
            "batch": batch,
            "seeds": seeds,
        });
        Some(short_hash(&identity.to_string()))
    }

    /// Key of the Inception features of the samples: the sample key plus what changes features.
    pub fn feature_cache_key(&self, sample_key: &str) -> Option<String> {
        let Task::Generate {
            evaluator,
            eval_resolution,
            ..
        } = &self.task
        else {
            return None;
        };
        let identity = serde_json::json!({
            "samples": sample_key,
            "evaluator": evaluator,
            "eval_resolution": eval_resolution,
            "network": "inception-2015-12-05",
        });
        Some(short_hash(&identity.to_string()))
    }
}

/// First 16 hex digits of SHA-256: short enough for directory names, far from colliding.
fn short_hash(text: &str) -> String {
    genbench_runtime::hash::sha256_bytes(text.as_bytes())[..16].to_string()
}

impl Suite {
    pub fn load(path: &Path) -> Result<Suite, SuiteError> {
        let text = std::fs::read_to_string(path).map_err(|e| SuiteError {
            file: path.to_path_buf(),
            problems: vec![Problem {
                line: 0,
                column: 0,
                key: String::new(),
                message: format!("cannot read: {e}"),
            }],
        })?;
        Suite::parse(path, &text, &|name| std::env::var(name).ok())
    }

    /// Parses and validates `text` as if read from `path`; `env` looks up `${VAR}`s.
    pub fn parse(path: &Path, text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Suite, SuiteError> {
        let locator = Locator::new(text);
        let fail = |problems: Vec<Problem>| SuiteError {
            file: path.to_path_buf(),
            problems,
        };
        let file: SuiteFile = toml::from_str(text).map_err(|e| {
            let offset = e.span().map(|s| s.start).unwrap_or(0);
            let (line, column) = locator.line_col(offset);
            fail(vec![Problem {
                line,
                column,
                key: locator.path_at(offset),
                message: e.message().to_string(),
            }])
        })?;
        let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut v = Validator {
            locator: &locator,
            problems: Vec::new(),
            base_dir: &base_dir,
            env,
        };
        let suite = v.suite(path, file);
        if v.problems.is_empty() {
            Ok(suite)
        } else {
            v.problems.sort_by_key(|p| (p.line, p.column));
            Err(fail(v.problems))
        }
    }

    /// The runs to execute: all, or those named by `--only` (in suite order). Unknown ids are
    /// an error listing the ids that exist.
    pub fn select(&self, only: &[String]) -> Result<Vec<&Run>, String> {
        if only.is_empty() {
            return Ok(self.runs.iter().collect());
        }
        let unknown: Vec<&String> = only
            .iter()
            .filter(|id| !self.runs.iter().any(|r| &r.id == *id))
            .collect();
        if !unknown.is_empty() {
            return Err(format!(
                "{}: no run with id {}; the runs are: {}",
                self.path.display(),
                unknown.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", "),
                self.runs.iter().map(|r| r.id.as_str()).collect::<Vec<_>>().join(", ")
            ));
        }
        Ok(self.runs.iter().filter(|r| only.contains(&r.id)).collect())
    }
}

// ---------------------------------------------------------------------------------------------
// Errors with locations
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// 1-based; 0 when the file could not be read at all.
    pub line: usize,
    pub column: usize,
    /// Dotted key path, e.g. `run[2].published.row`.
    pub key: String,
    pub message: String,
}

#[derive(Debug, Clone)]
pub struct SuiteError {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

impl fmt::Display for SuiteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            match (p.line, p.key.is_empty()) {
                (0, _) => write!(f, "{}: {}", self.file.display(), p.message)?,
                (_, true) => write!(f, "{}:{}:{}: {}", self.file.display(), p.line, p.column, p.message)?,
                _ => write!(
                    f,
                    "{}:{}:{}: {}: {}",
                    self.file.display(),
                    p.line,
                    p.column,
                    p.key,
                    p.message
                )?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for SuiteError {}

/// Maps byte offsets to key paths and back, from toml_edit's spans.
struct Locator<'a> {
    text: &'a str,
    /// (start offset, key path) of every key, table header and array element, sorted by offset.
    entries: Vec<(usize, String)>,
}

impl<'a> Locator<'a> {
    fn new(text: &'a str) -> Self {
        let mut entries = Vec::new();
        // A syntax error leaves no tree; toml's own error still has the offset, and the path is
        // then simply left empty.
        if let Ok(doc) = toml_edit::ImDocument::parse(text) {
            collect_table(doc.as_table(), "", &mut entries);
        }
        entries.sort_by_key(|e| e.0);
        Self { text, entries }
    }

    /// The key path of the innermost entry starting at or before `offset`.
    fn path_at(&self, offset: usize) -> String {
        self.entries
            .iter()
            .rev()
            .find(|(start, _)| *start <= offset)
            .map(|(_, p)| p.clone())
            .unwrap_or_default()
    }

    /// Offset of `path`, or of its nearest ancestor that is written in the file.
    fn offset_of(&self, path: &str) -> usize {
        let mut candidate = path.to_string();
        loop {
            if let Some((start, _)) = self.entries.iter().find(|(_, p)| *p == candidate) {
                return *start;
            }
            match parent_path(&candidate) {
                Some(parent) => candidate = parent,
                None => return 0,
            }
        }
    }

    fn line_col(&self, offset: usize) -> (usize, usize) {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
        (line, column)
    }
}

fn parent_path(path: &str) -> Option<String> {
    if path.is_empty() {
        return None;
    }
    if path.ends_with(']') {
        return path.rfind('[').map(|i| path[..i].to_string());
    }
    Some(path.rfind('.').map(|i| path[..i].to_string()).unwrap_or_default())
}

fn join_key(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

fn collect_table(table: &toml_edit::Table, prefix: &str, out: &mut Vec<(usize, String)>) {
    for (name, item) in table.iter() {
        let path = join_key(prefix, name);
        if let Some((key, _)) = table.get_key_value(name) {
            if let Some(span) = key.span() {
                out.push((span.start, path.clone()));
            }
        }
        collect_item(item, &path, out);
    }
}

fn collect_item(item: &toml_edit::Item, path: &str, out: &mut Vec<(usize, String)>) {
    match item {
        toml_edit::Item::Table(t) => {
            if let Some(span) = t.span() {
                out.push((span.start, path.to_string()));
            }
            collect_table(t, path, out);
        }
        toml_edit::Item::ArrayOfTables(array) => {
            for (i, t) in array.iter().enumerate() {
                let element = format!("{path}[{i}]");
                if let Some(span) = t.span() {
                    out.push((span.start, element.clone()));
                }
                collect_table(t, &element, out);
            }
        }
        toml_edit::Item::Value(value) => collect_value(value, path, out),
        toml_edit::Item::None => {}
    }
}

fn collect_value(value: &toml_edit::Value, path: &str, out: &mut Vec<(usize, String)>) {
    match value {
        toml_edit::Value::InlineTable(t) => {
            for (name, v) in t.iter() {
                let p = join_key(path, name);
                if let Some((key, _)) = t.get_key_value(name) {
                    if let Some(span) = key.span() {
                        out.push((span.start, p.clone()));
                    }
                }
                collect_value(v, &p, out);
            }
        }
        toml_edit::Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                let p = format!("{path}[{i}]");
                if let Some(span) = v.span() {
                    out.push((span.start, p.clone()));
                }
                collect_value(v, &p, out);
            }
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

struct Validator<'a> {
    locator: &'a Locator<'a>,
    problems: Vec<Problem>,
    base_dir: &'a Path,
    env: &'a dyn Fn(&str) -> Option<String>,
}

impl Validator<'_> {
    fn problem(&mut self, key: &str, message: impl Into<String>) {
        let offset = self.locator.offset_of(key);
        let (line, column) = self.locator.line_col(offset);
        self.problems.push(Problem {
            line,
            column,
            key: key.to_string(),
            message: message.into(),
        });
    }

    fn suite(&mut self, path: &Path, file: SuiteFile) -> Suite {
        let name = file.suite.name.trim().to_string();
        if !is_identifier(&name) {
            self.problem(
                "suite.name",
                format!("`{name}` is used as a directory name: use letters, digits, `-`, `_` or `.`"),
            );
        }
        if file.run.is_empty() {
            self.problem("suite", "the suite has no [[run]]");
        }
        let defaults = file.defaults.unwrap_or_default();
        if defaults.id.is_some() {
            self.problem("defaults.id", "`id` cannot have a default: each run needs its own");
        }
        if defaults.published.is_some() {
            self.problem(
                "defaults.published",
                "`published` cannot have a default: it belongs to one run",
            );
        }
        let papers_dir = self.base_dir.join(file.suite.papers.as_deref().unwrap_or("papers"));
        let mut papers = PaperLibrary::new(papers_dir);

        let all_ids: Vec<String> = file.run.iter().filter_map(|t| t.id.clone()).collect();
        let mut runs = Vec::new();
        for (i, table) in file.run.into_iter().enumerate() {
            let key = format!("run[{i}]");
            if let Some(run) = self.run(i, &key, table.with_defaults(&defaults), &mut papers) {
                runs.push(run);
            }
        }
        self.cross_checks(&runs, &all_ids);
        Suite {
            path: path.to_path_buf(),
            name,
            description: file.suite.description,
            runs,
        }
    }

    fn require<T>(&mut self, key: &str, field: &str, value: Option<T>) -> Option<T> {
        if value.is_none() {
            self.problem(key, format!("missing `{field}` (set it in the run or in [defaults])"));
        }
        value
    }

    /// Reports each `(field, set?)` that is set, as not applying to a run of `kind`.
    fn forbid(&mut self, key: &str, kind: RunKind, fields: &[(&str, bool)]) {
        for (field, set) in fields {
            if *set {
                self.problem(
                    &format!("{key}.{field}"),
                    format!("`{field}` does not apply to a {} run", kind_name(kind)),
                );
            }
        }
    }

    fn path(&mut self, key: &str, raw: &str) -> PathSpec {
        let resolved = match expand_env(raw, self.env) {
            Ok(s) => {
                let p = PathBuf::from(s);
                Ok(if p.is_absolute() { p } else { self.base_dir.join(p) })
            }
            Err(ExpandError::Unset(var)) => Err(format!("environment variable {var} is not set")),
            Err(ExpandError::Syntax(why)) => {
                self.problem(key, format!("`{raw}`: {why}"));
                Err(why)
            }
        };
        PathSpec {
            raw: raw.to_string(),
            resolved,
        }
    }

    fn run(&mut self, index: usize, key: &str, t: RunTable, papers: &mut PaperLibrary) -> Option<Run> {
        let line = self.locator.line_col(self.locator.offset_of(key)).0;
        let id = self.require(key, "id", t.id.clone())?;
        if !is_identifier(&id) {
            self.problem(
                &format!("{key}.id"),
                format!("`{id}`: use letters, digits, `-`, `_` or `.`"),
            );
        }
        let kind = t.kind.unwrap_or_default();
        let n_before = self.problems.len();

        let metrics = match kind {
            RunKind::Profile => t
                .metrics
                .clone()
                .unwrap_or_else(|| vec![Metric::SecPerImage, Metric::GflopPerImage]),
            _ => self.require(key, "metrics", t.metrics.clone()).unwrap_or_default(),
        };
        if metrics.is_empty() {
            self.problem(&format!("{key}.metrics"), "the list is empty");
        }
        for (i, m) in metrics.iter().enumerate() {
            let allowed = match kind {
                RunKind::Generate => true,
                RunKind::Profile => !m.is_image_metric(),
                RunKind::MetricCheck => m.is_image_metric(),
            };
            if !allowed {
                self.problem(
                    &format!("{key}.metrics[{i}]"),
                    format!("`{m}` cannot be measured by a {} run", kind_name(kind)),
                );
            }
            if metrics[..i].contains(m) {
                self.problem(&format!("{key}.metrics[{i}]"), format!("`{m}` is listed twice"));
            }
        }
        if let Some(m) = metrics.iter().find(|m| m.relative_base().is_some()) {
            if t.relative_to.is_none() {
                self.problem(
                    &format!("{key}.metrics"),
                    format!("`{m}` needs `relative_to` = the id of the run it is relative to"),
                );
            }
        } else if t.relative_to.is_some() {
            self.problem(
                &format!("{key}.relative_to"),
                "`relative_to` is only used by rel_time / rel_gflop, which this run does not measure",
            );
        }

        let task = match kind {
            RunKind::Generate => self.generate_task(key, &t, &metrics),
            RunKind::Profile => self.profile_task(key, &t),
            RunKind::MetricCheck => self.metric_check_task(key, &t),
        };
        // A task that could not be built has reported why; the published section is checked
        // anyway so that one pass shows every problem of the run.
        let published = t
            .published
            .as_ref()
            .and_then(|p| self.published(key, p, &metrics, papers));
        if self.problems.len() > n_before {
            return None;
        }
        Some(Run {
            id,
            index,
            line,
            task: task?,
            metrics,
            relative_to: t.relative_to.clone(),
            unsupported: t.unsupported.clone(),
            published,
        })
    }

    fn generate_task(&mut self, key: &str, t: &RunTable, metrics: &[Metric]) -> Option<Task> {
        let kind = RunKind::Generate;
        let model = self.model_spec(key, t, kind);
        self.forbid(
            key,
            kind,
            &[
                ("profile", t.profile.is_some()),
                ("images", t.images.is_some()),
                ("split_at", t.split_at.is_some()),
            ],
        );
        if t.random_weights == Some(true) {
            self.problem(
                &format!("{key}.random_weights"),
                "a generate run scores images, so it needs real weights; use kind = \"profile\" for timing with random weights",
            );
        }
        let samples = self.require(key, "samples", t.samples);
        let batch = self.require(key, "batch", t.batch);
        let seeds = self.require(key, "seeds", t.seeds.clone());
        self.positive(&format!("{key}.samples"), samples);
        self.positive(&format!("{key}.batch"), batch.map(u64::from));
        if seeds.as_ref().is_some_and(Vec::is_empty) {
            self.problem(&format!("{key}.seeds"), "needs at least one seed");
        }
        let reference = match &t.reference {
            Some(raw) => Some(self.path(&format!("{key}.reference"), raw)),
            None => {
                if let Some(m) = metrics.iter().find(|m| m.needs_reference()) {
                    self.problem(
                        key,
                        format!("missing `reference` (the reference batch `{m}` compares against)"),
                    );
                }
                None
            }
        };
        if let Some(r) = t.eval_resolution {
            self.resolution(&format!("{key}.eval_resolution"), r);
        }
        Some(Task::Generate {
            model: model?,
            samples: samples?,
            batch: batch?,
            seeds: seeds?,
            reference,
            evaluator: t.evaluator.unwrap_or_default(),
            pr_distances: t.pr_distances.unwrap_or(DistancePrecision::Fp16Adm),
            eval_resolution: t.eval_resolution,
        })
    }

    fn profile_task(&mut self, key: &str, t: &RunTable) -> Option<Task> {
        let kind = RunKind::Profile;
        let model = self.model_spec(key, t, kind);
        self.forbid(
            key,
            kind,
            &[
                ("reference", t.reference.is_some()),
                ("images", t.images.is_some()),
                ("split_at", t.split_at.is_some()),
                ("samples", t.samples.is_some()),
                ("eval_resolution", t.eval_resolution.is_some()),
                ("pr_distances", t.pr_distances.is_some()),
            ],
        );
        let p = t.profile.clone().unwrap_or_default();
        let pk = format!("{key}.profile");
        let batches = p.batches.clone().or(t.batch.map(|b| vec![b]));
        let batches = self
            .require(key, "batch` or `profile.batches", batches)
            .unwrap_or_default();
        if batches.is_empty() || batches.contains(&0) {
            self.problem(
                &format!("{pk}.batches"),
                "batch sizes must be positive and at least one is needed",
            );
        }
        if p.repeats == Some(0) {
            self.problem(&format!("{pk}.repeats"), "must be at least 1");
        }
        let resolutions = p
            .resolutions
            .clone()
            .or(model.as_ref().map(|m| vec![m.resolution]))
            .unwrap_or_default();
        for (i, r) in resolutions.iter().enumerate() {
            self.resolution(&format!("{pk}.resolutions[{i}]"), *r);
        }
        Some(Task::Profile {
            model: model?,
            seeds: t.seeds.clone().unwrap_or_else(|| vec![0]),
            profile: ProfileSettings {
                warmup: p.warmup.unwrap_or(1),
                repeats: p.repeats.unwrap_or(3),
                batches,
                resolutions,
                record_steps: p.record_steps.unwrap_or(true),
            },
        })
    }

    fn metric_check_task(&mut self, key: &str, t: &RunTable) -> Option<Task> {
        self.forbid(
            key,
            RunKind::MetricCheck,
            &[
                ("family", t.family.is_some()),
                ("model", t.model.is_some()),
                ("checkpoint", t.checkpoint.is_some()),
                ("tokenizer", t.tokenizer.is_some()),
                ("random_weights", t.random_weights.is_some()),
                ("arch", t.arch.is_some()),
                ("resolution", t.resolution.is_some()),
                ("eval_resolution", t.eval_resolution.is_some()),
                ("dtype", t.dtype.is_some()),
                ("samples", t.samples.is_some()),
                ("batch", t.batch.is_some()),
                ("seeds", t.seeds.is_some()),
                ("reference", t.reference.is_some()),
                ("sampler", t.sampler.is_some()),
                ("profile", t.profile.is_some()),
            ],
        );
        let images = self.require(key, "images", t.images.clone()).unwrap_or_default();
        if t.images.is_some() && images.is_empty() {
            self.problem(&format!("{key}.images"), "needs at least one image file");
        }
        let images: Vec<PathSpec> = images
            .iter()
            .enumerate()
            .map(|(i, raw)| self.path(&format!("{key}.images[{i}]"), raw))
            .collect();
        let split_at = self.require(key, "split_at", t.split_at);
        if split_at == Some(0) {
            self.problem(
                &format!("{key}.split_at"),
                "must be at least 1 (the size of the reference set)",
            );
        }
        Some(Task::MetricCheck {
            images,
            split_at: split_at?,
            evaluator: t.evaluator.unwrap_or_default(),
            pr_distances: t.pr_distances.unwrap_or(DistancePrecision::Fp16Adm),
        })
    }

    fn model_spec(&mut self, key: &str, t: &RunTable, kind: RunKind) -> Option<ModelSpec> {
        let family = self.require(key, "family", t.family);
        let model = self.require(key, "model", t.model.clone());
        if model.as_ref().is_some_and(|m| m.trim().is_empty()) {
            self.problem(&format!("{key}.model"), "is empty");
        }
        let resolution = self.require(key, "resolution", t.resolution);
        if let Some(r) = resolution {
            self.resolution(&format!("{key}.resolution"), r);
        }
        let weights = match (&t.checkpoint, t.random_weights.unwrap_or(false)) {
            (Some(_), true) => {
                self.problem(
                    &format!("{key}.random_weights"),
                    "give either `checkpoint` or `random_weights = true`, not both",
                );
                None
            }
            (Some(raw), false) => {
                let checkpoint = self.path(&format!("{key}.checkpoint"), raw);
                let tokenizer = t
                    .tokenizer
                    .as_ref()
                    .map(|raw| self.path(&format!("{key}.tokenizer"), raw));
                Some(Weights::Checkpoint { checkpoint, tokenizer })
            }
            (None, true) => {
                if t.tokenizer.is_some() {
                    self.problem(
                        &format!("{key}.tokenizer"),
                        "random weights include the tokenizer; remove `tokenizer`",
                    );
                }
                Some(Weights::Random)
            }
            (None, false) => {
                let hint = if kind == RunKind::Profile {
                    " or `random_weights = true`"
                } else {
                    ""
                };
                self.problem(
                    key,
                    format!("missing `checkpoint`{hint} (set it in the run or in [defaults])"),
                );
                None
            }
        };
        let mut sampler = t.sampler.clone().unwrap_or_default();
        let sk = format!("{key}.sampler");
        // (field, value, valid?, what a valid value is)
        type RangeCheck<'a> = (&'a str, Option<f64>, fn(f64) -> bool, &'a str);
        let range_checks: [RangeCheck; 3] = [
            ("cfg", sampler.cfg, |v| v >= 0.0, "must be >= 0"),
            (
                "top_p",
                sampler.top_p,
                |v| (0.0..=1.0).contains(&v),
                "must lie in [0, 1]",
            ),
            ("temperature", sampler.temperature, |v| v > 0.0, "must be > 0"),
        ];
        for (field, value, ok, why) in range_checks {
            if let Some(v) = value {
                if !v.is_finite() || !ok(v) {
                    self.problem(&format!("{sk}.{field}"), format!("{v} {why}"));
                }
            }
        }
        for (field, value) in [
            ("num_iter", sampler.num_iter),
            ("num_sampling_steps", sampler.num_sampling_steps),
        ] {
            if value == Some(0) {
                self.problem(&format!("{sk}.{field}"), "must be at least 1");
            }
        }
        if let Some(schedule) = &sampler.cfg_schedule {
            if schedule != "linear" && schedule != "constant" {
                self.problem(
                    &format!("{sk}.cfg_schedule"),
                    format!("`{schedule}`: expected \"linear\" or \"constant\""),
                );
            }
        }
        // A strategy is a built-in name or a file; files are inputs like checkpoints.
        let mut strategy_file = None;
        if let Some(raw) = sampler.strategy.clone() {
            if !genbench_models::generators::autonat_strategy::BUILTIN_NAMES.contains(&raw.as_str()) {
                let spec = self.path(&format!("{sk}.strategy"), &raw);
                if let Ok(p) = &spec.resolved {
                    sampler.strategy = Some(p.display().to_string());
                }
                strategy_file = Some(spec);
            }
        }
        let arch = t.arch.clone().unwrap_or_default();
        for (field, value) in [("depth", arch.depth), ("width", arch.width), ("heads", arch.heads)] {
            if value == Some(0) {
                self.problem(&format!("{key}.arch.{field}"), "must be at least 1");
            }
        }
        if let (Some(w), Some(h)) = (arch.width, arch.heads) {
            if h > 0 && !w.is_multiple_of(h) {
                self.problem(
                    &format!("{key}.arch.heads"),
                    format!("width {w} is not divisible by {h} heads"),
                );
            }
        }

        Some(ModelSpec {
            family: family?,
            model: model?,
            weights: weights?,
            arch,
            resolution: resolution?,
            dtype: t.dtype.unwrap_or_default(),
            sampler,
            strategy_file,
        })
    }

    fn positive(&mut self, key: &str, value: Option<u64>) {
        if value == Some(0) {
            self.problem(key, "must be at least 1");
        }
    }

    fn resolution(&mut self, key: &str, r: u32) {
        // Every tokenizer here downsamples by 16.
        if r == 0 || !r.is_multiple_of(16) {
            self.problem(key, format!("{r} is not a positive multiple of 16"));
        }
    }

    fn published(
        &mut self,
        key: &str,
        p: &PublishedTable,
        metrics: &[Metric],
        papers: &mut PaperLibrary,
    ) -> Option<Published> {
        let pk = format!("{key}.published");
        if p.tolerance.is_empty() {
            self.problem(
                &format!("{pk}.tolerance"),
                "no metric to compare; add e.g. `fid = { abs = 0.2 }`",
            );
        }
        let mut tolerances = Vec::new();
        for (metric, tt) in &p.tolerance {
            let tk = format!("{pk}.tolerance.{metric}");
            if !metrics.contains(metric) {
                self.problem(
                    &tk,
                    format!("`{metric}` has a tolerance but is not in this run's metrics"),
                );
                continue;
            }
            let given: Vec<(&str, f64)> = [("abs", tt.abs), ("rel", tt.rel), ("factor", tt.factor)]
                .into_iter()
                .filter_map(|(n, v)| v.map(|v| (n, v)))
                .collect();
            let tolerance = match given.as_slice() {
                [("abs", v)] if *v >= 0.0 && v.is_finite() => Some(Tolerance::Abs(*v)),
                [("rel", v)] if *v > 0.0 && v.is_finite() => Some(Tolerance::Rel(*v)),
                [("factor", v)] if *v >= 1.0 && v.is_finite() => Some(Tolerance::Factor(*v)),
                [(name, v)] => {
                    let need = match *name {
                        "abs" => ">= 0",
                        "rel" => "> 0 (a fraction: 0.05 is 5%)",
                        _ => ">= 1",
                    };
                    self.problem(
                        &format!("{tk}.{name}"),
                        format!("{v} is out of range: {name} must be {need}"),
                    );
                    None
                }
                _ => {
                    self.problem(&tk, "give exactly one of `abs`, `rel` or `factor`");
                    None
                }
            };
            if let Some(t) = tolerance {
                tolerances.push((*metric, t, tt, tk));
            }
        }

        match (&p.table, &p.row, &p.json) {
            (Some(table), Some(row), None) => {
                let row_key: BTreeMap<String, String> = row
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()),
                        )
                    })
                    .collect();
                let table = match papers.table(table) {
                    Ok(t) => t,
                    Err(e) => {
                        self.problem(&format!("{pk}.table"), e);
                        return None;
                    }
                };
                let index = match table.select(&row_key) {
                    Ok(i) => i,
                    Err(e) => {
                        self.problem(&format!("{pk}.row"), e);
                        return None;
                    }
                };
                let described = row_key
                    .iter()
                    .map(|(k, v)| format!("{k} = \"{v}\""))
                    .collect::<Vec<_>>()
                    .join(", ");
                let source = format!("{}.csv line {} ({described})", table.name, table.rows[index].line);
                let citation = table.source(index).map(str::to_string);
                let mut targets = Vec::new();
                let mut problems = Vec::new();
                for (metric, tolerance, tt, tk) in &tolerances {
                    if tt.pointer.is_some() {
                        problems.push((
                            format!("{tk}.pointer"),
                            "`pointer` is for `json` sources; use `column` with a paper table".to_string(),
                        ));
                        continue;
                    }
                    let column = tt.column.clone().unwrap_or_else(|| metric.name().to_string());
                    match table.number(index, &column) {
                        Ok(value) => targets.push(Target {
                            metric: *metric,
                            published: value,
                            tolerance: *tolerance,
                            origin: format!("{}.csv line {}, column {column}", table.name, table.rows[index].line),
                        }),
                        Err(e) => problems.push((tk.clone(), e)),
                    }
                }
                for (k, m) in problems {
                    self.problem(&k, m);
                }
                Some(Published {
                    source,
                    citation,
                    targets,
                })
            }
            (None, None, Some(json)) => {
                let spec = self.path(&format!("{pk}.json"), json);
                let path = match &spec.resolved {
                    Ok(p) => p.clone(),
                    Err(e) => {
                        self.problem(&format!("{pk}.json"), format!("`{json}`: {e}"));
                        return None;
                    }
                };
                let doc: serde_json::Value = match std::fs::read_to_string(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|s| serde_json::from_str(&s).map_err(|e| e.to_string()))
                {
                    Ok(v) => v,
                    Err(e) => {
                        self.problem(&format!("{pk}.json"), format!("cannot read {}: {e}", path.display()));
                        return None;
                    }
                };
                let mut targets = Vec::new();
                for (metric, tolerance, tt, tk) in &tolerances {
                    if tt.column.is_some() {
                        self.problem(
                            &format!("{tk}.column"),
                            "`column` is for paper tables; use `pointer` with a json source",
                        );
                        continue;
                    }
                    let Some(pointer) = &tt.pointer else {
                        self.problem(tk, "a json source needs `pointer`, e.g. \"/fid_real_split/fid_sqrtm\"");
                        continue;
                    };
                    match doc.pointer(pointer).and_then(serde_json::Value::as_f64) {
                        Some(value) => targets.push(Target {
                            metric: *metric,
                            published: value,
                            tolerance: *tolerance,
                            origin: format!("{} {pointer}", path.file_name().and_then(|n| n.to_str()).unwrap_or("")),
                        }),
                        None => self.problem(
                            &format!("{tk}.pointer"),
                            format!("{pointer} is not a number in {}", path.display()),
                        ),
                    }
                }
                Some(Published {
                    source: path.display().to_string(),
                    citation: None,
                    targets,
                })
            }
            (Some(_), None, None) => {
                self.problem(
                    &pk,
                    "missing `row` (the columns and values that pick the row, e.g. { model = \"VAR-d16\" })",
                );
                None
            }
            (None, Some(_), None) => {
                self.problem(
                    &pk,
                    "missing `table` (a file name in the papers directory, without .csv)",
                );
                None
            }
            _ => {
                self.problem(
                    &pk,
                    "give either `table` and `row` (a paper table) or `json` (known values)",
                );
                None
            }
        }
    }

    /// Checks that need all runs: unique ids, and `relative_to` pointing at a run that measures
    /// the base metric.
    fn cross_checks(&mut self, runs: &[Run], all_ids: &[String]) {
        for (i, run) in runs.iter().enumerate() {
            if runs[..i].iter().any(|r| r.id == run.id) {
                self.problem(
                    &format!("run[{}].id", run.index),
                    format!("id `{}` is used by an earlier run", run.id),
                );
            }
            let Some(target) = &run.relative_to else { continue };
            let key = format!("run[{}].relative_to", run.index);
            match runs.iter().find(|r| &r.id == target) {
                // A run that exists but failed validation has its own problems reported.
                None if all_ids.contains(target) => {}
                None => self.problem(
                    &key,
                    format!("no run has id `{target}`; the runs are: {}", all_ids.join(", ")),
                ),
                Some(r) if r.id == run.id => self.problem(&key, "a run cannot be relative to itself"),
                Some(r) => {
                    for m in run.metrics.iter().filter_map(|m| m.relative_base()) {
                        if !r.metrics.contains(&m) {
                            self.problem(
                                &key,
                                format!("run `{target}` does not measure `{m}`, which this run divides by"),
                            );
                        }
                    }
                }
            }
        }
    }
}

fn kind_name(kind: RunKind) -> &'static str {
    match kind {
        RunKind::Generate => "generate",
        RunKind::Profile => "profile",
        RunKind::MetricCheck => "metric_check",
    }
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[derive(Debug, Clone, PartialEq)]
pub enum ExpandError {
    Syntax(String),
    Unset(String),
}

/// Expands `${VAR}` and `${VAR:-default}`; a `$` not followed by `{` is kept as is.
pub fn expand_env(raw: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, ExpandError> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| ExpandError::Syntax("unterminated `${`".into()))?;
        let inner = &after[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(ExpandError::Syntax(format!("`${{{inner}}}` is not a variable name")));
        }
        match (env(name).filter(|v| !v.is_empty()), default) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => return Err(ExpandError::Unset(name.to_string())),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_expansion() {
        let env = |n: &str| (n == "W").then(|| "/weights".to_string());
        assert_eq!(expand_env("${W}/var/d16.pth", &env).unwrap(), "/weights/var/d16.pth");
        assert_eq!(expand_env("${MISSING:-w}/x", &env).unwrap(), "w/x");
        assert_eq!(expand_env("$HOME/x", &env).unwrap(), "$HOME/x");
        assert_eq!(
            expand_env("${MISSING}/x", &env),
            Err(ExpandError::Unset("MISSING".into()))
        );
        assert!(matches!(expand_env("${W/x", &env), Err(ExpandError::Syntax(_))));
        assert!(matches!(expand_env("${}/x", &env), Err(ExpandError::Syntax(_))));
    }

    #[test]
    fn tolerance_kinds() {
        assert!(Tolerance::Abs(0.2).passes(3.7, 3.55));
        assert!(!Tolerance::Abs(0.1).passes(3.7, 3.55));
        assert!(Tolerance::Rel(0.05).passes(290.0, 280.4));
        assert!(!Tolerance::Rel(0.01).passes(290.0, 280.4));
        assert!(Tolerance::Factor(2.0).passes(0.02, 0.013));
        assert!(!Tolerance::Factor(2.0).passes(0.03, 0.013));
        assert_eq!(Tolerance::Rel(0.05).describe(), "±5%");
        assert_eq!(Tolerance::Factor(3.0).describe(), "×÷3");
    }

    #[test]
    fn parent_paths() {
        assert_eq!(parent_path("run[2].published.row").as_deref(), Some("run[2].published"));
        assert_eq!(parent_path("run[2]").as_deref(), Some("run"));
        assert_eq!(parent_path("run").as_deref(), Some(""));
        assert_eq!(parent_path(""), None);
    }
}
