//! `compound` (WebAuthn L3 §8.9): two or more self-contained attestation
//! statements about the same credential in one ceremony. Its `attStmt` is a
//! CBOR array, not a map:
//!
//! ```text
//! attStmt: [2* nonCompoundAttStmt]
//! nonCompoundAttStmt = { $$attStmtType } .within { fmt: text .ne "compound", * any => any }
//! ```
//!
//! # Rules
//!
//! - 2 to 8 statements. §8.9 sets no upper bound; 8 (as for x5c) bounds the
//!   work, since each statement may carry a chain and signatures.
//! - Each is a map of exactly `fmt` and `attStmt`, verified by its own format
//!   through [`super::verify`] (so the format policy applies to each), over
//!   the same authenticator data and client data hash. A nested `compound` is
//!   refused.
//! - All must verify. §8.9 leaves "all or some" to the relying party; a bank
//!   accepts no statement it could not check.
//! - Errors name the statement: `attStmt[1].attStmt.sig`, not `attStmt.sig`.
//!
//! # What is returned
//!
//! The attestation type and trust path of the first statement, the one the
//! authenticator put first. [`Verified`] holds one path, and the caller
//! anchors that one. The chains of the other statements are checked here for
//! everything but anchoring (order, signatures, CA flags, validity at `now`),
//! because no trust anchors reach a format module; anchoring them needs the
//! anchors passed into [`Statement`].

use ciborium::Value;

use super::{Statement, Verified};
use crate::webauthn::Error;
use crate::webauthn::certpath::{self, PathOptions};

const ATT_STMT: &str = "response.attestationObject.attStmt";
const FMT: &str = "response.attestationObject.fmt";

/// The most statements one compound statement may carry.
pub const MAX_STATEMENTS: usize = 8;

pub fn verify(stmt: &Statement<'_>) -> Result<Verified, Error> {
    let Value::Array(items) = stmt.att_stmt else {
        return Err(Error::WrongType {
            field: ATT_STMT.into(),
            expected: "an array of attestation statements (compound)",
        });
    };
    if items.len() < 2 {
        return Err(Error::malformed(
            ATT_STMT,
            format!(
                "a compound statement holds at least 2 statements, not {}",
                items.len()
            ),
        ));
    }
    if items.len() > MAX_STATEMENTS {
        return Err(Error::TooLarge {
            field: ATT_STMT.into(),
            limit: MAX_STATEMENTS,
        });
    }

    let mut verified = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let (fmt, att_stmt) = sub_statement(item, i)?;
        let sub = Statement {
            fmt,
            att_stmt,
            auth_data: stmt.auth_data,
            client_data_hash: stmt.client_data_hash,
            policy: stmt.policy,
            now: stmt.now,
        };
        let mut result = super::verify(&sub).map_err(|e| relocate(e, i))?;
        for cert in &mut result.trust_path {
            if let Some(field) = relocate_field(&cert.field, i) {
                cert.field = field;
            }
        }
        verified.push(result);
    }

    for result in verified.iter().skip(1) {
        if result.trust_path.is_empty() {
            continue;
        }
        let opts = PathOptions {
            allow_root_in_chain: result.root_in_path_allowed || stmt.policy.allow_root_in_x5c,
        };
        certpath::validate(&result.trust_path, &[], stmt.now, &opts)?;
    }

    let mut verified = verified.into_iter();
    verified.next().ok_or_else(|| Error::Empty {
        field: ATT_STMT.into(),
    })
}

/// `attStmt[i]` as `(fmt, attStmt)`: a map of exactly those two members,
/// `fmt` a non-empty text other than "compound".
fn sub_statement(item: &Value, i: usize) -> Result<(&str, &Value), Error> {
    let path = format!("{ATT_STMT}[{i}]");
    let Value::Map(entries) = item else {
        return Err(Error::WrongType {
            field: path,
            expected: "a map of fmt and attStmt",
        });
    };
    let mut fmt = None;
    let mut att_stmt = None;
    for (key, value) in entries {
        let slot = match key {
            Value::Text(name) if name == "fmt" => &mut fmt,
            Value::Text(name) if name == "attStmt" => &mut att_stmt,
            Value::Text(name) => {
                return Err(Error::malformed(
                    format!("{path}.{name}"),
                    "is not a member of a compound statement's entry (only fmt and attStmt)",
                ));
            }
            _ => return Err(Error::malformed(&path, "member names must be text strings")),
        };
        if slot.replace(value).is_some() {
            let name = if matches!(key, Value::Text(t) if t == "fmt") {
                "fmt"
            } else {
                "attStmt"
            };
            return Err(Error::malformed(
                format!("{path}.{name}"),
                "appears more than once",
            ));
        }
    }
    let fmt = match fmt {
        None => {
            return Err(Error::Missing {
                field: format!("{path}.fmt"),
            });
        }
        Some(Value::Text(t)) if t.is_empty() => {
            return Err(Error::Empty {
                field: format!("{path}.fmt"),
            });
        }
        Some(Value::Text(t)) => t.as_str(),
        Some(_) => {
            return Err(Error::WrongType {
                field: format!("{path}.fmt"),
                expected: "a text string",
            });
        }
    };
    if fmt == "compound" {
        return Err(Error::malformed(
            format!("{path}.fmt"),
            "a compound statement cannot contain another compound statement",
        ));
    }
    let Some(att_stmt) = att_stmt else {
        return Err(Error::Missing {
            field: format!("{path}.attStmt"),
        });
    };
    Ok((fmt, att_stmt))
}

/// A format names its fields as if it were the only statement
/// (`response.attestationObject.attStmt.sig`); inside a compound statement
/// that is `response.attestationObject.attStmt[i].attStmt.sig`. Fields
/// outside the statement (authenticator data) are shared and keep their name.
fn relocate_field(field: &str, i: usize) -> Option<String> {
    let under = |prefix: &str| {
        field
            .strip_prefix(prefix)
            .filter(|rest| rest.is_empty() || rest.starts_with('.') || rest.starts_with('['))
    };
    if let Some(rest) = under(ATT_STMT) {
        return Some(format!("{ATT_STMT}[{i}].attStmt{rest}"));
    }
    under(FMT).map(|rest| format!("{ATT_STMT}[{i}].fmt{rest}"))
}

fn relocate(mut error: Error, i: usize) -> Error {
    if let Some(field) = error.field_mut()
        && let Some(moved) = relocate_field(field, i)
    {
        *field = moved;
    }
    error
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webauthn::attestation::{AttestationPolicy, AttestationType};
    use crate::webauthn::certpath::tests::{
        CertSpec, NOW, TestKey, YEAR, at, attestation_object, client_data_hash, vector,
    };
    use crate::webauthn::registration::AttestationObject;

    const ES256: &str = "w3c/packed-es256.registration.json";

    struct Fixture {
        object: AttestationObject,
        hash: [u8; 32],
        policy: AttestationPolicy,
    }

    fn fixture() -> Fixture {
        let v = vector(ES256);
        Fixture {
            object: AttestationObject::parse(&attestation_object(&v)).unwrap(),
            hash: client_data_hash(&v),
            policy: AttestationPolicy::default(),
        }
    }

    fn text(s: &str) -> Value {
        Value::Text(s.into())
    }

    fn entry(fmt: &str, att_stmt: Value) -> Value {
        Value::Map(vec![(text("fmt"), text(fmt)), (text("attStmt"), att_stmt)])
    }

    impl Fixture {
        fn run(&self, att_stmt: &Value) -> Result<Verified, Error> {
            verify(&Statement {
                fmt: "compound",
                att_stmt,
                auth_data: &self.object.auth_data,
                client_data_hash: &self.hash,
                policy: &self.policy,
                now: at(NOW),
            })
        }

        /// The vector's own packed statement.
        fn packed(&self) -> Value {
            entry("packed", self.object.att_stmt.clone())
        }

        /// A second packed statement over the same data, by a fresh key whose
        /// certificate says `spec`.
        fn packed_by(&self, spec: CertSpec) -> Value {
            let key = TestKey::p256();
            let cert = spec.issue(&key, &TestKey::p256());
            let mut data = self.object.auth_data.raw.clone();
            data.extend_from_slice(&self.hash);
            entry(
                "packed",
                Value::Map(vec![
                    (text("alg"), Value::Integer((-7).into())),
                    (text("sig"), Value::Bytes(key.sign(&data))),
                    (text("x5c"), Value::Array(vec![Value::Bytes(cert)])),
                ]),
            )
        }
    }

    fn attestation_leaf() -> CertSpec {
        CertSpec::leaf(
            "CN=Second,OU=Authenticator Attestation,O=Signet Tests,C=AA",
            "CN=Second CA,O=Signet Tests,C=AA",
        )
    }

    #[test]
    fn every_statement_verifies_and_the_first_is_returned() {
        let f = fixture();
        let stmt = Value::Array(vec![f.packed(), f.packed_by(attestation_leaf())]);
        let r = f.run(&stmt).unwrap();
        assert_eq!(r.attestation_type, AttestationType::Basic);
        assert_eq!(r.trust_path.len(), 1);
        assert_eq!(
            r.trust_path[0].field,
            "response.attestationObject.attStmt[0].attStmt.x5c[0]"
        );
        assert!(r.trust_path[0].subject().contains("WebAuthn test vectors"));

        // none is a statement too.
        let r = f
            .run(&Value::Array(vec![
                entry("none", Value::Map(vec![])),
                f.packed(),
            ]))
            .unwrap();
        assert_eq!(r.attestation_type, AttestationType::None);
        assert!(r.trust_path.is_empty());
    }

    #[test]
    fn one_failing_statement_fails_the_whole() {
        let f = fixture();
        let Value::Map(entries) = &f.object.att_stmt else {
            panic!()
        };
        let mut bad = entries.clone();
        for (k, v) in &mut bad {
            if k == &text("sig")
                && let Value::Bytes(b) = v
            {
                b[10] ^= 1;
            }
        }
        let stmt = Value::Array(vec![
            f.packed_by(attestation_leaf()),
            entry("packed", Value::Map(bad)),
        ]);
        assert_eq!(
            f.run(&stmt).unwrap_err(),
            Error::bad_signature("response.attestationObject.attStmt[1].attStmt.sig")
        );

        // The second statement's chain is checked even though only the
        // first is returned: an expired certificate there fails.
        let expired = CertSpec {
            not_before: at(NOW - 3 * YEAR),
            not_after: at(NOW - YEAR),
            ..attestation_leaf()
        };
        let err = f
            .run(&Value::Array(vec![f.packed(), f.packed_by(expired)]))
            .unwrap_err();
        assert_eq!(
            err.field(),
            "response.attestationObject.attStmt[1].attStmt.x5c[0]"
        );
        assert!(err.to_string().contains("expired"), "{err}");

        // Errors of the format itself are named inside the entry.
        let no_sig = entry(
            "packed",
            Value::Map(vec![(text("alg"), Value::Integer((-7).into()))]),
        );
        assert_eq!(
            f.run(&Value::Array(vec![f.packed(), no_sig])).unwrap_err(),
            Error::Missing {
                field: "response.attestationObject.attStmt[1].attStmt.sig".into()
            }
        );
        let err = f
            .run(&Value::Array(vec![f.packed(), entry("packed", text("x"))]))
            .unwrap_err();
        assert_eq!(err.field(), "response.attestationObject.attStmt[1].attStmt");
        let err = f
            .run(&Value::Array(vec![
                f.packed(),
                entry("tpm2", Value::Map(vec![])),
            ]))
            .unwrap_err();
        assert_eq!(err.field(), "response.attestationObject.attStmt[1].fmt");
    }

    #[test]
    fn the_format_policy_applies_to_each_statement() {
        let mut f = fixture();
        f.policy.formats = Some(vec!["compound".into(), "none".into()]);
        let err = f
            .run(&Value::Array(vec![
                entry("none", Value::Map(vec![])),
                f.packed(),
            ]))
            .unwrap_err();
        assert!(
            matches!(&err, Error::Policy { field, .. } if field == "response.attestationObject.attStmt[1].fmt")
        );
    }

    #[test]
    fn shape_and_bounds() {
        let f = fixture();
        let field = |s: &str| format!("response.attestationObject.attStmt{s}");

        let err = f.run(&f.object.att_stmt).unwrap_err();
        assert!(matches!(err, Error::WrongType { .. }), "{err:?}");
        let err = f.run(&Value::Array(vec![f.packed()])).unwrap_err();
        assert!(err.to_string().contains("at least 2"), "{err}");
        assert!(matches!(
            f.run(&Value::Array(vec![])),
            Err(Error::Malformed { .. })
        ));
        let many = Value::Array(vec![f.packed(); MAX_STATEMENTS + 1]);
        assert_eq!(
            f.run(&many).unwrap_err(),
            Error::TooLarge {
                field: field(""),
                limit: MAX_STATEMENTS
            }
        );
        assert!(
            f.run(&Value::Array(vec![f.packed(); MAX_STATEMENTS]))
                .is_ok()
        );

        let nested = entry("compound", Value::Array(vec![f.packed(), f.packed()]));
        let err = f.run(&Value::Array(vec![f.packed(), nested])).unwrap_err();
        assert_eq!(err.field(), field("[1].fmt"));
        assert!(
            err.to_string().contains("cannot contain another compound"),
            "{err}"
        );

        let cases = [
            (Value::Bytes(vec![1]), field("[1]")),
            (
                Value::Map(vec![(text("attStmt"), Value::Map(vec![]))]),
                field("[1].fmt"),
            ),
            (
                Value::Map(vec![(text("fmt"), text("none"))]),
                field("[1].attStmt"),
            ),
            (
                Value::Map(vec![
                    (text("fmt"), Value::Integer(1.into())),
                    (text("attStmt"), Value::Map(vec![])),
                ]),
                field("[1].fmt"),
            ),
            (
                Value::Map(vec![
                    (text("fmt"), text("")),
                    (text("attStmt"), Value::Map(vec![])),
                ]),
                field("[1].fmt"),
            ),
            (
                Value::Map(vec![
                    (text("fmt"), text("none")),
                    (text("attStmt"), Value::Map(vec![])),
                    (text("authData"), Value::Bytes(vec![])),
                ]),
                field("[1].authData"),
            ),
            (
                Value::Map(vec![
                    (text("fmt"), text("none")),
                    (text("fmt"), text("none")),
                    (text("attStmt"), Value::Map(vec![])),
                ]),
                field("[1].fmt"),
            ),
            (
                Value::Map(vec![(Value::Integer(1.into()), text("none"))]),
                field("[1]"),
            ),
        ];
        for (item, expected) in cases {
            let err = f
                .run(&Value::Array(vec![f.packed(), item.clone()]))
                .unwrap_err();
            assert_eq!(err.field(), expected, "{item:?}: {err}");
        }
    }

    #[test]
    fn fields_are_relocated_only_inside_the_statement() {
        assert_eq!(
            relocate_field("response.attestationObject.attStmt.x5c[0].signature", 2).as_deref(),
            Some("response.attestationObject.attStmt[2].attStmt.x5c[0].signature")
        );
        assert_eq!(
            relocate_field("response.attestationObject.attStmt", 0).as_deref(),
            Some("response.attestationObject.attStmt[0].attStmt")
        );
        assert_eq!(
            relocate_field("response.attestationObject.fmt", 1).as_deref(),
            Some("response.attestationObject.attStmt[1].fmt")
        );
        assert_eq!(
            relocate_field("response.attestationObject.authData.flags.UP", 1),
            None
        );
        assert_eq!(
            relocate_field("response.attestationObject.attStmtX", 1),
            None
        );
        assert_eq!(
            relocate(
                Error::CounterNotIncreased {
                    stored: 1,
                    received: 1
                },
                3
            ),
            Error::CounterNotIncreased {
                stored: 1,
                received: 1
            }
        );
    }
}
