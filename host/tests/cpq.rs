//! The cpq plugin (configure, price, quote) end to end, on both backends: catalog and bundles,
//! price books with tiers, quotes with totals to the cent, revisions, the printable page,
//! discount approvals in a chain, reach by owner, expiry, the accepted-quote event, and the
//! `cpq.price-adjust` hook implemented in Python by `examples/cpq-contract-price-python`.
//!
//! The components are built by `scripts/build-plugins`.

mod common;

use axum::http::Method;
use common::{Reply, TestApp, built_component, rust_plugin};
use serde_json::{Value, json};

fn cpq(path: &str) -> String {
    format!("/api/v1/plugins/cpq{path}")
}

/// A date `days` from today (UTC, as the plugin's clock).
fn days_from_today(days: i64) -> String {
    (chrono::Utc::now().date_naive() + chrono::Duration::days(days))
        .format("%Y-%m-%d")
        .to_string()
}

async fn party(app: &TestApp, name: &str, segment: Option<&str>) -> i64 {
    // The test company's base currency is USD; these customers buy in euros.
    let mut body = json!({ "kind": "organization", "name": name, "roles": ["customer"],
                           "default_currency": "EUR" });
    if let Some(segment) = segment {
        body["custom_fields"] = json!({ "cpq_segment": segment });
    }
    let created = app.post("/api/v1/parties", body).await;
    assert_eq!(created.status, 201, "{}", created.text);
    created.body["id"].as_i64().expect("a party id")
}

async fn ok(reply: Reply, status: u16) -> Value {
    assert_eq!(reply.status.as_u16(), status, "{}", reply.text);
    reply.body
}

/// Installs cpq with a catalog: products, the bundle LAPTOP-KIT with its rules, and the
/// general EUR price book with tiers (CABLE has no price).
async fn cpq_with_catalog(app: &TestApp) {
    app.install_enabled(rust_plugin("cpq")).await;
    let product =
        |sku: &str, name: &str, tax: &str| json!({ "sku": sku, "name": name, "tax_rate": tax });
    for body in [
        product("LAPTOP", "Laptop 14\"", "19"),
        product("SSD-2TB", "SSD 2 TB", "19"),
        product("DOCK", "Docking station", "19"),
        product("RAM-16", "RAM 16 GB", "19"),
        product("BAG", "Laptop bag", "19"),
        product("SLEEVE", "Laptop sleeve", "19"),
        product("CABLE", "USB-C cable", "19"),
        json!({ "sku": "SUPPORT", "name": "Support", "unit": "year", "tax_rate": "7" }),
    ] {
        ok(app.post(&cpq("/products"), body).await, 201).await;
    }
    let kit = app
        .post(
            &cpq("/products"),
            json!({
                "sku": "LAPTOP-KIT", "name": "Laptop kit", "kind": "bundle", "tax_rate": "19",
                "components": [
                    { "sku": "LAPTOP", "required": true },
                    { "sku": "SSD-2TB" },
                    { "sku": "DOCK" },
                    { "sku": "RAM-16", "max_quantity": 4 },
                    { "sku": "BAG" },
                    { "sku": "SLEEVE" }
                ],
                "rules": [
                    { "if_sku": "SSD-2TB", "requires_sku": "DOCK" },
                    { "if_sku": "BAG", "excludes_sku": "SLEEVE" }
                ]
            }),
        )
        .await;
    let kit = ok(kit, 201).await;
    assert_eq!(kit["components"][0]["default_quantity"], "1", "{kit}");
    ok(
        app.post(
            &cpq("/price-books"),
            json!({ "code": "EUR-STD", "name": "Euro list prices", "currency": "EUR" }),
        )
        .await,
        201,
    )
    .await;
    for (sku, price) in [
        ("LAPTOP-KIT", json!({ "unit_price": "50.00" })),
        (
            "LAPTOP",
            json!({ "unit_price": "1000.00", "tier_mode": "volume",
                    "tiers": [{ "min_quantity": 10, "unit_price": "900.00" }] }),
        ),
        ("SSD-2TB", json!({ "unit_price": "200" })),
        ("DOCK", json!({ "unit_price": "150" })),
        ("RAM-16", json!({ "unit_price": "40" })),
        ("BAG", json!({ "unit_price": "30" })),
        ("SLEEVE", json!({ "unit_price": "20" })),
        (
            "SUPPORT",
            json!({ "unit_price": "120", "tier_mode": "graduated",
                    "tiers": [{ "min_quantity": 5, "unit_price": "100" },
                              { "min_quantity": 10, "unit_price": "80" }] }),
        ),
    ] {
        let put = app
            .request(
                Method::PUT,
                &cpq(&format!("/price-books/EUR-STD/prices/{sku}")),
                &[],
                Some(price.to_string().into_bytes()),
            )
            .await;
        ok(put, 200).await;
    }
}

fn kit_line(discount: &str) -> Value {
    json!({
        "sku": "LAPTOP-KIT", "quantity": 10, "discount_percent": discount,
        "components": [
            { "sku": "LAPTOP", "quantity": 1 },
            { "sku": "SSD-2TB", "quantity": 1 },
            { "sku": "DOCK", "quantity": 1 },
            { "sku": "RAM-16", "quantity": 2 }
        ]
    })
}

fn simple_quote(party: i64, discount: &str) -> Value {
    json!({
        "party": party, "currency": "EUR", "valid_until": days_from_today(30),
        "lines": [{ "sku": "DOCK", "quantity": 2, "discount_percent": discount }]
    })
}

async fn quote_count(app: &TestApp) -> usize {
    let listed = ok(app.get(&cpq("/quotes")).await, 200).await;
    listed["quotes"].as_array().expect("quotes").len()
}

on_both_backends! {
    async fn a_quote_is_configured_priced_revised_printed_sent_and_accepted(app: TestApp) {
        app.install_enabled(rust_plugin("hub")).await;
        cpq_with_catalog(&app).await;
        let acme = party(&app, "Acme <Labs> & Co", None).await;
        let bundles = ok(app.get(&cpq("/products?kind=bundle")).await, 200).await;
        assert_eq!(bundles["products"][0]["sku"], "LAPTOP-KIT", "{bundles}");
        assert_eq!(bundles["products"].as_array().map(Vec::len), Some(1));
        let paged = ok(app.get(&cpq("/products?limit=2")).await, 200).await;
        assert_eq!(paged["next"], "CABLE", "{paged}");
        let book = ok(app.get(&cpq("/price-books/EUR-STD")).await, 200).await;
        assert_eq!(book["prices"].as_array().map(Vec::len), Some(8), "{book}");
        assert_eq!(book["prices"][7]["sku"], "SUPPORT", "{book}");
        assert_eq!(book["prices"][7]["tier_mode"], "graduated", "{book}");

        let body = json!({
            "party": acme, "currency": "EUR", "valid_until": days_from_today(30),
            "notes": "<script>alert('x')</script> Delivery in March",
            "lines": [kit_line("5"), { "sku": "SUPPORT", "quantity": 12 }]
        });
        let created = app.post_keyed(&cpq("/quotes"), "quote-acme-1", body.clone()).await;
        let quote = ok(created, 201).await;
        assert_eq!(quote["number"], "Q-000001");
        assert_eq!(quote["version"], 1);
        assert_eq!(quote["status"], "draft", "5% needs no approval");
        assert_eq!(quote["owner"], app.admin_id);
        assert_eq!(quote["price_book"], "EUR-STD");
        assert_eq!(quote["approvals"], json!([]));
        // The kit: its own 50 plus 1 laptop (10 reach the 900 tier), SSD, dock, 2 × RAM.
        let kit = &quote["lines"][0];
        assert_eq!(kit["list_unit_price"], "1480");
        assert_eq!(kit["list_amount"], "14800.00");
        assert_eq!(kit["tier_unit_price"], "1380");
        assert_eq!(kit["gross_amount"], "13800.00");
        assert_eq!(kit["discount_amount"], "690.00");
        assert_eq!(kit["net_amount"], "13110.00");
        assert_eq!(kit["components"][0], json!({ "sku": "LAPTOP", "name": "Laptop 14\"", "quantity": "1", "unit_price": "900" }));
        // Support, graduated: 4 × 120 + 5 × 100 + 3 × 80 = 1220, exactly.
        let support = &quote["lines"][1];
        assert_eq!(support["tier_unit_price"], "101.6667");
        assert_eq!(support["gross_amount"], "1220.00");
        assert_eq!(support["net_amount"], "1220.00");
        assert_eq!(quote["taxes"], json!([
            { "rate": "7", "base": "1220.00", "tax": "85.40" },
            { "rate": "19", "base": "13110.00", "tax": "2490.90" }
        ]));
        assert_eq!(quote["totals"], json!({
            "list": "16240.00", "subtotal": "15020.00", "discount": "690.00",
            "net": "14330.00", "tax": "2576.30", "total": "16906.30"
        }));
        // The same idempotency key replays the first answer and numbers nothing new.
        let replayed = app.post_keyed(&cpq("/quotes"), "quote-acme-1", body).await;
        assert_eq!(ok(replayed, 201).await["number"], "Q-000001");
        assert_eq!(quote_count(&app).await, 1);

        let revised = app
            .post(&cpq("/quotes/Q-000001/revise"), json!({
                "valid_until": days_from_today(45),
                "lines": [kit_line("5"), { "sku": "SUPPORT", "quantity": 12, "discount_percent": "10" }]
            }))
            .await;
        let revised = ok(revised, 201).await;
        assert_eq!(revised["version"], 2);
        assert_eq!(revised["status"], "draft", "10% is within the limit");
        assert_eq!(revised["notes"], quote["notes"], "notes carry over");
        assert_eq!(revised["lines"][1]["discount_amount"], "122.00");
        assert_eq!(revised["totals"]["net"], "14208.00");
        assert_eq!(revised["totals"]["tax"], "2567.76");
        assert_eq!(revised["totals"]["total"], "16775.76");
        let first = ok(app.get(&cpq("/quotes/Q-000001?version=1")).await, 200).await;
        assert_eq!(first["status"], "superseded");
        assert_eq!(first["superseded_by"], 2);
        assert_eq!(first["totals"]["total"], "16906.30");
        let latest = ok(app.get(&cpq("/quotes/Q-000001")).await, 200).await;
        assert_eq!(latest["version"], 2);
        assert_eq!(app.get(&cpq("/quotes/Q-000001?version=3")).await.status, 404);

        let page = app.get(&cpq("/quotes/Q-000001/html")).await;
        assert_eq!(page.status, 200, "{}", page.text);
        assert_eq!(page.content_type, "text/html; charset=utf-8");
        assert!(page.text.starts_with("<!DOCTYPE html>"), "{}", page.text);
        assert!(page.text.contains("Quote Q-000001"));
        assert!(page.text.contains("Acme &lt;Labs&gt; &amp; Co"), "{}", page.text);
        assert!(page.text.contains("Laptop 14&quot;"), "{}", page.text);
        assert!(page.text.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"), "{}", page.text);
        assert!(!page.text.contains("<script>") && !page.text.contains("<Labs>"));
        assert!(page.text.contains("16775.76"));

        let sent = ok(app.post(&cpq("/quotes/Q-000001/send"), json!(null)).await, 200).await;
        assert_eq!(sent["status"], "sent");
        assert_eq!(app.post(&cpq("/quotes/Q-000001/send"), json!(null)).await.status, 409);
        let stale = app.post(&cpq("/quotes/Q-000001/accept"), json!({ "version": 1 })).await;
        assert_eq!(stale.status, 409, "{}", stale.text);
        assert!(stale.text.contains("superseded by version 2"), "{}", stale.text);

        let accepted = ok(app.post(&cpq("/quotes/Q-000001/accept"), json!({ "version": 2 })).await, 200).await;
        assert_eq!(accepted["status"], "accepted");
        assert_eq!(accepted["decided_by"], app.admin_id);
        let again = app.post(&cpq("/quotes/Q-000001/revise"), json!({})).await;
        assert_eq!(again.status, 409, "an accepted quote is final: {}", again.text);
        let accepted_list = ok(app.get(&cpq("/quotes?status=accepted")).await, 200).await;
        assert_eq!(accepted_list["quotes"][0]["number"], "Q-000001", "{accepted_list}");

        // The orders module would turn the event into a sales order: it carries the quote.
        app.state.runtime.dispatch_all().await.expect("dispatching");
        let seen = ok(app.get("/api/v1/plugins/hub/seen").await, 200).await;
        let event = seen
            .as_array()
            .expect("a list")
            .iter()
            .find(|e| e["topic"] == "cpq.quote.accepted")
            .unwrap_or_else(|| panic!("no accepted quote delivered: {seen}"));
        assert_eq!(event["subject"], "quote/Q-000001");
        let payload = &event["payload"];
        assert_eq!(payload["status"], "accepted");
        assert_eq!(payload["party"], acme);
        assert_eq!(payload["currency"], "EUR");
        assert_eq!(payload["version"], 2);
        assert_eq!(payload["lines"][0]["net_amount"], "13110.00");
        assert_eq!(payload["lines"][1]["net_amount"], "1098.00");
        assert_eq!(payload["totals"]["total"], "16775.76");

        // A customer in a segment is priced from the segment's book, which stands alone.
        ok(app.post(&cpq("/price-books"),
            json!({ "code": "EUR-GOLD", "name": "Gold customers", "currency": "EUR", "segment": "gold" })).await, 201).await;
        let twin = app.post(&cpq("/price-books"),
            json!({ "code": "EUR-GOLD-2", "name": "Gold again", "currency": "EUR", "segment": "Gold" })).await;
        assert_eq!(twin.status, 409, "{}", twin.text);
        let put = app
            .request(Method::PUT, &cpq("/price-books/EUR-GOLD/prices/LAPTOP"), &[],
                     Some(json!({ "unit_price": "950" }).to_string().into_bytes()))
            .await;
        ok(put, 200).await;
        let gold = party(&app, "Goldline", Some("gold")).await;
        let priced = app
            .post(&cpq("/price"), json!({ "party": gold, "lines": [{ "sku": "LAPTOP", "quantity": 2 }] }))
            .await;
        let priced = ok(priced, 200).await;
        assert_eq!(priced["price_book"], "EUR-GOLD");
        assert_eq!(priced["currency"], "EUR", "the party's default currency");
        assert_eq!(priced["lines"][0]["gross_amount"], "1900.00");
        assert_eq!(priced["totals"]["total"], "2261.00");
        let missing = app
            .post(&cpq("/price"), json!({ "party": gold, "lines": [{ "sku": "DOCK", "quantity": 1 }] }))
            .await;
        missing.assert_problem(422, &["lines[0].sku"]);
        assert!(missing.text.contains("price book EUR-GOLD has no price for DOCK"), "{}", missing.text);
        assert_eq!(quote_count(&app).await, 1, "pricing stores nothing");
    }

    async fn bad_configurations_and_inputs_are_refused_precisely_and_write_nothing(app: TestApp) {
        cpq_with_catalog(&app).await;
        let acme = party(&app, "Acme", None).await;
        let quote_with = |components: Value| json!({
            "party": acme, "currency": "EUR", "valid_until": days_from_today(30),
            "lines": [{ "sku": "LAPTOP-KIT", "quantity": 1, "components": components }]
        });
        let refused = async |components: Value, field: &str, message: &str| {
            let reply = app.post(&cpq("/quotes"), quote_with(components)).await;
            reply.assert_problem(422, &[field]);
            assert!(reply.text.contains(message), "{}", reply.text);
        };
        refused(json!([{ "sku": "LAPTOP", "quantity": 1 }, { "sku": "SSD-2TB", "quantity": 1 }]),
                "lines[0].components", "bundle LAPTOP-KIT requires DOCK when SSD-2TB is chosen").await;
        refused(json!([{ "sku": "LAPTOP", "quantity": 1 }, { "sku": "RAM-16", "quantity": 5 }]),
                "lines[0].components[1].quantity", "component RAM-16 allows at most 4 per bundle").await;
        refused(json!([{ "sku": "DOCK", "quantity": 1 }]),
                "lines[0].components", "component LAPTOP is required").await;
        refused(json!([{ "sku": "LAPTOP", "quantity": 1 }, { "sku": "BAG", "quantity": 1 }, { "sku": "SLEEVE", "quantity": 1 }]),
                "lines[0].components", "BAG and SLEEVE exclude each other").await;
        refused(json!([{ "sku": "LAPTOP", "quantity": 1 }, { "sku": "UNKNOWN", "quantity": 1 }]),
                "lines[0].components[1].sku", "UNKNOWN is not a component of bundle LAPTOP-KIT").await;

        let malformed = app.post_raw(&cpq("/quotes"), "{\"party\": ").await;
        malformed.assert_problem(422, &["body"]);
        let line = |sku: &str| json!({
            "party": acme, "currency": "EUR", "valid_until": days_from_today(30),
            "lines": [{ "sku": sku, "quantity": 1 }]
        });
        let unknown = app.post(&cpq("/quotes"), line("NOPE")).await;
        unknown.assert_problem(422, &["lines[0].sku"]);
        assert!(unknown.text.contains("there is no product NOPE"), "{}", unknown.text);
        let unpriced = app.post(&cpq("/quotes"), line("CABLE")).await;
        unpriced.assert_problem(422, &["lines[0].sku"]);
        assert!(unpriced.text.contains("price book EUR-STD has no price for CABLE"), "{}", unpriced.text);
        let mut dollars = line("DOCK");
        dollars["currency"] = json!("USD");
        let no_book = app.post(&cpq("/quotes"), dollars).await;
        no_book.assert_problem(422, &["currency"]);
        assert!(no_book.text.contains("no price book prices USD"), "{}", no_book.text);
        let mut nobody = line("DOCK");
        nobody["party"] = json!(999_999);
        app.post(&cpq("/quotes"), nobody).await.assert_problem(422, &["party"]);
        let mut backwards = line("DOCK");
        backwards["quote_date"] = json!("2026-05-10");
        backwards["valid_until"] = json!("2026-05-01");
        app.post(&cpq("/quotes"), backwards).await.assert_problem(422, &["valid_until"]);
        let mut float = line("DOCK");
        float["lines"][0]["quantity"] = json!(1.5);
        float["lines"][0]["discount_percent"] = json!("101");
        app.post(&cpq("/quotes"), float)
            .await
            .assert_problem(422, &["lines[0].quantity", "lines[0].discount_percent"]);
        let component_of_product = app.post(&cpq("/quotes"), json!({
            "party": acme, "valid_until": days_from_today(30),
            "lines": [{ "sku": "DOCK", "quantity": 1, "components": [] }]
        })).await;
        component_of_product.assert_problem(422, &["lines[0].components"]);

        // A product no longer sold cannot be quoted, alone or inside a bundle.
        let retired = app.patch(&cpq("/products/BAG"), json!({ "active": false })).await;
        assert_eq!(ok(retired, 200).await["active"], false);
        app.post(&cpq("/quotes"), line("BAG")).await.assert_problem(422, &["lines[0].sku"]);
        app.post(&cpq("/quotes"), quote_with(json!([{ "sku": "LAPTOP", "quantity": 1 }, { "sku": "BAG", "quantity": 1 }])))
            .await
            .assert_problem(422, &["lines[0].components"]);

        // Catalog mistakes.
        let nested = app.post(&cpq("/products"), json!({
            "sku": "MEGA-KIT", "name": "Kit of kits", "kind": "bundle", "tax_rate": "19",
            "components": [{ "sku": "LAPTOP-KIT" }, { "sku": "GHOST" }],
            "rules": [{ "if_sku": "LAPTOP-KIT", "requires_sku": "DOCK" }]
        })).await;
        nested.assert_problem(422, &["components[0].sku", "components[1].sku", "rules[0].requires_sku"]);
        let twice = app.post(&cpq("/products"), json!({ "sku": "DOCK", "name": "Dock", "tax_rate": "19" })).await;
        assert_eq!(twice.status, 409, "{}", twice.text);
        let kind = app.patch(&cpq("/products/DOCK"), json!({ "kind": "bundle", "tax_rate": "-1" })).await;
        kind.assert_problem(422, &["kind", "tax_rate"]);
        let tiers = app
            .request(Method::PUT, &cpq("/price-books/EUR-STD/prices/DOCK"), &[],
                     Some(json!({ "unit_price": "150", "tiers": [{ "min_quantity": 10, "unit_price": "140" },
                                                                  { "min_quantity": 5, "unit_price": "145" }] })
                          .to_string().into_bytes()))
            .await;
        tiers.assert_problem(422, &["tiers[1].min_quantity"]);
        let no_product = app
            .request(Method::PUT, &cpq("/price-books/EUR-STD/prices/NOPE"), &[],
                     Some(json!({ "unit_price": "1" }).to_string().into_bytes()))
            .await;
        assert_eq!(no_product.status, 404, "{}", no_product.text);

        // A rep may quote but not change the catalog.
        let (_, rep) = app.user_with_permissions("rita", json!([
            { "resource": "plugins.cpq", "action": "use" },
            { "resource": "plugins.cpq.quotes", "action": "*", "scope": "own" },
            { "resource": "parties", "action": "read" }
        ])).await;
        let denied = app.as_user(&rep, Method::POST, &cpq("/products"),
                                 Some(json!({ "sku": "X", "name": "X", "tax_rate": "0" }))).await;
        assert_eq!(denied.status, 403, "{}", denied.text);
        let browse = app.as_user(&rep, Method::GET, &cpq("/products"), None).await;
        assert_eq!(browse.status, 403, "reading the catalog needs catalog:read: {}", browse.text);
        let settings = app.as_user(&rep, Method::PUT, &cpq("/settings/approvals"), Some(json!({ "levels": [] }))).await;
        assert_eq!(settings.status, 403, "{}", settings.text);
        let request = async |levels: Value| {
            app.request(Method::PUT, &cpq("/settings/approvals"), &[],
                        Some(json!({ "levels": levels }).to_string().into_bytes()))
                .await
        };
        request(json!([{ "name": "lead", "above_percent": "20", "permission": "x:y" },
                       { "name": "boss", "above_percent": "15", "permission": "approve" }]))
            .await
            .assert_problem(422, &["levels[1].above_percent", "levels[1].permission"]);
        let one_level = ok(request(json!([{ "name": "lead", "above_percent": "20",
                                            "permission": "plugins.cpq.discounts:approve-lead" }])).await, 200).await;
        assert_eq!(one_level["levels"][0]["above_percent"], "20");
        let within = app.post(&cpq("/quotes"), json!({
            "party": acme, "valid_until": days_from_today(30),
            "lines": [{ "sku": "DOCK", "quantity": 1, "discount_percent": "15" }]
        })).await;
        assert_eq!(ok(within, 201).await["status"], "draft", "15% is within the single level's 20%");

        // Nothing refused above was written: the first quote took the first number.
        assert_eq!(quote_count(&app).await, 1);
        let listed = ok(app.get(&cpq("/quotes")).await, 200).await;
        assert_eq!(listed["quotes"][0]["number"], "Q-000001");
        let second = app.as_user(&rep, Method::POST, &cpq("/quotes"), Some(line("DOCK"))).await;
        assert_eq!(ok(second, 201).await["number"], "Q-000002");
    }

    async fn discounts_above_a_reps_limit_wait_for_each_level_of_the_chain(app: TestApp) {
        cpq_with_catalog(&app).await;
        let acme = party(&app, "Acme", None).await;
        let rep_grants = json!([
            { "resource": "plugins.cpq", "action": "use" },
            { "resource": "plugins.cpq.catalog", "action": "read" },
            { "resource": "plugins.cpq.quotes", "action": "*", "scope": "own" },
            { "resource": "parties", "action": "read" }
        ]);
        let (rita_id, rita) = app.user_with_permissions("rita", rep_grants.clone()).await;
        let (otto_id, otto) = app.user_with_permissions("otto", rep_grants).await;
        let (mia_id, mia) = app.user_with_permissions("mia", json!([
            { "resource": "plugins.cpq", "action": "use" },
            { "resource": "plugins.cpq.quotes", "action": "*", "scope": "team" },
            { "resource": "plugins.cpq.discounts", "action": "approve-manager", "scope": "team" },
            { "resource": "parties", "action": "read" }
        ])).await;
        let (dora_id, dora) = app.user_with_permissions("dora", json!([
            { "resource": "plugins.cpq", "action": "use" },
            { "resource": "plugins.cpq.quotes", "action": "read" },
            { "resource": "plugins.cpq.discounts", "action": "approve-director" }
        ])).await;
        for rep in [rita_id, otto_id] {
            let managed = app.patch(&format!("/api/v1/users/{rep}"), json!({ "manager": mia_id })).await;
            assert_eq!(managed.status, 200, "{}", managed.text);
        }
        let settings = ok(app.as_user(&rita, Method::GET, &cpq("/settings/approvals"), None).await, 200).await;
        assert_eq!(settings["levels"][0]["above_percent"], "10");
        let as_user = async |token: &str, method: Method, path: &str, body: Option<Value>| {
            app.as_user(token, method, &cpq(path), body).await
        };

        let quote = ok(as_user(&rita, Method::POST, "/quotes", Some(simple_quote(acme, "30"))).await, 201).await;
        assert_eq!(quote["status"], "pending_approval");
        assert_eq!(quote["discount_percent"], "30");
        assert_eq!(quote["approvals"][0]["level"], "sales-manager");
        assert_eq!(quote["approvals"][1]["level"], "sales-director");
        let number = quote["number"].as_str().expect("a number").to_owned();
        let path = |action: &str| format!("/quotes/{number}/{action}");

        // Not approved: it can be neither sent nor accepted.
        let unsent = as_user(&rita, Method::POST, &path("send"), None).await;
        assert_eq!(unsent.status, 409, "{}", unsent.text);
        assert!(unsent.text.contains("waits for approval at the sales-manager level"), "{}", unsent.text);
        assert_eq!(as_user(&rita, Method::POST, &path("accept"), None).await.status, 409);

        // Reach: another rep sees nothing of it; the manager sees the team's quotes.
        let peek = as_user(&otto, Method::GET, &format!("/quotes/{number}"), None).await;
        assert_eq!(peek.status, 404, "{}", peek.text);
        let theirs = ok(as_user(&otto, Method::GET, "/quotes", None).await, 200).await;
        assert_eq!(theirs["quotes"], json!([]));
        let edit = as_user(&otto, Method::POST, &path("send"), None).await;
        assert_eq!(edit.status, 404, "{}", edit.text);
        let team = ok(as_user(&mia, Method::GET, "/quotes?status=pending_approval", None).await, 200).await;
        assert_eq!(team["quotes"][0]["number"], number.as_str());

        // The chain, in order: the rep and the director cannot take the manager's step.
        let own = as_user(&rita, Method::POST, &path("approve"), None).await;
        assert_eq!(own.status, 403, "{}", own.text);
        let skipping = as_user(&dora, Method::POST, &path("approve"), None).await;
        assert_eq!(skipping.status, 403, "{}", skipping.text);
        assert!(skipping.text.contains("plugins.cpq.discounts:approve-manager"), "{}", skipping.text);
        let first = ok(as_user(&mia, Method::POST, &path("approve"), Some(json!({ "comment": "strategic account" }))).await, 200).await;
        assert_eq!(first["status"], "pending_approval");
        assert_eq!(first["approvals"][0]["status"], "approved");
        assert_eq!(first["approvals"][0]["decided_by"], mia_id);
        let beyond = as_user(&mia, Method::POST, &path("approve"), None).await;
        assert_eq!(beyond.status, 403, "the manager cannot approve the director's level: {}", beyond.text);
        let second = ok(as_user(&dora, Method::POST, &path("approve"), None).await, 200).await;
        assert_eq!(second["status"], "approved");
        assert_eq!(as_user(&dora, Method::POST, &path("approve"), None).await.status, 409);
        let sent = ok(as_user(&rita, Method::POST, &path("send"), None).await, 200).await;
        assert_eq!(sent["status"], "sent");
        let accepted = ok(as_user(&rita, Method::POST, &path("accept"), None).await, 200).await;
        assert_eq!(accepted["status"], "accepted");

        // Each decision is its own record, and the audit trail shows who wrote it.
        let decisions = ok(as_user(&rita, Method::GET, &format!("/quotes/{number}/approvals"), None).await, 200).await;
        let decisions = decisions["approvals"].as_array().expect("approvals").clone();
        assert_eq!(decisions.len(), 2, "{decisions:?}");
        assert_eq!(decisions[0]["decided_by"], mia_id);
        assert_eq!(decisions[0]["comment"], "strategic account");
        assert_eq!(decisions[1]["decided_by"], dora_id);
        let audit = ok(app.get("/api/v1/audit?object_type=plugin.record&action=plugin.storage:put&limit=500").await, 200).await;
        let approvers: Vec<&Value> = audit["records"]
            .as_array()
            .expect("records")
            .iter()
            .filter(|r| r["object_id"].as_str().is_some_and(|id| id.starts_with(&format!("cpq/approvals/{number}/"))))
            .map(|r| {
                assert_eq!(r["actor_plugin"], "cpq");
                &r["actor_user_id"]
            })
            .collect();
        assert_eq!(approvers, [&json!(mia_id), &json!(dora_id)]);

        // The manager's own quote above the limit: nobody approves their own.
        let mine = ok(as_user(&mia, Method::POST, "/quotes", Some(simple_quote(acme, "15"))).await, 201).await;
        let self_approval = as_user(&mia, Method::POST, &format!("/quotes/{}/approve", mine["number"].as_str().expect("a number")), None).await;
        assert_eq!(self_approval.status, 403, "{}", self_approval.text);
        assert!(self_approval.text.contains("own quote"), "{}", self_approval.text);

        // A rejected discount blocks the quote until a revision brings it within the limit.
        let modest = ok(as_user(&rita, Method::POST, "/quotes", Some(simple_quote(acme, "12"))).await, 201).await;
        let modest_number = modest["number"].as_str().expect("a number").to_owned();
        let reject_path = format!("/quotes/{modest_number}/reject-approval");
        as_user(&mia, Method::POST, &reject_path, Some(json!({}))).await.assert_problem(422, &["reason"]);
        let rejected = ok(as_user(&mia, Method::POST, &reject_path, Some(json!({ "reason": "no discount on docks" }))).await, 200).await;
        assert_eq!(rejected["status"], "approval_rejected");
        assert_eq!(rejected["approvals"][0]["comment"], "no discount on docks");
        assert_eq!(as_user(&rita, Method::POST, &format!("/quotes/{modest_number}/send"), None).await.status, 409);
        let revised = ok(as_user(&rita, Method::POST, &format!("/quotes/{modest_number}/revise"),
                                 Some(json!({ "lines": [{ "sku": "DOCK", "quantity": 2, "discount_percent": "10" }] }))).await, 201).await;
        assert_eq!(revised["status"], "draft");
        assert_eq!(revised["version"], 2);
        assert_eq!(ok(as_user(&rita, Method::POST, &format!("/quotes/{modest_number}/send"), None).await, 200).await["status"], "sent");
        let lost = ok(as_user(&rita, Method::POST, &format!("/quotes/{modest_number}/reject"), Some(json!({ "reason": "went with a competitor" }))).await, 200).await;
        assert_eq!(lost["status"], "rejected");
        assert_eq!(lost["rejection_reason"], "went with a competitor");
    }

    async fn an_expired_quote_cannot_be_accepted_until_revised(app: TestApp) {
        cpq_with_catalog(&app).await;
        let acme = party(&app, "Acme", None).await;
        let old = app
            .post(&cpq("/quotes"), json!({
                "party": acme, "quote_date": "2025-01-02", "valid_until": "2025-01-31",
                "lines": [{ "sku": "DOCK", "quantity": 1 }]
            }))
            .await;
        let old = ok(old, 201).await;
        assert_eq!(old["status"], "expired", "expired on read");
        assert_eq!(old["currency"], "EUR");
        let refused = app.post(&cpq("/quotes/Q-000001/accept"), json!(null)).await;
        assert_eq!(refused.status, 409, "{}", refused.text);
        assert!(
            refused.text.contains("quote Q-000001 expired on 2025-02-01 (valid until 2025-01-31); revise it with a new validity date"),
            "{}", refused.text
        );
        assert_eq!(app.post(&cpq("/quotes/Q-000001/send"), json!(null)).await.status, 409);
        let expired = ok(app.get(&cpq("/quotes?status=expired")).await, 200).await;
        assert_eq!(expired["quotes"][0]["number"], "Q-000001");
        let drafts = ok(app.get(&cpq("/quotes?status=draft")).await, 200).await;
        assert_eq!(drafts["quotes"], json!([]));
        app.get(&cpq("/quotes?status=lost")).await.assert_problem(422, &["status"]);

        let kept = app.post(&cpq("/quotes/Q-000001/revise"), json!({})).await;
        kept.assert_problem(422, &["valid_until"]);
        let renewed = ok(app.post(&cpq("/quotes/Q-000001/revise"), json!({ "valid_until": days_from_today(14) })).await, 201).await;
        assert_eq!(renewed["status"], "draft");
        assert_eq!(renewed["lines"][0]["sku"], "DOCK", "the lines carry over");
        let accepted = ok(app.post(&cpq("/quotes/Q-000001/accept"), json!(null)).await, 200).await;
        assert_eq!(accepted["status"], "accepted");
    }

    async fn a_python_hook_applies_contract_prices_and_a_failing_hook_fails_pricing(app: TestApp) {
        cpq_with_catalog(&app).await;
        let acme = party(&app, "Acme", Some("gold")).await;
        let plugin = app.install_enabled(built_component("plugins-python/contract_prices.wasm")).await;
        assert_eq!(plugin["api_version"], "0.2.1", "{plugin}");
        let contract = async |sku: &str, body: Value| {
            app.request(Method::PUT, &format!("/api/v1/plugins/contract-prices/contract-prices/{acme}/{sku}"),
                        &[], Some(body.to_string().into_bytes()))
                .await
        };
        contract("LAPTOP", json!({ "unit_price": "-5", "currency": "EUR" })).await.assert_problem(422, &["unit_price"]);
        ok(contract("LAPTOP", json!({ "unit_price": "850.00", "currency": "EUR" })).await, 200).await;

        let quote = app
            .post(&cpq("/quotes"), json!({
                "party": acme, "currency": "EUR", "valid_until": days_from_today(30),
                "lines": [{ "sku": "LAPTOP", "quantity": 2, "discount_percent": "5" }, { "sku": "DOCK", "quantity": 1 }]
            }))
            .await;
        let quote = ok(quote, 201).await;
        let laptop = &quote["lines"][0];
        assert_eq!(laptop["tier_unit_price"], "1000");
        assert_eq!(laptop["unit_price"], "850");
        assert_eq!(laptop["gross_amount"], "1700.00");
        assert_eq!(laptop["discount_amount"], "85.00");
        assert_eq!(laptop["net_amount"], "1615.00");
        assert_eq!(quote["lines"][1]["unit_price"], "150", "no contract for the dock");
        assert_eq!(quote["price_adjustments"], json!([{
            "line": 1, "sku": "LAPTOP",
            "unit_price_before": "1000", "unit_price_after": "850", "unit_price_change": "-150",
            "discount_percent_before": "5", "discount_percent_after": "5",
            "amount_change": "-300.00", "notes": format!("contract price for party {acme}")
        }]));
        assert_eq!(quote["segment"], "gold");
        assert_eq!(quote["totals"]["total"], "2100.35");

        // A contract in another currency makes the hook refuse, and pricing fails clearly.
        ok(contract("DOCK", json!({ "unit_price": "120", "currency": "USD" })).await, 200).await;
        let failed = app
            .post(&cpq("/quotes"), json!({
                "party": acme, "valid_until": days_from_today(30),
                "lines": [{ "sku": "DOCK", "quantity": 1 }]
            }))
            .await;
        assert_eq!(failed.status, 502, "{}", failed.text);
        assert_eq!(failed.content_type, "application/problem+json");
        let detail = failed.body["detail"].as_str().expect("a detail");
        assert!(detail.starts_with("pricing failed"), "{detail}");
        assert!(detail.contains("cpq.price-adjust") && detail.contains("contract-prices"), "{detail}");
        assert!(detail.contains("in USD, not in EUR"), "{detail}");
        assert_eq!(quote_count(&app).await, 1, "the failed pricing wrote nothing");

        // Disabled, the hook no longer runs.
        let disabled = app.patch("/api/v1/plugins/contract-prices", json!({ "status": "disabled" })).await;
        assert_eq!(disabled.status, 200, "{}", disabled.text);
        let list_priced = app
            .post(&cpq("/price"), json!({ "party": acme, "lines": [{ "sku": "DOCK", "quantity": 1 }] }))
            .await;
        let list_priced = ok(list_priced, 200).await;
        assert_eq!(list_priced["lines"][0]["unit_price"], "150");
        assert_eq!(list_priced["price_adjustments"], json!([]));
    }
}
