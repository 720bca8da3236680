//! WebSocket protocol v1: JSON text frames with a `type` field.
//!
//! Client frames are parsed here (including the seed service's frames:
//! `CHAT_MESSAGE`, `HEARTBEAT`, `READ_RECEIPT`, `TYPING`); server frames and
//! their two renderings live in [`server`]. The full reference is
//! `docs/protocol.md`.

pub mod codes;
pub mod server;

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::Deserialize;

pub use codes::{CloseCode, ErrorCode};
pub use server::{Dialect, Limits, ServerFrame, TypingState};

use crate::ids::{ConversationId, GroupId, MsgId, UserId};
use crate::model::{MsgFormat, Target};

/// Longest accepted `client_msg_id`, in bytes.
pub const MAX_CLIENT_MSG_ID: usize = 64;
/// Most users one `presence_subscribe` frame may name.
pub const MAX_PRESENCE_SUBSCRIPTIONS: usize = 256;
/// Most message ids one `ack` may carry.
pub const MAX_ACK_IDS: usize = 1000;
/// Largest page a `history` request may ask for.
pub const MAX_HISTORY_LIMIT: usize = 200;
/// Most conversations one `resume` may name.
pub const MAX_RESUME_CONVERSATIONS: usize = 200;

/// A parsed client frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    Send(Send),
    Ack {
        msg_ids: Vec<MsgId>,
    },
    Read {
        conversation: ConversationId,
        /// Read up to and including this seq; resolved from `msg_id` when absent.
        seq: Option<u64>,
        msg_id: Option<MsgId>,
    },
    Typing {
        conversation: ConversationId,
        state: TypingState,
    },
    Ping,
    History {
        conversation: ConversationId,
        before: Option<u64>,
        after: Option<u64>,
        limit: usize,
    },
    Resume {
        conversations: Vec<(ConversationId, u64)>,
    },
    PresenceSubscribe {
        users: Vec<UserId>,
    },
    /// Take back a message: see [`crate::recall`].
    Recall {
        conversation: ConversationId,
        msg_id: MsgId,
    },
}

impl ClientFrame {
    /// A bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Send(_) => "send",
            Self::Ack { .. } => "ack",
            Self::Read { .. } => "read",
            Self::Typing { .. } => "typing",
            Self::Ping => "ping",
            Self::History { .. } => "history",
            Self::Resume { .. } => "resume",
            Self::PresenceSubscribe { .. } => "presence_subscribe",
            Self::Recall { .. } => "recall",
        }
    }
}

/// A message to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Send {
    pub target: Target,
    pub client_msg_id: Option<String>,
    pub content: String,
    pub format: MsgFormat,
    pub chat_id: Option<String>,
}

/// A frame the server refused, with what the `error` frame says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    pub code: ErrorCode,
    pub reason: String,
    /// The `client_msg_id` of the refused frame, when it had one.
    pub client_msg_id: Option<String>,
}

impl FrameError {
    pub fn new(code: ErrorCode, reason: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
            client_msg_id: None,
        }
    }
}

/// Limits applied while parsing.
#[derive(Debug, Clone, Copy)]
pub struct ParseLimits {
    pub max_content_bytes: usize,
}

#[derive(Deserialize)]
struct Peek<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendV1 {
    #[serde(rename = "type")]
    _type: Ignored,
    client_msg_id: Option<String>,
    to: Option<UserId>,
    group: Option<GroupId>,
    content: String,
    format: Option<MsgFormat>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SeedChat {
    receiver_id: UserId,
    chat_id: Option<String>,
    content: String,
}

#[derive(Deserialize)]
struct AckV1 {
    msg_ids: Option<Vec<MsgId>>,
    msg_id: Option<MsgId>,
}

#[derive(Deserialize)]
struct ReadV1 {
    conversation: ConversationId,
    seq: Option<u64>,
    msg_id: Option<MsgId>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SeedRead {
    message_id: MsgId,
    /// The original sender.
    receiver_id: UserId,
}

#[derive(Deserialize)]
struct TypingV1 {
    conversation: ConversationId,
    state: TypingState,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SeedTyping {
    receiver_id: UserId,
    content: String,
}

#[derive(Deserialize)]
struct HistoryV1 {
    conversation: ConversationId,
    before: Option<u64>,
    after: Option<u64>,
    limit: Option<usize>,
}

#[derive(Deserialize)]
struct ResumeV1 {
    conversations: BTreeMap<String, u64>,
}

#[derive(Deserialize)]
struct RecallV1 {
    conversation: ConversationId,
    msg_id: MsgId,
}

#[derive(Deserialize)]
struct PresenceSubscribeV1 {
    users: Vec<UserId>,
}

/// Accepts and ignores any value (the already-read `type` field).
struct Ignored;
impl<'de> Deserialize<'de> for Ignored {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(d).map(|_| Ignored)
    }
}

/// Parses one text frame from the connection of user `me`.
///
/// `me` is needed because the seed frames name only the peer; the sender is
/// always the authenticated user, whatever a `senderId` field says.
pub fn parse(text: &str, me: &UserId, limits: ParseLimits) -> Result<ClientFrame, FrameError> {
    let peek: Peek<'_> = serde_json::from_str(text).map_err(|_| {
        FrameError::new(
            ErrorCode::BadJson,
            "frame is not a JSON object with a string `type`",
        )
    })?;
    let kind = peek
        .kind
        .ok_or_else(|| FrameError::new(ErrorCode::MissingField, "missing field `type`"))?;
    parse_kind(&kind, text, me, limits).map_err(|mut e| {
        if e.client_msg_id.is_none() {
            e.client_msg_id = client_msg_id_of(text);
        }
        e
    })
}

fn parse_kind(
    kind: &str,
    text: &str,
    me: &UserId,
    limits: ParseLimits,
) -> Result<ClientFrame, FrameError> {
    let frame = match kind {
        "send" => {
            let f: SendV1 = de(text)?;
            let target = match (f.to, f.group) {
                (Some(u), None) => Target::User(u),
                (None, Some(g)) => Target::Group(g),
                (None, None) => {
                    return Err(FrameError::new(
                        ErrorCode::MissingField,
                        "one of `to` or `group` is required",
                    ));
                }
                (Some(_), Some(_)) => {
                    return Err(FrameError::new(
                        ErrorCode::InvalidField,
                        "give `to` or `group`, not both",
                    ));
                }
            };
            ClientFrame::Send(Send {
                target,
                client_msg_id: f.client_msg_id,
                content: f.content,
                format: f.format.unwrap_or_default(),
                chat_id: None,
            })
        }
        "CHAT_MESSAGE" => {
            let f: SeedChat = de(text)?;
            ClientFrame::Send(Send {
                target: Target::User(f.receiver_id),
                client_msg_id: None,
                content: f.content,
                format: MsgFormat::Text,
                chat_id: f.chat_id,
            })
        }
        "ack" => {
            let f: AckV1 = de(text)?;
            let mut msg_ids = f.msg_ids.unwrap_or_default();
            msg_ids.extend(f.msg_id);
            if msg_ids.is_empty() {
                return Err(FrameError::new(
                    ErrorCode::MissingField,
                    "missing field `msg_ids`",
                ));
            }
            if msg_ids.len() > MAX_ACK_IDS {
                return Err(FrameError::new(
                    ErrorCode::InvalidField,
                    format!("at most {MAX_ACK_IDS} msg_ids per ack"),
                ));
            }
            ClientFrame::Ack { msg_ids }
        }
        "read" => {
            let f: ReadV1 = de(text)?;
            if f.seq.is_none() && f.msg_id.is_none() {
                return Err(FrameError::new(
                    ErrorCode::MissingField,
                    "one of `seq` or `msg_id` is required",
                ));
            }
            ClientFrame::Read {
                conversation: f.conversation,
                seq: f.seq,
                msg_id: f.msg_id,
            }
        }
        "READ_RECEIPT" => {
            let f: SeedRead = de(text)?;
            ClientFrame::Read {
                conversation: ConversationId::direct(me, &f.receiver_id),
                seq: None,
                msg_id: Some(f.message_id),
            }
        }
        "typing" => {
            let f: TypingV1 = de(text)?;
            ClientFrame::Typing {
                conversation: f.conversation,
                state: f.state,
            }
        }
        "TYPING" => {
            let f: SeedTyping = de(text)?;
            let state = match f.content.as_str() {
                "typing" => TypingState::Start,
                "stop_typing" => TypingState::Stop,
                _ => {
                    return Err(FrameError::new(
                        ErrorCode::InvalidField,
                        "`content` must be \"typing\" or \"stop_typing\"",
                    ));
                }
            };
            ClientFrame::Typing {
                conversation: ConversationId::direct(me, &f.receiver_id),
                state,
            }
        }
        "ping" | "HEARTBEAT" => ClientFrame::Ping,
        "history" => {
            let f: HistoryV1 = de(text)?;
            let limit = f.limit.unwrap_or(50);
            if limit == 0 || limit > MAX_HISTORY_LIMIT {
                return Err(FrameError::new(
                    ErrorCode::InvalidField,
                    format!("`limit` must be 1 to {MAX_HISTORY_LIMIT}"),
                ));
            }
            if f.before.is_some() && f.after.is_some() {
                return Err(FrameError::new(
                    ErrorCode::InvalidField,
                    "give `before` or `after`, not both",
                ));
            }
            ClientFrame::History {
                conversation: f.conversation,
                before: f.before,
                after: f.after,
                limit,
            }
        }
        "resume" => {
            let f: ResumeV1 = de(text)?;
            if f.conversations.len() > MAX_RESUME_CONVERSATIONS {
                return Err(FrameError::new(
                    ErrorCode::InvalidField,
                    format!("at most {MAX_RESUME_CONVERSATIONS} conversations per resume"),
                ));
            }
            let conversations = f
                .conversations
                .into_iter()
                .map(|(c, seq)| {
                    ConversationId::parse(&c).map(|c| (c, seq)).map_err(|e| {
                        FrameError::new(ErrorCode::InvalidField, format!("{c:?}: {e}"))
                    })
                })
                .collect::<Result<_, _>>()?;
            ClientFrame::Resume { conversations }
        }
        "presence_subscribe" => {
            let f: PresenceSubscribeV1 = de(text)?;
            if f.users.len() > MAX_PRESENCE_SUBSCRIPTIONS {
                return Err(FrameError::new(
                    ErrorCode::InvalidField,
                    format!("at most {MAX_PRESENCE_SUBSCRIPTIONS} users per subscription"),
                ));
            }
            ClientFrame::PresenceSubscribe { users: f.users }
        }
        "recall" => {
            let f: RecallV1 = de(text)?;
            ClientFrame::Recall {
                conversation: f.conversation,
                msg_id: f.msg_id,
            }
        }
        other => {
            let shown: String = other.chars().take(32).collect();
            return Err(FrameError::new(
                ErrorCode::UnknownType,
                format!("unknown frame type {shown:?}"),
            ));
        }
    };
    if let ClientFrame::Send(s) = &frame {
        validate_send(s, me, limits)?;
    }
    Ok(frame)
}

/// Checks a `send` as the frame parser does (also for a backend's `send_message`).
pub fn validate_send(s: &Send, me: &UserId, limits: ParseLimits) -> Result<(), FrameError> {
    if s.content.is_empty() {
        return Err(FrameError::new(
            ErrorCode::InvalidField,
            "`content` must not be empty",
        ));
    }
    if s.content.len() > limits.max_content_bytes {
        return Err(FrameError::new(
            ErrorCode::ContentTooLarge,
            format!(
                "`content` is {} bytes; the limit is {}",
                s.content.len(),
                limits.max_content_bytes
            ),
        ));
    }
    if let Some(id) = &s.client_msg_id
        && (id.is_empty() || id.len() > MAX_CLIENT_MSG_ID)
    {
        return Err(FrameError::new(
            ErrorCode::InvalidField,
            format!("`client_msg_id` must be 1 to {MAX_CLIENT_MSG_ID} bytes"),
        ));
    }
    if matches!(&s.target, Target::User(u) if u.as_str() == crate::ids::SYSTEM_USER) {
        return Err(FrameError::new(
            ErrorCode::InvalidField,
            "`to`: \"system\" is the service's own sender; it reads nothing",
        ));
    }
    if s.format == MsgFormat::System {
        return Err(FrameError::new(
            ErrorCode::InvalidField,
            "`format` \"system\" is for the service's own notices",
        ));
    }
    if let Some(chat) = &s.chat_id
        && chat.len() > MAX_CLIENT_MSG_ID
    {
        return Err(FrameError::new(
            ErrorCode::InvalidField,
            format!("`chatId` must be at most {MAX_CLIENT_MSG_ID} bytes"),
        ));
    }
    if s.target == Target::User(me.clone()) {
        return Err(FrameError::new(
            ErrorCode::InvalidField,
            "cannot send a direct message to yourself",
        ));
    }
    Ok(())
}

/// Deserializes a frame body, turning serde's message into a stable code and
/// a reason without the line/column noise.
fn de<'a, T: Deserialize<'a>>(text: &'a str) -> Result<T, FrameError> {
    serde_json::from_str(text).map_err(|e| {
        let msg = e.to_string();
        let reason = match msg.rfind(" at line ") {
            Some(i) => msg[..i].to_owned(),
            None => msg,
        };
        let code = if reason.starts_with("missing field") {
            ErrorCode::MissingField
        } else {
            ErrorCode::InvalidField
        };
        FrameError::new(code, reason)
    })
}

pub fn client_msg_id_of(text: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Cid {
        client_msg_id: Option<serde_json::Value>,
    }
    match serde_json::from_str::<Cid>(text).ok()?.client_msg_id? {
        serde_json::Value::String(s) if s.len() <= MAX_CLIENT_MSG_ID => Some(s),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
