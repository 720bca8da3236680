//! The threads the RocketMQ client runs on.

use std::future::Future;
use std::sync::Arc;

use rocketmq_client_rust::{ClientRuntime, ClientRuntimeConfig, TelemetryHandle};
use rocketmq_runtime::{ChildServiceContext, RuntimeConfig, RuntimeOwner, TaskKind};
use tokio::sync::oneshot;

use crate::Error;

/// Worker threads of the client's own Tokio runtime. The client's work is network I/O
/// and bookkeeping, off the application's runtime. One thread: profiled on two nodes
/// at 100 msg/s, two workers spent most of their time waking each other (epoll,
/// eventfd, futex); with one, node CPU per message fell by a quarter
/// (docs/benchmarks.md, "Where the time goes").
const WORKER_THREADS: usize = 1;
/// Consumers call message handlers on the runtime's "metadata I/O" blocking lane, one
/// thread per handler call. The profile for 2 cores allows 4 at a time (and queues 16,
/// rejecting the rest after 5 s), which would cap every consumer together at 4
/// messages in flight; each consumer alone runs up to 20 handlers at once. Measured:
/// 60 handlers of 500 ms took 9.2 s with the profile's lane, 3.2 s with this one.
const HANDLER_THREADS: usize = 64;
const HANDLER_QUEUE: usize = 1024;

/// A dedicated Tokio runtime that runs every RocketMQ client built from it
/// ([`crate::Admin`], [`crate::Producer`], [`crate::Consumer`]).
///
/// The RocketMQ client insists on owning its runtime (`RuntimeOwner`), and its
/// connections and background tasks (route refresh, heartbeats, rebalance, pulls) live
/// there. Every call this crate makes into the client is spawned onto that runtime and
/// awaited through a channel, so the caller may await it from any runtime (the node's
/// `#[tokio::main]`, a `#[tokio::test]`) without a connection being tied to the caller's.
///
/// Cheap to clone. Shut clients down first, then the runtime ([`Runtime::shutdown`]);
/// dropping the last clone without that stops the threads in the background.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

struct Inner {
    // Field order matters for the implicit drop: clients first, then the owner.
    client: Arc<ClientRuntime>,
    tasks: ChildServiceContext,
    owner: RuntimeOwner,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").finish_non_exhaustive()
    }
}

impl Runtime {
    /// Starts the runtime's threads. May be called inside or outside a Tokio runtime.
    pub fn new() -> Result<Self, Error> {
        let mut config = RuntimeConfig::for_parallelism("rocketmq-client", WORKER_THREADS)
            .with_max_blocking_threads(HANDLER_THREADS + 32)
            .map_err(|e| Error::Runtime(e.to_string()))?;
        config.blocking_lane_policies.metadata_io.max_concurrency = HANDLER_THREADS;
        config.blocking_lane_policies.metadata_io.max_queue_depth = HANDLER_QUEUE;
        let owner = RuntimeOwner::plan(config)
            .map_err(|e| Error::Runtime(e.to_string()))?
            .build()
            .map_err(|e| Error::Runtime(e.to_string()))?;
        let client = ClientRuntime::try_new(
            owner.root_context().component("client"),
            ClientRuntimeConfig::default(),
            TelemetryHandle::noop(),
        )
        .map_err(Error::client("create client runtime"))?;
        let tasks = owner.root_context().component("switchboard");
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                tasks,
                owner,
            }),
        })
    }

    pub(crate) fn client(&self) -> Arc<ClientRuntime> {
        Arc::clone(&self.inner.client)
    }

    /// Runs `future` on the client's runtime; the returned future waits for its output.
    ///
    /// Not an `async fn` on purpose: `future` is spawned at once, so the caller's future
    /// holds only a channel, not the client's deeply nested futures (which would make
    /// every crate that awaits this one raise its `recursion_limit`).
    pub(crate) fn run<F, T>(
        &self,
        what: &'static str,
        future: F,
    ) -> impl Future<Output = Result<T, Error>> + Send + use<F, T>
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let spawned = self.inner.tasks.spawn(what, TaskKind::Worker, async move {
            // The receiver is gone only when the caller stopped waiting.
            let _ = tx.send(future.await);
        });
        async move {
            spawned.map_err(|_| Error::Shutdown)?;
            rx.await.map_err(|_| Error::Shutdown)
        }
    }

    /// Stops every client built from this runtime that is still running, then the
    /// runtime's threads. Each of the two steps waits at most 30 seconds (the client's
    /// and the runtime's own shutdown bounds).
    pub async fn shutdown(self) {
        let inner = Arc::clone(&self.inner);
        let client = self
            .run("client runtime shutdown", async move {
                inner.client.shutdown().await.is_healthy()
            })
            .await;
        // Not from a task of the owner: its shutdown waits for all of them to end.
        let tasks = self.inner.owner.shutdown_tasks().await.is_healthy();
        if !matches!(client, Ok(true)) || !tasks {
            tracing::warn!(
                ?client,
                tasks,
                "RocketMQ client runtime did not shut down cleanly"
            );
        }
        // Dropping the owner shuts its Tokio runtime down in the background, which is
        // allowed from async code (a blocking shutdown is not).
        drop(self);
    }
}
