//! The pieces a start is made of: the binaries, the components' arguments,
//! waiting for readiness, kwok's fake nodes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use serde_json::json;

use crate::certs::Certs;
use crate::error::Error;
use crate::process::Proc;

/// Label and annotation that mark a node as kwok's to manage.
pub const KWOK_NODE_ANNOTATION: &str = "kwok.x-k8s.io/node";
/// How long each component gets to become ready.
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(90);

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// A number unique in this process, for directory and namespace names.
pub(crate) fn next_seq() -> usize {
    SEQ.fetch_add(1, Ordering::Relaxed)
}

pub(crate) fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

pub(crate) fn apiserver_args(certs: &Certs, etcd_url: &str, port: u16, dir: &Path) -> Vec<String> {
    let sa_key = certs.service_account_key.display();
    let sa_pub = certs.service_account_pub.display();
    vec![
        format!("--etcd-servers={etcd_url}"),
        "--bind-address=127.0.0.1".to_owned(),
        "--advertise-address=127.0.0.1".to_owned(),
        format!("--secure-port={port}"),
        format!("--cert-dir={}", dir.join("apiserver-certs").display()),
        format!("--tls-cert-file={}", certs.serving_cert.display()),
        format!("--tls-private-key-file={}", certs.serving_key.display()),
        format!("--client-ca-file={}", certs.ca_cert.display()),
        format!("--service-account-key-file={sa_pub}"),
        format!("--service-account-signing-key-file={sa_key}"),
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local".to_owned(),
        "--service-cluster-ip-range=10.96.0.0/16".to_owned(),
        "--authorization-mode=RBAC".to_owned(),
        "--allow-privileged=true".to_owned(),
        // One apiserver: no need to wait for peers or to reconcile endpoints.
        "--endpoint-reconciler-type=none".to_owned(),
        "--v=1".to_owned(),
    ]
}

/// Polls `check` until it returns `Ok(true)`; fails early when a process died.
pub(crate) async fn wait_ready<F, Fut>(
    procs: &mut [Proc],
    what: &str,
    mut check: F,
) -> Result<(), Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool, Error>>,
{
    let began = Instant::now();
    loop {
        for p in procs.iter_mut() {
            p.check_alive()?;
        }
        // Errors while starting (connection refused, 404 before a CRD or a node
        // exists) are the normal not-ready state; only the deadline ends the wait.
        if let Ok(true) = check().await {
            return Ok(());
        }
        if began.elapsed() > READY_TIMEOUT {
            let log = procs
                .iter()
                .map(|p| format!("--- {}\n{}", p.name, p.log_tail(10)))
                .collect::<Vec<_>>()
                .join("\n");
            return Err(Error::Timeout {
                what: what.to_owned(),
                after: READY_TIMEOUT,
                log,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) fn fake_node(name: &str) -> Node {
    // kwok keeps the node Ready and its pods Running; capacity is what the scheduler sees.
    let capacity = json!({ "cpu": "32", "memory": "256Gi", "pods": "110" });
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": { KWOK_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0" },
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
            },
        },
        "status": { "allocatable": capacity, "capacity": capacity },
    }))
    .unwrap_or_default()
}

pub(crate) fn node_is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The directory holding the control plane binaries: `$SB_CONTROLPLANE_BIN`, else
/// what `scripts/controlplane bin` prints (it builds them on first use).
pub fn binaries() -> Result<PathBuf, Error> {
    if let Some(dir) = std::env::var_os("SB_CONTROLPLANE_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/controlplane");
    let out = Command::new("bash")
        .arg(&script)
        .arg("bin")
        .output()
        .map_err(|e| Error::Spawn(script.clone(), e))?;
    if !out.status.success() {
        return Err(Error::Binaries(format!(
            "{} bin failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let dir = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_owned();
    Ok(PathBuf::from(dir))
}
