//! Recall over real WebSocket connections: tombstones, inboxes, every
//! device told, the refusals, the admin API.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::Server;

fn recall(conversation: &str, msg_id: &Value) -> Value {
    json!({"type": "recall", "conversation": conversation, "msg_id": msg_id})
}

#[tokio::test]
async fn a_sender_recalls_and_an_offline_recipient_never_sees_the_content() {
    let s = Server::start().await;
    let mut amy = s.connect("amy").await;
    let mut amy2 = s.connect("amy").await;
    amy.send(json!({"type": "send", "client_msg_id": "p1", "to": "bea", "content": "secret.png", "format": "image"}))
        .await;
    let first = amy.expect("sent").await;
    assert_eq!(amy2.expect("message").await["format"], "image");
    let second = amy.say("bea", "p2", "keep me").await;
    amy2.expect("message").await;

    amy.send(recall("dm:amy:bea", &first["msg_id"])).await;
    for device in [&mut amy, &mut amy2] {
        let r = device.expect("recalled").await;
        assert_eq!(
            (r["msg_id"].clone(), r["seq"].as_u64(), r["by"].as_str()),
            (first["msg_id"].clone(), Some(1), Some("amy"))
        );
        assert_eq!(r["conversation"], "dm:amy:bea");
    }

    // Bea was offline: her inbox holds only the message that stays.
    let mut bea = s.connect("bea").await;
    let replay = bea.drain_until_pong().await;
    assert_eq!(replay.len(), 1, "{replay:?}");
    assert_eq!(replay[0]["msg_id"], second["msg_id"]);
    assert!(!replay.iter().any(|m| m.to_string().contains("secret.png")));

    // History keeps a tombstone in place: same id and seq, no content.
    bea.send(json!({"type": "history", "conversation": "dm:amy:bea"}))
        .await;
    let h = bea.expect("history").await;
    let tomb = &h["messages"][0];
    assert_eq!(
        (
            tomb["msg_id"].clone(),
            tomb["seq"].as_u64(),
            tomb["recalled"].as_bool(),
            tomb["content"].as_str()
        ),
        (first["msg_id"].clone(), Some(1), Some(true), Some(""))
    );
    assert_eq!(h["messages"][1]["content"], "keep me");

    // A resend of the recalled message's client_msg_id brings nothing back.
    amy.send(json!({"type": "send", "client_msg_id": "p1", "to": "bea", "content": "secret.png"}))
        .await;
    let dup = amy.expect("sent").await;
    assert_eq!(
        (dup["duplicate"].as_bool(), dup["msg_id"].clone()),
        (Some(true), first["msg_id"].clone())
    );
    let pushed = bea.expect("message").await;
    assert_eq!(
        (pushed["recalled"].as_bool(), pushed["content"].as_str()),
        (Some(true), Some(""))
    );

    // Recalling it again is not an error and tells everyone again.
    amy.send(recall("dm:amy:bea", &first["msg_id"])).await;
    assert_eq!(amy.expect("recalled").await["msg_id"], first["msg_id"]);
    assert_eq!(bea.expect("recalled").await["msg_id"], first["msg_id"]);
}

#[tokio::test]
async fn refusals_have_stable_codes() {
    let s = Server::start().await;
    let mut cai = s.connect("cai").await;
    let mut dov = s.connect("dov").await;
    let mut eve = s.connect("eve").await;
    let sent = cai.say("dov", "q1", "mine").await;
    dov.expect("message").await;

    dov.send(recall("dm:cai:dov", &sent["msg_id"])).await;
    assert_eq!(dov.expect("error").await["code"], "not_yours");
    eve.send(recall("dm:cai:dov", &sent["msg_id"])).await;
    assert_eq!(eve.expect("error").await["code"], "not_a_member");
    cai.send(recall("dm:cai:dov", &json!("12345"))).await;
    assert_eq!(cai.expect("error").await["code"], "unknown_message");
    cai.send(json!({"type": "recall", "msg_id": sent["msg_id"]}))
        .await;
    assert_eq!(cai.expect("error").await["code"], "missing_field");
    // Nothing was recalled by any of these.
    assert!(dov.drain_until_pong().await.is_empty());

    let tight = Server::with(|c| c.recall_window = Duration::ZERO).await;
    let mut cai = tight.connect("cai").await;
    let sent = cai.say("dov", "q1", "too late").await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    cai.send(recall("dm:cai:dov", &sent["msg_id"])).await;
    assert_eq!(cai.expect("error").await["code"], "too_late");
}

#[tokio::test]
async fn an_admin_recalls_any_group_message_and_every_member_is_told() {
    let s = Server::start().await;
    let (st, body) = s
        .http(
            "POST",
            "/api/v1/groups",
            Some(json!({"id": "crew", "members": ["fay", "gil", "hal"]})),
            None,
        )
        .await;
    assert_eq!(st, 201, "{body}");
    let mut fay = s.connect("fay").await;
    let mut gil = s.connect("gil").await;
    fay.send(json!({"type": "send", "client_msg_id": "g1", "group": "crew", "content": "oops"}))
        .await;
    let sent = fay.expect("sent").await;
    gil.expect("message").await;

    let (st, tomb) = s
        .http(
            "POST",
            "/api/v1/messages/recall",
            Some(json!({"conversation": "group:crew", "msg_id": sent["msg_id"]})),
            None,
        )
        .await;
    assert_eq!(st, 200, "{tomb}");
    assert_eq!(
        (tomb["recalled"].as_bool(), tomb["content"].as_str()),
        (Some(true), Some(""))
    );
    for member in [&mut fay, &mut gil] {
        let r = member.expect("recalled").await;
        assert_eq!(r["msg_id"], sent["msg_id"]);
        assert!(r.get("by").is_none(), "an admin recall names no user: {r}");
    }
    // Hal was offline: the group message left his inbox too.
    let mut hal = s.connect("hal").await;
    assert!(hal.drain_until_pong().await.is_empty());

    let (st, e) = s
        .http(
            "POST",
            "/api/v1/messages/recall",
            Some(json!({"conversation": "group:crew", "msg_id": "1"})),
            None,
        )
        .await;
    assert_eq!((st, e["code"].as_str()), (404, Some("unknown_message")));
    let (st, e) = s
        .http(
            "POST",
            "/api/v1/messages/recall",
            Some(json!({"conversation": "nope", "msg_id": "1"})),
            None,
        )
        .await;
    assert_eq!((st, e["code"].as_str()), (400, Some("invalid_field")));
}
