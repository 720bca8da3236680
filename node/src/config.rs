//! Configuration: command-line flags, each with an `SB_*` environment variable.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use switchboard_rocketmq::Credentials;
use switchboard_settings::NodeSettings;

pub use crate::secret::Secret;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Switchboard chat node: a WebSocket chat server.
///
/// Without any backend configured it runs standalone on in-memory backends,
/// with dev auth on (any `?userId=` is accepted): fine on one machine, not
/// for production.
#[derive(Debug, Clone, Parser)]
#[command(name = "switchboard-node", version, about, long_about = None)]
pub struct Config {
    /// Address to listen on for HTTP and WebSocket.
    #[arg(long, env = "SB_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// This node's pod name (Kubernetes downward API). The StatefulSet
    /// ordinal at its end (`sb-2` -> 2) is the message id worker id.
    #[arg(long, env = "POD_NAME", default_value = "standalone")]
    pub pod_name: String,

    /// This node's namespace (Kubernetes downward API).
    #[arg(long, env = "POD_NAMESPACE")]
    pub pod_namespace: Option<String>,

    /// Redis URL (`redis://[user:password@]host:port[/db]`, `rediss://` for
    /// TLS). Set: cluster mode, presence and messages in Redis. Unset:
    /// standalone, in memory. Never logged.
    #[arg(long, env = "SB_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<Secret>,

    /// PEM file of the CA that signed the Redis server's certificate, for a
    /// `rediss://` URL with a private CA (default: the system's roots).
    #[arg(long, env = "SB_REDIS_CA_FILE")]
    pub redis_ca_file: Option<std::path::PathBuf>,

    /// Name of the cluster (the ChatCluster): with the pod namespace it
    /// forms the Redis key prefix `sb:{<namespace>/<name>}:`.
    #[arg(long, env = "SB_CLUSTER_NAME", default_value = "standalone")]
    pub cluster_name: String,

    /// How long a connection stays in the registry without a heartbeat
    /// refreshing it (a pod that died without cleaning up).
    #[arg(long, env = "SB_PRESENCE_TTL", default_value = "5m", value_parser = humantime::parse_duration)]
    pub presence_ttl: Duration,

    /// RocketMQ name server (`host:port`, several separated by `;`). Set:
    /// cross-pod pushes go through RocketMQ (needs SB_TOPIC_PREFIX).
    #[arg(long, env = "SB_ROCKETMQ_NAMESRV")]
    pub rocketmq_namesrv: Option<String>,

    /// Prefix of the cluster's RocketMQ topics and groups, as the operator
    /// rendered it: this pod reads topic and group `<prefix>-node-<ordinal>`.
    #[arg(long, env = "SB_TOPIC_PREFIX")]
    pub topic_prefix: Option<String>,

    /// RocketMQ ACL access key (the ACL 2.0 user name), for a broker that
    /// enforces ACL; set together with SB_ROCKETMQ_SECRET_KEY.
    #[arg(long, env = "SB_ROCKETMQ_ACCESS_KEY")]
    pub rocketmq_access_key: Option<String>,

    /// RocketMQ ACL secret key (the user's password). Never logged.
    #[arg(long, env = "SB_ROCKETMQ_SECRET_KEY", hide_env_values = true)]
    pub rocketmq_secret_key: Option<Secret>,

    /// Publish the business event stream `<prefix>-events` (seed 000)
    /// through a transactional outbox in Redis. Needs Redis and RocketMQ;
    /// ignored otherwise.
    #[arg(long, env = "SB_EVENTS", default_value_t = true, action = clap::ArgAction::Set)]
    pub events: bool,

    /// Publish the ClusterEvent stream `<prefix>-cluster-events` (seed 001)
    /// through the same outbox. With both streams off the outbox is not
    /// written at all.
    #[arg(long, env = "SB_CLUSTER_EVENTS", default_value_t = true, action = clap::ArgAction::Set)]
    pub cluster_events: bool,

    /// Event outbox entries (one per accepted message) that may wait for
    /// RocketMQ, all shards together; past that, sends are refused with
    /// `unavailable` rather than events dropped.
    #[arg(long, env = "SB_EVENTS_OUTBOX_LIMIT", default_value_t = 160_000)]
    pub events_outbox_limit: usize,

    /// HS256 secret for client JWTs (`sub` = user id, `exp` required). When
    /// set, clients must present `?token=` or `Authorization: Bearer`.
    #[arg(long, env = "SB_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<Secret>,

    /// Dev mode: accept `?userId=` / `?user=` without a token, and open the
    /// admin API when no admin token is set. Default: on only standalone (no
    /// Redis, no RocketMQ) without a JWT secret. Never use in production.
    #[arg(long, env = "SB_DEV_AUTH")]
    pub dev_auth: Option<bool>,

    /// Bearer token required by the admin (groups) and presence HTTP
    /// endpoints. Unset: those endpoints are off (403 `admin_disabled`),
    /// except in dev mode, where they are open (and the log says so).
    #[arg(long, env = "SB_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<Secret>,

    /// Interval at which clients should send `ping`; a connection silent for
    /// three intervals is closed (4000).
    #[arg(long, env = "SB_HEARTBEAT_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Duration,

    /// Largest message `content`, in bytes of UTF-8.
    #[arg(long, env = "SB_MAX_CONTENT_BYTES", default_value_t = 4096)]
    pub max_content_bytes: usize,

    /// Largest WebSocket frame; a bigger one closes the connection (1009).
    /// Frames above `max-content-bytes` but below this get an error frame.
    #[arg(long, env = "SB_MAX_FRAME_BYTES", default_value_t = 65536)]
    pub max_frame_bytes: usize,

    /// Frames per second a connection may send (token bucket refill rate).
    #[arg(long, env = "SB_RATE_LIMIT", default_value_t = 30)]
    pub rate_limit: u32,

    /// Burst size of the per-connection rate limit.
    #[arg(long, env = "SB_RATE_BURST", default_value_t = 60)]
    pub rate_burst: u32,

    /// Frames queued for one connection before it counts as too slow and is
    /// closed (4001).
    #[arg(long, env = "SB_OUTBOUND_BUFFER", default_value_t = 512)]
    pub outbound_buffer: usize,

    /// Most concurrent WebSocket connections on this node; more get HTTP 503.
    #[arg(long, env = "SB_MAX_CONNECTIONS", default_value_t = 100_000)]
    pub max_connections: usize,

    /// Messages kept per conversation.
    #[arg(long, env = "SB_HISTORY_LIMIT", default_value_t = 1000)]
    pub history_limit: usize,

    /// Unacknowledged messages kept per user; a direct message to a full
    /// inbox is refused with `inbox_full`.
    #[arg(long, env = "SB_INBOX_LIMIT", default_value_t = 10_000)]
    pub inbox_limit: usize,

    /// How long a `client_msg_id` is remembered for idempotent resends.
    #[arg(long, env = "SB_DEDUP_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
    pub dedup_ttl: Duration,

    /// In-memory store only: at most this many `client_msg_id`s are
    /// remembered (the oldest are forgotten first, before their TTL), so a
    /// standalone node's memory is bounded by its limits, not by how many
    /// messages it has seen. Redis keeps each for `SB_DEDUP_TTL`.
    #[arg(long, env = "SB_DEDUP_LIMIT", default_value_t = 100_000)]
    pub dedup_limit: usize,

    /// How long after sending a sender may recall a message (`0s`: senders
    /// cannot; the admin API always can).
    #[arg(long, env = "SB_RECALL_WINDOW", default_value = "2m", value_parser = humantime::parse_duration)]
    pub recall_window: Duration,

    /// Most members in one group.
    #[arg(long, env = "SB_MAX_GROUP_MEMBERS", default_value_t = 1000)]
    pub max_group_members: usize,

    /// On SIGTERM, how long to wait for clients to reconnect elsewhere before
    /// closing the rest (1001).
    #[arg(long, env = "SB_DRAIN_TIMEOUT", default_value = "20s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,

    /// The pod's termination grace period (the operator renders it). Set, the
    /// node refuses to start when its shutdown (preStop pause + drain timeout
    /// + close and outbox flush budgets) could outlast it.
    #[arg(long, env = "SB_TERMINATION_GRACE", value_parser = humantime::parse_duration)]
    pub termination_grace: Option<Duration>,

    /// Upper bound of the random delay suggested in `reconnect` frames.
    #[arg(long, env = "SB_RECONNECT_JITTER", default_value = "5s", value_parser = humantime::parse_duration)]
    pub reconnect_jitter: Duration,

    /// Time a client has to send the headers of each HTTP request (the
    /// WebSocket upgrade included); slower ones are disconnected (slowloris).
    #[arg(long, env = "SB_HTTP_HEADER_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub http_header_timeout: Duration,

    /// Log format.
    #[arg(long, env = "SB_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    #[command(flatten)]
    pub commands: CommandSettings,

    /// Answer the request-response API on `<prefix>-requests` (group
    /// `<prefix>-api`). Needs Redis and RocketMQ; ignored otherwise.
    #[arg(long, env = "SB_REQUESTS", default_value_t = true, action = clap::ArgAction::Set)]
    pub requests: bool,

    /// How long after a backend sent a request (its `deadline_ms` property
    /// overrides) the node still executes it; later it answers `timeout`.
    #[arg(long, env = "SB_REQUEST_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,

    #[command(flatten)]
    pub moderation: ModerationSettings,

    #[command(flatten)]
    pub tracing: TracingSettings,
}

/// Traces over OTLP/HTTP ([`crate::telemetry`]); off when no endpoint is set.
#[derive(Debug, Clone, clap::Args)]
pub struct TracingSettings {
    /// The base URL of an OTLP/HTTP receiver (an OpenTelemetry collector,
    /// Jaeger): `http://collector:4318`; spans go to `<endpoint>/v1/traces`.
    #[arg(long = "otlp-endpoint", env = "SB_OTLP_ENDPOINT")]
    pub endpoint: Option<String>,

    /// The share of messages traced, 0 to 1 (a backend's command or request
    /// that arrives traced keeps its own decision).
    #[arg(long = "trace-sample-ratio", env = "SB_TRACE_SAMPLE_RATIO", default_value_t = switchboard_settings::telemetry::DEFAULT_SAMPLE_RATIO)]
    pub sample_ratio: f64,
}

/// What word rules do with a match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WordsAction {
    /// Replace each matched character by `*` and store the message.
    Mask,
    /// Refuse the message (`moderated`).
    Reject,
}

/// The moderation policy ([`crate::moderation`]); off when neither the
/// words file nor the webhook is set.
#[derive(Debug, Clone, clap::Args)]
pub struct ModerationSettings {
    /// A file of word and pattern rules (one per line; `/.../` a regular
    /// expression), read again when it changes.
    #[arg(
        id = "moderation_words_file",
        long = "moderation-words-file",
        env = "SB_MODERATION_WORDS_FILE"
    )]
    pub words_file: Option<std::path::PathBuf>,

    /// What a rule's match does.
    #[arg(
        id = "moderation_words_action",
        long = "moderation-words-action",
        env = "SB_MODERATION_WORDS_ACTION",
        value_enum,
        default_value = "mask"
    )]
    pub words_action: WordsAction,

    /// An `http://` service asked about every message.
    #[arg(
        id = "moderation_webhook_url",
        long = "moderation-webhook-url",
        env = "SB_MODERATION_WEBHOOK_URL"
    )]
    pub webhook_url: Option<String>,

    /// How long the webhook may take (10ms to 10s).
    #[arg(id = "moderation_webhook_timeout", long = "moderation-webhook-timeout", env = "SB_MODERATION_WEBHOOK_TIMEOUT", default_value = "500ms", value_parser = humantime::parse_duration)]
    pub webhook_timeout: Duration,

    /// When the webhook fails: `true` allows the message, `false` (the
    /// default) refuses it with `unavailable`.
    #[arg(id = "moderation_fail_open", long = "moderation-fail-open", env = "SB_MODERATION_FAIL_OPEN", default_value_t = false, action = clap::ArgAction::Set)]
    pub fail_open: bool,
}

/// Commands from backends on `<prefix>-commands` ([`crate::commands`]).
#[derive(Debug, Clone, clap::Args)]
pub struct CommandSettings {
    /// Consume commands (group `<prefix>-commands`). Needs Redis and
    /// RocketMQ; ignored otherwise.
    #[arg(id = "commands", long = "commands", env = "SB_COMMANDS", default_value_t = true, action = clap::ArgAction::Set)]
    pub enabled: bool,

    /// Retries within the node after a failed attempt that may pass (Redis
    /// away, a group not created yet), before the command goes back to
    /// RocketMQ.
    #[arg(
        id = "command_retries",
        long = "command-retries",
        env = "SB_COMMAND_RETRIES",
        default_value_t = 3
    )]
    pub retries: u32,

    /// Wait before the first of those retries.
    #[arg(id = "command_retry_initial", long = "command-retry-initial", env = "SB_COMMAND_RETRY_INITIAL", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub retry_initial: Duration,

    /// Each further wait is the previous one times this.
    #[arg(
        id = "command_retry_multiplier",
        long = "command-retry-multiplier",
        env = "SB_COMMAND_RETRY_MULTIPLIER",
        default_value_t = 2.0
    )]
    pub retry_multiplier: f64,

    /// Longest single wait.
    #[arg(id = "command_retry_max", long = "command-retry-max", env = "SB_COMMAND_RETRY_MAX", default_value = "10s", value_parser = humantime::parse_duration)]
    pub retry_max: Duration,

    /// Redeliveries through RocketMQ (after the broker's delay levels: 10 s,
    /// 30 s, 1 min, 2 min, ...) once the retries within the node failed;
    /// after the last, the command goes to the dead-letter topic.
    #[arg(
        id = "command_redeliveries",
        long = "command-redeliveries",
        env = "SB_COMMAND_REDELIVERIES",
        default_value_t = 2
    )]
    pub redeliveries: u32,

    /// How long an applied command's id is remembered: a delivery of the
    /// same command within it changes nothing.
    #[arg(id = "command_dedup_ttl", long = "command-dedup-ttl", env = "SB_COMMAND_DEDUP_TTL", default_value = "72h", value_parser = humantime::parse_duration)]
    pub dedup_ttl: Duration,
}

impl CommandSettings {
    /// The retry policy, as the shared rules see it.
    pub fn retry(&self) -> switchboard_settings::commands::CommandRetry {
        switchboard_settings::commands::CommandRetry {
            retries: self.retries,
            initial: self.retry_initial,
            multiplier: self.retry_multiplier,
            max: self.retry_max,
            redeliveries: self.redeliveries,
            dedup_ttl: self.dedup_ttl,
        }
    }

    /// The waits before each retry within the node.
    pub fn backoff(&self) -> Vec<Duration> {
        self.retry().backoff()
    }

    pub fn check(&self) -> Result<(), String> {
        self.retry().check().map_err(|e| e.to_string())
    }
}

/// Largest `SB_EVENTS_OUTBOX_LIMIT` (the ChatCluster's bound too).
pub const MAX_OUTBOX_LIMIT: usize = 100_000_000;

impl Config {
    /// Dev auth after applying the default.
    pub fn dev_auth_enabled(&self) -> bool {
        self.dev_auth
            .unwrap_or(self.jwt_secret.is_none() && self.is_standalone())
    }

    /// No networked backend configured: everything in memory.
    pub fn is_standalone(&self) -> bool {
        self.redis_url.is_none() && self.rocketmq_namesrv.is_none()
    }

    /// Whether the node reads commands from backends (switched on, with
    /// Redis and RocketMQ).
    pub fn consumes_commands(&self) -> bool {
        self.commands.enabled
            && self.redis_url.is_some()
            && self.rocketmq_namesrv.is_some()
            && self.topic_prefix.is_some()
    }

    /// Whether the node answers requests from backends (switched on, with
    /// Redis and RocketMQ).
    pub fn answers_requests(&self) -> bool {
        self.requests
            && self.redis_url.is_some()
            && self.rocketmq_namesrv.is_some()
            && self.topic_prefix.is_some()
    }

    /// The namespace part of the cluster identity.
    pub fn namespace(&self) -> &str {
        self.pod_namespace.as_deref().unwrap_or("default")
    }

    /// The settings whose rules the node and the operator share.
    pub fn settings(&self) -> NodeSettings {
        let n = |v: usize| v as u64;
        NodeSettings {
            heartbeat_interval: self.heartbeat_interval,
            presence_ttl: self.presence_ttl,
            drain_timeout: self.drain_timeout,
            termination_grace: self.termination_grace,
            max_content_bytes: n(self.max_content_bytes),
            max_frame_bytes: n(self.max_frame_bytes),
            rate_limit: self.rate_limit.into(),
            rate_burst: self.rate_burst.into(),
            max_connections: n(self.max_connections),
            history_limit: n(self.history_limit),
            inbox_limit: n(self.inbox_limit),
            max_group_members: n(self.max_group_members),
            outbound_buffer: n(self.outbound_buffer),
        }
    }

    /// Checks what clap cannot: the shared settings rules
    /// ([`switchboard_settings`]) and how clients authenticate.
    pub fn validate(&self) -> Result<(), String> {
        if self.jwt_secret.is_none() && !self.dev_auth_enabled() {
            return Err(
                "no way to authenticate clients: set SB_JWT_SECRET or SB_DEV_AUTH=true".into(),
            );
        }
        if let Some(secret) = &self.jwt_secret {
            switchboard_settings::check_jwt_secret(secret.expose()).map_err(|e| e.to_string())?;
        }
        self.rocketmq_credentials()?;
        self.commands.check()?;
        switchboard_settings::commands::check_request_timeout(self.request_timeout)
            .map_err(|m| format!("SB_REQUEST_TIMEOUT {m}"))?;
        switchboard_settings::commands::check_webhook_timeout(self.moderation.webhook_timeout)
            .map_err(|m| format!("SB_MODERATION_WEBHOOK_TIMEOUT {m}"))?;
        if let Some(url) = &self.moderation.webhook_url {
            switchboard_settings::commands::check_webhook_url(url)
                .map_err(|m| format!("SB_MODERATION_WEBHOOK_URL {m}"))?;
        }
        if let Some(url) = &self.tracing.endpoint {
            switchboard_settings::telemetry::check_otlp_endpoint(url)
                .map_err(|m| format!("SB_OTLP_ENDPOINT {m}"))?;
        }
        switchboard_settings::telemetry::check_sample_ratio(self.tracing.sample_ratio)
            .map_err(|m| format!("SB_TRACE_SAMPLE_RATIO {m}"))?;
        if self.dedup_limit == 0 {
            return Err("SB_DEDUP_LIMIT must be at least 1".into());
        }
        let shards = crate::backend::outbox::SHARDS as usize;
        if !(shards..=MAX_OUTBOX_LIMIT).contains(&self.events_outbox_limit) {
            return Err(format!(
                "SB_EVENTS_OUTBOX_LIMIT must be {shards} (one entry per outbox shard) to {MAX_OUTBOX_LIMIT}"
            ));
        }
        self.settings().check().map_err(|e| e.to_string())
    }

    /// The RocketMQ ACL credentials: both keys or neither.
    pub fn rocketmq_credentials(&self) -> Result<Option<Credentials>, String> {
        Credentials::from_parts(
            self.rocketmq_access_key.as_deref(),
            self.rocketmq_secret_key.as_ref().map(Secret::expose),
        )
        .map_err(|e| format!("SB_ROCKETMQ_ACCESS_KEY / SB_ROCKETMQ_SECRET_KEY: {e}"))
    }

    /// The outbox limit of one shard (the limit is checked per shard, in the
    /// same script that appends).
    pub fn events_outbox_per_shard(&self) -> usize {
        self.events_outbox_limit
            .div_ceil(crate::backend::outbox::SHARDS as usize)
            .max(1)
    }

    /// Defaults, as if started with no flags and no environment: for tests.
    pub fn defaults() -> Self {
        Self::parse_from(["switchboard-node"])
    }
}
