//! Winograd F(2x2, 3x3) for the Inception's 3x3 stride-1 convolutions on NHWC activations
//! (`Conv2d_2a/2b/4a` and the `Mixed_5*` 3x3 towers: a third of the network's multiply-adds).
//!
//! Per band of 2x2 output tiles: the input transform writes `V[xi][tile][cin]` (each tile's
//! 4x4 patch through `B^T . B`, vectorised over channels), 16 GEMMs
//! (`genbench_runtime::winograd::tile_products`) form `M[xi][tile][cout] = V[xi] @ U[xi]` with
//! the filters transformed once at load (`genbench_runtime::winograd::filter_tile`), and the
//! output transform `A^T . A` writes each tile's 2x2 pixels with bias and ReLU. 16 multiplies per tile and channel pair instead of 36.

use gemm::Parallelism;
use genbench_runtime::threads::SendPtr;
use genbench_runtime::winograd::{for_each_index_with, tile_products};

/// Output tiles per band, rounded to whole tile rows: the band's `V` and `M` (`16 * tiles *
/// (cin + cout)` floats, under 2 MiB at the Inception's widths) stay in the outer caches.
const BAND_TILES: usize = 128;

/// Whether a layer can take the Winograd route: 3x3, stride 1, the same padding (0 or 1) on
/// both axes, at least 16 channels each side (below, the transforms cost more than they save).
pub(super) fn layer_eligible(kh: usize, kw: usize, stride: usize, (pad_h, pad_w): (usize, usize), cin: usize, cout: usize) -> bool {
    kh == 3 && kw == 3 && stride == 1 && pad_h == pad_w && pad_h <= 1 && cin >= 16 && cout >= 16
}

/// Whether an output map is large enough: from 32x32 pixels (the 35x35 `Mixed_5*` maps); the
/// 8x8 maps of `Mixed_7*` give the GEMMs too few tiles to beat one im2col GEMM.
pub(super) fn map_large_enough(ho: usize, wo: usize) -> bool {
    ho * wo >= 32 * 32
}

/// `U[xi][cin][cout]` from weights laid out `[(ky, kx, cin), cout]`.
pub(super) fn transform_weights(w_kn: &[f32], cin: usize, cout: usize) -> Vec<f32> {
    let mut u = vec![0f32; 16 * cin * cout];
    for c in 0..cin {
        for o in 0..cout {
            let tile = genbench_runtime::winograd::filter_tile(std::array::from_fn(|t| w_kn[(t * cin + c) * cout + o]));
            for (xi, v) in tile.into_iter().enumerate() {
                u[(xi * cin + c) * cout + o] = v;
            }
        }
    }
    u
}

/// An NHWC input: channels `off..off + cin` of pixels `stride` floats apart, `n` images `h x w`.
pub(super) struct Input<'a> {
    pub data: &'a [f32],
    pub stride: usize,
    pub off: usize,
    pub n: usize,
    pub h: usize,
    pub w: usize,
}

/// An NHWC output: channels `off..off + cout` of pixels `stride` floats apart.
pub(super) struct Output<'a> {
    pub data: &'a mut [f32],
    pub stride: usize,
    pub off: usize,
}

/// `relu(conv3x3(x) + bias)` into `y`, padding `pad` (0 or 1); `u` from [`transform_weights`].
/// With `par`, the transforms run in parallel over tiles and the 16 GEMMs over threads.
#[allow(clippy::too_many_arguments)]
pub(super) fn conv3x3_bias_relu(x: Input, pad: usize, u: &[f32], bias: &[f32], cin: usize, cout: usize, y: Output, par: Parallelism) {
    let (ho, wo) = (x.h + 2 * pad - 2, x.w + 2 * pad - 2);
    let (th, tw) = (ho.div_ceil(2), wo.div_ceil(2));
    let band_rows = BAND_TILES.div_ceil(tw).clamp(1, th);
    let parallel = matches!(par, Parallelism::Rayon(t) if t > 1);
    let mut v = vec![0f32; 16 * band_rows * tw * cin];
    let mut m = vec![0f32; 16 * band_rows * tw * cout];
    assert!(y.data.len() >= (x.n * ho * wo - 1) * y.stride + y.off + cout, "Winograd output buffer too small");
    let dst = SendPtr::new(y.data.as_mut_ptr());
    for img in 0..x.n {
        for ty0 in (0..th).step_by(band_rows) {
            let tiles = band_rows.min(th - ty0) * tw;
            let (v, m) = (&mut v[..16 * tiles * cin], &mut m[..16 * tiles * cout]);
            input_transform(&x, img, pad, (ty0, tw), cin, tiles, v, parallel);
            tile_products(v, u, m, (tiles, cout, cin), parallel);
            let base = img * ho * wo;
            for_each_index_with(
                tiles,
                parallel,
                || (),
                |_, t| {
                    let (ty, tx) = (ty0 + t / tw, t % tw);
                    let col = |xi: usize| &m[(xi * tiles + t) * cout..(xi * tiles + t + 1) * cout];
                    let ms: [&[f32]; 16] = std::array::from_fn(col);
                    // SAFETY: pixel (img, oy, ox) belongs to this tile only; its channel range lies
                    // inside `y.data` (checked above).
                    let pixel = |oy: usize, ox: usize| unsafe {
                        std::slice::from_raw_parts_mut(dst.add((base + oy * wo + ox) * y.stride + y.off), cout)
                    };
                    let (oy, ox) = (2 * ty, 2 * tx);
                    if oy + 1 < ho && ox + 1 < wo {
                        let (p00, p01, p10, p11) = (pixel(oy, ox), pixel(oy, ox + 1), pixel(oy + 1, ox), pixel(oy + 1, ox + 1));
                        for o in 0..cout {
                            // Columns first (s_i0 = m_i0 + m_i1 + m_i2, s_i1 = m_i1 - m_i2 - m_i3), then rows.
                            let col = |i: usize| {
                                (ms[4 * i][o] + ms[4 * i + 1][o] + ms[4 * i + 2][o], ms[4 * i + 1][o] - ms[4 * i + 2][o] - ms[4 * i + 3][o])
                            };
                            let ((s00, s01), (s10, s11), (s20, s21), (s30, s31)) = (col(0), col(1), col(2), col(3));
                            p00[o] = (s00 + s10 + s20 + bias[o]).max(0.0);
                            p01[o] = (s01 + s11 + s21 + bias[o]).max(0.0);
                            p10[o] = (s10 - s20 - s30 + bias[o]).max(0.0);
                            p11[o] = (s11 - s21 - s31 + bias[o]).max(0.0);
                        }
                    } else {
                        // A tile on the bottom / right edge of an odd-sized output.
                        for (a, b) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                            if oy + a < ho && ox + b < wo {
                                output_pixel(&ms, a, b, bias, pixel(oy + a, ox + b));
                            }
                        }
                    }
                },
            );
        }
    }
}

/// One output pixel `(a, b)` of a tile from its 16 product rows, `relu((A^T M A)[a][b] + bias)`:
/// row `a` of `A^T` over the tile's rows, row `b` over its columns.
fn output_pixel(ms: &[&[f32]; 16], a: usize, b: usize, bias: &[f32], px: &mut [f32]) {
    let col = |i: usize, o: usize| {
        if b == 0 {
            ms[4 * i][o] + ms[4 * i + 1][o] + ms[4 * i + 2][o]
        } else {
            ms[4 * i + 1][o] - ms[4 * i + 2][o] - ms[4 * i + 3][o]
        }
    };
    for (o, (p, bo)) in px.iter_mut().zip(bias).enumerate() {
        let v = if a == 0 { col(0, o) + col(1, o) + col(2, o) } else { col(1, o) - col(2, o) - col(3, o) };
        *p = (v + bo).max(0.0);
    }
}

/// `V[xi][t][c] = (B^T d B)[xi]` for the tiles `t` of the band starting at tile row `ty0`.
#[allow(clippy::too_many_arguments)]
fn input_transform(x: &Input, img: usize, pad: usize, (ty0, tw): (usize, usize), cin: usize, tiles: usize, v: &mut [f32], par: bool) {
    let zeros = vec![0f32; cin];
    let vp = SendPtr::new(v.as_mut_ptr());
    // Per task: the column transform of a patch's 4 rows, s[i][j][c].
    for_each_index_with(
        tiles,
        par,
        || vec![0f32; 16 * cin],
        |s, t| {
            let (ty, tx) = (ty0 + t / tw, t % tw);
            // The channel vector of input pixel (iy, ix), or zeros in the padding.
            let pixel = |iy: isize, ix: isize| -> &[f32] {
                if iy < 0 || ix < 0 || iy >= x.h as isize || ix >= x.w as isize {
                    &zeros
                } else {
                    let p = ((img * x.h + iy as usize) * x.w + ix as usize) * x.stride + x.off;
                    &x.data[p..p + cin]
                }
            };
            for i in 0..4 {
                let iy = (2 * ty + i) as isize - pad as isize;
                let ix0 = (2 * tx) as isize - pad as isize;
                let (d0, d1, d2, d3) = (pixel(iy, ix0), pixel(iy, ix0 + 1), pixel(iy, ix0 + 2), pixel(iy, ix0 + 3));
                let (s0, rest) = s[i * 4 * cin..(i + 1) * 4 * cin].split_at_mut(cin);
                let (s1, rest) = rest.split_at_mut(cin);
                let (s2, s3) = rest.split_at_mut(cin);
                for c in 0..cin {
                    s0[c] = d0[c] - d2[c];
                    s1[c] = d1[c] + d2[c];
                    s2[c] = d2[c] - d1[c];
                    s3[c] = d1[c] - d3[c];
                }
            }
            // Row transform into V[i * 4 + j][t].
            for j in 0..4 {
                let at = |i: usize| &s[(i * 4 + j) * cin..(i * 4 + j + 1) * cin];
                let (r0, r1, r2, r3) = (at(0), at(1), at(2), at(3));
                // SAFETY: tile t writes only its own rows V[xi][t] (in bounds: xi < 16, t < tiles).
                let row = |xi: usize| unsafe { std::slice::from_raw_parts_mut(vp.add((xi * tiles + t) * cin), cin) };
                let (v0, v1, v2, v3) = (row(j), row(4 + j), row(8 + j), row(12 + j));
                for c in 0..cin {
                    v0[c] = r0[c] - r2[c];
                    v1[c] = r1[c] + r2[c];
                    v2[c] = r2[c] - r1[c];
                    v3[c] = r1[c] - r3[c];
                }
            }
        },
    );
}
