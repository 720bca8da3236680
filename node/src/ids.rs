//! Identifiers: user and group ids, conversation ids, server message ids and
//! the pod identity they are derived from.

use std::fmt;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Longest accepted user or group id, in bytes.
pub const MAX_ID_LEN: usize = 64;

/// The sender of the service's own notices (format `system`). No client
/// signs in as this user.
pub const SYSTEM_USER: &str = "system";

/// Why an id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("must be 1 to {MAX_ID_LEN} characters")]
    Length,
    #[error("may contain only letters, digits, '_', '-', '.' and '@'")]
    Charset,
    #[error("is not a conversation id (expected 'dm:<user>:<user>' or 'group:<group>')")]
    Conversation,
}

fn check_id(s: &str) -> Result<(), IdError> {
    if s.is_empty() || s.len() > MAX_ID_LEN {
        return Err(IdError::Length);
    }
    // ':' is the separator of conversation ids, so it can never be part of a name.
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'@'))
    {
        return Err(IdError::Charset);
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn parse(s: &str) -> Result<Self, IdError> {
                check_id(s)?;
                Ok(Self(s.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
                Self::parse(&s).map_err(|e| serde::de::Error::custom(format_args!("{} {e}", stringify!($name))))
            }
        }
    };
}

name_type!(
    /// A user id: 1-64 characters of `[A-Za-z0-9_.@-]`. It comes from the
    /// authenticated connection (JWT `sub` or, in dev auth mode, the query).
    UserId
);
name_type!(
    /// A group id, same alphabet as [`UserId`].
    GroupId
);

/// A conversation: a direct chat between two users, or a group.
///
/// The wire form is `dm:<a>:<b>` with `a <= b` (so both sides name it the
/// same way) or `group:<id>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConversationId {
    Direct(UserId, UserId),
    Group(GroupId),
}

impl ConversationId {
    pub fn direct(a: &UserId, b: &UserId) -> Self {
        if a <= b {
            Self::Direct(a.clone(), b.clone())
        } else {
            Self::Direct(b.clone(), a.clone())
        }
    }

    pub fn parse(s: &str) -> Result<Self, IdError> {
        if let Some(rest) = s.strip_prefix("dm:") {
            let (a, b) = rest.split_once(':').ok_or(IdError::Conversation)?;
            let (a, b) = (UserId::parse(a)?, UserId::parse(b)?);
            // Only the canonical order is accepted, so one conversation has one name.
            if a > b {
                return Err(IdError::Conversation);
            }
            Ok(Self::Direct(a, b))
        } else if let Some(g) = s.strip_prefix("group:") {
            Ok(Self::Group(GroupId::parse(g)?))
        } else {
            Err(IdError::Conversation)
        }
    }

    /// The other participant of a direct conversation, seen from `me`.
    pub fn peer_of(&self, me: &UserId) -> Option<&UserId> {
        match self {
            Self::Direct(a, b) if a == me => Some(b),
            Self::Direct(a, b) if b == me => Some(a),
            _ => None,
        }
    }
}

impl fmt::Display for ConversationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Direct(a, b) => write!(f, "dm:{a}:{b}"),
            Self::Group(g) => write!(f, "group:{g}"),
        }
    }
}

impl Serialize for ConversationId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ConversationId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A server message id: 64 bits, snowflake layout, so ids from different pods
/// never collide and sort roughly by time.
///
/// On the wire it is a decimal *string*: JavaScript numbers lose precision
/// above 2^53 and most chat clients are written in JavaScript.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MsgId(pub u64);

impl fmt::Display for MsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Serialize for MsgId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MsgId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Accept both the canonical string and a plain number (seed clients).
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw<'a> {
            Num(u64),
            Str(std::borrow::Cow<'a, str>),
        }
        match Raw::deserialize(d)? {
            Raw::Num(n) => Ok(MsgId(n)),
            Raw::Str(s) => s
                .parse()
                .map(MsgId)
                .map_err(|_| serde::de::Error::custom("msg_id must be a decimal number")),
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// 2024-01-01T00:00:00Z: the snowflake epoch. 41 bits of milliseconds from
/// here last until 2093.
const EPOCH_MS: i64 = 1_704_067_200_000;
const WORKER_BITS: u32 = 10;
const SEQ_BITS: u32 = 12;
/// Highest worker id (StatefulSet ordinal) a snowflake can carry.
pub const MAX_WORKER_ID: u16 = (1 << WORKER_BITS) - 1;

/// Generates snowflake ids: 41 bits of time, 10 bits of worker id, 12 bits of
/// sequence (4096 ids per millisecond per worker).
#[derive(Debug)]
pub struct Snowflake {
    worker: u64,
    state: Mutex<(i64, u64)>,
}

impl Snowflake {
    pub fn new(worker: u16) -> Self {
        assert!(worker <= MAX_WORKER_ID, "worker id out of range");
        Self {
            worker: u64::from(worker),
            state: Mutex::new((0, 0)),
        }
    }

    pub fn next_id(&self) -> MsgId {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut now = now_millis() - EPOCH_MS;
        // A clock that steps back (NTP) must not produce duplicate ids: keep
        // using the last timestamp, and borrow from the future when the
        // sequence runs out rather than sleeping under the lock.
        if now < st.0 {
            now = st.0;
        }
        if now == st.0 {
            st.1 += 1;
            if st.1 >= (1 << SEQ_BITS) {
                now += 1;
                st.1 = 0;
            }
        } else {
            st.1 = 0;
        }
        st.0 = now;
        MsgId(((now as u64) << (WORKER_BITS + SEQ_BITS)) | (self.worker << SEQ_BITS) | st.1)
    }
}

/// Who this node is: its pod name and the StatefulSet ordinal parsed from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodIdentity {
    pub name: String,
    pub namespace: Option<String>,
    pub ordinal: u16,
}

impl PodIdentity {
    /// Parses the ordinal from a StatefulSet pod name (`<set>-<ordinal>`). A
    /// name without a numeric suffix (a standalone node) is ordinal 0.
    pub fn new(name: &str, namespace: Option<String>) -> Result<Self, String> {
        let ordinal = match name.rsplit_once('-') {
            Some((_, tail)) if !tail.is_empty() && tail.bytes().all(|b| b.is_ascii_digit()) => {
                let n: u32 = tail
                    .parse()
                    .map_err(|_| format!("pod name {name:?}: ordinal is not a number"))?;
                if n > u32::from(MAX_WORKER_ID) {
                    return Err(format!(
                        "pod name {name:?}: ordinal {n} is above {MAX_WORKER_ID}, the largest snowflake worker id"
                    ));
                }
                n as u16
            }
            _ => 0,
        };
        Ok(Self {
            name: name.to_owned(),
            namespace,
            ordinal,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_are_validated() {
        assert!(UserId::parse("alice").is_ok());
        assert!(UserId::parse("a.b-c_d@x").is_ok());
        assert_eq!(UserId::parse(""), Err(IdError::Length));
        assert_eq!(UserId::parse(&"x".repeat(65)), Err(IdError::Length));
        assert_eq!(UserId::parse("a:b"), Err(IdError::Charset));
        assert_eq!(UserId::parse("a b"), Err(IdError::Charset));
    }

    #[test]
    fn direct_conversation_is_canonical() {
        let a = UserId::parse("alice").unwrap();
        let b = UserId::parse("bob").unwrap();
        let c1 = ConversationId::direct(&a, &b);
        let c2 = ConversationId::direct(&b, &a);
        assert_eq!(c1, c2);
        assert_eq!(c1.to_string(), "dm:alice:bob");
        assert_eq!(ConversationId::parse("dm:alice:bob").unwrap(), c1);
        assert!(ConversationId::parse("dm:bob:alice").is_err());
        assert_eq!(c1.peer_of(&a), Some(&b));
        assert_eq!(
            ConversationId::parse("group:g1").unwrap().to_string(),
            "group:g1"
        );
        assert!(ConversationId::parse("chat123").is_err());
        assert!(ConversationId::parse("dm:alice").is_err());
    }

    #[test]
    fn snowflakes_are_unique_and_increasing() {
        let ids = Snowflake::new(5);
        let mut last = MsgId(0);
        for _ in 0..20_000 {
            let id = ids.next_id();
            assert!(id > last);
            assert_eq!((id.0 >> SEQ_BITS) & u64::from(MAX_WORKER_ID), 5);
            last = id;
        }
    }

    #[test]
    fn msg_id_is_a_string_on_the_wire() {
        let id = MsgId(u64::MAX);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"18446744073709551615\"");
        let back: MsgId = serde_json::from_str(&json).unwrap();
        assert_eq!(back, id);
        let num: MsgId = serde_json::from_str("42").unwrap();
        assert_eq!(num, MsgId(42));
    }

    #[test]
    fn ordinal_comes_from_pod_name() {
        assert_eq!(PodIdentity::new("sb-2", None).unwrap().ordinal, 2);
        assert_eq!(PodIdentity::new("chat-prod-17", None).unwrap().ordinal, 17);
        assert_eq!(PodIdentity::new("standalone", None).unwrap().ordinal, 0);
        assert_eq!(PodIdentity::new("host-", None).unwrap().ordinal, 0);
        assert!(PodIdentity::new("sb-5000", None).is_err());
    }
}
