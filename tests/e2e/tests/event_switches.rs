//! What the settings put on the business streams: each stream switches off
//! on its own (`SB_CLUSTER_EVENTS=false`, as
//! `spec.eventStreams.clusterEvents: false` renders it), the other keeps
//! publishing; moderation's refusals and rewrites are `message_moderated`
//! events.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use serde_json::json;
use switchboard_e2e::tap::{streams, with_tag};
use switchboard_e2e::{Cluster, wait_ready};
use switchboard_events::Event;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_switched_off_publishes_nothing_and_the_other_goes_on() {
    let mut c = Cluster::new("switches", "2s");
    c.set_env("SB_CLUSTER_EVENTS", "false");
    c.provision(1).await;
    let pod = c.spawn(0);
    wait_ready(&pod).await;
    c.pods.push(pod);
    let (events, cluster) = streams(&c).await;
    let mut ana = c.pod(0).connect("ana").await;
    ana.say("ben", "s1", "hello").await;
    events
        .wait_until(Duration::from_secs(30), "message_sent", |s| {
            !with_tag(s, "message_sent").is_empty()
        })
        .await;
    // Both streams' records of an entry go out in the same relay pass, the
    // events first: a second more is ample for a C2C record to follow.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        cluster.seen().is_empty(),
        "cluster events published while switched off: {}",
        cluster.seen().len()
    );
    events.stop().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_and_rewritten_messages_are_moderated_events() {
    let dir = std::env::temp_dir().join(format!("sb-moderated-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let words = dir.join("words.txt");
    std::fs::write(&words, "darn\n").unwrap();
    let mut c = Cluster::new("moderated", "2s");
    c.set_env("SB_MODERATION_WORDS_FILE", words.to_str().unwrap());
    c.provision(2).await;
    // Pod 0 refuses; pod 1 (spawned after the switch) masks.
    c.set_env("SB_MODERATION_WORDS_ACTION", "reject");
    c.pods.push(c.spawn(0));
    c.set_env("SB_MODERATION_WORDS_ACTION", "mask");
    c.pods.push(c.spawn(1));
    for p in &c.pods {
        wait_ready(p).await;
    }
    let (events, cluster) = streams(&c).await;

    let mut ana = c.pod(0).connect("ana").await;
    ana.send(json!({"type": "send", "client_msg_id": "r1", "to": "ben", "content": "well darn"}))
        .await;
    let refused = ana.expect("error").await;
    assert_eq!(refused["code"], "moderated", "{refused}");
    let mut ben = c.pod(1).connect("ben").await;
    let sent = ben.say("ana", "w1", "Darn it").await;
    let msg_id = match &sent["msg_id"] {
        serde_json::Value::String(id) => id.clone(),
        other => other.to_string(),
    };

    let seen = events
        .wait_until(Duration::from_secs(30), "two message_moderated", |s| {
            with_tag(s, "message_moderated").len() >= 2
        })
        .await;
    let mut moderated: Vec<Event> = with_tag(&seen, "message_moderated")
        .iter()
        .map(|d| serde_json::from_slice(&d.body).unwrap())
        .collect();
    moderated.sort_by(|a, b| a.user_id.cmp(&b.user_id));
    let [refusal, rewrite] = &moderated[..] else {
        panic!("expected two events, read {moderated:?}");
    };
    let m = refusal.moderation.as_ref().unwrap();
    assert_eq!(
        (
            refusal.user_id.as_str(),
            refusal.message.as_str(),
            m.action.as_str(),
            m.by.as_str(),
            refusal.msg_id.as_deref(),
            refusal.to_user_id.as_deref()
        ),
        ("ana", "well darn", "rejected", "rules", None, Some("ben"))
    );
    assert!(m.reason.is_some(), "a refusal says why: {m:?}");
    let m = rewrite.moderation.as_ref().unwrap();
    assert_eq!(
        (
            rewrite.user_id.as_str(),
            rewrite.message.as_str(),
            m.action.as_str(),
            rewrite.msg_id.clone()
        ),
        ("ben", "Darn it", "rewritten", Some(msg_id))
    );
    // The refused message was not stored, so not sent; the rewritten one
    // went out masked.
    let sent: Vec<Event> = with_tag(&events.seen(), "message_sent")
        .iter()
        .map(|d| serde_json::from_slice(&d.body).unwrap())
        .collect();
    assert_eq!(
        sent.iter().map(|e| e.message.as_str()).collect::<Vec<_>>(),
        ["**** it"]
    );
    events.stop().await;
    cluster.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
