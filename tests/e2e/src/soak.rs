//! Soak: bounded mixed traffic against a cluster (connects, disconnects, 1:1
//! and group messages, acks, reconnects to either pod), while the nodes'
//! resident memory, open file descriptors and tokio tasks are sampled. At the
//! end every user drains its inbox, so a message that was acknowledged to
//! its sender (`sent`) and never reached a recipient is counted as lost.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use crate::{Client, Cluster, Pod, http_get, http_post};

/// Users per group; groups are users `0..4`, `4..8`, ...
const GROUP_SIZE: usize = 4;

/// One sample of one pod.
#[derive(Debug, Clone, Copy, Default)]
pub struct PodSample {
    pub rss_kib: u64,
    pub fds: u64,
    pub tasks: u64,
    pub connections: u64,
}

/// What a soak run saw.
#[derive(Debug, Default)]
pub struct Report {
    pub direct: u64,
    pub group: u64,
    pub deliveries_expected: u64,
    pub lost: Vec<(String, String)>,
    pub sessions: u64,
    pub resent: u64,
    /// Before any client, every 2 s under load, and after every client left.
    pub baseline: Vec<PodSample>,
    pub samples: Vec<(Duration, Vec<PodSample>)>,
    pub after: Vec<PodSample>,
}

type Book = Arc<Mutex<BTreeMap<String, BTreeSet<String>>>>;

fn note(book: &Book, user: &str, id: &str) {
    book.lock()
        .unwrap()
        .entry(user.to_owned())
        .or_default()
        .insert(id.to_owned());
}

/// Resident set, open descriptors, tasks and connections of one pod.
pub async fn sample(p: &Pod) -> PodSample {
    let pid = p.pid();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64);
    let (_, metrics) = http_get(p.addr, "/metrics").await;
    let text = metrics.as_str().unwrap_or_default().to_owned();
    let gauge = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
            .unwrap_or(0.0) as u64
    };
    PodSample {
        rss_kib,
        fds,
        tasks: gauge("switchboard_runtime_tasks"),
        connections: gauge("switchboard_connections"),
    }
}

async fn sample_all(c: &Cluster) -> Vec<PodSample> {
    let mut out = Vec::new();
    for p in &c.pods {
        out.push(sample(p).await);
    }
    out
}

/// Runs `users` clients against `c` for `duration`, then drains and checks.
pub async fn run(c: &Cluster, users: usize, duration: Duration, seed: u64) -> Report {
    let names: Vec<String> = (0..users).map(|i| format!("soak{i}")).collect();
    for (g, members) in names.chunks(GROUP_SIZE).enumerate() {
        let body = json!({"id": format!("soakgroup{g}"), "members": members});
        let (st, v) = http_post(c.pod(0).addr, "/api/v1/groups", &body).await;
        assert_eq!(st, 201, "{v}");
    }
    let mut report = Report {
        baseline: sample_all(c).await,
        ..Report::default()
    };
    let expected: Book = Arc::default();
    let received: Book = Arc::default();
    let started = Instant::now();
    let deadline = started + duration;
    let mut actors = Vec::new();
    for (i, me) in names.iter().enumerate() {
        let ctx = Actor {
            me: me.clone(),
            index: i,
            peers: names.clone(),
            group: i / GROUP_SIZE,
            addrs: c.pods.iter().map(|p| p.addr).collect(),
            expected: expected.clone(),
            received: received.clone(),
            rng: StdRng::seed_from_u64(seed + i as u64),
        };
        actors.push(tokio::spawn(ctx.run(deadline)));
    }
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(2)).await;
        report
            .samples
            .push((started.elapsed(), sample_all(c).await));
    }
    for a in actors {
        let (direct, group, sessions, resent) = a.await.unwrap();
        report.direct += direct;
        report.group += group;
        report.sessions += sessions;
        report.resent += resent;
    }
    // Every user comes back once more and takes what waits in its inbox.
    for me in &names {
        let mut cl = Client::connect(c.pod(0).addr, me).await;
        drain(&mut cl, me, &received).await;
    }
    let expected = expected.lock().unwrap().clone();
    let received = received.lock().unwrap().clone();
    for (user, ids) in &expected {
        report.deliveries_expected += ids.len() as u64;
        let got = received.get(user).cloned().unwrap_or_default();
        for id in ids.difference(&got) {
            report.lost.push((user.clone(), id.clone()));
        }
    }
    // Let the nodes finish the connections' cleanup before the last sample.
    tokio::time::sleep(Duration::from_secs(2)).await;
    report.after = sample_all(c).await;
    report
}

/// Reads until a `pong` comes with nothing else pending, acking messages.
async fn drain(cl: &mut Client, me: &str, received: &Book) {
    loop {
        cl.send(json!({"type": "ping"})).await;
        let mut quiet = true;
        loop {
            let v = cl.next().await.expect("connection ended while draining");
            match v["type"].as_str() {
                Some("pong") => break,
                Some("message") => {
                    quiet = false;
                    take(cl, me, &v, received).await;
                }
                _ => {}
            }
        }
        if quiet {
            return;
        }
    }
}

async fn take(cl: &mut Client, me: &str, v: &Value, received: &Book) {
    let id = v["msg_id"].as_str().unwrap();
    note(received, me, id);
    cl.send(json!({"type": "ack", "msg_ids": [id]})).await;
}

struct Actor {
    me: String,
    index: usize,
    peers: Vec<String>,
    group: usize,
    addrs: Vec<std::net::SocketAddr>,
    expected: Book,
    received: Book,
    rng: StdRng,
}

impl Actor {
    /// Sessions of 1-4 s on a random pod until `deadline`; returns (direct,
    /// group, sessions, resent).
    async fn run(mut self, deadline: Instant) -> (u64, u64, u64, u64) {
        let (mut direct, mut group, mut sessions, mut resent) = (0, 0, 0, 0);
        let mut n = 0u64;
        while Instant::now() < deadline {
            let addr = self.addrs[self.rng.random_range(0..self.addrs.len())];
            if http_get(addr, "/readyz").await.0 != 200 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            let mut cl = Client::connect(addr, &self.me).await;
            sessions += 1;
            let end = Instant::now() + Duration::from_millis(self.rng.random_range(1000..4000));
            while Instant::now() < end.min(deadline) {
                n += 1;
                let cid = format!("{}-{n}", self.me);
                let to_group = self.rng.random_bool(0.3);
                let frame = if to_group {
                    json!({"type": "send", "client_msg_id": cid, "group": format!("soakgroup{}", self.group), "content": "soak"})
                } else {
                    // Anyone but me.
                    let mut j = self.rng.random_range(0..self.peers.len() - 1);
                    if j >= self.index {
                        j += 1;
                    }
                    let peer = &self.peers[j];
                    json!({"type": "send", "client_msg_id": cid, "to": peer, "content": "soak"})
                };
                let (id, tries) = self.send(&mut cl, &frame).await;
                resent += tries;
                let recipients: Vec<String> = if to_group {
                    group += 1;
                    let start = self.group * GROUP_SIZE;
                    self.peers[start..(start + GROUP_SIZE).min(self.peers.len())].to_vec()
                } else {
                    direct += 1;
                    vec![frame["to"].as_str().unwrap().to_owned()]
                };
                for r in recipients.iter().filter(|r| **r != self.me) {
                    note(&self.expected, r, &id);
                }
                tokio::time::sleep(Duration::from_millis(self.rng.random_range(20..80))).await;
            }
            drain(&mut cl, &self.me, &self.received).await;
            // Half the sessions end with a close frame, half with the
            // socket dropped (a phone losing its network).
            if self.rng.random_bool(0.5) {
                cl.close().await;
            }
        }
        (direct, group, sessions, resent)
    }

    /// Sends until `sent` (resending on `unavailable` or `rate_limited`, as
    /// clients must), taking the messages that arrive meanwhile.
    async fn send(&mut self, cl: &mut Client, frame: &Value) -> (String, u64) {
        let mut tries = 0;
        loop {
            cl.send(frame.clone()).await;
            loop {
                let v = cl.next().await.expect("connection ended while sending");
                match (v["type"].as_str(), v["code"].as_str()) {
                    (Some("sent"), _) => return (v["msg_id"].as_str().unwrap().to_owned(), tries),
                    (Some("message"), _) => take(cl, &self.me, &v, &self.received).await,
                    (Some("error"), Some("unavailable" | "rate_limited")) => {
                        tries += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        break;
                    }
                    (Some("error"), _) => panic!("{}: {v}", self.me),
                    _ => {}
                }
            }
        }
    }
}
