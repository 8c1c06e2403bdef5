//! The HTTP API: each capability contributes a router, merged here under `/api/v1`, with the
//! OpenAPI document generated from the same route definitions.

pub mod auth;
pub mod extract;
pub mod problem;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::authz::Authz;
use crate::company::Companies;
use crate::db::Database;
use crate::idempotency::StoredResponse;
use crate::identity::Identity;
use crate::ledger::Ledger;
use crate::parties::Parties;
use crate::runtime::Runtime;
use problem::{Problem, UnexpectedError};

/// Largest request body: a full batch of entries (10,000 entries of a few lines) fits.
pub const REQUEST_BODY_BYTES_MAX: usize = 32 * 1024 * 1024;

/// A request that takes longer than this is answered with 503 and its transaction rolled back.
const REQUEST_DURATION_MAX: Duration = Duration::from_secs(60);

/// The same for a bulk import, which commits chunk by chunk (holding the write lock for one
/// chunk at a time) and re-importing tens of thousands of rows, each an update, outlasts a
/// minute on a small PostgreSQL server.
const BULK_IMPORT_DURATION_MAX: Duration = Duration::from_secs(15 * 60);

/// Paths of the bulk imports, which get [`BULK_IMPORT_DURATION_MAX`].
const BULK_IMPORT_PATHS: [&str; 1] = ["/api/v1/parties/import"];

/// Default and largest page sizes for list endpoints.
pub const PAGE_SIZE_DEFAULT: u32 = 100;
pub const PAGE_SIZE_MAX: u32 = 500;

const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// What every handler can reach.
#[derive(Debug, Clone)]
pub struct AppState {
    pub db: Database,
    pub companies: Arc<Companies>,
    pub ledger: Ledger,
    pub identity: Arc<Identity>,
    pub authz: Arc<Authz>,
    pub parties: Parties,
    pub runtime: Arc<Runtime>,
}

impl AppState {
    /// Everything a server needs, on an opened and migrated database.
    /// Compiled plugins are kept under `compiled_plugins`.
    pub async fn new(
        db: Database,
        companies: Arc<Companies>,
        compiled_plugins: &std::path::Path,
    ) -> anyhow::Result<Self> {
        let authz = Arc::new(Authz::load(&db).await?);
        Ok(Self {
            runtime: Runtime::new(db.clone(), authz.clone(), compiled_plugins)?,
            ledger: Ledger::for_server(db.clone(), authz.clone()),
            identity: Arc::new(Identity::new(db.clone())),
            parties: Parties::new(db.clone(), authz.clone()),
            authz,
            companies,
            db,
        })
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Keel",
        description = "ERP and CRM host: general ledger, shared master data and plugins.\n\n\
            Amounts are decimal strings. Writes accept an `Idempotency-Key` header: a replay returns \
            the first response and changes nothing. Errors are RFC 9457 problem+json.",
        version = "0.1.0"
    ),
    components(schemas(Problem)),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags(
        (name = "ledger", description = "Chart of accounts, journal entries, periods and reports"),
        (name = "parties", description = "The customer master: customers, vendors, contacts and employees"),
        (name = "identity", description = "Login, users, service accounts and API tokens"),
        (name = "authz", description = "Roles, grants and segregation-of-duties rules"),
        (name = "audit", description = "The tamper-evident audit trail"),
        (name = "plugins", description = "Installed plugins: install, grant, enable, upgrade, uninstall. \
            Everything below /api/v1/plugins/{name}/ is answered by the plugin itself, for callers \
            holding plugins.{name}:use")
    )
)]
struct ApiDoc;

/// Declares bearer-token authentication in the OpenAPI document.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
    }
}

/// The routes of every capability with their OpenAPI description.
fn api_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .nest("/api/v1/ledger", crate::ledger::http::router())
        .nest("/api/v1/parties", crate::parties::http::router())
        .nest("/api/v1", crate::identity::http::router())
        .nest("/api/v1", crate::authz::http::router())
        .nest("/api/v1", crate::audit::http::router())
        .nest("/api/v1/plugins", crate::runtime::http::router())
        .nest("/api/v1/events", crate::runtime::http::events_router())
}

/// The OpenAPI document, as served at `/api/v1/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api_routes().split_for_parts().1
}

/// The whole application: API, health, metrics and the middleware around them.
pub fn app(state: AppState) -> Router {
    let (api, document) = api_routes().split_for_parts();
    let document = Arc::new(document);
    let metrics = metrics_handle();
    api.route("/api/v1/openapi.json", get(move || async move { Json(document.as_ref().clone()) }))
        .route(
            "/api/v1/plugins/{name}/{*path}",
            axum::routing::any(crate::runtime::http::plugin_route),
        )
        .route(
            "/api/v1/public/{company}/{name}/{*path}",
            axum::routing::any(crate::runtime::http::public_route),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(move || async move { metrics.render() }))
        .fallback(not_found)
        .layer(middleware::from_fn(record_and_log))
        .layer(DefaultBodyLimit::max(REQUEST_BODY_BYTES_MAX))
        .layer(middleware::from_fn(limit_duration))
        .layer(CatchPanicLayer::custom(|_| {
            Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal error", "An unexpected error occurred and was logged.")
                .into_response()
        }))
        .layer(
            TraceLayer::new_for_http().make_span_with(|request: &Request| {
                let request_id = request
                    .headers()
                    .get(REQUEST_ID_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                tracing::info_span!("request", method = %request.method(), uri = %request.uri(), request_id)
            }),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID_HEADER))
        .layer(SetRequestIdLayer::new(REQUEST_ID_HEADER, SequentialRequestId))
        .with_state(state)
}

/// Answers 503 when a request outlives its limit; dropping the handler rolls back its open
/// transaction.
async fn limit_duration(request: Request, next: Next) -> Response {
    let limit = if BULK_IMPORT_PATHS.contains(&request.uri().path()) {
        BULK_IMPORT_DURATION_MAX
    } else {
        REQUEST_DURATION_MAX
    };
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            "Request took too long",
            format!(
                "the request did not finish within {} s and was stopped; what it had not committed was rolled back",
                limit.as_secs()
            ),
        )
        .into_response(),
    }
}

async fn ready(State(state): State<AppState>) -> Response {
    match state.db.readiness().await {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(reason) => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Not ready",
            reason,
        )
        .into_response(),
    }
}

async fn not_found(request: Request) -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "not-found",
        "Not found",
        format!(
            "no route for {} {}; see /api/v1/openapi.json",
            request.method(),
            request.uri().path()
        ),
    )
}

/// Counts and times every request by route, and logs unexpected errors once, inside the
/// request's span so the log line carries the request id.
async fn record_and_log(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let response = next.run(request).await;
    if let Some(UnexpectedError(error)) = response.extensions().get::<UnexpectedError>() {
        tracing::error!(error = format!("{error:#}"), "request failed unexpectedly");
    }
    let status = response.status().as_u16().to_string();
    metrics::counter!("keel_http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("keel_http_request_duration_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// The process-wide Prometheus recorder, installed on first use.
fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder is installed already; metrics then go there.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Request ids unique within a process run: the start time and a counter.
#[derive(Debug, Clone, Default)]
struct SequentialRequestId;

impl MakeRequestId for SequentialRequestId {
    fn make_request_id<B>(&mut self, _request: &axum::http::Request<B>) -> Option<RequestId> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        static PREFIX: OnceLock<String> = OnceLock::new();
        let prefix = PREFIX.get_or_init(|| format!("{:x}", chrono::Utc::now().timestamp_millis()));
        let id = format!("{prefix}-{:x}", NEXT.fetch_add(1, Ordering::Relaxed));
        HeaderValue::from_str(&id).ok().map(RequestId::new)
    }
}

impl IntoResponse for StoredResponse {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::OK);
        let mut response = (status, Json(self.body)).into_response();
        if self.replayed {
            // As Stripe does: the client can tell a replay from a first execution.
            response
                .headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
        }
        response
    }
}

/// A CSV download.
pub fn csv_response(filename: &str, body: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{filename}\""),
            ),
        ],
        body,
    )
        .into_response()
}

/// Runs a write of the caller's in one transaction, exactly once per `Idempotency-Key`.
pub async fn write_once<P>(
    state: &AppState,
    auth: &auth::Authorized<P>,
    key: extract::IdempotencyKey,
    operation: &str,
    body: &impl serde::Serialize,
    write: impl AsyncFnOnce(&mut crate::db::Tx) -> crate::error::Result<StoredResponse>,
) -> crate::error::Result<StoredResponse> {
    let key = extract::request_key(auth, key, operation, body);
    crate::idempotency::once_committed(&state.db, &auth.company, key.as_ref(), write).await
}

/// The page size a query asks for (`limit`), checked: 1 to [`PAGE_SIZE_MAX`], [`PAGE_SIZE_DEFAULT`]
/// when absent.
pub fn page_size(limit: Option<u32>) -> crate::error::Result<usize> {
    match limit.unwrap_or(PAGE_SIZE_DEFAULT) {
        limit @ 1..=PAGE_SIZE_MAX => Ok(limit as usize),
        _ => Err(crate::error::Error::invalid(
            "limit",
            format!("is between 1 and {PAGE_SIZE_MAX}"),
        )),
    }
}

/// A JSON response for a write, as stored for idempotent replays.
pub fn stored<T: serde::Serialize>(status: u16, value: &T) -> crate::error::Result<StoredResponse> {
    Ok(StoredResponse::new(
        status,
        serde_json::to_value(value).map_err(anyhow::Error::from)?,
    ))
}
