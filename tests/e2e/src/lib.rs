//! Harness for end-to-end tests: a cluster of real `switchboard-node`
//! processes (pods `sb-0`, `sb-1`, ...) on the Redis and RocketMQ started by
//! `scripts/deps start`, and WebSocket clients that talk to them.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_debug_implementations
)]

pub mod jaeger;
pub mod moving;
pub mod own_deps;
pub mod own_redis;
pub mod panels;
pub mod prometheus;
pub mod realpods;
pub mod soak;
pub mod tap;
pub mod traffic;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};
use switchboard_rocketmq::names::Names;
use switchboard_rocketmq::{Admin, Credentials, Runtime};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub use own_redis::OwnRedis;

pub const WAIT: Duration = Duration::from_secs(10);
/// The HS256 secret the test nodes verify tokens with (and [`token`] signs with).
pub const SECRET: &str = "e2e-test-secret-0123456789abcdef";
/// The admin token of the test nodes ([`http_get`] sends it).
pub const ADMIN_TOKEN: &str = "e2e-admin-token";

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run `eval \"$(scripts/deps start)\"` first (scripts/test does)")
    })
}

/// The node binary: `SB_NODE_BIN`, or the workspace's release build.
pub fn node_bin() -> PathBuf {
    std::env::var_os("SB_NODE_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/release/switchboard-node"),
        PathBuf::from,
    )
}

pub fn token(user: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    jsonwebtoken::encode(
        &Header::default(),
        &json!({"sub": user, "exp": exp}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// One node process.
pub struct Pod {
    pub name: String,
    pub addr: SocketAddr,
    child: Child,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Pod {
    /// Every line the node wrote to stdout (its log) so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no drain, no cleanup.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit; returns whether it exited 0.
    pub fn wait_exit(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.success();
            }
            assert!(Instant::now() < deadline, "{} did not exit", self.name);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub async fn connect(&self, user: &str) -> Client {
        Client::connect(self.addr, user).await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        http_get(self.addr, path).await
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A cluster: its name, topic prefix and pods.
pub struct Cluster {
    pub name: String,
    pub prefix: String,
    pub pods: Vec<Pod>,
    namesrv: String,
    redis: String,
    drain_timeout: String,
    extra_env: Vec<(String, String)>,
    credentials: Option<Credentials>,
}

impl Cluster {
    /// Provisions topics and groups for `n` pods (with the project's own
    /// provisioning code, as the operator will), then starts the pods.
    pub async fn start(test: &str, n: u32) -> Self {
        Self::start_with(test, n, "2s").await
    }

    pub async fn start_with(test: &str, n: u32, drain_timeout: &str) -> Self {
        let mut c = Self::new(test, drain_timeout);
        c.launch(n).await;
        c
    }

    /// Provisions topics and groups for `n` pods, starts them (with the
    /// environment set so far) and waits until each is ready.
    pub async fn launch(&mut self, n: u32) {
        self.provision(n).await;
        for i in 0..n {
            let pod = self.spawn(i);
            self.pods.push(pod);
        }
        for p in &self.pods {
            wait_ready(p).await;
        }
    }

    /// A cluster with no topics, groups or pods yet, on the shared Redis.
    pub fn new(test: &str, drain_timeout: &str) -> Self {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis();
        let name = format!("{test}-{stamp}");
        Self {
            prefix: switchboard_rocketmq::names::prefix("e2e", &name),
            name,
            pods: Vec::new(),
            namesrv: env("SB_TEST_ROCKETMQ_NAMESRV"),
            redis: env("SB_TEST_REDIS_URL"),
            drain_timeout: drain_timeout.into(),
            extra_env: Vec::new(),
            credentials: None,
        }
    }

    /// Sets `name=value` in the environment of the pods spawned from now on.
    pub fn set_env(&mut self, name: &str, value: &str) {
        self.extra_env.push((name.into(), value.into()));
    }

    /// The Redis URL the pods use.
    pub fn redis_url(&self) -> &str {
        &self.redis
    }

    /// The RocketMQ name server the pods use.
    pub fn namesrv(&self) -> &str {
        &self.namesrv
    }

    /// Points the pods spawned from now on at another Redis.
    pub fn use_redis(&mut self, url: &str) {
        self.redis = url.into();
    }

    /// Points provisioning and the pods spawned from now on at another name server.
    pub fn use_rocketmq(&mut self, namesrv: &str) {
        self.namesrv = namesrv.into();
    }

    /// Signs provisioning with these ACL credentials (the operator's).
    pub fn provision_as(&mut self, access_key: &str, secret_key: &str) {
        self.credentials = Some(Credentials::new(access_key, secret_key).unwrap());
    }

    /// Gives the pods spawned from now on these ACL credentials
    /// (`SB_ROCKETMQ_ACCESS_KEY`, `SB_ROCKETMQ_SECRET_KEY`).
    pub fn sign_pods_as(&mut self, access_key: &str, secret_key: &str) {
        self.set_env("SB_ROCKETMQ_ACCESS_KEY", access_key);
        self.set_env("SB_ROCKETMQ_SECRET_KEY", secret_key);
    }

    /// Creates the shared topics (events, cluster events, commands, ...) and
    /// groups (commands, api), and the topics
    /// and groups of ordinals `0..n` (with the project's own provisioning
    /// code, as the operator does).
    pub async fn provision(&self, n: u32) {
        let rt = Runtime::new().unwrap();
        let admin = Admin::connect_as(&rt, &self.namesrv, self.credentials.as_ref())
            .await
            .unwrap();
        let names = Names::new(&self.prefix);
        for topic in names.shared_topics() {
            admin.ensure_topic(&topic, 4).await.unwrap();
        }
        for group in names.shared_groups() {
            admin.ensure_group(&group, 3).await.unwrap();
        }
        for i in 0..n {
            admin.ensure_topic(&names.node_topic(i), 4).await.unwrap();
            admin.ensure_group(&names.node_group(i), 3).await.unwrap();
        }
        admin.shutdown().await;
        rt.shutdown().await;
    }

    /// Starts pod `sb-<i>` (again, after a kill).
    pub fn spawn(&self, i: u32) -> Pod {
        let name = format!("sb-{i}");
        let mut child = Command::new(node_bin())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("SB_LISTEN", "127.0.0.1:0")
            .env("POD_NAME", &name)
            .env("POD_NAMESPACE", "e2e")
            .env("SB_CLUSTER_NAME", &self.name)
            .env("SB_REDIS_URL", &self.redis)
            .env("SB_ROCKETMQ_NAMESRV", &self.namesrv)
            .env("SB_TOPIC_PREFIX", &self.prefix)
            .env("SB_JWT_SECRET", SECRET)
            .env("SB_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("SB_HEARTBEAT_INTERVAL", "2s")
            .env("SB_PRESENCE_TTL", "10s")
            .env("SB_DRAIN_TIMEOUT", &self.drain_timeout)
            .env("SB_RECONNECT_JITTER", "300ms")
            .env("SB_RATE_LIMIT", "1000")
            .env("SB_RATE_BURST", "1000")
            .envs(self.extra_env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {}: {e} (build it: cargo build --release -p switchboard-node)",
                    node_bin().display()
                )
            });
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        let tag = name.clone();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = log.clone();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                eprintln!("[{tag}] {line}");
                kept.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = loop {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("{name} did not log its address"));
            if let Some(rest) = line.split("listening on http://").nth(1) {
                break rest.split_whitespace().next().unwrap().parse().unwrap();
            }
        };
        Pod {
            name,
            addr,
            child,
            log,
        }
    }

    pub fn pod(&self, i: usize) -> &Pod {
        &self.pods[i]
    }
}

/// A `RequestClient` of `c` reading the answers with its own consumer group
/// `PREFIX-<name>` (created here), 10 s timeout.
pub async fn request_client(c: &Cluster, name: &str) -> switchboard_client::RequestClient {
    let group = format!("{}-{name}", c.prefix);
    let rt = Runtime::new().unwrap();
    let admin = Admin::connect(&rt, c.namesrv()).await.unwrap();
    admin.ensure_group(&group, 0).await.unwrap();
    admin.shutdown().await;
    rt.shutdown().await;
    switchboard_client::RequestClient::start(switchboard_client::ClientConfig {
        namesrv: c.namesrv().to_owned(),
        prefix: c.prefix.clone(),
        responses_group: group,
        credentials: None,
        timeout: Duration::from_secs(10),
    })
    .await
    .unwrap()
}

/// Waits until every pod of `c` runs its consumer of backends' `consumer`
/// messages (`commands`, `requests`), from its metrics.
pub async fn wait_consumers(c: &Cluster, consumer: &str) {
    let line = format!("switchboard_consumer_up{{consumer=\"{consumer}\"}} 1");
    let deadline = Instant::now() + Duration::from_secs(60);
    for p in &c.pods {
        loop {
            let metrics = http_get(p.addr, "/metrics").await.1;
            if metrics
                .as_str()
                .is_some_and(|m| m.lines().any(|l| l == line))
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: no {consumer} consumer",
                p.name
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Waits until `/readyz` says 200 (subscribed to its topic).
pub async fn wait_ready(p: &Pod) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if http_get(p.addr, "/readyz").await.0 == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "{} never became ready", p.name);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `GET path` with the admin token; `(0, Null)` when nothing listens.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, Value) {
    http(addr, "GET", path, None).await
}

/// `POST path` with a JSON body and the admin token.
pub async fn http_post(addr: SocketAddr, path: &str, body: &Value) -> (u16, Value) {
    http(addr, "POST", path, Some(body)).await
}

/// `DELETE path` with the admin token.
pub async fn http_delete(addr: SocketAddr, path: &str) -> (u16, Value) {
    http(addr, "DELETE", path, None).await
}

/// One HTTP/1.1 request (Connection: close) with the admin token: the status
/// and the body as JSON (a string when it is not JSON).
async fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return (0, Value::Null);
    };
    let body = body.map(Value::to_string).unwrap_or_default();
    let content = if body.is_empty() {
        String::new()
    } else {
        format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        )
    };
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nConnection: close\r\n{content}\r\n{body}"
    );
    if s.write_all(req.as_bytes()).await.is_err() {
        return (0, Value::Null);
    }
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    (
        status,
        serde_json::from_str(body).unwrap_or(Value::String(body.to_owned())),
    )
}

/// A WebSocket client authenticated with a JWT.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub welcome: Value,
}

impl Client {
    pub async fn connect(addr: SocketAddr, user: &str) -> Self {
        let (ws, _) =
            tokio_tungstenite::connect_async(format!("ws://{addr}/ws?token={}", token(user)))
                .await
                .unwrap();
        let mut c = Self {
            ws,
            welcome: Value::Null,
        };
        c.welcome = c.next().await.expect("welcome");
        assert_eq!(c.welcome["type"], "welcome");
        c
    }

    /// Connects, or `None` when the connection or the upgrade fails (a pod going
    /// away, a Service without endpoints yet).
    pub async fn try_connect(addr: SocketAddr, user: &str) -> Option<Self> {
        let url = format!("ws://{addr}/ws?token={}", token(user));
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .ok()?
            .ok()?;
        let mut c = Self {
            ws,
            welcome: Value::Null,
        };
        let welcome = tokio::time::timeout(WAIT, c.ws.next()).await.ok()??.ok()?;
        c.welcome = serde_json::from_str(welcome.to_text().ok()?).ok()?;
        (c.welcome["type"] == "welcome").then_some(c)
    }

    pub async fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).await.unwrap();
    }

    /// Sends; `false` when the connection is gone.
    pub async fn try_send(&mut self, v: Value) -> bool {
        self.ws.send(Message::text(v.to_string())).await.is_ok()
    }

    /// The next JSON frame within `within`: `Err(())` on timeout, `Ok(None)` when
    /// the connection ended.
    pub async fn next_within(&mut self, within: Duration) -> Result<Option<Value>, ()> {
        loop {
            let m = tokio::time::timeout(within, self.ws.next())
                .await
                .map_err(|_| ())?;
            match m {
                Some(Ok(Message::Text(t))) => {
                    return Ok(serde_json::from_str(t.as_str()).ok());
                }
                Some(Ok(Message::Close(_)) | Err(_)) | None => return Ok(None),
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Reads (and drops) frames until the server closes; its close code.
    pub async fn close_code(&mut self) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + WAIT;
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

    /// Closes with a close frame and waits for the server's.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        let _ = tokio::time::timeout(WAIT, async { while self.ws.next().await.is_some() {} }).await;
    }

    /// The next JSON frame; `None` when the connection ended.
    pub async fn next(&mut self) -> Option<Value> {
        loop {
            let m = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for a frame")?;
            match m {
                Ok(Message::Text(t)) => return Some(serde_json::from_str(t.as_str()).unwrap()),
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }

    /// The next frame of type `ty`, skipping presence and group frames.
    pub async fn expect(&mut self, ty: &str) -> Value {
        loop {
            let v = self
                .next()
                .await
                .unwrap_or_else(|| panic!("connection ended while waiting for {ty}"));
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

    /// Sends and returns the `sent` answer, passing over the receipts and
    /// presence frames that arrive meanwhile.
    pub async fn say(&mut self, to: &str, cid: &str, content: &str) -> Value {
        self.send(json!({"type": "send", "client_msg_id": cid, "to": to, "content": content}))
            .await;
        loop {
            let v = self
                .next()
                .await
                .expect("connection ended while waiting for sent");
            match v["type"].as_str() {
                Some("sent") => return v,
                Some("delivered" | "read" | "presence" | "typing") => continue,
                _ => panic!("expected sent, got {v}"),
            }
        }
    }
}

/// Runs `scripts/deps <command>` (`restart-broker`, `restart-redis`) on the
/// dependencies `scripts/deps start` started (found through `SB_DEPS_DIR`);
/// returns how long it took.
pub fn deps(command: &str) -> Duration {
    env("SB_DEPS_DIR");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/deps");
    let began = Instant::now();
    let status = Command::new("bash")
        .arg(&script)
        .arg(command)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(status.success(), "scripts/deps {command} failed: {status}");
    began.elapsed()
}
