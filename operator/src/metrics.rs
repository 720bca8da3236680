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

/// One ChatCluster (the set of clusters is what users made: bounded by them).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabel {
    pub namespace: String,
    pub name: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterNodesLabel {
    pub namespace: String,
    pub name: String,
    /// `desired` (spec.replicas) or `ready`.
    pub state: &'static str,
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
    /// 1 while a ChatCluster's phase is `Ready`, 0 otherwise (as last written).
    pub cluster_ready: Family<ClusterLabel, Gauge>,
    /// 1 while a ChatCluster is paused on purpose (its phase `Paused`).
    pub cluster_paused: Family<ClusterLabel, Gauge>,
    /// A ChatCluster's nodes, desired and ready.
    pub cluster_nodes: Family<ClusterNodesLabel, Gauge>,
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
            cluster_ready: Family::default(),
            cluster_paused: Family::default(),
            cluster_nodes: Family::default(),
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
        r.register(
            "cluster_ready",
            "1 while a ChatCluster is Ready, by namespace and name (written by the leader)",
            m.cluster_ready.clone(),
        );
        r.register(
            "cluster_paused",
            "1 while a ChatCluster is paused on purpose (the pause annotation), by namespace and name",
            m.cluster_paused.clone(),
        );
        r.register(
            "cluster_nodes",
            "Chat nodes of a ChatCluster, by namespace, name and state (desired, ready)",
            m.cluster_nodes.clone(),
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

    /// Records a ChatCluster's status (its `phase`) as written.
    pub fn cluster(
        &self,
        namespace: &str,
        name: &str,
        phase: &str,
        desired: i32,
        ready_nodes: i32,
    ) {
        let id = ClusterLabel {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        self.cluster_ready
            .get_or_create(&id)
            .set(i64::from(phase == "Ready"));
        self.cluster_paused
            .get_or_create(&id)
            .set(i64::from(phase == "Paused"));
        for (state, n) in [("desired", desired), ("ready", ready_nodes)] {
            self.cluster_nodes
                .get_or_create(&ClusterNodesLabel {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                    state,
                })
                .set(i64::from(n));
        }
    }

    /// Drops a deleted ChatCluster's series.
    pub fn forget_cluster(&self, namespace: &str, name: &str) {
        let id = ClusterLabel {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        self.cluster_ready.remove(&id);
        self.cluster_paused.remove(&id);
        for state in ["desired", "ready"] {
            self.cluster_nodes.remove(&ClusterNodesLabel {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                state,
            });
        }
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
    fn a_cluster_s_gauges_follow_its_status_and_go_with_it() {
        let m = Metrics::new();
        m.cluster("chat", "prod", "Progressing", 3, 1);
        m.cluster("chat", "prod", "Ready", 3, 3);
        let text = m.encode();
        assert!(
            text.contains("switchboard_operator_cluster_ready{namespace=\"chat\",name=\"prod\"} 1"),
            "{text}"
        );
        assert!(text.contains("switchboard_operator_cluster_nodes{namespace=\"chat\",name=\"prod\",state=\"ready\"} 3"), "{text}");
        m.forget_cluster("chat", "prod");
        assert!(!m.encode().contains("name=\"prod\""));
    }

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
