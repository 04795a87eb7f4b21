//! Device binding's two formats: the registration token signet issues to
//! one enrolled device once the bank has verified the person, and the
//! signed registration request the device sends back with it. Both travel
//! sealed ([`crate::seal`]): the token to the device key, the request to
//! signet's `token-encryption` key.
//!
//! # Registration token
//!
//! A COSE_Sign1 (tag 18), ES256, by the `token-signing` key, over a CWT
//! claims map (RFC 8392):
//!
//! ```text
//! protected:   { 1 (alg): -7 (ES256), 4 (kid): token-signing key id (16 bytes) }
//! payload:     {  1 (iss): "signet",
//!                 3 (aud): the WebAuthn RP ID,
//!                 4 (exp): expiry, Unix seconds,
//!                 6 (iat): issue time, Unix seconds,
//!                 7 (cti): token id (16 bytes),
//!                 "did":   device id (16 bytes),
//!                 "uh":    the user handle the passkey must be created for,
//!                 "nonce": 16 random bytes,
//!                 "pur":   "fido-registration" }
//! signature:   r || s (64 bytes), over Sig_structure
//!              ["Signature1", protected, h'', payload]
//! sealed:      COSE_Encrypt to the device key, no kid,
//!              external_aad = "signet/registration-token/v1" || did
//! ```
//!
//! The device checks the signature against the `token-signing` key it
//! pinned (`signet hsm export`, or `GET /v1/keys`), and that `did` is its
//! own, before it shows the user anything: a token signed by another key
//! is a spoofed server. signet checks all of that again at redemption,
//! plus the expiry and that the token id is the device's current, unspent
//! one.
//!
//! # The passkey's challenge
//!
//! The WebAuthn challenge of the passkey created with a token is
//! [`challenge`]`(token) = SHA-256("signet/registration-challenge/v1" ||
//! token)`, over the token's bytes as opened. signet hands core banking
//! creation options with this challenge next to the sealed token; the
//! device recomputes it and refuses options that carry another.
//!
//! # Registration request
//!
//! ```text
//! COSE_Sign1 (tag 18), ES256, by the device key:
//! protected:   { 1 (alg): -7 (ES256) }
//! payload:     { "pur": "fido-registration-request",
//!                "did": device id (16 bytes),
//!                "tok": the registration token (COSE_Sign1 bytes, as opened),
//!                "reg": the registration response, PublicKeyCredential
//!                       toJSON() as UTF-8 text,
//!                "iat": the device's time, Unix seconds }
//! signature:   r || s (64 bytes)
//! sealed:      COSE_Encrypt to the token-encryption key,
//!              kid = that key's id (16 bytes),
//!              external_aad = "signet/registration-request/v1" || did
//! ```
//!
//! Map keys are text, values as shown; a map with other members is
//! refused, so a signature never covers something signet ignores.

use ciborium::Value;
use coset::iana::{self, EnumI64};
use coset::{CborSerializable, CoseSign1, CoseSign1Builder, HeaderBuilder, TaggedCborSerializable};

use crate::keys::{EcPublicKey, EcdsaSignature, Kid};

/// The `pur` claim of every registration token.
pub const PURPOSE: &str = "fido-registration";
/// The `pur` member of every registration request.
pub const REQUEST_PURPOSE: &str = "fido-registration-request";
/// The largest signed request accepted (the sealed message around it is
/// bounded by [`crate::seal::SEALED_MAX`]).
pub const REQUEST_MAX: usize = crate::seal::SEALED_MAX;
/// The largest registration response a request may carry.
pub const REGISTRATION_MAX: usize = 48 * 1024;
const TOKEN_AAD: &[u8] = b"signet/registration-token/v1";
const REQUEST_AAD: &[u8] = b"signet/registration-request/v1";
const CHALLENGE_TAG: &[u8] = b"signet/registration-challenge/v1";
/// The `iss` claim.
pub const ISSUER: &str = "signet";
/// The largest token accepted.
pub const TOKEN_MAX: usize = 4096;
const ID_LEN: usize = 16;

/// The external AAD a token is sealed to the device with.
pub fn token_aad(device_id: &[u8; ID_LEN]) -> Vec<u8> {
    [TOKEN_AAD, device_id.as_slice()].concat()
}

/// The external AAD a request is sealed to signet with.
pub fn request_aad(device_id: &[u8; ID_LEN]) -> Vec<u8> {
    [REQUEST_AAD, device_id.as_slice()].concat()
}

/// The WebAuthn challenge of the passkey registered with `token` (its
/// COSE_Sign1 bytes).
pub fn challenge(token: &[u8]) -> [u8; 32] {
    crate::keys::sha256(&[CHALLENGE_TAG, token].concat())
}

/// The claims of a registration token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    pub token_id: [u8; ID_LEN],
    pub device_id: [u8; ID_LEN],
    pub user_handle: Vec<u8>,
    pub rp_id: String,
    pub issued_s: u64,
    pub expires_s: u64,
    pub nonce: [u8; ID_LEN],
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{field}: {reason}")]
    Malformed { field: String, reason: String },
    /// The signature does not verify with the key given: a token from
    /// another signer (or altered).
    #[error("token.signature: does not verify with the pinned token-signing key")]
    Signature,
    /// The request's signature does not verify with the enrolled device
    /// key: another device (or altered).
    #[error("request.signature: does not verify with the enrolled device key")]
    DeviceSignature,
    #[error("could not be encoded")]
    Encoding,
}

impl TokenError {
    /// The member an error is about.
    pub fn field(&self) -> &str {
        match self {
            TokenError::Malformed { field, .. } => field,
            TokenError::Signature => "token.signature",
            TokenError::DeviceSignature => "request.signature",
            TokenError::Encoding => "token",
        }
    }
}

fn bad(field: impl Into<String>, reason: impl Into<String>) -> TokenError {
    TokenError::Malformed {
        field: field.into(),
        reason: reason.into(),
    }
}

impl Claims {
    fn to_value(&self) -> Value {
        let int = |i: i64| Value::Integer(i.into());
        let text = |s: &str| Value::Text(s.to_string());
        Value::Map(vec![
            (int(1), text(ISSUER)),
            (int(3), text(&self.rp_id)),
            (int(4), Value::Integer(self.expires_s.into())),
            (int(6), Value::Integer(self.issued_s.into())),
            (int(7), Value::Bytes(self.token_id.to_vec())),
            (text("did"), Value::Bytes(self.device_id.to_vec())),
            (text("uh"), Value::Bytes(self.user_handle.clone())),
            (text("nonce"), Value::Bytes(self.nonce.to_vec())),
            (text("pur"), text(PURPOSE)),
        ])
    }

    fn from_value(v: Value) -> Result<Claims, TokenError> {
        let Value::Map(entries) = v else {
            return Err(bad("token.payload", "must be a CBOR map of CWT claims"));
        };
        let get = |key: Value, field: &'static str| member(&entries, key, field);
        let int = |i: i64| Value::Integer(i.into());
        if get(int(1), "token.iss")?.as_text() != Some(ISSUER) {
            return Err(bad("token.iss", format!("must be {ISSUER:?}")));
        }
        if get(text_key("pur"), "token.pur")?.as_text() != Some(PURPOSE) {
            return Err(bad("token.pur", format!("must be {PURPOSE:?}")));
        }
        let rp_id = get(int(3), "token.aud")?
            .as_text()
            .filter(|t| !t.is_empty() && t.len() <= 253)
            .map(str::to_string)
            .ok_or_else(|| bad("token.aud", "must be the RP ID"))?;
        let user_handle = get(text_key("uh"), "token.uh")?
            .as_bytes()
            .filter(|b| !b.is_empty() && b.len() <= 64)
            .cloned()
            .ok_or_else(|| bad("token.uh", "must be 1 to 64 bytes"))?;
        let claims = Claims {
            token_id: id_of(get(int(7), "token.cti")?, "token.cti")?,
            device_id: id_of(get(text_key("did"), "token.did")?, "token.did")?,
            user_handle,
            rp_id,
            issued_s: seconds_of(get(int(6), "token.iat")?, "token.iat")?,
            expires_s: seconds_of(get(int(4), "token.exp")?, "token.exp")?,
            nonce: id_of(get(text_key("nonce"), "token.nonce")?, "token.nonce")?,
        };
        if entries.len() != 9 {
            return Err(bad(
                "token.payload",
                "holds claims other than the nine defined",
            ));
        }
        if claims.expires_s <= claims.issued_s {
            return Err(bad("token.exp", "is not after iat"));
        }
        Ok(claims)
    }

    /// The bytes to sign, and the COSE_Sign1 waiting for its signature.
    pub fn to_be_signed(&self, kid: &Kid) -> Result<(Vec<u8>, CoseSign1), TokenError> {
        signed(
            &self.to_value(),
            HeaderBuilder::new()
                .algorithm(iana::Algorithm::ES256)
                .key_id(kid.as_bytes().to_vec())
                .build(),
        )
    }

    /// Completes a token with the signature over [`Claims::to_be_signed`].
    pub fn finish(unsigned: CoseSign1, signature: &EcdsaSignature) -> Result<Vec<u8>, TokenError> {
        finish(unsigned, signature)
    }
}

/// A parsed token whose signature is not yet checked.
#[derive(Debug)]
pub struct Token {
    sign1: CoseSign1,
    /// The signing key's id from the protected header.
    pub kid: Kid,
}

impl Token {
    pub fn parse(bytes: &[u8]) -> Result<Token, TokenError> {
        let sign1 = parse_es256(bytes, TOKEN_MAX, "token")?;
        let kid = Kid::from_bytes(&sign1.protected.header.key_id)
            .ok_or_else(|| bad("token.protected.kid", "must be a 16-byte key id"))?;
        Ok(Token { sign1, kid })
    }

    /// Verifies the signature with `key` and returns the claims.
    pub fn verify(&self, key: &EcPublicKey) -> Result<Claims, TokenError> {
        let value = verified_payload(&self.sign1, key, "token", TokenError::Signature)?;
        Claims::from_value(value)
    }
}

/// An ES256 COSE_Sign1 (tagged or not) of at most `max` bytes, with an
/// attached payload and a 64-byte signature; `name` prefixes every field
/// an error names.
fn parse_es256(bytes: &[u8], max: usize, name: &'static str) -> Result<CoseSign1, TokenError> {
    let field = |member: &str| format!("{name}{member}");
    if bytes.is_empty() || bytes.len() > max {
        return Err(bad(name, format!("must be 1 to {max} bytes")));
    }
    let sign1 = CoseSign1::from_tagged_slice(bytes)
        .or_else(|_| CoseSign1::from_slice(bytes))
        .map_err(|e| bad(name, format!("not a COSE_Sign1: {e}")))?;
    if sign1.protected.header.alg != Some(coset::Algorithm::Assigned(iana::Algorithm::ES256)) {
        return Err(bad(
            field(".protected.alg"),
            format!("must be {} (ES256)", iana::Algorithm::ES256.to_i64()),
        ));
    }
    if sign1.signature.len() != 64 {
        return Err(bad(field(".signature"), "must be r || s, 64 bytes"));
    }
    if sign1.payload.is_none() {
        return Err(bad(
            field(".payload"),
            "is missing (detached payloads are not used)",
        ));
    }
    Ok(sign1)
}

/// The payload of `sign1` as CBOR, once its signature verifies with `key`
/// (`wrong_key` otherwise).
fn verified_payload(
    sign1: &CoseSign1,
    key: &EcPublicKey,
    name: &'static str,
    wrong_key: TokenError,
) -> Result<Value, TokenError> {
    let signature = EcdsaSignature::from_raw(&sign1.signature)
        .map_err(|_| bad(format!("{name}.signature"), "is not a P-256 signature"))?;
    if !key.verify(&sign1.tbs_data(b""), &signature) {
        return Err(wrong_key);
    }
    let payload = sign1.payload.as_deref().unwrap_or_default();
    ciborium::from_reader(payload)
        .map_err(|e| bad(format!("{name}.payload"), format!("not CBOR: {e}")))
}

fn signed(payload: &Value, protected: coset::Header) -> Result<(Vec<u8>, CoseSign1), TokenError> {
    let mut bytes = Vec::new();
    ciborium::into_writer(payload, &mut bytes).map_err(|_| TokenError::Encoding)?;
    let unsigned = CoseSign1Builder::new()
        .protected(protected)
        .payload(bytes)
        .build();
    let tbs = unsigned.tbs_data(b"");
    Ok((tbs, unsigned))
}

fn finish(mut unsigned: CoseSign1, signature: &EcdsaSignature) -> Result<Vec<u8>, TokenError> {
    unsigned.signature = signature.raw().to_vec();
    unsigned.to_tagged_vec().map_err(|_| TokenError::Encoding)
}

/// One member of a claims map: present exactly once.
fn member(
    entries: &[(Value, Value)],
    key: Value,
    field: &'static str,
) -> Result<Value, TokenError> {
    let mut found = entries.iter().filter(|(k, _)| *k == key).map(|(_, v)| v);
    match (found.next(), found.next()) {
        (Some(v), None) => Ok(v.clone()),
        (None, _) => Err(bad(field, "is missing")),
        (Some(_), Some(_)) => Err(bad(field, "appears twice")),
    }
}

fn id_of(v: Value, field: &'static str) -> Result<[u8; ID_LEN], TokenError> {
    v.as_bytes()
        .and_then(|b| <[u8; ID_LEN]>::try_from(b.as_slice()).ok())
        .ok_or_else(|| bad(field, format!("must be {ID_LEN} bytes")))
}

fn seconds_of(v: Value, field: &'static str) -> Result<u64, TokenError> {
    v.as_integer()
        .and_then(|i| u64::try_from(i).ok())
        .ok_or_else(|| bad(field, "must be Unix seconds"))
}

fn text_key(s: &str) -> Value {
    Value::Text(s.to_string())
}

/// What a device signs to redeem its token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub device_id: [u8; ID_LEN],
    /// The registration token, as the device opened it.
    pub token: Vec<u8>,
    /// The registration response JSON (`PublicKeyCredential.toJSON()`).
    pub registration: String,
    /// The device's clock, Unix seconds.
    pub time_s: u64,
}

impl Request {
    fn to_value(&self) -> Value {
        Value::Map(vec![
            (text_key("pur"), text_key(REQUEST_PURPOSE)),
            (text_key("did"), Value::Bytes(self.device_id.to_vec())),
            (text_key("tok"), Value::Bytes(self.token.clone())),
            (text_key("reg"), Value::Text(self.registration.clone())),
            (text_key("iat"), Value::Integer(self.time_s.into())),
        ])
    }

    fn from_value(v: Value) -> Result<Request, TokenError> {
        let Value::Map(entries) = v else {
            return Err(bad("request.payload", "must be a CBOR map"));
        };
        let get = |key: &str, field: &'static str| member(&entries, text_key(key), field);
        if get("pur", "request.pur")?.as_text() != Some(REQUEST_PURPOSE) {
            return Err(bad("request.pur", format!("must be {REQUEST_PURPOSE:?}")));
        }
        let token = get("tok", "request.tok")?
            .into_bytes()
            .ok()
            .filter(|b| !b.is_empty() && b.len() <= TOKEN_MAX)
            .ok_or_else(|| bad("request.tok", format!("must be 1 to {TOKEN_MAX} bytes")))?;
        let registration = get("reg", "request.reg")?
            .into_text()
            .ok()
            .filter(|t| !t.is_empty() && t.len() <= REGISTRATION_MAX)
            .ok_or_else(|| {
                bad(
                    "request.reg",
                    format!("must be the registration response JSON, 1 to {REGISTRATION_MAX} bytes of text"),
                )
            })?;
        let request = Request {
            device_id: id_of(get("did", "request.did")?, "request.did")?,
            token,
            registration,
            time_s: seconds_of(get("iat", "request.iat")?, "request.iat")?,
        };
        if entries.len() != 5 {
            return Err(bad(
                "request.payload",
                "holds members other than the five defined",
            ));
        }
        Ok(request)
    }

    /// The bytes the device key signs, and the COSE_Sign1 waiting for the
    /// signature.
    pub fn to_be_signed(&self) -> Result<(Vec<u8>, CoseSign1), TokenError> {
        signed(
            &self.to_value(),
            HeaderBuilder::new()
                .algorithm(iana::Algorithm::ES256)
                .build(),
        )
    }

    /// Completes a request with the signature over [`Request::to_be_signed`].
    pub fn finish(unsigned: CoseSign1, signature: &EcdsaSignature) -> Result<Vec<u8>, TokenError> {
        finish(unsigned, signature)
    }
}

/// A parsed request whose signature is not yet checked.
#[derive(Debug)]
pub struct SignedRequest {
    sign1: CoseSign1,
}

impl SignedRequest {
    pub fn parse(bytes: &[u8]) -> Result<SignedRequest, TokenError> {
        Ok(SignedRequest {
            sign1: parse_es256(bytes, REQUEST_MAX, "request")?,
        })
    }

    /// Verifies the signature with the enrolled device key and returns the
    /// request.
    pub fn verify(&self, device_key: &EcPublicKey) -> Result<Request, TokenError> {
        let value = verified_payload(
            &self.sign1,
            device_key,
            "request",
            TokenError::DeviceSignature,
        )?;
        Request::from_value(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Signer;

    fn signer(seed: u8) -> (p256::ecdsa::SigningKey, EcPublicKey) {
        let sk = p256::ecdsa::SigningKey::from_slice(&[seed; 32]).expect("key");
        let pk = EcPublicKey::from_p256(&p256::PublicKey::from(sk.verifying_key()));
        (sk, pk)
    }

    fn claims() -> Claims {
        Claims {
            token_id: [1; 16],
            device_id: [2; 16],
            user_handle: vec![3; 32],
            rp_id: "bank.example".into(),
            issued_s: 1_800_000_000,
            expires_s: 1_800_000_600,
            nonce: [4; 16],
        }
    }

    fn token(c: &Claims, seed: u8) -> Vec<u8> {
        let (sk, pk) = signer(seed);
        let (tbs, unsigned) = c.to_be_signed(&Kid::of(&pk)).expect("tbs");
        let sig: p256::ecdsa::Signature = sk.sign(&tbs);
        let sig = EcdsaSignature::from_raw(&sig.to_bytes()).expect("raw");
        Claims::finish(unsigned, &sig).expect("finish")
    }

    #[test]
    fn round_trip_and_a_spoofed_signer_is_refused() {
        let bytes = token(&claims(), 7);
        let t = Token::parse(&bytes).expect("parse");
        let (_, pinned) = signer(7);
        assert_eq!(t.kid, Kid::of(&pinned));
        assert_eq!(t.verify(&pinned).expect("verify"), claims());
        // Another signer, even one claiming the pinned kid, is refused.
        let (_, other) = signer(8);
        assert!(matches!(t.verify(&other), Err(TokenError::Signature)));
        let spoofed = Token::parse(&token(&claims(), 8)).expect("parse");
        assert!(matches!(
            spoofed.verify(&pinned),
            Err(TokenError::Signature)
        ));
    }

    #[test]
    fn altered_truncated_and_oversized_tokens_are_refused() {
        let bytes = token(&claims(), 7);
        let (_, pinned) = signer(7);
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            let ok = Token::parse(&b).and_then(|t| t.verify(&pinned));
            assert!(ok.is_err(), "byte {i} flipped and still verified");
        }
        for n in [0, 1, bytes.len() / 2, bytes.len() - 1] {
            assert!(
                Token::parse(&bytes[..n])
                    .and_then(|t| t.verify(&pinned))
                    .is_err(),
                "{n}"
            );
        }
        let e = Token::parse(&vec![0; TOKEN_MAX + 1]).expect_err("big");
        assert!(e.to_string().starts_with("token:"), "{e}");
    }

    #[test]
    fn claims_are_checked_one_by_one() {
        let (_, pinned) = signer(7);
        let mut c = claims();
        c.expires_s = c.issued_s;
        let e = Token::parse(&token(&c, 7))
            .expect("parse")
            .verify(&pinned)
            .expect_err("exp");
        assert!(e.to_string().starts_with("token.exp"), "{e}");
        let mut c = claims();
        c.user_handle = Vec::new();
        let e = Token::parse(&token(&c, 7))
            .expect("parse")
            .verify(&pinned)
            .expect_err("uh");
        assert!(e.to_string().starts_with("token.uh"), "{e}");
        let mut c = claims();
        c.rp_id = String::new();
        let e = Token::parse(&token(&c, 7))
            .expect("parse")
            .verify(&pinned)
            .expect_err("aud");
        assert!(e.to_string().starts_with("token.aud"), "{e}");
    }

    fn request(seed: u8) -> Vec<u8> {
        let (sk, _) = signer(seed);
        let r = Request {
            device_id: [2; 16],
            token: token(&claims(), 7),
            registration: "{\"id\":\"x\"}".into(),
            time_s: 1_800_000_100,
        };
        let (tbs, unsigned) = r.to_be_signed().expect("tbs");
        let sig: p256::ecdsa::Signature = sk.sign(&tbs);
        let sig = EcdsaSignature::from_raw(&sig.to_bytes()).expect("raw");
        Request::finish(unsigned, &sig).expect("finish")
    }

    #[test]
    fn a_request_verifies_only_with_its_device_key() {
        let (_, device) = signer(9);
        let r = SignedRequest::parse(&request(9))
            .expect("parse")
            .verify(&device)
            .expect("verify");
        assert_eq!(r.device_id, [2; 16]);
        assert_eq!(r.registration, "{\"id\":\"x\"}");
        // Signed by another device: impersonation.
        let e = SignedRequest::parse(&request(10))
            .expect("parse")
            .verify(&device)
            .expect_err("other device");
        assert!(matches!(e, TokenError::DeviceSignature), "{e}");
        assert_eq!(e.field(), "request.signature");
        let bytes = request(9);
        for n in [0, 1, bytes.len() / 2, bytes.len() - 1] {
            let e = SignedRequest::parse(&bytes[..n])
                .and_then(|r| r.verify(&device))
                .expect_err("truncated");
            assert!(e.field().starts_with("request"), "{n}: {e}");
        }
        let e = SignedRequest::parse(&vec![0; REQUEST_MAX + 1]).expect_err("big");
        assert_eq!(e.field(), "request", "{e}");
    }

    #[test]
    fn a_request_with_an_extra_member_is_refused() {
        let (sk, device) = signer(9);
        let r = Request {
            device_id: [2; 16],
            token: vec![1],
            registration: "{}".into(),
            time_s: 1,
        };
        let Value::Map(mut entries) = r.to_value() else {
            unreachable!()
        };
        entries.push((text_key("extra"), Value::Bool(true)));
        let (tbs, mut unsigned) = signed(
            &Value::Map(entries),
            HeaderBuilder::new()
                .algorithm(iana::Algorithm::ES256)
                .build(),
        )
        .expect("tbs");
        let sig: p256::ecdsa::Signature = sk.sign(&tbs);
        unsigned.signature = sig.to_bytes().to_vec();
        let bytes = unsigned.to_tagged_vec().expect("cbor");
        let e = SignedRequest::parse(&bytes)
            .expect("parse")
            .verify(&device)
            .expect_err("extra");
        assert_eq!(e.field(), "request.payload", "{e}");
    }

    #[test]
    fn the_challenge_depends_on_every_token_byte() {
        let t = token(&claims(), 7);
        let c = challenge(&t);
        let mut other = t.clone();
        let last = other.len() - 1;
        other[last] ^= 1;
        assert_ne!(c, challenge(&other));
        assert_ne!(token_aad(&[1; 16]), request_aad(&[1; 16]));
    }
}
