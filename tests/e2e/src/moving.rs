//! Traffic while pods come and go (scale, rolling update, forced delete): clients
//! that behave as the protocol asks. They connect through a `dial` function (a
//! Service picks the pod), reconnect whenever their connection ends or they are told
//! to, and a sender resends whatever was not confirmed with the same `client_msg_id`
//! (the server dedups it cluster-wide).

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::Client;

/// Connects once; `None` to be tried again.
pub trait Dial: Fn() -> Self::Fut + Send + Sync + 'static {
    type Fut: Future<Output = Option<Client>> + Send;
}

impl<F, Fut> Dial for F
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Option<Client>> + Send,
{
    type Fut = Fut;
}

/// How long a client keeps trying before the test fails.
const PATIENCE: Duration = Duration::from_secs(180);

async fn connect(dial: &impl Dial, deadline: Instant) -> Client {
    loop {
        if let Some(c) = dial().await {
            return c;
        }
        assert!(Instant::now() < deadline, "could not connect");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What a sender saw.
#[derive(Debug, Default)]
pub struct Sent {
    /// Distinct msg ids confirmed with `sent`.
    pub confirmed: BTreeSet<String>,
    /// Sends repeated after a lost connection, `unavailable` or `reconnect`.
    pub resent: usize,
    /// Connections made.
    pub connections: usize,
    /// The pods it was connected to, in order.
    pub pods: Vec<String>,
}

/// Sends messages to `to`, `gap` apart, until `stop` is set (at least `min` of
/// them), each confirmed before the next.
pub async fn send_until(
    dial: impl Dial,
    to: &str,
    gap: Duration,
    min: usize,
    stop: Arc<AtomicBool>,
) -> Sent {
    let deadline = Instant::now() + PATIENCE;
    let mut out = Sent::default();
    let mut client = connect(&dial, deadline).await;
    out.connections += 1;
    out.pods
        .push(client.welcome["node"].as_str().unwrap_or("").to_owned());
    let mut i = 0;
    while i < min || !stop.load(Ordering::Relaxed) {
        let frame = json!({
            "type": "send", "client_msg_id": format!("m{i}"), "to": to,
            "content": format!("message {i}"),
        });
        let mut first = true;
        let id = loop {
            assert!(Instant::now() < deadline, "message {i} never confirmed");
            if !first {
                out.resent += 1;
            }
            first = false;
            if client.try_send(frame.clone()).await {
                match answer(&mut client).await {
                    Answer::Sent(id) => break id,
                    Answer::Unavailable => {
                        tokio::time::sleep(Duration::from_millis(250)).await;
                        continue;
                    }
                    Answer::Gone => {}
                }
            }
            client = connect(&dial, deadline).await;
            out.connections += 1;
            out.pods
                .push(client.welcome["node"].as_str().unwrap_or("").to_owned());
        };
        out.confirmed.insert(id);
        i += 1;
        tokio::time::sleep(gap).await;
    }
    client.close().await;
    out
}

enum Answer {
    Sent(String),
    /// `unavailable` or `rate_limited`: resend after a pause.
    Unavailable,
    /// Connection ended, or the server asked for a reconnect.
    Gone,
}

async fn answer(c: &mut Client) -> Answer {
    loop {
        let v: Value = match c.next_within(Duration::from_secs(10)).await {
            Ok(Some(v)) => v,
            Ok(None) | Err(()) => return Answer::Gone,
        };
        match v["type"].as_str() {
            Some("sent") => return Answer::Sent(v["msg_id"].as_str().unwrap().to_owned()),
            // Both say "resend later".
            Some("error") if v["code"] == "unavailable" || v["code"] == "rate_limited" => {
                return Answer::Unavailable;
            }
            Some("error") => panic!("send refused: {v}"),
            Some("reconnect") => return Answer::Gone,
            _ => continue,
        }
    }
}

/// What a receiver saw.
#[derive(Debug, Default)]
pub struct Received {
    pub ids: BTreeSet<String>,
    /// Frames carrying a message it already had (transport duplicates).
    pub duplicates: usize,
    pub connections: usize,
    pub pods: Vec<String>,
}

/// Receives as `dial`'s user, acking each message, until `expect()` gives a count
/// and that many distinct messages arrived.
pub async fn receive_until(dial: impl Dial, expect: impl Fn() -> Option<usize>) -> Received {
    let deadline = Instant::now() + PATIENCE;
    let mut r = Received::default();
    'conn: loop {
        let mut client = connect(&dial, deadline).await;
        r.connections += 1;
        r.pods
            .push(client.welcome["node"].as_str().unwrap_or("").to_owned());
        loop {
            if let Some(n) = expect()
                && r.ids.len() >= n
            {
                client.close().await;
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "timed out with {} messages",
                r.ids.len()
            );
            let v = match client.next_within(Duration::from_millis(500)).await {
                Err(()) => {
                    // Quiet: keep the connection alive as a client must.
                    if !client.try_send(json!({"type": "ping"})).await {
                        continue 'conn;
                    }
                    continue;
                }
                Ok(None) => continue 'conn,
                Ok(Some(v)) => v,
            };
            match v["type"].as_str() {
                Some("message") => {
                    let id = v["msg_id"].as_str().unwrap().to_owned();
                    let _ = client
                        .try_send(json!({"type": "ack", "msg_ids": [id]}))
                        .await;
                    if !r.ids.insert(id) {
                        r.duplicates += 1;
                    }
                }
                Some("reconnect") => {
                    let delay = v["delay_ms"].as_u64().unwrap_or(0);
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                    continue 'conn;
                }
                _ => {}
            }
        }
    }
}

/// A running sender -> receiver stream; [`Stream::finish`] stops it and checks that
/// every confirmed message arrived.
pub struct Stream {
    stop: Arc<AtomicBool>,
    sender: tokio::task::JoinHandle<Sent>,
    receiver: tokio::task::JoinHandle<Received>,
    expect: Arc<AtomicUsize>,
}

impl Stream {
    /// Starts `from` sending to `to`, both through `dial(user)`.
    pub fn start<D: Dial>(
        dial: impl Fn(&'static str) -> D,
        from: &'static str,
        to: &'static str,
        gap: Duration,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let expect = Arc::new(AtomicUsize::new(usize::MAX));
        let sender = tokio::spawn(send_until(dial(from), to, gap, 10, stop.clone()));
        let want = expect.clone();
        let receiver = tokio::spawn(receive_until(dial(to), move || {
            let n = want.load(Ordering::Relaxed);
            (n != usize::MAX).then_some(n)
        }));
        Self {
            stop,
            sender,
            receiver,
            expect,
        }
    }

    /// Stops sending, waits for the receiver to have every confirmed message,
    /// asserts nothing was lost and nothing else arrived; returns both sides.
    pub async fn finish(self, what: &str) -> (Sent, Received) {
        self.stop.store(true, Ordering::Relaxed);
        let sent = self.sender.await.unwrap();
        self.expect.store(sent.confirmed.len(), Ordering::Relaxed);
        let got = self.receiver.await.unwrap();
        let lost: Vec<_> = sent.confirmed.difference(&got.ids).collect();
        assert!(
            lost.is_empty(),
            "{what}: lost {} of {}: {lost:?}",
            lost.len(),
            sent.confirmed.len()
        );
        assert_eq!(got.ids, sent.confirmed, "{what}: only what was sent, once");
        eprintln!(
            "{what}: {} sent and confirmed, 0 lost, {} resent, {} transport duplicates; \
             sender pods {:?}, receiver pods {:?}",
            sent.confirmed.len(),
            sent.resent,
            got.duplicates,
            sent.pods,
            got.pods
        );
        (sent, got)
    }
}
