//! One message, one trace: two release nodes on real Redis and RocketMQ
//! export their spans over OTLP/HTTP to a real Jaeger; a message sent on pod 0
//! to a user on pod 1 (and to the sender's other device, on pod 0) is one
//! trace there, read back through Jaeger's query API, with its spans on both
//! pods linked parent to child: `chat.send` -> `store.append`,
//! `chat.send` -> `bus.publish` -> (RocketMQ) -> `bus.consume` -> `ws.write`
//! on pod 1, and `chat.send` -> `ws.write` on pod 0. A backend's command that
//! carries a `traceparent` property continues the backend's trace on the
//! node that applies it and on the pod that writes its notice.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use serde_json::json;
use switchboard_client::CommandPublisher;
use switchboard_e2e::jaeger::{Jaeger, Span, spans};
use switchboard_e2e::{Cluster, wait_consumers};

/// The one span of `trace` named `operation` on `pod`.
fn one<'a>(spans: &'a [Span], operation: &str, pod: &str) -> &'a Span {
    let found: Vec<&Span> = spans
        .iter()
        .filter(|s| s.operation == operation && s.instance == pod)
        .collect();
    assert_eq!(found.len(), 1, "{operation} on {pod} in {spans:#?}");
    found[0]
}

fn has(spans: &[Span], operation: &str, pod: &str) -> bool {
    spans
        .iter()
        .any(|s| s.operation == operation && s.instance == pod)
}

/// A Jaeger and two nodes sending it their traces, `ratio` of the messages.
async fn traced_cluster(name: &str, ratio: &str) -> (Jaeger, Cluster) {
    let jaeger = Jaeger::start().await;
    let mut c = Cluster::new(name, "2s");
    c.set_env("SB_OTLP_ENDPOINT", &jaeger.endpoint());
    c.set_env("SB_TRACE_SAMPLE_RATIO", ratio);
    // Export every 200 ms instead of every 5 s.
    c.set_env("OTEL_BSP_SCHEDULE_DELAY", "200");
    c.launch(2).await;
    (jaeger, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_sent_on_one_pod_and_written_on_another_is_one_trace() {
    let (jaeger, c) = traced_cluster("tracing", "1").await;
    let mut ana = c.pod(0).connect("ana").await;
    let mut ana_phone = c.pod(0).connect("ana").await;
    let mut ben = c.pod(1).connect("ben").await;
    let sent = ana.say("ben", "traced-1", "hello across pods").await;
    let msg_id = sent["msg_id"].as_str().expect("msg_id").to_owned();
    assert_eq!(ben.expect("message").await["msg_id"], msg_id.as_str());
    assert_eq!(ana_phone.expect("message").await["msg_id"], msg_id.as_str());

    let trace = jaeger
        .wait_trace(
            "switchboard-node",
            &json!({ "messaging.message.id": msg_id }),
            Duration::from_secs(30),
            // Spans end, and are exported, in no set order: wait for all.
            |t| {
                let s = spans(t);
                [
                    ("chat.send", "sb-0"),
                    ("store.append", "sb-0"),
                    ("bus.publish", "sb-0"),
                    ("bus.consume", "sb-1"),
                    ("ws.write", "sb-1"),
                    ("ws.write", "sb-0"),
                ]
                .iter()
                .all(|(op, pod)| has(&s, op, pod))
            },
        )
        .await
        .unwrap_or_else(|last| panic!("no complete trace of {msg_id}; last seen: {last:#?}"));
    let s = spans(&trace);
    let send = one(&s, "chat.send", "sb-0");
    assert_eq!(send.parent, None, "chat.send starts the trace");
    assert_eq!(send.tag("span.kind"), Some("server"));
    assert_eq!(send.tag("chat.recipients"), Some("1"));
    let store = one(&s, "store.append", "sb-0");
    assert_eq!(store.parent.as_ref(), Some(&send.id));
    let publish = one(&s, "bus.publish", "sb-0");
    assert_eq!(publish.parent.as_ref(), Some(&send.id));
    assert_eq!(publish.tag("span.kind"), Some("producer"));
    let topic = format!("{}-node-1", c.prefix);
    assert_eq!(
        publish.tag("messaging.destination.name"),
        Some(topic.as_str())
    );
    let consume = one(&s, "bus.consume", "sb-1");
    assert_eq!(
        consume.parent.as_ref(),
        Some(&publish.id),
        "the context crossed RocketMQ"
    );
    assert_eq!(consume.tag("span.kind"), Some("consumer"));
    let written = one(&s, "ws.write", "sb-1");
    assert_eq!(written.parent.as_ref(), Some(&consume.id));
    assert_eq!(written.tag("chat.frame"), Some("message"));
    let local = one(&s, "ws.write", "sb-0");
    assert_eq!(local.parent.as_ref(), Some(&send.id));
    // Nothing else: the sender's own connection gets `sent`, not a write of
    // the message.
    assert_eq!(s.len(), 6, "{s:#?}");
}

/// A backend's trace: the id of its trace and of its span that sent the command.
fn backend_context() -> (String, String) {
    let trace = format!("{:032x}", rand::random::<u128>() | 1);
    let span = format!("{:016x}", rand::random::<u64>() | 1);
    (trace, span)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backends_command_continues_the_backends_trace() {
    // Nothing the nodes start is traced: only the backend's decision counts.
    let (jaeger, c) = traced_cluster("tracing-cmd", "0").await;
    wait_consumers(&c, "commands").await;
    let mut dan = c.pod(0).connect("dan").await;
    let mut eve = c.pod(1).connect("eve").await;
    let backend = CommandPublisher::start(
        c.namesrv(),
        &c.prefix,
        &format!("{}-trace-commands", c.prefix),
        None,
    )
    .await
    .unwrap();
    let (trace_id, backend_span) = backend_context();
    let notice = |user: &str| json!({"user_id": user, "content": "maintenance at noon"});
    for user in ["dan", "eve"] {
        backend
            .publish_raw(
                "notice",
                notice(user).to_string().into_bytes(),
                user,
                Some(&format!("notice-{user}-{trace_id}")),
                vec![(
                    "traceparent".into(),
                    format!("00-{trace_id}-{backend_span}-01"),
                )],
            )
            .await
            .unwrap();
    }
    // Not traced by the backend: with a ratio of 0, no trace at all.
    backend
        .publish_raw(
            "notice",
            notice("dan").to_string().into_bytes(),
            "dan",
            Some(&format!("notice-untraced-{trace_id}")),
            Vec::new(),
        )
        .await
        .unwrap();
    for _ in 0..2 {
        assert_eq!(dan.expect("message").await["from"], "system");
    }
    assert_eq!(eve.expect("message").await["from"], "system");

    let trace = jaeger
        .wait_trace(
            "switchboard-node",
            &json!({ "messaging.destination.name": format!("{}-commands", c.prefix) }),
            Duration::from_secs(30),
            |t| {
                let s = spans(t);
                let count = |op: &str| s.iter().filter(|s| s.operation == op).count();
                t["traceID"] == trace_id.as_str()
                    && count("ws.write") == 2
                    && count("command.apply") == 2
            },
        )
        .await
        .unwrap_or_else(|last| panic!("no complete trace {trace_id}; last seen: {last:#?}"));
    let s = spans(&trace);
    let applied: Vec<&Span> = s
        .iter()
        .filter(|s| s.operation == "command.apply")
        .collect();
    assert_eq!(applied.len(), 2, "{s:#?}");
    for a in &applied {
        assert_eq!(a.parent.as_deref(), Some(backend_span.as_str()), "{a:?}");
        assert_eq!(a.tag("span.kind"), Some("consumer"));
    }
    // Each notice written to its user's connection, on that user's pod,
    // under the command that sent it (through the bus when the command was
    // applied on the other pod).
    for (pod, user_pod) in [("sb-0", "dan"), ("sb-1", "eve")] {
        let write = s
            .iter()
            .find(|w| w.operation == "ws.write" && w.instance == pod)
            .unwrap_or_else(|| panic!("no write to {user_pod} on {pod}: {s:#?}"));
        let mut up = write.parent.clone();
        let mut chain = Vec::new();
        while let Some(id) = up {
            let parent = s.iter().find(|p| p.id == id);
            chain.push(parent.map_or("backend", |p| p.operation.as_str()));
            up = parent.and_then(|p| p.parent.clone());
        }
        assert!(chain.contains(&"command.apply"), "{chain:?}");
        assert_eq!(chain.last(), Some(&"backend"), "{chain:?}");
    }
    // Every traced span is in the backend's trace: the untraced notice
    // (ratio 0), written a while ago, left none (spans go out every 200 ms).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let all = jaeger.traces("switchboard-node", &json!({})).await;
    assert_eq!(all.len(), 1, "{all:#?}");
    backend.shutdown().await;
}
