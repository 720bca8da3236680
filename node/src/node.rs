//! The chat logic of one node: what each client frame does, how a message is
//! stored and routed, connection lifecycle and draining.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::auth::Authenticator;
use crate::backend::{BackendError, Backends, ConnectionInfo, Envelope, HistoryQuery};
use crate::config::{Config, Secret};
use crate::history;
use crate::hub::{ConnHandle, Hub, OutFrame, Stamp};
use crate::ids::{ConversationId, PodIdentity, Snowflake, UserId, now_millis};
use crate::metrics::Metrics;
use crate::model::ChatMessage;
use crate::protocol::{
    ClientFrame, Dialect, ErrorCode, FrameError, Limits, ParseLimits, ServerFrame, TypingState,
};
use crate::recall::{Recall, Recaller};
use crate::receipts::Receipts;
use crate::router::Router;

/// Most users one connection may watch with `presence_subscribe`, so a
/// client cannot grow the watcher table without bound.
pub const MAX_WATCHED_USERS: usize = 1024;

/// Protocol version announced in `welcome`.
pub const PROTOCOL_VERSION: u32 = 1;

/// One chat node.
#[derive(Debug)]
pub struct Node {
    pub cfg: Config,
    pub pod: PodIdentity,
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    pub auth: Authenticator,
    backends: Backends,
    ids: Snowflake,
    draining: AtomicBool,
    /// Subscribed to this pod's bus topic: until then the pod is not ready.
    bus_ready: AtomicBool,
    conn_seq: AtomicU64,
    /// Connections admitted (counted before the upgrade completes, so the
    /// limit holds under a burst of upgrades).
    admitted: AtomicUsize,
    router: Arc<Router>,
    moderator: Option<Arc<crate::moderation::Moderator>>,
}

impl Node {
    pub fn new(cfg: Config, backends: Backends) -> Result<Arc<Self>, String> {
        cfg.validate()?;
        let pod = PodIdentity::new(&cfg.pod_name, cfg.pod_namespace.clone())?;
        let auth = Authenticator::new(
            cfg.jwt_secret.as_ref().map(Secret::expose),
            cfg.dev_auth_enabled(),
        );
        let hub = Arc::new(Hub::default());
        let metrics = Arc::new(Metrics::with_backends(backends.metrics.clone()));
        let router = Arc::new(Router::new(
            pod.name.clone(),
            hub.clone(),
            backends.registry.clone(),
            backends.bus.clone(),
            metrics.clone(),
        ));
        let moderator = crate::moderation::Moderator::from_settings(
            &cfg.moderation,
            cfg.max_content_bytes,
            backends.store.clone(),
            metrics.clone(),
        )?
        .map(Arc::new);
        Ok(Arc::new(Self {
            ids: Snowflake::new(pod.ordinal),
            moderator,
            pod,
            hub,
            metrics,
            router,
            auth,
            backends,
            draining: AtomicBool::new(false),
            bus_ready: AtomicBool::new(false),
            // Starts at the boot time in ms x 1000, so a pod restarted under the
            // same name never reuses a connection id of its previous life.
            conn_seq: AtomicU64::new(now_millis() as u64 * 1000),
            admitted: AtomicUsize::new(0),
            cfg,
        }))
    }

    /// A node on the backends its configuration names.
    pub async fn from_config(cfg: Config) -> Result<Arc<Self>, String> {
        cfg.validate()?;
        let backends = crate::backend::select::for_config(&cfg).await?;
        Self::new(cfg, backends)
    }

    /// A node on its own in-memory backends.
    pub fn standalone(cfg: Config) -> Result<Arc<Self>, String> {
        let backends = crate::backend::select::in_memory(&cfg);
        Self::new(cfg, backends)
    }

    pub fn backends(&self) -> &Backends {
        &self.backends
    }

    /// Receiving its cross-pod pushes.
    pub fn is_bus_ready(&self) -> bool {
        self.bus_ready.load(Ordering::Acquire)
    }

    /// Subscribes to this pod's bus topic, retrying every 2 s until it works
    /// (the operator may not have created the topic and group yet), then
    /// delivers what arrives.
    pub async fn run_bus_subscription(self: Arc<Self>) {
        loop {
            match self.backends.bus.subscribe(&self.pod.name).await {
                Ok(rx) => {
                    self.bus_ready.store(true, Ordering::Release);
                    info!("subscribed to the bus");
                    self.clone().run_bus(rx).await;
                    // The bus closed (unsubscribed on drain): no longer ready.
                    self.bus_ready.store(false, Ordering::Release);
                    return;
                }
                Err(e) => {
                    warn!(error = %e, "cannot subscribe to the bus yet; not ready");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn parse_limits(&self) -> ParseLimits {
        ParseLimits {
            max_content_bytes: self.cfg.max_content_bytes,
        }
    }

    /// Reserves a connection slot; false when the node is full.
    pub fn admit(&self) -> bool {
        self.admitted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.cfg.max_connections).then_some(n + 1)
            })
            .is_ok()
    }

    /// Connection slots in use (upgrades in progress and open connections).
    pub fn admitted(&self) -> usize {
        self.admitted.load(Ordering::Acquire)
    }

    /// Returns a slot taken by [`Node::admit`].
    pub fn release(&self) {
        self.admitted.fetch_sub(1, Ordering::AcqRel);
    }

    fn conn_info(&self, conn: &ConnHandle) -> ConnectionInfo {
        ConnectionInfo {
            conn_id: conn.id.clone(),
            user: conn.user.clone(),
            pod: self.pod.name.clone(),
        }
    }

    /// A new connection of `user` with its `welcome` queued, not yet
    /// reachable ([`Node::register`]): nothing of the node refers to it yet.
    ///
    /// The welcome is queued before the connection becomes visible to the hub
    /// and the registry, so it is always the first frame, ahead of any push.
    pub async fn open(&self, user: UserId, dialect: Dialect) -> Arc<ConnHandle> {
        let (groups, profiles) =
            crate::groups::for_welcome(self.backends.store.as_ref(), &self.metrics, &user).await;
        let n = self.conn_seq.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(ConnHandle::new(
            format!("{}#{n}", self.pod.name),
            user,
            dialect,
            self.cfg.outbound_buffer,
        ));
        conn.push(
            OutFrame::new(ServerFrame::Welcome {
                protocol: PROTOCOL_VERSION,
                user: conn.user.clone(),
                session: conn.id.clone(),
                node: self.pod.name.clone(),
                heartbeat_interval_ms: self.cfg.heartbeat_interval.as_millis() as u64,
                groups,
                profiles,
                limits: Limits {
                    max_content_bytes: self.cfg.max_content_bytes,
                    rate_per_sec: self.cfg.rate_limit,
                    rate_burst: self.cfg.rate_burst,
                    recall_window_ms: self.cfg.recall_window.as_millis() as u64,
                },
            }),
            Stamp::default(),
        );
        conn
    }

    /// Makes `conn` ([`Node::open`]) reachable: in the hub, counted, in the
    /// registry. From here on [`Node::close`] undoes it, even after a
    /// panic half-way.
    pub async fn register(&self, conn: &Arc<ConnHandle>) {
        self.hub.insert(conn.clone());
        self.metrics.connections.inc();
        match self.backends.registry.register(&self.conn_info(conn)).await {
            Ok(true) => self.router.publish_presence(&conn.user).await,
            Ok(false) => {}
            // The heartbeat re-registers live connections, so presence heals.
            Err(e) => self.backend_failed("register", &e),
        }
        debug!(conn = %conn.id, user = %conn.user, "connected");
    }

    /// Forgets a closed connection.
    pub async fn close(&self, conn: &ConnHandle, reason: &'static str) {
        self.hub.remove(conn);
        self.metrics.connections.dec();
        self.metrics
            .connections_closed
            .get_or_create(&crate::metrics::ReasonLabel { reason })
            .inc();
        match self
            .backends
            .registry
            .unregister(&self.conn_info(conn))
            .await
        {
            Ok(true) => self.router.publish_presence(&conn.user).await,
            Ok(false) => {}
            Err(e) => self.backend_failed("unregister", &e),
        }
        debug!(conn = %conn.id, user = %conn.user, reason, "disconnected");
    }

    /// The user's inbox, oldest first, for [`crate::history::replay`]. Read before
    /// the welcome is written: a message sent once the client has its welcome
    /// then comes by push only, not by push and by replay too. When it cannot
    /// be read, the connection gets an error frame and nothing is replayed.
    pub async fn missed(&self, conn: &ConnHandle) -> Vec<Arc<ChatMessage>> {
        match self
            .backends
            .store
            .inbox(&conn.user, self.cfg.inbox_limit)
            .await
        {
            Ok(msgs) => {
                self.metrics.inbox_replayed.observe(msgs.len() as f64);
                msgs
            }
            Err(e) => {
                self.backend_failed("inbox", &e);
                self.send_error(conn, FrameError::from(e));
                Vec::new()
            }
        }
    }

    /// Writes an error frame to the connection and counts it.
    pub fn send_error(&self, conn: &ConnHandle, e: FrameError) {
        self.metrics.error(e.code);
        conn.push(
            OutFrame::new(ServerFrame::error(e.code, e.reason, e.client_msg_id)),
            Stamp::default(),
        );
    }

    fn backend_failed(&self, op: &'static str, e: &BackendError) {
        self.metrics.backend_failed(op, e);
    }

    /// Recalls on this node's store and router.
    pub fn recalls(&self) -> Recall<'_> {
        Recall {
            store: self.backends.store.as_ref(),
            router: &self.router,
            window: self.cfg.recall_window,
        }
    }

    /// Sending messages on this node's backends, moderation and router.
    pub fn sending(&self) -> crate::sending::Sending<'_> {
        crate::sending::Sending {
            backends: &self.backends,
            metrics: &self.metrics,
            moderator: self.moderator.as_deref(),
            ids: &self.ids,
            router: &self.router,
        }
    }

    /// Group changes on this node's store, told through its router.
    pub fn groups(&self) -> crate::groups::Groups<'_> {
        crate::groups::Groups {
            store: self.backends.store.as_ref(),
            router: &self.router,
        }
    }

    /// Receipts on this node's store and router.
    pub fn receipts(&self) -> Receipts<'_> {
        Receipts {
            store: self.backends.store.as_ref(),
            router: &self.router,
        }
    }

    /// The moderation policy, when one is configured.
    pub fn moderator(&self) -> Option<&Arc<crate::moderation::Moderator>> {
        self.moderator.as_ref()
    }

    /// A new message id of this pod.
    pub fn next_msg_id(&self) -> crate::ids::MsgId {
        self.ids.next_id()
    }

    /// Routes frames to users across the cluster.
    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    /// Executes one client frame.
    pub async fn handle(
        &self,
        conn: &Arc<ConnHandle>,
        frame: ClientFrame,
    ) -> Result<(), FrameError> {
        match frame {
            ClientFrame::Send(s) => {
                let cid = s.client_msg_id.clone();
                crate::sending::from_client(self.sending(), conn, s)
                    .await
                    .map_err(|mut e| {
                        e.client_msg_id = e.client_msg_id.or(cid);
                        e
                    })
            }
            ClientFrame::Ack { msg_ids } => self.receipts().ack(&conn.user, &msg_ids).await,
            ClientFrame::Recall {
                conversation,
                msg_id,
            } => self
                .recalls()
                .recall(Recaller::User(&conn.user), &conversation, msg_id)
                .await
                .map(drop),
            ClientFrame::Read {
                conversation,
                seq,
                msg_id,
            } => {
                self.receipts()
                    .read(&conn.user, &conn.id, conversation, seq, msg_id)
                    .await
            }
            ClientFrame::Typing {
                conversation,
                state,
            } => self.on_typing(conn, conversation, state).await,
            ClientFrame::Ping => {
                conn.push(
                    OutFrame::new(ServerFrame::Pong { ts: now_millis() }),
                    Stamp::default(),
                );
                Ok(())
            }
            ClientFrame::History {
                conversation,
                before,
                after,
                limit,
            } => {
                let query = HistoryQuery {
                    before,
                    after,
                    limit,
                };
                let frame = history::page(self.store(), &conn.user, conversation, query).await?;
                conn.push(OutFrame::new(frame), Stamp::default());
                Ok(())
            }
            ClientFrame::Resume { conversations } => {
                history::resume(self.store(), conn, conversations, |e| {
                    self.send_error(conn, e)
                })
                .await;
                Ok(())
            }
            ClientFrame::PresenceSubscribe { users } => {
                if !self.hub.watch(conn, &users, MAX_WATCHED_USERS) {
                    return Err(FrameError::new(
                        ErrorCode::InvalidField,
                        format!("a connection may watch at most {MAX_WATCHED_USERS} users"),
                    ));
                }
                for u in users {
                    let p = self.backends.registry.presence(&u).await?;
                    conn.push(OutFrame::new(ServerFrame::Presence(p)), Stamp::default());
                }
                Ok(())
            }
        }
    }

    fn store(&self) -> &dyn crate::backend::MessageStore {
        self.backends.store.as_ref()
    }

    /// Everyone in a conversation, if `me` is one of them.
    async fn participants(
        &self,
        me: &UserId,
        conversation: &ConversationId,
    ) -> Result<Vec<UserId>, FrameError> {
        crate::conversation::participants(self.backends.store.as_ref(), me, conversation).await
    }

    async fn on_typing(
        &self,
        conn: &Arc<ConnHandle>,
        conversation: ConversationId,
        state: TypingState,
    ) -> Result<(), FrameError> {
        let mut others = self.participants(&conn.user, &conversation).await?;
        others.retain(|u| *u != conn.user);
        let frame = ServerFrame::Typing {
            conversation,
            user: conn.user.clone(),
            state,
        };
        self.router.route(&others, frame, None, None).await;
        Ok(())
    }

    /// Delivers envelopes from other pods until the bus closes.
    pub async fn run_bus(self: Arc<Self>, mut rx: mpsc::Receiver<Envelope>) {
        while let Some(env) = rx.recv().await {
            self.router.deliver(env);
        }
    }

    /// Refreshes this pod's registry entries every heartbeat interval.
    pub async fn run_heartbeat(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.cfg.heartbeat_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let conns: Vec<_> = self.hub.all().iter().map(|c| self.conn_info(c)).collect();
            if let Err(e) = self
                .backends
                .registry
                .heartbeat(&self.pod.name, &conns)
                .await
            {
                self.backend_failed("heartbeat", &e);
            }
        }
    }

    /// Graceful drain: turn not-ready, tell every client to reconnect (with a
    /// jittered delay), wait for them to leave up to the drain timeout, then
    /// close the rest with 1001.
    pub async fn drain(&self) {
        if self.draining.swap(true, Ordering::AcqRel) {
            return;
        }
        crate::drain::connections(&self.hub, self.cfg.drain_timeout, self.cfg.reconnect_jitter)
            .await;
        self.backends.bus.unsubscribe(&self.pod.name).await;
        info!("drained");
    }
}
