//! Reading reference `config.json` files. Each family's configuration derives `Deserialize`
//! with the reference constructors' argument names (serde `rename` / `default` where a file
//! writes them otherwise); [`from_value_at`] and [`section`] report a bad file by the key at
//! fault. Keys a configuration does not use (training options, notes, recorded checks) are
//! ignored, so a reference's full keyword-argument dump loads as it is.

use anyhow::{anyhow, Result};
use serde::de::DeserializeOwned;

/// Deserializes `value`, which sits at the dotted path `at` of its file (`gpt.ModelArgs`; empty
/// for the whole file), into `T`. An error names the key by its full path:
/// ``config `vq.encoder`: missing field `ch` `` or
/// ``config `VAR.depth`: invalid type: string "2", expected usize``.
pub fn from_value_at<T: DeserializeOwned>(value: &serde_json::Value, at: &str) -> Result<T> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let inner = e.path().to_string();
        let path = match (at, inner.as_str()) {
            (_, ".") => at.to_string(),
            ("", p) => p.to_string(),
            (a, p) if p.starts_with('[') => format!("{a}{p}"),
            (a, p) => format!("{a}.{p}"),
        };
        if path.is_empty() {
            anyhow!("config: {}", e.inner())
        } else {
            anyhow!("config `{path}`: {}", e.inner())
        }
    })
}

/// [`from_value_at`] for the entry at the JSON pointer `pointer` (`/gpt/ModelArgs`) of `config`.
pub fn section<T: DeserializeOwned>(config: &serde_json::Value, pointer: &str) -> Result<T> {
    let at = pointer.trim_start_matches('/').replace('/', ".");
    let value = config.pointer(pointer).ok_or_else(|| anyhow!("config has no `{at}`"))?;
    from_value_at(value, &at)
}

/// serde default for flags the reference constructors default to `True`.
pub(crate) fn yes() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        ch: usize,
        ch_mult: Vec<usize>,
    }

    #[test]
    fn errors_name_the_key_by_its_path() {
        let config = serde_json::json!({"vq": {"encoder": {"ch": 32, "ch_mult": [1, "2"]}, "decoder": {"ch_mult": [1]}}});
        let msg = |r: Result<Inner>| format!("{:#}", r.unwrap_err());
        assert_eq!(msg(section(&config, "/vq/encoder")), "config `vq.encoder.ch_mult[1]`: invalid type: string \"2\", expected usize");
        assert_eq!(msg(section(&config, "/vq/decoder")), "config `vq.decoder`: missing field `ch`");
        assert_eq!(msg(section(&config, "/vq/coder")), "config has no `vq.coder`");
        assert_eq!(msg(from_value_at(&config["vq"]["decoder"], "")), "config: missing field `ch`");
        let good = serde_json::json!({"ch": 32, "ch_mult": [1, 2], "unused": "ignored"});
        let inner: Inner = from_value_at(&good, "").unwrap();
        assert_eq!((inner.ch, inner.ch_mult), (32, vec![1, 2]));
    }

    /// Every family's fixture config.json resolves as it is; a wrong-typed or missing key is
    /// reported with the file and the key's path.
    #[test]
    fn a_bad_fixture_config_names_the_file_and_the_key() {
        use crate::family::{ModelFamily, ModelRequest};
        use crate::generators::{autonat::AutoNatFamily, llamagen::LlamaGenFamily, mar::MarFamily, taming::TamingFamily, var::VarFamily};
        use serde_json::{json, Value};
        let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models");
        /// (family, fixture, key, replacement (None: removed), end of the message)
        type Case = (&'static dyn ModelFamily, &'static str, &'static str, Option<Value>, &'static str);
        let cases: [Case; 7] = [
            (&VarFamily, "var", "/VAR/depth", Some(json!("2")), "config `VAR.depth`: invalid type: string \"2\", expected usize"),
            (&VarFamily, "var", "/VQVAE/ch", None, "config `VQVAE`: missing field `ch`"),
            (
                &LlamaGenFamily,
                "ar_llamagen",
                "/vq/encoder/ch_mult",
                Some(json!([2, 1.5])),
                "config `vq.encoder.ch_mult[1]`: invalid type: floating point `1.5`, expected usize",
            ),
            (
                &TamingFamily,
                "ar_taming",
                "/model/params/transformer_config/params/n_layer",
                Some(Value::Null),
                "config `model.params.transformer_config.params.n_layer`: invalid type: null, expected usize",
            ),
            (
                &MarFamily,
                "mar",
                "/generator/kwargs/num_sampling_steps",
                Some(json!("ten")),
                "config `generator.kwargs.num_sampling_steps`: \"ten\" is not a whole number",
            ),
            (&MarFamily, "mar", "/tokenizer/kwargs/embed_dim", None, "config `tokenizer.kwargs`: missing field `embed_dim`"),
            (
                &AutoNatFamily,
                "autonat",
                "/generator/kwargs/depth",
                Some(json!(-1)),
                "config `generator.kwargs.depth`: invalid value: integer `-1`, expected usize",
            ),
        ];
        for (family, dir, pointer, replacement, want) in cases {
            let path = fixtures.join(dir).join("config.json");
            let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            // The MAR fixture has 16 tokens, fewer than the default 64 steps; an AutoNAT config
            // names no strategy.
            let settings = match dir {
                "mar" => json!({"num_iter": 4}),
                "autonat" => json!({"strategy": "maskgit-cosine"}),
                _ => json!({}),
            };
            let settings = settings.as_object().unwrap().clone();
            let req = ModelRequest { config: Some(path.clone()), random_init: true, settings, ..Default::default() };
            family.resolve(&req, Some(&config)).unwrap_or_else(|e| panic!("{dir}: {e:#}"));
            let (parent, key) = pointer.rsplit_once('/').unwrap();
            let parent = config.pointer_mut(parent).and_then(Value::as_object_mut).unwrap();
            match replacement {
                Some(v) => parent.insert(key.to_string(), v),
                None => parent.remove(key),
            };
            let e = format!("{:#}", family.resolve(&req, Some(&config)).err().unwrap());
            assert!(e.starts_with(&format!("--config {}: ", path.display())) && e.ends_with(want), "{dir} {pointer}: {e}");
        }
    }
}
