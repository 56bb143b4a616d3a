//! Image preprocessing in front of the FID Inception: uint8 NHWC RGB in, normalised f32 NHWC
//! 299x299x3 out. Three conventions, because the anchors disagree (METRICS.md section 3):
//!
//! * [`Preprocess::Adm`] (default; ADM evaluator, torch-fidelity, StyleGAN): TF1 "legacy"
//!   `ResizeBilinear` (align_corners=False, half_pixel_centers=False: `src = dst * in / out`,
//!   no antialiasing) on float32, always run (an exact identity at 299), then `(x - 128) / 128`.
//! * [`Preprocess::Clean`] (clean-fid "clean"): Pillow bicubic on each channel as a float image
//!   (antialiased when downscaling), clipped to [0, 255], then `(x - 128) / 128`.
//! * [`Preprocess::Pytorch`] (pytorch-fid): `x / 255`, PyTorch half-pixel bilinear
//!   (align_corners=False, no antialias), then `2x - 1`.

use anyhow::{bail, Result};
use rayon::prelude::*;
use std::fmt;
use std::str::FromStr;

pub const OUT_SIZE: usize = 299;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Preprocess {
    #[default]
    Adm,
    Clean,
    Pytorch,
}

impl FromStr for Preprocess {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "adm" | "tf" | "legacy_tensorflow" => Ok(Self::Adm),
            "clean" => Ok(Self::Clean),
            "pytorch" | "legacy_pytorch" | "pytorch-fid" => Ok(Self::Pytorch),
            other => bail!("unknown preprocessing '{other}': expected adm, clean or pytorch"),
        }
    }
}

impl fmt::Display for Preprocess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Adm => "adm",
            Self::Clean => "clean",
            Self::Pytorch => "pytorch",
        })
    }
}

/// Preprocesses `n` uint8 images of `h`x`w`x3 (NHWC, RGB) into normalised f32 NHWC 299x299x3.
pub fn preprocess_batch(images: &[u8], n: usize, h: usize, w: usize, mode: Preprocess) -> Result<Vec<f32>> {
    let per_in = h * w * 3;
    if h == 0 || w == 0 {
        bail!("images must be at least 1x1, got {h}x{w}");
    }
    if images.len() != n * per_in {
        bail!("expected {n} images of {h}x{w}x3 = {} bytes, got {}", n * per_in, images.len());
    }
    let per_out = OUT_SIZE * OUT_SIZE * 3;
    let mut out = vec![0f32; n * per_out];
    out.par_chunks_mut(per_out).zip(images.par_chunks(per_in)).try_for_each(|(dst, src)| -> Result<()> {
        let x: Vec<f32> = src.iter().map(|&v| v as f32).collect();
        match mode {
            Preprocess::Adm => {
                resize_bilinear_tf1(&x, h, w, 3, OUT_SIZE, OUT_SIZE, dst);
                // (x - 128) / 128 == (x - 128) * 2^-7 exactly in f32, as in the TF graph.
                dst.iter_mut().for_each(|v| *v = (*v - 128.0) / 128.0);
            }
            Preprocess::Clean => {
                resize_bicubic_pillow(&x, h, w, 3, OUT_SIZE, OUT_SIZE, dst)?;
                dst.iter_mut().for_each(|v| *v = (v.clamp(0.0, 255.0) - 128.0) / 128.0);
            }
            Preprocess::Pytorch => {
                let unit: Vec<f32> = x.iter().map(|v| v / 255.0).collect();
                resize_bilinear_half_pixel(&unit, h, w, 3, OUT_SIZE, OUT_SIZE, dst);
                dst.iter_mut().for_each(|v| *v = 2.0 * *v - 1.0);
            }
        }
        Ok(())
    })?;
    Ok(out)
}

/// Source index pairs and weights of TF1 legacy bilinear along one axis, in f32 arithmetic
/// exactly as TF computes them: `s = f32(o) * (f32(in) / f32(out))`.
fn tf1_axis(inp: usize, out: usize) -> Vec<(usize, usize, f32)> {
    let scale = inp as f32 / out as f32;
    (0..out)
        .map(|o| {
            let s = o as f32 * scale;
            let lo = s.floor();
            let hi = (s.ceil() as usize).min(inp - 1);
            (lo as usize, hi, s - lo)
        })
        .collect()
}

/// TF1 `ResizeBilinear` with align_corners=False and half_pixel_centers=False on an HWC image.
/// The interpolation is `top = tl + (tr - tl) * dx; bottom = …; out = top + (bottom - top) * dy`
/// in f32, in that order (no fused multiply-add), which is what makes it bit-exact with TF on CPU.
pub fn resize_bilinear_tf1(src: &[f32], h: usize, w: usize, c: usize, out_h: usize, out_w: usize, dst: &mut [f32]) {
    let ys = tf1_axis(h, out_h);
    let xs = tf1_axis(w, out_w);
    for (oy, &(y0, y1, dy)) in ys.iter().enumerate() {
        for (ox, &(x0, x1, dx)) in xs.iter().enumerate() {
            for ch in 0..c {
                let at = |y: usize, x: usize| src[(y * w + x) * c + ch];
                let (tl, tr, bl, br) = (at(y0, x0), at(y0, x1), at(y1, x0), at(y1, x1));
                let top = tl + (tr - tl) * dx;
                let bottom = bl + (br - bl) * dx;
                dst[(oy * out_w + ox) * c + ch] = top + (bottom - top) * dy;
            }
        }
    }
}

/// PyTorch `F.interpolate(mode='bilinear', align_corners=False, antialias=False)` along one axis:
/// `s = max((o + 0.5) * in / out - 0.5, 0)`, neighbours `floor(s)` and the next one clamped.
fn half_pixel_axis(inp: usize, out: usize) -> Vec<(usize, usize, f32)> {
    let scale = inp as f32 / out as f32;
    (0..out)
        .map(|o| {
            let s = ((o as f32 + 0.5) * scale - 0.5).max(0.0);
            let lo = (s as usize).min(inp - 1);
            let hi = if lo < inp - 1 { lo + 1 } else { lo };
            (lo, hi, s - lo as f32)
        })
        .collect()
}

/// Half-pixel bilinear resize (pytorch-fid's `F.interpolate`) on an HWC image.
pub fn resize_bilinear_half_pixel(src: &[f32], h: usize, w: usize, c: usize, out_h: usize, out_w: usize, dst: &mut [f32]) {
    let ys = half_pixel_axis(h, out_h);
    let xs = half_pixel_axis(w, out_w);
    for (oy, &(y0, y1, ly)) in ys.iter().enumerate() {
        for (ox, &(x0, x1, lx)) in xs.iter().enumerate() {
            for ch in 0..c {
                let at = |y: usize, x: usize| src[(y * w + x) * c + ch];
                let top = (1.0 - lx) * at(y0, x0) + lx * at(y0, x1);
                let bottom = (1.0 - lx) * at(y1, x0) + lx * at(y1, x1);
                dst[(oy * out_w + ox) * c + ch] = (1.0 - ly) * top + ly * bottom;
            }
        }
    }
}

/// Pillow's `Image.resize(BICUBIC)` on each channel as a mode-'F' float image (clean-fid
/// "clean"). fast_image_resize's F32 `Convolution(CatmullRom)` reproduces Pillow's coefficients
/// and pass order exactly (RUST-NOTES section 6). Same size is a plain copy, as in Pillow.
pub fn resize_bicubic_pillow(src: &[f32], h: usize, w: usize, c: usize, out_h: usize, out_w: usize, dst: &mut [f32]) -> Result<()> {
    use fast_image_resize::images::{TypedImage, TypedImageRef};
    use fast_image_resize::pixels::F32;
    use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};
    if h == out_h && w == out_w {
        dst.copy_from_slice(src);
        return Ok(());
    }
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::CatmullRom));
    let mut resizer = Resizer::new();
    for ch in 0..c {
        let plane: Vec<F32> = src.iter().skip(ch).step_by(c).map(|&v| F32::new(v)).collect();
        let src_img = TypedImageRef::new(w as u32, h as u32, &plane)?;
        let mut dst_img = TypedImage::<F32>::new(out_w as u32, out_h as u32);
        resizer.resize_typed(&src_img, &mut dst_img, &options)?;
        for (i, p) in dst_img.pixels().iter().enumerate() {
            dst[i * c + ch] = p.0;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tf1_resize_small_known_cases() {
        // 2x2 -> 4x4, one channel: src = dst * 0.5, so rows/cols 0,0.5,1,1(clamped).
        let src = [0.0f32, 10.0, 20.0, 30.0];
        let mut dst = [0f32; 16];
        resize_bilinear_tf1(&src, 2, 2, 1, 4, 4, &mut dst);
        assert_eq!(dst, [0.0, 5.0, 10.0, 10.0, 10.0, 15.0, 20.0, 20.0, 20.0, 25.0, 30.0, 30.0, 20.0, 25.0, 30.0, 30.0]);
        // 4 -> 2 (no antialias): picks source 0 and 2.
        let src = [1.0f32, 2.0, 3.0, 4.0];
        let mut dst = [0f32; 2];
        resize_bilinear_tf1(&src, 1, 4, 1, 1, 2, &mut dst);
        assert_eq!(dst, [1.0, 3.0]);
        // Identity at equal sizes.
        let src: Vec<f32> = (0..27).map(|v| v as f32 * 1.5).collect();
        let mut dst = vec![0f32; 27];
        resize_bilinear_tf1(&src, 3, 3, 3, 3, 3, &mut dst);
        assert_eq!(dst, src);
    }

    #[test]
    fn tf1_resize_uses_float32_scale() {
        // 3 -> 7: scale = f32(3/7); position 6 -> 2.5714285 must interpolate 2 and clamp(3)->2.
        let src = [0.0f32, 7.0, 14.0];
        let mut dst = [0f32; 7];
        resize_bilinear_tf1(&src, 1, 3, 1, 1, 7, &mut dst);
        let scale = 3f32 / 7f32;
        for (o, v) in dst.iter().enumerate() {
            let s = o as f32 * scale;
            let lo = s.floor() as usize;
            let hi = (lo + 1).min(2);
            let want = src[lo] + (src[hi] - src[lo]) * (s - s.floor());
            assert_eq!(*v, want, "o={o}");
        }
        assert_eq!(dst[6], 14.0);
    }

    #[test]
    fn half_pixel_bilinear_known_cases() {
        // 2 -> 4: s = (o+0.5)/2 - 0.5 = -0.25 (clamped 0), 0.25, 0.75, 1.25 (hi clamped).
        let src = [0.0f32, 8.0];
        let mut dst = [0f32; 4];
        resize_bilinear_half_pixel(&src, 1, 2, 1, 1, 4, &mut dst);
        assert_eq!(dst, [0.0, 2.0, 6.0, 8.0]);
    }

    #[test]
    fn pillow_bicubic_identity_and_constant() {
        let src = vec![42.0f32; 5 * 6 * 3];
        let mut dst = vec![0f32; 9 * 4 * 3];
        resize_bicubic_pillow(&src, 5, 6, 3, 9, 4, &mut dst).unwrap();
        assert!(dst.iter().all(|v| (v - 42.0).abs() < 1e-4), "{dst:?}");
    }

    #[test]
    fn normalisations_differ_as_specified() {
        let img = [0u8, 128, 255];
        let one: Vec<u8> = img.iter().cycle().take(299 * 299 * 3).copied().collect();
        let adm = preprocess_batch(&one, 1, 299, 299, Preprocess::Adm).unwrap();
        assert_eq!(&adm[..3], &[-1.0, 0.0, 127.0 / 128.0]);
        let clean = preprocess_batch(&one, 1, 299, 299, Preprocess::Clean).unwrap();
        assert_eq!(&clean[..3], &[-1.0, 0.0, 127.0 / 128.0]);
        let pt = preprocess_batch(&one, 1, 299, 299, Preprocess::Pytorch).unwrap();
        assert!((pt[0] + 1.0).abs() < 1e-6 && (pt[1] - (128.0 / 127.5 - 1.0)).abs() < 1e-6 && (pt[2] - 1.0).abs() < 1e-6);
        assert!(preprocess_batch(&one, 2, 299, 299, Preprocess::Adm).is_err());
        assert_eq!("clean".parse::<Preprocess>().unwrap(), Preprocess::Clean);
        assert!("bogus".parse::<Preprocess>().is_err());
    }
}
