#!/usr/bin/env bash
# Benchmarks Arbor side by side with etcd on this machine (issue #6; see
# docs/BENCHMARKS.md). In one invocation it
#   1. installs etcd (Debian's etcd-server, etcd-client) and protoc when missing,
#      and builds arbor and arbor-bench (with the etcd-client feature, release
#      profile unless BENCH_PROFILE=dev);
#   2. measures the storage reference (synced RocksDB write batches) and the
#      apply reference (one replica's state machine applying put and txn
#      epochs in-process, apply.txt and apply-*.json);
#   3. for each workload starts a fresh 3-member etcd cluster and a fresh
#      3-node Arbor cluster on loopback (data in a temp dir, both fsyncing:
#      etcd's default, Arbor's only mode), runs every client count against
#      etcd and Arbor alternately, then stops both and keeps their logs;
#   4. writes runs/*.json, logs/, results.json, results.md and plot.svg
#      under bench-results/<UTC timestamp>/ and prints the table;
#   5. stops exactly the processes it started (by PID) and removes its temp
#      dir, also on Ctrl-C or failure.
#
# Settings (environment):
#   BENCH_WORKLOADS    "put get get-follower txn mixed append"
#   BENCH_CLIENTS      "1 16 64 256"
#   BENCH_ROUNDS       1     runs of each point per system (alternating which
#                      goes first); the report takes each system's median
#                      run and lists every round's ratio
#   BENCH_DURATION     10    measured seconds per point
#   BENCH_WARMUP       2     seconds of load before each measurement
#   BENCH_CONNECTIONS  8     connections per run (at most one per client)
#   BENCH_KEY_SPACE    10000
#   BENCH_VALUE_SIZE   256   (keys are 16 bytes)
#   BENCH_READ_RATIO   0.8   the mixed workload's share of gets
#   BENCH_MAX_STALENESS_MS 1000  get-follower: how stale Arbor's replicas
#                      may answer (etcd's serializable reads have no bound)
#   BENCH_STORAGE      1     0 skips the storage and apply references
#   BENCH_PROFILE      release  or dev (the tests' build: opt-level 1 for
#                      Arbor's code, debug assertions in every crate)
#   BENCH_ARBOR_FLAGS  ""    extra `arbor server` flags, e.g. "--config gc.toml"
#                      with a short `reads.version_retention_ms`, so that
#                      version GC runs during the points
#   BENCH_ETCD_FLAGS   ""    extra etcd flags, e.g. "--auto-compaction-mode
#                      periodic --auto-compaction-retention 20s" (etcd's
#                      counterpart of a short retention)
#   BENCH_ARBOR_PORT   7201  Arbor nodes on 7201..7203
#   BENCH_ETCD_PORT    23790 etcd clients on 23790..23792, peers on +100
#   BENCH_OUT          bench-results/<timestamp>
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

WORKLOADS="${BENCH_WORKLOADS:-put get get-follower txn mixed append}"
CLIENTS="${BENCH_CLIENTS:-1 16 64 256}"
ROUNDS="${BENCH_ROUNDS:-1}"
case "$ROUNDS" in
    [1-9]) ;;
    *) echo "BENCH_ROUNDS must be 1 to 9, not '$ROUNDS'" >&2; exit 1 ;;
esac
DURATION="${BENCH_DURATION:-10}"
WARMUP="${BENCH_WARMUP:-2}"
CONNECTIONS="${BENCH_CONNECTIONS:-8}"
KEY_SPACE="${BENCH_KEY_SPACE:-10000}"
VALUE_SIZE="${BENCH_VALUE_SIZE:-256}"
READ_RATIO="${BENCH_READ_RATIO:-0.8}"
MAX_STALENESS_MS="${BENCH_MAX_STALENESS_MS:-1000}"
STORAGE="${BENCH_STORAGE:-1}"
ARBOR_FLAGS="${BENCH_ARBOR_FLAGS:-}"
ETCD_FLAGS="${BENCH_ETCD_FLAGS:-}"
PROFILE="${BENCH_PROFILE:-release}"
case "$PROFILE" in
    release) PROFILE_DIR=release; BUILD="release profile (opt-level 3, no debug assertions)" ;;
    dev) PROFILE_DIR=debug; BUILD="dev profile (opt-level 1 for arbor, 3 for dependencies, debug assertions)" ;;
    *) echo "BENCH_PROFILE must be release or dev, not '$PROFILE'" >&2; exit 1 ;;
esac
ARBOR_PORT="${BENCH_ARBOR_PORT:-7201}"
ETCD_PORT="${BENCH_ETCD_PORT:-23790}"
OUT="${BENCH_OUT:-$ROOT/bench-results/$(date -u +%Y%m%d-%H%M%S)}"

TMP=""
ETCD_PIDS=()
ARBOR_PIDS=()
ARBOR_DIR=""
ETCD_DIR=""
FAILED=0
RESTARTS=0
ETCD_EPS="127.0.0.1:$ETCD_PORT,127.0.0.1:$((ETCD_PORT + 1)),127.0.0.1:$((ETCD_PORT + 2))"
ARBOR_EPS="127.0.0.1:$ARBOR_PORT,127.0.0.1:$((ARBOR_PORT + 1)),127.0.0.1:$((ARBOR_PORT + 2))"

# Stops one process we started: SIGTERM, up to 10 s, then SIGKILL.
stop_pid() {
    local pid="$1"
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    echo "process $pid ignored SIGTERM for 10 s; killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
}

stop_etcd() {
    for pid in "${ETCD_PIDS[@]}"; do stop_pid "$pid"; done
    ETCD_PIDS=()
}

stop_arbor() {
    # The PIDs are in the pid files cluster.sh wrote (also when it failed
    # half-way through starting the nodes).
    if [ -n "$ARBOR_DIR" ] && [ ${#ARBOR_PIDS[@]} -eq 0 ]; then
        for f in "$ARBOR_DIR"/n*/arbor.pid; do
            if [ -f "$f" ]; then ARBOR_PIDS+=("$(cat "$f")"); fi
        done
    fi
    for pid in "${ARBOR_PIDS[@]}"; do stop_pid "$pid"; done
    ARBOR_PIDS=()
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [ ${#ETCD_PIDS[@]} -gt 0 ] || [ ${#ARBOR_PIDS[@]} -gt 0 ] || [ -n "$ARBOR_DIR" ]; then
        log "stopping the clusters"
    fi
    stop_etcd
    stop_arbor
    if [ -n "$TMP" ] && [ -d "$TMP" ]; then rm -rf "$TMP"; fi
    exit "$status"
}
trap cleanup EXIT
trap 'echo "interrupted" >&2; exit 130' INT TERM

# Installs Debian packages when a command is missing.
ensure_cmd() {
    local cmd="$1"; shift
    command -v "$cmd" >/dev/null 2>&1 && return 0
    log "installing $* (for $cmd)"
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

port_free() {
    ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

json_str() {
    local s="${1//\\/\\\\}"
    s="${s//\"/\\\"}"
    printf '"%s"' "$s"
}

# A fresh 3-member etcd cluster in $TMP/$1/etcd.
start_etcd() {
    ETCD_DIR="$TMP/$1/etcd"
    mkdir -p "$ETCD_DIR"
    local initial="" i client peer
    for i in 1 2 3; do initial+="${initial:+,}e$i=http://127.0.0.1:$((ETCD_PORT + 99 + i))"; done
    for i in 1 2 3; do
        client="http://127.0.0.1:$((ETCD_PORT + i - 1))" peer="http://127.0.0.1:$((ETCD_PORT + 99 + i))"
        # shellcheck disable=SC2086 # BENCH_ETCD_FLAGS is a list of flags
        etcd --name "e$i" --data-dir "$ETCD_DIR/e$i" \
            --listen-client-urls "$client" --advertise-client-urls "$client" \
            --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
            --initial-cluster "$initial" --initial-cluster-state new --initial-cluster-token "arbor-bench-$$-$1" \
            --logger zap --log-outputs stderr --log-level warn $ETCD_FLAGS >"$ETCD_DIR/e$i.log" 2>&1 &
        ETCD_PIDS+=($!)
    done
    for _ in $(seq 1 150); do
        if ETCDCTL_API=3 etcdctl --endpoints "$ETCD_EPS" --command-timeout 2s endpoint health >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.2
    done
    echo "etcd did not become healthy within 30 s:" >&2
    tail -n 20 "$ETCD_DIR"/e*.log >&2
    exit 1
}

# A fresh 3-node Arbor cluster in $TMP/$1/arbor, through cluster.sh.
start_arbor() {
    if [ -n "$ARBOR_DIR" ] && [ -d "$ARBOR_DIR" ]; then rm -rf "$ARBOR_DIR"; fi
    ARBOR_DIR="$TMP/$1/arbor"
    ARBOR_BIN="$TMP/build/arbor" ARBOR_DATA="$ARBOR_DIR" ARBOR_BASE_PORT="$ARBOR_PORT" \
        ARBOR_SERVER_FLAGS="$ARBOR_FLAGS" "$ROOT/scripts/cluster.sh" start 3 >/dev/null
    for f in "$ARBOR_DIR"/n*/arbor.pid; do ARBOR_PIDS+=("$(cat "$f")"); done
}

# Keeps the servers' logs in $OUT/logs, named after $1.
keep_etcd_logs() {
    local f
    mkdir -p "$OUT/logs"
    for f in "$ETCD_DIR"/e*.log; do
        if [ -f "$f" ]; then cp "$f" "$OUT/logs/$1-etcd-$(basename "$f")"; fi
    done
}
keep_arbor_logs() {
    local f
    mkdir -p "$OUT/logs"
    for f in "$ARBOR_DIR"/n*/arbor.log; do
        if [ -f "$f" ]; then cp "$f" "$OUT/logs/$1-arbor-$(basename "$(dirname "$f")").log"; fi
    done
}

# Runs one point against one system.
run_point() {
    local system="$1" workload="$2" clients="$3" round="$4" eps pids extra=() suffix=""
    [ "$ROUNDS" = 1 ] || suffix="-r$round"
    if [ "$system" = etcd ]; then
        eps="$ETCD_EPS"; pids="$(IFS=,; echo "${ETCD_PIDS[*]}")"
    else
        eps="$ARBOR_EPS"; pids="$(IFS=,; echo "${ARBOR_PIDS[*]}")"
    fi
    # A reading workload needs the key space written, once per cluster.
    if [ "$workload" = get ] || [ "$workload" = get-follower ] || [ "$workload" = mixed ]; then
        if [ "$(eval echo "\${PRELOADED_$system:-0}")" = 1 ]; then extra+=(--no-preload); fi
        eval "PRELOADED_$system=1"
    fi
    local conns=$((clients < CONNECTIONS ? clients : CONNECTIONS))
    # Other load on the machine skews everything: keep a trace of it.
    echo "$workload $clients $system $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/loadavg.txt"
    "$BENCH_BIN" "$workload" "--$system" "$eps" --clients "$clients" --connections "$conns" \
        --duration "$DURATION" --warmup "$WARMUP" --key-space "$KEY_SPACE" --value-size "$VALUE_SIZE" \
        --read-ratio "$READ_RATIO" --max-staleness-ms "$MAX_STALENESS_MS" --pids "$pids" "${extra[@]}" \
        --json-out "$OUT/runs/$workload-c$(printf %03d "$clients")-$system$suffix.json" \
        || { echo "FAILED: $system $workload $clients clients" >&2; FAILED=$((FAILED + 1)); }
    if [ "$system" = arbor ] && grep -qh "stopping the replica" "$ARBOR_DIR"/n*/arbor.log 2>/dev/null; then
        # A replica that stopped does not come back: record why, keep the
        # logs, and give the next point a fresh Arbor cluster.
        local why
        why="$(grep -h "stopping the replica" "$ARBOR_DIR"/n*/arbor.log | sed 's/\x1b\[[0-9;]*m//g' | sed -n 1p)" || true
        echo "WARNING: an Arbor replica stopped during $workload with $clients clients: $why" >&2
        echo "- $workload, $clients clients: an Arbor replica stopped (\`${why##*ERROR }\`); the next point got a fresh Arbor cluster." >>"$OUT/notes.md"
        stop_arbor
        keep_arbor_logs "$workload-c$clients-stopped"
        RESTARTS=$((RESTARTS + 1))
        start_arbor "$workload-$RESTARTS"
        PRELOADED_arbor=0
    fi
}

ensure_deps
ensure_cmd etcd etcd-server
ensure_cmd etcdctl etcd-client
ensure_cmd protoc protobuf-compiler
export PROTOC="${PROTOC:-$(command -v protoc)}"

log "building arbor and arbor-bench ($PROFILE profile, feature etcd-client; a first release build compiles RocksDB again, ~12 min on 2 cores)"
(cd "$ROOT" && cargo build --locked --profile "$PROFILE" --features etcd-client --bin arbor --bin arbor-bench)

for p in $((ARBOR_PORT)) $((ARBOR_PORT + 1)) $((ARBOR_PORT + 2)) \
         $((ETCD_PORT)) $((ETCD_PORT + 1)) $((ETCD_PORT + 2)) \
         $((ETCD_PORT + 100)) $((ETCD_PORT + 101)) $((ETCD_PORT + 102)); do
    port_free "$p" || { echo "port $p is in use (set BENCH_ARBOR_PORT / BENCH_ETCD_PORT)" >&2; exit 1; }
done

TMP="$(mktemp -d "${TMPDIR:-/tmp}/arbor-bench.XXXXXX")"
mkdir -p "$OUT/runs"
log "results in $OUT (temp data in $TMP)"
# Private copies of the binaries just built: the shared target dir may be
# rebuilt by someone else (without the etcd feature, or with other server
# code) while this runs; cluster.sh is pointed at the copy (ARBOR_BIN).
mkdir -p "$TMP/build"
cp "$CARGO_TARGET_DIR/$PROFILE_DIR/arbor" "$CARGO_TARGET_DIR/$PROFILE_DIR/arbor-bench" "$TMP/build/"
BENCH_BIN="$TMP/build/arbor-bench"

commit="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null)" ]; then
    commit="$commit + uncommitted changes to $(git -C "$ROOT" status --porcelain --untracked-files=no | awk '{print $2}' | paste -sd' ')"
fi
{
    echo "{"
    echo "  \"date\": $(json_str "$(date -u +%Y-%m-%dT%H:%M:%SZ)"),"
    echo "  \"cpu\": $(json_str "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"),"
    echo "  \"cores\": $(json_str "$(nproc)"),"
    echo "  \"memory\": $(json_str "$(free -h | awk '/^Mem:/ {print $2}')"),"
    echo "  \"kernel\": $(json_str "$(uname -r)"),"
    echo "  \"load average at start\": $(json_str "$(cut -d' ' -f1-3 /proc/loadavg)"),"
    echo "  \"commit\": $(json_str "$commit"),"
    echo "  \"etcd\": $(json_str "$(etcd --version 2>/dev/null | head -1)"),"
    echo "  \"disk\": $(json_str "$(df -h "$TMP" | awk 'NR==2 {print $1 " (" $2 ")"}')"),"
    echo "  \"build\": $(json_str "$BUILD"),"
    echo "  \"settings\": $(json_str "workloads: $WORKLOADS; clients: $CLIENTS; rounds: $ROUNDS; ${DURATION} s + ${WARMUP} s warm-up per point; up to $CONNECTIONS connections; key space $KEY_SPACE; values $VALUE_SIZE B; mixed read ratio $READ_RATIO; get-follower staleness bound $MAX_STALENESS_MS ms; fresh clusters per workload${ARBOR_FLAGS:+; arbor server flags: $ARBOR_FLAGS}${ETCD_FLAGS:+; etcd flags: $ETCD_FLAGS}")"
    echo "}"
} >"$OUT/machine.json"

if [ "$STORAGE" != 0 ]; then
    for c in $CLIENTS; do
        log "storage reference: $c synced writers"
        "$BENCH_BIN" storage --writers "$c" --duration "$DURATION" --warmup 1 --key-space "$KEY_SPACE" \
            --value-size "$VALUE_SIZE" --dir "$TMP" --json-out "$OUT/runs/storage-c$(printf %03d "$c")-rocksdb.json" \
            || FAILED=$((FAILED + 1))
    done
    for workload in put txn; do
        log "apply reference: $workload"
        "$BENCH_BIN" apply --workload "$workload" --key-space "$KEY_SPACE" --value-size "$VALUE_SIZE" --dir "$TMP" \
            --json-out "$OUT/apply-$workload.json" | tee -a "$OUT/apply.txt" || FAILED=$((FAILED + 1))
    done
fi

point=0
for workload in $WORKLOADS; do
    log "$workload: fresh clusters (etcd on 127.0.0.1:$ETCD_PORT.., Arbor on 127.0.0.1:$ARBOR_PORT..)"
    start_etcd "$workload"
    start_arbor "$workload"
    PRELOADED_etcd=0 PRELOADED_arbor=0
    for clients in $CLIENTS; do
        for round in $(seq 1 "$ROUNDS"); do
            log "$workload, $clients clients$([ "$ROUNDS" = 1 ] || echo ", round $round of $ROUNDS")"
            # Alternate which system goes first, so that neither always runs
            # on a warmer (or more fragmented) machine.
            if [ $((point % 2)) = 0 ]; then order="etcd arbor"; else order="arbor etcd"; fi
            for system in $order; do run_point "$system" "$workload" "$clients" "$round"; done
            point=$((point + 1))
        done
    done
    stop_etcd
    stop_arbor
    keep_etcd_logs "$workload"
    keep_arbor_logs "$workload"
    rm -rf "${TMP:?}/$workload" "$ARBOR_DIR" "$ETCD_DIR"
    ARBOR_DIR="" ETCD_DIR=""
done

log "report"
"$BENCH_BIN" report "$OUT"
if [ "$FAILED" -gt 0 ]; then
    echo "$FAILED runs failed (see above)" >&2
    exit 1
fi
log "done: $OUT/results.md, $OUT/plot.svg"
