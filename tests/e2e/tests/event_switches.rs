//! Each business stream switches off on its own (`SB_CLUSTER_EVENTS=false`,
//! as `spec.eventStreams.clusterEvents: false` renders it): the other keeps
//! publishing, the switched-off topic gets nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use switchboard_e2e::tap::{streams, with_tag};
use switchboard_e2e::{Cluster, wait_ready};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_switched_off_publishes_nothing_and_the_other_goes_on() {
    let mut c = Cluster::new("switches", "2s");
    c.set_env("SB_CLUSTER_EVENTS", "false");
    c.provision(1).await;
    let pod = c.spawn(0);
    wait_ready(&pod).await;
    c.pods.push(pod);
    let (events, cluster) = streams(&c).await;
    let mut ana = c.pod(0).connect("ana").await;
    ana.say("ben", "s1", "hello").await;
    events
        .wait_until(Duration::from_secs(30), "message_sent", |s| {
            !with_tag(s, "message_sent").is_empty()
        })
        .await;
    // Both streams' records of an entry go out in the same relay pass, the
    // events first: a second more is ample for a C2C record to follow.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        cluster.seen().is_empty(),
        "cluster events published while switched off: {}",
        cluster.seen().len()
    );
    events.stop().await;
    cluster.stop().await;
}
