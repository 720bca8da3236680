//! What the operator reads of a cluster's pods: which ordinals exist, and why a node
//! container that is not ready last exited (its container runs with
//! `terminationMessagePolicy: FallbackToLogsOnError`, so the kubelet keeps the end of
//! its log as the message, where the node prints why it refused to start).

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, ResourceExt};

use super::{Context, Error};
use crate::build::{names, selector_string};

/// Longest reason kept per pod in the status.
const MAX_REASON: usize = 200;

/// The cluster's pods as the reconcile needs them.
#[derive(Debug, Default)]
pub(super) struct Pods {
    /// Ordinals of the pods that exist (also those being deleted).
    pub ordinals: BTreeSet<u32>,
    /// `pod: why it last exited`, for every pod whose node container is not ready after
    /// a failed run, sorted by pod name.
    pub failing: Vec<String>,
}

pub(super) async fn list(ctx: &Context, ns: &str, name: &str) -> Result<Pods, Error> {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let list = api
        .list(&ListParams::default().labels(&selector_string(name)))
        .await?;
    Ok(summarize(name, &list.items))
}

fn summarize(name: &str, pods: &[Pod]) -> Pods {
    let mut out = Pods::default();
    for pod in pods {
        let pod_name = pod.name_any();
        let Some(ordinal) = names::ordinal(name, &pod_name) else {
            continue;
        };
        out.ordinals.insert(ordinal);
        if let Some(reason) = last_failure(pod) {
            out.failing.push(format!("{pod_name}: {reason}"));
        }
    }
    out.failing.sort();
    out
}

/// Why the pod's not-ready container last exited with an error: the last non-empty line
/// of its termination message, or the exit code.
fn last_failure(pod: &Pod) -> Option<String> {
    let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
    statuses.iter().filter(|c| !c.ready).find_map(|c| {
        let t = c.last_state.as_ref()?.terminated.as_ref()?;
        if t.exit_code == 0 {
            return None;
        }
        let line = t
            .message
            .as_deref()
            .and_then(|m| m.lines().rev().map(str::trim).find(|l| !l.is_empty()))
            .map(|l| l.chars().take(MAX_REASON).collect::<String>());
        Some(line.unwrap_or_else(|| format!("exited with code {}", t.exit_code)))
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn pod(name: &str, status: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "status": {"containerStatuses": [status]},
        }))
        .unwrap()
    }

    fn status(ready: bool, exit: i32, message: Option<&str>) -> serde_json::Value {
        serde_json::json!({
            "name": "node", "image": "n", "imageID": "", "restartCount": 3, "ready": ready,
            "lastState": {"terminated": {"exitCode": exit, "message": message}},
        })
    }

    #[test]
    fn a_not_ready_container_that_failed_says_why_in_its_last_line() {
        let log = "2026-12-04T17:00:00Z INFO starting\nError: invalid configuration\n\nCaused by:\n    SB_JWT_SECRET: must be at least 16 bytes\n";
        let pods = [
            pod("chat-1", status(false, 1, Some(log))),
            pod("chat-0", status(false, 137, None)),
            // Recovered after a failure: not reported.
            pod("chat-2", status(true, 1, Some("old trouble"))),
            // Another StatefulSet's pod.
            pod("other-0", status(false, 1, Some("x"))),
        ];
        let p = summarize("chat", &pods);
        assert_eq!(p.ordinals, BTreeSet::from([0, 1, 2]));
        assert_eq!(
            p.failing,
            [
                "chat-0: exited with code 137",
                "chat-1: SB_JWT_SECRET: must be at least 16 bytes"
            ]
        );
    }
}
