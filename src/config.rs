//! Server configuration: one struct with defaults in code, overridable by a
//! TOML file, then environment variables (`ARBOR_*`), then flags (the last
//! two through the CLI, see `src/bin/arbor.rs`). [`Config::validate`] runs
//! before anything starts. `docs/arbor.example.toml` documents every field.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::raft::NodeId;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// This node's id, unique in the cluster, non-zero.
    pub node_id: NodeId,
    /// Address the gRPC server listens on (clients and peers).
    pub listen: SocketAddr,
    /// Address peers and clients should use; defaults to `listen`.
    pub advertise: Option<String>,
    /// Where RocksDB lives.
    pub data_dir: PathBuf,
    /// Every request and Raft message carries it; a mismatch is refused.
    pub cluster_id: String,
    /// Every initial member as `id=host:port` (this node included).
    pub peers: Vec<String>,
    /// Split points of the initial ranges (`/m`, `/t` → 3 groups).
    pub initial_ranges: Vec<String>,
    /// Join an existing cluster instead of bootstrapping one: the groups
    /// start empty and wait to be added (`arbor cluster add-node`). Needs the
    /// cluster's `initial_ranges`.
    pub join: bool,
    /// Vshards (executor threads) per group. Default: one per core, at most
    /// 8 ([`default_vshards`]). A local choice: replicas with different
    /// counts reach the same state.
    pub vshards: u32,
    pub epoch: EpochConfig,
    pub limits: Limits,
    pub raft: RaftTimings,
    pub reads: ReadConfig,
    pub storage: StorageConfig,
    /// Largest remote HLC offset accepted, in milliseconds.
    pub max_clock_offset_ms: u64,
    /// Test-only switches that each break one guarantee; see [`UnsafeSwitches`].
    pub unsafe_test_only: UnsafeSwitches,
}

/// Switches that each break one guarantee on purpose, so the Jepsen harness
/// can show that its checkers catch real bugs. Never set them in production;
/// a node logs a warning at startup when any is on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UnsafeSwitches {
    /// Serve Get/Range from local state without read-index (stale reads on
    /// followers and deposed leaders).
    pub stale_reads: bool,
    /// Write the Raft log and the state machine without the WAL, so a killed
    /// node loses writes it had acknowledged.
    pub volatile_writes: bool,
    /// Accept `Cluster.SetClockOffset`, which skews this node's HLC clock
    /// (Arbor's injectable clock, never the machine's) for clock-fault tests.
    pub clock_admin: bool,
}

impl UnsafeSwitches {
    pub fn any(&self) -> bool {
        self.stale_reads || self.volatile_writes || self.clock_admin
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EpochConfig {
    pub max_txns_per_epoch: usize,
    pub max_bytes_per_epoch: usize,
    /// How long a busy leader keeps an epoch open, in milliseconds.
    pub window_ms: u64,
    /// Epochs proposed but not yet applied, at most.
    pub max_inflight: usize,
    /// Batches at least this large (bytes) are zstd-compressed.
    pub compress_threshold: usize,
    /// An epoch of at most this many transactions executes on the applying
    /// thread instead of on the vshard executors (0: every epoch goes to
    /// them). Waking the executors costs each epoch several thread
    /// hand-offs; below this size that costs more than parallel execution
    /// saves (docs/BENCHMARKS.md). A local choice: replicas may differ.
    pub inline_max_txns: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    pub max_ops_per_txn: usize,
    pub max_request_bytes: usize,
    /// Results of one range read at most (also the default limit).
    pub max_range_results: u32,
}

/// Snapshot and bounded-staleness reads, versions and watches.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReadConfig {
    /// Old versions are kept this long (HLC milliseconds) for snapshot reads
    /// and watch resumption; the group's leader decides, so set it alike on
    /// every node.
    pub version_retention_ms: u64,
    /// An idle leader proposes an empty epoch this often, so the closed
    /// timestamp keeps up with the clock (0 = never).
    pub close_interval_ms: u64,
    /// How long a replica waits for its closed timestamp to cover a read
    /// before it answers DEADLINE_EXCEEDED (unless the request sets a timeout).
    pub wait_timeout_ms: u64,
    /// Watchers get a progress notification this often.
    pub watch_progress_ms: u64,
}

/// The node's RocksDB.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Block cache, in bytes.
    pub block_cache_bytes: u64,
    /// One memtable, in bytes (at least 1 MiB).
    pub write_buffer_bytes: u64,
    /// Limit of flush and compaction writes, in bytes per second (0 =
    /// unlimited, the default). It must stay above the rate at which writes
    /// fill memtables, or writes stop while flushes wait.
    pub background_write_bytes_per_sec: u64,
    /// Flushes and compactions write with `O_DIRECT` (past the page cache)
    /// when the data directory's file system allows it; else as usual.
    pub direct_background_writes: bool,
    /// The executors' cache of current records, in bytes per node, shared
    /// out evenly among the node's groups (0 disables it).
    pub record_cache_bytes: u64,
    /// Free bytes a snapshot leaves on the data directory's file system:
    /// an image (the state written for a follower behind the purged log)
    /// that would leave less stops, a follower refuses the chunks of a
    /// snapshot it has no room for, and the transfer is retried later, so
    /// that the Raft log and the memtable flushes keep room (0 = no check).
    pub snapshot_reserve_bytes: u64,
    /// Each node enlarges its memtables and its snapshot thresholds
    /// (`raft.snapshot_every_entries`, `raft.snapshot_every_bytes`) by up
    /// to this percentage, by a fraction its node id picks
    /// ([`staggered`]); 0 turns it off. Replicas apply the same log, so
    /// with equal settings they fill their memtables at the same pace and
    /// flush, compact and snapshot at the same moments: every node of a
    /// quorum is slow at once, and on shared disks and cores the bursts
    /// add up (docs/BENCHMARKS.md, item 38).
    pub stagger_percent: u32,
}

/// The largest `storage.stagger_percent`.
pub const MAX_STAGGER_PERCENT: u32 = 100;

/// `value` enlarged by node `node_id`'s share of `percent` (see
/// [`StorageConfig::stagger_percent`]): `value * (1 + percent/100 * f)`,
/// with `f` in `[0, 1)` the fractional part of `node_id / φ`. Consecutive
/// ids get fractions far apart (ids 1, 2, 3: 0.618, 0.236, 0.854), and so
/// does any set of a few ids, which fixed steps per id would not give.
pub fn staggered(value: u64, node_id: NodeId, percent: u32) -> u64 {
    // 2^64 / φ, rounded: the multiplier of Fibonacci hashing.
    const INV_PHI: u64 = 0x9e37_79b9_7f4a_7c15;
    // f * 2^32; the product below is at most 2^64 * 2^32 * 100, no
    // overflow of the u128.
    let fraction = u128::from(node_id.wrapping_mul(INV_PHI) >> 32);
    let extra = u128::from(value) * fraction * u128::from(percent) / (100u128 << 32);
    value.saturating_add(u64::try_from(extra).unwrap_or(u64::MAX))
}

impl StorageConfig {
    /// The RocksDB options of node `node_id` (its memtables staggered).
    pub fn rocks_options(&self, node_id: NodeId) -> arbor_storage::RocksOptions {
        let bytes = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        arbor_storage::RocksOptions {
            block_cache_bytes: bytes(self.block_cache_bytes),
            write_buffer_bytes: bytes(staggered(self.write_buffer_bytes, node_id, self.stagger_percent)),
            background_write_bytes_per_sec: self.background_write_bytes_per_sec,
            direct_background_writes: self.direct_background_writes,
            own_column_families: vec![crate::keys::raft_log_keys(), crate::keys::history_keys()],
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        let rocks = arbor_storage::RocksOptions::default();
        Self {
            block_cache_bytes: rocks.block_cache_bytes as u64,
            write_buffer_bytes: rocks.write_buffer_bytes as u64,
            background_write_bytes_per_sec: rocks.background_write_bytes_per_sec,
            direct_background_writes: rocks.direct_background_writes,
            record_cache_bytes: crate::scheduler::DEFAULT_RECORD_CACHE_BYTES as u64,
            snapshot_reserve_bytes: 512 << 20,
            stagger_percent: 30,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaftTimings {
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Take a snapshot (a flush and a record of the applied position)
    /// after this many log entries since the last one (0 = never); the log
    /// is then purged up to it, keeping `keep_entries_after_snapshot`
    /// entries for slow followers.
    pub snapshot_every_entries: u64,
    /// Also take one once this many bytes of entries were appended to
    /// the group's log since the last one (0 = never), whichever comes first.
    pub snapshot_every_bytes: u64,
    /// No longer has an effect: it paced snapshots by their size when they
    /// were copies of the state. Accepted so that older configuration
    /// files still load; the server warns when it is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_log_ratio: Option<f64>,
    pub keep_entries_after_snapshot: u64,
    /// A leader whose pipeline is idle sends a new entry to its followers
    /// while its own fsync runs, instead of after it (`raft::eager`).
    pub eager_replication: bool,
    /// Keep each group's log entries in segment files of its own under
    /// `<data_dir>/raft-log/<group>` instead of RocksDB (`raft::log_store`,
    /// docs/BENCHMARKS.md item 41); default on. A node started with the
    /// other setting moves each group's log at startup
    /// (`LogStore::with_segment_log`, `LogStore::move_log_to_engine`).
    pub log_files: bool,
    /// The size of those segment files, each zero-filled ahead of use (a
    /// group keeps one spare): an append then writes into blocks the file
    /// already has, and its fsync has no file size to journal. A group
    /// holds at least two (the one in use and the spare) on disk: 4 MiB
    /// segments were as fast as 16 MiB and 1 MiB ones within 1% in the
    /// benchmark (docs/BENCHMARKS.md, item 41).
    pub log_segment_bytes: u64,
}

/// One vshard per core, at most 8: more executor threads than cores only
/// adds hand-offs (on 2 cores, 8 vshards made 4-key transactions ~20% slower
/// than 1 or 2; docs/BENCHMARKS.md).
pub fn default_vshards() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(8) as u32)
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node_id: 1,
            listen: "127.0.0.1:7001".parse().expect("valid address"),
            advertise: None,
            data_dir: PathBuf::from("data/n1"),
            cluster_id: "arbor".to_string(),
            peers: Vec::new(),
            initial_ranges: Vec::new(),
            join: false,
            vshards: default_vshards(),
            epoch: EpochConfig::default(),
            limits: Limits::default(),
            raft: RaftTimings::default(),
            reads: ReadConfig::default(),
            storage: StorageConfig::default(),
            max_clock_offset_ms: 500,
            unsafe_test_only: UnsafeSwitches::default(),
        }
    }
}

impl Default for EpochConfig {
    fn default() -> Self {
        Self {
            max_txns_per_epoch: 1024,
            max_bytes_per_epoch: 4 << 20,
            window_ms: 2,
            max_inflight: 4,
            compress_threshold: 4096,
            inline_max_txns: crate::scheduler::DEFAULT_INLINE_MAX_TXNS,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_key_bytes: 4096,
            max_value_bytes: 1 << 20,
            max_ops_per_txn: 128,
            max_request_bytes: 4 << 20,
            max_range_results: 10_000,
        }
    }
}

impl Default for ReadConfig {
    fn default() -> Self {
        Self { version_retention_ms: 600_000, close_interval_ms: 200, wait_timeout_ms: 5_000, watch_progress_ms: 1_000 }
    }
}

impl Default for RaftTimings {
    fn default() -> Self {
        Self {
            heartbeat_ms: 100,
            election_timeout_min_ms: 400,
            election_timeout_max_ms: 800,
            snapshot_every_entries: 10_000,
            snapshot_every_bytes: 64 << 20,
            snapshot_log_ratio: None,
            keep_entries_after_snapshot: 1_000,
            eager_replication: true,
            log_files: true,
            log_segment_bytes: 4 << 20,
        }
    }
}

/// A parsed `id=host:port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub id: NodeId,
    pub addr: String,
}

pub fn parse_peer(s: &str) -> Result<Peer> {
    let bad = || Error::InvalidArgument(format!("peer {s:?} is not of the form id=host:port"));
    let (id, addr) = s.split_once('=').ok_or_else(bad)?;
    let id: NodeId = id.trim().parse().map_err(|_| bad())?;
    if id == 0 || addr.trim().is_empty() || !addr.contains(':') {
        return Err(bad());
    }
    Ok(Peer { id, addr: addr.trim().to_string() })
}

impl Config {
    /// Reads a TOML file over the defaults.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::InvalidArgument(format!("cannot read config {}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| Error::InvalidArgument(format!("config {}: {e}", path.display())))
    }

    pub fn advertise_addr(&self) -> String {
        self.advertise.clone().unwrap_or_else(|| self.listen.to_string())
    }

    pub fn parsed_peers(&self) -> Result<Vec<Peer>> {
        let mut peers: Vec<Peer> = self.peers.iter().map(|p| parse_peer(p)).collect::<Result<_>>()?;
        if peers.is_empty() {
            peers.push(Peer { id: self.node_id, addr: self.advertise_addr() });
        }
        peers.sort_by_key(|p| p.id);
        Ok(peers)
    }

    /// `value` staggered for this node (see [`StorageConfig::stagger_percent`]).
    pub fn staggered(&self, value: u64) -> u64 {
        staggered(value, self.node_id, self.storage.stagger_percent)
    }

    /// Checks every field; the error names the field and the rule.
    pub fn validate(&self) -> Result<()> {
        let fail = |m: String| Err(Error::InvalidArgument(m));
        if self.node_id == 0 {
            return fail("node_id must be non-zero".into());
        }
        if self.cluster_id.is_empty() {
            return fail("cluster_id must not be empty".into());
        }
        if !(1..=1024).contains(&self.vshards) {
            return fail(format!("vshards must be within 1..=1024, got {}", self.vshards));
        }
        let peers = self.parsed_peers()?;
        if !peers.iter().any(|p| p.id == self.node_id) {
            return fail(format!("peers must include this node (id {})", self.node_id));
        }
        if peers.windows(2).any(|w| w[0].id == w[1].id) {
            return fail("peers must have distinct ids".into());
        }
        let e = &self.epoch;
        if e.max_txns_per_epoch == 0 || e.max_txns_per_epoch > 1 << 20 {
            return fail(format!("epoch.max_txns_per_epoch must be within 1..=1048576, got {}", e.max_txns_per_epoch));
        }
        if e.max_bytes_per_epoch == 0 || e.max_inflight == 0 {
            return fail("epoch.max_bytes_per_epoch and epoch.max_inflight must be positive".into());
        }
        let l = &self.limits;
        if l.max_key_bytes == 0 || l.max_value_bytes == 0 || l.max_ops_per_txn == 0 || l.max_range_results == 0 {
            return fail("limits must be positive".into());
        }
        if l.max_request_bytes < l.max_key_bytes + l.max_value_bytes {
            return fail("limits.max_request_bytes must fit one maximal key and value".into());
        }
        if self.storage.write_buffer_bytes < 1 << 20 {
            return fail(format!(
                "storage.write_buffer_bytes must be at least 1048576 (1 MiB), got {}",
                self.storage.write_buffer_bytes
            ));
        }
        if self.raft.log_segment_bytes < 64 << 10 {
            return fail(format!(
                "raft.log_segment_bytes must be at least 65536 (64 KiB), got {}",
                self.raft.log_segment_bytes
            ));
        }
        if self.storage.stagger_percent > MAX_STAGGER_PERCENT {
            return fail(format!(
                "storage.stagger_percent must be at most {MAX_STAGGER_PERCENT}, got {}",
                self.storage.stagger_percent
            ));
        }
        let reads = &self.reads;
        if reads.wait_timeout_ms == 0 || reads.watch_progress_ms == 0 {
            return fail("reads.wait_timeout_ms and reads.watch_progress_ms must be positive".into());
        }
        let r = &self.raft;
        if r.heartbeat_ms == 0
            || r.election_timeout_min_ms <= r.heartbeat_ms
            || r.election_timeout_max_ms <= r.election_timeout_min_ms
        {
            return fail(
                "raft timings need 0 < heartbeat_ms < election_timeout_min_ms < election_timeout_max_ms".into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn toml_overrides_defaults_and_rejects_unknown_fields() {
        let c: Config = toml::from_str("node_id = 2\n[limits]\nmax_key_bytes = 100\n").unwrap();
        assert_eq!(c.node_id, 2);
        assert_eq!(c.limits.max_key_bytes, 100);
        assert_eq!(c.limits.max_value_bytes, Limits::default().max_value_bytes);
        assert!(toml::from_str::<Config>("node_idd = 2").is_err());
    }

    #[test]
    fn a_configuration_with_the_retired_snapshot_log_ratio_still_loads() {
        let c: Config = toml::from_str("[raft]\nsnapshot_log_ratio = 0\nsnapshot_every_entries = 20\n").unwrap();
        assert_eq!(c.raft.snapshot_log_ratio, Some(0.0));
        assert_eq!(c.raft.snapshot_every_entries, 20);
        c.validate().unwrap();
    }

    #[test]
    fn the_example_config_documents_the_defaults() {
        let example: Config = toml::from_str(include_str!("../docs/arbor.example.toml")).unwrap();
        assert_eq!(example, Config::default());
    }

    #[test]
    fn validation_names_the_problem() {
        let mut c = Config { peers: vec!["2=127.0.0.1:1".into()], ..Config::default() };
        assert!(c.validate().unwrap_err().to_string().contains("peers must include this node"));
        c.peers = vec!["1=x".into()];
        assert!(c.validate().unwrap_err().to_string().contains("id=host:port"));
        let c = Config { vshards: 0, ..Config::default() };
        assert!(c.validate().unwrap_err().to_string().contains("vshards"));
        let c =
            Config { storage: StorageConfig { write_buffer_bytes: 4096, ..Default::default() }, ..Config::default() };
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("storage.write_buffer_bytes") && err.contains("1048576"), "{err}");
        let c = Config { storage: StorageConfig { stagger_percent: 101, ..Default::default() }, ..Config::default() };
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("storage.stagger_percent") && err.contains("100") && err.contains("101"), "{err}");
        let c = Config { raft: RaftTimings { log_segment_bytes: 4096, ..Default::default() }, ..Config::default() };
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("raft.log_segment_bytes") && err.contains("65536") && err.contains("4096"), "{err}");
    }

    #[test]
    fn staggering_spreads_nodes_apart_within_the_percentage() {
        let base = 32 << 20;
        for id in 1..=64 {
            assert_eq!(staggered(base, id, 0), base, "0% leaves node {id} alone");
            let v = staggered(base, id, 30);
            assert!(base <= v && v < base + base * 3 / 10, "node {id}: {v}");
            assert_eq!(v, staggered(base, id, 30), "the same on every start");
        }
        // ids 1, 2, 3 (a fresh three-node cluster): fractions 0.618, 0.236,
        // 0.854, so at 30% memtables of +18.5%, +7.1% and +25.6%.
        let percent = |id| (staggered(1_000_000, id, 30) - 1_000_000) as f64 / 10_000.0;
        let got: Vec<f64> = (1..=3).map(percent).collect();
        for (g, want) in got.iter().zip([18.54, 7.08, 25.62]) {
            assert!((g - want).abs() < 0.01, "{got:?}");
        }
        // Any two of the first eight ids differ by at least 2.7 points of
        // the 30; a step per id modulo a cluster size would collide.
        for a in 1..=8u64 {
            for b in a + 1..=8 {
                assert!((percent(a) - percent(b)).abs() > 2.6, "ids {a} and {b}: {} {}", percent(a), percent(b));
            }
        }
        assert_eq!(staggered(u64::MAX, 3, 100), u64::MAX, "saturates");
    }
}
