//! Android Key Attestation of an enrolled device key.
//!
//! The app may send, with the device key it enrolls, the certificate chain
//! its keystore issued for that key. Verified to a Google hardware root, the
//! chain is the only evidence signet gets that the private key was made in
//! the phone's TEE or StrongBox rather than in app memory; the bank's policy
//! decides what to require, this module says what the chain proves.
//!
//! Pure: no I/O, no clock (the time is an argument). Inputs are bounded
//! before any parsing, and every failure names the input at fault
//! (`keyAttestation[i]...`).
//!
//! The path rules are certpath's (signatures over the bytes received,
//! validity at `now`, CA flags, path lengths, unknown critical extensions),
//! with the root allowed at the end of the chain as Android sends it. The
//! steps are called here rather than through `certpath::validate` because an
//! attestation chain may be longer than WebAuthn's x5c limit and the report
//! must name the root reached.

use std::time::SystemTime;

use der::asn1::ObjectIdentifier;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;

use crate::keys::EcPublicKey;
use crate::webauthn::Error as EngineError;
use crate::webauthn::attestation::android_key;
use crate::webauthn::certpath::{self, Cert};

/// What a verified chain proves about the device key.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyAttestation {
    /// "software", "tee" or "strongbox": attestationSecurityLevel.
    pub security_level: String,
    /// keymasterSecurityLevel (KeyMint's), same names.
    pub keymint_security_level: String,
    pub attestation_version: u64,
    /// attestationChallenge (what the app put in; up to 128 bytes). Hex in
    /// JSON, a byte string in CBOR.
    #[serde(with = "bytes_or_hex")]
    pub challenge: Vec<u8>,
    /// Key purposes from the hardware-enforced or software-enforced list
    /// (KeyMint tags: 2 SIGN, 3 VERIFY, 6 AGREE_KEY ...), sorted, deduplicated.
    pub purposes: Vec<u64>,
    /// SHA-256 of the DER root certificate the chain reached (lowercase hex),
    /// and its subject as RFC 4514 text.
    pub root_sha256: String,
    pub root_subject: String,
    /// Certificates as sent, the root included when it was sent.
    pub chain_length: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct AttestationError {
    pub field: String,
    pub reason: String,
}

impl AttestationError {
    fn new(field: impl Into<String>, reason: impl Into<String>) -> AttestationError {
        AttestationError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// The engine names fields the same way; keep its field, drop it from the text.
impl From<EngineError> for AttestationError {
    fn from(e: EngineError) -> AttestationError {
        let field = e.field().to_string();
        let text = e.to_string();
        let reason = text
            .strip_prefix(&format!("{field}: "))
            .unwrap_or(&text)
            .to_string();
        AttestationError { field, reason }
    }
}

/// Certificates in a chain. Real ones have 3 to 5 (with remote key
/// provisioning: leaf, attestation key, two Droid CAs, root).
pub const CHAIN_MAX: usize = 10;
/// Bytes per certificate.
pub const CERT_MAX: usize = 16 * 1024;
/// KeyMint refuses longer attestation challenges.
pub const CHALLENGE_MAX: usize = 128;

const CHAIN_FIELD: &str = "keyAttestation";
const ROOTS_FIELD: &str = "devices.key_attestation_roots";
/// KM_PURPOSE_SIGN: the device key signs registration requests.
const PURPOSE_SIGN: u64 = 2;
const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const SECP256R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");

const GOOGLE_ROOTS: [&str; 4] = [
    include_str!("../certs/android/google-hardware-attestation-root-1.pem"),
    include_str!("../certs/android/google-hardware-attestation-root-2.pem"),
    include_str!("../certs/android/google-hardware-attestation-root-3.pem"),
    include_str!("../certs/android/google-hardware-attestation-root-4.pem"),
];

/// Verifies `chain` (DER, leaf first; the root may be included last or
/// omitted) for `device_key` against `roots` (DER trust anchors) at `now`.
pub fn verify(
    chain: &[Vec<u8>],
    device_key: &EcPublicKey,
    roots: &[Vec<u8>],
    now: SystemTime,
) -> Result<KeyAttestation, AttestationError> {
    if chain.is_empty() {
        return Err(AttestationError::new(
            CHAIN_FIELD,
            "is empty: the leaf certificate at least is needed",
        ));
    }
    if chain.len() > CHAIN_MAX {
        return Err(AttestationError::new(
            CHAIN_FIELD,
            format!("has {} certificates, more than {CHAIN_MAX}", chain.len()),
        ));
    }
    if let Some(i) = chain.iter().position(|der| der.len() > CERT_MAX) {
        return Err(AttestationError::new(
            format!("{CHAIN_FIELD}[{i}]"),
            format!("larger than {CERT_MAX} bytes"),
        ));
    }
    if roots.is_empty() {
        return Err(AttestationError::new(
            ROOTS_FIELD,
            "is empty: there is no root to verify against",
        ));
    }
    let certs = chain
        .iter()
        .enumerate()
        .map(|(i, der)| Cert::parse(der, format!("{CHAIN_FIELD}[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let anchors = roots
        .iter()
        .enumerate()
        .map(|(i, der)| Cert::parse(der, format!("{ROOTS_FIELD}[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let leaf = &certs[0];

    check_device_key(leaf, device_key)?;

    let extension = android_key::key_description_extension(leaf)?;
    let description = android_key::parse_key_description(extension, &leaf.field)
        .map_err(|e| in_key_description(e, &leaf.field))?;
    let at = |member: &str| format!("{}.keyDescription.{member}", leaf.field);
    if description.attestation_challenge.len() > CHALLENGE_MAX {
        return Err(AttestationError::new(
            at("attestationChallenge"),
            format!("longer than {CHALLENGE_MAX} bytes"),
        ));
    }
    let mut purposes: Vec<u64> = [&description.software_enforced, &description.tee_enforced]
        .into_iter()
        .filter_map(|list| list.purposes.as_deref())
        .flatten()
        .copied()
        .collect();
    purposes.sort_unstable();
    purposes.dedup();
    if !purposes.contains(&PURPOSE_SIGN) {
        // The device key exists to sign requests; a key the keystore will
        // not sign with is not the one the app enrolls.
        return Err(AttestationError::new(
            at("purpose"),
            format!(
                "{purposes:?} in softwareEnforced and teeEnforced lacks SIGN (2): the key cannot sign"
            ),
        ));
    }

    // An imported key once existed outside the secure hardware: the chain
    // would prove nothing about the device holding it.
    let software = description.attestation_security_level == android_key::SecurityLevel::Software;
    android_key::check_generated(
        &description,
        software,
        &format!("{}.keyDescription", leaf.field),
    )
    .map_err(|e| in_key_description(e, &leaf.field))?;

    let root = &anchors[root_reached(&certs, &anchors, now)?];

    Ok(KeyAttestation {
        security_level: description.attestation_security_level.name().to_string(),
        keymint_security_level: description.keymaster_security_level.name().to_string(),
        attestation_version: description.attestation_version,
        challenge: description.attestation_challenge.to_vec(),
        purposes,
        root_sha256: crate::hex::encode(&crate::keys::sha256(&root.der)),
        root_subject: root.subject(),
        chain_length: certs.len(),
    })
}

/// The default roots: the four PEM files of certs/android/.
pub fn google_roots() -> Vec<Vec<u8>> {
    GOOGLE_ROOTS
        .iter()
        .flat_map(|pem| roots_from_pem(pem).expect("certs/android/*.pem are PEM certificates"))
        .collect()
}

/// The DER of every certificate in `pem` (one or more CERTIFICATE blocks;
/// other blocks are skipped), each checked to parse so that a bad file fails
/// when the configuration loads rather than at the first enrollment.
pub fn roots_from_pem(pem: &str) -> Result<Vec<Vec<u8>>, AttestationError> {
    let mut roots = Vec::new();
    for (i, block) in CertificateDer::pem_slice_iter(pem.as_bytes()).enumerate() {
        let field = format!("{ROOTS_FIELD}[{i}]");
        let der = block.map_err(|e| AttestationError::new(&field, format!("not PEM: {e}")))?;
        Cert::parse(&der, field)?;
        roots.push(der.to_vec());
    }
    if roots.is_empty() {
        return Err(AttestationError::new(
            ROOTS_FIELD,
            "holds no PEM certificate",
        ));
    }
    Ok(roots)
}

/// The leaf must certify the enrolled key, or the chain attests some other
/// key in the phone's keystore and says nothing about this one.
fn check_device_key(leaf: &Cert, device_key: &EcPublicKey) -> Result<(), AttestationError> {
    let field = format!("{}.subjectPublicKeyInfo", leaf.field);
    let spki = leaf.tbs().subject_public_key_info();
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
    if spki.algorithm.oid != EC_PUBLIC_KEY || curve != Some(SECP256R1) {
        return Err(AttestationError::new(field, "is not an EC P-256 key"));
    }
    let key = spki
        .subject_public_key
        .as_bytes()
        .and_then(|point| EcPublicKey::from_sec1(point).ok())
        .ok_or_else(|| AttestationError::new(&field, "is not a valid P-256 point"))?;
    if key.sec1() != device_key.sec1() {
        return Err(AttestationError::new(
            field,
            "is not the enrolled device key",
        ));
    }
    Ok(())
}

/// android_key names KeyDescription members after the certificate
/// (`x5c[0].attestationChallenge`); here they sit under `keyDescription`.
fn in_key_description(e: EngineError, leaf: &str) -> AttestationError {
    let mut e = AttestationError::from(e);
    if let Some(member) = e.field.strip_prefix(&format!("{leaf}."))
        && !member.starts_with("keyDescription")
    {
        e.field = format!("{leaf}.keyDescription.{member}");
    }
    e
}

/// certpath's checks on `chain` with the root allowed last, ending at one
/// of `roots`; returns which. A root sent in the chain is matched to the
/// identical anchor first: Google's roots are re-issues of one key, and the
/// report should name the one the phone sent.
fn root_reached(chain: &[Cert], roots: &[Cert], now: SystemTime) -> Result<usize, EngineError> {
    let Some(top) = chain.last() else {
        return Err(EngineError::Empty {
            field: CHAIN_FIELD.into(),
        });
    };
    for cert in chain {
        cert.check_validity(now)?;
        certpath::check_critical_extensions(cert)?;
    }
    for i in 0..chain.len() - 1 {
        certpath::check_link(chain, i)?;
    }

    let identical = roots.iter().position(|r| r.der == top.der);
    let reissued = (0..roots.len()).filter(|&i| certpath::is_anchor(&roots[i], top));
    let mut failure = None;
    for i in identical.into_iter().chain(reissued) {
        match roots[i].check_validity(now) {
            Ok(()) => return Ok(i),
            Err(e) => {
                failure.get_or_insert(e);
            }
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }

    let below = certpath::intermediates_below(chain, chain.len());
    for (i, root) in roots.iter().enumerate() {
        if root.tbs().subject() != top.tbs().issuer() {
            continue;
        }
        match certpath::issued_by_anchor(top, root, below, now) {
            Ok(()) => return Ok(i),
            Err(e) => {
                failure.get_or_insert(e);
            }
        }
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
    Err(EngineError::cert_path(&top.field, reason))
}

/// Hex for people reading JSON, a byte string for CBOR records.
mod bytes_or_hex {
    use std::fmt;

    use serde::{Deserialize as _, Deserializer, Serializer, de};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&crate::hex::encode(bytes))
        } else {
            s.serialize_bytes(bytes)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        if d.is_human_readable() {
            let text = String::deserialize(d)?;
            crate::hex::decode(&text).ok_or_else(|| de::Error::custom("not hex"))
        } else {
            d.deserialize_byte_buf(Bytes)
        }
    }

    struct Bytes;

    impl<'de> de::Visitor<'de> for Bytes {
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ciborium::Value;

    use super::*;
    use crate::webauthn::attestation::android_key::test_support::{
        Case, VECTORS, garbage, load, member,
    };

    const PIXEL_8A: &str = "devices/simplewebauthn-pixel-8a-android-key.registration.json";
    const ROOT_2_SHA256: &str = "1ef1a04b8ba58ab94589ac498c8982a783f24ea7307e0159a0c3a73b377d87cc";
    const GOOGLE_SHA256: [&str; 4] = [
        "c1984a3ef45c1e2a918551de10603c86f7051b2249c4891cae3230eabd0c97d5",
        ROOT_2_SHA256,
        "ab6641178a36e179aa0c1cdddf9a16eb45fa20943e2b8cd7c7c05c26cf8b487a",
        "cedb1cb6dc896ae5ec797348bce9286753c2b38ee71ce0fbe34a9a1248800dfc",
    ];

    fn x5c(case: &Case) -> Vec<Vec<u8>> {
        let Value::Array(items) = member(&case.object.att_stmt, "x5c") else {
            panic!("x5c is not an array")
        };
        items
            .iter()
            .map(|v| v.as_bytes().expect("DER").clone())
            .collect()
    }

    /// The public key the leaf certifies.
    fn leaf_key(der: &[u8]) -> EcPublicKey {
        let leaf = Cert::parse(der, "leaf").unwrap();
        let spki = leaf.tbs().subject_public_key_info();
        EcPublicKey::from_sec1(spki.subject_public_key.as_bytes().unwrap()).unwrap()
    }

    fn other_key() -> EcPublicKey {
        let secret = p256::SecretKey::from_slice(&[0x42; 32]).unwrap();
        EcPublicKey::from_p256(&secret.public_key())
    }

    fn pixel() -> (Case, Vec<Vec<u8>>, EcPublicKey) {
        let case = load(PIXEL_8A);
        let chain = x5c(&case);
        let key = leaf_key(&chain[0]);
        (case, chain, key)
    }

    fn validity(der: &[u8]) -> (SystemTime, SystemTime) {
        let cert = Cert::parse(der, "c").unwrap();
        let v = cert.tbs().validity();
        (v.not_before.to_system_time(), v.not_after.to_system_time())
    }

    #[test]
    fn pixel_8a_chain_verifies_to_google_root_2() {
        let (case, chain, key) = pixel();
        assert_eq!(chain.len(), 5);
        let got = verify(&chain, &key, &google_roots(), case.verify_time).unwrap();
        assert_eq!(got.security_level, "tee");
        assert_eq!(got.keymint_security_level, "tee");
        assert_eq!(got.attestation_version, 300);
        // WebAuthn puts clientDataHash in the attestation challenge.
        assert_eq!(got.challenge, case.client_data_hash);
        assert_eq!(got.purposes, [PURPOSE_SIGN]);
        assert_eq!(got.root_sha256, ROOT_2_SHA256);
        assert_eq!(got.chain_length, 5);
        let expected_subject = Cert::parse(&google_roots()[1], "r").unwrap().subject();
        assert_eq!(got.root_subject, expected_subject);
        assert_eq!(got.root_subject, "SERIALNUMBER=f92009e853b6b045");

        // Without the root it reaches one of the four (they share the key).
        let got = verify(&chain[..4], &key, &google_roots(), case.verify_time).unwrap();
        assert!(GOOGLE_SHA256.contains(&got.root_sha256.as_str()), "{got:?}");
        assert_eq!(got.chain_length, 4);
        // With root 2 alone, either way.
        let root_2 = vec![google_roots()[1].clone()];
        for sent in [&chain[..], &chain[..4]] {
            let got = verify(sent, &key, &root_2, case.verify_time).unwrap();
            assert_eq!(got.root_sha256, ROOT_2_SHA256);
        }
    }

    #[test]
    fn pixel_8a_chain_for_another_key_is_refused() {
        let (case, chain, _) = pixel();
        let err = verify(&chain, &other_key(), &google_roots(), case.verify_time).unwrap_err();
        assert_eq!(err.field, "keyAttestation[0].subjectPublicKeyInfo");
        assert_eq!(err.reason, "is not the enrolled device key");
        assert_eq!(
            err.to_string(),
            "keyAttestation[0].subjectPublicKeyInfo: is not the enrolled device key"
        );
    }

    #[test]
    fn pixel_8a_chain_outside_its_validity_is_refused() {
        let (_, chain, key) = pixel();
        let (not_before, not_after) = validity(&chain[0]);
        for now in [
            not_after + Duration::from_secs(1),
            not_before - Duration::from_secs(1),
        ] {
            let err = verify(&chain, &key, &google_roots(), now).unwrap_err();
            assert!(err.field.starts_with("keyAttestation["), "{err}");
            assert!(err.reason.contains("certificate path"), "{err}");
        }
        let err = verify(
            &chain,
            &key,
            &google_roots(),
            not_after + Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(err.reason.contains("expired"), "{err}");
    }

    #[test]
    fn pixel_8a_chain_with_an_unrelated_root_is_refused() {
        let (case, chain, key) = pixel();
        let apple =
            std::fs::read_to_string(format!("{VECTORS}devices/roots/apple-webauthn-root-ca.pem"))
                .unwrap();
        let roots = roots_from_pem(&apple).unwrap();
        for sent in [&chain[..], &chain[..4]] {
            let err = verify(sent, &key, &roots, case.verify_time).unwrap_err();
            assert_eq!(err.field, format!("keyAttestation[{}]", sent.len() - 1));
            assert!(
                err.reason.contains("does not chain to any trust anchor"),
                "{err}"
            );
        }
        // The Android software root is not a hardware root either.
        let software = std::fs::read_to_string(format!(
            "{VECTORS}devices/roots/android-keystore-software-attestation-root.pem"
        ))
        .unwrap();
        let roots = roots_from_pem(&software).unwrap();
        assert!(verify(&chain, &key, &roots, case.verify_time).is_err());
        // No roots at all is a configuration error, not a pass.
        let err = verify(&chain, &key, &[], case.verify_time).unwrap_err();
        assert_eq!(err.field, "devices.key_attestation_roots");
    }

    #[test]
    fn pixel_8a_chain_out_of_order_or_short_is_refused() {
        let (case, chain, key) = pixel();
        let roots = google_roots();
        // A missing intermediate breaks the link.
        let gap = vec![
            chain[0].clone(),
            chain[2].clone(),
            chain[3].clone(),
            chain[4].clone(),
        ];
        let err = verify(&gap, &key, &roots, case.verify_time).unwrap_err();
        assert_eq!(err.field, "keyAttestation[0]");
        let mut swapped = chain.clone();
        swapped.swap(1, 2);
        assert!(verify(&swapped, &key, &roots, case.verify_time).is_err());
        // The leaf alone names no root.
        let err = verify(&chain[..1], &key, &roots, case.verify_time).unwrap_err();
        assert_eq!(err.field, "keyAttestation[0]");
    }

    #[test]
    fn sizes_are_checked_before_parsing() {
        let key = other_key();
        let roots = google_roots();
        let now = SystemTime::UNIX_EPOCH;
        let err = verify(&[], &key, &roots, now).unwrap_err();
        assert_eq!(err.field, "keyAttestation");
        assert!(err.reason.contains("empty"), "{err}");

        let eleven = vec![vec![0x30, 0x00]; CHAIN_MAX + 1];
        let err = verify(&eleven, &key, &roots, now).unwrap_err();
        assert_eq!(err.field, "keyAttestation");
        assert!(err.reason.contains("more than 10"), "{err}");

        let big = vec![vec![0x30, 0x00], vec![0u8; CERT_MAX + 1]];
        let err = verify(&big, &key, &roots, now).unwrap_err();
        assert_eq!(err.field, "keyAttestation[1]");
        assert!(err.reason.contains("larger than 16384 bytes"), "{err}");

        let err = verify(&[vec![]], &key, &roots, now).unwrap_err();
        assert_eq!(err.field, "keyAttestation[0]");
        let err = verify(&[vec![0x30, 0x00]], &key, &roots, now).unwrap_err();
        assert_eq!(err.field, "keyAttestation[0]");
        assert!(err.reason.contains("not an X.509 certificate"), "{err}");
    }

    /// Truncations, bit flips and garbage: errors naming the certificate,
    /// never panics.
    #[test]
    fn damaged_chains_are_refused_without_panics() {
        let (case, chain, key) = pixel();
        let roots = google_roots();
        for i in 0..chain.len() {
            for len in (0..chain[i].len()).step_by(3) {
                let mut damaged = chain.clone();
                damaged[i].truncate(len);
                let err = verify(&damaged, &key, &roots, case.verify_time).unwrap_err();
                assert_eq!(err.field, format!("keyAttestation[{i}]"), "{len}: {err}");
            }
        }
        for i in (0..chain[0].len()).step_by(5) {
            let mut damaged = chain.clone();
            damaged[0][i] ^= 0x01;
            let _ = verify(&damaged, &key, &roots, case.verify_time);
        }
        for seed in 1..100u64 {
            let junk = vec![garbage(seed, (seed as usize * 13) % 900)];
            assert!(verify(&junk, &key, &roots, case.verify_time).is_err());
        }
    }

    #[test]
    fn google_roots_are_the_four_published() {
        let roots = google_roots();
        let hashes: Vec<String> = roots
            .iter()
            .map(|der| crate::hex::encode(&crate::keys::sha256(der)))
            .collect();
        assert_eq!(hashes, GOOGLE_SHA256);
        for (name, der) in ["1", "2", "3", "4"].iter().zip(&roots) {
            let shared = std::fs::read_to_string(format!(
                "{VECTORS}devices/roots/google-hardware-attestation-root-{name}.pem"
            ))
            .unwrap();
            assert_eq!(&roots_from_pem(&shared).unwrap()[0], der);
        }
    }

    #[test]
    fn roots_from_pem_reads_several_and_refuses_junk() {
        let both = [GOOGLE_ROOTS[0], GOOGLE_ROOTS[3]].concat();
        assert_eq!(roots_from_pem(&both).unwrap().len(), 2);

        let err = roots_from_pem("").unwrap_err();
        assert_eq!(err.field, "devices.key_attestation_roots");
        let err = roots_from_pem("-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n")
            .unwrap_err();
        assert_eq!(err.field, "devices.key_attestation_roots[0]");
        let not_a_cert = "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n";
        let err = roots_from_pem(&[GOOGLE_ROOTS[0], not_a_cert].concat()).unwrap_err();
        assert_eq!(err.field, "devices.key_attestation_roots[1]");
    }

    #[test]
    fn key_attestation_round_trips_in_json_and_cbor() {
        let record = KeyAttestation {
            security_level: "strongbox".into(),
            keymint_security_level: "strongbox".into(),
            attestation_version: 300,
            challenge: vec![0, 1, 0xfe, 0xff],
            purposes: vec![2, 6],
            root_sha256: ROOT_2_SHA256.into(),
            root_subject: "CN=x".into(),
            chain_length: 3,
        };
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(json["challenge"], "0001feff");
        assert_eq!(
            serde_json::from_value::<KeyAttestation>(json).unwrap(),
            record
        );
        let mut cbor = Vec::new();
        ciborium::into_writer(&record, &mut cbor).unwrap();
        let value: Value = ciborium::from_reader(cbor.as_slice()).unwrap();
        let challenge = value
            .as_map()
            .unwrap()
            .iter()
            .find(|(k, _)| k.as_text() == Some("challenge"))
            .map(|(_, v)| v.clone());
        assert_eq!(challenge, Some(Value::Bytes(vec![0, 1, 0xfe, 0xff])));
        assert_eq!(
            ciborium::from_reader::<KeyAttestation, _>(cbor.as_slice()).unwrap(),
            record
        );
    }

    #[cfg(feature = "testkit")]
    mod testkit {
        use std::time::Duration;

        use super::super::*;
        use crate::testkit::android::{
            PURPOSE_AGREE_KEY, PURPOSE_SIGN, SecurityLevelForTests as Level, key_attestation_chain,
            key_attestation_chain_with, key_description,
        };
        use crate::testkit::test_now;

        const LEVELS: [Level; 3] = [Level::Software, Level::TrustedEnvironment, Level::StrongBox];

        fn device_key() -> EcPublicKey {
            let secret = p256::SecretKey::from_slice(&[0x17; 32]).unwrap();
            EcPublicKey::from_p256(&secret.public_key())
        }

        #[test]
        fn made_chains_verify_and_report_what_they_say() {
            let key = device_key();
            for level in LEVELS {
                let challenge = vec![level.code(); 128];
                let (chain, root) = key_attestation_chain(&key, &challenge, level);
                let got = verify(&chain, &key, std::slice::from_ref(&root), test_now()).unwrap();
                assert_eq!(got.security_level, level.name());
                assert_eq!(got.keymint_security_level, level.name());
                assert_eq!(got.attestation_version, 300);
                assert_eq!(got.challenge, challenge);
                assert_eq!(got.purposes, vec![PURPOSE_SIGN, PURPOSE_AGREE_KEY]);
                assert_eq!(
                    got.root_sha256,
                    crate::hex::encode(&crate::keys::sha256(&root))
                );
                assert!(got.root_subject.contains("Signet Test Android"), "{got:?}");
                assert_eq!(got.chain_length, 2);

                // With the root sent along, and among Google's roots.
                let mut with_root = chain.clone();
                with_root.push(root.clone());
                let mut roots = google_roots();
                roots.push(root.clone());
                let got = verify(&with_root, &key, &roots, test_now()).unwrap();
                assert_eq!(got.chain_length, 3);
                assert_eq!(
                    got.root_sha256,
                    crate::hex::encode(&crate::keys::sha256(&root))
                );

                // Google's roots alone do not vouch for a test CA.
                let err = verify(&chain, &key, &google_roots(), test_now()).unwrap_err();
                assert_eq!(err.field, "keyAttestation[1]");
            }
        }

        #[test]
        fn made_chains_for_other_keys_or_other_roots_are_refused() {
            let key = device_key();
            let (chain, root) = key_attestation_chain(&key, b"c", Level::TrustedEnvironment);
            let other = super::other_key();
            let err = verify(&chain, &other, &[root], test_now()).unwrap_err();
            assert_eq!(err.field, "keyAttestation[0].subjectPublicKeyInfo");
            assert_eq!(err.reason, "is not the enrolled device key");

            let (_, stranger) = key_attestation_chain(&key, b"c", Level::TrustedEnvironment);
            let err = verify(&chain, &key, &[stranger], test_now()).unwrap_err();
            assert_eq!(err.field, "keyAttestation[1]");
            assert!(
                err.reason.contains("does not chain to any trust anchor"),
                "{err}"
            );
        }

        #[test]
        fn made_chains_are_refused_outside_their_validity() {
            let key = device_key();
            let (chain, root) = key_attestation_chain(&key, b"c", Level::StrongBox);
            let roots = [root];
            let year = Duration::from_secs(365 * 86_400);
            for now in [test_now() - year, test_now() + 6 * year] {
                let err = verify(&chain, &key, &roots, now).unwrap_err();
                assert_eq!(err.field, "keyAttestation[0]", "{err}");
            }
        }

        #[test]
        fn broken_chains_name_the_field() {
            let key = device_key();
            let (chain, root) = key_attestation_chain(&key, b"c", Level::TrustedEnvironment);
            let roots = [root];

            for i in 0..chain.len() {
                for len in [0, 1, 10, chain[i].len() / 2, chain[i].len() - 1] {
                    let mut damaged = chain.clone();
                    damaged[i].truncate(len);
                    let err = verify(&damaged, &key, &roots, test_now()).unwrap_err();
                    assert_eq!(err.field, format!("keyAttestation[{i}]"), "{err}");
                }
            }

            let err = verify(&chain[..1], &key, &roots, test_now()).unwrap_err();
            assert_eq!(err.field, "keyAttestation[0]");
            assert!(err.reason.contains("no anchor is named"), "{err}");

            let eleven = vec![chain[0].clone(); 11];
            let err = verify(&eleven, &key, &roots, test_now()).unwrap_err();
            assert_eq!(err.field, "keyAttestation");

            let mut oversized = chain.clone();
            oversized[1].resize(CERT_MAX + 1, 0);
            let err = verify(&oversized, &key, &roots, test_now()).unwrap_err();
            assert_eq!(err.field, "keyAttestation[1]");
            assert!(err.reason.contains("larger than"), "{err}");
        }

        #[test]
        fn the_key_description_must_be_there_and_allow_signing() {
            let key = device_key();
            let verify_with = |description: Option<Vec<u8>>| {
                let (chain, root) = key_attestation_chain_with(&key, description);
                verify(&chain, &key, &[root], test_now())
            };

            let err = verify_with(None).unwrap_err();
            assert_eq!(err.field, "keyAttestation[0].keyDescription");
            assert_eq!(err.reason, "missing");

            let err = verify_with(Some(vec![0x05, 0x00])).unwrap_err();
            assert_eq!(err.field, "keyAttestation[0].keyDescription");

            let description = key_description(b"c", Level::TrustedEnvironment, &[PURPOSE_SIGN]);
            for len in 0..description.len() {
                let err = verify_with(Some(description[..len].to_vec())).unwrap_err();
                assert!(
                    err.field.starts_with("keyAttestation[0].keyDescription"),
                    "{len}: {err}"
                );
            }
            // A bad member is named under keyDescription.
            let mut bad_level = description.clone();
            let at = bad_level
                .windows(3)
                .position(|w| w == [0x0a, 0x01, 0x01])
                .unwrap();
            bad_level[at + 2] = 7;
            let err = verify_with(Some(bad_level)).unwrap_err();
            assert_eq!(
                err.field,
                "keyAttestation[0].keyDescription.attestationSecurityLevel"
            );
            // An imported key (origin 2) is refused; so is one without an
            // origin where the hardware lists it.
            let origin = [0xbf, 0x85, 0x3e, 0x03, 0x02, 0x01, 0x00];
            let at = description
                .windows(origin.len())
                .position(|w| w == origin)
                .expect("origin: generated");
            let mut imported = description.clone();
            imported[at + origin.len() - 1] = 2;
            let err = verify_with(Some(imported)).unwrap_err();
            assert_eq!(
                err.field, "keyAttestation[0].keyDescription.teeEnforced.origin",
                "{err}"
            );
            assert!(err.reason.contains("not generated"), "{err}");

            for level in LEVELS {
                let agree_only = key_description(b"c", level, &[PURPOSE_AGREE_KEY, 3]);
                let err = verify_with(Some(agree_only)).unwrap_err();
                assert_eq!(err.field, "keyAttestation[0].keyDescription.purpose");
                assert!(err.reason.contains("[3, 6]"), "{err}");
                assert!(err.reason.contains("SIGN (2)"), "{err}");
                verify_with(Some(key_description(b"c", level, &[PURPOSE_SIGN]))).unwrap();
            }

            let long = key_description(&[1; CHALLENGE_MAX + 1], Level::StrongBox, &[PURPOSE_SIGN]);
            let err = verify_with(Some(long)).unwrap_err();
            assert_eq!(
                err.field,
                "keyAttestation[0].keyDescription.attestationChallenge"
            );
            let empty = key_description(b"", Level::StrongBox, &[PURPOSE_SIGN]);
            assert_eq!(verify_with(Some(empty)).unwrap().challenge, b"");
        }
    }
}
