//! The operator's side of the Grafana dashboard: a real Prometheus scrapes the
//! operator binary while it reconciles a ChatCluster to Ready on a real
//! apiserver and fails to reconcile another (its name server does not
//! answer), and every panel of the dashboard's Operator row returns data
//! (the node panels are checked in tests/e2e/tests/observability.rs).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{Env, is_ready, wait_until};
use switchboard_e2e::prometheus::{Prometheus, Target, dashboard_queries};

const READY: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_operator_and_its_dashboard_panels_have_data() {
    let env = Env::start().await;
    let op = env.operator("op-metrics");
    let prometheus = Prometheus::start(&[Target {
        job: "switchboard-operator".into(),
        addr: op.listen,
        // As the chart's ServiceMonitor: the operator pod's own namespace, its
        // series' namespace labels (the clusters') kept over it.
        labels: vec![
            ("namespace".into(), "switchboard-system".into()),
            ("pod".into(), "op-metrics".into()),
        ],
    }])
    .await;
    prometheus.wait_up(1).await;

    let ns = env.cp.namespace("metrics").await.unwrap();
    env.jwt_secret(&ns);
    env.apply(&ns, &env.example("chat"));
    env.wait_status(&ns, "chat", "ChatCluster Ready", READY, |c| is_ready(c, 3))
        .await;
    // A second cluster whose name server does not answer: its reconciles fail.
    env.apply(
        &ns,
        &env.example("broken")
            .replace(&support::namesrv(), "127.0.0.1:1"),
    );
    wait_until("a failed reconcile", READY, || async {
        (op.metric("switchboard_operator_reconcile_failures_total")
            .await
            > 0.0)
            .then_some(())
    })
    .await;
    // A scale: more reconciles and writes while Prometheus watches.
    env.kubectl(&["scale", "chatcluster/chat", "-n", &ns, "--replicas=2"]);
    env.wait_status(&ns, "chat", "ChatCluster Ready with 2 nodes", READY, |c| {
        is_ready(c, 2)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;

    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(
            support::workspace().join("charts/switchboard/files/dashboard.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let queries: Vec<_> = dashboard_queries(&dashboard)
        .into_iter()
        .filter(|(_, row, _)| row == "Operator")
        .collect();
    let checked = queries.len();
    let failures = prometheus.without_data_for_long(&queries).await;
    assert!(checked >= 6, "{checked} operator panel queries");
    assert!(
        failures.is_empty(),
        "{} of {checked} operator panel queries have no data:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // The Ready gauge tells the two clusters apart.
    let ready = prometheus
        .query("switchboard_operator_cluster_ready")
        .await
        .unwrap();
    let by_name: Vec<(String, String, String)> = ready
        .iter()
        .map(|s| {
            let label = |k: &str| s["metric"][k].as_str().unwrap_or_default().to_owned();
            (
                label("namespace"),
                label("name"),
                s["value"][1].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert!(
        by_name.contains(&(ns.clone(), "chat".into(), "1".into()))
            && by_name.contains(&(ns.clone(), "broken".into(), "0".into())),
        "{by_name:?}"
    );
}
