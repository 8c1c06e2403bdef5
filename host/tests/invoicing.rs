//! The invoicing plugin (`plugins/invoicing`) end to end through the HTTP API, on both
//! backends: invoices with taxes per rate posted to the ledger, drafts, batches, gapless
//! numbers that a closed period gives back, payments (partial, over, allocated), credit
//! notes, cancellation, aging as of a date, dunning, and vendor bills with payments made.
//! The whole lead-to-cash flow with orders, cpq and sfa is in `lead_to_cash.rs`.
//!
//! The component is built by `scripts/build-plugins` (the test command runs it first).

mod common;

use axum::http::Method;
use common::{Reply, TestApp, rust_plugin};
use serde_json::{Value, json};

fn invoicing(path: &str) -> String {
    format!("/api/v1/plugins/invoicing{path}")
}

async fn ok(reply: Reply, status: u16) -> Value {
    assert_eq!(reply.status.as_u16(), status, "{}", reply.text);
    reply.body
}

async fn party(app: &TestApp, name: &str, role: &str, extra: Value) -> i64 {
    let mut body = json!({ "kind": "organization", "name": name, "roles": [role] });
    if let (Value::Object(body), Value::Object(extra)) = (&mut body, extra) {
        body.extend(extra);
    }
    let created = app.post("/api/v1/parties", body).await;
    assert_eq!(created.status, 201, "{}", created.text);
    created.body["id"].as_i64().expect("a party id")
}

/// Installs invoicing with three tax codes, books at the reduced rate and 19 % by default.
async fn invoicing_with_taxes(app: &TestApp) {
    app.install_enabled(rust_plugin("invoicing")).await;
    let mut settings = ok(app.get(&invoicing("/settings")).await, 200).await;
    assert_eq!(settings["accounts"]["receivable"], "1100", "{settings}");
    settings["tax_codes"] = json!([
        { "code": "standard", "name": "Standard VAT", "rate": "19" },
        { "code": "reduced", "name": "Reduced VAT", "rate": "7" },
        { "code": "exempt", "name": "Exempt", "rate": "0" }
    ]);
    settings["product_tax_codes"] = json!({ "BOOK": "reduced" });
    settings["default_tax_code"] = json!("standard");
    ok(put(app, "/settings", settings).await, 200).await;
}

async fn put(app: &TestApp, path: &str, body: Value) -> Reply {
    app.request(
        Method::PUT,
        &invoicing(path),
        &[],
        Some(body.to_string().into_bytes()),
    )
    .await
}

/// A one-line invoice at the standard rate: `net` plus 19 %.
async fn invoice(app: &TestApp, party: i64, date: &str, net: &str) -> Value {
    let body = json!({ "party": party, "date": date,
                       "lines": [{ "description": "Consulting", "quantity": "1", "unit_price": net }] });
    ok(app.post(&invoicing("/invoices"), body).await, 201).await
}

async fn entry_lines(app: &TestApp, entry: &Value) -> Vec<(String, String, String, Value)> {
    let entry = ok(
        app.get(&format!("/api/v1/ledger/entries/{entry}")).await,
        200,
    )
    .await;
    entry["lines"]
        .as_array()
        .expect("lines")
        .iter()
        .map(|l| {
            let text = |v: &Value| v.as_str().unwrap_or("").to_owned();
            (
                text(&l["account"]),
                text(&l["debit"]),
                text(&l["credit"]),
                l["party"].clone(),
            )
        })
        .collect()
}

async fn assert_books_balance(app: &TestApp) {
    let trial = ok(
        app.get("/api/v1/ledger/trial-balance?as_of=2026-12-31")
            .await,
        200,
    )
    .await;
    assert_eq!(trial["balanced"], true, "{trial}");
}

fn line(account: &str, debit: &str, credit: &str, party: Value) -> (String, String, String, Value) {
    (
        account.to_owned(),
        debit.to_owned(),
        credit.to_owned(),
        party,
    )
}

on_both_backends! {
    async fn invoices_post_receivable_revenue_and_tax_per_rate(app: TestApp) {
        invoicing_with_taxes(&app).await;
        let acme = party(&app, "Acme Trading", "customer", json!({ "payment_terms_days": 30 })).await;

        let created = app.post(&invoicing("/invoices"), json!({
            "party": acme, "date": "2025-03-10", "reference": "PO-4711",
            "lines": [
                { "description": "Widgets", "quantity": "3", "unit_price": "100", "discount_percent": "10" },
                { "description": "Manual", "sku": "BOOK", "quantity": 2, "unit_price": "25.50" }
            ]
        })).await;
        let first = ok(created, 201).await;
        assert_eq!(first["number"], "INV-000001");
        assert_eq!(first["status"], "issued");
        assert_eq!(first["due_date"], "2025-04-09", "the party's 30 days");
        assert_eq!(first["lines"][0]["net_amount"], "270.00");
        assert_eq!(first["lines"][1]["tax_code"], "reduced");
        assert_eq!(first["taxes"], json!([
            { "rate": "7", "base": "51.00", "tax": "3.57" },
            { "rate": "19", "base": "270.00", "tax": "51.30" }
        ]));
        assert_eq!(first["totals"], json!({ "net": "321.00", "tax": "54.87", "total": "375.87" }));
        assert_eq!(entry_lines(&app, &first["entry"]).await, vec![
            line("1100", "375.87", "", json!(acme)),
            line("4000", "", "321.00", Value::Null),
            line("2200", "", "54.87", Value::Null),
        ]);
        let entry = ok(app.get(&format!("/api/v1/ledger/entries/{}", first["entry"])).await, 200).await;
        assert_eq!(entry["source"]["module"], "invoicing", "{entry}");
        assert_eq!(entry["source"]["document"], "invoice/INV-000001");
        let balance = ok(app.get(&format!("/api/v1/parties/{acme}/balance")).await, 200).await;
        assert_eq!(balance["receivable"], "375.87");

        // A draft has no number and posts nothing until issued; issuing twice is refused.
        let (entries_before, _) = app.row_counts().await;
        let draft = ok(app.post(&invoicing("/invoices"), json!({
            "party": acme, "date": "2025-03-11", "draft": true,
            "lines": [{ "description": "Setup", "quantity": "1", "unit_price": "50" }]
        })).await, 201).await;
        assert_eq!(draft["status"], "draft");
        assert_eq!(draft["number"], Value::Null);
        assert_eq!(app.row_counts().await.0, entries_before);
        let id = draft["id"].as_str().expect("an id");
        let issued = ok(app.post(&invoicing(&format!("/invoices/{id}/issue")), json!(null)).await, 200).await;
        assert_eq!(issued["number"], "INV-000002");
        assert_eq!(app.row_counts().await.0, entries_before + 1);
        let again = app.post(&invoicing(&format!("/invoices/{id}/issue")), json!(null)).await;
        assert_eq!(again.status, 409, "{}", again.text);

        // A party's tax code overrides every line: an export customer pays no VAT.
        let abroad = party(&app, "Overseas Ltd", "customer",
                           json!({ "custom_fields": { "invoicing_tax_code": "exempt" } })).await;
        let exempt = invoice(&app, abroad, "2025-03-12", "200").await;
        assert_eq!(exempt["totals"]["total"], "200.00");
        assert_eq!(entry_lines(&app, &exempt["entry"]).await.len(), 2, "no tax line at 0 %");

        // Bad input: a precise error and nothing written.
        let counts = app.row_counts().await;
        let bad = |body: Value| async { app.post(&invoicing("/invoices"), body).await };
        app.post_raw(&invoicing("/invoices"), "{\"party\":").await.assert_problem(422, &["body"]);
        bad(json!({ "party": acme, "lines": [], "colour": "red" })).await.assert_problem(422, &["body"]);
        bad(json!({ "party": acme, "lines": [] })).await.assert_problem(422, &["lines"]);
        bad(json!({ "party": acme, "currency": "EUR", "date": "2025-13-01",
                    "lines": [{ "description": "X", "quantity": "0", "unit_price": "-1", "tax_code": "luxury" }] }))
            .await
            .assert_problem(422, &["currency", "date", "lines[0].quantity", "lines[0].unit_price", "lines[0].tax_code"]);
        bad(json!({ "party": 999_999, "lines": [{ "description": "X", "quantity": "1", "unit_price": "1" }] }))
            .await
            .assert_problem(422, &["party"]);
        bad(json!({ "party": acme, "lines": [{ "description": "Free", "quantity": "1", "unit_price": "0" }] }))
            .await
            .assert_problem(422, &["lines"]);
        assert_eq!(app.row_counts().await, counts);

        // Settings are checked against the chart.
        let mut settings = ok(app.get(&invoicing("/settings")).await, 200).await;
        settings["accounts"]["revenue"] = json!("1020");
        settings["accounts"]["tax_payable"] = json!("9999");
        settings["product_tax_codes"] = json!({ "BOOK": "zero" });
        put(&app, "/settings", settings).await.assert_problem(
            422, &["accounts.revenue", "accounts.tax_payable", "product_tax_codes.BOOK"]);

        // Permissions: reading is not writing; without the plugin's use, nothing.
        let (_, reader) = app.user_with_permissions("reader", json!([
            { "resource": "plugins.invoicing", "action": "use" },
            { "resource": "plugins.invoicing.invoices", "action": "read" }
        ])).await;
        let listed = app.as_user(&reader, Method::GET, &invoicing(&format!("/invoices?party={acme}")), None).await;
        let listed = ok(listed, 200).await;
        assert_eq!(listed["items"].as_array().expect("items").len(), 2, "{listed}");
        assert_eq!(listed["items"][0]["number"], "INV-000002", "newest first");
        let refused = app.as_user(&reader, Method::POST, &invoicing("/invoices"),
            Some(json!({ "party": acme, "lines": [{ "description": "X", "quantity": "1", "unit_price": "1" }] }))).await;
        assert_eq!(refused.status, 403, "{}", refused.text);
        assert_books_balance(&app).await;
    }

    async fn batches_are_all_or_nothing_and_a_closed_period_gives_the_number_back(app: TestApp) {
        invoicing_with_taxes(&app).await;
        let acme = party(&app, "Acme Trading", "customer", json!({})).await;
        let one = |date: &str, quantity: &str| json!({ "party": acme, "date": date,
            "lines": [{ "description": "Support", "quantity": quantity, "unit_price": "10" }] });
        let counts = app.row_counts().await;
        let bad = app.post(&invoicing("/invoices/batch"),
            json!({ "invoices": [one("2025-04-01", "1"), one("2025-04-01", "-2"), one("2025-04-01", "3")] })).await;
        bad.assert_problem(422, &["invoices[1].lines[0].quantity"]);
        assert_eq!(app.row_counts().await, counts);
        app.post(&invoicing("/invoices/batch"), json!({ "invoices": [] })).await.assert_problem(422, &["invoices"]);

        // March is closed: the ledger refuses the posting, the invoice is not written and
        // its number goes back to the series.
        let march = app.period_id("2025-03").await;
        let closed = app.post(&format!("/api/v1/ledger/periods/{march}/close"), json!(null)).await;
        assert_eq!(closed.status, 200, "{}", closed.text);
        app.post(&invoicing("/invoices"), one("2025-03-15", "1")).await.assert_problem(422, &["date"]);
        // In a billing run the ledger refuses the one entry, which fails the run.
        app.post(&invoicing("/invoices/batch"),
            json!({ "invoices": [one("2025-04-01", "1"), one("2025-03-15", "1")] }))
            .await
            .assert_problem(422, &["invoices[1].date"]);
        assert_eq!(app.row_counts().await, counts);

        let batch = ok(app.post(&invoicing("/invoices/batch"),
            json!({ "invoices": [one("2025-04-01", "1"), one("2025-04-02", "2"), one("2025-04-03", "3")] })).await, 201).await;
        let numbers: Vec<&str> = batch["invoices"].as_array().expect("invoices").iter()
            .map(|i| i["number"].as_str().expect("a number")).collect();
        assert_eq!(numbers, ["INV-000001", "INV-000002", "INV-000003"], "no gap where the refused one was");
        assert_eq!(batch["invoices"][2]["total"], "35.70");
        assert_eq!(app.row_counts().await.0, counts.0 + 3);
        assert_books_balance(&app).await;
    }

    async fn payments_credit_notes_cancellation_aging_and_dunning(app: TestApp) {
        invoicing_with_taxes(&app).await;
        let acme = party(&app, "Acme Trading", "customer", json!({ "payment_terms_days": 30 })).await;
        let a = invoice(&app, acme, "2025-01-10", "100").await; // 119.00, due 2025-02-09
        let b = invoice(&app, acme, "2025-02-10", "200").await; // 238.00, due 2025-03-12
        let c = invoice(&app, acme, "2025-03-01", "50").await; // 59.50, due 2025-03-31
        let id = |doc: &Value| doc["id"].as_str().expect("an id").to_owned();

        // Without allocations a payment settles the oldest due first.
        let paid = ok(app.post(&invoicing("/payments"),
            json!({ "party": acme, "amount": "150.00", "date": "2025-04-01", "reference": "bank 1" })).await, 201).await;
        assert_eq!(paid["payment"]["id"], "PAY-000001");
        assert_eq!(paid["settled"][0]["status"], "paid");
        assert_eq!(paid["settled"][1]["open"], "207.00");
        assert_eq!(entry_lines(&app, &paid["payment"]["entry"]).await, vec![
            line("1020", "150.00", "", Value::Null),
            line("1100", "", "150.00", json!(acme)),
        ]);

        // Named allocations; what is left over stays on the payment as the customer's credit.
        let over = ok(app.post(&invoicing("/payments"), json!({
            "party": acme, "amount": "100.00", "date": "2025-04-02",
            "allocations": [{ "document": id(&c), "amount": "59.50" }]
        })).await, 201).await;
        assert_eq!(over["payment"]["unallocated"], "40.50");
        let too_much = app.post(&invoicing(&format!("/payments/{}/allocate", over["payment"]["id"].as_str().expect("id"))),
            json!({ "allocations": [{ "document": id(&b), "amount": "50.00" }] })).await;
        too_much.assert_problem(422, &["allocations"]);
        let later = ok(app.post(&invoicing(&format!("/payments/{}/allocate", over["payment"]["id"].as_str().expect("id"))),
            json!({ "allocations": [{ "document": id(&b), "amount": "40.50" }] })).await, 200).await;
        assert_eq!(later["payment"]["unallocated"], "0.00");
        assert_eq!(later["settled"][0]["open"], "166.50");
        let counts = app.row_counts().await;
        app.post(&invoicing("/payments"), json!({ "party": acme, "amount": "10.005",
            "allocations": [{ "document": id(&b), "amount": "500" }, { "document": "nope", "amount": "1" }] }))
            .await
            .assert_problem(422, &["amount", "allocations[0].amount", "allocations[1].document", "allocations"]);
        assert_eq!(app.row_counts().await, counts);

        // A paid invoice cannot be cancelled; an unpaid one is, by reversing its entry; a
        // cancelled one cannot be paid.
        let refused = app.post(&invoicing(&format!("/invoices/{}/cancel", id(&c))), json!({ "reason": "wrong" })).await;
        assert_eq!(refused.status, 409, "{}", refused.text);
        let d = invoice(&app, acme, "2025-04-05", "10").await;
        let cancelled = ok(app.post(&invoicing(&format!("/invoices/{}/cancel", id(&d))),
            json!({ "reason": "duplicate", "date": "2025-04-06" })).await, 200).await;
        assert_eq!(cancelled["status"], "cancelled");
        assert!(cancelled["reversal"].as_i64().is_some(), "{cancelled}");
        let pay_cancelled = app.post(&invoicing("/payments"), json!({
            "party": acme, "amount": "11.90", "allocations": [{ "document": id(&d), "amount": "11.90" }] })).await;
        assert_eq!(pay_cancelled.status, 409, "{}", pay_cancelled.text);
        assert!(pay_cancelled.text.contains("cancelled"), "{}", pay_cancelled.text);

        // A credit note for part of B is applied to it; crediting more than invoiced is refused.
        let note = ok(app.post(&invoicing(&format!("/invoices/{}/credit-note", id(&b))),
            json!({ "reason": "goodwill", "date": "2025-04-10", "lines": [{ "line": 1, "quantity": "0.5" }] })).await, 201).await;
        assert_eq!(note["kind"], "credit_note");
        assert_eq!(note["number"], "CN-000001");
        assert_eq!(note["totals"]["total"], "119.00");
        assert_eq!(note["status"], "paid", "applied in full");
        assert_eq!(entry_lines(&app, &note["entry"]).await, vec![
            line("1100", "", "119.00", json!(acme)),
            line("4000", "100.00", "", Value::Null),
            line("2200", "19.00", "", Value::Null),
        ]);
        let b_now = ok(app.get(&invoicing(&format!("/invoices/{}", id(&b)))).await, 200).await;
        assert_eq!(b_now["open"], "47.50");
        app.post(&invoicing(&format!("/invoices/{}/credit-note", id(&b))),
            json!({ "reason": "again", "lines": [{ "line": 1, "quantity": "0.6" }] }))
            .await
            .assert_problem(422, &["lines[0].quantity"]);

        // What a customer holds as credit is paid back on request: the rest of a payment, or a
        // credit note for an invoice paid already.
        let credit = ok(app.post(&invoicing("/payments"), json!({
            "party": acme, "amount": "50.00", "date": "2025-04-11", "allocations": [] })).await, 201).await;
        let credit_id = credit["payment"]["id"].as_str().expect("an id").to_owned();
        assert_eq!(credit["payment"]["unallocated"], "50.00");
        app.post(&invoicing(&format!("/payments/{credit_id}/refund")), json!({ "amount": "60.00" }))
            .await
            .assert_problem(422, &["amount"]);
        let refunded = ok(app.post(&invoicing(&format!("/payments/{credit_id}/refund")),
            json!({ "amount": "20.00", "date": "2025-04-12" })).await, 200).await;
        assert_eq!(refunded["unallocated"], "30.00");
        assert_eq!(entry_lines(&app, &refunded["refunds"][0]["entry"]).await, vec![
            line("1100", "20.00", "", json!(acme)),
            line("1020", "", "20.00", Value::Null),
        ]);
        let after_payment = ok(app.post(&invoicing(&format!("/invoices/{}/credit-note", id(&a))),
            json!({ "reason": "returned after payment", "date": "2025-04-12" })).await, 201).await;
        assert_eq!(after_payment["open"], "119.00", "A was paid: the credit stays with the customer");
        let note_id = id(&after_payment);
        let paid_back = ok(app.post(&invoicing(&format!("/invoices/{note_id}/refund")), json!(null)).await, 200).await;
        assert_eq!(paid_back["status"], "paid", "{paid_back}");
        let twice = app.post(&invoicing(&format!("/invoices/{note_id}/refund")), json!(null)).await;
        assert_eq!(twice.status, 409, "{}", twice.text);
        let not_a_note = app.post(&invoicing(&format!("/invoices/{}/refund", id(&b))), json!(null)).await;
        assert_eq!(not_a_note.status, 409, "{}", not_a_note.text);

        // Aging as of a date counts what was open then: at the end of January only A was.
        let january = ok(app.get(&invoicing("/aging?as_of=2025-01-31")).await, 200).await;
        assert_eq!(january["total"], "119.00", "{january}");
        assert_eq!(january["totals"][0], "119.00", "current: due 2025-02-09");
        let june = ok(app.get(&invoicing("/aging?as_of=2025-06-15")).await, 200).await;
        assert_eq!(june["total"], "47.50", "{june}");
        assert_eq!(june["totals"][4], "47.50", "B is 95 days past due");
        assert_eq!(june["parties"][0]["buckets"][4], "47.50");
        // In March: C not yet due, B 8 days and A 39 days late (paid only in April).
        let march = ok(app.get(&invoicing("/aging?as_of=2025-03-20")).await, 200).await;
        assert_eq!(march["totals"], json!(["59.50", "238.00", "119.00", "0.00", "0.00"]), "{march}");
        app.get(&invoicing("/aging?side=sideways")).await.assert_problem(422, &["side"]);

        // Dunning raises B to the level its days overdue reach, once.
        let run = ok(app.post(&invoicing("/dunning/run"), json!({ "as_of": "2025-04-20" })).await, 200).await;
        let notices = run["notices"].as_array().expect("notices");
        assert_eq!(notices.len(), 1, "{run}");
        assert_eq!(notices[0]["number"], "INV-000002");
        assert_eq!(notices[0]["level"], 3, "39 days: the final notice");
        let again = ok(app.post(&invoicing("/dunning/run"), json!({ "as_of": "2025-04-20" })).await, 200).await;
        assert_eq!(again["notices"], json!([]));
        assert_books_balance(&app).await;
        let balance = ok(app.get(&format!("/api/v1/parties/{acme}/balance")).await, 200).await;
        // B's 47.50 less the 30.00 of credit left on the last payment.
        assert_eq!(balance["receivable"], "17.50", "{balance}");
    }

    async fn vendor_bills_and_payments_mirror_receivables(app: TestApp) {
        invoicing_with_taxes(&app).await;
        let supplier = party(&app, "Office Landlord", "vendor", json!({ "payment_terms_days": 14 })).await;
        let bill = ok(app.post(&invoicing("/bills"), json!({
            "party": supplier, "date": "2025-05-01", "reference": "RENT-05",
            "lines": [{ "description": "Rent May", "quantity": "1", "unit_price": "1000", "account": "6100" }]
        })).await, 201).await;
        assert_eq!(bill["number"], "BILL-000001");
        assert_eq!(bill["due_date"], "2025-05-15");
        // The same vendor invoice entered twice would be paid twice.
        let again = json!({ "party": supplier, "date": "2025-05-02", "reference": "RENT-05",
            "lines": [{ "description": "Rent May", "quantity": "1", "unit_price": "1000", "account": "6100" }] });
        let twice = app.post(&invoicing("/bills"), again.clone()).await;
        assert_eq!(twice.status, 409, "{}", twice.text);
        assert!(twice.text.contains("BILL-000001"), "{}", twice.text);
        let mut another = again;
        another["allow_duplicate"] = json!(true);
        another["draft"] = json!(true);
        let confirmed = ok(app.post(&invoicing("/bills"), another).await, 201).await;
        assert_eq!(confirmed["status"], "draft");
        assert_eq!(entry_lines(&app, &bill["entry"]).await, vec![
            line("2000", "", "1190.00", json!(supplier)),
            line("6100", "1000.00", "", Value::Null),
            line("1400", "190.00", "", Value::Null),
        ]);
        let paid = ok(app.post(&invoicing("/vendor-payments"),
            json!({ "party": supplier, "amount": "500.00", "date": "2025-05-10" })).await, 201).await;
        assert_eq!(paid["payment"]["id"], "VPAY-000001");
        assert_eq!(entry_lines(&app, &paid["payment"]["entry"]).await, vec![
            line("1020", "", "500.00", Value::Null),
            line("2000", "500.00", "", json!(supplier)),
        ]);
        let aging = ok(app.get(&invoicing("/aging?side=payable&as_of=2025-06-20")).await, 200).await;
        assert_eq!(aging["totals"][2], "690.00", "36 days past due: {aging}");
        let balance = ok(app.get(&format!("/api/v1/parties/{supplier}/balance")).await, 200).await;
        assert_eq!(balance["payable"], "690.00", "{balance}");
        let customers_side = ok(app.get(&invoicing("/aging?as_of=2025-06-20")).await, 200).await;
        assert_eq!(customers_side["total"], "0.00");
        let listed = ok(app.get(&invoicing(&format!("/vendor-payments?party={supplier}"))).await, 200).await;
        assert_eq!(listed["items"][0]["unallocated"], "0.00");
        assert_books_balance(&app).await;
    }
}
