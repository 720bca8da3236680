//! Recall: a sender takes back a message within the recall window, or an
//! admin takes back any message.
//!
//! The history keeps a tombstone (same id and seq, `recalled: true`, no
//! content); the message leaves the inboxes of its recipients, so one who
//! was offline never receives the content; every device of every
//! participant gets a `recalled` frame; the event outbox records it
//! (`message_recalled`, `C2C_WITHDRAW_MSG` / `GROUP_WITHDRAW_MSG`). All
//! the stored changes are one step of the store ([`MessageStore::recall`]).

use std::sync::Arc;
use std::time::Duration;

use crate::backend::MessageStore;
use crate::ids::{ConversationId, MsgId, UserId, now_millis};
use crate::model::ChatMessage;
use crate::protocol::{ErrorCode, FrameError, ServerFrame};
use crate::router::Router;

/// Who asks for the recall.
#[derive(Debug, Clone, Copy)]
pub enum Recaller<'a> {
    /// A participant, bound by authorship and the window.
    User(&'a UserId),
    /// The admin API: any message, any time.
    Admin,
}

/// What recalls need from the node.
#[derive(Debug, Clone, Copy)]
pub struct Recall<'a> {
    pub store: &'a dyn MessageStore,
    pub router: &'a Router,
    /// How long after acceptance a sender may recall.
    pub window: Duration,
}

impl Recall<'_> {
    /// Recalls `msg_id` of `conversation` and tells every participant.
    /// Returns the tombstone. Recalling a tombstone again succeeds and
    /// changes nothing (the `recalled` frame is sent again).
    ///
    /// Errors: `not_a_member` (not a participant; for an admin, an unknown
    /// group), `unknown_message` (not in the retained history), `not_yours`,
    /// `too_late`, `unavailable`.
    pub async fn recall(
        &self,
        who: Recaller<'_>,
        conversation: &ConversationId,
        msg_id: MsgId,
    ) -> Result<Arc<ChatMessage>, FrameError> {
        let participants = match who {
            Recaller::User(me) => {
                crate::conversation::participants(self.store, me, conversation).await?
            }
            Recaller::Admin => self.everyone(conversation).await?,
        };
        let unknown = || {
            FrameError::new(
                ErrorCode::UnknownMessage,
                "no such message in this conversation's history",
            )
        };
        let mut found = self
            .store
            .find(conversation, msg_id)
            .await?
            .ok_or_else(unknown)?;
        if let Recaller::User(me) = who {
            check_user_may_recall(&found, me, self.window, now_millis())?;
        }
        if !found.recalled {
            let tombstone = tombstone_of(&found);
            let recipients: Vec<UserId> = participants
                .iter()
                .filter(|u| **u != found.from)
                .cloned()
                .collect();
            let by = match who {
                Recaller::User(me) => Some(me),
                Recaller::Admin => None,
            };
            if self
                .store
                .recall(&found, &tombstone, &recipients, by)
                .await?
            {
                found = Arc::new(tombstone);
            } else {
                // Recalled by someone else meanwhile, or trimmed.
                found = self
                    .store
                    .find(conversation, msg_id)
                    .await?
                    .filter(|m| m.recalled)
                    .ok_or_else(unknown)?;
            }
        }
        let frame = ServerFrame::Recalled {
            conversation: conversation.clone(),
            msg_id,
            seq: found.seq,
            by: match who {
                Recaller::User(me) => Some(me.clone()),
                Recaller::Admin => None,
            },
        };
        self.router.route(&participants, frame, None, None).await;
        Ok(found)
    }

    /// Everyone in a conversation, for an admin (who is none of them).
    async fn everyone(&self, conversation: &ConversationId) -> Result<Vec<UserId>, FrameError> {
        match conversation {
            ConversationId::Direct(a, b) => Ok(vec![a.clone(), b.clone()]),
            ConversationId::Group(g) => match self.store.group(g).await? {
                Some(grp) => Ok(grp.members),
                None => Err(FrameError::new(ErrorCode::NotAMember, "no such group")),
            },
        }
    }
}

/// A sender may recall its own message within the window.
fn check_user_may_recall(
    m: &ChatMessage,
    me: &UserId,
    window: Duration,
    now_ms: i64,
) -> Result<(), FrameError> {
    if m.from != *me {
        return Err(FrameError::new(
            ErrorCode::NotYours,
            "only the sender may recall a message",
        ));
    }
    if !m.recalled && now_ms.saturating_sub(m.ts) > window.as_millis() as i64 {
        return Err(FrameError::new(
            ErrorCode::TooLate,
            format!(
                "the recall window ({}s) has passed",
                window.as_secs_f64().round()
            ),
        ));
    }
    Ok(())
}

/// The message with its content gone.
fn tombstone_of(m: &ChatMessage) -> ChatMessage {
    ChatMessage {
        content: String::new(),
        recalled: true,
        status: None,
        ..m.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MsgFormat;

    fn msg(from: &str, ts: i64) -> ChatMessage {
        let (a, b) = (UserId::parse(from).unwrap(), UserId::parse("zed").unwrap());
        ChatMessage {
            msg_id: MsgId(9),
            conversation: ConversationId::direct(&a, &b),
            seq: 1,
            from: a,
            to: Some(b),
            group: None,
            content: "oops".into(),
            format: MsgFormat::Image,
            recalled: false,
            status: None,
            ts,
            client_msg_id: Some("c".into()),
            chat_id: None,
        }
    }

    #[test]
    fn only_the_sender_within_the_window() {
        let me = UserId::parse("amy").unwrap();
        let w = Duration::from_secs(120);
        assert!(check_user_may_recall(&msg("amy", 1_000), &me, w, 121_000).is_ok());
        let late = check_user_may_recall(&msg("amy", 1_000), &me, w, 121_001).unwrap_err();
        assert_eq!(late.code, ErrorCode::TooLate);
        let theirs = check_user_may_recall(&msg("bo", 1_000), &me, w, 1_000).unwrap_err();
        assert_eq!(theirs.code, ErrorCode::NotYours);
        // A tombstone can be recalled again (idempotent) even after the window.
        let mut gone = msg("amy", 1_000);
        gone.recalled = true;
        assert!(check_user_may_recall(&gone, &me, w, 999_999).is_ok());
    }

    #[test]
    fn a_tombstone_keeps_identity_but_not_content() {
        let t = tombstone_of(&msg("amy", 5));
        assert_eq!((t.msg_id, t.seq, t.recalled), (MsgId(9), 1, true));
        assert!(t.content.is_empty());
        let json = serde_json::to_string(&t).unwrap();
        assert!(json.starts_with(r#"{"msg_id":"9""#), "{json}");
        assert!(json.contains(r#""recalled":true"#), "{json}");
        assert!(!json.contains("oops"));
    }
}
