#!/usr/bin/env bash
# README command 2: the whole test suite (unit, conformance, loom models,
# integration tests against real multi-node clusters).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ensure_deps
cd "$ROOT"
log "cargo test (workspace)"
cargo test --locked --workspace
log "loom models (--cfg loom) of the scheduler's hand-offs"
"$ROOT/scripts/loom.sh"
