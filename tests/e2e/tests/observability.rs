//! What operators watch, against real tools: the alert rules pass their
//! `promtool test rules` unit tests; a real Prometheus scrapes two release
//! nodes on real Redis and RocketMQ while they carry traffic of every kind
//! (cross-pod messages, a refused send, a masked word, a command, a request,
//! a closed connection), and every panel of the Grafana dashboard returns
//! data there: a query that errors, returns nothing or only NaN fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use switchboard_client::{CommandPublisher, RequestClient};
use switchboard_e2e::panels::{KEY_PANELS, file_name, panel, panel_series, render};
use switchboard_e2e::prometheus::{Prometheus, Target, dashboard_queries, tool, unix_now};
use switchboard_e2e::{Cluster, request_client, wait_consumers};

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

#[test]
fn every_alert_rule_passes_its_promtool_unit_tests() {
    let promtool = tool("SB_PROMTOOL_BIN");
    let rules = repo().join("charts/switchboard/files/alerts.yml");
    let check = Command::new(&promtool)
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let test = Command::new(&promtool)
        .args(["test", "rules", "alerts.test.yml"])
        .current_dir(repo().join("tests/e2e/promtool"))
        .output()
        .unwrap();
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&test.stdout),
        String::from_utf8_lossy(&test.stderr)
    );
    assert!(test.status.success(), "{out}");
    // Every alert of the rules file has a test that expects it to fire.
    let tests = std::fs::read_to_string(repo().join("tests/e2e/promtool/alerts.test.yml")).unwrap();
    let rules_text = std::fs::read_to_string(&rules).unwrap();
    for line in rules_text.lines() {
        if let Some(name) = line.trim().strip_prefix("- alert: ") {
            assert!(
                tests.contains(&format!(
                    "alertname: {name}\n        exp_alerts:\n          - "
                )),
                "no test expects {name} to fire"
            );
        }
    }
}

/// One round of every kind of traffic the dashboard shows.
async fn traffic(c: &Cluster, round: u32, backend: &CommandPublisher, requests: &RequestClient) {
    // New users each round: no inbox replay of the last one.
    let (a, b) = (format!("ana{round}"), format!("ben{round}"));
    let mut ana = c.pod(0).connect(&a).await;
    let mut ben = c.pod(1).connect(&b).await;
    for i in 0..5 {
        ana.say(&b, &format!("a{i}"), "hello across pods").await;
    }
    ana.say(&b, "masked", "well darn").await;
    ana.send(json!({"type": "send", "client_msg_id": "refused", "group": format!("nobody-{round}"), "content": "x"}))
        .await;
    ana.expect("error").await;
    for _ in 0..6 {
        ben.expect("message").await;
    }
    for i in 0..5 {
        ben.say(&a, &format!("b{i}"), "and back").await;
    }
    let mut back = 0;
    while back < 5 {
        let v = ana.next().await.expect("ana's connection ended");
        back += usize::from(v["type"] == "message");
    }
    // And one on the same pod.
    let amy_id = format!("amy{round}");
    let mut amy = c.pod(0).connect(&amy_id).await;
    ana.say(&amy_id, "local", "next door").await;
    amy.expect("message").await;
    amy.close().await;
    // Several commands and requests a round, on queues the two pods share:
    // a histogram's rate needs a pod that handled some in both rounds.
    for crew in 0..6 {
        let group = format!("crew-{round}-{crew}");
        backend
            .publish(
                "group.create",
                &json!({"group_id": group, "members": [a, b]}),
                &group,
                Some(&group),
            )
            .await
            .unwrap();
    }
    for _ in 0..8 {
        let answer = requests
            .request(&a, "get_presence", json!({"user_ids": [b]}))
            .await
            .unwrap();
        assert!(answer.success, "{answer:?}");
    }
    let extra = c.pod(1).connect("cy").await;
    extra.close().await;
    ana.close().await;
    ben.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_nodes_and_every_dashboard_panel_has_data() {
    let dir = std::env::temp_dir().join(format!("sb-observability-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let words = dir.join("words.txt");
    std::fs::write(&words, "darn\n").unwrap();
    let mut c = Cluster::new("observability", "2s");
    c.set_env("SB_MODERATION_WORDS_FILE", words.to_str().unwrap());
    c.launch(2).await;
    wait_consumers(&c, "commands").await;
    wait_consumers(&c, "requests").await;
    let targets = Target::nodes(&c);
    let prometheus = Prometheus::start(&targets).await;
    prometheus.wait_up(targets.len()).await;
    let start = unix_now();
    // One user stays connected on each pod through the run: the traffic's own
    // connections last a second or two, and users online is read at scrapes.
    let stay = [
        c.pod(0).connect("stays0").await,
        c.pod(1).connect("stays1").await,
    ];

    let backend = CommandPublisher::start(
        c.namesrv(),
        &c.prefix,
        &format!("{}-obs-commands", c.prefix),
        None,
    )
    .await
    .unwrap();
    let requests = request_client(&c, "obs-backend").await;
    // Two rounds, scraped in between: every series exists before the second,
    // so every rate over the window is above zero.
    traffic(&c, 1, &backend, &requests).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    traffic(&c, 2, &backend, &requests).await;
    tokio::time::sleep(Duration::from_secs(4)).await;

    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("charts/switchboard/files/dashboard.json")).unwrap(),
    )
    .unwrap();
    let queries = dashboard_queries(&dashboard);
    assert!(queries.len() >= 20, "{} queries", queries.len());
    let mut node_queries = Vec::new();
    for (title, row, expr) in queries {
        // The operator's row: switchboard_operator_* only, checked where the
        // operator runs (operator/tests/metrics.rs).
        if row == "Operator" {
            assert!(expr.contains("switchboard_operator_"), "{title}: {expr}");
        } else {
            assert!(
                !expr.contains("switchboard_operator_"),
                "{title} is not in the Operator row"
            );
            node_queries.push((title, row, expr));
        }
    }
    let checked = node_queries.len();
    let failures = prometheus.without_data_for_long(&node_queries).await;
    assert!(
        failures.is_empty(),
        "{} of {checked} panel queries have no data:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!("{checked} panel queries returned data");
    // Values the panels' presence does not prove: each pod read its bus
    // consumer's lag from the broker (-1 until then), timed its Redis calls
    // by command, and measured cross-pod delivery apart from local.
    for (expr, want) in [
        ("switchboard_bus_consumer_lag_messages >= 0", 2),
        (
            "sum by (pod) (switchboard_redis_command_seconds_count{command=\"evalsha\"}) > 0",
            2,
        ),
        (
            "sum by (pod) (switchboard_delivery_latency_seconds_count{path=\"cross_pod\"}) > 0",
            2,
        ),
        (
            "sum by (pod) (switchboard_delivery_latency_seconds_count{path=\"local\"}) > 0",
            1,
        ),
        (
            "sum by (pod) (switchboard_bus_publish_seconds_count) > 0",
            2,
        ),
        (
            "max by (pod) (max_over_time(switchboard_users_online[5m])) > 0",
            2,
        ),
    ] {
        let got = prometheus.query(expr).await.unwrap();
        assert!(got.len() >= want, "{expr}: {got:?}");
    }
    // The key panels as pictures (docs/operations.md shows a longer run's):
    // every series of each panel drawn.
    for title in KEY_PANELS {
        let (unit, targets) =
            panel(&dashboard, title).unwrap_or_else(|| panic!("no panel {title}"));
        let series = panel_series(&prometheus, &targets, start, unix_now(), 1.0)
            .await
            .unwrap();
        assert!(!series.is_empty(), "{title}: no series");
        let svg = render(title, unit, &series).unwrap();
        assert_eq!(
            svg.matches(r#"stroke-width="2""#).count(),
            series.len(),
            "{title}: {svg}"
        );
        std::fs::write(dir.join(file_name(title)), svg).unwrap();
    }
    for client in stay {
        client.close().await;
    }
    drop(requests);
    drop(backend);
    let _ = std::fs::remove_dir_all(&dir);
}
