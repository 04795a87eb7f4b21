//! `/v1/pairings/*`: cross-device (QR) login (README, "QR cross-device
//! login"). Core banking (role `rp`) calls every route, for the desktop
//! session (create, status, consume: with `Signet-Desktop-Secret`) and for
//! the phone session (claim; approve and deny with `Signet-Phone-Secret`).
//! Secrets travel in headers only: a query string ends up in access logs.

use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::api::problem::Problem;
use crate::api::{
    AppState, JsonBody, NumberParam, PathText, Who, allow, blocking, number_query, ok,
};
use crate::flows::pairing::{self, DESKTOP_SECRET_HEADER, PHONE_SECRET_HEADER};
use crate::identity::ApiRole;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/pairings", post(create))
        .route("/v1/pairings/{pairingId}", get(status))
        .route("/v1/pairings/{pairingId}/claim", post(claim))
        .route("/v1/pairings/{pairingId}/approve", post(approve))
        .route("/v1/pairings/{pairingId}/deny", post(deny))
        .route("/v1/pairings/{pairingId}/consume", post(consume))
        .route_layer(middleware::from_fn(allow(&[ApiRole::Rp])))
}

/// The longest long poll asked for; the request timeout shortens it.
pub const WAIT_MAX_S: u64 = 60;

/// A secret header, if present. Not text: refused, naming the header.
fn secret(headers: &HeaderMap, name: &'static str) -> Result<Option<String>, Problem> {
    headers
        .get(name)
        .map(|v| {
            v.to_str()
                .map(str::to_string)
                .map_err(|_| Problem::invalid(name, "must be base64url text"))
        })
        .transpose()
}

async fn create(
    State(state): State<AppState>,
    Who(caller): Who,
    JsonBody(body): JsonBody,
) -> Result<Response, Problem> {
    let s = state.services.clone();
    let answer =
        blocking(move || pairing::create(&s, &body, &caller.actor(), SystemTime::now())).await?;
    Ok((StatusCode::CREATED, axum::Json(answer)).into_response())
}

async fn claim(
    State(state): State<AppState>,
    Who(caller): Who,
    PathText(id): PathText,
    JsonBody(body): JsonBody,
) -> Result<Response, Problem> {
    let s = state.services.clone();
    blocking(move || pairing::claim(&s, &id, &body, &caller.actor(), SystemTime::now()))
        .await
        .map(ok)
}

async fn approve(
    State(state): State<AppState>,
    Who(caller): Who,
    PathText(id): PathText,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<Response, Problem> {
    let s = state.services.clone();
    let phone = zeroize::Zeroizing::new(secret(&headers, PHONE_SECRET_HEADER)?);
    blocking(move || {
        pairing::approve(
            &s,
            &id,
            phone.as_deref(),
            &body,
            &caller.actor(),
            SystemTime::now(),
        )
    })
    .await
    .map(ok)
}

async fn deny(
    State(state): State<AppState>,
    Who(caller): Who,
    PathText(id): PathText,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<Response, Problem> {
    let s = state.services.clone();
    let phone = zeroize::Zeroizing::new(secret(&headers, PHONE_SECRET_HEADER)?);
    blocking(move || {
        pairing::deny(
            &s,
            &id,
            phone.as_deref(),
            &body,
            &caller.actor(),
            SystemTime::now(),
        )
    })
    .await
    .map(ok)
}

async fn consume(
    State(state): State<AppState>,
    Who(caller): Who,
    PathText(id): PathText,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let s = state.services.clone();
    let desktop = zeroize::Zeroizing::new(secret(&headers, DESKTOP_SECRET_HEADER)?);
    blocking(move || {
        pairing::consume(
            &s,
            &id,
            desktop.as_deref(),
            &caller.actor(),
            SystemTime::now(),
        )
    })
    .await
    .map(ok)
}

/// `GET /v1/pairings/{id}?since=REVISION&wait=SECONDS`: answers at once
/// when the pairing's revision is past `since` (or it is approved or
/// final); otherwise holds until it changes, expires, or `wait` seconds
/// (at most the request timeout less a second) pass, and answers the
/// state then.
async fn status(
    State(state): State<AppState>,
    Who(caller): Who,
    PathText(id): PathText,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, Problem> {
    let params = number_query(
        query.as_deref(),
        &[
            NumberParam {
                name: "since",
                default: 0,
                min: 0,
                max: u64::MAX,
            },
            NumberParam {
                name: "wait",
                default: 0,
                min: 0,
                max: WAIT_MAX_S,
            },
        ],
    )?;
    let (since, wait) = (params[0], params[1]);
    let wait =
        Duration::from_secs(wait).min(state.request_timeout.saturating_sub(Duration::from_secs(1)));
    let deadline = tokio::time::Instant::now() + wait;
    let desktop = std::sync::Arc::new(zeroize::Zeroizing::new(secret(
        &headers,
        DESKTOP_SECRET_HEADER,
    )?));
    let pairing_id = pairing::parse_id(&id)?;
    let notify = state.services.pairings.watch.subscribe(&pairing_id);
    loop {
        // Armed before the read, so a change between the read and the
        // wait still wakes this poll.
        let changed = notify.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let s = state.services.clone();
        let (caller, desktop) = (caller.clone(), desktop.clone());
        let st = blocking(move || {
            pairing::status(
                &s,
                &pairing_id,
                desktop.as_deref(),
                &caller.actor(),
                SystemTime::now(),
            )
        })
        .await?;
        let now = tokio::time::Instant::now();
        if st.revision > since || st.settled || now >= deadline {
            return Ok(ok(st.answer));
        }
        // Wake at the pairing's expiry too, to answer "expired" on time.
        let until = deadline.min(now + Duration::from_millis(st.expires_in_ms));
        tokio::select! {
            () = &mut changed => {}
            () = tokio::time::sleep_until(until) => {}
        }
    }
}
