//! Sends to the queue of a lane, on the caller's runtime.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::{Client, code, refused};
use crate::{Credentials, Error};

/// How long one send may take.
const SEND_TIMEOUT: Duration = Duration::from_secs(3);

/// RocketMQ's separators in a message's properties string.
const NAME_VALUE: char = '\u{1}';
const PROPERTY: char = '\u{2}';

/// Sends messages to the queue of a lane: queue `lane % queues` of the topic's
/// writable queues sorted by broker name and queue id, the same queue
/// [`crate::Producer::send_ordered`] picks, so the two may be mixed during a
/// rolling update. Nothing else is tried on failure: the caller retries, and
/// holds the lane's later messages until then, so one lane's messages are stored
/// in the order sent. Cheap to share; sends may run concurrently.
pub struct OrderedProducer {
    client: Arc<Client>,
    group: String,
    /// Distinguishes this producer's message ids from other producers' (other
    /// pods, where the process id is often 1, and earlier runs): the start time
    /// in nanoseconds, the process id and a count of producers mixed.
    id: u64,
    next: AtomicU64,
}

impl std::fmt::Debug for OrderedProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrderedProducer")
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl OrderedProducer {
    /// A producer in producer group `group` (a label for the broker) that finds
    /// brokers through the name server(s) at `namesrv` (`host:port`, several
    /// separated by `;`), signing requests with `credentials`. Connects on first
    /// use.
    pub fn new(namesrv: &str, group: &str, credentials: Option<Credentials>) -> Self {
        static PRODUCERS: AtomicU64 = AtomicU64::new(0);
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Self {
            client: Arc::new(Client::new(namesrv, credentials)),
            group: group.to_owned(),
            id: started
                ^ (u64::from(std::process::id()) << 40)
                ^ PRODUCERS.fetch_add(1, Ordering::Relaxed).rotate_left(20),
            next: AtomicU64::new(0),
        }
    }

    /// Sends `body` with message keys `keys` to the queue of `lane` in `topic`
    /// and waits until the broker stored it (`SEND_OK`).
    pub async fn send_ordered(
        &self,
        topic: &str,
        lane: u32,
        keys: &[String],
        body: Vec<u8>,
    ) -> Result<(), Error> {
        let route = self.client.route(topic).await?;
        let n = u32::try_from(route.write.len()).unwrap_or(0);
        let Some(queue) = lane
            .checked_rem(n)
            .and_then(|i| route.write.get(usize::try_from(i).ok()?))
        else {
            self.client.forget_route(topic);
            return Err(Error::Refused {
                op: "send",
                code: 17,
                remark: format!("topic {topic} has no writable queue"),
            });
        };
        let born = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let cmd = Client::command(
            code::SEND_MESSAGE,
            &[
                ("producerGroup", self.group.clone()),
                ("topic", topic.to_owned()),
                ("defaultTopic", "TBW102".to_owned()),
                ("defaultTopicQueueNums", "4".to_owned()),
                ("queueId", queue.id.to_string()),
                ("sysFlag", "0".to_owned()),
                ("bornTimestamp", born.to_string()),
                ("flag", "0".to_owned()),
                ("properties", self.properties(keys)),
                ("reconsumeTimes", "0".to_owned()),
                ("unitMode", "false".to_owned()),
                ("batch", "false".to_owned()),
            ],
        )
        .set_body(Bytes::from(body));
        let response = match self.client.call(&queue.addr, cmd, SEND_TIMEOUT).await {
            Ok(r) => r,
            Err(e) => {
                // The broker may have moved (restarted elsewhere): read the route again.
                self.client.forget_route(topic);
                return Err(e);
            }
        };
        match response.code() {
            code::SUCCESS => Ok(()),
            c @ (code::FLUSH_DISK_TIMEOUT
            | code::SLAVE_NOT_AVAILABLE
            | code::FLUSH_SLAVE_TIMEOUT) => Err(Error::NotStored {
                topic: topic.to_owned(),
                status: format!("code {c}"),
            }),
            _ => {
                self.client.forget_route(topic);
                Err(refused("send", &response))
            }
        }
    }

    /// The properties string: the keys, a unique id, wait for the store.
    fn properties(&self, keys: &[String]) -> String {
        let uniq = format!(
            "{:016X}{:016X}",
            self.id,
            self.next.fetch_add(1, Ordering::Relaxed)
        );
        let mut p = String::with_capacity(64);
        let mut add = |name: &str, value: &str| {
            p.push_str(name);
            p.push(NAME_VALUE);
            p.push_str(value);
            p.push(PROPERTY);
        };
        if !keys.is_empty() {
            add("KEYS", &keys.join(" "));
        }
        add("UNIQ_KEY", &uniq);
        add("WAIT", "true");
        p
    }
}
