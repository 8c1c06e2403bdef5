//! A real Keel host in-process, for testing a plugin: SQLite in a temporary folder, the default
//! chart of accounts, the current fiscal year open, an administrator, and the plugin installed
//! with everything it asks for granted and enabled. `keel plugin test` runs on it; Rust plugin
//! authors can use it from their own tests too.

use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt as _;
use serde_json::Value;
use tower::ServiceExt as _;

use crate::api::{self, AppState};
use crate::audit::Origin;
use crate::company::Companies;
use crate::db::{Database, Location};
use crate::identity::{NewToken, NewUser};
use crate::runtime::registry::PluginView;

/// A host with one plugin installed and enabled.
#[derive(Debug)]
pub struct PluginHost {
    state: AppState,
    router: Router,
    token: String,
    plugin: PluginView,
    _data: tempfile::TempDir,
}

impl PluginHost {
    /// Starts the host and installs, grants and enables the component.
    pub async fn start(component: &[u8]) -> anyhow::Result<Self> {
        let data = tempfile::tempdir().context("creating a temporary folder")?;
        let db = Database::open(&Location::DataDir(data.path().to_owned())).await?;
        let companies = Arc::new(Companies::bootstrap(&db, None).await?);
        let state = AppState::new(db, companies, &data.path().join("compiled-plugins")).await?;
        let company = state.companies.default_company();
        let origin = Origin::system();
        state.ledger.init_default_chart(&company, &origin).await?;
        let token = admin_token(&state).await?;
        let plugin = state
            .runtime
            .install_enabled(&company, component, &origin)
            .await?;
        Ok(Self {
            router: api::app(state.clone()),
            state,
            token,
            plugin,
            _data: data,
        })
    }

    /// The installed plugin as the API shows it.
    pub fn plugin(&self) -> &PluginView {
        &self.plugin
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// A request to one of the plugin's routes (`path` below `/api/v1/plugins/<name>`), as
    /// the administrator; returns the status and the JSON body (`Null` when empty, a string
    /// when not JSON).
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let uri = format!("/api/v1/plugins/{}{path}", self.plugin.name);
        self.request_host(method, &uri, body).await
    }

    /// A request to any route of the host.
    pub async fn request_host(
        &self,
        method: &str,
        uri: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Value)> {
        self.request_as(&self.token, method, uri, body).await
    }

    /// A request to any route of the host with another user's API token.
    pub async fn request_as(
        &self,
        token: &str,
        method: &str,
        uri: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
            .context("building the request")?;
        let response = self.router.clone().oneshot(request).await?;
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await?.to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Ok((status, body))
    }
}

async fn admin_token(state: &AppState) -> anyhow::Result<String> {
    let origin = Origin::system();
    let company = state.companies.default_company();
    let mut tx = state.db.begin_write().await?;
    let new = NewUser {
        username: "admin".to_owned(),
        display_name: None,
        email: None,
        kind: None,
        password: None,
        manager: None,
    };
    let user = state.identity.create_user(&mut tx, &new, &origin).await?;
    state
        .authz
        .grant(&mut tx, company.id, user.id, "admin", None, &origin)
        .await?;
    let token = state
        .identity
        .create_api_token(
            &mut tx,
            user.id,
            &NewToken {
                name: "plugin test".to_owned(),
                expires_in_days: None,
            },
            &origin,
        )
        .await?;
    tx.commit().await?;
    state.authz.reload().await?;
    Ok(token.token)
}

/// One step of a `keel plugin test` scenario (one JSON object per line).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub method: String,
    /// Below the plugin's prefix, e.g. `/claims`.
    pub path: String,
    pub body: Option<Value>,
    /// The status the plugin must answer with.
    pub status: u16,
    /// Values the response body must contain (objects may have more fields).
    pub expect: Option<Value>,
}

/// Whether `actual` contains `expected`: equal values, or objects whose every expected field
/// is contained, or arrays of the same length whose items are contained.
pub fn contains(actual: &Value, expected: &Value) -> bool {
    match (actual, expected) {
        (Value::Object(actual), Value::Object(expected)) => expected
            .iter()
            .all(|(k, v)| actual.get(k).is_some_and(|a| contains(a, v))),
        (Value::Array(actual), Value::Array(expected)) => {
            actual.len() == expected.len()
                && actual.iter().zip(expected).all(|(a, e)| contains(a, e))
        }
        _ => actual == expected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn containment_allows_extra_fields_only() {
        let actual = json!({ "id": 1, "status": "submitted", "lines": [{ "a": 1, "b": 2 }] });
        assert!(contains(&actual, &json!({ "status": "submitted" })));
        assert!(contains(&actual, &json!({ "lines": [{ "a": 1 }] })));
        assert!(!contains(&actual, &json!({ "status": "approved" })));
        assert!(!contains(&actual, &json!({ "lines": [] })));
        assert!(!contains(&actual, &json!({ "missing": null })));
    }
}
