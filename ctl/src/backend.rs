//! Driving a cluster as a backend would: `request`, `command`, and the
//! commands' dead letters (`dead-letters list`, `dead-letters redrive`).

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use switchboard_client::{ClientConfig, CommandPublisher, RequestClient};
use switchboard_rocketmq::direct::{OrderedConsumer, OrderedConsumerConfig, StartAt, Unreadable};
use switchboard_rocketmq::names::Names;
use switchboard_rocketmq::{Admin, Credentials, Delivery, Runtime};

/// Where the cluster is.
#[derive(Debug, clap::Args)]
pub struct Target {
    /// RocketMQ name server (`host:port`).
    #[arg(long, env = "SB_ROCKETMQ_NAMESRV")]
    pub namesrv: String,
    /// The cluster's topic prefix (`status.topics` of the ChatCluster shows it).
    #[arg(long, env = "SB_TOPIC_PREFIX")]
    pub prefix: String,
    /// RocketMQ ACL user, for a broker with ACL (with `--secret-key`).
    #[arg(long, env = "SB_ROCKETMQ_ACCESS_KEY")]
    pub access_key: Option<String>,
    /// RocketMQ ACL password.
    #[arg(long, env = "SB_ROCKETMQ_SECRET_KEY", hide_env_values = true)]
    pub secret_key: Option<String>,
}

impl Target {
    fn credentials(&self) -> anyhow::Result<Option<Credentials>> {
        Credentials::from_parts(self.access_key.as_deref(), self.secret_key.as_deref())
            .context("--access-key / --secret-key")
    }
}

#[derive(Debug, clap::Args)]
pub struct RequestArgs {
    #[command(flatten)]
    pub target: Target,
    /// The user the request acts as.
    #[arg(long)]
    pub user: String,
    /// `send_message`, `get_history`, `get_presence`, `get_online`, `get_group`.
    #[arg(long)]
    pub action: String,
    /// The request's `data`, as JSON.
    #[arg(long, default_value = "{}")]
    pub data: String,
    /// How long to wait for the answer (also the request's deadline).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// Sends one request and prints the answer (exit 1 if it is a failure).
pub async fn request(args: RequestArgs) -> anyhow::Result<bool> {
    let data: serde_json::Value = serde_json::from_str(&args.data).context("--data is not JSON")?;
    let credentials = args.target.credentials()?;
    let group = format!("{}-ctl-request-{}", args.target.prefix, std::process::id());
    let rt = Runtime::new()?;
    let admin = Admin::connect_as(&rt, &args.target.namesrv, credentials.as_ref()).await?;
    admin.ensure_group(&group, 0).await?;
    let client = RequestClient::start(ClientConfig {
        namesrv: args.target.namesrv.clone(),
        prefix: args.target.prefix.clone(),
        responses_group: group.clone(),
        credentials,
        timeout: args.timeout,
    })
    .await;
    let outcome = match client {
        Ok(client) => {
            let answer = client.request(&args.user, &args.action, data).await;
            client.shutdown().await;
            answer.map_err(anyhow::Error::from)
        }
        Err(e) => Err(e.into()),
    };
    let deleted = admin.delete_group(&group).await;
    admin.shutdown().await;
    rt.shutdown().await;
    deleted.with_context(|| format!("cannot delete consumer group {group}"))?;
    let answer = outcome?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", serde_json::to_string(&answer)?)?;
    Ok(answer.success)
}

#[derive(Debug, clap::Args)]
pub struct CommandArgs {
    #[command(flatten)]
    pub target: Target,
    /// The command type (the tag), e.g. `activity.created`, `group.members.add`.
    #[arg(long = "type")]
    pub kind: String,
    /// The command's JSON body.
    #[arg(long)]
    pub body: String,
    /// Commands with one order key go to one queue and are applied in the
    /// order sent (default: the body's `activity_id` or `group_id`).
    #[arg(long)]
    pub order_key: Option<String>,
    /// The message key: the command's id for dedup.
    #[arg(long)]
    pub key: Option<String>,
}

/// The order key of a command body: its `activity_id`, else its `group_id`.
fn order_key_of(body: &[u8]) -> Option<String> {
    let body: serde_json::Value = serde_json::from_slice(body).ok()?;
    ["activity_id", "group_id"]
        .iter()
        .find_map(|f| body[*f].as_str().map(str::to_owned))
}

/// Publishes one command.
pub async fn command(args: CommandArgs) -> anyhow::Result<()> {
    let body: serde_json::Value = serde_json::from_str(&args.body).context("--body is not JSON")?;
    let order_key = args
        .order_key
        .clone()
        .or_else(|| order_key_of(body.to_string().as_bytes()))
        .unwrap_or_default();
    let t = &args.target;
    let group = format!("{}-ctl-commands", t.prefix);
    let publisher =
        CommandPublisher::start(&t.namesrv, &t.prefix, &group, t.credentials()?).await?;
    let sent = publisher
        .publish(&args.kind, &body, &order_key, args.key.as_deref())
        .await;
    publisher.shutdown().await;
    sent?;
    eprintln!("sent {} to {}-commands", args.kind, t.prefix);
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct DeadLetterArgs {
    #[command(flatten)]
    pub target: Target,
    /// Stop once no dead letter arrived for this long.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub idle: Duration,
}

/// The user properties a dead letter adds, dropped when it is re-driven.
const DEAD_LETTER_PROPERTIES: [&str; 5] = [
    "dead_letter_code",
    "dead_letter_reason",
    "origin_msg_id",
    "origin_topic",
    "deliveries",
];

/// What became of one dead letter, told by the consumer's handler.
enum Outcome {
    /// Listed, or re-driven: its line.
    Done(serde_json::Value),
    /// Its publish failed: its queue stops there, uncommitted, so the next
    /// run starts with it.
    Failed(String, switchboard_rocketmq::Error),
}

/// `list`: prints every dead letter, oldest first, one JSON line each
/// (group of its own, deleted at exit). `redrive`: publishes each dead
/// letter not re-driven before to the commands topic again (tag, key, body
/// and the producer's properties), with the persistent group
/// `<prefix>-ctl-redrive` remembering how far it got. Both read every queue
/// of the dead-letter topic in order, one letter at a time, and commit a
/// queue's offset only past the letters handled: a failed publish stops its
/// queue at that letter, for the next run.
pub async fn dead_letters(args: DeadLetterArgs, redrive: bool) -> anyhow::Result<()> {
    let t = &args.target;
    let credentials = t.credentials()?;
    let names = Names::new(&t.prefix);
    let topic = names.commands_dead_letter_topic();
    let group = if redrive {
        format!("{}-ctl-redrive", t.prefix)
    } else {
        format!("{}-ctl-dead-letters-{}", t.prefix, std::process::id())
    };
    let rt = Runtime::new()?;
    let admin = Admin::connect_as(&rt, &t.namesrv, credentials.as_ref()).await?;
    admin.ensure_group(&group, 0).await?;
    let publisher = if redrive {
        let producer_group = format!("{}-ctl-commands", t.prefix);
        Some(Arc::new(
            CommandPublisher::start(&t.namesrv, &t.prefix, &producer_group, credentials.clone())
                .await?,
        ))
    } else {
        None
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    // Publishes under way: `--idle` does not count while one is.
    let busy = Arc::new(AtomicUsize::new(0));
    let (handler_publisher, handler_busy) = (publisher.clone(), busy.clone());
    let consumer = OrderedConsumer::start(
        OrderedConsumerConfig {
            namesrv: t.namesrv.clone(),
            topic: topic.clone(),
            group: group.clone(),
            batch: 32,
            credentials: credentials.clone(),
            new_group_starts_at: StartAt::Oldest,
            unreadable: Unreadable::Stop,
        },
        move |d: Delivery| {
            let (tx, publisher, busy) =
                (tx.clone(), handler_publisher.clone(), handler_busy.clone());
            async move {
                if let Some(p) = &publisher {
                    busy.fetch_add(1, Ordering::AcqRel);
                    let published = republish(p, &d).await;
                    busy.fetch_sub(1, Ordering::AcqRel);
                    if let Err(e) = published {
                        let _ = tx.send(Outcome::Failed(d.msg_id.clone(), e));
                        return Err("not re-driven");
                    }
                }
                tx.send(Outcome::Done(crate::line(&d)))
                    .map_err(|_| "stopping")
            }
        },
    )
    .await
    .with_context(|| format!("cannot read {topic}"))?;
    let (mut count, mut failed, mut unwritten) = (0usize, None, None);
    // Cannot fail: the clean-up below runs whatever happens.
    let mut take = |outcome: Outcome| match outcome {
        Outcome::Done(line) => {
            count += 1;
            if unwritten.is_none()
                && let Err(e) = writeln!(std::io::stdout().lock(), "{line}")
            {
                unwritten = Some(e);
            }
        }
        Outcome::Failed(msg_id, e) => match &failed {
            None => failed = Some((msg_id, e)),
            Some(_) => eprintln!("cannot re-drive dead letter {msg_id} either: {e}"),
        },
    };
    loop {
        match tokio::time::timeout(args.idle, rx.recv()).await {
            Ok(Some(outcome @ Outcome::Failed(..))) => {
                take(outcome);
                break;
            }
            Ok(Some(outcome)) => take(outcome),
            Err(_) if busy.load(Ordering::Acquire) > 0 => {}
            Ok(None) | Err(_) => break,
        }
    }
    // Lets a letter under way finish and commits each queue's offset; what
    // was handled meanwhile is told after.
    let stopped = consumer.shutdown().await;
    while let Ok(outcome) = rx.try_recv() {
        take(outcome);
    }
    if let Some(p) = publisher.and_then(Arc::into_inner) {
        p.shutdown().await;
    }
    if !redrive {
        admin.delete_group(&group).await?;
    }
    admin.shutdown().await;
    rt.shutdown().await;
    if let Some((msg_id, e)) = failed {
        return Err(e).with_context(|| {
            format!("cannot re-drive dead letter {msg_id}: it and the letters after it in its queue stay for the next run (the {count} printed were re-driven)")
        });
    }
    let verb = if redrive { "re-drove" } else { "listed" };
    if !stopped.is_empty() {
        anyhow::bail!(
            "{}; {verb} {count} before it: the letters from there on are left (docs/operations.md, dead letters of commands)",
            stopped.join("; ")
        );
    }
    if let Some(e) = unwritten {
        return Err(e).context("cannot write the letters to standard output");
    }
    eprintln!("{verb} {count} dead letters of {topic}");
    Ok(())
}

/// Publishes dead letter `d` to the commands topic again: its tag, first
/// key, body and the producer's properties, to the queue of its order key.
async fn republish(p: &CommandPublisher, d: &Delivery) -> Result<(), switchboard_rocketmq::Error> {
    let properties = d
        .properties
        .iter()
        .filter(|(k, _)| {
            k.bytes().any(|b| b.is_ascii_lowercase())
                && !DEAD_LETTER_PROPERTIES.contains(&k.as_str())
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let kind = d.tag.clone().unwrap_or_default();
    let key = d.key.as_deref().and_then(|k| k.split(' ').next());
    let order_key = order_key_of(&d.body).unwrap_or_else(|| d.msg_id.clone());
    p.publish_raw(&kind, d.body.clone(), &order_key, key, properties)
        .await
}
