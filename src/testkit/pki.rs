//! Test certificate authorities: root -> intermediate -> attestation leaf,
//! every field of each certificate adjustable before it is signed.
//!
//! Certificates are encoded through local structures with x509-cert's
//! component types, as `keys::cert` does, because x509-cert 0.3 keeps its
//! own certificate fields private without the `builder` feature.

use std::str::FromStr as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use der::asn1::{BitString, Null, OctetString};
use der::oid::AssociatedOid;
use der::{Decode as _, Encode, Sequence};
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, KeyUsage, KeyUsages, SubjectKeyIdentifier,
};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::{Time, Validity};
use x509_cert::{AlgorithmIdentifier, SubjectPublicKeyInfo};

use super::Attestation;
use super::keys::SigningKey;
use crate::webauthn::CoseAlgorithm;
use crate::webauthn::certpath::{Cert, oid};

const DAY: Duration = Duration::from_secs(86_400);

/// Everything about one certificate except its keys.
#[derive(Clone, Debug)]
pub struct CertSpec {
    /// RFC 4514, most significant last: `CN=x,OU=y,O=z,C=CH`.
    pub subject: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// X.509 v3 (true) or v1 (false: no version field, no extensions).
    pub v3: bool,
    /// basicConstraints (critical): `Some((cA, pathLen))`, or absent.
    pub basic_constraints: Option<(bool, Option<u8>)>,
    /// keyUsage (critical), or absent.
    pub key_usage: Option<der::flagset::FlagSet<KeyUsages>>,
    /// id-fido-gen-ce-aaguid, or absent.
    pub aaguid: Option<[u8; 16]>,
    pub aaguid_critical: bool,
    /// Subject and authority key identifiers.
    pub key_identifiers: bool,
    /// Appended as given.
    pub extra_extensions: Vec<Extension>,
}

impl CertSpec {
    fn base(subject: &str, now: SystemTime, years: u64) -> CertSpec {
        CertSpec {
            subject: subject.to_string(),
            not_before: now - DAY,
            not_after: now + DAY * 365 * years as u32,
            v3: true,
            basic_constraints: None,
            key_usage: None,
            aaguid: None,
            aaguid_critical: false,
            key_identifiers: true,
            extra_extensions: Vec::new(),
        }
    }

    /// A self-signed root CA.
    pub fn root(now: SystemTime) -> CertSpec {
        CertSpec {
            basic_constraints: Some((true, None)),
            key_usage: Some(KeyUsages::KeyCertSign | KeyUsages::CRLSign),
            ..CertSpec::base(
                "CN=Signet Test Attestation Root,O=Signet Test,C=CH",
                now,
                20,
            )
        }
    }

    /// An intermediate CA that issues only end-entity certificates.
    pub fn intermediate(now: SystemTime) -> CertSpec {
        CertSpec {
            basic_constraints: Some((true, Some(0))),
            key_usage: Some(KeyUsages::KeyCertSign | KeyUsages::CRLSign),
            ..CertSpec::base(
                "CN=Signet Test Attestation CA 1,O=Signet Test,C=CH",
                now,
                10,
            )
        }
    }

    /// A packed attestation leaf meeting WebAuthn §8.2.1: v3; C, O,
    /// OU "Authenticator Attestation", CN; basicConstraints cA false; the
    /// AAGUID extension, not critical.
    pub fn packed_leaf(now: SystemTime, aaguid: [u8; 16]) -> CertSpec {
        CertSpec {
            basic_constraints: Some((false, None)),
            key_usage: Some(KeyUsages::DigitalSignature.into()),
            aaguid: Some(aaguid),
            ..CertSpec::base(
                "CN=Signet Test Authenticator,OU=Authenticator Attestation,O=Signet Test,C=CH",
                now,
                5,
            )
        }
    }

    /// A U2F attestation certificate: only a subject, as U2F tokens ship them.
    pub fn u2f_leaf(now: SystemTime) -> CertSpec {
        CertSpec {
            basic_constraints: Some((false, None)),
            ..CertSpec::base("CN=Signet Test U2F Token", now, 5)
        }
    }

    /// Valid from `not_before` to `not_after`, relative to `now`.
    pub fn valid(mut self, not_before: SystemTime, not_after: SystemTime) -> CertSpec {
        self.not_before = not_before;
        self.not_after = not_after;
        self
    }
}

/// A certificate with its key.
#[derive(Debug)]
pub struct Issued {
    pub key: SigningKey,
    pub der: Vec<u8>,
    pub spec: CertSpec,
}

impl Issued {
    /// Parsed as the engine parses trust anchors and chain elements.
    pub fn cert(&self) -> Cert {
        Cert::parse(&self.der, "trustAnchor").expect("own certificate parses")
    }

    /// Issues a certificate for a fresh `alg` key; `issuer` None means self-signed.
    pub fn new(spec: CertSpec, alg: CoseAlgorithm, issuer: Option<&Issued>) -> Issued {
        let key = SigningKey::generate(alg);
        let der = issue(
            &spec,
            &key,
            issuer.map(|i| (i.spec.subject.as_str(), &i.key)),
        );
        Issued { key, der, spec }
    }
}

/// RFC 5280 `TBSCertificate` without the unique identifiers.
#[derive(Clone, Debug, Sequence)]
struct TbsCertificate {
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT", optional = "true")]
    version: Option<x509_cert::Version>,
    serial_number: SerialNumber,
    signature: AlgorithmIdentifier,
    issuer: Name,
    validity: Validity,
    subject: Name,
    subject_public_key_info: SubjectPublicKeyInfo,
    #[asn1(context_specific = "3", tag_mode = "EXPLICIT", optional = "true")]
    extensions: Option<Vec<Extension>>,
}

#[derive(Clone, Debug, Sequence)]
struct Certificate {
    tbs_certificate: TbsCertificate,
    signature_algorithm: AlgorithmIdentifier,
    signature: BitString,
}

fn time(t: SystemTime) -> Time {
    // X.509 has whole seconds only.
    let secs = t
        .duration_since(UNIX_EPOCH)
        .expect("time after 1970")
        .as_secs();
    Time::try_from(UNIX_EPOCH + Duration::from_secs(secs)).expect("encodable time")
}

fn extension<T: AssociatedOid + Encode>(critical: bool, value: &T) -> Extension {
    Extension {
        extn_id: T::OID,
        critical,
        extn_value: OctetString::new(value.to_der().expect("extension DER")).expect("octet string"),
    }
}

fn key_identifier(spki_der: &[u8]) -> OctetString {
    let spki = SubjectPublicKeyInfo::from_der(spki_der).expect("SPKI");
    let digest = crate::keys::sha256(spki.subject_public_key.raw_bytes());
    OctetString::new(&digest[..20]).expect("key identifier")
}

fn signature_algorithm(key: &SigningKey) -> AlgorithmIdentifier {
    let (oid, null) = key.x509_signature_algorithm();
    AlgorithmIdentifier {
        oid,
        parameters: null.then(|| der::Any::encode_from(&Null).expect("NULL")),
    }
}

/// DER of a certificate for `subject_key` per `spec`, signed by `issuer`
/// (`(issuer DN, issuer key)`) or by itself.
pub fn issue(
    spec: &CertSpec,
    subject_key: &SigningKey,
    issuer: Option<(&str, &SigningKey)>,
) -> Vec<u8> {
    let (issuer_dn, issuer_key) = issuer.unwrap_or((&spec.subject, subject_key));
    let subject_spki = subject_key.spki_der();
    let mut extensions = Vec::new();
    if let Some((ca, path_len)) = spec.basic_constraints {
        extensions.push(extension(
            true,
            &BasicConstraints {
                ca,
                path_len_constraint: path_len,
            },
        ));
    }
    if let Some(usage) = spec.key_usage {
        extensions.push(extension(true, &KeyUsage(usage)));
    }
    if spec.key_identifiers {
        extensions.push(extension(
            false,
            &SubjectKeyIdentifier(key_identifier(&subject_spki)),
        ));
        extensions.push(extension(
            false,
            &AuthorityKeyIdentifier {
                key_identifier: Some(key_identifier(&issuer_key.spki_der())),
                ..Default::default()
            },
        ));
    }
    if let Some(aaguid) = spec.aaguid {
        // The extension value is itself an OCTET STRING holding the AAGUID.
        let inner = OctetString::new(aaguid.to_vec()).expect("AAGUID");
        extensions.push(Extension {
            extn_id: oid::FIDO_AAGUID,
            critical: spec.aaguid_critical,
            extn_value: OctetString::new(inner.to_der().expect("AAGUID DER"))
                .expect("AAGUID extension"),
        });
    }
    extensions.extend(spec.extra_extensions.iter().cloned());

    let mut serial = [0u8; 16];
    aws_lc_rs::rand::fill(&mut serial).expect("serial");
    serial[0] = (serial[0] & 0x7f) | 0x40;

    let tbs = TbsCertificate {
        version: spec.v3.then_some(x509_cert::Version::V3),
        serial_number: SerialNumber::new(&serial).expect("serial"),
        signature: signature_algorithm(issuer_key),
        issuer: Name::from_str(issuer_dn).expect("issuer DN"),
        validity: Validity::new(time(spec.not_before), time(spec.not_after)),
        subject: Name::from_str(&spec.subject).expect("subject DN"),
        subject_public_key_info: SubjectPublicKeyInfo::from_der(&subject_spki).expect("SPKI"),
        extensions: (spec.v3 && !extensions.is_empty()).then_some(extensions),
    };
    let signature = issuer_key.sign(&tbs.to_der().expect("TBS DER"));
    Certificate {
        tbs_certificate: tbs,
        signature_algorithm: signature_algorithm(issuer_key),
        signature: BitString::from_bytes(&signature).expect("signature bits"),
    }
    .to_der()
    .expect("certificate DER")
}

/// How to build a [`TestPki`]: edit any certificate's spec or key algorithm.
#[derive(Clone, Debug)]
pub struct PkiSpec {
    pub root: CertSpec,
    pub root_alg: CoseAlgorithm,
    /// None: the root issues the leaf directly.
    pub intermediate: Option<CertSpec>,
    pub intermediate_alg: CoseAlgorithm,
    pub leaf: CertSpec,
    pub leaf_alg: CoseAlgorithm,
}

impl PkiSpec {
    /// root -> intermediate -> packed leaf for `aaguid`, all ES256.
    pub fn packed(now: SystemTime, aaguid: [u8; 16]) -> PkiSpec {
        PkiSpec {
            root: CertSpec::root(now),
            root_alg: CoseAlgorithm::Es256,
            intermediate: Some(CertSpec::intermediate(now)),
            intermediate_alg: CoseAlgorithm::Es256,
            leaf: CertSpec::packed_leaf(now, aaguid),
            leaf_alg: CoseAlgorithm::Es256,
        }
    }

    /// root -> U2F attestation certificate (P-256), as fido-u2f sends one
    /// certificate only.
    pub fn fido_u2f(now: SystemTime) -> PkiSpec {
        PkiSpec {
            root: CertSpec::root(now),
            root_alg: CoseAlgorithm::Es256,
            intermediate: None,
            intermediate_alg: CoseAlgorithm::Es256,
            leaf: CertSpec::u2f_leaf(now),
            leaf_alg: CoseAlgorithm::Es256,
        }
    }
}

/// A test attestation PKI. The root is the trust anchor to hand the
/// verifier; `x5c` is what an authenticator would send.
#[derive(Debug)]
pub struct TestPki {
    pub root: Issued,
    pub intermediate: Option<Issued>,
    pub leaf: Issued,
}

impl TestPki {
    pub fn build(spec: PkiSpec) -> TestPki {
        let root = Issued::new(spec.root, spec.root_alg, None);
        let intermediate = spec
            .intermediate
            .map(|s| Issued::new(s, spec.intermediate_alg, Some(&root)));
        let leaf = Issued::new(
            spec.leaf,
            spec.leaf_alg,
            Some(intermediate.as_ref().unwrap_or(&root)),
        );
        TestPki {
            root,
            intermediate,
            leaf,
        }
    }

    /// root -> intermediate -> packed leaf, valid around `now`.
    pub fn packed(now: SystemTime, aaguid: [u8; 16]) -> TestPki {
        TestPki::build(PkiSpec::packed(now, aaguid))
    }

    /// root -> U2F attestation certificate, valid around `now`.
    pub fn fido_u2f(now: SystemTime) -> TestPki {
        TestPki::build(PkiSpec::fido_u2f(now))
    }

    /// The root, as a trust anchor.
    pub fn anchor(&self) -> Cert {
        self.root.cert()
    }

    /// Leaf first, then the intermediate; the root is left out, as §8.2
    /// asks of packed.
    pub fn x5c(&self) -> Vec<Vec<u8>> {
        let mut chain = vec![self.leaf.der.clone()];
        chain.extend(self.intermediate.iter().map(|i| i.der.clone()));
        chain
    }

    /// [`TestPki::x5c`] followed by the root itself.
    pub fn x5c_with_root(&self) -> Vec<Vec<u8>> {
        let mut chain = self.x5c();
        chain.push(self.root.der.clone());
        chain
    }

    /// A packed full attestation signed by the leaf key.
    pub fn packed_attestation(&self) -> Attestation<'_> {
        Attestation::Packed {
            key: &self.leaf.key,
            x5c: self.x5c(),
        }
    }

    /// A fido-u2f attestation signed by the leaf key, with the leaf alone.
    pub fn fido_u2f_attestation(&self) -> Attestation<'_> {
        Attestation::FidoU2f {
            key: &self.leaf.key,
            x5c: vec![self.leaf.der.clone()],
        }
    }
}
