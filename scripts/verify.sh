#!/usr/bin/env bash
# Run before every submission: formatting, clippy with warnings as errors,
# then the whole test suite.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ensure_deps
cd "$ROOT"
log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy -D warnings"
cargo clippy --locked --workspace --all-targets -- -D warnings
"$ROOT/scripts/test.sh"
