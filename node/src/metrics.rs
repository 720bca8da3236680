//! Prometheus metrics of a node. Every label value is a `&'static str` from a
//! closed set (frame types, error codes, close reasons), so series stay bounded.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FrameLabel {
    pub frame: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    pub direction: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabel {
    pub stream: &'static str,
}

/// The event relay's metrics (handles into the node's registry).
#[derive(Debug, Clone, Default)]
pub struct EventMetrics {
    pub published: Family<StreamLabel, Counter>,
    pub relay_failures: Counter,
    pub outbox_depth: Gauge,
}

/// All metrics of a node.
#[derive(Debug)]
pub struct Metrics {
    pub connections: Gauge,
    pub connections_closed: Family<ReasonLabel, Counter>,
    pub frames_in: Family<FrameLabel, Counter>,
    pub frames_out: Family<FrameLabel, Counter>,
    pub errors: Family<CodeLabel, Counter>,
    pub delivery_latency: Histogram,
    pub messages_stored: Counter,
    pub inbox_skipped: Counter,
    pub bus_envelopes: Family<DirectionLabel, Counter>,
    pub backend_errors: Counter,
    pub repushed: Counter,
    /// Live tokio tasks, sampled at each scrape (a leak shows as growth).
    pub runtime_tasks: Gauge,
    pub events: EventMetrics,
    registry: Registry,
}

impl Metrics {
    pub fn new() -> Self {
        let m = Self {
            connections: Gauge::default(),
            connections_closed: Family::default(),
            frames_in: Family::default(),
            frames_out: Family::default(),
            errors: Family::default(),
            // 50 µs .. ~1.6 s
            delivery_latency: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            messages_stored: Counter::default(),
            inbox_skipped: Counter::default(),
            bus_envelopes: Family::default(),
            backend_errors: Counter::default(),
            repushed: Counter::default(),
            runtime_tasks: Gauge::default(),
            events: EventMetrics::default(),
            registry: Registry::with_prefix("switchboard"),
        };
        m.register()
    }

    fn register(mut self) -> Self {
        let r = &mut self.registry;
        r.register(
            "connections",
            "Open WebSocket connections",
            self.connections.clone(),
        );
        r.register(
            "connections_closed",
            "Closed WebSocket connections by reason",
            self.connections_closed.clone(),
        );
        r.register(
            "frames_in",
            "Client frames received, by type",
            self.frames_in.clone(),
        );
        r.register(
            "frames_out",
            "Server frames written, by type",
            self.frames_out.clone(),
        );
        r.register(
            "errors",
            "Error frames and refusals, by code",
            self.errors.clone(),
        );
        r.register(
            "delivery_latency_seconds",
            "From accepting a message to writing it to a recipient's socket",
            self.delivery_latency.clone(),
        );
        r.register(
            "messages_stored",
            "Messages stored (not counting duplicates)",
            self.messages_stored.clone(),
        );
        r.register(
            "inbox_skipped",
            "Group message copies not put in a full inbox",
            self.inbox_skipped.clone(),
        );
        r.register(
            "bus_envelopes",
            "Cross-node envelopes, by direction",
            self.bus_envelopes.clone(),
        );
        r.register(
            "backend_errors",
            "Failed backend calls",
            self.backend_errors.clone(),
        );
        r.register(
            "repushed",
            "Pushes sent again: a resend of a stored message, or after a failed routing lookup",
            self.repushed.clone(),
        );
        r.register(
            "runtime_tasks",
            "Live tokio tasks when scraped",
            self.runtime_tasks.clone(),
        );
        r.register(
            "events_published",
            "Records published to the business streams, by stream (events, cluster_events)",
            self.events.published.clone(),
        );
        r.register(
            "events_relay_failures",
            "Event relay passes that failed (RocketMQ or Redis away); retried",
            self.events.relay_failures.clone(),
        );
        r.register(
            "events_outbox_depth",
            "Outbox entries waiting to be relayed, all shards (refreshed every 2 s)",
            self.events.outbox_depth.clone(),
        );
        self
    }

    /// Text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn error(&self, code: crate::protocol::ErrorCode) {
        self.errors
            .get_or_create(&CodeLabel {
                code: code.as_str(),
            })
            .inc();
    }

    /// Counts and logs a failed backend call (the caller carries on).
    pub fn backend_failed(&self, op: &'static str, e: &crate::backend::BackendError) {
        self.backend_errors.inc();
        tracing::warn!(op, error = %e, "backend call failed");
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
