//! Helpers shared by the CLI tests of sharded suites (`cli_suite_shards`, `cli_slurm`).

/// metrics.csv of a sharded run against the single-process one: byte for byte. The shards fill
/// the same per-batch, content-keyed feature cache the runner reads, and the merge job computes
/// the metrics from those features in batch order exactly as a single process does, so every
/// value is the same double; a lost, doubled or foreign batch changes FID in the first digits.
pub fn assert_metrics_match(got: &str, want: &str) {
    if got != want {
        let first = got.lines().zip(want.lines()).position(|(g, w)| g != w);
        panic!("metrics.csv differs from the single-process run (first differing row: {first:?}):\n{got}\nvs\n{want}");
    }
}
