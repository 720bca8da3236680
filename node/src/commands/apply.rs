//! What each [`Command`] does. Every effect may be applied again without
//! changing more: creates are upserts, adding a member who is in or
//! removing one who is out changes nothing, and a notice is stored with an
//! idempotency key derived from the command's id (the message store keeps
//! the first and answers the second with it).

use std::sync::Arc;
use std::time::Instant;

use super::parse::{Command, NoticeTarget};
use crate::backend::BackendError;
use crate::groups::Groups;
use crate::ids::{ConversationId, GroupId, SYSTEM_USER, UserId, now_millis};
use crate::model::{ChatMessage, GroupProfile, MsgFormat};
use crate::node::Node;
use crate::protocol::{ErrorCode, FrameError, ServerFrame};
use crate::recall::Recaller;

/// Why an attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// May pass (Redis away, a group whose create is still on its way):
    /// retried.
    Retry(String),
    /// Will not pass: straight to the dead-letter topic.
    Reject { code: &'static str, reason: String },
}

impl From<BackendError> for Failure {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::Unavailable(reason) => {
                Self::Retry(format!("storage unavailable: {reason}"))
            }
            // Membership and notices of a group that does not exist yet: its
            // create may be behind this command.
            BackendError::NoSuchGroup(g) => Self::Retry(format!("group {g} does not exist (yet)")),
            BackendError::GroupFull(..) => Self::Reject {
                code: "group_full",
                reason: e.to_string(),
            },
            BackendError::InboxFull(..) => Self::Reject {
                code: "inbox_full",
                reason: e.to_string(),
            },
            BackendError::GroupExists(..) => Self::Reject {
                code: "conflict",
                reason: e.to_string(),
            },
        }
    }
}

impl From<FrameError> for Failure {
    fn from(e: FrameError) -> Self {
        if e.code == ErrorCode::Unavailable {
            Self::Retry(e.reason)
        } else {
            Self::Reject {
                code: e.code.as_str(),
                reason: e.reason,
            }
        }
    }
}

/// Applies `cmd` on `node`; `key` (unique per command) keys its notice.
pub async fn apply(node: &Node, cmd: &Command, key: &str) -> Result<(), Failure> {
    let groups = node.groups();
    match cmd {
        Command::ActivityCreated {
            group,
            creator,
            title,
        } => {
            let profile = GroupProfile {
                owner: Some(creator.clone()),
                title: Some(title.clone()),
            };
            upsert(&groups, group, std::slice::from_ref(creator), &profile).await?;
            let text = format!("{creator} created the group \"{title}\"");
            notice(node, &NoticeTarget::Group(group.clone()), text, key).await
        }
        Command::ActivityMemberJoined { group, user } => {
            groups.add(group, std::slice::from_ref(user)).await?;
            let text = format!("{user} joined");
            notice(node, &NoticeTarget::Group(group.clone()), text, key).await
        }
        Command::ActivityMemberLeft { group, user } => {
            groups.remove(group, user).await?;
            let text = format!("{user} left");
            notice(node, &NoticeTarget::Group(group.clone()), text, key).await
        }
        Command::CreateGroup {
            group,
            members,
            profile,
        } => upsert(&groups, group, members, profile).await,
        Command::DeleteGroup { group } => {
            // Already gone: as asked.
            groups.delete(group).await?;
            Ok(())
        }
        Command::AddMembers { group, users } => {
            groups.add(group, users).await?;
            Ok(())
        }
        Command::RemoveMembers { group, users } => {
            for u in users {
                groups.remove(group, u).await?;
            }
            Ok(())
        }
        Command::Notice { to, content } => notice(node, to, content.clone(), key).await,
        Command::Recall {
            conversation,
            msg_id,
        } => {
            node.recalls()
                .recall(Recaller::Admin, conversation, *msg_id)
                .await?;
            Ok(())
        }
        Command::Disconnect { user, reason } => {
            // Fails (and is retried) while the registry is away; the push
            // itself is as sure as any push (a pod that is gone holds no
            // connection any more).
            node.backends().registry.connections(user).await?;
            let frame = ServerFrame::Disconnect {
                reason: reason.clone(),
            };
            node.router()
                .route(std::slice::from_ref(user), frame, None, None)
                .await;
            Ok(())
        }
    }
}

/// Creates the group, or brings an existing one to at least `members` and
/// to `profile` (when it names an owner or a title).
async fn upsert(
    groups: &Groups<'_>,
    id: &GroupId,
    members: &[UserId],
    profile: &GroupProfile,
) -> Result<(), Failure> {
    match groups.create(id, members, profile).await {
        Ok(_) => Ok(()),
        Err(BackendError::GroupExists(_)) => {
            if !members.is_empty() {
                groups.add(id, members).await?;
            }
            if *profile != GroupProfile::default() {
                // What the command does not name stays as it is.
                let current = groups.get(id).await?;
                let wanted = GroupProfile {
                    owner: profile.owner.clone().or(current.owner.clone()),
                    title: profile.title.clone().or(current.title.clone()),
                };
                if current.owner != wanted.owner || current.title != wanted.title {
                    groups.update(id, &wanted).await?;
                }
            }
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Stores a system notice (sender `system`, format `system`) and pushes it
/// to the recipients online; stored once per `key`.
async fn notice(node: &Node, to: &NoticeTarget, content: String, key: &str) -> Result<(), Failure> {
    let system = UserId::parse(SYSTEM_USER).map_err(|e| Failure::Reject {
        code: "internal",
        reason: e.to_string(),
    })?;
    let store = node.backends().store.as_ref();
    let (conversation, to_user, group, recipients) = match to {
        NoticeTarget::User(u) => (
            ConversationId::direct(&system, u),
            Some(u.clone()),
            None,
            vec![u.clone()],
        ),
        NoticeTarget::Group(g) => {
            let members = node.groups().get(g).await?.members;
            (
                ConversationId::Group(g.clone()),
                None,
                Some(g.clone()),
                members,
            )
        }
    };
    let accepted_at = Instant::now();
    let msg = ChatMessage {
        msg_id: node.next_msg_id(),
        conversation,
        seq: 0,
        from: system,
        to: to_user,
        group,
        content,
        format: MsgFormat::System,
        recalled: false,
        status: None,
        ts: now_millis(),
        client_msg_id: Some(key.to_owned()),
        chat_id: None,
    };
    let appended = store.append(msg, &recipients).await?;
    if !appended.duplicate {
        node.metrics.messages_stored.inc();
        // The store's pods end with the sender's (`system`: none), not pushed to.
        let pods = appended.pods.map(|mut pods| {
            pods.pop();
            pods
        });
        node.router()
            .route_via(
                &recipients,
                pods,
                ServerFrame::Message(Arc::clone(&appended.msg)),
                None,
                Some(accepted_at),
            )
            .await;
    }
    Ok(())
}
