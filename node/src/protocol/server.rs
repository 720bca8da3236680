//! Server -> client frames, rendered in one of two dialects.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::codes::ErrorCode;
use crate::ids::{ConversationId, GroupId, MsgId, UserId};
use crate::model::{ChatMessage, GroupProfile, Presence};

/// How a connection wants its frames written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// Protocol v1 (`/ws`).
    V1,
    /// The seed service's clients (`/ws/chat`): chat messages, read receipts,
    /// typing and heartbeat replies use the seed's `CHAT_MESSAGE`,
    /// `READ_RECEIPT`, `TYPING` and `HEARTBEAT` shapes; everything else is v1.
    Seed,
}

/// Whether a user is typing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TypingState {
    Start,
    Stop,
}

/// What happened to a group ([`ServerFrame::Group`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupChange {
    Created,
    Added,
    Removed,
    Updated,
    Deleted,
}

/// Limits announced in `welcome` so clients can stay inside them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub max_content_bytes: usize,
    pub rate_per_sec: u32,
    pub rate_burst: u32,
    /// How long after sending a sender may recall a message.
    pub recall_window_ms: u64,
}

/// Every frame the server sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    Welcome {
        protocol: u32,
        user: UserId,
        session: String,
        node: String,
        heartbeat_interval_ms: u64,
        groups: Vec<GroupId>,
        /// Owner and title of those of `groups` that have either.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        profiles: BTreeMap<GroupId, GroupProfile>,
        limits: Limits,
    },
    Sent {
        #[serde(skip_serializing_if = "Option::is_none")]
        client_msg_id: Option<String>,
        msg_id: MsgId,
        conversation: ConversationId,
        seq: u64,
        ts: i64,
        /// True when this `client_msg_id` was already accepted: nothing new
        /// was stored or delivered.
        duplicate: bool,
    },
    Message(Arc<ChatMessage>),
    Delivered {
        msg_id: MsgId,
        conversation: ConversationId,
        seq: u64,
        /// The recipient who acknowledged it.
        user: UserId,
    },
    Read {
        conversation: ConversationId,
        seq: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        msg_id: Option<MsgId>,
        /// The reader.
        user: UserId,
    },
    Typing {
        conversation: ConversationId,
        user: UserId,
        state: TypingState,
    },
    /// A message was taken back: drop its content; history now holds its
    /// tombstone.
    Recalled {
        conversation: ConversationId,
        msg_id: MsgId,
        seq: u64,
        /// Who recalled it: the sender, or absent when an admin did.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<UserId>,
    },
    Presence(Presence),
    /// A group the user is (or was) a member of changed: sent to its members
    /// after the change and to those it removed.
    Group {
        group: GroupId,
        change: GroupChange,
        /// Who joined or left (empty for `created` and `deleted`: see
        /// `members`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        users: Vec<UserId>,
        /// The members after the change (empty once deleted).
        members: Vec<UserId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner: Option<UserId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        title: Option<String>,
    },
    History {
        conversation: ConversationId,
        /// The request's cursor, echoed so a client can match the page.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        before: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<u64>,
        messages: Vec<Arc<ChatMessage>>,
        /// More messages exist beyond this page in the direction asked.
        has_more: bool,
        /// Each participant's read watermark (read up to and including
        /// that seq), for those who have read something.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        read: BTreeMap<UserId, u64>,
    },
    Pong {
        ts: i64,
    },
    Error {
        code: ErrorCode,
        reason: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        client_msg_id: Option<String>,
    },
    Reconnect {
        reason: String,
        /// Wait this long (jittered per client) before reconnecting, so a
        /// draining pod's clients don't all land on the others at once.
        delay_ms: u64,
    },
    /// A backend disconnected the user: the server closes the connection
    /// with 4002 right after this frame. Reconnecting with the same
    /// credentials is allowed; the backend revokes them if it wants the
    /// user to stay out.
    Disconnect {
        reason: String,
    },
}

impl ServerFrame {
    /// A bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Welcome { .. } => "welcome",
            Self::Sent { .. } => "sent",
            Self::Message(_) => "message",
            Self::Delivered { .. } => "delivered",
            Self::Read { .. } => "read",
            Self::Typing { .. } => "typing",
            Self::Recalled { .. } => "recalled",
            Self::Presence(_) => "presence",
            Self::Group { .. } => "group",
            Self::History { .. } => "history",
            Self::Pong { .. } => "pong",
            Self::Error { .. } => "error",
            Self::Reconnect { .. } => "reconnect",
            Self::Disconnect { .. } => "disconnect",
        }
    }

    pub fn error(
        code: ErrorCode,
        reason: impl Into<String>,
        client_msg_id: Option<String>,
    ) -> Self {
        Self::Error {
            code,
            reason: reason.into(),
            client_msg_id,
        }
    }

    /// Serializes the frame for a connection speaking `dialect`.
    pub fn render(&self, dialect: Dialect) -> String {
        if dialect == Dialect::Seed
            && let Some(v) = self.seed_shape()
        {
            return v.to_string();
        }
        // Serializing these types cannot fail: no maps with non-string keys.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }

    fn seed_shape(&self) -> Option<serde_json::Value> {
        Some(match self {
            Self::Message(m) => json!({
                "type": "CHAT_MESSAGE",
                "messageId": m.msg_id,
                "senderId": m.from,
                "receiverId": m.to.as_ref().map(UserId::as_str).or(m.group.as_ref().map(GroupId::as_str)),
                "chatId": m.chat_id.clone().unwrap_or_else(|| m.conversation.to_string()),
                "content": m.content,
                "timestamp": m.ts,
                "conversation": m.conversation,
                "seq": m.seq,
            }),
            Self::Read {
                conversation,
                seq,
                msg_id,
                user,
            } => json!({
                "type": "READ_RECEIPT",
                "chatId": conversation,
                "messageId": msg_id,
                "readerId": user,
                "seq": seq,
            }),
            Self::Typing {
                conversation,
                user,
                state,
            } => json!({
                "type": "TYPING",
                "senderId": user,
                "chatId": conversation,
                "content": match state { TypingState::Start => "typing", TypingState::Stop => "stop_typing" },
            }),
            Self::Pong { ts } => json!({"type": "HEARTBEAT", "content": "pong", "timestamp": ts}),
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg() -> Arc<ChatMessage> {
        Arc::new(ChatMessage {
            msg_id: MsgId(77),
            conversation: ConversationId::parse("dm:alice:bob").unwrap(),
            seq: 3,
            from: UserId::parse("alice").unwrap(),
            to: Some(UserId::parse("bob").unwrap()),
            group: None,
            content: "hi".into(),
            format: Default::default(),
            recalled: false,
            status: None,
            ts: 5,
            client_msg_id: Some("c1".into()),
            chat_id: Some("chat123".into()),
        })
    }

    #[test]
    fn v1_message_is_flat_with_type() {
        let v: serde_json::Value =
            serde_json::from_str(&ServerFrame::Message(msg()).render(Dialect::V1)).unwrap();
        assert_eq!(v["type"], "message");
        assert_eq!(v["msg_id"], "77");
        assert_eq!(v["conversation"], "dm:alice:bob");
        assert_eq!(v["seq"], 3);
        assert_eq!(v["from"], "alice");
        assert_eq!(v["to"], "bob");
        assert!(v.get("group").is_none());
    }

    #[test]
    fn seed_dialect_uses_seed_shapes() {
        let v: serde_json::Value =
            serde_json::from_str(&ServerFrame::Message(msg()).render(Dialect::Seed)).unwrap();
        assert_eq!(v["type"], "CHAT_MESSAGE");
        assert_eq!(v["senderId"], "alice");
        assert_eq!(v["receiverId"], "bob");
        assert_eq!(v["chatId"], "chat123");
        assert_eq!(v["messageId"], "77");
        let pong: serde_json::Value =
            serde_json::from_str(&ServerFrame::Pong { ts: 1 }.render(Dialect::Seed)).unwrap();
        assert_eq!(pong["type"], "HEARTBEAT");
        // Frames the seed protocol has no shape for stay v1.
        let err = ServerFrame::error(ErrorCode::BadJson, "x", None).render(Dialect::Seed);
        assert!(err.contains(r#""type":"error""#));
        assert!(err.contains(r#""code":"bad_json""#));
    }
}
