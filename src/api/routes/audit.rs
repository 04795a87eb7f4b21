//! `GET /v1/audit?from=SEQ&limit=N` (role `auditor`): a page of the
//! hash-chained audit log with the checkpoints in that range, enough for
//! an auditor to recompute the chain offline (see `signet audit verify`).

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::middleware;
use axum::response::Response;
use axum::routing::get;
use serde_json::{Value, json};

use crate::api::problem::Problem;
use crate::api::{AppState, NumberParam, allow, blocking, number_query, ok};
use crate::audit::{decode_body, hex};
use crate::flows::FlowError;
use crate::identity::ApiRole;

/// Largest page.
pub const PAGE_MAX: usize = 1000;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/audit", get(page))
        .route_layer(middleware::from_fn(allow(&[ApiRole::Auditor])))
}

/// `from` (default 1) and `limit` (default 100, at most [`PAGE_MAX`]).
fn parse_query(query: Option<&str>) -> Result<(u64, usize), Problem> {
    let v = number_query(
        query,
        &[
            NumberParam {
                name: "from",
                default: 1,
                min: 1,
                max: u64::MAX,
            },
            NumberParam {
                name: "limit",
                default: 100,
                min: 1,
                max: PAGE_MAX as u64,
            },
        ],
    )?;
    Ok((v[0], v[1] as usize))
}

async fn page(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Response, Problem> {
    let (from, limit) = parse_query(query.as_deref())?;
    let s = state.services.clone();
    blocking(move || {
        let store = s.store.as_ref();
        let entries = store.audit_range(from, limit)?;
        let last_seq = entries.last().map(|e| e.seq);
        let checkpoints = match last_seq {
            Some(last) => store
                .checkpoints(from, limit)?
                .into_iter()
                .filter(|c| c.seq <= last)
                .collect(),
            None => Vec::new(),
        };
        let entries: Vec<Value> = entries
            .iter()
            .map(|e| {
                let event = decode_body(&e.body).map(|ev| {
                    json!({
                        "time": crate::rfc3339::format_ms(ev.time_ms),
                        "actor": ev.actor,
                        "event": ev.event,
                        "subject": ev.subject,
                        "detail": ev.detail,
                    })
                });
                json!({
                    "seq": e.seq,
                    "prevHash": hex(&e.prev_hash),
                    "hash": hex(&e.hash),
                    "body": crate::webauthn::b64url(&e.body),
                    "event": event.unwrap_or(Value::Null),
                })
            })
            .collect();
        let checkpoints: Vec<Value> = checkpoints
            .iter()
            .map(|c| {
                json!({
                    "seq": c.seq,
                    "hash": hex(&c.hash),
                    "kid": c.kid,
                    "signature": crate::webauthn::b64url(&c.signature),
                    "time": crate::rfc3339::format_ms(c.time_ms),
                })
            })
            .collect();
        let next = last_seq.filter(|_| entries.len() == limit).map(|s| s + 1);
        Ok::<_, FlowError>(json!({ "entries": entries, "checkpoints": checkpoints, "next": next }))
    })
    .await
    .map(ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_defaults_and_bounds() {
        assert_eq!(parse_query(None).ok(), Some((1, 100)));
        assert_eq!(parse_query(Some("from=5&limit=2")).ok(), Some((5, 2)));
        for bad in ["from=0", "from=x", "limit=0", "limit=1001", "sort=asc"] {
            assert!(parse_query(Some(bad)).is_err(), "{bad}");
        }
    }
}
