//! Bad input, floods, slow readers, idle clients and limits: each gets a
//! clear answer and never a panic; the connection stays usable where the
//! protocol says so.
#![allow(clippy::unwrap_used)]

mod support;

use serde_json::json;
use support::{Client, Server};
use tokio_tungstenite::tungstenite::Message;

/// Sends `frame`, expects an error with `code`, then proves the connection
/// still works.
async fn refused(c: &mut Client, frame: Message, code: &str) {
    c.send_raw(frame.clone()).await;
    let e = c.expect("error").await;
    assert_eq!(e["code"], code, "for {frame:?}: {e}");
    assert!(e["reason"].as_str().is_some_and(|r| !r.is_empty()));
    assert!(
        c.drain_until_pong().await.is_empty(),
        "still usable after {frame:?}"
    );
}

#[tokio::test]
async fn each_kind_of_bad_input_gets_its_code_and_the_connection_survives() {
    let s = Server::start().await;
    let mut c = s.connect("eve").await;
    let t = |s: &str| Message::text(s.to_owned());
    refused(&mut c, t("{not json"), "bad_json").await;
    refused(&mut c, t("[1,2,3]"), "bad_json").await;
    refused(&mut c, t(r#"{"content":"no type"}"#), "missing_field").await;
    refused(&mut c, t(r#"{"type":"teleport"}"#), "unknown_type").await;
    refused(&mut c, t(r#"{"type":"send","to":"bob"}"#), "missing_field").await;
    refused(
        &mut c,
        t(r#"{"type":"send","content":"who to?"}"#),
        "missing_field",
    )
    .await;
    refused(
        &mut c,
        t(r#"{"type":"send","to":"b@d:id","content":"x"}"#),
        "invalid_field",
    )
    .await;
    refused(
        &mut c,
        t(r#"{"type":"send","to":"bob","content":42}"#),
        "invalid_field",
    )
    .await;
    refused(
        &mut c,
        t(r#"{"type":"ack","msg_ids":"nope"}"#),
        "invalid_field",
    )
    .await;
    refused(
        &mut c,
        t(r#"{"type":"history","conversation":"dm:x:y"}"#),
        "not_a_member",
    )
    .await;
    refused(
        &mut c,
        t(r#"{"type":"send","group":"secret","content":"x"}"#),
        "not_a_member",
    )
    .await;
    let big = "x".repeat(4097);
    refused(
        &mut c,
        t(&json!({"type":"send","to":"bob","content":big}).to_string()),
        "content_too_large",
    )
    .await;
    refused(
        &mut c,
        Message::binary(vec![0u8, 1, 2, 3]),
        "binary_not_supported",
    )
    .await;
    // Exactly at the limit is fine.
    let ok = c.say("bob", "max", &"y".repeat(4096)).await;
    assert_eq!(ok["seq"], 1);
    // Multi-byte content is measured in bytes: 2000 x 3 bytes > 4096.
    refused(
        &mut c,
        t(&json!({"type":"send","to":"bob","content":"€".repeat(2000)}).to_string()),
        "content_too_large",
    )
    .await;

    let (_, metrics) = support::http_text(s.addr, "GET", "/metrics", None, None).await;
    assert!(
        metrics.contains(r#"switchboard_errors_total{code="bad_json"} 2"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"switchboard_errors_total{code="binary_not_supported"} 1"#));
}

#[tokio::test]
async fn a_frame_over_the_hard_limit_closes_with_1009() {
    let s = Server::with(|c| {
        c.max_content_bytes = 100;
        c.max_frame_bytes = 1000;
    })
    .await;
    let mut c = s.connect("big").await;
    c.send(json!({"type": "send", "to": "bob", "content": "z".repeat(5000)}))
        .await;
    assert_eq!(c.close_code().await, Some(1009));
}

#[tokio::test]
async fn a_flood_is_rate_limited_and_the_connection_recovers() {
    let s = Server::with(|c| {
        c.rate_limit = 5;
        c.rate_burst = 5;
    })
    .await;
    let mut c = s.connect("fly").await;
    for i in 0..20 {
        c.send(json!({"type": "send", "client_msg_id": format!("f{i}"), "to": "bob", "content": "spam"})).await;
    }
    let (mut sent, mut limited) = (0, Vec::new());
    for _ in 0..20 {
        let v = c.next().await;
        match v["type"].as_str().unwrap() {
            "sent" => sent += 1,
            "error" => {
                assert_eq!(v["code"], "rate_limited");
                limited.push(v["client_msg_id"].as_str().unwrap().to_owned());
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(
        (5..=7).contains(&sent),
        "burst of 5 (+ refill) accepted, got {sent}"
    );
    assert_eq!(sent + limited.len(), 20);
    // The refused ones name their client_msg_id so the client can resend.
    assert!(limited.contains(&"f19".to_owned()));
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert!(c.drain_until_pong().await.is_empty());
}

#[tokio::test]
async fn a_client_that_does_not_read_is_closed_with_4001_and_loses_nothing() {
    let s = Server::with(|c| {
        c.outbound_buffer = 16;
        c.rate_limit = 100_000;
        c.rate_burst = 100_000;
    })
    .await;
    let mut sender = s.connect("fast").await;
    let mut slow = s.connect("slow").await;
    // `slow` never reads; socket buffers fill, then its queue of 16, then it
    // is closed. 4 KB x 4000 = 16 MB, more than loopback buffers hold.
    let body = "s".repeat(4000);
    let n = 4000;
    for i in 0..n {
        // Lockstep, so the sender itself never has more than one reply queued.
        assert_eq!(
            sender.say("slow", &format!("s{i}"), &body).await["seq"],
            i + 1
        );
    }
    assert_eq!(slow.close_code().await, Some(4001));
    let (_, metrics) = support::http_text(s.addr, "GET", "/metrics", None, None).await;
    assert!(
        metrics.contains(r#"switchboard_connections_closed_total{reason="slow_consumer"} 1"#),
        "{metrics}"
    );
    // Nothing lost: every message waits in the inbox.
    let mut again = s.connect("slow").await;
    let mut got = 0;
    while got < n {
        let m = again.expect("message").await;
        assert_eq!(m["client_msg_id"], format!("s{got}"), "in order");
        got += 1;
    }
}

#[tokio::test]
async fn a_silent_client_is_closed_after_three_heartbeats() {
    let s = Server::with(|c| c.heartbeat_interval = std::time::Duration::from_secs(1)).await;
    let mut c = s.connect("mute").await;
    assert_eq!(c.welcome["heartbeat_interval_ms"], 1000);
    let started = std::time::Instant::now();
    assert_eq!(c.close_code().await, Some(4000));
    assert!(started.elapsed() >= std::time::Duration::from_millis(2500));
}

#[tokio::test]
async fn connections_over_the_limit_get_503() {
    let s = Server::with(|c| c.max_connections = 2).await;
    let _a = s.connect("c1").await;
    let b = s.connect("c2").await;
    let (st, body) = Client::refusal(s.addr, "/ws?userId=c3").await;
    assert_eq!((st, body["code"].as_str()), (503, Some("server_full")));
    b.close().await;
    // The slot is released when a connection ends.
    let mut c = s.connect("c3").await;
    assert!(c.drain_until_pong().await.is_empty());
}

#[tokio::test]
async fn a_client_that_never_reads_again_is_dropped_when_its_writes_stall() {
    // A write pending for 3 heartbeat intervals (6 s here) ends the connection.
    let s = Server::with(|c| {
        c.heartbeat_interval = std::time::Duration::from_secs(2);
        c.outbound_buffer = 16;
        c.rate_limit = 100_000;
        c.rate_burst = 100_000;
    })
    .await;
    let mut sender = s.connect("fast").await;
    // Held open and never read: its 4001 close frame cannot be written either.
    let _stuck = s.connect("stuck").await;
    let body = "s".repeat(4000);
    let n = 4000;
    for i in 0..n {
        sender.say("stuck", &format!("s{i}"), &body).await;
    }
    // Its 4001 close frame cannot be written: the stalled write is given up,
    // so the connection is closed and unregistered although the client holds it.
    let closed = r#"switchboard_connections_closed_total{reason="slow_consumer"} 1"#;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (_, metrics) = support::http_text(s.addr, "GET", "/metrics", None, None).await;
        if metrics.contains(closed) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the stuck connection was never closed: {metrics}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // Nothing lost: every message waits in the inbox.
    let mut again = s.connect("stuck").await;
    for i in 0..n {
        let m = again.expect("message").await;
        assert_eq!(m["client_msg_id"], format!("s{i}"), "in order");
    }
}
