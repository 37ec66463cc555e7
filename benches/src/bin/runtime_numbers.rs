//! `runtime_numbers`: prints, as JSON lines, the runtime numbers criterion does not give
//! (percentiles, cross-node and failover timings). One mode per run, because each cross-node
//! mode makes this process a cluster node and ractor's registries are process-global.
//!
//! ```text
//! cargo build --release -p node -p benches --bins
//! target/release/runtime_numbers journal-append
//! target/release/runtime_numbers cross-node
//! target/release/runtime_numbers failover
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use benches::cross_node::CrossNodeOptions;
use benches::failover::FailoverOptions;
use benches::journal_append::JournalAppendOptions;
use clap::{Parser, Subcommand};
use serde_json::Value;

/// Longest any one mode may run before it is abandoned as failed.
const MODE_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Parser)]
#[command(about = "Runtime numbers (percentiles, cross-node, failover) as JSON lines")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// `Journal::append` latency (sequential) and throughput (concurrent writers).
    JournalAppend {
        #[arg(long, default_value_t = 2_000)]
        appends: u64,
        #[arg(long, default_value_t = 64)]
        writers: usize,
        #[arg(long, default_value_t = 50)]
        appends_per_writer: u64,
        /// Parent of the throw-away object store (default: the system temp directory). Its
        /// file system decides what an fsync costs.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Remote ask round trip and remote tell throughput against one `node run` process.
    CrossNode {
        #[arg(long, default_value_t = 500)]
        warmup_asks: usize,
        #[arg(long, default_value_t = 5_000)]
        asks: usize,
        #[arg(long, default_value_t = 100_000)]
        tells: u64,
        #[arg(long, default_value_t = 60)]
        barrier_timeout_s: u64,
        /// Turn `storage.fsync` on (default off: measure messaging, not the disk).
        #[arg(long)]
        fsync: bool,
        /// Override `entities.pending_commands_max` of the cluster.
        #[arg(long)]
        pending_commands_max: Option<u64>,
        /// Mutual TLS on the cluster links (as `node up` runs by default).
        #[arg(long)]
        tls: bool,
    },
    /// Time from SIGKILL of an entity's owner to the first answer of the next owner.
    Failover {
        #[arg(long, default_value_t = 20)]
        rounds: usize,
        /// Seeds the choice of victims (default: random, printed).
        #[arg(long)]
        seed: Option<u64>,
    },
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let name = mode_name(&cli.mode);
    match tokio::time::timeout(MODE_TIMEOUT, run(cli.mode)).await {
        Ok(Ok(results)) => {
            for result in results {
                println!("{result}");
            }
            ExitCode::SUCCESS
        }
        Ok(Err(error)) => {
            eprintln!("runtime_numbers {name} failed: {error:#}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("runtime_numbers {name} failed: did not finish within {MODE_TIMEOUT:?}");
            ExitCode::FAILURE
        }
    }
}

async fn run(mode: Mode) -> anyhow::Result<Vec<Value>> {
    match mode {
        Mode::JournalAppend {
            appends,
            writers,
            appends_per_writer,
            dir,
        } => {
            let parent = dir.unwrap_or_else(std::env::temp_dir);
            let directory = tempfile::Builder::new()
                .prefix("actorhub-journal-bench-")
                .tempdir_in(&parent)?;
            let options = JournalAppendOptions {
                sequential_appends: appends,
                writers,
                appends_per_writer,
                ..JournalAppendOptions::default()
            };
            benches::journal_append::run(directory.path(), &options).await
        }
        Mode::CrossNode {
            warmup_asks,
            asks,
            tells,
            barrier_timeout_s,
            fsync,
            pending_commands_max,
            tls,
        } => {
            let options = CrossNodeOptions {
                warmup_asks,
                asks,
                tells,
                barrier_timeout: Duration::from_secs(barrier_timeout_s),
                fsync,
                pending_commands_max,
                tls,
            };
            benches::cross_node::run(&options).await
        }
        Mode::Failover { rounds, seed } => {
            let options = FailoverOptions {
                rounds,
                seed: seed.unwrap_or_else(|| fastrand::u64(..)),
            };
            benches::failover::run(&options).await
        }
    }
}

fn mode_name(mode: &Mode) -> &'static str {
    match mode {
        Mode::JournalAppend { .. } => "journal-append",
        Mode::CrossNode { .. } => "cross-node",
        Mode::Failover { .. } => "failover",
    }
}
