//! Stable error codes and WebSocket close codes. Clients switch on these
//! strings and numbers, so they never change meaning once released.

use serde::{Deserialize, Serialize};

/// The `code` of an `error` frame (and of HTTP error bodies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The text frame is not a JSON object.
    BadJson,
    /// The `type` is not one this protocol version knows.
    UnknownType,
    /// A required field is absent.
    MissingField,
    /// A field has the wrong type or an invalid value.
    InvalidField,
    /// `content` is longer than the node's limit (bytes of UTF-8).
    ContentTooLarge,
    /// Binary frames are not part of the protocol.
    BinaryNotSupported,
    /// The per-connection rate limit refused this frame; retry later.
    RateLimited,
    /// The group does not exist or the user is not one of its members.
    NotAMember,
    /// The recipient's offline inbox is full; the message was not stored.
    InboxFull,
    /// A read receipt or a recall named a message that is not in that
    /// conversation's retained history.
    UnknownMessage,
    /// A recall of a message someone else sent.
    NotYours,
    /// A recall after the recall window (`SB_RECALL_WINDOW`) has passed.
    TooLate,
    /// A backend failed or the cross-node bus is saturated; resend with the
    /// same `client_msg_id`.
    Unavailable,
    /// Authentication failed (HTTP 401 at the upgrade).
    Unauthorized,
    /// The admin token is wrong (HTTP 403).
    Forbidden,
    /// The admin API is off: the node has no admin token and is not in dev
    /// mode (HTTP 403).
    AdminDisabled,
    /// The node is draining and accepts no new connections (HTTP 503).
    Draining,
    /// `/readyz`: a dependency the node needs to serve is not there (HTTP 503).
    NotReady,
    /// The node is at its connection limit (HTTP 503).
    ServerFull,
    /// An HTTP resource does not exist (HTTP 404).
    NotFound,
    /// An HTTP request conflicts with existing state (HTTP 409).
    Conflict,
    /// The moderation policy refused the message (a word rule or the
    /// webhook); it was not stored.
    Moderated,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 22] = [
        Self::BadJson,
        Self::UnknownType,
        Self::MissingField,
        Self::InvalidField,
        Self::ContentTooLarge,
        Self::BinaryNotSupported,
        Self::RateLimited,
        Self::NotAMember,
        Self::InboxFull,
        Self::UnknownMessage,
        Self::NotYours,
        Self::TooLate,
        Self::Unavailable,
        Self::Unauthorized,
        Self::Forbidden,
        Self::AdminDisabled,
        Self::Draining,
        Self::NotReady,
        Self::ServerFull,
        Self::NotFound,
        Self::Conflict,
        Self::Moderated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadJson => "bad_json",
            Self::UnknownType => "unknown_type",
            Self::MissingField => "missing_field",
            Self::InvalidField => "invalid_field",
            Self::ContentTooLarge => "content_too_large",
            Self::BinaryNotSupported => "binary_not_supported",
            Self::RateLimited => "rate_limited",
            Self::NotAMember => "not_a_member",
            Self::InboxFull => "inbox_full",
            Self::UnknownMessage => "unknown_message",
            Self::NotYours => "not_yours",
            Self::TooLate => "too_late",
            Self::Unavailable => "unavailable",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::AdminDisabled => "admin_disabled",
            Self::Draining => "draining",
            Self::NotReady => "not_ready",
            Self::ServerFull => "server_full",
            Self::NotFound => "not_found",
            Self::Conflict => "conflict",
            Self::Moderated => "moderated",
        }
    }
}

/// Close codes the server uses. 1000-1011 are RFC 6455; 4000-4999 are ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCode {
    /// 1001: the node shut down after its drain timeout.
    GoingAway,
    /// 1009: a frame exceeded the hard frame size limit.
    TooBig,
    /// 1011: an unexpected server error.
    Internal,
    /// 4000: no frame (not even a ping) within the idle timeout.
    IdleTimeout,
    /// 4001: the client read too slowly and its outbound buffer filled up.
    SlowConsumer,
    /// 4002: a backend disconnected the user (`user.disconnect`), after a
    /// `disconnect` frame saying why.
    Disconnected,
}

impl CloseCode {
    pub fn code(self) -> u16 {
        match self {
            Self::GoingAway => 1001,
            Self::TooBig => 1009,
            Self::Internal => 1011,
            Self::IdleTimeout => 4000,
            Self::SlowConsumer => 4001,
            Self::Disconnected => 4002,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Self::GoingAway => "server_shutdown",
            Self::TooBig => "frame_too_large",
            Self::Internal => "internal_error",
            Self::IdleTimeout => "idle_timeout",
            Self::SlowConsumer => "slow_consumer",
            Self::Disconnected => "disconnected",
        }
    }
}
