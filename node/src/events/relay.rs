//! The event relay: publishes the outbox to RocketMQ and only then removes
//! it, so an accepted message's events survive a broker outage and a killed
//! pod (a survivor takes the dead pod's shards when their lease expires).
//!
//! Every node runs one. Each outbox shard is relayed by the one pod holding
//! its lease, entry after entry in stream order, and every record of a
//! conversation goes to the queue [`switchboard_events::lane`] picks: one
//! conversation's records keep their order on each topic. A failed send
//! stops the shard's pass (the entries behind it wait, keeping the order) and
//! is retried after [`RETRY_AFTER`]; records already sent for the entry are
//! sent again then, so consumers see each record at least once and dedup by
//! its key.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use switchboard_rocketmq::names::Names;
use switchboard_rocketmq::{Credentials, Producer, Runtime};
use tokio_util::sync::CancellationToken;

use super::{Stream, records};
use crate::backend::BackendError;
use crate::backend::outbox::{OutboxEntry, RedisOutbox};
use crate::metrics::{EventMetrics, StreamLabel};

/// How long a shard's lease lasts without renewal: the longest a dead pod's
/// events wait for a survivor.
pub const LEASE: Duration = Duration::from_secs(10);
/// How often an idle relay looks at the outbox: the usual event latency.
const IDLE_POLL: Duration = Duration::from_millis(50);
/// Wait after a failed pass (broker or Redis away).
pub const RETRY_AFTER: Duration = Duration::from_secs(1);
/// Entries read per shard in one pass.
const PER_SHARD: usize = 64;
/// How often the outbox depth gauge is refreshed.
const DEPTH_EVERY: Duration = Duration::from_secs(2);

/// The relay of one node.
pub struct Relay {
    outbox: RedisOutbox,
    producer: Producer,
    events_topic: String,
    cluster_events_topic: String,
    stop: CancellationToken,
    _rt: Runtime,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("outbox", &self.outbox)
            .field("events_topic", &self.events_topic)
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// Starts the relay's producer (topics `<prefix>-events` and
    /// `<prefix>-cluster-events`).
    pub async fn start(
        outbox: RedisOutbox,
        namesrv: &str,
        prefix: &str,
        credentials: Option<Credentials>,
    ) -> Result<Self, switchboard_rocketmq::Error> {
        let rt = Runtime::new()?;
        let names = Names::new(prefix);
        let producer =
            Producer::start_as(&rt, namesrv, &format!("{prefix}-events"), credentials).await?;
        Ok(Self {
            outbox,
            producer,
            events_topic: names.events_topic(),
            cluster_events_topic: names.cluster_events_topic(),
            stop: CancellationToken::new(),
            _rt: rt,
        })
    }

    /// Relays until [`Relay::stop`], then gives its leases up: the entries
    /// left wait in Redis, durable, and the other pods take the shards at
    /// their next pass (a stopping pod needs no flush).
    pub async fn run(self: Arc<Self>, metrics: EventMetrics) {
        let mut depth_at = tokio::time::Instant::now();
        while !self.stop.is_cancelled() {
            let pause = match self.pass(&metrics).await {
                Ok(0) => IDLE_POLL,
                Ok(_) => Duration::ZERO,
                Err(e) => {
                    tracing::warn!(error = %e, "event relay: will retry");
                    metrics.relay_failures.inc();
                    RETRY_AFTER
                }
            };
            if depth_at.elapsed() >= DEPTH_EVERY {
                depth_at = tokio::time::Instant::now();
                if let Ok(depth) = self.outbox.depth().await {
                    metrics
                        .outbox_depth
                        .set(i64::try_from(depth).unwrap_or(i64::MAX));
                }
            }
            tokio::select! {
                () = self.stop.cancelled() => {}
                () = tokio::time::sleep(pause) => {}
            }
        }
        if let Err(e) = self.outbox.release().await {
            tracing::warn!(error = %e, "event relay: cannot give up the outbox leases");
        }
    }

    /// Asks [`Relay::run`] to finish its pass, give up its leases and return.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// One pass over the shards this pod holds. Returns the entries relayed;
    /// an error when a shard could not be relayed completely.
    async fn pass(&self, metrics: &EventMetrics) -> Result<usize, BackendError> {
        let entries = self.outbox.take(LEASE, PER_SHARD).await?;
        let mut shards: BTreeMap<u32, Vec<OutboxEntry>> = BTreeMap::new();
        for e in entries {
            shards.entry(e.shard).or_default().push(e);
        }
        let results = futures_util::future::join_all(
            shards
                .into_iter()
                .map(|(shard, entries)| self.relay_shard(shard, entries, metrics)),
        )
        .await;
        let mut relayed = 0;
        let mut failed = None;
        for r in results {
            match r {
                Ok(n) => relayed += n,
                Err(e) => failed = Some(e),
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(relayed),
        }
    }

    /// Publishes the entries of one shard in order; removes the ones done.
    async fn relay_shard(
        &self,
        shard: u32,
        entries: Vec<OutboxEntry>,
        metrics: &EventMetrics,
    ) -> Result<usize, BackendError> {
        let mut done = Vec::with_capacity(entries.len());
        let mut failed = None;
        'entries: for entry in &entries {
            let lane = switchboard_events::lane(&entry.lane_key());
            for (stream, record) in records(entry) {
                let topic = match stream {
                    Stream::Events => &self.events_topic,
                    Stream::ClusterEvents => &self.cluster_events_topic,
                };
                if let Err(e) = self.producer.send_record(topic, lane, &record).await {
                    failed = Some(BackendError::Unavailable(format!(
                        "publish to {topic}: {e}"
                    )));
                    break 'entries;
                }
                metrics
                    .published
                    .get_or_create(&StreamLabel {
                        stream: stream.as_str(),
                    })
                    .inc();
            }
            done.push(entry.id.clone());
        }
        self.outbox.remove(shard, &done).await?;
        match failed {
            Some(e) => Err(e),
            None => Ok(done.len()),
        }
    }
}
