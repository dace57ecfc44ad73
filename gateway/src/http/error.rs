//! The one error shape of the HTTP API: `{"error": {"code", "message"}}`,
//! where `code` is the protocol's numeric [`ErrorCode`] (so an HTTP client
//! and a socket client act on the same numbers) and the HTTP status follows
//! from the code.

use std::borrow::Cow;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use hanmadi_proto::{ErrorAction, ErrorCode};
use hanmadi_router::RouterError;
use hanmadi_storage::StoreError;
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::Refusal;
use crate::password::PasswordError;

/// A refused or failed request, as the client sees it.
#[derive(Debug)]
pub struct ApiError {
    code: ErrorCode,
    message: Cow<'static, str>,
}

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// An error's code and explanation.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// The protocol's `ErrorCode` number: 1xxx retry, 2xxx go to another
    /// node, 3xxx give up (see `docs/PROTOCOL.md`).
    #[schema(example = 3204)]
    pub code: i32,
    /// For people and logs, not for parsing.
    pub message: String,
}

impl ApiError {
    /// An error with a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// `400 INVALID_ARGUMENT`.
    pub fn invalid(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }

    /// `404 NOT_FOUND` for a `what` ("user", "group").
    pub fn not_found(what: &'static str) -> Self {
        Self::new(ErrorCode::NotFound, format!("{what} not found"))
    }

    /// The protocol code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The HTTP status that goes with the code.
    pub fn status(&self) -> StatusCode {
        status_of(self.code)
    }
}

/// The HTTP status for each protocol code.
fn status_of(code: ErrorCode) -> StatusCode {
    use ErrorCode as C;
    match code {
        C::InvalidArgument | C::MalformedFrame | C::Unsupported => StatusCode::BAD_REQUEST,
        C::Unauthenticated | C::TokenExpired | C::TokenInvalid => StatusCode::UNAUTHORIZED,
        C::NotAMember | C::Blocked | C::PermissionDenied => StatusCode::FORBIDDEN,
        C::NotFound => StatusCode::NOT_FOUND,
        C::AlreadyExists => StatusCode::CONFLICT,
        C::CursorExpired => StatusCode::GONE,
        C::BodyTooLarge | C::FrameTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        C::GroupFull => StatusCode::UNPROCESSABLE_ENTITY,
        C::RateLimited | C::TooManyConnections => StatusCode::TOO_MANY_REQUESTS,
        C::ServerBusy | C::Unavailable | C::ServerDraining => StatusCode::SERVICE_UNAVAILABLE,
        C::SlowConsumer | C::IdleTimeout | C::HandshakeTimeout | C::Internal | C::Unspecified => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::warn!(code = ?self.code, message = %self.message, "HTTP request failed");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code as i32,
                message: self.message.into_owned(),
            },
        };
        let mut response = (status, Json(body)).into_response();
        // Retry codes tell the client when; a second spreads retries
        // without making anyone wait long.
        if self.code.action() == ErrorAction::Retry {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl From<RouterError> for ApiError {
    fn from(e: RouterError) -> Self {
        // A storage failure's own text is for the log; its display names no
        // engine detail.
        if let RouterError::Store(cause) = &e {
            tracing::warn!(error = %cause, "HTTP request failed in storage");
        }
        Self::new(e.code(), e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        RouterError::from(e).into()
    }
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Token(e) => Self::new(e.error_code(), e.to_string()),
            Refusal::Store(e) => {
                tracing::warn!(error = %e, "account read failed");
                Self::new(ErrorCode::Unavailable, "storage failed; try again later")
            }
        }
    }
}

impl From<PasswordError> for ApiError {
    fn from(e: PasswordError) -> Self {
        match e {
            PasswordError::Busy => Self::new(ErrorCode::ServerBusy, e.to_string()),
            PasswordError::Failed(cause) => {
                tracing::warn!(error = %cause, "password hashing failed");
                Self::new(ErrorCode::Internal, "internal error")
            }
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        // A body over the request limit surfaces as a failed buffering with
        // status 413; everything else is the client's malformed JSON.
        let code = if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ErrorCode::BodyTooLarge
        } else {
            ErrorCode::InvalidArgument
        };
        Self::new(code, r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        Self::invalid(r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self::invalid(r.body_text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_failures_name_no_internal_detail() {
        let failures = [
            ApiError::from(StoreError::Corrupt("inbox")),
            ApiError::from(RouterError::Store(StoreError::Corrupt("inbox"))),
            ApiError::from(Refusal::Store(StoreError::Corrupt("users"))),
            ApiError::from(PasswordError::Failed("argon2 params".into())),
        ];
        for e in failures {
            assert!(
                !e.message.contains("inbox")
                    && !e.message.contains("users")
                    && !e.message.contains("argon2"),
                "{e:?}"
            );
            assert!(
                matches!(e.code(), ErrorCode::Internal | ErrorCode::Unavailable),
                "{e:?}"
            );
        }
    }
}
