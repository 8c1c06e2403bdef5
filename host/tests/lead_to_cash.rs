//! Lead to cash, end to end through the HTTP API on both backends, with the four first-party
//! plugins on one data model: a web lead becomes a customer and an opportunity (sfa), a quote
//! with a bundle, a volume tier and a discount a manager approves is accepted (cpq), the
//! accepted quote becomes a sales order that is held for credit and released, shipped in
//! part (orders), invoiced from what was shipped and paid in part (invoicing), seen whole in
//! the customer 360 view, and a return is credited. The books balance at the end and the
//! audit trail names the user and plugin of every step. Plus the rejections: invoicing more
//! than was shipped, paying a cancelled invoice, posting into a closed period through a
//! plugin.
//!
//! The components are built by `scripts/build-plugins`.

mod common;

use axum::http::Method;
use common::{Reply, TestApp, rust_plugin};
use serde_json::{Value, json};

async fn ok(reply: Reply, status: u16) -> Value {
    assert_eq!(reply.status.as_u16(), status, "{}", reply.text);
    reply.body
}

fn plugin(name: &str, path: &str) -> String {
    format!("/api/v1/plugins/{name}{path}")
}

fn days_from_today(days: i64) -> String {
    (chrono::Utc::now().date_naive() + chrono::Duration::days(days))
        .format("%Y-%m-%d")
        .to_string()
}

/// The catalog in US dollars: a laptop kit bundle, laptops with a volume tier, docks, support.
async fn catalog(app: &TestApp) {
    let cpq = |path: &str| plugin("cpq", path);
    for body in [
        json!({ "sku": "LAPTOP", "name": "Laptop 14\"", "tax_rate": "19" }),
        json!({ "sku": "DOCK", "name": "Docking station", "tax_rate": "19" }),
        json!({ "sku": "SUPPORT", "name": "Support", "unit": "year", "tax_rate": "7" }),
        json!({ "sku": "KIT", "name": "Laptop kit", "kind": "bundle", "tax_rate": "19",
                "components": [{ "sku": "LAPTOP", "required": true }, { "sku": "DOCK" }] }),
    ] {
        ok(app.post(&cpq("/products"), body).await, 201).await;
    }
    ok(
        app.post(
            &cpq("/price-books"),
            json!({ "code": "USD-LIST", "name": "List prices", "currency": "USD" }),
        )
        .await,
        201,
    )
    .await;
    for (sku, price) in [
        ("KIT", json!({ "unit_price": "50.00" })),
        (
            "LAPTOP",
            json!({ "unit_price": "1000.00", "tier_mode": "volume",
                           "tiers": [{ "min_quantity": 10, "unit_price": "900.00" }] }),
        ),
        ("DOCK", json!({ "unit_price": "150.00" })),
        ("SUPPORT", json!({ "unit_price": "120.00" })),
    ] {
        let put = app
            .request(
                Method::PUT,
                &cpq(&format!("/price-books/USD-LIST/prices/{sku}")),
                &[],
                Some(price.to_string().into_bytes()),
            )
            .await;
        ok(put, 200).await;
    }
}

async fn invoicing_settings(app: &TestApp) {
    let path = plugin("invoicing", "/settings");
    let mut settings = ok(app.get(&path).await, 200).await;
    settings["tax_codes"] = json!([{ "code": "standard", "name": "Standard", "rate": "19" }]);
    settings["default_tax_code"] = json!("standard");
    let put = app
        .request(
            Method::PUT,
            &path,
            &[],
            Some(settings.to_string().into_bytes()),
        )
        .await;
    ok(put, 200).await;
}

fn amount(value: &Value) -> rust_decimal::Decimal {
    value
        .as_str()
        .unwrap_or_else(|| panic!("an amount: {value}"))
        .parse()
        .expect("a decimal")
}

on_both_backends! {
    async fn a_lead_becomes_cash_in_the_bank(app: TestApp) {
        for name in ["sfa", "cpq", "orders", "invoicing"] {
            app.install_enabled(rust_plugin(name)).await;
        }
        catalog(&app).await;
        invoicing_settings(&app).await;
        let (manager_id, manager) = app.user_with_role("mia", "sales-manager").await;
        let (rep_id, rep) = app.user_with_role("ravi", "sales-rep").await;
        let (accountant_id, accountant) = app.user_with_role("anne", "accountant").await;
        let (warehouse_id, warehouse) = app.user_with_permissions("wes", json!([
            { "resource": "plugins.orders", "action": "use" },
            { "resource": "plugins.orders.orders", "action": "read" },
            { "resource": "plugins.orders.shipments", "action": "write" },
            { "resource": "plugins.orders.returns", "action": "write" },
            { "resource": "plugins.invoicing.invoices", "action": "write" },
            { "resource": "ledger.entries", "action": "post" },
            { "resource": "parties", "action": "read" }
        ])).await;
        ok(app.patch(&format!("/api/v1/users/{rep_id}"), json!({ "manager": manager_id })).await, 200).await;
        let as_user = async |token: &str, method: Method, path: String, body: Option<Value>| {
            app.as_user(token, method, &path, body).await
        };

        // Lead → customer + opportunity (sfa).
        let lead = ok(as_user(&rep, Method::POST, plugin("sfa", "/leads"), Some(json!({
            "first_name": "Zoe", "last_name": "Zephyr", "company": "Zephyr Widgets GmbH",
            "email": "zoe@zephyr.example", "country": "DE"
        }))).await, 201).await;
        let lead_number = lead["number"].as_str().expect("a lead number");
        ok(as_user(&rep, Method::POST, plugin("sfa", &format!("/leads/{lead_number}/qualify")), None).await, 200).await;
        let converted = ok(as_user(&rep, Method::POST, plugin("sfa", &format!("/leads/{lead_number}/convert")), Some(json!({
            "opportunity": { "amount": "15000.00", "currency": "USD", "expected_close": days_from_today(30),
                             "products": ["KIT", "LAPTOP"] }
        }))).await, 201).await;
        let customer = converted["party"]["id"].as_i64().expect("a customer id");
        // Finance sets the customer's terms: 30 days, a credit limit of 5,000.
        ok(app.patch(&format!("/api/v1/parties/{customer}"),
                     json!({ "payment_terms_days": 30, "credit_limit": "5000.00" })).await, 200).await;

        // Quote with a bundle, a volume tier and a 15 % discount the manager approves (cpq).
        let quote = ok(as_user(&rep, Method::POST, plugin("cpq", "/quotes"), Some(json!({
            "party": customer, "currency": "USD", "valid_until": days_from_today(30),
            "lines": [
                { "sku": "KIT", "quantity": 2, "discount_percent": "15",
                  "components": [{ "sku": "LAPTOP", "quantity": 1 }, { "sku": "DOCK", "quantity": 1 }] },
                { "sku": "LAPTOP", "quantity": 10 },
                { "sku": "SUPPORT", "quantity": 2 }
            ]
        }))).await, 201).await;
        assert_eq!(quote["status"], "pending_approval", "{quote}");
        assert_eq!(quote["lines"][1]["unit_price"], "900", "the volume tier: {quote}");
        let q = quote["number"].as_str().expect("a quote number").to_owned();
        ok(as_user(&manager, Method::POST, plugin("cpq", &format!("/quotes/{q}/approve")), None).await, 200).await;
        ok(as_user(&rep, Method::POST, plugin("cpq", &format!("/quotes/{q}/send")), None).await, 200).await;
        ok(as_user(&rep, Method::POST, plugin("cpq", &format!("/quotes/{q}/accept")), Some(json!({ "version": 1 }))).await, 200).await;

        // The accepted quote becomes a sales order, held: it exceeds the credit limit.
        app.state.runtime.dispatch_all().await.expect("delivering events");
        let orders = ok(as_user(&rep, Method::GET, plugin("orders", &format!("/orders?party={customer}")), None).await, 200).await;
        let order = &orders["items"][0];
        assert_eq!(order["quote"], q.as_str(), "{orders}");
        assert_eq!(order["status"], "on_hold", "{order}");
        assert_eq!(order["totals"]["total"], quote["totals"]["total"]);
        let so = order["number"].as_str().expect("an order number").to_owned();
        let held_ship = as_user(&warehouse, Method::POST, plugin("orders", &format!("/orders/{so}/shipments")), Some(json!({}))).await;
        assert_eq!(held_ship.status, 409, "a held order does not ship: {}", held_ship.text);
        let by_rep = as_user(&rep, Method::POST, plugin("orders", &format!("/orders/{so}/release")), Some(json!({ "note": "please" }))).await;
        assert_eq!(by_rep.status, 403, "{}", by_rep.text);
        let released = ok(as_user(&accountant, Method::POST, plugin("orders", &format!("/orders/{so}/release")),
                                  Some(json!({ "note": "prepayment agreed" }))).await, 200).await;
        assert_eq!(released["status"], "confirmed");

        // Partial shipment: all laptops, one of the two kits; the other kit is backordered.
        let shipped = as_user(&warehouse, Method::POST, plugin("orders", &format!("/orders/{so}/shipments")), Some(json!({
            "lines": [{ "line": 1, "quantity": "1" }, { "line": 2, "quantity": "10" }]
        }))).await;
        ok(shipped, 201).await;
        let order = ok(as_user(&rep, Method::GET, plugin("orders", &format!("/orders/{so}")), None).await, 200).await;
        assert_eq!(order["status"], "partially_shipped", "{order}");
        assert_eq!(order["lines"][0]["backordered"], "1", "{order}");

        // Rejections first: more than shipped; a closed period. Neither writes anything.
        let counts = app.row_counts().await;
        let too_much = as_user(&accountant, Method::POST, plugin("invoicing", "/invoices/from-order"), Some(json!({
            "order": so, "lines": [{ "line": 1, "quantity": "2" }]
        }))).await;
        too_much.assert_problem(422, &["lines[0].quantity"]);
        let march = app.period_id("2025-03").await;
        ok(app.post(&format!("/api/v1/ledger/periods/{march}/close"), json!(null)).await, 200).await;
        let closed = as_user(&accountant, Method::POST, plugin("invoicing", "/invoices/from-order"),
                             Some(json!({ "order": so, "date": "2025-03-14" }))).await;
        closed.assert_problem(422, &["date"]);
        assert_eq!(app.row_counts().await, counts);

        // The invoice for what was shipped (dated back so that it is overdue today).
        let invoice = ok(as_user(&accountant, Method::POST, plugin("invoicing", "/invoices/from-order"),
                                 Some(json!({ "order": so, "date": "2025-06-02" }))).await, 201).await;
        assert_eq!(invoice["number"], "INV-000001", "the refused attempt gave its number back");
        assert_eq!(invoice["due_date"], "2025-07-02");
        assert_eq!(invoice["lines"].as_array().map(Vec::len), Some(2), "{invoice}");
        assert_eq!(invoice["lines"][1]["net_amount"], "9000.00");
        let kit_net = amount(&order["lines"][0]["net_amount"]) / rust_decimal::Decimal::TWO;
        let net = amount(&invoice["totals"]["net"]);
        assert_eq!(net, kit_net.round_dp(2) + rust_decimal::Decimal::from(9000), "{invoice}");
        let tax = amount(&invoice["totals"]["tax"]);
        let total = amount(&invoice["totals"]["total"]);
        let entry = ok(app.get(&format!("/api/v1/ledger/entries/{}", invoice["entry"])).await, 200).await;
        let posted: Vec<(String, String, String)> = entry["lines"].as_array().expect("lines").iter()
            .map(|l| (l["account"].as_str().unwrap_or("").to_owned(),
                      l["debit"].as_str().unwrap_or("").to_owned(),
                      l["credit"].as_str().unwrap_or("").to_owned()))
            .collect();
        assert_eq!(posted, vec![
            ("1100".to_owned(), total.to_string(), String::new()),
            ("4000".to_owned(), String::new(), net.to_string()),
            ("2200".to_owned(), String::new(), tax.to_string()),
        ]);
        assert_eq!(entry["lines"][0]["party"], customer);
        let order = ok(as_user(&rep, Method::GET, plugin("orders", &format!("/orders/{so}")), None).await, 200).await;
        assert_eq!(order["lines"][1]["invoiced"], "10", "{order}");

        // A partial payment; aging shows the remainder past due.
        let paid = ok(as_user(&accountant, Method::POST, plugin("invoicing", "/payments"),
                              Some(json!({ "party": customer, "amount": "8000.00", "date": "2025-07-10" }))).await, 201).await;
        assert_eq!(paid["settled"][0]["number"], "INV-000001");
        let remainder = total - rust_decimal::Decimal::from(8000);
        assert_eq!(amount(&paid["settled"][0]["open"]), remainder);
        let aging = ok(as_user(&accountant, Method::GET, plugin("invoicing", "/aging"), None).await, 200).await;
        assert_eq!(amount(&aging["totals"][4]), remainder, "90+ days: {aging}");

        // The rep's customer 360: order history, the open invoice, overdue.
        let view = ok(as_user(&rep, Method::GET, plugin("sfa", &format!("/customers/{customer}")), None).await, 200).await;
        assert_eq!(view["orders"]["available"], true, "{view}");
        assert_eq!(view["orders"]["orders"][0]["number"], so.as_str(), "{view}");
        assert_eq!(view["invoices"]["open_invoices"][0]["number"], "INV-000001", "{view}");
        assert_eq!(view["invoices"]["overdue_invoices"][0]["number"], "INV-000001");
        assert_eq!(view["credit_status"]["status"], "overdue", "{view}");

        // A return of two laptops: the credit note goes against the open invoice.
        let rma = ok(as_user(&warehouse, Method::POST, plugin("orders", &format!("/orders/{so}/returns")), Some(json!({
            "reason": "damaged in transit", "lines": [{ "line": 2, "quantity": "2" }]
        }))).await, 201).await;
        let rma_number = rma["number"].as_str().expect("an RMA number").to_owned();
        let received = ok(as_user(&warehouse, Method::POST, plugin("orders", &format!("/returns/{rma_number}/receive")), Some(json!({}))).await, 200).await;
        let credit_number = received["credit_note"]["number"].as_str().expect("a credit note").to_owned();
        assert_eq!(credit_number, "CN-000001");
        assert_eq!(received["credit_note"]["total"], "2142.00", "2 × 900 + 19 %: {received}");
        let invoice_now = ok(as_user(&accountant, Method::GET, plugin("invoicing", &format!("/invoices/{}", invoice["id"].as_str().expect("an id"))), None).await, 200).await;
        assert_eq!(amount(&invoice_now["open"]), remainder - rust_decimal::Decimal::from(2142));

        // Paying a cancelled invoice is refused.
        let direct = ok(as_user(&accountant, Method::POST, plugin("invoicing", "/invoices"), Some(json!({
            "party": customer, "lines": [{ "description": "Training", "quantity": "1", "unit_price": "300" }]
        }))).await, 201).await;
        let direct_id = direct["id"].as_str().expect("an id").to_owned();
        ok(as_user(&accountant, Method::POST, plugin("invoicing", &format!("/invoices/{direct_id}/cancel")), Some(json!({ "reason": "sent twice" }))).await, 200).await;
        let pay_cancelled = as_user(&accountant, Method::POST, plugin("invoicing", "/payments"), Some(json!({
            "party": customer, "amount": "357.00", "allocations": [{ "document": direct_id, "amount": "357.00" }]
        }))).await;
        assert_eq!(pay_cancelled.status, 409, "{}", pay_cancelled.text);

        // The books balance; the customer owes what the invoice still says.
        let trial = ok(app.get("/api/v1/ledger/trial-balance").await, 200).await;
        assert_eq!(trial["balanced"], true, "{trial}");
        let balance = ok(app.get(&format!("/api/v1/parties/{customer}/balance")).await, 200).await;
        assert_eq!(amount(&balance["receivable"]), remainder - rust_decimal::Decimal::from(2142), "{balance}");

        // Every step is in the audit trail with the acting user and plugin.
        let steps = async |user: i64| -> Vec<(String, String)> {
            let records = ok(app.get(&format!("/api/v1/audit?actor={user}&limit=500")).await, 200).await;
            records["records"].as_array().expect("records").iter()
                .map(|r| (r["actor_plugin"].as_str().unwrap_or("").to_owned(), r["action"].as_str().unwrap_or("").to_owned()))
                .collect()
        };
        let has = |steps: &[(String, String)], plugin: &str, action: &str| {
            steps.iter().any(|(p, a)| p == plugin && a == action)
        };
        let by_rep = steps(rep_id).await;
        assert!(has(&by_rep, "sfa", "plugin.storage:put"), "{by_rep:?}");
        assert!(has(&by_rep, "cpq", "plugin.storage:put"), "{by_rep:?}");
        let by_manager = steps(manager_id).await;
        assert!(has(&by_manager, "cpq", "plugin.storage:put"), "the approval: {by_manager:?}");
        let by_accountant = steps(accountant_id).await;
        assert!(has(&by_accountant, "orders", "plugin.storage:put"), "the release: {by_accountant:?}");
        assert!(has(&by_accountant, "invoicing", "ledger.entries:post"), "{by_accountant:?}");
        let by_warehouse = steps(warehouse_id).await;
        assert!(has(&by_warehouse, "orders", "plugin.storage:put"), "{by_warehouse:?}");
        assert!(has(&by_warehouse, "invoicing", "ledger.entries:post"), "the credit note: {by_warehouse:?}");
        let verification = ok(app.get("/api/v1/audit/verification").await, 200).await;
        assert_eq!(verification["intact"], true, "{verification}");
    }
}
