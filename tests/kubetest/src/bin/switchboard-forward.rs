//! `switchboard-forward --pid PID --listen 127.0.0.1:PORT --to IP:PORT`: forwards a
//! host port into the network namespace of process PID (the real-pod cluster of
//! `scripts/realpods`), so a browser on the host reaches a Service inside. Runs until
//! SIGTERM or Ctrl-C. `scripts/demo` starts it.

use std::net::SocketAddr;

use anyhow::Context as _;
use clap::Parser;
use switchboard_kubetest::{Forward, NetNs};

#[derive(Debug, Parser)]
#[command(about = "Forward a host TCP port into a network namespace")]
struct Args {
    /// A process in the target network namespace.
    #[arg(long)]
    pid: u32,
    /// Host address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Address inside the namespace.
    #[arg(long)]
    to: SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let ns =
        NetNs::of(args.pid).with_context(|| format!("network namespace of pid {}", args.pid))?;
    let fwd = Forward::start(ns, args.listen, args.to)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    eprintln!(
        "forwarding {} -> {} (namespace of pid {})",
        fwd.addr, fwd.target, args.pid
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
