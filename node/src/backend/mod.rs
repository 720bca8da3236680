//! The three backends a node stands on, as traits with their promises.
//!
//! A standalone node uses the in-memory implementations in [`memory`]; a
//! cluster uses Redis (registry, store) and RocketMQ (bus). Every method is
//! async and fallible even where the in-memory version cannot fail, because
//! the networked ones can.

#[doc(hidden)]
pub mod contract;
pub mod memory;
pub mod outbox;
pub mod redis;
mod redis_lua;
pub mod rocketmq;
pub mod select;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::ids::{ConversationId, GroupId, MsgId, UserId};
use crate::model::{ChatMessage, Group, GroupProfile, OnlineStats, Presence};
use crate::protocol::{ErrorCode, FrameError, ServerFrame};

/// Why a backend call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// The backend could not be reached or answered with an error. The
    /// operation may or may not have happened; callers retry idempotently.
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    #[error("the inbox of {0} is full")]
    InboxFull(UserId),
    #[error("group {0} does not exist")]
    NoSuchGroup(GroupId),
    #[error("group {0} already exists")]
    GroupExists(GroupId),
    #[error("group {0} would exceed {1} members")]
    GroupFull(GroupId, usize),
}

pub type BackendResult<T> = Result<T, BackendError>;

/// What a client is told when a backend call fails.
impl From<BackendError> for FrameError {
    fn from(e: BackendError) -> Self {
        let code = match &e {
            BackendError::Unavailable(_) => ErrorCode::Unavailable,
            BackendError::InboxFull(_) => ErrorCode::InboxFull,
            // Unknown group and non-member look the same from outside, so a
            // client cannot probe which groups exist.
            BackendError::NoSuchGroup(_) => ErrorCode::NotAMember,
            BackendError::GroupExists(_) => ErrorCode::Conflict,
            BackendError::GroupFull(..) => ErrorCode::InvalidField,
        };
        let reason = match &e {
            // Never leak backend internals to clients.
            BackendError::Unavailable(_) => {
                "storage is unavailable; retry with the same client_msg_id".into()
            }
            BackendError::NoSuchGroup(_) => "not a member of this group".into(),
            other => other.to_string(),
        };
        FrameError::new(code, reason)
    }
}

/// A live connection as the registry knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// Cluster-unique: `<pod>#<n>`.
    pub conn_id: String,
    pub user: UserId,
    pub pod: String,
}

/// Presence and routing: which users are connected, on which pods.
///
/// Promises:
/// - `register`/`unregister` are reflected in `connections` and `presence`
///   of every node as soon as they return (Redis: one round trip).
/// - Entries are soft state. A pod that dies without unregistering leaves
///   entries that expire after the presence TTL unless its heartbeat refreshes
///   them; surviving nodes may also remove a dead pod's entries at once.
///   Until then a message may be routed to a dead pod: realtime push is best
///   effort, and the store's inbox is what guarantees delivery.
/// - `last_seen` is kept after a user goes offline (in memory: until the
///   node stops).
#[async_trait]
pub trait Registry: Send + Sync + Debug {
    /// Records a connection. Returns true if the user was offline before
    /// (its first device came online).
    async fn register(&self, conn: &ConnectionInfo) -> BackendResult<bool>;
    /// Removes a connection. Returns true if it was the user's last one.
    async fn unregister(&self, conn: &ConnectionInfo) -> BackendResult<bool>;
    /// The user's live connections as `(conn_id, pod)`.
    async fn connections(&self, user: &UserId) -> BackendResult<Vec<(String, String)>>;
    /// The pods holding connections of each of `users`, in `users`' order (a pod
    /// once per connection): what routing a push needs, in one round trip where
    /// the backend allows.
    async fn pods_of(&self, users: &[UserId]) -> BackendResult<Vec<Vec<String>>>;
    async fn presence(&self, user: &UserId) -> BackendResult<Presence>;
    async fn stats(&self) -> BackendResult<OnlineStats>;
    /// Up to `limit` online users, in id order.
    async fn online_users(&self, limit: usize) -> BackendResult<Vec<UserId>>;
    /// Refreshes this pod's liveness and its connections' TTLs. Called every
    /// heartbeat interval; re-creates entries lost by the backend (a Redis
    /// restart), so presence rebuilds itself from the live connections.
    async fn heartbeat(&self, pod: &str, conns: &[ConnectionInfo]) -> BackendResult<()>;
    /// Removes every entry of `pod`: a dead pod found by a survivor, or this
    /// pod's own leftovers from before a restart under the same name.
    /// Returns the users that went offline.
    async fn forget_pod(&self, pod: &str) -> BackendResult<Vec<UserId>>;
    /// Pods with a live heartbeat.
    async fn pods(&self) -> BackendResult<Vec<String>>;
    /// Answers when the backend is reachable (readiness). In memory: always.
    async fn ping(&self) -> BackendResult<()> {
        Ok(())
    }
}

/// The outcome of [`MessageStore::append`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The stored message, with its `seq`.
    pub msg: Arc<ChatMessage>,
    /// The sender's `client_msg_id` had been accepted before: `msg` is that
    /// earlier message and nothing new was stored.
    pub duplicate: bool,
    /// Recipients whose inbox was full: a group message is still stored in
    /// history (they catch up with `resume`), but not in their inbox.
    pub inbox_skipped: Vec<UserId>,
    /// Where to push it: the pods holding connections of each recipient,
    /// then of the sender (as [`Registry::pods_of`] answers), read right
    /// after the write in the same round trip. `None`: the store cannot tell
    /// (it does not share the registry's keyspace); ask the registry.
    pub pods: Option<Vec<Vec<String>>>,
}

/// A message [`MessageStore::ack`] took out of an inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acked {
    pub msg: Arc<ChatMessage>,
    /// The pods holding the sender's connections, read with the ack (where
    /// its `delivered` goes). `None`: ask the registry.
    pub sender_pods: Option<Vec<String>>,
}

/// One page of a conversation's history.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HistoryPage {
    /// Ascending by `seq`, as stored (no `status`).
    pub messages: Vec<Arc<ChatMessage>>,
    /// More messages exist beyond the page in the direction asked.
    pub has_more: bool,
    /// The read watermark of every participant who has read something.
    pub read: BTreeMap<UserId, u64>,
    /// 1:1 messages of the page still in their recipient's inbox (not acked).
    pub undelivered: BTreeSet<MsgId>,
}

/// Which part of a history to read: at most `limit` messages with
/// `seq < before`, or `seq > after`, or the newest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryQuery {
    pub before: Option<u64>,
    pub after: Option<u64>,
    pub limit: usize,
}

/// Messages, inboxes, sequences, idempotency keys and groups.
///
/// Promises:
/// - `append` is atomic: the dedup check, the sequence number, the history
///   entry and the inbox entries happen together or not at all. Once it
///   returns Ok the message is durable as far as the backend is (memory:
///   until the process exits; Redis: per its persistence settings).
/// - Sequences are per conversation, start at 1 and have no gaps.
/// - History keeps the newest `history_limit` messages per conversation.
/// - An inbox entry stays until the recipient acks it (any of its devices),
///   and inboxes are read in the order entries were added.
/// - A `(sender, client_msg_id)` pair is remembered for the dedup TTL; a
///   repeat within it returns the first message with `duplicate: true`.
#[async_trait]
pub trait MessageStore: Send + Sync + Debug {
    /// Stores `msg` (its `seq` is assigned here) into its conversation's
    /// history and the inbox of each of `recipients`.
    async fn append(&self, msg: ChatMessage, recipients: &[UserId]) -> BackendResult<Appended>;
    async fn history(
        &self,
        conversation: &ConversationId,
        query: HistoryQuery,
    ) -> BackendResult<HistoryPage>;
    /// A message of the conversation's retained history, by id.
    async fn find(
        &self,
        conversation: &ConversationId,
        msg_id: MsgId,
    ) -> BackendResult<Option<Arc<ChatMessage>>>;
    /// The oldest `limit` entries of the user's inbox.
    async fn inbox(&self, user: &UserId, limit: usize) -> BackendResult<Vec<Arc<ChatMessage>>>;
    /// Removes the ids from the user's inbox and returns the messages that
    /// were there (ids already acked or unknown are skipped).
    async fn ack(&self, user: &UserId, msg_ids: &[MsgId]) -> BackendResult<Vec<Acked>>;
    /// Raises `user`'s read watermark in `conversation` to `seq`, clamped to
    /// the conversation's last seq; with the event outbox on, records a
    /// `message_read` (with `msg_id` when the reader named one) when it rose,
    /// in the same step. Returns the new watermark, or `None` when it did not
    /// rise.
    async fn mark_read(
        &self,
        conversation: &ConversationId,
        user: &UserId,
        seq: u64,
        msg_id: Option<MsgId>,
    ) -> BackendResult<Option<u64>>;
    /// Replaces `original` (as [`MessageStore::find`] returned it) in its
    /// conversation's history by `tombstone` (same id and seq, no content),
    /// takes it out of the inboxes of `recipients`, points its sender's
    /// dedup key at the tombstone (a resend of the same `client_msg_id`
    /// brings back no content) and, with the event outbox on, records the
    /// recall there; all in one step. `by` is who recalled it (`None`: an
    /// admin). Returns false, changing nothing, when the history no longer
    /// holds `original` unrecalled (recalled meanwhile, or trimmed).
    async fn recall(
        &self,
        original: &ChatMessage,
        tombstone: &ChatMessage,
        recipients: &[UserId],
        by: Option<&UserId>,
    ) -> BackendResult<bool>;

    async fn create_group(&self, id: &GroupId, members: &[UserId]) -> BackendResult<Group>;
    /// Returns false if there was no such group.
    async fn delete_group(&self, id: &GroupId) -> BackendResult<bool>;
    async fn add_members(&self, id: &GroupId, users: &[UserId]) -> BackendResult<Group>;
    async fn remove_member(&self, id: &GroupId, user: &UserId) -> BackendResult<Group>;
    /// Replaces the group's owner and title.
    async fn set_group_profile(&self, id: &GroupId, profile: &GroupProfile)
    -> BackendResult<Group>;
    async fn group(&self, id: &GroupId) -> BackendResult<Option<Group>>;
    /// Groups the user is a member of, in id order.
    async fn groups_of(&self, user: &UserId) -> BackendResult<Vec<GroupId>>;
    /// The owner and title of those of `ids` that have either, in id order
    /// (groups without a profile, and missing groups, are left out).
    async fn group_profiles(&self, ids: &[GroupId]) -> BackendResult<Vec<(GroupId, GroupProfile)>>;
    /// Records a moderation decision for the business stream; false when it
    /// was dropped (the event outbox is full). Without an event outbox (the
    /// in-memory store, or no stream switched on) there is nothing to do.
    async fn record_moderation(&self, _entry: &outbox::ModerationEntry) -> BackendResult<bool> {
        Ok(true)
    }
}

/// What backends asked for: the ids of the commands that were applied, so
/// a command RocketMQ delivers again changes nothing twice
/// ([`crate::commands`]), and the answers to requests, so a request
/// delivered again gets the same answer ([`crate::requests`]).
#[async_trait]
pub trait CommandLog: Send + Sync + Debug {
    /// Takes `id` for applying it, as `token` (unique per attempt), for at
    /// most `ttl` (a node that dies while applying holds it no longer):
    /// at most one attempt holds a command at a time, across the nodes.
    async fn claim(&self, id: &str, token: &str, ttl: std::time::Duration) -> BackendResult<Claim>;
    /// Gives up the claim `token` holds (the attempt failed).
    async fn release(&self, id: &str, token: &str) -> BackendResult<()>;
    /// Remembers `id` as applied for `ttl` (the claim ends).
    async fn mark_applied(&self, id: &str, ttl: std::time::Duration) -> BackendResult<()>;
    /// The answer kept for request `id`, if any.
    async fn reply(&self, id: &str) -> BackendResult<Option<String>>;
    /// Keeps `answer` for request `id` for `ttl`.
    async fn keep_reply(
        &self,
        id: &str,
        answer: &str,
        ttl: std::time::Duration,
    ) -> BackendResult<()>;
}

/// What [`CommandLog::claim`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Now held by the caller.
    Claimed,
    /// Applied before (within its time to live).
    Applied,
    /// Held by another attempt.
    Busy,
}

/// What travels between nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Envelope {
    /// Write `frame` to every local connection of `users`, except the
    /// connection `except` (the sender's own).
    ToUsers {
        users: Vec<UserId>,
        except: Option<String>,
        frame: ServerFrame,
        /// When the sending node accepted the message, µs since the Unix
        /// epoch, for the delivery latency histogram.
        sent_at_us: i64,
        /// The W3C `traceparent` of a traced message ([`crate::telemetry`]);
        /// absent otherwise (and from nodes before tracing, which ignore it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        trace: Option<String>,
    },
    /// A user's presence changed: tell local subscribers.
    Presence(Presence),
}

/// The cross-node bus: carries envelopes to the pods that hold a user's
/// connections.
///
/// Promises: a best-effort realtime push. `publish` may only queue the
/// envelope (the RocketMQ bus retries a failed send until the push would be
/// stale), so a push can arrive late or, after a retried send or a consumer
/// redelivery, twice: clients dedup by `msg_id`. A lost envelope (pod died,
/// outbox full) loses only the *push*; the message is already in the
/// recipient's inbox and is replayed on reconnect.
///
/// Order: the envelopes about one conversation that one pod publishes to
/// another are written there in the order they were published (RocketMQ: one
/// lane and queue per conversation, consumed in order). So a recipient sees a
/// sender's messages, and the receipts and typing of a conversation, in the
/// order the sender's pod routed them, as on one node. Envelopes of one
/// conversation published by two different pods are not ordered between
/// them (each pod's own are); `seq` is the conversation's order.
#[async_trait]
pub trait Bus: Send + Sync + Debug {
    /// Sends to one pod.
    async fn publish(&self, pod: &str, envelope: Envelope) -> BackendResult<()>;
    /// Sends to every pod of `pods` (the live ones, from the registry) except
    /// `from_pod`. The in-memory bus sends to every subscribed pod instead.
    async fn broadcast(
        &self,
        from_pod: &str,
        pods: &[String],
        envelope: Envelope,
    ) -> BackendResult<()>;
    /// Starts receiving the envelopes addressed to `pod`.
    async fn subscribe(&self, pod: &str) -> BackendResult<mpsc::Receiver<Envelope>>;
    /// Stops receiving (on shutdown).
    async fn unsubscribe(&self, pod: &str);
    /// Whether pushes are piling up faster than they leave (the broker is away
    /// or slower than the offered load). The node then refuses new sends with
    /// `unavailable`, so senders back off instead of pushes being dropped.
    fn is_saturated(&self) -> bool {
        false
    }
}

/// What publishes the store's outbox to the business event streams (the
/// events module's RocketMQ relay): run beside the node, asked to stop when
/// it drains.
pub trait OutboxRelay: Send + Sync + Debug {
    /// Relays until [`OutboxRelay::stop`], then returns.
    fn run(
        self: Arc<Self>,
        metrics: crate::metrics::EventMetrics,
    ) -> futures_util::future::BoxFuture<'static, ()>;
    /// Asks [`OutboxRelay::run`] to finish its pass and return.
    fn stop(&self);
}

/// The backends of one node.
#[derive(Debug, Clone)]
pub struct Backends {
    pub registry: Arc<dyn Registry>,
    pub store: Arc<dyn MessageStore>,
    pub bus: Arc<dyn Bus>,
    /// Which commands from backends were applied.
    pub command_log: Arc<dyn CommandLog>,
    /// The relay of the business event streams (Redis and RocketMQ with
    /// `SB_EVENTS` or `SB_CLUSTER_EVENTS` on), run by [`crate::run`].
    pub relay: Option<Arc<dyn OutboxRelay>>,
    /// The metrics of their calls (Redis, RocketMQ).
    pub metrics: crate::metrics::BackendMetrics,
}
