//! The cross-node bus on RocketMQ: one delivery topic and one consumer group
//! per pod (`PREFIX-node-<ordinal>`), created by the operator (or the test
//! harness) before the pod starts.
//!
//! An envelope for pod `sb-2` is sent to topic `PREFIX-node-2` with the
//! message id as key; pod 2's push consumer of group `PREFIX-node-2` hands it
//! to the node. A delivery the node cannot take (malformed, or its queue
//! full) is retried by RocketMQ through the group's `%RETRY%` topic, at most
//! `retry_max` times, then parked in `%DLQ%PREFIX-node-2`. Pushes older than
//! [`STALE_AFTER`] are dropped: the recipient has the message in its inbox,
//! and a push that old (a pod that was down) is noise.
//!
//! Sends go through an outbox: `publish` only queues, so a slow or restarting
//! broker never holds up the sender's `sent` answer, and a send that fails is
//! retried with backoff until it would be stale. During a broker restart the
//! pushes are late, not lost. Only a full outbox refuses a push (the message
//! stays in the inbox).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use switchboard_rocketmq::names::Names;
use switchboard_rocketmq::{Admin, Consumer, ConsumerConfig, Producer, Runtime};
use tokio::sync::{Semaphore, mpsc};
use tracing::warn;

use super::{BackendError, BackendResult, Bus, Envelope};
use crate::ids::PodIdentity;
use crate::protocol::ServerFrame;

/// Pushes older than this are dropped instead of delivered.
pub const STALE_AFTER: Duration = Duration::from_secs(60);

/// Depth of the queue between the consumer and the node.
const INBOUND_QUEUE: usize = 8192;
/// Pushes waiting to be sent. At ~1 KB each, a bounded few MB while the broker is away.
const OUTBOX: usize = 8192;
/// Sends in flight at once: enough to hide the broker's round trip at tens of
/// thousands of messages a second, few enough not to trip the client's admission limit.
const IN_FLIGHT: usize = 128;
/// First and largest pause between two tries of one failed send.
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// How long a graceful stop waits for the outbox to empty: the budget the
/// operator counts into the pod's grace period.
const FLUSH_TIMEOUT: Duration = switchboard_settings::FLUSH_BUDGET;

/// One queued send.
struct Outgoing {
    topic: String,
    key: String,
    body: Vec<u8>,
    queued: Instant,
}

fn unavailable(e: impl std::fmt::Display) -> BackendError {
    BackendError::Unavailable(e.to_string())
}

/// Bus on RocketMQ.
pub struct RocketMqBus {
    rt: Runtime,
    namesrv: String,
    names: Names,
    retry_max: u32,
    outbox: mpsc::Sender<Outgoing>,
    in_flight: Arc<Semaphore>,
    consumer: Mutex<Option<Consumer>>,
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
    /// Starts the producer. Topics and groups are not created here: they
    /// belong to the operator.
    pub async fn start(namesrv: &str, prefix: &str, retry_max: u32) -> BackendResult<Self> {
        let rt = Runtime::new().map_err(unavailable)?;
        let names = Names::new(prefix);
        let producer = Producer::start(&rt, namesrv, &format!("{prefix}-producer"))
            .await
            .map_err(unavailable)?;
        let (outbox, rx) = mpsc::channel(OUTBOX);
        let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
        tokio::spawn(run_outbox(Arc::new(producer), rx, Arc::clone(&in_flight)));
        Ok(Self {
            rt,
            namesrv: namesrv.to_owned(),
            names,
            retry_max,
            outbox,
            in_flight,
            consumer: Mutex::new(None),
        })
    }

    /// Waits (up to [`FLUSH_TIMEOUT`]) until every queued push was sent or given up.
    async fn flush(&self) {
        let deadline = Instant::now() + FLUSH_TIMEOUT;
        while self.outbox.capacity() < OUTBOX || self.in_flight.available_permits() < IN_FLIGHT {
            if Instant::now() > deadline {
                warn!(
                    queued = OUTBOX - self.outbox.capacity(),
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

    async fn send(&self, pod: &str, envelope: &Envelope) -> BackendResult<()> {
        let topic = self.topic_of(pod)?;
        let key = match envelope {
            Envelope::ToUsers {
                frame: ServerFrame::Message(m),
                ..
            } => m.msg_id.to_string(),
            _ => String::new(),
        };
        let body = serde_json::to_vec(envelope).map_err(unavailable)?;
        self.outbox
            .try_send(Outgoing {
                topic,
                key,
                body,
                queued: Instant::now(),
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => {
                    BackendError::Unavailable("the bus outbox is full (broker away?)".into())
                }
                mpsc::error::TrySendError::Closed(_) => {
                    BackendError::Unavailable("the bus is stopped".into())
                }
            })
    }
}

/// Sends queued pushes, [`IN_FLIGHT`] at a time; each is retried with backoff
/// until it would be stale on arrival.
async fn run_outbox(
    producer: Arc<Producer>,
    mut rx: mpsc::Receiver<Outgoing>,
    in_flight: Arc<Semaphore>,
) {
    while let Some(out) = rx.recv().await {
        let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else {
            return;
        };
        let producer = Arc::clone(&producer);
        tokio::spawn(async move {
            let mut pause = RETRY_FIRST;
            let mut tries = 1u32;
            loop {
                match producer.send(&out.topic, &out.key, out.body.clone()).await {
                    Ok(()) => break,
                    Err(e) if out.queued.elapsed() + pause < STALE_AFTER => {
                        if tries == 1 {
                            warn!(topic = %out.topic, error = %e, "push failed; retrying");
                        }
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(RETRY_MAX);
                        tries += 1;
                    }
                    Err(e) => {
                        warn!(
                            topic = %out.topic, key = %out.key, tries, error = %e,
                            "push given up; the message stays in the recipient's inbox"
                        );
                        break;
                    }
                }
            }
            drop(permit);
        });
    }
}

#[async_trait]
impl Bus for RocketMqBus {
    async fn publish(&self, pod: &str, envelope: Envelope) -> BackendResult<()> {
        self.send(pod, &envelope).await
    }

    async fn broadcast(
        &self,
        from_pod: &str,
        pods: &[String],
        envelope: Envelope,
    ) -> BackendResult<()> {
        for pod in pods.iter().filter(|p| p.as_str() != from_pod) {
            self.send(pod, &envelope).await?;
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
        let admin = Admin::connect(&self.rt, &self.namesrv)
            .await
            .map_err(unavailable)?;
        let exists = async {
            Ok::<_, switchboard_rocketmq::Error>((
                admin.topic_exists(&topic).await?,
                admin.group_exists(&group).await?,
            ))
        }
        .await;
        admin.shutdown().await;
        match exists.map_err(unavailable)? {
            (true, true) => {}
            (t, g) => {
                return Err(BackendError::Unavailable(format!(
                    "RocketMQ topic {topic} (exists: {t}) and group {group} (exists: {g}) must be created first"
                )));
            }
        }
        let (tx, rx) = mpsc::channel(INBOUND_QUEUE);
        let config = ConsumerConfig {
            namesrv: self.namesrv.clone(),
            topic,
            group,
            max_reconsume_times: Some(self.retry_max),
        };
        // The handler never blocks (parse, then `try_send`), so it runs right on the
        // client's thread: handing every push to the node's runtime and waiting for
        // it there cost a thread switch each way per message.
        let consumer = Consumer::start_blocking(&self.rt, config, move |d| {
            let env: Envelope = serde_json::from_slice(&d.body)
                .map_err(|e| format!("malformed envelope {}: {e}", d.msg_id))?;
            if let Envelope::ToUsers { sent_at_us, .. } = &env
                && crate::node::now_micros() - sent_at_us > STALE_AFTER.as_micros() as i64
            {
                return Ok(());
            }
            tx.try_send(env)
                .map_err(|e| format!("node cannot take the push now: {e}"))
        })
        .await
        .map_err(unavailable)?;
        *self.consumer.lock().unwrap_or_else(|e| e.into_inner()) = Some(consumer);
        Ok(rx)
    }

    fn is_saturated(&self) -> bool {
        // Over 3/4 full: the last quarter absorbs what is already in progress.
        self.outbox.capacity() < OUTBOX / 4
    }

    async fn unsubscribe(&self, _pod: &str) {
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
