//! Outgoing pushes, in order and in batches.
//!
//! Every envelope has a lane: a stable hash of its conversation (of the user,
//! for presence) modulo [`LANES`]. Each (destination pod, lane) has a queue and
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
use crate::backend::{BackendError, BackendResult, Envelope};
use crate::ids::ConversationId;
use crate::metrics::BackendMetrics;
use crate::protocol::ServerFrame;
use crate::telemetry::{self, TraceCtx};

/// Lanes per destination pod: more than the operator's 4 queues per topic.
/// A lane's failed send holds up only that lane's conversations (it gives its
/// send slot back while it waits to try again); a slow one holds one of the
/// pod's [`IN_FLIGHT`] slots until its 3 s timeout.
pub const LANES: u32 = 8;
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
            .send_ordered(topic, lane, &keys, encode(batch))
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

/// A batch on the wire: a JSON array of envelopes.
fn encode(batch: &[Outgoing]) -> Vec<u8> {
    let len = batch.iter().map(|o| o.json.len() + 1).sum::<usize>() + 2;
    let mut body = Vec::with_capacity(len);
    body.push(b'[');
    for (i, o) in batch.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&o.json);
    }
    body.push(b']');
    body
}

/// Reads a body: a batch, or a single envelope (as nodes before batching sent).
pub fn decode(body: &[u8]) -> serde_json::Result<Decoded> {
    if body.first() != Some(&b'[') {
        return serde_json::from_slice(body).map(|e| Decoded {
            envelopes: vec![e],
            unreadable: 0,
        });
    }
    if let Ok(envelopes) = serde_json::from_slice::<Vec<Envelope>>(body) {
        return Ok(Decoded {
            envelopes,
            unreadable: 0,
        });
    }
    // One element this node cannot read (a newer node's kind of envelope during a
    // rolling update, or garbage) must not cost the others.
    let values: Vec<serde_json::Value> = serde_json::from_slice(body)?;
    let all = values.len();
    let envelopes: Vec<Envelope> = values
        .into_iter()
        .filter_map(|v| serde_json::from_value(v).ok())
        .collect();
    Ok(Decoded {
        unreadable: all - envelopes.len(),
        envelopes,
    })
}

/// The envelopes of one bus message.
#[derive(Debug, PartialEq)]
pub struct Decoded {
    /// In the order they were sent.
    pub envelopes: Vec<Envelope>,
    /// Elements of a batch that did not parse, left out.
    pub unreadable: usize,
}

/// The message id of a chat message push, as the RocketMQ message key.
fn key_of(envelope: &Envelope) -> Option<String> {
    match envelope {
        Envelope::ToUsers {
            frame: ServerFrame::Message(m),
            ..
        } => Some(m.msg_id.to_string()),
        _ => None,
    }
}

/// The lane of an envelope: every push about one conversation (messages,
/// receipts, typing) shares one; presence goes by user.
pub fn lane_of(envelope: &Envelope) -> u32 {
    let mut h = Fnv::new();
    match envelope {
        Envelope::ToUsers { frame, users, .. } => match conversation_of(frame) {
            Some(ConversationId::Direct(a, b)) => {
                h.write(b"dm:");
                h.write(a.as_str().as_bytes());
                h.write(b":");
                h.write(b.as_str().as_bytes());
            }
            Some(ConversationId::Group(g)) => {
                h.write(b"group:");
                h.write(g.as_str().as_bytes());
            }
            None => match frame {
                // A membership change keeps its order with the group's
                // messages (a member sees `added` before the notice after it).
                ServerFrame::Group { group, .. } => {
                    h.write(b"group:");
                    h.write(group.as_str().as_bytes());
                }
                _ => h.write(users.first().map_or("", |u| u.as_str()).as_bytes()),
            },
        },
        Envelope::Presence(p) => h.write(p.user.as_str().as_bytes()),
    }
    h.0 % LANES
}

fn conversation_of(frame: &ServerFrame) -> Option<&ConversationId> {
    match frame {
        ServerFrame::Message(m) => Some(&m.conversation),
        ServerFrame::Sent { conversation, .. }
        | ServerFrame::Delivered { conversation, .. }
        | ServerFrame::Read { conversation, .. }
        | ServerFrame::Recalled { conversation, .. }
        | ServerFrame::Typing { conversation, .. } => Some(conversation),
        _ => None,
    }
}

/// 32-bit FNV-1a: stable across processes and versions (unlike std's hasher),
/// so every pod puts a conversation on the same lane and queue.
struct Fnv(u32);

impl Fnv {
    fn new() -> Self {
        Self(0x811c_9dc5)
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u32::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0193);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::ids::UserId;
    use crate::model::Presence;

    fn typing(conversation: &str, to: &str) -> Envelope {
        Envelope::ToUsers {
            users: vec![UserId::parse(to).unwrap()],
            except: None,
            frame: ServerFrame::Typing {
                conversation: ConversationId::parse(conversation).unwrap(),
                user: UserId::parse("alice").unwrap(),
                state: crate::protocol::TypingState::Start,
            },
            sent_at_us: 1,
            trace: None,
        }
    }

    #[test]
    fn a_conversation_keeps_its_lane_whoever_receives_it() {
        let a = lane_of(&typing("group:g1", "bob"));
        assert_eq!(a, lane_of(&typing("group:g1", "carol")));
        assert!(a < LANES);
        // FNV-1a of "group:g1" is fixed: a change here moves conversations
        // between queues, which reorders them during a rolling update.
        assert_eq!(a, 0xa92e_4aca % LANES);
        let lanes: std::collections::HashSet<u32> = (0..64)
            .map(|i| lane_of(&typing(&format!("group:g{i}"), "bob")))
            .collect();
        assert!(lanes.len() > LANES as usize / 2, "{lanes:?}");
    }

    #[test]
    fn a_group_change_takes_its_group_lane() {
        let g = crate::ids::GroupId::parse("g1").unwrap();
        let change = Envelope::ToUsers {
            users: vec![UserId::parse("carol").unwrap()],
            except: None,
            frame: ServerFrame::Group {
                group: g,
                change: crate::protocol::server::GroupChange::Added,
                users: Vec::new(),
                members: Vec::new(),
                owner: None,
                title: None,
            },
            sent_at_us: 0,
            trace: None,
        };
        assert_eq!(lane_of(&change), lane_of(&typing("group:g1", "bob")));
    }

    #[test]
    fn batches_and_single_envelopes_decode() {
        let (a, b) = (typing("dm:alice:bob", "bob"), typing("group:g", "bob"));
        let batch: Vec<Outgoing> = [&a, &b]
            .iter()
            .map(|e| Outgoing {
                json: serde_json::to_vec(e).unwrap(),
                key: None,
                queued: Instant::now(),
                _span: None,
            })
            .collect();
        assert_eq!(
            decode(&encode(&batch)).unwrap().envelopes,
            vec![a.clone(), b.clone()]
        );
        assert_eq!(
            decode(&serde_json::to_vec(&a).unwrap()).unwrap().envelopes,
            vec![a.clone()]
        );
        // An element it cannot read is left out; the others are kept, in order.
        let mixed = format!(
            "[{},{{\"Unknown\":{{}}}},{}]",
            serde_json::to_string(&a).unwrap(),
            serde_json::to_string(&b).unwrap()
        );
        assert_eq!(
            decode(mixed.as_bytes()).unwrap(),
            Decoded {
                envelopes: vec![a, b],
                unreadable: 1
            }
        );
        assert!(decode(b"{\"nope\":1}").is_err());
        assert!(decode(b"[1,").is_err());
        assert!(decode(b"").is_err());
        let p = Envelope::Presence(Presence {
            user: UserId::parse("bob").unwrap(),
            online: true,
            devices: 1,
            pods: vec![],
            last_seen: None,
        });
        assert!(lane_of(&p) < LANES);
    }
}
