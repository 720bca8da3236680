//! A broker restart during traffic (`scripts/deps restart-broker`): the producer and
//! consumer recover by themselves and every message the broker confirmed is delivered.
//!
//! A test binary of its own: cargo runs test binaries one after another, so restarting
//! the shared broker cannot disturb the other tests.
//!
//! Measured with Apache RocketMQ 5.5.0 and rocketmq-client-rust 1.0.0: the client's own
//! producer kept failing for about 30 s from its first failed send, whether the broker
//! was back sooner or not (a producer started after the restart sent at once), so
//! [`Producer`] rebuilds its client after a failed send; with that, the first send
//! after the restart script returned was confirmed within 5 ms. The consumer delivers
//! again 15-30 s after the broker is back. The bounds below leave room for that.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{bounded, eventually, fresh_names, namesrv};
use switchboard_rocketmq::{Admin, Consumer, ConsumerConfig, Delivery, Producer, Runtime};

/// One send of the traffic: sequence number (also the key), when, and the outcome.
type Sent = (u32, Instant, Result<(), String>);

/// Time between two sends of the traffic.
const SEND_EVERY: Duration = Duration::from_millis(100);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_and_consumer_recover_from_a_broker_restart() {
    let deps_dir = std::env::var("SB_DEPS_DIR")
        .unwrap_or_else(|_| panic!("SB_DEPS_DIR is not set: run: eval \"$(scripts/deps start)\""));
    let namesrv = namesrv();
    bounded(Duration::from_secs(240), async {
        let rt = Runtime::new().unwrap();
        let admin = Admin::connect(&rt, &namesrv).await.unwrap();
        let names = fresh_names("restart");
        let (topic, group) = (names.node_topic(3), names.node_group(3));
        admin.ensure_topic(&topic, 4).await.unwrap();
        admin.ensure_group(&group, 3).await.unwrap();

        let received: Arc<Mutex<HashMap<u32, Instant>>> = Arc::default();
        let sink = Arc::clone(&received);
        let config = ConsumerConfig {
            namesrv: namesrv.clone(),
            topic: topic.clone(),
            group: group.clone(),
            max_reconsume_times: None,
            in_order: false,
            batch: 32,
            credentials: None,
        };
        let consumer = Consumer::start(&rt, config, move |d: Delivery| {
            let sink = Arc::clone(&sink);
            async move {
                let seq = d.key.and_then(|k| k.parse().ok()).unwrap_or(u32::MAX);
                sink.lock().unwrap().entry(seq).or_insert_with(Instant::now);
                Ok::<(), String>(())
            }
        })
        .await
        .unwrap();
        let producer = Arc::new(
            Producer::start(&rt, &namesrv, "restart-producer")
                .await
                .unwrap(),
        );

        // Traffic: one message every 100 ms; each send's outcome and time is kept.
        let sent: Arc<Mutex<Vec<Sent>>> = Arc::default();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let traffic = {
            let (producer, sent, stop, topic) = (
                Arc::clone(&producer),
                Arc::clone(&sent),
                Arc::clone(&stop),
                topic.clone(),
            );
            tokio::spawn(async move {
                let mut seq = 0_u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let at = Instant::now();
                    let result = producer
                        .send(&topic, &seq.to_string(), seq.to_be_bytes().to_vec())
                        .await
                        .map_err(|e| e.to_string());
                    sent.lock().unwrap().push((seq, at, result));
                    seq += 1;
                    tokio::time::sleep(SEND_EVERY).await;
                }
            })
        };
        tokio::time::sleep(Duration::from_secs(3)).await;

        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/deps");
        let restart_began = Instant::now();
        let status = tokio::process::Command::new(&script)
            .arg("restart-broker")
            .env("SB_DEPS_DIR", &deps_dir)
            .status()
            .await
            .unwrap();
        assert!(status.success(), "scripts/deps restart-broker failed");
        let restarted = Instant::now();
        eprintln!("restart-broker took {:?}", restarted - restart_began);

        // Wait until sends succeed again and what was sent after the restart arrives.
        let recovered_send = {
            let sent = Arc::clone(&sent);
            eventually(Duration::from_secs(90), move || {
                sent.lock()
                    .unwrap()
                    .iter()
                    .any(|(_, at, r)| *at > restarted && r.is_ok())
            })
            .await
        };
        assert!(recovered_send, "the producer did not recover within 90 s");
        let recovered_receive = {
            let (sent, received) = (Arc::clone(&sent), Arc::clone(&received));
            eventually(Duration::from_secs(90), move || {
                let sent = sent.lock().unwrap();
                let received = received.lock().unwrap();
                sent.iter()
                    .any(|(seq, at, r)| *at > restarted && r.is_ok() && received.contains_key(seq))
            })
            .await
        };
        assert!(
            recovered_receive,
            "the consumer did not recover within 90 s"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        traffic.await.unwrap();

        // Every message the broker confirmed is delivered (at least once).
        let confirmed: Vec<u32> = sent
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, _, r)| r.is_ok())
            .map(|(seq, _, _)| *seq)
            .collect();
        let all_arrived = {
            let received = Arc::clone(&received);
            let confirmed = confirmed.clone();
            eventually(Duration::from_secs(60), move || {
                let received = received.lock().unwrap();
                confirmed.iter().all(|seq| received.contains_key(seq))
            })
            .await
        };

        let sent = sent.lock().unwrap().clone();
        let received = received.lock().unwrap().clone();
        let failed: Vec<_> = sent.iter().filter(|(_, _, r)| r.is_err()).collect();
        let first_ok_after = sent
            .iter()
            .find(|(_, at, r)| *at > restarted && r.is_ok())
            .map(|(_, at, _)| *at - restarted);
        let first_received_after = sent
            .iter()
            .filter(|(seq, at, r)| *at > restarted && r.is_ok() && received.contains_key(seq))
            .map(|(seq, _, _)| received[seq] - restarted)
            .min();
        let outage: Option<Duration> = failed
            .first()
            .zip(failed.last())
            .map(|(first, last)| last.1 - first.1);
        eprintln!(
            "sent {} messages, {} failed (failures spanning {outage:?}); first error: {:?}",
            sent.len(),
            failed.len(),
            failed.first().map(|f| &f.2)
        );
        eprintln!(
            "after the restart script returned: first confirmed send {first_ok_after:?}, \
             first delivery {first_received_after:?}"
        );
        let missing: Vec<_> = confirmed
            .iter()
            .filter(|s| !received.contains_key(s))
            .collect();
        assert!(all_arrived, "confirmed but never delivered: {missing:?}");

        consumer.shutdown().await;
        Arc::try_unwrap(producer).unwrap().shutdown().await;
        admin.delete_topic(&topic).await.unwrap();
        admin.delete_group(&group).await.unwrap();
        admin.shutdown().await;
        rt.shutdown().await;
    })
    .await;
}
