//! The cross-node bus on RocketMQ: one delivery topic and one consumer group
//! per pod (`PREFIX-node-<ordinal>`), created by the operator (or the test
//! harness) before the pod starts.
//!
//! An envelope for pod `sb-2` is sent to topic `PREFIX-node-2` with the
//! message id as key; pod 2 reads every queue of that topic in group
//! `PREFIX-node-2`, in order, and hands the envelopes to the node. Both ends
//! speak RocketMQ directly on the node's runtime
//! ([`switchboard_rocketmq::direct`]): no thread hand-off per message. A message
//! that does not parse is logged and dropped, and so is an envelope of a batch
//! that does not (a newer node's kind during a rolling update): retrying would
//! repeat the rest of its batch. When the node stops taking pushes (it is
//! stopping), the queue stops there and the group's offset stays before that
//! message: the pod's next run reads it again. Pushes older than
//! [`STALE_AFTER`] are dropped: the recipient has the message in its inbox, and
//! a push that old (a pod that was down) is noise.
//!
//! Sends go through lanes ([`lanes`]): `publish` only queues, so a slow or
//! restarting broker never holds up the sender's `sent` answer; pushes of one
//! conversation go, batched, to one queue of the destination's topic in the
//! order they were routed, and a failed send is retried, holding its lane,
//! until it would be stale. During a broker restart the pushes are late, not
//! lost. Only a full outbox refuses a push (the message stays in the inbox).
//!
//! The consumer hands over the messages of each queue in queue order, so a pod
//! writes the pushes of one conversation from one pod in the order they were
//! routed there. When the node cannot take a push at once, the consumer waits
//! (backpressure) instead of failing it.

mod lanes;
mod wire;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use switchboard_rocketmq::direct::{
    OrderedConsumer, OrderedConsumerConfig, OrderedProducer, StartAt, Unreadable,
};
use switchboard_rocketmq::names::Names;
use switchboard_rocketmq::{Admin, Credentials, Runtime};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::{BackendError, BackendResult, Bus, Envelope};
use crate::ids::PodIdentity;
use crate::metrics::BackendMetrics;
use crate::telemetry::{self, TraceCtx};
use lanes::Lanes;

/// Pushes older than this are dropped instead of delivered.
pub const STALE_AFTER: Duration = Duration::from_secs(60);

/// Depth of the queue between the consumer and the node.
const INBOUND_QUEUE: usize = 8192;
/// How long a graceful stop waits for the outbox to empty: the budget the
/// operator counts into the pod's grace period.
const FLUSH_TIMEOUT: Duration = switchboard_settings::FLUSH_BUDGET;
/// Messages one pull brings at most (each a batch of pushes).
const PULL_BATCH: u32 = 32;

/// The `bus.consume` span of a traced envelope; the envelope then carries
/// that span's context.
fn consume_span(env: &mut Envelope, topic: &str, msg_id: &str) -> Option<tracing::Span> {
    let Envelope::ToUsers { trace, .. } = env else {
        return None;
    };
    let parent = trace.as_deref().and_then(TraceCtx::parse)?;
    let span = telemetry::consume_span(&parent, topic, msg_id);
    *trace = TraceCtx::of(&span).map(|c| c.header());
    Some(span)
}

/// How often the consumer lag is read from the broker.
const LAG_EVERY: Duration = Duration::from_secs(10);

/// Keeps `lag` at the messages (each a batch of pushes) of `topic` that
/// `group` has not consumed (the broker's offsets), until `stop`. A failed
/// read leaves the last value and is logged once per run of failures.
async fn watch_lag(
    admin: Admin,
    group: String,
    topic: String,
    lag: prometheus_client::metrics::gauge::Gauge,
    stop: CancellationToken,
) {
    let mut failing = false;
    loop {
        match admin.consumer_lag(&group, &topic).await {
            Ok(n) => {
                lag.set(i64::try_from(n).unwrap_or(i64::MAX));
                failing = false;
            }
            // Once per run of failures: the gauge keeps its last value.
            Err(e) if !failing => {
                warn!(error = %e, %group, "cannot read the bus consumer lag from the broker");
                failing = true;
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(LAG_EVERY) => {}
        }
    }
    admin.shutdown().await;
}

fn unavailable(e: impl std::fmt::Display) -> BackendError {
    BackendError::Unavailable(e.to_string())
}

/// Bus on RocketMQ.
pub struct RocketMqBus {
    rt: Runtime,
    namesrv: String,
    names: Names,
    credentials: Option<Credentials>,
    lanes: Lanes,
    consumer: Mutex<Option<OrderedConsumer>>,
    metrics: BackendMetrics,
    /// Stops the consumer lag's refresh of the current subscription.
    lag_stop: Mutex<Option<CancellationToken>>,
}

impl std::fmt::Debug for RocketMqBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocketMqBus")
            .field("namesrv", &self.namesrv)
            .field("prefix", &self.names)
            .finish_non_exhaustive()
    }
}

impl RocketMqBus {
    /// Starts the producer (it connects on first use). Topics and groups are
    /// not created here: they belong to the operator.
    /// `credentials` sign every request (a broker with ACL).
    pub async fn start(
        namesrv: &str,
        prefix: &str,
        credentials: Option<Credentials>,
        metrics: BackendMetrics,
    ) -> BackendResult<Self> {
        let rt = Runtime::new().map_err(unavailable)?;
        let names = Names::new(prefix);
        let group = format!("{prefix}-producer");
        let producer = OrderedProducer::new(namesrv, &group, credentials.clone());
        Ok(Self {
            rt,
            namesrv: namesrv.to_owned(),
            names,
            credentials,
            lanes: Lanes::new(producer, metrics.clone()),
            consumer: Mutex::new(None),
            metrics,
            lag_stop: Mutex::new(None),
        })
    }

    /// Waits (up to [`FLUSH_TIMEOUT`]) until every queued push was sent or given up.
    async fn flush(&self) {
        let deadline = Instant::now() + FLUSH_TIMEOUT;
        while self.lanes.queued() > 0 {
            if Instant::now() > deadline {
                warn!(
                    queued = self.lanes.queued(),
                    "stopping with pushes unsent; their messages are in the inboxes"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn topic_of(&self, pod: &str) -> BackendResult<String> {
        let id = PodIdentity::new(pod, None).map_err(BackendError::Unavailable)?;
        Ok(self.names.node_topic(u32::from(id.ordinal)))
    }

    fn send(&self, pod: &str, envelope: &Envelope) -> BackendResult<()> {
        self.lanes.push(&self.topic_of(pod)?, envelope)
    }
}

#[async_trait]
impl Bus for RocketMqBus {
    async fn publish(&self, pod: &str, envelope: Envelope) -> BackendResult<()> {
        self.send(pod, &envelope)
    }

    async fn broadcast(
        &self,
        from_pod: &str,
        pods: &[String],
        envelope: Envelope,
    ) -> BackendResult<()> {
        for pod in pods.iter().filter(|p| p.as_str() != from_pod) {
            self.send(pod, &envelope)?;
        }
        Ok(())
    }

    async fn subscribe(&self, pod: &str) -> BackendResult<mpsc::Receiver<Envelope>> {
        let id = PodIdentity::new(pod, None).map_err(BackendError::Unavailable)?;
        let ordinal = u32::from(id.ordinal);
        let (topic, group) = (
            self.names.node_topic(ordinal),
            self.names.node_group(ordinal),
        );
        // A consumer of a group that was never created starts fine and then
        // receives nothing: refuse to start instead, so the pod stays not-ready.
        let admin = Admin::connect_as(&self.rt, &self.namesrv, self.credentials.as_ref())
            .await
            .map_err(unavailable)?;
        let exists = async {
            Ok::<_, switchboard_rocketmq::Error>((
                admin.topic_exists(&topic).await?,
                admin.group_exists(&group).await?,
            ))
        }
        .await;
        match exists {
            Ok((true, true)) => {}
            Ok((t, g)) => {
                admin.shutdown().await;
                return Err(BackendError::Unavailable(format!(
                    "RocketMQ topic {topic} (exists: {t}) and group {group} (exists: {g}) must be created first"
                )));
            }
            Err(e) => {
                admin.shutdown().await;
                return Err(unavailable(e));
            }
        }
        let (tx, rx) = mpsc::channel(INBOUND_QUEUE);
        let config = OrderedConsumerConfig {
            namesrv: self.namesrv.clone(),
            topic: topic.clone(),
            group: group.clone(),
            batch: PULL_BATCH,
            credentials: self.credentials.clone(),
            new_group_starts_at: StartAt::End,
            unreadable: Unreadable::Skip,
        };
        // Each queue's messages, in order; a full node queue makes the consumer
        // wait (backpressure).
        let consumer = OrderedConsumer::start(config, move |d| {
            let tx = tx.clone();
            async move {
                // What does not parse is logged and dropped: redelivering it would
                // repeat the good messages of its batch.
                let envelopes = match wire::decode(&d.body) {
                    Ok(decoded) => {
                        if decoded.unreadable > 0 {
                            warn!(
                                msg_id = %d.msg_id,
                                unreadable = decoded.unreadable,
                                "dropping bus envelopes this node cannot read (a newer node's kind, or malformed)"
                            );
                        }
                        decoded.envelopes
                    }
                    Err(e) => {
                        warn!(msg_id = %d.msg_id, error = %e, "dropping a malformed bus message");
                        return Ok(());
                    }
                };
                let stale_before = crate::router::now_micros() - STALE_AFTER.as_micros() as i64;
                for mut env in envelopes {
                    if let Envelope::ToUsers { sent_at_us, .. } = &env
                        && *sent_at_us < stale_before
                    {
                        continue;
                    }
                    // A traced push: `bus.consume` until the node has it, then its
                    // writes are children of that span.
                    let _span = consume_span(&mut env, &d.topic, &d.msg_id);
                    tx.send(env)
                        .await
                        .map_err(|_| "the node stopped taking pushes".to_owned())?;
                }
                Ok::<(), String>(())
            }
        })
        .await;
        let consumer = match consumer {
            Ok(c) => c,
            Err(e) => {
                admin.shutdown().await;
                return Err(unavailable(e));
            }
        };
        // The lag of this subscription, read until it ends.
        let stop = CancellationToken::new();
        tokio::spawn(watch_lag(
            admin,
            group,
            topic,
            self.metrics.bus_consumer_lag.clone(),
            stop.clone(),
        ));
        let replaced = self
            .lag_stop
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(stop);
        if let Some(old) = replaced {
            old.cancel();
        }
        *self.consumer.lock().unwrap_or_else(|e| e.into_inner()) = Some(consumer);
        Ok(rx)
    }

    fn is_saturated(&self) -> bool {
        // Over 3/4 full: the last quarter absorbs what is already in progress.
        self.lanes.queued() > lanes::CAPACITY / 4 * 3
    }

    async fn unsubscribe(&self, _pod: &str) {
        let lag = self
            .lag_stop
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(stop) = lag {
            stop.cancel();
        }
        self.flush().await;
        let consumer = self
            .consumer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(c) = consumer {
            c.shutdown().await;
        }
    }
}
