//! X.509 for attestation: certificates parsed with x509-cert, their
//! signatures verified with aws-lc-rs, and certificate paths validated to
//! supplied trust anchors at a supplied time.
//!
//! # Path rules ([`validate`])
//!
//! The chain is taken leaf first, exactly as presented: nothing is reordered
//! or fetched, because an authenticator that sends its chain out of order is
//! what the FIDO conformance tests expect a server to refuse.
//!
//! - Every certificate, and the anchor used, must be valid at `now`.
//! - Each `chain[i]` is issued by `chain[i + 1]`: the issuer name equals the
//!   next subject (compared as encoded) and the signature verifies with the
//!   next key. A chain whose issuer sits elsewhere in it is reported as out of
//!   order; a signature that fails is reported as a bad signature.
//! - Every issuer, anchor included, is a CA (basicConstraints cA true), has
//!   keyCertSign when it carries keyUsage, and its pathLenConstraint covers
//!   the non-self-issued CA certificates below it (RFC 5280 §6.1.4).
//! - A certificate with a critical extension the engine does not process is
//!   refused (RFC 5280 §4.2).
//! - A self-issued certificate in the chain is a root the authenticator should
//!   not have sent; it is refused unless [`PathOptions::allow_root_in_chain`],
//!   or unless it is the only certificate and is itself a trust anchor (a
//!   pinned attestation certificate).
//! - With no anchors, the links above are all checked (and a self-issued top
//!   must verify its own signature) but the result is not anchored.
//! - With anchors, the path must end at one: either the top certificate is an
//!   anchor (same DER, or same subject and SubjectPublicKeyInfo and
//!   self-signed by that key: a root re-issued with a new serial) when that
//!   is allowed (option, or a lone pinned certificate), or an
//!   anchor whose subject is the top's issuer, valid at `now`, signed it.
//!   Only anchors with that subject are tried, so a large trust store costs
//!   one name comparison per anchor, not one signature.
//!
//! Signatures are checked over the TBSCertificate bytes as received, never a
//! re-encoding. A trust anchor's basicConstraints falls back to a BER reading
//! when strict DER fails (a production vendor root needs it); certificates
//! the authenticator sends get no such leniency.
//!
//! Revocation is not checked here: attestation certificates are revoked
//! through metadata (MDS status reports), not CRLs or OCSP.

use std::time::SystemTime;

use der::asn1::ObjectIdentifier;
use der::{Decode, Encode};
use x509_cert::Certificate;

use super::cose_key::VerifyingKey;
use super::{CoseAlgorithm, Error, limits};

pub mod oid {
    use der::asn1::ObjectIdentifier as O;
    pub const ECDSA_SHA256: O = O::new_unwrap("1.2.840.10045.4.3.2");
    pub const ECDSA_SHA384: O = O::new_unwrap("1.2.840.10045.4.3.3");
    pub const ECDSA_SHA512: O = O::new_unwrap("1.2.840.10045.4.3.4");
    pub const RSA_SHA1: O = O::new_unwrap("1.2.840.113549.1.1.5");
    pub const RSA_SHA256: O = O::new_unwrap("1.2.840.113549.1.1.11");
    pub const RSA_SHA384: O = O::new_unwrap("1.2.840.113549.1.1.12");
    pub const RSA_SHA512: O = O::new_unwrap("1.2.840.113549.1.1.13");
    pub const RSA_PSS: O = O::new_unwrap("1.2.840.113549.1.1.10");
    pub const ED25519: O = O::new_unwrap("1.3.101.112");
    pub const SHA256: O = O::new_unwrap("2.16.840.1.101.3.4.2.1");
    pub const SHA384: O = O::new_unwrap("2.16.840.1.101.3.4.2.2");
    pub const SHA512: O = O::new_unwrap("2.16.840.1.101.3.4.2.3");
    pub const BASIC_CONSTRAINTS: O = O::new_unwrap("2.5.29.19");
    pub const KEY_USAGE: O = O::new_unwrap("2.5.29.15");
    pub const EXT_KEY_USAGE: O = O::new_unwrap("2.5.29.37");
    pub const SUBJECT_ALT_NAME: O = O::new_unwrap("2.5.29.17");
    /// id-fido-gen-ce-aaguid
    pub const FIDO_AAGUID: O = O::new_unwrap("1.3.6.1.4.1.45724.1.1.4");
    /// Android key attestation extension.
    pub const ANDROID_KEY_DESCRIPTION: O = O::new_unwrap("1.3.6.1.4.1.11129.2.1.17");
    /// Apple anonymous attestation nonce.
    pub const APPLE_NONCE: O = O::new_unwrap("1.2.840.113635.100.8.2");
    /// tcg-kp-AIKCertificate
    pub const TCG_KP_AIK_CERTIFICATE: O = O::new_unwrap("2.23.133.8.3");
}

/// A certificate with the exact DER it came in.
#[derive(Clone, Debug)]
pub struct Cert {
    pub der: Vec<u8>,
    pub cert: Certificate,
    /// JSON path, for errors (`attStmt.x5c[0]`).
    pub field: String,
}

impl Cert {
    pub fn parse(der_bytes: &[u8], field: impl Into<String>) -> Result<Cert, Error> {
        let field = field.into();
        if der_bytes.is_empty() {
            return Err(Error::Empty { field });
        }
        if der_bytes.len() > limits::CERTIFICATE {
            return Err(Error::TooLarge {
                field,
                limit: limits::CERTIFICATE,
            });
        }
        let cert = Certificate::from_der(der_bytes)
            .map_err(|e| Error::malformed(&field, format!("not an X.509 certificate: {e}")))?;
        Ok(Cert {
            der: der_bytes.to_vec(),
            cert,
            field,
        })
    }

    pub fn tbs(&self) -> &x509_cert::TbsCertificate {
        self.cert.tbs_certificate()
    }

    pub fn public_key(&self) -> Result<VerifyingKey, Error> {
        let spki = self
            .tbs()
            .subject_public_key_info()
            .to_der()
            .map_err(|e| Error::malformed(&self.field, e))?;
        VerifyingKey::from_spki_der(&spki, &format!("{}.subjectPublicKeyInfo", self.field))
    }

    pub fn subject(&self) -> String {
        self.tbs().subject().to_string()
    }

    pub fn issuer(&self) -> String {
        self.tbs().issuer().to_string()
    }

    /// Verifies that `issuer_key` signed this certificate, over the
    /// TBSCertificate bytes exactly as received.
    pub fn verify_signed_by(&self, issuer_key: &VerifyingKey) -> Result<(), Error> {
        verify_issued(self, issuer_key)
    }

    pub fn is_self_issued(&self) -> bool {
        self.tbs().subject() == self.tbs().issuer()
    }

    /// The raw value (the OCTET STRING contents) of an extension, and whether
    /// it is critical.
    pub fn extension(&self, id: &ObjectIdentifier) -> Option<(&[u8], bool)> {
        self.tbs()
            .extensions()?
            .iter()
            .find(|e| &e.extn_id == id)
            .map(|e| (e.extn_value.as_bytes(), e.critical))
    }

    /// Fails with the certificate's field unless `now` lies in its validity period.
    pub fn check_validity(&self, now: SystemTime) -> Result<(), Error> {
        let validity = self.tbs().validity();
        let not_before = validity.not_before.to_system_time();
        let not_after = validity.not_after.to_system_time();
        if now < not_before {
            return Err(Error::cert_path(
                &self.field,
                format!("not valid before {}", validity.not_before),
            ));
        }
        if now > not_after {
            return Err(Error::cert_path(
                &self.field,
                format!("expired at {}", validity.not_after),
            ));
        }
        Ok(())
    }

    /// basicConstraints: (cA, pathLenConstraint). Absent means not a CA.
    pub fn basic_constraints(&self) -> Result<(bool, Option<u8>), Error> {
        match self.extension(&oid::BASIC_CONSTRAINTS) {
            None => Ok((false, None)),
            Some((value, _)) => {
                let bc = x509_cert::ext::pkix::BasicConstraints::from_der(value)
                    .map_err(|e| Error::malformed(&self.field, format!("basicConstraints: {e}")))?;
                Ok((bc.ca, bc.path_len_constraint))
            }
        }
    }

    /// keyUsage bits, if the extension is present.
    pub fn key_usage(&self) -> Result<Option<x509_cert::ext::pkix::KeyUsage>, Error> {
        match self.extension(&oid::KEY_USAGE) {
            None => Ok(None),
            Some((value, _)) => x509_cert::ext::pkix::KeyUsage::from_der(value)
                .map(Some)
                .map_err(|e| Error::malformed(&self.field, format!("keyUsage: {e}"))),
        }
    }

    /// The certificate version: 0 for v1, 2 for v3.
    pub fn version_number(&self) -> u8 {
        match self.tbs().version() {
            x509_cert::Version::V1 => 0,
            x509_cert::Version::V2 => 1,
            x509_cert::Version::V3 => 2,
        }
    }
}

/// Maps a certificate's signatureAlgorithm to the COSE algorithm that
/// verifies it (the curve comes from the issuer's key).
pub fn signature_algorithm(
    alg: &spki::AlgorithmIdentifierOwned,
    field: &str,
) -> Result<CoseAlgorithm, Error> {
    let o = alg.oid;
    Ok(if o == oid::ECDSA_SHA256 {
        CoseAlgorithm::Es256
    } else if o == oid::ECDSA_SHA384 {
        CoseAlgorithm::Es384
    } else if o == oid::ECDSA_SHA512 {
        CoseAlgorithm::Es512
    } else if o == oid::RSA_SHA256 {
        CoseAlgorithm::Rs256
    } else if o == oid::RSA_SHA384 {
        CoseAlgorithm::Rs384
    } else if o == oid::RSA_SHA512 {
        CoseAlgorithm::Rs512
    } else if o == oid::RSA_SHA1 {
        CoseAlgorithm::Rs1
    } else if o == oid::ED25519 {
        CoseAlgorithm::EdDsa
    } else if o == oid::RSA_PSS {
        let hash = alg
            .parameters
            .as_ref()
            .and_then(|p| p.decode_as::<PssParamsLoose>().ok())
            .and_then(|p| p.hash)
            .map(|h| h.oid);
        match hash {
            Some(h) if h == oid::SHA256 => CoseAlgorithm::Ps256,
            Some(h) if h == oid::SHA384 => CoseAlgorithm::Ps384,
            Some(h) if h == oid::SHA512 => CoseAlgorithm::Ps512,
            _ => {
                return Err(Error::malformed(
                    field,
                    "RSASSA-PSS with an unsupported hash",
                ));
            }
        }
    } else {
        return Err(Error::malformed(
            field,
            format!("signature algorithm {o} is not supported"),
        ));
    })
}

/// RSASSA-PSS-params, read leniently: only the hash matters here, and the
/// other fields (mask generation, salt length, trailer) may follow.
#[derive(der::Sequence)]
struct PssParamsLoose {
    #[asn1(context_specific = "0", optional = "true")]
    hash: Option<spki::AlgorithmIdentifierOwned>,
    #[asn1(context_specific = "1", optional = "true")]
    mgf: Option<der::Any>,
    #[asn1(context_specific = "2", optional = "true")]
    salt: Option<der::Any>,
    #[asn1(context_specific = "3", optional = "true")]
    trailer: Option<der::Any>,
}

/// Parses an `x5c` array (CBOR array of byte strings) into certificates,
/// leaf first, naming each element in errors.
pub fn parse_x5c(value: &ciborium::Value, field: &str) -> Result<Vec<Cert>, Error> {
    let ciborium::Value::Array(items) = value else {
        return Err(Error::WrongType {
            field: field.to_string(),
            expected: "an array of certificates",
        });
    };
    if items.is_empty() {
        return Err(Error::Empty {
            field: field.to_string(),
        });
    }
    if items.len() > limits::X5C_CERTS {
        return Err(Error::TooLarge {
            field: field.to_string(),
            limit: limits::X5C_CERTS,
        });
    }
    items
        .iter()
        .enumerate()
        .map(|(i, v)| match v {
            ciborium::Value::Bytes(b) => Cert::parse(b, format!("{field}[{i}]")),
            _ => Err(Error::WrongType {
                field: format!("{field}[{i}]"),
                expected: "a byte string (DER certificate)",
            }),
        })
        .collect()
}

/// How a certificate path is judged.
#[derive(Clone, Debug, Default)]
pub struct PathOptions {
    /// The presented chain may end with the trust anchor itself.
    pub allow_root_in_chain: bool,
}

/// The outcome of a path validation.
#[derive(Clone, Debug)]
pub struct PathResult {
    /// The chain links to one of the supplied anchors.
    pub anchored: bool,
    /// Subjects from the leaf up to (and including) the anchor when anchored.
    pub subjects: Vec<String>,
}

/// Validates `chain` (leaf first) at `now`; see the module docs for the rules.
pub fn validate(
    chain: &[Cert],
    anchors: &[Cert],
    now: SystemTime,
    opts: &PathOptions,
) -> Result<PathResult, Error> {
    let field = chain_field(chain);
    let Some(top) = chain.last() else {
        return Err(Error::Empty { field });
    };
    if chain.len() > limits::X5C_CERTS {
        return Err(Error::TooLarge {
            field,
            limit: limits::X5C_CERTS,
        });
    }
    for cert in chain {
        cert.check_validity(now)?;
        check_critical_extensions(cert)?;
    }
    for i in 0..chain.len() - 1 {
        check_link(chain, i)?;
    }

    let top_anchor = anchors.iter().find(|a| is_anchor(a, top));
    // A lone certificate that the relying party pinned as an anchor is the
    // whole path: nothing was "included", it was recognised.
    let pinned = chain.len() == 1 && top_anchor.is_some();
    for cert in chain.iter().filter(|c| c.is_self_issued()) {
        if !opts.allow_root_in_chain && !pinned {
            return Err(Error::cert_path(
                &cert.field,
                "x5c includes the root certificate (a self-issued certificate); the trust anchor must not be sent",
            ));
        }
    }

    let mut subjects: Vec<String> = chain.iter().map(Cert::subject).collect();
    if anchors.is_empty() {
        // Nothing to anchor to, so the top's own signature is the last
        // internal link there is to check.
        if top.is_self_issued() {
            verify_issued(top, &top.public_key()?)?;
        }
        return Ok(PathResult {
            anchored: false,
            subjects,
        });
    }

    if let Some(anchor) = top_anchor
        && (pinned || opts.allow_root_in_chain)
    {
        anchor.check_validity(now)?;
        return Ok(PathResult {
            anchored: true,
            subjects,
        });
    }

    let below = intermediates_below(chain, chain.len());
    let mut failure = None;
    for anchor in anchors
        .iter()
        .filter(|a| a.tbs().subject() == top.tbs().issuer())
    {
        match issued_by_anchor(top, anchor, below, now) {
            Ok(()) => {
                subjects.push(anchor.subject());
                return Ok(PathResult {
                    anchored: true,
                    subjects,
                });
            }
            Err(e) => {
                failure.get_or_insert(e);
            }
        }
    }
    if top_anchor.is_some() {
        return Err(Error::cert_path(
            &top.field,
            "is a trust anchor, and x5c must not include the trust anchor (allowed only by policy)",
        ));
    }
    let reason = match failure {
        Some(e) => format!(
            "does not chain to any trust anchor: the anchor named {} is not its issuer here ({e})",
            top.issuer()
        ),
        None => format!(
            "does not chain to any trust anchor: no anchor is named {}",
            top.issuer()
        ),
    };
    Err(Error::cert_path(&top.field, reason))
}

/// `attStmt.x5c` from `attStmt.x5c[0]`, for errors about the chain as a whole.
fn chain_field(chain: &[Cert]) -> String {
    match chain.first() {
        Some(leaf) => leaf
            .field
            .strip_suffix("[0]")
            .unwrap_or(&leaf.field)
            .to_string(),
        None => "response.attestationObject.attStmt.x5c".to_string(),
    }
}

/// `presented` is the anchor: the same DER, or a re-issue of it (new serial
/// or validity) with the same subject and key. A re-issue only counts when it
/// is self-signed by that key; otherwise anyone could restate the anchor's
/// name and key with looser constraints or a longer validity, and the
/// constraints read from the chain would be theirs.
pub(crate) fn is_anchor(anchor: &Cert, presented: &Cert) -> bool {
    anchor.der == presented.der
        || (anchor.tbs().subject() == presented.tbs().subject()
            && anchor.tbs().subject_public_key_info() == presented.tbs().subject_public_key_info()
            && presented.is_self_issued()
            && anchor
                .public_key()
                .is_ok_and(|key| verify_issued(presented, &key).is_ok()))
}

/// RFC 5280 §6.1.4 (l): pathLenConstraint counts the CA certificates between
/// an issuer and the leaf, except self-issued ones. `issuer_index` is where
/// the issuer sits (`chain.len()` for an anchor outside the chain).
pub(crate) fn intermediates_below(chain: &[Cert], issuer_index: usize) -> usize {
    chain.get(1..issuer_index).map_or(0, |middle| {
        middle.iter().filter(|c| !c.is_self_issued()).count()
    })
}

/// RFC 5280 §4.2 obliges a validator to refuse a certificate with a critical
/// extension it does not process. These are the ones this engine either
/// enforces or whose content cannot change the outcome of a path without an
/// explicit policy requirement.
pub(crate) fn check_critical_extensions(cert: &Cert) -> Result<(), Error> {
    const CERTIFICATE_POLICIES: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.32");
    let known = [
        oid::BASIC_CONSTRAINTS,
        oid::KEY_USAGE,
        oid::EXT_KEY_USAGE,
        oid::SUBJECT_ALT_NAME,
        CERTIFICATE_POLICIES,
    ];
    let extensions = cert.tbs().extensions().map_or(&[][..], |e| e.as_slice());
    match extensions
        .iter()
        .find(|e| e.critical && !known.contains(&e.extn_id))
    {
        Some(e) => Err(Error::cert_path(
            &cert.field,
            format!("critical extension {} is not supported", e.extn_id),
        )),
        None => Ok(()),
    }
}

/// `issuer` may sign certificates, with `below` CA certificates between it and
/// the leaf; `subject` names the certificate it issued, for the message.
/// `anchor` says the issuer is a configured trust anchor rather than a
/// certificate the authenticator sent.
fn check_issuer(issuer: &Cert, subject: &Cert, below: usize, anchor: bool) -> Result<(), Error> {
    let (ca, path_len) = match issuer.basic_constraints() {
        Ok(constraints) => constraints,
        Err(strict) if anchor => anchor_constraints(issuer).ok_or(strict)?,
        Err(strict) => return Err(strict),
    };
    if !ca {
        return Err(Error::cert_path(
            &issuer.field,
            format!(
                "is not a CA certificate (basicConstraints cA is not true) but issued {}",
                subject.field
            ),
        ));
    }
    if let Some(usage) = issuer.key_usage()?
        && !usage.key_cert_sign()
    {
        return Err(Error::cert_path(
            &issuer.field,
            format!("keyUsage lacks keyCertSign but issued {}", subject.field),
        ));
    }
    if let Some(max) = path_len
        && below > usize::from(max)
    {
        return Err(Error::cert_path(
            &issuer.field,
            format!("pathLenConstraint {max} is exceeded: {below} CA certificates follow it"),
        ));
    }
    Ok(())
}

/// basicConstraints of a trust anchor read as BER: some vendor roots in
/// production encode cA TRUE as a BOOLEAN other than 0xFF, which DER forbids
/// and x509-cert refuses. The operator chose to trust that certificate, so
/// its encoding is not the authenticator's to exploit; certificates in x5c
/// stay strict DER.
fn anchor_constraints(anchor: &Cert) -> Option<(bool, Option<u8>)> {
    use der::Tagged as _;
    let (value, _) = anchor.extension(&oid::BASIC_CONSTRAINTS)?;
    let fields = Vec::<der::Any>::from_der(value).ok()?;
    let mut ca = false;
    let mut path_len = None;
    for field in &fields {
        match field.tag() {
            der::Tag::Boolean if field.value().len() == 1 => ca = field.value()[0] != 0,
            der::Tag::Integer => path_len = Some(field.decode_as::<u8>().ok()?),
            _ => return None,
        }
    }
    Some((ca, path_len))
}

/// The certificate's three top-level fields, as the bytes that came in.
#[derive(der::Sequence)]
struct SignedParts<'a> {
    tbs_certificate: der::asn1::AnyRef<'a>,
    signature_algorithm: der::asn1::AnyRef<'a>,
    signature: der::asn1::AnyRef<'a>,
}

/// Verifies that `issuer_key` signed `cert`, over the TBSCertificate bytes
/// exactly as received. Re-encoding the parsed TBS is not the same thing:
/// x509-cert normalises some fields (a GeneralizedTime before 2050 comes back
/// as UTCTime), and real attestation certificates (Feitian's) carry such
/// encodings under a valid signature.
fn verify_issued(cert: &Cert, issuer_key: &VerifyingKey) -> Result<(), Error> {
    if cert.cert.signature_algorithm() != cert.tbs().signature() {
        return Err(Error::malformed(
            &cert.field,
            "signatureAlgorithm differs from the TBSCertificate's signature field",
        ));
    }
    let alg = signature_algorithm(cert.cert.signature_algorithm(), &cert.field)?;
    let parts = SignedParts::from_der(&cert.der).map_err(|e| Error::malformed(&cert.field, e))?;
    let tbs = parts
        .tbs_certificate
        .to_der()
        .map_err(|e| Error::malformed(&cert.field, e))?;
    let signature = cert.cert.signature().as_bytes().ok_or_else(|| {
        Error::malformed(&cert.field, "signature bit string is not octet-aligned")
    })?;
    issuer_key.verify(alg, &tbs, signature, &format!("{}.signature", cert.field))
}

/// chain[i] must be issued by chain[i + 1].
pub(crate) fn check_link(chain: &[Cert], i: usize) -> Result<(), Error> {
    let (child, parent) = (&chain[i], &chain[i + 1]);
    if child.tbs().issuer() != parent.tbs().subject() {
        let reversed = parent.tbs().issuer() == child.tbs().subject();
        let elsewhere = chain
            .iter()
            .enumerate()
            .find(|(j, c)| *j != i && *j != i + 1 && c.tbs().subject() == child.tbs().issuer());
        let reason = match (elsewhere, reversed) {
            (Some((_, issuer)), _) => format!(
                "certificates are out of order: its issuer is {}, which must come right after it",
                issuer.field
            ),
            (None, true) => format!(
                "certificates are out of order: it issued {}, which must come before it",
                parent.field
            ),
            (None, false) => format!(
                "is not issued by the next certificate: its issuer {} is not the subject {} of {}",
                child.issuer(),
                parent.subject(),
                parent.field
            ),
        };
        return Err(Error::cert_path(&child.field, reason));
    }
    check_issuer(parent, child, intermediates_below(chain, i + 1), false)?;
    verify_issued(child, &parent.public_key()?)
}

/// `anchor` (named as the top's issuer) is valid now, may issue, and signed `top`.
pub(crate) fn issued_by_anchor(
    top: &Cert,
    anchor: &Cert,
    below: usize,
    now: SystemTime,
) -> Result<(), Error> {
    anchor.check_validity(now)?;
    check_issuer(anchor, top, below, true)?;
    verify_issued(top, &anchor.public_key()?)
}

#[cfg(test)]
pub(crate) mod tests {
    //! Certificates made on the fly (the project builds TBS certificates by
    //! hand, as src/keys/cert.rs does, rather than enable x509-cert's builder)
    //! and the shared test-vector corpus. Other attestation tests use these.

    use super::*;
    use crate::webauthn::attestation::AttestationPolicy;
    use crate::webauthn::registration::{self, Expectation, Registration};
    use crate::webauthn::response::RegistrationResponse;
    use crate::webauthn::{RelyingParty, UserVerification, b64url_decode};
    use aws_lc_rs::encoding::AsDer as _;
    use aws_lc_rs::signature::{self as sig, EcdsaKeyPair, KeyPair as _};
    use der::asn1::{BitString, OctetString};
    use std::str::FromStr as _;
    use std::time::{Duration, UNIX_EPOCH};
    use x509_cert::ext::Extension;
    use x509_cert::ext::pkix::{BasicConstraints, KeyUsage, KeyUsages};
    use x509_cert::name::Name;
    use x509_cert::serial_number::SerialNumber;
    use x509_cert::time::{Time, Validity};
    use x509_cert::{AlgorithmIdentifier, SubjectPublicKeyInfo};

    /// An ECDSA key pair for test certificates and attestation signatures.
    pub(crate) struct TestKey {
        pair: EcdsaKeyPair,
        signature_oid: ObjectIdentifier,
    }

    impl TestKey {
        pub(crate) fn p256() -> TestKey {
            TestKey {
                pair: EcdsaKeyPair::generate(&sig::ECDSA_P256_SHA256_ASN1_SIGNING).unwrap(),
                signature_oid: oid::ECDSA_SHA256,
            }
        }

        pub(crate) fn p384() -> TestKey {
            TestKey {
                pair: EcdsaKeyPair::generate(&sig::ECDSA_P384_SHA384_ASN1_SIGNING).unwrap(),
                signature_oid: oid::ECDSA_SHA384,
            }
        }

        pub(crate) fn spki_der(&self) -> Vec<u8> {
            self.pair.public_key().as_der().unwrap().as_ref().to_vec()
        }

        /// The uncompressed SEC1 point.
        pub(crate) fn point(&self) -> Vec<u8> {
            self.pair.public_key().as_ref().to_vec()
        }

        /// A DER ECDSA signature, with the hash of the key's curve.
        pub(crate) fn sign(&self, message: &[u8]) -> Vec<u8> {
            let rng = aws_lc_rs::rand::SystemRandom::new();
            self.pair.sign(&rng, message).unwrap().as_ref().to_vec()
        }
    }

    #[derive(Clone, Debug, der::Sequence)]
    struct Tbs {
        #[asn1(context_specific = "0", tag_mode = "EXPLICIT")]
        version: x509_cert::Version,
        serial_number: SerialNumber,
        signature: AlgorithmIdentifier,
        issuer: Name,
        validity: Validity,
        subject: Name,
        subject_public_key_info: SubjectPublicKeyInfo,
        #[asn1(context_specific = "3", tag_mode = "EXPLICIT", optional = "true")]
        extensions: Option<Vec<Extension>>,
    }

    #[derive(Clone, Debug, der::Sequence)]
    struct RawCertificate {
        tbs_certificate: Tbs,
        signature_algorithm: AlgorithmIdentifier,
        signature: BitString,
    }

    /// What a test certificate says; [`CertSpec::issue`] signs it.
    #[derive(Clone)]
    pub(crate) struct CertSpec {
        pub subject: String,
        pub issuer: String,
        pub not_before: SystemTime,
        pub not_after: SystemTime,
        pub version: x509_cert::Version,
        pub serial: u8,
        /// `(cA, pathLenConstraint)`; `None` leaves basicConstraints out.
        pub basic_constraints: Option<(bool, Option<u8>)>,
        pub key_usage: Option<KeyUsages>,
        pub extra: Vec<Extension>,
    }

    pub(crate) fn at(unix: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(unix)
    }

    pub(crate) const YEAR: u64 = 365 * 86_400;
    /// 2025-01-01T00:00:00Z, the usual "now" of these tests.
    pub(crate) const NOW: u64 = 1_735_689_600;

    impl CertSpec {
        pub(crate) fn ca(subject: &str, issuer: &str) -> CertSpec {
            CertSpec {
                subject: subject.into(),
                issuer: issuer.into(),
                not_before: at(NOW - 5 * YEAR),
                not_after: at(NOW + 10 * YEAR),
                version: x509_cert::Version::V3,
                serial: 1,
                basic_constraints: Some((true, None)),
                key_usage: Some(KeyUsages::KeyCertSign),
                extra: Vec::new(),
            }
        }

        pub(crate) fn leaf(subject: &str, issuer: &str) -> CertSpec {
            CertSpec {
                not_before: at(NOW - YEAR),
                not_after: at(NOW + 5 * YEAR),
                basic_constraints: Some((false, None)),
                key_usage: Some(KeyUsages::DigitalSignature),
                ..CertSpec::ca(subject, issuer)
            }
        }

        /// The DER certificate for `subject_key`, signed by `issuer_key`.
        pub(crate) fn issue(&self, subject_key: &TestKey, issuer_key: &TestKey) -> Vec<u8> {
            self.issue_spki(&subject_key.spki_der(), issuer_key)
        }

        pub(crate) fn issue_spki(&self, spki_der: &[u8], issuer_key: &TestKey) -> Vec<u8> {
            let algorithm = AlgorithmIdentifier {
                oid: issuer_key.signature_oid,
                parameters: None,
            };
            let mut extensions = Vec::new();
            if let Some((ca, path_len_constraint)) = self.basic_constraints {
                extensions.push(extension(
                    oid::BASIC_CONSTRAINTS,
                    true,
                    &BasicConstraints {
                        ca,
                        path_len_constraint,
                    }
                    .to_der()
                    .unwrap(),
                ));
            }
            if let Some(usage) = self.key_usage {
                extensions.push(extension(
                    oid::KEY_USAGE,
                    true,
                    &KeyUsage(usage.into()).to_der().unwrap(),
                ));
            }
            extensions.extend(self.extra.iter().cloned());
            let tbs = Tbs {
                version: self.version,
                serial_number: SerialNumber::new(&[self.serial]).unwrap(),
                signature: algorithm.clone(),
                issuer: Name::from_str(&self.issuer).unwrap(),
                validity: Validity::new(
                    Time::try_from(self.not_before).unwrap(),
                    Time::try_from(self.not_after).unwrap(),
                ),
                subject: Name::from_str(&self.subject).unwrap(),
                subject_public_key_info: SubjectPublicKeyInfo::from_der(spki_der).unwrap(),
                extensions: (!extensions.is_empty()).then_some(extensions),
            };
            let signature = issuer_key.sign(&tbs.to_der().unwrap());
            RawCertificate {
                tbs_certificate: tbs,
                signature_algorithm: algorithm,
                signature: BitString::from_bytes(&signature).unwrap(),
            }
            .to_der()
            .unwrap()
        }
    }

    /// An extension whose value is the DER `value`.
    pub(crate) fn extension(id: ObjectIdentifier, critical: bool, value: &[u8]) -> Extension {
        Extension {
            extn_id: id,
            critical,
            extn_value: OctetString::new(value.to_vec()).unwrap(),
        }
    }

    /// Parses certificates as an x5c array would name them.
    pub(crate) fn x5c(ders: &[&[u8]]) -> Vec<Cert> {
        ders.iter()
            .enumerate()
            .map(|(i, d)| {
                Cert::parse(d, format!("response.attestationObject.attStmt.x5c[{i}]")).unwrap()
            })
            .collect()
    }

    pub(crate) fn anchor(der: &[u8]) -> Cert {
        Cert::parse(der, "trustAnchors[0]").unwrap()
    }

    // ---- the shared vector corpus --------------------------------------

    pub(crate) const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/vectors");

    /// A vector file; its absence fails the test rather than skipping it.
    pub(crate) fn vector(relative: &str) -> serde_json::Value {
        let path = format!("{VECTORS}/{relative}");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!("test vector {path} is missing ({e}); the vectors directory must sit beside the repository")
        });
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// Every registration vector, by relative path.
    pub(crate) fn registration_vectors() -> Vec<String> {
        let mut out = Vec::new();
        for dir in ["w3c", "devices"] {
            let path = format!("{VECTORS}/{dir}");
            let entries = std::fs::read_dir(&path)
                .unwrap_or_else(|e| panic!("test vectors {path} are missing ({e})"));
            for entry in entries {
                let name = entry.unwrap().file_name().into_string().unwrap();
                if name.ends_with(".registration.json") {
                    out.push(format!("{dir}/{name}"));
                }
            }
        }
        out.sort();
        assert!(
            out.len() >= 50,
            "expected the full vector corpus, found {}",
            out.len()
        );
        out
    }

    pub(crate) fn str_field<'a>(v: &'a serde_json::Value, name: &str) -> &'a str {
        v[name]
            .as_str()
            .unwrap_or_else(|| panic!("vector member {name} is not a string"))
    }

    pub(crate) fn conditions(v: &serde_json::Value) -> Vec<String> {
        v["accept_conditions"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|c| c.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub(crate) fn verify_time(v: &serde_json::Value) -> SystemTime {
        der::DateTime::from_str(str_field(v, "verify_time"))
            .unwrap()
            .to_system_time()
    }

    pub(crate) fn roots(v: &serde_json::Value) -> Vec<Cert> {
        v["trustRootsPem"]
            .as_array()
            .map(|roots| {
                roots
                    .iter()
                    .enumerate()
                    .map(|(i, pem)| {
                        let (_, der) =
                            der::pem::decode_vec(pem.as_str().unwrap().as_bytes()).unwrap();
                        Cert::parse(&der, format!("trustAnchors[{i}]")).unwrap()
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    pub(crate) fn attestation_object(v: &serde_json::Value) -> Vec<u8> {
        b64url_decode(
            "attestationObject",
            str_field(v, "attestationObject"),
            1 << 20,
        )
        .unwrap()
    }

    pub(crate) fn client_data_hash(v: &serde_json::Value) -> [u8; 32] {
        let cdj = b64url_decode("clientDataJSON", str_field(v, "clientDataJSON"), 1 << 16).unwrap();
        crate::keys::sha256(&cdj)
    }

    /// Runs the whole §7.1 ceremony on a vector, with `attestation_object`
    /// replacing the vector's own when given.
    pub(crate) fn register(
        v: &serde_json::Value,
        attestation_object: Option<&[u8]>,
        policy: &AttestationPolicy,
        anchors: &[Cert],
        now: SystemTime,
    ) -> Result<Registration, Error> {
        let ao = match attestation_object {
            Some(bytes) => crate::webauthn::b64url(bytes),
            None => str_field(v, "attestationObject").to_string(),
        };
        let json = serde_json::json!({
            "id": str_field(v, "credentialId"),
            "rawId": str_field(v, "credentialId"),
            "type": "public-key",
            "response": {
                "clientDataJSON": str_field(v, "clientDataJSON"),
                "attestationObject": ao,
            },
        });
        let response = RegistrationResponse::from_value(&json)?;
        let rp = RelyingParty::new(
            str_field(v, "rpId"),
            vec![str_field(v, "origin").to_string()],
        );
        let challenge = b64url_decode("challenge", str_field(v, "challenge"), 1024).unwrap();
        registration::verify(
            &response,
            &Expectation {
                rp: &rp,
                challenge: &challenge,
                user_verification: UserVerification::Preferred,
                require_user_presence: true,
                policy,
                trust_anchors: anchors,
                now,
            },
        )
    }

    /// The x5c of a vector's attestation statement, if it has one.
    fn vector_x5c(v: &serde_json::Value) -> Option<Vec<Cert>> {
        let value: ciborium::Value =
            ciborium::de::from_reader(attestation_object(v).as_slice()).unwrap();
        let stmt = crate::webauthn::attestation::map_get(&value, "attStmt")?;
        let x5c = crate::webauthn::attestation::map_get(stmt, "x5c")?;
        Some(parse_x5c(x5c, "response.attestationObject.attStmt.x5c").unwrap())
    }

    // ---- path validation -------------------------------------------------

    const ROOT: &str = "CN=Test Root,O=Signet Tests,C=AA";
    const INT: &str = "CN=Test Intermediate,O=Signet Tests,C=AA";
    const LEAF: &str = "CN=Test Leaf,OU=Authenticator Attestation,O=Signet Tests,C=AA";

    struct Pki {
        root_key: TestKey,
        int_key: TestKey,
        leaf_key: TestKey,
        root: Vec<u8>,
        int: Vec<u8>,
        leaf: Vec<u8>,
    }

    fn pki() -> Pki {
        let (root_key, int_key, leaf_key) = (TestKey::p256(), TestKey::p384(), TestKey::p256());
        Pki {
            root: CertSpec::ca(ROOT, ROOT).issue(&root_key, &root_key),
            int: CertSpec::ca(INT, ROOT).issue(&int_key, &root_key),
            leaf: CertSpec::leaf(LEAF, INT).issue(&leaf_key, &int_key),
            root_key,
            int_key,
            leaf_key,
        }
    }

    fn strict() -> PathOptions {
        PathOptions::default()
    }

    fn lenient() -> PathOptions {
        PathOptions {
            allow_root_in_chain: true,
        }
    }

    /// The error's field and message, for assertions on both.
    fn failure(result: Result<PathResult, Error>) -> (String, String) {
        let e = result.expect_err("the path must be refused");
        (e.field().to_string(), e.to_string())
    }

    #[test]
    fn a_valid_chain_anchors_at_its_root() {
        let p = pki();
        let chain = x5c(&[&p.leaf, &p.int]);
        let r = validate(&chain, &[anchor(&p.root)], at(NOW), &strict()).unwrap();
        assert!(r.anchored);
        assert_eq!(r.subjects.len(), 3);
        assert!(r.subjects[0].contains("CN=Test Leaf"), "{:?}", r.subjects);
        assert!(r.subjects[2].contains("CN=Test Root"), "{:?}", r.subjects);

        // Among many anchors, only those with the right name are tried.
        let mut anchors: Vec<Cert> = (0..50)
            .map(|i| {
                let k = TestKey::p256();
                anchor(
                    &CertSpec::ca(&format!("CN=Other {i}"), &format!("CN=Other {i}")).issue(&k, &k),
                )
            })
            .collect();
        anchors.push(anchor(&p.root));
        assert!(
            validate(&chain, &anchors, at(NOW), &strict())
                .unwrap()
                .anchored
        );
    }

    #[test]
    fn out_of_order_chains_are_named_as_such() {
        let p = pki();
        let (field, msg) = failure(validate(
            &x5c(&[&p.int, &p.leaf]),
            &[anchor(&p.root)],
            at(NOW),
            &strict(),
        ));
        assert_eq!(field, "response.attestationObject.attStmt.x5c[0]");
        assert!(msg.contains("out of order"), "{msg}");

        let (field, msg) = failure(validate(
            &x5c(&[&p.leaf, &p.root, &p.int]),
            &[],
            at(NOW),
            &lenient(),
        ));
        assert_eq!(field, "response.attestationObject.attStmt.x5c[0]");
        assert!(
            msg.contains("out of order") && msg.contains("x5c[2]"),
            "{msg}"
        );

        // An issuer that is simply absent is not called "out of order".
        let other = TestKey::p256();
        let stranger = CertSpec::ca("CN=Stranger", "CN=Stranger").issue(&other, &other);
        let (_, msg) = failure(validate(
            &x5c(&[&p.leaf, &stranger]),
            &[],
            at(NOW),
            &lenient(),
        ));
        assert!(
            msg.contains("is not issued by the next certificate"),
            "{msg}"
        );
    }

    #[test]
    fn a_bad_signature_is_reported_as_one() {
        let p = pki();
        // Right issuer name, wrong key.
        let forged = CertSpec::leaf(LEAF, INT).issue(&p.leaf_key, &TestKey::p384());
        let err = validate(
            &x5c(&[&forged, &p.int]),
            &[anchor(&p.root)],
            at(NOW),
            &strict(),
        )
        .unwrap_err();
        assert_eq!(
            err,
            Error::bad_signature("response.attestationObject.attStmt.x5c[0].signature")
        );

        // A flipped bit in the signature of a certificate inside the chain.
        let mut tampered = p.int.clone();
        let last = tampered.len() - 3;
        tampered[last] ^= 1;
        let err = validate(
            &x5c(&[&p.leaf, &tampered, &p.root]),
            &[anchor(&p.root)],
            at(NOW),
            &lenient(),
        )
        .unwrap_err();
        assert_eq!(
            err,
            Error::bad_signature("response.attestationObject.attStmt.x5c[1].signature")
        );

        // The top's signature by the anchor is checked too; there the failure
        // is that the path does not reach the anchor, and says why.
        let (field, msg) = failure(validate(
            &x5c(&[&p.leaf, &tampered]),
            &[anchor(&p.root)],
            at(NOW),
            &strict(),
        ));
        assert_eq!(field, "response.attestationObject.attStmt.x5c[1]");
        assert!(
            msg.contains("does not chain to any trust anchor")
                && msg.contains("signature does not verify"),
            "{msg}"
        );
    }

    #[test]
    fn every_certificate_must_be_valid_now() {
        let p = pki();
        let chain = x5c(&[&p.leaf, &p.int]);
        let anchors = [anchor(&p.root)];

        // Expired leaf.
        let (field, msg) = failure(validate(&chain, &anchors, at(NOW + 6 * YEAR), &strict()));
        assert_eq!(field, "response.attestationObject.attStmt.x5c[0]");
        assert!(msg.contains("expired"), "{msg}");

        // Leaf not yet valid.
        let (field, msg) = failure(validate(&chain, &anchors, at(NOW - 2 * YEAR), &strict()));
        assert_eq!(field, "response.attestationObject.attStmt.x5c[0]");
        assert!(msg.contains("not valid before"), "{msg}");

        // Expired intermediate under a valid leaf.
        let old_int = CertSpec {
            not_before: at(NOW - 4 * YEAR),
            not_after: at(NOW - YEAR),
            ..CertSpec::ca(INT, ROOT)
        }
        .issue(&p.int_key, &p.root_key);
        let (field, msg) = failure(validate(
            &x5c(&[&p.leaf, &old_int]),
            &anchors,
            at(NOW),
            &strict(),
        ));
        assert_eq!(field, "response.attestationObject.attStmt.x5c[1]");
        assert!(msg.contains("expired"), "{msg}");

        // Expired anchor.
        let old_root = CertSpec {
            not_before: at(NOW - 4 * YEAR),
            not_after: at(NOW - 1),
            ..CertSpec::ca(ROOT, ROOT)
        }
        .issue(&p.root_key, &p.root_key);
        let (_, msg) = failure(validate(&chain, &[anchor(&old_root)], at(NOW), &strict()));
        assert!(
            msg.contains("does not chain to any trust anchor") && msg.contains("expired"),
            "{msg}"
        );
    }

    #[test]
    fn issuers_must_be_certificate_authorities() {
        let p = pki();
        let anchors = [anchor(&p.root)];
        let with = |spec: CertSpec| spec.issue(&p.int_key, &p.root_key);

        let not_ca = with(CertSpec {
            basic_constraints: Some((false, None)),
            ..CertSpec::ca(INT, ROOT)
        });
        let (field, msg) = failure(validate(
            &x5c(&[&p.leaf, &not_ca]),
            &anchors,
            at(NOW),
            &strict(),
        ));
        assert_eq!(field, "response.attestationObject.attStmt.x5c[1]");
        assert!(msg.contains("not a CA"), "{msg}");

        let no_constraints = with(CertSpec {
            basic_constraints: None,
            ..CertSpec::ca(INT, ROOT)
        });
        let (_, msg) = failure(validate(
            &x5c(&[&p.leaf, &no_constraints]),
            &anchors,
            at(NOW),
            &strict(),
        ));
        assert!(msg.contains("not a CA"), "{msg}");
        // Also without anchors: internal links are still checked.
        let (_, msg) = failure(validate(
            &x5c(&[&p.leaf, &no_constraints]),
            &[],
            at(NOW),
            &strict(),
        ));
        assert!(msg.contains("not a CA"), "{msg}");

        let no_cert_sign = with(CertSpec {
            key_usage: Some(KeyUsages::DigitalSignature),
            ..CertSpec::ca(INT, ROOT)
        });
        let (_, msg) = failure(validate(
            &x5c(&[&p.leaf, &no_cert_sign]),
            &anchors,
            at(NOW),
            &strict(),
        ));
        assert!(msg.contains("keyCertSign"), "{msg}");

        // keyUsage is optional; when absent, the CA flag suffices.
        let no_usage = with(CertSpec {
            key_usage: None,
            ..CertSpec::ca(INT, ROOT)
        });
        assert!(
            validate(&x5c(&[&p.leaf, &no_usage]), &anchors, at(NOW), &strict())
                .unwrap()
                .anchored
        );

        // The anchor is an issuer too.
        let root_not_ca = CertSpec {
            basic_constraints: Some((false, None)),
            ..CertSpec::ca(ROOT, ROOT)
        }
        .issue(&p.root_key, &p.root_key);
        let (_, msg) = failure(validate(
            &x5c(&[&p.leaf, &p.int]),
            &[anchor(&root_not_ca)],
            at(NOW),
            &strict(),
        ));
        assert!(msg.contains("not a CA"), "{msg}");
    }

    #[test]
    fn path_length_constraints_are_enforced() {
        let p = pki();
        // Root with pathLen 0 may only issue end-entity certificates.
        let root0 = CertSpec {
            basic_constraints: Some((true, Some(0))),
            ..CertSpec::ca(ROOT, ROOT)
        }
        .issue(&p.root_key, &p.root_key);
        let (field, msg) = failure(validate(
            &x5c(&[&p.leaf, &p.int]),
            &[anchor(&root0)],
            at(NOW),
            &strict(),
        ));
        assert_eq!(field, "response.attestationObject.attStmt.x5c[1]");
        assert!(msg.contains("pathLenConstraint 0"), "{msg}");
        // ... but may issue the leaf directly.
        let direct = CertSpec::leaf(LEAF, ROOT).issue(&p.leaf_key, &p.root_key);
        assert!(
            validate(&x5c(&[&direct]), &[anchor(&root0)], at(NOW), &strict())
                .unwrap()
                .anchored
        );

        // Inside the chain: leaf <- int2 <- int (pathLen 0).
        let int2_key = TestKey::p256();
        let int0 = CertSpec {
            basic_constraints: Some((true, Some(0))),
            ..CertSpec::ca(INT, ROOT)
        }
        .issue(&p.int_key, &p.root_key);
        let int2 = CertSpec::ca("CN=Second Intermediate", INT).issue(&int2_key, &p.int_key);
        let leaf2 = CertSpec::leaf(LEAF, "CN=Second Intermediate").issue(&p.leaf_key, &int2_key);
        let (field, msg) = failure(validate(
            &x5c(&[&leaf2, &int2, &int0]),
            &[anchor(&p.root)],
            at(NOW),
            &strict(),
        ));
        assert_eq!(field, "response.attestationObject.attStmt.x5c[2]");
        assert!(msg.contains("pathLenConstraint 0"), "{msg}");
        let int1 = CertSpec {
            basic_constraints: Some((true, Some(1))),
            ..CertSpec::ca(INT, ROOT)
        }
        .issue(&p.int_key, &p.root_key);
        let r = validate(
            &x5c(&[&leaf2, &int2, &int1]),
            &[anchor(&p.root)],
            at(NOW),
            &strict(),
        )
        .unwrap();
        assert_eq!(r.subjects.len(), 4);
    }

    #[test]
    fn the_root_inside_the_chain_is_refused_unless_allowed() {
        let p = pki();
        let chain = x5c(&[&p.leaf, &p.int, &p.root]);
        let anchors = [anchor(&p.root)];
        let (field, msg) = failure(validate(&chain, &anchors, at(NOW), &strict()));
        assert_eq!(field, "response.attestationObject.attStmt.x5c[2]");
        assert!(msg.contains("x5c includes the root certificate"), "{msg}");
        // Refused without anchors as well: it is a property of the chain.
        let (_, msg) = failure(validate(&chain, &[], at(NOW), &strict()));
        assert!(msg.contains("x5c includes the root certificate"), "{msg}");

        let r = validate(&chain, &anchors, at(NOW), &lenient()).unwrap();
        assert!(r.anchored);
        assert_eq!(
            r.subjects.len(),
            3,
            "the anchor is not listed twice: {:?}",
            r.subjects
        );
        assert!(!validate(&chain, &[], at(NOW), &lenient()).unwrap().anchored);

        // The root in the chain re-issued (new serial, same name and key)
        // is still the anchor.
        let reissued = CertSpec {
            serial: 9,
            ..CertSpec::ca(ROOT, ROOT)
        }
        .issue(&p.root_key, &p.root_key);
        let r = validate(
            &x5c(&[&p.leaf, &p.int, &reissued]),
            &anchors,
            at(NOW),
            &lenient(),
        )
        .unwrap();
        assert!(r.anchored);

        // A copy with the anchor's name and key that the key did not sign
        // (here: looser pathLen, signed by someone else) is not the anchor.
        let restated = CertSpec {
            serial: 7,
            basic_constraints: Some((true, Some(5))),
            ..CertSpec::ca(ROOT, ROOT)
        }
        .issue(&p.root_key, &TestKey::p256());
        let (_, msg) = failure(validate(
            &x5c(&[&p.leaf, &p.int, &restated]),
            &anchors,
            at(NOW),
            &lenient(),
        ));
        assert!(msg.contains("does not chain to any trust anchor"), "{msg}");

        // A self-signed root with the anchor's name but another key is not it.
        let impostor_key = TestKey::p256();
        let impostor = CertSpec::ca(ROOT, ROOT).issue(&impostor_key, &impostor_key);
        let int_by_impostor = CertSpec::ca(INT, ROOT).issue(&p.int_key, &impostor_key);
        let (_, msg) = failure(validate(
            &x5c(&[&p.leaf, &int_by_impostor, &impostor]),
            &anchors,
            at(NOW),
            &lenient(),
        ));
        assert!(msg.contains("does not chain to any trust anchor"), "{msg}");

        // Without anchors, a self-issued top must at least sign itself.
        let broken_root = CertSpec::ca(ROOT, ROOT).issue(&p.root_key, &impostor_key);
        let err = validate(
            &x5c(&[&p.leaf, &p.int, &broken_root]),
            &[],
            at(NOW),
            &lenient(),
        )
        .unwrap_err();
        assert_eq!(
            err,
            Error::bad_signature("response.attestationObject.attStmt.x5c[2].signature")
        );
    }

    #[test]
    fn an_anchor_inside_a_longer_chain_needs_the_option() {
        let p = pki();
        // The operator pinned the intermediate; the authenticator sent it.
        let (field, msg) = failure(validate(
            &x5c(&[&p.leaf, &p.int]),
            &[anchor(&p.int)],
            at(NOW),
            &strict(),
        ));
        assert_eq!(field, "response.attestationObject.attStmt.x5c[1]");
        assert!(msg.contains("is a trust anchor"), "{msg}");
        assert!(
            validate(
                &x5c(&[&p.leaf, &p.int]),
                &[anchor(&p.int)],
                at(NOW),
                &lenient()
            )
            .unwrap()
            .anchored
        );
        // Anchored above it as well as at it: the root wins.
        let both = [anchor(&p.int), anchor(&p.root)];
        assert_eq!(
            validate(&x5c(&[&p.leaf, &p.int]), &both, at(NOW), &strict())
                .unwrap()
                .subjects
                .len(),
            3
        );
    }

    #[test]
    fn a_lone_pinned_certificate_is_its_own_path() {
        let p = pki();
        let r = validate(&x5c(&[&p.leaf]), &[anchor(&p.leaf)], at(NOW), &strict()).unwrap();
        assert!(r.anchored);
        assert_eq!(r.subjects.len(), 1);

        // A self-signed leaf pinned as an anchor: accepted.
        let k = TestKey::p256();
        let selfie = CertSpec::leaf(LEAF, LEAF).issue(&k, &k);
        assert!(
            validate(&x5c(&[&selfie]), &[anchor(&selfie)], at(NOW), &strict())
                .unwrap()
                .anchored
        );
        // Not pinned, it is a root the authenticator sent.
        let (_, msg) = failure(validate(&x5c(&[&selfie]), &[], at(NOW), &strict()));
        assert!(msg.contains("x5c includes the root certificate"), "{msg}");
    }

    #[test]
    fn without_anchors_links_are_checked_but_nothing_is_anchored() {
        let p = pki();
        let r = validate(&x5c(&[&p.leaf, &p.int]), &[], at(NOW), &strict()).unwrap();
        assert!(!r.anchored);
        assert_eq!(r.subjects.len(), 2);
        let forged = CertSpec::leaf(LEAF, INT).issue(&p.leaf_key, &TestKey::p384());
        assert!(matches!(
            validate(&x5c(&[&forged, &p.int]), &[], at(NOW), &strict()),
            Err(Error::BadSignature { .. })
        ));
        assert!(validate(&x5c(&[&p.leaf, &p.int]), &[], at(NOW + 6 * YEAR), &strict()).is_err());
        assert!(validate(&x5c(&[&p.int, &p.leaf]), &[], at(NOW), &strict()).is_err());
    }

    #[test]
    fn unrelated_anchors_are_an_error() {
        let p = pki();
        let k = TestKey::p256();
        let other = CertSpec::ca("CN=Unrelated Root", "CN=Unrelated Root").issue(&k, &k);
        let (field, msg) = failure(validate(
            &x5c(&[&p.leaf, &p.int]),
            &[anchor(&other)],
            at(NOW),
            &strict(),
        ));
        assert_eq!(field, "response.attestationObject.attStmt.x5c[1]");
        assert!(msg.contains("does not chain to any trust anchor"), "{msg}");
        assert!(matches!(
            validate(
                &x5c(&[&p.leaf, &p.int]),
                &[anchor(&other)],
                at(NOW),
                &strict()
            ),
            Err(Error::CertPath { .. })
        ));
    }

    #[test]
    fn sizes_and_unknown_critical_extensions() {
        let p = pki();
        assert_eq!(
            validate(&[], &[], at(NOW), &strict()).unwrap_err(),
            Error::Empty {
                field: "response.attestationObject.attStmt.x5c".into()
            }
        );
        let many: Vec<&[u8]> =
            std::iter::repeat_n(p.leaf.as_slice(), limits::X5C_CERTS + 1).collect();
        assert!(matches!(
            validate(&x5c(&many), &[], at(NOW), &strict()),
            Err(Error::TooLarge { .. })
        ));

        let odd = CertSpec {
            extra: vec![extension(
                ObjectIdentifier::new_unwrap("1.2.3.4"),
                true,
                &[5, 0],
            )],
            ..CertSpec::leaf(LEAF, INT)
        }
        .issue(&p.leaf_key, &p.int_key);
        let (field, msg) = failure(validate(
            &x5c(&[&odd, &p.int]),
            &[anchor(&p.root)],
            at(NOW),
            &strict(),
        ));
        assert_eq!(field, "response.attestationObject.attStmt.x5c[0]");
        assert!(msg.contains("critical extension 1.2.3.4"), "{msg}");
        // The same extension, not critical, is ignored.
        let fine = CertSpec {
            extra: vec![extension(
                ObjectIdentifier::new_unwrap("1.2.3.4"),
                false,
                &[5, 0],
            )],
            ..CertSpec::leaf(LEAF, INT)
        }
        .issue(&p.leaf_key, &p.int_key);
        assert!(
            validate(
                &x5c(&[&fine, &p.int]),
                &[anchor(&p.root)],
                at(NOW),
                &strict()
            )
            .is_ok()
        );
    }

    /// Every real chain in the corpus (RSA, P-256, P-384 keys; two to five
    /// certificates) validates at its verify_time, and fails a day after its
    /// leaf expires.
    #[test]
    fn every_vector_chain_validates_at_its_time() {
        let mut checked = 0;
        for path in registration_vectors() {
            let v = vector(&path);
            let Some(chain) = vector_x5c(&v) else {
                continue;
            };
            let conditions = conditions(&v);
            let anchors = if conditions.iter().any(|c| c == "no_trust_root_available") {
                Vec::new()
            } else {
                roots(&v)
            };
            let opts = PathOptions {
                allow_root_in_chain: conditions.iter().any(|c| c == "x5c_contains_root"),
            };
            let now = verify_time(&v);
            let r =
                validate(&chain, &anchors, now, &opts).unwrap_or_else(|e| panic!("{path}: {e}"));
            assert_eq!(r.anchored, !anchors.is_empty(), "{path}");
            if opts.allow_root_in_chain {
                let (field, _) = failure(validate(&chain, &anchors, now, &strict()));
                assert!(
                    field.starts_with("response.attestationObject.attStmt.x5c["),
                    "{path}: {field}"
                );
            }
            let leaf_end = chain[0].tbs().validity().not_after.to_system_time();
            assert!(
                validate(
                    &chain,
                    &anchors,
                    leaf_end + Duration::from_secs(86_400),
                    &opts
                )
                .is_err(),
                "{path}"
            );
            checked += 1;
        }
        assert!(checked >= 40, "only {checked} chains checked");
    }
}
