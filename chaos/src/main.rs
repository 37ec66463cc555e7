//! The `chaos` command: `chaos run ...` starts a real cluster, drives a workload through it,
//! injects seeded faults, checks the reliability invariants and writes a report.
//! See `chaos run --help` and the README's "Chaos" section.

use std::path::PathBuf;
use std::process::ExitCode;

use chaos::run::{RunOptions, run};
use chaos::scenario::{JobsMode, NetworkMode, RangeMs, Scenario, parse_duration, parse_fault_list};
use clap::{Parser, Subcommand};

/// Failover bound of runs on the moto S3 server (see where it is applied).
const S3_FAILOVER_BOUND_MS: u64 = 8_000;
#[derive(Parser)]
#[command(name = "chaos", about = "ActorHub's fault-injection harness")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Starts a cluster, runs the workload under seeded faults, checks the invariants. Exits 0
    /// when every invariant holds, 1 on a violation, 2 when the run could not be done, 130 when
    /// interrupted.
    Run(Box<RunArgs>),
    /// Writes the hostile corpus (inputs made to hurt converters) and its INDEX.tsv to a
    /// directory.
    Corpus {
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// A TOML scenario (same names as below, plus timings); flags given here override it.
    #[arg(long)]
    scenario: Option<PathBuf>,
    #[arg(long)]
    nodes: Option<usize>,
    /// E.g. 60s, 10m.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<std::time::Duration>,
    /// Replays a run: the same seed gives the same fault schedule. Drawn from the clock if absent.
    #[arg(long)]
    seed: Option<u64>,
    /// Comma-separated: kill, pause, partition, restart.
    #[arg(long)]
    faults: Option<String>,
    /// Runs hostile clients beside the honest ones (every kind, in phases; a scenario's
    /// `[hostile]` table sets them in detail).
    #[arg(long)]
    hostile: bool,
    /// Plaintext cluster traffic instead of mutual TLS.
    #[arg(long)]
    plaintext: bool,
    /// The shared store on a real S3 server (moto from .ci/install-deps) instead of a
    /// directory; nodes run on loopback then.
    #[arg(long)]
    s3: bool,
    /// Faults active at once (default 1).
    #[arg(long)]
    concurrent_faults: Option<usize>,
    #[arg(long)]
    rooms: Option<usize>,
    /// auto (namespaces when root with ip and nft), netns, loopback.
    #[arg(long)]
    network: Option<NetworkMode>,
    /// auto (when the cluster serves GET /api/converters) or off.
    #[arg(long)]
    jobs: Option<String>,
    /// Milliseconds between a client's ack and its next post.
    #[arg(long)]
    post_interval_ms: Option<u64>,
    /// Quiet time between faults, e.g. 2000..5000 (milliseconds).
    #[arg(long)]
    fault_gap_ms: Option<String>,
    /// Output folder (default target/chaos/<seed>-<timestamp>/).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The node binary (default target/release/node if it exists, else target/debug/node).
    #[arg(long)]
    node_bin: Option<PathBuf>,
}

fn main() -> ExitCode {
    let arguments = match Cli::parse().command {
        Command::Run(arguments) => *arguments,
        Command::Corpus { out } => {
            return match chaos::corpus::write_corpus(&out) {
                Ok(written) => {
                    println!("{} files written to {}", written.len(), out.display());
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!(
                        "chaos: cannot write the corpus to {}: {error}",
                        out.display()
                    );
                    ExitCode::from(2)
                }
            };
        }
    };
    let replay = replay_command();
    let options = match options(arguments, replay) {
        Ok(options) => options,
        Err(error) => {
            eprintln!("chaos: {error:#}");
            return ExitCode::from(2);
        }
    };
    ExitCode::from(run(options).exit_code())
}

fn options(arguments: RunArgs, replay_command: String) -> anyhow::Result<RunOptions> {
    let mut scenario = match &arguments.scenario {
        Some(path) => Scenario::from_file(path)?,
        None => Scenario::default(),
    };
    if let Some(nodes) = arguments.nodes {
        scenario.nodes = nodes;
    }
    if let Some(duration) = arguments.duration {
        scenario.duration = duration;
    }
    if arguments.seed.is_some() {
        scenario.seed = arguments.seed;
    }
    if let Some(faults) = &arguments.faults {
        scenario.faults = parse_fault_list(faults)?;
    }
    if arguments.hostile {
        scenario.hostile.enabled = true;
    }
    if arguments.plaintext {
        scenario.tls = false;
    }
    if arguments.s3 {
        scenario.s3 = true;
        // moto is one Python process answering every request of three nodes: a new owner's
        // claims, seals and reads take it seconds where S3 takes a fraction of one
        // (`benches` rehost measures re-hosting with S3's latency). The bounds on it say
        // whether rooms come back, not how fast S3 would make them.
        scenario.failover_bound_kill_ms = scenario.failover_bound_kill_ms.max(S3_FAILOVER_BOUND_MS);
        scenario.failover_bound_freeze_ms =
            scenario.failover_bound_freeze_ms.max(S3_FAILOVER_BOUND_MS);
    }
    if let Some(concurrent) = arguments.concurrent_faults {
        scenario.concurrent_faults_max = concurrent;
    }
    if let Some(rooms) = arguments.rooms {
        scenario.rooms = rooms;
    }
    if let Some(network) = arguments.network {
        scenario.network = network;
    }
    if let Some(jobs) = &arguments.jobs {
        scenario.jobs = match jobs.as_str() {
            "auto" => JobsMode::Auto,
            "off" => JobsMode::Off,
            other => anyhow::bail!("--jobs: {other:?} is not auto or off"),
        };
    }
    if let Some(interval) = arguments.post_interval_ms {
        scenario.post_interval_ms = interval;
    }
    if let Some(gap) = &arguments.fault_gap_ms {
        let (min, max) = gap
            .split_once("..")
            .ok_or_else(|| anyhow::anyhow!("--fault-gap-ms: use MIN..MAX"))?;
        scenario.fault_gap_ms = RangeMs::new(min.trim().parse()?, max.trim().parse()?);
    }
    scenario.validate()?;
    let node_binary = match arguments.node_bin {
        Some(path) => path,
        None => default_node_binary(),
    };
    if !node_binary.is_file() {
        anyhow::bail!(
            "no node binary at {}: build it (cargo build --release -p node) or pass --node-bin",
            node_binary.display()
        );
    }
    // Nodes run in their cluster directory: a relative path would not resolve there.
    let node_binary = std::fs::canonicalize(&node_binary)?;
    Ok(RunOptions {
        scenario,
        out_dir: arguments.out,
        node_binary,
        replay_command,
    })
}

fn default_node_binary() -> PathBuf {
    if let Some(path) = std::env::var_os(chaos::cluster::NODE_BINARY_ENV) {
        return PathBuf::from(path);
    }
    let release = PathBuf::from("target/release/node");
    if release.is_file() {
        release
    } else {
        PathBuf::from("target/debug/node")
    }
}

/// The command line as given, with the seed added when absent, is how to replay the run; the
/// seed is filled in by the run itself, so this keeps the arguments.
fn replay_command() -> String {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    format!("cargo run --release -p chaos -- {}", arguments.join(" "))
}
