//! The card, end to end, on real pods: `helm install` the chart (the operator runs
//! from its image), `kubectl apply` a ChatCluster (node pods from the node image),
//! chat across pods and through the client Service, scale by editing `replicas`.
//! Needs root (namespaces); everything runs inside the namespace of
//! `scripts/realpods`, the test talks to it through forwarders.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use serde_json::json;
use switchboard_e2e::Client;
use switchboard_e2e::moving::Stream;
use switchboard_e2e::prometheus::{Prometheus, Target};
use switchboard_e2e::realpods::{CHAT_NS, Card, INSTALL, SYSTEM_NS, wait_for};

const VERSION: &str = env!("CARGO_PKG_VERSION");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_card_on_real_pods() {
    let card = Card::start().await;

    // The operator runs from its image as the chart's Deployment and leads through a Lease.
    let ops = card
        .get_json(&[
            "-n",
            SYSTEM_NS,
            "pods",
            "-l",
            "app.kubernetes.io/name=switchboard-operator",
        ])
        .unwrap();
    let op = &ops["items"][0];
    assert_eq!(
        op["spec"]["containers"][0]["image"],
        format!("ghcr.io/switchboard-dev/switchboard-operator:{VERSION}")
    );
    let op_name = op["metadata"]["name"].as_str().unwrap().to_owned();
    let holder = card
        .lease_holder(
            "the operator holds the Lease",
            Duration::from_secs(60),
            |_| true,
        )
        .await;
    assert_eq!(holder, op_name);

    // kubectl apply a ChatCluster: three node pods from the node image become Ready.
    let t = Instant::now();
    card.apply(&card.chat_cluster("chat", 3));
    let pods = card.wait_ready("chat", 3, Duration::from_secs(180)).await;
    eprintln!("ChatCluster applied -> 3 pods Ready: {:?}", t.elapsed());
    let sts = card
        .get_json(&["-n", CHAT_NS, "statefulset", "chat"])
        .unwrap();
    assert_eq!(
        sts["spec"]["template"]["spec"]["containers"][0]["image"],
        format!("ghcr.io/switchboard-dev/switchboard-node:{VERSION}")
    );

    // Users on different pods chat: 1:1 to every device, receipts, a group, presence.
    let mut at = Vec::new();
    for (_, ip) in &pods {
        at.push(card.reach(ip, 8080).await);
    }
    let mut ana = Client::connect(at[0], "ana").await;
    let mut ana2 = Client::connect(at[2], "ana").await;
    let mut ben = Client::connect(at[1], "ben").await;
    assert_eq!(ana.welcome["node"], "chat-0");
    assert_eq!(ben.welcome["node"], "chat-1");
    let sent = ana.say("ben", "a1", "hello from chat-0").await;
    assert_eq!(ben.expect("message").await["msg_id"], sent["msg_id"]);
    assert_eq!(ana2.expect("message").await["msg_id"], sent["msg_id"]);
    ben.send(json!({"type": "ack", "msg_ids": [sent["msg_id"]]}))
        .await;
    assert_eq!(ana.expect("delivered").await["user"], "ben");
    assert_eq!(ana2.expect("delivered").await["user"], "ben");
    ben.send(json!({"type": "read", "conversation": "dm:ana:ben", "seq": 1}))
        .await;
    assert_eq!(ana.expect("read").await["user"], "ben");
    assert_eq!(ana2.expect("read").await["user"], "ben");
    let (st, _) = switchboard_e2e::http_post(
        at[2],
        "/api/v1/groups",
        &json!({"id": "crew", "members": ["ana", "ben"]}),
    )
    .await;
    assert_eq!(st, 201);
    ben.send(json!({"type": "send", "client_msg_id": "g1", "group": "crew", "content": "hi"}))
        .await;
    ben.expect("sent").await;
    for c in [&mut ana, &mut ana2] {
        assert_eq!(c.expect("message").await["group"], "crew");
    }
    for addr in &at {
        let (_, presence) = switchboard_e2e::http_get(*addr, "/api/v1/presence/ana").await;
        assert_eq!(presence["pods"], json!(["chat-0", "chat-2"]), "{presence}");
    }

    // Through the client Service (kube-proxy picks the pod).
    let svc = card.service("chat").await;
    let mut cy = Client::connect(svc, "cy").await;
    let sent = cy.say("ben", "c1", "via the Service").await;
    assert_eq!(ben.expect("message").await["msg_id"], sent["msg_id"]);
    for c in [ana, ana2, ben, cy] {
        c.close().await;
    }

    // A real Prometheus scrapes every node pod and the operator pod (through the
    // forwarders, labelled as the chart's PodMonitor and ServiceMonitor do): all up,
    // and what the traffic above did is there.
    let mut targets: Vec<Target> = pods
        .iter()
        .zip(&at)
        .map(|((name, _), addr)| Target {
            job: "switchboard-node".into(),
            addr: *addr,
            labels: vec![
                ("namespace".into(), CHAT_NS.into()),
                ("pod".into(), name.clone()),
            ],
        })
        .collect();
    let op_ip = card
        .get_json(&["-n", SYSTEM_NS, "pod", &op_name])
        .and_then(|p| p["status"]["podIP"].as_str().map(str::to_owned))
        .expect("the operator pod's IP");
    targets.push(Target {
        job: "switchboard-operator".into(),
        addr: card.reach(&op_ip, 8080).await,
        labels: vec![("pod".into(), op_name.clone())],
    });
    let prometheus = Prometheus::start(&targets).await;
    prometheus.wait_up(targets.len()).await;
    for (expr, want) in [
        ("sum by (pod) (switchboard_messages_stored_total) > 0", 1),
        (
            "sum by (pod) (switchboard_delivery_latency_seconds_count{path=\"cross_pod\"}) > 0",
            1,
        ),
        ("switchboard_bus_consumer_lag_messages >= 0", 3),
        (
            "sum by (pod) (switchboard_redis_command_seconds_count) > 0",
            3,
        ),
        (
            r#"switchboard_operator_cluster_ready{namespace="chat", name="chat"} == 1"#,
            1,
        ),
        (
            r#"switchboard_operator_cluster_nodes{name="chat", state="ready"} == 3"#,
            1,
        ),
        ("switchboard_operator_leader == 1", 1),
    ] {
        // Scraped every second; gauges refreshed every few.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let rows = prometheus.query(expr).await.unwrap();
            if rows.len() >= want {
                break;
            }
            assert!(Instant::now() < deadline, "{expr}: {rows:?}");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    drop(prometheus);

    // The web page in chromium through the client Service, signed in with JWTs: two
    // users on different pods chat (tests/browser/cluster.mjs).
    let t = Instant::now();
    let browser = std::process::Command::new("node")
        .args(["--test", "tests/browser/cluster.mjs"])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .env("SB_BROWSER_URL", format!("http://{svc}"))
        .env("SB_BROWSER_JWT_SECRET", switchboard_e2e::SECRET)
        .env("SB_BROWSER_ADMIN_TOKEN", switchboard_e2e::ADMIN_TOKEN)
        .status()
        .expect("node (Node.js) runs the browser test");
    assert!(
        browser.success(),
        "the web page through the client Service: {browser}"
    );
    eprintln!("the web page through the client Service: {:?}", t.elapsed());

    // Scale by editing replicas, 3 -> 5 -> 2, under continuous traffic through the
    // client Service: nothing acknowledged is lost, clients of removed pods reconnect
    // elsewhere, a pod's topic outlives the pod.
    let stream = Stream::start(
        move |user| move || Client::try_connect(svc, user),
        "sender",
        "receiver",
        Duration::from_millis(40),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pods = scale(&card, 5).await;
    // A client on the highest ordinal, which the next step removes.
    let mut drifter = Client::connect(card.reach(&pods[4].1, 8080).await, "drifter").await;
    assert_eq!(drifter.welcome["node"], "chat-4");
    tokio::time::sleep(Duration::from_secs(2)).await;
    scale(&card, 2).await;
    // Told to go (drain) or cut off: either way it reconnects, on a remaining pod.
    loop {
        match drifter.next_within(Duration::from_secs(60)).await {
            Ok(Some(v)) if v["type"] == "reconnect" => break,
            Ok(Some(_)) => continue,
            Ok(None) => break,
            Err(()) => panic!("chat-4's client heard nothing of its pod's removal"),
        }
    }
    let again = Client::try_connect(svc, "drifter")
        .await
        .expect("reconnect");
    assert!(
        ["chat-0", "chat-1"].contains(&again.welcome["node"].as_str().unwrap()),
        "{}",
        again.welcome
    );
    again.close().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (sent, _) = stream.finish("scale 3 -> 5 -> 2 under traffic").await;
    assert!(sent.confirmed.len() > 100, "{}", sent.confirmed.len());
}

/// Sets `replicas` with `kubectl patch` and waits until exactly `n` pods exist, all
/// Ready, with their topics; checks all along that no pod outlives its topic.
async fn scale(card: &Card, n: usize) -> Vec<(String, String)> {
    let t = Instant::now();
    card.kubectl(&[
        "-n",
        CHAT_NS,
        "patch",
        "chatcluster",
        "chat",
        "--type=merge",
        "-p",
        &format!("{{\"spec\":{{\"replicas\":{n}}}}}"),
    ]);
    wait_for(
        "only the remaining pods exist",
        Duration::from_secs(180),
        || {
            // The status before and after the pod list: a new topic is recorded before
            // its pod is created, a removed one after its pod is gone, so a listed pod
            // has its topic in one of the two whichever way the cluster is scaling.
            let before = card.get_json(&["-n", CHAT_NS, "chatcluster", "chat"])?;
            let all = card.get_json(&[
                "-n",
                CHAT_NS,
                "pods",
                "-l",
                "app.kubernetes.io/instance=chat",
            ])?;
            let cc = card.get_json(&["-n", CHAT_NS, "chatcluster", "chat"])?;
            let topics = node_topics(&cc);
            let seen: Vec<String> = node_topics(&before)
                .into_iter()
                .chain(topics.clone())
                .collect();
            let names: Vec<&str> = all["items"]
                .as_array()?
                .iter()
                .filter_map(|p| p["metadata"]["name"].as_str())
                .collect();
            for name in &names {
                let ordinal = name.rsplit('-').next().unwrap();
                assert!(
                    seen.iter()
                        .any(|t| t.ends_with(&format!("-node-{ordinal}"))),
                    "{name} exists without its topic: {seen:?}"
                );
            }
            (names.len() == n && topics.len() == n).then_some(())
        },
    )
    .await;
    let pods = card.wait_ready("chat", n, Duration::from_secs(180)).await;
    eprintln!(
        "scaled to {n} in {:?}: {:?}",
        t.elapsed(),
        pods.iter().map(|p| &p.0).collect::<Vec<_>>()
    );
    pods
}

/// The per-pod topics in a ChatCluster's status.
fn node_topics(cc: &serde_json::Value) -> Vec<String> {
    cc["status"]["topics"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t.as_str())
        .filter(|t| t.contains("-node-"))
        .map(str::to_owned)
        .collect()
}

/// What the operator last wrote to the objects it owns (spec-level only: status
/// writes by controllers do not count).
fn owned_versions(card: &Card) -> Vec<(String, String)> {
    [
        ("statefulset", "chat", "generation"),
        ("configmap", "chat-config", "resourceVersion"),
        ("service", "chat", "resourceVersion"),
        ("service", "chat-nodes", "resourceVersion"),
        ("poddisruptionbudget", "chat", "generation"),
    ]
    .iter()
    .map(|(kind, name, field)| {
        let v = card.get_json(&["-n", CHAT_NS, kind, name]).unwrap();
        (format!("{kind}/{name}"), v["metadata"][field].to_string())
    })
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollouts_forced_deletes_and_a_killed_operator_lose_nothing() {
    let card = Card::start().await;
    card.apply(&card.chat_cluster("chat", 3));
    card.wait_ready("chat", 3, Duration::from_secs(180)).await;
    let svc = card.service("chat").await;
    let dial = move |user| move || Client::try_connect(svc, user);

    // A config change rolls the pods, one at a time, under traffic.
    let stream = Stream::start(dial, "sender", "receiver", Duration::from_millis(40));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = card
        .get_json(&["-n", CHAT_NS, "statefulset", "chat"])
        .unwrap()["status"]["updateRevision"]
        .clone();
    let t = Instant::now();
    card.kubectl(&[
        "-n",
        CHAT_NS,
        "patch",
        "chatcluster",
        "chat",
        "--type=merge",
        "-p",
        r#"{"spec":{"limits":{"rateLimit":31}}}"#,
    ]);
    wait_for("the rolling update done", Duration::from_secs(240), || {
        let s = &card.get_json(&["-n", CHAT_NS, "statefulset", "chat"])?["status"];
        (s["updateRevision"] != before
            && s["currentRevision"] == s["updateRevision"]
            && s["updatedReplicas"] == 3
            && s["readyReplicas"] == 3)
            .then_some(())
    })
    .await;
    card.wait_ready("chat", 3, Duration::from_secs(60)).await;
    eprintln!("rolling update of 3 pods: {:?}", t.elapsed());
    tokio::time::sleep(Duration::from_secs(2)).await;
    stream.finish("rolling update under traffic").await;

    // kubectl delete pod --grace-period=0 --force, under traffic.
    let stream = Stream::start(dial, "sender2", "receiver2", Duration::from_millis(40));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let old = card.get_json(&["-n", CHAT_NS, "pod", "chat-1"]).unwrap()["metadata"]["uid"].clone();
    let t = Instant::now();
    card.kubectl(&[
        "-n",
        CHAT_NS,
        "delete",
        "pod",
        "chat-1",
        "--grace-period=0",
        "--force",
    ]);
    wait_for(
        "chat-1 replaced and Ready",
        Duration::from_secs(180),
        || {
            let p = card.get_json(&["-n", CHAT_NS, "pod", "chat-1"])?;
            let ready = p["status"]["conditions"]
                .as_array()?
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            (p["metadata"]["uid"] != old && ready).then_some(())
        },
    )
    .await;
    eprintln!("forced delete -> replacement Ready: {:?}", t.elapsed());
    tokio::time::sleep(Duration::from_secs(2)).await;
    stream.finish("forced delete under traffic").await;

    // The operator pod is killed: its replacement takes the Lease and writes nothing
    // the first one had already written.
    let versions = owned_versions(&card);
    let op = card
        .get_json(&["-n", SYSTEM_NS, "lease", "switchboard"])
        .unwrap()["spec"]["holderIdentity"]
        .as_str()
        .unwrap()
        .to_owned();
    let t = Instant::now();
    card.kubectl(&[
        "-n",
        SYSTEM_NS,
        "delete",
        "pod",
        &op,
        "--grace-period=0",
        "--force",
    ]);
    let next = card
        .lease_holder(
            "another operator pod holds the Lease",
            Duration::from_secs(120),
            |holder| holder != op,
        )
        .await;
    eprintln!("operator killed -> {next} leads after {:?}", t.elapsed());
    // Let it reconcile everything it watches, then compare.
    wait_for(
        "the new operator reconciled",
        Duration::from_secs(60),
        || {
            let cc = card.get_json(&["-n", CHAT_NS, "chatcluster", "chat"])?;
            (cc["status"]["phase"] == "Ready").then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        owned_versions(&card),
        versions,
        "written again after the takeover"
    );

    // helm upgrade (a changed value): the operator Deployment rolls, the new pod takes
    // the Lease and, finding everything right, writes nothing.
    let t = Instant::now();
    card.helm(&[
        "upgrade",
        "switchboard",
        "charts/switchboard",
        "--namespace",
        SYSTEM_NS,
        "--reuse-values",
        "--set",
        "concurrency=8",
        "--wait",
        "--timeout",
        "180s",
    ]);
    let upgraded = wait_for(
        "an operator pod of the upgrade holds the Lease",
        Duration::from_secs(120),
        || {
            let lease = card.get_json(&["-n", SYSTEM_NS, "lease", "switchboard"])?;
            let holder = lease["spec"]["holderIdentity"].as_str()?.to_owned();
            let pod = card.get_json(&["-n", SYSTEM_NS, "pod", &holder])?;
            let env = pod["spec"]["containers"][0]["env"].as_array()?.clone();
            env.iter()
                .any(|e| e["name"] == "SB_CONCURRENCY" && e["value"] == "8")
                .then_some(holder)
        },
    )
    .await;
    eprintln!("helm upgrade -> {upgraded} leads after {:?}", t.elapsed());
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        owned_versions(&card),
        versions,
        "written again after the upgrade"
    );

    // helm uninstall: the operator goes; the CRD (Helm never deletes what the chart's
    // crds/ installed), the ChatCluster and its pods stay and serve.
    card.helm(&[
        "uninstall",
        "switchboard",
        "--namespace",
        SYSTEM_NS,
        "--wait",
    ]);
    wait_for("the operator pods gone", Duration::from_secs(60), || {
        let ops = card.get_json(&["-n", SYSTEM_NS, "pods"])?;
        ops["items"].as_array()?.is_empty().then_some(())
    })
    .await;
    assert!(
        card.get_json(&["crd", "chatclusters.switchboard.dev"])
            .is_some()
    );
    card.wait_ready("chat", 3, Duration::from_secs(30)).await;
    let mut ana = Client::try_connect(svc, "ana-unmanaged")
        .await
        .expect("connect");
    let mut ben = Client::try_connect(svc, "ben-unmanaged")
        .await
        .expect("connect");
    let sent = ana.say("ben-unmanaged", "u1", "no operator").await;
    assert_eq!(ben.expect("message").await["msg_id"], sent["msg_id"]);
    ana.close().await;
    ben.close().await;

    // Deleted while no operator runs, the ChatCluster waits on its finalizer; the next
    // operator (helm install again) deletes its topics and lets it go.
    card.kubectl(&[
        "-n",
        CHAT_NS,
        "delete",
        "chatcluster",
        "chat",
        "--wait=false",
    ]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cc = card
        .get_json(&["-n", CHAT_NS, "chatcluster", "chat"])
        .unwrap();
    assert!(cc["metadata"]["deletionTimestamp"].is_string(), "{cc}");
    let t = Instant::now();
    card.helm(INSTALL);
    wait_for("the ChatCluster deleted", Duration::from_secs(180), || {
        card.get_json(&["-n", CHAT_NS, "chatcluster", "chat"])
            .is_none()
            .then_some(())
    })
    .await;
    eprintln!(
        "helm install again -> the pending delete finished in {:?}",
        t.elapsed()
    );
    assert!(
        card.get_json(&["-n", CHAT_NS, "statefulset", "chat"])
            .is_none()
    );

    // A spec the nodes would refuse never gets a pod: the apiserver refuses it.
    let mut cmd = card.rc.kubectl();
    cmd.args(["apply", "-f", "-"]);
    let bad = card.chat_cluster("bad", 1).replace(
        "  drainTimeout: 5s\n",
        "  drainTimeout: 5s\n  limits: {maxContentBytes: 65536, maxFrameBytes: 65536}\n",
    );
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), bad.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("maxContentBytes"),
        "{err}"
    );
    assert!(
        card.get_json(&["-n", CHAT_NS, "statefulset", "bad"])
            .is_none()
    );

    // What the cluster cannot check, a Secret's content (a JWT secret under 16 bytes):
    // the pod exits, and the ChatCluster's NodesReady condition says why.
    card.kubectl(&[
        "-n",
        CHAT_NS,
        "create",
        "secret",
        "generic",
        "chat-jwt-short",
        "--from-literal=secret=short",
    ]);
    card.apply(
        &card
            .chat_cluster("short", 1)
            .replace("name: chat-jwt,", "name: chat-jwt-short,"),
    );
    let t = Instant::now();
    let why = wait_for(
        "NodesReady says why the pod exits",
        Duration::from_secs(120),
        || {
            let cc = card.get_json(&["-n", CHAT_NS, "chatcluster", "short"])?;
            let c = cc["status"]["conditions"]
                .as_array()?
                .iter()
                .find(|c| c["type"] == "NodesReady")?
                .clone();
            let msg = c["message"].as_str()?.to_owned();
            (c["status"] == "False" && msg.contains("at least 16 bytes")).then_some(msg)
        },
    )
    .await;
    eprintln!("a short JWT secret, shown after {:?}: {why}", t.elapsed());
    assert!(why.contains("short-0: "), "{why}");
    card.kubectl(&[
        "-n",
        CHAT_NS,
        "delete",
        "chatcluster",
        "short",
        "--wait=false",
    ]);
}
