//! One-dimensional Winograd F(m, r) for the Inception's 1xr / rx1 stride-1 convolutions on NHWC
//! activations (`Mixed_6b-e`'s 1x7 and 7x1 towers, `Mixed_7b/c`'s 1x3 and 3x1 heads): m outputs
//! along the kernel's axis from `m + r - 1` products per channel pair instead of `m r`
//! ([`outputs_per_tile`] picks m).
//!
//! The transforms come from Toom-Cook at the points `0, +-1, +-2, +-1/2, 3` and infinity, built
//! in f64 at load: with `V` the `n x n` Vandermonde matrix of the points (n = m + r - 1, the
//! infinite point taking the leading coefficient), the linear convolution of an m-tap and an
//! r-tap sequence is `V^-1 [(V_m a) . (V_r g)]`, and the correlation a convolution layer computes
//! is its transpose: `y = A^T [(G g) . (B^T d)]` with `A^T = V_m^T`, `G = V_r`, `B^T = V^-T`.
//! Each row pair of `G` and `B^T` is rescaled to balance their magnitudes (exact in exact
//! arithmetic).
//!
//! Per band of tiles: the input transform writes `V[xi][tile][cin]`, n GEMMs form
//! `M[xi] = V[xi] @ U[xi]` with `U[xi] = sum_k G[xi][k] W_k` computed at load, and the output
//! transform writes each tile's m pixels with bias and ReLU.

use faer::linalg::solvers::DenseSolveCore;
use faer::Mat;
use gemm::Parallelism;
use genbench_runtime::threads::SendPtr;
use genbench_runtime::winograd::{batched_products, for_each_index_with};

use super::winograd::{load_lanes, run_lanes, store_lanes, Input, LaneKernel, Output, LANES};

/// Tiles per band at n = 8 (scaled by 8 / n): the band's `V` and `M` (`n * tiles * (cin +
/// cout)` floats, about 2 MiB at the Inception's widths) stay in the outer caches.
const BAND_TILES: usize = 256;

/// The finite interpolation points, in the order they are taken (`m + r - 2` of them).
const POINTS: [f64; 8] = [0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5, 3.0];

/// The kernel's axis: `1 x r` runs along a row (x), `r x 1` along a column (y).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Axis {
    Horizontal,
    Vertical,
}

/// A layer in F(m, r) form: the transforms and the transformed filters.
pub(super) struct Winograd1d {
    axis: Axis,
    /// Outputs per tile.
    m: usize,
    r: usize,
    /// `A^T`, m x (m + r - 1), row-major.
    a_t: Vec<f32>,
    /// `B^T`, n x n with n = m + r - 1, row-major.
    b_t: Vec<f32>,
    /// `U[xi][cin][cout]`.
    u: Vec<f32>,
}

/// The layer's axis when it can take this route: `1 x r` or `r x 1` with r in {3, 7}, stride 1,
/// padding `(r - 1) / 2` along the kernel's axis and none across it, at least 16 channels each
/// side.
pub(super) fn eligible_axis(kh: usize, kw: usize, stride: usize, (pad_h, pad_w): (usize, usize), cin: usize, cout: usize) -> Option<Axis> {
    if stride != 1 || cin < 16 || cout < 16 {
        return None;
    }
    match (kh, kw) {
        (1, r) if (r == 3 || r == 7) && pad_h == 0 && pad_w == (r - 1) / 2 => Some(Axis::Horizontal),
        (r, 1) if (r == 3 || r == 7) && pad_w == 0 && pad_h == (r - 1) / 2 => Some(Axis::Vertical),
        _ => None,
    }
}

/// Outputs per tile for an r-tap kernel. For r = 7, F(3, 7): 9 products per 3 outputs instead
/// of 21 (batch-16 forward, medians of 3 alternating runs: 18.9 img/s with F(2, 7), 19.9 with
/// F(3, 7), 19.9 with F(4, 7), whose 17-pixel lines waste 3 of 20 outputs; pool_3 against
/// PyTorch 9e-6 with F(3, 7), 1.9e-5 with F(4, 7)). For r = 3, F(2, 3): F(4, 3) was no faster on
/// the 8-pixel lines of `Mixed_7*`.
fn outputs_per_tile(r: usize) -> usize {
    if r == 7 {
        3
    } else {
        2
    }
}

/// `(A^T, G, B^T)` of F(m, r) in f64, row-major: m x n, n x r, n x n with n = m + r - 1.
fn transforms(m: usize, r: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let n = m + r - 1;
    assert!(n <= POINTS.len() + 1, "F({m}, {r}): not enough interpolation points");
    // Row j of V: the powers of point j; the last row (infinity) picks the leading coefficient.
    let powers = |j: usize, count: usize| -> Vec<f64> {
        if j == n - 1 {
            (0..count).map(|i| if i == count - 1 { 1.0 } else { 0.0 }).collect()
        } else {
            (0..count).map(|i| POINTS[j].powi(i as i32)).collect()
        }
    };
    let v = Mat::<f64>::from_fn(n, n, |j, i| powers(j, n)[i]);
    let v_inv = v.partial_piv_lu().inverse();
    let a_t: Vec<f64> = (0..m).flat_map(|i| (0..n).map(move |j| (j, i))).map(|(j, i)| powers(j, m)[i]).collect();
    let mut g: Vec<f64> = (0..n).flat_map(|j| powers(j, r)).collect();
    // B^T = V^-T: row xi of B^T is column xi of V^-1.
    let mut b_t: Vec<f64> = (0..n).flat_map(|xi| (0..n).map(move |j| (xi, j))).map(|(xi, j)| v_inv[(j, xi)]).collect();
    for xi in 0..n {
        let largest = |row: &[f64]| row.iter().fold(0f64, |m, x| m.max(x.abs()));
        let scale = (largest(&g[xi * r..(xi + 1) * r]) / largest(&b_t[xi * n..(xi + 1) * n])).sqrt();
        g[xi * r..(xi + 1) * r].iter_mut().for_each(|x| *x /= scale);
        b_t[xi * n..(xi + 1) * n].iter_mut().for_each(|x| *x *= scale);
    }
    (a_t, g, b_t)
}

impl Winograd1d {
    /// The layer in F(m, r) form from weights laid out `[(ky, kx, cin), cout]` (tap k of the r
    /// is row block k either way, since the other kernel side is 1).
    pub(super) fn new(axis: Axis, r: usize, w_kn: &[f32], cin: usize, cout: usize) -> Self {
        let m = outputs_per_tile(r);
        let n = m + r - 1;
        let (a_t, g, b_t) = transforms(m, r);
        let mut u = vec![0f32; n * cin * cout];
        for xi in 0..n {
            for c in 0..cin {
                for o in 0..cout {
                    let s: f64 = (0..r).map(|k| g[xi * r + k] * w_kn[(k * cin + c) * cout + o] as f64).sum();
                    u[(xi * cin + c) * cout + o] = s as f32;
                }
            }
        }
        let to_f32 = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect();
        Self { axis, m, r, a_t: to_f32(a_t), b_t: to_f32(b_t), u }
    }
}

/// `relu(conv(x) + bias)` into `y` for a layer in F(m, r) form (output size = input size).
/// With `par`, the transforms run in parallel over tiles and the GEMMs over threads.
pub(super) fn conv_bias_relu(layer: &Winograd1d, x: Input, bias: &[f32], cin: usize, cout: usize, y: Output, par: Parallelism) {
    match (layer.m, layer.m + layer.r - 1) {
        (3, 9) => conv_lines::<3, 9>(layer, x, bias, (cin, cout), y, par),
        (2, 4) => conv_lines::<2, 4>(layer, x, bias, (cin, cout), y, par),
        (m, n) => unreachable!("F({m}, {}) is not built", n + 1 - m),
    }
}

/// [`conv_bias_relu`] with the tile's outputs `M` and inputs `N` fixed at compile time, so that
/// the transforms run on lane vectors in registers.
fn conv_lines<const M: usize, const N: usize>(
    layer: &Winograd1d,
    x: Input,
    bias: &[f32],
    (cin, cout): (usize, usize),
    y: Output,
    par: Parallelism,
) {
    let b_t: [[f32; N]; N] = std::array::from_fn(|i| std::array::from_fn(|j| layer.b_t[i * N + j]));
    let a_t: [[f32; N]; M] = std::array::from_fn(|i| std::array::from_fn(|j| layer.a_t[i * N + j]));
    let pad = (layer.r - 1) / 2;
    // Lines along the axis, each `len` pixels long; `pixel(line, pos)` is their pixel index.
    let (lines, len) = match layer.axis {
        Axis::Horizontal => (x.n * x.h, x.w),
        Axis::Vertical => (x.n * x.w, x.h),
    };
    let (h, w) = (x.h, x.w);
    let pixel = move |line: usize, pos: usize| -> usize {
        match layer.axis {
            Axis::Horizontal => line * w + pos,
            Axis::Vertical => ((line / w) * h + pos) * w + line % w,
        }
    };
    let per_line = len.div_ceil(M);
    // Tile `t` (counted over all lines) covers positions `first..first + M` of its line.
    let tile_start = |t: usize| (t / per_line, M * (t % per_line));
    let total = lines * per_line;
    let parallel = matches!(par, Parallelism::Rayon(t) if t > 1);
    let band = (BAND_TILES * 8 / N).min(total);
    let mut v = vec![0f32; N * band * cin];
    let mut m = vec![0f32; N * band * cout];
    assert!(y.data.len() >= (x.n * h * w - 1) * y.stride + y.off + cout, "Winograd output buffer too small");
    let (vp, dst) = (SendPtr::new(v.as_mut_ptr()), SendPtr::new(y.data.as_mut_ptr()));
    let zeros = vec![0f32; cin];
    for t0 in (0..total).step_by(band) {
        let tiles = band.min(total - t0);
        // V[xi][t] = sum_j B^T[xi][j] d_j over the tile's N input pixels (zeros in the padding).
        for_each_index_with(
            tiles,
            parallel,
            || (),
            |_, t| {
                let (line, first) = tile_start(t0 + t);
                let mut inputs = [&zeros[..]; N];
                for (j, input) in inputs.iter_mut().enumerate() {
                    if let Some(pos) = (first + j).checked_sub(pad).filter(|&pos| pos < len) {
                        let p = pixel(line, pos) * x.stride + x.off;
                        *input = &x.data[p..p + cin];
                    }
                }
                // SAFETY: tile t writes only its own rows V[xi][t] (xi < N, t < tiles <= band).
                let rows = std::array::from_fn(|xi| unsafe { std::slice::from_raw_parts_mut(vp.add((xi * tiles + t) * cin), cin) });
                run_lanes(LineTransform { coef: &b_t, inputs, outputs: rows.map(Some), bias: None, channels: cin });
            },
        );
        batched_products(N, &v[..N * tiles * cin], &layer.u, &mut m[..N * tiles * cout], (tiles, cout, cin), parallel);
        let m = &m[..N * tiles * cout];
        for_each_index_with(
            tiles,
            parallel,
            || (),
            |_, t| {
                let (line, first) = tile_start(t0 + t);
                let products = std::array::from_fn(|xi| &m[(xi * tiles + t) * cout..][..cout]);
                // SAFETY: output pixel (line, pos) belongs to this tile only; its channel range lies
                // inside `y.data` (checked above). Positions past the line's end get no slice.
                let pixels = std::array::from_fn(|o| {
                    (first + o < len)
                        .then(|| unsafe { std::slice::from_raw_parts_mut(dst.add(pixel(line, first + o) * y.stride + y.off), cout) })
                });
                run_lanes(LineTransform { coef: &a_t, inputs: products, outputs: pixels, bias: Some(bias), channels: cout });
            },
        );
    }
}

/// `outputs[k] = sum_j coef[k][j] inputs[j]` over channel vectors (`None` outputs skipped); with
/// `bias`, `relu(.. + bias)`.
struct LineTransform<'a, const K: usize, const N: usize> {
    coef: &'a [[f32; N]; K],
    inputs: [&'a [f32]; N],
    outputs: [Option<&'a mut [f32]>; K],
    bias: Option<&'a [f32]>,
    channels: usize,
}

impl<const K: usize, const N: usize> LaneKernel for LineTransform<'_, K, N> {
    /// [`LANES`] channels at a time, the N inputs held in registers.
    #[inline(always)]
    fn run(self) {
        let LineTransform { coef, inputs, mut outputs, bias, channels } = self;
        for c0 in (0..channels).step_by(LANES) {
            let lanes = LANES.min(channels - c0);
            let mut d = [[0f32; LANES]; N];
            for (d_j, input) in d.iter_mut().zip(&inputs) {
                *d_j = load_lanes(input, c0, lanes);
            }
            for (coef_k, output) in coef.iter().zip(&mut outputs) {
                let Some(output) = output.as_deref_mut() else { continue };
                let mut acc = [0f32; LANES];
                for (&c, d_j) in coef_k.iter().zip(&d) {
                    for l in 0..LANES {
                        acc[l] += c * d_j[l];
                    }
                }
                if let Some(bias) = bias {
                    let bias = load_lanes(bias, c0, lanes);
                    for l in 0..LANES {
                        acc[l] = (acc[l] + bias[l]).max(0.0);
                    }
                }
                store_lanes(output, c0, lanes, &acc);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `A^T [(G g) . (B^T d)]` equals the valid correlation of `d` (m + r - 1 values) with `g`.
    #[test]
    fn transforms_give_the_direct_correlation() {
        for (m, r) in [(2, 3), (2, 7), (3, 7), (4, 3), (6, 3)] {
            let (a_t, g_m, b_t) = transforms(m, r);
            let n = m + r - 1;
            let g: Vec<f64> = (0..r).map(|k| ((k * 5 + 2) % 7) as f64 * 0.31 - 0.9).collect();
            let d: Vec<f64> = (0..n).map(|j| ((j * 7 + 3) % 11) as f64 * 0.37 - 1.6).collect();
            let gg: Vec<f64> = (0..n).map(|xi| (0..r).map(|k| g_m[xi * r + k] * g[k]).sum()).collect();
            let bd: Vec<f64> = (0..n).map(|xi| (0..n).map(|j| b_t[xi * n + j] * d[j]).sum()).collect();
            for i in 0..m {
                let y: f64 = (0..n).map(|xi| a_t[i * n + xi] * gg[xi] * bd[xi]).sum();
                let direct: f64 = (0..r).map(|k| g[k] * d[i + k]).sum();
                assert!((y - direct).abs() < 1e-10, "F({m}, {r}) output {i}: {y} vs {direct}");
            }
        }
    }
}
