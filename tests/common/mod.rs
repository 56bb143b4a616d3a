//! Helpers shared by the CLI tests of sharded suites (`cli_suite_shards`, `cli_slurm`).

/// metrics.csv of a sharded run against the single-process one: every column equal except
/// `value` (and the delta columns derived from it), which must agree to 1e-6 relative. The
/// shards fill the same per-batch, content-keyed feature cache the runner reads, so the values
/// are expected to be equal; the margin only allows for the last f32 bits of a feature, which
/// move FID by about 1e-9 relative. A lost, doubled or foreign batch moves FID by more than 1e-2.
pub fn assert_metrics_match(got: &str, want: &str) {
    let rows = |t: &str| -> Vec<Vec<String>> { t.lines().map(|l| l.split(',').map(str::to_string).collect()).collect() };
    let (g, w) = (rows(got), rows(want));
    assert_eq!(g.len(), w.len(), "row count:\n{got}\nvs\n{want}");
    let header = &w[0];
    for (gr, wr) in g.iter().zip(&w) {
        assert_eq!(gr.len(), wr.len(), "{gr:?} vs {wr:?}");
        for (i, (a, b)) in gr.iter().zip(wr).enumerate() {
            let numeric = matches!(header[i].as_str(), "value" | "delta" | "rel_delta");
            match (numeric, a.parse::<f64>(), b.parse::<f64>()) {
                (true, Ok(x), Ok(y)) => assert!((x - y).abs() <= 1e-6 * y.abs().max(1e-12), "{}: {x} vs {y} in {gr:?}", header[i]),
                _ => assert_eq!(a, b, "column {} of {gr:?} vs {wr:?}", header[i]),
            }
        }
    }
}
