//! A node: the RocksDB engine, the range catalog, one Raft group (log,
//! state machine, sequencer) per range, and the gRPC services, wired
//! together. [`Node::start`] bootstraps a new data directory or restarts
//! from an existing one; [`serve`] runs the gRPC server until shutdown.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use arbor_storage::{Durability, Engine, ReadView, Rocks, RocksOptions, WriteBatch};
use openraft::BasicNode;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use crate::config::{Config, Peer};
use crate::error::{Error, Result};
use crate::hlc::{Clock, Hlc};
use crate::keys::Key;
use crate::raft::log_store::LogStore;
use crate::raft::network::{GroupNetwork, Peers};
use crate::raft::state_machine::StateMachine;
use crate::raft::{NodeId, Raft};
use crate::routing::{Catalog, RangeDesc, Span};
use crate::sequencer::batcher::BatcherConfig;
use crate::sequencer::driver::{self, Committed, DriverConfig, SequencerHandle};
use crate::sequencer::{GroupShared, GroupStateMachine};
use crate::tree::Txn;

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
}

pub struct Node {
    pub config: Config,
    pub meta: NodeMeta,
    pub engine: Arc<Rocks>,
    pub hlc: Arc<Hlc>,
    pub groups: BTreeMap<u64, Group>,
    peers: Arc<Peers>,
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
        snapshot_policy: match config.raft.snapshot_every_entries {
            0 => openraft::SnapshotPolicy::Never,
            n => openraft::SnapshotPolicy::LogsSinceLast(n),
        },
        max_in_snapshot_log_to_keep: config.raft.keep_entries_after_snapshot,
        max_payload_entries: 64,
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
        let engine = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || Rocks::open(&path, &RocksOptions::default()))
                .await
                .map_err(|e| Error::Fatal(e.to_string()))??
        };
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
        let unsafe_switches = &config.unsafe_test_only;
        if unsafe_switches.any() {
            tracing::warn!(?unsafe_switches, "TEST-ONLY UNSAFE SWITCHES ARE ON: this node breaks Arbor's guarantees");
        }
        let durability = if unsafe_switches.volatile_writes { Durability::Volatile } else { Durability::Sync };
        let hlc = Arc::new(Hlc::new(clock, config.max_clock_offset_ms));
        let peers = Peers::new(config.cluster_id.clone());
        let rcfg = raft_config(&config)?;
        let driver_cfg = DriverConfig {
            batcher: BatcherConfig {
                max_txns: config.epoch.max_txns_per_epoch,
                max_bytes: config.epoch.max_bytes_per_epoch,
                window_ms: config.epoch.window_ms,
                max_inflight: config.epoch.max_inflight,
            },
            compress_threshold: config.epoch.compress_threshold,
        };
        let mut groups = BTreeMap::new();
        for range in meta.catalog.ranges() {
            let dyn_engine: Arc<dyn Engine> = engine.clone();
            let shared = Arc::new(GroupShared::default());
            let sm = {
                let (range, e, shared, hlc, v) =
                    (range.clone(), dyn_engine.clone(), shared.clone(), hlc.clone(), config.vshards);
                tokio::task::spawn_blocking(move || GroupStateMachine::open(range, e, v, shared, hlc, durability))
                    .await
                    .map_err(|e| Error::Fatal(e.to_string()))??
            };
            let network = GroupNetwork { group: range.group, peers: peers.clone() };
            let raft = Raft::new(
                config.node_id,
                rcfg.clone(),
                network,
                LogStore::new(range.group, dyn_engine, durability),
                StateMachine::new(sm),
            )
            .await
            .map_err(|e| Error::Fatal(format!("group {}: {e}", range.group)))?;
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
            tracing::info!(node = config.node_id, group = range.group, range = %range.display(), "group started");
            groups
                .insert(range.group, Group { range: range.clone(), raft, sequencer, shared, vshards: config.vshards });
        }
        Ok(Arc::new(Node { config, meta, engine, hlc, groups, peers }))
    }

    pub fn node_id(&self) -> NodeId {
        self.meta.node_id
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
        let sequencer = group.sequencer.clone();
        Ok((id, sequencer.submit(txn).await?))
    }

    /// A linearizable read: confirms leadership with a quorum (read index),
    /// waits until this node has applied up to it, then reads locally.
    pub async fn read<T: Send + 'static>(
        &self,
        group: &Group,
        f: impl FnOnce(&dyn ReadView) -> Result<T> + Send + 'static,
    ) -> Result<(T, u64)> {
        if self.config.unsafe_test_only.stale_reads {
            // Test-only: skip the read index and serve whatever is applied here.
        } else if let Err(e) = group.raft.ensure_linearizable().await {
            return Err(match e.forward_to_leader() {
                Some(f) => Error::NotLeader {
                    group: group.range.group,
                    leader: f.leader_id,
                    leader_addr: f.leader_node.clone().map(|n| n.addr),
                },
                None => Error::Unavailable(format!("group {}: {e}", group.range.group)),
            });
        }
        let stamp = self.hlc.now();
        let engine = self.engine.clone();
        let value = tokio::task::spawn_blocking(move || f(engine.as_ref()))
            .await
            .map_err(|e| Error::Fatal(e.to_string()))??;
        Ok((value, stamp))
    }

    /// Stops every group's Raft and flushes storage.
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
    pub async fn add_node(&self, group: &Group, id: NodeId, addr: String) -> Result<()> {
        let g = group.range.group;
        if addr.is_empty() || !addr.contains(':') {
            return Err(Error::InvalidArgument(format!("node address {addr:?} is not host:port")));
        }
        group
            .raft
            .add_learner(id, BasicNode { addr }, true)
            .await
            .map_err(|e| crate::raft::client_write_error(g, e))?;
        group
            .raft
            .change_membership(openraft::ChangeMembers::AddVoterIds([id].into()), false)
            .await
            .map_err(|e| crate::raft::client_write_error(g, e))?;
        tracing::info!(group = g, node = id, "node added as voter");
        Ok(())
    }

    /// Removes `id` from `group`. Refused when the remaining voters this
    /// leader hears from would not be a quorum, unless `force`.
    pub async fn remove_node(&self, group: &Group, id: NodeId, force: bool) -> Result<()> {
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
        group
            .raft
            .change_membership(openraft::ChangeMembers::RemoveVoters([id].into()), false)
            .await
            .map_err(|e| crate::raft::client_write_error(g, e))?;
        tracing::info!(group = g, node = id, "node removed");
        Ok(())
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
    let result = crate::api::router(node.clone())
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| Error::Transport(e.to_string()));
    node.shutdown().await;
    result
}
