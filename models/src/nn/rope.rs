//! Rotary position embeddings over a 2-D token grid (LlamaGen's `precompute_freqs_cis_2d` and
//! `apply_rotary_emb`).
//!
//! For a head of `head_dim` channels there are `head_dim / 2` rotation pairs, interleaved: pair
//! `i` is channels `(2i, 2i + 1)` and is rotated as `(x0 cos - x1 sin, x1 cos + x0 sin)`. With
//! `half = head_dim / 2` and `f_j = base^(-2j / half)` for `j < half / 2`, image token `n` of a
//! `grid x grid` raster sits at `(row, col) = (n / grid, n % grid)`; its first `half / 2` pairs
//! rotate by `row * f_j` and its next `half / 2` pairs by `col * f_j`.
//!
//! The table starts with `prefix` rows of cos = sin = 0 (LlamaGen's class / caption tokens): those
//! positions' queries and keys are multiplied to zero in every layer. That looks like a bug but it
//! is what the published weights were trained with, so it is reproduced exactly.

use candle_core::{DType, Device, Result, Tensor};

/// The cos / sin tables of a 2-D RoPE, one row per sequence position (prefix rows first).
#[derive(Clone, Debug)]
pub struct Rope2d {
    /// (prefix + grid^2, head_dim / 2), f32.
    cos: Tensor,
    /// (prefix + grid^2, head_dim / 2), f32.
    sin: Tensor,
    grid: usize,
    prefix: usize,
    head_dim: usize,
}

impl Rope2d {
    /// `precompute_freqs_cis_2d(grid, head_dim, base, prefix)`. `head_dim` must be a multiple of
    /// 4 (two axes, each made of complex pairs).
    pub fn new(grid: usize, head_dim: usize, base: f64, prefix: usize, device: &Device) -> Result<Self> {
        if !head_dim.is_multiple_of(4) || head_dim == 0 {
            candle_core::bail!("2-D RoPE needs head_dim divisible by 4, got {head_dim}");
        }
        let half = head_dim / 2;
        let quarter = half / 2;
        // The reference computes the frequencies and the angles in float32 (torch default dtype)
        // and takes cos / sin of the float32 angle: do the same so the table matches to an ulp.
        let freqs: Vec<f32> = (0..quarter).map(|j| 1.0f32 / (base as f32).powf((2 * j) as f32 / half as f32)).collect();
        let rows = prefix + grid * grid;
        let mut cos = vec![0f32; rows * half];
        let mut sin = vec![0f32; rows * half];
        for n in 0..grid * grid {
            let (r, c) = ((n / grid) as f32, (n % grid) as f32);
            let row = (prefix + n) * half;
            for (j, &f) in freqs.iter().enumerate() {
                let (a_row, a_col) = (r * f, c * f);
                cos[row + j] = (a_row as f64).cos() as f32;
                sin[row + j] = (a_row as f64).sin() as f32;
                cos[row + quarter + j] = (a_col as f64).cos() as f32;
                sin[row + quarter + j] = (a_col as f64).sin() as f32;
            }
        }
        Ok(Self {
            cos: Tensor::from_vec(cos, (rows, half), device)?,
            sin: Tensor::from_vec(sin, (rows, half), device)?,
            grid,
            prefix,
            head_dim,
        })
    }

    pub fn grid(&self) -> usize {
        self.grid
    }
    pub fn prefix(&self) -> usize {
        self.prefix
    }
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }
    /// Number of positions the table covers (prefix + grid^2).
    pub fn len(&self) -> usize {
        self.prefix + self.grid * self.grid
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The table in the reference's layout `(positions, head_dim / 2, 2)` with `[..., 0] = cos`,
    /// `[..., 1] = sin` (what LlamaGen stores as `freqs_cis`), for comparisons.
    pub fn freqs_cis(&self) -> Result<Tensor> {
        Tensor::stack(&[&self.cos, &self.sin], 2)
    }

    /// cos / sin rows for positions `start .. start + len`.
    pub fn cos_sin(&self, start: usize, len: usize) -> Result<(Tensor, Tensor)> {
        if start + len > self.len() {
            candle_core::bail!("RoPE positions {start}..{} past the table's {} rows", start + len, self.len());
        }
        Ok((self.cos.narrow(0, start, len)?, self.sin.narrow(0, start, len)?))
    }

    /// Rotates `x` laid out `(B, heads, T, head_dim)` whose sequence positions are
    /// `start .. start + T`. The rotation runs in f32 (as the reference's `x.float()`), and the
    /// result is cast back to `x`'s dtype.
    pub fn apply(&self, x: &Tensor, start: usize) -> Result<Tensor> {
        let (_b, _h, t, d) = x.dims4()?;
        if d != self.head_dim {
            candle_core::bail!("RoPE built for head_dim {} applied to head_dim {d}", self.head_dim);
        }
        let (cos, sin) = self.cos_sin(start, t)?;
        let dtype = x.dtype();
        let xf = x.to_dtype(DType::F32)?.contiguous()?;
        let out = candle_nn::rotary_emb::rope_i(&xf, &cos.to_device(x.device())?, &sin.to_device(x.device())?)?;
        out.to_dtype(dtype)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_rows_then_columns_and_zero_prefix() {
        let rope = Rope2d::new(3, 8, 10000.0, 1, &Device::Cpu).unwrap();
        let cos = rope.cos.to_vec2::<f32>().unwrap();
        let sin = rope.sin.to_vec2::<f32>().unwrap();
        assert_eq!(cos.len(), 10);
        // Prefix row: cos = sin = 0 (not the identity rotation).
        assert!(cos[0].iter().chain(&sin[0]).all(|&v| v == 0.0));
        // Token 5 sits at (row 1, col 2). half = 4, quarter = 2, f = [1, 10000^-0.5].
        let f1 = 1.0f32 / 10000f32.powf(0.5);
        let expect_angles = [1.0f32, f1, 2.0, 2.0 * f1];
        for (j, a) in expect_angles.iter().enumerate() {
            assert!((cos[6][j] - a.cos()).abs() < 1e-6, "cos pair {j}");
            assert!((sin[6][j] - a.sin()).abs() < 1e-6, "sin pair {j}");
        }
    }

    #[test]
    fn rotates_interleaved_pairs() {
        let rope = Rope2d::new(2, 4, 10000.0, 1, &Device::Cpu).unwrap();
        // One head, positions 0 (prefix) and 3 (token 2 at row 1, col 0), head_dim 4.
        let x = Tensor::new(&[[[[1f32, 2., 3., 4.], [1., 2., 3., 4.]]]], &Device::Cpu).unwrap();
        let x = x.narrow(2, 0, 2).unwrap();
        let y = rope.apply(&x.narrow(2, 0, 1).unwrap(), 0).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(y, vec![0.0; 4], "prefix position is zeroed");
        let y = rope.apply(&x.narrow(2, 1, 1).unwrap(), 3).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        // Pair 0 rotates by row 1 * f_0 = 1 rad; pair 1 by col 0 = identity.
        let (c, s) = (1f32.cos(), 1f32.sin());
        let want = [1.0 * c - 2.0 * s, 2.0 * c + 1.0 * s, 3.0, 4.0];
        for (a, b) in y.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{y:?} vs {want:?}");
        }
    }
}
