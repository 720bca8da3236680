//! Prometheus metrics of the operator. Label values come from closed sets (error kinds,
//! results), so series stay bounded however many clusters there are.

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabel {
    pub action: &'static str,
}

/// All metrics of the operator.
#[derive(Debug)]
pub struct Metrics {
    /// Reconciles started.
    pub reconciles: Counter,
    /// Reconciles that failed, by error kind.
    pub failures: Family<KindLabel, Counter>,
    /// Reconcile duration in seconds.
    pub duration: Histogram,
    /// Writes to the Kubernetes API and RocketMQ, by action (`apply`, `status`, `delete`,
    /// `topic_create`, `topic_delete`, `event`).
    pub writes: Family<ActionLabel, Counter>,
    /// 1 while this replica holds the leader lease.
    pub leader: Gauge,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut m = Self {
            reconciles: Counter::default(),
            failures: Family::default(),
            // 1 ms .. ~33 s
            duration: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            writes: Family::default(),
            leader: Gauge::default(),
            registry: Registry::with_prefix("switchboard_operator"),
        };
        let r = &mut m.registry;
        r.register("reconciles", "Reconciles started", m.reconciles.clone());
        r.register(
            "reconcile_failures",
            "Reconciles that failed, by error kind",
            m.failures.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "Time one reconcile took",
            m.duration.clone(),
        );
        r.register(
            "writes",
            "Writes to the Kubernetes API and RocketMQ, by action",
            m.writes.clone(),
        );
        r.register(
            "leader",
            "1 while this replica holds the leader lease",
            m.leader.clone(),
        );
        m
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Counts a reconcile and times it until the guard drops.
    pub fn reconcile(&self) -> ReconcileTimer<'_> {
        self.reconciles.inc();
        ReconcileTimer {
            metrics: self,
            start: Instant::now(),
        }
    }

    pub fn wrote(&self, action: &'static str) {
        self.writes.get_or_create(&ActionLabel { action }).inc();
    }

    pub fn failed(&self, kind: &'static str) {
        self.failures.get_or_create(&KindLabel { kind }).inc();
    }
}

/// Observes the reconcile duration when dropped.
#[derive(Debug)]
pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    start: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.metrics
            .duration
            .observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_every_family() {
        let m = Metrics::new();
        drop(m.reconcile());
        m.failed("kube");
        m.wrote("apply");
        let text = m.encode();
        assert!(text.contains("switchboard_operator_reconciles_total 1"));
        assert!(text.contains("switchboard_operator_reconcile_failures_total{kind=\"kube\"} 1"));
        assert!(text.contains("switchboard_operator_writes_total{action=\"apply\"} 1"));
        assert!(text.contains("switchboard_operator_reconcile_duration_seconds_count 1"));
    }
}
