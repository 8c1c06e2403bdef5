//! Write Keel plugins in Rust.
//!
//! A plugin is a WebAssembly component for the world `keel:platform/plugin@0.2.2`. This crate
//! generates the bindings and puts a small API in front of them: typed [`storage`] with serde,
//! [`money`] conversions to `rust_decimal`, an HTTP [`Router`], the [`Error`] every host call
//! and export returns, and the [`export!`] macro.
//!
//! ```no_run
//! use keel_sdk::{Error, Manifest, Plugin, Request, Response, Router};
//!
//! struct Hello;
//!
//! impl Plugin for Hello {
//!     fn manifest() -> Manifest {
//!         Manifest::new("hello", "1.0.0", "Says hello").capabilities(&["storage"])
//!     }
//!
//!     fn handle_http(request: Request) -> Response {
//!         Router::new()
//!             .get("/greeting", |_request, _params| Ok(Response::json(200, "hello")))
//!             .handle(request)
//!     }
//! }
//!
//! keel_sdk::export!(Hello);
//! ```
//!
//! Build with `cargo build --release --target wasm32-wasip2`, then
//! `keel plugin install target/wasm32-wasip2/release/hello.wasm`.

pub mod dates;
pub mod money;
pub mod router;
pub mod storage;

#[doc(hidden)]
#[allow(
    unsafe_code,
    reason = "the generated canonical-ABI glue is unsafe by nature"
)]
#[allow(
    clippy::too_many_arguments,
    reason = "generated code mirrors the WIT signatures"
)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "plugin",
        path: "../wit/keel-platform-0.2.2",
        pub_export_macro: true,
        export_macro_name: "export_bindings",
        default_bindings_module: "keel_sdk::bindings",
        generate_all,
    });
}

pub use bindings::keel::platform::events::Event;
pub use bindings::keel::platform::http::{Header, Request, Response};
pub use bindings::keel::platform::plugin_meta::{
    ExtensionPoint, OnFailure, PartyField, PluginManifest as Manifest,
};
pub use bindings::keel::platform::types::{Error, FieldError};
pub use bindings::keel::platform::{authz, calls, events, hooks, ledger, log, parties};
pub use router::Router;

/// A plugin's exports. Only `manifest` is required; the others answer "not supported".
pub trait Plugin {
    /// Name, version, description and the capabilities the plugin asks for.
    fn manifest() -> Manifest;

    /// Brings the plugin's data from version `from` (none on first enable) to this one. Runs
    /// in one transaction: on an error nothing it wrote is kept.
    fn migrate(_from: Option<String>) -> Result<(), Error> {
        Ok(())
    }

    /// Answers a request under `/api/v1/plugins/<name>/`. A status of 400 or more rolls back
    /// everything the call wrote.
    fn handle_http(_request: Request) -> Response {
        Response::problem(404, "this plugin has no HTTP routes")
    }

    /// Handles an event the plugin subscribed to.
    fn on_event(_event: Event) -> Result<(), Error> {
        Ok(())
    }

    /// An operation the host or other plugins call with JSON input.
    fn invoke(operation: String, _input: String) -> Result<String, Error> {
        Err(Error::NotFound(format!("no operation {operation:?}")))
    }
}

/// Exports a type implementing [`Plugin`] as the component's exports.
#[macro_export]
macro_rules! export {
    ($plugin:ty) => {
        #[allow(
            unsafe_code,
            reason = "the generated canonical-ABI glue is unsafe by nature"
        )]
        const _: () = {
            struct KeelExports;
            impl $crate::bindings::Guest for KeelExports {
                fn manifest() -> $crate::Manifest {
                    <$plugin as $crate::Plugin>::manifest()
                }
                fn migrate(from: Option<String>) -> Result<(), $crate::Error> {
                    <$plugin as $crate::Plugin>::migrate(from)
                }
                fn handle_http(request: $crate::Request) -> $crate::Response {
                    <$plugin as $crate::Plugin>::handle_http(request)
                }
                fn on_event(event: $crate::Event) -> Result<(), $crate::Error> {
                    <$plugin as $crate::Plugin>::on_event(event)
                }
                fn invoke(operation: String, input: String) -> Result<String, $crate::Error> {
                    <$plugin as $crate::Plugin>::invoke(operation, input)
                }
            }
    $crate::bindings::export_bindings!(KeelExports with_types_in $crate::bindings);
        };
    };
}

impl Manifest {
    pub fn new(name: &str, version: &str, description: &str) -> Self {
        Self {
            name: name.to_owned(),
            version: version.to_owned(),
            description: description.to_owned(),
            capabilities: Vec::new(),
            subscriptions: Vec::new(),
            collections: Vec::new(),
            extension_points: Vec::new(),
            hooks: Vec::new(),
            operations: Vec::new(),
            party_fields: Vec::new(),
        }
    }

    /// Declares a collection's indexes: `(index name, fields)`.
    pub fn collection(mut self, name: &str, indexes: &[(&str, &[&str])]) -> Self {
        use bindings::keel::platform::plugin_meta::{Collection, Index};
        self.collections.push(Collection {
            name: name.to_owned(),
            indexes: indexes
                .iter()
                .map(|(index, fields)| Index {
                    name: (*index).to_owned(),
                    fields: fields.iter().map(|f| (*f).to_owned()).collect(),
                })
                .collect(),
        });
        self
    }

    /// Operations of `invoke` that other plugins may call and hooks may name.
    pub fn operations(mut self, operations: &[&str]) -> Self {
        self.operations = operations.iter().map(|o| (*o).to_owned()).collect();
        self
    }

    /// Declares an extension point this plugin runs with `hooks::run`.
    pub fn extension_point(mut self, point: ExtensionPoint) -> Self {
        self.extension_points.push(point);
        self
    }

    /// Implements another plugin's extension point with one of this plugin's operations.
    pub fn hook(mut self, point: &str, operation: &str, order: i32) -> Self {
        self.hooks
            .push(bindings::keel::platform::plugin_meta::Hook {
                point: point.to_owned(),
                operation: operation.to_owned(),
                order,
            });
        self
    }

    /// Adds a custom field to parties.
    pub fn party_field(mut self, field: PartyField) -> Self {
        self.party_fields.push(field);
        self
    }

    /// Host capabilities: `ledger:read`, `ledger:post`, `parties:read`, `parties:write`,
    /// `storage`.
    pub fn capabilities(mut self, capabilities: &[&str]) -> Self {
        self.capabilities = capabilities.iter().map(|c| (*c).to_owned()).collect();
        self
    }

    pub fn subscriptions(mut self, topics: &[&str]) -> Self {
        self.subscriptions = topics.iter().map(|t| (*t).to_owned()).collect();
        self
    }
}

impl Error {
    /// One invalid field.
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::Invalid(vec![FieldError {
            field: field.to_owned(),
            message: message.into(),
        }])
    }

    /// The HTTP status this error answers with.
    pub fn status(&self) -> u16 {
        match self {
            Self::NotFound(_) => 404,
            Self::Invalid(_) => 422,
            Self::Denied(_) => 403,
            Self::Conflict(_) => 409,
            Self::LimitExceeded(_) => 429,
            Self::Internal(_) => 500,
        }
    }

    /// The same error with its fields under `prefix` (`amount` becomes `opportunity.amount`,
    /// an error about the whole input becomes one about `prefix`).
    pub fn within(self, prefix: &str) -> Self {
        match self {
            Self::Invalid(fields) => Self::Invalid(
                fields
                    .into_iter()
                    .map(|mut f| {
                        f.field = if f.field.is_empty() {
                            prefix.to_owned()
                        } else {
                            format!("{prefix}.{}", f.field)
                        };
                        f
                    })
                    .collect(),
            ),
            other => other,
        }
    }

    /// What went wrong, in one sentence.
    pub fn detail(&self) -> String {
        match self {
            Self::NotFound(m)
            | Self::Denied(m)
            | Self::Conflict(m)
            | Self::LimitExceeded(m)
            | Self::Internal(m) => m.clone(),
            Self::Invalid(errors) => errors
                .iter()
                .map(|e| format!("{}: {}", e.field, e.message))
                .collect::<Vec<_>>()
                .join("; "),
        }
    }
}

impl From<serde_json::Error> for Error {
    fn from(error: serde_json::Error) -> Self {
        Self::invalid("body", format!("is not the JSON expected: {error}"))
    }
}

impl Request {
    /// The body parsed as JSON into `T`; an invalid body is a 422 naming the field.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, Error> {
        Ok(serde_json::from_slice(&self.body)?)
    }

    /// Like [`Request::json`] for routes whose fields are all optional: no body, or `null`,
    /// is `T::default()`.
    pub fn optional_json<T: serde::de::DeserializeOwned + Default>(&self) -> Result<T, Error> {
        if self.body.iter().all(u8::is_ascii_whitespace) {
            return Ok(T::default());
        }
        Ok(self.json::<Option<T>>()?.unwrap_or_default())
    }

    /// The query string's parameters, percent-decoded, in order.
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        form_pairs(&self.query)
    }

    /// The first value of query parameter `name`.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query_pairs()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, value)| value)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }
}

impl Response {
    /// A JSON response.
    pub fn json<T: serde::Serialize + ?Sized>(status: u16, value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => Self {
                status,
                headers: vec![Header {
                    name: "content-type".to_owned(),
                    value: "application/json".to_owned(),
                }],
                body,
            },
            Err(error) => Self::problem(
                500,
                &format!("the response could not be serialized: {error}"),
            ),
        }
    }

    /// An RFC 9457 problem response.
    pub fn problem(status: u16, detail: &str) -> Self {
        let body = serde_json::json!({ "status": status, "detail": detail });
        Self {
            status,
            headers: vec![Header {
                name: "content-type".to_owned(),
                value: "application/problem+json".to_owned(),
            }],
            body: body.to_string().into_bytes(),
        }
    }

    /// The problem response for an error, with the invalid fields listed.
    pub fn error(error: &Error) -> Self {
        let mut body = serde_json::json!({ "status": error.status(), "detail": error.detail() });
        if let Error::Invalid(errors) = error {
            body["errors"] = errors
                .iter()
                .map(|e| serde_json::json!({ "field": e.field, "message": e.message }))
                .collect();
        }
        Self {
            status: error.status(),
            headers: vec![Header {
                name: "content-type".to_owned(),
                value: "application/problem+json".to_owned(),
            }],
            body: body.to_string().into_bytes(),
        }
    }
}

/// The JSON input of an operation (`Plugin::invoke`) into `T`; anything else is `invalid`,
/// naming `input`.
pub fn operation_input<T: serde::de::DeserializeOwned>(input: &str) -> Result<T, Error> {
    serde_json::from_str(input)
        .map_err(|e| Error::invalid("input", format!("is not the JSON expected: {e}")))
}

/// `Denied` unless the acting user holds `permission`.
pub fn require(permission: &str) -> Result<(), Error> {
    if allowed(permission) {
        Ok(())
    } else {
        Err(Error::Denied(format!(
            "this needs the permission {permission}"
        )))
    }
}

/// The name-value pairs of `application/x-www-form-urlencoded` text (a query string, or the
/// body of an HTML form post), decoded, in order.
pub fn form_pairs(text: &str) -> Vec<(String, String)> {
    text.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(name), percent_decode(value))
        })
        .collect()
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a byte.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => decoded.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(high), Some(low)) => {
                        decoded.push((high * 16 + low) as u8);
                        i += 2;
                    }
                    _ => decoded.push(b'%'),
                }
            }
            other => decoded.push(other),
        }
        i += 1;
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

/// Collects the invalid fields of an input, to answer with all of them at once.
#[derive(Debug, Default)]
pub struct FieldErrors(Vec<FieldError>);

impl FieldErrors {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }

    /// Adds the fields of an `invalid` error; any other error is returned as it is.
    pub fn absorb(&mut self, error: Error) -> Result<(), Error> {
        match error {
            Error::Invalid(errors) => {
                self.0.extend(errors);
                Ok(())
            }
            other => Err(other),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok` when nothing was added, else one `invalid` error naming every field.
    pub fn finish(self) -> Result<(), Error> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Error::Invalid(self.0))
        }
    }
}

/// Which owners' records a user may see under one permission, as the authz model says: their
/// own, their team's (they and their direct reports) or everyone's. Plugins that keep an owner
/// on their records (a lead, an opportunity, a quote) filter with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reach {
    /// The owners covered; `None` for all.
    owners: Option<Vec<i64>>,
}

impl Reach {
    /// The reach of `permission` (`plugins.sfa.leads:read`); `None` when the acting user lacks
    /// it, or the call acts for no user.
    pub fn of(permission: &str) -> Option<Self> {
        let owners = match authz::scope_of(permission)? {
            authz::Scope::All => None,
            authz::Scope::Team => Some(authz::team()),
            authz::Scope::Own => Some(vec![user_id()?]),
        };
        Some(Self { owners })
    }

    /// Everyone's records: for calls the plugin makes on its own behalf.
    pub fn all() -> Self {
        Self { owners: None }
    }

    /// Whether a record owned by `owner` is within reach; an unowned one only for `all`.
    pub fn covers(&self, owner: Option<i64>) -> bool {
        match (&self.owners, owner) {
            (None, _) => true,
            (Some(owners), Some(owner)) => owners.contains(&owner),
            (Some(_), None) => false,
        }
    }

    /// The owners covered, ascending; `None` for all.
    pub fn owners(&self) -> Option<&[i64]> {
        self.owners.as_deref()
    }
}

/// Whether the user the call acts for holds `permission` (`resource:action`).
pub fn allowed(permission: &str) -> bool {
    authz::allowed(permission)
}

/// The user the call acts for, if any.
pub fn user_id() -> Option<i64> {
    authz::principal().user_id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_decoded_like_forms() {
        let request = Request {
            method: "GET".to_owned(),
            path: "/".to_owned(),
            query: "q=Acme+%26+Co&stage=&%zz=1&owner=7".to_owned(),
            headers: Vec::new(),
            body: Vec::new(),
        };
        assert_eq!(request.query_param("q").as_deref(), Some("Acme & Co"));
        assert_eq!(request.query_param("stage").as_deref(), Some(""));
        assert_eq!(request.query_param("%zz").as_deref(), Some("1"));
        assert_eq!(request.query_param("owner").as_deref(), Some("7"));
        assert_eq!(request.query_param("missing"), None);
    }
}
