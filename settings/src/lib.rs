//! The rules of a chat node's settings, in one place.
//!
//! The node checks its configuration with [`NodeSettings::check`] before it
//! starts; the operator runs the same check on a `ChatCluster` spec before it
//! builds anything, and the CRD's schema and CEL rules state the same bounds
//! (a test in the operator walks each boundary on both sides against a real
//! apiserver). So a spec the cluster accepts never gives a pod that refuses to
//! start, and a spec it refuses says why in the `ChatCluster`'s status.

use std::fmt;
use std::time::Duration;

pub mod commands;
pub mod telemetry;

/// One setting, named as the node's environment and as the `ChatCluster` spec
/// name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    HeartbeatInterval,
    PresenceTtl,
    DrainTimeout,
    TerminationGrace,
    MaxContentBytes,
    MaxFrameBytes,
    RateLimit,
    RateBurst,
    MaxConnections,
    HistoryLimit,
    InboxLimit,
    MaxGroupMembers,
    OutboundBuffer,
    JwtSecret,
}

impl Setting {
    /// The node's environment variable.
    pub fn env(self) -> &'static str {
        match self {
            Self::HeartbeatInterval => "SB_HEARTBEAT_INTERVAL",
            Self::PresenceTtl => "SB_PRESENCE_TTL",
            Self::DrainTimeout => "SB_DRAIN_TIMEOUT",
            Self::TerminationGrace => "SB_TERMINATION_GRACE",
            Self::MaxContentBytes => "SB_MAX_CONTENT_BYTES",
            Self::MaxFrameBytes => "SB_MAX_FRAME_BYTES",
            Self::RateLimit => "SB_RATE_LIMIT",
            Self::RateBurst => "SB_RATE_BURST",
            Self::MaxConnections => "SB_MAX_CONNECTIONS",
            Self::HistoryLimit => "SB_HISTORY_LIMIT",
            Self::InboxLimit => "SB_INBOX_LIMIT",
            Self::MaxGroupMembers => "SB_MAX_GROUP_MEMBERS",
            Self::OutboundBuffer => "SB_OUTBOUND_BUFFER",
            Self::JwtSecret => "SB_JWT_SECRET",
        }
    }

    /// The `ChatCluster` field that sets it; `None` for node-only settings
    /// (the outbound buffer) and secrets, which the operator cannot read.
    pub fn spec_field(self) -> Option<&'static str> {
        Some(match self {
            Self::HeartbeatInterval => "spec.presence.heartbeatInterval",
            Self::PresenceTtl => "spec.presence.ttl",
            Self::DrainTimeout => "spec.drainTimeout",
            Self::TerminationGrace => "spec.terminationGracePeriodSeconds",
            Self::MaxContentBytes => "spec.limits.maxContentBytes",
            Self::MaxFrameBytes => "spec.limits.maxFrameBytes",
            Self::RateLimit => "spec.limits.rateLimit",
            Self::RateBurst => "spec.limits.rateBurst",
            Self::MaxConnections => "spec.limits.maxConnections",
            Self::HistoryLimit => "spec.limits.historyLimit",
            Self::InboxLimit => "spec.limits.inboxLimit",
            Self::MaxGroupMembers => "spec.limits.maxGroupMembers",
            Self::OutboundBuffer | Self::JwtSecret => return None,
        })
    }
}

/// The inclusive bounds of an integer setting. The CRD's `minimum`/`maximum`
/// are these values (checked by a test of the generated schema).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub min: u64,
    pub max: u64,
}

const fn range(min: u64, max: u64) -> Range {
    Range { min, max }
}

impl Setting {
    /// Bounds of the integer settings.
    pub fn range(self) -> Option<Range> {
        Some(match self {
            Self::TerminationGrace => range(5, 3600),
            Self::MaxContentBytes => range(1, 1 << 20),
            Self::MaxFrameBytes => range(256, 16 << 20),
            Self::RateLimit | Self::RateBurst => range(1, 100_000),
            Self::MaxConnections => range(1, 10_000_000),
            Self::HistoryLimit | Self::InboxLimit => range(1, 1_000_000),
            Self::MaxGroupMembers => range(2, 100_000),
            Self::OutboundBuffer => range(16, 1 << 20),
            _ => return None,
        })
    }
}

/// Shortest heartbeat interval: below it the heartbeats and idle checks cost
/// more than they tell.
pub const MIN_HEARTBEAT: Duration = Duration::from_secs(1);
/// Shortest JWT secret: HS256 with fewer bytes is guessable.
pub const MIN_JWT_SECRET_BYTES: usize = 16;

/// Pause of the pod's preStop hook before SIGTERM, so endpoints stop sending
/// new clients before the node starts draining.
pub const PRE_STOP_PAUSE: Duration = Duration::from_secs(5);
/// After the drain timeout the node closes the connections left and waits at
/// most this long for their cleanup (registry removal).
pub const CLOSE_BUDGET: Duration = Duration::from_secs(5);
/// Then it waits at most this long for its bus outbox to reach the broker.
pub const FLUSH_BUDGET: Duration = Duration::from_secs(5);

/// Whole seconds from the preStop hook to the end of the node's shutdown, at
/// most: preStop pause + drain + close + flush. The grace period must be
/// longer, or the kubelet's SIGKILL can land before the outbox is flushed.
/// (Whole seconds of the drain timeout, as the CRD's CEL rule counts them.)
pub fn shutdown_secs(drain: Duration) -> u64 {
    PRE_STOP_PAUSE.as_secs() + drain.as_secs() + CLOSE_BUDGET.as_secs() + FLUSH_BUDGET.as_secs()
}

/// A setting out of its bounds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Violation {
    pub setting: Setting,
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.setting.env(), self.message)
    }
}

impl Violation {
    /// The message with the spec's field name instead of the variable's.
    pub fn for_spec(&self) -> (&'static str, &str) {
        (
            self.setting.spec_field().unwrap_or(self.setting.env()),
            &self.message,
        )
    }
}

/// Every checked setting of a node. Integer fields are `u64` so that both the
/// node's `usize`/`u32` and the CRD's integers convert without loss.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSettings {
    pub heartbeat_interval: Duration,
    pub presence_ttl: Duration,
    pub drain_timeout: Duration,
    /// The pod's termination grace period, when the node runs in one (the
    /// operator renders it); standalone nodes have none.
    pub termination_grace: Option<Duration>,
    pub max_content_bytes: u64,
    pub max_frame_bytes: u64,
    pub rate_limit: u64,
    pub rate_burst: u64,
    pub max_connections: u64,
    pub history_limit: u64,
    pub inbox_limit: u64,
    pub max_group_members: u64,
    pub outbound_buffer: u64,
}

fn violation(setting: Setting, message: impl Into<String>) -> Violation {
    Violation {
        setting,
        message: message.into(),
    }
}

fn in_range(setting: Setting, value: u64) -> Result<(), Violation> {
    match setting.range() {
        Some(r) if value < r.min || value > r.max => Err(violation(
            setting,
            format!("{value} is out of range: {}..={}", r.min, r.max),
        )),
        _ => Ok(()),
    }
}

impl NodeSettings {
    /// The first rule `self` breaks, if any. The order is fixed (ranges
    /// first, then the rules between settings) so messages are stable.
    pub fn check(&self) -> Result<(), Violation> {
        use Setting as S;
        if let Some(g) = self.termination_grace {
            in_range(S::TerminationGrace, g.as_secs())?;
        }
        for (s, v) in [
            (S::MaxContentBytes, self.max_content_bytes),
            (S::MaxFrameBytes, self.max_frame_bytes),
            (S::RateLimit, self.rate_limit),
            (S::RateBurst, self.rate_burst),
            (S::MaxConnections, self.max_connections),
            (S::HistoryLimit, self.history_limit),
            (S::InboxLimit, self.inbox_limit),
            (S::MaxGroupMembers, self.max_group_members),
            (S::OutboundBuffer, self.outbound_buffer),
        ] {
            in_range(s, v)?;
        }
        if self.max_content_bytes >= self.max_frame_bytes {
            return Err(violation(
                S::MaxContentBytes,
                "must be less than the largest frame (maxFrameBytes): a message travels in a frame with its JSON around it",
            ));
        }
        if self.rate_burst < self.rate_limit {
            return Err(violation(
                S::RateBurst,
                "must be at least the rate limit (rateLimit)",
            ));
        }
        if self.heartbeat_interval < MIN_HEARTBEAT {
            return Err(violation(S::HeartbeatInterval, "must be at least 1s"));
        }
        if self.heartbeat_interval >= self.presence_ttl {
            return Err(violation(
                S::HeartbeatInterval,
                "must be shorter than the presence TTL (presence.ttl)",
            ));
        }
        if self.drain_timeout.is_zero() {
            return Err(violation(S::DrainTimeout, "must be more than zero"));
        }
        if let Some(g) = self.termination_grace {
            let needs = shutdown_secs(self.drain_timeout);
            if needs >= g.as_secs() {
                return Err(violation(
                    S::DrainTimeout,
                    format!(
                        "the shutdown takes up to {needs}s ({}s preStop + drainTimeout + {}s close + {}s outbox flush), which must be shorter than the termination grace period ({}s)",
                        PRE_STOP_PAUSE.as_secs(),
                        CLOSE_BUDGET.as_secs(),
                        FLUSH_BUDGET.as_secs(),
                        g.as_secs()
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Checks a JWT secret (the node's; the operator cannot read Secrets).
pub fn check_jwt_secret(secret: &str) -> Result<(), Violation> {
    if secret.len() < MIN_JWT_SECRET_BYTES {
        return Err(violation(
            Setting::JwtSecret,
            format!("must be at least {MIN_JWT_SECRET_BYTES} bytes"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn ok() -> NodeSettings {
        NodeSettings {
            heartbeat_interval: Duration::from_secs(30),
            presence_ttl: Duration::from_secs(300),
            drain_timeout: Duration::from_secs(20),
            termination_grace: Some(Duration::from_secs(40)),
            max_content_bytes: 4096,
            max_frame_bytes: 65536,
            rate_limit: 30,
            rate_burst: 60,
            max_connections: 100_000,
            history_limit: 1000,
            inbox_limit: 10_000,
            max_group_members: 1000,
            outbound_buffer: 512,
        }
    }

    fn fails(f: impl FnOnce(&mut NodeSettings)) -> Setting {
        let mut s = ok();
        f(&mut s);
        s.check().expect_err("should fail").setting
    }

    fn passes(f: impl FnOnce(&mut NodeSettings)) {
        let mut s = ok();
        f(&mut s);
        if let Err(e) = s.check() {
            panic!("should pass: {e}");
        }
    }

    #[test]
    fn each_rule_on_both_sides() {
        use Setting as S;
        passes(|_| {});
        passes(|s| s.max_content_bytes = 65535);
        assert_eq!(fails(|s| s.max_content_bytes = 65536), S::MaxContentBytes);
        passes(|s| s.rate_burst = 30);
        assert_eq!(fails(|s| s.rate_burst = 29), S::RateBurst);
        passes(|s| s.heartbeat_interval = Duration::from_secs(1));
        assert_eq!(
            fails(|s| s.heartbeat_interval = Duration::from_millis(999)),
            S::HeartbeatInterval
        );
        passes(|s| s.heartbeat_interval = Duration::from_secs(299));
        assert_eq!(
            fails(|s| s.heartbeat_interval = Duration::from_secs(300)),
            S::HeartbeatInterval
        );
        // 5 + 24 + 5 + 5 = 39 < 40; 40 is not.
        passes(|s| s.drain_timeout = Duration::from_secs(24));
        assert_eq!(
            fails(|s| s.drain_timeout = Duration::from_secs(25)),
            S::DrainTimeout
        );
        passes(|s| {
            s.termination_grace = None;
            s.drain_timeout = Duration::from_secs(3600);
        });
        assert_eq!(fails(|s| s.drain_timeout = Duration::ZERO), S::DrainTimeout);
        passes(|s| s.max_group_members = 2);
        assert_eq!(fails(|s| s.max_group_members = 1), S::MaxGroupMembers);
        assert_eq!(fails(|s| s.max_connections = 0), S::MaxConnections);
        assert_eq!(fails(|s| s.outbound_buffer = 15), S::OutboundBuffer);
        assert_eq!(
            fails(|s| s.max_frame_bytes = (16 << 20) + 1),
            S::MaxFrameBytes
        );
        assert_eq!(
            fails(|s| s.termination_grace = Some(Duration::from_secs(4))),
            S::TerminationGrace
        );
    }

    #[test]
    fn messages_name_the_variable_or_the_field() {
        let mut s = ok();
        s.rate_burst = 1;
        let v = s.check().unwrap_err();
        assert!(v.to_string().starts_with("SB_RATE_BURST: "));
        assert_eq!(v.for_spec().0, "spec.limits.rateBurst");
        assert!(check_jwt_secret("short").is_err());
        assert!(check_jwt_secret("0123456789abcdef").is_ok());
    }
}
