#!/usr/bin/env bash
# Compares two builds of Arbor by running them side by side (issue #6; see
# docs/BENCHMARKS.md, "Comparing two builds").
#
#   scripts/bench-ab.sh DIR_A DIR_B [WORKLOAD] [CLIENTS] [PAIRS]
#
# DIR_A and DIR_B each hold an `arbor` and an `arbor-bench` (copy them out of
# the target dir after each release build). For each of PAIRS pairs
# (default 4) the script starts a fresh 3-node cluster of each build, drives
# both AT THE SAME TIME, each with its own load generator for BENCH_DURATION
# seconds (default 10), and prints both throughputs, the servers' CPU per
# operation and the ratio A/B. The builds swap port sets and start order
# from one pair to the next. It ends with the geometric mean of the ratios.
#
# Why at the same time: on a shared VM, one build's throughput moves by
# 10-30% from one run to the next, more than most changes are worth. Run
# together, both builds see the same machine at the same moment, so the
# ratio is steady to a few percent. Each build gets about half the machine:
# the figures are for comparing, not for quoting.
#
#   WORKLOAD   put (default), txn, get, mixed, append: arbor-bench's
#   CLIENTS    64 (default) clients per build
#   BENCH_PORT 7701: the first build's nodes on 7701..7703, the second's on
#              +100
#   BENCH_FLAGS_A, BENCH_FLAGS_B
#              extra `arbor server` flags for A's or B's nodes, e.g.
#              "--config /tmp/a.toml": one build under two settings
#              (scripts/bench-ab.sh /tmp/a /tmp/a put 64 4)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if [ $# -lt 2 ]; then
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
fi
A="$(cd "$1" && pwd)" B="$(cd "$2" && pwd)"
WORKLOAD="${3:-put}" CLIENTS="${4:-64}" PAIRS="${5:-4}"
DURATION="${BENCH_DURATION:-10}" PORT="${BENCH_PORT:-7701}"
for dir in "$A" "$B"; do
    for bin in arbor arbor-bench; do
        [ -x "$dir/$bin" ] || { echo "$dir/$bin: not an executable (copy a release build there)" >&2; exit 2; }
    done
done

TMP="$(mktemp -d /tmp/arbor-ab.XXXXXX)"
RUNNING=()
cleanup() {
    for data in "${RUNNING[@]}"; do
        ARBOR_DATA="$data" "$ROOT/scripts/cluster.sh" stop >/dev/null 2>&1 || true
    done
    rm -rf "$TMP"
}
trap cleanup EXIT

# Starts a 3-node cluster of build $1 in $2 on ports $3..$3+2, with the
# extra server flags $4.
start() {
    ARBOR_BIN="$1/arbor" ARBOR_DATA="$2" ARBOR_BASE_PORT="$3" ARBOR_SERVER_FLAGS="$4" \
        "$ROOT/scripts/cluster.sh" start 3 >/dev/null
    RUNNING+=("$2")
}

# "ops/s cpu_us_per_op p50_us" of one arbor-bench JSON record.
figures() {
    local ops rate cpu p50
    ops="$(grep -o '"ops": [0-9]*' "$1" | head -1 | grep -o '[0-9]*$')"
    rate="$(grep -o '"ops_per_sec": [0-9.]*' "$1" | grep -o '[0-9.]*$')"
    cpu="$(grep -o '"cpu_s": [0-9.]*' "$1" | awk '{ s += $2 } END { print s + 0 }')"
    p50="$(grep -o '"p50_us": [0-9]*' "$1" | grep -o '[0-9]*$')"
    awk -v r="$rate" -v c="$cpu" -v n="$ops" -v p="$p50" 'BEGIN { printf "%.0f %.0f %s\n", r, (n > 0 ? c / n * 1e6 : 0), p }'
}

log "$PAIRS pairs of $WORKLOAD with $CLIENTS clients each, ${DURATION} s: A=$A ${BENCH_FLAGS_A:-} B=$B ${BENCH_FLAGS_B:-}"
printf '%-5s %12s %10s %9s %12s %10s %9s %8s\n' pair "A ops/s" "A µs/op" "A p50" "B ops/s" "B µs/op" "B p50" "A/B"
declare -A DIR=([A]="$A" [B]="$B") FLAGS=([A]="${BENCH_FLAGS_A:-}" [B]="${BENCH_FLAGS_B:-}") PORT_OF
ratios=()
for pair in $(seq 1 "$PAIRS"); do
    # Alternate which build gets the first ports and starts first.
    if [ $((pair % 2)) = 1 ]; then order=(A B); else order=(B A); fi
    PORT_OF[${order[0]}]=$PORT PORT_OF[${order[1]}]=$((PORT + 100))
    for side in "${order[@]}"; do
        start "${DIR[$side]}" "$TMP/$pair-$side" "${PORT_OF[$side]}" "${FLAGS[$side]}"
    done
    pids=()
    for side in A B; do
        dir="${DIR[$side]}" port="${PORT_OF[$side]}"
        "$dir/arbor-bench" "$WORKLOAD" --arbor "127.0.0.1:$port,127.0.0.1:$((port + 1)),127.0.0.1:$((port + 2))" \
            --clients "$CLIENTS" --duration "$DURATION" --warmup 2 --pid-dir "$TMP/$pair-$side" \
            --json-out "$TMP/$pair-$side.json" --quiet >"$TMP/$pair-$side.out" 2>&1 &
        pids+=($!)
    done
    failed=0
    for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
    for side in A B; do
        ARBOR_DATA="$TMP/$pair-$side" "$ROOT/scripts/cluster.sh" stop >/dev/null 2>&1 || true
    done
    RUNNING=()
    if [ "$failed" = 1 ]; then
        echo "pair $pair: a load generator failed:" >&2
        tail -n 5 "$TMP"/"$pair"-*.out >&2
        exit 1
    fi
    read -r a_ops a_cpu a_p50 <<<"$(figures "$TMP/$pair-A.json")"
    read -r b_ops b_cpu b_p50 <<<"$(figures "$TMP/$pair-B.json")"
    ratio="$(awk -v a="$a_ops" -v b="$b_ops" 'BEGIN { printf "%.3f", (b > 0 ? a / b : 0) }')"
    ratios+=("$ratio")
    printf '%-5s %12s %10s %9s %12s %10s %9s %8s\n' "$pair" "$a_ops" "$a_cpu" "$a_p50" "$b_ops" "$b_cpu" "$b_p50" "$ratio"
    rm -rf "$TMP/$pair-A" "$TMP/$pair-B"
done
printf '%s\n' "${ratios[@]}" | awk '
    { s += log($1); n++; if (n == 1 || $1 < lo) lo = $1; if (n == 1 || $1 > hi) hi = $1 }
    END { printf "throughput A/B: geometric mean %.3f over %d pairs (lowest %.3f, highest %.3f)\n", exp(s / n), n, lo, hi }'
