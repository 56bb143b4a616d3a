//! The stochastic path against the reference: the distributions each family's sampler draws
//! from (VAR top-k/top-p, LlamaGen temperature/top-k/top-p, MAR's temperature on the diffusion
//! noise, AutoNAT's tempered categorical and Gumbel re-masking), recorded by the reference code
//! in `tests/fixtures/stochastic/<family>/` (see its README and `make_stochastic.py`), and
//! chi-square tests that our seeded draws follow them.
//!
//! Every parameter (k, p, temperature, vocabulary, steps) comes from the fixture's own files;
//! `GENBENCH_STOCHASTIC_<FAMILY>` (VAR, LLAMAGEN, MAR, AUTONAT) points a test at another folder.
//!
//! Statistical tests: Pearson's chi-square, bins with an expected count under 5 pooled (the
//! usual validity rule), accepted when p > `ALPHA` = 1e-4. The draws come from a fixed seed, so
//! a test cannot flake; a wrong implementation would have to land, by luck, in the 1e-4 tail.
//! Each test also shows that it would catch a wrong distribution (unfiltered, or the wrong
//! temperature): it asserts from the draw count alone that the statistic under that
//! alternative clears the critical value by 5 standard deviations (noncentral chi-square,
//! normal approximation), then that the same draws do reject it (p < `ALPHA`).

mod common;

use candle_core::{DType, Device, Tensor, D};
use common::assert_close;
use genbench_models::generators::autonat::{remask, remask_confidence, tempered_logits};
use genbench_models::generators::autonat_strategy::Strategy;
use genbench_models::generators::mar::{configs_from_json, load_mar_checkpoint};
use genbench_models::nn::sampling::{multinomial, probabilities, TokenSampler};
use genbench_runtime::{RandomSource, SeededSource};
use statrs::distribution::{ChiSquared, ContinuousCDF, Normal};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Significance of every chi-square test.
const ALPHA: f64 = 1e-4;
/// Filtered probabilities: the bar. Both sides compute one float32 softmax over the
/// same kept logits; they differ by a few ulps of the largest probability.
const PROB_ATOL: f64 = 1e-6;
/// Draws per categorical test: expected counts of every kept token >= 5 for the fixture rows,
/// and enough power for the wrong-distribution checks (asserted per test, see the module docs).
const CATEGORICAL_DRAWS: usize = 60_000;

struct Fixture {
    dir: PathBuf,
    config: serde_json::Value,
    tensors: HashMap<String, Tensor>,
}

fn fixture(family: &str) -> Fixture {
    let var = format!("GENBENCH_STOCHASTIC_{}", family.to_uppercase());
    let dir = match std::env::var_os(&var) {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/stochastic").join(family),
    };
    eprintln!("stochastic fixture ({var}): {}", dir.display());
    assert!(dir.is_dir(), "stochastic fixture folder {} does not exist (set {var})", dir.display());
    let config = common::load_json(&dir, "config.json");
    let tensors = candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu).expect("reference.safetensors");
    Fixture { dir, config, tensors }
}

impl Fixture {
    fn t(&self, name: &str) -> &Tensor {
        self.tensors.get(name).unwrap_or_else(|| panic!("{}: reference.safetensors has no `{name}`", self.dir.display()))
    }
    fn f64s(&self, name: &str) -> Vec<f64> {
        self.t(name).to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1().unwrap()
    }
    fn vocab(&self) -> usize {
        self.config["vocab_size"].as_u64().expect("config.json vocab_size") as usize
    }
    fn cases(&self) -> Vec<serde_json::Value> {
        self.config["cases"].as_array().expect("config.json cases").clone()
    }
    fn sources(&self) -> Vec<String> {
        self.config["sources"].as_object().expect("config.json sources").keys().cloned().collect()
    }
}

fn num(v: &serde_json::Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or_else(|| panic!("case {v}: no number `{key}`"))
}

fn row_f64(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

/// Asserts the same support (exact zeros) and probabilities within `PROB_ATOL`.
fn assert_same_distribution(name: &str, ours: &Tensor, reference: &Tensor) {
    let (a, e) = (row_f64(ours), row_f64(reference));
    let support = a.iter().zip(&e).filter(|(x, y)| (**x == 0.0) != (**y == 0.0)).count();
    assert_eq!(support, 0, "{name}: {support} entries kept by one side and removed by the other");
    assert_close(name, ours, reference, 0.0, PROB_ATOL);
}

/// Pearson's chi-square of `counts` against `probs`, bins with expected count < 5 pooled.
struct ChiSquare {
    stat: f64,
    dof: usize,
    p_value: f64,
    /// Noncentrality of the statistic if the draws followed `truth` instead: N * sum (q-p)^2/p
    /// over the same bins.
    noncentrality: f64,
}

fn chi_square(counts: &[u64], probs: &[f64], truth: &[f64]) -> ChiSquare {
    let n: u64 = counts.iter().sum();
    let n = n as f64;
    let (mut stat, mut lambda, mut bins) = (0.0, 0.0, 0usize);
    let (mut pool_o, mut pool_e, mut pool_t) = (0.0, 0.0, 0.0);
    for ((&o, &p), &q) in counts.iter().zip(probs).zip(truth) {
        let e = n * p;
        if e >= 5.0 {
            stat += (o as f64 - e).powi(2) / e;
            lambda += n * (q - p).powi(2) / p;
            bins += 1;
        } else {
            pool_o += o as f64;
            pool_e += e;
            pool_t += n * q;
        }
    }
    if pool_e > 0.0 {
        stat += (pool_o - pool_e).powi(2) / pool_e;
        lambda += (pool_t - pool_e).powi(2) / pool_e;
        bins += 1;
    } else if pool_o > 0.0 || pool_t > 0.0 {
        // Draws (or mass) where the tested distribution has none.
        stat = f64::INFINITY;
        lambda = f64::INFINITY;
    }
    let dof = bins.saturating_sub(1).max(1);
    let p_value = if stat.is_finite() { 1.0 - ChiSquared::new(dof as f64).unwrap().cdf(stat) } else { 0.0 };
    ChiSquare { stat, dof, p_value, noncentrality: lambda }
}

/// Counts of `ids` over `v` bins.
fn histogram(ids: &[u32], v: usize) -> Vec<u64> {
    let mut c = vec![0u64; v];
    for &i in ids {
        c[i as usize] += 1;
    }
    c
}

/// The draws follow `reference` (p > ALPHA, nothing outside its support), and each `wrong`
/// distribution is rejected; the draw count is shown to suffice for that first.
fn check_draws(name: &str, counts: &[u64], reference: &[f64], wrong: &[(&str, Vec<f64>)]) {
    let outside: u64 = counts.iter().zip(reference).filter(|(_, &p)| p == 0.0).map(|(&c, _)| c).sum();
    assert_eq!(outside, 0, "{name}: {outside} draws fell where the reference distribution has probability 0");
    let ok = chi_square(counts, reference, reference);
    eprintln!("{name}: chi2 {:.1} on {} dof, p = {:.3e} (accept if > {ALPHA:e})", ok.stat, ok.dof, ok.p_value);
    assert!(
        ok.p_value > ALPHA,
        "{name}: our draws do not follow the reference distribution (chi2 {:.1}, {} dof, p = {:.3e})",
        ok.stat,
        ok.dof,
        ok.p_value
    );
    for (what, q) in wrong {
        // Power: the statistic against `q` when the draws follow `reference` has mean dof +
        // lambda and variance 2 (dof + 2 lambda); 5 sd above the critical value = rejected
        // with overwhelming probability, so the draw count suffices.
        let power = chi_square(counts, q, reference);
        let crit = ChiSquared::new(power.dof as f64).unwrap().inverse_cdf(1.0 - ALPHA);
        let (mean, sd) = (power.dof as f64 + power.noncentrality, (2.0 * (power.dof as f64 + 2.0 * power.noncentrality)).sqrt());
        assert!(
            mean - 5.0 * sd > crit || power.noncentrality.is_infinite(),
            "{name} vs {what}: too few draws to tell them apart (lambda {:.1}, critical value {crit:.1})",
            power.noncentrality
        );
        eprintln!(
            "{name} vs {what}: chi2 {:.1} on {} dof, p = {:.3e} (lambda {:.1})",
            power.stat, power.dof, power.p_value, power.noncentrality
        );
        assert!(power.p_value < ALPHA, "{name}: the test does not reject {what} (p = {:.3e})", power.p_value);
    }
}

/// `row` (V,) repeated `n` times: (n, V).
fn repeat_row(row: &Tensor, n: usize) -> Tensor {
    row.unsqueeze(0).unwrap().broadcast_as((n, row.dim(0).unwrap())).unwrap().contiguous().unwrap()
}

/// The row of `logits` (.., V) to draw from: among rows that keep at least 4 tokens (a
/// distribution worth testing), the one whose filter removes the most probability mass (the
/// strongest contrast with the unfiltered softmax); else the row keeping the most tokens.
fn most_filtered_row(logits: &Tensor, probs: &Tensor) -> (Tensor, Tensor) {
    let v = logits.dim(D::Minus1).unwrap();
    let l = logits.reshape(((), v)).unwrap();
    let p = probs.reshape(((), v)).unwrap();
    let unfiltered = probabilities(&l).unwrap();
    let score: Vec<(bool, f64, usize)> = (0..l.dim(0).unwrap())
        .map(|r| {
            let (u, f) = (row_f64(&unfiltered.get(r).unwrap()), row_f64(&p.get(r).unwrap()));
            let kept = f.iter().filter(|&&x| x > 0.0).count();
            let removed: f64 = u.iter().zip(&f).filter(|(_, &x)| x == 0.0).map(|(&y, _)| y).sum();
            (kept >= 4, removed, kept)
        })
        .collect();
    let best = (0..score.len())
        .max_by(|&a, &b| {
            let (x, y) = (score[a], score[b]);
            x.0.cmp(&y.0).then(if x.0 { x.1.total_cmp(&y.1) } else { x.2.cmp(&y.2) })
        })
        .unwrap();
    eprintln!("row {best}: {} tokens kept, {:.3} of the mass removed", score[best].2, score[best].1);
    (l.get(best).unwrap(), p.get(best).unwrap())
}

// ------------------------------------------------------------------------------------------
// VAR: sample_with_top_k_top_p_
// ------------------------------------------------------------------------------------------

fn var_sampler(case: &serde_json::Value) -> TokenSampler {
    TokenSampler::var(num(case, "top_k") as usize, num(case, "top_p"))
}

#[test]
fn var_filtered_distributions_match_reference() {
    let f = fixture("var");
    for case in f.cases() {
        let name = case["name"].as_str().unwrap();
        for src in f.sources() {
            let logits = f.t(&format!("{src}.logits"));
            assert_eq!(logits.dim(D::Minus1).unwrap(), f.vocab(), "{src}.logits: vocabulary");
            let ours = probabilities(&var_sampler(&case).filter(logits).unwrap()).unwrap();
            assert_same_distribution(&format!("var {name} {src}"), &ours, f.t(&format!("{name}.{src}.probs")));
        }
    }
}

#[test]
fn var_draws_follow_reference_distribution() {
    let f = fixture("var");
    for (ci, case) in f.cases().iter().enumerate() {
        let name = case["name"].as_str().unwrap();
        let (row, reference) = most_filtered_row(f.t("random.logits"), f.t(&format!("{name}.random.probs")));
        // As VAR's sampler: filter, then the multinomial draw.
        let filtered = var_sampler(case).filter(&repeat_row(&row, CATEGORICAL_DRAWS)).unwrap();
        let ids = multinomial(&filtered, &mut SeededSource::new(100 + ci as u64)).unwrap().to_vec1::<u32>().unwrap();
        let unfiltered = row_f64(&probabilities(&row).unwrap());
        check_draws(&format!("var {name}"), &histogram(&ids, f.vocab()), &row_f64(&reference), &[("the unfiltered softmax", unfiltered)]);
    }
}

// ------------------------------------------------------------------------------------------
// LlamaGen: generate.sample (temperature, top-k, Hugging Face top-p)
// ------------------------------------------------------------------------------------------

fn llamagen_sampler(case: &serde_json::Value, temperature_factor: f64) -> TokenSampler {
    TokenSampler::hugging_face(num(case, "temperature") * temperature_factor, num(case, "top_k") as usize, num(case, "top_p"))
}

#[test]
fn llamagen_filtered_distributions_match_reference() {
    let f = fixture("llamagen");
    for case in f.cases() {
        let name = case["name"].as_str().unwrap();
        for src in f.sources() {
            let logits = f.t(&format!("{src}.logits"));
            assert_eq!(logits.dim(D::Minus1).unwrap(), f.vocab(), "{src}.logits: vocabulary");
            let ours = probabilities(&llamagen_sampler(&case, 1.0).filter(logits).unwrap()).unwrap();
            assert_same_distribution(&format!("llamagen {name} {src}"), &ours, f.t(&format!("{name}.{src}.probs")));
        }
    }
}

#[test]
fn llamagen_draws_follow_reference_distribution() {
    let f = fixture("llamagen");
    for (ci, case) in f.cases().iter().enumerate() {
        let name = case["name"].as_str().unwrap();
        let (row, reference) = most_filtered_row(f.t("random.logits"), f.t(&format!("{name}.random.probs")));
        let ids = llamagen_sampler(case, 1.0)
            .sample(&repeat_row(&row, CATEGORICAL_DRAWS), &mut SeededSource::new(200 + ci as u64))
            .unwrap()
            .to_vec1::<u32>()
            .unwrap();
        let reference = row_f64(&reference);
        // Wrong alternatives: the temperature off by 25%, and (where the case filters) no filter.
        let mut wrong = vec![("temperature x 1.25", row_f64(&probabilities(&llamagen_sampler(case, 1.25).filter(&row).unwrap()).unwrap()))];
        let plain = row_f64(&probabilities(&(&row / num(case, "temperature")).unwrap()).unwrap());
        if plain.iter().zip(&reference).any(|(a, b)| (a - b).abs() > 1e-3) {
            wrong.push(("the unfiltered softmax", plain));
        }
        check_draws(&format!("llamagen {name}"), &histogram(&ids, f.vocab()), &reference, &wrong);
    }
}

// ------------------------------------------------------------------------------------------
// MAR: temperature on the diffusion noise (Normal(mean, (T exp(logvar/2))^2) per step)
// ------------------------------------------------------------------------------------------

/// The MAR model the stochastic fixture was recorded with (`model_fixture`, relative to the
/// repository root, or `GENBENCH_FIXTURE_MAR`).
fn mar_model(f: &Fixture) -> genbench_models::generators::mar::Mar {
    let dir = match std::env::var_os("GENBENCH_FIXTURE_MAR") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(f.config["model_fixture_dir"].as_str().expect("config.json model_fixture_dir")),
    };
    let config = common::load_json(&dir, "config.json");
    let (cfg, _) = configs_from_json(&config).expect("config.json describes a MAR model");
    load_mar_checkpoint(&cfg, &dir.join("checkpoint-last.pth"), &Device::Cpu).expect("load model_ema")
}

#[test]
fn mar_step_distribution_matches_reference() {
    let f = fixture("mar");
    let mar = mar_model(&f);
    let head = &mar.diffloss;
    let temperatures = f.f64s("temperatures");
    let x_in = f.t("x_in");
    let steps = x_in.dim(0).unwrap();
    assert_eq!(steps, head.num_steps(), "respaced steps of the fixture vs the model's head");
    let c_emb = head.net.cond_embed(f.t("c")).unwrap();
    let cfg = f.config["cfg"].as_f64().unwrap() as f32;
    for (j, &temp) in temperatures.iter().enumerate() {
        for i in 0..steps {
            let x = x_in.get(i).unwrap();
            // Unit noise: sample - mean is the step's noise scale T * exp(logvar / 2).
            let ones = x.ones_like().unwrap();
            let step = head.p_sample(&x, i, &c_emb, cfg, &ones, temp as f32).unwrap();
            let tag = |n: &str| format!("mar T={temp} step {i} {n}");
            let at = |n: &str| f.t(&format!("t{j}.{n}")).get(i).unwrap();
            // The network's float32 output moves by ~1e-6 between correct implementations
            // (MAR fixture `reproduction_spread`); mean and log-variance follow it: 2e-6 of
            // the step's magnitude (as mar_parity's per-step means) + 1e-6 absolute.
            let mean_ref = at("mean");
            assert_close(&tag("mean"), &step.mean, &mean_ref, 2e-6, 1e-6);
            assert_close(&tag("log_variance"), &step.log_variance, &at("log_variance"), 2e-6, 1e-6);
            assert_close(&tag("sample with unit noise"), &step.sample, &at("sample_unit_noise"), 2e-6, 1e-6);
            // The noise scale T exp(logvar / 2) as our step applies it (sample - mean with unit
            // noise): relative 1e-6 (half the log-variance error, which is ~2e-7 relative),
            // plus the float32 rounding of mean + scale and of the difference, 2 ulps of
            // max|mean| (the first reverse step's mean reaches ~1e4 on this random network).
            let scale = if i > 0 { (&step.sample - &step.mean).unwrap() } else { step.mean.zeros_like().unwrap() };
            let ulps = 2.0 * f32::EPSILON as f64 * common::max_abs_diff(&mean_ref, &mean_ref.zeros_like().unwrap()).0;
            assert_close(&tag("noise_scale"), &scale, &at("noise_scale"), 1e-6, 1e-6 + ulps);
        }
    }
}

/// Draws per MAR test (values: rows x replicas x channels).
const MAR_REPLICAS: usize = 1024;
/// Equiprobable bins of the standardised values.
const NORMAL_BINS: usize = 20;

#[test]
fn mar_noise_draws_follow_reference_distribution() {
    let f = fixture("mar");
    let mar = mar_model(&f);
    let head = &mar.diffloss;
    let temperatures = f.f64s("temperatures");
    // The temperature that is not 1 (the case where ignoring it is a wrong distribution).
    let (j, temp) = temperatures.iter().copied().enumerate().find(|&(_, t)| t != 1.0).expect("a temperature other than 1 in the fixture");
    let x_in = f.t("x_in");
    let c = f.t("c");
    let (rows, ch) = (c.dim(0).unwrap(), x_in.dim(2).unwrap());
    let cfg = f.config["cfg"].as_f64().unwrap() as f32;
    let n_rows = rows * MAR_REPLICAS;
    let idx = Tensor::from_vec((0..n_rows as u32).map(|r| r % rows as u32).collect::<Vec<_>>(), n_rows, &Device::Cpu).unwrap();
    let c_emb = head.net.cond_embed(&c.index_select(&idx, 0).unwrap()).unwrap();
    let std_normal = Normal::new(0.0, 1.0).unwrap();
    let mut rng = SeededSource::new(300);
    for i in 1..x_in.dim(0).unwrap() {
        let x = x_in.get(i).unwrap().index_select(&idx, 0).unwrap();
        // As DiffusionHead::sample draws each step's noise.
        let noise = Tensor::from_vec(rng.normal(n_rows * ch).unwrap(), (n_rows, ch), &Device::Cpu).unwrap();
        let sample = head.p_sample(&x, i, &c_emb, cfg, &noise, temp as f32).unwrap().sample;
        let mean = f.t(&format!("t{j}.mean")).get(i).unwrap().index_select(&idx, 0).unwrap();
        let scale = f.t(&format!("t{j}.noise_scale")).get(i).unwrap().index_select(&idx, 0).unwrap();
        let z = row_f64(&((sample - &mean).unwrap() / &scale).unwrap());
        // Without the temperature the noise would be scale / T: the same draws standardised
        // that way are z * T.
        let bin = |v: f64| ((std_normal.cdf(v) * NORMAL_BINS as f64) as usize).min(NORMAL_BINS - 1);
        let counts: Vec<u64> = z.iter().fold(vec![0u64; NORMAL_BINS], |mut h, &v| {
            h[bin(v)] += 1;
            h
        });
        let wrong: Vec<u64> = z.iter().fold(vec![0u64; NORMAL_BINS], |mut h, &v| {
            h[bin(v * temp)] += 1;
            h
        });
        let uniform = vec![1.0 / NORMAL_BINS as f64; NORMAL_BINS];
        let n = z.len() as f64;
        let (m, var) = (z.iter().sum::<f64>() / n, z.iter().map(|v| v * v).sum::<f64>() / n - (z.iter().sum::<f64>() / n).powi(2));
        eprintln!("mar T={temp} step {i}: standardised mean {m:.4}, variance {var:.4} over {n} values");
        // 5 standard errors: mean 1/sqrt(n), variance sqrt(2/n).
        assert!(m.abs() < 5.0 / n.sqrt(), "mar step {i}: standardised mean {m}");
        assert!((var - 1.0).abs() < 5.0 * (2.0 / n).sqrt(), "mar step {i}: standardised variance {var}");
        let ok = chi_square(&counts, &uniform, &uniform);
        eprintln!("mar T={temp} step {i}: chi2 {:.1} on {} dof, p = {:.3e}", ok.stat, ok.dof, ok.p_value);
        assert!(ok.p_value > ALPHA, "mar step {i}: noise does not follow Normal(mean, scale^2) (p = {:.3e})", ok.p_value);
        // The standardised values of a temperature-less port would be N(0, 1/T^2): the binned
        // expectation under that alternative, to show the draw count rejects it.
        let alt: Vec<f64> = (0..NORMAL_BINS)
            .map(|b| {
                let (lo, hi) =
                    (std_normal.inverse_cdf(b as f64 / NORMAL_BINS as f64), std_normal.inverse_cdf((b + 1) as f64 / NORMAL_BINS as f64));
                // P(Z * T in bin) for Z ~ N(0, 1).
                std_normal.cdf(hi / temp) - std_normal.cdf(lo / temp)
            })
            .collect();
        let power = chi_square(&counts, &uniform, &alt);
        let crit = ChiSquared::new(power.dof as f64).unwrap().inverse_cdf(1.0 - ALPHA);
        let (mean, sd) = (power.dof as f64 + power.noncentrality, (2.0 * (power.dof as f64 + 2.0 * power.noncentrality)).sqrt());
        assert!(mean - 5.0 * sd > crit, "mar: too few draws to tell temperature {temp} from 1 (lambda {:.1})", power.noncentrality);
        let bad = chi_square(&wrong, &uniform, &uniform);
        assert!(bad.p_value < ALPHA, "mar step {i}: the test does not reject a temperature-less port (p = {:.3e})", bad.p_value);
    }
}

// ------------------------------------------------------------------------------------------
// AutoNAT: tempered categorical, re-masking temperatures, Gumbel re-masking
// ------------------------------------------------------------------------------------------

fn autonat_strategy(f: &Fixture) -> Strategy {
    Strategy::from_yaml_file(&f.dir.join("strategy.yaml")).expect("strategy.yaml")
}

#[test]
fn autonat_schedule_and_token_distributions_match_reference() {
    let f = fixture("autonat");
    let strategy = autonat_strategy(&f);
    let steps = f.config["steps"].as_u64().unwrap() as usize;
    assert_eq!(strategy.steps(), steps, "strategy steps");
    let (remask_temps, samp_temps) = (f.f64s("remask_temps"), f.f64s("samp_temps"));
    for t in 0..steps {
        // Both sides parse the same YAML decimals into f64: equal up to the last bit.
        assert!(
            (strategy.remask_temp_at(t) - remask_temps[t]).abs() <= 1e-12,
            "step {t}: re-mask temperature {} vs reference {}",
            strategy.remask_temp_at(t),
            remask_temps[t]
        );
        let logits = f.t(&format!("step{t}.logits"));
        assert_eq!(logits.dim(D::Minus1).unwrap(), f.vocab(), "step{t}.logits: vocabulary");
        let ours = probabilities(&tempered_logits(logits, strategy.samp_temps[t]).unwrap()).unwrap();
        assert_same_distribution(
            &format!("autonat step {t} token probabilities (samp_temp {})", samp_temps[t]),
            &ours,
            f.t(&format!("step{t}.token_probs")),
        );
    }
}

#[test]
fn autonat_token_draws_follow_reference_distribution() {
    let f = fixture("autonat");
    let strategy = autonat_strategy(&f);
    for t in 0..strategy.steps() {
        let row = f.t(&format!("step{t}.logits")).get(0).unwrap();
        let reference = row_f64(&f.t(&format!("step{t}.token_probs")).get(0).unwrap());
        let ids = multinomial(
            &tempered_logits(&repeat_row(&row, CATEGORICAL_DRAWS), strategy.samp_temps[t]).unwrap(),
            &mut SeededSource::new(400 + t as u64),
        )
        .unwrap()
        .to_vec1::<u32>()
        .unwrap();
        let untempered = row_f64(&probabilities(&row).unwrap());
        check_draws(
            &format!("autonat step {t} tokens"),
            &histogram(&ids, f.vocab()),
            &reference,
            &[("the untempered softmax", untempered)],
        );
    }
}

/// Draws per re-masking test (each draws one Gumbel per position).
const REMASK_DRAWS: usize = 20_000;

#[test]
fn autonat_remask_draws_follow_reference_distribution() {
    let f = fixture("autonat");
    let strategy = autonat_strategy(&f);
    let mut tested = 0;
    for t in 0..strategy.steps() {
        let temp = strategy.remask_temp_at(t);
        if temp == 0.0 {
            continue;
        }
        let conf_pre: Vec<f32> = f.t(&format!("step{t}.conf_pre")).to_vec1().unwrap();
        let reference = f.f64s(&format!("step{t}.keep_first_probs"));
        let seq_len = conf_pre.len();
        let masked = conf_pre.iter().filter(|c| c.is_finite()).count();
        assert!(masked >= 2, "step {t}: {masked} masked positions, nothing to choose");
        // Re-mask all but one masked position: the one kept is the most confident after the
        // noise, distributed as the reference's keep_first_probs.
        let conf_rows: Vec<f32> = conf_pre.iter().copied().cycle().take(REMASK_DRAWS * seq_len).collect();
        let positions: Vec<u32> = (0..seq_len as u32).cycle().take(REMASK_DRAWS * seq_len).collect();
        let mut rng = SeededSource::new(500 + t as u64);
        let confidence = remask_confidence(&conf_rows, &rng.gumbel(REMASK_DRAWS * seq_len).unwrap(), temp);
        let next = remask(&confidence, &positions, seq_len, masked - 1, u32::MAX);
        let kept: Vec<u32> = next
            .chunks(seq_len)
            .map(|row| {
                let k: Vec<u32> = row.iter().copied().filter(|&p| p != u32::MAX && conf_pre[p as usize].is_finite()).collect();
                assert_eq!(k.len(), 1, "step {t}: one masked position stays");
                k[0]
            })
            .collect();
        // A port that ignored the temperature (noise scale 1) keeps by softmax(conf).
        let z: Vec<f64> = conf_pre.iter().map(|&c| if c.is_finite() { c as f64 } else { f64::NEG_INFINITY }).collect();
        let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = z.iter().map(|&v| (v - max).exp()).collect();
        let s: f64 = e.iter().sum();
        let untempered: Vec<f64> = e.iter().map(|v| v / s).collect();
        check_draws(
            &format!("autonat step {t} re-masking (temperature {temp})"),
            &histogram(&kept, seq_len),
            &reference,
            &[("noise at temperature 1", untempered)],
        );
        tested += 1;
    }
    assert!(tested > 0, "the strategy has no step with a re-masking temperature > 0");
}
