//! `keel audit verify` over a long chain: appends RECORDS audit records to a fresh SQLite
//! database (or the PostgreSQL database named by KEEL_BENCH_POSTGRES_URL) and times the full
//! verification. `cargo bench -p keel-host --bench audit_verify`.

use std::time::Instant;

use keel_host::audit::{self, Event, Origin};
use keel_host::db::{Database, Location};

/// Records in the chain.
const RECORDS: usize = 1_000_000;

/// Records appended per transaction while building the chain.
const RECORDS_PER_TRANSACTION: usize = 10_000;

fn main() {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let dir = tempfile::tempdir().expect("a folder");
    let location = match std::env::var("KEEL_BENCH_POSTGRES_URL") {
        Ok(url) => Location::Postgres(url),
        Err(_) => Location::DataDir(dir.path().to_owned()),
    };
    runtime.block_on(async {
        let db = Database::open(&location).await.expect("a database");
        let origin = Origin::user(1);
        let started = Instant::now();
        for batch in 0..RECORDS / RECORDS_PER_TRANSACTION {
            let events: Vec<Event> = (0..RECORDS_PER_TRANSACTION)
                .map(|n| {
                    let id = batch * RECORDS_PER_TRANSACTION + n;
                    Event::new(
                        Some(1),
                        "ledger.entries:post",
                        "ledger.entry",
                        id,
                        serde_json::json!({ "after": { "date": "2026-03-31", "memo": "bench", "lines": [["1020", "USD", 1250, 1250], ["4000", "USD", -1250, -1250]] } }),
                    )
                })
                .collect();
            let mut tx = db.begin_write().await.expect("a transaction");
            audit::append(&mut tx, &origin, &events).await.expect("appending");
            tx.commit().await.expect("commit");
        }
        println!("appended {RECORDS} audit records in {:.1} s", started.elapsed().as_secs_f64());
        let started = Instant::now();
        let verification = audit::verify(&db).await.expect("verifying");
        let elapsed = started.elapsed();
        assert!(verification.first_broken.is_none(), "{verification:?}");
        println!(
            "verified {} audit records in {:.2} s ({:.0} records/s)",
            verification.records,
            elapsed.as_secs_f64(),
            verification.records as f64 / elapsed.as_secs_f64()
        );
    });
}
