//! The business event streams of a ChatCluster (`docs/integration.md`).

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use super::defaults;

/// Which business streams the nodes publish, and how far their outbox may grow while
/// RocketMQ is away.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventStreamsSpec {
    /// Publish `<prefix>-events`: `message_sent`, `message_read`, `message_recalled`,
    /// `message_moderated`, `user_join`, `user_leave` and the group membership events (seed
    /// 000's format).
    #[serde(default = "defaults::yes")]
    pub events: bool,
    /// Publish `<prefix>-cluster-events`: `C2C_SEND_MSG`, `C2C_OFF_LINE_MSG`,
    /// `C2C_CLIENT_RECEIVED_ACK`, `C2C_WITHDRAW_MSG` and their group counterparts (seed
    /// 001's format). With both streams off the outbox is not written.
    #[serde(default = "defaults::yes")]
    pub cluster_events: bool,
    /// Outbox entries (about one per accepted message) that may wait in Redis for
    /// RocketMQ, all shards together; past it sends are refused with `unavailable` rather
    /// than events dropped.
    #[serde(default = "defaults::outbox_limit")]
    #[schemars(range(min = 16, max = 100000000))]
    pub outbox_limit: u32,
}

impl Default for EventStreamsSpec {
    fn default() -> Self {
        Self {
            events: true,
            cluster_events: true,
            outbox_limit: defaults::outbox_limit(),
        }
    }
}
