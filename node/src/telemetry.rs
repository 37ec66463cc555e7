//! Traces over OpenTelemetry: `[telemetry]` of `cluster.toml` (owned by this crate) and the
//! layer that records the runtime's spans and exports them over OTLP/HTTP when it is set.
//!
//! The crates below name their spans with `tracing` at [`runtime::trace::SPAN_LEVEL`] (see
//! `runtime::trace`); this module is the only place that knows OpenTelemetry. When an endpoint
//! is configured (`otlp_endpoint`, or the standard `OTEL_EXPORTER_OTLP_ENDPOINT` over it) the
//! node adds a tracing-opentelemetry layer with its own filter (those spans, and WARN events
//! inside them; the log filter is left as it is), a batch exporter sending protobuf over HTTP
//! from the SDK's own thread, and installs the W3C TraceContext [`runtime::trace::Propagation`]
//! that carries a span's context to another node in the entity envelope. Without an endpoint
//! there is no layer and no propagation: the spans stay disabled (a callsite check each).

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context as _;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use serde::Deserialize;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{FilterExt as _, Targets, filter_fn};
use tracing_subscriber::registry::LookupSpan;

/// `service.name` of every exported span.
pub const SERVICE_NAME: &str = "actorhub";
/// The standard variable that overrides `telemetry.otlp_endpoint` (a base URL).
pub const OTLP_ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// Appended to the base endpoint, as the OTLP/HTTP specification says.
const TRACES_PATH: &str = "v1/traces";
/// The crates whose spans are exported (module-path prefixes of their targets).
const TRACED_CRATES: [&str; 3] = ["runtime", "actors", "web"];
/// Longest `otlp_endpoint` accepted.
const ENDPOINT_BYTES_MAX: usize = 2048;
/// Bounds of `telemetry.export_interval_ms`.
const EXPORT_INTERVAL_MS_MIN: u64 = 10;
const EXPORT_INTERVAL_MS_MAX: u64 = 60_000;
/// Longest wait for the last spans to leave at shutdown (an unreachable receiver must not
/// hold the node's exit).
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// `[telemetry]`: where traces go. Nothing is recorded unless an endpoint is set.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetrySection {
    /// Base URL of an OTLP/HTTP receiver, e.g. `http://127.0.0.1:4318` (`/v1/traces` is
    /// appended). `OTEL_EXPORTER_OTLP_ENDPOINT` overrides it.
    pub otlp_endpoint: Option<String>,
    /// Longest time a finished span waits in the batch before it is sent.
    pub export_interval_ms: u64,
}

impl Default for TelemetrySection {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            export_interval_ms: 5_000,
        }
    }
}

impl TelemetrySection {
    /// Checks the keys; errors name the key and say what is expected.
    pub fn validate(&self) -> anyhow::Result<()> {
        if let Some(endpoint) = &self.otlp_endpoint {
            check_endpoint(endpoint).with_context(|| {
                format!("`telemetry.otlp_endpoint` (or {OTLP_ENDPOINT_VAR}) {endpoint:?}")
            })?;
        }
        if !(EXPORT_INTERVAL_MS_MIN..=EXPORT_INTERVAL_MS_MAX).contains(&self.export_interval_ms) {
            anyhow::bail!(
                "`telemetry.export_interval_ms` must be between {EXPORT_INTERVAL_MS_MIN} and {EXPORT_INTERVAL_MS_MAX}"
            );
        }
        Ok(())
    }

    /// Sets the endpoint from `OTEL_EXPORTER_OTLP_ENDPOINT` when that is set (non-empty).
    pub fn override_endpoint(&mut self, from_env: Option<String>) {
        if let Some(endpoint) = from_env {
            self.otlp_endpoint = Some(endpoint);
        }
    }

    /// The URL spans are POSTed to, when traces are on.
    pub fn traces_url(&self) -> Option<String> {
        let base = self.otlp_endpoint.as_deref()?;
        Some(format!("{}/{TRACES_PATH}", base.trim_end_matches('/')))
    }
}

fn check_endpoint(endpoint: &str) -> anyhow::Result<()> {
    if endpoint.len() > ENDPOINT_BYTES_MAX {
        anyhow::bail!("is longer than {ENDPOINT_BYTES_MAX} bytes");
    }
    let url = reqwest::Url::parse(endpoint)
        .map_err(|error| anyhow::anyhow!("is not a URL ({error}); e.g. http://127.0.0.1:4318"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        anyhow::bail!("must be an http:// or https:// URL with a host, e.g. http://127.0.0.1:4318");
    }
    if url.query().is_some() || url.fragment().is_some() {
        anyhow::bail!("must be a base URL without query or fragment (`/v1/traces` is appended)");
    }
    Ok(())
}

/// The exporter of a node that sends traces; flush it with [`Traces::shutdown`] on the way out.
pub struct Traces {
    provider: SdkTracerProvider,
}

impl Traces {
    /// Sends the spans still in the batch (bounded by [`FLUSH_TIMEOUT`]) and stops exporting.
    pub fn shutdown(self) {
        if let Err(error) = self.provider.shutdown_with_timeout(FLUSH_TIMEOUT) {
            tracing::warn!(%error, "the last trace spans were not all exported at shutdown");
        }
    }
}

/// The exporting layer and its exporter when `settings` has an endpoint, and the W3C
/// propagation installed for the process; `None` (and nothing installed) without one.
///
/// Builds the HTTP client on a thread of its own: call it outside the async runtime.
pub fn layer<S>(
    settings: &TelemetrySection,
    node_id: &str,
) -> anyhow::Result<Option<(impl Layer<S> + Send + Sync + 'static, Traces)>>
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span> + Send + Sync,
{
    let Some(url) = settings.traces_url() else {
        return Ok(None);
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(url)
        .build()
        .context("cannot set up the OTLP trace exporter of `[telemetry]`")?;
    let batch = BatchConfigBuilder::default()
        .with_scheduled_delay(Duration::from_millis(settings.export_interval_ms))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(
            BatchSpanProcessor::builder(exporter)
                .with_batch_config(batch)
                .build(),
        )
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(SERVICE_NAME)
                .with_attribute(opentelemetry::KeyValue::new(
                    "service.instance.id",
                    node_id.to_string(),
                ))
                .build(),
        )
        .build();
    let tracer = provider.tracer(SERVICE_NAME);
    let traced = TRACED_CRATES
        .iter()
        .fold(Targets::new(), |targets, target| {
            targets.with_target(*target, runtime::trace::SPAN_LEVEL)
        });
    // The spans of the traced crates, and their WARN and ERROR events as span events; never
    // their DEBUG events (a span event each) nor another crate's spans.
    let filter = traced.and(filter_fn(|metadata| {
        metadata.is_span() || *metadata.level() <= tracing::Level::WARN
    }));
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(filter);
    runtime::trace::install(W3cTraceContext(TraceContextPropagator::new()));
    Ok(Some((layer, Traces { provider })))
}

/// The header name of the W3C trace context, also the key the propagator writes.
const TRACEPARENT: &str = "traceparent";

/// [`runtime::trace::Propagation`] with the W3C TraceContext propagator over the spans the
/// tracing-opentelemetry layer records.
struct W3cTraceContext(TraceContextPropagator);

/// A carrier of one `traceparent` (the envelope and the HTTP request carry nothing else).
struct OneTraceparent<'a>(&'a str);

impl Extractor for OneTraceparent<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        (key == TRACEPARENT).then_some(self.0)
    }
    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT]
    }
}

impl runtime::trace::Propagation for W3cTraceContext {
    fn traceparent(&self, span: &Span) -> Option<String> {
        let context = span.context();
        if !context.span().span_context().is_valid() {
            return None;
        }
        let mut carrier = HashMap::new();
        self.0.inject_context(&context, &mut carrier);
        carrier.remove(TRACEPARENT)
    }

    fn set_parent(&self, span: &Span, traceparent: &str) {
        let context = self.0.extract(&OneTraceparent(traceparent));
        // An invalid traceparent extracts to an empty context: the span starts a trace.
        if context.span().span_context().is_valid()
            && let Err(error) = span.set_parent(context)
        {
            tracing::debug!(%error, "cannot set a received trace parent");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_exported_without_an_endpoint() {
        let settings = TelemetrySection::default();
        assert_eq!(settings.traces_url(), None);
        let layer = layer::<tracing_subscriber::Registry>(&settings, "n1").expect("no error");
        assert!(layer.is_none());
    }

    #[test]
    fn the_environment_overrides_the_file_and_the_path_is_appended() {
        let mut settings = TelemetrySection {
            otlp_endpoint: Some("http://collector:4318/".into()),
            ..TelemetrySection::default()
        };
        settings.override_endpoint(None);
        assert_eq!(
            settings.traces_url().as_deref(),
            Some("http://collector:4318/v1/traces")
        );
        settings.override_endpoint(Some("https://otel.example:4318/base".into()));
        assert_eq!(
            settings.traces_url().as_deref(),
            Some("https://otel.example:4318/base/v1/traces")
        );
        settings.validate().expect("valid");
    }

    #[test]
    fn bad_endpoints_are_refused_naming_the_key() {
        for endpoint in [
            "127.0.0.1:4318",
            "ftp://collector:4318",
            "http://collector:4318/?x=1",
        ] {
            let settings = TelemetrySection {
                otlp_endpoint: Some(endpoint.into()),
                ..TelemetrySection::default()
            };
            let message = format!("{:#}", settings.validate().expect_err(endpoint));
            assert!(message.contains("telemetry.otlp_endpoint"), "{message}");
        }
        let settings = TelemetrySection {
            export_interval_ms: 0,
            ..TelemetrySection::default()
        };
        assert!(settings.validate().is_err());
    }

    /// A traceparent set as the parent of a recorded span comes back as that span's trace,
    /// with the span's own id; an invalid one starts a new trace.
    #[test]
    fn w3c_traceparent_round_trips_through_a_recorded_span() {
        use tracing_subscriber::layer::SubscriberExt as _;
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let propagation = W3cTraceContext(TraceContextPropagator::new());
        let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        tracing::subscriber::with_default(subscriber, || {
            use runtime::trace::Propagation as _;
            let span = tracing::debug_span!("entity.command");
            propagation.set_parent(&span, parent);
            let child = propagation.traceparent(&span).expect("recorded");
            assert!(
                child.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
                "{child}"
            );
            assert!(!child.contains("b7ad6b7169203331"), "{child}");

            let fresh = tracing::debug_span!("entity.command");
            propagation.set_parent(&fresh, "00-not-a-trace-01");
            let own = propagation.traceparent(&fresh).expect("recorded");
            assert!(!own.contains("0af7651916cd43dd8448eb211c80319c"), "{own}");
        });
    }
}
