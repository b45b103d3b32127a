#!/usr/bin/env bash
# README command 1: build Arbor, start a local 3-node cluster on loopback
# (data in ./data/n1..n3), run the demo workload through the client, and
# leave the cluster running.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ensure_deps
build_arbor
"$ROOT/scripts/cluster.sh" start 3
log "running the demo workload"
"$ARBOR_BIN" demo
cat <<MSG

The cluster is still running. Try:
  $ARBOR_BIN put /users/alice '{"age":30}'
  $ARBOR_BIN get /users/alice
  $ARBOR_BIN cluster status
Stop it with:   scripts/cluster.sh stop
MSG
