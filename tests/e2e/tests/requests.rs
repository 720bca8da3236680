//! The request-response API on real Redis and real Apache RocketMQ, two
//! nodes in the group `PREFIX-api`: seed 000's request, verbatim, is
//! executed once and answered once; the same request again gets the same
//! answer without a second message; an expired one is answered `timeout`
//! and not executed; the reads and the error classes, through the
//! workspace's `RequestClient`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use serde_json::{Value, json};
use switchboard_client::{ErrorKind, RequestClient, Response};
use switchboard_e2e::tap::Tap;
use switchboard_e2e::{Cluster, http_get, http_post, wait_consumers};
use switchboard_rocketmq::names::Names;
use switchboard_rocketmq::{Producer, Record, Runtime};

const WAIT: Duration = Duration::from_secs(30);

// Seed 000's request, byte for byte.
const SEED_REQUEST: &str = r#"{
  "request_id": "req_1234567890",
  "user_id": "user_001",
  "action": "send_message",
  "data": {
    "message": "Hello, everyone!",
    "room_id": "room_001"
  }
}"#;

async fn client(c: &Cluster) -> RequestClient {
    switchboard_e2e::request_client(c, "test-backend").await
}

/// Sends a raw request body with seed 000's properties.
async fn send_raw(c: &Cluster, body: &str, id: &str, deadline_ms: Option<i64>) {
    let rt = Runtime::new().unwrap();
    let p = Producer::start(&rt, c.namesrv(), &format!("{}-raw", c.prefix))
        .await
        .unwrap();
    let mut properties = vec![
        ("request_id".to_owned(), id.to_owned()),
        ("user_id".to_owned(), "user_001".to_owned()),
        ("action".to_owned(), "send_message".to_owned()),
    ];
    if let Some(d) = deadline_ms {
        properties.push(("deadline_ms".into(), d.to_string()));
    }
    let record = Record {
        tag: Some("send_message".into()),
        keys: vec![id.to_owned()],
        properties,
        body: body.as_bytes().to_vec(),
    };
    p.send_batch(&Names::new(&c.prefix).requests_topic(), 3, &[record])
        .await
        .unwrap();
    p.shutdown().await;
    rt.shutdown().await;
}

fn answers_to(seen: &[switchboard_rocketmq::Delivery], id: &str) -> Vec<Response> {
    seen.iter()
        .filter(|d| d.properties.get("request_id").map(String::as_str) == Some(id))
        .map(|d| serde_json::from_slice(&d.body).unwrap())
        .collect()
}

async fn outcomes(c: &Cluster, outcome: &str) -> u64 {
    let mut n = 0;
    for p in &c.pods {
        let text = http_get(p.addr, "/metrics").await.1;
        n += text
            .as_str()
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                l.starts_with("switchboard_requests_total{")
                    && l.contains(&format!("outcome=\"{outcome}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum::<u64>();
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_requests_are_answered_once_the_same_way_and_expired_ones_not_executed() {
    let c = Cluster::start("requests", 2).await;
    wait_consumers(&c, "requests").await;
    let (status, _) = http_post(
        c.pod(0).addr,
        "/api/v1/groups",
        &json!({"id": "room_001", "members": ["user_001", "user_002"]}),
    )
    .await;
    assert_eq!(status, 201);
    let responses = Tap::start(c.namesrv(), &Names::new(&c.prefix).responses_topic()).await;
    let mut reader = c.pod(1).connect("user_002").await;

    // Seed 000's request, verbatim: one message, one answer.
    send_raw(&c, SEED_REQUEST, "req_1234567890", None).await;
    let got = reader.expect("message").await;
    assert_eq!(
        (
            got["from"].as_str(),
            got["group"].as_str(),
            got["content"].as_str()
        ),
        (Some("user_001"), Some("room_001"), Some("Hello, everyone!"))
    );
    let seen = responses
        .wait_until(WAIT, "the answer", |s| {
            !answers_to(s, "req_1234567890").is_empty()
        })
        .await;
    let first = answers_to(&seen, "req_1234567890").remove(0);
    assert!(first.success, "{first:?}");
    assert_eq!(first.data["status"], "sent");
    assert_eq!(first.data["message_id"], got["msg_id"]);
    let d = seen
        .iter()
        .find(|d| d.properties.get("request_id").map(String::as_str) == Some("req_1234567890"))
        .unwrap();
    assert_eq!(d.properties["response_type"], "send_message");

    // The same request again (a redelivery, or a backend's resend): the
    // same answer, not executed again, no second message.
    let executed = outcomes(&c, "ok").await;
    let repeated = outcomes(&c, "repeated").await;
    send_raw(&c, SEED_REQUEST, "req_1234567890", None).await;
    let seen = responses
        .wait_until(WAIT, "the second answer", |s| {
            answers_to(s, "req_1234567890").len() >= 2
        })
        .await;
    let answers = answers_to(&seen, "req_1234567890");
    assert_eq!(answers[1], answers[0]);
    assert_eq!(outcomes(&c, "ok").await, executed, "executed again");
    assert!(outcomes(&c, "repeated").await > repeated);
    // The same id for another request: a conflict, not the kept answer.
    let other = SEED_REQUEST.replace("Hello, everyone!", "something else");
    send_raw(&c, &other, "req_1234567890", None).await;
    let seen = responses
        .wait_until(WAIT, "the conflict", |s| {
            answers_to(s, "req_1234567890").iter().any(|a| !a.success)
        })
        .await;
    let conflict = answers_to(&seen, "req_1234567890")
        .into_iter()
        .find(|a| !a.success)
        .unwrap();
    assert_eq!(conflict.error.unwrap().code, "conflict");

    // An expired request: answered `timeout`, not executed.
    let late = SEED_REQUEST
        .replace("req_1234567890", "req_late")
        .replace("Hello, everyone!", "too late");
    send_raw(&c, &late, "req_late", Some(1)).await;
    let seen = responses
        .wait_until(WAIT, "the timeout", |s| {
            !answers_to(s, "req_late").is_empty()
        })
        .await;
    let timeout = answers_to(&seen, "req_late").remove(0);
    let error = timeout.error.unwrap();
    assert_eq!(
        (error.code.as_str(), error.kind),
        ("timeout", ErrorKind::System)
    );

    // The reads, through the client: one message in the room's history.
    let client = client(&c).await;
    let history = client
        .request("user_002", "get_history", json!({"room_id": "room_001"}))
        .await
        .unwrap();
    assert!(history.success, "{history:?}");
    let texts: Vec<&str> = history.data["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["content"].as_str())
        .collect();
    assert_eq!(texts, ["Hello, everyone!"]);
    let presence = client
        .request(
            "x",
            "get_presence",
            json!({"user_ids": ["user_002", "nobody"]}),
        )
        .await
        .unwrap();
    assert_eq!(presence.data["presence"][0]["online"], true);
    assert_eq!(presence.data["presence"][1]["online"], false);
    let online = client
        .request("x", "get_online", Value::Null)
        .await
        .unwrap();
    assert!(
        online.data["users"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u == "user_002")
    );
    let group = client
        .request("x", "get_group", json!({"group_id": "room_001"}))
        .await
        .unwrap();
    assert_eq!(group.data["members"], json!(["user_001", "user_002"]));
    // Business errors: sending again changes nothing.
    for (user, action, data, code) in [
        (
            "user_003",
            "send_message",
            json!({"message": "hi", "room_id": "room_001"}),
            "not_a_member",
        ),
        ("user_001", "dance", json!({}), "unknown_action"),
        (
            "user_001",
            "get_group",
            json!({"group_id": "nope"}),
            "not_found",
        ),
        (
            "user_001",
            "send_message",
            json!({"message": ""}),
            "invalid_field",
        ),
    ] {
        let answer = client.request(user, action, data).await.unwrap();
        let error = answer.error.unwrap_or_else(|| panic!("{action}: no error"));
        assert_eq!(
            (error.code.as_str(), error.kind),
            (code, ErrorKind::Business),
            "{action}"
        );
    }
    assert_eq!(client.waiting(), 0, "no waiter is left behind");
    client.shutdown().await;

    // Each request was executed once, by one of the two nodes; the resend
    // (and any delivery RocketMQ made twice while queues moved between the
    // two consumers) got the kept answer.
    assert!(outcomes(&c, "repeated").await >= 1);
    // (A `timeout` answer is not kept: a copy delivered again is answered
    // `timeout` again, still not executed: the history above has no "too late".)
    assert!(outcomes(&c, "timeout").await >= 1);
    assert_eq!(outcomes(&c, "ok").await, 5);
    assert!(
        outcomes(&c, "business_error").await >= 5,
        "4 errors and the conflict"
    );
}
