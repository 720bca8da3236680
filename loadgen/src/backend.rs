//! `backend`: what other services see of a cluster over RocketMQ: the
//! request-response round trip (requests at a fixed concurrency, closed loop,
//! through the workspace's `RequestClient`) and commands per second
//! (notices published as fast as the producer goes, timed until every node
//! reports them applied).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use serde_json::json;
use switchboard_client::{ClientConfig, CommandPublisher, RequestClient};
use switchboard_rocketmq::{Admin, Runtime};

use crate::cluster::{ClusterArgs, Nodes};
use crate::report::Out;
use crate::target::{TargetArgs, http_get};

#[derive(Debug, clap::Args)]
pub struct BackendArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Requests to send (`get_presence` of one user, or `send_message` with
    /// `--send`).
    #[arg(long, default_value_t = 2000)]
    pub requests: u32,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 8)]
    pub concurrency: u32,
    /// Send messages (`send_message` to a group of two) instead of reading
    /// presence.
    #[arg(long)]
    pub send: bool,
    /// Commands to publish (`notice` to one of 100 users, 64 order keys).
    #[arg(long, default_value_t = 2000)]
    pub commands: u32,
}

/// Sums a counter of every node's `/metrics` over the lines matching `filter`.
async fn counter(nodes: &Nodes, name: &str, filter: &str) -> anyhow::Result<u64> {
    let mut sum = 0.0;
    for t in &nodes.targets {
        let text = http_get(t.endpoint.addr, "/metrics").await?;
        sum += text
            .lines()
            .filter(|l| l.starts_with(name) && l.contains(filter))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
    }
    Ok(sum as u64)
}

async fn wait_consumers(nodes: &Nodes) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let want = 2 * nodes.targets.len() as u64;
    while counter(nodes, "switchboard_consumer_up{", "").await? < want {
        if Instant::now() > deadline {
            bail!("the nodes' command and request consumers did not start within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

pub async fn run(args: BackendArgs, out: Out) -> anyhow::Result<bool> {
    let mut cluster = args.cluster.clone();
    cluster.clustered = true;
    let nodes = Nodes::open(&args.target, &cluster).await?;
    let result = measure(&args, &nodes, out).await;
    nodes.stop().await?;
    result
}

async fn measure(args: &BackendArgs, nodes: &Nodes, out: Out) -> anyhow::Result<bool> {
    let (namesrv, prefix) = nodes
        .rocketmq()
        .context("the backend scenario needs a cluster on RocketMQ")?;
    wait_consumers(nodes).await?;
    let group = format!("{prefix}-lg-backend");
    let rt = Runtime::new()?;
    let admin = Admin::connect(&rt, namesrv).await?;
    admin.ensure_group(&group, 0).await?;
    if args.send {
        let addr = nodes.targets[0].endpoint.addr;
        crate::target::http_post(
            addr,
            "/api/v1/groups",
            &json!({"id": "lg", "members": ["lg-a", "lg-b"]}),
        )
        .await
        .context("creating the group the messages go to")?;
    }
    let client = Arc::new(
        RequestClient::start(ClientConfig {
            namesrv: namesrv.to_owned(),
            prefix: prefix.to_owned(),
            responses_group: group.clone(),
            credentials: None,
            timeout: Duration::from_secs(10),
        })
        .await?,
    );

    // Requests, closed loop.
    let started = Instant::now();
    let per_task = args.requests.div_ceil(args.concurrency.max(1));
    let mut tasks = Vec::new();
    for t in 0..args.concurrency.max(1) {
        let client = client.clone();
        let send = args.send;
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let mut failed = 0u32;
            for i in 0..per_task {
                let (action, data) = if send {
                    (
                        "send_message",
                        json!({"message": format!("m{t}-{i}"), "room_id": "lg"}),
                    )
                } else {
                    ("get_presence", json!({"user_ids": ["lg-a"]}))
                };
                let at = Instant::now();
                match client.request("lg-a", action, data).await {
                    Ok(r) if r.success => h.record(at.elapsed().as_micros().max(1) as u64)?,
                    _ => failed += 1,
                }
            }
            anyhow::Ok((h, failed))
        }));
    }
    let mut rtt = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut failed = 0;
    for t in tasks {
        let (h, f) = t.await??;
        rtt.add(h)?;
        failed += f;
    }
    let took = started.elapsed();
    let request_time = took;
    let answered = rtt.len();
    let ms = |q: f64| rtt.value_at_quantile(q) as f64 / 1000.0;
    let action = if args.send {
        "send_message"
    } else {
        "get_presence"
    };
    out.line(format!(
        "requests ({action}, {} nodes, concurrency {}): {answered} answered, {failed} failed in {:.1} s = {:.0}/s; round trip p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        nodes.targets.len(),
        args.concurrency,
        took.as_secs_f64(),
        answered as f64 / took.as_secs_f64(),
        ms(0.5),
        ms(0.9),
        ms(0.99),
        rtt.max() as f64 / 1000.0
    ));
    if let Ok(c) = Arc::try_unwrap(client) {
        c.shutdown().await;
    }

    // Commands, as fast as one producer publishes them.
    let publisher =
        CommandPublisher::start(namesrv, prefix, &format!("{prefix}-lg-commands"), None).await?;
    let before = counter(nodes, "messaging_handler_total{", "outcome=\"applied\"").await?;
    let started = Instant::now();
    for i in 0..args.commands {
        let body = json!({"user_id": format!("lg-u{}", i % 100), "content": format!("notice {i}")});
        publisher
            .publish(
                "notice",
                &body,
                &format!("k{}", i % 64),
                Some(&format!("lg-{i}")),
            )
            .await?;
    }
    let published = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut applied = 0;
    while applied < u64::from(args.commands) {
        applied = counter(nodes, "messaging_handler_total{", "outcome=\"applied\"").await? - before;
        if Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = started.elapsed();
    publisher.shutdown().await;
    out.line(format!(
        "commands (notice, {} nodes): {} published in {:.1} s ({:.0}/s); {applied} applied after {:.1} s = {:.0} commands/s",
        nodes.targets.len(),
        args.commands,
        published.as_secs_f64(),
        f64::from(args.commands) / published.as_secs_f64(),
        took.as_secs_f64(),
        applied as f64 / took.as_secs_f64()
    ));
    admin.delete_group(&group).await?;
    admin.shutdown().await;
    rt.shutdown().await;
    let ok = failed == 0 && applied >= u64::from(args.commands);
    out.summary(&json!({
        "scenario": "backend",
        "nodes": nodes.targets.len(),
        "action": action,
        "concurrency": args.concurrency,
        "requests": args.requests,
        "answered": answered,
        "failed": failed,
        "requests_per_sec": answered as f64 / request_time.as_secs_f64(),
        "rtt_p50_ms": ms(0.5),
        "rtt_p99_ms": ms(0.99),
        "commands": args.commands,
        "applied": applied,
        "commands_per_sec": applied as f64 / took.as_secs_f64(),
        "ok": ok,
    }))?;
    Ok(ok)
}
