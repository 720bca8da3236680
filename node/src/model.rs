//! Domain types shared by the chat logic and the backends.

use serde::{Deserialize, Serialize};

use crate::ids::{ConversationId, GroupId, MsgId, UserId};

/// A stored chat message, exactly as it is sent to clients in a `message`
/// frame (v1 dialect).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub msg_id: MsgId,
    pub conversation: ConversationId,
    /// Position in the conversation: 1, 2, 3... without gaps.
    pub seq: u64,
    pub from: UserId,
    /// The recipient of a direct message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<UserId>,
    /// The group of a group message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<GroupId>,
    pub content: String,
    /// Server time of acceptance, milliseconds since the Unix epoch.
    pub ts: i64,
    /// The sender's idempotency key, echoed so the sender's other devices can
    /// match their own optimistic copies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_msg_id: Option<String>,
    /// The seed protocol's free-form `chatId`, kept and echoed unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_id: Option<String>,
}

/// Where a message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    User(UserId),
    Group(GroupId),
}

/// Presence of one user across the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    pub user: UserId,
    pub online: bool,
    /// Live connections (devices).
    pub devices: usize,
    /// Pods holding those connections.
    pub pods: Vec<String>,
    /// When the user was last seen connected, ms since the Unix epoch; `None`
    /// when never seen (or forgotten).
    pub last_seen: Option<i64>,
}

/// Cluster-wide online counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OnlineStats {
    pub online_users: usize,
    pub connections: usize,
}

/// A group and its members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Group {
    pub id: GroupId,
    pub members: Vec<UserId>,
}
