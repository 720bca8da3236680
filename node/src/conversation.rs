//! Who may act in a conversation.

use crate::backend::MessageStore;
use crate::ids::{ConversationId, UserId};
use crate::protocol::{ErrorCode, FrameError};

/// Everyone in `conversation` (the two sides of a direct one, the members of
/// a group), if `me` is one of them; `not_a_member` otherwise. An unknown
/// group looks the same as one `me` is not in, so no one can probe which
/// groups exist.
pub async fn participants(
    store: &dyn MessageStore,
    me: &UserId,
    conversation: &ConversationId,
) -> Result<Vec<UserId>, FrameError> {
    match conversation {
        ConversationId::Direct(a, b) if a == me || b == me => Ok(vec![a.clone(), b.clone()]),
        ConversationId::Direct(..) => Err(FrameError::new(
            ErrorCode::NotAMember,
            "not a participant of this conversation",
        )),
        ConversationId::Group(g) => match store.group(g).await? {
            Some(grp) if grp.members.contains(me) => Ok(grp.members),
            _ => Err(FrameError::new(
                ErrorCode::NotAMember,
                "not a member of this group",
            )),
        },
    }
}
