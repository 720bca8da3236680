//! Receipts: `ack` makes a message delivered, `read` raises a reader's
//! watermark; both are pushed to whom they concern and stored, so history
//! pages carry them to a client that was away
//! ([`crate::history::with_receipts`]).

use crate::backend::MessageStore;
use crate::ids::{ConversationId, MsgId, UserId};
use crate::protocol::{ErrorCode, FrameError, ServerFrame};
use crate::router::Router;

/// What receipts need from the node.
#[derive(Debug, Clone, Copy)]
pub struct Receipts<'a> {
    pub store: &'a dyn MessageStore,
    pub router: &'a Router,
}

impl Receipts<'_> {
    /// `user` acked `msg_ids`: they leave its inbox, and the sender of each
    /// one that was there gets `delivered`.
    pub async fn ack(&self, user: &UserId, msg_ids: &[MsgId]) -> Result<(), FrameError> {
        let acked = self.store.ack(user, msg_ids).await?;
        for a in acked {
            let m = a.msg;
            let frame = ServerFrame::Delivered {
                msg_id: m.msg_id,
                conversation: m.conversation.clone(),
                seq: m.seq,
                user: user.clone(),
            };
            let pods = a.sender_pods.map(|p| vec![p]);
            self.router
                .route_via(std::slice::from_ref(&m.from), pods, frame, None, None)
                .await;
        }
        Ok(())
    }

    /// `user` (on connection `conn_id`) read `conversation` up to `seq`, or
    /// up to the message `msg_id`. The watermark is stored (it only rises),
    /// then every participant's connections but this one get `read`.
    pub async fn read(
        &self,
        user: &UserId,
        conn_id: &str,
        conversation: ConversationId,
        seq: Option<u64>,
        msg_id: Option<MsgId>,
    ) -> Result<(), FrameError> {
        let participants =
            crate::conversation::participants(self.store, user, &conversation).await?;
        let seq = match (seq, msg_id) {
            (Some(seq), _) => seq,
            (None, Some(id)) => match self.store.find(&conversation, id).await? {
                Some(m) => m.seq,
                None => {
                    return Err(FrameError::new(
                        ErrorCode::UnknownMessage,
                        "no such message in this conversation",
                    ));
                }
            },
            (None, None) => return Err(FrameError::new(ErrorCode::MissingField, "seq or msg_id")),
        };
        self.store
            .mark_read(&conversation, user, seq, msg_id)
            .await?;
        let frame = ServerFrame::Read {
            conversation,
            seq,
            msg_id,
            user: user.clone(),
        };
        self.router
            .route(&participants, frame, Some(conn_id), None)
            .await;
        Ok(())
    }
}
