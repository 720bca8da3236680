//! Authentication at the upgrade and graceful shutdown, including the real
//! binary receiving SIGTERM.
#![allow(clippy::unwrap_used)]

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;
use support::{Client, Proc, Server, http_text};

const SECRET: &str = "integration-test-secret-0123456789";

fn token(sub: &str, ttl_secs: i64, secret: &str) -> String {
    let exp = switchboard_node::ids::now_millis() / 1000 + ttl_secs;
    jsonwebtoken::encode(
        &Header::default(),
        &json!({"sub": sub, "exp": exp}),
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn jwt_mode_refuses_missing_expired_and_forged_tokens() {
    let s = Server::with(|c| c.jwt_secret = Some(SECRET.into())).await;
    assert!(
        !s.node.auth.dev_mode(),
        "dev auth is off by default once a JWT secret is set"
    );
    let (st, body) = Client::refusal(s.addr, "/ws").await;
    assert_eq!((st, body["code"].as_str()), (401, Some("unauthorized")));
    assert_eq!(Client::refused(s.addr, "/ws?userId=alice").await, 401);
    assert_eq!(
        Client::refused(
            s.addr,
            &format!("/ws?token={}", token("alice", -300, SECRET))
        )
        .await,
        401
    );
    assert_eq!(
        Client::refused(
            s.addr,
            &format!(
                "/ws?token={}",
                token("alice", 300, "forged-secret-forged-secret")
            )
        )
        .await,
        401
    );
    assert_eq!(Client::refused(s.addr, "/ws?token=garbage").await, 401);
    // A valid token wins over a userId in the query.
    let c = s
        .connect_path(&format!(
            "/ws/chat?userId=mallory&token={}",
            token("alice", 300, SECRET)
        ))
        .await;
    assert_eq!(c.user(), "alice");
}

#[tokio::test]
async fn drain_turns_not_ready_tells_clients_to_reconnect_then_closes() {
    let mut s = Server::with(|c| {
        c.drain_timeout = Duration::from_millis(1500);
        c.reconnect_jitter = Duration::from_millis(800);
    })
    .await;
    let mut a = s.connect("dan").await;
    let mut b = s.connect("dot").await;
    let addr = s.addr;
    s.begin_stop();
    for c in [&mut a, &mut b] {
        let r = c.expect("reconnect").await;
        assert_eq!(r["reason"], "draining");
        assert!(r["delay_ms"].as_u64().unwrap() <= 800);
    }
    let (st, body) = http_text(addr, "GET", "/readyz", None, None).await;
    assert_eq!(st, 503, "{body}");
    assert_eq!(http_text(addr, "GET", "/healthz", None, None).await.0, 200);
    let (st, body) = Client::refusal(addr, "/ws?userId=late").await;
    assert_eq!((st, body["code"].as_str()), (503, Some("draining")));
    // One client leaves by itself; the other stays and is closed at the timeout.
    a.close().await;
    let t = Instant::now();
    assert_eq!(b.close_code().await, Some(1001));
    assert!(
        t.elapsed() >= Duration::from_millis(800),
        "closed only at the drain timeout"
    );
    s.stop().await;
}

#[tokio::test]
async fn sigterm_drains_the_real_binary_and_it_exits_cleanly() {
    let mut p = Proc::start(&["--drain-timeout", "1s", "--reconnect-jitter", "200ms"]);
    let mut c = Client::connect(p.addr, "/ws?userId=sig").await;
    c.say("other", "c1", "before shutdown").await;
    p.signal("-TERM");
    let r = c.expect("reconnect").await;
    assert!(r["delay_ms"].as_u64().unwrap() <= 200);
    assert_eq!(http_text(p.addr, "GET", "/readyz", None, None).await.0, 503);
    assert_eq!(c.close_code().await, Some(1001));
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = p.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "node did not exit after draining"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit status {status}");
}

#[test]
fn bad_configuration_is_refused_with_a_message() {
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard-node"))
        .args(["--listen", "127.0.0.1:0", "--dev-auth", "false"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("SB_JWT_SECRET"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard-node"))
        .args(["--listen", "127.0.0.1:0", "--pod-name", "sb-5000"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ordinal"));
    let help = Command::new(env!("CARGO_BIN_EXE_switchboard-node"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for env in [
        "SB_LISTEN",
        "POD_NAME",
        "SB_JWT_SECRET",
        "SB_DEV_AUTH",
        "SB_ADMIN_TOKEN",
        "SB_RATE_LIMIT",
        "SB_DRAIN_TIMEOUT",
    ] {
        assert!(help.contains(env), "--help lacks {env}");
    }
}
