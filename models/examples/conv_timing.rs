//! Wall time of the 3x3 decoder convolutions at their published shapes (batch 1 by default):
//! `cargo run --release -p genbench-models --example conv_timing [batch] [repeats]`.
//! Prints the median per layer shape and its GFLOP/s counted as a direct convolution
//! (2 * H * W * cin * cout * 9), so the im2col and Winograd routes compare on one scale.

use candle_core::{Device, Module, Tensor};
use candle_nn::Conv2dConfig;
use genbench_models::nn::conv::Conv2d;
use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let batch: usize = args.next().map_or(1, |a| a.parse().expect("batch: a positive integer"));
    let repeats: usize = args.next().map_or(5, |a| a.parse().expect("repeats: a positive integer"));
    let dev = Device::Cpu;
    // (label, cin, cout, side): VAR's VQVAE decoder (ch 160) and LlamaGen's VQ-16 (ch 128).
    let shapes = [
        ("var 256px 160->160", 160, 160, 256),
        ("var 128px 160->160", 160, 160, 128),
        ("var 64px 320->320", 320, 320, 64),
        ("var 32px 320->320", 320, 320, 32),
        ("var 16px 640->640", 640, 640, 16),
        ("llamagen 256px 128->128", 128, 128, 256),
        ("llamagen 128px 256->256", 256, 256, 128),
    ];
    for (label, cin, cout, side) in shapes {
        let conv = Conv2d::new(
            Tensor::randn(0f32, 0.05, (cout, cin, 3, 3), &dev).unwrap(),
            Some(Tensor::randn(0f32, 1.0, cout, &dev).unwrap()),
            Conv2dConfig { padding: 1, ..Default::default() },
        );
        let x = Tensor::randn(0f32, 1.0, (batch, cin, side, side), &dev).unwrap();
        conv.forward(&x).unwrap();
        let mut ms: Vec<f64> = (0..repeats)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(conv.forward(&x).unwrap());
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        ms.sort_by(f64::total_cmp);
        let med = ms[ms.len() / 2];
        let gflop = 2.0 * (batch * side * side * cin * cout * 9) as f64 / 1e9;
        println!("{label:<26} batch {batch}: {med:8.2} ms  {:6.1} GFLOP/s (direct-conv flops)", gflop / med * 1e3);
    }
}
