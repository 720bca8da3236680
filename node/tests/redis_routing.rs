//! Where to push, read by the Redis store with its writes, against a real
//! Redis. A test binary of its own: it flushes Redis's script cache, which
//! would race with other tests loading their scripts.
//!
//! Needs `SB_TEST_REDIS_URL` (set by `eval "$(scripts/deps start)"`, which
//! `scripts/test` does); without it this test fails rather than skips.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use switchboard_node::backend::memory::StoreLimits;
use switchboard_node::backend::redis::{Keys, RedisRegistry, RedisStore, connect};
use switchboard_node::backend::{ConnectionInfo, MessageStore, Registry, contract};
use switchboard_node::ids::{MsgId, UserId};

/// A write reads where to push in the same round trip: `append` answers the
/// pods of each recipient and of the sender (after a script flush too: the
/// pipeline loads its script again), `ack` the pods of each message's sender,
/// or nothing for an entry that does not name its sender (stored by an older
/// node): the router then asks the registry.
#[tokio::test]
async fn writes_answer_where_to_push() {
    let url = std::env::var("SB_TEST_REDIS_URL").expect("SB_TEST_REDIS_URL is not set");
    let conn = connect(&url, None, Default::default()).await.unwrap();
    let keys = Keys::new(
        "test",
        &format!("route-{}", switchboard_node::ids::now_millis()),
    );
    let prefix = keys.prefix().to_owned();
    let r = RedisRegistry::new(
        conn.clone(),
        keys.clone(),
        Duration::from_secs(300),
        Duration::from_secs(30),
    );
    let s = RedisStore::new(
        conn.clone(),
        keys,
        StoreLimits {
            history_limit: 5,
            inbox_limit: 10,
            dedup_ttl: Duration::from_secs(60),
            dedup_limit: 100,
            max_group_members: 3,
        },
    );
    let a = UserId::parse("a").unwrap();
    let b = UserId::parse("b").unwrap();
    let on = |user: &UserId, pod: &str| ConnectionInfo {
        conn_id: format!("{pod}#{user}"),
        user: user.clone(),
        pod: pod.into(),
    };
    r.register(&on(&a, "p0")).await.unwrap();
    r.register(&on(&a, "p2")).await.unwrap();
    r.register(&on(&b, "p1")).await.unwrap();
    let msg = |id| contract::dm(id, &a, &b, None);
    let mut raw = conn.clone();
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut raw)
        .await
        .unwrap();
    let mut pods = s
        .append(msg(1), std::slice::from_ref(&b))
        .await
        .unwrap()
        .pods
        .expect("pods read with the write");
    pods[1].sort();
    assert_eq!(
        pods,
        vec![vec!["p1".to_owned()], vec!["p0".into(), "p2".into()]]
    );
    s.append(msg(2), std::slice::from_ref(&b)).await.unwrap();
    let _: () = redis::cmd("HDEL")
        .arg(format!("{prefix}msg:2"))
        .arg("f")
        .query_async(&mut raw)
        .await
        .unwrap();
    let acked = s.ack(&b, &[MsgId(1), MsgId(2)]).await.unwrap();
    assert_eq!(acked.len(), 2);
    let mut first = acked[0].sender_pods.clone().expect("sender's pods");
    first.sort();
    assert_eq!(first, vec!["p0".to_owned(), "p2".into()]);
    assert_eq!(acked[0].msg.msg_id.0, 1);
    assert_eq!(
        acked[1].sender_pods, None,
        "no sender recorded: ask the registry"
    );
    assert_eq!(acked[1].msg.seq, 2);
}
