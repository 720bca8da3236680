//! The desired objects of one `ChatCluster`: pure functions of the resource and the values
//! [`crate::validate`] resolved. No client here; the tests use plain values.

mod config;
mod network_policy;
mod pdb;
mod services;
mod statefulset;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;

pub use config::{CONFIG_HASH_ANNOTATION, node_config};
pub use statefulset::{CONTAINER, HTTP_PORT};

use crate::crd::ChatCluster;
use crate::validate::Resolved;

/// `app.kubernetes.io/name` of the chat node pods.
pub const APP_NAME: &str = "switchboard-node";
/// `app.kubernetes.io/managed-by` of everything the operator creates (and watches).
pub const MANAGED_BY: &str = "switchboard-operator";

/// Every object the operator applies for one cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct Built {
    pub config_map: ConfigMap,
    pub headless_service: Service,
    pub client_service: Service,
    pub stateful_set: StatefulSet,
    /// `None` when `spec.podDisruptionBudget.enabled` is false: an existing one is deleted.
    pub pdb: Option<PodDisruptionBudget>,
    pub network_policy: Option<NetworkPolicy>,
}

/// Builds every object of `cc`.
pub fn build(cc: &ChatCluster, r: &Resolved) -> Built {
    let config_map = config::config_map(cc, r);
    let config_hash = config::hash(&config_map);
    Built {
        headless_service: services::headless(cc, r),
        client_service: services::client(cc, r),
        stateful_set: statefulset::stateful_set(cc, r, &config_hash),
        pdb: pdb::pdb(cc, r),
        network_policy: network_policy::network_policy(cc, r),
        config_map,
    }
}

/// Object names, derived from the ChatCluster's name.
pub mod names {
    /// The StatefulSet (pods are `<name>-<ordinal>`).
    pub fn stateful_set(cluster: &str) -> String {
        cluster.to_owned()
    }
    /// The client Service.
    pub fn client_service(cluster: &str) -> String {
        cluster.to_owned()
    }
    /// The headless Service that gives each pod a DNS name.
    pub fn headless_service(cluster: &str) -> String {
        format!("{cluster}-nodes")
    }
    /// The ConfigMap with the node configuration.
    pub fn config_map(cluster: &str) -> String {
        format!("{cluster}-config")
    }
    /// The PodDisruptionBudget.
    pub fn pdb(cluster: &str) -> String {
        cluster.to_owned()
    }
    pub fn network_policy(cluster: &str) -> String {
        cluster.to_owned()
    }
    /// The ordinal of a pod of the cluster's StatefulSet, from its name.
    pub fn ordinal(cluster: &str, pod: &str) -> Option<u32> {
        pod.strip_prefix(cluster)?.strip_prefix('-')?.parse().ok()
    }
}

/// Labels that select the cluster's pods (the StatefulSet and Services selector).
pub fn selector_labels(cluster: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), APP_NAME.to_owned()),
        ("app.kubernetes.io/instance".to_owned(), cluster.to_owned()),
    ])
}

/// The selector as a string, for `status.selector` (the scale subresource).
pub fn selector_string(cluster: &str) -> String {
    selector_labels(cluster)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Selects every object the operator made for the cluster (the orphan sweep's selector).
pub fn owned_selector(cluster: &str) -> String {
    format!(
        "{},app.kubernetes.io/managed-by={MANAGED_BY}",
        selector_string(cluster)
    )
}

/// Labels of every object the operator creates for the cluster.
pub fn labels(cluster: &str, component: &str) -> BTreeMap<String, String> {
    let mut l = selector_labels(cluster);
    l.insert("app.kubernetes.io/component".into(), component.into());
    l.insert("app.kubernetes.io/part-of".into(), "switchboard".into());
    l.insert("app.kubernetes.io/managed-by".into(), MANAGED_BY.into());
    l
}

/// Metadata of a child object: name, namespace, labels and the controller owner reference
/// (so deleting the ChatCluster garbage-collects it).
fn meta(cc: &ChatCluster, r: &Resolved, name: String, component: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(r.namespace.clone()),
        labels: Some(labels(&r.name, component)),
        owner_references: owner(cc).map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

fn owner(cc: &ChatCluster) -> Option<OwnerReference> {
    cc.controller_owner_ref(&())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::validate::{tests::sample, validate};

    #[test]
    fn every_object_is_owned_and_labelled() {
        let cc = sample();
        let b = build(&cc, &validate(&cc, "node:1").unwrap());
        let Built {
            config_map,
            headless_service,
            client_service,
            stateful_set,
            pdb,
            network_policy,
        } = b;
        assert!(network_policy.is_none(), "off by default");
        let metas = [
            config_map.metadata,
            headless_service.metadata,
            client_service.metadata,
            stateful_set.metadata,
            pdb.expect("pdb on by default").metadata,
        ];
        for m in metas {
            let owner = &m.owner_references.as_ref().unwrap()[0];
            assert_eq!(owner.kind, "ChatCluster");
            assert_eq!(owner.uid, "u-1");
            assert_eq!(owner.controller, Some(true));
            assert_eq!(m.namespace.as_deref(), Some("prod"));
            assert_eq!(
                m.labels.as_ref().unwrap()["app.kubernetes.io/managed-by"],
                MANAGED_BY
            );
        }
    }

    #[test]
    fn pdb_can_be_turned_off() {
        let mut cc = sample();
        cc.spec.pod_disruption_budget.enabled = false;
        assert!(build(&cc, &validate(&cc, "n").unwrap()).pdb.is_none());
    }

    #[test]
    fn ordinals_come_from_pod_names_of_this_cluster_only() {
        assert_eq!(names::ordinal("chat", "chat-12"), Some(12));
        assert_eq!(names::ordinal("chat", "chat-x"), None);
        assert_eq!(names::ordinal("chat", "chatty-1"), None);
        assert_eq!(
            selector_string("c"),
            "app.kubernetes.io/instance=c,app.kubernetes.io/name=switchboard-node"
        );
    }
}
