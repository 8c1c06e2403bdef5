//! The orders plugin (`plugins/orders`) end to end through the HTTP API, on both backends:
//! entering and confirming orders, partial shipments and backorders, cancellation, the
//! credit check with its hold and release (and the audit trail of the release), orders made
//! from accepted cpq quotes (once, however often the event arrives), and the refusals.
//! Invoicing and returns with credit notes need the invoicing plugin: `lead_to_cash.rs`.
//!
//! The components are built by `scripts/build-plugins`.

mod common;

use axum::http::Method;
use common::{Reply, TestApp, rust_plugin};
use serde_json::{Value, json};

fn orders(path: &str) -> String {
    format!("/api/v1/plugins/orders{path}")
}

async fn ok(reply: Reply, status: u16) -> Value {
    assert_eq!(reply.status.as_u16(), status, "{}", reply.text);
    reply.body
}

/// A customer created through the host API; `extra` adds fields (a credit limit).
async fn customer(app: &TestApp, name: &str, extra: Value) -> i64 {
    let mut body = json!({ "kind": "organization", "name": name, "roles": ["customer"],
                           "default_currency": "USD" });
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    let created = ok(app.post("/api/v1/parties", body).await, 201).await;
    created["id"].as_i64().expect("a party id")
}

/// 10 × 12.50 less 10 % at 19 % and 3 × 100 at 7 %: net 412.50, tax 21.38 + 21.00.
fn two_lines() -> Value {
    json!([
        { "sku": "BOLT", "name": "Bolt M8", "quantity": "10", "unit_price": "12.50",
          "discount_percent": "10", "tax_rate": "19", "unit": "box" },
        { "sku": "PUMP", "name": "Pump", "quantity": 3, "unit_price": "100", "tax_rate": "7" }
    ])
}

/// A date `days` from today (UTC, as the plugins' clock).
fn days_from_today(days: i64) -> String {
    (chrono::Utc::now().date_naive() + chrono::Duration::days(days))
        .format("%Y-%m-%d")
        .to_string()
}

on_both_backends! {
    async fn an_order_is_confirmed_shipped_in_parts_with_a_backorder_and_completed(app: TestApp) {
        app.install_enabled(rust_plugin("orders")).await;
        let acme = customer(&app, "Acme Tools", json!({})).await;

        let draft = ok(app.post(&orders("/orders"), json!({
            "party": acme, "customer_reference": "PO-4711", "order_date": "2026-03-02",
            "lines": two_lines()
        })).await, 201).await;
        assert_eq!(draft["number"], "SO-000001");
        assert_eq!(draft["status"], "draft");
        assert_eq!(draft["party_name"], "Acme Tools");
        assert_eq!(draft["currency"], "USD", "the party's default currency");
        assert_eq!(draft["owner"], app.admin_id);
        assert_eq!(draft["lines"][0]["line"], 1);
        assert_eq!(draft["lines"][0]["unit"], "box");
        assert_eq!(draft["lines"][0]["net_amount"], "112.50");
        assert_eq!(draft["lines"][1]["unit"], "pc");
        assert_eq!(draft["lines"][1]["quantity"], "3");
        assert_eq!(draft["totals"], json!({ "net": "412.50", "tax": "42.38", "total": "454.88" }));

        // A draft does not ship; confirming it runs the credit check (no limit: it passes).
        let early = app.post(&orders("/orders/SO-000001/shipments"), json!({})).await;
        early.assert_problem(409, &[]);
        assert!(early.text.contains("confirm it first"), "{}", early.text);
        let confirmed = ok(app.post(&orders("/orders/SO-000001/confirm"), json!(null)).await, 200).await;
        assert_eq!(confirmed["status"], "confirmed");
        assert_eq!(confirmed["credit"]["result"], "no_limit");
        app.post(&orders("/orders/SO-000001/confirm"), json!(null)).await.assert_problem(409, &[]);

        // More than is outstanding: refused, naming the line, and nothing is written.
        let over = app.post(&orders("/orders/SO-000001/shipments"), json!({
            "lines": [{ "line": 1, "quantity": "4" }, { "line": 2, "quantity": "3.5" }, { "line": 7, "quantity": "1" }]
        })).await;
        over.assert_problem(422, &["lines[1].quantity", "lines[2].line"]);
        assert!(over.text.contains("the 3 of line 2 still to ship"), "{}", over.text);
        let unchanged = ok(app.get(&orders("/orders/SO-000001")).await, 200).await;
        assert_eq!(unchanged["lines"][0]["shipped"], "0");
        assert_eq!(unchanged["shipments"], json!([]));

        // The first shipment: 4 bolts and every pump; 6 bolts are backordered.
        let first = ok(app.post(&orders("/orders/SO-000001/shipments"), json!({
            "date": "2026-03-05", "lines": [{ "line": 1, "quantity": "4" }, { "line": 2, "quantity": 3 }]
        })).await, 201).await;
        assert_eq!(first["number"], "SH-000001", "the refused shipment gave its number back");
        assert_eq!(first["order_status"], "partially_shipped");
        assert_eq!(first["lines"], json!([{ "line": 1, "quantity": "4" }, { "line": 2, "quantity": "3" }]));
        let order = ok(app.get(&orders("/orders/SO-000001")).await, 200).await;
        assert_eq!(order["status"], "partially_shipped");
        assert_eq!(order["lines"][0]["shipped"], "4");
        assert_eq!(order["lines"][0]["backordered"], "6");
        assert_eq!(order["lines"][1]["backordered"], "0");

        // The customer no longer wants 2 of the bolts; shipped goods cannot be cancelled.
        let too_many = app.post(&orders("/orders/SO-000001/cancel"), json!({
            "reason": "customer reduced the order", "lines": [{ "line": 1, "quantity": "7" }]
        })).await;
        too_many.assert_problem(422, &["lines[0].quantity"]);
        let no_reason = app.post(&orders("/orders/SO-000001/cancel"), json!({ "lines": [{ "line": 1, "quantity": "2" }] })).await;
        no_reason.assert_problem(422, &["reason"]);
        let reduced = ok(app.post(&orders("/orders/SO-000001/cancel"), json!({
            "reason": "customer reduced the order", "lines": [{ "line": 1, "quantity": "2" }]
        })).await, 200).await;
        assert_eq!(reduced["status"], "partially_shipped");
        assert_eq!(reduced["lines"][0]["cancelled"], "2");
        assert_eq!(reduced["lines"][0]["backordered"], "4");

        // The second shipment takes everything outstanding: the order is shipped.
        let second = ok(app.post(&orders("/orders/SO-000001/shipments"), json!({})).await, 201).await;
        assert_eq!(second["number"], "SH-000002");
        assert_eq!(second["lines"], json!([{ "line": 1, "quantity": "4" }]));
        assert_eq!(second["order_status"], "shipped");
        let shipped = ok(app.get(&orders("/orders/SO-000001")).await, 200).await;
        assert_eq!(shipped["status"], "shipped");
        assert!(shipped["lines"][0].get("backordered").is_none(), "{shipped}");
        assert_eq!(shipped["shipments"].as_array().map(Vec::len), Some(2));
        let actions: Vec<&str> = shipped["history"].as_array().expect("history").iter()
            .map(|h| h["action"].as_str().unwrap_or_default()).collect();
        assert_eq!(actions, ["created", "confirmed", "shipped", "cancelled", "shipped"]);
        let again = app.post(&orders("/orders/SO-000001/shipments"), json!({})).await;
        again.assert_problem(409, &[]);
        app.post(&orders("/orders/SO-000001/cancel"), json!({ "reason": "late" })).await.assert_problem(409, &[]);

        // An order cancelled whole before anything ships; confirmed at once on entry.
        let second_order = ok(app.post(&orders("/orders"), json!({
            "party": acme, "currency": "USD", "confirm": true,
            "lines": [{ "sku": "BOLT", "name": "Bolt M8", "quantity": "1", "unit_price": "12.50" }]
        })).await, 201).await;
        assert_eq!(second_order["status"], "confirmed");
        let cancelled = ok(app.post(&orders("/orders/SO-000002/cancel"), json!({ "reason": "duplicate" })).await, 200).await;
        assert_eq!(cancelled["status"], "cancelled");
        assert_eq!(cancelled["lines"][0]["cancelled"], "1");
        app.post(&orders("/orders/SO-000002/shipments"), json!({})).await.assert_problem(409, &[]);

        // Lists: a party's orders newest first, by status, paged.
        let listed = ok(app.get(&orders(&format!("/orders?party={acme}"))).await, 200).await;
        let numbers: Vec<&str> = listed["items"].as_array().expect("items").iter()
            .map(|o| o["number"].as_str().unwrap_or_default()).collect();
        assert_eq!(numbers.len(), 2, "{listed}");
        let by_status = ok(app.get(&orders("/orders?status=cancelled")).await, 200).await;
        assert_eq!(by_status["items"][0]["number"], "SO-000002", "{by_status}");
        assert_eq!(by_status["items"].as_array().map(Vec::len), Some(1));
        let page = ok(app.get(&orders("/orders?limit=1")).await, 200).await;
        assert_eq!(page["items"][0]["number"], "SO-000001");
        assert_eq!(page["next"], "SO-000001");
        let rest = ok(app.get(&orders("/orders?limit=1&after=SO-000001")).await, 200).await;
        assert_eq!(rest["items"][0]["number"], "SO-000002");
        assert_eq!(rest["next"], Value::Null);
        app.get(&orders("/orders?status=open&limit=0")).await.assert_problem(422, &["status", "limit"]);
        app.get(&orders("/orders/SO-000099")).await.assert_problem(404, &[]);
    }

    async fn bad_orders_are_refused_naming_each_field_and_writing_nothing(app: TestApp) {
        app.install_enabled(rust_plugin("orders")).await;
        let acme = customer(&app, "Acme Tools", json!({})).await;

        let malformed = app.post_raw(&orders("/orders"), "{\"party\": ").await;
        malformed.assert_problem(422, &["body"]);
        let unknown = app.post(&orders("/orders"), json!({ "party": acme, "lines": two_lines(), "colour": "red" })).await;
        unknown.assert_problem(422, &["body"]);
        let unknown_in_line = app.post(&orders("/orders"), json!({
            "party": acme, "lines": [{ "sku": "A", "name": "A", "quantity": 1, "unit_price": "1", "color": "red" }]
        })).await;
        unknown_in_line.assert_problem(422, &["body"]);
        let bad = app.post(&orders("/orders"), json!({
            "party": acme, "currency": "usd", "order_date": "2026-02-30",
            "lines": [
                { "sku": " ", "name": "Bolt", "quantity": "0", "unit_price": "-1" },
                { "sku": "B", "name": "Pump", "quantity": "1.1234567", "unit_price": "5",
                  "discount_percent": "120", "tax_rate": "abc" }
            ]
        })).await;
        bad.assert_problem(422, &[
            "currency", "order_date", "lines[0].sku", "lines[0].quantity", "lines[0].unit_price",
            "lines[1].quantity", "lines[1].discount_percent", "lines[1].tax_rate",
        ]);
        app.post(&orders("/orders"), json!({})).await.assert_problem(422, &["party", "lines"]);
        app.post(&orders("/orders"), json!({ "party": 999_999, "lines": [] }))
            .await
            .assert_problem(422, &["party", "lines"]);
        let blocked = ok(app.post("/api/v1/parties", json!({
            "kind": "organization", "name": "Blocked Inc", "roles": ["customer"], "default_currency": "USD"
        })).await, 201).await["id"].as_i64().expect("an id");
        ok(app.patch(&format!("/api/v1/parties/{blocked}"), json!({ "status": "blocked" })).await, 200).await;
        app.post(&orders("/orders"), json!({ "party": blocked, "lines": two_lines() }))
            .await
            .assert_problem(422, &["party"]);
        let too_many: Vec<Value> = (0..501)
            .map(|i| json!({ "sku": format!("S{i}"), "name": "x", "quantity": 1, "unit_price": "1" }))
            .collect();
        app.post(&orders("/orders"), json!({ "party": acme, "lines": too_many }))
            .await
            .assert_problem(422, &["lines"]);

        // Permissions: reading is not writing; shipping is its own permission.
        let (_, reader) = app.user_with_permissions("rhea", json!([
            { "resource": "plugins.orders", "action": "use" },
            { "resource": "plugins.orders.orders", "action": "read" },
            { "resource": "parties", "action": "read" }
        ])).await;
        let denied = app.as_user(&reader, Method::POST, &orders("/orders"), Some(json!({ "party": acme, "lines": two_lines() }))).await;
        denied.assert_problem(403, &[]);
        assert!(denied.text.contains("plugins.orders.orders:write"), "{}", denied.text);
        let (_, outsider) = app.user_with_permissions("otto", json!([{ "resource": "plugins.orders", "action": "use" }])).await;
        app.as_user(&outsider, Method::GET, &orders("/orders"), None).await.assert_problem(403, &[]);

        // Nothing refused above was written: the first order takes the first number.
        let first = ok(app.post(&orders("/orders"), json!({ "party": acme, "lines": two_lines(), "confirm": true })).await, 201).await;
        assert_eq!(first["number"], "SO-000001");
        let listed = ok(app.as_user(&reader, Method::GET, &orders("/orders"), None).await, 200).await;
        assert_eq!(listed["items"].as_array().map(Vec::len), Some(1), "{listed}");
        let shipping = app.as_user(&reader, Method::POST, &orders("/orders/SO-000001/shipments"), Some(json!({}))).await;
        shipping.assert_problem(403, &[]);
        assert!(shipping.text.contains("plugins.orders.shipments:write"), "{}", shipping.text);
    }

    async fn an_order_above_the_credit_limit_is_held_until_finance_releases_it(app: TestApp) {
        app.install_enabled(rust_plugin("orders")).await;
        let acme = customer(&app, "Acme Tools", json!({ "credit_limit": "1000.00" })).await;

        // 1,190.00 with tax against a limit of 1,000.00: held.
        let held = ok(app.post(&orders("/orders"), json!({
            "party": acme, "confirm": true,
            "lines": [{ "sku": "PUMP", "name": "Pump", "quantity": "10", "unit_price": "100", "tax_rate": "19" }]
        })).await, 201).await;
        assert_eq!(held["status"], "on_hold", "{held}");
        assert_eq!(held["credit"]["result"], "over_limit");
        assert_eq!(held["credit"]["exposure"], "1190.00");
        assert_eq!(held["credit"]["limit"], "1000.00");
        assert_eq!(held["credit"]["currency"], "USD");
        let reason = held["hold"]["reason"].as_str().expect("a reason");
        assert!(reason.contains("1190.00") && reason.contains("1000.00"), "{reason}");
        let number = held["number"].as_str().expect("a number").to_owned();

        // A held order does not ship, and says who can release it.
        let ship = app.post(&orders(&format!("/orders/{number}/shipments")), json!({})).await;
        ship.assert_problem(409, &[]);
        assert!(ship.text.contains("plugins.orders.credit:release"), "{}", ship.text);

        // The held order counts towards the exposure of the next one: 1,190 + 119 > 1,000.
        let small = ok(app.post(&orders("/orders"), json!({
            "party": acme, "confirm": true,
            "lines": [{ "sku": "PUMP", "name": "Pump", "quantity": "1", "unit_price": "100", "tax_rate": "19" }]
        })).await, 201).await;
        assert_eq!(small["status"], "on_hold");
        assert_eq!(small["credit"]["exposure"], "1309.00");

        // In another currency than the limit, the amounts cannot be compared: held too.
        let euros = ok(app.post(&orders("/orders"), json!({
            "party": acme, "currency": "EUR", "confirm": true,
            "lines": [{ "sku": "BOLT", "name": "Bolt", "quantity": "1", "unit_price": "1" }]
        })).await, 201).await;
        assert_eq!(euros["status"], "on_hold");
        assert_eq!(euros["credit"]["result"], "not_comparable");
        assert!(euros["hold"]["reason"].as_str().is_some_and(|r| r.contains("cannot be compared")), "{euros}");

        // Sales may not release; finance may.
        let (_, seller) = app.user_with_permissions("sam", json!([
            { "resource": "plugins.orders", "action": "use" },
            { "resource": "plugins.orders.orders", "action": "*" },
            { "resource": "parties", "action": "read" }
        ])).await;
        let (finance_id, finance) = app.user_with_permissions("fay", json!([
            { "resource": "plugins.orders", "action": "use" },
            { "resource": "plugins.orders.orders", "action": "read" },
            { "resource": "plugins.orders.credit", "action": "release" }
        ])).await;
        let path = orders(&format!("/orders/{number}/release"));
        let refused = app.as_user(&seller, Method::POST, &path, Some(json!({ "note": "please" }))).await;
        refused.assert_problem(403, &[]);
        assert!(refused.text.contains("plugins.orders.credit:release"), "{}", refused.text);
        let released = ok(app.as_user(&finance, Method::POST, &path, Some(json!({ "note": "prepayment received" }))).await, 200).await;
        assert_eq!(released["status"], "confirmed");
        assert!(released.get("hold").is_none(), "{released}");
        let last = released["history"].as_array().and_then(|h| h.last()).expect("history");
        assert_eq!(last["action"], "released");
        assert_eq!(last["user"], finance_id);
        assert_eq!(last["note"], "prepayment received");
        app.as_user(&finance, Method::POST, &path, None).await.assert_problem(409, &[]);
        ok(app.post(&orders(&format!("/orders/{number}/shipments")), json!({})).await, 201).await;

        // The audit trail shows the release: written by the orders plugin for that user.
        let audit = ok(app.get("/api/v1/audit?object_type=plugin.record&action=plugin.storage:put&limit=500").await, 200).await;
        let writers: Vec<(&Value, &Value)> = audit["records"].as_array().expect("records").iter()
            .filter(|r| r["object_id"] == format!("orders/orders/{number}").as_str())
            .map(|r| (&r["actor_plugin"], &r["actor_user_id"]))
            .collect();
        assert!(writers.contains(&(&json!("orders"), &json!(finance_id))), "{writers:?} in {audit}");
        assert!(writers.contains(&(&json!("orders"), &json!(app.admin_id))), "{writers:?}");
    }

    async fn an_accepted_quote_becomes_one_confirmed_order(app: TestApp) {
        app.install_enabled(rust_plugin("cpq")).await;
        app.install_enabled(rust_plugin("orders")).await;
        let cpq = |path: &str| format!("/api/v1/plugins/cpq{path}");
        ok(app.post(&cpq("/products"), json!({ "sku": "PUMP", "name": "Pump", "tax_rate": "19" })).await, 201).await;
        ok(app.post(&cpq("/products"), json!({ "sku": "CARE", "name": "Care plan", "unit": "year", "tax_rate": "7" })).await, 201).await;
        ok(app.post(&cpq("/price-books"), json!({ "code": "USD-STD", "name": "US list prices", "currency": "USD" })).await, 201).await;
        for (sku, price) in [("PUMP", "333.33"), ("CARE", "99.99")] {
            let put = app.request(Method::PUT, &cpq(&format!("/price-books/USD-STD/prices/{sku}")), &[],
                                  Some(json!({ "unit_price": price }).to_string().into_bytes())).await;
            ok(put, 200).await;
        }
        let acme = customer(&app, "Acme Tools", json!({})).await;
        let quote = ok(app.post(&cpq("/quotes"), json!({
            "party": acme, "currency": "USD", "valid_until": days_from_today(30),
            "lines": [{ "sku": "PUMP", "quantity": 3 }, { "sku": "CARE", "quantity": 2 }]
        })).await, 201).await;
        let q = quote["number"].as_str().expect("a quote number").to_owned();
        ok(app.post(&cpq(&format!("/quotes/{q}/send")), json!(null)).await, 200).await;
        ok(app.post(&cpq(&format!("/quotes/{q}/accept")), json!(null)).await, 200).await;

        let round = app.state.runtime.dispatch_all().await.expect("delivering events");
        assert_eq!((round.retried, round.dead), (0, 0), "{round:?}");
        let listed = ok(app.get(&orders(&format!("/orders?party={acme}"))).await, 200).await;
        let items = listed["items"].as_array().expect("items");
        assert_eq!(items.len(), 1, "{listed}");
        let order = &items[0];
        assert_eq!(order["quote"], q.as_str());
        assert_eq!(order["status"], "confirmed", "no credit limit: {order}");
        assert_eq!(order["owner"], app.admin_id, "the quote's owner");
        assert_eq!(order["totals"]["net"], quote["totals"]["net"]);
        assert_eq!(order["totals"]["tax"], quote["totals"]["tax"]);
        assert_eq!(order["totals"]["total"], quote["totals"]["total"]);
        assert_eq!(order["lines"].as_array().map(Vec::len), Some(2));
        for (ordered, quoted) in order["lines"].as_array().expect("lines").iter().zip(quote["lines"].as_array().expect("lines")) {
            for field in ["sku", "name", "unit", "quantity", "unit_price", "discount_percent", "tax_rate", "net_amount"] {
                assert_eq!(ordered[field], quoted[field], "{field}: {ordered} vs {quoted}");
            }
        }
        assert_eq!(order["history"][0]["user"], Value::Null, "made on the event, for no user");

        // The same quote delivered again (at least once delivery) makes no second order.
        let payload = match &app.state.db {
            keel_host::db::Database::Sqlite(pools) => sqlx::query_scalar::<_, String>(
                "SELECT payload FROM events WHERE topic = 'cpq.quote.accepted'",
            ).fetch_one(&pools.reads).await,
            keel_host::db::Database::Postgres(pool) => sqlx::query_scalar::<_, String>(
                "SELECT payload FROM events WHERE topic = 'cpq.quote.accepted'",
            ).fetch_one(pool).await,
        }.expect("the accepted quote's event");
        let company = app.state.companies.default_company();
        let mut tx = app.state.db.begin_write().await.expect("a transaction");
        let again = keel_host::events::publish_json(&mut tx, company.id, "cpq.quote.accepted",
                                                    &format!("quote/{q}"), &payload, Some("cpq"))
            .await
            .expect("publishing again");
        assert!(again.is_some(), "orders subscribes");
        tx.commit().await.expect("committing");
        let round = app.state.runtime.dispatch_all().await.expect("delivering events");
        assert_eq!((round.delivered, round.retried, round.dead), (1, 0, 0), "{round:?}");
        let listed = ok(app.get(&orders("/orders")).await, 200).await;
        assert_eq!(listed["items"].as_array().map(Vec::len), Some(1), "{listed}");
    }
}
