//! The OpenAPI document matches the routes the server answers.

mod common;

use axum::http::Method;

/// The routes the ledger promises; a test fails when one is missing from the document.
const PROMISED: &[(&str, &str)] = &[
    ("get", "/api/v1/ledger/accounts"),
    ("post", "/api/v1/ledger/accounts"),
    ("get", "/api/v1/ledger/accounts/{code}"),
    ("patch", "/api/v1/ledger/accounts/{code}"),
    ("get", "/api/v1/ledger/accounts/{code}/lines"),
    ("get", "/api/v1/ledger/entries"),
    ("post", "/api/v1/ledger/entries"),
    ("post", "/api/v1/ledger/entries:batch"),
    ("get", "/api/v1/ledger/entries/{id}"),
    ("post", "/api/v1/ledger/entries/{id}/reverse"),
    ("get", "/api/v1/ledger/trial-balance"),
    ("get", "/api/v1/ledger/balance-sheet"),
    ("get", "/api/v1/ledger/income-statement"),
    ("get", "/api/v1/ledger/fiscal-years"),
    ("post", "/api/v1/ledger/fiscal-years"),
    ("get", "/api/v1/ledger/fiscal-years/{id}"),
    ("post", "/api/v1/ledger/fiscal-years/{id}/close"),
    ("post", "/api/v1/ledger/fiscal-years/{id}/reopen"),
    ("get", "/api/v1/ledger/periods"),
    ("post", "/api/v1/ledger/periods/{id}/close"),
    ("post", "/api/v1/ledger/periods/{id}/reopen"),
];

fn documented_operations() -> Vec<(String, String)> {
    let document =
        serde_json::to_value(keel_host::api::openapi()).expect("the document serializes");
    let mut operations = Vec::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("a path item").keys() {
            if ["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                operations.push((method.clone(), path.clone()));
            }
        }
    }
    operations
}

#[test]
fn every_promised_route_is_documented() {
    let documented = documented_operations();
    for (method, path) in PROMISED {
        assert!(
            documented.iter().any(|(m, p)| m == method && p == path),
            "{method} {path} is missing from the OpenAPI document"
        );
    }
}

#[test]
fn the_document_is_openapi_3_1_and_every_operation_has_a_summary() {
    let document =
        serde_json::to_value(keel_host::api::openapi()).expect("the document serializes");
    assert!(
        document["openapi"]
            .as_str()
            .expect("version")
            .starts_with("3.1")
    );
    for (method, path) in documented_operations() {
        let operation = &document["paths"][&path][&method];
        assert!(
            operation["summary"].as_str().is_some_and(|s| !s.is_empty()),
            "{method} {path} has no summary"
        );
    }
}

on_both_backends! {
    async fn every_documented_operation_is_served(app: TestApp) {
        for (method, path) in documented_operations() {
            let concrete = path.replace("{code}", "1020").replace("{id}", "1");
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).expect("a method");
            let body = (method != Method::GET).then(|| b"{}".to_vec());
            let reply = app.request(method.clone(), &concrete, &[], body).await;
            assert_ne!(reply.status, 405, "{method} {path} is documented but not routed");
            let unrouted = reply.status == 404 && reply.text.contains("no route for");
            assert!(!unrouted, "{method} {path} is documented but not routed: {}", reply.text);
        }
        let served = app.get("/api/v1/openapi.json").await;
        assert_eq!(served.status, 200);
        assert!(served.body["paths"]["/api/v1/ledger/entries:batch"]["post"].is_object());
    }
}
