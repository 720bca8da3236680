//! The rules of the settings for backends' traffic and moderation: the
//! retry policy of commands (the node's `SB_COMMAND_*`, a `ChatCluster`'s
//! `spec.commands`), the request timeout and the moderation webhook's timeout.

use std::time::Duration;

/// The longest the retries within the node may wait in all: the node's
/// in-order consumer must hand a command back well within the RocketMQ
/// client's 30 s.
pub const MAX_TOTAL_WAIT: Duration = Duration::from_secs(20);
/// Most retries within the node.
pub const MAX_RETRIES: u32 = 10;
/// Most redeliveries through RocketMQ (its delay levels after the first two).
pub const MAX_REDELIVERIES: u32 = 16;
/// Shortest time an applied command's id is remembered.
pub const MIN_DEDUP_TTL: Duration = Duration::from_secs(3600);

/// Whether a request timeout (`SB_REQUEST_TIMEOUT`, `spec.requests.timeout`) is
/// within 1 s to 5 min.
pub fn check_request_timeout(timeout: Duration) -> Result<(), String> {
    if (Duration::from_secs(1)..=Duration::from_secs(300)).contains(&timeout) {
        Ok(())
    } else {
        Err("must be 1s to 5m".into())
    }
}

/// Whether a moderation webhook timeout (`SB_MODERATION_WEBHOOK_TIMEOUT`,
/// `spec.moderation.webhook.timeout`) is within 10 ms to 10 s.
pub fn check_webhook_timeout(timeout: Duration) -> Result<(), String> {
    if (Duration::from_millis(10)..=Duration::from_secs(10)).contains(&timeout) {
        Ok(())
    } else {
        Err("must be 10ms to 10s".into())
    }
}

/// Whether a moderation webhook URL (`SB_MODERATION_WEBHOOK_URL`,
/// `spec.moderation.webhook.url`) is `http://` with a host, without
/// whitespace, at most 2048 bytes (the node has no TLS client).
pub fn check_webhook_url(url: &str) -> Result<(), String> {
    check_http_url(url)
}

/// The rule of every `http://` URL the node calls: a host (and a numeric
/// port, if any), no whitespace, at most 2048 bytes.
pub fn check_http_url(url: &str) -> Result<(), String> {
    let authority = url
        .strip_prefix("http://")
        .map(|rest| rest.split('/').next().unwrap_or(""));
    // `host` or `host:port`; an IPv6 literal in brackets, with or without a port.
    let port_ok = |a: &str| match a.rsplit_once(':') {
        _ if a.ends_with(']') => true,
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok(),
        None => true,
    };
    match authority {
        Some(a) if !a.is_empty() && port_ok(a) && url.len() <= 2048 && !url.contains(char::is_whitespace) => {
            Ok(())
        }
        _ => Err(
            "must be an http:// URL with a host (and a numeric port, if any), at most 2048 bytes (https is not supported)"
                .into(),
        ),
    }
}

/// How a failing command is retried, and how long its id is remembered.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandRetry {
    pub retries: u32,
    pub initial: Duration,
    pub multiplier: f64,
    pub max: Duration,
    pub redeliveries: u32,
    pub dedup_ttl: Duration,
}

/// A broken rule: the node's variable, the spec field, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{env}: {message}")]
pub struct CommandViolation {
    pub env: &'static str,
    pub spec_field: &'static str,
    pub message: String,
}

fn violation(env: &'static str, spec_field: &'static str, message: String) -> CommandViolation {
    CommandViolation {
        env,
        spec_field,
        message,
    }
}

impl CommandRetry {
    /// The waits before each retry within the node: `initial`, then times
    /// `multiplier`, each at most `max`.
    pub fn backoff(&self) -> Vec<Duration> {
        let mut waits = Vec::with_capacity(self.retries.min(MAX_RETRIES) as usize);
        let mut next = self.initial.min(self.max);
        for _ in 0..self.retries.min(MAX_RETRIES) {
            waits.push(next);
            // Saturating: absurd settings are refused by `check`, not a panic.
            next = Duration::try_from_secs_f64(next.as_secs_f64() * self.multiplier.max(0.0))
                .unwrap_or(self.max)
                .min(self.max);
        }
        waits
    }

    pub fn check(&self) -> Result<(), CommandViolation> {
        if self.retries > MAX_RETRIES {
            return Err(violation(
                "SB_COMMAND_RETRIES",
                "spec.commands.retries",
                format!("must be 0 to {MAX_RETRIES}"),
            ));
        }
        if !(1.0..=10.0).contains(&self.multiplier) {
            return Err(violation(
                "SB_COMMAND_RETRY_MULTIPLIER",
                "spec.commands.retryMultiplier",
                "must be 1 to 10".into(),
            ));
        }
        if self.max > MAX_TOTAL_WAIT {
            return Err(violation(
                "SB_COMMAND_RETRY_MAX",
                "spec.commands.retryMax",
                format!("must be at most {MAX_TOTAL_WAIT:?}"),
            ));
        }
        if self.initial > self.max {
            return Err(violation(
                "SB_COMMAND_RETRY_INITIAL",
                "spec.commands.retryInitial",
                "must not exceed the longest wait (SB_COMMAND_RETRY_MAX)".into(),
            ));
        }
        let total = self
            .backoff()
            .iter()
            .fold(Duration::ZERO, |a, b| a.saturating_add(*b));
        if total > MAX_TOTAL_WAIT {
            return Err(violation(
                "SB_COMMAND_RETRIES",
                "spec.commands.retries",
                format!(
                    "the retries within the node would wait {total:?} in all; at most {MAX_TOTAL_WAIT:?} (fewer retries or a shorter longest wait)"
                ),
            ));
        }
        if self.redeliveries > MAX_REDELIVERIES {
            return Err(violation(
                "SB_COMMAND_REDELIVERIES",
                "spec.commands.redeliveries",
                format!("must be 0 to {MAX_REDELIVERIES} (RocketMQ's delay levels)"),
            ));
        }
        if self.dedup_ttl < MIN_DEDUP_TTL {
            return Err(violation(
                "SB_COMMAND_DEDUP_TTL",
                "spec.commands.dedupTtl",
                "must be at least 1h (it must outlast RocketMQ's redeliveries)".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed() -> CommandRetry {
        CommandRetry {
            retries: 3,
            initial: Duration::from_millis(100),
            multiplier: 2.0,
            max: Duration::from_secs(10),
            redeliveries: 2,
            dedup_ttl: Duration::from_secs(72 * 3600),
        }
    }

    #[test]
    fn webhook_urls_are_plain_http_with_a_host() {
        assert_eq!(check_webhook_url("http://moderation:8080/check"), Ok(()));
        assert_eq!(check_webhook_url("http://10.0.0.7"), Ok(()));
        assert_eq!(check_webhook_url("http://mod:8080"), Ok(()));
        assert_eq!(check_webhook_url("http://[::1]:8080/check"), Ok(()));
        assert_eq!(check_webhook_url("http://[::1]/check"), Ok(()));
        for bad in [
            "https://m/check",
            "http:///check",
            "http://",
            "ftp://m",
            "http://m/a b",
            "http://m:port/check",
            "http://m:99999/check",
            "http://:80/check",
        ] {
            assert!(check_webhook_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn seed_schedule_and_its_bounds() {
        let ms = |v: u64| Duration::from_millis(v);
        assert_eq!(seed().backoff(), [ms(100), ms(200), ms(400)]);
        assert!(seed().check().is_ok());
        let capped = CommandRetry {
            retries: 5,
            max: ms(300),
            ..seed()
        };
        assert_eq!(
            capped.backoff(),
            [ms(100), ms(200), ms(300), ms(300), ms(300)]
        );
        let long = CommandRetry {
            retries: 4,
            initial: Duration::from_secs(10),
            ..seed()
        };
        assert_eq!(
            long.check().unwrap_err().spec_field,
            "spec.commands.retries"
        );
        let fast = CommandRetry {
            multiplier: 0.5,
            ..seed()
        };
        assert_eq!(fast.check().unwrap_err().env, "SB_COMMAND_RETRY_MULTIPLIER");
        let short = CommandRetry {
            dedup_ttl: Duration::from_secs(60),
            ..seed()
        };
        assert_eq!(short.check().unwrap_err().env, "SB_COMMAND_DEDUP_TTL");
        let many = CommandRetry {
            redeliveries: 17,
            ..seed()
        };
        assert!(many.check().is_err());
        // Absurd durations are refused, not a panic.
        let huge = Duration::from_secs(u64::MAX / 4);
        let absurd = CommandRetry {
            initial: huge,
            max: huge,
            multiplier: 10.0,
            ..seed()
        };
        assert_eq!(absurd.check().unwrap_err().env, "SB_COMMAND_RETRY_MAX");
        assert_eq!(absurd.backoff().len(), 3);
    }
}
