//! Proof that the test control plane is a real one: controllers, scheduler, kwok,
//! CEL validation, the scale subresource, helm and watches all do their real work.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PostParams,
};
use kube::runtime::watcher;
use serde_json::json;
use switchboard_kubetest::{ControlPlane, Options};

const WAIT: Duration = Duration::from_secs(60);

/// Polls `f` until it gives `Some`, or panics with `what` after `WAIT`.
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn start() -> ControlPlane {
    let cp = ControlPlane::start().await.expect("control plane starts");
    eprintln!("control plane started in {:?}", cp.started_in());
    cp
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("command runs");
    eprintln!(
        "{:?}: {}\n{}{}",
        cmd,
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[tokio::test]
async fn statefulset_of_three_becomes_ready_on_kwok_nodes() {
    let cp = start().await;
    let ns = cp.namespace("sts").await.unwrap();
    let api: Api<StatefulSet> = Api::namespaced(cp.client(), &ns);
    let sts: StatefulSet = serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": { "name": "web" },
        "spec": {
            "replicas": 3,
            "serviceName": "web",
            "selector": { "matchLabels": { "app": "web" } },
            "template": {
                "metadata": { "labels": { "app": "web" } },
                "spec": { "containers": [{ "name": "web", "image": "registry.invalid/web:1" }] },
            },
        },
    }))
    .unwrap();
    api.create(&PostParams::default(), &sts).await.unwrap();

    let ready = eventually("readyReplicas 3", || {
        let api = api.clone();
        async move {
            let s = api.get("web").await.ok()?.status?;
            (s.ready_replicas == Some(3)).then_some(s)
        }
    })
    .await;
    assert_eq!(ready.replicas, 3);

    // The pods were scheduled onto kwok's node and given an IP: the kubelet's part.
    let pods: Api<Pod> = Api::namespaced(cp.client(), &ns);
    let list = pods
        .list(&ListParams::default().labels("app=web"))
        .await
        .unwrap();
    let mut names: Vec<_> = list
        .items
        .iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["web-0", "web-1", "web-2"]);
    for pod in &list.items {
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("kwok-node-0"));
        let status = pod.status.as_ref().unwrap();
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert!(status.pod_ip.is_some(), "kwok assigns a pod IP");
    }
}

#[tokio::test]
async fn deleting_the_owner_garbage_collects_its_dependents() {
    let cp = start().await;
    let ns = cp.namespace("gc").await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(cp.client(), &ns);
    let secrets: Api<Secret> = Api::namespaced(cp.client(), &ns);

    let owner: ConfigMap = serde_json::from_value(json!({
        "metadata": { "name": "owner" }, "data": { "k": "v" },
    }))
    .unwrap();
    let owner = cms.create(&PostParams::default(), &owner).await.unwrap();
    let uid = owner.metadata.uid.unwrap();
    let dependent: Secret = serde_json::from_value(json!({
        "metadata": {
            "name": "dependent",
            "ownerReferences": [{
                "apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid,
            }],
        },
        "stringData": { "k": "v" },
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &dependent)
        .await
        .unwrap();
    // Nothing removes it while the owner lives.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(secrets.get_opt("dependent").await.unwrap().is_some());

    cms.delete("owner", &DeleteParams::background())
        .await
        .unwrap();
    eventually("the dependent to be collected", || {
        let secrets = secrets.clone();
        async move {
            secrets
                .get_opt("dependent")
                .await
                .ok()
                .and_then(|s| s.is_none().then_some(()))
        }
    })
    .await;
}

/// A namespaced CRD `widgets.test.switchboard.dev` with a CEL rule and the scale subresource.
async fn install_widget_crd(cp: &ControlPlane) -> ApiResource {
    let crds: Api<CustomResourceDefinition> = Api::all(cp.client());
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": { "name": "widgets.test.switchboard.dev" },
        "spec": {
            "group": "test.switchboard.dev",
            "scope": "Namespaced",
            "names": { "plural": "widgets", "singular": "widget", "kind": "Widget" },
            "versions": [{
                "name": "v1",
                "served": true,
                "storage": true,
                "subresources": {
                    "status": {},
                    "scale": {
                        "specReplicasPath": ".spec.replicas",
                        "statusReplicasPath": ".status.replicas",
                    },
                },
                "schema": { "openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "spec": {
                            "type": "object",
                            "required": ["replicas", "maxReplicas"],
                            "properties": {
                                "replicas": { "type": "integer", "minimum": 0 },
                                "maxReplicas": { "type": "integer" },
                            },
                            "x-kubernetes-validations": [{
                                "rule": "self.replicas <= self.maxReplicas",
                                "message": "replicas must not exceed maxReplicas",
                            }],
                        },
                        "status": {
                            "type": "object",
                            "properties": { "replicas": { "type": "integer" } },
                        },
                    },
                }},
            }],
        },
    }))
    .unwrap();
    crds.create(&PostParams::default(), &crd).await.unwrap();
    eventually("the CRD to be established", || {
        let crds = crds.clone();
        async move {
            let crd = crds.get("widgets.test.switchboard.dev").await.ok()?;
            let established = crd
                .status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            established.then_some(())
        }
    })
    .await;
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "test.switchboard.dev",
        "v1",
        "Widget",
    ))
}

fn widget(name: &str, replicas: i64, max: i64) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "test.switchboard.dev/v1",
        "kind": "Widget",
        "metadata": { "name": name },
        "spec": { "replicas": replicas, "maxReplicas": max },
    }))
    .unwrap()
}

#[tokio::test]
async fn a_cel_rule_rejects_an_invalid_object_with_the_apiservers_message() {
    let cp = start().await;
    let ar = install_widget_crd(&cp).await;
    let ns = cp.namespace("cel").await.unwrap();
    let api: Api<DynamicObject> = Api::namespaced_with(cp.client(), &ns, &ar);

    // The discovery of a new CRD can lag its Established condition by a moment.
    let created = eventually("a valid widget to be accepted", || {
        let api = api.clone();
        async move {
            api.create(&PostParams::default(), &widget("ok", 2, 3))
                .await
                .ok()
        }
    })
    .await;
    assert_eq!(created.data["spec"]["replicas"], 2);

    let err = api
        .create(&PostParams::default(), &widget("bad", 5, 3))
        .await
        .expect_err("the CEL rule must refuse replicas > maxReplicas");
    let kube::Error::Api(status) = err else {
        panic!("expected an API error, got {err:?}");
    };
    assert_eq!(status.code, 422, "{status:?}");
    assert!(
        status
            .message
            .contains("replicas must not exceed maxReplicas"),
        "{}",
        status.message
    );

    // OpenAPI schema validation too: a negative replicas is refused.
    let err = api
        .create(&PostParams::default(), &widget("neg", -1, 3))
        .await
        .expect_err("minimum 0");
    assert!(err.to_string().contains("spec.replicas"), "{err}");
}

#[tokio::test]
async fn kubectl_scale_goes_through_the_scale_subresource() {
    let cp = start().await;
    let ar = install_widget_crd(&cp).await;
    let ns = cp.namespace("scale").await.unwrap();
    let api: Api<DynamicObject> = Api::namespaced_with(cp.client(), &ns, &ar);
    eventually("a widget to be created", || {
        let api = api.clone();
        async move {
            api.create(&PostParams::default(), &widget("w", 1, 10))
                .await
                .ok()
        }
    })
    .await;

    let out = run(cp
        .kubectl()
        .args(["scale", "widget/w", "--replicas=4", "-n", &ns]));
    assert!(out.status.success());
    let w = api.get("w").await.unwrap();
    assert_eq!(w.data["spec"]["replicas"], 4);

    // Scaling past the CEL rule is refused: the scale write is validated like any other.
    let out = run(cp
        .kubectl()
        .args(["scale", "widget/w", "--replicas=20", "-n", &ns]));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("replicas must not exceed maxReplicas"));
    assert_eq!(api.get("w").await.unwrap().data["spec"]["replicas"], 4);

    // The status half of the subresource: what `kubectl get --subresource=scale` shows.
    let status = json!({ "status": { "replicas": 4 } });
    api.patch_status("w", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    let out = run(cp.kubectl().args([
        "get",
        "widget/w",
        "--subresource=scale",
        "-n",
        &ns,
        "-o",
        "jsonpath={.spec.replicas}/{.status.replicas}",
    ]));
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "4/4");
}

/// `tests/kubetest/fixtures/demo-chart`: a ConfigMap and a Deployment.
fn demo_chart() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/demo-chart")
}

#[tokio::test]
async fn helm_installs_and_uninstalls_a_chart() {
    let cp = start().await;
    let ns = cp.namespace("helm").await.unwrap();
    let chart = demo_chart();

    let out = run(cp.helm().args(["lint", "--strict"]).arg(&chart));
    assert!(out.status.success());
    let out = run(cp.helm().args(["install", "demo"]).arg(&chart).args([
        "-n",
        &ns,
        "--set",
        "greeting=hi",
        "--wait",
        "--timeout",
        "60s",
    ]));
    assert!(out.status.success());

    let cms: Api<ConfigMap> = Api::namespaced(cp.client(), &ns);
    let cm = cms.get("demo-config").await.unwrap();
    assert_eq!(cm.data.unwrap()["greeting"], "hi");
    // --wait returned only once the Deployment was available: kwok ran its pod.
    let deployments: Api<Deployment> = Api::namespaced(cp.client(), &ns);
    let status = deployments.get("demo-web").await.unwrap().status.unwrap();
    assert_eq!(status.available_replicas, Some(1));
    let out = run(cp.helm().args(["list", "-n", &ns, "-q"]));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "demo");

    let out = run(cp.helm().args(["uninstall", "demo", "-n", &ns, "--wait"]));
    assert!(out.status.success());
    assert!(cms.get_opt("demo-config").await.unwrap().is_none());
    let out = run(cp.helm().args(["list", "-n", &ns, "-q"]));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "");
}

#[tokio::test]
async fn a_watch_sees_an_update() {
    let cp = start().await;
    let ns = cp.namespace("watch").await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(cp.client(), &ns);
    let cm: ConfigMap =
        serde_json::from_value(json!({ "metadata": { "name": "c" }, "data": { "n": "1" } }))
            .unwrap();
    cms.create(&PostParams::default(), &cm).await.unwrap();

    let mut events = watcher(cms.clone(), watcher::Config::default()).boxed();
    // The initial list shows n=1; the patch below must arrive as a watch event.
    let patch = json!({ "data": { "n": "2" } });
    let mut patched = false;
    let seen = tokio::time::timeout(WAIT, async {
        while let Some(event) = events.next().await {
            match event.unwrap() {
                watcher::Event::InitDone if !patched => {
                    cms.patch("c", &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                        .unwrap();
                    patched = true;
                }
                watcher::Event::Apply(cm)
                    if cm
                        .data
                        .as_ref()
                        .and_then(|d| d.get("n"))
                        .map(String::as_str)
                        == Some("2") =>
                {
                    return true;
                }
                _ => {}
            }
        }
        false
    })
    .await;
    assert_eq!(seen, Ok(true), "the watch must deliver the update");
}

#[tokio::test]
async fn dropping_the_control_plane_stops_every_process_and_frees_its_port() {
    let cp = ControlPlane::start_with(Options {
        nodes: 2,
        dir: None,
    })
    .await
    .unwrap();
    assert_eq!(cp.nodes(), ["kwok-node-0", "kwok-node-1"]);
    let pids = cp.pids();
    assert_eq!(
        pids.len(),
        5,
        "etcd, apiserver, controller-manager, scheduler, kwok"
    );
    let port: u16 = cp.server().rsplit(':').next().unwrap().parse().unwrap();
    let dir = cp.dir().to_path_buf();
    for pid in &pids {
        assert!(Path::new(&format!("/proc/{pid}")).exists());
    }
    drop(cp);
    for pid in &pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} still exists"
        );
    }
    assert!(!dir.exists(), "the temporary directory is removed");
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("the apiserver's port is free");
}

#[tokio::test]
async fn a_panicking_test_leaves_no_process_behind() {
    let (tx, rx) = std::sync::mpsc::channel();
    let task = tokio::spawn(async move {
        let cp = ControlPlane::start().await.unwrap();
        tx.send((cp.pids(), cp.dir().to_path_buf())).unwrap();
        panic!("a test failing while its control plane runs");
    });
    assert!(task.await.unwrap_err().is_panic());
    let (pids, dir) = rx.recv().unwrap();
    for pid in &pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} outlived the panic"
        );
    }
    assert!(!dir.exists());
}
