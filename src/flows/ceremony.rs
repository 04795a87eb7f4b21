//! Register and authenticate: options, then verification of the browser's
//! answer against the ceremony the options started.
//!
//! # Ceremony state
//!
//! Options store a ceremony (challenge, user, the requirements the options
//! announced) under a random 128-bit id with the options' timeout as TTL.
//! Verification *consumes* it before anything else is checked: the first
//! well-formed verify request for a ceremony spends it, whether the
//! response then verifies or not. So a challenge is answered at most once,
//! and of any number of concurrent verify requests exactly one gets to run
//! the checks. A request body that is not even a credential (a JSON shape
//! error) is refused before the ceremony is touched, so a client's
//! programming error does not cost the user a retry.
//!
//! Users are created at the first successful registration, not at options
//! time: options for a user who never finishes leave nothing behind but an
//! expiring ceremony.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::time::SystemTime;

use super::policy::{assess_credential, facts};
use super::{FlowError, Services, StepUp, b64_field, metadata, truncate, unix_ms, uuid_text};
use crate::audit::AuditEvent;
use crate::policy;
use crate::policy::actions::{
    Decision, Requirement, stricter_rk, stricter_uv, stronger_attestation,
};
use crate::policy::amount::Amount;
use crate::policy::tiers::{Admission, Policy, TierInput};
use crate::store::{CeremonyId, CeremonyRecord, CredentialRecord, StoreError, User, limits};
use crate::webauthn::cose_key::CredentialPublicKey;
use crate::webauthn::options::{
    AttestationConveyance, AuthenticatorAttachment, CreationOptionsBuilder, CredentialDescriptor,
    RequestOptionsBuilder, ResidentKeyRequirement, UserEntity, new_challenge,
};
use crate::webauthn::response::{AuthenticationResponse, RegistrationResponse};
use crate::webauthn::{self, UserVerification, assertion, b64url, registration};

const REGISTRATION: &str = "registration";
const AUTHENTICATION: &str = "authentication";
/// Bytes of a generated user handle (the spec allows up to 64; 32 random
/// bytes never collide and carry no personal data, §14.6.1).
const USER_HANDLE_BYTES: usize = 32;

/// What registration verification needs to know about the options it follows.
#[derive(Serialize, Deserialize)]
struct RegistrationState {
    user_id: Vec<u8>,
    user_name: String,
    display_name: String,
    new_user: bool,
    action: String,
    user_verification: UserVerification,
}

/// A payment amount carried from options to verification.
#[derive(Serialize, Deserialize)]
struct StateAmount {
    value: String,
    currency: String,
}

#[derive(Serialize, Deserialize)]
struct AuthenticationState {
    /// `None`: discoverable-credential login; the response names the user.
    user_id: Option<Vec<u8>>,
    action: String,
    #[serde(default)]
    amount: Option<StateAmount>,
    user_verification: UserVerification,
}

// ---- request members ----

pub(crate) fn object<'a>(v: &'a Value, field: &str) -> Result<&'a Map<String, Value>, FlowError> {
    v.as_object()
        .ok_or_else(|| FlowError::invalid(field, "must be an object"))
}

/// Refuses members the endpoint does not define: a misspelt option must not
/// be silently ignored.
pub(crate) fn only(
    obj: &Map<String, Value>,
    allowed: &[&str],
    path: &str,
) -> Result<(), FlowError> {
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(FlowError::invalid(
            format!("{path}{}", truncate(k, 64)),
            format!("unknown member; expected one of: {}", allowed.join(", ")),
        )),
        None => Ok(()),
    }
}

pub(crate) fn opt_str<'a>(
    obj: &'a Map<String, Value>,
    name: &str,
    path: &str,
) -> Result<Option<&'a str>, FlowError> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(FlowError::invalid(
            format!("{path}{name}"),
            "must be a string",
        )),
    }
}

pub(crate) fn req_str<'a>(
    obj: &'a Map<String, Value>,
    name: &str,
    path: &str,
) -> Result<&'a str, FlowError> {
    opt_str(obj, name, path)?
        .ok_or_else(|| FlowError::invalid(format!("{path}{name}"), "is required"))
}

/// A user name or display name: bounded, no control characters (they end
/// up in authenticator UIs and logs).
pub(crate) fn user_text(value: &str, field: &str, allow_empty: bool) -> Result<String, FlowError> {
    if value.is_empty() && !allow_empty {
        return Err(FlowError::invalid(field, "must not be empty"));
    }
    if value.len() > limits::USER_NAME_MAX {
        return Err(FlowError::invalid(
            field,
            format!("longer than {} bytes", limits::USER_NAME_MAX),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(FlowError::invalid(field, "contains control characters"));
    }
    Ok(value.to_string())
}

/// A body that is `null` or `{"reason"?}`: the optional reason of a
/// cancellation or refusal, as the user or bank gave it.
pub(crate) fn reason_body(body: &Value) -> Result<Option<String>, FlowError> {
    match body {
        Value::Null => Ok(None),
        v => {
            let obj = object(v, "body")?;
            only(obj, &["reason"], "")?;
            opt_str(obj, "reason", "")?
                .map(|r| user_text(r, "reason", false))
                .transpose()
        }
    }
}

/// The `user` member of a registration or enrollment request.
pub(crate) struct UserRequest {
    pub name: String,
    pub display_name: String,
    pub wanted_id: Option<Vec<u8>>,
}

impl UserRequest {
    /// `user`: `{"name", "displayName"?, "id"?}`.
    pub(crate) fn from_body(obj: &Map<String, Value>) -> Result<UserRequest, FlowError> {
        let user_obj = object(
            obj.get("user")
                .ok_or_else(|| FlowError::invalid("user", "is required"))?,
            "user",
        )?;
        only(user_obj, &["name", "displayName", "id"], "user.")?;
        let name = user_text(req_str(user_obj, "name", "user.")?, "user.name", false)?;
        let display_name = match opt_str(user_obj, "displayName", "user.")? {
            Some(d) => user_text(d, "user.displayName", true)?,
            None => name.clone(),
        };
        let wanted_id = opt_str(user_obj, "id", "user.")?
            .map(|t| b64_field(t, "user.id", 1, limits::USER_ID_MAX))
            .transpose()?;
        Ok(UserRequest {
            name,
            display_name,
            wanted_id,
        })
    }

    /// The user handle: the existing user's of that name (whose id a
    /// given `id` must match), or the given `id` if no one has it, or a
    /// new random one. The user itself is created only when a credential
    /// is stored.
    pub(crate) fn resolve(&self, s: &Services) -> Result<(Vec<u8>, Option<User>), FlowError> {
        match s.store.user_by_name(&self.name)? {
            Some(existing) => {
                if self.wanted_id.as_ref().is_some_and(|w| *w != existing.id) {
                    return Err(FlowError::Conflict {
                        field: "user.id".into(),
                        reason: "the user name is registered with another user id".into(),
                    });
                }
                Ok((existing.id.clone(), Some(existing)))
            }
            None => match &self.wanted_id {
                Some(w) => {
                    if s.store.user_by_id(w)?.is_some() {
                        return Err(FlowError::Conflict {
                            field: "user.id".into(),
                            reason: "the user id belongs to another user name".into(),
                        });
                    }
                    Ok((w.clone(), None))
                }
                None => {
                    let mut id = vec![0u8; USER_HANDLE_BYTES];
                    aws_lc_rs::rand::fill(&mut id)
                        .map_err(|_| FlowError::Internal("random generator failed".into()))?;
                    Ok((id, None))
                }
            },
        }
    }
}

fn user_verification(
    obj: &Map<String, Value>,
    name: &str,
    path: &str,
) -> Result<Option<UserVerification>, FlowError> {
    Ok(match opt_str(obj, name, path)? {
        None => None,
        Some("required") => Some(UserVerification::Required),
        Some("preferred") => Some(UserVerification::Preferred),
        Some("discouraged") => Some(UserVerification::Discouraged),
        Some(_) => {
            return Err(FlowError::invalid(
                format!("{path}{name}"),
                "must be required, preferred or discouraged",
            ));
        }
    })
}

fn extensions(obj: &Map<String, Value>) -> Result<Option<Value>, FlowError> {
    match obj.get("extensions") {
        None | Some(Value::Null) => Ok(None),
        Some(v @ Value::Object(_)) => Ok(Some(v.clone())),
        Some(_) => Err(FlowError::invalid("extensions", "must be an object")),
    }
}

fn ceremony_id(obj: &Map<String, Value>) -> Result<CeremonyId, FlowError> {
    let text = req_str(obj, "ceremonyId", "")?;
    let bytes = b64_field(text, "ceremonyId", 16, 16)?;
    bytes
        .try_into()
        .map_err(|_| FlowError::invalid("ceremonyId", "must be 16 bytes, base64url"))
}

fn credential_member(obj: &Map<String, Value>) -> Result<&Value, FlowError> {
    match obj.get("credential") {
        None | Some(Value::Null) => Err(FlowError::invalid("credential", "is required")),
        Some(v) => Ok(v),
    }
}

/// Stores a new ceremony for options just built, expiring with the options'
/// timeout, and returns the options answer.
#[allow(clippy::too_many_arguments)]
fn open_ceremony<S: Serialize, O: Serialize>(
    s: &Services,
    kind: &'static str,
    challenge: &[u8],
    user_id: Option<Vec<u8>>,
    state: &S,
    timeout_ms: u32,
    options: &O,
    now: SystemTime,
) -> Result<Value, FlowError> {
    let id = new_ceremony_id()?;
    let payload = serde_json::to_vec(state)
        .map_err(|e| FlowError::Internal(format!("ceremony state: {e}")))?;
    s.store.put_ceremony(&CeremonyRecord {
        id,
        kind: kind.into(),
        challenge: challenge.to_vec(),
        user_id,
        expires_ms: unix_ms(now).saturating_add(u64::from(timeout_ms)),
        payload,
    })?;
    Ok(json!({ "ceremonyId": b64url(&id), "publicKey": options }))
}

fn new_ceremony_id() -> Result<CeremonyId, FlowError> {
    let mut id = [0u8; 16];
    aws_lc_rs::rand::fill(&mut id)
        .map_err(|_| FlowError::Internal("random generator failed".into()))?;
    Ok(id)
}

/// The start of both verify endpoints: the request's shape, then the
/// credential's (both refused before the ceremony is touched), then the
/// ceremony consumed and its state read.
fn begin_verify<R, S: for<'de> Deserialize<'de>>(
    s: &Services,
    body: &Value,
    kind: &'static str,
    actor: &str,
    now: SystemTime,
    parse: impl FnOnce(&Value) -> Result<R, webauthn::Error>,
) -> Result<(CeremonyId, R, CeremonyRecord, S), FlowError> {
    let obj = object(body, "body")?;
    only(obj, &["ceremonyId", "credential"], "")?;
    let id = ceremony_id(obj)?;
    let response = parse(credential_member(obj)?).map_err(FlowError::in_credential)?;
    let record = take_ceremony(s, &id, kind, actor, unix_ms(now))?;
    let st: S = state(&record)?;
    Ok((id, response, record, st))
}

/// Consumes the ceremony and checks its kind (the kind is checked after
/// consumption, so a ceremony sent to the wrong endpoint is spent too, and
/// that spending is audited like any other refusal).
fn take_ceremony(
    s: &Services,
    id: &CeremonyId,
    kind: &'static str,
    actor: &str,
    now_ms: u64,
) -> Result<CeremonyRecord, FlowError> {
    let record = match s.store.consume_ceremony(id, now_ms) {
        Ok(r) => r,
        Err(StoreError::NotFound { .. }) => return Err(FlowError::CeremonyNotFound),
        Err(StoreError::Expired { .. }) => return Err(FlowError::CeremonyExpired),
        Err(StoreError::AlreadyConsumed { .. }) => return Err(FlowError::CeremonyConsumed),
        Err(e) => return Err(e.into()),
    };
    if record.kind != kind {
        let e = FlowError::CeremonyKind {
            expected: kind,
            found: record.kind,
        };
        refused(
            s,
            actor,
            &format!("{kind}.refused"),
            &b64url(id),
            &e,
            now_ms,
        )?;
        return Err(e);
    }
    Ok(record)
}

fn state<T: for<'de> Deserialize<'de>>(record: &CeremonyRecord) -> Result<T, FlowError> {
    serde_json::from_slice(&record.payload)
        .map_err(|e| FlowError::Internal(format!("ceremony state unreadable: {e}")))
}

pub(crate) fn descriptor(c: &CredentialRecord) -> CredentialDescriptor {
    CredentialDescriptor {
        id: c.id.clone(),
        transports: c.transports.clone(),
    }
}

/// The optional `amount` member: `{"value": "1500.00", "currency": "EUR"}`.
fn amount(obj: &Map<String, Value>) -> Result<Option<Amount>, FlowError> {
    let Some(a) = obj.get("amount").filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let a = object(a, "amount")?;
    only(a, &["value", "currency"], "amount.")?;
    let value = req_str(a, "value", "amount.")?;
    let currency = req_str(a, "currency", "amount.")?;
    let value =
        policy::amount::Decimal::parse(value).map_err(|e| FlowError::invalid("amount.value", e))?;
    let currency =
        policy::amount::currency(currency).map_err(|e| FlowError::invalid("amount.currency", e))?;
    Ok(Some(Amount { value, currency }))
}

/// The action's requirement under `policy`, or the refusal of a ceremony
/// whose action the policy no longer defines (audited like any refusal).
fn verify_requirement(
    s: &Services,
    policy: &Policy,
    action: &str,
    amount: Option<&Amount>,
    refusal: (&str, &str, &str, u64),
) -> Result<Requirement, FlowError> {
    Services::requirement(policy, Some(action), amount).or_else(|e| {
        let (actor, event, subject, now_ms) = refusal;
        refused(s, actor, event, subject, &e, now_ms)?;
        Err(e)
    })
}

/// The user's credentials the action would accept, for allowCredentials:
/// the browser then asks for one that will do, not for one that would be
/// refused. None: step-up (naming the best the user has) when some fall
/// short, not-found when the user has none that the policy allows at all.
pub(crate) fn usable_credentials(
    s: &Services,
    policy: &Policy,
    req: &Requirement,
    user: &User,
) -> Result<Vec<CredentialDescriptor>, FlowError> {
    let mut allow = Vec::new();
    let mut short: Option<(String, u8)> = None;
    for c in s.store.credentials_by_user(&user.id)? {
        match decide(s, policy, req, &c)? {
            (Decision::Allow, _) => allow.push(descriptor(&c)),
            (Decision::StepUp { reason }, tier) => {
                if short.as_ref().is_none_or(|(_, t)| tier < *t) {
                    short = Some((reason, tier));
                }
            }
            (Decision::Deny { .. }, _) => {}
        }
    }
    if !allow.is_empty() {
        return Ok(allow);
    }
    Err(match short {
        Some((reason, tier)) => {
            let mut step = StepUp::new(
                req,
                format!("no credential of this user meets the action; the best one: {reason}"),
                &policy.version,
            );
            step.tier = Some(tier);
            step.user_id = Some(b64url(&user.id));
            FlowError::StepUp(Box::new(step))
        }
        None => FlowError::NotFound {
            what: "usable credential for this user",
            field: "user.name".into(),
        },
    })
}

/// The policy's decision for one stored credential under `requirement`.
pub(crate) fn decide(
    s: &Services,
    policy: &Policy,
    requirement: &Requirement,
    credential: &CredentialRecord,
) -> Result<(Decision, u8), FlowError> {
    let known = metadata::lookup_credential(s.store.as_ref(), credential)?;
    let (a, admission) = assess_credential(policy, credential, known.as_ref());
    // A disabled credential (its device revoked) is refused whatever the
    // policy says.
    if let Some(why) = &credential.disabled {
        let reason = format!("the credential is disabled: {why}");
        return Ok((Decision::Deny { reason }, a.tier));
    }
    let d = requirement.decide(&facts(credential, &a, admission));
    Ok((d, a.tier))
}

// ---- registration ----

/// `POST /v1/registrations/options`.
pub fn registration_options(
    s: &Services,
    body: &Value,
    now: SystemTime,
) -> Result<Value, FlowError> {
    let obj = object(body, "body")?;
    only(
        obj,
        &[
            "user",
            "action",
            "authenticatorSelection",
            "attestation",
            "extensions",
        ],
        "",
    )?;
    let policy = s.policy.get();
    let req = Services::requirement(&policy, opt_str(obj, "action", "")?, None)?;
    let wanted = UserRequest::from_body(obj)?;

    // The action sets the floor; a request may raise what the action pins
    // and choose what it leaves open.
    let mut uv = req.user_verification;
    let mut resident_key = req
        .resident_key
        .unwrap_or(ResidentKeyRequirement::Preferred);
    let mut attachment = req.attachment;
    if let Some(sel) = obj.get("authenticatorSelection").filter(|v| !v.is_null()) {
        let sel = object(sel, "authenticatorSelection")?;
        let path = "authenticatorSelection.";
        only(
            sel,
            &[
                "authenticatorAttachment",
                "residentKey",
                "requireResidentKey",
                "userVerification",
            ],
            path,
        )?;
        if let Some(u) = user_verification(sel, "userVerification", path)? {
            uv = stricter_uv(uv, u);
        }
        let asked = match opt_str(sel, "authenticatorAttachment", path)? {
            None => None,
            Some("platform") => Some(AuthenticatorAttachment::Platform),
            Some("cross-platform") => Some(AuthenticatorAttachment::CrossPlatform),
            Some(_) => {
                return Err(FlowError::invalid(
                    "authenticatorSelection.authenticatorAttachment",
                    "must be platform or cross-platform",
                ));
            }
        };
        if let Some(a) = asked {
            if let Some(pinned) = req.attachment
                && pinned != a
            {
                return Err(FlowError::invalid(
                    "authenticatorSelection.authenticatorAttachment",
                    format!(
                        "action {} needs {} authenticators",
                        req.action,
                        policy::actions::attachment_str(pinned)
                    ),
                ));
            }
            attachment = Some(a);
        }
        let asked = match opt_str(sel, "residentKey", path)? {
            None => None,
            Some("required") => Some(ResidentKeyRequirement::Required),
            Some("preferred") => Some(ResidentKeyRequirement::Preferred),
            Some("discouraged") => Some(ResidentKeyRequirement::Discouraged),
            Some(_) => {
                return Err(FlowError::invalid(
                    "authenticatorSelection.residentKey",
                    "must be required, preferred or discouraged",
                ));
            }
        };
        if let Some(r) = asked {
            resident_key = match req.resident_key {
                Some(pinned) => stricter_rk(pinned, r),
                None => r,
            };
        }
        // Level 1 clients send only requireResidentKey (§5.4.4).
        match sel.get("requireResidentKey") {
            None | Some(Value::Null) => {}
            Some(Value::Bool(true)) => resident_key = ResidentKeyRequirement::Required,
            Some(Value::Bool(false)) => {}
            Some(_) => {
                return Err(FlowError::invalid(
                    "authenticatorSelection.requireResidentKey",
                    "must be a boolean",
                ));
            }
        }
    }
    let asked = match opt_str(obj, "attestation", "")? {
        None => None,
        Some("none") => Some(AttestationConveyance::None),
        Some("indirect") => Some(AttestationConveyance::Indirect),
        Some("direct") => Some(AttestationConveyance::Direct),
        Some("enterprise") => Some(AttestationConveyance::Enterprise),
        Some(_) => {
            return Err(FlowError::invalid(
                "attestation",
                "must be none, indirect, direct or enterprise",
            ));
        }
    };
    let attestation = match (req.attestation, asked) {
        (Some(pinned), Some(a)) => stronger_attestation(pinned, a),
        (Some(pinned), None) => pinned,
        (None, Some(a)) => a,
        (None, None) => AttestationConveyance::None,
    };
    let extensions = extensions(obj)?;

    // The user: existing by name, or new with the given or a random handle.
    let (user_id, existing) = wanted.resolve(s)?;
    let new_user = existing.is_none();
    let exclude = match &existing {
        // Every credential, flagged ones too: a flagged authenticator
        // must not enrol again under a fresh credential id.
        Some(u) => s
            .store
            .credentials_by_user(&u.id)?
            .iter()
            .map(descriptor)
            .collect(),
        None => Vec::new(),
    };
    let UserRequest {
        name, display_name, ..
    } = wanted;

    let challenge = new_challenge().map_err(|e| FlowError::Internal(format!("challenge: {e}")))?;
    let user = UserEntity {
        id: user_id.clone(),
        name: name.clone(),
        display_name: display_name.clone(),
    };
    let mut builder = CreationOptionsBuilder::new(&s.rp, &s.rp_name, &user, &challenge)
        .timeout_ms(s.ceremony_timeout_ms)
        .exclude_credentials(exclude)
        .resident_key(resident_key)
        .user_verification(uv)
        .attestation(attestation);
    if let Some(a) = attachment {
        builder = builder.authenticator_attachment(a);
    }
    if let Some(e) = extensions {
        builder = builder.extensions(e);
    }
    let options = builder.build().map_err(FlowError::in_request)?;

    let state = RegistrationState {
        user_id: user_id.clone(),
        user_name: name,
        display_name,
        new_user,
        action: req.action,
        user_verification: uv,
    };
    open_ceremony(
        s,
        REGISTRATION,
        &challenge,
        Some(user_id),
        &state,
        options.timeout,
        &options,
        now,
    )
}

/// `POST /v1/registrations/verify`.
pub fn registration_verify(
    s: &Services,
    body: &Value,
    actor: &str,
    now: SystemTime,
) -> Result<Value, FlowError> {
    let (id, response, record, st) = begin_verify::<_, RegistrationState>(
        s,
        body,
        REGISTRATION,
        actor,
        now,
        RegistrationResponse::from_value,
    )?;
    let now_ms = unix_ms(now);
    let policy = s.policy.get();
    let subject = b64url(&id);
    let req = verify_requirement(
        s,
        &policy,
        &st.action,
        None,
        (actor, "registration.refused", &subject, now_ms),
    )?;

    let admitted = match admit_registration(
        s,
        &policy,
        &req,
        &response,
        &record.challenge,
        st.user_verification,
        &st.user_id,
        now,
    ) {
        Ok(a) => a,
        Err(e) => {
            refused(s, actor, "registration.refused", &subject, &e, now_ms)?;
            return Err(e);
        }
    };
    let credential_id = admitted.record.id.clone();
    if s.store.credential(&credential_id)?.is_some() {
        let e = FlowError::Conflict {
            field: "credential.id".into(),
            reason: "this credential is already registered".into(),
        };
        refused(s, actor, "registration.refused", &subject, &e, now_ms)?;
        return Err(e);
    }
    if st.new_user {
        let user = User {
            id: st.user_id.clone(),
            name: st.user_name.clone(),
            display_name: st.display_name.clone(),
            created_ms: now_ms,
        };
        match s.store.put_user(&user) {
            Ok(()) => {}
            // Two registrations for one new name raced; the first created
            // the user. Same id: it is ours too. Another id: refuse.
            Err(StoreError::Exists { .. }) => match s.store.user_by_name(&st.user_name)? {
                Some(u) if u.id == st.user_id => {}
                _ => {
                    return Err(FlowError::Conflict {
                        field: "user".into(),
                        reason: "the user was registered concurrently with another id".into(),
                    });
                }
            },
            Err(e) => return Err(e.into()),
        }
    }
    match s.store.insert_credential(&admitted.record) {
        Ok(()) => {}
        Err(StoreError::Exists { .. }) => {
            return Err(FlowError::Conflict {
                field: "credential.id".into(),
                reason: "this credential is already registered".into(),
            });
        }
        Err(e) => return Err(e.into()),
    }
    let mut answer = admitted.answer;
    answer["userName"] = json!(st.user_name);
    answer["action"] = json!(st.action);
    let mut detail = admitted.detail;
    detail["ceremonyId"] = json!(subject);
    detail["action"] = json!(st.action);
    s.record(
        AuditEvent::new(
            now_ms,
            actor,
            "credential.registered",
            b64url(&credential_id),
        )
        .with_detail(detail),
    )?;
    Ok(answer)
}

/// A registration response verified by the engine, checked against the
/// model's FIDO metadata, tiered and admitted by the policy and the
/// action: the credential record to store, the answer and the audit
/// detail. Refusals come back as errors for the caller to audit.
pub(crate) struct Admitted {
    pub record: CredentialRecord,
    pub answer: Value,
    pub detail: Value,
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn admit_registration(
    s: &Services,
    policy: &Policy,
    req: &Requirement,
    response: &RegistrationResponse,
    challenge: &[u8],
    user_verification: UserVerification,
    user_id: &[u8],
    now: SystemTime,
) -> Result<Admitted, FlowError> {
    let now_ms = unix_ms(now);
    // The model's FIDO metadata gives the attestation roots, and its
    // statement and status reports decide after the engine has verified.
    let (known, key_id) = match metadata::lookup(s.store.as_ref(), response)? {
        Some(found) => (Some(found.known), found.key_id),
        None => (None, None),
    };
    let reg = registration::verify(
        response,
        &registration::Expectation {
            rp: &s.rp,
            challenge,
            user_verification,
            require_user_presence: true,
            policy: &s.attestation,
            trust_anchors: known.as_ref().map_or(&[], |k| k.roots.as_slice()),
            now,
        },
    )
    .and_then(|reg| match &known {
        Some(k) => policy::metadata::check_registration(k, &reg).map(|()| reg),
        None => Ok(reg),
    })
    .map_err(FlowError::in_credential)?;

    // The trust tier, what the registration policy does with it, and
    // whether the action can take it.
    let attested = reg.anchored && known.is_some();
    let assessment = policy.assess(&TierInput {
        aaguid: reg.aaguid,
        attested,
        metadata: known.as_ref(),
        backup_eligible: reg.flags.be,
    });
    let admission = policy.admission(&assessment);
    let shortfall = if admission == Admission::Reject {
        Some(format!(
            "policy {} rejects tier {} at registration: {}",
            policy.version,
            assessment.tier,
            assessment.reasons.join("; ")
        ))
    } else {
        req.admit_registration(
            assessment.tier,
            reg.flags.be,
            response.authenticator_attachment.as_deref(),
        )
        .err()
        .map(|why| format!("policy {}: {why}", policy.version))
    };
    if let Some(why) = shortfall {
        return Err(FlowError::in_credential(webauthn::Error::policy(
            "response.attestationObject",
            why,
        )));
    }
    let record = CredentialRecord {
        id: reg.credential_id.clone(),
        user_id: user_id.to_vec(),
        public_key_cose: reg.public_key.cose.clone(),
        sign_count: reg.sign_count,
        backup_eligible: reg.flags.be,
        backup_state: reg.flags.bs,
        aaguid: reg.aaguid,
        fmt: reg.fmt.clone(),
        attestation_type: reg.attestation_type.as_str().to_string(),
        transports: transport_hints(&reg.transports),
        created_ms: now_ms,
        last_used_ms: None,
        flagged: None,
        tier: Some(assessment.tier),
        tier_reasons: assessment
            .reasons
            .iter()
            .take(limits::TIER_REASONS_MAX)
            .map(|r| truncate(r, 512))
            .collect(),
        policy_version: Some(policy.version.clone()),
        marked: admission == Admission::AcceptMarked,
        attested,
        metadata_key_id: key_id,
        device_id: None,
        disabled: None,
    };
    let answer = json!({
        "credentialId": b64url(&reg.credential_id),
        "userId": b64url(user_id),
        "aaguid": uuid_text(&reg.aaguid),
        "fmt": reg.fmt,
        "attestationType": record.attestation_type,
        "attestationTrusted": reg.anchored,
        "authenticator": known.as_ref().and_then(|k| k.description.clone()),
        "tier": assessment.tier,
        "tierReasons": record.tier_reasons,
        "marked": record.marked,
        "decision": admission.as_str(),
        "policyVersion": policy.version,
        "userVerified": reg.flags.uv,
        "backupEligible": reg.flags.be,
        "backupState": reg.flags.bs,
        "signCount": reg.sign_count,
        "transports": record.transports,
    });
    let detail = json!({
        "userId": b64url(user_id),
        "aaguid": uuid_text(&reg.aaguid),
        "fmt": record.fmt,
        "attestationType": record.attestation_type,
        "attestationTrusted": reg.anchored,
        "tier": assessment.tier,
        "marked": record.marked,
        "decision": admission.as_str(),
        "policyVersion": policy.version,
    });
    Ok(Admitted {
        record,
        answer,
        detail,
    })
}

// ---- authentication ----

/// `POST /v1/authentications/options`.
pub fn authentication_options(
    s: &Services,
    body: &Value,
    now: SystemTime,
) -> Result<Value, FlowError> {
    let obj = object(body, "body")?;
    only(
        obj,
        &["user", "action", "amount", "userVerification", "extensions"],
        "",
    )?;
    let policy = s.policy.get();
    let amount = amount(obj)?;
    let req = Services::requirement(&policy, opt_str(obj, "action", "")?, amount.as_ref())?;
    let mut uv = req.user_verification;
    if let Some(u) = user_verification(obj, "userVerification", "")? {
        uv = stricter_uv(uv, u);
    }
    let extensions = extensions(obj)?;
    let (user_id, allow) = match obj.get("user").filter(|v| !v.is_null()) {
        None => (None, Vec::new()),
        Some(u) => {
            let u = object(u, "user")?;
            only(u, &["name"], "user.")?;
            let name = user_text(req_str(u, "name", "user.")?, "user.name", false)?;
            let user = s.store.user_by_name(&name)?.ok_or(FlowError::NotFound {
                what: "user",
                field: "user.name".into(),
            })?;
            let allow = usable_credentials(s, &policy, &req, &user)?;
            (Some(user.id), allow)
        }
    };
    let challenge = new_challenge().map_err(|e| FlowError::Internal(format!("challenge: {e}")))?;
    let mut builder = RequestOptionsBuilder::new(&s.rp, &challenge)
        .timeout_ms(s.ceremony_timeout_ms)
        .allow_credentials(allow)
        .user_verification(uv);
    if let Some(e) = extensions {
        builder = builder.extensions(e);
    }
    let options = builder.build().map_err(FlowError::in_request)?;
    let state = AuthenticationState {
        user_id: user_id.clone(),
        action: req.action,
        amount: amount.map(|a| StateAmount {
            value: a.value.to_string(),
            currency: a.currency,
        }),
        user_verification: uv,
    };
    open_ceremony(
        s,
        AUTHENTICATION,
        &challenge,
        user_id,
        &state,
        options.timeout,
        &options,
        now,
    )
}

/// `POST /v1/authentications/verify`.
pub fn authentication_verify(
    s: &Services,
    body: &Value,
    actor: &str,
    now: SystemTime,
) -> Result<Value, FlowError> {
    let (id, response, record, st) = begin_verify::<_, AuthenticationState>(
        s,
        body,
        AUTHENTICATION,
        actor,
        now,
        AuthenticationResponse::from_value,
    )?;
    let now_ms = unix_ms(now);
    let subject = b64url(&id);
    let policy = s.policy.get();
    let amount = st
        .amount
        .as_ref()
        .map(|a| Amount::parse(&a.value, &a.currency))
        .transpose()
        .map_err(|e| FlowError::Internal(format!("ceremony state amount: {e}")))?;
    let req = verify_requirement(
        s,
        &policy,
        &st.action,
        amount.as_ref(),
        (actor, "authentication.refused", &subject, now_ms),
    )?;

    let result = verify_assertion(
        s,
        &policy,
        &req,
        &response,
        &Expected {
            challenge: &record.challenge,
            user_id: st.user_id.as_deref(),
            user_verification: st.user_verification,
            rp: &s.rp,
            allow_payment: false,
        },
        Counter::Now,
        now_ms,
    );
    let (cred, verified, tier) = match result {
        Ok(v) => v,
        Err(FlowError::StepUp(step)) => {
            s.record(
                AuditEvent::new(
                    now_ms,
                    actor,
                    "authentication.step_up_required",
                    step.credential_id.clone().unwrap_or_default(),
                )
                .with_detail(json!({ "ceremonyId": subject, "stepUp": &*step })),
            )?;
            return Err(FlowError::StepUp(step));
        }
        Err(e) => {
            refused(s, actor, "authentication.refused", &subject, &e, now_ms)?;
            return Err(e);
        }
    };
    let requirement = json!({
        "minTier": req.min_tier,
        "userVerification": req.user_verification.as_str(),
        "deviceBound": req.device_bound,
        "threshold": req.threshold,
    });
    let user = s.store.user_by_id(&cred.user_id)?;
    let answer = json!({
        "userId": b64url(&cred.user_id),
        "userName": user.map(|u| u.name),
        "credentialId": b64url(&cred.id),
        "signCount": verified.sign_count,
        "userVerified": verified.user_verified,
        "backupEligible": cred.backup_eligible,
        "backupState": verified.backup_state,
        "aaguid": uuid_text(&cred.aaguid),
        "action": st.action,
        "tier": tier,
        "decision": "allow",
        "requirement": requirement,
        "policyVersion": policy.version,
    });
    s.record(
        AuditEvent::new(now_ms, actor, "authentication.verified", b64url(&cred.id)).with_detail(
            json!({
                "ceremonyId": subject,
                "userId": b64url(&cred.user_id),
                "signCount": verified.sign_count,
                "userVerified": verified.user_verified,
                "action": st.action,
                "amount": st.amount.as_ref().map(|a| format!("{} {}", a.value, a.currency)),
                "tier": tier,
                "decision": "allow",
                "requirement": requirement,
                "policyVersion": policy.version,
            }),
        ),
    )?;
    Ok(answer)
}

/// What an assertion must answer.
pub(crate) struct Expected<'a> {
    pub challenge: &'a [u8],
    /// The user the options were for (`None`: a discoverable login).
    pub user_id: Option<&'a [u8]>,
    pub user_verification: UserVerification,
    /// The RP with the origins this answer may come from.
    pub rp: &'a webauthn::RelyingParty,
    /// Accept `payment.get` client data (the caller checks `payment`).
    pub allow_payment: bool,
}

/// When the counter of an allowed assertion is stored.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Counter {
    /// Here, before the answer.
    Now,
    /// By the caller, atomically with what the assertion approves.
    Caller,
}

/// Everything between consuming the ceremony and acknowledging: the
/// credential lookup, the policy's decision, the engine, and the counter
/// compare-and-swap. A denied credential is refused before its signature
/// is checked; a step-up is answered only after the assertion verified
/// and the counter moved (the user did authenticate, at a lower level).
pub(crate) fn verify_assertion(
    s: &Services,
    policy: &Policy,
    req: &Requirement,
    response: &AuthenticationResponse,
    expected: &Expected<'_>,
    counter: Counter,
    now_ms: u64,
) -> Result<(CredentialRecord, assertion::Assertion, u8), FlowError> {
    let cred = s
        .store
        .credential(&response.id)?
        .ok_or(FlowError::NotFound {
            what: "credential",
            field: "credential.id".into(),
        })?;
    if let Some(uid) = expected.user_id
        && !webauthn::constant_time_eq(uid, &cred.user_id)
    {
        return Err(FlowError::Ceremony(webauthn::Error::mismatch(
            "credential.id",
            "is not one of the credentials these options allowed",
        )));
    }
    let (decision, tier) = decide(s, policy, req, &cred)?;
    if let Decision::Deny { reason } = &decision {
        return Err(match &cred.flagged {
            Some(flag) if cred.disabled.is_none() => FlowError::Flagged {
                reason: flag.clone(),
            },
            _ => FlowError::Denied {
                reason: reason.clone(),
            },
        });
    }
    let key = CredentialPublicKey::from_cose(&cred.public_key_cose, "stored credential public key")
        .map_err(|e| FlowError::Internal(format!("stored credential unreadable: {e}")))?;
    let verified = assertion::verify(
        response,
        &assertion::StoredCredential {
            id: &cred.id,
            public_key: &key,
            sign_count: cred.sign_count,
            backup_eligible: cred.backup_eligible,
            user_handle: &cred.user_id,
        },
        &assertion::Expectation {
            rp: expected.rp,
            challenge: expected.challenge,
            user_verification: expected.user_verification,
            require_user_presence: true,
            discoverable: expected.user_id.is_none(),
            allow_payment: expected.allow_payment,
        },
    )
    .map_err(FlowError::in_credential)?;
    let step_up = matches!(decision, Decision::StepUp { .. });
    if counter == Counter::Now || step_up {
        s.store.update_after_assertion(
            &cred.id,
            verified.sign_count,
            verified.backup_state,
            now_ms,
        )?;
    }
    if let Decision::StepUp { reason } = decision {
        let mut step = StepUp::new(req, reason, &policy.version);
        step.tier = Some(tier);
        step.user_id = Some(b64url(&cred.user_id));
        step.credential_id = Some(b64url(&cred.id));
        return Err(FlowError::StepUp(Box::new(step)));
    }
    Ok((cred, verified, tier))
}

/// The transports to store: `getTransports()` values are hints that later
/// go back into allowCredentials, so unknown names are kept (new transports
/// appear), but what no transport name can be (empty, over 64 bytes,
/// control characters) and repeats are dropped rather than failing a
/// registration over a hint.
fn transport_hints(given: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for t in given {
        let plausible =
            !t.is_empty() && t.len() <= limits::SHORT_TEXT_MAX && !t.chars().any(char::is_control);
        if plausible && !out.contains(t) && out.len() < limits::TRANSPORTS_MAX {
            out.push(t.clone());
        }
    }
    out
}

/// Audits a refused ceremony: failures are what a security team looks for.
pub(crate) fn refused(
    s: &Services,
    actor: &str,
    event: &str,
    subject: &str,
    error: &FlowError,
    now_ms: u64,
) -> Result<(), FlowError> {
    s.record(
        AuditEvent::new(now_ms, actor, event, subject).with_detail(json!({
            "field": error.field(),
            "reason": truncate(&error.to_string(), 512),
        })),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_hints_keep_unknown_names_and_drop_impossible_ones() {
        let given: Vec<String> = [
            "usb",
            "",
            "usb",
            "future-radio",
            &"x".repeat(65),
            "nfc\n",
            "hybrid",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(transport_hints(&given), ["usb", "future-radio", "hybrid"]);
        let many: Vec<String> = (0..40).map(|i| format!("t{i}")).collect();
        assert_eq!(transport_hints(&many).len(), limits::TRANSPORTS_MAX);
    }
}
