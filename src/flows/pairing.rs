//! Cross-device (QR) login: a customer starts on the desktop, scans a QR
//! code with the phone, approves with the phone's passkey, and the desktop
//! session logs in.
//!
//! # Parties and secrets
//!
//! Core banking (role `rp`) makes every call, on behalf of two sessions it
//! holds: the desktop's and the phone's. Three secrets keep them apart:
//!
//! * the **code** travels in the QR payload, to whoever scans it; it is
//!   good for one claim, and wrong codes lock the pairing after
//!   `attempts_max`;
//! * the **phone secret** is returned by the claim, to the claiming phone
//!   only; approve and deny need it (header `Signet-Phone-Secret`);
//! * the **desktop secret** is returned by create, once, to the desktop
//!   session only; reading the state and taking the result need it (header
//!   `Signet-Desktop-Secret`). It never appears in the QR payload.
//!
//! signet keeps SHA-256 hashes of the three, never the values.
//!
//! # Life of a pairing
//!
//! The states and the transition table are
//! [`crate::store::PairingState`]; the store refuses any other change.
//! Expiry is written when the pairing is next touched. An approved pairing
//! waits `approved_ttl` (not the rest of the pairing's lifetime) for the
//! desktop: a verified login that nobody takes should not linger.
//!
//! # The challenge
//!
//! `SHA-256("signet/pairing-challenge/v1" ‖ pairing id ‖ nonce)`, with a
//! 32-byte nonce drawn at creation ([`challenge`]). It is re-derived at
//! approval from what was stored, so an assertion made for another pairing,
//! or for a plain login ceremony, does not verify here.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::ceremony::{
    Counter, Expected, object, only, opt_str, reason_body, refused, req_str, usable_credentials,
    user_text, verify_assertion,
};
use super::{FlowError, PairingProblem, Services, unix_ms, uuid_text};
use crate::audit::AuditEvent;
use crate::keys::sha256;
use crate::store::{
    PairingApproval, PairingContext, PairingId, PairingRecord, PairingState, StoreError, limits,
};
use crate::webauthn::options::RequestOptionsBuilder;
use crate::webauthn::response::AuthenticationResponse;
use crate::webauthn::{UserVerification, b64url, constant_time_eq};

/// Domain-separation tag of the pairing challenge.
pub const CHALLENGE_TAG: &[u8] = b"signet/pairing-challenge/v1";
/// Header carrying the desktop secret (never a query parameter: URLs end
/// up in access logs).
pub const DESKTOP_SECRET_HEADER: &str = "Signet-Desktop-Secret";
/// Header carrying the phone secret.
pub const PHONE_SECRET_HEADER: &str = "Signet-Phone-Secret";

const SECRET_LEN: usize = 32;
const CODE_LEN: usize = 16;

/// The challenge a pairing's assertion answers.
pub fn challenge(id: &PairingId, nonce: &[u8; 32]) -> [u8; 32] {
    let mut input = Vec::with_capacity(CHALLENGE_TAG.len() + id.len() + nonce.len());
    input.extend_from_slice(CHALLENGE_TAG);
    input.extend_from_slice(id);
    input.extend_from_slice(nonce);
    sha256(&input)
}

/// Pairing lifetime, attempts, the QR link, and the long-poll wake-ups.
pub struct Settings {
    pub ttl_ms: u64,
    pub approved_ttl_ms: u64,
    pub attempts_max: u32,
    /// The QR payload is `{link}#pairing={id}&code={code}`.
    pub link: String,
    pub watch: Watchers,
}

impl Settings {
    pub fn from_config(c: &crate::config::PairingSettings) -> Settings {
        Settings {
            ttl_ms: u64::try_from(c.ttl.as_millis()).unwrap_or(u64::MAX),
            approved_ttl_ms: u64::try_from(c.approved_ttl.as_millis()).unwrap_or(u64::MAX),
            attempts_max: c.attempts_max,
            link: c.link.clone(),
            watch: Watchers::default(),
        }
    }
}

/// Wakes the desktop's long poll when its pairing changes. In-process: each
/// committed transition notifies the waiters of that pairing.
#[derive(Default)]
pub struct Watchers {
    map: Mutex<HashMap<PairingId, Weak<tokio::sync::Notify>>>,
}

impl Watchers {
    /// The pairing's notifier, shared by every waiter on it. Entries whose
    /// waiters are gone are dropped as the map grows, so it stays the size
    /// of the live waits.
    pub fn subscribe(&self, id: &PairingId) -> Arc<tokio::sync::Notify> {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = map.get(id).and_then(Weak::upgrade) {
            return n;
        }
        if map.len() >= 64 && map.len().is_power_of_two() {
            map.retain(|_, w| w.strong_count() > 0);
        }
        let n = Arc::new(tokio::sync::Notify::new());
        map.insert(*id, Arc::downgrade(&n));
        n
    }

    fn notify(&self, id: &PairingId) {
        let map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = map.get(id).and_then(Weak::upgrade) {
            n.notify_waiters();
        }
    }

    /// Entries held (live or not yet pruned); for tests.
    pub fn len(&self) -> usize {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the claim's options asked for, kept with the pairing.
#[derive(Serialize, Deserialize)]
struct Asked {
    user_verification: UserVerification,
}

fn random<const N: usize>() -> Result<Zeroizing<[u8; N]>, FlowError> {
    let mut bytes = Zeroizing::new([0u8; N]);
    aws_lc_rs::rand::fill(bytes.as_mut())
        .map_err(|_| FlowError::Internal("random generator failed".into()))?;
    Ok(bytes)
}

/// The pairing id of a path segment.
pub fn parse_id(text: &str) -> Result<PairingId, FlowError> {
    super::b64_field(text, "pairingId", 16, 16)?
        .try_into()
        .map_err(|_| FlowError::invalid("pairingId", "must be 16 bytes, base64url"))
}

/// Text shown to the user: bounded, no control characters.
fn shown_text(value: &str, field: &str, max: usize) -> Result<String, FlowError> {
    if value.is_empty() || value.len() > max || value.chars().any(char::is_control) {
        return Err(FlowError::invalid(
            field,
            format!("must be 1 to {max} bytes without control characters"),
        ));
    }
    Ok(value.to_string())
}

fn context(v: Option<&Value>) -> Result<PairingContext, FlowError> {
    let obj = object(
        v.ok_or_else(|| FlowError::invalid("context", "is required"))?,
        "context",
    )?;
    only(obj, &["ip", "userAgent", "location"], "context.")?;
    let ip: IpAddr = req_str(obj, "ip", "context.")?
        .parse()
        .map_err(|_| FlowError::invalid("context.ip", "must be an IPv4 or IPv6 address"))?;
    let user_agent = shown_text(
        req_str(obj, "userAgent", "context.")?,
        "context.userAgent",
        limits::PAIRING_AGENT_MAX,
    )?;
    let location = opt_str(obj, "location", "context.")?
        .map(|l| shown_text(l, "context.location", limits::PAIRING_LOCATION_MAX))
        .transpose()?;
    Ok(PairingContext {
        ip: ip.to_string(),
        user_agent,
        location,
    })
}

/// "Firefox on Windows", from a User-Agent header: what a customer
/// recognizes of their own desktop. The order matters: Edge and Opera
/// also say Chrome, and Chrome also says Safari.
pub fn browser_summary(user_agent: &str) -> String {
    const BROWSERS: [(&str, &str); 7] = [
        ("Edg/", "Edge"),
        ("OPR/", "Opera"),
        ("Firefox/", "Firefox"),
        ("FxiOS/", "Firefox"),
        ("CriOS/", "Chrome"),
        ("Chrome/", "Chrome"),
        ("Safari/", "Safari"),
    ];
    const SYSTEMS: [(&str, &str); 7] = [
        ("Windows", "Windows"),
        ("iPhone", "iOS"),
        ("iPad", "iPadOS"),
        ("Mac OS X", "macOS"),
        ("CrOS", "ChromeOS"),
        ("Android", "Android"),
        ("Linux", "Linux"),
    ];
    let browser = BROWSERS
        .iter()
        .find(|(mark, _)| user_agent.contains(mark))
        .map_or("an unknown browser", |(_, name)| name);
    match SYSTEMS.iter().find(|(mark, _)| user_agent.contains(mark)) {
        Some((_, system)) => format!("{browser} on {system}"),
        None => browser.to_string(),
    }
}

/// The question the phone shows: "Log in on Firefox on Windows in Zurich
/// (203.0.113.7)?".
fn question(c: &PairingContext) -> String {
    let place = c
        .location
        .as_deref()
        .map(|l| format!(" in {l}"))
        .unwrap_or_default();
    format!(
        "Log in on {}{place} ({})?",
        browser_summary(&c.user_agent),
        c.ip
    )
}

fn context_json(c: &PairingContext) -> Value {
    json!({
        "ip": c.ip,
        "userAgent": c.user_agent,
        "location": c.location,
        "browser": browser_summary(&c.user_agent),
    })
}

/// The refusal of `step` by a pairing in `state`.
fn refuse_state(state: PairingState, step: &str) -> FlowError {
    let why = match state {
        PairingState::Created => "no phone has claimed it yet",
        PairingState::Claimed => "a phone has claimed it and has not answered yet",
        PairingState::Approved => "it was approved already",
        PairingState::Denied => "the user denied it",
        PairingState::Consumed => "its login was taken already",
        PairingState::Expired => "it has expired; start a new pairing",
        PairingState::Locked => "it is locked after too many failed attempts",
    };
    FlowError::Pairing {
        problem: PairingProblem::State(state),
        field: "pairingId".into(),
        reason: format!("cannot {step}: the pairing is {state}: {why}"),
    }
}

/// A step that lost a race (its write met a newer revision): refused for
/// the state the pairing is in now, audited as `event`.
fn lost_race(
    s: &Services,
    id: &PairingId,
    step: &str,
    event: &str,
    actor: &str,
    now_ms: u64,
) -> FlowError {
    let e = match load(s, id, actor, now_ms) {
        Ok(now) => refuse_state(now.state, step),
        Err(e) => return e,
    };
    match refused(s, actor, event, &subject(id), &e, now_ms) {
        Ok(()) => e,
        Err(audit) => audit,
    }
}

fn subject(id: &PairingId) -> String {
    b64url(id)
}

/// The next revision of `p`, in `state`.
fn next(p: &PairingRecord, state: PairingState, now_ms: u64) -> PairingRecord {
    let mut n = p.clone();
    n.revision += 1;
    n.state = state;
    n.updated_ms = now_ms;
    n
}

/// Writes `n` over the revision before it; on success wakes the desktop.
/// `Ok(false)`: another change came first (re-read and decide again).
fn commit(s: &Services, n: &PairingRecord) -> Result<bool, FlowError> {
    match s.store.update_pairing(n) {
        Ok(()) => {
            s.pairings.watch.notify(&n.id);
            Ok(true)
        }
        Err(StoreError::Conflict { .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The pairing, with an overdue one written as expired.
fn load(
    s: &Services,
    id: &PairingId,
    actor: &str,
    now_ms: u64,
) -> Result<PairingRecord, FlowError> {
    for _ in 0..8 {
        let p = s.store.pairing(id)?.ok_or(FlowError::NotFound {
            what: "pairing",
            field: "pairingId".into(),
        })?;
        if p.state.is_final() || now_ms < p.expires_ms {
            return Ok(p);
        }
        let mut expired = next(&p, PairingState::Expired, now_ms);
        expired.closed_reason = Some(format!("expired while {}", p.state));
        if commit(s, &expired)? {
            s.record(
                AuditEvent::new(now_ms, actor, "pairing.expired", subject(id))
                    .with_detail(json!({ "from": p.state.as_str() })),
            )?;
            return Ok(expired);
        }
    }
    Err(FlowError::Internal(
        "pairing kept changing while its expiry was written".into(),
    ))
}

/// Checks a secret from a header against its stored hash. Missing or
/// malformed is the caller's bug (400); a well-formed wrong one is refused
/// and audited (403).
fn check_secret(
    s: &Services,
    given: Option<&str>,
    stored: &[u8],
    header: &'static str,
    p: &PairingRecord,
    actor: &str,
    now_ms: u64,
) -> Result<(), FlowError> {
    let given = given.ok_or_else(|| FlowError::invalid(header, "the header is required"))?;
    let bytes = Zeroizing::new(super::b64_field(given, header, SECRET_LEN, SECRET_LEN)?);
    if constant_time_eq(&sha256(&bytes), stored) {
        return Ok(());
    }
    let e = FlowError::Pairing {
        problem: PairingProblem::Secret,
        field: header.into(),
        reason: "is not this pairing's secret".into(),
    };
    refused(
        s,
        actor,
        "pairing.secret_refused",
        &subject(&p.id),
        &e,
        now_ms,
    )?;
    Err(e)
}

/// `POST /v1/pairings`: for the desktop session.
pub fn create(
    s: &Services,
    body: &Value,
    actor: &str,
    now: SystemTime,
) -> Result<Value, FlowError> {
    let now_ms = unix_ms(now);
    let obj = object(body, "body")?;
    only(obj, &["context", "user", "action"], "")?;
    let context = context(obj.get("context"))?;
    let policy = s.policy.get();
    let req = Services::requirement(&policy, opt_str(obj, "action", "")?, None)?;
    let user_id = match obj.get("user").filter(|v| !v.is_null()) {
        None => None,
        Some(u) => Some(named_user(s, u)?.id),
    };
    let id = *random::<16>()?;
    let nonce = *random::<32>()?;
    let code = random::<CODE_LEN>()?;
    let desktop_secret = random::<SECRET_LEN>()?;
    let record = PairingRecord {
        id,
        revision: 1,
        state: PairingState::Created,
        code_sha256: sha256(code.as_ref()),
        desktop_secret_sha256: sha256(desktop_secret.as_ref()),
        phone_secret_sha256: None,
        nonce,
        action: req.action.clone(),
        user_id: user_id.clone(),
        context,
        created_ms: now_ms,
        updated_ms: now_ms,
        expires_ms: now_ms.saturating_add(s.pairings.ttl_ms),
        code_attempts: 0,
        refusals: 0,
        options: Vec::new(),
        approval: None,
        closed_reason: None,
    };
    s.store.insert_pairing(&record)?;
    s.record(
        AuditEvent::new(now_ms, actor, "pairing.created", subject(&id)).with_detail(json!({
            "action": req.action,
            "userId": user_id.as_deref().map(b64url),
            "context": context_json(&record.context),
        })),
    )?;
    let id_text = b64url(&id);
    let code_text = Zeroizing::new(b64url(code.as_ref()));
    Ok(json!({
        "pairingId": id_text,
        "state": "created",
        "revision": record.revision,
        "qrPayload": format!("{}#pairing={id_text}&code={}", s.pairings.link, *code_text),
        "desktopSecret": b64url(desktop_secret.as_ref()),
        "expiresAt": crate::rfc3339::format_ms(record.expires_ms),
    }))
}

fn named_user(s: &Services, v: &Value) -> Result<crate::store::User, FlowError> {
    let u = object(v, "user")?;
    only(u, &["name"], "user.")?;
    let name = user_text(req_str(u, "name", "user.")?, "user.name", false)?;
    s.store.user_by_name(&name)?.ok_or(FlowError::NotFound {
        what: "user",
        field: "user.name".into(),
    })
}

/// One more failed attempt on `p` (a wrong code when `code`, a refused
/// answer otherwise); at `attempts_max` the pairing locks. Returns whether
/// it locked.
fn count_failure(
    s: &Services,
    id: &PairingId,
    code: bool,
    actor: &str,
    now_ms: u64,
) -> Result<bool, FlowError> {
    for _ in 0..8 {
        let Some(p) = s.store.pairing(id)? else {
            return Ok(false);
        };
        let counted = if code { p.code_attempts } else { p.refusals }.saturating_add(1);
        let expected = if code {
            PairingState::Created
        } else {
            PairingState::Claimed
        };
        if p.state != expected {
            return Ok(p.state == PairingState::Locked);
        }
        let lock = counted >= s.pairings.attempts_max;
        let mut n = next(
            &p,
            if lock { PairingState::Locked } else { p.state },
            now_ms,
        );
        if code {
            n.code_attempts = counted;
        } else {
            n.refusals = counted;
        }
        if lock {
            n.closed_reason = Some(if code {
                "too many wrong codes".into()
            } else {
                "too many refused answers".into()
            });
        }
        if commit(s, &n)? {
            if lock {
                s.record(
                    AuditEvent::new(now_ms, actor, "pairing.locked", subject(id)).with_detail(
                        json!({ "codeAttempts": n.code_attempts, "refusals": n.refusals }),
                    ),
                )?;
            }
            return Ok(lock);
        }
    }
    Err(FlowError::Internal(
        "pairing kept changing while a failure was counted".into(),
    ))
}

/// `POST /v1/pairings/{id}/claim`: for the phone that scanned the QR code.
/// Only the first claim with the right code succeeds.
pub fn claim(
    s: &Services,
    id_text: &str,
    body: &Value,
    actor: &str,
    now: SystemTime,
) -> Result<Value, FlowError> {
    let now_ms = unix_ms(now);
    let id = parse_id(id_text)?;
    let obj = object(body, "body")?;
    only(obj, &["code", "user"], "")?;
    let code = Zeroizing::new(super::b64_field(
        req_str(obj, "code", "")?,
        "code",
        CODE_LEN,
        CODE_LEN,
    )?);
    let claimant = obj
        .get("user")
        .filter(|v| !v.is_null())
        .map(|u| named_user(s, u))
        .transpose()?;
    let p = load(s, &id, actor, now_ms)?;
    if p.state != PairingState::Created {
        let e = refuse_state(p.state, "claim");
        refused(s, actor, "pairing.claim_refused", &subject(&id), &e, now_ms)?;
        return Err(e);
    }
    if !constant_time_eq(&sha256(&code), &p.code_sha256) {
        let locked = count_failure(s, &id, true, actor, now_ms)?;
        let reason = if locked {
            "is not this pairing's code; no attempts left: the pairing is locked".to_string()
        } else {
            "is not this pairing's code".to_string()
        };
        let e = FlowError::Pairing {
            problem: PairingProblem::Code,
            field: "code".into(),
            reason,
        };
        refused(s, actor, "pairing.code_refused", &subject(&id), &e, now_ms)?;
        return Err(e);
    }
    // The desktop named a user: only that user's phone may claim. Someone
    // who saw the QR code and claims with their own account is refused,
    // and it counts like a wrong code.
    let user_id = match (&p.user_id, &claimant) {
        (Some(wanted), Some(c)) if !constant_time_eq(wanted, &c.id) => {
            let locked = count_failure(s, &id, true, actor, now_ms)?;
            let e = FlowError::Pairing {
                problem: PairingProblem::User,
                field: "user.name".into(),
                reason: if locked {
                    "is not the user the desktop asked to log in; no attempts left: the \
                     pairing is locked"
                        .into()
                } else {
                    "is not the user the desktop asked to log in".into()
                },
            };
            refused(s, actor, "pairing.claim_refused", &subject(&id), &e, now_ms)?;
            return Err(e);
        }
        (Some(wanted), _) => Some(wanted.clone()),
        (None, c) => c.as_ref().map(|u| u.id.clone()),
    };
    let policy = s.policy.get();
    let decided = Services::requirement(&policy, Some(&p.action), None).and_then(|req| {
        let allow = match &user_id {
            Some(uid) => {
                let user = s.store.user_by_id(uid)?.ok_or(FlowError::NotFound {
                    what: "user",
                    field: "user.name".into(),
                })?;
                usable_credentials(s, &policy, &req, &user)?
            }
            None => Vec::new(),
        };
        Ok((req, allow))
    });
    let (req, allow) = match decided {
        Ok(d) => d,
        Err(FlowError::StepUp(step)) => {
            s.record(
                AuditEvent::new(now_ms, actor, "pairing.step_up_required", subject(&id))
                    .with_detail(json!({ "stepUp": &*step })),
            )?;
            return Err(FlowError::StepUp(step));
        }
        Err(e) => {
            refused(s, actor, "pairing.claim_refused", &subject(&id), &e, now_ms)?;
            return Err(e);
        }
    };
    let challenge = challenge(&id, &p.nonce);
    let remaining = p.expires_ms.saturating_sub(now_ms);
    let options = RequestOptionsBuilder::new(&s.rp, &challenge)
        .timeout_ms(
            u32::try_from(remaining)
                .unwrap_or(u32::MAX)
                .min(s.ceremony_timeout_ms),
        )
        .allow_credentials(allow)
        .user_verification(req.user_verification)
        .build()
        .map_err(FlowError::in_request)?;
    let phone_secret = random::<SECRET_LEN>()?;
    let mut claimed = next(&p, PairingState::Claimed, now_ms);
    claimed.phone_secret_sha256 = Some(sha256(phone_secret.as_ref()).to_vec());
    claimed.user_id = user_id.clone();
    claimed.options = serde_json::to_vec(&Asked {
        user_verification: req.user_verification,
    })
    .map_err(|e| FlowError::Internal(format!("pairing options: {e}")))?;
    if !commit(s, &claimed)? {
        // Another phone came first (or the pairing moved on).
        return Err(lost_race(
            s,
            &id,
            "claim",
            "pairing.claim_refused",
            actor,
            now_ms,
        ));
    }
    s.record(
        AuditEvent::new(now_ms, actor, "pairing.claimed", subject(&id)).with_detail(json!({
            "userId": user_id.as_deref().map(b64url),
            "action": req.action,
        })),
    )?;
    Ok(json!({
        "pairingId": b64url(&id),
        "state": "claimed",
        "phoneSecret": b64url(phone_secret.as_ref()),
        "publicKey": serde_json::to_value(&options)
            .map_err(|e| FlowError::Internal(format!("options: {e}")))?,
        "context": context_json(&p.context),
        "display": question(&p.context),
        "expiresAt": crate::rfc3339::format_ms(p.expires_ms),
    }))
}

/// The claimed pairing `step` acts on, after the phone secret.
fn claimed_by_phone(
    s: &Services,
    id: &PairingId,
    phone_secret: Option<&str>,
    step: &str,
    actor: &str,
    now_ms: u64,
) -> Result<PairingRecord, FlowError> {
    let p = load(s, id, actor, now_ms)?;
    // Once a phone claimed, only that phone learns how the pairing stands.
    if let Some(stored) = &p.phone_secret_sha256 {
        check_secret(
            s,
            phone_secret,
            stored,
            PHONE_SECRET_HEADER,
            &p,
            actor,
            now_ms,
        )?;
    }
    if p.state != PairingState::Claimed {
        let e = refuse_state(p.state, step);
        refused(s, actor, "pairing.refused", &subject(id), &e, now_ms)?;
        return Err(e);
    }
    Ok(p)
}

/// `POST /v1/pairings/{id}/approve`: the phone's assertion.
pub fn approve(
    s: &Services,
    id_text: &str,
    phone_secret: Option<&str>,
    body: &Value,
    actor: &str,
    now: SystemTime,
) -> Result<Value, FlowError> {
    let now_ms = unix_ms(now);
    let id = parse_id(id_text)?;
    let obj = object(body, "body")?;
    only(obj, &["credential"], "")?;
    let credential = match obj.get("credential") {
        None | Some(Value::Null) => return Err(FlowError::invalid("credential", "is required")),
        Some(c) => c,
    };
    let response =
        AuthenticationResponse::from_value(credential).map_err(FlowError::in_credential)?;
    let p = claimed_by_phone(s, &id, phone_secret, "approve", actor, now_ms)?;
    let policy = s.policy.get();
    // A policy that no longer defines the action refuses, but it is not
    // the user's refused answer: not counted.
    let req = match Services::requirement(&policy, Some(&p.action), None) {
        Ok(r) => r,
        Err(e) => {
            refused(s, actor, "pairing.refused", &subject(&id), &e, now_ms)?;
            return Err(e);
        }
    };
    let asked: Asked = serde_json::from_slice(&p.options)
        .map_err(|e| FlowError::Internal(format!("stored pairing options: {e}")))?;
    let challenge = challenge(&id, &p.nonce);
    let result = verify_assertion(
        s,
        &policy,
        &req,
        &response,
        &Expected {
            challenge: &challenge,
            user_id: p.user_id.as_deref(),
            user_verification: asked.user_verification,
            rp: &s.rp,
            allow_payment: false,
        },
        Counter::Caller,
        now_ms,
    );
    let (cred, verified, tier) = match result {
        Ok(v) => v,
        Err(FlowError::StepUp(step)) => {
            s.record(
                AuditEvent::new(now_ms, actor, "pairing.step_up_required", subject(&id))
                    .with_detail(json!({ "stepUp": &*step })),
            )?;
            return Err(FlowError::StepUp(step));
        }
        Err(
            e @ (FlowError::Unavailable(_)
            | FlowError::StoreUnavailable(_)
            | FlowError::Internal(_)),
        ) => return Err(e),
        Err(e) => {
            // A concurrent answer that won moved the counter past this
            // one: say that the pairing was approved, not "cloned".
            let now_state = load(s, &id, actor, now_ms)?.state;
            let e = if now_state == PairingState::Claimed {
                e
            } else {
                refuse_state(now_state, "approve")
            };
            refused(s, actor, "pairing.refused", &subject(&id), &e, now_ms)?;
            count_failure(s, &id, false, actor, now_ms)?;
            return Err(e);
        }
    };
    let mut approved = next(&p, PairingState::Approved, now_ms);
    approved.expires_ms = now_ms.saturating_add(s.pairings.approved_ttl_ms);
    approved.approval = Some(PairingApproval {
        user_id: cred.user_id.clone(),
        credential_id: cred.id.clone(),
        approved_ms: now_ms,
        tier,
        user_verified: verified.user_verified,
        sign_count: verified.sign_count,
        policy_version: policy.version.clone(),
    });
    match s
        .store
        .approve_pairing(&approved, verified.sign_count, verified.backup_state)
    {
        Ok(()) => s.pairings.watch.notify(&id),
        Err(StoreError::Conflict { .. }) => {
            return Err(lost_race(
                s,
                &id,
                "approve",
                "pairing.refused",
                actor,
                now_ms,
            ));
        }
        // Another assertion of this credential moved its counter past this
        // one meanwhile: a refused answer like any other.
        Err(e @ StoreError::CounterRegression { .. }) => {
            let e = FlowError::from(e);
            refused(s, actor, "pairing.refused", &subject(&id), &e, now_ms)?;
            count_failure(s, &id, false, actor, now_ms)?;
            return Err(e);
        }
        Err(e) => return Err(e.into()),
    }
    let detail = json!({
        "userId": b64url(&cred.user_id),
        "credentialId": b64url(&cred.id),
        "tier": tier,
        "action": p.action,
        "userVerified": verified.user_verified,
        "signCount": verified.sign_count,
        "policyVersion": policy.version,
    });
    s.record(
        AuditEvent::new(now_ms, actor, "pairing.approved", subject(&id))
            .with_detail(detail.clone()),
    )?;
    let mut answer = detail;
    answer["pairingId"] = json!(b64url(&id));
    answer["state"] = json!("approved");
    Ok(answer)
}

/// `POST /v1/pairings/{id}/deny`: the user said no on the phone.
pub fn deny(
    s: &Services,
    id_text: &str,
    phone_secret: Option<&str>,
    body: &Value,
    actor: &str,
    now: SystemTime,
) -> Result<Value, FlowError> {
    let now_ms = unix_ms(now);
    let id = parse_id(id_text)?;
    let reason = reason_body(body)?;
    let p = claimed_by_phone(s, &id, phone_secret, "deny", actor, now_ms)?;
    let mut denied = next(&p, PairingState::Denied, now_ms);
    denied.closed_reason = Some(reason.unwrap_or_else(|| "denied on the phone".into()));
    if !commit(s, &denied)? {
        return Err(lost_race(s, &id, "deny", "pairing.refused", actor, now_ms));
    }
    s.record(
        AuditEvent::new(now_ms, actor, "pairing.denied", subject(&id))
            .with_detail(json!({ "reason": denied.closed_reason })),
    )?;
    Ok(describe(&denied))
}

fn describe(p: &PairingRecord) -> Value {
    json!({
        "pairingId": b64url(&p.id),
        "state": p.state.as_str(),
        "revision": p.revision,
        "expiresAt": crate::rfc3339::format_ms(p.expires_ms),
        "closedReason": p.closed_reason,
    })
}

/// What the desktop's poll sees.
pub struct Status {
    pub answer: Value,
    pub revision: u64,
    /// Final, or approved: nothing the phone does changes it any more.
    pub settled: bool,
    /// Until the pairing expires, from `now`.
    pub expires_in_ms: u64,
}

/// `GET /v1/pairings/{id}`: for the desktop session.
pub fn status(
    s: &Services,
    id: &PairingId,
    desktop_secret: Option<&str>,
    actor: &str,
    now: SystemTime,
) -> Result<Status, FlowError> {
    let now_ms = unix_ms(now);
    let p = load(s, id, actor, now_ms)?;
    check_secret(
        s,
        desktop_secret,
        &p.desktop_secret_sha256,
        DESKTOP_SECRET_HEADER,
        &p,
        actor,
        now_ms,
    )?;
    Ok(Status {
        answer: describe(&p),
        revision: p.revision,
        settled: p.state.is_final() || p.state == PairingState::Approved,
        expires_in_ms: p.expires_ms.saturating_sub(now_ms),
    })
}

/// `POST /v1/pairings/{id}/consume`: the desktop takes the login, once.
pub fn consume(
    s: &Services,
    id_text: &str,
    desktop_secret: Option<&str>,
    actor: &str,
    now: SystemTime,
) -> Result<Value, FlowError> {
    let now_ms = unix_ms(now);
    let id = parse_id(id_text)?;
    let p = load(s, &id, actor, now_ms)?;
    check_secret(
        s,
        desktop_secret,
        &p.desktop_secret_sha256,
        DESKTOP_SECRET_HEADER,
        &p,
        actor,
        now_ms,
    )?;
    let refuse = |state: PairingState| -> Result<Value, FlowError> {
        let e = refuse_state(state, "consume");
        refused(
            s,
            actor,
            "pairing.consume_refused",
            &subject(&id),
            &e,
            now_ms,
        )?;
        Err(e)
    };
    let Some(a) = p
        .approval
        .clone()
        .filter(|_| p.state == PairingState::Approved)
    else {
        return refuse(p.state);
    };
    // Disabled (its device revoked) or deleted since it approved: no login.
    let Some(cred) = s
        .store
        .credential(&a.credential_id)?
        .filter(|c| c.disabled.is_none())
    else {
        let e = FlowError::Denied {
            reason: "the approving credential was disabled or deleted since it approved".into(),
        };
        refused(
            s,
            actor,
            "pairing.consume_refused",
            &subject(&id),
            &e,
            now_ms,
        )?;
        return Err(e);
    };
    if !commit(s, &next(&p, PairingState::Consumed, now_ms))? {
        return Err(lost_race(
            s,
            &id,
            "consume",
            "pairing.consume_refused",
            actor,
            now_ms,
        ));
    }
    let user = s.store.user_by_id(&a.user_id)?;
    let answer = json!({
        "pairingId": b64url(&id),
        "state": "consumed",
        "userId": b64url(&a.user_id),
        "userName": user.map(|u| u.name),
        "credentialId": b64url(&a.credential_id),
        "aaguid": uuid_text(&cred.aaguid),
        "tier": a.tier,
        "userVerified": a.user_verified,
        "signCount": a.sign_count,
        "action": p.action,
        "policyVersion": a.policy_version,
        "approvedAt": crate::rfc3339::format_ms(a.approved_ms),
    });
    s.record(
        AuditEvent::new(now_ms, actor, "pairing.consumed", subject(&id)).with_detail(json!({
            "userId": b64url(&a.user_id),
            "credentialId": b64url(&a.credential_id),
        })),
    )?;
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn browser_summary_names_what_a_customer_recognizes() {
        let cases = [
            (
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0",
                "Firefox on Windows",
            ),
            (
                "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15",
                "Safari on macOS",
            ),
            (
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0",
                "Edge on Windows",
            ),
            (
                "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
                "Chrome on Linux",
            ),
            (
                "Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
                "Chrome on ChromeOS",
            ),
            ("curl/8.5.0", "an unknown browser"),
        ];
        for (agent, want) in cases {
            assert_eq!(browser_summary(agent), want, "{agent}");
        }
    }

    #[test]
    fn challenge_binds_the_pairing_id_and_the_nonce() {
        let base = challenge(&[1; 16], &[2; 32]);
        assert_ne!(base, challenge(&[3; 16], &[2; 32]));
        assert_ne!(base, challenge(&[1; 16], &[4; 32]));
        let mut input = b"signet/pairing-challenge/v1".to_vec();
        input.extend_from_slice(&[1; 16]);
        input.extend_from_slice(&[2; 32]);
        assert_eq!(base, sha256(&input));
    }

    #[test]
    fn only_the_table_s_transitions_are_allowed() {
        use PairingState as P;
        let allowed = [
            (P::Created, P::Created),
            (P::Created, P::Claimed),
            (P::Created, P::Locked),
            (P::Created, P::Expired),
            (P::Claimed, P::Claimed),
            (P::Claimed, P::Approved),
            (P::Claimed, P::Denied),
            (P::Claimed, P::Locked),
            (P::Claimed, P::Expired),
            (P::Approved, P::Consumed),
            (P::Approved, P::Expired),
        ];
        for from in P::ALL {
            for to in P::ALL {
                assert_eq!(
                    from.may_become(to),
                    allowed.contains(&(from, to)),
                    "{from} -> {to}"
                );
            }
            if from.is_final() {
                assert!(P::ALL.iter().all(|&to| !from.may_become(to)), "{from}");
            }
        }
    }

    #[test]
    fn watchers_drop_entries_nobody_waits_on() {
        let w = Watchers::default();
        for i in 0..200u8 {
            let _n = w.subscribe(&[i; 16]);
        }
        assert!(w.len() < 200, "{}", w.len());
        let kept = w.subscribe(&[7; 16]);
        assert!(Arc::ptr_eq(&kept, &w.subscribe(&[7; 16])));
    }
}
