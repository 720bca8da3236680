//! Redis backends: the presence/routing registry and the message store.
//!
//! Every key of one cluster starts with `sb:{<namespace>/<name>}:`. The braces
//! are a Redis Cluster hash tag: all of one cluster's keys hash to one slot,
//! which is what lets the Lua scripts below touch a conversation, several
//! inboxes and a dedup key atomically on Redis Cluster too (at the price of
//! one cluster's data living on one shard). See `docs/operations.md`.
//!
//! Layout (`K` = the prefix):
//! - `Kpods` set of pod names; `Kpod:<pod>` hash {conns, started, seen}, TTL
//!   3 x heartbeat: a pod whose key expired is dead.
//! - `Kconns:<user>` hash conn id -> pod, TTL = presence TTL, refreshed by
//!   the heartbeats of the pods holding the connections.
//! - `Kpodconns:<pod>` set of `<user> <conn id>`: what to remove when the pod
//!   is found dead (or starts again under the same name).
//! - `Konline` sorted set user -> last heartbeat ms; `Klastseen` hash user -> ms.
//! - `Kseq:<conv>` counter; `Khist:<conv>` list of message JSON, capped.
//! - `Korder` counter: global insertion order of inbox entries.
//! - `Kmsg:<id>` hash {b: JSON, r: inbox references, s: outbox shard stream
//!   of a 1:1 message when events are on}: one body shared by all inboxes,
//!   deleted when the last recipient acks.
//! - `Kinbox:<user>` sorted set msg id -> insertion order.
//! - `Kdedup:<user>:<client_msg_id>` message JSON, TTL = dedup TTL.
//! - `Koutbox:<shard>` streams and their leases: see [`super::outbox`].
//! - `Kgroups` set of group ids; `Kgroup:<g>` set of members;
//!   `Kugroups:<user>` set of the user's groups.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};

use super::memory::StoreLimits;
use super::redis_lua::{
    ACK_SCRIPT, ADD_MEMBERS_SCRIPT, APPEND_SCRIPT, CREATE_GROUP_SCRIPT, DELETE_GROUP_SCRIPT,
    FORGET_POD_SCRIPT, HISTORY_SCRIPT, INBOX_SCRIPT, REGISTER_SCRIPT, REMOVE_MEMBER_SCRIPT,
    UNREGISTER_SCRIPT,
};
use super::{
    Appended, BackendError, BackendResult, ConnectionInfo, HistoryPage, HistoryQuery, MessageStore,
    Registry,
};
use crate::ids::{ConversationId, GroupId, MsgId, UserId, now_millis};
use crate::model::{ChatMessage, Group, OnlineStats, Presence};

fn unavailable(e: redis::RedisError) -> BackendError {
    BackendError::Unavailable(e.to_string())
}

/// Connects to Redis with a manager that reconnects by itself. Calls fail
/// fast (bounded timeouts) while Redis is away instead of hanging clients.
///
/// `rediss://` URLs use TLS, verified against the system's roots, or only
/// against `ca_pem` when given (a private CA).
pub async fn connect(
    url: &str,
    ca_pem: Option<Vec<u8>>,
) -> Result<ConnectionManager, redis::RedisError> {
    // rustls needs one process-wide crypto provider; the dependency tree
    // offers two (ring, aws-lc-rs), so pick one. Already installed: fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = match ca_pem {
        Some(pem) => redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem),
            },
        )?,
        None => redis::Client::open(url)?,
    };
    let cfg = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(2)))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(2));
    ConnectionManager::new_with_config(client, cfg).await
}

/// Key names of one cluster.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// `namespace`/`name` identify the ChatCluster.
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            prefix: format!("sb:{{{namespace}/{name}}}:"),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

/// Registry on Redis.
#[derive(Clone)]
pub struct RedisRegistry {
    conn: ConnectionManager,
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
    pub fn new(
        conn: ConnectionManager,
        keys: Keys,
        presence_ttl: Duration,
        heartbeat: Duration,
    ) -> Self {
        Self {
            conn,
            keys,
            presence_ttl,
            pod_ttl: heartbeat * 3,
            outbox: false,
        }
    }

    /// Records a user's first connection and last disconnection (a dead
    /// pod's included) in the event outbox ([`super::outbox`]). These entries
    /// are never refused: refusing a connection for want of an event would
    /// be worse, and there is at most one per connect and disconnect.
    pub fn with_outbox(mut self) -> Self {
        self.outbox = true;
        self
    }

    /// The outbox key a registry script takes last, when joins and leaves are
    /// recorded.
    fn outbox_key(&self) -> Option<String> {
        self.outbox
            .then(|| super::outbox::stream_key(&self.keys, super::outbox::PRESENCE_SHARD))
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

/// Message store on Redis.
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    keys: Keys,
    limits: StoreLimits,
    /// Entries one outbox shard may hold (`None`: no event outbox), and the
    /// pod name recorded with each entry.
    outbox: Option<(usize, String)>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("keys", &self.keys)
            .finish()
    }
}

fn parse_msg(json: &str) -> BackendResult<Arc<ChatMessage>> {
    serde_json::from_str(json)
        .map(Arc::new)
        .map_err(|e| BackendError::Unavailable(format!("corrupt message in Redis: {e}")))
}

impl RedisStore {
    pub fn new(conn: ConnectionManager, keys: Keys, limits: StoreLimits) -> Self {
        Self {
            conn,
            keys,
            limits,
            outbox: None,
        }
    }

    /// Records an event outbox entry with every message appended
    /// ([`super::outbox`]); past `per_shard` waiting entries in a shard,
    /// `append` fails with `Unavailable` instead of dropping events.
    pub fn with_outbox(mut self, per_shard: usize, pod: &str) -> Self {
        self.outbox = Some((per_shard.max(1), pod.to_owned()));
        self
    }

    fn conv_keys(&self, c: &ConversationId) -> (String, String) {
        (
            format!("{}seq:{c}", self.keys.prefix()),
            format!("{}hist:{c}", self.keys.prefix()),
        )
    }

    async fn group_members(&self, id: &GroupId) -> BackendResult<Option<Vec<UserId>>> {
        let mut conn = self.conn.clone();
        let (exists, members): (bool, Vec<String>) = redis::pipe()
            .sismember(format!("{}groups", self.keys.prefix()), id.as_str())
            .smembers(format!("{}group:{id}", self.keys.prefix()))
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        if !exists {
            return Ok(None);
        }
        let mut m: Vec<UserId> = members
            .iter()
            .filter_map(|u| UserId::parse(u).ok())
            .collect();
        m.sort();
        Ok(Some(m))
    }

    async fn group_script(
        &self,
        src: &Script,
        id: &GroupId,
        users: &[UserId],
    ) -> BackendResult<String> {
        let k = &self.keys;
        let mut script = src.prepare_invoke();
        script
            .key(format!("{}groups", k.prefix()))
            .key(format!("{}group:{id}", k.prefix()))
            .arg(id.as_str())
            .arg(self.limits.max_group_members);
        for u in users {
            script
                .key(format!("{}ugroups:{u}", k.prefix()))
                .arg(u.as_str());
        }
        let mut conn = self.conn.clone();
        script.invoke_async(&mut conn).await.map_err(unavailable)
    }

    async fn existing_group(&self, id: &GroupId) -> BackendResult<Group> {
        match self.group_members(id).await? {
            Some(members) => Ok(Group {
                id: id.clone(),
                members,
            }),
            None => Err(BackendError::NoSuchGroup(id.clone())),
        }
    }
}

#[async_trait]
impl MessageStore for RedisStore {
    async fn append(&self, msg: ChatMessage, recipients: &[UserId]) -> BackendResult<Appended> {
        let k = &self.keys;
        let (seq_key, hist_key) = self.conv_keys(&msg.conversation);
        let mut probe = msg.clone();
        probe.seq = 0;
        let json =
            serde_json::to_string(&probe).map_err(|e| BackendError::Unavailable(e.to_string()))?;
        let dedup = msg
            .client_msg_id
            .as_ref()
            .map(|c| format!("{}dedup:{}:{c}", k.prefix(), msg.from));
        let order_key = format!("{}order", k.prefix());
        let mut inv = APPEND_SCRIPT.prepare_invoke();
        inv.key(&seq_key)
            .key(&hist_key)
            .key(&order_key)
            .key(format!("{}msg:{}", k.prefix(), msg.msg_id))
            .key(dedup.as_deref().unwrap_or(&order_key));
        for r in recipients {
            inv.key(format!("{}inbox:{r}", k.prefix()));
        }
        if self.outbox.is_some() {
            let stream = super::outbox::stream_key(k, super::outbox::shard_of(&msg.conversation));
            let conns = match &msg.to {
                Some(to) => format!("{}conns:{to}", k.prefix()),
                None => stream.clone(),
            };
            inv.key(stream).key(conns);
        }
        inv.arg(&json)
            .arg(if dedup.is_some() { "1" } else { "0" })
            .arg(self.limits.dedup_ttl.as_millis() as u64)
            .arg(self.limits.history_limit)
            .arg(self.limits.inbox_limit)
            .arg(if msg.group.is_some() { "1" } else { "0" })
            .arg(msg.msg_id.0.to_string())
            .arg(self.outbox.as_ref().map_or(0, |(limit, _)| *limit))
            .arg(self.outbox.as_ref().map_or("", |(_, pod)| pod.as_str()));
        let mut conn = self.conn.clone();
        let reply: Vec<String> = inv.invoke_async(&mut conn).await.map_err(unavailable)?;
        let index = |s: &String| {
            s.parse::<usize>()
                .ok()
                .and_then(|i| recipients.get(i.wrapping_sub(1)))
                .cloned()
        };
        match reply.first().map(String::as_str) {
            Some("dup") => Ok(Appended {
                msg: parse_msg(&reply[1])?,
                duplicate: true,
                inbox_skipped: Vec::new(),
            }),
            Some("outbox") => Err(BackendError::Unavailable(
                "the event outbox is full (RocketMQ away?)".into(),
            )),
            Some("full") => Err(BackendError::InboxFull(
                reply
                    .get(1)
                    .and_then(index)
                    .unwrap_or_else(|| msg.from.clone()),
            )),
            Some("ok") if reply.len() >= 2 => Ok(Appended {
                msg: parse_msg(&reply[1])?,
                duplicate: false,
                inbox_skipped: reply[2..].iter().filter_map(index).collect(),
            }),
            _ => Err(BackendError::Unavailable(
                "unexpected reply from the append script".into(),
            )),
        }
    }

    async fn history(
        &self,
        conversation: &ConversationId,
        q: HistoryQuery,
    ) -> BackendResult<HistoryPage> {
        let (seq_key, hist_key) = self.conv_keys(conversation);
        let mut conn = self.conn.clone();
        let reply: Vec<String> = HISTORY_SCRIPT
            .key(seq_key)
            .key(hist_key)
            .arg(q.before.map(|b| b.to_string()).unwrap_or_default())
            .arg(q.after.map(|a| a.to_string()).unwrap_or_default())
            .arg(q.limit)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let (more, msgs) = reply
            .split_first()
            .ok_or_else(|| BackendError::Unavailable("empty history reply".into()))?;
        Ok(HistoryPage {
            messages: msgs
                .iter()
                .map(|m| parse_msg(m))
                .collect::<Result<_, _>>()?,
            has_more: more == "1",
        })
    }

    async fn find(
        &self,
        conversation: &ConversationId,
        msg_id: MsgId,
    ) -> BackendResult<Option<Arc<ChatMessage>>> {
        let (_, hist_key) = self.conv_keys(conversation);
        let mut conn = self.conn.clone();
        let all: Vec<String> = conn.lrange(hist_key, 0, -1).await.map_err(unavailable)?;
        let needle = format!("\"msg_id\":\"{msg_id}\"");
        match all.iter().rev().find(|m| m.contains(&needle)) {
            Some(m) => parse_msg(m).map(Some),
            None => Ok(None),
        }
    }

    async fn inbox(&self, user: &UserId, limit: usize) -> BackendResult<Vec<Arc<ChatMessage>>> {
        let mut conn = self.conn.clone();
        let bodies: Vec<String> = INBOX_SCRIPT
            .key(format!("{}inbox:{user}", self.keys.prefix()))
            .arg(self.keys.prefix())
            .arg(limit)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        bodies.iter().map(|b| parse_msg(b)).collect()
    }

    async fn ack(&self, user: &UserId, msg_ids: &[MsgId]) -> BackendResult<Vec<Arc<ChatMessage>>> {
        let mut inv = ACK_SCRIPT.prepare_invoke();
        inv.key(format!("{}inbox:{user}", self.keys.prefix()))
            .arg(self.keys.prefix())
            .arg(self.outbox.as_ref().map_or("", |(_, pod)| pod.as_str()));
        for id in msg_ids {
            inv.arg(id.0.to_string());
        }
        let mut conn = self.conn.clone();
        let bodies: Vec<String> = inv.invoke_async(&mut conn).await.map_err(unavailable)?;
        bodies.iter().map(|b| parse_msg(b)).collect()
    }

    async fn create_group(&self, id: &GroupId, members: &[UserId]) -> BackendResult<Group> {
        let set: BTreeSet<UserId> = members.iter().cloned().collect();
        let members: Vec<UserId> = set.into_iter().collect();
        match self
            .group_script(&CREATE_GROUP_SCRIPT, id, &members)
            .await?
            .as_str()
        {
            "exists" => Err(BackendError::GroupExists(id.clone())),
            "full" => Err(BackendError::GroupFull(
                id.clone(),
                self.limits.max_group_members,
            )),
            _ => Ok(Group {
                id: id.clone(),
                members,
            }),
        }
    }

    async fn delete_group(&self, id: &GroupId) -> BackendResult<bool> {
        let mut conn = self.conn.clone();
        let deleted: i64 = DELETE_GROUP_SCRIPT
            .key(format!("{}groups", self.keys.prefix()))
            .key(format!("{}group:{id}", self.keys.prefix()))
            .arg(id.as_str())
            .arg(self.keys.prefix())
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(deleted == 1)
    }

    async fn add_members(&self, id: &GroupId, users: &[UserId]) -> BackendResult<Group> {
        match self
            .group_script(&ADD_MEMBERS_SCRIPT, id, users)
            .await?
            .as_str()
        {
            "missing" => Err(BackendError::NoSuchGroup(id.clone())),
            "full" => Err(BackendError::GroupFull(
                id.clone(),
                self.limits.max_group_members,
            )),
            _ => self.existing_group(id).await,
        }
    }

    async fn remove_member(&self, id: &GroupId, user: &UserId) -> BackendResult<Group> {
        let mut conn = self.conn.clone();
        let r: String = REMOVE_MEMBER_SCRIPT
            .key(format!("{}groups", self.keys.prefix()))
            .key(format!("{}group:{id}", self.keys.prefix()))
            .key(format!("{}ugroups:{user}", self.keys.prefix()))
            .arg(id.as_str())
            .arg(user.as_str())
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        if r == "missing" {
            return Err(BackendError::NoSuchGroup(id.clone()));
        }
        self.existing_group(id).await
    }

    async fn group(&self, id: &GroupId) -> BackendResult<Option<Group>> {
        Ok(self.group_members(id).await?.map(|members| Group {
            id: id.clone(),
            members,
        }))
    }

    async fn groups_of(&self, user: &UserId) -> BackendResult<Vec<GroupId>> {
        let mut conn = self.conn.clone();
        let ids: Vec<String> = conn
            .smembers(format!("{}ugroups:{user}", self.keys.prefix()))
            .await
            .map_err(unavailable)?;
        let mut g: Vec<GroupId> = ids.iter().filter_map(|g| GroupId::parse(g).ok()).collect();
        g.sort();
        Ok(g)
    }
}
