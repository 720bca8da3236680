//! Specs the apiserver refuses (schema and CEL rules of the CRD), and specs the operator
//! refuses itself, on a real control plane.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use support::{Env, condition, phase};

fn with(env: &Env, name: &str, from: &str, to: &str) -> String {
    let y = env.example(name);
    assert!(y.contains(from), "example has no {from:?}");
    y.replacen(from, to, 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_specs_are_refused_with_a_clear_message() {
    let env = Env::start().await;
    let ns = env.cp.namespace("invalid").await.unwrap();
    let cases = [
        (
            "replicas 0",
            with(&env, "a", "replicas: 3", "replicas: 0"),
            "spec.replicas: Invalid value: 0: spec.replicas in body should be greater than or equal to 1",
        ),
        (
            "empty image",
            with(&env, "a", "replicas: 3", "replicas: 3\n  image: \"\""),
            "spec.image in body should be at least 1 chars long",
        ),
        (
            "bad duration",
            with(&env, "a", "ttl: 5m", "ttl: 5 minutes"),
            "spec.presence.ttl in body should match",
        ),
        (
            "heartbeat longer than ttl",
            with(
                &env,
                "a",
                "heartbeatInterval: 30s",
                "heartbeatInterval: 10m",
            ),
            "presence.heartbeatInterval must be shorter than presence.ttl",
        ),
        (
            "drain beyond grace",
            with(&env, "a", "replicas: 3", "replicas: 3\n  drainTimeout: 28s"),
            "drainTimeout + 15s (5s preStop pause, 5s to close the connections left, 5s to flush the outbox) must be shorter than terminationGracePeriodSeconds",
        ),
        (
            "both redis settings",
            with(
                &env,
                "a",
                "  redis:\n",
                "  redis:\n    urlSecretRef: {name: r, key: url}\n",
            ),
            "set exactly one of redis.url and redis.urlSecretRef",
        ),
        (
            "burst below rate",
            with(&env, "a", "rateBurst: 60", "rateBurst: 10"),
            "limits.rateBurst must be at least limits.rateLimit",
        ),
        (
            "no auth",
            with(
                &env,
                "a",
                "  auth:\n    jwtSecretRef:\n      name: chat-jwt\n      key: secret\n",
                "",
            ),
            "spec.auth: Required value",
        ),
        (
            "unknown service type",
            with(&env, "a", "type: ClusterIP", "type: ExternalName"),
            "spec.service.type: Unsupported value: \"ExternalName\"",
        ),
        (
            "bad name server",
            with(&env, "a", &support::namesrv(), "not a host"),
            "spec.rocketmq.nameServer in body should match",
        ),
    ];
    for (what, yaml, message) in &cases {
        let out = env.kubectl_stdin(&["apply", "-n", &ns, "-f", "-"], yaml);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: accepted");
        assert!(
            stderr.contains(message),
            "{what}: expected {message:?} in:\n{stderr}"
        );
    }
    assert!(env.clusters(&ns).get_opt("a").await.unwrap().is_none());

    // The name server is immutable once set.
    env.apply(&ns, &env.example("b"));
    let changed = with(&env, "b", &support::namesrv(), "127.0.0.1:1");
    let out = env.kubectl_stdin(&["apply", "-n", &ns, "-f", "-"], &changed);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "nameServer change accepted");
    assert!(
        stderr.contains("rocketmq.nameServer is immutable"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_pause_and_operator_side_checks() {
    let env = Env::start().await;
    let _op = env.operator("op");
    let ns = env.cp.namespace("edge").await.unwrap();
    env.jwt_secret(&ns);
    let sts =
        || kube::Api::<k8s_openapi::api::apps::v1::StatefulSet>::namespaced(env.cp.client(), &ns);

    // A name the schema allows but pod labels cannot carry: refused by the operator.
    let long = "n".repeat(53);
    env.apply(&ns, &env.example(&long));
    let cc = env
        .wait_status(
            &ns,
            &long,
            "the Invalid phase",
            Duration::from_secs(30),
            |c| phase(c) == "Invalid",
        )
        .await;
    let degraded = condition(&cc, "Degraded").unwrap();
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "InvalidSpec")
    );
    assert!(
        degraded.message.contains("metadata.name"),
        "{}",
        degraded.message
    );
    assert!(sts().get_opt(&long).await.unwrap().is_none());

    // Paused: nothing is created until the annotation goes.
    let paused = env.example("paused").replace(
        "metadata:\n",
        "metadata:\n  annotations:\n    switchboard.dev/paused: \"true\"\n",
    );
    env.apply(&ns, &paused);
    env.wait_status(
        &ns,
        "paused",
        "the Paused phase",
        Duration::from_secs(30),
        |c| phase(c) == "Paused",
    )
    .await;
    assert!(sts().get_opt("paused").await.unwrap().is_none());
    env.kubectl(&[
        "annotate",
        "chatcluster/paused",
        "-n",
        &ns,
        "switchboard.dev/paused-",
    ]);
    env.wait_status(
        &ns,
        "paused",
        "Ready after unpausing",
        Duration::from_secs(60),
        |c| support::is_ready(c, 3),
    )
    .await;

    // An unreachable broker: Degraded, no StatefulSet; the delete waits for the topics
    // until the escape annotation lets it go.
    let dead = format!("127.0.0.1:{}", support::free_port());
    env.apply(
        &ns,
        &env.example("down").replace(&support::namesrv(), &dead),
    );
    let cc = env
        .wait_status(
            &ns,
            "down",
            "TopicsReady=False",
            Duration::from_secs(60),
            |c| condition(c, "TopicsReady").is_some_and(|t| t.status == "False"),
        )
        .await;
    assert_eq!(phase(&cc), "Degraded");
    assert_eq!(
        condition(&cc, "TopicsReady").unwrap().reason,
        "RocketMQError"
    );
    assert!(
        sts().get_opt("down").await.unwrap().is_none(),
        "nodes started without topics"
    );
    env.kubectl(&["delete", "chatcluster", "down", "-n", &ns, "--wait=false"]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let held = env
        .clusters(&ns)
        .get_opt("down")
        .await
        .unwrap()
        .expect("held by the finalizer");
    assert!(held.metadata.deletion_timestamp.is_some());
    env.kubectl(&[
        "annotate",
        "chatcluster/down",
        "-n",
        &ns,
        "switchboard.dev/skip-topic-cleanup=true",
    ]);
    env.wait_gone(&ns, "down", Duration::from_secs(60)).await;
}
