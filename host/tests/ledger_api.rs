//! The ledger through its HTTP API: what works, on both backends.

mod common;

use common::simple_entry;
use serde_json::{Value, json};

/// A row of a period balance table: account, currency, the period's first day, whether it
/// holds closing entries, and the four sums.
type BalanceRow = (i64, String, String, i64, i64, i64, i64, i64);

on_both_backends! {
    async fn a_balanced_entry_posts_and_reads_back(app: TestApp) {
        let reply = app
            .post(
                "/api/v1/ledger/entries",
                json!({
                    "date": "2025-03-05",
                    "memo": "Office chairs",
                    "source": { "module": "procurement", "document": "PO-7" },
                    "lines": [
                        { "account": "1520", "debit": "1200.00", "dimensions": { "department": "ops" } },
                        { "account": "1400", "debit": "240" },
                        { "account": "2000", "credit": "1440.00", "memo": "Vendor" }
                    ]
                }),
            )
            .await;
        assert_eq!(reply.status, 201, "{}", reply.text);
        let id = reply.body["id"].as_i64().expect("id");
        assert_eq!(reply.body["lines"][0]["debit"], "1200.00");
        assert_eq!(reply.body["lines"][2]["credit"], "1440.00");
        assert_eq!(reply.body["lines"][0]["dimensions"]["department"], "ops");

        let fetched = app.get(&format!("/api/v1/ledger/entries/{id}")).await;
        assert_eq!(fetched.status, 200);
        assert_eq!(fetched.body, reply.body, "a posted entry reads back exactly as acknowledged");
        assert_eq!(fetched.body["source"]["document"], "PO-7");
    }

    async fn the_trial_balance_balances_and_rolls_forward_by_date(app: TestApp) {
        app.post_simple("2025-01-10", "1020", "3000", "5000.00").await;
        app.post_simple("2025-02-14", "1100", "4000", "1200.00").await;
        app.post_simple("2025-03-01", "6100", "1020", "800.00").await;

        let all = app.get("/api/v1/ledger/trial-balance?as_of=2025-12-31").await;
        assert_eq!(all.status, 200);
        // Net balances: bank 4,200 + receivable 1,200 + rent 800 against equity 5,000 + sales 1,200.
        assert_eq!(all.body["total_debit"], "6200.00");
        assert_eq!(all.body["total_credit"], "6200.00");
        assert_eq!(all.body["balanced"], true);
        let bank = all.body["rows"].as_array().expect("rows").iter().find(|r| r["account"] == "1020").expect("bank");
        assert_eq!(bank["debit"], "4200.00");

        // As of mid-February only the first two entries count.
        let february = app.get("/api/v1/ledger/trial-balance?as_of=2025-02-20").await;
        assert_eq!(february.body["total_credit"], "6200.00");
        let bank = february.body["rows"].as_array().expect("rows").iter().find(|r| r["account"] == "1020").expect("bank");
        assert_eq!(bank["debit"], "5000.00");

        // Before anything was posted it is empty.
        let before = app.get("/api/v1/ledger/trial-balance?as_of=2024-12-31").await;
        assert_eq!(before.body["rows"], json!([]));
        assert_eq!(before.body["total_debit"], "0.00");

        let csv = app.get("/api/v1/ledger/trial-balance?as_of=2025-12-31&format=csv").await;
        assert!(csv.content_type.starts_with("text/csv"));
        assert!(csv.text.starts_with("account,name,type,debit,credit\n"));
        assert!(csv.text.contains("1020,Bank - operating account,asset,4200.00,"));
        assert!(csv.text.trim_end().ends_with(",Total,,6200.00,6200.00"));
    }

    async fn reports_as_of_any_day_add_up_the_entries_dated_up_to_it(app: TestApp) {
        // Entries on days all over the year, in one batch large enough for SQLite's direct
        // write path; every report date then reads some mix of months, ten-day periods and days.
        let debits = ["1020", "1100", "6100"];
        let credits = ["4000", "3000", "2000"];
        let posted: Vec<(chrono::NaiveDate, &str, &str, i64)> = (0..600_i64)
            .map(|n| {
                let day = chrono::NaiveDate::from_ymd_opt(2025, 1, 1).expect("a date") + chrono::Days::new((n * 37 % 365) as u64);
                let cents = 100 + n * 13 % 50_000;
                (day, debits[(n % 3) as usize], credits[(n / 3 % 3) as usize], cents)
            })
            .collect();
        let entries: Vec<Value> = posted
            .iter()
            .map(|(day, debit, credit, cents)| simple_entry(&day.to_string(), debit, credit, &format!("{}.{:02}", cents / 100, cents % 100)))
            .collect();
        let reply = app.post("/api/v1/ledger/entries:batch", json!({ "entries": entries })).await;
        assert_eq!(reply.status, 201, "{}", reply.text);

        let money = |cents: i64| format!("{}{}.{:02}", if cents < 0 { "-" } else { "" }, cents.abs() / 100, cents.abs() % 100);
        let dates = [
            "2025-01-01", "2025-01-09", "2025-01-10", "2025-01-11", "2025-01-20", "2025-01-21", "2025-01-31",
            "2025-02-01", "2025-02-15", "2025-02-28", "2025-03-10", "2025-04-19", "2025-06-15", "2025-06-30",
            "2025-07-21", "2025-08-27", "2025-09-05", "2025-10-31", "2025-11-11", "2025-12-20", "2025-12-29",
            "2025-12-30", "2025-12-31",
        ];
        for as_of in dates {
            let day: chrono::NaiveDate = as_of.parse().expect("a date");
            let balance = app.get(&format!("/api/v1/ledger/trial-balance?as_of={as_of}")).await;
            assert_eq!(balance.status, 200, "{}", balance.text);
            for account in debits.iter().chain(&credits) {
                let net: i64 = posted
                    .iter()
                    .filter(|(posted_on, ..)| *posted_on <= day)
                    .map(|(_, debit, credit, cents)| if debit == account { *cents } else if credit == account { -cents } else { 0 })
                    .sum();
                let row = balance.body["rows"].as_array().expect("rows").iter().find(|r| r["account"] == *account);
                let shown = row.map_or(0, |r| {
                    let side = |key: &str| r[key].as_str().map_or(0, |a| a.replace('.', "").parse::<i64>().expect("an amount"));
                    side("debit") - side("credit")
                });
                assert_eq!(shown, net, "account {account} as of {as_of}");
            }
        }
        for (from, to) in [("2025-01-05", "2025-01-25"), ("2025-02-11", "2025-03-20"), ("2025-03-01", "2025-05-31"), ("2025-06-15", "2025-06-15"), ("2025-04-21", "2025-11-10")] {
            let (lo, hi): (chrono::NaiveDate, chrono::NaiveDate) = (from.parse().expect("a date"), to.parse().expect("a date"));
            let in_range = posted.iter().filter(|(day, ..)| (lo..=hi).contains(day));
            let income: i64 = in_range.clone().filter(|(_, _, credit, _)| *credit == "4000").map(|(.., cents)| cents).sum();
            let expenses: i64 = in_range.filter(|(_, debit, ..)| *debit == "6100").map(|(.., cents)| cents).sum();
            let statement = app.get(&format!("/api/v1/ledger/income-statement?from={from}&to={to}")).await;
            assert_eq!(statement.body["net_income"], money(income - expenses), "{from} to {to}: {}", statement.text);
        }
    }

    async fn balances_kept_before_quarters_and_five_day_periods_are_carried_into_them(app: TestApp) {
        // The writer keeps every period table; migration 0009 builds the quarterly and
        // five-day ones from the monthly and daily balances of an older database. Rebuilt
        // from the same balances, they must hold exactly what the writer keeps.
        let entries: Vec<Value> = (0..300_i64)
            .map(|n| {
                let day = chrono::NaiveDate::from_ymd_opt(2025, 1, 1).expect("a date") + chrono::Days::new((n * 37 % 365) as u64);
                let (debit, credit) = [("1020", "4000"), ("6100", "1020"), ("1100", "3000")][(n % 3) as usize];
                simple_entry(&day.to_string(), debit, credit, &format!("{}.{:02}", 10 + n, n % 100))
            })
            .collect();
        let reply = app.post("/api/v1/ledger/entries:batch", json!({ "entries": entries })).await;
        assert_eq!(reply.status, 201, "{}", reply.text);

        let tables = [("ledger_balances_quarterly", "quarter"), ("ledger_balances_five_day", "start_day")];
        let read = || async {
            let mut rows = Vec::new();
            for (table, column) in tables {
                let sql = format!(
                    "SELECT account_id, currency, CAST({column} AS TEXT), CAST(CASE WHEN closing THEN 1 ELSE 0 END AS BIGINT), \
                     debit_minor, credit_minor, base_debit_minor, base_credit_minor FROM {table} ORDER BY 1, 2, 3, 4"
                );
                let table_rows: Vec<BalanceRow> =
                    keel_host::on_pool!(&app.state.db, pool => sqlx::query_as(&sql).fetch_all(pool).await).expect("the balances");
                rows.push(table_rows);
            }
            rows
        };
        let kept = read().await;
        // Three accounts a side, four quarters; five-day periods all over the year.
        assert_eq!(kept[0].len(), 5 * 4, "{:?}", kept[0]);
        assert!(kept[1].len() > 200, "{} five-day rows", kept[1].len());
        assert!(kept[1].iter().all(|row| ["01", "06", "11", "16", "21", "26"].contains(&&row.2[8..])));

        let migration = match app.state.db.backend() {
            keel_host::db::Backend::Sqlite => include_str!("../../migrations/sqlite/0009_ledger_quarter_and_five_day_balances.sql"),
            keel_host::db::Backend::Postgres => include_str!("../../migrations/postgres/0009_ledger_quarter_and_five_day_balances.sql"),
        };
        let mut tx = app.state.db.begin_write().await.expect("a write");
        keel_host::on_conn!(&mut tx, conn => {
            sqlx::raw_sql("DROP TABLE ledger_balances_quarterly; DROP TABLE ledger_balances_five_day")
                .execute(&mut *conn)
                .await
                .expect("dropped");
            sqlx::raw_sql(migration).execute(&mut *conn).await.expect("migrated again");
        });
        tx.commit().await.expect("committed");
        assert_eq!(read().await, kept);
    }

    async fn balance_sheet_and_income_statement_agree(app: TestApp) {
        app.post_simple("2025-01-10", "1020", "3000", "10000.00").await;
        app.post_simple("2025-02-14", "1100", "4000", "3000.00").await;
        app.post_simple("2025-02-20", "6100", "1020", "1000.00").await;
        app.post_simple("2025-02-21", "6110", "2000", "250.50").await;

        let statement = app.get("/api/v1/ledger/income-statement?from=2025-01-01&to=2025-12-31").await;
        assert_eq!(statement.status, 200, "{}", statement.text);
        assert_eq!(statement.body["income"]["total"], "3000.00");
        assert_eq!(statement.body["expenses"]["total"], "1250.50");
        assert_eq!(statement.body["net_income"], "1749.50");
        // Rent and utilities roll up into operating expenses.
        let expenses = statement.body["expenses"]["lines"].as_array().expect("lines");
        let operating = expenses.iter().find(|l| l["account"] == "6000").expect("parent account");
        assert_eq!(operating["total"], "1250.50");
        assert_eq!(operating["amount"], "0.00");
        assert!(expenses.iter().any(|l| l["account"] == "6110" && l["level"] == 1));

        let sheet = app.get("/api/v1/ledger/balance-sheet?as_of=2025-12-31").await;
        assert_eq!(sheet.status, 200);
        assert_eq!(sheet.body["assets"]["total"], "12000.00");
        assert_eq!(sheet.body["liabilities"]["total"], "250.50");
        assert_eq!(sheet.body["equity"]["total"], "10000.00");
        assert_eq!(sheet.body["current_earnings"], "1749.50");
        assert_eq!(sheet.body["total_liabilities_and_equity"], "12000.00");
        assert_eq!(sheet.body["balanced"], true);

        let march = app.get("/api/v1/ledger/income-statement?from=2025-03-01&to=2025-03-31").await;
        assert_eq!(march.body["net_income"], "0.00");
        let partial = app.get("/api/v1/ledger/income-statement?from=2025-02-15&to=2025-02-20").await;
        assert_eq!(partial.body["expenses"]["total"], "1000.00");
        assert_eq!(partial.body["income"]["total"], "0.00");

        let csv = app.get("/api/v1/ledger/balance-sheet?as_of=2025-12-31&format=csv").await;
        assert!(csv.text.contains("Total liabilities and equity"), "{}", csv.text);
    }

    async fn reports_sum_whole_months_and_partial_days_alike(app: TestApp) {
        // Entries on the first and last day of months and in between, so every as-of date
        // exercises whole-month sums plus the daily remainder.
        let dates = ["2025-01-01", "2025-01-31", "2025-02-01", "2025-02-15", "2025-02-28", "2025-03-31", "2025-12-31"];
        for (i, date) in dates.iter().enumerate() {
            app.post_simple(date, "1020", "4000", &format!("{}.00", i + 1)).await;
        }
        for (as_of, expected) in [
            ("2024-12-31", "0.00"),
            ("2025-01-01", "1.00"),
            ("2025-01-30", "1.00"),
            ("2025-01-31", "3.00"),
            ("2025-02-14", "6.00"),
            ("2025-02-15", "10.00"),
            ("2025-02-28", "15.00"),
            ("2025-03-30", "15.00"),
            ("2025-03-31", "21.00"),
            ("2025-12-30", "21.00"),
            ("2025-12-31", "28.00"),
            ("2030-06-15", "28.00"),
        ] {
            let reply = app.get(&format!("/api/v1/ledger/trial-balance?as_of={as_of}")).await;
            assert_eq!(reply.body["total_debit"], expected, "as of {as_of}");
        }
        for (from, to, expected) in [
            ("2025-01-01", "2025-01-31", "3.00"),
            ("2025-01-02", "2025-02-28", "14.00"),
            ("2025-02-02", "2025-02-27", "4.00"),
            ("2025-01-31", "2025-03-31", "20.00"),
            ("2025-04-01", "2025-12-30", "0.00"),
        ] {
            let reply = app.get(&format!("/api/v1/ledger/income-statement?from={from}&to={to}")).await;
            assert_eq!(reply.body["income"]["total"], expected, "{from} to {to}");
        }
    }

    async fn the_account_ledger_pages_with_a_running_balance(app: TestApp) {
        for day in 1..=7 {
            app.post_simple(&format!("2025-04-{day:02}"), "1020", "4000", "10.00").await;
        }
        app.post_simple("2025-04-03", "6900", "1020", "1.50").await;

        let first = app.get("/api/v1/ledger/accounts/1020/lines?from=2025-04-02&to=2025-04-30&limit=3").await;
        assert_eq!(first.status, 200, "{}", first.text);
        assert_eq!(first.body["opening_balance"], "10.00");
        let balances: Vec<&str> = first.body["lines"].as_array().expect("lines").iter().map(|l| l["balance"].as_str().expect("balance")).collect();
        assert_eq!(balances, ["20.00", "30.00", "28.50"]);
        let next = first.body["next"].as_str().expect("a next cursor");

        let second = app.get(&format!("/api/v1/ledger/accounts/1020/lines?from=2025-04-02&to=2025-04-30&limit=3&after={next}")).await;
        assert_eq!(second.body["opening_balance"], "28.50");
        let balances: Vec<&str> = second.body["lines"].as_array().expect("lines").iter().map(|l| l["balance"].as_str().expect("balance")).collect();
        assert_eq!(balances, ["38.50", "48.50", "58.50"]);

        let last = app.get(&format!("/api/v1/ledger/accounts/1020/lines?from=2025-04-02&to=2025-04-30&limit=3&after={}", second.body["next"].as_str().expect("next"))).await;
        assert_eq!(last.body["lines"].as_array().expect("lines").len(), 1);
        assert_eq!(last.body["lines"][0]["balance"], "68.50");
        assert!(last.body.get("next").is_none(), "the last page has no cursor");

        // Drill-down: each line names its entry, which reads back.
        let entry = first.body["lines"][2]["entry"].as_i64().expect("entry id");
        let fetched = app.get(&format!("/api/v1/ledger/entries/{entry}")).await;
        assert_eq!(fetched.body["lines"][0]["account"], "6900");

        let csv = app.get("/api/v1/ledger/accounts/1020/lines?from=2025-04-02&to=2025-04-30&limit=3&format=csv").await;
        assert!(csv.content_type.starts_with("text/csv"), "{}", csv.content_type);
        assert!(csv.text.starts_with("date,entry,line,memo,source,debit,credit,balance\n"), "{}", csv.text);
        assert!(csv.text.contains(",1.50,28.50"), "{}", csv.text);

        let bad_cursor = app.get("/api/v1/ledger/accounts/1020/lines?after=not-a-cursor").await;
        bad_cursor.assert_problem(422, &["after"]);
    }

    async fn a_reversal_cancels_the_entry_once_and_links_both_ways(app: TestApp) {
        let id = app.post_simple("2025-05-02", "1100", "4000", "99.99").await;
        let reversal = app.post(&format!("/api/v1/ledger/entries/{id}/reverse"), json!({ "date": "2025-05-03" })).await;
        assert_eq!(reversal.status, 201, "{}", reversal.text);
        assert_eq!(reversal.body["reverses"], id);
        assert_eq!(reversal.body["kind"], "reversal");
        assert_eq!(reversal.body["lines"][0]["credit"], "99.99");
        assert_eq!(reversal.body["date"], "2025-05-03");

        let original = app.get(&format!("/api/v1/ledger/entries/{id}")).await;
        assert_eq!(original.body["reversed_by"], reversal.body["id"]);

        let again = app.post(&format!("/api/v1/ledger/entries/{id}/reverse"), json!({})).await;
        again.assert_problem(409, &[]);
        let of_reversal = app.post(&format!("/api/v1/ledger/entries/{}/reverse", reversal.body["id"]), json!({})).await;
        of_reversal.assert_problem(409, &[]);

        let tb = app.get("/api/v1/ledger/trial-balance?as_of=2025-12-31").await;
        assert_eq!(tb.body["rows"], json!([]), "a reversed entry leaves no balance");
    }

    async fn a_replayed_request_returns_the_first_response_and_posts_nothing(app: TestApp) {
        let entry = simple_entry("2025-06-01", "1020", "4100", "50.00");
        let first = app.post_keyed("/api/v1/ledger/entries", "pay-2025-06-01", entry.clone()).await;
        assert_eq!(first.status, 201);
        let counts = app.row_counts().await;
        let replay = app.post_keyed("/api/v1/ledger/entries", "pay-2025-06-01", entry).await;
        assert_eq!(replay.status, 201);
        assert_eq!(replay.body, first.body);
        assert_eq!(app.row_counts().await, counts, "the replay wrote nothing");

        let different = app.post_keyed("/api/v1/ledger/entries", "pay-2025-06-01", simple_entry("2025-06-01", "1020", "4100", "51.00")).await;
        different.assert_problem(409, &[]);
        assert_eq!(app.row_counts().await, counts);

        // Other writes are exactly-once too.
        let account = json!({ "code": "1040", "name": "Petty cash", "type": "asset", "parent": "1000" });
        let created = app.post_keyed("/api/v1/ledger/accounts", "acct-1040", account.clone()).await;
        assert_eq!(created.status, 201, "{}", created.text);
        let replayed = app.post_keyed("/api/v1/ledger/accounts", "acct-1040", account).await;
        assert_eq!(replayed.status, 201);
        assert_eq!(replayed.body, created.body);
    }

    async fn concurrent_postings_with_the_same_key_post_once(app: TestApp) {
        let entry = simple_entry("2025-06-02", "1020", "4100", "75.00");
        let replies = futures::future::join_all(
            (0..16).map(|_| app.post_keyed("/api/v1/ledger/entries", "same-key", entry.clone())),
        )
        .await;
        let ids: std::collections::HashSet<i64> = replies
            .iter()
            .map(|r| {
                assert_eq!(r.status, 201, "{}", r.text);
                r.body["id"].as_i64().expect("id")
            })
            .collect();
        assert_eq!(ids.len(), 1, "every replay got the first entry");
        assert_eq!(app.row_counts().await, (1, 2));
    }

    async fn a_batch_posts_all_entries_and_entry_keys_make_each_exactly_once(app: TestApp) {
        let mut first = simple_entry("2025-07-01", "1100", "4000", "100.00");
        first["idempotency_key"] = json!("inv-1");
        let second = simple_entry("2025-07-02", "1020", "1100", "100.00");
        let batch = app.post("/api/v1/ledger/entries:batch", json!({ "entries": [first.clone(), second] })).await;
        assert_eq!(batch.status, 201, "{}", batch.text);
        let posted = batch.body["entries"].as_array().expect("entries");
        assert_eq!(posted.len(), 2);
        assert_eq!(posted[0]["idempotency_key"], "inv-1");

        // The keyed entry in a later batch is recognised, not posted twice.
        let third = simple_entry("2025-07-03", "6200", "1020", "5.00");
        let again = app.post("/api/v1/ledger/entries:batch", json!({ "entries": [first, third] })).await;
        assert_eq!(again.status, 201, "{}", again.text);
        assert_eq!(again.body["entries"][0]["id"], posted[0]["id"]);
        assert_eq!(app.row_counts().await, (3, 6));

        let mut changed = simple_entry("2025-07-01", "1100", "4000", "101.00");
        changed["idempotency_key"] = json!("inv-1");
        let conflict = app.post("/api/v1/ledger/entries:batch", json!({ "entries": [changed] })).await;
        conflict.assert_problem(409, &[]);
        assert_eq!(app.row_counts().await, (3, 6));
    }

    async fn a_large_batch_is_written_whole_with_its_lines_balances_and_audit_records(app: TestApp) {
        // Large enough for SQLite's direct write path (a thousand rows and more), for the
        // entries and for their audit records.
        let entries: Vec<Value> = (0..1100)
            .map(|n| {
                let mut entry = simple_entry(&format!("2025-09-{:02}", 1 + n % 28), "1020", "4000", &format!("{}.{:02}", 10 + n, n % 100));
                entry["lines"][0]["dimensions"] = json!({ "project": format!("p{}", n % 3) });
                entry["lines"][1]["memo"] = json!(format!("sale {n}"));
                if n % 50 == 0 {
                    entry["idempotency_key"] = json!(format!("large-{n}"));
                }
                entry
            })
            .collect();
        let expected_cents: i64 = (0..1100).map(|n| (10 + n) * 100 + n % 100).sum();
        let expected = format!("{}.{:02}", expected_cents / 100, expected_cents % 100);
        let batch = app.post("/api/v1/ledger/entries:batch", json!({ "entries": entries })).await;
        assert_eq!(batch.status, 201, "{}", batch.text);
        let ids: Vec<i64> = batch.body["entries"].as_array().expect("entries").iter().map(|e| e["id"].as_i64().expect("id")).collect();
        assert_eq!(ids.len(), 1100);
        assert_eq!(app.row_counts().await, (1100, 2200));

        let entry = app.get(&format!("/api/v1/ledger/entries/{}", ids[1099])).await;
        assert_eq!(entry.status, 200, "{}", entry.text);
        assert_eq!(entry.body["date"], "2025-09-08");
        assert_eq!(entry.body["lines"][0]["dimensions"]["project"], "p1");
        assert_eq!(entry.body["lines"][1]["memo"], "sale 1099");
        assert_eq!(entry.body["lines"][1]["credit"], "1109.99");

        for as_of in ["2025-09-30", "2025-12-31"] {
            let balance = app.get(&format!("/api/v1/ledger/trial-balance?as_of={as_of}")).await;
            assert_eq!(balance.body["total_debit"], expected.as_str(), "{}", balance.text);
            assert_eq!(balance.body["balanced"], true);
        }
        // Mid-month: the daily balances of the first fourteen days.
        let mid: i64 = (0..1100).filter(|n| n % 28 < 14).map(|n| (10 + n) * 100 + n % 100).sum();
        let balance = app.get("/api/v1/ledger/trial-balance?as_of=2025-09-14").await;
        assert_eq!(balance.body["total_debit"], format!("{}.{:02}", mid / 100, mid % 100).as_str());

        // The keyed entries are recognised when the batch comes again; nothing is written twice.
        let keyed: Vec<Value> = (0..1100).step_by(50).map(|n| {
            let mut entry = simple_entry(&format!("2025-09-{:02}", 1 + n % 28), "1020", "4000", &format!("{}.{:02}", 10 + n, n % 100));
            entry["lines"][0]["dimensions"] = json!({ "project": format!("p{}", n % 3) });
            entry["lines"][1]["memo"] = json!(format!("sale {n}"));
            entry["idempotency_key"] = json!(format!("large-{n}"));
            entry
        }).collect();
        let again = app.post("/api/v1/ledger/entries:batch", json!({ "entries": keyed })).await;
        assert_eq!(again.status, 200, "{}", again.text);
        assert_eq!(again.body["entries"][1]["id"], ids[50]);
        assert_eq!(app.row_counts().await, (1100, 2200));

        let last = app.get(&format!("/api/v1/audit?object_type=ledger.entry&object_id={}", ids[1099])).await;
        assert_eq!(last.body["records"][0]["action"], "ledger.entries:post", "{}", last.text);
        let verification = app.get("/api/v1/audit/verification").await;
        assert_eq!(verification.body["first_broken"], Value::Null, "{}", verification.text);
        assert!(verification.body["records"].as_u64() > Some(1100), "{}", verification.text);
    }

    async fn foreign_currency_lines_carry_rates_and_report_in_base(app: TestApp) {
        let eur_bank = json!({ "code": "1025", "name": "Bank - EUR", "type": "asset", "currency": "EUR" });
        assert_eq!(app.post("/api/v1/ledger/accounts", eur_bank).await.status, 201);
        // Buying 1,000 EUR at 1.10 through the currency trading account.
        let reply = app
            .post(
                "/api/v1/ledger/entries",
                json!({
                    "date": "2025-08-01",
                    "memo": "Buy EUR",
                    "lines": [
                        { "account": "1025", "debit": "1000.00", "currency": "EUR", "rate": "1.10" },
                        { "account": "3900", "credit": "1000.00", "currency": "EUR", "rate": "1.10" },
                        { "account": "3900", "debit": "1100.00" },
                        { "account": "1020", "credit": "1100.00" }
                    ]
                }),
            )
            .await;
        assert_eq!(reply.status, 201, "{}", reply.text);
        assert_eq!(reply.body["lines"][0]["base_debit"], "1100.00");
        assert_eq!(reply.body["lines"][0]["rate"], "1.1", "rates are stored normalized");

        let tb = app.get("/api/v1/ledger/trial-balance?as_of=2025-12-31").await;
        let eur = tb.body["rows"].as_array().expect("rows").iter().find(|r| r["account"] == "1025").expect("EUR bank");
        assert_eq!(eur["debit"], "1100.00");
        assert_eq!(eur["foreign"], json!([{ "currency": "EUR", "debit": "1000.00" }]));
        assert_eq!(tb.body["balanced"], true);

        let lines = app.get("/api/v1/ledger/accounts/1025/lines").await;
        assert_eq!(lines.body["lines"][0]["foreign"], json!({ "currency": "EUR", "debit": "1000.00" }));

        // A yen amount has no decimals; every currency balances on its own.
        let jpy = |amount: &str| json!({
            "date": "2025-08-02",
            "lines": [
                { "account": "6600", "debit": amount, "currency": "JPY", "rate": "0.0067" },
                { "account": "3900", "credit": amount, "currency": "JPY", "rate": "0.0067" }
            ]
        });
        let reply = app.post("/api/v1/ledger/entries", jpy("15000")).await;
        assert_eq!(reply.status, 201, "{}", reply.text);
        assert_eq!(reply.body["lines"][0]["base_debit"], "100.50");
        app.post("/api/v1/ledger/entries", jpy("15000.5")).await.assert_problem(422, &["lines[0].debit", "lines[1].credit"]);

        // As of the last posting the running totals answer; once something is dated later the
        // period balances do. Both give the same rows for an account held in three currencies.
        let trading_row = |tb: &Value| tb["rows"].as_array().expect("rows").iter().find(|r| r["account"] == "3900").cloned();
        let from_totals = app.get("/api/v1/ledger/trial-balance?as_of=2025-08-02").await;
        let row = trading_row(&from_totals.body).expect("the trading account");
        assert_eq!(row["credit"], "100.50", "{row}");
        assert_eq!(
            row["foreign"],
            json!([{ "currency": "EUR", "credit": "1000.00" }, { "currency": "JPY", "credit": "15000" }]),
            "{row}"
        );
        let later = app.post("/api/v1/ledger/entries", simple_entry("2025-09-30", "1020", "4000", "10.00")).await;
        assert_eq!(later.status, 201, "{}", later.text);
        let from_periods = app.get("/api/v1/ledger/trial-balance?as_of=2025-08-02").await;
        assert_eq!(from_periods.body, from_totals.body);
    }

    async fn accounts_are_created_listed_renamed_moved_and_deactivated(app: TestApp) {
        let created = app.post("/api/v1/ledger/accounts", json!({ "code": "6150", "name": "Cleaning", "type": "expense", "parent": "6000" })).await;
        assert_eq!(created.status, 201, "{}", created.text);
        assert_eq!(created.body, json!({ "code": "6150", "name": "Cleaning", "type": "expense", "parent": "6000", "currency": null, "active": true }));

        let list = app.get("/api/v1/ledger/accounts").await;
        let codes: Vec<&str> = list.body.as_array().expect("accounts").iter().map(|a| a["code"].as_str().expect("code")).collect();
        let mut sorted = codes.clone();
        sorted.sort_unstable();
        assert_eq!(codes, sorted, "accounts come in code order");
        assert!(codes.contains(&"6150"));

        let renamed = app.patch("/api/v1/ledger/accounts/6150", json!({ "name": "Cleaning services", "parent": null })).await;
        assert_eq!(renamed.status, 200, "{}", renamed.text);
        assert_eq!(renamed.body["name"], "Cleaning services");
        assert_eq!(renamed.body["parent"], json!(null));

        let deactivated = app.patch("/api/v1/ledger/accounts/6150", json!({ "active": false })).await;
        assert_eq!(deactivated.body["active"], false);
        assert_eq!(deactivated.body["name"], "Cleaning services", "absent fields stay as they were");
        assert_eq!(app.get("/api/v1/ledger/accounts/6150").await.body["active"], false);

        let cycle = app.patch("/api/v1/ledger/accounts/6000", json!({ "parent": "6010" })).await;
        cycle.assert_problem(422, &["parent"]);
        let wrong_type = app.patch("/api/v1/ledger/accounts/6150", json!({ "parent": "1000" })).await;
        wrong_type.assert_problem(422, &["parent"]);
        app.get("/api/v1/ledger/accounts/9999").await.assert_problem(404, &[]);
    }

    async fn closing_a_period_blocks_it_and_reopening_allows_it_again(app: TestApp) {
        let march = app.period_id("2025-03").await;
        let closed = app.post(&format!("/api/v1/ledger/periods/{march}/close"), json!(null)).await;
        assert_eq!(closed.status, 200, "{}", closed.text);
        assert_eq!(closed.body["status"], "closed");

        app.post("/api/v1/ledger/entries", simple_entry("2025-03-15", "1020", "4000", "1.00")).await.assert_problem(422, &["date"]);
        app.post_simple("2025-04-01", "1020", "4000", "1.00").await;

        app.post(&format!("/api/v1/ledger/periods/{march}/close"), json!(null)).await.assert_problem(409, &[]);
        let reopened = app.post(&format!("/api/v1/ledger/periods/{march}/reopen"), json!(null)).await;
        assert_eq!(reopened.body["status"], "open");
        app.post_simple("2025-03-15", "1020", "4000", "1.00").await;
    }

    async fn year_end_close_moves_profit_to_retained_earnings_and_reopen_undoes_it(app: TestApp) {
        app.post_simple("2025-02-01", "1020", "4000", "1000.00").await;
        app.post_simple("2025-02-02", "6100", "1020", "400.00").await;
        let years = app.get("/api/v1/ledger/fiscal-years").await;
        let year = years.body.as_array().expect("years").iter().find(|y| y["name"] == "2025").expect("2025")["id"].as_i64().expect("id");

        let missing = app.post(&format!("/api/v1/ledger/fiscal-years/{year}/close"), json!({ "retained_earnings_account": "4000" })).await;
        missing.assert_problem(422, &["retained_earnings_account"]);

        let closed = app.post(&format!("/api/v1/ledger/fiscal-years/{year}/close"), json!({ "retained_earnings_account": "3200" })).await;
        assert_eq!(closed.status, 200, "{}", closed.text);
        assert_eq!(closed.body["status"], "closed");
        assert!(closed.body["periods"].as_array().expect("periods").iter().all(|p| p["status"] == "closed"));
        let closing = closed.body["closing_entry"].as_i64().expect("a closing entry");
        let entry = app.get(&format!("/api/v1/ledger/entries/{closing}")).await;
        assert_eq!(entry.body["kind"], "closing");
        assert_eq!(entry.body["date"], "2025-12-31");

        let sheet = app.get("/api/v1/ledger/balance-sheet?as_of=2025-12-31").await;
        assert_eq!(sheet.body["current_earnings"], "0.00");
        let retained = sheet.body["equity"]["lines"].as_array().expect("equity").iter().find(|l| l["account"] == "3200").expect("retained earnings");
        assert_eq!(retained["total"], "600.00");
        assert_eq!(sheet.body["balanced"], true);
        // The income statement still shows the year's activity: closing entries are left out.
        let statement = app.get("/api/v1/ledger/income-statement?from=2025-01-01&to=2025-12-31").await;
        assert_eq!(statement.body["net_income"], "600.00");
        // The closed year refuses postings and a second close.
        app.post("/api/v1/ledger/entries", simple_entry("2025-06-01", "1020", "4000", "1.00")).await.assert_problem(422, &["date"]);
        app.post(&format!("/api/v1/ledger/fiscal-years/{year}/close"), json!({ "retained_earnings_account": "3200" })).await.assert_problem(409, &[]);
        let june = app.period_id("2025-06").await;
        app.post(&format!("/api/v1/ledger/periods/{june}/reopen"), json!(null)).await.assert_problem(409, &[]);
        app.post(&format!("/api/v1/ledger/entries/{closing}/reverse"), json!({})).await.assert_problem(409, &[]);

        let reopened = app.post(&format!("/api/v1/ledger/fiscal-years/{year}/reopen"), json!(null)).await;
        assert_eq!(reopened.status, 200, "{}", reopened.text);
        assert_eq!(reopened.body["status"], "open");
        let sheet = app.get("/api/v1/ledger/balance-sheet?as_of=2025-12-31").await;
        assert_eq!(sheet.body["current_earnings"], "600.00");
        assert_eq!(sheet.body["balanced"], true);
        let statement = app.get("/api/v1/ledger/income-statement?from=2025-01-01&to=2025-12-31").await;
        assert_eq!(statement.body["net_income"], "600.00");
        // Periods stay closed until reopened one by one.
        app.post("/api/v1/ledger/entries", simple_entry("2025-06-01", "1020", "4000", "1.00")).await.assert_problem(422, &["date"]);
        assert_eq!(app.post(&format!("/api/v1/ledger/periods/{june}/reopen"), json!(null)).await.status, 200);
        app.post_simple("2025-06-01", "1020", "4000", "1.00").await;
    }

    async fn fiscal_years_cannot_overlap(app: TestApp) {
        app.post("/api/v1/ledger/fiscal-years", json!({ "start": "2025-06-01" })).await.assert_problem(409, &[]);
        app.post("/api/v1/ledger/fiscal-years", json!({ "start": "2024-01-15" })).await.assert_problem(422, &["start"]);
        let earlier = app.post("/api/v1/ledger/fiscal-years", json!({ "start": "2024-01-01" })).await;
        assert_eq!(earlier.status, 201, "{}", earlier.text);
        assert_eq!(earlier.body["periods"].as_array().expect("periods").len(), 12);
        assert_eq!(earlier.body["periods"][11]["end"], "2024-12-31");
    }

    async fn entries_list_in_pages_and_filter_by_source(app: TestApp) {
        for n in 0..5 {
            let mut entry = simple_entry("2025-09-01", "1100", "4000", "10.00");
            entry["source"] = json!({ "module": "invoicing", "document": format!("INV-{n}") });
            assert_eq!(app.post("/api/v1/ledger/entries", entry).await.status, 201);
        }
        app.post_simple("2025-09-02", "1020", "1100", "10.00").await;
        let page = app.get("/api/v1/ledger/entries?limit=4").await;
        assert_eq!(page.body["entries"].as_array().expect("entries").len(), 4);
        let next = page.body["next"].as_str().expect("next");
        let rest = app.get(&format!("/api/v1/ledger/entries?limit=4&after={next}")).await;
        assert_eq!(rest.body["entries"].as_array().expect("entries").len(), 2);
        assert!(rest.body.get("next").is_none());

        let one = app.get("/api/v1/ledger/entries?source_module=invoicing&source_document=INV-3").await;
        assert_eq!(one.body["entries"].as_array().expect("entries").len(), 1);
        assert_eq!(one.body["entries"][0]["source"]["document"], "INV-3");
        let dated = app.get("/api/v1/ledger/entries?from=2025-09-02&to=2025-09-02").await;
        assert_eq!(dated.body["entries"].as_array().expect("entries").len(), 1);
        app.get("/api/v1/ledger/entries?limit=0").await.assert_problem(422, &["limit"]);
        app.get("/api/v1/ledger/entries?limit=abc").await.assert_problem(400, &["limit"]);
    }

    async fn health_readiness_and_metrics_answer(app: TestApp) {
        assert_eq!(app.get("/healthz").await.status, 200);
        assert_eq!(app.get("/readyz").await.status, 200);
        app.post_simple("2025-10-01", "1020", "4000", "1.00").await;
        let metrics = app.get("/metrics").await;
        assert_eq!(metrics.status, 200);
        assert!(metrics.text.contains("keel_http_requests_total"), "{}", metrics.text);
        // The ledger's writer: how many requests each commit group took, and how long.
        assert!(metrics.text.contains("keel_ledger_commit_group_requests"), "{}", metrics.text);
        assert!(metrics.text.contains("keel_ledger_commit_group_seconds"), "{}", metrics.text);
        app.get("/api/v1/nothing-here").await.assert_problem(404, &[]);
    }
}
