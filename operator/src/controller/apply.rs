//! Server-side apply of the built objects, skipped when the live object already holds
//! everything the operator would write (so a restart or a resync writes nothing).

use std::fmt::Debug;

use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::Error;
use crate::FIELD_MANAGER;
use crate::metrics::Metrics;

/// Annotation with a hash of what the operator last applied. A changed hash means the
/// desired object changed (also by removing a field, which the subset check alone would
/// not see), so it is applied again.
pub const APPLIED_HASH_ANNOTATION: &str = "switchboard.dev/applied-hash";

/// What [`apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The live object already matched; no request was made beyond the read.
    Unchanged,
    /// A server-side apply was sent.
    Patched,
}

/// Applies `desired` with the operator's field manager unless the live object already
/// contains every field of it with the same value. Returns the live object afterwards.
pub async fn apply<K>(api: &Api<K>, desired: &K, metrics: &Metrics) -> Result<(K, Applied), Error>
where
    K: Resource + Serialize + DeserializeOwned + Clone + Debug,
{
    let name = desired.name_any();
    let body = apply_body(desired)?;
    if let Some(live) = api.get_opt(&name).await? {
        let live_json = serde_json::to_value(&live).map_err(Error::Serialize)?;
        if is_subset(&body, &live_json) {
            return Ok((live, Applied::Unchanged));
        }
    }
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let out = api.patch(&name, &params, &Patch::Apply(&body)).await?;
    metrics.wrote("apply");
    Ok((out, Applied::Patched))
}

/// The body of the apply: `desired` with the applied-hash annotation.
fn apply_body<K: Serialize>(desired: &K) -> Result<Value, Error> {
    let mut body = serde_json::to_value(desired).map_err(Error::Serialize)?;
    let hash = format!(
        "{:016x}",
        switchboard_rocketmq::names::fnv1a64(body.to_string().as_bytes())
    );
    if let Some(meta) = body.get_mut("metadata").and_then(Value::as_object_mut) {
        let annotations = meta
            .entry("annotations")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(a) = annotations.as_object_mut() {
            a.insert(APPLIED_HASH_ANNOTATION.into(), Value::String(hash));
        }
    }
    Ok(body)
}

/// Deletes every object of `api` that carries the cluster's labels (`selector`), is
/// controlled by `owner_uid` and is not named in `keep`: what an earlier spec (a disabled
/// PodDisruptionBudget) or an earlier operator version made and the current one does not.
/// Returns the names deleted.
pub async fn delete_orphans<K>(
    api: &Api<K>,
    selector: &str,
    keep: &[&str],
    owner_uid: &str,
    metrics: &Metrics,
) -> Result<Vec<String>, Error>
where
    K: Resource + DeserializeOwned + Clone + Debug,
{
    let list = api
        .list_metadata(&kube::api::ListParams::default().labels(selector))
        .await?;
    let mut deleted = Vec::new();
    for obj in list.items {
        let name = obj.name_any();
        let ours = obj
            .owner_references()
            .iter()
            .any(|o| o.controller == Some(true) && o.uid == owner_uid);
        if !ours || keep.contains(&name.as_str()) || obj.metadata.deletion_timestamp.is_some() {
            continue;
        }
        match api.delete(&name, &DeleteParams::background()).await {
            Ok(_) => {
                metrics.wrote("delete");
                deleted.push(name);
            }
            Err(kube::Error::Api(s)) if s.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(deleted)
}

/// Whether every field of `want` is in `have` with the same value. Lists must have the
/// same length and match element by element (the apiserver fills in defaults inside list
/// items, so an item of `have` may hold more fields).
pub fn is_subset(want: &Value, have: &Value) -> bool {
    match (want, have) {
        (Value::Object(w), Value::Object(h)) => w
            .iter()
            .all(|(k, v)| h.get(k).is_some_and(|hv| is_subset(v, hv))),
        (Value::Array(w), Value::Array(h)) => {
            w.len() == h.len() && w.iter().zip(h).all(|(a, b)| is_subset(a, b))
        }
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (a, b) => a == b,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::collections::BTreeMap;

    use http::{Method, Request, Response};
    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use kube::client::Body;
    use serde_json::json;

    use super::*;

    fn config_map(value: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some("c".into()),
                namespace: Some("ns".into()),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([("k".to_owned(), value.to_owned())])),
            ..ConfigMap::default()
        }
    }

    /// The live object as the apiserver returns it: what was applied plus server fields.
    fn live(applied: &ConfigMap) -> Vec<u8> {
        let mut v = apply_body(applied).unwrap();
        v["metadata"]["resourceVersion"] = json!("7");
        v["metadata"]["uid"] = json!("u");
        serde_json::to_vec(&v).unwrap()
    }

    #[tokio::test]
    async fn apply_reads_and_skips_an_unchanged_object_but_patches_drift() {
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api: Api<ConfigMap> = Api::namespaced(kube::Client::new(svc, "ns"), "ns");
        let server = tokio::spawn(async move {
            // Unchanged: one GET, no PATCH.
            let (req, send) = handle.next_request().await.unwrap();
            assert_eq!(req.method(), Method::GET);
            assert_eq!(req.uri().path(), "/api/v1/namespaces/ns/configmaps/c");
            send.send_response(Response::new(Body::from(live(&config_map("a")))));
            // Drifted (someone set k=b): GET, then a forced apply with our field manager.
            let (_, send) = handle.next_request().await.unwrap();
            send.send_response(Response::new(Body::from(live(&config_map("b")))));
            let (req, send) = handle.next_request().await.unwrap();
            assert_eq!(req.method(), Method::PATCH);
            let query = req.uri().query().unwrap_or_default().to_owned();
            assert!(
                query.contains("fieldManager=switchboard-operator") && query.contains("force=true"),
                "{query}"
            );
            send.send_response(Response::new(Body::from(live(&config_map("a")))));
        });
        let metrics = Metrics::new();
        let (_, a) = apply(&api, &config_map("a"), &metrics).await.unwrap();
        assert_eq!(a, Applied::Unchanged);
        let (_, a) = apply(&api, &config_map("a"), &metrics).await.unwrap();
        assert_eq!(a, Applied::Patched);
        assert!(
            metrics
                .encode()
                .contains("switchboard_operator_writes_total{action=\"apply\"} 1")
        );
        server.await.unwrap();
    }

    #[test]
    fn subset_tolerates_server_defaults_but_not_drift() {
        let want = json!({"spec": {"replicas": 3, "ports": [{"port": 80}]}});
        let live =
            json!({"spec": {"replicas": 3, "ports": [{"port": 80, "protocol": "TCP"}], "x": 1}});
        assert!(is_subset(&want, &live));
        let drifted = json!({"spec": {"replicas": 1, "ports": [{"port": 80}]}});
        assert!(!is_subset(&want, &drifted));
        let extra_item = json!({"spec": {"replicas": 3, "ports": [{"port": 80}, {"port": 81}]}});
        assert!(!is_subset(&want, &extra_item));
        assert!(!is_subset(&json!({"a": null}), &json!({})));
    }
}
