//! What can go wrong starting or driving a control plane.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}: {1}")]
    Io(PathBuf, #[source] std::io::Error),
    #[error("cannot start {0}: {1}")]
    Spawn(PathBuf, #[source] std::io::Error),
    #[error("certificates: {0}")]
    Certs(String),
    #[error("{name} exited ({status}); last log lines:\n{log}")]
    Exited {
        name: &'static str,
        status: String,
        log: String,
    },
    #[error("{what} not ready after {after:?}; last log lines:\n{log}")]
    Timeout {
        what: String,
        after: Duration,
        log: String,
    },
    #[error("control plane binaries: {0}")]
    Binaries(String),
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
    #[error(transparent)]
    Kube(#[from] kube::Error),
}

impl Error {
    /// A process exited because its port was taken between picking and binding it.
    pub fn is_port_clash(&self) -> bool {
        matches!(self, Error::Exited { log, .. } if log.contains("address already in use"))
    }
}
