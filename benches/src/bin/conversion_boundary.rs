//! The cost of the process boundary of conversions: one small PNG → JPEG converted in-process
//! (`actors::job::convert::convert`, what a node did before converters ran as ports) and
//! through a converter port (a `ConverterPortActor` starting `node convert-worker` in a private
//! directory, sandbox, pipes and all: what a node does now), one at a time and two at a time.
//!
//! ```text
//! cargo build --release -p node -p benches --bin conversion_boundary
//! target/release/conversion_boundary [--iterations 300] [--side 256]
//! ```
//! Prints one line per path: conversions per second, p50 and p99 per conversion.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use actors::job::convert::{Conversion, Options, Target, convert};
use actors::job::format::Format;
use actors::job::port::protocol::{PROTOCOL_VERSION, Request};
use actors::job::port::sandbox::WorkerLimits;
use actors::job::port::{
    PortJob, PortOutcome, PrivateDirectory, convert_in_port, ports_supervisor_name,
};
use anyhow::Context;
use ractor::Actor;
use runtime::supervisor::{Strategy, SupervisorActor, SupervisorSpec};

const NODE: &str = "bench";

fn picture(side: u32) -> Vec<u8> {
    let image = image::RgbImage::from_fn(side, side, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x * y) % 256) as u8])
    });
    let mut bytes = Vec::new();
    image::DynamicImage::ImageRgb8(image)
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .expect("png in memory");
    bytes
}

fn summary(name: &str, mut times: Vec<Duration>, wall: Duration) {
    times.sort();
    let at = |fraction: f64| times[((times.len() as f64 * fraction) as usize).min(times.len() - 1)];
    println!(
        "{name:<34} {:>7.1} conversions/s   p50 {:>8.2?}   p99 {:>8.2?}",
        times.len() as f64 / wall.as_secs_f64(),
        at(0.50),
        at(0.99)
    );
}

fn in_process(input: &[u8]) -> Duration {
    let started = Instant::now();
    let progress = |_: u8, _: &str| {};
    let cancel = AtomicBool::new(false);
    let converted = convert(&Conversion {
        input,
        from: Format::Png,
        to: Target::Format(Format::Jpeg),
        options: &Options::default(),
        output_bytes_max: 64 << 20,
        deadline: Instant::now() + Duration::from_secs(60),
        progress: &progress,
        cancel: &cancel,
        office: None,
    })
    .expect("converts");
    assert_eq!(converted.format, Format::Jpeg);
    started.elapsed()
}

async fn through_port(program: PathBuf, input: Vec<u8>, index: usize) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let directory = PrivateDirectory::create(&std::env::temp_dir())?;
    tokio::fs::write(directory.path().join("input.png"), &input).await?;
    let (progress, _updates) = tokio::sync::watch::channel((0u8, String::new()));
    let (_cancel, cancelled) = tokio::sync::watch::channel(false);
    let outcome = convert_in_port(
        NODE,
        PortJob {
            job: format!("bench-{index}"),
            attempt: format!("bench-{index}"),
            program,
            directory: directory.path().to_path_buf(),
            request: Request {
                v: PROTOCOL_VERSION,
                input: "input.png".into(),
                from: Format::Png,
                target: Target::Format(Format::Jpeg),
                options: Options::default(),
                input_bytes_max: 32 << 20,
                output_bytes_max: 64 << 20,
                time_budget_ms: 60_000,
            },
            limits: WorkerLimits {
                memory_bytes_max: 512 << 20,
                cpu_seconds_max: 60,
                file_bytes_max: 64 << 20,
                open_files_max: 256,
                office: None,
            },
            timeout: Duration::from_secs(60),
            progress,
            cancel: cancelled,
        },
    )
    .await;
    let PortOutcome::Converted { file, .. } = outcome else {
        anyhow::bail!("the worker did not convert: {outcome:?}");
    };
    let output = tokio::fs::read(&file).await?;
    anyhow::ensure!(output.starts_with(&[0xff, 0xd8]), "not a JPEG");
    drop(directory);
    Ok(started.elapsed())
}

async fn ports(
    program: &Path,
    input: &[u8],
    iterations: usize,
    at_once: usize,
) -> anyhow::Result<(Vec<Duration>, Duration)> {
    let began = Instant::now();
    let mut times = Vec::with_capacity(iterations);
    for round in 0..iterations.div_ceil(at_once) {
        let mut handles = Vec::new();
        for slot in 0..at_once {
            let index = round * at_once + slot;
            if index >= iterations {
                break;
            }
            handles.push(tokio::spawn(through_port(
                program.to_path_buf(),
                input.to_vec(),
                index,
            )));
        }
        for handle in handles {
            times.push(handle.await??);
        }
    }
    Ok((times, began.elapsed()))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut iterations = 300usize;
    let mut side = 256u32;
    let mut args = std::env::args().skip(1);
    while let Some(name) = args.next() {
        let value = args.next().context("every option takes a value")?;
        match name.as_str() {
            "--iterations" => iterations = value.parse()?,
            "--side" => side = value.parse()?,
            other => anyhow::bail!("unknown option {other}"),
        }
    }
    let program = benches::process_cluster::node_binary()?;
    let input = picture(side);
    println!(
        "PNG {side}×{side} ({} bytes) → JPEG, {iterations} conversions per path",
        input.len()
    );

    for _ in 0..10 {
        in_process(&input);
    }
    let began = Instant::now();
    let times: Vec<Duration> = (0..iterations).map(|_| in_process(&input)).collect();
    summary("in-process (before), 1 at a time", times, began.elapsed());

    let (_supervisor, _) = Actor::spawn(
        Some(ports_supervisor_name(NODE)),
        SupervisorActor,
        SupervisorSpec::new(Strategy::OneForOne, Vec::new()),
    )
    .await?;
    ports(&program, &input, 10, 1).await?;
    let (times, wall) = ports(&program, &input, iterations, 1).await?;
    summary("worker process (after), 1 at a time", times, wall);
    let (times, wall) = ports(&program, &input, iterations, 2).await?;
    summary("worker process (after), 2 at a time", times, wall);
    Ok(())
}
