//! The Calvin sequencer.
//!
//! - [`batch`]: the `EpochBatch` log entry format.
//! - [`batcher`]: the pure core deciding when the leader closes an epoch.
//! - [`driver`]: the leader's loop: collects client transactions, closes
//!   epochs, proposes them through Raft and answers clients.
//! - [`apply`]: the sequencer state machine every replica runs in log order:
//!   redelivery guard, epoch checks, dedup, fan-out to the vshard executors
//!   and the epoch's single durable WriteBatch.
//! - [`snapshot`]: recorded positions, snapshot data and its files, and
//!   writing and decoding images of the state as streams.
//! - [`image`]: the latest image written for followers, shared by the
//!   transfers that ask for one.

pub mod apply;
pub mod batch;
pub mod batcher;
pub mod driver;
pub mod image;
pub mod snapshot;

pub use apply::{EpochChanges, EpochResponse, Feed, GroupShared, GroupStateMachine};
pub use batch::{Compression, EpochBatch, EpochPayload};
pub use snapshot::SnapshotContent;
