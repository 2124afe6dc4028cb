//! What `/proc` says about the servers: resident memory (peak, and sampled over a phase), CPU time and bytes written
//! to storage.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How often a [`RssSampler`] reads the resident set.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

fn status_kib(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
}

/// Peak resident set (VmHWM, else VmRSS) of a process since it started, in MiB; 0 when unknown.
pub fn peak_rss_mib(pid: Option<u32>) -> f64 {
    pid.and_then(|pid| status_kib(pid, "VmHWM:").or_else(|| status_kib(pid, "VmRSS:"))).map_or(0.0, |kib| kib / 1024.0)
}

/// User + system CPU time of a process so far, in seconds; 0 when unknown.
pub fn cpu_secs(pid: Option<u32>) -> f64 {
    let Some(stat) = pid.and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()) else {
        return 0.0;
    };
    // Fields after the parenthesised command name (which may hold spaces); utime and stime are fields 14 and 15.
    let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) else { return 0.0 };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Linux reports these in USER_HZ, which is 100 on every architecture it supports.
    (ticks(11) + ticks(12)) / 100.0
}

/// Bytes a process has caused to be written to storage so far (`write_bytes` of `/proc/<pid>/io`: counted as pages
/// are dirtied, so a page written again after it reached the disk counts again); 0 when unknown.
pub fn disk_write_bytes(pid: Option<u32>) -> u64 {
    let Some(io) = pid.and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/io")).ok()) else { return 0 };
    io.lines().find_map(|line| line.strip_prefix("write_bytes:")).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

/// Samples a process's resident set (VmRSS) in the background and keeps the largest value seen since the last
/// [`RssSampler::take_peak_mib`]: the peak of one phase, where VmHWM would be the peak since the process started.
pub struct RssSampler {
    peak_kib: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl RssSampler {
    /// Starts sampling `pid`.
    pub fn start(pid: Option<u32>) -> Self {
        let peak_kib = Arc::new(AtomicU64::new(0));
        let peak = peak_kib.clone();
        let task = tokio::spawn(async move {
            let Some(pid) = pid else { return };
            loop {
                if let Some(kib) = status_kib(pid, "VmRSS:") {
                    peak.fetch_max(kib as u64, Ordering::Relaxed);
                }
                tokio::time::sleep(SAMPLE_EVERY).await;
            }
        });
        Self { peak_kib, task }
    }

    /// The largest resident set sampled since the last call, in MiB, and starts over.
    pub fn take_peak_mib(&self) -> f64 {
        self.peak_kib.swap(0, Ordering::Relaxed) as f64 / 1024.0
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}
