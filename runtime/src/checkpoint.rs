//! Reading published PyTorch checkpoints as they are.
//!
//! A `torch.save` file is a zip holding `<archive>/data.pkl` (a pickle describing nested dicts,
//! modules and tensors) and one file per storage (`<archive>/data/N`). candle's reader only
//! looks at the top-level dict, so it returns nothing for TorchScript archives (modules nested in
//! modules) and cannot tell apart `model` and `model_ema` in a training checkpoint. Here the
//! pickle is decoded with candle's `Stack` and walked recursively: every tensor gets its dotted
//! path (`model_ema.blocks.0.attn.qkv.weight`, `layers.mixed_6.conv.weight`), and everything
//! that is not a tensor (an `argparse.Namespace`, epoch counters, optimizer scalars) is skipped.
//!
//! The legacy (pre-1.6, `_use_new_zipfile_serialization=False`) format is read too, because
//! widely used published weights predate the zip format: five consecutive pickles (magic
//! number, protocol version, system info, the object, the list of storage keys) followed by the
//! raw storages, each an int64 element count and the little-endian data, in key-list order.

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
    /// For legacy-format files: storage key -> (byte offset of its data, byte length).
    legacy_storages: Option<BTreeMap<String, (u64, usize)>>,
}

/// The first pickle of every legacy torch.save file: PROTO 2, LONG1 of the 10-byte magic number
/// 0x1950a86a20f9469cfc6c, STOP. Matched as bytes (candle's LONG1 decoder is limited to 8 bytes).
const LEGACY_MAGIC_PICKLE: &[u8] = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19\x2e";
/// Directory prefix given to legacy storage keys so they look like zip member paths.
const LEGACY_DIR: &str = "legacy";

fn read_pickle(cur: &mut std::io::Cursor<&[u8]>) -> Result<Object> {
    let mut stack = Stack::empty();
    stack.read_loop(cur)?;
    Ok(stack.finalize()?)
}

impl TorchCheckpoint {
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).with_context(|| format!("cannot open checkpoint {}", path.display()))?;
        let mut magic = [0u8; 4];
        let n = (&file).read(&mut magic).unwrap_or(0);
        if n == 4 && magic == LEGACY_MAGIC_PICKLE[..4] {
            let bytes = std::fs::read(path).with_context(|| format!("cannot read checkpoint {}", path.display()))?;
            if bytes.starts_with(LEGACY_MAGIC_PICKLE) {
                return Self::open_legacy(path, &bytes)
                    .with_context(|| format!("cannot read {} as a legacy torch.save file", path.display()));
            }
        }
        if n < 4 || &magic != b"PK\x03\x04" {
            bail!(
                "{} is not a PyTorch zip checkpoint (first bytes {:02x?}); files saved with the legacy \
                 pre-1.6 format must be re-saved with `torch.save(obj, path)` from a recent PyTorch",
                path.display(),
                &magic[..n]
            );
        }
        let file = std::fs::File::open(path)?;
        let mut zip = zip::ZipArchive::new(BufReader::new(file)).with_context(|| format!("{} is a corrupt zip archive", path.display()))?;
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
            stack.read_loop(&mut reader).with_context(|| format!("cannot decode the pickle in {}", path.display()))?;
            stack.finalize().with_context(|| format!("cannot decode the pickle in {}", path.display()))?
        };
        let mut infos = BTreeMap::new();
        walk(obj, String::new(), &dir, &mut infos, 0);
        Ok(Self { path: path.to_path_buf(), infos, legacy_storages: None })
    }

    fn open_legacy(path: &Path, bytes: &[u8]) -> Result<Self> {
        let mut cur = std::io::Cursor::new(bytes);
        cur.set_position(LEGACY_MAGIC_PICKLE.len() as u64);
        let protocol = read_pickle(&mut cur).context("protocol version")?;
        if !matches!(protocol, Object::Int(1001) | Object::Long(1001)) {
            bail!("unsupported legacy protocol version {protocol:?} (expected 1001)");
        }
        let _sys_info = read_pickle(&mut cur).context("system info")?;
        let obj = read_pickle(&mut cur).context("object pickle")?;
        let keys = match read_pickle(&mut cur).context("storage key list")? {
            Object::List(items) => items
                .into_iter()
                .map(|k| k.unicode().map_err(|o| anyhow!("storage key is not a string: {o:?}")))
                .collect::<Result<Vec<String>>>()?,
            other => bail!("storage key list is not a list: {other:?}"),
        };
        let mut infos = BTreeMap::new();
        walk(obj, String::new(), Path::new(LEGACY_DIR), &mut infos, 0);
        // Element size of each storage, from the tensors that view it.
        let mut elem_size: BTreeMap<&str, usize> = BTreeMap::new();
        for info in infos.values() {
            let key = info.path.strip_prefix(&format!("{LEGACY_DIR}/")).unwrap_or(&info.path);
            elem_size.insert(key, info.dtype.size_in_bytes());
        }
        let mut storages = BTreeMap::new();
        let mut pos = cur.position() as usize;
        for key in &keys {
            let header = bytes.get(pos..pos + 8).ok_or_else(|| anyhow!("file ends before storage {key}"))?;
            let numel = i64::from_le_bytes(header.try_into().unwrap());
            // A storage no tensor refers to still occupies its bytes; without a dtype its size is
            // unknown, so the rest of the file could not be located.
            let size = *elem_size.get(key.as_str()).ok_or_else(|| anyhow!("storage {key} is used by no tensor"))?;
            let len = usize::try_from(numel).map_err(|_| anyhow!("storage {key} has a negative size"))? * size;
            let start = pos + 8;
            if start + len > bytes.len() {
                bail!("storage {key} needs {len} bytes at offset {start}, the file has {}", bytes.len());
            }
            storages.insert(format!("{LEGACY_DIR}/{key}"), (start as u64, len));
            pos = start + len;
        }
        for (name, info) in &infos {
            if !storages.contains_key(&info.path) {
                bail!("tensor {name} refers to storage {} that is not in the file", info.path);
            }
        }
        Ok(Self { path: path.to_path_buf(), infos, legacy_storages: Some(storages) })
    }

    /// Raw bytes of one storage (`info.path`), from the zip member or the legacy data section.
    fn read_storage(&self, zip: &mut Option<zip::ZipArchive<BufReader<std::fs::File>>>, storage: &str, tensor: &str) -> Result<Vec<u8>> {
        if let Some(map) = &self.legacy_storages {
            use std::io::{Seek, SeekFrom};
            let (offset, len) = map[storage];
            let mut f = std::fs::File::open(&self.path)?;
            f.seek(SeekFrom::Start(offset))?;
            let mut buf = vec![0u8; len];
            f.read_exact(&mut buf).with_context(|| format!("{}: cannot read storage {storage}", self.path.display()))?;
            return Ok(buf);
        }
        if zip.is_none() {
            let file = std::fs::File::open(&self.path)?;
            *zip = Some(zip::ZipArchive::new(BufReader::new(file))?);
        }
        let mut f = zip
            .as_mut()
            .unwrap()
            .by_name(storage)
            .with_context(|| format!("{}: storage {storage} of tensor {tensor} is missing", self.path.display()))?;
        let mut buf = Vec::with_capacity(f.size() as usize);
        f.read_to_end(&mut buf)?;
        Ok(buf)
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
        let mut keys: Vec<String> = self.infos.keys().map(|k| k.split('.').next().unwrap_or("").to_string()).collect();
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
        let mut zip = None;
        let mut storages: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut out = BTreeMap::new();
        for (name, info) in &self.infos {
            let Some(short) = name.strip_prefix(&p) else { continue };
            if !keep(short) {
                continue;
            }
            if !storages.contains_key(&info.path) {
                let buf = self.read_storage(&mut zip, &info.path, name)?;
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
    let map = candle_core::safetensors::load(path, device).with_context(|| format!("cannot read safetensors file {}", path.display()))?;
    Ok(map.into_iter().collect())
}

/// Writes tensors to a safetensors file atomically (temp file + rename), so an interrupted
/// write never leaves a file that looks complete.
pub fn save_safetensors_atomic(tensors: &BTreeMap<String, Tensor>, path: &Path) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = dir.join(format!(".{}.tmp{}", path.file_name().and_then(|s| s.to_str()).unwrap_or("out"), std::process::id()));
    let map: std::collections::HashMap<String, Tensor> = tensors.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
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

    /// Pickle opcodes for a hand-built legacy torch.save file (protocol 2, as torch wrote it).
    struct Pickle(Vec<u8>);
    impl Pickle {
        fn new() -> Self {
            Pickle(vec![0x80, 0x02])
        }
        fn op(&mut self, b: &[u8]) -> &mut Self {
            self.0.extend_from_slice(b);
            self
        }
        fn str(&mut self, s: &str) -> &mut Self {
            self.0.push(b'X');
            self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
            self.0.extend_from_slice(s.as_bytes());
            self
        }
        fn int(&mut self, v: i32) -> &mut Self {
            self.0.push(b'J');
            self.0.extend_from_slice(&v.to_le_bytes());
            self
        }
        fn global(&mut self, module: &str, name: &str) -> &mut Self {
            self.0.push(b'c');
            self.0.extend_from_slice(format!("{module}\n{name}\n").as_bytes());
            self
        }
        fn tuple(&mut self, items: &[i32]) -> &mut Self {
            self.op(b"(");
            for &i in items {
                self.int(i);
            }
            self.op(b"t")
        }
        /// `name: _rebuild_tensor_v2(storage(key, numel), offset, size, stride, False, OrderedDict())`
        fn tensor(&mut self, name: &str, key: &str, numel: i32, offset: i32, size: &[i32], stride: &[i32]) -> &mut Self {
            self.str(name).global("torch._utils", "_rebuild_tensor_v2").op(b"(");
            self.op(b"(").str("storage").global("torch", "FloatStorage").str(key).str("cpu").int(numel).op(b"Nt").op(b"Q");
            self.int(offset).tuple(size).tuple(stride).op(&[0x89]).global("collections", "OrderedDict").op(b")R");
            self.op(b"tR").op(b"s")
        }
    }

    fn legacy_file(path: &Path) {
        let mut out = LEGACY_MAGIC_PICKLE.to_vec();
        out.extend(Pickle::new().op(b"M\xe9\x03.").0.iter());
        out.extend(Pickle::new().op(b"}").str("little_endian").op(&[0x88]).op(b"s.").0.iter());
        let mut obj = Pickle::new();
        obj.global("collections", "OrderedDict").op(b")R");
        // "a.weight": 2x3 view of storage "111"; "a.bias": the tail of the same storage
        // (offset 6); "b": its own storage, transposed strides.
        obj.tensor("a.weight", "111", 8, 0, &[2, 3], &[3, 1]);
        obj.tensor("a.bias", "111", 8, 6, &[2], &[1]);
        obj.tensor("b", "222", 4, 0, &[2, 2], &[1, 2]);
        out.extend(obj.op(b".").0.iter());
        out.extend(Pickle::new().op(b"]").op(b"(").str("111").str("222").op(b"e.").0.iter());
        for (numel, base) in [(8i64, 0.0f32), (4, 10.0)] {
            out.extend_from_slice(&numel.to_le_bytes());
            for i in 0..numel {
                out.extend_from_slice(&(base + i as f32).to_le_bytes());
            }
        }
        std::fs::write(path, out).unwrap();
    }

    #[test]
    fn reads_legacy_torch_save_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("old.pth");
        legacy_file(&p);
        let ck = TorchCheckpoint::open(&p).unwrap();
        assert_eq!(ck.len(), 3);
        let t = ck.load("", None, &Device::Cpu).unwrap();
        assert_eq!(t["a.weight"].to_vec2::<f32>().unwrap(), vec![vec![0.0, 1.0, 2.0], vec![3.0, 4.0, 5.0]]);
        assert_eq!(t["a.bias"].to_vec1::<f32>().unwrap(), vec![6.0, 7.0]);
        // Strides (1, 2): column-major view of 10, 11, 12, 13.
        assert_eq!(t["b"].to_vec2::<f32>().unwrap(), vec![vec![10.0, 12.0], vec![11.0, 13.0]]);
        let a = ck.load("a", None, &Device::Cpu).unwrap();
        assert_eq!(a.keys().cloned().collect::<Vec<_>>(), vec!["bias".to_string(), "weight".to_string()]);
        // A truncated data section is an error naming the storage, not a panic.
        let bytes = std::fs::read(&p).unwrap();
        let q = dir.path().join("cut.pth");
        std::fs::write(&q, &bytes[..bytes.len() - 5]).unwrap();
        let e = format!("{:#}", TorchCheckpoint::open(&q).err().unwrap());
        assert!(e.contains("cut.pth") && e.contains("222"), "{e}");
    }
}
