//! The operator -> node contract (DESIGN.md): real node processes started with exactly
//! the ConfigMap and container environment the operator rendered (POD_NAME,
//! POD_NAMESPACE and the Secrets filled in as the kubelet would) carry a message from a
//! user on pod 0 to a user on pod 2 through Redis and RocketMQ.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;
use support::{Env, is_ready};
use switchboard_e2e::Client;

/// The node binary: `SB_NODE_BIN`, or the workspace's debug build (`cargo test` builds it
/// for the node's own tests).
fn node_bin() -> PathBuf {
    let bin = std::env::var_os("SB_NODE_BIN").map_or_else(
        || support::workspace().join("target/debug/switchboard-node"),
        PathBuf::from,
    );
    assert!(
        bin.exists(),
        "{} missing: cargo build -p switchboard-node",
        bin.display()
    );
    bin
}

struct NodeProc(Child);

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The environment the kubelet would give pod `pod`: the container's `env` with field and
/// secret references resolved, over the ConfigMap of its `envFrom`.
async fn rendered_env(env: &Env, ns: &str, pod: &str) -> BTreeMap<String, String> {
    let c = env.cp.client();
    let sts = Api::<StatefulSet>::namespaced(c.clone(), ns)
        .get("chat")
        .await
        .unwrap();
    let container = &sts.spec.template.spec.unwrap().containers[0];
    let mut out = BTreeMap::new();
    for from in container.env_from.clone().unwrap_or_default() {
        let name = from.config_map_ref.expect("only ConfigMap envFrom").name;
        let cm = Api::<ConfigMap>::namespaced(c.clone(), ns)
            .get(&name)
            .await
            .unwrap();
        out.extend(cm.data.unwrap_or_default());
    }
    for var in container.env.clone().unwrap_or_default() {
        let value = match (var.value, var.value_from) {
            (Some(v), _) => v,
            (None, Some(src)) => {
                if let Some(f) = src.field_ref {
                    match f.field_path.as_str() {
                        "metadata.name" => pod.to_owned(),
                        "metadata.namespace" => ns.to_owned(),
                        other => panic!("unexpected field reference {other}"),
                    }
                } else if let Some(s) = src.secret_key_ref {
                    let secret = Api::<Secret>::namespaced(c.clone(), ns)
                        .get(&s.name)
                        .await
                        .unwrap();
                    let bytes = secret.data.unwrap()[&s.key].0.clone();
                    String::from_utf8(bytes).unwrap()
                } else {
                    panic!("unexpected env source for {}", var.name)
                }
            }
            (None, None) => String::new(),
        };
        out.insert(var.name, value);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_with_the_rendered_config_deliver_across_pods() {
    let env = Env::start().await;
    let _op = env.operator("op");
    let ns = env.cp.namespace("contract").await.unwrap();
    env.jwt_secret(&ns);
    env.apply(&ns, &env.example("chat"));
    env.wait_status(&ns, "chat", "Ready", Duration::from_secs(60), |c| {
        is_ready(c, 3)
    })
    .await;

    let mut nodes = Vec::new();
    let mut addrs: Vec<SocketAddr> = Vec::new();
    for i in 0..3 {
        let pod = format!("chat-{i}");
        let mut vars = rendered_env(&env, &ns, &pod).await;
        assert_eq!(vars["SB_LISTEN"], "0.0.0.0:8080");
        assert_eq!(vars["POD_NAME"], pod);
        assert!(!vars.contains_key("SB_DEV_AUTH"));
        // The one change: a pod has its own IP; here every node shares 127.0.0.1.
        let addr: SocketAddr = format!("127.0.0.1:{}", support::free_port())
            .parse()
            .unwrap();
        vars.insert("SB_LISTEN".into(), addr.to_string());
        let log = env.cp.dir().join(format!("node-{pod}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(node_bin())
            .env_clear()
            .envs(&vars)
            .env("RUST_LOG", "info")
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        nodes.push(NodeProc(child));
        addrs.push(addr);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for addr in &addrs {
        while switchboard_e2e::http_get(*addr, "/readyz").await.0 != 200 {
            assert!(
                Instant::now() < deadline,
                "node at {addr} never became ready"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    let mut ana = Client::connect(addrs[0], "ana").await;
    let mut ben = Client::connect(addrs[2], "ben").await;
    let sent = ana.say("ben", "c1", "hello from pod 0").await;
    let m = ben.expect("message").await;
    assert_eq!(m["from"], "ana");
    assert_eq!(m["content"], "hello from pod 0");
    assert_eq!(m["msg_id"], sent["msg_id"]);
}
