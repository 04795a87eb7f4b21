//! `/v1/users/{userId}/credentials` and `/v1/credentials/{id}` (role `rp`).

use std::time::SystemTime;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};

use crate::api::problem::Problem;
use crate::api::{AppState, PathText, Who, allow, blocking, ok};
use crate::flows::credentials;
use crate::identity::ApiRole;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/users/{userId}/credentials", get(list))
        .route("/v1/credentials/{credentialId}", delete(remove))
        .route_layer(middleware::from_fn(allow(&[ApiRole::Rp])))
}

async fn list(
    State(state): State<AppState>,
    PathText(user_id): PathText,
) -> Result<Response, Problem> {
    let s = state.services.clone();
    blocking(move || credentials::list(&s, &user_id))
        .await
        .map(ok)
}

async fn remove(
    State(state): State<AppState>,
    Who(caller): Who,
    PathText(id): PathText,
) -> Result<Response, Problem> {
    let s = state.services.clone();
    blocking(move || credentials::delete(&s, &id, &caller.actor(), SystemTime::now())).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
