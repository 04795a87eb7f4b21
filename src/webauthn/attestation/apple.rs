//! `apple` (WebAuthn L3 §8.8): Apple's anonymous attestation. There is no
//! signature in the statement; the Apple anonymisation CA certifies the
//! credential key itself, and binds the ceremony through a nonce extension.
//!
//! # Attestation type
//!
//! [`AttestationType::AnonCa`], the only type §8.8 defines. The chain must
//! not carry the root (`root_in_path_allowed` is false): Apple sends the
//! credential certificate and its intermediate only.
//!
//! # Strictness
//!
//! - `attStmt` holds `x5c` and may hold `alg`: §8.8's syntax has x5c only,
//!   but every Apple device on record also sends `alg` (-7), so refusing it
//!   would refuse Apple. It must then at least be an integer. Any other member
//!   is refused.
//! - The nonce extension (1.2.840.113635.100.8.2) must decode as exactly
//!   `SEQUENCE { [1] EXPLICIT OCTET STRING }` holding 32 bytes, equal to
//!   SHA-256(authenticatorData || clientDataHash).
//! - The certificate's key must be the credential public key, compared as
//!   decoded keys (curve and point, or modulus and exponent), not as bytes of
//!   two different encodings.

use der::Decode;
use der::asn1::OctetString;

use super::{AttestationType, Statement, Verified, alg_member, check_members, field};
use crate::webauthn::certpath::{self, oid};
use crate::webauthn::{Error, constant_time_eq};

/// The value of Apple's nonce extension.
#[derive(der::Sequence)]
struct AppleNonce {
    #[asn1(context_specific = "1", tag_mode = "EXPLICIT")]
    nonce: OctetString,
}

pub fn verify(stmt: &Statement<'_>) -> Result<Verified, Error> {
    check_members(stmt, &["x5c", "alg"])?;
    if stmt.member("alg").is_some() {
        alg_member(stmt)?;
    }
    let Some(x5c) = stmt.member("x5c") else {
        return Err(Error::Missing {
            field: field("x5c"),
        });
    };
    let chain = certpath::parse_x5c(x5c, &field("x5c"))?;
    let cred_cert = &chain[0];

    let ext_field = format!(
        "{}.extensions.nonce(1.2.840.113635.100.8.2)",
        cred_cert.field
    );
    let Some((value, _critical)) = cred_cert.extension(&oid::APPLE_NONCE) else {
        return Err(Error::Missing { field: ext_field });
    };
    let claimed = AppleNonce::from_der(value).map_err(|e| {
        Error::malformed(
            &ext_field,
            format!("not SEQUENCE {{ [1] OCTET STRING }}: {e}"),
        )
    })?;
    let expected = crate::keys::sha256(&stmt.signed_data());
    if !constant_time_eq(claimed.nonce.as_bytes(), &expected) {
        return Err(Error::mismatch(
            ext_field,
            "is not SHA-256(authenticatorData || clientDataHash) of this ceremony",
        ));
    }

    let Some(attested) = &stmt.auth_data.attested else {
        return Err(Error::Missing {
            field: "response.attestationObject.authData.attestedCredentialData".into(),
        });
    };
    if cred_cert.public_key()? != attested.public_key.key {
        return Err(Error::mismatch(
            format!("{}.subjectPublicKeyInfo", cred_cert.field),
            "is not the credential public key in authenticator data",
        ));
    }

    Ok(Verified {
        attestation_type: AttestationType::AnonCa,
        trust_path: chain,
        root_in_path_allowed: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webauthn::attestation::{AttestationPolicy, map_get};
    use crate::webauthn::certpath::tests::{
        CertSpec, NOW, TestKey, at, attestation_object, client_data_hash, extension, register,
        registration_vectors, roots, vector, verify_time,
    };
    use crate::webauthn::registration::AttestationObject;
    use ciborium::Value;
    use der::Encode as _;

    const W3C: &str = "w3c/apple-es256.registration.json";

    struct Fixture {
        object: AttestationObject,
        hash: [u8; 32],
        policy: AttestationPolicy,
    }

    fn fixture(path: &str) -> Fixture {
        let v = vector(path);
        Fixture {
            object: AttestationObject::parse(&attestation_object(&v)).unwrap(),
            hash: client_data_hash(&v),
            policy: AttestationPolicy::default(),
        }
    }

    impl Fixture {
        fn run(&self, att_stmt: &Value) -> Result<Verified, Error> {
            verify(&Statement {
                fmt: "apple",
                att_stmt,
                auth_data: &self.object.auth_data,
                client_data_hash: &self.hash,
                policy: &self.policy,
                now: at(NOW),
            })
        }

        fn nonce(&self) -> [u8; 32] {
            let mut data = self.object.auth_data.raw.clone();
            data.extend_from_slice(&self.hash);
            crate::keys::sha256(&data)
        }
    }

    fn x5c_stmt(certs: Vec<Vec<u8>>) -> Value {
        Value::Map(vec![(
            Value::Text("x5c".into()),
            Value::Array(certs.into_iter().map(Value::Bytes).collect()),
        )])
    }

    fn nonce_ext(nonce: &[u8]) -> x509_cert::ext::Extension {
        let value = AppleNonce {
            nonce: OctetString::new(nonce.to_vec()).unwrap(),
        }
        .to_der()
        .unwrap();
        extension(oid::APPLE_NONCE, false, &value)
    }

    fn cred_cert(spki: &[u8], extra: Vec<x509_cert::ext::Extension>) -> Vec<u8> {
        CertSpec {
            extra,
            ..CertSpec::leaf(
                "CN=credential,OU=AAA Certification,O=Apple Inc.",
                "CN=Apple WebAuthn CA 1",
            )
        }
        .issue_spki(spki, &TestKey::p384())
    }

    /// The credential's SubjectPublicKeyInfo, from the vector's COSE key.
    fn credential_spki(f: &Fixture) -> Vec<u8> {
        let key = &f.object.auth_data.attested.as_ref().unwrap().public_key.key;
        key.to_spki_der().unwrap()
    }

    #[test]
    fn w3c_apple_registers_through_the_whole_ceremony() {
        let v = vector(W3C);
        let r = register(
            &v,
            None,
            &AttestationPolicy::default(),
            &roots(&v),
            verify_time(&v),
        )
        .unwrap();
        assert_eq!(r.fmt, "apple");
        assert_eq!(r.attestation_type, AttestationType::AnonCa);
        assert!(r.anchored);
    }

    #[test]
    fn real_apple_devices_register() {
        let mut accepted = 0;
        for path in registration_vectors() {
            let v = vector(&path);
            if v["fmt"] != "apple" || path.starts_with("w3c/") {
                continue;
            }
            let r = register(
                &v,
                None,
                &AttestationPolicy::default(),
                &roots(&v),
                verify_time(&v),
            )
            .unwrap_or_else(|e| panic!("{path}: {e}"));
            assert_eq!(r.attestation_type, AttestationType::AnonCa, "{path}");
            assert!(r.anchored, "{path}");
            assert_eq!(r.trust_path.len(), 2, "{path}");
            accepted += 1;
        }
        assert!(accepted >= 4, "only {accepted} apple vectors");
    }

    #[test]
    fn the_nonce_binds_the_ceremony() {
        // The vector's own statement over other client data.
        let mut f = fixture(W3C);
        assert!(f.run(&f.object.att_stmt.clone()).is_ok());
        f.hash[0] ^= 1;
        let err = f.run(&f.object.att_stmt.clone()).unwrap_err();
        assert!(
            matches!(&err, Error::Mismatch { field, .. }
                if field == "response.attestationObject.attStmt.x5c[0].extensions.nonce(1.2.840.113635.100.8.2)"),
            "{err:?}"
        );

        // A certificate for the right key with a tampered nonce.
        let f = fixture(W3C);
        let spki = credential_spki(&f);
        let good = cred_cert(&spki, vec![nonce_ext(&f.nonce())]);
        assert_eq!(
            f.run(&x5c_stmt(vec![good])).unwrap().attestation_type,
            AttestationType::AnonCa
        );
        let mut tampered = f.nonce();
        tampered[31] ^= 0x80;
        let err = f
            .run(&x5c_stmt(vec![cred_cert(
                &spki,
                vec![nonce_ext(&tampered)],
            )]))
            .unwrap_err();
        assert!(matches!(err, Error::Mismatch { .. }), "{err:?}");
        let err = f
            .run(&x5c_stmt(vec![cred_cert(
                &spki,
                vec![nonce_ext(&f.nonce()[..31])],
            )]))
            .unwrap_err();
        assert!(matches!(err, Error::Mismatch { .. }), "{err:?}");

        // Missing, or not the expected structure.
        let err = f
            .run(&x5c_stmt(vec![cred_cert(&spki, vec![])]))
            .unwrap_err();
        assert!(matches!(err, Error::Missing { .. }), "{err:?}");
        let bare = OctetString::new(f.nonce().to_vec())
            .unwrap()
            .to_der()
            .unwrap();
        let err = f
            .run(&x5c_stmt(vec![cred_cert(
                &spki,
                vec![extension(oid::APPLE_NONCE, false, &bare)],
            )]))
            .unwrap_err();
        assert!(matches!(err, Error::Malformed { .. }), "{err:?}");
    }

    #[test]
    fn the_certificate_must_certify_the_credential_key() {
        let f = fixture(W3C);
        let other = TestKey::p256();
        let err = f
            .run(&x5c_stmt(vec![cred_cert(
                &other.spki_der(),
                vec![nonce_ext(&f.nonce())],
            )]))
            .unwrap_err();
        assert_eq!(
            err.field(),
            "response.attestationObject.attStmt.x5c[0].subjectPublicKeyInfo"
        );
        assert!(matches!(err, Error::Mismatch { .. }), "{err:?}");
    }

    #[test]
    fn statement_shape() {
        let f = fixture(W3C);
        let Some(x5c) = map_get(&f.object.att_stmt, "x5c") else {
            panic!()
        };
        let with = |extra: Vec<(Value, Value)>| {
            let mut entries = vec![(Value::Text("x5c".into()), x5c.clone())];
            entries.extend(extra);
            Value::Map(entries)
        };
        // alg as Apple devices send it.
        assert!(
            f.run(&with(vec![(
                Value::Text("alg".into()),
                Value::Integer((-7).into())
            )]))
            .is_ok()
        );
        let err = f
            .run(&with(vec![(
                Value::Text("alg".into()),
                Value::Text("ES256".into()),
            )]))
            .unwrap_err();
        assert!(matches!(err, Error::WrongType { .. }), "{err:?}");
        let err = f
            .run(&with(vec![(
                Value::Text("sig".into()),
                Value::Bytes(vec![1]),
            )]))
            .unwrap_err();
        assert_eq!(err.field(), "response.attestationObject.attStmt.sig");
        assert_eq!(
            f.run(&Value::Map(vec![])).unwrap_err(),
            Error::Missing {
                field: "response.attestationObject.attStmt.x5c".into()
            }
        );
        assert_eq!(
            f.run(&x5c_stmt(vec![])).unwrap_err(),
            Error::Empty {
                field: "response.attestationObject.attStmt.x5c".into()
            }
        );
    }
}
