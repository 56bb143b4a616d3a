//! Batched Inception feature extraction from uint8 images, with an optional on-disk feature
//! cache (torch-fidelity style: features of the same images under the same preprocessing and
//! weights are computed once and shared between metrics and runs).

use crate::inception::network::{InceptionNet, NetOutput, INPUT_SIZE, LOGITS_DIM, POOL3_DIM, SPATIAL_DIM};
use crate::inception::weights::{default_cache_dir, fold_batch_norm, no_fc_message, WeightsSource};
use crate::preprocess::{preprocess_batch, Preprocess};
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

pub struct ExtractorOptions {
    pub preprocess: Preprocess,
    pub device: Device,
    /// Images per forward pass. On CPU the batch is split across threads image-wise, so use at
    /// least as many images as threads; activations take about 10 MB per image in flight (the
    /// 147x147 stem outputs dominate).
    pub batch_size: usize,
    pub weights: WeightsSource,
}

impl Default for ExtractorOptions {
    fn default() -> Self {
        Self { preprocess: Preprocess::Adm, device: Device::Cpu, batch_size: 32, weights: WeightsSource::Default }
    }
}

/// Features of `n` images, row-major.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Features {
    pub n: usize,
    /// [n, 2048] pool_3.
    pub pool3: Vec<f32>,
    /// [n, 2023] sFID features (`mixed_6/conv`, channels 0..7, H,W,C order).
    pub spatial: Vec<f32>,
    /// [n, 1008] logits without bias, when the weights have the classifier.
    pub logits: Option<Vec<f32>>,
}

impl Features {
    pub fn empty(with_logits: bool) -> Self {
        Self { n: 0, pool3: vec![], spatial: vec![], logits: with_logits.then(Vec::new) }
    }

    fn push(&mut self, out: NetOutput, n: usize) -> Result<()> {
        self.pool3.extend(out.pool3);
        self.spatial.extend(out.spatial);
        match (self.logits.as_mut(), out.logits) {
            (Some(all), Some(l)) => all.extend(l),
            (None, None) => {}
            _ => bail!("logits present in some batches only"),
        }
        self.n += n;
        Ok(())
    }

    /// Concatenates feature sets in order. All must agree on whether logits are present.
    pub fn concat(parts: impl IntoIterator<Item = Features>) -> Result<Features> {
        let mut parts = parts.into_iter();
        let Some(mut out) = parts.next() else { return Ok(Features::default()) };
        for p in parts {
            let n = p.n;
            out.push(NetOutput { pool3: p.pool3, spatial: p.spatial, logits: p.logits }, n)?;
        }
        Ok(out)
    }

    /// Rows `a..b` of every output.
    pub fn slice(&self, a: usize, b: usize) -> Features {
        Features {
            n: b - a,
            pool3: self.pool3[a * POOL3_DIM..b * POOL3_DIM].to_vec(),
            spatial: self.spatial[a * SPATIAL_DIM..b * SPATIAL_DIM].to_vec(),
            logits: self.logits.as_ref().map(|l| l[a * LOGITS_DIM..b * LOGITS_DIM].to_vec()),
        }
    }

    fn check(&self) -> Result<()> {
        if self.pool3.len() != self.n * POOL3_DIM || self.spatial.len() != self.n * SPATIAL_DIM {
            bail!("feature arrays do not match n = {}", self.n);
        }
        if let Some(l) = &self.logits {
            if l.len() != self.n * LOGITS_DIM {
                bail!("logits do not match n = {}", self.n);
            }
        }
        Ok(())
    }

    /// Writes the features as safetensors (`pool3`, `spatial`, optional `logits`), atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        self.check()?;
        let dev = Device::Cpu;
        let mut m = BTreeMap::new();
        m.insert("pool3".to_string(), Tensor::from_slice(&self.pool3, (self.n, POOL3_DIM), &dev)?);
        m.insert("spatial".to_string(), Tensor::from_slice(&self.spatial, (self.n, SPATIAL_DIM), &dev)?);
        if let Some(l) = &self.logits {
            m.insert("logits".to_string(), Tensor::from_slice(l, (self.n, LOGITS_DIM), &dev)?);
        }
        genbench_runtime::checkpoint::save_safetensors_atomic(&m, path)
    }

    pub fn load(path: &Path) -> Result<Features> {
        let m = genbench_runtime::checkpoint::load_safetensors(path, &Device::Cpu)?;
        let get = |k: &str| -> Result<Option<(usize, Vec<f32>)>> {
            match m.get(k) {
                Some(t) => Ok(Some((t.dim(0)?, t.flatten_all()?.to_vec1::<f32>()?))),
                None => Ok(None),
            }
        };
        let (n, pool3) = get("pool3")?.with_context(|| format!("{} has no pool3", path.display()))?;
        let (_, spatial) = get("spatial")?.with_context(|| format!("{} has no spatial", path.display()))?;
        let logits = get("logits")?.map(|(_, v)| v);
        let f = Features { n, pool3, spatial, logits };
        f.check().with_context(|| format!("{} is inconsistent", path.display()))?;
        Ok(f)
    }
}

pub struct InceptionExtractor {
    net: InceptionNet,
    preprocess: Preprocess,
    batch_size: usize,
    weights_sha1: String,
    weights_origin: String,
    no_fc_message: String,
    has_fc: bool,
    cache_dir: PathBuf,
}

impl InceptionExtractor {
    /// Resolves the weights (fetching the default ones once if needed) with the default cache
    /// folder ([`default_cache_dir`]) and builds the network on `opts.device`.
    pub fn new(opts: ExtractorOptions) -> Result<Self> {
        Self::new_in(opts, &default_cache_dir())
    }

    /// As [`new`](Self::new) with an explicit cache folder (`--cache-dir`): it holds the
    /// converted default weights and the feature cache.
    pub fn new_in(opts: ExtractorOptions, cache_dir: &Path) -> Result<Self> {
        if opts.batch_size == 0 {
            bail!("batch size must be at least 1");
        }
        let resolved = opts.weights.resolve(cache_dir)?;
        let folded = fold_batch_norm(&resolved.tensors)?;
        let net = InceptionNet::new(&folded, &opts.device)?;
        let has_fc = resolved.has_fc();
        Ok(Self {
            net,
            preprocess: opts.preprocess,
            batch_size: opts.batch_size,
            weights_sha1: resolved.sha1,
            no_fc_message: if has_fc { String::new() } else { no_fc_message(&resolved.origin) },
            weights_origin: resolved.origin,
            has_fc,
            cache_dir: cache_dir.to_path_buf(),
        })
    }

    pub fn has_logits(&self) -> bool {
        self.has_fc
    }

    /// SHA-1 of the weights file the network was read from.
    pub fn weights_sha1(&self) -> &str {
        &self.weights_sha1
    }

    pub fn weights_origin(&self) -> &str {
        &self.weights_origin
    }

    /// Why IS is unavailable and how to fix it (empty when logits are available).
    pub fn no_fc_message(&self) -> &str {
        &self.no_fc_message
    }

    pub fn preprocess(&self) -> Preprocess {
        self.preprocess
    }

    /// Features of `n` uint8 NHWC RGB images of `h`x`w`.
    pub fn extract(&self, images: &[u8], n: usize, h: usize, w: usize) -> Result<Features> {
        self.extract_with_progress(images, n, h, w, &mut |_, _| {})
    }

    /// As [`extract`](Self::extract), calling `progress(done, total)` after every batch.
    pub fn extract_with_progress(
        &self,
        images: &[u8],
        n: usize,
        h: usize,
        w: usize,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Features> {
        let per_image = h * w * 3;
        if images.len() != n * per_image {
            bail!("expected {n} images of {h}x{w}x3 ({} bytes), got {} bytes", n * per_image, images.len());
        }
        let mut out = Features::empty(self.has_fc);
        let mut start = 0;
        while start < n {
            let b = self.batch_size.min(n - start);
            let x = preprocess_batch(&images[start * per_image..(start + b) * per_image], b, h, w, self.preprocess)?;
            debug_assert_eq!(x.len(), b * INPUT_SIZE * INPUT_SIZE * 3);
            let y = self.net.forward_nhwc(&x, b)?;
            out.push(y, b)?;
            start += b;
            progress(start, n);
        }
        Ok(out)
    }

    /// Cache key of a set of images (see [`FeatureCache::key`]).
    pub fn cache_key(&self, images: &[u8], n: usize, h: usize, w: usize) -> String {
        FeatureCache::key(self, images, n, h, w)
    }

    /// Path of the cached features for `key` in this extractor's own cache folder.
    pub fn feature_cache_path(&self, key: &str) -> PathBuf {
        FeatureCache::in_folder(&self.cache_dir).path(key)
    }

    /// [`FeatureCache::extract`] with this extractor's own cache folder
    /// (`<cache>/features/`). Returns the features and whether they came from the cache.
    pub fn extract_cached(&self, images: &[u8], n: usize, h: usize, w: usize) -> Result<(Features, bool)> {
        FeatureCache::in_folder(&self.cache_dir).extract(self, images, n, h, w)
    }
}

/// The on-disk feature cache: one safetensors file per set of images, keyed by the images'
/// content (with their shape), the preprocessing and the Inception weights' SHA-1, so the same
/// pixels scored the same way are extracted once, whoever asks (a suite run, `genbench eval`,
/// the strategy search), and nothing stale is ever reused.
#[derive(Debug)]
pub struct FeatureCache {
    dir: PathBuf,
    hits: AtomicUsize,
    misses: AtomicUsize,
}

impl FeatureCache {
    /// A cache whose files live in `<folder>/features/`.
    pub fn in_folder(folder: &Path) -> Self {
        Self { dir: folder.join("features"), hits: AtomicUsize::new(0), misses: AtomicUsize::new(0) }
    }

    /// Lookups answered from disk, and lookups that ran the network, since this cache was made.
    pub fn counts(&self) -> (usize, usize) {
        (self.hits.load(Ordering::Relaxed), self.misses.load(Ordering::Relaxed))
    }

    /// Content hash (with the shape), preprocessing, weights.
    pub fn key(extractor: &InceptionExtractor, images: &[u8], n: usize, h: usize, w: usize) -> String {
        let mut header = format!("{n}x{h}x{w}x3;").into_bytes();
        header.extend_from_slice(images);
        let content = genbench_runtime::hash::sha256_bytes(&header);
        let sha1 = extractor.weights_sha1();
        format!("{}-{}-{}", &content[..32], extractor.preprocess(), &sha1[..12.min(sha1.len())])
    }

    pub fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.safetensors"))
    }

    /// Features of the images: read from the cache when present and consistent, else extracted
    /// and written atomically. Returns whether they came from the cache.
    pub fn extract(&self, extractor: &InceptionExtractor, images: &[u8], n: usize, h: usize, w: usize) -> Result<(Features, bool)> {
        let path = self.path(&Self::key(extractor, images, n, h, w));
        if path.is_file() {
            match Features::load(&path) {
                Ok(f) if f.n == n && f.logits.is_some() == extractor.has_logits() => {
                    self.hits.fetch_add(1, Ordering::Relaxed);
                    return Ok((f, true));
                }
                Ok(_) => eprintln!("warning: {} does not match the request; recomputing", path.display()),
                Err(e) => eprintln!("warning: unreadable feature cache {} ({e:#}); recomputing", path.display()),
            }
        }
        let f = extractor.extract(images, n, h, w)?;
        f.save(&path)?;
        self.misses.fetch_add(1, Ordering::Relaxed);
        Ok((f, false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(n: usize, base: f32, logits: bool) -> Features {
        Features {
            n,
            pool3: (0..n * POOL3_DIM).map(|i| base + i as f32).collect(),
            spatial: (0..n * SPATIAL_DIM).map(|i| base - i as f32).collect(),
            logits: logits.then(|| (0..n * LOGITS_DIM).map(|i| base * i as f32).collect()),
        }
    }

    #[test]
    fn concat_slice_and_round_trip() {
        let a = fake(2, 1.0, true);
        let b = fake(3, 100.0, true);
        let all = Features::concat([a.clone(), b.clone()]).unwrap();
        assert_eq!(all.n, 5);
        assert_eq!(all.slice(0, 2), a);
        assert_eq!(all.slice(2, 5), b);
        assert!(Features::concat([a.clone(), fake(1, 0.0, false)]).is_err());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f/x.safetensors");
        all.save(&p).unwrap();
        assert_eq!(Features::load(&p).unwrap(), all);
        let nolog = fake(2, 3.0, false);
        nolog.save(&p).unwrap();
        assert_eq!(Features::load(&p).unwrap(), nolog);
    }
}
