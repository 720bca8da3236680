//! A thin push consumer, concurrent or in order.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rocketmq_client_rust::{
    ConsumeConcurrentlyContext, ConsumeConcurrentlyStatus, DefaultMQPushConsumer, MQPushConsumer,
    MessageListenerConcurrently, MessageQueueListener,
};
use rocketmq_model::common::consumer::consume_from_where::ConsumeFromWhere;
use rocketmq_model::common::message::message_ext::MessageExt;
use rocketmq_model::common::message::message_queue::MessageQueue;
use rocketmq_protocol::protocol::heartbeat::message_model::MessageModel;
use tokio::sync::{Mutex, oneshot};

use crate::producer::client_config;
use crate::{Admin, Credentials, Error, Runtime};

/// RocketMQ's message property holding the keys.
const PROPERTY_KEYS: &str = "KEYS";
/// RocketMQ's message property holding the tag.
const PROPERTY_TAGS: &str = "TAGS";
/// Most messages per handler hand-off of an in-order consumer (the client's default pull
/// batch).
pub const MAX_IN_ORDER_BATCH: u32 = 32;

/// What a [`Consumer`] reads and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerConfig {
    /// Name server address (`host:port`, or several separated by `;`).
    pub namesrv: String,
    /// The topic to read (all tags).
    pub topic: String,
    /// The consumer group. It must exist ([`crate::Admin::ensure_group`]): brokers here do
    /// not create groups on first use, and a consumer of a missing group starts without
    /// error and receives nothing (unless `max_reconsume_times` is `None`, see there).
    pub group: String,
    /// How often a message whose handler fails is redelivered before it moves to the
    /// group's `%DLQ%` topic. `None` (the usual choice): the group's `retryMaxTimes`
    /// as [`crate::Admin::ensure_group`] set it, read from the broker at start, which
    /// also makes `start` fail with [`Error::MissingGroup`] if the group does not exist.
    ///
    /// RocketMQ clients send their own bound with every retry and the broker obeys it
    /// rather than the group's setting (measured with Apache RocketMQ 5.5: group 1 /
    /// client 4 gave 5 deliveries, group 4 / client 1 gave 2), hence this field.
    pub max_reconsume_times: Option<u32>,
    /// `true`: one handler call at a time, and the messages of each queue in the
    /// order the broker stored them (what [`crate::Producer::send_ordered`] sends to
    /// one lane arrives in that order); the client hands over what one pull brought
    /// (up to `batch` messages) at once, and a failure redelivers that whole batch, the
    /// messages already handled included. `false`: up to 20 calls at a time, one
    /// message each, order not kept. Either way, a message whose handler fails is
    /// redelivered later through the `%RETRY%` topic, after the ones behind it: a
    /// handler that needs order must not fail for a reason that can pass (wait
    /// instead).
    pub in_order: bool,
    /// In order: the most messages one handler call takes (1 to
    /// [`MAX_IN_ORDER_BATCH`]; 32 is the client's pull batch, the fewest hand-offs; 1
    /// gives each message its own 30 s budget and redelivers only it on failure).
    /// Concurrent consumers take one message per call whatever this says.
    pub batch: u32,
    /// ACL credentials to sign every request with (`None`: a broker without ACL). The
    /// user needs `Sub` on the topic and the group.
    pub credentials: Option<Credentials>,
}

/// One message handed to a consumer's handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The topic it was sent to (also for a redelivery, which RocketMQ reads from the
    /// group's `%RETRY%` topic).
    pub topic: String,
    /// The message key given to [`Producer::send`].
    pub key: Option<String>,
    /// The message's tag, if it has one.
    pub tag: Option<String>,
    /// Every property of the message: the user properties a producer set and
    /// RocketMQ's own (`KEYS`, `TAGS`, ...).
    pub properties: BTreeMap<String, String>,
    /// The message body.
    pub body: Vec<u8>,
    /// RocketMQ's message id.
    pub msg_id: String,
    /// How many times it was delivered before (0 the first time).
    pub reconsume_times: u32,
    /// When the producer sent it (its clock), ms since the Unix epoch.
    pub born_at_ms: i64,
}

impl Delivery {
    fn from_ext(msg: &MessageExt) -> Self {
        Self {
            topic: msg.topic().to_string(),
            key: msg.properties().get(PROPERTY_KEYS).map(|k| k.to_string()),
            tag: msg.properties().get(PROPERTY_TAGS).map(|t| t.to_string()),
            properties: msg
                .properties()
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: msg.body().map(|b| b.to_vec()).unwrap_or_default(),
            msg_id: msg.msg_id().to_string(),
            reconsume_times: u32::try_from(msg.reconsume_times()).unwrap_or(0),
            born_at_ms: msg.born_timestamp(),
        }
    }
}

/// A push consumer of one topic in one consumer group, in clustering mode: each message
/// goes to one consumer of the group.
///
/// Delivery is at least once. The handler's `Ok` consumes the message; its `Err`
/// asks RocketMQ to deliver it again later through the group's `%RETRY%` topic, with a
/// growing delay set by the broker (`messageDelayLevel`, 10 s, 30 s, 1 min ... by
/// default), at most [`ConsumerConfig::max_reconsume_times`] times (by default the
/// group's `retryMaxTimes`); then it moves to
/// `%DLQ%<group>` and is not delivered again. Messages are handled concurrently (up to
/// 20 at a time, order not kept) or one handler call at a time in queue order, each
/// taking what one pull brought ([`ConsumerConfig::in_order`]). A group that has never consumed starts
/// with the oldest stored message, so nothing sent after provisioning is skipped;
/// otherwise it resumes after the last consumed offset (committed every 5 seconds and
/// at shutdown, so a crash may redeliver a few seconds of messages).
///
/// A handler call should finish well within 30 seconds (for an in-order consumer: the
/// whole batch of up to `batch` messages): the client gives up waiting for it then and
/// treats it as failed (the batch is redelivered), while the call runs on.
///
/// `start` returns before the consumer holds any queue: the client's first
/// rebalance comes about a second later, or only after 20 s when the broker had
/// not heard from the client yet. [`Consumer::wait_assigned`] makes it happen now
/// and waits for it; until then, a message is stored but not consumed.
///
/// Why not RocketMQ's orderly listener for [`ConsumerConfig::in_order`]: it takes a
/// lock per queue at the broker, and the lock of a consumer killed with SIGKILL
/// lives on at the broker for 60 s, during which its successor (same group, new
/// client id) consumes nothing. One handler call at a time gives the same order to
/// the only consumer of a group, without that stall.
pub struct Consumer {
    rt: Runtime,
    inner: Arc<Mutex<DefaultMQPushConsumer>>,
    topic: String,
    /// Queues of the topic this consumer holds, as the client's last rebalance left them.
    assigned: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer").finish_non_exhaustive()
    }
}

impl Consumer {
    /// Starts consuming; `handler` runs as a task on the Tokio runtime that called
    /// `start` (which must outlive the consumer), so it may use that runtime's
    /// resources. While it runs, one of the client's threads waits for it.
    pub async fn start<H, Fut, E>(
        rt: &Runtime,
        config: ConsumerConfig,
        handler: H,
    ) -> Result<Self, Error>
    where
        H: Fn(Delivery) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Display + Send + 'static,
    {
        let caller = tokio::runtime::Handle::current();
        let handler = Arc::new(handler);
        Self::start_with(rt, config, move |delivery: Delivery| {
            let handler = Arc::clone(&handler);
            let (tx, rx) = oneshot::channel();
            caller.spawn(async move {
                let result = handler(delivery).await.map_err(|e| e.to_string());
                let _ = tx.send(result);
            });
            // Runs on one of the client's blocking threads, never on a runtime worker.
            rx.blocking_recv()
                .unwrap_or_else(|_| Err("the handler's runtime stopped".to_owned()))
        })
        .await
    }

    /// Like [`Consumer::start`], with a handler that is called directly on one of the
    /// client's threads, which may block.
    pub async fn start_blocking<H, E>(
        rt: &Runtime,
        config: ConsumerConfig,
        handler: H,
    ) -> Result<Self, Error>
    where
        H: Fn(Delivery) -> Result<(), E> + Send + Sync + 'static,
        E: Display,
    {
        Self::start_with(rt, config, move |delivery| {
            handler(delivery).map_err(|e| e.to_string())
        })
        .await
    }

    async fn start_with<H>(rt: &Runtime, config: ConsumerConfig, handler: H) -> Result<Self, Error>
    where
        H: Fn(Delivery) -> Result<(), String> + Send + Sync + 'static,
    {
        let max_reconsume_times = match config.max_reconsume_times {
            Some(n) => n,
            None => {
                let admin =
                    Admin::connect_as(rt, &config.namesrv, config.credentials.as_ref()).await?;
                let found = admin.group_retry_max_times(&config.group).await;
                admin.shutdown().await;
                found?.ok_or_else(|| Error::MissingGroup(config.group.clone()))?
            }
        };
        let assigned = Arc::new(AtomicUsize::new(0));
        let listener = Arc::new(Assignment {
            topic: config.topic.clone(),
            assigned: Arc::clone(&assigned),
        });
        // One consume worker: requests are taken from the client's FIFO in the
        // order each queue's pulls produced them, one at a time.
        let workers = if config.in_order { 1 } else { 20 };
        let mut builder = DefaultMQPushConsumer::builder(rt.client())
            .client_config(client_config(&config.namesrv, "switchboard-consumer"))
            .consumer_group(config.group.as_str())
            .message_model(MessageModel::Clustering)
            .consume_from_where(ConsumeFromWhere::ConsumeFromFirstOffset)
            // Concurrent: one message per call, so one failure retries only that message.
            // In order: what one pull brought (up to `batch` messages of one queue, in order)
            // in one call: one hand-off to a consume thread per batch, not per message.
            .consume_message_batch_max_size(if config.in_order {
                config.batch.clamp(1, MAX_IN_ORDER_BATCH)
            } else {
                1
            })
            .consume_thread_min(workers)
            .consume_thread_max(if config.in_order { 1 } else { 64 })
            .max_reconsume_times(i32::try_from(max_reconsume_times).unwrap_or(i32::MAX))
            .message_queue_listener(Some(listener));
        if let Some(c) = &config.credentials {
            builder = builder.rpc_hook(Some(c.hook()));
        }
        let mut consumer = builder.build();
        let topic = config.topic.clone();
        let consumer = rt
            .run("consumer start", async move {
                consumer.subscribe(topic.as_str(), "*").await?;
                consumer.register_message_listener_concurrently(Listener { handler });
                consumer.start().await.map(|()| consumer)
            })
            .await?
            .map_err(Error::client("consumer start"))?;
        Ok(Self {
            rt: rt.clone(),
            inner: Arc::new(Mutex::new(consumer)),
            topic: config.topic,
            assigned,
        })
    }

    /// How many queues of the topic this consumer holds now.
    pub fn assigned_queues(&self) -> usize {
        self.assigned.load(Ordering::Acquire)
    }

    /// Makes the client refresh the topic's route, announce itself to the brokers
    /// and rebalance, every 250 ms until it holds at least one queue, for up to
    /// `timeout`. Returns how many it holds; [`Error::NotAssigned`] when none.
    pub async fn wait_assigned(&self, timeout: Duration) -> Result<usize, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            let held = self.assigned_queues();
            if held > 0 {
                return Ok(held);
            }
            if Instant::now() >= deadline {
                return Err(Error::NotAssigned(self.topic.clone()));
            }
            let inner = Arc::clone(&self.inner);
            self.rt
                .run("consumer rebalance", async move {
                    let consumer = inner.lock().await;
                    let factory = consumer
                        .default_mq_push_consumer_impl()
                        .and_then(|c| c.get_mq_client_factory());
                    if let Some(factory) = factory {
                        factory.update_topic_route_info_from_name_server().await;
                        factory.send_heartbeat_to_all_broker_with_lock().await;
                        let _ = factory.do_rebalance().await;
                    }
                })
                .await?;
            if self.assigned_queues() == 0 {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }

    /// Stops consuming: commits the consumed offsets and leaves the group (its queues
    /// go to the other consumers of the group).
    pub async fn shutdown(self) {
        let inner = Arc::clone(&self.inner);
        let _ = self
            .rt
            .run("consumer shutdown", async move {
                inner.lock().await.shutdown().await;
            })
            .await;
    }
}

struct Listener<H> {
    handler: H,
}

impl<H> MessageListenerConcurrently for Listener<H>
where
    H: Fn(Delivery) -> Result<(), String> + Send + Sync,
{
    fn consume_message(
        &self,
        msgs: &[&MessageExt],
        _context: &ConsumeConcurrentlyContext,
    ) -> rocketmq_client_rust::ClientResult<ConsumeConcurrentlyStatus> {
        for msg in msgs {
            let delivery = Delivery::from_ext(msg);
            let (topic, msg_id, attempt) = (
                delivery.topic.clone(),
                delivery.msg_id.clone(),
                delivery.reconsume_times,
            );
            if let Err(error) = (self.handler)(delivery) {
                tracing::warn!(%topic, %msg_id, attempt, %error, "message handler failed; RocketMQ will redeliver");
                return Ok(ConsumeConcurrentlyStatus::ReconsumeLater);
            }
        }
        Ok(ConsumeConcurrentlyStatus::ConsumeSuccess)
    }
}

/// Keeps [`Consumer::assigned_queues`] current.
struct Assignment {
    topic: String,
    assigned: Arc<AtomicUsize>,
}

impl MessageQueueListener for Assignment {
    fn message_queue_changed(
        &self,
        topic: &str,
        _all: &HashSet<MessageQueue>,
        assigned: &HashSet<MessageQueue>,
    ) {
        if topic == self.topic {
            self.assigned.store(assigned.len(), Ordering::Release);
        }
    }
}
