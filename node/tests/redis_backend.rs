//! The Redis backends against a real Redis: the same contract the in-memory
//! backends keep, plus what only a networked backend has (TTLs, a restart).
//!
//! Needs `SB_TEST_REDIS_URL` (set by `eval "$(scripts/deps start)"`, which
//! `scripts/test` does); without it these tests fail rather than skip.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use switchboard_node::backend::memory::StoreLimits;
use switchboard_node::backend::redis::{Keys, RedisRegistry, RedisStore, connect};
use switchboard_node::backend::{ConnectionInfo, Registry, contract};
use switchboard_node::ids::UserId;

fn url() -> String {
    std::env::var("SB_TEST_REDIS_URL")
        .expect("SB_TEST_REDIS_URL is not set: run `eval \"$(scripts/deps start)\"` first (scripts/test does)")
}

/// A fresh key space per test, so tests share one Redis without interfering.
fn keys(test: &str) -> Keys {
    Keys::new(
        "test",
        &format!("{test}-{}", switchboard_node::ids::now_millis()),
    )
}

async fn store(test: &str) -> RedisStore {
    RedisStore::new(
        connect(&url(), None, Default::default()).await.unwrap(),
        keys(test),
        StoreLimits {
            history_limit: 5,
            inbox_limit: 2,
            dedup_ttl: Duration::from_secs(60),
            dedup_limit: 100,
            max_group_members: 3,
        },
    )
}

#[tokio::test]
async fn store_keeps_the_contract() {
    let s = store("store").await;
    contract::append_and_dedup(&s, "t1", 1000).await;
    contract::inbox_ack_and_limit(&s, "t2", 2000).await;
    contract::history_pages(&s, "t3", 3000).await;
    contract::groups(&s, "t4", 4000).await;
    contract::command_log(&s, "t7").await;
    contract::recall(&s, "t5", 5000).await;
    contract::receipts(&s, "t6", 6000).await;
}

#[tokio::test]
async fn registry_keeps_the_contract() {
    let conn = connect(&url(), None, Default::default()).await.unwrap();
    let r = RedisRegistry::new(
        conn,
        keys("registry"),
        Duration::from_secs(300),
        Duration::from_secs(30),
    );
    contract::registry(&r, "t1").await;
}

#[tokio::test]
async fn dedup_keys_expire_after_their_ttl() {
    let s = RedisStore::new(
        connect(&url(), None, Default::default()).await.unwrap(),
        keys("dedup"),
        StoreLimits {
            history_limit: 5,
            inbox_limit: 10,
            dedup_ttl: Duration::from_millis(300),
            dedup_limit: 100,
            max_group_members: 3,
        },
    );
    let a = UserId::parse("a").unwrap();
    let b = UserId::parse("b").unwrap();
    let msg = |id| contract::dm(id, &a, &b, Some("same"));
    use switchboard_node::backend::MessageStore;
    assert!(!s.append(msg(1), &[]).await.unwrap().duplicate);
    assert!(s.append(msg(2), &[]).await.unwrap().duplicate);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let third = s.append(msg(3), &[]).await.unwrap();
    assert!(!third.duplicate, "remembered only for the TTL");
    assert_eq!(third.msg.seq, 2);
}

#[tokio::test]
async fn a_dead_pods_entries_are_removed_by_a_survivor() {
    let conn = connect(&url(), None, Default::default()).await.unwrap();
    let keys = keys("reaper");
    // Pods live for 3 heartbeats: 3 x 100 ms.
    let r = RedisRegistry::new(
        conn,
        keys,
        Duration::from_secs(300),
        Duration::from_millis(100),
    );
    let u = UserId::parse("zed").unwrap();
    let on = |pod: &str| ConnectionInfo {
        conn_id: format!("{pod}#1"),
        user: u.clone(),
        pod: pod.into(),
    };
    r.register(&on("dead-0")).await.unwrap();
    r.heartbeat("dead-0", &[on("dead-0")]).await.unwrap();
    r.heartbeat("live-1", &[]).await.unwrap();
    assert!(r.presence(&u).await.unwrap().online);
    tokio::time::sleep(Duration::from_millis(400)).await;
    // dead-0 stopped beating; live-1's heartbeat removes its entries.
    r.heartbeat("live-1", &[]).await.unwrap();
    let p = r.presence(&u).await.unwrap();
    assert!(!p.online, "{p:?}");
    assert_eq!(r.stats().await.unwrap().connections, 0);
}

#[tokio::test]
async fn presence_rebuilds_itself_after_a_flush() {
    let conn = connect(&url(), None, Default::default()).await.unwrap();
    let keys = keys("flush");
    let prefix = keys.prefix().to_owned();
    let r = RedisRegistry::new(
        conn.clone(),
        keys,
        Duration::from_secs(300),
        Duration::from_secs(30),
    );
    let u = UserId::parse("phoenix").unwrap();
    let c = ConnectionInfo {
        conn_id: "p#1".into(),
        user: u.clone(),
        pod: "p".into(),
    };
    r.register(&c).await.unwrap();
    // Lose every key of this cluster, as a Redis restart without persistence would.
    let mut raw = conn.clone();
    let all: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut raw)
        .await
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg(&all)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(!r.presence(&u).await.unwrap().online);
    // One heartbeat of the pod holding the connection brings it back.
    r.heartbeat("p", std::slice::from_ref(&c)).await.unwrap();
    let p = r.presence(&u).await.unwrap();
    assert!(p.online && p.devices == 1, "{p:?}");
    assert_eq!(
        r.stats().await.unwrap(),
        switchboard_node::model::OnlineStats {
            online_users: 1,
            connections: 1
        }
    );
}

#[tokio::test]
async fn every_redis_call_is_timed_by_command_and_failures_counted() {
    let metrics = switchboard_node::metrics::BackendMetrics::default();
    let metrics_handle = metrics.clone();
    let conn = connect(&url(), None, metrics.clone()).await.unwrap();
    let r = RedisRegistry::new(
        conn,
        keys("timed"),
        Duration::from_secs(300),
        Duration::from_secs(30),
    );
    let m = switchboard_node::metrics::Metrics::with_backends(metrics);
    r.ping().await.unwrap();
    r.presence(&UserId::parse("zed").unwrap()).await.unwrap();
    let text = m.encode();
    let count = |command: &str| {
        text.lines()
            .find(|l| {
                l.starts_with(&format!(
                    "switchboard_redis_command_seconds_count{{command=\"{command}\"}}"
                ))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    assert_eq!(count("ping"), Some(1.0), "{text}");
    assert!(
        count("pipeline").is_some() || count("hget").is_some() || count("evalsha").is_some(),
        "{text}"
    );
    assert!(
        !text.contains("switchboard_redis_command_errors_total{"),
        "{text}"
    );
    // An error reply (WRONGTYPE) is a failed call, counted by command.
    let mut conn = connect(&url(), None, metrics_handle).await.unwrap();
    let key = format!("sb-test-wrongtype-{}", switchboard_node::ids::now_millis());
    redis::cmd("SET")
        .arg(&key)
        .arg("v")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let wrong = redis::cmd("HGETALL")
        .arg(&key)
        .query_async::<redis::Value>(&mut conn)
        .await;
    assert!(wrong.is_err(), "{wrong:?}");
    let text = m.encode();
    assert!(
        text.contains(r#"switchboard_redis_command_errors_total{command="hgetall"} 1"#),
        "{text}"
    );
}
