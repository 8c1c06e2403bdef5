//! The plugin runtime's own costs, in-process (the HTTP route is measured end to end by
//! `keel-bench --plugin`):
//!
//! * a fresh-instance call: instantiate a component, call its `manifest` export, drop it —
//!   for a trivial Rust plugin, and for the Python and JavaScript examples;
//! * loading an installed plugin from the compiled cache, as a restart does.
//!
//! The components are built by `scripts/build-plugins`. Figures in docs/PERFORMANCE.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use keel_host::audit::Origin;
use keel_host::authz::Authz;
use keel_host::company::{Companies, Company};
use keel_host::db::{Database, Location};
use keel_host::runtime::Runtime;

mod common;
use common::component;

const COMPONENTS: [(&str, &str); 3] = [
    (
        "rust (faulty test plugin)",
        "wasm32-wasip2/plugin/faulty.wasm",
    ),
    ("python (expenses example)", "plugins-python/expenses.wasm"),
    ("javascript (expenses example)", "plugins-js/expenses.wasm"),
];

/// One component installed on its own database (the examples share the name `expenses`).
struct Setup {
    db: Database,
    authz: Arc<Authz>,
    company: Company,
    runtime: Arc<Runtime>,
    hash: String,
}

async fn set_up(path: &str, data: &std::path::Path, compiled: &std::path::Path) -> Setup {
    let db = Database::open(&Location::DataDir(data.to_owned()))
        .await
        .expect("a database");
    let companies = Companies::bootstrap(&db, None).await.expect("a company");
    let company = companies.default_company();
    let authz = Arc::new(Authz::load(&db).await.expect("the policy"));
    let runtime = Runtime::new(db.clone(), authz.clone(), compiled).expect("a runtime");
    let view = runtime
        .install_enabled(&company, &component(path), &Origin::system())
        .await
        .expect("installing and enabling the plugin");
    Setup {
        db,
        authz,
        company,
        runtime,
        hash: view.hash,
    }
}

fn plugin_calls(c: &mut Criterion) {
    let tokio = tokio::runtime::Runtime::new().expect("a runtime");
    let compiled = tempfile::tempdir().expect("a folder");
    let mut folders = Vec::new();
    let mut setups = Vec::new();
    for (label, path) in COMPONENTS {
        let data = tempfile::tempdir().expect("a folder");
        setups.push((
            label,
            tokio.block_on(set_up(path, data.path(), compiled.path())),
        ));
        folders.push(data);
    }

    let mut group = c.benchmark_group("fresh instance: instantiate + call manifest + drop");
    for (label, setup) in &setups {
        group.bench_function(*label, |b| {
            b.to_async(&tokio).iter(|| async {
                setup
                    .runtime
                    .ping(&setup.company, &setup.hash)
                    .await
                    .expect("a call")
            })
        });
    }
    group.finish();

    // A restart: a new runtime finds each enabled plugin in the compiled cache.
    let mut group = c.benchmark_group("restart: load an installed plugin from the compiled cache");
    group.sample_size(20);
    for (label, setup) in &setups {
        group.bench_function(*label, |b| {
            b.to_async(&tokio).iter_custom(|iterations| {
                let (db, authz) = (setup.db.clone(), setup.authz.clone());
                let compiled = compiled.path().to_owned();
                async move {
                    let mut total = Duration::ZERO;
                    for _ in 0..iterations {
                        let started = Instant::now();
                        let runtime =
                            Runtime::new(db.clone(), authz.clone(), &compiled).expect("a runtime");
                        assert_eq!(runtime.load_installed().await.expect("loading"), 1);
                        total += started.elapsed();
                        assert_eq!(runtime.compilations(), 0, "nothing is compiled again");
                    }
                    total
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, plugin_calls);
criterion_main!(benches);
