//! The request-response API (seed 000): backends send requests to
//! `<prefix>-requests`, read by the nodes' group `<prefix>-api` (each
//! request answered by one node), and read the answers from
//! `<prefix>-responses`, correlated by `request_id`.
//!
//! - [`actions`]: what each action does, as the user the request names.
//! - [`consumer`]: deadlines, one answer per request id whatever RocketMQ
//!   redelivers, the answer published.
//!
//! The contract for backends is `docs/integration.md` ("Requests").

pub mod actions;
pub mod consumer;

pub use switchboard_events::api::{ApiError, ErrorKind, Request, Response};

use crate::protocol::{ErrorCode, FrameError};

/// Longest `request_id`, in bytes.
pub const MAX_REQUEST_ID: usize = 64;

impl From<FrameError> for ApiError {
    fn from(e: FrameError) -> Self {
        if e.code == ErrorCode::Unavailable {
            Self::system(e.code.as_str(), e.reason)
        } else {
            Self::business(e.code.as_str(), e.reason)
        }
    }
}

impl From<crate::backend::BackendError> for ApiError {
    fn from(e: crate::backend::BackendError) -> Self {
        FrameError::from(e).into()
    }
}

/// Reads a request body; the error is answered (to the `request_id` when
/// one could be read, else the message's key).
pub fn parse(body: &[u8]) -> Result<Request, ApiError> {
    let req: Request = serde_json::from_slice(body).map_err(|e| {
        let code = if e.is_data() && e.to_string().starts_with("missing field") {
            "missing_field"
        } else if e.is_data() {
            "invalid_field"
        } else {
            "malformed_json"
        };
        ApiError::business(code, e.to_string())
    })?;
    check_request_id(&req.request_id)?;
    Ok(req)
}

/// 1 to [`MAX_REQUEST_ID`] bytes of printable ASCII.
pub fn check_request_id(id: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.len() > MAX_REQUEST_ID || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::business(
            "invalid_field",
            format!("`request_id` must be 1 to {MAX_REQUEST_ID} printable ASCII characters"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_request_parses_and_errors_have_classes() {
        let r = parse(
            br#"{"request_id":"req_1234567890","user_id":"user_001","action":"send_message","data":{"message":"Hello, everyone!","room_id":"room_001"}}"#,
        )
        .unwrap();
        assert_eq!(r.action, "send_message");
        assert_eq!(r.data["room_id"], "room_001");
        assert_eq!(parse(b"{").unwrap_err().code, "malformed_json");
        assert_eq!(
            parse(br#"{"user_id":"u","action":"a"}"#).unwrap_err().code,
            "missing_field"
        );
        assert_eq!(
            parse(br#"{"request_id":"a b","user_id":"u","action":"a"}"#)
                .unwrap_err()
                .code,
            "invalid_field"
        );
        let unavailable = ApiError::from(FrameError::new(ErrorCode::Unavailable, "away"));
        assert_eq!(unavailable.kind, ErrorKind::System);
        let member = ApiError::from(FrameError::new(ErrorCode::NotAMember, "no"));
        assert_eq!(member.kind, ErrorKind::Business);
        // Seed 000's response shape.
        let ok =
            serde_json::to_value(Response::ok("r", serde_json::json!({"status": "sent"}))).unwrap();
        assert_eq!(
            ok,
            serde_json::json!({"request_id": "r", "success": true, "data": {"status": "sent"}, "error": null})
        );
    }
}
