//! Prometheus metrics of a node. Every label value is a `&'static str` from a
//! closed set (frame types, error codes, close reasons), so series stay bounded.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

mod backend;

pub use backend::{BackendMetrics, CommandLabel};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FrameLabel {
    pub frame: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeOnlyLabel {
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// How a message reached the connection it was written to: `local` (sent on
/// this pod) or `cross_pod` (through the bus).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PathLabel {
    pub path: &'static str,
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
    /// Entries waiting in the fullest shard.
    pub outbox_fullest_shard: Gauge,
    /// Entries one shard may hold (`SB_EVENTS_OUTBOX_LIMIT` / 16, rounded
    /// up): past it, sends to that shard's conversations are refused.
    pub outbox_shard_limit: Gauge,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandlerLabel {
    pub handler: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub handler: &'static str,
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub handler: &'static str,
    pub kind: &'static str,
}

/// Handlers of messages from backends (commands), under seed 002's metric
/// names (no `switchboard_` prefix). `handler` is the command type (or
/// `unknown`).
#[derive(Debug, Clone)]
pub struct HandlerMetrics {
    /// Time from taking a command to its end (retries within the node included).
    pub duration: Family<HandlerLabel, Histogram>,
    /// Commands by outcome: `applied`, `duplicate`, `dead_lettered`, `redelivered`.
    pub handled: Family<OutcomeLabel, Counter>,
    /// Failed attempts by kind: `retryable` (retried) or `rejected` (dead letter).
    pub errors: Family<KindLabel, Counter>,
}

impl Default for HandlerMetrics {
    fn default() -> Self {
        Self {
            // 1 ms .. ~33 s
            duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 16))
            }),
            handled: Family::default(),
            errors: Family::default(),
        }
    }
}

/// The request-response API. `action` is one of the actions or `unknown`.
#[derive(Debug, Clone)]
pub struct RequestMetrics {
    /// Requests answered, by action and outcome: `ok`, `business_error`,
    /// `system_error`, `timeout` (deadline passed, not executed),
    /// `repeated` (answered before: the same answer again), `in_progress`
    /// (another node is executing it and answers).
    pub answered: Family<ActionOutcomeLabel, Counter>,
    /// From the backend sending a request (its clock) to the answer stored
    /// by the broker.
    pub duration: Family<ActionLabel, Histogram>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabel {
    pub decision: &'static str,
    pub by: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConsumerLabel {
    pub consumer: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabel {
    pub action: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionOutcomeLabel {
    pub action: &'static str,
    pub outcome: &'static str,
}

impl Default for RequestMetrics {
    fn default() -> Self {
        Self {
            answered: Family::default(),
            // 1 ms .. ~33 s
            duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 16))
            }),
        }
    }
}

/// All metrics of a node.
#[derive(Debug)]
pub struct Metrics {
    pub connections: Gauge,
    pub connections_closed: Family<ReasonLabel, Counter>,
    pub frames_in: Family<FrameLabel, Counter>,
    pub frames_out: Family<FrameLabel, Counter>,
    pub errors: Family<CodeLabel, Counter>,
    /// Sends (clients' and backends'), by outcome: `accepted`, `duplicate`
    /// or the error code.
    pub sends: Family<OutcomeOnlyLabel, Counter>,
    /// From accepting a message to writing it to a recipient's socket, by path.
    pub delivery_latency: Family<PathLabel, Histogram>,
    /// Users with a connection on this pod, sampled at each scrape.
    pub users_online: Gauge,
    /// 1 while the node drains its connections (shutting down).
    pub draining: Gauge,
    /// Messages replayed from the inbox to a connection that comes in.
    pub inbox_replayed: Histogram,
    pub backends: BackendMetrics,
    pub messages_stored: Counter,
    pub inbox_skipped: Counter,
    pub bus_envelopes: Family<DirectionLabel, Counter>,
    pub backend_errors: Counter,
    pub repushed: Counter,
    /// Live tokio tasks, sampled at each scrape (a leak shows as growth).
    pub runtime_tasks: Gauge,
    pub events: EventMetrics,
    pub handlers: HandlerMetrics,
    pub requests: RequestMetrics,
    /// 1 while the consumer of backends' messages (`commands`, `requests`)
    /// runs (its start waits up to 30 s for queues), 0 otherwise.
    pub consumer_up: Family<ConsumerLabel, Gauge>,
    /// Moderation decisions, by decision and by what made it.
    pub moderated: Family<DecisionLabel, Counter>,
    /// Moderation word rules in force.
    pub moderation_rules: Gauge,
    /// Changed rule files that could not be read (the old rules stayed).
    pub moderation_reload_failures: Counter,
    /// How long the moderation webhook took (failures included).
    pub moderation_webhook: Histogram,
    registry: Registry,
    /// Metrics whose names the seeds give, without the prefix.
    seed_registry: Registry,
}

impl Metrics {
    pub fn new() -> Self {
        Self::with_backends(BackendMetrics::default())
    }

    /// The node's metrics, the backends' (made with them) included.
    pub fn with_backends(backends: BackendMetrics) -> Self {
        let m = Self {
            connections: Gauge::default(),
            connections_closed: Family::default(),
            frames_in: Family::default(),
            frames_out: Family::default(),
            errors: Family::default(),
            // 50 µs .. ~1.6 s
            sends: Family::default(),
            delivery_latency: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
            }),
            users_online: Gauge::default(),
            draining: Gauge::default(),
            // 1 .. 16384 messages
            inbox_replayed: Histogram::new(exponential_buckets(1.0, 2.0, 15)),
            backends,
            messages_stored: Counter::default(),
            inbox_skipped: Counter::default(),
            bus_envelopes: Family::default(),
            backend_errors: Counter::default(),
            repushed: Counter::default(),
            runtime_tasks: Gauge::default(),
            events: EventMetrics::default(),
            handlers: HandlerMetrics::default(),
            requests: RequestMetrics::default(),
            consumer_up: Family::default(),
            moderated: Family::default(),
            moderation_rules: Gauge::default(),
            moderation_reload_failures: Counter::default(),
            // 1 ms .. ~16 s
            moderation_webhook: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            registry: Registry::with_prefix("switchboard"),
            seed_registry: Registry::default(),
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
            "sends",
            "Messages sent by clients and backends, by outcome: accepted, duplicate (a resend answered with the stored message) or the error code",
            self.sends.clone(),
        );
        r.register(
            "delivery_latency_seconds",
            "From accepting a message to writing it to a recipient's socket, by path (local, cross_pod)",
            self.delivery_latency.clone(),
        );
        r.register(
            "users_online",
            "Users with a connection on this pod",
            self.users_online.clone(),
        );
        r.register(
            "draining",
            "1 while the node drains its connections to shut down",
            self.draining.clone(),
        );
        r.register(
            "inbox_replayed_messages",
            "Messages replayed from the inbox to each connection that comes in",
            self.inbox_replayed.clone(),
        );
        self.backends.register(r);
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
        r.register(
            "events_outbox_fullest_shard",
            "Outbox entries waiting in the fullest of the 16 shards (refreshed every 2 s)",
            self.events.outbox_fullest_shard.clone(),
        );
        r.register(
            "events_outbox_shard_limit",
            "Outbox entries one shard may hold (SB_EVENTS_OUTBOX_LIMIT / 16, rounded up); a send to a full shard's conversations is refused with unavailable",
            self.events.outbox_shard_limit.clone(),
        );
        r.register(
            "moderation",
            "Moderation decisions: allowed, rejected, rewritten, failed_open, failed_closed (and event_dropped: a message_moderated event the full outbox could not take); by rules, webhook or policy",
            self.moderated.clone(),
        );
        r.register(
            "moderation_rules",
            "Moderation word and pattern rules in force",
            self.moderation_rules.clone(),
        );
        r.register(
            "moderation_reload_failures",
            "Changed moderation rule files that could not be read (the previous rules stayed)",
            self.moderation_reload_failures.clone(),
        );
        r.register(
            "moderation_webhook_seconds",
            "Time the moderation webhook took, failures included",
            self.moderation_webhook.clone(),
        );
        r.register(
            "consumer_up",
            "1 while the consumer of commands or requests from backends runs, by consumer",
            self.consumer_up.clone(),
        );
        r.register(
            "requests",
            "Requests from backends answered, by action and outcome",
            self.requests.answered.clone(),
        );
        r.register(
            "request_duration_seconds",
            "From a backend sending a request to its answer stored, by action",
            self.requests.duration.clone(),
        );
        let r = &mut self.seed_registry;
        r.register(
            "messaging_handler_duration_seconds",
            "Time to handle a command from a backend, retries within the node included",
            self.handlers.duration.clone(),
        );
        r.register(
            "messaging_handler",
            "Commands from backends handled, by handler and outcome",
            self.handlers.handled.clone(),
        );
        r.register(
            "messaging_handler_errors",
            "Failed command attempts, by handler and kind (retryable, rejected)",
            self.handlers.errors.clone(),
        );
        self
    }

    /// Text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, &self.registry);
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, &self.seed_registry);
        let _ = prometheus_client::encoding::text::encode_eof(&mut out);
        out
    }

    /// Counts a send by its outcome (`accepted`, `duplicate`, an error code).
    pub fn send(&self, outcome: &'static str) {
        self.sends
            .get_or_create(&OutcomeOnlyLabel { outcome })
            .inc();
    }

    pub fn error(&self, code: crate::protocol::ErrorCode) {
        self.errors
            .get_or_create(&CodeLabel {
                code: code.as_str(),
            })
            .inc();
    }

    /// Counts a moderation decision.
    pub fn moderation(&self, decision: &'static str, by: &'static str) {
        self.moderated
            .get_or_create(&DecisionLabel { decision, by })
            .inc();
    }

    /// Marks the consumer of backends' `consumer` messages up or down.
    pub fn consumer(&self, consumer: &'static str, up: bool) {
        self.consumer_up
            .get_or_create(&ConsumerLabel { consumer })
            .set(i64::from(up));
    }

    /// Counts and logs a failed backend call (the caller carries on); `e`
    /// is the backend's error.
    pub fn backend_failed(&self, op: &'static str, e: &dyn std::fmt::Display) {
        self.backend_errors.inc();
        tracing::warn!(op, error = %e, "backend call failed");
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
