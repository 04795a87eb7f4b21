//! `/v1/registrations/*` and `/v1/authentications/*` (role `rp`).

use std::time::SystemTime;

use axum::Router;
use axum::middleware;
use axum::response::Response;
use axum::routing::post;

use crate::api::problem::Problem;
use crate::api::{AppState, JsonBody, Who, allow, blocking, ok};
use crate::flows::ceremony;
use crate::identity::ApiRole;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/registrations/options", post(registration_options))
        .route("/v1/registrations/verify", post(registration_verify))
        .route("/v1/authentications/options", post(authentication_options))
        .route("/v1/authentications/verify", post(authentication_verify))
        .route_layer(middleware::from_fn(allow(&[ApiRole::Rp])))
}

async fn registration_options(
    axum::extract::State(state): axum::extract::State<AppState>,
    JsonBody(body): JsonBody,
) -> Result<Response, Problem> {
    let s = state.services.clone();
    blocking(move || ceremony::registration_options(&s, &body, SystemTime::now()))
        .await
        .map(ok)
}

async fn registration_verify(
    axum::extract::State(state): axum::extract::State<AppState>,
    Who(caller): Who,
    JsonBody(body): JsonBody,
) -> Result<Response, Problem> {
    let s = state.services.clone();
    blocking(move || ceremony::registration_verify(&s, &body, &caller.actor(), SystemTime::now()))
        .await
        .map(ok)
}

async fn authentication_options(
    axum::extract::State(state): axum::extract::State<AppState>,
    JsonBody(body): JsonBody,
) -> Result<Response, Problem> {
    let s = state.services.clone();
    blocking(move || ceremony::authentication_options(&s, &body, SystemTime::now()))
        .await
        .map(ok)
}

async fn authentication_verify(
    axum::extract::State(state): axum::extract::State<AppState>,
    Who(caller): Who,
    JsonBody(body): JsonBody,
) -> Result<Response, Problem> {
    let s = state.services.clone();
    blocking(move || ceremony::authentication_verify(&s, &body, &caller.actor(), SystemTime::now()))
        .await
        .map(ok)
}
