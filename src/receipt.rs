//! Approval receipts: signet's countersignature over everything needed to
//! re-verify an approval offline, years later, from the receipt alone and
//! the `approval-countersign` public key.
//!
//! # Format
//!
//! A COSE_Sign1 (tag 18), ES256, by the `approval-countersign` key:
//!
//! ```text
//! protected: { 1 (alg): -7, 4 (kid): approval-countersign key id (16 bytes) }
//! payload:   { "v":         1,
//!              "tx":        transaction id (16 bytes),
//!              "details":   the transaction's RFC 8785 canonical bytes,
//!              "nonce":     32 bytes,
//!              "challenge": SHA-256("signet/transaction-challenge/v1" ‖ nonce ‖ details),
//!              "rp":        the RP ID,
//!              "cred":      credential id,
//!              "pk":        the credential's COSE public key,
//!              "ad":        authenticator data, "cd": clientDataJSON (bytes),
//!              "sig":       the assertion signature,
//!              "aaguid":    16 bytes, "tier": 1-4, "policy": policy version,
//!              "at":        verification time, Unix milliseconds }
//! ```
//!
//! [`verify`] checks the countersignature, then everything it vouches for:
//! the challenge derivation, the client data (an assertion over that
//! challenge), the authenticator data (user present, the RP ID's hash) and
//! the assertion signature with the credential's key.

use ciborium::Value;
use coset::iana::{self, EnumI64};
use coset::{CborSerializable, CoseSign1, CoseSign1Builder, HeaderBuilder, TaggedCborSerializable};

use crate::evidence::{Assertion, EvidenceError, Fields, check_assertion};
use crate::keys::{EcPublicKey, EcdsaSignature, Kid, sha256};
use crate::transaction::{self, NONCE_LEN};
use crate::webauthn::b64url;

/// The largest receipt accepted.
pub const RECEIPT_MAX: usize = 64 * 1024;
const VERSION: u64 = 1;

fn bad(field: impl Into<String>, reason: impl Into<String>) -> EvidenceError {
    EvidenceError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// What a receipt holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    pub transaction_id: [u8; 16],
    pub details: Vec<u8>,
    pub nonce: [u8; NONCE_LEN],
    pub challenge: [u8; 32],
    pub rp_id: String,
    pub credential_id: Vec<u8>,
    pub public_key: Vec<u8>,
    pub authenticator_data: Vec<u8>,
    pub client_data_json: Vec<u8>,
    pub signature: Vec<u8>,
    pub aaguid: [u8; 16],
    pub tier: u8,
    pub policy_version: String,
    pub verified_ms: u64,
}

fn text_key(s: &str) -> Value {
    Value::Text(s.to_string())
}

impl Receipt {
    fn to_value(&self) -> Value {
        let bytes = |b: &[u8]| Value::Bytes(b.to_vec());
        Value::Map(vec![
            (text_key("v"), Value::Integer(VERSION.into())),
            (text_key("tx"), bytes(&self.transaction_id)),
            (text_key("details"), bytes(&self.details)),
            (text_key("nonce"), bytes(&self.nonce)),
            (text_key("challenge"), bytes(&self.challenge)),
            (text_key("rp"), Value::Text(self.rp_id.clone())),
            (text_key("cred"), bytes(&self.credential_id)),
            (text_key("pk"), bytes(&self.public_key)),
            (text_key("ad"), bytes(&self.authenticator_data)),
            (text_key("cd"), bytes(&self.client_data_json)),
            (text_key("sig"), bytes(&self.signature)),
            (text_key("aaguid"), bytes(&self.aaguid)),
            (text_key("tier"), Value::Integer(self.tier.into())),
            (text_key("policy"), Value::Text(self.policy_version.clone())),
            (text_key("at"), Value::Integer(self.verified_ms.into())),
        ])
    }

    fn from_value(v: Value) -> Result<Receipt, EvidenceError> {
        let Value::Map(entries) = v else {
            return Err(bad("receipt.payload", "must be a CBOR map"));
        };
        if entries.len() != 15 {
            return Err(bad(
                "receipt.payload",
                "must hold exactly the fifteen members of version 1",
            ));
        }
        let get = |name: &str| -> Result<&Value, EvidenceError> {
            let mut found = entries
                .iter()
                .filter(|(k, _)| k.as_text() == Some(name))
                .map(|(_, v)| v);
            match (found.next(), found.next()) {
                (Some(v), None) => Ok(v),
                (None, _) => Err(bad(format!("receipt.{name}"), "is missing")),
                (Some(_), Some(_)) => Err(bad(format!("receipt.{name}"), "appears twice")),
            }
        };
        let bytes = |name: &str| -> Result<Vec<u8>, EvidenceError> {
            get(name)?
                .as_bytes()
                .filter(|b| !b.is_empty())
                .cloned()
                .ok_or_else(|| bad(format!("receipt.{name}"), "must be a non-empty byte string"))
        };
        let int = |name: &str| -> Result<u64, EvidenceError> {
            get(name)?
                .as_integer()
                .and_then(|i| u64::try_from(i).ok())
                .ok_or_else(|| bad(format!("receipt.{name}"), "must be an unsigned integer"))
        };
        let text = |name: &str| -> Result<String, EvidenceError> {
            get(name)?
                .as_text()
                .map(str::to_string)
                .ok_or_else(|| bad(format!("receipt.{name}"), "must be text"))
        };
        let array = |name: &str, v: Vec<u8>| -> Result<Vec<u8>, EvidenceError> {
            let want = match name {
                "tx" | "aaguid" => 16,
                _ => 32,
            };
            if v.len() == want {
                Ok(v)
            } else {
                Err(bad(
                    format!("receipt.{name}"),
                    format!("must be {want} bytes"),
                ))
            }
        };
        if int("v")? != VERSION {
            return Err(bad("receipt.v", format!("must be {VERSION}")));
        }
        let tier = int("tier")?;
        if !(1..=4).contains(&tier) {
            return Err(bad("receipt.tier", "must be 1 to 4"));
        }
        let to16 = |v: Vec<u8>| <[u8; 16]>::try_from(v).unwrap_or_default();
        let to32 = |v: Vec<u8>| <[u8; 32]>::try_from(v).unwrap_or_default();
        Ok(Receipt {
            transaction_id: to16(array("tx", bytes("tx")?)?),
            details: bytes("details")?,
            nonce: to32(array("nonce", bytes("nonce")?)?),
            challenge: to32(array("challenge", bytes("challenge")?)?),
            rp_id: text("rp")?,
            credential_id: bytes("cred")?,
            public_key: bytes("pk")?,
            authenticator_data: bytes("ad")?,
            client_data_json: bytes("cd")?,
            signature: bytes("sig")?,
            aaguid: to16(array("aaguid", bytes("aaguid")?)?),
            tier: tier as u8,
            policy_version: text("policy")?,
            verified_ms: int("at")?,
        })
    }

    /// The bytes the `approval-countersign` key signs, and the COSE_Sign1
    /// waiting for the signature.
    pub fn to_be_signed(&self, kid: &Kid) -> Result<(Vec<u8>, CoseSign1), EvidenceError> {
        let mut payload = Vec::new();
        ciborium::into_writer(&self.to_value(), &mut payload)
            .map_err(|e| bad("receipt", format!("cannot be encoded: {e}")))?;
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

    /// The receipt, once signed.
    pub fn finish(
        mut unsigned: CoseSign1,
        signature: &EcdsaSignature,
    ) -> Result<Vec<u8>, EvidenceError> {
        unsigned.signature = signature.raw().to_vec();
        unsigned
            .to_tagged_vec()
            .map_err(|e| bad("receipt", format!("cannot be encoded: {e}")))
    }
}

/// What a verified receipt proves.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifiedReceipt {
    pub format: &'static str,
    pub transaction_id: String,
    /// The canonical details as text.
    pub transaction: String,
    pub rp_id: String,
    pub origin: String,
    pub credential_id: String,
    pub key_sha256: String,
    pub aaguid: String,
    pub tier: u8,
    pub policy_version: String,
    pub verified_at: String,
    pub user_verified: bool,
    pub sign_count: u32,
    /// The countersigning key's id.
    pub kid: String,
}

/// The kid a receipt names, before anything is verified (to pick the key).
pub fn kid_of(bytes: &[u8]) -> Result<Kid, EvidenceError> {
    let sign1 = parse(bytes)?;
    Kid::from_bytes(&sign1.protected.header.key_id)
        .ok_or_else(|| bad("receipt.protected.kid", "must be a 16-byte key id"))
}

fn parse(bytes: &[u8]) -> Result<CoseSign1, EvidenceError> {
    if bytes.is_empty() || bytes.len() > RECEIPT_MAX {
        return Err(bad("receipt", format!("must be 1 to {RECEIPT_MAX} bytes")));
    }
    let sign1 = CoseSign1::from_tagged_slice(bytes)
        .or_else(|_| CoseSign1::from_slice(bytes))
        .map_err(|e| bad("receipt", format!("not a COSE_Sign1: {e}")))?;
    if sign1.protected.header.alg != Some(coset::Algorithm::Assigned(iana::Algorithm::ES256)) {
        return Err(bad(
            "receipt.protected.alg",
            format!("must be {} (ES256)", iana::Algorithm::ES256.to_i64()),
        ));
    }
    Ok(sign1)
}

/// Verifies a receipt with the `approval-countersign` public key, and the
/// approval it vouches for.
pub fn verify(bytes: &[u8], key: &EcPublicKey) -> Result<VerifiedReceipt, EvidenceError> {
    let sign1 = parse(bytes)?;
    let kid = Kid::from_bytes(&sign1.protected.header.key_id)
        .ok_or_else(|| bad("receipt.protected.kid", "must be a 16-byte key id"))?;
    let signature = EcdsaSignature::from_raw(&sign1.signature)
        .map_err(|_| bad("receipt.signature", "must be r || s, 64 bytes"))?;
    if !key.verify(&sign1.tbs_data(b""), &signature) {
        return Err(bad(
            "receipt.signature",
            "does not verify with the approval-countersign key given",
        ));
    }
    let payload = sign1
        .payload
        .as_deref()
        .ok_or_else(|| bad("receipt.payload", "is missing"))?;
    let value: Value = ciborium::from_reader(payload)
        .map_err(|e| bad("receipt.payload", format!("not CBOR: {e}")))?;
    let r = Receipt::from_value(value)?;

    // What the countersignature vouches for is checked again here, so a
    // receipt signet should never have signed is still caught.
    if transaction::challenge(&r.nonce, &r.details) != r.challenge {
        return Err(bad(
            "receipt.challenge",
            "is not derived from the details and the nonce",
        ));
    }
    let details = String::from_utf8(r.details.clone())
        .map_err(|_| bad("receipt.details", "is not UTF-8 JSON"))?;
    let a = check_assertion(
        &Assertion {
            client_data_json: &r.client_data_json,
            authenticator_data: &r.authenticator_data,
            signature: &r.signature,
            public_key: &r.public_key,
        },
        &r.challenge,
        Some(&r.rp_id),
        Fields {
            client_data: "receipt.cd",
            authenticator_data: "receipt.ad",
            signature: "receipt.sig",
            public_key: "receipt.pk",
            challenge_from: "the transaction's details and nonce",
        },
    )?;
    Ok(VerifiedReceipt {
        format: "signet-receipt",
        transaction_id: b64url(&r.transaction_id),
        transaction: details,
        rp_id: r.rp_id,
        origin: a.origin,
        credential_id: b64url(&r.credential_id),
        key_sha256: crate::hex::encode(&sha256(&r.public_key)),
        aaguid: crate::webauthn::uuid_text(&r.aaguid),
        tier: r.tier,
        policy_version: r.policy_version,
        verified_at: crate::rfc3339::format_ms(r.verified_ms),
        user_verified: a.user_verified,
        sign_count: a.sign_count,
        kid: kid.to_string(),
    })
}

#[cfg(all(test, feature = "testkit"))]
mod tests {
    use super::*;
    use crate::testkit::{Ceremony, SoftAuthenticator};
    use crate::webauthn::CoseAlgorithm;
    use p256::ecdsa::signature::Signer;

    fn countersigner(seed: u8) -> (p256::ecdsa::SigningKey, EcPublicKey) {
        let sk = p256::ecdsa::SigningKey::from_slice(&[seed; 32]).expect("key");
        let pk = EcPublicKey::from_p256(&p256::PublicKey::from(sk.verifying_key()));
        (sk, pk)
    }

    /// A real approval by a soft authenticator, and its receipt.
    fn approval() -> Receipt {
        let details = transaction::Details::parse(&serde_json::json!({
            "type": "payment", "amount": "1500.00", "currency": "CHF",
            "payee": {"name": "ACME AG"}
        }))
        .expect("details");
        let nonce = [5u8; NONCE_LEN];
        let challenge = details.challenge(&nonce);
        let mut auth = SoftAuthenticator::new(CoseAlgorithm::Es256);
        let parts = auth.assert(&Ceremony::new(
            "bank.example",
            "https://bank.example",
            &challenge,
        ));
        Receipt {
            transaction_id: [1; 16],
            details: details.canonical,
            nonce,
            challenge,
            rp_id: "bank.example".into(),
            credential_id: auth.credential_id.clone(),
            public_key: auth.key().cose_key(),
            authenticator_data: parts.auth_data.clone(),
            client_data_json: parts.client_data_json.as_bytes().to_vec(),
            signature: parts.signature.clone(),
            aaguid: [0; 16],
            tier: 3,
            policy_version: "test-1".into(),
            verified_ms: 1_800_000_000_000,
        }
    }

    fn signed(r: &Receipt, seed: u8) -> Vec<u8> {
        let (sk, pk) = countersigner(seed);
        let (tbs, unsigned) = r.to_be_signed(&Kid::of(&pk)).expect("tbs");
        let sig: p256::ecdsa::Signature = sk.sign(&tbs);
        Receipt::finish(
            unsigned,
            &EcdsaSignature::from_raw(&sig.to_bytes()).expect("raw"),
        )
        .expect("finish")
    }

    #[test]
    fn a_receipt_verifies_offline_with_the_countersign_key() {
        let r = approval();
        let bytes = signed(&r, 3);
        let (_, key) = countersigner(3);
        let v = verify(&bytes, &key).expect("verifies");
        assert!(v.transaction.contains(r#""amount":"1500.00""#), "{v:?}");
        assert_eq!(v.tier, 3);
        assert_eq!(kid_of(&bytes).expect("kid"), Kid::of(&key));
        // Another key: refused.
        let (_, other) = countersigner(4);
        assert_eq!(
            verify(&bytes, &other).unwrap_err().field,
            "receipt.signature"
        );
        // Every byte matters.
        for i in (0..bytes.len()).step_by(5) {
            let mut b = bytes.clone();
            b[i] ^= 1;
            assert!(verify(&b, &key).is_err(), "byte {i}");
        }
    }

    #[test]
    fn what_the_countersignature_vouches_for_is_checked_again() {
        let (_, key) = countersigner(3);
        let mut r = approval();
        r.details = r.details.clone().into_iter().rev().collect();
        assert_eq!(
            verify(&signed(&r, 3), &key).unwrap_err().field,
            "receipt.challenge"
        );
        let mut r = approval();
        let last = r.signature.len() - 1;
        r.signature[last] ^= 1;
        assert_eq!(
            verify(&signed(&r, 3), &key).unwrap_err().field,
            "receipt.sig"
        );
        let mut r = approval();
        r.rp_id = "evil.example".into();
        assert_eq!(
            verify(&signed(&r, 3), &key).unwrap_err().field,
            "receipt.ad.rpIdHash"
        );
        let mut r = approval();
        r.tier = 9;
        assert_eq!(
            verify(&signed(&r, 3), &key).unwrap_err().field,
            "receipt.tier"
        );
        assert_eq!(verify(&[], &key).unwrap_err().field, "receipt");
        assert_eq!(
            verify(&vec![0; RECEIPT_MAX + 1], &key).unwrap_err().field,
            "receipt"
        );
    }
}
