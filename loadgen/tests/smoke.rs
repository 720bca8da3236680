//! The bench command works end to end: a short, small run of each scenario
//! against the real node binary (debug build), checked through `--json`.
//! Figures are not asserted here (that is what `docs/benchmarks.md` is for);
//! the run must complete with nothing lost.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

fn node_bin() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let bin = target.join("debug").join("switchboard-node");
    // `cargo test --workspace` has built it already. Building it again here
    // would resolve features for the node alone and rebuild half the tree.
    if !bin.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", "switchboard-node"])
            .current_dir(&root)
            .status()
            .unwrap();
        assert!(status.success());
    }
    bin
}

fn run(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard-loadgen"))
        .arg("--json")
        .args(args)
        .arg("--node-bin")
        .arg(node_bin())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "loadgen {args:?} failed: {stderr}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("bad JSON ({e}): {stderr}"))
}

#[test]
fn idle_scenario_opens_every_connection_and_measures_rss() {
    let v = run(&[
        "idle",
        "--connections",
        "200",
        "--settle-ms",
        "200",
        "--hold-secs",
        "0",
    ]);
    assert_eq!(v["scenario"], "idle");
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["connections_open"], 200);
    assert!(
        v["node_rss_per_connection_bytes"].as_f64().unwrap() > 0.0,
        "{v}"
    );
}

#[test]
fn throughput_scenario_delivers_everything() {
    let v = run(&[
        "throughput",
        "--pairs",
        "5",
        "--rate",
        "200",
        "--duration",
        "2",
        "--warmup",
        "0",
    ]);
    assert_eq!(v["scenario"], "throughput");
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["lost"], 0);
    assert!(v["latency"]["p99_us"].as_f64().unwrap() > 0.0, "{v}");
}

/// `--nodes 2` on the Redis and RocketMQ of `scripts/deps start` (its `SB_TEST_*`
/// variables; `scripts/test` sets them): every message crosses nodes through the broker,
/// at a rate where the bus batches, and each conversation arrives in order.
#[test]
fn throughput_across_two_nodes_delivers_everything() {
    for var in ["SB_TEST_REDIS_URL", "SB_TEST_ROCKETMQ_NAMESRV"] {
        assert!(
            std::env::var_os(var).is_some(),
            "{var} is not set: run `eval \"$(scripts/deps start)\"` first (scripts/test does)"
        );
    }
    let v = run(&[
        "throughput",
        "--nodes",
        "2",
        "--pairs",
        "8",
        "--rate",
        "800",
        "--duration",
        "3",
        "--warmup",
        "0",
        "--grace",
        "20",
    ]);
    assert_eq!(v["nodes"], 2, "{v}");
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["lost"], 0);
    assert_eq!(v["received"], v["scheduled"], "{v}");
    assert_eq!(v["out_of_order"], 0, "{v}");
}

/// Requests and commands over RocketMQ on a one-node cluster: every request answered,
/// every command applied.
#[test]
fn backend_scenario_answers_every_request_and_applies_every_command() {
    for var in ["SB_TEST_REDIS_URL", "SB_TEST_ROCKETMQ_NAMESRV"] {
        assert!(
            std::env::var_os(var).is_some(),
            "{var} is not set: run `eval \"$(scripts/deps start)\"` first (scripts/test does)"
        );
    }
    let v = run(&[
        "backend",
        "--requests",
        "40",
        "--concurrency",
        "4",
        "--commands",
        "40",
    ]);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(
        (v["answered"].as_u64(), v["failed"].as_u64()),
        (Some(40), Some(0)),
        "{v}"
    );
    assert_eq!(v["applied"], 40, "{v}");
}

/// The side-by-side comparison's other half: the same workload through Centrifugo's
/// protocol, on one node (memory engine) and across two (Redis engine on the Redis of
/// `scripts/deps`), with the binary `scripts/peers build` makes (`scripts/test` exports
/// `SB_CENTRIFUGO_BIN`).
#[test]
fn the_same_workload_runs_against_centrifugo() {
    for var in ["SB_CENTRIFUGO_BIN", "SB_TEST_REDIS_URL"] {
        assert!(
            std::env::var_os(var).is_some(),
            "{var} is not set: run `export SB_CENTRIFUGO_BIN=$(scripts/peers build)` and \
             `eval \"$(scripts/deps start)\"` first (scripts/test does)"
        );
    }
    for nodes in ["1", "2"] {
        let v = run(&[
            "throughput",
            "--server",
            "centrifugo",
            "--nodes",
            nodes,
            "--pairs",
            "8",
            "--rate",
            "400",
            "--duration",
            "2",
            "--warmup",
            "0",
        ]);
        assert_eq!(v["server"], "centrifugo", "{v}");
        assert_eq!(v["ok"], true, "{v}");
        assert_eq!(v["received"], v["scheduled"], "{v}");
        assert_eq!(v["sent_ok"], v["scheduled"], "{v}");
        assert_eq!(v["out_of_order"], 0, "{v}");
    }
    let v = run(&[
        "idle",
        "--server",
        "centrifugo",
        "--connections",
        "100",
        "--settle-ms",
        "200",
        "--hold-secs",
        "0",
    ]);
    assert_eq!(v["connections_open"], 100, "{v}");
}
