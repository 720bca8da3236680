//! The records of each kind of outbox entry.

use super::*;
use crate::ids::{ConversationId, MsgId, UserId};

fn entry(offline: bool) -> OutboxEntry {
    let (a, b) = (
        UserId::parse("alice").unwrap(),
        UserId::parse("bob").unwrap(),
    );
    let msg = ChatMessage {
        msg_id: MsgId(42),
        conversation: ConversationId::direct(&a, &b),
        seq: 3,
        from: a,
        to: Some(b),
        group: None,
        content: "hi".into(),
        format: Default::default(),
        recalled: false,
        status: None,
        ts: 1_704_110_400_000,
        client_msg_id: Some("c1".into()),
        chat_id: None,
    };
    OutboxEntry {
        shard: 0,
        id: "1-0".into(),
        what: Recorded::Message { msg, offline },
        pod: "chat-0".into(),
    }
}

#[test]
fn an_offline_direct_message_makes_three_records_in_order() {
    let recs = records(&entry(true));
    let tags: Vec<_> = recs.iter().map(|(_, r)| r.tag.clone().unwrap()).collect();
    assert_eq!(tags, ["message_sent", "C2C_SEND", "C2C_OFFLINE"]);
    let event: Event = serde_json::from_slice(&recs[0].1.body).unwrap();
    assert_eq!(event.timestamp, "2024-01-01T12:00:00.000Z");
    assert_eq!(event.seq, Some(3));
    assert_eq!(recs[0].1.keys, ["42:message_sent", "42"]);
    let off: ClusterEvent = serde_json::from_slice(&recs[2].1.body).unwrap();
    let data: C2cMsg = off.parse_data().unwrap();
    assert_eq!(
        (data.msg_status, data.chat_id.as_str()),
        (Some(1), "dm:alice:bob")
    );
}

#[test]
fn an_online_direct_message_has_no_offline_record() {
    assert_eq!(records(&entry(false)).len(), 2);
}

#[test]
fn a_leave_is_one_event_keyed_by_user_and_entry() {
    let leave = OutboxEntry {
        shard: 0,
        id: "7-1".into(),
        what: Recorded::Leave {
            user: "bob".into(),
            at_ms: 0,
        },
        pod: "chat-1".into(),
    };
    let recs = records(&leave);
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].1.keys, ["bob:user_leave:7-1", "bob"]);
    let event: Event = serde_json::from_slice(&recs[0].1.body).unwrap();
    assert_eq!(
        (event.kind, event.message.as_str()),
        (EventType::UserLeave, "")
    );
    assert_eq!(event.pod.as_deref(), Some("chat-1"));
}

#[test]
fn a_recall_is_an_event_and_a_withdrawal_with_no_content() {
    let Recorded::Message { mut msg, .. } = entry(false).what else {
        unreachable!()
    };
    msg.content.clear();
    msg.recalled = true;
    msg.format = crate::model::MsgFormat::File;
    let recall = OutboxEntry {
        shard: 0,
        id: "1704110460000-0".into(),
        what: Recorded::Recall {
            msg,
            by: Some("alice".into()),
            at_ms: 1_704_110_460_000,
        },
        pod: "chat-1".into(),
    };
    let recs = records(&recall);
    let tags: Vec<_> = recs.iter().map(|(_, r)| r.tag.clone().unwrap()).collect();
    assert_eq!(tags, ["message_recalled", "C2C_WITHDRAW"]);
    let event: Event = serde_json::from_slice(&recs[0].1.body).unwrap();
    assert_eq!(
        (
            event.timestamp.as_str(),
            event.recalled_by.as_deref(),
            event.message.as_str()
        ),
        ("2024-01-01T12:01:00.000Z", Some("alice"), "")
    );
    assert_eq!(recs[1].1.keys, ["42:C2C_WITHDRAW", "42"]);
    let data: C2cMsg = serde_json::from_slice::<ClusterEvent>(&recs[1].1.body)
        .unwrap()
        .parse_data()
        .unwrap();
    assert_eq!(
        (
            data.msg_format,
            data.withdraw_time,
            data.msg_content.as_str()
        ),
        (3, Some(1_704_110_460_000), "")
    );
}

#[test]
fn a_refused_message_is_one_moderated_event_with_what_was_sent() {
    let refused = OutboxEntry {
        shard: 3,
        id: "9-2".into(),
        what: Recorded::Moderated {
            entry: ModerationEntry {
                action: "rejected".into(),
                by: "rules".into(),
                reason: Some("a word on the list".into()),
                user: "bob".into(),
                conversation: ConversationId::parse("dm:alice:bob").unwrap(),
                content: "darn".into(),
                msg_id: None,
                client_msg_id: Some("c9".into()),
            },
            at_ms: 1_704_110_400_000,
        },
        pod: "chat-1".into(),
    };
    let recs = records(&refused);
    assert_eq!(recs.len(), 1);
    let (stream, rec) = &recs[0];
    assert_eq!(*stream, Stream::Events);
    assert_eq!(rec.tag.as_deref(), Some("message_moderated"));
    assert_eq!(rec.keys, ["bob:message_moderated:9-2", "bob"]);
    let event: Event = serde_json::from_slice(&rec.body).unwrap();
    assert_eq!(
        (
            event.user_id.as_str(),
            event.message.as_str(),
            event.to_user_id.as_deref()
        ),
        ("bob", "darn", Some("alice"))
    );
    let m = event.moderation.unwrap();
    assert_eq!(
        (m.action.as_str(), m.by.as_str(), m.reason.as_deref()),
        ("rejected", "rules", Some("a word on the list"))
    );
}
