//! HTTP routes of the plugin runtime: managing installed plugins at `/api/v1/plugins` and
//! `/api/v1/plugins/{name}`, and passing everything below `/api/v1/plugins/{name}/` to the
//! plugin itself, after the caller is authenticated and holds `plugins.{name}:use`.

use axum::Json;
use axum::body::Bytes;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::dispatch::{DeadLetter, DeadLetterFilter};
use super::public::PUBLIC_BODY_BYTES_MAX;
use super::registry::{COMPONENT_BYTES_MAX, PluginChanges, PluginRequest, PluginView};
use crate::api::AppState;
use crate::api::auth::{Authorized, InCompany, need, principal_key};
use crate::api::extract::{Body, IdempotencyKey};
use crate::api::problem::Problem;
use crate::audit::Origin;
use crate::authz::PLUGIN_RESOURCE_PREFIX;
use crate::error::{Error, Result};
use crate::idempotency::{RequestKey, fingerprint};

/// The action a caller needs on `plugins.<name>` to reach a plugin's routes.
pub const USE_ACTION: &str = "use";

/// Request headers a plugin never sees: the caller's credentials stay with the host.
const WITHHELD_HEADERS: &[&str] = &["authorization", "cookie"];

pub fn router() -> OpenApiRouter<AppState> {
    let uploads = OpenApiRouter::new()
        .routes(routes!(list_plugins, install_plugin))
        .routes(routes!(upgrade_plugin))
        .layer(DefaultBodyLimit::max(COMPONENT_BYTES_MAX));
    OpenApiRouter::new()
        .routes(routes!(get_plugin, change_plugin, uninstall_plugin))
        .merge(uploads)
}

/// Installed plugins with their grants, limits and call statistics.
#[utoipa::path(get, path = "", tag = "plugins",
    responses((status = 200, body = Vec<PluginView>), (status = 403, body = Problem)))]
async fn list_plugins(
    State(state): State<AppState>,
    auth: Authorized<need::PluginsRead>,
) -> Result<Json<Vec<PluginView>>> {
    Ok(Json(state.runtime.list(&auth.company).await?))
}

/// Install a plugin from its component (`application/wasm`). It starts disabled with nothing
/// granted: review `requested`, then grant and enable it with PATCH.
#[utoipa::path(post, path = "", tag = "plugins",
    request_body(content = Vec<u8>, content_type = "application/wasm", description = "The WebAssembly component"),
    responses((status = 201, body = PluginView), (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn install_plugin(
    State(state): State<AppState>,
    auth: Authorized<need::PluginsManage>,
    body: Bytes,
) -> Result<Response> {
    let view = state
        .runtime
        .install(&auth.company, &body, &auth.origin)
        .await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// One installed plugin with its grants, limits and call statistics.
#[utoipa::path(get, path = "/{name}", tag = "plugins", params(("name" = String, Path)),
    responses((status = 200, body = PluginView), (status = 404, body = Problem)))]
async fn get_plugin(
    State(state): State<AppState>,
    auth: Authorized<need::PluginsRead>,
    Path(name): Path<String>,
) -> Result<Json<PluginView>> {
    Ok(Json(state.runtime.get(&auth.company, &name).await?))
}

/// Grant capabilities, enable or disable, or override limits. Enabling runs the plugin's
/// migration first when needed; if it fails, nothing changes.
#[utoipa::path(patch, path = "/{name}", tag = "plugins", params(("name" = String, Path)),
    request_body = PluginChanges,
    responses((status = 200, body = PluginView), (status = 404, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn change_plugin(
    State(state): State<AppState>,
    auth: Authorized<need::PluginsManage>,
    Path(name): Path<String>,
    Body(changes): Body<PluginChanges>,
) -> Result<Json<PluginView>> {
    Ok(Json(
        state
            .runtime
            .change(
                &auth.company,
                &name,
                &changes,
                Some(auth.principal.user_id),
                &auth.origin,
            )
            .await?,
    ))
}

/// Upgrade a plugin to a newer version of its component. Its migration runs in the same
/// transaction; if it fails, the previous version stays active and its data untouched.
#[utoipa::path(put, path = "/{name}", tag = "plugins", params(("name" = String, Path)),
    request_body(content = Vec<u8>, content_type = "application/wasm", description = "The new version's component"),
    responses((status = 200, body = PluginView), (status = 404, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn upgrade_plugin(
    State(state): State<AppState>,
    auth: Authorized<need::PluginsManage>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<PluginView>> {
    Ok(Json(
        state
            .runtime
            .upgrade(
                &auth.company,
                &name,
                &body,
                Some(auth.principal.user_id),
                &auth.origin,
            )
            .await?,
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct UninstallOptions {
    /// Delete the data of an uninstalled plugin, for good.
    #[serde(default)]
    purge: bool,
}

/// Uninstall a plugin, keeping its data; with `purge=true`, delete the data of a plugin
/// uninstalled before.
#[utoipa::path(delete, path = "/{name}", tag = "plugins", params(("name" = String, Path), UninstallOptions),
    responses((status = 204), (status = 404, body = Problem), (status = 409, body = Problem)))]
async fn uninstall_plugin(
    State(state): State<AppState>,
    auth: Authorized<need::PluginsManage>,
    Path(name): Path<String>,
    crate::api::extract::Params(options): crate::api::extract::Params<UninstallOptions>,
) -> Result<StatusCode> {
    if options.purge {
        state
            .runtime
            .purge(&auth.company, &name, &auth.origin)
            .await?;
    } else {
        state
            .runtime
            .uninstall(&auth.company, &name, &auth.origin)
            .await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Everything below `/api/v1/plugins/{name}/`: the plugin's own routes.
pub async fn plugin_route(
    State(state): State<AppState>,
    caller: InCompany,
    Path((name, path)): Path<(String, String)>,
    key: IdempotencyKey,
    request: Request,
) -> Result<Response> {
    let resource = format!("{PLUGIN_RESOURCE_PREFIX}{name}");
    caller.require(&state, &resource, USE_ACTION).await?;
    let (parts, request) = plugin_request(request, &path, usize::MAX).await?;
    // Reads are not recorded: only a request that may change something is made exactly-once.
    let key = key
        .0
        .filter(|_| !matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS))
        .map(|key| RequestKey {
            principal: principal_key(&caller.principal),
            fingerprint: fingerprint(
                &format!(
                    "{} /plugins/{name}/{path}?{}",
                    request.method, request.query
                ),
                &hex::encode(Sha256::digest(&request.body)),
            ),
            key,
        });
    let response = state
        .runtime
        .handle_http(
            &caller.company,
            &name,
            Some(caller.principal.user_id),
            &caller.origin,
            request,
            key,
        )
        .await?;
    Ok(reply_from(response))
}

/// Everything below `/api/v1/public/{company}/{name}/`: a plugin's public routes (web forms),
/// reached without credentials when the plugin holds `http:public`, rate limited per client
/// address. The plugin sees the path below `/public/` and acts for no user.
pub async fn public_route(
    State(state): State<AppState>,
    Path((company, name, path)): Path<(String, String, String)>,
    request: Request,
) -> Result<Response> {
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip());
    let company = state.companies.by_code(&company).await?;
    let origin = Origin {
        request_id: request
            .headers()
            .get("x-request-id")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned),
        ..Origin::system()
    };
    let (_, request) = plugin_request(request, &path, PUBLIC_BODY_BYTES_MAX).await?;
    let response = state
        .runtime
        .handle_public_http(&company, &name, client, &origin, request)
        .await?;
    Ok(reply_from(response))
}

/// The request a plugin receives: the caller's credentials withheld, the body read up to
/// `body_bytes_max`.
async fn plugin_request(
    request: Request,
    path: &str,
    body_bytes_max: usize,
) -> Result<(axum::http::request::Parts, PluginRequest)> {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, body_bytes_max)
        .await
        .map_err(|error| Error::invalid("body", format!("could not be read: {error}")))?;
    let headers = parts
        .headers
        .iter()
        .filter(|(name, _)| !WITHHELD_HEADERS.contains(&name.as_str()))
        .filter_map(|(name, value)| {
            Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
        })
        .collect();
    let request = PluginRequest {
        method: parts.method.as_str().to_owned(),
        path: format!("/{path}"),
        query: parts.uri.query().unwrap_or_default().to_owned(),
        headers,
        body: body.to_vec(),
    };
    Ok((parts, request))
}

/// The HTTP answer for a plugin's response.
fn reply_from(response: super::registry::PluginResponse) -> Response {
    let mut reply = Response::new(axum::body::Body::from(response.body));
    *reply.status_mut() = StatusCode::from_u16(response.status).unwrap_or(StatusCode::BAD_GATEWAY);
    for (name, value) in response.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            reply.headers_mut().append(name, value);
        }
    }
    if response.replayed {
        reply
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    reply
}

/// Routes of event delivery: the dead-letter list and its replay.
pub fn events_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_dead_letters, replay_dead_letters))
}

/// Deliveries that failed every attempt, oldest event first (at most 500), optionally of one
/// subscriber or one event.
#[utoipa::path(get, path = "/dead-letters", tag = "events", params(DeadLetterFilter),
    responses((status = 200, body = Vec<DeadLetter>), (status = 403, body = Problem)))]
async fn list_dead_letters(
    State(state): State<AppState>,
    auth: Authorized<need::PluginsRead>,
    crate::api::extract::Params(filter): crate::api::extract::Params<DeadLetterFilter>,
) -> Result<Json<Vec<DeadLetter>>> {
    Ok(Json(
        state.runtime.dead_letters(&auth.company, &filter).await?,
    ))
}

/// How many dead letters went back in line.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
struct Replayed {
    replayed: u64,
}

/// Replay dead letters: those matching the body (`plugin` and/or `event`; `{}` for all) get a
/// fresh round of attempts. Delivery order within a subject is not restored by a replay.
#[utoipa::path(post, path = "/dead-letters", tag = "events", request_body = DeadLetterFilter,
    responses((status = 200, body = Replayed), (status = 404, body = Problem), (status = 422, body = Problem)))]
async fn replay_dead_letters(
    State(state): State<AppState>,
    auth: Authorized<need::PluginsManage>,
    Body(filter): Body<DeadLetterFilter>,
) -> Result<Json<Replayed>> {
    let replayed = state
        .runtime
        .replay_dead_letters(&auth.company, &filter, &auth.origin)
        .await?;
    Ok(Json(Replayed { replayed }))
}
