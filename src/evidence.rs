//! Offline evidence: what a bank verifies years later, without signet
//! running, to settle which authenticator approved which transaction.
//!
//! # Verification-log records
//!
//! One JSON object per approval with six members: `S` (the assertion
//! signature), `T` (the transaction details as signed, JSON text), `CAD`
//! (authenticator data), `CCD` (clientDataJSON, as text), `N` (the nonce)
//! and `P` (the credential's COSE public key); `S`, `CAD`, `N` and `P` are
//! base64url. A record verifies when
//!
//! 1. `CCD` is an assertion's client data (`type` `webauthn.get` or
//!    `payment.get`) whose `challenge` is the one derived from `T` and `N`,
//! 2. `CAD` is authenticator data with the user-present flag, for the
//!    expected RP ID when one is given, and
//! 3. `S` verifies with `P` over `CAD ‖ SHA-256(CCD)` (WebAuthn §7.2).
//!
//! # Challenge derivations
//!
//! * **Airlock IAM** (records it wrote): `challenge = SHA-512(T ‖ N)`,
//!   with `T` the transaction text as logged and `N` the nonce's base64url
//!   *text*, not its decoded bytes. Worked out from the sample record in
//!   Airlock's documentation, which it reproduces; any change to `T` or `N`
//!   changes the challenge.
//!
//! Everything here is pure (bytes in, verdict out) and bounded: a record
//! larger than [`RECORD_MAX`] is refused before it is parsed.

use serde_json::{Map, Value};

use crate::keys::sha256;
use crate::webauthn::authenticator_data::AuthenticatorData;
use crate::webauthn::cose_key::CredentialPublicKey;
use crate::webauthn::{b64url, b64url_decode};

/// The largest record accepted (a record holds one assertion and one
/// transaction: a few KiB).
pub const RECORD_MAX: usize = 64 * 1024;
/// The longest nonce text accepted.
const NONCE_MAX: usize = 1024;

/// Why a piece of evidence does not verify, naming the member at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct EvidenceError {
    pub field: String,
    pub reason: String,
}

fn bad(field: impl Into<String>, reason: impl Into<String>) -> EvidenceError {
    EvidenceError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Which party wrote a record, and so how its challenge was derived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Airlock,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Airlock => "airlock-verification-log",
        }
    }
}

/// A verification-log record, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRecord {
    pub signature: Vec<u8>,
    pub transaction: String,
    pub authenticator_data: Vec<u8>,
    pub client_data_json: String,
    pub nonce: String,
    pub public_key: Vec<u8>,
}

impl LogRecord {
    /// Parses one record (a JSON object with exactly the six members).
    pub fn parse(text: &str) -> Result<LogRecord, EvidenceError> {
        if text.len() > RECORD_MAX {
            return Err(bad("record", format!("larger than {RECORD_MAX} bytes")));
        }
        let value: Value =
            serde_json::from_str(text).map_err(|e| bad("record", format!("not JSON: {e}")))?;
        let Value::Object(obj) = value else {
            return Err(bad("record", "must be a JSON object"));
        };
        LogRecord::from_object(&obj)
    }

    fn from_object(obj: &Map<String, Value>) -> Result<LogRecord, EvidenceError> {
        const MEMBERS: [&str; 6] = ["S", "T", "CAD", "CCD", "N", "P"];
        if let Some(k) = obj.keys().find(|k| !MEMBERS.contains(&k.as_str())) {
            return Err(bad(
                crate::flows::truncate(k, 64),
                "unknown member; a record holds S, T, CAD, CCD, N and P",
            ));
        }
        let text = |name: &str| -> Result<&str, EvidenceError> {
            match obj.get(name) {
                Some(Value::String(s)) if !s.is_empty() => Ok(s),
                Some(Value::String(_)) => Err(bad(name, "is empty")),
                Some(_) => Err(bad(name, "must be a string")),
                None => Err(bad(name, "is missing")),
            }
        };
        let bytes = |name: &str| -> Result<Vec<u8>, EvidenceError> {
            b64url_decode(name, text(name)?, RECORD_MAX).map_err(|e| bad(name, e.to_string()))
        };
        // In the order the members are documented, so the first fault is named.
        let signature = bytes("S")?;
        let transaction = text("T")?.to_string();
        let authenticator_data = bytes("CAD")?;
        let client_data_json = text("CCD")?.to_string();
        let nonce = text("N")?;
        if nonce.len() > NONCE_MAX {
            return Err(bad("N", format!("longer than {NONCE_MAX} characters")));
        }
        Ok(LogRecord {
            signature,
            transaction,
            authenticator_data,
            client_data_json,
            nonce: nonce.to_string(),
            public_key: bytes("P")?,
        })
    }

    /// The format a record is in. Only Airlock's is known so far; signet's
    /// own records will carry a version member that tells them apart.
    pub fn format(&self) -> Format {
        Format::Airlock
    }
}

/// Airlock IAM's transaction challenge: SHA-512 over the transaction text
/// followed by the nonce's base64url text.
pub fn airlock_challenge(transaction: &str, nonce: &str) -> [u8; 64] {
    let digest = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA512,
        &[transaction.as_bytes(), nonce.as_bytes()].concat(),
    );
    let mut out = [0u8; 64];
    out.copy_from_slice(digest.as_ref());
    out
}

/// What a verified record proves.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Verified {
    pub format: &'static str,
    /// The transaction as the user approved it (`T`).
    pub transaction: String,
    /// `webauthn.get` or `payment.get`.
    pub ceremony: String,
    pub origin: String,
    pub challenge: String,
    pub rp_id_hash: String,
    pub user_present: bool,
    pub user_verified: bool,
    pub sign_count: u32,
    /// The credential key's COSE algorithm.
    pub algorithm: i64,
    /// SHA-256 of the COSE public key: which authenticator approved.
    pub key_sha256: String,
}

/// Verifies a record; `rp_id`, when given, must be the one the
/// authenticator data names.
pub fn verify_record(record: &LogRecord, rp_id: Option<&str>) -> Result<Verified, EvidenceError> {
    let expected = match record.format() {
        Format::Airlock => airlock_challenge(&record.transaction, &record.nonce),
    };
    let a = check_assertion(
        &Assertion {
            client_data_json: record.client_data_json.as_bytes(),
            authenticator_data: &record.authenticator_data,
            signature: &record.signature,
            public_key: &record.public_key,
        },
        &expected,
        rp_id,
        Fields {
            client_data: "CCD",
            authenticator_data: "CAD",
            signature: "S",
            public_key: "P",
            challenge_from: "T and N: the transaction or the nonce differs from what was signed",
        },
    )?;
    Ok(Verified {
        format: record.format().as_str(),
        transaction: record.transaction.clone(),
        ceremony: a.ceremony,
        origin: a.origin,
        challenge: b64url(&expected),
        rp_id_hash: crate::hex::encode(&a.rp_id_hash),
        user_present: true,
        user_verified: a.user_verified,
        sign_count: a.sign_count,
        algorithm: a.algorithm,
        key_sha256: crate::hex::encode(&sha256(&record.public_key)),
    })
}

/// An assertion as evidence carries it.
pub struct Assertion<'a> {
    pub client_data_json: &'a [u8],
    pub authenticator_data: &'a [u8],
    pub signature: &'a [u8],
    /// The credential's COSE public key.
    pub public_key: &'a [u8],
}

/// The names a piece of evidence gives the assertion's parts, for errors.
pub struct Fields {
    pub client_data: &'static str,
    pub authenticator_data: &'static str,
    pub signature: &'static str,
    pub public_key: &'static str,
    /// What the expected challenge is derived from, for the mismatch error.
    pub challenge_from: &'static str,
}

/// What a checked assertion says.
pub struct Checked {
    pub ceremony: String,
    pub origin: String,
    pub rp_id_hash: [u8; 32],
    pub user_verified: bool,
    pub sign_count: u32,
    pub algorithm: i64,
}

/// One approval's assertion, offline (WebAuthn §7.2's checks that need no
/// stored state): the client data is an assertion (`webauthn.get` or
/// `payment.get`) over `challenge`; the authenticator data has user
/// presence and, when `rp_id` is given, its hash; the signature verifies
/// with the key over `authenticatorData ‖ SHA-256(clientDataJSON)`.
pub fn check_assertion(
    a: &Assertion<'_>,
    challenge: &[u8],
    rp_id: Option<&str>,
    f: Fields,
) -> Result<Checked, EvidenceError> {
    let cd: Value = serde_json::from_slice(a.client_data_json)
        .map_err(|e| bad(f.client_data, format!("not JSON: {e}")))?;
    let member = |name: &str| -> Result<String, EvidenceError> {
        cd.get(name)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| {
                bad(
                    format!("{}.{name}", f.client_data),
                    "is missing or not a string",
                )
            })
    };
    let ceremony = member("type")?;
    if ceremony != "webauthn.get" && ceremony != "payment.get" {
        return Err(bad(
            format!("{}.type", f.client_data),
            format!("is {ceremony:?}, not an assertion (webauthn.get or payment.get)"),
        ));
    }
    let field = format!("{}.challenge", f.client_data);
    let got = b64url_decode(&field, &member("challenge")?, 1024)
        .map_err(|e| bad(&field, e.to_string()))?;
    if got != challenge {
        return Err(bad(
            field,
            format!("is not the challenge derived from {}", f.challenge_from),
        ));
    }
    let origin = member("origin")?;

    let ad = AuthenticatorData::parse(a.authenticator_data, f.authenticator_data)
        .map_err(|e| bad(f.authenticator_data, e.to_string()))?;
    if !ad.flags.up {
        return Err(bad(
            format!("{}.flags", f.authenticator_data),
            "user presence (UP) is not set: no one approved",
        ));
    }
    if let Some(rp) = rp_id
        && ad.rp_id_hash != sha256(rp.as_bytes())
    {
        return Err(bad(
            format!("{}.rpIdHash", f.authenticator_data),
            format!("is not SHA-256 of the RP ID {rp:?}"),
        ));
    }

    let key = CredentialPublicKey::from_cose(a.public_key, f.public_key)
        .map_err(|e| bad(f.public_key, e.to_string()))?;
    let mut signed = a.authenticator_data.to_vec();
    signed.extend_from_slice(&sha256(a.client_data_json));
    key.verify(&signed, a.signature, f.signature)
        .map_err(|e| bad(f.signature, e.to_string()))?;
    Ok(Checked {
        ceremony,
        origin,
        rp_id_hash: ad.rp_id_hash,
        user_verified: ad.flags.uv,
        sign_count: ad.sign_count,
        algorithm: key.alg.id(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sample record of Airlock IAM's documentation (seed 003).
    pub(crate) const AIRLOCK_SAMPLE: &str = include_str!("../tests/data/airlock-log-record.json");

    #[test]
    fn the_airlock_sample_verifies() {
        let r = LogRecord::parse(AIRLOCK_SAMPLE).expect("parse");
        let v = verify_record(&r, Some("localhost")).expect("verifies");
        assert_eq!(
            v.transaction,
            r#"{"type":"payment","amount":"300000000","currency":"CHF"}"#
        );
        assert_eq!(v.origin, "https://localhost");
        assert!(v.user_present && v.user_verified);
        assert_eq!(v.sign_count, 2);
        assert_eq!(v.algorithm, -7);
    }

    #[test]
    fn any_change_to_t_or_n_breaks_it() {
        let r = LogRecord::parse(AIRLOCK_SAMPLE).expect("parse");
        let mut t = r.clone();
        t.transaction = t.transaction.replace("300000000", "300000001");
        assert_eq!(verify_record(&t, None).unwrap_err().field, "CCD.challenge");
        let mut n = r.clone();
        n.nonce.push('A');
        assert_eq!(verify_record(&n, None).unwrap_err().field, "CCD.challenge");
        // Each character of T and N matters.
        for i in 0..r.transaction.len() {
            let mut t = r.clone();
            let mut bytes = t.transaction.into_bytes();
            bytes[i] ^= 0x01;
            t.transaction = String::from_utf8_lossy(&bytes).into_owned();
            assert!(verify_record(&t, None).is_err(), "T byte {i}");
        }
        let mut sig = r.clone();
        let last = sig.signature.len() - 1;
        sig.signature[last] ^= 1;
        assert_eq!(verify_record(&sig, None).unwrap_err().field, "S");
        let mut cad = r.clone();
        cad.authenticator_data[36] ^= 1; // the counter
        assert_eq!(verify_record(&cad, None).unwrap_err().field, "S");
        assert_eq!(
            verify_record(&r, Some("bank.example")).unwrap_err().field,
            "CAD.rpIdHash"
        );
    }

    #[test]
    fn malformed_records_name_the_member() {
        let good: Value = serde_json::from_str(AIRLOCK_SAMPLE).expect("json");
        for (edit, field) in [
            ("S", "S"),
            ("CAD", "CAD"),
            ("P", "P"),
            ("N", "N"),
            ("CCD", "CCD"),
        ] {
            let mut v = good.clone();
            v[edit] = Value::from(5);
            let e = LogRecord::parse(&v.to_string()).unwrap_err();
            assert_eq!(e.field, field, "{e}");
        }
        let mut v = good.clone();
        v.as_object_mut().expect("object").remove("T");
        assert_eq!(LogRecord::parse(&v.to_string()).unwrap_err().field, "T");
        let mut v = good.clone();
        v["X"] = Value::from("y");
        assert_eq!(LogRecord::parse(&v.to_string()).unwrap_err().field, "X");
        assert_eq!(LogRecord::parse("[]").unwrap_err().field, "record");
        assert_eq!(LogRecord::parse("{").unwrap_err().field, "record");
        let big = " ".repeat(RECORD_MAX + 1);
        assert_eq!(LogRecord::parse(&big).unwrap_err().field, "record");
        // A registration's client data is not an approval.
        let mut r = LogRecord::parse(AIRLOCK_SAMPLE).expect("parse");
        r.client_data_json = r
            .client_data_json
            .replace("webauthn.get", "webauthn.create");
        assert_eq!(verify_record(&r, None).unwrap_err().field, "CCD.type");
    }
}
