//! Vector-quantisation codebooks: nearest entry by squared L2 distance and embedding gather.
//!
//! Users: VAR's multi-scale quantiser (plain L2, `quantize.embedding.weight (V, Cvae)`), taming's
//! `VectorQuantizer2` (plain L2), LlamaGen's VQ-16 (rows and queries L2-normalised,
//! `codebook_l2_norm=True`; decode gathers normalised rows), the MAGE VQGAN (plain L2).
//!
//! Distances are `||z||^2 + ||e||^2 - 2 z.e` (the form all references compute, via `addmm`),
//! argmin takes the first index on ties like `torch.argmin`.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::VarBuilder;

/// A codebook `(V, D)` with its squared row norms precomputed.
#[derive(Clone, Debug)]
pub struct Codebook {
    /// Rows as used for lookup and decode (L2-normalised when `l2_normalized`).
    embedding: Tensor,
    /// `||e||^2` per row, `(V,)`.
    sq_norms: Tensor,
    l2_normalized: bool,
}

impl Codebook {
    /// Wraps a `(V, D)` table. With `l2_normalize`, rows are normalised once here and queries are
    /// normalised before the search (LlamaGen).
    pub fn new(embedding: Tensor, l2_normalize: bool) -> Result<Self> {
        let embedding = if l2_normalize { crate::nn::attention::l2_normalize(&embedding)? } else { embedding };
        let sq_norms = embedding.sqr()?.sum(D::Minus1)?;
        Ok(Self { embedding, sq_norms, l2_normalized: l2_normalize })
    }

    /// `<vb>.weight` of shape `(vocab, dim)` (an `nn.Embedding`).
    pub fn load(vb: VarBuilder, vocab: usize, dim: usize, l2_normalize: bool) -> Result<Self> {
        Self::new(vb.get((vocab, dim), "weight")?, l2_normalize)
    }

    pub fn vocab_size(&self) -> usize {
        self.embedding.dims()[0]
    }
    pub fn dim(&self) -> usize {
        self.embedding.dims()[1]
    }
    /// The `(V, D)` rows used for decode (normalised if the codebook is).
    pub fn embedding(&self) -> &Tensor {
        &self.embedding
    }

    /// Squared distances `(N, V)` from queries `z (N, D)`.
    pub fn distances(&self, z: &Tensor) -> Result<Tensor> {
        let z = if self.l2_normalized { crate::nn::attention::l2_normalize(z)? } else { z.clone() };
        let z_sq = z.sqr()?.sum_keepdim(D::Minus1)?;
        let cross = z.matmul(&self.embedding.t()?)?;
        z_sq.broadcast_add(&self.sq_norms)?.broadcast_sub(&(cross * 2.0)?)
    }

    /// Index of the nearest entry for each query row `z (N, D)`: `(N,)` u32.
    pub fn nearest(&self, z: &Tensor) -> Result<Tensor> {
        let z = if self.l2_normalized { crate::nn::attention::l2_normalize(z)? } else { z.clone() };
        // Same distances as `distances`, reduced tile by tile on the CPU (see `nn::fused`).
        crate::nn::fused::nearest_code(&z, &self.embedding, &self.sq_norms)
    }

    /// Nearest entries for a feature map `(B, D, h, w)`: `(B, h*w)` u32, row-major positions.
    pub fn nearest_map(&self, z: &Tensor) -> Result<Tensor> {
        let (b, d, h, w) = z.dims4()?;
        let rows = z.permute((0, 2, 3, 1))?.reshape((b * h * w, d))?;
        self.nearest(&rows)?.reshape((b, h * w))
    }

    /// Gathers rows: ids of any shape `S` -> `S x D`.
    pub fn lookup(&self, ids: &Tensor) -> Result<Tensor> {
        candle_nn::Embedding::new(self.embedding.clone(), self.dim()).forward(&ids.to_dtype(DType::U32)?)
    }

    /// Gathers `(B, h*w)` ids into a feature map `(B, D, h, w)`.
    pub fn lookup_map(&self, ids: &Tensor, h: usize, w: usize) -> Result<Tensor> {
        let b = ids.dim(0)?;
        self.lookup(ids)?.reshape((b, h, w, self.dim()))?.permute((0, 3, 1, 2))?.contiguous()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn nearest_and_lookup() {
        let dev = Device::Cpu;
        let e = Tensor::new(&[[0f32, 0.], [1., 0.], [0., 2.]], &dev).unwrap();
        let cb = Codebook::new(e, false).unwrap();
        let z = Tensor::new(&[[0.9f32, 0.1], [0.1, 1.2], [0.1, -0.1]], &dev).unwrap();
        assert_eq!(cb.nearest(&z).unwrap().to_vec1::<u32>().unwrap(), vec![1, 2, 0]);
        let d = cb.distances(&z).unwrap().to_vec2::<f32>().unwrap();
        assert!((d[0][1] - 0.02).abs() < 1e-6);
        let map = Tensor::new(&[[0u32, 2]], &dev).unwrap();
        let m = cb.lookup_map(&map, 1, 2).unwrap();
        assert_eq!(m.dims(), &[1, 2, 1, 2]);
        assert_eq!(m.flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![0., 0., 0., 2.]);
        // normalised codebook: direction decides
        let e = Tensor::new(&[[10f32, 0.], [0., 0.1]], &dev).unwrap();
        let cb = Codebook::new(e, true).unwrap();
        let z = Tensor::new(&[[0.1f32, 0.2]], &dev).unwrap();
        assert_eq!(cb.nearest(&z).unwrap().to_vec1::<u32>().unwrap(), vec![1]);
        assert_eq!(cb.nearest_map(&z.reshape((1, 2, 1, 1)).unwrap()).unwrap().dims(), &[1, 1]);
    }
}
