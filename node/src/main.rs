//! The `node` binary: `run` one node, bring `up` a local cluster, or mint a `token`.
//! Thin by design: parse the command line, set up logging, hand over.

mod config_file;
mod run;
mod up;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
        /// The node's id, as in a [[node]] entry of the config.
        #[arg(long)]
        id: String,
    },
    /// Start every node of the config as a local child process and show them together.
    Up {
        #[arg(long, default_value = "cluster.toml")]
        config: PathBuf,
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
        Command::Run { config, id } => {
            let config = match config_file::load(&config) {
                Ok(config) => config,
                Err(error) => return config_error(&error),
            };
            if let Err(error) = config.cluster.node(&id) {
                return config_error(&anyhow::anyhow!(error));
            }
            run::init_tracing();
            exit_with(run::run(config, &id))
        }
        Command::Up { config: path } => {
            let config = match config_file::load(&path) {
                Ok(config) => config,
                Err(error) => return config_error(&error),
            };
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(runtime) => runtime,
                Err(error) => return exit_with(Err(error.into())),
            };
            exit_with(runtime.block_on(up::run(&path, &config.cluster)))
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
