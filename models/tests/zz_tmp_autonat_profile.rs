// TEMPORARY profiling scratch (to be deleted).
use candle_core::{DType, Device, Module, Tensor};
use genbench_models::checkpoint::RandomWeights;
use genbench_models::nn::conv_ae::{NormSpec, ResnetBlock, Upsample};
use genbench_models::nn::norm::GroupNorm;
use std::time::Instant;

fn cpu() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap();
    let f: Vec<&str> = s.rsplit(')').next().unwrap().split_whitespace().collect();
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}
fn t<F: FnMut() -> Tensor>(name: &str, mut f: F) {
    f();
    let s = Instant::now();
    let c = cpu();
    let n: usize = std::env::var("REPS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    for _ in 0..n { f(); }
    eprintln!("{name}: wall {:.1} ms, cpu {:.1} ms", s.elapsed().as_secs_f64() * 1e3 / n as f64, (cpu() - c) * 1e3 / n as f64);
}

#[test]
#[ignore]
fn profile_decoder_parts() {
    let dev = Device::Cpu;
    let vb = RandomWeights::new(0).var_builder(DType::F32, &dev);
    let x = Tensor::randn(0f32, 1.0, (1, 128, 256, 256), &dev).unwrap();
    let gn = GroupNorm::load(32, 128, 1e-6, vb.pp("gn")).unwrap();
    t("groupnorm 128@256", || gn.forward(&x).unwrap());
    t("silu 128@256", || x.silu().unwrap());
    let conv = candle_nn::conv2d_no_bias(128, 128, 3, candle_nn::Conv2dConfig { padding: 1, ..Default::default() }, vb.pp("c")).unwrap();
    t("conv3x3 128->128 @256 (19.3 GF)", || conv.forward(&x).unwrap());
    let rb = ResnetBlock::load_mage(vb.pp("rb"), 128, 128, NormSpec::default()).unwrap();
    t("resblock 128@256", || rb.forward(&x).unwrap());
    let xs = Tensor::randn(0f32, 1.0, (1, 128, 128, 128), &dev).unwrap();
    let up = Upsample::load(vb.pp("up"), 128).unwrap();
    t("upsample 128@128->256", || up.forward(&xs).unwrap());
    t("upsample_nearest only", || xs.upsample_nearest2d(256, 256).unwrap());
    let x512 = Tensor::randn(0f32, 1.0, (1, 512, 16, 16), &dev).unwrap();
    let conv512 = candle_nn::conv2d_no_bias(512, 512, 3, candle_nn::Conv2dConfig { padding: 1, ..Default::default() }, vb.pp("c5")).unwrap();
    t("conv3x3 512->512 @16 (1.2 GF)", || conv512.forward(&x512).unwrap());
}

#[test]
#[ignore]
fn profile_fast_conv() {
    let dev = Device::Cpu;
    let vb = RandomWeights::new(0).var_builder(DType::F32, &dev);
    let x = Tensor::randn(0f32, 1.0, (1, 128, 256, 256), &dev).unwrap();
    let conv = genbench_models::nn::conv::conv2d_no_bias(128, 128, 3, candle_nn::Conv2dConfig { padding: 1, ..Default::default() }, vb.pp("c")).unwrap();
    t("FAST conv3x3 128->128 @256 (19.3 GF)", || conv.forward(&x).unwrap());
    let rb = ResnetBlock::load_mage(vb.pp("rb"), 128, 128, NormSpec::default()).unwrap();
    t("resblock 128@256", || rb.forward(&x).unwrap());
    let xs = Tensor::randn(0f32, 1.0, (1, 128, 128, 128), &dev).unwrap();
    let up = Upsample::load(vb.pp("up"), 128).unwrap();
    t("upsample 128@128->256", || up.forward(&xs).unwrap());
    let x512 = Tensor::randn(0f32, 1.0, (1, 512, 16, 16), &dev).unwrap();
    let conv512 = genbench_models::nn::conv::conv2d_no_bias(512, 512, 3, candle_nn::Conv2dConfig { padding: 1, ..Default::default() }, vb.pp("c5")).unwrap();
    t("FAST conv3x3 512->512 @16 (1.2 GF)", || conv512.forward(&x512).unwrap());
    let cfg = genbench_models::tokenizers::mage_vqgan::MageVqganConfig::maskgit_f16_256();
    let vq = genbench_models::tokenizers::mage_vqgan::MageVqgan::load(&cfg, vb.pp("vq")).unwrap();
    let ids = Tensor::zeros((1, 256), DType::U32, &dev).unwrap();
    t("MAGE decode_code b1 (186.5 GF)", || vq.decode_code(&ids).unwrap());
    let mm = Tensor::randn(0f32, 1.0, (1024, 1024), &dev).unwrap();
    t("matmul 1024 (2.1 GF)", || mm.matmul(&mm).unwrap());
}

#[test]
#[ignore]
fn profile_gn() {
    let dev = Device::Cpu;
    let vb = RandomWeights::new(0).var_builder(DType::F32, &dev);
    let x = Tensor::randn(0f32, 1.0, (1, 128, 256, 256), &dev).unwrap();
    let gn = GroupNorm::load(32, 128, 1e-6, vb.pp("gn")).unwrap();
    t("FAST groupnorm 128@256", || gn.forward(&x).unwrap());
    t("FAST groupnorm+swish 128@256", || gn.forward_swish(&x).unwrap());
    t("add 128@256", || (&x + &x).unwrap());
    let conv = genbench_models::nn::conv::conv2d_no_bias(128, 128, 3, candle_nn::Conv2dConfig { padding: 1, ..Default::default() }, vb.pp("c")).unwrap();
    t("FAST conv3x3 128->128 @256 (19.3 GF)", || conv.forward(&x).unwrap());
    let rb = ResnetBlock::load_mage(vb.pp("rb"), 128, 128, NormSpec::default()).unwrap();
    t("resblock 128@256", || rb.forward(&x).unwrap());
}

#[test]
#[ignore]
fn profile_uvit() {
    use genbench_models::generators::autonat::{UViT, UViTConfig};
    let dev = Device::Cpu;
    let vb = RandomWeights::new(0).var_builder(DType::F32, &dev);
    let net = UViT::load(&UViTConfig::autonat_l(), vb).unwrap();
    let ids = Tensor::zeros((1, 256), DType::U32, &dev).unwrap();
    t("guided step b1 (208 GF)", || net.guided_logits(&ids, &[3], 1.0).unwrap());
    let h = Tensor::randn(0f32, 1.0, (2, 257, 3072), &dev).unwrap();
    t("gelu_erf 2x257x3072 (x25/step)", || h.gelu_erf().unwrap());
    let x = Tensor::randn(0f32, 1.0, (2, 257, 768), &dev).unwrap();
    let blk = net.in_block(0);
    t("block (x25/step, 7.7 GF)", || candle_core::Module::forward(blk, &x).unwrap());
    t("attn (x25)", || blk.attn.forward(&x, None, None).unwrap());
    t("mlp (x25)", || candle_core::Module::forward(&blk.mlp, &x).unwrap());
    t("ln (x50)", || candle_core::Module::forward(&blk.norm1, &x).unwrap());
    let s = Tensor::randn(0f32, 1.0, (2, 8, 257, 257), &dev).unwrap();
    t("softmax scores (x25)", || candle_nn::ops::softmax_last_dim(&s).unwrap());
}

#[test]
#[ignore]
fn profile_linear_forms() {
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (2, 257, 768), &dev).unwrap();
    let w = Tensor::randn(0f32, 0.03, (3072, 768), &dev).unwrap();
    let b = Tensor::randn(0f32, 0.03, 3072, &dev).unwrap();
    let lin = candle_nn::Linear::new(w.clone(), Some(b.clone()));
    t("candle Linear 3D (2.4 GF)", || candle_core::Module::forward(&lin, &x).unwrap());
    let x2 = x.reshape((514, 768)).unwrap();
    t("2D matmul w.t() + bias", || x2.matmul(&w.t().unwrap()).unwrap().broadcast_add(&b).unwrap());
    let wt = w.t().unwrap().contiguous().unwrap();
    t("2D matmul contiguous wT + bias", || x2.matmul(&wt).unwrap().broadcast_add(&b).unwrap());
    t("2D matmul w.t() no bias", || x2.matmul(&w.t().unwrap()).unwrap());
    let h = Tensor::randn(0f32, 1.0, (2, 257, 3072), &dev).unwrap();
    t("gelu_erf candle", || h.gelu_erf().unwrap());
    t("gelu_erf fast", || genbench_models::nn::fast_math::gelu_erf(&h).unwrap());
    t("gelu tanh", || h.gelu().unwrap());
    t("bias add 3D", || h.broadcast_add(&b).unwrap());
}

#[test]
#[ignore]
fn profile_generation() {
    use genbench_models::generators::autonat::{AutoNatSpec, WeightSource};
    use genbench_models::generators::autonat_strategy::Strategy;
    use genbench_models::generator::StepLog;
    let dev = Device::Cpu;
    let mut spec = AutoNatSpec::autonat_l();
    let mut g = spec.build(&WeightSource::Random { seed: 0 }, &dev, DType::F32).unwrap();
    for steps in [4usize, 8] {
        spec.steps = steps;
        let s = if steps == 8 { Strategy::autonat_l_t8() } else { Strategy::maskgit_cosine(4).unwrap() };
        g.set_strategy("x", s).unwrap();
        let mut times = vec![];
        let mut parts = vec![];
        for r in 0..3 {
            let mut log = StepLog::default();
            let st = Instant::now();
            g.generate(&[3], &mut genbench_runtime::SeededSource::new(r), &mut log, None).unwrap();
            times.push(st.elapsed().as_secs_f64());
            let tr: f64 = log.records.iter().filter(|r| r.kind == genbench_models::generator::StepKind::Transformer).map(|r| r.wall.as_secs_f64()).sum();
            let de: f64 = log.records.iter().filter(|r| r.kind == genbench_models::generator::StepKind::Decode).map(|r| r.wall.as_secs_f64()).sum();
            parts.push((tr, de));
        }
        eprintln!("OURS T={steps}: per image {:?} s; (transformer, decode) {:?}", times, parts);
    }
}

#[test]
#[ignore]
fn profile_mm() {
    let dev = Device::Cpu;
    let mm = Tensor::randn(0f32, 1.0, (1024, 1024), &dev).unwrap();
    t("matmul 1024 (2.1 GF)", || mm.matmul(&mm).unwrap());
    let x = Tensor::randn(0f32, 1.0, (514, 768), &dev).unwrap();
    let w = Tensor::randn(0f32, 1.0, (768, 3072), &dev).unwrap();
    t("matmul 514x768x3072 (2.4 GF)", || x.matmul(&w).unwrap());
    eprintln!("rayon threads {} candle threads {}", rayon::current_num_threads(), candle_core::utils::get_num_threads());
}
