//! Raft RPCs between nodes over gRPC (`RaftTransport` in
//! `proto/arbor.proto`). Every group of a node shares one HTTP/2 connection
//! per peer ([`Peers`]); each message carries the cluster id and the group
//! id, and its payload is the openraft request or result in MessagePack.
//!
//! Every request and reply also carries a CRC-32 of its payload ([`seal`],
//! [`verify`]): a message corrupted on the way is refused before it reaches
//! Raft. For snapshot chunks the receiver answers a mismatch with openraft's
//! snapshot-mismatch error, so the leader restarts the transfer.
//!
//! Snapshot transfers (see [`PeerConnection::full_snapshot`]): the follower
//! hears from the leader every heartbeat while one runs, which openraft 0.9
//! does not see to; and snapshot data that the sender cannot read (an image of
//! the state that could not be written: a full disk, an I/O error) fails
//! that transfer, retried after a growing pause with a new image, where
//! openraft would take it for a failure of the log's storage and stop the
//! group on its leader. A follower's refusal for want of disk room
//! (`RESOURCE_EXHAUSTED`) pauses the transfer the same way.
//!
//! Leader transfer support: [`Peers::pause_replication`] holds back a
//! group's AppendEntries (heartbeats, read-index probes and log replication)
//! so that the followers' leader leases run out, and [`Peers::timeout_now`]
//! asks the chosen follower to campaign at once (see
//! `Node::transfer_leader`). Dropping messages never endangers Raft's
//! safety; only liveness.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arbor_proto::raft_transport_client::RaftTransportClient;
use arbor_proto::RaftMessage;
use openraft::error::{
    Fatal, InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed, StreamingError,
    Unreachable,
};
use openraft::network::snapshot_transport::{Chunked, SnapshotTransport};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, SnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, OptionalSend, Snapshot, Vote};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tonic::transport::{Channel, Endpoint};

use crate::raft::commit_notice::{CommitNotices, Notice, OWED_DELAY};
use crate::raft::eager::EagerReplies;
use crate::raft::{NodeId, TypeConfig};

/// How long a connection attempt to a peer may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// One lazily connected channel per peer, shared by every group.
pub struct Peers {
    cluster_id: String,
    channels: Mutex<HashMap<NodeId, (String, Channel)>>,
    /// When each peer last answered a Raft RPC (any group).
    last_answer: Mutex<HashMap<NodeId, Instant>>,
    /// Groups whose outgoing AppendEntries are held back (leader transfer).
    paused: Mutex<HashSet<u64>>,
    /// The Raft heartbeat interval: how often a follower receiving a
    /// snapshot hears from its leader (see [`PeerConnection::full_snapshot`]).
    heartbeat: Duration,
    /// Replies to eager AppendEntries, for the replication streams.
    eager_replies: EagerReplies,
    /// Commit notices answered here ([`crate::raft::commit_notice`]).
    commit_notices: CommitNotices,
}

/// The payload of a `TimeoutNow` request: "campaign now", from the leader
/// of `term`. The receiver refuses it unless it still follows that leader in
/// that term, so a late or repeated request cannot disturb a newer leader.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TimeoutNow {
    pub leader: NodeId,
    pub term: u64,
}

/// Wraps a payload in a message with its checksum.
pub fn seal(cluster_id: String, group: u64, payload: Vec<u8>) -> RaftMessage {
    let crc32 = Some(crc32fast::hash(&payload));
    RaftMessage { cluster_id, group_id: group, payload, crc32 }
}

/// Checks a message's payload against its checksum.
pub fn verify(msg: &RaftMessage) -> Result<(), String> {
    let actual = crc32fast::hash(&msg.payload);
    match msg.crc32 {
        Some(stored) if stored == actual => Ok(()),
        Some(stored) => Err(format!(
            "payload checksum mismatch over {} bytes (sent {stored:#010x}, received {actual:#010x})",
            msg.payload.len()
        )),
        None => Err("the message carries no payload checksum".to_string()),
    }
}

impl Peers {
    pub fn new(cluster_id: String, heartbeat: Duration) -> Arc<Self> {
        Arc::new(Self {
            cluster_id,
            channels: Mutex::new(HashMap::new()),
            last_answer: Mutex::new(HashMap::new()),
            paused: Mutex::new(HashSet::new()),
            heartbeat,
            eager_replies: EagerReplies::default(),
            commit_notices: CommitNotices::new(heartbeat / 2),
        })
    }

    /// Holds back (or lets through again) every AppendEntries this node
    /// sends for `group`; held-back calls fail at once as unreachable, and
    /// openraft retries them after its backoff.
    pub fn pause_replication(&self, group: u64, paused: bool) {
        let mut set = self.paused.lock().unwrap_or_else(|e| e.into_inner());
        if paused {
            set.insert(group);
        } else {
            set.remove(&group);
        }
    }

    pub fn replication_paused(&self, group: u64) -> bool {
        self.paused.lock().unwrap_or_else(|e| e.into_inner()).contains(&group)
    }

    /// Asks `target` (at `addr`) to campaign for the leadership of `group`
    /// at once. `Err` says why it did not (unreachable, or refused).
    pub async fn timeout_now(
        &self,
        group: u64,
        target: NodeId,
        addr: &str,
        req: &TimeoutNow,
        timeout: Duration,
    ) -> Result<(), String> {
        let channel = self.channel(target, addr).map_err(|e| format!("bad address {addr:?}: {e}"))?;
        let msg = seal(self.cluster_id.clone(), group, rmp_serde::to_vec(req).expect("a TimeoutNow encodes"));
        let reply = tokio::time::timeout(timeout, RaftTransportClient::new(channel).timeout_now(msg))
            .await
            .map_err(|_| format!("no answer within {timeout:?}"))?
            .map_err(|s| s.to_string())?
            .into_inner();
        verify(&reply)?;
        self.answered(target);
        rmp_serde::from_slice::<Result<(), String>>(&reply.payload).map_err(|e| format!("undecodable reply: {e}"))?
    }

    fn answered(&self, id: NodeId) {
        self.last_answer.lock().unwrap_or_else(|e| e.into_inner()).insert(id, Instant::now());
    }

    /// Whether `id` answered a Raft RPC within `window`.
    pub fn answered_within(&self, id: NodeId, window: Duration) -> bool {
        let last = self.last_answer.lock().unwrap_or_else(|e| e.into_inner()).get(&id).copied();
        last.is_some_and(|t| t.elapsed() <= window)
    }

    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// The eager AppendEntries sent and their replies ([`crate::raft::eager`]).
    pub fn eager_replies(&self) -> &EagerReplies {
        &self.eager_replies
    }

    /// The commit notices this node answers for its followers.
    pub fn commit_notices(&self) -> &CommitNotices {
        &self.commit_notices
    }

    /// The channel to `id` at `addr` (reconnecting if its address changed).
    pub fn channel(&self, id: NodeId, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((known, ch)) = channels.get(&id) {
            if known == addr {
                return Ok(ch.clone());
            }
        }
        let ch = Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .connect_lazy();
        channels.insert(id, (addr.to_string(), ch.clone()));
        Ok(ch)
    }
}

/// The network factory of one group.
pub struct GroupNetwork {
    pub group: u64,
    pub peers: Arc<Peers>,
}

impl RaftNetworkFactory<TypeConfig> for GroupNetwork {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerConnection {
        PeerConnection {
            group: self.group,
            target,
            cluster_id: self.peers.cluster_id().to_string(),
            channel: self.peers.channel(target, &node.addr).map_err(|e| e.to_string()),
            peers: self.peers.clone(),
            failed_transfers: 0,
            refused_for_room: Default::default(),
        }
    }
}

/// One group's link to one peer.
#[derive(Clone)]
pub struct PeerConnection {
    group: u64,
    target: NodeId,
    cluster_id: String,
    channel: Result<Channel, String>,
    peers: Arc<Peers>,
    /// Snapshot transfers in a row that failed on this node's snapshot
    /// data or for want of room on the peer (see [`failed_transfer_pause`]).
    failed_transfers: u32,
    /// The peer refused a request for want of a resource
    /// (`RESOURCE_EXHAUSTED`: no disk room for a snapshot chunk).
    refused_for_room: Arc<AtomicBool>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TransportError(String);

impl PeerConnection {
    async fn call<Req, Resp, E, F, Fut>(
        &self,
        req: &Req,
        option: RPCOption,
        send: F,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
        F: FnOnce(RaftTransportClient<Channel>, RaftMessage) -> Fut,
        Fut: Future<Output = Result<tonic::Response<RaftMessage>, tonic::Status>>,
    {
        let channel = self
            .channel
            .clone()
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&TransportError(format!("bad peer address: {e}")))))?;
        let payload =
            rmp_serde::to_vec(req).map_err(|e| RPCError::Network(NetworkError::new(&TransportError(e.to_string()))))?;
        let msg = seal(self.cluster_id.clone(), self.group, payload);
        let client = RaftTransportClient::new(channel)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX);
        let reply = match tokio::time::timeout(option.hard_ttl(), send(client, msg)).await {
            Err(_) => {
                let e =
                    TransportError(format!("raft rpc to node {} timed out after {:?}", self.target, option.hard_ttl()));
                return Err(RPCError::Network(NetworkError::new(&e)));
            }
            Ok(Err(status)) => {
                let e = TransportError(format!("raft rpc to node {} (group {}): {status}", self.target, self.group));
                return Err(match status.code() {
                    tonic::Code::Unavailable | tonic::Code::Unknown => RPCError::Unreachable(Unreachable::new(&e)),
                    tonic::Code::ResourceExhausted => {
                        self.refused_for_room.store(true, Ordering::Relaxed);
                        RPCError::Unreachable(Unreachable::new(&e))
                    }
                    _ => RPCError::Network(NetworkError::new(&e)),
                });
            }
            Ok(Ok(reply)) => reply.into_inner(),
        };
        if let Err(e) = verify(&reply) {
            let e = TransportError(format!("raft reply from node {} (group {}): {e}", self.target, self.group));
            return Err(RPCError::Network(NetworkError::new(&e)));
        }
        self.peers.answered(self.target);
        let result: Result<Resp, E> = rmp_serde::from_slice(&reply.payload).map_err(|e| {
            RPCError::Network(NetworkError::new(&TransportError(format!("undecodable raft reply: {e}"))))
        })?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

/// How long a snapshot chunk may take to be answered: openraft's default
/// `install_snapshot_timeout`, which is now [`SNAPSHOT_CHUNK_CAP`].
const CHUNK_TTL: Duration = Duration::from_millis(200);

/// openraft's `install_snapshot_timeout`, the deadline it puts around each
/// chunk: only a cap, since the last chunk's answer waits for the follower
/// to install the whole snapshot ([`chunk_ttl`]).
pub const SNAPSHOT_CHUNK_CAP: Duration = Duration::from_secs(3600);

/// The deadline of a snapshot chunk: [`CHUNK_TTL`], and for the last one
/// also the install it waits for, allowed 5 s plus 1 s per 16 MiB of the
/// snapshot (a 124 MB image installed in ~1.4 s on a 2-core machine under
/// no load). With openraft's 200 ms for every chunk, the last chunk of
/// such an image timed out, the retried chunk found the transfer over, and
/// the whole image was sent again.
fn chunk_ttl(rpc: &InstallSnapshotRequest<TypeConfig>) -> Duration {
    if !rpc.done {
        return CHUNK_TTL;
    }
    let bytes = rpc.offset + rpc.data.len() as u64;
    CHUNK_TTL + Duration::from_secs(5 + bytes / (16 << 20))
}

/// How long a transfer waits after the `n`-th transfer in a row that failed
/// on this node's snapshot data or for want of room on the follower,
/// before the follower is offered a snapshot again: an image that fails (a
/// full disk, say) is a scan of the whole state, and a follower without
/// room will not have it the next second either. 1 s, doubling up to 30 s.
fn failed_transfer_pause(n: u32) -> Duration {
    Duration::from_secs(1u64 << n.saturating_sub(1).min(5)).min(Duration::from_secs(30))
}

impl PeerConnection {
    /// The chunked transfer of [`PeerConnection::full_snapshot`], and its
    /// handling of snapshot data this node cannot read and of a follower
    /// without room for it.
    async fn send_snapshot(
        &mut self,
        vote: Vote<NodeId>,
        snapshot: Snapshot<TypeConfig>,
        option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let id = snapshot.meta.snapshot_id.clone();
        self.refused_for_room.store(false, Ordering::Relaxed);
        // Cancelling is `full_snapshot`'s business.
        let never = std::future::pending::<ReplicationClosed>();
        let e = match Chunked::send_snapshot(self, vote, snapshot, never, option).await {
            Ok(response) => {
                self.failed_transfers = 0;
                return Ok(response);
            }
            Err(e) => e,
        };
        let why = match &e {
            StreamingError::StorageError(_) => format!("could not read the snapshot for node {}", self.target),
            _ if self.refused_for_room.load(Ordering::Relaxed) => {
                format!("node {} has no room for the snapshot", self.target)
            }
            _ => return Err(e),
        };
        self.failed_transfers += 1;
        let pause = failed_transfer_pause(self.failed_transfers);
        tracing::error!(group = self.group, snapshot = %id, error = %e, "{why}; retrying in {pause:?}");
        tokio::time::sleep(pause).await;
        let e = TransportError(format!("snapshot {id}: {why}: {e}"));
        Err(StreamingError::Network(NetworkError::new(&e)))
    }

    /// Sends the follower an empty AppendEntries from the leader of `vote`
    /// every heartbeat, forever: no previous entry, no entries, no commit
    /// index. A follower accepts it whatever its log holds, and it changes
    /// nothing but the follower's knowledge that the leader is alive. It is
    /// held back like any AppendEntries during a leader transfer, and
    /// answers are ignored (a follower with a higher term refuses the next
    /// chunk too, and the transfer reports that).
    async fn keep_follower(mut self, vote: Vote<NodeId>) -> std::convert::Infallible {
        let every = self.peers.heartbeat;
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let beat = AppendEntriesRequest { vote, prev_log_id: None, entries: vec![], leader_commit: None };
            if let Err(e) = self.append_entries(beat, RPCOption::new(every * 5)).await {
                tracing::debug!(group = self.group, target = self.target, error = %e, "a heartbeat during a snapshot transfer failed");
            }
        }
    }

    /// Sends `rpc` to the peer (unless the group's replication is held back).
    pub async fn send_append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        if self.peers.replication_paused(self.group) {
            let e = TransportError(format!("group {} holds back AppendEntries during a leader transfer", self.group));
            return Err(RPCError::Unreachable(Unreachable::new(&e)));
        }
        self.peers.commit_notices.telling(self.group, &rpc);
        let reply = self.call(&rpc, option, |mut c, m| async move { c.append_entries(m).await }).await;
        if let Ok(AppendEntriesResponse::Success) = reply {
            self.peers.commit_notices.accepted(self.group, self.target, &rpc, Instant::now());
        }
        reply
    }

    /// Sends the commit notice still owed to the follower after
    /// [`OWED_DELAY`], unless a real request carried its commit index
    /// meanwhile (see [`crate::raft::commit_notice`]).
    async fn deliver_owed(mut self) {
        tokio::time::sleep(OWED_DELAY).await;
        let Some(notice) = self.peers.commit_notices.take_owed(self.group, self.target) else { return };
        if let Err(e) = self.send_append_entries(notice, RPCOption::new(self.peers.heartbeat)).await {
            tracing::debug!(group = self.group, target = self.target, error = %e, "an owed commit notice failed");
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        // The same request already went out eagerly: its acceptance answers
        // this one too (see `crate::raft::eager`).
        let eager = &self.peers.eager_replies;
        if let Some(reply) = eager.claim(self.group, self.target, &rpc) {
            if eager.accepted(self.group, reply, option.soft_ttl()).await {
                return Ok(AppendEntriesResponse::Success);
            }
        }
        // A commit notice to a follower that keeps receiving entries is
        // answered here (see `crate::raft::commit_notice`).
        if !self.peers.replication_paused(self.group) {
            if let Notice::Answer { owe } =
                self.peers.commit_notices.answer(self.group, self.target, &rpc, Instant::now())
            {
                if owe {
                    tokio::spawn(self.clone().deliver_owed());
                }
                return Ok(AppendEntriesResponse::Success);
            }
        }
        self.send_append_entries(rpc, option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>>
    {
        // openraft's own deadline for a chunk is a cap (see
        // `SNAPSHOT_CHUNK_CAP`); this is the one that applies.
        let ttl = chunk_ttl(&rpc).min(option.hard_ttl());
        self.call(&rpc, RPCOption::new(ttl), |mut c, m| async move { c.install_snapshot(m).await }).await
    }

    /// Sends `snapshot` in chunks, as openraft's default does, with two
    /// differences.
    ///
    /// - The follower hears from the leader every heartbeat meanwhile
    ///   ([`PeerConnection::keep_follower`]). While a snapshot is in flight
    ///   to a follower, openraft 0.9 sends it no heartbeat, only the commit
    ///   index when that moves, and a chunk does not count as the leader's
    ///   contact (only the last one reaches the follower's Raft core). In a
    ///   group without writes or closed-timestamp epochs, a transfer longer
    ///   than the election timeout (the wait for an image being written
    ///   included) made the follower campaign: its higher term deposed the
    ///   leader, and the next leader started the transfer again, for ever
    ///   once the image took longer than an election timeout.
    /// - An error reading the snapshot's data on this node fails only this
    ///   transfer: openraft would report it as a storage error and stop the
    ///   group. After a pause ([`failed_transfer_pause`]) it is reported
    ///   as a network error, and the transfer is retried with a new image
    ///   (an image is the only snapshot data that can fail while being
    ///   read; a stored snapshot is verified before it is offered, and a
    ///   failed image is never offered again). A transfer the follower
    ///   refused for want of disk room pauses the same way, rather than
    ///   sending it chunks twice a second.
    ///
    /// `cancel` (the leader's replication to this follower ended) stops the
    /// transfer and the heartbeats at once.
    async fn full_snapshot(
        &mut self,
        vote: Vote<NodeId>,
        snapshot: Snapshot<TypeConfig>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let heartbeats = self.clone().keep_follower(vote);
        tokio::select! {
            sent = self.send_snapshot(vote, snapshot, option) => sent,
            closed = cancel => Err(StreamingError::Closed(closed)),
            never = heartbeats => match never {},
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(&rpc, option, |mut c, m| async move { c.vote(m).await }).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flipped_payload_byte_fails_the_checksum() {
        let msg = seal("c".into(), 7, b"a raft payload".to_vec());
        assert_eq!(verify(&msg), Ok(()));
        let mut bad = msg.clone();
        bad.payload[3] ^= 0x10;
        assert!(verify(&bad).unwrap_err().contains("checksum mismatch"), "{:?}", verify(&bad));
        let unsealed = RaftMessage { crc32: None, ..msg };
        assert!(verify(&unsealed).unwrap_err().contains("no payload checksum"));
    }

    #[test]
    fn the_last_snapshot_chunk_has_time_for_the_install() {
        let chunk = |offset: u64, len: usize, done: bool| InstallSnapshotRequest::<TypeConfig> {
            vote: Vote::new_committed(1, 1),
            meta: Default::default(),
            offset,
            data: vec![0; len],
            done,
        };
        assert_eq!(chunk_ttl(&chunk(0, 3 << 20, false)), CHUNK_TTL);
        assert_eq!(chunk_ttl(&chunk(120 << 20, 3 << 20, false)), CHUNK_TTL);
        assert_eq!(chunk_ttl(&chunk(0, 1000, true)), CHUNK_TTL + Duration::from_secs(5));
        assert_eq!(chunk_ttl(&chunk(121 << 20, 3 << 20, true)), CHUNK_TTL + Duration::from_secs(5 + 7));
        assert_eq!(chunk_ttl(&chunk(2 << 30, 0, true)), CHUNK_TTL + Duration::from_secs(5 + 128));
    }

    #[test]
    fn failed_transfers_are_retried_less_and_less_often() {
        let pauses: Vec<u64> = (1..=8).map(|n| failed_transfer_pause(n).as_secs()).collect();
        assert_eq!(pauses, [1, 2, 4, 8, 16, 30, 30, 30]);
    }

    #[test]
    fn paused_groups_are_tracked_per_group() {
        let peers = Peers::new("c".into(), Duration::from_millis(100));
        peers.pause_replication(2, true);
        assert!(peers.replication_paused(2) && !peers.replication_paused(1));
        peers.pause_replication(2, false);
        assert!(!peers.replication_paused(2));
    }
}
