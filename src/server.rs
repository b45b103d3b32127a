//! A node: the RocksDB engine, the range catalog, one Raft group (log,
//! state machine, sequencer) per range, and the gRPC services, wired
//! together. [`Node::start`] bootstraps a new data directory or restarts
//! from an existing one; [`serve`] runs the gRPC server until shutdown.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arbor_storage::{Durability, Engine, ReadView, Rocks, WriteBatch};
use openraft::BasicNode;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use crate::config::{Config, Peer};
use crate::error::{Error, Result};
use crate::hlc::{Clock, Hlc, OffsetClock};
use crate::keys::Key;
use crate::raft::eager::EagerReplication;
use crate::raft::log_store::LogStore;
use crate::raft::network::{GroupNetwork, Peers, TimeoutNow};
use crate::raft::read_index::{confirm_leadership, ReadBarrier, ReadIndexError};
use crate::raft::snapshot_policy::{LogGrowth, SnapshotPolicy};
use crate::raft::state_machine::StateMachine;
use crate::raft::{MembershipConfig, NodeId, Raft};
use crate::routing::{Catalog, RangeDesc, Span};
use crate::scheduler::VshardProgress;
use crate::sequencer::batcher::BatcherConfig;
use crate::sequencer::driver::{self, Committed, DriverConfig, SequencerHandle};
use crate::sequencer::{snapshot, GroupShared, GroupStateMachine};
use crate::tree::{TreeRead, Txn, VersionedTree};

/// How a read is served; see [`Node::read`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadMode {
    Linearizable,
    SnapshotAt(u64),
    BoundedStaleness { max_ms: u64 },
}

/// What a data directory remembers about its node, written once at
/// bootstrap under `Key::NodeMeta`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeMeta {
    pub cluster_id: String,
    pub node_id: NodeId,
    pub catalog: Catalog,
    pub members: Vec<(NodeId, String)>,
}

/// One Raft group hosted on this node.
pub struct Group {
    pub range: RangeDesc,
    pub raft: Raft,
    pub sequencer: SequencerHandle,
    pub shared: Arc<GroupShared>,
    pub vshards: u32,
    /// The vshard executors' progress (the status API's `vshard_lag`).
    pub vshard_progress: VshardProgress,
    /// Snapshots this node installed for the group since it started.
    pub snapshots_installed: Arc<AtomicU64>,
    /// Eager replication of this group's entries (`None` when it is off).
    pub eager: Option<Arc<EagerReplication>>,
    /// The log entries' segment files (`None`: they are RocksDB keys).
    pub log_files: Option<Arc<crate::raft::log_store::FileLog>>,
    /// Set while this node hands the group's leadership over: new writes are
    /// refused, retryably, so that the log stops growing.
    transferring: AtomicBool,
    /// Linearizable reads share read-index rounds through this.
    read_barrier: ReadBarrier<ReadIndexError>,
}

/// How long a leader transfer waits for the target to hold the leader's
/// whole log before it is refused.
pub const TRANSFER_CATCH_UP_TIMEOUT: Duration = Duration::from_secs(10);

/// Undoes a leader transfer's pauses however the transfer ends (including
/// when its caller goes away mid-way).
struct TransferGuard<'a> {
    group: &'a Group,
    peers: &'a Peers,
}

impl TransferGuard<'_> {
    fn pause(&self, paused: bool) {
        self.peers.pause_replication(self.group.range.group, paused);
        self.group.raft.runtime_config().heartbeat(!paused);
    }
}

impl Drop for TransferGuard<'_> {
    fn drop(&mut self) {
        self.pause(false);
        self.group.transferring.store(false, Ordering::Release);
    }
}

/// Whether the leader's metrics show `to` holding the leader's whole log.
fn caught_up(m: &openraft::RaftMetrics<NodeId, BasicNode>, to: NodeId) -> bool {
    let matched = m.replication.as_ref().and_then(|r| r.get(&to).cloned().flatten()).map(|l| l.index);
    matched.is_some() && matched >= m.last_log_index
}

pub struct Node {
    pub config: Config,
    pub meta: NodeMeta,
    pub engine: Arc<Rocks>,
    pub hlc: Arc<Hlc>,
    /// The HLC's clock: the injected one plus a skew that only the test-only
    /// clock admin RPC changes.
    pub clock: Arc<OffsetClock<Arc<dyn Clock>>>,
    pub groups: BTreeMap<u64, Group>,
    peers: Arc<Peers>,
    /// True once the node is shutting down: long-lived request streams
    /// (`KvBatch`) stop taking calls and end once their calls have
    /// answered, so that they do not hold the graceful shutdown.
    stopping: tokio::sync::watch::Sender<bool>,
}

fn raft_config(config: &Config) -> Result<Arc<openraft::Config>> {
    let c = openraft::Config {
        cluster_name: config.cluster_id.clone(),
        heartbeat_interval: config.raft.heartbeat_ms,
        election_timeout_min: config.raft.election_timeout_min_ms,
        election_timeout_max: config.raft.election_timeout_max_ms,
        // The log is purged only up to a snapshot, which is taken at the
        // applied index; every vshard's watermark equals it (epochs commit
        // all vshards at once), so nothing past a watermark is ever purged.
        // Snapshots are asked for by `snapshot_when_due` (see
        // `raft::snapshot_policy`), not by openraft's entry count.
        snapshot_policy: openraft::SnapshotPolicy::Never,
        max_in_snapshot_log_to_keep: config.raft.keep_entries_after_snapshot,
        max_payload_entries: 64,
        // Each snapshot chunk gets its own deadline in the network (the
        // last one waits for the install); openraft's is only a cap.
        install_snapshot_timeout: crate::raft::network::SNAPSHOT_CHUNK_CAP.as_millis() as u64,
        ..Default::default()
    };
    Ok(Arc::new(c.validate().map_err(|e| Error::InvalidArgument(format!("raft config: {e}")))?))
}

impl Node {
    /// Opens the data directory and starts every group. A fresh directory is
    /// bootstrapped from the config (peers, initial ranges); an existing one
    /// must belong to the same cluster and node id.
    pub async fn start(config: Config, clock: Arc<dyn Clock>) -> Result<Arc<Node>> {
        config.validate()?;
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            Error::InvalidArgument(format!("cannot create data dir {}: {e}", config.data_dir.display()))
        })?;
        let path = config.data_dir.join("db");
        let rocks_options = config.storage.rocks_options(config.node_id);
        let memtable_bytes = rocks_options.write_buffer_bytes;
        let engine = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || Rocks::open(&path, &rocks_options))
                .await
                .map_err(|e| Error::Fatal(e.to_string()))??
        };
        if config.storage.direct_background_writes && !engine.direct_background_writes() {
            tracing::warn!(
                path = %path.display(),
                "the file system refuses O_DIRECT: flushes and compactions write through the page cache"
            );
        }
        // This node's share of storage.stagger_percent, for every group.
        let policy = SnapshotPolicy {
            every_entries: config.staggered(config.raft.snapshot_every_entries),
            every_bytes: config.staggered(config.raft.snapshot_every_bytes),
        };
        if config.storage.stagger_percent > 0 {
            tracing::info!(
                memtable_bytes,
                snapshot_every_entries = policy.every_entries,
                snapshot_every_bytes = policy.every_bytes,
                "memtables and snapshot thresholds staggered for this node (storage.stagger_percent)"
            );
        }
        let engine = Arc::new(engine);
        let (meta, fresh) = match engine.get(&Key::NodeMeta.encode())? {
            Some(bytes) => {
                let meta: NodeMeta =
                    rmp_serde::from_slice(&bytes).map_err(|e| Error::Corruption(format!("node meta: {e}")))?;
                if meta.cluster_id != config.cluster_id || meta.node_id != config.node_id {
                    return Err(Error::InvalidArgument(format!(
                        "data dir {} belongs to node {} of cluster {:?}, not node {} of cluster {:?}",
                        config.data_dir.display(),
                        meta.node_id,
                        meta.cluster_id,
                        config.node_id,
                        config.cluster_id
                    )));
                }
                (meta, false)
            }
            None => {
                let splits: Vec<Vec<u8>> = config.initial_ranges.iter().map(|s| s.as_bytes().to_vec()).collect();
                let members = config.parsed_peers()?.into_iter().map(|Peer { id, addr }| (id, addr)).collect();
                let meta = NodeMeta {
                    cluster_id: config.cluster_id.clone(),
                    node_id: config.node_id,
                    catalog: Catalog::from_splits(&splits)?,
                    members,
                };
                let mut b = WriteBatch::new();
                b.put(Key::NodeMeta.encode(), rmp_serde::to_vec(&meta).expect("encodable"));
                engine.write(b, Durability::Sync)?;
                (meta, true)
            }
        };
        if !fresh {
            let engine = engine.clone();
            let catalog = meta.catalog.clone();
            let group_of = move |key: &[u8]| Ok(catalog.route(key)?.group);
            let converted =
                tokio::task::spawn_blocking(move || crate::tree::legacy::convert_stored_versions(&*engine, &group_of))
                    .await
                    .map_err(|e| Error::Fatal(e.to_string()))??;
            if converted > 0 {
                tracing::info!(keys = converted, "stored each key's versions as a current version and its history");
            }
        }
        let unsafe_switches = &config.unsafe_test_only;
        if unsafe_switches.any() {
            tracing::warn!(?unsafe_switches, "TEST-ONLY UNSAFE SWITCHES ARE ON: this node breaks Arbor's guarantees");
        }
        if let Some(ratio) = config.raft.snapshot_log_ratio {
            tracing::warn!(
                ratio,
                "raft.snapshot_log_ratio no longer has an effect (snapshots record the applied position instead \
                 of copying the state); remove it from the configuration"
            );
        }
        let durability = if unsafe_switches.volatile_writes { Durability::Unlogged } else { Durability::Sync };
        let clock = Arc::new(OffsetClock::new(clock));
        let hlc = Arc::new(Hlc::new(clock.clone(), config.max_clock_offset_ms));
        let peers = Peers::new(config.cluster_id.clone(), Duration::from_millis(config.raft.heartbeat_ms));
        let rcfg = raft_config(&config)?;
        let driver_cfg = DriverConfig {
            batcher: BatcherConfig {
                max_txns: config.epoch.max_txns_per_epoch,
                max_bytes: config.epoch.max_bytes_per_epoch,
                window_ms: config.epoch.window_ms,
                max_inflight: config.epoch.max_inflight,
            },
            compress_threshold: config.epoch.compress_threshold,
            close_interval_ms: config.reads.close_interval_ms,
            version_retention_ms: config.reads.version_retention_ms,
        };
        let mut groups = BTreeMap::new();
        let record_cache_bytes =
            usize::try_from(config.storage.record_cache_bytes / meta.catalog.ranges().len().max(1) as u64)
                .unwrap_or(usize::MAX);
        for range in meta.catalog.ranges() {
            let dyn_engine: Arc<dyn Engine> = engine.clone();
            let shared = Arc::new(GroupShared::default());
            let sm = {
                let (range, e, shared, hlc, v) =
                    (range.clone(), dyn_engine.clone(), shared.clone(), hlc.clone(), config.vshards);
                let (snapshots, reserve) = (config.data_dir.join("snapshots"), config.storage.snapshot_reserve_bytes);
                let inline_max = config.epoch.inline_max_txns;
                tokio::task::spawn_blocking(move || {
                    GroupStateMachine::open(range, e, v, shared, hlc, durability)?
                        .with_record_cache(record_cache_bytes)
                        .with_inline_max_txns(inline_max)
                        .with_snapshot_dir(snapshots)
                        .map(|sm| sm.with_snapshot_reserve(reserve))
                })
                .await
                .map_err(|e| Error::Fatal(e.to_string()))??
            };
            let network = GroupNetwork { group: range.group, peers: peers.clone() };
            let vshard_progress = sm.scheduler().progress();
            // Apply batches reach the disk in memtable flushes (see
            // "Durability" in `sequencer::apply`): after a crash the state
            // found on disk can be behind, and openraft re-applies the
            // committed entries after it while it starts the group.
            let applied_on_disk = sm.applied().last_applied.map_or(0, |l| l.index);
            let state_machine = StateMachine::new(sm);
            let snapshots_installed = state_machine.snapshots_installed();
            let mut log_store = LogStore::new(range.group, dyn_engine, durability);
            let log_dir = config.data_dir.join("raft-log").join(range.group.to_string());
            let segment_bytes = config.raft.log_segment_bytes;
            // The test-only volatile switch needs writes a kill loses: the
            // entries then stay in RocksDB, written without its WAL.
            log_store = if config.raft.log_files && !unsafe_switches.volatile_writes {
                tokio::task::spawn_blocking(move || log_store.with_segment_log(&log_dir, segment_bytes)).await
            } else {
                tokio::task::spawn_blocking(move || {
                    log_store.move_log_to_engine(&log_dir, segment_bytes).map(|()| log_store)
                })
                .await
            }
            .map_err(|e| Error::Fatal(e.to_string()))?
            .map_err(Error::Fatal)?;
            let log_files = log_store.file_log();
            let eager = config
                .raft
                .eager_replication
                .then(|| EagerReplication::new(config.node_id, range.group, peers.clone()));
            if let Some(eager) = &eager {
                log_store = log_store.with_eager_replication(eager.clone());
            }
            let appended = log_store.appended_bytes();
            let raft = Raft::new(config.node_id, rcfg.clone(), network, log_store, state_machine)
                .await
                .map_err(|e| Error::Fatal(format!("group {}: {e}", range.group)))?;
            if let Some(eager) = &eager {
                eager.set_metrics(raft.metrics());
            }
            if !policy.never() {
                tokio::spawn(snapshot_when_due(range.group, raft.clone(), appended, policy));
            }
            if fresh && !config.join {
                let members: BTreeMap<NodeId, BasicNode> =
                    meta.members.iter().map(|(id, addr)| (*id, BasicNode { addr: addr.clone() })).collect();
                if let Err(e) = raft.initialize(members).await {
                    tracing::info!(group = range.group, "not initializing: {e}");
                }
            }
            let sequencer = driver::spawn(
                range.group,
                config.node_id,
                raft.clone(),
                shared.clone(),
                hlc.clone(),
                driver_cfg.clone(),
            );
            tracing::info!(
                node = config.node_id,
                group = range.group,
                range = %range.display(),
                applied_on_disk,
                applied = shared.applied_index.load(std::sync::atomic::Ordering::Acquire),
                "group started"
            );
            let read_barrier = ReadBarrier::spawn({
                let (raft, peers, group, me) = (raft.clone(), peers.clone(), range.group, config.node_id);
                let ttl = Duration::from_millis(config.raft.heartbeat_ms);
                move || {
                    let (raft, peers) = (raft.clone(), peers.clone());
                    async move { confirm_leadership(&raft, &peers, group, me, ttl).await }
                }
            });
            let group = Group {
                range: range.clone(),
                raft,
                sequencer,
                shared,
                vshards: config.vshards,
                vshard_progress,
                snapshots_installed,
                eager,
                log_files,
                transferring: AtomicBool::new(false),
                read_barrier,
            };
            groups.insert(range.group, group);
        }
        let stopping = tokio::sync::watch::Sender::new(false);
        Ok(Arc::new(Node { config, meta, engine, hlc, clock, groups, peers, stopping }))
    }

    pub fn node_id(&self) -> NodeId {
        self.meta.node_id
    }

    /// This node's links to its peers, shared by its groups.
    pub fn peers(&self) -> &Peers {
        &self.peers
    }

    /// Refuses a snapshot chunk of `bytes` for `group` that would leave less
    /// than `storage.snapshot_reserve_bytes` free on the data directory's
    /// file system: a disk a snapshot filled would fail the log appends of
    /// every group this node holds, not only the one catching up.
    pub fn check_snapshot_room(&self, group: u64, bytes: u64) -> Result<()> {
        let reserve = self.config.storage.snapshot_reserve_bytes;
        std::fs::File::open(&self.config.data_dir)
            .and_then(|dir| snapshot::keep_reserve(&dir, reserve, bytes, "a snapshot being received"))
            .map_err(|e| Error::Overloaded(format!("node {}: group {group}: {e}", self.node_id())))
    }

    pub fn group(&self, id: u64) -> Result<&Group> {
        self.groups.get(&id).ok_or_else(|| Error::NoRange { key: format!("<group {id}>") })
    }

    /// The group holding every span of a request.
    pub fn route(&self, spans: &[Span<'_>]) -> Result<&Group> {
        let range = self.meta.catalog.route_spans(spans)?;
        self.group(range.group)
    }

    /// Sequences a transaction in the group that holds all its keys.
    pub async fn submit(&self, txn: Txn) -> Result<(u64, Committed)> {
        let spans: Vec<Span<'_>> = txn
            .footprint()
            .map(|f| match f {
                crate::tree::Footprint::Key(k) => Span::Key(k),
                crate::tree::Footprint::Range(r) => Span::Range(&r.start, &r.end),
            })
            .collect();
        let group = self.route(&spans)?;
        let id = group.range.group;
        if group.transferring.load(Ordering::Acquire) {
            return Err(Error::Unavailable(format!("group {id} is handing its leadership over; retry")));
        }
        // A group stopped by a storage fault (full disk, corruption) keeps its
        // last metrics, which would otherwise read as "not the leader, the
        // leader is this node": name the fault instead.
        if let Err(fatal) = &group.raft.metrics().borrow().running_state {
            return Err(Error::Unavailable(format!("group {id} is stopped on node {}: {fatal}", self.node_id())));
        }
        let sequencer = group.sequencer.clone();
        Ok((id, sequencer.submit(txn).await?))
    }

    /// A read of `group` in `mode`; returns `f`'s result and the HLC stamp
    /// of the state it saw.
    ///
    /// - Linearizable: confirms leadership with a quorum (read index), waits
    ///   until this node has applied up to it, then reads the latest state.
    /// - Snapshot at `t`: waits (up to `timeout`) until this replica's closed
    ///   timestamp covers `t`, then reads the versions at `t`.
    /// - Bounded staleness `d`: waits (up to `timeout`) until this replica's
    ///   closed timestamp is no older than `d`, then reads the latest state.
    ///
    /// `f` runs on one engine snapshot, so it sees whole epochs only.
    pub async fn read<T: Send + 'static>(
        &self,
        group: &Group,
        mode: ReadMode,
        timeout: Option<Duration>,
        f: impl FnOnce(&dyn TreeRead) -> Result<T> + Send + 'static,
    ) -> Result<(T, u64)> {
        let g = group.range.group;
        let timeout = timeout.unwrap_or(Duration::from_millis(self.config.reads.wait_timeout_ms));
        match mode {
            ReadMode::Linearizable if self.config.unsafe_test_only.stale_reads => {
                // Test-only: skip the read index and serve whatever is applied here.
            }
            ReadMode::Linearizable => {
                let round = group.read_barrier.wait().await;
                let round = round.ok_or_else(|| Error::Unavailable(format!("group {g} is shutting down")))?;
                match round {
                    Ok(()) => {}
                    Err(ReadIndexError::NotLeader { leader, leader_addr }) => {
                        return Err(Error::NotLeader { group: g, leader, leader_addr })
                    }
                    Err(ReadIndexError::Unavailable(why)) => return Err(Error::Unavailable(why)),
                }
            }
            ReadMode::SnapshotAt(t) => self.wait_closed(group, t, timeout).await?,
            ReadMode::BoundedStaleness { max_ms } => {
                let oldest = crate::hlc::pack(self.clock.now_ms().saturating_sub(max_ms), 0);
                self.wait_closed(group, oldest, timeout).await?
            }
        }
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || {
            let view = engine.snapshot();
            let applied = crate::sequencer::apply::read_applied(view.as_ref(), g)?;
            match mode {
                ReadMode::SnapshotAt(t) => {
                    if t < applied.gc_horizon {
                        return Err(Error::OutOfRange { group: g, requested: t, oldest: applied.gc_horizon });
                    }
                    Ok((f(&VersionedTree::new(view.as_ref(), g, t))?, t))
                }
                _ => Ok((f(&VersionedTree::latest(view.as_ref()))?, applied.stamp)),
            }
        })
        .await
        .map_err(|e| Error::Fatal(e.to_string()))?
    }

    /// Waits until `group`'s closed timestamp on this replica reaches `stamp`.
    pub async fn wait_closed(&self, group: &Group, stamp: u64, timeout: Duration) -> Result<()> {
        let mut closed = group.shared.closed.subscribe();
        let reached = tokio::time::timeout(timeout, closed.wait_for(|&c| c >= stamp)).await.map(|r| r.is_ok());
        match reached {
            Ok(true) => Ok(()),
            Ok(false) => Err(Error::Unavailable(format!("group {} is shutting down", group.range.group))),
            Err(_) => Err(Error::Timeout(format!(
                "group {}: this replica's closed timestamp {} has not reached stamp {stamp} within {} ms \
                 (the replica may be cut off from the group's leader, or the stamp is in the future)",
                group.range.group,
                *closed.borrow(),
                timeout.as_millis()
            ))),
        }
    }

    /// Stops every group's Raft and flushes storage.
    /// Resolves once the node starts shutting down (at once if it has).
    pub async fn stopping(&self) {
        let mut rx = self.stopping.subscribe();
        let _ = rx.wait_for(|&stopping| stopping).await;
    }

    pub async fn shutdown(&self) {
        for (id, g) in &self.groups {
            if let Err(e) = g.raft.shutdown().await {
                tracing::warn!(group = id, "raft shutdown: {e}");
            }
        }
        if let Err(e) = self.engine.flush() {
            tracing::error!("flush on shutdown: {e}");
        }
    }

    /// Adds `id` at `addr` to `group`: as a learner first (returns once it
    /// has caught up), then as a voter (joint consensus). Leader only.
    /// Returns the membership the change committed.
    pub async fn add_node(&self, group: &Group, id: NodeId, addr: String) -> Result<MembershipConfig> {
        let g = group.range.group;
        if addr.is_empty() || !addr.contains(':') {
            return Err(Error::InvalidArgument(format!("node address {addr:?} is not host:port")));
        }
        group
            .raft
            .add_learner(id, BasicNode { addr }, true)
            .await
            .map_err(|e| crate::raft::client_write_error(g, e))?;
        let done = group
            .raft
            .change_membership(openraft::ChangeMembers::AddVoterIds([id].into()), false)
            .await
            .map_err(|e| crate::raft::client_write_error(g, e))?;
        tracing::info!(group = g, node = id, "node added as voter");
        Ok(committed_membership(group, done.membership))
    }

    /// Removes `id` from `group`. Refused when the remaining voters this
    /// leader hears from would not be a quorum, unless `force`. Returns the
    /// membership the change committed.
    pub async fn remove_node(&self, group: &Group, id: NodeId, force: bool) -> Result<MembershipConfig> {
        let g = group.range.group;
        let m = group.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: std::collections::BTreeSet<NodeId> = membership.voter_ids().collect();
        let known = voters.contains(&id) || membership.learner_ids().any(|l| l == id);
        if !known {
            return Err(Error::InvalidArgument(format!("node {id} is not a member of group {g}")));
        }
        let remaining: Vec<NodeId> = voters.iter().copied().filter(|v| *v != id).collect();
        if remaining.is_empty() {
            return Err(Error::Refused(format!("node {id} is the last voter of group {g}")));
        }
        if m.current_leader == Some(self.node_id()) && !force {
            // A voter counts if it answered this node within two election
            // timeouts (any group's traffic counts: one connection per peer).
            let window = Duration::from_millis(2 * self.config.raft.election_timeout_max_ms);
            let live =
                remaining.iter().filter(|v| **v == self.node_id() || self.peers.answered_within(**v, window)).count();
            if live * 2 <= remaining.len() {
                return Err(Error::Refused(format!(
                    "removing node {id} from group {g} would leave {live} of {} remaining voters reachable, \
                     less than a quorum; use --force to remove it anyway",
                    remaining.len()
                )));
            }
        }
        let done = group
            .raft
            .change_membership(openraft::ChangeMembers::RemoveVoters([id].into()), false)
            .await
            .map_err(|e| crate::raft::client_write_error(g, e))?;
        tracing::info!(group = g, node = id, "node removed");
        Ok(committed_membership(group, done.membership))
    }

    /// Moves the leadership of `group` to the voter `to`; returns the new
    /// leader and its term. Leader only (a node that knows `to` already
    /// leads answers at once).
    ///
    /// openraft 0.9 has no leader transfer, so this is the closest safe
    /// equivalent built from its runtime switches:
    /// 1. new writes to the group are refused (retryably) so its log stops
    ///    growing, and the leader waits until `to` holds its whole log;
    /// 2. it holds back every AppendEntries of the group (heartbeats,
    ///    read-index probes, replication) for one leader lease (the maximum
    ///    election timeout) plus a heartbeat, so the followers' leases run out
    ///    while none of them has reached its own election timeout yet;
    /// 3. it asks `to` to campaign at once (`TimeoutNow`): `to` has the
    ///    longest log, so the other voters grant it their vote;
    /// 4. it waits until it sees the new leader, then lets everything through
    ///    again (also when the transfer fails or is abandoned).
    ///
    /// Raft's safety never depends on any of it — elections, votes and
    /// commits follow the usual rules; a transfer that does not work out
    /// (the target loses, another voter wins) ends in an ordinary election.
    pub async fn transfer_leader(&self, group: &Group, to: NodeId) -> Result<(NodeId, u64)> {
        let g = group.range.group;
        let me = self.node_id();
        if to == 0 {
            return Err(Error::InvalidArgument("a leader transfer needs the target node id (> 0)".into()));
        }
        let m = group.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership().clone();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        if !voters.contains(&to) {
            let what = if membership.learner_ids().any(|l| l == to) { "a learner" } else { "not a member" };
            return Err(Error::InvalidArgument(format!(
                "node {to} is {what} of group {g} (voters {voters:?}); only a voter can lead"
            )));
        }
        if m.current_leader == Some(to) {
            return Ok((to, m.current_term));
        }
        if m.current_leader != Some(me) {
            let leader_addr = m.current_leader.and_then(|l| membership.get_node(&l).map(|n| n.addr.clone()));
            return Err(Error::NotLeader { group: g, leader: m.current_leader, leader_addr });
        }
        let addr = membership.get_node(&to).map(|n| n.addr.clone()).unwrap_or_default();
        if group.transferring.swap(true, Ordering::AcqRel) {
            return Err(Error::Refused(format!("a leader transfer of group {g} is already under way")));
        }
        let guard = TransferGuard { group, peers: &self.peers };
        tracing::info!(group = g, to, term = m.current_term, "leader transfer: waiting for the target to catch up");

        // 1. The target holds the whole log, and stays so while paused.
        let deadline = Instant::now() + TRANSFER_CATCH_UP_TIMEOUT;
        let term = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let waited = group
                .raft
                .wait(Some(left))
                .metrics(|m| m.current_leader != Some(me) || caught_up(m, to), "target caught up")
                .await;
            let m = match waited {
                Ok(m) => m,
                Err(_) => {
                    let m = group.raft.metrics().borrow().clone();
                    let matched = m.replication.as_ref().and_then(|r| r.get(&to).cloned().flatten());
                    return Err(Error::Refused(format!(
                        "node {to} did not catch up with the leader of group {g} within {TRANSFER_CATCH_UP_TIMEOUT:?} \
                         (it holds the log up to {}, the leader up to {}); leadership not transferred",
                        matched.map_or("nothing".to_string(), |l| l.index.to_string()),
                        m.last_log_index.unwrap_or(0)
                    )));
                }
            };
            if m.current_leader != Some(me) {
                let leader_addr = m.current_leader.and_then(|l| membership.get_node(&l).map(|n| n.addr.clone()));
                return Err(Error::NotLeader { group: g, leader: m.current_leader, leader_addr });
            }
            guard.pause(true);
            let m = group.raft.metrics().borrow().clone();
            if m.current_leader == Some(me) && caught_up(&m, to) {
                break m.current_term;
            }
            // An entry slipped in before the pause: let it replicate first.
            guard.pause(false);
            tokio::time::sleep(Duration::from_millis(self.config.raft.heartbeat_ms)).await;
        };

        // 2. Let the followers' leader leases run out.
        let lease = Duration::from_millis(self.config.raft.election_timeout_max_ms + self.config.raft.heartbeat_ms);
        tracing::info!(group = g, to, term, ?lease, "leader transfer: replication paused until leases expire");
        tokio::time::sleep(lease).await;

        // 3. The target campaigns.
        let ask = TimeoutNow { leader: me, term };
        let rpc_timeout = Duration::from_millis(self.config.raft.election_timeout_max_ms);
        if let Err(e) = self.peers.timeout_now(g, to, &addr, &ask, rpc_timeout).await {
            return Err(Error::Unavailable(format!(
                "group {g}: node {to} did not start an election ({e}); node {me} still leads, retry"
            )));
        }

        // 4. Wait until this node sees a leader of a later term.
        let wait = Duration::from_millis(4 * self.config.raft.election_timeout_max_ms);
        let moved = group
            .raft
            .wait(Some(wait))
            .metrics(|m| m.current_term > term && m.current_leader.is_some_and(|l| l != me), "leadership moved")
            .await;
        drop(guard);
        match moved {
            Ok(m) if m.current_leader == Some(to) => {
                tracing::info!(group = g, to, term = m.current_term, "leader transfer done");
                Ok((to, m.current_term))
            }
            Ok(m) => Err(Error::Unavailable(format!(
                "group {g}: node {} won the election instead of node {to}; retry the transfer",
                m.current_leader.unwrap_or(0)
            ))),
            Err(_) => Err(Error::Unavailable(format!(
                "group {g}: leadership did not move to node {to} within {wait:?}; retry the transfer"
            ))),
        }
    }

    /// The receiving end of a leader transfer: campaigns at once if this
    /// node is a voter still following `req.leader` in `req.term` (a late or
    /// repeated request must not disturb a newer leader).
    pub async fn campaign_now(&self, group: &Group, req: TimeoutNow) -> Result<()> {
        let g = group.range.group;
        let me = self.node_id();
        let m = group.raft.metrics().borrow().clone();
        if m.current_leader == Some(me) {
            return Ok(());
        }
        if !m.membership_config.membership().voter_ids().any(|v| v == me) {
            return Err(Error::Refused(format!("node {me} is not a voter of group {g}; it cannot lead")));
        }
        if m.current_term != req.term || m.current_leader != Some(req.leader) {
            return Err(Error::Refused(format!(
                "group {g}: node {me} follows {} in term {}, not node {} in term {}; not campaigning",
                m.current_leader.map_or("nobody".to_string(), |l| format!("node {l}")),
                m.current_term,
                req.leader,
                req.term
            )));
        }
        tracing::info!(group = g, leader = req.leader, term = req.term, "campaigning at the leader's request");
        group.raft.trigger().elect().await.map_err(|e| Error::Unavailable(format!("group {g}: {e}")))
    }

    /// The approximate bytes of the Raft log this node holds for `group`
    /// (its segment files, or its range of the engine). Blocking: reads
    /// storage.
    pub fn log_bytes(&self, group: &Group) -> Result<u64> {
        if let Some(files) = &group.log_files {
            return Ok(files.bytes());
        }
        let start = crate::keys::raft_log_prefix(group.range.group);
        let end = arbor_storage::prefix_end(&start).expect("a group prefix is not all 0xff");
        Ok(self.engine.approximate_size(&start, &end)?)
    }

    /// Every node of every group's current membership.
    pub fn members(&self) -> BTreeMap<NodeId, String> {
        let mut all = BTreeMap::new();
        for g in self.groups.values() {
            let m = g.raft.metrics().borrow().clone();
            for (id, node) in m.membership_config.membership().nodes() {
                all.insert(*id, node.addr.clone());
            }
        }
        all
    }

    /// Waits until every group has a leader (for tests and scripts).
    pub async fn wait_for_leaders(&self, timeout: Duration) -> Result<()> {
        for (id, g) in &self.groups {
            g.raft
                .wait(Some(timeout))
                .metrics(|m| m.current_leader.is_some(), "leader elected")
                .await
                .map_err(|e| Error::Unavailable(format!("group {id} has no leader: {e}")))?;
        }
        Ok(())
    }

    /// The applied epoch of a group.
    pub fn epoch(&self, group: &Group) -> u64 {
        group.shared.epoch.load(Ordering::Acquire)
    }
}

/// The membership a membership change committed: the one in openraft's
/// answer, which always carries it for such a change. The group's metrics
/// may not show it yet when the change returns (a leader that removed
/// itself still showed the old one), so they are only the fallback.
fn committed_membership(group: &Group, committed: Option<MembershipConfig>) -> MembershipConfig {
    committed.unwrap_or_else(|| group.raft.metrics().borrow().membership_config.membership().clone())
}

/// Asks openraft for a snapshot of `group` whenever `policy` says one is
/// due (after which openraft purges the log). Every node does so for its
/// own replica. `appended` counts the bytes of entries appended to the
/// group's log; it restarts from 0 at each request. Ends when the group's
/// Raft stops.
async fn snapshot_when_due(group: u64, raft: Raft, appended: Arc<AtomicU64>, policy: SnapshotPolicy) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let metrics = raft.metrics();
    // The log index the entries are counted from.
    let mut counted_from = 0;
    loop {
        tick.tick().await;
        if metrics.has_changed().is_err() {
            return; // the group's Raft is gone
        }
        let (last_log, snapshot) = {
            let m = metrics.borrow();
            (m.last_log_index.unwrap_or(0), m.snapshot.map_or(0, |l| l.index))
        };
        // A snapshot installed from the leader restarts the count too.
        counted_from = counted_from.max(snapshot);
        let grown =
            LogGrowth { entries: last_log.saturating_sub(counted_from), bytes: appended.load(Ordering::Relaxed) };
        if !policy.due(grown) {
            continue;
        }
        counted_from = last_log;
        appended.store(0, Ordering::Relaxed);
        tracing::info!(
            group,
            entries = grown.entries,
            bytes = grown.bytes,
            "the log grew past the snapshot policy; taking a snapshot"
        );
        if raft.trigger().snapshot().await.is_err() {
            return;
        }
    }
}

/// Serves the node's gRPC services on `listener` until `shutdown` resolves,
/// then stops the groups.
pub async fn serve(
    node: Arc<Node>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<()> {
    // TCP_NODELAY: small responses must not wait for the peer's delayed ACK
    // (40 ms per round trip otherwise, on every client and Raft reply).
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let stopping = node.stopping.clone();
    let signal = async move {
        shutdown.await;
        stopping.send_replace(true);
        let _ = stopping_tx.send(());
    };
    let server = crate::api::router(node.clone()).serve_with_incoming_shutdown(incoming, signal);
    tokio::pin!(server);
    // In-flight requests get SHUTDOWN_GRACE to finish. A write that Raft will
    // never answer (e.g. proposed by a leader that was just removed from its
    // group: openraft drops leadership without failing pending entries)
    // would otherwise hold the graceful shutdown forever, since the groups
    // only stop after the server.
    let grace = async {
        match stopping_rx.await {
            Ok(()) => tokio::time::sleep(SHUTDOWN_GRACE).await,
            Err(_) => std::future::pending().await,
        }
    };
    let result = tokio::select! {
        r = &mut server => r,
        () = grace => {
            tracing::warn!(
                "requests still in flight {SHUTDOWN_GRACE:?} after the shutdown signal; \
                 stopping the groups, which answers waiting writes as indeterminate"
            );
            node.shutdown().await;
            return match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
                Ok(r) => r.map_err(|e| Error::Transport(e.to_string())),
                Err(_) => {
                    tracing::warn!("closing the connections of requests still open");
                    Ok(())
                }
            };
        }
    };
    node.shutdown().await;
    result.map_err(|e| Error::Transport(e.to_string()))
}

/// How long a stopping node lets in-flight requests finish before it stops
/// its groups anyway (see [`serve`]).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
