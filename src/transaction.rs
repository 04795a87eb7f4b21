//! Transaction details for dynamic linking: what the user approves,
//! checked, put in one canonical byte form, and bound into the WebAuthn
//! challenge, so that an assertion approves exactly these details.
//!
//! # Details
//!
//! A JSON object chosen by the bank, with `type` (what kind of
//! transaction: `payment`, `add-payee`, ...) and, for anything that moves
//! money, `amount` and `currency`:
//!
//! * `amount` is a decimal **string in major units** (`"1500.00"` is one
//!   thousand five hundred francs), never a JSON number: numbers are binary
//!   floats in most JSON stacks, and an approval must not depend on how
//!   one rounds. At most 18 integer and 18 fraction digits, not negative.
//! * `currency` is an ISO 4217 code (`CHF`).
//! * Anything else (`payee`, `reference`, ...) is kept as given and signed
//!   with the rest.
//!
//! # Canonical form and challenge
//!
//! The details are serialized with the JSON Canonicalization Scheme (RFC
//! 8785: members sorted by UTF-16 code units, no whitespace, ES6 number
//! form). The challenge is
//!
//! ```text
//! challenge = SHA-256("signet/transaction-challenge/v1" ‖ nonce ‖ canonical)
//! ```
//!
//! with the 32-byte nonce signet draws per transaction. Core banking can
//! recompute it from the details it sent and the nonce signet returns.

use serde_json::{Map, Value};

use crate::keys::sha256;
use crate::policy::amount::{Amount, Decimal, currency};

/// The largest canonical form accepted.
pub const CANONICAL_MAX: usize = 8 * 1024;
/// The deepest nesting of objects and arrays accepted.
pub const DEPTH_MAX: usize = 16;
/// Bytes of the per-transaction nonce.
pub const NONCE_LEN: usize = 32;
const CHALLENGE_TAG: &[u8] = b"signet/transaction-challenge/v1";

/// Why transaction details were refused, naming the member.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct DetailsError {
    pub field: String,
    pub reason: String,
}

fn bad(field: impl Into<String>, reason: impl Into<String>) -> DetailsError {
    DetailsError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Checked details and their canonical bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Details {
    pub value: Map<String, Value>,
    pub kind: String,
    pub amount: Option<Amount>,
    /// RFC 8785 bytes: what the challenge and the receipt commit to.
    pub canonical: Vec<u8>,
}

fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

impl Details {
    /// Checks `value` (the request's `details` member) and canonicalizes it.
    pub fn parse(value: &Value) -> Result<Details, DetailsError> {
        const FIELD: &str = "details";
        let Value::Object(obj) = value else {
            return Err(bad(FIELD, "must be a JSON object"));
        };
        if depth(value) > DEPTH_MAX {
            return Err(bad(FIELD, format!("nested deeper than {DEPTH_MAX} levels")));
        }
        let kind = match obj.get("type") {
            Some(Value::String(t))
                if !t.is_empty()
                    && t.len() <= 64
                    && t.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
                    }) =>
            {
                t.clone()
            }
            Some(_) => {
                return Err(bad(
                    "details.type",
                    "must be 1 to 64 characters of a-z, 0-9, - and _",
                ));
            }
            None => return Err(bad("details.type", "is required")),
        };
        let amount = match (obj.get("amount"), obj.get("currency")) {
            (None, None) => None,
            (Some(_), None) => return Err(bad("details.currency", "is required with amount")),
            (None, Some(_)) => return Err(bad("details.amount", "is required with currency")),
            (Some(a), Some(c)) => {
                let Value::String(a) = a else {
                    return Err(bad(
                        "details.amount",
                        "must be a decimal string in major units (\"1500.00\"), not a number",
                    ));
                };
                let Value::String(c) = c else {
                    return Err(bad("details.currency", "must be an ISO 4217 code"));
                };
                let value = Decimal::parse(a).map_err(|e| bad("details.amount", e))?;
                let currency = currency(c).map_err(|e| bad("details.currency", e))?;
                Some(Amount { value, currency })
            }
        };
        let canonical = serde_json_canonicalizer::to_vec(value)
            .map_err(|e| bad(FIELD, format!("cannot be canonicalized: {e}")))?;
        if canonical.len() > CANONICAL_MAX {
            return Err(bad(
                FIELD,
                format!("larger than {CANONICAL_MAX} bytes in canonical form"),
            ));
        }
        Ok(Details {
            value: obj.clone(),
            kind,
            amount,
            canonical,
        })
    }

    /// The challenge an assertion approving these details answers.
    pub fn challenge(&self, nonce: &[u8; NONCE_LEN]) -> [u8; 32] {
        challenge(nonce, &self.canonical)
    }
}

/// `SHA-256("signet/transaction-challenge/v1" ‖ nonce ‖ canonical)`.
pub fn challenge(nonce: &[u8; NONCE_LEN], canonical: &[u8]) -> [u8; 32] {
    sha256(&[CHALLENGE_TAG, nonce.as_slice(), canonical].concat())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_form_is_rfc_8785() {
        // RFC 8785 §3.2.2's example.
        let input = r#"{
            "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
            "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
            "literals": [null, true, false],
            "type": "test"
        }"#;
        let v: Value = serde_json::from_str(input).expect("json");
        let d = Details::parse(&v).expect("details");
        assert_eq!(
            String::from_utf8(d.canonical).expect("utf-8"),
            r#"{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/","type":"test"}"#
        );
        // Member order and whitespace do not change the bytes.
        let a = Details::parse(&json!({"type": "payment", "amount": "10.00", "currency": "CHF"}))
            .expect("a");
        let b: Value =
            serde_json::from_str(r#"{ "currency":"CHF",  "amount":"10.00", "type":"payment" }"#)
                .expect("b");
        assert_eq!(a.canonical, Details::parse(&b).expect("b").canonical);
    }

    #[test]
    fn the_challenge_commits_to_every_byte_and_the_nonce() {
        let d = Details::parse(&json!({
            "type": "payment", "amount": "1500.00", "currency": "EUR",
            "payee": {"name": "ACME AG", "iban": "CH9300762011623852957"}
        }))
        .expect("details");
        let nonce = [7u8; NONCE_LEN];
        let c = d.challenge(&nonce);
        assert_ne!(c, d.challenge(&[8u8; NONCE_LEN]));
        let other = Details::parse(&json!({
            "type": "payment", "amount": "1500.01", "currency": "EUR",
            "payee": {"name": "ACME AG", "iban": "CH9300762011623852957"}
        }))
        .expect("details");
        assert_ne!(c, other.challenge(&nonce));
        assert_eq!(c, challenge(&nonce, &d.canonical));
        assert_eq!(d.amount.expect("amount").currency, "EUR");
    }

    #[test]
    fn bad_details_name_the_member() {
        for (v, field) in [
            (json!([]), "details"),
            (json!({}), "details.type"),
            (json!({"type": "Pay Me"}), "details.type"),
            (
                json!({"type": "payment", "amount": 10.5, "currency": "CHF"}),
                "details.amount",
            ),
            (
                json!({"type": "payment", "amount": "-1", "currency": "CHF"}),
                "details.amount",
            ),
            (
                json!({"type": "payment", "amount": "1,5", "currency": "CHF"}),
                "details.amount",
            ),
            (
                json!({"type": "payment", "amount": "10"}),
                "details.currency",
            ),
            (
                json!({"type": "payment", "currency": "CHF"}),
                "details.amount",
            ),
            (
                json!({"type": "payment", "amount": "10", "currency": "chf1"}),
                "details.currency",
            ),
            (
                json!({"type": "payment", "memo": "x".repeat(CANONICAL_MAX)}),
                "details",
            ),
        ] {
            let e = Details::parse(&v).expect_err(&v.to_string());
            assert_eq!(e.field, field, "{v}: {e}");
        }
        let mut deep = json!("leaf");
        for _ in 0..DEPTH_MAX {
            deep = json!([deep]);
        }
        let e = Details::parse(&json!({"type": "t", "x": deep})).expect_err("deep");
        assert_eq!(e.field, "details");
        assert!(
            Details::parse(&json!({"type": "add-payee"}))
                .expect("no amount")
                .amount
                .is_none()
        );
    }
}
