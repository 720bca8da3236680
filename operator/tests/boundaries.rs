//! One validation: every bound of a node setting, walked on both sides, gets
//! the same verdict from the cluster (the real apiserver's schema and CEL
//! rules, then the operator's checks) and from the node (the configuration the
//! operator renders, parsed and checked as the node does at start). A spec the
//! cluster accepts can then never give a pod that refuses to start, and the
//! rules cannot drift apart again.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use clap::Parser;
use kube::api::PostParams;
use serde_json::{Value, json};
use support::Env;
use switchboard_operator::crd::ChatCluster;
use switchboard_operator::validate::{Resolved, validate};

/// (what, spec changes that must pass, spec changes that must be refused).
fn cases() -> Vec<(&'static str, Value, Value)> {
    let limits = |v: Value| json!({ "limits": v });
    vec![
        (
            "content below the frame",
            limits(json!({"maxContentBytes": 65535})),
            limits(json!({"maxContentBytes": 65536})),
        ),
        (
            "content at least 1",
            limits(json!({"maxContentBytes": 1})),
            limits(json!({"maxContentBytes": 0})),
        ),
        (
            "content at most 1 MiB",
            limits(json!({"maxContentBytes": 1_048_576, "maxFrameBytes": 2_097_152})),
            limits(json!({"maxContentBytes": 1_048_577, "maxFrameBytes": 2_097_152})),
        ),
        (
            "frame at least 256",
            limits(json!({"maxContentBytes": 100, "maxFrameBytes": 256})),
            limits(json!({"maxContentBytes": 100, "maxFrameBytes": 255})),
        ),
        (
            "frame at most 16 MiB",
            limits(json!({"maxFrameBytes": 16_777_216})),
            limits(json!({"maxFrameBytes": 16_777_217})),
        ),
        (
            "rate at least 1",
            limits(json!({"rateLimit": 1})),
            limits(json!({"rateLimit": 0})),
        ),
        (
            "rate at most 100000",
            limits(json!({"rateLimit": 100_000, "rateBurst": 100_000})),
            limits(json!({"rateLimit": 100_001, "rateBurst": 100_001})),
        ),
        (
            "burst at least the rate",
            limits(json!({"rateLimit": 30, "rateBurst": 30})),
            limits(json!({"rateLimit": 30, "rateBurst": 29})),
        ),
        (
            "connections at least 1",
            limits(json!({"maxConnections": 1})),
            limits(json!({"maxConnections": 0})),
        ),
        (
            "connections at most 10M",
            limits(json!({"maxConnections": 10_000_000})),
            limits(json!({"maxConnections": 10_000_001})),
        ),
        (
            "history at least 1",
            limits(json!({"historyLimit": 1})),
            limits(json!({"historyLimit": 0})),
        ),
        (
            "history at most 1M",
            limits(json!({"historyLimit": 1_000_000})),
            limits(json!({"historyLimit": 1_000_001})),
        ),
        (
            "inbox at least 1",
            limits(json!({"inboxLimit": 1})),
            limits(json!({"inboxLimit": 0})),
        ),
        (
            "inbox at most 1M",
            limits(json!({"inboxLimit": 1_000_000})),
            limits(json!({"inboxLimit": 1_000_001})),
        ),
        (
            "groups of at least 2",
            limits(json!({"maxGroupMembers": 2})),
            limits(json!({"maxGroupMembers": 1})),
        ),
        (
            "groups of at most 100000",
            limits(json!({"maxGroupMembers": 100_000})),
            limits(json!({"maxGroupMembers": 100_001})),
        ),
        (
            "heartbeat at least 1s",
            json!({"presence": {"heartbeatInterval": "1s", "ttl": "5m"}}),
            json!({"presence": {"heartbeatInterval": "999ms", "ttl": "5m"}}),
        ),
        (
            "heartbeat shorter than the ttl",
            json!({"presence": {"heartbeatInterval": "299s", "ttl": "5m"}}),
            json!({"presence": {"heartbeatInterval": "300s", "ttl": "5m"}}),
        ),
        (
            "drain and its budgets fit the grace period",
            json!({"drainTimeout": "24s", "terminationGracePeriodSeconds": 40}),
            json!({"drainTimeout": "25s", "terminationGracePeriodSeconds": 40}),
        ),
        (
            "grace period longer than the shutdown",
            json!({"drainTimeout": "1s", "terminationGracePeriodSeconds": 17}),
            json!({"drainTimeout": "1s", "terminationGracePeriodSeconds": 16}),
        ),
        (
            "grace period at most an hour",
            json!({"drainTimeout": "1s", "terminationGracePeriodSeconds": 3600}),
            json!({"drainTimeout": "1s", "terminationGracePeriodSeconds": 3601}),
        ),
        (
            "drain more than zero",
            json!({"drainTimeout": "1ms"}),
            json!({"drainTimeout": "0s"}),
        ),
        (
            "recall window zero or more, a duration",
            json!({"recallWindow": "0s"}),
            json!({"recallWindow": "soon"}),
        ),
        (
            "outbox of at least one entry per shard",
            json!({"eventStreams": {"outboxLimit": 16}}),
            json!({"eventStreams": {"outboxLimit": 15}}),
        ),
        (
            "command retries at most 10",
            json!({"commands": {"retries": 10, "retryInitial": "1ms", "retryMax": "1s"}}),
            json!({"commands": {"retries": 11, "retryInitial": "1ms", "retryMax": "1s"}}),
        ),
        (
            "retry multiplier at least 1",
            json!({"commands": {"retryMultiplier": 1}}),
            json!({"commands": {"retryMultiplier": 0}}),
        ),
        (
            "retry multiplier at most 10",
            json!({"commands": {"retryMultiplier": 10}}),
            json!({"commands": {"retryMultiplier": 11}}),
        ),
        (
            "longest retry wait at most 20s",
            json!({"commands": {"retries": 1, "retryMax": "20s"}}),
            json!({"commands": {"retries": 1, "retryMax": "21s"}}),
        ),
        (
            "first retry wait at most the longest",
            json!({"commands": {"retries": 1, "retryInitial": "10s", "retryMax": "10s"}}),
            json!({"commands": {"retries": 1, "retryInitial": "11s", "retryMax": "10s"}}),
        ),
        (
            "retries wait at most 20s in all",
            json!({"commands": {"retries": 2, "retryInitial": "10s", "retryMax": "10s"}}),
            json!({"commands": {"retries": 3, "retryInitial": "10s", "retryMax": "10s"}}),
        ),
        (
            "redeliveries at most 16",
            json!({"commands": {"redeliveries": 16}}),
            json!({"commands": {"redeliveries": 17}}),
        ),
        (
            "applied commands remembered at least 1h",
            json!({"commands": {"dedupTtl": "1h"}}),
            json!({"commands": {"dedupTtl": "59m"}}),
        ),
        (
            "request timeout at least 1s",
            json!({"requests": {"timeout": "1s"}}),
            json!({"requests": {"timeout": "999ms"}}),
        ),
        (
            "request timeout at most 5m",
            json!({"requests": {"timeout": "5m"}}),
            json!({"requests": {"timeout": "301s"}}),
        ),
        (
            "webhook timeout at least 10ms",
            json!({"moderation": {"webhook": {"url": "http://mod/check", "timeout": "10ms"}}}),
            json!({"moderation": {"webhook": {"url": "http://mod/check", "timeout": "9ms"}}}),
        ),
        (
            "webhook timeout at most 10s",
            json!({"moderation": {"webhook": {"url": "http://mod/check", "timeout": "10s"}}}),
            json!({"moderation": {"webhook": {"url": "http://mod/check", "timeout": "11s"}}}),
        ),
        (
            "webhook port a number",
            json!({"moderation": {"webhook": {"url": "http://mod:8080/check"}}}),
            json!({"moderation": {"webhook": {"url": "http://mod:port/check"}}}),
        ),
        (
            "webhook over plain http",
            json!({"moderation": {"webhook": {"url": "http://mod:8080/check"}}}),
            json!({"moderation": {"webhook": {"url": "https://mod:8080/check"}}}),
        ),
        (
            "trace endpoint over plain http",
            json!({"tracing": {"endpoint": "http://otel-collector:4318"}}),
            json!({"tracing": {"endpoint": "https://otel-collector:4318"}}),
        ),
        (
            "trace endpoint port a number",
            json!({"tracing": {"endpoint": "http://otel-collector:4318"}}),
            json!({"tracing": {"endpoint": "http://otel-collector:otlp"}}),
        ),
        (
            "sample ratio at most 1",
            json!({"tracing": {"endpoint": "http://c:4318", "sampleRatio": "1"}}),
            json!({"tracing": {"endpoint": "http://c:4318", "sampleRatio": "1.01"}}),
        ),
        (
            "sample ratio at least 0",
            json!({"tracing": {"endpoint": "http://c:4318", "sampleRatio": "0"}}),
            json!({"tracing": {"endpoint": "http://c:4318", "sampleRatio": "-0.1"}}),
        ),
        (
            "outbox at most 100M",
            json!({"eventStreams": {"outboxLimit": 100_000_000}}),
            json!({"eventStreams": {"outboxLimit": 100_000_001}}),
        ),
    ]
}

/// `base` with `changes` merged into its spec (objects merge, values replace).
fn with_spec(base: &ChatCluster, changes: &Value) -> Value {
    fn merge(into: &mut Value, from: &Value) {
        match (into, from) {
            (Value::Object(a), Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
            (slot, v) => *slot = v.clone(),
        }
    }
    let mut v = serde_json::to_value(base).unwrap();
    merge(&mut v["spec"], changes);
    v
}

/// The node's verdict on the configuration the operator renders for `cc`
/// (the ConfigMap plus the secrets the kubelet would resolve).
fn node_verdict(cc: &ChatCluster) -> Result<(), String> {
    let parse = |s: &str| humantime::parse_duration(s).unwrap_or(Duration::ZERO);
    let resolved = Resolved {
        name: "bounds".into(),
        namespace: "ns".into(),
        image: "node".into(),
        drain_timeout: parse(&cc.spec.drain_timeout),
        heartbeat_interval: parse(&cc.spec.presence.heartbeat_interval),
        presence_ttl: parse(&cc.spec.presence.ttl),
        topic_prefix: "ns__bounds".into(),
    };
    let mut args = vec!["switchboard-node".to_owned()];
    for (k, v) in switchboard_operator::build::node_config(cc, &resolved) {
        // SB_MAX_CONTENT_BYTES -> --max-content-bytes: every SB_* variable of
        // the node is its flag's name.
        let flag = k
            .strip_prefix("SB_")
            .unwrap()
            .to_lowercase()
            .replace('_', "-");
        args.push(format!("--{flag}={v}"));
    }
    args.push(format!("--jwt-secret={}", switchboard_e2e::SECRET));
    let cfg = switchboard_node::Config::try_parse_from(&args).map_err(|e| e.to_string())?;
    cfg.validate()
}

/// The cluster's verdict: the apiserver (server-side dry run, so nothing is
/// stored), then the operator's own checks.
async fn cluster_verdict(env: &Env, ns: &str, object: &Value) -> Result<(), String> {
    let cc: ChatCluster = serde_json::from_value(object.clone()).map_err(|e| e.to_string())?;
    let dry_run = PostParams {
        dry_run: true,
        field_manager: None,
    };
    env.clusters(ns)
        .create(&dry_run, &cc)
        .await
        .map_err(|e| format!("apiserver: {e}"))?;
    let mut stored = cc;
    stored.metadata.namespace = Some(ns.into());
    validate(&stored, "node:test")
        .map(drop)
        .map_err(|e| format!("operator: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bound_gets_the_same_verdict_from_the_cluster_and_the_node() {
    let env = Env::start().await;
    let ns = env.cp.namespace("bounds").await.unwrap();
    let mut base: ChatCluster = serde_saphyr::from_str(&env.example("bounds")).unwrap();
    base.metadata.namespace = Some(ns.clone());
    // The example itself is on the good side of every rule.
    assert_eq!(node_verdict(&base), Ok(()));
    assert_eq!(
        cluster_verdict(&env, &ns, &with_spec(&base, &json!({}))).await,
        Ok(())
    );

    let mut failures = Vec::new();
    for (what, good, bad) in cases() {
        for (side, changes, expect_ok) in [("valid", &good, true), ("invalid", &bad, false)] {
            let object = with_spec(&base, changes);
            let cluster = cluster_verdict(&env, &ns, &object).await;
            let cc: ChatCluster = serde_json::from_value(object).unwrap();
            let node = node_verdict(&cc);
            eprintln!("{what} ({side}): cluster {cluster:?}, node {node:?}");
            if cluster.is_ok() != expect_ok || node.is_ok() != expect_ok {
                failures.push(format!(
                    "{what}, {side} side {changes}: cluster {cluster:?}, node {node:?}"
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "verdicts differ:\n{}",
        failures.join("\n")
    );
}
