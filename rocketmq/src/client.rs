//! A thin producer and push consumer.

use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rocketmq_client_rust::{
    ClientConfig, ConsumeConcurrentlyContext, ConsumeConcurrentlyStatus, DefaultMQProducer,
    DefaultMQPushConsumer, MQPushConsumer, MessageListenerConcurrently, SendStatus,
};
use rocketmq_model::common::consumer::consume_from_where::ConsumeFromWhere;
use rocketmq_model::common::message::message_ext::MessageExt;
use rocketmq_model::common::message::message_single::Message;
use rocketmq_protocol::protocol::heartbeat::message_model::MessageModel;
use tokio::sync::{Mutex, RwLock, oneshot};

use crate::{Admin, Error, Runtime, unique_instance_name};

/// How long one send may take, retries included (RocketMQ's `sendMsgTimeout`).
const SEND_TIMEOUT: Duration = Duration::from_secs(3);
/// RocketMQ's message property holding the keys.
const PROPERTY_KEYS: &str = "KEYS";

fn client_config(namesrv: &str, role: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set_namesrv_addr(namesrv.into());
    // One client instance (connections, heartbeats) per wrapper object, so two
    // producers of the same group in one process do not clash.
    config.set_instance_name(unique_instance_name(role).into());
    config
}

/// After a failed send the producer is rebuilt, at most this often.
const REBUILD_EVERY: Duration = Duration::from_secs(1);

/// Sends messages. Cheap to share by reference; sends may run concurrently.
///
/// A send that fails at the transport (broker restarted, connection lost) rebuilds the
/// underlying client and is tried once more: the client's own recovery keeps using its
/// stale route and connections for about 30 s after a broker restart, while a new
/// client sends as soon as the broker has registered with the name server again.
pub struct Producer {
    rt: Runtime,
    namesrv: String,
    group: String,
    inner: Arc<RwLock<DefaultMQProducer>>,
    /// When the client was last built (or rebuilt).
    built_at: Mutex<std::time::Instant>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer").finish_non_exhaustive()
    }
}

impl Producer {
    /// Starts a producer in producer group `group` (only a label for the broker; it need
    /// not be provisioned) that finds brokers through the name server at `namesrv`.
    pub async fn start(rt: &Runtime, namesrv: &str, group: &str) -> Result<Self, Error> {
        let producer = Self::build(rt, namesrv, group).await?;
        Ok(Self {
            rt: rt.clone(),
            namesrv: namesrv.to_owned(),
            group: group.to_owned(),
            inner: Arc::new(RwLock::new(producer)),
            built_at: Mutex::new(std::time::Instant::now()),
        })
    }

    async fn build(rt: &Runtime, namesrv: &str, group: &str) -> Result<DefaultMQProducer, Error> {
        let mut producer = DefaultMQProducer::builder(rt.client())
            .client_config(client_config(namesrv, "switchboard-producer"))
            .producer_group(group)
            .send_msg_timeout(u32::try_from(SEND_TIMEOUT.as_millis()).unwrap_or(u32::MAX))
            .build();
        let producer = rt
            .run("producer start", async move {
                producer.start().await.map(|()| producer)
            })
            .await?
            .map_err(Error::client("producer start"))?;
        Ok(producer)
    }

    /// Replaces the client with a new one unless that happened less than
    /// [`REBUILD_EVERY`] ago (concurrent failures rebuild once). Returns whether it did.
    async fn rebuild(&self) -> bool {
        let mut built_at = self.built_at.lock().await;
        if built_at.elapsed() < REBUILD_EVERY {
            return false;
        }
        *built_at = std::time::Instant::now();
        let Ok(fresh) = Self::build(&self.rt, &self.namesrv, &self.group).await else {
            return false;
        };
        let inner = Arc::clone(&self.inner);
        let _ = self
            .rt
            .run("producer rebuild", async move {
                let mut old = std::mem::replace(&mut *inner.write().await, fresh);
                old.shutdown().await;
            })
            .await;
        tracing::info!(group = %self.group, "RocketMQ producer rebuilt after a failed send");
        true
    }

    /// Sends `body` to `topic` with the message key `key` and waits until the broker has
    /// stored it (status `SEND_OK`). The client retries another queue on failure within
    /// 3 seconds in all. The topic must exist: brokers here do not create topics on first
    /// use.
    pub async fn send(&self, topic: &str, key: &str, body: Vec<u8>) -> Result<(), Error> {
        match self.send_once(topic, key, body.clone()).await {
            Err(Error::Client { .. }) if self.rebuild().await => {
                self.send_once(topic, key, body).await
            }
            other => other,
        }
    }

    async fn send_once(&self, topic: &str, key: &str, body: Vec<u8>) -> Result<(), Error> {
        let message = Message::builder()
            .topic(topic)
            .key(key)
            .body(body)
            .build()
            .map_err(|e| Error::InvalidName(format!("{topic}: {e}")))?;
        let inner = Arc::clone(&self.inner);
        let result = self
            .rt
            .run(
                "send",
                async move { inner.read().await.send(message).await },
            )
            .await?
            .map_err(Error::client("send"))?;
        match result.map(|r| r.send_status) {
            Some(SendStatus::SendOk) => Ok(()),
            other => Err(Error::NotStored {
                topic: topic.to_owned(),
                status: other.map_or_else(|| "no result".to_owned(), |s| s.to_string()),
            }),
        }
    }

    /// Stops the producer. Sends still running fail.
    pub async fn shutdown(self) {
        let inner = Arc::clone(&self.inner);
        let _ = self
            .rt
            .run("producer shutdown", async move {
                inner.write().await.shutdown().await;
            })
            .await;
    }
}

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
}

/// One message handed to a consumer's handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The topic it was sent to (also for a redelivery, which RocketMQ reads from the
    /// group's `%RETRY%` topic).
    pub topic: String,
    /// The message key given to [`Producer::send`].
    pub key: Option<String>,
    /// The message body.
    pub body: Vec<u8>,
    /// RocketMQ's message id.
    pub msg_id: String,
    /// How many times it was delivered before (0 the first time).
    pub reconsume_times: u32,
}

impl Delivery {
    fn from_ext(msg: &MessageExt) -> Self {
        Self {
            topic: msg.topic().to_string(),
            key: msg.properties().get(PROPERTY_KEYS).map(|k| k.to_string()),
            body: msg.body().map(|b| b.to_vec()).unwrap_or_default(),
            msg_id: msg.msg_id().to_string(),
            reconsume_times: u32::try_from(msg.reconsume_times()).unwrap_or(0),
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
/// 20 at a time), so their order is not kept. A group that has never consumed starts
/// with the oldest stored message, so nothing sent after provisioning is skipped;
/// otherwise it resumes after the last consumed offset (committed every 5 seconds and
/// at shutdown, so a crash may redeliver a few seconds of messages).
///
/// A handler should finish well within 30 seconds: the client gives up waiting for a
/// handler call then and treats it as failed (redelivery), while the call runs on.
pub struct Consumer {
    rt: Runtime,
    inner: Arc<Mutex<DefaultMQPushConsumer>>,
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
                let admin = Admin::connect(rt, &config.namesrv).await?;
                let found = admin.group_retry_max_times(&config.group).await;
                admin.shutdown().await;
                found?.ok_or_else(|| Error::MissingGroup(config.group.clone()))?
            }
        };
        let mut consumer = DefaultMQPushConsumer::builder(rt.client())
            .client_config(client_config(&config.namesrv, "switchboard-consumer"))
            .consumer_group(config.group.as_str())
            .message_model(MessageModel::Clustering)
            .consume_from_where(ConsumeFromWhere::ConsumeFromFirstOffset)
            // One message per handler call, so one failure retries only that message.
            .consume_message_batch_max_size(1)
            .max_reconsume_times(i32::try_from(max_reconsume_times).unwrap_or(i32::MAX))
            .build();
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
        })
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
