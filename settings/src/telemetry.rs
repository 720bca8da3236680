//! The rules of the tracing settings (`SB_OTLP_ENDPOINT`,
//! `SB_TRACE_SAMPLE_RATIO`; `spec.tracing` of a `ChatCluster`).

/// The share of messages traced when tracing is on and nothing says otherwise.
pub const DEFAULT_SAMPLE_RATIO: f64 = 0.1;

/// Whether an OTLP/HTTP endpoint (`SB_OTLP_ENDPOINT`, `spec.tracing.endpoint`)
/// is a base `http://` URL: the node posts to `<endpoint>/v1/traces` and has
/// no TLS client (a collector beside the pods takes it from there).
pub fn check_otlp_endpoint(url: &str) -> Result<(), String> {
    crate::commands::check_http_url(url)
}

/// Whether a sample ratio (`SB_TRACE_SAMPLE_RATIO`,
/// `spec.tracing.sampleRatio`) is a share: 0 to 1.
pub fn check_sample_ratio(ratio: f64) -> Result<(), String> {
    if (0.0..=1.0).contains(&ratio) {
        Ok(())
    } else {
        Err("must be 0 to 1".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_are_shares() {
        for ok in [0.0, 0.1, 1.0] {
            assert_eq!(check_sample_ratio(ok), Ok(()), "{ok}");
        }
        for bad in [-0.01, 1.01, f64::NAN, f64::INFINITY] {
            assert!(check_sample_ratio(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn endpoints_are_plain_http_base_urls() {
        assert_eq!(check_otlp_endpoint("http://otel-collector:4318"), Ok(()));
        assert!(check_otlp_endpoint("https://otel-collector:4318").is_err());
        assert!(check_otlp_endpoint("otel-collector:4318").is_err());
    }
}
