//! X.509 certificate revocation lists (RFC 5280 §5), for the certificates
//! that sign MDS BLOBs.
//!
//! A [`Crl`] is parsed strictly (DER, or PEM `X509 CRL`) and keeps the exact
//! TBSCertList bytes, so its signature is checked over what the issuer
//! signed, never a re-encoding.
//!
//! # What a CRL must be to be used
//!
//! - A complete CRL: a delta CRL (deltaCRLIndicator) and an indirect CRL
//!   (indirectCRL, or an entry naming another certificateIssuer) are
//!   refused, as is any other critical extension this module does not
//!   process, CRL-wide or on an entry (RFC 5280 §5.2, §5.3).
//! - It covers the certificate ([`Crl::covers`]): an issuingDistributionPoint
//!   scoped to end-entity or CA certificates only covers those, one naming a
//!   distribution point covers only certificates whose cRLDistributionPoints
//!   name it (a partitioned CRL says nothing about the other partitions),
//!   and one limited to some reasons is refused.
//! - Signed by the issuer's key ([`Crl::verify_signed_by`]); the caller
//!   also checks that the issuer may sign CRLs (keyUsage cRLSign).
//! - Current for the time `at` being judged ([`Crl::is_current_at`]).
//!
//! # The timing rule
//!
//! A CRL is current for `at` when its `nextUpdate` is not before `at`, **or**
//! when it was published (`thisUpdate`) after `at`. `thisUpdate <= at` is
//! deliberately not required: an archived BLOB is judged at its own time
//! with CRLs fetched later, and a later CRL only knows more (revocations are
//! never withdrawn from a complete CRL, holds aside). What must not be
//! accepted is an old CRL used past its `nextUpdate` to judge a later time:
//! its issuer has promised newer information by then, which might list the
//! certificate. A CRL without `nextUpdate` (RFC 5280 requires one) is
//! current only for times before its publication.
//!
//! A listed serial is revoked whatever its revocationDate: a BLOB carries no
//! trusted time of signing, and a key revoked for compromise can sign a
//! BLOB that claims any date.

use std::collections::HashSet;
use std::time::SystemTime;

use der::asn1::{BitString, ObjectIdentifier};
use der::{Decode, Encode};
use spki::AlgorithmIdentifierOwned;
use x509_cert::ext::Extensions;
use x509_cert::ext::pkix::CrlDistributionPoints;
use x509_cert::ext::pkix::crl::dp::IssuingDistributionPoint;
use x509_cert::ext::pkix::name::DistributionPointName;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::Time;

use super::{MdsError, limits};
use crate::webauthn::certpath::{self, Cert};
use crate::webauthn::cose_key::VerifyingKey;

mod oid {
    use der::asn1::ObjectIdentifier as O;
    pub const AUTHORITY_KEY_IDENTIFIER: O = O::new_unwrap("2.5.29.35");
    pub const CRL_NUMBER: O = O::new_unwrap("2.5.29.20");
    pub const DELTA_CRL_INDICATOR: O = O::new_unwrap("2.5.29.27");
    pub const ISSUING_DISTRIBUTION_POINT: O = O::new_unwrap("2.5.29.28");
    pub const CERTIFICATE_ISSUER: O = O::new_unwrap("2.5.29.29");
    pub const CRL_DISTRIBUTION_POINTS: O = O::new_unwrap("2.5.29.31");
}

/// A parsed, not yet trusted, certificate revocation list.
#[derive(Clone, Debug)]
pub struct Crl {
    der: Vec<u8>,
    tbs: Vec<u8>,
    signature_algorithm: AlgorithmIdentifierOwned,
    signature: Vec<u8>,
    issuer: Name,
    this_update: SystemTime,
    next_update: Option<SystemTime>,
    /// Revoked serials, big-endian with leading zero bytes stripped.
    revoked: HashSet<Vec<u8>>,
    scope: Scope,
}

/// What an issuingDistributionPoint limits the CRL to.
#[derive(Clone, Debug, Default)]
struct Scope {
    only_user_certs: bool,
    only_ca_certs: bool,
    distribution_point: Option<DistributionPointName>,
}

/// The three top-level fields of a CertificateList, the TBS as received.
#[derive(der::Sequence)]
struct SignedList<'a> {
    tbs_cert_list: der::asn1::AnyRef<'a>,
    signature_algorithm: AlgorithmIdentifierOwned,
    signature: BitString,
}

/// TBSCertList (RFC 5280 §5.1), with `version` optional as the ASN.1 says
/// (x509-cert requires it, which refuses v1 CRLs).
#[derive(der::Sequence)]
struct TbsList {
    #[asn1(optional = "true")]
    version: Option<x509_cert::Version>,
    signature: AlgorithmIdentifierOwned,
    issuer: Name,
    this_update: Time,
    next_update: Option<Time>,
    revoked_certificates: Option<Vec<Revoked>>,
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT", optional = "true")]
    crl_extensions: Option<Extensions>,
}

#[derive(der::Sequence)]
struct Revoked {
    serial_number: SerialNumber,
    revocation_date: Time,
    crl_entry_extensions: Option<Extensions>,
}

fn bad(reason: impl Into<String>) -> MdsError {
    MdsError::crl(None, reason)
}

/// A serial number as compared: big-endian, leading zero bytes stripped.
fn normalize_serial(serial: &[u8]) -> &[u8] {
    let first = serial.iter().position(|b| *b != 0).unwrap_or(serial.len());
    &serial[first..]
}

impl Crl {
    /// Parses a CRL from DER or PEM (`-----BEGIN X509 CRL-----`, one block).
    pub fn parse(der_or_pem: &[u8]) -> Result<Crl, MdsError> {
        if der_or_pem.len() > limits::CRL {
            return Err(MdsError::TooLarge {
                field: "CRL".to_string(),
                limit: limits::CRL,
            });
        }
        let der = match super::pem_text(der_or_pem) {
            Some(text) => {
                let mut blocks = super::pem_blocks(text, "X509 CRL").map_err(bad)?;
                if blocks.len() != 1 {
                    return Err(bad(format!(
                        "{} PEM X509 CRL blocks; give one CRL per input",
                        blocks.len()
                    )));
                }
                blocks.remove(0)
            }
            None => der_or_pem.to_vec(),
        };
        let outer = SignedList::from_der(&der)
            .map_err(|e| bad(format!("not a DER CertificateList: {e}")))?;
        let tbs = outer
            .tbs_cert_list
            .to_der()
            .map_err(|e| bad(format!("TBSCertList: {e}")))?;
        let list = TbsList::from_der(&tbs).map_err(|e| bad(format!("TBSCertList: {e}")))?;
        if list.signature != outer.signature_algorithm {
            return Err(bad(
                "signatureAlgorithm differs from the TBSCertList's signature field",
            ));
        }
        let signature = outer
            .signature
            .as_bytes()
            .ok_or_else(|| bad("signature bit string is not octet-aligned"))?
            .to_vec();
        let signature_algorithm = outer.signature_algorithm;
        match list.version {
            None | Some(x509_cert::Version::V2) => {}
            Some(v) => return Err(bad(format!("version {v:?}: a CRL is v1 or v2"))),
        }
        let has_extensions = list.crl_extensions.is_some()
            || list
                .revoked_certificates
                .iter()
                .flatten()
                .any(|r| r.crl_entry_extensions.is_some());
        if list.version.is_none() && has_extensions {
            return Err(bad("a v1 CRL (no version) carries extensions"));
        }
        let scope = read_crl_extensions(list.crl_extensions.as_deref().unwrap_or(&[]))?;

        let entries = list.revoked_certificates.unwrap_or_default();
        if entries.len() > limits::CRL_ENTRIES {
            return Err(MdsError::TooLarge {
                field: "CRL revokedCertificates".to_string(),
                limit: limits::CRL_ENTRIES,
            });
        }
        let mut revoked = HashSet::with_capacity(entries.len());
        for (i, entry) in entries.iter().enumerate() {
            for ext in entry.crl_entry_extensions.iter().flatten() {
                if ext.extn_id == oid::CERTIFICATE_ISSUER {
                    return Err(bad(format!(
                        "revokedCertificates[{i}] names a certificateIssuer: indirect CRLs are not supported"
                    )));
                }
                if ext.critical {
                    return Err(bad(format!(
                        "revokedCertificates[{i}]: critical entry extension {} is not supported",
                        ext.extn_id
                    )));
                }
            }
            revoked.insert(normalize_serial(entry.serial_number.as_bytes()).to_vec());
        }

        Ok(Crl {
            der,
            tbs,
            signature_algorithm,
            signature,
            issuer: list.issuer,
            this_update: list.this_update.to_system_time(),
            next_update: list.next_update.map(|t| t.to_system_time()),
            revoked,
            scope,
        })
    }

    /// The exact DER of the CRL.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The issuer's name, as encoded.
    pub fn issuer(&self) -> &Name {
        &self.issuer
    }

    /// The issuer's name as text (RFC 4514).
    pub fn issuer_text(&self) -> String {
        self.issuer.to_string()
    }

    /// When the CRL was published.
    pub fn this_update(&self) -> SystemTime {
        self.this_update
    }

    /// When the issuer promised the next CRL, if it said.
    pub fn next_update(&self) -> Option<SystemTime> {
        self.next_update
    }

    /// How many serials the CRL lists.
    pub fn revoked_count(&self) -> usize {
        self.revoked.len()
    }

    /// Whether `serial` (big-endian, as `SerialNumber::as_bytes` gives it;
    /// leading zero bytes do not matter) is listed.
    pub fn is_revoked(&self, serial: &[u8]) -> bool {
        self.revoked.contains(normalize_serial(serial))
    }

    /// The module's timing rule: current for `at` when `nextUpdate >= at`,
    /// or when published after `at`.
    pub fn is_current_at(&self, at: SystemTime) -> bool {
        self.this_update > at || self.next_update.is_some_and(|next| next >= at)
    }

    /// Verifies that `issuer_key` signed the CRL, over the TBSCertList bytes
    /// exactly as received.
    pub fn verify_signed_by(&self, issuer_key: &VerifyingKey) -> Result<(), MdsError> {
        let alg = certpath::signature_algorithm(&self.signature_algorithm, "CRL")
            .map_err(|e| bad(e.to_string()))?;
        issuer_key
            .verify(alg, &self.tbs, &self.signature, "CRL.signature")
            .map_err(|e| match e {
                crate::webauthn::Error::BadSignature { .. } => {
                    bad("signature does not verify with the issuer's key")
                }
                other => bad(other.to_string()),
            })
    }

    /// Whether this CRL speaks for `cert`: same issuer name, and a scope
    /// (issuingDistributionPoint) that includes it.
    pub fn covers(&self, cert: &Cert) -> bool {
        if &self.issuer != cert.tbs().issuer() {
            return false;
        }
        let is_ca = cert.basic_constraints().is_ok_and(|(ca, _)| ca);
        if (self.scope.only_user_certs && is_ca) || (self.scope.only_ca_certs && !is_ca) {
            return false;
        }
        let Some(idp_name) = &self.scope.distribution_point else {
            return true;
        };
        let Some((value, _)) = cert.extension(&oid::CRL_DISTRIBUTION_POINTS) else {
            return false;
        };
        let Ok(points) = CrlDistributionPoints::from_der(value) else {
            return false;
        };
        points
            .0
            .iter()
            .filter_map(|dp| dp.distribution_point.as_ref())
            .any(|name| same_point(name, idp_name))
    }
}

/// RFC 5280 §6.3.3 (b)(2)(i): the names match when they share a general name.
fn same_point(a: &DistributionPointName, b: &DistributionPointName) -> bool {
    match (a, b) {
        (DistributionPointName::FullName(x), DistributionPointName::FullName(y)) => {
            x.iter().any(|n| y.contains(n))
        }
        _ => a == b,
    }
}

fn read_crl_extensions(extensions: &[x509_cert::ext::Extension]) -> Result<Scope, MdsError> {
    let mut scope = Scope::default();
    let mut seen: Vec<ObjectIdentifier> = Vec::new();
    for ext in extensions {
        if seen.contains(&ext.extn_id) {
            return Err(bad(format!("extension {} appears twice", ext.extn_id)));
        }
        seen.push(ext.extn_id);
        if ext.extn_id == oid::DELTA_CRL_INDICATOR {
            return Err(bad("a delta CRL is not a complete list; give the base CRL"));
        } else if ext.extn_id == oid::ISSUING_DISTRIBUTION_POINT {
            let idp = IssuingDistributionPoint::from_der(ext.extn_value.as_bytes())
                .map_err(|e| bad(format!("issuingDistributionPoint: {e}")))?;
            if idp.indirect_crl {
                return Err(bad("indirect CRLs are not supported"));
            }
            if idp.only_some_reasons.is_some() {
                return Err(bad(
                    "a CRL limited to some revocation reasons is not a complete list",
                ));
            }
            if idp.only_contains_attribute_certs {
                return Err(bad("an attribute-certificate CRL covers no certificate"));
            }
            scope = Scope {
                only_user_certs: idp.only_contains_user_certs,
                only_ca_certs: idp.only_contains_ca_certs,
                distribution_point: idp.distribution_point,
            };
        } else if ext.critical
            && ext.extn_id != oid::AUTHORITY_KEY_IDENTIFIER
            && ext.extn_id != oid::CRL_NUMBER
        {
            return Err(bad(format!(
                "critical extension {} is not supported",
                ext.extn_id
            )));
        }
    }
    Ok(scope)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vector(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/../shared/vectors/mds/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn root_r3() -> Cert {
        super::super::parse_roots(&vector("root-r3.pem"), "root")
            .unwrap()
            .remove(0)
    }

    #[test]
    fn globalsign_root_crl_parses_and_verifies() {
        let crl = Crl::parse(&vector("root-r3.crl")).unwrap();
        let root = root_r3();
        assert_eq!(crl.issuer(), root.tbs().subject());
        assert_eq!(crl.revoked_count(), 36);
        crl.verify_signed_by(&root.public_key().unwrap()).unwrap();
        assert_eq!(
            crate::rfc3339::format(crl.this_update()),
            "2024-07-07T00:00:00Z"
        );
        assert_eq!(
            crl.next_update().map(crate::rfc3339::format).as_deref(),
            Some("2024-10-15T00:00:00Z")
        );
        // Listed serials, with or without a leading zero byte.
        assert!(crl.is_revoked(&[0x04, 0, 0, 0, 0, 0x01, 0x31, 0x89, 0xC6, 0x46, 0xEC]));
        assert!(crl.is_revoked(&[0, 0x04, 0, 0, 0, 0, 0x01, 0x31, 0x89, 0xC6, 0x46, 0xEC]));
        assert!(!crl.is_revoked(&[0x04]));

        // The CRL of the EV intermediate is not signed by the root.
        let ev = Crl::parse(&vector("gsextendvalsha2g3r3.crl")).unwrap();
        assert_eq!(ev.revoked_count(), 207);
        assert!(
            ev.verify_signed_by(&root.public_key().unwrap())
                .unwrap_err()
                .to_string()
                .contains("does not verify")
        );
    }

    #[test]
    fn timing_rule() {
        let crl = Crl::parse(&vector("root-r3.crl")).unwrap();
        let at = |s: &str| crate::rfc3339::parse(s).unwrap();
        // Published after the time judged: current, whatever its nextUpdate.
        assert!(crl.is_current_at(at("2021-11-15T00:00:00Z")));
        // Within its period, and on its nextUpdate.
        assert!(crl.is_current_at(at("2024-08-01T00:00:00Z")));
        assert!(crl.is_current_at(at("2024-10-15T00:00:00Z")));
        // Past its nextUpdate: the issuer has promised newer news.
        assert!(!crl.is_current_at(at("2024-10-15T00:00:01Z")));
    }

    #[test]
    fn pem_and_garbage() {
        let der = vector("root-r3.crl");
        let pem = der::pem::encode_string("X509 CRL", der::pem::LineEnding::LF, &der).unwrap();
        let crl = Crl::parse(pem.as_bytes()).unwrap();
        assert_eq!(crl.der(), der.as_slice());
        let two = format!("{pem}{pem}");
        assert!(Crl::parse(two.as_bytes()).is_err());
        assert!(matches!(
            Crl::parse(b"not a crl"),
            Err(MdsError::Crl { index: None, .. })
        ));
        let mut truncated = der.clone();
        truncated.truncate(der.len() - 1);
        assert!(Crl::parse(&truncated).is_err());
        // A certificate is not a CRL.
        assert!(Crl::parse(&root_r3().der).is_err());
    }

    #[test]
    fn a_tampered_crl_fails_its_signature() {
        let mut der = vector("root-r3.crl");
        let serial = [0x04, 0, 0, 0, 0, 0x01, 0x31, 0x89, 0xC6, 0x46, 0xEC];
        let at = der.windows(serial.len()).position(|w| w == serial).unwrap();
        // Unlist the serial: still a well-formed CRL, but not the one signed.
        der[at + serial.len() - 1] ^= 0x01;
        let crl = Crl::parse(&der).unwrap();
        assert!(!crl.is_revoked(&serial));
        assert!(
            crl.verify_signed_by(&root_r3().public_key().unwrap())
                .is_err()
        );
    }
}
