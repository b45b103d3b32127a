//! Arbor's error type. Errors fall in two classes, kept apart on purpose:
//!
//! - *request* errors ("your request failed": invalid argument, not the
//!   leader, wrong range...) go back to the client and change nothing;
//! - *node* errors ("this node is broken": storage IO, corruption, a
//!   non-deterministic apply failure) stop the affected replica.
//!
//! [`crate::api::status`] is the one place that maps them to gRPC codes.

use crate::raft::NodeId;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request broke a rule or a limit; the message names it.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// This node does not lead the group; `leader` is the last known leader.
    #[error("not the leader of group {group}{}", leader_hint(.leader, .leader_addr))]
    NotLeader { group: u64, leader: Option<NodeId>, leader_addr: Option<String> },

    /// No group's range holds the key.
    #[error("no range holds key {key:?}")]
    NoRange { key: String },

    /// The request's keys live in more than one range.
    #[error("keys span {count} ranges ({ranges}); cross-range transactions are not supported yet")]
    CrossRange { count: usize, ranges: String },

    /// The request is valid but refused in the cluster's current state
    /// (e.g. a removal that would leave a group without a quorum).
    #[error("refused: {0}")]
    Refused(String),

    /// The request came from another cluster.
    #[error("wrong cluster: this node belongs to cluster {ours:?}, the request is for {theirs:?}")]
    WrongCluster { ours: String, theirs: String },

    /// A replica could not serve the request within its deadline (e.g. its
    /// closed timestamp did not reach a snapshot read's stamp).
    #[error("deadline exceeded: {0}")]
    Timeout(String),

    /// A read at a stamp whose versions were garbage-collected.
    #[error(
        "stamp {requested} is below the oldest readable stamp {oldest} of group {group} \
         (versions older than reads.version_retention_ms are collected)"
    )]
    OutOfRange { group: u64, requested: u64, oldest: u64 },

    /// The request used up a bounded resource (e.g. a watcher too slow to
    /// keep up); the message says how to continue.
    #[error("resource exhausted: {0}")]
    Overloaded(String),

    /// Temporarily unable to serve (shutting down, overloaded, no quorum).
    #[error("unavailable: {0}")]
    Unavailable(String),

    /// The outcome is unknown: the request may or may not have been applied.
    /// Retrying with the same request id is safe.
    #[error("outcome unknown: {0}")]
    Indeterminate(String),

    /// The storage engine failed (IO). Non-deterministic: stops the replica.
    #[error("storage error: {0}")]
    Storage(#[from] arbor_storage::Error),

    /// Stored data could not be decoded. Non-deterministic: stops the replica.
    #[error("corrupt data: {0}")]
    Corruption(String),

    /// A broken invariant; the replica stops rather than diverge.
    #[error("fatal: {0}")]
    Fatal(String),

    /// A connection or transport problem talking to a peer.
    #[error("transport: {0}")]
    Transport(String),
}

fn leader_hint(leader: &Option<NodeId>, addr: &Option<String>) -> String {
    match (leader, addr) {
        (Some(id), Some(addr)) => format!(" (leader is node {id} at {addr})"),
        (Some(id), None) => format!(" (leader is node {id})"),
        _ => " (leader unknown)".to_string(),
    }
}

/// A stored key that does not decode is corrupt data.
impl From<arbor_storage::keycode::DecodeError> for Error {
    fn from(e: arbor_storage::keycode::DecodeError) -> Self {
        Error::Corruption(e.to_string())
    }
}

impl Error {
    /// True for errors that say the node itself is broken (the replica must
    /// stop), false for errors about a request.
    pub fn is_node_failure(&self) -> bool {
        matches!(self, Error::Storage(_) | Error::Corruption(_) | Error::Fatal(_))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
