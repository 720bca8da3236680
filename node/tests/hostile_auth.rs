//! Hostile clients with identities: bad tokens at the upgrade, and users
//! acting on other users' messages, conversations and groups through every
//! frame type. Each gets a stable code; nothing stored is lost or leaked.
#![allow(clippy::unwrap_used)]

mod support;

use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};
use support::raw::Raw;
use support::{Client, Server};

const SECRET: &str = "hostile-test-secret-0123456789";

fn now() -> i64 {
    switchboard_node::ids::now_millis() / 1000
}

fn sign(claims: Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn token(sub: &str) -> String {
    sign(json!({"sub": sub, "exp": now() + 300}), SECRET)
}

fn b64url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn jwt(c: &mut switchboard_node::Config) {
    c.jwt_secret = Some(SECRET.into());
    c.dev_auth = Some(false);
    c.admin_token = Some("hostile-admin".into());
}

/// A JWT node, standalone or in the cluster configuration (Redis).
async fn jwt_server(cluster: bool) -> Server {
    if cluster {
        Server::cluster(jwt).await
    } else {
        Server::with(jwt).await
    }
}

#[tokio::test]
async fn every_bad_token_is_refused_with_401_wherever_it_is_carried() {
    bad_tokens(jwt_server(false).await).await;
}

#[tokio::test]
async fn every_bad_token_is_refused_with_401_in_the_cluster_configuration() {
    bad_tokens(jwt_server(true).await).await;
}

async fn bad_tokens(s: Server) {
    let t = now();
    let unsigned = format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT"}"#),
        b64url(format!(r#"{{"sub":"mallory","exp":{}}}"#, t + 300).as_bytes())
    );
    let hs512 = jsonwebtoken::encode(
        &Header::new(jsonwebtoken::Algorithm::HS512),
        &json!({"sub": "mallory", "exp": t + 300}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let good = token("mallory");
    let mut tampered = good.clone();
    tampered.replace_range(good.len() - 3.., "AAA");
    let bad: Vec<(&str, String)> = vec![
        (
            "expired",
            sign(json!({"sub": "mallory", "exp": t - 120}), SECRET),
        ),
        (
            "not yet valid (nbf)",
            sign(
                json!({"sub": "mallory", "exp": t + 600, "nbf": t + 300}),
                SECRET,
            ),
        ),
        (
            "issued in the future (iat)",
            sign(
                json!({"sub": "mallory", "exp": t + 600, "iat": t + 300}),
                SECRET,
            ),
        ),
        (
            "signed with another secret",
            sign(
                json!({"sub": "mallory", "exp": t + 300}),
                "not-the-secret-0123456789",
            ),
        ),
        ("alg none", unsigned),
        ("HS512 instead of HS256", hs512),
        ("tampered signature", tampered),
        ("no exp", sign(json!({"sub": "mallory"}), SECRET)),
        ("no sub", sign(json!({"exp": t + 300}), SECRET)),
        (
            "sub that is no user id",
            sign(json!({"sub": "a:b", "exp": t + 300}), SECRET),
        ),
        ("garbage", "not.a.token".into()),
        ("empty", String::new()),
    ];
    for (what, tok) in &bad {
        for (place, path, header) in [
            ("query", format!("/ws?token={tok}"), String::new()),
            (
                "subprotocol",
                "/ws".to_owned(),
                format!("Sec-WebSocket-Protocol: switchboard.v1, bearer.{tok}\r\n"),
            ),
            (
                "header",
                "/ws".to_owned(),
                format!("Authorization: Bearer {tok}\r\n"),
            ),
        ] {
            match Raw::upgrade(s.addr, &path, &header).await {
                Ok(_) => panic!("{what} in the {place}: accepted"),
                Err((status, body)) => {
                    assert_eq!(status, 401, "{what} in the {place}: {body}");
                    assert!(body.contains(r#""code":"unauthorized""#), "{body}");
                    assert!(!body.contains(SECRET), "the secret leaked: {body}");
                }
            }
        }
    }
    // Dev auth is off: a bare user id is no identity.
    assert_eq!(Client::refused(s.addr, "/ws?userId=mallory").await, 401);
    // The good token, in the subprotocol: accepted, and the answer names the
    // protocol, never the token.
    let header = format!("Sec-WebSocket-Protocol: switchboard.v1, bearer.{good}\r\n");
    let (mut c, head) = Raw::upgrade(s.addr, "/ws", &header).await.unwrap();
    let lower = head.to_lowercase();
    assert!(
        lower.contains("sec-websocket-protocol: switchboard.v1"),
        "{head}"
    );
    assert!(!head.contains(&good), "the token was echoed: {head}");
    assert_eq!(c.next_json().await["user"], "mallory");
}

/// Alice and Bob talk, in a DM and a group; Mallory has her own account.
struct Scene {
    alice: Client,
    bob: Client,
    mallory: Client,
    dm_msg: String,
    group_msg: String,
}

async fn scene(s: &Server) -> Scene {
    let connect = |u: &'static str| async move {
        Client::connect(s.addr, &format!("/ws?token={}", token(u))).await
    };
    let (st, _) = s
        .http(
            "POST",
            "/api/v1/groups",
            Some(json!({"id": "ab-only", "members": ["alice", "bob"]})),
            Some("hostile-admin"),
        )
        .await;
    assert_eq!(st, 201);
    let mut alice = connect("alice").await;
    let bob = connect("bob").await;
    let mallory = connect("mallory").await;
    let dm_msg = alice.say("bob", "d1", "for bob only").await["msg_id"]
        .as_str()
        .unwrap()
        .to_owned();
    alice
        .send(json!({"type": "send", "client_msg_id": "g1", "group": "ab-only", "content": "group secret"}))
        .await;
    let group_msg = alice.expect("sent").await["msg_id"]
        .as_str()
        .unwrap()
        .to_owned();
    Scene {
        alice,
        bob,
        mallory,
        dm_msg,
        group_msg,
    }
}

#[tokio::test]
async fn nobody_acts_on_anyone_elses_messages_conversations_or_groups() {
    trespass(jwt_server(false).await).await;
}

#[tokio::test]
async fn nobody_acts_on_anyone_elses_things_in_the_cluster_configuration() {
    trespass(jwt_server(true).await).await;
}

async fn trespass(s: Server) {
    let Scene {
        mut alice,
        mut bob,
        mut mallory,
        dm_msg,
        group_msg,
    } = scene(&s).await;
    let dm = "dm:alice:bob";
    let not_member = [
        (
            "read a DM",
            json!({"type": "read", "conversation": dm, "msg_id": dm_msg}),
        ),
        (
            "read by seq",
            json!({"type": "read", "conversation": dm, "seq": 1}),
        ),
        (
            "read a group",
            json!({"type": "read", "conversation": "group:ab-only", "seq": 1}),
        ),
        (
            "type in a DM",
            json!({"type": "typing", "conversation": dm, "state": "start"}),
        ),
        (
            "type in a group",
            json!({"type": "typing", "conversation": "group:ab-only", "state": "start"}),
        ),
        (
            "history of a DM",
            json!({"type": "history", "conversation": dm}),
        ),
        (
            "history of a group",
            json!({"type": "history", "conversation": "group:ab-only"}),
        ),
        (
            "send to a group",
            json!({"type": "send", "client_msg_id": "m1", "group": "ab-only", "content": "let me in"}),
        ),
        (
            "recall in a DM",
            json!({"type": "recall", "conversation": dm, "msg_id": dm_msg}),
        ),
        (
            "recall in a group",
            json!({"type": "recall", "conversation": "group:ab-only", "msg_id": group_msg}),
        ),
    ];
    for (what, frame) in not_member {
        mallory.send(frame).await;
        let e = mallory.expect("error").await;
        assert_eq!(e["code"], "not_a_member", "{what}: {e}");
        assert!(
            !e.to_string().contains("for bob only"),
            "{what} leaked: {e}"
        );
    }
    // Resume of someone else's conversations: nothing comes back.
    mallory
        .send(json!({"type": "resume", "conversations": [[dm, 0], ["group:ab-only", 0]]}))
        .await;
    let after = mallory.drain_until_pong().await;
    assert!(
        after.iter().all(|f| f["type"] != "message"),
        "resume leaked messages: {after:?}"
    );
    // Acking someone else's messages changes nothing: they stay in Bob's inbox.
    mallory
        .send(json!({"type": "ack", "msg_ids": [dm_msg, group_msg]}))
        .await;
    assert!(mallory.drain_until_pong().await.is_empty());
    // Presence is about being online, not content: allowed, and says nothing more.
    mallory
        .send(json!({"type": "presence_subscribe", "users": ["bob"]}))
        .await;
    let p = mallory.expect("presence").await;
    assert!(p.get("content").is_none());
    // The admin API is not a way around it.
    for (m, path) in [
        ("GET", "/api/v1/groups/ab-only"),
        ("DELETE", "/api/v1/groups/ab-only"),
        ("DELETE", "/api/v1/groups/ab-only/members/bob"),
    ] {
        let tok = token("mallory");
        let (st, e) = s.http(m, path, None, Some(&tok)).await;
        assert_eq!(
            (st, e["code"].as_str()),
            (403, Some("forbidden")),
            "{m} {path}"
        );
    }
    let tok = token("mallory");
    let (st, e) = s
        .http(
            "POST",
            "/api/v1/messages/recall",
            Some(json!({"conversation": dm, "msg_id": dm_msg})),
            Some(&tok),
        )
        .await;
    assert_eq!(
        (st, e["code"].as_str()),
        (403, Some("forbidden")),
        "admin recall"
    );
    // Alice and Bob lost nothing: Bob's copies are still his to read and
    // ack, and a reconnect replays both from his inbox.
    bob.expect("message").await;
    bob.expect("message").await;
    // A member cannot take back what another member said.
    bob.send(json!({"type": "recall", "conversation": dm, "msg_id": dm_msg}))
        .await;
    assert_eq!(bob.expect("error").await["code"], "not_yours");
    drop(bob);
    let mut bob = Client::connect(s.addr, &format!("/ws?token={}", token("bob"))).await;
    let mut got = vec![
        bob.expect("message").await["msg_id"]
            .as_str()
            .unwrap()
            .to_owned(),
        bob.expect("message").await["msg_id"]
            .as_str()
            .unwrap()
            .to_owned(),
    ];
    got.sort();
    let mut want = vec![dm_msg, group_msg];
    want.sort();
    assert_eq!(got, want, "Mallory's ack removed nothing");
    bob.send(json!({"type": "history", "conversation": dm}))
        .await;
    let h = bob.expect("history").await;
    assert_eq!(h["messages"][0]["content"], "for bob only");
    alice.send(json!({"type": "ping"})).await;
    assert_eq!(alice.expect("pong").await["type"], "pong");
}
