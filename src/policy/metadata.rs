//! Registration against the FIDO metadata of the authenticator's model.
//!
//! # Decisions
//!
//! * **Status reports**: a model with any report of
//!   `USER_VERIFICATION_BYPASS`, `ATTESTATION_KEY_COMPROMISE`,
//!   `USER_KEY_REMOTE_COMPROMISE`, `USER_KEY_PHYSICAL_COMPROMISE` or
//!   `REVOKED` in its history is refused, not only when it is the latest
//!   report. Peers differ here; the reason for the strict reading is that
//!   later reports (`UPDATE_AVAILABLE`, a new certification) concern newer
//!   firmware, and an attestation does not prove which firmware the
//!   registering authenticator runs. This applies to `none` attestation
//!   too: a self-asserted AAGUID of a compromised model is refused rather
//!   than trusted to be a different device.
//! * **Attestation type**: when the attestation proves something (not
//!   `none`), its type must be one the statement lists
//!   (`basic_full`, `basic_surrogate` for self attestation, `attca`,
//!   `anonca`).
//! * **Algorithm**: the credential's algorithm must be one of the
//!   statement's `authenticationAlgorithms`, when the statement lists any.
//! * **No entry**: nothing here refuses; the registration is simply not
//!   anchored (`attestationTrusted: false`), and tier policy decides.

use crate::mds::stored::Known;
use crate::webauthn::attestation::AttestationType;
use crate::webauthn::registration::Registration;
use crate::webauthn::{CoseAlgorithm, Error};

/// Status reports that refuse a registration wherever they appear.
pub const REFUSED_STATUSES: [&str; 5] = [
    "USER_VERIFICATION_BYPASS",
    "ATTESTATION_KEY_COMPROMISE",
    "USER_KEY_REMOTE_COMPROMISE",
    "USER_KEY_PHYSICAL_COMPROMISE",
    "REVOKED",
];

const FIELD: &str = "response.attestationObject";

/// The MDS name of an attestation type.
fn mds_attestation_type(t: AttestationType) -> Option<&'static str> {
    match t {
        AttestationType::Basic => Some("basic_full"),
        AttestationType::SelfAttestation => Some("basic_surrogate"),
        AttestationType::AttCa => Some("attca"),
        AttestationType::AnonCa => Some("anonca"),
        AttestationType::None => None,
    }
}

/// The MDS `authenticationAlgorithms` names a COSE algorithm may appear as.
fn mds_algorithms(alg: CoseAlgorithm) -> &'static [&'static str] {
    match alg {
        CoseAlgorithm::Es256 => &["secp256r1_ecdsa_sha256_raw", "secp256r1_ecdsa_sha256_der"],
        CoseAlgorithm::Es384 => &["secp384r1_ecdsa_sha384_raw", "secp384r1_ecdsa_sha384_der"],
        CoseAlgorithm::Es512 => &["secp521r1_ecdsa_sha512_raw", "secp521r1_ecdsa_sha512_der"],
        CoseAlgorithm::Rs256 => &["rsassa_pkcsv15_sha256_raw"],
        CoseAlgorithm::Rs384 => &["rsassa_pkcsv15_sha384_raw"],
        CoseAlgorithm::Rs512 => &["rsassa_pkcsv15_sha512_raw"],
        CoseAlgorithm::Rs1 => &["rsassa_pkcsv15_sha1_raw"],
        CoseAlgorithm::Ps256 => &["rsassa_pss_sha256_raw", "rsassa_pss_sha256_der"],
        CoseAlgorithm::Ps384 => &["rsassa_pss_sha384_raw", "rsassa_pss_sha384_der"],
        CoseAlgorithm::Ps512 => &["rsassa_pss_sha512_raw", "rsassa_pss_sha512_der"],
        CoseAlgorithm::EdDsa => &["ed25519_eddsa_sha512_raw"],
    }
}

/// The first report in a model's history that refuses it, if any: what
/// registration refuses and what a catalog update flags credentials for.
pub fn refusing_status(known: &Known) -> Option<&(String, Option<String>)> {
    known
        .statuses
        .iter()
        .find(|(s, _)| REFUSED_STATUSES.contains(&s.as_str()))
}

/// Why the model's metadata refuses it, in the words registration
/// refusals and credential flags both use.
pub fn refusal_reason(known: &Known) -> Option<String> {
    let (status, date) = refusing_status(known)?;
    Some(format!(
        "FIDO metadata reports {status} for {}{}",
        known
            .description
            .as_deref()
            .unwrap_or("this authenticator model"),
        date.as_deref()
            .map(|d| format!(" (effective {d})"))
            .unwrap_or_default()
    ))
}

/// Checks a verified registration against its model's metadata.
pub fn check_registration(known: &Known, reg: &Registration) -> Result<(), Error> {
    let model = known
        .description
        .as_deref()
        .unwrap_or("this authenticator model");
    if let Some(reason) = refusal_reason(known) {
        return Err(Error::policy(FIELD, reason));
    }
    if reg.attestation_type == AttestationType::None {
        return Ok(());
    }
    if let Some(t) = mds_attestation_type(reg.attestation_type)
        && !known.attestation_types.is_empty()
        && !known.attestation_types.iter().any(|k| k == t)
    {
        return Err(Error::policy(
            FIELD,
            format!(
                "attestation type {t} is not one the metadata lists for {model} ({})",
                known.attestation_types.join(", ")
            ),
        ));
    }
    let names = mds_algorithms(reg.public_key.alg);
    if !known.authentication_algorithms.is_empty()
        && !known
            .authentication_algorithms
            .iter()
            .any(|a| names.contains(&a.as_str()))
    {
        return Err(Error::policy(
            FIELD,
            format!(
                "credential algorithm {} is not one the metadata lists for {model} ({})",
                reg.public_key.alg.name(),
                known.authentication_algorithms.join(", ")
            ),
        ));
    }
    Ok(())
}
