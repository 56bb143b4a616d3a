#!/usr/bin/env bash
# Side-by-side performance table (issue 15): genbench against the PyTorch / SciPy reference stack
# on this machine, in one run. For each row: ours, the reference, the ratio (> 1: genbench is
# faster) and the machine limit where one applies. Runs of ours and of the reference alternate
# (ROUNDS rounds) and medians are reported, so load from other processes hits both alike.
#
#   bench/compare.sh            full table (Inception batch 16 and 64, generators at batch 1 and 8)
#   bench/compare.sh --quick    fewer rows and repeats (Inception batch 16, generators at batch 1)
#
# Environment: THREADS (default 2); VENV (the reference venv, default ~/.cache/genbench-ref, made
# by ../shared/tools/reference-venv.sh: torch CPU, torch-fidelity, scipy); GENBENCH_REF_REPOS (the
# reference repositories; default ~/.cache/genbench-ref/repos, cloned there at the pinned commits
# below when absent). Generators run on random weights on both sides (their own initialisation).
# The reference scripts (bench/reference_families.py, bench/fid_sqrtm.py,
# ../shared/tools/torch_inception_bench.py) call the repositories' public functions; nothing of
# those repositories is copied here.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
if [[ "${1:-}" == "--quick" ]]; then quick=1; shift; fi
[[ $# -eq 0 ]] || { echo "usage: bench/compare.sh [--quick]" >&2; exit 2; }
THREADS=${THREADS:-2}
REPOS=${GENBENCH_REF_REPOS:-$HOME/.cache/genbench-ref/repos}
if [[ $quick == 1 ]]; then
    ROUNDS=1 INCEPTION_BATCHES="16" GEN_BATCHES="1" REPEATS=1 FID_REPEATS=1 PR_SIZE="2000 2000 2048"
else
    ROUNDS=3 INCEPTION_BATCHES="16 64" GEN_BATCHES="1 8" REPEATS=2 FID_REPEATS=3 PR_SIZE="5000 10000 2048"
fi
die() { echo "compare: $*" >&2; exit 2; }

# --- the reference stack -----------------------------------------------------------------------
VENV_SCRIPT=../shared/tools/reference-venv.sh
[[ -x $VENV_SCRIPT ]] || die "$VENV_SCRIPT not found: run from a clone with ../shared beside it"
PY=$(VENV=${VENV:-$HOME/.cache/genbench-ref} "$VENV_SCRIPT") \
    || die "could not build the reference venv with pip (no network?): rerun with network access, or set VENV to a venv holding torch, scipy, torch-fidelity"
# name, clone URL, pinned commit
PINNED="VAR https://github.com/FoundationVision/VAR 78b9539
LlamaGen https://github.com/FoundationVision/LlamaGen ce98ec4
mar https://github.com/LTH14/mar fe470ac
ImprovedNAT https://github.com/LeapLabTHU/ImprovedNAT 2ca9994"
mkdir -p "$REPOS"
while read -r name url commit; do
    dir=$REPOS/$name
    if [[ -e $dir/.git ]] && [[ $(git -C "$dir" rev-parse HEAD) == "$commit"* ]]; then continue; fi
    if [[ -e $dir ]]; then die "$dir exists but is not $name at $commit; move it away or set GENBENCH_REF_REPOS"; fi
    echo "compare: fetching $name at $commit into $dir" >&2
    if ! git clone -q "$url" "$dir" 2>/dev/null || ! git -C "$dir" checkout -q "$commit" 2>/dev/null; then
        rm -rf "$dir"
        die "cannot fetch $url at $commit (no network?): rerun with network access, or set GENBENCH_REF_REPOS to a folder holding $name checked out at $commit"
    fi
done <<< "$PINNED"
export GENBENCH_REF_REPOS=$REPOS

# --- ours --------------------------------------------------------------------------------------
cargo build --workspace --release --bin genbench --example fid_timing --example pr_timing --example raster_ar_speed >/dev/null 2>&1 \
    || die "building genbench failed; run: cargo build --workspace --release --bin genbench --example fid_timing --example pr_timing --example raster_ar_speed"
GB=target/release/genbench
EX=target/release/examples
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {if (NR == 0) print "nan"; else if (NR % 2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
rows=()
# row NAME OURS REF UNIT HIGHER_IS_BETTER LIMIT: ratio > 1 when ours is better.
row() {
    local ratio
    ratio=$(awk -v o="$2" -v r="$3" -v h="$5" 'BEGIN { if (o + 0 == 0 || r + 0 == 0) print "-"; else printf "%.2fx", (h == 1 ? o / r : r / o) }')
    rows+=("$(printf "%-44s %12s %12s %-8s %8s  %s" "$1" "$2" "$3" "$4" "$ratio" "$6")")
    echo "compare: $1: ours $2, reference $3 $4 ($ratio)" >&2
}
field() { grep -o "$1=[0-9.]*" | head -1 | cut -d= -f2; }

echo "compare: $(date -u +%FT%TZ), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), threads $THREADS, rounds $ROUNDS" >&2

# Inception img/s (pool_3, 299x299, same weights: the FID Inception).
for b in $INCEPTION_BATCHES; do
    ours=() ref=()
    for _ in $(seq "$ROUNDS"); do
        ours+=("$($GB bench --threads "$THREADS" inception --batch "$b" --iters 3 --image-size 0 2>/dev/null | grep genbench-inception | field img_per_s)")
        ref+=("$("$PY" ../shared/tools/torch_inception_bench.py --batch "$b" --threads "$THREADS" --seconds 15 | field img_per_s)")
    done
    row "Inception forward, batch $b (img/s)" "$(echo "${ours[@]}" | median)" "$(echo "${ref[@]}" | median)" img/s 1 ""
done

# FID from two 2048-d statistics: ours (frechet_distance) against scipy.linalg.sqrtm.
ours=() ref=()
for _ in $(seq "$ROUNDS"); do
    ours+=("$(RAYON_NUM_THREADS=$THREADS $EX/fid_timing 2048 "$FID_REPEATS" | grep -o 'frechet_distance median [0-9.]*' | awk '{print $3}')")
    ref+=("$(OMP_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS "$PY" bench/fid_sqrtm.py 2048 "$FID_REPEATS" | grep -o 'median [0-9.]*' | awk '{print $2}')")
done
row "FID 2048-d from statistics vs scipy sqrtm" "$(echo "${ours[@]}" | median)" "$(echo "${ref[@]}" | median)" s 0 "target <= 0.3 s"

# Precision/recall against the bare GEMM it needs (the machine limit of the row).
out=$(RAYON_NUM_THREADS=$THREADS $EX/pr_timing $PR_SIZE)
gemm=$(echo "$out" | grep -o 'bare GEMM: *[0-9.]*' | awk '{print $3}')
pr=$(echo "$out" | grep 'P/R' | head -1 | grep -o ': *[0-9.]* s' | grep -o '[0-9.]*')
row "Precision/recall $(echo "$PR_SIZE" | tr ' ' x) vs bare GEMM" "$pr" "$gemm" s 0 "bare GEMM = limit"

# Generators, per image, random weights, the published recipes; ours through `genbench profile`
# (which also gives the transformer steps' share of same-shape matmuls, the machine limit).
declare -A MODEL=([var]=var-d16 [llamagen]=llamagen-b [mar]=mar-b)
for fam in var llamagen mar; do
    for b in $GEN_BATCHES; do
        ours=() ref=() share=()
        extra=()
        [[ $fam == mar ]] && extra=(--num-iter 64 --cfg 2.9)
        [[ $fam == llamagen ]] && extra=(--cfg 2.0)
        for r in $(seq "$ROUNDS"); do
            $GB profile --model "${MODEL[$fam]}" --random-init --threads "$THREADS" --batch "$b" --repeats "$REPEATS" --warmup 1 \
                "${extra[@]}" --out "$tmp/$fam-$b-$r" >/dev/null 2>&1 || die "genbench profile ${MODEL[$fam]} failed"
            read -r ms frac < <("$PY" -c 'import json,sys; s=json.load(open(sys.argv[1]))["batches"][0]; print(s["ms_per_image"], s.get("transformer_fraction_of_matmul") or 0)' "$tmp/$fam-$b-$r/summary.json")
            ours+=("$(awk -v m="$ms" 'BEGIN { printf "%.3f", m / 1000 }')")
            share+=("$frac")
            ref+=("$("$PY" bench/reference_families.py --family "$fam" --batch "$b" --repeats "$REPEATS" --warmup 1 --threads "$THREADS" \
                | "$PY" -c 'import json,sys; print("%.3f" % json.loads(sys.stdin.read().strip().splitlines()[-1])["per_image_s"])')")
        done
        f=$(echo "${share[@]}" | median)
        limit=$(awk -v f="$f" 'BEGIN { if (f > 0) printf "transformer steps at %.0f%% of same-shape matmul", 100 * f }')
        row "${MODEL[$fam]} per image, batch $b" "$(echo "${ours[@]}" | median)" "$(echo "${ref[@]}" | median)" s/img 0 "$limit"
    done
done

# LlamaGen-B decode steps against memcpy bandwidth measured in the same process (ours only: the
# row's limit is the machine's).
for b in $GEN_BATCHES; do
    line=$(RAYON_NUM_THREADS=$THREADS $EX/raster_ar_speed --models llamagen-b --batch "$b" --threads "$THREADS" --repeats 1 | grep "llamagen-b batch")
    pct=$(echo "$line" | grep -o '= [0-9]*% of memcpy' | grep -o '[0-9]*')
    ms=$(echo "$line" | grep -o 'decode step median [0-9.]*' | awk '{print $4}')
    rows+=("$(printf "%-44s %12s %12s %-8s %8s  %s" "llamagen-b decode step, batch $b" "$ms" "-" ms "-" "${pct}% of memcpy bandwidth (goal >= 85%)")")
done

echo
echo "genbench vs reference, $(nproc) cores, $THREADS threads, $([[ $quick == 1 ]] && echo quick || echo full) run, medians of $ROUNDS alternating round(s)"
printf "%-44s %12s %12s %-8s %8s  %s\n" row ours reference unit ratio "machine limit"
printf "%s\n" "${rows[@]}"
echo "not measured yet: AutoNAT-L (T=8); per-step rows (genbench profile prints them for ours)"
