//! Metrics of the calls a node makes to Redis and RocketMQ: created with the
//! backends (before the node), handed to them, and registered with the rest
//! of the node's metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::ReasonLabel;

/// A Redis command name, from a closed set (`other` for the rest).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandLabel {
    pub command: &'static str,
}

/// The backends' metrics (handles: clones share the series).
#[derive(Debug, Clone)]
pub struct BackendMetrics {
    /// Redis round trips, by command (`pipeline` for a pipeline, `evalsha`
    /// for the Lua scripts).
    pub redis_seconds: Family<CommandLabel, Histogram>,
    /// Redis calls that failed (timeouts, connection lost, errors), by command.
    pub redis_errors: Family<CommandLabel, Counter>,
    /// From a push queued in its bus lane to RocketMQ storing it.
    pub bus_publish_seconds: Histogram,
    /// Failed sends of a batch of pushes (each retried until its pushes are stale).
    pub bus_publish_failures: Counter,
    /// Pushes per RocketMQ message sent (a lane's batch).
    pub bus_batch_pushes: Histogram,
    /// Pushes not sent: `stale` (retried for a minute), `outbox_full`.
    pub bus_dropped: Family<ReasonLabel, Counter>,
    /// Pushes queued in the bus's lanes or being sent (the lanes count with it).
    pub bus_outbox: Gauge,
    /// Messages of this pod's bus topic its consumer group has not consumed
    /// (the broker's offsets), refreshed every 10 s; -1 until first read.
    pub bus_consumer_lag: Gauge,
}

impl Default for BackendMetrics {
    fn default() -> Self {
        let m = Self {
            // 100 µs .. ~1.6 s
            redis_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_1, 2.0, 15))
            }),
            redis_errors: Family::default(),
            // 100 µs .. ~52 s (a broker away holds pushes up to a minute)
            bus_publish_seconds: Histogram::new(exponential_buckets(0.000_1, 2.0, 20)),
            bus_publish_failures: Counter::default(),
            // 1 .. 128 (a lane's largest batch)
            bus_batch_pushes: Histogram::new(exponential_buckets(1.0, 2.0, 8)),
            bus_dropped: Family::default(),
            bus_outbox: Gauge::default(),
            bus_consumer_lag: Gauge::default(),
        };
        // Not read yet.
        m.bus_consumer_lag.set(-1);
        // At 0 from the start: the first drop then shows in `increase()`.
        for reason in ["stale", "outbox_full"] {
            let _ = m.bus_dropped.get_or_create(&ReasonLabel { reason });
        }
        m
    }
}

impl BackendMetrics {
    pub(super) fn register(&self, r: &mut Registry) {
        r.register(
            "redis_command_seconds",
            "Redis round trips, by command (pipeline: a pipeline; evalsha: a Lua script)",
            self.redis_seconds.clone(),
        );
        r.register(
            "redis_command_errors",
            "Redis calls that failed, by command",
            self.redis_errors.clone(),
        );
        r.register(
            "bus_publish_seconds",
            "From a cross-pod push queued to RocketMQ storing it",
            self.bus_publish_seconds.clone(),
        );
        r.register(
            "bus_publish_failures",
            "Failed sends of a batch of cross-pod pushes (retried)",
            self.bus_publish_failures.clone(),
        );
        r.register(
            "bus_batch_pushes",
            "Cross-pod pushes per RocketMQ message sent (a lane's batch)",
            self.bus_batch_pushes.clone(),
        );
        r.register(
            "bus_pushes_dropped",
            "Cross-pod pushes not sent, by reason (stale, outbox_full); the messages stay in the inboxes",
            self.bus_dropped.clone(),
        );
        r.register(
            "bus_outbox_pushes",
            "Cross-pod pushes queued or being sent",
            self.bus_outbox.clone(),
        );
        r.register(
            "bus_consumer_lag_messages",
            "Messages of this pod's bus topic not yet consumed (broker offsets); -1 until first read",
            self.bus_consumer_lag.clone(),
        );
    }

    /// Records one Redis call.
    pub fn redis_call(&self, command: &'static str, seconds: f64, failed: bool) {
        let label = CommandLabel { command };
        self.redis_seconds.get_or_create(&label).observe(seconds);
        if failed {
            self.redis_errors.get_or_create(&label).inc();
        }
    }

    /// Counts a push not sent.
    pub fn bus_drop(&self, reason: &'static str, n: u64) {
        self.bus_dropped
            .get_or_create(&ReasonLabel { reason })
            .inc_by(n);
    }
}
