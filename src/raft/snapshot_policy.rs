//! When a group builds a snapshot, after which openraft purges its log.
//!
//! A snapshot is due once the log grew by `every_entries` entries or by
//! `every_bytes` bytes since the last one was asked for, **and** by at
//! least `log_ratio` times the size of the group's current snapshot.
//!
//! The last condition paces builds by what they cost. A snapshot holds the
//! whole state: every key and every version still retained (10 minutes by
//! default), so it grows with the data, while the log grows with the write
//! rate. On fixed thresholds alone, a node under a steady write load builds
//! ever larger snapshots at a fixed interval until building them never
//! stops: at 7,000 puts/s every replica built a 121 MB snapshot after 30 s
//! (5 s of work each, all three at once), and ten minutes in, one would
//! be a gigabyte every 30 s. With the ratio, a node builds at most
//! 1 / `log_ratio` bytes of snapshot per byte it appends to its log, and
//! keeps at most about `log_ratio` times the snapshot's size of log.
//!
//! This module is the pure rule; `server::snapshot_when_due` samples the
//! log and asks openraft for the build.

/// The thresholds of `[raft]` in the configuration.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SnapshotPolicy {
    /// Entries appended since the last snapshot (0 = no entry threshold).
    pub every_entries: u64,
    /// Bytes of entries appended since the last snapshot (0 = no byte
    /// threshold).
    pub every_bytes: u64,
    /// The log must also have grown by this many times the current
    /// snapshot's size (0 = no such condition).
    pub log_ratio: f64,
}

/// How much a group's log grew since its last snapshot was asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogGrowth {
    pub entries: u64,
    pub bytes: u64,
}

impl SnapshotPolicy {
    /// True when no threshold is set: the log is never compacted.
    pub fn never(&self) -> bool {
        self.every_entries == 0 && self.every_bytes == 0
    }

    /// Whether the log grew past the entry or the byte threshold (the
    /// first condition of [`SnapshotPolicy::due`], which needs no snapshot
    /// size).
    pub fn threshold_reached(&self, grown: LogGrowth) -> bool {
        (self.every_entries > 0 && grown.entries >= self.every_entries)
            || (self.every_bytes > 0 && grown.bytes >= self.every_bytes)
    }

    /// Whether to build a snapshot now, the current one being
    /// `snapshot_bytes` long (0 if there is none).
    pub fn due(&self, grown: LogGrowth, snapshot_bytes: u64) -> bool {
        self.threshold_reached(grown) && grown.bytes as f64 >= self.log_ratio * snapshot_bytes as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: SnapshotPolicy = SnapshotPolicy { every_entries: 100, every_bytes: 1000, log_ratio: 1.0 };

    fn grown(entries: u64, bytes: u64) -> LogGrowth {
        LogGrowth { entries, bytes }
    }

    #[test]
    fn either_threshold_makes_the_first_snapshot_due() {
        assert!(!POLICY.due(grown(99, 999), 0));
        assert!(POLICY.due(grown(100, 10), 0), "entries");
        assert!(POLICY.due(grown(5, 1000), 0), "bytes");
    }

    #[test]
    fn a_larger_snapshot_waits_for_as_much_log() {
        // Past both thresholds, but the current snapshot is bigger than
        // the log appended since it.
        assert!(!POLICY.due(grown(500, 40_000), 50_000));
        assert!(POLICY.due(grown(500, 50_000), 50_000));
        let twice = SnapshotPolicy { log_ratio: 2.0, ..POLICY };
        assert!(!twice.due(grown(500, 99_999), 50_000));
        assert!(twice.due(grown(500, 100_000), 50_000));
    }

    #[test]
    fn the_ratio_alone_never_makes_a_snapshot_due() {
        // A log that outgrew the snapshot still waits for a threshold.
        assert!(!POLICY.threshold_reached(grown(50, 900)));
        assert!(!POLICY.due(grown(50, 900), 10));
    }

    #[test]
    fn ratio_zero_is_thresholds_only() {
        let fixed = SnapshotPolicy { log_ratio: 0.0, ..POLICY };
        assert!(fixed.due(grown(100, 1), u64::MAX));
    }

    #[test]
    fn no_threshold_is_never() {
        let never = SnapshotPolicy { every_entries: 0, every_bytes: 0, log_ratio: 1.0 };
        assert!(never.never());
        assert!(!never.due(grown(u64::MAX, u64::MAX), 0));
        assert!(!POLICY.never());
    }
}
