//! Traffic for the failure tests: a sender that resends on `unavailable` (as a
//! client must), and a receiver that acks, dedups by msg id and reconnects.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{Client, Cluster};

/// What a sender got back.
pub struct Sent {
    /// Msg ids the server confirmed with `sent`, in order.
    pub confirmed: Vec<String>,
    /// `unavailable` answers that were resent with the same `client_msg_id`.
    pub resent: usize,
}

/// Sends `n` messages to `to`, 2 ms apart. A send answered `unavailable` (a
/// backend is down) is resent with the same `client_msg_id` until it is
/// confirmed, as the protocol tells clients to.
pub async fn send_stream(mut sender: Client, to: &str, n: usize) -> Sent {
    let mut out = Sent {
        confirmed: Vec::new(),
        resent: 0,
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    for i in 0..n {
        let frame = json!({
            "type": "send", "client_msg_id": format!("m{i}"), "to": to,
            "content": format!("message {i}"),
        });
        let sent = loop {
            sender.send(frame.clone()).await;
            let v = next_answer(&mut sender).await;
            match v["type"].as_str() {
                Some("sent") => break v,
                Some("error") if v["code"] == "unavailable" => {
                    assert!(Instant::now() < deadline, "still unavailable: {v}");
                    out.resent += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                _ => panic!("expected sent, got {v}"),
            }
        };
        out.confirmed
            .push(sent["msg_id"].as_str().unwrap().to_owned());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    out
}

/// The next `sent` or `error` frame, passing over receipts, presence and typing.
async fn next_answer(c: &mut Client) -> Value {
    loop {
        let v = c
            .next()
            .await
            .expect("connection ended while waiting for sent");
        match v["type"].as_str() {
            Some("delivered" | "read" | "presence" | "typing") => continue,
            _ => return v,
        }
    }
}

/// What a receiving client saw: every distinct message, how many frames
/// carried a message it already had (transport duplicates it dropped), and
/// the pods it was connected to.
pub struct Received {
    pub ids: BTreeSet<String>,
    pub redelivered: usize,
    pub pods: Vec<String>,
    pub reconnects: usize,
    /// When the last new message arrived.
    pub last_at: Option<Instant>,
}

/// A receiving client that acks what it gets, dedups by msg id as clients
/// must, and reconnects to the next pod whenever its connection ends (or it
/// is told to), until it has `expect` messages.
pub async fn receive_all(
    c: &Cluster,
    user: &str,
    mut pod: usize,
    mut expect: impl FnMut() -> Option<usize>,
) -> Received {
    let mut r = Received {
        ids: BTreeSet::new(),
        redelivered: 0,
        pods: Vec::new(),
        reconnects: 0,
        last_at: None,
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    'conn: loop {
        let mut client = loop {
            assert!(Instant::now() < deadline, "could not reconnect");
            let p = c.pod(pod);
            if crate::http_get(p.addr, "/readyz").await.0 == 200 {
                break p.connect(user).await;
            }
            pod = (pod + 1) % c.pods.len();
        };
        r.pods
            .push(client.welcome["node"].as_str().unwrap().to_owned());
        loop {
            if let Some(n) = expect()
                && r.ids.len() >= n
            {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "timed out with {} messages",
                r.ids.len()
            );
            let frame = tokio::time::timeout(Duration::from_millis(500), client.next()).await;
            let v: Option<Value> = match frame {
                Err(_) => {
                    // Nothing for now: keep the connection alive as a client must
                    // (silent for 3 heartbeats, the node closes it), then check
                    // `expect` again.
                    if client.try_send(json!({"type": "ping"})).await {
                        continue;
                    }
                    None
                }
                Ok(v) => v,
            };
            // The connection ended (its pod was killed or stopped): next pod.
            let Some(v) = v else {
                r.reconnects += 1;
                pod = (pod + 1) % c.pods.len();
                continue 'conn;
            };
            match v["type"].as_str() {
                Some("message") => {
                    let id = v["msg_id"].as_str().unwrap().to_owned();
                    // An ack that cannot be written (the pod just died) is
                    // lost with the connection: the message stays in the inbox
                    // and comes again after the reconnect, as a duplicate.
                    let acked = client
                        .try_send(json!({"type": "ack", "msg_ids": [id.clone()]}))
                        .await;
                    if r.ids.insert(id) {
                        r.last_at = Some(Instant::now());
                    } else {
                        r.redelivered += 1;
                    }
                    if !acked {
                        r.reconnects += 1;
                        pod = (pod + 1) % c.pods.len();
                        continue 'conn;
                    }
                }
                Some("reconnect") => {
                    r.reconnects += 1;
                    let delay = v["delay_ms"].as_u64().unwrap();
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                    pod = (pod + 1) % c.pods.len();
                    continue 'conn;
                }
                _ => {}
            }
        }
    }
}
