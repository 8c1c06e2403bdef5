//! Host bindings generated from every released version of the host API, side by side.
//!
//! The host implements the newest version ([`latest`]) in [`super::call`] and its fabric
//! modules; older versions are served by [`super::adapt`], which adapts their calls to the
//! newest implementation. The host calls a plugin's exports through [`PluginPre`] and
//! [`Plugin`], which hide which version the plugin was built against.

use wasmtime::Store;
use wasmtime::component::InstancePre;

use super::call::CallState;

pub mod v0_1 {
    wasmtime::component::bindgen!({
        world: "plugin",
        path: "../wit/keel-platform-0.1.0",
        imports: { default: async | trappable },
        exports: { default: async },
    });
}

pub mod v0_2 {
    wasmtime::component::bindgen!({
        world: "plugin",
        path: "../wit/keel-platform-0.2.2",
        imports: { default: async | trappable },
        exports: { default: async },
    });
}

/// The newest version of the host API: what the host implements and speaks internally.
pub use v0_2 as latest;

pub use latest::keel::platform::types::{Error as WitError, FieldError as WitFieldError};

/// A released version of the host API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ApiVersion {
    V0_1,
    V0_2,
}

impl ApiVersion {
    /// Every version this host serves, oldest first.
    pub const ALL: [Self; 2] = [Self::V0_1, Self::V0_2];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::V0_1 => "0.1.0",
            Self::V0_2 => "0.2.2",
        }
    }

    /// The version serving a plugin built against `version` ("0.1.0", "0.2.3"): the one of
    /// the same major (for 0.x, the same minor) at least as new.
    pub fn serving(version: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|served| super::compatible(version, served.as_str()))
    }

    /// Links this version's interfaces.
    pub fn add_to_linker(
        self,
        linker: &mut wasmtime::component::Linker<CallState>,
    ) -> wasmtime::Result<()> {
        use wasmtime::component::HasSelf;
        match self {
            Self::V0_1 => v0_1::Plugin::add_to_linker::<_, HasSelf<_>>(linker, |state| state),
            Self::V0_2 => v0_2::Plugin::add_to_linker::<_, HasSelf<_>>(linker, |state| state),
        }
    }
}

/// An instantiation template of a plugin, of whichever version it was built against.
#[derive(Clone)]
pub enum PluginPre {
    V0_1(v0_1::PluginPre<CallState>),
    V0_2(v0_2::PluginPre<CallState>),
}

impl PluginPre {
    /// Checks that a linked component exports the world of `version`.
    pub fn new(version: ApiVersion, pre: InstancePre<CallState>) -> wasmtime::Result<Self> {
        Ok(match version {
            ApiVersion::V0_1 => Self::V0_1(v0_1::PluginPre::new(pre)?),
            ApiVersion::V0_2 => Self::V0_2(v0_2::PluginPre::new(pre)?),
        })
    }

    pub async fn instantiate_async(
        &self,
        store: &mut Store<CallState>,
    ) -> wasmtime::Result<Plugin> {
        Ok(match self {
            Self::V0_1(pre) => Plugin::V0_1(pre.instantiate_async(store).await?),
            Self::V0_2(pre) => Plugin::V0_2(pre.instantiate_async(store).await?),
        })
    }
}

/// An instance of a plugin. Its exports take and give the newest version's types.
pub enum Plugin {
    V0_1(v0_1::Plugin),
    V0_2(v0_2::Plugin),
}

type Manifest = latest::keel::platform::plugin_meta::PluginManifest;
type Request = latest::keel::platform::http::Request;
type Response = latest::keel::platform::http::Response;
type Event = latest::keel::platform::events::Event;

impl Plugin {
    pub async fn call_manifest(&self, store: &mut Store<CallState>) -> wasmtime::Result<Manifest> {
        match self {
            Self::V0_1(plugin) => Ok(plugin.call_manifest(store).await?.into()),
            Self::V0_2(plugin) => plugin.call_manifest(store).await,
        }
    }

    pub async fn call_migrate(
        &self,
        store: &mut Store<CallState>,
        from: Option<&str>,
    ) -> wasmtime::Result<Result<(), WitError>> {
        match self {
            Self::V0_1(plugin) => Ok(plugin.call_migrate(store, from).await?.map_err(Into::into)),
            Self::V0_2(plugin) => plugin.call_migrate(store, from).await,
        }
    }

    pub async fn call_handle_http(
        &self,
        store: &mut Store<CallState>,
        request: &Request,
    ) -> wasmtime::Result<Response> {
        match self {
            Self::V0_1(plugin) => Ok(plugin
                .call_handle_http(store, &request.clone().into())
                .await?
                .into()),
            Self::V0_2(plugin) => plugin.call_handle_http(store, request).await,
        }
    }

    pub async fn call_on_event(
        &self,
        store: &mut Store<CallState>,
        event: &Event,
    ) -> wasmtime::Result<Result<(), WitError>> {
        match self {
            Self::V0_1(plugin) => Ok(plugin
                .call_on_event(store, &event.clone().into())
                .await?
                .map_err(Into::into)),
            Self::V0_2(plugin) => plugin.call_on_event(store, event).await,
        }
    }

    pub async fn call_invoke(
        &self,
        store: &mut Store<CallState>,
        operation: &str,
        input: &str,
    ) -> wasmtime::Result<Result<String, WitError>> {
        let input = input.to_owned();
        match self {
            Self::V0_1(plugin) => Ok(plugin
                .call_invoke(store, operation, &input)
                .await?
                .map_err(Into::into)),
            Self::V0_2(plugin) => plugin.call_invoke(store, operation, &input).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use sha2::{Digest as _, Sha256};

    /// Released WIT never changes: `wit/released.sha256` holds the hash of every released
    /// file. A change belongs in a new version's folder.
    #[test]
    fn released_wit_is_frozen() {
        let wit = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit");
        let list = std::fs::read_to_string(wit.join("released.sha256")).expect("the list");
        let mut checked = 0;
        for line in list.lines().filter(|l| !l.trim().is_empty()) {
            let (hash, file) = line.split_once("  ").expect("`<sha256>  <file>` lines");
            let bytes = std::fs::read(wit.join(file)).expect("a released file");
            assert_eq!(
                hex::encode(Sha256::digest(&bytes)),
                hash,
                "wit/{file} is released and frozen; put the change in a new version's folder \
                 (see wit/VERSIONING.md)"
            );
            checked += 1;
        }
        assert!(checked > 0, "wit/released.sha256 lists no file");
    }
}
