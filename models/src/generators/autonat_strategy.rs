//! AutoNAT generation strategies and the rules around them.
//!
//! A strategy fixes, for every one of the `T` generation steps, four numbers (ImprovedNAT
//! `libs/nat_misc.py: NATSchedule.generate`, `configs/AutoNAT_L-T8_strategy.yaml`):
//!
//! | YAML key | entries | meaning at step t |
//! |---|---|---|
//! | `manual_ratios` | T-1 | fraction of the L tokens still masked after step t (0 after the last) |
//! | `manual_temp` | T-1 | temperature of the Gumbel noise added to the confidences before re-masking (0 at the last step) |
//! | `manual_samp_temp` | T | temperature of the categorical draw of the tokens (floored at 1e-4) |
//! | `manual_cfg` | T | guidance scale s in `c + s (c - u)` |
//!
//! This module holds the strategy type (YAML in and out, validation naming the field), the
//! built-in strategies (MaskGIT's cosine rule, the search initialisation, the released
//! AutoNAT-L T=8 strategy), the flat parameter vector the strategy search optimises, the
//! per-step mask-length rule, and the training mask-ratio sampler (Beta(alpha, beta)).

use anyhow::{bail, Context, Result};
use genbench_runtime::RandomSource;
use serde::Deserialize;
use std::f64::consts::FRAC_PI_2;
use std::path::Path;

/// The per-step generation strategy. Invariant (checked by [`Strategy::new`]): `ratios` and
/// `remask_temps` have `steps - 1` entries, `samp_temps` and `cfg` have `steps`; ratios lie in
/// [0, 1], temperatures are >= 0, everything is finite.
#[derive(Clone, Debug, PartialEq)]
pub struct Strategy {
    /// `manual_ratios`: fraction of tokens still masked after each step but the last.
    pub ratios: Vec<f64>,
    /// `manual_temp`: re-masking Gumbel temperature of each step but the last.
    pub remask_temps: Vec<f64>,
    /// `manual_samp_temp`: categorical sampling temperature per step.
    pub samp_temps: Vec<f64>,
    /// `manual_cfg`: guidance scale per step.
    pub cfg: Vec<f64>,
}

/// The names of the strategy's fields in the YAML format, in the reference's order (which is
/// also the order of the search's parameter vector).
pub const FIELD_NAMES: [&str; 4] = ["manual_ratios", "manual_temp", "manual_samp_temp", "manual_cfg"];

/// Built-in strategies selectable by name (`--strategy NAME`).
pub const BUILTIN_NAMES: [&str; 3] = ["maskgit-cosine", "search-init", "autonat-l-t8"];

/// MaskGIT's `choice_temperature` (google-research/maskgit `parallel_decode.decode`).
pub const MASKGIT_CHOICE_TEMPERATURE: f64 = 4.5;

/// The sampling temperature floor of the reference (`logits / max(tau, 1e-4)`).
pub const MIN_SAMPLING_TEMPERATURE: f64 = 1e-4;

/// One YAML value: the reference writes a list, except that its search's `params2sd` writes a
/// one-entry list as a bare number (`v[0] if len(v) == 1`), which happens for T = 2.
#[derive(Deserialize)]
#[serde(untagged)]
enum NumberOrList {
    One(f64),
    Many(Vec<f64>),
}

impl NumberOrList {
    fn into_vec(self) -> Vec<f64> {
        match self {
            Self::One(x) => vec![x],
            Self::Many(v) => v,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StrategyYaml {
    manual_ratios: Option<NumberOrList>,
    manual_temp: Option<NumberOrList>,
    manual_samp_temp: NumberOrList,
    manual_cfg: NumberOrList,
}

impl Strategy {
    /// Builds and validates a strategy (see the type's invariant).
    pub fn new(ratios: Vec<f64>, remask_temps: Vec<f64>, samp_temps: Vec<f64>, cfg: Vec<f64>) -> Result<Self> {
        let s = Self { ratios, remask_temps, samp_temps, cfg };
        s.validate()?;
        Ok(s)
    }

    /// Number of generation steps T.
    pub fn steps(&self) -> usize {
        self.samp_temps.len()
    }

    /// Checks lengths and ranges; every message names the YAML field at fault.
    pub fn validate(&self) -> Result<()> {
        let t = self.samp_temps.len();
        if t == 0 {
            bail!("strategy: manual_samp_temp is empty; a strategy needs at least one step");
        }
        let expect = [t - 1, t - 1, t, t];
        for ((name, values), want) in FIELD_NAMES.iter().zip(self.fields()).zip(expect) {
            if values.len() != want {
                bail!(
                    "strategy: {name} has {} entries but a {t}-step strategy needs {want} \
                     (manual_ratios and manual_temp: T-1, manual_samp_temp and manual_cfg: T; \
                     T is taken from manual_samp_temp)",
                    values.len()
                );
            }
            if let Some((i, v)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                bail!("strategy: {name}[{i}] = {v} is not a finite number");
            }
        }
        if let Some((i, r)) = self.ratios.iter().enumerate().find(|(_, r)| !(0.0..=1.0).contains(*r)) {
            bail!("strategy: manual_ratios[{i}] = {r} is outside [0, 1] (it is the fraction of tokens left masked)");
        }
        for (name, values) in [("manual_temp", &self.remask_temps), ("manual_samp_temp", &self.samp_temps)] {
            if let Some((i, v)) = values.iter().enumerate().find(|(_, v)| **v < 0.0) {
                bail!("strategy: {name}[{i}] = {v} is negative; temperatures must be >= 0");
            }
        }
        Ok(())
    }

    /// Also checks that the strategy has `steps` steps (`--steps` / `num_iter` given as well).
    pub fn expect_steps(&self, steps: usize) -> Result<()> {
        if self.steps() != steps {
            bail!(
                "strategy has {} steps (manual_samp_temp has {} entries) but {steps} generation steps were asked for",
                self.steps(),
                self.steps()
            );
        }
        Ok(())
    }

    fn fields(&self) -> [&Vec<f64>; 4] {
        [&self.ratios, &self.remask_temps, &self.samp_temps, &self.cfg]
    }

    /// Parses the reference's YAML format (`OmegaConf.load` of a `DisPatcher.save` file).
    /// For T = 1 the reference writes empty lists or leaves the T-1 fields out; both are read.
    pub fn from_yaml_str(text: &str) -> Result<Self> {
        let raw: StrategyYaml = serde_yaml::from_str(text)
            .context("strategy YAML: expected the keys manual_ratios, manual_temp, manual_samp_temp, manual_cfg with lists of numbers")?;
        Self::new(
            raw.manual_ratios.map(NumberOrList::into_vec).unwrap_or_default(),
            raw.manual_temp.map(NumberOrList::into_vec).unwrap_or_default(),
            raw.manual_samp_temp.into_vec(),
            raw.manual_cfg.into_vec(),
        )
    }

    pub fn from_yaml_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read strategy {}", path.display()))?;
        Self::from_yaml_str(&text).with_context(|| format!("strategy file {}", path.display()))
    }

    /// A built-in by name ([`BUILTIN_NAMES`]) for `steps` steps, or a YAML file path.
    pub fn resolve(name_or_path: &str, steps: usize) -> Result<Self> {
        let s = match name_or_path {
            "maskgit-cosine" => Self::maskgit_cosine(steps)?,
            "search-init" => Self::search_init(steps)?,
            "autonat-l-t8" => Self::autonat_l_t8(),
            path => {
                let p = Path::new(path);
                if !p.exists() {
                    bail!("strategy {path:?} is neither a file nor a built-in name (built-ins: {})", BUILTIN_NAMES.join(", "));
                }
                Self::from_yaml_file(p)?
            }
        };
        s.expect_steps(steps).with_context(|| format!("strategy {name_or_path}"))?;
        Ok(s)
    }

    /// The YAML the reference writes (`yaml.dump(d, sort_keys=False, default_flow_style=None)`):
    /// one flow-style list per key, keys in the reference order. Numbers are written with the
    /// shortest representation that reads back to the same f64, always with a decimal point or
    /// exponent in a form YAML 1.1 readers (PyYAML / OmegaConf) take as a float.
    pub fn to_yaml_string(&self) -> String {
        let mut out = String::new();
        for (name, values) in FIELD_NAMES.iter().zip(self.fields()) {
            let items: Vec<String> = values.iter().map(|&v| yaml_float(v)).collect();
            out.push_str(&format!("{name}: [{}]\n", items.join(", ")));
        }
        out
    }

    /// Writes the YAML atomically (temporary file + rename), so a crash leaves the old file.
    pub fn write_yaml(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("yaml.tmp");
        std::fs::write(&tmp, self.to_yaml_string()).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot move {} to {}", tmp.display(), path.display()))?;
        Ok(())
    }

    /// MaskGIT's cosine rule as an AutoNAT strategy: ratio `cos(pi/2 (t+1)/T)`, re-masking
    /// temperature `4.5 (1 - (t+1)/T)`, sampling temperature 1, no guidance. With the AutoNAT
    /// rules this reproduces google-research/maskgit's `parallel_decode.decode` (cosine,
    /// choice_temperature 4.5) up to exact confidence ties (fixture run `maskgit`).
    pub fn maskgit_cosine(steps: usize) -> Result<Self> {
        if steps == 0 {
            bail!("maskgit-cosine: the number of steps must be at least 1");
        }
        let t = steps as f64;
        Self::new(
            (0..steps - 1).map(|i| (FRAC_PI_2 * (i + 1) as f64 / t).cos()).collect(),
            (0..steps - 1).map(|i| MASKGIT_CHOICE_TEMPERATURE * (1.0 - (i + 1) as f64 / t)).collect(),
            vec![1.0; steps],
            vec![0.0; steps],
        )
    }

    /// The search's starting point (`train.py: DisPatcher.__init__`): ratios
    /// `cos(linspace(0, pi/2, T+1))[1:-1]`, re-masking temperatures
    /// `(1 - linspace(0, 1, T+1))[:-2]`, sampling temperatures 1, guidance
    /// `linspace(0, 1, T+1)[1:]`.
    pub fn search_init(steps: usize) -> Result<Self> {
        if steps == 0 {
            bail!("search-init: the number of steps must be at least 1");
        }
        let lin = linspace(0.0, 1.0, steps + 1);
        let lin_angle = linspace(0.0, FRAC_PI_2, steps + 1);
        Self::new(
            lin_angle[1..steps].iter().map(|a| a.cos()).collect(),
            lin[..steps - 1].iter().map(|x| 1.0 - x).collect(),
            vec![1.0; steps],
            lin[1..].to_vec(),
        )
    }

    /// The released AutoNAT-L T = 8 strategy (`configs/AutoNAT_L-T8_strategy.yaml` at
    /// LeapLabTHU/ImprovedNAT 2ca99946, the values as published).
    pub fn autonat_l_t8() -> Self {
        Self {
            ratios: vec![
                0.9531645174140464,
                0.8795409806037042,
                0.7940230737075623,
                0.745995860948045,
                0.6249785820461957,
                0.407321956652571,
                0.260658917067054,
            ],
            remask_temps: vec![
                2.404912789740805,
                2.477616274962803,
                1.191696577294597,
                0.7685444738649722,
                1.0673489052089495,
                0.9353720330515827,
                0.7843839537838292,
            ],
            samp_temps: vec![
                2.8999037830310685,
                1.867261830931786,
                1.1443729673819831,
                1.3796334226014182,
                1.4699896959810144,
                1.3760684112198358,
                1.7082165405200722,
                0.7133060703601533,
            ],
            cfg: vec![
                0.0001,
                0.0001,
                0.0001,
                0.9151274967591447,
                1.6160182878189675,
                1.1945509026838659,
                1.38322370140345,
                1.22678520936251,
            ],
        }
    }

    /// Mask ratio used at step t (0 at the last step, as the reference hard-codes).
    pub fn ratio_at(&self, step: usize) -> f64 {
        self.ratios.get(step).copied().unwrap_or(0.0)
    }

    /// Re-masking temperature at step t (0 at the last step).
    pub fn remask_temp_at(&self, step: usize) -> f64 {
        self.remask_temps.get(step).copied().unwrap_or(0.0)
    }

    /// The search's parameter vector: `ratios ++ remask_temps ++ samp_temps ++ cfg`
    /// (4T - 2 values; the reference's `torch.cat([params_clipped, params_unclipped])`).
    pub fn to_params(&self) -> Vec<f64> {
        self.fields().iter().flat_map(|v| v.iter().copied()).collect()
    }

    /// Inverse of [`to_params`](Self::to_params) for a `steps`-step strategy, validated.
    pub fn from_params(steps: usize, params: &[f64]) -> Result<Self> {
        if steps == 0 || params.len() != 4 * steps - 2 {
            bail!("a {steps}-step strategy has {} parameters, got {}", (4 * steps).saturating_sub(2), params.len());
        }
        let (r, rest) = params.split_at(steps - 1);
        let (g, rest) = rest.split_at(steps - 1);
        let (tau, s) = rest.split_at(steps);
        Self::new(r.to_vec(), g.to_vec(), tau.to_vec(), s.to_vec())
    }

    /// Which group each parameter of [`to_params`](Self::to_params) belongs to.
    pub fn param_groups(steps: usize) -> Vec<ParamGroup> {
        let mut g = vec![ParamGroup::Ratio; steps.saturating_sub(1)];
        g.extend(std::iter::repeat_n(ParamGroup::Unbounded, steps.saturating_sub(1) + 2 * steps));
        g
    }

    /// Name of parameter `i` of the vector, e.g. `manual_cfg[3]` (for logs).
    pub fn param_name(steps: usize, i: usize) -> String {
        let lens = [steps - 1, steps - 1, steps, steps];
        let mut off = i;
        for (name, len) in FIELD_NAMES.iter().zip(lens) {
            if off < len {
                return format!("{name}[{off}]");
            }
            off -= len;
        }
        format!("param[{i}]")
    }
}

/// The two parameter groups of the search (`DisPatcher.clip_option`): mask ratios (step 0.01,
/// learning rate 1e-3, kept in [0, 0.99]) and everything else (step 0.1, learning rate 0.1,
/// kept >= 1e-4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamGroup {
    Ratio,
    Unbounded,
}

/// `np.linspace(a, b, n)` (endpoint included; the last value is exactly `b`).
fn linspace(a: f64, b: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![a];
    }
    let step = (b - a) / (n - 1) as f64;
    (0..n).map(|i| if i == n - 1 { b } else { a + i as f64 * step }).collect()
}

/// Shortest round-trip representation, made readable as a float by YAML 1.1 (PyYAML needs a
/// '.' in the mantissa: `1e-05` would be a string there, `1.0e-05` is a float).
fn yaml_float(v: f64) -> String {
    let s = format!("{v:?}");
    match s.find('e') {
        Some(pos) if !s[..pos].contains('.') => format!("{}.0{}", &s[..pos], &s[pos..]),
        _ => s,
    }
}

/// Number of tokens left masked after a step (`NATSchedule.generate`):
/// `max(1, min(masked - 1, floor(seq_len * ratio)))`, with `masked` the count of batch
/// element 0 (the reference takes row 0 of the batch and applies that length to every row).
/// The product is formed in f64, as `np.floor(seq_len * mask_ratio)` does. Signed because the
/// reference's `masked - 1` is -1 when nothing is masked (then the clamp gives 1).
pub fn mask_len(seq_len: usize, ratio: f64, masked_in_row0: usize) -> usize {
    let by_ratio = (seq_len as f64 * ratio).floor();
    let upper = masked_in_row0 as f64 - 1.0;
    by_ratio.min(upper).max(1.0) as usize
}

/// AutoNAT's training mask sampler (`NATSchedule.sample`, default Beta(12, 3)): per image a
/// mask ratio `r ~ Beta(alpha, beta)`, `n = clamp(round(L r), min = 1)` tokens masked (round
/// half to even, in f32 as `torch.round`), at positions `j` with `argsort(u)[j] < n` for
/// `u ~ U[0,1)^L` (the ranks of `u`, not "the n smallest u").
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TrainMaskSampler {
    pub alpha: f64,
    pub beta: f64,
}

/// One batch drawn by [`TrainMaskSampler`].
#[derive(Clone, Debug, PartialEq)]
pub struct TrainMask {
    /// The drawn ratios, one per image.
    pub ratios: Vec<f32>,
    /// Tokens masked per image.
    pub num_masked: Vec<usize>,
    /// `(N, L)` row-major, true = masked.
    pub mask: Vec<bool>,
}

impl TrainMask {
    /// `where(mask, mask_id, x0)`: the network input of the training step.
    pub fn masked_ids(&self, x0: &[u32], mask_id: u32) -> Vec<u32> {
        x0.iter().zip(&self.mask).map(|(&x, &m)| if m { mask_id } else { x }).collect()
    }
    /// `where(mask, x0, ignore)`: cross-entropy targets, `ignore` (the reference's -1) at
    /// visible positions.
    pub fn ce_targets(&self, x0: &[u32], ignore: i64) -> Vec<i64> {
        x0.iter().zip(&self.mask).map(|(&x, &m)| if m { x as i64 } else { ignore }).collect()
    }
}

impl Default for TrainMaskSampler {
    /// Beta(12, 3), the value found with AutoNAT-S and used for every released model.
    fn default() -> Self {
        Self { alpha: 12.0, beta: 3.0 }
    }
}

impl TrainMaskSampler {
    /// Draws ratios (one Beta call for the batch) then uniforms (one call of `n * seq_len`),
    /// in the reference's order.
    pub fn sample(&self, n: usize, seq_len: usize, rng: &mut dyn RandomSource) -> Result<TrainMask> {
        let ratios = rng.beta(n, self.alpha, self.beta)?;
        let u = rng.uniform(n * seq_len)?;
        Self::from_draws(&ratios, &u, seq_len)
    }

    /// The deterministic part: masks from given ratios `(N,)` and uniforms `(N, L)`.
    pub fn from_draws(ratios: &[f32], u: &[f32], seq_len: usize) -> Result<TrainMask> {
        let n = ratios.len();
        if u.len() != n * seq_len {
            bail!("train mask: {} uniforms for {n} images of {seq_len} tokens", u.len());
        }
        let mut num_masked = Vec::with_capacity(n);
        let mut mask = vec![false; n * seq_len];
        for (b, &r) in ratios.iter().enumerate() {
            // torch: (L * r) in f32, round half to even, clamp(min=1).
            let count = ((seq_len as f32) * r).round_ties_even().max(1.0) as usize;
            num_masked.push(count);
            let row = &u[b * seq_len..(b + 1) * seq_len];
            let mut perm: Vec<usize> = (0..seq_len).collect();
            // Stable sort, like torch's argsort on distinct values (ties have probability ~0).
            perm.sort_by(|&i, &j| row[i].total_cmp(&row[j]));
            for (j, &p) in perm.iter().enumerate() {
                mask[b * seq_len + j] = p < count;
            }
        }
        Ok(TrainMask { ratios: ratios.to_vec(), num_masked, mask })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_round_trip_and_reference_format() {
        let s = Strategy::autonat_l_t8();
        let text = s.to_yaml_string();
        assert!(text.starts_with("manual_ratios: [0.9531645174140464, "), "{text}");
        assert_eq!(text.lines().count(), 4);
        assert_eq!(Strategy::from_yaml_str(&text).unwrap(), s);
        // Tiny values keep a '.' so PyYAML reads them as floats.
        assert_eq!(yaml_float(1e-5), "1.0e-5");
        assert_eq!(yaml_float(0.0001), "0.0001");
        assert_eq!(yaml_float(2.0), "2.0");
    }

    #[test]
    fn bad_strategies_are_refused_naming_the_field() {
        let err = |text: &str| format!("{:#}", Strategy::from_yaml_str(text).unwrap_err());
        let ok = "manual_ratios: [0.5]\nmanual_temp: [1.0]\nmanual_samp_temp: [1.0, 1.0]\nmanual_cfg: [0.0, 1.0]\n";
        assert_eq!(Strategy::from_yaml_str(ok).unwrap().steps(), 2);
        let e = err("manual_ratios: [0.5, 0.2]\nmanual_temp: [1.0]\nmanual_samp_temp: [1.0, 1.0]\nmanual_cfg: [0.0, 1.0]\n");
        assert!(e.contains("manual_ratios has 2 entries") && e.contains("needs 1"), "{e}");
        let e = err("manual_ratios: [0.5]\nmanual_temp: [1.0]\nmanual_samp_temp: [1.0, 1.0]\nmanual_cfg: [0.0]\n");
        assert!(e.contains("manual_cfg has 1 entries"), "{e}");
        let e = err("manual_ratios: [1.5]\nmanual_temp: [1.0]\nmanual_samp_temp: [1.0, 1.0]\nmanual_cfg: [0.0, 1.0]\n");
        assert!(e.contains("manual_ratios[0] = 1.5 is outside [0, 1]"), "{e}");
        let e = err("manual_ratios: [0.5]\nmanual_temp: [-0.1]\nmanual_samp_temp: [1.0, 1.0]\nmanual_cfg: [0.0, 1.0]\n");
        assert!(e.contains("manual_temp[0] = -0.1 is negative"), "{e}");
        let e = err("manual_ratios: [0.5]\nmanual_temp: [0.1]\nmanual_samp_temp: [1.0, -2.0]\nmanual_cfg: [0.0, 1.0]\n");
        assert!(e.contains("manual_samp_temp[1] = -2 is negative"), "{e}");
        let e = err("manual_ratios: [0.5]\nmanual_temp: [0.1]\nmanual_samp_temp: [1.0, 1.0]\nmanual_cfg: [0.0, .nan]\n");
        assert!(e.contains("manual_cfg[1] = NaN is not a finite number"), "{e}");
        let e = err("manual_ratios: [0.5]\nmanual_temp: [0.1]\nmanual_samp_temp: [1.0, 1.0]\nmanual_cfg: [0.0, 1.0]\nextra: 1\n");
        assert!(e.contains("unknown field `extra`"), "{e}");
        // The reference writes one-entry lists as bare numbers (T = 2).
        let scalar = "manual_ratios: 0.5\nmanual_temp: 1.0\nmanual_samp_temp: [1.0, 1.0]\nmanual_cfg: [0.0, 1.0]\n";
        assert_eq!(Strategy::from_yaml_str(scalar).unwrap().ratios, vec![0.5]);
        assert!(Strategy::resolve("no-such-strategy", 8).unwrap_err().to_string().contains("built-ins"));
        let e = format!("{:#}", Strategy::resolve("autonat-l-t8", 4).unwrap_err());
        assert!(e.contains("8 steps") && e.contains("4 generation steps"), "{e}");
    }

    #[test]
    fn builtins_match_their_definitions() {
        let m = Strategy::maskgit_cosine(8).unwrap();
        assert!((m.ratios[0] - 0.9807852804032304).abs() < 1e-15);
        assert!((m.ratios[6] - 0.19509032201612833).abs() < 1e-15);
        assert_eq!(m.remask_temps, vec![3.9375, 3.375, 2.8125, 2.25, 1.6875, 1.125, 0.5625]);
        assert_eq!(m.samp_temps, vec![1.0; 8]);
        assert_eq!(m.cfg, vec![0.0; 8]);
        // Search initialisation for T = 8 (tables/autonat_L_T8_strategy_table.txt).
        let s = Strategy::search_init(8).unwrap();
        // The table's 0.707107: cos(pi/4) to six digits.
        assert!((s.ratios[3] - std::f64::consts::FRAC_1_SQRT_2).abs() < 1e-6);
        assert_eq!(s.remask_temps, vec![1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25]);
        assert_eq!(s.cfg, vec![0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0]);
        assert_eq!(Strategy::search_init(1).unwrap().to_params(), vec![1.0, 1.0]);
        Strategy::autonat_l_t8().validate().unwrap();
    }

    #[test]
    fn released_t8_strategy_fixes_the_published_token_counts() {
        // tables/autonat_L_T8_strategy_table.txt: tokens fixed per step 12,19,22,13,31,55,38,66.
        let s = Strategy::autonat_l_t8();
        let mut masked = 256;
        let mut fixed = Vec::new();
        for t in 0..8 {
            let after = if t == 7 { 0 } else { mask_len(256, s.ratio_at(t), masked) };
            fixed.push(masked - after);
            masked = after;
        }
        assert_eq!(fixed, vec![12, 19, 22, 13, 31, 55, 38, 66]);
    }

    #[test]
    fn params_round_trip_and_groups() {
        let s = Strategy::autonat_l_t8();
        let p = s.to_params();
        assert_eq!(p.len(), 30);
        assert_eq!(Strategy::from_params(8, &p).unwrap(), s);
        let g = Strategy::param_groups(8);
        assert_eq!(g.iter().filter(|&&g| g == ParamGroup::Ratio).count(), 7);
        assert_eq!(g[7], ParamGroup::Unbounded);
        assert_eq!(Strategy::param_name(8, 7), "manual_temp[0]");
        assert_eq!(Strategy::param_name(8, 29), "manual_cfg[7]");
        assert!(Strategy::from_params(8, &p[..29]).is_err());
    }

    #[test]
    fn mask_len_clamps() {
        assert_eq!(mask_len(16, 0.8318470121043614, 16), 13);
        assert_eq!(mask_len(16, 0.04122889062127541, 8), 1, "floor gives 0, clamped to 1");
        assert_eq!(mask_len(16, 0.99, 5), 4, "at most masked - 1");
        assert_eq!(mask_len(16, 0.5, 0), 1, "nothing masked: the reference's -1 clamps to 1");
    }

    #[test]
    fn train_mask_uses_ranks_not_smallest_values() {
        // u = [0.9, 0.1, 0.5, 0.3]: argsort = [1, 3, 2, 0]; with n = 2, mask[j] = perm[j] < 2
        // -> [true, false, false, true]. "The 2 smallest u" would be positions 1 and 3.
        let m = TrainMaskSampler::from_draws(&[0.5], &[0.9, 0.1, 0.5, 0.3], 4).unwrap();
        assert_eq!(m.num_masked, vec![2]);
        assert_eq!(m.mask, vec![true, false, false, true]);
        // Round half to even: 4 * 0.625 = 2.5 -> 2; 4 * 0.875 = 3.5 -> 4; tiny r -> clamp 1.
        let m = TrainMaskSampler::from_draws(&[0.625, 0.875, 0.01], &[0.5; 12], 4).unwrap();
        assert_eq!(m.num_masked, vec![2, 4, 1]);
        assert_eq!(m.masked_ids(&[5, 6, 7, 8, 5, 6, 7, 8, 5, 6, 7, 8], 64)[..4], [64, 64, 7, 8]);
        assert_eq!(m.ce_targets(&[5, 6, 7, 8, 5, 6, 7, 8, 5, 6, 7, 8], -1)[..4], [5, 6, -1, -1]);
    }

    #[test]
    fn train_mask_sampler_draws_in_the_reference_order() {
        let mut r = genbench_runtime::ReplaySource::new();
        r.betas.extend([0.5f32]);
        r.uniforms.extend([0.9f32, 0.1, 0.5, 0.3]);
        let m = TrainMaskSampler::default().sample(1, 4, &mut r).unwrap();
        assert_eq!(m.mask, vec![true, false, false, true]);
        assert!(r.is_exhausted());
        // Seeded: mean masked fraction near the Beta(12, 3) mean 0.8.
        let mut s = genbench_runtime::SeededSource::new(3);
        let m = TrainMaskSampler::default().sample(2000, 256, &mut s).unwrap();
        let frac = m.num_masked.iter().sum::<usize>() as f64 / (2000.0 * 256.0);
        assert!((frac - 0.8).abs() < 0.01, "{frac}");
        assert!(m.mask.chunks(256).zip(&m.num_masked).all(|(row, &n)| row.iter().filter(|&&x| x).count() == n));
    }
}
