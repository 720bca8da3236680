//! The business streams: every accepted message becomes records on
//! `PREFIX-events` (seed 000) and `PREFIX-cluster-events` (seed 001), through
//! the transactional outbox the message store fills
//! ([`crate::backend::outbox`]) and the [`relay::Relay`] that publishes it.
//! `docs/integration.md` is the consumers' contract.

pub mod relay;

use switchboard_events::{
    C2cMsg, ClusterEvent, ClusterEventType, Event, EventType, GroupMsg, Moderation,
    PROPERTY_EVENT_TYPE, PROPERTY_USER_ID, rfc3339_millis,
};
use switchboard_rocketmq::Record;

use crate::backend::outbox::{ModerationEntry, OutboxEntry, ReadEntry, Recorded};
use crate::ids::ConversationId;
use crate::model::ChatMessage;

/// Which stream a record goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    /// `PREFIX-events`.
    Events,
    /// `PREFIX-cluster-events`.
    ClusterEvents,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Events => "events",
            Self::ClusterEvents => "cluster_events",
        }
    }
}

/// Which streams a cluster publishes (`SB_EVENTS`, `SB_CLUSTER_EVENTS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Streams {
    pub events: bool,
    pub cluster_events: bool,
}

impl Streams {
    pub fn publishes(self, stream: Stream) -> bool {
        match stream {
            Stream::Events => self.events,
            Stream::ClusterEvents => self.cluster_events,
        }
    }
}

/// The records of one outbox entry, in publishing order.
pub fn records(entry: &OutboxEntry) -> Vec<(Stream, Record)> {
    match &entry.what {
        Recorded::Message { msg, offline } => message_records(msg, *offline, &entry.pod),
        Recorded::Ack { msg } => ack_records(msg),
        Recorded::Recall { msg, by, at_ms } => {
            recall_records(msg, by.as_deref(), *at_ms, &entry.pod)
        }
        Recorded::Read { user, read, at_ms } => vec![read_record(user, read, *at_ms, entry)],
        Recorded::Group {
            action,
            group,
            users,
            at_ms,
        } => group_records(action, group, users, *at_ms, entry),
        Recorded::Moderated { entry: m, at_ms } => vec![moderated_record(m, *at_ms, entry)],
        Recorded::Join { user, at_ms } => {
            vec![presence_record(EventType::UserJoin, user, *at_ms, entry)]
        }
        Recorded::Leave { user, at_ms } => {
            vec![presence_record(EventType::UserLeave, user, *at_ms, entry)]
        }
        Recorded::Unreadable { reason } => {
            tracing::error!(shard = entry.shard, entry = %entry.id, %reason, "unreadable event outbox entry: dropped");
            Vec::new()
        }
    }
}

/// `user_join` / `user_leave`: keys `<user>:<type>:<outbox entry id>`
/// (unique) and the user id.
fn presence_record(
    kind: EventType,
    user: &str,
    at_ms: i64,
    entry: &OutboxEntry,
) -> (Stream, Record) {
    let event = Event {
        user_id: user.to_owned(),
        message: String::new(),
        timestamp: rfc3339_millis(at_ms),
        kind,
        msg_id: None,
        conversation: None,
        seq: None,
        to_user_id: None,
        group_id: None,
        pod: Some(entry.pod.clone()).filter(|p| !p.is_empty()),
        recalled_by: None,
        moderation: None,
    };
    let mut rec = record(
        kind.as_str(),
        user,
        vec![
            (PROPERTY_EVENT_TYPE.into(), kind.as_str().into()),
            (PROPERTY_USER_ID.into(), user.to_owned()),
        ],
        &event,
    );
    rec.keys[0] = format!("{user}:{}:{}", kind.as_str(), entry.id);
    (Stream::Events, rec)
}

/// `message_read`: `user_id` the reader, `seq` the watermark it read up to
/// (`msg_id` when the reader named a message), `to_user_id` the other side
/// of a direct conversation or `group_id`; keys `<reader>:message_read:<outbox
/// entry id>` (unique) and the reader.
fn read_record(user: &str, read: &ReadEntry, at_ms: i64, entry: &OutboxEntry) -> (Stream, Record) {
    let kind = EventType::MessageRead;
    let (to_user_id, group_id) = match &read.conversation {
        ConversationId::Direct(a, b) => (
            Some(if a.as_str() == user { b } else { a }.to_string()),
            None,
        ),
        ConversationId::Group(g) => (None, Some(g.to_string())),
    };
    let event = Event {
        user_id: user.to_owned(),
        message: String::new(),
        timestamp: rfc3339_millis(at_ms),
        kind,
        msg_id: read.msg_id.map(|id| id.to_string()),
        conversation: Some(read.conversation.to_string()),
        seq: read.seq,
        to_user_id,
        group_id,
        pod: Some(entry.pod.clone()).filter(|p| !p.is_empty()),
        recalled_by: None,
        moderation: None,
    };
    let mut rec = record(
        kind.as_str(),
        user,
        vec![
            (PROPERTY_EVENT_TYPE.into(), kind.as_str().into()),
            (PROPERTY_USER_ID.into(), user.to_owned()),
        ],
        &event,
    );
    rec.keys[0] = format!("{user}:{}:{}", kind.as_str(), entry.id);
    (Stream::Events, rec)
}

/// `message_moderated`: `message` is the content as sent, `moderation`
/// what was done. Keys `<sender>:message_moderated:<outbox entry id>`
/// (unique) and the sender.
fn moderated_record(m: &ModerationEntry, at_ms: i64, entry: &OutboxEntry) -> (Stream, Record) {
    let kind = EventType::MessageModerated;
    let (to_user_id, group_id) = match &m.conversation {
        ConversationId::Direct(a, b) => (
            Some(if a.as_str() == m.user { b } else { a }.to_string()),
            None,
        ),
        ConversationId::Group(g) => (None, Some(g.to_string())),
    };
    let event = Event {
        user_id: m.user.clone(),
        message: m.content.clone(),
        timestamp: rfc3339_millis(at_ms),
        kind,
        msg_id: m.msg_id.map(|id| id.to_string()),
        conversation: Some(m.conversation.to_string()),
        seq: None,
        to_user_id,
        group_id,
        pod: Some(entry.pod.clone()).filter(|p| !p.is_empty()),
        recalled_by: None,
        moderation: Some(Moderation {
            action: m.action.clone(),
            by: m.by.clone(),
            reason: m.reason.clone(),
        }),
    };
    let mut rec = record(
        kind.as_str(),
        &m.user,
        vec![
            (PROPERTY_EVENT_TYPE.into(), kind.as_str().into()),
            (PROPERTY_USER_ID.into(), m.user.clone()),
        ],
        &event,
    );
    rec.keys[0] = format!("{}:{}:{}", m.user, kind.as_str(), entry.id);
    (Stream::Events, rec)
}

/// `group_created` (`user_id` empty: made by an admin), then one
/// `group_member_added` per initial member; or one `group_member_added` /
/// `group_member_removed` per user whose membership changed. Keys
/// `<user or group>:<type>:<outbox entry id>` (unique) and the user (or the
/// group for `group_created`).
fn group_records(
    action: &str,
    group: &str,
    users: &[String],
    at_ms: i64,
    entry: &OutboxEntry,
) -> Vec<(Stream, Record)> {
    let one = |kind: EventType, user: &str, key: &str| {
        let event = Event {
            user_id: user.to_owned(),
            message: String::new(),
            timestamp: rfc3339_millis(at_ms),
            kind,
            msg_id: None,
            conversation: Some(format!("group:{group}")),
            seq: None,
            to_user_id: None,
            group_id: Some(group.to_owned()),
            pod: Some(entry.pod.clone()).filter(|p| !p.is_empty()),
            recalled_by: None,
            moderation: None,
        };
        let mut rec = record(
            kind.as_str(),
            key,
            vec![
                (PROPERTY_EVENT_TYPE.into(), kind.as_str().into()),
                (PROPERTY_USER_ID.into(), user.to_owned()),
            ],
            &event,
        );
        rec.keys[0] = format!("{key}:{}:{}", kind.as_str(), entry.id);
        (Stream::Events, rec)
    };
    let (head, each) = match action {
        "created" => (
            Some(one(EventType::GroupCreated, "", group)),
            EventType::GroupMemberAdded,
        ),
        "added" => (None, EventType::GroupMemberAdded),
        "removed" => (None, EventType::GroupMemberRemoved),
        other => {
            tracing::error!(action = other, "unknown group outbox action: dropped");
            return Vec::new();
        }
    };
    head.into_iter()
        .chain(users.iter().map(|u| one(each, u, u)))
        .collect()
}

/// `C2C_CLIENT_RECEIVED_ACK` with the acked message's data, key
/// `<msg id>:C2C_ACK`.
fn ack_records(msg: &ChatMessage) -> Vec<(Stream, Record)> {
    let (Some(to), None) = (&msg.to, &msg.group) else {
        return Vec::new();
    };
    let kind = ClusterEventType::C2cClientReceivedAck;
    let data = c2c_data(msg, to.as_str());
    ClusterEvent::new(kind, &data)
        .map(|envelope| {
            vec![(
                Stream::ClusterEvents,
                record(kind.tag(), &msg.msg_id.to_string(), Vec::new(), &envelope),
            )]
        })
        .unwrap_or_default()
}

/// Seed 001's message fields of a 1:1 message.
fn c2c_data(msg: &ChatMessage, to: &str) -> C2cMsg {
    C2cMsg {
        client_msg_id: msg.client_msg_id.clone().unwrap_or_default(),
        msg_id: msg.msg_id.to_string(),
        from_user_id: msg.from.to_string(),
        to_user_id: to.to_owned(),
        chat_id: msg
            .chat_id
            .clone()
            .unwrap_or_else(|| msg.conversation.to_string()),
        msg_content: msg.content.clone(),
        msg_format: msg.format.code(),
        msg_create_time: msg.ts,
        msg_status: None,
        withdraw_user_id: None,
        withdraw_time: None,
    }
}

/// Seed 001's message fields of a group message, `groupId` for `toUserId`.
fn group_data(msg: &ChatMessage, group: &str) -> GroupMsg {
    GroupMsg {
        client_msg_id: msg.client_msg_id.clone().unwrap_or_default(),
        msg_id: msg.msg_id.to_string(),
        from_user_id: msg.from.to_string(),
        group_id: group.to_owned(),
        chat_id: msg
            .chat_id
            .clone()
            .unwrap_or_else(|| msg.conversation.to_string()),
        msg_content: msg.content.clone(),
        msg_format: msg.format.code(),
        msg_create_time: msg.ts,
        withdraw_user_id: None,
        withdraw_time: None,
    }
}

/// The `PREFIX-events` record of a message event, keys `<msg id>:<type>`
/// and `<msg id>`.
fn message_event(
    kind: EventType,
    msg: &ChatMessage,
    at_ms: i64,
    pod: &str,
    recalled_by: Option<&str>,
) -> (Stream, Record) {
    let msg_id = msg.msg_id.to_string();
    let event = Event {
        user_id: msg.from.to_string(),
        message: msg.content.clone(),
        timestamp: rfc3339_millis(at_ms),
        kind,
        msg_id: Some(msg_id.clone()),
        conversation: Some(msg.conversation.to_string()),
        seq: Some(msg.seq),
        to_user_id: msg.to.as_ref().map(ToString::to_string),
        group_id: msg.group.as_ref().map(ToString::to_string),
        pod: Some(pod.to_owned()).filter(|p| !p.is_empty()),
        recalled_by: recalled_by.map(str::to_owned),
        moderation: None,
    };
    let properties = vec![
        (PROPERTY_EVENT_TYPE.into(), kind.as_str().into()),
        (PROPERTY_USER_ID.into(), event.user_id.clone()),
    ];
    (
        Stream::Events,
        record(kind.as_str(), &msg_id, properties, &event),
    )
}

/// `message_recalled`, then `C2C_WITHDRAW_MSG` (or `GROUP_WITHDRAW_MSG`)
/// with the tombstone's data (empty `msgContent`) and who recalled it when.
fn recall_records(
    msg: &ChatMessage,
    by: Option<&str>,
    at_ms: i64,
    pod: &str,
) -> Vec<(Stream, Record)> {
    let mut out = vec![message_event(
        EventType::MessageRecalled,
        msg,
        at_ms,
        pod,
        by,
    )];
    let msg_id = msg.msg_id.to_string();
    let envelope = match (&msg.to, &msg.group) {
        (Some(to), _) => {
            let mut data = c2c_data(msg, to.as_str());
            data.withdraw_user_id = by.map(str::to_owned);
            data.withdraw_time = Some(at_ms);
            (
                ClusterEventType::C2cWithdrawMsg,
                ClusterEvent::new(ClusterEventType::C2cWithdrawMsg, &data),
            )
        }
        (None, Some(group)) => {
            let mut data = group_data(msg, group.as_str());
            data.withdraw_user_id = by.map(str::to_owned);
            data.withdraw_time = Some(at_ms);
            (
                ClusterEventType::GroupWithdrawMsg,
                ClusterEvent::new(ClusterEventType::GroupWithdrawMsg, &data),
            )
        }
        (None, None) => return out,
    };
    if let (kind, Ok(envelope)) = envelope {
        out.push((
            Stream::ClusterEvents,
            record(kind.tag(), &msg_id, Vec::new(), &envelope),
        ));
    }
    out
}

/// `message_sent`, then `C2C_SEND_MSG` (or `GROUP_SEND_MSG`), then
/// `C2C_OFF_LINE_MSG` when the recipient was offline. Each has a key unique
/// to it (`<msg id>:<tag>`) and the message id as a second key.
fn message_records(msg: &ChatMessage, offline: bool, pod: &str) -> Vec<(Stream, Record)> {
    let msg_id = msg.msg_id.to_string();
    let mut out = vec![message_event(
        EventType::MessageSent,
        msg,
        msg.ts,
        pod,
        None,
    )];
    let mut cluster = |kind: ClusterEventType, data: serde_json::Result<ClusterEvent>| {
        if let Ok(envelope) = data {
            out.push((
                Stream::ClusterEvents,
                record(kind.tag(), &msg_id, Vec::new(), &envelope),
            ));
        }
    };
    match (&msg.to, &msg.group) {
        (Some(to), _) => {
            let mut data = c2c_data(msg, to.as_str());
            let send = ClusterEventType::C2cSendMsg;
            cluster(send, ClusterEvent::new(send, &data));
            if offline {
                data.msg_status = Some(1);
                let off = ClusterEventType::C2cOffLineMsg;
                cluster(off, ClusterEvent::new(off, &data));
            }
        }
        (None, Some(group)) => {
            let send = ClusterEventType::GroupSendMsg;
            cluster(
                send,
                ClusterEvent::new(send, &group_data(msg, group.as_str())),
            );
        }
        (None, None) => {}
    }
    out
}

fn record<T: serde::Serialize>(
    tag: &str,
    msg_id: &str,
    properties: Vec<(String, String)>,
    body: &T,
) -> Record {
    Record {
        tag: Some(tag.to_owned()),
        keys: vec![format!("{msg_id}:{tag}"), msg_id.to_owned()],
        properties,
        // Serializing these plain structs cannot fail.
        body: serde_json::to_vec(body).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests;
