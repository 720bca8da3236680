//! The direct producer and consumer (`switchboard_rocketmq::direct`) on the real
//! broker of `scripts/deps start` (SB_TEST_ROCKETMQ_NAMESRV): lanes keep their
//! order, offsets are committed and resumed, the client's own producer can write to
//! the same lanes (a rolling update; its bodies over 4 KiB arrive compressed), and
//! a missing topic is a clear error.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{bounded, eventually, fresh_names, namesrv};
use switchboard_rocketmq::direct::{
    OrderedConsumer, OrderedConsumerConfig, OrderedProducer, StartAt, Unreadable,
};
use switchboard_rocketmq::{Admin, Delivery, Error, Producer, Runtime};

const QUEUES: u32 = 4;
const LANES: u32 = 8;
const PER_LANE: u32 = 200;

type Seen = Arc<Mutex<Vec<Delivery>>>;

async fn consumer(topic: &str, group: &str, seen: &Seen) -> Result<OrderedConsumer, Error> {
    let config = OrderedConsumerConfig {
        namesrv: namesrv(),
        topic: topic.to_owned(),
        group: group.to_owned(),
        batch: 32,
        credentials: None,
        new_group_starts_at: StartAt::End,
        unreadable: Unreadable::Skip,
    };
    let log = Arc::clone(seen);
    OrderedConsumer::start(config, move |d: Delivery| {
        log.lock().unwrap().push(d);
        std::future::ready(Ok::<(), String>(()))
    })
    .await
}

fn bodies(seen: &Seen) -> Vec<String> {
    seen.lock()
        .unwrap()
        .iter()
        .map(|d| String::from_utf8_lossy(&d.body).into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lanes_arrive_in_order_and_offsets_survive_a_restart() {
    bounded(Duration::from_secs(120), async {
        let rt = Runtime::new().unwrap();
        let admin = Admin::connect(&rt, &namesrv()).await.unwrap();
        let names = fresh_names("direct");
        let (topic, group) = (names.node_topic(0), names.node_group(0));
        admin.ensure_topic(&topic, QUEUES).await.unwrap();
        admin.ensure_group(&group, 3).await.unwrap();

        let seen: Seen = Arc::default();
        let reader = consumer(&topic, &group, &seen).await.unwrap();
        let producer = Arc::new(OrderedProducer::new(&namesrv(), "direct-producer", None));
        let mut lanes = Vec::new();
        for lane in 0..LANES {
            let (producer, topic) = (Arc::clone(&producer), topic.clone());
            lanes.push(tokio::spawn(async move {
                for n in 0..PER_LANE {
                    let keys = [format!("k{lane}-{n}")];
                    let body = format!("{lane}:{n}").into_bytes();
                    producer
                        .send_ordered(&topic, lane, &keys, body)
                        .await
                        .unwrap();
                }
            }));
        }
        for l in lanes {
            l.await.unwrap();
        }
        let all = (LANES * PER_LANE) as usize;
        assert!(
            eventually(Duration::from_secs(30), || seen.lock().unwrap().len()
                >= all)
            .await,
            "{} of {all} arrived",
            seen.lock().unwrap().len()
        );
        let mut next: HashMap<u32, u32> = HashMap::new();
        for d in seen.lock().unwrap().iter() {
            let text = String::from_utf8_lossy(&d.body).into_owned();
            let (lane, n) = text.split_once(':').unwrap();
            let (lane, n): (u32, u32) = (lane.parse().unwrap(), n.parse().unwrap());
            let want = next.entry(lane).or_default();
            assert_eq!(n, *want, "lane {lane} out of order");
            *want += 1;
            assert_eq!(d.key.as_deref(), Some(format!("k{lane}-{n}").as_str()));
            assert_eq!(d.topic, topic);
            assert!(!d.msg_id.is_empty());
        }
        assert_eq!(next.values().sum::<u32>(), LANES * PER_LANE, "a duplicate");

        // Stopped, the group keeps its offsets: a new consumer reads only what
        // was sent after, the client's producer's included, on the same lanes.
        reader.shutdown().await;
        let client = Producer::start(&rt, &namesrv(), "direct-legacy")
            .await
            .unwrap();
        let big = "x".repeat(8 * 1024);
        client
            .send_ordered(
                &topic,
                1,
                vec!["old".into()],
                format!("1:{big}").into_bytes(),
            )
            .await
            .unwrap();
        producer
            .send_ordered(&topic, 1, &[], b"1:after".to_vec())
            .await
            .unwrap();
        // The lag is read from the broker's offsets: this group never joined
        // through heartbeats (it has no %RETRY% topic).
        assert_eq!(admin.consumer_lag(&group, &topic).await.unwrap(), 2);
        let again: Seen = Arc::default();
        let reader = consumer(&topic, &group, &again).await.unwrap();
        assert!(
            eventually(Duration::from_secs(30), || again.lock().unwrap().len() >= 2).await,
            "{:?}",
            bodies(&again)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(bodies(&again), [format!("1:{big}"), "1:after".to_owned()]);
        reader.shutdown().await;
        assert_eq!(admin.consumer_lag(&group, &topic).await.unwrap(), 0);
        client.shutdown().await;
        admin.delete_group(&group).await.unwrap();
        admin.delete_topic(&topic).await.unwrap();
        admin.shutdown().await;
        rt.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_topic_is_a_clear_error() {
    bounded(Duration::from_secs(60), async {
        let names = fresh_names("direct-missing");
        let topic = names.node_topic(0);
        let seen: Seen = Arc::default();
        let e = consumer(&topic, &names.node_group(0), &seen)
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Refused { code: 17, .. }), "{e}");
        let producer = OrderedProducer::new(&namesrv(), "direct-missing", None);
        let e = producer
            .send_ordered(&topic, 0, &[], b"x".to_vec())
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Refused { code: 17, .. }), "{e}");
        assert!(e.to_string().contains("code 17"), "{e}");
        // No name server there at all: an I/O error naming the address.
        let nowhere = OrderedProducer::new("127.0.0.1:1", "direct-missing", None);
        let e = nowhere
            .send_ordered(&topic, 0, &[], b"x".to_vec())
            .await
            .unwrap_err();
        assert!(
            matches!(e, Error::Io { .. }) && e.to_string().contains("127.0.0.1:1"),
            "{e}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_added_later_are_read_from_their_start() {
    bounded(Duration::from_secs(120), async {
        let rt = Runtime::new().unwrap();
        let admin = Admin::connect(&rt, &namesrv()).await.unwrap();
        let names = fresh_names("direct-grow");
        let (topic, group) = (names.node_topic(0), names.node_group(0));
        admin.ensure_topic(&topic, 2).await.unwrap();
        admin.ensure_group(&group, 3).await.unwrap();
        let seen: Seen = Arc::default();
        let reader = consumer(&topic, &group, &seen).await.unwrap();
        // Two more queues (the operator raising queuesPerTopic): a producer that
        // reads the new route writes to all four.
        admin.ensure_topic(&topic, QUEUES).await.unwrap();
        let producer = OrderedProducer::new(&namesrv(), "direct-grow", None);
        for lane in 0..QUEUES {
            let body = format!("{lane}:0").into_bytes();
            producer
                .send_ordered(&topic, lane, &[], body)
                .await
                .unwrap();
        }
        // The consumer reads its route again within 30 s.
        assert!(
            eventually(Duration::from_secs(60), || seen.lock().unwrap().len()
                >= QUEUES as usize)
            .await,
            "{:?}",
            bodies(&seen)
        );
        let mut got = bodies(&seen);
        got.sort();
        assert_eq!(got, ["0:0", "1:0", "2:0", "3:0"]);
        reader.shutdown().await;
        admin.delete_group(&group).await.unwrap();
        admin.delete_topic(&topic).await.unwrap();
        admin.shutdown().await;
        rt.shutdown().await;
    })
    .await;
}
