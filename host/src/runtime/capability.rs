//! Capabilities: the host interfaces a plugin asks for in its manifest and an admin grants.
//! A host call needs the capability granted *and*, when the call acts for a user, the user's
//! own permission: a plugin never reaches further than either.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One host interface, or one half of it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
pub enum Capability {
    /// Chart of accounts, account and party balances.
    #[serde(rename = "ledger:read")]
    LedgerRead,
    /// Posting and reversing journal entries.
    #[serde(rename = "ledger:post")]
    LedgerPost,
    /// Reading and searching parties.
    #[serde(rename = "parties:read")]
    PartiesRead,
    /// Creating and changing parties.
    #[serde(rename = "parties:write")]
    PartiesWrite,
    /// The plugin's own collections of records.
    #[serde(rename = "storage")]
    Storage,
}

impl Capability {
    pub const ALL: [Self; 5] = [
        Self::LedgerRead,
        Self::LedgerPost,
        Self::PartiesRead,
        Self::PartiesWrite,
        Self::Storage,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::LedgerRead => "ledger:read",
            Self::LedgerPost => "ledger:post",
            Self::PartiesRead => "parties:read",
            Self::PartiesWrite => "parties:write",
            Self::Storage => "storage",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == text)
    }
}

impl std::fmt::Display for Capability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

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
        for capability in Capability::ALL {
            assert_eq!(Capability::parse(capability.as_str()), Some(capability));
            let json = serde_json::to_string(&capability).expect("serializes");
            assert_eq!(json, format!("\"{capability}\""));
        }
        let names = ["storage".to_owned(), "files:write".to_owned()];
        assert_eq!(parse_all(&names), Err(vec!["files:write".to_owned()]));
    }
}
