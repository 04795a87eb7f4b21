//! `GET /v1/openapi.json`: the API contract, for core banking's client
//! generators and test tools (role `rp`).
//!
//! The document is `docs/openapi.json`, compiled into the binary, so what a
//! server serves is what its source tree documents; `tests/api_docs.rs`
//! checks it against the routes the code defines and against a running
//! server.

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::api::{AppState, allow};
use crate::identity::ApiRole;

/// The committed document, as served.
pub const DOCUMENT: &str = include_str!("../../../docs/openapi.json");

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/openapi.json", get(document))
        .route_layer(middleware::from_fn(allow(&[ApiRole::Rp])))
}

async fn document() -> Response {
    let mut response = DOCUMENT.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
