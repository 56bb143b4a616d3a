//! Validation of the file as written into the resolved suite: every problem is collected with
//! its key, then located.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::located::{Locator, Problem};
use super::raw::*;
use super::*;
use crate::model_registry::{family_of, ModelFamily};
use crate::papers::PaperLibrary;

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

pub(super) struct Validator<'a> {
    pub(super) locator: &'a Locator<'a>,
    pub(super) problems: Vec<Problem>,
    pub(super) base_dir: &'a Path,
    pub(super) env: &'a dyn Fn(&str) -> Option<String>,
}

impl Validator<'_> {
    fn problem(&mut self, key: &str, message: impl Into<String>) {
        let offset = self.locator.offset_of(key);
        let (line, column) = self.locator.line_col(offset);
        self.problems.push(Problem { line, column, key: key.to_string(), message: message.into() });
    }

    pub(super) fn suite(&mut self, path: &Path, file: SuiteFile) -> Suite {
        let name = file.suite.name.trim().to_string();
        if !is_identifier(&name) {
            self.problem("suite.name", format!("`{name}` is used as a directory name: use letters, digits, `-`, `_` or `.`"));
        }
        if file.run.is_empty() {
            self.problem("suite", "the suite has no [[run]]");
        }
        let defaults = file.defaults.unwrap_or_default();
        if defaults.id.is_some() {
            self.problem("defaults.id", "`id` cannot have a default: each run needs its own");
        }
        if defaults.published.is_some() {
            self.problem("defaults.published", "`published` cannot have a default: it belongs to one run");
        }
        let device = file.suite.device.as_deref().and_then(|raw| match raw.parse::<genbench_runtime::DeviceChoice>() {
            Ok(d) => Some(d),
            Err(e) => {
                self.problem("suite.device", e.to_string());
                None
            }
        });
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
        Suite { path: path.to_path_buf(), name, description: file.suite.description, device, runs }
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
                self.problem(&format!("{key}.{field}"), format!("`{field}` does not apply to a {} run", kind_name(kind)));
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
        PathSpec { raw: raw.to_string(), resolved }
    }

    fn run(&mut self, index: usize, key: &str, t: RunTable, papers: &mut PaperLibrary) -> Option<Run> {
        let line = self.locator.line_col(self.locator.offset_of(key)).0;
        let id = self.require(key, "id", t.id.clone())?;
        if !is_identifier(&id) {
            self.problem(&format!("{key}.id"), format!("`{id}`: use letters, digits, `-`, `_` or `.`"));
        }
        let kind = t.kind.unwrap_or_default();
        let n_before = self.problems.len();

        let metrics = match kind {
            RunKind::Profile => t.metrics.clone().unwrap_or_else(|| vec![Metric::SecPerImage, Metric::GflopPerImage]),
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
                self.problem(&format!("{key}.metrics[{i}]"), format!("`{m}` cannot be measured by a {} run", kind_name(kind)));
            }
            if metrics[..i].contains(m) {
                self.problem(&format!("{key}.metrics[{i}]"), format!("`{m}` is listed twice"));
            }
        }
        if let Some(m) = metrics.iter().find(|m| m.relative_base().is_some()) {
            if t.relative_to.is_none() {
                self.problem(&format!("{key}.metrics"), format!("`{m}` needs `relative_to` = the id of the run it is relative to"));
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
        let published = t.published.as_ref().and_then(|p| self.published(key, p, &metrics, papers));
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
        self.forbid(key, kind, &[("profile", t.profile.is_some()), ("images", t.images.is_some()), ("split_at", t.split_at.is_some())]);
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
                    self.problem(key, format!("missing `reference` (the reference batch `{m}` compares against)"));
                }
                None
            }
        };
        if let (Some(r), Some(fi)) = (t.eval_resolution, self.family_impl(&model)) {
            self.resolution(&format!("{key}.eval_resolution"), r, fi);
        }
        Some(Task::Generate {
            model: model?,
            samples: samples?,
            batch: batch?,
            seeds: seeds?,
            reference,
            convention: t.convention.unwrap_or_default(),
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
        let batches = self.require(key, "batch` or `profile.batches", batches).unwrap_or_default();
        if batches.is_empty() || batches.contains(&0) {
            self.problem(&format!("{pk}.batches"), "batch sizes must be positive and at least one is needed");
        }
        if p.repeats == Some(0) {
            self.problem(&format!("{pk}.repeats"), "must be at least 1");
        }
        let resolutions = p.resolutions.clone().or(model.as_ref().map(|m| vec![m.resolution])).unwrap_or_default();
        if let Some(fi) = self.family_impl(&model) {
            for (i, r) in resolutions.iter().enumerate() {
                self.resolution(&format!("{pk}.resolutions[{i}]"), *r, fi);
            }
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
        let images: Vec<PathSpec> = images.iter().enumerate().map(|(i, raw)| self.path(&format!("{key}.images[{i}]"), raw)).collect();
        let split_at = self.require(key, "split_at", t.split_at);
        if split_at == Some(0) {
            self.problem(&format!("{key}.split_at"), "must be at least 1 (the size of the reference set)");
        }
        Some(Task::MetricCheck {
            images,
            split_at: split_at?,
            convention: t.convention.unwrap_or_default(),
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
        let weights = match (&t.checkpoint, t.random_weights.unwrap_or(false)) {
            (Some(_), true) => {
                self.problem(&format!("{key}.random_weights"), "give either `checkpoint` or `random_weights = true`, not both");
                None
            }
            (Some(raw), false) => {
                let checkpoint = self.path(&format!("{key}.checkpoint"), raw);
                let tokenizer = t.tokenizer.as_ref().map(|raw| self.path(&format!("{key}.tokenizer"), raw));
                Some(Weights::Checkpoint { checkpoint, tokenizer })
            }
            (None, true) => {
                if t.tokenizer.is_some() {
                    self.problem(&format!("{key}.tokenizer"), "random weights include the tokenizer; remove `tokenizer`");
                }
                Some(Weights::Random)
            }
            (None, false) => {
                let hint = if kind == RunKind::Profile { " or `random_weights = true`" } else { "" };
                self.problem(key, format!("missing `checkpoint`{hint} (set it in the run or in [defaults])"));
                None
            }
        };
        let mut sampler = t.sampler.clone().unwrap_or_default();
        let sk = format!("{key}.sampler");
        // The family's own settings check is the only one (no weights read); settings that name
        // files are resolved like checkpoints.
        let mut setting_files = BTreeMap::new();
        let family_impl = match (family, &model) {
            (Some(f), Some(m)) => match family_of(f, m, self.base_dir) {
                Ok(fi) => Some(fi),
                Err(e) => {
                    self.problem(&format!("{key}.model"), e.to_string());
                    None
                }
            },
            _ => None,
        };
        if let Some(fi) = family_impl {
            if let Some(r) = resolution {
                self.resolution(&format!("{key}.resolution"), r, fi);
            }
            if let Err(e) = fi.check_settings(&sampler) {
                match &e.setting {
                    Some(setting) => self.problem(&format!("{sk}.{setting}"), e.message),
                    None => self.problem(&sk, e.message),
                }
            }
            for setting in fi.file_settings(&sampler) {
                if let Some(raw) = sampler.get(setting).and_then(|v| v.as_str()).map(str::to_string) {
                    let spec = self.path(&format!("{sk}.{setting}"), &raw);
                    if let Ok(p) = &spec.resolved {
                        sampler.insert(setting.to_string(), p.display().to_string().into());
                    }
                    setting_files.insert(setting.to_string(), spec);
                }
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
                self.problem(&format!("{key}.arch.heads"), format!("width {w} is not divisible by {h} heads"));
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
            setting_files,
        })
    }

    fn positive(&mut self, key: &str, value: Option<u64>) {
        if value == Some(0) {
            self.problem(key, "must be at least 1");
        }
    }

    /// Image sides must be a positive multiple of the family's pixels per token.
    fn resolution(&mut self, key: &str, r: u32, family: &dyn ModelFamily) {
        let step = family.pixels_per_token() as u32;
        if r == 0 || !r.is_multiple_of(step) {
            self.problem(key, format!("{r} is not a positive multiple of {step}"));
        }
    }

    /// The family of a model spec, when it is known (an unknown one was reported already).
    fn family_impl(&self, model: &Option<ModelSpec>) -> Option<&'static dyn ModelFamily> {
        model.as_ref().and_then(|m| family_of(m.family, &m.model, self.base_dir).ok())
    }

    fn published(&mut self, key: &str, p: &PublishedTable, metrics: &[Metric], papers: &mut PaperLibrary) -> Option<Published> {
        let pk = format!("{key}.published");
        if p.tolerance.is_empty() {
            self.problem(&format!("{pk}.tolerance"), "no metric to compare; add e.g. `fid = { abs = 0.2 }`");
        }
        let mut tolerances = Vec::new();
        for (metric, tt) in &p.tolerance {
            let tk = format!("{pk}.tolerance.{metric}");
            if !metrics.contains(metric) {
                self.problem(&tk, format!("`{metric}` has a tolerance but is not in this run's metrics"));
                continue;
            }
            let given: Vec<(&str, f64)> =
                [("abs", tt.abs), ("rel", tt.rel), ("factor", tt.factor)].into_iter().filter_map(|(n, v)| v.map(|v| (n, v))).collect();
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
                    self.problem(&format!("{tk}.{name}"), format!("{v} is out of range: {name} must be {need}"));
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
                let row_key: BTreeMap<String, String> =
                    row.iter().map(|(k, v)| (k.clone(), v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()))).collect();
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
                let described = row_key.iter().map(|(k, v)| format!("{k} = \"{v}\"")).collect::<Vec<_>>().join(", ");
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
                Some(Published { source, citation, targets })
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
                        self.problem(&format!("{tk}.column"), "`column` is for paper tables; use `pointer` with a json source");
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
                        None => self.problem(&format!("{tk}.pointer"), format!("{pointer} is not a number in {}", path.display())),
                    }
                }
                Some(Published { source: path.display().to_string(), citation: None, targets })
            }
            (Some(_), None, None) => {
                self.problem(&pk, "missing `row` (the columns and values that pick the row, e.g. { model = \"VAR-d16\" })");
                None
            }
            (None, Some(_), None) => {
                self.problem(&pk, "missing `table` (a file name in the papers directory, without .csv)");
                None
            }
            _ => {
                self.problem(&pk, "give either `table` and `row` (a paper table) or `json` (known values)");
                None
            }
        }
    }

    /// Checks that need all runs: unique ids, and `relative_to` pointing at a run that measures
    /// the base metric.
    fn cross_checks(&mut self, runs: &[Run], all_ids: &[String]) {
        for (i, run) in runs.iter().enumerate() {
            if runs[..i].iter().any(|r| r.id == run.id) {
                self.problem(&format!("run[{}].id", run.index), format!("id `{}` is used by an earlier run", run.id));
            }
            let Some(target) = &run.relative_to else { continue };
            let key = format!("run[{}].relative_to", run.index);
            match runs.iter().find(|r| &r.id == target) {
                // A run that exists but failed validation has its own problems reported.
                None if all_ids.contains(target) => {}
                None => self.problem(&key, format!("no run has id `{target}`; the runs are: {}", all_ids.join(", "))),
                Some(r) if r.id == run.id => self.problem(&key, "a run cannot be relative to itself"),
                Some(r) => {
                    for m in run.metrics.iter().filter_map(|m| m.relative_base()) {
                        if !r.metrics.contains(&m) {
                            self.problem(&key, format!("run `{target}` does not measure `{m}`, which this run divides by"));
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

pub(super) fn is_identifier(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
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
        let end = after.find('}').ok_or_else(|| ExpandError::Syntax("unterminated `${`".into()))?;
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
