//! Reading published PyTorch checkpoints as they are.
//!
//! A `torch.save` file is a zip holding `<archive>/data.pkl` (a pickle describing nested dicts,
//! modules and tensors) and one file per storage (`<archive>/data/N`). candle's reader only
//! looks at the top-level dict, so it returns nothing for TorchScript archives (modules nested in
//! modules) and cannot tell apart `model` and `model_ema` in a training checkpoint. Here the
//! pickle is decoded with candle's `Stack` and walked recursively: every tensor gets its dotted
//! path (`model_ema.blocks.0.attn.qkv.weight`, `layers.mixed_6.conv.weight`), and everything
//! that is not a tensor (an `argparse.Namespace`, epoch counters, optimizer scalars) is skipped.

use anyhow::{anyhow, bail, Context, Result};
use candle_core::pickle::{Object, Stack, TensorInfo};
use candle_core::{DType, Device, Tensor};
use std::collections::BTreeMap;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

/// Index of every tensor in a checkpoint, by dotted path, without reading the data yet.
pub struct TorchCheckpoint {
    path: PathBuf,
    infos: BTreeMap<String, TensorInfo>,
}

impl TorchCheckpoint {
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path)
            .with_context(|| format!("cannot open checkpoint {}", path.display()))?;
        let mut magic = [0u8; 4];
        let n = (&file).read(&mut magic).unwrap_or(0);
        if n < 4 || &magic != b"PK\x03\x04" {
            bail!(
                "{} is not a PyTorch zip checkpoint (first bytes {:02x?}); files saved with the legacy \
                 pre-1.6 format must be re-saved with `torch.save(obj, path)` from a recent PyTorch",
                path.display(),
                &magic[..n]
            );
        }
        let file = std::fs::File::open(path)?;
        let mut zip = zip::ZipArchive::new(BufReader::new(file))
            .with_context(|| format!("{} is a corrupt zip archive", path.display()))?;
        let pkl_name = zip
            .file_names()
            .filter_map(|n| n.ok().map(|n| n.to_string()))
            .find(|n| n.ends_with("/data.pkl") || n == "data.pkl")
            .ok_or_else(|| anyhow!("{} holds no data.pkl: not a torch.save archive", path.display()))?;
        let dir = PathBuf::from(pkl_name.strip_suffix(".pkl").unwrap());
        let obj = {
            let reader = zip.by_name(&pkl_name)?;
            let mut reader = BufReader::new(reader);
            let mut stack = Stack::empty();
            stack
                .read_loop(&mut reader)
                .with_context(|| format!("cannot decode the pickle in {}", path.display()))?;
            stack.finalize().with_context(|| format!("cannot decode the pickle in {}", path.display()))?
        };
        let mut infos = BTreeMap::new();
        walk(obj, String::new(), &dir, &mut infos, 0);
        Ok(Self { path: path.to_path_buf(), infos })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every tensor name with its shape and dtype.
    pub fn names(&self) -> impl Iterator<Item = (&str, &[usize], DType)> {
        self.infos.iter().map(|(k, v)| (k.as_str(), v.layout.dims(), v.dtype))
    }

    pub fn len(&self) -> usize {
        self.infos.len()
    }
    pub fn is_empty(&self) -> bool {
        self.infos.is_empty()
    }

    /// The distinct first path components (`model`, `model_ema`, `state_dict`, ...), to say what
    /// a checkpoint holds when the expected entry is missing.
    pub fn top_level_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> =
            self.infos.keys().map(|k| k.split('.').next().unwrap_or("").to_string()).collect();
        keys.dedup();
        keys
    }

    /// True when some tensor lives under `prefix.`.
    pub fn has_prefix(&self, prefix: &str) -> bool {
        let p = format!("{prefix}.");
        self.infos.keys().any(|k| k.starts_with(&p))
    }

    /// Loads every tensor whose name starts with `prefix` (a dotted path; "" = all), with the
    /// prefix stripped, converted to `dtype` on `device`. Tensors sharing one storage (tied
    /// weights) are read once each; the zip is opened once.
    pub fn load(&self, prefix: &str, dtype: Option<DType>, device: &Device) -> Result<BTreeMap<String, Tensor>> {
        self.load_filtered(prefix, |_| true, dtype, device)
    }

    /// As [`load`](Self::load), keeping only names (after stripping) for which `keep` is true.
    pub fn load_filtered(
        &self,
        prefix: &str,
        keep: impl Fn(&str) -> bool,
        dtype: Option<DType>,
        device: &Device,
    ) -> Result<BTreeMap<String, Tensor>> {
        let p = if prefix.is_empty() { String::new() } else { format!("{prefix}.") };
        let file = std::fs::File::open(&self.path)?;
        let mut zip = zip::ZipArchive::new(BufReader::new(file))?;
        let mut storages: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut out = BTreeMap::new();
        for (name, info) in &self.infos {
            let Some(short) = name.strip_prefix(&p) else { continue };
            if !keep(short) {
                continue;
            }
            if !storages.contains_key(&info.path) {
                let mut f = zip
                    .by_name(&info.path)
                    .with_context(|| format!("{}: storage {} of tensor {name} is missing", self.path.display(), info.path))?;
                let mut buf = Vec::with_capacity(f.size() as usize);
                f.read_to_end(&mut buf)?;
                storages.insert(info.path.clone(), buf);
            }
            let t = tensor_from_storage(&storages[&info.path], info)
                .with_context(|| format!("{}: cannot read tensor {name}", self.path.display()))?;
            let t = match dtype {
                Some(dt) if t.dtype().is_float() && t.dtype() != dt => t.to_dtype(dt)?,
                _ => t,
            };
            out.insert(short.to_string(), t.to_device(device)?);
        }
        Ok(out)
    }
}

/// Builds a tensor from its storage bytes, honouring offset and (contiguous or Fortran) strides.
fn tensor_from_storage(storage: &[u8], info: &TensorInfo) -> Result<Tensor> {
    let layout = &info.layout;
    let dims = layout.dims().to_vec();
    let elem = info.dtype.size_in_bytes();
    let numel: usize = dims.iter().product();
    let start = layout.start_offset();
    let strides = layout.stride();
    // Expected C-contiguous strides.
    let mut c_strides = vec![1usize; dims.len()];
    for i in (0..dims.len().saturating_sub(1)).rev() {
        c_strides[i] = c_strides[i + 1] * dims[i + 1];
    }
    let is_c = numel <= 1 || dims.iter().zip(strides).zip(&c_strides).all(|((&d, &s), &c)| d == 1 || s == c);
    if is_c {
        let end = start + numel * elem;
        if end > storage.len() {
            bail!("storage holds {} bytes, tensor needs bytes {start}..{end}", storage.len());
        }
        return Ok(Tensor::from_raw_buffer(&storage[start..end], info.dtype, &dims, &Device::Cpu)?);
    }
    // General strided view: gather element by element (rare: transposed saves, expanded buffers).
    let mut bytes = Vec::with_capacity(numel * elem);
    let mut idx = vec![0usize; dims.len()];
    for _ in 0..numel {
        let off: usize = idx.iter().zip(strides).map(|(i, s)| i * s).sum::<usize>() * elem + start;
        if off + elem > storage.len() {
            bail!("strided tensor reads past its storage");
        }
        bytes.extend_from_slice(&storage[off..off + elem]);
        for d in (0..dims.len()).rev() {
            idx[d] += 1;
            if idx[d] < dims[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    Ok(Tensor::from_raw_buffer(&bytes, info.dtype, &dims, &Device::Cpu)?)
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// Recursively collects tensors. Depth-limited so a malicious pickle cannot overflow the stack.
fn walk(obj: Object, prefix: String, dir: &Path, out: &mut BTreeMap<String, TensorInfo>, depth: usize) {
    if depth > 64 {
        return;
    }
    match obj {
        Object::Dict(items) => {
            for (k, v) in items {
                let key = match k {
                    Object::Unicode(s) => s,
                    Object::Int(i) => i.to_string(),
                    Object::Long(i) => i.to_string(),
                    _ => continue,
                };
                let name = join(&prefix, &key);
                match v.clone().into_tensor_info(Object::Unicode(name.clone()), dir) {
                    Ok(Some(info)) => {
                        out.insert(name, info);
                    }
                    _ => walk(v, name, dir, out, depth + 1),
                }
            }
        }
        // TorchScript modules and OrderedDict subclasses: `Build { callable, args: attributes }`.
        Object::Build { callable, args } => {
            walk(*args, prefix.clone(), dir, out, depth + 1);
            walk(*callable, prefix, dir, out, depth + 1);
        }
        // `collections.OrderedDict(list of pairs)` and similar reductions carry their items in args.
        Object::Reduce { callable: _, args } => walk(*args, prefix, dir, out, depth + 1),
        Object::Tuple(items) | Object::List(items) => {
            for item in items {
                walk(item, prefix.clone(), dir, out, depth + 1);
            }
        }
        _ => {}
    }
}

/// Loads a safetensors file into a name -> tensor map (used for caches and fixtures).
pub fn load_safetensors(path: &Path, device: &Device) -> Result<BTreeMap<String, Tensor>> {
    let map = candle_core::safetensors::load(path, device)
        .with_context(|| format!("cannot read safetensors file {}", path.display()))?;
    Ok(map.into_iter().collect())
}

/// Writes tensors to a safetensors file atomically (temp file + rename), so an interrupted
/// write never leaves a file that looks complete.
pub fn save_safetensors_atomic(tensors: &BTreeMap<String, Tensor>, path: &Path) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name().and_then(|s| s.to_str()).unwrap_or("out"),
        std::process::id()
    ));
    let map: std::collections::HashMap<String, Tensor> =
        tensors.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    candle_core::safetensors::save(&map, &tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot move {} into place", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(rel: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models").join(rel)
    }

    #[test]
    fn reads_flat_state_dict_with_buffers() {
        let ck = TorchCheckpoint::open(&fixture("var/var.pth")).unwrap();
        assert!(ck.names().any(|(n, _, _)| n == "class_emb.weight"));
        // int64 buffers are part of the published files.
        assert!(ck.names().any(|(n, _, dt)| n == "lvl_1L" && dt == DType::I64));
        let t = ck.load("", None, &Device::Cpu).unwrap();
        assert_eq!(t.len(), ck.len());
    }

    #[test]
    fn separates_model_and_model_ema_and_skips_args() {
        let ck = TorchCheckpoint::open(&fixture("mar/checkpoint-last.pth")).unwrap();
        let keys = ck.top_level_keys();
        assert!(keys.contains(&"model".to_string()) && keys.contains(&"model_ema".to_string()), "{keys:?}");
        let ema = ck.load("model_ema", None, &Device::Cpu).unwrap();
        let raw = ck.load("model", None, &Device::Cpu).unwrap();
        assert_eq!(ema.len(), raw.len());
        let a = &ema["class_emb.weight"];
        let b = &raw["class_emb.weight"];
        let diff = (a - b).unwrap().abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff > 0.0, "model and model_ema must differ in the fixture");
    }

    #[test]
    fn lightning_state_dict_prefixes() {
        let ck = TorchCheckpoint::open(&fixture("ar_taming/cin_transformer_tiny.ckpt")).unwrap();
        assert!(ck.has_prefix("state_dict"));
    }

    #[test]
    fn rejects_non_zip_and_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("legacy.pth");
        std::fs::write(&p, b"\x80\x02legacy").unwrap();
        let e = TorchCheckpoint::open(&p).err().unwrap().to_string();
        assert!(e.contains("legacy.pth") && e.contains("re-saved"), "{e}");
        let e = TorchCheckpoint::open(&dir.path().join("nope.pth")).err().unwrap().to_string();
        assert!(e.contains("nope.pth"), "{e}");
        let p = dir.path().join("trunc.pth");
        std::fs::write(&p, b"PK\x03\x04garbage").unwrap();
        assert!(TorchCheckpoint::open(&p).is_err());
    }

    #[test]
    fn safetensors_round_trip_is_atomic() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/w.safetensors");
        let mut m = BTreeMap::new();
        m.insert("a".to_string(), Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap());
        save_safetensors_atomic(&m, &p).unwrap();
        let back = load_safetensors(&p, &Device::Cpu).unwrap();
        assert_eq!(back["a"].to_vec1::<f32>().unwrap(), vec![1.0, 2.0]);
        assert_eq!(std::fs::read_dir(dir.path().join("sub")).unwrap().count(), 1);
    }
}
