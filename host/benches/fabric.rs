//! The plugin fabric's targets, in-process on SQLite, through real plugin calls:
//!
//! * an indexed query of a collection of 1,000,000 records (the hub's `POST /find`);
//! * event delivery to a Rust subscriber (spoke-1, which writes two records per event);
//! * a hook chain of three Rust plugins over a 200-line input (the hub's `hub.adjust`).
//!
//! The components are built by `scripts/build-plugins`. Figures in docs/PERFORMANCE.md.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use keel_host::audit::Origin;
use keel_host::authz::Authz;
use keel_host::company::{Companies, Company};
use keel_host::db::{Database, Location, Tx};
use keel_host::runtime::declarations::Index;
use keel_host::runtime::registry::PluginRequest;
use keel_host::runtime::{Runtime, index_key_of};
use serde_json::{Value, json};

const RECORDS: usize = 1_000_000;
/// Rows per INSERT while seeding (SQLite allows 32,766 parameters per statement).
const SEED_ROWS_PER_STATEMENT: usize = 500;
const EVENTS_PER_ROUND: usize = 2_000;
const HOOK_LINES: usize = 200;

fn plugin(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/wasm32-wasip2/plugin")
        .join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|error| {
        panic!(
            "{}: {error}; build the plugins first with scripts/build-plugins",
            path.display()
        )
    })
}

struct Setup {
    db: Database,
    company: Company,
    runtime: Arc<Runtime>,
}

async fn set_up(data: &std::path::Path, compiled: &std::path::Path) -> Setup {
    let db = Database::open(&Location::DataDir(data.to_owned()))
        .await
        .expect("a database");
    let companies = Companies::bootstrap(&db, None).await.expect("a company");
    let company = companies.default_company();
    let authz = Arc::new(Authz::load(&db).await.expect("the policy"));
    let runtime = Runtime::new(db.clone(), authz, compiled).expect("a runtime");
    for name in ["hub", "spoke_1", "spoke_2", "spoke_3"] {
        runtime
            .install_enabled(&company, &plugin(name), &Origin::system())
            .await
            .expect("installing and enabling");
    }
    Setup {
        db,
        company,
        runtime,
    }
}

async fn call(setup: &Setup, path: &str, body: &Value) -> Value {
    let request = PluginRequest {
        method: "POST".to_owned(),
        path: path.to_owned(),
        query: String::new(),
        headers: Vec::new(),
        body: body.to_string().into_bytes(),
    };
    let response = setup
        .runtime
        .handle_http(
            &setup.company,
            "hub",
            Some(0),
            &Origin::system(),
            request,
            None,
        )
        .await
        .expect("a call");
    assert_eq!(
        response.status,
        200,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    serde_json::from_slice(&response.body).expect("JSON")
}

/// Loads the hub's orders straight into the tables, with the entries of both its indexes.
async fn seed_orders(setup: &Setup) {
    let indexes = [
        Index {
            name: "by-status-total".to_owned(),
            fields: vec!["status".to_owned(), "total".to_owned()],
        },
        Index {
            name: "by-customer".to_owned(),
            fields: vec!["customer.id".to_owned()],
        },
    ];
    let statuses = ["open", "closed", "draft", "paid"];
    let mut tx = setup.db.begin_write().await.expect("a transaction");
    let Tx::Sqlite(conn) = &mut tx else {
        unreachable!("the benchmark runs on SQLite")
    };
    let now = chrono::Utc::now();
    for chunk in (0..RECORDS)
        .collect::<Vec<_>>()
        .chunks(SEED_ROWS_PER_STATEMENT)
    {
        let records: Vec<(String, Value)> = chunk
            .iter()
            .map(|i| {
                let order = json!({
                    "status": statuses[i % statuses.len()],
                    "total": (i * 7919 % 100_000) as f64 / 100.0,
                    "customer": { "id": i % 5_000 },
                });
                (format!("order-{i:07}"), order)
            })
            .collect();
        let mut insert = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "INSERT INTO plugin_records (company_id, plugin, collection, key, value, updated_at) ",
        );
        insert.push_values(&records, |mut row, (key, value)| {
            row.push_bind(setup.company.id)
                .push_bind("hub")
                .push_bind("orders")
                .push_bind(key)
                .push_bind(value.to_string())
                .push_bind(now);
        });
        insert.build().execute(&mut **conn).await.expect("records");
        let mut entries = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "INSERT INTO plugin_index_entries \
             (company_id, plugin, collection, name, index_key, record_key) ",
        );
        let rows: Vec<(&str, String, &String)> = records
            .iter()
            .flat_map(|(key, value)| {
                indexes
                    .iter()
                    .map(move |index| (index.name.as_str(), index_key_of(index, value), key))
            })
            .collect();
        entries.push_values(&rows, |mut row, (name, index_key, key)| {
            row.push_bind(setup.company.id)
                .push_bind("hub")
                .push_bind("orders")
                .push_bind(*name)
                .push_bind(index_key)
                .push_bind(*key);
        });
        entries
            .build()
            .execute(&mut **conn)
            .await
            .expect("index entries");
    }
    tx.commit().await.expect("committing the seed");
}

async fn publish_events(setup: &Setup, topic: &str, round: usize) {
    let mut tx = setup.db.begin_write().await.expect("a transaction");
    for n in 0..EVENTS_PER_ROUND {
        keel_host::events::publish(
            &mut tx,
            setup.company.id,
            topic,
            &format!("thing/{round}/{n}"),
            &json!({ "n": n }),
            Some("hub"),
        )
        .await
        .expect("publishing");
    }
    tx.commit().await.expect("committing the events");
}

fn fabric(c: &mut Criterion) {
    let tokio = tokio::runtime::Runtime::new().expect("a runtime");
    let data = tempfile::tempdir().expect("a folder");
    let compiled = tempfile::tempdir().expect("a folder");
    let setup = tokio.block_on(set_up(data.path(), compiled.path()));

    let lines: Vec<Value> = (0..HOOK_LINES)
        .map(|i| json!({ "sku": format!("SKU-{i:04}"), "price": 10.0 + i as f64 }))
        .collect();
    let input = json!({ "lines": lines });
    let mut group = c.benchmark_group("hook chain");
    group.bench_function("three Rust implementations, 200 lines", |b| {
        b.to_async(&tokio).iter(|| async {
            let output = call(&setup, "/hooks/adjust", &input).await;
            assert_eq!(output["applied"].as_array().map(Vec::len), Some(3));
        })
    });
    group.finish();

    // One subscriber: the other spokes leave (they subscribe to the same topic).
    for spoke in ["spoke-2", "spoke-3"] {
        tokio
            .block_on(
                setup
                    .runtime
                    .uninstall(&setup.company, spoke, &Origin::system()),
            )
            .expect("uninstalling");
    }
    let mut group = c.benchmark_group("event delivery");
    group.sample_size(10);
    group.throughput(criterion::Throughput::Elements(EVENTS_PER_ROUND as u64));
    let mut round = 0;
    let subscribers = [
        (
            "to spoke-1 (Rust, two writes per event)",
            "hub.thing.happened",
        ),
        ("to hub (Rust, one write per event)", "ledger.entry.posted"),
    ];
    for (label, topic) in subscribers {
        group.bench_function(label, |b| {
            b.to_async(&tokio).iter_custom(|iterations| {
                round += 1;
                let setup = &setup;
                let first_round = round * 1_000;
                async move {
                    let mut total = Duration::ZERO;
                    for i in 0..iterations {
                        publish_events(setup, topic, first_round + i as usize).await;
                        let started = Instant::now();
                        let delivered = setup.runtime.dispatch_all().await.expect("dispatching");
                        total += started.elapsed();
                        assert_eq!(delivered.delivered as usize, EVENTS_PER_ROUND);
                    }
                    total
                }
            })
        });
    }
    group.finish();

    let seeding = Instant::now();
    tokio.block_on(seed_orders(&setup));
    eprintln!("seeded {RECORDS} orders in {:?}", seeding.elapsed());
    let mut group = c.benchmark_group("indexed query, 1,000,000 records");
    let queries = [
        (
            "equality + range, 100 items",
            json!({ "index": "by-status-total", "equals": ["open"], "from": 250, "to": 260, "limit": 100 }),
        ),
        (
            "equality on a nested field",
            json!({ "index": "by-customer", "equals": [4242] }),
        ),
        (
            "descending, second page",
            json!({ "index": "by-status-total", "equals": ["paid"], "descending": true, "limit": 100 }),
        ),
    ];
    for (label, query) in &queries {
        let mut query = query.clone();
        if label.contains("second page") {
            let first = tokio.block_on(call(&setup, "/find", &query));
            query["after"] = first["next"].clone();
        }
        let expected = tokio.block_on(call(&setup, "/find", &query))["keys"]
            .as_array()
            .map_or(0, Vec::len);
        assert!(expected > 0, "{label} finds records");
        group.bench_function(*label, |b| {
            b.to_async(&tokio).iter(|| async {
                let found = call(&setup, "/find", &query).await;
                assert_eq!(found["keys"].as_array().map_or(0, Vec::len), expected);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, fabric);
criterion_main!(benches);
