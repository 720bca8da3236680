//! RocketMQ with ACL 2.0 (every request authenticated and authorized), as production
//! runs it: the broker refuses unsigned and wrongly signed admin calls; provisioning
//! (the operator's admin calls) and release nodes work with the right credentials,
//! across pods, commands (a dead letter included) and requests too; a node with a wrong secret key stays not ready and says why, one with
//! half the credentials refuses to start; the secret key is never printed, at debug
//! level, nor in metrics.
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use switchboard_client::{ClientConfig, CommandPublisher, RequestClient};
use switchboard_e2e::own_deps::OwnDeps;
use switchboard_e2e::{Cluster, http_get, node_bin, wait_consumers, wait_ready};
use switchboard_rocketmq::{Admin, Credentials, Runtime};

const USER: &str = "sbadmin";
const PASSWORD: &str = "rmq-acl-pw-5d1e9b7c";
/// The nodes' normal user.
const NODE_USER: &str = "chatnode";
const NODE_PASSWORD: &str = "node-acl-pw-3f8a2c6d";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_and_provisioning_work_on_a_broker_with_acl_and_never_print_the_secret() {
    let deps = OwnDeps::start(&["--acl", &format!("{USER}:{PASSWORD}")]);
    let namesrv = deps.get("SB_TEST_ROCKETMQ_NAMESRV").to_owned();

    // The broker enforces ACL: no signature, or a wrong one, creates nothing.
    let rt = Runtime::new().unwrap();
    let wrong = Credentials::new(USER, "not-the-password").unwrap();
    for (what, creds) in [("unsigned", None), ("wrong secret key", Some(&wrong))] {
        let admin = Admin::connect_as(&rt, &namesrv, creds).await.unwrap();
        let refused = admin.ensure_topic("sb-acl-probe", 1).await;
        let e = refused.expect_err(what).to_string();
        assert!(!e.contains(PASSWORD), "{what}: {e}");
        eprintln!("{what}: refused: {e}");
        admin.shutdown().await;
    }
    let right = Credentials::new(USER, PASSWORD).unwrap();
    let admin = Admin::connect_as(&rt, &namesrv, Some(&right))
        .await
        .unwrap();
    assert!(!admin.topic_exists("sb-acl-probe").await.unwrap());
    admin.shutdown().await;
    rt.shutdown().await;

    // Provisioning as the super user; the nodes as a normal user allowed what the docs
    // say a node needs on the cluster's topics and groups, and nothing else.
    let mut c = Cluster::new("acl", "1s");
    c.use_redis(deps.get("SB_TEST_REDIS_URL"));
    c.use_rocketmq(&namesrv);
    c.provision_as(USER, PASSWORD);
    c.sign_pods_as(NODE_USER, NODE_PASSWORD);
    c.set_env("SB_LOG", "debug");
    c.provision(3).await;
    let p = c.prefix.clone();
    deps.run(&[
        "add-user",
        &format!("{NODE_USER}:{NODE_PASSWORD}"),
        // The dead-letter topic of the commands' group is not under the prefix.
        &format!("Topic:{p}*,Group:{p}*,Topic:%DLQ%{p}-commands"),
        "Pub,Sub,Get",
    ]);
    let rt = Runtime::new().unwrap();
    let node_user = Credentials::new(NODE_USER, NODE_PASSWORD).unwrap();
    let admin = Admin::connect_as(&rt, &namesrv, Some(&node_user))
        .await
        .unwrap();
    let e = admin
        .ensure_topic(&format!("{p}-not-for-nodes"), 1)
        .await
        .expect_err("the nodes' user created a topic");
    eprintln!("the nodes' user creating a topic: refused: {e}");
    admin.shutdown().await;
    rt.shutdown().await;
    c.pods.push(c.spawn(0));
    c.pods.push(c.spawn(1));
    for p in &c.pods {
        wait_ready(p).await;
    }
    let mut ana = c.pod(0).connect("ana").await;
    let mut ben = c.pod(1).connect("ben").await;
    let sent = ana.say("ben", "acl-1", "signed all the way").await;
    let got = ben.expect("message").await;
    assert_eq!(
        (got["msg_id"].clone(), got["content"].as_str()),
        (sent["msg_id"].clone(), Some("signed all the way"))
    );

    // A backend (here the super user) drives the cluster: a command is applied, a
    // refused one reaches the dead-letter topic (the nodes publish it), a request is
    // answered (the nodes read `-requests` and publish on `-responses`).
    wait_consumers(&c, "commands").await;
    wait_consumers(&c, "requests").await;
    let backend = CommandPublisher::start(
        &namesrv,
        &c.prefix,
        &format!("{}-backend", c.prefix),
        Some(right.clone()),
    )
    .await
    .unwrap();
    backend
        .publish(
            "group.create",
            &json!({"group_id": "acl-crew", "members": ["ana", "ben"]}),
            "acl-crew",
            Some("acl-1"),
        )
        .await
        .unwrap();
    backend
        .publish_raw(
            "group.create",
            b"{not json".to_vec(),
            "acl-crew",
            Some("acl-2"),
            Vec::new(),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let group = http_get(c.pod(0).addr, "/api/v1/groups/acl-crew").await.1;
        let mut dead = 0;
        for p in &c.pods {
            let metrics = p.get("/metrics").await.1;
            dead += metrics
                .as_str()
                .unwrap_or_default()
                .lines()
                .filter(|l| {
                    l.starts_with("messaging_handler_total{")
                        && l.contains("outcome=\"dead_lettered\"")
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .sum::<u64>();
        }
        if group["members"] == json!(["ana", "ben"]) && dead >= 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "group {group}, dead letters {dead}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let responses_group = format!("{}-acl-backend", c.prefix);
    let rt = Runtime::new().unwrap();
    let admin = Admin::connect_as(&rt, &namesrv, Some(&right))
        .await
        .unwrap();
    admin.ensure_group(&responses_group, 0).await.unwrap();
    admin.shutdown().await;
    rt.shutdown().await;
    let requests = RequestClient::start(ClientConfig {
        namesrv: namesrv.clone(),
        prefix: c.prefix.clone(),
        responses_group,
        credentials: Some(right.clone()),
        timeout: Duration::from_secs(20),
    })
    .await
    .unwrap();
    let answer = requests
        .request("ana", "get_group", json!({"group_id": "acl-crew"}))
        .await
        .unwrap();
    assert!(answer.success, "{answer:?}");
    drop(requests);
    drop(backend);

    for p in &c.pods {
        let (_, metrics) = p.get("/metrics").await;
        let log = p.log().join("\n");
        assert!(log.contains("DEBUG"), "the log is at debug level");
        for secret in [PASSWORD, NODE_PASSWORD] {
            assert!(!metrics.to_string().contains(secret), "{} metrics", p.name);
            assert!(
                !log.contains(secret),
                "{} printed a secret key:\n{log}",
                p.name
            );
        }
    }

    // A wrong secret key (ordinal 2 is provisioned): the node starts but its bus
    // subscription is refused, so it stays not ready, and its log says so.
    c.sign_pods_as(NODE_USER, "wrong-secret-key-42");
    let pod = c.spawn(2);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (st, body) = pod.get("/readyz").await;
        assert_eq!(st, 503, "ready with a wrong secret key: {body}");
        if body["checks"]["bus"] == "failing"
            && pod
                .log()
                .iter()
                .any(|l| l.contains("cannot subscribe to the bus"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{body}\n{}",
            pod.log().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(pod.get("/readyz").await.0, 503, "still not ready");
    let log = pod.log().join("\n");
    assert!(
        !log.contains("wrong-secret-key-42"),
        "printed the secret key:\n{log}"
    );

    // Half the credentials: a clear error at start, no secret in it.
    let out = Command::new(node_bin())
        .env_clear()
        .env("SB_LISTEN", "127.0.0.1:0")
        .env("POD_NAME", "sb-0")
        .env("SB_JWT_SECRET", switchboard_e2e::SECRET)
        .env("SB_REDIS_URL", deps.get("SB_TEST_REDIS_URL"))
        .env("SB_ROCKETMQ_NAMESRV", &namesrv)
        .env("SB_TOPIC_PREFIX", "acl-half")
        .env("SB_ROCKETMQ_SECRET_KEY", PASSWORD)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "started with a secret key alone:\n{text}"
    );
    assert!(text.contains("SB_ROCKETMQ_ACCESS_KEY"), "{text}");
    assert!(!text.contains(PASSWORD), "printed the secret key:\n{text}");
}
