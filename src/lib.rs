//! Arbor: a replicated, deterministically sequenced state tree.
//!
//! Read `docs/architecture.md` first. Bottom-up, the modules are:
//!
//! - [`keys`]: every RocksDB key Arbor writes, as one enum.
//! - [`hlc`]: the hybrid logical clock that stamps epochs and reads.
//! - [`routing`]: the range catalog (`[start, end)` → group).
//! - [`tree`]: the state tree: records, transactions and their deterministic
//!   execution against a storage view.
//! - [`scheduler`]: per-vshard executors running one epoch's transactions in
//!   parallel, deterministically.
//! - [`sequencer`]: the epoch batch format, the leader's epoch batcher and the
//!   sequencer state machine every replica runs.
//! - [`raft`]: the multi-raft host: openraft type config, the RocksDB log
//!   store, the state machine adapter and the gRPC network.
//! - [`api`]: thin tonic services and the one table mapping errors to gRPC.
//! - [`client`]: the Rust client.
//! - [`server`]: a node: storage, groups and services wired together; its
//!   read path (linearizable, snapshot and bounded-staleness reads).
//! - [`watch`]: streams of applied changes, resumable from a stamp.

pub mod api;
pub mod bench;
pub mod client;
pub mod config;
pub mod error;
pub mod hlc;
pub mod keys;
pub mod raft;
pub mod routing;
pub mod scheduler;
pub mod sequencer;
pub mod server;
pub mod tree;
pub mod watch;

pub use error::{Error, Result};
