//! Shared by the integration tests, which run against the real broker that
//! `scripts/deps start` runs.

#![allow(dead_code, clippy::unwrap_used)]

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use switchboard_rocketmq::names::{Names, prefix};

/// The name server of the broker under test. Never skips: a missing broker is a failure.
pub fn namesrv() -> String {
    std::env::var("SB_TEST_ROCKETMQ_NAMESRV").unwrap_or_else(|_| {
        panic!(
            "SB_TEST_ROCKETMQ_NAMESRV is not set: these tests need a real RocketMQ broker; \
             run: eval \"$(scripts/deps start)\" (and scripts/deps stop afterwards)"
        )
    })
}

/// Names no other test and no earlier run uses, so tests can share one broker.
pub fn fresh_names(test: &str) -> Names {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    Names::new(prefix(
        "t",
        &format!("{test}-{}-{stamp}-{n}", std::process::id()),
    ))
}

/// Runs a test body with a hard time limit, so a hung broker fails the test instead
/// of hanging it.
pub async fn bounded<F: Future<Output = ()>>(limit: Duration, body: F) {
    tokio::time::timeout(limit, body)
        .await
        .unwrap_or_else(|_| panic!("test did not finish within {limit:?}"));
}

/// Polls `check` every 100 ms until it holds or `limit` passes; returns whether it held.
pub async fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let start = tokio::time::Instant::now();
    loop {
        if check() {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Median and maximum of some durations, for the printed measurements.
pub fn summary(mut samples: Vec<Duration>) -> String {
    samples.sort();
    if samples.is_empty() {
        return "no samples".to_owned();
    }
    format!(
        "n={} min={:?} median={:?} max={:?}",
        samples.len(),
        samples[0],
        samples[samples.len() / 2],
        samples[samples.len() - 1]
    )
}
