//! Input sanity warnings: class-sorted samples (ADM's contiguous IS splits then see only a few
//! classes each, which caps IS) and sample counts below the feature dimension (FID/sFID
//! covariances are then rank-deficient and the values are not comparable to 50k-sample numbers).

/// Fewer rows than this give no meaningful run statistics.
const MIN_ROWS_FOR_ORDER_CHECK: usize = 20;

/// Fraction of adjacent pairs with the same class, and the fraction expected in a random order
/// of the same class counts (the collision probability `sum_c p_c^2`).
fn adjacent_repeat_stats(classes: &[i64]) -> (f64, f64) {
    let n = classes.len();
    let repeats = classes.windows(2).filter(|w| w[0] == w[1]).count();
    let mut sorted = classes.to_vec();
    sorted.sort_unstable();
    let collision: f64 = sorted.chunk_by(|a, b| a == b).map(|run| (run.len() as f64 / n as f64).powi(2)).sum();
    (repeats as f64 / (n - 1) as f64, collision)
}

/// Warns when neighbouring samples share a class far more often than a random order would.
fn class_order_warning(classes: &[i64], source: &str) -> Option<String> {
    if classes.len() < MIN_ROWS_FOR_ORDER_CHECK {
        return None;
    }
    let (observed, expected) = adjacent_repeat_stats(classes);
    // A random order gives `expected` (about 1/classes); demand a large, absolute excess.
    (observed > 0.2 && observed > 5.0 * expected).then(|| {
        format!(
            "samples look class-sorted ({source}: {:.0}% of neighbouring samples share a class, \
             {:.1}% expected in random order); ADM's IS uses contiguous splits of 5000, so sorted \
             samples give a capped IS. Shuffle the samples before packing them",
            100.0 * observed,
            100.0 * expected
        )
    })
}

/// Class-sorted check from per-sample labels (e.g. an `arr_1` label array). A non-decreasing
/// label array with more than one class is always reported.
pub fn class_sorted_warning_from_labels(labels: &[i64]) -> Option<String> {
    let distinct = labels.windows(2).any(|w| w[0] != w[1]);
    if distinct && labels.len() >= MIN_ROWS_FOR_ORDER_CHECK && labels.windows(2).all(|w| w[0] <= w[1]) {
        return Some(
            "the label array (arr_1) is sorted: samples are in class order; ADM's IS uses \
             contiguous splits of 5000, so sorted samples give a capped IS. Shuffle the samples \
             before packing them"
                .to_owned(),
        );
    }
    class_order_warning(labels, "labels")
}

/// Class-sorted check from the classifier's top-1 predictions (row-major `[n, classes]` logits).
pub fn class_sorted_warning_from_logits(logits: &[f32], classes: usize) -> Option<String> {
    if classes == 0 {
        return None;
    }
    let top1: Vec<i64> = logits
        .chunks_exact(classes)
        .map(|row| {
            let best = row.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i, v) } else { b });
            best.0 as i64
        })
        .collect();
    class_order_warning(&top1, "Inception top-1 predictions")
}

/// Warns when `n` rows cannot give a full-rank `dim x dim` covariance.
pub fn rank_deficiency_warning(n: usize, dim: usize, metric: &str, side: &str) -> Option<String> {
    (n > 0 && n < dim).then(|| {
        format!(
            "{metric}: {side} has N = {n} < feature dimension {dim}, so its covariance is \
             rank-deficient; the value is biased upwards and not comparable to published \
             50k-sample numbers"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random_labels(n: usize, classes: i64) -> Vec<i64> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        (0..n).map(|_| rng.random_range(0..classes)).collect()
    }

    #[test]
    fn sorted_labels_are_flagged_random_are_not() {
        let sorted: Vec<i64> = (0..1000).map(|i| i / 50).collect();
        assert!(class_sorted_warning_from_labels(&sorted).unwrap().contains("sorted"));
        // Blocks of 50 but not globally sorted (MAR-style repeat of a permuted class list).
        let blocked: Vec<i64> = (0..1000).map(|i| (i / 50 * 7) % 20).collect();
        assert!(class_sorted_warning_from_labels(&blocked).unwrap().contains("class-sorted"));
        assert!(class_sorted_warning_from_labels(&pseudo_random_labels(1000, 20)).is_none());
        assert!(class_sorted_warning_from_labels(&[3; 100]).is_none_or(|w| !w.contains("arr_1")));
        assert!(class_sorted_warning_from_labels(&[0, 1, 2]).is_none());
    }

    #[test]
    fn logits_argmax_runs_are_flagged() {
        let classes = 10;
        let make = |labels: &[i64]| -> Vec<f32> {
            labels.iter().flat_map(|&c| (0..classes).map(move |k| if k as i64 == c { 5.0 } else { 0.0 })).collect()
        };
        let sorted: Vec<i64> = (0..200).map(|i| i / 20).collect();
        assert!(class_sorted_warning_from_logits(&make(&sorted), classes).is_some());
        assert!(class_sorted_warning_from_logits(&make(&pseudo_random_labels(200, 10)), classes).is_none());
    }

    #[test]
    fn rank_deficiency() {
        assert!(rank_deficiency_warning(1000, 2048, "FID", "samples").unwrap().contains("N = 1000"));
        assert!(rank_deficiency_warning(50_000, 2048, "FID", "samples").is_none());
        assert!(rank_deficiency_warning(0, 2048, "FID", "reference").is_none());
    }
}
