//! `switchboard-node`: see `--help`.

use std::io::IsTerminal;

use anyhow::Context;
use clap::Parser;
use switchboard_node::config::LogFormat;
use switchboard_node::{Config, Node};
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cfg = Config::parse();
    let filter = EnvFilter::try_from_env("SB_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    match cfg.log_format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::stdout().is_terminal())
            .init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init(),
    }
    cfg.validate()
        .map_err(anyhow::Error::msg)
        .context("invalid configuration")?;
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
