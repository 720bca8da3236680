//! Outgoing pushes, in order and in batches.
//!
//! Every envelope has a lane: a stable hash of its conversation (of the user,
//! for presence) modulo [`super::wire::LANES`]. Each (destination pod, lane) has a queue and
//! a task that sends what waits in it as one RocketMQ message (a JSON array of
//! envelopes, up to [`MAX_BATCH`] of them), to queue `lane % queues` of the pod's
//! topic, one send at a time. So pushes of one conversation from this pod are
//! stored in one queue in the order they were routed, and the destination's
//! in-order consumer delivers them in that order. Batching is what an idle lane
//! does not do: it sends a lone push at once; under load, what piled up during
//! one send goes in the next.
//!
//! A failed send is retried with backoff and holds the lane (later pushes wait
//! behind it, so the order survives a broker restart) until its oldest push
//! would be stale: then the stale ones are dropped (their messages are in the
//! recipients' inboxes) and the lane moves on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchboard_rocketmq::direct::OrderedProducer;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tracing::warn;

use super::STALE_AFTER;
use super::wire::{encode, key_of, lane_of};
use crate::backend::{BackendError, BackendResult, Envelope};
use crate::metrics::BackendMetrics;
use crate::telemetry::{self, TraceCtx};

/// Sends in flight to one pod at once, whatever their lanes: the other lanes
/// gather what is routed meanwhile into their next batch, so under load the
/// broker gets fewer, larger messages; an idle lane still sends at once.
pub const IN_FLIGHT: usize = 2;
/// Envelopes in one RocketMQ message at most.
pub const MAX_BATCH: usize = 128;
/// A batch stops growing past this many bytes (RocketMQ takes up to 4 MiB).
const MAX_BATCH_BYTES: usize = 256 * 1024;
/// Message keys (broker index entries) per batch at most.
const MAX_KEYS: usize = 32;
/// Pushes waiting in all lanes together; at ~1 KB each, a bounded few MB while
/// the broker is away. More are refused (the message stays in the inbox).
pub const CAPACITY: usize = 8192;
/// First and largest pause between two tries of one failed send.
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// One queued push, already encoded.
struct Outgoing {
    json: Vec<u8>,
    key: Option<String>,
    queued: Instant,
    /// The `bus.publish` span of a traced push: ends when the push is dropped
    /// (sent or given up).
    _span: Option<tracing::Span>,
}

/// The `bus.publish` span of a traced envelope, and the envelope carrying
/// that span's context instead of its parent's.
fn publish_span(topic: &str, envelope: &Envelope) -> (Option<tracing::Span>, Option<Envelope>) {
    let Envelope::ToUsers {
        trace: Some(parent),
        ..
    } = envelope
    else {
        return (None, None);
    };
    let Some(parent) = TraceCtx::parse(parent) else {
        return (None, None);
    };
    let span = telemetry::publish_span(&parent, topic);
    let Some(own) = TraceCtx::of(&span) else {
        return (None, None);
    };
    let mut traced = envelope.clone();
    if let Envelope::ToUsers { trace, .. } = &mut traced {
        *trace = Some(own.header());
    }
    (Some(span), Some(traced))
}

/// The lanes of every destination pod.
pub struct Lanes {
    producer: Arc<OrderedProducer>,
    lanes: Mutex<HashMap<(String, u32), mpsc::UnboundedSender<Outgoing>>>,
    /// Per destination topic: the [`IN_FLIGHT`] sends its lanes share.
    in_flight: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Its `bus_outbox` gauge counts the pushes queued or being sent, in all
    /// lanes.
    metrics: BackendMetrics,
}

impl Lanes {
    pub fn new(producer: OrderedProducer, metrics: BackendMetrics) -> Self {
        Self {
            producer: Arc::new(producer),
            lanes: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// Pushes queued or in flight.
    pub fn queued(&self) -> usize {
        usize::try_from(self.metrics.bus_outbox.get()).unwrap_or(0)
    }

    /// Queues `envelope` for `topic` on its lane. Refused only when
    /// [`CAPACITY`] pushes are waiting already.
    pub fn push(&self, topic: &str, envelope: &Envelope) -> BackendResult<()> {
        let queued = &self.metrics.bus_outbox;
        if usize::try_from(queued.inc()).unwrap_or(0) >= CAPACITY {
            queued.dec();
            self.metrics.bus_drop("outbox_full", 1);
            return Err(BackendError::Unavailable(
                "the bus outbox is full (broker away?)".into(),
            ));
        }
        // A traced push gets a `bus.publish` span, from now until RocketMQ stored
        // it, and carries that span's context to the destination.
        let (span, traced) = publish_span(topic, envelope);
        let json = match serde_json::to_vec(traced.as_ref().unwrap_or(envelope)) {
            Ok(json) => json,
            Err(e) => {
                queued.dec();
                return Err(BackendError::Unavailable(format!("encoding a push: {e}")));
            }
        };
        let out = Outgoing {
            json,
            key: key_of(envelope),
            queued: Instant::now(),
            _span: span,
        };
        let lane = lane_of(envelope);
        let mut lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
        let tx = lanes.entry((topic.to_owned(), lane)).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let sends = Arc::clone(
                self.in_flight
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(topic.to_owned())
                    .or_insert_with(|| Arc::new(Semaphore::new(IN_FLIGHT))),
            );
            tokio::spawn(run_lane(
                Arc::clone(&self.producer),
                topic.to_owned(),
                lane,
                rx,
                sends,
                self.metrics.clone(),
            ));
            tx
        });
        if tx.send(out).is_err() {
            queued.dec();
            return Err(BackendError::Unavailable("the bus is stopped".into()));
        }
        Ok(())
    }
}

/// Sends what waits in one lane, a batch at a time, until the lanes are dropped.
async fn run_lane(
    producer: Arc<OrderedProducer>,
    topic: String,
    lane: u32,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    sends: Arc<Semaphore>,
    metrics: BackendMetrics,
) {
    let mut batch = Vec::new();
    while let Some(first) = rx.recv().await {
        // Wait for a send slot of this pod, then let the tasks that are ready to
        // route run once: what they push joins this batch.
        let Ok(slot) = Arc::clone(&sends).acquire_owned().await else {
            return;
        };
        tokio::task::yield_now().await;
        let mut bytes = first.json.len();
        batch.push(first);
        while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            let Ok(next) = rx.try_recv() else { break };
            bytes += next.json.len();
            batch.push(next);
        }
        let n = batch.len();
        send(
            &producer,
            &topic,
            lane,
            &mut batch,
            (&sends, slot),
            &metrics,
        )
        .await;
        batch.clear();
        metrics
            .bus_outbox
            .dec_by(i64::try_from(n).unwrap_or(i64::MAX));
    }
}

/// Sends one batch, retrying with backoff; drops what turns stale meanwhile.
/// Holds a send slot of the pod while a try is under way, not while it waits
/// to try again (a failing lane does not hold up the others).
async fn send(
    producer: &OrderedProducer,
    topic: &str,
    lane: u32,
    batch: &mut Vec<Outgoing>,
    (sends, mut slot): (&Arc<Semaphore>, OwnedSemaphorePermit),
    metrics: &BackendMetrics,
) {
    let mut pause = RETRY_FIRST;
    let mut tries = 1u32;
    loop {
        let before = batch.len();
        batch.retain(|o| o.queued.elapsed() + pause < STALE_AFTER || tries == 1);
        if batch.len() < before {
            metrics.bus_drop("stale", (before - batch.len()) as u64);
            warn!(
                %topic, lane, tries, dropped = before - batch.len(),
                "pushes given up; their messages stay in the recipients' inboxes"
            );
        }
        if batch.is_empty() {
            return;
        }
        let keys: Vec<String> = batch
            .iter()
            .filter_map(|o| o.key.clone())
            .take(MAX_KEYS)
            .collect();
        match producer
            .send_ordered(
                topic,
                lane,
                &keys,
                encode(batch.iter().map(|o| o.json.as_slice())),
            )
            .await
        {
            Ok(()) => {
                metrics.bus_batch_pushes.observe(batch.len() as f64);
                for o in batch.iter() {
                    metrics
                        .bus_publish_seconds
                        .observe(o.queued.elapsed().as_secs_f64());
                }
                return;
            }
            Err(e) => {
                metrics.bus_publish_failures.inc();
                if tries == 1 {
                    warn!(%topic, lane, error = %e, "push failed; retrying (the lane waits)");
                }
                drop(slot);
                tokio::time::sleep(pause).await;
                let Ok(again) = Arc::clone(sends).acquire_owned().await else {
                    return;
                };
                slot = again;
                pause = (pause * 2).min(RETRY_MAX);
                tries += 1;
            }
        }
    }
}
