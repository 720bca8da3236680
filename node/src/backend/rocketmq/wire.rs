//! What a bus message is on the wire and which queue it takes: a batch is a
//! JSON array of envelopes ([`encode`], [`decode`]), a chat message's push
//! carries its message id as the RocketMQ key ([`key_of`]), and every push
//! about one conversation takes one lane ([`lane_of`]), so one queue.

use crate::backend::Envelope;
use crate::ids::ConversationId;
use crate::protocol::ServerFrame;

/// Lanes per destination pod: more than the operator's 4 queues per topic.
/// A lane's failed send holds up only that lane's conversations (it gives its
/// send slot back while it waits to try again); a slow one holds one of the
/// pod's send slots (`lanes::IN_FLIGHT`) until its 3 s timeout.
pub const LANES: u32 = 8;

/// A batch on the wire: a JSON array of envelopes.
pub fn encode<'a>(envelopes: impl Iterator<Item = &'a [u8]> + Clone) -> Vec<u8> {
    let len = envelopes.clone().map(|e| e.len() + 1).sum::<usize>() + 2;
    let mut body = Vec::with_capacity(len);
    body.push(b'[');
    for (i, e) in envelopes.enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(e);
    }
    body.push(b']');
    body
}

/// Reads a body: a batch, or a single envelope (as nodes before batching sent).
pub fn decode(body: &[u8]) -> serde_json::Result<Decoded> {
    if body.first() != Some(&b'[') {
        return serde_json::from_slice(body).map(|e| Decoded {
            envelopes: vec![e],
            unreadable: 0,
        });
    }
    if let Ok(envelopes) = serde_json::from_slice::<Vec<Envelope>>(body) {
        return Ok(Decoded {
            envelopes,
            unreadable: 0,
        });
    }
    // One element this node cannot read (a newer node's kind of envelope during a
    // rolling update, or garbage) must not cost the others.
    let values: Vec<serde_json::Value> = serde_json::from_slice(body)?;
    let all = values.len();
    let envelopes: Vec<Envelope> = values
        .into_iter()
        .filter_map(|v| serde_json::from_value(v).ok())
        .collect();
    Ok(Decoded {
        unreadable: all - envelopes.len(),
        envelopes,
    })
}

/// The envelopes of one bus message.
#[derive(Debug, PartialEq)]
pub struct Decoded {
    /// In the order they were sent.
    pub envelopes: Vec<Envelope>,
    /// Elements of a batch that did not parse, left out.
    pub unreadable: usize,
}

/// The message id of a chat message push, as the RocketMQ message key.
pub fn key_of(envelope: &Envelope) -> Option<String> {
    match envelope {
        Envelope::ToUsers {
            frame: ServerFrame::Message(m),
            ..
        } => Some(m.msg_id.to_string()),
        _ => None,
    }
}

/// The lane of an envelope: every push about one conversation (messages,
/// receipts, typing) shares one; presence goes by user.
pub fn lane_of(envelope: &Envelope) -> u32 {
    let mut h = Fnv::new();
    match envelope {
        Envelope::ToUsers { frame, users, .. } => match conversation_of(frame) {
            Some(ConversationId::Direct(a, b)) => {
                h.write(b"dm:");
                h.write(a.as_str().as_bytes());
                h.write(b":");
                h.write(b.as_str().as_bytes());
            }
            Some(ConversationId::Group(g)) => {
                h.write(b"group:");
                h.write(g.as_str().as_bytes());
            }
            None => match frame {
                // A membership change keeps its order with the group's
                // messages (a member sees `added` before the notice after it).
                ServerFrame::Group { group, .. } => {
                    h.write(b"group:");
                    h.write(group.as_str().as_bytes());
                }
                _ => h.write(users.first().map_or("", |u| u.as_str()).as_bytes()),
            },
        },
        Envelope::Presence(p) => h.write(p.user.as_str().as_bytes()),
    }
    h.0 % LANES
}

fn conversation_of(frame: &ServerFrame) -> Option<&ConversationId> {
    match frame {
        ServerFrame::Message(m) => Some(&m.conversation),
        ServerFrame::Sent { conversation, .. }
        | ServerFrame::Delivered { conversation, .. }
        | ServerFrame::Read { conversation, .. }
        | ServerFrame::Recalled { conversation, .. }
        | ServerFrame::Typing { conversation, .. } => Some(conversation),
        _ => None,
    }
}

/// 32-bit FNV-1a: stable across processes and versions (unlike std's hasher),
/// so every pod puts a conversation on the same lane and queue.
struct Fnv(u32);

impl Fnv {
    fn new() -> Self {
        Self(0x811c_9dc5)
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u32::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0193);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::ids::UserId;
    use crate::model::Presence;

    fn typing(conversation: &str, to: &str) -> Envelope {
        Envelope::ToUsers {
            users: vec![UserId::parse(to).unwrap()],
            except: None,
            frame: ServerFrame::Typing {
                conversation: ConversationId::parse(conversation).unwrap(),
                user: UserId::parse("alice").unwrap(),
                state: crate::protocol::TypingState::Start,
            },
            sent_at_us: 1,
            trace: None,
        }
    }

    #[test]
    fn a_conversation_keeps_its_lane_whoever_receives_it() {
        let a = lane_of(&typing("group:g1", "bob"));
        assert_eq!(a, lane_of(&typing("group:g1", "carol")));
        assert!(a < LANES);
        // FNV-1a of "group:g1" is fixed: a change here moves conversations
        // between queues, which reorders them during a rolling update.
        assert_eq!(a, 0xa92e_4aca % LANES);
        let lanes: std::collections::HashSet<u32> = (0..64)
            .map(|i| lane_of(&typing(&format!("group:g{i}"), "bob")))
            .collect();
        assert!(lanes.len() > LANES as usize / 2, "{lanes:?}");
    }

    #[test]
    fn a_group_change_takes_its_group_lane() {
        let g = crate::ids::GroupId::parse("g1").unwrap();
        let change = Envelope::ToUsers {
            users: vec![UserId::parse("carol").unwrap()],
            except: None,
            frame: ServerFrame::Group {
                group: g,
                change: crate::protocol::server::GroupChange::Added,
                users: Vec::new(),
                members: Vec::new(),
                owner: None,
                title: None,
            },
            sent_at_us: 0,
            trace: None,
        };
        assert_eq!(lane_of(&change), lane_of(&typing("group:g1", "bob")));
    }

    #[test]
    fn batches_and_single_envelopes_decode() {
        let (a, b) = (typing("dm:alice:bob", "bob"), typing("group:g", "bob"));
        let batch: Vec<Vec<u8>> = [&a, &b]
            .iter()
            .map(|e| serde_json::to_vec(e).unwrap())
            .collect();
        assert_eq!(
            decode(&encode(batch.iter().map(Vec::as_slice)))
                .unwrap()
                .envelopes,
            vec![a.clone(), b.clone()]
        );
        assert_eq!(
            decode(&serde_json::to_vec(&a).unwrap()).unwrap().envelopes,
            vec![a.clone()]
        );
        // An element it cannot read is left out; the others are kept, in order.
        let mixed = format!(
            "[{},{{\"Unknown\":{{}}}},{}]",
            serde_json::to_string(&a).unwrap(),
            serde_json::to_string(&b).unwrap()
        );
        assert_eq!(
            decode(mixed.as_bytes()).unwrap(),
            Decoded {
                envelopes: vec![a, b],
                unreadable: 1
            }
        );
        assert!(decode(b"{\"nope\":1}").is_err());
        assert!(decode(b"[1,").is_err());
        assert!(decode(b"").is_err());
        let p = Envelope::Presence(Presence {
            user: UserId::parse("bob").unwrap(),
            online: true,
            devices: 1,
            pods: vec![],
            last_seen: None,
        });
        assert!(lane_of(&p) < LANES);
    }
}
