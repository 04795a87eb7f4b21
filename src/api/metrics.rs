//! Prometheus metrics: requests by route and status, request latency, and
//! key-device operation latency and errors.
//!
//! Route labels are the router's matched path templates
//! (`/v1/users/{userId}/credentials`), never raw paths, so a client cannot
//! grow the label set; unmatched requests count under `unmatched`.
//! Key-device metrics come from [`MeteredBackend`], a decorator around the
//! configured [`KeyBackend`], so every HSM/TPM call is measured whoever
//! makes it (flows, audit checkpoints, readiness).

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};

use crate::keys::{
    EcPublicKey, EcdsaSignature, KeyBackend, KeyError, Kid, Role, SharedSecret, StoredKey,
};

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    key_latency: HistogramVec,
    key_errors: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new_custom(Some("signet".into()), None)?;
        let requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "HTTP requests by route, method and status",
            ),
            &["route", "method", "status"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "HTTP request latency by route",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["route"],
        )?;
        let key_latency = HistogramVec::new(
            HistogramOpts::new(
                "key_operation_duration_seconds",
                "Key device (HSM/TPM) operation latency",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
            ]),
            &["op"],
        )?;
        let key_errors = IntCounterVec::new(
            Opts::new(
                "key_operation_errors_total",
                "Key device (HSM/TPM) operation errors",
            ),
            &["op"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(key_latency.clone()))?;
        registry.register(Box::new(key_errors.clone()))?;
        Ok(Metrics {
            registry,
            requests,
            latency,
            key_latency,
            key_errors,
        })
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec only fails on metric families that are
        // malformed, which registration already refused.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "metrics encoding failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }

    fn key_op<T>(&self, op: &str, f: impl FnOnce() -> Result<T, KeyError>) -> Result<T, KeyError> {
        let start = Instant::now();
        let result = f();
        self.key_latency
            .with_label_values(&[op])
            .observe(start.elapsed().as_secs_f64());
        if result.is_err() {
            self.key_errors.with_label_values(&[op]).inc();
        }
        result
    }
}

/// The method as a metrics label. hyper accepts any token as a method, and
/// a label value lives as long as the process: a client sending made-up
/// methods must not grow the registry, so those are all "other".
fn method_label(method: &axum::http::Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        "PATCH" => "PATCH",
        _ => "other",
    }
}

/// Middleware: counts and times every request, and writes one access-log
/// line per request (target `signet::access`: route template, method,
/// status, milliseconds, and the client's rule name; never bodies).
pub async fn track(State(metrics): State<Arc<Metrics>>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let method = method_label(request.method()).to_string();
    let client = request
        .extensions()
        .get::<Arc<crate::identity::Caller>>()
        .map(|c| c.actor())
        .unwrap_or_default();
    let start = Instant::now();
    let response = next.run(request).await;
    tracing::info!(
        target: "signet::access",
        route = %route,
        method = %method,
        status = response.status().as_u16(),
        ms = start.elapsed().as_secs_f64() * 1e3,
        client = %client,
    );
    metrics
        .latency
        .with_label_values(&[&route])
        .observe(start.elapsed().as_secs_f64());
    metrics
        .requests
        .with_label_values(&[&route, &method, response.status().as_str()])
        .inc();
    response
}

/// A [`KeyBackend`] that measures the one it wraps.
pub struct MeteredBackend {
    inner: Arc<dyn KeyBackend>,
    metrics: Arc<Metrics>,
}

impl MeteredBackend {
    pub fn new(inner: Arc<dyn KeyBackend>, metrics: Arc<Metrics>) -> MeteredBackend {
        MeteredBackend { inner, metrics }
    }
}

impl KeyBackend for MeteredBackend {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn list(&self) -> Result<Vec<StoredKey>, KeyError> {
        self.metrics.key_op("list", || self.inner.list())
    }
    fn generate(&self, role: Role, version: u32) -> Result<StoredKey, KeyError> {
        self.metrics
            .key_op("generate", || self.inner.generate(role, version))
    }
    fn sign_digest(&self, kid: &Kid, digest: &[u8; 32]) -> Result<EcdsaSignature, KeyError> {
        self.metrics
            .key_op("sign", || self.inner.sign_digest(kid, digest))
    }
    fn ecdh(&self, kid: &Kid, peer: &EcPublicKey) -> Result<SharedSecret, KeyError> {
        self.metrics.key_op("ecdh", || self.inner.ecdh(kid, peer))
    }
    fn retire(&self, kid: &Kid) -> Result<(), KeyError> {
        self.metrics.key_op("retire", || self.inner.retire(kid))
    }
    fn ping(&self) -> Result<(), KeyError> {
        self.metrics.key_op("ping", || self.inner.ping())
    }
}
