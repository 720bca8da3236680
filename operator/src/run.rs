//! The operator process: HTTP server for metrics and probes, leader election, the
//! controller, graceful shutdown on SIGTERM or Ctrl-C.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::RunArgs;
use crate::controller::{self, Brokers, Context};
use crate::metrics::Metrics;

/// Runs until SIGTERM/Ctrl-C, or until leadership is lost (then it exits with an error,
/// and the Deployment starts it again as a follower).
pub async fn run(args: RunArgs, metrics: Arc<Metrics>) -> anyhow::Result<()> {
    crate::install_crypto_provider();
    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in-cluster or KUBECONFIG)")?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    info!(listen = %args.listen, "serving /metrics, /healthz, /readyz");
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .with_state(metrics.clone());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut http_stop = stop_rx.clone();
    let http = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = http_stop.wait_for(|s| *s).await;
            })
            .await
    });
    tokio::spawn(async move {
        shutdown_signal().await;
        info!("shutting down");
        let _ = stop_tx.send(true);
    });

    let credentials = args
        .rocketmq_credentials()
        .map_err(|e| anyhow::anyhow!("RocketMQ credentials: {e}"))?;
    let rt =
        switchboard_rocketmq::Runtime::new().context("starting the RocketMQ client runtime")?;
    let identity = args
        .identity
        .clone()
        .unwrap_or_else(|| format!("switchboard-operator-{}", std::process::id()));
    let ctx = Arc::new(Context::new(
        client.clone(),
        RunArgs {
            identity: Some(identity.clone()),
            ..args.clone()
        },
        metrics.clone(),
        Brokers::new(rt.clone(), credentials),
    ));

    let result = if args.leader_election {
        lead_then_run(
            client,
            &args,
            identity,
            ctx.clone(),
            stop_rx.clone(),
            &metrics,
        )
        .await
    } else {
        metrics.leader.set(1);
        let mut stop = stop_rx.clone();
        controller::run_controller(ctx.clone(), async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await;
        Ok(())
    };
    metrics.leader.set(0);
    ctx.brokers.shutdown().await;
    rt.shutdown().await;
    let _ = http.await;
    result
}

async fn lead_then_run(
    client: Client,
    args: &RunArgs,
    identity: String,
    ctx: Arc<Context>,
    mut stop: watch::Receiver<bool>,
    metrics: &Metrics,
) -> anyhow::Result<()> {
    let manager = LeaseManagerBuilder::new(client, &args.lease_name)
        .with_namespace(&args.lease_namespace)
        .with_identity(&identity)
        .with_duration(args.lease_seconds)
        .with_grace(args.lease_seconds.div_ceil(3).max(1))
        .build()
        .await
        .context("setting up the leader Lease")?;
    let (mut leader, lease_task) = manager.watch().await;
    info!(lease = %format!("{}/{}", args.lease_namespace, args.lease_name), %identity, "waiting for the leader lease");
    let won = tokio::select! {
        r = leader.wait_for(|l| *l) => { r.context("the lease manager stopped")?; true }
        _ = stop.wait_for(|s| *s) => false,
    };
    if !won {
        drop(leader);
        let _ = lease_task.await;
        return Ok(());
    }
    info!("leading: starting the controller");
    metrics.leader.set(1);
    let mut lost = leader.clone();
    let (lost_tx, mut lost_rx) = watch::channel(false);
    let mut stop2 = stop.clone();
    controller::run_controller(ctx, async move {
        tokio::select! {
            _ = lost.wait_for(|l| !*l) => { let _ = lost_tx.send(true); }
            _ = stop2.wait_for(|s| *s) => {}
        }
    })
    .await;
    let lost_lead = *lost_rx.borrow_and_update();
    // Dropping the receivers makes the lease task release the lease.
    drop(leader);
    match tokio::time::timeout(Duration::from_secs(5), lease_task).await {
        Ok(Ok(Ok(_))) => {}
        Ok(Ok(Err(e))) => warn!(error = %e, "releasing the lease"),
        Ok(Err(e)) => warn!(error = %e, "lease task"),
        Err(_) => warn!("releasing the lease timed out"),
    }
    if lost_lead {
        anyhow::bail!("lost the leader lease; exiting so that only one replica acts");
    }
    Ok(())
}

async fn metrics_text(
    State(m): State<Arc<Metrics>>,
) -> ([(&'static str, &'static str); 1], String) {
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.encode(),
    )
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
