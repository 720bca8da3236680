//! Soak: mixed traffic on a 2-node cluster (real Redis and RocketMQ, release
//! nodes) for a bounded time. Nothing acknowledged is lost, and the nodes'
//! memory, file descriptors and tasks stay flat under load and fall back
//! when the clients leave.
//!
//! CI runs one minute. The long run (figures in docs/benchmarks.md):
//! `SB_SOAK_SECS=600 cargo test --release -p switchboard-e2e --test soak -- --nocapture`
//! (after `eval "$(scripts/deps start)"` and a release build of the node).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use switchboard_e2e::Cluster;
use switchboard_e2e::soak::{self, PodSample};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The largest value of `f` over the samples taken in `[from, to)` of the run.
fn peak(
    r: &soak::Report,
    pod: usize,
    from: Duration,
    to: Duration,
    f: impl Fn(&PodSample) -> u64,
) -> u64 {
    r.samples
        .iter()
        .filter(|(at, _)| *at >= from && *at < to)
        .map(|(_, s)| f(&s[pod]))
        .max()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_traffic_loses_nothing_and_leaks_nothing() {
    let secs = env("SB_SOAK_SECS", 60);
    let users = env("SB_SOAK_USERS", 24) as usize;
    let seed = env("SB_SOAK_SEED", switchboard_node_seed());
    let c = Cluster::start("soak", 2).await;
    let total = Duration::from_secs(secs);
    let r = soak::run(&c, users, total, seed).await;

    eprintln!(
        "soak {secs} s, {users} users, seed {seed}: {} direct + {} group messages, {} deliveries expected, {} lost, {} sessions, {} resends",
        r.direct,
        r.group,
        r.deliveries_expected,
        r.lost.len(),
        r.sessions,
        r.resent
    );
    for (i, b) in r.baseline.iter().enumerate() {
        eprintln!("  sb-{i} before: {b:?}");
    }
    for (at, s) in &r.samples {
        eprintln!("  {:>5.0} s: {s:?}", at.as_secs_f64());
    }
    for (i, a) in r.after.iter().enumerate() {
        eprintln!("  sb-{i} after: {a:?}");
    }

    assert!(r.lost.is_empty(), "lost: {:?}", r.lost);
    assert!(r.direct > 0 && r.group > 0 && r.sessions > users as u64);
    // Flat under load: the second half's peaks against the first half's
    // (after a warm-up of a quarter). Tolerances: RSS 20 % + 16 MiB (the
    // allocator keeps freed pages), fds and tasks the churn of every user
    // reconnecting at once (two tasks and one fd per connection) + 16.
    let (q1, half) = (total / 4, total / 2);
    for pod in 0..c.pods.len() {
        let early = |f: fn(&PodSample) -> u64| peak(&r, pod, q1, half, f);
        let late =
            |f: fn(&PodSample) -> u64| peak(&r, pod, half, total + Duration::from_secs(5), f);
        let churn = 2 * users as u64 + 16;
        let (e, l) = (early(|s| s.rss_kib), late(|s| s.rss_kib));
        assert!(
            l <= e + e / 5 + 16 * 1024,
            "sb-{pod} RSS grew: {e} -> {l} KiB"
        );
        let (e, l) = (early(|s| s.fds), late(|s| s.fds));
        assert!(l <= e + churn, "sb-{pod} fds grew: {e} -> {l}");
        let (e, l) = (early(|s| s.tasks), late(|s| s.tasks));
        assert!(l <= e + 2 * churn, "sb-{pod} tasks grew: {e} -> {l}");
        // And back down once every client left.
        let (b, a) = (r.baseline[pod], r.after[pod]);
        assert_eq!(a.connections, 0, "sb-{pod}: {a:?}");
        assert!(
            a.fds <= b.fds + 16,
            "sb-{pod} fds left open: {b:?} -> {a:?}"
        );
        assert!(
            a.tasks <= b.tasks + 16,
            "sb-{pod} tasks left: {b:?} -> {a:?}"
        );
    }
}

fn switchboard_node_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}
