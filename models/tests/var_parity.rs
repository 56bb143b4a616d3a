//! VAR parity against a reference fixture folder (default: tests/fixtures/models/var; override
//! with GENBENCH_FIXTURE_VAR). Every size and setting comes from the folder's config.json, the
//! reference tensors from its io.safetensors, the weights from its vae.pth / var.pth.
//!
//! Tolerance: 1e-4 relative (to the largest reference magnitude of each tensor) for logits and
//! every other float tensor; token ids must be identical (the fixture guarantees top-1/top-2
//! margins >= 0.0157 for sampler decisions and >= 0.0548 for VQ decisions, far above float32
//! rounding). Images are compared after the reference's clamp, same tolerance.

mod common;

use candle_core::{DType, Device, IndexOp, Module, Tensor};
use common::*;
use genbench_models::checkpoint::StrictWeights;
use genbench_models::generator::StepLog;
use genbench_models::generators::var::{VarConfig, VarModel, VarSampling, VarTransformer};
use genbench_models::tokenizers::var_vqvae::{VarVqVae, VarVqVaeConfig};
use genbench_runtime::SeededSource;
use std::collections::HashMap;
use std::path::PathBuf;

const RTOL: f64 = 1e-4;

struct Fixture {
    dir: PathBuf,
    io: HashMap<String, Tensor>,
    config: serde_json::Value,
    var_cfg: VarConfig,
    vae_cfg: VarVqVaeConfig,
}

fn fixture() -> Fixture {
    let dir = fixture_dir("GENBENCH_FIXTURE_VAR", "var");
    let config = load_json(&dir, "config.json");
    let (var_cfg, vae_cfg) = VarConfig::from_reference_json(&config).expect("config.json");
    eprintln!("VAR config: {var_cfg:?}\nVQVAE config: {vae_cfg:?}");
    Fixture { io: load_io(&dir), dir, config, var_cfg, vae_cfg }
}

impl Fixture {
    fn t(&self, name: &str) -> &Tensor {
        self.io.get(name).unwrap_or_else(|| panic!("io.safetensors has no `{name}`"))
    }
    fn vae(&self) -> VarVqVae {
        let w = StrictWeights::open(&self.dir.join("vae.pth"), &[""], &[], &Device::Cpu).unwrap();
        let vae = VarVqVae::load(&self.vae_cfg, w.var_builder(DType::F32, &Device::Cpu)).unwrap();
        w.ensure_all_used(|_| false).unwrap();
        vae
    }
    fn transformer(&self) -> VarTransformer {
        let w = StrictWeights::open(&self.dir.join("var.pth"), &[""], &[], &Device::Cpu).unwrap();
        let tr = VarTransformer::load(&self.var_cfg, w.var_builder(DType::F32, &Device::Cpu)).unwrap();
        w.ensure_all_used(|_| false).unwrap();
        tr
    }
    fn labels(&self, name: &str) -> Vec<u32> {
        self.t(name).to_dtype(DType::I64).unwrap().to_vec1::<i64>().unwrap().into_iter().map(|x| x as u32).collect()
    }
}

fn close(name: &str, a: &Tensor, e: &Tensor) {
    assert_close(name, &a.to_dtype(DType::F32).unwrap(), e, RTOL, 0.0);
}

#[test]
fn vqvae_encode_and_multiscale_quantiser() {
    let fx = fixture();
    let vae = fx.vae();
    let img = fx.t("vae.img");
    let enc = vae.encoder.forward(img).unwrap();
    close("vae.enc_out", &enc, fx.t("vae.enc_out"));
    let f = vae.quant_conv.forward(&enc).unwrap();
    close("vae.f", &f, fx.t("vae.f"));
    // phi schedule
    let phi: Vec<i64> = vae.quantize.phi_schedule().iter().map(|p| p.unwrap() as i64).collect();
    assert_eq!(phi, fx.t("vae.quant.phi_index").to_vec1::<i64>().unwrap(), "phi index per scale");
    let trace = vae.quantize.quantize_traced(&f).unwrap();
    assert_eq!(trace.len(), fx.vae_cfg.patch_nums.len());
    let mut all_idx = vec![];
    for (si, s) in trace.iter().enumerate() {
        let p = |n: &str| format!("vae.quant.s{si}.{n}");
        close(&p("z"), &s.z, fx.t(&p("z")));
        close(&p("dist"), &s.dist, fx.t(&p("dist")));
        assert_same_ids(&format!("vae.enc_idx.s{si}"), &s.idx, fx.t(&format!("vae.enc_idx.s{si}")));
        close(&p("h_emb"), &s.h_emb, fx.t(&p("h_emb")));
        close(&p("h_up"), &s.h_up, fx.t(&p("h_up")));
        close(&p("h_phi"), &s.h_phi, fx.t(&p("h_phi")));
        close(&p("f_rest"), &s.f_rest, fx.t(&p("f_rest")));
        close(&format!("vae.enc_fhat.s{si}"), &s.f_hat, fx.t(&format!("vae.enc_fhat.s{si}")));
        all_idx.push(s.idx.clone());
    }
    assert_same_ids("vae.enc_idx_BL", &Tensor::cat(&all_idx, 1).unwrap(), fx.t("vae.enc_idx_BL"));
    // img_to_idx is the same path end to end
    let idx = vae.img_to_idx(img).unwrap();
    assert_same_ids("img_to_idx", &Tensor::cat(&idx, 1).unwrap(), fx.t("vae.enc_idx_BL"));
}

#[test]
fn vqvae_decode() {
    let fx = fixture();
    let vae = fx.vae();
    let k = fx.vae_cfg.patch_nums.len();
    // Reconstructions of every partial f_hat of the encoder.
    for si in 0..k {
        let fhat = fx.t(&format!("vae.enc_fhat.s{si}"));
        close(&format!("vae.recon.s{si}"), &vae.fhat_to_img(fhat).unwrap(), fx.t(&format!("vae.recon.s{si}")));
    }
    let last = fx.t(&format!("vae.enc_fhat.s{}", k - 1));
    let pq = vae.post_quant_conv.forward(last).unwrap();
    close("vae.recon.post_quant_conv", &pq, fx.t("vae.recon.post_quant_conv"));
    close("vae.recon.preclamp", &vae.decode_unclamped(last).unwrap(), fx.t("vae.recon.preclamp"));
    // Decoding given index lists.
    let idx: Vec<Tensor> = (0..k).map(|si| fx.t(&format!("vae.dec_idx.s{si}")).clone()).collect();
    let fhats = vae.quantize.idx_to_fhats(&idx).unwrap();
    for (si, f) in fhats.iter().enumerate() {
        close(&format!("vae.dec_fhat.s{si}"), f, fx.t(&format!("vae.dec_fhat.s{si}")));
    }
    close("vae.dec_img", &vae.idx_to_img(&idx).unwrap(), fx.t("vae.dec_img"));
    close("vae.dec_img_preclamp", &vae.decode_unclamped(fhats.last().unwrap()).unwrap(), fx.t("vae.dec_img_preclamp"));
}

#[test]
fn teacher_forcing_logits() {
    let fx = fixture();
    let vae = fx.vae();
    let tr = fx.transformer();
    let k = fx.var_cfg.num_scales();
    let begin_ends = fx.var_cfg.begin_ends();
    let gt = fx.t("tf.gt_idx_BL");
    let idx: Vec<Tensor> = begin_ends.iter().map(|&(b, e)| gt.i((.., b..e)).unwrap()).collect();
    assert_eq!(idx.len(), k);
    let x_in = vae.quantize.idx_to_var_input(&idx).unwrap();
    close("tf.x_BLCv_wo_first_l", &x_in, fx.t("tf.x_BLCv_wo_first_l"));
    let out = tr.teacher_forcing(fx.t("tf.label"), fx.t("tf.x_BLCv_wo_first_l")).unwrap();
    close("tf.cond_BD", &out.cond, fx.t("tf.cond_BD"));
    close("tf.x_in", &out.x_in, fx.t("tf.x_in"));
    for (i, b) in out.block_outs.iter().enumerate() {
        close(&format!("tf.block{i}.out"), b, fx.t(&format!("tf.block{i}.out")));
    }
    close("tf.head_nm_out", &out.head_nm_out, fx.t("tf.head_nm_out"));
    close("tf.logits", &out.logits, fx.t("tf.logits"));
    // Per-token cross-entropy and the test losses derived from the logits.
    let logp = candle_nn::ops::log_softmax(&out.logits, candle_core::D::Minus1).unwrap();
    let target = gt.to_dtype(DType::U32).unwrap().unsqueeze(2).unwrap();
    let ce = logp.gather(&target, 2).unwrap().squeeze(2).unwrap().neg().unwrap();
    close("tf.ce_per_token", &ce, fx.t("tf.ce_per_token"));
    let l_mean = ce.mean_all().unwrap().reshape(1).unwrap();
    close("tf.L_mean", &l_mean, fx.t("tf.L_mean"));
    let (tb, te) = begin_ends[k - 1];
    let l_tail = ce.i((.., tb..te)).unwrap().mean_all().unwrap().reshape(1).unwrap();
    close("tf.L_tail", &l_tail, fx.t("tf.L_tail"));
}

#[test]
fn adaln_block_in_isolation() {
    let fx = fixture();
    let tr = fx.transformer();
    // The block the fixture isolated, and what the reference hands it as `cond_BD`: the raw
    // class embedding, or with shared AdaLN `shared_ada_lin(cond_BD)` (stored as `blk.cond_gss`,
    // (B, 1, 6, C) in the reference's layout; our blocks take it as (B, 6, C)).
    let index = fx.config["isolated_block_index"].as_u64().expect("config.json: isolated_block_index") as usize;
    let block = tr.blocks().get(index).unwrap_or_else(|| panic!("isolated_block_index {index} but depth {}", tr.blocks().len()));
    let cond = if fx.var_cfg.shared_aln {
        let gss = fx.t("blk.cond_gss");
        let b = gss.dim(0).unwrap();
        gss.reshape((b, 6, fx.var_cfg.embed_dim)).unwrap()
    } else {
        fx.t("blk.cond_BD").clone()
    };
    let m = block.modulation(&cond).unwrap();
    let rows = Tensor::cat(
        &[&m.gamma1, &m.gamma2, &(&m.scale1_plus_one - 1.0).unwrap(), &(&m.scale2_plus_one - 1.0).unwrap(), &m.shift1, &m.shift2],
        1,
    )
    .unwrap();
    // (B, 6, C), or (B, 1, 6, C) where a fixture stores `ada_gss + cond_gss` as the reference has it.
    close("blk.ada", &rows.reshape(fx.t("blk.ada").dims()).unwrap(), fx.t("blk.ada"));
    let tr_masked = block.forward_traced(fx.t("blk.x"), &m, Some(fx.t("blk.attn_bias"))).unwrap();
    close("blk.attn_in", &tr_masked.attn_in, fx.t("blk.attn_in"));
    close("blk.attn_out", &tr_masked.attn_out, fx.t("blk.attn_out"));
    close("blk.x_mid", &tr_masked.x_mid, fx.t("blk.x_mid"));
    close("blk.ffn_in", &tr_masked.ffn_in, fx.t("blk.ffn_in"));
    close("blk.ffn_out", &tr_masked.ffn_out, fx.t("blk.ffn_out"));
    close("blk.out", &tr_masked.out, fx.t("blk.out"));
    let out = block.forward(fx.t("blk.x"), &m, None, None).unwrap();
    close("blk.out_nomask", &out, fx.t("blk.out_nomask"));
}

fn cfg_key(c: f64) -> String {
    if c.fract() == 0.0 {
        format!("ar_cfg{}", c as i64)
    } else {
        format!("ar_cfg{c}")
    }
}

#[test]
fn cached_sampler_with_and_without_cfg() {
    let fx = fixture();
    let model = VarModel::new(fx.transformer(), fx.vae()).unwrap();
    let s = &fx.config["sampling"];
    let cfgs: Vec<f64> = serde_json::from_value(s["cfgs"].clone()).unwrap();
    let top_k = s["top_k"].as_u64().unwrap() as usize;
    let top_p = s["top_p"].as_f64().unwrap();
    let more_smooth = s["more_smooth"].as_bool().unwrap();
    let k = fx.var_cfg.num_scales();
    assert!(!cfgs.is_empty());
    for c in cfgs {
        let key = cfg_key(c);
        eprintln!("--- {key}: cfg {c}, top_k {top_k}, top_p {top_p}");
        let labels = fx.labels(&format!("{key}.label"));
        let b = labels.len();
        let sampling = VarSampling { cfg: c, top_k, top_p, more_smooth };
        let mut trace = Default::default();
        let mut log = StepLog::default();
        let mut rng = SeededSource::new(0);
        let (f_hat, idx) = model.sample_fhat(&labels, &sampling, &mut rng, &mut log, Some(&mut trace)).unwrap();
        // cfg = 0: the reference still runs the unconditional half, whose rows cannot change the
        // guided logits ((1 + 0) c - 0 u); we skip it and compare the conditional half.
        let rows = |t: &Tensor| if c == 0.0 { t.narrow(0, 0, b).unwrap() } else { t.clone() };
        if c != 0.0 {
            close("ar.cond_BD", trace.cond.as_ref().unwrap(), fx.t("ar.cond_BD"));
        }
        let ts: Vec<f32> = trace.t.iter().map(|&t| t as f32).collect();
        let t_ref = fx.t(&format!("{key}.t")).to_vec1::<f32>().unwrap();
        for (a, e) in ts.iter().zip(&t_ref) {
            assert!((a - e).abs() < 1e-6, "{key}.t: {ts:?} vs {t_ref:?}");
        }
        for si in 0..k {
            let p = |n: &str| format!("{key}.s{si}.{n}");
            close(&p("x_in"), &trace.x_in[si], &rows(fx.t(&p("x_in"))));
            for (i, out) in trace.block_outs[si].iter().enumerate() {
                if let Some(e) = fx.io.get(&p(&format!("block{i}.out"))) {
                    close(&p(&format!("block{i}.out")), out, &rows(e));
                }
            }
            close(&p("logits_raw"), &trace.logits_raw[si], &rows(fx.t(&p("logits_raw"))));
            close(&p("logits_guided"), &trace.logits_guided[si], fx.t(&p("logits_guided")));
            assert_same_ids(&p("idx"), &trace.idx[si], fx.t(&p("idx")));
            close(&p("f_hat"), &trace.f_hat[si], fx.t(&p("f_hat")));
            if si + 1 < k {
                close(&p("next_map"), &trace.next_map[si], fx.t(&p("next_map")));
            }
        }
        assert_same_ids(&format!("{key}.idx_BL"), &Tensor::cat(&idx, 1).unwrap(), fx.t(&format!("{key}.idx_BL")));
        if let (Some(ek), Some(ev)) = (fx.io.get(&format!("{key}.kv.block0.k")), fx.io.get(&format!("{key}.kv.block0.v"))) {
            let (kk, vv) = trace.kv_block0.as_ref().unwrap();
            close(&format!("{key}.kv.block0.k"), kk, &rows(ek));
            close(&format!("{key}.kv.block0.v"), vv, &rows(ev));
        }
        let img = model.decode(&f_hat, k, &mut log).unwrap();
        close(&format!("{key}.img"), &img, fx.t(&format!("{key}.img")));
        // The observer saw K transformer steps and one decode, with the fixture's schedule.
        let sched = &fx.config["schedule"];
        let tokens: Vec<usize> = serde_json::from_value(sched["tokens_per_step"].clone()).unwrap();
        let keys: Vec<usize> = serde_json::from_value(sched["keys_attended_per_step"].clone()).unwrap();
        assert_eq!(log.records.len(), k + 1);
        for (si, r) in log.records[..k].iter().enumerate() {
            assert_eq!((r.step, r.tokens_decoded, r.tokens_attended, r.batch), (si, tokens[si], keys[si], b));
            assert!(r.flops > 0.0);
        }
        assert_eq!(log.records[k].kind, genbench_models::generator::StepKind::Decode);
    }
}
