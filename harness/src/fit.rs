//! Power-law fits `L = (beta * X)^alpha` by ordinary least squares in log space.
//!
//! Taking natural logs gives a straight line, `ln L = alpha * ln beta + alpha * ln X`, so the fit
//! is a closed-form two-parameter OLS of `y = ln L` on `x = ln X`:
//!
//! * slope `alpha = Sxy / Sxx`, intercept `c = mean(y) - alpha * mean(x)` (`c = alpha * ln beta`,
//!   reported as `log_intercept`), hence `beta = exp(c / alpha)`;
//! * Pearson `r = Sxy / sqrt(Sxx * Syy)` of `(ln X, ln L)` and `R^2 = 1 - SSE / Syy`;
//! * 95% confidence intervals from Student's t with `n - 2` degrees of freedom:
//!   `alpha ± t * s / sqrt(Sxx)` and `c ± t * s * sqrt(1/n + mean(x)^2 / Sxx)`, `s^2 = SSE / (n-2)`;
//! * the interval for `beta` uses the **delta method on `ln beta = c / alpha`**, with the full
//!   covariance of `(c, alpha)`. Holding alpha fixed and mapping only the intercept's interval
//!   would ignore that `c` and `alpha` are strongly correlated whenever `ln X` is far from zero
//!   (it is ~20 for parameter counts): that interval then grows with the unit of X (12x too wide
//!   for VAR's sweep in single parameters, 1.2x in billions), while the delta-method one does not
//!   depend on the unit. It is symmetric in `ln beta` and mapped back with `exp`, so it is always
//!   positive.
//!
//! `irreducible` (L_inf) is subtracted before taking logs: `L - L_inf = (beta X)^alpha`.
//!
//! The compute frontier (`C_min` method of VAR Fig. 6) is [`frontier`]: the running minimum of
//! loss over compute, defined exactly in its documentation.

use serde::Serialize;
use statrs::distribution::{ContinuousCDF, StudentsT};
use thiserror::Error;

/// Fewest points a fit accepts: two parameters leave `n - 2` degrees of freedom for the error
/// estimate, and with none there is no confidence interval.
pub const MIN_POINTS: usize = 3;

/// One observation: `x` (parameters, compute, ...) and `y` (loss, error, ...) in the units of the
/// log, plus the 1-based line of the file it came from so errors can point at it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Point {
    pub x: f64,
    pub y: f64,
    pub line: usize,
}

/// Names used in error messages and reports for the two variables.
#[derive(Debug, Clone)]
pub struct AxisNames {
    pub x: String,
    pub y: String,
}

impl Default for AxisNames {
    fn default() -> Self {
        Self { x: "x".into(), y: "y".into() }
    }
}

#[derive(Debug, Error, PartialEq)]
pub enum FitError {
    #[error("too few points for a power-law fit: {n} (need at least {MIN_POINTS})")]
    TooFewPoints { n: usize },
    #[error("line {line}: {column} = {value} is not positive, so it has no logarithm")]
    NonPositive { line: usize, column: String, value: f64 },
    #[error(
        "line {line}: {column} - L_inf = {value} - {irreducible} = {diff} is not positive; \
         the irreducible loss must lie below every point"
    )]
    NotAboveIrreducible { line: usize, column: String, value: f64, irreducible: f64, diff: f64 },
    #[error("line {line}: {column} = {value} is not a finite number")]
    NotFinite { line: usize, column: String, value: f64 },
    #[error("every point has the same {column} ({value}); the slope is undefined")]
    ConstantX { column: String, value: f64 },
    #[error("every point has the same {column} ({value}); alpha is 0 and beta is undefined")]
    ConstantY { column: String, value: f64 },
}

/// Result of a power-law fit; every field is in the units of the input.
#[derive(Debug, Clone, Serialize)]
pub struct PowerLawFit {
    pub n: usize,
    /// Exponent (the log-log slope).
    pub alpha: f64,
    pub alpha_se: f64,
    pub alpha_ci95: [f64; 2],
    /// `c = alpha * ln beta`, the intercept of the line in natural-log space.
    pub log_intercept: f64,
    pub log_intercept_se: f64,
    pub log_intercept_ci95: [f64; 2],
    /// Scale: `L = (beta * X)^alpha`.
    pub beta: f64,
    /// Standard error of `ln beta` (delta method).
    pub ln_beta_se: f64,
    /// Delta-method interval, `exp(ln beta ± t * se(ln beta))`.
    pub beta_ci95: [f64; 2],
    /// Pearson correlation of `(ln X, ln(L - L_inf))`.
    pub pearson_r: f64,
    pub r2: f64,
    /// Two-sided 95% Student-t quantile with `n - 2` degrees of freedom.
    pub t975: f64,
    /// Residual standard deviation in natural-log units (`s`).
    pub residual_sd: f64,
    /// Irreducible loss subtracted before the fit, if any.
    pub irreducible: Option<f64>,
    /// Per point: `ln(L - L_inf) - (c + alpha ln X)`, in input order.
    pub residuals: Vec<f64>,
    /// Source lines of the points, aligned with `residuals`.
    pub lines: Vec<usize>,
}

impl PowerLawFit {
    /// Predicted `L` at `x` (irreducible loss added back).
    pub fn predict(&self, x: f64) -> f64 {
        (self.log_intercept + self.alpha * x.ln()).exp() + self.irreducible.unwrap_or(0.0)
    }

    /// `L = (b·X)^a` written with the fitted numbers (and `+ L_inf` when one was removed).
    pub fn formula(&self, x_symbol: &str, y_symbol: &str) -> String {
        let core = format!("({}·{})^{}", format_sig(self.beta, 3), x_symbol, format_sig(self.alpha, 3));
        match self.irreducible {
            Some(l_inf) => format!("{y_symbol} = {} + {core}", format_sig(l_inf, 4)),
            None => format!("{y_symbol} = {core}"),
        }
    }
}

/// Fits `L = (beta X)^alpha` (or `L - L_inf = ...`) to `points`.
pub fn fit_power_law(points: &[Point], names: &AxisNames, irreducible: Option<f64>) -> Result<PowerLawFit, FitError> {
    let n = points.len();
    if n < MIN_POINTS {
        return Err(FitError::TooFewPoints { n });
    }
    let mut log_x = Vec::with_capacity(n);
    let mut log_y = Vec::with_capacity(n);
    for p in points {
        for (value, column) in [(p.x, &names.x), (p.y, &names.y)] {
            if !value.is_finite() {
                return Err(FitError::NotFinite { line: p.line, column: column.clone(), value });
            }
        }
        if p.x <= 0.0 {
            return Err(FitError::NonPositive { line: p.line, column: names.x.clone(), value: p.x });
        }
        let reducible = match irreducible {
            Some(l_inf) => {
                let diff = p.y - l_inf;
                if diff <= 0.0 {
                    return Err(FitError::NotAboveIrreducible {
                        line: p.line,
                        column: names.y.clone(),
                        value: p.y,
                        irreducible: l_inf,
                        diff,
                    });
                }
                diff
            }
            None => {
                if p.y <= 0.0 {
                    return Err(FitError::NonPositive { line: p.line, column: names.y.clone(), value: p.y });
                }
                p.y
            }
        };
        log_x.push(p.x.ln());
        log_y.push(reducible.ln());
    }

    let line = ols(&log_x, &log_y);
    if line.sxx == 0.0 {
        return Err(FitError::ConstantX { column: names.x.clone(), value: points[0].x });
    }
    if line.syy == 0.0 {
        return Err(FitError::ConstantY { column: names.y.clone(), value: points[0].y });
    }

    let df = (n - 2) as f64;
    let t975 = StudentsT::new(0.0, 1.0, df).expect("n - 2 >= 1 degrees of freedom is a valid Student t").inverse_cdf(0.975);
    let alpha = line.slope;
    let c = line.intercept;
    let ln_beta = c / alpha;
    // Delta method: gradient of g(c, alpha) = c / alpha is (1/alpha, -c/alpha^2).
    let var_ln_beta =
        line.var_intercept / (alpha * alpha) + c * c * line.var_slope / alpha.powi(4) - 2.0 * c * line.cov_intercept_slope / alpha.powi(3);
    let ln_beta_se = var_ln_beta.max(0.0).sqrt();
    let alpha_se = line.var_slope.sqrt();
    let c_se = line.var_intercept.sqrt();

    Ok(PowerLawFit {
        n,
        alpha,
        alpha_se,
        alpha_ci95: [alpha - t975 * alpha_se, alpha + t975 * alpha_se],
        log_intercept: c,
        log_intercept_se: c_se,
        log_intercept_ci95: [c - t975 * c_se, c + t975 * c_se],
        beta: ln_beta.exp(),
        ln_beta_se,
        beta_ci95: [(ln_beta - t975 * ln_beta_se).exp(), (ln_beta + t975 * ln_beta_se).exp()],
        pearson_r: line.sxy / (line.sxx * line.syy).sqrt(),
        r2: 1.0 - line.sse / line.syy,
        t975,
        residual_sd: (line.sse / df).sqrt(),
        irreducible,
        residuals: line.residuals,
        lines: points.iter().map(|p| p.line).collect(),
    })
}

/// Closed-form simple linear regression, with centred sums to keep precision when `x` is far
/// from zero (ln of 1e19 FLOPs is ~44).
struct OlsLine {
    slope: f64,
    intercept: f64,
    sxx: f64,
    syy: f64,
    sxy: f64,
    sse: f64,
    var_slope: f64,
    var_intercept: f64,
    cov_intercept_slope: f64,
    residuals: Vec<f64>,
}

fn ols(x: &[f64], y: &[f64]) -> OlsLine {
    let n = x.len() as f64;
    let mean_x = x.iter().sum::<f64>() / n;
    let mean_y = y.iter().sum::<f64>() / n;
    let (mut sxx, mut syy, mut sxy) = (0.0, 0.0, 0.0);
    for (&xi, &yi) in x.iter().zip(y) {
        let (dx, dy) = (xi - mean_x, yi - mean_y);
        sxx += dx * dx;
        syy += dy * dy;
        sxy += dx * dy;
    }
    let slope = if sxx > 0.0 { sxy / sxx } else { f64::NAN };
    let intercept = mean_y - slope * mean_x;
    let residuals: Vec<f64> = x.iter().zip(y).map(|(&xi, &yi)| yi - (intercept + slope * xi)).collect();
    let sse: f64 = residuals.iter().map(|r| r * r).sum();
    let s2 = if x.len() > 2 { sse / (n - 2.0) } else { f64::NAN };
    OlsLine {
        slope,
        intercept,
        sxx,
        syy,
        sxy,
        sse,
        var_slope: s2 / sxx,
        var_intercept: s2 * (1.0 / n + mean_x * mean_x / sxx),
        cov_intercept_slope: -mean_x * s2 / sxx,
        residuals,
    }
}

/// The compute frontier (the `C_min` envelope of VAR Fig. 6) of per-step logs of several models.
///
/// Definition (no binning): sort all points by compute ascending, ties broken by lower loss
/// first; keep a point iff its loss is strictly below the loss of every point kept before it,
/// i.e. strictly below every loss seen at smaller or equal compute. The result is the lower
/// envelope of loss against compute: for each kept compute value, no model reached a lower loss
/// with that much compute or less. Points are returned in ascending compute.
///
/// Under noise this picks favourable draws, so the envelope sits slightly below the noise-free
/// law (a downward bias in `ln L` of roughly the noise size, mostly absorbed by the intercept).
pub fn frontier(points: &[Point]) -> Vec<Point> {
    let mut sorted: Vec<Point> = points.to_vec();
    sorted.sort_by(|a, b| a.x.total_cmp(&b.x).then(a.y.total_cmp(&b.y)));
    let mut best = f64::INFINITY;
    let mut kept = Vec::new();
    for p in sorted {
        if p.y < best {
            best = p.y;
            kept.push(p);
        }
    }
    kept
}

/// Splits labelled points into groups, keeping the order in which each group first appears.
pub fn group_points(labelled: impl IntoIterator<Item = (String, Point)>) -> Vec<(String, Vec<Point>)> {
    let mut groups: Vec<(String, Vec<Point>)> = Vec::new();
    for (label, point) in labelled {
        match groups.iter_mut().find(|(g, _)| *g == label) {
            Some((_, members)) => members.push(point),
            None => groups.push((label, vec![point])),
        }
    }
    groups
}

/// Formats `v` with `sig` significant digits, switching to exponent form outside [1e-3, 1e5)
/// so that both `2.03e-9` and `0.233` read naturally.
pub fn format_sig(v: f64, sig: usize) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let magnitude = v.abs().log10().floor() as i32;
    if (-3..5).contains(&magnitude) {
        let decimals = (sig as i32 - 1 - magnitude).max(0) as usize;
        trim_zeros(&format!("{v:.decimals$}"))
    } else {
        let s = format!("{:.*e}", sig.saturating_sub(1), v);
        match s.split_once('e') {
            Some((mantissa, exponent)) => format!("{}e{}", trim_zeros(mantissa), exponent),
            None => s,
        }
    }
}

fn trim_zeros(s: &str) -> String {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pts(xy: &[(f64, f64)]) -> Vec<Point> {
        xy.iter().enumerate().map(|(i, &(x, y))| Point { x, y, line: i + 2 }).collect()
    }

    #[test]
    fn exact_power_law_is_recovered_with_zero_width_intervals() {
        let points: Vec<Point> = pts(&[1e6, 1e7, 1e8, 1e9].map(|n: f64| (n, (2.0e-9 * n).powf(-0.23))));
        let fit = fit_power_law(&points, &AxisNames::default(), None).unwrap();
        assert!((fit.alpha + 0.23).abs() < 1e-12);
        assert!((fit.beta / 2.0e-9 - 1.0).abs() < 1e-9);
        assert!((fit.pearson_r + 1.0).abs() < 1e-12);
        assert!(fit.residuals.iter().all(|r| r.abs() < 1e-12));
        assert!((fit.predict(5e8) - (1.0f64).powf(-0.23)).abs() < 1e-9);
    }

    #[test]
    fn irreducible_loss_is_subtracted_and_checked_per_row() {
        let points = pts(&[(1.0, 3.0), (10.0, 2.5), (100.0, 2.2)]);
        let err = fit_power_law(&points, &AxisNames { x: "params".into(), y: "loss".into() }, Some(2.4)).unwrap_err();
        assert_eq!(err, FitError::NotAboveIrreducible { line: 4, column: "loss".into(), value: 2.2, irreducible: 2.4, diff: 2.2 - 2.4 });
        assert!(err.to_string().starts_with("line 4: loss - L_inf"));
        let ok = fit_power_law(&points, &AxisNames::default(), Some(2.0)).unwrap();
        assert_eq!(ok.irreducible, Some(2.0));
        assert!(ok.alpha < 0.0);
    }

    #[test]
    fn bad_inputs_name_the_row() {
        let names = AxisNames { x: "compute".into(), y: "loss".into() };
        let e = fit_power_law(&pts(&[(1.0, 1.0), (0.0, 2.0), (3.0, 1.0)]), &names, None).unwrap_err();
        assert_eq!(e.to_string(), "line 3: compute = 0 is not positive, so it has no logarithm");
        let e = fit_power_law(&pts(&[(1.0, 1.0), (2.0, -2.0), (3.0, 1.0)]), &names, None).unwrap_err();
        assert!(matches!(e, FitError::NonPositive { line: 3, .. }));
        let e = fit_power_law(&pts(&[(1.0, 1.0), (2.0, 2.0)]), &names, None).unwrap_err();
        assert_eq!(e, FitError::TooFewPoints { n: 2 });
        let e = fit_power_law(&pts(&[(2.0, 1.0), (2.0, 2.0), (2.0, 3.0)]), &names, None).unwrap_err();
        assert!(matches!(e, FitError::ConstantX { .. }));
        let e = fit_power_law(&pts(&[(1.0, 2.0), (2.0, 2.0), (3.0, 2.0)]), &names, None).unwrap_err();
        assert!(matches!(e, FitError::ConstantY { .. }));
        let e = fit_power_law(&pts(&[(1.0, f64::NAN), (2.0, 2.0), (3.0, 2.0)]), &names, None).unwrap_err();
        assert!(matches!(e, FitError::NotFinite { line: 2, .. }));
    }

    #[test]
    fn frontier_keeps_strict_running_minimum_with_ties_by_loss() {
        let points = pts(&[(1.0, 5.0), (2.0, 4.0), (2.0, 3.0), (3.0, 3.0), (4.0, 3.5), (5.0, 1.0)]);
        let f = frontier(&points);
        let xy: Vec<(f64, f64)> = f.iter().map(|p| (p.x, p.y)).collect();
        assert_eq!(xy, vec![(1.0, 5.0), (2.0, 3.0), (5.0, 1.0)]);
    }

    #[test]
    fn groups_keep_first_appearance_order() {
        let p = Point { x: 1.0, y: 1.0, line: 1 };
        let g = group_points([("b".to_string(), p), ("a".to_string(), p), ("b".to_string(), p)]);
        assert_eq!(g.iter().map(|(k, v)| (k.as_str(), v.len())).collect::<Vec<_>>(), [("b", 2), ("a", 1)]);
    }

    #[test]
    fn significant_digit_formatting() {
        assert_eq!(format_sig(2.026e-9, 3), "2.03e-9");
        assert_eq!(format_sig(-0.23251, 3), "-0.233");
        assert_eq!(format_sig(1.0, 3), "1");
        assert_eq!(format_sig(12345.0, 3), "12345");
        assert_eq!(format_sig(1.99e19, 3), "1.99e19");
    }
}
