//! `GET /v1/events?after=CURSOR&limit=N` (role `rp`): what core banking
//! should tell customers about, in order: credentials flagged because their
//! authenticator model was reported compromised, and the status changes
//! behind them.
//!
//! The feed is the audit log filtered to those events, so it cannot say
//! anything the log does not, and the cursor is the audit sequence number:
//! pass the answer's `next` as `after` to continue. A page scans at most
//! [`SCAN_MAX`] log entries, so a client far behind advances in bounded
//! steps even when few of them are events.

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::middleware;
use axum::response::Response;
use axum::routing::get;
use serde_json::{Value, json};

use crate::api::problem::Problem;
use crate::api::{AppState, NumberParam, allow, blocking, number_query, ok};
use crate::audit::decode_body;
use crate::flows::FlowError;
use crate::identity::ApiRole;

/// The audit events the feed carries.
pub const FEED_EVENTS: [&str; 2] = ["credential.flagged", "mds.status_changed"];
/// Log entries read per request at most.
pub const SCAN_MAX: usize = 5000;
const LIMIT_MAX: usize = 500;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/events", get(feed))
        .route_layer(middleware::from_fn(allow(&[ApiRole::Rp])))
}

/// `after` (default 0) and `limit` (default 100, at most `LIMIT_MAX`).
fn parse_query(query: Option<&str>) -> Result<(u64, usize), Problem> {
    let v = number_query(
        query,
        &[
            NumberParam {
                name: "after",
                default: 0,
                min: 0,
                max: u64::MAX,
            },
            NumberParam {
                name: "limit",
                default: 100,
                min: 1,
                max: LIMIT_MAX as u64,
            },
        ],
    )?;
    Ok((v[0], v[1] as usize))
}

async fn feed(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Response, Problem> {
    let (after, limit) = parse_query(query.as_deref())?;
    let s = state.services.clone();
    blocking(move || {
        let mut events: Vec<Value> = Vec::new();
        let mut cursor = after;
        let mut scanned = 0;
        while events.len() < limit && scanned < SCAN_MAX {
            let page = s.store.audit_range(cursor.saturating_add(1), 500)?;
            if page.is_empty() {
                break;
            }
            for entry in &page {
                cursor = entry.seq;
                scanned += 1;
                let Ok(event) = decode_body(&entry.body) else {
                    continue;
                };
                if FEED_EVENTS.contains(&event.event.as_str()) {
                    events.push(json!({
                        "cursor": entry.seq,
                        "time": crate::rfc3339::format_ms(event.time_ms),
                        "type": event.event,
                        "subject": event.subject,
                        "detail": event.detail,
                    }));
                    if events.len() == limit {
                        break;
                    }
                }
            }
        }
        Ok::<_, FlowError>(json!({ "events": events, "next": cursor }))
    })
    .await
    .map(ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_defaults_and_bounds() {
        assert_eq!(parse_query(None).ok(), Some((0, 100)));
        assert_eq!(parse_query(Some("after=7&limit=3")).ok(), Some((7, 3)));
        for bad in [
            "after=-1",
            "after=x",
            "limit=0",
            "limit=501",
            "from=1",
            "after=1&after=2",
        ] {
            assert!(parse_query(Some(bad)).is_err(), "{bad}");
        }
    }
}
