//! The broker away for 20 s while messages are sent: every send is accepted
//! (the events wait in the Redis outbox), and once the broker is back every
//! event of every one of them appears, read by an independent consumer.
//!
//! A test binary of its own: it stops the shared broker, and cargo runs test
//! binaries one after another.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use switchboard_e2e::Cluster;
use switchboard_e2e::tap::{streams, with_tag};
use switchboard_events::{C2cMsg, ClusterEvent, Event};

const OUTAGE: Duration = Duration::from_secs(20);

fn deps_script() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/deps")
}

async fn deps(cmd: &str) {
    let status = tokio::process::Command::new(deps_script())
        .arg(cmd)
        .status()
        .await
        .unwrap();
    assert!(status.success(), "scripts/deps {cmd} failed");
}

/// Starts the broker again if the test fails while it is stopped, so the
/// test binaries after this one find it.
struct BrokerBack(bool);

impl Drop for BrokerBack {
    fn drop(&mut self) {
        if !self.0 {
            let _ = std::process::Command::new(deps_script())
                .arg("start-broker")
                .status();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_appears_after_the_broker_was_away_for_20s() {
    let c = Cluster::start("outage", 1).await;
    let (events, cluster) = streams(&c).await;
    let mut ana = c.pod(0).connect("ana").await;
    let mut ids = HashSet::new();
    let first = ana.say("ben", "before", "before the outage").await;
    ids.insert(first["msg_id"].as_str().unwrap().to_owned());
    events
        .wait_until(Duration::from_secs(30), "the first message_sent", |s| {
            !with_tag(s, "message_sent").is_empty()
        })
        .await;

    ana.close().await;
    let mut back = BrokerBack(false);
    deps("stop-broker").await;
    let stopped = Instant::now();
    // A new connection: the old one would have idled out (3 heartbeats of the
    // test cluster) while the broker took its time to stop.
    let mut ana = c.pod(0).connect("ana").await;
    let mut i = 0;
    while stopped.elapsed() < OUTAGE {
        ana.send(json!({"type": "send", "client_msg_id": format!("out{i}"), "to": "ben", "content": format!("during the outage {i}")}))
            .await;
        let sent = loop {
            match ana.next().await {
                Some(v) if v["type"] == "presence" => continue,
                Some(v) => break v,
                None => panic!(
                    "the connection ended during the outage; the pod's log:\n{}",
                    c.pod(0).log().join("\n")
                ),
            }
        };
        assert_eq!(
            sent["type"], "sent",
            "refused while the broker was away: {sent}"
        );
        ids.insert(sent["msg_id"].as_str().unwrap().to_owned());
        i += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let msg_id_of_event = |d: &switchboard_rocketmq::Delivery| {
        serde_json::from_slice::<Event>(&d.body)
            .unwrap()
            .msg_id
            .unwrap()
    };
    let before: HashSet<_> = with_tag(&events.seen(), "message_sent")
        .iter()
        .map(|d| msg_id_of_event(d))
        .collect();
    assert_eq!(before.len(), 1, "published while the broker was away?");
    deps("start-broker").await;
    back.0 = true;
    eprintln!(
        "{} messages sent while the broker was away for {:?}",
        ids.len() - 1,
        stopped.elapsed()
    );

    let seen = events
        .wait_until(Duration::from_secs(120), "every message_sent", |s| {
            with_tag(s, "message_sent")
                .iter()
                .map(|d| msg_id_of_event(d))
                .collect::<HashSet<_>>()
                .is_superset(&ids)
        })
        .await;
    assert!(!with_tag(&seen, "message_sent").is_empty());
    cluster
        .wait_until(Duration::from_secs(60), "every C2C_SEND_MSG", |s| {
            with_tag(s, "C2C_SEND")
                .iter()
                .map(|d| {
                    serde_json::from_slice::<ClusterEvent>(&d.body)
                        .unwrap()
                        .parse_data::<C2cMsg>()
                        .unwrap()
                        .msg_id
                })
                .collect::<HashSet<_>>()
                .is_superset(&ids)
        })
        .await;
    events.stop().await;
    cluster.stop().await;
}
