//! Which backends a configuration asks for: Redis when `SB_REDIS_URL` is
//! set, memory otherwise; the RocketMQ bus when `SB_ROCKETMQ_NAMESRV` is set
//! too, memory otherwise (with Redis alone, one pod: cross-pod pushes are not
//! carried, the inbox still delivers on the next connect).

use std::sync::Arc;

use super::Backends;
use super::memory::{MemoryBus, MemoryRegistry, MemoryStore, StoreLimits};
use crate::config::{Config, Secret};

fn limits(cfg: &Config) -> StoreLimits {
    StoreLimits {
        history_limit: cfg.history_limit,
        inbox_limit: cfg.inbox_limit,
        dedup_ttl: cfg.dedup_ttl,
        dedup_limit: cfg.dedup_limit,
        max_group_members: cfg.max_group_members,
    }
}

/// In-memory backends for `cfg`.
pub fn in_memory(cfg: &Config) -> Backends {
    let store = Arc::new(MemoryStore::new(limits(cfg)));
    Backends {
        registry: Arc::new(MemoryRegistry::new()),
        store: store.clone(),
        bus: Arc::new(MemoryBus::new()),
        command_log: store,
        relay: None,
        metrics: crate::metrics::BackendMetrics::default(),
    }
}

/// The backends `cfg` names, connected. Errors name neither the Redis URL
/// nor its password.
pub async fn for_config(cfg: &Config) -> Result<Backends, String> {
    let Some(url) = &cfg.redis_url else {
        return Ok(in_memory(cfg));
    };
    let ca = match &cfg.redis_ca_file {
        Some(path) => Some(
            std::fs::read(path)
                .map_err(|e| format!("cannot read SB_REDIS_CA_FILE {}: {e}", path.display()))?,
        ),
        None => None,
    };
    let metrics = crate::metrics::BackendMetrics::default();
    let conn = super::redis::connect(url.expose(), ca, metrics.clone())
        .await
        .map_err(|e| format!("cannot connect to Redis: {}", redact(&e.to_string(), url)))?;
    let keys = super::redis::Keys::new(cfg.namespace(), &cfg.cluster_name);
    let mut store = super::redis::RedisStore::new(conn.clone(), keys.clone(), limits(cfg));
    let mut registry = super::redis::RedisRegistry::new(
        conn.clone(),
        keys.clone(),
        cfg.presence_ttl,
        cfg.heartbeat_interval,
    );
    let (bus, relay): (Arc<dyn super::Bus>, _) = match (&cfg.rocketmq_namesrv, &cfg.topic_prefix) {
        (Some(namesrv), Some(prefix)) => {
            let credentials = cfg.rocketmq_credentials()?;
            let bus = super::rocketmq::RocketMqBus::start(
                namesrv,
                prefix,
                credentials.clone(),
                metrics.clone(),
            )
            .await
            .map_err(|e| format!("cannot start the RocketMQ producer: {e}"))?;
            let relay = if cfg.events || cfg.cluster_events {
                store = store.with_outbox(cfg.events_outbox_per_shard(), &cfg.pod_name);
                registry = registry.with_outbox();
                let outbox =
                    super::outbox::RedisOutbox::new(conn.clone(), keys.clone(), &cfg.pod_name);
                let streams = crate::events::Streams {
                    events: cfg.events,
                    cluster_events: cfg.cluster_events,
                };
                let relay = crate::events::relay::Relay::start(
                    outbox,
                    namesrv,
                    prefix,
                    credentials,
                    streams,
                )
                .await
                .map_err(|e| format!("cannot start the event relay's producer: {e}"))?;
                Some(Arc::new(relay) as Arc<dyn super::OutboxRelay>)
            } else {
                None
            };
            (Arc::new(bus), relay)
        }
        _ => (Arc::new(MemoryBus::new()), None),
    };
    let store = Arc::new(store);
    Ok(Backends {
        registry: Arc::new(registry),
        store: store.clone(),
        bus,
        command_log: store,
        relay,
        metrics,
    })
}

/// `text` with the Redis URL and its password cut out, should an error
/// message of the client ever quote them.
fn redact(text: &str, url: &Secret) -> String {
    let mut out = text.replace(url.expose(), "[redacted]");
    if let Some(password) = url
        .expose()
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .and_then(|(auth, _)| auth.rsplit_once(':').map(|(_, p)| p))
        .filter(|p| !p.is_empty())
    {
        out = out.replace(password, "[redacted]");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_cuts_the_url_and_the_password() {
        let url = Secret::from("rediss://:hunter2@redis:6380/0");
        let text = "failed to reach rediss://:hunter2@redis:6380/0 (auth hunter2)";
        assert_eq!(
            redact(text, &url),
            "failed to reach [redacted] (auth [redacted])"
        );
    }
}
