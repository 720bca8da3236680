//! The node under test: a child process started here, or one already running
//! (`--url`). Also reads its `/metrics`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::client::Endpoint;
use crate::proto::Proto;

/// How to reach (or start) the node. Shared by every scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct TargetArgs {
    /// Node binary to start on a free loopback port (killed at the end).
    #[arg(long, default_value = "target/release/switchboard-node")]
    pub node_bin: PathBuf,

    /// Use an already running node instead of starting one, e.g.
    /// `ws://127.0.0.1:8080/ws` (path defaults to `/ws`). Its rate limit must
    /// allow the offered load.
    #[arg(long)]
    pub url: Option<String>,

    /// PID of the node given by `--url`, for RSS and CPU figures.
    #[arg(long, requires = "url")]
    pub node_pid: Option<u32>,

    /// Copy the started node's log lines to stderr.
    #[arg(long)]
    pub node_log: bool,

    /// The server under test: switchboard-node, or Centrifugo for the
    /// side-by-side comparison (docs/benchmarks.md), started from
    /// `--centrifugo-bin` with the memory engine (one node) or the Redis
    /// engine (`--nodes 2`, on `--redis-url`).
    #[arg(long, value_enum, default_value_t = Proto::Switchboard)]
    pub server: Proto,

    /// Centrifugo binary (`scripts/peers build` builds it and prints its path).
    #[arg(long, env = "SB_CENTRIFUGO_BIN")]
    pub centrifugo_bin: Option<PathBuf>,

    /// Centrifugo's history size per channel (0: off). With history on, a
    /// publication is stored before it is sent, which is closer to
    /// Switchboard's stored, acknowledged delivery.
    #[arg(long, default_value_t = 0)]
    pub centrifugo_history: u32,

    /// Run each started server on these CPUs (`taskset -c LIST`, e.g. `0`),
    /// so that the loadgen (pinned elsewhere by the caller, e.g. `taskset -c
    /// 1 switchboard-loadgen ...`) does not share its core.
    #[arg(long, value_name = "LIST")]
    pub server_cpus: Option<String>,

    /// Extra arguments for the started node, after `--`. The loadgen sets
    /// `SB_LISTEN=127.0.0.1:0`, `SB_RATE_LIMIT=100000` and
    /// `SB_RATE_BURST=100000` in the node's environment; flags given here
    /// override them.
    #[arg(last = true, value_name = "NODE_ARGS")]
    pub node_args: Vec<String>,
}

/// A node the loadgen talks to.
#[derive(Debug)]
pub struct Target {
    pub endpoint: Endpoint,
    pub pid: Option<u32>,
    child: Option<Child>,
}

impl Target {
    /// The Switchboard node `args` name: the one at `--url`, or one started
    /// here. (Centrifugo is started by the centrifugo module.)
    pub async fn open(args: &TargetArgs) -> anyhow::Result<Self> {
        match &args.url {
            Some(url) => {
                let (addr, ws_path) = parse_ws_url(url).await?;
                Ok(Self {
                    endpoint: Endpoint {
                        addr,
                        ws_path,
                        proto: Proto::Switchboard,
                    },
                    pid: args.node_pid,
                    child: None,
                })
            }
            None => Self::spawn(args, &[]).await,
        }
    }

    /// Starts a node with `env` added to its environment (before `--` arguments).
    pub async fn spawn(args: &TargetArgs, env: &[(String, String)]) -> anyhow::Result<Self> {
        let mut child = server_command(&args.node_bin, args.server_cpus.as_deref())
            .args(&args.node_args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("SB_LISTEN", "127.0.0.1:0")
            .env("SB_RATE_LIMIT", "100000")
            .env("SB_RATE_BURST", "100000")
            .env("SB_LOG_FORMAT", "text")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start {} (build it with `cargo build --release -p switchboard-node`)",
                    args.node_bin.display()
                )
            })?;
        let pid = child.id().context("node exited at once")?;
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let mut lines = BufReader::new(stdout).lines();
        let found = tokio::time::timeout(Duration::from_secs(15), async {
            while let Some(line) = lines.next_line().await? {
                if args.node_log {
                    eprintln!("[node] {line}");
                }
                if let Some(addr) = parse_listening_line(&line) {
                    return Ok(Some(addr));
                }
            }
            Ok::<_, std::io::Error>(None)
        })
        .await;
        let addr = match found {
            Ok(Ok(Some(addr))) => addr,
            Ok(Ok(None)) => {
                let status = child.wait().await?;
                bail!("node exited ({status}) before it was listening");
            }
            Ok(Err(e)) => return Err(e).context("reading the node's stdout"),
            Err(_) => bail!("node did not say where it listens within 15 s"),
        };
        // Keep draining its stdout so the node never blocks on a full pipe.
        let echo = args.node_log;
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if echo {
                    eprintln!("[node] {line}");
                }
            }
        });
        Ok(Self {
            endpoint: Endpoint {
                addr,
                ws_path: Proto::Switchboard.ws_path().into(),
                proto: Proto::Switchboard,
            },
            pid: Some(pid),
            child: Some(child),
        })
    }

    /// A server child this module did not start itself (Centrifugo).
    pub fn started(endpoint: Endpoint, child: Child) -> Self {
        Self {
            endpoint,
            pid: child.id(),
            child: Some(child),
        }
    }

    /// Fails if a started node has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(c) = &mut self.child
            && let Some(status) = c.try_wait()?
        {
            bail!("the node exited during the run ({status})");
        }
        Ok(())
    }

    /// Kills a started node and reaps it. Nothing for `--url`.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.take() {
            if let Some(status) = c.try_wait()? {
                bail!("the node had exited ({status})");
            }
            c.start_kill().context("killing the node")?;
            let _ = tokio::time::timeout(Duration::from_secs(5), c.wait()).await;
        }
        Ok(())
    }

    /// Whether `/readyz` answers 200 (a cluster node: its bus is up).
    pub async fn ready(&self) -> bool {
        if self.endpoint.proto == Proto::Centrifugo {
            return true;
        }
        tokio::time::timeout(
            Duration::from_secs(2),
            http_get(self.endpoint.addr, "/readyz"),
        )
        .await
        .is_ok_and(|r| r.is_ok())
    }

    /// The node's `/metrics`, parsed.
    pub async fn metrics(&self) -> anyhow::Result<Metrics> {
        let text = tokio::time::timeout(
            Duration::from_secs(5),
            http_get(self.endpoint.addr, "/metrics"),
        )
        .await
        .context("GET /metrics timed out")??;
        Ok(Metrics::parse(&text))
    }
}

/// `bin`, under `taskset -c CPUS` when given; killed when dropped.
pub fn server_command(bin: &std::path::Path, cpus: Option<&str>) -> Command {
    let mut c = match cpus {
        Some(list) => {
            let mut c = Command::new("taskset");
            c.args(["-c", list]).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    c.kill_on_drop(true);
    c
}

/// Finds `listening on http://ADDR` in a log line (ANSI colours removed).
fn parse_listening_line(line: &str) -> Option<SocketAddr> {
    let plain = strip_ansi(line);
    let rest = plain.split("listening on http://").nth(1)?;
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '[' | ']')))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ params... final byte in @..~
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

async fn parse_ws_url(url: &str) -> anyhow::Result<(SocketAddr, String)> {
    let rest = url
        .strip_prefix("ws://")
        .with_context(|| format!("--url must start with ws:// (got {url})"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/ws"),
    };
    let addr = tokio::net::lookup_host(authority)
        .await
        .with_context(|| format!("cannot resolve {authority}"))?
        .next()
        .with_context(|| format!("{authority} resolves to nothing"))?;
    Ok((addr, path.to_owned()))
}

/// A minimal HTTP/1.0 GET (no chunked encoding to decode); returns the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("malformed HTTP response")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!(
            "GET {path}: {}",
            head.lines().next().unwrap_or("no status line")
        );
    }
    Ok(body.to_owned())
}

/// A minimal HTTP/1.0 POST of a JSON body (a node's admin API, open on the
/// loadgen's dev-mode clusters); fails unless the status is 2xx.
pub async fn http_post(
    addr: SocketAddr,
    path: &str,
    body: &serde_json::Value,
) -> anyhow::Result<String> {
    let body = body.to_string();
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(
        format!(
            "POST {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("malformed HTTP response")?;
    if !(head.starts_with("HTTP/1.1 2") || head.starts_with("HTTP/1.0 2")) {
        bail!(
            "POST {path}: {}",
            head.lines().next().unwrap_or("no status line")
        );
    }
    Ok(body.to_owned())
}

/// The few node metrics the loadgen reports.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub connections: Option<f64>,
    /// `(upper bound in seconds, cumulative count)`, ascending.
    pub delivery_buckets: Vec<(f64, u64)>,
    pub delivery_count: u64,
}

impl Metrics {
    fn parse(text: &str) -> Self {
        let mut m = Self::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((name, value)) = line.rsplit_once(' ') else {
                continue;
            };
            if name == "switchboard_connections" {
                m.connections = value.parse().ok();
            } else if name == "switchboard_delivery_latency_seconds_count"
                || name.starts_with("switchboard_delivery_latency_seconds_count{")
            {
                // Summed over the paths (local, cross_pod).
                m.delivery_count += value.parse::<u64>().unwrap_or(0);
            } else if let Some(le) = name
                .strip_prefix("switchboard_delivery_latency_seconds_bucket{")
                .and_then(|s| s.strip_suffix('}'))
                .and_then(|labels| {
                    labels
                        .split(',')
                        .find_map(|l| l.strip_prefix("le=\"")?.strip_suffix('"'))
                })
            {
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap_or(f64::INFINITY)
                };
                if let Ok(n) = value.parse::<u64>() {
                    match m.delivery_buckets.iter_mut().find(|(b, _)| *b == bound) {
                        Some(bucket) => bucket.1 += n,
                        None => m.delivery_buckets.push((bound, n)),
                    }
                }
            }
        }
        m.delivery_buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        m
    }

    /// Sums another node's figures into these (buckets matched by bound).
    pub fn merge(&mut self, other: &Metrics) {
        self.connections = match (self.connections, other.connections) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        self.delivery_count += other.delivery_count;
        for &(le, n) in &other.delivery_buckets {
            match self.delivery_buckets.iter_mut().find(|(b, _)| *b == le) {
                Some(bucket) => bucket.1 += n,
                None => self.delivery_buckets.push((le, n)),
            }
        }
        self.delivery_buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    }

    /// Delivery latency histogram minus an earlier snapshot.
    pub fn delivery_since(&self, earlier: &Metrics) -> Vec<(f64, u64)> {
        self.delivery_buckets
            .iter()
            .map(|&(le, n)| {
                let before = earlier
                    .delivery_buckets
                    .iter()
                    .find(|(b, _)| *b == le)
                    .map_or(0, |&(_, c)| c);
                (le, n.saturating_sub(before))
            })
            .collect()
    }
}

/// The upper bound of the bucket holding quantile `q` of a cumulative
/// histogram, in seconds (`None` when empty).
pub fn bucket_quantile(buckets: &[(f64, u64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = (q * total as f64).ceil() as u64;
    buckets.iter().find(|(_, n)| *n >= rank).map(|&(le, _)| le)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_port_in_a_coloured_log_line() {
        let line = "\u{1b}[2m2026-01-01T00:00:00Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m switchboard_node: switchboard-node listening on http://127.0.0.1:43121 (web page at /, WebSocket at /ws) \u{1b}[3mpod\u{1b}[0m=standalone";
        assert_eq!(
            parse_listening_line(line),
            Some("127.0.0.1:43121".parse().unwrap())
        );
        assert_eq!(parse_listening_line("nothing here"), None);
    }

    #[test]
    fn parses_metrics_and_bucket_quantiles() {
        let text = "# HELP x\nswitchboard_connections 12\n\
            switchboard_delivery_latency_seconds_sum{path=\"local\"} 0.5\n\
            switchboard_delivery_latency_seconds_count{path=\"local\"} 6\n\
            switchboard_delivery_latency_seconds_bucket{path=\"local\",le=\"0.0001\"} 4\n\
            switchboard_delivery_latency_seconds_bucket{path=\"local\",le=\"0.0002\"} 6\n\
            switchboard_delivery_latency_seconds_bucket{path=\"local\",le=\"+Inf\"} 6\n\
            switchboard_delivery_latency_seconds_count{path=\"cross_pod\"} 4\n\
            switchboard_delivery_latency_seconds_bucket{le=\"0.0001\",path=\"cross_pod\"} 1\n\
            switchboard_delivery_latency_seconds_bucket{path=\"cross_pod\",le=\"0.0002\"} 3\n\
            switchboard_delivery_latency_seconds_bucket{path=\"cross_pod\",le=\"+Inf\"} 4\n";
        let m = Metrics::parse(text);
        assert_eq!(m.connections, Some(12.0));
        assert_eq!(m.delivery_count, 10);
        assert_eq!(bucket_quantile(&m.delivery_buckets, 0.5), Some(0.0001));
        assert_eq!(bucket_quantile(&m.delivery_buckets, 0.9), Some(0.0002));
        assert_eq!(
            bucket_quantile(&m.delivery_buckets, 0.99),
            Some(f64::INFINITY)
        );
        let diff = m.delivery_since(&Metrics::parse(
            "switchboard_delivery_latency_seconds_bucket{le=\"0.0001\"} 5\n",
        ));
        assert_eq!(diff[0], (0.0001, 0));
    }
}
