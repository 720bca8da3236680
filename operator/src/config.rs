//! Operator configuration: command-line flags, each with an environment variable (the
//! Helm chart sets the variables).

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Switchboard operator: runs ChatCluster resources on Kubernetes.
#[derive(Debug, Parser)]
#[command(name = "switchboard-operator", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controller (the default).
    Run,
    /// Print the ChatCluster CustomResourceDefinition as YAML.
    Crd,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Address of the HTTP server with /metrics, /healthz and /readyz.
    #[arg(long, env = "SB_OPERATOR_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Chat node image for ChatClusters that name none.
    #[arg(long, env = "SB_NODE_IMAGE", default_value = "")]
    pub node_image: String,

    /// Watch ChatClusters in this namespace only (default: every namespace).
    #[arg(long, env = "SB_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,

    /// Take a Lease before reconciling, so only one replica acts at a time.
    #[arg(long, env = "SB_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,

    /// Namespace of the leader Lease (the operator's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,

    /// Name of the leader Lease.
    #[arg(long, env = "SB_LEASE_NAME", default_value = "switchboard-operator")]
    pub lease_name: String,

    /// This replica's identity in the Lease and in Events (the pod name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,

    /// Lease duration in seconds: how long a dead leader blocks the others.
    #[arg(long, env = "SB_LEASE_SECONDS", default_value_t = 15)]
    pub lease_seconds: u64,

    /// How long a deleted ChatCluster waits for its topics to be deleted (broker down)
    /// before it is let go with a warning event, leaving its topics behind.
    #[arg(long, env = "SB_CLEANUP_TIMEOUT", default_value = "10m", value_parser = humantime::parse_duration)]
    pub cleanup_timeout: Duration,

    /// ChatClusters reconciled at once (0: no limit).
    #[arg(long, env = "SB_CONCURRENCY", default_value_t = 16)]
    pub concurrency: u16,

    /// Log format.
    #[arg(long, env = "SB_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}
