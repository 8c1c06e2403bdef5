//! The one wasmtime engine of the process and the on-disk cache of compiled components.
//!
//! Compiling a component costs from a tenth of a second (Rust) to tens of seconds (Python), so
//! every component is compiled once per engine configuration and kept under the data
//! directory, keyed by the engine's compatibility hash and the component's SHA-256: a restart
//! maps the compiled code back in a millisecond or so instead of compiling again.

use std::hash::{Hash as _, Hasher as _};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::Context as _;
use wasmtime::component::Component;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::limits::LIMITS_CEILING;

/// Calls that may run at once in a process; more wait for a free slot. Each holds an instance
/// slot of the pooling allocator.
pub const CALLS_IN_FLIGHT_MAX: usize = 64;

/// Instance slots the pooling allocator reserves. A component is several core instances (a
/// Python plugin about ten), so the pool is sized for the calls in flight, the instances used
/// while installing, and headroom.
const POOL_COMPONENT_INSTANCES: u32 = 2 * CALLS_IN_FLIGHT_MAX as u32;
const POOL_CORE_INSTANCES: u32 = 16 * POOL_COMPONENT_INSTANCES;
const POOL_MEMORIES: u32 = 4 * POOL_COMPONENT_INSTANCES;
const POOL_TABLES: u32 = 8 * POOL_COMPONENT_INSTANCES;
/// Elements per table: interpreters (Python, JavaScript) have tens of thousands of functions.
const POOL_TABLE_ELEMENTS: usize = 200_000;
/// Size of the per-instance host data (`vmctx`) of a core instance; large for interpreters.
const POOL_CORE_INSTANCE_BYTES: usize = 4 * 1024 * 1024;

/// Linear memory (and table) pages kept mapped between calls rather than returned to the
/// kernel: a fresh call of a small plugin then touches no new pages.
const KEEP_RESIDENT_BYTES: usize = 256 * 1024;

/// WebAssembly stack per call. Deep recursion traps with a stack overflow rather than
/// growing without bound.
const WASM_STACK_BYTES: usize = 1024 * 1024;

/// Fuel a long computation burns between yields to the async executor, so that a plugin busy
/// for its whole budget does not hold a worker thread for that long at a stretch.
const FUEL_YIELD_INTERVAL: u64 = 10_000_000;

fn config(pooling: bool) -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.consume_fuel(true);
    config.max_wasm_stack(WASM_STACK_BYTES);
    if pooling {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(POOL_COMPONENT_INSTANCES)
            .total_core_instances(POOL_CORE_INSTANCES)
            .total_memories(POOL_MEMORIES)
            .total_tables(POOL_TABLES)
            .table_elements(POOL_TABLE_ELEMENTS)
            .max_core_instance_size(POOL_CORE_INSTANCE_BYTES)
            .max_memories_per_component(16)
            .max_tables_per_component(16)
            .max_memory_size(LIMITS_CEILING.memory_bytes as usize)
            .linear_memory_keep_resident(KEEP_RESIDENT_BYTES)
            .table_keep_resident(KEEP_RESIDENT_BYTES);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    config
}

/// The engine every plugin of the process runs on. The pooling allocator reserves address
/// space up front; where the system refuses that (a small `ulimit -v`), instances are
/// allocated on demand instead, slower but the same otherwise.
pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| match Engine::new(&config(true)) {
        Ok(engine) => engine,
        Err(error) => {
            tracing::warn!(
                error = %error,
                "the pooling allocator is unavailable; plugin instances are allocated on demand"
            );
            Engine::new(&config(false)).expect("the default wasmtime configuration is valid")
        }
    })
}

pub fn fuel_yield_interval() -> u64 {
    FUEL_YIELD_INTERVAL
}

/// Compiled components on disk.
#[derive(Debug, Clone)]
pub struct CompiledCache {
    dir: PathBuf,
}

impl CompiledCache {
    /// A cache under `root` for the process's engine; engines built differently (another
    /// wasmtime, other settings) use another folder.
    pub fn new(root: &Path) -> Self {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine().precompile_compatibility_hash().hash(&mut hasher);
        Self {
            dir: root.join(format!("{:016x}", hasher.finish())),
        }
    }

    fn path(&self, component_hash: &str) -> PathBuf {
        self.dir.join(format!("{component_hash}.cwasm"))
    }

    /// The compiled component, if this engine compiled it before.
    pub fn load(&self, component_hash: &str) -> Option<Component> {
        let path = self.path(component_hash);
        if !path.exists() {
            return None;
        }
        // SAFETY: deserializing runs the machine code in the file. The file is written only
        // by `store` below, with this engine's compatibility hash in its folder name and the
        // component's SHA-256 in its name, and renamed into place complete. Whoever can
        // change files in the data directory can change the database as well.
        #[expect(
            unsafe_code,
            reason = "loading our own compiled code; see SAFETY above"
        )]
        let loaded = unsafe { Component::deserialize_file(engine(), &path) };
        match loaded {
            Ok(component) => Some(component),
            Err(error) => {
                tracing::warn!(path = %path.display(), error = %error, "compiled plugin unusable; compiling again");
                None
            }
        }
    }

    /// Compiles `bytes` (slow: run it off the async executor) and keeps the result.
    pub fn compile(&self, component_hash: &str, bytes: &[u8]) -> anyhow::Result<Component> {
        let compiled = engine()
            .precompile_component(bytes)
            .map_err(super::wasm_error)?;
        if let Err(error) = self.store(component_hash, &compiled) {
            tracing::warn!(
                error = format!("{error:#}"),
                "could not cache a compiled plugin; it will be compiled again on restart"
            );
        }
        // SAFETY: `compiled` was produced by this engine a moment ago.
        #[expect(unsafe_code, reason = "deserializing what this engine just compiled")]
        let component = unsafe { Component::deserialize(engine(), &compiled) };
        component.map_err(super::wasm_error)
    }

    fn store(&self, component_hash: &str, compiled: &[u8]) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let path = self.path(component_hash);
        let partial = path.with_extension(format!("partial-{}", std::process::id()));
        std::fs::write(&partial, compiled)
            .with_context(|| format!("writing {}", partial.display()))?;
        std::fs::rename(&partial, &path).with_context(|| format!("renaming to {}", path.display()))
    }
}
