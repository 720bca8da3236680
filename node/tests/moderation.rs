//! Moderation on a standalone node: word rules that mask or refuse and are
//! read again when their file changes; a real HTTP webhook that allows,
//! refuses and rewrites; the webhook down (and too slow) in both fail modes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use axum::Json;
use axum::routing::post;
use serde_json::{Value, json};
use support::{Client, Server};
use switchboard_node::config::WordsAction;

/// A words file of its own, removed when dropped.
struct Words(PathBuf);

impl Words {
    fn new(name: &str, text: &str) -> Self {
        let p = std::env::temp_dir().join(format!("sb-moderation-{name}-{}", std::process::id()));
        std::fs::write(&p, text).unwrap();
        Self(p)
    }
}

impl Drop for Words {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Sends `content` from `a` to `b`: what `b` receives, or the error code.
async fn send(a: &mut Client, b: &mut Client, cid: &str, content: &str) -> Result<String, String> {
    a.send(json!({"type": "send", "client_msg_id": cid, "to": b.user(), "content": content}))
        .await;
    loop {
        let v = a.next().await;
        match v["type"].as_str() {
            Some("sent") => break,
            Some("error") => return Err(v["code"].as_str().unwrap().to_owned()),
            _ => {}
        }
    }
    Ok(b.expect("message").await["content"]
        .as_str()
        .unwrap()
        .to_owned())
}

#[tokio::test]
async fn word_rules_mask_or_refuse_and_follow_their_file() {
    let words = Words::new("mask", "# test rules\ndarn\n/h[e3]ck/\n");
    let path = words.0.clone();
    let s = Server::with(|c| c.moderation.words_file = Some(path)).await;
    let (mut ana, mut ben) = (s.connect("ana").await, s.connect("ben").await);
    assert_eq!(
        send(&mut ana, &mut ben, "m1", "fine words").await.unwrap(),
        "fine words"
    );
    assert_eq!(
        send(&mut ana, &mut ben, "m2", "DARN, h3ck!").await.unwrap(),
        "****, ****!"
    );

    // The file changes: the node reads it again, without a restart.
    std::fs::write(&words.0, "fine\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut n = 0;
    loop {
        n += 1;
        let got = send(&mut ana, &mut ben, &format!("r{n}"), "fine darn")
            .await
            .unwrap();
        if got == "**** darn" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new rules never applied: {got}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, metrics) = s.http("GET", "/metrics", None, None).await;
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains("switchboard_moderation_rules 1")
    );

    let refuse = Words::new("reject", "darn\n");
    let path = refuse.0.clone();
    let s = Server::with(|c| {
        c.moderation.words_file = Some(path);
        c.moderation.words_action = WordsAction::Reject;
    })
    .await;
    let (mut ana, mut ben) = (s.connect("ana").await, s.connect("ben").await);
    assert_eq!(
        send(&mut ana, &mut ben, "x1", "oh darn").await,
        Err("moderated".into())
    );
    // Nothing was stored.
    ana.send(json!({"type": "history", "conversation": "dm:ana:ben"}))
        .await;
    assert_eq!(ana.expect("history").await["messages"], json!([]));
}

/// A moderation service: its verdict depends on the content.
async fn webhook() -> SocketAddr {
    let app = axum::Router::new().route(
        "/moderate",
        post(|Json(m): Json<Value>| async move {
            let content = m["content"].as_str().unwrap_or_default().to_owned();
            assert_eq!(m["from"], "ana");
            assert_eq!(m["conversation"], "dm:ana:ben");
            match content.as_str() {
                "reject me" => Json(json!({"action": "reject", "reason": "not here"})),
                "rewrite me" => Json(json!({"action": "rewrite", "content": "[edited]"})),
                "slow" => {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    Json(json!({"action": "allow"}))
                }
                _ => Json(json!({"action": "allow"})),
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

#[tokio::test]
async fn the_webhook_allows_refuses_rewrites_and_fails_as_configured() {
    let addr = webhook().await;
    let url = format!("http://{addr}/moderate");
    let s = Server::with(|c| {
        c.moderation.webhook_url = Some(url.clone());
        c.moderation.webhook_timeout = Duration::from_millis(300);
    })
    .await;
    let (mut ana, mut ben) = (s.connect("ana").await, s.connect("ben").await);
    assert_eq!(
        send(&mut ana, &mut ben, "w1", "hello").await.unwrap(),
        "hello"
    );
    assert_eq!(
        send(&mut ana, &mut ben, "w2", "rewrite me").await.unwrap(),
        "[edited]"
    );
    assert_eq!(
        send(&mut ana, &mut ben, "w3", "reject me").await,
        Err("moderated".into())
    );
    // Too slow: a failure; fail closed (the default) refuses with `unavailable`.
    assert_eq!(
        send(&mut ana, &mut ben, "w4", "slow").await,
        Err("unavailable".into())
    );

    // The webhook down, fail open: allowed, and counted.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down = format!("http://{}/moderate", closed.local_addr().unwrap());
    drop(closed);
    let open = Server::with(|c| {
        c.moderation.webhook_url = Some(down.clone());
        c.moderation.fail_open = true;
    })
    .await;
    let (mut ana, mut ben) = (open.connect("ana").await, open.connect("ben").await);
    assert_eq!(
        send(&mut ana, &mut ben, "d1", "anyone?").await.unwrap(),
        "anyone?"
    );
    let (_, metrics) = open.http("GET", "/metrics", None, None).await;
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains("switchboard_moderation_total{decision=\"failed_open\",by=\"webhook\"} 1"),
        "{metrics}"
    );
    // The webhook down, fail closed: refused.
    let shut = Server::with(|c| c.moderation.webhook_url = Some(down.clone())).await;
    let (mut ana, mut ben) = (shut.connect("ana").await, shut.connect("ben").await);
    assert_eq!(
        send(&mut ana, &mut ben, "d2", "anyone?").await,
        Err("unavailable".into())
    );
}

#[test]
fn a_bad_webhook_url_or_words_file_stops_the_node() {
    let mut cfg = switchboard_node::Config::defaults();
    cfg.moderation.webhook_url = Some("https://example.invalid/x".into());
    let e = switchboard_node::Node::standalone(cfg).unwrap_err();
    assert!(e.contains("SB_MODERATION_WEBHOOK_URL"), "{e}");
    let mut cfg = switchboard_node::Config::defaults();
    cfg.moderation.words_file = Some("/nonexistent/words".into());
    let e = switchboard_node::Node::standalone(cfg).unwrap_err();
    assert!(e.contains("SB_MODERATION_WORDS_FILE"), "{e}");
}
