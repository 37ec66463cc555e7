//! `node run`: one node in the foreground, from start to graceful shutdown.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusBuilder;
use ractor::{Actor, ActorCell};
use runtime::NodeBuilder;
use runtime::node::Leave;

use crate::config_file::Config;
use runtime::supervisor::{ChildSpec, Restart, Strategy, SupervisorActor, SupervisorSpec};
use tokio::signal::unix::{SignalKind, signal};

/// How often the Prometheus recorder folds histograms (required with `install_recorder`).
const METRICS_UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Logs to stderr (`RUST_LOG`, `ACTORHUB_LOG_FORMAT=json`) and, when `[telemetry]` names an
/// OTLP endpoint, the runtime's trace spans to it: each layer has its own filter, so the
/// exported DEBUG spans do not change what is logged. Call it before the async runtime starts
/// (the exporter's HTTP client has a runtime of its own); flush what it returns at exit.
pub fn init_tracing(
    telemetry: &crate::telemetry::TelemetrySection,
    node_id: &str,
) -> anyhow::Result<Option<crate::telemetry::Traces>> {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::{EnvFilter, Layer as _, Registry};
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,ractor_cluster=warn,ractor=warn"));
    let json = std::env::var("ACTORHUB_LOG_FORMAT").is_ok_and(|format| format == "json");
    let logs: Box<dyn tracing_subscriber::Layer<Registry> + Send + Sync> = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .boxed()
    };
    let (traces_layer, traces) = match crate::telemetry::layer(telemetry, node_id)? {
        Some((layer, traces)) => (Some(layer), Some(traces)),
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .with(traces_layer)
        .init();
    if let Some(url) = telemetry.traces_url().filter(|_| traces.is_some()) {
        tracing::info!(node = node_id, %url, "exporting trace spans over OTLP/HTTP");
    }
    Ok(traces)
}

/// The supervisor of this node's WebSocket sessions: one-for-one, sessions are temporary
/// (a crashed session closes its connection; the client reconnects).
fn sessions_supervisor(node_id: &str) -> ChildSpec {
    let name = web::ws::sessions_supervisor_name(node_id);
    ChildSpec::new(
        name.clone(),
        Restart::Permanent,
        move |parent: ActorCell| {
            let name = name.clone();
            async move {
                let spec = SupervisorSpec::new(Strategy::OneForOne, Vec::new());
                let (actor, _) =
                    Actor::spawn_linked(Some(name), SupervisorActor, spec, parent).await?;
                Ok(actor.get_cell())
            }
        },
    )
}

/// How this node starts converter workers: its own binary, LibreOffice if it is on the PATH,
/// the system's temporary directory. Read here because only this crate reads the environment.
fn converter_program() -> anyhow::Result<actors::job::port::WorkerProgram> {
    let program =
        std::env::current_exe().context("cannot find this program's own path to run workers")?;
    let office = std::env::var_os("PATH").and_then(|path| {
        actors::job::port::find_program(actors::job::convert::OFFICE_PROGRAM, &path)
    });
    tracing::info!(
        office = office.is_some(),
        "conversions run in worker processes of this binary"
    );
    Ok(actors::job::port::WorkerProgram {
        program: Some(program),
        office,
        temp_root: std::env::temp_dir(),
    })
}

pub fn run(config: Config, node_id: &str) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name(format!("{node_id}-worker"))
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run_node(config, node_id))
}

async fn run_node(config: Config, node_id: &str) -> anyhow::Result<()> {
    let Config {
        cluster: config,
        app,
        web: web_settings,
        telemetry: _,
    } = config;
    let app = Arc::new(app);
    let metrics = PrometheusBuilder::new()
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    runtime::metrics::describe();
    actors::metrics::describe();
    actors::job::metrics::describe();
    let upkeep = metrics.clone();
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(METRICS_UPKEEP_INTERVAL);
        loop {
            interval.tick().await;
            upkeep.run_upkeep();
        }
    });

    let http_addr = config.node(node_id)?.http_addr;
    let shutdown_timeout = Duration::from_millis(web_settings.shutdown_timeout_ms);
    let drain_timeout = Duration::from_millis(config.cluster.drain_timeout_ms);
    if !http_addr.ip().is_loopback() && config.cluster.tls.is_none() {
        tracing::warn!(
            "cluster traffic is PLAINTEXT beyond loopback (`cluster.plaintext_beyond_loopback`): anyone on the network can read it; set `[cluster.tls]` for anything but a network you trust completely"
        );
    } else if config.cluster.tls.is_none() {
        tracing::warn!(
            "cluster traffic is plaintext (loopback development); `[cluster.tls]` turns on mutual TLS"
        );
    }
    // `POST /api/admin/drain` asks for what SIGTERM does.
    let drain = Arc::new(tokio::sync::Notify::new());
    let secret = web_settings
        .jwt_secret
        .clone()
        .context("`web.jwt_secret` is not set; set it in the config or in ACTORHUB_JWT_SECRET")?;

    let mailer = actors::mailer::from_config(&app.users, &config.node_data_dir(node_id))
        .context("cannot set up the mailer of `[users]`")?;
    let deps = actors::AppDeps {
        node_id: node_id.to_string(),
        config: app.clone(),
        converters: converter_program().context("cannot set up the converter workers")?,
    };
    let builder = actors::register(NodeBuilder::new(config, node_id)?, &deps);
    let mut node = builder.start().await.context("cannot start the node")?;
    node.start_child(sessions_supervisor(node_id))
        .await
        .context("cannot start the sessions supervisor")?;
    // Sessions learn of membership changes (new room owners) from this one task.
    let view_relay = actors::session::spawn_view_relay(node.runtime());
    // Who is in each room: kept here for this node's sessions, healed from the view.
    let presence = runtime::presence::Presence::start(
        node.runtime(),
        runtime::presence::PresenceSettings {
            listed_max: app.rooms.presence_listed_max,
        },
    );
    node.start_child(actors::job::port::supervisor_child_spec(node_id))
        .await
        .context("cannot start the converter ports supervisor")?;
    let revive_interval = Duration::from_millis(app.jobs.revive_interval_ms);
    node.start_child(actors::job::reviver::child_spec(
        node.runtime(),
        revive_interval,
        Duration::from_secs(app.jobs.finished_ttl_s),
    ))
    .await
    .context("cannot start the job reviver")?;
    node.start_child(actors::room::lister::child_spec(node.runtime()))
        .await
        .context("cannot start the room lister")?;
    let state = web::AppState {
        runtime: node.runtime(),
        metrics,
        tokens: Arc::new(
            web::auth::TokenKeys::new(secret.as_bytes()).with_previous(
                web_settings
                    .jwt_previous_secret
                    .as_deref()
                    .map(str::as_bytes),
            ),
        ),
        connections: Arc::default(),
        accounts: actors::user::service::Accounts::new(
            node.runtime(),
            Arc::new(app.users.clone()),
            mailer,
            format!("http://{http_addr}"),
        ),
        rooms: actors::room::Rooms::new(node.runtime(), app.rooms.clone()),
        presence,
        jobs: actors::job::service::Jobs::new(node.runtime(), Arc::new(app.jobs.clone())),
        app,
        limits: web::limits::Limits::shared(&web_settings.limits),
        web: Arc::new(web_settings),
        drain: drain.clone(),
    };
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = web::serve(http_addr, state, async move {
        let _ = http_stopped.await;
    })
    .await?;
    tracing::info!(node = node_id, url = %format!("http://{http_addr}/"), "serving HTTP");

    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let outcome = tokio::select! {
        _ = terminate.recv() => Ok("SIGTERM"),
        _ = interrupt.recv() => Ok("SIGINT"),
        () = drain.notified() => Ok("a drain request"),
        () = node.stopped() => Err(anyhow::anyhow!("the supervision tree gave up after repeated failures; see the errors above")),
    };
    let reason = match outcome {
        Ok(reason) => reason,
        Err(error) => return Err(error),
    };
    let started = std::time::Instant::now();
    tracing::info!(
        node = node_id,
        cause = reason,
        drain_deadline_ms = drain_timeout.as_millis() as u64,
        "leaving the cluster: handing entities over to the other members"
    );
    // Sessions and HTTP keep serving while the peers take the entities over (asks follow the
    // entities to their new owners); a second signal cuts the wait short.
    let left = tokio::select! {
        left = node.leave(drain_timeout) => left,
        _ = terminate.recv() => Leave::Deadline,
        _ = interrupt.recv() => Leave::Deadline,
    };
    match left {
        Leave::HandedOver => tracing::info!(
            node = node_id,
            ms = started.elapsed().as_millis() as u64,
            "every entity has a new owner; closing sessions (they reconnect to other nodes) and stopping"
        ),
        Leave::Alone => tracing::info!(
            node = node_id,
            "no other member is up: nothing to hand over; stopping (the entities come back from the journal on the next start)"
        ),
        Leave::Deadline => tracing::warn!(
            node = node_id,
            ms = started.elapsed().as_millis() as u64,
            "the other members did not take every entity over before the drain deadline (or a second signal came); the rest fail over as after a crash"
        ),
    }
    let _ = stop_http.send(());
    if tokio::time::timeout(shutdown_timeout, server)
        .await
        .is_err()
    {
        tracing::warn!("HTTP connections still open at the deadline; closing them");
    }
    view_relay.abort();
    // Hibernated sessions have no actor for the supervision tree to stop: they close their
    // connections on this announcement (running ones too, as the tree's stop would).
    actors::session::announce_node_stopping(&node.runtime());
    node.shutdown(shutdown_timeout).await;
    tracing::info!(
        node = node_id,
        ms = started.elapsed().as_millis() as u64,
        "stopped"
    );
    Ok(())
}
