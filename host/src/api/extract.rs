//! Extractors that parse requests at the edge into types the handlers can trust.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::response::IntoResponse;
use serde::de::DeserializeOwned;

use super::problem::Problem;
use crate::error::FieldError;
use crate::ledger::model::check_idempotency_key;

/// Header that selects the company a request acts on; the default company when absent.
pub const COMPANY_HEADER: &str = "keel-company";

/// Header that makes a write exactly-once.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";

/// The `Idempotency-Key` header, if the client sent one.
#[derive(Debug, Clone)]
pub struct IdempotencyKey(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        match parts.headers.get(IDEMPOTENCY_HEADER) {
            None => Ok(Self(None)),
            Some(value) => {
                let key = value.to_str().map_err(|_| {
                    Problem::bad_request("Idempotency-Key", "is not printable ASCII")
                })?;
                check_idempotency_key(key)
                    .map_err(|message| Problem::bad_request("Idempotency-Key", message))?;
                Ok(Self(Some(key.to_owned())))
            }
        }
    }
}

/// A JSON body. Broken JSON is a 400 saying where it broke; JSON of the wrong shape is a 422
/// naming the field (`lines[1].debit`), so clients see exactly what to fix.
#[derive(Debug, Clone)]
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = axum::response::Response;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                Problem::new(
                    rejection.status(),
                    "bad-request",
                    "The request body could not be read",
                    rejection.body_text(),
                )
                .into_response()
            })?;
        parse_json(&bytes)
            .map(Self)
            .map_err(IntoResponse::into_response)
    }
}

/// Parses JSON with the path of the first offending field.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    // Tracking the path costs time on every value; only a body that fails is parsed again
    // with tracking, to say where it failed.
    if let Ok(value) = serde_json::from_slice(bytes) {
        return Ok(value);
    }
    let deserializer = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => {
                let message = strip_position(&inner.to_string());
                let parent = if path == "." { "" } else { path.as_str() };
                // A missing field is reported at its parent; name the field itself.
                let field = message
                    .strip_prefix("missing field `")
                    .and_then(|rest| rest.split('`').next())
                    .map(|name| crate::error::join_path(parent, name))
                    .unwrap_or_else(|| {
                        if parent.is_empty() {
                            "body".to_owned()
                        } else {
                            parent.to_owned()
                        }
                    });
                Problem::validation(vec![FieldError::new(field, message)])
            }
            _ => Problem::bad_request("body", format!("malformed JSON: {inner}")),
        }
    })
}

/// serde_json appends " at line 1 column 42" to data errors; the field path says more.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(index) => message[..index].to_owned(),
        None => message.to_owned(),
    }
}

/// Query parameters; a malformed one is a 400 naming it.
#[derive(Debug, Clone)]
pub struct Params<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Params<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        let deserializer =
            serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(deserializer)
            .map(Self)
            .map_err(|error| {
                let field = error.path().to_string();
                Problem::bad_request(
                    if field == "." { "query" } else { &field },
                    error.into_inner().to_string(),
                )
            })
    }
}

/// The idempotency record key of a request: the caller, its header and a fingerprint of what
/// it asks for.
pub fn request_key<P>(
    auth: &super::auth::Authorized<P>,
    key: IdempotencyKey,
    operation: &str,
    body: &impl serde::Serialize,
) -> Option<crate::idempotency::RequestKey> {
    key.0.map(|key| crate::idempotency::RequestKey {
        principal: super::auth::principal_key(&auth.principal),
        fingerprint: crate::idempotency::fingerprint(operation, body),
        key,
    })
}

/// The client's IP address, when the server knows it (behind `into_make_service_with_connect_info`).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddress(pub Option<std::net::IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddress {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|info| info.0.ip()),
        ))
    }
}
