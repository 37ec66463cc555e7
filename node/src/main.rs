//! The `node` binary: `run` one node, bring `up` a local cluster, mint a `token`, make the
//! cluster's TLS `certs`, and the operator's `status` and `drain`.
//! Thin by design: parse the command line, set up logging, hand over.

mod admin;
mod config_file;
mod run;
mod secrets;
mod telemetry;
mod up;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// jemalloc instead of the system allocator: see `node/Cargo.toml`.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "node",
    version,
    about = "ActorHub: supervised actors over a cluster of nodes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one node of the cluster in the foreground.
    Run {
        #[arg(long, default_value = "cluster.toml")]
        config: PathBuf,
        /// The node's id: a [[node]] entry of the config, or a new node given its addresses.
        #[arg(long)]
        id: String,
        /// The address peers reach this node's cluster port at (overrides its [[node]] entry).
        #[arg(long)]
        cluster_addr: Option<std::net::SocketAddr>,
        /// The address of this node's HTTP server (overrides its [[node]] entry).
        #[arg(long)]
        http_addr: Option<std::net::SocketAddr>,
        /// A running member's cluster address (`host:port`; a DNS name may resolve to several),
        /// to join through. Repeatable; adds to `cluster.seeds`.
        #[arg(long)]
        join: Vec<String>,
    },
    /// Start every node of the config as a local child process and show them together.
    /// Generates the cluster's secrets and TLS certificates on first start.
    Up {
        #[arg(long, default_value = "cluster.toml")]
        config: PathBuf,
        /// Show every node's log lines (default: warnings and errors only).
        #[arg(long)]
        verbose: bool,
    },
    /// Create the cluster CA and a certificate per node, or add nodes to an existing CA.
    Certs {
        #[arg(long, default_value = "cluster.toml")]
        config: PathBuf,
        /// The directory to write: ca.pem, ca.key (keep it private), <node>.pem, <node>.key.
        #[arg(long)]
        out: PathBuf,
        /// A node to certify (repeatable); default: every [[node]] of the config.
        #[arg(long = "node")]
        nodes: Vec<String>,
    },
    /// Show the cluster: members, their state, protocol, version and active entities.
    Status {
        #[arg(long, default_value = "cluster.toml")]
        config: PathBuf,
        /// The HTTP address of the node to ask (default: the config's [[node]] entries).
        #[arg(long)]
        http_addr: Option<std::net::SocketAddr>,
    },
    /// Ask a node to leave the cluster gracefully: its entities move to the others, then it stops.
    Drain {
        #[arg(long, default_value = "cluster.toml")]
        config: PathBuf,
        /// The node to drain.
        #[arg(long)]
        id: String,
        /// Its HTTP address (default: from the cluster's view).
        #[arg(long)]
        http_addr: Option<std::net::SocketAddr>,
    },
    /// Print a signed session token for scripts and benchmarks.
    Token {
        #[arg(long, default_value = "cluster.toml")]
        config: PathBuf,
        /// The user id the token is for.
        #[arg(long)]
        user: String,
        /// Lifetime, e.g. 90s, 30m, 1h, 7d.
        #[arg(long, default_value = "1h", value_parser = parse_duration_s)]
        ttl: u64,
    },
}

/// Exit code for a configuration error (distinct from a crash).
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    // A converter worker (started by this node's own converter ports): no logging, no async
    // runtime, and its limits applied before anything else happens (see actors::job::port).
    let mut args = std::env::args_os().skip(1);
    if args
        .next()
        .is_some_and(|command| command == actors::job::port::worker::SUBCOMMAND)
    {
        return actors::job::port::worker::main(args);
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            config,
            id,
            cluster_addr,
            http_addr,
            join,
        } => {
            let flags = config_file::NodeFlags {
                id: id.clone(),
                cluster_addr,
                http_addr,
                join,
            };
            let config = match config_file::load_for_node(&config, &flags) {
                Ok(config) => config,
                Err(error) => return config_error(&error),
            };
            if let Err(error) = config.cluster.node(&id) {
                return config_error(&anyhow::anyhow!(error));
            }
            if let Err(error) = secrets::refuse_unsafe(&config, &id) {
                return config_error(&error);
            }
            let traces = match run::init_tracing(&config.telemetry, &id) {
                Ok(traces) => traces,
                Err(error) => return config_error(&error),
            };
            let outcome = run::run(config, &id);
            // After the async runtime is gone: the exporter's client blocks.
            if let Some(traces) = traces {
                traces.shutdown();
            }
            exit_with(outcome)
        }
        Command::Certs { config, out, nodes } => {
            let config = match config_file::load_offline(&config) {
                Ok(config) => config,
                Err(error) => return config_error(&error),
            };
            exit_with(admin::certs(&config, &out, &nodes))
        }
        Command::Status { config, http_addr } => {
            let config = match config_file::load(&config) {
                Ok(config) => config,
                Err(error) => return config_error(&error),
            };
            exit_with(admin::block_on(admin::status(&config, http_addr)))
        }
        Command::Drain {
            config,
            id,
            http_addr,
        } => {
            let config = match config_file::load(&config) {
                Ok(config) => config,
                Err(error) => return config_error(&error),
            };
            exit_with(admin::block_on(admin::drain(&config, &id, http_addr)))
        }
        Command::Up {
            config: path,
            verbose,
        } => {
            let config = match config_file::load(&path) {
                Ok(config) => config,
                Err(error) => return config_error(&error),
            };
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(runtime) => runtime,
                Err(error) => return exit_with(Err(error.into())),
            };
            exit_with(runtime.block_on(up::run(&path, &config.cluster, verbose)))
        }
        Command::Token { config, user, ttl } => {
            let config = match config_file::load(&config) {
                Ok(config) => config,
                Err(error) => return config_error(&error),
            };
            let Some(secret) = config.web.jwt_secret.as_deref() else {
                return config_error(&anyhow::anyhow!(
                    "`web.jwt_secret` is not set; set it in the config or in ACTORHUB_JWT_SECRET"
                ));
            };
            let keys = web::auth::TokenKeys::new(secret.as_bytes());
            println!("{}", keys.mint(&user, web::auth::unix_now_s(), ttl));
            ExitCode::SUCCESS
        }
    }
}

fn config_error(error: &anyhow::Error) -> ExitCode {
    eprintln!("error: {error:#}");
    ExitCode::from(EXIT_CONFIG)
}

fn exit_with(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// `90s`, `30m`, `1h`, `7d` or plain seconds.
fn parse_duration_s(text: &str) -> Result<u64, String> {
    let (number, unit) = match text.find(|character: char| !character.is_ascii_digit()) {
        Some(split) => text.split_at(split),
        None => (text, "s"),
    };
    let value: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected e.g. 90s, 30m, 1h or 7d"))?;
    let factor = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: unit must be s, m, h or d")),
    };
    match value.checked_mul(factor) {
        Some(0) | None => Err(format!("{text:?}: must be between 1s and a few years")),
        Some(seconds) => Ok(seconds),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_duration_s;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration_s("90s"), Ok(90));
        assert_eq!(parse_duration_s("1h"), Ok(3600));
        assert_eq!(parse_duration_s("45"), Ok(45));
        assert!(parse_duration_s("1y").is_err());
        assert!(parse_duration_s("0s").is_err());
        assert!(parse_duration_s("h").is_err());
    }
}
