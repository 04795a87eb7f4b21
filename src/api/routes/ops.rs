//! `/healthz`, `/readyz` and `/metrics` (role `monitor`).
//!
//! `/healthz` says the process serves requests. `/readyz` says it can do
//! its work: the store answers a read, and the key device answers and holds
//! an active key for every role (a token wiped under the running service
//! answers pings, but cannot sign until an officer provisions it again);
//! otherwise 503 naming what failed, so a load balancer takes the node out
//! while the HSM recovers.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::api::problem::Problem;
use crate::api::{AppState, allow, ok};
use crate::identity::ApiRole;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn(allow(&[ApiRole::Monitor])))
}

async fn healthz() -> Response {
    ok(json!({ "status": "ok" }))
}

async fn readyz(State(state): State<AppState>) -> Response {
    let s = state.services.clone();
    let checked = tokio::task::spawn_blocking(move || {
        let store = s.store.audit_last().map(|_| ()).map_err(|e| e.to_string());
        let keys = s.keys.ready().map_err(|e| e.to_string());
        (store, keys)
    })
    .await;
    let (store, keys) = match checked {
        Ok(r) => r,
        Err(e) => return Problem::internal(&format!("readiness task failed: {e}")).into_response(),
    };
    let word = |r: &Result<(), String>| match r {
        Ok(()) => "ok".to_string(),
        Err(e) => e.clone(),
    };
    let body = json!({
        "status": if store.is_ok() && keys.is_ok() { "ready" } else { "not ready" },
        "store": word(&store),
        "keys": word(&keys),
    });
    let status = if store.is_ok() && keys.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    let mut response = state.metrics.render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}
