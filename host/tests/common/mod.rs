//! Test helpers: a real application on a real database — a SQLite file in a temporary folder,
//! or a fresh database in the PostgreSQL cluster named by `KEEL_TEST_POSTGRES_URL` — driven
//! through the real router.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of the helpers"
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt as _;
use keel_host::api::{self, AppState};
use keel_host::audit::Origin;
use keel_host::company::Companies;
use keel_host::db::{Database, Location};
use keel_host::identity::{NewToken, NewUser};
use serde_json::{Value, json};
use tower::ServiceExt as _;

/// Runs each test body once against SQLite and once against PostgreSQL.
#[macro_export]
macro_rules! on_both_backends {
    ($(async fn $name:ident($app:ident: TestApp) $body:block)*) => {
        $(
            mod $name {
                #[allow(unused_imports, reason = "not every test uses every helper")]
                use super::*;

                async fn run($app: $crate::common::TestApp) $body

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    run($crate::common::TestApp::sqlite().await).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    run($crate::common::TestApp::postgres().await).await;
                }
            }
        )*
    };
}

/// Where a test database lives; keeps a temporary folder alive for the test's duration.
#[derive(Debug)]
pub struct TestDatabase {
    pub location: Location,
    _dir: Option<tempfile::TempDir>,
}

impl TestDatabase {
    pub fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("a temporary folder");
        Self {
            location: Location::DataDir(dir.path().to_owned()),
            _dir: Some(dir),
        }
    }

    /// A new, empty database in the test cluster.
    pub async fn postgres() -> Self {
        let admin_url = std::env::var("KEEL_TEST_POSTGRES_URL").expect(
            "KEEL_TEST_POSTGRES_URL is not set: run the tests with scripts/test, which starts a throwaway \
             PostgreSQL cluster, or point it at a server where the test may create databases",
        );
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "keel_test_{}_{}_{}",
            std::process::id(),
            chrono::Utc::now().timestamp_micros(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let admin = sqlx::PgPool::connect(&admin_url)
            .await
            .expect("connecting to the test cluster");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await
            .expect("creating a test database");
        admin.close().await;
        let (base, _) = admin_url
            .rsplit_once('/')
            .expect("a URL with a database name");
        Self {
            location: Location::Postgres(format!("{base}/{name}")),
            _dir: None,
        }
    }

    /// `--data-dir DIR` or `--database-url URL`, for driving the `keel` binary.
    pub fn cli_args(&self) -> Vec<String> {
        match &self.location {
            Location::DataDir(dir) => vec!["--data-dir".into(), dir.display().to_string()],
            Location::Postgres(url) => vec!["--database-url".into(), url.clone()],
        }
    }
}

/// The application on a fresh database, with an administrator whose token every request
/// carries unless it says otherwise.
#[derive(Debug)]
pub struct TestApp {
    pub router: Router,
    pub state: AppState,
    pub database: TestDatabase,
    pub admin_token: String,
    pub admin_id: i64,
    /// Where the application keeps compiled plugins.
    pub compiled_plugins: std::path::PathBuf,
}

/// A response: status and JSON body (`Value::Null` when empty, a string when not JSON).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub content_type: String,
    pub body: Value,
    pub text: String,
}

impl Reply {
    /// The `field` of each entry of a problem's `errors`.
    pub fn error_fields(&self) -> Vec<String> {
        self.body["errors"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| e["field"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// Asserts a problem+json response with this status naming exactly these fields.
    #[track_caller]
    pub fn assert_problem(&self, status: u16, fields: &[&str]) {
        assert_eq!(
            self.status.as_u16(),
            status,
            "unexpected status; body: {}",
            self.text
        );
        assert_eq!(
            self.content_type, "application/problem+json",
            "body: {}",
            self.text
        );
        assert_eq!(self.body["status"], status);
        assert!(
            self.body["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "a problem says what is wrong"
        );
        assert_eq!(self.error_fields(), fields, "body: {}", self.text);
    }
}

/// The first fiscal year the tests post into; the bootstrap opens only the current one.
pub const TEST_YEAR_START: &str = "2025-01-01";

impl TestApp {
    pub async fn sqlite() -> Self {
        Self::start(TestDatabase::sqlite()).await
    }

    pub async fn postgres() -> Self {
        Self::start(TestDatabase::postgres().await).await
    }

    /// The application with the default chart of accounts and fiscal year 2025 open.
    pub async fn start(database: TestDatabase) -> Self {
        let app = Self::bare(database).await;
        let company = app.state.companies.default_company();
        app.state
            .ledger
            .init_default_chart(&company, &Origin::system())
            .await
            .expect("default chart");
        let reply = app
            .post(
                "/api/v1/ledger/fiscal-years",
                json!({ "start": TEST_YEAR_START }),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
        app
    }

    /// The application on a freshly migrated database with one administrator, nothing else.
    pub async fn bare(database: TestDatabase) -> Self {
        Self::bare_with_compiled_plugins(database, &compiled_plugins_dir()).await
    }

    /// Like [`TestApp::bare`], keeping compiled plugins in `compiled_plugins`.
    pub async fn bare_with_compiled_plugins(
        database: TestDatabase,
        compiled_plugins: &std::path::Path,
    ) -> Self {
        let state = open_state(&database, compiled_plugins).await;
        let (admin_id, admin_token) = create_user(&state, "admin", "admin").await;
        Self {
            router: api::app(state.clone()),
            state,
            database,
            admin_token,
            admin_id,
            compiled_plugins: compiled_plugins.to_owned(),
        }
    }

    /// The same database and compiled plugins in a new application, as after a restart.
    pub async fn restarted(self) -> Self {
        let state = open_state(&self.database, &self.compiled_plugins).await;
        Self {
            router: api::app(state.clone()),
            state,
            ..self
        }
    }

    /// A custom role `<username>-role` with these permissions, and a user holding it; returns
    /// the user's id and API token.
    pub async fn user_with_permissions(&self, username: &str, permissions: Value) -> (i64, String) {
        let role = format!("{username}-role");
        let created = self
            .post(
                "/api/v1/roles",
                json!({ "name": role, "permissions": permissions }),
            )
            .await;
        assert_eq!(created.status, 201, "{}", created.text);
        self.user_with_role(username, &role).await
    }

    /// A new user holding `role` in the default company; returns the user's id and API token.
    pub async fn user_with_role(&self, username: &str, role: &str) -> (i64, String) {
        create_user(&self.state, username, role).await
    }

    /// A request as the administrator (unless `headers` carries its own `authorization`).
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Reply {
        let bearer = format!("Bearer {}", self.admin_token);
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        if !headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("authorization"))
        {
            all.push(("authorization", &bearer));
        }
        self.request_raw(method, path, &all, body).await
    }

    /// A request as the holder of `token`.
    pub async fn as_user(
        &self,
        token: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Reply {
        let header = format!("Bearer {token}");
        self.request(
            method,
            path,
            &[("authorization", header.as_str())],
            body.map(|b| b.to_string().into_bytes()),
        )
        .await
    }

    /// A request with exactly these headers: no credentials unless given.
    pub async fn request_raw(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Reply {
        let mut builder = Request::builder().method(method).uri(path);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        if body.is_some() {
            builder = builder.header("content-type", "application/json");
        }
        let request = builder
            .body(body.map_or_else(Body::empty, Body::from))
            .expect("a request");
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("the router answers");
        let status = response.status();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("a body")
            .to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(text.clone()))
        };
        Reply {
            status,
            content_type,
            body,
            text,
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.request(Method::GET, path, &[], None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.request(Method::POST, path, &[], Some(body.to_string().into_bytes()))
            .await
    }

    pub async fn post_keyed(&self, path: &str, key: &str, body: Value) -> Reply {
        self.request(
            Method::POST,
            path,
            &[("idempotency-key", key)],
            Some(body.to_string().into_bytes()),
        )
        .await
    }

    pub async fn post_raw(&self, path: &str, body: &str) -> Reply {
        self.request(Method::POST, path, &[], Some(body.as_bytes().to_vec()))
            .await
    }

    /// Installs a plugin component, grants everything it asks for and enables it; returns
    /// the plugin as the API shows it.
    pub async fn install_enabled(&self, component: Vec<u8>) -> Value {
        let installed = self
            .request(Method::POST, "/api/v1/plugins", &[], Some(component))
            .await;
        assert_eq!(installed.status, 201, "{}", installed.text);
        let name = installed.body["name"].as_str().expect("a name").to_owned();
        let enabled = self
            .patch(
                &format!("/api/v1/plugins/{name}"),
                json!({ "granted": installed.body["requested"], "status": "enabled" }),
            )
            .await;
        assert_eq!(enabled.status, 200, "{}", enabled.text);
        enabled.body
    }

    pub async fn patch(&self, path: &str, body: Value) -> Reply {
        self.request(
            Method::PATCH,
            path,
            &[],
            Some(body.to_string().into_bytes()),
        )
        .await
    }

    /// Posts a two-line entry and returns its id.
    pub async fn post_simple(
        &self,
        date: &str,
        debit_account: &str,
        credit_account: &str,
        amount: &str,
    ) -> i64 {
        let reply = self
            .post(
                "/api/v1/ledger/entries",
                simple_entry(date, debit_account, credit_account, amount),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
        reply.body["id"].as_i64().expect("an entry id")
    }

    /// How many entries and lines are stored: "nothing was written" checks compare these.
    pub async fn row_counts(&self) -> (i64, i64) {
        let count = |table: &'static str| async move {
            let sql = format!("SELECT COUNT(*) AS n FROM {table}");
            match &self.state.db {
                Database::Sqlite(pools) => {
                    sqlx::query_scalar::<_, i64>(&sql)
                        .fetch_one(&pools.reads)
                        .await
                }
                Database::Postgres(pool) => {
                    sqlx::query_scalar::<_, i64>(&sql).fetch_one(pool).await
                }
            }
            .expect("counting rows")
        };
        (count("ledger_entries").await, count("ledger_lines").await)
    }

    /// The id of the fiscal period with this name (YYYY-MM).
    pub async fn period_id(&self, name: &str) -> i64 {
        let periods = self.get("/api/v1/ledger/periods").await;
        periods
            .body
            .as_array()
            .expect("periods")
            .iter()
            .find(|p| p["name"] == name)
            .and_then(|p| p["id"].as_i64())
            .unwrap_or_else(|| panic!("no period {name}"))
    }
}

/// Creates a user with a role in the default company and an API token for them.
pub async fn create_user(state: &AppState, username: &str, role: &str) -> (i64, String) {
    let origin = Origin::system();
    let mut tx = state.db.begin_write().await.expect("a transaction");
    let new = NewUser {
        username: username.to_owned(),
        display_name: None,
        email: None,
        kind: None,
        password: Some(format!("{username} password 123")),
        manager: None,
    };
    let user = state
        .identity
        .create_user(&mut tx, &new, &origin)
        .await
        .expect("creating a user");
    let company = state.companies.default_company();
    state
        .authz
        .grant(&mut tx, company.id, user.id, role, None, &origin)
        .await
        .expect("granting a role");
    let token = state
        .identity
        .create_api_token(
            &mut tx,
            user.id,
            &NewToken {
                name: "test".into(),
                expires_in_days: None,
            },
            &origin,
        )
        .await
        .expect("a token");
    tx.commit().await.expect("committing");
    state.authz.reload().await.expect("reloading the policy");
    (user.id, token.token)
}

pub fn simple_entry(date: &str, debit_account: &str, credit_account: &str, amount: &str) -> Value {
    json!({
        "date": date,
        "memo": format!("{debit_account} against {credit_account}"),
        "lines": [
            { "account": debit_account, "debit": amount },
            { "account": credit_account, "credit": amount },
        ]
    })
}

/// Compiled plugins shared by every test run on this machine: the cache is keyed by the
/// engine and the component's hash, so sharing it only saves compiling again.
pub fn compiled_plugins_dir() -> std::path::PathBuf {
    std::env::temp_dir().join("keel-test-compiled-plugins")
}

async fn open_state(database: &TestDatabase, compiled_plugins: &std::path::Path) -> AppState {
    let db = Database::open(&database.location)
        .await
        .expect("opening the test database");
    let companies = Arc::new(
        Companies::bootstrap(&db, None)
            .await
            .expect("bootstrapping the company"),
    );
    AppState::new(db, companies, compiled_plugins)
        .await
        .expect("the application state")
}

/// A component `scripts/build-plugins` built, by its path below the target folder.
pub fn built_component(relative: &str) -> Vec<u8> {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"),
        std::path::PathBuf::from,
    );
    let path = target.join(relative);
    std::fs::read(&path).unwrap_or_else(|error| {
        panic!(
            "{}: {error}; build the plugins first with scripts/build-plugins",
            path.display()
        )
    })
}

/// A Rust plugin `scripts/build-plugins` built, by its crate name (`spoke-1`, `sfa`).
pub fn rust_plugin(name: &str) -> Vec<u8> {
    built_component(&format!(
        "wasm32-wasip2/plugin/{}.wasm",
        name.replace('-', "_")
    ))
}
