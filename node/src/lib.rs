//! Switchboard chat node.
//!
//! A node accepts WebSocket clients (`/ws`, protocol v1; `/ws/chat`, the seed
//! service's dialect), stores and routes their messages through three
//! backends ([`backend::Registry`], [`backend::MessageStore`],
//! [`backend::Bus`]) and serves health, metrics, presence and a groups admin
//! API over HTTP. [`run`] serves on a listener until a shutdown future
//! resolves, then drains.

// The RocketMQ client's futures nest deeply; checking they are Send needs room.
#![recursion_limit = "512"]

pub mod api_error;
pub mod auth;
pub mod backend;
pub mod commands;
pub mod config;
pub mod conversation;
mod drain;
pub mod events;
pub mod groups;
pub mod history;
pub mod http;
pub mod hub;
pub mod ids;
pub mod intake;
pub mod metrics;
pub mod model;
pub mod moderation;
pub mod node;
pub mod protocol;
pub mod readiness;
pub mod recall;
pub mod receipts;
pub mod requests;
pub mod router;
pub mod secret;
pub mod sending;
mod sendq;
mod serve;
pub mod telemetry;
pub use serve::bind;
mod ws;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

pub use config::Config;
pub use http::app;
pub use node::Node;

/// How long a stopping node waits for the event relay to finish its pass
/// after the drain (it was asked to stop when the drain began).
const RELAY_STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// How long a stopping node waits, after the drain, for its command and
/// request consumers (together) to commit and leave their groups (they were
/// asked to when the drain began).
const COMMANDS_STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves `node` on `listener` until `shutdown` resolves, then drains: the
/// node turns not-ready, tells clients to reconnect, waits up to the drain
/// timeout, closes what is left and returns.
pub async fn run(
    listener: TcpListener,
    node: Arc<Node>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Entries left by this pod's previous life (same name, crashed) are stale.
    match node.backends().registry.forget_pod(&node.pod.name).await {
        Ok(users) if !users.is_empty() => {
            tracing::info!(
                users = users.len(),
                "removed stale registry entries of this pod"
            );
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot clean this pod's old registry entries"),
    }
    let bus = tokio::spawn(node.clone().run_bus_subscription());
    let heartbeat = tokio::spawn(node.clone().run_heartbeat());
    let repush = tokio::spawn(node.router().clone().run_repush());
    let relay = node.backends().relay.clone().map(|relay| {
        node.metrics
            .events
            .outbox_shard_limit
            .set(i64::try_from(node.cfg.events_outbox_per_shard()).unwrap_or(i64::MAX));
        let task = tokio::spawn(relay.clone().run(node.metrics.events.clone()));
        (relay, task)
    });
    let rules = node
        .moderator()
        .and_then(|m| m.rules())
        .map(|r| tokio::spawn(r.watch()));
    let commands_stop = tokio_util::sync::CancellationToken::new();
    let commands = node
        .cfg
        .consumes_commands()
        .then(|| tokio::spawn(commands::consumer::run(node.clone(), commands_stop.clone())));
    let requests = node
        .cfg
        .answers_requests()
        .then(|| tokio::spawn(requests::consumer::run(node.clone(), commands_stop.clone())));
    let drainer = node.clone();
    let header_timeout = node.cfg.http_header_timeout;
    let result = serve::serve(listener, app(node), header_timeout, async move {
        shutdown.await;
        // The outbox is durable: the relay gives its shards to the other pods
        // now instead of flushing, and has finished its pass by the time the
        // drain is over.
        if let Some((relay, _)) = &relay {
            relay.stop();
        }
        // No new commands or requests while draining: the others'
        // consumers take the queues (what this one consumed is committed
        // first), alongside the drain.
        commands_stop.cancel();
        // HTTP stays up while draining, so /readyz can say 503.
        drainer.drain().await;
        let stopping = [commands, requests]
            .into_iter()
            .flatten()
            .map(|mut task| async move {
                if tokio::time::timeout(COMMANDS_STOP_WAIT, &mut task)
                    .await
                    .is_err()
                {
                    task.abort();
                }
            });
        futures_util::future::join_all(stopping).await;
        if let Some((_, mut task)) = relay {
            // Stuck on a broker that is away: abort. The entry it was sending
            // stays in the outbox (deleted only after publishing), and its
            // leases expire for the other pods to take.
            if tokio::time::timeout(RELAY_STOP_WAIT, &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
    })
    .await;
    heartbeat.abort();
    repush.abort();
    if let Some(rules) = rules {
        rules.abort();
    }
    bus.abort();
    result
}
