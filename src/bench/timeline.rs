//! A run's operations by time slice (`arbor-bench --timeline-ms`): how
//! many completed in each slice of the measured window and how long they
//! took, so that a latency tail can be lined up with what the servers did
//! at that moment (their logs, RocksDB's `LOG`). Finding that the put tail
//! came from flushes on all three replicas at once took this
//! (docs/BENCHMARKS.md, item 38).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One operation of the measured window: when it completed, counted from
/// the window's start, and how long it took, both in microseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    pub completed_us: u64,
    pub latency_us: u64,
}

/// The operations of one slice, by completion time.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slice {
    pub ops: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timeline {
    /// Start of the measured window, in milliseconds since the Unix epoch
    /// (the load generator's clock), to line slices up with server logs.
    pub start_unix_ms: u64,
    pub slice_ms: u64,
    /// Slice `i` holds the operations completed in
    /// `[i * slice_ms, (i + 1) * slice_ms)` after the start; the last ones
    /// may lie past the window (operations that began inside it).
    pub slices: Vec<Slice>,
}

impl Timeline {
    /// Groups `samples` into slices of `slice` (at least 1 ms).
    pub fn of(mut samples: Vec<Sample>, slice: Duration, start_unix_ms: u64) -> Timeline {
        let slice_us = (slice.as_micros() as u64).max(1_000);
        samples.sort_unstable_by_key(|s| (s.completed_us / slice_us, s.latency_us));
        let count = samples.last().map_or(0, |s| s.completed_us / slice_us + 1) as usize;
        let mut slices = vec![Slice::default(); count];
        for chunk in samples.chunk_by(|a, b| a.completed_us / slice_us == b.completed_us / slice_us) {
            // Sorted by latency within the slice: nearest-rank percentiles.
            let rank = |q: f64| chunk[((q * chunk.len() as f64).ceil() as usize).clamp(1, chunk.len()) - 1].latency_us;
            slices[(chunk[0].completed_us / slice_us) as usize] = Slice {
                ops: chunk.len() as u64,
                p50_us: rank(0.50),
                p99_us: rank(0.99),
                max_us: chunk[chunk.len() - 1].latency_us,
            };
        }
        Timeline { start_unix_ms, slice_ms: slice_us / 1_000, slices }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64, latency_ms: u64) -> Sample {
        Sample { completed_us: ms * 1_000, latency_us: latency_ms * 1_000 }
    }

    #[test]
    fn operations_fall_into_the_slice_of_their_completion_with_its_percentiles() {
        let mut samples: Vec<Sample> = (1..=100).map(|i| at(10, i)).collect(); // slice 0: 1..=100 ms
        samples.push(at(250, 7)); // slice 2; slice 1 stays empty
        samples.push(at(199, 3)); // slice 1's last millisecond
        let t = Timeline::of(samples, Duration::from_millis(100), 1_700_000_000_000);
        assert_eq!(t.slice_ms, 100);
        assert_eq!(t.start_unix_ms, 1_700_000_000_000);
        assert_eq!(t.slices.len(), 3);
        assert_eq!(t.slices[0], Slice { ops: 100, p50_us: 50_000, p99_us: 99_000, max_us: 100_000 });
        assert_eq!(t.slices[1], Slice { ops: 1, p50_us: 3_000, p99_us: 3_000, max_us: 3_000 });
        assert_eq!(t.slices[2], Slice { ops: 1, p50_us: 7_000, p99_us: 7_000, max_us: 7_000 });
    }

    #[test]
    fn no_operation_gives_no_slice_and_slices_are_at_least_a_millisecond() {
        assert!(Timeline::of(Vec::new(), Duration::from_millis(100), 0).slices.is_empty());
        let t = Timeline::of(vec![at(3, 1)], Duration::from_micros(10), 0);
        assert_eq!((t.slice_ms, t.slices.len()), (1, 4));
        assert_eq!(t.slices[..3], [Slice::default(), Slice::default(), Slice::default()]);
    }
}
