//! Hostile clients at the wire: frames no library would send, JSON built to
//! hurt a parser, floods, clients that never finish a frame or a request,
//! connection storms. Each gets a stable error code or a clean close; the
//! node stays up and a bystander pair keeps chatting through all of it.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::raw::{BINARY, CONTINUATION, PING, Raw, TEXT};
use support::{Client, Server, http_text};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// Two users who chat before and after each attack: proof that the node
/// still serves everyone else.
struct Bystanders {
    a: Client,
    b: Client,
    n: u32,
}

impl Bystanders {
    async fn new(s: &Server, tag: &str) -> Self {
        Self {
            a: s.connect(&format!("{tag}-a")).await,
            b: s.connect(&format!("{tag}-b")).await,
            n: 0,
        }
    }

    /// One message from a to b, delivered within the harness' wait.
    async fn still_chat(&mut self) {
        self.n += 1;
        let to = self.b.user().to_owned();
        let text = format!("still here {}", self.n);
        self.a.say(&to, &format!("by{}", self.n), &text).await;
        let m = self.b.expect("message").await;
        assert_eq!(m["content"], text.as_str());
    }
}

async fn raw_client(s: &Server, user: &str) -> Raw {
    let (mut r, _) = Raw::upgrade(s.addr, &format!("/ws?userId={user}"), "")
        .await
        .unwrap();
    assert_eq!(r.next_json().await["type"], "welcome");
    r
}

#[tokio::test]
async fn protocol_violations_end_in_a_clean_close() {
    protocol_violations(Server::start().await).await;
}

#[tokio::test]
async fn protocol_violations_end_in_a_clean_close_in_the_cluster_configuration() {
    protocol_violations(Server::cluster(|_| {}).await).await;
}

async fn protocol_violations(s: Server) {
    let mut by = Bystanders::new(&s, "pv").await;
    // (what, first byte, payload, masked): each breaks RFC 6455.
    let cases: [(&str, u8, &[u8], bool); 6] = [
        (
            "invalid UTF-8 in a text frame",
            0x80 | TEXT,
            b"\xff\xfe\xfd",
            true,
        ),
        ("reserved opcode 3", 0x80 | 0x3, b"x", true),
        ("RSV1 without an extension", 0xC0 | TEXT, b"{}", true),
        ("unmasked client frame", 0x80 | TEXT, b"{}", false),
        (
            "continuation with nothing to continue",
            0x80 | CONTINUATION,
            b"x",
            true,
        ),
        ("fragmented ping", PING, b"p", true),
    ];
    for (what, first, payload, masked) in cases {
        let mut c = raw_client(&s, "vandal").await;
        c.frame_with_bits(first, payload, masked).await;
        // A close frame (1002/1007) or the connection dropped: both clean.
        let code = c.ended(Duration::from_secs(5)).await;
        assert!(
            code.is_none() || matches!(code, Some(1002 | 1007 | 1005)),
            "{what}: closed with {code:?}"
        );
        by.still_chat().await;
    }
    // A new text frame in the middle of a fragmented one is a violation too.
    let mut c = raw_client(&s, "vandal").await;
    c.frame(false, TEXT, br#"{"type":"#, true).await;
    c.frame(true, TEXT, br#"{"type":"ping"}"#, true).await;
    c.ended(Duration::from_secs(5)).await;
    // Nothing of the vandal's is left behind.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(s.node.hub.len(), 2, "only the bystanders are connected");
    by.still_chat().await;
}

#[tokio::test]
async fn json_built_to_hurt_a_parser_gets_bad_json() {
    let s = Server::start().await;
    let mut by = Bystanders::new(&s, "js").await;
    let mut c = s.connect("parser-torturer").await;
    let deep_array = "[".repeat(60_000);
    let deep_in_field = format!(
        r#"{{"type":"send","to":"x","content":"y","extra":{}}}"#,
        "[".repeat(30_000) + &"]".repeat(30_000)
    );
    let deep_object = r#"{"a":"#.repeat(10_000) + "1" + &"}".repeat(10_000);
    let many_keys = format!(
        "{{{}\"type\":\"send\",\"to\":\"bob\",\"content\":\"x\"}}",
        (0..5000)
            .map(|i| format!("\"k{i}\":{i},"))
            .collect::<String>()
    );
    for (what, text, code) in [
        ("60,000 nested arrays", deep_array.as_str(), "bad_json"),
        (
            "30,000 nested arrays in a field",
            deep_in_field.as_str(),
            "invalid_field",
        ),
        // No `type` at the top: the parser never descends.
        (
            "10,000 nested objects",
            deep_object.as_str(),
            "missing_field",
        ),
        ("truncated", r#"{"type":"send","to":"bo"#, "bad_json"),
        ("a lone string", r#""send""#, "bad_json"),
        ("null", "null", "bad_json"),
        ("empty", "", "bad_json"),
        ("type of the wrong type", r#"{"type":7}"#, "bad_json"),
        (
            "a NUL in an id",
            "{\"type\":\"send\",\"to\":\"a\\u0000b\",\"content\":\"x\"}",
            "invalid_field",
        ),
        (
            "a lone surrogate",
            r#"{"type":"send","to":"bob","content":"\ud800"}"#,
            "invalid_field",
        ),
        (
            "duplicate keys",
            r#"{"type":"send","type":"ping"}"#,
            "bad_json",
        ),
        (
            "unknown field in send",
            r#"{"type":"send","to":"bob","content":"x","admin":true}"#,
            "invalid_field",
        ),
        (
            "unknown type",
            r#"{"type":"delete_everything"}"#,
            "unknown_type",
        ),
        (
            "5,000 unknown keys in a send",
            many_keys.as_str(),
            "invalid_field",
        ),
    ] {
        c.send_raw(Message::text(text.to_owned())).await;
        let e = c.expect("error").await;
        assert_eq!(e["code"], code, "{what}: {e}");
        assert!(c.drain_until_pong().await.is_empty(), "{what}");
    }
    // Frames other than `send` ignore fields they do not know (newer
    // clients), however many.
    let ping = many_keys.replace(
        r#""type":"send","to":"bob","content":"x""#,
        r#""type":"ping""#,
    );
    c.send_raw(Message::text(ping)).await;
    assert_eq!(c.expect("pong").await["type"], "pong");
    by.still_chat().await;
}

#[tokio::test]
async fn frames_that_never_finish_are_closed() {
    let s = Server::with(|c| {
        c.heartbeat_interval = Duration::from_secs(1);
        c.max_content_bytes = 500;
        c.max_frame_bytes = 1000;
    })
    .await;
    // A first fragment and then silence: the idle timeout (3 heartbeats).
    let mut c = raw_client(&s, "stuck").await;
    let started = Instant::now();
    c.frame(false, TEXT, br#"{"type":"send","to":"#, true).await;
    let code = c.ended(Duration::from_secs(10)).await;
    assert_eq!(code, Some(4000));
    assert!(started.elapsed() >= Duration::from_millis(2500));
    // Fragments that keep coming and never end: the frame limit applies to the
    // whole message, not to each fragment.
    let mut c = raw_client(&s, "endless").await;
    c.frame(false, TEXT, &[b' '; 100], true).await;
    for _ in 0..20 {
        c.frame(false, CONTINUATION, &[b' '; 100], true).await;
    }
    assert_eq!(c.ended(Duration::from_secs(5)).await, Some(1009));
    // Binary fragments: the same.
    let mut c = raw_client(&s, "endless-bin").await;
    c.frame(false, BINARY, &[0; 600], true).await;
    c.frame(false, CONTINUATION, &[0; 600], true).await;
    assert_eq!(c.ended(Duration::from_secs(5)).await, Some(1009));
    // (Bystanders join now: with a 1 s heartbeat, idle ones would be closed.)
    Bystanders::new(&s, "fr").await.still_chat().await;
}

#[tokio::test]
async fn a_ping_flood_from_a_client_that_never_reads_harms_no_one() {
    let s = Server::start().await;
    let mut by = Bystanders::new(&s, "pf").await;
    let mut c = raw_client(&s, "pinger").await;
    // 50,000 pings of 125 bytes (6 MB) without reading one pong.
    let payload = [b'p'; 125];
    let flood = tokio::spawn(async move {
        for _ in 0..50_000 {
            c.frame(true, PING, &payload, true).await;
        }
        c
    });
    for _ in 0..5 {
        by.still_chat().await;
    }
    let mut c = tokio::time::timeout(Duration::from_secs(30), flood)
        .await
        .expect("the flood did not finish: the node stopped reading")
        .unwrap();
    // The flooder is still a client like any other afterwards.
    c.frame(true, TEXT, br#"{"type":"ping"}"#, true).await;
    loop {
        let v = c.next_json().await;
        if v["type"] == "pong" {
            break;
        }
    }
    by.still_chat().await;
}

#[tokio::test]
async fn a_message_flood_is_rate_limited_without_hurting_others() {
    message_flood(
        Server::with(|c| {
            c.rate_limit = 50;
            c.rate_burst = 50;
        })
        .await,
    )
    .await;
}

#[tokio::test]
async fn a_message_flood_in_the_cluster_configuration() {
    message_flood(
        Server::cluster(|c| {
            c.rate_limit = 50;
            c.rate_burst = 50;
        })
        .await,
    )
    .await;
}

async fn message_flood(s: Server) {
    let mut by = Bystanders::new(&s, "mf").await;
    let mut c = raw_client(&s, "spammer").await;
    let started = Instant::now();
    let (mut sent, mut limited) = (0u64, 0u64);
    // 5,000 sends in batches of 100, reading the answers of each batch (a
    // client that does not read at all is closed as a slow consumer).
    for batch in 0..50 {
        for i in 0..100 {
            let f = json!({"type": "send", "client_msg_id": format!("s{batch}-{i}"), "to": "victim", "content": "spam"});
            c.frame(true, TEXT, f.to_string().as_bytes(), true).await;
        }
        let mut answered = 0;
        while answered < 100 {
            let v = c.next_json().await;
            match (v["type"].as_str(), v["code"].as_str()) {
                (Some("sent"), _) => sent += 1,
                (Some("error"), Some("rate_limited")) => limited += 1,
                (Some("presence"), _) => continue,
                other => panic!("unexpected answer {other:?}: {v}"),
            }
            answered += 1;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    by.still_chat().await;
    // At most the burst plus the refill got through...
    let allowed = 50.0 + 50.0 * secs + 5.0;
    assert_eq!(sent + limited, 5_000);
    assert!(
        sent >= 50 && (sent as f64) <= allowed,
        "{sent} accepted in {secs:.1} s (allowed {allowed:.0})"
    );
    // ...and every accepted one waits for the victim, no more, no less.
    let mut victim = s.connect("victim").await;
    for _ in 0..sent {
        assert_eq!(victim.expect("message").await["content"], "spam");
    }
    assert!(victim.drain_until_pong().await.is_empty());
}

#[tokio::test]
async fn slow_upgrades_are_cut_off_by_the_header_timeout() {
    let s = Server::with(|c| c.http_header_timeout = Duration::from_secs(1)).await;
    let mut by = Bystanders::new(&s, "sl").await;
    // 300 clients that send half a request line and then a byte now and then.
    let mut slow = Vec::new();
    for _ in 0..300 {
        let mut t = TcpStream::connect(s.addr).await.unwrap();
        t.write_all(b"GET /ws?userId=loris HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        slow.push(t);
    }
    let started = Instant::now();
    // Real clients are served meanwhile.
    by.still_chat().await;
    let fresh = s.connect("fresh").await;
    drop(fresh);
    // Trickle one header byte every 300 ms: every one of them is cut off.
    let mut open = slow.len();
    while open > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{open} slow clients still connected after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        open = 0;
        for t in &mut slow {
            if t.write_all(b"X").await.is_ok() && t.flush().await.is_ok() {
                let mut probe = [0u8; 1];
                match tokio::time::timeout(Duration::from_millis(1), t.peek(&mut probe)).await {
                    // Nothing to read yet, no EOF: still open.
                    Err(_) => open += 1,
                    Ok(Ok(0)) | Ok(Err(_)) => {}
                    // A 408 or similar answer: the server is closing it.
                    Ok(Ok(_)) => {}
                }
            }
        }
    }
    by.still_chat().await;
}

// Two threads: the server is not starved by its own 3,000 clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_storm_leaves_no_slot_or_task_behind() {
    storm(Server::with(|c| c.max_connections = 64).await).await;
}

// Two threads: the server is not starved by its own 3,000 clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_storm_in_the_cluster_configuration() {
    storm(Server::cluster(|c| c.max_connections = 64).await).await;
}

async fn storm(s: Server) {
    let addr = s.addr;
    let started = Instant::now();
    // 3,000 attempts at once: valid upgrades that leave at once, upgrades
    // over the limit (503 server_full), bad users (401) and bare TCP resets.
    let mut tasks = Vec::new();
    for i in 0..3_000u32 {
        tasks.push(tokio::spawn(async move {
            match i % 4 {
                0 | 1 => match Raw::upgrade(addr, &format!("/ws?userId=storm{i}"), "").await {
                    Ok(_) => 101,
                    Err((status, body)) => {
                        assert!(body.contains("server_full"), "{status}: {body}");
                        status
                    }
                },
                2 => Raw::upgrade(addr, "/ws?userId=b%40d%3Aid", "")
                    .await
                    .map_or_else(|(st, _)| st, |_| 101),
                _ => {
                    drop(TcpStream::connect(addr).await.unwrap());
                    0
                }
            }
        }));
    }
    let mut seen = std::collections::BTreeMap::new();
    for t in tasks {
        *seen.entry(t.await.unwrap()).or_insert(0) += 1;
    }
    eprintln!("3,000 attempts in {:?}: {seen:?}", started.elapsed());
    assert_eq!(seen.get(&401), Some(&750), "{seen:?}");
    assert!(seen.get(&101).copied().unwrap_or(0) > 0, "{seen:?}");
    // Every slot comes back: 64 clients fit again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !s.node.hub.is_empty() || s.node.admitted() > 0 {
        assert!(
            Instant::now() < deadline,
            "{} connections linger, {} slots taken",
            s.node.hub.len(),
            s.node.admitted()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut held = Vec::new();
    for i in 0..64 {
        held.push(s.connect(&format!("after{i}")).await);
    }
    let (st, body) = Client::refusal(addr, "/ws?userId=one-too-many").await;
    assert_eq!((st, body["code"].as_str()), (503, Some("server_full")));
    let (st, _) = http_text(addr, "GET", "/healthz", None, None).await;
    assert_eq!(st, 200);
}

#[tokio::test]
async fn many_devices_of_one_user_all_get_the_message_and_leave_cleanly() {
    many_devices(Server::start().await).await;
}

#[tokio::test]
async fn many_devices_of_one_user_in_the_cluster_configuration() {
    many_devices(Server::cluster(|_| {}).await).await;
}

async fn many_devices(s: Server) {
    let mut devices = Vec::new();
    for _ in 0..300 {
        devices.push(s.connect("octopus").await);
    }
    let (_, p) = s.http("GET", "/api/v1/presence/octopus", None, None).await;
    assert_eq!(p["devices"], 300);
    let mut sender = s.connect("friend").await;
    sender.say("octopus", "o1", "to every arm").await;
    for d in &mut devices {
        assert_eq!(d.expect("message").await["content"], "to every arm");
    }
    for d in devices {
        d.close().await;
    }
    let (_, p) = s.http("GET", "/api/v1/presence/octopus", None, None).await;
    assert_eq!(
        (p["online"].as_bool(), p["devices"].as_u64()),
        (Some(false), Some(0))
    );
    // The message waits in the inbox until one device acks it.
    let mut back = s.connect("octopus").await;
    assert_eq!(back.expect("message").await["content"], "to every arm");
}
