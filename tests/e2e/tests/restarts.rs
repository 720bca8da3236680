//! The broker and Redis restarting under traffic (`scripts/deps restart-broker`,
//! `restart-redis`): the nodes recover without a restart, and the tests count what
//! the users lost. A test binary of its own, so cargo runs it alone: the restarts
//! would disturb tests running beside them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchboard_e2e::traffic::{receive_all, send_stream};
use switchboard_e2e::{Cluster, deps, wait_ready};

/// Alice on sb-0 sends `n` messages to bob on sb-1 while `disrupt` runs after
/// `after`; returns (confirmed ids, resent count, what bob received, when the
/// disruption ended).
async fn traffic_through(
    c: &Cluster,
    n: usize,
    after: Duration,
    disrupt: &'static str,
) -> (
    BTreeSet<String>,
    usize,
    switchboard_e2e::traffic::Received,
    Instant,
) {
    let alice = c.pod(0).connect("alice").await;
    let confirmed = Arc::new(Mutex::new(None::<usize>));
    let done = confirmed.clone();
    let sender = tokio::spawn(async move {
        let sent = send_stream(alice, "bob", n).await;
        *done.lock().unwrap() = Some(sent.confirmed.len());
        sent
    });
    let restart = tokio::task::spawn_blocking(move || {
        std::thread::sleep(after);
        let took = deps(disrupt);
        eprintln!("{disrupt} took {took:?}");
        Instant::now()
    });
    let got = receive_all(c, "bob", 1, || *confirmed.lock().unwrap()).await;
    let back_at = restart.await.unwrap();
    let sent = sender.await.unwrap();
    (
        sent.confirmed.into_iter().collect(),
        sent.resent,
        got,
        back_at,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_delays_cross_pod_pushes_and_loses_nothing() {
    let c = Cluster::start("broker", 2).await;
    let pids: Vec<u32> = c.pods.iter().map(|p| p.pid()).collect();
    let n = 400;
    let (sent, resent, got, back_at) =
        traffic_through(&c, n, Duration::from_millis(300), "restart-broker").await;

    assert_eq!(sent.len(), n);
    // Sends never needed the broker (the push is queued), so no resend either.
    assert_eq!(resent, 0, "a broker outage must not refuse sends");
    let lost: Vec<_> = sent.difference(&got.ids).collect();
    assert!(lost.is_empty(), "lost {} of {n}: {lost:?}", lost.len());
    assert_eq!(got.ids, sent, "nothing but what was sent");
    assert_eq!(
        got.reconnects, 0,
        "bob stayed connected: pushes arrived late, not via inbox"
    );
    // The same processes recovered: nobody restarted a node.
    for (p, pid) in c.pods.iter().zip(&pids) {
        assert_eq!(p.pid(), *pid);
        wait_ready(p).await;
    }
    let last = got.last_at.unwrap();
    eprintln!(
        "broker restart: {n} sent, {} received live, 0 lost, {} duplicates dropped by the client; \
         last push {:.1} s after the broker was back",
        got.ids.len(),
        got.redelivered,
        last.saturating_duration_since(back_at).as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_refuses_sends_briefly_and_loses_nothing() {
    let c = Cluster::start("redis", 2).await;
    let pids: Vec<u32> = c.pods.iter().map(|p| p.pid()).collect();
    let n = 400;
    let (sent, resent, got, _) =
        traffic_through(&c, n, Duration::from_millis(300), "restart-redis").await;

    assert_eq!(sent.len(), n, "every send confirmed in the end");
    let lost: Vec<_> = sent.difference(&got.ids).collect();
    assert!(lost.is_empty(), "lost {} of {n}: {lost:?}", lost.len());
    assert_eq!(got.ids, sent, "nothing but what was sent");
    for (p, pid) in c.pods.iter().zip(&pids) {
        assert_eq!(p.pid(), *pid);
        wait_ready(p).await;
    }
    eprintln!(
        "redis restart: {n} confirmed, {resent} sends answered `unavailable` and resent, \
         {} received, 0 lost, {} duplicates dropped, {} reconnects",
        got.ids.len(),
        got.redelivered,
        got.reconnects
    );
}
