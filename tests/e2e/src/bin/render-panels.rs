//! Draws the dashboard's key panels (`panels::KEY_PANELS`) as SVG from a real
//! run: two release nodes on Redis and RocketMQ, a real Prometheus scraping
//! them every second, soak clients (1:1 and group messages, reconnects)
//! across both pods for a while. `scripts/render-panels` runs it with the
//! dependencies started; the pictures go to `docs/img/`.
//!
//! Usage: `render-panels [OUT_DIR] [SECONDS] [USERS]` (default `docs/img 60 40`);
//! needs `SB_NODE_BIN`, `SB_PROMETHEUS_BIN`, `SB_TEST_REDIS_URL`,
//! `SB_TEST_ROCKETMQ_NAMESRV`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use switchboard_e2e::panels::{KEY_PANELS, file_name, panel, panel_series, render};
use switchboard_e2e::prometheus::{Prometheus, Target, unix_now};
use switchboard_e2e::{Cluster, soak};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out = PathBuf::from(args.first().map_or("docs/img", String::as_str));
    let seconds: u64 = args.get(1).map_or(60, |s| s.parse().expect("SECONDS"));
    let users: usize = args.get(2).map_or(40, |s| s.parse().expect("USERS"));
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../charts/switchboard/files/dashboard.json"
        ))
        .expect("the dashboard"),
    )
    .expect("the dashboard's JSON");
    let mut c = Cluster::new("panels", "2s");
    c.launch(2).await;
    let targets = Target::nodes(&c);
    let prometheus = Prometheus::start(&targets).await;
    prometheus.wait_up(targets.len()).await;
    let start = unix_now();
    let report = soak::run(&c, users, Duration::from_secs(seconds), 7).await;
    eprintln!(
        "render-panels: {} direct and {} group messages over {seconds} s, {} lost",
        report.direct,
        report.group,
        report.lost.len()
    );
    // One more scrape after the traffic.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let end = unix_now();
    std::fs::create_dir_all(&out).expect("the output directory");
    for title in KEY_PANELS {
        let (unit, queries) = panel(&dashboard, title).expect("a key panel");
        let series = panel_series(&prometheus, &queries, start, end, 2.0)
            .await
            .expect("the panel's queries");
        let svg = render(title, unit, &series).expect("the picture");
        let path = out.join(file_name(title));
        std::fs::write(&path, svg).expect("writing the picture");
        eprintln!("{} ({} series)", path.display(), series.len());
    }
}
