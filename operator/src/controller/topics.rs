//! The cluster's RocketMQ topics and consumer groups: created before a StatefulSet ordinal
//! may run, deleted after its pod is gone, all deleted by the finalizer.
//!
//! What exists is always asked of the broker (through the name server). A name this
//! process created or found within [`FRESH_FOR`] is not asked again, so a steady cluster
//! costs the broker nothing per reconcile.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard_rocketmq::names::Names;
use switchboard_rocketmq::{Admin, Runtime};
use tokio::sync::Mutex;

use super::Error;
use crate::metrics::Metrics;

/// How long a topic or group known to exist is trusted without asking the broker again.
const FRESH_FOR: Duration = Duration::from_secs(600);

/// What the cluster's RocketMQ should hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub names: Names,
    pub queues: u32,
    pub retry_max: u32,
}

impl Layout {
    /// Shared topics plus the topic of every ordinal in `ordinals`.
    pub fn topics(&self, ordinals: impl IntoIterator<Item = u32>) -> Vec<String> {
        let mut t = self.names.shared_topics();
        t.extend(ordinals.into_iter().map(|o| self.names.node_topic(o)));
        t
    }

    /// Shared groups plus the group of every ordinal in `ordinals`.
    pub fn groups(&self, ordinals: impl IntoIterator<Item = u32>) -> Vec<String> {
        let mut g = self.names.shared_groups();
        g.extend(ordinals.into_iter().map(|o| self.names.node_group(o)));
        g
    }

    /// The ordinal of a per-node topic or group name of this cluster.
    pub fn ordinal_of(&self, name: &str) -> Option<u32> {
        name.strip_prefix(&self.names.prefix)?
            .strip_prefix("-node-")?
            .parse()
            .ok()
    }
}

/// Admin clients by name server, and what is known to exist.
#[derive(Debug)]
pub struct Brokers {
    rt: Runtime,
    admins: Mutex<HashMap<String, Arc<Admin>>>,
    known: Mutex<HashMap<(String, Kind, String), (Instant, u32)>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Topic,
    Group,
}

impl Brokers {
    pub fn new(rt: Runtime) -> Self {
        Self {
            rt,
            admins: Mutex::default(),
            known: Mutex::default(),
        }
    }

    async fn admin(&self, namesrv: &str) -> Result<Arc<Admin>, Error> {
        let mut admins = self.admins.lock().await;
        if let Some(a) = admins.get(namesrv) {
            return Ok(a.clone());
        }
        let a = Arc::new(Admin::connect(&self.rt, namesrv).await?);
        admins.insert(namesrv.to_owned(), a.clone());
        Ok(a)
    }

    async fn is_known(&self, namesrv: &str, kind: Kind, name: &str, setting: u32) -> bool {
        let known = self.known.lock().await;
        known
            .get(&(namesrv.to_owned(), kind, name.to_owned()))
            .is_some_and(|(at, s)| *s == setting && at.elapsed() < FRESH_FOR)
    }

    async fn remember(&self, namesrv: &str, kind: Kind, name: &str, setting: Option<u32>) {
        let mut known = self.known.lock().await;
        let key = (namesrv.to_owned(), kind, name.to_owned());
        match setting {
            Some(s) => known.insert(key, (Instant::now(), s)),
            None => known.remove(&key),
        };
    }

    /// Makes sure every topic and group of `ordinals` exists. `settings_changed` (queues
    /// or retry maximum differ from what the status says they were created with) updates
    /// existing ones too. Returns how many were created or updated.
    pub async fn ensure(
        &self,
        namesrv: &str,
        layout: &Layout,
        ordinals: std::ops::Range<u32>,
        settings_changed: bool,
        metrics: &Metrics,
    ) -> Result<usize, Error> {
        let admin = self.admin(namesrv).await?;
        let mut written = 0;
        for topic in layout.topics(ordinals.clone()) {
            if !settings_changed
                && self
                    .is_known(namesrv, Kind::Topic, &topic, layout.queues)
                    .await
            {
                continue;
            }
            if settings_changed || !admin.topic_exists(&topic).await? {
                admin.ensure_topic(&topic, layout.queues).await?;
                metrics.wrote("topic_create");
                written += 1;
            }
            self.remember(namesrv, Kind::Topic, &topic, Some(layout.queues))
                .await;
        }
        for group in layout.groups(ordinals) {
            if !settings_changed
                && self
                    .is_known(namesrv, Kind::Group, &group, layout.retry_max)
                    .await
            {
                continue;
            }
            if settings_changed || !admin.group_exists(&group).await? {
                admin.ensure_group(&group, layout.retry_max).await?;
                metrics.wrote("group_create");
                written += 1;
            }
            self.remember(namesrv, Kind::Group, &group, Some(layout.retry_max))
                .await;
        }
        Ok(written)
    }

    /// Deletes the given topics and groups (missing ones are fine). Returns how many existed.
    pub async fn delete(
        &self,
        namesrv: &str,
        topics: &BTreeSet<String>,
        groups: &BTreeSet<String>,
        metrics: &Metrics,
    ) -> Result<usize, Error> {
        let admin = self.admin(namesrv).await?;
        let mut deleted = 0;
        for group in groups {
            if admin.group_exists(group).await? {
                admin.delete_group(group).await?;
                metrics.wrote("group_delete");
                deleted += 1;
            }
            self.remember(namesrv, Kind::Group, group, None).await;
        }
        for topic in topics {
            if admin.topic_exists(topic).await? {
                admin.delete_topic(topic).await?;
                metrics.wrote("topic_delete");
                deleted += 1;
            }
            self.remember(namesrv, Kind::Topic, topic, None).await;
        }
        Ok(deleted)
    }

    /// Shuts every admin client down.
    pub async fn shutdown(&self) {
        let admins: Vec<_> = self.admins.lock().await.drain().map(|(_, a)| a).collect();
        for a in admins {
            if let Ok(a) = Arc::try_unwrap(a) {
                a.shutdown().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_names_every_topic_and_finds_ordinals() {
        let l = Layout {
            names: Names::new("ns__c"),
            queues: 4,
            retry_max: 3,
        };
        let t = l.topics(0..2);
        assert_eq!(t.len(), 7);
        assert!(t.contains(&"ns__c-node-1".to_owned()));
        assert!(t.contains(&"ns__c-events".to_owned()));
        assert_eq!(
            l.groups(0..1),
            ["ns__c-api", "ns__c-commands", "ns__c-node-0"]
        );
        assert_eq!(l.ordinal_of("ns__c-node-12"), Some(12));
        assert_eq!(l.ordinal_of("ns__c-events"), None);
        assert_eq!(l.ordinal_of("ns__cc-node-1"), None);
    }
}
