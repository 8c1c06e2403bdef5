//! The plugin runtime end to end, on both backends: installing real components, grants and
//! permissions, a plugin's routes and operations, the lifecycle (upgrade with a migration,
//! uninstall, purge), and the faults the sandbox must contain.
//!
//! The components are built by `scripts/build-plugins` (the test command runs it first).

mod common;

use axum::http::Method;
use common::{TestApp, TestDatabase, built_component, rust_plugin};
use keel_host::audit::Origin;
use serde_json::{Value, json};

async fn install(app: &TestApp, bytes: Vec<u8>) -> common::Reply {
    app.request(Method::POST, "/api/v1/plugins", &[], Some(bytes))
        .await
}

async fn entry_count(app: &TestApp) -> usize {
    let entries = app.get("/api/v1/ledger/entries?limit=500").await;
    assert_eq!(entries.status, 200, "{}", entries.text);
    entries.body["entries"].as_array().expect("entries").len()
}

/// The expense-claims module, whatever language it is written in.
async fn expense_claims_work(app: &TestApp, bytes: Vec<u8>, api_version: &str) {
    let installed = install(app, bytes).await;
    assert_eq!(installed.status, 201, "{}", installed.text);
    assert_eq!(installed.body["name"], "expenses");
    assert_eq!(installed.body["status"], "disabled");
    assert_eq!(installed.body["api_version"], api_version);
    assert_eq!(installed.body["granted"], json!([]));
    let mut requested: Vec<String> =
        serde_json::from_value(installed.body["requested"].clone()).expect("names");
    requested.sort();
    assert_eq!(requested, ["ledger:post", "storage"]);

    let (_, employee) = app
        .user_with_permissions(
            "erin",
            json!([{ "resource": "plugins.expenses", "action": "use" }]),
        )
        .await;
    let (approver_id, approver) = app
        .user_with_permissions(
            "avery",
            json!([
                { "resource": "plugins.expenses", "action": "*" },
                { "resource": "ledger.entries", "action": "post" }
            ]),
        )
        .await;
    let (_, outsider) = app.user_with_role("olive", "viewer").await;
    let claim =
        json!({ "description": "Train to the client", "amount": "42.50", "date": "2025-03-10" });

    // Disabled: the routes do not answer yet.
    let early = app
        .as_user(
            &employee,
            Method::POST,
            "/api/v1/plugins/expenses/claims",
            Some(claim.clone()),
        )
        .await;
    assert_eq!(early.status, 404, "{}", early.text);

    let enabled = app
        .patch(
            "/api/v1/plugins/expenses",
            json!({ "granted": ["storage", "ledger:post"], "status": "enabled" }),
        )
        .await;
    assert_eq!(enabled.status, 200, "{}", enabled.text);
    assert_eq!(enabled.body["migrated_version"], installed.body["version"]);

    let submitted = app
        .as_user(
            &employee,
            Method::POST,
            "/api/v1/plugins/expenses/claims",
            Some(claim.clone()),
        )
        .await;
    assert_eq!(submitted.status, 201, "{}", submitted.text);
    assert_eq!(submitted.body["id"], 1);
    assert_eq!(submitted.body["status"], "submitted");
    assert_eq!(submitted.body["amount"], "42.5");

    let invalid = app
        .as_user(
            &employee,
            Method::POST,
            "/api/v1/plugins/expenses/claims",
            Some(json!({ "description": "Lunch", "amount": "-3", "date": "yesterday" })),
        )
        .await;
    assert_eq!(invalid.status, 422, "{}", invalid.text);
    let mut fields: Vec<&str> = invalid.body["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| e["field"].as_str().expect("a field"))
        .collect();
    fields.sort_unstable();
    assert_eq!(fields, ["amount", "date"]);
    let malformed = app
        .request(
            Method::POST,
            "/api/v1/plugins/expenses/claims",
            &[("authorization", &format!("Bearer {employee}"))],
            Some(b"{not json".to_vec()),
        )
        .await;
    assert_eq!(malformed.status, 422, "{}", malformed.text);

    let outsider_try = app
        .as_user(
            &outsider,
            Method::GET,
            "/api/v1/plugins/expenses/claims",
            None,
        )
        .await;
    assert_eq!(outsider_try.status, 403, "{}", outsider_try.text);
    let anonymous = app
        .request_raw(Method::GET, "/api/v1/plugins/expenses/claims", &[], None)
        .await;
    assert_eq!(anonymous.status, 401);

    let self_approval = app
        .as_user(
            &employee,
            Method::POST,
            "/api/v1/plugins/expenses/claims/1/approve",
            None,
        )
        .await;
    assert_eq!(self_approval.status, 403, "{}", self_approval.text);

    let entries_before = entry_count(app).await;
    let approved = app
        .as_user(
            &approver,
            Method::POST,
            "/api/v1/plugins/expenses/claims/1/approve",
            None,
        )
        .await;
    assert_eq!(approved.status, 200, "{}", approved.text);
    assert_eq!(approved.body["status"], "approved");
    assert_eq!(approved.body["decided_by"], approver_id);
    let entry_id = approved.body["entry"].as_i64().expect("the posted entry");
    assert_eq!(entry_count(app).await, entries_before + 1);
    let entry = app.get(&format!("/api/v1/ledger/entries/{entry_id}")).await;
    assert_eq!(entry.status, 200, "{}", entry.text);
    assert_eq!(
        entry.body["source"],
        json!({ "module": "expenses", "document": "claim-1" })
    );
    let lines = entry.body["lines"].as_array().expect("lines");
    assert_eq!(lines[0]["account"], "6600");
    assert_eq!(lines[0]["debit"], "42.50");
    assert_eq!(lines[1]["account"], "2100");
    assert_eq!(lines[1]["credit"], "42.50");

    let twice = app
        .as_user(
            &approver,
            Method::POST,
            "/api/v1/plugins/expenses/claims/1/approve",
            None,
        )
        .await;
    assert_eq!(twice.status, 409, "{}", twice.text);
    assert_eq!(entry_count(app).await, entries_before + 1);

    let second = app
        .as_user(
            &employee,
            Method::POST,
            "/api/v1/plugins/expenses/claims",
            Some(claim.clone()),
        )
        .await;
    assert_eq!(second.body["id"], 2);
    let rejected = app
        .as_user(
            &approver,
            Method::POST,
            "/api/v1/plugins/expenses/claims/2/reject",
            Some(json!({ "reason": "duplicate of claim 1" })),
        )
        .await;
    assert_eq!(rejected.status, 200, "{}", rejected.text);
    assert_eq!(rejected.body["reason"], "duplicate of claim 1");

    let listed = app
        .as_user(
            &employee,
            Method::GET,
            "/api/v1/plugins/expenses/claims",
            None,
        )
        .await;
    assert_eq!(listed.status, 200, "{}", listed.text);
    let statuses: Vec<&str> = listed.body["claims"]
        .as_array()
        .expect("claims")
        .iter()
        .map(|c| c["status"].as_str().expect("a status"))
        .collect();
    assert_eq!(statuses, ["approved", "rejected"]);
    let missing = app
        .as_user(
            &employee,
            Method::GET,
            "/api/v1/plugins/expenses/claims/99",
            None,
        )
        .await;
    assert_eq!(missing.status, 404);

    // Exactly once: a replayed key returns the first answer and submits nothing twice.
    let bearer = format!("Bearer {employee}");
    let keyed = async |body: &Value| {
        app.request(
            Method::POST,
            "/api/v1/plugins/expenses/claims",
            &[
                ("authorization", &bearer),
                ("idempotency-key", "taxi-2025-03-11"),
            ],
            Some(body.to_string().into_bytes()),
        )
        .await
    };
    let taxi = json!({ "description": "Taxi", "amount": "18.40", "date": "2025-03-11" });
    let first = keyed(&taxi).await;
    assert_eq!(first.status, 201, "{}", first.text);
    assert_eq!(first.body["id"], 3);
    let replayed = keyed(&taxi).await;
    assert_eq!(
        (replayed.status, &replayed.body),
        (first.status, &first.body)
    );
    let reused =
        keyed(&json!({ "description": "Taxi", "amount": "81.40", "date": "2025-03-11" })).await;
    assert_eq!(reused.status, 409, "{}", reused.text);
    let claims = app
        .as_user(
            &employee,
            Method::GET,
            "/api/v1/plugins/expenses/claims",
            None,
        )
        .await;
    assert_eq!(claims.body["claims"].as_array().expect("claims").len(), 3);

    let company = app.state.companies.default_company();
    let summary = app
        .state
        .runtime
        .invoke(
            &company,
            "expenses",
            None,
            &Origin::system(),
            "summary",
            "{}",
        )
        .await
        .expect("the summary operation");
    let summary: Value = serde_json::from_str(&summary).expect("JSON");
    assert_eq!(summary["approved"], json!({ "count": 1, "total": "42.5" }));
    assert_eq!(summary["rejected"], json!({ "count": 1, "total": "42.5" }));
    assert_eq!(summary["submitted"], json!({ "count": 1, "total": "18.4" }));

    // Every change the plugin made is in the audit trail under its name.
    let audit = app.get("/api/v1/audit?limit=500").await;
    let by_plugin: Vec<&str> = audit.body["records"]
        .as_array()
        .expect("records")
        .iter()
        .filter(|r| r["actor_plugin"] == "expenses")
        .map(|r| r["action"].as_str().expect("an action"))
        .collect();
    assert!(by_plugin.contains(&"plugin.storage:put"), "{by_plugin:?}");
    assert!(by_plugin.contains(&"ledger.entries:post"), "{by_plugin:?}");
    let verification = app.get("/api/v1/audit/verification").await;
    assert_eq!(verification.body["intact"], true, "{}", verification.text);

    let listed = app.get("/api/v1/plugins").await;
    let stats = &listed.body[0]["stats"];
    assert!(stats["calls"].as_u64().expect("calls") >= 10, "{stats}");
    assert!(stats["latency_p99_us"].as_u64().is_some(), "{stats}");
    assert!(stats["fuel_used"].as_u64().expect("fuel") > 0, "{stats}");
}

on_both_backends! {
    async fn the_rust_expense_module_works_end_to_end(app: TestApp) {
        expense_claims_work(&app, rust_plugin("expenses_rust"), "0.2.2").await;
    }

    async fn the_python_expense_module_works_end_to_end(app: TestApp) {
        expense_claims_work(&app, built_component("plugins-python/expenses.wasm"), "0.1.0").await;
    }

    async fn the_javascript_expense_module_works_end_to_end(app: TestApp) {
        expense_claims_work(&app, built_component("plugins-js/expenses.wasm"), "0.1.0").await;
    }

    async fn faults_are_contained_counted_and_the_host_keeps_serving(app: TestApp) {
        let installed = install(&app, rust_plugin("faulty")).await;
        assert_eq!(installed.status, 201, "{}", installed.text);
        // Storage and posting granted; parties:read requested but withheld.
        let changed = app.patch("/api/v1/plugins/faulty", json!({
            "granted": ["storage", "ledger:post"],
            "status": "enabled",
            "limits": { "fuel": 300000000, "output_bytes": 1048576 }
        })).await;
        assert_eq!(changed.status, 200, "{}", changed.text);
        let entries = entry_count(&app).await;

        let looping = app.get("/api/v1/plugins/faulty/loop").await;
        assert_eq!(looping.status, 502, "{}", looping.text);
        assert_eq!(looping.body["type"], "urn:keel:problem:plugin-limit-exceeded", "{}", looping.text);
        assert!(looping.text.contains("CPU budget"), "{}", looping.text);

        let allocating = app.get("/api/v1/plugins/faulty/allocate").await;
        assert_eq!(allocating.status, 502, "{}", allocating.text);
        assert_eq!(allocating.body["type"], "urn:keel:problem:plugin-limit-exceeded", "{}", allocating.text);
        assert!(allocating.text.contains("memory"), "{}", allocating.text);

        let trapped = app.post("/api/v1/plugins/faulty/post-then-trap", json!({})).await;
        assert_eq!(trapped.status, 502, "{}", trapped.text);
        assert_eq!(trapped.body["type"], "urn:keel:problem:plugin-failed", "{}", trapped.text);
        assert_eq!(entry_count(&app).await, entries, "nothing of a trapped call is kept");

        let refused = app.post("/api/v1/plugins/faulty/post-then-fail", json!({})).await;
        assert_eq!(refused.status, 409, "{}", refused.text);
        assert_eq!(entry_count(&app).await, entries, "an error response rolls back");

        let too_big = app.get("/api/v1/plugins/faulty/big-output?bytes=2000000").await;
        assert_eq!(too_big.status, 502, "{}", too_big.text);
        assert!(too_big.text.contains("1048576 bytes"), "{}", too_big.text);

        let chatty = app.get("/api/v1/plugins/faulty/host-calls").await;
        assert_eq!(chatty.status, 502, "{}", chatty.text);
        assert!(chatty.text.contains("host calls"), "{}", chatty.text);

        let ungranted = app.get("/api/v1/plugins/faulty/parties").await;
        assert_eq!(ungranted.status, 403, "{}", ungranted.text);
        assert!(ungranted.text.contains("has not been granted parties:read"), "{}", ungranted.text);

        // Granted ledger:post, acting for a user who may not post.
        let (_, user) = app.user_with_permissions("uma", json!([{ "resource": "plugins.faulty", "action": "use" }])).await;
        let lacking = app.as_user(&user, Method::POST, "/api/v1/plugins/faulty/post", Some(json!({}))).await;
        assert_eq!(lacking.status, 403, "{}", lacking.text);
        assert!(lacking.text.contains("lacks the permission ledger.entries:post"), "{}", lacking.text);
        assert_eq!(entry_count(&app).await, entries);

        // No files, no environment, no network; the clock works.
        let escape = app.get("/api/v1/plugins/faulty/escape").await;
        assert_eq!(escape.status, 200, "{}", escape.text);
        assert_eq!(escape.body["files"], Value::Null, "{}", escape.text);
        assert_eq!(escape.body["environment"], 0, "{}", escape.text);
        assert_eq!(escape.body["network"], false, "{}", escape.text);
        assert!(escape.body["time"].as_u64().expect("a time") > 1_700_000_000);

        // A call that waits too long, and a plugin whose admin capped its request rate.
        let capped = app.patch("/api/v1/plugins/faulty", json!({
            "limits": { "fuel": 300000000, "output_bytes": 1048576, "wall_time_ms": 300, "requests_per_second": 3 }
        })).await;
        assert_eq!(capped.status, 200, "{}", capped.text);
        let sleepy = app.get("/api/v1/plugins/faulty/sleep?ms=5000").await;
        assert_eq!(sleepy.status, 502, "{}", sleepy.text);
        assert!(sleepy.text.contains("ran longer than 300 ms"), "{}", sleepy.text);
        let mut statuses = Vec::new();
        for _ in 0..4 {
            statuses.push(app.get("/api/v1/plugins/faulty/ok").await.status.as_u16());
        }
        assert!(statuses.contains(&429), "{statuses:?}");
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        let uncapped = app.patch("/api/v1/plugins/faulty", json!({
            "limits": { "fuel": 300000000, "output_bytes": 1048576 }
        })).await;
        assert_eq!(uncapped.status, 200, "{}", uncapped.text);

        // The host, and the plugin, keep serving.
        let fine = app.get("/api/v1/plugins/faulty/ok").await;
        assert_eq!(fine.status, 200, "{}", fine.text);
        let posted = app.post("/api/v1/plugins/faulty/post", json!({})).await;
        assert_eq!(posted.status, 201, "{}", posted.text);
        assert_eq!(entry_count(&app).await, entries + 1);

        let company = app.state.companies.default_company();
        let runtime = &app.state.runtime;
        let echo = runtime.invoke(&company, "faulty", None, &Origin::system(), "echo", "[1,2]").await;
        assert_eq!(echo.expect("echo"), "[1,2]");
        let failing = runtime.invoke(&company, "faulty", None, &Origin::system(), "fail", "{}").await;
        assert!(matches!(failing, Err(keel_host::error::Error::Invalid(_))), "{failing:?}");

        let stats = &app.get("/api/v1/plugins/faulty").await.body["stats"];
        assert_eq!(stats["limit_hits"], 5, "{stats}");
        // The missing grant and the missing permission.
        assert_eq!(stats["denied_host_calls"], 2, "{stats}");
        // The five limit hits, the trap, and the plugin's own failing operation.
        assert_eq!(stats["errors"], 7, "{stats}");
    }

    async fn installing_refuses_what_is_not_a_plugin_for_this_host(app: TestApp) {
        let other_world = install(&app, rust_plugin("other_world")).await;
        assert_eq!(other_world.status, 422, "{}", other_world.text);
        assert!(other_world.text.contains("acme:gadgets/widgets@0.1.0"), "{}", other_world.text);

        let expenses = rust_plugin("expenses_rust");
        let truncated = install(&app, expenses[..expenses.len() / 2].to_vec()).await;
        assert_eq!(truncated.status, 422, "{}", truncated.text);
        assert!(truncated.text.contains("not a valid WebAssembly component"), "{}", truncated.text);

        let core_module = install(&app, b"\0asm\x01\0\0\0".to_vec()).await;
        assert_eq!(core_module.status, 422, "{}", core_module.text);
        assert!(core_module.text.contains("core WebAssembly module"), "{}", core_module.text);

        let text = install(&app, b"#!/bin/sh\necho hello\n".to_vec()).await;
        assert_eq!(text.status, 422, "{}", text.text);

        let (_, viewer) = app.user_with_role("vic", "viewer").await;
        let forbidden = app.request(
            Method::POST,
            "/api/v1/plugins",
            &[("authorization", &format!("Bearer {viewer}"))],
            Some(expenses.clone()),
        ).await;
        assert_eq!(forbidden.status, 403, "{}", forbidden.text);

        assert_eq!(app.get("/api/v1/plugins").await.body, json!([]));
        // The host keeps serving and can still install a good one.
        let good = install(&app, expenses).await;
        assert_eq!(good.status, 201, "{}", good.text);
        let again = install(&app, rust_plugin("expenses_rust")).await;
        assert_eq!(again.status, 409, "{}", again.text);
    }

    async fn grants_are_limited_to_what_the_manifest_requests(app: TestApp) {
        let installed = install(&app, rust_plugin("expenses_rust")).await;
        assert_eq!(installed.status, 201);
        let too_much = app.patch("/api/v1/plugins/expenses", json!({ "granted": ["storage", "parties:write"] })).await;
        assert_eq!(too_much.status, 422, "{}", too_much.text);
        assert!(too_much.text.contains("does not ask for parties:write"), "{}", too_much.text);
        let unknown = app.patch("/api/v1/plugins/expenses", json!({ "granted": ["files:write"] })).await;
        assert_eq!(unknown.status, 422, "{}", unknown.text);
        let bad_limits = app.patch("/api/v1/plugins/expenses", json!({ "limits": { "memory_bytes": 0 } })).await;
        assert_eq!(bad_limits.status, 422, "{}", bad_limits.text);
        assert_eq!(bad_limits.body["errors"][0]["field"], "limits.memory_bytes");
        let unchanged = app.get("/api/v1/plugins/expenses").await;
        assert_eq!(unchanged.body["granted"], json!([]));
        assert_eq!(unchanged.body["status"], "disabled");
    }

    async fn upgrades_migrate_in_one_transaction_and_uninstall_keeps_data_until_purged(app: TestApp) {
        let v1 = app.install_enabled(rust_plugin("faulty")).await;
        assert_eq!(v1["version"], "1.0.0");
        assert_eq!(app.get("/api/v1/plugins/faulty/migrated-from").await.body, Value::Null);
        let remembered = app.post("/api/v1/plugins/faulty/remember", json!({ "kept": true })).await;
        assert_eq!(remembered.status, 201, "{}", remembered.text);
        let sneaky = app.get("/api/v1/plugins/faulty/write-in-get").await;
        assert_eq!(sneaky.status, 403, "{}", sneaky.text);
        assert!(sneaky.text.contains("read-only"), "{}", sneaky.text);

        let v2 = built_component("plugins-v2/wasm32-wasip2/plugin/faulty.wasm");
        let upgrade = |bytes: Vec<u8>| app.request(Method::PUT, "/api/v1/plugins/faulty", &[], Some(bytes));

        // A migration that fails leaves version 1 active and its data untouched.
        assert_eq!(app.post("/api/v1/plugins/faulty/fail-next-migration", json!({})).await.status, 200);
        let failed = upgrade(v2.clone()).await;
        assert_eq!(failed.status, 409, "{}", failed.text);
        assert!(failed.text.contains("asked to fail its migration"), "{}", failed.text);
        let still = app.get("/api/v1/plugins/faulty").await;
        assert_eq!(still.body["version"], "1.0.0");
        assert_eq!(app.get("/api/v1/plugins/faulty/version").await.body, "1.0.0");
        assert_eq!(app.get("/api/v1/plugins/faulty/migrated-from").await.body, Value::Null,
            "the failed migration's own writes are undone");

        let same = upgrade(rust_plugin("faulty")).await;
        assert_eq!(same.status, 409, "{}", same.text);
        assert!(same.text.contains("not newer"), "{}", same.text);
        let wrong = upgrade(rust_plugin("expenses_rust")).await;
        assert_eq!(wrong.status, 422, "{}", wrong.text);

        assert_eq!(app.request(Method::DELETE, "/api/v1/plugins/faulty/fail-next-migration", &[], None).await.status, 200);
        let upgraded = upgrade(v2).await;
        assert_eq!(upgraded.status, 200, "{}", upgraded.text);
        assert_eq!(upgraded.body["version"], "2.0.0");
        assert_eq!(upgraded.body["migrated_version"], "2.0.0");
        assert_eq!(upgraded.body["status"], "enabled");
        assert_eq!(app.get("/api/v1/plugins/faulty/version").await.body, "2.0.0");
        assert_eq!(app.get("/api/v1/plugins/faulty/migrated-from").await.body, "1.0.0");
        assert_eq!(app.get("/api/v1/plugins/faulty/remembered").await.body, json!({ "kept": true }));

        // Uninstalling keeps the data; purging needs the uninstall first.
        let early_purge = app.request(Method::DELETE, "/api/v1/plugins/faulty?purge=true", &[], None).await;
        assert_eq!(early_purge.status, 409, "{}", early_purge.text);
        let removed = app.request(Method::DELETE, "/api/v1/plugins/faulty", &[], None).await;
        assert_eq!(removed.status, 204, "{}", removed.text);
        assert_eq!(app.get("/api/v1/plugins/faulty/ok").await.status, 404);
        let back = app.install_enabled(rust_plugin("faulty")).await;
        assert_eq!(back["version"], "1.0.0");
        assert_eq!(app.get("/api/v1/plugins/faulty/remembered").await.body, json!({ "kept": true }));

        assert_eq!(app.request(Method::DELETE, "/api/v1/plugins/faulty", &[], None).await.status, 204);
        let purged = app.request(Method::DELETE, "/api/v1/plugins/faulty?purge=true", &[], None).await;
        assert_eq!(purged.status, 204, "{}", purged.text);
        assert_eq!(app.get("/api/v1/plugins/faulty").await.status, 404);
        let fresh = app.install_enabled(rust_plugin("faulty")).await;
        assert_eq!(fresh["migrated_version"], "1.0.0");
        assert_eq!(app.get("/api/v1/plugins/faulty/remembered").await.body, Value::Null);

        let audit = app.get("/api/v1/audit?object_type=plugin&limit=500").await;
        let actions: Vec<&str> = audit.body["records"].as_array().expect("records").iter()
            .map(|r| r["action"].as_str().expect("an action")).collect();
        for action in ["plugins:install", "plugins:change", "plugins:upgrade", "plugins:uninstall", "plugins:purge"] {
            assert!(actions.contains(&action), "{action} in {actions:?}");
        }
    }
}

/// A restart finds every installed plugin in the compiled cache and compiles nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_loads_plugins_from_the_compiled_cache() {
    let cache = tempfile::tempdir().expect("a temporary folder");
    let first = TestApp::bare_with_compiled_plugins(TestDatabase::sqlite(), cache.path()).await;
    first.install_enabled(rust_plugin("expenses_rust")).await;
    assert_eq!(first.state.runtime.compilations(), 1);

    let second = first.restarted().await;
    assert_eq!(
        second
            .state
            .runtime
            .load_installed()
            .await
            .expect("loading"),
        1
    );
    assert_eq!(second.state.runtime.compilations(), 0);
    let claims = second.get("/api/v1/plugins/expenses/claims").await;
    assert_eq!(claims.status, 200, "{}", claims.text);
}
