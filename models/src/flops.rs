//! Analytic FLOP formulas shared by the families.
//!
//! Convention (printed by the CLI next to every figure): **FLOPs = 2 x multiply-accumulates**,
//! forward only, for matmuls, linears and convolutions; attention is counted explicitly as
//! `2*q*k*C` for the scores plus `2*q*k*C` for the weighted sum, with `k` the number of keys
//! actually attended (the cache length during cached decoding). Norms, activations, softmax,
//! resampling and sampling are elementwise and not counted. Per-family step formulas live in the
//! family's file and are built from these.

/// FLOPs for the scale in FLOPs -> GFLOP conversions.
pub const GIGA: f64 = 1e9;

/// The convention, as one line for CSV headers and summaries.
pub const CONVENTION: &str =
    "FLOPs = 2 x MACs, forward only; linear/conv/matmul and attention (QK^T and AV with the attended key count) counted, elementwise ops not";

/// `tokens` rows through a Linear `in_dim -> out_dim` (bias ignored).
pub fn linear(tokens: usize, in_dim: usize, out_dim: usize) -> f64 {
    2.0 * tokens as f64 * in_dim as f64 * out_dim as f64
}

/// Attention scores and weighted sum: `q` queries over `k` keys, total width `c` (all heads).
pub fn attention_core(q: usize, k: usize, c: usize) -> f64 {
    4.0 * q as f64 * k as f64 * c as f64
}

/// A full self-attention layer: qkv and output projections (`8 q C^2`) plus the core.
pub fn self_attention(q: usize, k: usize, c: usize) -> f64 {
    linear(q, c, 3 * c) + linear(q, c, c) + attention_core(q, k, c)
}

/// 2-matrix MLP `C -> H -> C`.
pub fn mlp(tokens: usize, c: usize, hidden: usize) -> f64 {
    linear(tokens, c, hidden) + linear(tokens, hidden, c)
}

/// SwiGLU `C -> 2 x H -> C`.
pub fn swiglu(tokens: usize, c: usize, hidden: usize) -> f64 {
    2.0 * linear(tokens, c, hidden) + linear(tokens, hidden, c)
}

/// A square `k x k` convolution producing an `out_h x out_w x cout` map from `cin` channels.
pub fn conv2d(out_h: usize, out_w: usize, cin: usize, cout: usize, k: usize) -> f64 {
    2.0 * out_h as f64 * out_w as f64 * cin as f64 * cout as f64 * (k * k) as f64
}

/// Achieved throughput in GFLOP/s.
pub fn gflops_per_s(flops: f64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        flops / seconds / GIGA
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pre_ln_block_is_24qc2_plus_4qkc() {
        let (q, k, c) = (7, 11, 64);
        let block = self_attention(q, k, c) + mlp(q, c, 4 * c);
        let expected = 24.0 * (q * c * c) as f64 + 4.0 * (q * k * c) as f64;
        assert_eq!(block, expected);
        assert_eq!(swiglu(1, 2, 3), 6.0 * 2.0 * 3.0);
        assert_eq!(conv2d(2, 2, 3, 4, 3), 2.0 * 4.0 * 3.0 * 4.0 * 9.0);
    }
}
