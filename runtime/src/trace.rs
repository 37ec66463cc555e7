//! Traces across nodes: the runtime's spans and the W3C `traceparent` that makes a span on the
//! owner of an entity the child of the asker's span on another node.
//!
//! The runtime names its spans with `tracing` at DEBUG level ([`SPAN_LEVEL`]): `entity.ask` (a
//! caller's ask, retries included), `entity.command` (one command at the entity, from its
//! arrival to its answer), `journal.append` (an entity's batch until it is durable) and
//! `pubsub.publish` (a broadcast). A disabled span costs a callsite check, so they stay in
//! the hot paths. The runtime knows nothing of OpenTelemetry: a node that exports traces
//! installs a [`Propagation`], which reads the `traceparent` of a span (carried in the
//! envelope's [`Extensions`] under [`tags::TRACE_PARENT`]) and makes a received one the parent
//! of a new span. Without one (the default) envelopes carry nothing more.
//!
//! **API Boundary:** a `traceparent` comes from a peer or an HTTP client: longer than
//! [`TRACEPARENT_BYTES_MAX`] it is ignored, and the installed [`Propagation`] parses the rest
//! (an invalid one starts a new trace).

use std::sync::OnceLock;

use tracing::Span;

use crate::codec::{Extensions, tags};
use crate::entity::Envelope;
use crate::id::{EntityId, MsgId};

/// The level of every span the runtime (and the crates above it) name for traces: below the
/// default log filter, so they are neither printed nor built unless a layer asks for them.
pub const SPAN_LEVEL: tracing::Level = tracing::Level::DEBUG;

/// Longest `traceparent` read: version 00 is 55 bytes; later versions may append fields.
pub const TRACEPARENT_BYTES_MAX: usize = 256;

/// Reads and sets trace context on spans; installed once per process by the node that
/// exports traces (it knows the tracing layer that records them).
pub trait Propagation: Send + Sync + 'static {
    /// The W3C `traceparent` of `span`, or `None` when it is not recorded.
    fn traceparent(&self, span: &Span) -> Option<String>;
    /// Makes the remote span named by `traceparent` the parent of `span`, which must not have
    /// been entered yet. An invalid `traceparent` leaves `span` as it was.
    fn set_parent(&self, span: &Span, traceparent: &str);
}

static PROPAGATION: OnceLock<Box<dyn Propagation>> = OnceLock::new();

/// Installs the process's propagation; `false` if one was installed before (it stays).
pub fn install(propagation: impl Propagation) -> bool {
    PROPAGATION.set(Box::new(propagation)).is_ok()
}

fn installed() -> Option<&'static dyn Propagation> {
    PROPAGATION.get().map(Box::as_ref)
}

/// Adds `span`'s `traceparent` to `extensions` (nothing when `span` is disabled or no
/// propagation is installed).
pub fn inject(extensions: &mut Extensions, span: &Span) {
    if let Some(propagation) = installed() {
        inject_with(propagation, extensions, span);
    }
}

/// Makes the span that `extensions` names as the sender's the parent of `span`.
pub fn set_parent_from(span: &Span, extensions: &Extensions) {
    if let Some(propagation) = installed() {
        set_parent_from_with(propagation, span, extensions);
    }
}

/// Makes the span `traceparent` names (an HTTP client's header) the parent of `span`.
pub fn set_parent(span: &Span, traceparent: &str) {
    if let Some(propagation) = installed()
        && !span.is_disabled()
        && traceparent.len() <= TRACEPARENT_BYTES_MAX
    {
        propagation.set_parent(span, traceparent);
    }
}

/// `entity.ask`: a caller's ask of `entity`, retries included; a child of the current span.
pub(crate) fn ask_span(entity: &EntityId, msg_id: MsgId) -> Span {
    tracing::debug_span!(
        "entity.ask",
        otel.kind = "client",
        entity.kind = %entity.kind,
        msg.id = %msg_id
    )
}

/// `entity.tell`: a message sent without waiting for an answer; a child of the current span.
pub(crate) fn tell_span(entity: &EntityId) -> Span {
    tracing::debug_span!("entity.tell", otel.kind = "producer", entity.kind = %entity.kind)
}

/// `entity.command` of a delivery on this node, a child of the asker's `parent`.
pub(crate) fn command_span(parent: &Span, entity: &EntityId) -> Span {
    if parent.is_disabled() {
        return Span::none();
    }
    tracing::debug_span!(parent: parent, "entity.command", entity.kind = %entity.kind)
}

/// `entity.command` of an envelope from a peer: its parent is the sender's span, named by the
/// envelope's `traceparent` (a new trace when there is none).
pub(crate) fn received_command_span(envelope: &Envelope) -> Span {
    let span = tracing::debug_span!(
        parent: None,
        "entity.command",
        otel.kind = "server",
        entity.kind = %envelope.entity.kind,
        from = %envelope.from
    );
    set_parent_from(&span, &envelope.extensions);
    span
}

/// `journal.append` of an entity's batch, a child of `parent` (the first traced command in
/// it); the other traced commands of the batch are linked to it.
pub(crate) fn append_span<'a>(
    entity: &EntityId,
    records: usize,
    mut commands: impl Iterator<Item = &'a Span>,
) -> Span {
    let Some(parent) = commands.find(|span| !span.is_disabled()) else {
        return Span::none();
    };
    let span = tracing::debug_span!(
        parent: parent,
        "journal.append",
        entity.kind = %entity.kind,
        records
    );
    for other in commands
        .filter(|span| !span.is_disabled())
        .take(APPEND_SPAN_LINKS_MAX)
    {
        span.follows_from(other);
    }
    span
}

/// Commands of one batch linked to its `journal.append` span beyond the first (a batch may
/// hold thousands; a trace viewer shows a few).
pub const APPEND_SPAN_LINKS_MAX: usize = 32;

fn inject_with(propagation: &dyn Propagation, extensions: &mut Extensions, span: &Span) {
    if span.is_disabled() {
        return;
    }
    if let Some(traceparent) = propagation.traceparent(span) {
        extensions.insert(tags::TRACE_PARENT, &traceparent);
    }
}

fn set_parent_from_with(propagation: &dyn Propagation, span: &Span, extensions: &Extensions) {
    if span.is_disabled() {
        return;
    }
    if let Some(traceparent) = extensions
        .get::<String>(tags::TRACE_PARENT)
        .filter(|traceparent| traceparent.len() <= TRACEPARENT_BYTES_MAX)
    {
        propagation.set_parent(span, &traceparent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;
    use std::sync::{Arc, Mutex};

    /// Names spans by their tracing id, and records the parents it is asked to set.
    #[derive(Clone, Default)]
    struct Recorder {
        parents: Arc<Mutex<Vec<(u64, String)>>>,
    }

    impl Propagation for Recorder {
        fn traceparent(&self, span: &Span) -> Option<String> {
            let id = span.id()?.into_u64();
            Some(format!("00-{:032x}-{id:016x}-01", 7))
        }
        fn set_parent(&self, span: &Span, traceparent: &str) {
            if let Some(id) = span.id() {
                let mut parents = self
                    .parents
                    .lock()
                    .unwrap_or_else(|error| error.into_inner());
                parents.push((id.into_u64(), traceparent.to_string()));
            }
        }
    }

    fn envelope() -> Envelope {
        Envelope::new(
            EntityId::new("room", "lobby"),
            MsgId(42),
            vec![1, 2, 3],
            "n1".into(),
        )
    }

    /// The sender's traceparent crosses in the envelope's extensions, through the wire
    /// encoding, and becomes the parent of the receiver's span.
    #[test]
    fn traceparent_round_trips_through_the_envelope() {
        let recorder = Recorder::default();
        let subscriber = tracing_subscriber::registry();
        tracing::subscriber::with_default(subscriber, || {
            let sender = tracing::debug_span!("entity.ask");
            let mut envelope = envelope();
            inject_with(&recorder, &mut envelope.extensions, &sender);
            let expected = recorder.traceparent(&sender).expect("an enabled span");

            let bytes = codec::encode_versioned(codec::PROTOCOL, &envelope);
            let received: Envelope =
                codec::decode_wire(&bytes, "envelope").expect("the envelope decodes");
            assert_eq!(
                received
                    .extensions
                    .get::<String>(tags::TRACE_PARENT)
                    .as_deref(),
                Some(expected.as_str())
            );

            let receiver = tracing::debug_span!(parent: None, "entity.command");
            set_parent_from_with(&recorder, &receiver, &received.extensions);
            let parents = recorder.parents.lock().expect("not poisoned").clone();
            let receiver_id = receiver.id().expect("enabled").into_u64();
            assert_eq!(parents, vec![(receiver_id, expected)]);
        });
    }

    /// Without a recorded span (tracing off) the envelope carries nothing more, and a received
    /// traceparent that is too long is not handed to the propagation.
    #[test]
    fn nothing_is_added_or_parsed_when_not_recorded() {
        let recorder = Recorder::default();
        let mut envelope = envelope();
        let without_subscriber = tracing::debug_span!("entity.ask");
        inject_with(&recorder, &mut envelope.extensions, &without_subscriber);
        assert_eq!(envelope.extensions, Extensions::default());

        let too_long = "0".repeat(TRACEPARENT_BYTES_MAX + 1);
        envelope.extensions.insert(tags::TRACE_PARENT, &too_long);
        tracing::subscriber::with_default(tracing_subscriber::registry(), || {
            let receiver = tracing::debug_span!(parent: None, "entity.command");
            set_parent_from_with(&recorder, &receiver, &envelope.extensions);
        });
        assert!(recorder.parents.lock().expect("not poisoned").is_empty());
    }
}
