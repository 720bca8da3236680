//! HTTP routes: health, metrics, presence, the groups admin API, the web page
//! and the WebSocket endpoints.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::api_error::ApiError;
use crate::ids::{GroupId, UserId};
use crate::model::GroupProfile;
use crate::node::Node;
use crate::protocol::ErrorCode;
use crate::ws;

type ApiResult<T> = Result<T, ApiError>;

/// The node's router.
pub fn app(node: Arc<Node>) -> Router {
    let admin = Router::new()
        .route("/api/v1/presence/{user}", get(presence))
        .route("/api/v1/online", get(online))
        .route("/api/v1/stats", get(stats))
        .route("/api/v1/groups", post(create_group))
        .route("/api/v1/groups/{id}", get(get_group).delete(delete_group))
        .route("/api/v1/groups/{id}/members", post(add_members))
        .route("/api/v1/groups/{id}/members/{user}", delete(remove_member))
        .route("/api/v1/messages/recall", post(recall))
        .route("/api/chat/online/status/{user}", get(presence))
        .route("/api/chat/online/stats", get(stats))
        .route_layer(middleware::from_fn_with_state(node.clone(), require_admin));
    Router::new()
        .route("/", get(index))
        .route("/ws", get(ws::ws_v1))
        .route("/ws/chat", get(ws::ws_seed))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(crate::readiness::readyz))
        .route("/metrics", get(metrics))
        .route("/api/chat/health", get(seed_health))
        .merge(admin)
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, "no such route")
        })
        .with_state(node)
}

/// The admin API needs the admin token. Without one configured it is off,
/// except in dev mode (standalone default), where it is open and the node's
/// start-up log says so.
async fn require_admin(State(node): State<Arc<Node>>, req: Request, next: Next) -> Response {
    let Some(expected) = node.cfg.admin_token.as_ref().map(|t| t.expose()) else {
        if node.auth.dev_mode() {
            return next.run(req).await;
        }
        node.metrics.error(ErrorCode::AdminDisabled);
        return ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::AdminDisabled,
            "the admin API is off: the node has no admin token (SB_ADMIN_TOKEN)",
        )
        .into_response();
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        None => {
            node.metrics.error(ErrorCode::Unauthorized);
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthorized,
                "admin token required: Authorization: Bearer",
            )
            .into_response()
        }
        Some(t) if constant_time_eq(t.as_bytes(), expected.as_bytes()) => next.run(req).await,
        Some(_) => {
            node.metrics.error(ErrorCode::Forbidden);
            ApiError::new(
                StatusCode::FORBIDDEN,
                ErrorCode::Forbidden,
                "wrong admin token",
            )
            .into_response()
        }
    }
}

/// Compares without an early exit, so timing does not reveal the prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn index() -> Response {
    let mut r = Html(include_str!("../web/index.html")).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

async fn metrics(State(node): State<Arc<Node>>) -> Response {
    let tasks = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    node.metrics
        .runtime_tasks
        .set(i64::try_from(tasks).unwrap_or(i64::MAX));
    node.metrics
        .users_online
        .set(i64::try_from(node.hub.users()).unwrap_or(i64::MAX));
    node.metrics.draining.set(i64::from(node.is_draining()));
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        node.metrics.encode(),
    )
        .into_response()
}

async fn seed_health(State(node): State<Arc<Node>>) -> Json<serde_json::Value> {
    let status = if node.is_draining() { "DRAINING" } else { "UP" };
    Json(json!({
        "status": status,
        "node": node.pod.name,
        "connections": node.hub.len(),
    }))
}

fn user_path(s: &str) -> ApiResult<UserId> {
    UserId::parse(s).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidField,
            format!("user id {e}"),
        )
    })
}

fn group_path(s: &str) -> ApiResult<GroupId> {
    GroupId::parse(s).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidField,
            format!("group id {e}"),
        )
    })
}

async fn presence(State(node): State<Arc<Node>>, Path(user): Path<String>) -> ApiResult<Response> {
    let user = user_path(&user)?;
    let p = node.backends().registry.presence(&user).await?;
    Ok(Json(p).into_response())
}

#[derive(Deserialize)]
struct OnlineQuery {
    limit: Option<usize>,
}

async fn online(
    State(node): State<Arc<Node>>,
    Query(q): Query<OnlineQuery>,
) -> ApiResult<Response> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let users = node.backends().registry.online_users(limit).await?;
    Ok(Json(json!({ "users": users })).into_response())
}

async fn stats(State(node): State<Arc<Node>>) -> ApiResult<Response> {
    let s = node.backends().registry.stats().await?;
    Ok(Json(json!({
        "online_users": s.online_users,
        "connections": s.connections,
        "node": node.pod.name,
        "node_connections": node.hub.len(),
    }))
    .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateGroup {
    id: GroupId,
    #[serde(default)]
    members: Vec<UserId>,
    #[serde(default)]
    owner: Option<UserId>,
    #[serde(default)]
    title: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddMembers {
    users: Vec<UserId>,
}

/// `system` sends notices; it is never a member or an owner.
fn no_system_user<'a>(users: impl IntoIterator<Item = &'a UserId>) -> ApiResult<()> {
    if users
        .into_iter()
        .any(|u| u.as_str() == crate::ids::SYSTEM_USER)
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidField,
            "\"system\" is the service's own sender; it cannot be a member or an owner",
        ));
    }
    Ok(())
}

async fn create_group(
    State(node): State<Arc<Node>>,
    body: Result<Json<CreateGroup>, JsonRejection>,
) -> ApiResult<Response> {
    let Json(req) = body?;
    no_system_user(req.members.iter().chain(req.owner.as_ref()))?;
    if let Some(title) = &req.title {
        crate::model::check_title(title).map_err(|reason| {
            ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidField, reason)
        })?;
    }
    let profile = GroupProfile {
        owner: req.owner,
        title: req.title,
    };
    let g = node
        .groups()
        .create(&req.id, &req.members, &profile)
        .await?;
    Ok((StatusCode::CREATED, Json(g)).into_response())
}

async fn get_group(State(node): State<Arc<Node>>, Path(id): Path<String>) -> ApiResult<Response> {
    let id = group_path(&id)?;
    match node.backends().store.group(&id).await? {
        Some(g) => Ok(Json(g).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            format!("group {id} does not exist"),
        )),
    }
}

async fn delete_group(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let id = group_path(&id)?;
    if node.groups().delete(&id).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            format!("group {id} does not exist"),
        ))
    }
}

async fn add_members(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    body: Result<Json<AddMembers>, JsonRejection>,
) -> ApiResult<Response> {
    let id = group_path(&id)?;
    let Json(req) = body?;
    no_system_user(&req.users)?;
    let g = node.groups().add(&id, &req.users).await?;
    Ok(Json(g).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecallBody {
    conversation: crate::ids::ConversationId,
    msg_id: crate::ids::MsgId,
}

/// Recalls any message (no window, no authorship check); answers with the
/// tombstone.
async fn recall(
    State(node): State<Arc<Node>>,
    body: Result<Json<RecallBody>, JsonRejection>,
) -> ApiResult<Response> {
    let Json(req) = body?;
    let tombstone = node
        .recalls()
        .recall(
            crate::recall::Recaller::Admin,
            &req.conversation,
            req.msg_id,
        )
        .await?;
    Ok(Json(tombstone).into_response())
}

async fn remove_member(
    State(node): State<Arc<Node>>,
    Path((id, user)): Path<(String, String)>,
) -> ApiResult<Response> {
    let id = group_path(&id)?;
    let user = user_path(&user)?;
    let g = node.groups().remove(&id, &user).await?;
    Ok(Json(g).into_response())
}
