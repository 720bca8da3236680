//! The moderation webhook: `POST <url>` with the message as JSON
//! ([`super::Candidate`]: `from`, `conversation`, `content`, `format`,
//! `client_msg_id`); the answer, within the timeout, is JSON:
//! `{"action": "allow"}`, `{"action": "reject", "reason": "..."}` or
//! `{"action": "rewrite", "content": "..."}`. Anything else (a timeout, a
//! refused connection, a status other than 200, another body) is a failure,
//! which the node treats as its fail mode says.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;

use super::{Candidate, Verdict};
use crate::metrics::Metrics;

/// Largest answer read.
const MAX_ANSWER: usize = 1024 * 1024;

/// A webhook client.
#[derive(Debug)]
pub struct Webhook {
    url: hyper::Uri,
    timeout: Duration,
    fail_open: bool,
    client: Client<HttpConnector, Full<Bytes>>,
}

#[derive(Deserialize)]
#[serde(tag = "action", rename_all = "lowercase")]
enum Answer {
    Allow,
    Reject {
        #[serde(default)]
        reason: Option<String>,
    },
    Rewrite {
        content: String,
    },
}

impl Webhook {
    /// `url` must be `http://` (a service next to the node; no TLS client here).
    pub fn new(url: &str, timeout: Duration, fail_open: bool) -> Result<Self, String> {
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e| format!("SB_MODERATION_WEBHOOK_URL: {e}"))?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(
                "SB_MODERATION_WEBHOOK_URL must be an http:// URL with a host (https is not supported)"
                    .into(),
            );
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout));
        Ok(Self {
            url: uri,
            timeout,
            fail_open,
            client: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    pub fn fail_open(&self) -> bool {
        self.fail_open
    }

    /// Asks about `msg`; an error is a failure of the webhook.
    pub async fn ask(&self, msg: &Candidate<'_>, metrics: &Metrics) -> Result<Verdict, String> {
        let started = Instant::now();
        let result = tokio::time::timeout(self.timeout, self.call(msg))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {:?}", self.timeout)));
        metrics
            .moderation_webhook
            .observe(started.elapsed().as_secs_f64());
        result
    }

    async fn call(&self, msg: &Candidate<'_>) -> Result<Verdict, String> {
        let body = serde_json::to_vec(msg).map_err(|e| e.to_string())?;
        let req = hyper::Request::post(self.url.clone())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let res = self.client.request(req).await.map_err(|e| e.to_string())?;
        if res.status() != hyper::StatusCode::OK {
            return Err(format!("status {}", res.status()));
        }
        let bytes = Limited::new(res.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let answer: Answer =
            serde_json::from_slice(&bytes).map_err(|e| format!("unreadable answer: {e}"))?;
        Ok(match answer {
            Answer::Allow => Verdict::Allow,
            Answer::Reject { reason } => Verdict::Reject(
                reason.unwrap_or_else(|| "the moderation service refused the message".into()),
            ),
            Answer::Rewrite { content } => Verdict::Rewrite(content),
        })
    }
}
