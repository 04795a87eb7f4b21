//! The ceremonies as plain functions over the engine, the store, the keys
//! and the audit log. The API calls these; so could the CLI.
//!
//! Each flow takes its inputs already decoded from JSON (`serde_json::Value`
//! for the parts the engine reads member by member, so every bad member is
//! named), the caller's identity for the audit log, and the time. None of
//! them reads the clock. All of them block (store fsync, HSM): call them off
//! the async reactor.
//!
//! Errors are [`FlowError`], whose variants name the cause and the request
//! field; the API maps each to one problem type and HTTP status.

pub mod approval;
pub mod ceremony;
pub mod credentials;
pub mod enrollment;
pub mod metadata;
pub mod pairing;
pub mod policy;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::audit::{AuditEvent, AuditLog, AuditLogError};
use crate::config::Config;
use crate::keys::{KeyError, KeyRing};
use crate::policy::actions::Requirement;
use crate::store::{Store, StoreError};
use crate::webauthn::attestation::AttestationPolicy;
pub use crate::webauthn::uuid_text;
use crate::webauthn::{self, RelyingParty};

/// Everything the flows work on, built once at start.
pub struct Services {
    pub store: Arc<dyn Store>,
    pub audit: AuditLog,
    pub keys: Arc<KeyRing>,
    pub rp: RelyingParty,
    pub rp_name: String,
    pub ceremony_timeout_ms: u32,
    pub attestation: AttestationPolicy,
    /// The trust policy in force (tiers, registration, actions).
    pub policy: policy::PolicySlot,
    /// Device binding: token lifetime, enrollment window, key attestation.
    pub devices: enrollment::Settings,
    /// Transaction approval: lifetime, refusals, verification log.
    pub transactions: approval::Settings,
    /// Cross-device login: lifetime, attempts, QR link, long-poll wake-ups.
    pub pairings: pairing::Settings,
}

impl Services {
    /// `policy` comes from `[policy] file`, or the built-in policy.
    pub fn new(
        config: &Config,
        store: Arc<dyn Store>,
        keys: Arc<KeyRing>,
        policy: crate::policy::tiers::Policy,
    ) -> Services {
        let mut rp = RelyingParty::new(config.rp.id.clone(), config.rp.origins.clone());
        if !config.rp.algorithms.is_empty() {
            rp.algorithms = config.rp.algorithms.clone();
        }
        let audit = AuditLog::new(
            store.clone(),
            crate::audit::CheckpointPolicy {
                every_records: config.audit.checkpoint_every,
                every_ms: config.audit.checkpoint_interval.as_millis() as u64,
            },
        );
        Services {
            store,
            audit,
            keys,
            rp,
            rp_name: config.rp.name.clone(),
            ceremony_timeout_ms: config.rp.ceremony_timeout_ms,
            attestation: AttestationPolicy::default(),
            policy: policy::PolicySlot::new(policy, config.policy.clone()),
            devices: enrollment::Settings::from_config(&config.devices),
            transactions: approval::Settings::from_config(&config.transactions),
            pairings: pairing::Settings::from_config(&config.pairing),
        }
    }

    /// The requirement of the named action (`None`: `default`) under
    /// `policy`, raised by thresholds for `amount`.
    pub fn requirement(
        policy: &crate::policy::tiers::Policy,
        name: Option<&str>,
        amount: Option<&crate::policy::amount::Amount>,
    ) -> Result<Requirement, FlowError> {
        match policy.action(name) {
            Some((name, action)) => Ok(action.requirement(name, amount)),
            None => Err(FlowError::invalid(
                "action",
                format!(
                    "unknown action {:?} in policy {}; defined: {}",
                    truncate(name.unwrap_or_default(), 64),
                    policy.version,
                    policy
                        .actions
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }

    /// Appends to the audit log, checkpointing with the `audit-checkpoint`
    /// key when due. A failure here fails the request: an action the log
    /// cannot record is not acknowledged.
    pub fn record(&self, event: AuditEvent) -> Result<(), FlowError> {
        self.audit
            .append(&event, Some(&self.keys))
            .map(|_| ())
            .map_err(FlowError::from)
    }
}

/// Signs with `role`'s active key what `build` makes for that key's id
/// (a COSE structure names its signer's kid inside what is signed). If the
/// key changed between the lookup and the signature (a rotation, or a wiped
/// token re-provisioned by an officer, which the key ring notices at the
/// signature), the signature is by another key than the one named: built
/// and signed once more with the key now active, then refused as
/// unavailable, to retry.
pub(crate) fn sign_with_active<T>(
    s: &Services,
    role: crate::keys::Role,
    build: impl Fn(&crate::keys::Kid) -> Result<(Vec<u8>, T), FlowError>,
) -> Result<(T, crate::keys::EcdsaSignature, crate::keys::Kid), FlowError> {
    for _ in 0..2 {
        let key = s.keys.current(role)?;
        let (tbs, built) = build(&key.kid)?;
        let (kid, signature) = s.keys.sign(role, &tbs)?;
        if kid == key.kid {
            return Ok((built, signature, kid));
        }
    }
    Err(FlowError::Unavailable(format!(
        "the {role} key changed during the signature; try again"
    )))
}

/// Why a flow refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    /// A request member is missing, mistyped or out of range.
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    /// The WebAuthn engine refused the response or could not build options.
    #[error("{0}")]
    Ceremony(webauthn::Error),
    /// The ceremony id is unknown (never issued, or swept long after use).
    #[error("ceremonyId: no such ceremony")]
    CeremonyNotFound,
    #[error("ceremonyId: the ceremony has expired; ask for new options")]
    CeremonyExpired,
    #[error("ceremonyId: the ceremony was already used; ask for new options")]
    CeremonyConsumed,
    /// A ceremony of another kind (a registration id sent to authentication).
    #[error("ceremonyId: is a {found} ceremony, not {expected}")]
    CeremonyKind {
        expected: &'static str,
        found: String,
    },
    #[error("{field}: {what} not found")]
    NotFound { what: &'static str, field: String },
    /// The request contradicts stored state (a taken user id, a credential
    /// registered before).
    #[error("{field}: {reason}")]
    Conflict { field: String, reason: String },
    /// The signature counter did not advance: cloned authenticator or replay.
    #[error("credential: signature counter did not advance (stored {stored}, received {received})")]
    Counter { stored: u32, received: u32 },
    /// The credential is flagged (e.g. its authenticator reported compromised).
    #[error("credential.id: the credential is flagged: {reason}")]
    Flagged { reason: String },
    /// The credential verified, but does not meet the action's requirement:
    /// core banking asks for a stronger credential or another factor.
    #[error("step-up required: {}", .0.reason)]
    StepUp(Box<StepUp>),
    /// The policy refuses this credential for this action (a denied model,
    /// a tier registration no longer admits, a marked credential the action
    /// refuses).
    #[error("credential.id: refused by policy: {reason}")]
    Denied { reason: String },
    /// Device binding refused: the problem, and the member at fault.
    #[error("{field}: {reason}")]
    Device {
        problem: DeviceProblem,
        field: String,
        reason: String,
    },
    /// Transaction approval refused: the problem, and the member at fault.
    #[error("{field}: {reason}")]
    Transaction {
        problem: TransactionProblem,
        field: String,
        reason: String,
    },
    /// A cross-device pairing refused a request: the problem, and the
    /// member (or header) at fault.
    #[error("{field}: {reason}")]
    Pairing {
        problem: PairingProblem,
        field: String,
        reason: String,
    },
    /// The verification log could not be written: nothing was approved;
    /// try again.
    #[error("verification log unwritable: {0}")]
    VerificationLog(String),
    /// The key device is away, or holds no active key for a role; try again
    /// later. The text is for the client (the problem's `detail`): the
    /// device's own error, which names module paths and token labels, goes
    /// to the log where the key error is converted.
    #[error("key device unavailable: {0}")]
    Unavailable(String),
    /// The store (a PostgreSQL database) cannot be reached now; nothing was
    /// done. The text is for the client; the cause goes to the log.
    #[error("store unavailable: {0}")]
    StoreUnavailable(String),
    /// Something on our side failed; details are logged, not returned.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Why device binding refused a request (each one problem type).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceProblem {
    /// The device's state does not allow the step (a token for a pending
    /// device, a second identity outcome, anything on a revoked device).
    State,
    TokenExpired,
    /// The token was redeemed already: the device is bound with it.
    TokenConsumed,
    /// A newer token was issued to the device; this one is void.
    TokenSuperseded,
    /// Not a token of this signet for this device.
    TokenInvalid,
    /// The request is not signed by the enrolled device key.
    DeviceSignature,
}

/// Why a transaction refused a request (each one problem type).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransactionProblem {
    /// Approved already: a replayed or second approval.
    Approved,
    /// Cancelled, or failed after too many refused answers.
    Closed,
    Expired,
    /// A receipt was asked of a transaction that is not approved.
    NoReceipt,
    /// A Secure Payment Confirmation answer whose `payment` differs from
    /// the transaction.
    Payment,
}

/// Why a pairing refused a request (each one problem type).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PairingProblem {
    /// The pairing's state does not allow the step; the state names the
    /// problem type (`pairing-claimed`, `pairing-expired`, ...).
    State(crate::store::PairingState),
    /// A wrong one-time code.
    Code,
    /// A wrong desktop or phone secret.
    Secret,
    /// The claiming phone's user is not the one the desktop named.
    User,
}

/// What a step-up answer tells core banking: why, and what would do.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StepUp {
    pub action: String,
    pub reason: String,
    /// The tiers that meet the action's requirement, strongest first.
    pub tiers: Vec<u8>,
    /// The tier of the credential that answered (or the best the user has).
    pub tier: Option<u8>,
    pub device_bound: bool,
    pub user_verification: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<String>,
    pub policy_version: String,
    /// Set when an assertion verified: the user is who they said, at a
    /// lower assurance than the action needs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential_id: Option<String>,
}

impl StepUp {
    pub fn new(requirement: &Requirement, reason: String, policy_version: &str) -> StepUp {
        StepUp {
            action: requirement.action.clone(),
            reason,
            tiers: requirement.tiers(),
            tier: None,
            device_bound: requirement.device_bound,
            user_verification: requirement.user_verification.as_str(),
            threshold: requirement.threshold.clone(),
            policy_version: policy_version.to_string(),
            user_id: None,
            credential_id: None,
        }
    }
}

impl FlowError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> FlowError {
        FlowError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The request member the error is about, if any.
    pub fn field(&self) -> Option<String> {
        match self {
            FlowError::Invalid { field, .. }
            | FlowError::Device { field, .. }
            | FlowError::Transaction { field, .. }
            | FlowError::Pairing { field, .. }
            | FlowError::NotFound { field, .. }
            | FlowError::Conflict { field, .. } => Some(field.clone()),
            FlowError::Ceremony(e) => Some(e.field().to_string()),
            FlowError::CeremonyNotFound
            | FlowError::CeremonyExpired
            | FlowError::CeremonyConsumed
            | FlowError::CeremonyKind { .. } => Some("ceremonyId".into()),
            FlowError::Counter { .. } => {
                Some("credential.response.authenticatorData.signCount".into())
            }
            FlowError::Flagged { .. } | FlowError::Denied { .. } => Some("credential.id".into()),
            FlowError::StepUp(_) => None,
            FlowError::Unavailable(_)
            | FlowError::StoreUnavailable(_)
            | FlowError::VerificationLog(_)
            | FlowError::Internal(_) => None,
        }
    }

    /// An engine error about a request member that is not part of the
    /// WebAuthn response (a ceremony id, a user id, options extensions):
    /// invalid-request naming that member.
    pub fn in_request(e: webauthn::Error) -> FlowError {
        let field = e.field().to_string();
        let text = e.to_string();
        let reason = text
            .strip_prefix(&format!("{field}: "))
            .unwrap_or(&text)
            .to_string();
        FlowError::Invalid { field, reason }
    }

    /// An engine error about the `credential` member of the request body.
    pub fn in_credential(mut e: webauthn::Error) -> FlowError {
        if let webauthn::Error::CounterNotIncreased { stored, received } = e {
            return FlowError::Counter { stored, received };
        }
        if let Some(f) = e.field_mut() {
            *f = format!("credential.{f}");
        }
        FlowError::Ceremony(e)
    }
}

impl From<StoreError> for FlowError {
    fn from(e: StoreError) -> FlowError {
        match e {
            StoreError::CounterRegression { stored, received } => {
                FlowError::Counter { stored, received }
            }
            StoreError::Unavailable { detail } => {
                tracing::warn!(cause = %detail, "store unavailable");
                FlowError::StoreUnavailable(
                    "the store is not reachable or busy; nothing was done; retry".into(),
                )
            }
            other => FlowError::Internal(format!("store: {other}")),
        }
    }
}

impl From<KeyError> for FlowError {
    fn from(e: KeyError) -> FlowError {
        match &e {
            // A token wiped or replaced under the running service answers,
            // but holds no keys until an officer provisions it; the service
            // picks the new keys up by itself, so this is a wait, not a bug.
            KeyError::NoActiveKey(role) => {
                tracing::warn!(cause = %e, "key device has no active key");
                FlowError::Unavailable(format!(
                    "the key device holds no active {role} key; service resumes once an officer provisions it"
                ))
            }
            // The token was re-initialized with another PIN, or locked it.
            // The key layer tries the PIN once and then no more (each try
            // brings the token nearer to locking it), so only an officer and
            // a restart bring the service back.
            KeyError::WrongPin(_) | KeyError::PinLocked(_) => {
                tracing::warn!(cause = %e, "key device refused the PIN");
                FlowError::Unavailable(
                    "the key device refused signet's PIN; an officer must correct the PIN or the token and restart signet".into(),
                )
            }
            _ if e.is_unavailable() => {
                tracing::warn!(cause = %e, "key device unavailable");
                FlowError::Unavailable(
                    "the key device is not reachable; signet reconnects by itself".into(),
                )
            }
            _ => FlowError::Internal(format!("keys: {e}")),
        }
    }
}

impl From<metadata::MetadataError> for FlowError {
    fn from(e: metadata::MetadataError) -> FlowError {
        FlowError::Internal(format!("metadata: {e}"))
    }
}

impl From<AuditLogError> for FlowError {
    fn from(e: AuditLogError) -> FlowError {
        FlowError::Internal(format!("audit: {e}"))
    }
}

/// Unix milliseconds; times before 1970 are 0.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis().min(u128::from(u64::MAX)) as u64)
        .unwrap_or(0)
}

/// A base64url request member of bounded size.
pub fn b64_field(value: &str, field: &str, min: usize, max: usize) -> Result<Vec<u8>, FlowError> {
    let bytes = webauthn::b64url_decode(field, value, max).map_err(FlowError::in_request)?;
    if bytes.len() < min {
        return Err(FlowError::invalid(
            field,
            format!("must decode to at least {min} bytes"),
        ));
    }
    Ok(bytes)
}

/// Writes `bytes` to `path` so that a crash leaves the old file or the new
/// one, never a torn one: a temporary file beside it, fsync, rename, fsync
/// of the directory. A file that existed keeps its permissions.
pub fn write_atomically(
    path: &std::path::Path,
    bytes: &[u8],
) -> Result<(), (std::path::PathBuf, std::io::Error)> {
    use std::io::Write;
    use std::path::Path;
    let at = |p: &Path| {
        let p = p.to_path_buf();
        move |e| (p, e)
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(at(dir))?;
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    {
        let mut f = std::fs::File::create(&tmp).map_err(at(&tmp))?;
        if let Ok(old) = std::fs::metadata(path) {
            f.set_permissions(old.permissions()).map_err(at(&tmp))?;
        }
        f.write_all(bytes).map_err(at(&tmp))?;
        f.sync_all().map_err(at(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(at(path))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(at(dir))
}

/// For messages that echo client input: at most `max` characters.
pub fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_regressions_keep_their_numbers() {
        let e = FlowError::from(StoreError::CounterRegression {
            stored: 5,
            received: 3,
        });
        assert!(matches!(
            e,
            FlowError::Counter {
                stored: 5,
                received: 3
            }
        ));
    }
}
