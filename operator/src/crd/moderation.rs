//! Moderation of a ChatCluster's messages (`docs/operations.md`, "Moderation").

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::defaults;

/// Before a message is stored: word and pattern rules, and an HTTP webhook. Off when
/// neither is set.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModerationSpec {
    /// Rules from a key of a ConfigMap in the ChatCluster's namespace: one word or phrase
    /// per line (matched case-insensitively), `/.../` a regular expression, `#` a
    /// comment. The ConfigMap is mounted as a volume: an edit reaches the pods within
    /// about a minute and the nodes read it again, without a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub words: Option<ConfigMapKeyRef>,
    /// What a rule's match does: `Mask` (each matched character becomes `*`, the
    /// message is stored) or `Reject` (the sender gets `moderated`).
    #[serde(default)]
    pub words_action: WordsAction,
    /// An `http://` service asked about every message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookSpec>,
}

/// A key of a ConfigMap in the ChatCluster's namespace.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapKeyRef {
    /// Name of the ConfigMap.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the ConfigMap.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// What a word rule's match does.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq, JsonSchema)]
pub enum WordsAction {
    #[default]
    Mask,
    Reject,
}

impl WordsAction {
    /// The node's `SB_MODERATION_WORDS_ACTION`.
    pub fn as_env(self) -> &'static str {
        match self {
            Self::Mask => "mask",
            Self::Reject => "reject",
        }
    }
}

/// The moderation webhook.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookSpec {
    /// `http://host[:port]/path`.
    #[schemars(regex(pattern = r"^http://[^\s/]+(/\S*)?$"), length(max = 2048))]
    pub url: String,
    /// How long it may take (10ms to 10s).
    #[serde(default = "defaults::webhook_timeout")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"), length(max = 32))]
    pub timeout: String,
    /// When it fails (no answer in time, an error): `true` stores the message,
    /// `false` refuses it with `unavailable` (the sender resends).
    #[serde(default)]
    pub fail_open: bool,
}
