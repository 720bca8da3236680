//! The business streams on real Redis and real RocketMQ, read by an
//! independent consumer: every record's tag, keys, properties and JSON; one
//! conversation's order under concurrent senders on two pods; and the
//! outbox's promise that a pod killed right after `sent` loses no event.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde_json::json;
use switchboard_e2e::Cluster;
use switchboard_e2e::tap::{describe, streams, with_tag};
use switchboard_events::{C2cMsg, ClusterEvent, ClusterEventType, Event, EventType, GroupMsg};
use switchboard_rocketmq::Delivery;

const WAIT: Duration = Duration::from_secs(30);

fn cluster_event(d: &Delivery) -> ClusterEvent {
    serde_json::from_slice(&d.body).unwrap()
}

/// The msg ids of the `message_sent` records read.
fn sent_ids(seen: &[Delivery]) -> HashSet<String> {
    with_tag(seen, "message_sent")
        .iter()
        .map(|d| {
            serde_json::from_slice::<Event>(&d.body)
                .unwrap()
                .msg_id
                .unwrap()
        })
        .collect()
}

/// The keys of the cluster's 16 outbox shard leases.
fn lease_keys(c: &Cluster) -> Vec<String> {
    (0..16)
        .map(|shard| format!("sb:{{e2e/{}}}:outbox:{shard}:lease", c.name))
        .collect()
}

async fn redis_of(c: &Cluster) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(c.redis_url()).unwrap();
    client.get_multiplexed_async_connection().await.unwrap()
}

/// Makes a pod that does not exist ("sb-gone", as if it had died mid-relay)
/// hold every outbox lease for `ms`.
async fn hold_leases(c: &Cluster, ms: u64) -> redis::aio::MultiplexedConnection {
    let mut conn = redis_of(c).await;
    for key in lease_keys(c) {
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg("sb-gone")
            .arg("PX")
            .arg(ms)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    conn
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_message_is_on_both_streams_with_the_seed_formats() {
    let c = Cluster::start("events", 2).await;
    let (events, cluster) = streams(&c).await;
    let mut ana = c.pod(0).connect("ana").await;
    let mut ben = c.pod(1).connect("ben").await;

    // ben is online (on the other pod); cy has never connected.
    let to_ben = ana.say("ben", "c-ben", "hello ben").await;
    let to_cy = ana.say("cy", "c-cy", "hello cy").await;
    let (st, _) = switchboard_e2e::http_post(
        c.pod(0).addr,
        "/api/v1/groups",
        &json!({"id": "crew", "members": ["ana", "ben"]}),
    )
    .await;
    assert_eq!(st, 201);
    ana.send(
        json!({"type": "send", "client_msg_id": "c-g", "group": "crew", "content": "hi crew"}),
    )
    .await;
    let to_crew = ana.expect("sent").await;
    let id = |v: &serde_json::Value| v["msg_id"].as_str().unwrap().to_owned();

    let seen = events
        .wait_until(WAIT, "3 message_sent", |s| {
            with_tag(s, "message_sent").len() >= 3
        })
        .await;
    let sent = with_tag(&seen, "message_sent");
    for d in &sent {
        assert_eq!(
            d.properties.get("event_type").map(String::as_str),
            Some("message_sent")
        );
        assert_eq!(d.properties.get("user_id").map(String::as_str), Some("ana"));
    }
    // Records of different conversations may arrive in any order.
    let to_ben_record = sent
        .iter()
        .find(|d| serde_json::from_slice::<Event>(&d.body).unwrap().msg_id == Some(id(&to_ben)))
        .expect("message_sent of the message to ben");
    let first: Event = serde_json::from_slice(&to_ben_record.body).unwrap();
    assert_eq!(first.kind, EventType::MessageSent);
    assert_eq!(
        (
            first.user_id.as_str(),
            first.message.as_str(),
            first.msg_id.clone()
        ),
        ("ana", "hello ben", Some(id(&to_ben)))
    );
    assert_eq!(first.to_user_id.as_deref(), Some("ben"));
    assert_eq!(first.conversation.as_deref(), Some("dm:ana:ben"));
    assert_eq!(first.pod.as_deref(), Some("sb-0"));
    assert!(
        first.timestamp.ends_with('Z') && first.timestamp.len() == 24,
        "{}",
        first.timestamp
    );
    // The seed's four fields come first, in its order.
    let body = String::from_utf8(to_ben_record.body.clone()).unwrap();
    assert!(
        body.starts_with(r#"{"user_id":"ana","message":"hello ben","timestamp":""#),
        "{body}"
    );
    assert_eq!(
        to_ben_record.key.as_deref(),
        Some(&*format!("{}:message_sent {}", id(&to_ben), id(&to_ben)))
    );

    let seen = cluster
        .wait_until(WAIT, "the C2C and group records", |s| {
            with_tag(s, "C2C_SEND").len() >= 2
                && !with_tag(s, "C2C_OFFLINE").is_empty()
                && !with_tag(s, "GROUP_SEND").is_empty()
        })
        .await;
    let sends: BTreeMap<String, C2cMsg> = with_tag(&seen, "C2C_SEND")
        .into_iter()
        .map(|d| {
            let e = cluster_event(d);
            assert_eq!(e.cluster_event_type, ClusterEventType::C2cSendMsg);
            let data: C2cMsg = e.parse_data().unwrap();
            (data.msg_id.clone(), data)
        })
        .collect();
    let ben_msg = &sends[&id(&to_ben)];
    assert_eq!(
        (
            ben_msg.client_msg_id.as_str(),
            ben_msg.from_user_id.as_str(),
            ben_msg.to_user_id.as_str()
        ),
        ("c-ben", "ana", "ben")
    );
    assert_eq!((ben_msg.msg_format, ben_msg.msg_status), (1, None));
    assert_eq!(ben_msg.msg_content, "hello ben");
    assert!(sends.contains_key(&id(&to_cy)));
    // Only cy was offline.
    let offline = with_tag(&seen, "C2C_OFFLINE");
    assert_eq!(offline.len(), 1, "{offline:?}");
    let off = cluster_event(offline[0]);
    assert_eq!(off.cluster_event_type, ClusterEventType::C2cOffLineMsg);
    let off: C2cMsg = off.parse_data().unwrap();
    assert_eq!(
        (off.msg_id, off.to_user_id, off.msg_status),
        (id(&to_cy), "cy".into(), Some(1))
    );
    // `data` is a string holding seed 001's names.
    let raw: serde_json::Value = serde_json::from_slice(&offline[0].body).unwrap();
    let data: serde_json::Value = serde_json::from_str(raw["data"].as_str().unwrap()).unwrap();
    for field in [
        "clientMsgId",
        "msgId",
        "fromUserId",
        "toUserId",
        "chatId",
        "msgContent",
        "msgFormat",
        "msgCreateTime",
        "msgStatus",
    ] {
        assert!(data.get(field).is_some(), "{field} missing in {data}");
    }
    let group: GroupMsg = cluster_event(with_tag(&seen, "GROUP_SEND")[0])
        .parse_data()
        .unwrap();
    assert_eq!(
        (group.msg_id, group.group_id),
        (id(&to_crew), "crew".into())
    );

    // A resend of an accepted message is a duplicate: no second event.
    let again = ana.say("ben", "c-ben", "hello ben").await;
    assert_eq!(again["msg_id"], to_ben["msg_id"]);

    // ben acks the message: C2C_CLIENT_RECEIVED_ACK, after its C2C_SEND.
    // (Pushes of different conversations are not ordered between them.)
    let m = loop {
        let m = ben.expect("message").await;
        if m["msg_id"] == to_ben["msg_id"] {
            break m;
        }
    };
    ben.send(json!({"type": "ack", "msg_ids": [m["msg_id"]]}))
        .await;
    let seen = cluster
        .wait_until(WAIT, "C2C_ACK", |s| !with_tag(s, "C2C_ACK").is_empty())
        .await;
    let ack_at = seen
        .iter()
        .position(|d| d.tag.as_deref() == Some("C2C_ACK"))
        .unwrap();
    let ack = cluster_event(&seen[ack_at]);
    assert_eq!(
        ack.cluster_event_type,
        ClusterEventType::C2cClientReceivedAck
    );
    let acked: C2cMsg = ack.parse_data().unwrap();
    assert_eq!(
        (acked.msg_id.clone(), acked.to_user_id.as_str()),
        (id(&to_ben), "ben")
    );
    let send_at = seen
        .iter()
        .position(|d| {
            d.tag.as_deref() == Some("C2C_SEND")
                && cluster_event(d).parse_data::<C2cMsg>().unwrap().msg_id == acked.msg_id
        })
        .unwrap();
    assert!(send_at < ack_at, "the ack was read before its message");

    // Joins (first connection in the cluster), and a leave when the last
    // one goes; a second device joins nothing.
    let ana2 = c.pod(1).connect("ana").await;
    ben.close().await;
    let seen = events
        .wait_until(WAIT, "ben's user_leave", |s| {
            !with_tag(s, "user_leave").is_empty()
        })
        .await;
    assert_eq!(
        with_tag(&seen, "message_sent").len(),
        3,
        "the duplicate published nothing"
    );
    let presence = |tag: &str| -> Vec<(String, Option<String>)> {
        with_tag(&seen, tag)
            .iter()
            .map(|d| {
                assert_eq!(
                    d.properties.get("event_type").map(String::as_str),
                    Some(tag)
                );
                let e: Event = serde_json::from_slice(&d.body).unwrap();
                assert_eq!(d.properties.get("user_id"), Some(&e.user_id));
                (e.user_id, e.pod)
            })
            .collect()
    };
    let mut joins = presence("user_join");
    joins.sort();
    assert_eq!(
        joins,
        [
            ("ana".into(), Some("sb-0".into())),
            ("ben".into(), Some("sb-1".into()))
        ]
    );
    assert_eq!(
        presence("user_leave"),
        [("ben".into(), Some("sb-1".into()))]
    );
    drop(ana2);

    // Membership: the group made above, then a member removed over the
    // admin API; on the group conversation's queue, before its message.
    let (st, _) =
        switchboard_e2e::http_delete(c.pod(1).addr, "/api/v1/groups/crew/members/ben").await;
    assert_eq!(st, 200);
    let seen = events
        .wait_until(WAIT, "group_member_removed", |s| {
            !with_tag(s, "group_member_removed").is_empty()
        })
        .await;
    let group = |tag: &str| -> Vec<(String, String)> {
        with_tag(&seen, tag)
            .iter()
            .map(|d| {
                let e: Event = serde_json::from_slice(&d.body).unwrap();
                assert_eq!(e.group_id.as_deref(), Some("crew"), "{}", describe(d));
                (e.user_id, d.key.clone().unwrap_or_default())
            })
            .collect()
    };
    let created = group("group_created");
    assert_eq!(created.len(), 1);
    assert!(created[0].0.is_empty() && created[0].1.starts_with("crew:group_created:"));
    let mut added: Vec<String> = group("group_member_added")
        .into_iter()
        .map(|(u, _)| u)
        .collect();
    added.sort();
    assert_eq!(added, ["ana", "ben"]);
    assert_eq!(group("group_member_removed")[0].0, "ben");
    let at = |tag: &str| {
        seen.iter()
            .position(|d| d.tag.as_deref() == Some(tag))
            .unwrap()
    };
    let crew_message = seen
        .iter()
        .position(|d| {
            serde_json::from_slice::<Event>(&d.body).unwrap().msg_id == Some(id(&to_crew))
        })
        .unwrap();
    assert!(at("group_created") < at("group_member_added"));
    assert!(at("group_member_added") < crew_message);
    events.stop().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_conversation_keeps_its_order_with_senders_on_two_pods() {
    const EACH: usize = 60;
    let c = Cluster::start("events-order", 2).await;
    let (events, cluster) = streams(&c).await;
    let mut ana = c.pod(0).connect("ana").await;
    let mut ben = c.pod(1).connect("ben").await;
    tokio::join!(
        async {
            for i in 0..EACH {
                ana.send(json!({"type": "send", "client_msg_id": format!("a{i}"), "to": "ben", "content": format!("a{i}")}))
                    .await;
            }
        },
        async {
            for i in 0..EACH {
                ben.send(json!({"type": "send", "client_msg_id": format!("b{i}"), "to": "ana", "content": format!("b{i}")}))
                    .await;
            }
        }
    );
    for tap in [&events, &cluster] {
        let tag = if tap.topic.ends_with("-cluster-events") {
            "C2C_SEND"
        } else {
            "message_sent"
        };
        let seen = tap
            .wait_until(WAIT, "every message", |s| {
                with_tag(s, tag)
                    .iter()
                    .filter_map(|d| d.key.clone())
                    .collect::<HashSet<_>>()
                    .len()
                    >= 2 * EACH
            })
            .await;
        // In arrival order, first copies only (delivery is at least once),
        // the conversation's seq never goes back.
        let mut keys = HashSet::new();
        let mut last = 0;
        for d in with_tag(&seen, tag) {
            if !keys.insert(d.key.clone()) {
                continue;
            }
            let seq = if tag == "message_sent" {
                serde_json::from_slice::<Event>(&d.body)
                    .unwrap()
                    .seq
                    .unwrap()
            } else {
                // C2C records carry no seq: the msg id is per pod, so map it
                // through the events stream's records.
                let data: C2cMsg = cluster_event(d).parse_data().unwrap();
                seq_of(&events.seen(), &data.msg_id)
            };
            assert!(seq > last, "{}: seq {seq} after {last}", tap.topic);
            last = seq;
        }
        assert_eq!(last, 2 * EACH as u64);
    }
    // The relaying is spread: each of the two pods holds 8 of the 16 leases.
    let mut conn = redis_of(&c).await;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let mut holders: BTreeMap<String, usize> = BTreeMap::new();
        for key in lease_keys(&c) {
            let holder: Option<String> = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .unwrap();
            *holders.entry(holder.unwrap_or_default()).or_default() += 1;
        }
        let want: BTreeMap<String, usize> = [("sb-0".into(), 8), ("sb-1".into(), 8)].into();
        if holders == want {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "lease holders: {holders:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    events.stop().await;
    cluster.stop().await;
}

fn seq_of(events: &[Delivery], msg_id: &str) -> u64 {
    events
        .iter()
        .filter_map(|d| serde_json::from_slice::<Event>(&d.body).ok())
        .find(|e| e.msg_id.as_deref() == Some(msg_id))
        .and_then(|e| e.seq)
        .unwrap_or_else(|| panic!("no message_sent for {msg_id}"))
}

/// The outbox outlives the pod that accepted the message: while a "dead pod"
/// holds every shard's lease (as one killed mid-relay does), sb-0 accepts
/// messages and is killed with SIGKILL; nothing is published until the lease
/// expires, then sb-1 takes the shards and publishes every event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_killed_right_after_sent_loses_no_event() {
    let mut c = Cluster::start("events-kill", 2).await;
    let (events, cluster) = streams(&c).await;
    let lease_ms = 6_000;
    hold_leases(&c, lease_ms).await;
    let leased_at = std::time::Instant::now();
    let mut ana = c.pod(0).connect("ana").await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(ana.say("ben", &format!("k{i}"), "before the kill").await["msg_id"].clone());
    }
    c.pods[0].kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        leased_at.elapsed() < Duration::from_millis(lease_ms) && events.seen().is_empty(),
        "published while another pod held the leases: {:?}",
        events.seen()
    );
    let seen = events
        .wait_until(WAIT, "the killed pod's events", |s| {
            with_tag(s, "message_sent").len() >= 5
        })
        .await;
    let got = sent_ids(&seen);
    for id in &ids {
        assert!(got.contains(id.as_str().unwrap()), "{id} missing");
    }
    // sb-1 reaps the dead pod (3 missed heartbeats): ana left, from sb-0.
    let seen = events
        .wait_until(WAIT, "ana's user_leave", |s| {
            !with_tag(s, "user_leave").is_empty()
        })
        .await;
    let leave: Event = serde_json::from_slice(&with_tag(&seen, "user_leave")[0].body).unwrap();
    assert_eq!(
        (leave.user_id.as_str(), leave.pod.as_deref()),
        ("ana", Some("sb-0"))
    );
    assert!(leased_at.elapsed() >= Duration::from_millis(lease_ms));
    cluster
        .wait_until(WAIT, "the killed pod's C2C records", |s| {
            with_tag(s, "C2C_SEND").len() >= 5
        })
        .await;
    events.stop().await;
    cluster.stop().await;
}

/// The outbox is bounded: while nothing relays it (a "dead pod" holds the
/// leases), a send that would pass `SB_EVENTS_OUTBOX_LIMIT` is refused with
/// `unavailable` (nothing stored, no event lost); once the relay catches up,
/// the same resend is accepted and both messages' events appear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_outbox_refuses_sends_until_the_relay_catches_up() {
    let mut c = Cluster::new("events-full", "2s");
    // 16 shards of one entry each.
    c.set_env("SB_EVENTS_OUTBOX_LIMIT", "16");
    c.provision(1).await;
    let mut conn = hold_leases(&c, 120_000).await;
    let pod = c.spawn(0);
    c.pods.push(pod);
    switchboard_e2e::wait_ready(c.pod(0)).await;
    let (events, cluster) = streams(&c).await;
    // A peer whose conversation is not in shard 0, where ana's join waits.
    let peer = (0..)
        .map(|i| format!("peer{i}"))
        .find(|p| !switchboard_events::lane(&format!("dm:ana:{p}")).is_multiple_of(16))
        .unwrap();
    let mut ana = c.pod(0).connect("ana").await;
    let first = ana.say(&peer, "f1", "one").await;
    assert_eq!(first["type"], "sent");
    let answer = |v: &serde_json::Value| v["type"] == "sent" || v["type"] == "error";
    ana.send(json!({"type": "send", "client_msg_id": "f2", "to": peer, "content": "two"}))
        .await;
    let refused = loop {
        let v = ana.next().await.unwrap();
        if answer(&v) {
            break v;
        }
    };
    assert_eq!(
        (refused["type"].as_str(), refused["code"].as_str()),
        (Some("error"), Some("unavailable")),
        "{refused}"
    );
    assert_eq!(refused["client_msg_id"], "f2");
    assert!(events.seen().is_empty());

    // The "dead pod" is gone: the relay takes the shards and drains them.
    let _: () = redis::cmd("DEL")
        .arg(lease_keys(&c))
        .query_async(&mut conn)
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    let second = loop {
        ana.send(json!({"type": "send", "client_msg_id": "f2", "to": peer, "content": "two"}))
            .await;
        let v = loop {
            let v = ana.next().await.unwrap();
            if answer(&v) {
                break v;
            }
        };
        if v["type"] == "sent" {
            break v;
        }
        assert!(std::time::Instant::now() < deadline, "still refused: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let ids: HashSet<String> = [&first, &second]
        .iter()
        .map(|v| v["msg_id"].as_str().unwrap().to_owned())
        .collect();
    let seen = events
        .wait_until(WAIT, "both message_sent", |s| {
            with_tag(s, "message_sent").len() >= 2
        })
        .await;
    assert_eq!(sent_ids(&seen), ids);
    events.stop().await;
    cluster.stop().await;
}
