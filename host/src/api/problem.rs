//! RFC 9457 problem details: every error the API returns, in one shape.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::{Error, FieldError};

/// `application/problem+json` (RFC 9457).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem, e.g. `urn:keel:problem:validation`.
    #[serde(rename = "type")]
    pub problem_type: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// For validation problems: each offending field and what is wrong with it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// For possible duplicates: the existing records the new one resembles.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    pub candidates: Option<Box<serde_json::Value>>,
}

/// Marks a response caused by an unexpected error, so the logging middleware reports it once
/// with the request's span, while the client sees no internals.
#[derive(Debug, Clone)]
pub struct UnexpectedError(pub std::sync::Arc<anyhow::Error>);

impl Problem {
    pub fn new(status: StatusCode, kind: &str, title: &str, detail: impl Into<String>) -> Self {
        Self {
            problem_type: format!("urn:keel:problem:{kind}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            errors: Vec::new(),
            candidates: None,
        }
    }

    pub fn bad_request(field: &str, detail: impl Into<String>) -> Self {
        let detail = detail.into();
        Self {
            errors: vec![FieldError::new(field, detail.clone())],
            ..Self::new(
                StatusCode::BAD_REQUEST,
                "bad-request",
                "The request is malformed",
                detail,
            )
        }
    }

    pub fn validation(errors: Vec<FieldError>) -> Self {
        let detail = errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect::<Vec<_>>()
            .join("; ");
        Self {
            errors,
            ..Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation",
                "The request is invalid; nothing was written",
                detail,
            )
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, axum::Json(self)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        response
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        match self {
            Error::Invalid(errors) => Problem::validation(errors).into_response(),
            Error::Unauthenticated(detail) => {
                let mut response = Problem::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthenticated",
                    "Authentication required",
                    detail,
                )
                .into_response();
                response.headers_mut().insert(
                    axum::http::header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"keel\""),
                );
                response
            }
            Error::Forbidden(detail) => Problem::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "Permission denied",
                detail,
            )
            .into_response(),
            Error::TooManyRequests(detail) => Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too-many-requests",
                "Too many attempts",
                detail,
            )
            .into_response(),
            Error::NotFound(detail) => {
                Problem::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
                    .into_response()
            }
            Error::Conflict(detail) => Problem::new(
                StatusCode::CONFLICT,
                "conflict",
                "The request conflicts with the current state; nothing was written",
                detail,
            )
            .into_response(),
            Error::Duplicates { detail, candidates } => Problem {
                candidates: Some(Box::new(candidates)),
                ..Problem::new(
                    StatusCode::CONFLICT,
                    "possible-duplicates",
                    "Possible duplicates; nothing was written",
                    detail,
                )
            }
            .into_response(),
            Error::PluginFailed {
                plugin,
                limit,
                detail,
            } => {
                // The host stands between the client and the plugin like a gateway; the
                // plugin failing is a bad answer from upstream, not a fault of the host.
                let (kind, title) = if limit {
                    (
                        "plugin-limit-exceeded",
                        "A plugin reached one of its limits",
                    )
                } else {
                    ("plugin-failed", "A plugin failed")
                };
                Problem::new(
                    StatusCode::BAD_GATEWAY,
                    kind,
                    title,
                    format!("plugin {plugin} {detail}; nothing it did was kept"),
                )
                .into_response()
            }
            Error::Unexpected(error) => {
                let mut response = Problem::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "Internal error",
                    "An unexpected error occurred and was logged; nothing was written. Retry with the same \
                     Idempotency-Key to be safe.",
                )
                .into_response();
                response
                    .extensions_mut()
                    .insert(UnexpectedError(std::sync::Arc::new(error)));
                response
            }
        }
    }
}
