//! The limits of one plugin call. The defaults are generous for business logic; an admin can
//! override them per plugin, up to a ceiling the host itself is configured for.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{Error, FieldError, Result};

/// What one call of a plugin may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Limits {
    /// WebAssembly fuel (roughly one unit per instruction; about 5·10⁹ per second of CPU).
    pub fuel: u64,
    /// Linear memory, all memories of the component together.
    pub memory_bytes: u64,
    /// Size of the request body or the `invoke` input.
    pub input_bytes: u64,
    /// Size of the response body or the `invoke` output.
    pub output_bytes: u64,
    /// Calls into the host (ledger, parties, storage, authz, log).
    pub host_calls: u32,
    /// Time from start to finish, host calls included.
    pub wall_time_ms: u64,
    /// Requests per second the plugin's HTTP routes take in this process (bursts up to one
    /// second's worth); unlimited when absent.
    pub requests_per_second: Option<u32>,
}

const MIB: u64 = 1024 * 1024;

/// The limits of a plugin nobody has overridden: about 2 s of CPU, 256 MiB, 8 MiB in and out,
/// 10,000 host calls and 30 s.
pub const DEFAULT_LIMITS: Limits = Limits {
    fuel: 10_000_000_000,
    memory_bytes: 256 * MIB,
    input_bytes: 8 * MIB,
    output_bytes: 8 * MIB,
    host_calls: 10_000,
    wall_time_ms: 30_000,
    requests_per_second: None,
};

/// The most an admin may allow. Memory is bounded by the slots the engine reserves per memory
/// ([`crate::runtime::engine`]); input by the HTTP body limit.
pub const LIMITS_CEILING: Limits = Limits {
    fuel: 1_000_000_000_000,
    memory_bytes: 1024 * MIB,
    input_bytes: crate::api::REQUEST_BODY_BYTES_MAX as u64,
    output_bytes: 64 * MIB,
    host_calls: 1_000_000,
    wall_time_ms: 600_000,
    requests_per_second: Some(1_000_000),
};

/// An admin's overrides; absent fields keep the default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_calls: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wall_time_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<u32>,
}

impl LimitOverrides {
    /// Refuses zero and anything above the ceiling, naming each field.
    pub fn check(&self) -> Result<()> {
        let mut errors = Vec::new();
        let mut check = |field: &str, value: Option<u64>, ceiling: u64| {
            if let Some(value) = value
                && !(1..=ceiling).contains(&value)
            {
                errors.push(FieldError::new(
                    format!("limits.{field}"),
                    format!("is between 1 and {ceiling}"),
                ));
            }
        };
        check("fuel", self.fuel, LIMITS_CEILING.fuel);
        check(
            "memory_bytes",
            self.memory_bytes,
            LIMITS_CEILING.memory_bytes,
        );
        check("input_bytes", self.input_bytes, LIMITS_CEILING.input_bytes);
        check(
            "output_bytes",
            self.output_bytes,
            LIMITS_CEILING.output_bytes,
        );
        check(
            "host_calls",
            self.host_calls.map(u64::from),
            u64::from(LIMITS_CEILING.host_calls),
        );
        check(
            "wall_time_ms",
            self.wall_time_ms,
            LIMITS_CEILING.wall_time_ms,
        );
        check(
            "requests_per_second",
            self.requests_per_second.map(u64::from),
            LIMITS_CEILING
                .requests_per_second
                .map_or(u64::MAX, u64::from),
        );
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Error::Invalid(errors))
        }
    }

    /// The limits in force: the defaults with these overrides applied.
    pub fn apply(&self) -> Limits {
        Limits {
            fuel: self.fuel.unwrap_or(DEFAULT_LIMITS.fuel),
            memory_bytes: self.memory_bytes.unwrap_or(DEFAULT_LIMITS.memory_bytes),
            input_bytes: self.input_bytes.unwrap_or(DEFAULT_LIMITS.input_bytes),
            output_bytes: self.output_bytes.unwrap_or(DEFAULT_LIMITS.output_bytes),
            host_calls: self.host_calls.unwrap_or(DEFAULT_LIMITS.host_calls),
            wall_time_ms: self.wall_time_ms.unwrap_or(DEFAULT_LIMITS.wall_time_ms),
            requests_per_second: self
                .requests_per_second
                .or(DEFAULT_LIMITS.requests_per_second),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_replace_only_the_fields_given() {
        let overrides = LimitOverrides {
            fuel: Some(1_000),
            ..LimitOverrides::default()
        };
        let limits = overrides.apply();
        assert_eq!(limits.fuel, 1_000);
        assert_eq!(limits.memory_bytes, DEFAULT_LIMITS.memory_bytes);
    }

    #[test]
    fn overrides_above_the_ceiling_or_zero_are_refused() {
        let overrides = LimitOverrides {
            memory_bytes: Some(LIMITS_CEILING.memory_bytes + 1),
            host_calls: Some(0),
            ..LimitOverrides::default()
        };
        let Err(Error::Invalid(errors)) = overrides.check() else {
            panic!("expected invalid limits");
        };
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["limits.memory_bytes", "limits.host_calls"]);
    }
}
