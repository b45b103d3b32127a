//! Arbor's storage layer: an ordered key-value [`Engine`] with atomic write
//! batches and consistent snapshots, implemented in memory ([`Memory`]) and
//! on RocksDB ([`Rocks`]), plus the order-preserving [`keycode`] used to
//! build composite keys.
//!
//! Both engines pass the same [`conformance`] suite. This crate knows nothing
//! of Raft, tokio or protobuf: it stores bytes in order, durably.

pub mod conformance;
mod engine;
pub mod keycode;
mod memory;
mod rocks;
pub mod segments;

pub use engine::{
    prefix_end, BatchOp, Cursor, Direction, Durability, Engine, Error, ReadView, Result, ScanIter, WriteBatch,
};
pub use memory::Memory;
pub use rocks::{KeyRange, Rocks, RocksOptions};
