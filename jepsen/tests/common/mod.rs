//! Helpers shared by the harness's integration tests.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// Prints a phase of a test, so a failure's output reads like a story.
pub fn phase(msg: &str) {
    eprintln!("--- {msg}");
}

/// The `arbor` binary: next to `arbor-jepsen`, else `$CARGO_TARGET_DIR/debug`, else the
/// workspace's `target/debug`.
pub fn find_arbor_bin() -> Option<PathBuf> {
    let harness = PathBuf::from(env!("CARGO_BIN_EXE_arbor-jepsen"));
    let mut candidates = vec![harness.parent().expect("a target dir").join("arbor")];
    if let Ok(dir) = std::env::var("CARGO_TARGET_DIR") {
        candidates.push(PathBuf::from(dir).join("debug").join("arbor"));
    }
    candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/arbor"));
    candidates.into_iter().find(|p| p.is_file())
}

/// [`find_arbor_bin`], or a panic saying how to build it.
pub fn arbor_bin() -> PathBuf {
    find_arbor_bin().expect("an arbor binary: cargo build --workspace")
}
