//! End to end: the real `keel` binary, its CLI and its HTTP server, on both backends.

#[path = "../host/tests/common/mod.rs"]
mod common;
mod process;

use common::TestDatabase;
use process::{Server, keel};
use serde_json::{Value, json};

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

async fn cli_and_server_share_one_ledger(database: TestDatabase) {
    let output = keel(&["migrate"], &database);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).contains("keeps its books in USD"));

    let output = keel(&["ledger", "init-chart"], &database);
    assert!(
        stdout(&output).contains("added 49 accounts"),
        "{}{}",
        stdout(&output),
        stderr(&output)
    );
    let output = keel(&["ledger", "init-chart"], &database);
    assert!(
        stdout(&output).contains("added 0 accounts"),
        "loading the chart twice adds nothing"
    );
    let output = keel(&["ledger", "open-year", "2025-01-01"], &database);
    assert!(output.status.success(), "{}", stderr(&output));

    let dir = tempfile::tempdir().expect("a temporary folder");
    let csv = dir.path().join("entries.csv");
    std::fs::write(
        &csv,
        "entry,date,memo,account,debit,credit\n\
         1,2025-01-02,Owner's capital,1020,25000.00,\n\
         1,2025-01-02,Owner's capital,3000,,25000.00\n\
         2,2025-01-05,January rent,6100,1500.00,\n\
         2,2025-01-05,January rent,1020,,1500.00\n",
    )
    .expect("writing the CSV");
    let csv_path = csv.display().to_string();
    let output = keel(
        &["ledger", "post", &csv_path, "--idempotency-key", "import-1"],
        &database,
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).starts_with("posted 2 entries"),
        "{}",
        stdout(&output)
    );
    let output = keel(
        &["ledger", "post", &csv_path, "--idempotency-key", "import-1"],
        &database,
    );
    assert!(
        stdout(&output).starts_with("already posted 2 entries"),
        "{}",
        stdout(&output)
    );

    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"date": "2025-01-06", "lines": [{"account": "1020", "debit": "5.00"}, {"account": "4000", "credit": "4.00"}]}"#)
        .expect("writing the JSON");
    let output = keel(&["ledger", "post", &bad.display().to_string()], &database);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("entries[0].lines: the entry does not balance"),
        "{}",
        stderr(&output)
    );

    let (server, printed) = Server::start_printing(&database).await;
    assert!(
        printed.contains("keel user add admin --role admin"),
        "an empty install says how to create the first admin: {printed}"
    );
    let anonymous = reqwest::Client::new();
    let refused = anonymous
        .get(server.url("/api/v1/ledger/accounts"))
        .send()
        .await
        .expect("a request");
    assert_eq!(refused.status(), 401, "no route answers without a token");
    let token = process::add_admin(&database);
    let client = process::client(&token);

    // A custom role made from the CLI works for the server at once.
    let output = keel(
        &[
            "role",
            "create",
            "clerk",
            "--permission",
            "ledger.entries:post",
            "--permission",
            "ledger.accounts:read",
        ],
        &database,
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let output = keel(&["user", "add", "clara", "--role", "clerk"], &database);
    assert!(output.status.success(), "{}", stderr(&output));
    let clara = process::client(stdout(&output).lines().last().expect("a token").trim());
    let listed = keel(&["role", "list"], &database);
    assert!(stdout(&listed).contains("clerk"), "{}", stdout(&listed));
    let forbidden = clara
        .get(server.url("/api/v1/ledger/trial-balance"))
        .send()
        .await
        .expect("a request");
    assert_eq!(forbidden.status(), 403, "a clerk does not read reports");
    let posted = client
        .post(server.url("/api/v1/ledger/entries"))
        .header("Idempotency-Key", "sale-1")
        .json(&json!({
            "date": "2025-01-10",
            "memo": "First sale",
            "lines": [{ "account": "1100", "debit": "4000.00" }, { "account": "4000", "credit": "4000.00" }]
        }))
        .send()
        .await
        .expect("posting");
    assert_eq!(posted.status(), 201);

    // The CLI reads the same books while the server runs.
    let output = keel(
        &[
            "ledger",
            "trial-balance",
            "--as-of",
            "2025-12-31",
            "--format",
            "csv",
        ],
        &database,
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(
        text.contains("1020,Bank - operating account,asset,23500.00,"),
        "{text}"
    );
    assert!(
        text.contains("1100,Accounts receivable,asset,4000.00,"),
        "{text}"
    );
    assert!(
        text.trim_end().ends_with(",Total,,29000.00,29000.00"),
        "{text}"
    );

    let tb: Value = client
        .get(server.url("/api/v1/ledger/trial-balance?as_of=2025-12-31"))
        .send()
        .await
        .expect("trial balance")
        .json()
        .await
        .expect("JSON");
    assert_eq!(tb["total_debit"], "29000.00");
    assert_eq!(tb["balanced"], true);

    let output = keel(&["ledger", "close-period", "2025-01"], &database);
    assert!(output.status.success(), "{}", stderr(&output));
    let refused = client
        .post(server.url("/api/v1/ledger/entries"))
        .json(&json!({
            "date": "2025-01-31",
            "lines": [{ "account": "1100", "debit": "1.00" }, { "account": "4000", "credit": "1.00" }]
        }))
        .send()
        .await
        .expect("posting");
    assert_eq!(
        refused.status(),
        422,
        "a period closed from the CLI is closed for the server"
    );
    assert_eq!(
        refused.headers()["content-type"],
        "application/problem+json"
    );

    let status = server.terminate();
    assert!(
        status.success(),
        "SIGTERM stops the server cleanly: {status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_and_server_share_one_ledger_on_sqlite() {
    cli_and_server_share_one_ledger(TestDatabase::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_and_server_share_one_ledger_on_postgres() {
    cli_and_server_share_one_ledger(TestDatabase::postgres().await).await;
}

#[test]
fn an_unsupported_database_url_is_refused_with_advice() {
    let output = std::process::Command::new(process::keel_binary())
        .args(["migrate", "--database-url", "mysql://localhost/keel"])
        .output()
        .expect("running keel");
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("postgres://"),
        "{}",
        stderr(&output)
    );
}

async fn the_cli_imports_and_exports_parties(database: TestDatabase) {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let csv = dir.path().join("parties.csv");
    std::fs::write(
        &csv,
        "external_id,name,kind,roles,emails\n\
         C-1,Zephyr Widgets GmbH,organization,customer,billing@zephyr.example\n\
         C-2,Broken Row,organization,customer,not-an-email\n\
         C-3,Ada Lovelace,person,contact,ada@example.org\n",
    )
    .expect("writing the file");
    let path = csv.to_str().expect("a UTF-8 path");

    let dry = keel(&["parties", "import", path, "--dry-run"], &database);
    assert_eq!(dry.status.code(), Some(1), "a bad row fails the command");
    assert!(
        stdout(&dry).contains("3 rows: would create 2"),
        "{}",
        stdout(&dry)
    );
    assert!(
        stdout(&dry).contains("line 3: emails[0]"),
        "{}",
        stdout(&dry)
    );

    let strict = keel(&["parties", "import", path, "--all-or-nothing"], &database);
    assert!(
        stdout(&strict).contains("nothing was written"),
        "{}",
        stdout(&strict)
    );
    let export = keel(&["parties", "export"], &database);
    assert!(export.status.success(), "{}", stderr(&export));
    assert_eq!(
        stdout(&export).lines().count(),
        1,
        "only the header: {}",
        stdout(&export)
    );

    let real = keel(&["parties", "import", path], &database);
    assert!(stdout(&real).contains("created 2"), "{}", stdout(&real));
    let again = keel(&["parties", "import", path], &database);
    assert!(
        stdout(&again).contains("created 0, updated 2"),
        "{}",
        stdout(&again)
    );

    let xlsx = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/parties.xlsx");
    let workbook = keel(&["parties", "import", xlsx], &database);
    assert!(
        stdout(&workbook).contains("2 rows: created 1"),
        "{}{}",
        stdout(&workbook),
        stderr(&workbook)
    );

    let out = dir.path().join("export.csv");
    let export = keel(
        &[
            "parties",
            "export",
            "--output",
            out.to_str().expect("UTF-8"),
        ],
        &database,
    );
    assert!(export.status.success(), "{}", stderr(&export));
    let text = std::fs::read_to_string(&out).expect("the export");
    assert_eq!(text.lines().count(), 4, "{text}");
    assert!(text.contains("Umbrella Holdings"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_imports_and_exports_parties_on_sqlite() {
    the_cli_imports_and_exports_parties(TestDatabase::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_imports_and_exports_parties_on_postgres() {
    the_cli_imports_and_exports_parties(TestDatabase::postgres().await).await;
}

fn workspace_file(relative: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative);
    assert!(
        path.exists(),
        "{} is missing; build the plugins first with scripts/build-plugins",
        path.display()
    );
    path.display().to_string()
}

async fn the_cli_manages_and_tests_plugins(database: TestDatabase) {
    let expenses = workspace_file("target/wasm32-wasip2/plugin/expenses_rust.wasm");
    let installed = keel(&["plugin", "install", &expenses], &database);
    assert!(installed.status.success(), "{}", stderr(&installed));
    assert!(
        stdout(&installed).contains("keel plugin grant expenses ledger:post storage"),
        "{}",
        stdout(&installed)
    );
    let too_much = keel(&["plugin", "grant", "expenses", "parties:write"], &database);
    assert_eq!(too_much.status.code(), Some(1));
    assert!(
        stderr(&too_much).contains("does not ask for parties:write"),
        "{}",
        stderr(&too_much)
    );
    let granted = keel(
        &["plugin", "grant", "expenses", "storage", "ledger:post"],
        &database,
    );
    assert!(granted.status.success(), "{}", stderr(&granted));
    let enabled = keel(&["plugin", "enable", "expenses"], &database);
    assert!(enabled.status.success(), "{}", stderr(&enabled));
    let listed = keel(&["plugin", "list"], &database);
    assert!(
        stdout(&listed).contains("expenses 1.0.0 (Enabled"),
        "{}",
        stdout(&listed)
    );
    let not_wasm = keel(
        &["plugin", "install", &workspace_file("README.md")],
        &database,
    );
    assert_eq!(not_wasm.status.code(), Some(1));
    assert!(
        stderr(&not_wasm).contains("not a WebAssembly file"),
        "{}",
        stderr(&not_wasm)
    );
    let uninstalled = keel(&["plugin", "uninstall", "expenses"], &database);
    assert!(
        stdout(&uninstalled).contains("its data is kept"),
        "{}",
        stdout(&uninstalled)
    );
    let purged = keel(&["plugin", "purge", "expenses"], &database);
    assert!(purged.status.success(), "{}", stderr(&purged));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_manages_and_tests_plugins_on_sqlite() {
    the_cli_manages_and_tests_plugins(TestDatabase::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_manages_and_tests_plugins_on_postgres() {
    the_cli_manages_and_tests_plugins(TestDatabase::postgres().await).await;
}

#[test]
fn keel_plugin_test_runs_a_scenario_on_a_throwaway_host() {
    let scenario = workspace_file("examples/expenses.scenario.jsonl");
    for component in [
        "target/wasm32-wasip2/plugin/expenses_rust.wasm",
        "target/plugins-js/expenses.wasm",
    ] {
        let output = std::process::Command::new(process::keel_binary())
            .args(["plugin", "test", &workspace_file(component), &scenario])
            .env("KEEL_LOG", "warn")
            .output()
            .expect("running keel");
        assert!(
            output.status.success(),
            "{component}: {}{}",
            stdout(&output),
            stderr(&output)
        );
        assert!(
            stdout(&output).contains("ok: line 8: GET /claims -> 200"),
            "{}",
            stdout(&output)
        );
    }

    let dir = tempfile::tempdir().expect("a temporary folder");
    let wrong = dir.path().join("wrong.jsonl");
    std::fs::write(
        &wrong,
        r#"{"method": "GET", "path": "/claims", "status": 200, "expect": {"claims": [{"id": 1}]}}"#,
    )
    .expect("writing the scenario");
    let output = std::process::Command::new(process::keel_binary())
        .args([
            "plugin",
            "test",
            &workspace_file("target/wasm32-wasip2/plugin/expenses_rust.wasm"),
            &wrong.display().to_string(),
        ])
        .env("KEEL_LOG", "warn")
        .output()
        .expect("running keel");
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stdout(&output).contains("FAILED: line 1"),
        "{}",
        stdout(&output)
    );
}

/// This process's count of delivered events, from its Prometheus metrics.
async fn delivered_by(server: &Server) -> u64 {
    let metrics = reqwest::get(server.url("/metrics"))
        .await
        .expect("the metrics")
        .text()
        .await
        .expect("metrics text");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("keel_events_delivered_total "))
        .map_or(0, |n| n.trim().parse().expect("a count"))
}

/// Two `keel serve` processes on one PostgreSQL database share event delivery: each event
/// reaches each subscriber exactly once, though both processes deliver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_event_delivery_on_postgres() {
    const EVENTS: usize = 600;
    let database = TestDatabase::postgres().await;
    let token = process::add_admin(&database);
    for plugin in ["hub", "spoke_1", "spoke_2"] {
        let file = workspace_file(&format!("target/wasm32-wasip2/plugin/{plugin}.wasm"));
        let installed = keel(&["plugin", "install", &file], &database);
        assert!(installed.status.success(), "{}", stderr(&installed));
    }
    let grants: [&[&str]; 3] = [
        &["hub", "storage", "events:publish"],
        &["spoke-1", "storage"],
        &["spoke-2", "storage"],
    ];
    for grant in grants {
        let mut args = vec!["plugin", "grant"];
        args.extend_from_slice(grant);
        let granted = keel(&args, &database);
        assert!(granted.status.success(), "{}", stderr(&granted));
        let enabled = keel(&["plugin", "enable", grant[0]], &database);
        assert!(enabled.status.success(), "{}", stderr(&enabled));
    }
    // Small batches, so that both processes find work while the other holds some.
    let (first, _) = Server::start_with(&database, &["--event-batch", "5"]).await;
    let (second, _) = Server::start_with(&database, &["--event-batch", "5"]).await;
    let client = process::client(&token);
    let publishes = (0..EVENTS).map(|n| {
        let server = if n % 2 == 0 { &first } else { &second };
        let request = client
            .post(server.url("/api/v1/plugins/hub/publish"))
            .json(
                &json!({ "topic": "hub.thing.happened", "subject": format!("thing/{}", n % 50),
                           "payload": { "n": n } }),
            )
            .send();
        async move {
            let response = request.await.expect("publishing");
            assert_eq!(response.status(), 201);
        }
    });
    futures::future::join_all(publishes).await;

    let started = std::time::Instant::now();
    loop {
        let mut done = true;
        for spoke in ["spoke-1", "spoke-2"] {
            let counts: Value = client
                .get(first.url(&format!("/api/v1/plugins/{spoke}/deliveries")))
                .send()
                .await
                .expect("the deliveries")
                .json()
                .await
                .expect("JSON");
            assert_eq!(
                counts["deliveries"], counts["events"],
                "{spoke} got an event twice: {counts}"
            );
            done &= counts["events"] == EVENTS;
        }
        if done {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(120),
            "deliveries stalled"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let (by_first, by_second) = (delivered_by(&first).await, delivered_by(&second).await);
    assert_eq!(
        by_first + by_second,
        2 * EVENTS as u64,
        "{by_first} + {by_second}"
    );
    assert!(
        by_first > 0 && by_second > 0,
        "both processes deliver: {by_first} and {by_second}"
    );
}

/// The sfa plugin installed with the CLI as `scripts/run` does, then the website's lead form
/// posted to a real server: anonymous requests reach the plugin, and the host counts them per
/// client address (here the loopback address the test connects from).
async fn the_web_form_takes_leads_without_credentials_within_a_rate(database: TestDatabase) {
    let sfa = workspace_file("target/wasm32-wasip2/plugin/sfa.wasm");
    for args in [
        vec!["plugin", "install", sfa.as_str()],
        vec![
            "plugin",
            "grant",
            "sfa",
            "storage",
            "parties:read",
            "http:public",
        ],
        vec!["plugin", "enable", "sfa"],
    ] {
        let output = keel(&args, &database);
        assert!(output.status.success(), "{args:?}: {}", stderr(&output));
    }
    let token = process::add_admin(&database);
    let server = Server::start(&database).await;
    let anonymous = reqwest::Client::new();
    let mut statuses = Vec::new();
    for i in 0..11 {
        let reply = anonymous
            .post(server.url("/api/v1/public/main/sfa/web-form"))
            .json(&json!({ "last_name": format!("Visitor {i}"), "email": format!("v{i}@example.com") }))
            .send()
            .await
            .expect("an answer");
        statuses.push(reply.status().as_u16());
    }
    assert_eq!(
        statuses,
        [202, 202, 202, 202, 202, 202, 202, 202, 202, 202, 429]
    );
    let leads: Value = process::client(&token)
        .get(server.url("/api/v1/plugins/sfa/leads?limit=100"))
        .send()
        .await
        .expect("an answer")
        .json()
        .await
        .expect("JSON");
    assert_eq!(leads["items"].as_array().map(Vec::len), Some(10), "{leads}");
    assert_eq!(leads["items"][0]["source"], "web");
    // The rest of the API still wants credentials.
    let refused = anonymous
        .get(server.url("/api/v1/plugins/sfa/leads"))
        .send()
        .await
        .expect("an answer");
    assert_eq!(refused.status().as_u16(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_form_takes_leads_without_credentials_within_a_rate_on_sqlite() {
    the_web_form_takes_leads_without_credentials_within_a_rate(TestDatabase::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_form_takes_leads_without_credentials_within_a_rate_on_postgres() {
    the_web_form_takes_leads_without_credentials_within_a_rate(TestDatabase::postgres().await)
        .await;
}
