//! For backends of a Switchboard cluster (`docs/integration.md`):
//! [`RequestClient`] sends requests to `PREFIX-requests` and waits for the
//! correlated answer on `PREFIX-responses` (seed 000: 10 s timeout, waiters
//! of timed-out requests cleaned up); [`CommandPublisher`] sends commands to
//! `PREFIX-commands`, one activity's or group's commands to one queue, so
//! they are applied in the order sent.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
pub use switchboard_events::api::{ApiError, ErrorKind, Request, Response};
use switchboard_events::api::{PROPERTY_ACTION, PROPERTY_DEADLINE_MS, PROPERTY_REQUEST_ID};
use switchboard_rocketmq::names::{Names, fnv1a64};
use switchboard_rocketmq::{
    Consumer, ConsumerConfig, Credentials, Delivery, Producer, Record, Runtime,
};
use tokio::sync::oneshot;

/// Seed 000's request timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// No answer within the timeout (the request may still be executed if
    /// a node took it before its deadline, which is the same instant).
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    RocketMq(#[from] switchboard_rocketmq::Error),
}

/// Where a client sends and reads.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Name server (`host:port`).
    pub namesrv: String,
    /// The cluster's topic prefix.
    pub prefix: String,
    /// The consumer group this client reads `PREFIX-responses` with; it must
    /// exist, and be this client's own (each answer goes to every group).
    pub responses_group: String,
    pub credentials: Option<Credentials>,
    /// How long [`RequestClient::request`] waits for an answer.
    pub timeout: Duration,
}

type Waiters = Arc<Mutex<HashMap<String, oneshot::Sender<Response>>>>;

/// Sends requests and waits for their answers.
pub struct RequestClient {
    producer: Producer,
    consumer: Consumer,
    rt: Runtime,
    requests_topic: String,
    waiters: Waiters,
    timeout: Duration,
}

impl std::fmt::Debug for RequestClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestClient")
            .field("requests_topic", &self.requests_topic)
            .finish_non_exhaustive()
    }
}

fn waiters_of(
    waiters: &Waiters,
) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<Response>>> {
    waiters
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl RequestClient {
    /// Starts the producer and the responses consumer (holding its queues
    /// before it returns, so no answer is missed).
    pub async fn start(config: ClientConfig) -> Result<Self, switchboard_rocketmq::Error> {
        let names = Names::new(&config.prefix);
        let rt = Runtime::new()?;
        let waiters: Waiters = Arc::default();
        let delivered = waiters.clone();
        let consumer = Consumer::start_blocking(
            &rt,
            ConsumerConfig {
                namesrv: config.namesrv.clone(),
                topic: names.responses_topic(),
                group: config.responses_group.clone(),
                max_reconsume_times: Some(0),
                in_order: false,
                batch: 32,
                credentials: config.credentials.clone(),
            },
            move |d: Delivery| {
                // Answers to other clients' requests, and unreadable ones,
                // are not this client's business.
                if let Ok(answer) = serde_json::from_slice::<Response>(&d.body)
                    && let Some(tx) = waiters_of(&delivered).remove(&answer.request_id)
                {
                    let _ = tx.send(answer);
                }
                Ok::<(), String>(())
            },
        )
        .await?;
        consumer.wait_assigned(Duration::from_secs(30)).await?;
        let producer = Producer::start_as(
            &rt,
            &config.namesrv,
            &format!("{}-requester", config.responses_group),
            config.credentials.clone(),
        )
        .await?;
        Ok(Self {
            producer,
            consumer,
            rt,
            requests_topic: names.requests_topic(),
            waiters,
            timeout: config.timeout,
        })
    }

    /// Sends `action` as `user_id` with `data` under a new request id and
    /// waits for the answer.
    pub async fn request(
        &self,
        user_id: &str,
        action: &str,
        data: Value,
    ) -> Result<Response, RequestError> {
        let id = new_request_id();
        self.request_with_id(&id, user_id, action, data).await
    }

    /// As [`RequestClient::request`] with a request id of the caller's (a
    /// resend of a request whose answer was lost: the node answers it with
    /// the first answer, without executing it again).
    pub async fn request_with_id(
        &self,
        request_id: &str,
        user_id: &str,
        action: &str,
        data: Value,
    ) -> Result<Response, RequestError> {
        let (tx, rx) = oneshot::channel();
        waiters_of(&self.waiters).insert(request_id.to_owned(), tx);
        let request = Request {
            request_id: request_id.to_owned(),
            user_id: user_id.to_owned(),
            action: action.to_owned(),
            data,
        };
        let deadline = now_ms() + i64::try_from(self.timeout.as_millis()).unwrap_or(i64::MAX);
        let record = Record {
            tag: Some(action.to_owned()),
            keys: vec![request_id.to_owned()],
            properties: vec![
                (PROPERTY_REQUEST_ID.into(), request_id.to_owned()),
                ("user_id".into(), user_id.to_owned()),
                (PROPERTY_ACTION.into(), action.to_owned()),
                (PROPERTY_DEADLINE_MS.into(), deadline.to_string()),
            ],
            body: serde_json::to_vec(&request).unwrap_or_default(),
        };
        let lane = (fnv1a64(request_id.as_bytes()) & 0xffff) as u32;
        if let Err(e) = self
            .producer
            .send_batch(&self.requests_topic, lane, &[record])
            .await
        {
            waiters_of(&self.waiters).remove(request_id);
            return Err(e.into());
        }
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(answer)) => Ok(answer),
            _ => {
                // Seed 000: the waiter of a timed-out request is cleaned up.
                waiters_of(&self.waiters).remove(request_id);
                Err(RequestError::Timeout(self.timeout))
            }
        }
    }

    /// Requests waiting for an answer now.
    pub fn waiting(&self) -> usize {
        waiters_of(&self.waiters).len()
    }

    pub async fn shutdown(self) {
        self.consumer.shutdown().await;
        self.producer.shutdown().await;
        self.rt.shutdown().await;
    }
}

/// A request id unique enough: time, process and a counter.
pub fn new_request_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "req-{}-{}-{}",
        now_ms(),
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Sends commands to `PREFIX-commands`.
pub struct CommandPublisher {
    producer: Producer,
    rt: Runtime,
    topic: String,
}

impl std::fmt::Debug for CommandPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandPublisher")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl CommandPublisher {
    /// A publisher of producer group `group`.
    pub async fn start(
        namesrv: &str,
        prefix: &str,
        group: &str,
        credentials: Option<Credentials>,
    ) -> Result<Self, switchboard_rocketmq::Error> {
        let rt = Runtime::new()?;
        let producer = Producer::start_as(&rt, namesrv, group, credentials).await?;
        Ok(Self {
            producer,
            rt,
            topic: Names::new(prefix).commands_topic(),
        })
    }

    /// Sends command `kind` (the tag) with its JSON `body` to the queue of
    /// `order_key` (an activity or group id: its commands are applied in
    /// the order sent), with `key` as the message key (the command's id for
    /// dedup; `None`: RocketMQ's message id, or for activity events the
    /// event itself).
    pub async fn publish(
        &self,
        kind: &str,
        body: &Value,
        order_key: &str,
        key: Option<&str>,
    ) -> Result<(), switchboard_rocketmq::Error> {
        self.publish_raw(
            kind,
            body.to_string().into_bytes(),
            order_key,
            key,
            Vec::new(),
        )
        .await
    }

    /// As [`CommandPublisher::publish`] with a body as bytes and extra
    /// properties (a re-driven dead letter keeps its own).
    pub async fn publish_raw(
        &self,
        kind: &str,
        body: Vec<u8>,
        order_key: &str,
        key: Option<&str>,
        properties: Vec<(String, String)>,
    ) -> Result<(), switchboard_rocketmq::Error> {
        let record = Record {
            tag: Some(kind.to_owned()),
            keys: key.map(|k| vec![k.to_owned()]).unwrap_or_default(),
            properties,
            body,
        };
        let lane = (fnv1a64(order_key.as_bytes()) & 0xffff) as u32;
        self.producer.send_batch(&self.topic, lane, &[record]).await
    }

    pub async fn shutdown(self) {
        self.producer.shutdown().await;
        self.rt.shutdown().await;
    }
}
