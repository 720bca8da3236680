//! The presence and routing registry on Redis (layout: [`super`]).

use std::collections::BTreeSet;
use std::time::Duration;

use super::Conn;
use async_trait::async_trait;
use redis::AsyncCommands;

use super::{Keys, unavailable};
use crate::backend::redis_lua::{FORGET_POD_SCRIPT, REGISTER_SCRIPT, UNREGISTER_SCRIPT};
use crate::backend::{BackendResult, ConnectionInfo, Registry};
use crate::ids::{UserId, now_millis};
use crate::model::{OnlineStats, Presence};

/// Registry on Redis.
#[derive(Clone)]
pub struct RedisRegistry {
    conn: Conn,
    keys: Keys,
    presence_ttl: Duration,
    pod_ttl: Duration,
    /// Records joins and leaves in the event outbox.
    outbox: bool,
}

impl std::fmt::Debug for RedisRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisRegistry")
            .field("keys", &self.keys)
            .finish()
    }
}

impl RedisRegistry {
    pub fn new(conn: Conn, keys: Keys, presence_ttl: Duration, heartbeat: Duration) -> Self {
        Self {
            conn,
            keys,
            presence_ttl,
            pod_ttl: heartbeat * 3,
            outbox: false,
        }
    }

    /// Records a user's first connection and last disconnection (a dead
    /// pod's included) in the event outbox ([`crate::backend::outbox`]). These entries
    /// are never refused: refusing a connection for want of an event would
    /// be worse, and there is at most one per connect and disconnect.
    pub fn with_outbox(mut self) -> Self {
        self.outbox = true;
        self
    }

    /// The outbox key a registry script takes last, when joins and leaves are
    /// recorded.
    fn outbox_key(&self) -> Option<String> {
        self.outbox.then(|| {
            crate::backend::outbox::stream_key(&self.keys, crate::backend::outbox::PRESENCE_SHARD)
        })
    }

    fn ms(d: Duration) -> u64 {
        d.as_millis() as u64
    }

    /// Pods that are registered but whose liveness key expired.
    async fn dead_pods(&self) -> BackendResult<Vec<String>> {
        let mut conn = self.conn.clone();
        let pods: Vec<String> = conn
            .smembers(format!("{}pods", self.keys.prefix()))
            .await
            .map_err(unavailable)?;
        let mut dead = Vec::new();
        for p in pods {
            let alive: bool = conn
                .exists(format!("{}pod:{p}", self.keys.prefix()))
                .await
                .map_err(unavailable)?;
            if !alive {
                dead.push(p);
            }
        }
        Ok(dead)
    }
}

#[async_trait]
impl Registry for RedisRegistry {
    async fn register(&self, c: &ConnectionInfo) -> BackendResult<bool> {
        let k = &self.keys;
        let mut conn = self.conn.clone();
        let mut inv = REGISTER_SCRIPT.prepare_invoke();
        inv.key(format!("{}conns:{}", k.prefix(), c.user))
            .key(format!("{}podconns:{}", k.prefix(), c.pod))
            .key(format!("{}online", k.prefix()))
            .key(format!("{}lastseen", k.prefix()))
            .key(format!("{}pod:{}", k.prefix(), c.pod));
        if let Some(key) = self.outbox_key() {
            inv.key(key);
        }
        let first: i64 = inv
            .arg(&c.conn_id)
            .arg(&c.pod)
            .arg(c.user.as_str())
            .arg(now_millis())
            .arg(Self::ms(self.presence_ttl))
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(first == 1)
    }

    async fn unregister(&self, c: &ConnectionInfo) -> BackendResult<bool> {
        let k = &self.keys;
        let mut conn = self.conn.clone();
        let mut inv = UNREGISTER_SCRIPT.prepare_invoke();
        inv.key(format!("{}conns:{}", k.prefix(), c.user))
            .key(format!("{}podconns:{}", k.prefix(), c.pod))
            .key(format!("{}online", k.prefix()))
            .key(format!("{}lastseen", k.prefix()))
            .key(format!("{}pod:{}", k.prefix(), c.pod));
        if let Some(key) = self.outbox_key() {
            inv.key(key);
        }
        let last: i64 = inv
            .arg(&c.conn_id)
            .arg(c.user.as_str())
            .arg(now_millis())
            .arg(&c.pod)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(last == 1)
    }

    async fn connections(&self, user: &UserId) -> BackendResult<Vec<(String, String)>> {
        let mut conn = self.conn.clone();
        conn.hgetall(format!("{}conns:{user}", self.keys.prefix()))
            .await
            .map_err(unavailable)
    }

    /// `HVALS conns:<user>`. The store reads the same hashes the same way
    /// after its append and ack scripts (`RedisStore`): a change here goes
    /// there too.
    async fn pods_of(&self, users: &[UserId]) -> BackendResult<Vec<Vec<String>>> {
        if let [user] = users {
            let mut conn = self.conn.clone();
            let pods: Vec<String> = conn
                .hvals(format!("{}conns:{user}", self.keys.prefix()))
                .await
                .map_err(unavailable)?;
            return Ok(vec![pods]);
        }
        let mut pipe = redis::pipe();
        for u in users {
            pipe.hvals(format!("{}conns:{u}", self.keys.prefix()));
        }
        let mut conn = self.conn.clone();
        pipe.query_async(&mut conn).await.map_err(unavailable)
    }

    async fn presence(&self, user: &UserId) -> BackendResult<Presence> {
        let mut conn = self.conn.clone();
        let (conns, last_seen): (Vec<(String, String)>, Option<i64>) = redis::pipe()
            .hgetall(format!("{}conns:{user}", self.keys.prefix()))
            .hget(format!("{}lastseen", self.keys.prefix()), user.as_str())
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let pods: BTreeSet<String> = conns.iter().map(|(_, p)| p.clone()).collect();
        Ok(Presence {
            user: user.clone(),
            online: !conns.is_empty(),
            devices: conns.len(),
            pods: pods.into_iter().collect(),
            last_seen,
        })
    }

    async fn stats(&self) -> BackendResult<OnlineStats> {
        let mut conn = self.conn.clone();
        let online_key = format!("{}online", self.keys.prefix());
        // Users whose heartbeat stopped longer than the presence TTL ago are
        // not online any more, whatever their (dead) pod left behind.
        let stale = now_millis() - Self::ms(self.presence_ttl) as i64;
        let (_, online_users, pods): ((), usize, Vec<String>) = redis::pipe()
            .cmd("ZREMRANGEBYSCORE")
            .arg(&online_key)
            .arg("-inf")
            .arg(stale)
            .zcard(&online_key)
            .smembers(format!("{}pods", self.keys.prefix()))
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let mut connections = 0;
        for p in pods {
            let n: Option<usize> = conn
                .hget(format!("{}pod:{p}", self.keys.prefix()), "conns")
                .await
                .map_err(unavailable)?;
            connections += n.unwrap_or(0);
        }
        Ok(OnlineStats {
            online_users,
            connections,
        })
    }

    async fn online_users(&self, limit: usize) -> BackendResult<Vec<UserId>> {
        let mut conn = self.conn.clone();
        let ids: Vec<String> = conn
            .zrevrange(
                format!("{}online", self.keys.prefix()),
                0,
                limit as isize - 1,
            )
            .await
            .map_err(unavailable)?;
        let mut users: Vec<UserId> = ids.iter().filter_map(|u| UserId::parse(u).ok()).collect();
        users.sort();
        Ok(users)
    }

    async fn forget_pod(&self, pod: &str) -> BackendResult<Vec<UserId>> {
        let k = &self.keys;
        let mut conn = self.conn.clone();
        let mut inv = FORGET_POD_SCRIPT.prepare_invoke();
        inv.key(format!("{}podconns:{pod}", k.prefix()))
            .key(format!("{}online", k.prefix()))
            .key(format!("{}lastseen", k.prefix()))
            .key(format!("{}pods", k.prefix()))
            .key(format!("{}pod:{pod}", k.prefix()));
        if let Some(key) = self.outbox_key() {
            inv.key(key);
        }
        inv.arg(k.prefix())
            .arg(now_millis())
            .arg(pod)
            .invoke_async::<Vec<String>>(&mut conn)
            .await
            .map(|users| users.iter().filter_map(|u| UserId::parse(u).ok()).collect())
            .map_err(unavailable)
    }

    async fn ping(&self) -> BackendResult<()> {
        let mut conn = self.conn.clone();
        redis::cmd("PING")
            .query_async::<()>(&mut conn)
            .await
            .map_err(unavailable)
    }

    async fn pods(&self) -> BackendResult<Vec<String>> {
        let mut conn = self.conn.clone();
        let all: Vec<String> = conn
            .smembers(format!("{}pods", self.keys.prefix()))
            .await
            .map_err(unavailable)?;
        let dead = self.dead_pods().await?;
        Ok(all.into_iter().filter(|p| !dead.contains(p)).collect())
    }

    async fn heartbeat(&self, pod: &str, conns: &[ConnectionInfo]) -> BackendResult<()> {
        let k = &self.keys;
        let now = now_millis();
        let ttl = Self::ms(self.presence_ttl);
        let mut pipe = redis::pipe();
        let pod_key = format!("{}pod:{pod}", k.prefix());
        pipe.hset_multiple(&pod_key, &[("conns", conns.len() as i64), ("seen", now)])
            .ignore()
            .pexpire(&pod_key, Self::ms(self.pod_ttl) as i64)
            .ignore()
            .sadd(format!("{}pods", k.prefix()), pod)
            .ignore();
        // Re-creates whatever a Redis restart or flush lost: presence rebuilds
        // itself from the live connections within one heartbeat.
        for c in conns {
            let ck = format!("{}conns:{}", k.prefix(), c.user);
            pipe.hset(&ck, &c.conn_id, &c.pod)
                .ignore()
                .pexpire(&ck, ttl as i64)
                .ignore()
                .sadd(
                    format!("{}podconns:{pod}", k.prefix()),
                    format!("{} {}", c.user, c.conn_id),
                )
                .ignore()
                .zadd(format!("{}online", k.prefix()), c.user.as_str(), now)
                .ignore();
        }
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(unavailable)?;
        // Any node may clean up after a dead one; the script is idempotent.
        for dead in self.dead_pods().await? {
            if dead != pod {
                let offline = self.forget_pod(&dead).await?;
                tracing::info!(pod = %dead, users_offline = offline.len(), "removed the entries of a dead pod");
            }
        }
        Ok(())
    }
}
