//! Errors of the server's HTTP APIs.
//!
//! The install and capture APIs (spoken by the agent) answer a status and a one-line text
//! message, which the agent shows as it is. The management API `/api/v1` answers every error
//! as one JSON shape, `{"error": {"code": "not_found", "message": "client web9 is not
//! registered; ..."}}`, the code following the status: 400 `bad_request`, 401
//! `unauthorized`, 403 `forbidden`, 404 `not_found`, 409 `conflict`, 413 `too_large`, 422
//! `invalid`, 500 `internal`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

/// A refusal: status and a one-line message.
pub struct ApiError(pub StatusCode, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, format!("{}\n", self.1)).into_response()
    }
}

/// A failure on the server's side (500), with its cause.
pub fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("server: {e:#}"))
}

pub type ApiResult<T> = Result<T, ApiError>;

/// An error of `/api/v1`: answered as [`ErrorBody`].
#[derive(Debug)]
pub struct V1Error {
    pub status: StatusCode,
    pub message: String,
}

/// The body of every `/api/v1` error.
#[derive(serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// `bad_request`, `unauthorized`, `forbidden`, `not_found`, `conflict`, `too_large`,
    /// `invalid` or `internal`.
    pub code: String,
    /// What is wrong and what to do, in words for the admin.
    pub message: String,
}

/// The code `/api/v1` errors with `status` carry.
pub fn code(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::CONFLICT => "conflict",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::UNPROCESSABLE_ENTITY => "invalid",
        StatusCode::REQUEST_TIMEOUT => "timeout",
        _ if status.is_server_error() => "internal",
        _ => "error",
    }
}

impl V1Error {
    pub fn new(status: StatusCode, message: impl Into<String>) -> V1Error {
        V1Error {
            status,
            message: message.into(),
        }
    }

    pub fn not_found(message: impl Into<String>) -> V1Error {
        V1Error::new(StatusCode::NOT_FOUND, message)
    }

    pub fn conflict(message: impl Into<String>) -> V1Error {
        V1Error::new(StatusCode::CONFLICT, message)
    }

    /// 422: the request is well formed but what it asks for is not valid (a bad MAC, an
    /// unknown boot action).
    pub fn invalid(message: impl Into<String>) -> V1Error {
        V1Error::new(StatusCode::UNPROCESSABLE_ENTITY, message)
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: code(self.status).to_string(),
                message: self.message.clone(),
            },
        }
    }
}

/// Its message: what the CLI shows when it called the same function locally.
impl std::fmt::Display for V1Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for V1Error {}

/// A V1Error carried through `anyhow` keeps its status; anything not classified otherwise
/// is the server's failure (500), with its cause.
impl From<anyhow::Error> for V1Error {
    fn from(e: anyhow::Error) -> V1Error {
        match e.downcast::<V1Error>() {
            Ok(v) => v,
            Err(e) => V1Error::new(StatusCode::INTERNAL_SERVER_ERROR, format!("server: {e:#}")),
        }
    }
}

impl IntoResponse for V1Error {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

pub type V1Result<T> = Result<T, V1Error>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_maps_to_its_code() {
        let body = |e: V1Error| serde_json::to_value(e.body()).unwrap();
        assert_eq!(
            body(V1Error::invalid("MAC \"x\" is bad")),
            serde_json::json!({"error": {"code": "invalid", "message": "MAC \"x\" is bad"}})
        );
        assert_eq!(body(V1Error::conflict("c"))["error"]["code"], "conflict");
        assert_eq!(body(V1Error::not_found("n"))["error"]["code"], "not_found");
        let e: V1Error = anyhow::anyhow!("disk full").into();
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body(e)["error"]["message"], "server: disk full");
        assert_eq!(code(StatusCode::UNAUTHORIZED), "unauthorized");
        // Through anyhow and back (a library function both the CLI and the API call):
        // the status stays, and the CLI shows the message alone.
        let through: anyhow::Error = V1Error::conflict("tape t1 is in g2").into();
        assert_eq!(through.to_string(), "tape t1 is in g2");
        assert_eq!(V1Error::from(through).status, StatusCode::CONFLICT);
    }
}
