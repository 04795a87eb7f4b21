//! Per-client rate and concurrency limits, keyed by the client
//! certificate's SPKI hash (stable across renewals that keep the key).
//!
//! Rate: a token bucket per client (`limits.rate_per_second` sustained,
//! `limits.burst` at once). Concurrency: at most `limits.max_in_flight`
//! requests per client; the next one is refused at once with 429 rather
//! than queued, so one misbehaving client cannot hold the blocking pool.
//! Both answer RFC 9457 problems with `Retry-After`.
//!
//! The table is bounded: clients are whoever the CA issued certificates
//! to, but a CA that issues many must not make memory grow without end, so
//! past [`MAX_CLIENTS`] entries idle ones (full bucket, nothing in flight)
//! are dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::problem::Problem;
use crate::config::LimitSettings;
use crate::identity::Caller;

pub const MAX_CLIENTS: usize = 10_000;

struct Entry {
    tokens: f64,
    refilled: Instant,
    in_flight: usize,
}

pub struct ClientLimits {
    settings: LimitSettings,
    table: Mutex<HashMap<[u8; 32], Entry>>,
}

/// Releases the in-flight slot when the request ends, however it ends.
pub struct Slot {
    limits: Arc<ClientLimits>,
    key: [u8; 32],
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut table) = self.limits.table.lock()
            && let Some(e) = table.get_mut(&self.key)
        {
            e.in_flight = e.in_flight.saturating_sub(1);
        }
    }
}

/// Why a request was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Out of tokens; retry after this many seconds.
    Rate(u64),
    InFlight,
}

impl ClientLimits {
    pub fn new(settings: LimitSettings) -> ClientLimits {
        ClientLimits {
            settings,
            table: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token and an in-flight slot for `key` at `now`.
    pub fn admit(self: &Arc<Self>, key: [u8; 32], now: Instant) -> Result<Slot, Refusal> {
        let rate = f64::from(self.settings.rate_per_second);
        let burst = f64::from(self.settings.burst);
        let mut table = match self.table.lock() {
            Ok(t) => t,
            Err(poisoned) => poisoned.into_inner(),
        };
        if table.len() >= MAX_CLIENTS && !table.contains_key(&key) {
            table.retain(|_, e| {
                let idle =
                    now.saturating_duration_since(e.refilled).as_secs_f64() * rate + e.tokens;
                e.in_flight > 0 || idle < burst
            });
        }
        let e = table.entry(key).or_insert(Entry {
            tokens: burst,
            refilled: now,
            in_flight: 0,
        });
        let elapsed = now.saturating_duration_since(e.refilled).as_secs_f64();
        e.tokens = (e.tokens + elapsed * rate).min(burst);
        e.refilled = now;
        if e.in_flight >= self.settings.max_in_flight {
            return Err(Refusal::InFlight);
        }
        if e.tokens < 1.0 {
            let wait = ((1.0 - e.tokens) / rate).ceil().max(1.0) as u64;
            return Err(Refusal::Rate(wait));
        }
        e.tokens -= 1.0;
        e.in_flight += 1;
        Ok(Slot {
            limits: self.clone(),
            key,
        })
    }
}

/// Middleware: admits the request or answers 429.
pub async fn enforce(
    State(limits): State<Arc<ClientLimits>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(key) = request
        .extensions()
        .get::<Arc<Caller>>()
        .map(|c| c.limit_key())
    else {
        return Problem::internal("request without a caller reached the limiter").into_response();
    };
    match limits.admit(key, Instant::now()) {
        Ok(slot) => {
            let response = next.run(request).await;
            drop(slot);
            response
        }
        Err(Refusal::Rate(wait)) => Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate-limited",
            "Too many requests from this client",
        )
        .detail(format!(
            "limit is {} requests per second (burst {})",
            limits.settings.rate_per_second, limits.settings.burst
        ))
        .retry_after(wait)
        .into_response(),
        Err(Refusal::InFlight) => Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too-many-in-flight",
            "Too many concurrent requests from this client",
        )
        .detail(format!(
            "at most {} requests in flight per client",
            limits.settings.max_in_flight
        ))
        .retry_after(1)
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits(rate: u32, burst: u32, in_flight: usize) -> Arc<ClientLimits> {
        Arc::new(ClientLimits::new(LimitSettings {
            rate_per_second: rate,
            burst,
            max_in_flight: in_flight,
        }))
    }

    #[test]
    fn burst_then_refill() {
        let l = limits(10, 3, 100);
        let t0 = Instant::now();
        for _ in 0..3 {
            drop(l.admit([1; 32], t0).expect("within burst"));
        }
        assert_eq!(l.admit([1; 32], t0).err(), Some(Refusal::Rate(1)));
        // Another client has its own bucket.
        assert!(l.admit([2; 32], t0).is_ok());
        // 100 ms at 10/s refills one token.
        assert!(l.admit([1; 32], t0 + Duration::from_millis(100)).is_ok());
        assert!(l.admit([1; 32], t0 + Duration::from_millis(100)).is_err());
    }

    #[test]
    fn in_flight_is_released_on_drop() {
        let l = limits(1000, 1000, 2);
        let t0 = Instant::now();
        let a = l.admit([1; 32], t0).expect("first");
        let _b = l.admit([1; 32], t0).expect("second");
        assert_eq!(l.admit([1; 32], t0).err(), Some(Refusal::InFlight));
        drop(a);
        assert!(l.admit([1; 32], t0).is_ok());
    }

    #[test]
    fn the_table_stays_bounded() {
        let l = limits(1000, 1, 10);
        let t0 = Instant::now();
        for i in 0..(MAX_CLIENTS + 50) {
            let mut key = [0u8; 32];
            key[..8].copy_from_slice(&(i as u64).to_be_bytes());
            // Each client used its one token at t0; by t0+1s all are idle.
            drop(l.admit(key, t0 + Duration::from_secs(u64::from(i >= MAX_CLIENTS))));
        }
        assert!(l.table.lock().map(|t| t.len()).unwrap_or(usize::MAX) <= MAX_CLIENTS);
    }
}
