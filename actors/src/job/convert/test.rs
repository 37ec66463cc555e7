//! Test-only converters, listed and accepted only with `jobs.test_converters = true`:
//! - `slow`: copies its input after `duration_ms` (default 5 s), reporting progress every tenth
//!   and stopping at once when cancelled or past its deadline: the failover and timeout tests
//!   need a job that is still running when they act.
//! - `panic`: panics, to show that a converter crash fails only its job.
//! - `crash`: aborts its worker process after `duration_ms` (default at once), every time: the
//!   poison quarantine's test case.
//! - `hog`: allocates and touches memory until the worker's memory limit stops it.
//! - `spin`: a busy loop that never checks anything, until the CPU limit or the wall-clock
//!   timeout ends the worker.
//!
//! `crash`, `hog` and `spin` would take the node down if they ran in it: they run only in a
//! converter worker process, as every conversion does.

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

pub fn crash(conversion: &Conversion<'_>) -> ! {
    let delay = Duration::from_millis(conversion.options.duration_ms.unwrap_or(0));
    let started = Instant::now();
    while started.elapsed() < delay {
        (conversion.progress)(50, "about to crash");
        std::thread::sleep(SLOW_TICK.min(delay - started.elapsed()));
    }
    eprintln!("the test converter `crash` aborts on purpose");
    std::process::abort();
}

/// Chunks `hog` allocates at a time.
const HOG_CHUNK_BYTES: usize = 16 * 1024 * 1024;

pub fn hog() -> ! {
    let mut held: Vec<Vec<u8>> = Vec::new();
    loop {
        // Touched, so the pages are really used (RSS), not only reserved.
        held.push(std::hint::black_box(vec![1u8; HOG_CHUNK_BYTES]));
    }
}

pub fn spin() -> ! {
    let mut counter = 0u64;
    loop {
        counter = std::hint::black_box(counter.wrapping_add(1));
    }
}
