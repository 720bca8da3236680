//! Where frames go: to the connections of a set of users, on this pod
//! directly and on other pods through the bus (one envelope per pod), with
//! pushes whose routing lookup failed retried in the background.
//!
//! The chat logic ([`crate::node`], [`crate::recall`]) hands frames to
//! [`Router::route`]; envelopes from other pods arrive in
//! [`Router::deliver`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::warn;

use crate::backend::{BackendError, Bus, Envelope, Registry};
use crate::hub::{Hub, OutFrame, Stamp};
use crate::ids::UserId;
use crate::metrics::{DirectionLabel, Metrics};
use crate::protocol::ServerFrame;
use crate::telemetry::TraceCtx;

/// Pushes waiting for the registry to come back.
const REPUSH_QUEUE: usize = 4096;
/// How long a push is retried; after that the recipient gets it from the
/// inbox on its next connect.
const REPUSH_FOR: Duration = Duration::from_secs(30);

/// A push to other pods that could not be routed yet.
#[derive(Debug)]
struct Repush {
    users: Vec<UserId>,
    frame: Arc<OutFrame>,
    except: Option<String>,
    sent_at_us: i64,
    trace: Option<String>,
    since: Instant,
}

/// Routes frames to users' connections across the cluster.
#[derive(Debug)]
pub struct Router {
    pod: String,
    hub: Arc<Hub>,
    registry: Arc<dyn Registry>,
    bus: Arc<dyn Bus>,
    metrics: Arc<Metrics>,
    /// Pushes whose routing lookup failed (registry down), retried by
    /// [`Router::run_repush`] so a recipient who stays connected still gets
    /// them.
    repush_tx: mpsc::Sender<Repush>,
    repush_rx: std::sync::Mutex<Option<mpsc::Receiver<Repush>>>,
}

impl Router {
    pub fn new(
        pod: String,
        hub: Arc<Hub>,
        registry: Arc<dyn Registry>,
        bus: Arc<dyn Bus>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let (repush_tx, repush_rx) = mpsc::channel(REPUSH_QUEUE);
        Self {
            pod,
            hub,
            registry,
            bus,
            metrics,
            repush_tx,
            repush_rx: std::sync::Mutex::new(Some(repush_rx)),
        }
    }

    /// Writes `frame` to every connection of `users` except the connection
    /// `except`. `accepted_at` (a message's acceptance) feeds the delivery
    /// latency histogram.
    pub async fn route(
        &self,
        users: &[UserId],
        frame: ServerFrame,
        except: Option<&str>,
        accepted_at: Option<Instant>,
    ) {
        self.route_via(users, None, frame, except, accepted_at)
            .await;
    }

    /// [`Router::route`] with the pods of `users` already known (one entry
    /// per user, as [`Registry::pods_of`] answers: the store read them with
    /// its write); `None` asks the registry.
    pub async fn route_via(
        &self,
        users: &[UserId],
        pods: Option<Vec<Vec<String>>>,
        frame: ServerFrame,
        except: Option<&str>,
        accepted_at: Option<Instant>,
    ) {
        let frame = OutFrame::new(frame);
        // A traced message (the caller's span is sampled) is traced on every pod.
        let stamp = Stamp {
            accepted_at,
            trace: accepted_at.and_then(|_| TraceCtx::current()),
            cross_pod: false,
        };
        for u in users {
            self.hub.deliver(u, &frame, except, &stamp);
        }
        let sent_at_us = now_micros() - accepted_at.map_or(0, |t| t.elapsed().as_micros() as i64);
        let trace = stamp.trace.as_ref().map(TraceCtx::header);
        let unrouted = self
            .push_remote(users, pods, &frame, except, sent_at_us, trace.as_deref())
            .await;
        if !unrouted.is_empty() {
            let repush = Repush {
                users: unrouted,
                frame,
                except: except.map(str::to_owned),
                sent_at_us,
                trace,
                since: Instant::now(),
            };
            if self.repush_tx.try_send(repush).is_err() {
                warn!("repush queue full: a push is left to the recipients' inboxes");
            }
        }
    }

    /// Sends `frame` to the other pods holding connections of `users` (`pods`,
    /// else one registry look-up for all of them); returns the users whose
    /// connections could not be looked up (all of them, or none).
    async fn push_remote(
        &self,
        users: &[UserId],
        pods: Option<Vec<Vec<String>>>,
        frame: &Arc<OutFrame>,
        except: Option<&str>,
        sent_at_us: i64,
        trace: Option<&str>,
    ) -> Vec<UserId> {
        if users.is_empty() {
            return Vec::new();
        }
        let mut remote: HashMap<String, Vec<UserId>> = HashMap::new();
        let pods = match pods.filter(|p| p.len() == users.len()) {
            Some(pods) => Ok(pods),
            None => self.registry.pods_of(users).await,
        };
        let pods = match pods {
            Ok(pods) => pods,
            Err(e) => {
                self.backend_failed("connections", &e);
                return users.to_vec();
            }
        };
        for (u, pods) in users.iter().zip(pods) {
            for pod in pods {
                if pod != self.pod {
                    let list = remote.entry(pod).or_default();
                    if list.last() != Some(u) {
                        list.push(u.clone());
                    }
                }
            }
        }
        for (pod, users) in remote {
            let env = Envelope::ToUsers {
                users,
                except: except.map(str::to_owned),
                frame: ServerFrame::clone(frame),
                sent_at_us,
                trace: trace.map(str::to_owned),
            };
            self.metrics
                .bus_envelopes
                .get_or_create(&DirectionLabel { direction: "out" })
                .inc();
            if let Err(e) = self.bus.publish(&pod, env).await {
                // The message is in the inbox; only the push is lost.
                self.backend_failed("publish", &e);
            }
        }
        Vec::new()
    }

    /// Retries the pushes whose routing lookup failed, in order, until the
    /// registry answers or [`REPUSH_FOR`] has passed.
    pub async fn run_repush(self: Arc<Self>) {
        let rx = self
            .repush_rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let Some(mut rx) = rx else { return };
        while let Some(mut r) = rx.recv().await {
            let mut pause = Duration::from_millis(100);
            loop {
                tokio::time::sleep(pause).await;
                r.users = self
                    .push_remote(
                        &r.users,
                        None,
                        &r.frame,
                        r.except.as_deref(),
                        r.sent_at_us,
                        r.trace.as_deref(),
                    )
                    .await;
                if r.users.is_empty() {
                    self.metrics.repushed.inc();
                    break;
                }
                if r.since.elapsed() > REPUSH_FOR {
                    warn!(
                        users = r.users.len(),
                        "push given up; the recipients get it from their inbox"
                    );
                    break;
                }
                pause = (pause * 2).min(Duration::from_secs(2));
            }
        }
    }

    /// Tells watchers, here and on other pods, that `user`'s presence changed.
    pub async fn publish_presence(&self, user: &UserId) {
        let p = match self.registry.presence(user).await {
            Ok(p) => p,
            Err(e) => return self.backend_failed("presence", &e),
        };
        self.hub
            .deliver_presence(user, &OutFrame::new(ServerFrame::Presence(p.clone())));
        let pods = match self.registry.pods().await {
            Ok(p) => p,
            Err(e) => return self.backend_failed("pods", &e),
        };
        if let Err(e) = self
            .bus
            .broadcast(&self.pod, &pods, Envelope::Presence(p))
            .await
        {
            self.backend_failed("broadcast", &e);
        }
    }

    /// Delivers one envelope from another pod to the local connections.
    pub fn deliver(&self, env: Envelope) {
        self.metrics
            .bus_envelopes
            .get_or_create(&DirectionLabel { direction: "in" })
            .inc();
        match env {
            Envelope::ToUsers {
                users,
                except,
                frame,
                sent_at_us,
                trace,
            } => {
                let age = Duration::from_micros((now_micros() - sent_at_us).max(0) as u64);
                let accepted_at = Instant::now().checked_sub(age);
                let frame = OutFrame::new(frame);
                let accepted_at = matches!(**frame, ServerFrame::Message(_))
                    .then_some(accepted_at)
                    .flatten();
                let stamp = Stamp {
                    accepted_at,
                    trace: trace.as_deref().and_then(TraceCtx::parse),
                    cross_pod: true,
                };
                for u in &users {
                    self.hub.deliver(u, &frame, except.as_deref(), &stamp);
                }
            }
            Envelope::Presence(p) => {
                let user = p.user.clone();
                self.hub
                    .deliver_presence(&user, &OutFrame::new(ServerFrame::Presence(p)));
            }
        }
    }

    fn backend_failed(&self, op: &'static str, e: &BackendError) {
        self.metrics.backend_failed(op, e);
    }
}

/// Microseconds since the Unix epoch.
pub(crate) fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}
