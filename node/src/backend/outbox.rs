//! The event outbox in Redis: what the message store records, in the same
//! atomic step as the message, for the event relay to publish.
//!
//! Layout (`K` = the cluster's key prefix):
//! - `Koutbox:<shard>` stream, one per shard (`shard = FNV-1a(conversation)
//!   % SHARDS`), entries `{k: "msg", m: <message JSON>, off: "0"|"1", pod}`.
//!   `off` is 1 when a 1:1 message's recipient had no live connection in the
//!   registry at that moment (same script, same instant). The registry's
//!   scripts add `{k: "join"|"leave", m: <user>, off: <ms>, pod}` to shard
//!   [`PRESENCE_SHARD`] when a user's first connection in the cluster
//!   arrives or its last one goes (a dead pod's reaped ones included). The
//!   ack script adds `{k: "ack", m: <message JSON>, pod}` when the recipient
//!   of a 1:1 message acks it, to the shard the message went to (its
//!   `Kmsg:<id>` hash remembers it as `s`), so the ack follows the message.
//!   The recall script adds `{k: "recall", m: <tombstone JSON>, off: <the
//!   user who recalled, empty for an admin>, pod}` to the conversation's
//!   shard, after the message; the entry id's time is the recall time.
//!   The read script adds `{k: "read", m: {conversation, msg_id?, seq},
//!   off: <reader>, pod}` to the conversation's shard when a read watermark
//!   rises. The group scripts add `{k: "group", m: {action: "created" |
//!   "added" | "removed", group, users}, pod}` to the group conversation's
//!   shard when a group is created or its membership changes.
//!   The moderation policy adds `{k: "moderated", m: <ModerationEntry
//!   JSON>, pod}` to the conversation's shard when it refused or rewrote a
//!   message (unless the shard is full: the event is then dropped and
//!   counted).
//! - `Koutbox:<shard>:lease` the pod relaying that shard, with a TTL: one
//!   relay per shard at a time keeps a conversation's events in order, and a
//!   dead pod's shards pass to a survivor when its lease expires. A pod hands
//!   the leases above `ceil(SHARDS / live relays)` over to relays under that
//!   share (value `~handover` for 2 s), so the relaying spreads.
//! - `Koutbox:relays` sorted set pod -> ms until which its relay counts as
//!   live (refreshed every pass, removed when it stops).

use std::sync::LazyLock;
use std::time::Duration;

use super::redis::Conn;
use redis::Script;

use super::redis::Keys;
use super::{BackendError, BackendResult};
use crate::ids::{ConversationId, MsgId};
use crate::model::ChatMessage;

/// Streams the outbox is split into. Fixed: changing it would move
/// conversations between shards while entries wait in the old one.
pub const SHARDS: u32 = 16;

/// The shard of every join and leave entry (one stream keeps one user's
/// joins and leaves in order).
pub const PRESENCE_SHARD: u32 = 0;

/// The outbox shard of a conversation.
pub fn shard_of(conversation: &ConversationId) -> u32 {
    switchboard_events::lane(&conversation.to_string()) % SHARDS
}

pub(super) fn stream_key(keys: &Keys, shard: u32) -> String {
    format!("{}outbox:{shard}", keys.prefix())
}

/// Sorted set pod -> until when its relay counts as live (ms).
fn relays_key(keys: &Keys) -> String {
    format!("{}outbox:relays", keys.prefix())
}

fn lease_key(keys: &Keys, shard: u32) -> String {
    format!("{}outbox:{shard}:lease", keys.prefix())
}

/// One entry read from the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    pub shard: u32,
    /// The stream entry id, for [`RedisOutbox::remove`].
    pub id: String,
    pub what: Recorded,
    /// The pod that accepted the message, or held the connection.
    pub pod: String,
}

/// `m` of a `read` entry: the store writes it without `seq`, the script
/// appends the watermark it set.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReadEntry {
    pub conversation: ConversationId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msg_id: Option<MsgId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
}

/// `m` of a `group` entry, written by the group scripts.
#[derive(serde::Deserialize)]
struct GroupEntry {
    action: String,
    group: String,
    users: serde_json::Value,
}

/// `m` of a `moderated` entry: a message moderation refused or rewrote.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ModerationEntry {
    /// `rejected` or `rewritten`.
    pub action: String,
    /// `rules` or `webhook`.
    pub by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The sender.
    pub user: String,
    pub conversation: ConversationId,
    /// The content as sent.
    pub content: String,
    /// A rewritten message's id, as stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msg_id: Option<MsgId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_msg_id: Option<String>,
}

/// Entries waiting in the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Depth {
    /// All shards.
    pub total: u64,
    /// The fullest shard (sends to its conversations are refused once it
    /// holds the per-shard limit).
    pub fullest: u64,
}

/// What an outbox entry records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    Message {
        /// The stored message, with its `seq`.
        msg: ChatMessage,
        /// A 1:1 message whose recipient had no live connection.
        offline: bool,
    },
    /// The recipient of a 1:1 message acknowledged it.
    Ack { msg: ChatMessage },
    /// A message was recalled: `msg` is its tombstone.
    Recall {
        msg: ChatMessage,
        /// Who recalled it; `None`: an admin.
        by: Option<String>,
        /// When, ms since the Unix epoch (the outbox entry's time).
        at_ms: i64,
    },
    /// A participant's read watermark rose.
    Read {
        user: String,
        read: ReadEntry,
        at_ms: i64,
    },
    /// Group membership changed (`created` with the initial members,
    /// `added`/`removed` with the users whose membership changed).
    Group {
        action: String,
        group: String,
        users: Vec<String>,
        at_ms: i64,
    },
    /// Moderation refused or rewrote a message.
    Moderated { entry: ModerationEntry, at_ms: i64 },
    /// A user's first connection in the cluster.
    Join { user: String, at_ms: i64 },
    /// A user's last connection in the cluster is gone.
    Leave { user: String, at_ms: i64 },
    /// An entry the relay cannot read (written by another version of the
    /// node): logged and dropped, so it cannot block its shard.
    Unreadable { reason: String },
}

/// The time part of a stream entry id (`<ms>-<n>`).
fn entry_ms(id: &str) -> i64 {
    id.split('-')
        .next()
        .and_then(|ms| ms.parse().ok())
        .unwrap_or(0)
}

/// Appends a `moderated` entry to the conversation's shard; false when the
/// shard already holds `limit` entries (RocketMQ away: the event is dropped
/// rather than growing Redis).
pub(super) async fn add_moderated(
    conn: &Conn,
    keys: &Keys,
    limit: usize,
    pod: &str,
    entry: &ModerationEntry,
) -> BackendResult<bool> {
    let m = serde_json::to_string(entry).map_err(|e| BackendError::Unavailable(e.to_string()))?;
    let mut conn = conn.clone();
    let added: i64 = ADD_MODERATED_SCRIPT
        .key(stream_key(keys, shard_of(&entry.conversation)))
        .arg(limit)
        .arg(m)
        .arg(pod)
        .invoke_async(&mut conn)
        .await
        .map_err(unavailable)?;
    Ok(added == 1)
}

static ADD_MODERATED_SCRIPT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('XADD', KEYS[1], '*', 'k', 'moderated', 'm', ARGV[2], 'off', '', 'pod', ARGV[3])
return 1
"#,
    )
});

/// Renews this pod's leases, takes free ones, and reads the oldest entries of
/// every shard it holds, in one round trip.
const TAKE: &str = r#"
-- KEYS: lease 0, stream 0, lease 1, stream 1, ..., relays
-- ARGV: pod, lease ttl ms, entries per shard, now ms
-- Spreading: a pod keeps at most ceil(shards / live pods) leases. It hands the
-- ones above that over (after a finished pass: nothing of theirs is in flight)
-- by marking them '~handover' for 2 s, which only a pod under its share may
-- take. A lease that expired (its pod died) or was never taken is free for
-- anyone, so a dead pod's shards never wait for the registry to notice it.
-- Live relays: each pass refreshes its own entry; a stopped relay removes it.
local now = tonumber(ARGV[4])
redis.call('ZADD', KEYS[#KEYS], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[#KEYS], '-inf', now)
local live = redis.call('ZCARD', KEYS[#KEYS])
if live < 1 then live = 1 end
local cap = math.ceil(((#KEYS - 1) / 2) / live)
local held = 0
local out = {}
for i = 1, #KEYS - 1, 2 do
  local holder = redis.call('GET', KEYS[i])
  local mine = holder == ARGV[1]
  if mine and held >= cap then
    redis.call('SET', KEYS[i], '~handover', 'PX', 2000)
    mine = false
  elseif mine then
    redis.call('PEXPIRE', KEYS[i], ARGV[2])
  elseif not holder then
    mine = redis.call('SET', KEYS[i], ARGV[1], 'NX', 'PX', ARGV[2]) and true or false
  elseif holder == '~handover' and held < cap then
    redis.call('SET', KEYS[i], ARGV[1], 'PX', ARGV[2])
    mine = true
  end
  if mine then
    held = held + 1
    local entries = redis.call('XRANGE', KEYS[i + 1], '-', '+', 'COUNT', ARGV[3])
    for _, e in ipairs(entries) do
      local f = {}
      for j = 1, #e[2], 2 do f[e[2][j]] = e[2][j + 1] end
      table.insert(out, tostring((i - 1) / 2))
      table.insert(out, e[1])
      table.insert(out, f['k'] or 'msg')
      table.insert(out, f['m'] or '')
      table.insert(out, f['off'] or '0')
      table.insert(out, f['pod'] or '')
    end
  end
end
return out
"#;

/// Deletes this pod's leases and its live-relay entry (on a graceful stop).
const RELEASE: &str = r#"
-- KEYS: lease 0, lease 1, ..., relays   ARGV: pod
for i = 1, #KEYS - 1 do
  if redis.call('GET', KEYS[i]) == ARGV[1] then redis.call('DEL', KEYS[i]) end
end
redis.call('ZREM', KEYS[#KEYS], ARGV[1])
return 0
"#;

static TAKE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(TAKE));
static RELEASE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(RELEASE));

/// The relay's side of the outbox.
#[derive(Clone)]
pub struct RedisOutbox {
    conn: Conn,
    keys: Keys,
    pod: String,
}

impl std::fmt::Debug for RedisOutbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisOutbox")
            .field("keys", &self.keys)
            .field("pod", &self.pod)
            .finish()
    }
}

fn unavailable(e: redis::RedisError) -> BackendError {
    BackendError::Unavailable(e.to_string())
}

impl RedisOutbox {
    pub fn new(conn: Conn, keys: Keys, pod: &str) -> Self {
        Self {
            conn,
            keys,
            pod: pod.to_owned(),
        }
    }

    /// Holds (or takes) leases for `lease`, handing over the ones above
    /// `ceil(SHARDS / live relays)` (live: a pass within the last `lease`,
    /// not stopped) to relays under that share, and returns up to
    /// `per_shard` of the oldest entries of each shard held, in stream order
    /// per shard.
    pub async fn take(&self, lease: Duration, per_shard: usize) -> BackendResult<Vec<OutboxEntry>> {
        let mut inv = TAKE_SCRIPT.prepare_invoke();
        for shard in 0..SHARDS {
            inv.key(lease_key(&self.keys, shard))
                .key(stream_key(&self.keys, shard));
        }
        inv.key(relays_key(&self.keys));
        inv.arg(&self.pod)
            .arg(lease.as_millis() as u64)
            .arg(per_shard)
            .arg(crate::ids::now_millis());
        let mut conn = self.conn.clone();
        let flat: Vec<String> = inv.invoke_async(&mut conn).await.map_err(unavailable)?;
        let mut entries = Vec::with_capacity(flat.len() / 6);
        for chunk in flat.chunks_exact(6) {
            let [shard, id, kind, m, off, pod] = chunk else {
                continue;
            };
            let at_ms = || off.parse().unwrap_or(0);
            let what = match kind.as_str() {
                "join" => Recorded::Join {
                    user: m.clone(),
                    at_ms: at_ms(),
                },
                "leave" => Recorded::Leave {
                    user: m.clone(),
                    at_ms: at_ms(),
                },
                "ack" => match serde_json::from_str(m) {
                    Ok(msg) => Recorded::Ack { msg },
                    Err(e) => Recorded::Unreadable {
                        reason: format!("ack: {e}"),
                    },
                },
                "read" => match serde_json::from_str(m) {
                    Ok(read) => Recorded::Read {
                        user: off.clone(),
                        read,
                        at_ms: entry_ms(id),
                    },
                    Err(e) => Recorded::Unreadable {
                        reason: format!("read: {e}"),
                    },
                },
                "group" => match serde_json::from_str::<GroupEntry>(m) {
                    Ok(g) => Recorded::Group {
                        action: g.action,
                        group: g.group,
                        // Lua's cjson writes an empty list as `{}`.
                        users: match g.users {
                            serde_json::Value::Array(users) => users
                                .into_iter()
                                .filter_map(|u| u.as_str().map(str::to_owned))
                                .collect(),
                            _ => Vec::new(),
                        },
                        at_ms: entry_ms(id),
                    },
                    Err(e) => Recorded::Unreadable {
                        reason: format!("group: {e}"),
                    },
                },
                "recall" => match serde_json::from_str(m) {
                    Ok(msg) => Recorded::Recall {
                        msg,
                        by: Some(off.clone()).filter(|b| !b.is_empty()),
                        at_ms: entry_ms(id),
                    },
                    Err(e) => Recorded::Unreadable {
                        reason: format!("recall: {e}"),
                    },
                },
                "moderated" => match serde_json::from_str(m) {
                    Ok(entry) => Recorded::Moderated {
                        entry,
                        at_ms: entry_ms(id),
                    },
                    Err(e) => Recorded::Unreadable {
                        reason: format!("moderated: {e}"),
                    },
                },
                "msg" => match serde_json::from_str(m) {
                    Ok(msg) => Recorded::Message {
                        msg,
                        offline: off == "1",
                    },
                    Err(e) => Recorded::Unreadable {
                        reason: format!("message: {e}"),
                    },
                },
                other => Recorded::Unreadable {
                    reason: format!("unknown kind {other:?}"),
                },
            };
            entries.push(OutboxEntry {
                shard: shard.parse().unwrap_or(0),
                id: id.clone(),
                what,
                pod: pod.clone(),
            });
        }
        Ok(entries)
    }

    /// Removes relayed entries of `shard`.
    pub async fn remove(&self, shard: u32, ids: &[String]) -> BackendResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        redis::cmd("XDEL")
            .arg(stream_key(&self.keys, shard))
            .arg(ids)
            .query_async::<u64>(&mut conn)
            .await
            .map(drop)
            .map_err(unavailable)
    }

    /// Gives up this pod's leases, so another pod takes the shards at once.
    pub async fn release(&self) -> BackendResult<()> {
        let mut inv = RELEASE_SCRIPT.prepare_invoke();
        for shard in 0..SHARDS {
            inv.key(lease_key(&self.keys, shard));
        }
        inv.key(relays_key(&self.keys));
        inv.arg(&self.pod);
        let mut conn = self.conn.clone();
        inv.invoke_async::<i64>(&mut conn)
            .await
            .map(drop)
            .map_err(unavailable)
    }

    /// Entries waiting in all shards.
    pub async fn depth(&self) -> BackendResult<Depth> {
        let mut pipe = redis::pipe();
        for shard in 0..SHARDS {
            pipe.cmd("XLEN").arg(stream_key(&self.keys, shard));
        }
        let mut conn = self.conn.clone();
        let lens: Vec<u64> = pipe.query_async(&mut conn).await.map_err(unavailable)?;
        Ok(Depth {
            total: lens.iter().sum(),
            fullest: lens.iter().copied().max().unwrap_or(0),
        })
    }
}
