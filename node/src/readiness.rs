//! `/readyz`: the pod takes clients only when it can serve them.
//!
//! Ready means: not draining, the registry backend (Redis) answers a ping,
//! and this pod's bus subscription runs (so pushes from other pods reach its
//! clients). Kubernetes routes clients and the operator counts ready nodes by
//! this answer.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::node::Node;
use crate::protocol::ErrorCode;

/// A ping slower than this counts as unreachable: the kubelet's probe
/// (1 s timeout by default) must get an answer either way.
const PING_TIMEOUT: Duration = Duration::from_millis(800);

/// What `/readyz` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Readiness {
    pub draining: bool,
    pub registry: bool,
    pub bus: bool,
}

impl Readiness {
    pub fn ready(self) -> bool {
        !self.draining && self.registry && self.bus
    }
}

/// Checks the node now.
pub async fn check(node: &Node) -> Readiness {
    let registry = matches!(
        tokio::time::timeout(PING_TIMEOUT, node.backends().registry.ping()).await,
        Ok(Ok(()))
    );
    Readiness {
        draining: node.is_draining(),
        registry,
        bus: node.is_bus_ready(),
    }
}

/// `GET /readyz`: 200 `ready`, or 503 with `draining` or `not_ready`, the
/// reason and each check.
pub async fn readyz(State(node): State<Arc<Node>>) -> Response {
    let r = check(&node).await;
    if r.ready() {
        return "ready".into_response();
    }
    let (code, reason) = if r.draining {
        (ErrorCode::Draining, "draining")
    } else if !r.registry {
        (ErrorCode::NotReady, "the registry (Redis) does not answer")
    } else {
        (
            ErrorCode::NotReady,
            "not subscribed to this pod's bus topic yet",
        )
    };
    let state = |ok: bool| if ok { "ok" } else { "failing" };
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({
            "code": code,
            "reason": reason,
            "checks": {
                "draining": r.draining,
                "registry": state(r.registry),
                "bus": state(r.bus),
            },
        })),
    )
        .into_response()
}
