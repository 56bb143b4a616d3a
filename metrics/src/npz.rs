//! ADM-style `.npz` batches: `arr_0` images (uint8 `[N, H, W, 3]`), optional precomputed
//! statistics `mu`, `sigma`, `mu_s`, `sigma_s`, optional `arr_1` labels.
//!
//! * Images are streamed in batches from the zip member (compressed or not): the npy header is
//!   parsed by npyz, then raw bytes are read straight from the member, so a 10 GB `arr_0` is
//!   never held in memory.
//! * Statistics files are written as ADM's evaluator reads them back (`np.load` + the four
//!   keys): `mu`/`mu_s` as float32 (what `np.mean` of float32 activations gives, and what
//!   torch-fidelity forks that assert `mu1.dtype == mu2.dtype` expect), `sigma`/`sigma_s` as
//!   float64 (what `np.cov` gives), plus an int64 scalar `n` that ADM ignores, and (from
//!   `genbench stats`) two numpy unicode scalars, `preprocess` and `weights_sha1`: how the
//!   features were made, checked before the statistics are used ([`NpzStatistics::check_made_with`]).
//! * All writers are uncompressed like `np.savez` (zip64 so arrays over 4 GB work) and atomic:
//!   the data goes to a temporary file in the target directory which is renamed over the target
//!   only once complete, so an interrupted run never leaves a file that looks finished.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, Write};
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use npyz::npz::NpzArchive;
use npyz::{DType, NpyFile, Order, TypeChar, TypeStr, WriterBuilder};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

use crate::stats::FeatureStats;

/// Key of the image array in ADM batches.
pub const IMAGES_KEY: &str = "arr_0";
/// Key of the (optional) label array.
pub const LABELS_KEY: &str = "arr_1";

/// Shape of an `arr_0` image array.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImagesInfo {
    pub n: usize,
    pub h: usize,
    pub w: usize,
}

impl ImagesInfo {
    /// Bytes of one HWC RGB image.
    pub fn image_bytes(&self) -> usize {
        self.h * self.w * 3
    }
}

type Archive = NpzArchive<BufReader<File>>;

fn open_archive(path: &Path) -> Result<Archive> {
    if !path.exists() {
        bail!("{}: file not found", path.display());
    }
    NpzArchive::open(path).map_err(|e| {
        anyhow::anyhow!(
            "{}: not a readable .npz archive ({e}); write it with numpy's np.savez, or give a \
             folder of PNG/JPEG images instead",
            path.display()
        )
    })
}

/// Names of the arrays stored in an npz file.
pub fn array_names(path: &Path) -> Result<Vec<String>> {
    Ok(open_archive(path)?.array_names().map(str::to_owned).collect())
}

fn describe_dtype(dtype: &DType) -> String {
    match dtype {
        DType::Plain(ts) => ts.to_string(),
        other => format!("{other:?}"),
    }
}

/// Validates an `arr_0` header: uint8, C order, `[N, H, W, 3]`.
fn images_info<R: Read>(path: &Path, npy: &NpyFile<R>) -> Result<ImagesInfo> {
    let shape = npy.shape().to_vec();
    let dtype = npy.dtype();
    let is_u8 = matches!(&dtype, DType::Plain(ts) if ts.type_char() == TypeChar::Uint && ts.size_field() == 1);
    let what_to_do = "ADM batches hold uint8 images [N, H, W, 3] (RGB, 0..255) in arr_0: convert with \
                      np.clip(x, 0, 255).astype(np.uint8) and save with np.savez";
    if !is_u8 {
        bail!("{}: arr_0 has dtype {} and shape {shape:?}, expected uint8; {what_to_do}", path.display(), describe_dtype(&dtype));
    }
    if shape.len() != 4 || shape[3] != 3 {
        bail!("{}: arr_0 has shape {shape:?}, expected [N, H, W, 3]; {what_to_do}", path.display());
    }
    if npy.order() != Order::C {
        bail!("{}: arr_0 is stored in Fortran order; re-save it with np.savez(np.ascontiguousarray(x))", path.display());
    }
    ensure!(shape[1] > 0 && shape[2] > 0, "{}: arr_0 has empty images (shape {shape:?})", path.display());
    Ok(ImagesInfo { n: shape[0] as usize, h: shape[1] as usize, w: shape[2] as usize })
}

fn images_member<'a>(path: &Path, archive: &'a mut Archive) -> Result<NpyFile<npyz::zip::read::ZipFile<'a>>> {
    archive
        .by_name(IMAGES_KEY)
        .with_context(|| format!("{}: cannot read arr_0", path.display()))?
        .with_context(|| format!("{}: no arr_0 (image array) in the npz", path.display()))
}

/// Shape of `arr_0` without reading the pixels.
pub fn read_images_info(path: &Path) -> Result<ImagesInfo> {
    let mut archive = open_archive(path)?;
    let npy = images_member(path, &mut archive)?;
    images_info(path, &npy)
}

/// Streams `arr_0` in batches of at most `batch_images` images: `f(pixels, count)` gets
/// `count * H * W * 3` bytes (NHWC RGB). Returns the array's shape.
pub fn for_each_image_batch(path: &Path, batch_images: usize, mut f: impl FnMut(&[u8], usize) -> Result<()>) -> Result<ImagesInfo> {
    ensure!(batch_images > 0, "batch size must be at least 1");
    let mut archive = open_archive(path)?;
    let npy = images_member(path, &mut archive)?;
    let info = images_info(path, &npy)?;
    let mut data = npy.into_inner();
    let mut buf = vec![0u8; batch_images.min(info.n.max(1)) * info.image_bytes()];
    let mut done = 0;
    while done < info.n {
        let count = batch_images.min(info.n - done);
        let bytes = &mut buf[..count * info.image_bytes()];
        data.read_exact(bytes).with_context(|| {
            format!("{}: arr_0 ends early (truncated or corrupt file) after {done} of {} images", path.display(), info.n)
        })?;
        f(bytes, count)?;
        done += count;
    }
    Ok(info)
}

/// Reads all of `arr_0` (for small files and tests).
pub fn read_images(path: &Path) -> Result<(Vec<u8>, ImagesInfo)> {
    let mut all = Vec::new();
    let info = for_each_image_batch(path, 1024, |bytes, _| {
        all.extend_from_slice(bytes);
        Ok(())
    })?;
    Ok((all, info))
}

/// Reads an optional integer array (e.g. `arr_1` labels) as i64.
pub fn read_int_array(path: &Path, key: &str) -> Result<Option<Vec<i64>>> {
    let mut archive = open_archive(path)?;
    let Some(npy) = archive.by_name(key).with_context(|| format!("{}: cannot read {key}", path.display()))? else {
        return Ok(None);
    };
    let dtype = npy.dtype();
    let DType::Plain(ts) = &dtype else {
        bail!("{}: {key} has a structured dtype, expected integers", path.display());
    };
    let ctx = || format!("{}: cannot read {key}", path.display());
    let values = match (ts.type_char(), ts.size_field()) {
        (TypeChar::Int, 1) => npy.into_vec::<i8>().with_context(ctx)?.into_iter().map(i64::from).collect(),
        (TypeChar::Int, 2) => npy.into_vec::<i16>().with_context(ctx)?.into_iter().map(i64::from).collect(),
        (TypeChar::Int, 4) => npy.into_vec::<i32>().with_context(ctx)?.into_iter().map(i64::from).collect(),
        (TypeChar::Int, 8) => npy.into_vec::<i64>().with_context(ctx)?,
        (TypeChar::Uint, 1) => npy.into_vec::<u8>().with_context(ctx)?.into_iter().map(i64::from).collect(),
        (TypeChar::Uint, 2) => npy.into_vec::<u16>().with_context(ctx)?.into_iter().map(i64::from).collect(),
        (TypeChar::Uint, 4) => npy.into_vec::<u32>().with_context(ctx)?.into_iter().map(i64::from).collect(),
        _ => bail!("{}: {key} has dtype {ts}, expected integers", path.display()),
    };
    Ok(Some(values))
}

/// Reads an optional float32 array (e.g. MAR's sampled latents) with its shape.
pub fn read_f32_array(path: &Path, key: &str) -> Result<Option<(Vec<f32>, Vec<u64>)>> {
    let mut archive = open_archive(path)?;
    let Some(npy) = archive.by_name(key).with_context(|| format!("{}: cannot read {key}", path.display()))? else {
        return Ok(None);
    };
    let shape = npy.shape().to_vec();
    let values = npy.into_vec::<f32>().with_context(|| format!("{}: {key} is not a float32 array, or truncated", path.display()))?;
    Ok(Some((values, shape)))
}

/// Reads a float32 or float64 array as f64 with its shape; `None` if the key is absent.
fn read_float_array(path: &Path, archive: &mut Archive, key: &str) -> Result<Option<(Vec<f64>, Vec<u64>)>> {
    let Some(npy) = archive.by_name(key).with_context(|| format!("{}: cannot read {key}", path.display()))? else {
        return Ok(None);
    };
    let shape = npy.shape().to_vec();
    let dtype = npy.dtype();
    let ctx = || format!("{}: cannot read {key} (truncated or corrupt?)", path.display());
    let values = match &dtype {
        DType::Plain(ts) if ts.type_char() == TypeChar::Float && ts.size_field() == 4 => {
            npy.into_vec::<f32>().with_context(ctx)?.into_iter().map(f64::from).collect()
        }
        DType::Plain(ts) if ts.type_char() == TypeChar::Float && ts.size_field() == 8 => npy.into_vec::<f64>().with_context(ctx)?,
        other => bail!("{}: {key} has dtype {}, expected float32 or float64", path.display(), describe_dtype(other)),
    };
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        bail!(
            "{}: {key} contains a non-finite value ({}) at flat index {i}; the statistics are \
             unusable, recompute them",
            path.display(),
            values[i]
        );
    }
    Ok(Some((values, shape)))
}

/// Key of the preprocessing mode recorded with statistics.
pub const PREPROCESS_KEY: &str = "preprocess";
/// Key of the SHA-1 of the Inception weights file recorded with statistics.
pub const WEIGHTS_SHA1_KEY: &str = "weights_sha1";

/// How statistics were made: the preprocessing mode and the weights file's SHA-1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatsProvenance {
    pub preprocess: String,
    pub weights_sha1: String,
}

/// Precomputed statistics found in an npz (any subset of ADM's four keys).
#[derive(Clone, Debug, Default)]
pub struct NpzStatistics {
    /// From `mu` + `sigma` (pool3, FID).
    pub pool: Option<FeatureStats>,
    /// From `mu_s` + `sigma_s` (spatial, sFID).
    pub spatial: Option<FeatureStats>,
    /// Which of the four statistics keys are absent.
    pub missing: Vec<&'static str>,
    /// Recorded by `genbench stats`; ADM's reference batches carry none.
    pub provenance: Option<StatsProvenance>,
}

impl NpzStatistics {
    /// True if the file carries any statistics key at all.
    pub fn has_any(&self) -> bool {
        self.missing.len() < 4
    }

    /// Refuses statistics recorded with another preprocessing mode or other weights than the
    /// run's: their FID would be silently wrong. Files without a record (ADM's) are accepted.
    pub fn check_made_with(&self, path: &Path, preprocess: &str, weights_sha1: &str) -> Result<()> {
        let Some(p) = &self.provenance else { return Ok(()) };
        if p.preprocess != preprocess || !p.weights_sha1.eq_ignore_ascii_case(weights_sha1) {
            bail!(
                "{}: these statistics were made with preprocessing '{}' and Inception weights SHA-1 {}, \
                 but this run uses preprocessing '{preprocess}' and weights SHA-1 {weights_sha1}; statistics \
                 from another preprocessing or network give a meaningless FID. Evaluate with the same \
                 --preprocess / --inception-weights, or recompute the statistics with `genbench stats`",
                path.display(),
                p.preprocess,
                p.weights_sha1
            );
        }
        Ok(())
    }
}

/// Reads whichever of `mu`, `sigma`, `mu_s`, `sigma_s` are present. A mean without its
/// covariance (or the reverse) is an error; NaN/inf values are errors naming the key.
pub fn read_statistics(path: &Path) -> Result<NpzStatistics> {
    let mut archive = open_archive(path)?;
    let mut out = NpzStatistics::default();
    out.pool = read_stats_pair(path, &mut archive, "mu", "sigma", &mut out.missing)?;
    out.spatial = read_stats_pair(path, &mut archive, "mu_s", "sigma_s", &mut out.missing)?;
    let preprocess = read_string(path, &mut archive, PREPROCESS_KEY)?;
    let weights_sha1 = read_string(path, &mut archive, WEIGHTS_SHA1_KEY)?;
    out.provenance = match (preprocess, weights_sha1) {
        (Some(preprocess), Some(weights_sha1)) => Some(StatsProvenance { preprocess, weights_sha1 }),
        (None, None) => None,
        _ => bail!(
            "{}: has only one of {PREPROCESS_KEY}/{WEIGHTS_SHA1_KEY}; `genbench stats` writes both (recompute the statistics)",
            path.display()
        ),
    };
    Ok(out)
}

/// An optional numpy unicode scalar (`<U…`, shape `()`).
fn read_string(path: &Path, archive: &mut Archive, key: &str) -> Result<Option<String>> {
    let Some(npy) = archive.by_name(key).with_context(|| format!("{}: cannot read {key}", path.display()))? else {
        return Ok(None);
    };
    let dtype = npy.dtype();
    ensure!(
        matches!(&dtype, DType::Plain(ts) if ts.type_char() == TypeChar::UnicodeStr) && npy.shape().is_empty(),
        "{}: {key} has dtype {} and shape {:?}, expected a unicode scalar",
        path.display(),
        describe_dtype(&dtype),
        npy.shape()
    );
    let mut values = npy.into_vec::<String>().with_context(|| format!("{}: cannot read {key}", path.display()))?;
    Ok(values.pop())
}

fn read_stats_pair(
    path: &Path,
    archive: &mut Archive,
    mu_key: &'static str,
    sigma_key: &'static str,
    missing: &mut Vec<&'static str>,
) -> Result<Option<FeatureStats>> {
    let mu = read_float_array(path, archive, mu_key)?;
    let sigma = read_float_array(path, archive, sigma_key)?;
    match (mu, sigma) {
        (None, None) => {
            missing.extend([mu_key, sigma_key]);
            Ok(None)
        }
        (Some(_), None) | (None, Some(_)) => {
            bail!("{}: has only one of {mu_key}/{sigma_key}; statistics need both (recompute them with `genbench stats`)", path.display())
        }
        (Some((mu, mu_shape)), Some((sigma, sigma_shape))) => {
            let d = mu.len();
            ensure!(
                mu_shape.len() == 1 && sigma_shape == [d as u64, d as u64],
                "{}: {mu_key} has shape {mu_shape:?} and {sigma_key} {sigma_shape:?}; expected [d] and [d, d]",
                path.display()
            );
            let n = read_count(path, archive)?;
            Ok(Some(FeatureStats { n, mu, sigma }))
        }
    }
}

/// Our statistics files record the sample count in `n`; ADM's do not (0 = unknown).
fn read_count(path: &Path, archive: &mut Archive) -> Result<usize> {
    let Some(npy) = archive.by_name("n").with_context(|| format!("{}: cannot read n", path.display()))? else {
        return Ok(0);
    };
    let values = npy.into_vec::<i64>().with_context(|| format!("{}: n is not an int64 scalar", path.display()))?;
    Ok(values.first().copied().unwrap_or(0).max(0) as usize)
}

/// One array to store in an npz (little-endian, C order).
#[derive(Clone, Copy, Debug)]
pub enum NpyArray<'a> {
    U8 { name: &'a str, shape: &'a [u64], data: &'a [u8] },
    U32 { name: &'a str, shape: &'a [u64], data: &'a [u32] },
    I64 { name: &'a str, shape: &'a [u64], data: &'a [i64] },
    F32 { name: &'a str, shape: &'a [u64], data: &'a [f32] },
    F64 { name: &'a str, shape: &'a [u64], data: &'a [f64] },
}

impl NpyArray<'_> {
    pub fn name(&self) -> &str {
        match self {
            Self::U8 { name, .. } | Self::U32 { name, .. } | Self::I64 { name, .. } | Self::F32 { name, .. } | Self::F64 { name, .. } => {
                name
            }
        }
    }

    fn write<W: Write + Seek>(&self, zip: &mut ZipWriter<W>) -> Result<()> {
        match *self {
            Self::U8 { name, shape, data } => {
                ensure!(data.len() as u64 == shape.iter().product::<u64>(), "{name}: {} bytes for shape {shape:?}", data.len());
                write_npy_bytes(zip, name, "|u1", shape, data)
            }
            Self::U32 { name, shape, data } => write_npy_le(zip, name, "<u4", shape, data, |v| v.to_le_bytes()),
            Self::I64 { name, shape, data } => write_npy_le(zip, name, "<i8", shape, data, |v| v.to_le_bytes()),
            Self::F32 { name, shape, data } => write_npy_le(zip, name, "<f4", shape, data, |v| v.to_le_bytes()),
            Self::F64 { name, shape, data } => write_npy_le(zip, name, "<f8", shape, data, |v| v.to_le_bytes()),
        }
    }
}

/// Writes arrays into an uncompressed npz (like `np.savez`), atomically.
pub fn write_npz(path: &Path, arrays: &[NpyArray<'_>]) -> Result<()> {
    let mut names: Vec<&str> = Vec::new();
    for a in arrays {
        ensure!(!names.contains(&a.name()), "array name {} used twice", a.name());
        names.push(a.name());
    }
    write_file_atomically(path, |file| {
        let mut zip = ZipWriter::new(BufWriter::new(file));
        for a in arrays {
            a.write(&mut zip)?;
        }
        finish_zip(zip)
    })
}

/// Writes an ADM sample batch: `arr_0` = `images` as uint8 `[n, h, w, 3]`, plus `extra`
/// arrays such as `arr_1` int64 labels or u32 token ids.
pub fn write_images_npz(path: &Path, images: &[u8], n: usize, h: usize, w: usize, extra: &[NpyArray<'_>]) -> Result<()> {
    ensure!(images.len() == n * h * w * 3, "image buffer has {} bytes, expected {n}x{h}x{w}x3", images.len());
    let shape = [n as u64, h as u64, w as u64, 3];
    let mut arrays = vec![NpyArray::U8 { name: IMAGES_KEY, shape: &shape, data: images }];
    arrays.extend_from_slice(extra);
    write_npz(path, &arrays)
}

/// One array of an npz as stored: its npy dtype string (e.g. `<u4`), shape and raw C-order bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawArray {
    pub descr: String,
    pub shape: Vec<u64>,
    pub data: Vec<u8>,
}

/// Reads an optional array's bytes without converting them (for concatenating arrays of any
/// plain dtype, e.g. token ids or latents, exactly).
pub fn read_raw_array(path: &Path, key: &str) -> Result<Option<RawArray>> {
    let mut archive = open_archive(path)?;
    let Some(npy) = archive.by_name(key).with_context(|| format!("{}: cannot read {key}", path.display()))? else {
        return Ok(None);
    };
    let dtype = npy.dtype();
    let DType::Plain(ts) = &dtype else {
        bail!("{}: {key} has a structured dtype, expected a plain one", path.display());
    };
    ensure!(npy.order() == Order::C, "{}: {key} is stored in Fortran order", path.display());
    let descr = ts.to_string();
    let shape = npy.shape().to_vec();
    let expected = shape.iter().product::<u64>() * ts.size_field();
    let mut data = Vec::with_capacity(expected as usize);
    npy.into_inner().read_to_end(&mut data).with_context(|| format!("{}: cannot read {key}", path.display()))?;
    ensure!(
        data.len() as u64 == expected,
        "{}: {key} holds {} bytes, its header promises {expected} (truncated or corrupt file)",
        path.display(),
        data.len()
    );
    Ok(Some(RawArray { descr, shape, data }))
}

/// An npz being written array by array, each array's data streamed in pieces (so a 10 GB
/// `arr_0` is never held in memory). Made by [`write_npz_streamed`].
pub struct NpzStreamWriter<'f> {
    zip: ZipWriter<BufWriter<&'f mut File>>,
    /// (name, bytes still expected) of the array being written.
    open: Option<(String, u64)>,
    names: Vec<String>,
}

impl NpzStreamWriter<'_> {
    /// Starts array `name` with npy dtype `descr` (e.g. `|u1`, `<i8`, `<u4`, `<f4`) and `shape`;
    /// its `shape.product() * itemsize` bytes must then come through [`Self::write`].
    pub fn start_array(&mut self, name: &str, descr: &str, shape: &[u64]) -> Result<()> {
        self.close_array()?;
        ensure!(!self.names.iter().any(|n| n == name), "array name {name} used twice");
        let itemsize = descr.parse::<TypeStr>().with_context(|| format!("bad dtype {descr}"))?.size_field();
        start_npy(&mut self.zip, name, descr, shape)?;
        self.names.push(name.to_string());
        self.open = Some((name.to_string(), shape.iter().product::<u64>() * itemsize));
        Ok(())
    }

    /// Appends raw little-endian C-order bytes to the array being written.
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let Some((name, left)) = self.open.as_mut() else { bail!("npz stream: data written before any array was started") };
        ensure!(bytes.len() as u64 <= *left, "{name}: more data than its shape holds");
        *left -= bytes.len() as u64;
        self.zip.write_all(bytes).with_context(|| format!("cannot write {name}.npy"))
    }

    fn close_array(&mut self) -> Result<()> {
        if let Some((name, left)) = self.open.take() {
            ensure!(left == 0, "{name}: {left} bytes short of its shape");
        }
        Ok(())
    }
}

/// Writes an uncompressed npz (like `np.savez`) atomically, the arrays streamed by `fill`
/// through [`NpzStreamWriter`]. The bytes equal [`write_npz`]'s for the same arrays.
pub fn write_npz_streamed(path: &Path, fill: impl FnOnce(&mut NpzStreamWriter<'_>) -> Result<()>) -> Result<()> {
    write_file_atomically(path, |file| {
        let mut w = NpzStreamWriter { zip: ZipWriter::new(BufWriter::new(file)), open: None, names: Vec::new() };
        fill(&mut w)?;
        w.close_array()?;
        finish_zip(w.zip)
    })
}

/// Reads a standalone float32 `.npy` file as (values, shape).
pub fn read_npy_f32(path: &Path) -> Result<(Vec<f32>, Vec<usize>)> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let npy = NpyFile::new(BufReader::new(file)).with_context(|| format!("{}: not a .npy file", path.display()))?;
    let shape = npy.shape().iter().map(|&s| s as usize).collect();
    let data = npy.into_vec::<f32>().with_context(|| format!("{}: not a float32 array, or truncated", path.display()))?;
    Ok((data, shape))
}

/// Reads a standalone uint8 `[N, H, W, 3]` `.npy` file (e.g. the Inception fixture images).
pub fn read_npy_images(path: &Path) -> Result<(Vec<u8>, ImagesInfo)> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let npy = NpyFile::new(BufReader::new(file)).with_context(|| format!("{}: not a .npy file", path.display()))?;
    let info = images_info(path, &npy)?;
    let data = npy.into_vec::<u8>().with_context(|| format!("{}: truncated or corrupt", path.display()))?;
    Ok((data, info))
}

/// Writes a statistics npz that ADM's `read_statistics` accepts (see the module docs).
pub fn write_statistics(path: &Path, pool: &FeatureStats, spatial: Option<&FeatureStats>) -> Result<()> {
    write_statistics_with(path, pool, spatial, None)
}

/// [`write_statistics`] plus the record of how the features were made (extra keys ADM ignores).
pub fn write_statistics_with(
    path: &Path,
    pool: &FeatureStats,
    spatial: Option<&FeatureStats>,
    provenance: Option<&StatsProvenance>,
) -> Result<()> {
    if let Some(p) = provenance {
        ensure!(
            !p.preprocess.is_empty() && !p.weights_sha1.is_empty(),
            "statistics provenance must name the preprocessing and the weights"
        );
    }
    pool.validate("pool statistics")?;
    if let Some(s) = spatial {
        s.validate("spatial statistics")?;
    }
    write_file_atomically(path, |file| {
        let mut zip = ZipWriter::new(BufWriter::new(file));
        write_stats_arrays(&mut zip, "mu", "sigma", pool)?;
        if let Some(s) = spatial {
            write_stats_arrays(&mut zip, "mu_s", "sigma_s", s)?;
        }
        write_npy_le(&mut zip, "n", "<i8", &[], &[pool.n as i64], |v| v.to_le_bytes())?;
        if let Some(p) = provenance {
            write_npy_string(&mut zip, PREPROCESS_KEY, &p.preprocess)?;
            write_npy_string(&mut zip, WEIGHTS_SHA1_KEY, &p.weights_sha1)?;
        }
        finish_zip(zip)
    })
}

fn write_stats_arrays<W: Write + Seek>(zip: &mut ZipWriter<W>, mu_key: &str, sigma_key: &str, s: &FeatureStats) -> Result<()> {
    let d = s.dim() as u64;
    let mu32: Vec<f32> = s.mu.iter().map(|&v| v as f32).collect();
    write_npy_le(zip, mu_key, "<f4", &[d], &mu32, |v| v.to_le_bytes())?;
    write_npy_le(zip, sigma_key, "<f8", &[d, d], &s.sigma, |v| v.to_le_bytes())
}

fn finish_zip<W: Write + Seek>(zip: ZipWriter<BufWriter<W>>) -> Result<()> {
    let mut inner = zip.finish().context("cannot finish the zip archive")?;
    inner.flush().context("cannot flush the npz file")?;
    Ok(())
}

/// Starts `<name>.npy` in the zip (stored, zip64) and writes its npy header.
fn start_npy<'z, W: Write + Seek>(zip: &'z mut ZipWriter<W>, name: &str, descr: &str, shape: &[u64]) -> Result<&'z mut ZipWriter<W>> {
    // A fixed timestamp (zip's 1980 epoch): the same arrays always give the same bytes, so
    // sharded and single-process runs can be compared byte for byte.
    let options = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Stored)
        .large_file(true)
        .last_modified_time(zip::DateTime::default());
    zip.start_file(format!("{name}.npy"), options).with_context(|| format!("cannot start {name}.npy"))?;
    let dtype = DType::Plain(descr.parse::<TypeStr>().with_context(|| format!("bad dtype {descr}"))?);
    npyz::WriteOptions::new_header_only()
        .dtype(dtype)
        .shape(shape)
        .writer(&mut *zip)
        .write_header_only()
        .with_context(|| format!("cannot write the {name}.npy header"))?;
    Ok(zip)
}

/// A numpy unicode scalar (`np.array('text')`: dtype `<U{chars}`, UTF-32LE, shape `()`).
fn write_npy_string<W: Write + Seek>(zip: &mut ZipWriter<W>, name: &str, text: &str) -> Result<()> {
    let bytes: Vec<u8> = text.chars().flat_map(|c| (c as u32).to_le_bytes()).collect();
    write_npy_bytes(zip, name, &format!("<U{}", text.chars().count()), &[], &bytes)
}

fn write_npy_bytes<W: Write + Seek>(zip: &mut ZipWriter<W>, name: &str, descr: &str, shape: &[u64], bytes: &[u8]) -> Result<()> {
    let out = start_npy(zip, name, descr, shape)?;
    out.write_all(bytes).with_context(|| format!("cannot write {name}.npy"))?;
    Ok(())
}

fn write_npy_le<W: Write + Seek, T: Copy, const B: usize>(
    zip: &mut ZipWriter<W>,
    name: &str,
    descr: &str,
    shape: &[u64],
    data: &[T],
    to_le: impl Fn(T) -> [u8; B],
) -> Result<()> {
    let expected: u64 = shape.iter().product();
    ensure!(data.len() as u64 == expected, "{name}: {} values for shape {shape:?}", data.len());
    let out = start_npy(zip, name, descr, shape)?;
    let mut chunk = Vec::with_capacity(B * 4096);
    for block in data.chunks(4096) {
        chunk.clear();
        block.iter().for_each(|&v| chunk.extend_from_slice(&to_le(v)));
        out.write_all(&chunk).with_context(|| format!("cannot write {name}.npy"))?;
    }
    Ok(())
}

/// One implementation of atomic output for the whole workspace (re-exported here, where most of
/// the callers are).
pub use genbench_runtime::atomic_file::write_file_atomically;

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn images_round_trip_in_batches() {
        let dir = tmp();
        let path = dir.path().join("batch.npz");
        let (n, h, w) = (5, 3, 2);
        let images: Vec<u8> = (0..n * h * w * 3).map(|i| (i * 7 % 256) as u8).collect();
        let labels = [4i64, 1, 9, 9, 0];
        let tokens = [1u32, 2, 3, 4, 5, 6, 7, 8, 9, 10];
        let extra = [
            NpyArray::I64 { name: LABELS_KEY, shape: &[5], data: &labels },
            NpyArray::U32 { name: "tokens", shape: &[5, 2], data: &tokens },
        ];
        write_images_npz(&path, &images, n, h, w, &extra).unwrap();
        let mut names = array_names(&path).unwrap();
        names.sort();
        assert_eq!(names, vec!["arr_0", "arr_1", "tokens"]);
        assert_eq!(read_images_info(&path).unwrap(), ImagesInfo { n, h, w });
        let mut seen = Vec::new();
        let mut counts = Vec::new();
        for_each_image_batch(&path, 2, |b, c| {
            seen.extend_from_slice(b);
            counts.push(c);
            Ok(())
        })
        .unwrap();
        assert_eq!(counts, vec![2, 2, 1]);
        assert_eq!(seen, images);
        assert_eq!(read_int_array(&path, LABELS_KEY).unwrap().unwrap(), labels.to_vec());
        assert_eq!(read_int_array(&path, "tokens").unwrap().unwrap(), (1..=10).collect::<Vec<i64>>());
        assert!(read_int_array(&path, "nope").unwrap().is_none());
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn streamed_npz_equals_one_shot_npz_byte_for_byte() {
        let dir = tmp();
        let (n, h, w) = (3, 2, 2);
        let images: Vec<u8> = (0..n * h * w * 3).map(|i| (i * 5 % 256) as u8).collect();
        let labels = [2i64, 0, 1];
        let tokens = [7u32, 8, 9, 10, 11, 12];
        let one_shot = dir.path().join("one.npz");
        write_images_npz(
            &one_shot,
            &images,
            n,
            h,
            w,
            &[
                NpyArray::I64 { name: LABELS_KEY, shape: &[3], data: &labels },
                NpyArray::U32 { name: "tokens", shape: &[3, 2], data: &tokens },
            ],
        )
        .unwrap();
        let streamed = dir.path().join("streamed.npz");
        write_npz_streamed(&streamed, |z| {
            z.start_array(IMAGES_KEY, "|u1", &[n as u64, h as u64, w as u64, 3])?;
            for chunk in images.chunks(h * w * 3) {
                z.write(chunk)?;
            }
            z.start_array(LABELS_KEY, "<i8", &[3])?;
            z.write(&labels.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>())?;
            let raw = read_raw_array(&one_shot, "tokens")?.unwrap();
            assert_eq!((raw.descr.as_str(), raw.shape.as_slice()), ("<u4", &[3u64, 2][..]));
            z.start_array("tokens", &raw.descr, &raw.shape)?;
            z.write(&raw.data)
        })
        .unwrap();
        assert_eq!(std::fs::read(&one_shot).unwrap(), std::fs::read(&streamed).unwrap());
        // A short array is an error and leaves no file.
        let short = dir.path().join("short.npz");
        let err = write_npz_streamed(&short, |z| {
            z.start_array(IMAGES_KEY, "|u1", &[1, 1, 1, 3])?;
            z.write(&[1, 2])
        })
        .unwrap_err();
        assert!(format!("{err:#}").contains("1 bytes short"), "{err:#}");
        assert!(!short.exists());
    }

    #[test]
    fn statistics_round_trip() {
        let dir = tmp();
        let path = dir.path().join("stats.npz");
        let pool = FeatureStats { n: 10, mu: vec![0.25, -1.5], sigma: vec![2.0, 0.5, 0.5, 1.0 / 3.0] };
        let spatial = FeatureStats { n: 10, mu: vec![1.0, 2.0, 3.0], sigma: (0..9).map(|i| i as f64).collect() };
        write_statistics(&path, &pool, Some(&spatial)).unwrap();
        let back = read_statistics(&path).unwrap();
        assert!(back.missing.is_empty());
        // sigma is stored as float64 (exact); mu as float32 (these means are exact in f32).
        assert_eq!(back.pool.unwrap(), pool);
        assert_eq!(back.spatial.unwrap(), spatial);
        write_statistics(&path, &pool, None).unwrap();
        let back = read_statistics(&path).unwrap();
        assert_eq!(back.missing, vec!["mu_s", "sigma_s"]);
        assert!(back.spatial.is_none());
        assert!(back.provenance.is_none());
        back.check_made_with(&path, "clean", "abc").unwrap();
    }

    #[test]
    fn statistics_record_how_they_were_made_and_refuse_other_settings() {
        let dir = tmp();
        let path = dir.path().join("stats.npz");
        let pool = FeatureStats { n: 3, mu: vec![0.5], sigma: vec![1.0] };
        let made = StatsProvenance { preprocess: "clean".into(), weights_sha1: "a16e4d89".into() };
        write_statistics_with(&path, &pool, None, Some(&made)).unwrap();
        let back = read_statistics(&path).unwrap();
        assert_eq!(back.provenance.as_ref(), Some(&made));
        assert_eq!(back.pool.as_ref(), Some(&pool));
        back.check_made_with(&path, "clean", "A16E4D89").unwrap();
        let err = back.check_made_with(&path, "adm", "a16e4d89").unwrap_err().to_string();
        assert!(err.contains("stats.npz") && err.contains("'clean'") && err.contains("'adm'"), "{err}");
        let err = back.check_made_with(&path, "clean", "ffff").unwrap_err().to_string();
        assert!(err.contains("a16e4d89") && err.contains("ffff") && err.contains("genbench stats"), "{err}");
    }

    #[test]
    fn missing_and_corrupt_files_are_named() {
        let dir = tmp();
        let missing = dir.path().join("missing.npz");
        let err = read_images_info(&missing).unwrap_err().to_string();
        assert!(err.contains("missing.npz") && err.contains("not found"), "{err}");
        let corrupt = dir.path().join("corrupt.npz");
        std::fs::write(&corrupt, b"PK\x03\x04 definitely not a zip").unwrap();
        let err = format!("{:#}", read_statistics(&corrupt).unwrap_err());
        assert!(err.contains("corrupt.npz") && err.contains("not a readable .npz"), "{err}");
    }

    #[test]
    fn wrong_image_arrays_are_rejected_with_their_dtype_and_shape() {
        let dir = tmp();
        let float_path = dir.path().join("float.npz");
        write_npz(&float_path, &[NpyArray::F32 { name: "arr_0", shape: &[1, 2, 2, 3], data: &[0.5; 12] }]).unwrap();
        let err = read_images_info(&float_path).unwrap_err().to_string();
        assert!(err.contains("float.npz") && err.contains("<f4") && err.contains("uint8"), "{err}");

        let gray_path = dir.path().join("gray.npz");
        write_npz(&gray_path, &[NpyArray::U8 { name: "arr_0", shape: &[2, 2, 2, 1], data: &[7; 8] }]).unwrap();
        let err = read_images_info(&gray_path).unwrap_err().to_string();
        assert!(err.contains("gray.npz") && err.contains("[2, 2, 2, 1]"), "{err}");

        let stats_only = dir.path().join("stats_only.npz");
        let s = FeatureStats { n: 3, mu: vec![0.0], sigma: vec![1.0] };
        write_statistics(&stats_only, &s, None).unwrap();
        let err = read_images_info(&stats_only).unwrap_err().to_string();
        assert!(err.contains("no arr_0"), "{err}");
    }

    #[test]
    fn non_finite_statistics_are_rejected_with_file_and_key() {
        let dir = tmp();
        let path = dir.path().join("nan.npz");
        write_npz(
            &path,
            &[
                NpyArray::F32 { name: "mu", shape: &[2], data: &[0.0, 1.0] },
                NpyArray::F64 { name: "sigma", shape: &[2, 2], data: &[1.0, f64::NAN, 0.0, 1.0] },
            ],
        )
        .unwrap();
        let err = read_statistics(&path).unwrap_err().to_string();
        assert!(err.contains("nan.npz") && err.contains("sigma") && err.contains("non-finite"), "{err}");
        // Writing non-finite statistics is refused too, and leaves no file.
        let bad = FeatureStats { n: 3, mu: vec![f64::INFINITY], sigma: vec![1.0] };
        let out = dir.path().join("out.npz");
        assert!(write_statistics(&out, &bad, None).is_err());
        assert!(!out.exists());
    }

    #[test]
    fn truncated_image_data_is_an_error() {
        let dir = tmp();
        let path = dir.path().join("short.npz");
        write_file_atomically(&path, |f| {
            let mut zip = ZipWriter::new(BufWriter::new(f));
            // Header promises 4 images of 2x2x3, data holds 1.
            write_npy_bytes(&mut zip, "arr_0", "|u1", &[4, 2, 2, 3], &[1u8; 12])?;
            finish_zip(zip)
        })
        .unwrap();
        let err = read_images(&path).unwrap_err().to_string();
        assert!(err.contains("short.npz") && err.contains("ends early"), "{err}");
    }

    #[test]
    fn failed_atomic_write_leaves_target_untouched() {
        let dir = tmp();
        let path = dir.path().join("keep.json");
        std::fs::write(&path, "old").unwrap();
        let err = write_file_atomically(&path, |f| {
            f.write_all(b"partial")?;
            bail!("simulated failure")
        });
        assert!(err.is_err());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
