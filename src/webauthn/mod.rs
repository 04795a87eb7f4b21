//! The relying-party engine: WebAuthn Level 3 registration (§7.1) and
//! authentication (§7.2) verification, every attestation format, options.
//!
//! # Model
//!
//! The engine is pure. It reads no clock (the time is an argument), opens no
//! file or socket, and keeps no state: the caller stores challenges and
//! credentials and passes them in. So every check can be tested with fixed
//! inputs, and the same code serves the service, the offline CLI and the
//! fuzzers.
//!
//! A ceremony is verified in one function per kind, [`registration::verify`]
//! and [`assertion::verify`], which walk the specification's steps in order.
//! Each step lives in one place:
//!
//! | what | where |
//! |---|---|
//! | the browser's `toJSON()` shapes | [`response`] |
//! | `clientDataJSON` | [`client_data`] |
//! | authenticator data, flags, attested credential data | [`authenticator_data`] |
//! | credential public keys and signatures | [`cose_key`] |
//! | attestation statements, one module per format | [`attestation`] |
//! | certificate paths | [`certpath`] |
//! | creation and request options | [`options`] |
//!
//! Every failure is an [`Error`] that names the offending field with its JSON
//! path (`response.clientDataJSON.origin`, `attStmt.x5c[1]`), so an operator
//! or a conformance log can tell what was wrong without a debugger.
//!
//! Every input is hostile: lengths are checked before use, sizes are bounded
//! before allocation ([`limits`]), and nothing panics on bad input.

pub mod assertion;
pub mod attestation;
pub mod authenticator_data;
pub mod certpath;
pub mod client_data;
pub mod cose_key;
pub mod options;
pub mod registration;
pub mod response;

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Size bounds applied before anything is allocated or parsed.
pub mod limits {
    /// clientDataJSON: browsers send a few hundred bytes.
    pub const CLIENT_DATA_JSON: usize = 8 * 1024;
    /// The attestation object, certificates included.
    pub const ATTESTATION_OBJECT: usize = 64 * 1024;
    /// Authenticator data, extensions included.
    pub const AUTHENTICATOR_DATA: usize = 16 * 1024;
    /// WebAuthn allows credential ids up to 1023 bytes.
    pub const CREDENTIAL_ID: usize = 1023;
    /// A signature (RSA-4096 is 512 bytes; leave room, not abuse).
    pub const SIGNATURE: usize = 2048;
    /// userHandle: at most 64 bytes by the specification.
    pub const USER_HANDLE: usize = 64;
    /// Certificates in an x5c array.
    pub const X5C_CERTS: usize = 8;
    /// One certificate.
    pub const CERTIFICATE: usize = 16 * 1024;
    /// Nesting depth of any CBOR or JSON structure we decode.
    pub const NESTING: usize = 16;
    /// A whole response JSON document.
    pub const RESPONSE_JSON: usize = 256 * 1024;
}

/// Why a ceremony was refused. Each variant names its cause; [`Error::field`]
/// names the input it concerns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("{field}: missing")]
    Missing { field: String },
    #[error("{field}: expected {expected}")]
    WrongType {
        field: String,
        expected: &'static str,
    },
    #[error("{field}: empty")]
    Empty { field: String },
    #[error("{field}: not base64url")]
    NotBase64Url { field: String },
    #[error("{field}: larger than {limit} bytes")]
    TooLarge { field: String, limit: usize },
    #[error("{field}: malformed: {reason}")]
    Malformed { field: String, reason: String },
    /// A value that parsed but is not the one the ceremony expects
    /// (challenge, origin, type, rpIdHash, AAGUID, nonce, ...).
    #[error("{field}: {reason}")]
    Mismatch { field: String, reason: String },
    #[error("{field}: {reason}")]
    Policy { field: String, reason: String },
    #[error("{field}: signature does not verify")]
    BadSignature { field: String },
    #[error("{field}: algorithm {alg} {reason}")]
    Algorithm {
        field: String,
        alg: i64,
        reason: &'static str,
    },
    /// A counter that did not increase: the authenticator may have been cloned.
    #[error(
        "response.authenticatorData.signCount: {received} is not greater than the stored {stored}: possible cloned authenticator"
    )]
    CounterNotIncreased { stored: u32, received: u32 },
    #[error("{field}: certificate path: {reason}")]
    CertPath { field: String, reason: String },
}

impl Error {
    /// The JSON path of the input that failed.
    pub fn field(&self) -> &str {
        match self {
            Error::Missing { field }
            | Error::WrongType { field, .. }
            | Error::Empty { field }
            | Error::NotBase64Url { field }
            | Error::TooLarge { field, .. }
            | Error::Malformed { field, .. }
            | Error::Mismatch { field, .. }
            | Error::Policy { field, .. }
            | Error::BadSignature { field }
            | Error::Algorithm { field, .. }
            | Error::CertPath { field, .. } => field,
            Error::CounterNotIncreased { .. } => "response.authenticatorData.signCount",
        }
    }

    /// The field, for callers that re-root errors (a compound statement's
    /// parts report `attStmt[i]...`); `None` for errors about no single field.
    pub fn field_mut(&mut self) -> Option<&mut String> {
        match self {
            Error::Missing { field }
            | Error::WrongType { field, .. }
            | Error::Empty { field }
            | Error::NotBase64Url { field }
            | Error::TooLarge { field, .. }
            | Error::Malformed { field, .. }
            | Error::Mismatch { field, .. }
            | Error::Policy { field, .. }
            | Error::BadSignature { field }
            | Error::Algorithm { field, .. }
            | Error::CertPath { field, .. } => Some(field),
            Error::CounterNotIncreased { .. } => None,
        }
    }

    /// A stable machine-readable kind, for problem+json `type` and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Missing { .. } => "missing",
            Error::WrongType { .. } => "wrong_type",
            Error::Empty { .. } => "empty",
            Error::NotBase64Url { .. } => "not_base64url",
            Error::TooLarge { .. } => "too_large",
            Error::Malformed { .. } => "malformed",
            Error::Mismatch { .. } => "mismatch",
            Error::Policy { .. } => "policy",
            Error::BadSignature { .. } => "bad_signature",
            Error::Algorithm { .. } => "algorithm",
            Error::CounterNotIncreased { .. } => "counter_not_increased",
            Error::CertPath { .. } => "certificate_path",
        }
    }

    pub fn malformed(field: impl Into<String>, reason: impl fmt::Display) -> Error {
        Error::Malformed {
            field: field.into(),
            reason: reason.to_string(),
        }
    }

    pub fn mismatch(field: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::Mismatch {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub fn policy(field: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::Policy {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub fn bad_signature(field: impl Into<String>) -> Error {
        Error::BadSignature {
            field: field.into(),
        }
    }

    pub fn cert_path(field: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::CertPath {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Decodes unpadded (or padded) base64url, with a size bound checked on the
/// text before decoding.
pub fn b64url_decode(field: &str, text: &str, limit: usize) -> Result<Vec<u8>, Error> {
    // 4 characters carry 3 bytes; refuse before allocating.
    if text.len() > limit.div_ceil(3) * 4 + 4 {
        return Err(Error::TooLarge {
            field: field.to_string(),
            limit,
        });
    }
    // Padding is optional, but only as much as completes the last group.
    let bytes = URL_SAFE_LENIENT_PAD
        .decode(text)
        .map_err(|_| Error::NotBase64Url {
            field: field.to_string(),
        })?;
    if bytes.len() > limit {
        return Err(Error::TooLarge {
            field: field.to_string(),
            limit,
        });
    }
    Ok(bytes)
}

const URL_SAFE_LENIENT_PAD: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    base64::engine::GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

pub fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// COSE algorithm identifiers the engine knows (IANA COSE Algorithms).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum CoseAlgorithm {
    Es256,
    Es384,
    Es512,
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Ps384,
    Ps512,
    /// RSASSA-PKCS1-v1_5 with SHA-1: real Windows TPMs and the conformance suite use it.
    Rs1,
    /// EdDSA with Ed25519 (the only EdDSA curve accepted).
    EdDsa,
}

impl CoseAlgorithm {
    pub const ALL: [CoseAlgorithm; 11] = [
        CoseAlgorithm::Es256,
        CoseAlgorithm::Es384,
        CoseAlgorithm::Es512,
        CoseAlgorithm::Rs256,
        CoseAlgorithm::Rs384,
        CoseAlgorithm::Rs512,
        CoseAlgorithm::Ps256,
        CoseAlgorithm::Ps384,
        CoseAlgorithm::Ps512,
        CoseAlgorithm::Rs1,
        CoseAlgorithm::EdDsa,
    ];

    pub fn id(self) -> i64 {
        match self {
            CoseAlgorithm::Es256 => -7,
            CoseAlgorithm::Es384 => -35,
            CoseAlgorithm::Es512 => -36,
            CoseAlgorithm::Rs256 => -257,
            CoseAlgorithm::Rs384 => -258,
            CoseAlgorithm::Rs512 => -259,
            CoseAlgorithm::Ps256 => -37,
            CoseAlgorithm::Ps384 => -38,
            CoseAlgorithm::Ps512 => -39,
            CoseAlgorithm::Rs1 => -65535,
            CoseAlgorithm::EdDsa => -8,
        }
    }

    pub fn from_id(id: i64) -> Option<CoseAlgorithm> {
        CoseAlgorithm::ALL.into_iter().find(|a| a.id() == id)
    }

    pub fn name(self) -> &'static str {
        match self {
            CoseAlgorithm::Es256 => "ES256",
            CoseAlgorithm::Es384 => "ES384",
            CoseAlgorithm::Es512 => "ES512",
            CoseAlgorithm::Rs256 => "RS256",
            CoseAlgorithm::Rs384 => "RS384",
            CoseAlgorithm::Rs512 => "RS512",
            CoseAlgorithm::Ps256 => "PS256",
            CoseAlgorithm::Ps384 => "PS384",
            CoseAlgorithm::Ps512 => "PS512",
            CoseAlgorithm::Rs1 => "RS1",
            CoseAlgorithm::EdDsa => "EdDSA",
        }
    }
}

/// What the relying party is and accepts. Built once from configuration.
#[derive(Clone, Debug)]
pub struct RelyingParty {
    /// The RP ID: a registrable domain suffix of the origins (or an IP literal in tests).
    pub id: String,
    /// Accepted origins, compared exactly after parsing: `https://bank.example`,
    /// `https://bank.example:8443`, `android:apk-key-hash:<base64url sha256>`.
    pub origins: Vec<String>,
    /// Accept `crossOrigin: true` (ceremonies inside an iframe).
    pub allow_cross_origin: bool,
    /// When cross-origin is allowed: the top-level origins accepted in `topOrigin`.
    /// Empty means any top origin is accepted once cross-origin is allowed.
    pub top_origins: Vec<String>,
    /// Credential algorithms accepted at registration, in preference order
    /// (also the order of `pubKeyCredParams` in creation options).
    pub algorithms: Vec<CoseAlgorithm>,
}

impl RelyingParty {
    pub fn new(id: impl Into<String>, origins: Vec<String>) -> RelyingParty {
        RelyingParty {
            id: id.into(),
            origins,
            allow_cross_origin: false,
            top_origins: Vec::new(),
            algorithms: vec![
                CoseAlgorithm::Es256,
                CoseAlgorithm::EdDsa,
                CoseAlgorithm::Es384,
                CoseAlgorithm::Es512,
                CoseAlgorithm::Ps256,
                CoseAlgorithm::Rs256,
            ],
        }
    }

    pub fn rp_id_hash(&self) -> [u8; 32] {
        crate::keys::sha256(self.id.as_bytes())
    }
}

/// The user-verification requirement of a ceremony (WebAuthn `UserVerificationRequirement`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UserVerification {
    Required,
    #[default]
    Preferred,
    Discouraged,
}

impl UserVerification {
    pub fn as_str(self) -> &'static str {
        match self {
            UserVerification::Required => "required",
            UserVerification::Preferred => "preferred",
            UserVerification::Discouraged => "discouraged",
        }
    }
}

/// An AAGUID (or any 16 bytes) as UUID text, lowercase, grouped 8-4-4-4-12.
pub fn uuid_text(b: &[u8; 16]) -> String {
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// The 16 bytes of UUID text, dashes optional, either case; the inverse of
/// [`uuid_text`]. `None` for anything else (signs and stray characters
/// included).
pub fn parse_uuid(text: &str) -> Option<[u8; 16]> {
    let digits: Vec<u32> = text
        .chars()
        .filter(|c| *c != '-')
        .map(|c| c.to_digit(16))
        .collect::<Option<_>>()?;
    if digits.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (o, pair) in out.iter_mut().zip(digits.chunks(2)) {
        *o = (pair[0] * 16 + pair[1]) as u8;
    }
    Some(out)
}

/// Compares two byte strings in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}

#[cfg(test)]
mod uuid_tests {
    use super::*;

    #[test]
    fn uuid_text_and_parse_uuid_are_inverse() {
        let b: [u8; 16] = core::array::from_fn(|i| (i * 17) as u8);
        let text = uuid_text(&b);
        assert_eq!(text, "00112233-4455-6677-8899-aabbccddeeff");
        assert_eq!(parse_uuid(&text), Some(b));
        assert_eq!(parse_uuid(&text.replace('-', "").to_uppercase()), Some(b));
        for bad in [
            "",
            "zz",
            &text[1..],
            &format!("{text}0"),
            "+0112233-4455-6677-8899-aabbccddeeff",
        ] {
            assert_eq!(parse_uuid(bad), None, "{bad}");
        }
    }
}
