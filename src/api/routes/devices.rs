//! `/v1/devices/*`: device binding (README, "Device binding"). Core
//! banking (role `rp`) enrolls devices, reports identity outcomes, asks
//! for tokens and relays sealed registration requests; officers may also
//! revoke, and auditors read.

use std::time::SystemTime;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::api::problem::Problem;
use crate::api::{AppState, JsonBody, PathText, Who, allow, blocking, ok};
use crate::flows::enrollment;
use crate::identity::ApiRole;

pub fn router() -> Router<AppState> {
    let rp = Router::new()
        .route("/v1/devices", post(enroll))
        .route("/v1/devices/{deviceId}/verification", post(verification))
        .route("/v1/devices/{deviceId}/token", post(token))
        .route("/v1/devices/{deviceId}/registration", post(registration))
        .route_layer(middleware::from_fn(allow(&[ApiRole::Rp])));
    let revoke_route = Router::new()
        .route("/v1/devices/{deviceId}/revoke", post(revoke))
        .route_layer(middleware::from_fn(allow(&[ApiRole::Rp, ApiRole::Officer])));
    let read = Router::new()
        .route("/v1/devices/{deviceId}", get(describe))
        .route_layer(middleware::from_fn(allow(&[
            ApiRole::Rp,
            ApiRole::Officer,
            ApiRole::Auditor,
        ])));
    rp.merge(revoke_route).merge(read)
}

async fn enroll(
    State(state): State<AppState>,
    Who(caller): Who,
    JsonBody(body): JsonBody,
) -> Result<Response, Problem> {
    let s = state.services.clone();
    let answer =
        blocking(move || enrollment::enroll(&s, &body, &caller.actor(), SystemTime::now())).await?;
    Ok((StatusCode::CREATED, axum::Json(answer)).into_response())
}

async fn verification(
    State(state): State<AppState>,
    Who(caller): Who,
    PathText(id): PathText,
    JsonBody(body): JsonBody,
) -> Result<Response, Problem> {
    let s = state.services.clone();
    blocking(move || enrollment::verification(&s, &id, &body, &caller.actor(), SystemTime::now()))
        .await
        .map(ok)
}

async fn token(
    State(state): State<AppState>,
    Who(caller): Who,
    PathText(id): PathText,
) -> Result<Response, Problem> {
    let s = state.services.clone();
    blocking(move || enrollment::reissue(&s, &id, &caller.actor(), SystemTime::now()))
        .await
        .map(ok)
}

async fn registration(
    State(state): State<AppState>,
    Who(caller): Who,
    PathText(id): PathText,
    JsonBody(body): JsonBody,
) -> Result<Response, Problem> {
    let s = state.services.clone();
    blocking(move || enrollment::redeem(&s, &id, &body, &caller.actor(), SystemTime::now()))
        .await
        .map(ok)
}

async fn revoke(
    State(state): State<AppState>,
    Who(caller): Who,
    PathText(id): PathText,
    JsonBody(body): JsonBody,
) -> Result<Response, Problem> {
    let s = state.services.clone();
    blocking(move || enrollment::revoke(&s, &id, &body, &caller.actor(), SystemTime::now()))
        .await
        .map(ok)
}

async fn describe(
    State(state): State<AppState>,
    Who(caller): Who,
    PathText(id): PathText,
) -> Result<Response, Problem> {
    let s = state.services.clone();
    blocking(move || enrollment::get(&s, &id, &caller.actor(), SystemTime::now()))
        .await
        .map(ok)
}
