//! `GET /v1/keys`: the public keys of every role, for pinning by core
//! banking and apps (roles `rp`, `officer`, `auditor`).
//!
//! Active and verify-only keys are listed (a receipt or token signed before
//! a rotation must stay verifiable); retired keys are not. A certificate is
//! included when an officer placed one for the key in
//! `keys.certificates_dir`.

use axum::Router;
use axum::extract::State;
use axum::middleware;
use axum::response::Response;
use axum::routing::get;
use serde_json::json;

use crate::api::problem::Problem;
use crate::api::{AppState, allow, blocking, ok};
use crate::flows::FlowError;
use crate::identity::ApiRole;
use crate::keys::KeyStatus;
use crate::keys::cert::jwk;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/keys", get(list))
        .route_layer(middleware::from_fn(allow(&[
            ApiRole::Rp,
            ApiRole::Officer,
            ApiRole::Auditor,
        ])))
}

async fn list(State(state): State<AppState>) -> Result<Response, Problem> {
    let s = state.services.clone();
    let certs = state.key_certificates.clone();
    blocking(move || {
        let keys = s.keys.list().map_err(FlowError::from)?;
        let listed: Vec<_> = keys
            .iter()
            .filter(|k| k.status != KeyStatus::Retired)
            .map(|k| {
                let spki = k.public.spki_der();
                let certificate = certs
                    .iter()
                    .find(|(der, _)| *der == spki)
                    .map(|(_, pem)| pem.clone());
                json!({
                    "role": k.role.as_str(),
                    "kid": k.kid.to_string(),
                    "version": k.version,
                    "status": k.status.to_string(),
                    "jwk": jwk(k),
                    "certificate": certificate,
                })
            })
            .collect();
        Ok(json!({ "keys": listed }))
    })
    .await
    .map(ok)
}
