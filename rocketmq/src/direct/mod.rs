//! RocketMQ spoken directly: an ordered producer and an ordered pull consumer
//! that run on the caller's Tokio runtime, for the hot path of a service that
//! owns its topics (one topic per consumer, read by one process).
//!
//! Why not the RocketMQ client ([`crate::Producer`], [`crate::Consumer`]): it
//! insists on a runtime of its own and a pool of threads for handlers, so every
//! message crossed four threads (caller, client runtime, consume thread, caller)
//! and a node spent 0.4-2.2 ms of CPU per message on wake-ups
//! (docs/benchmarks.md, "Where the time goes"). Here a send is one frame written
//! by the task that sends it and a response read by one reader task per
//! connection; a pull is a long-polling request of the same kind. The frames and
//! message layout are the client's own codecs (`rocketmq-protocol`); only the
//! conversation is ours:
//!
//! - name server: `GET_ROUTEINFO_BY_TOPIC` (105);
//! - broker: `SEND_MESSAGE` (10), `PULL_MESSAGE` (11, with the subscription in the
//!   request, so no heartbeat or rebalance is needed), `QUERY_CONSUMER_OFFSET`
//!   (14), `UPDATE_CONSUMER_OFFSET` (15), `GET_MAX_OFFSET` (30), `GET_MIN_OFFSET` (31).
//!
//! Requests are signed like the client's ACL hook (HMAC-SHA1 of the sorted
//! header values and the body) when credentials are given.

mod conn;
mod consumer;
mod frames;
mod producer;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rocketmq_protocol::protocol::remoting_command::RemotingCommand;
use rocketmq_protocol::protocol::route::topic_route_data::TopicRouteData;

pub use consumer::{OrderedConsumer, OrderedConsumerConfig, StartAt, Unreadable};
pub use producer::OrderedProducer;

use crate::{Credentials, Error};
use conn::Conn;

/// Request codes and response codes used here (RocketMQ's `RequestCode` and
/// `ResponseCode`).
mod code {
    pub const SEND_MESSAGE: i32 = 10;
    pub const PULL_MESSAGE: i32 = 11;
    pub const QUERY_CONSUMER_OFFSET: i32 = 14;
    pub const UPDATE_CONSUMER_OFFSET: i32 = 15;
    pub const GET_MAX_OFFSET: i32 = 30;
    pub const GET_MIN_OFFSET: i32 = 31;
    pub const GET_ROUTEINFO_BY_TOPIC: i32 = 105;

    pub const SUCCESS: i32 = 0;
    pub const FLUSH_DISK_TIMEOUT: i32 = 10;
    pub const SLAVE_NOT_AVAILABLE: i32 = 11;
    pub const FLUSH_SLAVE_TIMEOUT: i32 = 12;
    pub const PULL_NOT_FOUND: i32 = 19;
    pub const PULL_RETRY_IMMEDIATELY: i32 = 20;
    pub const PULL_OFFSET_MOVED: i32 = 21;
    pub const QUERY_NOT_FOUND: i32 = 22;
}

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a name server request may take.
const NAMESRV_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a topic's route is used before it is read again (at once after a
/// failed request).
const ROUTE_TTL: Duration = Duration::from_secs(30);
/// When the name servers cannot be reached, the last route read is used, and
/// read again after this long.
const ROUTE_RETRY: Duration = Duration::from_secs(5);

/// One queue of a topic: `(broker name, queue id)` and the master's address.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Queue {
    pub broker: String,
    pub id: i32,
    pub addr: String,
}

/// A topic's queues: the writable ones and the readable ones, each sorted by
/// broker name and queue id (the order every producer picks a lane's queue in).
#[derive(Debug, Default)]
struct Route {
    write: Vec<Queue>,
    read: Vec<Queue>,
}

/// Connections (one per address) and routes, shared by a producer's sends or a
/// consumer's queues.
pub(crate) struct Client {
    namesrv: Vec<String>,
    credentials: Option<Credentials>,
    conns: Mutex<HashMap<String, Arc<Conn>>>,
    /// Each topic's route and until when it is used without asking again.
    routes: Mutex<HashMap<String, (Instant, Arc<Route>)>>,
}

impl Client {
    pub(crate) fn new(namesrv: &str, credentials: Option<Credentials>) -> Self {
        Self {
            namesrv: namesrv
                .split(';')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            credentials,
            conns: Mutex::new(HashMap::new()),
            routes: Mutex::new(HashMap::new()),
        }
    }

    /// A request with `fields` as its header.
    fn command(code: i32, fields: &[(&str, String)]) -> RemotingCommand {
        let mut cmd = RemotingCommand::create_remoting_command(code);
        cmd.ensure_ext_fields_initialized();
        for (name, value) in fields {
            cmd.add_ext_field(*name, value.as_str());
        }
        cmd
    }

    /// Adds `AccessKey` and `Signature` (the client's ACL signature: HMAC-SHA1
    /// over the header values sorted by name, then the body).
    fn sign(&self, cmd: &mut RemotingCommand) -> Result<(), Error> {
        let Some(c) = &self.credentials else {
            return Ok(());
        };
        cmd.add_ext_field("AccessKey", c.access_key());
        let fields: BTreeMap<String, String> = cmd
            .ext_fields()
            .map(|f| {
                f.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            })
            .unwrap_or_default();
        let mut content: Vec<u8> = fields
            .iter()
            .filter(|(k, _)| k.as_str() != "Signature")
            .flat_map(|(_, v)| v.as_bytes().iter().copied())
            .collect();
        if let Some(body) = cmd.body() {
            content.extend_from_slice(body);
        }
        let signature = rocketmq_client_rust::AclSigner::cal_signature(&content, c.secret_key())
            .map_err(|e| Error::Credentials(format!("cannot sign a request: {e}")))?;
        cmd.add_ext_field("Signature", signature);
        Ok(())
    }

    /// The open connection to `addr`, or a new one. Connects outside the lock:
    /// an address that does not answer holds up only its own requests.
    async fn conn(&self, addr: &str) -> Result<Arc<Conn>, Error> {
        if let Some(c) = lock(&self.conns).get(addr)
            && !c.is_closed()
        {
            return Ok(Arc::clone(c));
        }
        let c = Arc::new(Conn::connect(addr, CONNECT_TIMEOUT).await?);
        let mut conns = lock(&self.conns);
        // Two requests may have connected at once: keep the first, drop ours.
        if let Some(open) = conns.get(addr)
            && !open.is_closed()
        {
            return Ok(Arc::clone(open));
        }
        conns.insert(addr.to_owned(), Arc::clone(&c));
        Ok(c)
    }

    /// Sends `cmd` (signed) to `addr` and waits for the response.
    async fn call(
        &self,
        addr: &str,
        mut cmd: RemotingCommand,
        timeout: Duration,
    ) -> Result<RemotingCommand, Error> {
        self.sign(&mut cmd)?;
        self.conn(addr).await?.request(cmd, timeout).await
    }

    /// The route of `topic`, from the cache or the name server. When no name
    /// server answers, the last route read (if any) is used for [`ROUTE_RETRY`]
    /// more: a name server outage does not stop traffic to the brokers.
    async fn route(&self, topic: &str) -> Result<Arc<Route>, Error> {
        let cached = lock(&self.routes).get(topic).cloned();
        if let Some((until, route)) = &cached
            && Instant::now() < *until
        {
            return Ok(Arc::clone(route));
        }
        match self.read_route(topic).await {
            Ok(route) => {
                let route = Arc::new(route);
                lock(&self.routes).insert(
                    topic.to_owned(),
                    (Instant::now() + ROUTE_TTL, Arc::clone(&route)),
                );
                Ok(route)
            }
            Err(e @ Error::Io { .. }) => match cached {
                Some((_, route)) => {
                    lock(&self.routes).insert(
                        topic.to_owned(),
                        (Instant::now() + ROUTE_RETRY, Arc::clone(&route)),
                    );
                    tracing::warn!(%topic, error = %e, "no name server answers; using the last route read");
                    Ok(route)
                }
                None => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    /// Asks the name servers, in turn, for `topic`'s route.
    async fn read_route(&self, topic: &str) -> Result<Route, Error> {
        let mut last = Error::NoBroker(self.namesrv.join(";"));
        for namesrv in &self.namesrv {
            let cmd = Self::command(code::GET_ROUTEINFO_BY_TOPIC, &[("topic", topic.to_owned())]);
            match self.call(namesrv, cmd, NAMESRV_TIMEOUT).await {
                Ok(r) if r.code() == code::SUCCESS => {
                    let data = TopicRouteData::decode(r.body().map_or(&[][..], |b| &b[..]))
                        .map_err(|e| Error::Io {
                            addr: namesrv.clone(),
                            detail: format!("unreadable route of {topic}: {e}"),
                        })?;
                    return Ok(route_of(&data));
                }
                Ok(r) => last = refused("route", &r),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Reads `topic`'s route again on next use (after a failed request); the
    /// route read last stays as the fallback.
    fn forget_route(&self, topic: &str) {
        if let Some((until, _)) = lock(&self.routes).get_mut(topic) {
            *until = Instant::now();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The error for a response that says no.
fn refused(op: &'static str, r: &RemotingCommand) -> Error {
    Error::Refused {
        op,
        code: r.code(),
        remark: r.remark().map(ToString::to_string).unwrap_or_default(),
    }
}

/// A header field of a response, parsed.
fn field<T: std::str::FromStr>(r: &RemotingCommand, name: &str) -> Option<T> {
    r.ext_fields()?.get(name)?.as_str().parse().ok()
}

/// RocketMQ's permission bits on a queue.
const PERM_READ: u32 = 4;
const PERM_WRITE: u32 = 2;

/// The master-held queues of a route, sorted.
fn route_of(data: &TopicRouteData) -> Route {
    let mut route = Route::default();
    for q in &data.queue_datas {
        let Some(addr) = data
            .broker_datas
            .iter()
            .find(|b| b.broker_name() == &q.broker_name)
            .and_then(|b| b.broker_addrs().get(&0))
        else {
            continue;
        };
        let queues = |n: u32| {
            (0..i32::try_from(n).unwrap_or(0)).map(|id| Queue {
                broker: q.broker_name.to_string(),
                id,
                addr: addr.to_string(),
            })
        };
        if q.perm & PERM_WRITE != 0 {
            route.write.extend(queues(q.write_queue_nums));
        }
        if q.perm & PERM_READ != 0 {
            route.read.extend(queues(q.read_queue_nums));
        }
    }
    route.write.sort();
    route.read.sort();
    route
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_route_lists_master_queues_sorted_by_broker_and_id() {
        // As a Java name server writes it: numeric map keys unquoted.
        let json = br#"{"brokerDatas":[{"brokerAddrs":{0:"127.0.0.1:10911",1:"127.0.0.1:10921"},"brokerName":"b","cluster":"c","enableActingMaster":false},{"brokerAddrs":{0:"127.0.0.1:10811"},"brokerName":"a","cluster":"c","enableActingMaster":false}],"queueDatas":[{"brokerName":"b","perm":6,"readQueueNums":2,"topicSysFlag":0,"writeQueueNums":2},{"brokerName":"a","perm":4,"readQueueNums":1,"topicSysFlag":0,"writeQueueNums":1}],"filterServerTable":{}}"#;
        let route = route_of(&TopicRouteData::decode(json).unwrap());
        let ids = |qs: &[Queue]| {
            qs.iter()
                .map(|q| (q.broker.clone(), q.id))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            ids(&route.write),
            [("b".to_owned(), 0), ("b".to_owned(), 1)]
        );
        assert_eq!(
            ids(&route.read),
            [
                ("a".to_owned(), 0),
                ("b".to_owned(), 0),
                ("b".to_owned(), 1)
            ]
        );
        assert_eq!(route.read[0].addr, "127.0.0.1:10811");
        assert_eq!(route.write[0].addr, "127.0.0.1:10911");
    }

    #[test]
    fn signing_adds_the_access_key_and_a_signature_over_sorted_values_and_body() {
        let client = Client::new(
            "127.0.0.1:9876",
            Some(Credentials::new("ak", "sk").unwrap()),
        );
        let mut cmd = Client::command(10, &[("z", "1".into()), ("a", "2".into())])
            .set_body(bytes::Bytes::from_static(b"body"));
        client.sign(&mut cmd).unwrap();
        let f = cmd.ext_fields().unwrap();
        assert_eq!(f.get("AccessKey").unwrap().as_str(), "ak");
        // Values sorted by name: a=2, AccessKey=ak (uppercase sorts first), z=1.
        let expected = rocketmq_client_rust::AclSigner::cal_signature(b"ak21body", "sk").unwrap();
        assert_eq!(f.get("Signature").unwrap().as_str(), expected);
        let unsigned = Client::new("127.0.0.1:9876", None);
        let mut cmd = Client::command(10, &[]);
        unsigned.sign(&mut cmd).unwrap();
        assert!(cmd.ext_fields().unwrap().get("Signature").is_none());
    }
}
