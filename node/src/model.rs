//! Domain types shared by the chat logic and the backends.

use serde::{Deserialize, Serialize};

use crate::ids::{ConversationId, GroupId, MsgId, UserId};

/// A stored chat message, exactly as it is sent to clients in a `message`
/// frame (v1 dialect).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub msg_id: MsgId,
    pub conversation: ConversationId,
    /// Position in the conversation: 1, 2, 3... without gaps.
    pub seq: u64,
    pub from: UserId,
    /// The recipient of a direct message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<UserId>,
    /// The group of a group message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<GroupId>,
    pub content: String,
    /// What `content` holds; absent in JSON means text.
    #[serde(default, skip_serializing_if = "MsgFormat::is_text")]
    pub format: MsgFormat,
    /// The sender (or an admin) recalled the message: this is its tombstone,
    /// `content` is empty.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recalled: bool,
    /// In `history` pages only, for a 1:1 message: `delivered` once the
    /// recipient acked it, `read` once the recipient read up to it; absent
    /// while neither (and never stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<MsgStatus>,
    /// Server time of acceptance, milliseconds since the Unix epoch.
    pub ts: i64,
    /// The sender's idempotency key, echoed so the sender's other devices can
    /// match their own optimistic copies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_msg_id: Option<String>,
    /// The seed protocol's free-form `chatId`, kept and echoed unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_id: Option<String>,
}

/// What a message's `content` holds. The server stores and relays it; what a
/// client does with `image` or `file` content (a URL, an upload id) is the
/// client's convention.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MsgFormat {
    #[default]
    Text,
    Image,
    File,
    Custom,
    /// A notice the service posts (commands from backends: a group was
    /// created, a member joined). Only the node writes it; a client's send
    /// with this format is refused.
    System,
}

impl MsgFormat {
    pub fn is_text(&self) -> bool {
        *self == Self::Text
    }

    /// Seed 001's `msgFormat` number: text 1, image 2, file 3, custom 4;
    /// Switchboard's system notices 5.
    pub fn code(self) -> u8 {
        match self {
            Self::Text => 1,
            Self::Image => 2,
            Self::File => 3,
            Self::Custom => 4,
            // Not in seed 001 (which names 1-4): Switchboard's own.
            Self::System => 5,
        }
    }
}

/// Where a 1:1 message stands with its recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MsgStatus {
    Delivered,
    Read,
}

/// Where a message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    User(UserId),
    Group(GroupId),
}

/// Presence of one user across the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    pub user: UserId,
    pub online: bool,
    /// Live connections (devices).
    pub devices: usize,
    /// Pods holding those connections.
    pub pods: Vec<String>,
    /// When the user was last seen connected, ms since the Unix epoch; `None`
    /// when never seen (or forgotten).
    pub last_seen: Option<i64>,
}

/// Cluster-wide online counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OnlineStats {
    pub online_users: usize,
    pub connections: usize,
}

/// A group and its members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Group {
    pub id: GroupId,
    pub members: Vec<UserId>,
    /// Who owns the group (set by a command or the admin API; the chat
    /// protocol gives an owner no extra rights yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<UserId>,
    /// The group's title.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
}

impl Group {
    /// A group with no owner or title.
    pub fn bare(id: GroupId, members: Vec<UserId>) -> Self {
        Self {
            id,
            members,
            owner: None,
            title: None,
        }
    }
}

/// A group's owner and title, as [`crate::backend::MessageStore::set_group_profile`]
/// stores them (`None` clears).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupProfile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<UserId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
}

/// Longest group title, in bytes.
pub const MAX_GROUP_TITLE: usize = 256;

/// A title is 1 to [`MAX_GROUP_TITLE`] bytes without control characters.
pub fn check_title(title: &str) -> Result<(), String> {
    if title.is_empty() || title.len() > MAX_GROUP_TITLE {
        return Err(format!("`title` must be 1 to {MAX_GROUP_TITLE} bytes"));
    }
    if title.chars().any(char::is_control) {
        return Err("`title` must not hold control characters".into());
    }
    Ok(())
}
