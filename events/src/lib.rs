//! The events a Switchboard cluster publishes to RocketMQ, for the services
//! that consume them (`docs/integration.md` has the whole contract).
//!
//! Two streams, both at least once, each record with a unique key to dedup by:
//! - `PREFIX-events` ([`Event`]): seed 000's format `{"user_id", "message",
//!   "timestamp", "type"}` plus fields that help (`msg_id`, `conversation`,
//!   `seq`, `group_id`, `pod`). Tag = the type; properties `event_type` and
//!   `user_id`.
//! - `PREFIX-cluster-events` ([`ClusterEvent`]): seed 001's envelope
//!   `{"clusterEventType", "data"}`, `data` a JSON *string* of [`C2cMsg`] or
//!   [`GroupMsg`]. Tag from [`ClusterEventType::tag`].
//!
//! Records about one conversation keep their order on each topic: they go to
//! queue `shard % queues`, where `shard = lane(conversation) % 16` (see
//! [`lane`]); joins and leaves go to shard 0.

pub mod api;

use serde::{Deserialize, Serialize};

/// Message property naming the event type (seed 000).
pub const PROPERTY_EVENT_TYPE: &str = "event_type";
/// Message property naming the user the event is about (seed 000).
pub const PROPERTY_USER_ID: &str = "user_id";

/// A record of `PREFIX-events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The user the event is about: the sender of a message, the user who
    /// joined or left.
    pub user_id: String,
    /// The message content for `message_sent`; empty otherwise.
    pub message: String,
    /// When it happened, RFC 3339 in UTC with millisecond precision.
    pub timestamp: String,
    #[serde(rename = "type")]
    pub kind: EventType,
    /// The server message id (snowflake, decimal) of a message event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msg_id: Option<String>,
    /// The conversation of a message event (`dm:<a>:<b>` or `group:<id>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation: Option<String>,
    /// The message's position in its conversation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// The recipient of a 1:1 message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_user_id: Option<String>,
    /// The group of a group event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    /// The pod that accepted the message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// `message_recalled`: who recalled the message (its sender); absent
    /// when an admin did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recalled_by: Option<String>,
    /// `message_moderated`: what moderation decided (`message` is the
    /// content as sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moderation: Option<Moderation>,
}

/// What moderation did to a message (`message_moderated`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Moderation {
    /// `rejected` (nothing stored; the sender got `moderated`) or
    /// `rewritten` (stored with other content, as `msg_id`).
    pub action: String,
    /// `rules` (the word list) or `webhook`.
    pub by: String,
    /// The reason given to the sender of a rejected message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The `type` of an [`Event`]; also its RocketMQ tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    UserJoin,
    UserLeave,
    MessageSent,
    MessageRead,
    MessageRecalled,
    GroupCreated,
    GroupMemberAdded,
    GroupMemberRemoved,
    MessageModerated,
}

impl EventType {
    /// The wire name, e.g. `message_sent` (the tag of the record).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UserJoin => "user_join",
            Self::UserLeave => "user_leave",
            Self::MessageSent => "message_sent",
            Self::MessageRead => "message_read",
            Self::MessageRecalled => "message_recalled",
            Self::GroupCreated => "group_created",
            Self::GroupMemberAdded => "group_member_added",
            Self::GroupMemberRemoved => "group_member_removed",
            Self::MessageModerated => "message_moderated",
        }
    }
}

/// A record of `PREFIX-cluster-events`, byte-compatible with seed 001's
/// producers: `data` is a JSON document serialized into a string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterEvent {
    pub cluster_event_type: ClusterEventType,
    pub data: String,
}

impl ClusterEvent {
    /// An envelope around `data`, serialized.
    pub fn new<T: Serialize>(kind: ClusterEventType, data: &T) -> serde_json::Result<Self> {
        Ok(Self {
            cluster_event_type: kind,
            data: serde_json::to_string(data)?,
        })
    }

    /// `data` parsed as `T` ([`C2cMsg`] for the `C2C_*` types, [`GroupMsg`]
    /// for the `GROUP_*` ones).
    pub fn parse_data<'a, T: Deserialize<'a>>(&'a self) -> serde_json::Result<T> {
        serde_json::from_str(&self.data)
    }
}

/// The `clusterEventType` of a [`ClusterEvent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ClusterEventType {
    /// Every accepted 1:1 message.
    C2cSendMsg,
    /// A 1:1 message whose recipient had no live connection when it was stored
    /// (`msgStatus` 1).
    C2cOffLineMsg,
    /// The recipient acknowledged a 1:1 message.
    C2cClientReceivedAck,
    /// A 1:1 message was recalled.
    C2cWithdrawMsg,
    /// Every accepted group message (Switchboard's own, in seed 001's style).
    GroupSendMsg,
    /// A group message was recalled.
    GroupWithdrawMsg,
}

impl ClusterEventType {
    /// The wire name, e.g. `C2C_SEND_MSG`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::C2cSendMsg => "C2C_SEND_MSG",
            Self::C2cOffLineMsg => "C2C_OFF_LINE_MSG",
            Self::C2cClientReceivedAck => "C2C_CLIENT_RECEIVED_ACK",
            Self::C2cWithdrawMsg => "C2C_WITHDRAW_MSG",
            Self::GroupSendMsg => "GROUP_SEND_MSG",
            Self::GroupWithdrawMsg => "GROUP_WITHDRAW_MSG",
        }
    }

    /// The RocketMQ tag (seed 001: `C2C_SEND`, `C2C_OFFLINE`, `C2C_ACK`, and
    /// `C2C_WITHDRAW`).
    pub fn tag(self) -> &'static str {
        match self {
            Self::C2cSendMsg => "C2C_SEND",
            Self::C2cOffLineMsg => "C2C_OFFLINE",
            Self::C2cClientReceivedAck => "C2C_ACK",
            Self::C2cWithdrawMsg => "C2C_WITHDRAW",
            Self::GroupSendMsg => "GROUP_SEND",
            Self::GroupWithdrawMsg => "GROUP_WITHDRAW",
        }
    }
}

/// `msgFormat` values: seed 001's 1 = text, and Switchboard's others (the
/// `format` of a `send` frame).
pub mod msg_format {
    pub const TEXT: u8 = 1;
    pub const IMAGE: u8 = 2;
    pub const FILE: u8 = 3;
    pub const CUSTOM: u8 = 4;
}

/// `data` of a `C2C_*` [`ClusterEvent`], with seed 001's field names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct C2cMsg {
    /// The sender's idempotency key; empty when the client gave none.
    pub client_msg_id: String,
    /// The server message id (snowflake, decimal).
    pub msg_id: String,
    pub from_user_id: String,
    pub to_user_id: String,
    /// The seed protocol's `chatId` when the client gave one, else the
    /// conversation id.
    pub chat_id: String,
    pub msg_content: String,
    /// See [`msg_format`].
    pub msg_format: u8,
    /// When the message was accepted, milliseconds since the Unix epoch.
    pub msg_create_time: i64,
    /// 1 on `C2C_OFF_LINE_MSG`; absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msg_status: Option<u8>,
    /// On `C2C_WITHDRAW_MSG`: who recalled it (the sender), absent when an
    /// admin did. `msgContent` is empty then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub withdraw_user_id: Option<String>,
    /// On `C2C_WITHDRAW_MSG`: when it was recalled, ms since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub withdraw_time: Option<i64>,
}

/// `data` of a `GROUP_*` [`ClusterEvent`]: [`C2cMsg`]'s names, with `groupId`
/// in place of `toUserId`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupMsg {
    pub client_msg_id: String,
    pub msg_id: String,
    pub from_user_id: String,
    pub group_id: String,
    pub chat_id: String,
    pub msg_content: String,
    pub msg_format: u8,
    pub msg_create_time: i64,
    /// On `GROUP_WITHDRAW_MSG`, as [`C2cMsg::withdraw_user_id`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub withdraw_user_id: Option<String>,
    /// On `GROUP_WITHDRAW_MSG`, as [`C2cMsg::withdraw_time`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub withdraw_time: Option<i64>,
}

/// RFC 3339 in UTC with milliseconds (`2024-01-01T12:00:00.000Z`) of `ms`
/// since the Unix epoch.
pub fn rfc3339_millis(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let tod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        tod / 3600,
        tod / 60 % 60,
        tod % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (H. Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// FNV-1a (32 bits) of a conversation id: `lane(conversation) % 16` is the
/// conversation's outbox shard, and its records go to queue `shard % queues`
/// of both topics (with 1, 2, 4, 8 or 16 queues that is `lane % queues`).
pub fn lane(conversation: &str) -> u32 {
    // FNV-1a, 32 bits: stable across releases and languages.
    let mut h: u32 = 0x811c_9dc5;
    for b in conversation.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc_with_millis() {
        assert_eq!(rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339_millis(1_704_110_400_000),
            "2024-01-01T12:00:00.000Z"
        );
        assert_eq!(rfc3339_millis(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339_millis(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn type_names_match_serde() {
        for t in [
            EventType::UserJoin,
            EventType::MessageSent,
            EventType::GroupMemberRemoved,
        ] {
            assert_eq!(serde_json::to_value(t).unwrap(), t.as_str());
        }
        for t in [
            ClusterEventType::C2cOffLineMsg,
            ClusterEventType::C2cClientReceivedAck,
        ] {
            assert_eq!(serde_json::to_value(t).unwrap(), t.as_str());
        }
    }
}
