//! Host bindings generated from `wit/keel-platform-0.1.0`: the imports a plugin calls (traits
//! the host implements in [`super::call`]) and the exports the host calls.

wasmtime::component::bindgen!({
    world: "plugin",
    path: "../wit/keel-platform-0.1.0",
    imports: { default: async | trappable },
    exports: { default: async },
});

pub use keel::platform::types::{Error as WitError, FieldError as WitFieldError};
