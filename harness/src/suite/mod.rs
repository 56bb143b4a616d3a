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
//!
//! The module is split by concept: [`vocabulary`] (run kinds, metrics, dtypes, conventions),
//! `raw` (the file as written, with `[defaults]` merging), `resolve` (validation into the
//! resolved types below) and `located` (errors as `file:line:column: key: message`). What
//! identifies a run's cached samples is the runner's ([`crate::runner::sample_cache_key`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

mod located;
mod raw;
mod resolve;
pub mod vocabulary;

pub use located::{Problem, SuiteError};
pub use resolve::{expand_env, ExpandError};
pub use vocabulary::*;

use located::Locator;
use raw::SuiteFile;
use resolve::Validator;

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
    /// Sampler settings as written, checked by the family; a setting naming a file (AutoNAT's
    /// `strategy`) holds the resolved path.
    pub sampler: RawSettings,
    /// Settings that name files, as written and resolved: inputs like the checkpoint.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub setting_files: BTreeMap<String, PathSpec>,
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
        /// Whose preprocessing, IS splits and KID subsets the metrics follow.
        convention: Convention,
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
        convention: Convention,
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
    /// The suite file's `device` (`--device` overrides it; neither: auto).
    pub device: Option<genbench_runtime::DeviceChoice>,
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
            for (setting, file) in &model.setting_files {
                check(file, &format!("sampler {setting}"));
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
    /// The metric convention of a run that scores images (`None` for profile runs).
    pub fn convention(&self) -> Option<Convention> {
        match &self.task {
            Task::Generate { convention, .. } | Task::MetricCheck { convention, .. } => Some(*convention),
            Task::Profile { .. } => None,
        }
    }

    pub fn settings_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.task).unwrap_or(serde_json::Value::Null)
    }
}

impl Suite {
    /// Every run that scores images follows `convention` (`genbench suite --convention`),
    /// whatever its file says; the results record the convention each run followed.
    pub fn with_convention(mut self, convention: Convention) -> Suite {
        for run in &mut self.runs {
            if let Task::Generate { convention: c, .. } | Task::MetricCheck { convention: c, .. } = &mut run.task {
                *c = convention;
            }
        }
        self
    }

    pub fn load(path: &Path) -> Result<Suite, SuiteError> {
        let text = std::fs::read_to_string(path).map_err(|e| SuiteError {
            file: path.to_path_buf(),
            problems: vec![Problem { line: 0, column: 0, key: String::new(), message: format!("cannot read: {e}") }],
        })?;
        Suite::parse(path, &text, &|name| std::env::var(name).ok())
    }

    /// Parses and validates `text` as if read from `path`; `env` looks up `${VAR}`s.
    pub fn parse(path: &Path, text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Suite, SuiteError> {
        let locator = Locator::new(text);
        let fail = |problems: Vec<Problem>| SuiteError { file: path.to_path_buf(), problems };
        let file: SuiteFile = toml::from_str(text).map_err(|e| {
            let offset = e.span().map(|s| s.start).unwrap_or(0);
            let (line, column) = locator.line_col(offset);
            fail(vec![Problem { line, column, key: locator.path_at(offset), message: e.message().to_string() }])
        })?;
        let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut v = Validator { locator: &locator, problems: Vec::new(), base_dir: &base_dir, env };
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
        let unknown: Vec<&String> = only.iter().filter(|id| !self.runs.iter().any(|r| &r.id == *id)).collect();
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

#[cfg(test)]
mod tests {
    use super::located::parent_path;
    use super::*;

    fn profile_suite(family: &str, model: &str, sampler: &str) -> String {
        format!(
            "[suite]\nname = \"t\"\n[[run]]\nid = \"a\"\nkind = \"profile\"\nfamily = \"{family}\"\nmodel = \"{model}\"\n\
             random_weights = true\nresolution = 256\nbatch = 1\nsampler = {{ {sampler} }}\n"
        )
    }

    fn load_error(text: &str) -> String {
        Suite::parse(Path::new("s.toml"), text, &|_| None).err().map(|e| e.to_string()).unwrap_or_default()
    }

    #[test]
    fn the_family_validates_its_settings_at_load() {
        // LlamaGen's own rule (top_p in (0, 1]) is the suite's rule, at the setting's line:col.
        let e = load_error(&profile_suite("raster_ar", "llamagen-b", "top_p = 0.0"));
        assert_eq!(e, "s.toml:11:13: run[0].sampler.top_p: 0 must be in (0, 1]");
        // Taming is raster AR too, with its own rule (temperature > 0, it divides by it).
        let e = load_error(&profile_suite("raster_ar", "taming-cin", "temperature = 0.0"));
        assert!(e.starts_with("s.toml:11:13: run[0].sampler.temperature: 0 must be > 0"), "{e}");
        assert_eq!(load_error(&profile_suite("raster_ar", "llamagen-b", "temperature = 0.0")), "");
        // A setting a family has no use for is refused by name, listing the ones it has.
        let e = load_error(&profile_suite("auto_nat", "autonat-l", "top_k = 5"));
        assert!(e.starts_with("s.toml:11:13: run[0].sampler.top_k: unknown field `top_k`, expected `num_iter` or `strategy`"), "{e}");
        let e = load_error(&profile_suite("mar", "mar-b", "cfg_schedule = \"cosine\""));
        assert!(e.contains("run[0].sampler.cfg_schedule: unknown variant `cosine`"), "{e}");
        // A model its family does not know.
        let e = load_error(&profile_suite("var", "var-d99", "cfg = 1.5"));
        assert!(e.contains("run[0].model: unknown Var model `var-d99`"), "{e}");
        // AutoNAT's strategy file is an input: resolved against the suite folder, not a load error.
        let suite =
            Suite::parse(Path::new("/s/s.toml"), &profile_suite("auto_nat", "autonat-l", "strategy = \"t8.yaml\""), &|_| None).unwrap();
        let model = suite.runs[0].model_spec().unwrap();
        assert_eq!(model.sampler["strategy"], "/s/t8.yaml");
        assert!(suite.runs[0].missing_inputs().iter().any(|m| m.contains("sampler strategy") && m.contains("/s/t8.yaml")));
    }

    #[test]
    fn env_expansion() {
        let env = |n: &str| (n == "W").then(|| "/weights".to_string());
        assert_eq!(expand_env("${W}/var/d16.pth", &env).unwrap(), "/weights/var/d16.pth");
        assert_eq!(expand_env("${MISSING:-w}/x", &env).unwrap(), "w/x");
        assert_eq!(expand_env("$HOME/x", &env).unwrap(), "$HOME/x");
        assert_eq!(expand_env("${MISSING}/x", &env), Err(ExpandError::Unset("MISSING".into())));
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
