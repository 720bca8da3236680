//! The WebSocket endpoint: upgrade (auth, admission) and the per-connection
//! reader and writer (two futures of the connection's one task).

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{FutureExt, SinkExt, StreamExt};
use tracing::{debug, error};

use crate::api_error::ApiError;
use crate::hub::ConnHandle;
use crate::metrics::{FrameLabel, PathLabel};
use crate::node::Node;
use crate::protocol::{self, CloseCode, Dialect, ErrorCode, FrameError, ServerFrame};
use crate::telemetry;

/// Frames written per flush at most, so one busy connection cannot starve
/// its own reader's replies for long.
const WRITE_BATCH: usize = 64;

/// `GET /ws`: protocol v1.
pub async fn ws_v1(
    State(node): State<Arc<Node>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    upgrade(node, q, headers, ws, Dialect::V1)
}

/// `GET /ws/chat`: the seed service's endpoint and frame shapes.
pub async fn ws_seed(
    State(node): State<Arc<Node>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    upgrade(node, q, headers, ws, Dialect::Seed)
}

fn upgrade(
    node: Arc<Node>,
    q: HashMap<String, String>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
    dialect: Dialect,
) -> Response {
    if node.is_draining() {
        node.metrics.error(ErrorCode::Draining);
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Draining,
            "node is draining; connect to another",
        )
        .into_response();
    }
    let user = match node.auth.authenticate(&q, &headers) {
        Ok(u) => u,
        Err(e) => {
            node.metrics.error(ErrorCode::Unauthorized);
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthorized,
                e.to_string(),
            )
            .into_response();
        }
    };
    if !node.admit() {
        node.metrics.error(ErrorCode::ServerFull);
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::ServerFull,
            "connection limit reached",
        )
        .into_response();
    }
    let max = node.cfg.max_frame_bytes;
    let failed = node.clone();
    // A client that offered `switchboard.v1` (beside its `bearer.<token>`) gets
    // it back; browsers fail a handshake whose offered protocols all go unanswered.
    ws.protocols([crate::auth::SUBPROTOCOL])
        .max_message_size(max)
        .max_frame_size(max)
        // Small buffers: most connections are idle most of the time, and
        // per-connection memory is what limits how many one pod can hold.
        // (1 KiB measured 3 KB less per idle connection than 4 KiB, 512 B
        // another 0.5 KB; a chat frame is a few hundred bytes, and a bigger
        // one grows the buffer as it arrives.)
        .read_buffer_size(512)
        // Frames of one writer batch are coalesced up to this size and written
        // with one system call at the flush.
        .write_buffer_size(8 * 1024)
        .on_failed_upgrade(move |e| {
            failed.release();
            debug!(error = %e, "websocket upgrade failed");
        })
        .on_upgrade(move |socket| {
            // Split before the connection's future is made: an argument of an
            // async fn keeps its slot for the future's whole life, and a
            // `WebSocket` is 368 bytes of every connection's memory.
            let (sink, stream) = socket.split();
            async move {
                // Returned however the connection ends, a panic included.
                let _slot = Slot(&node);
                run_connection(&node, sink, stream, user, dialect).await;
            }
        })
}

/// A connection slot taken by [`Node::admit`], returned when dropped.
struct Slot<'a>(&'a Node);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.release();
    }
}

async fn run_connection(
    node: &Arc<Node>,
    sink: SplitSink<WebSocket, Message>,
    stream: SplitStream<WebSocket>,
    user: crate::ids::UserId,
    dialect: Dialect,
) {
    // The connection task lives as long as the connection, so its future's
    // size is per-connection memory: the big, short-lived futures (open,
    // handle, close) are boxed so they are only allocated while they run.
    let conn = Box::pin(node.open(user, dialect)).await;
    // One task runs both halves: the writer and the reader are two futures
    // polled side by side (`join`), so a frame being handled (a store round
    // trip) does not hold up what is written to this client meanwhile, and a
    // client that stops reading does not stop its frames being read. (Two
    // tasks measured the same CPU per message and memory per connection;
    // docs/benchmarks.md. The futures are built in place, not bound to
    // variables first: an async block keeps a moved-from variable's slot,
    // which counted their size twice per connection.)
    //
    // A panic while registering or serving (a bug) ends this connection,
    // not the node's view of it: the connection is still closed and
    // unregistered below.
    let served = AssertUnwindSafe(async {
        Box::pin(node.register(&conn)).await;
        // Read before the writer starts, so before the client has its welcome.
        let missed = Box::pin(node.missed(&conn)).await;
        let (reason, ()) = tokio::join!(
            async {
                // The inbox replay is queued before any frame of the client is
                // read, so every answer the client gets comes after its missed
                // messages.
                Box::pin(crate::history::replay(&conn, missed)).await;
                let reason = read_loop(node, &conn, stream).await;
                // Stops the writer (it sends the close frame, if any).
                conn.closed().cancel();
                reason
            },
            write_loop(node, &conn, sink),
        );
        reason
    })
    .catch_unwind()
    .await;
    let reason = served.unwrap_or_else(|_| {
        error!(conn = %conn.id, "connection task panicked; closing it");
        conn.writer_gone();
        "internal_error"
    });
    Box::pin(node.close(&conn, reason)).await;
}

/// Awaits one write to the client (a frame into the socket's buffer, or a
/// flush); false if it failed, or if it is still pending after `stall`: the
/// client stopped reading (full socket buffers), and would otherwise hold its
/// writer, its connection and its slot forever. Polled once first, so the
/// usual write that completes at once arms no timer (and the connection's
/// future keeps no room for one).
async fn write_within<E>(stall: Duration, write: impl Future<Output = Result<(), E>>) -> bool {
    let mut write = std::pin::pin!(write);
    match std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await {
        Poll::Ready(r) => r.is_ok(),
        // Boxed: the timer only takes memory while a write waits.
        Poll::Pending => matches!(
            Box::pin(tokio::time::timeout(stall, write)).await,
            Ok(Ok(()))
        ),
    }
}

/// How long a connection may go without a frame from its client (3
/// heartbeat intervals), or with a write to it pending, before it is closed.
fn silence_limit(node: &Node) -> Duration {
    node.cfg.heartbeat_interval * 3
}

/// Reads client frames until the connection ends; returns why it ended.
async fn read_loop(
    node: &Node,
    conn: &Arc<ConnHandle>,
    mut stream: SplitStream<WebSocket>,
) -> &'static str {
    let idle = silence_limit(node);
    let mut bucket = TokenBucket::new(node.cfg.rate_limit, node.cfg.rate_burst);
    let limits = node.parse_limits();
    loop {
        let next = tokio::select! {
            _ = conn.closed().cancelled() => {
                return conn.close_code().map_or("write_failed", CloseCode::reason);
            }
            next = tokio::time::timeout(idle, stream.next()) => next,
        };
        let msg = match next {
            Err(_) => {
                conn.close_with(CloseCode::IdleTimeout);
                return CloseCode::IdleTimeout.reason();
            }
            Ok(None) => return "client_gone",
            Ok(Some(Err(e))) => {
                let text = e.to_string();
                if text.contains("too long") || text.contains("too big") {
                    conn.close_with(CloseCode::TooBig);
                    return CloseCode::TooBig.reason();
                }
                debug!(error = %text, "websocket read failed");
                return "read_error";
            }
            Ok(Some(Ok(m))) => m,
        };
        let text = match msg {
            Message::Text(t) => t,
            Message::Binary(_) => {
                count_in(node, "binary");
                if bucket.take() {
                    node.send_error(
                        conn,
                        FrameError::new(
                            ErrorCode::BinaryNotSupported,
                            "binary frames are not supported; send JSON text",
                        ),
                    );
                } else {
                    refuse_rate(node, conn, None);
                }
                continue;
            }
            Message::Close(_) => return "client_closed",
            // axum answers pings itself; any frame counts as liveness.
            Message::Ping(_) | Message::Pong(_) => continue,
        };
        if !bucket.take() {
            count_in(node, "rate_limited");
            refuse_rate(node, conn, Some(text.as_str()));
            continue;
        }
        match protocol::parse(text.as_str(), &conn.user, limits) {
            Ok(frame) => {
                count_in(node, frame.kind());
                if let Err(e) = Box::pin(node.handle(conn, frame)).await {
                    node.send_error(conn, e);
                }
            }
            Err(e) => {
                count_in(node, "invalid");
                node.send_error(conn, e);
            }
        }
    }
}

fn count_in(node: &Node, frame: &'static str) {
    node.metrics
        .frames_in
        .get_or_create(&FrameLabel { frame })
        .inc();
}

fn refuse_rate(node: &Node, conn: &ConnHandle, text: Option<&str>) {
    // Only the client_msg_id is looked at: the frame itself is not parsed.
    let cid = text.and_then(protocol::client_msg_id_of);
    let mut e = FrameError::new(
        ErrorCode::RateLimited,
        "rate limit exceeded; slow down and resend",
    );
    e.client_msg_id = cid;
    node.send_error(conn, e);
}

async fn write_loop(node: &Node, conn: &ConnHandle, mut sink: SplitSink<WebSocket, Message>) {
    // However the writer ends (a panic too), later pushes see the connection
    // closed instead of filling a queue nobody reads.
    let _gone = WriterGone(conn);
    // A write still pending this long ends the connection: as long as a
    // client may stay silent before it is closed as idle.
    let stall = silence_limit(node);
    let mut latencies: Vec<(Instant, bool)> = Vec::new();
    // `ws.write` spans of traced frames, ended once flushed.
    let mut spans: Vec<tracing::Span> = Vec::new();
    'outer: loop {
        let first = tokio::select! {
            biased;
            _ = conn.closed().cancelled() => break,
            o = conn.next_out() => o,
        };
        let mut next = Some(first);
        let mut n = 0;
        while let Some(o) = next.take() {
            if let Some(t) = o.stamp.accepted_at {
                latencies.push((t, o.stamp.cross_pod));
            }
            if let Some(t) = &o.stamp.trace {
                spans.push(telemetry::write_span(t, &conn.id, o.frame.kind()));
            }
            node.metrics
                .frames_out
                .get_or_create(&FrameLabel {
                    frame: o.frame.kind(),
                })
                .inc();
            let text = Message::Text(o.frame.text(conn.dialect));
            if !write_within(stall, sink.feed(text)).await {
                break 'outer;
            }
            if matches!(**o.frame, ServerFrame::Disconnect { .. }) {
                // Said why; now close (4002).
                write_within(stall, sink.flush()).await;
                conn.close_with(CloseCode::Disconnected);
                break 'outer;
            }
            n += 1;
            if n < WRITE_BATCH {
                next = conn.try_next_out();
            }
        }
        if !write_within(stall, sink.flush()).await {
            break;
        }
        for (t, cross_pod) in latencies.drain(..) {
            let path = if cross_pod { "cross_pod" } else { "local" };
            node.metrics
                .delivery_latency
                .get_or_create(&PathLabel { path })
                .observe(t.elapsed().as_secs_f64());
        }
        spans.clear();
    }
    // Frames not flushed: their spans end now, not after the close.
    drop(spans);
    conn.writer_gone();
    let frame = conn.close_code().map(|c| CloseFrame {
        code: c.code(),
        reason: c.reason().into(),
    });
    // Bounded: a client that stopped reading must not hold the task forever.
    let _ = tokio::time::timeout(Duration::from_secs(2), sink.send(Message::Close(frame))).await;
    conn.closed().cancel();
}

/// Tells the connection its writer is gone when dropped.
#[derive(Debug)]
struct WriterGone<'a>(&'a ConnHandle);

impl Drop for WriterGone<'_> {
    fn drop(&mut self) {
        self.0.writer_gone();
    }
}

/// A token bucket: `rate` tokens per second, up to `burst`.
#[derive(Debug)]
struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(rate: u32, burst: u32) -> Self {
        Self {
            rate: f64::from(rate),
            burst: f64::from(burst),
            tokens: f64::from(burst),
            last: Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_refuses() {
        let mut b = TokenBucket::new(1, 3);
        assert!(b.take() && b.take() && b.take());
        assert!(!b.take());
        b.last -= Duration::from_millis(1100);
        assert!(b.take());
        assert!(!b.take());
    }
}
