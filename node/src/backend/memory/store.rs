//! The message store in memory (see [`super`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::lock;
use crate::backend::{
    Acked, Appended, BackendError, BackendResult, Claim, CommandLog, HistoryPage, HistoryQuery,
    MessageStore,
};
use crate::ids::{ConversationId, GroupId, MsgId, UserId};
use crate::model::{ChatMessage, Group, GroupProfile};

/// Bounds of the message store.
#[derive(Debug, Clone, Copy)]
pub struct StoreLimits {
    pub history_limit: usize,
    pub inbox_limit: usize,
    pub dedup_ttl: Duration,
    /// Most `client_msg_id`s remembered (in memory; Redis expires by TTL only).
    pub dedup_limit: usize,
    pub max_group_members: usize,
}

/// Message store in memory.
#[derive(Debug)]
pub struct MemoryStore {
    limits: StoreLimits,
    inner: Mutex<StoreState>,
}

#[derive(Debug, Default)]
struct StoreState {
    conversations: HashMap<ConversationId, Conversation>,
    inboxes: HashMap<UserId, Inbox>,
    dedup: HashMap<(UserId, String), Arc<ChatMessage>>,
    /// Dedup keys in insertion order; the TTL is fixed, so this is also
    /// expiry order and expiring is a pop from the front.
    dedup_expiry: VecDeque<(Instant, (UserId, String))>,
    groups: HashMap<GroupId, BTreeSet<UserId>>,
    profiles: HashMap<GroupId, GroupProfile>,
    /// Command ids until when they are remembered: applied (`None`) or
    /// claimed by a token.
    commands: HashMap<String, (Instant, Option<String>)>,
    /// Answers to requests, until when they are kept.
    replies: HashMap<String, (Instant, String)>,
    user_groups: HashMap<UserId, BTreeSet<GroupId>>,
}

#[derive(Debug, Default)]
struct Conversation {
    last_seq: u64,
    /// Contiguous seqs, oldest first.
    messages: VecDeque<Arc<ChatMessage>>,
    /// Read watermarks.
    read: BTreeMap<UserId, u64>,
}

#[derive(Debug, Default)]
struct Inbox {
    next: u64,
    entries: BTreeMap<u64, Arc<ChatMessage>>,
    index: HashMap<MsgId, u64>,
}

impl MemoryStore {
    pub fn new(limits: StoreLimits) -> Self {
        Self {
            limits,
            inner: Mutex::new(StoreState::default()),
        }
    }
}

impl StoreState {
    /// Forgets dedup keys past their TTL, and the oldest beyond `limit`.
    fn expire_dedup(&mut self, now: Instant, limit: usize) {
        while let Some((at, _)) = self.dedup_expiry.front() {
            if *at > now && self.dedup_expiry.len() <= limit {
                break;
            }
            if let Some((_, key)) = self.dedup_expiry.pop_front() {
                self.dedup.remove(&key);
            }
        }
    }

    fn group_of(&self, id: &GroupId) -> BackendResult<Group> {
        let members = self
            .groups
            .get(id)
            .ok_or_else(|| BackendError::NoSuchGroup(id.clone()))?;
        let profile = self.profiles.get(id).cloned().unwrap_or_default();
        Ok(Group {
            id: id.clone(),
            members: members.iter().cloned().collect(),
            owner: profile.owner,
            title: profile.title,
        })
    }
}

#[async_trait]
impl MessageStore for MemoryStore {
    async fn append(&self, mut msg: ChatMessage, recipients: &[UserId]) -> BackendResult<Appended> {
        let mut st = lock(&self.inner);
        let now = Instant::now();
        st.expire_dedup(now, self.limits.dedup_limit);
        let dedup_key = msg
            .client_msg_id
            .as_ref()
            .map(|c| (msg.from.clone(), c.clone()));
        if let Some(key) = &dedup_key
            && let Some(first) = st.dedup.get(key)
        {
            return Ok(Appended {
                msg: first.clone(),
                duplicate: true,
                inbox_skipped: Vec::new(),
                pods: None,
            });
        }
        // A direct message to a full inbox is refused (nothing is stored, the
        // sender gets `inbox_full`); losing it silently is not an option.
        let full = |st: &StoreState, u: &UserId| {
            st.inboxes
                .get(u)
                .is_some_and(|i| i.entries.len() >= self.limits.inbox_limit)
        };
        if msg.group.is_none()
            && let Some(u) = recipients.iter().find(|u| full(&st, u))
        {
            return Err(BackendError::InboxFull(u.clone()));
        }
        let conv = st
            .conversations
            .entry(msg.conversation.clone())
            .or_default();
        conv.last_seq += 1;
        msg.seq = conv.last_seq;
        let msg = Arc::new(msg);
        conv.messages.push_back(msg.clone());
        while conv.messages.len() > self.limits.history_limit {
            conv.messages.pop_front();
        }
        let mut inbox_skipped = Vec::new();
        for u in recipients {
            if full(&st, u) {
                inbox_skipped.push(u.clone());
                continue;
            }
            let inbox = st.inboxes.entry(u.clone()).or_default();
            let pos = inbox.next;
            inbox.next += 1;
            inbox.entries.insert(pos, msg.clone());
            inbox.index.insert(msg.msg_id, pos);
        }
        if let Some(key) = dedup_key {
            // Room for this key within the limit.
            st.expire_dedup(now, self.limits.dedup_limit.saturating_sub(1));
            st.dedup.insert(key.clone(), msg.clone());
            st.dedup_expiry
                .push_back((now + self.limits.dedup_ttl, key));
        }
        Ok(Appended {
            msg,
            duplicate: false,
            inbox_skipped,
            pods: None,
        })
    }

    async fn history(
        &self,
        conversation: &ConversationId,
        q: HistoryQuery,
    ) -> BackendResult<HistoryPage> {
        let st = lock(&self.inner);
        let Some(conv) = st.conversations.get(conversation) else {
            return Ok(HistoryPage::default());
        };
        // Retained seqs are contiguous: first..=last_seq.
        let len = conv.messages.len() as u64;
        let first = conv.last_seq + 1 - len;
        // [lo, hi) as indexes into `messages`.
        let (lo, hi, has_more) = if let Some(after) = q.after {
            let lo = after.saturating_add(1).max(first) - first;
            let lo = lo.min(len);
            let hi = (lo + q.limit as u64).min(len);
            (lo, hi, hi < len)
        } else {
            let end = q.before.map_or(len, |b| b.saturating_sub(first).min(len));
            let lo = end.saturating_sub(q.limit as u64);
            (lo, end, lo > 0)
        };
        let messages: Vec<Arc<ChatMessage>> = conv
            .messages
            .range(lo as usize..hi as usize)
            .cloned()
            .collect();
        let undelivered = messages
            .iter()
            .filter(|m| {
                m.to.as_ref()
                    .and_then(|to| st.inboxes.get(to))
                    .is_some_and(|inbox| inbox.index.contains_key(&m.msg_id))
            })
            .map(|m| m.msg_id)
            .collect();
        Ok(HistoryPage {
            messages,
            has_more,
            read: conv.read.clone(),
            undelivered,
        })
    }

    async fn mark_read(
        &self,
        conversation: &ConversationId,
        user: &UserId,
        seq: u64,
        _msg_id: Option<MsgId>,
    ) -> BackendResult<Option<u64>> {
        let mut st = lock(&self.inner);
        let Some(conv) = st.conversations.get_mut(conversation) else {
            return Ok(None);
        };
        let seq = seq.min(conv.last_seq);
        let mark = conv.read.entry(user.clone()).or_default();
        if seq > *mark {
            *mark = seq;
            Ok(Some(seq))
        } else {
            Ok(None)
        }
    }

    async fn find(
        &self,
        conversation: &ConversationId,
        msg_id: MsgId,
    ) -> BackendResult<Option<Arc<ChatMessage>>> {
        let st = lock(&self.inner);
        Ok(st.conversations.get(conversation).and_then(|c| {
            // Ids increase with seq only per node; search from the newest,
            // where read receipts almost always point.
            c.messages
                .iter()
                .rev()
                .find(|m| m.msg_id == msg_id)
                .cloned()
        }))
    }

    async fn inbox(&self, user: &UserId, limit: usize) -> BackendResult<Vec<Arc<ChatMessage>>> {
        let st = lock(&self.inner);
        Ok(st
            .inboxes
            .get(user)
            .map(|i| i.entries.values().take(limit).cloned().collect())
            .unwrap_or_default())
    }

    async fn ack(&self, user: &UserId, msg_ids: &[MsgId]) -> BackendResult<Vec<Acked>> {
        let mut st = lock(&self.inner);
        let Some(inbox) = st.inboxes.get_mut(user) else {
            return Ok(Vec::new());
        };
        let removed = msg_ids
            .iter()
            .filter_map(|id| inbox.index.remove(id))
            .filter_map(|pos| inbox.entries.remove(&pos))
            .map(|msg| Acked {
                msg,
                sender_pods: None,
            })
            .collect();
        if inbox.entries.is_empty() {
            st.inboxes.remove(user);
        }
        Ok(removed)
    }

    async fn recall(
        &self,
        original: &ChatMessage,
        tombstone: &ChatMessage,
        _recipients: &[UserId],
        _by: Option<&UserId>,
    ) -> BackendResult<bool> {
        let mut st = lock(&self.inner);
        let Some(conv) = st.conversations.get_mut(&original.conversation) else {
            return Ok(false);
        };
        let first = conv.last_seq + 1 - conv.messages.len() as u64;
        let Some(slot) = original
            .seq
            .checked_sub(first)
            .and_then(|i| conv.messages.get_mut(i as usize))
        else {
            return Ok(false);
        };
        if slot.msg_id != original.msg_id || slot.recalled {
            return Ok(false);
        }
        let tombstone = Arc::new(tombstone.clone());
        *slot = tombstone.clone();
        // Every inbox, not only the current participants': a member who left
        // the group since still holds a copy with the content (recalls are
        // rare, and a standalone node's inboxes with entries are few).
        st.inboxes.retain(|_, inbox| {
            if let Some(pos) = inbox.index.remove(&original.msg_id) {
                inbox.entries.remove(&pos);
            }
            !inbox.entries.is_empty()
        });
        if let Some(cid) = &original.client_msg_id
            && let Some(first) = st.dedup.get_mut(&(original.from.clone(), cid.clone()))
        {
            *first = tombstone;
        }
        Ok(true)
    }

    async fn create_group(&self, id: &GroupId, members: &[UserId]) -> BackendResult<Group> {
        let mut st = lock(&self.inner);
        if st.groups.contains_key(id) {
            return Err(BackendError::GroupExists(id.clone()));
        }
        let set: BTreeSet<UserId> = members.iter().cloned().collect();
        if set.len() > self.limits.max_group_members {
            return Err(BackendError::GroupFull(
                id.clone(),
                self.limits.max_group_members,
            ));
        }
        for u in &set {
            st.user_groups
                .entry(u.clone())
                .or_default()
                .insert(id.clone());
        }
        st.groups.insert(id.clone(), set);
        st.group_of(id)
    }

    async fn delete_group(&self, id: &GroupId) -> BackendResult<bool> {
        let mut st = lock(&self.inner);
        let Some(members) = st.groups.remove(id) else {
            return Ok(false);
        };
        st.profiles.remove(id);
        for u in members {
            if let Some(g) = st.user_groups.get_mut(&u) {
                g.remove(id);
                if g.is_empty() {
                    st.user_groups.remove(&u);
                }
            }
        }
        Ok(true)
    }

    async fn add_members(&self, id: &GroupId, users: &[UserId]) -> BackendResult<Group> {
        let mut st = lock(&self.inner);
        let max = self.limits.max_group_members;
        let members = st
            .groups
            .get_mut(id)
            .ok_or_else(|| BackendError::NoSuchGroup(id.clone()))?;
        let new = users.iter().filter(|u| !members.contains(*u)).count();
        if members.len() + new > max {
            return Err(BackendError::GroupFull(id.clone(), max));
        }
        members.extend(users.iter().cloned());
        for u in users {
            st.user_groups
                .entry(u.clone())
                .or_default()
                .insert(id.clone());
        }
        st.group_of(id)
    }

    async fn remove_member(&self, id: &GroupId, user: &UserId) -> BackendResult<Group> {
        let mut st = lock(&self.inner);
        let members = st
            .groups
            .get_mut(id)
            .ok_or_else(|| BackendError::NoSuchGroup(id.clone()))?;
        members.remove(user);
        if let Some(g) = st.user_groups.get_mut(user) {
            g.remove(id);
            if g.is_empty() {
                st.user_groups.remove(user);
            }
        }
        st.group_of(id)
    }

    async fn set_group_profile(
        &self,
        id: &GroupId,
        profile: &GroupProfile,
    ) -> BackendResult<Group> {
        let mut st = lock(&self.inner);
        if !st.groups.contains_key(id) {
            return Err(BackendError::NoSuchGroup(id.clone()));
        }
        st.profiles.insert(id.clone(), profile.clone());
        st.group_of(id)
    }

    async fn group(&self, id: &GroupId) -> BackendResult<Option<Group>> {
        let st = lock(&self.inner);
        Ok(st.group_of(id).ok())
    }

    async fn groups_of(&self, user: &UserId) -> BackendResult<Vec<GroupId>> {
        let st = lock(&self.inner);
        Ok(st
            .user_groups
            .get(user)
            .map(|g| g.iter().cloned().collect())
            .unwrap_or_default())
    }

    async fn group_profiles(&self, ids: &[GroupId]) -> BackendResult<Vec<(GroupId, GroupProfile)>> {
        let st = lock(&self.inner);
        let mut found: Vec<(GroupId, GroupProfile)> = ids
            .iter()
            .filter_map(|id| Some((id.clone(), st.profiles.get(id)?.clone())))
            .filter(|(_, p)| *p != GroupProfile::default())
            .collect();
        found.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(found)
    }
}

#[async_trait]
impl CommandLog for MemoryStore {
    async fn claim(&self, id: &str, token: &str, ttl: Duration) -> BackendResult<Claim> {
        let mut st = lock(&self.inner);
        let now = Instant::now();
        st.commands.retain(|_, (until, _)| *until > now);
        Ok(match st.commands.get(id) {
            Some((_, None)) => Claim::Applied,
            Some((_, Some(_))) => Claim::Busy,
            None => {
                st.commands
                    .insert(id.to_owned(), (now + ttl, Some(token.to_owned())));
                Claim::Claimed
            }
        })
    }

    async fn release(&self, id: &str, token: &str) -> BackendResult<()> {
        let mut st = lock(&self.inner);
        if st
            .commands
            .get(id)
            .is_some_and(|(_, held)| held.as_deref() == Some(token))
        {
            st.commands.remove(id);
        }
        Ok(())
    }

    async fn mark_applied(&self, id: &str, ttl: Duration) -> BackendResult<()> {
        let mut st = lock(&self.inner);
        st.commands
            .insert(id.to_owned(), (Instant::now() + ttl, None));
        Ok(())
    }

    async fn reply(&self, id: &str) -> BackendResult<Option<String>> {
        let st = lock(&self.inner);
        let now = Instant::now();
        Ok(st
            .replies
            .get(id)
            .filter(|(until, _)| *until > now)
            .map(|(_, answer)| answer.clone()))
    }

    async fn keep_reply(&self, id: &str, answer: &str, ttl: Duration) -> BackendResult<()> {
        let mut st = lock(&self.inner);
        let now = Instant::now();
        st.replies.retain(|_, (until, _)| *until > now);
        st.replies
            .insert(id.to_owned(), (now + ttl, answer.to_owned()));
        Ok(())
    }
}
