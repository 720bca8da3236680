//! Distributed tracing: one trace per chat message, with spans on every pod it
//! touches, exported over OTLP/HTTP when an endpoint is configured (off by
//! default; `SB_OTLP_ENDPOINT`).
//!
//! The spans (all with the target [`TARGET`], which the log output leaves out):
//!
//! | span | kind | where |
//! |---|---|---|
//! | `chat.send` | server | the sender's pod: a `send` frame or a backend's request, through storing and routing it |
//! | `store.append` | client | storing the message (Redis or memory; on Redis with the look-up of where to push, same round trip) |
//! | `bus.publish` | producer | one per destination pod: queued in the bus's lane until RocketMQ stored it |
//! | `bus.consume` | consumer | the receiving pod: taken from RocketMQ and handed to the node |
//! | `ws.write` | internal | one per connection: written and flushed to the socket |
//! | `command.apply`, `request.handle` | consumer | a backend's command or request, in the backend's trace when it sent a `traceparent` property |
//!
//! The context crosses pods inside the bus envelope (a W3C `traceparent`
//! string), not as a RocketMQ message property: one RocketMQ message carries a
//! batch of envelopes of many messages, each with its own trace. Messages that
//! are one item each (commands, requests, answers) carry it as the message
//! property `traceparent`.
//!
//! Only sampled traces travel: when tracing is off no span is built and
//! nothing is added to the envelope; when it is on, a message not sampled
//! still builds its `chat.send` and `store.append` spans (that is where the
//! decision is taken) but carries nothing further.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, TraceContextExt, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::registry::LookupSpan;

/// The target of every span exported as a trace.
pub const TARGET: &str = "switchboard_trace";
/// The W3C Trace Context header name, also the RocketMQ property name.
pub const TRACEPARENT: &str = "traceparent";

static ON: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported (an endpoint is configured).
pub fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

/// Where traces go and how many.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceSettings {
    /// The OTLP/HTTP receiver's base URL (`http://collector:4318`); spans are
    /// posted to `<endpoint>/v1/traces`.
    pub endpoint: String,
    /// The share of messages traced, 0 to 1 (a trace started elsewhere keeps
    /// its own decision).
    pub sample_ratio: f64,
    /// `service.instance.id`: the pod's name.
    pub instance: String,
    /// `service.namespace`: the cluster's name.
    pub cluster: String,
}

/// The exporter, to flush on the way out.
#[derive(Debug)]
pub struct Exporter {
    provider: SdkTracerProvider,
}

impl Exporter {
    /// Sends what is still buffered (bounded: 1 s, after the node's own
    /// shutdown, which the pod's grace period is sized for) and stops.
    pub fn shutdown(self) {
        ON.store(false, Ordering::Relaxed);
        if let Err(e) = self
            .provider
            .shutdown_with_timeout(std::time::Duration::from_secs(1))
        {
            tracing::warn!(error = %e, "traces not all exported at shutdown");
        }
    }
}

/// The layer exporting this node's spans, with the exporter behind it.
/// Errors: an endpoint the exporter refuses.
pub fn layer<S>(settings: &TraceSettings) -> Result<(impl Layer<S>, Exporter), String>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(format!(
            "{}/v1/traces",
            settings.endpoint.trim_end_matches('/')
        ))
        .with_timeout(std::time::Duration::from_secs(10))
        .build()
        .map_err(|e| format!("the OTLP exporter: {e}"))?;
    let resource = Resource::builder()
        .with_service_name("switchboard-node")
        .with_attributes([
            KeyValue::new("service.instance.id", settings.instance.clone()),
            KeyValue::new("service.namespace", settings.cluster.clone()),
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        ])
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            settings.sample_ratio,
        ))))
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("switchboard-node");
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(Targets::new().with_target(TARGET, LevelFilter::TRACE));
    ON.store(true, Ordering::Relaxed);
    Ok((layer, Exporter { provider }))
}

/// A sampled span's context, handed from one span to the next across tasks
/// and pods. Boxed: it rides in every frame queued to a connection (`hub::Stamp`),
/// traced or not, and boxed it makes each queued item 8 bytes bigger, not ~80.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceCtx(Box<SpanContext>);

impl TraceCtx {
    /// The context of `span`, if tracing is on and the span is sampled.
    pub fn of(span: &Span) -> Option<Self> {
        if !enabled() || span.is_none() {
            return None;
        }
        let cx = span.context();
        let sc = cx.span().span_context().clone();
        (sc.is_valid() && sc.is_sampled()).then(|| Self(Box::new(sc)))
    }

    /// The context of the current span (see [`TraceCtx::of`]).
    pub fn current() -> Option<Self> {
        if !enabled() {
            return None;
        }
        Self::of(&Span::current())
    }

    /// The W3C `traceparent` value.
    pub fn header(&self) -> String {
        let mut carrier = HashMap::new();
        TraceContextPropagator::new().inject_context(
            &Context::new().with_remote_span_context((*self.0).clone()),
            &mut carrier,
        );
        carrier.remove(TRACEPARENT).unwrap_or_default()
    }

    /// Reads a `traceparent` value; `None` if malformed or not sampled.
    pub fn parse(header: &str) -> Option<Self> {
        if !enabled() {
            return None;
        }
        Self::decode(header)
    }

    fn decode(header: &str) -> Option<Self> {
        Self::decode_any(header).filter(|c| c.0.is_sampled())
    }

    /// A valid context, sampled or not.
    fn decode_any(header: &str) -> Option<Self> {
        let carrier = HashMap::from([(TRACEPARENT.to_owned(), header.to_owned())]);
        // From an empty context: a malformed header must not yield the current span's.
        let cx = TraceContextPropagator::new().extract_with_context(&Context::new(), &carrier);
        let sc = cx.span().span_context().clone();
        sc.is_valid().then(|| Self(Box::new(sc)))
    }

    /// Makes `span` a child of this context (no-op for a disabled span).
    pub fn adopt(&self, span: &Span) {
        if !span.is_none() {
            let _ = span.set_parent(Context::new().with_remote_span_context((*self.0).clone()));
        }
    }

    /// The trace id, hex.
    pub fn trace_id(&self) -> String {
        self.0.trace_id().to_string()
    }
}

/// `chat.send`: a message from being received to its answer.
pub fn send_span() -> Span {
    tracing::info_span!(
        target: TARGET,
        "chat.send",
        otel.kind = "server",
        messaging.message.id = tracing::field::Empty,
        chat.recipients = tracing::field::Empty,
    )
}

/// The span of a backend's message taken from `topic`: `command.apply` or
/// `request.handle` (`name`), in the trace its `traceparent` property names
/// (keeping that trace's sampling decision), or in a new one. A request's
/// answer carries this span's context.
pub fn intake_span(
    name: &'static str,
    topic: &str,
    msg_id: &str,
    properties: &BTreeMap<String, String>,
) -> Span {
    let span = tracing::info_span!(
        target: TARGET,
        "intake",
        otel.name = name,
        otel.kind = "consumer",
        messaging.system = "rocketmq",
        messaging.destination.name = %topic,
        messaging.message.id = %msg_id,
    );
    continue_remote(&span, properties);
    span
}

/// Parents `span` on the `traceparent` property, if there is a valid one.
fn continue_remote(span: &Span, properties: &BTreeMap<String, String>) {
    if !enabled() {
        return;
    }
    if let Some(parent) = properties
        .get(TRACEPARENT)
        .and_then(|h| TraceCtx::decode_any(h))
    {
        parent.adopt(span);
    }
}

/// The `traceparent` property of a message sent now, if the current span is
/// traced.
pub fn property() -> Option<(String, String)> {
    TraceCtx::current().map(|c| (TRACEPARENT.to_owned(), c.header()))
}

/// `store.append`: storing one message.
pub fn store_span() -> Span {
    tracing::info_span!(target: TARGET, "store.append", otel.kind = "client")
}

/// `bus.publish`: a push to `topic`, child of `parent`.
pub fn publish_span(parent: &TraceCtx, topic: &str) -> Span {
    let span = tracing::info_span!(
        target: TARGET,
        "bus.publish",
        otel.kind = "producer",
        messaging.system = "rocketmq",
        messaging.destination.name = %topic,
    );
    parent.adopt(&span);
    span
}

/// `bus.consume`: a push taken from `topic`, child of `parent`.
pub fn consume_span(parent: &TraceCtx, topic: &str, msg_id: &str) -> Span {
    let span = tracing::info_span!(
        target: TARGET,
        "bus.consume",
        otel.kind = "consumer",
        messaging.system = "rocketmq",
        messaging.destination.name = %topic,
        messaging.message.id = %msg_id,
    );
    parent.adopt(&span);
    span
}

/// `ws.write`: a frame written to one connection, child of `parent`.
pub fn write_span(parent: &TraceCtx, connection: &str, frame: &'static str) -> Span {
    let span = tracing::info_span!(
        target: TARGET,
        "ws.write",
        chat.connection = %connection,
        chat.frame = frame,
    );
    parent.adopt(&span);
    span
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{SpanId, TraceFlags, TraceId, TraceState};

    use super::*;

    #[test]
    fn traceparent_round_trips_and_refuses_garbage() {
        let sc = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let header = TraceCtx(Box::new(sc)).header();
        assert_eq!(
            header,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        let back = TraceCtx::decode(&header).unwrap();
        assert_eq!(back.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            // Not sampled: nothing to continue.
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        ] {
            assert!(TraceCtx::decode(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn nothing_is_traced_while_tracing_is_off() {
        assert!(!enabled());
        assert!(TraceCtx::current().is_none());
        assert!(
            TraceCtx::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").is_none()
        );
    }
}
