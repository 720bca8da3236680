//! Centrifugo as the server under test (`--server centrifugo`), for the
//! side-by-side comparison: the same pairs, rate, content and open loop as
//! against switchboard-node, through Centrifugo's JSON protocol (a user
//! subscribes to its own channel; a sender publishes to the recipient's).
//!
//! One node runs the memory engine; several run the Redis engine on one
//! Redis, which is how Centrifugo scales out (its cluster mode), so a
//! publication on one node reaches a subscriber on another through Redis:
//! the comparison for Switchboard's cross-pod path through RocketMQ.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::net::TcpStream;

use crate::client::Endpoint;
use crate::proto::Proto;
use crate::target::{Target, TargetArgs, server_command};

/// Where a Centrifugo node of a cluster finds Redis, and which node it is.
#[derive(Debug, Clone)]
pub struct RedisEngine {
    /// `host:port` of the Redis both nodes share.
    pub address: String,
    pub node: u32,
}

/// Starts one Centrifugo node on a free loopback port and waits until it
/// accepts connections.
pub async fn spawn(args: &TargetArgs, redis: Option<RedisEngine>) -> anyhow::Result<Target> {
    if args.url.is_some() {
        bail!("--server centrifugo starts its own Centrifugo; it cannot be combined with --url");
    }
    let bin = args.centrifugo_bin.clone().context(
        "--server centrifugo needs --centrifugo-bin (or SB_CENTRIFUGO_BIN); `scripts/peers build` prints it",
    )?;
    let port = free_port()?;
    // A directory of its own: the config, and the working directory (Centrifugo
    // reads a `.env` there). Removed when this returns; the process keeps running.
    let dir = ScratchDir::new(port)?;
    let config_path = dir.0.join("config.json");
    std::fs::write(
        &config_path,
        serde_json::to_vec_pretty(&config(port, args.centrifugo_history, redis.as_ref()))?,
    )
    .with_context(|| format!("writing {}", config_path.display()))?;
    let mut cmd = server_command(&bin, args.server_cpus.as_deref());
    cmd.arg("--config")
        .arg(&config_path)
        .current_dir(&dir.0)
        .stdin(Stdio::null())
        .stdout(if args.node_log {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .stderr(Stdio::inherit());
    if let Some(list) = &args.server_cpus {
        // Go sizes its scheduler by the CPUs it may use; say so explicitly.
        cmd.env("GOMAXPROCS", cpu_count(list).to_string());
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(addr).await.is_err() {
        if let Some(status) = child.try_wait()? {
            bail!("centrifugo exited ({status}) before it listened on {addr}");
        }
        if Instant::now() > deadline {
            bail!("centrifugo did not listen on {addr} within 15 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(Target::started(
        Endpoint {
            addr,
            ws_path: Proto::Centrifugo.ws_path().into(),
            proto: Proto::Centrifugo,
        },
        child,
    ))
}

/// The configuration (v6 keys; `centrifugo checkconfig --strict` knows them):
/// loopback only, connections without a token (`client.insecure`, as the
/// loadgen's `?userId=` sign-in on a node), clients may subscribe to and
/// publish into channels without a namespace, no usage statistics sent.
/// Two nodes on one Redis form one cluster by themselves; each has its own
/// port and a name.
fn config(port: u16, history: u32, redis: Option<&RedisEngine>) -> Value {
    let mut channel = json!({
        "allow_subscribe_for_client": true,
        "allow_publish_for_client": true,
    });
    if history > 0 {
        channel["history_size"] = json!(history);
        channel["history_ttl"] = json!("300s");
    }
    let engine = match redis {
        None => json!({"type": "memory"}),
        Some(r) => json!({"type": "redis", "redis": {"address": [r.address]}}),
    };
    let mut c = json!({
        "http_server": {"address": "127.0.0.1", "port": port},
        "client": {"insecure": true, "allowed_origins": ["*"]},
        "channel": {"without_namespace": channel},
        "engine": engine,
        "log": {"level": "error"},
        "usage_stats": {"disabled": true},
        // The server API is not part of the workload: one listener only.
        "http_api": {"disabled": true},
    });
    if let Some(r) = redis {
        c["node"] = json!({"name": format!("lg-{}", r.node)});
    }
    c
}

/// A directory removed when dropped.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(port: u16) -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(format!(
            "switchboard-loadgen-centrifugo-{}-{port}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A port that was free a moment ago (Centrifugo cannot be told port 0 and
/// report it), from 20000-31999: below the kernel's ephemeral range, so an
/// outgoing connection cannot take it meanwhile (as `scripts/deps` does).
fn free_port() -> anyhow::Result<u16> {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        ^ std::process::id();
    for i in 0..200u32 {
        let port = 20_000 + (seed.wrapping_add(i.wrapping_mul(7919)) % 12_000) as u16;
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port in 20000-31999 after 200 tries")
}

/// CPUs in a `taskset -c` list such as `0`, `0,1` or `0-3`.
fn cpu_count(list: &str) -> usize {
    list.split(',')
        .map(|part| match part.split_once('-') {
            Some((a, b)) => match (a.trim().parse::<usize>(), b.trim().parse::<usize>()) {
                (Ok(a), Ok(b)) if b >= a => b - a + 1,
                _ => 1,
            },
            None => 1,
        })
        .sum::<usize>()
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_cpus_of_a_taskset_list() {
        assert_eq!(cpu_count("0"), 1);
        assert_eq!(cpu_count("0,1"), 2);
        assert_eq!(cpu_count("0-3"), 4);
        assert_eq!(cpu_count("0-1,4"), 3);
    }

    #[test]
    fn history_and_engine_land_where_centrifugo_reads_them() {
        let c = config(9000, 100, None);
        assert_eq!(c["channel"]["without_namespace"]["history_size"], 100);
        assert_eq!(c["engine"]["type"], "memory");
        assert_eq!(c["http_server"]["address"], "127.0.0.1");
        let r = RedisEngine {
            address: "127.0.0.1:6379".into(),
            node: 1,
        };
        let c = config(9000, 0, Some(&r));
        assert!(
            c["channel"]["without_namespace"]
                .get("history_size")
                .is_none()
        );
        assert_eq!(c["engine"]["redis"]["address"][0], "127.0.0.1:6379");
        assert_eq!(c["node"]["name"], "lg-1");
    }
}
