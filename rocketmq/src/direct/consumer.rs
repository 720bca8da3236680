//! An ordered pull consumer of every queue of one topic, on the caller's runtime.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{Client, Queue, code, field, frames, refused};
use crate::{Credentials, Delivery, Error};

/// How long the broker holds a pull that finds nothing (long polling): a message
/// that arrives meanwhile is answered at once.
const SUSPEND: Duration = Duration::from_secs(15);
/// A pull's whole budget: the suspension and some.
const PULL_TIMEOUT: Duration = Duration::from_secs(20);
/// Offset requests.
const OFFSET_TIMEOUT: Duration = Duration::from_secs(3);
/// How often the route is read for queues added since the start.
const ROUTE_EVERY: Duration = Duration::from_secs(30);
/// Pause before pulling again when the broker asked for a retry.
const RETRY_SOON: Duration = Duration::from_millis(50);
/// Pause after a failed pull, doubled up to the most.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(3);

/// `PULL_MESSAGE`'s `sysFlag` bits: commit the offset given, suspend when
/// nothing is there, the subscription is in the request.
const FLAG_COMMIT_OFFSET: i32 = 1;
const FLAG_SUSPEND: i32 = 2;
const FLAG_SUBSCRIPTION: i32 = 4;

/// What an [`OrderedConsumer`] reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderedConsumerConfig {
    /// Name server(s): `host:port`, several separated by `;`.
    pub namesrv: String,
    /// The topic; all tags are read.
    pub topic: String,
    /// The consumer group, which keeps the offsets. It must exist.
    pub group: String,
    /// Most messages one pull brings.
    pub batch: u32,
    /// ACL credentials (`Sub` on the topic and the group).
    pub credentials: Option<Credentials>,
    /// Where a group that never committed begins in each queue.
    pub new_group_starts_at: StartAt,
    /// What to do with a message that cannot be read.
    pub unreadable: Unreadable,
}

/// What an [`OrderedConsumer`] does with a message it cannot read (a frame
/// that does not decode, a body that does not decompress).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Unreadable {
    /// Logs it and goes on past it: a pod's bus, where a stuck queue would
    /// hold up every push behind it.
    #[default]
    Skip,
    /// Stops its queue before it, uncommitted, and says so
    /// ([`OrderedConsumer::shutdown`]): a tool that must not pass a message
    /// by.
    Stop,
}

/// Where a consumer group that never committed an offset begins reading a
/// queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartAt {
    /// The queue's end (what arrives from now on), unless the broker still
    /// holds the queue's first message in memory (a new or young queue: all of
    /// it): a pod's bus topic, made for the pod.
    #[default]
    End,
    /// The oldest message the broker still stores: a tool reading a topic's
    /// backlog (dead letters).
    Oldest,
}

/// Reads every readable queue of a topic, each in the order stored, and hands
/// every message to a handler, one at a time per queue; the queues run side by
/// side. The group's offsets are committed with each pull and at
/// [`OrderedConsumer::shutdown`]; a process that dies gets the messages since the
/// last commit again (at least once).
///
/// Unlike [`crate::Consumer`] it does not join the group through heartbeats or
/// share queues: it reads all of them, so one process only may read a topic
/// with it. A handler's `Err` stops that queue's reading where it failed (the
/// message is read again by the next consumer of the group): it is for a
/// handler that can no longer take messages, not for retrying one.
pub struct OrderedConsumer {
    stop: CancellationToken,
    queues: Option<tokio::task::JoinHandle<Vec<String>>>,
}

impl std::fmt::Debug for OrderedConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrderedConsumer").finish_non_exhaustive()
    }
}

impl OrderedConsumer {
    /// Reads the topic's route and each queue's offset (the group's committed
    /// one; for a group that never committed, the start of a queue whose first
    /// message the broker still holds in memory, else [`StartAt`]), then
    /// starts reading. Fails when the topic has no route or an offset cannot be
    /// read. The route is read again every 30 s: a queue added later (more
    /// queues per topic) is read from then on, from its start.
    pub async fn start<F, Fut, E>(config: OrderedConsumerConfig, handler: F) -> Result<Self, Error>
    where
        F: Fn(Delivery) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display + 'static,
    {
        let client = Arc::new(Client::new(&config.namesrv, config.credentials.clone()));
        let route = client.route(&config.topic).await?;
        if route.read.is_empty() {
            return Err(Error::NotAssigned(config.topic.clone()));
        }
        let reader = Arc::new(Reader {
            client,
            topic: config.topic,
            group: config.group,
            batch: config.batch.max(1),
            new_group_starts_at: config.new_group_starts_at,
            unreadable: config.unreadable,
            stopped: std::sync::Mutex::new(Vec::new()),
        });
        let mut starts = Vec::with_capacity(route.read.len());
        for q in &route.read {
            starts.push((q.clone(), reader.start_offset(q).await?));
        }
        let stop = CancellationToken::new();
        let queues = tokio::spawn(supervise(reader, starts, Arc::new(handler), stop.clone()));
        Ok(Self {
            stop,
            queues: Some(queues),
        })
    }

    /// Stops reading (a handler call under way is let finish), commits each
    /// queue's offset, and returns why queues stopped before (with
    /// [`Unreadable::Stop`]: at a message that cannot be read).
    pub async fn shutdown(mut self) -> Vec<String> {
        self.stop.cancel();
        match self.queues.take() {
            Some(queues) => queues.await.unwrap_or_default(),
            None => Vec::new(),
        }
    }
}

impl Drop for OrderedConsumer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Runs a task per queue; every [`ROUTE_EVERY`] reads the route and starts the
/// queues that are new. Ends when every queue task ended after `stop`.
async fn supervise<F, Fut, E>(
    reader: Arc<Reader>,
    starts: Vec<(Queue, i64)>,
    handler: Arc<F>,
    stop: CancellationToken,
) -> Vec<String>
where
    F: Fn(Delivery) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display + 'static,
{
    let mut running = HashSet::new();
    let mut queues = JoinSet::new();
    let spawn = |q: Queue, offset: i64, queues: &mut JoinSet<()>, running: &mut HashSet<_>| {
        running.insert((q.broker.clone(), q.id));
        let (reader, handler, stop) = (Arc::clone(&reader), Arc::clone(&handler), stop.clone());
        queues.spawn(async move { reader.run(q, offset, &*handler, stop).await });
    };
    for (q, offset) in starts {
        spawn(q, offset, &mut queues, &mut running);
    }
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(ROUTE_EVERY) => {}
        }
        reader.client.forget_route(&reader.topic);
        let Ok(route) = reader.client.route(&reader.topic).await else {
            continue;
        };
        for q in &route.read {
            if running.contains(&(q.broker.clone(), q.id)) {
                continue;
            }
            match reader.start_offset(q).await {
                Ok(offset) => {
                    tracing::info!(topic = %reader.topic, queue = q.id, broker = %q.broker, offset, "reading a new queue");
                    spawn(q.clone(), offset, &mut queues, &mut running);
                }
                Err(e) => tracing::warn!(topic = %reader.topic, queue = q.id, error = %e,
                    "cannot read a new queue's offset; trying again later"),
            }
        }
    }
    while queues.join_next().await.is_some() {}
    std::mem::take(&mut *reader.stopped.lock().unwrap_or_else(|e| e.into_inner()))
}

struct Reader {
    client: Arc<Client>,
    topic: String,
    group: String,
    batch: u32,
    new_group_starts_at: StartAt,
    unreadable: Unreadable,
    /// Why queues stopped early ([`Unreadable::Stop`]).
    stopped: std::sync::Mutex<Vec<String>>,
}

/// What one pull found.
enum Pulled {
    /// Messages with their offsets, the next offset, and the offset of the
    /// first message that could not be read, if one could not.
    Found(Vec<Delivery>, Vec<i64>, i64, Option<i64>),
    /// Nothing (after the broker's suspension), or the offset moved: go on
    /// from here.
    Next(i64),
    Again,
}

impl Reader {
    /// Where to start in `q`: the group's committed offset; for a group that
    /// never committed, the broker answers 0 while the queue's first message is
    /// in memory (a new or young queue: read all of it), else "not found": the
    /// queue's end, or its oldest stored message ([`StartAt`]).
    async fn start_offset(&self, q: &Queue) -> Result<i64, Error> {
        let fields = [
            ("consumerGroup", self.group.clone()),
            ("topic", self.topic.clone()),
            ("queueId", q.id.to_string()),
        ];
        let r = self
            .client
            .call(
                &q.addr,
                Client::command(code::QUERY_CONSUMER_OFFSET, &fields),
                OFFSET_TIMEOUT,
            )
            .await?;
        match r.code() {
            code::SUCCESS => field(&r, "offset").ok_or_else(|| refused("query offset", &r)),
            code::QUERY_NOT_FOUND => {
                let fields = [("topic", self.topic.clone()), ("queueId", q.id.to_string())];
                let (request, what) = match self.new_group_starts_at {
                    StartAt::End => (code::GET_MAX_OFFSET, "max offset"),
                    StartAt::Oldest => (code::GET_MIN_OFFSET, "min offset"),
                };
                let r = self
                    .client
                    .call(&q.addr, Client::command(request, &fields), OFFSET_TIMEOUT)
                    .await?;
                match r.code() {
                    code::SUCCESS => field(&r, "offset").ok_or_else(|| refused(what, &r)),
                    _ => Err(refused(what, &r)),
                }
            }
            _ => Err(refused("query offset", &r)),
        }
    }

    async fn run<F, Fut, E>(
        &self,
        mut q: Queue,
        mut offset: i64,
        handler: &F,
        stop: CancellationToken,
    ) where
        F: Fn(Delivery) -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: std::fmt::Display,
    {
        let mut pause = RETRY_FIRST;
        let mut failing = false;
        'pulling: while !stop.is_cancelled() {
            let pulled = tokio::select! {
                () = stop.cancelled() => break,
                p = self.pull(&q, offset) => p,
            };
            match pulled {
                Ok(Pulled::Found(deliveries, offsets, next, unreadable)) => {
                    let stop_at =
                        unreadable.filter(|u| self.unreadable == Unreadable::Stop && *u >= offset);
                    for (d, at) in deliveries.into_iter().zip(offsets) {
                        if at < offset {
                            continue;
                        }
                        if stop_at.is_some_and(|u| at >= u) {
                            break;
                        }
                        if stop.is_cancelled() {
                            // Stopping: the rest is read again by the next reader.
                            offset = at;
                            break 'pulling;
                        }
                        if let Err(e) = handler(d).await {
                            tracing::warn!(topic = %self.topic, queue = q.id, offset = at, error = %e,
                                "the handler stopped taking messages; this queue stops here");
                            offset = at;
                            break 'pulling;
                        }
                        offset = at + 1;
                    }
                    if let Some(at) = stop_at {
                        let why = format!(
                            "{} queue {} stops at offset {at}: a message that cannot be read",
                            self.topic, q.id
                        );
                        tracing::warn!("{why}");
                        self.stopped
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(why);
                        offset = offset.max(at.min(next));
                        break 'pulling;
                    }
                    offset = offset.max(next);
                }
                Ok(Pulled::Next(next)) => offset = next,
                Ok(Pulled::Again) => tokio::time::sleep(RETRY_SOON).await,
                Err(e) => {
                    if !failing {
                        tracing::warn!(topic = %self.topic, queue = q.id, error = %e,
                            "pulling from RocketMQ failed; retrying");
                    }
                    failing = true;
                    self.client.forget_route(&self.topic);
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(pause) => {}
                    }
                    // The broker may be back elsewhere.
                    if let Ok(route) = self.client.route(&self.topic).await
                        && let Some(now) = route
                            .read
                            .iter()
                            .find(|n| n.broker == q.broker && n.id == q.id)
                    {
                        q.addr.clone_from(&now.addr);
                    }
                    pause = (pause * 2).min(RETRY_MAX);
                    continue;
                }
            }
            if failing {
                tracing::info!(topic = %self.topic, queue = q.id, "pulling from RocketMQ again");
            }
            failing = false;
            pause = RETRY_FIRST;
        }
        self.commit(&q, offset).await;
    }

    /// One pull from `offset`, committing `offset` (what was handled before it).
    async fn pull(&self, q: &Queue, offset: i64) -> Result<Pulled, Error> {
        let commit = if offset > 0 { FLAG_COMMIT_OFFSET } else { 0 };
        let fields = [
            ("consumerGroup", self.group.clone()),
            ("topic", self.topic.clone()),
            ("queueId", q.id.to_string()),
            ("queueOffset", offset.to_string()),
            ("maxMsgNums", self.batch.to_string()),
            (
                "sysFlag",
                (commit | FLAG_SUSPEND | FLAG_SUBSCRIPTION).to_string(),
            ),
            ("commitOffset", offset.to_string()),
            ("suspendTimeoutMillis", SUSPEND.as_millis().to_string()),
            ("subscription", "*".to_owned()),
            ("subVersion", "0".to_owned()),
            ("expressionType", "TAG".to_owned()),
        ];
        let r = self
            .client
            .call(
                &q.addr,
                Client::command(code::PULL_MESSAGE, &fields),
                PULL_TIMEOUT,
            )
            .await?;
        let next = field::<i64>(&r, "nextBeginOffset");
        match (r.code(), next) {
            (code::SUCCESS, Some(next)) => {
                let body = r.body().cloned().unwrap_or_default();
                let (deliveries, offsets, unreadable) = frames::decode(&self.topic, body, offset);
                Ok(Pulled::Found(deliveries, offsets, next, unreadable))
            }
            (code::PULL_NOT_FOUND, Some(next)) => Ok(Pulled::Next(next)),
            (code::PULL_OFFSET_MOVED, Some(next)) => {
                tracing::warn!(topic = %self.topic, queue = q.id, from = offset, to = next,
                    "the broker moved this queue's offset (messages expired or the queue was reset)");
                Ok(Pulled::Next(next))
            }
            // Nothing matched (or a store file was being removed): go on from
            // where the broker says, as the client does.
            (code::PULL_RETRY_IMMEDIATELY, Some(next)) if next > offset => Ok(Pulled::Next(next)),
            (code::PULL_RETRY_IMMEDIATELY, _) => Ok(Pulled::Again),
            _ => Err(refused("pull", &r)),
        }
    }

    /// Stores `offset` as the group's offset of `q` (best effort: logged).
    async fn commit(&self, q: &Queue, offset: i64) {
        let fields = [
            ("consumerGroup", self.group.clone()),
            ("topic", self.topic.clone()),
            ("queueId", q.id.to_string()),
            ("commitOffset", offset.to_string()),
        ];
        let cmd = Client::command(code::UPDATE_CONSUMER_OFFSET, &fields);
        match self.client.call(&q.addr, cmd, OFFSET_TIMEOUT).await {
            Ok(r) if r.code() == code::SUCCESS => {}
            Ok(r) => {
                tracing::warn!(topic = %self.topic, queue = q.id, error = %refused("commit offset", &r), "offset not committed")
            }
            Err(e) => {
                tracing::warn!(topic = %self.topic, queue = q.id, error = %e, "offset not committed")
            }
        }
    }
}
