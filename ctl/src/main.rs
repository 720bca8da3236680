//! `switchboard-ctl`: a cluster's RocketMQ side from a terminal
//! (`docs/integration.md`): `events tail` prints the business event records
//! as they arrive, one JSON object per line; `request` and `command` drive
//! the cluster as a backend would; `dead-letters list|redrive` handles the
//! commands that failed.

mod backend;

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use switchboard_rocketmq::names::Names;
use switchboard_rocketmq::{Admin, Consumer, ConsumerConfig, Credentials, Delivery, Runtime};

#[derive(Debug, Parser)]
#[command(name = "switchboard-ctl", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Top,
}

#[derive(Debug, Subcommand)]
enum Top {
    /// The business event streams.
    Events {
        #[command(subcommand)]
        command: EventsCommand,
    },
    /// Sends one request (seed 000) and prints the answer; exits 1 when it
    /// is a failure. Reads the answers with a group of its own,
    /// `<prefix>-ctl-request-<pid>`, deleted at exit.
    Request(backend::RequestArgs),
    /// Publishes one command to `<prefix>-commands`.
    Command(backend::CommandArgs),
    /// The commands' dead-letter topic `%DLQ%<prefix>-commands`.
    DeadLetters {
        #[command(subcommand)]
        command: DeadLettersCommand,
    },
}

#[derive(Debug, Subcommand)]
enum DeadLettersCommand {
    /// Prints every dead letter (oldest first, one JSON line each, with
    /// `dead_letter_code` and `dead_letter_reason`) until none arrived for
    /// `--idle`.
    List(backend::DeadLetterArgs),
    /// Publishes the dead letters not re-driven before to `<prefix>-commands`
    /// again (the group `<prefix>-ctl-redrive` remembers how far it got; a
    /// letter whose publish fails stops the run and is the next run's first).
    Redrive(backend::DeadLetterArgs),
}

#[derive(Debug, Subcommand)]
enum EventsCommand {
    /// Prints the records of a cluster's event topic as they arrive, one JSON
    /// line each: `{"topic","tag","keys","properties","body"}` (`body` parsed
    /// when it is JSON). Reads with a consumer group of its own,
    /// `<prefix>-ctl-tail-<pid>`, created at start and deleted at exit, from
    /// the topic's oldest record.
    Tail(TailArgs),
}

#[derive(Debug, clap::Args)]
struct TailArgs {
    /// RocketMQ name server (`host:port`).
    #[arg(long, env = "SB_ROCKETMQ_NAMESRV")]
    namesrv: String,
    /// The cluster's topic prefix (`status.topics` of the ChatCluster shows it).
    #[arg(long, env = "SB_TOPIC_PREFIX")]
    prefix: String,
    /// Which stream.
    #[arg(long, value_enum, default_value_t = Stream::Events)]
    stream: Stream,
    /// Stop after this many records (default: until Ctrl-C).
    #[arg(long)]
    count: Option<u64>,
    /// RocketMQ ACL user, for a broker with ACL (with `--secret-key`).
    #[arg(long, env = "SB_ROCKETMQ_ACCESS_KEY")]
    access_key: Option<String>,
    /// RocketMQ ACL password.
    #[arg(long, env = "SB_ROCKETMQ_SECRET_KEY", hide_env_values = true)]
    secret_key: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Stream {
    /// `<prefix>-events` (seed 000's events).
    Events,
    /// `<prefix>-cluster-events` (seed 001's ClusterEvents).
    ClusterEvents,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Top::Events {
            command: EventsCommand::Tail(args),
        } => tail(args).await,
        Top::Request(args) => {
            if !backend::request(args).await? {
                std::process::exit(1);
            }
            Ok(())
        }
        Top::Command(args) => backend::command(args).await,
        Top::DeadLetters { command } => match command {
            DeadLettersCommand::List(args) => backend::dead_letters(args, false).await,
            DeadLettersCommand::Redrive(args) => backend::dead_letters(args, true).await,
        },
    }
}

async fn tail(args: TailArgs) -> anyhow::Result<()> {
    let credentials =
        Credentials::from_parts(args.access_key.as_deref(), args.secret_key.as_deref())
            .context("--access-key / --secret-key")?;
    let names = Names::new(&args.prefix);
    let topic = match args.stream {
        Stream::Events => names.events_topic(),
        Stream::ClusterEvents => names.cluster_events_topic(),
    };
    let group = format!("{}-ctl-tail-{}", args.prefix, std::process::id());
    let rt = Runtime::new()?;
    let admin = Admin::connect_as(&rt, &args.namesrv, credentials.as_ref()).await?;
    admin.ensure_group(&group, 1).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let config = ConsumerConfig {
        namesrv: args.namesrv.clone(),
        topic: topic.clone(),
        group: group.clone(),
        max_reconsume_times: None,
        in_order: true,
        batch: 32,
        credentials: credentials.clone(),
    };
    let consumer = Consumer::start_blocking(&rt, config, move |d: Delivery| {
        tx.send(d).map_err(|_| "stopping".to_owned())
    })
    .await
    .with_context(|| format!("cannot read {topic}"))?;
    consumer.wait_assigned(Duration::from_secs(30)).await?;
    eprintln!("tailing {topic} (group {group}); Ctrl-C to stop");
    let mut printed = 0;
    let mut out = std::io::stdout().lock();
    while args.count.is_none_or(|n| printed < n) {
        let delivery = tokio::select! {
            d = rx.recv() => d,
            _ = tokio::signal::ctrl_c() => None,
        };
        let Some(d) = delivery else { break };
        writeln!(out, "{}", line(&d))?;
        out.flush()?;
        printed += 1;
    }
    drop(out);
    consumer.shutdown().await;
    let deleted = admin.delete_group(&group).await;
    admin.shutdown().await;
    rt.shutdown().await;
    deleted.with_context(|| format!("cannot delete consumer group {group}"))
}

/// One record as a JSON line.
fn line(d: &Delivery) -> serde_json::Value {
    let body = serde_json::from_slice(&d.body)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&d.body).into()));
    let user_properties: serde_json::Map<String, serde_json::Value> = d
        .properties
        .iter()
        .filter(|(k, _)| k.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        .map(|(k, v)| (k.clone(), v.clone().into()))
        .collect();
    serde_json::json!({
        "topic": d.topic,
        "tag": d.tag,
        "keys": d.key.as_deref().map(|k| k.split(' ').collect::<Vec<_>>()).unwrap_or_default(),
        "properties": user_properties,
        "body": body,
    })
}
