//! Traces of a ChatCluster's nodes (`docs/operations.md`, "Tracing").

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use super::defaults;

/// OpenTelemetry traces of the chat nodes, sent over OTLP/HTTP: one trace per traced
/// message, with spans on every pod it crosses. Off unless `endpoint` is set.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TracingSpec {
    /// The base URL of an OTLP/HTTP receiver (an OpenTelemetry collector, Jaeger):
    /// `http://host[:port]`; the nodes post spans to `<endpoint>/v1/traces` (plain http:
    /// a collector beside the pods takes it further).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^http://[^\s/]+(/\S*)?$"), length(max = 2048))]
    pub endpoint: Option<String>,
    /// The share of messages traced, a decimal from `0` to `1` (a backend's command or
    /// request that arrives traced keeps its own decision).
    #[serde(default = "defaults::sample_ratio")]
    #[schemars(regex(pattern = r"^(0(\.[0-9]{1,6})?|1(\.0{1,6})?)$"), length(max = 8))]
    pub sample_ratio: String,
}

impl Default for TracingSpec {
    fn default() -> Self {
        Self {
            endpoint: None,
            sample_ratio: defaults::sample_ratio(),
        }
    }
}
