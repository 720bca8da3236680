//! What a throughput run reports: latency percentiles and the JSON summary.

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::proto::Proto;
use crate::report::Counts;

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub samples: u64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Self {
        let us = |ns: u64| (ns as f64 / 100.0).round() / 10.0;
        Self {
            samples: h.len(),
            p50_us: us(h.value_at_quantile(0.5)),
            p90_us: us(h.value_at_quantile(0.9)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
            mean_us: (h.mean() / 100.0).round() / 10.0,
        }
    }

    pub fn line(&self) -> String {
        format!(
            "p50 {} µs, p90 {} µs, p99 {} µs, p99.9 {} µs, max {} µs (mean {} µs, n={})",
            self.p50_us,
            self.p90_us,
            self.p99_us,
            self.p999_us,
            self.max_us,
            self.mean_us,
            self.samples
        )
    }
}

#[derive(Debug, Serialize)]
pub struct ThroughputSummary {
    pub scenario: &'static str,
    pub ok: bool,
    /// The server under test.
    pub server: Proto,
    /// Centrifugo's history size per channel (Centrifugo only; 0: off).
    pub centrifugo_history: Option<u32>,
    /// Nodes under test; with more than one, every message crossed nodes.
    pub nodes: usize,
    pub failures: Vec<String>,
    pub pairs: usize,
    pub offered_rate: u64,
    pub duration_secs: f64,
    pub warmup_secs: f64,
    pub content_bytes: u16,
    pub ack_batch: usize,
    pub connect_failures: Counts,
    pub scheduled: u64,
    pub written: u64,
    pub sent_ok: u64,
    pub received: u64,
    pub delivered_receipts: u64,
    pub lost: u64,
    pub unconfirmed: u64,
    pub out_of_order: u64,
    pub closed_early: u64,
    pub errors: Counts,
    pub send_rate: f64,
    pub receive_rate: f64,
    /// How late the pacer handed over a message at worst (ms).
    pub pacer_late_max_ms: f64,
    /// From scheduled send time to receipt (includes the loadgen's own lag).
    pub latency: Latency,
    /// From the actual write to receipt.
    pub latency_from_write: Latency,
    /// Upper bounds of the node's own delivery histogram buckets (ms),
    /// warm-up included.
    pub node_delivery_p50_ms_le: Option<f64>,
    pub node_delivery_p99_ms_le: Option<f64>,
    pub node_cpu_secs: Option<f64>,
    pub node_cpu_cores: Option<f64>,
    pub node_cpu_us_per_msg: Option<f64>,
    pub node_rss_after_bytes: Option<u64>,
    pub loadgen_cpu_secs: f64,
    pub loadgen_cpu_cores: f64,
    /// All CPUs busy during the run, in cores.
    pub machine_busy_cores: f64,
    /// Busy CPU not used by the node or the loadgen, in cores.
    pub other_processes_cores: f64,
}
