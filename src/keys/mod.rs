//! The key layer: signet's backend keys, kept inside a PKCS#11 token or a TPM 2.0.
//!
//! # Model
//!
//! signet holds four keys, one per [`Role`]. Each is a P-256 key pair generated
//! inside the device; the private half never leaves it. A key is named by its
//! [`Kid`], derived from the public key (never from a label), so a kid printed in
//! a receipt or a log identifies exactly one public key forever.
//!
//! A role may hold several *versions*. Rotation adds version `n + 1`, which
//! becomes the role's active key; earlier versions stay usable for verification
//! (their public keys remain listed and exportable) until an officer retires
//! them. Retiring disables the private key on the device, so a retired key can
//! never sign or derive again.
//!
//! Two layers keep the device-specific code small:
//!
//! * [`KeyBackend`] is what a device must do: list the keys it holds, generate
//!   one, sign a digest, run ECDH, retire a key, and report reachability. One
//!   module per device kind implements it ([`pkcs11`], [`tpm`]).
//! * [`KeyRing`] is the role logic on top: which version is active, rotation,
//!   idempotent provisioning, and signing "as a role". It is the same for every
//!   backend, and the same test suite runs against each backend through it.
//!
//! Device operations block. A backend runs them on its own worker threads, so
//! callers on an async runtime must still use `spawn_blocking` (or a dedicated
//! thread) to wait for the answer.

pub mod cert;
pub mod pin;
pub mod pkcs11;
pub mod profile;
pub mod tpm;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, RwLock};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

pub use profile::Profile;

/// What a key is for. Each role is its own key, so compromise or rotation of
/// one never touches the others.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Signs device registration tokens.
    TokenSigning,
    /// ECDH for requests that devices encrypt to the server.
    TokenEncryption,
    /// Countersigns verified transaction approvals (receipts).
    ApprovalCountersign,
    /// Signs audit-log checkpoints.
    AuditCheckpoint,
}

/// The one operation a role's key is allowed to do on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Purpose {
    /// ECDSA P-256 signatures (`CKA_SIGN`, TPM `sign` attribute).
    Sign,
    /// ECDH P-256 key agreement (`CKA_DERIVE`, TPM `decrypt` attribute).
    KeyAgreement,
}

impl Role {
    pub const ALL: [Role; 4] = [
        Role::TokenSigning,
        Role::TokenEncryption,
        Role::ApprovalCountersign,
        Role::AuditCheckpoint,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::TokenSigning => "token-signing",
            Role::TokenEncryption => "token-encryption",
            Role::ApprovalCountersign => "approval-countersign",
            Role::AuditCheckpoint => "audit-checkpoint",
        }
    }

    /// Least privilege: the encryption key cannot sign, the signing keys
    /// cannot derive.
    pub fn purpose(self) -> Purpose {
        match self {
            Role::TokenEncryption => Purpose::KeyAgreement,
            _ => Purpose::Sign,
        }
    }

    /// The algorithm name shown to officers and in JWKs.
    pub fn algorithm(self) -> &'static str {
        match self.purpose() {
            Purpose::Sign => "ES256",
            Purpose::KeyAgreement => "ECDH-ES",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for Role {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| KeyError::UnknownRole(s.to_string()))
    }
}

/// Key id: the first 16 bytes of SHA-256 over the key's DER SubjectPublicKeyInfo,
/// shown as unpadded base64url (22 characters). Stored on PKCS#11 tokens as
/// `CKA_ID` (the 16 raw bytes).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Kid([u8; 16]);

impl Kid {
    pub fn of(public: &EcPublicKey) -> Kid {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &public.spki_der());
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest.as_ref()[..16]);
        Kid(id)
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<Kid> {
        <[u8; 16]>::try_from(bytes).ok().map(Kid)
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for Kid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&URL_SAFE_NO_PAD.encode(self.0))
    }
}

impl fmt::Debug for Kid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Kid({self})")
    }
}

impl FromStr for Kid {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        let bad = || KeyError::InvalidKid(s.chars().take(64).collect());
        if s.len() != 22 {
            return Err(bad());
        }
        let bytes = URL_SAFE_NO_PAD.decode(s).map_err(|_| bad())?;
        Kid::from_bytes(&bytes).ok_or_else(bad)
    }
}

impl Serialize for Kid {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Kid {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A P-256 public key, validated to be on the curve, kept as the 65-byte
/// uncompressed SEC1 point.
#[derive(Clone, PartialEq, Eq)]
pub struct EcPublicKey {
    point: [u8; 65],
}

impl EcPublicKey {
    /// Accepts an uncompressed or compressed SEC1 point; rejects anything not on P-256.
    pub fn from_sec1(bytes: &[u8]) -> Result<EcPublicKey, KeyError> {
        let key = p256::PublicKey::from_sec1_bytes(bytes)
            .map_err(|_| KeyError::InvalidPublicKey("not a P-256 SEC1 point".into()))?;
        Ok(Self::from_p256(&key))
    }

    /// Builds the point from affine coordinates, left-padding short ones (TPMs
    /// strip leading zero bytes).
    pub fn from_xy(x: &[u8], y: &[u8]) -> Result<EcPublicKey, KeyError> {
        if x.len() > 32 || y.len() > 32 {
            return Err(KeyError::InvalidPublicKey(
                "coordinate longer than 32 bytes".into(),
            ));
        }
        let mut point = [0u8; 65];
        point[0] = 0x04;
        point[33 - x.len()..33].copy_from_slice(x);
        point[65 - y.len()..65].copy_from_slice(y);
        Self::from_sec1(&point)
    }

    pub fn from_p256(key: &p256::PublicKey) -> EcPublicKey {
        use p256::elliptic_curve::sec1::ToSec1Point;
        let encoded = key.to_sec1_point(false);
        let mut point = [0u8; 65];
        point.copy_from_slice(encoded.as_bytes());
        EcPublicKey { point }
    }

    pub fn to_p256(&self) -> p256::PublicKey {
        // The point was validated on construction.
        p256::PublicKey::from_sec1_bytes(&self.point).expect("validated P-256 point")
    }

    pub fn sec1(&self) -> &[u8; 65] {
        &self.point
    }

    pub fn x(&self) -> &[u8] {
        &self.point[1..33]
    }

    pub fn y(&self) -> &[u8] {
        &self.point[33..65]
    }

    pub fn spki_der(&self) -> Vec<u8> {
        use p256::pkcs8::EncodePublicKey;
        self.to_p256()
            .to_public_key_der()
            .expect("P-256 SPKI encoding cannot fail")
            .into_vec()
    }

    pub fn pem(&self) -> String {
        use p256::pkcs8::{EncodePublicKey, LineEnding};
        self.to_p256()
            .to_public_key_pem(LineEnding::LF)
            .expect("P-256 SPKI encoding cannot fail")
    }

    /// Verifies an ECDSA P-256 / SHA-256 signature (raw r||s) over `message`.
    pub fn verify(&self, message: &[u8], signature: &EcdsaSignature) -> bool {
        aws_lc_rs::signature::UnparsedPublicKey::new(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
            &self.point[..],
        )
        .verify(message, signature.raw())
        .is_ok()
    }
}

impl fmt::Debug for EcPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EcPublicKey({})", URL_SAFE_NO_PAD.encode(self.point))
    }
}

/// An ECDSA P-256 signature as devices produce it: raw r||s, 64 bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct EcdsaSignature {
    raw: [u8; 64],
}

impl EcdsaSignature {
    pub fn from_raw(bytes: &[u8]) -> Result<EcdsaSignature, KeyError> {
        let raw = <[u8; 64]>::try_from(bytes).map_err(|_| KeyError::Device {
            op: "sign",
            detail: format!(
                "device returned a {}-byte signature, expected 64",
                bytes.len()
            ),
        })?;
        Ok(EcdsaSignature { raw })
    }

    /// Builds r||s from the two scalars, left-padding short ones.
    pub fn from_scalars(r: &[u8], s: &[u8]) -> Result<EcdsaSignature, KeyError> {
        if r.len() > 32 || s.len() > 32 {
            return Err(KeyError::Device {
                op: "sign",
                detail: "signature scalar longer than 32 bytes".into(),
            });
        }
        let mut raw = [0u8; 64];
        raw[32 - r.len()..32].copy_from_slice(r);
        raw[64 - s.len()..].copy_from_slice(s);
        Ok(EcdsaSignature { raw })
    }

    pub fn raw(&self) -> &[u8; 64] {
        &self.raw
    }

    /// ASN.1 DER `Ecdsa-Sig-Value`, as X.509 and JWS-over-DER consumers expect.
    pub fn to_der(&self) -> Vec<u8> {
        match p256::ecdsa::Signature::from_slice(&self.raw) {
            Ok(sig) => sig.to_der().as_bytes().to_vec(),
            // r or s of zero or >= n: the device misbehaved; keep the bytes
            // recognisable rather than inventing a signature.
            Err(_) => Vec::new(),
        }
    }
}

impl fmt::Debug for EcdsaSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EcdsaSignature({})", URL_SAFE_NO_PAD.encode(self.raw))
    }
}

/// The x-coordinate from an ECDH, zeroized on drop. Feed it to a KDF and let it go.
pub struct SharedSecret(Zeroizing<[u8; 32]>);

impl SharedSecret {
    pub fn from_slice(bytes: &[u8]) -> Result<SharedSecret, KeyError> {
        if bytes.len() > 32 {
            return Err(KeyError::Device {
                op: "ecdh",
                detail: format!("device returned a {}-byte secret, expected 32", bytes.len()),
            });
        }
        let mut out = Zeroizing::new([0u8; 32]);
        out[32 - bytes.len()..].copy_from_slice(bytes);
        Ok(SharedSecret(out))
    }

    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for SharedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedSecret(..)")
    }
}

/// Protection attributes as read back from the device (not as requested).
/// `None` means the device did not report the attribute.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DeviceAttributes {
    pub sensitive: Option<bool>,
    pub extractable: Option<bool>,
    pub never_extractable: Option<bool>,
    pub always_sensitive: Option<bool>,
    /// Generated on the device (`CKA_LOCAL`, TPM `sensitiveDataOrigin`).
    pub local: Option<bool>,
    /// Persistent (`CKA_TOKEN`, TPM key blob under the persistent primary).
    pub persistent: Option<bool>,
}

impl DeviceAttributes {
    /// True only when the device affirms every protection signet relies on.
    pub fn protected(&self) -> bool {
        self.sensitive == Some(true)
            && self.extractable == Some(false)
            && self.never_extractable == Some(true)
    }
}

/// The label a key carries on the device: `signet:<role>:v<version>`.
pub fn key_label(role: Role, version: u32) -> String {
    format!("signet:{role}:v{version}")
}

/// Parses [`key_label`]; anything else is not one of signet's keys.
pub fn parse_key_label(label: &str) -> Option<(Role, u32)> {
    let rest = label.strip_prefix("signet:")?;
    let (role, version) = rest.rsplit_once(":v")?;
    let version: u32 = version.parse().ok()?;
    if version == 0 {
        return None;
    }
    Some((role.parse().ok()?, version))
}

/// A key as a backend reports it.
#[derive(Clone, Debug)]
pub struct StoredKey {
    pub kid: Kid,
    pub role: Role,
    pub version: u32,
    pub label: String,
    pub retired: bool,
    pub public: EcPublicKey,
    pub attributes: DeviceAttributes,
}

/// Where a key stands in its role's lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyStatus {
    /// The role's newest non-retired version: the one that signs.
    Active,
    /// An earlier version, kept so that what it signed can still be verified.
    VerifyOnly,
    /// Disabled on the device; listed for the record only.
    Retired,
}

impl fmt::Display for KeyStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            KeyStatus::Active => "active",
            KeyStatus::VerifyOnly => "verify-only",
            KeyStatus::Retired => "retired",
        })
    }
}

/// A key with its lifecycle status, as officers and the API see it.
#[derive(Clone, Debug, Serialize)]
pub struct KeyInfo {
    pub role: Role,
    pub kid: Kid,
    pub label: String,
    pub algorithm: &'static str,
    pub curve: &'static str,
    pub version: u32,
    pub status: KeyStatus,
    #[serde(flatten)]
    pub attributes: DeviceAttributes,
    #[serde(skip)]
    pub public: EcPublicKey,
}

/// Everything that can go wrong in the key layer. Each variant names its cause;
/// none carries a PIN or key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("PKCS#11 module not found or not loadable: {path}: {reason}")]
    ModuleNotFound { path: String, reason: String },
    #[error("token not found: {wanted}; tokens present: {}", if available.is_empty() { "none".to_string() } else { available.join(", ") })]
    TokenNotFound {
        wanted: String,
        available: Vec<String>,
    },
    #[error("wrong PIN for {0}")]
    WrongPin(String),
    #[error("PIN locked for {0}: reset it with the security officer PIN")]
    PinLocked(String),
    #[error("PIN source: {0}")]
    PinSource(String),
    #[error(
        "unknown role {0:?}; roles are token-signing, token-encryption, approval-countersign, audit-checkpoint"
    )]
    UnknownRole(String),
    #[error("invalid key id {0:?}: expected 22 base64url characters")]
    InvalidKid(String),
    #[error("no key with kid {0} on the device")]
    KeyNotFound(Kid),
    #[error("role {0} has no active key; run `signet hsm init`")]
    NoActiveKey(Role),
    #[error("key {kid} ({role}) cannot be used for {operation}")]
    WrongPurpose {
        kid: Kid,
        role: Role,
        operation: &'static str,
    },
    #[error("key {0} is retired")]
    Retired(Kid),
    #[error("key {0} is the active key of its role; rotate the role before retiring it")]
    RetireActive(Kid),
    #[error("invalid public key: {0}")]
    InvalidPublicKey(String),
    #[error("TPM unreachable at {tcti}: {detail}")]
    TpmUnreachable { tcti: String, detail: String },
    /// The device is gone or being recovered: callers should fail fast
    /// (HTTP 503) and try again later; the backend reconnects by itself.
    #[error("{backend} unavailable: {detail}")]
    Unavailable { backend: String, detail: String },
    #[error("device error during {op}: {detail}")]
    Device { op: &'static str, detail: String },
    #[error("profile {path}: {detail}")]
    Profile { path: String, detail: String },
    #[error("{0}")]
    Io(String),
}

impl KeyError {
    /// True when the failure is the device being away, as opposed to a bad request.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            KeyError::Unavailable { .. } | KeyError::TpmUnreachable { .. }
        )
    }
}

/// What a device must do for signet. Implementations own their threads and
/// sessions; every method may block.
pub trait KeyBackend: Send + Sync {
    /// One line naming the device, for logs and errors (no secrets).
    fn describe(&self) -> String;
    /// Every signet key on the device, retired ones included, with attributes
    /// read back from the device.
    fn list(&self) -> Result<Vec<StoredKey>, KeyError>;
    /// Generates a new key pair for `role` inside the device, labelled with `version`.
    fn generate(&self, role: Role, version: u32) -> Result<StoredKey, KeyError>;
    /// ECDSA P-256 over a SHA-256 digest computed by the caller.
    fn sign_digest(&self, kid: &Kid, digest: &[u8; 32]) -> Result<EcdsaSignature, KeyError>;
    /// ECDH P-256 with the peer's public key; returns the shared x-coordinate.
    fn ecdh(&self, kid: &Kid, peer: &EcPublicKey) -> Result<SharedSecret, KeyError>;
    /// Disables the private key on the device for good and marks it retired.
    fn retire(&self, kid: &Kid) -> Result<(), KeyError>;
    /// Cheap reachability check (readiness probes).
    fn ping(&self) -> Result<(), KeyError>;
}

/// What `KeyRing::init` did.
#[derive(Debug, Serialize)]
pub struct InitReport {
    pub created: Vec<KeyInfo>,
    pub existing: Vec<KeyInfo>,
}

/// Role logic over any [`KeyBackend`]: lifecycle status, provisioning,
/// rotation, and signing as a role.
pub struct KeyRing {
    backend: Arc<dyn KeyBackend>,
    /// The last listing of the device, so the hot path (which key is
    /// active, what public key a kid names) does not list the device on
    /// every call: a listing costs several signatures' time. Replaced by
    /// every [`KeyRing::list`], so by every lifecycle change made through
    /// this ring; a change made by another process (an officer's CLI) is
    /// seen after [`KeyRing::refresh`], or at the latest [`LISTING_TTL`]
    /// later. Two changes are seen sooner, because the service must not
    /// wait a TTL for them: a role with no active key is looked up again
    /// after [`MISSING_RECHECK`] (an officer provisioning a wiped token),
    /// and an active key the device no longer holds makes the ring read
    /// the device again at once (the token was wiped or replaced).
    listing: RwLock<Option<(std::time::Instant, Arc<Vec<KeyInfo>>)>>,
}

/// How long a listing of the key device is trusted before it is read again.
pub const LISTING_TTL: std::time::Duration = std::time::Duration::from_secs(5);

/// How soon a listing in which a role has no active key is read again: a
/// token re-initialized under the running service is empty until an officer
/// runs `signet hsm init`, and the service resumes within this of that.
/// Each request for the missing role re-reads at most this often.
pub const MISSING_RECHECK: std::time::Duration = std::time::Duration::from_millis(250);

/// The oldest listing a readiness check accepts: readiness reads the device
/// itself (a wiped token answers pings but holds no keys), at most this often.
pub const READY_RELIST: std::time::Duration = std::time::Duration::from_millis(250);

impl KeyRing {
    pub fn new(backend: Arc<dyn KeyBackend>) -> KeyRing {
        KeyRing {
            backend,
            listing: RwLock::new(None),
        }
    }

    /// Opens the backend a profile describes.
    pub fn open(profile: &Profile) -> Result<KeyRing, KeyError> {
        Ok(KeyRing::new(profile.open_backend()?))
    }

    pub fn backend(&self) -> &Arc<dyn KeyBackend> {
        &self.backend
    }

    /// Every signet key on the device with its status, ordered by role then version.
    pub fn list(&self) -> Result<Vec<KeyInfo>, KeyError> {
        let keys = with_status(self.backend.list()?);
        *self.listing.write().unwrap_or_else(|p| p.into_inner()) =
            Some((std::time::Instant::now(), Arc::new(keys.clone())));
        Ok(keys)
    }

    /// The cached listing, if there is one younger than `max_age`.
    fn cached(&self, max_age: std::time::Duration) -> Option<Arc<Vec<KeyInfo>>> {
        match &*self.listing.read().unwrap_or_else(|p| p.into_inner()) {
            Some((at, keys)) if at.elapsed() < max_age => Some(keys.clone()),
            _ => None,
        }
    }

    /// The listing, from the cache while it is younger than [`LISTING_TTL`].
    fn listed(&self) -> Result<Arc<Vec<KeyInfo>>, KeyError> {
        match self.cached(LISTING_TTL) {
            Some(keys) => Ok(keys),
            None => Ok(Arc::new(self.list()?)),
        }
    }

    /// A key by kid, any status but retired, from the cached listing: what
    /// a verifier of signet's own signatures, or a recipient of messages
    /// sealed to signet, asks. A kid not in it makes the device be read
    /// again, at most once a second, so unknown kids sent on purpose cannot
    /// keep the device busy.
    pub fn live(&self, kid: &Kid) -> Result<KeyInfo, KeyError> {
        let found = |keys: &[KeyInfo]| keys.iter().find(|k| &k.kid == kid).cloned();
        let stale = self.cached(std::time::Duration::from_secs(1)).is_none();
        let key = match found(&self.listed()?) {
            Some(k) => k,
            None if stale => found(&self.list()?).ok_or(KeyError::KeyNotFound(*kid))?,
            None => return Err(KeyError::KeyNotFound(*kid)),
        };
        if key.status == KeyStatus::Retired {
            return Err(KeyError::Retired(*kid));
        }
        Ok(key)
    }

    /// The active key of a role, from the cached listing. A listing without
    /// one is read again if older than [`MISSING_RECHECK`].
    pub fn current(&self, role: Role) -> Result<KeyInfo, KeyError> {
        let active = |keys: &[KeyInfo]| {
            keys.iter()
                .find(|k| k.role == role && k.status == KeyStatus::Active)
                .cloned()
        };
        if let Some(key) = active(&self.listed()?) {
            return Ok(key);
        }
        let keys = match self.cached(MISSING_RECHECK) {
            Some(keys) => keys,
            None => Arc::new(self.list()?),
        };
        active(&keys).ok_or(KeyError::NoActiveKey(role))
    }

    /// Whether the service can use the device: it answers, and every role
    /// has an active key on it. Reads the device's listing unless the
    /// cached one is younger than [`READY_RELIST`], so a wiped token shows
    /// as not ready (and a re-provisioned one as ready) within that.
    pub fn ready(&self) -> Result<(), KeyError> {
        self.backend.ping()?;
        let keys = match self.cached(READY_RELIST) {
            Some(keys) => keys,
            None => Arc::new(self.list()?),
        };
        for role in Role::ALL {
            if !keys
                .iter()
                .any(|k| k.role == role && k.status == KeyStatus::Active)
            {
                return Err(KeyError::NoActiveKey(role));
            }
        }
        Ok(())
    }

    /// Runs `op` with the active key of `role`. If the device answers that
    /// it does not hold that key, the listing named a key of a token that
    /// has since been wiped or replaced (and maybe re-provisioned by an
    /// officer): the device is read again and `op` runs once more with
    /// whatever is active now, so the service moves to the new keys on the
    /// first request rather than after [`LISTING_TTL`].
    fn with_active<T>(
        &self,
        role: Role,
        op: impl Fn(&Kid) -> Result<T, KeyError>,
    ) -> Result<(Kid, T), KeyError> {
        let kid = self.active_kid(role)?;
        match op(&kid) {
            Err(KeyError::KeyNotFound(gone)) if gone == kid => {
                tracing::warn!(%role, %kid, "the active key is gone from the device; reading its keys again");
                let keys = self.list()?;
                let kid = keys
                    .iter()
                    .find(|k| k.role == role && k.status == KeyStatus::Active)
                    .map(|k| k.kid)
                    .ok_or(KeyError::NoActiveKey(role))?;
                Ok((kid, op(&kid)?))
            }
            other => other.map(|v| (kid, v)),
        }
    }

    /// Re-reads which key is active per role (after another process rotated).
    pub fn refresh(&self) -> Result<(), KeyError> {
        self.list().map(|_| ())
    }

    /// Creates the missing role keys; idempotent.
    pub fn init(&self) -> Result<InitReport, KeyError> {
        let before = self.list()?;
        let mut created = Vec::new();
        for role in Role::ALL {
            let has_live = before
                .iter()
                .any(|k| k.role == role && k.status == KeyStatus::Active);
            if !has_live {
                let next = next_version(&before, role);
                let stored = self.backend.generate(role, next)?;
                created.push(stored.kid);
            }
        }
        let after = self.list()?;
        let (created, existing) = after
            .into_iter()
            .filter(|k| k.status == KeyStatus::Active)
            .partition(|k| created.contains(&k.kid));
        Ok(InitReport { created, existing })
    }

    /// The active key of a role.
    pub fn active(&self, role: Role) -> Result<KeyInfo, KeyError> {
        self.list()?
            .into_iter()
            .find(|k| k.role == role && k.status == KeyStatus::Active)
            .ok_or(KeyError::NoActiveKey(role))
    }

    /// A key by kid, any status.
    pub fn find(&self, kid: &Kid) -> Result<KeyInfo, KeyError> {
        self.list()?
            .into_iter()
            .find(|k| &k.kid == kid)
            .ok_or(KeyError::KeyNotFound(*kid))
    }

    /// Adds a new version of `role`, which becomes active; the previous active
    /// key becomes verify-only.
    pub fn rotate(&self, role: Role) -> Result<KeyInfo, KeyError> {
        let keys = self.list()?;
        let stored = self.backend.generate(role, next_version(&keys, role))?;
        self.find(&stored.kid)
    }

    /// Retires a verify-only key. The active key cannot be retired: that would
    /// leave the role unable to sign; rotate first.
    pub fn retire(&self, kid: &Kid) -> Result<KeyInfo, KeyError> {
        let key = self.find(kid)?;
        match key.status {
            KeyStatus::Active => return Err(KeyError::RetireActive(*kid)),
            KeyStatus::Retired => return Err(KeyError::Retired(*kid)),
            KeyStatus::VerifyOnly => {}
        }
        self.backend.retire(kid)?;
        self.find(kid)
    }

    fn active_kid(&self, role: Role) -> Result<Kid, KeyError> {
        Ok(self.current(role)?.kid)
    }

    /// Signs SHA-256(`message`) with the role's active key.
    pub fn sign(&self, role: Role, message: &[u8]) -> Result<(Kid, EcdsaSignature), KeyError> {
        let digest = sha256(message);
        self.sign_digest(role, &digest)
    }

    /// Signs a SHA-256 digest with the role's active key.
    pub fn sign_digest(
        &self,
        role: Role,
        digest: &[u8; 32],
    ) -> Result<(Kid, EcdsaSignature), KeyError> {
        if role.purpose() != Purpose::Sign {
            let kid = self.active_kid(role)?;
            return Err(KeyError::WrongPurpose {
                kid,
                role,
                operation: "signing",
            });
        }
        self.with_active(role, |kid| self.backend.sign_digest(kid, digest))
    }

    /// ECDH with the role's active key.
    pub fn ecdh(&self, role: Role, peer: &EcPublicKey) -> Result<(Kid, SharedSecret), KeyError> {
        if role.purpose() != Purpose::KeyAgreement {
            let kid = self.active_kid(role)?;
            return Err(KeyError::WrongPurpose {
                kid,
                role,
                operation: "key agreement",
            });
        }
        self.with_active(role, |kid| self.backend.ecdh(kid, peer))
    }

    /// ECDH with a specific (active or verify-only) key: a message encrypted to
    /// the previous version must still open during a rotation.
    pub fn ecdh_with(&self, kid: &Kid, peer: &EcPublicKey) -> Result<SharedSecret, KeyError> {
        self.backend.ecdh(kid, peer)
    }
}

/// Assigns lifecycle status: per role, the highest non-retired version is
/// active, other non-retired versions are verify-only.
pub fn with_status(mut keys: Vec<StoredKey>) -> Vec<KeyInfo> {
    keys.sort_by_key(|k| (k.role, k.version, k.kid));
    let mut active: BTreeMap<Role, Kid> = BTreeMap::new();
    for k in keys.iter().filter(|k| !k.retired) {
        active.insert(k.role, k.kid); // sorted ascending: the last one wins
    }
    keys.into_iter()
        .map(|k| KeyInfo {
            status: if k.retired {
                KeyStatus::Retired
            } else if active.get(&k.role) == Some(&k.kid) {
                KeyStatus::Active
            } else {
                KeyStatus::VerifyOnly
            },
            role: k.role,
            kid: k.kid,
            label: k.label,
            algorithm: k.role.algorithm(),
            curve: "P-256",
            version: k.version,
            attributes: k.attributes,
            public: k.public,
        })
        .collect()
}

fn next_version(keys: &[KeyInfo], role: Role) -> u32 {
    keys.iter()
        .filter(|k| k.role == role)
        .map(|k| k.version)
        .max()
        .unwrap_or(0)
        + 1
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_round_trip_and_reject_foreign_ones() {
        for role in Role::ALL {
            assert_eq!(parse_key_label(&key_label(role, 7)), Some((role, 7)));
        }
        assert_eq!(parse_key_label("signet:token-signing:v0"), None);
        assert_eq!(parse_key_label("signet:nope:v1"), None);
        assert_eq!(parse_key_label("other:token-signing:v1"), None);
        assert_eq!(parse_key_label("signet:token-signing:vx"), None);
    }

    #[test]
    fn kid_is_22_base64url_chars_and_round_trips() {
        let secret = p256::SecretKey::from_slice(&[7u8; 32]).unwrap();
        let public = EcPublicKey::from_p256(&secret.public_key());
        let kid = Kid::of(&public);
        let text = kid.to_string();
        assert_eq!(text.len(), 22);
        assert_eq!(text.parse::<Kid>().unwrap(), kid);
        assert!("short".parse::<Kid>().is_err());
        assert!("!!!!!!!!!!!!!!!!!!!!!!".parse::<Kid>().is_err());
    }

    #[test]
    fn public_key_rejects_points_off_the_curve() {
        let mut point = [0u8; 65];
        point[0] = 4;
        point[64] = 1;
        assert!(EcPublicKey::from_sec1(&point).is_err());
        assert!(EcPublicKey::from_sec1(&[]).is_err());
        assert!(EcPublicKey::from_xy(&[1u8; 33], &[1u8; 32]).is_err());
    }

    #[test]
    fn signature_scalars_are_left_padded() {
        let sig = EcdsaSignature::from_scalars(&[1, 2], &[3]).unwrap();
        assert_eq!(sig.raw()[30..32], [1, 2]);
        assert_eq!(sig.raw()[63], 3);
        assert!(EcdsaSignature::from_scalars(&[0u8; 33], &[1]).is_err());
    }

    fn stored(role: Role, version: u32, retired: bool, seed: u8) -> StoredKey {
        let secret = p256::SecretKey::from_slice(&[seed; 32]).unwrap();
        let public = EcPublicKey::from_p256(&secret.public_key());
        StoredKey {
            kid: Kid::of(&public),
            role,
            version,
            label: key_label(role, version),
            retired,
            public,
            attributes: DeviceAttributes::default(),
        }
    }

    #[test]
    fn newest_live_version_is_active() {
        let keys = with_status(vec![
            stored(Role::TokenSigning, 2, false, 2),
            stored(Role::TokenSigning, 1, false, 1),
            stored(Role::TokenSigning, 3, true, 3),
            stored(Role::AuditCheckpoint, 1, true, 4),
        ]);
        let status: Vec<_> = keys.iter().map(|k| (k.role, k.version, k.status)).collect();
        assert_eq!(
            status,
            vec![
                (Role::TokenSigning, 1, KeyStatus::VerifyOnly),
                (Role::TokenSigning, 2, KeyStatus::Active),
                (Role::TokenSigning, 3, KeyStatus::Retired),
                (Role::AuditCheckpoint, 1, KeyStatus::Retired),
            ]
        );
    }
}
