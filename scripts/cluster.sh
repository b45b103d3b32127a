#!/usr/bin/env bash
# Runs a local Arbor cluster on loopback: nodes 1..N on ports 7001..700N,
# data under ./data/nI (override with ARBOR_DATA), logs in ./data/nI/arbor.log.
#
#   scripts/cluster.sh start [N]   start N nodes (default 3), wait for leaders
#   scripts/cluster.sh stop        stop every node started here (SIGTERM)
#   scripts/cluster.sh status      show groups, leaders, applied index, epoch
#
# Extra server flags can be passed in ARBOR_SERVER_FLAGS
# (e.g. ARBOR_SERVER_FLAGS="--initial-ranges /m,/t").
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
DATA="${ARBOR_DATA:-$ROOT/data}"
BASE_PORT="${ARBOR_BASE_PORT:-7001}"

endpoints() {
    local n="$1" eps=()
    for i in $(seq 1 "$n"); do eps+=("127.0.0.1:$((BASE_PORT + i - 1))"); done
    (IFS=,; echo "${eps[*]}")
}

running_nodes() {
    for pidfile in "$DATA"/n*/arbor.pid; do
        [ -f "$pidfile" ] || continue
        local pid; pid=$(cat "$pidfile")
        if kill -0 "$pid" 2>/dev/null; then echo "$pidfile"; fi
    done
}

start() {
    local n="${1:-3}"
    [ -x "$ARBOR_BIN" ] || build_arbor
    if [ -n "$(running_nodes)" ]; then
        echo "a cluster is already running from $DATA (scripts/cluster.sh stop first)" >&2
        exit 1
    fi
    local peers=()
    for i in $(seq 1 "$n"); do peers+=("$i=127.0.0.1:$((BASE_PORT + i - 1))"); done
    local peer_list; peer_list=$(IFS=,; echo "${peers[*]}")
    for i in $(seq 1 "$n"); do
        local dir="$DATA/n$i"
        mkdir -p "$dir"
        # shellcheck disable=SC2086
        nohup "$ARBOR_BIN" server --node-id "$i" --listen "127.0.0.1:$((BASE_PORT + i - 1))" \
            --data-dir "$dir" --peers "$peer_list" ${ARBOR_SERVER_FLAGS:-} >>"$dir/arbor.log" 2>&1 &
        echo $! >"$dir/arbor.pid"
    done
    log "started $n nodes (data in $DATA); waiting for leaders"
    local eps; eps=$(endpoints "$n")
    for _ in $(seq 1 100); do
        if "$ARBOR_BIN" --endpoints "$eps" --timeout 2 cluster status --json 2>/dev/null | grep -q '"leader": [1-9]'; then
            ARBOR_ENDPOINTS="$eps" "$ARBOR_BIN" --timeout 5 cluster status
            return 0
        fi
        sleep 0.2
    done
    echo "no leader elected within 20 s; see $DATA/n*/arbor.log" >&2
    exit 1
}

stop() {
    local pidfiles; pidfiles=$(running_nodes)
    if [ -z "$pidfiles" ]; then echo "no running nodes under $DATA"; return 0; fi
    for f in $pidfiles; do kill -TERM "$(cat "$f")" 2>/dev/null || true; done
    for f in $pidfiles; do
        local pid; pid=$(cat "$f")
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then echo "node $pid did not stop in 10 s; killing" >&2; kill -KILL "$pid" || true; fi
        rm -f "$f"
    done
    log "stopped"
}

case "${1:-}" in
    start) start "${2:-3}" ;;
    stop) stop ;;
    status)
        n=$(ls -d "$DATA"/n* 2>/dev/null | wc -l)
        "$ARBOR_BIN" --endpoints "$(endpoints "${n:-3}")" cluster status ;;
    *) echo "usage: $0 start [N] | stop | status" >&2; exit 2 ;;
esac
