//! Provisioning, delivery, retry and dead letters against the real Apache RocketMQ
//! broker of `scripts/deps start` (SB_TEST_ROCKETMQ_NAMESRV).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{bounded, eventually, fresh_names, namesrv, summary};
use switchboard_rocketmq::{Admin, Consumer, ConsumerConfig, Delivery, Error, Producer, Runtime};

const QUEUES: u32 = 4;

async fn timed<T>(samples: &mut Vec<Duration>, call: impl Future<Output = T>) -> T {
    let start = Instant::now();
    let out = call.await;
    samples.push(start.elapsed());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioning_is_idempotent_and_visible() {
    bounded(Duration::from_secs(60), async {
        let rt = Runtime::new().unwrap();
        let admin = Admin::connect(&rt, &namesrv()).await.unwrap();
        let names = fresh_names("admin");
        let topic = names.node_topic(0);
        let group = names.node_group(0);
        let (mut ensure, mut exists, mut delete) = (vec![], vec![], vec![]);

        assert!(
            !timed(&mut exists, admin.topic_exists(&topic))
                .await
                .unwrap()
        );
        assert!(
            !timed(&mut exists, admin.group_exists(&group))
                .await
                .unwrap()
        );
        for _ in 0..3 {
            timed(&mut ensure, admin.ensure_topic(&topic, QUEUES))
                .await
                .unwrap();
            timed(&mut ensure, admin.ensure_group(&group, 3))
                .await
                .unwrap();
            assert!(
                timed(&mut exists, admin.topic_exists(&topic))
                    .await
                    .unwrap()
            );
            assert!(
                timed(&mut exists, admin.group_exists(&group))
                    .await
                    .unwrap()
            );
        }
        assert_eq!(admin.group_retry_max_times(&group).await.unwrap(), Some(3));
        // ensure_group updates an existing group.
        admin.ensure_group(&group, 5).await.unwrap();
        assert_eq!(admin.group_retry_max_times(&group).await.unwrap(), Some(5));

        for _ in 0..2 {
            timed(&mut delete, admin.delete_topic(&topic))
                .await
                .unwrap();
            timed(&mut delete, admin.delete_group(&group))
                .await
                .unwrap();
            assert!(!admin.topic_exists(&topic).await.unwrap());
            assert!(!admin.group_exists(&group).await.unwrap());
        }
        // Never created at all: deleting is fine too.
        admin.delete_topic(&names.events_topic()).await.unwrap();
        admin.delete_group(&names.api_group()).await.unwrap();
        assert_eq!(admin.group_retry_max_times(&group).await.unwrap(), None);

        // A name RocketMQ would refuse never reaches it.
        assert!(admin.ensure_topic("bad.name", 1).await.is_err());

        eprintln!("admin ensure_*: {}", summary(ensure));
        eprintln!("admin *_exists: {}", summary(exists));
        eprintln!("admin delete_*: {}", summary(delete));
        admin.shutdown().await;
        rt.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sent_message_reaches_the_consumer_with_its_key() {
    bounded(Duration::from_secs(90), async {
        let rt = Runtime::new().unwrap();
        let admin = Admin::connect(&rt, &namesrv()).await.unwrap();
        let names = fresh_names("roundtrip");
        let (topic, group) = (names.node_topic(1), names.node_group(1));
        admin.ensure_topic(&topic, QUEUES).await.unwrap();
        admin.ensure_group(&group, 3).await.unwrap();

        let received: Arc<Mutex<HashMap<String, (Delivery, Instant)>>> = Arc::default();
        let sink = Arc::clone(&received);
        let config = ConsumerConfig {
            namesrv: namesrv(),
            topic: topic.clone(),
            group: group.clone(),
            max_reconsume_times: Some(3),
            in_order: false,
            batch: 32,
            credentials: None,
        };
        let consumer = Consumer::start(&rt, config, move |d: Delivery| {
            let sink = Arc::clone(&sink);
            async move {
                let key = d.key.clone().unwrap_or_default();
                sink.lock().unwrap().insert(key, (d, Instant::now()));
                Ok::<(), String>(())
            }
        })
        .await
        .unwrap();
        let producer = Producer::start(&rt, &namesrv(), "roundtrip-producer")
            .await
            .unwrap();

        // The first message may wait for the consumer's first rebalance; it is still
        // delivered, because a new group starts at the oldest message.
        let start = Instant::now();
        producer
            .send(&topic, "first", b"hello".to_vec())
            .await
            .unwrap();
        let first = Arc::clone(&received);
        assert!(
            eventually(Duration::from_secs(30), || first
                .lock()
                .unwrap()
                .contains_key("first"))
            .await,
            "the first message never arrived"
        );
        eprintln!("first message after consumer start: {:?}", start.elapsed());
        let got = received.lock().unwrap().get("first").unwrap().0.clone();
        assert_eq!(got.body, b"hello");
        assert_eq!(got.topic, topic);
        assert_eq!(got.reconsume_times, 0);
        assert!(!got.msg_id.is_empty());

        // Then one at a time, to measure send -> handler latency.
        let (mut send, mut latency) = (vec![], vec![]);
        for i in 0..20 {
            let key = format!("k{i}");
            let sent = Instant::now();
            timed(
                &mut send,
                producer.send(&topic, &key, format!("body {i}").into_bytes()),
            )
            .await
            .unwrap();
            let seen = Arc::clone(&received);
            assert!(
                eventually(Duration::from_secs(10), || seen
                    .lock()
                    .unwrap()
                    .contains_key(&key))
                .await,
                "message {key} never arrived"
            );
            let (d, at) = received.lock().unwrap().get(&key).unwrap().clone();
            assert_eq!(d.body, format!("body {i}").into_bytes());
            latency.push(at.duration_since(sent));
        }
        eprintln!("send (until SEND_OK): {}", summary(send));
        eprintln!("send -> handler: {}", summary(latency));

        // A burst: all arrive, each once per key.
        for i in 0..200 {
            producer
                .send(&topic, &format!("b{i}"), vec![7; 64])
                .await
                .unwrap();
        }
        let burst = Arc::clone(&received);
        assert!(
            eventually(Duration::from_secs(30), || {
                let map = burst.lock().unwrap();
                (0..200).all(|i| map.contains_key(&format!("b{i}")))
            })
            .await,
            "a burst of 200 did not arrive in full"
        );

        // The group's lag from the broker's offsets: nothing once the consumer
        // committed what it handled (every few seconds), then what is sent
        // while no one consumes.
        let mut lag = u64::MAX;
        for _ in 0..60 {
            lag = admin.consumer_lag(&group, &topic).await.unwrap();
            if lag == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert_eq!(lag, 0, "offsets committed");
        consumer.shutdown().await;
        for i in 0..7 {
            producer
                .send(&topic, &format!("late{i}"), vec![7; 8])
                .await
                .unwrap();
        }
        assert_eq!(admin.consumer_lag(&group, &topic).await.unwrap(), 7);
        producer.shutdown().await;
        admin.delete_topic(&topic).await.unwrap();
        admin.delete_group(&group).await.unwrap();
        admin.shutdown().await;
        rt.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_handlers_run_concurrently() {
    bounded(Duration::from_secs(90), async {
        let rt = Runtime::new().unwrap();
        let admin = Admin::connect(&rt, &namesrv()).await.unwrap();
        let names = fresh_names("slow");
        let (topic, group) = (names.requests_topic(), names.api_group());
        admin.ensure_topic(&topic, QUEUES).await.unwrap();
        admin.ensure_group(&group, 3).await.unwrap();
        let producer = Producer::start(&rt, &namesrv(), "slow-producer")
            .await
            .unwrap();
        // Stored before the consumer starts, so they are all there at once.
        let n = 60;
        for i in 0..n {
            producer
                .send(&topic, &format!("s{i}"), vec![0; 16])
                .await
                .unwrap();
        }
        let done: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = Arc::clone(&done);
        let config = ConsumerConfig {
            namesrv: namesrv(),
            topic: topic.clone(),
            group: group.clone(),
            max_reconsume_times: None,
            in_order: false,
            batch: 32,
            credentials: None,
        };
        let start = Instant::now();
        let consumer = Consumer::start(&rt, config, move |d: Delivery| {
            let sink = Arc::clone(&sink);
            async move {
                tokio::time::sleep(Duration::from_millis(500)).await;
                sink.lock().unwrap().push(d.key.unwrap_or_default());
                Ok::<(), String>(())
            }
        })
        .await
        .unwrap();
        let all = Arc::clone(&done);
        assert!(
            eventually(Duration::from_secs(60), || all.lock().unwrap().len() >= n).await,
            "only {} of {n} handled",
            done.lock().unwrap().len()
        );
        let took = start.elapsed();
        // One at a time this takes 30 s, four at a time 7.5 s.
        eprintln!("{n} handlers of 500 ms each took {took:?}");
        assert!(
            took < Duration::from_secs(6),
            "handlers did not overlap: {took:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(done.lock().unwrap().len(), n, "handled more than once");

        consumer.shutdown().await;
        producer.shutdown().await;
        admin.delete_topic(&topic).await.unwrap();
        admin.delete_group(&group).await.unwrap();
        admin.shutdown().await;
        rt.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_handler_is_retried_then_dead_lettered() {
    bounded(Duration::from_secs(120), async {
        let rt = Runtime::new().unwrap();
        let admin = Admin::connect(&rt, &namesrv()).await.unwrap();
        let names = fresh_names("retry");
        let (topic, group) = (names.commands_topic(), names.commands_group());
        let max_retries = 2;
        admin.ensure_topic(&topic, QUEUES).await.unwrap();
        admin.ensure_group(&group, max_retries).await.unwrap();

        // "poison" always fails; "flaky" fails once, then succeeds.
        let attempts: Arc<Mutex<Vec<(String, u32, Instant)>>> = Arc::default();
        let log = Arc::clone(&attempts);
        let config = ConsumerConfig {
            namesrv: namesrv(),
            topic: topic.clone(),
            group: group.clone(),
            max_reconsume_times: None, // the group's
            in_order: false,
            batch: 32,
            credentials: None,
        };
        let consumer = Consumer::start_blocking(&rt, config, move |d: Delivery| {
            let key = d.key.clone().unwrap_or_default();
            log.lock()
                .unwrap()
                .push((key.clone(), d.reconsume_times, Instant::now()));
            match key.as_str() {
                "poison" => Err("always fails"),
                "flaky" if d.reconsume_times == 0 => Err("fails the first time"),
                _ => Ok(()),
            }
        })
        .await
        .unwrap();
        let producer = Producer::start(&rt, &namesrv(), "retry-producer")
            .await
            .unwrap();
        producer
            .send(&topic, "poison", b"p".to_vec())
            .await
            .unwrap();
        producer.send(&topic, "flaky", b"f".to_vec()).await.unwrap();

        let count = |key: &str| {
            attempts
                .lock()
                .unwrap()
                .iter()
                .filter(|(k, _, _)| k == key)
                .count()
        };
        let expected = 1 + max_retries as usize;
        assert!(
            eventually(Duration::from_secs(60), || count("poison") >= expected
                && count("flaky") >= 2)
            .await,
            "not redelivered: {:?}",
            attempts.lock().unwrap()
        );
        // The dead letter shows up in %DLQ%<group>...
        let dlq = format!("%DLQ%{group}");
        let mut in_dlq = 0;
        for _ in 0..100 {
            in_dlq = admin.message_count(&dlq).await.unwrap();
            if in_dlq > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // ... and neither message comes back again.
        tokio::time::sleep(Duration::from_secs(8)).await;
        let log = attempts.lock().unwrap().clone();
        eprintln!(
            "attempts: {:?}",
            log.iter().map(|(k, n, _)| (k, n)).collect::<Vec<_>>()
        );
        let poison: Vec<_> = log.iter().filter(|(k, _, _)| k == "poison").collect();
        let gaps: Vec<_> = poison.windows(2).map(|w| w[1].2 - w[0].2).collect();
        eprintln!("redelivery gaps of the poison message: {gaps:?}; {in_dlq} message(s) in {dlq}");
        assert_eq!(
            poison.len(),
            expected,
            "poison delivered {} times",
            poison.len()
        );
        assert_eq!(
            poison.iter().map(|(_, n, _)| *n).collect::<Vec<_>>(),
            (0..=max_retries).collect::<Vec<_>>()
        );
        assert_eq!(count("flaky"), 2);
        assert_eq!(in_dlq, 1, "the poison message is not in {dlq}");

        consumer.shutdown().await;
        producer.shutdown().await;
        admin.delete_topic(&topic).await.unwrap();
        admin.delete_group(&group).await.unwrap();
        assert!(!admin.topic_exists(&dlq).await.unwrap());
        admin.shutdown().await;
        rt.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_of_a_missing_group_receives_nothing() {
    bounded(Duration::from_secs(60), async {
        let rt = Runtime::new().unwrap();
        let admin = Admin::connect(&rt, &namesrv()).await.unwrap();
        let names = fresh_names("nogroup");
        let (topic, group) = (names.events_topic(), names.api_group());
        admin.ensure_topic(&topic, QUEUES).await.unwrap();
        assert!(!admin.group_exists(&group).await.unwrap());
        let mut config = ConsumerConfig {
            namesrv: namesrv(),
            topic: topic.clone(),
            group: group.clone(),
            max_reconsume_times: None,
            in_order: false,
            batch: 32,
            credentials: None,
        };

        // Reading the group's retry bound at start notices that it is missing...
        let err = Consumer::start_blocking(&rt, config.clone(), |_| Ok::<(), String>(()))
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::MissingGroup(ref g) if *g == group),
            "{err}"
        );

        // ... while RocketMQ itself lets such a consumer start, and it receives nothing.
        config.max_reconsume_times = Some(1);
        let received = Arc::new(Mutex::new(0_usize));
        let sink = Arc::clone(&received);
        let consumer = Consumer::start_blocking(&rt, config, move |_| {
            *sink.lock().unwrap() += 1;
            Ok::<(), String>(())
        })
        .await
        .unwrap();
        let producer = Producer::start(&rt, &namesrv(), "nogroup-producer")
            .await
            .unwrap();
        producer.send(&topic, "k", b"x".to_vec()).await.unwrap();
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(
            *received.lock().unwrap(),
            0,
            "a consumer of a missing group received"
        );
        // Starting it did not create the group either.
        assert!(!admin.group_exists(&group).await.unwrap());

        consumer.shutdown().await;
        producer.shutdown().await;
        admin.delete_topic(&topic).await.unwrap();
        admin.shutdown().await;
        rt.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sending_to_a_missing_topic_fails() {
    bounded(Duration::from_secs(60), async {
        let rt = Runtime::new().unwrap();
        let producer = Producer::start(&rt, &namesrv(), "missing-topic-producer")
            .await
            .unwrap();
        let topic = fresh_names("notopic").events_topic();
        let start = Instant::now();
        let err = producer.send(&topic, "k", b"x".to_vec()).await.unwrap_err();
        eprintln!(
            "send to a missing topic: {err} (after {:?})",
            start.elapsed()
        );
        assert!(matches!(err, Error::Client { .. }), "{err:?}");
        producer.shutdown().await;
        rt.shutdown().await;
    })
    .await;
}
