//! Identity, permissions and the audit trail, through the HTTP API, on both backends.

mod common;

use axum::http::Method;
use common::{TestApp, simple_entry};
use keel_host::audit::Origin;
use keel_host::authz::{Scope, perm};
use serde_json::{Value, json};

/// Every documented operation with its path parameters filled in.
fn documented_operations() -> Vec<(Method, String, String)> {
    let document = serde_json::to_value(keel_host::api::openapi()).expect("the document");
    let mut operations = Vec::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("a path item").keys() {
            if let Ok(parsed) = Method::from_bytes(method.to_uppercase().as_bytes())
                && ["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&parsed.as_str())
            {
                let concrete = path
                    .replace("{code}", "1020")
                    .replace("{id}", "1")
                    .replace("{token_id}", "1")
                    .replace("{name}", "accountant")
                    .replace("{role}", "viewer");
                operations.push((parsed, path.clone(), concrete));
            }
        }
    }
    operations
}

/// Public operations: they exist to obtain credentials.
const PUBLIC: &[&str] = &["/api/v1/auth/login"];

async fn audit_records(app: &TestApp, query: &str) -> Vec<Value> {
    let reply = app.get(&format!("/api/v1/audit?{query}")).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    reply.body["records"].as_array().expect("records").clone()
}

on_both_backends! {
    async fn every_route_refuses_missing_malformed_expired_and_revoked_credentials(app: TestApp) {
        let (user_id, token) = app.user_with_role("temp", "admin").await;
        // Expire one token and revoke another, the way they happen in use.
        let (_, expired) = app.user_with_role("expired", "admin").await;
        let expire_sql = "UPDATE auth_tokens SET expires_at = $1 WHERE user_id = (SELECT id FROM users WHERE username = 'expired')";
        match &app.state.db {
            keel_host::db::Database::Sqlite(pools) => sqlx::query(expire_sql).bind(chrono::Utc::now() - chrono::Duration::hours(1)).execute(&pools.reads).await.map(|_| ()),
            keel_host::db::Database::Postgres(pool) => sqlx::query(expire_sql).bind(chrono::Utc::now() - chrono::Duration::hours(1)).execute(pool).await.map(|_| ()),
        }.expect("expiring a token");
        let tokens = app.get(&format!("/api/v1/users/{user_id}/tokens")).await;
        let token_id = tokens.body[0]["id"].as_i64().expect("a token id");
        assert_eq!(app.request(Method::DELETE, &format!("/api/v1/users/{user_id}/tokens/{token_id}"), &[], None).await.status, 200);

        let credentials: [(&str, Option<String>); 6] = [
            ("missing", None),
            ("not bearer", Some("Basic YWRtaW46YWRtaW4=".into())),
            ("empty bearer", Some("Bearer ".into())),
            ("unknown token", Some("Bearer keel_0000".into())),
            ("expired token", Some(format!("Bearer {expired}"))),
            ("revoked token", Some(format!("Bearer {token}"))),
        ];
        let operations = documented_operations();
        assert!(operations.len() > 40, "the walk covers the whole API ({} operations)", operations.len());
        for (method, path, concrete) in &operations {
            if PUBLIC.contains(&path.as_str()) {
                continue;
            }
            for (what, header) in &credentials {
                let headers: Vec<(&str, &str)> = header.iter().map(|h| ("authorization", h.as_str())).collect();
                let body = (*method != Method::GET).then(|| b"{}".to_vec());
                let reply = app.request_raw(method.clone(), concrete, &headers, body).await;
                assert_eq!(reply.status, 401, "{method} {path} with a {what} answered {}: {}", reply.status, reply.text);
                assert_eq!(reply.content_type, "application/problem+json");
            }
        }
    }

    async fn a_missing_permission_is_403_and_recorded_as_a_security_event(app: TestApp) {
        let (viewer, token) = app.user_with_role("vera", "viewer").await;
        let read = app.as_user(&token, Method::GET, "/api/v1/ledger/trial-balance", None).await;
        assert_eq!(read.status, 200, "a viewer reads the books");
        let post = app.as_user(&token, Method::POST, "/api/v1/ledger/entries", Some(simple_entry("2025-03-01", "1020", "4000", "1.00"))).await;
        post.assert_problem(403, &[]);
        assert!(post.text.contains("ledger.entries:post"), "{}", post.text);
        let denied = audit_records(&app, &format!("action=security:permission-denied&actor={viewer}")).await;
        assert_eq!(denied.len(), 1);
        assert!(denied[0]["change"].as_str().expect("change").contains("/api/v1/ledger/entries"));
        app.as_user(&token, Method::GET, "/api/v1/audit", None).await.assert_problem(403, &[]);
    }

    async fn an_auditor_reads_everything_including_the_audit_trail_and_changes_nothing(app: TestApp) {
        app.post_simple("2025-03-01", "1020", "4000", "5.00").await;
        let (_, token) = app.user_with_role("audrey", "auditor").await;
        for path in ["/api/v1/ledger/entries", "/api/v1/ledger/trial-balance", "/api/v1/audit", "/api/v1/users", "/api/v1/roles", "/api/v1/duty-rules"] {
            let reply = app.as_user(&token, Method::GET, path, None).await;
            assert_eq!(reply.status, 200, "{path}: {}", reply.text);
        }
        let writes = [
            (Method::POST, "/api/v1/ledger/entries", simple_entry("2025-03-02", "1020", "4000", "1.00")),
            (Method::POST, "/api/v1/ledger/accounts", json!({ "code": "9000", "name": "X", "type": "asset" })),
            (Method::POST, "/api/v1/users", json!({ "username": "mallory" })),
            (Method::POST, "/api/v1/roles", json!({ "name": "x", "permissions": [{ "resource": "audit", "action": "read" }] })),
        ];
        for (method, path, body) in writes {
            app.as_user(&token, method, path, Some(body)).await.assert_problem(403, &[]);
        }
    }

    async fn password_login_locks_after_repeated_failures_and_says_so(app: TestApp) {
        let wrong = json!({ "username": "admin", "password": "not the password" });
        for _ in 0..keel_host::identity::FAILED_LOGINS_BEFORE_LOCKOUT {
            let reply = app.request_raw(Method::POST, "/api/v1/auth/login", &[], Some(wrong.to_string().into_bytes())).await;
            reply.assert_problem(401, &[]);
        }
        let right = json!({ "username": "admin", "password": "admin password 123" });
        let locked = app.request_raw(Method::POST, "/api/v1/auth/login", &[], Some(right.to_string().into_bytes())).await;
        locked.assert_problem(429, &[]);
        assert!(locked.text.contains("locked"), "{}", locked.text);
        let failures = audit_records(&app, "action=security:login-failed").await;
        assert!(failures.len() >= 6, "every failed attempt is on record ({})", failures.len());

        // An administrator's reset lifts the lock.
        let (_, other_admin) = app.user_with_role("second-admin", "admin").await;
        let reset = app.as_user(&other_admin, Method::POST, &format!("/api/v1/users/{}/password", app.admin_id), Some(json!({ "new_password": "a brand new password" }))).await;
        assert_eq!(reset.status, 204, "{}", reset.text);
        let login = json!({ "username": "admin", "password": "a brand new password" });
        let session = app.request_raw(Method::POST, "/api/v1/auth/login", &[], Some(login.to_string().into_bytes())).await;
        assert_eq!(session.status, 200, "{}", session.text);
        let token = session.body["token"].as_str().expect("a session token").to_owned();
        let me = app.as_user(&token, Method::GET, "/api/v1/me", None).await;
        assert_eq!(me.body["user"]["username"], "admin");
        assert_eq!(me.body["roles"], json!(["admin"]));
        assert_eq!(app.as_user(&token, Method::POST, "/api/v1/auth/logout", None).await.status, 204);
        app.as_user(&token, Method::GET, "/api/v1/me", None).await.assert_problem(401, &[]);
    }

    async fn unknown_users_and_service_accounts_cannot_log_in_with_a_password(app: TestApp) {
        for body in [json!({ "username": "nobody", "password": "whatever password" })] {
            app.request_raw(Method::POST, "/api/v1/auth/login", &[], Some(body.to_string().into_bytes())).await.assert_problem(401, &[]);
        }
        let created = app.post("/api/v1/users", json!({ "username": "importer", "kind": "service" })).await;
        assert_eq!(created.status, 201, "{}", created.text);
        let with_password = app.post("/api/v1/users", json!({ "username": "importer2", "kind": "service", "password": "a long password" })).await;
        with_password.assert_problem(422, &["password"]);
        let token = app.post(&format!("/api/v1/users/{}/tokens", created.body["id"]), json!({ "name": "nightly import" })).await;
        assert_eq!(token.status, 201, "{}", token.text);
        assert!(token.body["token"].as_str().expect("the secret, once").starts_with("keel_"));
        let listed = app.get(&format!("/api/v1/users/{}/tokens", created.body["id"])).await;
        assert!(listed.body[0].get("token").is_none(), "listing never shows the secret");
        assert_eq!(listed.body[0]["prefix"], token.body["prefix"]);
    }

    async fn the_login_limit_per_address_holds_across_usernames(app: TestApp) {
        let address = Some("203.0.113.9".parse().expect("an address"));
        let mut last = None;
        for attempt in 0..=keel_host::identity::LOGIN_ATTEMPTS_PER_ADDRESS {
            let credentials = keel_host::identity::Credentials { username: format!("guess{attempt}"), password: "guess password".into() };
            last = Some(app.state.identity.login(&credentials, address, &Origin::system()).await);
        }
        match last.expect("attempts were made") {
            Err(keel_host::error::Error::TooManyRequests(message)) => assert!(message.contains("203.0.113.9")),
            other => panic!("expected the address to be limited, got {other:?}"),
        }
    }

    async fn nobody_can_grant_themselves_more_than_they_hold(app: TestApp) {
        let (accountant, token) = app.user_with_role("ann", "accountant").await;
        // Without roles:write at all.
        app.as_user(&token, Method::POST, &format!("/api/v1/users/{accountant}/roles"), Some(json!({ "role": "admin" }))).await.assert_problem(403, &[]);
        // A role manager who is not an admin cannot hand out admin, nor build a bigger role.
        let role = app.post("/api/v1/roles", json!({ "name": "role-manager", "permissions": [
            { "resource": "roles", "action": "*" }, { "resource": "users", "action": "read" }
        ]})).await;
        assert_eq!(role.status, 201, "{}", role.text);
        let (manager, manager_token) = app.user_with_role("rolf", "role-manager").await;
        let escalate = app.as_user(&manager_token, Method::POST, &format!("/api/v1/users/{manager}/roles"), Some(json!({ "role": "admin" }))).await;
        escalate.assert_problem(403, &[]);
        assert!(escalate.text.contains("do not hold"), "{}", escalate.text);
        let bigger = app.as_user(&manager_token, Method::POST, "/api/v1/roles", Some(json!({ "name": "sneaky", "permissions": [{ "resource": "ledger.*", "action": "*" }] }))).await;
        bigger.assert_problem(403, &[]);
        // Within what they hold, they may grant.
        let allowed = app.as_user(&manager_token, Method::POST, &format!("/api/v1/users/{accountant}/roles"), Some(json!({ "role": "role-manager" }))).await;
        assert_eq!(allowed.status, 200, "{}", allowed.text);
        let denials = audit_records(&app, &format!("action=security:permission-denied&actor={accountant}")).await;
        assert_eq!(denials.len(), 1, "the refused self-grant is on record");
    }

    async fn an_admin_of_one_company_cannot_touch_another(app: TestApp) {
        let other = app.state.companies.create("subsidiary", "Subsidiary Ltd", "EUR", &Origin::system()).await.expect("a second company");
        let (boss, boss_token) = {
            let (id, token) = app.user_with_role("boss-b", "viewer").await;
            let mut tx = app.state.db.begin_write().await.expect("tx");
            app.state.authz.grant(&mut tx, other.id, id, "admin", None, &Origin::system()).await.expect("grant");
            app.state.authz.revoke(&mut tx, app.state.companies.default_company().id, id, "viewer", &Origin::system()).await.expect("revoke");
            tx.commit().await.expect("commit");
            app.state.authz.reload().await.expect("reload");
            (id, token)
        };
        let in_b = app.request(Method::GET, "/api/v1/roles", &[("authorization", &format!("Bearer {boss_token}")), ("keel-company", "subsidiary")], None).await;
        assert_eq!(in_b.status, 200, "admin in their own company: {}", in_b.text);
        // In the main company they hold nothing.
        let in_main = app.request(Method::POST, &format!("/api/v1/users/{boss}/roles"), &[("authorization", &format!("Bearer {boss_token}")), ("keel-company", "main")], Some(json!({ "role": "admin" }).to_string().into_bytes())).await;
        in_main.assert_problem(403, &[]);
        // From their own company they cannot disable a user who works in main.
        let disable = app.request(Method::POST, &format!("/api/v1/users/{}/disable", app.admin_id), &[("authorization", &format!("Bearer {boss_token}")), ("keel-company", "subsidiary")], Some(b"{}".to_vec())).await;
        disable.assert_problem(403, &[]);
        assert_eq!(app.get("/api/v1/me").await.status, 200, "the main admin still works");
    }

    async fn the_last_admin_cannot_be_revoked(app: TestApp) {
        let reply = app.request(Method::DELETE, &format!("/api/v1/users/{}/roles/admin", app.admin_id), &[], None).await;
        reply.assert_problem(409, &[]);
        assert_eq!(app.get("/api/v1/roles").await.status, 200);
    }

    async fn scopes_express_own_and_team_ownership(app: TestApp) {
        let company = app.state.companies.default_company().id;
        let (rep, _) = app.user_with_role("rep", "sales-rep").await;
        let (manager, _) = app.user_with_role("manager", "sales-manager").await;
        assert_eq!(app.patch(&format!("/api/v1/users/{rep}"), json!({ "manager": manager })).await.status, 200);
        assert_eq!(app.state.authz.scope(rep, company, perm::PARTIES_READ), Some(Scope::Own));
        assert_eq!(app.state.authz.scope(manager, company, perm::PARTIES_READ), Some(Scope::Team));
        assert_eq!(app.state.authz.scope(app.admin_id, company, perm::PARTIES_READ), Some(Scope::All));
        assert_eq!(app.state.authz.scope(rep, company, perm::LEDGER_ENTRIES_POST), None);
        assert_eq!(app.state.authz.team_of(manager).await.expect("a team"), vec![rep, manager]);
        assert_eq!(app.state.authz.team_of(rep).await.expect("a team"), vec![rep]);
    }

    async fn custom_roles_grant_exactly_what_they_list(app: TestApp) {
        let role = app.post("/api/v1/roles", json!({ "name": "payables-clerk", "description": "Posts bills", "permissions": [
            { "resource": "ledger.entries", "action": "post" }, { "resource": "ledger.accounts", "action": "read" }
        ]})).await;
        assert_eq!(role.status, 201, "{}", role.text);
        let (_, token) = app.user_with_role("paula", "payables-clerk").await;
        let posted = app.as_user(&token, Method::POST, "/api/v1/ledger/entries", Some(simple_entry("2025-03-03", "6100", "2000", "10.00"))).await;
        assert_eq!(posted.status, 201, "{}", posted.text);
        app.as_user(&token, Method::POST, &format!("/api/v1/ledger/entries/{}/reverse", posted.body["id"]), Some(json!({}))).await.assert_problem(403, &[]);
        app.as_user(&token, Method::GET, "/api/v1/ledger/trial-balance", None).await.assert_problem(403, &[]);

        let unknown = app.post("/api/v1/roles", json!({ "name": "bad", "permissions": [{ "resource": "warp.drive", "action": "engage" }] })).await;
        unknown.assert_problem(422, &["permissions[0]"]);
        app.request(Method::PUT, "/api/v1/roles/admin", &[], Some(json!({ "name": "admin", "permissions": [{ "resource": "audit", "action": "read" }] }).to_string().into_bytes())).await.assert_problem(409, &[]);
        app.request(Method::DELETE, "/api/v1/roles/payables-clerk", &[], None).await.assert_problem(409, &[]);
    }

    async fn segregation_of_duties_rules_stop_the_poster_from_reopening_or_reversing(app: TestApp) {
        let (_, alice) = app.user_with_role("alice", "accountant").await;
        let (_, bob) = app.user_with_role("bob", "accountant").await;
        let rules = app.get("/api/v1/duty-rules").await;
        let rules = rules.body.as_array().expect("rules").clone();
        assert!(rules.iter().all(|r| r["enabled"] == false), "default rules start disabled");
        for rule in &rules {
            assert_eq!(app.patch(&format!("/api/v1/duty-rules/{}", rule["id"]), json!({ "enabled": true })).await.status, 200);
        }
        let entry = app.as_user(&alice, Method::POST, "/api/v1/ledger/entries", Some(simple_entry("2025-03-10", "1020", "4000", "100.00"))).await;
        assert_eq!(entry.status, 201);
        let id = entry.body["id"].as_i64().expect("id");
        assert_eq!(entry.body["posted_by"], app.state.identity.user_by_username("alice").await.expect("alice").expect("alice").id);

        let reversal = app.as_user(&alice, Method::POST, &format!("/api/v1/ledger/entries/{id}/reverse"), Some(json!({}))).await;
        reversal.assert_problem(403, &[]);
        assert!(reversal.text.contains("segregation of duties"), "{}", reversal.text);

        let march = app.period_id("2025-03").await;
        assert_eq!(app.as_user(&alice, Method::POST, &format!("/api/v1/ledger/periods/{march}/close"), None).await.status, 200);
        app.as_user(&alice, Method::POST, &format!("/api/v1/ledger/periods/{march}/reopen"), None).await.assert_problem(403, &[]);
        assert_eq!(app.as_user(&bob, Method::POST, &format!("/api/v1/ledger/periods/{march}/reopen"), None).await.status, 200);
        assert_eq!(app.as_user(&bob, Method::POST, &format!("/api/v1/ledger/entries/{id}/reverse"), Some(json!({}))).await.status, 201);
    }

    async fn every_change_is_audited_with_actor_object_and_idempotency_key(app: TestApp) {
        let entry = app.post_keyed("/api/v1/ledger/entries", "audit-key-1", simple_entry("2025-04-01", "1020", "4000", "12.34")).await;
        assert_eq!(entry.status, 201);
        let id = entry.body["id"].to_string();
        let records = audit_records(&app, &format!("object_type=ledger.entry&object_id={id}")).await;
        assert_eq!(records.len(), 1, "{records:?}");
        let record = &records[0];
        assert_eq!(record["action"], "ledger.entries:post");
        assert_eq!(record["actor_user_id"], app.admin_id);
        assert_eq!(record["idempotency_key"], "audit-key-1");
        assert!(record["request_id"].as_str().is_some_and(|r| !r.is_empty()));
        assert!(record["change"].as_str().expect("change").contains("1234"));
        assert_eq!(record["hash"].as_str().expect("hash").len(), 64);

        // A replay changes nothing and records nothing.
        let before = audit_records(&app, "limit=500").await.len();
        app.post_keyed("/api/v1/ledger/entries", "audit-key-1", simple_entry("2025-04-01", "1020", "4000", "12.34")).await;
        assert_eq!(audit_records(&app, "limit=500").await.len(), before);

        let account = app.patch("/api/v1/ledger/accounts/6100", json!({ "name": "Office rent" })).await;
        assert_eq!(account.status, 200);
        let records = audit_records(&app, "object_type=ledger.account&object_id=6100").await;
        let change: Value = serde_json::from_str(records[0]["change"].as_str().expect("change")).expect("JSON");
        assert_eq!(change["before"]["name"], "Rent");
        assert_eq!(change["after"]["name"], "Office rent");

        let user = app.post("/api/v1/users", json!({ "username": "newbie", "password": "a secret password" })).await;
        let records = audit_records(&app, &format!("object_type=user&object_id={}", user.body["id"])).await;
        assert_eq!(records[0]["action"], "users:create");
        assert!(!records[0]["change"].as_str().expect("change").contains("a secret password"), "no password in the trail");

        let page = app.get("/api/v1/audit?limit=2").await;
        assert_eq!(page.body["records"].as_array().expect("records").len(), 2);
        let next = page.body["next"].as_i64().expect("a cursor");
        let rest = app.get(&format!("/api/v1/audit?limit=2&after={next}")).await;
        assert!(rest.body["records"][0]["seq"].as_i64().expect("seq") > next);

        // Every filter at once; the time window is from (inclusive) to (exclusive).
        let occurred_at = record["occurred_at"].as_str().expect("occurred_at");
        let at: chrono::DateTime<chrono::Utc> = occurred_at.parse().expect("an RFC 3339 time");
        let micro = chrono::Duration::microseconds(1);
        let window = |from: chrono::DateTime<chrono::Utc>, to: chrono::DateTime<chrono::Utc>| {
            let rfc3339 = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
            format!(
                "object_type=ledger.entry&object_id={id}&actor={}&action=ledger.entries:post&from={}&to={}",
                app.admin_id,
                rfc3339(from),
                rfc3339(to)
            )
        };
        assert_eq!(audit_records(&app, &window(at, at + micro)).await.len(), 1);
        assert!(audit_records(&app, &window(at + micro, at + micro * 2)).await.is_empty());
        assert!(audit_records(&app, &window(at - micro, at)).await.is_empty());
        let wrong_action = format!("object_type=ledger.entry&object_id={id}&action=ledger.entries:reverse");
        assert!(audit_records(&app, &wrong_action).await.is_empty());
        let other_actor = format!("object_id={id}&actor={}", app.admin_id + 1000);
        assert!(audit_records(&app, &other_actor).await.is_empty());
        let verification = app.get("/api/v1/audit/verification").await;
        assert_eq!(verification.body["intact"], true, "{}", verification.text);
    }

    async fn appends_from_another_process_are_chained_into_not_overwritten(app: TestApp) {
        // A second `keel` on the same database (the CLI next to a running server) appends in
        // between; the server's next append must chain after it.
        app.post_simple("2025-04-02", "1020", "4000", "1.00").await;
        let other = keel_host::db::Database::open(&app.database.location).await.expect("a second connection");
        let append_elsewhere = async |round: i64| {
            for n in 0..3 {
                let mut tx = other.begin_write().await.expect("a transaction");
                let event = keel_host::audit::Event::new(None, "test:append", "test", round * 10 + n, serde_json::json!({ "n": n }));
                keel_host::audit::append(&mut tx, &Origin::system(), &[event]).await.expect("appended");
                tx.commit().await.expect("committed");
            }
        };
        append_elsewhere(1).await;
        let id = app.post_simple("2025-04-03", "1020", "4000", "2.00").await;
        // Again before a batch large enough for SQLite's direct write path.
        append_elsewhere(2).await;
        let entries: Vec<serde_json::Value> = (0..1000).map(|_| simple_entry("2025-04-04", "1020", "4000", "3.00")).collect();
        let batch = app.post("/api/v1/ledger/entries:batch", json!({ "entries": entries })).await;
        assert_eq!(batch.status, 201, "{}", batch.text);
        other.close().await;

        let records = audit_records(&app, &format!("object_type=ledger.entry&object_id={id}")).await;
        assert_eq!(records.len(), 1, "{records:?}");
        let verification = keel_host::audit::verify(&app.state.db).await.expect("verified");
        assert_eq!(verification.first_broken, None);
        let others = audit_records(&app, "action=test:append").await;
        assert_eq!(others.len(), 6);
        let first_elsewhere = others.iter().filter_map(|r| r["seq"].as_i64()).min();
        assert!(records[0]["seq"].as_i64() > first_elsewhere);
        let last_entry = batch.body["entries"][999]["id"].as_i64().expect("an id");
        let last = audit_records(&app, &format!("object_type=ledger.entry&object_id={last_entry}")).await;
        assert!(last[0]["seq"].as_i64() > others.iter().filter_map(|r| r["seq"].as_i64()).max());
    }

    async fn the_audit_table_refuses_updates_and_deletes(app: TestApp) {
        app.post_simple("2025-04-02", "1020", "4000", "1.00").await;
        for sql in ["UPDATE audit_log SET action = 'forged' WHERE seq = 1", "DELETE FROM audit_log WHERE seq = 1"] {
            let mut tx = app.state.db.begin_write().await.expect("a transaction");
            let outcome = keel_host::on_conn!(&mut tx, conn => sqlx::query(sql).execute(&mut *conn).await.map(|_| ()));
            let error = outcome.expect_err("the trigger refuses");
            assert!(error.to_string().contains("append-only"), "{error}");
        }
    }
}
