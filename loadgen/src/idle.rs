//! `idle`: how much node memory one idle WebSocket connection costs.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio_tungstenite::tungstenite::Message;

use crate::client;
use crate::proto::{Proto, Ws};
use crate::report::{Counts, Out, counts_line, mib, r1};
use crate::sys;
use crate::target::{Target, TargetArgs};

/// Open N idle connections and measure the node's RSS per connection.
#[derive(Debug, Clone, clap::Args)]
pub struct IdleArgs {
    /// Idle connections to open (one user each).
    #[arg(long, short = 'n', default_value_t = 10_000)]
    pub connections: usize,

    /// Connection attempts in flight at once.
    #[arg(long, default_value_t = 200)]
    pub concurrency: usize,

    /// Wait this long (ms) after the last welcome before measuring RSS.
    #[arg(long, default_value_t = 1000)]
    pub settle_ms: u64,

    /// Keep the connections open this many seconds after measuring. Above
    /// 25 s they send a `ping` every 25 s to stay under the idle timeout.
    #[arg(long, default_value_t = 2.0)]
    pub hold_secs: f64,

    /// Connect from this many loopback source addresses, 127.0.0.1 upwards
    /// (round robin). One source address has about 28,000 ephemeral ports
    /// towards the node's one port: above that many connections, use more.
    /// The node must listen on an IPv4 loopback address.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=250))]
    pub sources: u8,

    /// Read buffer of each of the loadgen's own client sockets (bytes).
    #[arg(long, default_value_t = 4096)]
    pub client_read_buffer: usize,

    #[command(flatten)]
    pub target: TargetArgs,
}

#[derive(Debug, Serialize)]
struct IdleSummary {
    scenario: &'static str,
    ok: bool,
    failures: Vec<String>,
    connections_requested: usize,
    connections_open: usize,
    connect_failures: Counts,
    connect_secs: f64,
    connects_per_sec: f64,
    node_connections_gauge: Option<f64>,
    node_rss_before_bytes: Option<u64>,
    node_rss_with_connections_bytes: Option<u64>,
    node_rss_delta_bytes: Option<i64>,
    node_rss_per_connection_bytes: Option<f64>,
    node_rss_per_connection_kib: Option<f64>,
    node_rss_after_close_bytes: Option<u64>,
    node_cpu_connect_secs: Option<f64>,
    loadgen_rss_before_bytes: u64,
    loadgen_rss_with_connections_bytes: u64,
    loadgen_rss_per_connection_bytes: f64,
    connections_closed_in_secs: Option<f64>,
}

pub async fn run(args: IdleArgs, out: Out) -> anyhow::Result<bool> {
    if args.target.server == Proto::Centrifugo
        && args.settle_ms as f64 / 1000.0 + args.hold_secs > 10.0
    {
        // Its first ping comes 12.5-25 s after connect and wants an answer
        // from a connection nobody reads here.
        anyhow::bail!(
            "with --server centrifugo, --settle-ms and --hold-secs together stay under 10 s"
        );
    }
    let mut failures = Vec::new();
    let mut target = match args.target.server {
        Proto::Centrifugo => crate::centrifugo::spawn(&args.target, None).await?,
        Proto::Switchboard => Target::open(&args.target).await?,
    };
    let pid = target.pid;
    out.line(format!(
        "idle: node at {} (pid {}), {} connections, {} at a time",
        target.endpoint.addr,
        pid.map_or("unknown".into(), |p| p.to_string()),
        args.connections,
        args.concurrency
    ));

    // Let the node finish starting before the baseline.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let gauge_before = target.metrics().await.ok().and_then(|m| m.connections);
    let node_rss_before = pid.map(sys::rss_bytes).transpose()?;
    let node_cpu_before = pid.map(sys::cpu_time).transpose()?;
    let me = std::process::id();
    let lg_rss_before = sys::rss_bytes(me)?;

    if args.sources > 1 && !matches!(target.endpoint.addr.ip(), IpAddr::V4(ip) if ip.is_loopback())
    {
        anyhow::bail!(
            "--sources binds to 127.0.0.x: the node must be on IPv4 loopback too, not {}",
            target.endpoint.addr
        );
    }
    let prefix = format!("lg{me}i");
    let users: Vec<String> = (0..args.connections)
        .map(|i| format!("{prefix}{i}"))
        .collect();
    let cfg = client::ws_config(args.client_read_buffer, 0);
    let t = Instant::now();
    let connected = client::connect_many(
        users
            .into_iter()
            .map(|u| (target.endpoint.clone(), u))
            .collect(),
        cfg,
        args.concurrency,
        &sources(args.sources),
    )
    .await;
    let connect_secs = t.elapsed().as_secs_f64();
    let node_cpu_connect = match (pid, node_cpu_before) {
        (Some(p), Some(before)) => Some((sys::cpu_time(p)? - before).as_secs_f64()),
        _ => None,
    };
    let failed = connected.failed();
    let mut conns: Vec<Ws> = connected.conns.into_iter().flatten().collect();
    let open = conns.len();
    out.line(format!(
        "connected {open}/{} in {connect_secs:.2} s ({:.0}/s); failed: {}",
        args.connections,
        open as f64 / connect_secs,
        counts_line(&connected.failures)
    ));
    for s in &connected.samples {
        out.line(format!("  connect failure: {s}"));
    }
    if failed > 0 {
        failures.push(format!("{failed} connections failed"));
    }

    tokio::time::sleep(Duration::from_millis(args.settle_ms)).await;
    target.check_alive()?;
    let gauge = target.metrics().await.ok().and_then(|m| m.connections);
    let node_rss_with = pid.map(sys::rss_bytes).transpose()?;
    let lg_rss_with = sys::rss_bytes(me)?;
    if let (Some(g), Some(g0)) = (gauge, gauge_before)
        && (g - g0).round() as usize != open
    {
        failures.push(format!(
            "the node counts {} new connections, {open} are open here",
            g - g0
        ));
    }

    let delta = match (node_rss_before, node_rss_with) {
        (Some(a), Some(b)) => Some(b as i64 - a as i64),
        _ => None,
    };
    let per_conn = delta.filter(|_| open > 0).map(|d| d as f64 / open as f64);
    match (node_rss_before, node_rss_with, delta, per_conn) {
        (Some(a), Some(b), Some(d), Some(p)) => {
            out.line(format!(
                "node RSS: {:.1} MiB before, {:.1} MiB with {open} idle connections (+{:.1} MiB)",
                mib(a),
                mib(b),
                d as f64 / (1024.0 * 1024.0)
            ));
            out.line(format!(
                "node RSS per idle connection: {p:.0} bytes ({:.2} KiB)",
                p / 1024.0
            ));
        }
        _ => out.line("node RSS: unknown (give --node-pid with --url)"),
    }
    if let Some(g) = gauge {
        out.line(format!("node connections gauge: {g}"));
    }
    let lg_per_conn = (lg_rss_with as f64 - lg_rss_before as f64) / open.max(1) as f64;
    out.line(format!(
        "loadgen RSS: {:.1} MiB before, {:.1} MiB with connections ({lg_per_conn:.0} bytes per connection)",
        mib(lg_rss_before),
        mib(lg_rss_with)
    ));

    hold(&mut conns, Duration::from_secs_f64(args.hold_secs.max(0.0))).await;
    target.check_alive()?;

    // Close all, then wait for the node to forget them.
    let t = Instant::now();
    futures_util::stream::iter(conns)
        .for_each_concurrent(500, |mut ws| async move {
            let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
        })
        .await;
    let mut closed_in = None;
    if let Some(g0) = gauge_before {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(g)) = target.metrics().await.map(|m| m.connections)
                && g <= g0
            {
                closed_in = Some(t.elapsed().as_secs_f64());
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        match closed_in {
            Some(s) => out.line(format!("all connections closed on the node in {s:.2} s")),
            None => failures.push("the node still counts connections 10 s after closing".into()),
        }
    }
    let node_rss_after_close = pid.map(sys::rss_bytes).transpose()?;
    if let Some(r) = node_rss_after_close {
        out.line(format!("node RSS after closing: {:.1} MiB", mib(r)));
    }
    target.stop().await?;

    let ok = failures.is_empty();
    for f in &failures {
        out.line(format!("FAILED: {f}"));
    }
    out.summary(&IdleSummary {
        scenario: "idle",
        ok,
        failures,
        connections_requested: args.connections,
        connections_open: open,
        connect_failures: connected.failures,
        connect_secs: (connect_secs * 1000.0).round() / 1000.0,
        connects_per_sec: r1(open as f64 / connect_secs),
        node_connections_gauge: gauge,
        node_rss_before_bytes: node_rss_before,
        node_rss_with_connections_bytes: node_rss_with,
        node_rss_delta_bytes: delta,
        node_rss_per_connection_bytes: per_conn.map(r1),
        node_rss_per_connection_kib: per_conn.map(|p| (p / 1024.0 * 100.0).round() / 100.0),
        node_rss_after_close_bytes: node_rss_after_close,
        node_cpu_connect_secs: node_cpu_connect,
        loadgen_rss_before_bytes: lg_rss_before,
        loadgen_rss_with_connections_bytes: lg_rss_with,
        loadgen_rss_per_connection_bytes: r1(lg_per_conn),
        connections_closed_in_secs: closed_in,
    })?;
    Ok(ok)
}

/// `n` loopback source addresses from 127.0.0.1; none (the OS picks) for one.
fn sources(n: u8) -> Vec<IpAddr> {
    if n <= 1 {
        return Vec::new();
    }
    (1..=n)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)))
        .collect()
}

/// Keeps the connections open for `d`, each pinging every 25 s (the node
/// closes a connection silent for three heartbeat intervals, 90 s by
/// default). The pings are spread over the 25 s, a slice every 100 ms, as
/// real clients' heartbeats are (each from its own connect time), not sent
/// in one burst.
async fn hold(conns: &mut [Ws], d: Duration) {
    const PING_EVERY: Duration = Duration::from_secs(25);
    const TICK: Duration = Duration::from_millis(100);
    if d <= PING_EVERY {
        // Fresh connections: nothing to keep alive yet.
        tokio::time::sleep(d).await;
        return;
    }
    let slices = (PING_EVERY.as_millis() / TICK.as_millis()) as usize;
    let per_tick = conns.len().div_ceil(slices).max(1);
    let end = Instant::now() + d;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + TICK, TICK);
    let mut next = 0;
    while Instant::now() < end {
        tokio::time::timeout(end.saturating_duration_since(Instant::now()), tick.tick())
            .await
            .ok();
        if Instant::now() >= end || conns.is_empty() {
            return;
        }
        let from = next % conns.len();
        let to = (from + per_tick).min(conns.len());
        next = to;
        futures_util::stream::iter(conns[from..to].iter_mut())
            .for_each_concurrent(500, |ws| async move {
                let _ = ws.send(Message::text(r#"{"type":"ping"}"#)).await;
            })
            .await;
    }
}
