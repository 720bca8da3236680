//! Three real node processes (pods sb-0, sb-1, sb-2) on real Redis and real
//! RocketMQ: cross-pod delivery, and what happens when a pod dies.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::json;
use switchboard_e2e::Cluster;
use switchboard_e2e::traffic::{receive_all, send_stream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_on_different_pods_chat_with_receipts_typing_groups_and_presence() {
    let c = Cluster::start("chat", 3).await;
    let mut ana = c.pod(0).connect("ana").await;
    let mut ana2 = c.pod(2).connect("ana").await;
    let mut ben = c.pod(1).connect("ben").await;
    let mut cy = c.pod(2).connect("cy").await;
    assert_eq!(ana.welcome["node"], "sb-0");
    assert_eq!(ben.welcome["node"], "sb-1");

    // 1:1 across pods, to every device of both users.
    let sent = ana.say("ben", "a1", "hello from sb-0").await;
    let m = ben.expect("message").await;
    assert_eq!(
        (m["msg_id"].clone(), m["from"].as_str()),
        (sent["msg_id"].clone(), Some("ana"))
    );
    assert_eq!(
        ana2.expect("message").await["msg_id"],
        sent["msg_id"],
        "the sender's other device, on sb-2"
    );
    // Receipts travel back across pods.
    ben.send(json!({"type": "ack", "msg_ids": [sent["msg_id"]]}))
        .await;
    assert_eq!(ana.expect("delivered").await["user"], "ben");
    assert_eq!(ana2.expect("delivered").await["user"], "ben");
    ben.send(json!({"type": "read", "conversation": "dm:ana:ben", "seq": 1}))
        .await;
    assert_eq!(ana.expect("read").await["user"], "ben");
    assert_eq!(ana2.expect("read").await["seq"], 1);
    ben.send(json!({"type": "typing", "conversation": "dm:ana:ben", "state": "start"}))
        .await;
    assert_eq!(ana.expect("typing").await["user"], "ben");
    assert_eq!(ana2.expect("typing").await["state"], "start");

    // A group spanning the three pods.
    let (st, _) = switchboard_e2e::http_post(
        c.pod(0).addr,
        "/api/v1/groups",
        &json!({"id": "trio", "members": ["ana", "ben", "cy"]}),
    )
    .await;
    assert_eq!(st, 201);
    cy.send(json!({"type": "send", "client_msg_id": "g1", "group": "trio", "content": "hi trio"}))
        .await;
    cy.expect("sent").await;
    for client in [&mut ana, &mut ana2, &mut ben] {
        let g = client.expect("message").await;
        assert_eq!(
            (g["group"].as_str(), g["from"].as_str()),
            (Some("trio"), Some("cy"))
        );
    }

    // Presence and stats are the same seen from every pod.
    for p in &c.pods {
        let (_, stats) = p.get("/api/v1/stats").await;
        assert_eq!(
            (
                stats["online_users"].as_u64(),
                stats["connections"].as_u64()
            ),
            (Some(3), Some(4)),
            "from {}: {stats}",
            p.name
        );
        let (_, presence) = p.get("/api/v1/presence/ana").await;
        assert_eq!(presence["pods"], json!(["sb-0", "sb-2"]), "from {}", p.name);
    }
    // A presence change on one pod reaches a watcher on another.
    ben.send(json!({"type": "presence_subscribe", "users": ["dee"]}))
        .await;
    assert_eq!(ben.expect("presence").await["online"], false);
    let _dee = c.pod(2).connect("dee").await;
    let p = ben.expect("presence").await;
    assert_eq!(
        (p["user"].as_str(), p["online"].as_bool()),
        (Some("dee"), Some(true))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_pod_mid_traffic_loses_no_acknowledged_message() {
    let mut c = Cluster::start("kill", 3).await;
    let alice = c.pod(0).connect("alice").await;
    let n = 400;
    let sender = tokio::spawn(async move { send_stream(alice, "bob", n).await.confirmed });
    let victim_pid = c.pod(2).pid();
    let confirmed = std::sync::Arc::new(std::sync::Mutex::new(None::<usize>));
    // Kill bob's pod while messages flow.
    let killer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let ok = std::process::Command::new("kill")
            .args(["-9", &victim_pid.to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    });
    let done = confirmed.clone();
    let watcher = tokio::spawn(async move {
        let ids = sender.await.unwrap();
        *done.lock().unwrap() = Some(ids.len());
        ids
    });
    let got = receive_all(&c, "bob", 2, || *confirmed.lock().unwrap()).await;
    killer.await.unwrap();
    let sent: BTreeSet<String> = watcher.await.unwrap().into_iter().collect();
    assert_eq!(sent.len(), n);
    let lost: Vec<_> = sent.difference(&got.ids).collect();
    assert!(lost.is_empty(), "lost {} of {n}: {lost:?}", lost.len());
    assert_eq!(got.ids, sent, "nothing but what was sent");
    assert!(got.reconnects >= 1, "bob's pod was killed under him");
    assert_ne!(
        got.pods.last().map(String::as_str),
        Some("sb-2"),
        "bob ended on another pod: {:?}",
        got.pods
    );
    eprintln!(
        "kill -9: {n} sent, {} received, {} transport duplicates dropped by the client, pods {:?}",
        got.ids.len(),
        got.redelivered,
        got.pods
    );
    c.pods[2].kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_tells_clients_to_reconnect_and_loses_nothing() {
    let mut c = Cluster::start_with("term", 3, "3s").await;
    let alice = c.pod(0).connect("alice").await;
    let n = 300;
    let confirmed = std::sync::Arc::new(std::sync::Mutex::new(None::<usize>));
    let done = confirmed.clone();
    let sender = tokio::spawn(async move {
        let ids = send_stream(alice, "bob", n).await.confirmed;
        *done.lock().unwrap() = Some(ids.len());
        ids
    });
    let victim_pid = c.pod(1).pid();
    let stopper = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let ok = std::process::Command::new("kill")
            .args(["-TERM", &victim_pid.to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    });
    // bob starts on sb-1, the pod that is stopped under him.
    let got = receive_all(&c, "bob", 1, || *confirmed.lock().unwrap()).await;
    stopper.await.unwrap();
    let sent: BTreeSet<String> = sender.await.unwrap().into_iter().collect();
    assert_eq!(got.ids, sent, "nothing lost, nothing extra");
    assert_eq!(got.pods.first().map(String::as_str), Some("sb-1"));
    assert!(
        got.reconnects >= 1 && got.pods.len() >= 2,
        "told to reconnect: {:?}",
        got.pods
    );
    assert!(
        c.pods[1].wait_exit(Duration::from_secs(20)),
        "sb-1 exited 0 after draining"
    );
    eprintln!(
        "SIGTERM: {n} sent, {} received, {} transport duplicates dropped, pods {:?}",
        got.ids.len(),
        got.redelivered,
        got.pods
    );
}
