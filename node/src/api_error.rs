//! The HTTP API's error: a status and a JSON body `{code, reason}`, from
//! the chat core's and the backends' errors. Its own module: the HTTP routes
//! and the WebSocket upgrade both answer with it.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::backend::BackendError;
use crate::protocol::ErrorCode;

/// An HTTP error: a status and a JSON body `{code, reason}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: ErrorCode,
    reason: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, reason: impl Into<String>) -> Self {
        Self {
            status,
            code,
            reason: reason.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"code": self.code, "reason": self.reason})),
        )
            .into_response()
    }
}

impl From<BackendError> for ApiError {
    fn from(e: BackendError) -> Self {
        let (status, code) = match &e {
            BackendError::Unavailable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable)
            }
            BackendError::InboxFull(_) => (StatusCode::CONFLICT, ErrorCode::InboxFull),
            BackendError::NoSuchGroup(_) => (StatusCode::NOT_FOUND, ErrorCode::NotFound),
            BackendError::GroupExists(_) => (StatusCode::CONFLICT, ErrorCode::Conflict),
            BackendError::GroupFull(..) => {
                (StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::InvalidField)
            }
        };
        let reason = match &e {
            BackendError::Unavailable(_) => "storage is unavailable".to_owned(),
            other => other.to_string(),
        };
        ApiError::new(status, code, reason)
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidField,
            r.body_text(),
        )
    }
}

impl From<crate::protocol::FrameError> for ApiError {
    fn from(e: crate::protocol::FrameError) -> Self {
        let status = match e.code {
            ErrorCode::UnknownMessage | ErrorCode::NotAMember => StatusCode::NOT_FOUND,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        ApiError::new(status, e.code, e.reason)
    }
}
