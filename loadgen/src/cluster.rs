//! `--nodes N`: the nodes under test as one cluster on real Redis and RocketMQ, so
//! a scenario can measure cross-node delivery. With one node this is just the
//! single [`Target`].

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use switchboard_rocketmq::names::{self, Names};
use switchboard_rocketmq::{Admin, Runtime};

use crate::centrifugo::RedisEngine;
use crate::client::Endpoint;
use crate::proto::Proto;
use crate::target::{Metrics, Target, TargetArgs};

/// Queues per node topic and the retry maximum of a node group, as the e2e tests use.
const QUEUES: u32 = 4;
const RETRY_MAX: u32 = 3;

#[derive(Debug, Clone, clap::Args)]
pub struct ClusterArgs {
    /// Start this many nodes as one cluster (pods `sb-0`, `sb-1`, ...) on Redis
    /// and RocketMQ. Pair i's sender connects to node i % N and its receiver to
    /// node (i + 1) % N, so with N > 1 every message crosses nodes through the
    /// broker. The loadgen creates the cluster's topics and groups first and
    /// deletes them at the end. N > 1 (or --clustered) needs --redis-url and
    /// --rocketmq-namesrv.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub nodes: u32,

    /// Redis for the cluster (`eval "$(scripts/deps start)"` exports it).
    #[arg(long, env = "SB_TEST_REDIS_URL")]
    pub redis_url: Option<String>,

    /// RocketMQ name server for the cluster (`scripts/deps start` exports it).
    #[arg(long, env = "SB_TEST_ROCKETMQ_NAMESRV")]
    pub rocketmq_namesrv: Option<String>,

    /// Run even one node as a cluster (`--nodes 1 --clustered`): on Redis and
    /// RocketMQ instead of standalone, e.g. to measure the event streams on
    /// one node.
    #[arg(long)]
    pub clustered: bool,

    /// Whether the nodes publish the business event streams (`SB_EVENTS`,
    /// `SB_CLUSTER_EVENTS`), to measure what the events' outbox and relay
    /// cost.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub events: bool,
}

/// The topics and groups this run created, deleted at the end.
#[derive(Debug)]
struct Provisioned {
    namesrv: String,
    names: Names,
    nodes: u32,
}

/// The nodes under test.
#[derive(Debug)]
pub struct Nodes {
    pub targets: Vec<Target>,
    provisioned: Option<Provisioned>,
}

impl Nodes {
    pub async fn open(target: &TargetArgs, cluster: &ClusterArgs) -> anyhow::Result<Self> {
        if target.server == Proto::Centrifugo {
            return Self::centrifugo(target, cluster).await;
        }
        if cluster.nodes == 1 && !cluster.clustered {
            return Ok(Self {
                targets: vec![Target::open(target).await?],
                provisioned: None,
            });
        }
        if target.url.is_some() {
            bail!("--nodes starts its own cluster; it cannot be combined with --url");
        }
        let redis = cluster.redis_url.clone().context(
            "a cluster (--nodes > 1 or --clustered) needs --redis-url (or SB_TEST_REDIS_URL)",
        )?;
        let namesrv = cluster
            .rocketmq_namesrv
            .clone()
            .context(
                "a cluster (--nodes > 1 or --clustered) needs --rocketmq-namesrv (or SB_TEST_ROCKETMQ_NAMESRV)",
            )?;
        let cluster_name = format!("lg{}", std::process::id());
        let prefix = names::prefix("loadgen", &cluster_name);
        let names = Names::new(&prefix);
        provision(&namesrv, &names, cluster.nodes, true)
            .await
            .context("creating the cluster's topics and groups")?;
        let mut nodes = Self {
            targets: Vec::new(),
            provisioned: Some(Provisioned {
                namesrv: namesrv.clone(),
                names,
                nodes: cluster.nodes,
            }),
        };
        for i in 0..cluster.nodes {
            let env = [
                ("POD_NAME", format!("sb-{i}")),
                ("POD_NAMESPACE", "loadgen".to_owned()),
                ("SB_CLUSTER_NAME", cluster_name.clone()),
                ("SB_REDIS_URL", redis.clone()),
                ("SB_ROCKETMQ_NAMESRV", namesrv.clone()),
                ("SB_TOPIC_PREFIX", prefix.clone()),
                // The loadgen connects with `?userId=`, as on a standalone node.
                ("SB_DEV_AUTH", "true".to_owned()),
                ("SB_EVENTS", cluster.events.to_string()),
                ("SB_CLUSTER_EVENTS", cluster.events.to_string()),
            ]
            .map(|(k, v)| (k.to_owned(), v));
            match Target::spawn(target, &env).await {
                Ok(t) => nodes.targets.push(t),
                Err(e) => {
                    nodes.stop().await?;
                    return Err(e);
                }
            }
        }
        // Ready means the node's consumer and producer are up (see /readyz).
        let deadline = Instant::now() + Duration::from_secs(60);
        for i in 0..nodes.targets.len() {
            while !nodes.targets[i].ready().await {
                if Instant::now() > deadline {
                    let addr = nodes.targets[i].endpoint.addr;
                    nodes.stop().await?;
                    bail!("node at {addr} not ready within 60 s");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(nodes)
    }

    /// Centrifugo: one node on the memory engine, several on one Redis.
    async fn centrifugo(target: &TargetArgs, cluster: &ClusterArgs) -> anyhow::Result<Self> {
        let mut nodes = Self {
            targets: Vec::new(),
            provisioned: None,
        };
        let redis = if cluster.nodes > 1 || cluster.clustered {
            let url = cluster.redis_url.as_deref().context(
                "Centrifugo on several nodes (its Redis engine) needs --redis-url (or SB_TEST_REDIS_URL)",
            )?;
            Some(redis_address(url)?)
        } else {
            None
        };
        for node in 0..cluster.nodes {
            let engine = redis.clone().map(|address| RedisEngine { address, node });
            match crate::centrifugo::spawn(target, engine).await {
                Ok(t) => nodes.targets.push(t),
                Err(e) => {
                    nodes.stop().await?;
                    return Err(e);
                }
            }
        }
        Ok(nodes)
    }

    /// The name server and topic prefix of a cluster this run started.
    pub fn rocketmq(&self) -> Option<(&str, &str)> {
        self.provisioned
            .as_ref()
            .map(|p| (p.namesrv.as_str(), p.names.prefix.as_str()))
    }

    /// The protocol the servers speak.
    pub fn proto(&self) -> Proto {
        self.targets
            .first()
            .map_or(Proto::Switchboard, |t| t.endpoint.proto)
    }

    pub fn len(&self) -> usize {
        self.targets.len()
    }

    /// Where pair `i`'s sender connects.
    pub fn sender(&self, i: usize) -> &Endpoint {
        &self.targets[i % self.len()].endpoint
    }

    /// Where pair `i`'s receiver connects: the next node, so messages cross nodes.
    pub fn receiver(&self, i: usize) -> &Endpoint {
        &self.targets[(i + 1) % self.len()].endpoint
    }

    /// PIDs of every node, when all are known.
    pub fn pids(&self) -> Option<Vec<u32>> {
        self.targets.iter().map(|t| t.pid).collect()
    }

    /// `ADDR (pid P), ...` for the log.
    pub fn describe(&self) -> String {
        self.targets
            .iter()
            .map(|t| {
                format!(
                    "{} (pid {})",
                    t.endpoint.addr,
                    t.pid.map_or("unknown".into(), |p| p.to_string())
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        self.targets.iter_mut().try_for_each(Target::check_alive)
    }

    /// Every node's metrics, summed.
    pub async fn metrics(&self) -> anyhow::Result<Metrics> {
        let mut sum = Metrics::default();
        for t in &self.targets {
            sum.merge(&t.metrics().await?);
        }
        Ok(sum)
    }

    /// Stops the nodes, then deletes the topics and groups this run created.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let mut first_error = None;
        for t in self.targets.drain(..) {
            if let Err(e) = t.stop().await {
                first_error.get_or_insert(e);
            }
        }
        if let Some(p) = self.provisioned.take() {
            let result = provision(&p.namesrv, &p.names, p.nodes, false)
                .await
                .context("deleting the cluster's topics and groups");
            if let Err(e) = result {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// `host:port` of a `redis://host:port[/db]` URL (no password: Centrifugo
/// is given the address alone).
fn redis_address(url: &str) -> anyhow::Result<String> {
    let rest = url.strip_prefix("redis://").with_context(|| {
        format!("Centrifugo's Redis engine needs a redis:// URL without credentials (got {url})")
    })?;
    let hostport = rest.split('/').next().unwrap_or(rest);
    if hostport.contains('@') || hostport.is_empty() {
        bail!("Centrifugo's Redis engine needs a redis:// URL without credentials (got {url})");
    }
    Ok(hostport.to_owned())
}

/// Creates (`create`) or deletes the node topics and groups of `nodes` pods, with
/// the project's own idempotent provisioning code (what the operator uses).
async fn provision(
    namesrv: &str,
    names: &Names,
    nodes: u32,
    create: bool,
) -> Result<(), switchboard_rocketmq::Error> {
    let rt = Runtime::new()?;
    let admin = Admin::connect(&rt, namesrv).await?;
    let mut result = Ok(());
    for topic in names.shared_topics() {
        result = if create {
            admin.ensure_topic(&topic, QUEUES).await
        } else {
            admin.delete_topic(&topic).await
        };
        if result.is_err() {
            break;
        }
    }
    // The commands and api groups (the nodes consume commands and requests).
    for group in names.shared_groups() {
        if result.is_err() {
            break;
        }
        result = if create {
            admin.ensure_group(&group, RETRY_MAX).await
        } else {
            admin.delete_group(&group).await
        };
    }
    for i in 0..nodes {
        if result.is_err() {
            break;
        }
        let (topic, group) = (names.node_topic(i), names.node_group(i));
        result = if create {
            match admin.ensure_topic(&topic, QUEUES).await {
                Ok(()) => admin.ensure_group(&group, RETRY_MAX).await,
                Err(e) => Err(e),
            }
        } else {
            match admin.delete_group(&group).await {
                Ok(()) => admin.delete_topic(&topic).await,
                Err(e) => Err(e),
            }
        };
        if result.is_err() {
            break;
        }
    }
    admin.shutdown().await;
    rt.shutdown().await;
    result
}
