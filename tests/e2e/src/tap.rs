//! An independent consumer of a cluster's business streams, as a downstream
//! service would run one: its own consumer group, reading a topic in order.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchboard_rocketmq::{Admin, Consumer, ConsumerConfig, Delivery, Runtime};

/// Everything read from one topic, in arrival order.
pub struct Tap {
    pub topic: String,
    seen: Arc<Mutex<Vec<Delivery>>>,
    consumer: Option<Consumer>,
    rt: Runtime,
}

impl Tap {
    /// Creates group `<topic>-tap` and reads `topic` from its oldest message.
    pub async fn start(namesrv: &str, topic: &str) -> Self {
        let rt = Runtime::new().unwrap();
        let group = format!("{topic}-tap");
        let admin = Admin::connect(&rt, namesrv).await.unwrap();
        admin.ensure_group(&group, 3).await.unwrap();
        admin.shutdown().await;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let kept = seen.clone();
        let config = ConsumerConfig {
            namesrv: namesrv.to_owned(),
            topic: topic.to_owned(),
            group,
            max_reconsume_times: None,
            in_order: true,
            batch: 32,
            credentials: None,
        };
        let consumer = Consumer::start_blocking(&rt, config, move |d: Delivery| {
            kept.lock().unwrap().push(d);
            Ok::<(), String>(())
        })
        .await
        .unwrap();
        consumer
            .wait_assigned(Duration::from_secs(30))
            .await
            .unwrap();
        Self {
            topic: topic.to_owned(),
            seen,
            consumer: Some(consumer),
            rt,
        }
    }

    /// What was read so far.
    pub fn seen(&self) -> Vec<Delivery> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits until `done` holds for what was read; panics after `within`
    /// with what was read.
    pub async fn wait_until(
        &self,
        within: Duration,
        what: &str,
        done: impl Fn(&[Delivery]) -> bool,
    ) -> Vec<Delivery> {
        let deadline = Instant::now() + within;
        loop {
            let seen = self.seen();
            if done(&seen) {
                return seen;
            }
            assert!(
                Instant::now() < deadline,
                "{}: no {what} within {within:?}; read: {:#?}",
                self.topic,
                seen.iter().map(describe).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn stop(mut self) {
        if let Some(c) = self.consumer.take() {
            c.shutdown().await;
        }
        self.rt.clone().shutdown().await;
    }
}

/// `tag keys body` of a delivery, for failure messages.
pub fn describe(d: &Delivery) -> String {
    format!(
        "{} {:?} {}",
        d.tag.as_deref().unwrap_or("-"),
        d.key,
        String::from_utf8_lossy(&d.body)
    )
}

/// The deliveries tagged `tag`, in arrival order.
pub fn with_tag<'a>(seen: &'a [Delivery], tag: &str) -> Vec<&'a Delivery> {
    seen.iter()
        .filter(|d| d.tag.as_deref() == Some(tag))
        .collect()
}

/// Taps on both business streams of `c`: `PREFIX-events` and
/// `PREFIX-cluster-events`.
pub async fn streams(c: &crate::Cluster) -> (Tap, Tap) {
    let names = switchboard_rocketmq::names::Names::new(&c.prefix);
    (
        Tap::start(c.namesrv(), &names.events_topic()).await,
        Tap::start(c.namesrv(), &names.cluster_events_topic()).await,
    )
}
