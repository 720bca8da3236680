//! The request-response API (seed 000): what a backend sends to
//! `PREFIX-requests` and reads from `PREFIX-responses`.
//!
//! Request properties: `request_id`, `user_id`, `action` (seed 000), and
//! optionally `deadline_ms` (ms since the Unix epoch; default: 10 s after
//! sending). Response properties: `request_id`, `response_type` (the action,
//! or `error`); the message key is the request id.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Message property of requests and responses: the correlation id.
pub const PROPERTY_REQUEST_ID: &str = "request_id";
/// Request property: the action.
pub const PROPERTY_ACTION: &str = "action";
/// Request property: when the request stops being worth executing, ms
/// since the Unix epoch.
pub const PROPERTY_DEADLINE_MS: &str = "deadline_ms";
/// Response property: the action answered, or `error`.
pub const PROPERTY_RESPONSE_TYPE: &str = "response_type";

/// A request (seed 000).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub request_id: String,
    pub user_id: String,
    pub action: String,
    #[serde(default)]
    pub data: Value,
}

/// The answer (seed 000): `data` on success, `error` otherwise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub request_id: String,
    pub success: bool,
    pub data: Value,
    pub error: Option<ApiError>,
}

/// Seed 000's two classes of errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorKind {
    /// The request cannot succeed as sent (not a member, a bad field...):
    /// sending it again changes nothing.
    Business,
    /// The service could not answer it now (storage away, deadline passed):
    /// a new request may succeed.
    System,
}

/// Why a request failed: a stable code, its class and a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub code: String,
    pub kind: ErrorKind,
    pub message: String,
}

impl ApiError {
    pub fn business(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.to_owned(),
            kind: ErrorKind::Business,
            message: message.into(),
        }
    }

    pub fn system(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.to_owned(),
            kind: ErrorKind::System,
            message: message.into(),
        }
    }
}

impl Response {
    pub fn ok(request_id: &str, data: Value) -> Self {
        Self {
            request_id: request_id.to_owned(),
            success: true,
            data,
            error: None,
        }
    }

    pub fn failed(request_id: &str, error: ApiError) -> Self {
        Self {
            request_id: request_id.to_owned(),
            success: false,
            data: Value::Null,
            error: Some(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_shapes_round_trip() {
        let seed_request = r#"{
  "request_id": "req_1234567890",
  "user_id": "user_001",
  "action": "send_message",
  "data": {
    "message": "Hello, everyone!",
    "room_id": "room_001"
  }
}"#;
        let r: Request = serde_json::from_str(seed_request).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.data["room_id"], "room_001");
        let seed_response = r#"{
  "request_id": "req_1234567890",
  "success": true,
  "data": {
    "message_id": "msg_1234567890",
    "status": "sent"
  },
  "error": null
}"#;
        let a: Response = serde_json::from_str(seed_response).unwrap_or_else(|e| panic!("{e}"));
        assert!(a.success && a.error.is_none());
        let again: Value = serde_json::to_value(&a).unwrap_or_default();
        let seed: Value = serde_json::from_str(seed_response).unwrap_or_default();
        assert_eq!(again, seed);
        let failed = Response::failed("r", ApiError::system("timeout", "late"));
        assert_eq!(
            serde_json::to_value(failed).unwrap_or_default(),
            serde_json::json!({"request_id": "r", "success": false, "data": null,
                "error": {"code": "timeout", "kind": "system", "message": "late"}})
        );
    }
}
