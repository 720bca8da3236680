//! Sending a message as a user: from a client's `send` frame or a backend's
//! `send_message` request. One path: membership checked, moderated, stored
//! (with the idempotency key), pushed to the recipients and the sender's
//! other devices on whichever pods they are.

use std::sync::Arc;
use std::time::Instant;

use crate::backend::{Appended, Backends};
use crate::hub::{ConnHandle, OutFrame, Stamp};
use crate::ids::{ConversationId, Snowflake, UserId, now_millis};
use crate::metrics::Metrics;
use crate::model::{ChatMessage, MsgFormat, Target};
use crate::moderation::Moderator;
use crate::protocol::{ErrorCode, FrameError, Send, ServerFrame};
use crate::router::Router;
use crate::telemetry;
use tracing::Instrument as _;

/// A message to send.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub from: UserId,
    pub target: Target,
    pub content: String,
    pub format: MsgFormat,
    /// The sender's idempotency key.
    pub client_msg_id: Option<String>,
    /// The seed protocol's `chatId`, kept and echoed.
    pub chat_id: Option<String>,
}

/// What sending needs from the node ([`crate::node::Node::sending`]).
#[derive(Debug, Clone, Copy)]
pub struct Sending<'a> {
    pub backends: &'a Backends,
    pub metrics: &'a Metrics,
    pub moderator: Option<&'a Moderator>,
    pub ids: &'a Snowflake,
    pub router: &'a Router,
}

/// Stores `out` and pushes it. `except` is the sending connection (which
/// gets its answer from the caller: `stored` runs once the message is
/// stored, before any push). A repeat of an idempotency key stores nothing
/// and pushes the first message again (the first try may have failed
/// between storing and pushing); `Appended::duplicate` says so.
///
/// The moderation policy, if any, sees the message once membership is
/// checked and before it is stored.
///
/// Errors: `unavailable` (storage away, bus saturated, moderation webhook
/// failing closed), `not_a_member`, `moderated`, `inbox_full`.
pub async fn send(
    node: Sending<'_>,
    out: Outgoing,
    except: Option<&str>,
    stored: impl FnOnce(&Appended),
) -> Result<Appended, FrameError> {
    let span = telemetry::send_span();
    let result = store_and_push(node, out, except, stored)
        .instrument(span.clone())
        .await;
    if let Ok(a) = &result
        && !span.is_none()
    {
        span.record("messaging.message.id", a.msg.msg_id.to_string());
    }
    node.metrics.send(match &result {
        Ok(a) if a.duplicate => "duplicate",
        Ok(_) => "accepted",
        Err(e) => e.code.as_str(),
    });
    result
}

async fn store_and_push(
    node: Sending<'_>,
    out: Outgoing,
    except: Option<&str>,
    stored: impl FnOnce(&Appended),
) -> Result<Appended, FrameError> {
    let backends = node.backends;
    if backends.bus.is_saturated() {
        return Err(FrameError::new(
            ErrorCode::Unavailable,
            "the cross-node bus is saturated; resend shortly with the same client_msg_id",
        ));
    }
    let me = &out.from;
    let (conversation, to, group) = match out.target {
        Target::User(u) => (ConversationId::direct(me, &u), Some(u), None),
        Target::Group(g) => (ConversationId::Group(g.clone()), None, Some(g)),
    };
    let mut recipients =
        crate::conversation::participants(backends.store.as_ref(), me, &conversation).await?;
    recipients.retain(|u| u != me);
    let mut content = out.content;
    let mut rewritten = None;
    if let Some(policy) = node.moderator {
        let candidate = crate::moderation::Candidate {
            from: me,
            conversation: &conversation,
            content: &content,
            format: out.format,
            client_msg_id: out.client_msg_id.as_deref(),
        };
        rewritten = policy.check(&candidate).await?;
        if let Some(r) = &rewritten {
            content.clone_from(&r.content);
        }
    }
    let accepted_at = Instant::now();
    let msg = ChatMessage {
        msg_id: node.ids.next_id(),
        conversation,
        seq: 0,
        from: me.clone(),
        to,
        group,
        content,
        format: out.format,
        recalled: false,
        status: None,
        ts: now_millis(),
        client_msg_id: out.client_msg_id,
        chat_id: out.chat_id,
    };
    let mut appended = backends
        .store
        .append(msg, &recipients)
        .instrument(telemetry::store_span())
        .await?;
    tracing::Span::current().record("chat.recipients", recipients.len());
    stored(&appended);
    // The sender's other devices get the message too.
    recipients.push(me.clone());
    let frame = ServerFrame::Message(appended.msg.clone());
    if appended.duplicate {
        node.metrics.repushed.inc();
        node.router
            .route_via(&recipients, appended.pods.take(), frame, except, None)
            .await;
    } else {
        node.metrics.messages_stored.inc();
        node.metrics
            .inbox_skipped
            .inc_by(appended.inbox_skipped.len() as u64);
        node.router
            .route_via(
                &recipients,
                appended.pods.take(),
                frame,
                except,
                Some(accepted_at),
            )
            .await;
        // After the push: recording the rewrite adds nothing to delivery.
        if let (Some(policy), Some(r)) = (node.moderator, rewritten) {
            policy.stored(r, &appended.msg).await;
        }
    }
    Ok(appended)
}

/// A client's `send` frame: stored and pushed; the sending connection gets
/// `sent` once it is stored, before any push.
pub async fn from_client(
    sending: Sending<'_>,
    conn: &Arc<ConnHandle>,
    s: Send,
) -> Result<(), FrameError> {
    let out = Outgoing {
        from: conn.user.clone(),
        target: s.target,
        content: s.content,
        format: s.format,
        client_msg_id: s.client_msg_id,
        chat_id: s.chat_id,
    };
    send(sending, out, Some(&conn.id), |appended| {
        let m = &appended.msg;
        conn.push(
            OutFrame::new(ServerFrame::Sent {
                client_msg_id: m.client_msg_id.clone(),
                msg_id: m.msg_id,
                conversation: m.conversation.clone(),
                seq: m.seq,
                ts: m.ts,
                duplicate: appended.duplicate,
            }),
            Stamp::default(),
        );
    })
    .await
    .map(drop)
}
