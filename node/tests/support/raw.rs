//! A WebSocket client that writes frames byte by byte, so tests can send what
//! well-behaved libraries refuse to: invalid UTF-8, unfinished fragments,
//! reserved opcodes, unmasked frames.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CONTINUATION: u8 = 0x0;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;

/// A frame read from the server.
#[derive(Debug)]
pub struct Frame {
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The close code of a close frame.
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == CLOSE && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

pub struct Raw {
    pub tcp: TcpStream,
    buf: Vec<u8>,
}

/// The request line and headers of an upgrade to `path`, plus `extra` headers.
pub fn upgrade_request(addr: SocketAddr, path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

impl Raw {
    /// Upgrades; returns the client after the 101 (the welcome is unread) or
    /// the status and the whole response of a refusal.
    pub async fn upgrade(
        addr: SocketAddr,
        path: &str,
        extra_headers: &str,
    ) -> Result<(Self, String), (u16, String)> {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        tcp.write_all(upgrade_request(addr, path, extra_headers).as_bytes())
            .await
            .unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            // A hang guard, generous for a loaded CI machine.
            let n = tokio::time::timeout(Duration::from_secs(30), tcp.read(&mut chunk))
                .await
                .expect("no upgrade response")
                .unwrap();
            assert!(n > 0, "connection closed during the upgrade");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if status != 101 {
            // Read the body (Content-Length of it) for the caller; the server
            // may keep the connection open after it.
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            while buf.len() < head_end + len {
                match tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut chunk)).await {
                    Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                    _ => break,
                }
            }
            return Err((status, String::from_utf8_lossy(&buf).to_string()));
        }
        let rest = buf.split_off(head_end);
        Ok((Self { tcp, buf: rest }, head))
    }

    /// Writes one frame, masked with a zero key unless `masked` is false.
    pub async fn frame(&mut self, fin: bool, opcode: u8, payload: &[u8], masked: bool) {
        self.frame_with_bits(u8::from(fin) << 7 | opcode, payload, masked)
            .await;
    }

    /// Writes a frame whose first byte (FIN, RSV and opcode) is given whole.
    pub async fn frame_with_bits(&mut self, first: u8, payload: &[u8], masked: bool) {
        let mut out = vec![first];
        let mask_bit = if masked { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => out.push(mask_bit | n as u8),
            n if n <= 0xffff => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if masked {
            // A zero mask leaves the payload as it is.
            out.extend_from_slice(&[0, 0, 0, 0]);
        }
        out.extend_from_slice(payload);
        // A server that closed may reset the connection: that is an answer too.
        let _ = self.tcp.write_all(&out).await;
    }

    /// The next frame, or `None` when the connection ended (EOF or reset) or
    /// nothing came within `within`.
    pub async fn read_frame(&mut self, within: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some((f, used)) = parse(&self.buf) {
                self.buf.drain(..used);
                return Some(f);
            }
            let mut chunk = [0u8; 8192];
            let n = match tokio::time::timeout_at(deadline, self.tcp.read(&mut chunk)).await {
                Ok(Ok(n)) => n,
                Ok(Err(_)) | Err(_) => return None,
            };
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next text frame as JSON, skipping control frames.
    pub async fn next_json(&mut self) -> serde_json::Value {
        loop {
            let f = self
                .read_frame(Duration::from_secs(10))
                .await
                .expect("connection ended while waiting for a text frame");
            if f.opcode == TEXT {
                return serde_json::from_slice(&f.payload).unwrap();
            }
        }
    }

    /// Reads until the server ends the connection; returns the close code it
    /// sent, if any. Panics if the connection is still open after `within`.
    pub async fn ended(&mut self, within: Duration) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + within;
        let mut code = None;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            assert!(!left.is_zero(), "the server did not end the connection");
            let mut chunk = [0u8; 8192];
            match tokio::time::timeout(left, self.tcp.read(&mut chunk)).await {
                Err(_) => panic!("the server did not end the connection within {within:?}"),
                Ok(Ok(0)) | Ok(Err(_)) => return code,
                Ok(Ok(n)) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    while let Some((f, used)) = parse(&self.buf) {
                        self.buf.drain(..used);
                        if f.opcode == CLOSE {
                            code = f.close_code().or(Some(1005));
                        }
                    }
                }
            }
        }
    }
}

/// One unmasked server frame at the start of `b`, and the bytes it took.
fn parse(b: &[u8]) -> Option<(Frame, usize)> {
    if b.len() < 2 {
        return None;
    }
    let opcode = b[0] & 0x0f;
    let (len, mut at) = match b[1] & 0x7f {
        126 if b.len() >= 4 => (usize::from(u16::from_be_bytes([b[2], b[3]])), 4),
        127 if b.len() >= 10 => (
            u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize,
            10,
        ),
        126 | 127 => return None,
        n => (usize::from(n), 2),
    };
    if b[1] & 0x80 != 0 {
        at += 4;
    }
    if b.len() < at + len {
        return None;
    }
    Some((
        Frame {
            opcode,
            payload: b[at..at + len].to_vec(),
        },
        at + len,
    ))
}
