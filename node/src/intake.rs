//! The consumers of what backends send (commands, requests): how each one
//! starts, waits and stops, the same for both. The consumer starts with the
//! server (again every 10 s while it cannot: the broker away, or its group
//! missing, which the operator provisions), holds its queues before it counts
//! as up (`switchboard_consumer_up{consumer}`), and at `stop` commits what it
//! consumed and leaves its group, so the other nodes take its queues.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use switchboard_rocketmq::{Admin, Consumer, ConsumerConfig, Delivery, Producer, Runtime};
use tokio_util::sync::CancellationToken;

use crate::node::Node;

/// Wait between attempts to start the consumer.
const START_RETRY: Duration = Duration::from_secs(10);
/// How long the start waits for the consumer to hold a queue.
const ASSIGN_WAIT: Duration = Duration::from_secs(30);

/// Handles one message; an error hands it back to RocketMQ (redelivered).
#[async_trait]
pub trait Handle: Send + Sync + 'static {
    async fn handle(&self, d: Delivery) -> Result<(), String>;
}

/// One consumer of backends' messages, and the producer its handler writes
/// with (dead letters, answers).
#[derive(Debug, Clone)]
pub struct Intake {
    /// The `consumer` label of `switchboard_consumer_up`: `commands`, `requests`.
    pub label: &'static str,
    /// What it does, for the log: `consume commands`, `answer requests`.
    pub doing: &'static str,
    pub topic: String,
    pub group: String,
    pub producer_group: String,
    pub max_reconsume_times: u32,
    pub in_order: bool,
    /// Messages per hand-off to the handler.
    pub batch: u32,
}

/// Runs the consumer `intake` describes until `stop`; `handler` makes its
/// handler from the producer. Nothing without a name server.
pub async fn run<H: Handle>(
    node: Arc<Node>,
    stop: CancellationToken,
    intake: Intake,
    handler: impl Fn(Arc<Producer>) -> H + Send + Sync,
) {
    let Some(namesrv) = node.cfg.rocketmq_namesrv.clone() else {
        return;
    };
    let label = intake.label;
    node.metrics.consumer(label, false);
    loop {
        let started = tokio::select! {
            r = start(&node, &namesrv, &intake, &handler) => r,
            () = stop.cancelled() => return,
        };
        match started {
            Ok((consumer, producer, rt)) => {
                node.metrics.consumer(label, true);
                tracing::info!(topic = %intake.topic, "started to {}", intake.doing);
                stop.cancelled().await;
                node.metrics.consumer(label, false);
                consumer.shutdown().await;
                // The handler may still hold a reference; the runtime's
                // shutdown ends the client then.
                if let Ok(producer) = Arc::try_unwrap(producer) {
                    producer.shutdown().await;
                }
                rt.shutdown().await;
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, topic = %intake.topic, "cannot {}; trying again in 10 s", intake.doing);
                tokio::select! {
                    () = tokio::time::sleep(START_RETRY) => {}
                    () = stop.cancelled() => return,
                }
            }
        }
    }
}

async fn start<H: Handle>(
    node: &Arc<Node>,
    namesrv: &str,
    intake: &Intake,
    handler: &impl Fn(Arc<Producer>) -> H,
) -> Result<(Consumer, Arc<Producer>, Runtime), String> {
    let credentials = node.cfg.rocketmq_credentials()?;
    let rt = Runtime::new().map_err(|e| e.to_string())?;
    // A consumer of a missing group starts without error and receives
    // nothing: say so instead.
    let admin = Admin::connect_as(&rt, namesrv, credentials.as_ref())
        .await
        .map_err(|e| e.to_string())?;
    let exists = admin.group_exists(&intake.group).await;
    admin.shutdown().await;
    if !exists.map_err(|e| e.to_string())? {
        rt.shutdown().await;
        return Err(format!(
            "consumer group {} does not exist (the operator provisions it)",
            intake.group
        ));
    }
    let producer = Producer::start_as(&rt, namesrv, &intake.producer_group, credentials.clone())
        .await
        .map_err(|e| format!("producer {}: {e}", intake.producer_group))?;
    let producer = Arc::new(producer);
    let handler = Arc::new(handler(producer.clone()));
    let config = ConsumerConfig {
        namesrv: namesrv.to_owned(),
        topic: intake.topic.clone(),
        group: intake.group.clone(),
        max_reconsume_times: Some(intake.max_reconsume_times),
        in_order: intake.in_order,
        batch: intake.batch,
        credentials,
    };
    let consumer = Consumer::start(&rt, config, move |d: Delivery| {
        let handler = handler.clone();
        async move { handler.handle(d).await }
    })
    .await
    .map_err(|e| e.to_string())?;
    // Take the queues now rather than at the client's next rebalance (up
    // to 20 s away on a fresh start).
    if let Err(e) = consumer.wait_assigned(ASSIGN_WAIT).await {
        tracing::warn!(error = %e, consumer = intake.label, "the consumer holds no queue yet (more consumers than queues?)");
    }
    Ok((consumer, producer, rt))
}
