//! The controller: watches ChatClusters and the objects they own, runs [`reconcile`]
//! for each, behind a leader Lease.

pub mod apply;
mod pods;
mod reconcile;
pub mod topics;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::finalizer::{self, finalizer};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use tracing::{info, warn};

use crate::FINALIZER;
use crate::build::MANAGED_BY;
use crate::config::RunArgs;
use crate::crd::ChatCluster;
use crate::metrics::Metrics;

pub use topics::Brokers;

/// Errors of one reconcile. Invalid specs are not errors: they set a condition.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("RocketMQ: {0}")]
    RocketMq(#[from] switchboard_rocketmq::Error),
    #[error("cannot serialize an object: {0}")]
    Serialize(#[source] serde_json::Error),
    #[error("waiting for pods {0:?} to stop before deleting the cluster's topics")]
    PodsRemain(Vec<String>),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<finalizer::Error<Error>>),
    #[error("object has no namespace")]
    NoNamespace,
}

impl Error {
    /// Bounded metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::RocketMq(_) => "rocketmq",
            Error::Serialize(_) => "serialize",
            Error::PodsRemain(_) => "waiting_for_pods",
            Error::Finalizer(e) => match &**e {
                finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e.kind(),
                _ => "finalizer",
            },
            Error::NoNamespace => "no_namespace",
        }
    }
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub args: RunArgs,
    pub metrics: Arc<Metrics>,
    pub brokers: Brokers,
    pub recorder: Recorder,
    /// Consecutive failures by `namespace/name`, for the backoff.
    failures: Mutex<HashMap<String, u32>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

impl Context {
    pub fn new(client: Client, args: RunArgs, metrics: Arc<Metrics>, brokers: Brokers) -> Self {
        let reporter = Reporter {
            controller: MANAGED_BY.into(),
            instance: args.identity.clone(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            args,
            metrics,
            brokers,
            failures: Mutex::default(),
        }
    }

    fn backoff(&self, key: &str) -> Duration {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = f.entry(key.to_owned()).or_insert(0);
        *n = n.saturating_add(1);
        // 1 s, 2 s, 4 s ... capped at 5 minutes.
        Duration::from_secs(1u64 << (*n - 1).min(8)).min(Duration::from_secs(300))
    }

    fn succeeded(&self, key: &str) {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        f.remove(key);
    }
}

fn key(cc: &ChatCluster) -> String {
    format!("{}/{}", cc.namespace().unwrap_or_default(), cc.name_any())
}

async fn reconcile(cc: Arc<ChatCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile();
    let ns = cc.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<ChatCluster> = Api::namespaced(ctx.client.clone(), &ns);
    let k = key(&cc);
    let action = finalizer(&api, FINALIZER, cc, |event| async {
        match event {
            finalizer::Event::Apply(cc) => reconcile::apply_cluster(cc, &ctx).await,
            finalizer::Event::Cleanup(cc) => reconcile::cleanup_cluster(cc, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))?;
    ctx.succeeded(&k);
    Ok(action)
}

fn error_policy(cc: Arc<ChatCluster>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.failed(error.kind());
    if error.kind() == "waiting_for_pods" {
        info!(cluster = %key(&cc), "{error}");
        return Action::requeue(Duration::from_secs(2));
    }
    let delay = ctx.backoff(&key(&cc));
    warn!(cluster = %key(&cc), error = %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// Runs the controller until `shutdown` resolves.
pub async fn run_controller(
    ctx: Arc<Context>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let (clusters, owned_cfg): (Api<ChatCluster>, _) = match &ctx.args.watch_namespace {
        Some(ns) => (Api::namespaced(client.clone(), ns), Some(ns.clone())),
        None => (Api::all(client.clone()), None),
    };
    fn owned<K>(client: &Client, ns: &Option<String>) -> Api<K>
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        match ns {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    let ours =
        watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGED_BY}"));
    Controller::new(clusters, watcher::Config::default())
        .owns(owned::<StatefulSet>(&client, &owned_cfg), ours.clone())
        .owns(owned::<Service>(&client, &owned_cfg), ours.clone())
        .owns(owned::<ConfigMap>(&client, &owned_cfg), ours.clone())
        .owns(
            owned::<PodDisruptionBudget>(&client, &owned_cfg),
            ours.clone(),
        )
        .owns(owned::<NetworkPolicy>(&client, &owned_cfg), ours)
        .with_config(kube::runtime::controller::Config::default().concurrency(ctx.args.concurrency))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "controller");
            }
        })
        .await;
}
