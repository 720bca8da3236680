//! `switchboard-node`: see `--help`.

use std::io::IsTerminal;

use anyhow::Context;
use clap::Parser;
use switchboard_node::config::LogFormat;
use switchboard_node::telemetry;
use switchboard_node::{Config, Node};
use tracing::{info, warn};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _, fmt};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cfg = Config::parse();
    // The log: SB_LOG's filter, without the spans exported as traces.
    let filter = EnvFilter::try_from_env("SB_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info"))
        .add_directive(format!("{}=off", telemetry::TARGET).parse()?);
    let log = match cfg.log_format {
        LogFormat::Text => fmt::layer()
            .with_ansi(std::io::stdout().is_terminal())
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => fmt::layer().json().with_filter(filter).boxed(),
    };
    let (traces, exporter) = match &cfg.tracing.endpoint {
        Some(endpoint) if cfg.validate().is_ok() => {
            let settings = telemetry::TraceSettings {
                endpoint: endpoint.clone(),
                sample_ratio: cfg.tracing.sample_ratio,
                instance: cfg.pod_name.clone(),
                cluster: cfg.cluster_name.clone(),
            };
            let (layer, exporter) = telemetry::layer(&settings)
                .map_err(anyhow::Error::msg)
                .context("invalid configuration")?;
            (Some(layer), Some(exporter))
        }
        _ => (None, None),
    };
    tracing_subscriber::registry().with(log).with(traces).init();
    let result = serve(cfg).await;
    if let Some(exporter) = exporter {
        // On every way out: the exporter's own thread sends what is buffered.
        tokio::task::spawn_blocking(move || exporter.shutdown()).await?;
    }
    result
}

/// Checks the configuration, starts the node and serves until a signal.
async fn serve(cfg: Config) -> anyhow::Result<()> {
    cfg.validate()
        .map_err(anyhow::Error::msg)
        .context("invalid configuration")?;
    if let Some(endpoint) = &cfg.tracing.endpoint {
        info!(
            endpoint,
            sample_ratio = cfg.tracing.sample_ratio,
            "exporting traces over OTLP/HTTP"
        );
    }
    if cfg.dev_auth_enabled() {
        warn!(
            "DEV MODE IS ON: any client can connect as any user with ?userId=. Set SB_JWT_SECRET and SB_DEV_AUTH=false in production."
        );
        if cfg.admin_token.is_none() {
            warn!(
                "DEV MODE: the admin API (/api/v1/*: groups, presence, online users) is OPEN to anyone who can reach this port. Set SB_ADMIN_TOKEN to require a token."
            );
        }
    } else if cfg.admin_token.is_none() {
        info!("the admin API is off (no SB_ADMIN_TOKEN): /api/v1/* answers 403 admin_disabled");
    }
    let listen = cfg.listen;
    let backends = match (&cfg.redis_url, &cfg.rocketmq_namesrv) {
        (None, _) => "memory",
        (Some(_), None) => "redis, in-memory bus (one pod)",
        (Some(_), Some(_)) => "redis + rocketmq",
    };
    let node = Node::from_config(cfg).await.map_err(anyhow::Error::msg)?;
    let listener =
        switchboard_node::bind(listen).with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    info!(
        pod = %node.pod.name,
        ordinal = node.pod.ordinal,
        backends,
        "switchboard-node listening on http://{addr} (web page at /, WebSocket at /ws)"
    );
    switchboard_node::run(listener, node, shutdown_signal()).await?;
    info!("stopped");
    Ok(())
}

/// Resolves on SIGTERM (Kubernetes) or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    info!("shutdown signal received");
}
