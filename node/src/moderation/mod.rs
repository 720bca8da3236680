//! Moderation: before a message is stored, a policy decides whether it is
//! allowed as sent, refused (error `moderated`, nothing stored) or stored
//! with its content rewritten (masked words).
//!
//! Two parts, each optional, applied in this order:
//! - [`rules`]: a word and pattern list read from a file
//!   (`SB_MODERATION_WORDS_FILE`, e.g. a ConfigMap volume), read again when
//!   it changes, without a restart; its action masks (`*`) or refuses;
//! - [`webhook`]: an HTTP service asked about every message (in the spirit of
//!   Centrifugo's publish proxy), with a timeout, and a choice of what a
//!   failure means: allow (fail open) or refuse with `unavailable` (fail
//!   closed, the default).
//!
//! Client sends and backends' `send_message` requests are moderated; the
//! service's own notices are not. Each refusal and each rewrite of a stored
//! message becomes a `message_moderated` event on the business stream
//! (through the event outbox, when the cluster has one).

pub mod rules;
pub mod webhook;

use std::sync::Arc;

use serde::Serialize;

use crate::backend::MessageStore;
use crate::backend::outbox::ModerationEntry;
use crate::config::ModerationSettings;
use crate::ids::{ConversationId, UserId};
use crate::metrics::Metrics;
use crate::model::{ChatMessage, MsgFormat};
use crate::protocol::{ErrorCode, FrameError};

/// What the policy decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Refused, with a reason for the sender.
    Reject(String),
    /// Stored with this content instead.
    Rewrite(String),
}

/// The message as the policy sees it (also the webhook's request body).
#[derive(Debug, Clone, Serialize)]
pub struct Candidate<'a> {
    pub from: &'a UserId,
    pub conversation: &'a ConversationId,
    pub content: &'a str,
    pub format: MsgFormat,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_msg_id: Option<&'a str>,
}

/// Content moderation changed: what to store, and what to record once it is
/// stored ([`Moderator::stored`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewritten {
    pub content: String,
    /// The content as sent.
    original: String,
    /// Who rewrote it last: `rules` or `webhook`.
    by: &'static str,
}

/// The node's moderation policy.
#[derive(Debug)]
pub struct Moderator {
    rules: Option<Arc<rules::Rules>>,
    webhook: Option<webhook::Webhook>,
    /// Where decisions are recorded for the business stream.
    store: Arc<dyn MessageStore>,
    metrics: Arc<Metrics>,
    /// The content limit a rewrite must keep to.
    max_content_bytes: usize,
}

impl Moderator {
    /// The policy `settings` describe; `None` when it has no part.
    pub fn from_settings(
        settings: &ModerationSettings,
        max_content_bytes: usize,
        store: Arc<dyn MessageStore>,
        metrics: Arc<Metrics>,
    ) -> Result<Option<Self>, String> {
        let rules = match &settings.words_file {
            Some(path) => Some(Arc::new(rules::Rules::load(
                path.clone(),
                settings.words_action,
                metrics.clone(),
            )?)),
            None => None,
        };
        let webhook = match &settings.webhook_url {
            Some(url) => Some(webhook::Webhook::new(
                url,
                settings.webhook_timeout,
                settings.fail_open,
            )?),
            None => None,
        };
        if rules.is_none() && webhook.is_none() {
            return Ok(None);
        }
        Ok(Some(Self {
            rules,
            webhook,
            store,
            metrics,
            max_content_bytes,
        }))
    }

    /// The word rules, for the task that reads their file again on change.
    pub fn rules(&self) -> Option<Arc<rules::Rules>> {
        self.rules.clone()
    }

    /// The content to store when it changed, or why the message is refused
    /// (`moderated`, recorded; or `unavailable` when the webhook failed
    /// closed).
    pub async fn check(&self, msg: &Candidate<'_>) -> Result<Option<Rewritten>, FrameError> {
        let rewritten = |content: String, by| Rewritten {
            content,
            original: msg.content.to_owned(),
            by,
        };
        let mut content: Option<Rewritten> = None;
        if let Some(rules) = &self.rules {
            match rules.judge(msg.content) {
                Verdict::Allow => {}
                Verdict::Reject(reason) => return Err(self.refused(msg, "rules", reason).await),
                Verdict::Rewrite(masked) => {
                    self.count("rewritten", "rules");
                    content = Some(rewritten(masked, "rules"));
                }
            }
        }
        if let Some(hook) = &self.webhook {
            let asked = Candidate {
                content: content.as_ref().map_or(msg.content, |r| r.content.as_str()),
                ..msg.clone()
            };
            let verdict = hook.ask(&asked, &self.metrics).await.and_then(|v| match v {
                Verdict::Rewrite(new) if new.is_empty() || new.len() > self.max_content_bytes => {
                    Err(format!(
                        "a rewrite of {} bytes (1 to {} allowed)",
                        new.len(),
                        self.max_content_bytes
                    ))
                }
                other => Ok(other),
            });
            match verdict {
                Ok(Verdict::Allow) => {}
                Ok(Verdict::Reject(reason)) => {
                    return Err(self.refused(msg, "webhook", reason).await);
                }
                Ok(Verdict::Rewrite(new)) => {
                    self.count("rewritten", "webhook");
                    content = Some(rewritten(new, "webhook"));
                }
                Err(e) if hook.fail_open() => {
                    tracing::warn!(error = %e, "moderation webhook failed; allowing (fail open)");
                    self.count("failed_open", "webhook");
                    return Ok(content);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "moderation webhook failed; refusing (fail closed)");
                    self.count("failed_closed", "webhook");
                    return Err(FrameError::new(
                        ErrorCode::Unavailable,
                        "moderation is unavailable; resend shortly with the same client_msg_id",
                    ));
                }
            }
        }
        if content.is_none() {
            self.count("allowed", "policy");
        }
        Ok(content)
    }

    /// Records the rewrite of a message now stored as `msg` (call once: not
    /// for a resend answered with the first message).
    pub async fn stored(&self, rewritten: Rewritten, msg: &ChatMessage) {
        self.record(ModerationEntry {
            action: "rewritten".into(),
            by: rewritten.by.into(),
            reason: None,
            user: msg.from.to_string(),
            conversation: msg.conversation.clone(),
            content: rewritten.original,
            msg_id: Some(msg.msg_id),
            client_msg_id: msg.client_msg_id.clone(),
        })
        .await;
    }

    async fn refused(&self, msg: &Candidate<'_>, by: &'static str, reason: String) -> FrameError {
        self.count("rejected", by);
        self.record(ModerationEntry {
            action: "rejected".into(),
            by: by.into(),
            reason: Some(reason.clone()),
            user: msg.from.to_string(),
            conversation: msg.conversation.clone(),
            content: msg.content.to_owned(),
            msg_id: None,
            client_msg_id: msg.client_msg_id.map(str::to_owned),
        })
        .await;
        FrameError::new(ErrorCode::Moderated, reason)
    }

    /// Records a decision for the business stream; a failure costs only the
    /// event (the decision stands), and is logged and counted.
    async fn record(&self, entry: ModerationEntry) {
        match self.store.record_moderation(&entry).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!("event outbox full: a message_moderated event is dropped");
                self.count("event_dropped", "policy");
            }
            Err(e) => self.metrics.backend_failed("record_moderation", &e),
        }
    }

    fn count(&self, decision: &'static str, by: &'static str) {
        self.metrics.moderation(decision, by);
    }
}
