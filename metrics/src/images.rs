//! Image folders as metric input: PNG/JPEG files sorted by file name, decoded to RGB u8 (grey
//! and RGBA are converted; alpha is dropped). All images must have the same size; an unreadable
//! image is an error naming it, never skipped. Files with other extensions are ignored and
//! counted so the caller can warn about them.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};

use crate::npz::ImagesInfo;

/// Extensions read from a folder (case-insensitive).
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg"];

/// The image files of a folder, in the order they are evaluated.
#[derive(Clone, Debug)]
pub struct ImageFolder {
    pub dir: PathBuf,
    pub files: Vec<PathBuf>,
    /// Files skipped because their extension is not an image extension.
    pub ignored_files: usize,
    pub h: usize,
    pub w: usize,
}

impl ImageFolder {
    /// Lists the images of `dir` (not recursive) and reads the first one's size.
    pub fn open(dir: &Path) -> Result<Self> {
        ensure!(dir.is_dir(), "{}: not a directory", dir.display());
        let mut files = Vec::new();
        let mut ignored_files = 0;
        for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
            let path = entry.with_context(|| format!("cannot list {}", dir.display()))?.path();
            if !path.is_file() {
                continue;
            }
            if has_image_extension(&path) {
                files.push(path);
            } else {
                ignored_files += 1;
            }
        }
        if files.is_empty() {
            bail!("{}: no PNG or JPEG images found", dir.display());
        }
        files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
        let (w, h) = image::image_dimensions(&files[0]).with_context(|| format!("cannot read image {}", files[0].display()))?;
        Ok(Self { dir: dir.to_owned(), files, ignored_files, h: h as usize, w: w as usize })
    }

    /// Reads every file's header (cheap, no decoding): an unreadable file or a size mismatch is
    /// reported before any expensive work starts.
    pub fn check_headers(&self) -> Result<()> {
        for path in &self.files {
            let (w, h) = image::image_dimensions(path)
                .with_context(|| format!("cannot read image {} (corrupt or not an image?)", path.display()))?;
            self.check_size(path, w, h)?;
        }
        Ok(())
    }

    fn check_size(&self, path: &Path, w: u32, h: u32) -> Result<()> {
        if (w as usize, h as usize) != (self.w, self.h) {
            bail!(
                "{}: image is {w}x{h} but {} is {}x{}; all images of a folder must have the same size",
                path.display(),
                self.files[0].display(),
                self.w,
                self.h
            );
        }
        Ok(())
    }

    pub fn info(&self) -> ImagesInfo {
        ImagesInfo { n: self.files.len(), h: self.h, w: self.w }
    }

    /// Decodes the images in order, `batch_images` at a time: `f(pixels, count)` gets NHWC RGB
    /// u8 bytes.
    pub fn for_each_batch(&self, batch_images: usize, mut f: impl FnMut(&[u8], usize) -> Result<()>) -> Result<()> {
        ensure!(batch_images > 0, "batch size must be at least 1");
        for chunk in self.files.chunks(batch_images) {
            let mut pixels = Vec::with_capacity(chunk.len() * self.info().image_bytes());
            for path in chunk {
                pixels.extend_from_slice(&self.decode(path)?);
            }
            f(&pixels, chunk.len())?;
        }
        Ok(())
    }

    /// Decodes every image (for small folders and tests).
    pub fn read_all(&self) -> Result<Vec<u8>> {
        let mut all = Vec::with_capacity(self.files.len() * self.info().image_bytes());
        self.for_each_batch(256, |p, _| {
            all.extend_from_slice(p);
            Ok(())
        })?;
        Ok(all)
    }

    fn decode(&self, path: &Path) -> Result<Vec<u8>> {
        let img =
            image::open(path).with_context(|| format!("cannot decode image {} (corrupt or not an image?)", path.display()))?.into_rgb8();
        self.check_size(path, img.width(), img.height())?;
        Ok(img.into_raw())
    }
}

fn has_image_extension(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, RgbImage};

    fn save_rgb(path: &Path, w: u32, h: u32, seed: u8) {
        RgbImage::from_fn(w, h, |x, y| image::Rgb([seed, x as u8, y as u8])).save(path).unwrap();
    }

    #[test]
    fn reads_sorted_rgb_and_converts_grey() {
        let dir = tempfile::tempdir().unwrap();
        save_rgb(&dir.path().join("b.png"), 4, 3, 2);
        save_rgb(&dir.path().join("a.PNG"), 4, 3, 1);
        GrayImage::from_pixel(4, 3, image::Luma([9])).save(dir.path().join("c.png")).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not an image").unwrap();
        let folder = ImageFolder::open(dir.path()).unwrap();
        assert_eq!(folder.info(), ImagesInfo { n: 3, h: 3, w: 4 });
        assert_eq!(folder.ignored_files, 1);
        let all = folder.read_all().unwrap();
        assert_eq!(all.len(), 3 * 4 * 3 * 3);
        // a.PNG first (R = 1), then b.png (R = 2), then the grey image replicated to RGB.
        assert_eq!(&all[..3], &[1, 0, 0]);
        assert_eq!(&all[36..39], &[2, 0, 0]);
        assert_eq!(&all[72..75], &[9, 9, 9]);
    }

    #[test]
    fn size_mismatch_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        save_rgb(&dir.path().join("a.png"), 4, 4, 1);
        save_rgb(&dir.path().join("b.png"), 5, 4, 1);
        let folder = ImageFolder::open(dir.path()).unwrap();
        let err = folder.read_all().unwrap_err().to_string();
        assert!(err.contains("b.png") && err.contains("5x4"), "{err}");
        let err = folder.check_headers().unwrap_err().to_string();
        assert!(err.contains("b.png") && err.contains("5x4"), "{err}");
    }

    #[test]
    fn unreadable_image_is_an_error_not_skipped() {
        let dir = tempfile::tempdir().unwrap();
        save_rgb(&dir.path().join("a.png"), 4, 4, 1);
        std::fs::write(dir.path().join("b.jpg"), b"garbage").unwrap();
        let folder = ImageFolder::open(dir.path()).unwrap();
        let err = format!("{:#}", folder.read_all().unwrap_err());
        assert!(err.contains("b.jpg"), "{err}");
        let err = format!("{:#}", folder.check_headers().unwrap_err());
        assert!(err.contains("b.jpg"), "{err}");
    }

    #[test]
    fn empty_or_missing_folder_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(ImageFolder::open(dir.path()).unwrap_err().to_string().contains("no PNG"));
        assert!(ImageFolder::open(&dir.path().join("nope")).is_err());
    }
}
