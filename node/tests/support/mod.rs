//! Test harness: real servers on loopback port 0, real WebSocket clients.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod raw;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Instant;
use switchboard_node::backend::Backends;
use switchboard_node::{Config, Node};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const WAIT: Duration = Duration::from_secs(5);

/// A node served in this process.
pub struct Server {
    pub addr: SocketAddr,
    pub node: Arc<Node>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl Server {
    pub async fn start() -> Self {
        Self::with(|_| {}).await
    }

    pub async fn with(f: impl FnOnce(&mut Config)) -> Self {
        let mut cfg = Config::defaults();
        cfg.drain_timeout = Duration::from_millis(500);
        f(&mut cfg);
        let node = Node::standalone(cfg).unwrap();
        Self::serve(node).await
    }

    /// A node in the cluster configuration: registry and store on the Redis
    /// of `SB_TEST_REDIS_URL` (`scripts/deps start`), in a cluster of its own,
    /// with dev auth on unless `f` says otherwise (the in-memory bus: one pod).
    pub async fn cluster(f: impl FnOnce(&mut Config)) -> Self {
        let mut cfg = Config::defaults();
        cfg.drain_timeout = Duration::from_millis(500);
        let url = std::env::var("SB_TEST_REDIS_URL").expect(
            "SB_TEST_REDIS_URL is not set: run `eval \"$(scripts/deps start)\"` first (scripts/test does)",
        );
        cfg.redis_url = Some(url.into());
        cfg.cluster_name = format!("{}-{}", uniq("c"), switchboard_node::ids::now_millis());
        cfg.dev_auth = Some(true);
        f(&mut cfg);
        Self::serve(Node::from_config(cfg).await.unwrap()).await
    }

    /// A node on the given (possibly shared) backends.
    pub async fn on_backends(pod: &str, backends: Backends) -> Self {
        let mut cfg = Config::defaults();
        cfg.pod_name = pod.into();
        cfg.drain_timeout = Duration::from_millis(500);
        Self::serve(Node::new(cfg, backends).unwrap()).await
    }

    /// Serves an already built node.
    pub async fn on(node: Arc<Node>) -> Self {
        Self::serve(node).await
    }

    async fn serve(node: Arc<Node>) -> Self {
        // The production backlog: storms must not hit a shallower queue here.
        let listener = switchboard_node::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(switchboard_node::run(listener, node.clone(), async {
            let _ = rx.await;
        }));
        Self {
            addr,
            node,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub async fn connect(&self, user: &str) -> Client {
        self.connect_path(&format!("/ws?userId={user}")).await
    }

    pub async fn connect_path(&self, path_and_query: &str) -> Client {
        Client::connect(self.addr, path_and_query).await
    }

    pub async fn http(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        token: Option<&str>,
    ) -> (u16, Value) {
        http(self.addr, method, path, body, token).await
    }

    /// Triggers the graceful shutdown and waits for `run` to return.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .unwrap()
                .unwrap()
                .unwrap();
        }
    }

    pub fn begin_stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub welcome: Value,
}

impl Client {
    pub async fn connect(addr: SocketAddr, path_and_query: &str) -> Self {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}{path_and_query}"))
            .await
            .unwrap();
        let mut c = Self {
            ws,
            welcome: Value::Null,
        };
        c.welcome = c.next().await;
        c
    }

    /// Connects and returns the HTTP status of a refused upgrade, checking
    /// that the body is a JSON error with a code.
    pub async fn refused(addr: SocketAddr, path_and_query: &str) -> u16 {
        Self::refusal(addr, path_and_query).await.0
    }

    /// The status and JSON body of a refused upgrade.
    pub async fn refusal(addr: SocketAddr, path_and_query: &str) -> (u16, Value) {
        match tokio_tungstenite::connect_async(format!("ws://{addr}{path_and_query}")).await {
            Ok(_) => panic!("upgrade to {path_and_query} was accepted"),
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                let body: Value =
                    serde_json::from_slice(r.body().as_deref().unwrap_or_default()).unwrap();
                assert!(
                    body["code"].is_string() && body["reason"].is_string(),
                    "{body}"
                );
                (r.status().as_u16(), body)
            }
            Err(e) => panic!("unexpected error {e}"),
        }
    }

    pub fn user(&self) -> &str {
        self.welcome["user"].as_str().unwrap()
    }

    pub async fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).await.unwrap();
    }

    pub async fn send_raw(&mut self, m: Message) {
        self.ws.send(m).await.unwrap();
    }

    /// The next JSON frame (panics after [`WAIT`]).
    pub async fn next(&mut self) -> Value {
        loop {
            let m = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for a frame")
                .expect("connection ended")
                .expect("read error");
            match m {
                Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
                Message::Close(f) => panic!("connection closed: {f:?}"),
                _ => continue,
            }
        }
    }

    /// The next frame of type `ty`, skipping presence and group frames only.
    pub async fn expect(&mut self, ty: &str) -> Value {
        loop {
            let v = self.next().await;
            if v["type"] == ty {
                return v;
            }
            // Membership changes (`group`) come with the admin API's calls.
            assert!(
                v["type"] == "presence" || v["type"] == "group",
                "expected {ty}, got {v}"
            );
        }
    }

    /// Sends a ping and returns every frame before the pong: proves that
    /// nothing else was queued for this client at that point.
    pub async fn drain_until_pong(&mut self) -> Vec<Value> {
        self.send(json!({"type": "ping"})).await;
        let mut seen = Vec::new();
        loop {
            let v = self.next().await;
            if v["type"] == "pong" {
                return seen;
            }
            if v["type"] != "presence" {
                seen.push(v);
            }
        }
    }

    /// Reads until the server closes; returns the close code.
    pub async fn close_code(&mut self) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let m = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .expect("no close frame");
            match m {
                Some(Ok(Message::Close(f))) => return f.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        // Wait for the server's close to arrive so the server side has cleaned up.
        let _ = tokio::time::timeout(WAIT, async { while self.ws.next().await.is_some() {} }).await;
    }

    /// Sends a message to a user; returns the `sent` frame.
    pub async fn say(&mut self, to: &str, cid: &str, content: &str) -> Value {
        self.send(json!({"type": "send", "client_msg_id": cid, "to": to, "content": content}))
            .await;
        self.expect("sent").await
    }
}

/// A minimal HTTP/1.1 client (Connection: close), enough for the JSON API.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<Value>,
    token: Option<&str>,
) -> (u16, Value) {
    let (status, text) = http_text(addr, method, path, body, token).await;
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

pub async fn http_text(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<Value>,
    token: Option<&str>,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{auth}\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8(buf).unwrap();
    let status: u16 = text.split(' ').nth(1).unwrap().parse().unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

/// A unique user name per test, so tests sharing nothing stay readable.
pub fn uniq(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}{}", N.fetch_add(1, Ordering::Relaxed))
}

/// The real binary, on a free port.
pub struct Proc {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Proc {
    pub fn start(args: &[&str]) -> Self {
        Self::start_env(args, &[])
    }

    pub fn start_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard-node"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                eprintln!("[node] {line}");
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr = loop {
            let line = rx
                .recv_timeout(deadline - Instant::now())
                .expect("node did not log its address");
            if let Some(rest) = line.split("listening on http://").nth(1) {
                break rest.split_whitespace().next().unwrap().parse().unwrap();
            }
        };
        Self { child, addr }
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
