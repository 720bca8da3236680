//! Draining a node's connections on shutdown: every client is told to
//! reconnect elsewhere (after a jittered delay, so they do not all land on
//! the other pods at once), then what is left at the timeout is closed.

use std::time::{Duration, Instant};

use rand::Rng;
use tracing::info;

use crate::hub::{Hub, OutFrame};
use crate::protocol::{CloseCode, ServerFrame};

/// Sends `reconnect` to every connection of `hub` (delay up to `jitter`),
/// waits up to `timeout` for them to leave, closes the rest with 1001 and
/// gives their tasks the close budget to clean up (registry removal).
pub async fn connections(hub: &Hub, timeout: Duration, jitter: Duration) {
    let conns = hub.all();
    info!(connections = conns.len(), ?timeout, "draining");
    let jitter = jitter.as_millis() as u64;
    for c in &conns {
        let delay_ms = if jitter == 0 {
            0
        } else {
            rand::rng().random_range(0..=jitter)
        };
        c.push(
            OutFrame::new(ServerFrame::Reconnect {
                reason: "draining".into(),
                delay_ms,
            }),
            crate::hub::Stamp::default(),
        );
    }
    wait_empty(hub, timeout, Duration::from_millis(50)).await;
    let left = hub.all();
    if !left.is_empty() {
        info!(
            connections = left.len(),
            "drain timeout: closing remaining connections"
        );
    }
    for c in &left {
        c.close_with(CloseCode::GoingAway);
    }
    // Within the budget the operator counts into the pod's grace period.
    wait_empty(
        hub,
        switchboard_settings::CLOSE_BUDGET,
        Duration::from_millis(20),
    )
    .await;
}

async fn wait_empty(hub: &Hub, within: Duration, every: Duration) {
    let deadline = Instant::now() + within;
    while !hub.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(every).await;
    }
}
