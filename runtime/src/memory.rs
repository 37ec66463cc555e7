//! The node's memory budget (`[limits] memory_bytes_max`): a watchdog that samples the
//! process's resident set and, above `memory_pressure_percent` of the budget, puts the node
//! under pressure until it is back below a lower mark.
//!
//! Under pressure the node protects what it already serves: new WebSocket connections and
//! uploads are refused (the web layer asks [`MemoryBudget::under_pressure`]), new entity
//! activations are refused with "unavailable" (callers retry), and the shards actor
//! passivates its least recently used entities on every sample. Every limit elsewhere (queues,
//! frames, pre-handshake bytes, converter workers outside the process) is sized so that honest
//! and hostile load together stay well below the budget; this is the backstop.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::config::LimitsSection;
use crate::metrics as names;

/// How often the resident set is sampled.
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(250);
/// Pressure ends this many percentage points below where it starts (no flapping).
const HYSTERESIS_PERCENT: u64 = 10;

/// The node's memory state, shared by the watchdog and whoever must refuse work.
#[derive(Debug)]
pub struct MemoryBudget {
    budget_bytes: u64,
    enter_bytes: u64,
    leave_bytes: u64,
    resident_bytes: AtomicU64,
    pressure: AtomicBool,
}

impl MemoryBudget {
    pub fn new(limits: &LimitsSection) -> Self {
        let budget = limits.memory_bytes_max;
        let percent = u64::from(limits.memory_pressure_percent);
        Self {
            budget_bytes: budget,
            enter_bytes: budget / 100 * percent,
            leave_bytes: budget / 100 * percent.saturating_sub(HYSTERESIS_PERCENT),
            resident_bytes: AtomicU64::new(0),
            pressure: AtomicBool::new(false),
        }
    }

    /// True while the node is above its pressure mark: refuse new work.
    pub fn under_pressure(&self) -> bool {
        self.pressure.load(Ordering::Relaxed)
    }

    /// The last sampled resident set, in bytes.
    pub fn resident_bytes(&self) -> u64 {
        self.resident_bytes.load(Ordering::Relaxed)
    }

    pub fn budget_bytes(&self) -> u64 {
        self.budget_bytes
    }

    /// Records a sample; returns whether the node is under pressure now.
    pub fn record(&self, resident: u64) -> bool {
        self.resident_bytes.store(resident, Ordering::Relaxed);
        metrics::gauge!(names::PROCESS_RESIDENT_BYTES).set(resident as f64);
        let was = self.under_pressure();
        let now = if was {
            resident > self.leave_bytes
        } else {
            resident > self.enter_bytes
        };
        if now != was {
            self.pressure.store(now, Ordering::Relaxed);
            metrics::gauge!(names::MEMORY_PRESSURE).set(if now { 1.0 } else { 0.0 });
            let resident_mib = resident / (1024 * 1024);
            let budget_mib = self.budget_bytes / (1024 * 1024);
            if now {
                tracing::warn!(
                    resident_mib,
                    budget_mib,
                    "memory pressure: refusing new connections, uploads and entity activations, passivating idle entities"
                );
            } else {
                tracing::info!(resident_mib, budget_mib, "memory pressure over");
            }
        }
        now
    }

    /// Samples every [`SAMPLE_INTERVAL`] until the budget is dropped; `under_pressure` runs
    /// on every sample taken under pressure (the shards actor sheds entities there).
    pub fn start_watchdog(
        budget: &Arc<MemoryBudget>,
        under_pressure: impl Fn() + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let budget = Arc::downgrade(budget);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(SAMPLE_INTERVAL);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(budget) = budget.upgrade() else {
                    return;
                };
                let Some(resident) = resident_bytes() else {
                    continue;
                };
                if budget.record(resident) {
                    under_pressure();
                }
            }
        })
    }
}

/// This process's resident set size, from `/proc/self/status` (Linux); `None` elsewhere.
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_rss(&status)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pressure_starts_above_its_mark_and_ends_below_a_lower_one() {
        let budget = MemoryBudget::new(&LimitsSection {
            memory_bytes_max: 1000 * 1024 * 1024,
            memory_pressure_percent: 80,
        });
        let mib = 1024 * 1024;
        assert!(!budget.record(700 * mib));
        assert!(budget.record(810 * mib), "above 80 %");
        assert!(budget.record(750 * mib), "still above 70 %: no flapping");
        assert!(!budget.record(690 * mib), "below 70 %");
        assert_eq!(budget.resident_bytes(), 690 * mib);
    }

    #[test]
    fn the_resident_set_is_read_from_proc() {
        assert_eq!(
            parse_vm_rss("Name:\tnode\nVmRSS:\t  123456 kB\nVmSwap: 0 kB\n"),
            Some(123_456 * 1024)
        );
        assert_eq!(parse_vm_rss("Name: x\n"), None);
        if cfg!(target_os = "linux") {
            assert!(resident_bytes().is_some_and(|bytes| bytes > 0));
        }
    }
}
