//! Chat semantics over real WebSocket connections to a node on loopback.
#![allow(clippy::unwrap_used)]

mod support;

use serde_json::json;
use support::Server;

#[tokio::test]
async fn direct_message_with_delivered_and_read_receipts() {
    let s = Server::start().await;
    let mut alice = s.connect("alice").await;
    let mut bob = s.connect("bob").await;
    assert_eq!(alice.welcome["type"], "welcome");
    assert_eq!(alice.welcome["protocol"], 1);
    assert_eq!(alice.user(), "alice");
    assert_eq!(alice.welcome["node"], "standalone");

    let sent = alice.say("bob", "c1", "hello bob").await;
    assert_eq!(sent["client_msg_id"], "c1");
    assert_eq!(sent["conversation"], "dm:alice:bob");
    assert_eq!(sent["seq"], 1);
    assert_eq!(sent["duplicate"], false);
    let msg_id = sent["msg_id"].as_str().unwrap().to_owned();
    assert!(msg_id.parse::<u64>().unwrap() > 0);

    let m = bob.expect("message").await;
    assert_eq!(m["msg_id"], msg_id);
    assert_eq!(m["from"], "alice");
    assert_eq!(m["to"], "bob");
    assert_eq!(m["content"], "hello bob");
    assert_eq!(m["seq"], 1);

    bob.send(json!({"type": "ack", "msg_ids": [msg_id]})).await;
    let d = alice.expect("delivered").await;
    assert_eq!(
        (d["msg_id"].as_str(), d["user"].as_str(), d["seq"].as_u64()),
        (Some(msg_id.as_str()), Some("bob"), Some(1))
    );

    bob.send(json!({"type": "read", "conversation": "dm:alice:bob", "seq": 1}))
        .await;
    let r = alice.expect("read").await;
    assert_eq!(
        (r["user"].as_str(), r["seq"].as_u64()),
        (Some("bob"), Some(1))
    );

    // A second ack of the same id delivers no second receipt.
    bob.send(json!({"type": "ack", "msg_ids": [msg_id]})).await;
    assert!(bob.drain_until_pong().await.is_empty());
    assert!(alice.drain_until_pong().await.is_empty());
}

#[tokio::test]
async fn every_device_of_both_users_gets_the_message_except_the_sending_one() {
    let s = Server::start().await;
    let mut a1 = s.connect("ann").await;
    let mut a2 = s.connect("ann").await;
    let mut b1 = s.connect("ben").await;
    let mut b2 = s.connect("ben").await;
    let sent = a1.say("ben", "x1", "to all of ben").await;
    for c in [&mut b1, &mut b2, &mut a2] {
        let m = c.expect("message").await;
        assert_eq!(m["msg_id"], sent["msg_id"]);
        assert_eq!(m["client_msg_id"], "x1");
    }
    assert!(
        a1.drain_until_pong().await.is_empty(),
        "the sending device gets only `sent`"
    );
    // The ack from one device is what makes it delivered, once.
    b2.send(json!({"type": "ack", "msg_ids": [sent["msg_id"]]}))
        .await;
    let d = a1.expect("delivered").await;
    assert_eq!(d["user"], "ben");
    assert_eq!(a2.expect("delivered").await["msg_id"], sent["msg_id"]);
    b1.send(json!({"type": "ack", "msg_ids": [sent["msg_id"]]}))
        .await;
    b1.drain_until_pong().await;
    assert!(a1.drain_until_pong().await.is_empty());
}

#[tokio::test]
async fn resending_a_client_msg_id_is_idempotent() {
    let s = Server::start().await;
    let mut alice = s.connect("al").await;
    let mut bob = s.connect("bo").await;
    let first = alice.say("bo", "same", "once").await;
    let again = alice.say("bo", "same", "once").await;
    assert_eq!(again["msg_id"], first["msg_id"]);
    assert_eq!(again["seq"], first["seq"]);
    assert_eq!(again["duplicate"], true);
    // Stored once. The resend pushes the same message again (the first try may
    // have failed between storing and pushing); clients dedup by msg_id.
    let got = bob.drain_until_pong().await;
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(
        got.iter()
            .all(|m| m["msg_id"] == first["msg_id"] && m["seq"] == 1)
    );
    // A new client id is a new message.
    let other = alice.say("bo", "other", "twice").await;
    assert_eq!(other["seq"], 2);
}

#[tokio::test]
async fn offline_inbox_is_replayed_in_order_until_acked() {
    let s = Server::start().await;
    let mut alice = s.connect("amy").await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(alice.say("bea", &format!("c{i}"), &format!("m{i}")).await["msg_id"].clone());
    }
    let mut bea = s.connect("bea").await;
    let replay = bea.drain_until_pong().await;
    let got: Vec<_> = replay.iter().map(|m| m["msg_id"].clone()).collect();
    assert_eq!(got, ids);
    assert!(replay.iter().all(|m| m["type"] == "message"));
    // Not acked: a new connection gets them again.
    bea.close().await;
    let mut bea = s.connect("bea").await;
    assert_eq!(bea.drain_until_pong().await.len(), 3);
    bea.send(json!({"type": "ack", "msg_ids": ids})).await;
    for _ in 0..3 {
        alice.expect("delivered").await;
    }
    bea.close().await;
    let mut bea = s.connect("bea").await;
    assert!(bea.drain_until_pong().await.is_empty());
}

#[tokio::test]
async fn typing_reaches_the_peer_and_is_not_stored() {
    let s = Server::start().await;
    let mut alice = s.connect("tia").await;
    let mut bob = s.connect("tom").await;
    alice
        .send(json!({"type": "typing", "conversation": "dm:tia:tom", "state": "start"}))
        .await;
    let t = bob.expect("typing").await;
    assert_eq!(
        (t["user"].as_str(), t["state"].as_str()),
        (Some("tia"), Some("start"))
    );
    alice
        .send(json!({"type": "typing", "conversation": "dm:tia:tom", "state": "stop"}))
        .await;
    assert_eq!(bob.expect("typing").await["state"], "stop");
    bob.send(json!({"type": "history", "conversation": "dm:tia:tom"}))
        .await;
    let h = bob.expect("history").await;
    assert_eq!(h["messages"].as_array().unwrap().len(), 0);
    // Not a participant: refused.
    alice
        .send(json!({"type": "typing", "conversation": "dm:bob:tom", "state": "start"}))
        .await;
    assert_eq!(alice.expect("error").await["code"], "not_a_member");
}

#[tokio::test]
async fn history_pages_and_resume() {
    let s = Server::with(|c| c.history_limit = 4).await;
    let mut alice = s.connect("hal").await;
    for i in 1..=6 {
        alice.say("hex", &format!("h{i}"), &format!("m{i}")).await;
    }
    let seqs = |v: &serde_json::Value| -> Vec<u64> {
        v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["seq"].as_u64().unwrap())
            .collect()
    };
    alice
        .send(json!({"type": "history", "conversation": "dm:hal:hex", "limit": 2}))
        .await;
    let h = alice.expect("history").await;
    assert_eq!(
        (seqs(&h), h["has_more"].as_bool()),
        (vec![5, 6], Some(true))
    );
    alice
        .send(json!({"type": "history", "conversation": "dm:hal:hex", "before": 5, "limit": 10}))
        .await;
    let h = alice.expect("history").await;
    // Capped at 4 per conversation: seq 1 and 2 are gone.
    assert_eq!(
        (seqs(&h), h["has_more"].as_bool()),
        (vec![3, 4], Some(false))
    );

    let mut hex = s.connect("hex").await;
    hex.drain_until_pong().await;
    hex.send(json!({"type": "resume", "conversations": {"dm:hal:hex": 4, "dm:a:b": 0}}))
        .await;
    let mut frames = [hex.next().await, hex.next().await];
    frames.sort_by_key(|f| f["type"].as_str().unwrap().to_owned());
    assert_eq!(frames[0]["code"], "not_a_member");
    assert_eq!(seqs(&frames[1]), vec![5, 6]);
    assert_eq!(frames[1]["after"], 4);
}

#[tokio::test]
async fn group_messages_fan_out_to_members_only() {
    let s = Server::start().await;
    let (st, body) = s
        .http(
            "POST",
            "/api/v1/groups",
            Some(json!({"id": "team", "members": ["gus", "gil", "gwen"]})),
            None,
        )
        .await;
    assert_eq!(st, 201, "{body}");
    let mut gus = s.connect("gus").await;
    let mut gil = s.connect("gil").await;
    let mut gwen = s.connect("gwen").await;
    let mut out = s.connect("otto").await;
    assert_eq!(gus.welcome["groups"], json!(["team"]));

    gus.send(json!({"type": "send", "client_msg_id": "g1", "group": "team", "content": "hi team"}))
        .await;
    let sent = gus.expect("sent").await;
    assert_eq!(sent["conversation"], "group:team");
    for c in [&mut gil, &mut gwen] {
        let m = c.expect("message").await;
        assert_eq!(
            (m["group"].as_str(), m["from"].as_str()),
            (Some("team"), Some("gus"))
        );
    }
    assert!(out.drain_until_pong().await.is_empty());

    out.send(
        json!({"type": "send", "client_msg_id": "x", "group": "team", "content": "let me in"}),
    )
    .await;
    let e = out.expect("error").await;
    assert_eq!(
        (e["code"].as_str(), e["client_msg_id"].as_str()),
        (Some("not_a_member"), Some("x"))
    );
    out.send(json!({"type": "send", "group": "nope", "content": "?"}))
        .await;
    assert_eq!(out.expect("error").await["code"], "not_a_member");

    let (st, _) = s
        .http("DELETE", "/api/v1/groups/team/members/gwen", None, None)
        .await;
    assert_eq!(st, 200);
    // The member removed learns of it, with the members left.
    let g = gwen.expect("group").await;
    assert_eq!(
        (
            g["change"].as_str(),
            g["users"].clone(),
            g["members"].clone()
        ),
        (Some("removed"), json!(["gwen"]), json!(["gil", "gus"]))
    );
    gwen.send(json!({"type": "send", "group": "team", "content": "still here?"}))
        .await;
    assert_eq!(gwen.expect("error").await["code"], "not_a_member");
    let (st, _) = s
        .http(
            "POST",
            "/api/v1/groups/team/members",
            Some(json!({"users": ["otto"]})),
            None,
        )
        .await;
    assert_eq!(st, 200);
    let g = out.expect("group").await;
    assert_eq!(
        (g["change"].as_str(), g["users"].clone()),
        (Some("added"), json!(["otto"]))
    );
    // `system` sends notices; it is never a member.
    let (st, body) = s
        .http(
            "POST",
            "/api/v1/groups/team/members",
            Some(json!({"users": ["system"]})),
            None,
        )
        .await;
    assert_eq!((st, body["code"].as_str()), (400, Some("invalid_field")));
    gil.send(json!({"type": "send", "group": "team", "content": "welcome otto"}))
        .await;
    gil.expect("sent").await;
    assert_eq!(out.expect("message").await["content"], "welcome otto");
    assert!(gwen.drain_until_pong().await.is_empty());
    // Group read receipts reach the other members.
    out.send(json!({"type": "read", "conversation": "group:team", "seq": 2}))
        .await;
    assert_eq!(gil.expect("read").await["user"], "otto");
}

#[tokio::test]
async fn presence_subscription_sees_online_and_offline() {
    let s = Server::start().await;
    let mut watcher = s.connect("wes").await;
    watcher
        .send(json!({"type": "presence_subscribe", "users": ["pia"]}))
        .await;
    let p = watcher.next().await;
    assert_eq!(
        (p["type"].as_str(), p["online"].as_bool()),
        (Some("presence"), Some(false))
    );
    let pia = s.connect("pia").await;
    let p = watcher.next().await;
    assert_eq!(
        (
            p["user"].as_str(),
            p["online"].as_bool(),
            p["devices"].as_u64()
        ),
        (Some("pia"), Some(true), Some(1))
    );
    assert_eq!(p["pods"], json!(["standalone"]));
    pia.close().await;
    let p = watcher.next().await;
    assert_eq!(p["online"], false);
    assert!(p["last_seen"].as_i64().unwrap() > 0);
}

#[tokio::test]
async fn seed_clients_work_unchanged_and_cannot_spoof_the_sender() {
    let s = Server::start().await;
    let mut u1 = s.connect_path("/ws/chat?userId=user1").await;
    let mut u2 = s.connect_path("/ws/chat?userId=user2").await;
    u1.send(json!({"type":"CHAT_MESSAGE","senderId":"mallory","receiverId":"user2","chatId":"chat123","content":"Hello from node1!","timestamp":1640995200000u64})).await;
    let sent = u1.expect("sent").await;
    let m = u2.expect("CHAT_MESSAGE").await;
    assert_eq!(m["senderId"], "user1");
    assert_eq!(m["receiverId"], "user2");
    assert_eq!(m["chatId"], "chat123");
    assert_eq!(m["content"], "Hello from node1!");
    assert_eq!(m["messageId"], sent["msg_id"]);

    u1.send(json!({"type":"HEARTBEAT","content":"ping"})).await;
    let hb = u1.expect("HEARTBEAT").await;
    assert_eq!(hb["content"], "pong");

    u2.send(json!({"type":"TYPING","receiverId":"user1","chatId":"chat123","content":"typing"}))
        .await;
    let t = u1.expect("TYPING").await;
    assert_eq!(
        (t["senderId"].as_str(), t["content"].as_str()),
        (Some("user2"), Some("typing"))
    );

    u2.send(json!({"type":"READ_RECEIPT","chatId":"chat123","messageId":m["messageId"],"receiverId":"user1"})).await;
    let r = u1.expect("READ_RECEIPT").await;
    assert_eq!(
        (r["readerId"].as_str(), r["messageId"].clone()),
        (Some("user2"), m["messageId"].clone())
    );

    u2.send(
        json!({"type":"READ_RECEIPT","chatId":"chat123","messageId":"12345","receiverId":"user1"}),
    )
    .await;
    assert_eq!(u2.expect("error").await["code"], "unknown_message");

    // A v1 client and a seed client talk to each other.
    let mut v1 = s.connect("user3").await;
    v1.say("user2", "v", "from v1").await;
    assert_eq!(u2.expect("CHAT_MESSAGE").await["senderId"], "user3");
}

#[tokio::test]
async fn two_nodes_on_shared_backends_route_across_pods() {
    use switchboard_node::Config;
    let backends = switchboard_node::backend::select::in_memory(&Config::defaults());
    let n0 = Server::on_backends("sb-0", backends.clone()).await;
    let n1 = Server::on_backends("sb-1", backends.clone()).await;
    let mut watcher = n1.connect("wendy").await;
    watcher
        .send(json!({"type": "presence_subscribe", "users": ["xena"]}))
        .await;
    assert_eq!(watcher.next().await["online"], false);

    let mut xena = n0.connect("xena").await;
    let mut yuri = n1.connect("yuri").await;
    let mut yuri0 = n0.connect("yuri").await;
    let p = watcher.next().await;
    assert_eq!(
        (p["online"].as_bool(), p["pods"].clone()),
        (Some(true), json!(["sb-0"]))
    );

    let sent = xena.say("yuri", "x1", "across pods").await;
    // Ids carry the worker id of the pod that made them.
    let id: u64 = sent["msg_id"].as_str().unwrap().parse().unwrap();
    assert_eq!((id >> 12) & 1023, 0);
    assert_eq!(yuri.expect("message").await["content"], "across pods");
    assert_eq!(yuri0.expect("message").await["content"], "across pods");

    yuri.send(json!({"type": "ack", "msg_ids": [sent["msg_id"]]}))
        .await;
    assert_eq!(xena.expect("delivered").await["user"], "yuri");
    let back = yuri.say("xena", "y1", "and back").await;
    let id: u64 = back["msg_id"].as_str().unwrap().parse().unwrap();
    assert_eq!((id >> 12) & 1023, 1);
    assert_eq!(xena.expect("message").await["content"], "and back");

    let (_, stats) = n0.http("GET", "/api/v1/stats", None, None).await;
    assert_eq!(
        (
            stats["online_users"].as_u64(),
            stats["connections"].as_u64()
        ),
        (Some(3), Some(4))
    );
    let (_, p) = n1.http("GET", "/api/v1/presence/yuri", None, None).await;
    assert_eq!(p["pods"], json!(["sb-0", "sb-1"]));
}
