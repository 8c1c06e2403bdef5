//! Capabilities: the host interfaces a plugin asks for in its manifest and an admin grants.
//! A host call needs the capability granted *and*, when the call acts for a user, the user's
//! own permission: a plugin never reaches further than either.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use utoipa::openapi::{ObjectBuilder, RefOr, Schema, Type};

/// One host interface, or one half of it, or one operation of another plugin.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Capability {
    /// Chart of accounts, account and party balances: `ledger:read`.
    LedgerRead,
    /// Posting and reversing journal entries: `ledger:post`.
    LedgerPost,
    /// Reading and searching parties: `parties:read`.
    PartiesRead,
    /// Creating and changing parties: `parties:write`.
    PartiesWrite,
    /// The plugin's own collections of records: `storage`.
    Storage,
    /// Publishing events under the plugin's name: `events:publish`.
    EventsPublish,
    /// Receiving unauthenticated requests at `/api/v1/public/<company>/<plugin>/…` (web
    /// forms), rate limited per client: `http:public`.
    HttpPublic,
    /// Calling one operation of another plugin: `call:<plugin>/<operation>`.
    Call { plugin: String, operation: String },
}

impl Capability {
    /// The capabilities without parameters.
    pub const FIXED: [Self; 7] = [
        Self::LedgerRead,
        Self::LedgerPost,
        Self::PartiesRead,
        Self::PartiesWrite,
        Self::Storage,
        Self::EventsPublish,
        Self::HttpPublic,
    ];

    /// How the known capabilities are written, for error messages.
    pub fn known() -> String {
        let mut names: Vec<String> = Self::FIXED.iter().map(ToString::to_string).collect();
        names.push("call:<plugin>/<operation>".to_owned());
        names.join(", ")
    }

    pub fn parse(text: &str) -> Option<Self> {
        if let Some(target) = text.strip_prefix("call:") {
            let (plugin, operation) = target.split_once('/')?;
            let plugin_ok = !plugin.is_empty()
                && plugin
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            return (plugin_ok && !operation.is_empty() && !operation.contains('/')).then(|| {
                Self::Call {
                    plugin: plugin.to_owned(),
                    operation: operation.to_owned(),
                }
            });
        }
        Self::FIXED.into_iter().find(|c| c.to_string() == text)
    }
}

impl std::fmt::Display for Capability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::LedgerRead => f.write_str("ledger:read"),
            Self::LedgerPost => f.write_str("ledger:post"),
            Self::PartiesRead => f.write_str("parties:read"),
            Self::PartiesWrite => f.write_str("parties:write"),
            Self::Storage => f.write_str("storage"),
            Self::EventsPublish => f.write_str("events:publish"),
            Self::HttpPublic => f.write_str("http:public"),
            Self::Call { plugin, operation } => write!(f, "call:{plugin}/{operation}"),
        }
    }
}

impl Serialize for Capability {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Capability {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown capability {text:?}; known are {}",
                Self::known()
            ))
        })
    }
}

impl utoipa::PartialSchema for Capability {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(
                "ledger:read, ledger:post, parties:read, parties:write, storage, \
                 events:publish, http:public or call:<plugin>/<operation>",
            ))
            .into()
    }
}

impl utoipa::ToSchema for Capability {}

/// Parses capability names, naming the unknown ones.
pub fn parse_all(names: &[String]) -> Result<Vec<Capability>, Vec<String>> {
    let mut known = Vec::with_capacity(names.len());
    let mut unknown = Vec::new();
    for name in names {
        match Capability::parse(name) {
            Some(capability) => known.push(capability),
            None => unknown.push(name.clone()),
        }
    }
    if unknown.is_empty() {
        known.sort();
        known.dedup();
        Ok(known)
    } else {
        Err(unknown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_ones_are_named() {
        let call = Capability::Call {
            plugin: "cpq".to_owned(),
            operation: "price".to_owned(),
        };
        for capability in Capability::FIXED.into_iter().chain([call.clone()]) {
            assert_eq!(
                Capability::parse(&capability.to_string()),
                Some(capability.clone())
            );
            let json = serde_json::to_string(&capability).expect("serializes");
            assert_eq!(json, format!("\"{capability}\""));
            let back: Capability = serde_json::from_str(&json).expect("parses");
            assert_eq!(back, capability);
        }
        assert_eq!(call.to_string(), "call:cpq/price");
        assert_eq!(Capability::parse("call:cpq"), None);
        assert_eq!(Capability::parse("call:CPQ/price"), None);
        let names = ["storage".to_owned(), "files:write".to_owned()];
        assert_eq!(parse_all(&names), Err(vec!["files:write".to_owned()]));
    }
}
