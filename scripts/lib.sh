# Shared helpers for Arbor's scripts. Source it; do not run it.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# One persistent target dir outside the checkout, so RocksDB (a C++ build of
# ~12 minutes on 2 cores) is compiled once per machine, not once per clone.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/arbor-target}"
# ARBOR_BIN may name another build of the server (to compare two builds).
ARBOR_BIN="${ARBOR_BIN:-$CARGO_TARGET_DIR/debug/arbor}"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# Installs the Debian packages RocksDB's bindings need, when missing.
ensure_deps() {
    local missing=()
    command -v clang >/dev/null 2>&1 || missing+=(clang)
    if ! ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 && ! ls /usr/lib/x86_64-linux-gnu/libclang*.so* >/dev/null 2>&1; then
        missing+=(libclang-dev)
    fi
    command -v cc >/dev/null 2>&1 || missing+=(build-essential)
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]} (needed to build RocksDB)"
        local sudo=""
        [ "$(id -u)" -ne 0 ] && sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    command -v cargo >/dev/null 2>&1 || { echo "cargo not found: install the Rust toolchain first" >&2; exit 1; }
}

build_arbor() {
    log "building arbor (first build compiles RocksDB: ~12 min on 2 cores; cached in $CARGO_TARGET_DIR)"
    (cd "$ROOT" && cargo build --locked --bin arbor)
}
