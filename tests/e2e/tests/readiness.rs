//! `/readyz` means "can serve": a pod whose bus subscription is not running,
//! or whose Redis does not answer, is not ready, and says which.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use serde_json::Value;
use switchboard_e2e::{Cluster, OwnRedis, Pod, wait_ready};

/// Polls `/readyz` until it answers 503 with `failing` on `check`.
async fn wait_not_ready(p: &Pod, check: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (st, body) = p.get("/readyz").await;
        if st == 503 && body["checks"][check] == "failing" {
            assert_eq!(body["code"], "not_ready", "{body}");
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{} did not turn not-ready on {check}: {st} {body}",
            p.name
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_pod_is_ready_only_while_its_bus_runs_and_its_redis_answers() {
    let mut redis = OwnRedis::start().await;
    let mut c = Cluster::new("ready", "1s");
    c.use_redis(&redis.url());

    // No topic and group for ordinal 0 yet: the subscription cannot start.
    let pod = c.spawn(0);
    let body = wait_not_ready(&pod, "bus").await;
    assert_eq!(body["checks"]["registry"], "ok", "{body}");
    // It stays so (the subscription retries every 2 s and keeps failing).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(pod.get("/readyz").await.0, 503);

    c.provision(1).await;
    wait_ready(&pod).await;

    // Redis away: not ready within the probe's reach, and back when it is.
    redis.stop();
    let body = wait_not_ready(&pod, "registry").await;
    assert_eq!(body["checks"]["bus"], "ok", "{body}");
    redis.restart().await;
    wait_ready(&pod).await;
}
