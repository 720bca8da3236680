//! One TCP connection to a name server or broker, speaking RocketMQ's remoting
//! protocol: requests are matched to their responses by `opaque`, many may be in
//! flight at once, and one task reads the responses. Everything runs on the
//! caller's runtime.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::BytesMut;
use rocketmq_protocol::protocol::remoting_command::RemotingCommand;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::oneshot;
use tokio::task::AbortHandle;

use crate::Error;

/// The largest frame read (RocketMQ's own limit: 16 MiB and the length field).
const MAX_FRAME: usize = 16 * 1024 * 1024 + 4;

/// Waiters by `opaque`; `None` once the connection is closed.
type Pending = Arc<Mutex<Option<HashMap<i32, oneshot::Sender<RemotingCommand>>>>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A connection. Closed for good by the first read or write error; the owner
/// then connects again.
pub(super) struct Conn {
    addr: String,
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: Pending,
    next: AtomicI32,
    reader: AbortHandle,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Closes the connection unless disarmed: a write cut short (an error, a
/// timeout, or the request's future dropped) leaves half a frame on the wire.
struct CloseUnlessDone<'a>(&'a Conn, bool);

impl Drop for CloseUnlessDone<'_> {
    fn drop(&mut self) {
        if !self.1 {
            self.0.close();
        }
    }
}

impl Conn {
    pub(super) async fn connect(addr: &str, timeout: Duration) -> Result<Self, Error> {
        let io = |detail: String| Error::Io {
            addr: addr.to_owned(),
            detail,
        };
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| io(format!("no connection within {timeout:?}")))?
            .map_err(|e| io(e.to_string()))?;
        stream.set_nodelay(true).map_err(|e| io(e.to_string()))?;
        let (mut rd, writer) = stream.into_split();
        let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
        let waiters = Arc::clone(&pending);
        let peer = addr.to_owned();
        let reader = tokio::spawn(async move {
            let mut buf = BytesMut::with_capacity(64 * 1024);
            'read: loop {
                loop {
                    match RemotingCommand::decode_with_max_frame_bytes(&mut buf, MAX_FRAME) {
                        Ok(Some(cmd)) if cmd.is_response_type() => {
                            let waiter = lock(&waiters)
                                .as_mut()
                                .and_then(|w| w.remove(&cmd.opaque()));
                            if let Some(tx) = waiter {
                                let _ = tx.send(cmd);
                            }
                        }
                        // A request from the server (we register nothing that
                        // asks for an answer): ignored.
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(e) => {
                            tracing::warn!(addr = %peer, error = %e, "unreadable RocketMQ frame; reconnecting");
                            break 'read;
                        }
                    }
                }
                match rd.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            // Dropping the senders fails every waiter at once.
            lock(&waiters).take();
        })
        .abort_handle();
        Ok(Self {
            addr: addr.to_owned(),
            writer: tokio::sync::Mutex::new(writer),
            pending,
            next: AtomicI32::new(1),
            reader,
        })
    }

    pub(super) fn is_closed(&self) -> bool {
        lock(&self.pending).is_none()
    }

    fn close(&self) {
        lock(&self.pending).take();
        self.reader.abort();
    }

    /// Sends `cmd` and waits up to `timeout` for its response.
    pub(super) async fn request(
        &self,
        mut cmd: RemotingCommand,
        timeout: Duration,
    ) -> Result<RemotingCommand, Error> {
        let io = |detail: &str| Error::Io {
            addr: self.addr.clone(),
            detail: detail.to_owned(),
        };
        let opaque = self.next.fetch_add(1, Ordering::Relaxed);
        cmd.set_opaque_mut(opaque);
        let mut frame = BytesMut::new();
        cmd.try_fast_header_encode(&mut frame)
            .map_err(|e| io(&format!("encoding a request: {e}")))?;
        if let Some(body) = cmd.body() {
            frame.extend_from_slice(body);
        }
        let (tx, rx) = oneshot::channel();
        match lock(&self.pending).as_mut() {
            Some(waiters) => waiters.insert(opaque, tx),
            None => return Err(io("connection closed")),
        };
        // However this future ends, its waiter goes (an answer removes it first).
        let _waiter = Waiter(self, opaque);
        let deadline = tokio::time::Instant::now() + timeout;
        let Ok(mut writer) = tokio::time::timeout_at(deadline, self.writer.lock()).await else {
            return Err(io("no turn to write within the timeout"));
        };
        {
            let mut guard = CloseUnlessDone(self, false);
            match tokio::time::timeout_at(deadline, writer.write_all(&frame)).await {
                Ok(Ok(())) => guard.1 = true,
                Ok(Err(e)) => return Err(io(&e.to_string())),
                Err(_) => return Err(io("write timed out")),
            }
        }
        drop(writer);
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(_)) => Err(io("connection closed")),
            Err(_) => {
                // A peer that stopped answering (a half-open connection, a dead
                // host) would otherwise keep this connection for the kernel's
                // retransmission timeout: start over with a new one.
                self.close();
                Err(io(&format!(
                    "no answer within {timeout:?}; connection closed"
                )))
            }
        }
    }
}

/// Removes a request's waiter when the request ends.
struct Waiter<'a>(&'a Conn, i32);

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        if let Some(waiters) = lock(&self.0.pending).as_mut() {
            waiters.remove(&self.1);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::net::TcpListener;

    /// A server on loopback that reads `n` requests, then answers them in
    /// reverse order with their request's code (or not at all, or closes).
    async fn server(n: usize, answer: bool) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = BytesMut::new();
            let mut requests = Vec::new();
            while requests.len() < n {
                while let Some(cmd) = RemotingCommand::decode(&mut buf).unwrap() {
                    requests.push(cmd);
                }
                if requests.len() < n && socket.read_buf(&mut buf).await.unwrap() == 0 {
                    return;
                }
            }
            if !answer {
                tokio::time::sleep(Duration::from_secs(5)).await;
                return;
            }
            for req in requests.iter().rev() {
                let mut response = RemotingCommand::create_success_response_command()
                    .set_opaque(req.opaque())
                    .set_code(req.code())
                    .mark_response_type();
                let mut frame = BytesMut::new();
                response.try_fast_header_encode(&mut frame).unwrap();
                socket.write_all(&frame).await.unwrap();
            }
            // Then the connection ends.
        });
        addr
    }

    #[tokio::test]
    async fn responses_find_their_requests_in_any_order() {
        let addr = server(2, true).await;
        let conn = Conn::connect(&addr, Duration::from_secs(1)).await.unwrap();
        let t = Duration::from_secs(5);
        let (a, b) = tokio::join!(
            conn.request(RemotingCommand::create_remoting_command(105), t),
            conn.request(RemotingCommand::create_remoting_command(10), t),
        );
        let code = |r: Result<RemotingCommand, Error>| r.ok().map(|r| r.code());
        assert_eq!(code(a), Some(105));
        assert_eq!(code(b), Some(10));
        // No waiter left (the server may have hung up already: then none at all).
        assert!(lock(&conn.pending).as_ref().is_none_or(HashMap::is_empty));
        // The server hung up: the connection says so, and a request fails at once.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(conn.is_closed());
        let e = conn
            .request(RemotingCommand::create_remoting_command(10), t)
            .await
            .err()
            .unwrap();
        assert!(e.to_string().contains("connection closed"), "{e}");
    }

    #[tokio::test]
    async fn a_request_without_an_answer_closes_the_connection() {
        let addr = server(1, false).await;
        let conn = Conn::connect(&addr, Duration::from_secs(1)).await.unwrap();
        let e = conn
            .request(
                RemotingCommand::create_remoting_command(11),
                Duration::from_millis(300),
            )
            .await
            .err()
            .unwrap();
        assert!(e.to_string().contains("no answer within"), "{e}");
        assert!(conn.is_closed(), "a silent peer is given up");
    }

    #[tokio::test]
    async fn a_dropped_request_leaves_no_waiter() {
        let addr = server(1, false).await;
        let conn = Conn::connect(&addr, Duration::from_secs(1)).await.unwrap();
        let request = conn.request(
            RemotingCommand::create_remoting_command(11),
            Duration::from_secs(5),
        );
        // Written, then given up before an answer.
        assert!(
            tokio::time::timeout(Duration::from_millis(200), request)
                .await
                .is_err()
        );
        assert!(lock(&conn.pending).as_ref().unwrap().is_empty());
        assert!(
            !conn.is_closed(),
            "the frame was whole: the connection stays"
        );
    }

    #[tokio::test]
    async fn nobody_listening_is_an_error_naming_the_address() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        let e = Conn::connect(&addr, Duration::from_secs(1))
            .await
            .err()
            .unwrap();
        assert!(e.to_string().contains(&addr), "{e}");
    }
}
