//! The node configuration: the ConfigMap every pod reads with `envFrom`, and the
//! per-pod and secret environment of the container (DESIGN.md, "Operator -> node
//! contract").

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ConfigMap, EnvVar, EnvVarSource, ObjectFieldSelector, SecretKeySelector,
};

use super::meta;
use crate::crd::{ChatCluster, SecretKeyRef};
use crate::validate::Resolved;

/// Pod template annotation with a hash of the ConfigMap: a configuration change rolls
/// the pods, which read it only at start.
pub const CONFIG_HASH_ANNOTATION: &str = "switchboard.dev/config-hash";

/// The node settings, as `SB_*` environment variables (see `switchboard-node --help`).
pub fn node_config(cc: &ChatCluster, r: &Resolved) -> BTreeMap<String, String> {
    let s = &cc.spec;
    let mut m = BTreeMap::new();
    let mut put = |k: &str, v: String| {
        m.insert(k.to_owned(), v);
    };
    put("SB_LISTEN", format!("0.0.0.0:{}", super::HTTP_PORT));
    put("SB_LOG_FORMAT", "json".into());
    put("SB_CLUSTER_NAME", r.name.clone());
    put("SB_TOPIC_PREFIX", r.topic_prefix.clone());
    put("SB_ROCKETMQ_NAMESRV", s.rocketmq.name_server.clone());
    put(
        "SB_HEARTBEAT_INTERVAL",
        s.presence.heartbeat_interval.clone(),
    );
    put("SB_PRESENCE_TTL", s.presence.ttl.clone());
    put("SB_DRAIN_TIMEOUT", s.drain_timeout.clone());
    put(
        "SB_TERMINATION_GRACE",
        format!("{}s", s.termination_grace_period_seconds),
    );
    put(
        "SB_MAX_CONTENT_BYTES",
        s.limits.max_content_bytes.to_string(),
    );
    put("SB_MAX_FRAME_BYTES", s.limits.max_frame_bytes.to_string());
    put("SB_RATE_LIMIT", s.limits.rate_limit.to_string());
    put("SB_RATE_BURST", s.limits.rate_burst.to_string());
    put("SB_MAX_CONNECTIONS", s.limits.max_connections.to_string());
    put("SB_HISTORY_LIMIT", s.limits.history_limit.to_string());
    put("SB_INBOX_LIMIT", s.limits.inbox_limit.to_string());
    put(
        "SB_MAX_GROUP_MEMBERS",
        s.limits.max_group_members.to_string(),
    );
    put("SB_RECALL_WINDOW", s.recall_window.clone());
    put("SB_EVENTS", s.event_streams.events.to_string());
    put(
        "SB_CLUSTER_EVENTS",
        s.event_streams.cluster_events.to_string(),
    );
    put(
        "SB_EVENTS_OUTBOX_LIMIT",
        s.event_streams.outbox_limit.to_string(),
    );
    let c = &s.commands;
    put("SB_COMMANDS", c.enabled.to_string());
    put("SB_COMMAND_RETRIES", c.retries.to_string());
    put("SB_COMMAND_RETRY_INITIAL", c.retry_initial.clone());
    put(
        "SB_COMMAND_RETRY_MULTIPLIER",
        c.retry_multiplier.to_string(),
    );
    put("SB_COMMAND_RETRY_MAX", c.retry_max.clone());
    put("SB_COMMAND_REDELIVERIES", c.redeliveries.to_string());
    put("SB_COMMAND_DEDUP_TTL", c.dedup_ttl.clone());
    put("SB_REQUESTS", s.requests.enabled.to_string());
    let moderation = &s.moderation;
    if moderation.words.is_some() {
        put(
            "SB_MODERATION_WORDS_FILE",
            super::statefulset::MODERATION_WORDS_FILE.to_owned(),
        );
    }
    put(
        "SB_MODERATION_WORDS_ACTION",
        moderation.words_action.as_env().to_owned(),
    );
    if let Some(w) = &moderation.webhook {
        put("SB_MODERATION_WEBHOOK_URL", w.url.clone());
        put("SB_MODERATION_WEBHOOK_TIMEOUT", w.timeout.clone());
        put("SB_MODERATION_FAIL_OPEN", w.fail_open.to_string());
    }
    put("SB_REQUEST_TIMEOUT", s.requests.timeout.clone());
    // Only with an endpoint: an operator upgrade must not roll clusters that do not trace.
    if let Some(endpoint) = &s.tracing.endpoint {
        put("SB_OTLP_ENDPOINT", endpoint.clone());
        put("SB_TRACE_SAMPLE_RATIO", s.tracing.sample_ratio.clone());
    }
    if let Some(url) = &s.redis.url {
        put("SB_REDIS_URL", url.clone());
    }
    if s.redis.ca_secret_ref.is_some() {
        put(
            "SB_REDIS_CA_FILE",
            super::statefulset::REDIS_CA_FILE.to_owned(),
        );
    }
    m
}

pub(super) fn config_map(cc: &ChatCluster, r: &Resolved) -> ConfigMap {
    ConfigMap {
        metadata: meta(cc, r, super::names::config_map(&r.name), "config"),
        data: Some(node_config(cc, r)),
        ..ConfigMap::default()
    }
}

/// A stable hash of the ConfigMap's data (FNV-1a over sorted keys and values).
pub(super) fn hash(cm: &ConfigMap) -> String {
    let mut bytes = Vec::new();
    for (k, v) in cm.data.iter().flatten() {
        bytes.extend(k.bytes().chain([0]).chain(v.bytes()).chain([0]));
    }
    format!("{:016x}", switchboard_rocketmq::names::fnv1a64(&bytes))
}

/// The container's own environment: pod identity from the downward API and the secrets.
/// Everything else comes from the ConfigMap.
pub(super) fn env(cc: &ChatCluster) -> Vec<EnvVar> {
    let s = &cc.spec;
    let mut env = vec![
        field("POD_NAME", "metadata.name"),
        field("POD_NAMESPACE", "metadata.namespace"),
    ];
    if let Some(r) = &s.redis.url_secret_ref {
        env.push(secret("SB_REDIS_URL", r));
    }
    env.push(secret("SB_JWT_SECRET", &s.auth.jwt_secret_ref));
    if let Some(r) = &s.auth.admin_token_secret_ref {
        env.push(secret("SB_ADMIN_TOKEN", r));
    }
    if let Some(r) = &s.rocketmq.access_key_secret_ref {
        env.push(secret("SB_ROCKETMQ_ACCESS_KEY", r));
    }
    if let Some(r) = &s.rocketmq.secret_key_secret_ref {
        env.push(secret("SB_ROCKETMQ_SECRET_KEY", r));
    }
    env
}

fn field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                api_version: Some("v1".into()),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn secret(name: &str, r: &SecretKeyRef) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: r.name.clone(),
                key: r.key.clone(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::validate::{tests::sample, validate};

    #[test]
    fn config_carries_the_contract() {
        let cc = sample();
        let c = node_config(&cc, &validate(&cc, "n").unwrap());
        assert_eq!(c["SB_TOPIC_PREFIX"], "prod__chat");
        assert_eq!(c["SB_CLUSTER_NAME"], "chat");
        assert_eq!(c["SB_ROCKETMQ_NAMESRV"], "mq:9876");
        assert_eq!(c["SB_REDIS_URL"], "redis://redis:6379");
        assert!(!c.contains_key("SB_DEV_AUTH"), "dev auth is never rendered");
        assert_eq!(
            (
                c["SB_RECALL_WINDOW"].as_str(),
                c["SB_EVENTS"].as_str(),
                c["SB_CLUSTER_EVENTS"].as_str(),
                c["SB_EVENTS_OUTBOX_LIMIT"].as_str()
            ),
            ("2m", "true", "true", "160000"),
            "the defaults are the node's own"
        );
        assert!(
            !c.contains_key("SB_JWT_SECRET"),
            "secrets stay out of the ConfigMap"
        );
    }

    #[test]
    fn event_streams_and_recall_window_are_rendered() {
        let mut cc = sample();
        cc.spec.recall_window = "0s".into();
        cc.spec.event_streams.cluster_events = false;
        cc.spec.event_streams.outbox_limit = 32;
        let c = node_config(&cc, &validate(&cc, "n").unwrap());
        assert_eq!(c["SB_RECALL_WINDOW"], "0s");
        assert_eq!(c["SB_EVENTS"], "true");
        assert_eq!(c["SB_CLUSTER_EVENTS"], "false");
        assert_eq!(c["SB_EVENTS_OUTBOX_LIMIT"], "32");
        cc.spec.recall_window = "soon".into();
        let e = validate(&cc, "n").unwrap_err();
        assert_eq!(e.field, "spec.recallWindow");
    }

    #[test]
    fn the_command_policy_is_rendered_and_checked_by_the_node_rules() {
        let mut cc = sample();
        cc.spec.commands.retries = 5;
        cc.spec.commands.redeliveries = 0;
        let c = node_config(&cc, &validate(&cc, "n").unwrap());
        assert_eq!(c["SB_COMMANDS"], "true");
        assert_eq!(c["SB_COMMAND_RETRIES"], "5");
        assert_eq!(c["SB_COMMAND_RETRY_INITIAL"], "100ms");
        assert_eq!(c["SB_COMMAND_RETRY_MULTIPLIER"], "2");
        assert_eq!(c["SB_COMMAND_REDELIVERIES"], "0");
        assert_eq!(c["SB_COMMAND_DEDUP_TTL"], "72h");
        assert_eq!(c["SB_REQUESTS"], "true");
        assert_eq!(c["SB_REQUEST_TIMEOUT"], "10s");
        // 10 s, 10 s, 10 s: more than the 20 s the node allows.
        cc.spec.commands.retries = 3;
        cc.spec.commands.retry_initial = "10s".into();
        let e = validate(&cc, "n").unwrap_err();
        assert_eq!(e.field, "spec.commands.retries");
        cc.spec.commands.retry_initial = "100ms".into();
        cc.spec.commands.dedup_ttl = "10m".into();
        let e = validate(&cc, "n").unwrap_err();
        assert_eq!(e.field, "spec.commands.dedupTtl");
        cc.spec.commands.dedup_ttl = "72h".into();
        cc.spec.requests.timeout = "10m".into();
        let e = validate(&cc, "n").unwrap_err();
        assert_eq!(e.field, "spec.requests.timeout");
    }

    #[test]
    fn secrets_come_from_secret_refs_and_identity_from_the_downward_api() {
        let mut cc = sample();
        cc.spec.redis.url = None;
        cc.spec.redis.url_secret_ref = Some(SecretKeyRef {
            name: "redis".into(),
            key: "url".into(),
        });
        let env = env(&cc);
        let names: Vec<_> = env.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            ["POD_NAME", "POD_NAMESPACE", "SB_REDIS_URL", "SB_JWT_SECRET"]
        );
        let jwt = env[3]
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!((jwt.name.as_str(), jwt.key.as_str()), ("jwt", "secret"));
        assert!(!node_config(&cc, &validate(&cc, "n").unwrap()).contains_key("SB_REDIS_URL"));
    }

    #[test]
    fn rocketmq_credentials_come_from_their_secret_refs() {
        let mut cc = sample();
        let r = |key: &str| SecretKeyRef {
            name: "rmq".into(),
            key: key.into(),
        };
        cc.spec.rocketmq.access_key_secret_ref = Some(r("accessKey"));
        cc.spec.rocketmq.secret_key_secret_ref = Some(r("secretKey"));
        let env = env(&cc);
        let from = |name: &str| {
            let e = env.iter().find(|e| e.name == name).unwrap();
            let s = e
                .value_from
                .as_ref()
                .unwrap()
                .secret_key_ref
                .as_ref()
                .unwrap();
            (s.name.clone(), s.key.clone(), e.value.clone())
        };
        assert_eq!(
            from("SB_ROCKETMQ_ACCESS_KEY"),
            ("rmq".into(), "accessKey".into(), None)
        );
        assert_eq!(
            from("SB_ROCKETMQ_SECRET_KEY"),
            ("rmq".into(), "secretKey".into(), None)
        );
        let config = node_config(&cc, &validate(&cc, "n").unwrap());
        assert!(
            config
                .keys()
                .all(|k| !k.starts_with("SB_ROCKETMQ_") || k.ends_with("NAMESRV")),
            "{config:?}"
        );
    }

    #[test]
    fn config_hash_changes_with_the_config_only() {
        let cc = sample();
        let r = validate(&cc, "n").unwrap();
        let a = hash(&config_map(&cc, &r));
        assert_eq!(a, hash(&config_map(&cc, &r)));
        let mut cc2 = cc.clone();
        cc2.spec.limits.rate_limit = 5;
        assert_ne!(a, hash(&config_map(&cc2, &r)));
    }
}
