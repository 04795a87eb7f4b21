//! MDS3 BLOB verification: the two real BLOBs of the shared corpus
//! (`../shared/vectors/mds`, production no=9 and conformance no=42), then
//! BLOBs signed by a throwaway PKI made here, each broken in one way and
//! refused for that reason.
//!
//! Times are fixed; nothing reads the clock.

use std::time::SystemTime;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self as sig, EcdsaKeyPair, RsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CertifiedIssuer,
    DistinguishedName, DnType, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams,
    SerialNumber, date_time_ymd,
};
use serde_json::{Value, json};
use signet::mds::blob::{self, Blob, JwsAlgorithm};
use signet::mds::crl::Crl;
use signet::mds::{MdsError, parse_roots};
use signet::webauthn::certpath::Cert;

// ---------------------------------------------------------------------------
// The real BLOBs

fn vector(name: &str) -> Vec<u8> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/vectors/mds/").to_string() + name;
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn time(text: &str) -> SystemTime {
    signet::rfc3339::parse(text).unwrap()
}

fn root_r3() -> Vec<Cert> {
    parse_roots(&vector("root-r3.pem"), "root-r3").unwrap()
}

fn conformance_root() -> Vec<Cert> {
    parse_roots(&vector("conformance-mds3-root.pem"), "conformance").unwrap()
}

fn globalsign_crls() -> Vec<Crl> {
    ["root-r3.crl", "gsextendvalsha2g3r3.crl"]
        .iter()
        .map(|name| Crl::parse(&vector(name)).unwrap())
        .collect()
}

fn uuid(text: &str) -> [u8; 16] {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    let bytes: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    bytes.try_into().unwrap()
}

#[test]
fn production_blob_verifies_with_globalsign_root_and_crls() {
    let blob = blob::verify(
        &vector("blob.jwt"),
        &root_r3(),
        &globalsign_crls(),
        time("2021-11-15T00:00:00Z"),
    )
    .unwrap();
    assert_eq!(blob.no, 9);
    assert_eq!(
        blob.warnings,
        [],
        "every production attestation root parses"
    );
    assert_eq!(blob.next_update, "2021-12-01");
    assert_eq!(blob.next_update_time, time("2021-12-01T00:00:00Z"));
    assert_eq!(blob.alg, JwsAlgorithm::Rs256);
    assert!(blob.revocation_checked);
    assert!(
        blob.signer_subject.starts_with("CN=mds.fidoalliance.org"),
        "{}",
        blob.signer_subject
    );
    assert_eq!(blob.chain_subjects.len(), 3, "{:?}", blob.chain_subjects);
    assert!(blob.chain_subjects[2].contains("GlobalSign Root CA - R3"));
    assert!(
        blob.legal_header
            .as_deref()
            .unwrap()
            .starts_with("Retrieval and use of this BLOB indicates acceptance")
    );

    let entries = blob.entries();
    assert_eq!(entries.len(), 98);
    assert_eq!(entries.iter().filter(|e| e.aaguid.is_some()).count(), 46);
    assert_eq!(entries.iter().filter(|e| e.aaid.is_some()).count(), 17);
    assert_eq!(
        entries
            .iter()
            .filter(|e| !e.attestation_certificate_key_identifiers.is_empty())
            .count(),
        35
    );
    assert!(entries.iter().all(|e| e.statement.is_some()));

    // Any AAGUID entry is found by its AAGUID, with its statement.
    let first = entries.iter().find(|e| e.aaguid.is_some()).unwrap();
    let aaguid = first.aaguid.unwrap();
    let found = blob.catalog.by_aaguid(&aaguid).unwrap();
    assert_eq!(found.index, first.index);
    let statement = found.statement.as_ref().unwrap();
    assert_eq!(statement.protocol_family.as_deref(), Some("fido2"));
    assert!(statement.description.is_some());
    assert!(!statement.attestation_types.is_empty());
    assert!(!statement.authentication_algorithms.is_empty());
    assert_eq!(
        statement.json["aaguid"].as_str().map(uuid),
        Some(aaguid),
        "the JSON is kept as is"
    );
    assert!(found.latest_status().is_some());
    assert_eq!(blob.catalog.by_aaguid(&[0x55; 16]).map(|e| e.index), None);

    // The U2F entry of the corpus, by key identifier.
    let u2f = blob
        .catalog
        .by_key_id(&[
            0x14, 0x34, 0xd2, 0xf2, 0x77, 0xfe, 0x47, 0x9c, 0x35, 0xdd, 0xf6, 0xaa, 0x4d, 0x08,
            0xa0, 0x7c, 0xbc, 0xe9, 0x9d, 0xd7,
        ])
        .unwrap();
    let s = u2f.statement.as_ref().unwrap();
    assert_eq!(s.protocol_family.as_deref(), Some("u2f"));
    assert_eq!(s.attestation_types, ["basic_full"]);
    assert_eq!(s.key_protection, ["hardware", "secure_element"]);
    assert_eq!(s.matcher_protection, ["on_chip"]);
    assert_eq!(s.attachment_hint, ["external", "wired"]);
    assert_eq!(s.authenticator_version, Some(2));
    assert_eq!(u2f.latest_status().unwrap().status, "NOT_FIDO_CERTIFIED");
    assert_eq!(
        u2f.latest_status().unwrap().effective_date.as_deref(),
        Some("2021-09-21")
    );

    // Attestation roots are parsed certificates; one entry carries 39.
    let roots: usize = entries
        .iter()
        .filter_map(|e| e.statement.as_ref())
        .map(|s| s.attestation_root_certificates.len())
        .sum();
    assert!(roots > 98, "{roots}");
    assert!(
        entries
            .iter()
            .filter_map(|e| e.statement.as_ref())
            .any(|s| s.attestation_root_certificates.len() == 39)
    );
    // Certification levels come from the FIDO_CERTIFIED_* statuses.
    assert!(entries.iter().any(|e| {
        e.status_reports
            .iter()
            .any(|r| r.certification_level.as_deref() == Some("L1"))
    }));
    // Status reports are not in date order; the latest is by date.
    let unsorted = entries
        .iter()
        .find(|e| {
            e.status_reports
                .windows(2)
                .any(|w| w[0].effective_date > w[1].effective_date)
        })
        .unwrap();
    let latest = unsorted.latest_status().unwrap();
    assert!(
        unsorted
            .status_reports
            .iter()
            .all(|r| r.effective_date <= latest.effective_date)
    );

    blob::check_newer(Some(8), &blob).unwrap();
    blob::check_newer(None, &blob).unwrap();
    assert_eq!(
        blob::check_newer(Some(9), &blob).unwrap_err(),
        MdsError::NotNewer { held: 9, got: 9 }
    );
}

#[test]
fn production_blob_without_crls_is_not_revocation_checked() {
    let blob = blob::verify(
        &vector("blob.jwt"),
        &root_r3(),
        &[],
        time("2021-11-30T00:00:00Z"),
    )
    .unwrap();
    assert!(!blob.revocation_checked);
    // Only the root's CRL: the signer's issuer (the EV CA) has none.
    let only_root = vec![Crl::parse(&vector("root-r3.crl")).unwrap()];
    match blob::verify(
        &vector("blob.jwt"),
        &root_r3(),
        &only_root,
        time("2021-11-30T00:00:00Z"),
    ) {
        Err(MdsError::NoCrl { subject, issuer }) => {
            assert!(subject.starts_with("CN=mds.fidoalliance.org"), "{subject}");
            assert!(issuer.contains("Extended Validation"), "{issuer}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn production_blob_is_stale_after_its_next_update_day() {
    let jwt = vector("blob.jwt");
    // The whole nextUpdate day still counts.
    blob::verify(&jwt, &root_r3(), &[], time("2021-12-01T23:59:59Z")).unwrap();
    assert_eq!(
        blob::verify(&jwt, &root_r3(), &[], time("2021-12-02T00:00:00Z")).unwrap_err(),
        MdsError::Stale {
            next_update: "2021-12-01".into()
        }
    );
    // The signer's certificate is valid until 2022-05-14: still "stale"
    // (authentic, old), and with the CRLs of 2024 too.
    assert!(matches!(
        blob::verify(
            &jwt,
            &root_r3(),
            &globalsign_crls(),
            time("2022-03-01T00:00:00Z")
        ),
        Err(MdsError::Stale { .. })
    ));
    // In 2023 the signer's certificate has expired: authenticity is judged
    // first, so the chain is what fails.
    match blob::verify(&jwt, &root_r3(), &[], time("2023-01-01T00:00:00Z")) {
        Err(MdsError::Chain(reason)) => assert!(reason.contains("expired"), "{reason}"),
        other => panic!("{other:?}"),
    }
    // A held BLOB ages: check_fresh re-judges it.
    let held = blob::verify(&jwt, &root_r3(), &[], time("2021-11-15T00:00:00Z")).unwrap();
    held.check_fresh(time("2021-12-01T12:00:00Z")).unwrap();
    assert!(held.is_stale(time("2023-01-01T00:00:00Z")));
}

#[test]
fn production_blob_does_not_chain_to_the_conformance_root() {
    match blob::verify(
        &vector("blob.jwt"),
        &conformance_root(),
        &[],
        time("2021-11-15T00:00:00Z"),
    ) {
        Err(MdsError::Chain(reason)) => {
            assert!(
                reason.contains("does not chain to any trust anchor"),
                "{reason}"
            )
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn production_crls_out_of_date_for_a_later_time_are_refused() {
    // Judged after the root CRL's nextUpdate (2024-10-15), and it was
    // published before: it no longer speaks for that time. (The chain has
    // expired by then too, so only the CRL is tested here.)
    let crl = Crl::parse(&vector("root-r3.crl")).unwrap();
    assert!(crl.is_current_at(time("2021-11-15T00:00:00Z")));
    assert!(!crl.is_current_at(time("2024-12-01T00:00:00Z")));
}

#[test]
fn conformance_blob_verifies_with_the_conformance_root() {
    let blob = blob::verify(
        &vector("test-blob.jwt"),
        &conformance_root(),
        &[],
        time("2022-11-08T00:00:00Z"),
    )
    .unwrap();
    assert_eq!(blob.no, 42);
    assert_eq!(blob.alg, JwsAlgorithm::Es256);
    assert_eq!(blob.next_update, "2022-11-09");
    assert_eq!(blob.entries().len(), 200);
    assert_eq!(blob.catalog.len(), 200);
    assert_eq!(
        blob.entries().iter().filter(|e| e.aaguid.is_some()).count(),
        100
    );
    assert_eq!(
        blob.entries().iter().filter(|e| e.aaid.is_some()).count(),
        100
    );
    let e = blob
        .catalog
        .by_aaguid(&uuid("dbc6ff39-6e05-415c-b268-021a871b660b"))
        .unwrap();
    assert_eq!(e.latest_status().unwrap().status, "FIDO_CERTIFIED_L2");
    assert_eq!(
        e.latest_status().unwrap().certification_level.as_deref(),
        Some("L2")
    );
    assert_eq!(
        e.statement
            .as_ref()
            .unwrap()
            .attestation_root_certificates
            .len(),
        1
    );
    assert!(blob.catalog.by_aaid("ff4b#ce50").is_some());

    // The 100 UAF entries share a conformance root whose notBefore is
    // 2017-02-29, a date that does not exist: each is kept, without that
    // root, and reported.
    assert_eq!(blob.warnings.len(), 100);
    for (k, warning) in blob.warnings.iter().enumerate() {
        let MdsError::Payload { field, reason } = warning else {
            panic!("{warning:?}");
        };
        assert_eq!(
            field,
            &format!(
                "entries[{}].metadataStatement.attestationRootCertificates[0]",
                100 + k
            )
        );
        assert!(
            reason.starts_with("left out: not an X.509 certificate"),
            "{reason}"
        );
    }
    for entry in blob.entries() {
        let s = entry.statement.as_ref().unwrap();
        if entry.aaid.is_some() {
            assert!(s.attestation_root_certificates.is_empty());
            assert_eq!(s.rejected_roots.len(), 1);
            assert_eq!(s.rejected_roots[0].index, 0);
        } else {
            assert_eq!(s.attestation_root_certificates.len(), 1);
            assert!(s.rejected_roots.is_empty());
        }
    }
    assert!(blob.entries().iter().any(|e| {
        e.latest_status()
            .is_some_and(|r| r.status == "ATTESTATION_KEY_COMPROMISE")
    }));
    // Not with the production root.
    assert!(matches!(
        blob::verify(
            &vector("test-blob.jwt"),
            &root_r3(),
            &[],
            time("2022-11-08T00:00:00Z")
        ),
        Err(MdsError::Chain(_))
    ));
}

#[test]
fn a_flipped_byte_in_a_real_blob_breaks_its_signature() {
    let mut jwt = vector("test-blob.jwt");
    let dot = jwt.iter().position(|b| *b == b'.').unwrap();
    // A payload character, swapped for another base64url character.
    let i = dot + 1000;
    jwt[i] = if jwt[i] == b'A' { b'B' } else { b'A' };
    assert_eq!(
        blob::verify(&jwt, &conformance_root(), &[], time("2022-11-08T00:00:00Z")).unwrap_err(),
        MdsError::Signature
    );
}

// ---------------------------------------------------------------------------
// A throwaway PKI: root -> intermediate -> signer

/// 2025-06-01T00:00:00Z.
const AT: &str = "2025-06-01T00:00:00Z";
const NEXT_UPDATE: &str = "2025-07-01";

fn at() -> SystemTime {
    time(AT)
}

struct Pki {
    root: CertifiedIssuer<'static, KeyPair>,
    int: CertifiedIssuer<'static, KeyPair>,
    int_serial: Vec<u8>,
    signer_der: Vec<u8>,
    signer_serial: Vec<u8>,
    signer: Signer,
}

enum Signer {
    Ec(EcdsaKeyPair),
    /// `true` for PS256, `false` for RS256.
    Rsa(RsaKeyPair, bool),
}

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Signet Test");
    dn.push(DnType::CommonName, cn);
    dn
}

fn ca_params(cn: &str, serial: &[u8]) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = name(cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.not_before = date_time_ymd(2020, 1, 1);
    p.not_after = date_time_ymd(2040, 1, 1);
    p.serial_number = Some(SerialNumber::from_slice(serial));
    p
}

impl Pki {
    fn new() -> Pki {
        Pki::with_signer(|| {
            let key = KeyPair::generate().unwrap();
            let ec = EcdsaKeyPair::from_pkcs8(
                &sig::ECDSA_P256_SHA256_FIXED_SIGNING,
                &key.serialize_der(),
            )
            .unwrap();
            (key, Signer::Ec(ec))
        })
    }

    /// An RSA signer, for RS256 (`pss` false) or PS256.
    fn rsa(pss: bool) -> Pki {
        Pki::with_signer(|| {
            let key = KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
                .unwrap();
            let rsa = RsaKeyPair::from_pkcs8(&key.serialize_der()).unwrap();
            (key, Signer::Rsa(rsa, pss))
        })
    }

    fn with_signer(make: impl FnOnce() -> (KeyPair, Signer)) -> Pki {
        let root = CertifiedIssuer::self_signed(
            ca_params("Test MDS Root", &[0x01]),
            KeyPair::generate().unwrap(),
        )
        .unwrap();
        let int_serial = vec![0x10, 0x20];
        let int = CertifiedIssuer::signed_by(
            ca_params("Test MDS Intermediate", &int_serial),
            KeyPair::generate().unwrap(),
            &root,
        )
        .unwrap();
        let (signer_key, signer) = make();
        let signer_serial = vec![0x7A, 0x01, 0x02];
        let mut p = CertificateParams::default();
        p.distinguished_name = name("mds.test.example");
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.not_before = date_time_ymd(2024, 1, 1);
        p.not_after = date_time_ymd(2027, 1, 1);
        p.serial_number = Some(SerialNumber::from_slice(&signer_serial));
        let signer_der = p.signed_by(&signer_key, &int).unwrap().der().to_vec();
        Pki {
            root,
            int,
            int_serial,
            signer_der,
            signer_serial,
            signer,
        }
    }

    fn roots(&self) -> Vec<Cert> {
        vec![Cert::parse(self.root.der(), "roots[0]").unwrap()]
    }

    fn alg(&self) -> &'static str {
        match &self.signer {
            Signer::Ec(_) => "ES256",
            Signer::Rsa(_, true) => "PS256",
            Signer::Rsa(_, false) => "RS256",
        }
    }

    fn x5c(&self) -> Value {
        json!([
            STANDARD.encode(&self.signer_der),
            STANDARD.encode(self.int.der())
        ])
    }

    fn header(&self) -> Value {
        json!({ "alg": self.alg(), "typ": "JWT", "x5c": self.x5c() })
    }

    fn sign(&self, input: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match &self.signer {
            Signer::Ec(key) => key.sign(&rng, input).unwrap().as_ref().to_vec(),
            Signer::Rsa(key, pss) => {
                let encoding: &'static dyn sig::RsaEncoding = if *pss {
                    &sig::RSA_PSS_SHA256
                } else {
                    &sig::RSA_PKCS1_SHA256
                };
                let mut out = vec![0; key.public_modulus_len()];
                key.sign(encoding, &rng, input, &mut out).unwrap();
                out
            }
        }
    }

    /// A compact JWS of `header` and `payload` (raw bytes), signed by the signer.
    fn jws_raw(&self, header: &[u8], payload: &[u8]) -> Vec<u8> {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(payload)
        );
        let signature = self.sign(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature)).into_bytes()
    }

    fn jws(&self, header: &Value, payload: &Value) -> Vec<u8> {
        self.jws_raw(
            header.to_string().as_bytes(),
            payload.to_string().as_bytes(),
        )
    }

    fn good(&self) -> Vec<u8> {
        self.jws(&self.header(), &payload(self))
    }

    /// A CRL from the intermediate (`by_root` false) or the root.
    fn crl(&self, by_root: bool, revoked: &[&[u8]]) -> Crl {
        self.crl_dated(by_root, revoked, (2025, 5, 1), (2025, 8, 1))
    }

    fn crl_dated(
        &self,
        by_root: bool,
        revoked: &[&[u8]],
        this: (i32, u8, u8),
        next: (i32, u8, u8),
    ) -> Crl {
        let params = CertificateRevocationListParams {
            this_update: date_time_ymd(this.0, this.1, this.2),
            next_update: date_time_ymd(next.0, next.1, next.2),
            crl_number: SerialNumber::from_slice(&[7]),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|serial| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(serial),
                    revocation_time: date_time_ymd(2025, 4, 1),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let issuer = if by_root { &self.root } else { &self.int };
        let crl = params.signed_by(issuer).unwrap();
        Crl::parse(crl.der()).unwrap()
    }

    fn crls(&self) -> Vec<Crl> {
        vec![self.crl(true, &[]), self.crl(false, &[])]
    }
}

const AAGUID: &str = "0123abcd-4567-89ef-0123-456789abcdef";

fn payload(pki: &Pki) -> Value {
    json!({
        "legalHeader": "Test terms.",
        "no": 17,
        "nextUpdate": NEXT_UPDATE,
        "entries": [
            {
                "aaguid": AAGUID,
                "metadataStatement": {
                    "aaguid": AAGUID,
                    "description": "Test Key FIDO2",
                    "authenticatorVersion": 5,
                    "protocolFamily": "fido2",
                    "schema": 3,
                    "attestationTypes": ["basic_full"],
                    "authenticationAlgorithms": ["secp256r1_ecdsa_sha256_raw"],
                    "attestationRootCertificates": [STANDARD.encode(pki.root.der())],
                    "keyProtection": ["hardware", "secure_element"],
                    "matcherProtection": ["on_chip"],
                    "attachmentHint": ["external", "wired"],
                    "futureField": {"anything": [1, 2, 3]}
                },
                "statusReports": [
                    {"status": "FIDO_CERTIFIED_L1", "effectiveDate": "2024-02-01"},
                    {"status": "FIDO_CERTIFIED", "effectiveDate": "2023-01-01", "certificateNumber": "FIDO20020"}
                ],
                "timeOfLastStatusChange": "2024-02-01"
            },
            {
                "attestationCertificateKeyIdentifiers": ["a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9"],
                "metadataStatement": {"description": "Test Key U2F", "protocolFamily": "u2f"},
                "statusReports": [{"status": "ATTESTATION_KEY_COMPROMISE", "effectiveDate": "2025-01-01"}],
                "timeOfLastStatusChange": "2025-01-01"
            },
            {
                "aaid": "ABCD#0001",
                "statusReports": [],
                "timeOfLastStatusChange": "2020-01-01"
            }
        ]
    })
}

fn verify(pki: &Pki, jwt: &[u8]) -> Result<Blob, MdsError> {
    blob::verify(jwt, &pki.roots(), &[], at())
}

fn header_error(pki: &Pki, header: &Value) -> (String, String) {
    match verify(pki, &pki.jws(header, &payload(pki))) {
        Err(MdsError::Header { field, reason }) => (field, reason),
        other => panic!("{other:?}"),
    }
}

fn payload_error(pki: &Pki, payload: Value) -> (String, String) {
    match verify(pki, &pki.jws(&pki.header(), &payload)) {
        Err(MdsError::Payload { field, reason }) => (field, reason),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_good_generated_blob_verifies_and_is_catalogued() {
    let pki = Pki::new();
    let blob = blob::verify(&pki.good(), &pki.roots(), &pki.crls(), at()).unwrap();
    assert_eq!(blob.no, 17);
    assert_eq!(blob.alg, JwsAlgorithm::Es256);
    assert!(blob.revocation_checked);
    assert_eq!(blob.legal_header.as_deref(), Some("Test terms."));
    assert_eq!(blob.signer_subject, "CN=mds.test.example,O=Signet Test");
    assert_eq!(blob.chain_subjects.len(), 3);
    assert_eq!(blob.entries().len(), 3);

    let fido2 = blob.catalog.by_aaguid(&uuid(AAGUID)).unwrap();
    assert_eq!(fido2.aaguid_text().as_deref(), Some(AAGUID));
    let s = fido2.statement.as_ref().unwrap();
    assert_eq!(s.description.as_deref(), Some("Test Key FIDO2"));
    assert_eq!(s.authenticator_version, Some(5));
    assert_eq!(s.attestation_root_certificates.len(), 1);
    assert_eq!(
        s.attestation_root_certificates[0].der,
        pki.root.der().to_vec()
    );
    assert_eq!(
        s.attestation_root_certificates[0].field,
        "entries[0].metadataStatement.attestationRootCertificates[0]"
    );
    assert_eq!(s.json["futureField"]["anything"][2], 3);
    let latest = fido2.latest_status().unwrap();
    assert_eq!(latest.status, "FIDO_CERTIFIED_L1");
    assert_eq!(latest.certification_level.as_deref(), Some("L1"));
    assert_eq!(
        fido2.status_reports[1].certificate_number.as_deref(),
        Some("FIDO20020")
    );
    assert_eq!(
        fido2.time_of_last_status_change.as_deref(),
        Some("2024-02-01")
    );

    let u2f = blob
        .catalog
        .by_key_id(&[
            0xa0, 0xb1, 0xc2, 0xd3, 0xe4, 0xf5, 0xa6, 0xb7, 0xc8, 0xd9, 0xe0, 0xf1, 0xa2, 0xb3,
            0xc4, 0xd5, 0xe6, 0xf7, 0xa8, 0xb9,
        ])
        .unwrap();
    assert_eq!(u2f.index, 1);
    assert_eq!(
        u2f.latest_status().unwrap().status,
        "ATTESTATION_KEY_COMPROMISE"
    );
    let uaf = blob.catalog.by_aaid("abcd#0001").unwrap();
    assert!(uaf.statement.is_none());
    assert!(uaf.latest_status().is_none());

    // Without CRLs it verifies too, and says so.
    assert!(!verify(&pki, &pki.good()).unwrap().revocation_checked);
    // A trailing newline (a downloaded file) is fine.
    let mut with_newline = pki.good();
    with_newline.extend_from_slice(b"\r\n");
    verify(&pki, &with_newline).unwrap();
}

#[test]
fn rs256_and_ps256_signers() {
    for pss in [false, true] {
        let pki = Pki::rsa(pss);
        let blob = blob::verify(&pki.good(), &pki.roots(), &pki.crls(), at()).unwrap();
        let expected = if pss {
            JwsAlgorithm::Ps256
        } else {
            JwsAlgorithm::Rs256
        };
        assert_eq!(blob.alg, expected);
        // The other RSA padding is a bad signature, not a header error.
        let mut header = pki.header();
        header["alg"] = json!(if pss { "RS256" } else { "PS256" });
        assert_eq!(
            verify(&pki, &pki.jws(&header, &payload(&pki))).unwrap_err(),
            MdsError::Signature
        );
        // ES256 with an RSA key: named as an algorithm mismatch.
        header["alg"] = json!("ES256");
        let (field, reason) = header_error(&pki, &header);
        assert_eq!(field, "alg");
        assert!(reason.contains("RSA"), "{reason}");
    }
}

#[test]
fn a_payload_changed_after_signing_fails_the_signature() {
    let pki = Pki::new();
    let jwt = pki.good();
    let text = String::from_utf8(jwt).unwrap();
    let parts: Vec<&str> = text.split('.').collect();
    let mut payload = URL_SAFE_NO_PAD.decode(parts[1]).unwrap();
    let at_no = payload.windows(7).position(|w| w == b"\"no\":17").unwrap();
    payload[at_no + 6] = b'8'; // no 18
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(&payload),
        parts[2]
    );
    assert_eq!(
        verify(&pki, forged.as_bytes()).unwrap_err(),
        MdsError::Signature
    );
    // And a signature by another key.
    let other = Pki::new();
    let mixed = format!(
        "{}.{}.{}",
        parts[0],
        parts[1],
        String::from_utf8(other.good())
            .unwrap()
            .rsplit('.')
            .next()
            .unwrap()
    );
    assert_eq!(
        verify(&pki, mixed.as_bytes()).unwrap_err(),
        MdsError::Signature
    );
    // An ES256 signature of the wrong length is a malformed part.
    let short = format!(
        "{}.{}.{}",
        parts[0],
        parts[1],
        URL_SAFE_NO_PAD.encode([1u8; 63])
    );
    assert!(matches!(
        verify(&pki, short.as_bytes()),
        Err(MdsError::Jws {
            part: "signature",
            ..
        })
    ));
}

#[test]
fn the_wrong_root_is_a_chain_error() {
    let pki = Pki::new();
    let other = Pki::new();
    match blob::verify(&pki.good(), &other.roots(), &[], at()) {
        Err(MdsError::Chain(reason)) => {
            assert!(
                reason.contains("does not chain to any trust anchor"),
                "{reason}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        blob::verify(&pki.good(), &[], &[], at()),
        Err(MdsError::Chain(_))
    ));
    // Out of the certificates' validity.
    assert!(matches!(
        blob::verify(&pki.good(), &pki.roots(), &[], time("2027-06-01T00:00:00Z")),
        Err(MdsError::Chain(_))
    ));
}

#[test]
fn the_root_may_end_x5c_only_if_it_is_the_pinned_root() {
    let pki = Pki::new();
    let mut header = pki.header();
    header["x5c"]
        .as_array_mut()
        .unwrap()
        .push(json!(STANDARD.encode(pki.root.der())));
    let blob = verify(&pki, &pki.jws(&header, &payload(&pki))).unwrap();
    assert_eq!(blob.chain_subjects.len(), 3);
    // With CRLs: the copy of the root is not itself checked.
    blob::verify(
        &pki.jws(&header, &payload(&pki)),
        &pki.roots(),
        &pki.crls(),
        at(),
    )
    .unwrap();

    // Another self-signed "root" with the same name is refused.
    let other = Pki::new();
    let mut header = pki.header();
    header["x5c"]
        .as_array_mut()
        .unwrap()
        .push(json!(STANDARD.encode(other.root.der())));
    match verify(&pki, &pki.jws(&header, &payload(&pki))) {
        Err(MdsError::Chain(reason)) => assert!(reason.contains("x5c[2]"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_revoked_signer_is_refused() {
    let pki = Pki::new();
    let crls = vec![
        pki.crl(true, &[]),
        pki.crl(false, &[&[0x55], &pki.signer_serial]),
    ];
    match blob::verify(&pki.good(), &pki.roots(), &crls, at()) {
        Err(MdsError::Revoked {
            subject,
            serial,
            crl,
        }) => {
            assert_eq!(subject, "CN=mds.test.example,O=Signet Test");
            assert_eq!(serial, "7A0102");
            assert_eq!(crl, 1);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_revoked_intermediate_is_refused() {
    let pki = Pki::new();
    let crls = vec![pki.crl(false, &[]), pki.crl(true, &[&pki.int_serial])];
    match blob::verify(&pki.good(), &pki.roots(), &crls, at()) {
        Err(MdsError::Revoked { subject, crl, .. }) => {
            assert_eq!(subject, "CN=Test MDS Intermediate,O=Signet Test");
            assert_eq!(crl, 1);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn crls_must_be_complete_signed_and_current() {
    let pki = Pki::new();
    // Only the intermediate's CRL: the intermediate itself is unchecked.
    match blob::verify(&pki.good(), &pki.roots(), &[pki.crl(false, &[])], at()) {
        Err(MdsError::NoCrl { subject, issuer }) => {
            assert_eq!(subject, "CN=Test MDS Intermediate,O=Signet Test");
            assert_eq!(issuer, "CN=Test MDS Root,O=Signet Test");
        }
        other => panic!("{other:?}"),
    }
    // A CRL under the intermediate's name signed by another key.
    let impostor = Pki::new();
    let crls = vec![pki.crl(true, &[]), impostor.crl(false, &[])];
    match blob::verify(&pki.good(), &pki.roots(), &crls, at()) {
        Err(MdsError::Crl {
            index: Some(1),
            reason,
        }) => assert!(reason.contains("does not verify"), "{reason}"),
        other => panic!("{other:?}"),
    }
    // Published before `at` and past its nextUpdate: not current.
    let crls = vec![
        pki.crl(true, &[]),
        pki.crl_dated(false, &[], (2025, 1, 1), (2025, 2, 1)),
    ];
    match blob::verify(&pki.good(), &pki.roots(), &crls, at()) {
        Err(MdsError::Crl {
            index: Some(1),
            reason,
        }) => assert!(reason.contains("not current"), "{reason}"),
        other => panic!("{other:?}"),
    }
    // Published after `at` (an archive checked with later CRLs), even if
    // its own nextUpdate has passed by now: current for `at`.
    let crls = vec![
        pki.crl(true, &[]),
        pki.crl_dated(false, &[], (2025, 6, 2), (2025, 6, 9)),
    ];
    assert!(
        blob::verify(&pki.good(), &pki.roots(), &crls, at())
            .unwrap()
            .revocation_checked
    );
    // ... and such a later CRL that lists the signer still revokes it.
    let crls = vec![
        pki.crl(true, &[]),
        pki.crl_dated(false, &[&pki.signer_serial], (2026, 1, 1), (2026, 2, 1)),
    ];
    assert!(matches!(
        blob::verify(&pki.good(), &pki.roots(), &crls, at()),
        Err(MdsError::Revoked { .. })
    ));
    // A CRL from an unrelated CA (another name) is ignored beside the
    // needed ones, whatever it lists.
    let unrelated = CertifiedIssuer::self_signed(
        ca_params("Unrelated CA", &[0x09]),
        KeyPair::generate().unwrap(),
    )
    .unwrap();
    let params = CertificateRevocationListParams {
        this_update: date_time_ymd(2025, 5, 1),
        next_update: date_time_ymd(2025, 8, 1),
        crl_number: SerialNumber::from_slice(&[1]),
        issuing_distribution_point: None,
        revoked_certs: vec![RevokedCertParams {
            serial_number: SerialNumber::from_slice(&pki.signer_serial),
            revocation_time: date_time_ymd(2025, 4, 1),
            reason_code: None,
            invalidity_date: None,
        }],
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let mut crls = pki.crls();
    crls.push(Crl::parse(params.signed_by(&unrelated).unwrap().der()).unwrap());
    blob::verify(&pki.good(), &pki.roots(), &crls, at()).unwrap();
}

#[test]
fn serials_must_increase() {
    let pki = Pki::new();
    let blob = verify(&pki, &pki.good()).unwrap();
    blob::check_newer(Some(16), &blob).unwrap();
    assert_eq!(
        blob::check_newer(Some(17), &blob).unwrap_err(),
        MdsError::NotNewer { held: 17, got: 17 }
    );
    assert_eq!(
        blob::check_newer(Some(40), &blob).unwrap_err(),
        MdsError::NotNewer { held: 40, got: 17 }
    );
}

#[test]
fn header_algorithms_and_key_sources() {
    let pki = Pki::new();
    for (alg, needle) in [
        ("none", "unsigned"),
        ("HS256", "not accepted"),
        ("RS512", "not accepted"),
        ("es256", "not accepted"),
    ] {
        let mut header = pki.header();
        header["alg"] = json!(alg);
        let (field, reason) = header_error(&pki, &header);
        assert_eq!(field, "alg", "{alg}");
        assert!(reason.contains(needle), "{alg}: {reason}");
    }
    // alg none with an empty signature (the classic attack) is refused too.
    let header = json!({"alg": "none", "x5c": pki.x5c()});
    let unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(payload(&pki).to_string())
    );
    assert!(verify(&pki, unsigned.as_bytes()).is_err());

    let mut header = pki.header();
    header.as_object_mut().unwrap().remove("x5c");
    header["x5u"] = json!("https://mds.example/chain.pem");
    assert_eq!(header_error(&pki, &header).0, "x5u");

    let mut header = pki.header();
    header.as_object_mut().unwrap().remove("x5c");
    assert_eq!(
        header_error(&pki, &header),
        ("x5c".to_string(), "missing".to_string())
    );

    for (key, value) in [
        ("x5u", json!("https://mds.example/chain.pem")),
        ("jku", json!("https://mds.example/keys")),
        ("jwk", json!({"kty": "EC"})),
        ("crit", json!(["exp"])),
        ("typ", json!("JOSE+JSON")),
        ("alg", json!(256)),
    ] {
        let mut header = pki.header();
        header[key] = value;
        assert_eq!(header_error(&pki, &header).0, key);
    }
    let mut header = pki.header();
    header["x5c"] = json!([]);
    assert_eq!(header_error(&pki, &header).0, "x5c");
    header["x5c"] = json!(["!!!"]);
    assert_eq!(header_error(&pki, &header).0, "x5c[0]");
    header["x5c"] = json!([STANDARD.encode(b"not a certificate")]);
    assert_eq!(header_error(&pki, &header).0, "x5c[0]");
    header["x5c"] = json!(vec![STANDARD.encode(&pki.signer_der); 9]);
    assert!(matches!(
        verify(&pki, &pki.jws(&header, &payload(&pki))),
        Err(MdsError::TooLarge { .. })
    ));
    // Unknown, non-critical header fields are ignored.
    let mut header = pki.header();
    header["kid"] = json!("2025-06");
    verify(&pki, &pki.jws(&header, &payload(&pki))).unwrap();
    // A repeated field is refused rather than resolved.
    let raw = format!(r#"{{"alg":"ES256","alg":"none","x5c":{}}}"#, pki.x5c());
    assert!(matches!(
        verify(
            &pki,
            &pki.jws_raw(raw.as_bytes(), payload(&pki).to_string().as_bytes())
        ),
        Err(MdsError::Jws { part: "header", .. })
    ));
    // A header that is a JSON array, not an object.
    assert!(matches!(
        verify(&pki, &pki.jws_raw(b"[\"ES256\"]", b"{}")),
        Err(MdsError::Jws { part: "header", .. })
    ));
}

#[test]
fn the_compact_form_is_strict() {
    let pki = Pki::new();
    let good = String::from_utf8(pki.good()).unwrap();
    let parts: Vec<&str> = good.split('.').collect();
    let jws_err = |text: &str| match verify(&pki, text.as_bytes()) {
        Err(MdsError::Jws { part, reason }) => (part, reason),
        other => panic!("{text:.40}: {other:?}"),
    };
    let four = format!("{good}.{}", parts[2]);
    let (part, reason) = jws_err(&four);
    assert_eq!(part, "blob");
    assert!(reason.contains("4 parts"), "{reason}");
    assert_eq!(jws_err(&format!("{}.{}", parts[0], parts[1])).0, "blob");
    assert_eq!(jws_err(&format!("{}..{}", parts[0], parts[2])).0, "payload");
    // Garbage in each part.
    assert_eq!(
        jws_err(&format!("{}*.{}.{}", parts[0], parts[1], parts[2])).0,
        "header"
    );
    assert_eq!(
        jws_err(&format!("{}.{}*.{}", parts[0], parts[1], parts[2])).0,
        "payload"
    );
    assert_eq!(
        jws_err(&format!("{}.{}.{}=", parts[0], parts[1], parts[2])).0,
        "signature"
    );
    // Padding is not unpadded base64url.
    let padded_header = STANDARD.encode(pki.header().to_string());
    assert_eq!(
        jws_err(&format!("{padded_header}.{}.{}", parts[1], parts[2])).0,
        "header"
    );
    assert_eq!(jws_err("\u{e9}.a.b").0, "blob");
    // The size bound comes first.
    let huge = vec![b'A'; signet::mds::limits::BLOB + 1];
    assert!(matches!(
        verify(&pki, &huge),
        Err(MdsError::TooLarge { .. })
    ));
}

#[test]
fn a_payload_that_is_not_json_is_refused() {
    let pki = Pki::new();
    for raw in [
        &b"this is not JSON"[..],
        b"{\"no\": 1",
        b"[1, 2]",
        b"\xff\xfe",
    ] {
        match verify(&pki, &pki.jws_raw(pki.header().to_string().as_bytes(), raw)) {
            Err(MdsError::Jws {
                part: "payload", ..
            }) => {}
            other => panic!("{raw:?}: {other:?}"),
        }
    }
    // Duplicate top-level fields.
    let raw = br#"{"no": 1, "no": 99, "nextUpdate": "2025-07-01", "entries": []}"#;
    assert!(matches!(
        verify(&pki, &pki.jws_raw(pki.header().to_string().as_bytes(), raw)),
        Err(MdsError::Payload { .. })
    ));
}

#[test]
fn payload_fields_are_checked() {
    let pki = Pki::new();
    let with = |edit: &dyn Fn(&mut Value)| {
        let mut p = payload(&pki);
        edit(&mut p);
        p
    };
    let cases: Vec<(Value, &str, &str)> = vec![
        (with(&|p| p["no"] = json!(0)), "no", "positive"),
        (with(&|p| p["no"] = json!(-3)), "no", "positive"),
        (with(&|p| p["no"] = json!(1.5)), "no", "positive"),
        (with(&|p| p["no"] = json!("17")), "no", "positive"),
        (
            with(&|p| {
                p.as_object_mut().unwrap().remove("no");
            }),
            "no",
            "missing",
        ),
        (
            with(&|p| p["nextUpdate"] = json!("2025-7-1")),
            "nextUpdate",
            "YYYY-MM-DD",
        ),
        (
            with(&|p| p["nextUpdate"] = json!("2025-02-30")),
            "nextUpdate",
            "valid date",
        ),
        (
            with(&|p| p["nextUpdate"] = json!("2025-07-01T00:00:00Z")),
            "nextUpdate",
            "YYYY-MM-DD",
        ),
        (
            with(&|p| p["legalHeader"] = json!(5)),
            "legalHeader",
            "string",
        ),
        (with(&|p| p["entries"] = json!({})), "(document)", "array"),
        (
            with(&|p| {
                p.as_object_mut().unwrap().remove("entries");
            }),
            "entries",
            "missing",
        ),
        (
            with(&|p| p["entries"][1] = json!("x")),
            "entries[1]",
            "object",
        ),
        (
            with(&|p| p["entries"][0]["aaguid"] = json!("0123abcd-4567-89ef-0123-456789abcdeZ")),
            "entries[0].aaguid",
            "not a UUID",
        ),
        (
            with(&|p| p["entries"][0]["aaguid"] = json!("0123abcd456789ef0123456789abcdef")),
            "entries[0].aaguid",
            "not a UUID",
        ),
        (
            with(&|p| p["entries"][0]["aaguid"] = json!("00000000-0000-0000-0000-000000000000")),
            "entries[0].aaguid",
            "nil AAGUID",
        ),
        (
            with(&|p| {
                p["entries"][0]["metadataStatement"]["aaguid"] =
                    json!("ffffffff-4567-89ef-0123-456789abcdef")
            }),
            "entries[0].metadataStatement.aaguid",
            "differs",
        ),
        (
            with(&|p| {
                p["entries"][0]["metadataStatement"]["attestationRootCertificates"] = json!(["%%%"])
            }),
            "entries[0].metadataStatement.attestationRootCertificates[0]",
            "base64",
        ),
        (
            with(&|p| p["entries"][0]["metadataStatement"]["keyProtection"] = json!(6)),
            "entries[0].metadataStatement.keyProtection",
            "array",
        ),
        (
            with(&|p| p["entries"][0]["metadataStatement"]["attestationTypes"] = json!([15879])),
            "entries[0].metadataStatement.attestationTypes[0]",
            "string",
        ),
        (
            with(&|p| p["entries"][0]["metadataStatement"]["authenticatorVersion"] = json!("5")),
            "entries[0].metadataStatement.authenticatorVersion",
            "integer",
        ),
        (
            with(&|p| p["entries"][0]["metadataStatement"] = json!([])),
            "entries[0].metadataStatement",
            "object",
        ),
        (
            with(&|p| p["entries"][1]["attestationCertificateKeyIdentifiers"] = json!(["abc"])),
            "entries[1].attestationCertificateKeyIdentifiers[0]",
            "key identifier",
        ),
        (
            with(&|p| p["entries"][2]["aaid"] = json!("ABCD-0001")),
            "entries[2].aaid",
            "AAID",
        ),
        (
            with(&|p| {
                p["entries"][2].as_object_mut().unwrap().remove("aaid");
            }),
            "entries[2]",
            "names no authenticator",
        ),
        (
            with(&|p| {
                p["entries"][2]
                    .as_object_mut()
                    .unwrap()
                    .remove("statusReports");
            }),
            "entries[2].statusReports",
            "missing",
        ),
        (
            with(&|p| p["entries"][0]["statusReports"][1] = json!({"effectiveDate": "2023-01-01"})),
            "entries[0].statusReports[1].status",
            "missing",
        ),
        (
            with(&|p| p["entries"][0]["statusReports"][0]["effectiveDate"] = json!("yesterday")),
            "entries[0].statusReports[0].effectiveDate",
            "YYYY-MM-DD",
        ),
        (
            with(&|p| p["entries"][0]["timeOfLastStatusChange"] = json!(20240201)),
            "entries[0].timeOfLastStatusChange",
            "string",
        ),
        (
            with(&|p| {
                let copy = p["entries"][0].clone();
                p["entries"].as_array_mut().unwrap().push(copy);
            }),
            "entries[3].aaguid",
            "entries[0]",
        ),
        (
            with(&|p| {
                p["entries"][1]["aaid"] = json!("ABCD#0001");
                p["entries"][2]["aaid"] = json!("abcd#0001");
            }),
            "entries[2].aaid",
            "entries[1]",
        ),
    ];
    for (payload, field, needle) in cases {
        let (got_field, reason) = payload_error(&pki, payload);
        assert_eq!(got_field, field, "{reason}");
        assert!(reason.contains(needle), "{field}: {reason}");
    }
}

#[test]
fn an_unparsable_attestation_root_is_left_out_with_a_warning() {
    let pki = Pki::new();
    let mut p = payload(&pki);
    p["entries"][0]["metadataStatement"]["attestationRootCertificates"] = json!([
        STANDARD.encode(b"garbage"),
        // Line breaks inside the base64, as in the production BLOB.
        STANDARD
            .encode(pki.root.der())
            .as_bytes()
            .chunks(64)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join("\n"),
    ]);
    let blob = verify(&pki, &pki.jws(&pki.header(), &p)).unwrap();
    assert_eq!(blob.warnings.len(), 1);
    let MdsError::Payload { field, reason } = &blob.warnings[0] else {
        panic!("{:?}", blob.warnings);
    };
    assert_eq!(
        field,
        "entries[0].metadataStatement.attestationRootCertificates[0]"
    );
    assert!(reason.contains("not an X.509 certificate"), "{reason}");
    let s = blob.entries()[0].statement.as_ref().unwrap();
    assert_eq!(s.rejected_roots.len(), 1);
    assert_eq!(s.rejected_roots[0].der, b"garbage");
    assert_eq!(s.attestation_root_certificates.len(), 1);
    assert_eq!(
        s.attestation_root_certificates[0].der,
        pki.root.der().to_vec()
    );
    // The entry and its status reports stay.
    assert_eq!(
        blob.catalog
            .by_aaguid(&uuid(AAGUID))
            .unwrap()
            .latest_status()
            .unwrap()
            .status,
        "FIDO_CERTIFIED_L1"
    );
}

#[test]
fn entry_count_is_bounded() {
    let pki = Pki::new();
    let limit = signet::mds::limits::ENTRIES;
    let mut p = payload(&pki);
    p["entries"] = Value::Array(vec![json!({}); limit + 1]);
    match verify(&pki, &pki.jws(&pki.header(), &p)) {
        Err(MdsError::TooLarge { field, limit: l }) => {
            assert_eq!(field, "payload entries");
            assert_eq!(l, limit);
        }
        other => panic!("{:?}", other.map(|b| b.no)),
    }
}

#[test]
fn next_update_in_the_past_is_stale() {
    let pki = Pki::new();
    let mut p = payload(&pki);
    p["nextUpdate"] = json!("2025-05-31");
    assert_eq!(
        verify(&pki, &pki.jws(&pki.header(), &p)).unwrap_err(),
        MdsError::Stale {
            next_update: "2025-05-31".into()
        }
    );
    // The nextUpdate day itself is still current.
    p["nextUpdate"] = json!("2025-06-01");
    let blob = verify(&pki, &pki.jws(&pki.header(), &p)).unwrap();
    assert!(!blob.is_stale(time("2025-06-01T23:59:59Z")));
    assert!(blob.is_stale(time("2025-06-02T00:00:00Z")));
}
