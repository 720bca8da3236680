//! The message store on Redis (layout: [`super`]).

use std::sync::Arc;

use super::Conn;
use async_trait::async_trait;
use redis::AsyncCommands;

use super::{Keys, parse_msg, unavailable};
use crate::backend::memory::StoreLimits;
use crate::backend::redis_lua::{
    ACK_SCRIPT, APPEND_SCRIPT, HISTORY_SCRIPT, INBOX_SCRIPT, MARK_READ_SCRIPT, RECALL_SCRIPT,
};
use crate::backend::{
    Acked, Appended, BackendError, BackendResult, HistoryPage, HistoryQuery, MessageStore,
};
use crate::ids::{ConversationId, GroupId, MsgId, UserId};
use crate::model::{ChatMessage, Group, GroupProfile};

/// Message store on Redis.
#[derive(Clone)]
pub struct RedisStore {
    pub(super) conn: Conn,
    pub(super) keys: Keys,
    pub(super) limits: StoreLimits,
    /// Entries one outbox shard may hold (`None`: no event outbox), and the
    /// pod name recorded with each entry.
    pub(super) outbox: Option<(usize, String)>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("keys", &self.keys)
            .finish()
    }
}

impl RedisStore {
    pub fn new(conn: Conn, keys: Keys, limits: StoreLimits) -> Self {
        Self {
            conn,
            keys,
            limits,
            outbox: None,
        }
    }

    /// Records an event outbox entry with every message appended
    /// ([`crate::backend::outbox`]); past `per_shard` waiting entries in a shard,
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

    /// The pod recorded with outbox entries; empty when there is no outbox.
    pub(super) fn outbox_pod(&self) -> &str {
        self.outbox.as_ref().map_or("", |(_, pod)| pod.as_str())
    }
}

/// The reply of the history script: more, n, n messages, the undelivered
/// ids, '', then user/seq pairs.
fn parse_history(reply: &[String]) -> BackendResult<HistoryPage> {
    let bad = || BackendError::Unavailable("malformed history reply".into());
    let (more, rest) = reply.split_first().ok_or_else(bad)?;
    let (n, rest) = rest.split_first().ok_or_else(bad)?;
    let n: usize = n.parse().map_err(|_| bad())?;
    let msgs = rest.get(..n).ok_or_else(bad)?;
    let rest = &rest[n..];
    let sep = rest.iter().position(String::is_empty).ok_or_else(bad)?;
    let undelivered = rest[..sep]
        .iter()
        .filter_map(|id| id.parse().ok().map(MsgId))
        .collect();
    let read = rest[sep + 1..]
        .chunks_exact(2)
        .filter_map(|kv| Some((UserId::parse(&kv[0]).ok()?, kv[1].parse().ok()?)))
        .collect();
    Ok(HistoryPage {
        messages: msgs
            .iter()
            .map(|m| parse_msg(m))
            .collect::<Result<_, _>>()?,
        has_more: more == "1",
        read,
        undelivered,
    })
}

/// The ack script's reply: per message its body, then the number of its
/// sender's pods and the pods (`-` when the message does not name its
/// sender: stored by an older node).
fn parse_acked(reply: Vec<String>) -> BackendResult<Vec<Acked>> {
    let bad = || BackendError::Unavailable("unexpected reply from the ack script".into());
    let mut out = Vec::new();
    let mut it = reply.into_iter();
    while let Some(body) = it.next() {
        let sender_pods = match it.next().as_deref() {
            Some("-") => None,
            Some(n) => {
                let n: usize = n.parse().map_err(|_| bad())?;
                let pods: Vec<String> = it.by_ref().take(n).collect();
                if pods.len() != n {
                    return Err(bad());
                }
                Some(pods)
            }
            None => return Err(bad()),
        };
        out.push(Acked {
            msg: parse_msg(&body)?,
            sender_pods,
        });
    }
    Ok(out)
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
            let stream = crate::backend::outbox::stream_key(
                k,
                crate::backend::outbox::shard_of(&msg.conversation),
            );
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
        inv.arg(msg.from.as_str());
        // The pods to push to, read after the script in the same round trip
        // (a connection runs its commands in order): whoever registered before
        // the write is found, whoever registers after it reads the inbox.
        let mut pipe = redis::pipe();
        // Each reply on its own: a look-up that fails (after the script has
        // stored the message) must not make a stored message look failed.
        pipe.ignore_errors().invoke_script(&inv);
        for u in recipients.iter().chain(std::iter::once(&msg.from)) {
            pipe.hvals(format!("{}conns:{u}", k.prefix()));
        }
        let mut conn = self.conn.clone();
        let mut replies: Vec<redis::Value> =
            pipe.query_async(&mut conn).await.map_err(unavailable)?;
        if matches!(replies.first(), Some(redis::Value::ServerError(e)) if e.kind() == Some(redis::ServerErrorKind::NoScript))
        {
            // Not run: load it and send the whole pipeline again.
            inv.load_async(&mut conn).await.map_err(unavailable)?;
            replies = pipe.query_async(&mut conn).await.map_err(unavailable)?;
        }
        let mut replies = replies.into_iter();
        let reply: Vec<String> = match replies.next() {
            Some(redis::Value::ServerError(e)) => {
                return Err(BackendError::Unavailable(e.to_string()));
            }
            Some(v) => {
                redis::from_redis_value(v).map_err(|e| BackendError::Unavailable(e.to_string()))?
            }
            None => Vec::new(),
        };
        // One entry per recipient and the sender, else the router asks the registry.
        let pods = replies
            .map(redis::from_redis_value)
            .collect::<Result<Vec<Vec<String>>, _>>()
            .ok()
            .filter(|pods| pods.len() == recipients.len() + 1);
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
                pods,
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
                pods,
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
        let p = self.keys.prefix();
        let mut inv = HISTORY_SCRIPT.prepare_invoke();
        inv.key(seq_key)
            .key(hist_key)
            .key(format!("{p}read:{conversation}"));
        if let ConversationId::Direct(a, b) = conversation {
            inv.key(format!("{p}inbox:{a}"))
                .key(format!("{p}inbox:{b}"));
        }
        inv.arg(q.before.map(|b| b.to_string()).unwrap_or_default())
            .arg(q.after.map(|a| a.to_string()).unwrap_or_default())
            .arg(q.limit);
        let mut conn = self.conn.clone();
        let reply: Vec<String> = inv.invoke_async(&mut conn).await.map_err(unavailable)?;
        parse_history(&reply)
    }

    async fn mark_read(
        &self,
        conversation: &ConversationId,
        user: &UserId,
        seq: u64,
        msg_id: Option<MsgId>,
    ) -> BackendResult<Option<u64>> {
        let (seq_key, _) = self.conv_keys(conversation);
        let read_key = format!("{}read:{conversation}", self.keys.prefix());
        let stream = self.outbox.as_ref().map(|_| {
            crate::backend::outbox::stream_key(
                &self.keys,
                crate::backend::outbox::shard_of(conversation),
            )
        });
        let entry = crate::backend::outbox::ReadEntry {
            conversation: conversation.clone(),
            msg_id,
            seq: None,
        };
        let entry =
            serde_json::to_string(&entry).map_err(|e| BackendError::Unavailable(e.to_string()))?;
        let mut conn = self.conn.clone();
        let risen: u64 = MARK_READ_SCRIPT
            .key(seq_key)
            .key(&read_key)
            .key(stream.as_deref().unwrap_or(&read_key))
            .arg(user.as_str())
            .arg(seq)
            .arg(if stream.is_some() { "1" } else { "0" })
            .arg(entry)
            .arg(self.outbox.as_ref().map_or("", |(_, pod)| pod.as_str()))
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok((risen > 0).then_some(risen))
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

    async fn ack(&self, user: &UserId, msg_ids: &[MsgId]) -> BackendResult<Vec<Acked>> {
        let mut inv = ACK_SCRIPT.prepare_invoke();
        inv.key(format!("{}inbox:{user}", self.keys.prefix()))
            .arg(self.keys.prefix())
            .arg(self.outbox.as_ref().map_or("", |(_, pod)| pod.as_str()));
        for id in msg_ids {
            inv.arg(id.0.to_string());
        }
        let mut conn = self.conn.clone();
        let reply: Vec<String> = inv.invoke_async(&mut conn).await.map_err(unavailable)?;
        parse_acked(reply)
    }

    async fn recall(
        &self,
        original: &ChatMessage,
        tombstone: &ChatMessage,
        recipients: &[UserId],
        by: Option<&UserId>,
    ) -> BackendResult<bool> {
        let k = &self.keys;
        let (seq_key, hist_key) = self.conv_keys(&original.conversation);
        let json = serde_json::to_string(tombstone)
            .map_err(|e| BackendError::Unavailable(e.to_string()))?;
        let dedup = original
            .client_msg_id
            .as_ref()
            .map(|c| format!("{}dedup:{}:{c}", k.prefix(), original.from));
        let stream = self.outbox.as_ref().map(|_| {
            crate::backend::outbox::stream_key(
                k,
                crate::backend::outbox::shard_of(&original.conversation),
            )
        });
        let mut inv = RECALL_SCRIPT.prepare_invoke();
        inv.key(&seq_key)
            .key(&hist_key)
            .key(format!("{}msg:{}", k.prefix(), original.msg_id))
            .key(dedup.as_deref().unwrap_or(&hist_key))
            .key(stream.as_deref().unwrap_or(&hist_key));
        for r in recipients {
            inv.key(format!("{}inbox:{r}", k.prefix()));
        }
        inv.arg(original.seq)
            .arg(original.msg_id.0.to_string())
            .arg(&json)
            .arg(if dedup.is_some() { "1" } else { "0" })
            .arg(self.outbox.as_ref().map_or(0, |(limit, _)| *limit))
            .arg(by.map_or("", UserId::as_str))
            .arg(self.outbox.as_ref().map_or("", |(_, pod)| pod.as_str()));
        let mut conn = self.conn.clone();
        let reply: String = inv.invoke_async(&mut conn).await.map_err(unavailable)?;
        match reply.as_str() {
            "ok" => Ok(true),
            "gone" => Ok(false),
            "outbox" => Err(BackendError::Unavailable(
                "the event outbox is full (RocketMQ away?)".into(),
            )),
            other => Err(BackendError::Unavailable(format!(
                "unexpected reply from the recall script: {other}"
            ))),
        }
    }

    async fn create_group(&self, id: &GroupId, members: &[UserId]) -> BackendResult<Group> {
        self.create_group_now(id, members).await
    }

    async fn delete_group(&self, id: &GroupId) -> BackendResult<bool> {
        self.delete_group_now(id).await
    }

    async fn add_members(&self, id: &GroupId, users: &[UserId]) -> BackendResult<Group> {
        self.add_members_now(id, users).await
    }

    async fn remove_member(&self, id: &GroupId, user: &UserId) -> BackendResult<Group> {
        self.remove_member_now(id, user).await
    }

    async fn set_group_profile(
        &self,
        id: &GroupId,
        profile: &GroupProfile,
    ) -> BackendResult<Group> {
        self.set_group_profile_now(id, profile).await
    }

    async fn group(&self, id: &GroupId) -> BackendResult<Option<Group>> {
        self.read_group(id).await
    }

    async fn groups_of(&self, user: &UserId) -> BackendResult<Vec<GroupId>> {
        self.groups_of_now(user).await
    }

    async fn group_profiles(&self, ids: &[GroupId]) -> BackendResult<Vec<(GroupId, GroupProfile)>> {
        self.group_profiles_now(ids).await
    }

    async fn record_moderation(
        &self,
        entry: &crate::backend::outbox::ModerationEntry,
    ) -> BackendResult<bool> {
        match &self.outbox {
            Some((limit, pod)) => {
                crate::backend::outbox::add_moderated(&self.conn, &self.keys, *limit, pod, entry)
                    .await
            }
            None => Ok(true),
        }
    }
}
