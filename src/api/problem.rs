//! RFC 9457 problem details: every refusal and failure leaves as
//! `application/problem+json` with a stable `type`, a `title` a human can
//! read, the HTTP `status`, and, when one input is at fault, the `field`.
//!
//! `type` values are URNs (`urn:signet:problem:<slug>`); the slugs are part
//! of the API and listed in the README. Internal failures carry no detail
//! beyond a request id that also appears in the log line with the cause.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::flows::FlowError;

#[derive(Debug)]
pub struct Problem {
    pub status: StatusCode,
    pub slug: &'static str,
    pub title: String,
    pub detail: Option<String>,
    pub field: Option<String>,
    /// Seconds, for 429 and 503.
    pub retry_after: Option<u64>,
    /// Extension members (RFC 9457 §3.2), merged into the body.
    pub extensions: Option<Box<serde_json::Map<String, serde_json::Value>>>,
}

impl Problem {
    pub fn new(status: StatusCode, slug: &'static str, title: impl Into<String>) -> Problem {
        Problem {
            status,
            slug,
            title: title.into(),
            detail: None,
            field: None,
            retry_after: None,
            extensions: None,
        }
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Problem {
        self.detail = Some(detail.into());
        self
    }

    pub fn field(mut self, field: impl Into<String>) -> Problem {
        self.field = Some(field.into());
        self
    }

    pub fn retry_after(mut self, seconds: u64) -> Problem {
        self.retry_after = Some(seconds);
        self
    }

    pub fn type_uri(&self) -> String {
        format!("urn:signet:problem:{}", self.slug)
    }

    pub fn forbidden(detail: impl Into<String>) -> Problem {
        Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "This client's role may not use this route",
        )
        .detail(detail)
    }

    pub fn invalid(field: impl Into<String>, detail: impl Into<String>) -> Problem {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-request",
            "The request is invalid",
        )
        .field(field)
        .detail(detail)
    }

    /// A failure on our side: the cause goes to the log under `request_id`,
    /// not to the client.
    pub fn internal(cause: &str) -> Problem {
        let mut id = [0u8; 8];
        let _ = aws_lc_rs::rand::fill(&mut id);
        let request_id = crate::audit::hex(&id);
        tracing::error!(request_id = %request_id, cause = %cause, "internal error");
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
        )
        .detail(format!(
            "request id {request_id}; the cause is in the server log"
        ))
    }
}

impl From<FlowError> for Problem {
    fn from(e: FlowError) -> Problem {
        let field = e.field();
        let detail = e.to_string();
        let p = match &e {
            FlowError::Invalid { .. } => Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid-request",
                "The request is invalid",
            ),
            FlowError::Ceremony(w) => Problem::new(
                StatusCode::BAD_REQUEST,
                credential_slug(w.kind()),
                "The WebAuthn response was refused",
            ),
            FlowError::CeremonyNotFound => Problem::new(
                StatusCode::NOT_FOUND,
                "ceremony-not-found",
                "No such ceremony",
            ),
            FlowError::CeremonyExpired => Problem::new(
                StatusCode::GONE,
                "ceremony-expired",
                "The ceremony has expired",
            ),
            FlowError::CeremonyConsumed => Problem::new(
                StatusCode::CONFLICT,
                "ceremony-consumed",
                "The ceremony was already used",
            ),
            FlowError::CeremonyKind { .. } => Problem::new(
                StatusCode::BAD_REQUEST,
                "ceremony-kind",
                "The ceremony is of another kind",
            ),
            FlowError::NotFound { .. } => {
                Problem::new(StatusCode::NOT_FOUND, "not-found", "Not found")
            }
            FlowError::Conflict { .. } => Problem::new(
                StatusCode::CONFLICT,
                "conflict",
                "The request conflicts with stored state",
            ),
            FlowError::Counter { .. } => Problem::new(
                StatusCode::BAD_REQUEST,
                "credential-counter",
                "The signature counter did not advance: possible cloned authenticator",
            ),
            FlowError::Flagged { .. } => Problem::new(
                StatusCode::FORBIDDEN,
                "credential-flagged",
                "The credential is flagged and may not be used",
            ),
            FlowError::Denied { .. } => Problem::new(
                StatusCode::FORBIDDEN,
                "credential-denied",
                "The policy refuses this credential for this action",
            ),
            FlowError::StepUp(step) => {
                let mut p = Problem::new(
                    StatusCode::FORBIDDEN,
                    "step-up-required",
                    "The action needs a stronger credential",
                );
                if let Ok(serde_json::Value::Object(members)) = serde_json::to_value(step) {
                    p.extensions = Some(Box::new(members));
                }
                p
            }
            FlowError::Device { problem, .. } => {
                use crate::flows::DeviceProblem as D;
                let (status, kind, title) = match problem {
                    D::State => (
                        StatusCode::CONFLICT,
                        "device-state",
                        "The device's state does not allow this step",
                    ),
                    D::TokenExpired => (
                        StatusCode::GONE,
                        "token-expired",
                        "The registration token has expired; issue a new one",
                    ),
                    D::TokenConsumed => (
                        StatusCode::CONFLICT,
                        "token-consumed",
                        "The registration token was already redeemed",
                    ),
                    D::TokenSuperseded => (
                        StatusCode::CONFLICT,
                        "token-superseded",
                        "A newer registration token was issued to this device",
                    ),
                    D::TokenInvalid => (
                        StatusCode::BAD_REQUEST,
                        "token-invalid",
                        "Not a registration token of this signet for this device",
                    ),
                    D::DeviceSignature => (
                        StatusCode::FORBIDDEN,
                        "device-signature",
                        "The request is not signed by the enrolled device key",
                    ),
                };
                Problem::new(status, kind, title)
            }
            FlowError::Transaction { problem, .. } => {
                use crate::flows::TransactionProblem as T;
                let (status, kind, title) = match problem {
                    T::Approved => (
                        StatusCode::CONFLICT,
                        "transaction-approved",
                        "The transaction was already approved",
                    ),
                    T::Closed => (
                        StatusCode::CONFLICT,
                        "transaction-closed",
                        "The transaction is cancelled or failed",
                    ),
                    T::Expired => (
                        StatusCode::GONE,
                        "transaction-expired",
                        "The transaction has expired; create a new one",
                    ),
                    T::NoReceipt => (
                        StatusCode::CONFLICT,
                        "transaction-not-approved",
                        "The transaction has no receipt: it is not approved",
                    ),
                    T::Payment => (
                        StatusCode::FORBIDDEN,
                        "payment-mismatch",
                        "The payment the user confirmed differs from the transaction",
                    ),
                };
                Problem::new(status, kind, title)
            }
            FlowError::Pairing { problem, .. } => {
                use crate::flows::PairingProblem as P;
                use crate::store::PairingState as S;
                let (status, kind, title) = match problem {
                    P::State(S::Created) => (
                        StatusCode::CONFLICT,
                        "pairing-created",
                        "The pairing is not claimed by a phone yet",
                    ),
                    P::State(S::Claimed) => (
                        StatusCode::CONFLICT,
                        "pairing-claimed",
                        "The pairing is claimed and waits for the phone's answer",
                    ),
                    P::State(S::Approved) => (
                        StatusCode::CONFLICT,
                        "pairing-approved",
                        "The pairing was approved already",
                    ),
                    P::State(S::Denied) => (
                        StatusCode::CONFLICT,
                        "pairing-denied",
                        "The user denied the pairing",
                    ),
                    P::State(S::Consumed) => (
                        StatusCode::CONFLICT,
                        "pairing-consumed",
                        "The pairing's login was taken already",
                    ),
                    P::State(S::Expired) => (
                        StatusCode::GONE,
                        "pairing-expired",
                        "The pairing has expired; start a new one",
                    ),
                    P::State(S::Locked) => (
                        StatusCode::CONFLICT,
                        "pairing-locked",
                        "The pairing is locked after too many failed attempts",
                    ),
                    P::Code => (
                        StatusCode::FORBIDDEN,
                        "pairing-code",
                        "Not the pairing's one-time code",
                    ),
                    P::Secret => (
                        StatusCode::FORBIDDEN,
                        "pairing-secret",
                        "Not the pairing's secret",
                    ),
                    P::User => (
                        StatusCode::FORBIDDEN,
                        "pairing-user",
                        "The phone's user is not the user the desktop named",
                    ),
                };
                Problem::new(status, kind, title)
            }
            FlowError::Unavailable(detail) => {
                // The cause was logged where the key error became this one;
                // the detail is written for the client (e.g. which request
                // to retry when the first half of a step was recorded).
                return Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "key-device-unavailable",
                    "The key device is unavailable; try again shortly",
                )
                .detail(detail.clone())
                .retry_after(1);
            }
            FlowError::StoreUnavailable(detail) => {
                return Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store-unavailable",
                    "The store is unavailable; try again shortly",
                )
                .detail(detail.clone())
                .retry_after(1);
            }
            FlowError::VerificationLog(cause) => {
                // The cause names a path on this host: for the log, not the client.
                tracing::error!(cause = %cause, "verification log unwritable");
                return Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "verification-log-unavailable",
                    "The verification log cannot be written; nothing was approved; retry",
                )
                .retry_after(1);
            }
            FlowError::Internal(cause) => return Problem::internal(cause),
        };
        let p = p.detail(detail);
        match field {
            Some(f) => p.field(f),
            None => p,
        }
    }
}

/// One problem type per engine error kind, so a client can tell a malformed
/// response from a signature that does not verify without parsing text.
fn credential_slug(kind: &str) -> &'static str {
    match kind {
        "missing" => "credential-missing-member",
        "wrong_type" => "credential-wrong-type",
        "empty" => "credential-empty-member",
        "not_base64url" => "credential-not-base64url",
        "too_large" => "credential-too-large",
        "malformed" => "credential-malformed",
        "mismatch" => "credential-mismatch",
        "policy" => "credential-policy",
        "bad_signature" => "credential-bad-signature",
        "algorithm" => "credential-algorithm",
        "counter_not_increased" => "credential-counter",
        "certificate_path" => "credential-certificate-path",
        _ => "credential-refused",
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut body = json!({
            "type": self.type_uri(),
            "title": self.title,
            "status": self.status.as_u16(),
        });
        if let Some(d) = &self.detail {
            body["detail"] = json!(d);
        }
        if let Some(f) = &self.field {
            body["field"] = json!(f);
        }
        if let Some(members) = self.extensions
            && let Some(obj) = body.as_object_mut()
        {
            for (k, v) in *members {
                // The standard members keep their meaning.
                obj.entry(k).or_insert(v);
            }
        }
        let mut response = (self.status, body.to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(s) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            headers.insert(header::RETRY_AFTER, v);
        }
        response
    }
}
