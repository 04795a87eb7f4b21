//! The registration token: what signet signs for one enrolled device once
//! the bank has verified the person, and what the device sends back (inside
//! its sealed registration request) to register a passkey.
//!
//! # Format
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
//! ```
//!
//! The device checks the signature against the `token-signing` key it
//! pinned (`GET /v1/keys`), and that `did` is its own, before it shows the
//! user anything: a token signed by another key is a spoofed server.
//! signet checks all of that again at redemption, plus the expiry and that
//! the token id is unspent.

use ciborium::Value;
use coset::iana::{self, EnumI64};
use coset::{CborSerializable, CoseSign1, CoseSign1Builder, HeaderBuilder, TaggedCborSerializable};

use crate::keys::{EcPublicKey, EcdsaSignature, Kid};

/// The `pur` claim of every registration token.
pub const PURPOSE: &str = "fido-registration";
/// The `iss` claim.
pub const ISSUER: &str = "signet";
/// The largest token accepted.
pub const TOKEN_MAX: usize = 4096;
const ID_LEN: usize = 16;

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
    Malformed { field: &'static str, reason: String },
    /// The signature does not verify with the key given: a token from
    /// another signer (or altered).
    #[error("token.signature: does not verify with the pinned token-signing key")]
    Signature,
    #[error("token: could not be encoded")]
    Encoding,
}

fn bad(field: &'static str, reason: impl Into<String>) -> TokenError {
    TokenError::Malformed {
        field,
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
        let get = |key: Value, field: &'static str| -> Result<Value, TokenError> {
            let mut found = entries.iter().filter(|(k, _)| *k == key).map(|(_, v)| v);
            match (found.next(), found.next()) {
                (Some(v), None) => Ok(v.clone()),
                (None, _) => Err(bad(field, "is missing")),
                (Some(_), Some(_)) => Err(bad(field, "appears twice")),
            }
        };
        let int = |i: i64| Value::Integer(i.into());
        let text = |s: &str| Value::Text(s.to_string());
        let id = |v: Value, field: &'static str| -> Result<[u8; ID_LEN], TokenError> {
            v.as_bytes()
                .and_then(|b| <[u8; ID_LEN]>::try_from(b.as_slice()).ok())
                .ok_or_else(|| bad(field, format!("must be {ID_LEN} bytes")))
        };
        let seconds = |v: Value, field: &'static str| -> Result<u64, TokenError> {
            v.as_integer()
                .and_then(|i| u64::try_from(i).ok())
                .ok_or_else(|| bad(field, "must be Unix seconds"))
        };
        if get(int(1), "token.iss")?.as_text() != Some(ISSUER) {
            return Err(bad("token.iss", format!("must be {ISSUER:?}")));
        }
        if get(text("pur"), "token.pur")?.as_text() != Some(PURPOSE) {
            return Err(bad("token.pur", format!("must be {PURPOSE:?}")));
        }
        let rp_id = get(int(3), "token.aud")?
            .as_text()
            .filter(|t| !t.is_empty() && t.len() <= 253)
            .map(str::to_string)
            .ok_or_else(|| bad("token.aud", "must be the RP ID"))?;
        let user_handle = get(text("uh"), "token.uh")?
            .as_bytes()
            .filter(|b| !b.is_empty() && b.len() <= 64)
            .cloned()
            .ok_or_else(|| bad("token.uh", "must be 1 to 64 bytes"))?;
        let claims = Claims {
            token_id: id(get(int(7), "token.cti")?, "token.cti")?,
            device_id: id(get(text("did"), "token.did")?, "token.did")?,
            user_handle,
            rp_id,
            issued_s: seconds(get(int(6), "token.iat")?, "token.iat")?,
            expires_s: seconds(get(int(4), "token.exp")?, "token.exp")?,
            nonce: id(get(text("nonce"), "token.nonce")?, "token.nonce")?,
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
        let mut payload = Vec::new();
        ciborium::into_writer(&self.to_value(), &mut payload).map_err(|_| TokenError::Encoding)?;
        let unsigned = CoseSign1Builder::new()
            .protected(
                HeaderBuilder::new()
                    .algorithm(iana::Algorithm::ES256)
                    .key_id(kid.as_bytes().to_vec())
                    .build(),
            )
            .payload(payload)
            .build();
        let tbs = unsigned.tbs_data(b"");
        Ok((tbs, unsigned))
    }

    /// Completes a token with the signature over [`Claims::to_be_signed`].
    pub fn finish(
        mut unsigned: CoseSign1,
        signature: &EcdsaSignature,
    ) -> Result<Vec<u8>, TokenError> {
        unsigned.signature = signature.raw().to_vec();
        unsigned.to_tagged_vec().map_err(|_| TokenError::Encoding)
    }
}

/// A parsed token whose signature is not yet checked.
pub struct Token {
    sign1: CoseSign1,
    /// The signing key's id from the protected header.
    pub kid: Kid,
}

impl Token {
    pub fn parse(bytes: &[u8]) -> Result<Token, TokenError> {
        if bytes.is_empty() || bytes.len() > TOKEN_MAX {
            return Err(bad("token", format!("must be 1 to {TOKEN_MAX} bytes")));
        }
        let sign1 = CoseSign1::from_tagged_slice(bytes)
            .or_else(|_| CoseSign1::from_slice(bytes))
            .map_err(|e| bad("token", format!("not a COSE_Sign1: {e}")))?;
        if sign1.protected.header.alg != Some(coset::Algorithm::Assigned(iana::Algorithm::ES256)) {
            return Err(bad(
                "token.protected.alg",
                format!("must be {} (ES256)", iana::Algorithm::ES256.to_i64()),
            ));
        }
        let kid = Kid::from_bytes(&sign1.protected.header.key_id)
            .ok_or_else(|| bad("token.protected.kid", "must be a 16-byte key id"))?;
        if sign1.signature.len() != 64 {
            return Err(bad("token.signature", "must be r || s, 64 bytes"));
        }
        Ok(Token { sign1, kid })
    }

    /// Verifies the signature with `key` and returns the claims.
    pub fn verify(&self, key: &EcPublicKey) -> Result<Claims, TokenError> {
        let signature = EcdsaSignature::from_raw(&self.sign1.signature)
            .map_err(|_| bad("token.signature", "is not a P-256 signature"))?;
        if !key.verify(&self.sign1.tbs_data(b""), &signature) {
            return Err(TokenError::Signature);
        }
        let payload = self.sign1.payload.as_deref().ok_or_else(|| {
            bad(
                "token.payload",
                "is missing (detached payloads are not used)",
            )
        })?;
        let value: Value = ciborium::from_reader(payload)
            .map_err(|e| bad("token.payload", format!("not CBOR: {e}")))?;
        Claims::from_value(value)
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
        let e = Token::parse(&vec![0; TOKEN_MAX + 1]).err().expect("big");
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
}
