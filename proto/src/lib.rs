//! Arbor's gRPC protocol: the `Kv`, `Cluster` and internal `RaftTransport`
//! services, generated from `proto/arbor.proto` by tonic/prost.
//!
//! This crate has no dependency on the server (no RocksDB, no Raft), so
//! external clients can depend on it alone.

#![allow(clippy::all, missing_docs)]

/// Generated types and services of package `arbor.v1`.
pub mod v1 {
    tonic::include_proto!("arbor.v1");
}

pub use v1::*;
