//! WebSocket client connections: where the server is, connecting many.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::client_async_with_config;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::proto::{ConnectError, Proto, Ws};
use crate::report::Counts;

/// Where the node's WebSocket endpoint is; cheap to clone into tasks.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// Path and query prefix of the WebSocket endpoint, e.g. `/ws`.
    pub ws_path: String,
    /// What the server speaks.
    pub proto: Proto,
}

impl Endpoint {
    /// `ws://ADDR/ws?userId=USER` (Switchboard), `ws://ADDR/connection/websocket`
    /// (Centrifugo).
    pub fn ws_url(&self, user: &str) -> String {
        self.proto
            .ws_url(&format!("ws://{}{}", self.addr, self.ws_path), user)
    }
}

/// How long one connect (TCP, upgrade, welcome) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// WebSocket buffers: `read_buffer` is allocated per connection up front.
pub fn ws_config(read_buffer: usize, write_buffer: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(read_buffer)
        .write_buffer_size(write_buffer)
}

/// Connects as `user` and completes the protocol's handshake (Switchboard's
/// `welcome`; Centrifugo's connect and subscribe).
pub async fn connect(
    target: &Endpoint,
    user: &str,
    cfg: WebSocketConfig,
    source: Option<IpAddr>,
) -> Result<Ws, ConnectError> {
    match tokio::time::timeout(CONNECT_TIMEOUT, connect_inner(target, user, cfg, source)).await {
        Ok(r) => r,
        Err(_) => Err(ConnectError::new("timeout", "no handshake within 10 s")),
    }
}

async fn connect_inner(
    target: &Endpoint,
    user: &str,
    cfg: WebSocketConfig,
    source: Option<IpAddr>,
) -> Result<Ws, ConnectError> {
    let tcp = dial(target.addr, source)
        .await
        .map_err(|e| ConnectError::new(format!("tcp: {:?}", e.kind()), e))?;
    tcp.set_nodelay(true)
        .map_err(|e| ConnectError::new("nodelay", e))?;
    let (mut ws, _) = client_async_with_config(target.ws_url(user), tcp, Some(cfg))
        .await
        .map_err(|e| match &e {
            tungstenite::Error::Http(resp) => {
                ConnectError::new(format!("http {}", resp.status().as_u16()), &e)
            }
            tungstenite::Error::Io(io) => ConnectError::new(format!("io: {:?}", io.kind()), &e),
            _ => ConnectError::new("handshake", &e),
        })?;
    target.proto.handshake(&mut ws, user).await?;
    Ok(ws)
}

/// A TCP connection to `addr`, from `source` (any free port) when given: one
/// source address has about 28,000 ephemeral ports towards one server port,
/// so more connections than that need more (loopback) source addresses.
async fn dial(addr: SocketAddr, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let Some(ip) = source else {
        return TcpStream::connect(addr).await;
    };
    let sock = if ip.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    sock.bind(SocketAddr::new(ip, 0))?;
    sock.connect(addr).await
}

/// The outcome of [`connect_many`].
#[derive(Debug, Default)]
pub struct Connected {
    /// Open connections, in the order of the users asked for; `None` where
    /// the attempt failed.
    pub conns: Vec<Option<Ws>>,
    /// Failed attempts by kind.
    pub failures: Counts,
    /// The first few failure messages, for the log.
    pub samples: Vec<String>,
}

impl Connected {
    pub fn failed(&self) -> u64 {
        self.failures.values().sum()
    }
}

/// Connects every user to its node, `concurrency` attempts at a time (spread
/// over the runtime's worker threads), each waiting for its `welcome`. The
/// i-th attempt connects from `sources[i % len]` (none: the OS picks).
pub async fn connect_many(
    users: Vec<(Endpoint, String)>,
    cfg: WebSocketConfig,
    concurrency: usize,
    sources: &[IpAddr],
) -> Connected {
    let n = users.len();
    let source = |i: usize| (!sources.is_empty()).then(|| sources[i % sources.len()]);
    let mut results = futures_util::stream::iter(users.into_iter().enumerate())
        .map(|(i, (ep, user))| {
            let from = source(i);
            tokio::spawn(async move { (i, connect(&ep, &user, cfg, from).await) })
        })
        .buffer_unordered(concurrency.max(1));
    let mut out = Connected {
        conns: (0..n).map(|_| None).collect(),
        ..Connected::default()
    };
    while let Some(r) = results.next().await {
        let err = match r {
            Ok((i, Ok(ws))) => {
                out.conns[i] = Some(ws);
                continue;
            }
            Ok((_, Err(e))) => e,
            Err(e) => ConnectError::new("task", e),
        };
        *out.failures.entry(err.kind).or_default() += 1;
        if out.samples.len() < 5 {
            out.samples.push(err.detail);
        }
    }
    out
}
