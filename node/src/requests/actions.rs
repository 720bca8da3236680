//! What each action does. Every action runs as the request's `user_id`
//! where the chat protocol would check membership (`send_message`,
//! `get_history`); the reads of presence, online users and groups are a
//! backend's, unchecked (the broker's credentials are the credential).

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::{ApiError, Request};
use crate::backend::HistoryQuery;
use crate::ids::{ConversationId, GroupId, UserId};
use crate::model::{MsgFormat, Target};
use crate::node::Node;
use crate::protocol::{MAX_HISTORY_LIMIT, ParseLimits, Send, validate_send};
use crate::sending::Outgoing;

/// Every action.
pub const ACTIONS: [&str; 5] = [
    "send_message",
    "get_history",
    "get_presence",
    "get_online",
    "get_group",
];
/// Most users one `get_presence` names.
pub const MAX_PRESENCE_USERS: usize = 100;

/// The metric label of an action name (`unknown` when it is none).
pub fn label(action: &str) -> &'static str {
    ACTIONS
        .iter()
        .find(|a| **a == action)
        .copied()
        .unwrap_or("unknown")
}

/// Runs `req` on `node`; the `data` of the answer.
pub async fn execute(node: &Node, req: &Request) -> Result<Value, ApiError> {
    let user = UserId::parse(&req.user_id)
        .map_err(|e| ApiError::business("invalid_field", format!("`user_id`: {e}")))?;
    if user.as_str() == crate::ids::SYSTEM_USER {
        return Err(ApiError::business(
            "invalid_field",
            "`user_id`: \"system\" is the service's own sender",
        ));
    }
    match req.action.as_str() {
        "send_message" => send_message(node, &user, req).await,
        "get_history" => get_history(node, &user, &req.data).await,
        "get_presence" => {
            let d: PresenceData = data(&req.data)?;
            if d.user_ids.is_empty() || d.user_ids.len() > MAX_PRESENCE_USERS {
                return Err(ApiError::business(
                    "invalid_field",
                    format!("`user_ids` must name 1 to {MAX_PRESENCE_USERS} users"),
                ));
            }
            let mut presence = Vec::with_capacity(d.user_ids.len());
            for u in &d.user_ids {
                presence.push(node.backends().registry.presence(u).await?);
            }
            Ok(json!({ "presence": presence }))
        }
        "get_online" => {
            let d: OnlineData = data(&req.data)?;
            let limit = d.limit.unwrap_or(100);
            if !(1..=1000).contains(&limit) {
                return Err(ApiError::business(
                    "invalid_field",
                    "`limit` must be 1 to 1000",
                ));
            }
            let registry = &node.backends().registry;
            let stats = registry.stats().await?;
            let users = registry.online_users(limit).await?;
            Ok(json!({
                "users": users,
                "online_users": stats.online_users,
                "connections": stats.connections,
            }))
        }
        "get_group" => {
            let d: GroupData = data(&req.data)?;
            match node.backends().store.group(&d.group_id).await? {
                Some(g) => Ok(serde_json::to_value(g).unwrap_or(Value::Null)),
                None => Err(ApiError::business(
                    "not_found",
                    format!("group {} does not exist", d.group_id),
                )),
            }
        }
        other => Err(ApiError::business(
            "unknown_action",
            format!(
                "unknown action {:?}; known: {}",
                other.chars().take(64).collect::<String>(),
                ACTIONS.join(", ")
            ),
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendData {
    /// Seed 000's text.
    message: String,
    /// Seed 000's room: a group.
    #[serde(default)]
    room_id: Option<GroupId>,
    /// Or a user, for a direct message.
    #[serde(default)]
    to: Option<UserId>,
    #[serde(default)]
    format: Option<MsgFormat>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryData {
    #[serde(default)]
    room_id: Option<GroupId>,
    #[serde(default)]
    to: Option<UserId>,
    #[serde(default)]
    before: Option<u64>,
    #[serde(default)]
    after: Option<u64>,
    #[serde(default)]
    limit: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PresenceData {
    user_ids: Vec<UserId>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct OnlineData {
    #[serde(default)]
    limit: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupData {
    group_id: GroupId,
}

fn data<T: DeserializeOwned>(v: &Value) -> Result<T, ApiError> {
    let v = if v.is_null() { json!({}) } else { v.clone() };
    serde_json::from_value(v).map_err(|e| {
        let text = e.to_string();
        let code = if text.starts_with("missing field") {
            "missing_field"
        } else {
            "invalid_field"
        };
        ApiError::business(code, format!("`data`: {text}"))
    })
}

/// Exactly one of a room (group) and a user.
fn target(room: Option<GroupId>, to: Option<UserId>) -> Result<Target, ApiError> {
    match (room, to) {
        (Some(g), None) => Ok(Target::Group(g)),
        (None, Some(u)) => Ok(Target::User(u)),
        _ => Err(ApiError::business(
            "invalid_field",
            "`data` names exactly one of `room_id` (a group) and `to` (a user)",
        )),
    }
}

async fn send_message(node: &Node, user: &UserId, req: &Request) -> Result<Value, ApiError> {
    let d: SendData = data(&req.data)?;
    let send = Send {
        target: target(d.room_id, d.to)?,
        // The request id keys the message: a request delivered twice is
        // stored once (the store answers the second with the first).
        client_msg_id: Some(format!(
            "req-{:016x}",
            switchboard_rocketmq::names::fnv1a64(req.request_id.as_bytes())
        )),
        content: d.message,
        format: d.format.unwrap_or_default(),
        chat_id: None,
    };
    let limits = ParseLimits {
        max_content_bytes: node.cfg.max_content_bytes,
    };
    validate_send(&send, user, limits)?;
    let out = Outgoing {
        from: user.clone(),
        target: send.target,
        content: send.content,
        format: send.format,
        client_msg_id: send.client_msg_id,
        chat_id: None,
    };
    let appended = crate::sending::send(node.sending(), out, None, |_| {}).await?;
    let m = &appended.msg;
    Ok(json!({
        "message_id": m.msg_id,
        "status": "sent",
        "conversation": m.conversation,
        "seq": m.seq,
        "ts": m.ts,
    }))
}

async fn get_history(node: &Node, user: &UserId, v: &Value) -> Result<Value, ApiError> {
    let d: HistoryData = data(v)?;
    let conversation = match target(d.room_id, d.to)? {
        Target::Group(g) => ConversationId::Group(g),
        Target::User(u) => ConversationId::direct(user, &u),
    };
    if d.before.is_some() && d.after.is_some() {
        return Err(ApiError::business(
            "invalid_field",
            "`before` and `after` are exclusive",
        ));
    }
    let limit = d.limit.unwrap_or(50);
    if !(1..=MAX_HISTORY_LIMIT).contains(&limit) {
        return Err(ApiError::business(
            "invalid_field",
            format!("`limit` must be 1 to {MAX_HISTORY_LIMIT}"),
        ));
    }
    let query = HistoryQuery {
        before: d.before,
        after: d.after,
        limit,
    };
    let frame =
        crate::history::page(node.backends().store.as_ref(), user, conversation, query).await?;
    let mut page = serde_json::to_value(frame).unwrap_or(Value::Null);
    if let Some(o) = page.as_object_mut() {
        o.remove("type");
    }
    Ok(page)
}
