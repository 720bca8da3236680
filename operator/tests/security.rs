//! The restricted Pod Security Standard holds for every pod the chart and the
//! operator create, checked by the apiserver's own Pod Security admission:
//! node pods are created in a namespace that enforces `restricted`, and
//! labelling the operator's namespace `restricted` warns about no pod. And the
//! optional NetworkPolicy of the node pods comes and goes with the spec (kwok
//! enforces no policy: what is checked is the object the operator keeps).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::Api;
use support::{Env, SYSTEM_NS, wait_until};

const ENFORCE: &str = "pod-security.kubernetes.io/enforce=restricted";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_and_operator_pods_pass_the_restricted_standard() {
    let env = Env::start().await;

    // The chart's operator Deployment: its pods exist (helm --wait); a
    // restricted label on their namespace would warn about any that violates.
    let out = env.kubectl_stdin(&["label", "ns", SYSTEM_NS, ENFORCE, "--overwrite"], "");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        !stderr.contains("violate"),
        "operator pods violate restricted: {stderr}"
    );
    let pods = env.kubectl(&["get", "pods", "-n", SYSTEM_NS, "-o", "name"]);
    assert!(pods.contains("pod/"), "no operator pod to check: {pods}");

    // Node pods, created by the StatefulSet controller in a namespace that
    // enforces restricted: refused pods would leave the StatefulSet short.
    let ns = env.cp.namespace("pss").await.unwrap();
    env.kubectl(&["label", "ns", &ns, ENFORCE]);
    env.jwt_secret(&ns);
    let _op = env.operator("op");
    env.apply(&ns, &env.example("chat"));
    let sts: Api<StatefulSet> = Api::namespaced(env.cp.client(), &ns);
    wait_until("3 node pods admitted", Duration::from_secs(60), || {
        let sts = sts.clone();
        async move {
            let s = sts.get_opt("chat").await.ok().flatten()?;
            (s.status?.replicas == 3).then_some(())
        }
    })
    .await;

    // The NetworkPolicy: refused without backends, created when enabled,
    // deleted when disabled again.
    let no_backends = env.example("chat").replace(
        "  service:\n",
        "  networkPolicy:\n    enabled: true\n  service:\n",
    );
    let out = env.kubectl_stdin(&["apply", "-n", &ns, "-f", "-"], &no_backends);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("networkPolicy.backends must name"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let enabled = env.example("chat").replace(
        "  service:\n",
        "  networkPolicy:\n    enabled: true\n    backends:\n      - ipBlock: {cidr: 127.0.0.0/8}\n    clients:\n      - namespaceSelector: {matchLabels: {ingress: \"yes\"}}\n  service:\n",
    );
    env.apply(&ns, &enabled);
    let nps: Api<NetworkPolicy> = Api::namespaced(env.cp.client(), &ns);
    let np = wait_until("the NetworkPolicy", Duration::from_secs(30), || {
        let nps = nps.clone();
        async move { nps.get_opt("chat").await.ok().flatten() }
    })
    .await;
    let spec = np.spec.unwrap();
    assert_eq!(
        spec.pod_selector.unwrap().match_labels.unwrap()["app.kubernetes.io/instance"],
        "chat"
    );
    let egress = spec.egress.unwrap();
    assert_eq!(
        egress[0].to.as_ref().unwrap()[0]
            .ip_block
            .as_ref()
            .unwrap()
            .cidr,
        "127.0.0.0/8"
    );
    assert!(spec.ingress.unwrap()[0].from.is_some());
    env.apply(&ns, &env.example("chat"));
    wait_until(
        "the NetworkPolicy to be deleted",
        Duration::from_secs(30),
        || {
            let nps = nps.clone();
            async move {
                nps.get_opt("chat")
                    .await
                    .ok()
                    .map(|o| o.is_none())
                    .filter(|g| *g)
            }
        },
    )
    .await;

    // The check can fail: a pod that breaks the standard is refused there.
    let out = env.kubectl_stdin(
        &[
            "run", "bad", "-n", &ns, "--image=busybox", "--restart=Never",
            "--overrides", r#"{"spec":{"containers":[{"name":"bad","image":"busybox","securityContext":{"privileged":true}}]}}"#,
        ],
        "",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a privileged pod was admitted");
    assert!(stderr.contains("violates PodSecurity"), "{stderr}");
}
