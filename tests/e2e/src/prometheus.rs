//! A real Prometheus (built by `scripts/observability build`, found through
//! `SB_PROMETHEUS_BIN`) scraping the test's nodes, and the dashboard's queries
//! run against it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A scrape target: its address and the labels Prometheus gives its series
/// (`namespace`, `pod`: as the chart's PodMonitor does).
#[derive(Debug, Clone)]
pub struct Target {
    pub job: String,
    pub addr: SocketAddr,
    pub labels: Vec<(String, String)>,
}

impl Target {
    /// The pods of `c`, as the chart's PodMonitor labels them.
    pub fn nodes(c: &crate::Cluster) -> Vec<Self> {
        c.pods
            .iter()
            .map(|p| Self {
                job: "switchboard-node".into(),
                addr: p.addr,
                labels: vec![
                    ("namespace".into(), "e2e".into()),
                    ("pod".into(), p.name.clone()),
                ],
            })
            .collect()
    }
}

/// A Prometheus server of the test's own, scraping every second, keeping the
/// labels a target's series carry over the target's own (`honor_labels`, as
/// the chart's operator ServiceMonitor does).
pub struct Prometheus {
    pub addr: SocketAddr,
    child: Child,
    dir: PathBuf,
}

/// Now, in Unix seconds (Prometheus's time).
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The path of a tool `scripts/observability build` made (`SB_PROMETHEUS_BIN`,
/// `SB_PROMTOOL_BIN`); the test suite exports both.
pub fn tool(var: &str) -> PathBuf {
    PathBuf::from(std::env::var(var).unwrap_or_else(|_| {
        panic!(
            "{var} is not set: run `scripts/observability build` and export it (scripts/test does)"
        )
    }))
}

impl Prometheus {
    pub async fn start(targets: &[Target]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let dir = std::env::temp_dir().join(format!("sb-prometheus-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("prometheus dir");
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n",
        );
        for t in targets {
            config.push_str(&format!(
                "  - job_name: {job}-{port}\n    honor_labels: true\n    static_configs:\n      - targets: ['{addr}']\n        labels:\n          job: {job}\n",
                job = t.job,
                port = t.addr.port(),
                addr = t.addr
            ));
            for (k, v) in &t.labels {
                config.push_str(&format!("          {k}: '{v}'\n"));
            }
        }
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config).expect("prometheus config");
        let child = Command::new(tool("SB_PROMETHEUS_BIN"))
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start prometheus");
        let p = Self { addr, child, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while get(addr, "/-/ready").await.map(|(s, _)| s) != Some(200) {
            assert!(Instant::now() < deadline, "prometheus did not become ready");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        p
    }

    /// An instant query: the result vector, or the error Prometheus gave.
    pub async fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let (status, body) = get(self.addr, &format!("/api/v1/query?query={}", encode(expr)))
            .await
            .ok_or("prometheus did not answer")?;
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("{status}: {e}: {body}"))?;
        if v["status"] != "success" {
            return Err(format!("{status}: {} {}", v["errorType"], v["error"]));
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// A range query: the result matrix (each series with its `values`), or
    /// the error Prometheus gave. Times in Unix seconds.
    pub async fn query_range(
        &self,
        expr: &str,
        start: f64,
        end: f64,
        step: f64,
    ) -> Result<Vec<Value>, String> {
        let path = format!(
            "/api/v1/query_range?query={}&start={start:.3}&end={end:.3}&step={step}",
            encode(expr)
        );
        let (status, body) = get(self.addr, &path)
            .await
            .ok_or("prometheus did not answer")?;
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("{status}: {e}: {body}"))?;
        if v["status"] != "success" {
            return Err(format!("{status}: {} {}", v["errorType"], v["error"]));
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// Waits until every target is scraped and up.
    pub async fn wait_up(&self, targets: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let up = self.query("up == 1").await.unwrap_or_default();
            if up.len() >= targets {
                return;
            }
            assert!(Instant::now() < deadline, "targets up: {up:?}");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Prometheus {
    /// The queries still [without data](Self::without_data) after asking
    /// again for up to 30 s: data lags the traffic a little (a scrape a
    /// second, gauges refreshed every 2 s, a command applied a moment later).
    pub async fn without_data_for_long(&self, queries: &[(String, String, String)]) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let failures = self.without_data(queries).await;
            if failures.is_empty() || Instant::now() > deadline {
                return failures;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Runs each dashboard query (as Grafana sends it); returns one line per
    /// query that errors, returns nothing or only NaN.
    pub async fn without_data(&self, queries: &[(String, String, String)]) -> Vec<String> {
        let mut failures = Vec::new();
        for (title, row, expr) in queries {
            match self.query(&as_sent(expr)).await {
                Err(e) => failures.push(format!("{row} / {title}: {expr}: {e}")),
                Ok(result) => {
                    let numbers = result
                        .iter()
                        .filter(|s| s["value"][1].as_str().is_some_and(|v| v != "NaN"))
                        .count();
                    if numbers == 0 {
                        failures.push(format!("{row} / {title}: {expr}: no data: {result:?}"));
                    }
                }
            }
        }
        failures
    }
}

/// Every panel of a Grafana dashboard: (panel title, row title, query).
pub fn dashboard_queries(dashboard: &Value) -> Vec<(String, String, String)> {
    let mut row = String::new();
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().into_iter().flatten() {
        let title = p["title"].as_str().unwrap_or_default().to_owned();
        if p["type"] == "row" {
            row = title;
            continue;
        }
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push((
                title.clone(),
                row.clone(),
                t["expr"].as_str().unwrap_or_default().to_owned(),
            ));
        }
    }
    out
}

/// A dashboard query as Grafana would send it with every namespace and pod
/// selected, over a 1 m rate window.
pub fn as_sent(expr: &str) -> String {
    expr.replace("$namespace", ".*")
        .replace("$pod", ".*")
        .replace("$__rate_interval", "1m")
}

/// `GET path` over HTTP/1.0 (so the body is never chunked): status and body.
pub(crate) async fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

/// Percent-encodes a query parameter.
pub(crate) fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
