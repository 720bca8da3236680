//! Lanes keep their order end to end: what `Producer::send_ordered` sends to one
//! lane, an in-order `Consumer` hands over in that order, on the real broker of
//! `scripts/deps start` (SB_TEST_ROCKETMQ_NAMESRV).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{bounded, eventually, fresh_names, namesrv};
use switchboard_rocketmq::{Admin, Consumer, ConsumerConfig, Delivery, Producer, Runtime};

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
