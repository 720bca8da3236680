//! A ChatCluster's life on a real control plane and a real RocketMQ: helm install, kubectl
//! apply of the example, kubectl scale up and down, drift, an operator restart, delete.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::ListParams;
use kube::{Api, Resource, ResourceExt};
use support::{Env, is_ready, wait_until};

const READY: Duration = Duration::from_secs(60);

async fn children_versions(env: &Env, ns: &str) -> BTreeMap<String, String> {
    let c = env.cp.client();
    let mut v = BTreeMap::new();
    let cc = env.clusters(ns).get("chat").await.unwrap();
    v.insert("ChatCluster".into(), cc.resource_version().unwrap());
    let cm: Api<ConfigMap> = Api::namespaced(c.clone(), ns);
    v.insert(
        "ConfigMap".into(),
        cm.get("chat-config")
            .await
            .unwrap()
            .resource_version()
            .unwrap(),
    );
    let svc: Api<Service> = Api::namespaced(c.clone(), ns);
    for s in ["chat", "chat-nodes"] {
        v.insert(
            format!("Service {s}"),
            svc.get(s).await.unwrap().resource_version().unwrap(),
        );
    }
    let sts: Api<StatefulSet> = Api::namespaced(c.clone(), ns);
    v.insert(
        "StatefulSet".into(),
        sts.get("chat").await.unwrap().resource_version().unwrap(),
    );
    let pdb: Api<PodDisruptionBudget> = Api::namespaced(c.clone(), ns);
    v.insert(
        "PDB".into(),
        pdb.get("chat").await.unwrap().resource_version().unwrap(),
    );
    let events: Api<Event> = Api::namespaced(c, ns);
    let n = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .len();
    v.insert("events".into(), n.to_string());
    v
}

async fn node_topics_exist(env: &Env, ns: &str, ordinals: std::ops::Range<u32>) -> Vec<bool> {
    let names = Env::names(ns, "chat");
    let mut out = Vec::new();
    for o in ordinals {
        let t = env.admin.topic_exists(&names.node_topic(o)).await.unwrap();
        let g = env.admin.group_exists(&names.node_group(o)).await.unwrap();
        assert_eq!(t, g, "topic and group of ordinal {o} go together");
        out.push(t);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_scale_restart_and_delete() {
    let env = Env::start().await;
    let op = env.operator("op-a");
    let ns = env.cp.namespace("chat").await.unwrap();
    env.jwt_secret(&ns);

    // kubectl apply -f examples/chatcluster.yaml
    let began = Instant::now();
    env.apply(&ns, &env.example("chat"));
    let cc = env
        .wait_status(
            &ns,
            "chat",
            "ChatCluster Ready with 3 ready nodes",
            READY,
            |c| is_ready(c, 3),
        )
        .await;
    eprintln!("apply -> Ready (3 nodes on kwok): {:?}", began.elapsed());
    let uid = cc.uid().unwrap();
    let st = cc.status.clone().unwrap();
    assert_eq!(st.replicas, 3);
    assert_eq!(
        st.selector.as_deref(),
        Some("app.kubernetes.io/instance=chat,app.kubernetes.io/name=switchboard-node")
    );
    assert!(
        cc.finalizers()
            .contains(&"switchboard.dev/topics".to_owned())
    );

    // Every child exists and is controlled by the ChatCluster.
    let c = env.cp.client();
    let owned = |meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta, what: &str| {
        let o = meta
            .owner_references
            .as_ref()
            .unwrap_or_else(|| panic!("{what} has no owner"));
        assert!(
            o.iter()
                .any(|o| o.uid == uid && o.controller == Some(true) && o.kind == "ChatCluster"),
            "{what} not owned: {o:?}"
        );
    };
    let cm = Api::<ConfigMap>::namespaced(c.clone(), &ns)
        .get("chat-config")
        .await
        .unwrap();
    owned(cm.meta(), "ConfigMap");
    let data = cm.data.unwrap();
    assert_eq!(
        data["SB_TOPIC_PREFIX"],
        switchboard_rocketmq::names::prefix(&ns, "chat")
    );
    assert_eq!(data["SB_ROCKETMQ_NAMESRV"], support::namesrv());
    for s in ["chat", "chat-nodes"] {
        owned(
            Api::<Service>::namespaced(c.clone(), &ns)
                .get(s)
                .await
                .unwrap()
                .meta(),
            s,
        );
    }
    let sts = Api::<StatefulSet>::namespaced(c.clone(), &ns)
        .get("chat")
        .await
        .unwrap();
    owned(sts.meta(), "StatefulSet");
    assert_eq!(sts.spec.replicas, Some(3));
    owned(
        Api::<PodDisruptionBudget>::namespaced(c.clone(), &ns)
            .get("chat")
            .await
            .unwrap()
            .meta(),
        "PDB",
    );

    // Topics and groups on the broker, asked through the admin API.
    let names = Env::names(&ns, "chat");
    for t in names.shared_topics() {
        assert!(
            env.admin.topic_exists(&t).await.unwrap(),
            "shared topic {t} missing"
        );
    }
    for g in names.shared_groups() {
        assert!(
            env.admin.group_exists(&g).await.unwrap(),
            "shared group {g} missing"
        );
    }
    assert_eq!(
        node_topics_exist(&env, &ns, 0..4).await,
        [true, true, true, false]
    );
    assert_eq!(
        env.admin
            .group_retry_max_times(&names.node_group(0))
            .await
            .unwrap(),
        Some(3)
    );

    // kubectl scale up: topics first, then the StatefulSet.
    env.kubectl(&["scale", "chatcluster/chat", "--replicas=5", "-n", &ns]);
    env.wait_status(&ns, "chat", "5 ready nodes", READY, |c| is_ready(c, 5))
        .await;
    assert_eq!(
        node_topics_exist(&env, &ns, 0..6).await,
        [true, true, true, true, true, false]
    );
    let sts = Api::<StatefulSet>::namespaced(c.clone(), &ns)
        .get("chat")
        .await
        .unwrap();
    assert_eq!(sts.spec.replicas, Some(5));

    // kubectl scale down: the topics of 2..4 go once their pods are gone.
    env.kubectl(&["scale", "chatcluster/chat", "--replicas=2", "-n", &ns]);
    let cc = env
        .wait_status(
            &ns,
            "chat",
            "2 nodes and no pending topic removal",
            READY,
            |c| {
                is_ready(c, 2)
                    && c.status.as_ref().is_some_and(|s| {
                        s.replicas == 2 && !s.topics.iter().any(|t| t.ends_with("-node-2"))
                    })
            },
        )
        .await;
    assert_eq!(
        node_topics_exist(&env, &ns, 0..5).await,
        [true, true, false, false, false]
    );
    let st = cc.status.unwrap();
    assert!(st.topics.contains(&names.node_topic(1)) && !st.topics.contains(&names.node_topic(2)));
    let pods = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(c.clone(), &ns)
        .list(&ListParams::default().labels("app.kubernetes.io/instance=chat"))
        .await
        .unwrap();
    assert_eq!(pods.items.len(), 2);

    // An object of the cluster that the spec does not build (say, left by an older
    // operator) is deleted.
    let orphan: ConfigMap = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "chat-old",
            "labels": {
                "app.kubernetes.io/name": "switchboard-node",
                "app.kubernetes.io/instance": "chat",
                "app.kubernetes.io/managed-by": "switchboard-operator",
            },
            "ownerReferences": [{
                "apiVersion": "switchboard.dev/v1alpha1",
                "kind": "ChatCluster",
                "name": "chat",
                "uid": uid,
                "controller": true,
            }],
        },
    }))
    .unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), &ns);
    cms.create(&Default::default(), &orphan).await.unwrap();
    wait_until(
        "the orphan ConfigMap to be deleted",
        Duration::from_secs(30),
        || {
            let cms = cms.clone();
            async move {
                cms.get_opt("chat-old")
                    .await
                    .ok()
                    .and_then(|o| o.is_none().then_some(()))
            }
        },
    )
    .await;

    // Drift: an edited ConfigMap is put back.
    env.kubectl(&[
        "patch",
        "configmap",
        "chat-config",
        "-n",
        &ns,
        "--type",
        "merge",
        "-p",
        r#"{"data":{"SB_RATE_LIMIT":"1"}}"#,
    ]);
    wait_until(
        "the ConfigMap edit to be reverted",
        Duration::from_secs(30),
        || {
            let cms = cms.clone();
            async move {
                let cm = cms.get("chat-config").await.ok()?;
                (cm.data?.get("SB_RATE_LIMIT")? == "30").then_some(())
            }
        },
    )
    .await;
    // Let the reconcile that follows the revert finish.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Restart: the new operator writes nothing when nothing changed.
    let before = children_versions(&env, &ns).await;
    let status = op.stop();
    assert!(status.success(), "operator exit status {status}");
    let op = env.operator("op-b");
    wait_until(
        "the new operator to lead and reconcile",
        Duration::from_secs(40),
        || {
            let op = &op;
            async move {
                (op.metric("switchboard_operator_leader").await == 1.0
                    && op.metric("switchboard_operator_reconciles_total").await >= 1.0)
                    .then_some(())
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let writes = op.metric("switchboard_operator_writes_total").await;
    let after = children_versions(&env, &ns).await;
    assert_eq!(before, after, "the restarted operator changed something");
    assert_eq!(writes, 0.0, "writes after restart:\n{}", op.metrics().await);
    eprintln!(
        "restart: {} reconciles, 0 writes, resourceVersions unchanged",
        op.metric("switchboard_operator_reconciles_total").await
    );

    // kubectl delete: the finalizer deletes every topic and group, then lets go.
    env.kubectl(&["delete", "chatcluster", "chat", "-n", &ns, "--wait=false"]);
    env.wait_gone(&ns, "chat", READY).await;
    for t in names.shared_topics() {
        assert!(
            !env.admin.topic_exists(&t).await.unwrap(),
            "topic {t} left behind"
        );
    }
    for g in names.shared_groups() {
        assert!(
            !env.admin.group_exists(&g).await.unwrap(),
            "group {g} left behind"
        );
    }
    assert_eq!(node_topics_exist(&env, &ns, 0..5).await, [false; 5]);
    drop(op);
}
