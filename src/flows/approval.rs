//! Transaction approval with dynamic linking: core banking creates a
//! transaction, the user approves exactly its details with a passkey, and
//! signet countersigns the verified approval.
//!
//! # Life of a transaction
//!
//! ```text
//! create ──► pending ──approval──► approved (receipt)
//!               │ ├──cancel──────► cancelled
//!               │ ├──ttl─────────► expired     (written when next touched)
//!               │ └──refusals────► failed      (after attempts_max refused answers)
//!               └──step-up: stays pending (a stronger credential may answer)
//! ```
//!
//! * **Create** checks the details ([`crate::transaction::Details`]), picks
//!   the action (the request's, else the one named like `details.type`,
//!   else `default`) and resolves it with the amount through the policy's
//!   thresholds, draws a 32-byte nonce and derives the challenge
//!   `SHA-256("signet/transaction-challenge/v1" ‖ nonce ‖ canonical
//!   details)`. A `display` text given by core banking becomes the member
//!   `details.display`, so the text the user reads is signed with the rest;
//!   without one, signet derives the text from the details.
//! * **Approval** re-derives the challenge from the stored details and
//!   nonce (nothing the client sends chooses it), verifies the assertion
//!   with the engine, enforces the action's requirement, and commits the
//!   approval and the credential's counter in one store step. Only a
//!   pending transaction is approved, once: a replay is refused with
//!   `transaction-approved`.
//! * A refused answer (bad signature, wrong credential, denied model)
//!   counts as an attempt; the transaction stays pending until
//!   `attempts_max` refusals close it as failed. A step-up answer is not a
//!   refusal: the user authenticated, with too weak a credential, and may
//!   answer again with a stronger one before the transaction expires.
//!
//! # Secure Payment Confirmation
//!
//! A transaction created with `spc` also answers SPC: its answer carries a
//! `paymentRequest` (method data and total) for `new PaymentRequest(...)`.
//! An assertion whose client data is `payment.get` is accepted only for
//! such a transaction, from one of the RP's origins or the `topOrigin`
//! given, and its `payment` member must repeat the transaction: the RP ID,
//! the top origin, the total (amount and currency as the details carry
//! them), the instrument, and the payee name and origin. Any difference
//! refuses. A plain `webauthn.get` answer stays possible (browsers without
//! SPC).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::time::SystemTime;

use super::ceremony::{
    Counter, Expected, object, only, opt_str, reason_body, refused, req_str, usable_credentials,
    user_text, verify_assertion,
};
use super::{
    FlowError, Services, TransactionProblem, sign_with_active, truncate, unix_ms, uuid_text,
};
use crate::audit::AuditEvent;
use crate::evidence::{LogRecord, SignetMeta};
use crate::keys::{Role, sha256};
use crate::policy::actions::Requirement;
use crate::policy::tiers::Policy;
use crate::receipt::Receipt;
use crate::store::{
    StoreError, TransactionApproval, TransactionId, TransactionRecord, TransactionState, limits,
};
use crate::transaction::{self, Details, NONCE_LEN};
use crate::webauthn::options::RequestOptionsBuilder;
use crate::webauthn::response::AuthenticationResponse;
use crate::webauthn::{RelyingParty, UserVerification, b64url};

/// Transaction lifetime, refusals before failure, the verification log.
pub struct Settings {
    pub ttl_ms: u64,
    pub attempts_max: u32,
    pub log: Option<crate::evidence_log::VerificationLog>,
}

impl Settings {
    pub fn from_config(c: &crate::config::TransactionSettings) -> Settings {
        Settings {
            ttl_ms: u64::try_from(c.ttl.as_millis()).unwrap_or(u64::MAX),
            attempts_max: c.attempts_max,
            log: c
                .verification_log
                .clone()
                .map(crate::evidence_log::VerificationLog::new),
        }
    }
}

/// What the options asked for, kept with the transaction.
#[derive(Serialize, Deserialize)]
struct Asked {
    user_verification: UserVerification,
    spc: Option<Spc>,
}

/// A transaction's Secure Payment Confirmation parameters.
#[derive(Clone, Serialize, Deserialize)]
struct Spc {
    top_origin: String,
    payee_name: Option<String>,
    payee_origin: Option<String>,
    instrument_name: String,
    instrument_icon: String,
}

/// The longest payee name or instrument name accepted.
const SPC_TEXT_MAX: usize = 256;
/// The longest instrument icon URL accepted (a small data: URL fits).
const ICON_MAX: usize = 4096;

fn origin(value: &str, field: &str) -> Result<String, FlowError> {
    let url = reqwest::Url::parse(value)
        .map_err(|e| FlowError::invalid(field, format!("not an origin: {e}")))?;
    let serialized = url.origin().ascii_serialization();
    if url.scheme() != "https" || serialized != value {
        return Err(FlowError::invalid(
            field,
            "must be an https origin: scheme, host and port only (https://shop.example)",
        ));
    }
    Ok(serialized)
}

fn spc_text(obj: &Map<String, Value>, name: &str, path: &str) -> Result<Option<String>, FlowError> {
    opt_str(obj, name, path)?
        .map(|t| {
            let field = format!("{path}{name}");
            if t.is_empty() || t.len() > SPC_TEXT_MAX || t.chars().any(char::is_control) {
                return Err(FlowError::invalid(
                    field,
                    format!("must be 1 to {SPC_TEXT_MAX} bytes without control characters"),
                ));
            }
            Ok(t.to_string())
        })
        .transpose()
}

impl Spc {
    /// `spc`: `{"topOrigin", "payeeName"?, "payeeOrigin"?, "instrument":
    /// {"displayName", "icon"}}`.
    fn from_body(v: &Value) -> Result<Spc, FlowError> {
        let obj = object(v, "spc")?;
        only(
            obj,
            &["topOrigin", "payeeName", "payeeOrigin", "instrument"],
            "spc.",
        )?;
        let top_origin = origin(req_str(obj, "topOrigin", "spc.")?, "spc.topOrigin")?;
        let payee_name = spc_text(obj, "payeeName", "spc.")?;
        let payee_origin = opt_str(obj, "payeeOrigin", "spc.")?
            .map(|o| origin(o, "spc.payeeOrigin"))
            .transpose()?;
        if payee_name.is_none() && payee_origin.is_none() {
            return Err(FlowError::invalid(
                "spc",
                "needs payeeName or payeeOrigin (Secure Payment Confirmation shows the payee)",
            ));
        }
        let instrument = object(
            obj.get("instrument")
                .ok_or_else(|| FlowError::invalid("spc.instrument", "is required"))?,
            "spc.instrument",
        )?;
        only(instrument, &["displayName", "icon"], "spc.instrument.")?;
        let instrument_name = spc_text(instrument, "displayName", "spc.instrument.")?
            .ok_or_else(|| FlowError::invalid("spc.instrument.displayName", "is required"))?;
        let icon = req_str(instrument, "icon", "spc.instrument.")?;
        let icon_ok = icon.len() <= ICON_MAX
            && reqwest::Url::parse(icon)
                .is_ok_and(|u| u.scheme() == "https" || u.scheme() == "data");
        if !icon_ok {
            return Err(FlowError::invalid(
                "spc.instrument.icon",
                format!("must be an https: or data: URL of at most {ICON_MAX} bytes"),
            ));
        }
        Ok(Spc {
            top_origin,
            payee_name,
            payee_origin,
            instrument_name,
            instrument_icon: icon.to_string(),
        })
    }

    /// `payment` of a `payment.get` client data, against the transaction.
    fn check(&self, payment: Option<&Value>, rp_id: &str, d: &Details) -> Result<(), FlowError> {
        const AT: &str = "credential.response.clientDataJSON.payment";
        let mismatch = |member: &str, reason: String| FlowError::Transaction {
            problem: TransactionProblem::Payment,
            field: format!("{AT}.{member}"),
            reason,
        };
        let p = payment
            .and_then(Value::as_object)
            .ok_or_else(|| FlowError::Transaction {
                problem: TransactionProblem::Payment,
                field: AT.into(),
                reason: "a payment.get answer must carry the payment member".into(),
            })?;
        let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
        let same = |member: &str, got: Option<String>, want: Option<&str>| {
            if got.as_deref() == want {
                Ok(())
            } else {
                Err(mismatch(
                    member,
                    format!(
                        "is {:?}, the transaction has {:?}",
                        got.map(|g| truncate(&g, 128)),
                        want
                    ),
                ))
            }
        };
        same("rpId", text(p.get("rpId")), Some(rp_id))?;
        same(
            "topOrigin",
            text(p.get("topOrigin")),
            Some(&self.top_origin),
        )?;
        same(
            "payeeName",
            text(p.get("payeeName")),
            self.payee_name.as_deref(),
        )?;
        same(
            "payeeOrigin",
            text(p.get("payeeOrigin")),
            self.payee_origin.as_deref(),
        )?;
        let total = p.get("total");
        same(
            "total.value",
            text(total.and_then(|t| t.get("value"))),
            d.value.get("amount").and_then(Value::as_str),
        )?;
        same(
            "total.currency",
            text(total.and_then(|t| t.get("currency"))),
            d.value.get("currency").and_then(Value::as_str),
        )?;
        let instrument = p.get("instrument");
        same(
            "instrument.displayName",
            text(instrument.and_then(|i| i.get("displayName"))),
            Some(&self.instrument_name),
        )?;
        same(
            "instrument.icon",
            text(instrument.and_then(|i| i.get("icon"))),
            Some(&self.instrument_icon),
        )
    }

    /// The RP an SPC answer may come from: the merchant's page calls
    /// PaymentRequest, so its origin is the top origin given.
    fn relying_party(&self, rp: &RelyingParty) -> RelyingParty {
        let mut rp = rp.clone();
        if !rp.origins.contains(&self.top_origin) {
            rp.origins.push(self.top_origin.clone());
        }
        if !rp.top_origins.is_empty() && !rp.top_origins.contains(&self.top_origin) {
            rp.top_origins.push(self.top_origin.clone());
        }
        rp
    }

    /// Arguments for `new PaymentRequest(methodData, details)`.
    fn payment_request(
        &self,
        rp_id: &str,
        challenge: &[u8],
        credential_ids: &[String],
        timeout_ms: u32,
        d: &Details,
    ) -> Value {
        let mut data = json!({
            "challenge": b64url(challenge),
            "rpId": rp_id,
            "credentialIds": credential_ids,
            "instrument": {"displayName": self.instrument_name, "icon": self.instrument_icon},
            "timeout": timeout_ms,
        });
        if let Some(n) = &self.payee_name {
            data["payeeName"] = json!(n);
        }
        if let Some(o) = &self.payee_origin {
            data["payeeOrigin"] = json!(o);
        }
        json!({
            "methodData": [{"supportedMethods": "secure-payment-confirmation", "data": data}],
            "details": {"total": {"label": "Total", "amount": {
                "currency": d.value.get("currency"),
                "value": d.value.get("amount"),
            }}},
        })
    }
}

/// The text shown when core banking gives none: derived from the signed
/// details only ("payment: 1500.00 CHF to ACME AG").
pub fn display_text(d: &Details) -> String {
    let mut text = d.kind.clone();
    if let (Some(Value::String(a)), Some(Value::String(c))) =
        (d.value.get("amount"), d.value.get("currency"))
    {
        text.push_str(&format!(": {a} {c}"));
    }
    let payee = match d.value.get("payee") {
        Some(Value::String(p)) => Some(p.as_str()),
        Some(Value::Object(p)) => p.get("name").and_then(Value::as_str),
        _ => None,
    };
    if let Some(p) = payee {
        text.push_str(" to ");
        text.push_str(p);
    }
    truncate(
        &text.replace(char::is_control, " "),
        limits::TRANSACTION_DISPLAY_MAX / 4,
    )
}

/// A display text: 1 to 1024 bytes, no control characters but line breaks.
fn display_checked<'a>(text: &'a str, field: &str) -> Result<&'a str, FlowError> {
    if text.is_empty() || text.len() > limits::TRANSACTION_DISPLAY_MAX {
        return Err(FlowError::invalid(
            field,
            format!("must be 1 to {} bytes", limits::TRANSACTION_DISPLAY_MAX),
        ));
    }
    if text.chars().any(|c| c.is_control() && c != '\n') {
        return Err(FlowError::invalid(
            field,
            "contains control characters other than line breaks",
        ));
    }
    Ok(text)
}

fn transaction_id(text: &str) -> Result<TransactionId, FlowError> {
    let bytes = super::b64_field(text, "transactionId", 16, 16)?;
    bytes
        .try_into()
        .map_err(|_| FlowError::invalid("transactionId", "must be 16 bytes, base64url"))
}

fn stored_details(t: &TransactionRecord) -> Result<Details, FlowError> {
    serde_json::from_slice(&t.details)
        .map_err(|e| e.to_string())
        .and_then(|v: Value| Details::parse(&v).map_err(|e| e.to_string()))
        .map_err(|e| FlowError::Internal(format!("stored transaction details: {e}")))
}

fn asked(t: &TransactionRecord) -> Result<Asked, FlowError> {
    serde_json::from_slice(&t.options)
        .map_err(|e| FlowError::Internal(format!("stored transaction options: {e}")))
}

/// The transaction, with an overdue pending one written as expired.
fn load(
    s: &Services,
    id: &TransactionId,
    actor: &str,
    now_ms: u64,
) -> Result<TransactionRecord, FlowError> {
    let t = s.store.transaction(id)?.ok_or(FlowError::NotFound {
        what: "transaction",
        field: "transactionId".into(),
    })?;
    if t.state == TransactionState::Pending && now_ms >= t.expires_ms {
        let closed = close(
            t.clone(),
            TransactionState::Expired,
            "not approved in time",
            now_ms,
        );
        match s.store.update_transaction(&closed) {
            Ok(()) => {
                s.record(AuditEvent::new(
                    now_ms,
                    actor,
                    "transaction.expired",
                    b64url(id),
                ))?;
                return Ok(closed);
            }
            // Someone else moved it first: theirs is the state.
            Err(StoreError::Conflict { .. }) => return load(s, id, actor, now_ms),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(t)
}

fn close(
    mut t: TransactionRecord,
    state: TransactionState,
    reason: &str,
    now_ms: u64,
) -> TransactionRecord {
    t.revision += 1;
    t.state = state;
    t.updated_ms = now_ms;
    t.closed_reason = Some(reason.to_string());
    t
}

/// Refuses anything but a pending transaction, naming why.
fn pending(t: &TransactionRecord) -> Result<(), FlowError> {
    let (problem, reason) = match t.state {
        TransactionState::Pending => return Ok(()),
        TransactionState::Approved => (
            TransactionProblem::Approved,
            "the transaction was already approved".to_string(),
        ),
        TransactionState::Expired => (
            TransactionProblem::Expired,
            "the transaction has expired; create a new one".to_string(),
        ),
        state => (
            TransactionProblem::Closed,
            format!(
                "the transaction is {state}: {}",
                t.closed_reason.as_deref().unwrap_or("closed")
            ),
        ),
    };
    Err(FlowError::Transaction {
        problem,
        field: "transactionId".into(),
        reason,
    })
}

/// `POST /v1/transactions`.
pub fn create(
    s: &Services,
    body: &Value,
    actor: &str,
    now: SystemTime,
) -> Result<Value, FlowError> {
    let now_ms = unix_ms(now);
    let obj = object(body, "body")?;
    only(obj, &["user", "action", "details", "display", "spc"], "")?;
    let user = object(
        obj.get("user")
            .ok_or_else(|| FlowError::invalid("user", "is required"))?,
        "user",
    )?;
    only(user, &["name"], "user.")?;
    let name = user_text(req_str(user, "name", "user.")?, "user.name", false)?;
    let details_value = obj
        .get("details")
        .ok_or_else(|| FlowError::invalid("details", "is required"))?;
    let bad_details = |e: transaction::DetailsError| FlowError::invalid(e.field, e.reason);
    let mut details = Details::parse(details_value).map_err(bad_details)?;
    if let Some(text) = opt_str(obj, "display", "")? {
        display_checked(text, "display")?;
        if details.value.contains_key("display") {
            return Err(FlowError::invalid(
                "display",
                "details already carry a display member; give the text in one place",
            ));
        }
        // The text joins the signed details: canonicalized again with it.
        let mut with_display = details.value;
        with_display.insert("display".into(), Value::String(text.to_string()));
        details = Details::parse(&Value::Object(with_display)).map_err(bad_details)?;
    }
    // Shown to the user as it is: checked wherever it came from.
    let display = match details.value.get("display") {
        Some(Value::String(t)) => display_checked(t, "details.display")?.to_string(),
        Some(_) => return Err(FlowError::invalid("details.display", "must be a string")),
        None => display_text(&details),
    };
    let spc = obj
        .get("spc")
        .filter(|v| !v.is_null())
        .map(Spc::from_body)
        .transpose()?;
    if spc.is_some() && details.amount.is_none() {
        return Err(FlowError::invalid(
            "details.amount",
            "is required with spc: Secure Payment Confirmation shows a total",
        ));
    }

    let policy = s.policy.get();
    let action = match opt_str(obj, "action", "")? {
        Some(a) => Some(a),
        None => policy
            .action(Some(&details.kind))
            .map(|_| details.kind.as_str()),
    };
    let req = Services::requirement(&policy, action, details.amount.as_ref())?;
    let user = s.store.user_by_name(&name)?.ok_or(FlowError::NotFound {
        what: "user",
        field: "user.name".into(),
    })?;
    let allow = usable_credentials(s, &policy, &req, &user)?;

    let mut id = [0u8; 16];
    let mut nonce = [0u8; NONCE_LEN];
    aws_lc_rs::rand::fill(&mut id)
        .and_then(|()| aws_lc_rs::rand::fill(&mut nonce))
        .map_err(|_| FlowError::Internal("random generator failed".into()))?;
    let challenge = details.challenge(&nonce);
    let timeout_ms = u32::try_from(s.transactions.ttl_ms)
        .unwrap_or(u32::MAX)
        .min(s.ceremony_timeout_ms);
    let credential_ids: Vec<String> = allow.iter().map(|c| b64url(&c.id)).collect();
    let options = RequestOptionsBuilder::new(&s.rp, &challenge)
        .timeout_ms(timeout_ms)
        .allow_credentials(allow)
        .user_verification(req.user_verification)
        .build()
        .map_err(FlowError::in_request)?;
    let payment_request = spc.as_ref().map(|spc| {
        spc.payment_request(&s.rp.id, &challenge, &credential_ids, timeout_ms, &details)
    });
    let asked_json = serde_json::to_vec(&Asked {
        user_verification: req.user_verification,
        spc,
    })
    .map_err(|e| FlowError::Internal(format!("transaction options: {e}")))?;
    let record = TransactionRecord {
        id,
        revision: 1,
        state: TransactionState::Pending,
        user_id: user.id.clone(),
        action: req.action.clone(),
        details: details.canonical.clone(),
        nonce,
        display: display.clone(),
        created_ms: now_ms,
        updated_ms: now_ms,
        expires_ms: now_ms.saturating_add(s.transactions.ttl_ms),
        options: asked_json,
        attempts: 0,
        approval: None,
        closed_reason: None,
    };
    s.store.insert_transaction(&record)?;
    s.record(
        AuditEvent::new(now_ms, actor, "transaction.created", b64url(&id)).with_detail(json!({
            "userId": b64url(&user.id),
            "action": req.action,
            "type": details.kind,
            "amount": details.amount.as_ref().map(|a| format!("{} {}", a.value, a.currency)),
            "detailsSha256": crate::hex::encode(&sha256(&details.canonical)),
            "spc": payment_request.is_some(),
            "requirement": requirement_json(&req),
            "policyVersion": policy.version,
        })),
    )?;
    let mut answer = describe(&record)?;
    answer["publicKey"] =
        serde_json::to_value(&options).map_err(|e| FlowError::Internal(format!("options: {e}")))?;
    answer["requirement"] = requirement_json(&req);
    if let Some(p) = payment_request {
        answer["paymentRequest"] = p;
    }
    Ok(answer)
}

fn requirement_json(req: &crate::policy::actions::Requirement) -> Value {
    json!({
        "minTier": req.min_tier,
        "userVerification": req.user_verification.as_str(),
        "deviceBound": req.device_bound,
        "threshold": req.threshold,
    })
}

/// `GET /v1/transactions/{id}`: the transaction as stored.
pub fn get(s: &Services, id_text: &str, actor: &str, now: SystemTime) -> Result<Value, FlowError> {
    let id = transaction_id(id_text)?;
    describe(&load(s, &id, actor, unix_ms(now))?)
}

fn describe(t: &TransactionRecord) -> Result<Value, FlowError> {
    let canonical = String::from_utf8(t.details.clone())
        .map_err(|_| FlowError::Internal("stored transaction details are not UTF-8".into()))?;
    let details: Value = serde_json::from_str(&canonical)
        .map_err(|e| FlowError::Internal(format!("stored transaction details: {e}")))?;
    let nonce = b64url(&t.nonce);
    Ok(json!({
        "transactionId": b64url(&t.id),
        "state": t.state.as_str(),
        "userId": b64url(&t.user_id),
        "action": t.action,
        "details": details,
        "canonicalDetails": canonical,
        "nonce": nonce,
        "challenge": b64url(&transaction::challenge(&t.nonce, &t.details)),
        "display": t.display,
        "createdAt": crate::rfc3339::format_ms(t.created_ms),
        "expiresAt": crate::rfc3339::format_ms(t.expires_ms),
        "attempts": t.attempts,
        "approval": t.approval.as_ref().map(|a| json!({
            "credentialId": b64url(&a.credential_id),
            "approvedAt": crate::rfc3339::format_ms(a.approved_ms),
            "receiptSha256": crate::hex::encode(&sha256(&a.receipt)),
        })),
        "closedReason": t.closed_reason,
    }))
}

/// `POST /v1/transactions/{id}/cancel`. Cancelling a cancelled transaction
/// answers as the first time did; any other closed state refuses.
pub fn cancel(
    s: &Services,
    id_text: &str,
    body: &Value,
    actor: &str,
    now: SystemTime,
) -> Result<Value, FlowError> {
    let now_ms = unix_ms(now);
    let id = transaction_id(id_text)?;
    let reason = reason_body(body)?;
    let t = load(s, &id, actor, now_ms)?;
    if t.state == TransactionState::Cancelled {
        return describe(&t);
    }
    pending(&t)?;
    let reason = reason.unwrap_or_else(|| "cancelled by core banking".into());
    let closed = close(t, TransactionState::Cancelled, &reason, now_ms);
    match s.store.update_transaction(&closed) {
        Ok(()) => {}
        Err(StoreError::Conflict { .. }) => return cancel(s, id_text, body, actor, now),
        Err(e) => return Err(e.into()),
    }
    s.record(
        AuditEvent::new(now_ms, actor, "transaction.cancelled", b64url(&id))
            .with_detail(json!({ "reason": reason })),
    )?;
    describe(&closed)
}

/// `GET /v1/transactions/{id}/receipt`.
pub fn receipt(
    s: &Services,
    id_text: &str,
    actor: &str,
    now: SystemTime,
) -> Result<Value, FlowError> {
    let id = transaction_id(id_text)?;
    let t = load(s, &id, actor, unix_ms(now))?;
    let Some(a) = &t.approval else {
        return Err(FlowError::Transaction {
            problem: TransactionProblem::NoReceipt,
            field: "transactionId".into(),
            reason: format!("the transaction is {}, not approved", t.state),
        });
    };
    let kid = crate::receipt::kid_of(&a.receipt)
        .map_err(|e| FlowError::Internal(format!("stored receipt: {e}")))?;
    Ok(json!({
        "transactionId": b64url(&t.id),
        "receipt": b64url(&a.receipt),
        "kid": kid.to_string(),
        "format": "cose-sign1",
    }))
}

/// `POST /v1/transactions/{id}/approval`.
pub fn approve(
    s: &Services,
    id_text: &str,
    body: &Value,
    actor: &str,
    now: SystemTime,
) -> Result<Value, FlowError> {
    let now_ms = unix_ms(now);
    let id = transaction_id(id_text)?;
    let subject = b64url(&id);
    let obj = object(body, "body")?;
    only(obj, &["credential"], "")?;
    let credential = match obj.get("credential") {
        None | Some(Value::Null) => return Err(FlowError::invalid("credential", "is required")),
        Some(c) => c,
    };
    // A body that is not even an assertion is the client's bug, not an
    // attempt at this transaction.
    let response =
        AuthenticationResponse::from_value(credential).map_err(FlowError::in_credential)?;
    let t = load(s, &id, actor, now_ms)?;
    if let Err(e) = pending(&t) {
        refused(s, actor, "transaction.refused", &subject, &e, now_ms)?;
        return Err(e);
    }
    let details = stored_details(&t)?;
    let policy = s.policy.get();
    // A policy that no longer defines the action refuses, but it is not
    // the user's refused answer: not counted against the transaction.
    let req = match Services::requirement(&policy, Some(&t.action), details.amount.as_ref()) {
        Ok(r) => r,
        Err(e) => {
            refused(s, actor, "transaction.refused", &subject, &e, now_ms)?;
            return Err(e);
        }
    };
    match check_approval(s, &t, &details, &policy, &req, &response, now_ms) {
        Ok(approved) => {
            s.record(
                AuditEvent::new(now_ms, actor, "transaction.approved", subject.clone())
                    .with_detail(approved.audit.clone()),
            )?;
            Ok(approved.answer)
        }
        Err(FlowError::StepUp(step)) => {
            s.record(
                AuditEvent::new(now_ms, actor, "transaction.step_up_required", subject)
                    .with_detail(json!({ "stepUp": &*step })),
            )?;
            Err(FlowError::StepUp(step))
        }
        Err(
            e @ (FlowError::Unavailable(_)
            | FlowError::StoreUnavailable(_)
            | FlowError::VerificationLog(_)
            | FlowError::Internal(_)),
        ) => Err(e),
        Err(e) => {
            // A concurrent answer that won committed its approval (and
            // moved the counter past this one) after the check above: say
            // the transaction is approved, not that the authenticator looks
            // cloned.
            let e = match pending(&load(s, &id, actor, now_ms)?) {
                Ok(()) => e,
                Err(closed) => closed,
            };
            refused(s, actor, "transaction.refused", &subject, &e, now_ms)?;
            count_refusal(s, &id, actor, now_ms)?;
            Err(e)
        }
    }
}

/// One more refused answer; at `attempts_max` the transaction fails.
fn count_refusal(
    s: &Services,
    id: &TransactionId,
    actor: &str,
    now_ms: u64,
) -> Result<(), FlowError> {
    for _ in 0..8 {
        let Some(t) = s.store.transaction(id)? else {
            return Ok(());
        };
        if t.state != TransactionState::Pending {
            return Ok(());
        }
        let attempts = t.attempts.saturating_add(1);
        let failed = attempts >= s.transactions.attempts_max;
        let mut next = if failed {
            close(
                t,
                TransactionState::Failed,
                "too many refused answers",
                now_ms,
            )
        } else {
            let mut next = t;
            next.revision += 1;
            next.updated_ms = now_ms;
            next
        };
        next.attempts = attempts;
        match s.store.update_transaction(&next) {
            Ok(()) => {
                if failed {
                    s.record(
                        AuditEvent::new(now_ms, actor, "transaction.failed", b64url(id))
                            .with_detail(json!({ "attempts": next.attempts })),
                    )?;
                }
                return Ok(());
            }
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(FlowError::Internal(
        "transaction kept changing while a refusal was counted".into(),
    ))
}

struct Approved {
    answer: Value,
    audit: Value,
}

/// Everything from the policy to the commit, for a pending transaction.
fn check_approval(
    s: &Services,
    t: &TransactionRecord,
    details: &Details,
    policy: &Policy,
    req: &Requirement,
    response: &AuthenticationResponse,
    now_ms: u64,
) -> Result<Approved, FlowError> {
    let asked = asked(t)?;
    // Re-derived from what was stored at creation: nothing in the request
    // chooses the challenge.
    let challenge = details.challenge(&t.nonce);
    let spc_rp = asked.spc.as_ref().map(|spc| spc.relying_party(&s.rp));
    let (cred, verified, tier) = verify_assertion(
        s,
        policy,
        req,
        response,
        &Expected {
            challenge: &challenge,
            user_id: Some(&t.user_id),
            user_verification: asked.user_verification,
            rp: spc_rp.as_ref().unwrap_or(&s.rp),
            allow_payment: asked.spc.is_some(),
        },
        Counter::Caller,
        now_ms,
    )?;
    let payment = verified.client_data.ceremony == "payment.get";
    if payment {
        if let Some(spc) = &asked.spc {
            spc.check(verified.client_data.payment.as_ref(), &s.rp.id, details)?;
        }
    } else if !s.rp.origins.contains(&verified.client_data.origin) {
        // A webauthn.get answer comes from the RP's own pages only.
        return Err(FlowError::Ceremony(crate::webauthn::Error::mismatch(
            "credential.response.clientDataJSON.origin",
            format!(
                "{:?} is not an allowed origin",
                truncate(&verified.client_data.origin, 128)
            ),
        )));
    }

    let receipt = Receipt {
        transaction_id: t.id,
        details: t.details.clone(),
        nonce: t.nonce,
        challenge,
        rp_id: s.rp.id.clone(),
        credential_id: cred.id.clone(),
        public_key: cred.public_key_cose.clone(),
        authenticator_data: response.authenticator_data.clone(),
        client_data_json: response.client_data_json.clone(),
        signature: response.signature.clone(),
        aaguid: cred.aaguid,
        tier,
        policy_version: policy.version.clone(),
        verified_ms: now_ms,
    };
    let (unsigned, signature, kid) = sign_with_active(s, Role::ApprovalCountersign, |kid| {
        receipt
            .to_be_signed(kid)
            .map_err(|e| FlowError::Internal(format!("receipt: {e}")))
    })?;
    let receipt_bytes = Receipt::finish(unsigned, &signature)
        .map_err(|e| FlowError::Internal(format!("receipt: {e}")))?;

    if let Some(log) = &s.transactions.log {
        let line = LogRecord {
            signature: response.signature.clone(),
            transaction: String::from_utf8(t.details.clone())
                .map_err(|_| FlowError::Internal("stored details are not UTF-8".into()))?,
            authenticator_data: response.authenticator_data.clone(),
            client_data_json: String::from_utf8(response.client_data_json.clone())
                .map_err(|_| FlowError::Internal("verified client data is not UTF-8".into()))?,
            nonce: b64url(&t.nonce),
            public_key: cred.public_key_cose.clone(),
            signet: Some(SignetMeta {
                transaction_id: t.id,
                rp_id: s.rp.id.clone(),
                verified_ms: now_ms,
            }),
        }
        .to_line()
        .map_err(|e| FlowError::Internal(format!("verification log line: {e}")))?;
        log.append(&line)
            .map_err(|e| FlowError::VerificationLog(format!("{}: {e}", log.path().display())))?;
    }

    let mut approved = t.clone();
    approved.revision += 1;
    approved.state = TransactionState::Approved;
    approved.updated_ms = now_ms;
    approved.approval = Some(TransactionApproval {
        credential_id: cred.id.clone(),
        approved_ms: now_ms,
        receipt: receipt_bytes.clone(),
    });
    match s
        .store
        .approve_transaction(&approved, verified.sign_count, verified.backup_state)
    {
        Ok(()) => {}
        Err(StoreError::Conflict { .. }) => {
            // Another answer came first; say what it did.
            let now = s.store.transaction(&t.id)?.unwrap_or(approved);
            pending(&now)?;
            return Err(FlowError::Internal(
                "transaction changed during approval but is still pending".into(),
            ));
        }
        Err(e) => return Err(e.into()),
    }
    let answer = json!({
        "transactionId": b64url(&t.id),
        "state": "approved",
        "userId": b64url(&t.user_id),
        "credentialId": b64url(&cred.id),
        "aaguid": uuid_text(&cred.aaguid),
        "tier": tier,
        "action": t.action,
        "requirement": requirement_json(req),
        "policyVersion": policy.version,
        "userVerified": verified.user_verified,
        "signCount": verified.sign_count,
        "ceremony": verified.client_data.ceremony,
        "approvedAt": crate::rfc3339::format_ms(now_ms),
        "receipt": b64url(&receipt_bytes),
        "receiptKid": kid.to_string(),
    });
    let audit = json!({
        "userId": b64url(&t.user_id),
        "credentialId": b64url(&cred.id),
        "tier": tier,
        "action": t.action,
        "policyVersion": policy.version,
        "userVerified": verified.user_verified,
        "signCount": verified.sign_count,
        "ceremony": verified.client_data.ceremony,
        "receiptSha256": crate::hex::encode(&sha256(&receipt_bytes)),
        "receiptKid": kid.to_string(),
    });
    Ok(Approved { answer, audit })
}
