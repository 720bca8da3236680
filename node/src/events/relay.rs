//! The event relay: publishes the outbox to RocketMQ and only then removes
//! it, so an accepted message's events survive a broker outage and a killed
//! pod (a survivor takes the dead pod's shards when their lease expires).
//!
//! Every node runs one. Each outbox shard is relayed by the one pod holding
//! its lease. A pass sends the records of a shard's pending entries, in
//! stream order, as one batch per topic to the shard's queue
//! (`shard % queues`), so one conversation's records keep their order on
//! each topic. A failed batch stops the shard's pass (nothing is removed,
//! keeping the order) and is retried after [`RETRY_AFTER`]; records already
//! stored are sent again then, so consumers see each record at least once
//! and dedup by its key. A shard's pass is cut off after half the lease, so
//! it ends before another pod could take the lease over.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use switchboard_rocketmq::names::Names;
use switchboard_rocketmq::{Credentials, Producer, Record, Runtime};
use tokio_util::sync::CancellationToken;

use super::{Stream, Streams, records};
use crate::backend::outbox::{OutboxEntry, RedisOutbox};
use crate::backend::{BackendError, OutboxRelay};
use crate::metrics::{EventMetrics, StreamLabel};

/// How long a shard's lease lasts without renewal: the longest a dead pod's
/// events wait for a survivor.
pub const LEASE: Duration = Duration::from_secs(10);
/// How often an idle relay looks at the outbox: the usual event latency.
const IDLE_POLL: Duration = Duration::from_millis(50);
/// Wait after a failed pass (broker or Redis away).
pub const RETRY_AFTER: Duration = Duration::from_secs(1);
/// Most bytes of record bodies in one batch (the broker takes 4 MiB).
const BATCH_BYTES: usize = 1024 * 1024;
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
    /// The streams switched on; records of the others are dropped.
    streams: Streams,
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

impl OutboxRelay for Relay {
    fn run(self: Arc<Self>, metrics: EventMetrics) -> futures_util::future::BoxFuture<'static, ()> {
        Box::pin(self.relay(metrics))
    }

    /// Asks the relay to finish its pass, give up its leases and return.
    fn stop(&self) {
        self.stop.cancel();
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
        streams: Streams,
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
            streams,
            stop: CancellationToken::new(),
            _rt: rt,
        })
    }

    /// Relays until stopped, then gives its leases up: the entries left
    /// wait in Redis, durable, and the other pods take the shards at their
    /// next pass (a stopping pod needs no flush).
    async fn relay(self: Arc<Self>, metrics: EventMetrics) {
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
                        .set(i64::try_from(depth.total).unwrap_or(i64::MAX));
                    metrics
                        .outbox_fullest_shard
                        .set(i64::try_from(depth.fullest).unwrap_or(i64::MAX));
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

    /// One pass over the shards this pod holds. Returns the entries relayed;
    /// an error when a shard could not be relayed completely.
    async fn pass(&self, metrics: &EventMetrics) -> Result<usize, BackendError> {
        let entries = self.outbox.take(LEASE, PER_SHARD).await?;
        let mut shards: BTreeMap<u32, Vec<OutboxEntry>> = BTreeMap::new();
        for e in entries {
            shards.entry(e.shard).or_default().push(e);
        }
        let results = futures_util::future::join_all(shards.into_iter().map(|(shard, entries)| {
            let pass = self.relay_shard(shard, entries, metrics);
            async move {
                tokio::time::timeout(LEASE / 2, pass)
                    .await
                    .unwrap_or_else(|_| {
                        Err(BackendError::Unavailable(format!(
                            "shard {shard}: pass cut off after {:?}",
                            LEASE / 2
                        )))
                    })
            }
        }))
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

    /// Publishes the records of one shard's entries, in order, as one batch per
    /// topic to the shard's queue; removes the entries once both are stored.
    async fn relay_shard(
        &self,
        shard: u32,
        entries: Vec<OutboxEntry>,
        metrics: &EventMetrics,
    ) -> Result<usize, BackendError> {
        let mut events = Vec::new();
        let mut cluster_events = Vec::new();
        for entry in &entries {
            for (stream, record) in records(entry) {
                if !self.streams.publishes(stream) {
                    continue;
                }
                match stream {
                    Stream::Events => events.push(record),
                    Stream::ClusterEvents => cluster_events.push(record),
                }
            }
        }
        for (stream, topic, batch) in [
            (Stream::Events, &self.events_topic, events),
            (
                Stream::ClusterEvents,
                &self.cluster_events_topic,
                cluster_events,
            ),
        ] {
            for chunk in chunks(&batch) {
                self.producer
                    .send_batch(topic, shard, chunk)
                    .await
                    .map_err(|e| BackendError::Unavailable(format!("publish to {topic}: {e}")))?;
                metrics
                    .published
                    .get_or_create(&StreamLabel {
                        stream: stream.as_str(),
                    })
                    .inc_by(chunk.len() as u64);
            }
        }
        let ids: Vec<String> = entries.iter().map(|e| e.id.clone()).collect();
        self.outbox.remove(shard, &ids).await?;
        Ok(ids.len())
    }
}

/// Consecutive runs of `records` of at most [`BATCH_BYTES`] of bodies (at
/// least one record each), within the broker's message size limit.
fn chunks(records: &[Record]) -> Vec<&[Record]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, r) in records.iter().enumerate() {
        if i > start && bytes + r.body.len() > BATCH_BYTES {
            out.push(&records[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += r.body.len();
    }
    if start < records.len() {
        out.push(&records[start..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_keep_order_and_stay_under_the_limit() {
        let r = |n: usize| Record {
            body: vec![0; n],
            ..Record::default()
        };
        let records = vec![
            r(BATCH_BYTES / 2),
            r(BATCH_BYTES / 2),
            r(1),
            r(BATCH_BYTES * 2),
            r(1),
        ];
        let sizes: Vec<usize> = chunks(&records).iter().map(|c| c.len()).collect();
        assert_eq!(sizes, [2, 1, 1, 1]);
        assert!(chunks(&[]).is_empty());
    }
}
