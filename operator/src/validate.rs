//! Checks of a `ChatCluster` spec that the apiserver's schema cannot make, and the
//! resolved values the builders use. A failure here is permanent: the operator sets the
//! `Degraded` condition with reason `InvalidSpec` and waits for the spec to change.

use std::time::Duration;

use switchboard_settings::NodeSettings;

use crate::crd::ChatCluster;

/// Longest ChatCluster name: the StatefulSet controller puts `<name>-<hash>` (11 more
/// characters) into a pod label, which allows 63.
pub const MAX_NAME_LEN: usize = 52;
/// Pause in the pod's preStop hook before SIGTERM, so endpoints stop sending new clients.
pub use switchboard_settings::PRE_STOP_PAUSE;

/// The node's outbound buffer: not part of the spec, the node's default.
const NODE_OUTBOUND_BUFFER: u64 = 512;

/// A spec the operator refuses, with a message for the condition and the event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    pub field: &'static str,
    pub message: String,
}

fn invalid(field: &'static str, message: impl Into<String>) -> Invalid {
    Invalid {
        field,
        message: message.into(),
    }
}

/// What the builders need beyond the spec: values the operator fills in or parses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub name: String,
    pub namespace: String,
    pub image: String,
    pub drain_timeout: Duration,
    pub heartbeat_interval: Duration,
    pub presence_ttl: Duration,
    /// `PREFIX` of every RocketMQ topic and group of the cluster.
    pub topic_prefix: String,
}

/// Checks `cc` and resolves what the builders need. `default_image` is the operator's node
/// image, used when the spec names none.
pub fn validate(cc: &ChatCluster, default_image: &str) -> Result<Resolved, Invalid> {
    let name = cc
        .metadata
        .name
        .clone()
        .ok_or_else(|| invalid("metadata.name", "missing"))?;
    let namespace = cc
        .metadata
        .namespace
        .clone()
        .ok_or_else(|| invalid("metadata.namespace", "missing"))?;
    if name.len() > MAX_NAME_LEN {
        return Err(invalid(
            "metadata.name",
            format!(
                "{} characters; at most {MAX_NAME_LEN} (pod labels carry the name plus a hash)",
                name.len()
            ),
        ));
    }
    let spec = &cc.spec;
    let image = match spec.image.as_deref() {
        Some(i) if !i.trim().is_empty() => i.to_owned(),
        Some(_) => return Err(invalid("spec.image", "empty")),
        None if default_image.is_empty() => {
            return Err(invalid(
                "spec.image",
                "not set and the operator has no default node image (--node-image)",
            ));
        }
        None => default_image.to_owned(),
    };
    let drain_timeout = duration("spec.drainTimeout", &spec.drain_timeout)?;
    let heartbeat_interval = duration(
        "spec.presence.heartbeatInterval",
        &spec.presence.heartbeat_interval,
    )?;
    let presence_ttl = duration("spec.presence.ttl", &spec.presence.ttl)?;
    // Zero is allowed: senders cannot recall then.
    humantime::parse_duration(&spec.recall_window).map_err(|e| {
        invalid(
            "spec.recallWindow",
            format!("{:?} is not a duration: {e}", spec.recall_window),
        )
    })?;
    let grace =
        Duration::from_secs(u64::try_from(spec.termination_grace_period_seconds).unwrap_or(0));
    // The node's own rules, so a spec accepted here never gives a pod that refuses to start.
    let l = &spec.limits;
    let settings = NodeSettings {
        heartbeat_interval,
        presence_ttl,
        drain_timeout,
        termination_grace: Some(grace),
        max_content_bytes: l.max_content_bytes.into(),
        max_frame_bytes: l.max_frame_bytes.into(),
        rate_limit: l.rate_limit.into(),
        rate_burst: l.rate_burst.into(),
        max_connections: l.max_connections.into(),
        history_limit: l.history_limit.into(),
        inbox_limit: l.inbox_limit.into(),
        max_group_members: l.max_group_members.into(),
        outbound_buffer: NODE_OUTBOUND_BUFFER,
    };
    if let Err(v) = settings.check() {
        let (field, message) = v.for_spec();
        return Err(invalid(field, message));
    }
    command_retry(&spec.commands)?
        .check()
        .map_err(|v| invalid(v.spec_field, v.message))?;
    // The node's rule (SB_REQUEST_TIMEOUT).
    let timeout = duration("spec.requests.timeout", &spec.requests.timeout)?;
    switchboard_settings::commands::check_request_timeout(timeout)
        .map_err(|m| invalid("spec.requests.timeout", m))?;
    if let Some(w) = &spec.moderation.webhook {
        let field = "spec.moderation.webhook.timeout";
        switchboard_settings::commands::check_webhook_timeout(duration(field, &w.timeout)?)
            .map_err(|m| invalid(field, m))?;
        switchboard_settings::commands::check_webhook_url(&w.url)
            .map_err(|m| invalid("spec.moderation.webhook.url", m))?;
    }
    if let Some(endpoint) = &spec.tracing.endpoint {
        switchboard_settings::telemetry::check_otlp_endpoint(endpoint)
            .map_err(|m| invalid("spec.tracing.endpoint", m))?;
    }
    // The node's rule (SB_TRACE_SAMPLE_RATIO), on the number it will parse.
    let ratio = spec.tracing.sample_ratio.parse::<f64>().unwrap_or(f64::NAN);
    switchboard_settings::telemetry::check_sample_ratio(ratio)
        .map_err(|m| invalid("spec.tracing.sampleRatio", m))?;
    if spec.rocketmq.name_server.trim().is_empty() {
        return Err(invalid("spec.rocketmq.nameServer", "empty"));
    }
    match (&spec.redis.url, &spec.redis.url_secret_ref) {
        (Some(_), None) | (None, Some(_)) => {}
        _ => {
            return Err(invalid(
                "spec.redis",
                "set exactly one of url and urlSecretRef",
            ));
        }
    }
    let topic_prefix = switchboard_rocketmq::names::prefix(&namespace, &name);
    Ok(Resolved {
        name,
        namespace,
        image,
        drain_timeout,
        heartbeat_interval,
        presence_ttl,
        topic_prefix,
    })
}

/// The commands' retry policy, checked by the node's own rules.
fn command_retry(
    c: &crate::crd::CommandsSpec,
) -> Result<switchboard_settings::commands::CommandRetry, Invalid> {
    // Zero passes here; the rules judge it.
    let d = |field: &'static str, v: &str| {
        humantime::parse_duration(v)
            .map_err(|e| invalid(field, format!("{v:?} is not a duration: {e}")))
    };
    Ok(switchboard_settings::commands::CommandRetry {
        retries: c.retries,
        initial: d("spec.commands.retryInitial", &c.retry_initial)?,
        multiplier: f64::from(c.retry_multiplier),
        max: d("spec.commands.retryMax", &c.retry_max)?,
        redeliveries: c.redeliveries,
        dedup_ttl: d("spec.commands.dedupTtl", &c.dedup_ttl)?,
    })
}

fn duration(field: &'static str, value: &str) -> Result<Duration, Invalid> {
    let d = humantime::parse_duration(value)
        .map_err(|e| invalid(field, format!("{value:?} is not a duration: {e}")))?;
    if d.is_zero() {
        return Err(invalid(field, "must be more than zero"));
    }
    Ok(d)
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::crd::ChatCluster;

    pub(crate) fn sample() -> ChatCluster {
        let mut cc: ChatCluster = serde_json::from_value(serde_json::json!({
            "apiVersion": "switchboard.dev/v1alpha1",
            "kind": "ChatCluster",
            "metadata": {"name": "chat", "namespace": "prod", "uid": "u-1", "generation": 2},
            "spec": {
                "redis": {"url": "redis://redis:6379"},
                "rocketmq": {"nameServer": "mq:9876"},
                "auth": {"jwtSecretRef": {"name": "jwt", "key": "secret"}}
            }
        }))
        .expect("sample parses");
        cc.status = None;
        cc
    }

    #[test]
    fn defaults_fill_in_a_minimal_spec() {
        let r = validate(&sample(), "node:1").unwrap();
        assert_eq!(r.image, "node:1");
        assert_eq!(r.topic_prefix, "prod__chat");
        assert_eq!(r.drain_timeout, Duration::from_secs(20));
        assert_eq!(r.presence_ttl, Duration::from_secs(300));
    }

    #[test]
    fn refuses_what_the_schema_lets_through() {
        let mut cc = sample();
        cc.spec.image = Some(" ".into());
        assert_eq!(validate(&cc, "x").unwrap_err().field, "spec.image");

        let cc = sample();
        assert_eq!(validate(&cc, "").unwrap_err().field, "spec.image");

        let mut cc = sample();
        cc.spec.drain_timeout = "25s".into();
        assert_eq!(validate(&cc, "x").unwrap_err().field, "spec.drainTimeout");

        let mut cc = sample();
        cc.spec.presence.heartbeat_interval = "10m".into();
        let e = validate(&cc, "x").unwrap_err();
        assert_eq!(e.field, "spec.presence.heartbeatInterval");

        let mut cc = sample();
        cc.spec.presence.ttl = "soon".into();
        assert!(
            validate(&cc, "x")
                .unwrap_err()
                .message
                .contains("not a duration")
        );

        let mut cc = sample();
        cc.metadata.name = Some("n".repeat(53));
        assert_eq!(validate(&cc, "x").unwrap_err().field, "metadata.name");

        let mut cc = sample();
        cc.spec.redis.url_secret_ref = Some(crate::crd::SecretKeyRef {
            name: "r".into(),
            key: "url".into(),
        });
        assert_eq!(validate(&cc, "x").unwrap_err().field, "spec.redis");
    }
}
