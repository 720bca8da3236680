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

    /// RocketMQ ACL access key (ACL 2.0 user name) for the topic and group
    /// administration, on every name server; set together with
    /// SB_ROCKETMQ_SECRET_KEY when the brokers enforce ACL. The user must be allowed to
    /// create and delete topics and groups (a super user).
    #[arg(long, env = "SB_ROCKETMQ_ACCESS_KEY")]
    pub rocketmq_access_key: Option<String>,

    /// RocketMQ ACL secret key (the user's password). Never logged.
    #[arg(long, env = "SB_ROCKETMQ_SECRET_KEY", hide_env_values = true)]
    pub rocketmq_secret_key: Option<Hidden>,

    /// Log format.
    #[arg(long, env = "SB_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

impl RunArgs {
    /// The RocketMQ ACL credentials of the admin calls: both keys or neither.
    pub fn rocketmq_credentials(
        &self,
    ) -> Result<Option<switchboard_rocketmq::Credentials>, String> {
        switchboard_rocketmq::Credentials::from_parts(
            self.rocketmq_access_key.as_deref(),
            self.rocketmq_secret_key.as_ref().map(|s| s.0.as_str()),
        )
        .map_err(|e| format!("SB_ROCKETMQ_ACCESS_KEY / SB_ROCKETMQ_SECRET_KEY: {e}"))
    }
}

/// A value that `Debug` never shows (a secret in the arguments).
#[derive(Clone, PartialEq, Eq)]
pub struct Hidden(String);

impl std::str::FromStr for Hidden {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

impl std::fmt::Debug for Hidden {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn args(extra: &[&str]) -> RunArgs {
        Cli::parse_from(["switchboard-operator"].iter().chain(extra)).run
    }

    #[test]
    fn rocketmq_credentials_are_both_keys_or_none_and_the_secret_never_shows() {
        assert!(args(&[]).rocketmq_credentials().unwrap().is_none());
        let both = args(&[
            "--rocketmq-access-key",
            "ops",
            "--rocketmq-secret-key",
            "very-secret-91",
        ]);
        let c = both.rocketmq_credentials().unwrap().unwrap();
        assert_eq!(c.access_key(), "ops");
        assert!(!format!("{both:?} {c:?}").contains("very-secret-91"));
        let half = args(&["--rocketmq-secret-key", "very-secret-91"]);
        let e = half.rocketmq_credentials().unwrap_err();
        assert!(
            e.contains("SB_ROCKETMQ_ACCESS_KEY") && !e.contains("very-secret-91"),
            "{e}"
        );
    }
}
