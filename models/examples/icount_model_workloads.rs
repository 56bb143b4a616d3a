//! The generator workloads of the instruction-count regression gate (`bench/icount.sh`; the
//! metric workloads are `metrics/examples/icount_workloads.rs`), run one at a time under
//! valgrind's callgrind:
//!
//! ```text
//! valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*icount_region*' \
//!     target/release/examples/icount_model_workloads <workload>
//! ```
//!
//! Random weights (seeded, `checkpoint::RandomWeights`) at small fixed shapes, so no checkpoint is
//! needed and valgrind finishes in seconds; the code path is the one the published sizes take
//! (same layers, same kernels, smaller widths). Only the `icount_region_*` function is counted
//! (weight generation, cache prefill and inputs are not). The script runs it with one thread.

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use genbench_models::checkpoint::RandomWeights;
use genbench_models::generator::StepLog;
use genbench_models::generators::llamagen::{LlamaGenGpt, LlamaGenGptConfig, LlamaGenSampling};
use genbench_models::generators::mar_diffusion::{DiffusionHeadConfig, SimpleMlpAdaLn};
use genbench_models::generators::var::{Conditioning, VarConfig, VarTransformer};
use genbench_models::nn::attention::KvCache;
use genbench_runtime::{RandomSource, SeededSource};
use std::hint::black_box;

const WORKLOADS: [&str; 3] = ["var_step", "llamagen_decode", "mar_mlp_head"];

#[inline(never)]
fn icount_region_var_step(tr: &VarTransformer, x: Tensor, c: &Conditioning, caches: &mut [KvCache]) -> Result<Tensor> {
    let h = tr.forward_blocks(x, c, None, Some(caches), None)?;
    Ok(tr.logits(&h, c)?)
}

#[inline(never)]
fn icount_region_llamagen(
    gpt: &LlamaGenGpt,
    labels: &[u32],
    s: &LlamaGenSampling,
    caches: &mut Vec<KvCache>,
    rng: &mut SeededSource,
) -> Result<Vec<u32>> {
    gpt.generate(labels, s, caches, rng, &mut StepLog::default(), None)
}

#[inline(never)]
fn icount_region_mar_mlp(net: &SimpleMlpAdaLn, x_t: &Tensor, t: &[f32], c: &Tensor) -> Result<Tensor> {
    net.forward_with_cfg(x_t, t, c, 2.9)
}

fn normal(rng: &mut SeededSource, shape: &[usize], dev: &Device) -> Result<Tensor> {
    Ok(Tensor::from_vec(rng.normal(shape.iter().product())?, shape, dev)?)
}

fn main() -> Result<()> {
    let name = std::env::args().nth(1).unwrap_or_default();
    let dev = Device::Cpu;
    let mut rng = SeededSource::new(7);
    match name.as_str() {
        // The last scale of a 4-scale VAR (patch_nums 1,2,3,4) at depth 4 (width 256, 4 heads,
        // AdaLN blocks with L2-normed attention): 16 new tokens of 2 rows (batch 1 under CFG)
        // attending 30 cached keys, then the logits over the 4096-entry codebook. The earlier
        // scales fill the KV caches outside the counted region.
        "var_step" => {
            let cfg = VarConfig::from_depth(4, &[1, 2, 3, 4], false);
            let tr = VarTransformer::load(&cfg, RandomWeights::new(0).var_builder(DType::F32, &dev))?;
            let rows = 2;
            let cond = tr.class_embedding(&Tensor::new(&[3u32, 1000], &dev)?)?;
            let c = tr.conditioning(&cond)?;
            let mut caches = tr
                .blocks()
                .iter()
                .map(|b| b.attention().new_cache(rows, cfg.seq_len(), DType::F32, &dev))
                .collect::<candle_core::Result<Vec<_>>>()?;
            let last = cfg.num_scales() - 1;
            for si in 0..last {
                let x = normal(&mut rng, &[rows, cfg.tokens_at(si), cfg.embed_dim], &dev)?;
                tr.forward_blocks(x, &c, None, Some(caches.as_mut_slice()), None)?;
            }
            let x = normal(&mut rng, &[rows, cfg.tokens_at(last), cfg.embed_dim], &dev)?;
            black_box(icount_region_var_step(&tr, x, &c, &mut caches)?);
        }
        // A whole LlamaGen generation on a 4x4 token grid: the prefill and 15 cached decode steps
        // of a 4-layer GPT (width 256, 4 heads, SwiGLU, 2-D RoPE, vocabulary 4096), batch 1 under
        // CFG 2.0 (2 rows), with the sampling of each token (top-k off, as the FID recipe).
        "llamagen_decode" => {
            let gpt_cfg = LlamaGenGptConfig {
                dim: 256,
                n_layer: 4,
                n_head: 4,
                n_kv_head: None,
                multiple_of: 256,
                ffn_dim_multiplier: None,
                rope_base: 10000.0,
                norm_eps: 1e-5,
                num_classes: 1000,
                class_dropout_prob: 0.1,
                vocab_size: 4096,
                cls_token_num: 1,
                block_size: 16,
            };
            gpt_cfg.validate()?;
            let gpt = LlamaGenGpt::new(&gpt_cfg, RandomWeights::new(0).var_builder(DType::F32, &dev))?;
            let s = LlamaGenSampling::fid_recipe(2.0);
            black_box(icount_region_llamagen(&gpt, &[3], &s, &mut Vec::new(), &mut rng)?);
        }
        // One evaluation of MAR's diffusion MLP (SimpleMLPAdaLN, width 256, 3 residual blocks,
        // 16 token channels, condition width 128) on 16 rows (8 tokens under CFG 2.9), the call
        // every reverse-diffusion step makes.
        "mar_mlp_head" => {
            let cfg = DiffusionHeadConfig { target_channels: 16, z_channels: 128, width: 256, depth: 3 };
            let net = SimpleMlpAdaLn::new(&cfg, RandomWeights::new(0).var_builder(DType::F32, &dev).pp("net"))?;
            let rows = 16;
            let x_t = normal(&mut rng, &[rows, cfg.target_channels], &dev)?;
            let c = normal(&mut rng, &[rows, cfg.z_channels], &dev)?;
            let t = vec![500f32; rows];
            black_box(icount_region_mar_mlp(&net, &x_t, &t, &c)?);
        }
        "list" => println!("{}", WORKLOADS.join("\n")),
        other => bail!("unknown workload '{other}'; one of: {} (or 'list')", WORKLOADS.join(", ")),
    }
    Ok(())
}
