//! Reads `<prefix>-requests` (group `<prefix>-api`) and answers each request
//! on `<prefix>-responses`.
//!
//! Per request: an answer kept for its `request_id` (1 h) is published again
//! and nothing is executed (a redelivery, or a backend's resend); a request
//! another node is executing (RocketMQ may hand one message to two consumers
//! while queues move between them) goes back to RocketMQ, whose redelivery
//! finds that node's kept answer (or executes it, if that node died); a request
//! whose deadline passed (its `deadline_ms` property, else
//! `SB_REQUEST_TIMEOUT` after the backend sent it) is answered `timeout`
//! without being executed; otherwise it is executed, its answer kept, then
//! published. A failed publish hands the request back to RocketMQ, which
//! delivers it again: the kept answer goes out then. Requests are handled
//! concurrently (up to 20 at a time per node), in no order.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use switchboard_rocketmq::names::{Names, fnv1a64};
use switchboard_rocketmq::{Delivery, Producer, Record};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::actions::{execute, label};
use super::{ApiError, ErrorKind, Response, check_request_id, parse};
use crate::backend::Claim;
use crate::ids::now_millis;
use crate::intake::{Handle, Intake};
use crate::metrics::{ActionLabel, ActionOutcomeLabel};
use crate::node::Node;

/// An answer as kept, with what it answered.
#[derive(serde::Serialize, serde::Deserialize)]
struct Kept {
    fingerprint: String,
    response: Response,
}

/// What makes two requests with one id the same request.
fn fingerprint(req: &super::Request) -> String {
    let text = format!("{}\u{0}{}\u{0}{}", req.user_id, req.action, req.data);
    format!("{:016x}", fnv1a64(text.as_bytes()))
}

/// How long one node holds a request it executes.
const CLAIM_TTL: Duration = Duration::from_secs(15);
/// How long an answer is kept for a request delivered again.
pub const REPLY_TTL: Duration = Duration::from_secs(3600);
/// The request property that overrides the deadline (ms since the epoch).
pub const DEADLINE_PROPERTY: &str = "deadline_ms";

/// Answers requests until `stop` ([`crate::intake`]).
pub async fn run(node: Arc<Node>, stop: CancellationToken) {
    let Some(prefix) = node.cfg.topic_prefix.clone() else {
        return;
    };
    let names = Names::new(&prefix);
    let intake = Intake {
        label: "requests",
        doing: "answer requests",
        topic: names.requests_topic(),
        group: names.api_group(),
        producer_group: format!("{}-responses", names.api_group()),
        // A redelivery only after a failed publish; the deadline ends it.
        max_reconsume_times: 3,
        in_order: false,
        batch: 32,
    };
    let responses = names.responses_topic();
    let handler_node = node.clone();
    crate::intake::run(node, stop, intake, move |producer| Handler {
        node: handler_node.clone(),
        producer,
        responses: responses.clone(),
    })
    .await;
}

struct Handler {
    node: Arc<Node>,
    producer: Arc<Producer>,
    responses: String,
}

#[async_trait]
impl Handle for Handler {
    async fn handle(&self, d: Delivery) -> Result<(), String> {
        let span =
            crate::telemetry::intake_span("request.handle", &d.topic, &d.msg_id, &d.properties);
        self.consume(d).instrument(span).await
    }
}

impl Handler {
    async fn consume(&self, d: Delivery) -> Result<(), String> {
        let req = match parse(&d.body) {
            Ok(req) => req,
            Err(e) => {
                // Answer to the id the properties or the key carry, if any.
                let id = d
                    .properties
                    .get("request_id")
                    .or(d.key.as_ref())
                    .filter(|id| check_request_id(id).is_ok());
                let Some(id) = id else {
                    tracing::warn!(msg_id = %d.msg_id, error = %e.message, "unreadable request without a request id dropped");
                    self.count("unknown", "business_error", &d);
                    return Ok(());
                };
                let answer = Response::failed(id, e);
                self.publish(&answer, "unknown").await?;
                self.count("unknown", "business_error", &d);
                return Ok(());
            }
        };
        let action = label(&req.action);
        let log = &self.node.backends().command_log;
        if let Some(answered) = self.kept(&req, action, &d).await {
            return answered;
        }
        // One execution at a time across the nodes (RocketMQ may hand one
        // message to two consumers while queues move between them): the
        // other one answers.
        let claim_id = format!("request:{}", req.request_id);
        let token = format!("{}:{}", self.node.pod.name, self.node.next_msg_id());
        match log.claim(&claim_id, &token, CLAIM_TTL).await {
            Ok(Claim::Busy) => {
                // Back to RocketMQ: the redelivery publishes the holder's kept
                // answer, or executes it if the holder died (the deadline
                // still bounds it).
                self.count(action, "in_progress", &d);
                return Err("another node is executing this request".into());
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot claim the request; executing it"),
        }
        // Answered by the node that held it just before: the same answer.
        let answered = match self.kept(&req, action, &d).await {
            Some(answered) => answered,
            None => self.answer(&req, action, &d).await,
        };
        if let Err(e) = log.release(&claim_id, &token).await {
            tracing::warn!(error = %e, "cannot release a request's claim; it expires in 15 s");
        }
        answered
    }

    /// Publishes the answer kept for `req`'s id, if there is one: the same
    /// answer when it is the same request, a `conflict` when the id was used
    /// for another one (another user, action or data). `None`: nothing kept
    /// (or Redis did not answer: executing then is safe, a message is keyed
    /// by the request id).
    async fn kept(
        &self,
        req: &super::Request,
        action: &'static str,
        d: &Delivery,
    ) -> Option<Result<(), String>> {
        let log = &self.node.backends().command_log;
        let kept = match log.reply(&req.request_id).await {
            Ok(Some(kept)) => kept,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read kept answers");
                return None;
            }
        };
        let kept: Kept = match serde_json::from_str(&kept) {
            Ok(k) => k,
            Err(e) => return Some(Err(format!("unreadable kept answer: {e}"))),
        };
        let answer = if kept.fingerprint == fingerprint(req) {
            self.count(action, "repeated", d);
            kept.response
        } else {
            self.count(action, "business_error", d);
            Response::failed(
                &req.request_id,
                ApiError::business(
                    "conflict",
                    "this request_id was used for another request (user, action or data) within the hour",
                ),
            )
        };
        Some(self.publish(&answer, action).await)
    }

    /// Executes `req` (unless its deadline passed), keeps the answer and
    /// publishes it.
    async fn answer(
        &self,
        req: &super::Request,
        action: &'static str,
        d: &Delivery,
    ) -> Result<(), String> {
        let log = &self.node.backends().command_log;
        let deadline = d
            .properties
            .get(DEADLINE_PROPERTY)
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or_else(|| {
                let timeout =
                    i64::try_from(self.node.cfg.request_timeout.as_millis()).unwrap_or(i64::MAX);
                d.born_at_ms.saturating_add(timeout)
            });
        let (answer, outcome) = if now_millis() > deadline {
            let e = ApiError::system(
                "timeout",
                "the request's deadline passed before a node took it; not executed",
            );
            (Response::failed(&req.request_id, e), "timeout")
        } else {
            match execute(&self.node, req).await {
                Ok(data) => (Response::ok(&req.request_id, data), "ok"),
                Err(e) => {
                    let outcome = match e.kind {
                        ErrorKind::Business => "business_error",
                        ErrorKind::System => "system_error",
                    };
                    (Response::failed(&req.request_id, e), outcome)
                }
            }
        };
        // A system error (a timeout too) is not kept: the same request
        // again may succeed.
        if answer
            .error
            .as_ref()
            .is_none_or(|e| e.kind == ErrorKind::Business)
            && let Ok(text) = serde_json::to_string(&Kept {
                fingerprint: fingerprint(req),
                response: answer.clone(),
            })
            && let Err(e) = log.keep_reply(&req.request_id, &text, REPLY_TTL).await
        {
            tracing::warn!(error = %e, request_id = %req.request_id, "cannot keep the answer");
        }
        self.publish(&answer, action).await?;
        self.count(action, outcome, d);
        Ok(())
    }

    /// Publishes `answer` with seed 000's properties (`request_id`,
    /// `response_type`: the action, or `error`) and the request id as key.
    async fn publish(&self, answer: &Response, action: &str) -> Result<(), String> {
        let body = serde_json::to_vec(answer).map_err(|e| e.to_string())?;
        let response_type = if answer.success { action } else { "error" };
        let record = Record {
            tag: Some(response_type.to_owned()),
            keys: vec![answer.request_id.clone()],
            properties: [
                ("request_id".into(), answer.request_id.clone()),
                ("response_type".into(), response_type.to_owned()),
            ]
            .into_iter()
            .chain(crate::telemetry::property())
            .collect(),
            body,
        };
        let lane = (fnv1a64(answer.request_id.as_bytes()) & 0xffff) as u32;
        self.producer
            .send_batch(&self.responses, lane, &[record])
            .await
            .map_err(|e| format!("cannot publish the answer: {e}"))
    }

    fn count(&self, action: &'static str, outcome: &'static str, d: &Delivery) {
        let m = &self.node.metrics.requests;
        m.answered
            .get_or_create(&ActionOutcomeLabel { action, outcome })
            .inc();
        let took = (now_millis() - d.born_at_ms).max(0) as f64 / 1000.0;
        m.duration
            .get_or_create(&ActionLabel { action })
            .observe(took);
    }
}
