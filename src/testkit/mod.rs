//! A soft authenticator and test attestation PKI (cargo feature `testkit`).
//!
//! [`SoftAuthenticator`] answers ceremonies the way a browser's
//! `PublicKeyCredential.toJSON()` presents them, so tests feed the engine
//! what production receives. Every layer stays editable for negative tests:
//! the clientDataJSON text, the authenticator data bytes ([`AuthData`]), the
//! attestation statement map before CBOR encoding, the attestation object as
//! a CBOR value, and the final JSON. [`SigningKey::sign`] signs any bytes,
//! and an [`Attestation`] names the key that signs, so a statement can be
//! signed by the wrong key on purpose.
//!
//! Nothing here is for production: keys live in memory and failures panic.

pub mod android;
pub mod browser;
pub mod device;
pub mod evidence;
pub mod keys;
pub mod pki;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ciborium::Value;
use serde_json::json;

pub use keys::SigningKey;
pub use pki::{CertSpec, Issued, PkiSpec, TestPki};

use crate::keys::sha256;
use crate::webauthn::{CoseAlgorithm, b64url};

/// Authenticator data flag bits (WebAuthn §6.1).
pub mod flag {
    pub const UP: u8 = 0x01;
    pub const UV: u8 = 0x04;
    pub const BE: u8 = 0x08;
    pub const BS: u8 = 0x10;
    pub const AT: u8 = 0x40;
    pub const ED: u8 = 0x80;
}

/// The AAGUID soft authenticators report unless told otherwise.
pub const TEST_AAGUID: [u8; 16] = [
    0x5e, 0x11, 0x6e, 0x70, 0x5e, 0x57, 0x4a, 0x11, 0x9a, 0x3b, 0x51, 0x6e, 0x70, 0x7e, 0x57, 0x01,
];

/// A fixed instant (2026-01-01T00:00:00Z) for tests that must not depend on
/// the clock: certificates are issued around it and verified at it.
pub fn test_now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_767_225_600)
}

/// `count` random bytes.
pub fn random_bytes(count: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; count];
    aws_lc_rs::rand::fill(&mut bytes).expect("system RNG");
    bytes
}

/// What the browser knows about a ceremony.
#[derive(Clone, Debug)]
pub struct Ceremony {
    pub rp_id: String,
    pub origin: String,
    pub challenge: Vec<u8>,
}

impl Ceremony {
    pub fn new(rp_id: &str, origin: &str, challenge: &[u8]) -> Ceremony {
        Ceremony {
            rp_id: rp_id.to_string(),
            origin: origin.to_string(),
            challenge: challenge.to_vec(),
        }
    }
}

/// clientDataJSON as browsers serialize it (§5.8.1.1: type, challenge,
/// origin, crossOrigin, in that order).
pub fn client_data_json(ceremony_type: &str, challenge: &[u8], origin: &str) -> String {
    format!(
        r#"{{"type":{},"challenge":{},"origin":{},"crossOrigin":false}}"#,
        json!(ceremony_type),
        json!(b64url(challenge)),
        json!(origin)
    )
}

/// Attested credential data (§6.5.1) as its parts.
#[derive(Clone, Debug)]
pub struct AttestedData {
    pub aaguid: [u8; 16],
    pub credential_id: Vec<u8>,
    /// COSE_Key bytes.
    pub public_key: Vec<u8>,
}

/// Authenticator data as its parts. [`AuthData::to_bytes`] writes exactly
/// what is here: the flags byte is not derived from the other members, so
/// AT/ED can be made to disagree with the data.
#[derive(Clone, Debug)]
pub struct AuthData {
    pub rp_id_hash: [u8; 32],
    pub flags: u8,
    pub sign_count: u32,
    pub attested: Option<AttestedData>,
    /// The extensions CBOR map, as bytes.
    pub extensions: Option<Vec<u8>>,
    /// Appended after everything else.
    pub trailing: Vec<u8>,
}

impl AuthData {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(&self.rp_id_hash);
        out.push(self.flags);
        out.extend_from_slice(&self.sign_count.to_be_bytes());
        if let Some(a) = &self.attested {
            out.extend_from_slice(&a.aaguid);
            let len = u16::try_from(a.credential_id.len()).expect("credential id fits in u16");
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&a.credential_id);
            out.extend_from_slice(&a.public_key);
        }
        if let Some(e) = &self.extensions {
            out.extend_from_slice(e);
        }
        out.extend_from_slice(&self.trailing);
        out
    }

    /// Sets `bit` in the flags when `on`, clears it otherwise.
    pub fn set_flag(&mut self, bit: u8, on: bool) {
        if on {
            self.flags |= bit;
        } else {
            self.flags &= !bit;
        }
    }
}

/// How a registration is attested.
#[derive(Clone, Debug)]
pub enum Attestation<'a> {
    /// fmt `none`, empty attStmt.
    None,
    /// fmt `packed`, signed by the credential key, no x5c.
    PackedSelf,
    /// fmt `packed`, signed by `key` (normally the x5c leaf's), with `x5c`.
    Packed {
        key: &'a SigningKey,
        x5c: Vec<Vec<u8>>,
    },
    /// fmt `fido-u2f`, signed by `key` over the U2F registration data.
    FidoU2f {
        key: &'a SigningKey,
        x5c: Vec<Vec<u8>>,
    },
}

impl Attestation<'_> {
    pub fn fmt(&self) -> &'static str {
        match self {
            Attestation::None => "none",
            Attestation::PackedSelf | Attestation::Packed { .. } => "packed",
            Attestation::FidoU2f { .. } => "fido-u2f",
        }
    }
}

/// A registration response in parts, before encoding.
#[derive(Clone, Debug)]
pub struct RegistrationParts {
    pub id: Vec<u8>,
    pub rp_id: String,
    pub client_data_json: String,
    pub auth_data: Vec<u8>,
    pub fmt: String,
    /// The attStmt map.
    pub att_stmt: Value,
    pub transports: Vec<String>,
    pub public_key_algorithm: i64,
    pub public_key_spki: Vec<u8>,
}

impl RegistrationParts {
    pub fn client_data_hash(&self) -> [u8; 32] {
        sha256(self.client_data_json.as_bytes())
    }

    /// authenticatorData || SHA-256(clientDataJSON): what packed signs.
    pub fn signed_data(&self) -> Vec<u8> {
        let mut v = self.auth_data.clone();
        v.extend_from_slice(&self.client_data_hash());
        v
    }

    /// `{fmt, attStmt, authData}` as a CBOR value, to edit before encoding.
    pub fn attestation_object_value(&self) -> Value {
        Value::Map(vec![
            (Value::Text("fmt".into()), Value::Text(self.fmt.clone())),
            (Value::Text("attStmt".into()), self.att_stmt.clone()),
            (
                Value::Text("authData".into()),
                Value::Bytes(self.auth_data.clone()),
            ),
        ])
    }

    pub fn attestation_object(&self) -> Vec<u8> {
        cbor(&self.attestation_object_value())
    }

    /// The `RegistrationResponseJSON` a browser would produce.
    pub fn to_json(&self) -> serde_json::Value {
        self.to_json_with_attestation_object(&self.attestation_object())
    }

    /// As [`RegistrationParts::to_json`], with these attestation object bytes.
    pub fn to_json_with_attestation_object(&self, attestation_object: &[u8]) -> serde_json::Value {
        json!({
            "id": b64url(&self.id),
            "rawId": b64url(&self.id),
            "type": "public-key",
            "response": {
                "clientDataJSON": b64url(self.client_data_json.as_bytes()),
                "authenticatorData": b64url(&self.auth_data),
                "transports": self.transports,
                "publicKey": b64url(&self.public_key_spki),
                "publicKeyAlgorithm": self.public_key_algorithm,
                "attestationObject": b64url(attestation_object),
            },
            "authenticatorAttachment": "cross-platform",
            "clientExtensionResults": {},
        })
    }

    /// Sets (or adds) `attStmt.<name>`.
    pub fn set_att_stmt(&mut self, name: &str, value: Value) {
        map_set(&mut self.att_stmt, name, value);
    }

    /// Removes `attStmt.<name>`.
    pub fn remove_att_stmt(&mut self, name: &str) {
        map_remove(&mut self.att_stmt, name);
    }
}

/// An authentication response in parts, before encoding.
#[derive(Clone, Debug)]
pub struct AssertionParts {
    pub id: Vec<u8>,
    pub client_data_json: String,
    pub auth_data: Vec<u8>,
    pub signature: Vec<u8>,
    pub user_handle: Option<Vec<u8>>,
}

impl AssertionParts {
    pub fn client_data_hash(&self) -> [u8; 32] {
        sha256(self.client_data_json.as_bytes())
    }

    /// authenticatorData || SHA-256(clientDataJSON): what the credential signs.
    pub fn signed_data(&self) -> Vec<u8> {
        let mut v = self.auth_data.clone();
        v.extend_from_slice(&self.client_data_hash());
        v
    }

    /// The `AuthenticationResponseJSON` a browser would produce.
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "id": b64url(&self.id),
            "rawId": b64url(&self.id),
            "type": "public-key",
            "response": {
                "clientDataJSON": b64url(self.client_data_json.as_bytes()),
                "authenticatorData": b64url(&self.auth_data),
                "signature": b64url(&self.signature),
                "userHandle": self.user_handle.as_deref().map(b64url),
            },
            "authenticatorAttachment": "cross-platform",
            "clientExtensionResults": {},
        })
    }
}

/// One credential on a soft authenticator. All state is public so tests
/// can set it directly.
#[derive(Debug)]
pub struct SoftAuthenticator {
    pub aaguid: [u8; 16],
    pub credential_id: Vec<u8>,
    pub user_handle: Vec<u8>,
    pub sign_count: u32,
    /// Added to `sign_count` at each assertion; 0 models an authenticator
    /// that does not count.
    pub counter_step: u32,
    pub up: bool,
    pub uv: bool,
    pub be: bool,
    pub bs: bool,
    /// Authenticator extension outputs (a CBOR map) to include, with ED.
    pub extensions: Option<Vec<u8>>,
    pub transports: Vec<String>,
    key: SigningKey,
}

impl SoftAuthenticator {
    /// A security key holding a fresh `alg` credential with a random
    /// 32-byte id, user present and verified, counting by one.
    pub fn new(alg: CoseAlgorithm) -> SoftAuthenticator {
        SoftAuthenticator::with_key(SigningKey::generate(alg))
    }

    pub fn with_key(key: SigningKey) -> SoftAuthenticator {
        SoftAuthenticator {
            aaguid: TEST_AAGUID,
            credential_id: random_bytes(32),
            user_handle: random_bytes(16),
            sign_count: 0,
            counter_step: 1,
            up: true,
            uv: true,
            be: false,
            bs: false,
            extensions: None,
            transports: vec!["usb".into()],
            key,
        }
    }

    /// The credential's private key.
    pub fn key(&self) -> &SigningKey {
        &self.key
    }

    /// UP, UV, BE and BS as set on this authenticator.
    pub fn flags(&self) -> u8 {
        let mut f = 0;
        for (on, bit) in [
            (self.up, flag::UP),
            (self.uv, flag::UV),
            (self.be, flag::BE),
            (self.bs, flag::BS),
        ] {
            if on {
                f |= bit;
            }
        }
        f
    }

    /// The authenticator data this authenticator would return for `rp_id`,
    /// with attested credential data when `attested`.
    pub fn auth_data(&self, rp_id: &str, attested: bool) -> AuthData {
        let mut flags = self.flags();
        if attested {
            flags |= flag::AT;
        }
        if self.extensions.is_some() {
            flags |= flag::ED;
        }
        AuthData {
            rp_id_hash: sha256(rp_id.as_bytes()),
            flags,
            sign_count: self.sign_count,
            attested: attested.then(|| AttestedData {
                aaguid: self.aaguid,
                credential_id: self.credential_id.clone(),
                public_key: self.key.cose_key(),
            }),
            extensions: self.extensions.clone(),
            trailing: Vec::new(),
        }
    }

    /// A registration response for `ceremony`, attested as `attestation`.
    pub fn register(
        &self,
        ceremony: &Ceremony,
        attestation: &Attestation<'_>,
    ) -> RegistrationParts {
        self.register_with(ceremony, attestation, |_| {})
    }

    /// As [`SoftAuthenticator::register`], with the authenticator data edited
    /// by `edit` before it is signed.
    pub fn register_with(
        &self,
        ceremony: &Ceremony,
        attestation: &Attestation<'_>,
        edit: impl FnOnce(&mut AuthData),
    ) -> RegistrationParts {
        let mut auth_data = self.auth_data(&ceremony.rp_id, true);
        if attestation.fmt() == "fido-u2f" {
            // U2F tokens have no AAGUID; the browser fills in zeros.
            if let Some(a) = &mut auth_data.attested {
                a.aaguid = [0; 16];
            }
        }
        edit(&mut auth_data);
        let mut parts = RegistrationParts {
            id: self.credential_id.clone(),
            rp_id: ceremony.rp_id.clone(),
            client_data_json: client_data_json(
                "webauthn.create",
                &ceremony.challenge,
                &ceremony.origin,
            ),
            auth_data: auth_data.to_bytes(),
            fmt: String::new(),
            att_stmt: Value::Map(Vec::new()),
            transports: self.transports.clone(),
            public_key_algorithm: self.key.alg().id(),
            public_key_spki: self.key.spki_der(),
        };
        self.attest(&mut parts, attestation);
        parts
    }

    /// Replaces `fmt` and `attStmt` with `attestation` over the parts' current
    /// authenticator data and clientDataJSON (call after editing them).
    pub fn attest(&self, parts: &mut RegistrationParts, attestation: &Attestation<'_>) {
        parts.fmt = attestation.fmt().to_string();
        let text = |s: &str| Value::Text(s.to_string());
        let x5c = |chain: &[Vec<u8>]| {
            Value::Array(chain.iter().map(|c| Value::Bytes(c.clone())).collect())
        };
        parts.att_stmt = match attestation {
            Attestation::None => Value::Map(Vec::new()),
            Attestation::PackedSelf => Value::Map(vec![
                (text("alg"), Value::Integer(self.key.alg().id().into())),
                (
                    text("sig"),
                    Value::Bytes(self.key.sign(&parts.signed_data())),
                ),
            ]),
            Attestation::Packed { key, x5c: chain } => Value::Map(vec![
                (text("alg"), Value::Integer(key.alg().id().into())),
                (text("sig"), Value::Bytes(key.sign(&parts.signed_data()))),
                (text("x5c"), x5c(chain)),
            ]),
            Attestation::FidoU2f { key, x5c: chain } => Value::Map(vec![
                (
                    text("sig"),
                    Value::Bytes(key.sign(&self.u2f_registration_data(parts))),
                ),
                (text("x5c"), x5c(chain)),
            ]),
        };
    }

    /// FIDO U2F raw registration signed data (§8.6 step 5):
    /// 0x00 || rpIdHash || clientDataHash || credentialId || publicKeyU2F.
    pub fn u2f_registration_data(&self, parts: &RegistrationParts) -> Vec<u8> {
        let point = self
            .key
            .ec_point()
            .expect("fido-u2f needs an EC (ES256) credential");
        let mut v = vec![0u8];
        v.extend_from_slice(&sha256(parts.rp_id.as_bytes()));
        v.extend_from_slice(&parts.client_data_hash());
        v.extend_from_slice(&self.credential_id);
        v.extend_from_slice(&point);
        v
    }

    /// An assertion for `ceremony`; advances the counter by `counter_step`.
    pub fn assert(&mut self, ceremony: &Ceremony) -> AssertionParts {
        self.assert_with(ceremony, |_| {})
    }

    /// As [`SoftAuthenticator::assert`], with the authenticator data edited by
    /// `edit` before it is signed.
    pub fn assert_with(
        &mut self,
        ceremony: &Ceremony,
        edit: impl FnOnce(&mut AuthData),
    ) -> AssertionParts {
        self.sign_count = self.sign_count.wrapping_add(self.counter_step);
        let mut auth_data = self.auth_data(&ceremony.rp_id, false);
        edit(&mut auth_data);
        let mut parts = AssertionParts {
            id: self.credential_id.clone(),
            client_data_json: client_data_json(
                "webauthn.get",
                &ceremony.challenge,
                &ceremony.origin,
            ),
            auth_data: auth_data.to_bytes(),
            signature: Vec::new(),
            user_handle: Some(self.user_handle.clone()),
        };
        self.sign_assertion(&mut parts);
        parts
    }

    /// Signs the parts' current authenticator data and clientDataJSON with
    /// the credential key (call after editing them).
    pub fn sign_assertion(&self, parts: &mut AssertionParts) {
        parts.signature = self.key.sign(&parts.signed_data());
    }
}

/// CBOR-encodes a value.
pub fn cbor(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).expect("CBOR encoding");
    out
}

/// Sets a text-keyed member of a CBOR map, adding it at the end if absent.
pub fn map_set(map: &mut Value, name: &str, value: Value) {
    let Value::Map(entries) = map else {
        panic!("not a CBOR map: {map:?}");
    };
    match entries
        .iter_mut()
        .find(|(k, _)| matches!(k, Value::Text(t) if t == name))
    {
        Some((_, v)) => *v = value,
        None => entries.push((Value::Text(name.to_string()), value)),
    }
}

/// Removes a text-keyed member of a CBOR map.
pub fn map_remove(map: &mut Value, name: &str) {
    if let Value::Map(entries) = map {
        entries.retain(|(k, _)| !matches!(k, Value::Text(t) if t == name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webauthn::cose_key::CredentialPublicKey;

    #[test]
    fn every_algorithm_signs_what_the_engine_verifies() {
        for alg in CoseAlgorithm::ALL {
            let key = SigningKey::generate(alg);
            let cose = CredentialPublicKey::from_cose(&key.cose_key(), "k").unwrap();
            assert_eq!(cose.alg, alg);
            assert_eq!(cose.key, key.verifying_key(), "{}", alg.name());
            let signature = key.sign(b"message");
            cose.verify(b"message", &signature, "sig").unwrap();
            assert!(
                cose.verify(b"massage", &signature, "sig").is_err(),
                "{}",
                alg.name()
            );
        }
    }

    #[test]
    fn test_pki_chains_and_meets_the_packed_profile() {
        let pki = TestPki::packed(test_now(), TEST_AAGUID);
        let root = pki.anchor();
        let intermediate = Cert::parse(&pki.x5c()[1], "x5c[1]").unwrap();
        let leaf = Cert::parse(&pki.x5c()[0], "x5c[0]").unwrap();
        root.verify_signed_by(&root.public_key().unwrap()).unwrap();
        intermediate
            .verify_signed_by(&root.public_key().unwrap())
            .unwrap();
        leaf.verify_signed_by(&intermediate.public_key().unwrap())
            .unwrap();
        assert!(leaf.verify_signed_by(&root.public_key().unwrap()).is_err());
        for c in [&root, &intermediate, &leaf] {
            c.check_validity(test_now()).unwrap();
            assert_eq!(c.version_number(), 2);
        }
        assert_eq!(root.basic_constraints().unwrap(), (true, None));
        assert_eq!(intermediate.basic_constraints().unwrap(), (true, Some(0)));
        assert_eq!(leaf.basic_constraints().unwrap(), (false, None));
        assert_eq!(
            leaf.subject(),
            "CN=Signet Test Authenticator,OU=Authenticator Attestation,O=Signet Test,C=CH"
        );
        let (aaguid, critical) = leaf
            .extension(&crate::webauthn::certpath::oid::FIDO_AAGUID)
            .unwrap();
        assert!(!critical);
        assert_eq!(aaguid[..2], [0x04, 0x10]);
        assert_eq!(aaguid[2..], TEST_AAGUID);
        assert_eq!(leaf.public_key().unwrap(), pki.leaf.key.verifying_key());
        assert_eq!(pki.x5c_with_root().len(), 3);
    }

    use crate::webauthn::certpath::Cert;

    #[test]
    fn authenticator_data_round_trips_through_the_engine_parser() {
        use crate::webauthn::authenticator_data::AuthenticatorData;
        let mut auth = SoftAuthenticator::new(CoseAlgorithm::Es256);
        auth.extensions = Some(cbor(&Value::Map(vec![(
            Value::Text("credProtect".into()),
            Value::Integer(2.into()),
        )])));
        let ad = AuthenticatorData::parse(&auth.auth_data("example.org", true).to_bytes(), "ad")
            .unwrap();
        assert!(ad.flags.at && ad.flags.ed && ad.flags.up && ad.flags.uv);
        assert_eq!(ad.rp_id_hash, sha256(b"example.org"));
        assert_eq!(ad.attested.unwrap().credential_id, auth.credential_id);
        let c = Ceremony::new("example.org", "https://example.org", &[1; 16]);
        let before = auth.sign_count;
        let a = auth.assert(&c);
        assert_eq!(auth.sign_count, before + 1);
        let ad = AuthenticatorData::parse(&a.auth_data, "ad").unwrap();
        assert!(!ad.flags.at && ad.attested.is_none());
        assert_eq!(ad.sign_count, auth.sign_count);
    }
}
