//! The operator's topic administration on a broker that enforces ACL 2.0 (`scripts/deps
//! start --acl`): unsigned, a ChatCluster is Degraded with the broker's reason; signed
//! with `SB_ROCKETMQ_ACCESS_KEY` / `SB_ROCKETMQ_SECRET_KEY` (the chart's
//! `rocketmq.credentialsSecret`), its topics and groups are created and, with the
//! cluster, deleted. The secret key appears in no status, event, log line or metric.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use support::{Env, condition, phase, wait_until};
use switchboard_e2e::own_deps::OwnDeps;
use switchboard_rocketmq::{Admin, Credentials};

const USER: &str = "sbadmin";
const PASSWORD: &str = "op-acl-pw-8e41b0c7d2";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_signs_its_topic_administration_on_an_acl_broker() {
    // The control plane first: it picks free ports and binds them a few seconds later,
    // and a broker starting meanwhile (its outgoing connections) once took one of them.
    let env = Env::start().await;
    let deps = OwnDeps::start(&["--acl", &format!("{USER}:{PASSWORD}")]);
    let acl_namesrv = deps.get("SB_TEST_ROCKETMQ_NAMESRV").to_owned();
    let ns = env.cp.namespace("acl").await.unwrap();
    env.jwt_secret(&ns);
    let yaml = env
        .example("chat")
        .replace(&support::namesrv(), &acl_namesrv);
    assert!(yaml.contains(&acl_namesrv), "{yaml}");

    // Unsigned: the broker refuses, the cluster says why and gets no StatefulSet.
    let op = env.operator("op-unsigned");
    env.apply(&ns, &yaml);
    let cc = env
        .wait_status(&ns, "chat", "Degraded", Duration::from_secs(60), |c| {
            phase(c) == "Degraded"
        })
        .await;
    let why = &condition(&cc, "TopicsReady").unwrap().message;
    assert!(why.contains("username cannot be null"), "{why}");
    assert!(
        env.kubectl_stdin(&["get", "statefulset", "chat", "-n", &ns], "")
            .status
            .code()
            != Some(0)
    );
    assert!(op.stop().success());

    // Signed: topics and groups on the broker, the cluster Ready.
    let op = env.operator_with(
        "op-signed",
        &[
            ("SB_ROCKETMQ_ACCESS_KEY", USER),
            ("SB_ROCKETMQ_SECRET_KEY", PASSWORD),
        ],
    );
    env.wait_status(&ns, "chat", "Ready", Duration::from_secs(90), |c| {
        support::is_ready(c, 3)
    })
    .await;
    let admin = Admin::connect_as(
        &env.rt,
        &acl_namesrv,
        Some(&Credentials::new(USER, PASSWORD).unwrap()),
    )
    .await
    .unwrap();
    let names = Env::names(&ns, "chat");
    for o in 0..3 {
        assert!(admin.topic_exists(&names.node_topic(o)).await.unwrap());
        assert!(admin.group_exists(&names.node_group(o)).await.unwrap());
    }

    // Nowhere to be read: status, events, the operator's log and metrics.
    let status = env.kubectl(&["get", "chatcluster", "chat", "-n", &ns, "-o", "yaml"]);
    let events = env.kubectl(&["get", "events", "-n", &ns, "-o", "yaml"]);
    let log = std::fs::read_to_string(&op.log).unwrap();
    let metrics = op.metrics().await;
    for (what, text) in [
        ("status", &status),
        ("events", &events),
        ("log", &log),
        ("metrics", &metrics),
    ] {
        assert!(!text.contains(PASSWORD), "the secret key in the {what}");
    }

    // Deleted with the cluster (the finalizer signs too).
    env.kubectl(&["delete", "chatcluster", "chat", "-n", &ns, "--wait=false"]);
    env.wait_gone(&ns, "chat", Duration::from_secs(90)).await;
    wait_until("the node topics deleted", Duration::from_secs(30), || {
        let (admin, names) = (&admin, &names);
        async move {
            for o in 0..3 {
                if admin.topic_exists(&names.node_topic(o)).await.ok()? {
                    return None;
                }
            }
            Some(())
        }
    })
    .await;
    admin.shutdown().await;
    drop(op);
}
