//! The cluster's RocketMQ topics and consumer groups: created before a StatefulSet ordinal
//! may run, deleted after its pod is gone, all deleted by the finalizer.
//!
//! What exists is always asked of the broker (through the name server). A name this
//! process created or found within [`FRESH_FOR`] is not asked again, so a steady cluster
//! costs the broker nothing per reconcile.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::try_join_all;
use switchboard_rocketmq::names::Names;
use switchboard_rocketmq::{Admin, Credentials, Runtime};
use tokio::sync::{Mutex, Semaphore};

use super::Error;
use crate::metrics::Metrics;

/// How long a topic or group known to exist is trusted without asking the broker again.
const FRESH_FOR: Duration = Duration::from_secs(600);
/// Admin calls of one cluster in flight at once.
const PARALLEL: usize = 8;

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
    credentials: Option<Credentials>,
    admins: Mutex<HashMap<String, Arc<Admin>>>,
    known: Mutex<Known>,
}

/// (name server, kind, name) -> (when it was seen to exist, its queues or retry maximum).
type Known = HashMap<(String, Kind, String), (Instant, u32)>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Topic,
    Group,
}

impl Brokers {
    /// `credentials` sign every admin request, on every name server (brokers with ACL).
    pub fn new(rt: Runtime, credentials: Option<Credentials>) -> Self {
        Self {
            rt,
            credentials,
            admins: Mutex::default(),
            known: Mutex::default(),
        }
    }

    async fn admin(&self, namesrv: &str) -> Result<Arc<Admin>, Error> {
        let mut admins = self.admins.lock().await;
        if let Some(a) = admins.get(namesrv) {
            return Ok(a.clone());
        }
        let a = Arc::new(Admin::connect_as(&self.rt, namesrv, self.credentials.as_ref()).await?);
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
        let permits = Semaphore::new(PARALLEL);
        let topics = layout
            .topics(ordinals.clone())
            .into_iter()
            .map(|t| (Kind::Topic, t, layout.queues));
        let groups = layout
            .groups(ordinals)
            .into_iter()
            .map(|g| (Kind::Group, g, layout.retry_max));
        let jobs = topics.chain(groups).map(|(kind, name, setting)| {
            self.ensure_one(
                &admin,
                &permits,
                namesrv,
                kind,
                name,
                setting,
                settings_changed,
                metrics,
            )
        });
        let written = try_join_all(jobs).await?;
        Ok(written.into_iter().filter(|w| *w).count())
    }

    #[allow(clippy::too_many_arguments)]
    async fn ensure_one(
        &self,
        admin: &Admin,
        permits: &Semaphore,
        namesrv: &str,
        kind: Kind,
        name: String,
        setting: u32,
        settings_changed: bool,
        metrics: &Metrics,
    ) -> Result<bool, Error> {
        if !settings_changed && self.is_known(namesrv, kind, &name, setting).await {
            return Ok(false);
        }
        let _permit = permits
            .acquire()
            .await
            .map_err(|_| switchboard_rocketmq::Error::Shutdown)?;
        let exists = match kind {
            Kind::Topic => admin.topic_exists(&name).await?,
            Kind::Group => admin.group_exists(&name).await?,
        };
        let write = settings_changed || !exists;
        if write {
            match kind {
                Kind::Topic => admin.ensure_topic(&name, setting).await?,
                Kind::Group => admin.ensure_group(&name, setting).await?,
            }
            metrics.wrote(match kind {
                Kind::Topic => "topic_create",
                Kind::Group => "group_create",
            });
        }
        self.remember(namesrv, kind, &name, Some(setting)).await;
        Ok(write)
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
        let permits = Semaphore::new(PARALLEL);
        let jobs = groups
            .iter()
            .map(|g| (Kind::Group, g))
            .chain(topics.iter().map(|t| (Kind::Topic, t)))
            .map(|(kind, name)| self.delete_one(&admin, &permits, namesrv, kind, name, metrics));
        let deleted = try_join_all(jobs).await?;
        Ok(deleted.into_iter().filter(|d| *d).count())
    }

    async fn delete_one(
        &self,
        admin: &Admin,
        permits: &Semaphore,
        namesrv: &str,
        kind: Kind,
        name: &str,
        metrics: &Metrics,
    ) -> Result<bool, Error> {
        let _permit = permits
            .acquire()
            .await
            .map_err(|_| switchboard_rocketmq::Error::Shutdown)?;
        let existed = match kind {
            Kind::Topic => admin.topic_exists(name).await?,
            Kind::Group => admin.group_exists(name).await?,
        };
        if existed {
            match kind {
                Kind::Topic => admin.delete_topic(name).await?,
                Kind::Group => admin.delete_group(name).await?,
            }
            metrics.wrote(match kind {
                Kind::Topic => "topic_delete",
                Kind::Group => "group_delete",
            });
        }
        self.remember(namesrv, kind, name, None).await;
        Ok(existed)
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
        assert_eq!(t.len(), 8);
        assert!(t.contains(&"ns__c-node-1".to_owned()));
        assert!(t.contains(&"%DLQ%ns__c-commands".to_owned()));
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
