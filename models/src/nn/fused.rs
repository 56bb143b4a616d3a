//! Fused CPU kernels for the memory-bound steps around the matmuls of a transformer block.
//!
//! Each replaces a chain of candle ops (one full pass over the activations, one allocation and
//! one thread-pool dispatch per op) by one row-parallel pass on rayon's pool, the pool the
//! matmuls run on. Other devices and dtypes take the equivalent candle ops, so results agree to
//! float rounding everywhere.
//!
//! * [`ln_modulate`]: `LayerNorm(x) * scale_plus_one + shift` (no-affine LN; AdaLN: VAR blocks
//!   and head, DiT-style blocks).
//! * [`gated_residual`]: `x + y * gamma` (AdaLN's gated residual).
//! * [`split_qkv_heads`]: a fused `[q|k|v]` projection `(B, T, 3*H*Dh)` to per-head
//!   `(3, B, H, T, Dh)`, optionally L2-normalising q and k and scaling q per head (VAR).
//! * [`merge_heads`]: `(B, H, T, Dh)` to `(B, T, H*Dh)` before the output projection.

use candle_core::{CpuStorage, CustomOp1, CustomOp3, DType, Layout, Result, Shape, Tensor};
use genbench_runtime::threads::SendPtr;
use rayon::prelude::*;

/// The fast route applies: CPU, f32, and `GENBENCH_KERNELS` / `--kernels` is not `generic`.
pub(crate) fn fast_route(x: &Tensor) -> bool {
    genbench_runtime::kernels::fast_on(x.device()) && x.dtype() == DType::F32
}

/// The prologue of every fused CPU kernel: counts the call (for `genbench info` and the
/// route tests) and returns its inputs as contiguous f32 slices, in order.
pub(crate) fn f32_inputs<'a, const N: usize>(op: &'static str, inputs: [(&'a CpuStorage, &Layout); N]) -> Result<[&'a [f32]; N]> {
    genbench_runtime::kernels::record_fast(op);
    let mut slices: [&[f32]; N] = [&[]; N];
    for (slice, (storage, layout)) in slices.iter_mut().zip(inputs) {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("{op}: f32 only");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("{op}: input must be contiguous");
        };
        *slice = &data[start..end];
    }
    Ok(slices)
}

/// `LayerNorm(x) * scale_plus_one + shift` over the last dim of `x (N, T, C)` (no affine LN,
/// `eps`), with `scale_plus_one` / `shift` of shape `(N, 1, C)` (one row per batch element).
pub fn ln_modulate(x: &Tensor, eps: f64, scale_plus_one: &Tensor, shift: &Tensor) -> Result<Tensor> {
    let (n, _, c) = x.dims3()?;
    if scale_plus_one.elem_count() != n * c || shift.elem_count() != n * c {
        candle_core::bail!("ln_modulate: modulation {:?} / {:?} does not fit x {:?}", scale_plus_one.dims(), shift.dims(), x.dims());
    }
    if fast_route(x) && fast_route(scale_plus_one) && fast_route(shift) {
        return x.contiguous()?.apply_op3_no_bwd(&scale_plus_one.contiguous()?, &shift.contiguous()?, &LnModulate { eps: eps as f32 });
    }
    let ones = Tensor::ones(c, x.dtype(), x.device())?;
    let zeros = Tensor::zeros(c, x.dtype(), x.device())?;
    candle_nn::ops::layer_norm(&x.contiguous()?, &ones, &zeros, eps as f32)?.broadcast_mul(scale_plus_one)?.broadcast_add(shift)
}

struct LnModulate {
    eps: f32,
}

impl CustomOp3 for LnModulate {
    fn name(&self) -> &'static str {
        "ln-modulate"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let [x, scale, shift] = f32_inputs(self.name(), [(s1, l1), (s2, l2), (s3, l3)])?;
        let (n, t, c) = l1.shape().dims3()?;
        let mut out = uninit_f32(n * t * c);
        let eps = self.eps;
        out.par_chunks_mut(c).zip(x.par_chunks(c)).enumerate().for_each(|(row, (o, xr))| {
            let b = row / t;
            let (sc, sh) = (&scale[b * c..(b + 1) * c], &shift[b * c..(b + 1) * c]);
            // Two passes in f32 (mean, then centred second moment), like PyTorch's CPU kernel.
            let mean = xr.iter().sum::<f32>() / c as f32;
            let var = xr.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / c as f32;
            let rstd = 1.0 / (var + eps).sqrt();
            for i in 0..c {
                o[i] = (xr[i] - mean) * rstd * sc[i] + sh[i];
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// `x + y * gamma` for `x`, `y` of shape `(N, T, C)` and `gamma (N, 1, C)`.
pub fn gated_residual(x: &Tensor, y: &Tensor, gamma: &Tensor) -> Result<Tensor> {
    let (n, _, c) = x.dims3()?;
    if y.dims() != x.dims() || gamma.elem_count() != n * c {
        candle_core::bail!("gated_residual: shapes {:?}, {:?}, {:?} do not fit", x.dims(), y.dims(), gamma.dims());
    }
    if fast_route(x) && fast_route(y) && fast_route(gamma) {
        return x.contiguous()?.apply_op3_no_bwd(&y.contiguous()?, &gamma.contiguous()?, &GatedResidual);
    }
    x + y.broadcast_mul(gamma)?
}

struct GatedResidual;

impl CustomOp3 for GatedResidual {
    fn name(&self) -> &'static str {
        "gated-residual"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let [x, y, g] = f32_inputs(self.name(), [(s1, l1), (s2, l2), (s3, l3)])?;
        let (n, t, c) = l1.shape().dims3()?;
        let mut out = uninit_f32(n * t * c);
        out.par_chunks_mut(c).zip(x.par_chunks(c).zip(y.par_chunks(c))).enumerate().for_each(|(row, (o, (xr, yr)))| {
            let gr = &g[(row / t) * c..(row / t + 1) * c];
            for i in 0..c {
                o[i] = xr[i] + yr[i] * gr[i];
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// `(B, T, 3*H*Dh)` fused projections (feature order q|k|v, head-major inside each) to one
/// `(3, B, H, T, Dh)` tensor whose `get(0..3)` are q, k, v. With `l2_q_scale = Some(s)`, q and
/// k are L2-normalised per head (`x / max(|x|, 1e-12)`) and q is multiplied by `s[h]`.
pub fn split_qkv_heads(qkv: &Tensor, heads: usize, head_dim: usize, l2_q_scale: Option<&[f32]>) -> Result<Tensor> {
    let (b, t, w) = qkv.dims3()?;
    if w != 3 * heads * head_dim || l2_q_scale.is_some_and(|s| s.len() != heads) {
        candle_core::bail!("split_qkv_heads: width {w} is not 3 x {heads} x {head_dim}");
    }
    if fast_route(qkv) {
        let op = SplitQkv { heads, head_dim, q_scale: l2_q_scale.map(|s| s.to_vec()) };
        return qkv.contiguous()?.apply_op1_no_bwd(&op);
    }
    let all = qkv.reshape((b, t, 3, heads, head_dim))?.permute((2, 0, 3, 1, 4))?.contiguous()?;
    match l2_q_scale {
        None => Ok(all),
        Some(s) => {
            let scale = Tensor::from_slice(s, (1, heads, 1, 1), qkv.device())?.to_dtype(qkv.dtype())?;
            let q = crate::nn::attention::l2_normalize(&all.get(0)?)?.broadcast_mul(&scale)?;
            let k = crate::nn::attention::l2_normalize(&all.get(1)?)?;
            Tensor::stack(&[q, k, all.get(2)?], 0)
        }
    }
}

struct SplitQkv {
    heads: usize,
    head_dim: usize,
    q_scale: Option<Vec<f32>>,
}

impl CustomOp1 for SplitQkv {
    fn name(&self) -> &'static str {
        "split-qkv-heads"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let [x] = f32_inputs(self.name(), [(s, l)])?;
        let (b, t, w) = l.shape().dims3()?;
        let (h, d) = (self.heads, self.head_dim);
        let mut out = uninit_f32(3 * b * h * t * d);
        // One output block (which, batch, head) = a contiguous (T, Dh) slab.
        out.par_chunks_mut(t * d).enumerate().for_each(|(blk, o)| {
            let which = blk / (b * h);
            let bi = (blk / h) % b;
            let hi = blk % h;
            for ti in 0..t {
                let src = &x[(bi * t + ti) * w + (which * h + hi) * d..][..d];
                let dst = &mut o[ti * d..(ti + 1) * d];
                match (&self.q_scale, which) {
                    (Some(scale), 0 | 1) => {
                        let norm = src.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
                        let f = if which == 0 { scale[hi] / norm } else { 1.0 / norm };
                        for (o, v) in dst.iter_mut().zip(src) {
                            *o = v * f;
                        }
                    }
                    _ => dst.copy_from_slice(src),
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from_dims(&[3, b, h, t, d])))
    }
}

/// `(B, H, T, Dh)` -> `(B, T, H*Dh)` contiguous.
pub fn merge_heads(x: &Tensor) -> Result<Tensor> {
    let (b, h, t, d) = x.dims4()?;
    if fast_route(x) {
        return x.contiguous()?.apply_op1_no_bwd(&MergeHeads);
    }
    x.transpose(1, 2)?.reshape((b, t, h * d))
}

struct MergeHeads;

impl CustomOp1 for MergeHeads {
    fn name(&self) -> &'static str {
        "merge-heads"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let [x] = f32_inputs(self.name(), [(s, l)])?;
        let (b, h, t, d) = l.shape().dims4()?;
        let mut out = uninit_f32(b * t * h * d);
        out.par_chunks_mut(h * d).enumerate().for_each(|(row, o)| {
            let (bi, ti) = (row / t, row % t);
            for hi in 0..h {
                o[hi * d..(hi + 1) * d].copy_from_slice(&x[((bi * h + hi) * t + ti) * d..][..d]);
            }
        });
        Ok((CpuStorage::F32(out), Shape::from_dims(&[b, t, h * d])))
    }
}

/// `softmax(scale * q k^T + mask) v` with the heads merged: `q (B, H, Tq, Dh)`, `k`/`v`
/// `(B, H, Tk, Dh)` (strided views such as [`crate::nn::attention::KvCache`] slots are fine as
/// long as each row of Dh values is contiguous), optional additive mask of `Tq x Tk` values
/// (`(Tq, Tk)` or `(1, 1, Tq, Tk)`). Returns `(B, Tq, H*Dh)`, ready for the output projection.
///
/// On the CPU this never materialises the `(B, H, Tq, Tk)` scores: each rayon task takes one
/// (batch, head, 64-query tile), computes its scores into a per-thread buffer with gemm, applies
/// mask and softmax in place, multiplies by V and writes its rows of the merged output. (At
/// VAR-d16's last scale, batch 8, the scores would be 178 MB per block; allocating and filling
/// them cost more than the two matmuls.) Elsewhere it is the plain op sequence.
pub fn attention_merged(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, mask: Option<&Tensor>) -> Result<Tensor> {
    let (b, h, tq, d) = q.dims4()?;
    let tk = k.dim(2)?;
    let rows_contiguous = |t: &Tensor| {
        let st = t.stride();
        t.dims4().is_ok() && st[3] == 1 && st[2] == d
    };
    let mask_ok = mask.is_none_or(|m| m.elem_count() == tq * tk && m.dims().iter().rev().skip(2).all(|&x| x == 1));
    if fast_route(q)
        && fast_route(k)
        && fast_route(v)
        && k.dims() == v.dims()
        && k.dims()[..2] == [b, h]
        && k.dim(3)? == d
        && rows_contiguous(k)
        && rows_contiguous(v)
        && mask_ok
    {
        let mask = match mask {
            Some(m) => Some(m.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?),
            None => None,
        };
        return q.contiguous()?.apply_op3_no_bwd(k, v, &FusedAttention { scale: scale as f32, mask });
    }
    merge_heads(&crate::nn::attention::scaled_dot_product_attention(q, k, v, scale, mask)?)
}

struct FusedAttention {
    scale: f32,
    mask: Option<Vec<f32>>,
}

impl CustomOp3 for FusedAttention {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let [q] = f32_inputs(self.name(), [(s1, l1)])?;
        let (CpuStorage::F32(kd), CpuStorage::F32(vd)) = (s2, s3) else {
            candle_core::bail!("fused attention: f32 only");
        };
        let (b, h, tq, d) = l1.shape().dims4()?;
        let tk = l2.shape().dims()[2];
        let (ks, vs) = (l2.stride(), l3.stride());
        // Bounds of every row the kernel will read, checked once so the raw reads below are safe.
        for (data, l, st) in [(kd, l2, ks), (vd, l3, vs)] {
            if tk > 0 && b > 0 && h > 0 {
                let last = l.start_offset() + (b - 1) * st[0] + (h - 1) * st[1] + (tk - 1) * st[2] + d;
                if last > data.len() {
                    candle_core::bail!("fused attention: key/value view reads past its storage");
                }
            }
        }
        const TILE: usize = 64;
        let tiles = tq.div_ceil(TILE);
        let mut out = uninit_f32(b * tq * h * d);
        let out_ptr = SendPtr::new(out.as_mut_ptr());
        let (k_base, v_base) = (kd.as_ptr() as usize, vd.as_ptr() as usize);
        let (k_off, v_off) = (l2.start_offset(), l3.start_offset());
        thread_local! {
            static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        (0..b * h * tiles).into_par_iter().for_each(|task| {
            let (bh, tile) = (task / tiles, task % tiles);
            let (bi, hi) = (bh / h, bh % h);
            let t0 = tile * TILE;
            let m = TILE.min(tq - t0);
            SCORES.with(|cell| {
                let mut scores = cell.borrow_mut();
                if scores.len() < m * tk {
                    scores.resize(m * tk, 0.0);
                }
                let s = &mut scores[..m * tk];
                let qp = q[((bi * h + hi) * tq + t0) * d..].as_ptr();
                let kp = (k_base as *const f32).wrapping_add(k_off + bi * ks[0] + hi * ks[1]);
                let vp = (v_base as *const f32).wrapping_add(v_off + bi * vs[0] + hi * vs[1]);
                // SAFETY: every pointer/stride pair stays inside the slices checked above; each
                // task writes only rows t0..t0+m of head hi in batch bi of `out`.
                unsafe {
                    // scores (m x tk) = scale * q_tile (m x d) @ k^T (d x tk)
                    gemm::gemm(
                        m,
                        tk,
                        d,
                        s.as_mut_ptr(),
                        1,
                        tk as isize,
                        false,
                        qp,
                        1,
                        d as isize,
                        kp,
                        ks[2] as isize,
                        1,
                        0.0,
                        self.scale,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
                if let Some(mask) = &self.mask {
                    for r in 0..m {
                        let mrow = &mask[(t0 + r) * tk..(t0 + r + 1) * tk];
                        for (x, a) in s[r * tk..(r + 1) * tk].iter_mut().zip(mrow) {
                            *x += a;
                        }
                    }
                }
                crate::nn::fast_math::softmax_rows_inplace(s, tk);
                unsafe {
                    // out rows (m x d, row stride h*d) = probs (m x tk) @ v (tk x d)
                    let op = out_ptr.add((bi * tq + t0) * h * d + hi * d);
                    gemm::gemm(
                        m,
                        d,
                        tk,
                        op,
                        1,
                        (h * d) as isize,
                        false,
                        s.as_ptr(),
                        1,
                        tk as isize,
                        vp,
                        1,
                        vs[2] as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            });
        });
        Ok((CpuStorage::F32(out), Shape::from_dims(&[b, tq, h * d])))
    }
}

/// `x (rows, in) @ w_t (in, out) + bias`: on the CPU one gemm call that starts from the
/// broadcast bias (`dst = dst + x w`), saving the separate pass and thread-pool dispatch of a
/// broadcast add over the output; elsewhere matmul + broadcast add.
pub fn linear_rows(x: &Tensor, w_t: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let fast = fast_route(x) && fast_route(w_t) && w_t.is_contiguous() && bias.is_none_or(fast_route);
    if fast {
        let x = x.contiguous()?;
        return match bias {
            Some(b) => x.apply_op3_no_bwd(w_t, &b.contiguous()?, &LinearRows),
            None => x.apply_op2_no_bwd(w_t, &LinearRows),
        };
    }
    let y = x.matmul(w_t)?;
    match bias {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}

struct LinearRows;

/// Up to this many rows the columns are split between threads by hand (see `LinearRows::run`).
const SMALL_M: usize = 256;

/// Up to this many rows (a decode step with guidance and a few images) the streaming kernel
/// [`few_rows`] runs instead of gemm.
const FEW_ROWS: usize = 4;

/// `out[r, c0..c1] (+)= x[r, k0..k1] @ w[k0..k1, c0..c1]` for `rows <= FEW_ROWS`, `x` `(rows,
/// k)` and `w` `(k, n)` row-major: the whole product, or a partial sum over a range of k.
///
/// With 1-4 rows each weight element feeds at most 4 multiply-adds, so the product runs at the
/// speed the weight streams from memory. gemm packs the weight into blocks first (one more
/// pass over it per call); here the output rows are the accumulators and the weight rows
/// stream through four at a time, each read once.
///
/// SAFETY: `out` points to a `rows x n` buffer; no other task writes columns `c0..c1` meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn few_rows(
    x: &[f32],
    rows: usize,
    k: usize,
    ks: (usize, usize),
    w: &[f32],
    n: usize,
    cols: (usize, usize),
    out: SendPtr,
    accumulate: bool,
) {
    let task = FewRows { x, k, ks, w, n, cols, out, accumulate };
    match rows {
        1 => pulp::Arch::new().dispatch(FewRowsOf::<1>(task)),
        2 => pulp::Arch::new().dispatch(FewRowsOf::<2>(task)),
        3 => pulp::Arch::new().dispatch(FewRowsOf::<3>(task)),
        _ => pulp::Arch::new().dispatch(FewRowsOf::<4>(task)),
    }
}

struct FewRows<'a> {
    x: &'a [f32],
    k: usize,
    ks: (usize, usize),
    w: &'a [f32],
    n: usize,
    cols: (usize, usize),
    out: SendPtr,
    accumulate: bool,
}

/// [`FewRows`] with the row count as a constant, so the per-row loop unrolls.
struct FewRowsOf<'a, const R: usize>(FewRows<'a>);

impl<const R: usize> pulp::WithSimd for FewRowsOf<'_, R> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) {
        /// Columns per pass: the output rows' chunks (at most 64 KiB for 4 rows) stay in L2
        /// while the weight rows stream through; measured on LlamaGen-B's decode step (2 rows),
        /// 256-column passes were 5-20% slower (more, shorter strided runs over the weight).
        const CHUNK: usize = 4096;
        let FewRows { x, k, ks: (k0, k1), w, n, cols: (c0, c1), out, accumulate } = self.0;
        // SAFETY: row r, columns c0..c1 of the caller's `rows x n` output, this task's alone.
        let mut rows: [&mut [f32]; R] = std::array::from_fn(|r| unsafe { std::slice::from_raw_parts_mut(out.add(r * n + c0), c1 - c0) });
        if !accumulate {
            rows.iter_mut().for_each(|row| row.fill(0.0));
        }
        for cs in (c0..c1).step_by(CHUNK) {
            let (lo, width) = (cs - c0, CHUNK.min(c1 - cs));
            let mut kk = k0;
            while kk < k1 {
                // Four weight rows per sweep over the outputs (fewer at the end of k: the
                // missing ones repeat the last row with coefficient 0).
                let step = (k1 - kk).min(4);
                let wr: [&[f32]; 4] = std::array::from_fn(|i| {
                    let row = kk + i.min(step - 1);
                    &w[row * n + cs..row * n + cs + width]
                });
                let xs: [[f32; 4]; R] = std::array::from_fn(|r| std::array::from_fn(|i| if i < step { x[r * k + kk + i] } else { 0.0 }));
                let xv: [[S::f32s; 4]; R] = std::array::from_fn(|r| std::array::from_fn(|i| simd.splat_f32s(xs[r][i])));
                let (w0, w0t) = S::as_simd_f32s(wr[0]);
                let (w1, w1t) = S::as_simd_f32s(wr[1]);
                let (w2, w2t) = S::as_simd_f32s(wr[2]);
                let (w3, w3t) = S::as_simd_f32s(wr[3]);
                let mut heads: [&mut [S::f32s]; R] = [(); R].map(|_| &mut [][..]);
                let mut tails: [&mut [f32]; R] = [(); R].map(|_| &mut [][..]);
                for ((row, head), tail) in rows.iter_mut().zip(&mut heads).zip(&mut tails) {
                    (*head, *tail) = S::as_mut_simd_f32s(&mut row[lo..lo + width]);
                }
                for j in 0..w0.len() {
                    let (a, b, c, d) = (w0[j], w1[j], w2[j], w3[j]);
                    for r in 0..R {
                        let v = &mut heads[r][j];
                        *v = simd.mul_add_f32s(
                            xv[r][3],
                            d,
                            simd.mul_add_f32s(xv[r][2], c, simd.mul_add_f32s(xv[r][1], b, simd.mul_add_f32s(xv[r][0], a, *v))),
                        );
                    }
                }
                for j in 0..w0t.len() {
                    for r in 0..R {
                        let v = &mut tails[r][j];
                        *v = xs[r][3].mul_add(w3t[j], xs[r][2].mul_add(w2t[j], xs[r][1].mul_add(w1t[j], xs[r][0].mul_add(w0t[j], *v))));
                    }
                }
                kk += step;
            }
        }
    }
}

impl LinearRows {
    fn run(x: &[f32], xl: &Layout, w: &[f32], wl: &Layout, bias: Option<&[f32]>) -> Result<(CpuStorage, Shape)> {
        let (rows, k) = xl.shape().dims2()?;
        let (k2, n) = wl.shape().dims2()?;
        if k != k2 || bias.is_some_and(|b| b.len() != n) {
            candle_core::bail!("linear: x {:?} @ w {:?} does not fit", xl.shape(), wl.shape());
        }
        let mut out = uninit_f32(rows * n);
        if let Some(b) = bias {
            out.chunks_mut(n.max(1)).for_each(|r| r.copy_from_slice(b));
        }
        let threads = candle_core::utils::get_num_threads();
        if (1..=FEW_ROWS).contains(&rows) && k >= 16 && n >= 16 {
            // A decode step's handful of rows: the weight is read once from memory, so stream it
            // (see `few_rows`). Each thread takes a contiguous block of the weight's rows, one run
            // through memory, for a partial sum over that range of k; the partial sums (rows x n
            // each) are added at the end. With column blocks instead (each thread reading part
            // of every weight row) LlamaGen-B's decode step streamed at 82% of memcpy bandwidth,
            // with row blocks at 91% (18.2 -> 16.2 ms, three alternating runs of
            // `raster_ar_speed`). Column blocks remain for short weights with wide outputs.
            let op = SendPtr::new(out.as_mut_ptr());
            let accumulate = bias.is_some();
            if threads > 1 && k >= 64 * threads {
                let kb = k.div_ceil(threads).div_ceil(4) * 4;
                let parts = k.div_ceil(kb);
                let mut partial = uninit_f32((parts - 1) * rows * n);
                let pp = SendPtr::new(partial.as_mut_ptr());
                (0..parts).into_par_iter().for_each(|t| {
                    let (ks, dst, accumulate) = match t {
                        0 => ((0, kb), op, accumulate),
                        // SAFETY: part t > 0 writes its own `rows x n` slice of `partial`.
                        _ => ((t * kb, ((t + 1) * kb).min(k)), SendPtr::new(unsafe { pp.add((t - 1) * rows * n) }), false),
                    };
                    // SAFETY: each part writes its own `rows x n` buffer (`out` for part 0).
                    unsafe { few_rows(x, rows, k, ks, w, n, (0, n), dst, accumulate) };
                });
                for part in partial.chunks_exact(rows * n) {
                    out.iter_mut().zip(part).for_each(|(o, p)| *o += p);
                }
            } else {
                let parts = if n >= 64 * threads { threads } else { 1 };
                let block = n.div_ceil(parts).div_ceil(16) * 16;
                (0..parts).into_par_iter().for_each(|t| {
                    let c0 = t * block;
                    if c0 < n {
                        // SAFETY: tasks write disjoint column blocks of `out` (rows x n).
                        unsafe { few_rows(x, rows, k, (0, k), w, n, (c0, (c0 + block).min(n)), op, accumulate) };
                    }
                });
            }
            return Ok((CpuStorage::F32(out), Shape::from_dims(&[rows, n])));
        }
        if rows > 0 && rows <= SMALL_M && threads > 1 && n >= 64 * threads {
            // Few rows: gemm's own threading splits poorly here (measured on 2 cores, 72 x 1024
            // x 3072: 53 ms with Parallelism::Rayon(2) against 16 ms for two column halves), so
            // each thread takes a contiguous block of output columns with a sequential gemm.
            let block = n.div_ceil(threads).div_ceil(16) * 16;
            let (xp, wp, op) = (x.as_ptr() as usize, w.as_ptr() as usize, out.as_mut_ptr() as usize);
            let read_dst = bias.is_some();
            (0..threads).into_par_iter().for_each(|t| {
                let c0 = t * block;
                if c0 >= n {
                    return;
                }
                let cols = block.min(n - c0);
                // SAFETY: columns c0..c0+cols of w and out, disjoint between tasks.
                unsafe {
                    gemm::gemm(
                        rows,
                        cols,
                        k,
                        (op as *mut f32).add(c0),
                        1,
                        n as isize,
                        read_dst,
                        xp as *const f32,
                        1,
                        k as isize,
                        (wp as *const f32).add(c0),
                        1,
                        n as isize,
                        1.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            });
            return Ok((CpuStorage::F32(out), Shape::from_dims(&[rows, n])));
        }
        let par = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
        if rows > 0 && n > 0 {
            // SAFETY: x is rows x k, w is k x n, out is rows x n, all contiguous row-major.
            unsafe {
                gemm::gemm(
                    rows,
                    n,
                    k,
                    out.as_mut_ptr(),
                    1,
                    n as isize,
                    bias.is_some(),
                    x.as_ptr(),
                    1,
                    k as isize,
                    w.as_ptr(),
                    1,
                    n as isize,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    par,
                );
            }
        }
        Ok((CpuStorage::F32(out), Shape::from_dims(&[rows, n])))
    }
}

impl candle_core::CustomOp2 for LinearRows {
    fn name(&self) -> &'static str {
        "linear-rows"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let [x, w] = f32_inputs("linear-rows", [(s1, l1), (s2, l2)])?;
        Self::run(x, l1, w, l2, None)
    }
}

impl CustomOp3 for LinearRows {
    fn name(&self) -> &'static str {
        "linear-rows-bias"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let [x, w, bias] = f32_inputs("linear-rows-bias", [(s1, l1), (s2, l2), (s3, l3)])?;
        Self::run(x, l1, w, l2, Some(bias))
    }
}

/// An f32 buffer for outputs that the kernel writes completely before anything reads them
/// (skips zero-filling, which costs a full pass over tens of megabytes per op).
#[allow(clippy::uninit_vec)]
pub(crate) fn uninit_f32(n: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(n);
    // SAFETY: f32 has no invalid bit patterns and every caller overwrites all n values.
    unsafe { v.set_len(n) };
    v
}

/// Index of the smallest `||z||^2 + ||e_j||^2 - 2 z.e_j` per row of `z (N, D)` over codebook rows
/// `e (V, D)` with precomputed `e_sq (V,)`; first index on ties. On the CPU the distances are
/// formed tile by tile (128 queries x V in a per-thread buffer, the cross term by gemm) and
/// reduced at once, never materialising the `(N, V)` matrix; elsewhere the op sequence.
pub fn nearest_code(z: &Tensor, e: &Tensor, e_sq: &Tensor) -> Result<Tensor> {
    if fast_route(z) && fast_route(e) && fast_route(e_sq) {
        return z.contiguous()?.apply_op3_no_bwd(&e.contiguous()?, &e_sq.contiguous()?, &NearestCode);
    }
    let z_sq = z.sqr()?.sum_keepdim(1)?;
    let d = z_sq.broadcast_add(e_sq)?.broadcast_sub(&(z.matmul(&e.t()?)? * 2.0)?)?;
    d.argmin(1)
}

struct NearestCode;

impl CustomOp3 for NearestCode {
    fn name(&self) -> &'static str {
        "nearest-code"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let [z, e, e_sq] = f32_inputs(self.name(), [(s1, l1), (s2, l2), (s3, l3)])?;
        let (n, d) = l1.shape().dims2()?;
        let (v, d2) = l2.shape().dims2()?;
        if d != d2 || e_sq.len() != v {
            candle_core::bail!("nearest_code: queries {:?} vs codebook {:?}", l1.shape(), l2.shape());
        }
        const TILE: usize = 128;
        let mut out = vec![0u32; n];
        thread_local! {
            static CROSS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        out.par_chunks_mut(TILE).enumerate().for_each(|(tile, idx)| {
            let r0 = tile * TILE;
            let m = idx.len();
            CROSS.with(|cell| {
                let mut cross = cell.borrow_mut();
                if cross.len() < m * v {
                    cross.resize(m * v, 0.0);
                }
                // SAFETY: z rows r0..r0+m (m x d), e (v x d) read transposed, cross m x v.
                unsafe {
                    gemm::gemm(
                        m,
                        v,
                        d,
                        cross.as_mut_ptr(),
                        1,
                        v as isize,
                        false,
                        z[r0 * d..].as_ptr(),
                        1,
                        d as isize,
                        e.as_ptr(),
                        d as isize,
                        1,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
                for (r, slot) in idx.iter_mut().enumerate() {
                    let zr = &z[(r0 + r) * d..(r0 + r + 1) * d];
                    let z_sq: f32 = zr.iter().map(|x| x * x).sum();
                    let row = &cross[r * v..(r + 1) * v];
                    let (mut best, mut best_d) = (0usize, f32::INFINITY);
                    for j in 0..v {
                        let dist = (z_sq + e_sq[j]) - 2.0 * row[j];
                        if dist < best_d {
                            best_d = dist;
                            best = j;
                        }
                    }
                    *slot = best as u32;
                }
            });
        });
        Ok((CpuStorage::U32(out), Shape::from_dims(&[n])))
    }
}

/// Softmax over the last dimension (see [`crate::nn::fast_math::softmax_last_dim`]).
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    crate::nn::fast_math::softmax_last_dim(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    #[test]
    fn fused_kernels_match_candle_ops() {
        let dev = Device::Cpu;
        let (n, t, c) = (3, 5, 16);
        let x = (Tensor::randn(0f32, 1.0, (n, t, c), &dev).unwrap() + 0.5).unwrap();
        let y = Tensor::randn(0f32, 1.0, (n, t, c), &dev).unwrap();
        let s = Tensor::randn(0f32, 1.0, (n, 1, c), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, (n, 1, c), &dev).unwrap();
        let ones = Tensor::ones(c, DType::F32, &dev).unwrap();
        let zeros = Tensor::zeros(c, DType::F32, &dev).unwrap();
        let want = candle_nn::ops::layer_norm_slow(&x, &ones, &zeros, 1e-6).unwrap().broadcast_mul(&s).unwrap().broadcast_add(&b).unwrap();
        assert!(max_diff(&ln_modulate(&x, 1e-6, &s, &b).unwrap(), &want) < 1e-5);
        let want = (&x + y.broadcast_mul(&s).unwrap()).unwrap();
        assert!(max_diff(&gated_residual(&x, &y, &s).unwrap(), &want) < 1e-6);

        let (h, d) = (2, 4);
        let qkv = Tensor::randn(0f32, 1.0, (n, t, 3 * h * d), &dev).unwrap();
        let plain = qkv.reshape((n, t, 3, h, d)).unwrap().permute((2, 0, 3, 1, 4)).unwrap().contiguous().unwrap();
        assert_eq!(max_diff(&split_qkv_heads(&qkv, h, d, None).unwrap(), &plain), 0.0);
        let scale = [2.0f32, 0.5];
        let got = split_qkv_heads(&qkv, h, d, Some(&scale)).unwrap();
        let st = Tensor::new(&scale, &dev).unwrap().reshape((1, h, 1, 1)).unwrap();
        let q = crate::nn::attention::l2_normalize(&plain.get(0).unwrap()).unwrap().broadcast_mul(&st).unwrap();
        assert!(max_diff(&got.get(0).unwrap(), &q) < 1e-6);
        assert!(max_diff(&got.get(1).unwrap(), &crate::nn::attention::l2_normalize(&plain.get(1).unwrap()).unwrap()) < 1e-6);
        assert_eq!(max_diff(&got.get(2).unwrap(), &plain.get(2).unwrap()), 0.0);

        let heads = Tensor::randn(0f32, 1.0, (n, h, t, d), &dev).unwrap();
        let want = heads.transpose(1, 2).unwrap().reshape((n, t, h * d)).unwrap();
        assert_eq!(max_diff(&merge_heads(&heads).unwrap(), &want), 0.0);
    }

    #[test]
    fn nearest_code_matches_full_distances() {
        let dev = Device::Cpu;
        let e = Tensor::randn(0f32, 1.0, (300, 5), &dev).unwrap();
        let e_sq = e.sqr().unwrap().sum(1).unwrap();
        let z = Tensor::randn(0f32, 1.0, (259, 5), &dev).unwrap();
        let d = z
            .sqr()
            .unwrap()
            .sum_keepdim(1)
            .unwrap()
            .broadcast_add(&e_sq)
            .unwrap()
            .broadcast_sub(&(z.matmul(&e.t().unwrap()).unwrap() * 2.0).unwrap())
            .unwrap();
        assert_eq!(nearest_code(&z, &e, &e_sq).unwrap().to_vec1::<u32>().unwrap(), d.argmin(1).unwrap().to_vec1::<u32>().unwrap());
    }

    #[test]
    fn linear_rows_matches_matmul_plus_bias() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (37, 19), &dev).unwrap();
        let w = Tensor::randn(0f32, 1.0, (19, 23), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, 23, &dev).unwrap();
        let want = x.matmul(&w).unwrap().broadcast_add(&b).unwrap();
        assert!(max_diff(&linear_rows(&x, &w, Some(&b)).unwrap(), &want) < 1e-5);
        assert!(max_diff(&linear_rows(&x, &w, None).unwrap(), &x.matmul(&w).unwrap()) < 1e-5);
        // few rows, the column-split path (n >= 64 x threads), and a ragged last block
        for (rows, n) in [(1, 37), (2, 5000), (3, 4099), (4, 16), (5, 300), (300, 300), (7, 1000)] {
            let x = Tensor::randn(0f32, 1.0, (rows, 19), &dev).unwrap();
            let w = Tensor::randn(0f32, 1.0, (19, n), &dev).unwrap();
            let b = Tensor::randn(0f32, 1.0, n, &dev).unwrap();
            let want = x.matmul(&w).unwrap().broadcast_add(&b).unwrap();
            assert!(max_diff(&linear_rows(&x, &w, Some(&b)).unwrap(), &want) < 1e-4);
        }
        // The streaming kernel (1-4 rows) at decode-step depth: k not a multiple of 4 (ragged
        // row blocks when the threads split k), columns past a 4096-wide chunk with a ragged
        // end, a short k whose columns are split instead, with and without bias. Outputs are
        // O(sqrt(k)) = O(28): 1e-4 relative to that is f32 summation-order rounding.
        for (rows, k, n) in [(1, 770, 600), (2, 768, 2309), (3, 17, 513), (4, 1021, 130), (2, 650, 4100)] {
            let x = Tensor::randn(0f32, 1.0, (rows, k), &dev).unwrap();
            let w = Tensor::randn(0f32, 1.0, (k, n), &dev).unwrap();
            let b = Tensor::randn(0f32, 1.0, n, &dev).unwrap();
            let plain = x.matmul(&w).unwrap();
            let tol = 1e-4 * (k as f32).sqrt();
            assert!(max_diff(&linear_rows(&x, &w, None).unwrap(), &plain) < tol, "{rows}x{k} @ {k}x{n}");
            assert!(max_diff(&linear_rows(&x, &w, Some(&b)).unwrap(), &plain.broadcast_add(&b).unwrap()) < tol, "{rows}x{k} @ {k}x{n} + b");
        }
    }

    #[test]
    fn fused_attention_matches_the_op_sequence() {
        let dev = Device::Cpu;
        let (b, h, d) = (2, 3, 8);
        for (tq, tk, masked) in [(5, 9, false), (70, 70, true), (1, 130, false), (130, 200, false)] {
            let q = Tensor::randn(0f32, 1.0, (b, h, tq, d), &dev).unwrap();
            // keys/values as a cache view: capacity larger than tk
            let mut cache = crate::nn::attention::KvCache::new(b, h, tk + 7, d, DType::F32, &dev).unwrap();
            let kv = Tensor::randn(0f32, 1.0, (b, h, tk, d), &dev).unwrap();
            let vv = Tensor::randn(0f32, 1.0, (b, h, tk, d), &dev).unwrap();
            let (k, v) = cache.append(&kv, &vv).unwrap();
            let mask = if masked { Some(crate::nn::attention::causal_mask(tq, tk, tk - tq, DType::F32, &dev).unwrap()) } else { None };
            let want = merge_heads(&crate::nn::attention::scaled_dot_product_attention(&q, &k, &v, 0.3, mask.as_ref()).unwrap()).unwrap();
            let got = attention_merged(&q, &k, &v, 0.3, mask.as_ref()).unwrap();
            assert!(max_diff(&got, &want) < 1e-5, "{tq}x{tk}: {}", max_diff(&got, &want));
        }
    }
}
