//! The multi-raft host. A node runs one openraft instance per group; all of
//! them share the node's RocksDB (keys prefixed by group, see
//! [`crate::keys`]), its gRPC port and one connection per peer.
//!
//! - [`commit_notice`]: the leader's transport answers the AppendEntries
//!   that only carry a commit index to followers that keep receiving
//!   entries.
//! - [`eager`]: an idle leader replicates a new entry during its own fsync.
//! - [`log_store`]: the RocksDB Raft log (fsync'd appends, vote, purge).
//! - [`state_machine`]: openraft's state machine trait over the sequencer
//!   state machine ([`crate::sequencer::apply`]).
//! - [`network`]: Raft RPCs over gRPC, every message tagged with cluster and
//!   group id.
//! - [`read_index`]: concurrent linearizable reads share one read-index
//!   round, confirmed by probes of Arbor's own.
//! - [`snapshot_data`]: snapshot data as openraft streams it (a file).
//! - [`snapshot_policy`]: when a group builds a snapshot.
//!
//! openraft 0.9 (the stable line) is pinned exactly; see
//! `docs/architecture.md` for why not 0.10.

pub mod commit_notice;
pub mod eager;
pub mod log_store;
pub mod network;
pub mod read_index;
pub mod snapshot_data;
pub mod snapshot_policy;
pub mod state_machine;

use crate::sequencer::{EpochPayload, EpochResponse};

/// A node's id in the cluster (non-zero).
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// Arbor's openraft types: a log entry carries one encoded epoch.
    pub TypeConfig:
        D = EpochPayload,
        R = EpochResponse,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = snapshot_data::SnapshotData,
        AsyncRuntime = openraft::TokioRuntime,
        Responder = openraft::impls::OneshotResponder<TypeConfig>,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type Membership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
/// One membership configuration (voters, learners, their addresses), as a
/// membership entry sets it; [`Membership`] is one with its log id.
pub type MembershipConfig = openraft::Membership<NodeId, openraft::BasicNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, openraft::BasicNode>;
pub type Metrics = openraft::RaftMetrics<NodeId, openraft::BasicNode>;
/// The part of [`Metrics`] sent only when it changes: vote, role, leader,
/// membership.
pub type ServerMetrics = openraft::metrics::RaftServerMetrics<NodeId, openraft::BasicNode>;

/// The voters of `membership` other than `me`, with their addresses: the
/// followers a leader sends to.
pub fn other_voters(membership: &MembershipConfig, me: NodeId) -> Vec<(NodeId, openraft::BasicNode)> {
    membership
        .voter_ids()
        .filter(|id| *id != me)
        .filter_map(|id| membership.get_node(&id).map(|n| (id, n.clone())))
        .collect()
}

/// Wraps a node failure as openraft's storage error (which stops the group).
pub fn storage_error(e: impl std::fmt::Display, verb: openraft::ErrorVerb) -> StorageError {
    openraft::StorageIOError::new(openraft::ErrorSubject::Store, verb, openraft::AnyError::error(e.to_string())).into()
}

/// Maps a failed write (`client_write`, membership change). A leader that
/// lost leadership may still see its entry committed by the next leader, so
/// anything but a clean "forward to leader" is indeterminate.
pub fn client_write_error(
    group: u64,
    e: openraft::error::RaftError<NodeId, openraft::error::ClientWriteError<NodeId, openraft::BasicNode>>,
) -> crate::Error {
    use openraft::error::{ClientWriteError, RaftError};
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            crate::Error::NotLeader { group, leader: f.leader_id, leader_addr: f.leader_node.map(|n| n.addr) }
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            crate::Error::Refused(format!("group {group}: {e}"))
        }
        RaftError::Fatal(f) => crate::Error::Indeterminate(format!("group {group} raft stopped: {f}")),
    }
}
