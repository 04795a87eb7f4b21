//! Public keys (COSE_Key from authenticators, SubjectPublicKeyInfo from
//! certificates) and signature verification with aws-lc-rs.
//!
//! A [`VerifyingKey`] is the bare key; the algorithm is always given
//! separately, because WebAuthn carries it in different places (the COSE
//! key's `alg`, a packed statement's `alg`, a certificate's
//! `signatureAlgorithm`) and the engine must check that they agree rather
//! than trust one of them.

use aws_lc_rs::signature::{self as sig, RsaPublicKeyComponents, UnparsedPublicKey};
use coset::iana::{self, EnumI64};
use coset::{CborSerializable, KeyType, Label};
use der::{Decode, Encode};

use super::{CoseAlgorithm, Error};

/// The NIST curves the engine verifies on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Curve {
    P256,
    P384,
    P521,
}

impl Curve {
    fn coordinate_len(self) -> usize {
        match self {
            Curve::P256 => 32,
            Curve::P384 => 48,
            Curve::P521 => 66,
        }
    }
}

/// A public key, without an opinion on the algorithm used with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VerifyingKey {
    /// Uncompressed SEC1 point.
    Ec {
        curve: Curve,
        point: Vec<u8>,
    },
    /// Big-endian modulus and exponent, leading zeros stripped.
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    Ed25519 {
        x: [u8; 32],
    },
}

/// A credential public key as registered: the key, the algorithm its COSE
/// encoding declares, and the exact COSE bytes (stored and returned as is).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialPublicKey {
    pub alg: CoseAlgorithm,
    pub key: VerifyingKey,
    pub cose: Vec<u8>,
}

/// The longest RSA modulus accepted (bits); longer ones cost verification
/// time an attacker chooses.
pub const MAX_RSA_BITS: usize = 8192;

fn strip_zeros(b: &[u8]) -> Vec<u8> {
    let first = b.iter().position(|x| *x != 0).unwrap_or(b.len());
    b[first..].to_vec()
}

impl CredentialPublicKey {
    /// Parses a COSE_Key (RFC 9052 §7, RFC 9053) as found in attested
    /// credential data. The key must declare `alg`, and the key type and curve
    /// must fit it.
    pub fn from_cose(bytes: &[u8], field: &str) -> Result<CredentialPublicKey, Error> {
        let key = coset::CoseKey::from_slice(bytes)
            .map_err(|e| Error::malformed(field, format!("not a COSE_Key: {e}")))?;
        let alg_id = match &key.alg {
            Some(coset::Algorithm::Assigned(a)) => a.to_i64(),
            Some(coset::Algorithm::PrivateUse(a)) => *a,
            Some(coset::Algorithm::Text(_)) => {
                return Err(Error::malformed(
                    field,
                    "alg (3) is text, expected an integer",
                ));
            }
            None => {
                return Err(Error::Missing {
                    field: format!("{field}.alg(3)"),
                });
            }
        };
        let alg = CoseAlgorithm::from_id(alg_id).ok_or_else(|| Error::Algorithm {
            field: format!("{field}.alg(3)"),
            alg: alg_id,
            reason: "is not supported",
        })?;
        let param = |label: i64| {
            key.params
                .iter()
                .find(|(l, _)| *l == Label::Int(label))
                .map(|(_, v)| v)
        };
        let bytes_param = |label: i64, name: &str| -> Result<Vec<u8>, Error> {
            match param(label) {
                Some(ciborium::Value::Bytes(b)) => Ok(b.clone()),
                Some(_) => Err(Error::WrongType {
                    field: format!("{field}.{name}"),
                    expected: "a byte string",
                }),
                None => Err(Error::Missing {
                    field: format!("{field}.{name}"),
                }),
            }
        };
        let int_param = |label: i64, name: &str| -> Result<i64, Error> {
            match param(label) {
                Some(ciborium::Value::Integer(i)) => i64::try_from(*i).map_err(|_| {
                    Error::malformed(format!("{field}.{name}"), "integer out of range")
                }),
                Some(_) => Err(Error::WrongType {
                    field: format!("{field}.{name}"),
                    expected: "an integer",
                }),
                None => Err(Error::Missing {
                    field: format!("{field}.{name}"),
                }),
            }
        };
        let kty = match key.kty {
            KeyType::Assigned(k) => k,
            _ => {
                return Err(Error::malformed(
                    format!("{field}.kty(1)"),
                    "unknown key type",
                ));
            }
        };
        let vk = match kty {
            iana::KeyType::EC2 => {
                let crv = int_param(-1, "crv(-1)")?;
                let curve = match crv {
                    1 => Curve::P256,
                    2 => Curve::P384,
                    3 => Curve::P521,
                    other => {
                        return Err(Error::malformed(
                            format!("{field}.crv(-1)"),
                            format!("curve {other} is not supported"),
                        ));
                    }
                };
                let x = bytes_param(-2, "x(-2)")?;
                let y = match param(-3) {
                    Some(ciborium::Value::Bytes(b)) => b.clone(),
                    Some(ciborium::Value::Bool(_)) => {
                        return Err(Error::malformed(
                            format!("{field}.y(-3)"),
                            "compressed points are not accepted",
                        ));
                    }
                    Some(_) => {
                        return Err(Error::WrongType {
                            field: format!("{field}.y(-3)"),
                            expected: "a byte string",
                        });
                    }
                    None => {
                        return Err(Error::Missing {
                            field: format!("{field}.y(-3)"),
                        });
                    }
                };
                let n = curve.coordinate_len();
                if x.len() != n || y.len() != n {
                    return Err(Error::malformed(
                        field,
                        format!("coordinates must be {n} bytes for this curve"),
                    ));
                }
                let mut point = Vec::with_capacity(1 + 2 * n);
                point.push(4);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                let expected = match alg {
                    CoseAlgorithm::Es256 => Curve::P256,
                    CoseAlgorithm::Es384 => Curve::P384,
                    CoseAlgorithm::Es512 => Curve::P521,
                    _ => {
                        return Err(Error::Algorithm {
                            field: format!("{field}.alg(3)"),
                            alg: alg_id,
                            reason: "does not fit an EC2 key",
                        });
                    }
                };
                if curve != expected {
                    return Err(Error::Algorithm {
                        field: format!("{field}.alg(3)"),
                        alg: alg_id,
                        reason: "does not match the key's curve",
                    });
                }
                VerifyingKey::Ec { curve, point }
            }
            iana::KeyType::RSA => {
                if !matches!(
                    alg,
                    CoseAlgorithm::Rs256
                        | CoseAlgorithm::Rs384
                        | CoseAlgorithm::Rs512
                        | CoseAlgorithm::Ps256
                        | CoseAlgorithm::Ps384
                        | CoseAlgorithm::Ps512
                        | CoseAlgorithm::Rs1
                ) {
                    return Err(Error::Algorithm {
                        field: format!("{field}.alg(3)"),
                        alg: alg_id,
                        reason: "does not fit an RSA key",
                    });
                }
                let n = strip_zeros(&bytes_param(-1, "n(-1)")?);
                let e = strip_zeros(&bytes_param(-2, "e(-2)")?);
                if n.len() * 8 > MAX_RSA_BITS || n.len() < 256 {
                    return Err(Error::malformed(
                        format!("{field}.n(-1)"),
                        "RSA modulus must be 2048 to 8192 bits",
                    ));
                }
                if e.is_empty() || e.len() > 4 {
                    return Err(Error::malformed(
                        format!("{field}.e(-2)"),
                        "bad RSA exponent",
                    ));
                }
                VerifyingKey::Rsa { n, e }
            }
            iana::KeyType::OKP => {
                let crv = int_param(-1, "crv(-1)")?;
                if crv != 6 {
                    return Err(Error::malformed(
                        format!("{field}.crv(-1)"),
                        format!("OKP curve {crv} is not supported (only Ed25519)"),
                    ));
                }
                if alg != CoseAlgorithm::EdDsa {
                    return Err(Error::Algorithm {
                        field: format!("{field}.alg(3)"),
                        alg: alg_id,
                        reason: "does not fit an Ed25519 key",
                    });
                }
                let x = bytes_param(-2, "x(-2)")?;
                let x: [u8; 32] = x.as_slice().try_into().map_err(|_| {
                    Error::malformed(format!("{field}.x(-2)"), "Ed25519 keys are 32 bytes")
                })?;
                VerifyingKey::Ed25519 { x }
            }
            _ => {
                return Err(Error::malformed(
                    format!("{field}.kty(1)"),
                    "key type is not EC2, RSA or OKP",
                ));
            }
        };
        vk.validate(field)?;
        Ok(CredentialPublicKey {
            alg,
            key: vk,
            cose: bytes.to_vec(),
        })
    }

    /// Verifies a WebAuthn signature with the credential's own algorithm.
    pub fn verify(&self, message: &[u8], signature: &[u8], field: &str) -> Result<(), Error> {
        self.key.verify(self.alg, message, signature, field)
    }
}

impl VerifyingKey {
    /// Parses a DER SubjectPublicKeyInfo (certificates).
    pub fn from_spki(
        spki: &spki::SubjectPublicKeyInfoRef<'_>,
        field: &str,
    ) -> Result<VerifyingKey, Error> {
        const EC: der::asn1::ObjectIdentifier =
            der::asn1::ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
        const RSA: der::asn1::ObjectIdentifier =
            der::asn1::ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
        const ED25519: der::asn1::ObjectIdentifier =
            der::asn1::ObjectIdentifier::new_unwrap("1.3.101.112");
        const P256: der::asn1::ObjectIdentifier =
            der::asn1::ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
        const P384: der::asn1::ObjectIdentifier =
            der::asn1::ObjectIdentifier::new_unwrap("1.3.132.0.34");
        const P521: der::asn1::ObjectIdentifier =
            der::asn1::ObjectIdentifier::new_unwrap("1.3.132.0.35");
        let bits = spki
            .subject_public_key
            .as_bytes()
            .ok_or_else(|| Error::malformed(field, "public key bit string is not octet-aligned"))?;
        let oid = spki.algorithm.oid;
        let key = if oid == EC {
            let curve_oid = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.decode_as::<der::asn1::ObjectIdentifier>().ok())
                .ok_or_else(|| Error::malformed(field, "EC key without a named curve"))?;
            let curve = if curve_oid == P256 {
                Curve::P256
            } else if curve_oid == P384 {
                Curve::P384
            } else if curve_oid == P521 {
                Curve::P521
            } else {
                return Err(Error::malformed(
                    field,
                    format!("EC curve {curve_oid} is not supported"),
                ));
            };
            VerifyingKey::Ec {
                curve,
                point: bits.to_vec(),
            }
        } else if oid == RSA {
            #[derive(der::Sequence)]
            struct RsaPublicKey<'a> {
                n: der::asn1::UintRef<'a>,
                e: der::asn1::UintRef<'a>,
            }
            let k = RsaPublicKey::from_der(bits)
                .map_err(|e| Error::malformed(field, format!("RSA public key: {e}")))?;
            VerifyingKey::Rsa {
                n: strip_zeros(k.n.as_bytes()),
                e: strip_zeros(k.e.as_bytes()),
            }
        } else if oid == ED25519 {
            let x: [u8; 32] = bits
                .try_into()
                .map_err(|_| Error::malformed(field, "Ed25519 keys are 32 bytes"))?;
            VerifyingKey::Ed25519 { x }
        } else {
            return Err(Error::malformed(
                field,
                format!("public key algorithm {oid} is not supported"),
            ));
        };
        key.validate(field)?;
        Ok(key)
    }

    /// Parses DER SubjectPublicKeyInfo bytes.
    pub fn from_spki_der(der_bytes: &[u8], field: &str) -> Result<VerifyingKey, Error> {
        let spki = spki::SubjectPublicKeyInfoRef::from_der(der_bytes)
            .map_err(|e| Error::malformed(field, format!("SubjectPublicKeyInfo: {e}")))?;
        Self::from_spki(&spki, field)
    }

    /// Rejects points off their curve and absurd RSA sizes up front, so a
    /// bad key is reported as such rather than as a bad signature.
    fn validate(&self, field: &str) -> Result<(), Error> {
        match self {
            VerifyingKey::Ec { curve, point } => {
                let n = curve.coordinate_len();
                if point.len() != 1 + 2 * n || point[0] != 4 {
                    return Err(Error::malformed(field, "EC point must be uncompressed"));
                }
                let ok = match curve {
                    Curve::P256 => p256::PublicKey::from_sec1_bytes(point).is_ok(),
                    // aws-lc-rs checks P-384/P-521 points when verifying; an
                    // invalid one fails there with BadSignature.
                    Curve::P384 | Curve::P521 => true,
                };
                if !ok {
                    return Err(Error::malformed(field, "EC point is not on the curve"));
                }
                Ok(())
            }
            VerifyingKey::Rsa { n, e } => {
                if n.len() * 8 > MAX_RSA_BITS {
                    return Err(Error::malformed(field, "RSA modulus longer than 8192 bits"));
                }
                if e.is_empty() || e.len() > 4 || n.is_empty() {
                    return Err(Error::malformed(field, "bad RSA key"));
                }
                Ok(())
            }
            VerifyingKey::Ed25519 { .. } => Ok(()),
        }
    }

    /// The SPKI DER of this key (for comparing keys across encodings).
    pub fn to_spki_der(&self) -> Option<Vec<u8>> {
        match self {
            VerifyingKey::Ec {
                curve: Curve::P256,
                point,
            } => {
                use p256::pkcs8::EncodePublicKey;
                p256::PublicKey::from_sec1_bytes(point)
                    .ok()?
                    .to_public_key_der()
                    .ok()
                    .map(|d| d.into_vec())
            }
            _ => None,
        }
    }

    /// Verifies `signature` over `message` with `alg`. ECDSA signatures are
    /// DER (as WebAuthn and X.509 carry them); RSA is PKCS#1 v1.5 or PSS by
    /// `alg`; Ed25519 is the 64-byte signature.
    pub fn verify(
        &self,
        alg: CoseAlgorithm,
        message: &[u8],
        signature: &[u8],
        field: &str,
    ) -> Result<(), Error> {
        use CoseAlgorithm as A;
        if signature.len() > super::limits::SIGNATURE {
            return Err(Error::TooLarge {
                field: field.to_string(),
                limit: super::limits::SIGNATURE,
            });
        }
        let mismatch = || Error::Algorithm {
            field: field.to_string(),
            alg: alg.id(),
            reason: "does not fit the key",
        };
        let ok = match self {
            VerifyingKey::Ec { curve, point } => {
                let algorithm: &'static sig::EcdsaVerificationAlgorithm = match (curve, alg) {
                    (Curve::P256, A::Es256) => &sig::ECDSA_P256_SHA256_ASN1,
                    (Curve::P256, A::Es384) => &sig::ECDSA_P256_SHA384_ASN1,
                    (Curve::P256, A::Es512) => &sig::ECDSA_P256_SHA512_ASN1,
                    // Seen in the wild: a P-384 attestation key with alg ES256
                    // (hash as alg says, curve as the key says).
                    (Curve::P384, A::Es256) => &sig::ECDSA_P384_SHA256_ASN1,
                    (Curve::P384, A::Es384) => &sig::ECDSA_P384_SHA384_ASN1,
                    (Curve::P384, A::Es512) => &sig::ECDSA_P384_SHA512_ASN1,
                    (Curve::P521, A::Es256) => &sig::ECDSA_P521_SHA256_ASN1,
                    (Curve::P521, A::Es384) => &sig::ECDSA_P521_SHA384_ASN1,
                    (Curve::P521, A::Es512) => &sig::ECDSA_P521_SHA512_ASN1,
                    _ => return Err(mismatch()),
                };
                UnparsedPublicKey::new(algorithm, point)
                    .verify(message, signature)
                    .is_ok()
            }
            VerifyingKey::Rsa { n, e } => {
                let params: &'static sig::RsaParameters = match alg {
                    A::Rs256 => &sig::RSA_PKCS1_2048_8192_SHA256,
                    A::Rs384 => &sig::RSA_PKCS1_2048_8192_SHA384,
                    A::Rs512 => &sig::RSA_PKCS1_2048_8192_SHA512,
                    A::Rs1 => &sig::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
                    A::Ps256 => &sig::RSA_PSS_2048_8192_SHA256,
                    A::Ps384 => &sig::RSA_PSS_2048_8192_SHA384,
                    A::Ps512 => &sig::RSA_PSS_2048_8192_SHA512,
                    _ => return Err(mismatch()),
                };
                RsaPublicKeyComponents {
                    n: n.as_slice(),
                    e: e.as_slice(),
                }
                .verify(params, message, signature)
                .is_ok()
            }
            VerifyingKey::Ed25519 { x } => {
                if alg != A::EdDsa {
                    return Err(mismatch());
                }
                UnparsedPublicKey::new(&sig::ED25519, x)
                    .verify(message, signature)
                    .is_ok()
            }
        };
        if ok {
            Ok(())
        } else {
            Err(Error::bad_signature(field))
        }
    }
}

/// Encodes an EC P-256 credential key as COSE (for the testkit and tests).
pub fn cose_p256(point: &[u8; 65]) -> Vec<u8> {
    let key = coset::CoseKeyBuilder::new_ec2_pub_key(
        iana::EllipticCurve::P_256,
        point[1..33].to_vec(),
        point[33..].to_vec(),
    )
    .algorithm(iana::Algorithm::ES256)
    .build();
    key.to_vec().unwrap_or_default()
}

/// DER-encodes any `der` value, mapping failure to a malformed `field`.
pub fn to_der<T: Encode>(value: &T, field: &str) -> Result<Vec<u8>, Error> {
    value.to_der().map_err(|e| Error::malformed(field, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn es256_cose_key_round_trip_and_verify() {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 =
            sig::EcdsaKeyPair::generate_pkcs8(&sig::ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let kp =
            sig::EcdsaKeyPair::from_pkcs8(&sig::ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref())
                .unwrap();
        use sig::KeyPair;
        let point: [u8; 65] = kp.public_key().as_ref().try_into().unwrap();
        let cose = cose_p256(&point);
        let key = CredentialPublicKey::from_cose(&cose, "k").unwrap();
        assert_eq!(key.alg, CoseAlgorithm::Es256);
        let s = kp.sign(&rng, b"msg").unwrap();
        key.verify(b"msg", s.as_ref(), "sig").unwrap();
        assert_eq!(
            key.verify(b"other", s.as_ref(), "sig"),
            Err(Error::bad_signature("sig"))
        );
        // The wrong algorithm for the key is named as such, not as a bad signature.
        assert!(matches!(
            key.key
                .verify(CoseAlgorithm::Rs256, b"msg", s.as_ref(), "sig"),
            Err(Error::Algorithm { .. })
        ));
    }

    #[test]
    fn malformed_cose_keys_name_the_parameter() {
        for (bytes, needle) in [
            (vec![0xa0], "kty"),
            (vec![0xff], "not a COSE_Key"),
            // kty EC2, alg ES256, crv 1, no x / y
            (vec![0xa3, 0x01, 0x02, 0x03, 0x26, 0x20, 0x01], "x(-2)"),
        ] {
            let err = CredentialPublicKey::from_cose(&bytes, "credentialPublicKey").unwrap_err();
            assert!(err.to_string().contains(needle), "{err}");
        }
    }
}
