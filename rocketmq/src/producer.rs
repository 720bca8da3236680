//! A thin producer: sends to any queue of a topic, or to the queue of a lane,
//! so that messages of one lane are stored, and then consumed, in order.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rocketmq_client_rust::{ClientConfig, DefaultMQProducer, SendStatus};
use rocketmq_model::common::message::message_queue::MessageQueue;
use rocketmq_model::common::message::message_single::Message;
use tokio::sync::{Mutex, RwLock};

use crate::{Credentials, Error, Runtime, unique_instance_name};

/// How long one send may take, retries included (RocketMQ's `sendMsgTimeout`).
const SEND_TIMEOUT: Duration = Duration::from_secs(3);

pub(crate) fn client_config(namesrv: &str, role: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set_namesrv_addr(namesrv.into());
    // One client instance (connections, heartbeats) per wrapper object, so two
    // producers of the same group in one process do not clash.
    config.set_instance_name(unique_instance_name(role).into());
    config
}

/// A message with a tag and user properties, for [`Producer::send_batch`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    /// The tag consumers filter on (`TAG_A||TAG_B`).
    pub tag: Option<String>,
    /// The message keys (searchable in the broker; consumers dedup by them).
    pub keys: Vec<String>,
    /// User properties. Names RocketMQ reserves (`KEYS`, `TAGS`, ...) are refused.
    pub properties: Vec<(String, String)>,
    pub body: Vec<u8>,
}

fn build_record(topic: &str, record: &Record) -> Result<Message, String> {
    let mut builder = Message::builder()
        .topic(topic)
        .keys(record.keys.clone())
        .body(record.body.clone());
    if let Some(tag) = &record.tag {
        builder = builder.tags(tag.as_str());
    }
    for (name, value) in &record.properties {
        builder = builder
            .raw_property(name.as_str(), value.as_str())
            .map_err(|e| e.to_string())?;
    }
    builder.build().map_err(|e| e.to_string())
}

/// How long [`Producer::send_batch`] uses a topic's queue list before reading it again.
const QUEUES_TTL: Duration = Duration::from_secs(30);

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
    credentials: Option<Credentials>,
    inner: Arc<RwLock<DefaultMQProducer>>,
    /// When the client was last built (or rebuilt).
    built_at: Mutex<std::time::Instant>,
    /// The sorted writable queues of the topics [`Producer::send_batch`] sent to,
    /// and when they were read from the name server.
    queues: Mutex<HashMap<String, (std::time::Instant, Vec<MessageQueue>)>>,
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
        Self::start_as(rt, namesrv, group, None).await
    }

    /// [`Producer::start`], signing every request with `credentials` (a broker with
    /// ACL: the user needs `Pub` on the topics it sends to).
    pub async fn start_as(
        rt: &Runtime,
        namesrv: &str,
        group: &str,
        credentials: Option<Credentials>,
    ) -> Result<Self, Error> {
        let producer = Self::build(rt, namesrv, group, credentials.as_ref()).await?;
        Ok(Self {
            rt: rt.clone(),
            namesrv: namesrv.to_owned(),
            group: group.to_owned(),
            credentials,
            inner: Arc::new(RwLock::new(producer)),
            built_at: Mutex::new(std::time::Instant::now()),
            queues: Mutex::new(HashMap::new()),
        })
    }

    async fn build(
        rt: &Runtime,
        namesrv: &str,
        group: &str,
        credentials: Option<&Credentials>,
    ) -> Result<DefaultMQProducer, Error> {
        let mut builder = DefaultMQProducer::builder(rt.client())
            .client_config(client_config(namesrv, "switchboard-producer"))
            .producer_group(group)
            .send_msg_timeout(u32::try_from(SEND_TIMEOUT.as_millis()).unwrap_or(u32::MAX));
        if let Some(c) = credentials {
            builder = builder.rpc_hook(c.hook());
        }
        let mut producer = builder.build();
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
        let Ok(fresh) = Self::build(
            &self.rt,
            &self.namesrv,
            &self.group,
            self.credentials.as_ref(),
        )
        .await
        else {
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
        self.send_retrying(topic, None, || {
            Message::builder()
                .topic(topic)
                .key(key)
                .body(body.clone())
                .build()
        })
        .await
    }

    /// Sends `body` to the queue of `lane` in `topic` (queue `lane % queues`, in the
    /// order the name server lists the topic's writable queues) and waits until the
    /// broker has stored it. Messages sent one after the other to one lane are stored,
    /// and consumed by an in-order [`crate::Consumer`], in that order, as long as the
    /// topic's queue count does not change. No other queue is tried on failure (that
    /// would break the order): the caller retries, and keeps later messages of the lane
    /// waiting until then. `keys` are the message keys (searchable in the broker).
    pub async fn send_ordered(
        &self,
        topic: &str,
        lane: u32,
        keys: Vec<String>,
        body: Vec<u8>,
    ) -> Result<(), Error> {
        self.send_retrying(topic, Some(lane), || {
            Message::builder()
                .topic(topic)
                .keys(keys.clone())
                .body(body.clone())
                .build()
        })
        .await
    }

    /// Sends `records` as one batch to one queue of `topic`: queue `lane % queues`
    /// of the topic's writable queues sorted by broker name and queue id (the same
    /// queue from every producer), and waits until the broker has stored them. The
    /// records of a batch are stored, and consumed in order, in the order given;
    /// each keeps its own tag, keys and properties. A transport failure rebuilds the
    /// client and tries once more, as [`Producer::send`] does. The whole batch must
    /// fit the broker's message size limit (4 MiB by default).
    pub async fn send_batch(
        &self,
        topic: &str,
        lane: u32,
        records: &[Record],
    ) -> Result<(), Error> {
        if records.is_empty() {
            return Ok(());
        }
        match self.send_batch_once(topic, lane, records).await {
            Err(Error::Client { .. }) if self.rebuild().await => {
                self.send_batch_once(topic, lane, records).await
            }
            other => other,
        }
    }

    async fn send_batch_once(
        &self,
        topic: &str,
        lane: u32,
        records: &[Record],
    ) -> Result<(), Error> {
        let mut messages = Vec::with_capacity(records.len());
        for record in records {
            messages.push(
                build_record(topic, record)
                    .map_err(|e| Error::InvalidName(format!("{topic}: {e}")))?,
            );
        }
        let queues = self.queues_of(topic).await?;
        let n = u32::try_from(queues.len()).unwrap_or(0).max(1);
        let Some(queue) = usize::try_from(lane % n)
            .ok()
            .and_then(|i| queues.get(i).cloned())
        else {
            return Self::check_stored(topic, None);
        };
        let inner = Arc::clone(&self.inner);
        let result = self
            .rt
            .run("send batch", async move {
                let producer = inner.read().await;
                producer.send_batch_to_queue(messages, queue).await
            })
            .await?
            .map_err(Error::client("send batch"));
        if result.is_err() {
            // The route may have changed (broker restarted elsewhere): read it again.
            self.queues.lock().await.remove(topic);
        }
        Self::check_stored(topic, Some(result?.send_status))
    }

    /// The writable queues of `topic`, sorted; read from the name server at most
    /// every [`QUEUES_TTL`].
    async fn queues_of(&self, topic: &str) -> Result<Vec<MessageQueue>, Error> {
        let mut cache = self.queues.lock().await;
        if let Some((at, queues)) = cache.get(topic)
            && at.elapsed() < QUEUES_TTL
        {
            return Ok(queues.clone());
        }
        let inner = Arc::clone(&self.inner);
        let topic_owned = topic.to_owned();
        let mut queues = self
            .rt
            .run("fetch queues", async move {
                inner
                    .write()
                    .await
                    .fetch_publish_message_queues(&topic_owned)
                    .await
            })
            .await?
            .map_err(Error::client("fetch queues"))?;
        queues.sort();
        cache.insert(
            topic.to_owned(),
            (std::time::Instant::now(), queues.clone()),
        );
        Ok(queues)
    }

    /// Sends the message `build` makes; after a transport failure, rebuilds the
    /// client (see [`Producer`]) and sends a fresh copy once more.
    async fn send_retrying<B, E>(
        &self,
        topic: &str,
        lane: Option<u32>,
        build: B,
    ) -> Result<(), Error>
    where
        B: Fn() -> Result<Message, E>,
        E: std::fmt::Display,
    {
        let message = || build().map_err(|e| Error::InvalidName(format!("{topic}: {e}")));
        match self.send_once(topic, lane, message()?).await {
            Err(Error::Client { .. }) if self.rebuild().await => {
                self.send_once(topic, lane, message()?).await
            }
            other => other,
        }
    }

    /// One send: to any queue (the client picks and retries another), or to the
    /// queue of `lane` (`lane % queues`, nothing else tried).
    async fn send_once(
        &self,
        topic: &str,
        lane: Option<u32>,
        message: Message,
    ) -> Result<(), Error> {
        let inner = Arc::clone(&self.inner);
        let result = self
            .rt
            .run("send", async move {
                let producer = inner.read().await;
                match lane {
                    None => producer.send(message).await,
                    Some(lane) => {
                        let select = |queues: &[MessageQueue], _: &Message, lane: &u32| {
                            let n = u32::try_from(queues.len()).ok().filter(|n| *n > 0)?;
                            queues.get(usize::try_from(lane % n).ok()?).cloned()
                        };
                        producer.send_with_selector(message, select, lane).await
                    }
                }
            })
            .await?
            .map_err(Error::client("send"))?;
        Self::check_stored(topic, result.map(|r| r.send_status))
    }

    fn check_stored(topic: &str, status: Option<SendStatus>) -> Result<(), Error> {
        match status {
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
