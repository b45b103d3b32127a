//! Peak resident memory of server processes, from `/proc/PID/status`: a
//! thread samples `VmRSS` every [`SAMPLE_EVERY`] while a run lasts, and
//! `VmHWM` (the kernel's own high-water mark since the process started) is
//! read at the end, so a spike between two samples is not missed.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// How far a `VmRSS` sample may be above the `VmHWM` read after it: the
/// kernel batches each thread's page counts (64 pages per thread before
/// they reach the process's totals), so the two fields are not exact.
pub const COUNTER_SLACK_KIB: u64 = 1024;

/// One process's peak.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RssPeak {
    pub pid: u32,
    /// The largest `VmRSS` sampled during the run, in KiB.
    pub sampled_peak_kib: u64,
    /// `VmHWM` at the end of the run (peak since the process started), in KiB.
    pub hwm_kib: u64,
    pub samples: u64,
}

impl std::fmt::Display for RssPeak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pid {}: {:.1} MiB sampled, {:.1} MiB VmHWM",
            self.pid,
            self.sampled_peak_kib as f64 / 1024.0,
            self.hwm_kib as f64 / 1024.0
        )
    }
}

/// A field such as `VmRSS` of `/proc/PID/status`, in KiB.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_kib(&text, field)
}

fn parse_status_kib(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// The live PIDs in `dir/n*/arbor.pid` (the files `scripts/cluster.sh`
/// writes), sorted.
pub fn pids_in(dir: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut pids: Vec<u32> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('n'))
        .filter_map(|e| std::fs::read_to_string(e.path().join("arbor.pid")).ok())
        .filter_map(|s| s.trim().parse().ok())
        .filter(|&pid| Path::new(&format!("/proc/{pid}")).exists())
        .collect();
    pids.sort_unstable();
    pids
}

/// Samples the RSS of some processes until [`RssSampler::finish`].
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<RssPeak>>>,
}

impl RssSampler {
    pub fn start(pids: Vec<u32>) -> Self {
        if pids.is_empty() {
            return RssSampler { stop: Arc::new(AtomicBool::new(true)), thread: None };
        }
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peaks: Vec<RssPeak> =
                pids.iter().map(|&pid| RssPeak { pid, sampled_peak_kib: 0, hwm_kib: 0, samples: 0 }).collect();
            loop {
                for p in peaks.iter_mut() {
                    if let Some(kib) = status_kib(p.pid, "VmRSS") {
                        p.sampled_peak_kib = p.sampled_peak_kib.max(kib);
                        p.samples += 1;
                    }
                }
                if flag.load(Ordering::Acquire) {
                    break;
                }
                std::thread::sleep(SAMPLE_EVERY);
            }
            for p in peaks.iter_mut() {
                p.hwm_kib = status_kib(p.pid, "VmHWM").unwrap_or(0);
            }
            peaks
        });
        RssSampler { stop, thread: Some(thread) }
    }

    /// Stops sampling; the peak of every process.
    pub fn finish(mut self) -> Vec<RssPeak> {
        self.stop.store(true, Ordering::Release);
        self.thread.take().map(|t| t.join().unwrap_or_default()).unwrap_or_default()
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_status() {
        let status = "Name:\tarbor\nVmHWM:\t  123456 kB\nVmRSS:\t   65432 kB\n";
        assert_eq!(parse_status_kib(status, "VmRSS"), Some(65432));
        assert_eq!(parse_status_kib(status, "VmHWM"), Some(123456));
        assert_eq!(parse_status_kib(status, "VmSwap"), None);
    }

    #[test]
    fn samples_this_process() {
        let sampler = RssSampler::start(vec![std::process::id()]);
        std::thread::sleep(Duration::from_millis(50));
        let peaks = sampler.finish();
        assert_eq!(peaks.len(), 1);
        assert!(peaks[0].samples >= 1 && peaks[0].sampled_peak_kib > 0, "{peaks:?}");
        assert!(peaks[0].hwm_kib + COUNTER_SLACK_KIB >= peaks[0].sampled_peak_kib, "{peaks:?}");
    }
}
