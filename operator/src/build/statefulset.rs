//! The StatefulSet of chat nodes.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMapEnvSource, ConfigMapVolumeSource, Container, ContainerPort,
    EnvFromSource, HTTPGetAction, KeyToPath, Lifecycle, LifecycleHandler, PodAffinityTerm,
    PodAntiAffinity, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements,
    SeccompProfile, SecretVolumeSource, SecurityContext, SleepAction, Volume, VolumeMount,
    WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{config, labels, meta, names, selector_labels};
use crate::crd::ChatCluster;
use crate::validate::{PRE_STOP_PAUSE, Resolved};

/// Name of the chat node container.
pub const CONTAINER: &str = "node";
/// Port the node listens on (HTTP, WebSocket, metrics).
pub const HTTP_PORT: i32 = 8080;
/// The distroless `nonroot` user the node image runs as.
const RUN_AS_USER: i64 = 65532;

pub(super) fn stateful_set(cc: &ChatCluster, r: &Resolved, config_hash: &str) -> StatefulSet {
    let s = &cc.spec;
    let pod_labels = labels(&r.name, "chat-node");
    StatefulSet {
        metadata: meta(cc, r, names::stateful_set(&r.name), "chat-node"),
        spec: StatefulSetSpec {
            replicas: Some(s.replicas),
            service_name: Some(names::headless_service(&r.name)),
            selector: LabelSelector {
                match_labels: Some(selector_labels(&r.name)),
                ..LabelSelector::default()
            },
            // Nodes do not depend on each other: start and stop them all at once.
            pod_management_policy: Some("Parallel".into()),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(BTreeMap::from([
                        (
                            config::CONFIG_HASH_ANNOTATION.to_owned(),
                            config_hash.to_owned(),
                        ),
                        ("prometheus.io/scrape".to_owned(), "true".to_owned()),
                        ("prometheus.io/port".to_owned(), HTTP_PORT.to_string()),
                    ])),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod_spec(cc, r)),
            },
            ..StatefulSetSpec::default()
        },
        status: None,
    }
}

/// Where the Redis CA certificate of `spec.redis.caSecretRef` is mounted.
pub const REDIS_CA_DIR: &str = "/etc/switchboard/redis-ca";
/// The file in [`REDIS_CA_DIR`] (`SB_REDIS_CA_FILE`).
pub const REDIS_CA_FILE: &str = "/etc/switchboard/redis-ca/ca.pem";
const REDIS_CA_VOLUME: &str = "redis-ca";
/// Where the ConfigMap of `spec.moderation.words` is mounted (a directory, not a
/// subPath, so the kubelet updates the file in place).
pub const MODERATION_DIR: &str = "/etc/switchboard/moderation";
/// The file in [`MODERATION_DIR`] (`SB_MODERATION_WORDS_FILE`).
pub const MODERATION_WORDS_FILE: &str = "/etc/switchboard/moderation/words.txt";
const MODERATION_VOLUME: &str = "moderation-words";

fn volumes(cc: &ChatCluster) -> Option<Vec<Volume>> {
    let s = &cc.spec;
    let mut v = Vec::new();
    if let Some(ca) = &s.redis.ca_secret_ref {
        v.push(Volume {
            name: REDIS_CA_VOLUME.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(ca.name.clone()),
                items: Some(vec![KeyToPath {
                    key: ca.key.clone(),
                    path: "ca.pem".into(),
                    ..KeyToPath::default()
                }]),
                default_mode: Some(0o444),
                optional: Some(false),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
    }
    if let Some(words) = &s.moderation.words {
        v.push(Volume {
            name: MODERATION_VOLUME.into(),
            config_map: Some(ConfigMapVolumeSource {
                name: words.name.clone(),
                items: Some(vec![KeyToPath {
                    key: words.key.clone(),
                    path: "words.txt".into(),
                    ..KeyToPath::default()
                }]),
                default_mode: Some(0o444),
                optional: Some(false),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        });
    }
    (!v.is_empty()).then_some(v)
}

fn volume_mounts(cc: &ChatCluster) -> Option<Vec<VolumeMount>> {
    let s = &cc.spec;
    let mount = |name: &str, path: &str| VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    };
    let mut m = Vec::new();
    if s.redis.ca_secret_ref.is_some() {
        m.push(mount(REDIS_CA_VOLUME, REDIS_CA_DIR));
    }
    if s.moderation.words.is_some() {
        m.push(mount(MODERATION_VOLUME, MODERATION_DIR));
    }
    (!m.is_empty()).then_some(m)
}

fn pod_spec(cc: &ChatCluster, r: &Resolved) -> PodSpec {
    let s = &cc.spec;
    PodSpec {
        containers: vec![container(cc, r)],
        volumes: volumes(cc),
        termination_grace_period_seconds: Some(s.termination_grace_period_seconds),
        // The node needs no Kubernetes API access.
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RUN_AS_USER),
            run_as_group: Some(RUN_AS_USER),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..SeccompProfile::default()
            }),
            ..PodSecurityContext::default()
        }),
        node_selector: (!s.scheduling.node_selector.is_empty())
            .then(|| s.scheduling.node_selector.clone()),
        tolerations: (!s.scheduling.tolerations.is_empty())
            .then(|| s.scheduling.tolerations.clone()),
        affinity: Some(
            s.scheduling
                .affinity
                .clone()
                .unwrap_or_else(|| spread(&r.name)),
        ),
        ..PodSpec::default()
    }
}

fn container(cc: &ChatCluster, r: &Resolved) -> Container {
    let s = &cc.spec;
    Container {
        name: CONTAINER.into(),
        image: Some(r.image.clone()),
        image_pull_policy: s.image_pull_policy.map(|p| p.as_str().to_owned()),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: HTTP_PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        env: Some(config::env(cc)),
        // A node that refuses to start prints why last: the kubelet keeps the end of
        // its log as the termination message, which the operator puts in the status.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        volume_mounts: volume_mounts(cc),
        env_from: Some(vec![EnvFromSource {
            config_map_ref: Some(ConfigMapEnvSource {
                name: names::config_map(&r.name),
                optional: Some(false),
            }),
            ..EnvFromSource::default()
        }]),
        resources: Some(s.resources.clone().unwrap_or_else(default_resources)),
        // Ready once Redis and RocketMQ are reachable; not ready while draining.
        readiness_probe: Some(probe("/readyz", 5, 3)),
        liveness_probe: Some(probe("/healthz", 10, 6)),
        lifecycle: Some(Lifecycle {
            // Let endpoints drop the pod before SIGTERM; the node then drains itself.
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction {
                    seconds: i64::try_from(PRE_STOP_PAUSE.as_secs()).unwrap_or(5),
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    }
}

fn probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Probe::default()
    }
}

fn default_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), Quantity("100m".into())),
            ("memory".to_owned(), Quantity("128Mi".into())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_owned(),
            Quantity("512Mi".into()),
        )])),
        ..ResourceRequirements::default()
    }
}

/// Prefer one chat node per host, so losing a host loses few.
fn spread(cluster: &str) -> Affinity {
    Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: PodAffinityTerm {
                        topology_key: "kubernetes.io/hostname".into(),
                        label_selector: Some(LabelSelector {
                            match_labels: Some(selector_labels(cluster)),
                            ..LabelSelector::default()
                        }),
                        ..PodAffinityTerm::default()
                    },
                },
            ]),
            ..PodAntiAffinity::default()
        }),
        ..Affinity::default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::validate::{tests::sample, validate};

    fn built(cc: &ChatCluster) -> StatefulSet {
        stateful_set(cc, &validate(cc, "node:1").unwrap(), "h1")
    }

    #[test]
    fn replicas_selector_and_service_follow_the_cluster() {
        let mut cc = sample();
        cc.spec.replicas = 5;
        let sts = built(&cc);
        let spec = sts.spec;
        assert_eq!(spec.replicas, Some(5));
        assert_eq!(spec.service_name.as_deref(), Some("chat-nodes"));
        let pod_labels = spec.template.metadata.unwrap().labels.unwrap();
        for (k, v) in spec.selector.match_labels.unwrap() {
            assert_eq!(pod_labels.get(&k), Some(&v), "selector must match the pods");
        }
    }

    #[test]
    fn a_redis_ca_is_mounted_and_named_in_the_config() {
        let mut cc = sample();
        let r = validate(&cc, "n").unwrap();
        let pod = stateful_set(&cc, &r, "h").spec.template.spec.unwrap();
        assert!(pod.volumes.is_none() && pod.containers[0].volume_mounts.is_none());
        assert!(!super::super::node_config(&cc, &r).contains_key("SB_REDIS_CA_FILE"));
        cc.spec.redis.ca_secret_ref = Some(crate::crd::SecretKeyRef {
            name: "redis-tls".into(),
            key: "ca.crt".into(),
        });
        let pod = stateful_set(&cc, &r, "h").spec.template.spec.unwrap();
        let v = &pod.volumes.unwrap()[0];
        let secret = v.secret.as_ref().unwrap();
        assert_eq!(secret.secret_name.as_deref(), Some("redis-tls"));
        assert_eq!(secret.items.as_ref().unwrap()[0].key, "ca.crt");
        let m = &pod.containers[0].volume_mounts.as_ref().unwrap()[0];
        assert_eq!(
            (m.name.as_str(), m.read_only),
            (v.name.as_str(), Some(true))
        );
        assert_eq!(
            super::super::node_config(&cc, &r)["SB_REDIS_CA_FILE"],
            format!("{}/ca.pem", m.mount_path)
        );
    }

    #[test]
    fn moderation_words_are_mounted_as_a_directory_and_named_in_the_config() {
        let mut cc = sample();
        cc.spec.moderation.words = Some(crate::crd::ConfigMapKeyRef {
            name: "chat-words".into(),
            key: "words".into(),
        });
        cc.spec.moderation.webhook = Some(crate::crd::WebhookSpec {
            url: "http://moderator.chat:8080/check".into(),
            timeout: "250ms".into(),
            fail_open: true,
        });
        let r = validate(&cc, "n").unwrap();
        let pod = stateful_set(&cc, &r, "h").spec.template.spec.unwrap();
        let v = &pod.volumes.unwrap()[0];
        let map = v.config_map.as_ref().unwrap();
        assert_eq!(map.name, "chat-words");
        assert_eq!(map.items.as_ref().unwrap()[0].key, "words");
        let m = &pod.containers[0].volume_mounts.as_ref().unwrap()[0];
        assert_eq!(
            (m.name.as_str(), m.sub_path.as_deref()),
            (v.name.as_str(), None)
        );
        let c = super::super::node_config(&cc, &r);
        assert_eq!(
            c["SB_MODERATION_WORDS_FILE"],
            format!("{}/words.txt", m.mount_path)
        );
        assert_eq!(c["SB_MODERATION_WORDS_ACTION"], "mask");
        assert_eq!(
            c["SB_MODERATION_WEBHOOK_URL"],
            "http://moderator.chat:8080/check"
        );
        assert_eq!(c["SB_MODERATION_WEBHOOK_TIMEOUT"], "250ms");
        assert_eq!(c["SB_MODERATION_FAIL_OPEN"], "true");
        cc.spec.moderation.webhook.as_mut().unwrap().timeout = "1m".into();
        assert_eq!(
            validate(&cc, "n").unwrap_err().field,
            "spec.moderation.webhook.timeout"
        );
    }

    #[test]
    fn container_has_probes_grace_and_draining() {
        let cc = sample();
        let pod = built(&cc).spec.template.spec.unwrap();
        assert_eq!(pod.termination_grace_period_seconds, Some(40));
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("node:1"));
        assert_eq!(
            c.termination_message_policy.as_deref(),
            Some("FallbackToLogsOnError")
        );
        let path = |p: &Option<Probe>| p.as_ref().unwrap().http_get.as_ref().unwrap().path.clone();
        assert_eq!(path(&c.readiness_probe).as_deref(), Some("/readyz"));
        assert_eq!(path(&c.liveness_probe).as_deref(), Some("/healthz"));
        let pre_stop = c.lifecycle.as_ref().unwrap().pre_stop.as_ref().unwrap();
        assert_eq!(pre_stop.sleep.as_ref().unwrap().seconds, 5);
        assert_eq!(
            c.env_from.as_ref().unwrap()[0]
                .config_map_ref
                .as_ref()
                .unwrap()
                .name,
            "chat-config"
        );
    }

    #[test]
    fn scheduling_is_passed_through_or_defaults_to_spreading() {
        let mut cc = sample();
        let pod = built(&cc).spec.template.spec.unwrap();
        assert!(pod.affinity.unwrap().pod_anti_affinity.is_some());
        assert!(pod.node_selector.is_none());
        cc.spec
            .scheduling
            .node_selector
            .insert("pool".into(), "chat".into());
        cc.spec.scheduling.affinity = Some(Affinity::default());
        let pod = built(&cc).spec.template.spec.unwrap();
        assert_eq!(pod.node_selector.unwrap()["pool"], "chat");
        assert_eq!(pod.affinity, Some(Affinity::default()));
    }
}
