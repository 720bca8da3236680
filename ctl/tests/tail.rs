//! `switchboard-ctl events tail` against the real broker of `scripts/deps
//! start`: records sent to a cluster's events topic come out as JSON lines
//! with their tag, keys, properties and parsed body, and the tail's consumer
//! group is gone afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use switchboard_rocketmq::names::Names;
use switchboard_rocketmq::{Admin, Producer, Record, Runtime};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_prints_each_record_as_a_json_line() {
    let namesrv = std::env::var("SB_TEST_ROCKETMQ_NAMESRV")
        .expect("SB_TEST_ROCKETMQ_NAMESRV is not set: run `eval \"$(scripts/deps start)\"` first");
    let prefix = format!("ctl-{}", std::process::id());
    let names = Names::new(&prefix);
    let topic = names.events_topic();
    let rt = Runtime::new().unwrap();
    let admin = Admin::connect(&rt, &namesrv).await.unwrap();
    admin.ensure_topic(&topic, 4).await.unwrap();
    let producer = Producer::start(&rt, &namesrv, "ctl-test").await.unwrap();
    let record = |user: &str, n: u32| Record {
        tag: Some("message_sent".into()),
        keys: vec![format!("{n}:message_sent"), n.to_string()],
        properties: vec![
            ("event_type".into(), "message_sent".into()),
            ("user_id".into(), user.into()),
        ],
        body: format!(
            r#"{{"user_id":"{user}","message":"m{n}","timestamp":"t","type":"message_sent"}}"#
        )
        .into_bytes(),
    };
    producer
        .send_batch(&topic, 0, &[record("ana", 1), record("ben", 2)])
        .await
        .unwrap();

    let started = Instant::now();
    let out = tokio::task::spawn_blocking({
        let namesrv = namesrv.clone();
        let prefix = prefix.clone();
        move || {
            Command::new(env!("CARGO_BIN_EXE_switchboard-ctl"))
                .args([
                    "events",
                    "tail",
                    "--namesrv",
                    &namesrv,
                    "--prefix",
                    &prefix,
                    "--count",
                    "2",
                ])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(started.elapsed() < Duration::from_secs(90));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {stderr}", out.status);
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    for (line, (user, n)) in lines.iter().zip([("ana", 1), ("ben", 2)]) {
        assert_eq!(line["topic"], topic);
        assert_eq!(line["tag"], "message_sent");
        assert_eq!(
            line["keys"],
            serde_json::json!([format!("{n}:message_sent"), n.to_string()])
        );
        assert_eq!(line["properties"]["user_id"], user);
        assert_eq!(line["body"]["message"], format!("m{n}"));
    }
    // The tail's own group is gone after it exits.
    let group = stderr
        .split("(group ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .unwrap_or_else(|| panic!("no group in: {stderr}"));
    assert!(group.starts_with(&format!("{prefix}-ctl-tail-")), "{group}");
    assert!(
        !admin.group_exists(group).await.unwrap(),
        "{group} left behind"
    );

    producer.shutdown().await;
    admin.delete_topic(&topic).await.unwrap();
    admin.shutdown().await;
    rt.shutdown().await;
}
