//! Commands and requests from backends to a ChatCluster (`docs/integration.md`,
//! "Commands" and "Requests").

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use super::defaults;

/// Whether the nodes read `<prefix>-commands`, how they retry a command that fails for a
/// reason that may pass, and how long they remember the commands they applied.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommandsSpec {
    /// Consume `<prefix>-commands` with the group `<prefix>-commands`.
    #[serde(default = "defaults::yes")]
    pub enabled: bool,
    /// Retries within the node after a failed attempt (seed 002: 3).
    #[serde(default = "defaults::command_retries")]
    #[schemars(range(min = 0, max = 10))]
    pub retries: u32,
    /// Wait before the first retry.
    #[serde(default = "defaults::command_retry_initial")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"), length(max = 32))]
    pub retry_initial: String,
    /// Each further wait is the previous one times this.
    #[serde(default = "defaults::command_retry_multiplier")]
    #[schemars(range(min = 1, max = 10))]
    pub retry_multiplier: u32,
    /// Longest single wait (at most 20s). The waits of all retries together may be at most
    /// 20 s.
    #[serde(default = "defaults::command_retry_max")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"), length(max = 32))]
    pub retry_max: String,
    /// Redeliveries through RocketMQ once the retries within the node failed (after the
    /// broker's delay levels: 10 s, 30 s, 1 min, 2 min ...); after the last, the command
    /// goes to the dead-letter topic `%DLQ%<prefix>-commands` with the reason.
    #[serde(default = "defaults::command_redeliveries")]
    #[schemars(range(min = 0, max = 16))]
    pub redeliveries: u32,
    /// How long an applied command's id is remembered (at least 1h): a delivery of the
    /// same command within it changes nothing.
    #[serde(default = "defaults::command_dedup_ttl")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"), length(max = 32))]
    pub dedup_ttl: String,
}

impl Default for CommandsSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            retries: defaults::command_retries(),
            retry_initial: defaults::command_retry_initial(),
            retry_multiplier: defaults::command_retry_multiplier(),
            retry_max: defaults::command_retry_max(),
            redeliveries: defaults::command_redeliveries(),
            dedup_ttl: defaults::command_dedup_ttl(),
        }
    }
}

/// Whether the nodes answer the request-response API on `<prefix>-requests` (group
/// `<prefix>-api`), and how long a request stays worth executing.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequestsSpec {
    /// Answer requests.
    #[serde(default = "defaults::yes")]
    pub enabled: bool,
    /// How long after a backend sent a request (unless its `deadline_ms` property says
    /// otherwise) a node still executes it; later it answers `timeout`. 1s to 5m.
    #[serde(default = "defaults::request_timeout")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"), length(max = 32))]
    pub timeout: String,
}

impl Default for RequestsSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            timeout: defaults::request_timeout(),
        }
    }
}
