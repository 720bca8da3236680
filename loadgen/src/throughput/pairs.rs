//! The tasks of one sender/receiver pair and the pacer that feeds the
//! senders, in either protocol ([`Proto`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;

use crate::proto::Ws;
use crate::proto::{Event, Proto};
use crate::report::Counts;
use crate::sys;

pub type Sink = SplitSink<Ws, Message>;
pub type Stream = SplitStream<Ws>;

/// What the pacer hands a sender: a message's scheduled time (ns since the
/// start), or this, asking it to write the protocol's pong.
pub const PONG: u64 = u64::MAX;

/// Counters of one pair, shared by its tasks and the progress loop.
#[derive(Debug, Default)]
pub struct PairStats {
    /// `send` frames written.
    pub written: AtomicU64,
    /// `sent` replies.
    pub sent_ok: AtomicU64,
    /// `error` replies to the sender.
    pub send_errors: AtomicU64,
    /// `delivered` receipts (after the receiver's ack).
    pub delivered: AtomicU64,
    /// `message` frames at the receiver.
    pub received: AtomicU64,
    /// Messages that came after a later one of the same sender (by seq
    /// where the server gives one, else by scheduled send time).
    pub out_of_order: AtomicU64,
    /// Connections that ended before the run did.
    pub closed_early: AtomicU64,
}

/// What every task shares.
#[derive(Debug)]
pub struct Shared {
    pub start: Instant,
    pub warmup_ns: u64,
    /// Largest receive time seen, ns since `start`.
    pub last_receive_ns: AtomicU64,
    pub errors: Mutex<Counts>,
    pub proto: Proto,
}

impl Shared {
    pub fn new(start: Instant, warmup_ns: u64, proto: Proto) -> Self {
        Self {
            start,
            warmup_ns,
            last_receive_ns: AtomicU64::new(0),
            errors: Mutex::new(BTreeMap::new()),
            proto,
        }
    }

    pub fn error(&self, code: &str) {
        let mut e = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        *e.entry(code.to_owned()).or_default() += 1;
    }

    pub fn ns_since_start(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.start).as_nanos() as u64
    }
}

pub fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    // Nanoseconds, 1 µs resolution up to 2 ms, 3 significant digits above;
    // anything beyond 2 minutes is clamped.
    Ok(Histogram::new_with_bounds(1_000, 120_000_000_000, 3)?)
}

/// Hands each message to its sender at its due time; returns how far behind
/// schedule it fell at worst. Runs on its own thread: tokio's timers have
/// millisecond granularity, which would add up to a millisecond of
/// scheduling delay to every measured latency.
pub fn pace(
    start: Instant,
    rate: u64,
    total: u64,
    tick: Duration,
    txs: Vec<mpsc::UnboundedSender<u64>>,
) -> Duration {
    sys::minimize_timer_slack();
    let n = txs.len() as u64;
    let due_ns = |j: u64| ((j as u128 * 1_000_000_000) / rate as u128) as u64;
    let mut worst = Duration::ZERO;
    let mut last_wake = Instant::now();
    let mut j = 0;
    while j < total {
        let due = start + Duration::from_nanos(due_ns(j));
        let wake = due.max(last_wake + tick);
        let now = Instant::now();
        if wake > now {
            std::thread::sleep(wake - now);
            continue;
        }
        last_wake = now;
        worst = worst.max(now - due);
        let now_ns = now.duration_since(start).as_nanos() as u64;
        while j < total && due_ns(j) <= now_ns {
            // A closed channel means that sender died; it is counted there.
            let _ = txs[(j % n) as usize].send(due_ns(j));
            j += 1;
        }
    }
    worst
}

/// Writes the messages the pacer hands over, batching those already due,
/// and the pongs its reader asks for. Returns the sink so it can be closed
/// at the end (`None` if it failed).
pub async fn write_loop(
    mut sink: Sink,
    mut rx: mpsc::UnboundedReceiver<u64>,
    to: String,
    content_bytes: usize,
    stats: Arc<PairStats>,
    shared: Arc<Shared>,
) -> Option<Sink> {
    let mut batch = Vec::new();
    let mut k: u64 = 0;
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        for sched_ns in batch.drain(..) {
            let frame = if sched_ns == PONG {
                match shared.proto.pong() {
                    Some(pong) => pong.to_owned(),
                    None => continue,
                }
            } else {
                k += 1;
                let write_ns = shared.ns_since_start(Instant::now());
                let mut content = format!("{sched_ns} {write_ns} ");
                let pad = content_bytes.saturating_sub(content.len());
                content.extend(std::iter::repeat_n('x', pad));
                shared.proto.send_frame(k, &to, &content)
            };
            if sink.feed(Message::text(frame)).await.is_err() {
                stats.closed_early.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            if sched_ns != PONG {
                stats.written.fetch_add(1, Ordering::Relaxed);
            }
        }
        if sink.flush().await.is_err() {
            stats.closed_early.fetch_add(1, Ordering::Relaxed);
            return None;
        }
    }
    Some(sink)
}

/// Reads a sender's replies: `sent`, `delivered`, `error`; a ping is
/// answered through the writer (`pong`).
pub async fn sender_read_loop(
    mut stream: Stream,
    stats: Arc<PairStats>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    pong: mpsc::UnboundedSender<u64>,
) {
    loop {
        let msg = tokio::select! {
            biased;
            _ = stop.changed() => return,
            m = stream.next() => m,
        };
        match msg {
            Some(Ok(Message::Text(t))) => shared.proto.events(t.as_str(), |e| match e {
                Event::Sent => {
                    stats.sent_ok.fetch_add(1, Ordering::Relaxed);
                }
                Event::Delivered => {
                    stats.delivered.fetch_add(1, Ordering::Relaxed);
                }
                Event::Error(code) => {
                    stats.send_errors.fetch_add(1, Ordering::Relaxed);
                    shared.error(&code);
                }
                Event::Ping => {
                    let _ = pong.send(PONG);
                }
                Event::Unparsable => shared.error("loadgen_unparsable_frame"),
                Event::Message { .. } | Event::Other => {}
            }),
            Some(Ok(Message::Close(_)) | Err(_)) | None => {
                stats.closed_early.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Some(Ok(_)) => {}
        }
    }
}

/// What a receiver hands back at the end: latency from the scheduled send
/// time, latency from the actual write, and its sink to close.
pub type Received = (Histogram<u64>, Histogram<u64>, Sink);

/// What a receiver's reading decided for its writing side.
#[derive(Default)]
struct Replies {
    acks: Vec<String>,
    pongs: usize,
}

/// Reads a receiver's messages, records their latency and acks them in
/// batches (where the protocol has acks).
pub async fn receive_loop(
    mut sink: Sink,
    mut stream: Stream,
    stats: Arc<PairStats>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    ack_batch: usize,
    ack_interval: Duration,
) -> anyhow::Result<Received> {
    let mut hist = new_histogram()?;
    let mut hist_write = new_histogram()?;
    let mut out = Replies::default();
    let mut ack_at: Option<tokio::time::Instant> = None;
    let mut last_order: Option<u64> = None;
    let mut alive = true;
    let proto = shared.proto;
    let acks = ack_batch > 0 && proto.ack_frame(&[]).is_some();
    while alive {
        let timer = async {
            match ack_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        let msg = tokio::select! {
            biased;
            _ = stop.changed() => break,
            _ = timer => {
                alive = send_ack(&mut sink, proto, &mut out.acks).await;
                ack_at = None;
                continue;
            }
            m = stream.next() => m,
        };
        let now = Instant::now();
        let text = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(_)) | Err(_)) | None => {
                stats.closed_early.fetch_add(1, Ordering::Relaxed);
                break;
            }
            Some(Ok(_)) => continue,
        };
        let now_ns = shared.ns_since_start(now);
        proto.events(text.as_str(), |e| match e {
            Event::Message {
                msg_id,
                seq,
                content,
            } => {
                stats.received.fetch_add(1, Ordering::Relaxed);
                shared.last_receive_ns.fetch_max(now_ns, Ordering::Relaxed);
                let mut times = content.split(' ').map(|s| s.parse::<u64>().ok());
                let (sched, written) = match (times.next(), times.next()) {
                    (Some(Some(s)), Some(Some(w))) => (Some(s), Some(w)),
                    _ => (None, None),
                };
                // Switchboard numbers a conversation (seq); elsewhere the
                // sender's schedule is the order it wrote in.
                let order = seq.or(sched).unwrap_or(0);
                if last_order.is_some_and(|last| order <= last) {
                    stats.out_of_order.fetch_add(1, Ordering::Relaxed);
                }
                last_order = last_order.max(Some(order));
                if let (Some(sched), Some(written)) = (sched, written)
                    && sched >= shared.warmup_ns
                {
                    hist.saturating_record(now_ns.saturating_sub(sched));
                    hist_write.saturating_record(now_ns.saturating_sub(written));
                }
                if acks && let Some(id) = msg_id {
                    out.acks.push(id.into_owned());
                }
            }
            Event::Error(code) => shared.error(&code),
            Event::Ping => out.pongs += 1,
            Event::Unparsable => shared.error("loadgen_unparsable_frame"),
            Event::Sent | Event::Delivered | Event::Other => {}
        });
        if let Some(pong) = proto.pong() {
            for _ in 0..std::mem::take(&mut out.pongs) {
                alive &= sink.send(Message::text(pong)).await.is_ok();
            }
        }
        if out.acks.len() >= ack_batch.max(1) {
            alive &= send_ack(&mut sink, proto, &mut out.acks).await;
            ack_at = None;
        } else if !out.acks.is_empty() && ack_at.is_none() {
            ack_at = Some(tokio::time::Instant::now() + ack_interval);
        }
    }
    if !alive {
        stats.closed_early.fetch_add(1, Ordering::Relaxed);
    }
    Ok((hist, hist_write, sink))
}

/// Acks the pending message ids in one frame; false if the write failed.
async fn send_ack(sink: &mut Sink, proto: Proto, pending: &mut Vec<String>) -> bool {
    if pending.is_empty() {
        return true;
    }
    let Some(frame) = proto.ack_frame(pending) else {
        pending.clear();
        return true;
    };
    pending.clear();
    sink.send(Message::text(frame)).await.is_ok()
}

pub async fn close_sink(mut sink: Sink) {
    let _ = tokio::time::timeout(Duration::from_secs(2), sink.close()).await;
}
