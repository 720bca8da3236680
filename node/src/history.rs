//! History pages (`history`, `resume`): a conversation's stored messages,
//! with the receipts stored for them; and the inbox replayed on connect.

use std::sync::Arc;

use crate::backend::{HistoryPage, HistoryQuery, MessageStore};
use crate::hub::OutFrame;
use crate::ids::{ConversationId, UserId};
use crate::model::{ChatMessage, MsgStatus};
use crate::protocol::{FrameError, ServerFrame};

/// The `history` frame answering `me` for `conversation` (`not_a_member`
/// when `me` is not in it).
pub async fn page(
    store: &dyn MessageStore,
    me: &UserId,
    conversation: ConversationId,
    query: HistoryQuery,
) -> Result<ServerFrame, FrameError> {
    crate::conversation::participants(store, me, &conversation).await?;
    let page = store.history(&conversation, query).await?;
    Ok(history_frame(conversation, query.before, query.after, page))
}

/// Answers `resume`: one `history` page after each given seq (bulk pushes,
/// which wait for room), or `error` for a conversation `conn`'s user is not in.
pub async fn resume(
    store: &dyn MessageStore,
    conn: &crate::hub::ConnHandle,
    conversations: Vec<(ConversationId, u64)>,
    on_error: impl Fn(FrameError),
) {
    for (conversation, after) in conversations {
        let query = HistoryQuery {
            before: None,
            after: Some(after),
            limit: crate::protocol::MAX_HISTORY_LIMIT,
        };
        match page(store, &conn.user, conversation, query).await {
            Ok(frame) => {
                conn.push_bulk(OutFrame::new(frame)).await;
            }
            Err(e) => on_error(e),
        }
    }
}

/// Replays a connection's `missed` messages (its inbox, read before its
/// welcome was written) as bulk pushes, which wait while the writer drains
/// them; stops if the connection goes.
pub async fn replay(conn: &crate::hub::ConnHandle, missed: Vec<Arc<ChatMessage>>) {
    for m in missed {
        if conn.push_bulk(OutFrame::new(ServerFrame::Message(m))).await != crate::hub::Push::Queued
        {
            return;
        }
    }
}

/// The `history` frame of a page: its messages [`with_receipts`] and the
/// conversation's read watermarks.
pub fn history_frame(
    conversation: ConversationId,
    before: Option<u64>,
    after: Option<u64>,
    page: HistoryPage,
) -> ServerFrame {
    ServerFrame::History {
        conversation,
        before,
        after,
        messages: with_receipts(&page),
        has_more: page.has_more,
        read: page.read,
    }
}

/// The page's messages with the `status` of each 1:1 message: `read` when
/// its recipient's watermark covers it, `delivered` when it left the
/// recipient's inbox (acked), none while neither. Tombstones get none.
pub fn with_receipts(page: &HistoryPage) -> Vec<Arc<ChatMessage>> {
    page.messages
        .iter()
        .map(|m| {
            let Some(to) = m.to.as_ref().filter(|_| !m.recalled) else {
                return m.clone();
            };
            let status = if page.read.get(to).is_some_and(|&w| w >= m.seq) {
                Some(MsgStatus::Read)
            } else if !page.undelivered.contains(&m.msg_id) {
                Some(MsgStatus::Delivered)
            } else {
                None
            };
            match status {
                Some(status) => Arc::new(ChatMessage {
                    status: Some(status),
                    ..ChatMessage::clone(m)
                }),
                None => m.clone(),
            }
        })
        .collect()
}
