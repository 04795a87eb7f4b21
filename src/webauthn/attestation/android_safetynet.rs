//! `android-safetynet` (WebAuthn L3 §8.5). The statement is a SafetyNet
//! attestation: a compact JWS signed by Google for attest.android.com whose
//! payload nonce binds it to authenticatorData || clientDataHash.
//!
//! The header's x5c is returned as the trust path; anchoring it (GlobalSign /
//! Google Trust Services) is the caller's certpath step, as for every format.

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ciborium::Value;
use der::Decode;
use der::asn1::{ObjectIdentifier, UintRef};
use serde_json::{Map, Value as Json};
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::ext::pkix::name::{DirectoryString, GeneralName};

use super::{AttestationType, Statement, Verified, bytes_member, field};
use crate::webauthn::certpath::{Cert, oid};
use crate::webauthn::cose_key::{Curve, VerifyingKey};
use crate::webauthn::{CoseAlgorithm, Error, b64url_decode, constant_time_eq, limits};

const RESPONSE: &str = "response.attestationObject.attStmt.response";
/// The only signer SafetyNet responses come from.
const HOSTNAME: &str = "attest.android.com";
const COMMON_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");

/// A SafetyNet JWS, certificates included, is 5 to 9 KB; it cannot be larger
/// than the attestation object that carries it.
const MAX_JWS: usize = limits::ATTESTATION_OBJECT;

/// How a JWS `alg` is checked and verified. ES* name the curve too (RFC 7518
/// §3.4), which a bare COSE algorithm does not.
#[derive(Clone, Copy, Debug)]
enum JwsAlg {
    Rsa(CoseAlgorithm),
    Ecdsa(CoseAlgorithm, Curve, usize),
}

impl JwsAlg {
    fn from_name(name: &str) -> Option<JwsAlg> {
        Some(match name {
            "RS256" => JwsAlg::Rsa(CoseAlgorithm::Rs256),
            "RS384" => JwsAlg::Rsa(CoseAlgorithm::Rs384),
            "RS512" => JwsAlg::Rsa(CoseAlgorithm::Rs512),
            "ES256" => JwsAlg::Ecdsa(CoseAlgorithm::Es256, Curve::P256, 32),
            "ES384" => JwsAlg::Ecdsa(CoseAlgorithm::Es384, Curve::P384, 48),
            "ES512" => JwsAlg::Ecdsa(CoseAlgorithm::Es512, Curve::P521, 66),
            _ => return None,
        })
    }
}

/// A compact JWS split and decoded; `signing_input` is `header.payload` as sent.
struct Jws<'a> {
    signing_input: &'a [u8],
    header: Map<String, Json>,
    payload: Vec<u8>,
    signature: Vec<u8>,
}

pub fn verify(stmt: &Statement<'_>) -> Result<Verified, Error> {
    match stmt.member("ver") {
        None => {
            return Err(Error::Missing {
                field: field("ver"),
            });
        }
        Some(Value::Text(t)) if t.is_empty() => {
            return Err(Error::Empty {
                field: field("ver"),
            });
        }
        Some(Value::Text(_)) => {}
        Some(_) => {
            return Err(Error::WrongType {
                field: field("ver"),
                expected: "a text string",
            });
        }
    }
    let response = bytes_member(stmt, "response")?;
    let jws = parse_jws(response)?;
    let alg = header_alg(&jws.header)?;
    let x5c = header_x5c(&jws.header)?;
    let Some(leaf) = x5c.first() else {
        return Err(Error::Empty {
            field: format!("{RESPONSE}.header.x5c"),
        });
    };
    check_hostname(leaf)?;
    verify_signature(&jws, alg, leaf)?;
    let payload = json_object(&jws.payload, &format!("{RESPONSE}.payload"))?;
    check_payload(&payload, stmt)?;
    Ok(Verified {
        attestation_type: AttestationType::Basic,
        trust_path: x5c,
        root_in_path_allowed: false,
    })
}

/// Splits `header.payload.signature` (RFC 7515 §7.1) and decodes each part.
fn parse_jws(bytes: &[u8]) -> Result<Jws<'_>, Error> {
    if bytes.len() > MAX_JWS {
        return Err(Error::TooLarge {
            field: RESPONSE.into(),
            limit: MAX_JWS,
        });
    }
    let text = std::str::from_utf8(bytes).map_err(|_| Error::malformed(RESPONSE, "not UTF-8"))?;
    let not_compact = || {
        Error::malformed(
            RESPONSE,
            "not a compact JWS (three base64url parts separated by dots)",
        )
    };
    let (signing_input, signature) = text.rsplit_once('.').ok_or_else(not_compact)?;
    let (header, payload) = signing_input.split_once('.').ok_or_else(not_compact)?;
    if payload.contains('.') {
        return Err(not_compact());
    }
    let header = jws_part(header, "header", MAX_JWS)?;
    let header = json_object(&header, &format!("{RESPONSE}.header"))?;
    Ok(Jws {
        signing_input: signing_input.as_bytes(),
        header,
        payload: jws_part(payload, "payload", MAX_JWS)?,
        signature: jws_part(signature, "signature", limits::SIGNATURE)?,
    })
}

/// One JWS part: non-empty, unpadded base64url (RFC 7515 §2).
fn jws_part(text: &str, name: &str, limit: usize) -> Result<Vec<u8>, Error> {
    let path = format!("{RESPONSE}.{name}");
    if text.is_empty() {
        return Err(Error::Empty { field: path });
    }
    if text.contains('=') {
        return Err(Error::NotBase64Url { field: path });
    }
    b64url_decode(&path, text, limit)
}

/// Parses a JSON object after bounding its nesting, so a hostile document
/// is refused before serde_json walks it.
fn json_object(bytes: &[u8], path: &str) -> Result<Map<String, Json>, Error> {
    if !nesting_within(bytes, limits::NESTING) {
        return Err(Error::malformed(
            path,
            format!("nested deeper than {}", limits::NESTING),
        ));
    }
    match serde_json::from_slice(bytes) {
        Ok(Json::Object(map)) => Ok(map),
        Ok(_) => Err(Error::WrongType {
            field: path.to_string(),
            expected: "a JSON object",
        }),
        Err(e) => Err(Error::malformed(path, format!("not JSON: {e}"))),
    }
}

/// Whether `[` / `{` nest at most `max` deep, outside strings.
fn nesting_within(bytes: &[u8], max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in bytes {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return false;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    true
}

fn header_alg(header: &Map<String, Json>) -> Result<JwsAlg, Error> {
    // Extensions we do not implement must not be silently ignored (RFC 7515
    // §4.1.11), and we implement none.
    if header.contains_key("crit") {
        return Err(Error::policy(
            format!("{RESPONSE}.header.crit"),
            "no JWS extension is supported",
        ));
    }
    let path = format!("{RESPONSE}.header.alg");
    let name = match header.get("alg") {
        None => return Err(Error::Missing { field: path }),
        Some(Json::String(s)) => s,
        Some(_) => {
            return Err(Error::WrongType {
                field: path,
                expected: "a string",
            });
        }
    };
    JwsAlg::from_name(name).ok_or_else(|| {
        Error::policy(
            path,
            format!(
                "JWS algorithm {name:?} is not accepted (RS256, RS384, RS512, ES256, ES384, ES512)"
            ),
        )
    })
}

/// `x5c`: standard (padded) base64 DER certificates, leaf first (RFC 7515 §4.1.6).
fn header_x5c(header: &Map<String, Json>) -> Result<Vec<Cert>, Error> {
    let path = format!("{RESPONSE}.header.x5c");
    let items = match header.get("x5c") {
        None => return Err(Error::Missing { field: path }),
        Some(Json::Array(items)) => items,
        Some(_) => {
            return Err(Error::WrongType {
                field: path,
                expected: "an array of base64 certificates",
            });
        }
    };
    if items.is_empty() {
        return Err(Error::Empty { field: path });
    }
    if items.len() > limits::X5C_CERTS {
        return Err(Error::TooLarge {
            field: path,
            limit: limits::X5C_CERTS,
        });
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let item_path = format!("{path}[{i}]");
            let Json::String(text) = item else {
                return Err(Error::WrongType {
                    field: item_path,
                    expected: "a base64 string (DER certificate)",
                });
            };
            if text.len() > limits::CERTIFICATE.div_ceil(3) * 4 {
                return Err(Error::TooLarge {
                    field: item_path,
                    limit: limits::CERTIFICATE,
                });
            }
            let der_bytes = STANDARD
                .decode(text)
                .map_err(|_| Error::malformed(&item_path, "not standard padded base64"))?;
            Cert::parse(&der_bytes, item_path)
        })
        .collect()
}

/// The leaf must be for attest.android.com. As in TLS (RFC 6125 §6.4.4),
/// DNS names in subjectAltName decide when there are any, else the subject
/// CN; no wildcards.
fn check_hostname(leaf: &Cert) -> Result<(), Error> {
    if let Some((value, _)) = leaf.extension(&oid::SUBJECT_ALT_NAME) {
        let path = format!("{}.subjectAltName", leaf.field);
        let san = SubjectAltName::from_der(value).map_err(|e| Error::malformed(&path, e))?;
        let dns: Vec<&str> = san
            .0
            .iter()
            .filter_map(|name| match name {
                GeneralName::DnsName(n) => Some(n.as_str()),
                _ => None,
            })
            .collect();
        if !dns.is_empty() {
            if dns.iter().any(|n| n.eq_ignore_ascii_case(HOSTNAME)) {
                return Ok(());
            }
            return Err(Error::mismatch(
                path,
                format!("names {dns:?}, not {HOSTNAME}"),
            ));
        }
    }
    let path = format!("{}.subject.CN", leaf.field);
    let mut names = leaf
        .tbs()
        .subject()
        .iter()
        .filter(|atv| atv.oid == COMMON_NAME);
    let (Some(cn), None) = (names.next(), names.next()) else {
        return Err(Error::mismatch(
            path,
            format!("exactly one CN {HOSTNAME} is required"),
        ));
    };
    let cn = DirectoryString::try_from(&cn.value).map_err(|e| Error::malformed(&path, e))?;
    if cn.value().eq_ignore_ascii_case(HOSTNAME) {
        Ok(())
    } else {
        Err(Error::mismatch(
            path,
            format!("is {:?}, not {HOSTNAME}", cn.value()),
        ))
    }
}

fn verify_signature(jws: &Jws<'_>, alg: JwsAlg, leaf: &Cert) -> Result<(), Error> {
    let path = format!("{RESPONSE}.signature");
    let key = leaf.public_key()?;
    match alg {
        JwsAlg::Rsa(cose) => key.verify(cose, jws.signing_input, &jws.signature, &path),
        JwsAlg::Ecdsa(cose, curve, n) => {
            // VerifyingKey pairs any curve with any hash; a JWS alg fixes both.
            if !matches!(key, VerifyingKey::Ec { curve: c, .. } if c == curve) {
                return Err(Error::Algorithm {
                    field: format!("{RESPONSE}.header.alg"),
                    alg: cose.id(),
                    reason: "does not fit the key of header.x5c[0]",
                });
            }
            let der_sig = ecdsa_raw_to_der(&jws.signature, n, &path)?;
            key.verify(cose, jws.signing_input, &der_sig, &path)
        }
    }
}

/// JWS carries ECDSA signatures as fixed-width r || s (RFC 7518 §3.4);
/// VerifyingKey takes the DER Ecdsa-Sig-Value.
fn ecdsa_raw_to_der(raw: &[u8], n: usize, path: &str) -> Result<Vec<u8>, Error> {
    #[derive(der::Sequence)]
    struct EcdsaSigValue<'a> {
        r: UintRef<'a>,
        s: UintRef<'a>,
    }
    if raw.len() != 2 * n {
        return Err(Error::malformed(
            path,
            format!("must be {} bytes (r || s)", 2 * n),
        ));
    }
    let (r, s) = raw.split_at(n);
    let value = EcdsaSigValue {
        r: UintRef::new(r).map_err(|e| Error::malformed(path, e))?,
        s: UintRef::new(s).map_err(|e| Error::malformed(path, e))?,
    };
    der::Encode::to_der(&value).map_err(|e| Error::malformed(path, e))
}

/// The signed payload's claims: nonce binding, device integrity, freshness.
fn check_payload(payload: &Map<String, Json>, stmt: &Statement<'_>) -> Result<(), Error> {
    let at = |name: &str| format!("{RESPONSE}.payload.{name}");

    let nonce = match payload.get("nonce") {
        None => return Err(Error::Missing { field: at("nonce") }),
        Some(Json::String(s)) => s,
        Some(_) => {
            return Err(Error::WrongType {
                field: at("nonce"),
                expected: "a base64 string",
            });
        }
    };
    let expected = STANDARD.encode(crate::keys::sha256(&stmt.signed_data()));
    if !constant_time_eq(nonce.as_bytes(), expected.as_bytes()) {
        return Err(Error::mismatch(
            at("nonce"),
            "is not the base64 SHA-256 of authenticatorData || clientDataHash",
        ));
    }

    let cts = bool_member(
        payload,
        "ctsProfileMatch",
        stmt.policy.safetynet_require_cts_profile,
    )?;
    if stmt.policy.safetynet_require_cts_profile && cts != Some(true) {
        return Err(Error::policy(
            at("ctsProfileMatch"),
            "is false: the device does not match a CTS-compatible profile",
        ));
    }
    // Failed basic integrity means a rooted or tampered device; the CTS
    // relaxation is about uncertified builds, not about that.
    if bool_member(payload, "basicIntegrity", true)? != Some(true) {
        return Err(Error::policy(
            at("basicIntegrity"),
            "is false: the device failed SafetyNet basic integrity",
        ));
    }

    check_timestamp(
        payload,
        stmt.now,
        stmt.policy.safetynet_max_age,
        stmt.policy.safetynet_max_skew,
    )
}

/// A boolean claim; `required` makes absence an error.
fn bool_member(
    payload: &Map<String, Json>,
    name: &str,
    required: bool,
) -> Result<Option<bool>, Error> {
    let path = format!("{RESPONSE}.payload.{name}");
    match payload.get(name) {
        None if required => Err(Error::Missing { field: path }),
        None => Ok(None),
        Some(Json::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(Error::WrongType {
            field: path,
            expected: "a boolean",
        }),
    }
}

/// `timestampMs` must lie in [now - max_age, now + max_skew].
fn check_timestamp(
    payload: &Map<String, Json>,
    now: SystemTime,
    max_age: Duration,
    max_skew: Duration,
) -> Result<(), Error> {
    let path = format!("{RESPONSE}.payload.timestampMs");
    let ms = match payload.get("timestampMs") {
        None => return Err(Error::Missing { field: path }),
        Some(Json::Number(n)) => n.as_u64().ok_or_else(|| Error::WrongType {
            field: path.clone(),
            expected: "a non-negative integer (milliseconds since the Unix epoch)",
        })?,
        Some(_) => {
            return Err(Error::WrongType {
                field: path,
                expected: "a non-negative integer (milliseconds since the Unix epoch)",
            });
        }
    };
    let issued = SystemTime::UNIX_EPOCH
        .checked_add(Duration::from_millis(ms))
        .ok_or_else(|| Error::malformed(&path, "out of range"))?;
    match now.duration_since(issued) {
        Ok(age) if age > max_age => Err(Error::policy(
            path,
            format!(
                "{ms} is older than {} ms (age {} ms)",
                max_age.as_millis(),
                age.as_millis()
            ),
        )),
        Ok(_) => Ok(()),
        Err(ahead) if ahead.duration() > max_skew => Err(Error::policy(
            path,
            format!(
                "{ms} is {} ms in the future (allowed clock skew {} ms)",
                ahead.duration().as_millis(),
                max_skew.as_millis()
            ),
        )),
        Err(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use aws_lc_rs::signature::{
        ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair,
    };
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use super::*;
    use crate::webauthn::attestation::android_key::test_support::*;
    use crate::webauthn::attestation::{self, AttestationPolicy};

    const V2019: &str = "devices/webauthn-rs-android-safetynet-2019.registration.json";
    const V2025: &str = "devices/simplewebauthn-android-safetynet-2025-cts-false.registration.json";
    const CDH: [u8; 32] = [0x5a; 32];
    const NOW_MS: u64 = 1_750_000_000_000;

    /// The corpus cuts verify_time to the second, and both responses were
    /// issued within that second (…:43.529 and …:42.989): at verify_time they
    /// are 529 and 989 ms in the future. One second of skew covers that.
    fn load_with_skew(name: &str) -> Case {
        let mut case = load(name);
        case.policy.safetynet_max_skew = Duration::from_secs(1);
        case
    }

    fn response(case: &Case) -> Vec<u8> {
        member(&case.object.att_stmt, "response")
            .as_bytes()
            .unwrap()
            .clone()
    }

    fn with_response(case: &Case, jws: Vec<u8>) -> Value {
        let mut stmt = case.object.att_stmt.clone();
        set_member(&mut stmt, "response", Value::Bytes(jws));
        stmt
    }

    fn refusal(result: Result<Verified, Error>) -> Error {
        match result {
            Ok(_) => panic!("accepted"),
            Err(e) => e,
        }
    }

    #[test]
    fn device_vectors_verify() {
        for (name, certs) in [(V2019, 2), (V2025, 3)] {
            let case = load_with_skew(name);
            let verified = case.run().unwrap_or_else(|e| panic!("{}: {e}", case.name));
            assert_eq!(
                verified.attestation_type,
                attestation::AttestationType::Basic
            );
            assert!(!verified.root_in_path_allowed);
            assert_eq!(verified.trust_path.len(), certs);
            assert_eq!(
                verified.trust_path[0].field,
                format!("{RESPONSE}.header.x5c[0]")
            );
        }
    }

    /// Evaluated at verify_time the "timestamp in past" relaxation is not
    /// needed: the default one-minute max age passes.
    #[test]
    fn device_vectors_are_fresh_at_their_verify_time() {
        for name in [V2019, V2025] {
            let case = load_with_skew(name);
            let policy = AttestationPolicy {
                safetynet_max_age: AttestationPolicy::default().safetynet_max_age,
                ..case.policy.clone()
            };
            case.run_with(
                &case.object.att_stmt,
                &case.client_data_hash,
                &policy,
                case.verify_time,
            )
            .unwrap();
        }
    }

    #[test]
    fn timestamp_freshness_is_enforced() {
        let case = load_with_skew(V2019);
        let strict_age = AttestationPolicy {
            safetynet_max_age: Duration::from_secs(60),
            ..case.policy.clone()
        };
        let run = |policy: &AttestationPolicy, now: SystemTime| {
            refusal(case.run_with(&case.object.att_stmt, &case.client_data_hash, policy, now))
        };
        let path = format!("{RESPONSE}.payload.timestampMs");

        // More than a minute old.
        let err = run(&strict_age, case.verify_time + Duration::from_secs(62));
        assert_eq!(err.field(), path);
        assert!(err.to_string().contains("older than"), "{err}");

        // In the future, beyond the allowed skew.
        let err = run(&strict_age, case.verify_time - Duration::from_secs(10));
        assert_eq!(err.field(), path);
        assert!(err.to_string().contains("in the future"), "{err}");

        // With no skew allowed, verify_time itself is 529 ms too early.
        let no_skew = AttestationPolicy {
            safetynet_max_skew: Duration::ZERO,
            ..strict_age.clone()
        };
        let err = run(&no_skew, case.verify_time);
        assert!(err.to_string().contains("529 ms in the future"), "{err}");
    }

    #[test]
    fn cts_profile_mismatch_is_refused_when_enforced() {
        let case = load_with_skew(V2025);
        let enforced = AttestationPolicy {
            safetynet_require_cts_profile: true,
            ..case.policy.clone()
        };
        let err = refusal(case.run_with(
            &case.object.att_stmt,
            &case.client_data_hash,
            &enforced,
            case.verify_time,
        ));
        assert!(matches!(err, Error::Policy { .. }), "{err}");
        assert_eq!(err.field(), format!("{RESPONSE}.payload.ctsProfileMatch"));
    }

    #[test]
    fn nonce_not_from_this_ceremony_is_refused() {
        for name in [V2019, V2025] {
            let case = load_with_skew(name);
            let mut other = case.client_data_hash;
            other[0] ^= 1;
            let err = refusal(case.run_with(
                &case.object.att_stmt,
                &other,
                &case.policy,
                case.verify_time,
            ));
            assert!(matches!(err, Error::Mismatch { .. }), "{err}");
            assert_eq!(err.field(), format!("{RESPONSE}.payload.nonce"));
        }
    }

    #[test]
    fn ver_and_response_are_required() {
        let case = load_with_skew(V2019);
        let run = |stmt: &Value| {
            refusal(case.run_with(stmt, &case.client_data_hash, &case.policy, case.verify_time))
        };
        let mut stmt = case.object.att_stmt.clone();
        set_member(&mut stmt, "ver", Value::Text(String::new()));
        assert_eq!(
            run(&stmt),
            Error::Empty {
                field: attestation::field("ver")
            }
        );
        set_member(&mut stmt, "ver", Value::Bytes(b"1".to_vec()));
        assert!(matches!(run(&stmt), Error::WrongType { .. }));
        remove_member(&mut stmt, "ver");
        assert_eq!(
            run(&stmt),
            Error::Missing {
                field: attestation::field("ver")
            }
        );

        let mut stmt = case.object.att_stmt.clone();
        set_member(&mut stmt, "response", Value::Bytes(vec![]));
        assert_eq!(
            run(&stmt),
            Error::Empty {
                field: attestation::field("response")
            }
        );
        set_member(&mut stmt, "response", Value::Text("a.b.c".into()));
        assert!(matches!(run(&stmt), Error::WrongType { .. }));
        remove_member(&mut stmt, "response");
        assert_eq!(
            run(&stmt),
            Error::Missing {
                field: attestation::field("response")
            }
        );
    }

    #[test]
    fn tampered_jws_is_refused() {
        let case = load_with_skew(V2019);
        let jws = response(&case);
        let text = std::str::from_utf8(&jws).unwrap();
        let (signing_input, signature) = text.rsplit_once('.').unwrap();
        let mut sig = URL_SAFE_NO_PAD.decode(signature).unwrap();
        sig[10] ^= 1;
        let tampered = format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(&sig));
        let err = refusal(case.run_with(
            &with_response(&case, tampered.into_bytes()),
            &case.client_data_hash,
            &case.policy,
            case.verify_time,
        ));
        assert_eq!(err, Error::bad_signature(format!("{RESPONSE}.signature")));

        // Same payload re-encoded with padding: not the compact serialization.
        let padded = format!("{text}==");
        let err = refusal(case.run_with(
            &with_response(&case, padded.into_bytes()),
            &case.client_data_hash,
            &case.policy,
            case.verify_time,
        ));
        assert_eq!(
            err,
            Error::NotBase64Url {
                field: format!("{RESPONSE}.signature")
            }
        );
    }

    /// Every prefix of a real response, and garbage: errors, never panics.
    #[test]
    fn truncated_and_garbage_jws_never_panic() {
        let case = load_with_skew(V2025);
        let jws = response(&case);
        let run = |bytes: Vec<u8>| {
            case.run_with(
                &with_response(&case, bytes),
                &case.client_data_hash,
                &case.policy,
                case.verify_time,
            )
        };
        for len in 0..jws.len() {
            assert!(
                run(jws[..len].to_vec()).is_err(),
                "prefix of {len} bytes accepted"
            );
        }
        for seed in 1..300u64 {
            let len = (seed as usize * 37) % 3000;
            assert!(run(garbage(seed, len)).is_err());
            // Garbage shaped like a JWS gets past the splitting.
            let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.";
            let shaped: Vec<u8> = garbage(seed, len)
                .iter()
                .map(|b| alphabet[*b as usize % alphabet.len()])
                .collect();
            assert!(run(shaped).is_err());
        }
        assert!(parse_jws(&vec![b'a'; MAX_JWS + 1]).is_err());
    }

    #[test]
    fn damaged_json_never_panics() {
        let deep = format!(
            "{}{}",
            "[".repeat(limits::NESTING + 1),
            "]".repeat(limits::NESTING + 1)
        );
        assert!(json_object(deep.as_bytes(), "p").is_err());
        let ok_depth = format!(
            "{{\"a\":{}{}}}",
            "[".repeat(limits::NESTING - 1),
            "]".repeat(limits::NESTING - 1)
        );
        json_object(ok_depth.as_bytes(), "p").unwrap();
        // Brackets inside strings do not count.
        json_object(
            format!("{{\"a\":\"{}\\\"\"}}", "[".repeat(100)).as_bytes(),
            "p",
        )
        .unwrap();
        let header = br#"{"alg":"RS256","x5c":["MIIB"]}"#;
        for len in 0..header.len() {
            let _ = json_object(&header[..len], "p");
        }
        for seed in 1..200u64 {
            let _ = json_object(&garbage(seed, seed as usize % 97), "p");
        }
    }

    // Statements made here: an attest.android.com leaf with our own key.

    struct Synth {
        header: serde_json::Value,
        payload: serde_json::Value,
        ver: Value,
    }

    impl Synth {
        fn new(leaf_der: &[u8]) -> Synth {
            let auth = auth_data(None);
            let mut signed = auth.raw.clone();
            signed.extend_from_slice(&CDH);
            Synth {
                header: serde_json::json!({"alg": "ES256", "x5c": [STANDARD.encode(leaf_der)]}),
                payload: serde_json::json!({
                    "nonce": STANDARD.encode(crate::keys::sha256(&signed)),
                    "timestampMs": NOW_MS - 2_000,
                    "apkPackageName": "com.google.android.gms",
                    "ctsProfileMatch": true,
                    "basicIntegrity": true,
                }),
                ver: Value::Text("252037029".into()),
            }
        }

        fn run(
            &self,
            signer: &EcdsaKeyPair,
            policy: &AttestationPolicy,
        ) -> Result<Verified, Error> {
            let input = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(self.header.to_string()),
                URL_SAFE_NO_PAD.encode(self.payload.to_string())
            );
            let jws = format!(
                "{input}.{}",
                URL_SAFE_NO_PAD.encode(sign(signer, input.as_bytes()))
            );
            let att_stmt = Value::Map(vec![
                (Value::Text("ver".into()), self.ver.clone()),
                (
                    Value::Text("response".into()),
                    Value::Bytes(jws.into_bytes()),
                ),
            ]);
            attestation::verify(&attestation::Statement {
                fmt: "android-safetynet",
                att_stmt: &att_stmt,
                auth_data: &auth_data(None),
                client_data_hash: &CDH,
                policy,
                now: SystemTime::UNIX_EPOCH + Duration::from_millis(NOW_MS),
            })
        }
    }

    fn es256_leaf(cn: &str, extensions: &[Vec<u8>]) -> (EcdsaKeyPair, Vec<u8>) {
        let (key, _, spki) = ec_key(&ECDSA_P256_SHA256_FIXED_SIGNING, false);
        (key, cert(cn, &spki, extensions))
    }

    fn san(names: &[&str]) -> Vec<u8> {
        let general: Vec<Vec<u8>> = names.iter().map(|n| tlv(&[0x82], n.as_bytes())).collect();
        extension(&oid::SUBJECT_ALT_NAME, &seq(&general))
    }

    #[test]
    fn synthetic_es256_statement_verifies() {
        let (key, leaf) = es256_leaf(HOSTNAME, &[]);
        Synth::new(&leaf)
            .run(&key, &AttestationPolicy::default())
            .unwrap();
        let (key, leaf) = es256_leaf("someone else", &[san(&["ATTEST.android.com"])]);
        Synth::new(&leaf)
            .run(&key, &AttestationPolicy::default())
            .unwrap();
    }

    #[test]
    fn synthetic_payload_claims_are_checked() {
        let (key, leaf) = es256_leaf(HOSTNAME, &[]);
        let strict = AttestationPolicy::default();
        let claim = |name: &str, value: serde_json::Value| {
            let mut s = Synth::new(&leaf);
            s.payload[name] = value;
            refusal(s.run(&key, &strict))
        };
        let path = |name: &str| format!("{RESPONSE}.payload.{name}");

        let err = claim("ctsProfileMatch", false.into());
        assert_eq!(err.field(), path("ctsProfileMatch"));
        let err = claim("basicIntegrity", false.into());
        assert_eq!(err.field(), path("basicIntegrity"));
        let err = claim("ctsProfileMatch", "true".into());
        assert!(matches!(err, Error::WrongType { .. }), "{err}");

        // Just past the tolerated clock skew.
        let skew_ms = AttestationPolicy::default().safetynet_max_skew.as_millis() as u64;
        let err = claim("timestampMs", (NOW_MS + skew_ms + 1).into());
        assert!(err.to_string().contains("in the future"), "{err}");
        let err = claim("timestampMs", (NOW_MS - 60_001).into());
        assert!(err.to_string().contains("older than"), "{err}");
        let err = claim("timestampMs", 1.5e12.into());
        assert!(matches!(err, Error::WrongType { .. }), "{err}");
        let err = claim("timestampMs", u64::MAX.into());
        assert_eq!(err.field(), path("timestampMs"));

        let err = claim("nonce", STANDARD.encode([0u8; 32]).into());
        assert_eq!(err.field(), path("nonce"));

        // The boundaries themselves are accepted.
        for ts in [NOW_MS, NOW_MS - 60_000] {
            let mut s = Synth::new(&leaf);
            s.payload["timestampMs"] = ts.into();
            s.run(&key, &strict).unwrap();
        }
        // Without CTS enforcement, a false or absent ctsProfileMatch passes.
        let relaxed = AttestationPolicy {
            safetynet_require_cts_profile: false,
            ..strict.clone()
        };
        let mut s = Synth::new(&leaf);
        s.payload["ctsProfileMatch"] = false.into();
        s.run(&key, &relaxed).unwrap();
        s.payload.as_object_mut().unwrap().remove("ctsProfileMatch");
        s.run(&key, &relaxed).unwrap();
        assert_eq!(
            refusal(s.run(&key, &strict)).field(),
            path("ctsProfileMatch")
        );
    }

    #[test]
    fn header_is_checked() {
        let (key, leaf) = es256_leaf(HOSTNAME, &[]);
        let strict = AttestationPolicy::default();
        let header = |value: serde_json::Value| {
            let mut s = Synth::new(&leaf);
            s.header = value;
            refusal(s.run(&key, &strict))
        };
        let x5c = STANDARD.encode(&leaf);

        let err = header(serde_json::json!({"alg": "ES256", "x5c": []}));
        assert_eq!(
            err,
            Error::Empty {
                field: format!("{RESPONSE}.header.x5c")
            }
        );
        let err = header(serde_json::json!({"alg": "ES256"}));
        assert_eq!(
            err,
            Error::Missing {
                field: format!("{RESPONSE}.header.x5c")
            }
        );
        let err = header(
            serde_json::json!({"alg": "ES256", "x5c": vec![x5c.clone(); limits::X5C_CERTS + 1]}),
        );
        assert!(matches!(err, Error::TooLarge { .. }), "{err}");
        // x5c is standard base64 (RFC 7515 §4.1.6), not base64url. A random
        // certificate's base64url text may happen to contain neither '-'
        // nor '_' and so be valid standard base64 too; force one in.
        let url_safe = format!("-{}", &URL_SAFE_NO_PAD.encode(&leaf)[1..]);
        let err = header(serde_json::json!({"alg": "ES256", "x5c": [url_safe]}));
        assert_eq!(err.field(), format!("{RESPONSE}.header.x5c[0]"));
        for alg in ["none", "HS256", "PS256", "es256"] {
            let err = header(serde_json::json!({"alg": alg, "x5c": [x5c]}));
            assert_eq!(err.field(), format!("{RESPONSE}.header.alg"), "{alg}");
        }
        let err = header(serde_json::json!({"alg": "RS256", "x5c": [x5c]}));
        assert!(matches!(err, Error::Algorithm { .. }), "{err}");
        let err = header(serde_json::json!({"alg": "ES384", "x5c": [x5c]}));
        assert!(matches!(err, Error::Algorithm { .. }), "{err}");
        let err = header(serde_json::json!({"alg": "ES256", "x5c": [x5c], "crit": ["b64"]}));
        assert_eq!(err.field(), format!("{RESPONSE}.header.crit"));
        let err = header(serde_json::json!(["ES256"]));
        assert!(matches!(err, Error::WrongType { .. }), "{err}");
    }

    #[test]
    fn signer_must_be_attest_android_com() {
        let strict = AttestationPolicy::default();
        for (cn, extensions) in [
            ("attest.android.com.evil.example", vec![]),
            ("*.android.com", vec![]),
            // subjectAltName decides when it names hosts, whatever the CN says.
            (HOSTNAME, vec![san(&["evil.example"])]),
        ] {
            let (key, leaf) = es256_leaf(cn, &extensions);
            let err = refusal(Synth::new(&leaf).run(&key, &strict));
            assert!(matches!(err, Error::Mismatch { .. }), "{cn}: {err}");
            assert!(
                err.field()
                    .starts_with(&format!("{RESPONSE}.header.x5c[0].")),
                "{err}"
            );
        }
    }

    #[test]
    fn signature_must_come_from_the_leaf_key() {
        let strict = AttestationPolicy::default();
        let (_, leaf) = es256_leaf(HOSTNAME, &[]);
        let (other, _) = es256_leaf(HOSTNAME, &[]);
        let err = refusal(Synth::new(&leaf).run(&other, &strict));
        assert_eq!(err, Error::bad_signature(format!("{RESPONSE}.signature")));

        // ES256 names P-256; a P-384 leaf does not qualify, whatever it signs.
        let (p384, _, spki) = ec_key(&ECDSA_P384_SHA384_FIXED_SIGNING, true);
        let leaf = cert(HOSTNAME, &spki, &[]);
        let err = refusal(Synth::new(&leaf).run(&p384, &strict));
        assert!(matches!(err, Error::Algorithm { .. }), "{err}");
        let mut s = Synth::new(&leaf);
        s.header["alg"] = "ES384".into();
        s.run(&p384, &strict).unwrap();
    }

    #[test]
    fn raw_ecdsa_signatures_convert_to_der() {
        assert!(ecdsa_raw_to_der(&[1; 63], 32, "s").is_err());
        assert!(ecdsa_raw_to_der(&[1; 65], 32, "s").is_err());
        // High bit set: DER needs a leading zero; leading zeros: stripped.
        let mut raw = [0u8; 64];
        raw[0] = 0x80;
        raw[63] = 1;
        let der_sig = ecdsa_raw_to_der(&raw, 32, "s").unwrap();
        assert_eq!(&der_sig[..5], &[0x30, 0x26, 0x02, 0x21, 0x00]);
        assert_eq!(&der_sig[der_sig.len() - 3..], &[0x02, 0x01, 0x01]);
    }
}
