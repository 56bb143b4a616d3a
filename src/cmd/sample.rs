//! `genbench sample`: draw class-conditional samples into an ADM-format `.npz`.
//!
//! * `--n N`: N labels cycling over the classes (`i mod num_classes`, so 50 per class for 50k),
//!   shuffled with the seed: `arr_0` is in random class order, `arr_1` holds the labels.
//!   `--labels 5,2,...`: exactly those classes in that order.
//! * Resumable: images are produced in shards of `--batch` images, each written atomically to
//!   `<out>.parts/shard_XXXXX.npz`, next to a `manifest.json` holding the settings and their
//!   hash. Shard `s` is sampled with a seed derived from `(seed, s)`, so a run that is stopped
//!   and started again produces the same file as one uninterrupted run; resuming with different
//!   settings is refused. The final `<out>` is written (atomically, streaming shard by shard) only
//!   once every shard exists; the parts folder is then removed.
//! * `--save-tokens`: also stores the sampled tokens as `tokens`: ids (uint32, `[N, T]`) for the
//!   discrete families, latent tokens (float32, `[N, C·h·w]`, MAR: still scaled by 0.2325, in
//!   the latent's `(C, h, w)` order) for MAR.
//! * Bad requests fail before any model is loaded: n <= 0, class ids out of range, an output
//!   path that cannot be written.

use super::model_registry::{parse_labels, resolve, ModelArgs, SamplerArgs};
use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use genbench_metrics::npz::{read_images, read_int_array, write_images_npz, NpyArray, IMAGES_KEY, LABELS_KEY};
use genbench_models::generator::NoObserver;
use genbench_runtime::{DTypePolicy, DeviceChoice, RandomSource, SeededSource};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Name of the optional token array.
pub const TOKENS_KEY: &str = "tokens";

#[derive(Args, Debug)]
pub struct SampleArgs {
    #[command(flatten)]
    pub generator: ModelArgs,
    /// Number of images (labels cycle over the classes, shuffled with the seed).
    #[arg(long, allow_hyphen_values = true)]
    pub n: Option<i64>,
    /// Exactly these class ids, in this order (comma-separated).
    #[arg(long, conflicts_with = "n")]
    pub labels: Option<String>,
    #[command(flatten)]
    pub sampler: SamplerArgs,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Images per forward batch and per shard.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Output .npz (ADM format).
    #[arg(long)]
    pub out: PathBuf,
    /// Also store the sampled tokens (`tokens`): ids, or MAR's latent tokens.
    #[arg(long)]
    pub save_tokens: bool,
    /// cpu, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    /// f32, f16 or bf16 (f32 on the CPU).
    #[arg(long, default_value = "f32")]
    pub dtype: DTypePolicy,
    /// Stop after sampling this many shards, leaving the run resumable (tests of resumption).
    #[arg(long, hide = true)]
    pub stop_after_shards: Option<usize>,
}

/// The labels of a run: given, or `i mod classes` for i < n shuffled with the seed.
pub fn plan_labels(n: Option<i64>, labels: Option<&str>, num_classes: usize, seed: u64) -> Result<Vec<u32>> {
    let labels = match (n, labels) {
        (_, Some(l)) => {
            let l = parse_labels(l)?;
            ensure!(!l.is_empty(), "--labels is empty");
            l
        }
        (Some(n), None) => {
            ensure!(n > 0, "--n must be positive, got {n}");
            let n = n as usize;
            // A stream of its own so the label order does not depend on the shard streams.
            let mut rng = SeededSource::for_stream(seed, u64::MAX);
            let perm = rng.permutation(n)?;
            perm.into_iter().map(|i| (i % num_classes) as u32).collect()
        }
        (None, None) => bail!("give --n N or --labels a,b,c"),
    };
    if let Some(&bad) = labels.iter().find(|&&l| l as usize >= num_classes) {
        bail!("class id {bad} is out of range: the model has {num_classes} classes (0..{})", num_classes - 1);
    }
    Ok(labels)
}

/// Fails unless files can be created next to `out` (checked by creating and removing a probe).
fn check_writable(out: &Path) -> Result<()> {
    ensure!(!out.is_dir(), "--out {} is a directory; give a file name such as samples.npz", out.display());
    let dir = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    ensure!(dir.is_dir(), "--out {}: folder {} does not exist", out.display(), dir.display());
    let probe = dir.join(format!(".genbench-write-probe-{}", std::process::id()));
    std::fs::write(&probe, b"").with_context(|| format!("--out {}: cannot write in {}", out.display(), dir.display()))?;
    std::fs::remove_file(&probe).ok();
    Ok(())
}

fn parts_dir(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".parts");
    PathBuf::from(s)
}

fn shard_path(parts: &Path, shard: usize) -> PathBuf {
    parts.join(format!("shard_{shard:05}.npz"))
}

/// Seed of shard `s`: independent of how many shards ran before in this process.
pub fn shard_seed(seed: u64, shard: usize) -> u64 {
    SeededSource::for_stream(seed, shard as u64).next_u64()
}

pub fn run(args: SampleArgs) -> Result<()> {
    // 1. Everything that can be checked without weights.
    ensure!(args.batch > 0, "--batch must be at least 1");
    if args.out.exists() {
        bail!("--out {} already exists; remove it or choose another name", args.out.display());
    }
    check_writable(&args.out)?;
    let req = args.generator.request(args.sampler.to_settings());
    let resolved = resolve(&req)?;
    let labels = plan_labels(args.n, args.labels.as_deref(), resolved.num_classes, args.seed)?;
    let n = labels.len();
    let shards: Vec<&[u32]> = labels.chunks(args.batch).collect();

    // 2. The parts folder and its manifest.
    let config_text = match &args.generator.config {
        Some(p) => std::fs::read_to_string(p)?,
        None => String::new(),
    };
    let manifest = serde_json::json!({
        "model": resolved.name,
        "family": resolved.family,
        "config": serde_json::from_str::<serde_json::Value>(&config_text).unwrap_or(serde_json::Value::Null),
        "ckpt": args.generator.ckpt.as_ref().map(|p| p.display().to_string()),
        "vae": args.generator.vae.as_ref().map(|p| p.display().to_string()),
        "random_init": args.generator.random_init,
        "settings": resolved.settings,
        "seed": args.seed,
        "batch": args.batch,
        "n": n,
        "labels_sha256": genbench_runtime::hash::sha256_bytes(&labels.iter().flat_map(|l| l.to_le_bytes()).collect::<Vec<u8>>()),
        "save_tokens": args.save_tokens,
        "dtype": args.dtype.name(),
        "image_size": resolved.image_size,
    });
    let hash = genbench_runtime::hash::sha256_bytes(serde_json::to_string(&manifest)?.as_bytes());
    let parts = parts_dir(&args.out);
    let manifest_path = parts.join("manifest.json");
    if manifest_path.is_file() {
        let old: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&manifest_path)?)
            .with_context(|| format!("{} is corrupt; delete {} to start over", manifest_path.display(), parts.display()))?;
        if old.get("settings_sha256").and_then(|v| v.as_str()) != Some(hash.as_str()) {
            bail!(
                "{} holds a run with other settings (previous: {}); delete that folder to start over, or rerun with the same settings",
                parts.display(),
                serde_json::to_string(old.get("run").unwrap_or(&old))?
            );
        }
    } else {
        std::fs::create_dir_all(&parts).with_context(|| format!("cannot create {}", parts.display()))?;
        let body = serde_json::json!({ "settings_sha256": hash, "run": manifest });
        std::fs::write(&manifest_path, serde_json::to_string_pretty(&body)?)?;
    }
    let todo: Vec<usize> = (0..shards.len()).filter(|&s| !shard_path(&parts, s).is_file()).collect();
    let done_images: usize = (0..shards.len()).filter(|s| !todo.contains(s)).map(|s| shards[s].len()).sum();
    if done_images > 0 {
        eprintln!("resuming: {done_images} of {n} images already in {}", parts.display());
    }

    // 3. Sampling.
    if !todo.is_empty() {
        let device = args.device.open()?;
        let dtype = args.dtype.compute_dtype(&device)?;
        eprintln!(
            "loading {} ({}; {} classes, {} px) on {}",
            resolved.name,
            serde_json::to_string(&resolved.settings)?,
            resolved.num_classes,
            resolved.image_size,
            genbench_runtime::device::describe(&device)
        );
        let mut generator = resolved.build(&device, dtype)?;
        let bar = indicatif::ProgressBar::new(n as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} images  {per_sec}  eta {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_position(done_images as u64);
        let limit = args.stop_after_shards.unwrap_or(usize::MAX);
        let stopping = todo.len() > limit;
        for s in todo.into_iter().take(limit) {
            let shard_labels = shards[s];
            let samples = generator.sample(shard_labels, shard_seed(args.seed, s), &mut NoObserver)?;
            ensure!(samples.n == shard_labels.len(), "generator returned {} images for {} labels", samples.n, shard_labels.len());
            let lab: Vec<i64> = shard_labels.iter().map(|&l| l as i64).collect();
            let lab_shape = [lab.len() as u64];
            let mut extra = vec![NpyArray::I64 { name: LABELS_KEY, shape: &lab_shape, data: &lab }];
            let (ids, latents) = if args.save_tokens {
                match (&samples.token_ids, &samples.latents) {
                    (Some(ids), _) => (Some(ids.clone()), None),
                    (None, Some(lat)) => (None, Some(lat.clone())),
                    (None, None) => bail!("this generator returns neither token ids nor latents (--save-tokens)"),
                }
            } else {
                (None, None)
            };
            let tok_shape;
            if let Some(t) = &ids {
                tok_shape = [samples.n as u64, (t.len() / samples.n) as u64];
                extra.push(NpyArray::U32 { name: TOKENS_KEY, shape: &tok_shape, data: t });
            }
            let lat_shape;
            if let Some(l) = &latents {
                lat_shape = [samples.n as u64, (l.len() / samples.n) as u64];
                extra.push(NpyArray::F32 { name: TOKENS_KEY, shape: &lat_shape, data: l });
            }
            write_images_npz(&shard_path(&parts, s), &samples.images, samples.n, samples.height, samples.width, &extra)?;
            bar.inc(samples.n as u64);
        }
        bar.finish();
        if stopping {
            eprintln!("stopped after {limit} shard(s) as asked; run the same command again to continue");
            return Ok(());
        }
    }

    // 4. The final file, streamed from the shards.
    let shard_files: Vec<PathBuf> = (0..shards.len()).map(|s| shard_path(&parts, s)).collect();
    concat_shards(&shard_files, &args.out, args.save_tokens)?;
    std::fs::remove_dir_all(&parts).with_context(|| format!("{} written, but {} could not be removed", args.out.display(), parts.display()))?;
    eprintln!("wrote {} ({n} images)", args.out.display());
    Ok(())
}

/// The npy v1.0 header for a C-ordered array (padded so the data starts 64-byte aligned).
fn npy_header(descr: &str, shape: &[u64]) -> Vec<u8> {
    let shape_str = match shape {
        [one] => format!("({one},)"),
        _ => format!("({})", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_str}, }}");
    let total = 10 + dict.len() + 1;
    dict.push_str(&" ".repeat((64 - total % 64) % 64));
    dict.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out
}

/// Writes `out` = `arr_0` (all shards' images), `arr_1` (labels) and optionally `tokens`, one
/// shard in memory at a time, into a temporary file renamed into place when complete.
fn concat_shards(shards: &[PathBuf], out: &Path, tokens: bool) -> Result<()> {
    let mut infos = vec![];
    let mut labels: Vec<i64> = vec![];
    let mut token_rows: Vec<u32> = vec![];
    // MAR stores float latents under the same key.
    let mut latent_rows: Vec<f32> = vec![];
    for p in shards {
        infos.push(genbench_metrics::npz::read_images_info(p)?);
        labels.extend(read_int_array(p, LABELS_KEY)?.with_context(|| format!("{}: no labels", p.display()))?);
        if tokens {
            if let Ok(Some((lat, _))) = genbench_metrics::npz::read_f32_array(p, TOKENS_KEY) {
                latent_rows.extend(lat);
            } else {
                let t = read_int_array(p, TOKENS_KEY)?.with_context(|| format!("{}: no tokens", p.display()))?;
                token_rows.extend(t.into_iter().map(|v| v as u32));
            }
        }
    }
    ensure!(token_rows.is_empty() || latent_rows.is_empty(), "shards mix token ids and latents");
    let (h, w) = (infos[0].h, infos[0].w);
    ensure!(infos.iter().all(|i| i.h == h && i.w == w), "shards disagree on the image size");
    let n: usize = infos.iter().map(|i| i.n).sum();
    ensure!(labels.len() == n, "shards hold {n} images but {} labels", labels.len());
    genbench_metrics::npz::write_file_atomically(out, |file| {
        let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored).large_file(true);
        let mut zip = zip::ZipWriter::new(std::io::BufWriter::new(file));
        zip.start_file(format!("{IMAGES_KEY}.npy"), opts)?;
        zip.write_all(&npy_header("|u1", &[n as u64, h as u64, w as u64, 3]))?;
        for p in shards {
            let (pixels, _) = read_images(p)?;
            zip.write_all(&pixels)?;
        }
        zip.start_file(format!("{LABELS_KEY}.npy"), opts)?;
        zip.write_all(&npy_header("<i8", &[n as u64]))?;
        zip.write_all(&labels.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>())?;
        if tokens && !latent_rows.is_empty() {
            let t = latent_rows.len() / n.max(1);
            zip.start_file(format!("{TOKENS_KEY}.npy"), opts)?;
            zip.write_all(&npy_header("<f4", &[n as u64, t as u64]))?;
            zip.write_all(&latent_rows.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>())?;
        } else if tokens {
            let t = token_rows.len() / n.max(1);
            zip.start_file(format!("{TOKENS_KEY}.npy"), opts)?;
            zip.write_all(&npy_header("<u4", &[n as u64, t as u64]))?;
            zip.write_all(&token_rows.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>())?;
        }
        zip.finish()?.flush()?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_cycle_classes_in_shuffled_order() {
        let l = plan_labels(Some(40), None, 10, 0).unwrap();
        let mut counts = [0; 10];
        l.iter().for_each(|&c| counts[c as usize] += 1);
        assert_eq!(counts, [4; 10]);
        assert_ne!(l, (0..40).map(|i| (i % 10) as u32).collect::<Vec<_>>(), "must be shuffled");
        assert_eq!(l, plan_labels(Some(40), None, 10, 0).unwrap());
        assert_ne!(l, plan_labels(Some(40), None, 10, 1).unwrap());
        assert_eq!(plan_labels(None, Some("5,2,9"), 10, 0).unwrap(), vec![5, 2, 9]);
        assert!(plan_labels(Some(0), None, 10, 0).unwrap_err().to_string().contains("--n must be positive"));
        assert!(plan_labels(Some(-3), None, 10, 0).is_err());
        assert!(plan_labels(None, Some("3,10"), 10, 0).unwrap_err().to_string().contains("class id 10 is out of range"));
    }

    #[test]
    fn npy_header_is_aligned_and_parsable() {
        let h = npy_header("|u1", &[2, 4, 4, 3]);
        assert_eq!(h.len() % 64, 0);
        let text = String::from_utf8_lossy(&h[10..]);
        assert!(text.contains("'shape': (2, 4, 4, 3)") && text.ends_with('\n'));
        assert!(String::from_utf8_lossy(&npy_header("<i8", &[7])).contains("(7,)"));
    }

    #[test]
    fn unwritable_output_is_refused() {
        assert!(check_writable(Path::new("/nonexistent-dir/x.npz")).is_err());
        let d = tempfile::tempdir().unwrap();
        check_writable(&d.path().join("x.npz")).unwrap();
        assert!(check_writable(d.path()).is_err());
    }
}
