#!/usr/bin/env bash
# Builds the library's tests with `--cfg loom` for this crate only (the
# dependencies, RocksDB included, keep their normal build) and runs the
# loom models of src/scheduler/sync.rs.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"
exe=$(cargo rustc --locked -p arbor --lib --profile test --message-format=json -- --cfg loom \
    | python3 -c 'import sys, json
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["executable"])')
[ -n "$exe" ] || { echo "loom test binary not built" >&2; exit 1; }
LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-2}" "$exe" scheduler::sync::loom_models --test-threads 1
