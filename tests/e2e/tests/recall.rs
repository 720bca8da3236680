//! Recall across pods on real Redis and real RocketMQ: the `recalled` push
//! crosses the bus, an offline recipient never receives the content, and
//! both business streams carry the recall after the message, read by an
//! independent consumer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use serde_json::{Value, json};
use switchboard_e2e::Cluster;
use switchboard_e2e::tap::{describe, streams, with_tag};
use switchboard_events::{C2cMsg, ClusterEvent, Event, EventType};

const WAIT: Duration = Duration::from_secs(30);

fn id(v: &Value) -> String {
    v["msg_id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recall_crosses_pods_reaches_the_streams_and_hides_the_content() {
    let c = Cluster::start("recall", 2).await;
    let (events, cluster) = streams(&c).await;
    let mut ana = c.pod(0).connect("ana").await;
    let mut ben = c.pod(1).connect("ben").await;

    ana.send(json!({"type": "send", "client_msg_id": "r1", "to": "ben", "content": "wrong.png", "format": "image"}))
        .await;
    let to_ben = ana.expect("sent").await;
    let got = ben.expect("message").await;
    assert_eq!(
        (got["format"].as_str(), got["content"].as_str()),
        (Some("image"), Some("wrong.png"))
    );
    // Cy has never connected.
    let to_cy = ana.say("cy", "r2", "for cy's eyes only").await;

    for (conv, sent) in [("dm:ana:ben", &to_ben), ("dm:ana:cy", &to_cy)] {
        ana.send(json!({"type": "recall", "conversation": conv, "msg_id": sent["msg_id"]}))
            .await;
        assert_eq!(ana.expect("recalled").await["msg_id"], sent["msg_id"]);
    }
    // Ben is on the other pod: the push crossed the bus.
    let r = ben.expect("recalled").await;
    assert_eq!(
        (r["msg_id"].as_str(), r["by"].as_str(), r["seq"].as_u64()),
        (Some(id(&to_ben).as_str()), Some("ana"), Some(1))
    );
    // Cy connects to pod 1: nothing to replay (a replayed `message` would
    // come before the history page and fail `expect`), and the history has
    // only the tombstone.
    let mut cy = c.pod(1).connect("cy").await;
    cy.send(json!({"type": "history", "conversation": "dm:ana:cy"}))
        .await;
    let h = cy.expect("history").await;
    assert_eq!(h["messages"].as_array().unwrap().len(), 1);
    assert_eq!(
        (
            h["messages"][0]["recalled"].as_bool(),
            h["messages"][0]["content"].as_str()
        ),
        (Some(true), Some(""))
    );

    // PREFIX-events: message_recalled for both, by ana, without content.
    let seen = events
        .wait_until(WAIT, "2 message_recalled", |s| {
            with_tag(s, "message_recalled").len() >= 2
        })
        .await;
    for d in with_tag(&seen, "message_recalled") {
        let e: Event = serde_json::from_slice(&d.body).unwrap();
        assert_eq!(e.kind, EventType::MessageRecalled);
        assert_eq!(
            (
                e.user_id.as_str(),
                e.message.as_str(),
                e.recalled_by.as_deref()
            ),
            ("ana", "", Some("ana")),
            "{}",
            describe(d)
        );
        assert_eq!(
            d.properties.get("event_type").map(String::as_str),
            Some("message_recalled")
        );
        let msg_id = e.msg_id.unwrap();
        // Keys: the unique `<msg id>:message_recalled`, then the msg id.
        assert_eq!(
            d.key.as_deref(),
            Some(format!("{msg_id}:message_recalled {msg_id}").as_str())
        );
    }

    // PREFIX-cluster-events: C2C_WITHDRAW_MSG after its C2C_SEND_MSG (same
    // conversation, same queue), with seed 001's names, the format and no
    // content.
    let seen = cluster
        .wait_until(WAIT, "2 C2C_WITHDRAW", |s| {
            with_tag(s, "C2C_WITHDRAW").len() >= 2
        })
        .await;
    let position = |tag: &str, msg_id: &str| {
        seen.iter()
            .position(|d| {
                d.tag.as_deref() == Some(tag)
                    && serde_json::from_slice::<ClusterEvent>(&d.body)
                        .unwrap()
                        .parse_data::<C2cMsg>()
                        .unwrap()
                        .msg_id
                        == msg_id
            })
            .unwrap_or_else(|| panic!("no {tag} for {msg_id}"))
    };
    for sent in [&to_ben, &to_cy] {
        assert!(position("C2C_SEND", &id(sent)) < position("C2C_WITHDRAW", &id(sent)));
    }
    let withdraw = &seen[position("C2C_WITHDRAW", &id(&to_ben))];
    let envelope: ClusterEvent = serde_json::from_slice(&withdraw.body).unwrap();
    assert_eq!(envelope.cluster_event_type.as_str(), "C2C_WITHDRAW_MSG");
    let data: C2cMsg = envelope.parse_data().unwrap();
    assert_eq!(
        (
            data.msg_content.as_str(),
            data.msg_format,
            data.withdraw_user_id.as_deref(),
            data.to_user_id.as_str()
        ),
        ("", 2, Some("ana"), "ben")
    );
    assert!(data.withdraw_time.unwrap() >= data.msg_create_time);
    let send = &seen[position("C2C_SEND", &id(&to_ben))];
    let data: C2cMsg = serde_json::from_slice::<ClusterEvent>(&send.body)
        .unwrap()
        .parse_data()
        .unwrap();
    assert_eq!(
        data.msg_format, 2,
        "the image's format reaches the business"
    );
    events.stop().await;
    cluster.stop().await;
}
