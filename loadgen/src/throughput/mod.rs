//! `throughput`: open-loop direct messages between sender/receiver pairs,
//! with end-to-end latency from each message's scheduled send time.
//!
//! A pacer thread owns the schedule: message `j` is due at `start +
//! j / rate` and belongs to sender `j % pairs`, so the senders are evenly
//! staggered. At its due time the pacer hands the message to its sender's
//! task, which writes it without waiting for any reply. The content carries
//! the scheduled time and the time it was actually written (nanoseconds
//! since `start`), so a receiver can compute both latencies.

mod pairs;
mod summary;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use self::pairs::{
    PairStats, Shared, close_sink, new_histogram, pace, receive_loop, sender_read_loop, write_loop,
};
use self::summary::{Latency, ThroughputSummary};
use crate::client::{self, Endpoint};
use crate::cluster::{ClusterArgs, Nodes};
use crate::proto::Proto;
use crate::proto::Ws;
use crate::report::{Out, counts_line, mib, r1};
use crate::sys;
use crate::target::{self, TargetArgs};

/// Offer a fixed message rate through sender/receiver pairs; measure latency.
#[derive(Debug, Clone, clap::Args)]
pub struct ThroughputArgs {
    /// Sender/receiver pairs: two connections and two distinct users each.
    #[arg(long, default_value_t = 100)]
    pub pairs: usize,

    /// Total messages per second offered, spread evenly over the senders.
    #[arg(long, default_value_t = 20_000)]
    pub rate: u64,

    /// Seconds of sending.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,

    /// Messages scheduled in the first seconds are left out of the latency
    /// histograms.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,

    /// Seconds to wait after the last send for outstanding replies.
    #[arg(long, default_value_t = 5.0)]
    pub grace: f64,

    /// Bytes of message content (timestamps, padded with `x`).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(48..=4000))]
    pub content_bytes: u16,

    /// Receivers ack after this many messages; 0 turns acks off.
    #[arg(long, default_value_t = 64)]
    pub ack_batch: usize,

    /// ...or this many milliseconds after the oldest unacked message.
    #[arg(long, default_value_t = 10)]
    pub ack_interval_ms: u64,

    /// Connection attempts in flight at once.
    #[arg(long, default_value_t = 200)]
    pub concurrency: usize,

    /// The pacer wakes at most once per this many microseconds and hands
    /// over every message due by then (each keeps its own scheduled time).
    /// Smaller is more exact but costs the loadgen more CPU.
    #[arg(long, default_value_t = 100)]
    pub pacer_tick_us: u64,

    /// Read buffer of each client socket (bytes). tungstenite zeroes up to
    /// this much on every read, so bigger is slower for small frames.
    #[arg(long, default_value_t = 4096)]
    pub client_read_buffer: usize,

    #[command(flatten)]
    pub target: TargetArgs,

    #[command(flatten)]
    pub cluster: ClusterArgs,
}

pub async fn run(args: ThroughputArgs, out: Out) -> anyhow::Result<bool> {
    if args.pairs == 0 || args.rate == 0 || args.duration <= 0.0 {
        bail!("--pairs, --rate and --duration must be positive");
    }
    if args.ack_batch > 1000 {
        bail!("--ack-batch is at most 1000 (the protocol's limit per ack)");
    }
    let scheduled = (args.rate as f64 * args.duration).round() as u64;
    let mut failures = Vec::new();
    let mut target = Nodes::open(&args.target, &args.cluster).await?;
    let pids = target.pids();
    let node_count = target.len();
    let target_proto = target.proto();
    out.line(format!(
        "throughput: {} node(s) at {}{}, {} pairs, {} msg/s for {} s ({} per sender/s), {} B content, {}",
        target.len(),
        target.describe(),
        if target.len() > 1 {
            match target.proto() {
                Proto::Switchboard => " (every message crosses nodes through RocketMQ)",
                Proto::Centrifugo => " (every message crosses nodes through Redis)",
            }
        } else {
            ""
        },
        args.pairs,
        args.rate,
        args.duration,
        args.rate as f64 / args.pairs as f64,
        args.content_bytes,
        match target_proto {
            Proto::Centrifugo => "no acks (Centrifugo has none)".to_owned(),
            Proto::Switchboard if args.ack_batch == 0 => "acks off".to_owned(),
            Proto::Switchboard => format!(
                "ack every {} msgs or {} ms",
                args.ack_batch, args.ack_interval_ms
            ),
        }
    ));

    // Receivers first, so they are online when the first message arrives.
    let me = std::process::id();
    let recv_users: Vec<String> = (0..args.pairs).map(|i| format!("lg{me}r{i}")).collect();
    let send_users: Vec<String> = (0..args.pairs).map(|i| format!("lg{me}s{i}")).collect();
    let cfg = client::ws_config(args.client_read_buffer, 64 * 1024);
    let t = Instant::now();
    let at = |users: Vec<String>, node: &dyn Fn(usize) -> Endpoint| {
        users
            .into_iter()
            .enumerate()
            .map(|(i, u)| (node(i), u))
            .collect::<Vec<_>>()
    };
    let receivers = client::connect_many(
        at(recv_users, &|i| target.receiver(i).clone()),
        cfg,
        args.concurrency,
        &[],
    )
    .await;
    let senders = client::connect_many(
        at(send_users.clone(), &|i| target.sender(i).clone()),
        cfg,
        args.concurrency,
        &[],
    )
    .await;
    let mut connect_failures = receivers.failures.clone();
    for (k, v) in &senders.failures {
        *connect_failures.entry(k.clone()).or_default() += v;
    }
    out.line(format!(
        "connected {} connections in {:.2} s; failed: {}",
        2 * args.pairs as u64 - receivers.failed() - senders.failed(),
        t.elapsed().as_secs_f64(),
        counts_line(&connect_failures)
    ));
    if receivers.failed() + senders.failed() > 0 {
        for s in receivers.samples.iter().chain(&senders.samples) {
            out.line(format!("  connect failure: {s}"));
        }
        target.stop().await?;
        bail!(
            "{} connections failed",
            receivers.failed() + senders.failed()
        );
    }
    let recv_conns: Vec<Ws> = receivers.conns.into_iter().flatten().collect();
    let send_conns: Vec<Ws> = senders.conns.into_iter().flatten().collect();

    let shared = Arc::new(Shared::new(
        Instant::now() + Duration::from_millis(300),
        (args.warmup.max(0.0) * 1e9) as u64,
        target.proto(),
    ));
    let stats: Vec<Arc<PairStats>> = (0..args.pairs).map(|_| Arc::default()).collect();
    let (stop_tx, stop_rx) = watch::channel(false);

    let mut recv_tasks = Vec::new();
    for (i, ws) in recv_conns.into_iter().enumerate() {
        let (sink, stream) = ws.split();
        recv_tasks.push(tokio::spawn(receive_loop(
            sink,
            stream,
            stats[i].clone(),
            shared.clone(),
            stop_rx.clone(),
            args.ack_batch,
            Duration::from_millis(args.ack_interval_ms),
        )));
    }
    let mut pacer_txs = Vec::new();
    let mut writer_tasks = Vec::new();
    let mut reader_tasks = Vec::new();
    for (i, ws) in send_conns.into_iter().enumerate() {
        let (sink, stream) = ws.split();
        let (tx, rx) = mpsc::unbounded_channel();
        let pong = tx.clone();
        pacer_txs.push(tx);
        let to = format!("lg{me}r{i}");
        writer_tasks.push(tokio::spawn(write_loop(
            sink,
            rx,
            to,
            args.content_bytes.into(),
            stats[i].clone(),
            shared.clone(),
        )));
        reader_tasks.push(tokio::spawn(sender_read_loop(
            stream,
            stats[i].clone(),
            shared.clone(),
            stop_rx.clone(),
            pong,
        )));
    }

    let node_cpu_time =
        |pids: &[u32]| -> anyhow::Result<Duration> { pids.iter().map(|&p| sys::cpu_time(p)).sum() };
    let node_cpu0 = pids.as_deref().map(node_cpu_time).transpose()?;
    let lg_cpu0 = sys::cpu_time(me)?;
    let machine0 = sys::machine_cpu()?;
    let metrics0 = target.metrics().await.ok();
    let wall0 = Instant::now();

    let pacer = {
        let start = shared.start;
        let rate = args.rate;
        let tick = Duration::from_micros(args.pacer_tick_us);
        std::thread::Builder::new()
            .name("pacer".into())
            .spawn(move || pace(start, rate, scheduled, tick, pacer_txs))
            .context("cannot start the pacer thread")?
    };

    // Progress, once a second, until the pacer is done.
    let totals = |stats: &[Arc<PairStats>]| {
        let sum = |f: fn(&PairStats) -> &AtomicU64| {
            stats
                .iter()
                .map(|s| f(s).load(Ordering::Relaxed))
                .sum::<u64>()
        };
        (
            sum(|s| &s.written),
            sum(|s| &s.sent_ok),
            sum(|s| &s.send_errors),
            sum(|s| &s.received),
        )
    };
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::from_std(shared.start) + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    while !pacer.is_finished() {
        tokio::select! {
            _ = tick.tick() => {
                let (w, s, e, r) = totals(&stats);
                eprintln!(
                    "  t={:>4.1}s written {w} sent {s} errors {e} received {r}",
                    shared.start.elapsed().as_secs_f64()
                );
                target.check_alive()?;
            }
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
    let pacer_late = pacer
        .join()
        .map_err(|_| anyhow::anyhow!("the pacer thread panicked"))?;
    let send_end = Instant::now();

    // Wait for stragglers: every write answered, every accepted message received.
    let deadline = send_end + Duration::from_secs_f64(args.grace.max(0.0));
    loop {
        let settled = stats.iter().all(|s| {
            let w = s.written.load(Ordering::Relaxed);
            let ok = s.sent_ok.load(Ordering::Relaxed);
            let err = s.send_errors.load(Ordering::Relaxed);
            ok + err >= w && s.received.load(Ordering::Relaxed) >= ok
        });
        let (w, _, _, _) = totals(&stats);
        if (settled && w >= scheduled) || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let node_cpu = match (&pids, node_cpu0) {
        (Some(p), Some(c0)) => Some((node_cpu_time(p)? - c0).as_secs_f64()),
        _ => None,
    };
    let lg_cpu = (sys::cpu_time(me)? - lg_cpu0).as_secs_f64();
    let machine1 = sys::machine_cpu()?;
    let machine_busy = (machine1.0.saturating_sub(machine0.0)).as_secs_f64();
    let wall = wall0.elapsed().as_secs_f64();
    let node_rss_after = pids
        .as_deref()
        .map(|p| {
            p.iter()
                .map(|&p| sys::rss_bytes(p))
                .sum::<anyhow::Result<u64>>()
        })
        .transpose()?;
    let metrics1 = target.metrics().await.ok();
    target.check_alive()?;

    let _ = stop_tx.send(true);
    let mut hist = new_histogram()?;
    let mut hist_write = new_histogram()?;
    let mut closers: Vec<JoinHandle<()>> = Vec::new();
    for t in recv_tasks {
        let (h, hw, sink) = t.await??;
        hist.add(&h)?;
        hist_write.add(&hw)?;
        closers.push(tokio::spawn(close_sink(sink)));
    }
    for t in writer_tasks {
        if let Some(sink) = t.await? {
            closers.push(tokio::spawn(close_sink(sink)));
        }
    }
    for t in reader_tasks {
        t.await?;
    }
    for c in closers {
        c.await?;
    }
    target.stop().await?;

    // Figures.
    let sum = |f: fn(&PairStats) -> &AtomicU64| {
        stats
            .iter()
            .map(|s| f(s).load(Ordering::Relaxed))
            .sum::<u64>()
    };
    let written = sum(|s| &s.written);
    let sent_ok = sum(|s| &s.sent_ok);
    let send_errors = sum(|s| &s.send_errors);
    let received = sum(|s| &s.received);
    let delivered = sum(|s| &s.delivered);
    let out_of_order = sum(|s| &s.out_of_order);
    let closed_early = sum(|s| &s.closed_early);
    let lost: u64 = stats
        .iter()
        .map(|s| {
            s.sent_ok
                .load(Ordering::Relaxed)
                .saturating_sub(s.received.load(Ordering::Relaxed))
        })
        .sum();
    let unconfirmed = written.saturating_sub(sent_ok + send_errors);
    let errors = shared
        .errors
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let send_secs = send_end
        .saturating_duration_since(shared.start)
        .as_secs_f64();
    let send_rate = written as f64 / send_secs;
    let last_rx = shared.last_receive_ns.load(Ordering::Relaxed) as f64 / 1e9;
    let receive_rate = if last_rx > 0.0 {
        received as f64 / last_rx.max(args.duration)
    } else {
        0.0
    };
    let lat = Latency::of(&hist);
    let lat_w = Latency::of(&hist_write);
    let node_delivery = match (&metrics0, &metrics1) {
        (Some(a), Some(b)) => b.delivery_since(a),
        _ => Vec::new(),
    };
    let nq = |q| target::bucket_quantile(&node_delivery, q).map(|s| s * 1000.0);

    out.line(format!(
        "messages: scheduled {scheduled}, written {written}, sent-confirmed {sent_ok}, received {received}, lost {lost}, unconfirmed {unconfirmed}, out of order {out_of_order}"
    ));
    out.line(format!(
        "delivered receipts: {delivered}; error frames: {}; connections closed early: {closed_early}",
        counts_line(&errors)
    ));
    out.line(format!(
        "rate: offered {} msg/s, sent {send_rate:.0} msg/s, received {receive_rate:.0} msg/s; pacer late by up to {:.2} ms",
        args.rate,
        pacer_late.as_secs_f64() * 1000.0
    ));
    out.line(format!(
        "latency (scheduled send -> receipt, after {} s warm-up): {}",
        args.warmup,
        lat.line()
    ));
    out.line(format!(
        "latency (actual write -> receipt):                    {}",
        lat_w.line()
    ));
    if let (Some(p50), Some(p99)) = (nq(0.5), nq(0.99)) {
        out.line(format!(
            "node delivery histogram (accept -> socket write, warm-up included): p50 <= {p50} ms, p99 <= {p99} ms"
        ));
    }
    if let Some(c) = node_cpu {
        out.line(format!(
            "node CPU: {c:.2} s over {wall:.1} s ({:.2} cores), {:.1} µs per message received",
            c / wall,
            c * 1e6 / received.max(1) as f64
        ));
    }
    out.line(format!(
        "loadgen CPU: {lg_cpu:.2} s ({:.2} cores){}",
        lg_cpu / wall,
        node_rss_after.map_or(String::new(), |r| format!(
            "; node RSS after: {:.1} MiB",
            mib(r)
        ))
    ));
    let other_cpu = (machine_busy - lg_cpu - node_cpu.unwrap_or(0.0)).max(0.0);
    out.line(format!(
        "machine CPU busy: {:.2} of {} cores (other processes: {:.2} cores)",
        machine_busy / wall,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        other_cpu / wall
    ));

    if lost > 0 {
        failures.push(format!("{lost} confirmed messages never arrived"));
    }
    if unconfirmed > 0 {
        failures.push(format!("{unconfirmed} sends got no reply"));
    }
    if !errors.is_empty() {
        failures.push(format!("error frames: {}", counts_line(&errors)));
    }
    if closed_early > 0 {
        failures.push(format!("{closed_early} connections closed during the run"));
    }
    // Each pair's conversation has one sender: one node writes it in seq order, and
    // across nodes the bus keeps the order of one pod's pushes of a conversation.
    if out_of_order > 0 {
        failures.push(format!("{out_of_order} messages out of order"));
    }
    if written < scheduled {
        failures.push(format!(
            "only {written} of {scheduled} messages were written"
        ));
    }
    let ok = failures.is_empty();
    for f in &failures {
        out.line(format!("FAILED: {f}"));
    }
    out.summary(&ThroughputSummary {
        scenario: "throughput",
        ok,
        server: target_proto,
        centrifugo_history: (target_proto == Proto::Centrifugo)
            .then_some(args.target.centrifugo_history),
        nodes: node_count,
        failures,
        pairs: args.pairs,
        offered_rate: args.rate,
        duration_secs: args.duration,
        warmup_secs: args.warmup,
        content_bytes: args.content_bytes,
        ack_batch: args.ack_batch,
        connect_failures,
        scheduled,
        written,
        sent_ok,
        received,
        delivered_receipts: delivered,
        lost,
        unconfirmed,
        out_of_order,
        closed_early,
        errors,
        send_rate: r1(send_rate),
        receive_rate: r1(receive_rate),
        pacer_late_max_ms: (pacer_late.as_secs_f64() * 1e5).round() / 100.0,
        latency: lat,
        latency_from_write: lat_w,
        node_delivery_p50_ms_le: nq(0.5),
        node_delivery_p99_ms_le: nq(0.99),
        node_cpu_secs: node_cpu,
        node_cpu_cores: node_cpu.map(|c| (c / wall * 100.0).round() / 100.0),
        node_cpu_us_per_msg: node_cpu.map(|c| r1(c * 1e6 / received.max(1) as f64)),
        node_rss_after_bytes: node_rss_after,
        loadgen_cpu_secs: lg_cpu,
        loadgen_cpu_cores: (lg_cpu / wall * 100.0).round() / 100.0,
        machine_busy_cores: (machine_busy / wall * 100.0).round() / 100.0,
        other_processes_cores: (other_cpu / wall * 100.0).round() / 100.0,
    })?;
    Ok(ok)
}
