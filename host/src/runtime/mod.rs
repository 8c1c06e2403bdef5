//! The plugin runtime: business modules as sandboxed WebAssembly components against the WIT
//! packages `keel:platform@0.1.0` and `@0.2.1` (`wit/`), served side by side.
//!
//! One engine with the pooling allocator serves every plugin; each component is compiled once
//! and kept on disk ([`engine::CompiledCache`]); each installed version has an `InstancePre`,
//! and every call gets a fresh store (a trap poisons a store, and calls must share nothing),
//! runs within named [`limits`], and does all its writes in one transaction that commits only
//! when the call succeeds.

mod adapt;
mod bindings;
mod call;
pub mod capability;
pub mod declarations;
pub mod dispatch;
pub mod engine;
mod fabric;
pub mod http;
mod index;
pub mod limits;
pub mod public;
pub mod registry;
mod schema;
mod stats;
mod storage;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use wasmtime::Store;
use wasmtime::component::{Component, Linker};

use crate::authz::Authz;
use crate::db::{Database, Tx};
use crate::error::{Error, Result};
pub use bindings::ApiVersion;
use bindings::{Plugin, PluginPre};
use call::{CallContext, CallState, Services, Stop};
pub use dispatch::{DEFAULT_POLICY, DispatchPolicy};
/// The key of a record in an index, for tools that load records in bulk.
pub use index::key_of as index_key_of;
pub use stats::PluginStats;

/// Interfaces of the host API a component may import, in every version served.
const KEEL_INTERFACES: &[&str] = &[
    "types",
    "ledger",
    "parties",
    "storage",
    "authz",
    "log",
    "http",
    "events",
    "calls",
    "hooks",
    "plugin-meta",
];

/// WASI 0.2 interfaces linked for every plugin (toolchains import them even when the plugin
/// uses none). They are linked with a context that grants nothing: no files, no environment,
/// no network; only clocks and randomness answer.
const WASI_INTERFACES: &[&str] = &[
    "wasi:io/error",
    "wasi:io/poll",
    "wasi:io/streams",
    "wasi:clocks/wall-clock",
    "wasi:clocks/monotonic-clock",
    "wasi:random/random",
    "wasi:random/insecure",
    "wasi:random/insecure-seed",
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
    "wasi:filesystem/types",
    "wasi:filesystem/preopens",
    "wasi:sockets/network",
    "wasi:sockets/instance-network",
    "wasi:sockets/udp",
    "wasi:sockets/udp-create-socket",
    "wasi:sockets/tcp",
    "wasi:sockets/tcp-create-socket",
    "wasi:sockets/ip-name-lookup",
];

/// The plugin runtime of a process.
pub struct Runtime {
    db: Database,
    authz: Arc<Authz>,
    cache: engine::CompiledCache,
    linker: Linker<CallState>,
    /// The versions of the host API this runtime serves.
    served: Vec<ApiVersion>,
    /// Instantiation templates by component hash.
    prepared: Mutex<HashMap<String, PluginPre>>,
    stats: stats::Stats,
    /// Bounds the calls in flight to the instance slots the engine reserved.
    slots: tokio::sync::Semaphore,
    /// Components this runtime compiled (rather than loaded from the cache).
    compilations: std::sync::atomic::AtomicU64,
    /// Request rate of plugins whose admin set one, by company and plugin.
    /// A bucket holding one second's worth of each plugin's request rate.
    rates: Mutex<HashMap<(i64, String), public::Bucket>>,
    public: public::PublicLimiter,
    dispatch_policy: Mutex<DispatchPolicy>,
    /// This runtime, for host calls that call other plugins.
    me: Weak<Runtime>,
}

/// How a runtime is set up beyond its database.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// The versions of the host API served; all by default. Serving fewer shows how an older
    /// host answers a newer plugin.
    pub served: Vec<ApiVersion>,
    pub dispatch_policy: DispatchPolicy,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        Self {
            served: ApiVersion::ALL.to_vec(),
            dispatch_policy: DEFAULT_POLICY,
        }
    }
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

/// How a call ended, before the caller decides to commit.
struct Finished<T> {
    result: Result<T>,
    state: CallState,
}

impl Runtime {
    /// The runtime, keeping compiled components under `cache_root`.
    pub fn new(db: Database, authz: Arc<Authz>, cache_root: &Path) -> anyhow::Result<Arc<Self>> {
        Self::with_options(db, authz, cache_root, RuntimeOptions::default())
    }

    pub fn with_options(
        db: Database,
        authz: Arc<Authz>,
        cache_root: &Path,
        options: RuntimeOptions,
    ) -> anyhow::Result<Arc<Self>> {
        let mut linker = Linker::new(engine::engine());
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(wasm_error)?;
        for version in &options.served {
            version.add_to_linker(&mut linker).map_err(wasm_error)?;
        }
        Ok(Arc::new_cyclic(|me| Self {
            db,
            authz,
            cache: engine::CompiledCache::new(cache_root),
            linker,
            served: options.served,
            prepared: Mutex::new(HashMap::new()),
            stats: stats::Stats::default(),
            slots: tokio::sync::Semaphore::new(engine::CALLS_IN_FLIGHT_MAX),
            compilations: std::sync::atomic::AtomicU64::new(0),
            rates: Mutex::new(HashMap::new()),
            public: public::PublicLimiter::default(),
            dispatch_policy: Mutex::new(options.dispatch_policy),
            me: me.clone(),
        }))
    }

    fn services(&self) -> Services {
        Services {
            db: self.db.clone(),
            authz: self.authz.clone(),
            runtime: self.me.clone(),
        }
    }

    /// The compiled component with this hash: from memory, from the disk cache, or compiled
    /// from `bytes` (fetched from the database when not given).
    async fn component(&self, hash: &str, bytes: Option<&[u8]>) -> Result<Component> {
        let cache = self.cache.clone();
        let key = hash.to_owned();
        if let Some(component) = tokio::task::spawn_blocking(move || cache.load(&key))
            .await
            .map_err(anyhow::Error::from)?
        {
            return Ok(component);
        }
        let bytes = match bytes {
            Some(bytes) => bytes.to_vec(),
            None => registry::component_bytes(&self.db, hash).await?,
        };
        let cache = self.cache.clone();
        let key = hash.to_owned();
        self.compilations
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::task::spawn_blocking(move || cache.compile(&key, &bytes))
            .await
            .map_err(anyhow::Error::from)?
            .map_err(|error| Error::invalid("component", describe_compile_error(&error)))
    }

    /// The instantiation template of an installed component.
    async fn prepared(&self, hash: &str) -> Result<PluginPre> {
        if let Some(pre) = self.lock_prepared().get(hash) {
            return Ok(pre.clone());
        }
        let component = self.component(hash, None).await?;
        let pre = self.prepare(&component)?;
        self.lock_prepared().insert(hash.to_owned(), pre.clone());
        Ok(pre)
    }

    fn lock_prepared(&self) -> std::sync::MutexGuard<'_, HashMap<String, PluginPre>> {
        self.prepared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn served_list(&self) -> String {
        self.served
            .iter()
            .map(|v| v.as_str())
            .collect::<Vec<_>>()
            .join(" and ")
    }

    /// Links a component against the version of the host API it was built for, naming every
    /// import the host does not offer.
    fn prepare(&self, component: &Component) -> Result<PluginPre> {
        let built_for = api_version_of(component);
        let version = ApiVersion::serving(&built_for)
            .filter(|v| self.served.contains(v))
            .ok_or_else(|| {
                Error::invalid(
                    "component",
                    format!(
                        "is built against keel:platform@{built_for}, which this host does not \
                         serve (it serves {}); run a Keel release that serves {built_for}, or \
                         build the plugin against a version this host serves",
                        self.served_list()
                    ),
                )
            })?;
        let missing = missing_imports(component, &self.served);
        if !missing.is_empty() {
            return Err(Error::invalid(
                "component",
                format!(
                    "imports what this host does not offer (it serves keel:platform@{}): {}",
                    self.served_list(),
                    missing.join(", ")
                ),
            ));
        }
        let instance_pre = self
            .linker
            .instantiate_pre(component)
            .map_err(|error| Error::invalid("component", format!("cannot be linked: {error:#}")))?;
        PluginPre::new(version, instance_pre).map_err(|error| {
            Error::invalid(
                "component",
                format!(
                    "is not a Keel plugin (world keel:platform/plugin@{}): {error:#}",
                    version.as_str()
                ),
            )
        })
    }

    /// Loads every installed, enabled plugin, so that the first request finds it ready: from
    /// the compiled cache, compiling only what the cache lacks. Returns how many were loaded.
    pub async fn load_installed(&self) -> Result<usize> {
        let hashes = registry::enabled_component_hashes(&self.db).await?;
        for hash in &hashes {
            self.prepared(hash).await?;
        }
        Ok(hashes.len())
    }

    /// Runs one export on a fresh instance within the plugin's limits. `tx` continues a
    /// transaction the caller began; otherwise the call begins one when it first needs it.
    async fn run<T>(
        &self,
        pre: &PluginPre,
        context: CallContext,
        tx: Option<Tx>,
        export: impl AsyncFnOnce(&Plugin, &mut Store<CallState>) -> wasmtime::Result<T>,
        reports_error: impl Fn(&T) -> bool,
    ) -> Finished<T> {
        // A nested call (one plugin calling another) runs on its caller's slot: waiting for a
        // second slot while holding one could deadlock.
        let _slot = if context.depth == 0 {
            Some(
                self.slots
                    .acquire()
                    .await
                    .expect("the semaphore is never closed"),
            )
        } else {
            None
        };
        let started = Instant::now();
        let limits = context.limits;
        let company_id = context.company.id;
        let plugin = context.plugin.clone();
        let mut store = Store::new(
            engine::engine(),
            CallState::new(context, self.services(), tx),
        );
        store.limiter(|state| &mut state.limiter);
        let outcome = async {
            store.set_fuel(limits.fuel)?;
            store.fuel_async_yield_interval(Some(engine::fuel_yield_interval()))?;
            let instance = pre.instantiate_async(&mut store).await?;
            export(&instance, &mut store).await
        };
        let span = tracing::info_span!("plugin call", plugin = %plugin, company = company_id);
        let outcome = tokio::time::timeout(
            Duration::from_millis(limits.wall_time_ms),
            tracing::Instrument::instrument(outcome, span),
        )
        .await;
        let fuel_used = limits.fuel.saturating_sub(store.get_fuel().unwrap_or(0));
        let mut state = store.into_data();
        let result = match outcome {
            Ok(Ok(value)) => flush_audit(&mut state).await.map(|()| value),
            Ok(Err(error)) => Err(match Stop::of(&state, &error) {
                Some(stop) => limit_hit(&plugin, &stop, &limits),
                None => trapped(&plugin, &error),
            }),
            Err(_elapsed) => Err(limit_hit(&plugin, &Stop::WallTime, &limits)),
        };
        let outcome = match &result {
            Ok(value) if reports_error(value) => stats::Outcome::Error,
            Ok(_) => stats::Outcome::Ok,
            Err(Error::PluginFailed { limit: true, .. }) => stats::Outcome::LimitHit,
            Err(_) => stats::Outcome::Error,
        };
        let elapsed = started.elapsed();
        let label = match outcome {
            stats::Outcome::Ok => "ok",
            stats::Outcome::Error => "error",
            stats::Outcome::LimitHit => "limit",
        };
        metrics::counter!("keel_plugin_calls_total", "plugin" => plugin.clone(), "outcome" => label)
            .increment(1);
        metrics::histogram!("keel_plugin_call_duration_seconds", "plugin" => plugin.clone())
            .record(elapsed.as_secs_f64());
        self.stats
            .record(company_id, &plugin, outcome, elapsed, fuel_used);
        if state.denied > 0 {
            self.stats.record_denied(company_id, &plugin, state.denied);
        }
        Finished { result, state }
    }

    /// Admits one request to a plugin's routes, or refuses it with 429 when the plugin's
    /// request rate (if an admin set one) is used up.
    fn admit(&self, company_id: i64, plugin: &str, rate: Option<u32>) -> Result<()> {
        let Some(rate) = rate else {
            return Ok(());
        };
        let capacity = f64::from(rate);
        let now = Instant::now();
        let mut rates = self
            .rates
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let bucket = rates
            .entry((company_id, plugin.to_owned()))
            .or_insert_with(|| public::Bucket::full(capacity, now));
        if !bucket.take(capacity, capacity, now) {
            return Err(Error::TooManyRequests(format!(
                "plugin {plugin} takes at most {rate} requests per second; retry in a moment"
            )));
        }
        Ok(())
    }

    pub fn dispatch_policy(&self) -> DispatchPolicy {
        *self
            .dispatch_policy
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Changes how event deliveries are retried (tests shorten the backoff).
    pub fn set_dispatch_policy(&self, policy: DispatchPolicy) {
        *self
            .dispatch_policy
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = policy;
    }

    /// How many components this runtime compiled instead of loading them from the cache.
    pub fn compilations(&self) -> u64 {
        self.compilations.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn stats(&self, company_id: i64, plugin: &str) -> PluginStats {
        self.stats.of(company_id, plugin)
    }
}

/// Appends the audit records of a call's storage writes to its transaction, unless the
/// caller collects them itself.
async fn flush_audit(state: &mut CallState) -> Result<()> {
    if state.context.defer_audit || state.pending_audit.is_empty() {
        return Ok(());
    }
    let events = std::mem::take(&mut state.pending_audit);
    let tx = state
        .tx
        .as_mut()
        .expect("a call that wrote has a transaction");
    crate::audit::append(tx, &state.context.origin, &events).await?;
    Ok(())
}

fn limit_hit(plugin: &str, stop: &Stop, limits: &limits::Limits) -> Error {
    Error::PluginFailed {
        plugin: plugin.to_owned(),
        limit: true,
        detail: stop.describe(limits),
    }
}

fn trapped(plugin: &str, error: &wasmtime::Error) -> Error {
    if error.downcast_ref::<wasmtime::Trap>().is_none()
        && error.downcast_ref::<call::Stopped>().is_none()
    {
        // A host call failed (the database went away): the host's fault, not the plugin's.
        tracing::error!(
            plugin,
            error = format!("{error:?}"),
            "a host call of a plugin failed"
        );
    }
    Error::PluginFailed {
        plugin: plugin.to_owned(),
        limit: false,
        detail: format!("trapped: {}", first_line(&format!("{error:#}"))),
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or(text)
}

pub(crate) fn wasm_error(error: wasmtime::Error) -> anyhow::Error {
    anyhow::anyhow!("{error:#}")
}

/// Says what is wrong with bytes that do not compile as a component.
fn describe_compile_error(error: &anyhow::Error) -> String {
    format!(
        "is not a valid WebAssembly component: {}",
        first_line(&format!("{error:#}"))
    )
}

/// Checks the header before compiling, to tell a core module or another file from a component.
pub fn check_header(bytes: &[u8]) -> Result<()> {
    const MAGIC: &[u8] = b"\0asm";
    const COMPONENT_LAYER: [u8; 4] = [0x0d, 0x00, 0x01, 0x00];
    if bytes.len() < 8 || &bytes[..4] != MAGIC {
        return Err(Error::invalid(
            "component",
            "is not a WebAssembly file (it does not start with \\0asm)",
        ));
    }
    if bytes[4..8] != COMPONENT_LAYER {
        return Err(Error::invalid(
            "component",
            "is a core WebAssembly module, not a component: build it for wasm32-wasip2, with \
             componentize-py or componentize-js, or wrap it with `wasm-tools component new`",
        ));
    }
    Ok(())
}

/// The component's imports the host does not offer.
fn missing_imports(component: &Component, served: &[ApiVersion]) -> Vec<String> {
    let engine = engine::engine();
    component
        .component_type()
        .imports(engine)
        .map(|(name, _)| name.to_owned())
        .filter(|name| !offered(name, served))
        .collect()
}

/// Whether the host links an import of this name (semver-compatible versions included).
fn offered(name: &str, served: &[ApiVersion]) -> bool {
    let (interface, version) = name.split_once('@').unwrap_or((name, ""));
    if let Some(keel) = interface.strip_prefix("keel:platform/") {
        let introduced = match keel {
            "calls" | "hooks" => ApiVersion::V0_2,
            _ => ApiVersion::V0_1,
        };
        return KEEL_INTERFACES.contains(&keel)
            && ApiVersion::serving(version)
                .is_some_and(|v| v >= introduced && served.contains(&v));
    }
    WASI_INTERFACES.contains(&interface) && version.starts_with("0.2.")
}

/// Semver compatibility as the linker applies it: same major, and for 0.x the same minor;
/// the host must be at least as new.
fn compatible(wanted: &str, offered: &str) -> bool {
    let parse = |v: &str| -> Option<(u64, u64, u64)> {
        let mut parts = v.split('.').map(|p| p.parse::<u64>().ok());
        Some((parts.next()??, parts.next()??, parts.next()??))
    };
    match (parse(wanted), parse(offered)) {
        (Some(w), Some(o)) if w.0 == 0 => o.0 == 0 && o.1 == w.1 && o.2 >= w.2,
        (Some(w), Some(o)) => o.0 == w.0 && (o.1, o.2) >= (w.1, w.2),
        _ => false,
    }
}

/// The version of the host API a component was built against: the newest keel:platform
/// version among its imports (a plugin that imports nothing from Keel is taken as 0.1.0).
fn api_version_of(component: &Component) -> String {
    component
        .component_type()
        .imports(engine::engine())
        .filter_map(|(name, _)| {
            let (interface, version) = name.split_once('@')?;
            interface
                .starts_with("keel:platform/")
                .then(|| version.to_owned())
        })
        .max_by_key(|version| {
            version
                .split('.')
                .map(|p| p.parse::<u64>().unwrap_or(0))
                .collect::<Vec<_>>()
        })
        .unwrap_or_else(|| ApiVersion::V0_1.as_str().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_match_by_semver() {
        let all = ApiVersion::ALL;
        assert!(offered("keel:platform/ledger@0.1.0", &all));
        assert!(offered("keel:platform/ledger@0.2.0", &all));
        assert!(!offered("keel:platform/ledger@0.2.0", &[ApiVersion::V0_1]));
        assert!(!offered("keel:platform/ledger@0.1.1", &all));
        assert!(!offered("keel:platform/ledger@0.3.0", &all));
        assert!(!offered("keel:platform/calls@0.1.0", &all));
        assert!(offered("keel:platform/calls@0.2.0", &all));
        assert!(offered("keel:platform/authz@0.2.1", &all));
        assert!(offered("keel:platform/authz@0.2.2", &all));
        assert!(!offered("keel:platform/authz@0.2.3", &all));
        assert!(!offered("keel:platform/payroll@0.1.0", &all));
        assert!(offered("wasi:io/streams@0.2.6", &all));
        assert!(!offered("wasi:http/outgoing-handler@0.2.6", &all));
        assert_eq!(ApiVersion::serving("0.1.0"), Some(ApiVersion::V0_1));
        assert_eq!(ApiVersion::serving("0.2.0"), Some(ApiVersion::V0_2));
        assert_eq!(ApiVersion::serving("0.2.1"), Some(ApiVersion::V0_2));
        assert_eq!(ApiVersion::serving("0.2.2"), Some(ApiVersion::V0_2));
        assert_eq!(ApiVersion::serving("0.3.0"), None);
        assert!(compatible("1.2.0", "1.3.1"));
        assert!(!compatible("1.4.0", "1.3.1"));
    }

    #[test]
    fn the_header_tells_modules_and_other_files_from_components() {
        assert!(check_header(b"\0asm\x0d\x00\x01\x00rest").is_ok());
        let module = check_header(b"\0asm\x01\x00\x00\x00").expect_err("a core module");
        assert!(module.to_string().contains("core WebAssembly module"));
        let text = check_header(b"hello, world").expect_err("not wasm");
        assert!(text.to_string().contains("not a WebAssembly file"));
    }
}
