//! The one wall clock: milliseconds (and seconds) since the Unix epoch, for timestamps that
//! are journaled, shown or compared across nodes. Durations and deadlines within a process
//! use `Instant` instead: the wall clock may jump.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch; 0 for a clock set before it.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}

/// Whole seconds since the Unix epoch (token lifetimes count in seconds).
pub fn unix_s() -> u64 {
    unix_ms() / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_and_milliseconds_agree() {
        let before_ms = unix_ms();
        let seconds = unix_s();
        let after_ms = unix_ms();
        assert!(before_ms / 1000 <= seconds && seconds <= after_ms / 1000);
        assert!(before_ms > 1_600_000_000_000, "a clock after 2020");
    }
}
