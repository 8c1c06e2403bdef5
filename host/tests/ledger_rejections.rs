//! Bad input gets a precise RFC 9457 problem naming the field, and writes nothing — on both
//! backends.

mod common;

use common::{Reply, TestApp, simple_entry};
use serde_json::{Value, json};

/// Posts `entry` and asserts it is refused with `status`, naming `fields`, with nothing written.
async fn refused(app: &TestApp, entry: Value, status: u16, fields: &[&str]) -> Reply {
    let before = app.row_counts().await;
    let reply = app.post("/api/v1/ledger/entries", entry).await;
    reply.assert_problem(status, fields);
    assert_eq!(
        app.row_counts().await,
        before,
        "a refused entry writes nothing"
    );
    reply
}

fn with_line(line: usize, value: Value) -> Value {
    let mut entry = simple_entry("2025-03-10", "1020", "4000", "10.00");
    entry["lines"][line] = value;
    entry
}

on_both_backends! {
    async fn malformed_json_is_a_400_saying_where(app: TestApp) {
        let before = app.row_counts().await;
        for body in ["{\"date\": ", "not json", "{\"date\": \"2025-03-10\",}", ""] {
            let reply = app.post_raw("/api/v1/ledger/entries", body).await;
            reply.assert_problem(400, &["body"]);
            assert!(reply.body["detail"].as_str().expect("detail").contains("malformed JSON"), "{}", reply.text);
        }
        assert_eq!(app.row_counts().await, before);
    }

    async fn json_of_the_wrong_shape_names_the_field(app: TestApp) {
        refused(&app, json!({ "date": "2025-03-10", "lines": "many" }), 422, &["lines"]).await;
        refused(&app, json!({ "lines": [] }), 422, &["date"]).await;
        // Amounts are strings so that no JSON parser turns them into floating point.
        refused(&app, with_line(0, json!({ "account": "1020", "debit": 10.5 })), 422, &["lines[0].debit"]).await;
        let reply = refused(&app, with_line(1, json!({ "account": "4000", "credit": "10.00", "colour": "red" })), 422, &["lines[1].colour"]).await;
        assert!(reply.text.contains("colour"), "{}", reply.text);
    }

    async fn unknown_and_inactive_accounts_are_refused(app: TestApp) {
        refused(&app, simple_entry("2025-03-10", "9999", "4000", "10.00"), 422, &["lines[0].account"]).await;
        refused(&app, simple_entry("2025-03-10", "1020", "not an account!", "10.00"), 422, &["lines[1].account"]).await;
        assert_eq!(app.patch("/api/v1/ledger/accounts/4100", json!({ "active": false })).await.status, 200);
        let reply = refused(&app, simple_entry("2025-03-10", "1020", "4100", "10.00"), 422, &["lines[1].account"]).await;
        assert!(reply.text.contains("inactive"), "{}", reply.text);
    }

    async fn zero_negative_and_double_sided_amounts_are_refused(app: TestApp) {
        refused(&app, simple_entry("2025-03-10", "1020", "4000", "0"), 422, &["lines[0].debit", "lines[1].credit"]).await;
        refused(&app, simple_entry("2025-03-10", "1020", "4000", "0.00"), 422, &["lines[0].debit", "lines[1].credit"]).await;
        refused(&app, simple_entry("2025-03-10", "1020", "4000", "-10.00"), 422, &["lines[0].debit", "lines[1].credit"]).await;
        refused(&app, with_line(0, json!({ "account": "1020", "debit": "10.00", "credit": "10.00" })), 422, &["lines[0].credit"]).await;
        refused(&app, with_line(0, json!({ "account": "1020" })), 422, &["lines[0].debit"]).await;
        refused(&app, simple_entry("2025-03-10", "1020", "4000", "1e3"), 422, &["lines[0].debit", "lines[1].credit"]).await;
    }

    async fn more_decimals_than_the_currency_allows_are_refused(app: TestApp) {
        let reply = refused(&app, simple_entry("2025-03-10", "1020", "4000", "10.001"), 422, &["lines[0].debit", "lines[1].credit"]).await;
        assert!(reply.text.contains("more decimal places than USD allows (2)"), "{}", reply.text);
        let yen = json!({ "date": "2025-03-10", "lines": [
            { "account": "6600", "debit": "1.5", "currency": "JPY", "rate": "0.0067" },
            { "account": "3900", "credit": "1.5", "currency": "JPY", "rate": "0.0067" }
        ]});
        refused(&app, yen, 422, &["lines[0].debit", "lines[1].credit"]).await;
    }

    async fn unknown_currencies_and_missing_rates_are_refused(app: TestApp) {
        refused(&app, with_line(0, json!({ "account": "1020", "debit": "10.00", "currency": "XYZ" })), 422, &["lines[0].currency"]).await;
        refused(&app, with_line(0, json!({ "account": "1020", "debit": "10.00", "currency": "eur", "rate": "1.1" })), 422, &["lines[0].currency"]).await;
        refused(&app, with_line(0, json!({ "account": "1020", "debit": "10.00", "currency": "EUR" })), 422, &["lines[0].rate"]).await;
        refused(&app, with_line(0, json!({ "account": "1020", "debit": "10.00", "rate": "1.2" })), 422, &["lines[0].rate"]).await;
        refused(&app, with_line(0, json!({ "account": "1020", "debit": "10.00", "currency": "EUR", "rate": "-1" })), 422, &["lines[0].rate"]).await;
        // An account restricted to EUR takes nothing else.
        let eur_bank = json!({ "code": "1025", "name": "Bank - EUR", "type": "asset", "currency": "EUR" });
        assert_eq!(app.post("/api/v1/ledger/accounts", eur_bank).await.status, 201);
        refused(&app, simple_entry("2025-03-10", "1025", "4000", "10.00"), 422, &["lines[0].currency"]).await;
    }

    async fn an_unbalanced_entry_is_refused_stating_the_difference(app: TestApp) {
        let entry = json!({ "date": "2025-03-10", "lines": [
            { "account": "1020", "debit": "100.00" },
            { "account": "4000", "credit": "99.99" }
        ]});
        let reply = refused(&app, entry, 422, &["lines"]).await;
        assert!(reply.text.contains("difference 0.01"), "{}", reply.text);

        // Balanced in base but not in EUR.
        let entry = json!({ "date": "2025-03-10", "lines": [
            { "account": "1020", "debit": "110.00" },
            { "account": "4000", "credit": "100.00", "currency": "EUR", "rate": "1.1" }
        ]});
        let reply = refused(&app, entry, 422, &["lines"]).await;
        assert!(reply.text.contains("does not balance in EUR"), "{}", reply.text);

        refused(&app, json!({ "date": "2025-03-10", "lines": [{ "account": "1020", "debit": "1.00" }] }), 422, &["lines"]).await;
    }

    async fn dates_outside_open_periods_are_refused(app: TestApp) {
        refused(&app, simple_entry("2025-02-30", "1020", "4000", "1.00"), 422, &["date"]).await;
        refused(&app, simple_entry("10/03/2025", "1020", "4000", "1.00"), 422, &["date"]).await;
        let reply = refused(&app, simple_entry("2019-03-10", "1020", "4000", "1.00"), 422, &["date"]).await;
        assert!(reply.text.contains("open its fiscal year"), "{}", reply.text);

        let march = app.period_id("2025-03").await;
        assert_eq!(app.post(&format!("/api/v1/ledger/periods/{march}/close"), json!(null)).await.status, 200);
        let reply = refused(&app, simple_entry("2025-03-31", "1020", "4000", "1.00"), 422, &["date"]).await;
        assert!(reply.text.contains("period 2025-03 is closed"), "{}", reply.text);
        // A reversal dated in the closed period is refused the same way.
        let id = app.post_simple("2025-04-01", "1020", "4000", "1.00").await;
        let reply = app.post(&format!("/api/v1/ledger/entries/{id}/reverse"), json!({ "date": "2025-03-31" })).await;
        reply.assert_problem(422, &["date"]);
    }

    async fn unknown_parties_are_refused(app: TestApp) {
        refused(&app, with_line(0, json!({ "account": "1100", "debit": "10.00", "party": 424242 })), 422, &["lines[0].party"]).await;
        refused(&app, with_line(0, json!({ "account": "1100", "debit": "10.00", "party": -1 })), 422, &["lines[0].party"]).await;
    }

    async fn an_empty_batch_is_refused(app: TestApp) {
        let reply = app.post("/api/v1/ledger/entries:batch", json!({ "entries": [] })).await;
        reply.assert_problem(422, &["entries"]);
        app.post("/api/v1/ledger/entries:batch", json!({})).await.assert_problem(422, &["entries"]);
    }

    async fn a_batch_with_one_bad_entry_writes_nothing_and_names_it(app: TestApp) {
        let before = app.row_counts().await;
        let batch = json!({ "entries": [
            simple_entry("2025-03-10", "1020", "4000", "10.00"),
            simple_entry("2025-03-11", "1020", "4000", "10.00"),
            simple_entry("2025-03-12", "1020", "9999", "10.00"),
            simple_entry("2025-03-13", "1020", "4000", "10.00"),
        ]});
        let reply = app.post("/api/v1/ledger/entries:batch", batch).await;
        reply.assert_problem(422, &["entries[2].lines[1].account"]);
        assert_eq!(app.row_counts().await, before);

        // Invalid on its face (unbalanced) is named the same way.
        let mut unbalanced = simple_entry("2025-03-10", "1020", "4000", "10.00");
        unbalanced["lines"][1]["credit"] = json!("9.00");
        let batch = json!({ "entries": [simple_entry("2025-03-10", "1020", "4000", "1.00"), unbalanced] });
        app.post("/api/v1/ledger/entries:batch", batch).await.assert_problem(422, &["entries[1].lines"]);
        assert_eq!(app.row_counts().await, before);

        // Two entries claiming one key.
        let mut first = simple_entry("2025-03-10", "1020", "4000", "1.00");
        first["idempotency_key"] = json!("dup");
        let mut second = simple_entry("2025-03-11", "1020", "4000", "2.00");
        second["idempotency_key"] = json!("dup");
        app.post("/api/v1/ledger/entries:batch", json!({ "entries": [first, second] })).await.assert_problem(422, &["entries[1].idempotency_key"]);
        assert_eq!(app.row_counts().await, before);
    }

    async fn a_batch_whose_sums_overflow_a_balance_writes_nothing(app: TestApp) {
        // Each amount is within bounds, but 10,000 of the largest on one account add up to more
        // than a balance holds. Large enough for SQLite's direct write path, where the rows are
        // built while earlier ones are written: the sums are checked before any row goes.
        let before = app.row_counts().await;
        let audit_before = app.get("/api/v1/audit/verification").await;
        // `count` entries of 1,000 lines, each line of the largest amount, dated from the 1st.
        let largest_entries = |count: usize, month: &str, memo: &str| -> Vec<Value> {
            let largest = "10000000000000.00";
            (0..count)
                .map(|n| {
                    let debits = (0..500).map(|_| json!({ "account": "1020", "debit": largest }));
                    let credits = (0..500).map(|_| json!({ "account": "4000", "credit": largest }));
                    json!({ "date": format!("{month}-{:02}", 1 + n), "memo": memo, "lines": debits.chain(credits).collect::<Vec<_>>() })
                })
                .collect()
        };
        let entries = largest_entries(20, "2025-03", "too much");
        let reply = app.post("/api/v1/ledger/entries:batch", json!({ "entries": entries })).await;
        reply.assert_problem(422, &["lines"]);
        assert!(reply.text.contains("more than a balance can hold"), "{}", reply.text);
        assert_eq!(app.row_counts().await, before, "nothing of the batch is written");
        let audit_after = app.get("/api/v1/audit/verification").await;
        assert_eq!(audit_after.body["intact"], true, "{}", audit_after.text);
        assert_eq!(audit_after.body["records"], audit_before.body["records"], "no audit record either");

        // The same entries without the overflow post whole.
        let fine: Vec<Value> = (0..600)
            .map(|n| simple_entry(&format!("2025-03-{:02}", 1 + n % 28), "1020", "4000", "1.00"))
            .collect();
        let posted = app.post("/api/v1/ledger/entries:batch", json!({ "entries": fine })).await;
        assert_eq!(posted.status, 201, "{}", posted.text);
        assert_eq!(app.row_counts().await, (before.0 + 600, before.1 + 1200));

        // Amounts that add up to more than a balance holds in total, but not on any one
        // account: the sums are checked exactly, and the batch posts whole.
        let large = largest_entries(10, "2025-04", "large");
        let posted = app.post("/api/v1/ledger/entries:batch", json!({ "entries": large })).await;
        assert_eq!(posted.status, 201, "{}", posted.text);
        assert_eq!(app.row_counts().await, (before.0 + 610, before.1 + 11_200));
        let balance = app.get("/api/v1/ledger/trial-balance?as_of=2025-04-30").await;
        assert_eq!(balance.body["balanced"], true, "{}", balance.text);
        assert_eq!(balance.body["total_debit"], "50000000000000600.00", "{}", balance.text);
    }

    async fn a_bad_idempotency_key_header_is_refused(app: TestApp) {
        let reply = app.post_keyed("/api/v1/ledger/entries", &"k".repeat(300), simple_entry("2025-03-10", "1020", "4000", "1.00")).await;
        reply.assert_problem(400, &["Idempotency-Key"]);
    }

    async fn bad_report_parameters_are_refused(app: TestApp) {
        app.get("/api/v1/ledger/trial-balance?as_of=yesterday").await.assert_problem(422, &["as_of"]);
        app.get("/api/v1/ledger/trial-balance?format=xml").await.assert_problem(422, &["format"]);
        app.get("/api/v1/ledger/income-statement?from=2025-02-01").await.assert_problem(400, &["query"]);
        app.get("/api/v1/ledger/income-statement?from=2025-03-01&to=2025-02-01").await.assert_problem(422, &["from"]);
        app.get("/api/v1/ledger/accounts/9999/lines").await.assert_problem(404, &[]);
        app.get("/api/v1/ledger/entries/424242").await.assert_problem(404, &[]);
        app.post("/api/v1/ledger/entries/424242/reverse", json!({})).await.assert_problem(404, &[]);
        app.get("/api/v1/ledger/entries/abc").await;
    }

    async fn bad_accounts_are_refused(app: TestApp) {
        app.post("/api/v1/ledger/accounts", json!({ "code": "1020", "name": "Again", "type": "asset" })).await.assert_problem(409, &[]);
        app.post("/api/v1/ledger/accounts", json!({ "code": "", "name": " ", "type": "asset", "currency": "ABC" })).await
            .assert_problem(422, &["code", "name", "currency"]);
        app.post("/api/v1/ledger/accounts", json!({ "code": "1990", "name": "X", "type": "assets" })).await.assert_problem(422, &["type"]);
        app.post("/api/v1/ledger/accounts", json!({ "code": "1990", "name": "X", "type": "asset", "parent": "4000" })).await.assert_problem(422, &["parent"]);
        app.post("/api/v1/ledger/accounts", json!({ "code": "1990", "name": "X", "type": "asset", "parent": "0000" })).await.assert_problem(422, &["parent"]);
    }

    async fn an_unknown_company_is_refused(app: TestApp) {
        let reply = app.request(axum::http::Method::GET, "/api/v1/ledger/accounts", &[("keel-company", "nope")], None).await;
        reply.assert_problem(404, &[]);
    }
}
