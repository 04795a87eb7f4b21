//! Persistent state: users, credentials, enrolled devices, transactions,
//! one-time objects (ceremonies and, later, pairings) and the audit log.
//!
//! # Shape
//!
//! [`Store`] is the contract every backend meets; [`sled_store::SledStore`] is
//! the embedded default. The trait is written so that a PostgreSQL backend can
//! implement it with one SQL transaction per method and nothing held in memory
//! between calls:
//!
//! * Every method is one atomic step with respect to every other method of the
//!   same store, including concurrent callers in other threads (and, for a
//!   shared database, other instances). Nothing is read in one call and written
//!   back in another, so there is no read-modify-write for a caller to get wrong.
//! * Rules whose violation is a security failure live here, not in the caller:
//!   a credential id is never re-bound, a counter never goes backwards, a
//!   one-time object is consumed at most once, an audit entry's sequence number
//!   and previous hash are assigned by the store. In SQL they become a primary
//!   key, a conditional `UPDATE ... WHERE sign_count < $n`, an
//!   `UPDATE ... WHERE state = 'live' RETURNING`, and a head row locked
//!   `FOR UPDATE` around [`Store::append_audit`]'s `build` callback.
//! * Time is always an argument (unix milliseconds). The store never reads the
//!   clock, so expiry is testable and every instance judges expiry by the time
//!   its caller decided on.
//!
//! # One-time objects
//!
//! Ceremonies, registration tokens, transactions and pairings share one
//! mechanism, [`Store::put_one_time`] / [`Store::consume_one_time`], keyed by a
//! [`OneTime`] namespace. Consumption atomically replaces the object with a
//! tombstone, so a replay is told [`StoreError::AlreadyConsumed`] (or
//! [`StoreError::Expired`]) rather than [`StoreError::NotFound`]. Tombstones are
//! kept until the object's expiry plus a grace period
//! ([`Store::tombstone_grace_ms`]) and then swept. After that a replay gets
//! `NotFound`, which is still a refusal: ids are random and never reissued.
//! Typed wrappers such as [`Store::put_ceremony`] are provided methods that
//! encode the record and call the generic primitive, so every backend gets them
//! for free and the consumption logic exists once per backend.
//!
//! # Durability
//!
//! A method that acknowledges a write returns only after the write is durable
//! (fsync'd by the backend): [`Store::put_user`], [`Store::insert_credential`],
//! [`Store::delete_credential`] (when it deleted something),
//! [`Store::update_after_assertion`], [`Store::set_credential_flag`],
//! [`Store::insert_device`], [`Store::update_device`],
//! [`Store::bind_device`], [`Store::revoke_device`],
//! [`Store::insert_transaction`], [`Store::update_transaction`],
//! [`Store::approve_transaction`],
//! [`Store::put_one_time`] and [`Store::put_ceremony`], a successful
//! [`Store::consume_one_time`] / [`Store::consume_ceremony`],
//! [`Store::append_audit`] and [`Store::put_checkpoint`]. If the flush fails the
//! method returns the error even though the write may already be visible: a
//! consumption that reports an error must be treated as failed *and* spent,
//! which is the safe reading for a challenge. Not flushed: reads, the removal
//! of an expired object during a failed consumption, and
//! [`Store::sweep_expired`] (all idempotent; losing them in a crash only means
//! repeating them). Concurrent writers share flushes through [`GroupCommit`].
//!
//! # Encoding
//!
//! Records are CBOR (ciborium) inside a versioned envelope `[version, record]`
//! ([`RECORD_VERSION`]). CBOR rather than JSON because most fields are bytes
//! (keys, ids, hashes, signatures, opaque payloads): CBOR stores them as byte
//! strings, JSON would need base64 or number arrays, and ciborium is already
//! the crate's CBOR codec for COSE. The derived serde impls of the record types
//! are the storage encoding; API code should use its own DTOs.

// The file is `sled.rs` but the module is `sled_store`, so that inside `store`
// the name `sled` still means the sled crate.
#[path = "sled.rs"]
pub mod sled_store;

pub mod copy;
pub mod pg_tls;
// `postgres_store`, not `postgres`: inside `store` the name `postgres`
// still means the crate.
#[path = "postgres.rs"]
pub mod postgres_store;

use std::fmt;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use postgres_store::PgStore;
pub use sled_store::SledStore;

/// Format version of every stored record's envelope. Bump it (and keep a
/// decoder for the old one) when a record's encoding changes incompatibly;
/// adding an optional field with `#[serde(default)]` does not need a bump.
pub const RECORD_VERSION: u16 = 1;

/// Size limits, checked before anything is written. They bound what one
/// request can make the store hold and keep every record far below sled's and
/// PostgreSQL's comfortable value sizes.
pub mod limits {
    /// WebAuthn user handle: 1..=64 bytes.
    pub const USER_ID_MAX: usize = 64;
    /// `user.name`, in UTF-8 bytes.
    pub const USER_NAME_MAX: usize = 256;
    /// `user.displayName`, in UTF-8 bytes.
    pub const DISPLAY_NAME_MAX: usize = 256;
    /// WebAuthn L3 caps credential ids at 1023 bytes.
    pub const CREDENTIAL_ID_MAX: usize = 1023;
    /// Room for RSA-4096 and post-quantum COSE keys (ML-DSA-87 is 2.6 KB).
    pub const PUBLIC_KEY_MAX: usize = 8 * 1024;
    /// Attestation statement format and attestation type identifiers.
    pub const SHORT_TEXT_MAX: usize = 64;
    /// Number of transport hints kept per credential.
    pub const TRANSPORTS_MAX: usize = 16;
    /// Reason a credential was flagged (e.g. an MDS status report).
    pub const FLAG_REASON_MAX: usize = 1024;
    /// Reasons recorded with a credential's tier.
    pub const TIER_REASONS_MAX: usize = 16;
    /// One-time object ids (ceremony ids, token ids, transaction ids, ...).
    pub const ONE_TIME_ID_MAX: usize = 256;
    /// Encoded body of a one-time object: a ceremony with every field at its
    /// limit (about 66.8 KB) fits. Also bounds sled's page sizes (see
    /// `sled_store::SEGMENT_SIZE`): raise it only together with that.
    pub const ONE_TIME_BODY_MAX: usize = 68 * 1024;
    /// Ceremony kind ("registration", "authentication", ...).
    pub const CEREMONY_KIND_MAX: usize = 64;
    /// WebAuthn challenge.
    pub const CHALLENGE_MAX: usize = 1024;
    /// Opaque flow state carried by a ceremony.
    pub const CEREMONY_PAYLOAD_MAX: usize = 64 * 1024;
    /// Body of one audit entry.
    pub const AUDIT_BODY_MAX: usize = 64 * 1024;
    /// Entries in one metadata catalog (the 2024 production MDS BLOB has
    /// about 300).
    pub const METADATA_ENTRIES_MAX: usize = 100_000;
    /// One metadata entry as stored (JSON; the MDS layer strips icons, which
    /// are the only large member, before storing).
    pub const METADATA_ENTRY_MAX: usize = 64 * 1024;
    /// An attestation certificate key identifier (a SHA-1 is 20 bytes).
    pub const KEY_ID_MAX: usize = 64;
    /// Key identifiers of one entry.
    pub const KEY_IDS_MAX: usize = 1024;
    /// UAF AAID (`vvvv#mmmm`), BLOB source names and error texts.
    pub const METADATA_TEXT_MAX: usize = 1024;
    /// Key id naming the checkpoint signing key.
    pub const KID_MAX: usize = 128;
    /// Checkpoint signature (room for post-quantum signatures).
    pub const SIGNATURE_MAX: usize = 8 * 1024;
    /// Platform metadata of an enrolled device: entries, and bytes per key
    /// or value.
    pub const PLATFORM_ENTRIES_MAX: usize = 16;
    pub const DEVICE_TEXT_MAX: usize = 256;
    /// A device key's verified hardware attestation, as stored (JSON).
    pub const KEY_ATTESTATION_MAX: usize = 4 * 1024;
    /// Entries kept in a device's timeline (the audit log keeps them all).
    pub const TIMELINE_MAX: usize = 64;
    /// Credentials bound to one device.
    pub const DEVICE_CREDENTIALS_MAX: usize = 16;
    /// A transaction's canonical details (`transaction::CANONICAL_MAX`).
    pub const TRANSACTION_DETAILS_MAX: usize = 8 * 1024;
    /// The text shown to the user for a transaction.
    pub const TRANSACTION_DISPLAY_MAX: usize = 1024;
    /// A transaction's flow state (what its options asked for).
    pub const TRANSACTION_OPTIONS_MAX: usize = 8 * 1024;
    /// An approval receipt: details, key, authenticator data, client data
    /// and signatures at their limits stay below this; with the rest of a
    /// transaction the record stays below `ONE_TIME_BODY_MAX`.
    pub const RECEIPT_MAX: usize = 40 * 1024;
    /// The desktop's IP address as text (an IPv6 address is at most 45).
    pub const PAIRING_IP_MAX: usize = 64;
    /// The desktop's User-Agent header.
    pub const PAIRING_AGENT_MAX: usize = 512;
    /// The desktop's location hint ("Zurich, CH").
    pub const PAIRING_LOCATION_MAX: usize = 128;
    /// A pairing's flow state (what its options asked for).
    pub const PAIRING_OPTIONS_MAX: usize = 1024;
}

/// Why a store operation failed. Each variant names one cause so callers can
/// map it to a precise API error without parsing messages.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The object does not exist (or its tombstone has been swept).
    #[error("{what} not found")]
    NotFound { what: &'static str },
    /// The one-time object's expiry has passed; it can no longer be used.
    #[error("{what} expired")]
    Expired { what: &'static str },
    /// The one-time object was already consumed.
    #[error("{what} already consumed")]
    AlreadyConsumed { what: &'static str },
    /// A record with this identity already exists (or existed, for one-time
    /// objects whose tombstone is still kept).
    #[error("{what} already exists")]
    Exists { what: &'static str },
    /// The request contradicts what is stored (e.g. a checkpoint for an audit
    /// entry that does not exist or has another hash).
    #[error("conflict: {detail}")]
    Conflict { detail: String },
    /// The authenticator's signature counter did not advance: a possible
    /// cloned authenticator or a replayed assertion.
    #[error("signature counter did not advance (stored {stored}, received {received})")]
    CounterRegression { stored: u32, received: u32 },
    /// A field exceeds its limit (see [`limits`]).
    #[error("{field} exceeds {limit} bytes")]
    TooLarge { field: &'static str, limit: usize },
    /// A field is malformed (empty where a value is required, mismatched
    /// sequence number, ...).
    #[error("invalid {field}: {detail}")]
    Invalid { field: &'static str, detail: String },
    /// A stored record could not be decoded or contradicts its key or index.
    #[error("corrupt record in {tree} at key {key}: {detail}")]
    Corrupt {
        tree: &'static str,
        key: String,
        detail: String,
    },
    /// The store was written by a newer version of signet.
    #[error(
        "store schema version {found} is newer than this build supports ({supported}); upgrade signet"
    )]
    UnsupportedVersion { found: u32, supported: u32 },
    /// The filesystem failed (open, create directory, fsync, ...).
    #[error("store I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The store cannot be reached now (a database that is down, failing
    /// over, or has no free connection within the wait): nothing was done,
    /// and the request may be retried.
    #[error("store unavailable: {detail}")]
    Unavailable { detail: String },
    /// The backend failed for a reason that is neither I/O nor corruption.
    #[error("store backend error: {0}")]
    Backend(Box<dyn std::error::Error + Send + Sync>),
}

/// An enrolled user. `id` is the WebAuthn user handle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    #[serde(with = "serde_bytes_compat")]
    pub id: Vec<u8>,
    /// Unique; compared byte for byte, so callers normalize (case, Unicode)
    /// before storing and looking up.
    pub name: String,
    pub display_name: String,
    pub created_ms: u64,
}

/// A registered passkey.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialRecord {
    #[serde(with = "serde_bytes_compat")]
    pub id: Vec<u8>,
    #[serde(with = "serde_bytes_compat")]
    pub user_id: Vec<u8>,
    #[serde(with = "serde_bytes_compat")]
    pub public_key_cose: Vec<u8>,
    pub sign_count: u32,
    pub backup_eligible: bool,
    pub backup_state: bool,
    #[serde(with = "serde_bytes_compat")]
    pub aaguid: [u8; 16],
    pub fmt: String,
    pub attestation_type: String,
    pub transports: Vec<String>,
    pub created_ms: u64,
    pub last_used_ms: Option<u64>,
    /// Why the credential must not be trusted as before (e.g. an MDS
    /// compromise report); `None` when in good standing.
    pub flagged: Option<String>,
    /// Trust tier 1-4 at registration (`None`: registered before tiers).
    #[serde(default)]
    pub tier: Option<u8>,
    /// Why that tier, in words an officer reads.
    #[serde(default)]
    pub tier_reasons: Vec<String>,
    /// The policy version that decided.
    #[serde(default)]
    pub policy_version: Option<String>,
    /// Accepted with a marking (policy `accept-marked`) for downstream scrutiny.
    #[serde(default)]
    pub marked: bool,
    /// The attestation chain verified to a root from the model's FIDO
    /// metadata at registration: what the tier is recomputed from when
    /// the policy or the catalog changes.
    #[serde(default)]
    pub attested: bool,
    /// For AAGUID-less (U2F) models: the attestation certificate key
    /// identifier the catalog knew the model by.
    #[serde(default, with = "serde_opt_bytes")]
    pub metadata_key_id: Option<Vec<u8>>,
    /// The enrolled device it was registered from (device binding).
    #[serde(default, with = "serde_opt_bytes")]
    pub device_id: Option<Vec<u8>>,
    /// Why the credential must never be used again (its device was
    /// revoked); `None` while usable.
    #[serde(default)]
    pub disabled: Option<String>,
}

/// Device ids are random 128-bit values chosen by the enrollment flow.
pub type DeviceId = [u8; 16];

/// Where a device's enrollment stands. `bound`, `rejected`, `expired` and
/// `revoked` are final, except that any state may still be revoked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceState {
    /// Enrolled; the bank's identity verification has not answered yet.
    Pending,
    /// The person is verified; no token was issued yet (or issuing failed).
    Verified,
    /// A registration token is out; the device has not redeemed it.
    TokenIssued,
    /// A passkey was registered from the device with its token.
    Bound,
    Rejected,
    /// Not bound within the enrollment window.
    Expired,
    Revoked,
}

impl DeviceState {
    pub const fn as_str(self) -> &'static str {
        match self {
            DeviceState::Pending => "pending",
            DeviceState::Verified => "verified",
            DeviceState::TokenIssued => "token_issued",
            DeviceState::Bound => "bound",
            DeviceState::Rejected => "rejected",
            DeviceState::Expired => "expired",
            DeviceState::Revoked => "revoked",
        }
    }

    /// Still on its way to `bound`: the enrollment window applies.
    pub const fn is_open(self) -> bool {
        matches!(
            self,
            DeviceState::Pending | DeviceState::Verified | DeviceState::TokenIssued
        )
    }
}

impl fmt::Display for DeviceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The registration token a device currently holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceToken {
    #[serde(with = "serde_bytes_compat")]
    pub id: [u8; 16],
    pub issued_ms: u64,
    pub expires_ms: u64,
    /// When it was redeemed (the device became bound with it).
    pub redeemed_ms: Option<u64>,
}

/// One step of a device's history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceEvent {
    pub at_ms: u64,
    /// "enrolled", "verified", "token_issued", "bound", ...
    pub event: String,
    /// The state after the event.
    pub state: DeviceState,
    pub actor: String,
    pub detail: Option<String>,
}

/// An enrolled device (device binding): its key, its user, where its
/// enrollment stands, and how it got there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    #[serde(with = "serde_bytes_compat")]
    pub id: DeviceId,
    /// Raised by one with every change: [`Store::update_device`] and
    /// [`Store::bind_device`] are compare-and-swap on it, so of two
    /// concurrent transitions from one state only one happens.
    pub revision: u64,
    pub state: DeviceState,
    #[serde(with = "serde_bytes_compat")]
    pub user_id: Vec<u8>,
    pub user_name: String,
    pub display_name: String,
    /// The policy action the passkey is registered under.
    pub action: String,
    /// The device's P-256 public key, SEC1 uncompressed (65 bytes).
    #[serde(with = "serde_bytes_compat")]
    pub public_key: Vec<u8>,
    pub platform: Vec<(String, String)>,
    /// The verified hardware attestation of the device key (JSON), if the
    /// app sent one.
    #[serde(with = "serde_opt_bytes")]
    pub key_attestation: Option<Vec<u8>>,
    /// The bank's reference for its identity verification.
    pub reference: Option<String>,
    pub created_ms: u64,
    pub updated_ms: u64,
    /// Unbound by then, the enrollment expires.
    pub expires_ms: u64,
    pub token: Option<DeviceToken>,
    pub credential_ids: Vec<Vec<u8>>,
    pub timeline: Vec<DeviceEvent>,
}

/// Transaction ids are random 128-bit values chosen by the approval flow.
pub type TransactionId = [u8; 16];

/// Where a transaction stands. Only `pending` moves; the others are final.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransactionState {
    /// Waiting for the user's approval.
    Pending,
    Approved,
    Cancelled,
    /// Not approved before its expiry.
    Expired,
    /// Refused too many times: closed so that no further answer is tried.
    Failed,
}

impl TransactionState {
    pub const fn as_str(self) -> &'static str {
        match self {
            TransactionState::Pending => "pending",
            TransactionState::Approved => "approved",
            TransactionState::Cancelled => "cancelled",
            TransactionState::Expired => "expired",
            TransactionState::Failed => "failed",
        }
    }
}

impl fmt::Display for TransactionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The approval of a transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransactionApproval {
    #[serde(with = "serde_bytes_compat")]
    pub credential_id: Vec<u8>,
    pub approved_ms: u64,
    /// The countersigned receipt (COSE_Sign1).
    #[serde(with = "serde_bytes_compat")]
    pub receipt: Vec<u8>,
}

/// A transaction waiting for, or holding, its approval (dynamic linking):
/// kept after it closes, since its receipt is evidence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransactionRecord {
    #[serde(with = "serde_bytes_compat")]
    pub id: TransactionId,
    /// Raised by one with every change: [`Store::update_transaction`] and
    /// [`Store::approve_transaction`] are compare-and-swap on it, so a
    /// transaction is approved, cancelled or expired once.
    pub revision: u64,
    pub state: TransactionState,
    #[serde(with = "serde_bytes_compat")]
    pub user_id: Vec<u8>,
    /// The policy action it is approved under.
    pub action: String,
    /// The details' canonical bytes (RFC 8785): what the challenge binds.
    #[serde(with = "serde_bytes_compat")]
    pub details: Vec<u8>,
    #[serde(with = "serde_bytes_compat")]
    pub nonce: [u8; 32],
    /// The text the user is shown.
    pub display: String,
    pub created_ms: u64,
    pub updated_ms: u64,
    /// Unapproved by then, the transaction expires.
    pub expires_ms: u64,
    /// Flow state, opaque to the store (what the options asked for).
    #[serde(with = "serde_bytes_compat")]
    pub options: Vec<u8>,
    /// Answers refused so far.
    pub attempts: u32,
    pub approval: Option<TransactionApproval>,
    /// Why it closed without approval (cancelled, expired, failed).
    pub closed_reason: Option<String>,
}

/// Pairing ids are random 128-bit values chosen by the pairing flow.
pub type PairingId = [u8; 16];

/// Where a cross-device (QR) pairing stands.
///
/// ```text
/// created ──claim──► claimed ──approve──► approved ──consume──► consumed
///    │                  ├──deny─────────► denied
///    │                  └──refusals─────► locked
///    ├──bad codes──────────────────────► locked
///    └─ created, claimed, approved ──ttl──► expired
/// ```
///
/// [`PairingState::may_become`] is the whole table; the store refuses any
/// other change, whatever the caller checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PairingState {
    /// Shown as a QR code on the desktop; waiting for a phone.
    Created,
    /// A phone presented the code; waiting for its assertion or refusal.
    Claimed,
    /// The phone's assertion verified; waiting for the desktop to take it.
    Approved,
    /// The user refused on the phone.
    Denied,
    /// The desktop took the approval: the login happened.
    Consumed,
    Expired,
    /// Too many wrong codes or refused answers.
    Locked,
}

impl PairingState {
    pub const ALL: [PairingState; 7] = [
        PairingState::Created,
        PairingState::Claimed,
        PairingState::Approved,
        PairingState::Denied,
        PairingState::Consumed,
        PairingState::Expired,
        PairingState::Locked,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            PairingState::Created => "created",
            PairingState::Claimed => "claimed",
            PairingState::Approved => "approved",
            PairingState::Denied => "denied",
            PairingState::Consumed => "consumed",
            PairingState::Expired => "expired",
            PairingState::Locked => "locked",
        }
    }

    /// Final states never change again.
    pub const fn is_final(self) -> bool {
        matches!(
            self,
            PairingState::Denied
                | PairingState::Consumed
                | PairingState::Expired
                | PairingState::Locked
        )
    }

    /// The transition table. A state may also "become" itself while it is
    /// not final: a counted wrong code or refused answer changes the record,
    /// not the state.
    pub const fn may_become(self, next: PairingState) -> bool {
        use PairingState as P;
        matches!(
            (self, next),
            (P::Created, P::Created | P::Claimed | P::Locked | P::Expired)
                | (
                    P::Claimed,
                    P::Claimed | P::Approved | P::Denied | P::Locked | P::Expired
                )
                | (P::Approved, P::Consumed | P::Expired)
        )
    }
}

impl fmt::Display for PairingState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The desktop that asked for the pairing, as core banking saw it: shown to
/// the user on the phone ("Log in on Firefox in Zurich?").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairingContext {
    pub ip: String,
    pub user_agent: String,
    pub location: Option<String>,
}

/// The verified assertion a pairing carries once approved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairingApproval {
    #[serde(with = "serde_bytes_compat")]
    pub user_id: Vec<u8>,
    #[serde(with = "serde_bytes_compat")]
    pub credential_id: Vec<u8>,
    pub approved_ms: u64,
    pub tier: u8,
    pub user_verified: bool,
    pub sign_count: u32,
    pub policy_version: String,
}

/// A cross-device login in progress or done. The code and the two secrets
/// are kept as SHA-256 hashes only: a copy of the store cannot claim a
/// pairing or take its result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairingRecord {
    #[serde(with = "serde_bytes_compat")]
    pub id: PairingId,
    /// Raised by one with every change; updates are compare-and-swap on it.
    pub revision: u64,
    pub state: PairingState,
    #[serde(with = "serde_bytes_compat")]
    pub code_sha256: [u8; 32],
    #[serde(with = "serde_bytes_compat")]
    pub desktop_secret_sha256: [u8; 32],
    /// Set by the claim: only the claiming phone approves or denies.
    #[serde(with = "serde_opt_bytes")]
    pub phone_secret_sha256: Option<Vec<u8>>,
    /// Drawn at creation; with the id, it derives the challenge.
    #[serde(with = "serde_bytes_compat")]
    pub nonce: [u8; 32],
    /// The policy action the login is decided under.
    pub action: String,
    /// The user the login is for, once known (named by the desktop or by
    /// the claiming phone).
    #[serde(with = "serde_opt_bytes")]
    pub user_id: Option<Vec<u8>>,
    pub context: PairingContext,
    pub created_ms: u64,
    pub updated_ms: u64,
    /// Not consumed by then, the pairing expires.
    pub expires_ms: u64,
    /// Wrong codes presented so far.
    pub code_attempts: u32,
    /// Assertions refused so far.
    pub refusals: u32,
    /// Flow state, opaque to the store (what the options asked for).
    #[serde(with = "serde_bytes_compat")]
    pub options: Vec<u8>,
    pub approval: Option<PairingApproval>,
    /// Why it closed without a login (denied, locked, expired).
    pub closed_reason: Option<String>,
}

/// Ceremony ids are random 128-bit values chosen by the flow.
pub type CeremonyId = [u8; 16];

/// Challenge state between issuing options and verifying the response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CeremonyRecord {
    #[serde(with = "serde_bytes_compat")]
    pub id: CeremonyId,
    /// "registration", "authentication", ...; checked by the flow after
    /// consuming, so a ceremony of the wrong kind is spent, not reusable.
    pub kind: String,
    #[serde(with = "serde_bytes_compat")]
    pub challenge: Vec<u8>,
    #[serde(with = "serde_opt_bytes")]
    pub user_id: Option<Vec<u8>>,
    /// Unusable from this instant on (`now_ms >= expires_ms` is expired).
    pub expires_ms: u64,
    /// Flow state, opaque to the store.
    #[serde(with = "serde_bytes_compat")]
    pub payload: Vec<u8>,
}

/// One entry of the hash-chained audit log. The audit module computes `hash`;
/// the store assigns `seq` and `prev_hash` and keeps entries in `seq` order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: u64,
    #[serde(with = "serde_bytes_compat")]
    pub prev_hash: [u8; 32],
    #[serde(with = "serde_bytes_compat")]
    pub hash: [u8; 32],
    #[serde(with = "serde_bytes_compat")]
    pub body: Vec<u8>,
}

/// `prev_hash` given to the first audit entry.
pub const AUDIT_GENESIS_PREV_HASH: [u8; 32] = [0; 32];

/// A signed statement that the audit chain up to `seq` ends in `hash`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub seq: u64,
    #[serde(with = "serde_bytes_compat")]
    pub hash: [u8; 32],
    pub kid: String,
    #[serde(with = "serde_bytes_compat")]
    pub signature: Vec<u8>,
    pub time_ms: u64,
}

/// One entry of the FIDO metadata catalog as stored: the identifiers it is
/// found by and the entry itself (JSON, opaque to the store).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataEntry {
    /// 16 bytes when present.
    #[serde(with = "serde_opt_bytes")]
    pub aaguid: Option<Vec<u8>>,
    pub aaid: Option<String>,
    /// Attestation certificate key identifiers, lowercase hex as MDS
    /// writes them.
    pub key_ids: Vec<String>,
    #[serde(with = "serde_bytes_compat")]
    pub entry: Vec<u8>,
}

/// The installed catalog: which BLOB it came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogInfo {
    /// The BLOB's serial number; a replacement must be greater.
    pub no: u64,
    pub next_update_ms: u64,
    pub entries: u64,
    pub installed_ms: u64,
    /// Where it came from (a file name or URL), for `signet mds status`.
    pub source: String,
    #[serde(with = "serde_bytes_compat")]
    pub blob_sha256: [u8; 32],
}

/// The catalog and the last refresh attempt.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataStatus {
    pub catalog: Option<CatalogInfo>,
    /// Internal: which generation of stored entries `catalog` names.
    pub generation: u64,
    pub last_attempt_ms: Option<u64>,
    /// `None` when the last attempt succeeded (or there was none).
    pub last_error: Option<String>,
}

/// Namespaces of one-time objects. The tag is part of the on-disk key: never
/// renumber or reuse one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OneTime {
    Ceremony,
    RegistrationToken,
    Transaction,
    Pairing,
}

impl OneTime {
    pub const ALL: [OneTime; 4] = [
        OneTime::Ceremony,
        OneTime::RegistrationToken,
        OneTime::Transaction,
        OneTime::Pairing,
    ];

    /// Stable one-byte tag used in keys.
    pub const fn tag(self) -> u8 {
        match self {
            OneTime::Ceremony => 1,
            OneTime::RegistrationToken => 2,
            OneTime::Transaction => 3,
            OneTime::Pairing => 4,
        }
    }

    pub fn from_tag(tag: u8) -> Option<OneTime> {
        OneTime::ALL.into_iter().find(|k| k.tag() == tag)
    }

    /// Used in error messages: "ceremony already consumed".
    pub const fn name(self) -> &'static str {
        match self {
            OneTime::Ceremony => "ceremony",
            OneTime::RegistrationToken => "registration token",
            OneTime::Transaction => "transaction",
            OneTime::Pairing => "pairing",
        }
    }
}

impl fmt::Display for OneTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Builds the next audit entry from the sequence number and previous hash the
/// store assigned. See [`Store::append_audit`].
pub type AuditBuilder<'a> = dyn FnMut(u64, [u8; 32]) -> Result<AuditEntry, StoreError> + 'a;

/// The persistence contract. All methods are atomic and safe to call from
/// many threads at once; see the module documentation for which ones flush.
pub trait Store: Send + Sync {
    // ---- users ----

    /// Inserts a new user. `Exists` if the id or the name is taken: users
    /// are never overwritten, so a handle cannot silently change owner.
    fn put_user(&self, user: &User) -> Result<(), StoreError>;
    fn user_by_id(&self, id: &[u8]) -> Result<Option<User>, StoreError>;
    fn user_by_name(&self, name: &str) -> Result<Option<User>, StoreError>;

    // ---- credentials ----

    /// Inserts a credential of an existing user (`NotFound` otherwise).
    /// `Exists` if the id is taken by anyone, including the same user: a
    /// credential id must never be re-bound.
    fn insert_credential(&self, credential: &CredentialRecord) -> Result<(), StoreError>;
    fn credential(&self, id: &[u8]) -> Result<Option<CredentialRecord>, StoreError>;
    /// The user's credentials, ordered by credential id.
    fn credentials_by_user(&self, user_id: &[u8]) -> Result<Vec<CredentialRecord>, StoreError>;
    /// Removes the credential and its index entries together; `false` if it
    /// did not exist.
    fn delete_credential(&self, id: &[u8]) -> Result<bool, StoreError>;
    /// Records a verified assertion, compare-and-swap on the counter: refused
    /// with `CounterRegression` when the stored or the new count is non-zero
    /// and the new count is not greater than the stored one. Two zeros are
    /// accepted (authenticators without counters). Sets `backup_state` and
    /// `last_used_ms = used_ms`.
    fn update_after_assertion(
        &self,
        id: &[u8],
        new_sign_count: u32,
        backup_state: bool,
        used_ms: u64,
    ) -> Result<(), StoreError>;
    /// Sets or clears the credential's flag (`NotFound` if absent).
    fn set_credential_flag(&self, id: &[u8], reason: Option<&str>) -> Result<(), StoreError>;
    /// Ids of every credential of an authenticator model. A scan in the
    /// embedded backend: it runs when the metadata catalog changes (daily at
    /// most), never on a request path.
    fn credential_ids_with_aaguid(&self, aaguid: &[u8; 16]) -> Result<Vec<Vec<u8>>, StoreError>;
    /// Up to `limit` credentials with ids greater than `after` (from the
    /// first when `None`), ordered by id: a page of a scan over every
    /// credential, for officer tools (policy simulation), never a request
    /// path.
    fn credentials_after(
        &self,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<CredentialRecord>, StoreError>;

    // ---- enrolled devices ----

    /// Stores a newly enrolled device (`revision` 1). `Exists` if the id
    /// is taken.
    fn insert_device(&self, device: &DeviceRecord) -> Result<(), StoreError>;
    fn device(&self, id: &DeviceId) -> Result<Option<DeviceRecord>, StoreError>;
    /// Replaces the device record if the stored one has `revision - 1`
    /// (`Conflict` otherwise: another transition came first; `NotFound`
    /// if absent).
    fn update_device(&self, device: &DeviceRecord) -> Result<(), StoreError>;
    /// Binding, as one atomic step: the device record replaced as by
    /// [`Store::update_device`], the user created unless it exists (with
    /// the same id and name; `Conflict` if the name or id belongs to
    /// another), and the credential inserted as by
    /// [`Store::insert_credential`]. All or nothing.
    fn bind_device(
        &self,
        device: &DeviceRecord,
        user: &User,
        credential: &CredentialRecord,
    ) -> Result<(), StoreError>;
    /// Revocation, as one atomic step: the device record replaced as by
    /// [`Store::update_device`], and every credential it names disabled
    /// with `reason`.
    fn revoke_device(&self, device: &DeviceRecord, reason: &str) -> Result<(), StoreError>;

    // ---- transactions ----

    /// Stores a new transaction (`revision` 1). `Exists` if the id is taken.
    fn insert_transaction(&self, transaction: &TransactionRecord) -> Result<(), StoreError>;
    fn transaction(&self, id: &TransactionId) -> Result<Option<TransactionRecord>, StoreError>;
    /// Replaces the transaction if the stored one is pending and has
    /// `revision - 1` (`Conflict` otherwise: a closed transaction never
    /// changes; `NotFound` if absent).
    fn update_transaction(&self, transaction: &TransactionRecord) -> Result<(), StoreError>;
    /// Approval, as one atomic step: the transaction replaced as by
    /// [`Store::update_transaction`] (it must carry its approval), and the
    /// approving credential's counter moved as by
    /// [`Store::update_after_assertion`]. All or nothing: a counter that
    /// regressed leaves the transaction pending, a transaction approved
    /// concurrently leaves the counter alone.
    fn approve_transaction(
        &self,
        transaction: &TransactionRecord,
        new_sign_count: u32,
        backup_state: bool,
    ) -> Result<(), StoreError>;

    // ---- cross-device pairings ----

    /// Stores a new pairing (`revision` 1, `created`). `Exists` if the id
    /// is taken.
    fn insert_pairing(&self, pairing: &PairingRecord) -> Result<(), StoreError>;
    fn pairing(&self, id: &PairingId) -> Result<Option<PairingRecord>, StoreError>;
    /// Replaces the pairing if the stored one has `revision - 1` and its
    /// state may become the new one ([`PairingState::may_become`]);
    /// `Conflict` otherwise, `NotFound` if absent.
    fn update_pairing(&self, pairing: &PairingRecord) -> Result<(), StoreError>;
    /// Approval, as one atomic step: the pairing replaced as by
    /// [`Store::update_pairing`] (it must carry its approval), and the
    /// credential's counter moved as by [`Store::update_after_assertion`].
    /// All or nothing.
    fn approve_pairing(
        &self,
        pairing: &PairingRecord,
        new_sign_count: u32,
        backup_state: bool,
    ) -> Result<(), StoreError>;

    // ---- one-time objects ----

    /// Stores a one-time object usable until `expires_ms`. `Exists` if the id
    /// is live or still tombstoned in that namespace.
    fn put_one_time(
        &self,
        kind: OneTime,
        id: &[u8],
        expires_ms: u64,
        body: &[u8],
    ) -> Result<(), StoreError>;
    /// Atomically takes the object and leaves a tombstone. Of any number of
    /// concurrent callers exactly one gets the body. Afterwards:
    /// `AlreadyConsumed`; past expiry: `Expired` (and the object is removed);
    /// never stored or tombstone swept: `NotFound`.
    fn consume_one_time(
        &self,
        kind: OneTime,
        id: &[u8],
        now_ms: u64,
    ) -> Result<Vec<u8>, StoreError>;
    /// Reads a live object without consuming it; same errors as consumption.
    /// Never use it to decide that a later consumption will succeed.
    fn peek_one_time(&self, kind: OneTime, id: &[u8], now_ms: u64) -> Result<Vec<u8>, StoreError>;
    /// Turns objects expired at `now_ms` into `Expired` tombstones and
    /// removes tombstones past their grace period. Does at most `max` units of
    /// work so a background sweeper never holds the store up; returns how many
    /// it did (0 means nothing is due).
    fn sweep_expired(&self, now_ms: u64, max: usize) -> Result<usize, StoreError>;
    /// How long after an object's expiry its tombstone is kept.
    fn tombstone_grace_ms(&self) -> u64;

    /// Stores a ceremony (a [`OneTime::Ceremony`] object).
    fn put_ceremony(&self, ceremony: &CeremonyRecord) -> Result<(), StoreError> {
        ceremony.validate()?;
        let body = encode_record(ceremony)?;
        self.put_one_time(OneTime::Ceremony, &ceremony.id, ceremony.expires_ms, &body)
    }

    /// Consumes a ceremony; see [`Store::consume_one_time`].
    fn consume_ceremony(&self, id: &CeremonyId, now_ms: u64) -> Result<CeremonyRecord, StoreError> {
        let body = self.consume_one_time(OneTime::Ceremony, id, now_ms)?;
        let key = format!("{}:{}", OneTime::Ceremony.name(), hex(id));
        let record: CeremonyRecord = decode_record_named("one_time", key.clone(), &body)?;
        if &record.id != id {
            return Err(StoreError::Corrupt {
                tree: "one_time",
                key,
                detail: "ceremony record carries another id".into(),
            });
        }
        Ok(record)
    }

    // ---- audit ----

    /// Appends one entry. Inside one atomic step the store picks
    /// `seq = last + 1` (1 for the first entry) and the previous entry's hash
    /// ([`AUDIT_GENESIS_PREV_HASH`] for the first), calls `build(seq,
    /// prev_hash)`, checks that the entry carries exactly those, and stores it.
    /// `build` must only compute (it may be called again if a backend retries
    /// the step) and must not call back into the store.
    fn append_audit(&self, build: &mut AuditBuilder<'_>) -> Result<AuditEntry, StoreError>;
    /// Up to `limit` entries with `seq >= from_seq`, in order.
    fn audit_range(&self, from_seq: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError>;
    fn audit_last(&self) -> Result<Option<AuditEntry>, StoreError>;
    /// Stores a checkpoint for an existing entry whose hash it must repeat
    /// (`Conflict` otherwise); one per `seq` (`Exists`).
    fn put_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), StoreError>;
    /// Up to `limit` checkpoints with `seq >= from_seq`, in order.
    fn checkpoints(&self, from_seq: u64, limit: usize) -> Result<Vec<Checkpoint>, StoreError>;
    fn last_checkpoint(&self) -> Result<Option<Checkpoint>, StoreError>;

    // ---- FIDO metadata catalog ----

    /// Replaces the whole catalog with `entries` from the BLOB `catalog`
    /// describes, atomically for every reader: a lookup sees the old catalog
    /// or the new one, never a mix. `Conflict` unless `catalog.no` is greater
    /// than the installed BLOB's: an attacker who can replay an old, validly
    /// signed BLOB must not roll the statuses back. Records the attempt as
    /// successful.
    fn replace_metadata(
        &self,
        catalog: &CatalogInfo,
        entries: &[MetadataEntry],
    ) -> Result<(), StoreError>;
    /// The installed catalog and the last refresh attempt (default when
    /// nothing was ever installed).
    fn metadata_status(&self) -> Result<MetadataStatus, StoreError>;
    /// Records a refresh attempt that installed nothing: failed with
    /// `error`, or (`None`) found the installed BLOB still current. The
    /// installed catalog stays either way.
    fn record_metadata_attempt(&self, when_ms: u64, error: Option<&str>) -> Result<(), StoreError>;
    fn metadata_by_aaguid(&self, aaguid: &[u8; 16]) -> Result<Option<MetadataEntry>, StoreError>;
    /// By attestation certificate key identifier (hex-decoded).
    fn metadata_by_key_id(&self, key_id: &[u8]) -> Result<Option<MetadataEntry>, StoreError>;

    // ---- durability ----

    /// Makes every write acknowledged so far durable. Writers need not call
    /// it (they flush before returning); it is for shutdown and tests.
    fn flush(&self) -> Result<(), StoreError>;
}

// ---- rules every backend applies the same way ----

/// Records replaced by compare-and-swap on their revision: devices,
/// transactions and pairings. `TREE` names where the backend keeps them (a
/// sled tree, a PostgreSQL table), for `Corrupt` errors.
pub(crate) trait Revised: serde::de::DeserializeOwned {
    const TREE: &'static str;
    const WHAT: &'static str;
    fn key(&self) -> &[u8];
    fn revision(&self) -> u64;
    /// Why the stored record may not become `next`, if it may not.
    fn refuses(&self, _next: &Self) -> Option<String> {
        None
    }
}

impl Revised for DeviceRecord {
    const TREE: &'static str = "devices";
    const WHAT: &'static str = "device";
    fn key(&self) -> &[u8] {
        &self.id
    }
    fn revision(&self) -> u64 {
        self.revision
    }
}

impl Revised for TransactionRecord {
    const TREE: &'static str = "transactions";
    const WHAT: &'static str = "transaction";
    fn key(&self) -> &[u8] {
        &self.id
    }
    fn revision(&self) -> u64 {
        self.revision
    }
    /// Only a pending transaction moves: an approved one is never
    /// approved again or reopened, whatever the caller checked.
    fn refuses(&self, _next: &Self) -> Option<String> {
        (self.state != TransactionState::Pending)
            .then(|| "the transaction is closed and no longer changes".into())
    }
}

impl Revised for PairingRecord {
    const TREE: &'static str = "pairings";
    const WHAT: &'static str = "pairing";
    fn key(&self) -> &[u8] {
        &self.id
    }
    fn revision(&self) -> u64 {
        self.revision
    }
    /// The state machine, enforced where the state is kept, and what each
    /// step may change: what the desktop was given never changes, the
    /// claim alone names the phone and the user, the approval alone sets
    /// the approval.
    fn refuses(&self, next: &Self) -> Option<String> {
        use PairingState as P;
        if !self.state.may_become(next.state) {
            return Some(format!(
                "a {} pairing cannot become {}",
                self.state, next.state
            ));
        }
        let fixed = self.code_sha256 == next.code_sha256
            && self.desktop_secret_sha256 == next.desktop_secret_sha256
            && self.nonce == next.nonce
            && self.action == next.action
            && self.context == next.context
            && self.created_ms == next.created_ms;
        if !fixed {
            return Some("a pairing's code, secret, nonce, action and context never change".into());
        }
        let claiming = self.state == P::Created && next.state == P::Claimed;
        if !claiming
            && (self.phone_secret_sha256 != next.phone_secret_sha256
                || self.user_id != next.user_id)
        {
            return Some("only the claim names the phone and the user".into());
        }
        let approving = self.state == P::Claimed && next.state == P::Approved;
        if !approving && self.approval != next.approval {
            return Some("only the approval sets the approval".into());
        }
        None
    }
}

/// Whether `next` may replace `stored` (kept under `key`): the stored
/// record is the one named, its rules allow the change, and `next` has the
/// revision after it. The one compare-and-swap rule of every backend.
pub(crate) fn check_swap<R: Revised>(key: &[u8], stored: &R, next: &R) -> Result<(), StoreError> {
    if stored.key() != key {
        return Err(StoreError::Corrupt {
            tree: R::TREE,
            key: hex(key),
            detail: "record carries another id than its key".into(),
        });
    }
    if let Some(detail) = stored.refuses(next) {
        return Err(StoreError::Conflict { detail });
    }
    if stored.revision().checked_add(1) != Some(next.revision()) {
        return Err(StoreError::Conflict {
            detail: format!(
                "{} changed concurrently (revision {} stored, {} written)",
                R::WHAT,
                stored.revision(),
                next.revision()
            ),
        });
    }
    Ok(())
}

/// A verified assertion's effect on its credential: the counter only
/// grows (two zeros pass: authenticators without counters).
pub(crate) fn advance_counter(
    record: &mut CredentialRecord,
    new_sign_count: u32,
    backup_state: bool,
    used_ms: u64,
) -> Result<(), StoreError> {
    let stored = record.sign_count;
    if (stored != 0 || new_sign_count != 0) && new_sign_count <= stored {
        return Err(StoreError::CounterRegression {
            stored,
            received: new_sign_count,
        });
    }
    record.sign_count = new_sign_count;
    record.backup_state = backup_state;
    // Zero-counter authenticators race freely; keep the latest use.
    record.last_used_ms = Some(record.last_used_ms.map_or(used_ms, |t| t.max(used_ms)));
    Ok(())
}

/// What every backend checks before a binding: each record valid, and the
/// credential the user's.
pub(crate) fn check_binding(
    device: &DeviceRecord,
    user: &User,
    credential: &CredentialRecord,
) -> Result<(), StoreError> {
    device.validate()?;
    user.validate()?;
    credential.validate()?;
    if credential.user_id != user.id {
        return Err(StoreError::Invalid {
            field: "credential user id",
            detail: "is not the user's".into(),
        });
    }
    Ok(())
}

/// A new device is valid and at revision 1.
pub(crate) fn check_new_device(device: &DeviceRecord) -> Result<(), StoreError> {
    device.validate()?;
    if device.revision != 1 {
        return Err(StoreError::Invalid {
            field: "device revision",
            detail: "a new device starts at revision 1".into(),
        });
    }
    Ok(())
}

/// A new transaction is valid, pending, at revision 1.
pub(crate) fn check_new_transaction(transaction: &TransactionRecord) -> Result<(), StoreError> {
    transaction.validate()?;
    if transaction.revision != 1 || transaction.state != TransactionState::Pending {
        return Err(StoreError::Invalid {
            field: "transaction revision",
            detail: "a new transaction is pending at revision 1".into(),
        });
    }
    Ok(())
}

/// A new pairing is valid, created, at revision 1.
pub(crate) fn check_new_pairing(pairing: &PairingRecord) -> Result<(), StoreError> {
    pairing.validate()?;
    if pairing.revision != 1 || pairing.state != PairingState::Created {
        return Err(StoreError::Invalid {
            field: "pairing revision",
            detail: "a new pairing is created at revision 1".into(),
        });
    }
    Ok(())
}

/// The approval an approving transaction record must carry.
pub(crate) fn transaction_approval(
    transaction: &TransactionRecord,
) -> Result<&TransactionApproval, StoreError> {
    transaction.validate()?;
    transaction.approval.as_ref().ok_or(StoreError::Invalid {
        field: "transaction approval",
        detail: "an approval must carry it".into(),
    })
}

/// The approval an approving pairing record must carry, in state approved.
pub(crate) fn pairing_approval(pairing: &PairingRecord) -> Result<&PairingApproval, StoreError> {
    pairing.validate()?;
    pairing
        .approval
        .as_ref()
        .filter(|_| pairing.state == PairingState::Approved)
        .ok_or(StoreError::Invalid {
            field: "pairing approval",
            detail: "an approval must carry it, in state approved".into(),
        })
}

// ---- validation (shared by every backend, so the limits are one rule) ----

fn check_len(field: &'static str, len: usize, min: usize, max: usize) -> Result<(), StoreError> {
    if len > max {
        return Err(StoreError::TooLarge { field, limit: max });
    }
    if len < min {
        return Err(StoreError::Invalid {
            field,
            detail: format!("must be at least {min} bytes"),
        });
    }
    Ok(())
}

pub(crate) fn check_user_id(id: &[u8]) -> Result<(), StoreError> {
    check_len("user id", id.len(), 1, limits::USER_ID_MAX)
}

pub(crate) fn check_credential_id(id: &[u8]) -> Result<(), StoreError> {
    check_len("credential id", id.len(), 1, limits::CREDENTIAL_ID_MAX)
}

pub(crate) fn check_flag_reason(reason: Option<&str>) -> Result<(), StoreError> {
    let len = reason.map_or(0, str::len);
    check_len("flag reason", len, 0, limits::FLAG_REASON_MAX)
}

pub(crate) fn check_one_time(id: &[u8], body: &[u8]) -> Result<(), StoreError> {
    check_len("one-time id", id.len(), 1, limits::ONE_TIME_ID_MAX)?;
    check_len("one-time body", body.len(), 0, limits::ONE_TIME_BODY_MAX)
}

impl MetadataEntry {
    pub fn validate(&self) -> Result<(), StoreError> {
        if let Some(a) = &self.aaguid
            && a.len() != 16
        {
            return Err(StoreError::Invalid {
                field: "metadata aaguid",
                detail: format!("{} bytes, not 16", a.len()),
            });
        }
        if self.aaguid.is_none() && self.aaid.is_none() && self.key_ids.is_empty() {
            return Err(StoreError::Invalid {
                field: "metadata entry",
                detail: "has no aaguid, aaid or key identifier".into(),
            });
        }
        if let Some(aaid) = &self.aaid {
            check_len("metadata aaid", aaid.len(), 1, limits::METADATA_TEXT_MAX)?;
        }
        if self.key_ids.len() > limits::KEY_IDS_MAX {
            return Err(StoreError::TooLarge {
                field: "metadata key ids",
                limit: limits::KEY_IDS_MAX,
            });
        }
        for k in &self.key_ids {
            check_len("metadata key id", k.len(), 2, 2 * limits::KEY_ID_MAX)?;
            if !k
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                || k.len() % 2 != 0
            {
                return Err(StoreError::Invalid {
                    field: "metadata key id",
                    detail: "must be lowercase hex".into(),
                });
            }
        }
        check_len(
            "metadata entry",
            self.entry.len(),
            1,
            limits::METADATA_ENTRY_MAX,
        )
    }
}

impl CatalogInfo {
    pub fn validate(&self) -> Result<(), StoreError> {
        check_len(
            "metadata source",
            self.source.len(),
            0,
            limits::METADATA_TEXT_MAX,
        )
    }
}

/// Checks a whole catalog before a backend writes any of it.
pub(crate) fn check_catalog(
    catalog: &CatalogInfo,
    entries: &[MetadataEntry],
) -> Result<(), StoreError> {
    catalog.validate()?;
    if entries.len() > limits::METADATA_ENTRIES_MAX {
        return Err(StoreError::TooLarge {
            field: "metadata entries",
            limit: limits::METADATA_ENTRIES_MAX,
        });
    }
    if catalog.entries != entries.len() as u64 {
        return Err(StoreError::Invalid {
            field: "metadata entries",
            detail: format!(
                "catalog says {} entries, {} given",
                catalog.entries,
                entries.len()
            ),
        });
    }
    entries.iter().try_for_each(MetadataEntry::validate)?;
    // One AAGUID (or key id), one statement: an ambiguous catalog would let
    // the order of entries decide which status applies.
    let mut aaguids = std::collections::HashSet::new();
    let mut key_ids = std::collections::HashSet::new();
    for entry in entries {
        if let Some(aaguid) = &entry.aaguid
            && !aaguids.insert(aaguid.as_slice())
        {
            return Err(StoreError::Invalid {
                field: "metadata aaguid",
                detail: format!("{} appears in more than one entry", hex(aaguid)),
            });
        }
        for key_id in &entry.key_ids {
            if !key_ids.insert(key_id.as_str()) {
                return Err(StoreError::Invalid {
                    field: "metadata key id",
                    detail: format!("{key_id} appears in more than one entry"),
                });
            }
        }
    }
    Ok(())
}

/// A failure text as stored: bounded, so a hostile server's error body
/// cannot grow the status record.
pub fn bounded_text(text: &str) -> String {
    let mut end = text.len().min(limits::METADATA_TEXT_MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

impl User {
    pub fn validate(&self) -> Result<(), StoreError> {
        check_user_id(&self.id)?;
        check_len("user name", self.name.len(), 1, limits::USER_NAME_MAX)?;
        check_len(
            "display name",
            self.display_name.len(),
            0,
            limits::DISPLAY_NAME_MAX,
        )
    }
}

impl CredentialRecord {
    pub fn validate(&self) -> Result<(), StoreError> {
        check_credential_id(&self.id)?;
        check_user_id(&self.user_id)?;
        check_len(
            "public key",
            self.public_key_cose.len(),
            1,
            limits::PUBLIC_KEY_MAX,
        )?;
        check_len("fmt", self.fmt.len(), 0, limits::SHORT_TEXT_MAX)?;
        check_len(
            "attestation type",
            self.attestation_type.len(),
            0,
            limits::SHORT_TEXT_MAX,
        )?;
        if self.transports.len() > limits::TRANSPORTS_MAX {
            return Err(StoreError::TooLarge {
                field: "transports",
                limit: limits::TRANSPORTS_MAX,
            });
        }
        for t in &self.transports {
            check_len("transport", t.len(), 1, limits::SHORT_TEXT_MAX)?;
        }
        if self.tier_reasons.len() > limits::TIER_REASONS_MAX {
            return Err(StoreError::TooLarge {
                field: "tier reasons",
                limit: limits::TIER_REASONS_MAX,
            });
        }
        for r in &self.tier_reasons {
            check_len("tier reason", r.len(), 1, limits::FLAG_REASON_MAX)?;
        }
        if let Some(v) = &self.policy_version {
            check_len("policy version", v.len(), 1, limits::SHORT_TEXT_MAX)?;
        }
        if let Some(d) = &self.device_id {
            check_len("device id", d.len(), 16, 16)?;
        }
        check_flag_reason(self.disabled.as_deref())?;
        check_flag_reason(self.flagged.as_deref())
    }
}

impl DeviceRecord {
    pub fn validate(&self) -> Result<(), StoreError> {
        check_user_id(&self.user_id)?;
        check_len("user name", self.user_name.len(), 1, limits::USER_NAME_MAX)?;
        check_len(
            "display name",
            self.display_name.len(),
            0,
            limits::DISPLAY_NAME_MAX,
        )?;
        check_len("action", self.action.len(), 1, limits::SHORT_TEXT_MAX)?;
        check_len("device public key", self.public_key.len(), 65, 65)?;
        if self.platform.len() > limits::PLATFORM_ENTRIES_MAX {
            return Err(StoreError::TooLarge {
                field: "platform",
                limit: limits::PLATFORM_ENTRIES_MAX,
            });
        }
        for (k, v) in &self.platform {
            check_len("platform key", k.len(), 1, limits::DEVICE_TEXT_MAX)?;
            check_len("platform value", v.len(), 0, limits::DEVICE_TEXT_MAX)?;
        }
        if let Some(a) = &self.key_attestation {
            check_len("key attestation", a.len(), 1, limits::KEY_ATTESTATION_MAX)?;
        }
        if let Some(r) = &self.reference {
            check_len("reference", r.len(), 0, limits::DEVICE_TEXT_MAX)?;
        }
        if self.credential_ids.len() > limits::DEVICE_CREDENTIALS_MAX {
            return Err(StoreError::TooLarge {
                field: "device credentials",
                limit: limits::DEVICE_CREDENTIALS_MAX,
            });
        }
        for c in &self.credential_ids {
            check_credential_id(c)?;
        }
        if self.timeline.len() > limits::TIMELINE_MAX {
            return Err(StoreError::TooLarge {
                field: "timeline",
                limit: limits::TIMELINE_MAX,
            });
        }
        for e in &self.timeline {
            check_len("timeline event", e.event.len(), 1, limits::SHORT_TEXT_MAX)?;
            check_len("timeline actor", e.actor.len(), 0, limits::DEVICE_TEXT_MAX)?;
            if let Some(d) = &e.detail {
                check_len("timeline detail", d.len(), 0, limits::FLAG_REASON_MAX)?;
            }
        }
        if self.revision == 0 {
            return Err(StoreError::Invalid {
                field: "device revision",
                detail: "starts at 1".into(),
            });
        }
        Ok(())
    }
}

impl TransactionRecord {
    pub fn validate(&self) -> Result<(), StoreError> {
        check_user_id(&self.user_id)?;
        check_len("action", self.action.len(), 1, limits::SHORT_TEXT_MAX)?;
        check_len(
            "transaction details",
            self.details.len(),
            2,
            limits::TRANSACTION_DETAILS_MAX,
        )?;
        check_len(
            "transaction display",
            self.display.len(),
            0,
            limits::TRANSACTION_DISPLAY_MAX,
        )?;
        check_len(
            "transaction options",
            self.options.len(),
            0,
            limits::TRANSACTION_OPTIONS_MAX,
        )?;
        check_flag_reason(self.closed_reason.as_deref())?;
        if let Some(a) = &self.approval {
            check_credential_id(&a.credential_id)?;
            check_len("receipt", a.receipt.len(), 1, limits::RECEIPT_MAX)?;
        }
        if (self.state == TransactionState::Approved) != self.approval.is_some() {
            return Err(StoreError::Invalid {
                field: "transaction approval",
                detail: "present exactly when the state is approved".into(),
            });
        }
        if self.revision == 0 {
            return Err(StoreError::Invalid {
                field: "transaction revision",
                detail: "starts at 1".into(),
            });
        }
        Ok(())
    }
}

impl PairingRecord {
    pub fn validate(&self) -> Result<(), StoreError> {
        if let Some(u) = &self.user_id {
            check_user_id(u)?;
        }
        if let Some(p) = &self.phone_secret_sha256 {
            check_len("phone secret hash", p.len(), 32, 32)?;
        }
        check_len("action", self.action.len(), 1, limits::SHORT_TEXT_MAX)?;
        check_len(
            "pairing ip",
            self.context.ip.len(),
            1,
            limits::PAIRING_IP_MAX,
        )?;
        check_len(
            "pairing user agent",
            self.context.user_agent.len(),
            1,
            limits::PAIRING_AGENT_MAX,
        )?;
        if let Some(l) = &self.context.location {
            check_len("pairing location", l.len(), 1, limits::PAIRING_LOCATION_MAX)?;
        }
        check_len(
            "pairing options",
            self.options.len(),
            0,
            limits::PAIRING_OPTIONS_MAX,
        )?;
        check_flag_reason(self.closed_reason.as_deref())?;
        if let Some(a) = &self.approval {
            check_user_id(&a.user_id)?;
            check_credential_id(&a.credential_id)?;
            check_len(
                "policy version",
                a.policy_version.len(),
                0,
                limits::SHORT_TEXT_MAX,
            )?;
        }
        // An approval nobody took expires with it, kept for the record.
        let approval_ok = match self.state {
            PairingState::Approved | PairingState::Consumed => self.approval.is_some(),
            PairingState::Expired => true,
            _ => self.approval.is_none(),
        };
        if !approval_ok {
            return Err(StoreError::Invalid {
                field: "pairing approval",
                detail: "present when approved or consumed (or expired after approval), \
                         absent otherwise"
                    .into(),
            });
        }
        // Expired and locked pairings may have been claimed or not.
        let claimed = match self.state {
            PairingState::Created => Some(false),
            PairingState::Claimed
            | PairingState::Approved
            | PairingState::Denied
            | PairingState::Consumed => Some(true),
            PairingState::Expired | PairingState::Locked => None,
        };
        if claimed.is_some_and(|c| c != self.phone_secret_sha256.is_some()) {
            return Err(StoreError::Invalid {
                field: "pairing phone secret",
                detail: "present exactly when a phone has claimed the pairing".into(),
            });
        }
        if self.revision == 0 {
            return Err(StoreError::Invalid {
                field: "pairing revision",
                detail: "starts at 1".into(),
            });
        }
        Ok(())
    }
}

impl CeremonyRecord {
    pub fn validate(&self) -> Result<(), StoreError> {
        check_len(
            "ceremony kind",
            self.kind.len(),
            1,
            limits::CEREMONY_KIND_MAX,
        )?;
        check_len("challenge", self.challenge.len(), 1, limits::CHALLENGE_MAX)?;
        if let Some(user_id) = &self.user_id {
            check_user_id(user_id)?;
        }
        check_len(
            "ceremony payload",
            self.payload.len(),
            0,
            limits::CEREMONY_PAYLOAD_MAX,
        )
    }
}

impl AuditEntry {
    /// Checks the entry `build` returned against what the store assigned.
    pub(crate) fn check_assigned(&self, seq: u64, prev_hash: &[u8; 32]) -> Result<(), StoreError> {
        if self.seq != seq {
            return Err(StoreError::Invalid {
                field: "audit entry",
                detail: format!("built with seq {}, the store assigned {seq}", self.seq),
            });
        }
        if &self.prev_hash != prev_hash {
            return Err(StoreError::Invalid {
                field: "audit entry",
                detail: format!("seq {seq} built on another previous hash than the store's"),
            });
        }
        check_len("audit body", self.body.len(), 0, limits::AUDIT_BODY_MAX)
    }
}

impl Checkpoint {
    pub fn validate(&self) -> Result<(), StoreError> {
        if self.seq == 0 {
            return Err(StoreError::Invalid {
                field: "checkpoint seq",
                detail: "audit sequence numbers start at 1".into(),
            });
        }
        check_len("kid", self.kid.len(), 1, limits::KID_MAX)?;
        check_len("signature", self.signature.len(), 1, limits::SIGNATURE_MAX)
    }
}

// ---- encoding ----

/// Encodes `record` in the versioned envelope `[RECORD_VERSION, record]`.
pub(crate) fn encode_record<T: Serialize>(record: &T) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::new();
    ciborium::into_writer(&(RECORD_VERSION, record), &mut out)
        .map_err(|e| StoreError::Backend(format!("encoding a record: {e}").into()))?;
    Ok(out)
}

/// Decodes an envelope written by [`encode_record`]. Any failure, including
/// trailing bytes and unknown versions, is `Corrupt` naming `tree` and `key`.
pub(crate) fn decode_record<T: DeserializeOwned>(
    tree: &'static str,
    key: &[u8],
    bytes: &[u8],
) -> Result<T, StoreError> {
    decode_with(bytes).map_err(|detail| StoreError::Corrupt {
        tree,
        key: hex(key),
        detail,
    })
}

fn decode_record_named<T: DeserializeOwned>(
    tree: &'static str,
    key: String,
    bytes: &[u8],
) -> Result<T, StoreError> {
    decode_with(bytes).map_err(|detail| StoreError::Corrupt { tree, key, detail })
}

fn decode_with<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let mut reader = bytes;
    match ciborium::from_reader::<(u16, T), _>(&mut reader) {
        Ok((RECORD_VERSION, record)) if reader.is_empty() => Ok(record),
        Ok((RECORD_VERSION, _)) => Err(format!("{} trailing bytes", reader.len())),
        Ok((version, _)) => Err(format!("unsupported record version {version}")),
        Err(e) => {
            // A record from a newer build may not fit this build's type; say
            // so rather than reporting a bare decoding error.
            match ciborium::from_reader::<(u16, serde::de::IgnoredAny), _>(bytes) {
                Ok((version, _)) if version != RECORD_VERSION => {
                    Err(format!("unsupported record version {version}"))
                }
                _ => Err(format!("undecodable record: {e}")),
            }
        }
    }
}

/// Lower-case hex, shortened past 64 bytes so an error message stays small.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const SHOWN: usize = 64;
    let mut s = String::with_capacity(bytes.len().min(SHOWN) * 2 + 16);
    for b in bytes.iter().take(SHOWN) {
        s.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        s.push(char::from(b"0123456789abcdef"[usize::from(b & 0xf)]));
    }
    if bytes.len() > SHOWN {
        s.push_str(&format!("...(+{} bytes)", bytes.len() - SHOWN));
    }
    s
}

/// Serde's default for `Vec<u8>` and `[u8; N]` is a sequence of integers;
/// these store them as CBOR byte strings (compact, and what the bytes are).
mod serde_bytes_compat {
    use serde::{Deserializer, Serializer, de};
    use std::fmt;

    pub fn serialize<T: AsRef<[u8]>, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(value.as_ref())
    }

    pub fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: TryFrom<Vec<u8>>,
        D: Deserializer<'de>,
    {
        let bytes = d.deserialize_byte_buf(ByteBufVisitor)?;
        let len = bytes.len();
        T::try_from(bytes)
            .map_err(|_| de::Error::invalid_length(len, &"a byte string of the stored length"))
    }

    pub(super) struct ByteBufVisitor;

    impl<'de> de::Visitor<'de> for ByteBufVisitor {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a byte string")
        }

        fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }
    }
}

mod serde_opt_bytes {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    struct Bytes<'a>(&'a [u8]);

    impl Serialize for Bytes<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(self.0)
        }
    }

    struct ByteBuf(Vec<u8>);

    impl<'de> Deserialize<'de> for ByteBuf {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_byte_buf(super::serde_bytes_compat::ByteBufVisitor)
                .map(ByteBuf)
        }
    }

    pub fn serialize<S: Serializer>(value: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(v) => s.serialize_some(&Bytes(v)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Ok(Option::<ByteBuf>::deserialize(d)?.map(|b| b.0))
    }
}

// ---- group commit ----

/// Lets concurrent writers share one flush.
///
/// A writer calls [`GroupCommit::commit`] after its write is complete in
/// memory. It takes a ticket; the next flush to *start* after that covers the
/// write. If no flush is running the writer runs one itself, covering every
/// ticket issued so far; otherwise it waits for the running flush to end and
/// then either finds its ticket covered (the common case under load: one fsync
/// for everyone who arrived during the previous one) or leads the next flush.
/// So N concurrent writers cost about two fsyncs, not N, and no writer returns
/// before a flush that began after its write has succeeded.
///
/// If a flush fails its leader returns the error and the waiters it would
/// have covered each try once more as leader, so a persistent I/O error
/// reaches every writer instead of being swallowed.
#[derive(Debug, Default)]
pub struct GroupCommit {
    state: Mutex<CommitState>,
    flushed: Condvar,
}

#[derive(Debug, Default)]
struct CommitState {
    /// Tickets issued; a ticket is taken after its write completed.
    issued: u64,
    /// Every ticket up to this one is durable.
    durable: u64,
    /// A flush is running.
    flushing: bool,
}

impl GroupCommit {
    pub fn new() -> GroupCommit {
        GroupCommit::default()
    }

    /// Returns once a flush that started after this call began has
    /// succeeded. `flush` runs only if this caller leads a flush.
    pub fn commit<E>(&self, flush: impl FnOnce() -> Result<(), E>) -> Result<(), E> {
        let mut state = self.lock();
        state.issued += 1;
        let ticket = state.issued;
        loop {
            if state.durable >= ticket {
                return Ok(());
            }
            if !state.flushing {
                state.flushing = true;
                let target = state.issued;
                drop(state);
                // The guard clears `flushing` and wakes the waiters even if
                // `flush` panics, so one bad flush cannot wedge every writer.
                let mut lead = Leader {
                    commit: self,
                    covered: None,
                };
                let result = flush();
                if result.is_ok() {
                    lead.covered = Some(target);
                }
                drop(lead);
                return result;
            }
            state = self
                .flushed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    // The state is a few counters updated in single statements, valid even
    // if a holder panicked, so poisoning carries no information here.
    fn lock(&self) -> MutexGuard<'_, CommitState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

struct Leader<'a> {
    commit: &'a GroupCommit,
    covered: Option<u64>,
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        let mut state = self.commit.lock();
        state.flushing = false;
        if let Some(target) = self.covered {
            state.durable = state.durable.max(target);
        }
        drop(state);
        self.commit.flushed.notify_all();
    }
}

// ---- background sweeping ----

/// Calls [`Store::sweep_expired`] every `interval` on its own thread until
/// dropped. A pass sweeps batch after batch until less than a full batch was
/// due; each batch is short, so writers interleave with the sweeper.
pub struct Sweeper {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Sweeper {
    /// `now_ms` is the clock (unix milliseconds); the store never reads one.
    pub fn spawn(
        store: Arc<dyn Store>,
        now_ms: Box<dyn Fn() -> u64 + Send>,
        interval: Duration,
        batch: usize,
    ) -> std::io::Result<Sweeper> {
        let batch = batch.max(1);
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("store-sweeper".into())
            .spawn(move || {
                // Nothing is ever sent: dropping the sender is the signal.
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                    loop {
                        match store.sweep_expired(now_ms(), batch) {
                            Ok(done) if done >= batch => continue,
                            Ok(_) => break,
                            Err(e) => {
                                // Next pass retries; a corrupt record is
                                // stepped over by the store itself.
                                tracing::warn!(error = %e, "store sweep failed");
                                break;
                            }
                        }
                    }
                }
            })?;
        Ok(Sweeper {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Sweeper {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            // A panic in the sweeper thread has already been reported by the
            // panic hook; re-raising it in a destructor would abort.
            let _ = thread.join();
        }
    }
}

impl fmt::Debug for Sweeper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sweeper").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::thread;

    #[test]
    fn group_commit_never_acknowledges_an_unflushed_write() {
        // `written` counts completed writes; a flush snapshots it when it
        // starts and publishes the snapshot as durable when it ends. A writer
        // may return only once its own write number is durable.
        let commit = GroupCommit::new();
        let written = AtomicU64::new(0);
        let durable = AtomicU64::new(0);
        let flushes = AtomicU64::new(0);
        thread::scope(|s| {
            for _ in 0..16 {
                s.spawn(|| {
                    for _ in 0..50 {
                        let mine = written.fetch_add(1, Ordering::SeqCst) + 1;
                        commit
                            .commit(|| {
                                let upto = written.load(Ordering::SeqCst);
                                flushes.fetch_add(1, Ordering::SeqCst);
                                thread::yield_now();
                                durable.fetch_max(upto, Ordering::SeqCst);
                                Ok::<(), ()>(())
                            })
                            .unwrap();
                        assert!(durable.load(Ordering::SeqCst) >= mine);
                    }
                });
            }
        });
        assert!(flushes.load(Ordering::SeqCst) <= 800);
        assert_eq!(durable.load(Ordering::SeqCst), 800);
    }

    #[test]
    fn group_commit_reports_flush_errors_and_recovers() {
        let commit = GroupCommit::new();
        assert_eq!(commit.commit(|| Err::<(), _>("disk")), Err("disk"));
        assert_eq!(commit.commit(|| Ok::<(), &str>(())), Ok(()));
    }

    #[test]
    fn group_commit_survives_a_panicking_flush() {
        let commit = GroupCommit::new();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            commit.commit(|| -> Result<(), ()> { panic!("flush") })
        }));
        assert!(panicked.is_err());
        assert_eq!(commit.commit(|| Ok::<(), ()>(())), Ok(()));
    }

    fn sample_credential() -> CredentialRecord {
        CredentialRecord {
            id: vec![1; 32],
            user_id: vec![2; 16],
            public_key_cose: vec![0xa5; 77],
            sign_count: 7,
            backup_eligible: true,
            backup_state: false,
            aaguid: [9; 16],
            fmt: "packed".into(),
            attestation_type: "basic".into(),
            transports: vec!["usb".into(), "nfc".into()],
            created_ms: 1,
            last_used_ms: None,
            flagged: Some("mds: compromise".into()),
            tier: Some(2),
            tier_reasons: vec!["attested".into()],
            policy_version: Some("p1".into()),
            marked: false,
            attested: true,
            metadata_key_id: None,
            device_id: None,
            disabled: None,
        }
    }

    #[test]
    fn records_round_trip_with_bytes_as_byte_strings() {
        let cred = sample_credential();
        let bytes = encode_record(&cred).unwrap();
        // The public key is one byte string: its 77 bytes plus a 2-byte
        // header, not 77 integers.
        assert!(bytes.windows(77).any(|w| w == [0xa5; 77]));
        let back: CredentialRecord = decode_record("credentials", b"k", &bytes).unwrap();
        assert_eq!(back, cred);

        let ceremony = CeremonyRecord {
            id: [3; 16],
            kind: "authentication".into(),
            challenge: vec![4; 32],
            user_id: Some(vec![5; 8]),
            expires_ms: 10,
            payload: vec![6; 70_000],
        };
        let back: CeremonyRecord =
            decode_record("one_time", b"k", &encode_record(&ceremony).unwrap()).unwrap();
        assert_eq!(back, ceremony);
        let none = CeremonyRecord {
            user_id: None,
            ..ceremony
        };
        let back: CeremonyRecord =
            decode_record("one_time", b"k", &encode_record(&none).unwrap()).unwrap();
        assert_eq!(back, none);
    }

    #[test]
    fn credentials_written_before_tiers_still_decode() {
        // A record as the first release wrote it: no tier members at all.
        #[derive(Serialize)]
        struct Before {
            #[serde(with = "serde_bytes_compat")]
            id: Vec<u8>,
            #[serde(with = "serde_bytes_compat")]
            user_id: Vec<u8>,
            #[serde(with = "serde_bytes_compat")]
            public_key_cose: Vec<u8>,
            sign_count: u32,
            backup_eligible: bool,
            backup_state: bool,
            #[serde(with = "serde_bytes_compat")]
            aaguid: [u8; 16],
            fmt: String,
            attestation_type: String,
            transports: Vec<String>,
            created_ms: u64,
            last_used_ms: Option<u64>,
            flagged: Option<String>,
        }
        let now = sample_credential();
        let before = Before {
            id: now.id.clone(),
            user_id: now.user_id.clone(),
            public_key_cose: now.public_key_cose.clone(),
            sign_count: now.sign_count,
            backup_eligible: now.backup_eligible,
            backup_state: now.backup_state,
            aaguid: now.aaguid,
            fmt: now.fmt.clone(),
            attestation_type: now.attestation_type.clone(),
            transports: now.transports.clone(),
            created_ms: now.created_ms,
            last_used_ms: now.last_used_ms,
            flagged: now.flagged.clone(),
        };
        let back: CredentialRecord =
            decode_record("credentials", b"k", &encode_record(&before).unwrap()).unwrap();
        assert_eq!(back.tier, None);
        assert!(back.tier_reasons.is_empty());
        assert_eq!(back.policy_version, None);
        assert!(!back.marked);
        assert_eq!(back.id, now.id);
    }

    #[test]
    fn undecodable_and_future_records_are_corrupt() {
        let cred = sample_credential();
        let mut future = Vec::new();
        ciborium::into_writer(&(RECORD_VERSION + 1, &cred), &mut future).unwrap();
        match decode_record::<CredentialRecord>("credentials", b"\x01", &future) {
            Err(StoreError::Corrupt { tree, key, detail }) => {
                assert_eq!(tree, "credentials");
                assert_eq!(key, "01");
                assert!(detail.contains("version 2"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
        for garbage in [&b""[..], b"\xff\xff", b"garbage", &[0x82, 0x01, 0x1b, 0xff]] {
            assert!(matches!(
                decode_record::<CredentialRecord>("credentials", b"k", garbage),
                Err(StoreError::Corrupt { .. })
            ));
        }
        let mut trailing = encode_record(&cred).unwrap();
        trailing.push(0);
        assert!(matches!(
            decode_record::<CredentialRecord>("credentials", b"k", &trailing),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn a_wrong_length_fixed_array_is_corrupt() {
        #[derive(Serialize)]
        struct Short {
            #[serde(with = "serde_bytes_compat")]
            hash: Vec<u8>,
        }
        #[derive(Deserialize, Debug)]
        struct Fixed {
            #[serde(with = "serde_bytes_compat")]
            #[allow(dead_code)]
            hash: [u8; 32],
        }
        let bytes = encode_record(&Short { hash: vec![0; 31] }).unwrap();
        assert!(matches!(
            decode_record::<Fixed>("audit", b"k", &bytes),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn limits_are_enforced_by_validation() {
        let mut cred = sample_credential();
        cred.id = vec![0; limits::CREDENTIAL_ID_MAX + 1];
        assert!(matches!(
            cred.validate(),
            Err(StoreError::TooLarge {
                field: "credential id",
                limit: 1023
            })
        ));
        cred.id = vec![];
        assert!(matches!(cred.validate(), Err(StoreError::Invalid { .. })));
        let user = User {
            id: vec![0; 65],
            name: "a".into(),
            display_name: String::new(),
            created_ms: 0,
        };
        assert!(matches!(
            user.validate(),
            Err(StoreError::TooLarge {
                field: "user id",
                ..
            })
        ));
    }

    #[test]
    fn one_time_tags_are_distinct_and_round_trip() {
        for kind in OneTime::ALL {
            assert_eq!(OneTime::from_tag(kind.tag()), Some(kind));
        }
        assert_eq!(OneTime::from_tag(0), None);
    }

    #[test]
    fn hex_is_shortened() {
        assert_eq!(hex(&[0x00, 0xab]), "00ab");
        assert!(hex(&[0; 100]).ends_with("...(+36 bytes)"));
    }
}
