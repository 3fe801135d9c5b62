//! The read API's error body, `{"reason": ..., "message": ...}`, and how store errors map
//! onto it. Reasons are stable names a program can switch on (see `docs/api.md`).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::cache::store::ReadError;

/// A reason a request failed; each has one HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Reason {
    /// The repository has never been warmed (or was evicted); the message says what to check.
    NotCached,
    /// No watch covers the repository, no such watch, or no such endpoint.
    NotFound,
    /// The repository is cached but does not have the tag.
    TagNotFound,
    /// The repository or image reference is invalid, or a webhook payload is malformed.
    BadRequest,
    /// No bearer token, or one that the Kubernetes API (or the webhook token) rejects.
    Unauthorized,
    /// The caller may not `get` the ImageRepositoryWatch covering the repository.
    Forbidden,
    /// memcached could not answer.
    CacheUnavailable,
    /// Something regcache needs for this request is not there: the Kubernetes API did not
    /// answer a review, or this replica has no warmer to hand a webhook to.
    Unavailable,
}

impl Reason {
    pub fn status(self) -> StatusCode {
        match self {
            Reason::NotCached | Reason::NotFound | Reason::TagNotFound => StatusCode::NOT_FOUND,
            Reason::BadRequest => StatusCode::BAD_REQUEST,
            Reason::Unauthorized => StatusCode::UNAUTHORIZED,
            Reason::Forbidden => StatusCode::FORBIDDEN,
            Reason::CacheUnavailable | Reason::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// An error answer of the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiError {
    pub reason: Reason,
    pub message: String,
}

impl ApiError {
    pub fn new(reason: Reason, message: impl Into<String>) -> ApiError {
        ApiError {
            reason,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(Reason::BadRequest, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(Reason::NotFound, message)
    }
}

impl From<ReadError> for ApiError {
    fn from(e: ReadError) -> ApiError {
        let reason = match &e {
            // Both mean "regcache has not (yet) fetched this"; the message tells which part.
            ReadError::NotCached { .. } | ReadError::ImageNotCached { .. } => Reason::NotCached,
            ReadError::TagNotFound { .. } => Reason::TagNotFound,
            ReadError::Cache(_) => Reason::CacheUnavailable,
        };
        ApiError::new(reason, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.reason.status(), axum::Json(&self)).into_response();
        if self.reason == Reason::Unauthorized {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_errors_map_to_reasons_with_the_store_message() {
        let e = ApiError::from(ReadError::NotCached {
            repository: "docker.io/library/nginx".into(),
            last_error: Some("401 from docker.io".into()),
            help: "check the watch".into(),
        });
        assert_eq!(e.reason, Reason::NotCached);
        assert!(e.message.contains("last error: 401 from docker.io"));
        assert!(e.message.contains("check the watch"));
        let e = ApiError::from(ReadError::Cache(crate::cache::CacheError::NoServers));
        assert_eq!(e.reason.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            serde_json::to_value(&e).unwrap()["reason"],
            "CacheUnavailable"
        );
    }
}
