//! The connections of this node: who is connected here, and the handle to
//! write to each of them.

use std::collections::{HashMap, HashSet};
use std::ops::Deref;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Instant;

use axum::extract::ws::Utf8Bytes;
use tokio_util::sync::CancellationToken;

use crate::ids::UserId;
use crate::protocol::{CloseCode, Dialect, ServerFrame};
use crate::sendq::{Refused, SendQueue};
use crate::telemetry::TraceCtx;

/// A frame on its way to connections, shared by all of them: its text is
/// rendered at most once per dialect, by the first writer that needs it,
/// however many connections (a group's members on this pod, a user's
/// devices) it goes to.
#[derive(Debug)]
pub struct OutFrame {
    frame: ServerFrame,
    v1: OnceLock<Utf8Bytes>,
    seed: OnceLock<Utf8Bytes>,
}

impl OutFrame {
    pub fn new(frame: ServerFrame) -> Arc<Self> {
        Arc::new(Self {
            frame,
            v1: OnceLock::new(),
            seed: OnceLock::new(),
        })
    }

    /// The frame as `dialect` writes it (a shared buffer: cloning it does not
    /// copy the text).
    pub fn text(&self, dialect: Dialect) -> Utf8Bytes {
        let slot = match dialect {
            Dialect::V1 => &self.v1,
            Dialect::Seed => &self.seed,
        };
        slot.get_or_init(|| self.frame.render(dialect).into())
            .clone()
    }
}

impl Deref for OutFrame {
    type Target = ServerFrame;

    fn deref(&self) -> &ServerFrame {
        &self.frame
    }
}

/// One item for a connection's writer.
#[derive(Debug)]
pub struct Outbound {
    pub frame: Arc<OutFrame>,
    pub stamp: Stamp,
}

/// What a pushed message brings besides its frame.
#[derive(Debug, Clone, Default)]
pub struct Stamp {
    /// When the message was accepted, for the delivery latency histogram.
    pub accepted_at: Option<Instant>,
    /// Its trace, when traced: the writer adds a `ws.write` span.
    pub trace: Option<TraceCtx>,
    /// It came from another pod (the delivery latency's `path`).
    pub cross_pod: bool,
}

/// A live connection: a bounded queue to its writer, and a way to close it.
#[derive(Debug)]
pub struct ConnHandle {
    /// Cluster-unique: `<pod>#<n>`.
    pub id: String,
    pub user: UserId,
    pub dialect: Dialect,
    queue: SendQueue<Outbound>,
    close: CancellationToken,
    close_code: Mutex<Option<CloseCode>>,
}

/// What happened to a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    Queued,
    /// The queue was full: the connection is being closed as too slow.
    Overflow,
    /// The connection is already gone.
    Closed,
}

impl ConnHandle {
    /// A connection whose queue holds at most `queue` frames.
    pub fn new(id: String, user: UserId, dialect: Dialect, queue: usize) -> Self {
        Self {
            id,
            user,
            dialect,
            queue: SendQueue::new(queue),
            close: CancellationToken::new(),
            close_code: Mutex::new(None),
        }
    }

    /// Queues a frame without waiting. A full queue means the client reads
    /// slower than we write: it is closed with 4001 rather than letting the
    /// queue (and our memory) grow.
    pub fn push(&self, frame: Arc<OutFrame>, stamp: Stamp) -> Push {
        match self.queue.push(Outbound { frame, stamp }) {
            Ok(()) => Push::Queued,
            Err(Refused::Full) => {
                self.close_with(CloseCode::SlowConsumer);
                Push::Overflow
            }
            Err(Refused::Closed) => Push::Closed,
        }
    }

    /// The writer's end of the queue: the next frame, waiting for one.
    pub async fn next_out(&self) -> Outbound {
        self.queue.pop().await
    }

    /// The next frame if one is queued.
    pub fn try_next_out(&self) -> Option<Outbound> {
        self.queue.try_pop()
    }

    /// The writer is gone: frames still queued are dropped, later pushes
    /// answer [`Push::Closed`].
    pub fn writer_gone(&self) {
        self.queue.close();
    }

    /// Queues a frame, waiting while the queue is more than half full, so
    /// bulk sends (inbox replay) leave room for live traffic.
    pub async fn push_bulk(&self, frame: Arc<OutFrame>) -> Push {
        let half = self.queue.capacity() / 2;
        while self.queue.len() > half {
            if self.close.is_cancelled() || self.queue.is_closed() {
                return Push::Closed;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        self.push(frame, Stamp::default())
    }

    /// Asks the connection to close with `code` (the first code wins).
    pub fn close_with(&self, code: CloseCode) {
        let mut c = self.close_code.lock().unwrap_or_else(|e| e.into_inner());
        c.get_or_insert(code);
        self.close.cancel();
    }

    pub fn closed(&self) -> &CancellationToken {
        &self.close
    }

    pub fn close_code(&self) -> Option<CloseCode> {
        *self.close_code.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Debug, Default)]
struct HubState {
    by_user: HashMap<UserId, Vec<Arc<ConnHandle>>>,
    count: usize,
    /// watched user -> connections subscribed to its presence
    watchers: HashMap<UserId, HashSet<String>>,
    /// connection -> users it watches (for cleanup)
    watching: HashMap<String, Vec<UserId>>,
    by_id: HashMap<String, Arc<ConnHandle>>,
}

/// The local connection table. A read-write lock: delivery (reads) vastly
/// outnumbers connects and disconnects (writes), and no lock is held across
/// an await.
#[derive(Debug, Default)]
pub struct Hub {
    inner: RwLock<HubState>,
}

impl Hub {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HubState> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HubState> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn len(&self) -> usize {
        self.read().count
    }

    /// Users with at least one connection here.
    pub fn users(&self) -> usize {
        self.read().by_user.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn insert(&self, conn: Arc<ConnHandle>) {
        let mut st = self.write();
        st.by_user
            .entry(conn.user.clone())
            .or_default()
            .push(conn.clone());
        st.by_id.insert(conn.id.clone(), conn);
        st.count += 1;
    }

    /// Removes a connection and its presence subscriptions.
    pub fn remove(&self, conn: &ConnHandle) {
        let mut guard = self.write();
        let st = &mut *guard;
        if let Some(list) = st.by_user.get_mut(&conn.user) {
            let before = list.len();
            list.retain(|c| c.id != conn.id);
            if list.len() < before {
                st.count -= 1;
            }
            if list.is_empty() {
                st.by_user.remove(&conn.user);
            }
        }
        st.by_id.remove(&conn.id);
        if let Some(users) = st.watching.remove(&conn.id) {
            for u in users {
                if let Some(w) = st.watchers.get_mut(&u) {
                    w.remove(&conn.id);
                    if w.is_empty() {
                        st.watchers.remove(&u);
                    }
                }
            }
        }
    }

    /// Writes `frame` to every local connection of `user` except `except`.
    /// Returns how many connections it was queued for.
    pub fn deliver(
        &self,
        user: &UserId,
        frame: &Arc<OutFrame>,
        except: Option<&str>,
        stamp: &Stamp,
    ) -> usize {
        let st = self.read();
        let Some(conns) = st.by_user.get(user) else {
            return 0;
        };
        conns
            .iter()
            .filter(|c| Some(c.id.as_str()) != except)
            .filter(|c| c.push(frame.clone(), stamp.clone()) == Push::Queued)
            .count()
    }

    /// Subscribes a connection to the presence of `users` (subscriptions
    /// accumulate until the connection closes). Refuses, changing nothing, if
    /// the connection would watch more than `max` users.
    pub fn watch(&self, conn: &ConnHandle, users: &[UserId], max: usize) -> bool {
        let mut st = self.write();
        let current = st.watching.get(&conn.id).map_or(0, Vec::len);
        if current + users.len() > max {
            return false;
        }
        let mut added = Vec::new();
        for u in users {
            if st
                .watchers
                .entry(u.clone())
                .or_default()
                .insert(conn.id.clone())
            {
                added.push(u.clone());
            }
        }
        st.watching
            .entry(conn.id.clone())
            .or_default()
            .extend(added);
        true
    }

    /// Writes a presence frame to the connections watching `user`.
    pub fn deliver_presence(&self, user: &UserId, frame: &Arc<OutFrame>) {
        let st = self.read();
        let Some(ids) = st.watchers.get(user) else {
            return;
        };
        for id in ids {
            if let Some(c) = st.by_id.get(id) {
                c.push(frame.clone(), Stamp::default());
            }
        }
    }

    /// A snapshot of every connection (for draining and heartbeats).
    pub fn all(&self) -> Vec<Arc<ConnHandle>> {
        self.read().by_id.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(id: &str, user: &str, cap: usize) -> Arc<ConnHandle> {
        Arc::new(ConnHandle::new(
            id.into(),
            UserId::parse(user).unwrap(),
            Dialect::V1,
            cap,
        ))
    }

    #[test]
    fn delivers_to_all_devices_but_the_sender() {
        let hub = Hub::default();
        let a1 = conn("p#1", "a", 8);
        let a2 = conn("p#2", "a", 8);
        hub.insert(a1.clone());
        hub.insert(a2.clone());
        let f = OutFrame::new(ServerFrame::Pong { ts: 1 });
        assert_eq!(hub.deliver(&a1.user, &f, Some("p#1"), &Stamp::default()), 1);
        assert!(a1.try_next_out().is_none());
        assert!(a2.try_next_out().is_some());
        hub.remove(&a2);
        assert_eq!(hub.len(), 1);
        assert_eq!(hub.deliver(&a1.user, &f, None, &Stamp::default()), 1);
    }

    #[test]
    fn a_frame_is_rendered_once_per_dialect() {
        let hub = Hub::default();
        let conns = [
            conn("p#1", "a", 8),
            conn("p#2", "b", 8),
            conn("p#3", "c", 8),
        ];
        for c in &conns {
            hub.insert(c.clone());
        }
        let (a, b) = (&conns[0].user, &conns[1].user);
        let m = crate::backend::contract::dm(7, a, b, None);
        let f = OutFrame::new(ServerFrame::Message(Arc::new(m)));
        for c in &conns {
            assert_eq!(hub.deliver(&c.user, &f, None, &Stamp::default()), 1);
        }
        let texts: Vec<Utf8Bytes> = conns
            .iter()
            .map(|c| c.try_next_out().unwrap().frame.text(c.dialect))
            .collect();
        // The same buffer for every connection, not three renderings of it.
        assert!(
            texts
                .iter()
                .all(|t| t.as_str().as_ptr() == texts[0].as_str().as_ptr())
        );
        assert_eq!(texts[0].as_str(), f.render(Dialect::V1));
        // The seed's clients get their own shape, also rendered once.
        let seed = f.text(Dialect::Seed);
        assert_ne!(seed.as_str(), texts[0].as_str());
        assert_eq!(seed.as_str(), f.render(Dialect::Seed));
        assert_eq!(
            f.text(Dialect::Seed).as_str().as_ptr(),
            seed.as_str().as_ptr()
        );
    }

    #[test]
    fn a_full_queue_closes_the_connection() {
        let hub = Hub::default();
        let a = conn("p#1", "a", 2);
        hub.insert(a.clone());
        let f = OutFrame::new(ServerFrame::Pong { ts: 1 });
        assert_eq!(a.push(f.clone(), Stamp::default()), Push::Queued);
        assert_eq!(a.push(f.clone(), Stamp::default()), Push::Queued);
        assert_eq!(a.push(f, Stamp::default()), Push::Overflow);
        assert!(a.closed().is_cancelled());
        assert_eq!(a.close_code(), Some(CloseCode::SlowConsumer));
    }

    #[test]
    fn presence_watchers_are_cleaned_up() {
        let hub = Hub::default();
        let a = conn("p#1", "a", 8);
        hub.insert(a.clone());
        let bob = UserId::parse("bob").unwrap();
        assert!(hub.watch(&a, std::slice::from_ref(&bob), 1));
        assert!(!hub.watch(&a, &[UserId::parse("cy").unwrap()], 1));
        let f = OutFrame::new(ServerFrame::Pong { ts: 1 });
        hub.deliver_presence(&bob, &f);
        assert!(a.try_next_out().is_some());
        hub.remove(&a);
        assert!(hub.read().watchers.is_empty());
    }
}
