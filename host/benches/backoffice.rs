//! The back-office plugins' targets, in-process on SQLite, through the real HTTP router and
//! the real plugins (built by `scripts/build-plugins`):
//!
//! * invoicing: invoices issued and posted to the ledger per second — in billing-run batches
//!   of 100 per request, and one per request;
//! * lead to cash: the server time of the whole scenario of `host/tests/lead_to_cash.rs`
//!   (lead, customer, opportunity, quote with a bundle, a volume tier and an approval, order,
//!   credit hold and release, shipment, invoice, payment, return and credit note).
//!
//! Figures in docs/PERFORMANCE.md.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use keel_host::audit::Origin;
use keel_host::testing::PluginHost;
use serde_json::{Value, json};

mod common;
use common::{component, ok};

/// Invoices per billing-run request.
const BATCH: usize = 100;

async fn ok_as(
    host: &PluginHost,
    token: &str,
    method: &str,
    uri: &str,
    body: Option<&Value>,
) -> Value {
    let (status, reply) = host
        .request_as(token, method, uri, body)
        .await
        .expect("a reply");
    assert!(
        (200..300).contains(&status),
        "{method} {uri}: {status} {reply}"
    );
    reply
}

/// A user holding `role`, with an API token; returns the id and the token.
async fn user(host: &PluginHost, name: &str, role: &str, manager: Option<i64>) -> (i64, String) {
    let created = ok(
        host,
        "POST",
        "/api/v1/users",
        Some(&json!({ "username": name, "manager": manager })),
    )
    .await;
    let id = created["id"].as_i64().expect("a user id");
    ok(
        host,
        "POST",
        &format!("/api/v1/users/{id}/roles"),
        Some(&json!({ "role": role })),
    )
    .await;
    let token = ok(
        host,
        "POST",
        &format!("/api/v1/users/{id}/tokens"),
        Some(&json!({ "name": "bench" })),
    )
    .await;
    (id, token["token"].as_str().expect("a token").to_owned())
}

/// The four plugins, the catalog and the people of the lead-to-cash scenario.
struct Company {
    host: PluginHost,
    rep: String,
    manager: String,
    accountant: String,
    runs: AtomicUsize,
}

async fn lead_to_cash_company() -> Company {
    let host = PluginHost::start(&component("wasm32-wasip2/plugin/sfa.wasm"))
        .await
        .expect("a host with sfa");
    let company = host.state().companies.default_company();
    for name in ["cpq", "orders", "invoicing"] {
        host.state()
            .runtime
            .install_enabled(
                &company,
                &component(&format!("wasm32-wasip2/plugin/{name}.wasm")),
                &Origin::system(),
            )
            .await
            .expect("installing a plugin");
    }
    let cpq = |path: &str| format!("/api/v1/plugins/cpq{path}");
    for body in [
        json!({ "sku": "LAPTOP", "name": "Laptop", "tax_rate": "19" }),
        json!({ "sku": "DOCK", "name": "Dock", "tax_rate": "19" }),
        json!({ "sku": "KIT", "name": "Kit", "kind": "bundle", "tax_rate": "19",
                "components": [{ "sku": "LAPTOP", "required": true }, { "sku": "DOCK" }] }),
    ] {
        ok(&host, "POST", &cpq("/products"), Some(&body)).await;
    }
    ok(
        &host,
        "POST",
        &cpq("/price-books"),
        Some(&json!({ "code": "USD", "name": "List", "currency": "USD" })),
    )
    .await;
    for (sku, price) in [
        ("KIT", json!({ "unit_price": "50" })),
        (
            "LAPTOP",
            json!({ "unit_price": "1000", "tier_mode": "volume",
                    "tiers": [{ "min_quantity": 10, "unit_price": "900" }] }),
        ),
        ("DOCK", json!({ "unit_price": "150" })),
    ] {
        ok(
            &host,
            "PUT",
            &cpq(&format!("/price-books/USD/prices/{sku}")),
            Some(&price),
        )
        .await;
    }
    let (manager_id, manager) = user(&host, "mia", "sales-manager", None).await;
    let (_, rep) = user(&host, "ravi", "sales-rep", Some(manager_id)).await;
    let (_, accountant) = user(&host, "anne", "accountant", None).await;
    Company {
        host,
        rep,
        manager,
        accountant,
        runs: AtomicUsize::new(0),
    }
}

/// The whole scenario once, as `host/tests/lead_to_cash.rs` walks it.
async fn lead_to_cash(company: &Company) {
    let Company {
        host,
        rep,
        manager,
        accountant,
        ..
    } = company;
    let run = company.runs.fetch_add(1, Ordering::Relaxed);
    let p = |plugin: &str, path: &str| format!("/api/v1/plugins/{plugin}{path}");
    let lead = ok_as(host, rep, "POST", &p("sfa", "/leads"), Some(&json!({
        "last_name": "Buyer", "company": format!("Customer {run}"), "email": format!("buyer{run}@example.com")
    }))).await;
    let lead = lead["number"].as_str().expect("a lead");
    let converted = ok_as(
        host,
        rep,
        "POST",
        &p("sfa", &format!("/leads/{lead}/convert")),
        Some(&json!({
            "allow_duplicate": true,
            "opportunity": { "amount": "12000", "currency": "USD", "expected_close": "2027-01-31" }
        })),
    )
    .await;
    let party = converted["party"]["id"].as_i64().expect("a customer");
    ok_as(
        host,
        accountant,
        "PATCH",
        &format!("/api/v1/parties/{party}"),
        Some(&json!({ "credit_limit": "5000.00" })),
    )
    .await;
    let quote = ok_as(host, rep, "POST", &p("cpq", "/quotes"), Some(&json!({
        "party": party, "currency": "USD", "valid_until": "2099-12-31",
        "lines": [
            { "sku": "KIT", "quantity": 2, "discount_percent": "15",
              "components": [{ "sku": "LAPTOP", "quantity": 1 }, { "sku": "DOCK", "quantity": 1 }] },
            { "sku": "LAPTOP", "quantity": 10 }
        ]
    }))).await;
    let q = quote["number"].as_str().expect("a quote");
    ok_as(
        host,
        manager,
        "POST",
        &p("cpq", &format!("/quotes/{q}/approve")),
        None,
    )
    .await;
    ok_as(
        host,
        rep,
        "POST",
        &p("cpq", &format!("/quotes/{q}/send")),
        None,
    )
    .await;
    ok_as(
        host,
        rep,
        "POST",
        &p("cpq", &format!("/quotes/{q}/accept")),
        Some(&json!({ "version": 1 })),
    )
    .await;
    host.state()
        .runtime
        .dispatch_all()
        .await
        .expect("delivering events");
    let orders = ok_as(
        host,
        accountant,
        "GET",
        &p("orders", &format!("/orders?party={party}")),
        None,
    )
    .await;
    let order = orders["items"][0]["number"]
        .as_str()
        .expect("an order")
        .to_owned();
    ok_as(
        host,
        accountant,
        "POST",
        &p("orders", &format!("/orders/{order}/release")),
        Some(&json!({})),
    )
    .await;
    ok(
        host,
        "POST",
        &p("orders", &format!("/orders/{order}/shipments")),
        Some(&json!({
            "lines": [{ "line": 1, "quantity": "1" }, { "line": 2, "quantity": "10" }]
        })),
    )
    .await;
    let invoice = ok_as(
        host,
        accountant,
        "POST",
        &p("invoicing", "/invoices/from-order"),
        Some(&json!({ "order": order })),
    )
    .await;
    assert_eq!(invoice["status"], "issued", "{invoice}");
    ok_as(
        host,
        accountant,
        "POST",
        &p("invoicing", "/payments"),
        Some(&json!({ "party": party, "amount": "8000.00" })),
    )
    .await;
    ok_as(host, accountant, "GET", &p("invoicing", "/aging"), None).await;
    ok_as(
        host,
        rep,
        "GET",
        &p("sfa", &format!("/customers/{party}")),
        None,
    )
    .await;
    let rma = ok(
        host,
        "POST",
        &p("orders", &format!("/orders/{order}/returns")),
        Some(&json!({
            "reason": "damaged", "lines": [{ "line": 2, "quantity": "2" }]
        })),
    )
    .await;
    let rma = rma["number"].as_str().expect("an RMA");
    let received = ok(
        host,
        "POST",
        &p("orders", &format!("/returns/{rma}/receive")),
        Some(&json!({})),
    )
    .await;
    assert_eq!(received["credit_note"]["total"], "2142.00", "{received}");
}

/// Invoicing with two tax rates and a customer.
async fn invoicing_host() -> (PluginHost, i64) {
    let host = PluginHost::start(&component("wasm32-wasip2/plugin/invoicing.wasm"))
        .await
        .expect("a host with invoicing");
    let mut settings = ok(&host, "GET", "/api/v1/plugins/invoicing/settings", None).await;
    settings["tax_codes"] = json!([
        { "code": "standard", "name": "Standard", "rate": "19" },
        { "code": "reduced", "name": "Reduced", "rate": "7" }
    ]);
    settings["default_tax_code"] = json!("standard");
    ok(
        &host,
        "PUT",
        "/api/v1/plugins/invoicing/settings",
        Some(&settings),
    )
    .await;
    let party = ok(
        &host,
        "POST",
        "/api/v1/parties",
        Some(&json!({ "kind": "organization", "name": "Benchmark Buyer", "roles": ["customer"] })),
    )
    .await["id"]
        .as_i64()
        .expect("a party id");
    (host, party)
}

/// A three-line invoice at two rates.
fn invoice(party: i64) -> Value {
    json!({
        "party": party,
        "lines": [
            { "description": "Widgets", "quantity": "12", "unit_price": "19.90", "discount_percent": "5" },
            { "description": "Handbook", "quantity": "1", "unit_price": "24.00", "tax_code": "reduced" },
            { "description": "Shipping", "quantity": "1", "unit_price": "9.95" }
        ]
    })
}

fn benches(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let mut group = c.benchmark_group("backoffice");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(10));

    let (host, party) = runtime.block_on(invoicing_host());
    let batch = json!({ "invoices": vec![invoice(party); BATCH] });
    let single = invoice(party);
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("invoicing: issue and post invoices, 100 per request", |b| {
        b.to_async(&runtime).iter(|| async {
            ok(
                &host,
                "POST",
                "/api/v1/plugins/invoicing/invoices/batch",
                Some(&batch),
            )
            .await
        });
    });
    group.throughput(Throughput::Elements(1));
    group.bench_function("invoicing: issue and post invoices, 1 per request", |b| {
        b.to_async(&runtime).iter(|| async {
            ok(
                &host,
                "POST",
                "/api/v1/plugins/invoicing/invoices",
                Some(&single),
            )
            .await
        });
    });

    // In-process, so the time of a run is the server's: no network, no client.
    let company = runtime.block_on(lead_to_cash_company());
    group.bench_function(
        "lead to cash: the whole scenario, 16 requests and an event delivery",
        |b| {
            b.to_async(&runtime).iter(|| lead_to_cash(&company));
        },
    );
    group.finish();
}

criterion_group!(backoffice, benches);
criterion_main!(backoffice);
