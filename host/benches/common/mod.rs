//! What the benchmarks that run plugins share: the components `scripts/build-plugins` made,
//! and requests that must succeed.

use std::path::PathBuf;

use keel_host::testing::PluginHost;
use serde_json::Value;

/// A component under `target/` (e.g. `wasm32-wasip2/plugin/sfa.wasm`).
pub fn component(relative: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target")
        .join(relative);
    std::fs::read(&path).unwrap_or_else(|error| {
        panic!(
            "{}: {error}; build the plugins first with scripts/build-plugins",
            path.display()
        )
    })
}

/// A request as the administrator that must succeed; its JSON answer.
#[allow(dead_code, reason = "not every benchmark calls routes")]
pub async fn ok(host: &PluginHost, method: &str, uri: &str, body: Option<&Value>) -> Value {
    let (status, reply) = host.request_host(method, uri, body).await.expect("a reply");
    assert!(
        (200..300).contains(&status),
        "{method} {uri}: {status} {reply}"
    );
    reply
}
