//! Nodes on a real Redis: shared presence and storage across pods, and
//! messages that survive a node crash. Needs `SB_TEST_REDIS_URL` (see
//! `redis_backend.rs`).
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;

use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;
use support::{Client, Proc, Server};
use switchboard_node::backend::memory::MemoryBus;
use switchboard_node::{Config, Node};

fn redis_url() -> String {
    std::env::var("SB_TEST_REDIS_URL")
        .expect("SB_TEST_REDIS_URL is not set: run `eval \"$(scripts/deps start)\"` first (scripts/test does)")
}

fn cluster_name(test: &str) -> String {
    format!("{test}-{}", switchboard_node::ids::now_millis())
}

const SECRET: &str = "cluster-test-secret-0123456789";

fn token(sub: &str) -> String {
    let exp = switchboard_node::ids::now_millis() / 1000 + 300;
    jsonwebtoken::encode(
        &Header::default(),
        &json!({"sub": sub, "exp": exp}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn two_pods_share_presence_history_and_inboxes_through_redis() {
    let name = cluster_name("share");
    let bus = Arc::new(MemoryBus::new());
    let mut pods = Vec::new();
    for pod in ["sb-0", "sb-1"] {
        let mut cfg = Config::defaults();
        cfg.redis_url = Some(redis_url().into());
        cfg.cluster_name = name.clone();
        cfg.pod_name = pod.into();
        cfg.dev_auth = Some(true);
        let mut backends = switchboard_node::backend::select::for_config(&cfg)
            .await
            .unwrap();
        // Each pod has its own Redis connection; only the bus is shared in
        // process (the RocketMQ bus is tested elsewhere).
        backends.bus = bus.clone();
        pods.push(Server::on(Node::new(cfg, backends).unwrap()).await);
    }
    let (n0, n1) = (&pods[0], &pods[1]);
    let mut ana = n0.connect("ana").await;
    let mut ben = n1.connect("ben").await;
    let sent = ana.say("ben", "a1", "across pods on redis").await;
    let m = ben.expect("message").await;
    assert_eq!(m["msg_id"], sent["msg_id"]);
    ben.send(json!({"type": "ack", "msg_ids": [sent["msg_id"]]}))
        .await;
    assert_eq!(ana.expect("delivered").await["user"], "ben");

    let (_, p) = n1.http("GET", "/api/v1/presence/ana", None, None).await;
    assert_eq!(
        (p["online"].as_bool(), p["pods"].clone()),
        (Some(true), json!(["sb-0"]))
    );
    let (_, stats) = n0.http("GET", "/api/v1/stats", None, None).await;
    assert_eq!(stats["online_users"], 2);

    // History written through sb-0 is read through sb-1.
    ben.send(json!({"type": "history", "conversation": "dm:ana:ben"}))
        .await;
    let h = ben.expect("history").await;
    assert_eq!(h["messages"][0]["content"], "across pods on redis");

    // A group created through one pod is known to the other.
    let (st, _) = n0
        .http(
            "POST",
            "/api/v1/groups",
            Some(json!({"id": "crew", "members": ["ana", "ben"]})),
            None,
        )
        .await;
    assert_eq!(st, 201);
    ben.send(json!({"type": "send", "client_msg_id": "g1", "group": "crew", "content": "hi crew"}))
        .await;
    ben.expect("sent").await;
    assert_eq!(ana.expect("message").await["group"], "crew");
}

#[tokio::test]
async fn the_inbox_survives_a_crashed_node() {
    let name = cluster_name("crash");
    let url = redis_url();
    let env = [
        ("SB_REDIS_URL", url.as_str()),
        ("SB_CLUSTER_NAME", name.as_str()),
        ("SB_JWT_SECRET", SECRET),
        ("SB_ADMIN_TOKEN", "crash-admin-token"),
        ("POD_NAME", "sb-0"),
        ("POD_NAMESPACE", "test"),
    ];
    let p = Proc::start_env(&[], &env);
    // Cluster mode: dev auth is off by default.
    assert_eq!(Client::refused(p.addr, "/ws?userId=cat").await, 401);
    let mut cat = Client::connect(p.addr, &format!("/ws?token={}", token("cat"))).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            cat.say("dog", &format!("c{i}"), &format!("before the crash {i}"))
                .await["msg_id"]
                .clone(),
        );
    }
    drop(p); // SIGKILL: no drain, no cleanup.

    let p = Proc::start_env(&[], &env);
    // The restarted pod removed its previous life's registry entries.
    let (_, presence) = support::http(
        p.addr,
        "GET",
        "/api/v1/presence/cat",
        None,
        Some("crash-admin-token"),
    )
    .await;
    assert_eq!(presence["online"], false, "{presence}");
    let mut dog = Client::connect(p.addr, &format!("/ws?token={}", token("dog"))).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(dog.expect("message").await["msg_id"].clone());
    }
    assert_eq!(
        got, ids,
        "every accepted message is still in the inbox, in order"
    );
    // Idempotency survives too: a resend after the crash is a duplicate.
    let mut cat = Client::connect(p.addr, &format!("/ws?token={}", token("cat"))).await;
    let again = cat.say("dog", "c0", "before the crash 0").await;
    assert_eq!(
        (again["duplicate"].as_bool(), again["msg_id"].clone()),
        (Some(true), ids[0].clone())
    );
}
