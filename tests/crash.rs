//! Durability: kill the server with SIGKILL in the middle of a stream of postings, restart it,
//! and check that every acknowledged entry is there, exactly once, and the books balance.

#[path = "../host/tests/common/mod.rs"]
mod common;
mod process;

use std::sync::Arc;
use std::time::Duration;

use common::TestDatabase;
use process::{Server, keel};
use serde_json::{Value, json};
use tokio::sync::Mutex;

/// Clients posting at once while the server is killed.
const CLIENTS: usize = 8;

/// How long the clients post before the kill.
const POSTING_BEFORE_KILL: Duration = Duration::from_millis(1500);

fn entry(client: usize, n: usize) -> Value {
    let cents = 100 + client * 1000 + n;
    let amount = format!("{}.{:02}", cents / 100, cents % 100);
    json!({
        "date": "2025-06-15",
        "memo": format!("client {client} entry {n}"),
        "lines": [{ "account": "1100", "debit": amount }, { "account": "4000", "credit": amount }]
    })
}

async fn acknowledged_entries_survive_a_kill(database: TestDatabase) {
    assert!(keel(&["ledger", "init-chart"], &database).status.success());
    assert!(
        keel(&["ledger", "open-year", "2025-01-01"], &database)
            .status
            .success()
    );
    let token = process::add_admin(&database);
    let server = Server::start(&database).await;
    let url = server.url("/api/v1/ledger/entries");
    let acknowledged: Arc<Mutex<Vec<(String, Value, Value)>>> = Arc::default();

    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        let (url, acknowledged, token) = (url.clone(), acknowledged.clone(), token.clone());
        clients.push(tokio::spawn(async move {
            let http = process::client(&token);
            for n in 0.. {
                let key = format!("crash-{client}-{n}");
                let body = entry(client, n);
                let Ok(response) = http
                    .post(&url)
                    .header("Idempotency-Key", &key)
                    .json(&body)
                    .send()
                    .await
                else {
                    return;
                };
                if response.status() != 201 {
                    return;
                }
                let Ok(reply) = response.json::<Value>().await else {
                    return;
                };
                acknowledged.lock().await.push((key, body, reply));
            }
        }));
    }
    tokio::time::sleep(POSTING_BEFORE_KILL).await;
    server.kill();
    for client in clients {
        client.await.expect("client task");
    }
    let acknowledged = acknowledged.lock().await.clone();
    assert!(
        acknowledged.len() > CLIENTS,
        "the clients posted before the kill ({} acknowledged)",
        acknowledged.len()
    );

    let server = Server::start(&database).await;
    let http = process::client(&token);
    let mut acknowledged_total_cents = 0_i64;
    for (key, body, reply) in &acknowledged {
        let id = reply["id"].as_i64().expect("an id");
        let stored: Value = http
            .get(server.url(&format!("/api/v1/ledger/entries/{id}")))
            .send()
            .await
            .expect("reading the entry")
            .json()
            .await
            .expect("JSON");
        assert_eq!(
            &stored, reply,
            "acknowledged entry {id} is stored exactly as acknowledged"
        );
        // A client that retries after the crash gets the same entry, not a second one.
        let replay = http
            .post(server.url("/api/v1/ledger/entries"))
            .header("Idempotency-Key", key)
            .json(body)
            .send()
            .await
            .expect("replaying");
        assert_eq!(replay.status(), 201);
        assert_eq!(&replay.json::<Value>().await.expect("JSON"), reply);
        let amount = body["lines"][0]["debit"]
            .as_str()
            .expect("amount")
            .replace('.', "");
        acknowledged_total_cents += amount.parse::<i64>().expect("cents");
    }

    let tb: Value = http
        .get(server.url("/api/v1/ledger/trial-balance?as_of=2025-12-31"))
        .send()
        .await
        .expect("trial balance")
        .json()
        .await
        .expect("JSON");
    assert_eq!(tb["balanced"], true, "{tb}");
    // Entries committed but not acknowledged before the kill may exist too; none may be missing.
    let receivable_cents: i64 = tb["rows"][0]["debit"]
        .as_str()
        .expect("receivable")
        .replace('.', "")
        .parse()
        .expect("cents");
    assert!(
        receivable_cents >= acknowledged_total_cents,
        "{receivable_cents} < {acknowledged_total_cents}"
    );
    server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_entries_survive_a_kill_on_sqlite() {
    acknowledged_entries_survive_a_kill(TestDatabase::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_entries_survive_a_kill_on_postgres() {
    acknowledged_entries_survive_a_kill(TestDatabase::postgres().await).await;
}
