//! The status the operator writes: a pure function of what the reconcile found and did.
//! A condition keeps its `lastTransitionTime` while its status, reason and message stay
//! the same, so a reconcile that changed nothing produces an equal status and no write.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::crd::ChatClusterStatus;

/// What one reconcile found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The spec is refused; nothing was changed.
    Invalid(String),
    /// The pause annotation is set; nothing was changed.
    Paused,
    /// The topics or groups could not be provisioned; the StatefulSet was not touched.
    BrokerFailed(String),
    /// Everything was applied.
    Applied(Applied),
}

/// The StatefulSet after the apply, and the cleanup still waiting for pods to go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub desired: i32,
    pub replicas: i32,
    pub ready: i32,
    pub updated: i32,
    /// The StatefulSet controller has seen the latest StatefulSet spec.
    pub rolled_out: bool,
    /// Ordinals beyond `desired` whose topic waits for the pod to be gone.
    pub pending_removal: Vec<u32>,
    /// `pod: why it last exited` for each pod whose node is not ready after a failed run.
    pub failing: Vec<String>,
}

/// The topics and groups of the cluster and the settings they were made with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provisioned {
    pub topics: Vec<String>,
    pub groups: Vec<String>,
    pub queues_per_topic: u32,
    pub retry_max_times: u32,
}

/// Everything [`next`] needs.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    pub old: Option<&'a ChatClusterStatus>,
    pub generation: Option<i64>,
    pub selector: String,
    pub topic_prefix: Option<String>,
    /// Topics and groups that exist for the cluster now (`None`: unknown, keep the old ones).
    pub provisioned: Option<Provisioned>,
    pub outcome: Outcome,
    pub now: Time,
}

/// Condition types.
pub mod types {
    pub const READY: &str = "Ready";
    pub const TOPICS_READY: &str = "TopicsReady";
    pub const NODES_READY: &str = "NodesReady";
    pub const PROGRESSING: &str = "Progressing";
    pub const DEGRADED: &str = "Degraded";
}

/// The next status.
pub fn next(input: Input<'_>) -> ChatClusterStatus {
    let old = input.old.cloned().unwrap_or_default();
    let mut st = ChatClusterStatus {
        observed_generation: input.generation,
        selector: Some(input.selector.clone()),
        topic_prefix: input.topic_prefix.clone().or(old.topic_prefix.clone()),
        replicas: old.replicas,
        ready_replicas: old.ready_replicas,
        topics: old.topics.clone(),
        groups: old.groups.clone(),
        queues_per_topic: old.queues_per_topic,
        retry_max_times: old.retry_max_times,
        phase: None,
        conditions: Vec::new(),
    };
    if let Some(p) = input.provisioned.clone() {
        st.topics = p.topics;
        st.groups = p.groups;
        st.queues_per_topic = Some(p.queues_per_topic);
        st.retry_max_times = Some(p.retry_max_times);
    }
    let mut set = |type_: &str, ok: Option<bool>, reason: &str, message: String| {
        let status = match ok {
            Some(true) => "True",
            Some(false) => "False",
            None => "Unknown",
        };
        let previous = old.conditions.iter().find(|c| c.type_ == type_);
        let time = match previous {
            Some(p) if p.status == status && p.reason == reason && p.message == message => {
                p.last_transition_time.clone()
            }
            _ => input.now.clone(),
        };
        st.conditions.push(Condition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            reason: reason.to_owned(),
            message,
            observed_generation: input.generation,
            last_transition_time: time,
        });
    };
    let phase = match &input.outcome {
        Outcome::Invalid(msg) => {
            set(types::READY, Some(false), "InvalidSpec", msg.clone());
            set(types::TOPICS_READY, None, "InvalidSpec", String::new());
            set(types::NODES_READY, None, "InvalidSpec", String::new());
            set(
                types::PROGRESSING,
                Some(false),
                "InvalidSpec",
                "waiting for the spec to change".into(),
            );
            set(types::DEGRADED, Some(true), "InvalidSpec", msg.clone());
            "Invalid"
        }
        Outcome::Paused => {
            let msg = format!("the {} annotation is set", crate::PAUSED_ANNOTATION);
            set(types::READY, Some(false), "Paused", msg.clone());
            set(types::TOPICS_READY, None, "Paused", String::new());
            set(types::NODES_READY, None, "Paused", String::new());
            set(types::PROGRESSING, Some(false), "Paused", msg.clone());
            set(types::DEGRADED, Some(false), "Paused", String::new());
            "Paused"
        }
        Outcome::BrokerFailed(msg) => {
            set(types::READY, Some(false), "RocketMQError", msg.clone());
            set(
                types::TOPICS_READY,
                Some(false),
                "RocketMQError",
                msg.clone(),
            );
            set(
                types::NODES_READY,
                None,
                "RocketMQError",
                "nodes are not changed until the topics exist".into(),
            );
            set(
                types::PROGRESSING,
                Some(true),
                "RetryingRocketMQ",
                "retrying with backoff".into(),
            );
            set(types::DEGRADED, Some(true), "RocketMQError", msg.clone());
            "Degraded"
        }
        Outcome::Applied(a) => {
            st.replicas = a.replicas;
            st.ready_replicas = a.ready;
            let nodes_ready = a.rolled_out
                && a.replicas == a.desired
                && a.ready == a.desired
                && a.updated == a.desired;
            set(
                types::TOPICS_READY,
                Some(true),
                "Provisioned",
                format!("{} topics, {} groups", st.topics.len(), st.groups.len()),
            );
            set(
                types::NODES_READY,
                Some(nodes_ready),
                if nodes_ready {
                    "AllReady"
                } else {
                    "NotAllReady"
                },
                if a.failing.is_empty() {
                    format!("{}/{} ready, {} updated", a.ready, a.desired, a.updated)
                } else {
                    format!(
                        "{}/{} ready, {} updated; last exit of {}",
                        a.ready,
                        a.desired,
                        a.updated,
                        a.failing.join("; ")
                    )
                },
            );
            let (progressing, reason, msg) = if a.replicas != a.desired {
                (
                    true,
                    "Scaling",
                    format!("{} -> {} nodes", a.replicas, a.desired),
                )
            } else if !nodes_ready {
                (
                    true,
                    "RollingOut",
                    format!("{}/{} ready", a.ready, a.desired),
                )
            } else if !a.pending_removal.is_empty() {
                (
                    true,
                    "RemovingTopics",
                    format!("waiting for pods {:?} to go", a.pending_removal),
                )
            } else {
                (false, "Complete", String::new())
            };
            set(types::PROGRESSING, Some(progressing), reason, msg);
            set(types::DEGRADED, Some(false), "AsExpected", String::new());
            set(
                types::READY,
                Some(nodes_ready),
                if nodes_ready {
                    "Ready"
                } else {
                    "NodesNotReady"
                },
                String::new(),
            );
            if nodes_ready {
                "Ready"
            } else if a.replicas != a.desired {
                "Scaling"
            } else {
                "Provisioning"
            }
        }
    };
    st.phase = Some(phase.to_owned());
    st.conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
    st
}

/// The old status with `provisioned` recorded and nothing else changed: written after
/// new topics were created and before the StatefulSet may start their pods, so that the
/// status never shows a pod without its topic.
pub fn recorded(old: Option<&ChatClusterStatus>, provisioned: Provisioned) -> ChatClusterStatus {
    let mut st = old.cloned().unwrap_or_default();
    st.topics = provisioned.topics;
    st.groups = provisioned.groups;
    st.queues_per_topic = Some(provisioned.queues_per_topic);
    st.retry_max_times = Some(provisioned.retry_max_times);
    st
}

/// The condition of type `type_`, if set.
pub fn condition<'a>(st: &'a ChatClusterStatus, type_: &str) -> Option<&'a Condition> {
    st.conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use k8s_openapi::jiff::Timestamp;

    use super::*;

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    fn applied(desired: i32, ready: i32) -> Outcome {
        Outcome::Applied(Applied {
            desired,
            replicas: desired,
            ready,
            updated: desired,
            rolled_out: true,
            pending_removal: vec![],
            failing: vec![],
        })
    }

    fn input(old: Option<&ChatClusterStatus>, outcome: Outcome, now: i64) -> Input<'_> {
        Input {
            old,
            generation: Some(4),
            selector: "a=b".into(),
            topic_prefix: Some("ns__c".into()),
            provisioned: Some(Provisioned {
                topics: vec!["t".into()],
                groups: vec!["g".into()],
                queues_per_topic: 4,
                retry_max_times: 3,
            }),
            outcome,
            now: at(now),
        }
    }

    #[test]
    fn same_facts_give_an_equal_status() {
        let first = next(input(None, applied(3, 3), 10));
        let second = next(input(Some(&first), applied(3, 3), 99));
        assert_eq!(first, second, "nothing changed: nothing to write");
        assert_eq!(first.phase.as_deref(), Some("Ready"));
        let ready = condition(&first, types::READY).unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.observed_generation),
            ("True", Some(4))
        );
    }

    #[test]
    fn transitions_get_a_new_time_and_others_keep_theirs() {
        let first = next(input(None, applied(3, 3), 10));
        let second = next(input(Some(&first), applied(3, 1), 20));
        assert_eq!(second.phase.as_deref(), Some("Provisioning"));
        assert_eq!(
            condition(&second, types::READY)
                .unwrap()
                .last_transition_time,
            at(20)
        );
        assert_eq!(
            condition(&second, types::TOPICS_READY)
                .unwrap()
                .last_transition_time,
            at(10)
        );
        assert_eq!(second.ready_replicas, 1);
    }

    #[test]
    fn invalid_and_broker_failures_are_degraded_and_keep_what_is_known() {
        let first = next(input(None, applied(3, 3), 10));
        let mut i = input(
            Some(&first),
            Outcome::BrokerFailed("connect refused".into()),
            20,
        );
        i.provisioned = None;
        let st = next(i);
        assert_eq!(st.topics, vec!["t".to_owned()]);
        assert_eq!(st.ready_replicas, 3);
        assert_eq!(condition(&st, types::DEGRADED).unwrap().status, "True");
        assert_eq!(
            condition(&st, types::TOPICS_READY).unwrap().message,
            "connect refused"
        );
        let st = next(input(
            Some(&st),
            Outcome::Invalid("spec.image: empty".into()),
            30,
        ));
        assert_eq!(st.phase.as_deref(), Some("Invalid"));
        assert_eq!(condition(&st, types::READY).unwrap().reason, "InvalidSpec");
    }

    #[test]
    fn nodes_that_fail_to_start_say_why_in_nodes_ready() {
        let mut a = match applied(3, 2) {
            Outcome::Applied(a) => a,
            _ => unreachable!(),
        };
        a.failing = vec!["chat-2: SB_JWT_SECRET: must be at least 16 bytes".into()];
        let st = next(input(None, Outcome::Applied(a), 10));
        let c = condition(&st, types::NODES_READY).unwrap();
        assert_eq!(c.status, "False");
        assert!(
            c.message
                .ends_with("last exit of chat-2: SB_JWT_SECRET: must be at least 16 bytes"),
            "{}",
            c.message
        );
    }

    #[test]
    fn recording_new_topics_changes_nothing_else() {
        let first = next(input(None, applied(3, 3), 10));
        let st = recorded(
            Some(&first),
            Provisioned {
                topics: vec!["t".into(), "t2".into()],
                groups: vec!["g".into()],
                queues_per_topic: 8,
                retry_max_times: 3,
            },
        );
        assert_eq!(st.topics, vec!["t".to_owned(), "t2".to_owned()]);
        assert_eq!(st.queues_per_topic, Some(8));
        assert_eq!(
            (st.phase.clone(), st.conditions.clone(), st.ready_replicas),
            (first.phase.clone(), first.conditions.clone(), 3)
        );
    }
}
