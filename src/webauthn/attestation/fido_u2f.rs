//! `fido-u2f` (WebAuthn L3 §8.6): a U2F authenticator's registration
//! signature, rebuilt from authenticator data and checked with the single
//! attestation certificate.
//!
//! # Attestation type
//!
//! Reported as [`AttestationType::Basic`]. §8.6 allows Basic or AttCA and
//! leaves the choice to metadata; U2F attestation certificates are batch
//! certificates (one key shared by a production lot, issued straight by the
//! vendor root), which is what Basic means, and nothing in the statement
//! could say otherwise.
//!
//! # Strictness
//!
//! - `attStmt` is exactly `{x5c, sig}`; x5c holds exactly one certificate
//!   with an EC P-256 key (the chain is then judged by the caller).
//! - The AAGUID must be all zeros. §8.6 does not say so, but a U2F device
//!   has no AAGUID: CTAP2 clients report zeros for it, and the FIDO server
//!   conformance tests require a non-zero AAGUID to be refused. A statement
//!   claiming a model identity that U2F cannot convey is refused before its
//!   signature is checked. (The W3C test vector for this format has a random
//!   AAGUID and is refused for that reason alone.)
//! - The credential key must be ES256 on P-256: U2F has no other.

use super::{AttestationType, Statement, Verified, bytes_member, check_members, field};
use crate::webauthn::certpath;
use crate::webauthn::cose_key::{Curve, VerifyingKey};
use crate::webauthn::{CoseAlgorithm, Error};

const ATTESTED: &str = "response.attestationObject.authData.attestedCredentialData";

pub fn verify(stmt: &Statement<'_>) -> Result<Verified, Error> {
    let Some(attested) = &stmt.auth_data.attested else {
        return Err(Error::Missing {
            field: ATTESTED.into(),
        });
    };
    if attested.aaguid != [0u8; 16] {
        return Err(Error::mismatch(
            format!("{ATTESTED}.aaguid"),
            "must be all zeros for fido-u2f: a U2F authenticator has no AAGUID",
        ));
    }
    verify_signature(stmt)
}

/// Everything §8.6 itself asks, after the AAGUID rule above.
fn verify_signature(stmt: &Statement<'_>) -> Result<Verified, Error> {
    check_members(stmt, &["x5c", "sig"])?;
    let sig = bytes_member(stmt, "sig")?;
    let Some(x5c) = stmt.member("x5c") else {
        return Err(Error::Missing {
            field: field("x5c"),
        });
    };
    let chain = certpath::parse_x5c(x5c, &field("x5c"))?;
    if chain.len() != 1 {
        return Err(Error::malformed(
            field("x5c"),
            format!(
                "must hold exactly one certificate for fido-u2f, not {}",
                chain.len()
            ),
        ));
    }
    let cert = &chain[0];
    let cert_key = cert.public_key()?;
    if !matches!(
        cert_key,
        VerifyingKey::Ec {
            curve: Curve::P256,
            ..
        }
    ) {
        return Err(Error::malformed(
            format!("{}.subjectPublicKeyInfo", cert.field),
            "must be an EC P-256 key for fido-u2f",
        ));
    }

    let Some(attested) = &stmt.auth_data.attested else {
        return Err(Error::Missing {
            field: ATTESTED.into(),
        });
    };
    let key_field = format!("{ATTESTED}.credentialPublicKey");
    let point = match (&attested.public_key.alg, &attested.public_key.key) {
        (
            CoseAlgorithm::Es256,
            VerifyingKey::Ec {
                curve: Curve::P256,
                point,
            },
        ) => point,
        _ => {
            return Err(Error::Algorithm {
                field: format!("{key_field}.alg(3)"),
                alg: attested.public_key.alg.id(),
                reason: "is not ES256 on P-256, the only key U2F has",
            });
        }
    };
    // from_cose built this as 0x04 || x || y with 32-byte coordinates, which
    // is exactly the U2F "user public key".
    if point.len() != 65 || point.first() != Some(&0x04) {
        return Err(Error::malformed(
            key_field,
            "not an uncompressed P-256 point",
        ));
    }

    let credential_id = &attested.credential_id;
    let mut data = Vec::with_capacity(1 + 32 + 32 + credential_id.len() + point.len());
    data.push(0x00);
    data.extend_from_slice(&stmt.auth_data.rp_id_hash);
    data.extend_from_slice(stmt.client_data_hash);
    data.extend_from_slice(credential_id);
    data.extend_from_slice(point);
    cert_key.verify(CoseAlgorithm::Es256, &data, sig, &field("sig"))?;

    Ok(Verified {
        attestation_type: AttestationType::Basic,
        trust_path: chain,
        root_in_path_allowed: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webauthn::attestation::{AttestationPolicy, map_get};
    use crate::webauthn::certpath::tests::{
        CertSpec, NOW, TestKey, at, attestation_object, client_data_hash, register,
        registration_vectors, roots, vector, verify_time,
    };
    use crate::webauthn::registration::AttestationObject;
    use ciborium::Value;

    const W3C: &str = "w3c/fido-u2f-es256.registration.json";
    const YUBIKEY: &str = "devices/yubico-yubikey-5c-nfc-u2f.registration.json";

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
        fn statement<'a>(&'a self, att_stmt: &'a Value) -> Statement<'a> {
            Statement {
                fmt: "fido-u2f",
                att_stmt,
                auth_data: &self.object.auth_data,
                client_data_hash: &self.hash,
                policy: &self.policy,
                now: at(NOW),
            }
        }

        fn run(&self, att_stmt: &Value) -> Result<Verified, Error> {
            verify(&self.statement(att_stmt))
        }
    }

    fn with(map: &Value, name: &str, value: Value) -> Value {
        let Value::Map(entries) = map else {
            panic!("not a map")
        };
        let mut entries: Vec<(Value, Value)> = entries
            .iter()
            .filter(|(k, _)| !matches!(k, Value::Text(t) if t == name))
            .cloned()
            .collect();
        entries.push((Value::Text(name.into()), value));
        Value::Map(entries)
    }

    #[test]
    fn real_u2f_devices_register() {
        let mut accepted = 0;
        for path in registration_vectors() {
            let v = vector(&path);
            if v["fmt"] != "fido-u2f" || path.starts_with("w3c/") {
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
            assert_eq!(r.attestation_type, AttestationType::Basic, "{path}");
            assert!(r.anchored, "{path}");
            assert_eq!(r.trust_path.len(), 1, "{path}");
            accepted += 1;
        }
        assert!(accepted >= 4, "only {accepted} fido-u2f vectors");
    }

    /// The W3C vector's statement is sound, but it claims an AAGUID a U2F
    /// device cannot have, which the conformance rule refuses.
    #[test]
    fn the_w3c_vector_verifies_but_for_its_aaguid() {
        let v = vector(W3C);
        let f = fixture(W3C);
        assert_ne!(
            f.object.auth_data.attested.as_ref().unwrap().aaguid,
            [0u8; 16]
        );
        let r = verify_signature(&f.statement(&f.object.att_stmt)).unwrap();
        assert_eq!(r.attestation_type, AttestationType::Basic);
        let path = certpath::validate(
            &r.trust_path,
            &roots(&v),
            verify_time(&v),
            &Default::default(),
        )
        .unwrap();
        assert!(path.anchored);

        let err = register(
            &v,
            None,
            &AttestationPolicy::default(),
            &roots(&v),
            verify_time(&v),
        )
        .unwrap_err();
        assert_eq!(
            err,
            Error::mismatch(
                "response.attestationObject.authData.attestedCredentialData.aaguid",
                "must be all zeros for fido-u2f: a U2F authenticator has no AAGUID"
            )
        );
    }

    #[test]
    fn a_non_zero_aaguid_is_refused() {
        let v = vector(YUBIKEY);
        let mut ao = attestation_object(&v);
        let f = fixture(YUBIKEY);
        // The AAGUID sits right after rpIdHash, flags and signCount.
        let raw = &f.object.auth_data.raw;
        let at_ao = ao
            .windows(raw.len())
            .position(|w| w == raw.as_slice())
            .unwrap();
        ao[at_ao + 37 + 15] = 1;
        let err = register(
            &v,
            Some(&ao),
            &AttestationPolicy::default(),
            &roots(&v),
            verify_time(&v),
        )
        .unwrap_err();
        assert_eq!(
            err.field(),
            "response.attestationObject.authData.attestedCredentialData.aaguid"
        );
    }

    #[test]
    fn signature_and_statement_shape() {
        let f = fixture(YUBIKEY);
        let s = &f.object.att_stmt;
        assert!(f.run(s).is_ok());

        let Some(Value::Bytes(sig)) = map_get(s, "sig") else {
            panic!()
        };
        let mut tampered = sig.clone();
        tampered[8] ^= 1;
        assert!(matches!(
            f.run(&with(s, "sig", Value::Bytes(tampered))),
            Err(Error::BadSignature { .. })
        ));
        let mut other = fixture(YUBIKEY);
        other.hash[31] ^= 1;
        assert_eq!(
            other.run(s).unwrap_err(),
            Error::bad_signature("response.attestationObject.attStmt.sig")
        );

        let Some(Value::Array(x5c)) = map_get(s, "x5c") else {
            panic!()
        };
        let two = Value::Array(vec![x5c[0].clone(), x5c[0].clone()]);
        assert!(
            f.run(&with(s, "x5c", two))
                .unwrap_err()
                .to_string()
                .contains("exactly one")
        );
        assert_eq!(
            f.run(&with(s, "x5c", Value::Array(vec![]))).unwrap_err(),
            Error::Empty {
                field: "response.attestationObject.attStmt.x5c".into()
            }
        );
        let Value::Map(entries) = s else { panic!() };
        let no_x5c = Value::Map(
            entries
                .iter()
                .filter(|(k, _)| k != &Value::Text("x5c".into()))
                .cloned()
                .collect(),
        );
        assert_eq!(
            f.run(&no_x5c).unwrap_err(),
            Error::Missing {
                field: "response.attestationObject.attStmt.x5c".into()
            }
        );
        let err = f
            .run(&with(s, "alg", Value::Integer((-7).into())))
            .unwrap_err();
        assert_eq!(err.field(), "response.attestationObject.attStmt.alg");
        assert_eq!(
            f.run(&with(s, "sig", Value::Bytes(vec![]))).unwrap_err(),
            Error::Empty {
                field: "response.attestationObject.attStmt.sig".into()
            }
        );
    }

    #[test]
    fn the_credential_key_must_be_es256() {
        // An RSA credential with the all-zero AAGUID, under a U2F statement.
        let rsa = fixture("devices/webauthn-rs-windows-hello-none-rs256.registration.json");
        let u2f = fixture(YUBIKEY);
        let err = rsa.run(&u2f.object.att_stmt).unwrap_err();
        assert!(
            matches!(&err, Error::Algorithm { field, alg: -257, .. }
                if field == "response.attestationObject.authData.attestedCredentialData.credentialPublicKey.alg(3)"),
            "{err:?}"
        );
    }

    #[test]
    fn the_certificate_key_must_be_p256() {
        let f = fixture(YUBIKEY);
        let key = TestKey::p384();
        let cert = CertSpec::leaf("CN=U2F", "CN=U2F CA").issue(&key, &TestKey::p256());
        let err = f
            .run(&with(
                &f.object.att_stmt,
                "x5c",
                Value::Array(vec![Value::Bytes(cert)]),
            ))
            .unwrap_err();
        assert_eq!(
            err.field(),
            "response.attestationObject.attStmt.x5c[0].subjectPublicKeyInfo"
        );

        // A P-256 certificate key that did not make the signature.
        let key = TestKey::p256();
        let cert = CertSpec::leaf("CN=U2F", "CN=U2F CA").issue(&key, &TestKey::p256());
        assert_eq!(key.point().len(), 65);
        assert!(matches!(
            f.run(&with(
                &f.object.att_stmt,
                "x5c",
                Value::Array(vec![Value::Bytes(cert)])
            )),
            Err(Error::BadSignature { .. })
        ));
    }
}
