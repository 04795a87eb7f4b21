//! `/v1/policy`: the trust policy in force, read by officers and auditors,
//! replaced and simulated by officers. See [`crate::flows::policy`].

use std::time::SystemTime;

use axum::Router;
use axum::extract::State;
use axum::middleware;
use axum::response::Response;
use axum::routing::{get, post, put};

use crate::api::problem::Problem;
use crate::api::{AppState, JsonBody, Who, allow, blocking, ok};
use crate::flows::policy;
use crate::identity::ApiRole;

/// Changed credentials listed by a simulation answer (all are counted).
const SIMULATION_LISTED: usize = 1000;

pub fn router() -> Router<AppState> {
    let read = Router::new()
        .route("/v1/policy", get(describe))
        .route_layer(middleware::from_fn(allow(&[
            ApiRole::Officer,
            ApiRole::Auditor,
        ])));
    let write = Router::new()
        .route("/v1/policy", put(replace))
        .route("/v1/policy/simulation", post(simulate))
        .route_layer(middleware::from_fn(allow(&[ApiRole::Officer])));
    read.merge(write)
}

async fn describe(State(state): State<AppState>) -> Result<Response, Problem> {
    let s = state.services.clone();
    blocking(move || Ok(policy::describe(&s))).await.map(ok)
}

async fn replace(
    State(state): State<AppState>,
    Who(caller): Who,
    JsonBody(body): JsonBody,
) -> Result<Response, Problem> {
    let s = state.services.clone();
    blocking(move || policy::replace(&s, &body, &caller.actor(), SystemTime::now()))
        .await
        .map(ok)
}

async fn simulate(
    State(state): State<AppState>,
    JsonBody(body): JsonBody,
) -> Result<Response, Problem> {
    let s = state.services.clone();
    blocking(move || policy::simulate_request(&s, &body, SIMULATION_LISTED))
        .await
        .map(ok)
}
