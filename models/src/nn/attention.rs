//! Multi-head self-attention with an optional preallocated key/value cache.
//!
//! One implementation serves every family:
//! * VAR: fused `mat_qkv` (bias = `[q_bias, zero_k_bias, v_bias]`), L2-normalised q/k with a
//!   learned per-head scale ([`QkNorm::L2WithHeadScale`]), softmax scale 1, a [`KvCache`] that
//!   receives a whole scale (1..256 tokens) per step; no mask while caching (block-causal by
//!   construction), the block-causal mask ([`block_causal_mask`]) for teacher forcing.
//! * LlamaGen: fused `wqkv` / `wo` without biases, 2-D RoPE through
//!   [`MultiHeadAttention::forward_with_qk_transform`], a cache written one token per step.
//! * taming GPT: separate `query` / `key` / `value` / `proj` ([`MultiHeadAttention::load_separate`]),
//!   causal, cache.
//! * MAR / AutoNAT (timm `Attention`): fused `qkv` (with bias) / `proj`, bidirectional, no cache.
//!
//! Tensors: tokens `(B, T, C)`; per-head tensors `(B, H, T, Dh)`, contiguous. The cache holds
//! `(B, H, capacity, Dh)` buffers allocated once and written in place with `slice_set`: no
//! per-step concatenation and no re-allocation. Masks are additive (0 / -inf), broadcastable to
//! `(B, H, Tq, Tk)`.

use crate::nn::linear::RowLinear;
use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::{linear_b, Linear, VarBuilder};

/// Preallocated key/value cache, written in place.
///
/// `append` copies the new keys/values into the next free slots and returns views of every
/// slot written so far (`narrow` on the time axis: no copy; candle's matmul accepts these
/// strided views directly).
#[derive(Clone, Debug)]
pub struct KvCache {
    k: Tensor,
    v: Tensor,
    len: usize,
}

impl KvCache {
    /// Buffers of shape `(batch, heads, capacity, head_dim)`, zero-initialised.
    pub fn new(batch: usize, heads: usize, capacity: usize, head_dim: usize, dtype: DType, device: &Device) -> Result<Self> {
        let shape = (batch, heads, capacity, head_dim);
        Ok(Self { k: Tensor::zeros(shape, dtype, device)?, v: Tensor::zeros(shape, dtype, device)?, len: 0 })
    }

    /// Appends `(B, H, t, Dh)` keys/values after the ones already cached and returns views of
    /// all cached keys and values `(B, H, len, Dh)`.
    pub fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let t = k.dim(2)?;
        self.write_at(self.len, k, v)?;
        self.len += t;
        Ok((self.keys()?, self.values()?))
    }

    /// Writes `(B, H, t, Dh)` keys/values at slots `pos..pos+t` without changing the cached
    /// length (for samplers that address slots explicitly, like LlamaGen's `input_pos`).
    pub fn write_at(&mut self, pos: usize, k: &Tensor, v: &Tensor) -> Result<()> {
        let t = k.dim(2)?;
        if pos + t > self.capacity() {
            candle_core::bail!("KV cache overflow: writing {t} slots at {pos} exceeds capacity {}", self.capacity());
        }
        if k.dims() != v.dims() {
            candle_core::bail!("KV cache: keys {:?} and values {:?} differ in shape", k.dims(), v.dims());
        }
        self.k.slice_set(&k.contiguous()?, 2, pos)?;
        self.v.slice_set(&v.contiguous()?, 2, pos)?;
        Ok(())
    }

    /// Marks `len` slots as filled (after [`write_at`](Self::write_at)).
    pub fn set_len(&mut self, len: usize) -> Result<()> {
        if len > self.capacity() {
            candle_core::bail!("KV cache length {len} exceeds capacity {}", self.capacity());
        }
        self.len = len;
        Ok(())
    }

    /// View of the cached keys `(B, H, len, Dh)`.
    pub fn keys(&self) -> Result<Tensor> {
        self.k.narrow(2, 0, self.len)
    }
    /// View of the cached values `(B, H, len, Dh)`.
    pub fn values(&self) -> Result<Tensor> {
        self.v.narrow(2, 0, self.len)
    }
    /// The whole key buffer including unwritten (zero) slots, for samplers that attend over the
    /// full cache with a mask, as LlamaGen's reference implementation does.
    pub fn key_buffer(&self) -> &Tensor {
        &self.k
    }
    pub fn value_buffer(&self) -> &Tensor {
        &self.v
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn capacity(&self) -> usize {
        self.k.dims()[2]
    }
    /// Forgets the cached entries (the buffers are kept and overwritten).
    pub fn reset(&mut self) {
        self.len = 0;
    }
}

/// Makes `caches` hold one empty cache per layer in `layers`, each for `batch` rows and
/// `capacity` positions. When the shapes already match the buffers are kept and only emptied,
/// so a sampler called again with the same batch allocates nothing.
pub fn reset_layer_caches<'a>(
    caches: &mut Vec<KvCache>,
    layers: impl ExactSizeIterator<Item = &'a MultiHeadAttention>,
    batch: usize,
    capacity: usize,
    dtype: DType,
    device: &Device,
) -> Result<()> {
    let same = caches.len() == layers.len()
        && caches.first().is_some_and(|c| c.capacity() == capacity && c.key_buffer().dim(0).ok() == Some(batch));
    if same {
        caches.iter_mut().for_each(|c| c.reset());
        return Ok(());
    }
    *caches = layers.map(|a| a.new_cache(batch, capacity, dtype, device)).collect::<Result<_>>()?;
    Ok(())
}

/// `softmax(scale * q k^T + mask) v` for `q (B, H, Tq, Dh)`, `k`/`v` `(B, H, Tk, Dh)` (strided
/// views allowed), additive `mask` broadcastable to `(B, H, Tq, Tk)`. Returns `(B, H, Tq, Dh)`.
pub fn scaled_dot_product_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, mask: Option<&Tensor>) -> Result<Tensor> {
    // Scaling q (Tq x Dh) is cheaper than scaling the scores (Tq x Tk); it is also the order
    // VAR's `slow_attn` uses (`query.mul(scale) @ key^T`).
    let q = if scale != 1.0 { (q * scale)? } else { q.clone() };
    let scores = q.matmul(&k.t()?)?;
    let scores = match mask {
        Some(m) => scores.broadcast_add(m)?,
        None => scores,
    };
    crate::nn::fast_math::softmax_last_dim(&scores)?.matmul(v)
}

/// Additive causal mask `(1, 1, q_len, k_len)` for queries at positions
/// `offset..offset+q_len` over keys `0..k_len`: key j is visible to query i iff `j <= offset + i`.
pub fn causal_mask(q_len: usize, k_len: usize, offset: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let data: Vec<f32> = (0..q_len).flat_map(|i| (0..k_len).map(move |j| if j <= offset + i { 0.0 } else { f32::NEG_INFINITY })).collect();
    Tensor::from_vec(data, (1, 1, q_len, k_len), device)?.to_dtype(dtype)
}

/// VAR's block-causal mask `(1, 1, L, L)` over groups of tokens (scales): token i sees token j
/// iff group(j) <= group(i). `group_sizes` = tokens per group (`pn^2` per scale).
pub fn block_causal_mask(group_sizes: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
    let group: Vec<usize> = group_sizes.iter().enumerate().flat_map(|(g, &n)| std::iter::repeat_n(g, n)).collect();
    let l = group.len();
    let data: Vec<f32> = group.iter().flat_map(|&gi| group.iter().map(move |&gj| if gj <= gi { 0.0 } else { f32::NEG_INFINITY })).collect();
    Tensor::from_vec(data, (1, 1, l, l), device)?.to_dtype(dtype)
}

/// `x / max(||x||_2, eps)` over the last dimension (`F.normalize(x, dim=-1)`, eps 1e-12).
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.maximum(1e-12f64)?;
    x.broadcast_div(&norm)
}

/// How q, k and v are produced from the tokens.
#[derive(Clone, Debug)]
pub enum QkvProjection {
    /// One Linear giving `[q | k | v]`, each `heads * head_dim` wide and head-major inside.
    Fused(Linear),
    /// Three Linears.
    Separate { q: Linear, k: Linear, v: Linear },
}

/// Optional normalisation of q and k before the scores.
#[derive(Clone, Debug)]
pub enum QkNorm {
    None,
    /// VAR (`attn_l2_norm=True`): `q = normalize(q) * q_scale[h]`, `k = normalize(k)`, where
    /// `q_scale` `(1, H, 1, 1)` is `exp(min(scale_mul_1H11, ln 100))`, precomputed at load.
    L2WithHeadScale {
        q_scale: Tensor,
    },
}

/// Multi-head attention: projections, optional q/k normalisation, optional cache, output
/// projection.
///
/// The projections are held as [`RowLinear`]s (weights transposed once at load): a cached
/// decode step multiplies 1-16 rows by each weight, where candle's matmul over the `(out, in)`
/// weight viewed transposed runs 3-5x slower than over a contiguous `(in, out)` copy (measured
/// on the 2-core build machine, 2 x 768 by 768 x 2304: 8 vs 26 GB/s of weight traffic).
#[derive(Clone, Debug)]
pub struct MultiHeadAttention {
    qkv: QkvRows,
    proj: RowLinear,
    num_heads: usize,
    head_dim: usize,
    softmax_scale: f64,
    qk_norm: QkNorm,
}

/// [`QkvProjection`] with the weights in row layout.
#[derive(Clone, Debug)]
enum QkvRows {
    Fused(RowLinear),
    Separate { q: RowLinear, k: RowLinear, v: RowLinear },
}

impl MultiHeadAttention {
    pub fn new(qkv: QkvProjection, proj: Linear, num_heads: usize, head_dim: usize, softmax_scale: f64, qk_norm: QkNorm) -> Result<Self> {
        let qkv = match qkv {
            QkvProjection::Fused(l) => QkvRows::Fused(RowLinear::from_linear(&l)?),
            QkvProjection::Separate { q, k, v } => {
                QkvRows::Separate { q: RowLinear::from_linear(&q)?, k: RowLinear::from_linear(&k)?, v: RowLinear::from_linear(&v)? }
            }
        };
        Ok(Self { qkv, proj: RowLinear::from_linear(&proj)?, num_heads, head_dim, softmax_scale, qk_norm })
    }

    /// Fused projection `<qkv_name>` `(3C, C)` and output `<proj_name>` `(C, C)`, softmax scale
    /// `1/sqrt(head_dim)`. timm / MAR / AutoNAT: `("qkv", "proj")` with biases; LlamaGen:
    /// `("wqkv", "wo")` without.
    pub fn load_fused(
        vb: VarBuilder,
        dim: usize,
        num_heads: usize,
        (qkv_name, proj_name): (&str, &str),
        qkv_bias: bool,
        proj_bias: bool,
    ) -> Result<Self> {
        let head_dim = head_dim_of(dim, num_heads)?;
        let qkv = linear_b(dim, 3 * dim, qkv_bias, vb.pp(qkv_name))?;
        let proj = linear_b(dim, dim, proj_bias, vb.pp(proj_name))?;
        Self::new(QkvProjection::Fused(qkv), proj, num_heads, head_dim, 1.0 / (head_dim as f64).sqrt(), QkNorm::None)
    }

    /// Separate projections, e.g. taming's `("query", "key", "value")` + `"proj"`, all with bias
    /// when `bias` is set. Softmax scale `1/sqrt(head_dim)`.
    pub fn load_separate(
        vb: VarBuilder,
        dim: usize,
        num_heads: usize,
        (q_name, k_name, v_name): (&str, &str, &str),
        proj_name: &str,
        bias: bool,
    ) -> Result<Self> {
        let head_dim = head_dim_of(dim, num_heads)?;
        let qkv = QkvProjection::Separate {
            q: linear_b(dim, dim, bias, vb.pp(q_name))?,
            k: linear_b(dim, dim, bias, vb.pp(k_name))?,
            v: linear_b(dim, dim, bias, vb.pp(v_name))?,
        };
        let proj = linear_b(dim, dim, bias, vb.pp(proj_name))?;
        Self::new(qkv, proj, num_heads, head_dim, 1.0 / (head_dim as f64).sqrt(), QkNorm::None)
    }

    pub fn num_heads(&self) -> usize {
        self.num_heads
    }
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }
    pub fn softmax_scale(&self) -> f64 {
        self.softmax_scale
    }

    /// An empty cache sized for this layer.
    pub fn new_cache(&self, batch: usize, capacity: usize, dtype: DType, device: &Device) -> Result<KvCache> {
        KvCache::new(batch, self.num_heads, capacity, self.head_dim, dtype, device)
    }

    /// q, k, v as `(B, H, T, Dh)` contiguous tensors, q/k-normalisation applied.
    pub fn project_qkv(&self, x: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, t, _) = x.dims3()?;
        let (h, dh) = (self.num_heads, self.head_dim);
        let (q, k, v) = match &self.qkv {
            QkvRows::Fused(lin) => {
                // (B, T, 3, H, Dh) -> (3, B, H, T, Dh): one pass for all three; on the CPU the
                // L2 q/k-norm and the q scale are applied in the same pass.
                let y = lin.forward(x)?;
                if let (QkNorm::L2WithHeadScale { q_scale }, true) = (&self.qk_norm, genbench_runtime::kernels::fast_on(y.device())) {
                    let scale = q_scale.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
                    let all = crate::nn::fused::split_qkv_heads(&y, h, dh, Some(&scale))?;
                    return Ok((all.get(0)?, all.get(1)?, all.get(2)?));
                }
                let all = crate::nn::fused::split_qkv_heads(&y, h, dh, None)?;
                let _ = (b, t);
                (all.get(0)?, all.get(1)?, all.get(2)?)
            }
            QkvRows::Separate { q, k, v } => {
                let heads = |lin: &RowLinear| -> Result<Tensor> { lin.forward(x)?.reshape((b, t, h, dh))?.transpose(1, 2)?.contiguous() };
                (heads(q)?, heads(k)?, heads(v)?)
            }
        };
        match &self.qk_norm {
            QkNorm::None => Ok((q, k, v)),
            QkNorm::L2WithHeadScale { q_scale } => {
                let q = l2_normalize(&q)?.broadcast_mul(q_scale)?;
                Ok((q, l2_normalize(&k)?, v))
            }
        }
    }

    /// Attention over `x (B, T, C)`: with a cache, the new keys/values are appended and the
    /// queries attend to everything cached (including themselves); `mask` (if any) applies to
    /// the scores `(B, H, T, keys)`.
    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>, cache: Option<&mut KvCache>) -> Result<Tensor> {
        let (q, k, v) = self.project_qkv(x)?;
        self.attend(&q, &k, &v, mask, cache)
    }

    /// As [`forward`](Self::forward) with a transform applied to q and k (after projection and
    /// q/k-norm, before caching): rotary position embeddings.
    pub fn forward_with_qk_transform(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
        transform: &dyn Fn(&Tensor, &Tensor) -> Result<(Tensor, Tensor)>,
    ) -> Result<Tensor> {
        let (q, k, v) = self.project_qkv(x)?;
        let (q, k) = transform(&q, &k)?;
        self.attend(&q, &k, &v, mask, cache)
    }

    /// Scores, softmax, weighted sum and output projection for given per-head q, k, v.
    pub fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>, cache: Option<&mut KvCache>) -> Result<Tensor> {
        let (b, _, t, _) = q.dims4()?;
        // Scores, softmax and weighted sum with the heads merged (fused and tiled on the CPU).
        let out = match cache {
            Some(cache) => {
                let (k_all, v_all) = cache.append(k, v)?;
                crate::nn::fused::attention_merged(q, &k_all, &v_all, self.softmax_scale, mask)?
            }
            None => crate::nn::fused::attention_merged(q, k, v, self.softmax_scale, mask)?,
        };
        debug_assert_eq!(out.dims(), &[b, t, self.num_heads * self.head_dim]);
        self.proj.forward(&out)
    }
}

fn head_dim_of(dim: usize, num_heads: usize) -> Result<usize> {
    if num_heads == 0 || !dim.is_multiple_of(num_heads) {
        candle_core::bail!("attention width {dim} does not split into {num_heads} heads");
    }
    Ok(dim / num_heads)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::IndexOp;
    use std::collections::HashMap;

    fn random_attention(dev: &Device, dim: usize, heads: usize) -> MultiHeadAttention {
        let mut m = HashMap::new();
        m.insert("qkv.weight".to_string(), Tensor::randn(0f32, 0.3, (3 * dim, dim), dev).unwrap());
        m.insert("qkv.bias".to_string(), Tensor::randn(0f32, 0.3, 3 * dim, dev).unwrap());
        m.insert("proj.weight".to_string(), Tensor::randn(0f32, 0.3, (dim, dim), dev).unwrap());
        m.insert("proj.bias".to_string(), Tensor::randn(0f32, 0.3, dim, dev).unwrap());
        let vb = VarBuilder::from_tensors(m, DType::F32, dev);
        MultiHeadAttention::load_fused(vb, dim, heads, ("qkv", "proj"), true, true).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    /// Feeding a sequence in chunks through the cache gives the same outputs as one causal
    /// (block-causal) pass over the whole sequence.
    #[test]
    fn cached_chunks_equal_block_causal_full_pass() {
        let dev = Device::Cpu;
        let attn = random_attention(&dev, 16, 2);
        let groups = [1usize, 4, 9];
        let l: usize = groups.iter().sum();
        let x = Tensor::randn(0f32, 1.0, (3, l, 16), &dev).unwrap();
        let mask = block_causal_mask(&groups, DType::F32, &dev).unwrap();
        let full = attn.forward(&x, Some(&mask), None).unwrap();
        let mut cache = attn.new_cache(3, l, DType::F32, &dev).unwrap();
        let mut start = 0;
        let mut parts = vec![];
        for &g in &groups {
            parts.push(attn.forward(&x.narrow(1, start, g).unwrap(), None, Some(&mut cache)).unwrap());
            start += g;
        }
        assert_eq!(cache.len(), l);
        let chunked = Tensor::cat(&parts, 1).unwrap();
        assert!(max_diff(&full, &chunked) < 1e-5);
        // single-token steps equal a causal pass
        let causal = causal_mask(l, l, 0, DType::F32, &dev).unwrap();
        let full_causal = attn.forward(&x, Some(&causal), None).unwrap();
        cache.reset();
        for i in 0..l {
            let y = attn.forward(&x.narrow(1, i, 1).unwrap(), None, Some(&mut cache)).unwrap();
            assert!(max_diff(&y, &full_causal.i((.., i..i + 1, ..)).unwrap()) < 1e-5);
        }
    }

    #[test]
    fn cache_overflow_is_an_error() {
        let dev = Device::Cpu;
        let mut cache = KvCache::new(1, 1, 2, 4, DType::F32, &dev).unwrap();
        let kv = Tensor::zeros((1, 1, 3, 4), DType::F32, &dev).unwrap();
        assert!(cache.append(&kv, &kv).is_err());
    }

    #[test]
    fn l2_norm_with_zero_vector_stays_finite() {
        let x = Tensor::new(&[[3f32, 4.], [0., 0.]], &Device::Cpu).unwrap();
        let y = l2_normalize(&x).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(y, vec![vec![0.6, 0.8], vec![0.0, 0.0]]);
    }
}
