//! Per-plugin call statistics of this process, for `GET /api/v1/plugins`: counts since start
//! and latency percentiles over the most recent calls.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use utoipa::ToSchema;

/// Latencies kept per plugin for the percentiles.
const LATENCY_SAMPLES_MAX: usize = 1_000;

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// The plugin answered with an error (a typed error, or an HTTP status of 500 or more),
    /// or trapped.
    Error,
    /// A limit stopped the call.
    LimitHit,
}

#[derive(Debug, Default)]
struct Counters {
    calls: u64,
    errors: u64,
    limit_hits: u64,
    denied_host_calls: u64,
    fuel_used: u64,
    latencies: VecDeque<Duration>,
}

/// What `GET /api/v1/plugins` shows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, ToSchema)]
pub struct PluginStats {
    pub calls: u64,
    pub errors: u64,
    pub limit_hits: u64,
    /// Host calls refused because the plugin lacked the grant or the user the permission.
    pub denied_host_calls: u64,
    /// Fuel burnt by every call together.
    pub fuel_used: u64,
    /// Over the last 1,000 calls, in microseconds.
    pub latency_p50_us: Option<u64>,
    pub latency_p99_us: Option<u64>,
}

#[derive(Debug, Default)]
pub struct Stats {
    plugins: Mutex<HashMap<(i64, String), Counters>>,
}

impl Stats {
    /// Counts host calls of one plugin call that were refused.
    pub fn record_denied(&self, company_id: i64, plugin: &str, denied: u32) {
        let mut plugins = self
            .plugins
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let counters = plugins.entry((company_id, plugin.to_owned())).or_default();
        counters.denied_host_calls += u64::from(denied);
    }

    pub fn record(
        &self,
        company_id: i64,
        plugin: &str,
        outcome: Outcome,
        latency: Duration,
        fuel: u64,
    ) {
        let mut plugins = self
            .plugins
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let counters = plugins.entry((company_id, plugin.to_owned())).or_default();
        counters.calls += 1;
        match outcome {
            Outcome::Ok => {}
            Outcome::Error => counters.errors += 1,
            Outcome::LimitHit => {
                counters.errors += 1;
                counters.limit_hits += 1;
            }
        }
        counters.fuel_used = counters.fuel_used.saturating_add(fuel);
        if counters.latencies.len() == LATENCY_SAMPLES_MAX {
            counters.latencies.pop_front();
        }
        counters.latencies.push_back(latency);
    }

    pub fn of(&self, company_id: i64, plugin: &str) -> PluginStats {
        let plugins = self
            .plugins
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(counters) = plugins.get(&(company_id, plugin.to_owned())) else {
            return PluginStats::default();
        };
        let mut sorted: Vec<Duration> = counters.latencies.iter().copied().collect();
        sorted.sort_unstable();
        let percentile = |p: usize| {
            (!sorted.is_empty()).then(|| {
                let index = (sorted.len() * p).div_ceil(100).saturating_sub(1);
                u64::try_from(sorted[index].as_micros()).unwrap_or(u64::MAX)
            })
        };
        PluginStats {
            calls: counters.calls,
            errors: counters.errors,
            limit_hits: counters.limit_hits,
            denied_host_calls: counters.denied_host_calls,
            fuel_used: counters.fuel_used,
            latency_p50_us: percentile(50),
            latency_p99_us: percentile(99),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_outcomes_and_reports_percentiles() {
        let stats = Stats::default();
        for ms in 1..=100 {
            stats.record(1, "p", Outcome::Ok, Duration::from_millis(ms), 10);
        }
        let seen = stats.of(1, "p");
        assert_eq!(seen.latency_p50_us, Some(50_000));
        assert_eq!(seen.latency_p99_us, Some(99_000));
        stats.record(1, "p", Outcome::LimitHit, Duration::from_millis(1), 5);
        stats.record(1, "p", Outcome::Error, Duration::from_millis(1), 0);
        let seen = stats.of(1, "p");
        assert_eq!((seen.calls, seen.errors, seen.limit_hits), (102, 2, 1));
        assert_eq!(seen.fuel_used, 1_005);
        assert_eq!(stats.of(2, "p"), PluginStats::default());
    }
}
