//! The HTTP API: mutual TLS only, JSON in and out, one router per resource.
//!
//! # Model
//!
//! A connection exists only after rustls has verified the client's
//! certificate chain to the configured CA and checked the CRLs
//! (`tls`). The connection layer (`server`) reads the certificate's
//! identities once and attaches a [`crate::identity::Caller`] to every
//! request on that connection; each route names the roles it accepts and
//! refuses every other caller with 403. Handlers are thin: they decode the
//! body, call a plain function in [`crate::flows`] on a blocking thread
//! (the store fsyncs and the HSM blocks), and encode the answer. Every
//! failure leaves as RFC 9457 `application/problem+json` (`problem`).

pub mod server;
pub mod tls;

pub mod limits;
pub mod metrics;
pub mod problem;
pub mod routes;
pub mod service;

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::flows::{FlowError, Services};
use crate::identity::{ApiRole, Caller};
use limits::ClientLimits;
use metrics::Metrics;
use problem::Problem;

/// What handlers share. Passed explicitly as router state.
#[derive(Clone)]
pub struct AppState {
    pub services: Arc<Services>,
    pub metrics: Arc<Metrics>,
    pub limits: Arc<ClientLimits>,
    pub body_limit: usize,
    /// `server.request_timeout_ms`: a request not answered by then gets 503.
    pub request_timeout: std::time::Duration,
    /// Officer-issued certificates for role keys, as (SPKI DER, PEM).
    pub key_certificates: Arc<Vec<(Vec<u8>, String)>>,
}

/// The whole API. Layers, outermost first: metrics, per-client limits,
/// then per-resource role checks inside each resource's router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(routes::ceremonies::router())
        .merge(routes::credentials::router())
        .merge(routes::devices::router())
        .merge(routes::transactions::router())
        .merge(routes::pairings::router())
        .merge(routes::events::router())
        .merge(routes::keys::router())
        .merge(routes::audit::router())
        .merge(routes::openapi::router())
        .merge(routes::ops::router())
        .merge(routes::policy::router())
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state.clone())
        .layer(middleware::from_fn_with_state(
            state.request_timeout,
            deadline,
        ))
        .layer(middleware::from_fn_with_state(
            state.limits.clone(),
            limits::enforce,
        ))
        .layer(middleware::from_fn_with_state(
            state.metrics.clone(),
            metrics::track,
        ))
}

/// Answers 503 when the handler has not finished within the timeout. A
/// flow already running on the blocking pool still completes (it cannot be
/// interrupted between its store writes); the client is told to retry, and
/// a retry of a ceremony then meets "already used", never a double effect.
async fn deadline(
    axum::extract::State(timeout): axum::extract::State<std::time::Duration>,
    request: Request,
    next: Next,
) -> Response {
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            "The request was not answered in time",
        )
        .detail(format!(
            "server.request_timeout_ms is {} ms",
            timeout.as_millis()
        ))
        .retry_after(1)
        .into_response(),
    }
}

async fn no_route() -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "no-such-route", "No such route")
}

async fn method_not_allowed() -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "Method not allowed on this route",
    )
}

/// Route layer: only callers whose certificate maps to one of `roles`.
pub fn allow(
    roles: &'static [ApiRole],
) -> impl Fn(Request, Next) -> std::pin::Pin<Box<dyn Future<Output = Response> + Send>>
+ Clone
+ Send
+ 'static {
    move |request: Request, next: Next| {
        Box::pin(async move {
            let caller = request.extensions().get::<Arc<Caller>>().cloned();
            match caller.as_ref().and_then(|c| c.role()) {
                Some(role) if roles.contains(&role) => next.run(request).await,
                Some(role) => {
                    let wanted: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
                    Problem::forbidden(format!(
                        "role {role} may not use this route; it needs {}",
                        wanted.join(" or ")
                    ))
                    .into_response()
                }
                None => {
                    if let Some(c) = &caller {
                        tracing::info!(subject = %c.identity.subject, "client certificate matches no [[clients]] rule");
                    }
                    Problem::forbidden("this client certificate is not mapped to any role")
                        .into_response()
                }
            }
        })
    }
}

/// The caller of this request (always present behind the TLS layer).
pub struct Who(pub Arc<Caller>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Who {
    type Rejection = Problem;
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Who, Problem> {
        parts
            .extensions
            .get::<Arc<Caller>>()
            .cloned()
            .map(Who)
            .ok_or_else(|| Problem::internal("request without a caller"))
    }
}

/// A path parameter as text; a malformed one (not UTF-8 after
/// percent-decoding) is a problem naming the path, like every other refusal.
pub struct PathText(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for PathText {
    type Rejection = Problem;
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<PathText, Problem> {
        axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(p)| PathText(p))
            .map_err(|e| Problem::invalid("path", e.body_text()))
    }
}

/// One whole-number query parameter: its name, default and allowed range.
pub struct NumberParam {
    pub name: &'static str,
    pub default: u64,
    pub min: u64,
    pub max: u64,
}

/// Reads whole-number query parameters by `spec`, in `spec`'s order. An
/// unknown parameter, a repeated one or a value out of range is a problem
/// naming it.
pub fn number_query(query: Option<&str>, spec: &[NumberParam]) -> Result<Vec<u64>, Problem> {
    let mut values: Vec<Option<u64>> = vec![None; spec.len()];
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let Some(i) = spec.iter().position(|p| p.name == k) else {
            let names: Vec<&str> = spec.iter().map(|p| p.name).collect();
            return Err(Problem::invalid(
                crate::flows::truncate(k, 64),
                format!("unknown query parameter; expected {}", names.join(", ")),
            ));
        };
        let p = &spec[i];
        if values[i].is_some() {
            return Err(Problem::invalid(p.name, "given twice"));
        }
        let n = v
            .parse::<u64>()
            .ok()
            .filter(|n| (p.min..=p.max).contains(n))
            .ok_or_else(|| {
                Problem::invalid(
                    p.name,
                    format!("must be a whole number from {} to {}", p.min, p.max),
                )
            })?;
        values[i] = Some(n);
    }
    Ok(values
        .iter()
        .zip(spec)
        .map(|(v, p)| v.unwrap_or(p.default))
        .collect())
}

/// A JSON request body: `application/json`, at most `body_limit` bytes,
/// syntactically valid. Its shape is checked by the flow, member by member.
pub struct JsonBody(pub Value);

impl FromRequest<AppState> for JsonBody {
    type Rejection = Problem;

    async fn from_request(request: Request, state: &AppState) -> Result<JsonBody, Problem> {
        let content_type = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let essence = content_type.split(';').next().unwrap_or("").trim();
        if !essence.eq_ignore_ascii_case("application/json") {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "The body must be application/json",
            )
            .field("Content-Type"));
        }
        let limit = state.body_limit;
        let bytes: Bytes = axum::body::to_bytes(request.into_body(), limit)
            .await
            .map_err(|e| {
                let too_large = std::error::Error::source(&e)
                    .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
                    || e.to_string().contains("length limit");
                if too_large {
                    Problem::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "body-too-large",
                        "The body is too large",
                    )
                    .detail(format!("at most {limit} bytes"))
                    .field("body")
                } else {
                    Problem::invalid("body", format!("could not read the body: {e}"))
                }
            })?;
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                "malformed-json",
                "The body is not valid JSON",
            )
            .detail(format!(
                "line {} column {}: {}",
                e.line(),
                e.column(),
                e.classify_str()
            ))
            .field("body")
        })?;
        Ok(JsonBody(value))
    }
}

trait ClassifyStr {
    fn classify_str(&self) -> &'static str;
}

impl ClassifyStr for serde_json::Error {
    fn classify_str(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "read error",
            serde_json::error::Category::Syntax => "syntax error",
            serde_json::error::Category::Data => "unexpected data",
            serde_json::error::Category::Eof => "unexpected end of input",
        }
    }
}

/// Runs a flow on the blocking pool (it fsyncs and talks to the HSM) and
/// turns its error into a problem.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, FlowError> + Send + 'static,
) -> Result<T, Problem> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(Problem::from),
        Err(e) => Err(Problem::internal(&format!("flow task failed: {e}"))),
    }
}

/// A 200 JSON answer.
pub fn ok(value: Value) -> Response {
    (StatusCode::OK, axum::Json(value)).into_response()
}
