//! Topic and consumer-group names of one `ChatCluster` (DESIGN.md, "RocketMQ layout").
//!
//! Every name is `PREFIX-<suffix>`, where `PREFIX` comes from [`prefix`]. The operator
//! computes the prefix once and hands it to the nodes; nodes never derive it themselves.

use std::fmt::Write as _;

/// Longest prefix [`prefix`] returns.
///
/// RocketMQ caps topic names at 127 characters, and a consumer group `G` also needs the
/// topics `%RETRY%G` and `%DLQ%G` (7 more characters), so a group name may use 120. The
/// longest suffix here is `-node-4294967295` (16 characters), which leaves 104; 96 keeps
/// some room for suffixes added later.
pub const MAX_PREFIX_LEN: usize = 96;

/// Longest topic or group name that [`is_valid_name`] accepts (see [`MAX_PREFIX_LEN`]).
pub const MAX_NAME_LEN: usize = 120;

/// Separates the namespace from the name. Escapes are `_` plus two hex digits and an
/// encoded part never ends with `_`, so `__` can only be this separator.
const SEPARATOR: &str = "__";

/// Marks a shortened prefix. `_h` never occurs in a full-length encoding (`h` is not a
/// hex digit), so a shortened prefix cannot equal one that was not shortened.
const HASH_MARK: &str = "_h";

/// The prefix of every topic and group of the cluster `name` in `namespace`.
///
/// - Only letters, digits, `_` and `-` (RocketMQ's charset): letters, digits and `-` are
///   kept as they are; any other byte becomes `_` and two lowercase hex digits (so `.`
///   becomes `_2e` and `_` becomes `_5f`). The two parts are joined with `__`.
/// - Collision-free: different `(namespace, name)` pairs give different prefixes, because
///   the encoding can be decoded. This holds without exception up to [`MAX_PREFIX_LEN`]
///   characters; a longer result is cut to its first 78 characters followed by `_h` and 16
///   hex digits of a 64-bit FNV-1a hash of the full encoding, so two long pairs collide only
///   if that hash does.
/// - Never a RocketMQ system name: it always contains `__`, and never `rmq_sys_` or `%`.
///
/// ```
/// use switchboard_rocketmq::names::prefix;
/// assert_eq!(prefix("chat", "prod"), "chat__prod");
/// assert_eq!(prefix("team-a", "eu.west"), "team-a__eu_2ewest");
/// ```
pub fn prefix(namespace: &str, name: &str) -> String {
    let mut out = String::with_capacity(namespace.len() + name.len() + SEPARATOR.len());
    encode_into(&mut out, namespace);
    out.push_str(SEPARATOR);
    encode_into(&mut out, name);
    if out.len() <= MAX_PREFIX_LEN {
        return out;
    }
    let hash = fnv1a64(out.as_bytes());
    // The encoding is ASCII, so any byte index is a char boundary.
    out.truncate(MAX_PREFIX_LEN - HASH_MARK.len() - 16);
    // Writing to a String cannot fail.
    let _ = write!(out, "{HASH_MARK}{hash:016x}");
    out
}

/// Whether `name` can be used as a topic or consumer-group name here: 1 to
/// [`MAX_NAME_LEN`] characters, each a letter, digit, `_` or `-`, after
/// RocketMQ's own `%DLQ%` or `%RETRY%` prefix if it has one.
pub fn is_valid_name(name: &str) -> bool {
    let rest = name
        .strip_prefix("%DLQ%")
        .or_else(|| name.strip_prefix("%RETRY%"))
        .unwrap_or(name);
    !rest.is_empty() && name.len() <= MAX_NAME_LEN && rest.bytes().all(is_kept_byte)
}

fn is_kept_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

fn encode_into(out: &mut String, part: &str) {
    for b in part.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "_{b:02x}");
        }
    }
}

/// 64-bit FNV-1a: tiny, stable across platforms and releases (the shortened names are
/// stored in brokers, so the hash must never change). Also the operator's hash of what it
/// applied.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes
        .iter()
        .fold(OFFSET, |h, &b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

/// All topic and group names of one cluster, from its prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// The cluster's prefix, as returned by [`prefix`].
    pub prefix: String,
}

impl Names {
    /// Names under `prefix` (normally the value of [`prefix`], passed on by the operator).
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    fn with(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.prefix)
    }

    /// `PREFIX-node-<ordinal>`: cross-node delivery to the pod with this StatefulSet ordinal.
    pub fn node_topic(&self, ordinal: u32) -> String {
        format!("{}-node-{ordinal}", self.prefix)
    }

    /// `PREFIX-node-<ordinal>`: the group with which that pod reads its own topic.
    pub fn node_group(&self, ordinal: u32) -> String {
        self.node_topic(ordinal)
    }

    /// `PREFIX-events`: pub-sub events for external services.
    pub fn events_topic(&self) -> String {
        self.with("events")
    }

    /// `PREFIX-requests`: request-response API, requests from backends.
    pub fn requests_topic(&self) -> String {
        self.with("requests")
    }

    /// `PREFIX-responses`: request-response API, answers from nodes.
    pub fn responses_topic(&self) -> String {
        self.with("responses")
    }

    /// `PREFIX-commands`: commands from backends.
    pub fn commands_topic(&self) -> String {
        self.with("commands")
    }

    /// `PREFIX-cluster-events`: `ClusterEvent` envelopes for downstream persistence.
    pub fn cluster_events_topic(&self) -> String {
        self.with("cluster-events")
    }

    /// `PREFIX-api`: the nodes' group on the requests topic.
    pub fn api_group(&self) -> String {
        self.with("api")
    }

    /// `PREFIX-commands`: the nodes' group on the commands topic.
    pub fn commands_group(&self) -> String {
        self.with("commands")
    }

    /// `%DLQ%PREFIX-commands`: the dead-letter topic of the commands group
    /// (RocketMQ's own name for it), where the nodes also write the commands
    /// they refuse, with the reason.
    pub fn commands_dead_letter_topic(&self) -> String {
        format!("%DLQ%{}", self.commands_group())
    }

    /// The topics every cluster has whatever its size (all but the per-node ones).
    pub fn shared_topics(&self) -> Vec<String> {
        vec![
            self.events_topic(),
            self.requests_topic(),
            self.responses_topic(),
            self.commands_topic(),
            self.cluster_events_topic(),
            self.commands_dead_letter_topic(),
        ]
    }

    /// The groups every cluster has whatever its size (all but the per-node ones).
    pub fn shared_groups(&self) -> Vec<String> {
        vec![self.api_group(), self.commands_group()]
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn plain_kubernetes_names_stay_readable() {
        assert_eq!(prefix("default", "chat"), "default__chat");
        assert_eq!(prefix("team-a", "chat-1"), "team-a__chat-1");
        assert_eq!(prefix("ns", "a.b"), "ns__a_2eb");
        assert_eq!(prefix("ns", "Upper"), "ns__Upper");
    }

    #[test]
    fn pairs_that_naive_joining_confuses_stay_apart() {
        let pairs = [
            ("a-b", "c"),
            ("a", "b-c"),
            ("a_b", "c"),
            ("a", "b_c"),
            ("a_", "b"),
            ("a", "_b"),
            ("a__b", ""),
            ("", "a__b"),
            ("a.", "b"),
            ("a", ".b"),
            ("a_2e", "b"),
            ("a", "2eb"),
            ("", ""),
            ("_", ""),
            ("", "_"),
        ];
        let mut seen = HashSet::new();
        for (ns, name) in pairs {
            let p = prefix(ns, name);
            assert!(seen.insert(p.clone()), "{ns:?}/{name:?} -> {p} collides");
        }
    }

    #[test]
    fn exhaustive_short_inputs_never_collide() {
        // Every pair of strings of length 0..=2 over an alphabet holding each kind of byte.
        let alphabet = ["a", "2", "e", "-", "_", ".", "é"];
        let mut words = vec![String::new()];
        for a in alphabet {
            words.push(a.to_string());
            for b in alphabet {
                words.push(format!("{a}{b}"));
            }
        }
        let mut seen = HashSet::new();
        for ns in &words {
            for name in &words {
                assert!(seen.insert(prefix(ns, name)), "{ns:?}/{name:?} collides");
            }
        }
    }

    #[test]
    fn output_uses_only_rocketmq_characters() {
        for (ns, name) in [
            ("ns", "ünïcødé name/with spaces%"),
            ("%RETRY%", "rmq_sys_x"),
            ("", ""),
        ] {
            let p = prefix(ns, name);
            assert!(p.bytes().all(is_kept_byte), "{p}");
            assert!(
                !p.contains('%') && !p.to_ascii_lowercase().starts_with("rmq_sys_"),
                "{p}"
            );
        }
    }

    #[test]
    fn long_inputs_are_shortened_but_stay_distinct() {
        let ns = "n".repeat(63);
        let long_a = format!("{}a", "x".repeat(200));
        let long_b = format!("{}b", "x".repeat(200));
        let a = prefix(&ns, &long_a);
        let b = prefix(&ns, &long_b);
        assert_eq!(a.len(), MAX_PREFIX_LEN);
        assert_eq!(b.len(), MAX_PREFIX_LEN);
        assert_ne!(a, b);
        assert!(a.contains(HASH_MARK));
        // Stable: the same input always gives the same name.
        assert_eq!(a, prefix(&ns, &long_a));
        // Exactly at the limit nothing is shortened.
        let fits = prefix("n", &"y".repeat(MAX_PREFIX_LEN - 3));
        assert_eq!(fits.len(), MAX_PREFIX_LEN);
        assert!(!fits.contains(HASH_MARK));
    }

    #[test]
    fn fnv1a64_matches_reference_values() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn cluster_names_follow_the_layout() {
        let n = Names::new(prefix("chat", "prod"));
        assert_eq!(n.node_topic(0), "chat__prod-node-0");
        assert_eq!(n.node_group(7), "chat__prod-node-7");
        assert_eq!(n.events_topic(), "chat__prod-events");
        assert_eq!(n.requests_topic(), "chat__prod-requests");
        assert_eq!(n.responses_topic(), "chat__prod-responses");
        assert_eq!(n.commands_topic(), "chat__prod-commands");
        assert_eq!(n.cluster_events_topic(), "chat__prod-cluster-events");
        assert_eq!(n.api_group(), "chat__prod-api");
        assert_eq!(n.commands_group(), "chat__prod-commands");
        assert_eq!(n.shared_topics().len(), 6);
        assert_eq!(
            n.shared_groups(),
            vec!["chat__prod-api", "chat__prod-commands"]
        );
    }

    #[test]
    fn every_name_of_the_longest_prefix_is_valid() {
        let n = Names::new(prefix(&"n".repeat(63), &"x".repeat(253)));
        let mut all = n.shared_topics();
        all.extend(n.shared_groups());
        all.push(n.node_topic(u32::MAX));
        all.push(n.node_group(u32::MAX));
        for name in all {
            assert!(is_valid_name(&name), "{name}");
            // The retry and dead-letter topics of a group must fit RocketMQ's 127 too.
            assert!(format!("%RETRY%{name}").len() <= 127, "{name}");
        }
        assert!(!is_valid_name(""));
        assert!(!is_valid_name("a.b"));
        assert!(!is_valid_name(&"a".repeat(MAX_NAME_LEN + 1)));
        assert!(is_valid_name("%DLQ%a-commands"));
        assert!(!is_valid_name("%DLQ%"));
        assert!(!is_valid_name("a%DLQ%b"));
    }
}
