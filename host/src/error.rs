//! The error every domain operation returns. Each boundary (HTTP, CLI) turns it into its own
//! form: a problem+json response, or a message and an exit code.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One thing wrong with the input, and where: `field` is a path into the request body such as
/// `entries[2].lines[0].debit`, or a query parameter name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is well-formed but breaks a rule; nothing was written.
    #[error("{}", summarize(.0))]
    Invalid(Vec<FieldError>),
    /// No credentials, or credentials that are wrong, expired or revoked.
    #[error("{0}")]
    Unauthenticated(String),
    /// Authenticated, but without the permission the request needs.
    #[error("{0}")]
    Forbidden(String),
    /// Too many attempts: the client must wait (a locked account, a rate limit).
    #[error("{0}")]
    TooManyRequests(String),
    #[error("{0}")]
    NotFound(String),
    /// The request contradicts the current state (a second reversal, a reused idempotency key).
    #[error("{0}")]
    Conflict(String),
    /// The new record looks like existing ones; the client confirms or uses one of them.
    #[error("{detail}")]
    Duplicates {
        detail: String,
        candidates: serde_json::Value,
    },
    /// A plugin trapped or was stopped by one of its limits; nothing it did was kept, and the
    /// host carries on.
    #[error("plugin {plugin} {detail}")]
    PluginFailed {
        plugin: String,
        /// True when a limit (CPU, memory, sizes, host calls, time) stopped it.
        limit: bool,
        detail: String,
    },
    /// A bug or an infrastructure failure; the details are logged, never shown to the client.
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid(vec![FieldError::new(field, message)])
    }

    /// Prefixes every field path, e.g. `lines[0]` becomes `entries[3].lines[0]`.
    pub fn within(self, prefix: &str) -> Self {
        match self {
            Self::Invalid(errors) => Self::Invalid(
                errors
                    .into_iter()
                    .map(|e| FieldError::new(join_path(prefix, &e.field), e.message))
                    .collect(),
            ),
            other => other,
        }
    }
}

impl From<sqlx::Error> for Error {
    fn from(error: sqlx::Error) -> Self {
        Self::Unexpected(error.into())
    }
}

/// `a` + `b` as a field path: `entries[1]` + `date` is `entries[1].date`.
pub fn join_path(prefix: &str, field: &str) -> String {
    match (prefix.is_empty(), field.is_empty()) {
        (true, _) => field.to_owned(),
        (_, true) => prefix.to_owned(),
        _ if field.starts_with('[') => format!("{prefix}{field}"),
        _ => format!("{prefix}.{field}"),
    }
}

fn summarize(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| format!("{}: {}", e.field, e.message))
        .collect::<Vec<_>>()
        .join("; ")
}
