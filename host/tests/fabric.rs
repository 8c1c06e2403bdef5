//! The plugin fabric end to end, on both backends: plugins built against keel:platform@0.1.0
//! running unchanged beside 0.2.0 ones, indexed storage, events with retries and dead
//! letters, calls between plugins, and extension points with their hooks.
//!
//! The components are built by `scripts/build-plugins`; the golden ones are committed under
//! `tests/golden/`.

mod common;

use std::io::Read as _;
use std::path::{Path, PathBuf};

use axum::http::Method;
use common::{TestApp, rust_plugin};
use keel_host::runtime::{ApiVersion, DispatchPolicy, Runtime, RuntimeOptions};
use keel_host::testing::{Step, contains};
use serde_json::{Value, json};

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn gunzip(path: &Path) -> Vec<u8> {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(file)
        .read_to_end(&mut bytes)
        .expect("a gzip file");
    bytes
}

async fn send(app: &TestApp, method: Method, path: &str, body: &Value) -> common::Reply {
    app.request(
        method,
        path,
        &[("content-type", "application/json")],
        Some(body.to_string().into_bytes()),
    )
    .await
}

/// Fast retries, so a delivery runs out of attempts within a test.
fn quick_retries(app: &TestApp) {
    app.state.runtime.set_dispatch_policy(DispatchPolicy {
        attempts_max: 3,
        backoff_base_ms: 0,
        backoff_max_ms: 0,
        ..keel_host::runtime::DEFAULT_POLICY
    });
}

async fn seen(app: &TestApp, plugin: &str) -> Vec<Value> {
    let seen = app.get(&format!("/api/v1/plugins/{plugin}/seen")).await;
    assert_eq!(seen.status, 200, "{}", seen.text);
    seen.body.as_array().expect("a list").clone()
}

on_both_backends! {
    async fn golden_plugins_of_every_released_version_run_unchanged(app: TestApp) {
        let mut ran = Vec::new();
        for (version, language) in [
            ("0.1.0", "rust"),
            ("0.1.0", "python"),
            ("0.1.0", "js"),
            ("0.2.0", "rust"),
            ("0.2.1", "rust"),
            ("0.2.2", "rust"),
        ] {
            let golden = workspace().join("tests/golden").join(version);
            let scenario = std::fs::read_to_string(golden.join("expenses.scenario.jsonl"))
                .expect("the golden scenario");
            let bytes = gunzip(&golden.join(format!("expenses-{language}.wasm.gz")));
            let plugin = app.install_enabled(bytes).await;
            assert_eq!(plugin["api_version"], version, "{plugin}");
            ran.push(format!("{version}/{language}"));
            for line in scenario.lines().filter(|l| !l.trim().is_empty() && !l.starts_with('#')) {
                let step: Step = serde_json::from_str(line).expect("a scenario step");
                let path = format!("/api/v1/plugins/expenses{}", step.path);
                let method = Method::from_bytes(step.method.as_bytes()).expect("a method");
                let reply = match &step.body {
                    Some(body) => send(&app, method, &path, body).await,
                    None => app.request(method, &path, &[], None).await,
                };
                assert_eq!(reply.status.as_u16(), step.status, "{language}: {line}: {}", reply.text);
                if let Some(expected) = &step.expect {
                    assert!(contains(&reply.body, expected), "{language}: {line}: {}", reply.text);
                }
            }
            let removed = app.request(Method::DELETE, "/api/v1/plugins/expenses", &[], None).await;
            assert_eq!(removed.status, 204, "{}", removed.text);
            let purged = app
                .request(Method::DELETE, "/api/v1/plugins/expenses?purge=true", &[], None)
                .await;
            assert_eq!(purged.status, 204, "{}", purged.text);
        }
        // Every golden component committed is one of those run above.
        let mut committed = Vec::new();
        for version in std::fs::read_dir(workspace().join("tests/golden")).expect("tests/golden") {
            let version = version.expect("an entry").path();
            for file in std::fs::read_dir(&version).expect("a version folder") {
                let name = file.expect("an entry").file_name().to_string_lossy().into_owned();
                if let Some(language) = name.strip_prefix("expenses-").and_then(|n| n.strip_suffix(".wasm.gz")) {
                    let version = version.file_name().expect("a name").to_string_lossy();
                    committed.push(format!("{version}/{language}"));
                }
            }
        }
        committed.sort();
        ran.sort();
        assert_eq!(committed, ran, "a golden component is committed but not run");
        // A 0.2.2 plugin runs beside them.
        let hub = app.install_enabled(rust_plugin("hub")).await;
        assert_eq!(hub["api_version"], "0.2.2", "{hub}");
    }

    async fn a_host_serving_only_0_1_0_refuses_a_0_2_plugin_clearly(app: TestApp) {
        let cache = tempfile::tempdir().expect("a temporary folder");
        let old_host = Runtime::with_options(
            app.state.db.clone(),
            app.state.authz.clone(),
            cache.path(),
            RuntimeOptions { served: vec![ApiVersion::V0_1], ..RuntimeOptions::default() },
        )
        .expect("a runtime");
        let company = app.state.companies.default_company();
        let origin = keel_host::audit::Origin::system();
        let refused = old_host
            .install(&company, &rust_plugin("hub"), &origin)
            .await
            .expect_err("a 0.2.2 plugin on a 0.1.0 host");
        let message = refused.to_string();
        assert!(message.contains("keel:platform@0.2.2"), "{message}");
        assert!(message.contains("serves 0.1.0"), "{message}");
        // The same host still takes a 0.1.0 plugin.
        let golden = gunzip(&workspace().join("tests/golden/0.1.0/expenses-rust.wasm.gz"));
        let installed = old_host.install(&company, &golden, &origin).await.expect("a 0.1.0 plugin");
        assert_eq!(installed.api_version, "0.1.0");
    }

    async fn many_records_come_in_one_call_and_a_read_for_update_needs_a_writing_call(app: TestApp) {
        app.install_enabled(rust_plugin("hub")).await;
        for (key, total) in [("a", 1), ("c", 3)] {
            let put = app
                .request(Method::PUT, &format!("/api/v1/plugins/hub/orders/{key}"), &[], Some(json!({ "total": total }).to_string().into_bytes()))
                .await;
            assert_eq!(put.status, 200, "{}", put.text);
        }
        let many = app.post("/api/v1/plugins/hub/get-many", json!({ "keys": ["c", "b", "a", "c"] })).await;
        assert_eq!(many.status, 200, "{}", many.text);
        assert_eq!(many.body, json!([{ "total": 3 }, null, { "total": 1 }, { "total": 3 }]));
        let too_many: Vec<String> = (0..1_001).map(|i| format!("k{i}")).collect();
        let refused = app.post("/api/v1/plugins/hub/get-many", json!({ "keys": too_many })).await;
        refused.assert_problem(422, &["keys"]);
        let empty_key = app.post("/api/v1/plugins/hub/get-many", json!({ "keys": ["a", ""] })).await;
        empty_key.assert_problem(422, &["keys[1]"]);

        let reserved = app.post("/api/v1/plugins/hub/reserved/a", json!({})).await;
        assert_eq!(reserved.body, json!({ "total": 1 }), "{}", reserved.text);
        let read_only = app.get("/api/v1/plugins/hub/reserved/a").await;
        read_only.assert_problem(403, &[]);
        assert!(read_only.text.contains("read-only"), "{}", read_only.text);
    }

    async fn indexed_storage_answers_equality_and_ranges_in_order_with_cursors(app: TestApp) {
        app.install_enabled(rust_plugin("hub")).await;
        let orders = [
            ("o1", "open", json!(30), 7),
            ("o2", "open", json!(10), 8),
            ("o3", "closed", json!(20), 7),
            ("o4", "open", json!(20), 9),
            ("o5", "open", json!(5.5), 7),
        ];
        for (key, status, total, customer) in orders {
            let order = json!({ "status": status, "total": total, "customer": { "id": customer } });
            let put = send(&app, Method::PUT, &format!("/api/v1/plugins/hub/orders/{key}"), &order).await;
            assert_eq!(put.status, 200, "{}", put.text);
        }
        let find = async |query: Value| {
            let reply = app.post("/api/v1/plugins/hub/find", query).await;
            assert_eq!(reply.status, 200, "{}", reply.text);
            reply.body
        };
        let open = find(json!({ "index": "by-status-total", "equals": ["open"] })).await;
        assert_eq!(open["keys"], json!(["o5", "o2", "o4", "o1"]), "{open}");
        let ranged = find(json!({ "index": "by-status-total", "equals": ["open"], "from": 10, "to": 30 })).await;
        assert_eq!(ranged["keys"], json!(["o2", "o4"]), "{ranged}");
        let newest = find(json!({ "index": "by-status-total", "equals": ["open"], "descending": true, "limit": 2 })).await;
        assert_eq!(newest["keys"], json!(["o1", "o4"]), "{newest}");
        let rest = find(json!({ "index": "by-status-total", "equals": ["open"], "descending": true,
                                "limit": 2, "after": newest["next"] })).await;
        assert_eq!(rest["keys"], json!(["o2", "o5"]), "{rest}");
        let customer = find(json!({ "index": "by-customer", "equals": [7] })).await;
        assert_eq!(customer["keys"], json!(["o1", "o3", "o5"]), "{customer}");

        // Changing and deleting records keeps the indexes in step.
        let closed = json!({ "status": "closed", "total": 30, "customer": { "id": 7 } });
        send(&app, Method::PUT, "/api/v1/plugins/hub/orders/o1", &closed).await;
        app.request(Method::DELETE, "/api/v1/plugins/hub/orders/o5", &[], None).await;
        let open = find(json!({ "index": "by-status-total", "equals": ["open"] })).await;
        assert_eq!(open["keys"], json!(["o2", "o4"]), "{open}");
        let closed = find(json!({ "index": "by-status-total", "equals": ["closed"] })).await;
        assert_eq!(closed["keys"], json!(["o3", "o1"]), "{closed}");

        let unknown = app.post("/api/v1/plugins/hub/find", json!({ "index": "by-colour" })).await;
        assert_eq!(unknown.status, 422, "{}", unknown.text);
        let too_many = app
            .post("/api/v1/plugins/hub/find", json!({ "index": "by-customer", "equals": [1, 2] }))
            .await;
        assert_eq!(too_many.status, 422, "{}", too_many.text);
        let cursor = app
            .post("/api/v1/plugins/hub/find", json!({ "index": "by-customer", "after": "nonsense" }))
            .await;
        assert_eq!(cursor.status, 422, "{}", cursor.text);

        // Version 2 indexes orders differently: the upgrade rebuilds the changed and new
        // indexes over the records stored so far, and drops the one no longer declared.
        let v2 = std::fs::read(workspace().join("target/plugins-v2/wasm32-wasip2/plugin/hub.wasm"))
            .expect("hub 2.0.0, built by scripts/build-plugins");
        let upgraded = app.request(Method::PUT, "/api/v1/plugins/hub", &[], Some(v2)).await;
        assert_eq!(upgraded.status, 200, "{}", upgraded.text);
        assert_eq!(upgraded.body["version"], "2.0.0");
        let by_total = find(json!({ "index": "by-total", "from": 15, "to": 40 })).await;
        assert_eq!(by_total["keys"], json!(["o3", "o4", "o1"]), "{by_total}");
        let customer = find(json!({ "index": "by-customer", "equals": [7], "descending": true })).await;
        assert_eq!(customer["keys"], json!(["o1", "o3"]), "{customer}");
        let gone = app
            .post("/api/v1/plugins/hub/find", json!({ "index": "by-status-total", "equals": ["open"] }))
            .await;
        assert_eq!(gone.status, 422, "{}", gone.text);
    }

    async fn events_arrive_in_order_failures_retry_then_dead_letter_and_replay(app: TestApp) {
        quick_retries(&app);
        app.install_enabled(rust_plugin("hub")).await;
        app.install_enabled(rust_plugin("spoke-1")).await;
        app.install_enabled(rust_plugin("spoke-2")).await;
        let publish = async |subject: &str, payload: Value| {
            let reply = app
                .post("/api/v1/plugins/hub/publish",
                      json!({ "topic": "hub.thing.happened", "subject": subject, "payload": payload }))
                .await;
            assert_eq!(reply.status, 201, "{}", reply.text);
            reply.body["id"].as_i64().expect("an id")
        };
        let first = publish("thing/1", json!({ "n": 1 })).await;
        let failing = publish("thing/2", json!({ "n": 2, "fail": "spoke-2" })).await;
        let second = publish("thing/1", json!({ "n": 3 })).await;
        assert!(first < failing && failing < second);
        let round = app.state.runtime.dispatch_all().await.expect("dispatching");
        assert_eq!(round.dead, 1, "{round:?}");

        let ids = |events: Vec<Value>| -> Vec<i64> { events.iter().map(|e| e["id"].as_i64().expect("an id")).collect() };
        // The handlers' writes are audited with the round, under the subscriber's name.
        let audit = app.get("/api/v1/audit?object_type=plugin.record&limit=500").await;
        assert_eq!(audit.status, 200, "{}", audit.text);
        let by_spoke = audit.body["records"]
            .as_array()
            .expect("records")
            .iter()
            .filter(|r| r["actor_plugin"] == "spoke-2" && r["action"] == "plugin.storage:put")
            .count();
        assert_eq!(by_spoke, 4, "two events, two writes each: {}", audit.text);
        let verification = app.get("/api/v1/audit/verification").await;
        assert_eq!(verification.body["intact"], true, "{}", verification.text);
        assert_eq!(ids(seen(&app, "spoke-1").await), vec![first, failing, second]);
        assert_eq!(ids(seen(&app, "spoke-2").await), vec![first, second]);

        let dead = app.get("/api/v1/events/dead-letters").await;
        assert_eq!(dead.status, 200, "{}", dead.text);
        let letters = dead.body.as_array().expect("a list");
        assert_eq!(letters.len(), 1, "{}", dead.text);
        assert_eq!(letters[0]["subscriber"], "spoke-2");
        assert_eq!(letters[0]["attempts"], 3);
        assert_eq!(letters[0]["event"]["id"], failing);
        assert!(letters[0]["last_error"].as_str().expect("an error").contains("told to fail"), "{}", dead.text);

        let nothing = app.post("/api/v1/events/dead-letters", json!({ "plugin": "spoke-1" })).await;
        assert_eq!(nothing.status, 404, "{}", nothing.text);
        let malformed = app.post_raw("/api/v1/events/dead-letters", "{\"plugin\":").await;
        assert_eq!(malformed.status, 400, "{}", malformed.text);
        let replayed = app.post("/api/v1/events/dead-letters", json!({ "plugin": "spoke-2" })).await;
        assert_eq!(replayed.status, 200, "{}", replayed.text);
        assert_eq!(replayed.body["replayed"], 1);
        let round = app.state.runtime.dispatch_all().await.expect("dispatching");
        assert_eq!((round.retried, round.dead), (2, 1), "{round:?}");

        // An event for a subscriber uninstalled before delivery waits for it to come back.
        let removed = app.request(Method::DELETE, "/api/v1/plugins/spoke-1", &[], None).await;
        assert_eq!(removed.status, 204, "{}", removed.text);
        let waiting = publish("thing/3", json!({ "n": 4 })).await;
        app.install_enabled(rust_plugin("spoke-1")).await;
        app.state.runtime.dispatch_all().await.expect("dispatching");
        assert!(!ids(seen(&app, "spoke-1").await).contains(&waiting), "not subscribed while uninstalled");
        let kept = publish("thing/3", json!({ "n": 5 })).await;
        app.request(Method::DELETE, "/api/v1/plugins/spoke-1", &[], None).await;
        app.state.runtime.dispatch_all().await.expect("dispatching");
        app.install_enabled(rust_plugin("spoke-1")).await;
        app.state.runtime.dispatch_all().await.expect("dispatching");
        assert!(ids(seen(&app, "spoke-1").await).contains(&kept), "kept for the reinstalled subscriber");

        // The host's own events.
        let posted = app
            .post("/api/v1/ledger/entries", common::simple_entry("2025-02-01", "1020", "4000", "10.00"))
            .await;
        assert_eq!(posted.status, 201, "{}", posted.text);
        let party = app
            .post("/api/v1/parties", json!({ "kind": "organization", "name": "Fabrikam", "roles": ["customer"] }))
            .await;
        assert_eq!(party.status, 201, "{}", party.text);
        let party_id = party.body["id"].as_i64().expect("an id");
        let renamed = app.patch(&format!("/api/v1/parties/{party_id}"), json!({ "name": "Fabrikam Inc" })).await;
        assert_eq!(renamed.status, 200, "{}", renamed.text);
        let twin = app
            .post("/api/v1/parties", json!({ "kind": "organization", "name": "Fabrikam Twin", "allow_duplicate": true }))
            .await;
        assert_eq!(twin.status, 201, "{}", twin.text);
        let merged = app
            .post(&format!("/api/v1/parties/{}/merge", twin.body["id"]), json!({ "into": party_id }))
            .await;
        assert_eq!(merged.status, 200, "{}", merged.text);
        let march = app.period_id("2025-03").await;
        let closed = app.post(&format!("/api/v1/ledger/periods/{march}/close"), json!(null)).await;
        assert_eq!(closed.status, 200, "{}", closed.text);
        app.state.runtime.dispatch_all().await.expect("dispatching");
        let hub_seen = seen(&app, "hub").await;
        let has = |topic: &str, subject: String| {
            hub_seen.iter().any(|e| e["topic"] == topic && e["subject"] == subject.as_str())
        };
        assert!(has("ledger.entry.posted", format!("entry/{}", posted.body["id"])), "{hub_seen:?}");
        assert!(hub_seen.iter().any(|e| e["topic"] == "parties.party.created" && e["payload"]["name"] == "Fabrikam"), "{hub_seen:?}");
        assert!(hub_seen.iter().any(|e| e["topic"] == "parties.party.updated" && e["payload"]["name"] == "Fabrikam Inc"), "{hub_seen:?}");
        assert!(has("parties.party.merged", format!("party/{}", twin.body["id"])), "{hub_seen:?}");
        assert!(has("ledger.period.closed", format!("period/{march}")), "{hub_seen:?}");
    }

    async fn calls_need_a_grant_share_the_callers_transaction_and_stop_cycles(app: TestApp) {
        app.install_enabled(rust_plugin("hub")).await;
        app.install_enabled(rust_plugin("spoke-1")).await;
        app.install_enabled(rust_plugin("spoke-2")).await;
        app.install_enabled(rust_plugin("spoke-3")).await;
        let call = async |plugin: &str, operation: &str| {
            app.post("/api/v1/plugins/hub/call",
                     json!({ "plugin": plugin, "operation": operation, "input": { "x": 1 } }))
                .await
        };
        let echoed = call("spoke-1", "echo").await;
        assert_eq!(echoed.status, 200, "{}", echoed.text);
        assert_eq!(echoed.body, json!({ "from": "spoke-1", "input": { "x": 1 } }));

        let ungranted = call("spoke-3", "echo").await;
        assert_eq!(ungranted.status, 403, "{}", ungranted.text);
        assert!(ungranted.text.contains("call:spoke-3/echo"), "{}", ungranted.text);
        let unknown = call("spoke-1", "nothing").await;
        assert_eq!(unknown.status, 403, "not granted either: {}", unknown.text);

        let failed = call("spoke-1", "write-then-fail").await;
        assert_eq!(failed.status, 409, "{}", failed.text);
        let notes = app.get("/api/v1/plugins/spoke-1/notes").await;
        assert_eq!(notes.body, json!([]), "the failed call's write is rolled back: {}", notes.text);

        let cycle = call("spoke-1", "recurse").await;
        assert_eq!(cycle.status, 429, "{}", cycle.text);
        assert!(cycle.text.contains("nest at most"), "{}", cycle.text);

        // Disabling the callee, or revoking the grant, stops the call.
        let disabled = app.patch("/api/v1/plugins/spoke-2", json!({ "status": "disabled" })).await;
        assert_eq!(disabled.status, 200, "{}", disabled.text);
        let to_disabled = call("spoke-2", "echo").await;
        assert_eq!(to_disabled.status, 404, "{}", to_disabled.text);
        let revoked = app.patch("/api/v1/plugins/hub", json!({ "granted": ["storage"] })).await;
        assert_eq!(revoked.status, 200, "{}", revoked.text);
        assert_eq!(call("spoke-1", "echo").await.status, 403);
    }

    async fn hooks_run_in_order_and_failures_are_handled_as_declared(app: TestApp) {
        app.install_enabled(rust_plugin("hub")).await;
        for spoke in ["spoke-3", "spoke-1", "spoke-2"] {
            app.install_enabled(rust_plugin(spoke)).await;
        }
        let run = async |point: &str, input: Value| {
            app.post(&format!("/api/v1/plugins/hub/hooks/{point}"), input).await
        };
        let lines = json!([{ "sku": "A", "price": 100 }]);
        let chained = run("adjust", json!({ "lines": lines })).await;
        assert_eq!(chained.status, 200, "{}", chained.text);
        assert_eq!(chained.body["applied"], json!(["spoke-1", "spoke-2", "spoke-3"]));
        assert_eq!(chained.body["lines"][0]["price"], json!(97.03));

        for fault in ["invalid", "loop", "trap", "error"] {
            let skipped = run("adjust", json!({ "lines": lines, "misbehave": { "spoke-2": fault } })).await;
            assert_eq!(skipped.status, 200, "{fault}: {}", skipped.text);
            assert_eq!(skipped.body["applied"], json!(["spoke-1", "spoke-3"]), "{fault}");
            let failed = run("strict", json!({ "lines": lines, "misbehave": { "spoke-2": fault } })).await;
            assert_eq!(failed.status, 500, "{fault}: {}", failed.text);
            assert!(failed.text.contains("spoke-2"), "{fault}: {}", failed.text);
        }

        let invalid = run("adjust", json!({ "lines": [{ "sku": "A" }] })).await;
        assert_eq!(invalid.status, 422, "{}", invalid.text);
        assert!(invalid.text.contains("input.lines[0].price"), "{}", invalid.text);
        let undeclared = run("nothing", json!({ "lines": [] })).await;
        assert_eq!(undeclared.status, 422, "{}", undeclared.text);

        // A disabled implementation is left out.
        app.patch("/api/v1/plugins/spoke-1", json!({ "status": "disabled" })).await;
        let fewer = run("adjust", json!({ "lines": lines })).await;
        assert_eq!(fewer.body["applied"], json!(["spoke-2", "spoke-3"]), "{}", fewer.text);
    }
}

on_both_backends! {
    async fn plugins_declare_custom_fields_on_parties(app: TestApp) {
        app.install_enabled(rust_plugin("hub")).await;
        let fields = app.get("/api/v1/parties/fields").await;
        assert_eq!(fields.status, 200, "{}", fields.text);
        let rating = fields
            .body
            .as_array()
            .expect("a list")
            .iter()
            .find(|f| f["name"] == "hub_rating")
            .cloned()
            .unwrap_or_else(|| panic!("hub_rating is declared: {}", fields.text));
        assert_eq!(rating["owner_plugin"], "hub");
        assert_eq!(rating["field_type"], "enum");

        let created = app
            .post("/api/v1/parties", json!({ "kind": "organization", "name": "Northwind",
                    "roles": ["customer"], "custom_fields": { "hub_rating": "a", "hub_note": "prefers rail freight" } }))
            .await;
        assert_eq!(created.status, 201, "{}", created.text);
        assert_eq!(created.body["custom_fields"]["hub_rating"], "a");
        let wrong = app
            .post("/api/v1/parties", json!({ "kind": "organization", "name": "Contoso",
                    "custom_fields": { "hub_rating": "z" } }))
            .await;
        wrong.assert_problem(422, &["custom_fields.hub_rating"]);
        let found = app.get("/api/v1/parties?q=rail%20freight").await;
        assert_eq!(found.status, 200, "{}", found.text);
        assert_eq!(found.body["parties"][0]["name"], "Northwind", "{}", found.text);

        // The plugin owns its fields: an admin cannot change or drop them.
        let changed = app.patch("/api/v1/parties/fields/hub_rating", json!({ "label": "Mine" })).await;
        assert_eq!(changed.status, 409, "{}", changed.text);
        let dropped = app.request(Method::DELETE, "/api/v1/parties/fields/hub_note", &[], None).await;
        assert_eq!(dropped.status, 409, "{}", dropped.text);
        // Uninstalling keeps the fields and their values.
        app.request(Method::DELETE, "/api/v1/plugins/hub", &[], None).await;
        let party = app.get(&format!("/api/v1/parties/{}", created.body["id"])).await;
        assert_eq!(party.body["custom_fields"]["hub_note"], "prefers rail freight", "{}", party.text);
    }
}
