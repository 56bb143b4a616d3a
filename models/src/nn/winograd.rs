//! Winograd F(2x2, 3x3) for the 3x3, stride-1, padding-1 convolutions of the conv decoders.
//!
//! Each 2x2 output tile is `A^T [ (G g G^T) . (B^T d B) ] A` over its 4x4 input patch `d`, so a
//! tile costs 16 multiplies per (cin, cout) pair instead of 36: the bulk of the work becomes 16
//! GEMMs `M_xi[cout, tiles] = U_xi[cout, cin] @ V_xi[cin, tiles]`, one per patch position xi,
//! 2.25x fewer flops than im2col. PyTorch's oneDNN direct convolutions already run near the
//! machine's peak at batch 1, so the flop cut is what makes the decoders faster than it.
//!
//! The transforms only add, subtract and halve (exact in binary floating point except for the
//! sums' rounding), so results differ from a direct convolution by summation order, like any
//! other GEMM blocking: the tests bound the difference at the same scale as the im2col path's.
//!
//! Work is split into bands of tile rows. With enough bands each thread takes a contiguous share
//! and runs transform, GEMMs and output transform in its own buffers (they stay in cache);
//! otherwise (small feature maps) the stages of one band run in parallel over channels and over
//! the 16 GEMMs.

use genbench_runtime::threads::SendPtr;
use genbench_runtime::winograd::for_each_index_with;
use rayon::prelude::*;

/// Input channels and output channels at least this many: below, the transforms' memory
/// traffic costs more than the saved multiplies.
const MIN_CHANNELS: usize = 16;
/// Output pixels at least this many (32x32): small maps have few tiles per GEMM, where im2col's
/// one large GEMM is faster.
const MIN_PIXELS: usize = 32 * 32;
/// Tiles per band (rounded to whole tile rows): the band's transformed input and products,
/// `16 * (cin + cout) * tiles` floats, then stay in the outer caches.
const BAND_TILES: usize = 128;

/// Whether the Winograd path computes this convolution (3x3, stride 1, padding 1).
pub(crate) fn applies(cin: usize, cout: usize, (kh, kw): (usize, usize), stride: usize, padding: usize, (ho, wo): (usize, usize)) -> bool {
    kh == 3 && kw == 3 && stride == 1 && padding == 1 && cin >= MIN_CHANNELS && cout >= MIN_CHANNELS && ho * wo >= MIN_PIXELS
}

/// `U[xi][o][c] = (G g_oc G^T)[xi]` for weights `(cout, cin, 3, 3)` (see
/// `genbench_runtime::winograd`).
pub(crate) fn transform_weights(weight: &[f32], cout: usize, cin: usize) -> Vec<f32> {
    let pairs = cout * cin;
    let mut u = vec![0f32; 16 * pairs];
    for (pair, w) in weight.chunks_exact(9).enumerate().take(pairs) {
        let tile = genbench_runtime::winograd::filter_tile(std::array::from_fn(|t| w[t]));
        for (xi, v) in tile.into_iter().enumerate() {
            u[xi * pairs + pair] = v;
        }
    }
    u
}

/// Shapes of one Winograd convolution of one image.
struct Geometry {
    cin: usize,
    cout: usize,
    h: usize,
    w: usize,
    /// Tile columns: `ceil(w / 2)`.
    tw: usize,
}

/// Per-band scratch: transformed input `V[16][cin][tiles]` and products `M[16][cout][tiles]`.
struct Scratch {
    v: Vec<f32>,
    m: Vec<f32>,
}

impl Scratch {
    fn new(g: &Geometry, tiles: usize) -> Self {
        Self { v: crate::nn::fused::uninit_f32(16 * g.cin * tiles), m: crate::nn::fused::uninit_f32(16 * g.cout * tiles) }
    }
}

/// `out[b, cout, h, w] = conv3x3(x[b, cin, h, w], weight) + bias` (stride 1, padding 1) with the
/// weights already transformed by [`transform_weights`]. Writes every element of `out`.
pub(crate) fn conv3x3(
    x: &[f32],
    (b, cin, h, w): (usize, usize, usize, usize),
    u: &[f32],
    cout: usize,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    let g = Geometry { cin, cout, h, w, tw: w.div_ceil(2) };
    let th = h.div_ceil(2);
    let band_rows = BAND_TILES.div_ceil(g.tw).clamp(1, th);
    let bands: Vec<(usize, usize, usize)> =
        (0..b).flat_map(|bi| (0..th).step_by(band_rows).map(move |ty0| (bi, ty0, band_rows.min(th - ty0)))).collect();
    let threads = rayon::current_num_threads().max(1);
    let dst = SendPtr::new(out.as_mut_ptr());
    let max_tiles = band_rows * g.tw;
    let run = |band: (usize, usize, usize), scratch: &mut Scratch, par: bool| {
        let (bi, ty0, rows) = band;
        let img = &x[bi * cin * h * w..(bi + 1) * cin * h * w];
        let tiles = rows * g.tw;
        let (v, m) = (&mut scratch.v[..16 * cin * tiles], &mut scratch.m[..16 * cout * tiles]);
        input_transform(&g, img, ty0, rows, v, par);
        genbench_runtime::winograd::tile_products(u, v, m, (cout, tiles, cin), par);
        // SAFETY: bands are distinct (image, tile rows), so their output rows are disjoint.
        unsafe { output_transform(&g, m, bias, ty0, rows, SendPtr::new(dst.add(bi * cout * h * w)), par) };
    };
    if threads > 1 && bands.len() >= 2 * threads {
        let per = bands.len().div_ceil(threads);
        bands.par_chunks(per).for_each(|share| {
            let mut scratch = Scratch::new(&g, max_tiles);
            for &band in share {
                run(band, &mut scratch, false);
            }
        });
    } else {
        let mut scratch = Scratch::new(&g, max_tiles);
        for &band in &bands {
            run(band, &mut scratch, threads > 1);
        }
    }
}

/// `V[xi][c][t] = (B^T d B)[xi]` for every channel and tile of the band, with
/// `B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]`.
fn input_transform(g: &Geometry, img: &[f32], ty0: usize, rows: usize, v: &mut [f32], par: bool) {
    let (cin, h, w, tw) = (g.cin, g.h, g.w, g.tw);
    let tiles = rows * tw;
    let vp = SendPtr::new(v.as_mut_ptr());
    // Per task: even[k] = x[2k] and odd[k] = x[2k - 1] of one input row (zero outside [0, w)),
    // and the column transform of the 4 input rows of a tile row, cols[i][j][tx].
    let scratch = || (vec![0f32; tw + 1], vec![0f32; tw + 1], vec![0f32; 16 * tw]);
    for_each_index_with(cin, par, scratch, |(even, odd, cols), c| {
        let plane = &img[c * h * w..(c + 1) * h * w];
        for r in 0..rows {
            let ty = ty0 + r;
            for i in 0..4 {
                let iy = (2 * ty + i) as isize - 1;
                let out = &mut cols[i * 4 * tw..(i + 1) * 4 * tw];
                if iy < 0 || iy >= h as isize {
                    out.fill(0.0);
                    continue;
                }
                let row = &plane[iy as usize * w..(iy as usize + 1) * w];
                // De-interleave without per-element branches: pairs (x[2k], x[2k+1]) fill
                // even[k] and odd[k+1]; an odd width leaves one last even value.
                odd[0] = 0.0;
                let pairs = w / 2;
                for (k, pair) in row.chunks_exact(2).enumerate() {
                    even[k] = pair[0];
                    odd[k + 1] = pair[1];
                }
                if w % 2 == 1 {
                    even[pairs] = row[w - 1];
                }
                even[pairs + w % 2..].fill(0.0);
                odd[pairs + 1..].fill(0.0);
                // Patch columns of tile tx: d0 = odd[tx], d1 = even[tx], d2 = odd[tx+1], d3 = even[tx+1].
                let (c0, rest) = out.split_at_mut(tw);
                let (c1, rest) = rest.split_at_mut(tw);
                let (c2, c3) = rest.split_at_mut(tw);
                for tx in 0..tw {
                    let (d0, d1, d2, d3) = (odd[tx], even[tx], odd[tx + 1], even[tx + 1]);
                    c0[tx] = d0 - d2;
                    c1[tx] = d1 + d2;
                    c2[tx] = d2 - d1;
                    c3[tx] = d1 - d3;
                }
            }
            // Row transform, written to V[xi][c][r * tw ..].
            for j in 0..4 {
                let col = |i: usize| &cols[(i * 4 + j) * tw..(i * 4 + j + 1) * tw];
                let (r0, r1, r2, r3) = (col(0), col(1), col(2), col(3));
                // SAFETY: channel c writes only its own rows V[xi][c][..] of this band.
                let dst = |xi: usize| unsafe { std::slice::from_raw_parts_mut(vp.add((xi * cin + c) * tiles + r * tw), tw) };
                let (v0, v1, v2, v3) = (dst(j), dst(4 + j), dst(8 + j), dst(12 + j));
                for tx in 0..tw {
                    v0[tx] = r0[tx] - r2[tx];
                    v1[tx] = r1[tx] + r2[tx];
                    v2[tx] = r2[tx] - r1[tx];
                    v3[tx] = r1[tx] - r3[tx];
                }
            }
        }
    });
}

/// `out[o, 2ty + a, 2tx + b] = (A^T m A)[a][b] + bias[o]`, `A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]`;
/// a tile's second row / column is dropped where it falls outside an odd-sized output.
///
/// SAFETY: `dst` points to one image's `(cout, h, w)` output; no other task writes rows
/// `2 * ty0 .. 2 * (ty0 + rows)` of it meanwhile.
unsafe fn output_transform(g: &Geometry, m: &[f32], bias: Option<&[f32]>, ty0: usize, rows: usize, dst: SendPtr, par: bool) {
    let (cout, h, w, tw) = (g.cout, g.h, g.w, g.tw);
    let tiles = rows * tw;
    // Per task: y[a * 2 + j][tx], output pixel (2ty + a, 2tx + j) of each tile in a tile row.
    for_each_index_with(
        cout,
        par,
        || vec![0f32; 4 * tw],
        |y, o| {
            let b = bias.map_or(0.0, |b| b[o]);
            for r in 0..rows {
                let ms: [&[f32]; 16] = std::array::from_fn(|xi| {
                    let at = (xi * cout + o) * tiles + r * tw;
                    &m[at..at + tw]
                });
                {
                    let (y00, rest) = y.split_at_mut(tw);
                    let (y01, rest) = rest.split_at_mut(tw);
                    let (y10, y11) = rest.split_at_mut(tw);
                    for tx in 0..tw {
                        // Columns first (m_i0 + m_i1 + m_i2, m_i1 - m_i2 - m_i3), then rows alike.
                        let col = |i: usize| {
                            let (m0, m1, m2, m3) = (ms[4 * i][tx], ms[4 * i + 1][tx], ms[4 * i + 2][tx], ms[4 * i + 3][tx]);
                            (m0 + m1 + m2, m1 - m2 - m3)
                        };
                        let ((s00, s01), (s10, s11), (s20, s21), (s30, s31)) = (col(0), col(1), col(2), col(3));
                        y00[tx] = s00 + s10 + s20 + b;
                        y01[tx] = s01 + s11 + s21 + b;
                        y10[tx] = s10 - s20 - s30 + b;
                        y11[tx] = s11 - s21 - s31 + b;
                    }
                }
                let oy = 2 * (ty0 + r);
                for a in 0..2 {
                    if oy + a >= h {
                        break;
                    }
                    // SAFETY: row oy + a of plane o lies in this band's rows (see the function's contract).
                    let out = unsafe { std::slice::from_raw_parts_mut(dst.add((o * h + oy + a) * w), w) };
                    let (left, right) = (&y[2 * a * tw..(2 * a + 1) * tw], &y[(2 * a + 1) * tw..(2 * a + 2) * tw]);
                    for ((px, l), r) in out.chunks_exact_mut(2).zip(left).zip(right) {
                        px[0] = *l;
                        px[1] = *r;
                    }
                    if w % 2 == 1 {
                        out[w - 1] = left[w / 2];
                    }
                }
            }
        },
    );
}
