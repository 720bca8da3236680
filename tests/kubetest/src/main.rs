//! `switchboard-kubetest --dir DIR`: runs a test control plane in the foreground for a
//! human (`scripts/controlplane start` wraps it). Writes `DIR/kubeconfig`, then
//! `DIR/env` with the exports to use, and stops everything on SIGTERM or Ctrl-C.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use switchboard_kubetest::{ControlPlane, Options};

#[derive(Debug, Parser)]
#[command(
    about = "Run a real Kubernetes control plane (etcd, apiserver, controllers, scheduler, kwok) on loopback"
)]
struct Args {
    /// Directory for certificates, data, logs and the kubeconfig (kept after stop).
    #[arg(long)]
    dir: PathBuf,
    /// Number of fake kwok nodes.
    #[arg(long, default_value_t = 2)]
    nodes: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // A signal while starting drops the start future, which stops what already runs.
    let cp = tokio::select! {
        cp = ControlPlane::start_with(Options {
            nodes: args.nodes,
            dir: Some(args.dir.clone()),
        }) => cp.context("starting the control plane")?,
        _ = term.recv() => anyhow::bail!("stopped while starting"),
        _ = tokio::signal::ctrl_c() => anyhow::bail!("stopped while starting"),
    };
    let env = format!(
        "export KUBECONFIG={}\nexport PATH={}:\"$PATH\"\n",
        cp.kubeconfig().display(),
        cp.bin_dir().display()
    );
    let env_file = args.dir.join("env");
    std::fs::write(&env_file, &env).with_context(|| format!("writing {}", env_file.display()))?;
    eprintln!(
        "control plane ready in {:.1} s at {} with nodes {:?}; pids {:?}\n{env}",
        cp.started_in().as_secs_f64(),
        cp.server(),
        cp.nodes(),
        cp.pids()
    );

    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    eprintln!("stopping the control plane");
    drop(cp);
    Ok(())
}
