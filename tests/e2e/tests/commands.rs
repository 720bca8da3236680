//! Commands from backends on real Redis and real Apache RocketMQ: seed 002's
//! three JSON examples, verbatim, build the activity's group (owner, title,
//! members) with one notice each, however often they are delivered;
//! a new device's welcome shows the group's owner and title;
//! `user.disconnect` closes the user's devices on every pod;
//! refused commands reach the dead-letter topic at once with their reason;
//! a command sent while Redis is away is retried and applied once it is back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchboard_e2e::tap::Tap;
use switchboard_e2e::{Client, Cluster, OwnRedis, http_get, wait_consumers};
use switchboard_rocketmq::names::Names;
use switchboard_rocketmq::{Producer, Record, Runtime};

const WAIT: Duration = Duration::from_secs(60);

// Seed 002's examples, byte for byte.
const CREATED: &str = r#"{
  "activity_id": "act_123456",
  "creator_id": "user_789",
  "title": "周末爬山活动",
  "created_at": "2024-01-01T10:00:00Z"
}"#;
const JOINED: &str = r#"{
  "activity_id": "act_123456",
  "user_id": "user_456",
  "joined_at": "2024-01-01T11:00:00Z"
}"#;
const LEFT: &str = r#"{
  "activity_id": "act_123456",
  "user_id": "user_456",
  "left_at": "2024-01-01T12:00:00Z"
}"#;
const GROUP: &str = "activity-act_123456";

/// A backend publishing commands: one queue for the activity, in order.
struct Backend {
    producer: Producer,
    topic: String,
    _rt: Runtime,
}

impl Backend {
    async fn start(c: &Cluster) -> Self {
        let rt = Runtime::new().unwrap();
        let producer = Producer::start(&rt, c.namesrv(), &format!("{}-backend", c.prefix))
            .await
            .unwrap();
        Self {
            producer,
            topic: Names::new(&c.prefix).commands_topic(),
            _rt: rt,
        }
    }

    /// Sends with the type as the tag (or, `by_property`, as the
    /// `event_type` property, no tag).
    async fn send(&self, kind: &str, body: &str, by_property: bool) {
        let record = if by_property {
            Record {
                properties: vec![("event_type".into(), kind.into())],
                body: body.as_bytes().to_vec(),
                ..Record::default()
            }
        } else {
            Record {
                tag: Some(kind.into()),
                body: body.as_bytes().to_vec(),
                ..Record::default()
            }
        };
        self.producer
            .send_batch(&self.topic, 7, &[record])
            .await
            .unwrap();
    }
}

async fn group_of(c: &Cluster) -> Value {
    http_get(c.pod(0).addr, &format!("/api/v1/groups/{GROUP}"))
        .await
        .1
}

/// Waits for the group to satisfy `done`, keeping `clients` alive (the pods
/// close connections silent for three heartbeats, 6 s here).
async fn wait_group(
    c: &Cluster,
    clients: &mut [&mut Client],
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + WAIT;
    let mut pinged = Instant::now();
    loop {
        let g = group_of(c).await;
        if done(&g) {
            return g;
        }
        assert!(Instant::now() < deadline, "no {what} within {WAIT:?}: {g}");
        if pinged.elapsed() > Duration::from_secs(1) {
            for client in clients.iter_mut() {
                client.send(json!({"type": "ping"})).await;
            }
            pinged = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The next frame of `ty`, passing over any other.
async fn next_of(client: &mut Client, ty: &str) -> Value {
    loop {
        let v = client
            .next()
            .await
            .unwrap_or_else(|| panic!("connection ended while waiting for {ty}"));
        if v["type"] == ty {
            return v;
        }
    }
}

fn members(g: &Value) -> Vec<&str> {
    g["members"]
        .as_array()
        .map(|m| m.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_activity_events_build_the_group_once_however_often_delivered() {
    let c = Cluster::start("commands", 2).await;
    wait_consumers(&c, "commands").await;
    let backend = Backend::start(&c).await;
    let mut creator = c.pod(1).connect("user_789").await;

    // Twice, as a producer retrying after a lost answer would.
    backend.send("activity.created", CREATED, false).await;
    backend.send("activity.created", CREATED, false).await;
    let g = wait_group(&c, &mut [&mut creator], "group with its owner", |g| {
        g["owner"] == "user_789"
    })
    .await;
    assert_eq!(g["title"], "周末爬山活动");
    assert_eq!(members(&g), ["user_789"]);
    let created = next_of(&mut creator, "group").await;
    assert_eq!(
        (created["change"].as_str(), created["group"].as_str()),
        (Some("created"), Some(GROUP))
    );
    let notice = next_of(&mut creator, "message").await;
    assert_eq!(
        (
            notice["from"].as_str(),
            notice["format"].as_str(),
            notice["content"].as_str()
        ),
        (
            Some("system"),
            Some("system"),
            Some("user_789 created the group \"周末爬山活动\"")
        )
    );

    // The pods close connections silent for a few heartbeats (2 s here).
    creator.send(json!({"type": "ping"})).await;
    let mut joiner = c.pod(0).connect("user_456").await;
    // The type as a property this time; delivered twice too.
    backend.send("activity.member.joined", JOINED, true).await;
    backend.send("activity.member.joined", JOINED, true).await;
    wait_group(
        &c,
        &mut [&mut creator, &mut joiner],
        "user_456 in the group",
        |g| members(g) == ["user_456", "user_789"],
    )
    .await;
    creator.send(json!({"type": "ping"})).await;
    joiner.send(json!({"type": "ping"})).await;
    // The joiner (pod 0) learns of the membership and gets the notice; the
    // creator (pod 1) gets the notice across the bus.
    let added = next_of(&mut joiner, "group").await;
    assert_eq!(
        (added["change"].as_str(), added["users"][0].as_str()),
        (Some("added"), Some("user_456"))
    );
    assert_eq!(
        next_of(&mut joiner, "message").await["content"],
        "user_456 joined"
    );
    assert_eq!(
        next_of(&mut creator, "message").await["content"],
        "user_456 joined"
    );

    backend.send("activity.member.left", LEFT, false).await;
    wait_group(&c, &mut [&mut creator, &mut joiner], "user_456 gone", |g| {
        members(g) == ["user_789"]
    })
    .await;
    creator.send(json!({"type": "ping"})).await;
    joiner.send(json!({"type": "ping"})).await;
    let removed = next_of(&mut joiner, "group").await;
    assert_eq!(
        (removed["change"].as_str(), members(&removed)),
        (Some("removed"), vec!["user_789"])
    );
    assert_eq!(
        next_of(&mut creator, "message").await["content"],
        "user_456 left"
    );

    // One notice per command, whatever was delivered twice.
    creator
        .send(json!({"type": "history", "conversation": format!("group:{GROUP}")}))
        .await;
    let h = next_of(&mut creator, "history").await;
    let texts: Vec<&str> = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["content"].as_str())
        .collect();
    assert_eq!(
        texts,
        [
            "user_789 created the group \"周末爬山活动\"",
            "user_456 joined",
            "user_456 left"
        ]
    );
    // A new device hears the group's owner and title in its welcome.
    let again = c.pod(0).connect("user_789").await;
    assert_eq!(
        again.welcome["profiles"][GROUP],
        json!({"owner": "user_789", "title": "周末爬山活动"}),
        "{}",
        again.welcome
    );

    // `user.disconnect` closes the user's devices on both pods, saying why;
    // the others stay.
    let mut laptop = c.pod(1).connect("user_456").await;
    backend
        .send(
            "user.disconnect",
            r#"{"user_id":"user_456","reason":"account suspended"}"#,
            false,
        )
        .await;
    for device in [&mut joiner, &mut laptop] {
        let f = next_of(device, "disconnect").await;
        assert_eq!(f["reason"], "account suspended");
        assert_eq!(device.close_code().await, Some(4002));
    }
    creator.send(json!({"type": "ping"})).await;
    next_of(&mut creator, "pong").await;

    // The second deliveries were seen and counted as duplicates (RocketMQ
    // may deliver more: at least once, and twice while queues move between
    // the two consumers).
    let mut duplicates = 0;
    for p in &c.pods {
        let (_, metrics) = http_get(p.addr, "/metrics").await;
        let text = metrics.as_str().unwrap_or_default().to_owned();
        duplicates += text
            .lines()
            .filter(|l| {
                l.starts_with("messaging_handler_total{") && l.contains("outcome=\"duplicate\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum::<u64>();
    }
    assert!(
        duplicates >= 2,
        "one duplicate each of created and joined at least"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_commands_reach_the_dead_letter_topic_at_once_with_their_reason() {
    let c = Cluster::start("deadletters", 1).await;
    let dead = Tap::start(
        c.namesrv(),
        &Names::new(&c.prefix).commands_dead_letter_topic(),
    )
    .await;
    let backend = Backend::start(&c).await;
    backend
        .send("activity.created", "{\"activity_id\": ", false)
        .await;
    backend.send("activity.exploded", CREATED, false).await;
    backend
        .send(
            "activity.member.joined",
            r#"{"activity_id":"act 1","user_id":"u"}"#,
            false,
        )
        .await;
    let seen = dead
        .wait_until(WAIT, "3 dead letters", |s| s.len() >= 3)
        .await;
    let mut codes: Vec<(String, String, String)> = seen
        .iter()
        .map(|d| {
            (
                d.properties["dead_letter_code"].clone(),
                d.properties["deliveries"].clone(),
                d.tag.clone().unwrap_or_default(),
            )
        })
        .collect();
    codes.sort();
    let expected = [
        ("invalid_field", "1", "activity.member.joined"),
        ("malformed_json", "1", "activity.created"),
        ("unknown_type", "1", "activity.exploded"),
    ];
    assert_eq!(
        codes,
        expected.map(|(a, b, t)| (a.to_owned(), b.to_owned(), t.to_owned()))
    );
    for d in &seen {
        assert!(!d.properties["dead_letter_reason"].is_empty());
        assert!(!d.properties["origin_msg_id"].is_empty());
    }
    let unknown = seen
        .iter()
        .find(|d| d.tag.as_deref() == Some("activity.exploded"))
        .unwrap();
    assert_eq!(unknown.body, CREATED.as_bytes(), "the body is kept as sent");
    // Nothing was applied.
    let metrics = http_get(c.pod(0).addr, "/metrics").await.1;
    let applied: Vec<&str> = metrics
        .as_str()
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("messaging_handler_total{") && l.contains("outcome=\"applied\""))
        .collect();
    assert!(applied.is_empty(), "{applied:?}");
    assert!(
        metrics
            .as_str()
            .unwrap()
            .lines()
            .any(|l| l.starts_with("messaging_handler_total{")
                && l.contains("outcome=\"dead_lettered\"")),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_sent_while_redis_is_away_is_applied_once_it_is_back() {
    let mut redis = OwnRedis::start().await;
    let mut c = Cluster::new("cmd-outage", "2s");
    c.use_redis(&redis.url());
    // Room for a slow machine: the test broker redelivers after about 1 s.
    c.set_env("SB_COMMAND_REDELIVERIES", "8");
    c.provision(1).await;
    let pod = c.spawn(0);
    c.pods.push(pod);
    switchboard_e2e::wait_ready(c.pod(0)).await;
    wait_consumers(&c, "commands").await;
    let backend = Backend::start(&c).await;

    redis.stop();
    let body =
        r#"{"group_id":"outage","members":["ana"],"owner":"ana","title":"after the outage"}"#;
    let record = Record {
        tag: Some("group.create".into()),
        keys: vec!["create-outage-1".into()],
        body: body.as_bytes().to_vec(),
        ..Record::default()
    };
    backend
        .producer
        .send_batch(&backend.topic, 1, &[record])
        .await
        .unwrap();
    // Redis comes back once the command went back to RocketMQ (the retries
    // within the node, 100 + 200 + 400 ms, failed).
    let deadline = Instant::now() + WAIT;
    loop {
        let metrics = http_get(c.pod(0).addr, "/metrics").await.1;
        if metrics.as_str().unwrap_or_default().lines().any(|l| {
            l.starts_with("messaging_handler_total{") && l.contains("outcome=\"redelivered\"")
        }) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the command never went back to RocketMQ: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    redis.restart().await;

    let deadline = Instant::now() + WAIT;
    let group = loop {
        let (status, g) = http_get(c.pod(0).addr, "/api/v1/groups/outage").await;
        if status == 200 {
            break g;
        }
        assert!(
            Instant::now() < deadline,
            "no group within {WAIT:?}: {status} {g}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(
        (
            group["owner"].as_str(),
            group["title"].as_str(),
            members(&group)
        ),
        (Some("ana"), Some("after the outage"), vec!["ana"])
    );
    let metrics = http_get(c.pod(0).addr, "/metrics").await.1;
    let count = |prefix: &str, label: &str| -> u64 {
        metrics
            .as_str()
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                l.starts_with(prefix) && l.contains("handler=\"group.create\"") && l.contains(label)
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    assert!(
        count("messaging_handler_errors_total{", "kind=\"retryable\"") >= 4,
        "{metrics}"
    );
    assert!(
        count("messaging_handler_total{", "outcome=\"redelivered\"") >= 1,
        "{metrics}"
    );
    assert_eq!(
        count("messaging_handler_total{", "outcome=\"applied\""),
        1,
        "{metrics}"
    );
    assert_eq!(
        count("messaging_handler_total{", "outcome=\"dead_lettered\""),
        0,
        "{metrics}"
    );
}
