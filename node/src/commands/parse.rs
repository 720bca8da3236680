//! From a RocketMQ message to a [`Command`], or a [`Rejected`] that goes
//! to the dead-letter topic without a retry.

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::ids::{ConversationId, GroupId, MsgId, UserId};
use crate::model::{GroupProfile, check_title};

/// Group ids of activities: `activity-<activity_id>`, so the later events of
/// an activity find its group (seed 002 looked it up by activity id through
/// an API that takes a group id).
pub const ACTIVITY_GROUP_PREFIX: &str = "activity-";
/// Most users one membership command names.
pub const MAX_USERS_PER_COMMAND: usize = 1000;

/// One command, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Seed 002 `activity.created`: the activity's group, the creator its
    /// owner and only member, the title stored, a notice in the group.
    ActivityCreated {
        group: GroupId,
        creator: UserId,
        title: String,
    },
    /// Seed 002 `activity.member.joined`: the user added, a notice.
    ActivityMemberJoined { group: GroupId, user: UserId },
    /// Seed 002 `activity.member.left`: the user removed, a notice.
    ActivityMemberLeft { group: GroupId, user: UserId },
    /// `group.create`: creates the group, or brings an existing one to at
    /// least these members and to this owner and title.
    CreateGroup {
        group: GroupId,
        members: Vec<UserId>,
        profile: GroupProfile,
    },
    /// `group.delete`.
    DeleteGroup { group: GroupId },
    /// `group.members.add`.
    AddMembers { group: GroupId, users: Vec<UserId> },
    /// `group.members.remove`.
    RemoveMembers { group: GroupId, users: Vec<UserId> },
    /// `notice`: a system message to one user or to a group.
    Notice { to: NoticeTarget, content: String },
    /// `message.recall`: as the admin API's recall.
    Recall {
        conversation: ConversationId,
        msg_id: MsgId,
    },
    /// `user.disconnect`: closes every connection of the user, on every pod,
    /// after a `disconnect` frame with the reason.
    Disconnect { user: UserId, reason: String },
}

/// Where a notice goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoticeTarget {
    User(UserId),
    Group(GroupId),
}

/// Every command type, as the tag (or `event_type`) names it.
pub const TYPES: [&str; 10] = [
    "activity.created",
    "activity.member.joined",
    "activity.member.left",
    "group.create",
    "group.delete",
    "group.members.add",
    "group.members.remove",
    "notice",
    "message.recall",
    "user.disconnect",
];

impl Command {
    /// The command type (the `handler` label of the metrics).
    pub fn kind(&self) -> &'static str {
        let i = match self {
            Self::ActivityCreated { .. } => 0,
            Self::ActivityMemberJoined { .. } => 1,
            Self::ActivityMemberLeft { .. } => 2,
            Self::CreateGroup { .. } => 3,
            Self::DeleteGroup { .. } => 4,
            Self::AddMembers { .. } => 5,
            Self::RemoveMembers { .. } => 6,
            Self::Notice { .. } => 7,
            Self::Recall { .. } => 8,
            Self::Disconnect { .. } => 9,
        };
        TYPES[i]
    }
}

/// Why a command was refused: a stable code and a reason for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// `missing_type`, `unknown_type`, `malformed_json`, `missing_field`,
    /// `invalid_field`.
    pub code: &'static str,
    pub reason: String,
}

impl Rejected {
    fn new(code: &'static str, reason: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
        }
    }

    fn invalid(reason: impl Into<String>) -> Self {
        Self::new("invalid_field", reason)
    }
}

#[derive(Deserialize)]
struct ActivityCreated {
    activity_id: String,
    creator_id: String,
    title: String,
    #[serde(default)]
    #[allow(dead_code)]
    created_at: Option<String>,
}

#[derive(Deserialize)]
struct ActivityMember {
    activity_id: String,
    user_id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateGroup {
    group_id: String,
    #[serde(default)]
    members: Vec<String>,
    #[serde(default)]
    owner: Option<String>,
    #[serde(default)]
    title: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupOnly {
    group_id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Members {
    group_id: String,
    user_ids: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Notice {
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    group_id: Option<String>,
    content: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Recall {
    conversation: String,
    msg_id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Disconnect {
    user_id: String,
    #[serde(default)]
    reason: Option<String>,
}

/// The longest `reason` of a `user.disconnect`, in bytes.
pub const MAX_DISCONNECT_REASON: usize = 256;

/// Reads a command: its type from `tag`, else `event_type`; `body` its JSON.
/// Notices longer than `max_content` bytes are refused.
pub fn parse(
    tag: Option<&str>,
    event_type: Option<&str>,
    body: &[u8],
    max_content: usize,
) -> Result<Command, Rejected> {
    let kind = tag
        .filter(|t| !t.is_empty() && *t != "*")
        .or(event_type)
        .ok_or_else(|| {
            Rejected::new(
                "missing_type",
                "the command type is neither the message's tag nor its `event_type` property",
            )
        })?;
    match kind {
        "activity.created" => {
            let b: ActivityCreated = json(body)?;
            check_title(&b.title).map_err(Rejected::invalid)?;
            Ok(Command::ActivityCreated {
                group: activity_group(&b.activity_id)?,
                creator: user("creator_id", &b.creator_id)?,
                title: b.title,
            })
        }
        "activity.member.joined" | "activity.member.left" => {
            let b: ActivityMember = json(body)?;
            let (group, user) = (
                activity_group(&b.activity_id)?,
                user("user_id", &b.user_id)?,
            );
            Ok(if kind == "activity.member.joined" {
                Command::ActivityMemberJoined { group, user }
            } else {
                Command::ActivityMemberLeft { group, user }
            })
        }
        "group.create" => {
            let b: CreateGroup = json(body)?;
            if let Some(t) = &b.title {
                check_title(t).map_err(Rejected::invalid)?;
            }
            Ok(Command::CreateGroup {
                group: group(&b.group_id)?,
                members: users("members", &b.members, true)?,
                profile: GroupProfile {
                    owner: b.owner.as_deref().map(|o| user("owner", o)).transpose()?,
                    title: b.title,
                },
            })
        }
        "group.delete" => {
            let b: GroupOnly = json(body)?;
            Ok(Command::DeleteGroup {
                group: group(&b.group_id)?,
            })
        }
        "group.members.add" | "group.members.remove" => {
            let b: Members = json(body)?;
            let (group, users) = (group(&b.group_id)?, users("user_ids", &b.user_ids, false)?);
            Ok(if kind == "group.members.add" {
                Command::AddMembers { group, users }
            } else {
                Command::RemoveMembers { group, users }
            })
        }
        "notice" => {
            let b: Notice = json(body)?;
            if b.content.is_empty() || b.content.len() > max_content {
                return Err(Rejected::invalid(format!(
                    "`content` must be 1 to {max_content} bytes"
                )));
            }
            let to = match (b.user_id, b.group_id) {
                (Some(u), None) => NoticeTarget::User(user("user_id", &u)?),
                (None, Some(g)) => NoticeTarget::Group(group(&g)?),
                _ => {
                    return Err(Rejected::invalid(
                        "a notice names exactly one of `user_id` and `group_id`",
                    ));
                }
            };
            Ok(Command::Notice {
                to,
                content: b.content,
            })
        }
        "message.recall" => {
            let b: Recall = json(body)?;
            Ok(Command::Recall {
                conversation: ConversationId::parse(&b.conversation)
                    .map_err(|e| Rejected::invalid(format!("`conversation`: {e}")))?,
                msg_id: b
                    .msg_id
                    .parse()
                    .map(MsgId)
                    .map_err(|_| Rejected::invalid("`msg_id` is not a message id"))?,
            })
        }
        "user.disconnect" => {
            let b: Disconnect = json(body)?;
            let reason = b
                .reason
                .unwrap_or_else(|| "disconnected by the service".to_owned());
            if reason.is_empty() || reason.len() > MAX_DISCONNECT_REASON {
                return Err(Rejected::invalid(format!(
                    "`reason` must be 1 to {MAX_DISCONNECT_REASON} bytes"
                )));
            }
            Ok(Command::Disconnect {
                user: user("user_id", &b.user_id)?,
                reason,
            })
        }
        other => Err(Rejected::new(
            "unknown_type",
            format!(
                "unknown command type {:?}; known: {}",
                other.chars().take(64).collect::<String>(),
                TYPES.join(", ")
            ),
        )),
    }
}

fn json<T: DeserializeOwned>(body: &[u8]) -> Result<T, Rejected> {
    serde_json::from_slice(body).map_err(|e| {
        let text = e.to_string();
        match e.classify() {
            serde_json::error::Category::Data if text.starts_with("missing field") => {
                Rejected::new("missing_field", text)
            }
            serde_json::error::Category::Data => Rejected::invalid(text),
            _ => Rejected::new("malformed_json", text),
        }
    })
}

fn user(field: &str, s: &str) -> Result<UserId, Rejected> {
    let u = UserId::parse(s).map_err(|e| Rejected::invalid(format!("`{field}`: {e}")))?;
    if u.as_str() == crate::ids::SYSTEM_USER {
        return Err(Rejected::invalid(format!(
            "`{field}`: {:?} is the service's own sender",
            crate::ids::SYSTEM_USER
        )));
    }
    Ok(u)
}

fn users(field: &str, list: &[String], may_be_empty: bool) -> Result<Vec<UserId>, Rejected> {
    if (!may_be_empty && list.is_empty()) || list.len() > MAX_USERS_PER_COMMAND {
        let least = if may_be_empty { 0 } else { 1 };
        return Err(Rejected::invalid(format!(
            "`{field}` must name {least} to {MAX_USERS_PER_COMMAND} users"
        )));
    }
    list.iter().map(|u| user(field, u)).collect()
}

fn group(s: &str) -> Result<GroupId, Rejected> {
    GroupId::parse(s).map_err(|e| Rejected::invalid(format!("`group_id`: {e}")))
}

/// The group of an activity.
pub fn activity_group(activity_id: &str) -> Result<GroupId, Rejected> {
    GroupId::parse(&format!("{ACTIVITY_GROUP_PREFIX}{activity_id}"))
        .ok()
        .filter(|_| !activity_id.is_empty())
        .ok_or_else(|| {
            Rejected::invalid(format!(
                "`activity_id` must be 1 to {} of A-Z a-z 0-9 _ - . @",
                crate::ids::MAX_ID_LEN - ACTIVITY_GROUP_PREFIX.len()
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(tag: &str, body: &str) -> Result<Command, Rejected> {
        parse(Some(tag), None, body.as_bytes(), 100)
    }

    #[test]
    fn seed_examples_parse() {
        let created = p(
            "activity.created",
            r#"{"activity_id":"act_123456","creator_id":"user_789","title":"周末爬山活动","created_at":"2024-01-01T10:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(
            created,
            Command::ActivityCreated {
                group: GroupId::parse("activity-act_123456").unwrap(),
                creator: UserId::parse("user_789").unwrap(),
                title: "周末爬山活动".into(),
            }
        );
        let joined = parse(
            None,
            Some("activity.member.joined"),
            br#"{"activity_id":"act_123456","user_id":"user_456","joined_at":"2024-01-01T11:00:00Z"}"#,
            100,
        )
        .unwrap();
        assert_eq!(joined.kind(), "activity.member.joined");
    }

    #[test]
    fn refusals_have_stable_codes() {
        let code =
            |tag: Option<&str>, body: &str| parse(tag, None, body.as_bytes(), 10).unwrap_err().code;
        assert_eq!(code(None, "{}"), "missing_type");
        assert_eq!(code(Some("activity.exploded"), "{}"), "unknown_type");
        assert_eq!(
            code(Some("activity.created"), "{not json"),
            "malformed_json"
        );
        assert_eq!(
            code(
                Some("activity.created"),
                r#"{"activity_id":"a","title":"t"}"#
            ),
            "missing_field"
        );
        assert_eq!(
            code(
                Some("activity.created"),
                r#"{"activity_id":"a b","creator_id":"u","title":"t"}"#
            ),
            "invalid_field"
        );
        assert_eq!(
            code(
                Some("notice"),
                r#"{"user_id":"u","content":"far too long"}"#
            ),
            "invalid_field"
        );
        assert_eq!(
            code(
                Some("notice"),
                r#"{"user_id":"u","group_id":"g","content":"x"}"#
            ),
            "invalid_field"
        );
        assert_eq!(
            code(
                Some("group.members.add"),
                r#"{"group_id":"g","user_ids":[]}"#
            ),
            "invalid_field"
        );
        assert_eq!(
            code(Some("group.delete"), r#"{"group_id":"g","extra":1}"#),
            "invalid_field"
        );
        assert_eq!(
            code(Some("group.create"), r#"{"group_id":"g","owner":"system"}"#),
            "invalid_field"
        );
        let long = "a".repeat(56);
        assert_eq!(
            code(
                Some("activity.member.left"),
                &format!(r#"{{"activity_id":"{long}","user_id":"u"}}"#)
            ),
            "invalid_field"
        );
        assert_eq!(
            code(
                Some("user.disconnect"),
                &format!(r#"{{"user_id":"u","reason":"{}"}}"#, "r".repeat(257))
            ),
            "invalid_field"
        );
        assert_eq!(code(Some("user.disconnect"), r#"{}"#), "missing_field");
    }

    #[test]
    fn a_disconnect_has_a_default_reason() {
        assert_eq!(
            p("user.disconnect", r#"{"user_id":"alice"}"#).unwrap(),
            Command::Disconnect {
                user: UserId::parse("alice").unwrap(),
                reason: "disconnected by the service".into(),
            }
        );
    }
}
