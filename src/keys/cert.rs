//! Publishing signet's public keys to the systems that must trust them.
//!
//! Relying apps pin keys in whatever form their stack reads: PEM for TLS-era
//! tooling, JWK for web stacks, COSE_Key for FIDO-adjacent code. A bank's PKI
//! wants X.509 instead: either a PKCS#10 request that its CA certifies, or, when
//! there is no CA in the loop, a certificate signed inside the device.
//!
//! Every signature made here goes through [`KeyRing::sign`], so the private keys
//! stay in the HSM/TPM and the device signs exactly the DER that is emitted.
//!
//! x509-cert 0.3 keeps the fields of its `TbsCertificate` and `Certificate`
//! private unless its `builder` feature (and the RustCrypto signer traits it
//! drags in) is enabled, so certificates are encoded through local structures
//! with the same ASN.1 layout, built from x509-cert's public component types.
//! PKCS#10 types have public fields and are used directly.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use coset::{CborSerializable as _, CoseKey, CoseKeyBuilder, iana};
use der::asn1::{
    BitString, Ia5StringRef, ObjectIdentifier, OctetString, PrintableStringRef, Utf8StringRef,
};
use der::oid::AssociatedOid;
use der::pem::LineEnding;
use der::{Decode as _, Encode, EncodePem as _, Sequence, Tag, Tagged as _};
use serde::{Deserialize, Serialize};
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, KeyUsage, KeyUsages, SubjectKeyIdentifier,
};
use x509_cert::name::Name;
use x509_cert::request::{CertReq, CertReqInfo};
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::{Time, Validity};
use x509_cert::{AlgorithmIdentifier, SubjectPublicKeyInfo};

use super::{EcPublicKey, KeyError, KeyInfo, KeyRing, Purpose, Role, sha256};

/// ecdsa-with-SHA256 (RFC 5758 §3.2): what the devices produce, with SHA-256
/// computed by [`KeyRing::sign`].
const ECDSA_WITH_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");

/// Clock skew between signet and relying hosts must not make a fresh
/// certificate "not yet valid".
const BACKDATE: Duration = Duration::from_secs(5 * 60);

/// Ten years: beyond that a P-256 key should have been rotated anyway, and a
/// typo such as `--days 36500` should fail rather than mint a century-long
/// certificate.
pub const MAX_CERT_DAYS: u32 = 3650;

const EXAMPLE_DN: &str = "CN=signet token-signing,O=Example Bank,C=CH";

/// The encodings relying parties ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    /// SubjectPublicKeyInfo, for OpenSSL-style tooling and Java/.NET key stores.
    Pem,
    /// RFC 7517 JSON Web Key, for web stacks and JWKS endpoints.
    Jwk,
    /// RFC 9052 COSE_Key (CBOR, shown as unpadded base64url), for CBOR/FIDO code.
    Cose,
}

impl ExportFormat {
    pub const ALL: [ExportFormat; 3] = [ExportFormat::Pem, ExportFormat::Jwk, ExportFormat::Cose];

    pub fn as_str(self) -> &'static str {
        match self {
            ExportFormat::Pem => "pem",
            ExportFormat::Jwk => "jwk",
            ExportFormat::Cose => "cose",
        }
    }
}

impl fmt::Display for ExportFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ExportFormat {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        ExportFormat::ALL
            .into_iter()
            .find(|f| f.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                KeyError::Io(format!(
                    "unknown export format {:?}; formats are pem, jwk, cose",
                    s.chars().take(64).collect::<String>()
                ))
            })
    }
}

/// The public half of `key` in `format`. PEM ends with a newline; JWK (pretty
/// JSON) and COSE (one base64url line) do not.
pub fn export_public(key: &KeyInfo, format: ExportFormat) -> String {
    match format {
        ExportFormat::Pem => key.public.pem(),
        ExportFormat::Jwk => format!("{:#}", jwk(key)),
        // coset only fails to encode a key with duplicate parameters, and
        // `cose_key` sets each parameter once, so the empty fallback is
        // unreachable; it exists to keep this function infallible.
        ExportFormat::Cose => cose_key(key)
            .to_vec()
            .map(|cbor| URL_SAFE_NO_PAD.encode(cbor))
            .unwrap_or_default(),
    }
}

/// The JWK carries `alg`, `use` and `key_ops` so that a relying app's JOSE
/// library refuses to use the encryption key for verification (or the reverse)
/// even if someone mixes up the kids.
pub fn jwk(key: &KeyInfo) -> serde_json::Value {
    let (usage, op) = match key.role.purpose() {
        Purpose::Sign => ("sig", "verify"),
        Purpose::KeyAgreement => ("enc", "deriveBits"),
    };
    serde_json::json!({
        "kty": "EC",
        "crv": "P-256",
        "x": URL_SAFE_NO_PAD.encode(key.public.x()),
        "y": URL_SAFE_NO_PAD.encode(key.public.y()),
        "kid": key.kid.to_string(),
        "alg": key.role.algorithm(),
        "use": usage,
        "key_ops": [op],
    })
}

/// The kid is the signet kid *string* (its UTF-8 bytes), not the 16 raw bytes,
/// so the same identifier appears in JWKs, COSE structures, logs and receipts.
/// `alg` and `key_ops` pin the key to its one purpose, as in [`jwk`].
pub fn cose_key(key: &KeyInfo) -> CoseKey {
    let (alg, op) = match key.role.purpose() {
        Purpose::Sign => (iana::Algorithm::ES256, iana::KeyOperation::Verify),
        Purpose::KeyAgreement => (
            iana::Algorithm::ECDH_ES_HKDF_256,
            iana::KeyOperation::DeriveBits,
        ),
    };
    CoseKeyBuilder::new_ec2_pub_key(
        iana::EllipticCurve::P_256,
        key.public.x().to_vec(),
        key.public.y().to_vec(),
    )
    .key_id(key.kid.to_string().into_bytes())
    .algorithm(alg)
    .add_key_op(op)
    .build()
}

/// A PKCS#10 request for the active key of `role`, for a bank CA to certify.
///
/// The request is signed by the key it names (proof of possession), which the
/// token-encryption key cannot do: it is restricted to key agreement on the
/// device. Use [`self_cert_pem`] for that key instead.
pub fn csr_pem(ring: &KeyRing, role: Role, subject: &str) -> Result<String, KeyError> {
    let subject = parse_dn(subject)?;
    let key = ring.active(role)?;
    if role.purpose() != Purpose::Sign {
        return Err(KeyError::WrongPurpose {
            kid: key.kid,
            role,
            operation: "signing a CSR (a PKCS#10 request must be signed by its own key; use self-cert, which certifies it with the token-signing key)",
        });
    }
    let info = CertReqInfo {
        version: x509_cert::request::Version::V1,
        subject,
        public_key: spki(&key.public)?,
        attributes: Default::default(),
    };
    let signature = sign_der(ring, &key, &info.to_der().map_err(encoding)?)?;
    CertReq {
        info,
        algorithm: ecdsa_with_sha256(),
        signature,
    }
    .to_pem(LineEnding::LF)
    .map_err(encoding)
}

/// An X.509 v3 certificate for the active key of `role`, valid for `days`
/// (1..=3650) from five minutes before `now`.
///
/// Signing roles get a self-signed certificate: relying apps that need X.509
/// rather than a bare key can pin it, and it proves possession as a CSR would.
///
/// The token-encryption key cannot sign (key agreement only), so its
/// certificate is issued by the active **token-signing** key instead: the
/// issuer DN is the same `subject` string, the signature is the token-signing
/// key's, and the authorityKeyIdentifier is the token-signing key's subject key
/// identifier. An app that already pins the token-signing key can therefore
/// check that an encryption key really belongs to this signet before encrypting
/// to it. Chain builders will not treat that certificate as self-signed (its
/// own key does not verify it) and the token-signing certificate is not a CA,
/// so verify it against the token-signing public key directly, not via a
/// path-validation library.
///
/// Subject and authority key identifiers are the first 20 bytes of SHA-256
/// over the subjectPublicKey bits (RFC 7093 §2 method 1), not SHA-1: no extra
/// hash is needed and identifiers stay 20 bytes like everyone else's.
pub fn self_cert_pem(
    ring: &KeyRing,
    role: Role,
    subject: &str,
    days: u32,
    now: SystemTime,
) -> Result<String, KeyError> {
    if !(1..=MAX_CERT_DAYS).contains(&days) {
        return Err(KeyError::Io(format!(
            "certificate validity of {days} days is out of range: use 1 to {MAX_CERT_DAYS} days"
        )));
    }
    let subject = parse_dn(subject)?;
    let validity = validity(now, days)?;
    let key = ring.active(role)?;
    let issuer_key = match role.purpose() {
        Purpose::Sign => key.clone(),
        Purpose::KeyAgreement => ring.active(Role::TokenSigning)?,
    };
    let usage = match role.purpose() {
        Purpose::Sign => KeyUsages::DigitalSignature,
        Purpose::KeyAgreement => KeyUsages::KeyAgreement,
    };
    let extensions = vec![
        extension(
            true,
            &BasicConstraints {
                ca: false,
                path_len_constraint: None,
            },
        )?,
        extension(true, &KeyUsage(usage.into()))?,
        extension(
            false,
            &SubjectKeyIdentifier(OctetString::new(key_identifier(&key.public)).map_err(encoding)?),
        )?,
        extension(
            false,
            &AuthorityKeyIdentifier {
                key_identifier: Some(
                    OctetString::new(key_identifier(&issuer_key.public)).map_err(encoding)?,
                ),
                ..Default::default()
            },
        )?,
    ];
    let tbs = TbsCertificate {
        version: x509_cert::Version::V3,
        serial_number: random_serial()?,
        signature: ecdsa_with_sha256(),
        issuer: subject.clone(),
        validity,
        subject,
        subject_public_key_info: spki(&key.public)?,
        extensions,
    };
    let signature = sign_der(ring, &issuer_key, &tbs.to_der().map_err(encoding)?)?;
    let cert = Certificate {
        tbs_certificate: tbs,
        signature_algorithm: ecdsa_with_sha256(),
        signature,
    };
    der::pem::encode_string(
        "CERTIFICATE",
        LineEnding::LF,
        &cert.to_der().map_err(encoding)?,
    )
    .map_err(|e| encoding(e.into()))
}

/// RFC 5280 `TBSCertificate`, v3 only (so `version` is always present) and
/// without the unique identifiers RFC 5280 tells CAs not to generate.
#[derive(Clone, Debug, Sequence)]
struct TbsCertificate {
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT")]
    version: x509_cert::Version,
    serial_number: SerialNumber,
    signature: AlgorithmIdentifier,
    issuer: Name,
    validity: Validity,
    subject: Name,
    subject_public_key_info: SubjectPublicKeyInfo,
    #[asn1(context_specific = "3", tag_mode = "EXPLICIT")]
    extensions: Vec<Extension>,
}

/// RFC 5280 `Certificate`.
#[derive(Clone, Debug, Sequence)]
struct Certificate {
    tbs_certificate: TbsCertificate,
    signature_algorithm: AlgorithmIdentifier,
    signature: BitString,
}

/// x509-cert's parser is lenient where a CA's is not: it accepts `CN=` with
/// nothing after it, escapes such as `\ff` that make invalid UTF-8, and any
/// country value, so those are refused here with a message instead of producing
/// a request the CA rejects.
fn parse_dn(subject: &str) -> Result<Name, KeyError> {
    let shown: String = subject.chars().take(256).collect();
    let bad = |why: String| {
        KeyError::Io(format!(
            "subject DN: {why}; expected an RFC 4514 name like \"{EXAMPLE_DN}\" \
             (attributes separated by commas without spaces, special characters escaped with \\)"
        ))
    };
    if subject.trim().is_empty() {
        return Err(bad("the name is empty".into()));
    }
    let name = Name::from_str(subject).map_err(|e| bad(format!("cannot parse {shown:?} ({e})")))?;
    for atv in name.iter() {
        let attribute = match der::oid::db::DB.by_oid(&atv.oid) {
            // RFC 4514 writes the short names in capitals (CN, OU, DC).
            Some(name) if name.len() <= 3 => format!("{} ({})", name.to_uppercase(), atv.oid),
            Some(name) => format!("{name} ({})", atv.oid),
            None => atv.oid.to_string(),
        };
        let value = &atv.value;
        if value.value().is_empty() {
            return Err(bad(format!("{attribute} has an empty value in {shown:?}")));
        }
        let valid = match value.tag() {
            Tag::Utf8String => Utf8StringRef::try_from(value).is_ok(),
            Tag::PrintableString => PrintableStringRef::try_from(value).is_ok(),
            Tag::Ia5String => Ia5StringRef::try_from(value).is_ok(),
            // `OID=#hex` values are DER already and were decoded by the parser.
            _ => true,
        };
        if !valid {
            return Err(bad(format!(
                "{attribute} is not a valid {} in {shown:?}",
                value.tag()
            )));
        }
        let country = atv.oid == der::oid::db::rfc4519::COUNTRY_NAME;
        if country
            && !(value.value().len() == 2 && value.value().iter().all(u8::is_ascii_alphabetic))
        {
            return Err(bad(format!(
                "the country (C) must be a two-letter ISO 3166 code such as CH, in {shown:?}"
            )));
        }
    }
    Ok(name)
}

fn validity(now: SystemTime, days: u32) -> Result<Validity, KeyError> {
    // Whole seconds: X.509 times have no fractions, and truncating here keeps
    // notAfter - notBefore exact.
    let now = now
        .duration_since(UNIX_EPOCH)
        .map_err(|_| KeyError::Io("the system clock is before 1970".into()))?
        .as_secs();
    let not_before = now.saturating_sub(BACKDATE.as_secs());
    let not_after = now + u64::from(days) * 86_400;
    let time = |secs: u64| {
        Time::try_from(UNIX_EPOCH + Duration::from_secs(secs)).map_err(|e| {
            KeyError::Io(format!(
                "certificate validity: time {secs}s after 1970 not encodable: {e}"
            ))
        })
    };
    Ok(Validity::new(time(not_before)?, time(not_after)?))
}

/// RFC 5280 asks for unpredictable serials (they once stopped chosen-prefix
/// collisions); 16 random bytes with the top bit cleared keep the INTEGER
/// positive, and the next bit set keeps it exactly 16 bytes long.
fn random_serial() -> Result<SerialNumber, KeyError> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes)
        .map_err(|_| KeyError::Io("certificate serial: the system RNG failed".into()))?;
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::new(&bytes).map_err(encoding)
}

/// First 20 bytes of SHA-256 over the subjectPublicKey BIT STRING contents
/// (the SEC1 point): RFC 7093 §2 method 1.
fn key_identifier(public: &EcPublicKey) -> [u8; 20] {
    let digest = sha256(public.sec1());
    let mut id = [0u8; 20];
    id.copy_from_slice(&digest[..20]);
    id
}

fn spki(public: &EcPublicKey) -> Result<SubjectPublicKeyInfo, KeyError> {
    SubjectPublicKeyInfo::from_der(&public.spki_der()).map_err(encoding)
}

/// RFC 5758: the parameters of ecdsa-with-SHA256 MUST be absent (not NULL).
fn ecdsa_with_sha256() -> AlgorithmIdentifier {
    AlgorithmIdentifier {
        oid: ECDSA_WITH_SHA256,
        parameters: None,
    }
}

/// Criticality is stated at each call rather than taken from x509-cert's
/// defaults, so the profile is visible here and cannot drift with the crate.
fn extension<T: AssociatedOid + Encode>(critical: bool, value: &T) -> Result<Extension, KeyError> {
    Ok(Extension {
        extn_id: T::OID,
        critical,
        extn_value: OctetString::new(value.to_der().map_err(encoding)?).map_err(encoding)?,
    })
}

/// Signs `tbs` as `signer`'s role and returns the DER signature as X.509 wants it.
///
/// The ring signs with whatever key is active at that instant; if a rotation
/// slipped in since `signer` was read, the result would not match the issuer
/// key identifier already written into `tbs`, so that is refused. The
/// signature is also checked before it is published: a device that returns a
/// bad signature must not yield a certificate that fails later, far away.
fn sign_der(ring: &KeyRing, signer: &KeyInfo, tbs: &[u8]) -> Result<BitString, KeyError> {
    let (kid, signature) = ring.sign(signer.role, tbs)?;
    if kid != signer.kid {
        return Err(KeyError::Io(format!(
            "the active {} key changed from {} to {kid} while signing; try again",
            signer.role, signer.kid
        )));
    }
    if !signer.public.verify(tbs, &signature) {
        return Err(KeyError::Device {
            op: "sign",
            detail: format!(
                "signature from {} does not verify with its public key",
                signer.kid
            ),
        });
    }
    BitString::from_bytes(&signature.to_der()).map_err(encoding)
}

/// DER encoding only fails on malformed input we built ourselves, so this is a
/// bug report rather than something an officer can fix.
fn encoding(e: der::Error) -> KeyError {
    KeyError::Io(format!("X.509 encoding failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{
        DeviceAttributes, EcdsaSignature, KeyBackend, Kid, SharedSecret, StoredKey, key_label,
    };
    use der::DecodePem as _;
    use der::asn1::AnyRef;
    use p256::ecdsa::signature::hazmat::PrehashSigner as _;
    use p256::pkcs8::DecodePublicKey as _;
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    use std::sync::{Arc, Mutex};
    use x509_cert::Version;

    /// Holds p256 keys in memory, only to exercise the certificate encoding;
    /// the real backends have their own suites.
    #[derive(Default)]
    struct MemoryBackend {
        keys: Mutex<Vec<(StoredKey, p256::SecretKey)>>,
    }

    impl KeyBackend for MemoryBackend {
        fn describe(&self) -> String {
            "memory".into()
        }

        fn list(&self) -> Result<Vec<StoredKey>, KeyError> {
            Ok(self
                .keys
                .lock()
                .unwrap()
                .iter()
                .map(|(k, _)| k.clone())
                .collect())
        }

        fn generate(&self, role: Role, version: u32) -> Result<StoredKey, KeyError> {
            let mut keys = self.keys.lock().unwrap();
            let seed = u8::try_from(keys.len() + 1).unwrap();
            let secret = p256::SecretKey::from_slice(&[seed; 32]).unwrap();
            let public = EcPublicKey::from_p256(&secret.public_key());
            let stored = StoredKey {
                kid: Kid::of(&public),
                role,
                version,
                label: key_label(role, version),
                retired: false,
                public,
                attributes: DeviceAttributes::default(),
            };
            keys.push((stored.clone(), secret));
            Ok(stored)
        }

        fn sign_digest(&self, kid: &Kid, digest: &[u8; 32]) -> Result<EcdsaSignature, KeyError> {
            let keys = self.keys.lock().unwrap();
            let (stored, secret) = keys
                .iter()
                .find(|(k, _)| &k.kid == kid)
                .ok_or(KeyError::KeyNotFound(*kid))?;
            assert_eq!(stored.role.purpose(), Purpose::Sign, "device refuses");
            let signature: p256::ecdsa::Signature = p256::ecdsa::SigningKey::from(secret)
                .sign_prehash(digest)
                .unwrap();
            EcdsaSignature::from_raw(&signature.to_bytes())
        }

        fn ecdh(&self, kid: &Kid, peer: &EcPublicKey) -> Result<SharedSecret, KeyError> {
            let keys = self.keys.lock().unwrap();
            let (stored, secret) = keys
                .iter()
                .find(|(k, _)| &k.kid == kid)
                .ok_or(KeyError::KeyNotFound(*kid))?;
            assert_eq!(
                stored.role.purpose(),
                Purpose::KeyAgreement,
                "device refuses"
            );
            let shared =
                p256::ecdh::diffie_hellman(secret.to_nonzero_scalar(), peer.to_p256().as_affine());
            SharedSecret::from_slice(&shared.raw_secret_bytes()[..])
        }

        fn retire(&self, kid: &Kid) -> Result<(), KeyError> {
            let mut keys = self.keys.lock().unwrap();
            let (stored, _) = keys
                .iter_mut()
                .find(|(k, _)| &k.kid == kid)
                .ok_or(KeyError::KeyNotFound(*kid))?;
            stored.retired = true;
            Ok(())
        }

        fn ping(&self) -> Result<(), KeyError> {
            Ok(())
        }
    }

    const DN: &str = "CN=signet token-signing,O=Example Bank,C=CH";

    fn ring() -> KeyRing {
        let ring = KeyRing::new(Arc::new(MemoryBackend::default()));
        ring.init().unwrap();
        ring
    }

    /// A fixed instant with a fractional second, to check truncation.
    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(1_760_000_000_250)
    }

    /// The outer shape shared by certificates and requests, keeping the signed
    /// part as the exact bytes that were signed.
    #[derive(Sequence)]
    struct Signed<'a> {
        tbs: AnyRef<'a>,
        algorithm: AlgorithmIdentifier,
        signature: BitString,
    }

    fn pem_body(pem: &str) -> Vec<u8> {
        let (_, der) = der::pem::decode_vec(pem.as_bytes()).unwrap();
        der
    }

    fn verifies(public: &EcPublicKey, signed: &[u8], signature: &BitString) -> bool {
        aws_lc_rs::signature::UnparsedPublicKey::new(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1,
            &public.sec1()[..],
        )
        .verify(signed, signature.raw_bytes())
        .is_ok()
    }

    fn openssl(args: &[&str], input: &str) -> Option<String> {
        let child = Command::new("openssl")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                eprintln!("openssl not installed: skipping the openssl check");
                return None;
            }
            Err(e) => panic!("openssl: {e}"),
        };
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "openssl {args:?} rejected it: {}{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(stdout)
    }

    #[test]
    fn csr_names_the_key_and_is_signed_by_it() {
        let ring = ring();
        for role in [
            Role::TokenSigning,
            Role::ApprovalCountersign,
            Role::AuditCheckpoint,
        ] {
            let key = ring.active(role).unwrap();
            let pem = csr_pem(&ring, role, DN).unwrap();
            assert!(pem.starts_with("-----BEGIN CERTIFICATE REQUEST-----\n"));
            let csr = CertReq::from_pem(pem.as_bytes()).unwrap();
            assert_eq!(csr.info.version, x509_cert::request::Version::V1);
            assert_eq!(csr.info.subject, Name::from_str(DN).unwrap());
            assert_eq!(csr.info.subject.to_string(), DN);
            assert_eq!(csr.info.public_key.to_der().unwrap(), key.public.spki_der());
            assert_eq!(csr.algorithm, ecdsa_with_sha256());
            assert!(csr.info.attributes.is_empty());

            let der = pem_body(&pem);
            let signed = Signed::from_der(&der).unwrap();
            let info_der = csr.info.to_der().unwrap();
            assert_eq!(signed.tbs.to_der().unwrap(), info_der);
            assert!(verifies(&key.public, &info_der, &csr.signature));
            let other = ring.active(Role::TokenEncryption).unwrap();
            assert!(!verifies(&other.public, &info_der, &csr.signature));

            if let Some(text) = openssl(&["req", "-noout", "-verify", "-text"], &pem) {
                assert!(text.contains("ecdsa-with-SHA256"), "{text}");
                assert!(text.contains("NIST CURVE: P-256"), "{text}");
            }
        }
    }

    #[test]
    fn token_encryption_csr_is_refused() {
        let ring = ring();
        let key = ring.active(Role::TokenEncryption).unwrap();
        match csr_pem(&ring, Role::TokenEncryption, DN) {
            Err(KeyError::WrongPurpose {
                kid,
                role,
                operation,
            }) => {
                assert_eq!(kid, key.kid);
                assert_eq!(role, Role::TokenEncryption);
                assert!(operation.contains("self-cert"), "{operation}");
            }
            other => panic!("expected WrongPurpose, got {other:?}"),
        }
    }

    fn parse_cert(pem: &str) -> (x509_cert::Certificate, Vec<u8>) {
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----\n"));
        let cert = x509_cert::Certificate::from_pem(pem.as_bytes()).unwrap();
        let der = pem_body(pem);
        let signed = Signed::from_der(&der).unwrap();
        let tbs = signed.tbs.to_der().unwrap();
        // x509-cert reads back exactly what was signed.
        assert_eq!(cert.tbs_certificate().to_der().unwrap(), tbs);
        assert_eq!(cert.to_der().unwrap(), der);
        (cert, tbs)
    }

    #[test]
    fn self_cert_is_v3_self_signed_end_entity() {
        let ring = ring();
        let key = ring.active(Role::TokenSigning).unwrap();
        let pem = self_cert_pem(&ring, Role::TokenSigning, DN, 365, now()).unwrap();
        let (cert, tbs_der) = parse_cert(&pem);
        let tbs = cert.tbs_certificate();

        assert_eq!(tbs.version(), Version::V3);
        assert_eq!(tbs.subject().to_string(), DN);
        assert_eq!(tbs.issuer(), tbs.subject());
        assert_eq!(
            tbs.subject_public_key_info().to_der().unwrap(),
            key.public.spki_der()
        );
        assert_eq!(tbs.signature(), &ecdsa_with_sha256());
        assert_eq!(cert.signature_algorithm(), &ecdsa_with_sha256());

        let serial = tbs.serial_number().as_bytes();
        assert_eq!(serial.len(), 16);
        assert!(serial[0] & 0x80 == 0 && serial[0] != 0);

        let start = UNIX_EPOCH + Duration::from_secs(1_760_000_000 - 300);
        let end = UNIX_EPOCH + Duration::from_secs(1_760_000_000 + 365 * 86_400);
        assert_eq!(tbs.validity().not_before.to_system_time(), start);
        assert_eq!(tbs.validity().not_after.to_system_time(), end);

        let (critical, bc) = tbs.get_extension::<BasicConstraints>().unwrap().unwrap();
        assert!(critical);
        assert!(!bc.ca);
        assert_eq!(bc.path_len_constraint, None);
        let (critical, ku) = tbs.get_extension::<KeyUsage>().unwrap().unwrap();
        assert!(critical);
        assert_eq!(
            ku.0,
            der::flagset::FlagSet::from(KeyUsages::DigitalSignature)
        );
        let (critical, ski) = tbs
            .get_extension::<SubjectKeyIdentifier>()
            .unwrap()
            .unwrap();
        assert!(!critical);
        assert_eq!(ski.0.as_bytes(), &key_identifier(&key.public));
        assert_eq!(
            ski.0.as_bytes(),
            &sha256(tbs.subject_public_key_info().subject_public_key.raw_bytes())[..20]
        );
        let (critical, aki) = tbs
            .get_extension::<AuthorityKeyIdentifier>()
            .unwrap()
            .unwrap();
        assert!(!critical);
        assert_eq!(aki.key_identifier, Some(ski.0.clone()));
        assert_eq!(aki.authority_cert_issuer, None);
        assert_eq!(tbs.extensions().unwrap().len(), 4);

        assert!(verifies(&key.public, &tbs_der, cert.signature()));

        if let Some(text) = openssl(&["x509", "-noout", "-text"], &pem) {
            for needle in [
                "Version: 3 (0x2)",
                "Signature Algorithm: ecdsa-with-SHA256",
                "Subject: C = CH, O = Example Bank, CN = signet token-signing",
                "Issuer: C = CH, O = Example Bank, CN = signet token-signing",
                "X509v3 Basic Constraints: critical",
                "CA:FALSE",
                "X509v3 Key Usage: critical",
                "Digital Signature",
                "X509v3 Subject Key Identifier",
                "X509v3 Authority Key Identifier",
                "NIST CURVE: P-256",
            ] {
                assert!(text.contains(needle), "missing {needle:?} in\n{text}");
            }
            // openssl checks the self-signature when the certificate is its
            // own trust anchor.
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("cert.pem");
            std::fs::write(&path, &pem).unwrap();
            let path = path.to_str().unwrap();
            openssl(
                &[
                    "verify",
                    "-check_ss_sig",
                    "-attime",
                    "1760000000",
                    "-CAfile",
                    path,
                    path,
                ],
                "",
            );
        }
    }

    #[test]
    fn serials_differ() {
        let ring = ring();
        let a = self_cert_pem(&ring, Role::AuditCheckpoint, DN, 1, now()).unwrap();
        let b = self_cert_pem(&ring, Role::AuditCheckpoint, DN, 1, now()).unwrap();
        let (a, _) = parse_cert(&a);
        let (b, _) = parse_cert(&b);
        assert_ne!(
            a.tbs_certificate().serial_number(),
            b.tbs_certificate().serial_number()
        );
    }

    #[test]
    fn token_encryption_cert_is_issued_by_the_token_signing_key() {
        let ring = ring();
        let key = ring.active(Role::TokenEncryption).unwrap();
        let issuer = ring.active(Role::TokenSigning).unwrap();
        let pem = self_cert_pem(&ring, Role::TokenEncryption, DN, 30, now()).unwrap();
        let (cert, tbs_der) = parse_cert(&pem);
        let tbs = cert.tbs_certificate();

        assert_eq!(tbs.version(), Version::V3);
        assert_eq!(
            tbs.subject_public_key_info().to_der().unwrap(),
            key.public.spki_der()
        );
        assert_eq!(tbs.issuer().to_string(), DN);
        assert!(verifies(&issuer.public, &tbs_der, cert.signature()));
        assert!(!verifies(&key.public, &tbs_der, cert.signature()));

        let (critical, ku) = tbs.get_extension::<KeyUsage>().unwrap().unwrap();
        assert!(critical);
        assert_eq!(ku.0, der::flagset::FlagSet::from(KeyUsages::KeyAgreement));
        let (_, ski) = tbs
            .get_extension::<SubjectKeyIdentifier>()
            .unwrap()
            .unwrap();
        assert_eq!(ski.0.as_bytes(), &key_identifier(&key.public));
        let (_, aki) = tbs
            .get_extension::<AuthorityKeyIdentifier>()
            .unwrap()
            .unwrap();
        assert_eq!(
            aki.key_identifier.unwrap().as_bytes(),
            &key_identifier(&issuer.public)
        );
        let end = UNIX_EPOCH + Duration::from_secs(1_760_000_000 + 30 * 86_400);
        assert_eq!(tbs.validity().not_after.to_system_time(), end);

        if let Some(text) = openssl(&["x509", "-noout", "-text"], &pem) {
            assert!(text.contains("Key Agreement"), "{text}");
        }
    }

    #[test]
    fn bad_subjects_and_validity_are_rejected() {
        let ring = ring();
        for dn in [
            "",
            "   ",
            "signet",
            "CN=a, O=b",
            "CN=",
            "CN=a,,O=b",
            "XX=a",
            "CN=\\ff",
            "C=\u{e9}",
            "C=CHE",
            "C=C1",
        ] {
            for result in [
                csr_pem(&ring, Role::TokenSigning, dn),
                self_cert_pem(&ring, Role::TokenSigning, dn, 10, now()),
            ] {
                match result {
                    Err(KeyError::Io(msg)) => {
                        assert!(msg.starts_with("subject DN:"), "{msg}");
                        assert!(msg.contains(EXAMPLE_DN), "{msg}");
                    }
                    other => panic!("{dn:?}: expected a subject error, got {other:?}"),
                }
            }
        }
        for days in [0, MAX_CERT_DAYS + 1, 4000, u32::MAX] {
            match self_cert_pem(&ring, Role::TokenSigning, DN, days, now()) {
                Err(KeyError::Io(msg)) => assert!(msg.contains("1 to 3650 days"), "{msg}"),
                other => panic!("{days} days: expected an error, got {other:?}"),
            }
        }
        assert!(self_cert_pem(&ring, Role::TokenSigning, DN, MAX_CERT_DAYS, now()).is_ok());
        assert!(self_cert_pem(&ring, Role::TokenSigning, DN, 1, now()).is_ok());
    }

    #[test]
    fn validity_after_2049_uses_generalized_time() {
        let ring = ring();
        let late = UNIX_EPOCH + Duration::from_secs(2_500_000_000); // 2049-03
        let pem = self_cert_pem(&ring, Role::TokenSigning, DN, 3650, late).unwrap();
        let (cert, _) = parse_cert(&pem);
        let validity = cert.tbs_certificate().validity();
        assert!(matches!(validity.not_before, Time::UtcTime(_)));
        assert!(matches!(validity.not_after, Time::GeneralTime(_)));
        openssl(&["x509", "-noout", "-text"], &pem);
    }

    #[test]
    fn escaped_and_multi_valued_names_round_trip() {
        let ring = ring();
        let dn = r"CN=Signet\, token signing+OU=Ops,O=Bank \22Example\22,DC=bank,C=CH";
        let pem = csr_pem(&ring, Role::ApprovalCountersign, dn).unwrap();
        let csr = CertReq::from_pem(pem.as_bytes()).unwrap();
        assert_eq!(csr.info.subject, Name::from_str(dn).unwrap());
        openssl(&["req", "-noout", "-verify"], &pem);
    }

    #[test]
    fn export_formats_parse() {
        assert_eq!("pem".parse::<ExportFormat>().unwrap(), ExportFormat::Pem);
        assert_eq!("JWK".parse::<ExportFormat>().unwrap(), ExportFormat::Jwk);
        assert_eq!("cose".parse::<ExportFormat>().unwrap(), ExportFormat::Cose);
        let err = "der".parse::<ExportFormat>().unwrap_err().to_string();
        assert!(
            err.contains("pem, jwk, cose") && err.contains("\"der\""),
            "{err}"
        );
        for f in ExportFormat::ALL {
            assert_eq!(f.to_string().parse::<ExportFormat>().unwrap(), f);
        }
    }

    #[test]
    fn exports_carry_the_coordinates_and_kid() {
        let ring = ring();
        for role in Role::ALL {
            let key = ring.active(role).unwrap();
            let kid = key.kid.to_string();
            let signing = role.purpose() == Purpose::Sign;

            let pem = export_public(&key, ExportFormat::Pem);
            let decoded = p256::PublicKey::from_public_key_pem(&pem).unwrap();
            assert_eq!(EcPublicKey::from_p256(&decoded), key.public);

            let text = export_public(&key, ExportFormat::Jwk);
            let value: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(value, jwk(&key));
            let b64 = |field: &str| URL_SAFE_NO_PAD.decode(value[field].as_str().unwrap());
            assert_eq!(value["kty"], "EC");
            assert_eq!(value["crv"], "P-256");
            assert_eq!(b64("x").unwrap(), key.public.x());
            assert_eq!(b64("y").unwrap(), key.public.y());
            assert_eq!(value["kid"], kid.as_str());
            let (alg, usage, op) = if signing {
                ("ES256", "sig", "verify")
            } else {
                ("ECDH-ES", "enc", "deriveBits")
            };
            assert_eq!(value["alg"], alg);
            assert_eq!(value["use"], usage);
            assert_eq!(value["key_ops"], serde_json::json!([op]));
            assert_eq!(value.as_object().unwrap().len(), 8);

            let text = export_public(&key, ExportFormat::Cose);
            assert!(!text.contains('='));
            let cbor = URL_SAFE_NO_PAD.decode(&text).unwrap();
            let cose = CoseKey::from_slice(&cbor).unwrap();
            assert_eq!(cose, cose_key(&key));
            assert_eq!(cose.kty, coset::KeyType::Assigned(iana::KeyType::EC2));
            assert_eq!(cose.key_id, kid.as_bytes());
            let (alg, op) = if signing {
                (iana::Algorithm::ES256, iana::KeyOperation::Verify)
            } else {
                (
                    iana::Algorithm::ECDH_ES_HKDF_256,
                    iana::KeyOperation::DeriveBits,
                )
            };
            assert_eq!(cose.alg, Some(coset::Algorithm::Assigned(alg)));
            assert_eq!(
                cose.key_ops.iter().collect::<Vec<_>>(),
                vec![&coset::KeyOperation::Assigned(op)]
            );
            let param = |label: iana::Ec2KeyParameter| {
                cose.params
                    .iter()
                    .find(|(l, _)| *l == coset::Label::Int(label as i64))
                    .map(|(_, v)| v.clone())
                    .unwrap()
            };
            assert_eq!(
                param(iana::Ec2KeyParameter::Crv),
                coset::cbor::value::Value::from(iana::EllipticCurve::P_256 as u64)
            );
            assert_eq!(
                param(iana::Ec2KeyParameter::X).as_bytes().unwrap(),
                key.public.x()
            );
            assert_eq!(
                param(iana::Ec2KeyParameter::Y).as_bytes().unwrap(),
                key.public.y()
            );
        }
    }
}
