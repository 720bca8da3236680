use std::time::Duration;

use rocketmq_client_rust::ClientError;

/// Everything this crate's calls can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The client's own runtime could not be built.
    #[error("cannot start the RocketMQ client runtime: {0}")]
    Runtime(String),
    /// The runtime is shut down (or shutting down), so no call can run on it.
    #[error("the RocketMQ client runtime is shut down")]
    Shutdown,
    /// The RocketMQ client reported an error: the broker or name server refused the
    /// request, did not answer in time, or could not be reached.
    #[error("RocketMQ {op} failed: {detail}")]
    Client {
        /// What this crate was doing.
        op: &'static str,
        /// The client error's whole chain of causes, as text: the client's own message
        /// is only a category ("Argument is invalid"), the reason is in its causes.
        detail: String,
        /// The client's error (not exposed as `source()`: `detail` already says it all).
        error: ClientError,
    },
    /// The name server knows no master broker, so nothing can be provisioned.
    #[error("the name server at {0} knows no master broker")]
    NoBroker(String),
    /// A topic was created on the brokers but the name server did not serve its route
    /// in time, so producers and consumers could not use it yet.
    #[error("topic {topic} has no route on the name server after {waited:?}")]
    RouteNotVisible {
        /// The topic.
        topic: String,
        /// How long this crate waited.
        waited: Duration,
    },
    /// The broker answered a send with a status other than `SEND_OK`. The message may
    /// be stored (e.g. a flush timeout); sending it again may duplicate it.
    #[error("message to {topic} not confirmed: {status}")]
    NotStored {
        /// The topic.
        topic: String,
        /// RocketMQ's send status.
        status: String,
    },
    /// The consumer group does not exist on the broker.
    #[error("consumer group {0} does not exist")]
    MissingGroup(String),
    /// A name that RocketMQ would refuse (see [`crate::names::is_valid_name`]).
    #[error("invalid RocketMQ name {0:?}: letters, digits, '_' and '-' only, at most 120")]
    InvalidName(String),
    /// A consumer holds no queue of its topic yet (see [`crate::Consumer::wait_assigned`]).
    #[error(
        "the consumer holds no queue of topic {0} yet (no route, or the broker does not know the consumer)"
    )]
    NotAssigned(String),
    /// A name server or broker could not be reached, or the connection broke, or
    /// it did not answer in time ([`crate::direct`]).
    #[error("RocketMQ at {addr}: {detail}")]
    Io {
        /// The `host:port` talked to.
        addr: String,
        /// What went wrong.
        detail: String,
    },
    /// A name server or broker answered a request with an error code
    /// ([`crate::direct`]): e.g. 17 no such topic, 16 no permission, 26 no such group.
    #[error("RocketMQ {op} refused: code {code}: {remark}")]
    Refused {
        /// What this crate was doing.
        op: &'static str,
        /// RocketMQ's response code.
        code: i32,
        /// The server's reason.
        remark: String,
    },
    /// ACL credentials that cannot be used (the reason never includes the secret key).
    #[error("invalid RocketMQ credentials: {0}")]
    Credentials(String),
}

impl Error {
    pub(crate) fn client(op: &'static str) -> impl FnOnce(ClientError) -> Self {
        move |error| Self::Client {
            op,
            detail: chain(&error),
            error,
        }
    }
}

/// `error` and its causes, each once, joined by ": ".
fn chain(error: &ClientError) -> String {
    let mut parts = vec![error.to_string()];
    let mut cause = std::error::Error::source(error);
    while let Some(c) = cause {
        let text = c.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        cause = c.source();
    }
    parts.join(": ")
}
