//! Redis backends: the presence/routing registry and the message store.
//!
//! Every key of one cluster starts with `sb:{<namespace>/<name>}:`. The braces
//! are a Redis Cluster hash tag: all of one cluster's keys hash to one slot,
//! which is what lets the Lua scripts below touch a conversation, several
//! inboxes and a dedup key atomically on Redis Cluster too (at the price of
//! one cluster's data living on one shard). See `docs/operations.md`.
//!
//! Layout (`K` = the prefix):
//! - `Kpods` set of pod names; `Kpod:<pod>` hash {conns, started, seen}, TTL
//!   3 x heartbeat: a pod whose key expired is dead.
//! - `Kconns:<user>` hash conn id -> pod, TTL = presence TTL, refreshed by
//!   the heartbeats of the pods holding the connections.
//! - `Kpodconns:<pod>` set of `<user> <conn id>`: what to remove when the pod
//!   is found dead (or starts again under the same name).
//! - `Konline` sorted set user -> last heartbeat ms; `Klastseen` hash user -> ms.
//! - `Kseq:<conv>` counter; `Khist:<conv>` list of message JSON, capped
//!   (a recalled message's entry is replaced by its tombstone).
//! - `Kread:<conv>` hash participant -> read watermark (seq).
//! - `Korder` counter: global insertion order of inbox entries.
//! - `Kmsg:<id>` hash {b: JSON, r: inbox references, f: sender (whose pods
//!   the ack script looks up for `delivered`), s: outbox shard stream of a
//!   1:1 message when events are on}: one body shared by all inboxes,
//!   deleted when the last recipient acks.
//! - `Kinbox:<user>` sorted set msg id -> insertion order.
//! - `Kdedup:<user>:<client_msg_id>` message JSON, TTL = dedup TTL.
//! - `Koutbox:<shard>` streams and their leases: see [`crate::backend::outbox`].
//! - `Kgroups` set of group ids; `Kgroup:<g>` set of members;
//!   `Kgroupinfo:<g>` hash {owner, title}; `Kugroups:<user>` set of the
//!   user's groups.
//! - `Kcmd:<command id>` `applied` while a command from a backend counts as
//!   applied (TTL: `SB_COMMAND_DEDUP_TTL`), or the token of the attempt
//!   holding it (TTL 15 s); `Kcmd:request:<request id>` the same claim for
//!   a request being executed.
//! - `Kreply:<request id>` the JSON answer to a request, TTL 1 h.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

mod groups;
mod registry;
mod store;
mod timed;

pub use registry::RedisRegistry;
pub use store::RedisStore;
pub use timed::Conn;

use super::{BackendError, BackendResult};
use crate::model::ChatMessage;

pub(super) fn unavailable(e: redis::RedisError) -> BackendError {
    BackendError::Unavailable(e.to_string())
}

/// Connects to Redis with a manager that reconnects by itself. Calls fail
/// fast (bounded timeouts) while Redis is away instead of hanging clients.
///
/// `rediss://` URLs use TLS, verified against the system's roots, or only
/// against `ca_pem` when given (a private CA).
pub async fn connect(
    url: &str,
    ca_pem: Option<Vec<u8>>,
    metrics: crate::metrics::BackendMetrics,
) -> Result<Conn, redis::RedisError> {
    // rustls needs one process-wide crypto provider; the dependency tree
    // offers two (ring, aws-lc-rs), so pick one. Already installed: fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = match ca_pem {
        Some(pem) => redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem),
            },
        )?,
        None => redis::Client::open(url)?,
    };
    let cfg = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(2)))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(2));
    let manager = ConnectionManager::new_with_config(client, cfg).await?;
    Ok(Conn::new(manager, metrics))
}

/// Key names of one cluster.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// `namespace`/`name` identify the ChatCluster.
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            prefix: format!("sb:{{{namespace}/{name}}}:"),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

pub(super) fn parse_msg(json: &str) -> BackendResult<Arc<ChatMessage>> {
    serde_json::from_str(json)
        .map(Arc::new)
        .map_err(|e| BackendError::Unavailable(format!("corrupt message in Redis: {e}")))
}
