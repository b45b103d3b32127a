#!/usr/bin/env bash
# Jepsen-style test of a real Arbor cluster: builds `arbor` and `arbor-jepsen`, then runs
# `arbor-jepsen run` with the given flags (passed through unchanged). Each run writes
# jepsen/store/<workload>-<time>/ (history.jsonl, results.json, report.html, server logs);
# the exit code is the verdict: 0 valid, 1 invalid, 2 unknown, 3 the run could not be
# carried out.
#
#   scripts/jepsen.sh --workload register --nemesis partition,kill --time 60
#   scripts/jepsen.sh --workload list-append --nemesis all --time 60
#   scripts/jepsen.sh --workload register --nemesis clock,leader --nodes 3 --time 30
#   scripts/jepsen.sh --workload register --nemesis member --nodes 4 --time 30
#   scripts/jepsen.sh --workload watch --nemesis partition,kill --time 60
#   scripts/jepsen.sh --workload register --nemesis partition --server-flag=--unsafe-stale-reads
#   scripts/jepsen.sh --workload set --nemesis amnesia --nodes 3 --time 15 --server-flag=--unsafe-volatile-writes
#   scripts/jepsen.sh --net proxy --workload register --nemesis partition,kill
#   scripts/jepsen.sh --help            # every option (arbor-jepsen run --help)
#
# Workloads: register (linearizable cas registers), list-append (Elle, strict
# serializability), set, bank, watch (writers put and delete under /jepsen/watch/ while one
# watcher per node, a roaming and a late one stream the prefix: all must see the same
# per-key changes, every acknowledged write once, nothing failed or never written).
#
# Nemeses: partition, kill, pause, clock (Arbor's offset clock, never the machine's),
# member (remove a node from every group and add it back; needs --nodes 4+), leader
# (leadership transfers), all (= every one of them; member only with 4+ nodes), none;
# amnesia (not in all: isolate a minority, kill -9 the rest together, restart, heal — loses
# acknowledged writes with --server-flag=--unsafe-volatile-writes, nothing without it).
#
# Network (--net): as root, every node runs in its own network namespace (`netns`);
# partitions use iptables when installed (set JEPSEN_INSTALL_IPTABLES=1 to install it with
# apt-get when missing), else blackhole routes. Without root (or with --net proxy) the nodes
# run on loopback, each behind a TCP proxy that cuts or stalls every directed node link on
# its own (`proxy`). The progress line, results.json and the report say which mode ran.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if [ "${1:-}" = "--help" ] || [ "${1:-}" = "-h" ]; then
    [ -x "$CARGO_TARGET_DIR/debug/arbor-jepsen" ] || (cd "$ROOT" && cargo build --locked --workspace --bin arbor-jepsen)
    exec "$CARGO_TARGET_DIR/debug/arbor-jepsen" run --help
fi
if [ "$(id -u)" -eq 0 ]; then
    command -v ip >/dev/null 2>&1 || { echo "iproute2 (the ip command) is required for namespaces" >&2; exit 3; }
    if ! command -v iptables >/dev/null 2>&1 && [ "${JEPSEN_INSTALL_IPTABLES:-0}" = "1" ]; then
        log "installing iptables (partitions as DROP rules inside the namespaces)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iptables >/dev/null
    fi
else
    log "not root: the nodes run on loopback behind per-link TCP proxies (--net proxy); sudo for namespaces"
fi
ensure_deps
cd "$ROOT"
log "building arbor and arbor-jepsen"
cargo build --locked --workspace --bin arbor --bin arbor-jepsen
# The binary's default store is the checkout it was built from, and the
# target dir is shared between checkouts: name this one's unless given.
store=(--store "$ROOT/jepsen/store")
for arg in "$@"; do
    case "$arg" in --store | --store=*) store=() ;; esac
done
exec "$CARGO_TARGET_DIR/debug/arbor-jepsen" run --arbor-bin "$ARBOR_BIN" "${store[@]}" "$@"
