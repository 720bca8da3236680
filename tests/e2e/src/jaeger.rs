//! A real Jaeger (v2: an OpenTelemetry collector with Jaeger's in-memory
//! storage and query API; built by `scripts/observability build`, found
//! through `SB_JAEGER_BIN`) receiving the nodes' traces over OTLP/HTTP, and
//! its query API to read them back.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::prometheus::{encode, get, tool};

/// A Jaeger of the test's own. Every listener is on 127.0.0.1 on a port
/// chosen here: the OTLP/HTTP receiver, the query API (HTTP and its gRPC
/// twin, which always starts); its own metrics and tracing are off.
pub struct Jaeger {
    /// Where nodes send spans (`SB_OTLP_ENDPOINT`).
    pub otlp: SocketAddr,
    /// The query API (`/api/traces`).
    pub query: SocketAddr,
    child: Child,
    dir: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Jaeger {
    pub async fn start() -> Self {
        let (otlp, query, grpc) = (free_port(), free_port(), free_port());
        let dir = std::env::temp_dir().join(format!("sb-jaeger-{}-{otlp}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("jaeger dir");
        let config = format!(
            "service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: []
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: warn
extensions:
  jaeger_storage:
    backends:
      mem_store:
        memory:
          max_traces: 100000
  jaeger_query:
    storage:
      traces: mem_store
    enable_tracing: false
    http:
      endpoint: 127.0.0.1:{query}
    grpc:
      endpoint: 127.0.0.1:{grpc}
receivers:
  otlp:
    protocols:
      http:
        endpoint: 127.0.0.1:{otlp}
exporters:
  jaeger_storage_exporter:
    trace_storage: mem_store
"
        );
        let config_file = dir.join("jaeger.yaml");
        std::fs::write(&config_file, config).expect("jaeger config");
        let child = Command::new(tool("SB_JAEGER_BIN"))
            .arg("--config")
            .arg(&config_file)
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start jaeger");
        let j = Self {
            otlp: SocketAddr::from(([127, 0, 0, 1], otlp)),
            query: SocketAddr::from(([127, 0, 0, 1], query)),
            child,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while get(j.query, "/api/services").await.map(|(s, _)| s) != Some(200) {
            assert!(Instant::now() < deadline, "jaeger did not answer");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        j
    }

    /// The OTLP endpoint as nodes take it (`http://127.0.0.1:<port>`).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.otlp)
    }

    /// The traces of `service` having a span with every tag of `tags`
    /// (attribute values as strings), newest first.
    pub async fn traces(&self, service: &str, tags: &Value) -> Vec<Value> {
        let path = format!(
            "/api/traces?service={}&tags={}&limit=20&lookback=1h",
            encode(service),
            encode(&tags.to_string())
        );
        let Some((200, body)) = get(self.query, &path).await else {
            return Vec::new();
        };
        let v: Value = serde_json::from_str(&body).unwrap_or_default();
        v["data"].as_array().cloned().unwrap_or_default()
    }

    /// Waits (up to `within`) for a trace of `service` with a span carrying
    /// `tags` that `complete` accepts; the last one seen otherwise.
    pub async fn wait_trace(
        &self,
        service: &str,
        tags: &Value,
        within: Duration,
        complete: impl Fn(&Value) -> bool,
    ) -> Result<Value, Option<Value>> {
        let deadline = Instant::now() + within;
        let mut last = None;
        loop {
            for t in self.traces(service, tags).await {
                if complete(&t) {
                    return Ok(t);
                }
                last = Some(t);
            }
            if Instant::now() > deadline {
                return Err(last);
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

impl Drop for Jaeger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One span of a Jaeger trace, flattened: what the tests look at.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    pub id: String,
    pub parent: Option<String>,
    pub operation: String,
    /// `service.instance.id` of the process (the pod).
    pub instance: String,
    pub tags: Vec<(String, String)>,
}

impl Span {
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The spans of a trace from `/api/traces`, with their pod.
pub fn spans(trace: &Value) -> Vec<Span> {
    let tags = |v: &Value| -> Vec<(String, String)> {
        v.as_array()
            .into_iter()
            .flatten()
            .map(|t| {
                let value = match &t["value"] {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (t["key"].as_str().unwrap_or_default().to_owned(), value)
            })
            .collect()
    };
    trace["spans"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            let process = &trace["processes"][s["processID"].as_str().unwrap_or_default()];
            let instance = tags(&process["tags"])
                .into_iter()
                .find(|(k, _)| k == "service.instance.id")
                .map(|(_, v)| v)
                .unwrap_or_default();
            Span {
                id: s["spanID"].as_str().unwrap_or_default().to_owned(),
                parent: s["references"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|r| r["refType"] == "CHILD_OF")
                    .and_then(|r| r["spanID"].as_str())
                    .map(str::to_owned),
                operation: s["operationName"].as_str().unwrap_or_default().to_owned(),
                instance,
                tags: tags(&s["tags"]),
            }
        })
        .collect()
}
