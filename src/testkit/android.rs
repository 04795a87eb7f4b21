//! Android Key Attestation chains for a device key: test root ->
//! intermediate -> a leaf for the given public key, carrying the KeyDescription
//! extension (1.3.6.1.4.1.11129.2.1.17) a phone's keystore would write.
//!
//! The leaf certifies a key whose private half the test may not have (an
//! enrolled device key), so rcgen signs it for a bare public key; the
//! KeyDescription is DER written by hand because its AuthorizationList tags
//! run to `[7xx]` and tests also need encodings no keystore would produce.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, CustomExtension, DistinguishedName,
    DnType, IsCa, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData,
    SignatureAlgorithm,
};

use crate::keys::EcPublicKey;

const DAY: Duration = Duration::from_secs(86_400);
const YEAR: Duration = Duration::from_secs(365 * 86_400);

/// The KeyDescription extension, as rcgen takes OIDs.
const KEY_DESCRIPTION_OID: [u64; 10] = [1, 3, 6, 1, 4, 1, 11129, 2, 1, 17];

/// KeyMint purposes.
pub const PURPOSE_SIGN: u64 = 2;
pub const PURPOSE_AGREE_KEY: u64 = 6;

/// KeyDescription `SecurityLevel`: where the keystore that made the key runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecurityLevelForTests {
    Software,
    TrustedEnvironment,
    StrongBox,
}

impl SecurityLevelForTests {
    /// The ENUMERATED value.
    pub fn code(self) -> u8 {
        match self {
            SecurityLevelForTests::Software => 0,
            SecurityLevelForTests::TrustedEnvironment => 1,
            SecurityLevelForTests::StrongBox => 2,
        }
    }

    /// The name signet records for it.
    pub fn name(self) -> &'static str {
        match self {
            SecurityLevelForTests::Software => "software",
            SecurityLevelForTests::TrustedEnvironment => "tee",
            SecurityLevelForTests::StrongBox => "strongbox",
        }
    }
}

/// root -> intermediate -> leaf for `device_key`, attested at `level` with
/// `challenge` and purposes SIGN and AGREE_KEY, valid around
/// [`super::test_now`]. Returns the chain leaf first (without the root) and
/// the root's DER, the trust anchor to verify it with.
pub fn key_attestation_chain(
    device_key: &EcPublicKey,
    challenge: &[u8],
    level: SecurityLevelForTests,
) -> (Vec<Vec<u8>>, Vec<u8>) {
    let description = key_description(challenge, level, &[PURPOSE_SIGN, PURPOSE_AGREE_KEY]);
    key_attestation_chain_with(device_key, Some(description))
}

/// [`key_attestation_chain`] with the KeyDescription extension value given
/// as bytes, or left out (`None`), for negative tests.
pub fn key_attestation_chain_with(
    device_key: &EcPublicKey,
    key_description: Option<Vec<u8>>,
) -> (Vec<Vec<u8>>, Vec<u8>) {
    let now = super::test_now();
    let root_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("root key");
    let root = CertifiedIssuer::self_signed(
        ca_params(
            "Signet Test Android Attestation Root",
            BasicConstraints::Unconstrained,
            now,
            20,
        ),
        root_key,
    )
    .expect("root certificate");
    let intermediate_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("CA key");
    let intermediate = CertifiedIssuer::signed_by(
        ca_params(
            "Signet Test Android Keystore CA",
            BasicConstraints::Constrained(0),
            now,
            10,
        ),
        intermediate_key,
        &root,
    )
    .expect("intermediate certificate");

    let mut leaf = CertificateParams::default();
    leaf.distinguished_name = DistinguishedName::new();
    leaf.distinguished_name
        .push(DnType::CommonName, "Android Keystore Key");
    leaf.is_ca = IsCa::NoCa;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.not_before = whole_seconds(now - DAY).into();
    leaf.not_after = whole_seconds(now + 5 * YEAR).into();
    if let Some(value) = key_description {
        leaf.custom_extensions = vec![CustomExtension::from_oid_content(
            &KEY_DESCRIPTION_OID,
            value,
        )];
    }
    let leaf = leaf
        .signed_by(&DeviceKey(device_key), &intermediate)
        .expect("leaf certificate");

    (
        vec![leaf.der().to_vec(), intermediate.der().to_vec()],
        root.der().to_vec(),
    )
}

/// A KeyDescription (attestation version 300, KeyMint 3) for a P-256 key
/// generated in the keystore. The authorizations go to the list the level
/// enforces: softwareEnforced for software, hardwareEnforced otherwise.
pub fn key_description(
    challenge: &[u8],
    level: SecurityLevelForTests,
    purposes: &[u64],
) -> Vec<u8> {
    let mut sorted = purposes.to_vec();
    sorted.sort_unstable();
    let ints: Vec<Vec<u8>> = sorted.iter().map(|p| int(*p)).collect();
    let key = vec![
        explicit(1, &tlv(0x31, &ints.concat())), // purpose
        explicit(2, &int(3)),                    // algorithm: EC
        explicit(3, &int(256)),                  // keySize
        explicit(5, &tlv(0x31, &int(4))),        // digest: SHA-256
        explicit(10, &int(1)),                   // ecCurve: P-256
        explicit(503, &[0x05, 0x00]),            // noAuthRequired
        explicit(702, &int(0)),                  // origin: generated
        explicit(705, &int(150000)),             // osVersion
        explicit(706, &int(202512)),             // osPatchLevel
    ];
    let app = vec![
        explicit(701, &int(1_767_225_600_000)), // creationDateTime
        explicit(709, &tlv(0x04, b"ch.signet.test")), // attestationApplicationId
    ];
    let (software, hardware) = match level {
        SecurityLevelForTests::Software => ([key, app].concat(), Vec::new()),
        _ => (app, key),
    };
    seq(&[
        int(300),
        tlv(0x0a, &[level.code()]),
        int(300),
        tlv(0x0a, &[level.code()]),
        tlv(0x04, challenge),
        tlv(0x04, &[]),
        seq(&software),
        seq(&hardware),
    ])
}

/// The enrolled device's public key, for rcgen to certify.
struct DeviceKey<'a>(&'a EcPublicKey);

impl PublicKeyData for DeviceKey<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.0.sec1()
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ECDSA_P256_SHA256
    }
}

fn ca_params(
    common_name: &str,
    constraints: BasicConstraints,
    now: SystemTime,
    years: u32,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Signet Test");
    params.is_ca = IsCa::Ca(constraints);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = whole_seconds(now - DAY).into();
    params.not_after = whole_seconds(now + YEAR * years).into();
    params
}

/// X.509 has whole seconds only.
fn whole_seconds(t: SystemTime) -> SystemTime {
    let secs = t.duration_since(UNIX_EPOCH).expect("after 1970").as_secs();
    UNIX_EPOCH + Duration::from_secs(secs)
}

// DER by hand: high tag numbers, and whatever a test wants to break.

fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
    tlv_tag(&[tag], body)
}

fn tlv_tag(tag: &[u8], body: &[u8]) -> Vec<u8> {
    let mut out = tag.to_vec();
    if body.len() < 0x80 {
        out.push(body.len() as u8);
    } else {
        let len = body.len().to_be_bytes();
        let skip = len.iter().position(|b| *b != 0).unwrap_or(len.len() - 1);
        out.push(0x80 | (len.len() - skip) as u8);
        out.extend_from_slice(&len[skip..]);
    }
    out.extend_from_slice(body);
    out
}

fn seq(parts: &[Vec<u8>]) -> Vec<u8> {
    tlv(0x30, &parts.concat())
}

/// `[number] EXPLICIT`, constructed, in the high-tag-number form from 31 up.
fn explicit(number: u32, inner: &[u8]) -> Vec<u8> {
    if number < 31 {
        return tlv_tag(&[0xa0 | number as u8], inner);
    }
    let mut groups = Vec::new();
    let mut n = number;
    loop {
        groups.push((n & 0x7f) as u8);
        n >>= 7;
        if n == 0 {
            break;
        }
    }
    let mut tag = vec![0xbf];
    for (i, g) in groups.iter().enumerate().rev() {
        tag.push(if i == 0 { *g } else { g | 0x80 });
    }
    tlv_tag(&tag, inner)
}

fn int(v: u64) -> Vec<u8> {
    let bytes = v.to_be_bytes();
    let skip = bytes.iter().position(|b| *b != 0).unwrap_or(7);
    let mut body = bytes[skip..].to_vec();
    if body[0] & 0x80 != 0 {
        body.insert(0, 0);
    }
    tlv(0x02, &body)
}
