//! Winograd convolution on 6x6 input tiles for the Inception's square stride-1 layers on NHWC
//! activations: F(4x4, 3x3) for `Conv2d_2a/2b/4a` and the `Mixed_5*` 3x3 towers (a third of
//! the network's multiply-adds), F(2x2, 5x5) for the `Mixed_5*` 5x5 branches.
//!
//! An m x m output tile of an r x r correlation (m + r - 1 = 6) is `A^T [(G g G^T) . (B^T d
//! B)] A` for its 6x6 input patch `d`, with the transforms of Toom-Cook at the points 0, +-1,
//! +-2 and infinity: `B^T` depends on the points only, so both kernels share it,
//!
//! ```text
//! B^T = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
//!        [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]
//! ```
//!
//! and row xi of `G` holds the powers `p^0 .. p^(r-1)` of point xi over `[4, -6, -6, 24, 24,
//! 1][xi]` (the infinite point: `[0, .., 0, 1]`), so for r = 3 `G = [[1/4, 0, 0], [-1/6, -1/6,
//! -1/6], [-1/6, 1/6, -1/6], [1/24, 1/12, 1/6], [1/24, -1/12, 1/6], [0, 0, 1]]`. Row i of `A^T`
//! holds the points' i-th powers (the infinite point's column: 1 in the last row), for m = 4
//! `[[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]`.
//!
//! 36 multiplies per tile and channel pair where the direct sum takes 144 (3x3; F(2x2, 3x3)
//! takes 64 per 16 outputs) or 100 (5x5). Per band of tiles: the input transform writes
//! `V[xi][tile][cin]` (each patch through `B^T . B`, vectorised over channels, written out as
//! the few adds that `B^T`'s integer entries need), 36 GEMMs
//! (`genbench_runtime::winograd::batched_products`) form `M[xi][tile][cout] = V[xi] @ U[xi]`
//! with `U = G g G^T` computed once at load in f64, and the output transform `A^T . A` writes
//! each tile's pixels with bias and ReLU.

use gemm::Parallelism;
use genbench_runtime::threads::SendPtr;
use genbench_runtime::winograd::{batched_products, for_each_index_with};

/// Inputs per tile side, `m + r - 1`.
const N: usize = 6;

/// The finite interpolation points, then the divisor of each row of `G` (the infinite point's
/// last), which make `B^T` the integer matrix above.
const POINTS: [f64; N - 1] = [0.0, 1.0, -1.0, 2.0, -2.0];
const G_DIVISORS: [f64; N] = [4.0, -6.0, -6.0, 24.0, 24.0, 1.0];

/// Output tiles per band: the band's `V` and `M` (`36 * tiles * (cin + cout)` floats, about
/// 2 MiB at the Inception's widths) stay in the outer caches.
const BAND_TILES: usize = 56;

/// Channels per step of the transforms: one AVX register of f32 (two SSE registers). 16 lanes
/// on AVX-512 registers ran slower (the 6x6 patch no longer fits the register file).
pub(super) const LANES: usize = 8;

/// Row xi of `G` for an r-tap kernel.
fn g_row(xi: usize, r: usize) -> Vec<f64> {
    (0..r)
        .map(|k| match POINTS.get(xi) {
            Some(p) => p.powi(k as i32) / G_DIVISORS[xi],
            None => f64::from(k == r - 1),
        })
        .collect()
}

/// Whether a layer can take the Winograd route: 3x3 or 5x5, stride 1, the same padding on both
/// axes and at most `(r - 1) / 2`, at least 16 channels each side (below, the transforms cost
/// more than they save).
pub(super) fn layer_eligible(kh: usize, kw: usize, stride: usize, (pad_h, pad_w): (usize, usize), cin: usize, cout: usize) -> bool {
    (kh == 3 || kh == 5) && kw == kh && stride == 1 && pad_h == pad_w && pad_h <= (kh - 1) / 2 && cin >= 16 && cout >= 16
}

/// Whether an output map is large enough: from 8x8 pixels (`Mixed_7*`'s 3x3 layers, four 4x4
/// tiles per image, bands spanning images: 30 -> 8-16 ms each at batch 16 against im2col);
/// on smaller maps most of a tile would be padding.
pub(super) fn map_large_enough(ho: usize, wo: usize) -> bool {
    ho.min(wo) >= 8
}

/// `U[xi][cin][cout] = (G g G^T)[xi]` (xi = py * 6 + px over the 6x6 transformed positions)
/// of an r x r layer (3 or 5) from weights laid out `[(ky, kx, cin), cout]`, in f64: `G` along
/// each kernel row, then down the columns.
pub(super) fn transform_weights(w_kn: &[f32], r: usize, cin: usize, cout: usize) -> Vec<f32> {
    assert!(r == 3 || r == 5, "Winograd on 6x6 tiles takes 3x3 or 5x5 kernels, not {r}x{r}");
    let g: Vec<Vec<f64>> = (0..N).map(|xi| g_row(xi, r)).collect();
    let mut u = vec![0f32; N * N * cin * cout];
    let (mut rows, mut tile) = (vec![0f64; r * N], vec![0f64; N * N]);
    for c in 0..cin {
        for o in 0..cout {
            let tap = |ky: usize, kx: usize| w_kn[((ky * r + kx) * cin + c) * cout + o] as f64;
            for ky in 0..r {
                for (px, g_px) in g.iter().enumerate() {
                    rows[ky * N + px] = (0..r).map(|kx| g_px[kx] * tap(ky, kx)).sum();
                }
            }
            for (py, g_py) in g.iter().enumerate() {
                for px in 0..N {
                    tile[py * N + px] = (0..r).map(|ky| g_py[ky] * rows[ky * N + px]).sum();
                }
            }
            for (xi, &value) in tile.iter().enumerate() {
                u[(xi * cin + c) * cout + o] = value as f32;
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

/// `relu(conv(x) + bias)` into `y` for an r x r kernel (3 or 5) with padding `pad`; `u` from
/// [`transform_weights`]. With `par`, the transforms run in parallel over tiles and the 36
/// GEMMs over threads.
#[allow(clippy::too_many_arguments)]
pub(super) fn conv_bias_relu(
    x: Input,
    r: usize,
    pad: usize,
    u: &[f32],
    bias: &[f32],
    cin: usize,
    cout: usize,
    y: Output,
    par: Parallelism,
) {
    match r {
        3 => conv_tiles::<4>(x, pad, u, bias, (cin, cout), y, par, through_a_t_4),
        5 => conv_tiles::<2>(x, pad, u, bias, (cin, cout), y, par, through_a_t_2),
        _ => unreachable!("Winograd on 6x6 tiles takes 3x3 or 5x5 kernels, not {r}x{r}"),
    }
}

/// [`conv_bias_relu`] with M x M outputs per tile, `a_t` applying `A^T`.
#[allow(clippy::too_many_arguments)]
fn conv_tiles<const M: usize>(
    x: Input,
    pad: usize,
    u: &[f32],
    bias: &[f32],
    (cin, cout): (usize, usize),
    y: Output,
    par: Parallelism,
    a_t: impl Fn(&[[f32; LANES]; N]) -> [[f32; LANES]; M] + Copy + Sync + Send,
) {
    let r = N + 1 - M;
    let (ho, wo) = (x.h + 2 * pad + 1 - r, x.w + 2 * pad + 1 - r);
    let (th, tw) = (ho.div_ceil(M), wo.div_ceil(M));
    // Tiles are numbered over the whole batch (image, tile row, tile column), so that a band
    // may span images: the 8x8 maps of `Mixed_7*` have 4 tiles each.
    let total = x.n * th * tw;
    let band = BAND_TILES.min(total);
    let tile_origin = |g: usize| (g / (th * tw), (g % (th * tw)) / tw * M, g % tw * M);
    let parallel = matches!(par, Parallelism::Rayon(t) if t > 1);
    let mut v = vec![0f32; N * N * band * cin];
    let mut m = vec![0f32; N * N * band * cout];
    assert!(y.data.len() >= (x.n * ho * wo - 1) * y.stride + y.off + cout, "Winograd output buffer too small");
    let (vp, dst) = (SendPtr::new(v.as_mut_ptr()), SendPtr::new(y.data.as_mut_ptr()));
    let zeros = vec![0f32; cin];
    for t0 in (0..total).step_by(band) {
        let tiles = band.min(total - t0);
        // V[xi][t] = (B^T d B)[xi] over the tile's n x n input pixels (zeros in the padding).
        for_each_index_with(
            tiles,
            parallel,
            || (),
            |_, t| {
                let (img, oy0, ox0) = tile_origin(t0 + t);
                let (iy0, ix0) = (oy0 as isize - pad as isize, ox0 as isize - pad as isize);
                let patch: [[&[f32]; N]; N] = std::array::from_fn(|i| {
                    std::array::from_fn(|j| {
                        let (iy, ix) = (iy0 + i as isize, ix0 + j as isize);
                        if iy < 0 || ix < 0 || iy >= x.h as isize || ix >= x.w as isize {
                            &zeros[..]
                        } else {
                            let p = ((img * x.h + iy as usize) * x.w + ix as usize) * x.stride + x.off;
                            &x.data[p..p + cin]
                        }
                    })
                });
                // SAFETY: tile t writes only its own rows V[xi][t] (xi < n^2, t < tiles).
                let row = |xi: usize| unsafe { std::slice::from_raw_parts_mut(vp.add((xi * tiles + t) * cin), cin) };
                let rows: [[&mut [f32]; N]; N] = std::array::from_fn(|i| std::array::from_fn(|j| row(i * N + j)));
                run_lanes(InputTile { patch: &patch, rows, cin });
            },
        );
        batched_products(N * N, &v[..N * N * tiles * cin], u, &mut m[..N * N * tiles * cout], (tiles, cout, cin), parallel);
        let m = &m[..N * N * tiles * cout];
        for_each_index_with(
            tiles,
            parallel,
            || (),
            |_, t| {
                let (img, oy0, ox0) = tile_origin(t0 + t);
                let base = img * ho * wo;
                let products: [[&[f32]; N]; N] =
                    std::array::from_fn(|i| std::array::from_fn(|j| &m[((i * N + j) * tiles + t) * cout..][..cout]));
                // SAFETY: pixel (img, oy, ox) belongs to this tile only; its channel range lies
                // inside `y.data` (checked above). Pixels past the map's edge get no slice.
                let pixels: [[Option<&mut [f32]>; M]; M] = std::array::from_fn(|a| {
                    std::array::from_fn(|b| {
                        let (oy, ox) = (oy0 + a, ox0 + b);
                        (oy < ho && ox < wo)
                            .then(|| unsafe { std::slice::from_raw_parts_mut(dst.add((base + oy * wo + ox) * y.stride + y.off), cout) })
                    })
                });
                run_lanes(OutputTile { a_t, products: &products, bias, pixels, cout });
            },
        );
    }
}

/// A transform over lane vectors of channels, run by [`run_lanes`].
pub(super) trait LaneKernel {
    /// The work; implementations are `#[inline(always)]` so that it compiles inside
    /// [`run_lanes`]' AVX entry point.
    fn run(self);
}

/// Runs `kernel` compiled for AVX where the CPU has it (an 8-lane f32 vector in one register),
/// else for the baseline target. No FMA contraction either way, so the sums are the same.
pub(super) fn run_lanes<K: LaneKernel>(kernel: K) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx")]
        fn avx<K: LaneKernel>(kernel: K) {
            kernel.run()
        }
        if std::is_x86_feature_detected!("avx") {
            // SAFETY: the feature was detected at run time.
            unsafe { avx(kernel) };
            return;
        }
    }
    kernel.run()
}

/// One tile's input transform: `rows[ky][kx] = (B^T d B)[ky][kx]` for the 6x6 patch of channel
/// vectors `patch`.
struct InputTile<'a> {
    patch: &'a [[&'a [f32]; N]; N],
    rows: [[&'a mut [f32]; N]; N],
    cin: usize,
}

impl LaneKernel for InputTile<'_> {
    /// [`LANES`] channels at a time: `B^T` along each patch row, then down each column.
    #[inline(always)]
    fn run(self) {
        let InputTile { patch, rows, cin } = self;
        for c0 in (0..cin).step_by(LANES) {
            let lanes = LANES.min(cin - c0);
            // Plain loops, not `array::from_fn`: its closures do not inline at these sizes.
            let mut s = [[[0f32; LANES]; N]; N];
            for (s_i, patch_i) in s.iter_mut().zip(patch) {
                let mut d = [[0f32; LANES]; N];
                for (d_j, src) in d.iter_mut().zip(patch_i) {
                    *d_j = load_lanes(src, c0, lanes);
                }
                *s_i = through_b_t(&d);
            }
            for kx in 0..N {
                let mut col = [[0f32; LANES]; N];
                for (col_i, s_i) in col.iter_mut().zip(&s) {
                    *col_i = s_i[kx];
                }
                for (ky, v) in through_b_t(&col).iter().enumerate() {
                    store_lanes(rows[ky][kx], c0, lanes, v);
                }
            }
        }
    }
}

/// `B^T d` for six lane vectors, with the shared partial sums.
#[inline(always)]
fn through_b_t(d: &[[f32; LANES]; N]) -> [[f32; LANES]; N] {
    let mut v = [[0f32; LANES]; N];
    for l in 0..LANES {
        let (d0, d1, d2, d3, d4, d5) = (d[0][l], d[1][l], d[2][l], d[3][l], d[4][l], d[5][l]);
        let (p, q) = (d4 - 4.0 * d2, d3 - 4.0 * d1);
        let (r, t) = (d4 - d2, 2.0 * (d3 - d1));
        v[0][l] = 4.0 * d0 - 5.0 * d2 + d4;
        v[1][l] = p + q;
        v[2][l] = p - q;
        v[3][l] = r + t;
        v[4][l] = r - t;
        v[5][l] = 4.0 * d1 - 5.0 * d3 + d5;
    }
    v
}

/// `A^T m` for six lane vectors, four outputs (3x3 kernels).
#[inline(always)]
fn through_a_t_4(m: &[[f32; LANES]; N]) -> [[f32; LANES]; 4] {
    let mut y = [[0f32; LANES]; 4];
    for l in 0..LANES {
        let (m0, m1, m2, m3, m4, m5) = (m[0][l], m[1][l], m[2][l], m[3][l], m[4][l], m[5][l]);
        let (sum12, diff12, sum34, diff34) = (m1 + m2, m1 - m2, m3 + m4, m3 - m4);
        y[0][l] = m0 + sum12 + sum34;
        y[1][l] = diff12 + 2.0 * diff34;
        y[2][l] = sum12 + 4.0 * sum34;
        y[3][l] = diff12 + 8.0 * diff34 + m5;
    }
    y
}

/// `A^T m` for six lane vectors, two outputs (5x5 kernels).
#[inline(always)]
fn through_a_t_2(m: &[[f32; LANES]; N]) -> [[f32; LANES]; 2] {
    let mut y = [[0f32; LANES]; 2];
    for l in 0..LANES {
        let (m0, m1, m2, m3, m4, m5) = (m[0][l], m[1][l], m[2][l], m[3][l], m[4][l], m[5][l]);
        y[0][l] = m0 + (m1 + m2) + (m3 + m4);
        y[1][l] = (m1 - m2) + 2.0 * (m3 - m4) + m5;
    }
    y
}

/// `src[c0..c0 + lanes]` as a lane vector, zero-filled past `lanes` (a fixed-size copy in the
/// common full case, not a call to `memcpy`).
#[inline(always)]
pub(super) fn load_lanes(src: &[f32], c0: usize, lanes: usize) -> [f32; LANES] {
    if lanes == LANES {
        src[c0..c0 + LANES].try_into().expect("a full lane vector")
    } else {
        let mut v = [0f32; LANES];
        v[..lanes].copy_from_slice(&src[c0..c0 + lanes]);
        v
    }
}

/// The first `lanes` values of `v` into `dst[c0..]`.
#[inline(always)]
pub(super) fn store_lanes(dst: &mut [f32], c0: usize, lanes: usize, v: &[f32; LANES]) {
    if lanes == LANES {
        dst[c0..c0 + LANES].copy_from_slice(v);
    } else {
        dst[c0..c0 + lanes].copy_from_slice(&v[..lanes]);
    }
}

/// One tile's output transform: `pixels[a][b] = relu((A^T P A)[a][b] + bias)` for the tile's
/// 6x6 products `P` (`a_t` applies `A^T`; pixels past the map's edge are `None`).
struct OutputTile<'a, const M: usize, A> {
    a_t: A,
    products: &'a [[&'a [f32]; N]; N],
    bias: &'a [f32],
    pixels: [[Option<&'a mut [f32]>; M]; M],
    cout: usize,
}

impl<const M: usize, A: Fn(&[[f32; LANES]; N]) -> [[f32; LANES]; M]> LaneKernel for OutputTile<'_, M, A> {
    /// [`LANES`] channels at a time: `A^T` along each product row, then down each column.
    #[inline(always)]
    fn run(self) {
        let OutputTile { a_t, products, bias, mut pixels, cout } = self;
        for o0 in (0..cout).step_by(LANES) {
            let lanes = LANES.min(cout - o0);
            let mut q = [[[0f32; LANES]; M]; N];
            for (q_i, products_i) in q.iter_mut().zip(products) {
                let mut p = [[0f32; LANES]; N];
                for (p_j, src) in p.iter_mut().zip(products_i) {
                    *p_j = load_lanes(src, o0, lanes);
                }
                *q_i = a_t(&p);
            }
            let bias = load_lanes(bias, o0, lanes);
            for b in 0..M {
                let mut col = [[0f32; LANES]; N];
                for (col_i, q_i) in col.iter_mut().zip(&q) {
                    *col_i = q_i[b];
                }
                for (a, value) in a_t(&col).iter().enumerate() {
                    if let Some(px) = pixels[a][b].as_deref_mut() {
                        let mut out = [0f32; LANES];
                        for l in 0..LANES {
                            out[l] = (value[l] + bias[l]).max(0.0);
                        }
                        store_lanes(px, o0, lanes, &out);
                    }
                }
            }
        }
    }
}
