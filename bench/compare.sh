#!/usr/bin/env bash
# Side-by-side performance table (issue 15): genbench against the PyTorch / SciPy reference stack
# on this machine, in one run. For each row: ours, the reference, the ratio (> 1: genbench is
# faster) and the machine limit where one applies. Runs of ours and of the reference alternate
# (ROUNDS rounds) and medians are reported, so load from other processes hits both alike.
#
#   bench/compare.sh            full table (Inception batch 16 and 64; VAR-d16, LlamaGen-B,
#                               MAR-B (64 iterations), AutoNAT-L (T=8) at batch 1 and 8; 3 rounds;
#                               about 1.5 hours on 2 cores, MAR-B at batch 8 most of it)
#   bench/compare.sh --quick    fewer rows and repeats, about 12 minutes from a fresh clone on 2
#                               quiet cores, build included (Inception batch 16; generators at
#                               batch 1, one round; no warm-up run for MAR-B)
#   bench/compare.sh --dry-run  print the settings and rows, run nothing (with or without --quick)
#
# Environment: THREADS (default 2); MAR_ITERS (MAR-B's iterations, default 64);
# VENV (the reference venv, default ~/.cache/genbench-ref, made by
# ../shared/tools/reference-venv.sh: torch CPU, torch-fidelity, scipy; this script adds the
# packages ImprovedNAT imports); GENBENCH_REF_REPOS (the reference repositories; default
# ~/.cache/genbench-ref/repos, cloned there at the pinned commits below when absent). Generators
# run on random weights on both sides (their own initialisation).
# The reference scripts (bench/reference_families.py, bench/fid_sqrtm.py,
# ../shared/tools/torch_inception_bench.py) call the repositories' public functions; nothing of
# those repositories is copied here.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS

usage() { echo "usage: bench/compare.sh [--quick] [--dry-run]"; }
quick=0 dry=0
while [[ $# -gt 0 ]]; do
    case $1 in
        --quick) quick=1 ;;
        --dry-run) dry=1 ;;
        -h | --help) usage; exit 0 ;;
        *) { echo "compare: unknown argument '$1'"; usage; } >&2; exit 2 ;;
    esac
    shift
done
THREADS=${THREADS:-2}
REPOS=${GENBENCH_REF_REPOS:-$HOME/.cache/genbench-ref/repos}
GEN_FAMILIES="var llamagen mar autonat"
if [[ $quick == 1 ]]; then
    # One round: a warm-up and one observed run per generator and side, except MAR-B, whose
    # 64 iterations take about 2 minutes per run at batch 1 and amortise the first run's set-up
    # (its first run is the timed one).
    ROUNDS=1 INCEPTION_BATCHES="16" GEN_BATCHES="1" REPEATS=1 WARMUP=1 MAR_WARMUP=0 FID_REPEATS=1 PR_SIZE="2000 2000 2048"
else
    # Three rounds, each a warm-up and one observed run per generator and side: the medians are
    # of three runs that alternated with the other side's. MAR-B, as in the quick run, times its
    # first run: a run is 2-10 minutes, so the one-time set-up is under 1% of it, and a warm-up
    # run would double the hour MAR-B takes.
    ROUNDS=3 INCEPTION_BATCHES="16 64" GEN_BATCHES="1 8" REPEATS=1 WARMUP=1 MAR_WARMUP=0 FID_REPEATS=3 PR_SIZE="5000 10000 2048"
fi
MAR_ITERS=${MAR_ITERS:-64}
[[ $MAR_ITERS =~ ^[1-9][0-9]*$ ]] || { echo "compare: MAR_ITERS must be a positive integer, got '$MAR_ITERS'" >&2; exit 2; }
die() { echo "compare: $*" >&2; exit 2; }
declare -A MODEL=([var]=var-d16 [llamagen]=llamagen-b [mar]=mar-b [autonat]=autonat-l)
declare -A LABEL=([var]=var-d16 [llamagen]=llamagen-b [mar]="mar-b ($MAR_ITERS iterations)" [autonat]="autonat-l (T=8)")
# Ours: the recipes reference_families.py runs (VAR-d16's defaults are its FID recipe).
declare -A SETTINGS=([var]="" [llamagen]="--cfg 2.0" [mar]="--num-iter $MAR_ITERS --cfg 2.9" [autonat]="--strategy autonat-l-t8")
declare -A REF_SETTINGS=([var]="" [llamagen]="" [mar]="--num-iter $MAR_ITERS" [autonat]="")
declare -A GEN_WARMUP=([var]=$WARMUP [llamagen]=$WARMUP [mar]=$MAR_WARMUP [autonat]=$WARMUP)

if [[ $dry == 1 ]]; then
    echo "$([[ $quick == 1 ]] && echo quick || echo full) run: threads $THREADS, rounds $ROUNDS, repeats $REPEATS, warm-up runs $WARMUP (MAR-B $MAR_WARMUP), reference repositories $REPOS"
    for b in $INCEPTION_BATCHES; do echo "row: Inception forward, batch $b (img/s)"; done
    echo "row: FID 2048-d from statistics vs scipy sqrtm ($FID_REPEATS repeats)"
    echo "row: precision/recall $(echo "$PR_SIZE" | tr ' ' x) vs bare GEMM"
    for fam in $GEN_FAMILIES; do
        for b in $GEN_BATCHES; do
            for what in "per image" step decode; do echo "row: ${LABEL[$fam]} $what, batch $b"; done
            echo "  ours: genbench profile --model ${MODEL[$fam]} --random-init --batch $b --repeats $REPEATS --warmup ${GEN_WARMUP[$fam]}${SETTINGS[$fam]:+ ${SETTINGS[$fam]}}"
            echo "  reference: bench/reference_families.py --family $fam --batch $b --repeats $REPEATS --warmup ${GEN_WARMUP[$fam]}${REF_SETTINGS[$fam]:+ ${REF_SETTINGS[$fam]}}"
        done
    done
    for b in $GEN_BATCHES; do echo "row: llamagen-b decode step, batch $b, vs memcpy"; done
    exit 0
fi

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
# ImprovedNAT's modules import accelerate, einops, loguru, omegaconf and requests (its vendored taming
# package needs accelerate) and MAR's import timm (the version its environment.yaml pins); the
# venv script installs only the common stack.
if ! "$PY" -c 'import accelerate, einops, loguru, omegaconf, requests, timm' 2>/dev/null; then
    echo "compare: installing accelerate einops loguru omegaconf requests timm==0.9.12 into the reference venv" >&2
    "$PY" -m pip install -q accelerate einops loguru omegaconf requests timm==0.9.12 >&2 \
        || die "could not pip install accelerate einops loguru omegaconf requests timm==0.9.12 into $PY (no network?): install them there, then rerun"
fi

# --- ours --------------------------------------------------------------------------------------
echo "compare: cargo build --workspace --release (about 5 minutes from a fresh clone on 2 cores)" >&2
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
    rows+=("$(printf "%-52s %12s %12s %-8s %8s  %s" "$1" "$2" "$3" "$4" "$ratio" "$6")")
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

# Generators on random weights with the published recipes: per image, per generation step and
# the tokenizer decode. Ours through `genbench profile` (its summary.json: per-step medians, the
# decode pass, and the transformer steps' share of same-shape matmuls, the machine limit); the
# reference through bench/reference_families.py (the same step boundaries: a step is its
# forward, guidance, sampling and feed-back; MAR's step is one of its iterations, MAE encoder +
# decoder + diffusion head; the decode is the tokenizer's, for the whole batch).
# Ours, from summary.json: ms per image, transformer share of same-shape matmul (0 if none), the
# median over the generation's steps of each step's median time (MAR: transformer + diffusion
# head of the iteration), the number of steps, the decode's time for the whole batch.
OURS_SUMMARY='import json, sys
s = json.load(open(sys.argv[1]))["batches"][0]
per_step = {}
for st in s["steps"]:
    if st["kind"] != "decode":
        per_step[st["step"]] = per_step.get(st["step"], 0.0) + st["median_ms"]
ms = sorted(per_step.values())
n = len(ms)
med = ms[n // 2] if n % 2 else 0.5 * (ms[n // 2 - 1] + ms[n // 2])
print(s["ms_per_image"], s.get("transformer_fraction_of_matmul") or 0, med, n, s["decode_ms"])'
# The reference's last output line: s per image, median step ms, steps, decode ms.
REF_SUMMARY='import json, sys
r = json.loads(sys.stdin.read().strip().splitlines()[-1])
ms = sorted(r["step_ms"])
n = len(ms)
med = ms[n // 2] if n % 2 else 0.5 * (ms[n // 2 - 1] + ms[n // 2])
print(r["per_image_s"], med, n, r["decode_ms"])'
for fam in $GEN_FAMILIES; do
    for b in $GEN_BATCHES; do
        ours=() ref=() share=() ours_step=() ref_step=() ours_dec=() ref_dec=()
        read -ra extra <<< "${SETTINGS[$fam]}"
        read -ra ref_extra <<< "${REF_SETTINGS[$fam]}"
        for r in $(seq "$ROUNDS"); do
            $GB profile --model "${MODEL[$fam]}" --random-init --threads "$THREADS" --batch "$b" --repeats "$REPEATS" --warmup "${GEN_WARMUP[$fam]}" \
                "${extra[@]}" --out "$tmp/$fam-$b-$r" >"$tmp/$fam-$b-$r.log" 2>&1 \
                || die "genbench profile ${MODEL[$fam]} failed: $(tail -3 "$tmp/$fam-$b-$r.log")"
            read -r ms frac step n_ours dec < <("$PY" -c "$OURS_SUMMARY" "$tmp/$fam-$b-$r/summary.json")
            ours+=("$(awk -v m="$ms" 'BEGIN { printf "%.3f", m / 1000 }')")
            share+=("$frac") ours_step+=("$step") ours_dec+=("$dec")
            "$PY" bench/reference_families.py --family "$fam" --batch "$b" --repeats "$REPEATS" --warmup "${GEN_WARMUP[$fam]}" --threads "$THREADS" \
                "${ref_extra[@]}" >"$tmp/ref-$fam-$b-$r.json" 2>"$tmp/ref-$fam-$b-$r.log" \
                || die "bench/reference_families.py --family $fam failed: $(tail -3 "$tmp/ref-$fam-$b-$r.log")"
            read -r s step n_ref dec < <("$PY" -c "$REF_SUMMARY" <"$tmp/ref-$fam-$b-$r.json")
            [[ $n_ours == "$n_ref" ]] || die "${MODEL[$fam]}: ours ran $n_ours steps, the reference $n_ref: the recipes differ"
            ref+=("$(awk -v m="$s" 'BEGIN { printf "%.3f", m }')") ref_step+=("$step") ref_dec+=("$dec")
        done
        f=$(echo "${share[@]}" | median)
        limit=$(awk -v f="$f" 'BEGIN { if (f > 0) printf "transformer steps at %.0f%% of same-shape matmul", 100 * f }')
        row "${LABEL[$fam]} per image, batch $b" "$(echo "${ours[@]}" | median)" "$(echo "${ref[@]}" | median)" s/img 0 "$limit"
        row "${LABEL[$fam]} step, batch $b (median of $n_ours)" "$(printf %.1f "$(echo "${ours_step[@]}" | median)")" \
            "$(printf %.1f "$(echo "${ref_step[@]}" | median)")" ms 0 ""
        row "${LABEL[$fam]} decode, batch $b" "$(printf %.1f "$(echo "${ours_dec[@]}" | median)")" \
            "$(printf %.1f "$(echo "${ref_dec[@]}" | median)")" ms 0 ""
    done
done

# LlamaGen-B decode steps against memcpy bandwidth measured in the same process (ours only: the
# row's limit is the machine's).
for b in $GEN_BATCHES; do
    line=$(RAYON_NUM_THREADS=$THREADS $EX/raster_ar_speed --models llamagen-b --batch "$b" --threads "$THREADS" --repeats 1 | grep "llamagen-b batch")
    pct=$(echo "$line" | grep -o '= [0-9]*% of memcpy' | grep -o '[0-9]*')
    ms=$(echo "$line" | grep -o 'decode step median [0-9.]*' | awk '{print $4}')
    rows+=("$(printf "%-52s %12s %12s %-8s %8s  %s" "llamagen-b decode step, batch $b" "$ms" "-" ms "-" "${pct}% of memcpy bandwidth (goal >= 85%)")")
done

echo
echo "genbench vs reference, $(nproc) cores, $THREADS threads, $([[ $quick == 1 ]] && echo quick || echo full) run, medians of $ROUNDS alternating round(s)"
printf "%-52s %12s %12s %-8s %8s  %s\n" row ours reference unit ratio "machine limit"
printf "%s\n" "${rows[@]}"
elapsed=$((SECONDS - started))
echo "whole run (build, reference set-up and measurements): $((elapsed / 60)) min $((elapsed % 60)) s; load at the end $(cut -d' ' -f1-3 /proc/loadavg)"
