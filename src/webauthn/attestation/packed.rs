//! `packed` (WebAuthn L3 §8.2): the format of most FIDO2 security keys,
//! either with an attestation certificate chain (`x5c`) or signed by the
//! credential key itself (self attestation).
//!
//! # Attestation type
//!
//! A statement with `x5c` is reported as [`AttestationType::Basic`]. §8.2
//! tells Basic from AttCA apart only through "externally provided knowledge"
//! (metadata): nothing in the statement says whether the attestation key is
//! shared by a batch of devices (Basic) or issued per device by an
//! attestation CA. The engine does not guess; a caller holding metadata may
//! reclassify. Without `x5c` it is [`AttestationType::SelfAttestation`].
//!
//! # Strictness
//!
//! - `attStmt` must match the CDDL: `alg`, `sig` and optionally `x5c`, each
//!   once. `ecdaaKeyId` is refused by name (ECDAA was removed in Level 3),
//!   any other member as not part of the format.
//! - `alg` must fit the attestation key: ES* for EC, RS*/PS* for RSA, EdDSA
//!   for Ed25519. The curve is not tied to the hash, because COSE's ES256 is
//!   ECDSA with SHA-256 on whatever curve the key has (RFC 9053 §2.1).
//! - The attestation certificate meets §8.2.1: version 3; a subject with
//!   exactly one C (two capital letters, ISO 3166), O, OU
//!   ("Authenticator Attestation") and CN, other attributes allowed; a
//!   basicConstraints extension with cA false; and the
//!   `id-fido-gen-ce-aaguid` extension, when present, non-critical and equal
//!   to the AAGUID in authenticator data. Attribute values are checked, not
//!   their ASN.1 string types, which vendors do not use consistently.
//! - The chain itself (order, validity, anchoring) is judged once for every
//!   format by the caller, with the root refused inside x5c by default.

use ciborium::Value;
use der::Decode;
use der::asn1::{ObjectIdentifier, OctetString};
use x509_cert::ext::pkix::name::DirectoryString;

use super::{AttestationType, Statement, Verified, alg_member, bytes_member, check_members, field};
use crate::webauthn::certpath::{self, Cert, oid};
use crate::webauthn::cose_key::VerifyingKey;
use crate::webauthn::{CoseAlgorithm, Error};

const ATT_STMT: &str = "response.attestationObject.attStmt";
const AAGUID_FIELD: &str = "response.attestationObject.authData.attestedCredentialData.aaguid";

pub fn verify(stmt: &Statement<'_>) -> Result<Verified, Error> {
    if matches!(stmt.att_stmt, Value::Map(m) if m.is_empty()) {
        return Err(Error::Empty {
            field: ATT_STMT.into(),
        });
    }
    check_members(stmt, &["alg", "sig", "x5c"])?;
    let alg_id = alg_member(stmt)?;
    let alg = CoseAlgorithm::from_id(alg_id).ok_or_else(|| Error::Algorithm {
        field: field("alg"),
        alg: alg_id,
        reason: "is not supported",
    })?;
    let sig = bytes_member(stmt, "sig")?;
    let Some(attested) = &stmt.auth_data.attested else {
        return Err(Error::Missing {
            field: "response.attestationObject.authData.attestedCredentialData".into(),
        });
    };

    match stmt.member("x5c") {
        Some(x5c) => {
            let chain = certpath::parse_x5c(x5c, &field("x5c"))?;
            let leaf = &chain[0];
            let key = leaf.public_key()?;
            if !alg_fits_key(alg, &key) {
                return Err(Error::Algorithm {
                    field: field("alg"),
                    alg: alg_id,
                    reason: "does not fit the attestation certificate's key type",
                });
            }
            // A self-attestation signature sent with an x5c fails here: it
            // was made by the credential key, not the certificate's.
            key.verify(alg, &stmt.signed_data(), sig, &field("sig"))?;
            check_attestation_certificate(leaf, &attested.aaguid)?;
            Ok(Verified {
                attestation_type: AttestationType::Basic,
                trust_path: chain,
                root_in_path_allowed: false,
            })
        }
        None => {
            if alg != attested.public_key.alg {
                return Err(Error::Algorithm {
                    field: field("alg"),
                    alg: alg_id,
                    reason: "is not the credential public key's algorithm (self attestation)",
                });
            }
            attested
                .public_key
                .verify(&stmt.signed_data(), sig, &field("sig"))?;
            Ok(Verified {
                attestation_type: AttestationType::SelfAttestation,
                trust_path: Vec::new(),
                root_in_path_allowed: false,
            })
        }
    }
}

/// An attestation `alg` names a hash and a signature scheme; the key decides
/// the family it must belong to.
pub(super) fn alg_fits_key(alg: CoseAlgorithm, key: &VerifyingKey) -> bool {
    use CoseAlgorithm as A;
    match key {
        VerifyingKey::Ec { .. } => matches!(alg, A::Es256 | A::Es384 | A::Es512),
        VerifyingKey::Rsa { .. } => matches!(
            alg,
            A::Rs256 | A::Rs384 | A::Rs512 | A::Ps256 | A::Ps384 | A::Ps512 | A::Rs1
        ),
        VerifyingKey::Ed25519 { .. } => alg == A::EdDsa,
    }
}

/// §8.2.1, the packed attestation certificate requirements.
fn check_attestation_certificate(leaf: &Cert, aaguid: &[u8; 16]) -> Result<(), Error> {
    if leaf.version_number() != 2 {
        return Err(Error::malformed(
            format!("{}.version", leaf.field),
            "must be 3 for a packed attestation certificate",
        ));
    }
    let subject_field = format!("{}.subject", leaf.field);
    let subject = leaf.tbs().subject();
    let only = |id: ObjectIdentifier, label: &str| -> Result<String, Error> {
        let mut values = subject.iter().filter(|atv| atv.oid == id);
        let (Some(first), None) = (values.next(), values.next()) else {
            return Err(Error::malformed(
                &subject_field,
                format!("must contain exactly one {label}"),
            ));
        };
        let value = DirectoryString::try_from(&first.value).map_err(|e| {
            Error::malformed(
                &subject_field,
                format!("{label} is not a directory string: {e}"),
            )
        })?;
        let text = value.value().into_owned();
        if text.is_empty() {
            return Err(Error::malformed(
                &subject_field,
                format!("{label} is empty"),
            ));
        }
        Ok(text)
    };
    use der::oid::db::rfc4519;
    let country = only(rfc4519::COUNTRY_NAME, "C (country)")?;
    if !(country.len() == 2 && country.bytes().all(|b| b.is_ascii_uppercase())) {
        return Err(Error::malformed(
            &subject_field,
            format!("C {country:?} is not an ISO 3166 two-letter country code"),
        ));
    }
    only(rfc4519::ORGANIZATION_NAME, "O (organization)")?;
    let unit = only(
        rfc4519::ORGANIZATIONAL_UNIT_NAME,
        "OU (organizational unit)",
    )?;
    if unit != "Authenticator Attestation" {
        return Err(Error::malformed(
            &subject_field,
            format!("OU is {unit:?}, not \"Authenticator Attestation\""),
        ));
    }
    only(rfc4519::COMMON_NAME, "CN (common name)")?;

    let constraints_field = format!("{}.extensions.basicConstraints", leaf.field);
    if leaf.extension(&oid::BASIC_CONSTRAINTS).is_none() {
        return Err(Error::Missing {
            field: constraints_field,
        });
    }
    if leaf.basic_constraints()?.0 {
        return Err(Error::malformed(
            constraints_field,
            "cA must be false for an attestation certificate",
        ));
    }
    check_aaguid_extension(leaf, aaguid)
}

/// The `id-fido-gen-ce-aaguid` extension, when present: its extnValue holds
/// an OCTET STRING of the 16 AAGUID bytes (so the AAGUID is wrapped twice).
/// Shared with formats that carry the same extension.
pub(super) fn check_aaguid_extension(leaf: &Cert, aaguid: &[u8; 16]) -> Result<(), Error> {
    let Some((value, critical)) = leaf.extension(&oid::FIDO_AAGUID) else {
        return Ok(());
    };
    let ext_field = format!("{}.extensions.aaguid(1.3.6.1.4.1.45724.1.1.4)", leaf.field);
    if critical {
        return Err(Error::malformed(ext_field, "must not be marked critical"));
    }
    let inner = OctetString::from_der(value)
        .map_err(|e| Error::malformed(&ext_field, format!("not an OCTET STRING: {e}")))?;
    if inner.as_bytes().len() != 16 {
        return Err(Error::malformed(&ext_field, "the AAGUID must be 16 bytes"));
    }
    if inner.as_bytes() != aaguid {
        return Err(Error::mismatch(
            ext_field,
            format!("is not the AAGUID in authenticator data ({AAGUID_FIELD})"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webauthn::attestation::AttestationPolicy;
    use crate::webauthn::certpath::tests::{
        CertSpec, NOW, TestKey, YEAR, at, attestation_object, client_data_hash, conditions,
        extension, register, registration_vectors, roots, vector, verify_time,
    };
    use crate::webauthn::registration::AttestationObject;
    use der::Encode as _;
    use std::time::SystemTime;

    const ES256: &str = "w3c/packed-es256.registration.json";
    const SELF: &str = "w3c/packed-self-es256.registration.json";
    const SUBJECT: &str = "CN=Test Key,OU=Authenticator Attestation,O=Signet Tests,C=AA";
    const CA: &str = "CN=Test Attestation CA,O=Signet Tests,C=AA";

    struct Fixture {
        object: AttestationObject,
        hash: [u8; 32],
        now: SystemTime,
        policy: AttestationPolicy,
    }

    fn fixture(path: &str) -> Fixture {
        let v = vector(path);
        Fixture {
            object: AttestationObject::parse(&attestation_object(&v)).unwrap(),
            hash: client_data_hash(&v),
            now: at(NOW),
            policy: AttestationPolicy::default(),
        }
    }

    impl Fixture {
        fn run(&self, att_stmt: &Value) -> Result<Verified, Error> {
            verify(&Statement {
                fmt: "packed",
                att_stmt,
                auth_data: &self.object.auth_data,
                client_data_hash: &self.hash,
                policy: &self.policy,
                now: self.now,
            })
        }

        fn signed_data(&self) -> Vec<u8> {
            let mut v = self.object.auth_data.raw.clone();
            v.extend_from_slice(&self.hash);
            v
        }

        fn aaguid(&self) -> [u8; 16] {
            self.object.auth_data.attested.as_ref().unwrap().aaguid
        }

        /// A full statement over this fixture's data by a fresh key whose
        /// certificate says `spec`.
        fn statement_for(&self, spec: &CertSpec, key: &TestKey, alg: i64) -> Value {
            let ca_key = TestKey::p256();
            let cert = spec.issue(key, &ca_key);
            stmt(alg, key.sign(&self.signed_data()), Some(vec![cert]))
        }
    }

    fn stmt(alg: i64, sig: Vec<u8>, x5c: Option<Vec<Vec<u8>>>) -> Value {
        let mut entries = vec![
            (Value::Text("alg".into()), Value::Integer(alg.into())),
            (Value::Text("sig".into()), Value::Bytes(sig)),
        ];
        if let Some(x5c) = x5c {
            entries.push((
                Value::Text("x5c".into()),
                Value::Array(x5c.into_iter().map(Value::Bytes).collect()),
            ));
        }
        Value::Map(entries)
    }

    /// `map` with `name` set to `value` (added when absent).
    fn with(map: &Value, name: &str, value: Value) -> Value {
        let Value::Map(entries) = map else {
            panic!("not a map")
        };
        let mut entries = entries.clone();
        match entries
            .iter_mut()
            .find(|(k, _)| matches!(k, Value::Text(t) if t == name))
        {
            Some(entry) => entry.1 = value,
            None => entries.push((Value::Text(name.into()), value)),
        }
        Value::Map(entries)
    }

    fn without(map: &Value, name: &str) -> Value {
        let Value::Map(entries) = map else {
            panic!("not a map")
        };
        Value::Map(
            entries
                .iter()
                .filter(|(k, _)| !matches!(k, Value::Text(t) if t == name))
                .cloned()
                .collect(),
        )
    }

    fn leaf_spec() -> CertSpec {
        CertSpec::leaf(SUBJECT, CA)
    }

    fn attestation_object_with(f: &Fixture, att_stmt: Value) -> Vec<u8> {
        let value = Value::Map(vec![
            (Value::Text("fmt".into()), Value::Text("packed".into())),
            (Value::Text("attStmt".into()), att_stmt),
            (
                Value::Text("authData".into()),
                Value::Bytes(f.object.auth_data.raw.clone()),
            ),
        ]);
        let mut out = Vec::new();
        ciborium::ser::into_writer(&value, &mut out).unwrap();
        out
    }

    #[test]
    fn w3c_packed_es256_registers_through_the_whole_ceremony() {
        let v = vector(ES256);
        let anchors = roots(&v);
        let policy = AttestationPolicy::default();
        let r = register(&v, None, &policy, &anchors, verify_time(&v)).unwrap();
        assert_eq!(r.fmt, "packed");
        assert_eq!(r.attestation_type, AttestationType::Basic);
        assert!(r.anchored);
        assert_eq!(r.trust_path.len(), 1);
        assert_eq!(
            crate::webauthn::b64url(&r.credential_id),
            v["credentialId"].as_str().unwrap()
        );
        assert_eq!(
            crate::webauthn::b64url(&r.public_key.cose),
            v["credentialPublicKey"].as_str().unwrap()
        );

        // No trust store: verified, not anchored.
        let r = register(&v, None, &policy, &[], verify_time(&v)).unwrap();
        assert!(!r.anchored);

        // Before the attestation certificate's notBefore.
        let err = register(&v, None, &policy, &anchors, at(NOW - 2 * YEAR)).unwrap_err();
        assert!(err.to_string().contains("not valid before"), "{err}");
    }

    #[test]
    fn every_packed_vector_registers() {
        let mut accepted = 0;
        for path in registration_vectors() {
            let v = vector(&path);
            if v["fmt"] != "packed" {
                continue;
            }
            let conditions = conditions(&v);
            // Credential algorithms the engine does not implement; refused
            // while parsing authenticator data, before attestation.
            if conditions
                .iter()
                .any(|c| c == "mldsa_credential" || c == "ed448_credential")
            {
                assert!(
                    register(&v, None, &AttestationPolicy::default(), &[], at(NOW)).is_err(),
                    "{path}"
                );
                continue;
            }
            if conditions.iter().any(|c| c == "non_https_origin") {
                continue;
            }
            let policy = AttestationPolicy {
                allow_root_in_x5c: conditions.iter().any(|c| c == "x5c_contains_root"),
                ..AttestationPolicy::default()
            };
            let self_attested = v["verify_time"].is_null();
            let now = if self_attested {
                at(NOW)
            } else {
                verify_time(&v)
            };
            let r = register(&v, None, &policy, &roots(&v), now)
                .unwrap_or_else(|e| panic!("{path}: {e}"));
            let expected = if self_attested {
                AttestationType::SelfAttestation
            } else {
                AttestationType::Basic
            };
            assert_eq!(r.attestation_type, expected, "{path}");
            assert_eq!(r.anchored, !self_attested, "{path}");
            accepted += 1;
        }
        assert!(accepted >= 15, "only {accepted} packed vectors accepted");
    }

    #[test]
    fn the_root_inside_x5c_is_refused_unless_the_policy_allows_it() {
        let v = vector(ES256);
        let f = fixture(ES256);
        let anchors = roots(&v);
        let Some(Value::Array(x5c)) = super::super::map_get(&f.object.att_stmt, "x5c") else {
            panic!("no x5c")
        };
        let mut x5c = x5c.clone();
        x5c.push(Value::Bytes(anchors[0].der.clone()));
        let ao = attestation_object_with(&f, with(&f.object.att_stmt, "x5c", Value::Array(x5c)));
        let err = register(
            &v,
            Some(&ao),
            &AttestationPolicy::default(),
            &anchors,
            verify_time(&v),
        )
        .unwrap_err();
        assert_eq!(err.field(), "response.attestationObject.attStmt.x5c[1]");
        assert!(
            err.to_string()
                .contains("x5c includes the root certificate"),
            "{err}"
        );
        let lenient = AttestationPolicy {
            allow_root_in_x5c: true,
            ..AttestationPolicy::default()
        };
        assert!(
            register(&v, Some(&ao), &lenient, &anchors, verify_time(&v))
                .unwrap()
                .anchored
        );
    }

    #[test]
    fn signatures_must_verify() {
        let f = fixture(ES256);
        let good = f.run(&f.object.att_stmt).unwrap();
        assert_eq!(good.attestation_type, AttestationType::Basic);
        assert!(!good.root_in_path_allowed);

        let Some(Value::Bytes(sig)) = super::super::map_get(&f.object.att_stmt, "sig") else {
            panic!()
        };
        let mut tampered = sig.clone();
        let last = tampered.len() - 2;
        tampered[last] ^= 0x01;
        assert_eq!(
            f.run(&with(&f.object.att_stmt, "sig", Value::Bytes(tampered)))
                .unwrap_err(),
            Error::bad_signature("response.attestationObject.attStmt.sig")
        );

        // The same statement over other client data.
        let mut other = fixture(ES256);
        other.hash[0] ^= 1;
        assert_eq!(
            other.run(&f.object.att_stmt).unwrap_err(),
            Error::bad_signature("response.attestationObject.attStmt.sig")
        );
    }

    #[test]
    fn alg_must_be_known_and_fit_the_key() {
        let f = fixture(ES256);
        let err = f
            .run(&with(
                &f.object.att_stmt,
                "alg",
                Value::Integer((-257).into()),
            ))
            .unwrap_err();
        assert!(
            matches!(&err, Error::Algorithm { field, alg: -257, .. } if field == "response.attestationObject.attStmt.alg"),
            "{err:?}"
        );
        let err = f
            .run(&with(
                &f.object.att_stmt,
                "alg",
                Value::Integer((-8).into()),
            ))
            .unwrap_err();
        assert!(matches!(err, Error::Algorithm { alg: -8, .. }), "{err:?}");
        let err = f
            .run(&with(
                &f.object.att_stmt,
                "alg",
                Value::Integer(12345.into()),
            ))
            .unwrap_err();
        assert!(err.to_string().contains("is not supported"), "{err}");
        // Same family, other hash: the signature does not verify.
        assert_eq!(
            f.run(&with(
                &f.object.att_stmt,
                "alg",
                Value::Integer((-35).into())
            ))
            .unwrap_err(),
            Error::bad_signature("response.attestationObject.attStmt.sig")
        );
        // Any EC curve serves an ES* alg: a P-384 attestation key with ES384.
        let key = TestKey::p384();
        assert!(f.run(&f.statement_for(&leaf_spec(), &key, -35)).is_ok());
        let err = f
            .run(&f.statement_for(&leaf_spec(), &key, -257))
            .unwrap_err();
        assert!(matches!(err, Error::Algorithm { alg: -257, .. }), "{err:?}");
    }

    #[test]
    fn malformed_statements_name_the_member() {
        let f = fixture(ES256);
        let s = &f.object.att_stmt;
        let field = |n: &str| format!("response.attestationObject.attStmt{n}");
        let cases: Vec<(Value, Error)> = vec![
            (Value::Map(vec![]), Error::Empty { field: field("") }),
            (
                without(s, "alg"),
                Error::Missing {
                    field: field(".alg"),
                },
            ),
            (
                with(s, "alg", Value::Text("ES256".into())),
                Error::WrongType {
                    field: field(".alg"),
                    expected: "an integer (COSE algorithm)",
                },
            ),
            (
                without(s, "sig"),
                Error::Missing {
                    field: field(".sig"),
                },
            ),
            (
                with(s, "sig", Value::Text("sig".into())),
                Error::WrongType {
                    field: field(".sig"),
                    expected: "a byte string",
                },
            ),
            (
                with(s, "sig", Value::Bytes(vec![])),
                Error::Empty {
                    field: field(".sig"),
                },
            ),
            (
                with(s, "x5c", Value::Bytes(vec![1, 2, 3])),
                Error::WrongType {
                    field: field(".x5c"),
                    expected: "an array of certificates",
                },
            ),
            (
                with(s, "x5c", Value::Array(vec![])),
                Error::Empty {
                    field: field(".x5c"),
                },
            ),
            (
                with(s, "x5c", Value::Array(vec![Value::Text("cert".into())])),
                Error::WrongType {
                    field: field(".x5c[0]"),
                    expected: "a byte string (DER certificate)",
                },
            ),
        ];
        for (att_stmt, expected) in cases {
            assert_eq!(f.run(&att_stmt).unwrap_err(), expected, "{att_stmt:?}");
        }

        let err = f
            .run(&with(s, "ecdaaKeyId", Value::Bytes(vec![1; 32])))
            .unwrap_err();
        assert_eq!(err.field(), field(".ecdaaKeyId"));
        assert!(err.to_string().contains("ECDAA"), "{err}");
        let err = f.run(&with(s, "extra", Value::Bool(true))).unwrap_err();
        assert_eq!(err.field(), field(".extra"));
        let Value::Map(entries) = s else { panic!() };
        let mut twice = entries.clone();
        twice.push(entries[1].clone());
        let err = f.run(&Value::Map(twice)).unwrap_err();
        assert!(err.to_string().contains("more than once"), "{err}");
        let mut numeric = entries.clone();
        numeric.push((Value::Integer(1.into()), Value::Null));
        assert_eq!(f.run(&Value::Map(numeric)).unwrap_err().field(), field(""));
    }

    #[test]
    fn self_attestation() {
        let f = fixture(SELF);
        let r = f.run(&f.object.att_stmt).unwrap();
        assert_eq!(r.attestation_type, AttestationType::SelfAttestation);
        assert!(r.trust_path.is_empty());

        let v = vector(SELF);
        let reg = register(&v, None, &AttestationPolicy::default(), &[], at(NOW)).unwrap();
        assert_eq!(reg.attestation_type, AttestationType::SelfAttestation);
        assert!(!reg.anchored);

        // alg must be the credential key's.
        let err = f
            .run(&with(
                &f.object.att_stmt,
                "alg",
                Value::Integer((-257).into()),
            ))
            .unwrap_err();
        assert!(matches!(err, Error::Algorithm { alg: -257, .. }), "{err:?}");
        assert!(err.to_string().contains("credential public key"), "{err}");

        // A self signature presented with an x5c is checked against the
        // certificate's key, and fails.
        let full = fixture(ES256);
        let x5c = super::super::map_get(&full.object.att_stmt, "x5c")
            .unwrap()
            .clone();
        assert_eq!(
            f.run(&with(&f.object.att_stmt, "x5c", x5c)).unwrap_err(),
            Error::bad_signature("response.attestationObject.attStmt.sig")
        );

        let Some(Value::Bytes(sig)) = super::super::map_get(&f.object.att_stmt, "sig") else {
            panic!()
        };
        let mut tampered = sig.clone();
        tampered[10] ^= 1;
        assert!(matches!(
            f.run(&with(&f.object.att_stmt, "sig", Value::Bytes(tampered))),
            Err(Error::BadSignature { .. })
        ));
    }

    #[test]
    fn the_attestation_certificate_meets_8_2_1() {
        let f = fixture(ES256);
        let key = TestKey::p256();
        let run = |spec: CertSpec| f.run(&f.statement_for(&spec, &key, -7));

        assert_eq!(
            run(leaf_spec()).unwrap().attestation_type,
            AttestationType::Basic
        );
        // Other subject attributes may be present.
        assert!(run(CertSpec::leaf(&format!("{SUBJECT},L=Zurich,ST=ZH"), CA)).is_ok());

        let subject_error = |spec: CertSpec, needle: &str| {
            let err = run(spec).unwrap_err();
            assert_eq!(
                err.field(),
                "response.attestationObject.attStmt.x5c[0].subject",
                "{err}"
            );
            assert!(err.to_string().contains(needle), "{needle}: {err}");
        };
        subject_error(
            CertSpec::leaf("CN=Test Key,OU=Authenticator,O=Signet Tests,C=AA", CA),
            "not \"Authenticator Attestation\"",
        );
        subject_error(
            CertSpec::leaf("CN=Test Key,O=Signet Tests,C=AA", CA),
            "exactly one OU",
        );
        subject_error(
            CertSpec::leaf("OU=Authenticator Attestation,O=Signet Tests,C=AA", CA),
            "exactly one CN",
        );
        subject_error(
            CertSpec::leaf("CN=Test Key,OU=Authenticator Attestation,C=AA", CA),
            "exactly one O",
        );
        subject_error(
            CertSpec::leaf(
                "CN=Test Key,OU=Authenticator Attestation,O=Signet Tests",
                CA,
            ),
            "exactly one C",
        );
        subject_error(
            CertSpec::leaf(
                "CN=Test Key,OU=Authenticator Attestation,O=Signet Tests,C=aa",
                CA,
            ),
            "ISO 3166",
        );
        subject_error(
            CertSpec::leaf(
                "CN=Test Key,OU=Authenticator Attestation,OU=Authenticator Attestation,O=Signet Tests,C=AA",
                CA,
            ),
            "exactly one OU",
        );

        let err = run(CertSpec {
            version: x509_cert::Version::V2,
            ..leaf_spec()
        })
        .unwrap_err();
        assert_eq!(
            err.field(),
            "response.attestationObject.attStmt.x5c[0].version"
        );

        let err = run(CertSpec {
            basic_constraints: None,
            ..leaf_spec()
        })
        .unwrap_err();
        assert_eq!(
            err,
            Error::Missing {
                field: "response.attestationObject.attStmt.x5c[0].extensions.basicConstraints"
                    .into()
            }
        );
        let err = run(CertSpec {
            basic_constraints: Some((true, None)),
            ..leaf_spec()
        })
        .unwrap_err();
        assert!(err.to_string().contains("cA must be false"), "{err}");
    }

    #[test]
    fn the_aaguid_extension_must_match_and_not_be_critical() {
        let f = fixture(ES256);
        let key = TestKey::p256();
        let aaguid_ext = |critical: bool, aaguid: &[u8]| {
            let inner = OctetString::new(aaguid.to_vec()).unwrap().to_der().unwrap();
            CertSpec {
                extra: vec![extension(oid::FIDO_AAGUID, critical, &inner)],
                ..leaf_spec()
            }
        };
        let ext_field =
            "response.attestationObject.attStmt.x5c[0].extensions.aaguid(1.3.6.1.4.1.45724.1.1.4)";

        assert!(
            f.run(&f.statement_for(&aaguid_ext(false, &f.aaguid()), &key, -7))
                .is_ok()
        );

        let mut other = f.aaguid();
        other[15] ^= 0xff;
        let err = f
            .run(&f.statement_for(&aaguid_ext(false, &other), &key, -7))
            .unwrap_err();
        assert!(
            matches!(&err, Error::Mismatch { field, .. } if field == ext_field),
            "{err:?}"
        );

        let err = f
            .run(&f.statement_for(&aaguid_ext(true, &f.aaguid()), &key, -7))
            .unwrap_err();
        assert_eq!(err.field(), ext_field);
        assert!(err.to_string().contains("critical"), "{err}");

        let err = f
            .run(&f.statement_for(&aaguid_ext(false, &f.aaguid()[..15]), &key, -7))
            .unwrap_err();
        assert!(err.to_string().contains("16 bytes"), "{err}");

        // The AAGUID not wrapped in its own OCTET STRING.
        let bare = CertSpec {
            extra: vec![extension(oid::FIDO_AAGUID, false, &f.aaguid())],
            ..leaf_spec()
        };
        assert!(matches!(
            f.run(&f.statement_for(&bare, &key, -7)),
            Err(Error::Malformed { .. })
        ));
    }
}
