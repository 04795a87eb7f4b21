//! Attestation statement formats (WebAuthn §8), one module per format.
//!
//! Each format's `verify` checks the statement's own rules (signature over
//! authenticatorData || clientDataHash, certificate requirements, format
//! specific bindings) and returns the attestation type and the trust path.
//! It does not decide whether the path ends at a trusted root: the caller
//! does that once, for every format, with [`super::certpath::validate`].

pub mod android_key;
pub mod android_safetynet;
pub mod apple;
pub mod compound;
pub mod fido_u2f;
pub mod none;
pub mod packed;
pub mod tpm;

use std::time::{Duration, SystemTime};

use ciborium::Value;

use super::Error;
use super::authenticator_data::AuthenticatorData;
use super::certpath::Cert;

/// WebAuthn §6.5.3 attestation types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum AttestationType {
    #[serde(rename = "basic")]
    Basic,
    #[serde(rename = "attca")]
    AttCa,
    #[serde(rename = "anonca")]
    AnonCa,
    #[serde(rename = "self")]
    SelfAttestation,
    #[serde(rename = "none")]
    None,
}

impl AttestationType {
    pub fn as_str(self) -> &'static str {
        match self {
            AttestationType::Basic => "basic",
            AttestationType::AttCa => "attca",
            AttestationType::AnonCa => "anonca",
            AttestationType::SelfAttestation => "self",
            AttestationType::None => "none",
        }
    }
}

/// Relying-party choices that decide borderline statements. The defaults
/// are the strict ones; each relaxation is named after what it lets in.
#[derive(Clone, Debug)]
pub struct AttestationPolicy {
    /// Formats accepted (`None`: all the engine knows).
    pub formats: Option<Vec<String>>,
    /// Accept an x5c that carries the trust anchor itself (FIDO conformance
    /// refuses this for packed; some real authenticators send it). android-key
    /// chains always end at the root, so that format ignores this setting.
    pub allow_root_in_x5c: bool,
    /// android-safetynet: require `ctsProfileMatch: true`.
    pub safetynet_require_cts_profile: bool,
    /// android-safetynet: how old `timestampMs` may be.
    pub safetynet_max_age: Duration,
    /// android-safetynet: how far in the future `timestampMs` may be (clock skew).
    pub safetynet_max_skew: Duration,
    /// android-key: accept keys attested by the Android software keystore
    /// (security level Software), which proves nothing about hardware.
    pub android_allow_software: bool,
}

impl Default for AttestationPolicy {
    fn default() -> Self {
        AttestationPolicy {
            formats: None,
            allow_root_in_x5c: false,
            safetynet_require_cts_profile: true,
            safetynet_max_age: Duration::from_secs(60),
            // Our clock may run behind Google's; a few seconds is not an
            // attack window, a refused genuine phone is a support call.
            safetynet_max_skew: Duration::from_secs(10),
            android_allow_software: false,
        }
    }
}

/// Everything a format needs to verify its statement.
pub struct Statement<'a> {
    pub fmt: &'a str,
    /// The `attStmt` map.
    pub att_stmt: &'a Value,
    pub auth_data: &'a AuthenticatorData,
    pub client_data_hash: &'a [u8; 32],
    pub policy: &'a AttestationPolicy,
    pub now: SystemTime,
}

impl Statement<'_> {
    /// The bytes every attestation signature covers.
    pub fn signed_data(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.auth_data.raw.len() + 32);
        v.extend_from_slice(&self.auth_data.raw);
        v.extend_from_slice(self.client_data_hash);
        v
    }

    /// A member of the attStmt map by text key.
    pub fn member(&self, name: &str) -> Option<&Value> {
        map_get(self.att_stmt, name)
    }
}

/// What a format verified.
#[derive(Clone, Debug)]
pub struct Verified {
    pub attestation_type: AttestationType,
    /// Certificates, leaf first, as presented (empty for self and none).
    pub trust_path: Vec<Cert>,
    /// The format's rules allow the trust anchor inside `trust_path`
    /// (android-key chains always include it).
    pub root_in_path_allowed: bool,
}

/// Verifies the statement for its `fmt`.
pub fn verify(stmt: &Statement<'_>) -> Result<Verified, Error> {
    if let Some(formats) = &stmt.policy.formats
        && !formats.iter().any(|f| f == stmt.fmt)
    {
        return Err(Error::policy(
            "response.attestationObject.fmt",
            format!("attestation format {:?} is not accepted", stmt.fmt),
        ));
    }
    if !matches!(stmt.att_stmt, Value::Map(_)) && stmt.fmt != "compound" {
        return Err(Error::WrongType {
            field: "response.attestationObject.attStmt".into(),
            expected: "a CBOR map",
        });
    }
    match stmt.fmt {
        "packed" => packed::verify(stmt),
        "tpm" => tpm::verify(stmt),
        "android-key" => android_key::verify(stmt),
        "android-safetynet" => android_safetynet::verify(stmt),
        "fido-u2f" => fido_u2f::verify(stmt),
        "apple" => apple::verify(stmt),
        "none" => none::verify(stmt),
        "compound" => compound::verify(stmt),
        other => Err(Error::malformed(
            "response.attestationObject.fmt",
            format!("unknown attestation format {other:?}"),
        )),
    }
}

/// Looks up a text key in a CBOR map.
pub fn map_get<'v>(map: &'v Value, name: &str) -> Option<&'v Value> {
    match map {
        Value::Map(entries) => entries
            .iter()
            .find(|(k, _)| matches!(k, Value::Text(t) if t == name))
            .map(|(_, v)| v),
        _ => None,
    }
}

/// `attStmt.<name>` as a byte string: missing, wrong type and empty are
/// each their own error.
pub fn bytes_member<'v>(stmt: &'v Statement<'_>, name: &str) -> Result<&'v [u8], Error> {
    let field = format!("response.attestationObject.attStmt.{name}");
    match stmt.member(name) {
        None => Err(Error::Missing { field }),
        Some(Value::Bytes(b)) if b.is_empty() => Err(Error::Empty { field }),
        Some(Value::Bytes(b)) => Ok(b),
        Some(_) => Err(Error::WrongType {
            field,
            expected: "a byte string",
        }),
    }
}

/// `attStmt.alg` as a COSE algorithm identifier.
pub fn alg_member(stmt: &Statement<'_>) -> Result<i64, Error> {
    let field = "response.attestationObject.attStmt.alg".to_string();
    match stmt.member("alg") {
        None => Err(Error::Missing { field }),
        Some(Value::Integer(i)) => {
            i64::try_from(*i).map_err(|_| Error::malformed(field, "out of range"))
        }
        Some(_) => Err(Error::WrongType {
            field,
            expected: "an integer (COSE algorithm)",
        }),
    }
}

/// The field path of an attStmt member, for errors.
pub fn field(name: &str) -> String {
    format!("response.attestationObject.attStmt.{name}")
}

/// Refuses attStmt members other than `allowed`, non-text member names and
/// repeated names: §8 defines each statement as a closed CDDL map, and with a
/// repeated name two readers of the same bytes could see different
/// statements. `ecdaaKeyId` gets its own message: ECDAA left WebAuthn in
/// Level 3. Every name must be allowed and unique, so the scan stops within
/// `allowed.len() + 1` entries however long the map is.
pub fn check_members(stmt: &Statement<'_>, allowed: &[&str]) -> Result<(), Error> {
    const ATT_STMT: &str = "response.attestationObject.attStmt";
    let Value::Map(entries) = stmt.att_stmt else {
        return Err(Error::WrongType {
            field: ATT_STMT.into(),
            expected: "a CBOR map",
        });
    };
    for (i, (key, _)) in entries.iter().enumerate() {
        let Value::Text(name) = key else {
            return Err(Error::malformed(
                ATT_STMT,
                "member names must be text strings",
            ));
        };
        if name == "ecdaaKeyId" {
            return Err(Error::policy(
                field("ecdaaKeyId"),
                "ECDAA is not part of WebAuthn Level 3 and is not accepted",
            ));
        }
        if !allowed.contains(&name.as_str()) {
            return Err(Error::malformed(
                field(&shorten(name)),
                format!("is not a member of a {:?} attestation statement", stmt.fmt),
            ));
        }
        if entries.iter().take(i).any(|(k, _)| k == key) {
            return Err(Error::malformed(field(name), "appears more than once"));
        }
    }
    Ok(())
}

/// At most 64 characters of an attacker-chosen string, for error messages.
pub fn shorten(text: &str) -> String {
    text.chars().take(64).collect()
}
