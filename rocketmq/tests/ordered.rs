//! Lanes keep their order end to end: what `Producer::send_ordered` sends to one
//! lane, an in-order `Consumer` hands over in that order, on the real broker of
//! `scripts/deps start` (SB_TEST_ROCKETMQ_NAMESRV); so do `Producer::send_batch`es.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{bounded, eventually, fresh_names, namesrv};
use switchboard_rocketmq::{Admin, Consumer, ConsumerConfig, Delivery, Producer, Record, Runtime};

const QUEUES: u32 = 4;
/// More lanes than queues: lanes 0 and 4 share queue 0, and still keep their order.
const LANES: u32 = 8;
const PER_LANE: u32 = 250;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_order_consumer_hands_over_each_lane_in_send_order() {
    bounded(Duration::from_secs(120), async {
        let rt = Runtime::new().unwrap();
        let admin = Admin::connect(&rt, &namesrv()).await.unwrap();
        let names = fresh_names("ordered");
        let (topic, group) = (names.node_topic(0), names.node_group(0));
        admin.ensure_topic(&topic, QUEUES).await.unwrap();
        admin.ensure_group(&group, 3).await.unwrap();

        // (lane, n) in the order the handler saw them.
        let seen: Arc<Mutex<Vec<(u32, u32)>>> = Arc::default();
        let log = Arc::clone(&seen);
        let config = ConsumerConfig {
            namesrv: namesrv(),
            topic: topic.clone(),
            group: group.clone(),
            max_reconsume_times: None,
            in_order: true,
            batch: 32,
            credentials: None,
        };
        let consumer = Consumer::start_blocking(&rt, config, move |d: Delivery| {
            let text = String::from_utf8(d.body).map_err(|e| e.to_string())?;
            let (lane, n) = text.split_once(':').ok_or("no ':'")?;
            let parsed = (
                lane.parse::<u32>().map_err(|e| e.to_string())?,
                n.parse::<u32>().map_err(|e| e.to_string())?,
            );
            log.lock().unwrap().push(parsed);
            Ok::<(), String>(())
        })
        .await
        .unwrap();
        // The only consumer of its group holds every queue once it is assigned.
        let held = consumer
            .wait_assigned(Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(held, QUEUES as usize);
        assert_eq!(consumer.assigned_queues(), QUEUES as usize);

        let producer = Arc::new(
            Producer::start(&rt, &namesrv(), "ordered-producer")
                .await
                .unwrap(),
        );
        let started = Instant::now();
        let mut lanes = Vec::new();
        for lane in 0..LANES {
            let (producer, topic) = (Arc::clone(&producer), topic.clone());
            lanes.push(tokio::spawn(async move {
                for n in 0..PER_LANE {
                    let body = format!("{lane}:{n}").into_bytes();
                    let keys = vec![format!("k{lane}-{n}")];
                    producer
                        .send_ordered(&topic, lane, keys, body)
                        .await
                        .unwrap();
                }
            }));
        }
        for l in lanes {
            l.await.unwrap();
        }
        let total = (LANES * PER_LANE) as usize;
        assert!(
            eventually(Duration::from_secs(60), || seen.lock().unwrap().len()
                >= total)
            .await,
            "received {} of {total}",
            seen.lock().unwrap().len()
        );
        eprintln!(
            "{total} messages on {LANES} lanes sent and handled in {:?}",
            started.elapsed()
        );

        let mut next: HashMap<u32, u32> = HashMap::new();
        for &(lane, n) in seen.lock().unwrap().iter() {
            let expected = next.entry(lane).or_insert(0);
            assert_eq!(n, *expected, "lane {lane}: got {n}, expected {expected}");
            *expected += 1;
        }
        assert_eq!(next.len(), LANES as usize);
        assert!(next.values().all(|n| *n == PER_LANE), "{next:?}");

        consumer.shutdown().await;
        Arc::into_inner(producer).unwrap().shutdown().await;
        admin.delete_group(&group).await.unwrap();
        admin.delete_topic(&topic).await.unwrap();
        admin.shutdown().await;
        rt.shutdown().await;
    })
    .await;
}

/// `Producer::send_batch`: each batch lands on the lane's queue, its records
/// arrive one by one in order with their own tag, keys and properties, and
/// batches of one lane keep their order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_keep_order_tags_keys_and_properties() {
    const BATCHES: u32 = 20;
    const PER_BATCH: u32 = 10;
    bounded(Duration::from_secs(120), async {
        let rt = Runtime::new().unwrap();
        let admin = Admin::connect(&rt, &namesrv()).await.unwrap();
        let names = fresh_names("batch");
        let (topic, group) = (names.node_topic(0), names.node_group(0));
        admin.ensure_topic(&topic, QUEUES).await.unwrap();
        admin.ensure_group(&group, 3).await.unwrap();
        let seen: Arc<Mutex<Vec<Delivery>>> = Arc::default();
        let log = Arc::clone(&seen);
        let config = ConsumerConfig {
            namesrv: namesrv(),
            topic: topic.clone(),
            group: group.clone(),
            max_reconsume_times: None,
            in_order: true,
            batch: 32,
            credentials: None,
        };
        let consumer = Consumer::start_blocking(&rt, config, move |d: Delivery| {
            log.lock().unwrap().push(d);
            Ok::<(), String>(())
        })
        .await
        .unwrap();
        consumer
            .wait_assigned(Duration::from_secs(30))
            .await
            .unwrap();
        let producer = Producer::start(&rt, &namesrv(), "batch-producer")
            .await
            .unwrap();
        for b in 0..BATCHES {
            let lane = b % 2;
            let records: Vec<Record> = (0..PER_BATCH)
                .map(|i| Record {
                    tag: Some(format!("T{}", i % 3)),
                    keys: vec![format!("{lane}-{b}-{i}")],
                    properties: vec![("lane".into(), lane.to_string())],
                    body: format!("{lane}:{}", b / 2 * PER_BATCH + i).into_bytes(),
                })
                .collect();
            producer.send_batch(&topic, lane, &records).await.unwrap();
        }
        let total = (BATCHES * PER_BATCH) as usize;
        assert!(
            eventually(Duration::from_secs(60), || seen.lock().unwrap().len()
                >= total)
            .await,
            "received {} of {total}",
            seen.lock().unwrap().len()
        );
        let mut next: HashMap<String, u32> = HashMap::new();
        for d in seen.lock().unwrap().iter() {
            let text = String::from_utf8(d.body.clone()).unwrap();
            let (lane, n) = text.split_once(':').unwrap();
            let n: u32 = n.parse().unwrap();
            let expected = next.entry(lane.to_owned()).or_insert(0);
            assert_eq!(n, *expected, "lane {lane}: got {n}, expected {expected}");
            *expected += 1;
            assert_eq!(d.tag.as_deref(), Some(&*format!("T{}", n % PER_BATCH % 3)));
            assert_eq!(d.properties.get("lane").map(String::as_str), Some(lane));
            assert!(
                d.key.as_deref().unwrap().starts_with(&format!("{lane}-")),
                "{:?}",
                d.key
            );
        }
        assert_eq!(next.len(), 2);
        consumer.shutdown().await;
        producer.shutdown().await;
        admin.delete_group(&group).await.unwrap();
        admin.delete_topic(&topic).await.unwrap();
        admin.shutdown().await;
        rt.shutdown().await;
    })
    .await;
}
