#!/usr/bin/env bash
# Peak memory of a suite run against its number of samples (issue #14, "Streaming"): the tiny
# VAR fixture generates N images at 64 px, scored for FID against a 24-image reference batch
# (the Inception fixture's photos), for N = 500 and N = 5000, each in a fresh results folder (no
# cache shared between them). Generation feeds the Inception pass batch by batch and FID keeps
# running statistics only, so peak RSS should not grow with N.
#
# Usage: scripts/streaming_memory.sh [GENBENCH_BINARY] [N...]   (defaults: target/release/genbench, 500 5000)
# Prints one line per N: samples, peak RSS (kB, from /usr/bin/time -v) and wall seconds.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
bin="${1:-$repo/target/release/genbench}"
shift || true
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(500 5000)
[ -x "$bin" ] || { echo "error: $bin is not an executable genbench (build it with cargo build --release)" >&2; exit 2; }
[ -x /usr/bin/time ] || { echo "error: /usr/bin/time (GNU time) is needed for the peak RSS" >&2; exit 2; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
var="$repo/tests/fixtures/models/var"
# The reference batch: the fixture's 24 photos (128 px) as an ADM-style npz, through genbench's
# own npz writer (the `stats`-free path: FID statistics come from its images).
python_npz() {
    "${GENBENCH_REF_PYTHON:-/root/.cache/genbench-ref/bin/python}" - "$repo/tests/fixtures/inception/photos128_images.npy" "$1" <<'PY'
import sys, numpy as np
np.savez(sys.argv[2], arr_0=np.load(sys.argv[1]))
PY
}
python_npz "$work/reference.npz"
for n in "${sizes[@]}"; do
    cat > "$work/stream_$n.toml" <<TOML
[suite]
name = "stream_$n"
description = "streaming memory benchmark, $n samples"

[[run]]
id = "tiny-var-$n"
kind = "generate"
family = "var"
model = "$var/config.json"
checkpoint = "$var/var.pth"
tokenizer = "$var/vae.pth"
resolution = 64
dtype = "f32"
samples = $n
batch = 50
seeds = [0]
reference = "$work/reference.npz"
metrics = ["fid"]
TOML
    start=$(date +%s.%N)
    /usr/bin/time -v "$bin" suite "$work/stream_$n.toml" --results "$work/results_$n" --device cpu \
        >"$work/out_$n.txt" 2>"$work/err_$n.txt" || { cat "$work/out_$n.txt" "$work/err_$n.txt" >&2; exit 1; }
    end=$(date +%s.%N)
    rss=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$work/err_$n.txt")
    fid=$(grep -o 'tiny-var-[0-9]*,var,[^,]*,completed,fid,[^,]*' "$work"/results_$n/stream_$n/*/metrics.csv | awk -F, '{print $6}')
    printf 'samples %s  peak_rss_kb %s  wall_s %.0f  fid %s\n' "$n" "$rss" "$(echo "$end - $start" | bc -l)" "$fid"
done
