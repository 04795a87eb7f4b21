//! `android-key` (WebAuthn L3 §8.4). The credential key pair lives in the
//! Android Keystore, and the attestation certificate is issued for that very
//! key: its KeyDescription extension (1.3.6.1.4.1.11129.2.1.17) says who
//! asked for it (attestationChallenge), where it was made and what it may do.
//!
//! The AuthorizationLists inside use EXPLICIT context tags up to `[7xx]`, in the
//! high-tag-number form. der 0.8 decodes those tags, but each list is read
//! entry by entry as `AnyRef`s rather than through a derived struct: every
//! Android release adds tags, and an unknown one must not fail the parse.

use der::asn1::{AnyRef, OctetStringRef};
use der::{Decode, Reader, SliceReader, Tag, Tagged};

use super::{AttestationType, Statement, Verified, alg_member, bytes_member, field};
use crate::webauthn::certpath::{Cert, oid, parse_x5c};
use crate::webauthn::{CoseAlgorithm, Error, constant_time_eq};

/// KM_ORIGIN_GENERATED: made inside the keystore, so the private key never
/// existed outside it (an imported key may have copies anywhere).
const KM_ORIGIN_GENERATED: u64 = 0;
/// KM_PURPOSE_SIGN
const KM_PURPOSE_SIGN: u64 = 2;

const TAG_PURPOSE: u32 = 1;
const TAG_ALL_APPLICATIONS: u32 = 600;
const TAG_ORIGIN: u32 = 702;

/// Android defines about 50 AuthorizationList tags; anything far beyond is
/// not a keystore talking.
const MAX_AUTHORIZATIONS: usize = 128;
/// Keystore purposes number fewer than ten.
const MAX_PURPOSES: usize = 16;

/// Where the attestation (or the key) lives: KeyDescription `SecurityLevel`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SecurityLevel {
    Software,
    TrustedEnvironment,
    StrongBox,
}

impl SecurityLevel {
    /// The name signet records: `software`, `tee` or `strongbox`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            SecurityLevel::Software => "software",
            SecurityLevel::TrustedEnvironment => "tee",
            SecurityLevel::StrongBox => "strongbox",
        }
    }
}

/// The properties of one AuthorizationList that §8.4 looks at.
#[derive(Debug, Default)]
pub(crate) struct AuthorizationList {
    pub(crate) purposes: Option<Vec<u64>>,
    origin: Option<u64>,
    all_applications: bool,
}

/// A parsed KeyDescription; the fields not checked are still decoded, so a
/// malformed one is refused rather than half-read.
#[derive(Debug)]
pub(crate) struct KeyDescription<'a> {
    pub(crate) attestation_version: u64,
    pub(crate) attestation_security_level: SecurityLevel,
    /// keymasterSecurityLevel (KeyMint's, from attestation version 100 on).
    pub(crate) keymaster_security_level: SecurityLevel,
    pub(crate) attestation_challenge: &'a [u8],
    pub(crate) software_enforced: AuthorizationList,
    pub(crate) tee_enforced: AuthorizationList,
}

pub fn verify(stmt: &Statement<'_>) -> Result<Verified, Error> {
    let alg_id = alg_member(stmt)?;
    let alg = CoseAlgorithm::from_id(alg_id).ok_or_else(|| Error::Algorithm {
        field: field("alg"),
        alg: alg_id,
        reason: "is not supported",
    })?;
    let sig = bytes_member(stmt, "sig")?;
    let x5c = match stmt.member("x5c") {
        None => {
            return Err(Error::Missing {
                field: field("x5c"),
            });
        }
        Some(value) => parse_x5c(value, &field("x5c"))?,
    };
    let Some(leaf) = x5c.first() else {
        return Err(Error::Empty {
            field: field("x5c"),
        });
    };

    let leaf_key = leaf.public_key()?;
    leaf_key.verify(alg, &stmt.signed_data(), sig, &field("sig"))?;

    // The certificate must be for the credential itself, or it attests some
    // other keystore key and says nothing about this one.
    let Some(attested) = &stmt.auth_data.attested else {
        return Err(Error::Missing {
            field: "response.attestationObject.authData.attestedCredentialData".into(),
        });
    };
    if leaf_key != attested.public_key.key {
        return Err(Error::mismatch(
            format!("{}.subjectPublicKeyInfo", leaf.field),
            "is not the credential public key of authData.attestedCredentialData",
        ));
    }

    let description = parse_key_description(key_description_extension(leaf)?, &leaf.field)?;
    if !constant_time_eq(description.attestation_challenge, stmt.client_data_hash) {
        return Err(Error::mismatch(
            format!("{}.attestationChallenge", leaf.field),
            "is not the clientDataHash of this ceremony",
        ));
    }
    check_key_description(
        &description,
        stmt.policy.android_allow_software,
        &leaf.field,
    )?;

    Ok(Verified {
        attestation_type: AttestationType::Basic,
        trust_path: x5c,
        // Android chains are sent up to and including the Google root.
        root_in_path_allowed: true,
    })
}

/// The KeyDescription extension value. Exactly one: with two, which one a
/// verifier reads would decide the outcome.
pub(crate) fn key_description_extension(leaf: &Cert) -> Result<&[u8], Error> {
    let path = format!("{}.keyDescription", leaf.field);
    let mut found = leaf
        .tbs()
        .extensions()
        .into_iter()
        .flatten()
        .filter(|e| e.extn_id == oid::ANDROID_KEY_DESCRIPTION);
    let Some(extension) = found.next() else {
        return Err(Error::Missing { field: path });
    };
    if found.next().is_some() {
        return Err(Error::malformed(
            path,
            "extension 1.3.6.1.4.1.11129.2.1.17 appears more than once",
        ));
    }
    Ok(extension.extn_value.as_bytes())
}

/// Parses a KeyDescription (Android Keystore attestation schema, any
/// attestationVersion: the top level has not changed since version 1).
/// `base` is the certificate's JSON path.
pub(crate) fn parse_key_description<'a>(
    bytes: &'a [u8],
    base: &str,
) -> Result<KeyDescription<'a>, Error> {
    let at = |name: &str| format!("{base}.{name}");
    let outer = AnyRef::from_der(bytes).map_err(|e| Error::malformed(at("keyDescription"), e))?;
    let mut r = sequence_reader(outer, &at("keyDescription"), "a SEQUENCE (KeyDescription)")?;

    let attestation_version: u64 = r
        .decode()
        .map_err(|e| Error::malformed(at("attestationVersion"), e))?;
    let attestation_security_level = security_level(&mut r, &at("attestationSecurityLevel"))?;
    let _keymaster_version: u64 = r
        .decode()
        .map_err(|e| Error::malformed(at("keymasterVersion"), e))?;
    let keymaster_security_level = security_level(&mut r, &at("keymasterSecurityLevel"))?;
    let challenge: &OctetStringRef = r
        .decode()
        .map_err(|e| Error::malformed(at("attestationChallenge"), e))?;
    let _unique_id: &OctetStringRef = r
        .decode()
        .map_err(|e| Error::malformed(at("uniqueId"), e))?;
    let software_enforced = authorization_list(&mut r, &at("softwareEnforced"))?;
    let tee_enforced = authorization_list(&mut r, &at("teeEnforced"))?;
    if !r.is_finished() {
        return Err(Error::malformed(
            at("keyDescription"),
            "data after teeEnforced",
        ));
    }
    Ok(KeyDescription {
        attestation_version,
        attestation_security_level,
        keymaster_security_level,
        attestation_challenge: challenge.as_bytes(),
        software_enforced,
        tee_enforced,
    })
}

fn sequence_reader<'a>(
    any: AnyRef<'a>,
    path: &str,
    expected: &'static str,
) -> Result<SliceReader<'a>, Error> {
    if any.tag() != Tag::Sequence {
        return Err(Error::WrongType {
            field: path.to_string(),
            expected,
        });
    }
    SliceReader::new(any.value()).map_err(|e| Error::malformed(path, e))
}

/// An ENUMERATED SecurityLevel. Read by hand so that an unknown level is
/// named as such instead of as a generic decoding error.
fn security_level(r: &mut SliceReader<'_>, path: &str) -> Result<SecurityLevel, Error> {
    let any: AnyRef<'_> = r.decode().map_err(|e| Error::malformed(path, e))?;
    if any.tag() != Tag::Enumerated {
        return Err(Error::WrongType {
            field: path.to_string(),
            expected: "an ENUMERATED SecurityLevel",
        });
    }
    // ENUMERATED shares INTEGER's value encoding; reuse its minimality checks.
    let value: u32 = AnyRef::new(Tag::Integer, any.value())
        .and_then(|v| v.decode_as::<u32>())
        .map_err(|e| Error::malformed(path, e))?;
    match value {
        0 => Ok(SecurityLevel::Software),
        1 => Ok(SecurityLevel::TrustedEnvironment),
        2 => Ok(SecurityLevel::StrongBox),
        other => Err(Error::malformed(
            path,
            format!("unknown security level {other}"),
        )),
    }
}

/// Reads one AuthorizationList, keeping what §8.4 checks. Entries may come
/// in any order (only their tags identify them), but never twice: with a
/// repeated tag, which copy counts would be the parser's choice.
fn authorization_list(r: &mut SliceReader<'_>, path: &str) -> Result<AuthorizationList, Error> {
    let list: AnyRef<'_> = r.decode().map_err(|e| Error::malformed(path, e))?;
    let mut entries = sequence_reader(list, path, "a SEQUENCE (AuthorizationList)")?;
    let mut out = AuthorizationList::default();
    let mut seen: Vec<u32> = Vec::new();
    while !entries.is_finished() {
        let entry: AnyRef<'_> = entries.decode().map_err(|e| Error::malformed(path, e))?;
        let Tag::ContextSpecific {
            constructed: true,
            number,
        } = entry.tag()
        else {
            return Err(Error::malformed(
                path,
                format!(
                    "entry {} is not an EXPLICIT context-specific tag",
                    entry.tag()
                ),
            ));
        };
        let number = number.value();
        if seen.contains(&number) {
            return Err(Error::malformed(
                path,
                format!("tag [{number}] appears more than once"),
            ));
        }
        if seen.len() == MAX_AUTHORIZATIONS {
            return Err(Error::malformed(
                path,
                format!("more than {MAX_AUTHORIZATIONS} entries"),
            ));
        }
        seen.push(number);
        // EXPLICIT: the entry holds exactly one complete TLV, known tag or not.
        let inner = AnyRef::from_der(entry.value())
            .map_err(|e| Error::malformed(format!("{path}[{number}]"), e))?;
        match number {
            TAG_PURPOSE => out.purposes = Some(purposes(inner, &format!("{path}.purpose"))?),
            TAG_ALL_APPLICATIONS => out.all_applications = true,
            TAG_ORIGIN => {
                let origin = inner
                    .decode_as::<u64>()
                    .map_err(|e| Error::malformed(format!("{path}.origin"), e))?;
                out.origin = Some(origin);
            }
            _ => {}
        }
    }
    Ok(out)
}

/// `purpose [1] EXPLICIT SET OF INTEGER`.
fn purposes(inner: AnyRef<'_>, path: &str) -> Result<Vec<u64>, Error> {
    if inner.tag() != Tag::Set {
        return Err(Error::WrongType {
            field: path.to_string(),
            expected: "a SET OF INTEGER",
        });
    }
    let mut r = SliceReader::new(inner.value()).map_err(|e| Error::malformed(path, e))?;
    let mut out = Vec::new();
    while !r.is_finished() {
        if out.len() == MAX_PURPOSES {
            return Err(Error::malformed(
                path,
                format!("more than {MAX_PURPOSES} purposes"),
            ));
        }
        out.push(r.decode::<u64>().map_err(|e| Error::malformed(path, e))?);
    }
    Ok(out)
}

/// The authorization lists a policy reads, and how to say a tag is in
/// none of them. Software-enforced authorizations count only when the RP
/// accepts software attestation (§8.4: teeEnforced alone, or the union).
fn readable_lists<'k>(
    kd: &'k KeyDescription<'_>,
    allow_software: bool,
) -> (Vec<(&'static str, &'k AuthorizationList)>, &'static str) {
    let sw = ("softwareEnforced", &kd.software_enforced);
    let tee = ("teeEnforced", &kd.tee_enforced);
    if allow_software {
        (
            vec![tee, sw],
            "absent from both teeEnforced and softwareEnforced",
        )
    } else {
        (
            vec![tee],
            "absent from teeEnforced (software-enforced authorizations are not accepted)",
        )
    }
}

/// The key was generated inside the keystore (KM_ORIGIN_GENERATED), as the
/// lists this policy reads say: an imported key existed outside the
/// secure hardware, so its attestation proves nothing about where it is.
pub(crate) fn check_generated(
    kd: &KeyDescription<'_>,
    allow_software: bool,
    base: &str,
) -> Result<(), Error> {
    let sw = ("softwareEnforced", &kd.software_enforced);
    let tee = ("teeEnforced", &kd.tee_enforced);
    // A key has one origin. Lists that disagree about it mean one of them is
    // wrong, whichever list this policy reads.
    for (name, list) in [sw, tee] {
        if let Some(origin) = list.origin
            && origin != KM_ORIGIN_GENERATED
        {
            return Err(Error::policy(
                format!("{base}.{name}.origin"),
                format!(
                    "is {origin}, not KM_ORIGIN_GENERATED (0): the key was not generated in the keystore"
                ),
            ));
        }
    }

    let (readable, absent_from) = readable_lists(kd, allow_software);
    if !readable.iter().any(|(_, list)| list.origin.is_some()) {
        return Err(Error::policy(
            format!("{base}.teeEnforced.origin"),
            absent_from,
        ));
    }
    Ok(())
}

/// §8.4's checks on the authorization lists, and the security level.
fn check_key_description(
    kd: &KeyDescription<'_>,
    allow_software: bool,
    base: &str,
) -> Result<(), Error> {
    let sw = ("softwareEnforced", &kd.software_enforced);
    let tee = ("teeEnforced", &kd.tee_enforced);

    for (name, list) in [sw, tee] {
        if list.all_applications {
            return Err(Error::policy(
                format!("{base}.{name}.allApplications"),
                "is present: the key is usable by every app on the device, not scoped to this RP ID",
            ));
        }
    }

    match kd.attestation_security_level {
        SecurityLevel::TrustedEnvironment | SecurityLevel::StrongBox => {}
        SecurityLevel::Software if allow_software => {}
        SecurityLevel::Software => {
            return Err(Error::policy(
                format!("{base}.attestationSecurityLevel"),
                "is Software: the Android software keystore attested this key, not secure hardware",
            ));
        }
    }

    check_generated(kd, allow_software, base)?;
    let (readable, absent_from) = readable_lists(kd, allow_software);
    if !readable.iter().any(|(_, list)| {
        list.purposes
            .as_ref()
            .is_some_and(|p| p.contains(&KM_PURPOSE_SIGN))
    }) {
        let present = readable.iter().find(|(_, list)| list.purposes.is_some());
        return Err(match present {
            Some((name, _)) => Error::policy(
                format!("{base}.{name}.purpose"),
                "does not include KM_PURPOSE_SIGN (2)",
            ),
            None => Error::policy(format!("{base}.teeEnforced.purpose"), absent_from),
        });
    }
    Ok(())
}

/// Vector loading and DER building shared by the Android format tests.
#[cfg(test)]
pub(crate) mod test_support {
    use std::time::{Duration, SystemTime};

    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{self as sig, EcdsaKeyPair, KeyPair};
    use ciborium::Value;
    use der::Encode;

    use crate::webauthn::attestation::{self, AttestationPolicy, Statement, Verified};
    use crate::webauthn::authenticator_data::AuthenticatorData;
    use crate::webauthn::certpath::oid;
    use crate::webauthn::registration::AttestationObject;
    use crate::webauthn::{Error, b64url_decode};

    pub(crate) const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/vectors/");

    /// A registration vector, decoded, with the policy its accept_conditions name.
    pub(crate) struct Case {
        pub name: String,
        pub object: AttestationObject,
        pub client_data_hash: [u8; 32],
        pub verify_time: SystemTime,
        pub policy: AttestationPolicy,
    }

    impl Case {
        pub(crate) fn run(&self) -> Result<Verified, Error> {
            self.run_with(
                &self.object.att_stmt,
                &self.client_data_hash,
                &self.policy,
                self.verify_time,
            )
        }

        pub(crate) fn run_with(
            &self,
            att_stmt: &Value,
            client_data_hash: &[u8; 32],
            policy: &AttestationPolicy,
            now: SystemTime,
        ) -> Result<Verified, Error> {
            attestation::verify(&Statement {
                fmt: &self.object.fmt,
                att_stmt,
                auth_data: &self.object.auth_data,
                client_data_hash,
                policy,
                now,
            })
        }
    }

    /// Loads `shared/vectors/<relative>`; a missing corpus fails the test.
    pub(crate) fn load(relative: &str) -> Case {
        let path = format!("{VECTORS}{relative}");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!("test vector {path} is required and could not be read: {e}")
        });
        let json: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: not JSON: {e}"));
        let text_field = |name: &str| {
            json[name]
                .as_str()
                .unwrap_or_else(|| panic!("{path}: {name} missing"))
                .to_string()
        };
        let bytes_field = |name: &str| b64url_decode(name, &text_field(name), 1 << 20).unwrap();
        let verify_time = parse_time(&text_field("verify_time"));
        let conditions: Vec<String> = json["accept_conditions"]
            .as_array()
            .unwrap_or_else(|| panic!("{path}: accept_conditions missing"))
            .iter()
            .map(|c| c.as_str().unwrap().to_string())
            .collect();
        Case {
            name: text_field("name"),
            object: AttestationObject::parse(&bytes_field("attestationObject")).unwrap(),
            client_data_hash: crate::keys::sha256(&bytes_field("clientDataJSON")),
            verify_time,
            policy: policy_for(&conditions, verify_time),
        }
    }

    /// The relaxations a vector's accept_conditions ask of the statement
    /// check. An unknown condition fails: it has to be read before trusted.
    pub(crate) fn policy_for(conditions: &[String], verify_time: SystemTime) -> AttestationPolicy {
        let mut policy = AttestationPolicy::default();
        for condition in conditions {
            match condition.as_str() {
                "software_attestation_root" => policy.android_allow_software = true,
                "safetynet_cts_not_enforced" => policy.safetynet_require_cts_profile = false,
                "safetynet_timestamp_in_past" => {
                    policy.safetynet_max_age =
                        verify_time.duration_since(SystemTime::UNIX_EPOCH).unwrap();
                }
                // Conditions on client data and chain building, not on the statement.
                "x5c_contains_root" | "escaped_slashes_in_clientDataJSON" | "non_https_origin" => {}
                other => panic!("accept condition {other:?} is not mapped to a policy"),
            }
        }
        policy
    }

    /// `YYYY-MM-DDTHH:MM:SSZ`
    pub(crate) fn parse_time(text: &str) -> SystemTime {
        let n = |range: std::ops::Range<usize>| -> u16 { text[range].parse().unwrap() };
        assert!(
            text.len() == 20 && text.ends_with('Z'),
            "unexpected time {text}"
        );
        der::DateTime::new(
            n(0..4),
            n(5..7) as u8,
            n(8..10) as u8,
            n(11..13) as u8,
            n(14..16) as u8,
            n(17..19) as u8,
        )
        .unwrap()
        .to_system_time()
    }

    pub(crate) fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// Replaces (or adds) a member of a CBOR map.
    pub(crate) fn set_member(map: &mut Value, name: &str, value: Value) {
        let Value::Map(entries) = map else {
            panic!("not a map")
        };
        entries.retain(|(k, _)| !matches!(k, Value::Text(t) if t == name));
        entries.push((Value::Text(name.into()), value));
    }

    pub(crate) fn remove_member(map: &mut Value, name: &str) {
        let Value::Map(entries) = map else {
            panic!("not a map")
        };
        entries.retain(|(k, _)| !matches!(k, Value::Text(t) if t == name));
    }

    pub(crate) fn member<'v>(map: &'v Value, name: &str) -> &'v Value {
        attestation::map_get(map, name).unwrap_or_else(|| panic!("attStmt.{name} missing"))
    }

    /// Deterministic garbage (xorshift), so failures reproduce.
    pub(crate) fn garbage(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    // DER, written by hand so tests can also write what der refuses to.

    pub(crate) fn tlv(tag: &[u8], body: &[u8]) -> Vec<u8> {
        let mut out = tag.to_vec();
        if body.len() < 0x80 {
            out.push(body.len() as u8);
        } else {
            let len = body.len().to_be_bytes();
            let skip = len.iter().position(|b| *b != 0).unwrap();
            out.push(0x80 | (len.len() - skip) as u8);
            out.extend_from_slice(&len[skip..]);
        }
        out.extend_from_slice(body);
        out
    }

    pub(crate) fn seq(parts: &[Vec<u8>]) -> Vec<u8> {
        tlv(&[0x30], &parts.concat())
    }

    /// `[number] EXPLICIT`, in the high-tag-number form from 31 up.
    pub(crate) fn explicit(number: u32, inner: &[u8]) -> Vec<u8> {
        let mut tag = Vec::new();
        if number < 31 {
            tag.push(0xa0 | number as u8);
        } else {
            tag.push(0xbf);
            let mut groups = Vec::new();
            let mut n = number;
            loop {
                groups.push((n & 0x7f) as u8);
                n >>= 7;
                if n == 0 {
                    break;
                }
            }
            for (i, g) in groups.iter().enumerate().rev() {
                tag.push(if i == 0 { *g } else { g | 0x80 });
            }
        }
        tlv(&tag, inner)
    }

    pub(crate) fn int(v: u64) -> Vec<u8> {
        let bytes = v.to_be_bytes();
        let skip = bytes.iter().position(|b| *b != 0).unwrap_or(7);
        let mut body = bytes[skip..].to_vec();
        if body[0] & 0x80 != 0 {
            body.insert(0, 0);
        }
        tlv(&[0x02], &body)
    }

    pub(crate) fn oid_der(o: &der::asn1::ObjectIdentifier) -> Vec<u8> {
        o.to_der().unwrap()
    }

    pub(crate) fn extension(id: &der::asn1::ObjectIdentifier, value: &[u8]) -> Vec<u8> {
        seq(&[oid_der(id), tlv(&[0x04], value)])
    }

    fn name(cn: &str) -> Vec<u8> {
        let cn_oid = der::asn1::ObjectIdentifier::new_unwrap("2.5.4.3");
        seq(&[tlv(
            &[0x31],
            &seq(&[oid_der(&cn_oid), tlv(&[0x0c], cn.as_bytes())]),
        )])
    }

    /// A v3 certificate for `spki`. The signature is not a real one: statement
    /// checks never verify it (that is certpath's job).
    pub(crate) fn cert(cn: &str, spki: &[u8], extensions: &[Vec<u8>]) -> Vec<u8> {
        let alg = seq(&[oid_der(&oid::ECDSA_SHA256)]);
        let validity = seq(&[
            tlv(&[0x17], b"200101000000Z"),
            tlv(&[0x17], b"491231235959Z"),
        ]);
        let mut tbs = vec![
            explicit(0, &int(2)),
            int(1),
            alg.clone(),
            name("Test CA"),
            validity,
            name(cn),
            spki.to_vec(),
        ];
        if !extensions.is_empty() {
            tbs.push(explicit(3, &seq(extensions)));
        }
        seq(&[seq(&tbs), alg, tlv(&[0x03], &[0, 0x5a])])
    }

    /// A fresh EC key pair for `alg` and its SubjectPublicKeyInfo.
    pub(crate) fn ec_key(
        alg: &'static sig::EcdsaSigningAlgorithm,
        p384: bool,
    ) -> (EcdsaKeyPair, Vec<u8>, Vec<u8>) {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref()).unwrap();
        let point = key.public_key().as_ref().to_vec();
        let curve = if p384 {
            "1.3.132.0.34"
        } else {
            "1.2.840.10045.3.1.7"
        };
        let spki = seq(&[
            seq(&[
                oid_der(&der::asn1::ObjectIdentifier::new_unwrap(
                    "1.2.840.10045.2.1",
                )),
                oid_der(&der::asn1::ObjectIdentifier::new_unwrap(curve)),
            ]),
            tlv(&[0x03], &[&[0u8][..], &point].concat()),
        ]);
        (key, point, spki)
    }

    pub(crate) fn sign(key: &EcdsaKeyPair, message: &[u8]) -> Vec<u8> {
        key.sign(&SystemRandom::new(), message)
            .unwrap()
            .as_ref()
            .to_vec()
    }

    /// Authenticator data with (or without) a P-256 credential.
    pub(crate) fn auth_data(credential_point: Option<&[u8]>) -> AuthenticatorData {
        let mut raw = vec![0x11; 32];
        raw.push(if credential_point.is_some() {
            0x45
        } else {
            0x05
        });
        raw.extend([0, 0, 0, 0]);
        if let Some(point) = credential_point {
            raw.extend([0x22; 16]);
            raw.extend([0, 16]);
            raw.extend([0x33; 16]);
            raw.extend(crate::webauthn::cose_key::cose_p256(
                point.try_into().unwrap(),
            ));
        }
        AuthenticatorData::parse(&raw, "response.attestationObject.authData").unwrap()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING;
    use ciborium::Value;

    use super::test_support::*;
    use super::*;
    use crate::webauthn::attestation::{self, AttestationPolicy};

    const W3C: &str = "w3c/android-key-es256.registration.json";
    const DEVICES: [&str; 3] = [
        "devices/simplewebauthn-galaxy-s9plus-android-key.registration.json",
        "devices/simplewebauthn-pixel-8a-android-key.registration.json",
        "devices/webauthn-rs-android-key-software-root.registration.json",
    ];
    const LEAF: &str = "response.attestationObject.attStmt.x5c[0]";
    const CDH: [u8; 32] = [0x5a; 32];

    fn x5c_ders(case: &Case) -> Vec<Vec<u8>> {
        let Value::Array(items) = member(&case.object.att_stmt, "x5c") else {
            panic!("x5c")
        };
        items
            .iter()
            .map(|v| v.as_bytes().unwrap().clone())
            .collect()
    }

    fn with_x5c(case: &Case, ders: Vec<Vec<u8>>) -> Value {
        let mut stmt = case.object.att_stmt.clone();
        set_member(
            &mut stmt,
            "x5c",
            Value::Array(ders.into_iter().map(Value::Bytes).collect()),
        );
        stmt
    }

    fn policy_field(result: Result<attestation::Verified, Error>) -> (String, String) {
        match result {
            Err(e @ Error::Policy { .. }) => (e.field().to_string(), e.to_string()),
            other => panic!("expected a policy refusal, got {other:?}"),
        }
    }

    #[test]
    fn device_vectors_verify() {
        for name in DEVICES {
            let case = load(name);
            let verified = case.run().unwrap_or_else(|e| panic!("{}: {e}", case.name));
            let ders = x5c_ders(&case);
            assert_eq!(
                verified.attestation_type,
                attestation::AttestationType::Basic
            );
            assert!(verified.root_in_path_allowed);
            assert_eq!(verified.trust_path.len(), ders.len(), "{}", case.name);
            for (cert, der_bytes) in verified.trust_path.iter().zip(&ders) {
                assert_eq!(&cert.der, der_bytes);
            }
        }
    }

    /// The corpus holds the W3C vector as published before w3c/webauthn#2379:
    /// its generator wrote Software security levels and empty authorization
    /// lists, so no origin and no purpose. Signature, key and challenge are
    /// right (those checks come first); the lists are not, so it is refused.
    #[test]
    fn w3c_vector_is_refused_for_its_empty_authorization_lists() {
        let case = load(W3C);
        let (field, _) = policy_field(case.run());
        assert_eq!(field, format!("{LEAF}.attestationSecurityLevel"));

        let mut policy = case.policy.clone();
        policy.android_allow_software = true;
        let (field, message) = policy_field(case.run_with(
            &case.object.att_stmt,
            &case.client_data_hash,
            &policy,
            case.verify_time,
        ));
        assert_eq!(field, format!("{LEAF}.teeEnforced.origin"));
        assert!(message.contains("absent from both"), "{message}");
    }

    #[test]
    fn software_attestation_needs_the_policy() {
        let case = load(DEVICES[2]);
        let strict = AttestationPolicy::default();
        let (field, message) = policy_field(case.run_with(
            &case.object.att_stmt,
            &case.client_data_hash,
            &strict,
            case.verify_time,
        ));
        assert_eq!(field, format!("{LEAF}.attestationSecurityLevel"));
        assert!(message.contains("Software"), "{message}");
    }

    #[test]
    fn wrong_attestation_challenge_is_refused() {
        for name in DEVICES {
            let case = load(name);
            let mut ders = x5c_ders(&case);
            let at = ders[0]
                .windows(32)
                .position(|w| w == case.client_data_hash)
                .expect("the leaf carries the clientDataHash");
            ders[0][at + 31] ^= 1;
            let err = case
                .run_with(
                    &with_x5c(&case, ders),
                    &case.client_data_hash,
                    &case.policy,
                    case.verify_time,
                )
                .unwrap_err();
            assert!(matches!(err, Error::Mismatch { .. }), "{err}");
            assert_eq!(err.field(), format!("{LEAF}.attestationChallenge"));
        }
    }

    #[test]
    fn flipped_signature_is_refused() {
        for name in DEVICES.iter().chain([&W3C]) {
            let case = load(name);
            let mut sig = member(&case.object.att_stmt, "sig")
                .as_bytes()
                .unwrap()
                .clone();
            let last = sig.len() - 1;
            sig[last] ^= 1;
            let mut stmt = case.object.att_stmt.clone();
            set_member(&mut stmt, "sig", Value::Bytes(sig));
            let err = case
                .run_with(
                    &stmt,
                    &case.client_data_hash,
                    &case.policy,
                    case.verify_time,
                )
                .unwrap_err();
            assert_eq!(
                err,
                Error::bad_signature("response.attestationObject.attStmt.sig"),
                "{name}"
            );
        }
    }

    #[test]
    fn other_client_data_hash_is_refused() {
        let case = load(DEVICES[1]);
        let err = case
            .run_with(
                &case.object.att_stmt,
                &[0u8; 32],
                &case.policy,
                case.verify_time,
            )
            .unwrap_err();
        assert_eq!(
            err,
            Error::bad_signature("response.attestationObject.attStmt.sig")
        );
    }

    #[test]
    fn certificates_out_of_order_are_refused() {
        for name in DEVICES {
            let case = load(name);
            let mut ders = x5c_ders(&case);
            ders.reverse();
            assert!(
                case.run_with(
                    &with_x5c(&case, ders.clone()),
                    &case.client_data_hash,
                    &case.policy,
                    case.verify_time
                )
                .is_err(),
                "{name}"
            );
            ders.rotate_left(1);
            assert!(
                case.run_with(
                    &with_x5c(&case, ders),
                    &case.client_data_hash,
                    &case.policy,
                    case.verify_time
                )
                .is_err(),
                "{name}"
            );
        }
    }

    #[test]
    fn missing_and_mistyped_members_are_named() {
        let case = load(DEVICES[0]);
        let run = |stmt: &Value| {
            case.run_with(stmt, &case.client_data_hash, &case.policy, case.verify_time)
                .unwrap_err()
        };
        for name in ["alg", "sig", "x5c"] {
            let mut stmt = case.object.att_stmt.clone();
            remove_member(&mut stmt, name);
            assert_eq!(
                run(&stmt),
                Error::Missing {
                    field: attestation::field(name)
                }
            );
            set_member(&mut stmt, name, Value::Text("x".into()));
            assert!(matches!(run(&stmt), Error::WrongType { .. }), "{name}");
        }
        let mut stmt = case.object.att_stmt.clone();
        set_member(&mut stmt, "alg", Value::Integer((-9999).into()));
        assert!(matches!(run(&stmt), Error::Algorithm { alg: -9999, .. }));
        set_member(&mut stmt, "alg", Value::Integer((-257).into()));
        assert!(matches!(run(&stmt), Error::Algorithm { alg: -257, .. }));
        let mut stmt = case.object.att_stmt.clone();
        set_member(&mut stmt, "x5c", Value::Array(vec![]));
        assert_eq!(
            run(&stmt),
            Error::Empty {
                field: attestation::field("x5c")
            }
        );
        set_member(&mut stmt, "sig", Value::Bytes(vec![]));
        assert_eq!(
            run(&stmt),
            Error::Empty {
                field: attestation::field("sig")
            }
        );
    }

    /// A KeyDescription with the fields the checks read.
    struct Kd {
        attestation_level: u8,
        challenge: Vec<u8>,
        software: Vec<Vec<u8>>,
        tee: Vec<Vec<u8>>,
    }

    impl Kd {
        fn hardware() -> Kd {
            Kd {
                attestation_level: 1,
                challenge: CDH.to_vec(),
                software: vec![explicit(709, &tlv(&[0x04], b"app"))],
                tee: vec![
                    purpose(&[2]),
                    explicit(10, &int(1)),
                    origin(0),
                    explicit(719, &int(20250101)),
                ],
            }
        }

        fn encode(&self) -> Vec<u8> {
            seq(&[
                int(300),
                tlv(&[0x0a], &[self.attestation_level]),
                int(300),
                tlv(&[0x0a], &[1]),
                tlv(&[0x04], &self.challenge),
                tlv(&[0x04], &[]),
                seq(&self.software),
                seq(&self.tee),
            ])
        }
    }

    fn purpose(values: &[u64]) -> Vec<u8> {
        let ints: Vec<Vec<u8>> = values.iter().map(|v| int(*v)).collect();
        explicit(1, &tlv(&[0x31], &ints.concat()))
    }

    fn origin(value: u64) -> Vec<u8> {
        explicit(702, &int(value))
    }

    fn all_applications() -> Vec<u8> {
        explicit(600, &[0x05, 0x00])
    }

    /// An android-key statement made here: the credential key signs and is
    /// certified (or, with `other_key`, a second key does both).
    fn synthetic(
        extensions: &[Vec<u8>],
        other_key: bool,
        policy: &AttestationPolicy,
    ) -> Result<attestation::Verified, Error> {
        let (credential, point, spki) = ec_key(&ECDSA_P256_SHA256_ASN1_SIGNING, false);
        let (signer, spki) = if other_key {
            let (k, _, s) = ec_key(&ECDSA_P256_SHA256_ASN1_SIGNING, false);
            (k, s)
        } else {
            (credential, spki)
        };
        let auth = auth_data(Some(&point));
        let leaf = cert("Android Keystore Key", &spki, extensions);
        let mut signed = auth.raw.clone();
        signed.extend_from_slice(&CDH);
        let att_stmt = Value::Map(vec![
            (Value::Text("alg".into()), Value::Integer((-7).into())),
            (
                Value::Text("sig".into()),
                Value::Bytes(sign(&signer, &signed)),
            ),
            (
                Value::Text("x5c".into()),
                Value::Array(vec![Value::Bytes(leaf)]),
            ),
        ]);
        attestation::verify(&attestation::Statement {
            fmt: "android-key",
            att_stmt: &att_stmt,
            auth_data: &auth,
            client_data_hash: &CDH,
            policy,
            now: at(1_750_000_000),
        })
    }

    fn with_kd(kd: &Kd, policy: &AttestationPolicy) -> Result<attestation::Verified, Error> {
        synthetic(
            &[extension(&oid::ANDROID_KEY_DESCRIPTION, &kd.encode())],
            false,
            policy,
        )
    }

    fn strict() -> AttestationPolicy {
        AttestationPolicy::default()
    }

    fn lenient() -> AttestationPolicy {
        AttestationPolicy {
            android_allow_software: true,
            ..AttestationPolicy::default()
        }
    }

    #[test]
    fn synthetic_hardware_statements_verify() {
        with_kd(&Kd::hardware(), &strict()).unwrap();
        let strongbox = Kd {
            attestation_level: 2,
            ..Kd::hardware()
        };
        with_kd(&strongbox, &strict()).unwrap();
        // Purposes beyond SIGN, unknown future tags and any entry order are fine.
        let mut kd = Kd::hardware();
        kd.tee = vec![
            origin(0),
            explicit(9999, &[0x05, 0x00]),
            purpose(&[2, 3]),
            explicit(30, &int(7)),
        ];
        with_kd(&kd, &strict()).unwrap();
    }

    #[test]
    fn leaf_key_other_than_the_credential_is_refused() {
        let kd = Kd::hardware();
        let err = synthetic(
            &[extension(&oid::ANDROID_KEY_DESCRIPTION, &kd.encode())],
            true,
            &strict(),
        )
        .unwrap_err();
        assert!(matches!(err, Error::Mismatch { .. }), "{err}");
        assert_eq!(err.field(), format!("{LEAF}.subjectPublicKeyInfo"));
    }

    #[test]
    fn synthetic_wrong_challenge_is_refused() {
        for challenge in [vec![0x5b; 32], vec![0x5a; 31], vec![], vec![0x5a; 33]] {
            let kd = Kd {
                challenge,
                ..Kd::hardware()
            };
            let err = with_kd(&kd, &strict()).unwrap_err();
            assert_eq!(err.field(), format!("{LEAF}.attestationChallenge"));
        }
    }

    #[test]
    fn all_applications_is_refused_on_either_list() {
        for software in [true, false] {
            let mut kd = Kd::hardware();
            let list = if software {
                &mut kd.software
            } else {
                &mut kd.tee
            };
            list.push(all_applications());
            for policy in [strict(), lenient()] {
                let (field, _) = policy_field(with_kd(&kd, &policy));
                let list = if software {
                    "softwareEnforced"
                } else {
                    "teeEnforced"
                };
                assert_eq!(field, format!("{LEAF}.{list}.allApplications"));
            }
        }
    }

    #[test]
    fn origin_must_be_generated() {
        let mut kd = Kd::hardware();
        kd.tee = vec![purpose(&[2]), origin(2)];
        let (field, message) = policy_field(with_kd(&kd, &strict()));
        assert_eq!(field, format!("{LEAF}.teeEnforced.origin"));
        assert!(message.contains("KM_ORIGIN_GENERATED"), "{message}");

        // Two lists disagreeing about the origin: refused whichever is read.
        let mut kd = Kd::hardware();
        kd.software.push(origin(1));
        for policy in [strict(), lenient()] {
            let (field, _) = policy_field(with_kd(&kd, &policy));
            assert_eq!(field, format!("{LEAF}.softwareEnforced.origin"));
        }

        let mut kd = Kd::hardware();
        kd.tee = vec![purpose(&[2])];
        let (field, _) = policy_field(with_kd(&kd, &strict()));
        assert_eq!(field, format!("{LEAF}.teeEnforced.origin"));
    }

    #[test]
    fn purpose_must_include_sign() {
        let mut kd = Kd::hardware();
        kd.tee = vec![purpose(&[0, 1, 3]), origin(0)];
        let (field, message) = policy_field(with_kd(&kd, &strict()));
        assert_eq!(field, format!("{LEAF}.teeEnforced.purpose"));
        assert!(message.contains("KM_PURPOSE_SIGN"), "{message}");

        kd.tee = vec![origin(0)];
        let (field, message) = policy_field(with_kd(&kd, &strict()));
        assert_eq!(field, format!("{LEAF}.teeEnforced.purpose"));
        assert!(message.contains("absent"), "{message}");
    }

    #[test]
    fn software_enforced_authorizations_count_only_when_software_is_allowed() {
        let mut kd = Kd::hardware();
        kd.software = vec![purpose(&[2]), origin(0)];
        kd.tee = vec![];
        let (field, message) = policy_field(with_kd(&kd, &strict()));
        assert_eq!(field, format!("{LEAF}.teeEnforced.origin"));
        assert!(message.contains("not accepted"), "{message}");
        with_kd(&kd, &lenient()).unwrap();

        // Each property may come from either list (the union, per property).
        kd.software = vec![purpose(&[2])];
        kd.tee = vec![origin(0)];
        with_kd(&kd, &lenient()).unwrap();
        assert!(with_kd(&kd, &strict()).is_err());

        let software = Kd {
            attestation_level: 0,
            ..Kd::hardware()
        };
        let (field, _) = policy_field(with_kd(&software, &strict()));
        assert_eq!(field, format!("{LEAF}.attestationSecurityLevel"));
        with_kd(&software, &lenient()).unwrap();
    }

    #[test]
    fn key_description_extension_must_be_there_once() {
        let err = synthetic(&[], false, &strict()).unwrap_err();
        assert_eq!(
            err,
            Error::Missing {
                field: format!("{LEAF}.keyDescription")
            }
        );

        let ext = extension(&oid::ANDROID_KEY_DESCRIPTION, &Kd::hardware().encode());
        let err = synthetic(&[ext.clone(), ext], false, &strict()).unwrap_err();
        assert!(matches!(err, Error::Malformed { .. }), "{err}");
        assert_eq!(err.field(), format!("{LEAF}.keyDescription"));
    }

    #[test]
    fn no_attested_credential_data_is_refused() {
        let (key, _, spki) = ec_key(&ECDSA_P256_SHA256_ASN1_SIGNING, false);
        let auth = auth_data(None);
        let leaf = cert(
            "k",
            &spki,
            &[extension(
                &oid::ANDROID_KEY_DESCRIPTION,
                &Kd::hardware().encode(),
            )],
        );
        let mut signed = auth.raw.clone();
        signed.extend_from_slice(&CDH);
        let att_stmt = Value::Map(vec![
            (Value::Text("alg".into()), Value::Integer((-7).into())),
            (Value::Text("sig".into()), Value::Bytes(sign(&key, &signed))),
            (
                Value::Text("x5c".into()),
                Value::Array(vec![Value::Bytes(leaf)]),
            ),
        ]);
        let err = attestation::verify(&attestation::Statement {
            fmt: "android-key",
            att_stmt: &att_stmt,
            auth_data: &auth,
            client_data_hash: &CDH,
            policy: &strict(),
            now: at(0) + Duration::from_secs(1),
        })
        .unwrap_err();
        assert!(matches!(err, Error::Missing { .. }), "{err}");
    }

    fn parse(bytes: &[u8]) -> Result<KeyDescription<'_>, Error> {
        parse_key_description(bytes, LEAF)
    }

    #[test]
    fn key_description_encodings_are_strict() {
        let good = Kd::hardware();
        parse(&good.encode()).unwrap();
        let malformed_at = |kd: &[u8], field: &str| {
            let err = parse(kd).unwrap_err();
            assert_eq!(err.field(), format!("{LEAF}.{field}"), "{err}");
        };

        let mut kd = Kd::hardware();
        kd.attestation_level = 3;
        malformed_at(&kd.encode(), "attestationSecurityLevel");

        let mut kd = Kd::hardware();
        kd.tee.push(origin(0));
        malformed_at(&kd.encode(), "teeEnforced");

        // A low tag number in the long form, a padded high tag, a primitive
        // context tag, a universal tag: none is an AuthorizationList entry.
        for entry in [
            tlv(&[0xbf, 0x01], &int(0)),
            tlv(&[0xbf, 0x80, 0x85, 0x3e], &int(0)),
            tlv(&[0x81], &[0x02]),
            int(5),
        ] {
            let mut kd = Kd::hardware();
            kd.tee.insert(0, entry);
            malformed_at(&kd.encode(), "teeEnforced");
        }

        // EXPLICIT wrappers holding two values, or a wrongly typed origin / purpose.
        let mut kd = Kd::hardware();
        kd.tee = vec![explicit(702, &[int(0), int(0)].concat()), purpose(&[2])];
        malformed_at(&kd.encode(), "teeEnforced[702]");
        kd.tee = vec![explicit(702, &tlv(&[0x04], &[0])), purpose(&[2])];
        malformed_at(&kd.encode(), "teeEnforced.origin");
        kd.tee = vec![explicit(1, &int(2)), origin(0)];
        let err = parse(&kd.encode()).unwrap_err();
        assert!(matches!(err, Error::WrongType { .. }), "{err}");

        // Anything after teeEnforced.
        let mut bytes = good.encode();
        let inner_len = bytes[1] as usize;
        bytes[1] = (inner_len + 2) as u8;
        bytes.extend([0x05, 0x00]);
        malformed_at(&bytes, "keyDescription");

        // Not a SEQUENCE at all.
        malformed_at(&[0x05, 0x00], "keyDescription");
    }

    /// Truncations, bit flips and garbage: errors, never panics.
    #[test]
    fn damaged_key_descriptions_never_panic() {
        let mut samples = vec![Kd::hardware().encode()];
        for name in DEVICES.iter().chain([&W3C]) {
            let case = load(name);
            let leaf = crate::webauthn::certpath::Cert::parse(&x5c_ders(&case)[0], LEAF).unwrap();
            samples.push(key_description_extension(&leaf).unwrap().to_vec());
        }
        for sample in &samples {
            parse(sample).unwrap();
            for len in 0..sample.len() {
                assert!(
                    parse(&sample[..len]).is_err(),
                    "prefix of {len} bytes parsed"
                );
            }
            for i in 0..sample.len() {
                for flip in [0x01, 0x80, 0xff] {
                    let mut damaged = sample.clone();
                    damaged[i] ^= flip;
                    let _ = parse(&damaged);
                }
            }
        }
        for seed in 1..400u64 {
            let junk = garbage(seed, (seed as usize * 7) % 700);
            assert!(parse(&junk).is_err());
            let mut prefixed = vec![0x30, 0x82, 0x01, 0x00];
            prefixed.extend(junk);
            assert!(parse(&prefixed).is_err());
        }
    }
}
