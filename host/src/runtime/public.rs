//! Unauthenticated requests to plugins that hold `http:public` (a web-to-lead form, a quote's
//! acceptance page): how many the host lets through, per client address and per plugin.
//!
//! Its token bucket also meters each plugin's own request rate (`Runtime::admit`).
//!
//! The counts live in the process: behind a load balancer with several `keel` processes each
//! process applies the limits on its own, so a client may get up to that many times the rate.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use crate::error::{Error, Result};

/// Requests one client address may send to one plugin's public routes per minute, and at once.
pub const PUBLIC_REQUESTS_PER_MINUTE_PER_CLIENT: u32 = 10;
/// Public requests one plugin takes per second from all clients together.
pub const PUBLIC_REQUESTS_PER_SECOND_PER_PLUGIN: u32 = 50;
/// Largest body of a public request: a form, not an upload.
pub const PUBLIC_BODY_BYTES_MAX: usize = 16 * 1024;
/// Client addresses remembered at most; past it, those whose allowance is full again are
/// forgotten first, so memory stays bounded under a flood of addresses.
const CLIENTS_TRACKED_MAX: usize = 50_000;

/// A token bucket holding at most `capacity` tokens, refilled at `per_second`; the callers
/// keep capacity and rate, so a bucket is just its state.
#[derive(Debug, Clone, Copy)]
pub(super) struct Bucket {
    tokens: f64,
    refilled: Instant,
}

impl Bucket {
    pub(super) fn full(capacity: f64, now: Instant) -> Self {
        Self {
            tokens: capacity,
            refilled: now,
        }
    }

    /// Refills for the time passed, then takes a token if there is one.
    pub(super) fn take(&mut self, capacity: f64, per_second: f64, now: Instant) -> bool {
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * per_second).min(capacity);
        self.refilled = now;
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }

    fn is_full_at(&self, capacity: f64, per_second: f64, now: Instant) -> bool {
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.tokens + elapsed * per_second >= capacity
    }
}

/// Who a public request is counted against.
type ClientKey = (i64, String, Option<IpAddr>);

#[derive(Debug, Default)]
pub struct PublicLimiter {
    clients: Mutex<HashMap<ClientKey, Bucket>>,
    plugins: Mutex<HashMap<(i64, String), Bucket>>,
}

impl PublicLimiter {
    /// Lets one request from `client` (unknown when the server was not told the peer) through
    /// to `plugin`'s public routes, or says when to come back.
    pub fn admit(&self, company_id: i64, plugin: &str, client: Option<IpAddr>) -> Result<()> {
        let now = Instant::now();
        let client_capacity = f64::from(PUBLIC_REQUESTS_PER_MINUTE_PER_CLIENT);
        let client_rate = client_capacity / 60.0;
        {
            let mut clients = self
                .clients
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if clients.len() >= CLIENTS_TRACKED_MAX {
                clients.retain(|_, bucket| !bucket.is_full_at(client_capacity, client_rate, now));
                if clients.len() >= CLIENTS_TRACKED_MAX {
                    clients.clear();
                }
            }
            let bucket = clients
                .entry((company_id, plugin.to_owned(), client))
                .or_insert_with(|| Bucket::full(client_capacity, now));
            if !bucket.take(client_capacity, client_rate, now) {
                return Err(Error::TooManyRequests(format!(
                    "this address may send plugin {plugin} at most \
                     {PUBLIC_REQUESTS_PER_MINUTE_PER_CLIENT} public requests a minute; \
                     retry in a minute"
                )));
            }
        }
        let plugin_capacity = f64::from(PUBLIC_REQUESTS_PER_SECOND_PER_PLUGIN);
        let mut plugins = self
            .plugins
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let bucket = plugins
            .entry((company_id, plugin.to_owned()))
            .or_insert_with(|| Bucket::full(plugin_capacity, now));
        if !bucket.take(plugin_capacity, plugin_capacity, now) {
            return Err(Error::TooManyRequests(format!(
                "plugin {plugin} takes at most {PUBLIC_REQUESTS_PER_SECOND_PER_PLUGIN} public \
                 requests a second; retry in a moment"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_gets_its_allowance_and_no_more_while_others_still_pass() {
        let limiter = PublicLimiter::default();
        let one: IpAddr = "192.0.2.1".parse().expect("an address");
        let two: IpAddr = "192.0.2.2".parse().expect("an address");
        for _ in 0..PUBLIC_REQUESTS_PER_MINUTE_PER_CLIENT {
            limiter
                .admit(1, "sfa", Some(one))
                .expect("within the allowance");
        }
        let refused = limiter.admit(1, "sfa", Some(one)).expect_err("over it");
        assert!(matches!(refused, Error::TooManyRequests(_)), "{refused}");
        limiter.admit(1, "sfa", Some(two)).expect("another client");
        limiter.admit(1, "cpq", Some(one)).expect("another plugin");
        limiter.admit(2, "sfa", Some(one)).expect("another company");
    }

    #[test]
    fn a_bucket_refills_with_time() {
        let start = Instant::now();
        let mut bucket = Bucket::full(2.0, start);
        assert!(bucket.take(2.0, 1.0, start));
        assert!(bucket.take(2.0, 1.0, start));
        assert!(!bucket.take(2.0, 1.0, start));
        assert!(bucket.take(2.0, 1.0, start + std::time::Duration::from_secs(1)));
        assert!(bucket.is_full_at(2.0, 1.0, start + std::time::Duration::from_secs(5)));
    }
}
