//! Private keys for every COSE algorithm the engine verifies, able to sign
//! anything and to describe their public half as COSE_Key and SPKI.

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{self as sig, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RsaKeyPair};
use ciborium::Value;
use der::asn1::{AnyRef, ObjectIdentifier, OctetString, UintRef};
use der::{Decode as _, Sequence};
use p256::elliptic_curve::bigint::modular::{FixedMontyForm, FixedMontyParams};
use p256::elliptic_curve::bigint::{Odd, U2048};

use crate::webauthn::CoseAlgorithm;
use crate::webauthn::certpath::oid;
use crate::webauthn::cose_key::VerifyingKey;

/// A private key bound to one COSE algorithm.
pub struct SigningKey {
    alg: CoseAlgorithm,
    inner: Inner,
}

enum Inner {
    Ec(EcdsaKeyPair),
    // Boxed: the raw exponent makes it ten times the size of the others.
    Rsa(Box<(RsaKeyPair, RsaRaw)>),
    Ed(Ed25519KeyPair),
}

/// aws-lc-rs signs RSA only with SHA-2, so RS1 (still sent by Windows TPMs
/// and exercised by conformance) is computed here from the private exponent.
struct RsaRaw {
    n: U2048,
    d: U2048,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({})", self.alg.name())
    }
}

impl SigningKey {
    /// A fresh key for `alg`. RSA keys are 2048 bits.
    pub fn generate(alg: CoseAlgorithm) -> SigningKey {
        use CoseAlgorithm as A;
        let inner = match alg {
            A::Es256 => Inner::Ec(
                EcdsaKeyPair::generate(&sig::ECDSA_P256_SHA256_ASN1_SIGNING)
                    .expect("P-256 key generation"),
            ),
            A::Es384 => Inner::Ec(
                EcdsaKeyPair::generate(&sig::ECDSA_P384_SHA384_ASN1_SIGNING)
                    .expect("P-384 key generation"),
            ),
            A::Es512 => Inner::Ec(
                EcdsaKeyPair::generate(&sig::ECDSA_P521_SHA512_ASN1_SIGNING)
                    .expect("P-521 key generation"),
            ),
            A::Rs256 | A::Rs384 | A::Rs512 | A::Ps256 | A::Ps384 | A::Ps512 | A::Rs1 => {
                let pair = RsaKeyPair::generate(KeySize::Rsa2048).expect("RSA key generation");
                let raw = rsa_raw(&pair);
                Inner::Rsa(Box::new((pair, raw)))
            }
            A::EdDsa => Inner::Ed(Ed25519KeyPair::generate().expect("Ed25519 key generation")),
        };
        SigningKey { alg, inner }
    }

    pub fn alg(&self) -> CoseAlgorithm {
        self.alg
    }

    /// An ES256 key as PKCS#8 DER, for a soft authenticator that keeps its
    /// credential between runs (`signet authenticator`); `None` for other
    /// algorithms.
    pub fn es256_pkcs8(&self) -> Option<zeroize::Zeroizing<Vec<u8>>> {
        match (&self.inner, self.alg) {
            (Inner::Ec(pair), CoseAlgorithm::Es256) => pair
                .to_pkcs8v1()
                .ok()
                .map(|doc| zeroize::Zeroizing::new(doc.as_ref().to_vec())),
            _ => None,
        }
    }

    /// The ES256 key [`SigningKey::es256_pkcs8`] wrote.
    pub fn es256_from_pkcs8(der: &[u8]) -> Result<SigningKey, String> {
        EcdsaKeyPair::from_pkcs8(&sig::ECDSA_P256_SHA256_ASN1_SIGNING, der)
            .map(|pair| SigningKey {
                alg: CoseAlgorithm::Es256,
                inner: Inner::Ec(pair),
            })
            .map_err(|e| format!("not a P-256 PKCS#8 private key ({e})"))
    }

    /// Signs `message` as WebAuthn and X.509 carry signatures: DER ECDSA,
    /// PKCS#1 v1.5 or PSS, raw Ed25519.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        use CoseAlgorithm as A;
        let rng = SystemRandom::new();
        match &self.inner {
            Inner::Ec(pair) => pair
                .sign(&rng, message)
                .expect("ECDSA signing")
                .as_ref()
                .to_vec(),
            Inner::Ed(pair) => pair.sign(message).as_ref().to_vec(),
            Inner::Rsa(rsa) => {
                let (pair, raw) = &**rsa;
                let encoding: &'static dyn sig::RsaEncoding = match self.alg {
                    A::Rs256 => &sig::RSA_PKCS1_SHA256,
                    A::Rs384 => &sig::RSA_PKCS1_SHA384,
                    A::Rs512 => &sig::RSA_PKCS1_SHA512,
                    A::Ps256 => &sig::RSA_PSS_SHA256,
                    A::Ps384 => &sig::RSA_PSS_SHA384,
                    A::Ps512 => &sig::RSA_PSS_SHA512,
                    A::Rs1 => return raw.sign_pkcs1_sha1(message),
                    other => unreachable!("{} is not an RSA algorithm", other.name()),
                };
                let mut signature = vec![0u8; pair.public_modulus_len()];
                pair.sign(encoding, &rng, message, &mut signature)
                    .expect("RSA signing");
                signature
            }
        }
    }

    /// The public key as SubjectPublicKeyInfo DER.
    pub fn spki_der(&self) -> Vec<u8> {
        match &self.inner {
            Inner::Ec(pair) => pair
                .public_key()
                .as_der()
                .expect("EC SPKI")
                .as_ref()
                .to_vec(),
            Inner::Ed(pair) => pair
                .public_key()
                .as_der()
                .expect("Ed25519 SPKI")
                .as_ref()
                .to_vec(),
            Inner::Rsa(rsa) => rsa
                .0
                .public_key()
                .as_der()
                .expect("RSA SPKI")
                .as_ref()
                .to_vec(),
        }
    }

    /// The public key as the engine reads it.
    pub fn verifying_key(&self) -> VerifyingKey {
        VerifyingKey::from_spki_der(&self.spki_der(), "testkit").expect("own key parses")
    }

    /// The uncompressed SEC1 point of an EC key (fido-u2f needs it raw).
    pub fn ec_point(&self) -> Option<Vec<u8>> {
        match &self.inner {
            Inner::Ec(pair) => Some(pair.public_key().as_ref().to_vec()),
            _ => None,
        }
    }

    /// The COSE_Key an authenticator would put in attested credential data,
    /// members in CTAP2 canonical order.
    pub fn cose_key(&self) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::into_writer(&self.cose_key_value(), &mut out).expect("CBOR encoding");
        out
    }

    /// The COSE_Key as a CBOR value, for tests that edit a parameter.
    pub fn cose_key_value(&self) -> Value {
        let int = |i: i64| Value::Integer(i.into());
        let alg = (int(3), int(self.alg.id()));
        let entries = match &self.inner {
            Inner::Ec(pair) => {
                let point = pair.public_key().as_ref();
                let n = (point.len() - 1) / 2;
                let crv = match n {
                    32 => 1,
                    48 => 2,
                    _ => 3,
                };
                vec![
                    (int(1), int(2)),
                    alg,
                    (int(-1), int(crv)),
                    (int(-2), Value::Bytes(point[1..=n].to_vec())),
                    (int(-3), Value::Bytes(point[n + 1..].to_vec())),
                ]
            }
            Inner::Rsa(rsa) => {
                let public = rsa.0.public_key();
                vec![
                    (int(1), int(3)),
                    alg,
                    (
                        int(-1),
                        Value::Bytes(public.modulus().big_endian_without_leading_zero().to_vec()),
                    ),
                    (
                        int(-2),
                        Value::Bytes(public.exponent().big_endian_without_leading_zero().to_vec()),
                    ),
                ]
            }
            Inner::Ed(pair) => vec![
                (int(1), int(1)),
                alg,
                (int(-1), int(6)),
                (int(-2), Value::Bytes(pair.public_key().as_ref().to_vec())),
            ],
        };
        Value::Map(entries)
    }

    /// The X.509 signatureAlgorithm for certificates this key signs, as
    /// (OID, NULL parameters?). PSS issuers are not offered: their parameters
    /// add nothing the tests need.
    pub(crate) fn x509_signature_algorithm(&self) -> (ObjectIdentifier, bool) {
        use CoseAlgorithm as A;
        match self.alg {
            A::Es256 => (oid::ECDSA_SHA256, false),
            A::Es384 => (oid::ECDSA_SHA384, false),
            A::Es512 => (oid::ECDSA_SHA512, false),
            A::Rs256 => (oid::RSA_SHA256, true),
            A::Rs384 => (oid::RSA_SHA384, true),
            A::Rs512 => (oid::RSA_SHA512, true),
            A::Rs1 => (oid::RSA_SHA1, true),
            A::EdDsa => (oid::ED25519, false),
            A::Ps256 | A::Ps384 | A::Ps512 => {
                panic!("the testkit does not issue certificates with RSASSA-PSS")
            }
        }
    }
}

#[derive(Sequence)]
struct PrivateKeyInfo<'a> {
    version: u8,
    algorithm: AnyRef<'a>,
    private_key: OctetString,
}

#[derive(Sequence)]
struct RsaPrivateKey<'a> {
    version: u8,
    n: UintRef<'a>,
    e: UintRef<'a>,
    d: UintRef<'a>,
    p: UintRef<'a>,
    q: UintRef<'a>,
    dp: UintRef<'a>,
    dq: UintRef<'a>,
    qinv: UintRef<'a>,
}

fn u2048(bytes: &[u8]) -> U2048 {
    let mut padded = [0u8; 256];
    padded[256 - bytes.len()..].copy_from_slice(bytes);
    U2048::from_be_slice(&padded)
}

fn rsa_raw(pair: &RsaKeyPair) -> RsaRaw {
    let pkcs8 = pair.as_der().expect("RSA PKCS#8");
    let info = PrivateKeyInfo::from_der(pkcs8.as_ref()).expect("PKCS#8 PrivateKeyInfo");
    let key = RsaPrivateKey::from_der(info.private_key.as_bytes()).expect("RSAPrivateKey");
    RsaRaw {
        n: u2048(key.n.as_bytes()),
        d: u2048(key.d.as_bytes()),
    }
}

impl RsaRaw {
    /// RSASSA-PKCS1-v1_5 (RFC 8017 §8.2.1) with SHA-1.
    fn sign_pkcs1_sha1(&self, message: &[u8]) -> Vec<u8> {
        const DIGEST_INFO: [u8; 15] = [
            0x30, 0x21, 0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a, 0x05, 0x00, 0x04,
            0x14,
        ];
        let hash = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, message);
        let mut em = vec![0xffu8; 256];
        em[0] = 0;
        em[1] = 1;
        let t_len = DIGEST_INFO.len() + 20;
        em[256 - t_len - 1] = 0;
        em[256 - t_len..256 - 20].copy_from_slice(&DIGEST_INFO);
        em[256 - 20..].copy_from_slice(hash.as_ref());
        let modulus = Odd::new(self.n).into_option().expect("RSA modulus is odd");
        let params = FixedMontyParams::new_vartime(modulus);
        let m = FixedMontyForm::new(&U2048::from_be_slice(&em), &params);
        m.pow_vartime(&self.d)
            .retrieve()
            .to_be_bytes()
            .as_ref()
            .to_vec()
    }
}
