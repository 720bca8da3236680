//! The Redis connection every Redis backend uses: the reconnecting manager,
//! with each round trip timed and each failure counted
//! (`switchboard_redis_command_seconds`, `switchboard_redis_command_errors_total`).

use std::time::Instant;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::{Arg, Cmd, Pipeline, RedisFuture, ServerErrorKind, Value};

use crate::metrics::BackendMetrics;

/// A [`ConnectionManager`] that records its calls.
#[derive(Clone)]
pub struct Conn {
    inner: ConnectionManager,
    metrics: BackendMetrics,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").finish_non_exhaustive()
    }
}

impl Conn {
    pub fn new(inner: ConnectionManager, metrics: BackendMetrics) -> Self {
        Self { inner, metrics }
    }

    fn record(&self, command: &'static str, started: Instant, failed: bool) {
        self.metrics
            .redis_call(command, started.elapsed().as_secs_f64(), failed);
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let started = Instant::now();
            let result = self.inner.req_packed_command(cmd).await;
            let failed = match &result {
                Ok(v) => is_error(v),
                Err(e) => e.kind() != redis::ErrorKind::Server(ServerErrorKind::NoScript),
            };
            self.record(command_name(cmd), started, failed);
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let started = Instant::now();
            let result = self
                .inner
                .req_packed_commands(pipeline, offset, count)
                .await;
            let failed = result.as_ref().map_or(true, |vs| vs.iter().any(is_error));
            // A script with look-ups pipelined after it is the script's round trip.
            let label = match pipeline.cmd_iter().next().map(command_name) {
                Some("evalsha") => "evalsha",
                _ => "pipeline",
            };
            self.record(label, started, failed);
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }
}

/// A server's error reply (the connection hands it over as a value; the
/// caller turns it into an error). A script not loaded yet (`NOSCRIPT`) is
/// part of running one: the client loads it and tries again.
fn is_error(v: &Value) -> bool {
    matches!(v, Value::ServerError(e) if e.kind() != Some(ServerErrorKind::NoScript))
}

/// The label of a command: its name if the node uses it, `other` else (a
/// bounded set of series).
fn command_name(cmd: &Cmd) -> &'static str {
    const KNOWN: &[&str] = &[
        "evalsha",
        "eval",
        "script",
        "get",
        "set",
        "del",
        "exists",
        "expire",
        "hget",
        "hgetall",
        "hvals",
        "hset",
        "smembers",
        "sismember",
        "zcard",
        "zrange",
        "zremrangebyscore",
        "xadd",
        "xlen",
        "xdel",
        "xrange",
        "ping",
        "zrevrange",
        "lrange",
        "pexpire",
        "sadd",
        "zadd",
    ];
    let Some(Arg::Simple(name)) = cmd.args_iter().next() else {
        return "other";
    };
    KNOWN
        .iter()
        .find(|k| k.as_bytes().eq_ignore_ascii_case(name))
        .copied()
        .unwrap_or("other")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_named_from_a_closed_set() {
        assert_eq!(command_name(redis::cmd("HGETALL").arg("k")), "hgetall");
        assert_eq!(command_name(&redis::cmd("evalsha")), "evalsha");
        assert_eq!(command_name(redis::cmd("FLUSHALL").arg("x")), "other");
        assert_eq!(command_name(&Cmd::new()), "other");
    }
}
