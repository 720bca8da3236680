//! The `ChatCluster` custom resource (`switchboard.dev/v1alpha1`).
//!
//! Every field's `///` comment becomes its description in the CRD, which is what
//! `kubectl explain chatcluster.spec` shows. Checks the apiserver can make itself (ranges,
//! patterns, CEL rules, immutable fields) live here, so a bad spec is refused at
//! `kubectl apply` time; [`crate::validate`] checks the rest.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, ResourceRequirements, Toleration};
use k8s_openapi::api::networking::v1::NetworkPolicyPeer;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A duration as the nodes and CEL both read it: one or more `<number><unit>` with the
/// units `ms`, `s`, `m`, `h` (`500ms`, `30s`, `5m`, `1h30m`).
pub const DURATION_PATTERN: &str = r"^([0-9]+(ms|s|m|h))+$";

/// A Switchboard chat cluster: a StatefulSet of chat nodes sharing one Redis and one
/// RocketMQ, with the topics, consumer groups, Services, ConfigMap and
/// PodDisruptionBudget they need.
// `printcolumn(...)` repeats `type_ = ...`, which clippy reads as a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[kube(
    group = "switchboard.dev",
    version = "v1alpha1",
    kind = "ChatCluster",
    namespaced,
    doc = "A Switchboard chat cluster. `kubectl explain chatcluster.spec` documents every field.",
    shortname = "chat",
    category = "switchboard",
    status = "ChatClusterStatus",
    derive = "PartialEq",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
// The rules here state switchboard_settings' rules for the apiserver; the
// boundary test of the operator walks each against a real one.
#[x_kube(validation = kube::core::Rule::new(
    "duration(self.drainTimeout).getSeconds() + 15 < self.terminationGracePeriodSeconds"
).message("drainTimeout + 15s (5s preStop pause, 5s to close the connections left, 5s to flush the outbox) must be shorter than terminationGracePeriodSeconds: the pod is killed when the grace period ends"))]
#[x_kube(validation = kube::core::Rule::new("duration(self.drainTimeout) > duration('0s')")
    .message("drainTimeout must be more than zero"))]
#[serde(rename_all = "camelCase")]
pub struct ChatClusterSpec {
    /// Number of chat nodes (pods of the StatefulSet). Each node gets its own RocketMQ topic
    /// and consumer group, created before the pod may start and removed after it is gone.
    /// `kubectl scale chatcluster/NAME --replicas=N` changes it.
    #[serde(default = "defaults::replicas")]
    #[schemars(range(min = 1, max = 1000))]
    pub replicas: i32,

    /// Container image of the chat node. Default: the node image of the operator's own
    /// release (set by the Helm chart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,

    /// When the kubelet pulls the image: `Always`, `IfNotPresent` or `Never`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,

    /// CPU and memory requests and limits of each chat node. Default: requests of 100m CPU
    /// and 128Mi memory, a 512Mi memory limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Where the nodes keep presence, history and offline messages.
    pub redis: RedisSpec,

    /// The RocketMQ that carries messages between nodes.
    pub rocketmq: RocketMqSpec,

    /// How clients authenticate. Only JWT (HS256) is accepted in a cluster: the nodes'
    /// dev auth (any user id) cannot be turned on through a ChatCluster.
    pub auth: AuthSpec,

    /// Heartbeats and presence.
    #[serde(default)]
    pub presence: PresenceSpec,

    /// Per-connection and per-message limits.
    #[serde(default)]
    pub limits: LimitsSpec,

    /// The Service clients connect to.
    #[serde(default)]
    pub service: ServiceSpec,

    /// The PodDisruptionBudget that keeps voluntary disruptions (node drains) from taking
    /// down too many chat nodes at once.
    #[serde(default)]
    pub pod_disruption_budget: PdbSpec,

    /// Where the chat node pods may run.
    #[serde(default)]
    pub scheduling: SchedulingSpec,

    /// A NetworkPolicy for the chat node pods: clients in, Redis, RocketMQ and DNS out.
    /// Off by default; it takes effect only with a network plugin that enforces
    /// NetworkPolicies.
    #[serde(default)]
    pub network_policy: NetworkPolicySpec,

    /// Seconds a chat node gets between the start of its termination and being killed.
    /// In that time it pauses 5 s (preStop) so endpoints drop it, stops taking new
    /// connections, tells its clients to reconnect elsewhere (up to `drainTimeout`),
    /// closes the connections left (up to 5 s) and flushes its outbox (up to 5 s).
    #[serde(default = "defaults::termination_grace")]
    #[schemars(range(min = 5, max = 3600))]
    pub termination_grace_period_seconds: i64,

    /// How long a stopping node waits for its clients to reconnect elsewhere before it
    /// closes the rest. More than zero; `drainTimeout` + 15 s (preStop pause, close and
    /// outbox flush budgets) must be shorter than `terminationGracePeriodSeconds`.
    #[serde(default = "defaults::drain_timeout")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"), length(max = 32))]
    pub drain_timeout: String,

    /// How long after sending a sender may recall a message (`0s`: senders cannot; the
    /// admin API always can).
    #[serde(default = "defaults::recall_window")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"), length(max = 32))]
    pub recall_window: String,

    /// The business event streams `<prefix>-events` (seed 000) and
    /// `<prefix>-cluster-events` (seed 001), published through an outbox in Redis. Both on
    /// by default.
    #[serde(default)]
    pub event_streams: EventStreamsSpec,

    /// Commands from backends on `<prefix>-commands` (seed 002's activity events and
    /// the generic group, notice and recall commands): on by default, retried with
    /// seed 002's schedule, then dead-lettered with the reason.
    #[serde(default)]
    pub commands: CommandsSpec,

    /// The request-response API on `<prefix>-requests` / `<prefix>-responses` (seed 000):
    /// on by default, requests older than `timeout` answered `timeout` unexecuted.
    #[serde(default)]
    pub requests: RequestsSpec,

    /// Moderation before a message is stored: word rules from a ConfigMap and an HTTP
    /// webhook. Off by default.
    #[serde(default)]
    pub moderation: ModerationSpec,

    /// OpenTelemetry traces over OTLP/HTTP: each traced message is one trace with spans on
    /// every pod it crosses. Off by default (no endpoint).
    #[serde(default)]
    pub tracing: TracingSpec,
}

/// Image pull policy of the chat node container.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

/// Redis connection: exactly one of `url` and `urlSecretRef`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, KubeSchema)]
#[x_kube(validation = kube::core::Rule::new("has(self.url) != has(self.urlSecretRef)")
    .message("set exactly one of redis.url and redis.urlSecretRef"))]
#[serde(rename_all = "camelCase")]
pub struct RedisSpec {
    /// Redis URL without a password, e.g. `redis://redis.chat:6379/0`. Use `urlSecretRef`
    /// when the URL carries credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^rediss?://[^\s]+$"))]
    pub url: Option<String>,

    /// A key of a Secret in the cluster's namespace holding the Redis URL
    /// (`redis://user:password@host:port/db`). The operator never reads it: the pods get it
    /// as an environment variable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_secret_ref: Option<SecretKeyRef>,

    /// A key of a Secret holding the PEM certificate of the CA that signed the Redis
    /// server's certificate, for a `rediss://` URL with a private CA. Mounted read-only
    /// into the pods; without it a `rediss://` server must have a certificate the system's
    /// roots trust.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
}

/// A key of a Secret in the ChatCluster's namespace.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// RocketMQ settings.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, KubeSchema)]
#[x_kube(validation = kube::core::Rule::new("has(self.accessKeySecretRef) == has(self.secretKeySecretRef)")
    .message("set both rocketmq.accessKeySecretRef and rocketmq.secretKeySecretRef, or neither"))]
#[serde(rename_all = "camelCase")]
pub struct RocketMqSpec {
    /// Name server address, `host:port` (several separated by `;`). The operator creates
    /// the cluster's topics and groups through it, and the nodes use it. Immutable: the
    /// topics live on that broker.
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("rocketmq.nameServer is immutable: the cluster's topics live on that broker; create a new ChatCluster instead"))]
    #[schemars(regex(pattern = r"^[A-Za-z0-9.\-]+:[0-9]{1,5}(;[A-Za-z0-9.\-]+:[0-9]{1,5})*$"))]
    pub name_server: String,

    /// Read and write queues of each topic (messages of one queue are consumed in order).
    #[serde(default = "defaults::queues")]
    #[schemars(range(min = 1, max = 64))]
    pub queues_per_topic: u32,

    /// The `retryMaxTimes` the operator sets on the cluster's consumer groups: how many times
    /// the broker redelivers a message to a consumer that sends no bound of its own before
    /// moving it to the group's dead-letter topic. The nodes send their own bound (API
    /// requests: 3; commands: `commands.redeliveries` + 2) and read their delivery groups in
    /// order without redelivery, so the nodes' behaviour does not depend on it.
    #[serde(default = "defaults::retry_max")]
    #[schemars(range(min = 0, max = 16))]
    pub retry_max_times: u32,

    /// For brokers that enforce ACL: a key of a Secret holding the nodes' access key (the
    /// ACL 2.0 user name). The user needs `Pub` on the cluster's topics and `Sub` on its
    /// topics and groups. The operator never reads it: the pods get it as an environment
    /// variable. (The operator's own topic administration signs with its
    /// `SB_ROCKETMQ_ACCESS_KEY` / `SB_ROCKETMQ_SECRET_KEY`, chart value
    /// `rocketmq.credentialsSecret`.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_secret_ref: Option<SecretKeyRef>,

    /// A key of a Secret holding the secret key (password) of `accessKeySecretRef`'s user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_secret_ref: Option<SecretKeyRef>,
}

/// Client authentication.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthSpec {
    /// A key of a Secret holding the HS256 secret that signs client JWTs (`sub` is the
    /// user id).
    pub jwt_secret_ref: SecretKeyRef,

    /// A key of a Secret holding the bearer token of the nodes' admin HTTP API (presence,
    /// online stats, groups). Without it the admin API is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token_secret_ref: Option<SecretKeyRef>,
}

/// Heartbeats and presence timings.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, KubeSchema)]
#[x_kube(validation = kube::core::Rule::new("duration(self.heartbeatInterval) < duration(self.ttl)")
    .message("presence.heartbeatInterval must be shorter than presence.ttl"))]
#[x_kube(validation = kube::core::Rule::new("duration(self.heartbeatInterval) >= duration('1s')")
    .message("presence.heartbeatInterval must be at least 1s"))]
#[serde(rename_all = "camelCase")]
pub struct PresenceSpec {
    /// How often a node refreshes its registration and its connections in Redis, and how
    /// often clients should ping (a connection silent for three intervals is closed).
    /// At least 1s.
    #[serde(default = "defaults::heartbeat")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"), length(max = 32))]
    pub heartbeat_interval: String,

    /// How long a connection stays registered without a heartbeat (a pod that died without
    /// cleaning up). Longer than `heartbeatInterval`.
    #[serde(default = "defaults::presence_ttl")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"), length(max = 32))]
    pub ttl: String,
}

impl Default for PresenceSpec {
    fn default() -> Self {
        Self {
            heartbeat_interval: defaults::heartbeat(),
            ttl: defaults::presence_ttl(),
        }
    }
}

/// Limits of each node.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, KubeSchema)]
#[x_kube(validation = kube::core::Rule::new("self.maxContentBytes < self.maxFrameBytes")
    .message("limits.maxContentBytes must be less than limits.maxFrameBytes (a message travels in a frame with its JSON around it)"))]
#[x_kube(validation = kube::core::Rule::new("self.rateLimit <= self.rateBurst")
    .message("limits.rateBurst must be at least limits.rateLimit"))]
#[serde(rename_all = "camelCase")]
pub struct LimitsSpec {
    /// Largest message content, in bytes; less than `maxFrameBytes`.
    #[serde(default = "defaults::max_content")]
    #[schemars(range(min = 1, max = 1048576))]
    pub max_content_bytes: u32,
    /// Largest WebSocket frame a client may send, in bytes.
    #[serde(default = "defaults::max_frame")]
    #[schemars(range(min = 256, max = 16777216))]
    pub max_frame_bytes: u32,
    /// Messages per second one connection may send, sustained.
    #[serde(default = "defaults::rate_limit")]
    #[schemars(range(min = 1, max = 100000))]
    pub rate_limit: u32,
    /// Messages one connection may send in a burst.
    #[serde(default = "defaults::rate_burst")]
    #[schemars(range(min = 1, max = 100000))]
    pub rate_burst: u32,
    /// Connections one node accepts; beyond it new connections are refused.
    #[serde(default = "defaults::max_connections")]
    #[schemars(range(min = 1, max = 10000000))]
    pub max_connections: u32,
    /// Messages kept per conversation for history.
    #[serde(default = "defaults::history")]
    #[schemars(range(min = 1, max = 1000000))]
    pub history_limit: u32,
    /// Undelivered messages kept per offline user.
    #[serde(default = "defaults::inbox")]
    #[schemars(range(min = 1, max = 1000000))]
    pub inbox_limit: u32,
    /// Members one group chat may have.
    #[serde(default = "defaults::group_members")]
    #[schemars(range(min = 2, max = 100000))]
    pub max_group_members: u32,
}

impl Default for LimitsSpec {
    fn default() -> Self {
        Self {
            max_content_bytes: defaults::max_content(),
            max_frame_bytes: defaults::max_frame(),
            rate_limit: defaults::rate_limit(),
            rate_burst: defaults::rate_burst(),
            max_connections: defaults::max_connections(),
            history_limit: defaults::history(),
            inbox_limit: defaults::inbox(),
            max_group_members: defaults::group_members(),
        }
    }
}

/// The client Service.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Service type: `ClusterIP`, `NodePort` or `LoadBalancer`.
    #[serde(default = "defaults::service_type", rename = "type")]
    pub type_: ServiceType,
    /// Port the Service listens on (the nodes listen on 8080).
    #[serde(default = "defaults::service_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Annotations for the Service (load balancer settings, for example).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Default for ServiceSpec {
    fn default() -> Self {
        Self {
            type_: defaults::service_type(),
            port: defaults::service_port(),
            annotations: BTreeMap::new(),
        }
    }
}

/// Kubernetes Service types a client Service may have.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
pub enum ServiceType {
    ClusterIP,
    NodePort,
    LoadBalancer,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
        }
    }
}

/// The PodDisruptionBudget.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PdbSpec {
    /// Whether to create it.
    #[serde(default = "defaults::yes")]
    pub enabled: bool,
    /// Chat nodes that may be down at once through voluntary disruptions.
    #[serde(default = "defaults::one")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_unavailable: i32,
}

impl Default for PdbSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            max_unavailable: 1,
        }
    }
}

/// The NetworkPolicy of the chat node pods.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default, KubeSchema)]
#[x_kube(validation = kube::core::Rule::new("!self.enabled || (has(self.backends) && size(self.backends) > 0)")
    .message("networkPolicy.backends must name where Redis and RocketMQ run when networkPolicy.enabled is true"))]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// Whether to create it.
    #[serde(default)]
    pub enabled: bool,
    /// Who may connect to the nodes' port (8080): clients, ingress controllers, Prometheus.
    /// Empty: anyone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clients: Vec<NetworkPolicyPeer>,
    /// Where Redis and RocketMQ (name servers and brokers) run: the only places the nodes
    /// may connect to, besides DNS (port 53). Required when enabled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<NetworkPolicyPeer>,
}

/// Scheduling of the chat node pods.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SchedulingSpec {
    /// Node labels a pod's node must have.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Pod affinity and anti-affinity. Default: prefer spreading the nodes over hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Taints the pods tolerate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
}

/// What the operator last saw and did. Written only by the operator.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChatClusterStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// One word for humans: `Provisioning`, `Scaling`, `Ready`, `Degraded`, `Invalid`,
    /// `Paused` or `Deleting`. Automation should read `conditions`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Chat node pods that exist (the StatefulSet's `status.replicas`).
    #[serde(default)]
    pub replicas: i32,
    /// Chat node pods that are ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Label selector of the chat node pods, for the scale subresource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Prefix of the cluster's RocketMQ topics and groups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_prefix: Option<String>,
    /// RocketMQ topics the operator created for this cluster and will delete with it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topics: Vec<String>,
    /// RocketMQ consumer groups the operator created for this cluster and will delete with it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Read and write queues the topics were created with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queues_per_topic: Option<u32>,
    /// Retry maximum the consumer groups were created with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_max_times: Option<u32>,
    /// `Ready`, `TopicsReady`, `NodesReady`, `Progressing` and `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

mod commands;
mod defaults;
mod moderation;
mod streams;
mod tracing;

pub use commands::{CommandsSpec, RequestsSpec};
pub use moderation::{ConfigMapKeyRef, ModerationSpec, WebhookSpec, WordsAction};
pub use streams::EventStreamsSpec;
pub use tracing::TracingSpec;

#[cfg(test)]
mod tests {
    use kube::CustomResourceExt;

    use super::*;

    #[test]
    fn crd_has_the_subresources_kubectl_needs() {
        let crd = serde_json::to_value(ChatCluster::crd()).unwrap_or_default();
        let version = &crd["spec"]["versions"][0];
        assert_eq!(crd["spec"]["names"]["shortNames"][0], "chat");
        assert_eq!(
            version["subresources"]["scale"]["labelSelectorPath"],
            ".status.selector"
        );
        assert!(version["subresources"]["status"].is_object());
        let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"];
        assert_eq!(spec["properties"]["replicas"]["minimum"], 1.0);
        assert!(
            spec["properties"]["replicas"]["description"]
                .as_str()
                .is_some_and(|d| d.contains("kubectl scale"))
        );
    }

    #[test]
    fn schema_bounds_are_the_shared_settings_ranges() {
        use switchboard_settings::Setting as S;
        let crd = serde_json::to_value(ChatCluster::crd()).unwrap_or_default();
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        for (setting, path) in [
            (S::TerminationGrace, &["terminationGracePeriodSeconds"][..]),
            (S::MaxContentBytes, &["limits", "maxContentBytes"]),
            (S::MaxFrameBytes, &["limits", "maxFrameBytes"]),
            (S::RateLimit, &["limits", "rateLimit"]),
            (S::RateBurst, &["limits", "rateBurst"]),
            (S::MaxConnections, &["limits", "maxConnections"]),
            (S::HistoryLimit, &["limits", "historyLimit"]),
            (S::InboxLimit, &["limits", "inboxLimit"]),
            (S::MaxGroupMembers, &["limits", "maxGroupMembers"]),
        ] {
            let mut node = spec;
            for p in path {
                node = &node["properties"][*p];
            }
            let r = setting
                .range()
                .unwrap_or(switchboard_settings::Range { min: 0, max: 0 });
            assert_eq!(node["minimum"], r.min as f64, "{setting:?} minimum");
            assert_eq!(node["maximum"], r.max as f64, "{setting:?} maximum");
        }
        let rules = serde_json::to_string(&spec["x-kubernetes-validations"]).unwrap_or_default();
        let shutdown = switchboard_settings::shutdown_secs(std::time::Duration::ZERO);
        assert!(
            rules.contains(&format!("getSeconds() + {shutdown} <")),
            "the drain rule counts {shutdown}s besides the drain: {rules}"
        );
    }

    #[test]
    fn duration_pattern_matches_what_the_schema_says() {
        let crd = serde_json::to_value(ChatCluster::crd()).unwrap_or_default();
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        assert_eq!(
            spec["properties"]["drainTimeout"]["pattern"],
            DURATION_PATTERN
        );
    }
}
