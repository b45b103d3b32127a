//! CPU time of processes over a run's measured window, from the `utime` and
//! `stime` fields of `/proc/PID/stat` (every thread of the process), and
//! the calling thread's own CPU time ([`thread_cpu`]).
//!
//! On a machine where the servers and the load generator share a few cores,
//! throughput is set by the CPU each operation costs; CPU per operation is
//! the figure that says whether one system does less work than another,
//! and it is steadier from run to run than throughput.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// CPU seconds one process used in the measured window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CpuUse {
    pub pid: u32,
    pub cpu_s: f64,
}

/// `utime + stime` of a process, in seconds, or `None` if it is gone.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let ticks = parse_stat_ticks(&text)?;
    Some(ticks as f64 / clock_ticks_per_second())
}

/// `utime + stime` (fields 14 and 15) of a `/proc/PID/stat` line. The
/// command name (field 2) is in parentheses and may hold spaces, so fields
/// are counted after its closing parenthesis.
fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    // After the name come field 3 (state) onwards: utime is the 12th of them.
    let mut fields = after_comm.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf reads a constant of the system and has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// The CPU time the calling thread has used (not its process's other
/// threads', nor time it spent preempted): the apply reference times its
/// applies with it.
pub fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "CLOCK_THREAD_CPUTIME_ID is always available on Linux");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// CPU seconds of each process at one instant (`None` for a process that
/// is gone).
pub struct CpuMark(Vec<(u32, Option<f64>)>);

impl CpuMark {
    pub fn now(pids: &[u32]) -> Self {
        CpuMark(pids.iter().map(|&pid| (pid, cpu_seconds(pid))).collect())
    }

    /// The CPU each process used since `self`; a process that was missing
    /// at either mark is left out.
    pub fn used_until(&self, later: &CpuMark) -> Vec<CpuUse> {
        self.0
            .iter()
            .zip(&later.0)
            .filter_map(|(&(pid, a), &(_, b))| Some(CpuUse { pid, cpu_s: (b? - a?).max(0.0) }))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_utime_and_stime_after_a_name_with_spaces() {
        let stat = "1234 (tokio rt) S 1 1234 1234 0 -1 4194560 5000 0 12 0 250 75 0 0 20 0 9 0 100 0 0";
        assert_eq!(parse_stat_ticks(stat), Some(325));
        assert_eq!(parse_stat_ticks("1234 (x) S 1"), None);
    }

    #[test]
    fn measures_this_process_burning_cpu() {
        let me = std::process::id();
        let before = CpuMark::now(&[me, u32::MAX]);
        let start = before.0[0].1.expect("this process has a /proc entry");
        // Spin until the kernel has counted 50 ms of this process's CPU
        // (whatever else the machine runs), so the check below is not timed.
        let mut x = 0u64;
        while cpu_seconds(me).expect("still running") - start < 0.05 {
            for _ in 0..10_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
        }
        let used = before.used_until(&CpuMark::now(&[me, u32::MAX]));
        assert_eq!(used.len(), 1, "the missing pid is left out: {used:?}");
        assert_eq!(used[0].pid, me);
        assert!(used[0].cpu_s >= 0.05, "{used:?}");
    }
}
