//! The one error shape of the install and capture APIs: a status and a one-line message.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

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
