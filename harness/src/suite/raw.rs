//! The suite file as written: everything optional, so `[defaults]` can fill gaps and the
//! resolution can say precisely what is missing.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::vocabulary::*;

// ---------------------------------------------------------------------------------------------
// The file as written (everything optional, so defaults can fill gaps and we can say precisely
// what is missing).
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SuiteFile {
    pub(super) suite: SuiteHeader,
    #[serde(default)]
    pub(super) defaults: Option<RunTable>,
    #[serde(default)]
    pub(super) run: Vec<RunTable>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SuiteHeader {
    pub(super) name: String,
    #[serde(default)]
    pub(super) description: String,
    /// Directory of paper tables, relative to the suite file; default `papers`.
    pub(super) papers: Option<String>,
    /// Where the suite runs unless `--device` says otherwise: cpu, cuda:N or auto.
    pub(super) device: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RunTable {
    pub(super) id: Option<String>,
    pub(super) kind: Option<RunKind>,
    pub(super) family: Option<Family>,
    pub(super) model: Option<String>,
    pub(super) checkpoint: Option<String>,
    pub(super) tokenizer: Option<String>,
    pub(super) random_weights: Option<bool>,
    pub(super) arch: Option<ArchOverrides>,
    pub(super) resolution: Option<u32>,
    pub(super) eval_resolution: Option<u32>,
    pub(super) dtype: Option<Dtype>,
    pub(super) samples: Option<u64>,
    pub(super) batch: Option<u32>,
    pub(super) seeds: Option<Vec<u64>>,
    pub(super) metrics: Option<Vec<Metric>>,
    pub(super) reference: Option<String>,
    /// `adm` | `torch-fidelity` | `clean-fid`; `evaluator` is the older name of this key.
    #[serde(alias = "evaluator")]
    pub(super) convention: Option<Convention>,
    /// Arithmetic of precision/recall's distances (default ADM's fp16).
    pub(super) pr_distances: Option<DistancePrecision>,
    pub(super) relative_to: Option<String>,
    /// Why genbench cannot run this row (a configuration the paper does not describe well
    /// enough to build): the run is reported as skipped with this reason.
    pub(super) unsupported: Option<String>,
    pub(super) images: Option<Vec<String>>,
    pub(super) split_at: Option<usize>,
    pub(super) sampler: Option<RawSettings>,
    pub(super) profile: Option<ProfileTable>,
    pub(super) published: Option<PublishedTable>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ProfileTable {
    pub(super) warmup: Option<u32>,
    pub(super) repeats: Option<u32>,
    pub(super) batches: Option<Vec<u32>>,
    pub(super) resolutions: Option<Vec<u32>>,
    pub(super) record_steps: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PublishedTable {
    /// Paper table name (`suites/papers/<table>.csv`).
    pub(super) table: Option<String>,
    /// Column = value pairs that pick exactly one row.
    pub(super) row: Option<BTreeMap<String, toml::Value>>,
    /// Or: a JSON file of known values (metric self-checks), read with a JSON pointer per metric.
    pub(super) json: Option<String>,
    pub(super) tolerance: BTreeMap<Metric, ToleranceTable>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ToleranceTable {
    pub(super) abs: Option<f64>,
    pub(super) rel: Option<f64>,
    pub(super) factor: Option<f64>,
    /// Paper column holding the value, when it is not named like the metric.
    pub(super) column: Option<String>,
    /// JSON pointer, for `json` sources.
    pub(super) pointer: Option<String>,
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
                d.convention = None;
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

    pub(super) fn with_defaults(mut self, all_defaults: &RunTable) -> RunTable {
        let d = &all_defaults.defaults_for(self.kind.or(all_defaults.kind).unwrap_or_default());
        merge_fields!(self, d; kind, family, model, checkpoint, tokenizer, random_weights, resolution,
            eval_resolution, dtype, samples, batch, seeds, metrics, reference, convention, pr_distances,
            relative_to, images, split_at);
        self.sampler = match (self.sampler.take(), &d.sampler) {
            (Some(mut s), Some(ds)) => {
                for (k, v) in ds {
                    s.entry(k.clone()).or_insert_with(|| v.clone());
                }
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
