//! The kernel-route switch (`GENBENCH_KERNELS=generic` / `--kernels generic`): every fast CPU
//! kernel in `nn` runs under the fast route and none under the generic route (the candle-op
//! route other devices take), and both routes compute the same values.
//!
//! One test function: the route is process-wide, so the two routes are taken in sequence.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};
use genbench_models::nn::{conv, elementwise, fast_math, fused, norm, sampling};
use genbench_runtime::kernels::{self, KernelRoute};
use std::collections::HashMap;

/// Every fast-kernel entry point, on inputs drawn from a fixed seed; outputs as f32 vectors.
fn run_all(dev: &Device) -> Vec<(&'static str, Vec<f32>)> {
    let r = |shape: &[usize], seed: u64| -> Tensor {
        // Deterministic values without a global RNG: a hashed sequence in [-2, 2).
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n as u64)
            .map(|i| {
                let x = (i ^ seed).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                (x >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0
            })
            .collect();
        Tensor::from_vec(v, shape, dev).unwrap()
    };
    let flat = |t: Tensor| t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let mut out = vec![];

    let (n, t, c) = (2, 5, 16);
    let x = r(&[n, t, c], 1);
    let y = r(&[n, t, c], 2);
    let s = r(&[n, 1, c], 3);
    let b = r(&[n, 1, c], 4);
    out.push(("ln_modulate", flat(fused::ln_modulate(&x, 1e-6, &s, &b).unwrap())));
    out.push(("gated_residual", flat(fused::gated_residual(&x, &y, &s).unwrap())));
    let (h, d) = (2, 4);
    let qkv = r(&[n, t, 3 * h * d], 5);
    out.push(("split_qkv_heads", flat(fused::split_qkv_heads(&qkv, h, d, Some(&[2.0, 0.5])).unwrap())));
    let q = r(&[n, h, t, d], 6);
    let k = r(&[n, h, t + 2, d], 7);
    let v = r(&[n, h, t + 2, d], 8);
    out.push(("merge_heads", flat(fused::merge_heads(&q).unwrap())));
    out.push(("attention_merged", flat(fused::attention_merged(&q, &k, &v, 0.5, None).unwrap())));
    let w_t = r(&[c, 24], 9);
    let bias = r(&[24], 10);
    let rows = x.reshape((n * t, c)).unwrap();
    out.push(("linear_rows", flat(fused::linear_rows(&rows, &w_t, Some(&bias)).unwrap())));
    let codebook = r(&[32, c], 11);
    let e_sq = codebook.sqr().unwrap().sum(1).unwrap();
    let codes = fused::nearest_code(&rows, &codebook, &e_sq).unwrap();
    out.push(("nearest_code", flat(codes)));
    out.push(("gelu_tanh", flat(fast_math::gelu_tanh(&x).unwrap())));
    out.push(("gelu_erf", flat(fast_math::gelu_erf(&x).unwrap())));
    out.push(("silu", flat(fast_math::silu(&x).unwrap())));
    out.push(("softmax", flat(fast_math::softmax_last_dim(&x).unwrap())));

    let img = r(&[1, 8, 6, 6], 12);
    out.push(("add", flat(elementwise::add(&img, &img.sqr().unwrap()).unwrap())));
    out.push(("upsample", flat(elementwise::upsample_nearest2x(&img).unwrap())));
    let cfg = Conv2dConfig { padding: 1, ..Default::default() };
    let conv = conv::Conv2d::new(r(&[4, 8, 3, 3], 13), Some(r(&[4], 14)), cfg);
    out.push(("conv2d", flat(conv.forward(&img).unwrap())));
    let mut gn_w = HashMap::new();
    gn_w.insert("weight".to_string(), r(&[8], 15));
    gn_w.insert("bias".to_string(), r(&[8], 16));
    let gn = norm::GroupNorm::load(4, 8, 1e-6, VarBuilder::from_tensors(gn_w, DType::F32, dev)).unwrap();
    out.push(("group_norm", flat(gn.forward(&img).unwrap())));
    out.push(("group_norm_swish", flat(gn.forward_swish(&img).unwrap())));

    let logits = r(&[3, 40], 17);
    out.push(("top_k", flat(sampling::top_k_filter(&logits, 7).unwrap())));
    out.push(("top_p_var", flat(sampling::top_p_filter(&logits, 0.8, sampling::TopPRule::Var).unwrap())));
    out.push(("top_p_hf", flat(sampling::top_p_filter(&logits, 0.8, sampling::TopPRule::HuggingFace).unwrap())));
    out
}

#[test]
fn generic_route_runs_no_fast_kernel_and_agrees_with_the_fast_route() {
    let dev = Device::Cpu;

    kernels::set_route(KernelRoute::Fast);
    kernels::reset_fast_calls();
    let fast = run_all(&dev);
    let calls = kernels::fast_calls();
    println!("fast route: {calls:?}");
    // Each dispatch point records its own kernel: all of them must have run.
    for name in [
        "ln-modulate",
        "gated-residual",
        "split-qkv-heads",
        "merge-heads",
        "fused-attention",
        "linear-rows-bias",
        "nearest-code",
        "gelu-tanh",
        "gelu-erf",
        "silu",
        "softmax-last-dim",
        "add-rows",
        "upsample-nearest2x",
        "conv2d-nchw",
        "group-norm",
        "group-norm-swish",
        "top-k-host",
        "top-p-host",
    ] {
        assert!(calls.get(name).copied().unwrap_or(0) > 0, "fast kernel `{name}` did not run on the fast route: {calls:?}");
    }

    kernels::set_route(KernelRoute::Generic);
    kernels::reset_fast_calls();
    let generic = run_all(&dev);
    assert_eq!(kernels::total_fast_calls(), 0, "fast kernels ran on the generic route: {:?}", kernels::fast_calls());
    kernels::set_route(KernelRoute::Fast);

    // Same values both ways. 1e-5 relative to each output's largest magnitude: the routes sum in
    // different orders (fused/blocked vs candle's), so f32 rounding differs in the last bits; the
    // sampler masks and code indices must be identical (their margins here are >> 1e-5).
    for ((name, a), (_, b)) in fast.iter().zip(&generic) {
        assert_eq!(a.len(), b.len(), "{name}: lengths differ");
        let scale = b.iter().filter(|v| v.is_finite()).fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            if x.is_infinite() || y.is_infinite() {
                assert_eq!(x, y, "{name}[{i}]: masked on one route only");
                continue;
            }
            assert!((x - y).abs() <= 1e-5 * scale, "{name}[{i}]: fast {x} vs generic {y}");
        }
    }
}
