//! Provisioning: topics and consumer groups, created and removed through the RocketMQ
//! admin protocol.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cheetah_string::CheetahString;
use rocketmq_client_rust::{
    ClientError, ConsumerAdmin, DefaultMQAdminExt, MQAdminMutationExt, MQClientException,
    RouteAdmin, TopicAdmin,
};
use rocketmq_model::topic::TopicConfig;
use rocketmq_protocol::protocol::body::broker_body::cluster_info::ClusterInfo;
use rocketmq_protocol::protocol::subscription::subscription_group_config::SubscriptionGroupConfig;
use tokio::sync::RwLock;

use crate::names::is_valid_name;
use crate::{Credentials, Error, Runtime, unique_instance_name};

/// Broker id of a master in RocketMQ's broker tables.
const MASTER_ID: u64 = 0;
/// Read and write permission (RocketMQ's `PERM_READ | PERM_WRITE`).
const PERM_READ_WRITE: u32 = 6;
/// Response codes of the RocketMQ protocol.
const TOPIC_NOT_EXIST: i32 = 17;
const SUBSCRIPTION_GROUP_NOT_EXIST: i32 = 26;
/// Timeout of one admin request. Admin calls answer in milliseconds on a healthy broker;
/// this only bounds a dead one.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long [`Admin::ensure_topic`] waits for the name server to serve a new route. The
/// broker registers a new topic with the name server before it answers, so this is
/// only a safety net.
const ROUTE_WAIT: Duration = Duration::from_secs(10);
/// RocketMQ's names of a group's retry and dead-letter topics.
const RETRY_PREFIX: &str = "%RETRY%";
const DLQ_PREFIX: &str = "%DLQ%";

/// A connection to a RocketMQ name server for provisioning topics and groups.
///
/// Every query asks the name server or the brokers; nothing is remembered here, so the
/// answers reflect changes made by anyone. All methods act on every master broker the
/// name server knows (in every cluster), which is what a producer or consumer of the
/// topic reaches.
pub struct Admin {
    rt: Runtime,
    namesrv: String,
    inner: Arc<RwLock<DefaultMQAdminExt>>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("namesrv", &self.namesrv)
            .finish_non_exhaustive()
    }
}

impl Admin {
    /// Starts an admin client for the name server at `namesrv` (`host:port`, or several
    /// separated by `;`). Connections are made lazily, so this succeeds even when the
    /// name server is down; the first call then fails.
    pub async fn connect(rt: &Runtime, namesrv: &str) -> Result<Self, Error> {
        Self::connect_as(rt, namesrv, None).await
    }

    /// [`Admin::connect`], signing every request with `credentials` (a broker with ACL
    /// needs a user allowed to create and delete topics and groups: a super user).
    pub async fn connect_as(
        rt: &Runtime,
        namesrv: &str,
        credentials: Option<&Credentials>,
    ) -> Result<Self, Error> {
        let group = unique_instance_name("switchboard-admin");
        let mut admin = match credentials {
            Some(c) => DefaultMQAdminExt::with_admin_ext_group_rpc_hook_and_timeout(
                rt.client(),
                group,
                c.hook(),
                REQUEST_TIMEOUT,
            ),
            None => DefaultMQAdminExt::with_admin_ext_group_and_timeout(
                rt.client(),
                group,
                REQUEST_TIMEOUT,
            ),
        };
        admin
            .client_config_mut()
            .set_instance_name(unique_instance_name("switchboard-admin").into());
        admin.set_namesrv_addr(namesrv);
        let admin = rt
            .run(
                "admin start",
                async move { admin.start().await.map(|()| admin) },
            )
            .await?
            .map_err(Error::client("admin start"))?;
        Ok(Self {
            rt: rt.clone(),
            namesrv: namesrv.to_owned(),
            inner: Arc::new(RwLock::new(admin)),
        })
    }

    /// Creates `topic` with `queues` read and write queues on every master broker, or
    /// sets an existing one to that many, then waits until the name server serves its
    /// route (so producers can use it at once). Idempotent.
    pub async fn ensure_topic(&self, topic: &str, queues: u32) -> Result<(), Error> {
        check_name(topic)?;
        let masters = self.masters().await?;
        let name = CheetahString::from(topic);
        self.call("create topic", move |admin| async move {
            for addr in masters {
                let mut config = TopicConfig::with_queues(name.clone(), queues, queues);
                config.perm = PERM_READ_WRITE;
                MQAdminMutationExt::upsert_topic_config(&*admin, addr, config).await?;
            }
            Ok(())
        })
        .await?;
        let start = Instant::now();
        while !self.topic_exists(topic).await? {
            if start.elapsed() > ROUTE_WAIT {
                return Err(Error::RouteNotVisible {
                    topic: topic.to_owned(),
                    waited: ROUTE_WAIT,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Creates the consumer group `group` on every master broker, or updates it, with
    /// `retry_max_times` as its maximum number of redeliveries (RocketMQ's
    /// `retryMaxTimes`): a message whose handler keeps failing is retried through
    /// `%RETRY%<group>` and then moved to `%DLQ%<group>`. Other settings are RocketMQ's
    /// defaults (consume enabled, not orderly, not broadcast). Idempotent.
    ///
    /// The client sends its own bound with every retry and the broker obeys it rather
    /// than this one; a [`crate::Consumer`] reads this value at start unless told
    /// otherwise ([`crate::ConsumerConfig::max_reconsume_times`]).
    pub async fn ensure_group(&self, group: &str, retry_max_times: u32) -> Result<(), Error> {
        check_name(group)?;
        let masters = self.masters().await?;
        let name = CheetahString::from(group);
        let retries = i32::try_from(retry_max_times).unwrap_or(i32::MAX);
        self.call("create group", move |admin| async move {
            for addr in masters {
                let mut config = SubscriptionGroupConfig::new(name.clone());
                config.set_retry_max_times(retries);
                MQAdminMutationExt::upsert_subscription_group(&*admin, addr, config).await?;
            }
            Ok(())
        })
        .await
    }

    /// Whether the name server serves a route for `topic` (a producer or consumer can
    /// use it).
    pub async fn topic_exists(&self, topic: &str) -> Result<bool, Error> {
        let name = CheetahString::from(topic);
        self.call("query topic route", move |admin| async move {
            match TopicAdmin::examine_topic_route_info(&*admin, name).await {
                Ok(route) => Ok(route.is_some_and(|r| !r.queue_datas.is_empty())),
                Err(e) if response_code(&e) == Some(TOPIC_NOT_EXIST) => Ok(false),
                Err(e) => Err(e),
            }
        })
        .await
    }

    /// Whether every master broker has the consumer group `group` (and there is at least
    /// one). With `autoCreateSubscriptionGroup=false` a consumer of a missing group
    /// starts without error but receives nothing, so check this before consuming.
    pub async fn group_exists(&self, group: &str) -> Result<bool, Error> {
        let masters = self.masters().await?;
        let name = CheetahString::from(group);
        self.call("query group", move |admin| async move {
            for addr in masters {
                let found =
                    ConsumerAdmin::examine_subscription_group_config(&*admin, addr, name.clone())
                        .await;
                match found {
                    Ok(_) => {}
                    Err(e) if response_code(&e) == Some(SUBSCRIPTION_GROUP_NOT_EXIST) => {
                        return Ok(false);
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(true)
        })
        .await
    }

    /// The `retryMaxTimes` of `group` on the first master broker, or `None` when the
    /// group does not exist there.
    pub async fn group_retry_max_times(&self, group: &str) -> Result<Option<u32>, Error> {
        let Some(addr) = self.masters().await?.into_iter().next() else {
            return Err(Error::NoBroker(self.namesrv.clone()));
        };
        let name = CheetahString::from(group);
        self.call("query group", move |admin| async move {
            match ConsumerAdmin::examine_subscription_group_config(&*admin, addr, name).await {
                Ok(config) => Ok(Some(u32::try_from(config.retry_max_times()).unwrap_or(0))),
                Err(e) if response_code(&e) == Some(SUBSCRIPTION_GROUP_NOT_EXIST) => Ok(None),
                Err(e) => Err(e),
            }
        })
        .await
    }

    /// Number of messages stored in `topic` now (the sum over its queues of max offset
    /// minus min offset); `0` for a topic without a route. Meant for tests and
    /// diagnostics, e.g. to look into a group's `%DLQ%` topic.
    pub async fn message_count(&self, topic: &str) -> Result<u64, Error> {
        if !self.topic_exists(topic).await? {
            return Ok(0);
        }
        let name = CheetahString::from(topic);
        self.call("query topic stats", move |admin| async move {
            let stats = TopicAdmin::examine_topic_stats(&*admin, name, None).await?;
            Ok(stats
                .get_offset_table()
                .values()
                .map(|o| u64::try_from(o.get_max_offset() - o.get_min_offset()).unwrap_or(0))
                .sum())
        })
        .await
    }

    /// Messages of `topic` stored but not yet consumed by `group`: the sum over the
    /// topic's queues of the broker's max offset minus the group's committed offset.
    /// Asks the masters of the topic's own route, so it also works for a group whose
    /// consumer never joined it through heartbeats (a [`crate::direct`] consumer: it
    /// has no `%RETRY%` topic, where the client's admin looks by default).
    pub async fn consumer_lag(&self, group: &str, topic: &str) -> Result<u64, Error> {
        let (group, topic) = (CheetahString::from(group), CheetahString::from(topic));
        self.call("query consume stats", move |admin| async move {
            let Some(route) = TopicAdmin::examine_topic_route_info(&*admin, topic.clone()).await?
            else {
                return Ok(0);
            };
            let mut lag = 0u64;
            for broker in &route.broker_datas {
                let Some(addr) = broker.broker_addrs().get(&MASTER_ID) else {
                    continue;
                };
                let stats = ConsumerAdmin::examine_consume_stats(
                    &*admin,
                    group.clone(),
                    Some(topic.clone()),
                    None,
                    Some(addr.clone()),
                    None,
                )
                .await?;
                lag += u64::try_from(stats.compute_total_diff()).unwrap_or(0);
            }
            Ok(lag)
        })
        .await
    }

    /// Removes `topic` from every broker and from the name server. Removing a topic
    /// that does not exist is not an error.
    pub async fn delete_topic(&self, topic: &str) -> Result<(), Error> {
        let cluster = self.cluster_info().await?;
        let brokers = all_broker_addrs(&cluster);
        let name = CheetahString::from(topic);
        self.call("delete topic", move |admin| async move {
            if !brokers.is_empty() {
                TopicAdmin::delete_topic_in_broker(&*admin, brokers, name.clone()).await?;
            }
            let namesrvs: HashSet<_> = RouteAdmin::get_name_server_address_list(&*admin)
                .await
                .into_iter()
                .collect();
            // No cluster name: remove the route whichever cluster serves it.
            TopicAdmin::delete_topic_in_name_server(&*admin, namesrvs, None, name).await
        })
        .await
    }

    /// Removes the consumer group `group` from every master broker, with its consumed
    /// offsets, and its `%RETRY%` and `%DLQ%` topics (as RocketMQ's own `deleteSubGroup`
    /// does). Removing a group that does not exist is not an error.
    pub async fn delete_group(&self, group: &str) -> Result<(), Error> {
        let masters = self.masters().await?;
        let name = CheetahString::from(group);
        self.call("delete group", move |admin| async move {
            for addr in masters {
                ConsumerAdmin::delete_subscription_group(&*admin, addr, name.clone(), Some(true))
                    .await?;
            }
            Ok(())
        })
        .await?;
        self.delete_topic(&format!("{RETRY_PREFIX}{group}")).await?;
        self.delete_topic(&format!("{DLQ_PREFIX}{group}")).await
    }

    /// Stops the admin client and closes its connections.
    pub async fn shutdown(self) {
        let inner = Arc::clone(&self.inner);
        let _ = self
            .rt
            .run("admin shutdown", async move {
                inner.write().await.shutdown().await;
            })
            .await;
    }

    /// Addresses of the master brokers the name server knows.
    async fn masters(&self) -> Result<Vec<CheetahString>, Error> {
        let cluster = self.cluster_info().await?;
        let masters: Vec<_> = cluster
            .broker_addr_table
            .iter()
            .flat_map(|table| table.values())
            .filter_map(|broker| broker.broker_addrs().get(&MASTER_ID).cloned())
            .collect();
        if masters.is_empty() {
            return Err(Error::NoBroker(self.namesrv.clone()));
        }
        Ok(masters)
    }

    async fn cluster_info(&self) -> Result<ClusterInfo, Error> {
        self.call("query cluster", |admin| async move {
            RouteAdmin::examine_broker_cluster_info(&*admin).await
        })
        .await
    }

    /// Runs `op` with the started admin client on the client's runtime.
    async fn call<T, F, Fut>(&self, what: &'static str, op: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(tokio::sync::OwnedRwLockReadGuard<DefaultMQAdminExt>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, ClientError>> + Send,
    {
        let inner = Arc::clone(&self.inner);
        self.rt
            .run(what, async move { op(inner.read_owned().await).await })
            .await?
            .map_err(Error::client(what))
    }
}

/// Every broker address (masters and slaves) in the cluster table.
fn all_broker_addrs(cluster: &ClusterInfo) -> HashSet<CheetahString> {
    cluster
        .broker_addr_table
        .iter()
        .flat_map(|table| table.values())
        .flat_map(|broker| broker.broker_addrs().values().cloned())
        .collect()
}

/// The RocketMQ response code behind a client error, if the broker or name server
/// answered with one.
fn response_code(error: &ClientError) -> Option<i32> {
    error.broker_response_code().or_else(|| {
        error
            .source_ref::<MQClientException>()
            .map(MQClientException::response_code)
    })
}

fn check_name(name: &str) -> Result<(), Error> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(Error::InvalidName(name.to_owned()))
    }
}
