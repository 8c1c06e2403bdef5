//! The front-office plugins' targets, in-process on SQLite, through the real HTTP router and
//! the real plugins (built by `scripts/build-plugins`):
//!
//! * sfa: the pipeline report over 100,000 opportunities (imported through the plugin, so
//!   its running totals are the ones production keeps);
//! * cpq: pricing a 200-line quote with bundles and two `cpq.price-adjust` hooks — the
//!   contract-prices example in Python and the charm-prices test plugin in Rust.
//!
//! Figures in docs/PERFORMANCE.md.

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use keel_host::audit::Origin;
use keel_host::testing::PluginHost;
use serde_json::{Value, json};

mod common;
use common::{component, ok};

const OPPORTUNITIES: usize = 100_000;
/// The most one import request takes.
const IMPORT_BATCH: usize = 500;
const OWNERS: usize = 25;
const QUOTE_LINES: usize = 200;
const BUNDLE_LINES: usize = 40;
const PRODUCTS: usize = 150;
const BUNDLES: usize = 10;
const CONTRACT_PRICES: usize = 30;

async fn customer(host: &PluginHost) -> i64 {
    let party = ok(
        host,
        "POST",
        "/api/v1/parties",
        Some(&json!({ "kind": "organization", "name": "Benchmark Buyer", "roles": ["customer"] })),
    )
    .await;
    party["id"].as_i64().expect("a party id")
}

/// sfa with 100,000 opportunities over 24 months and 25 owners: a fifth won, a seventh lost.
async fn pipeline_host() -> PluginHost {
    let host = PluginHost::start(&component("wasm32-wasip2/plugin/sfa.wasm"))
        .await
        .expect("a host with sfa");
    let party = customer(&host).await;
    let stages = ["prospecting", "qualification", "proposal", "negotiation"];
    let started = Instant::now();
    for batch in 0..OPPORTUNITIES / IMPORT_BATCH {
        let opportunities: Vec<Value> = (0..IMPORT_BATCH)
            .map(|j| {
                let i = batch * IMPORT_BATCH + j;
                let month = i % 24;
                let close = format!("{}-{:02}-15", 2026 + month / 12, month % 12 + 1);
                let mut deal = json!({
                    "name": format!("Deal {i}"), "party": party,
                    "amount": format!("{}.00", 1_000 + i * 37 % 50_000), "currency": "USD",
                    "expected_close": close, "stage": stages[i % stages.len()],
                    "owner": 1_000 + i % OWNERS, "opened_on": "2025-12-01",
                });
                if i.is_multiple_of(5) {
                    deal["outcome"] = json!("won");
                    deal["closed_on"] = json!(close);
                } else if i.is_multiple_of(7) {
                    deal["outcome"] = json!("lost");
                    deal["closed_on"] = json!(close);
                    deal["lost_reason"] = json!("price");
                }
                deal
            })
            .collect();
        ok(
            &host,
            "POST",
            "/api/v1/plugins/sfa/opportunities/import",
            Some(&json!({ "opportunities": opportunities })),
        )
        .await;
    }
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "imported {OPPORTUNITIES} opportunities through sfa in {seconds:.1} s ({:.0}/s)",
        OPPORTUNITIES as f64 / seconds
    );
    host
}

const PIPELINE_BENCH: &str = "sfa pipeline report over 100,000 opportunities";
const PIPELINE: &str = "/api/v1/plugins/sfa/pipeline?from=2026-01&to=2027-12";

/// Every opportunity is counted once in the report.
fn counted(report: &Value) -> i64 {
    report["currencies"]
        .as_array()
        .expect("currencies")
        .iter()
        .map(|c| {
            ["open", "won", "lost"]
                .iter()
                .map(|part| c[part]["count"].as_i64().expect("a count"))
                .sum::<i64>()
        })
        .sum()
}

/// cpq with 150 products, 10 bundles, a price book with tiers, and both hooks installed.
async fn pricing_host() -> (PluginHost, Value) {
    let host = PluginHost::start(&component("wasm32-wasip2/plugin/cpq.wasm"))
        .await
        .expect("a host with cpq");
    let company = host.state().companies.default_company();
    for hook in [
        "plugins-python/contract_prices.wasm",
        "wasm32-wasip2/plugin/charm_prices.wasm",
    ] {
        host.state()
            .runtime
            .install_enabled(&company, &component(hook), &Origin::system())
            .await
            .expect("installing a hook");
    }
    let party = customer(&host).await;
    let cpq = |path: &str| format!("/api/v1/plugins/cpq{path}");
    ok(
        &host,
        "POST",
        &cpq("/price-books"),
        Some(&json!({ "code": "USD-LIST", "name": "List prices", "currency": "USD" })),
    )
    .await;
    for p in 0..PRODUCTS {
        let sku = format!("P-{p:03}");
        ok(
            &host,
            "POST",
            &cpq("/products"),
            Some(&json!({ "sku": sku, "name": format!("Product {p}"), "tax_rate": if p % 3 == 0 { "7" } else { "19" } })),
        )
        .await;
        let price = match p % 3 {
            0 => json!({ "unit_price": format!("{}.50", 10 + p) }),
            1 => json!({ "unit_price": format!("{}.00", 20 + p), "tier_mode": "volume",
                         "tiers": [{ "min_quantity": 10, "unit_price": format!("{}.00", 18 + p) }] }),
            _ => json!({ "unit_price": format!("{}.25", 30 + p), "tier_mode": "graduated",
                         "tiers": [{ "min_quantity": 5, "unit_price": format!("{}.00", 28 + p) },
                                   { "min_quantity": 20, "unit_price": format!("{}.00", 25 + p) }] }),
        };
        ok(
            &host,
            "PUT",
            &cpq(&format!("/price-books/USD-LIST/prices/{sku}")),
            Some(&price),
        )
        .await;
    }
    for b in 0..BUNDLES {
        let sku = format!("B-{b:02}");
        ok(
            &host,
            "POST",
            &cpq("/products"),
            Some(&json!({
                "sku": sku, "name": format!("Bundle {b}"), "kind": "bundle", "tax_rate": "19",
                "components": [
                    { "sku": format!("P-{:03}", b * 3), "required": true },
                    { "sku": format!("P-{:03}", b * 3 + 1), "required": true, "max_quantity": 2 },
                    { "sku": format!("P-{:03}", b * 3 + 2), "max_quantity": 4 },
                ],
            })),
        )
        .await;
        ok(
            &host,
            "PUT",
            &cpq(&format!("/price-books/USD-LIST/prices/{sku}")),
            Some(&json!({ "unit_price": "25.00" })),
        )
        .await;
    }
    for p in 0..CONTRACT_PRICES {
        let sku = format!("P-{:03}", p * 5);
        ok(
            &host,
            "PUT",
            &format!("/api/v1/plugins/contract-prices/contract-prices/{party}/{sku}"),
            Some(&json!({ "unit_price": format!("{}.00", 9 + p), "currency": "USD" })),
        )
        .await;
    }
    let lines: Vec<Value> = (0..QUOTE_LINES)
        .map(|l| {
            if l < BUNDLE_LINES {
                let b = l % BUNDLES;
                json!({
                    "sku": format!("B-{b:02}"), "quantity": 1 + l % 4,
                    "components": [
                        { "sku": format!("P-{:03}", b * 3), "quantity": 1 },
                        { "sku": format!("P-{:03}", b * 3 + 1), "quantity": 2 },
                        { "sku": format!("P-{:03}", b * 3 + 2), "quantity": 3 },
                    ],
                })
            } else {
                json!({ "sku": format!("P-{:03}", l % PRODUCTS), "quantity": 1 + l % 30,
                        "discount_percent": if l % 10 == 0 { "5" } else { "0" } })
            }
        })
        .collect();
    let quote = json!({ "party": party, "currency": "USD", "lines": lines });
    (host, quote)
}

fn benches(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");

    let mut group = c.benchmark_group("sales");
    group
        .sample_size(30)
        .measurement_time(Duration::from_secs(10));
    let (pricing, quote) = runtime.block_on(pricing_host());
    let priced = runtime.block_on(ok(
        &pricing,
        "POST",
        "/api/v1/plugins/cpq/price",
        Some(&quote),
    ));
    let adjusted = priced["price_adjustments"].as_array().map_or(0, Vec::len);
    assert!(
        adjusted >= QUOTE_LINES - BUNDLE_LINES,
        "both hooks ran: {adjusted} lines adjusted"
    );
    // With both hooks, then with the Rust one only, then with none: what each part costs.
    for (name, disable) in [
        (
            "cpq pricing of a 200-line quote with bundles and two hooks",
            None,
        ),
        ("cpq pricing, the Rust hook only", Some("contract-prices")),
        ("cpq pricing, no hook", Some("charm-prices")),
    ] {
        if let Some(plugin) = disable {
            runtime.block_on(ok(
                &pricing,
                "PATCH",
                &format!("/api/v1/plugins/{plugin}"),
                Some(&json!({ "status": "disabled" })),
            ));
        }
        group.bench_function(name, |b| {
            b.to_async(&runtime).iter(|| async {
                ok(&pricing, "POST", "/api/v1/plugins/cpq/price", Some(&quote)).await
            });
        });
    }

    // After pricing: the pipeline's database keeps a checkpointing task busy for a while.
    // Seeding the pipeline takes minutes: skip it when a filter leaves out its benchmark.
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    if filter
        .as_ref()
        .is_none_or(|f| PIPELINE_BENCH.contains(f.as_str()))
    {
        let host = runtime.block_on(pipeline_host());
        let report = runtime.block_on(ok(&host, "GET", PIPELINE, None));
        assert_eq!(counted(&report), OPPORTUNITIES as i64, "{report}");
        group.bench_function(PIPELINE_BENCH, |b| {
            b.to_async(&runtime)
                .iter(|| async { ok(&host, "GET", PIPELINE, None).await });
        });
    }
    group.finish();
}

criterion_group!(sales, benches);
criterion_main!(sales);
