//! Editing, deleting, reordering or cutting off audit records directly in the database — past
//! the triggers, as someone with database access could — is reported by `keel audit verify`
//! with the exact record, on both backends.

#[path = "../host/tests/common/mod.rs"]
mod common;
mod process;

use common::TestDatabase;
use keel_host::db::Location;
use process::keel;

/// Builds a ledger with a few dozen audit records through the CLI.
fn ledger_with_history(database: &TestDatabase) {
    for args in [
        vec!["ledger", "init-chart"],
        vec!["ledger", "open-year", "2025-01-01"],
        vec!["user", "add", "admin", "--role", "admin"],
        vec!["ledger", "close-period", "2025-01"],
        vec!["ledger", "reopen-period", "2025-01"],
    ] {
        let output = keel(&args, database);
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let verified = keel(&["audit", "verify"], database);
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stderr)
    );
    assert!(String::from_utf8_lossy(&verified.stdout).contains("intact"));
}

/// Runs SQL as someone with direct access to the database, triggers switched off.
async fn tamper(database: &TestDatabase, statements: &[&str]) {
    match &database.location {
        Location::DataDir(dir) => {
            let url = format!(
                "sqlite://{}",
                dir.join(keel_host::db::SQLITE_FILE_NAME).display()
            );
            let pool = sqlx::SqlitePool::connect(&url)
                .await
                .expect("opening the SQLite file");
            sqlx::query("DROP TRIGGER audit_log_refuses_update")
                .execute(&pool)
                .await
                .expect("dropping a trigger");
            sqlx::query("DROP TRIGGER audit_log_refuses_delete")
                .execute(&pool)
                .await
                .expect("dropping a trigger");
            for statement in statements {
                sqlx::query(statement)
                    .execute(&pool)
                    .await
                    .expect("tampering");
            }
            pool.close().await;
        }
        Location::Postgres(url) => {
            let pool = sqlx::PgPool::connect(url).await.expect("connecting");
            sqlx::query("ALTER TABLE audit_log DISABLE TRIGGER USER")
                .execute(&pool)
                .await
                .expect("disabling triggers");
            for statement in statements {
                sqlx::query(statement)
                    .execute(&pool)
                    .await
                    .expect("tampering");
            }
            pool.close().await;
        }
    }
}

async fn verify_reports(database: TestDatabase, statements: &[&str], seq: i64, reason: &str) {
    ledger_with_history(&database);
    tamper(&database, statements).await;
    let output = keel(&["audit", "verify"], &database);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "verify must fail: {stderr}");
    assert!(
        stderr.contains(&format!("broken at record {seq}:")),
        "{stderr}"
    );
    assert!(stderr.contains(reason), "{stderr}");
}

const EDIT: &[&str] = &["UPDATE audit_log SET change = '{\"forged\":true}' WHERE seq = 4"];
const DELETE: &[&str] = &["DELETE FROM audit_log WHERE seq = 5"];
const REORDER: &[&str] = &[
    "UPDATE audit_log SET seq = -3 WHERE seq = 3",
    "UPDATE audit_log SET seq = 3 WHERE seq = 4",
    "UPDATE audit_log SET seq = 4 WHERE seq = -3",
];
const CUT_TAIL: &[&str] = &["DELETE FROM audit_log WHERE seq = (SELECT MAX(seq) FROM audit_log)"];

#[tokio::test]
async fn an_edited_record_is_reported_on_sqlite() {
    verify_reports(TestDatabase::sqlite(), EDIT, 4, "was edited").await;
}

#[tokio::test]
async fn an_edited_record_is_reported_on_postgres() {
    verify_reports(TestDatabase::postgres().await, EDIT, 4, "was edited").await;
}

#[tokio::test]
async fn a_deleted_record_is_reported_on_sqlite() {
    verify_reports(TestDatabase::sqlite(), DELETE, 5, "missing").await;
}

#[tokio::test]
async fn a_deleted_record_is_reported_on_postgres() {
    verify_reports(TestDatabase::postgres().await, DELETE, 5, "missing").await;
}

#[tokio::test]
async fn reordered_records_are_reported_on_sqlite() {
    verify_reports(TestDatabase::sqlite(), REORDER, 3, "does not link").await;
}

#[tokio::test]
async fn reordered_records_are_reported_on_postgres() {
    verify_reports(TestDatabase::postgres().await, REORDER, 3, "does not link").await;
}

#[tokio::test]
async fn a_cut_off_tail_is_reported_on_sqlite() {
    let database = TestDatabase::sqlite();
    ledger_with_history(&database);
    tamper(&database, CUT_TAIL).await;
    let output = keel(&["audit", "verify"], &database);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("records at the end were removed"));
}

#[tokio::test]
async fn a_cut_off_tail_is_reported_on_postgres() {
    let database = TestDatabase::postgres().await;
    ledger_with_history(&database);
    tamper(&database, CUT_TAIL).await;
    let output = keel(&["audit", "verify"], &database);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("records at the end were removed"));
}

#[test]
fn the_export_is_one_json_record_per_line_in_order() {
    let database = TestDatabase::sqlite();
    ledger_with_history(&database);
    let output = keel(&["audit", "export"], &database);
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    let seqs: Vec<i64> = text
        .lines()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line).expect("JSON")["seq"]
                .as_i64()
                .expect("seq")
        })
        .collect();
    assert!(seqs.len() >= 5);
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>());
}
