//! Structure-aware fuzzing of every parser a client or a broker message can
//! reach: client frames (protocol v1 and the seed dialect, one parser) and
//! bus envelopes (what the RocketMQ consumer deserializes).
//!
//! No coverage-guided fuzzer runs on stable Rust here (cargo-fuzz and
//! cargo-afl need nightly), so inputs are generated: valid frames of every
//! type, mutated at the JSON level (values swapped for values of other
//! types, huge, negative, deeply nested, odd Unicode; keys dropped, added,
//! renamed) and at the text level (bytes flipped, inserted, cut). Properties:
//! no panic; the same input always gets the same verdict; a refusal carries a
//! reason; an accepted envelope survives a serialize/parse round trip.
//!
//! CI runs 20,000 inputs per target. The long run:
//! `SB_FUZZ_INPUTS=1000000 cargo test -p switchboard-node --test fuzz_parsers -- --nocapture`
//! (a debug build on purpose: overflow checks and debug assertions stay on)
//! (figures in docs/testing.md). `SB_FUZZ_SEED` replays a run.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value, json};
use switchboard_node::backend::Envelope;
use switchboard_node::ids::UserId;
use switchboard_node::protocol::{self, ParseLimits};

fn inputs() -> usize {
    std::env::var("SB_FUZZ_INPUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

fn rng() -> (StdRng, u64) {
    let seed = std::env::var("SB_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| switchboard_node::ids::now_millis() as u64);
    (StdRng::seed_from_u64(seed), seed)
}

/// Valid client frames of every type, both dialects.
fn client_seeds() -> Vec<Value> {
    vec![
        json!({"type": "send", "client_msg_id": "c1", "to": "bob", "content": "hi"}),
        json!({"type": "send", "client_msg_id": "c2", "group": "g1", "content": "hi all"}),
        json!({"type": "send", "client_msg_id": "c3", "to": "bob", "content": "a.png", "format": "image"}),
        json!({"type": "recall", "conversation": "dm:alice:bob", "msg_id": "1234567890"}),
        json!({"type": "ack", "msg_ids": ["1234567890"]}),
        json!({"type": "read", "conversation": "dm:alice:bob", "seq": 3}),
        json!({"type": "read", "conversation": "group:g1", "msg_id": "1234567890"}),
        json!({"type": "typing", "conversation": "dm:alice:bob", "state": "start"}),
        json!({"type": "ping"}),
        json!({"type": "history", "conversation": "dm:alice:bob", "before": 10, "limit": 20}),
        json!({"type": "history", "conversation": "group:g1", "after": 2}),
        json!({"type": "resume", "conversations": [["dm:alice:bob", 4], ["group:g1", 0]]}),
        json!({"type": "presence_subscribe", "users": ["bob", "carol"]}),
        json!({"type": "CHAT_MESSAGE", "receiverId": "bob", "content": "hi", "chatId": "x", "senderId": "eve"}),
        json!({"type": "HEARTBEAT"}),
        json!({"type": "READ_RECEIPT", "receiverId": "bob", "messageId": "1234567890"}),
        json!({"type": "TYPING", "receiverId": "bob", "typing": true}),
    ]
}

/// Valid bus envelopes: every server frame kind that travels between pods.
fn envelope_seeds() -> Vec<Value> {
    let msg = json!({"msg_id": "1234567890", "conversation": "dm:alice:bob", "seq": 7,
        "from": "alice", "to": "bob", "content": "hi", "ts": 1_700_000_000_000_i64, "client_msg_id": "c1"});
    let to_users = |frame: Value| json!({"ToUsers": {"users": ["bob"], "except": "sb-0#12", "frame": frame, "sent_at_us": 1_700_000_000_000_000_i64}});
    let mut message = msg;
    message["type"] = json!("message");
    let seeds = vec![
        to_users(message),
        to_users(
            json!({"type": "delivered", "msg_id": "1234567890", "conversation": "dm:alice:bob", "seq": 7, "user": "bob"}),
        ),
        to_users(json!({"type": "read", "conversation": "group:g1", "seq": 7, "user": "bob"})),
        to_users(
            json!({"type": "typing", "conversation": "dm:alice:bob", "user": "alice", "state": "stop"}),
        ),
        to_users(
            json!({"type": "recalled", "conversation": "dm:alice:bob", "msg_id": "1234567890", "seq": 7, "by": "alice"}),
        ),
        json!({"Presence": {"user": "bob", "online": true, "devices": 2, "pods": ["sb-1"], "last_seen": 1_700_000_000_000_i64}}),
    ];
    for s in &seeds {
        let parsed = serde_json::from_value::<Envelope>(s.clone());
        assert!(parsed.is_ok(), "seed {s} does not parse: {parsed:?}");
    }
    seeds
}

/// A value of a random kind, to put where another was.
fn any_value(r: &mut StdRng, depth: u32) -> Value {
    match r.random_range(0..14) {
        0 => Value::Null,
        1 => json!(r.random::<bool>()),
        2 => json!(r.random::<i64>()),
        3 => json!(u64::MAX),
        4 => json!(-1),
        5 => json!(r.random::<f64>() * 1e300),
        6 => json!(odd_string(r)),
        7 => json!("x".repeat(r.random_range(0..20_000))),
        8 if depth < 4 => Value::Array(
            (0..r.random_range(0..5))
                .map(|_| any_value(r, depth + 1))
                .collect(),
        ),
        9 if depth < 4 => {
            let mut m = Map::new();
            for _ in 0..r.random_range(0..4) {
                m.insert(odd_string(r), any_value(r, depth + 1));
            }
            Value::Object(m)
        }
        10 => {
            // Deep nesting, built as text so it can exceed serde_json's own
            // recursion limit when parsed back.
            let n = r.random_range(100..3000);
            serde_json::from_str(&format!(
                "{}{}",
                "[".repeat(n.min(120)),
                "]".repeat(n.min(120))
            ))
            .unwrap()
        }
        11 => json!(
            [
                "dm:a:b", "group:g", "dm:b:a", "dm:a:a", "group:", "dm:", ":"
            ][r.random_range(0..7)]
        ),
        12 => json!(
            ["1234567890", "0", "-5", "18446744073709551616", "abc", ""][r.random_range(0..6)]
        ),
        _ => json!(""),
    }
}

fn odd_string(r: &mut StdRng) -> String {
    const PIECES: [&str; 16] = [
        "a", "bob", "g1", ":", "@", "\u{0}", "\u{202e}", "é", "€", "🦀", "\u{fffd}", "\"", "\\",
        "dm:", "group:", " ",
    ];
    (0..r.random_range(0..12))
        .map(|_| PIECES[r.random_range(0..PIECES.len())])
        .collect()
}

/// One JSON-level mutation of `v` (an object).
fn mutate_value(r: &mut StdRng, v: &mut Value) {
    let Value::Object(m) = v else { return };
    let keys: Vec<String> = m.keys().cloned().collect();
    match r.random_range(0..6) {
        0 | 1 if !keys.is_empty() => {
            let k = &keys[r.random_range(0..keys.len())];
            m.insert(k.clone(), any_value(r, 0));
        }
        2 if !keys.is_empty() => {
            let k = &keys[r.random_range(0..keys.len())];
            m.remove(k);
        }
        3 => {
            m.insert(odd_string(r), any_value(r, 0));
        }
        4 => {
            let types = [
                "send",
                "ack",
                "read",
                "typing",
                "ping",
                "history",
                "resume",
                "presence_subscribe",
                "CHAT_MESSAGE",
                "HEARTBEAT",
                "READ_RECEIPT",
                "TYPING",
                "SEND",
                "",
                "ToUsers",
            ];
            m.insert("type".into(), json!(types[r.random_range(0..types.len())]));
        }
        _ => {
            // Recurse into a nested object, if there is one.
            if let Some(k) = keys.iter().find(|k| m[k.as_str()].is_object()) {
                let mut inner = m[k.as_str()].take();
                mutate_value(r, &mut inner);
                m.insert(k.clone(), inner);
            }
        }
    }
}

/// One text-level mutation (the result may be invalid UTF-8).
fn mutate_bytes(r: &mut StdRng, b: &mut Vec<u8>) {
    if b.is_empty() {
        b.push(r.random());
        return;
    }
    let i = r.random_range(0..b.len());
    match r.random_range(0..5) {
        0 => b[i] ^= 1 << r.random_range(0..8),
        1 => b.insert(i, r.random()),
        2 => {
            b.remove(i);
        }
        3 => b.truncate(i),
        _ => {
            let chunk: Vec<u8> = b[i..].iter().take(16).copied().collect();
            b.splice(i..i, chunk);
        }
    }
}

/// Generates the next input from the seeds.
fn input(r: &mut StdRng, seeds: &[Value]) -> Vec<u8> {
    let mut v = seeds[r.random_range(0..seeds.len())].clone();
    for _ in 0..r.random_range(0..4) {
        mutate_value(r, &mut v);
    }
    let mut b = serde_json::to_vec(&v).unwrap();
    if r.random_bool(0.3) {
        for _ in 0..r.random_range(1..4) {
            mutate_bytes(r, &mut b);
        }
    }
    b
}

fn report(target: &str, n: usize, seed: u64, started: Instant, outcomes: &BTreeMap<String, usize>) {
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "fuzz {target}: {n} inputs in {secs:.1} s ({:.0}/s), seed {seed}, outcomes {outcomes:?}",
        n as f64 / secs
    );
}

#[test]
fn client_frames_never_panic_and_answer_consistently() {
    let (mut r, seed) = rng();
    let seeds = client_seeds();
    let me = UserId::parse("alice").unwrap();
    let limits = ParseLimits {
        max_content_bytes: 4096,
    };
    let n = inputs();
    let started = Instant::now();
    let mut outcomes = BTreeMap::new();
    for _ in 0..n {
        let bytes = input(&mut r, &seeds);
        // The node only parses text frames, which tungstenite has checked to
        // be UTF-8; other bytes end the connection before the parser.
        let Ok(text) = std::str::from_utf8(&bytes) else {
            *outcomes.entry("not_utf8".to_owned()).or_insert(0) += 1;
            continue;
        };
        let first = protocol::parse(text, &me, limits);
        let again = protocol::parse(text, &me, limits);
        assert_eq!(
            format!("{first:?}"),
            format!("{again:?}"),
            "seed {seed}: {text}"
        );
        let key = match &first {
            Ok(f) => {
                if let protocol::ClientFrame::Send(s) = f {
                    assert!(s.content.len() <= 4096, "seed {seed}: {text}");
                }
                format!("ok:{}", f.kind())
            }
            Err(e) => {
                assert!(!e.reason.is_empty(), "seed {seed}: {text}");
                e.code.as_str().to_owned()
            }
        };
        *outcomes.entry(key).or_insert(0) += 1;
    }
    report("client frames", n, seed, started, &outcomes);
    // The generator reaches both sides: accepted frames and refusals.
    assert!(
        outcomes.keys().any(|k| k.starts_with("ok:")),
        "{outcomes:?}"
    );
    assert!(outcomes.contains_key("bad_json") && outcomes.contains_key("invalid_field"));
}

#[test]
fn bus_envelopes_never_panic_and_round_trip() {
    let (mut r, seed) = rng();
    let seeds = envelope_seeds();
    let n = inputs();
    let started = Instant::now();
    let mut outcomes = BTreeMap::new();
    for _ in 0..n {
        let bytes = input(&mut r, &seeds);
        let key = match serde_json::from_slice::<Envelope>(&bytes) {
            Ok(env) => {
                let back = serde_json::to_vec(&env).unwrap();
                let again: Envelope = serde_json::from_slice(&back)
                    .unwrap_or_else(|e| panic!("seed {seed}: {env:?} does not parse back: {e}"));
                assert_eq!(again, env, "seed {seed}");
                "ok"
            }
            Err(_) => "refused",
        };
        *outcomes.entry(key.to_owned()).or_insert(0) += 1;
    }
    report("bus envelopes", n, seed, started, &outcomes);
    assert!(
        outcomes.contains_key("ok") && outcomes.contains_key("refused"),
        "{outcomes:?}"
    );
}
