//! The gRPC services — thin: validate ([`convert`]), route, call the node,
//! map the result — and [`status`], the ONE table from [`Error`] to
//! `tonic::Status`.

pub mod batch;
pub mod convert;

use std::collections::BTreeMap;
use std::sync::Arc;

use arbor_proto as pb;
use arbor_proto::cluster_server::{Cluster, ClusterServer};
use arbor_proto::kv_server::{Kv, KvServer};
use arbor_proto::raft_transport_server::{RaftTransport, RaftTransportServer};
use serde::{de::DeserializeOwned, Serialize};
use tokio_stream::StreamExt;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};

use crate::error::Error;
use crate::routing::Span;
use crate::sequencer::driver::Committed;
use crate::server::{Group, Node};
use crate::tree::{self, OpResult, TxnOutcome};

/// Metadata key a client sets to name the cluster it expects.
pub const CLUSTER_ID_HEADER: &str = "arbor-cluster-id";
/// Metadata keys of a `NOT_LEADER` error: the leader's id and address.
pub const LEADER_ID_HEADER: &str = "arbor-leader-id";
pub const LEADER_ADDR_HEADER: &str = "arbor-leader-addr";

/// The one mapping from Arbor errors to gRPC status codes.
pub fn status(e: Error) -> Status {
    use tonic::Code;
    let code = match &e {
        Error::InvalidArgument(_) => Code::InvalidArgument,
        Error::NotLeader { .. } => Code::Unavailable,
        Error::NoRange { .. } => Code::NotFound,
        Error::CrossRange { .. } | Error::WrongCluster { .. } | Error::Refused(_) => Code::FailedPrecondition,
        Error::Unavailable(_) | Error::Transport(_) => Code::Unavailable,
        Error::Timeout(_) => Code::DeadlineExceeded,
        Error::Overloaded(_) => Code::ResourceExhausted,
        Error::OutOfRange { .. } => Code::OutOfRange,
        Error::Indeterminate(_) => Code::Unknown,
        Error::Storage(_) | Error::Corruption(_) | Error::Fatal(_) => Code::Internal,
    };
    let mut s = Status::new(code, e.to_string());
    if let Error::NotLeader { leader, leader_addr, .. } = &e {
        if let Some(id) = leader {
            s.metadata_mut().insert(LEADER_ID_HEADER, MetadataValue::from(*id));
        }
        if let Some(addr) = leader_addr.as_ref().and_then(|a| a.parse().ok()) {
            s.metadata_mut().insert(LEADER_ADDR_HEADER, addr);
        }
    }
    s
}

type Reply<T> = Result<Response<T>, Status>;

fn check_cluster<T>(node: &Node, req: &Request<T>) -> Result<(), Status> {
    if let Some(theirs) = req.metadata().get(CLUSTER_ID_HEADER) {
        let theirs = theirs.to_str().unwrap_or("<not ASCII>");
        if theirs != node.meta.cluster_id {
            return Err(status(Error::WrongCluster { ours: node.meta.cluster_id.clone(), theirs: theirs.to_string() }));
        }
    }
    Ok(())
}

fn header(group: u64, c: &Committed) -> Option<pb::ResponseHeader> {
    Some(pb::ResponseHeader { group_id: group, read_stamp: c.stamp, log_index: c.index, epoch: c.epoch })
}

fn read_header(group: &Group, stamp: u64) -> Option<pb::ResponseHeader> {
    Some(pb::ResponseHeader { group_id: group.range.group, read_stamp: stamp, log_index: 0, epoch: 0 })
}

/// The results of a transaction that ran, or the error it ended in.
fn done(c: &Committed) -> Result<(bool, Vec<OpResult>), Status> {
    match &c.outcome {
        TxnOutcome::Done { succeeded, results } => Ok((*succeeded, results.clone())),
        TxnOutcome::Aborted { reason } => {
            Err(Status::failed_precondition(format!("transaction aborted, nothing applied: {reason}")))
        }
        TxnOutcome::Retry { reason } => Err(status(Error::Unavailable(reason.clone()))),
    }
}

/// Batches a watch may have queued for a slow client before the watcher
/// stops reading its feed (and, if that lasts, is cancelled).
const WATCH_OUTBOX: usize = 16;

/// The `Kv` service.
#[derive(Clone)]
pub struct KvService {
    node: Arc<Node>,
}

impl KvService {
    /// A single write op, sequenced as a one-op transaction.
    async fn write_op(&self, request_id: String, op: pb::op::Op) -> Result<(u64, Committed, OpResult), Status> {
        let req = pb::TxnRequest { success: vec![pb::Op { op: Some(op) }], request_id, ..Default::default() };
        let txn = convert::txn(req, &self.node.config.limits).map_err(status)?;
        let (group, c) = self.node.submit(txn).await.map_err(status)?;
        let (_, mut results) = done(&c)?;
        let result = results.pop().ok_or_else(|| Status::internal("a one-op transaction returned no result"))?;
        Ok((group, c, result))
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn get(&self, req: Request<pb::GetRequest>) -> Reply<pb::GetResponse> {
        check_cluster(&self.node, &req)?;
        let r = req.into_inner();
        let key = r.key;
        convert::check_key(&key, &self.node.config.limits, "key").map_err(status)?;
        let (mode, timeout) = convert::read_mode(r.read.as_ref()).map_err(status)?;
        let group = self.node.route(&[Span::Key(&key)]).map_err(status)?;
        let (found, stamp) = self
            .node
            .read(group, mode, timeout, move |view| {
                view.get(&key).map(|r| r.map(|record| tree::KeyValue { key, record }))
            })
            .await
            .map_err(status)?;
        Ok(Response::new(pb::GetResponse { header: read_header(group, stamp), kv: found.map(convert::kv) }))
    }

    async fn range(&self, req: Request<pb::RangeRequest>) -> Reply<pb::RangeResponse> {
        check_cluster(&self.node, &req)?;
        let spec = convert::range_spec(req.get_ref(), &self.node.config.limits).map_err(status)?;
        let (mode, timeout) = convert::read_mode(req.get_ref().read.as_ref()).map_err(status)?;
        let group = self.node.route(&[Span::Range(&spec.range.start, &spec.range.end)]).map_err(status)?;
        let (result, stamp) = self
            .node
            .read(group, mode, timeout, move |view| tree::exec::read_range(view, &spec))
            .await
            .map_err(status)?;
        Ok(Response::new(convert::range_response(result, read_header(group, stamp))))
    }

    async fn put(&self, req: Request<pb::PutRequest>) -> Reply<pb::PutResponse> {
        check_cluster(&self.node, &req)?;
        let r = req.into_inner();
        let put = pb::PutOp { key: r.key, value: r.value, prev_kv: r.prev_kv };
        match self.write_op(r.request_id, pb::op::Op::Put(put)).await? {
            (group, c, OpResult::Put { prev, version }) => {
                Ok(Response::new(pb::PutResponse { header: header(group, &c), prev: prev.map(convert::kv), version }))
            }
            (_, _, other) => Err(Status::internal(format!("put returned {other:?}"))),
        }
    }

    async fn delete(&self, req: Request<pb::DeleteRequest>) -> Reply<pb::DeleteResponse> {
        check_cluster(&self.node, &req)?;
        let r = req.into_inner();
        match self.write_op(r.request_id, pb::op::Op::Delete(pb::DeleteOp { key: r.key })).await? {
            (group, c, OpResult::Delete { deleted }) => {
                Ok(Response::new(pb::DeleteResponse { header: header(group, &c), deleted }))
            }
            (_, _, other) => Err(Status::internal(format!("delete returned {other:?}"))),
        }
    }

    async fn delete_range(&self, req: Request<pb::DeleteRangeRequest>) -> Reply<pb::DeleteRangeResponse> {
        check_cluster(&self.node, &req)?;
        let r = req.into_inner();
        let op = pb::op::Op::DeleteRange(pb::DeleteRangeOp { prefix: r.prefix, start: r.start, end: r.end });
        match self.write_op(r.request_id, op).await? {
            (group, c, OpResult::DeleteRange { deleted }) => {
                Ok(Response::new(pb::DeleteRangeResponse { header: header(group, &c), deleted }))
            }
            (_, _, other) => Err(Status::internal(format!("delete_range returned {other:?}"))),
        }
    }

    async fn txn(&self, req: Request<pb::TxnRequest>) -> Reply<pb::TxnResponse> {
        check_cluster(&self.node, &req)?;
        let txn = convert::txn(req.into_inner(), &self.node.config.limits).map_err(status)?;
        let (group, c) = self.node.submit(txn).await.map_err(status)?;
        let (succeeded, results) = done(&c)?;
        Ok(Response::new(pb::TxnResponse {
            header: header(group, &c),
            succeeded,
            results: results.into_iter().map(convert::op_result).collect(),
        }))
    }

    type WatchStream =
        std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::WatchResponse, Status>> + Send + 'static>>;

    async fn watch(&self, req: Request<pb::WatchRequest>) -> Reply<Self::WatchStream> {
        check_cluster(&self.node, &req)?;
        let r = req.into_inner();
        let range = convert::watch_range(&r, &self.node.config.limits).map_err(status)?;
        let group = self.node.route(&[Span::Range(&range.start, &range.end)]).map_err(status)?.range.group;
        let (tx, rx) = tokio::sync::mpsc::channel(WATCH_OUTBOX);
        tokio::spawn(crate::watch::run(self.node.clone(), group, range, r.start_after, tx));
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx).map(move |item| match item {
            Ok(batch) => Ok(convert::watch_response(group, batch)),
            Err(e) => Err(status(e)),
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// The `Cluster` service.
pub struct ClusterService {
    node: Arc<Node>,
}

fn members(node: &Node) -> Vec<pb::Member> {
    node.members().into_iter().map(|(id, addr)| pb::Member { id, addr }).collect()
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn status(&self, req: Request<pb::StatusRequest>) -> Reply<pb::StatusResponse> {
        check_cluster(&self.node, &req)?;
        let node = self.node.clone();
        let bytes_of = tokio::task::spawn_blocking(move || {
            node.groups
                .values()
                .map(|g| Ok((g.range.group, node.log_bytes(g)?)))
                .collect::<Result<BTreeMap<_, _>, Error>>()
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(status)?;
        let groups = self
            .node
            .groups
            .values()
            .map(|g| {
                let m = g.raft.metrics().borrow().clone();
                let membership = m.membership_config.membership();
                let leader_addr = m.current_leader.and_then(|l| membership.get_node(&l).map(|n| n.addr.clone()));
                // From the same metrics as the purge point and last index
                // reported beside it.
                let log_entries = match (m.last_log_index, m.purged.map(|l| l.index)) {
                    (None, _) => 0,
                    (Some(last), Some(purged)) => last.saturating_sub(purged),
                    (Some(last), None) => last + 1,
                };
                let log_bytes = bytes_of.get(&g.range.group).copied().unwrap_or_default();
                pb::GroupStatus {
                    group_id: g.range.group,
                    start: g.range.start.clone(),
                    end: g.range.end.clone(),
                    leader: m.current_leader.unwrap_or(0),
                    leader_addr: leader_addr.unwrap_or_default(),
                    term: m.current_term,
                    role: format!("{:?}", m.state),
                    fault: m.running_state.as_ref().err().map(|e| e.to_string()).unwrap_or_default(),
                    last_log_index: m.last_log_index.unwrap_or(0),
                    applied_index: m.last_applied.map_or(0, |l| l.index),
                    epoch: self.node.epoch(g),
                    voters: membership.voter_ids().collect(),
                    learners: membership.learner_ids().collect(),
                    vshards: g.vshards as u64,
                    epoch_gaps: g.shared.epoch_gaps.load(std::sync::atomic::Ordering::Acquire),
                    snapshot_index: m.snapshot.map_or(0, |l| l.index),
                    purged_index: m.purged.map_or(0, |l| l.index),
                    log_entries,
                    log_bytes,
                    vshard_lag: g.vshard_progress.lags(),
                    snapshots_installed: g.snapshots_installed.load(std::sync::atomic::Ordering::Relaxed),
                    eager_appends: g.eager.as_ref().map_or(0, |e| e.sent()),
                    eager_answers: g.eager.as_ref().map_or(0, |e| e.answered()),
                    commit_notices_answered: self.node.peers().commit_notices().answered(g.range.group),
                    closed_stamp: g.shared.stamp.load(std::sync::atomic::Ordering::Acquire),
                    gc_horizon: g.shared.gc_horizon.load(std::sync::atomic::Ordering::Acquire),
                }
            })
            .collect();
        Ok(Response::new(pb::StatusResponse {
            node_id: self.node.node_id(),
            cluster_id: self.node.meta.cluster_id.clone(),
            groups,
            members: members(&self.node),
        }))
    }

    async fn members(&self, req: Request<pb::MembersRequest>) -> Reply<pb::MembersResponse> {
        check_cluster(&self.node, &req)?;
        Ok(Response::new(pb::MembersResponse { members: members(&self.node) }))
    }

    async fn change_membership(
        &self,
        req: Request<pb::ChangeMembershipRequest>,
    ) -> Reply<pb::ChangeMembershipResponse> {
        check_cluster(&self.node, &req)?;
        let r = req.into_inner();
        let group = self.node.group(r.group_id).map_err(status)?;
        let membership = match r.change {
            Some(pb::change_membership_request::Change::Add(m)) if m.id > 0 => {
                self.node.add_node(group, m.id, m.addr).await.map_err(status)?
            }
            Some(pb::change_membership_request::Change::Remove(id)) if id > 0 => {
                self.node.remove_node(group, id, r.force).await.map_err(status)?
            }
            _ => {
                return Err(status(Error::InvalidArgument(
                    "a membership change needs a node id (> 0) to add or remove".into(),
                )))
            }
        };
        Ok(Response::new(pb::ChangeMembershipResponse {
            voters: membership.voter_ids().collect(),
            learners: membership.learner_ids().collect(),
        }))
    }

    async fn transfer_leader(&self, req: Request<pb::TransferLeaderRequest>) -> Reply<pb::TransferLeaderResponse> {
        check_cluster(&self.node, &req)?;
        let r = req.into_inner();
        let group = self.node.groups.get(&r.group_id).ok_or_else(|| {
            let groups: Vec<u64> = self.node.groups.keys().copied().collect();
            status(Error::InvalidArgument(format!("there is no group {} (the groups are {groups:?})", r.group_id)))
        })?;
        let (leader, term) = self.node.transfer_leader(group, r.to).await.map_err(status)?;
        Ok(Response::new(pb::TransferLeaderResponse { leader, term }))
    }

    async fn set_clock_offset(&self, req: Request<pb::SetClockOffsetRequest>) -> Reply<pb::SetClockOffsetResponse> {
        check_cluster(&self.node, &req)?;
        if !self.node.config.unsafe_test_only.clock_admin {
            return Err(status(Error::Refused(
                "SetClockOffset is a test-only admin RPC; start the node with --unsafe-clock-admin to allow it".into(),
            )));
        }
        let offset_ms = req.into_inner().offset_ms;
        let previous_offset_ms = self.node.clock.set_offset_ms(offset_ms);
        tracing::warn!(offset_ms, previous_offset_ms, "clock offset changed through the test-only admin RPC");
        Ok(Response::new(pb::SetClockOffsetResponse { previous_offset_ms, now_stamp: self.node.hlc.now() }))
    }
}

/// The internal `RaftTransport` service: routes each message to its group.
pub struct RaftService {
    node: Arc<Node>,
    /// Votes refused to non-members, per (group, node).
    refused_votes: Quiet<(u64, u64)>,
    /// Snapshot chunks refused for want of disk space, per group (the
    /// leader retries every chunk several times).
    refused_chunks: Quiet<u64>,
}

/// Keeps a repeated refusal out of the log: [`Quiet::due`] says whether it
/// was last logged more than 10 s ago, per key.
#[derive(Default)]
struct Quiet<K>(std::sync::Mutex<std::collections::HashMap<K, std::time::Instant>>);

impl<K: std::hash::Hash + Eq> Quiet<K> {
    /// True (and noted) if `key` was not logged in the last 10 s.
    fn due(&self, key: K) -> bool {
        let now = std::time::Instant::now();
        let mut logged = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let quiet = logged.get(&key).is_some_and(|t| now.duration_since(*t).as_secs() < 10);
        if !quiet {
            logged.insert(key, now);
        }
        !quiet
    }
}

impl RaftService {
    fn group(&self, msg: &pb::RaftMessage) -> Result<&Group, Status> {
        if msg.cluster_id != self.node.meta.cluster_id {
            tracing::warn!(theirs = %msg.cluster_id, "refusing a raft message from another cluster");
            return Err(status(Error::WrongCluster {
                ours: self.node.meta.cluster_id.clone(),
                theirs: msg.cluster_id.clone(),
            }));
        }
        self.node.group(msg.group_id).map_err(status)
    }

    /// Refuses a message whose payload does not match its checksum.
    fn verified(msg: &pb::RaftMessage) -> Result<(), Status> {
        crate::raft::network::verify(msg).map_err(|e| {
            tracing::warn!(group = msg.group_id, "refusing a corrupted raft message: {e}");
            Status::data_loss(format!("group {}: raft message refused: {e}", msg.group_id))
        })
    }

    fn decode<T: DeserializeOwned>(msg: &pb::RaftMessage) -> Result<T, Status> {
        rmp_serde::from_slice(&msg.payload)
            .map_err(|e| Status::invalid_argument(format!("undecodable raft message: {e}")))
    }

    fn reply<T: Serialize>(group: u64, result: T) -> Reply<pb::RaftMessage> {
        let payload = rmp_serde::to_vec(&result).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(crate::raft::network::seal(String::new(), group, payload)))
    }

    /// The answer to a snapshot chunk that failed its checksum: openraft's
    /// snapshot mismatch (expecting offset 0), on which the leader restarts
    /// the transfer. Nothing of the chunk reaches Raft.
    fn corrupt_chunk(msg: &pb::RaftMessage, why: String) -> Reply<pb::RaftMessage> {
        use openraft::error::{InstallSnapshotError, RaftError, SnapshotMismatch};
        type ChunkResult = Result<
            openraft::raft::InstallSnapshotResponse<crate::raft::NodeId>,
            RaftError<crate::raft::NodeId, InstallSnapshotError>,
        >;
        let group = msg.group_id;
        let Ok(req) = Self::decode::<openraft::raft::InstallSnapshotRequest<crate::raft::TypeConfig>>(msg) else {
            tracing::error!(group, "corrupt snapshot chunk refused (its snapshot id and offset are unreadable): {why}");
            return Err(Status::data_loss(format!("group {group}: corrupt snapshot chunk refused: {why}")));
        };
        let (id, offset) = (req.meta.snapshot_id, req.offset);
        tracing::error!(
            group,
            snapshot = %id,
            offset,
            "corrupt snapshot chunk refused: {why}; the leader restarts the transfer"
        );
        let expect = openraft::SnapshotSegmentId { id: id.clone(), offset: 0 };
        let got = openraft::SnapshotSegmentId { id, offset };
        let r: ChunkResult =
            Err(RaftError::APIError(InstallSnapshotError::SnapshotMismatch(SnapshotMismatch { expect, got })));
        Self::reply(group, r)
    }
}

impl RaftService {
    /// A node that is no longer (or was never) a member of the group — e.g.
    /// one removed and restarted on its old data dir — must not disturb it
    /// with elections: its votes are refused, and said so (in this node's
    /// log at most every 10 s per node, and in the refusal it receives).
    fn refuse_non_member(&self, g: &Group, candidate: u64) -> Result<(), Status> {
        let m = g.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        if membership.get_node(&candidate).is_some() {
            return Ok(());
        }
        let group = g.range.group;
        let members: Vec<u64> = membership.nodes().map(|(id, _)| *id).collect();
        let reason = format!(
            "node {candidate} asked for votes in group {group}, but it is not a member (members {members:?}): \
             it was removed or never added; wipe its data dir and add it again with `arbor cluster add-node`"
        );
        if self.refused_votes.due((group, candidate)) {
            tracing::warn!(group, node = candidate, "refusing a vote request from a non-member: {reason}");
        }
        Err(status(Error::Refused(reason)))
    }
}

#[tonic::async_trait]
impl RaftTransport for RaftService {
    async fn append_entries(&self, req: Request<pb::RaftMessage>) -> Reply<pb::RaftMessage> {
        let msg = req.into_inner();
        let g = self.group(&msg)?;
        Self::verified(&msg)?;
        let r = g.raft.append_entries(Self::decode(&msg)?).await;
        Self::reply(msg.group_id, r)
    }

    async fn vote(&self, req: Request<pb::RaftMessage>) -> Reply<pb::RaftMessage> {
        let msg = req.into_inner();
        let g = self.group(&msg)?;
        Self::verified(&msg)?;
        let vote: openraft::raft::VoteRequest<crate::raft::NodeId> = Self::decode(&msg)?;
        if let Some(candidate) = vote.vote.leader_id().voted_for() {
            self.refuse_non_member(g, candidate)?;
        }
        let r = g.raft.vote(vote).await;
        Self::reply(msg.group_id, r)
    }

    async fn install_snapshot(&self, req: Request<pb::RaftMessage>) -> Reply<pb::RaftMessage> {
        let msg = req.into_inner();
        let g = self.group(&msg)?;
        if let Err(why) = crate::raft::network::verify(&msg) {
            return Self::corrupt_chunk(&msg, why);
        }
        let chunk: openraft::raft::InstallSnapshotRequest<crate::raft::TypeConfig> = Self::decode(&msg)?;
        if let Err(e) = self.node.check_snapshot_room(msg.group_id, chunk.data.len() as u64) {
            if self.refused_chunks.due(msg.group_id) {
                tracing::warn!(group = msg.group_id, "refusing snapshot chunks: {e}");
            }
            return Err(status(e));
        }
        let r = g.raft.install_snapshot(chunk).await;
        Self::reply(msg.group_id, r)
    }

    async fn timeout_now(&self, req: Request<pb::RaftMessage>) -> Reply<pb::RaftMessage> {
        let msg = req.into_inner();
        let g = self.group(&msg)?;
        Self::verified(&msg)?;
        let r = self.node.campaign_now(g, Self::decode(&msg)?).await;
        Self::reply(msg.group_id, r.map_err(|e| e.to_string()))
    }
}

/// Every service of a node on one router.
pub fn router(node: Arc<Node>) -> tonic::transport::server::Router {
    let max = node.config.limits.max_request_bytes;
    tonic::transport::Server::builder()
        .add_service(KvServer::new(KvService { node: node.clone() }).max_decoding_message_size(max))
        .add_service(
            pb::kv_batch_server::KvBatchServer::new(batch::KvBatchService { kv: KvService { node: node.clone() } })
                .max_decoding_message_size(max.max(batch::MAX_MESSAGE_BYTES)),
        )
        .add_service(ClusterServer::new(ClusterService { node: node.clone() }))
        .add_service(
            RaftTransportServer::new(RaftService {
                node,
                refused_votes: Default::default(),
                refused_chunks: Default::default(),
            })
            .max_decoding_message_size(usize::MAX),
        )
}
