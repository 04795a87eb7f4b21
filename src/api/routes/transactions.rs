//! `/v1/transactions/*`: transaction approval with dynamic linking (README,
//! "Transaction approval"). Core banking (role `rp`) creates transactions,
//! relays the user's approval and cancels; officers and auditors read
//! transactions and their receipts.

use std::time::SystemTime;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::api::problem::Problem;
use crate::api::{AppState, JsonBody, PathText, Who, allow, blocking, ok};
use crate::flows::approval;
use crate::identity::ApiRole;

pub fn router() -> Router<AppState> {
    let rp = Router::new()
        .route("/v1/transactions", post(create))
        .route("/v1/transactions/{transactionId}/approval", post(approve))
        .route("/v1/transactions/{transactionId}/cancel", post(cancel))
        .route_layer(middleware::from_fn(allow(&[ApiRole::Rp])));
    let read = Router::new()
        .route("/v1/transactions/{transactionId}", get(describe))
        .route("/v1/transactions/{transactionId}/receipt", get(receipt))
        .route_layer(middleware::from_fn(allow(&[
            ApiRole::Rp,
            ApiRole::Officer,
            ApiRole::Auditor,
        ])));
    rp.merge(read)
}

async fn create(
    State(state): State<AppState>,
    Who(caller): Who,
    JsonBody(body): JsonBody,
) -> Result<Response, Problem> {
    let s = state.services.clone();
    let answer =
        blocking(move || approval::create(&s, &body, &caller.actor(), SystemTime::now())).await?;
    Ok((StatusCode::CREATED, axum::Json(answer)).into_response())
}

async fn approve(
    State(state): State<AppState>,
    Who(caller): Who,
    PathText(id): PathText,
    JsonBody(body): JsonBody,
) -> Result<Response, Problem> {
    let s = state.services.clone();
    blocking(move || approval::approve(&s, &id, &body, &caller.actor(), SystemTime::now()))
        .await
        .map(ok)
}

async fn cancel(
    State(state): State<AppState>,
    Who(caller): Who,
    PathText(id): PathText,
    JsonBody(body): JsonBody,
) -> Result<Response, Problem> {
    let s = state.services.clone();
    blocking(move || approval::cancel(&s, &id, &body, &caller.actor(), SystemTime::now()))
        .await
        .map(ok)
}

async fn describe(
    State(state): State<AppState>,
    Who(caller): Who,
    PathText(id): PathText,
) -> Result<Response, Problem> {
    let s = state.services.clone();
    blocking(move || approval::get(&s, &id, &caller.actor(), SystemTime::now()))
        .await
        .map(ok)
}

async fn receipt(
    State(state): State<AppState>,
    Who(caller): Who,
    PathText(id): PathText,
) -> Result<Response, Problem> {
    let s = state.services.clone();
    blocking(move || approval::receipt(&s, &id, &caller.actor(), SystemTime::now()))
        .await
        .map(ok)
}
