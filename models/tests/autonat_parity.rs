//! Parity of the AutoNAT port with the reference PyTorch (LeapLabTHU/ImprovedNAT) on the
//! fixture folder (`GENBENCH_FIXTURE_AUTONAT`, default `tests/fixtures/models/autonat`): the MAGE
//! VQGAN encode/decode, the U-ViT forward (conditional, unconditional, guided, every hook
//! point), single blocks, the training mask sampler, and every recorded generation run, step by
//! step, with the reference's random draws replayed. Sizes, labels, strategies and scales come
//! from the folder's `config.json`, so any fixture of this format can be used.
//!
//! Tolerances: everything is float32 on both sides. The networks are tiny (width 64 / 32), so
//! accumulated rounding stays near 1e-6 relative; bounds are `rtol 2e-5` of the largest
//! reference magnitude (plus a small atol), loose enough for a different summation order and
//! tight enough to catch any wrong eps, activation, ordering or scale (those give errors of
//! 1e-2 and more). Ids must be identical: the fixture was built so that every categorical
//! target lies >= 1e-5 from a CDF boundary and every VQ argmin has a margin of 0.028.

mod common;

use candle_core::{DType, Device, Tensor, D};
use common::{assert_close, assert_same_ids, fixture_dir, load_io, load_json};
use genbench_models::generator::NoObserver;
use genbench_models::generators::autonat::{generate_tokens, load_uvit_file, AutoNatGenerator, AutoNatSpec, StepTrace, UViT};
use genbench_models::generators::autonat_strategy::{Strategy, TrainMaskSampler};
use genbench_models::tokenizers::mage_vqgan::MageVqgan;
use genbench_runtime::ReplaySource;
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;

const RTOL: f64 = 2e-5;
const ATOL: f64 = 1e-6;

struct Fixture {
    dir: PathBuf,
    config: Value,
    io: HashMap<String, Tensor>,
    spec: AutoNatSpec,
}

fn fixture() -> Fixture {
    let dir = fixture_dir("GENBENCH_FIXTURE_AUTONAT", "autonat");
    let config = load_json(&dir, "config.json");
    let io = load_io(&dir);
    let spec = AutoNatSpec::from_fixture_config(&config, "fixture").unwrap();
    Fixture { dir, config, io, spec }
}

impl Fixture {
    fn t(&self, name: &str) -> &Tensor {
        self.io.get(name).unwrap_or_else(|| panic!("io.safetensors has no `{name}`"))
    }
    fn ids(&self, name: &str) -> Vec<u32> {
        self.t(name).to_dtype(DType::I64).unwrap().flatten_all().unwrap().to_vec1::<i64>().unwrap().into_iter().map(|x| x as u32).collect()
    }
    fn net(&self) -> UViT {
        let file = self.config["generator"]["checkpoint"].as_str().unwrap();
        load_uvit_file(&self.spec.net, &self.dir.join(file), DType::F32, &Device::Cpu).unwrap()
    }
    fn vqgan(&self) -> MageVqgan {
        let file = self.config["tokenizer"]["checkpoint"].as_str().unwrap();
        MageVqgan::load_file(&self.spec.tokenizer, &self.dir.join(file), DType::F32, &Device::Cpu).unwrap()
    }
    fn generator(&self, strategy: Strategy) -> AutoNatGenerator {
        AutoNatGenerator::new("fixture".into(), self.net(), self.vqgan(), "fixture".into(), strategy).unwrap()
    }
    fn runs(&self) -> Vec<(String, Value)> {
        self.config["runs"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
    fn strategy(&self, run: &Value) -> Strategy {
        let s = Strategy::from_yaml_file(&self.dir.join(run["strategy_yaml"].as_str().unwrap())).unwrap();
        s.expect_steps(run["gen_steps"].as_u64().unwrap() as usize).unwrap();
        s
    }
    /// The run's recorded stream: uniforms for the categorical draws, Gumbel noise.
    fn replay(&self, run: &str) -> ReplaySource {
        let mut r = ReplaySource::new();
        r.categorical_uniforms.extend(self.t(&format!("{run}.stream.uniform")).flatten_all().unwrap().to_vec1::<f32>().unwrap());
        r.gumbels.extend(self.t(&format!("{run}.stream.gumbel")).flatten_all().unwrap().to_vec1::<f32>().unwrap());
        r
    }
}

fn labels_of(run: &Value) -> Vec<u32> {
    run["labels"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

#[test]
fn tokenizer_encode_and_decode() {
    let f = fixture();
    let vq = f.vqgan();
    let x = f.t("vq.image_in");
    let (z, enc_trace) = vq.encode_traced(x).unwrap();
    assert_close("vq.enc_mid", enc_trace.encoder_mid.as_ref().unwrap(), f.t("vq.enc_mid"), RTOL, ATOL);
    assert_close("vq.enc_f", &z, f.t("vq.enc_f"), RTOL, ATOL);
    let ids = vq.codebook().nearest_map(&z).unwrap();
    assert_same_ids("vq.enc_ids", &ids, f.t("vq.enc_ids"));
    assert_same_ids("vq.enc_ids (encode)", &vq.encode(x).unwrap(), f.t("vq.enc_ids"));
    let side = f.spec.tokenizer.latent_side();
    let rows = vq.codebook().lookup_map(&ids, side, side).unwrap();
    assert_close("vq.codebook_rows", &rows, f.t("vq.codebook_rows"), 0.0, 0.0);
    // The reference's straight-through `z + (e - z)` equals the row up to one rounding.
    assert_close("vq.enc_quant", &rows, f.t("vq.enc_quant"), 1e-6, 1e-6);

    let (img, dec_trace) = vq.decode_traced(f.t("vq.codebook_rows")).unwrap();
    assert_close("vq.dec_conv_in", dec_trace.decoder_conv_in.as_ref().unwrap(), f.t("vq.dec_conv_in"), RTOL, ATOL);
    assert_close("vq.dec_mid", dec_trace.decoder_mid.as_ref().unwrap(), f.t("vq.dec_mid"), RTOL, ATOL);
    assert_close("vq.dec_up_last_level", dec_trace.decoder_lowest_level.as_ref().unwrap(), f.t("vq.dec_up_last_level"), RTOL, ATOL);
    assert_close("vq.dec_image", &img, f.t("vq.dec_image"), RTOL, ATOL);
    let via_ids = vq.decode_code(f.t("vq.enc_ids")).unwrap();
    assert_close("vq.dec_image (decode_code)", &via_ids, f.t("vq.dec_image"), RTOL, ATOL);
}

#[test]
fn network_forward_conditional_unconditional_guided() {
    let f = fixture();
    let net = f.net();
    let ids = f.t("nat.tf.masked_ids").to_dtype(DType::U32).unwrap();
    let labels = f.t("nat.tf.labels").flatten_all().unwrap().to_dtype(DType::U32).unwrap();
    let null = f.t("nat.tf.null_labels").flatten_all().unwrap().to_dtype(DType::U32).unwrap();
    assert!(null.to_vec1::<u32>().unwrap().iter().all(|&n| n == net.config().null_class()), "null class from the config");

    let (cond, trace) = net.forward_traced(&ids, &labels).unwrap();
    assert_close("nat.tf.logits_cond", &cond, f.t("nat.tf.logits_cond"), RTOL, ATOL);
    let hooks: HashMap<String, Tensor> = trace.into_iter().collect();
    let mut checked = 0;
    for (name, reference) in f.io.iter().filter(|(k, _)| k.starts_with("nat.tf.h.")) {
        let hook = name.trim_start_matches("nat.tf.h.");
        let ours = hooks.get(hook).unwrap_or_else(|| panic!("no hook `{hook}` in the traced forward"));
        assert_close(name, ours, reference, RTOL, ATOL);
        checked += 1;
    }
    // token_emb, context_emb, every block, norm, mlm_full.
    assert_eq!(checked, 2 + net.config().depth + 1 + 2, "hook points compared");
    // The untraced (sliced-head) path gives the same logits.
    assert_close("forward (fast path)", &net.forward(&ids, &labels).unwrap(), f.t("nat.tf.logits_cond"), RTOL, ATOL);
    assert_close("nat.tf.logits_uncond", &net.forward(&ids, &null).unwrap(), f.t("nat.tf.logits_uncond"), RTOL, ATOL);

    // The JSON holds the float64 the reference was called with; io.safetensors its float32
    // rounding: they agree to float32 precision (half an ulp of the f32 value).
    let scale = f.config["cfg"]["teacher_forcing_scale"].as_f64().unwrap();
    let stored = f.t("nat.tf.cfg_scale").to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()[0];
    assert_eq!(stored, scale as f32, "nat.tf.cfg_scale {stored} vs config {scale}");
    let labels_vec = labels.to_vec1::<u32>().unwrap();
    let guided = net.guided_logits(&ids, &labels_vec, scale).unwrap();
    assert_close("nat.tf.logits_cfg", &guided, f.t("nat.tf.logits_cfg"), RTOL, ATOL);
}

#[test]
fn blocks_in_isolation() {
    let f = fixture();
    let net = f.net();
    let x = f.t("nat.block.x");
    let skip = f.t("nat.block.skip");
    // Which blocks were isolated is read from the tensor names (`nat.block.in_blocks.{i}.out`).
    let indices = |kind: &str| -> Vec<usize> {
        let prefix = format!("nat.block.{kind}.");
        let mut v: Vec<usize> = f.io.keys().filter_map(|k| k.strip_prefix(&prefix)?.strip_suffix(".out")?.parse().ok()).collect();
        v.sort();
        v
    };
    let (ins, outs) = (indices("in_blocks"), indices("out_blocks"));
    assert!(!ins.is_empty() && !outs.is_empty(), "the fixture isolates at least one in- and one out-block");
    for i in ins {
        let b = net.in_block(i);
        let attn_key = format!("nat.block.in_blocks.{i}.attn_out");
        if let Some(reference) = f.io.get(&attn_key) {
            let attn = b.attn.forward(&candle_core::Module::forward(&b.norm1, x).unwrap(), None, None).unwrap();
            assert_close(&attn_key, &attn, reference, RTOL, ATOL);
        }
        let key = format!("nat.block.in_blocks.{i}.out");
        assert_close(&key, &candle_core::Module::forward(b, x).unwrap(), f.t(&key), RTOL, ATOL);
    }
    for i in outs {
        let key = format!("nat.block.out_blocks.{i}.out");
        assert_close(&key, &net.out_block(i).forward(x, Some(skip)).unwrap(), f.t(&key), RTOL, ATOL);
    }
}

#[test]
fn training_mask_sampler_and_loss() {
    let f = fixture();
    let cfg = &f.config["train_mask_sampler"];
    let sampler = TrainMaskSampler { alpha: cfg["alpha"].as_f64().unwrap(), beta: cfg["beta"].as_f64().unwrap() };
    let x0 = f.ids("nat.tf.x0_ids");
    let l = f.spec.net.seq_len();
    // Replay the reference's two draws through the sampler itself (Beta, then uniforms).
    let mut replay = ReplaySource::new();
    replay.betas.extend(f.t("nat.tf.beta_r").to_vec1::<f32>().unwrap());
    replay.uniforms.extend(f.t("nat.tf.rand_u").flatten_all().unwrap().to_vec1::<f32>().unwrap());
    let n = x0.len() / l;
    let m = sampler.sample(n, l, &mut replay).unwrap();
    assert!(replay.is_exhausted());
    let as_u32 = |v: Vec<usize>| v.into_iter().map(|x| x as u32).collect::<Vec<_>>();
    assert_eq!(as_u32(m.num_masked.clone()), f.ids("nat.tf.num_masked"));
    assert_eq!(m.mask.iter().map(|&b| b as u32).collect::<Vec<_>>(), f.ids("nat.tf.mask"));
    let mask_id = cfg["masked_input_id"].as_u64().unwrap() as u32;
    assert_eq!(mask_id, f.spec.net.mask_id());
    assert_eq!(m.masked_ids(&x0, mask_id), f.ids("nat.tf.masked_ids"));
    let ignore = cfg["ce_target_unmasked"].as_i64().unwrap();
    let targets = m.ce_targets(&x0, ignore);
    let ref_targets = f.t("nat.tf.ce_labels").flatten_all().unwrap().to_vec1::<i64>().unwrap();
    assert_eq!(targets, ref_targets);

    // NATSchedule.loss: cross-entropy with label smoothing over the masked tokens, on the
    // reference's conditional logits (checks the target semantics, not the network).
    let eps = cfg["label_smoothing"].as_f64().unwrap();
    let logp = candle_nn::ops::log_softmax(&f.t("nat.tf.logits_cond").to_dtype(DType::F64).unwrap(), D::Minus1).unwrap();
    let v = logp.dim(D::Minus1).unwrap();
    let logp = logp.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let (mut total, mut count) = (0.0, 0);
    for (i, &t) in targets.iter().enumerate() {
        if t == ignore {
            continue;
        }
        let row = &logp[i * v..(i + 1) * v];
        total += (1.0 - eps) * -row[t as usize] + eps * -row.iter().sum::<f64>() / v as f64;
        count += 1;
    }
    let loss = total / count as f64;
    let reference = f.t("nat.tf.loss").to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
    eprintln!("loss {loss} vs {reference}");
    assert!((loss - reference).abs() < 1e-5, "label-smoothed CE {loss} vs {reference}");
}

/// Compares one run's per-step trace with the recording.
fn check_run(f: &Fixture, run: &str, traces: &[StepTrace], final_ids: &[u32]) {
    let steps = traces.len();
    let per_step = |name: &str| -> Vec<Vec<u32>> {
        let all = f.ids(&format!("{run}.{name}"));
        let n = all.len() / steps;
        all.chunks(n).map(|c| c.to_vec()).collect()
    };
    let per_step_f32 = |name: &str| -> Vec<Tensor> {
        let t = f.t(&format!("{run}.{name}"));
        (0..steps).map(|s| t.get(s).unwrap().flatten_all().unwrap()).collect()
    };
    let (ids_in, raw, sampled) = (per_step("ids_in"), per_step("sampled_raw"), per_step("sampled_ids"));
    let (conf_pre, confidence) = (per_step_f32("conf_pre"), per_step_f32("confidence"));
    let counts = |name: &str| f.ids(&format!("{run}.{name}")).into_iter().map(|x| x as usize).collect::<Vec<_>>();
    for (s, tr) in traces.iter().enumerate() {
        assert_eq!(tr.ids_in, ids_in[s], "{run} step {s}: ids entering the step");
        assert_eq!(tr.sampled_raw, raw[s], "{run} step {s}: categorical draws");
        assert_eq!(tr.sampled_ids, sampled[s], "{run} step {s}: sampled ids");
        // +inf at known positions on both sides; compare the finite ones.
        for (name, ours, reference) in [("conf_pre", &tr.conf_pre, &conf_pre[s]), ("confidence", &tr.confidence, &confidence[s])] {
            let r = reference.to_vec1::<f32>().unwrap();
            assert_eq!(
                ours.iter().map(|x| x.is_infinite()).collect::<Vec<_>>(),
                r.iter().map(|x| x.is_infinite()).collect::<Vec<_>>(),
                "{run} step {s}: +inf pattern of {name}"
            );
            let worst = ours.iter().zip(&r).filter(|(a, _)| a.is_finite()).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst < 1e-4, "{run} step {s}: {name} differs by {worst}");
        }
        if let Some(reference) = f.io.get(&format!("{run}.logits")) {
            assert_close(&format!("{run}.logits[{s}]"), tr.logits.as_ref().unwrap(), &reference.get(s).unwrap(), RTOL, ATOL);
        }
    }
    assert_eq!(traces.iter().map(|t| t.num_masked_before).collect::<Vec<_>>(), counts("num_masked_before"), "{run}");
    assert_eq!(traces.iter().map(|t| t.mask_len).collect::<Vec<_>>(), counts("mask_len"), "{run}");
    assert_eq!(traces.iter().map(|t| t.num_fixed()).collect::<Vec<_>>(), counts("num_fixed"), "{run}");
    assert_eq!(traces.iter().map(|t| t.num_masked_after).collect::<Vec<_>>(), counts("num_masked_after"), "{run}");
    assert_eq!(final_ids, f.ids(&format!("{run}.final_ids")), "{run}: final ids");
    eprintln!("{run}: {steps} steps, per-step ids identical");
}

#[test]
fn every_generation_run_step_by_step() {
    let f = fixture();
    let runs = f.runs();
    assert!(!runs.is_empty());
    for (run, meta) in &runs {
        let strategy = f.strategy(meta);
        let gen = f.generator(strategy);
        let labels = labels_of(meta);
        assert_eq!(labels, f.ids(&format!("{run}.labels")));
        let mut replay = f.replay(run);
        let mut traces = Vec::new();
        let mut keep = |_: usize, t: &StepTrace| traces.push(t.clone());
        let out = gen.generate(&labels, &mut replay, &mut NoObserver, Some(&mut keep)).unwrap();
        assert!(replay.is_exhausted(), "{run}: the port consumed fewer draws than recorded");
        check_run(&f, run, &traces, &out.token_ids);
        if let Some(reference) = f.io.get(&format!("{run}.image")) {
            assert_close(&format!("{run}.image"), &out.images, reference, RTOL, ATOL);
        }
    }
}

#[test]
fn generation_rules_on_recorded_logits() {
    // The loop alone, driven by the reference's own guided logits: isolates the rules (mask
    // length from row 0, clamps, untempered confidence, Gumbel in f64, <= cut) from the network.
    let f = fixture();
    for (run, meta) in f.runs() {
        let Some(logits) = f.io.get(&format!("{run}.logits")).cloned() else { continue };
        let strategy = f.strategy(&meta);
        let (_, b, l, _) = logits.dims4().unwrap();
        let mut replay = f.replay(&run);
        let mut traces = Vec::new();
        let mut feed = |step: usize, _: &[u32], _: f64| Ok(logits.get(step)?);
        let mut keep = |_: usize, t: StepTrace| -> anyhow::Result<()> {
            traces.push(t);
            Ok(())
        };
        let ids = generate_tokens(b, l, f.spec.net.mask_id(), &strategy, &mut replay, &mut feed, Some(&mut keep)).unwrap();
        assert!(replay.is_exhausted());
        check_run(&f, &run, &traces, &ids);
    }
}

#[test]
fn maskgit_builtin_is_the_fixture_cosine_run() {
    let f = fixture();
    let (run, meta) = f.runs().into_iter().find(|(k, _)| k == "maskgit").expect("fixture has a maskgit run");
    let steps = meta["gen_steps"].as_u64().unwrap() as usize;
    let cfg = &f.config["maskgit_reference"];
    assert_eq!(cfg["num_iter"].as_u64(), Some(steps as u64), "maskgit_reference.num_iter vs the run's gen_steps");
    let builtin = Strategy::maskgit_cosine(steps).unwrap();
    let from_yaml = f.strategy(&meta);
    for (a, b) in builtin.to_params().iter().zip(from_yaml.to_params()) {
        assert!((a - b).abs() < 1e-15, "built-in {a} vs yaml {b}");
    }
    let gen = f.generator(builtin);
    let mut replay = f.replay(&run);
    let mut traces = Vec::new();
    let mut keep = |_: usize, t: &StepTrace| traces.push(t.clone());
    let out = gen.generate(&labels_of(&meta), &mut replay, &mut NoObserver, Some(&mut keep)).unwrap();
    check_run(&f, &run, &traces, &out.token_ids);
    let lens: Vec<usize> = cfg["mask_len_per_step"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
    assert_eq!(traces.iter().map(|t| t.mask_len).collect::<Vec<_>>(), lens);
}

#[test]
fn bad_labels_are_refused() {
    let f = fixture();
    let (_, meta) = f.runs().into_iter().next().unwrap();
    let gen = f.generator(f.strategy(&meta));
    let null = f.spec.net.null_class();
    let err = gen
        .generate(&[null], &mut genbench_runtime::SeededSource::new(0), &mut NoObserver, None)
        .err()
        .expect("the null class is not a valid label");
    assert!(err.to_string().contains("out of range"), "{err}");
}
