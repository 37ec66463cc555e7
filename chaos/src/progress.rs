//! The live progress line: elapsed time, faults so far (and the active ones), messages
//! acknowledged, retries, reconnects, jobs, hostile actions. Redrawn in place on a terminal;
//! otherwise a line every ten seconds and at every new fault, so CI logs stay short.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;

use crate::faults::Injector;
use crate::workload::{Clock, Progress};

/// How often the progress line is refreshed (on a terminal; every 10th otherwise).
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// Prints the live progress line until `stop`.
pub async fn show_progress(
    clock: Clock,
    duration_ms: u64,
    progress: Arc<Progress>,
    injector: Arc<Injector>,
    mut stop: watch::Receiver<bool>,
) {
    let terminal = std::io::stderr().is_terminal();
    let mut tick = 0u64;
    let mut last_acked = 0;
    let mut last_faults = 0;
    while !*stop.borrow() {
        tokio::select! {
            _ = tokio::time::sleep(PROGRESS_INTERVAL) => {}
            _ = stop.changed() => break,
        }
        tick += 1;
        let acked = progress.acked.load(Ordering::Relaxed);
        let faults = progress.faults_started.load(Ordering::Relaxed);
        let active = injector.active_faults();
        let rate = acked.saturating_sub(last_acked) as f64 / PROGRESS_INTERVAL.as_secs_f64();
        last_acked = acked;
        let line = format!(
            "[{:6.1}s / {}s] faults {faults}{} | acked {acked} ({rate:.0}/s) | retries {} | reconnects {} | jobs done {}/{} | hostile actions {}",
            clock.now_ms() as f64 / 1000.0,
            duration_ms / 1000,
            if active.is_empty() {
                String::new()
            } else {
                format!(" (now: {})", active.join(", "))
            },
            progress.retries.load(Ordering::Relaxed),
            progress.reconnects.load(Ordering::Relaxed),
            progress.jobs_finished.load(Ordering::Relaxed),
            progress.jobs_accepted.load(Ordering::Relaxed),
            progress.hostile_actions.load(Ordering::Relaxed),
        );
        if terminal {
            eprint!("\r\x1b[2K{line}");
            if faults != last_faults {
                eprintln!();
            }
        } else if tick.is_multiple_of(10) || faults != last_faults {
            eprintln!("{line}");
        }
        last_faults = faults;
    }
    if terminal {
        eprintln!();
    }
}
