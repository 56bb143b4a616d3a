//! Winograd pieces shared by the NCHW decoder convolutions (models) and the NHWC Inception
//! engine (metrics), whose data layouts differ: the filter side of F(2x2, 3x3) (the decoders';
//! the Inception's F(4x4, 3x3) keeps its own), the batched products and the per-task loop.
//!
//! A 2x2 output tile of a 3x3 convolution is `A^T [(G g G^T) . (B^T d B)] A` for its 4x4 input
//! patch `d`, with
//!
//! ```text
//! G   = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]
//! B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
//! A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]
//! ```
//!
//! All entries are 0, +-1 or +-1/2, so the transforms add no rounding beyond their sums'.
//!
//! Besides the filter transform: the products of a band ([`tile_products`] for 16 positions,
//! [`batched_products`] for any count) and the loop that runs a transform over channels or
//! tiles with per-task scratch ([`for_each_index_with`]).

use crate::threads::SendPtr;
use rayon::prelude::*;

/// `G g G^T` of one 3x3 filter `g` (row-major), as 16 values in row-major 4x4 order.
pub fn filter_tile(g: [f32; 9]) -> [f32; 16] {
    let through_g = |v: [f32; 3]| [v[0], 0.5 * (v[0] + v[1] + v[2]), 0.5 * (v[0] - v[1] + v[2]), v[2]];
    // G g: each column of g through G; then each row of (G g) through G.
    let cols: [[f32; 4]; 3] = std::array::from_fn(|j| through_g([g[j], g[3 + j], g[6 + j]]));
    let mut tile = [0f32; 16];
    for i in 0..4 {
        let row = through_g([cols[0][i], cols[1][i], cols[2][i]]);
        tile[i * 4..i * 4 + 4].copy_from_slice(&row);
    }
    tile
}

/// `dst[xi] = a[xi] @ b[xi]` for the 16 patch positions `xi`, every matrix row-major and
/// contiguous: `a[xi]` is `m x k`, `b[xi]` is `k x n`, `dst[xi]` is `m x n`. With `parallel`
/// the 16 products are spread over rayon's pool (each a single-threaded GEMM).
pub fn tile_products(a: &[f32], b: &[f32], dst: &mut [f32], shape: (usize, usize, usize), parallel: bool) {
    batched_products(16, a, b, dst, shape, parallel);
}

/// [`tile_products`] for `count` positions (the one-dimensional F(m, r) has `m + r - 1`).
pub fn batched_products(count: usize, a: &[f32], b: &[f32], dst: &mut [f32], (m, n, k): (usize, usize, usize), parallel: bool) {
    assert!(a.len() >= count * m * k && b.len() >= count * k * n && dst.len() >= count * m * n, "Winograd products: buffers too small");
    let dst = SendPtr::new(dst.as_mut_ptr());
    for_each_index_with(
        count,
        parallel,
        || (),
        |_, xi| {
            // SAFETY: the three matrices of `xi` are in bounds (asserted above); each `xi` writes only
            // its own `dst[xi]`.
            unsafe {
                gemm::gemm(
                    m,
                    n,
                    k,
                    dst.add(xi * m * n),
                    1,
                    n as isize,
                    false,
                    a.as_ptr().add(xi * m * k),
                    1,
                    k as isize,
                    b.as_ptr().add(xi * k * n),
                    1,
                    n as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                )
            };
        },
    );
}

/// `f(&mut scratch, i)` for `i in 0..n`, on rayon's pool when `parallel`; each task makes its
/// scratch once with `init` (not once per index), sequentially there is one.
pub fn for_each_index_with<T>(n: usize, parallel: bool, init: impl Fn() -> T + Sync + Send, f: impl Fn(&mut T, usize) + Sync + Send) {
    if parallel {
        (0..n).into_par_iter().for_each_init(init, f);
    } else {
        let mut scratch = init();
        (0..n).for_each(|i| f(&mut scratch, i));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The F(2, 3) identity in one dimension, composed in two: for any patch `d` and filter `g`,
    /// `A^T [(G g G^T) . (B^T d B)] A` equals the 2x2 valid correlation of `d` with `g`.
    #[test]
    fn filter_tile_gives_the_direct_convolution() {
        let g: [f32; 9] = [0.3, -1.2, 0.7, 2.0, 0.1, -0.4, 1.5, -0.9, 0.25];
        let d: [f32; 16] = std::array::from_fn(|i| ((i * 7 + 3) % 11) as f32 * 0.37 - 1.6);
        let u = filter_tile(g);
        let bt = [[1., 0., -1., 0.], [0., 1., 1., 0.], [0., -1., 1., 0.], [0., 1., 0., -1.]];
        let at = [[1., 1., 1., 0.], [0., 1., -1., -1.]];
        // V = B^T d B
        let mut v = [[0f32; 4]; 4];
        for i in 0..4 {
            for j in 0..4 {
                for k in 0..4 {
                    for l in 0..4 {
                        v[i][j] += bt[i][k] * d[k * 4 + l] * bt[j][l];
                    }
                }
            }
        }
        for a in 0..2 {
            for b in 0..2 {
                let mut y = 0f32;
                for i in 0..4 {
                    for j in 0..4 {
                        y += at[a][i] * u[i * 4 + j] * v[i][j] * at[b][j];
                    }
                }
                let direct: f32 =
                    (0..3).flat_map(|ky| (0..3).map(move |kx| (ky, kx))).map(|(ky, kx)| g[ky * 3 + kx] * d[(a + ky) * 4 + b + kx]).sum();
                assert!((y - direct).abs() < 1e-5, "({a}, {b}): {y} vs {direct}");
            }
        }
    }
}
