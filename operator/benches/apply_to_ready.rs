//! Benchmark: time from `kubectl apply` to `Ready`, for one ChatCluster and for many at
//! once, and the operator's resident memory, on the real control plane (kwok nodes) and
//! the RocketMQ + Redis of `scripts/deps start`.
//!
//!   eval "$(scripts/deps start)"; export SB_CONTROLPLANE_BIN=$(scripts/controlplane bin | tail -1)
//!   cargo bench -p switchboard-operator --bench apply_to_ready
//!
//! `SB_BENCH_CLUSTERS` (default 100) sets how many clusters the second run applies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use kube::api::ListParams;
use support::{Env, is_ready};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::var("SB_BENCH_CLUSTERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let env = Env::start().await;
    let op = env.operator("bench");
    let ns = env.cp.namespace("bench").await.unwrap();
    env.jwt_secret(&ns);
    support::wait_until("the operator to lead", Duration::from_secs(60), || {
        let op = &op;
        async move { (op.metric("switchboard_operator_leader").await == 1.0).then_some(()) }
    })
    .await;
    let idle_rss = op.rss_kib();

    // The first cluster also pays for the operator's first connection to the name server.
    for (name, what) in [("first", "first"), ("second", "next")] {
        let began = Instant::now();
        env.apply(&ns, &env.example(name));
        env.wait_status(&ns, name, "Ready", Duration::from_secs(120), |c| {
            is_ready(c, 3)
        })
        .await;
        println!(
            "{what} ChatCluster (3 nodes): kubectl apply -> Ready in {:.2} s",
            began.elapsed().as_secs_f64()
        );
    }

    let yaml: String = (0..n)
        .map(|i| {
            env.example(&format!("c{i}"))
                .replace("replicas: 3", "replicas: 1")
        })
        .collect::<Vec<_>>()
        .join("\n---\n");
    let began = Instant::now();
    env.apply(&ns, &yaml);
    let api = env.clusters(&ns);
    let mut peak_rss = 0;
    support::wait_until("every ChatCluster Ready", Duration::from_secs(600), || {
        let api = api.clone();
        peak_rss = peak_rss.max(op.rss_kib());
        async move {
            let list = api.list(&ListParams::default()).await.ok()?;
            let ready = list
                .items
                .iter()
                .filter(|c| {
                    let three = matches!(c.metadata.name.as_deref(), Some("first" | "second"));
                    is_ready(c, if three { 3 } else { 1 })
                })
                .count();
            (ready == n + 2).then_some(())
        }
    })
    .await;
    let took = began.elapsed();
    println!(
        "{n} ChatClusters (1 node each) at once: kubectl apply -> all Ready in {:.2} s",
        took.as_secs_f64()
    );
    println!(
        "operator RSS: idle {} MiB, peak during the run {} MiB, after {} MiB ({} clusters)",
        idle_rss / 1024,
        peak_rss / 1024,
        op.rss_kib() / 1024,
        n + 2
    );
    println!(
        "operator: {} reconciles, {} writes",
        op.metric("switchboard_operator_reconciles_total").await,
        op.metric("switchboard_operator_writes_total").await
    );

    let began = Instant::now();
    env.kubectl(&[
        "delete",
        "chatclusters",
        "--all",
        "-n",
        &ns,
        "--wait=true",
        "--timeout=600s",
    ]);
    println!(
        "delete of all {} (topics and groups removed): {:.2} s",
        n + 2,
        began.elapsed().as_secs_f64()
    );
}
