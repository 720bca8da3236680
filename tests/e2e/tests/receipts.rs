//! Stored receipts across pods on real Redis, and the `message_read` event
//! on real RocketMQ: a sender who was away learns what was delivered and
//! read while it was gone, from whichever pod it comes back to.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use serde_json::json;
use switchboard_e2e::Cluster;
use switchboard_e2e::tap::{describe, streams, with_tag};
use switchboard_events::{Event, EventType};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_back_on_another_pod_learns_delivered_and_read() {
    let c = Cluster::start("receipts", 2).await;
    let (events, cluster) = streams(&c).await;
    let mut ana = c.pod(0).connect("ana").await;
    let mut ids = Vec::new();
    for i in 1..=3 {
        ids.push(ana.say("ben", &format!("s{i}"), &format!("m{i}")).await["msg_id"].clone());
    }
    ana.close().await;

    let mut ben = c.pod(1).connect("ben").await;
    for id in &ids {
        assert_eq!(&ben.expect("message").await["msg_id"], id);
    }
    ben.send(json!({"type": "ack", "msg_ids": [ids[0], ids[1]]}))
        .await;
    ben.send(json!({"type": "read", "conversation": "dm:ana:ben", "msg_id": ids[0]}))
        .await;
    // A repeated read raises nothing: no second event.
    ben.send(json!({"type": "read", "conversation": "dm:ana:ben", "seq": 1}))
        .await;
    ben.send(json!({"type": "ping"})).await;
    ben.expect("pong").await;

    let mut ana = c.pod(1).connect("ana").await;
    ana.send(json!({"type": "resume", "conversations": {"dm:ana:ben": 0}}))
        .await;
    let page = ana.expect("history").await;
    let status: Vec<_> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.get("status").and_then(|s| s.as_str()))
        .collect();
    assert_eq!(status, [Some("read"), Some("delivered"), None], "{page}");
    assert_eq!(page["read"], json!({"ben": 1}));

    let seen = events
        .wait_until(WAIT, "message_read", |s| {
            !with_tag(s, "message_read").is_empty() && with_tag(s, "message_sent").len() >= 3
        })
        .await;
    // Give a second read event time to show up, if one were (wrongly) sent.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let seen_now = events.seen();
    let reads = with_tag(&seen_now, "message_read");
    assert_eq!(
        reads.len(),
        1,
        "{:?}",
        reads.iter().map(|d| describe(d)).collect::<Vec<_>>()
    );
    let read: Event = serde_json::from_slice(&reads[0].body).unwrap();
    assert_eq!(read.kind, EventType::MessageRead);
    assert_eq!(
        (
            read.user_id.as_str(),
            read.seq,
            read.to_user_id.as_deref(),
            read.msg_id.as_ref().map(|id| json!(id))
        ),
        ("ben", Some(1), Some("ana"), Some(ids[0].clone()))
    );
    assert_eq!(
        reads[0].properties.get("user_id").map(String::as_str),
        Some("ben")
    );
    // On the conversation's queue, after the messages it read.
    let pos = |tag: &str| {
        seen.iter()
            .position(|d| d.tag.as_deref() == Some(tag))
            .unwrap()
    };
    assert!(pos("message_sent") < pos("message_read"));
    events.stop().await;
    cluster.stop().await;
}
