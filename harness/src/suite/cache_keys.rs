//! What identifies a run's samples and features in the runner's cache. (These belong to the
//! runner; they are kept apart here so the runner can take them over as they are.)

use std::collections::BTreeMap;

use super::{Run, Task, Weights};

impl Run {
    /// Key of the generated samples: everything that changes the images, and nothing else, so a
    /// re-run after an interruption or after adding a metric finds its samples. `weight_hashes`
    /// maps role (`checkpoint`, `tokenizer`) to content hash, so replaced weights under the same
    /// path do not hit a stale cache. Batch size is included because samplers draw noise per
    /// batch. `None` for runs that generate nothing (metric checks).
    pub fn sample_cache_key(&self, weight_hashes: &BTreeMap<String, String>) -> Option<String> {
        let Task::Generate { model, samples, batch, seeds, .. } = &self.task else {
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
        let Task::Generate { convention, eval_resolution, .. } = &self.task else {
            return None;
        };
        // Features depend on the convention only through its preprocessing (torch-fidelity's
        // is ADM's), and `adm` keeps the key it had under its former name `evaluator`.
        let identity = serde_json::json!({
            "samples": sample_key,
            "evaluator": convention.preprocess().to_string(),
            "eval_resolution": eval_resolution,
            "network": "inception-2015-12-05",
        });
        Some(short_hash(&identity.to_string()))
    }
}

/// First 16 hex digits of SHA-256: short enough for directory names, far from colliding.
pub(super) fn short_hash(text: &str) -> String {
    genbench_runtime::hash::sha256_bytes(text.as_bytes())[..16].to_string()
}
