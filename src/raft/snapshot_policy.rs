//! When a group takes a snapshot, after which openraft purges its log.
//!
//! A snapshot is due once the log grew by `every_entries` entries or by
//! `every_bytes` bytes since the last one was asked for, whichever comes
//! first. Taking one is cheap (a flush and a record of the applied
//! position: see [`crate::sequencer::snapshot`]), so the thresholds bound
//! the log, not the work.
//!
//! (Until snapshots stopped copying the state, a third condition,
//! `raft.snapshot_log_ratio`, paced them by their size. The setting is
//! still accepted and ignored.)
//!
//! This module is the pure rule; `server::snapshot_when_due` samples the
//! log and asks openraft for the snapshot.

/// The thresholds of `[raft]` in the configuration.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SnapshotPolicy {
    /// Entries appended since the last snapshot (0 = no entry threshold).
    pub every_entries: u64,
    /// Bytes of entries appended since the last snapshot (0 = no byte
    /// threshold).
    pub every_bytes: u64,
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

    /// Whether to take a snapshot now: the log grew past the entry or the
    /// byte threshold.
    pub fn due(&self, grown: LogGrowth) -> bool {
        (self.every_entries > 0 && grown.entries >= self.every_entries)
            || (self.every_bytes > 0 && grown.bytes >= self.every_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: SnapshotPolicy = SnapshotPolicy { every_entries: 100, every_bytes: 1000 };

    fn grown(entries: u64, bytes: u64) -> LogGrowth {
        LogGrowth { entries, bytes }
    }

    #[test]
    fn either_threshold_makes_a_snapshot_due() {
        assert!(!POLICY.due(grown(99, 999)));
        assert!(POLICY.due(grown(100, 10)), "entries");
        assert!(POLICY.due(grown(5, 1000)), "bytes");
        let entries_only = SnapshotPolicy { every_bytes: 0, ..POLICY };
        assert!(!entries_only.due(grown(5, u64::MAX)));
        assert!(entries_only.due(grown(100, 0)));
    }

    #[test]
    fn no_threshold_is_never() {
        let never = SnapshotPolicy { every_entries: 0, every_bytes: 0 };
        assert!(never.never());
        assert!(!never.due(grown(u64::MAX, u64::MAX)));
        assert!(!POLICY.never());
    }
}
