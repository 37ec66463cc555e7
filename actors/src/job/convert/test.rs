//! Test-only converters, listed and accepted only with `jobs.test_converters = true`:
//! - `slow`: copies its input after `duration_ms` (default 5 s), reporting progress every tenth
//!   and stopping at once when cancelled or past its deadline: the failover and timeout tests
//!   need a job that is still running when they act.
//! - `panic`: panics, to show that a converter crash fails only its job.

use std::time::{Duration, Instant};

use super::{Conversion, ConvertError, Converted};

/// Default run time of the `slow` converter.
pub const SLOW_DEFAULT_MS: u64 = 5_000;
/// How often `slow` checks for cancellation.
const SLOW_TICK: Duration = Duration::from_millis(20);

pub fn slow(conversion: &Conversion<'_>) -> Result<Converted, ConvertError> {
    let duration = Duration::from_millis(conversion.options.duration_ms.unwrap_or(SLOW_DEFAULT_MS));
    let started = Instant::now();
    let mut reported = 0;
    loop {
        conversion.checkpoint()?;
        let elapsed = started.elapsed();
        if elapsed >= duration {
            break;
        }
        let tenth = (elapsed.as_millis() * 10 / duration.as_millis().max(1)) as u8;
        if tenth > reported {
            reported = tenth;
            (conversion.progress)(10 + tenth * 8, "sleeping");
        }
        std::thread::sleep(SLOW_TICK.min(duration - elapsed));
    }
    Ok(Converted {
        bytes: conversion.input.to_vec(),
        format: conversion.from,
    })
}

pub fn panic() -> ! {
    panic!("the test converter `panic` panicked on purpose");
}
