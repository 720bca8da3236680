//! Reads `<prefix>-commands` and applies each command once in effect.
//!
//! The schedule of one command (defaults in brackets):
//! 1. its id is looked up in the command log: applied before, nothing is
//!    done again (outcome `duplicate`);
//! 2. it is parsed: refused, it goes to the dead-letter topic at once;
//! 3. it is applied; a failure that may pass is retried within the node
//!    after `SB_COMMAND_RETRY_INITIAL` [100 ms], then x
//!    `SB_COMMAND_RETRY_MULTIPLIER` [2] up to `SB_COMMAND_RETRY_MAX` [10 s]
//!    per wait, `SB_COMMAND_RETRIES` [3] times: 100, 200, 400 ms;
//! 4. still failing, it goes back to RocketMQ, which delivers it again after
//!    the broker's delay level of that redelivery (10 s, then 30 s, 1 min,
//!    2 min ...), `SB_COMMAND_REDELIVERIES` [2] times, each again with step 3;
//! 5. after the last, it goes to the dead-letter topic
//!    `%DLQ%<prefix>-commands` with the reason.
//!
//! An attempt claims the command's id in the log first (one attempt at a
//! time across the nodes: RocketMQ may hand one message to two consumers
//! while queues move between them; the claim lasts at most 15 s), and once
//! applied marks it applied (`SB_COMMAND_DEDUP_TTL` [72 h]). A node dying
//! between the effect and the mark lets the command be applied again once
//! its claim expired, by whoever gets it next: every effect is idempotent
//! ([`super::apply`]).
//!
//! The consumer reads in queue order, one command at a time: commands a
//! backend sends to one queue (the same sharding key: the activity or group)
//! are applied in the order sent, except one that goes back to RocketMQ
//! (step 4), which comes back after those behind it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use switchboard_rocketmq::names::{Names, fnv1a64};
use switchboard_rocketmq::{Delivery, Producer, Record};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::apply::{Failure, apply};
use super::parse::{Command, parse};
use crate::backend::Claim;
use crate::config::CommandSettings;
use crate::intake::{Handle, Intake};
use crate::metrics::{HandlerLabel, KindLabel, OutcomeLabel};
use crate::node::Node;

/// The property of a dead letter holding the refusal's stable code.
pub const DEAD_LETTER_CODE: &str = "dead_letter_code";
/// The property of a dead letter holding the reason for people.
pub const DEAD_LETTER_REASON: &str = "dead_letter_reason";
/// Properties naming where a dead letter came from.
pub const ORIGIN_MSG_ID: &str = "origin_msg_id";
pub const ORIGIN_TOPIC: &str = "origin_topic";
/// How many times RocketMQ had delivered it before it died.
pub const DELIVERIES: &str = "deliveries";
/// How long one attempt holds a command: a node that dies applying it
/// blocks it no longer.
const CLAIM_TTL: Duration = Duration::from_secs(15);
/// Runs the command consumer of `node` until `stop` ([`crate::intake`]).
pub async fn run(node: Arc<Node>, stop: CancellationToken) {
    let Some(prefix) = node.cfg.topic_prefix.clone() else {
        return;
    };
    let names = Names::new(&prefix);
    let intake = Intake {
        label: "commands",
        doing: "consume commands",
        topic: names.commands_topic(),
        group: names.commands_group(),
        producer_group: format!("{}-dead-letters", names.commands_group()),
        // Two more than the node's own redeliveries: RocketMQ's own move to
        // the DLQ (without a reason) only if writing the dead letter failed.
        max_reconsume_times: node.cfg.commands.redeliveries + 2,
        in_order: true,
        // One command per hand-off: a command's retries stay within the
        // client's 30 s budget, and a failure hands back only that command.
        batch: 1,
    };
    // Every type's dead-letter count exists from the start, at 0, so the
    // first dead letter is an increase (`SwitchboardCommandsDeadLettered`).
    for handler in super::parse::TYPES.iter().copied().chain(["unknown"]) {
        node.metrics
            .handlers
            .handled
            .get_or_create(&OutcomeLabel {
                handler,
                outcome: "dead_lettered",
            })
            .inc_by(0);
    }
    let dead_letters = names.commands_dead_letter_topic();
    let settings = node.cfg.commands.clone();
    let handler_node = node.clone();
    crate::intake::run(node, stop, intake, move |producer| Handler {
        node: handler_node.clone(),
        producer,
        dead_letters: dead_letters.clone(),
        settings: settings.clone(),
    })
    .await;
}

struct Handler {
    node: Arc<Node>,
    producer: Arc<Producer>,
    dead_letters: String,
    settings: CommandSettings,
}

/// How a command ended.
enum Outcome {
    Applied,
    Duplicate,
}

#[async_trait]
impl Handle for Handler {
    async fn handle(&self, d: Delivery) -> Result<(), String> {
        let span =
            crate::telemetry::intake_span("command.apply", &d.topic, &d.msg_id, &d.properties);
        self.consume(d).instrument(span).await
    }
}

impl Handler {
    async fn consume(&self, d: Delivery) -> Result<(), String> {
        let started = Instant::now();
        let event_type = d.properties.get("event_type").map(String::as_str);
        let max_content = self.node.cfg.max_content_bytes;
        let cmd = match parse(d.tag.as_deref(), event_type, &d.body, max_content) {
            Ok(cmd) => cmd,
            Err(r) => {
                // A known type keeps its label; anything else is `unknown`.
                let named = d.tag.as_deref().or(event_type);
                let handler = super::parse::TYPES
                    .iter()
                    .find(|t| Some(**t) == named)
                    .copied()
                    .unwrap_or("unknown");
                self.count_error(handler, "rejected");
                self.dead_letter(&d, r.code, &r.reason).await?;
                self.finish(handler, "dead_lettered", started);
                return Ok(());
            }
        };
        let handler = cmd.kind();
        let id = command_id(&d, &cmd);
        let mut waits = self.settings.backoff().into_iter();
        let failed = loop {
            match self.attempt(&cmd, &id).await {
                Ok(Outcome::Applied) => {
                    self.finish(handler, "applied", started);
                    return Ok(());
                }
                Ok(Outcome::Duplicate) => {
                    self.finish(handler, "duplicate", started);
                    return Ok(());
                }
                Err(Failure::Reject { code, reason }) => {
                    self.count_error(handler, "rejected");
                    break (code, reason);
                }
                Err(Failure::Retry(reason)) => {
                    self.count_error(handler, "retryable");
                    if let Some(wait) = waits.next() {
                        tokio::time::sleep(wait).await;
                    } else if d.reconsume_times < self.settings.redeliveries {
                        tracing::warn!(handler, command = %id, attempt = d.reconsume_times, %reason, "command failed; RocketMQ delivers it again later");
                        self.finish(handler, "redelivered", started);
                        return Err(reason);
                    } else {
                        break ("retries_exhausted", reason);
                    }
                }
            }
        };
        let (code, reason) = failed;
        self.dead_letter(&d, code, &reason).await?;
        self.finish(handler, "dead_lettered", started);
        Ok(())
    }

    /// One attempt: claims the command (one attempt at a time across the
    /// nodes: RocketMQ may hand one message to two consumers while queues
    /// move), applies it, marks it applied; a failed attempt gives the
    /// claim up.
    async fn attempt(&self, cmd: &Command, id: &str) -> Result<Outcome, Failure> {
        let log = &self.node.backends().command_log;
        let token = format!("{}:{}", self.node.pod.name, self.node.next_msg_id());
        match log.claim(id, &token, CLAIM_TTL).await? {
            Claim::Applied => return Ok(Outcome::Duplicate),
            Claim::Busy => {
                return Err(Failure::Retry(
                    "another attempt (another node) is applying it".into(),
                ));
            }
            Claim::Claimed => {}
        }
        let applied = match apply(&self.node, cmd, &notice_key(id)).await {
            Ok(()) => log
                .mark_applied(id, self.settings.dedup_ttl)
                .await
                .map_err(Failure::from),
            Err(e) => Err(e),
        };
        if let Err(e) = applied {
            if let Err(released) = log.release(id, &token).await {
                tracing::warn!(error = %released, "cannot release a command's claim; it expires in 15 s");
            }
            return Err(e);
        }
        Ok(Outcome::Applied)
    }

    /// Writes the command to the dead-letter topic: its tag, keys, body and
    /// user properties (names with a lower-case letter), and why.
    async fn dead_letter(&self, d: &Delivery, code: &str, reason: &str) -> Result<(), String> {
        tracing::warn!(msg_id = %d.msg_id, code, reason, "command dead-lettered");
        let mut properties: BTreeMap<String, String> = d
            .properties
            .iter()
            .filter(|(k, _)| k.bytes().any(|b| b.is_ascii_lowercase()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let reason: String = reason.chars().take(1024).collect();
        for (k, v) in [
            (DEAD_LETTER_CODE, code.to_owned()),
            (DEAD_LETTER_REASON, reason),
            (ORIGIN_MSG_ID, origin_id(d).to_owned()),
            (ORIGIN_TOPIC, d.topic.clone()),
            (DELIVERIES, (d.reconsume_times + 1).to_string()),
        ] {
            properties.insert(k.to_owned(), v);
        }
        let record = Record {
            tag: d.tag.clone(),
            keys: d.key.iter().cloned().collect(),
            properties: properties.into_iter().collect(),
            body: d.body.clone(),
        };
        self.producer
            .send_batch(&self.dead_letters, 0, &[record])
            .await
            .map_err(|e| format!("cannot write the dead letter: {e}"))
    }

    fn count_error(&self, handler: &'static str, kind: &'static str) {
        self.node
            .metrics
            .handlers
            .errors
            .get_or_create(&KindLabel { handler, kind })
            .inc();
    }

    fn finish(&self, handler: &'static str, outcome: &'static str, started: Instant) {
        let m = &self.node.metrics.handlers;
        m.handled
            .get_or_create(&OutcomeLabel { handler, outcome })
            .inc();
        m.duration
            .get_or_create(&HandlerLabel { handler })
            .observe(started.elapsed().as_secs_f64());
    }
}

/// RocketMQ's id of the message as first sent (kept across redeliveries).
fn origin_id(d: &Delivery) -> &str {
    d.properties
        .get("UNIQ_KEY")
        .or_else(|| d.properties.get("ORIGIN_MESSAGE_ID"))
        .unwrap_or(&d.msg_id)
}

/// What makes two deliveries the same command: the message key with the
/// type and the body when the backend set a key; for seed 002's activity
/// events, the event itself (its body, which carries the activity, the user
/// and the time stamp); otherwise RocketMQ's id of the message as first sent.
pub fn command_id(d: &Delivery, cmd: &Command) -> String {
    let raw = match (&d.key, cmd) {
        // With the type and the body: a backend may key every command of one
        // group or activity alike, which must not make them one command.
        (Some(key), _) if !key.trim().is_empty() => format!(
            "key:{}:{}:{:016x}",
            key.split_whitespace().next().unwrap_or(key),
            cmd.kind(),
            fnv1a64(&d.body)
        ),
        (
            _,
            Command::ActivityCreated { .. }
            | Command::ActivityMemberJoined { .. }
            | Command::ActivityMemberLeft { .. },
        ) => format!("{}:{:016x}", cmd.kind(), fnv1a64(&d.body)),
        _ => format!("msg:{}", origin_id(d)),
    };
    if raw.len() <= 128 && raw.bytes().all(|b| b.is_ascii_graphic()) {
        raw
    } else {
        format!("h:{:016x}", fnv1a64(raw.as_bytes()))
    }
}

/// The idempotency key of a command's notice (at most 64 bytes, as a
/// client's `client_msg_id`).
fn notice_key(id: &str) -> String {
    format!("cmd-{:016x}", fnv1a64(id.as_bytes()))
}
