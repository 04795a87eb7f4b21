//! FIDO Metadata Service v3 (MDS3): verifying a metadata BLOB and reading its
//! entries into a catalog.
//!
//! # Model
//!
//! The FIDO Alliance publishes one signed document, the *BLOB*: a compact JWS
//! (`header.payload.signature`, each part base64url) whose header carries the
//! signer's certificate chain (`x5c`) and whose payload lists, per
//! authenticator model, its metadata statement (trust anchors for its
//! attestation, key protection, algorithms, ...) and its status reports
//! (certification levels, and compromises such as
//! `ATTESTATION_KEY_COMPROMISE`). A relying party that trusts FIDO's root
//! therefore trusts every statement in a BLOB that root's hierarchy signed.
//!
//! Verification ([`blob::verify`]) is pure: the BLOB bytes, the pinned roots,
//! the CRLs and the time are arguments. Nothing is fetched (`x5u` is refused,
//! CRLs are given), no clock is read, nothing is stored. Downloading,
//! storing and serving the catalog belong to the callers. The steps, in order:
//!
//! 1. The JWS shape: at most [`limits::BLOB`] bytes, three unpadded base64url
//!    parts (all decoded here), a JSON header with `alg` RS256, ES256 or
//!    PS256, `x5c` and no `x5u`, `jku`, `jwk` or `crit`.
//! 2. The signature over `header '.' payload` (the ASCII text as received)
//!    with the key of `x5c[0]`.
//! 3. The chain: `x5c` must lead to one of the pinned roots at the given
//!    time, with the path rules of [`crate::webauthn::certpath`].
//! 4. Revocation: with CRLs given, every certificate of the chain below the
//!    root must be covered by a current CRL from its issuer, signed by that
//!    issuer, and not listed in it ([`crl`] explains the timing rule).
//! 5. The payload: `no`, `nextUpdate`, `legalHeader` and every entry,
//!    strictly ([`blob`] explains why one bad entry refuses the BLOB, and
//!    the one exception: an attestation root that is not a parsable
//!    certificate is left out and reported in [`blob::Blob::warnings`]).
//! 6. Freshness: a BLOB whose `nextUpdate` day has passed is
//!    [`MdsError::Stale`].
//!
//! What is authentic is then a [`blob::Blob`]; its [`blob::Catalog`] answers
//! by AAGUID (FIDO2), attestation certificate key identifier (U2F) or AAID
//! (UAF). Whether a newer BLOB may replace a held one is
//! [`blob::check_newer`]: the serial `no` must strictly increase, so an old
//! (validly signed) BLOB cannot be replayed to undo a compromise report.
//!
//! Every failure is an [`MdsError`] whose variant names the cause and whose
//! fields name the part, the header field, the payload path
//! (`entries[12].metadataStatement.attestationRootCertificates[0]`), the
//! certificate or the CRL concerned.

pub mod blob;
pub mod crl;
pub mod fetch;
pub mod stored;

use crate::webauthn::certpath::Cert;

/// The FIDO Metadata Service's production root (GlobalSign Root CA - R3),
/// trusted for the BLOB when no other root is given.
pub const FIDO_MDS_ROOT: &[u8] = include_bytes!("../../certs/globalsign-root-r3.pem");

/// Size bounds, checked before anything is allocated or parsed.
pub mod limits {
    /// A whole BLOB. The production BLOB is a few MiB; the conformance one 2.3 MB.
    pub const BLOB: usize = 16 * 1024 * 1024;
    /// The JWS header (it holds the x5c certificates).
    pub const HEADER: usize = 64 * 1024;
    /// The JWS signature (RSA-8192 is 1024 bytes).
    pub const SIGNATURE: usize = 1024;
    /// Certificates in the header's x5c.
    pub const X5C_CERTS: usize = 8;
    /// Entries in one BLOB (the production BLOB has a few hundred).
    pub const ENTRIES: usize = 100_000;
    /// Attestation root certificates in one metadata statement.
    pub const ROOTS_PER_STATEMENT: usize = 256;
    /// Status reports of one entry.
    pub const STATUS_REPORTS: usize = 1_000;
    /// Strings in one list of a metadata statement (attestationTypes, ...).
    pub const STRINGS: usize = 1_000;
    /// Attestation certificate key identifiers of one entry.
    pub const KEY_IDENTIFIERS: usize = 10_000;
    /// One attestation certificate key identifier, in bytes.
    pub const KEY_IDENTIFIER: usize = 64;
    /// One CRL.
    pub const CRL: usize = 16 * 1024 * 1024;
    /// Revoked entries in one CRL.
    pub const CRL_ENTRIES: usize = 1_000_000;
    /// Roots in one file given to [`super::parse_roots`].
    pub const ROOTS: usize = 64;
}

/// Why a BLOB or a CRL was refused. Each variant names its cause; the fields
/// name what it concerns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MdsError {
    /// An input, or a list inside it, exceeds its bound.
    #[error("{field}: larger than {limit}")]
    TooLarge { field: String, limit: usize },
    /// The compact JWS itself: `part` is `blob`, `header`, `payload` or `signature`.
    #[error("JWS {part}: {reason}")]
    Jws { part: &'static str, reason: String },
    /// A JWS header field (`alg`, `typ`, `x5c[1]`, `x5u`, `crit`, ...).
    #[error("JWS header {field}: {reason}")]
    Header { field: String, reason: String },
    /// The JWS signature does not verify with the key of `x5c[0]`.
    #[error("JWS signature does not verify with the key of header x5c[0]")]
    Signature,
    /// The x5c chain does not lead to a pinned root (or breaks a path rule).
    #[error("certificate chain: {0}")]
    Chain(String),
    /// A certificate of the chain is listed in its issuer's CRL.
    #[error("{subject} (serial {serial}) is revoked (listed in crls[{crl}])")]
    Revoked {
        subject: String,
        serial: String,
        crl: usize,
    },
    /// A CRL that cannot be used: unparsable, badly signed, out of date,
    /// with an unsupported critical extension. `index` is its position in
    /// the list given to [`blob::verify`], when there is one.
    #[error("{}: {reason}", crl_label(*index))]
    Crl {
        index: Option<usize>,
        reason: String,
    },
    /// CRLs were given, but none from this certificate's issuer (covering it).
    #[error("no CRL from {issuer} covering {subject} was given")]
    NoCrl { subject: String, issuer: String },
    /// The payload: `field` is its JSON path (`no`, `entries[3].aaguid`).
    #[error("payload {field}: {reason}")]
    Payload { field: String, reason: String },
    /// Authentic, but its `nextUpdate` day has passed.
    #[error("the BLOB is stale: its nextUpdate {next_update} has passed")]
    Stale { next_update: String },
    /// The BLOB's serial is not greater than the one held.
    #[error("BLOB no {got} is not newer than the held no {held}")]
    NotNewer { held: u64, got: u64 },
}

fn crl_label(index: Option<usize>) -> String {
    match index {
        Some(i) => format!("crls[{i}]"),
        None => "CRL".to_string(),
    }
}

impl MdsError {
    /// A stable machine-readable kind, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            MdsError::TooLarge { .. } => "too_large",
            MdsError::Jws { .. } => "jws",
            MdsError::Header { .. } => "header",
            MdsError::Signature => "signature",
            MdsError::Chain(_) => "chain",
            MdsError::Revoked { .. } => "revoked",
            MdsError::Crl { .. } => "crl",
            MdsError::NoCrl { .. } => "no_crl",
            MdsError::Payload { .. } => "payload",
            MdsError::Stale { .. } => "stale",
            MdsError::NotNewer { .. } => "not_newer",
        }
    }

    pub(crate) fn header(field: impl Into<String>, reason: impl Into<String>) -> MdsError {
        MdsError::Header {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn payload(field: impl Into<String>, reason: impl Into<String>) -> MdsError {
        MdsError::Payload {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn crl(index: Option<usize>, reason: impl Into<String>) -> MdsError {
        MdsError::Crl {
            index,
            reason: reason.into(),
        }
    }
}

/// Reads trust roots (the MDS root, e.g. GlobalSign Root CA - R3) from DER
/// (one certificate) or PEM (one or more `CERTIFICATE` blocks). Each keeps
/// its exact DER and is named `label[i]` in later errors.
pub fn parse_roots(der_or_pem: &[u8], label: &str) -> Result<Vec<Cert>, MdsError> {
    let bad = |field: &str, reason: String| MdsError::Chain(format!("{field}: {reason}"));
    let Some(text) = pem_text(der_or_pem) else {
        let field = format!("{label}[0]");
        return Cert::parse(der_or_pem, &field)
            .map(|c| vec![c])
            .map_err(|e| bad(&field, e.to_string()));
    };
    let blocks = pem_blocks(text, "CERTIFICATE").map_err(|reason| bad(label, reason))?;
    if blocks.len() > limits::ROOTS {
        return Err(MdsError::TooLarge {
            field: label.to_string(),
            limit: limits::ROOTS,
        });
    }
    blocks
        .iter()
        .enumerate()
        .map(|(i, der)| {
            let field = format!("{label}[{i}]");
            Cert::parse(der, &field).map_err(|e| bad(&field, e.to_string()))
        })
        .collect()
}

/// The input as text when it looks like PEM (leading whitespace allowed).
pub(crate) fn pem_text(bytes: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(bytes).ok()?;
    text.trim_start().starts_with("-----BEGIN ").then_some(text)
}

/// The DER of every PEM block of `label` in `text`, in order. Blocks of
/// other labels are an error: a CRL file with a certificate in it is a
/// mistake worth reporting.
pub fn pem_blocks(text: &str, label: &str) -> Result<Vec<Vec<u8>>, String> {
    const BEGIN: &str = "-----BEGIN ";
    const END: &str = "-----END ";
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let block = &rest[start..];
        let end = block
            .find(END)
            .and_then(|e| {
                block[e + END.len()..]
                    .find("-----")
                    .map(|d| e + END.len() + d + 5)
            })
            .ok_or_else(|| format!("PEM block {} has no END line", blocks.len()))?;
        let (found, der) = der::pem::decode_vec(&block.as_bytes()[..end])
            .map_err(|e| format!("PEM block {}: {e}", blocks.len()))?;
        if found != label {
            return Err(format!(
                "PEM block {} is a {found}, not a {label}",
                blocks.len()
            ));
        }
        blocks.push(der);
        rest = &block[end..];
    }
    if blocks.is_empty() {
        return Err(format!("no PEM {} in the file", label.to_lowercase()));
    }
    Ok(blocks)
}

/// Uppercase hex, as serial numbers are usually shown.
pub(crate) fn hex_upper(bytes: &[u8]) -> String {
    crate::audit::hex(bytes).to_uppercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_cause_and_field() {
        let e = MdsError::crl(Some(2), "expired");
        assert_eq!(e.to_string(), "crls[2]: expired");
        assert_eq!(e.kind(), "crl");
        assert_eq!(MdsError::crl(None, "x").to_string(), "CRL: x");
        let e = MdsError::payload("entries[3].aaguid", "not a UUID");
        assert_eq!(e.to_string(), "payload entries[3].aaguid: not a UUID");
        assert_eq!(
            MdsError::NotNewer { held: 9, got: 9 }.to_string(),
            "BLOB no 9 is not newer than the held no 9"
        );
    }

    #[test]
    fn pem_blocks_are_split_and_labels_checked() {
        let der = [0x30, 0x03, 0x02, 0x01, 0x05];
        let pem = |label: &str| {
            der::pem::encode_string(label, der::pem::LineEnding::LF, &der).unwrap_or_default()
        };
        let two = format!("junk\n{}{}", pem("X509 CRL"), pem("X509 CRL"));
        assert_eq!(pem_blocks(&two, "X509 CRL").unwrap(), vec![der.to_vec(); 2]);
        let mixed = format!("{}{}", pem("X509 CRL"), pem("CERTIFICATE"));
        assert!(
            pem_blocks(&mixed, "X509 CRL")
                .unwrap_err()
                .contains("is a CERTIFICATE")
        );
        assert!(pem_blocks("nothing", "X509 CRL").is_err());
        assert!(pem_text(b"\n-----BEGIN X").is_some());
        assert!(pem_text(&der).is_none());
        assert!(parse_roots(b"-----BEGIN CERTIFICATE-----\n", "roots").is_err());
    }
}
