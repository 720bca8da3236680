//! Stored receipts over real WebSocket connections: a sender who was away
//! learns from `resume` / `history` what was delivered and read meanwhile.
#![allow(clippy::unwrap_used)]

mod support;

use serde_json::json;
use support::Server;

#[tokio::test]
async fn a_sender_who_reconnects_sees_what_was_delivered_and_read() {
    let s = Server::start().await;
    let mut amy = s.connect("amy").await;
    let mut ids = Vec::new();
    for i in 1..=3 {
        ids.push(amy.say("bea", &format!("s{i}"), &format!("m{i}")).await["msg_id"].clone());
    }
    amy.close().await;

    // While amy is away, bea gets all three, acks two and reads the first.
    let mut bea = s.connect("bea").await;
    assert_eq!(bea.drain_until_pong().await.len(), 3);
    bea.send(json!({"type": "ack", "msg_ids": [ids[0], ids[1]]}))
        .await;
    bea.send(json!({"type": "read", "conversation": "dm:amy:bea", "msg_id": ids[0]}))
        .await;
    bea.drain_until_pong().await;
    // A lower watermark later changes nothing.
    bea.send(json!({"type": "read", "conversation": "dm:amy:bea", "seq": 0}))
        .await;
    bea.close().await;

    let mut amy = s.connect("amy").await;
    amy.send(json!({"type": "resume", "conversations": {"dm:amy:bea": 0}}))
        .await;
    let page = amy.expect("history").await;
    let status: Vec<_> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.get("status").and_then(|s| s.as_str()))
        .collect();
    assert_eq!(status, [Some("read"), Some("delivered"), None]);
    assert_eq!(page["read"], json!({"bea": 1}));
}

#[tokio::test]
async fn group_pages_carry_every_members_read_watermark() {
    let s = Server::start().await;
    let (st, body) = s
        .http(
            "POST",
            "/api/v1/groups",
            Some(json!({"id": "den", "members": ["fay", "gil", "hal"]})),
            None,
        )
        .await;
    assert_eq!(st, 201, "{body}");
    let mut fay = s.connect("fay").await;
    let mut gil = s.connect("gil").await;
    for i in 1..=2 {
        fay.send(json!({"type": "send", "client_msg_id": format!("g{i}"), "group": "den", "content": "hi"}))
            .await;
        fay.expect("sent").await;
        gil.expect("message").await;
    }
    gil.send(json!({"type": "read", "conversation": "group:den", "seq": 2}))
        .await;
    assert_eq!(fay.expect("read").await["seq"], 2);
    fay.send(json!({"type": "history", "conversation": "group:den"}))
        .await;
    let page = fay.expect("history").await;
    assert_eq!(page["read"], json!({"gil": 2}));
    assert!(
        page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m.get("status").is_none()),
        "group messages carry watermarks, not per-message status: {page}"
    );
}
