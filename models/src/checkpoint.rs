//! Weights for model construction: strict loading from published checkpoints, and shape
//! recording without weights.
//!
//! * [`StrictWeights`]: a name -> tensor map behind a candle `VarBuilder`. A missing tensor or a
//!   tensor of another shape fails the build with an error naming the key and the expected
//!   shape; since models request their tensors in module order, the first failure is the first
//!   offending key. After the build, [`StrictWeights::unused`] lists checkpoint entries the model
//!   never asked for (the `strict=True` half of PyTorch's check).
//! * [`ShapeRecorder`]: a `VarBuilder` backend that hands out zero-cost broadcast zeros of the
//!   requested shape and records `(name, shape, dtype)`. A full-size model (2.3 B parameters)
//!   builds in milliseconds without allocating its weights, so the requested names and shapes
//!   can be compared with a published key list ([`parse_key_list`], [`compare_keys`]).
//! * [`select_entry`]: picks the state dict inside a training checkpoint (`model_ema`, `model`,
//!   `state_dict`, or the top level) and strips prefixes such as `transformer.`.
//!
//! Buffers (`lvl_1L`, `attn_bias_for_masking`, `*.zero_k_bias`, ...) are requested like
//! parameters so the strict check sees them; integer buffers are requested with their own dtype
//! through [`get_buffer`].

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use genbench_runtime::checkpoint::TorchCheckpoint;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// One requested or published tensor: name, shape and dtype.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyShape {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: DType,
}

fn dtype_name(dt: DType) -> &'static str {
    match dt {
        DType::F32 => "float32",
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
        DType::F64 => "float64",
        DType::I64 => "int64",
        DType::U32 => "uint32",
        DType::U8 => "uint8",
        _ => "other",
    }
}

struct StrictInner {
    tensors: BTreeMap<String, Tensor>,
    source: String,
    used: Mutex<BTreeSet<String>>,
}

/// Checkpoint tensors served to a `VarBuilder` with strict name/shape checks.
#[derive(Clone)]
pub struct StrictWeights {
    inner: Arc<StrictInner>,
}

impl StrictWeights {
    /// `source` names the file in error messages.
    pub fn new(tensors: BTreeMap<String, Tensor>, source: impl Into<String>) -> Self {
        Self { inner: Arc::new(StrictInner { tensors, source: source.into(), used: Mutex::new(BTreeSet::new()) }) }
    }

    /// Opens a torch checkpoint and selects its state dict (see [`select_entry`]); `entries` are
    /// tried in order (`""` = the top level), `strip` prefixes are removed from the names.
    pub fn open(path: &Path, entries: &[&str], strip: &[&str], device: &Device) -> Result<Self> {
        let ck = TorchCheckpoint::open(path)?;
        let entry = select_entry(&ck, entries)?;
        let mut tensors = ck.load(entry, None, device).with_context(|| format!("cannot read {}", path.display()))?;
        if !strip.is_empty() {
            tensors = strip_prefixes(tensors, strip);
        }
        let label = if entry.is_empty() { path.display().to_string() } else { format!("{}[{entry}]", path.display()) };
        Ok(Self::new(tensors, label))
    }

    /// A `VarBuilder` over these tensors. Float tensors are converted to `dtype`; integer
    /// buffers keep their dtype unless requested otherwise.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), dtype, device.clone())
    }

    pub fn source(&self) -> &str {
        &self.inner.source
    }

    pub fn tensors(&self) -> &BTreeMap<String, Tensor> {
        &self.inner.tensors
    }

    /// Checkpoint entries no `get` asked for, in name order.
    pub fn unused(&self) -> Vec<String> {
        let used = self.inner.used.lock().unwrap();
        self.inner.tensors.keys().filter(|k| !used.contains(*k)).cloned().collect()
    }

    /// Errors if the checkpoint holds entries the model did not use (ignoring names for which
    /// `ignore` is true), naming the first few.
    pub fn ensure_all_used(&self, ignore: impl Fn(&str) -> bool) -> Result<()> {
        let unused: Vec<String> = self.unused().into_iter().filter(|k| !ignore(k)).collect();
        if !unused.is_empty() {
            bail!(
                "{}: {} unexpected tensor(s) the model does not use, first: {} (is this the right checkpoint for this model/config?)",
                self.inner.source,
                unused.len(),
                unused.iter().take(5).map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", ")
            );
        }
        Ok(())
    }
}

impl SimpleBackend for StrictWeights {
    fn get(&self, s: Shape, name: &str, _: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let t = self.inner.tensors.get(name).ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "{}: missing tensor `{name}` (the model expects shape {:?}); the checkpoint holds {} tensors",
                self.inner.source,
                s.dims(),
                self.inner.tensors.len()
            ))
        })?;
        if t.shape() != &s {
            return Err(candle_core::Error::Msg(format!(
                "{}: tensor `{name}` has shape {:?}, the model expects {:?}",
                self.inner.source,
                t.dims(),
                s.dims()
            )));
        }
        self.inner.used.lock().unwrap().insert(name.to_string());
        let t = if t.dtype() != dtype && (t.dtype().is_float() == dtype.is_float()) { t.to_dtype(dtype)? } else { t.clone() };
        t.to_device(dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let t = self
            .inner
            .tensors
            .get(name)
            .ok_or_else(|| candle_core::Error::Msg(format!("{}: missing tensor `{name}`", self.inner.source)))?;
        self.inner.used.lock().unwrap().insert(name.to_string());
        let t = if t.dtype() != dtype && (t.dtype().is_float() == dtype.is_float()) { t.to_dtype(dtype)? } else { t.clone() };
        t.to_device(dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.inner.tensors.contains_key(name)
    }
}

/// Records every requested tensor and returns broadcast zeros (no allocation of the full shape).
#[derive(Clone, Default)]
pub struct ShapeRecorder {
    records: Arc<Mutex<Vec<KeyShape>>>,
}

impl ShapeRecorder {
    pub fn new() -> Self {
        Self::default()
    }

    /// A CPU `VarBuilder` whose tensors are zero-stride broadcasts of one element.
    pub fn var_builder(&self, dtype: DType) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), dtype, Device::Cpu)
    }

    /// What was requested, in request order.
    pub fn records(&self) -> Vec<KeyShape> {
        self.records.lock().unwrap().clone()
    }
}

impl SimpleBackend for ShapeRecorder {
    fn get(&self, s: Shape, name: &str, _: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.records.lock().unwrap().push(KeyShape { name: name.to_string(), shape: s.dims().to_vec(), dtype });
        if s.rank() == 0 {
            return Tensor::zeros((), dtype, dev);
        }
        Tensor::zeros(vec![1usize; s.rank()], dtype, dev)?.broadcast_as(s.dims())
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        Err(candle_core::Error::Msg(format!("ShapeRecorder: `{name}` requested without a shape")))
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

/// Random weights, for timing and FLOP work without the published checkpoints
/// (`--random-init`). Each tensor is drawn from its own stream keyed by (seed, name), so a model
/// gets the same weights whatever order it requests them in: rank-1 `*bias` = 0, other rank-1
/// tensors (norm scales) = 1, everything else N(0, 1/fan_in) ([`new`](Self::new); fan_in = product
/// of the trailing dimensions, so activations keep unit scale) or N(0, std^2)
/// ([`with_std`](Self::with_std)). Integer tensors are zeros.
#[derive(Clone)]
pub struct RandomWeights {
    seed: u64,
    std: Option<f64>,
}

impl RandomWeights {
    /// N(0, 1/fan_in) from `seed`.
    pub fn new(seed: u64) -> Self {
        Self { seed, std: None }
    }

    /// N(0, std^2) from `seed`.
    pub fn with_std(seed: u64, std: f64) -> Self {
        Self { seed, std: Some(std) }
    }

    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), dtype, device.clone())
    }
}

impl SimpleBackend for RandomWeights {
    fn get(&self, s: Shape, name: &str, _: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        if !dtype.is_float() {
            return Tensor::zeros(s, dtype, dev);
        }
        let dims = s.dims();
        if dims.len() <= 1 {
            let t = if name.ends_with("bias") { Tensor::zeros(s, dtype, dev)? } else { Tensor::ones(s, dtype, dev)? };
            return Ok(t);
        }
        // FNV-1a of the name: a stable stream id (std's hasher is not stable across releases).
        let stream = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
        let mut rng = genbench_runtime::SeededSource::for_stream(self.seed, stream);
        let fan_in: usize = dims[1..].iter().product();
        let std = match self.std {
            Some(std) => std as f32,
            None => 1.0 / (fan_in.max(1) as f32).sqrt(),
        };
        let values = genbench_runtime::RandomSource::normal(&mut rng, s.elem_count())
            .map_err(|e| candle_core::Error::Msg(format!("random weights: {e}")))?;
        Tensor::from_vec(values.into_iter().map(|v| v * std).collect::<Vec<f32>>(), dims, dev)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        Err(candle_core::Error::Msg(format!("RandomWeights: `{name}` requested without a shape")))
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

/// Requests a buffer with its own dtype (e.g. int64 `lvl_1L`), so strict loading and key
/// recording see it like a parameter.
pub fn get_buffer(vb: &VarBuilder, shape: impl Into<Shape>, name: &str, dtype: DType) -> candle_core::Result<Tensor> {
    vb.get_with_hints_dtype(shape, name, Init::Const(0.0), dtype)
}

/// The state-dict entry to load: the first of `candidates` present in the checkpoint (`""` =
/// the flat top level, accepted when the checkpoint has tensors outside every named candidate).
pub fn select_entry<'a>(ck: &TorchCheckpoint, candidates: &[&'a str]) -> Result<&'a str> {
    for &c in candidates {
        if c.is_empty() {
            let named: Vec<&str> = candidates.iter().copied().filter(|c| !c.is_empty()).collect();
            if ck.names().any(|(n, _, _)| !named.iter().any(|p| n.starts_with(&format!("{p}.")))) {
                return Ok(c);
            }
        } else if ck.has_prefix(c) {
            return Ok(c);
        }
    }
    Err(anyhow!(
        "{}: none of the expected state dicts {:?} found; top-level keys: {:?}",
        ck.path().display(),
        candidates,
        ck.top_level_keys()
    ))
}

/// Removes the first matching prefix from every name (`transformer.`, `first_stage_model.`,
/// `module.`); names with none of them are kept unchanged.
pub fn strip_prefixes(tensors: BTreeMap<String, Tensor>, prefixes: &[&str]) -> BTreeMap<String, Tensor> {
    tensors
        .into_iter()
        .map(|(k, v)| {
            let stripped = prefixes.iter().find_map(|p| k.strip_prefix(p)).map(str::to_string);
            (stripped.unwrap_or(k), v)
        })
        .collect()
}

/// Parses a key list: the published `shared/reference/checkpoint-keys/*.txt` format
/// (`P name (d0, d1) float32`, `B ...` for buffers, `#` comments) and the fixtures' `keys.txt`
/// (`name (d0, d1) float32`, `#` section headers).
pub fn parse_key_list(text: &str) -> Result<Vec<KeyShape>> {
    let mut out = vec![];
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (open, close) = match (line.find('('), line.rfind(')')) {
            (Some(o), Some(c)) if c > o => (o, c),
            _ => bail!("key list line {}: no shape in `{line}`", i + 1),
        };
        let head: Vec<&str> = line[..open].split_whitespace().collect();
        let name = match head.as_slice() {
            [name] => *name,
            [kind, name] if *kind == "P" || *kind == "B" => *name,
            _ => bail!("key list line {}: cannot read the name in `{line}`", i + 1),
        };
        let shape = line[open + 1..close]
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| s.parse::<usize>().with_context(|| format!("key list line {}: bad dimension `{s}`", i + 1)))
            .collect::<Result<Vec<_>>>()?;
        let dtype = match line[close + 1..].trim() {
            "float32" | "" => DType::F32,
            "int64" => DType::I64,
            "float16" => DType::F16,
            "bfloat16" => DType::BF16,
            "float64" => DType::F64,
            other => bail!("key list line {}: unknown dtype `{other}`", i + 1),
        };
        out.push(KeyShape { name: name.to_string(), shape, dtype });
    }
    Ok(out)
}

/// Compares requested tensors with a published list. `Ok(())` when names, shapes and
/// int/float kinds agree exactly; otherwise an error listing what is missing, extra or
/// mis-shaped (up to 10 of each).
pub fn compare_keys(requested: &[KeyShape], published: &[KeyShape]) -> Result<()> {
    let req: BTreeMap<&str, &KeyShape> = requested.iter().map(|k| (k.name.as_str(), k)).collect();
    let publ: BTreeMap<&str, &KeyShape> = published.iter().map(|k| (k.name.as_str(), k)).collect();
    let mut problems = vec![];
    let dups = requested.len() - req.len();
    if dups > 0 {
        problems.push(format!("{dups} name(s) requested more than once"));
    }
    let missing: Vec<&str> = publ.keys().filter(|k| !req.contains_key(*k)).copied().collect();
    let extra: Vec<&str> = req.keys().filter(|k| !publ.contains_key(*k)).copied().collect();
    let mut mismatched = vec![];
    for (name, p) in &publ {
        if let Some(r) = req.get(name) {
            if r.shape != p.shape || r.dtype.is_float() != p.dtype.is_float() {
                mismatched.push(format!(
                    "{name}: model {:?} {}, published {:?} {}",
                    r.shape,
                    dtype_name(r.dtype),
                    p.shape,
                    dtype_name(p.dtype)
                ));
            }
        }
    }
    let list = |v: &[&str]| v.iter().take(10).map(|s| s.to_string()).collect::<Vec<_>>().join(", ");
    if !missing.is_empty() {
        problems.push(format!("{} published tensor(s) the model does not request: {}", missing.len(), list(&missing)));
    }
    if !extra.is_empty() {
        problems.push(format!("{} requested tensor(s) not in the published list: {}", extra.len(), list(&extra)));
    }
    if !mismatched.is_empty() {
        problems.push(format!(
            "{} shape/dtype mismatch(es): {}",
            mismatched.len(),
            mismatched.iter().take(10).cloned().collect::<Vec<_>>().join("; ")
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        bail!("{}", problems.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_weights_name_the_offending_key() {
        let dev = Device::Cpu;
        let mut m = BTreeMap::new();
        m.insert("a.weight".to_string(), Tensor::zeros((2, 3), DType::F32, &dev).unwrap());
        m.insert("extra".to_string(), Tensor::zeros(1, DType::F32, &dev).unwrap());
        let w = StrictWeights::new(m, "test.pth");
        let vb = w.var_builder(DType::F32, &dev);
        let e = vb.pp("a").get((3, 2), "weight").unwrap_err().to_string();
        assert!(e.contains("`a.weight`") && e.contains("[2, 3]") && e.contains("[3, 2]"), "{e}");
        let e = vb.get(4, "b").unwrap_err().to_string();
        assert!(e.contains("missing tensor `b`") && e.contains("[4]"), "{e}");
        vb.pp("a").get((2, 3), "weight").unwrap();
        assert_eq!(w.unused(), vec!["extra".to_string()]);
        assert!(w.ensure_all_used(|_| false).unwrap_err().to_string().contains("`extra`"));
        w.ensure_all_used(|k| k == "extra").unwrap();
    }

    #[test]
    fn recorder_builds_without_allocating() {
        let rec = ShapeRecorder::new();
        let vb = rec.var_builder(DType::F32);
        // 64 GB if it were allocated.
        let t = vb.pp("huge").get((1 << 17, 1 << 17), "weight").unwrap();
        assert_eq!(t.dims(), &[1 << 17, 1 << 17]);
        get_buffer(&vb, (1, 4), "lvl", DType::I64).unwrap();
        let r = rec.records();
        assert_eq!(r[0].name, "huge.weight");
        assert_eq!(r[1].dtype, DType::I64);
    }

    #[test]
    fn key_lists_parse_and_compare() {
        let published = parse_key_list("# header\nP w (2, 3) float32\nB lvl (1, 4) int64\nP s () float32\n").unwrap();
        assert_eq!(published[0].shape, vec![2, 3]);
        assert_eq!(published[1].dtype, DType::I64);
        assert!(published[2].shape.is_empty());
        let fixture = parse_key_list("# vae.pth: flat\nw (2, 3) float32\nb (3,) float32\n").unwrap();
        assert_eq!(fixture[1].shape, vec![3]);
        let ok = vec![
            KeyShape { name: "w".into(), shape: vec![2, 3], dtype: DType::F32 },
            KeyShape { name: "lvl".into(), shape: vec![1, 4], dtype: DType::I64 },
            KeyShape { name: "s".into(), shape: vec![], dtype: DType::F32 },
        ];
        compare_keys(&ok, &published).unwrap();
        let mut bad = ok.clone();
        bad[0].shape = vec![3, 2];
        bad.push(KeyShape { name: "x".into(), shape: vec![1], dtype: DType::F32 });
        bad.remove(2);
        let e = compare_keys(&bad, &published).unwrap_err().to_string();
        assert!(e.contains("w: model [3, 2]") && e.contains("not in the published list: x") && e.contains("does not request: s"), "{e}");
    }
}
