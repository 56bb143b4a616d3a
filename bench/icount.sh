#!/usr/bin/env bash
# Instruction-count regression gate (issue 15). Runs each small fixed workload of
# metrics/examples/icount_workloads.rs (FID 256-d, the two-stage eigenvalue solver at 320, precision/recall on a block, the Inception
# network on a 107x107 image) and models/examples/icount_model_workloads.rs (a VAR step, LlamaGen
# decode steps, the MAR diffusion MLP, on seeded random weights) under valgrind's callgrind (one
# thread, only the `icount_region_*` function counted), prints ours against the committed baseline, and fails when
# any count grew by more than LIMIT_PCT percent. Counts, unlike wall times, do not move with the
# load of a shared machine.
#
#   bench/icount.sh             check against bench/icount-baseline.tsv (what CI runs)
#   bench/icount.sh --accept    measure and write the baseline (a deliberate change: commit it)
#
# What the counts cover: valgrind 3.19 does not execute AVX-512, and the runtime dispatch of
# gemm/faer/pulp reads the CPUID valgrind presents, so the AVX2+FMA kernels are the ones counted.
# A change to the AVX-512-only paths is not seen by this gate.
set -euo pipefail
cd "$(dirname "$0")/.."

LIMIT_PCT=${ICOUNT_LIMIT_PCT:-3}
BASELINE=bench/icount-baseline.tsv
accept=0
if [[ "${1:-}" == "--accept" ]]; then accept=1; shift; fi

command -v valgrind >/dev/null || { echo "icount: valgrind not found; install it (Debian: apt-get install valgrind)" >&2; exit 2; }
# Metric workloads (metrics/examples/icount_workloads.rs) and generator workloads on random
# weights (models/examples/icount_model_workloads.rs).
examples=(icount_workloads icount_model_workloads)
build_cmd="cargo build --workspace --release $(printf -- '--example %s ' "${examples[@]}")"
$build_cmd >/dev/null 2>&1 || { echo "icount: building the workload examples failed; run: $build_cmd" >&2; exit 2; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

declare -A now bin_of
workloads=()
for e in "${examples[@]}"; do
    for w in $("target/release/examples/$e" list); do
        workloads+=("$w")
        bin_of[$w]="target/release/examples/$e"
    done
done
for w in "${workloads[@]}"; do
    out="$tmp/$w.callgrind"
    if ! RAYON_NUM_THREADS=1 CANDLE_BARRIER_POOL_SPIN_LIMIT=0 valgrind --tool=callgrind --collect-atstart=no \
        --toggle-collect='*icount_region*' --callgrind-out-file="$out" "${bin_of[$w]}" "$w" >"$tmp/$w.log" 2>&1; then
        tail -20 "$tmp/$w.log" >&2
        echo "icount: workload $w failed under valgrind (log above)" >&2
        exit 2
    fi
    count=$(awk '/^(summary|totals):/ {print $2; exit}' "$out")
    [[ -n "$count" && "$count" -gt 0 ]] || { echo "icount: no instructions counted for $w (is icount_region_* inlined away?)" >&2; exit 2; }
    now[$w]=$count
done

if [[ $accept == 1 ]]; then
    { echo -e "# workload\tinstructions (callgrind Ir, one thread, AVX2 path); written by bench/icount.sh --accept"
      for w in "${workloads[@]}"; do echo -e "$w\t${now[$w]}"; done; } > "$BASELINE"
    echo "icount: baseline written to $BASELINE:"
    cat "$BASELINE"
    exit 0
fi

[[ -f $BASELINE ]] || { echo "icount: $BASELINE missing; create it with bench/icount.sh --accept" >&2; exit 1; }
declare -A base
while IFS=$'\t' read -r w c; do
    [[ -z "$w" || "$w" == \#* ]] && continue
    base[$w]=$c
done < "$BASELINE"

fail=0
printf "%-16s %16s %16s %9s  %s\n" workload baseline now change status
for w in "${workloads[@]}"; do
    b=${base[$w]:-}
    n=${now[$w]}
    if [[ -z "$b" ]]; then
        printf "%-16s %16s %16s %9s  %s\n" "$w" "-" "$n" "-" "NO BASELINE"
        fail=1
        continue
    fi
    pct=$(awk -v n="$n" -v b="$b" 'BEGIN { printf "%+.2f", 100 * (n - b) / b }')
    status=ok
    if awk -v n="$n" -v b="$b" -v l="$LIMIT_PCT" 'BEGIN { exit !(n > b * (1 + l / 100)) }'; then status="REGRESSION (> +$LIMIT_PCT%)"; fail=1; fi
    printf "%-16s %16s %16s %8s%%  %s\n" "$w" "$b" "$n" "$pct" "$status"
done
if [[ $fail == 1 ]]; then
    echo "icount: gate failed. If the change is deliberate, accept it: bench/icount.sh --accept (and commit $BASELINE)." >&2
    exit 1
fi
echo "icount: all counts within +$LIMIT_PCT% of the baseline"
