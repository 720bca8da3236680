//! The seeds' own examples (seed 000's event, seed 001's ClusterEvent) parse
//! into these types and serialize back byte for byte: a consumer written for
//! the seeds reads Switchboard's records unchanged.

use switchboard_events::{C2cMsg, ClusterEvent, ClusterEventType, Event, EventType};

fn golden(name: &str) -> String {
    let path = format!("{}/tests/golden/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .trim_end()
        .to_owned()
}

#[test]
fn seed_000_event_round_trips() {
    let text = golden("seed000_event.json");
    let event: Event = serde_json::from_str(&text).expect("parses");
    assert_eq!(event.kind, EventType::MessageSent);
    assert_eq!(event.user_id, "user_001");
    assert_eq!(serde_json::to_string(&event).expect("serializes"), text);
}

#[test]
fn seed_001_cluster_event_round_trips() {
    let text = golden("seed001_cluster_event.json");
    let envelope: ClusterEvent = serde_json::from_str(&text).expect("parses");
    assert_eq!(envelope.cluster_event_type, ClusterEventType::C2cSendMsg);
    let data: C2cMsg = envelope.parse_data().expect("data parses");
    assert_eq!(data.from_user_id, "10001");
    assert_eq!(data.msg_status, None);
    // Built from the parsed fields, the envelope is the seed's, byte for byte.
    let rebuilt = ClusterEvent::new(ClusterEventType::C2cSendMsg, &data).expect("serializes");
    assert_eq!(serde_json::to_string(&rebuilt).expect("serializes"), text);
}

#[test]
fn offline_status_is_present_only_when_set() {
    let msg = C2cMsg {
        client_msg_id: String::new(),
        msg_id: "1".into(),
        from_user_id: "a".into(),
        to_user_id: "b".into(),
        chat_id: "d:a:b".into(),
        msg_content: "hi".into(),
        msg_format: 1,
        msg_create_time: 5,
        msg_status: Some(1),
        withdraw_user_id: None,
        withdraw_time: None,
    };
    let json = serde_json::to_string(&msg).expect("serializes");
    assert!(
        json.ends_with(r#""msgCreateTime":5,"msgStatus":1}"#),
        "{json}"
    );
}

#[test]
fn withdraw_fields_follow_seed_names_only_on_a_withdrawal() {
    let data = r#"{"clientMsgId":"","msgId":"1","fromUserId":"a","toUserId":"b","chatId":"dm:a:b","msgContent":"","msgFormat":2,"msgCreateTime":5,"withdrawUserId":"a","withdrawTime":9}"#;
    let msg: C2cMsg = serde_json::from_str(data).expect("parses");
    assert_eq!(
        (msg.withdraw_user_id.as_deref(), msg.withdraw_time),
        (Some("a"), Some(9))
    );
    assert_eq!(serde_json::to_string(&msg).expect("serializes"), data);
}
