//! In-memory backends: the standalone default, and the reference behaviour
//! the networked backends are tested against.
//!
//! Everything lives in this process and is lost when it exits. Several nodes
//! in one process can share one instance of each (that is how the cross-node
//! routing is unit-tested without Redis or RocketMQ).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use tokio::sync::mpsc;

mod store;

pub use store::{MemoryStore, StoreLimits};

use super::{BackendResult, Bus, ConnectionInfo, Envelope, Registry};
use crate::ids::{UserId, now_millis};
use crate::model::{OnlineStats, Presence};

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind, still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Registry in memory.
#[derive(Debug, Default)]
pub struct MemoryRegistry {
    inner: Mutex<RegistryState>,
}

#[derive(Debug, Default)]
struct RegistryState {
    /// user -> [(conn_id, pod)]: a user has a handful of devices, and a Vec
    /// is far smaller per user than a map.
    conns: HashMap<UserId, Vec<(String, String)>>,
    /// pod -> its connections: what `pods` and `stats` read, kept with every
    /// change so neither walks every connection (a connect storm would be
    /// quadratic).
    pods: BTreeMap<String, usize>,
    last_seen: HashMap<UserId, i64>,
}

impl RegistryState {
    /// Adds a connection, or sets the pod of one already known.
    fn upsert(&mut self, user: &UserId, conn_id: &str, pod: &str) {
        let conns = self.conns.entry(user.clone()).or_default();
        match conns.iter_mut().find(|(c, _)| c == conn_id) {
            Some((_, p)) if p == pod => {}
            Some((_, p)) => {
                let old = std::mem::replace(p, pod.to_owned());
                self.count(&old, -1);
                self.count(pod, 1);
            }
            None => {
                conns.push((conn_id.to_owned(), pod.to_owned()));
                self.count(pod, 1);
            }
        }
    }

    fn count(&mut self, pod: &str, delta: isize) {
        if let Some(n) = self.pods.get_mut(pod) {
            *n = n.saturating_add_signed(delta);
            if *n == 0 {
                self.pods.remove(pod);
            }
        } else if delta > 0 {
            self.pods.insert(pod.to_owned(), delta.unsigned_abs());
        }
    }
}

impl MemoryRegistry {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Registry for MemoryRegistry {
    async fn register(&self, conn: &ConnectionInfo) -> BackendResult<bool> {
        let mut st = lock(&self.inner);
        let first = st.conns.get(&conn.user).is_none_or(Vec::is_empty);
        st.upsert(&conn.user, &conn.conn_id, &conn.pod);
        st.last_seen.insert(conn.user.clone(), now_millis());
        Ok(first)
    }

    async fn unregister(&self, conn: &ConnectionInfo) -> BackendResult<bool> {
        let mut st = lock(&self.inner);
        let Some(entry) = st.conns.get_mut(&conn.user) else {
            return Ok(false);
        };
        let Some(i) = entry.iter().position(|(c, _)| *c == conn.conn_id) else {
            return Ok(false);
        };
        let (_, pod) = entry.remove(i);
        let last = entry.is_empty();
        if last {
            st.conns.remove(&conn.user);
        }
        st.count(&pod, -1);
        st.last_seen.insert(conn.user.clone(), now_millis());
        Ok(last)
    }

    async fn connections(&self, user: &UserId) -> BackendResult<Vec<(String, String)>> {
        let st = lock(&self.inner);
        Ok(st.conns.get(user).cloned().unwrap_or_default())
    }

    async fn pods_of(&self, users: &[UserId]) -> BackendResult<Vec<Vec<String>>> {
        let st = lock(&self.inner);
        Ok(users
            .iter()
            .map(|u| {
                st.conns
                    .get(u)
                    .map(|c| c.iter().map(|(_, pod)| pod.clone()).collect())
                    .unwrap_or_default()
            })
            .collect())
    }

    async fn presence(&self, user: &UserId) -> BackendResult<Presence> {
        let st = lock(&self.inner);
        let conns = st.conns.get(user);
        let pods: BTreeSet<String> = conns
            .map(|m| m.iter().map(|(_, p)| p.clone()).collect())
            .unwrap_or_default();
        Ok(Presence {
            user: user.clone(),
            online: conns.is_some_and(|m| !m.is_empty()),
            devices: conns.map_or(0, Vec::len),
            pods: pods.into_iter().collect(),
            last_seen: st.last_seen.get(user).copied(),
        })
    }

    async fn stats(&self) -> BackendResult<OnlineStats> {
        let st = lock(&self.inner);
        Ok(OnlineStats {
            online_users: st.conns.len(),
            connections: st.pods.values().sum(),
        })
    }

    async fn online_users(&self, limit: usize) -> BackendResult<Vec<UserId>> {
        let st = lock(&self.inner);
        let mut users: Vec<UserId> = st.conns.keys().cloned().collect();
        users.sort();
        users.truncate(limit);
        Ok(users)
    }

    async fn forget_pod(&self, pod: &str) -> BackendResult<Vec<UserId>> {
        let mut st = lock(&self.inner);
        let now = now_millis();
        let mut offline = Vec::new();
        st.pods.remove(pod);
        st.conns.retain(|user, conns| {
            conns.retain(|(_, p)| p != pod);
            if conns.is_empty() {
                offline.push(user.clone());
                false
            } else {
                true
            }
        });
        for u in &offline {
            st.last_seen.insert(u.clone(), now);
        }
        Ok(offline)
    }

    async fn pods(&self) -> BackendResult<Vec<String>> {
        Ok(lock(&self.inner).pods.keys().cloned().collect())
    }

    async fn heartbeat(&self, _pod: &str, conns: &[ConnectionInfo]) -> BackendResult<()> {
        // Nothing expires in memory; re-adding is what a flushed backend needs.
        let mut st = lock(&self.inner);
        let now = now_millis();
        for c in conns {
            st.upsert(&c.user, &c.conn_id, &c.pod);
            st.last_seen.insert(c.user.clone(), now);
        }
        Ok(())
    }
}

/// Depth of each pod's queue on the in-memory bus. A pod that falls this far
/// behind loses pushes (counted by the receiving node's metrics as gaps are
/// never observed; the inbox still has the messages).
const BUS_QUEUE: usize = 4096;

/// Bus in memory: one queue per subscribed pod.
#[derive(Debug, Default)]
pub struct MemoryBus {
    pods: Mutex<HashMap<String, mpsc::Sender<Envelope>>>,
}

impl MemoryBus {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Bus for MemoryBus {
    async fn publish(&self, pod: &str, envelope: Envelope) -> BackendResult<()> {
        let tx = lock(&self.pods).get(pod).cloned();
        match tx {
            // Best effort: a full or vanished queue drops the push only.
            Some(tx) => {
                let _ = tx.try_send(envelope);
                Ok(())
            }
            None => Ok(()),
        }
    }

    async fn broadcast(
        &self,
        from_pod: &str,
        _pods: &[String],
        envelope: Envelope,
    ) -> BackendResult<()> {
        let targets: Vec<_> = lock(&self.pods)
            .iter()
            .filter(|(p, _)| p.as_str() != from_pod)
            .map(|(_, tx)| tx.clone())
            .collect();
        for tx in targets {
            let _ = tx.try_send(envelope.clone());
        }
        Ok(())
    }

    async fn subscribe(&self, pod: &str) -> BackendResult<mpsc::Receiver<Envelope>> {
        let (tx, rx) = mpsc::channel(BUS_QUEUE);
        lock(&self.pods).insert(pod.to_owned(), tx);
        Ok(rx)
    }

    async fn unsubscribe(&self, pod: &str) {
        lock(&self.pods).remove(pod);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::contract;
    use std::time::Duration;

    fn store() -> MemoryStore {
        MemoryStore::new(StoreLimits {
            history_limit: 5,
            inbox_limit: 2,
            dedup_ttl: Duration::from_secs(60),
            dedup_limit: 100,
            max_group_members: 3,
        })
    }

    #[tokio::test]
    async fn store_keeps_the_contract() {
        let s = store();
        contract::append_and_dedup(&s, "t1", 1000).await;
        contract::inbox_ack_and_limit(&s, "t2", 2000).await;
        contract::history_pages(&s, "t3", 3000).await;
        contract::groups(&s, "t4", 4000).await;
        contract::recall(&s, "t5", 5000).await;
        contract::command_log(&s, "t7").await;
        contract::receipts(&s, "t6", 6000).await;
    }

    #[tokio::test]
    async fn registry_keeps_the_contract() {
        contract::registry(&MemoryRegistry::new(), "t1").await;
    }

    /// Beyond `dedup_limit`, the oldest `client_msg_id`s are forgotten first:
    /// memory is bounded by the limit, not by the messages seen.
    #[tokio::test]
    async fn dedup_keys_are_bounded_oldest_first() {
        use crate::backend::MessageStore;
        let s = MemoryStore::new(StoreLimits {
            history_limit: 5,
            inbox_limit: 100,
            dedup_ttl: Duration::from_secs(3600),
            dedup_limit: 2,
            max_group_members: 3,
        });
        let (a, b) = (UserId::parse("a").unwrap(), UserId::parse("b").unwrap());
        let send = |id: u64, cid: &str| {
            let msg = contract::dm(id, &a, &b, Some(cid));
            let s = &s;
            let b = b.clone();
            async move { s.append(msg, &[b]).await.unwrap().duplicate }
        };
        assert!(!send(1, "x").await && !send(2, "y").await && !send(3, "z").await);
        assert!(
            send(4, "z").await && send(5, "y").await,
            "the newest two are kept"
        );
        assert!(!send(6, "x").await, "the oldest was forgotten");
    }

    /// The pods with connections and the connection count are kept with each
    /// change (not recounted), through moves, heartbeats and a forgotten pod.
    #[tokio::test]
    async fn pods_and_connections_follow_every_change() {
        let r = MemoryRegistry::new();
        let c = |id: &str, user: &str, pod: &str| ConnectionInfo {
            conn_id: id.into(),
            user: UserId::parse(user).unwrap(),
            pod: pod.into(),
        };
        async fn state(r: &MemoryRegistry) -> (Vec<String>, usize) {
            let pods = r.pods().await.unwrap();
            (pods, r.stats().await.unwrap().connections)
        }
        r.register(&c("1", "a", "p0")).await.unwrap();
        r.register(&c("2", "a", "p1")).await.unwrap();
        r.register(&c("3", "b", "p1")).await.unwrap();
        r.register(&c("3", "b", "p1")).await.unwrap();
        assert_eq!(state(&r).await, (vec!["p0".into(), "p1".into()], 3));
        // A heartbeat that moves connection 1 to p2 (and re-adds the others).
        r.heartbeat("p2", &[c("1", "a", "p2"), c("3", "b", "p1")])
            .await
            .unwrap();
        assert_eq!(state(&r).await, (vec!["p1".into(), "p2".into()], 3));
        r.unregister(&c("1", "a", "p2")).await.unwrap();
        assert_eq!(state(&r).await, (vec!["p1".into()], 2));
        assert_eq!(r.forget_pod("p1").await.unwrap().len(), 2);
        assert_eq!(state(&r).await, (Vec::<String>::new(), 0));
    }
}
