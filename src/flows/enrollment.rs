//! Device binding: a passkey may be registered only from the device that
//! enrolled, and only after the bank verified the person, seconds or days
//! later.
//!
//! # States
//!
//! ```text
//! pending --verified--> verified --token--> token_issued --redeemed--> bound
//!    |                                   ^        |
//!    +--rejected--> rejected              +--------+ (re-issue voids the earlier token)
//! pending | verified | token_issued --(enrollment window passes)--> expired
//! any state --revoke--> revoked   (bound credentials disabled with it)
//! ```
//!
//! Every transition is a compare-and-swap on the device record's revision
//! ([`Store::update_device`]), so of two concurrent steps from one state
//! exactly one happens; the loser is told what the device became. Every
//! transition is audited (`device.*`) and kept in the record's timeline.
//! Expiry is judged with the caller's time and written when the device is
//! next touched (any request about it, reads included).
//!
//! # When a token counts as spent
//!
//! Only a request that the enrolled device key signed, carrying the
//! device's current token, whose passkey registration then verified and
//! passed the policy, spends the token: the device becomes `bound` and
//! the credential is stored in one atomic step ([`Store::bind_device`]).
//! Everything that fails earlier (an envelope that does not open, another
//! key's signature, a registration the engine or the policy refuses)
//! leaves the token usable, so an attacker without the device key cannot
//! burn it, and a user who cancelled the passkey prompt can try again
//! until the token expires. Of concurrent redemptions exactly one binds;
//! the others get `token-consumed`.
//!
//! [`Store::update_device`]: crate::store::Store::update_device
//! [`Store::bind_device`]: crate::store::Store::bind_device

use std::time::{Duration, SystemTime};

use serde_json::{Map, Value, json};

use super::ceremony::{
    UserRequest, admit_registration, descriptor, object, only, opt_str, refused, req_str,
};
use super::{DeviceProblem, FlowError, Services, b64_field, truncate, unix_ms};
use crate::audit::AuditEvent;
use crate::device_attestation;
use crate::device_token::{self, Claims, SignedRequest, Token, TokenError};
use crate::keys::{EcPublicKey, KeyError, Kid, Role};
use crate::rfc3339::format_ms;
use crate::seal::{self, Envelope, SealError};
use crate::store::{
    DeviceEvent, DeviceId, DeviceRecord, DeviceState, DeviceToken, StoreError, User, limits,
};
use crate::webauthn::options::{
    AttestationConveyance, AuthenticatorAttachment, CreationOptionsBuilder, ResidentKeyRequirement,
    UserEntity,
};
use crate::webauthn::response::RegistrationResponse;
use crate::webauthn::{b64url, uuid_text};

/// The largest encoded device public key (a COSE_Key or an SPKI).
const DEVICE_KEY_MAX: usize = 1024;
/// How many attempts a step makes when a concurrent transition (an
/// expiry write, usually) changed the device under it.
const RETRIES: usize = 3;

/// Device binding settings (`[devices]` in signet.toml).
#[derive(Clone, Debug)]
pub struct Settings {
    pub token_ttl: Duration,
    pub enrollment_ttl: Duration,
    /// DER trust anchors for Android Key Attestation of device keys.
    pub key_attestation_roots: Vec<Vec<u8>>,
    pub require_key_attestation: bool,
}

impl Settings {
    /// `config`'s lifetimes with the built-in Google roots; a configured
    /// root list is loaded by the caller (it reads files).
    pub fn from_config(config: &crate::config::DeviceSettings) -> Settings {
        Settings {
            token_ttl: config.token_ttl,
            enrollment_ttl: config.enrollment_ttl,
            key_attestation_roots: device_attestation::google_roots(),
            require_key_attestation: config.require_key_attestation,
        }
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn random<const N: usize>() -> Result<[u8; N], FlowError> {
    let mut b = [0u8; N];
    aws_lc_rs::rand::fill(&mut b)
        .map_err(|_| FlowError::Internal("random generator failed".into()))?;
    Ok(b)
}

fn state_error(d: &DeviceRecord, wanted: &str) -> FlowError {
    FlowError::Device {
        problem: DeviceProblem::State,
        field: "deviceId".into(),
        reason: format!("the device is {}; {wanted}", d.state),
    }
}

// ---- reading and writing device records ----

fn device_id(text: &str) -> Result<DeviceId, FlowError> {
    b64_field(text, "deviceId", 16, 16)?
        .try_into()
        .map_err(|_| FlowError::invalid("deviceId", "must be 16 bytes, base64url"))
}

/// The device, with an enrollment window that passed written as `expired`.
fn load(s: &Services, id: &DeviceId, actor: &str, now_ms: u64) -> Result<DeviceRecord, FlowError> {
    for _ in 0..RETRIES {
        let d = s.store.device(id)?.ok_or(FlowError::NotFound {
            what: "device",
            field: "deviceId".into(),
        })?;
        if !(d.state.is_open() && now_ms >= d.expires_ms) {
            return Ok(d);
        }
        let detail = format!(
            "not bound within the enrollment window (until {})",
            format_ms(d.expires_ms)
        );
        match transition(s, &d, "expired", DeviceState::Expired, actor, now_ms, |n| {
            n.timeline_detail(detail)
        }) {
            Ok(d) => return Ok(d),
            Err(FlowError::Conflict { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(concurrently())
}

fn concurrently() -> FlowError {
    FlowError::Conflict {
        field: "deviceId".into(),
        reason: "the device changed concurrently; read it and try again".into(),
    }
}

/// What a transition changes besides the state.
struct Next {
    record: DeviceRecord,
    detail: Option<String>,
    audit: Map<String, Value>,
}

impl Next {
    fn timeline_detail(&mut self, detail: String) {
        self.audit.insert("detail".into(), json!(detail));
        self.detail = Some(detail);
    }
}

/// The next revision of `d` in state `to`, changed by `change`, with its
/// timeline entry, without writing it.
fn next(
    d: &DeviceRecord,
    event: &str,
    to: DeviceState,
    actor: &str,
    now_ms: u64,
    change: impl FnOnce(&mut Next),
) -> Next {
    let mut n = Next {
        record: d.clone(),
        detail: None,
        audit: Map::new(),
    };
    n.record.revision += 1;
    n.record.state = to;
    n.record.updated_ms = now_ms;
    change(&mut n);
    n.record.timeline.push(DeviceEvent {
        at_ms: now_ms,
        event: event.to_string(),
        state: to,
        actor: truncate(actor, limits::DEVICE_TEXT_MAX / 2),
        detail: n.detail.clone(),
    });
    // The audit log keeps every event; the record keeps the enrollment
    // and the latest ones.
    while n.record.timeline.len() > limits::TIMELINE_MAX {
        n.record.timeline.remove(1);
    }
    n
}

/// Writes a transition (compare-and-swap) and audits it as `device.<event>`.
fn transition(
    s: &Services,
    d: &DeviceRecord,
    event: &str,
    to: DeviceState,
    actor: &str,
    now_ms: u64,
    change: impl FnOnce(&mut Next),
) -> Result<DeviceRecord, FlowError> {
    let n = next(d, event, to, actor, now_ms, change);
    match s.store.update_device(&n.record) {
        Ok(()) => {}
        Err(StoreError::Conflict { .. }) => return Err(concurrently()),
        Err(e) => return Err(e.into()),
    }
    audit_transition(s, &n, event, actor, now_ms)?;
    Ok(n.record)
}

fn audit_transition(
    s: &Services,
    n: &Next,
    event: &str,
    actor: &str,
    now_ms: u64,
) -> Result<(), FlowError> {
    let mut detail = n.audit.clone();
    detail.insert("state".into(), json!(n.record.state.as_str()));
    detail.insert("revision".into(), json!(n.record.revision));
    s.record(
        AuditEvent::new(
            now_ms,
            actor,
            format!("device.{event}"),
            b64url(&n.record.id),
        )
        .with_detail(Value::Object(detail)),
    )
}

/// `GET /v1/devices/{id}`, and the body of every other answer.
pub fn describe(d: &DeviceRecord, now_ms: u64) -> Value {
    let attestation: Value = d
        .key_attestation
        .as_deref()
        .and_then(|b| serde_json::from_slice(b).ok())
        .unwrap_or(Value::Null);
    json!({
        "deviceId": b64url(&d.id),
        "state": d.state.as_str(),
        "user": {
            "id": b64url(&d.user_id),
            "name": d.user_name,
            "displayName": d.display_name,
        },
        "action": d.action,
        "publicKey": b64url(&EcPublicKey::from_sec1(&d.public_key).map(|k| k.spki_der()).unwrap_or_default()),
        "platform": d.platform.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<Map<String, Value>>(),
        "keyAttestation": attestation,
        "reference": d.reference,
        "created": format_ms(d.created_ms),
        "updated": format_ms(d.updated_ms),
        "enrollmentExpires": d.state.is_open().then(|| format_ms(d.expires_ms)),
        "token": d.token.as_ref().map(|t| json!({
            "tokenId": b64url(&t.id),
            "issued": format_ms(t.issued_ms),
            "expires": format_ms(t.expires_ms),
            "redeemed": t.redeemed_ms.map(format_ms),
            "usable": d.state == DeviceState::TokenIssued && now_ms < t.expires_ms,
        })),
        "credentials": d.credential_ids.iter().map(|c| b64url(c)).collect::<Vec<_>>(),
        "timeline": d.timeline.iter().map(|e| json!({
            "at": format_ms(e.at_ms),
            "event": e.event,
            "state": e.state.as_str(),
            "actor": e.actor,
            "detail": e.detail,
        })).collect::<Vec<_>>(),
    })
}

/// `GET /v1/devices/{id}`.
pub fn get(s: &Services, id_text: &str, actor: &str, now: SystemTime) -> Result<Value, FlowError> {
    let now_ms = unix_ms(now);
    let d = load(s, &device_id(id_text)?, actor, now_ms)?;
    Ok(describe(&d, now_ms))
}

// ---- enrollment ----

/// The device public key: a COSE_Key (EC2, P-256) or a DER
/// SubjectPublicKeyInfo (id-ecPublicKey, prime256v1).
fn device_key(bytes: &[u8]) -> Result<EcPublicKey, FlowError> {
    use coset::CborSerializable;
    const FIELD: &str = "publicKey";
    if let Ok(key) = coset::CoseKey::from_slice(bytes) {
        use coset::iana::{self, EnumI64};
        use coset::{Label, RegisteredLabelWithPrivate};
        if key.kty != coset::KeyType::Assigned(iana::KeyType::EC2) {
            return Err(FlowError::invalid(FIELD, "COSE_Key kty must be 2 (EC2)"));
        }
        let param = |l: i64| {
            key.params
                .iter()
                .find(|(k, _)| *k == Label::Int(l))
                .map(|(_, v)| v)
        };
        let crv = param(iana::Ec2KeyParameter::Crv.to_i64()).and_then(|v| v.as_integer());
        if crv != Some(iana::EllipticCurve::P_256.to_i64().into()) {
            return Err(FlowError::invalid(FIELD, "COSE_Key crv must be 1 (P-256)"));
        }
        if let Some(alg) = &key.alg
            && *alg != RegisteredLabelWithPrivate::Assigned(iana::Algorithm::ES256)
            && *alg != RegisteredLabelWithPrivate::Assigned(iana::Algorithm::ECDH_ES_HKDF_256)
        {
            return Err(FlowError::invalid(
                FIELD,
                "COSE_Key alg, when given, must be -7 (ES256)",
            ));
        }
        let coord = |l: i64| {
            param(l)
                .and_then(|v| v.as_bytes())
                .filter(|b| b.len() == 32)
                .ok_or_else(|| FlowError::invalid(FIELD, "COSE_Key x and y must be 32 bytes"))
        };
        let x = coord(iana::Ec2KeyParameter::X.to_i64())?;
        let y = coord(iana::Ec2KeyParameter::Y.to_i64())?;
        return EcPublicKey::from_xy(x, y)
            .map_err(|e| FlowError::invalid(FIELD, format!("not a P-256 point: {e}")));
    }
    use p256::pkcs8::DecodePublicKey;
    p256::PublicKey::from_public_key_der(bytes)
        .map(|k| EcPublicKey::from_p256(&k))
        .map_err(|_| {
            FlowError::invalid(
                FIELD,
                "must be a P-256 public key: a COSE_Key (EC2, crv 1) or a DER SubjectPublicKeyInfo, base64url",
            )
        })
}

/// A platform value, identity reference or revocation reason: it ends up
/// in the audit log and officers' screens, so bounded and printable.
fn short_text(value: &str, field: &str) -> Result<String, FlowError> {
    if value.len() > limits::DEVICE_TEXT_MAX || value.chars().any(char::is_control) {
        return Err(FlowError::invalid(
            field,
            format!(
                "at most {} bytes, without control characters",
                limits::DEVICE_TEXT_MAX
            ),
        ));
    }
    Ok(value.to_string())
}

fn platform(obj: &Map<String, Value>) -> Result<Vec<(String, String)>, FlowError> {
    let Some(p) = obj.get("platform").filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let p = object(p, "platform")?;
    if p.len() > limits::PLATFORM_ENTRIES_MAX {
        return Err(FlowError::invalid(
            "platform",
            format!("more than {} members", limits::PLATFORM_ENTRIES_MAX),
        ));
    }
    let mut out = Vec::with_capacity(p.len());
    for (k, v) in p {
        let field = format!("platform.{}", truncate(k, 64));
        if k.is_empty() || k.len() > 64 || k.chars().any(char::is_control) {
            return Err(FlowError::invalid(
                field,
                "member names are 1 to 64 bytes without control characters",
            ));
        }
        let Value::String(v) = v else {
            return Err(FlowError::invalid(field, "must be a string"));
        };
        out.push((k.clone(), short_text(v, &field)?));
    }
    Ok(out)
}

fn key_attestation(
    s: &Services,
    obj: &Map<String, Value>,
    key: &EcPublicKey,
    now: SystemTime,
) -> Result<Option<device_attestation::KeyAttestation>, FlowError> {
    let chain = match obj.get("keyAttestation") {
        None | Some(Value::Null) => {
            if s.devices.require_key_attestation {
                return Err(FlowError::invalid(
                    "keyAttestation",
                    "is required (devices.require_key_attestation)",
                ));
            }
            return Ok(None);
        }
        Some(Value::Array(a)) => a,
        Some(_) => {
            return Err(FlowError::invalid(
                "keyAttestation",
                "must be an array of base64url DER certificates, leaf first",
            ));
        }
    };
    if chain.is_empty() || chain.len() > device_attestation::CHAIN_MAX {
        return Err(FlowError::invalid(
            "keyAttestation",
            format!(
                "must hold 1 to {} certificates",
                device_attestation::CHAIN_MAX
            ),
        ));
    }
    let mut der = Vec::with_capacity(chain.len());
    for (i, c) in chain.iter().enumerate() {
        let field = format!("keyAttestation[{i}]");
        let text = c
            .as_str()
            .ok_or_else(|| FlowError::invalid(&field, "must be a base64url string"))?;
        der.push(b64_field(text, &field, 1, device_attestation::CERT_MAX)?);
    }
    device_attestation::verify(&der, key, &s.devices.key_attestation_roots, now)
        .map(Some)
        .map_err(|e| FlowError::invalid(e.field, e.reason))
}

/// `POST /v1/devices`: a device enrolls its key for a user; state `pending`.
pub fn enroll(
    s: &Services,
    body: &Value,
    actor: &str,
    now: SystemTime,
) -> Result<Value, FlowError> {
    let now_ms = unix_ms(now);
    let obj = object(body, "body")?;
    only(
        obj,
        &["user", "publicKey", "platform", "keyAttestation", "action"],
        "",
    )?;
    let policy = s.policy.get();
    let req = Services::requirement(&policy, opt_str(obj, "action", "")?, None)?;
    let wanted = UserRequest::from_body(obj)?;
    let key = device_key(&b64_field(
        req_str(obj, "publicKey", "")?,
        "publicKey",
        1,
        DEVICE_KEY_MAX,
    )?)?;
    let platform = platform(obj)?;
    let attestation = key_attestation(s, obj, &key, now)?;

    // The user the passkey will belong to: an existing one by name, or a
    // new handle (created when the device binds).
    let (user_id, _) = wanted.resolve(s)?;
    let UserRequest {
        name, display_name, ..
    } = wanted;

    let record = DeviceRecord {
        id: random::<16>()?,
        revision: 1,
        state: DeviceState::Pending,
        user_id,
        user_name: name,
        display_name,
        action: req.action.clone(),
        public_key: key.sec1().to_vec(),
        platform,
        key_attestation: attestation
            .as_ref()
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| FlowError::Internal(format!("key attestation record: {e}")))?,
        reference: None,
        created_ms: now_ms,
        updated_ms: now_ms,
        expires_ms: now_ms.saturating_add(ms(s.devices.enrollment_ttl)),
        token: None,
        credential_ids: Vec::new(),
        timeline: vec![DeviceEvent {
            at_ms: now_ms,
            event: "enrolled".into(),
            state: DeviceState::Pending,
            actor: truncate(actor, limits::DEVICE_TEXT_MAX / 2),
            detail: None,
        }],
    };
    s.store.insert_device(&record)?;
    let level = attestation.as_ref().map(|a| a.security_level.clone());
    s.record(
        AuditEvent::new(now_ms, actor, "device.enrolled", b64url(&record.id)).with_detail(json!({
            "state": "pending",
            "userId": b64url(&record.user_id),
            "action": record.action,
            "deviceKey": Kid::of(&key).to_string(),
            "keyAttestation": level,
            "enrollmentExpires": format_ms(record.expires_ms),
        })),
    )?;
    Ok(describe(&record, now_ms))
}

// ---- identity outcome and tokens ----

/// `POST /v1/devices/{id}/verification`: the bank's identity check
/// finished. `verified` issues the registration token at once.
pub fn verification(
    s: &Services,
    id_text: &str,
    body: &Value,
    actor: &str,
    now: SystemTime,
) -> Result<Value, FlowError> {
    let now_ms = unix_ms(now);
    let id = device_id(id_text)?;
    let obj = object(body, "body")?;
    only(obj, &["outcome", "reference"], "")?;
    let outcome = match req_str(obj, "outcome", "")? {
        "verified" => DeviceState::Verified,
        "rejected" => DeviceState::Rejected,
        _ => {
            return Err(FlowError::invalid(
                "outcome",
                "must be verified or rejected",
            ));
        }
    };
    let reference = opt_str(obj, "reference", "")?
        .map(|r| short_text(r, "reference"))
        .transpose()?;
    let d = load(s, &id, actor, now_ms)?;
    if d.state != DeviceState::Pending {
        return Err(state_error(
            &d,
            "an identity outcome is taken only while pending",
        ));
    }
    let event = outcome.as_str();
    let d = transition(s, &d, event, outcome, actor, now_ms, |n| {
        n.record.reference = reference.clone();
        if let Some(r) = &reference {
            n.audit.insert("reference".into(), json!(r));
        }
    })?;
    if outcome == DeviceState::Rejected {
        return Ok(describe(&d, now_ms));
    }
    issue(s, d, actor, now).map_err(|e| match e {
        // The outcome is recorded; the token can be asked for again.
        FlowError::Unavailable(why) => FlowError::Unavailable(format!(
            "{why}; the identity outcome is recorded: ask for the token with POST /v1/devices/{id_text}/token"
        )),
        other => other,
    })
}

/// `POST /v1/devices/{id}/token`: a new token for a verified device; any
/// earlier one is void from this moment.
pub fn reissue(
    s: &Services,
    id_text: &str,
    actor: &str,
    now: SystemTime,
) -> Result<Value, FlowError> {
    let d = load(s, &device_id(id_text)?, actor, unix_ms(now))?;
    if !matches!(d.state, DeviceState::Verified | DeviceState::TokenIssued) {
        return Err(state_error(
            &d,
            "tokens are issued only to verified devices not yet bound",
        ));
    }
    issue(s, d, actor, now)
}

/// Signs, seals and records a new token for `d`, and answers with it and
/// the creation options its passkey is made with.
fn issue(s: &Services, d: DeviceRecord, actor: &str, now: SystemTime) -> Result<Value, FlowError> {
    let now_ms = unix_ms(now);
    let ttl_ms = ms(s.devices.token_ttl);
    let claims = Claims {
        token_id: random::<16>()?,
        device_id: d.id,
        user_handle: d.user_id.clone(),
        rp_id: s.rp.id.clone(),
        issued_s: now_ms / 1000,
        expires_s: (now_ms.saturating_add(ttl_ms)) / 1000,
        nonce: random::<16>()?,
    };
    let (unsigned, signature, kid) = super::sign_with_active(s, Role::TokenSigning, |kid| {
        claims
            .to_be_signed(kid)
            .map_err(|e| FlowError::Internal(format!("token: {e}")))
    })?;
    let token = Claims::finish(unsigned, &signature)
        .map_err(|e| FlowError::Internal(format!("token: {e}")))?;
    let device_key = EcPublicKey::from_sec1(&d.public_key)
        .map_err(|e| FlowError::Internal(format!("stored device key unreadable: {e}")))?;
    let sealed = seal::seal(&token, &device_key, None, &device_token::token_aad(&d.id))
        .map_err(|e| FlowError::Internal(format!("sealing the token: {e}")))?;
    let options = creation_options(s, &d, &device_token::challenge(&token))?;

    let expires_ms = claims.expires_s.saturating_mul(1000);
    let replaced = d
        .token
        .as_ref()
        .filter(|_| d.state == DeviceState::TokenIssued)
        .map(|t| b64url(&t.id));
    let d = transition(
        s,
        &d,
        "token_issued",
        DeviceState::TokenIssued,
        actor,
        now_ms,
        |n| {
            n.record.token = Some(DeviceToken {
                id: claims.token_id,
                issued_ms: now_ms,
                expires_ms,
                redeemed_ms: None,
            });
            n.audit
                .insert("tokenId".into(), json!(b64url(&claims.token_id)));
            n.audit
                .insert("tokenExpires".into(), json!(format_ms(expires_ms)));
            n.audit.insert("tokenKid".into(), json!(kid.to_string()));
            let mut detail = format!(
                "token {} until {}",
                b64url(&claims.token_id),
                format_ms(expires_ms)
            );
            if let Some(r) = &replaced {
                n.audit.insert("replaces".into(), json!(r));
                detail.push_str(&format!("; voids token {r}"));
            }
            n.detail = Some(detail);
        },
    )?;
    let mut answer = describe(&d, now_ms);
    answer["token"] = json!({
        "sealed": b64url(&sealed),
        "tokenId": b64url(&claims.token_id),
        "expires": format_ms(expires_ms),
        "publicKey": options,
    });
    Ok(answer)
}

/// The creation options of the passkey registered with a token: the
/// action's requirements, the challenge derived from the token, and the
/// user's existing credentials excluded.
fn creation_options(s: &Services, d: &DeviceRecord, challenge: &[u8]) -> Result<Value, FlowError> {
    let policy = s.policy.get();
    let req = Services::requirement(&policy, Some(&d.action), None)?;
    let exclude: Vec<_> = s
        .store
        .credentials_by_user(&d.user_id)?
        .iter()
        .map(descriptor)
        .collect();
    let user = UserEntity {
        id: d.user_id.clone(),
        name: d.user_name.clone(),
        display_name: d.display_name.clone(),
    };
    let options = CreationOptionsBuilder::new(&s.rp, &s.rp_name, &user, challenge)
        .timeout_ms(s.ceremony_timeout_ms)
        .exclude_credentials(exclude)
        .resident_key(
            req.resident_key
                .unwrap_or(ResidentKeyRequirement::Preferred),
        )
        .user_verification(req.user_verification)
        .attestation(req.attestation.unwrap_or(AttestationConveyance::None))
        // The passkey is made on the enrolled phone.
        .authenticator_attachment(req.attachment.unwrap_or(AuthenticatorAttachment::Platform))
        .build()
        .map_err(FlowError::in_request)?;
    serde_json::to_value(options).map_err(|e| FlowError::Internal(format!("options: {e}")))
}

// ---- redemption ----

fn token_problem(problem: DeviceProblem, reason: impl Into<String>) -> FlowError {
    FlowError::Device {
        problem,
        field: "sealed".into(),
        reason: reason.into(),
    }
}

fn from_token_error(e: TokenError) -> FlowError {
    match e {
        TokenError::DeviceSignature => FlowError::Device {
            problem: DeviceProblem::DeviceSignature,
            field: "request.signature".into(),
            reason: "does not verify with the enrolled device key".into(),
        },
        TokenError::Signature => FlowError::Device {
            problem: DeviceProblem::TokenInvalid,
            field: "request.tok.signature".into(),
            reason: "does not verify with this signet's token-signing key".into(),
        },
        TokenError::Malformed { field, reason } => match field.strip_prefix("token") {
            Some(rest) => FlowError::Device {
                problem: DeviceProblem::TokenInvalid,
                field: format!("request.tok{rest}"),
                reason,
            },
            None => FlowError::invalid(field, reason),
        },
        TokenError::Encoding => FlowError::Internal("token: could not be encoded".into()),
    }
}

fn from_seal_error(e: SealError) -> FlowError {
    match e {
        SealError::Malformed { field, reason } => FlowError::invalid(field, reason),
        SealError::Decrypt => FlowError::invalid(
            "sealed",
            "does not decrypt: not sealed to this signet's token-encryption key for this device, or altered",
        ),
        SealError::Key(k) => k.into(),
        SealError::Crypto => FlowError::Internal("cipher failed".into()),
    }
}

/// The key a sealed request names, if it is one of this signet's
/// `token-encryption` keys that may still decrypt.
fn encryption_key(s: &Services, envelope: &Envelope) -> Result<Kid, FlowError> {
    const FIELD: &str = "sealed.recipients[0].unprotected.kid";
    let kid = envelope
        .kid
        .as_deref()
        .and_then(Kid::from_bytes)
        .ok_or_else(|| {
            FlowError::invalid(FIELD, "must name the token-encryption key (16 bytes)")
        })?;
    let not_ours = || {
        FlowError::invalid(
            FIELD,
            format!("{kid} is not a token-encryption key of this signet"),
        )
    };
    match s.keys.live(&kid) {
        Ok(k) if k.role == Role::TokenEncryption => Ok(kid),
        Ok(_) | Err(KeyError::KeyNotFound(_) | KeyError::Retired(_)) => Err(not_ours()),
        Err(e) => Err(e.into()),
    }
}

/// The token's claims, once its signature verifies with one of this
/// signet's `token-signing` keys (a rotated one included).
fn token_claims(s: &Services, token: &[u8]) -> Result<Claims, FlowError> {
    let t = Token::parse(token).map_err(from_token_error)?;
    let not_ours = || {
        token_problem(
            DeviceProblem::TokenInvalid,
            format!(
                "the token names key {}, not a token-signing key of this signet",
                t.kid
            ),
        )
    };
    let key = match s.keys.live(&t.kid) {
        Ok(k) if k.role == Role::TokenSigning => k,
        Ok(_) | Err(KeyError::KeyNotFound(_) | KeyError::Retired(_)) => return Err(not_ours()),
        Err(e) => return Err(e.into()),
    };
    t.verify(&key.public).map_err(from_token_error)
}

/// `POST /v1/devices/{id}/registration`: the device's sealed request.
pub fn redeem(
    s: &Services,
    id_text: &str,
    body: &Value,
    actor: &str,
    now: SystemTime,
) -> Result<Value, FlowError> {
    let now_ms = unix_ms(now);
    let id = device_id(id_text)?;
    let obj = object(body, "body")?;
    only(obj, &["sealed"], "")?;
    let sealed = b64_field(req_str(obj, "sealed", "")?, "sealed", 1, seal::SEALED_MAX)?;
    let d = load(s, &id, actor, now_ms)?;
    match open_and_bind(s, &d, &sealed, actor, now) {
        Ok(answer) => Ok(answer),
        Err(e) => {
            refused(
                s,
                actor,
                "device.registration_refused",
                &b64url(&id),
                &e,
                now_ms,
            )?;
            Err(e)
        }
    }
}

fn open_and_bind(
    s: &Services,
    d: &DeviceRecord,
    sealed: &[u8],
    actor: &str,
    now: SystemTime,
) -> Result<Value, FlowError> {
    let now_ms = unix_ms(now);
    // 1. The envelope opens with this signet's key, for this device.
    let envelope = Envelope::parse(sealed).map_err(from_seal_error)?;
    let kid = encryption_key(s, &envelope)?;
    let secret = s.keys.ecdh_with(&kid, &envelope.ephemeral)?;
    let plain = envelope
        .open(&secret, &device_token::request_aad(&d.id))
        .map_err(from_seal_error)?;
    drop(secret);
    // 2. The enrolled device signed it.
    let device_key = EcPublicKey::from_sec1(&d.public_key)
        .map_err(|e| FlowError::Internal(format!("stored device key unreadable: {e}")))?;
    let request = SignedRequest::parse(&plain)
        .and_then(|r| r.verify(&device_key))
        .map_err(from_token_error)?;
    if request.device_id != d.id {
        return Err(FlowError::invalid(
            "request.did",
            "is not the device the request was sent for",
        ));
    }
    // 3. The token is this signet's, for this device and user, current.
    let claims = token_claims(s, &request.token)?;
    if claims.device_id != d.id || claims.user_handle != d.user_id || claims.rp_id != s.rp.id {
        return Err(token_problem(
            DeviceProblem::TokenInvalid,
            "the token was issued for another device, user or RP",
        ));
    }
    let current = d.token.as_ref().filter(|t| t.id == claims.token_id);
    match d.state {
        DeviceState::TokenIssued if current.is_some() => {}
        DeviceState::TokenIssued => {
            return Err(token_problem(
                DeviceProblem::TokenSuperseded,
                "a newer token was issued to this device; use that one",
            ));
        }
        DeviceState::Bound if current.is_some() => {
            return Err(token_problem(
                DeviceProblem::TokenConsumed,
                "this token was redeemed already: the device is bound",
            ));
        }
        _ => {
            return Err(state_error(
                d,
                "a token is redeemed only while one is issued",
            ));
        }
    }
    let expires_ms = current.map_or(0, |t| t.expires_ms);
    if now_ms >= expires_ms || now_ms / 1000 >= claims.expires_s {
        return Err(token_problem(
            DeviceProblem::TokenExpired,
            format!("the token expired at {}", format_ms(expires_ms)),
        ));
    }
    // 4. The passkey registration, against the challenge the token gives
    // and the action's policy.
    let registration: Value = serde_json::from_str(&request.registration)
        .map_err(|e| FlowError::invalid("request.reg", format!("not JSON: {e}")))?;
    let response = RegistrationResponse::from_value(&registration)
        .map_err(|e| in_reg(FlowError::in_credential(e)))?;
    let policy = s.policy.get();
    let req = Services::requirement(&policy, Some(&d.action), None)?;
    let admitted = admit_registration(
        s,
        &policy,
        &req,
        &response,
        &device_token::challenge(&request.token),
        req.user_verification,
        &d.user_id,
        now,
    )
    .map_err(in_reg)?;

    // 5. Bind: the device, the user and the credential in one step.
    let mut record = admitted.record;
    record.device_id = Some(d.id.to_vec());
    let credential_id = record.id.clone();
    let n = next(d, "bound", DeviceState::Bound, actor, now_ms, |n| {
        if let Some(t) = &mut n.record.token {
            t.redeemed_ms = Some(now_ms);
        }
        n.record.credential_ids.push(credential_id.clone());
        n.audit
            .insert("credentialId".into(), json!(b64url(&credential_id)));
        n.audit
            .insert("tokenId".into(), json!(b64url(&claims.token_id)));
        n.audit.insert("deviceTime".into(), json!(request.time_s));
        n.detail = Some(format!("credential {}", b64url(&credential_id)));
    });
    let user = User {
        id: d.user_id.clone(),
        name: d.user_name.clone(),
        display_name: d.display_name.clone(),
        created_ms: now_ms,
    };
    match s.store.bind_device(&n.record, &user, &record) {
        Ok(()) => {}
        Err(StoreError::Conflict { detail }) if detail.starts_with("device") => {
            // Another request moved the device first: say what it became.
            let now_d = load(s, &d.id, actor, now_ms)?;
            return Err(match now_d.state {
                DeviceState::Bound => token_problem(
                    DeviceProblem::TokenConsumed,
                    "this token was redeemed already: the device is bound",
                ),
                DeviceState::TokenIssued => token_problem(
                    DeviceProblem::TokenSuperseded,
                    "a newer token was issued to this device meanwhile",
                ),
                _ => state_error(&now_d, "the device changed while the request was checked"),
            });
        }
        Err(StoreError::Conflict { detail }) => {
            return Err(FlowError::Conflict {
                field: "user".into(),
                reason: detail,
            });
        }
        Err(StoreError::Exists { .. }) => {
            return Err(FlowError::Conflict {
                field: "request.reg.id".into(),
                reason: "this credential is already registered".into(),
            });
        }
        Err(e) => return Err(e.into()),
    }
    let mut detail = admitted.detail;
    detail["deviceId"] = json!(b64url(&d.id));
    detail["action"] = json!(d.action);
    s.record(
        AuditEvent::new(
            now_ms,
            actor,
            "credential.registered",
            b64url(&credential_id),
        )
        .with_detail(detail),
    )?;
    audit_transition(s, &n, "bound", actor, now_ms)?;
    let mut answer = admitted.answer;
    answer["deviceId"] = json!(b64url(&d.id));
    answer["state"] = json!(DeviceState::Bound.as_str());
    answer["userName"] = json!(d.user_name);
    answer["action"] = json!(d.action);
    answer["aaguid"] = json!(uuid_text(&record.aaguid));
    Ok(answer)
}

/// Engine errors name `credential.*`; inside a request the registration
/// is the `reg` member.
fn in_reg(e: FlowError) -> FlowError {
    match e {
        FlowError::Ceremony(mut w) => {
            if let Some(f) = w.field_mut()
                && let Some(rest) = f.strip_prefix("credential.")
            {
                *f = format!("request.reg.{rest}");
            }
            FlowError::Ceremony(w)
        }
        other => other,
    }
}

// ---- revocation ----

/// `POST /v1/devices/{id}/revoke`: from any state; the device's
/// credentials are disabled in the same step.
pub fn revoke(
    s: &Services,
    id_text: &str,
    body: &Value,
    actor: &str,
    now: SystemTime,
) -> Result<Value, FlowError> {
    let now_ms = unix_ms(now);
    let id = device_id(id_text)?;
    let obj = object(body, "body")?;
    only(obj, &["reason"], "")?;
    let reason = match opt_str(obj, "reason", "")? {
        Some(r) => short_text(r, "reason")?,
        None => "revoked".to_string(),
    };
    for _ in 0..RETRIES {
        let d = load(s, &id, actor, now_ms)?;
        if d.state == DeviceState::Revoked {
            return Err(state_error(&d, "it is revoked already"));
        }
        let disabled = format!("device {} revoked: {reason}", b64url(&d.id));
        let n = next(&d, "revoked", DeviceState::Revoked, actor, now_ms, |n| {
            n.audit.insert("reason".into(), json!(reason));
            n.audit.insert("from".into(), json!(d.state.as_str()));
            n.audit.insert(
                "credentialsDisabled".into(),
                json!(
                    d.credential_ids
                        .iter()
                        .map(|c| b64url(c))
                        .collect::<Vec<_>>()
                ),
            );
            n.detail = Some(reason.clone());
        });
        match s
            .store
            .revoke_device(&n.record, &truncate(&disabled, limits::FLAG_REASON_MAX))
        {
            Ok(()) => {
                audit_transition(s, &n, "revoked", actor, now_ms)?;
                return Ok(describe(&n.record, now_ms));
            }
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(concurrently())
}
