//! Offline evidence: what a bank verifies years later, without signet
//! running, to settle which authenticator approved which transaction.
//!
//! # Verification-log records
//!
//! One JSON object per approval, one per line in a log file. Every record
//! carries six members: `S` (the assertion signature), `T` (the
//! transaction details as signed, JSON text), `CAD` (authenticator data),
//! `CCD` (clientDataJSON, as text), `N` (the nonce) and `P` (the
//! credential's COSE public key); `S`, `CAD`, `N` and `P` are base64url.
//!
//! * **Airlock IAM**'s records hold exactly these six members and nothing
//!   else.
//! * **signet**'s own records (written with [`LogRecord::to_line`], members
//!   in this order) add a `format` member, which tells them apart, and what
//!   the approval was about:
//!
//!   ```text
//!   {"format":"signet-verification-log/1","tx":"<transaction id, 16 bytes>",
//!    "rp":"<RP ID>","at":"<verification time, RFC 3339 UTC>","S":"...",
//!    "T":"<the details' RFC 8785 canonical JSON, as signed>","CAD":"...",
//!    "CCD":"...","N":"<the 32-byte nonce>","P":"..."}
//!   ```
//!
//!   (on one line). `tx` and `N` are base64url; `at` is not before 1970
//!   and no finer than a millisecond; `format` must be exactly
//!   `signet-verification-log/1`, and no other member is allowed. `rp` is
//!   bound to the assertion (its hash is in `CAD`), but `tx` and `at` are
//!   what signet recorded: the authenticator's signature does not cover
//!   them (a receipt, countersigned, does).
//!
//! A record verifies when
//!
//! 1. `CCD` is an assertion's client data (`type` `webauthn.get` or
//!    `payment.get`) whose `challenge` is the one derived from `T` and `N`,
//! 2. `CAD` is authenticator data with the user-present flag, for the
//!    expected RP ID (when one is given; for a signet record always: its
//!    `rp`, which must also be the one given), and
//! 3. `S` verifies with `P` over `CAD ‖ SHA-256(CCD)` (WebAuthn §7.2).
//!
//! A log file holds the transactions themselves (payees, accounts,
//! amounts) in `T`: it must be protected, kept and disposed of like the
//! transaction records of the bank.
//!
//! # Challenge derivations
//!
//! * **Airlock IAM** (records it wrote): `challenge = SHA-512(T ‖ N)`,
//!   with `T` the transaction text as logged and `N` the nonce's base64url
//!   *text*, not its decoded bytes. Worked out from the sample record in
//!   Airlock's documentation, which it reproduces; any change to `T` or `N`
//!   changes the challenge.
//! * **signet** (records with `format`): signet's transaction challenge,
//!   `challenge = SHA-256("signet/transaction-challenge/v1" ‖ N ‖ T)`
//!   (see [`crate::transaction`]), with `N` the nonce's 32 *decoded* bytes
//!   and `T` the canonical details' bytes exactly as logged.
//!
//! Everything here is pure (bytes in, verdict out) and bounded: a record
//! larger than [`RECORD_MAX`] is refused before it is parsed.

use std::time::UNIX_EPOCH;

use serde_json::{Map, Value};

use crate::keys::sha256;
use crate::transaction::{self, NONCE_LEN};
use crate::webauthn::authenticator_data::AuthenticatorData;
use crate::webauthn::cose_key::CredentialPublicKey;
use crate::webauthn::{b64url, b64url_decode};

/// The largest record accepted (a record holds one assertion and one
/// transaction: a few KiB).
pub const RECORD_MAX: usize = 64 * 1024;
/// The longest nonce text accepted.
const NONCE_MAX: usize = 1024;
/// The `format` member of signet's verification-log records.
pub const SIGNET_LOG_FORMAT: &str = "signet-verification-log/1";
/// The longest RP ID accepted (a DNS name).
const RP_ID_MAX: usize = 253;
/// The members of every record, in the order they are written.
const ASSERTION_MEMBERS: [&str; 6] = ["S", "T", "CAD", "CCD", "N", "P"];
/// The members signet's records add in front of them.
const SIGNET_MEMBERS: [&str; 4] = ["format", "tx", "rp", "at"];

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
    Signet,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Airlock => "airlock-verification-log",
            Format::Signet => "signet-verification-log",
        }
    }
}

/// What a signet record says about the approval besides the assertion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignetMeta {
    pub transaction_id: [u8; 16],
    pub rp_id: String,
    /// When signet verified the assertion, Unix milliseconds.
    pub verified_ms: u64,
}

/// A verification-log record, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRecord {
    pub signature: Vec<u8>,
    pub transaction: String,
    pub authenticator_data: Vec<u8>,
    pub client_data_json: String,
    /// `N` as its text (for a signet record, the base64url of 32 bytes).
    pub nonce: String,
    pub public_key: Vec<u8>,
    /// Present in signet's own records.
    pub signet: Option<SignetMeta>,
}

impl LogRecord {
    /// Parses one record: Airlock's (exactly the six members) or, when it
    /// has a `format` member, signet's (exactly the ten members).
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
        let signet = obj.contains_key("format");
        if signet {
            match obj.get("format") {
                Some(Value::String(f)) if f == SIGNET_LOG_FORMAT => {}
                Some(Value::String(f)) => {
                    return Err(bad(
                        "format",
                        format!(
                            "is {:?}; this verifier reads {SIGNET_LOG_FORMAT} (and Airlock \
                             records, which have no format member)",
                            crate::flows::truncate(f, 64)
                        ),
                    ));
                }
                _ => return Err(bad("format", "must be a string")),
            }
        }
        let known =
            |k: &str| ASSERTION_MEMBERS.contains(&k) || (signet && SIGNET_MEMBERS.contains(&k));
        if let Some(k) = obj.keys().find(|k| !known(k)) {
            return Err(bad(
                crate::flows::truncate(k, 64),
                if signet {
                    "unknown member; a signet record holds format, tx, rp, at, S, T, CAD, CCD, \
                     N and P"
                } else if SIGNET_MEMBERS.contains(&k.as_str()) {
                    "unknown member in an Airlock record (S, T, CAD, CCD, N and P); signet's \
                     records, which have it, begin with format"
                } else {
                    "unknown member; a record holds S, T, CAD, CCD, N and P"
                },
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
        // In the order the members are written, so the first fault is named.
        let meta = if signet {
            let tx = b64url_decode("tx", text("tx")?, 16).map_err(|e| bad("tx", e.to_string()))?;
            let transaction_id = <[u8; 16]>::try_from(tx.as_slice())
                .map_err(|_| bad("tx", format!("must be 16 bytes, not {}", tx.len())))?;
            let rp_id = text("rp")?;
            if rp_id.len() > RP_ID_MAX {
                return Err(bad("rp", format!("longer than {RP_ID_MAX} bytes")));
            }
            Some(SignetMeta {
                transaction_id,
                rp_id: rp_id.to_string(),
                verified_ms: parse_ms(text("at")?)?,
            })
        } else {
            None
        };
        let signature = bytes("S")?;
        let transaction = text("T")?.to_string();
        let authenticator_data = bytes("CAD")?;
        let client_data_json = text("CCD")?.to_string();
        let nonce = text("N")?;
        if nonce.len() > NONCE_MAX {
            return Err(bad("N", format!("longer than {NONCE_MAX} characters")));
        }
        if meta.is_some() {
            signet_nonce(nonce)?;
        }
        Ok(LogRecord {
            signature,
            transaction,
            authenticator_data,
            client_data_json,
            nonce: nonce.to_string(),
            public_key: bytes("P")?,
            signet: meta,
        })
    }

    /// The format a record is in: signet's when it carries signet's
    /// members, Airlock's otherwise.
    pub fn format(&self) -> Format {
        if self.signet.is_some() {
            Format::Signet
        } else {
            Format::Airlock
        }
    }

    /// The record as one line of JSON (no newline), members in the order
    /// documented: signet's ten for a signet record, the six otherwise.
    /// Refused when [`LogRecord::parse`] would not read it back as this
    /// record (an empty member, a nonce that is not 32 bytes, ...).
    pub fn to_line(&self) -> Result<String, EvidenceError> {
        let mut members: Vec<(&str, String)> = Vec::with_capacity(10);
        if let Some(m) = &self.signet {
            members.push(("format", SIGNET_LOG_FORMAT.to_string()));
            members.push(("tx", b64url(&m.transaction_id)));
            members.push(("rp", m.rp_id.clone()));
            members.push(("at", crate::rfc3339::format_ms(m.verified_ms)));
        }
        members.push(("S", b64url(&self.signature)));
        members.push(("T", self.transaction.clone()));
        members.push(("CAD", b64url(&self.authenticator_data)));
        members.push(("CCD", self.client_data_json.clone()));
        members.push(("N", self.nonce.clone()));
        members.push(("P", b64url(&self.public_key)));
        let mut line = String::from("{");
        for (i, (name, value)) in members.iter().enumerate() {
            if i > 0 {
                line.push(',');
            }
            // JSON string escaping leaves no raw line break in the line.
            let value = serde_json::to_string(value)
                .map_err(|e| bad(*name, format!("cannot be written: {e}")))?;
            line.push('"');
            line.push_str(name);
            line.push_str("\":");
            line.push_str(&value);
        }
        line.push('}');
        if LogRecord::parse(&line)? != *self {
            return Err(bad("record", "would not read back as the same record"));
        }
        Ok(line)
    }
}

/// An RFC 3339 time as Unix milliseconds: not before 1970, and no finer
/// than a millisecond (what signet writes), so it is written back as read.
fn parse_ms(text: &str) -> Result<u64, EvidenceError> {
    let t = crate::rfc3339::parse(text).map_err(|e| bad("at", e))?;
    let d = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| bad("at", "is before 1970"))?;
    if d.subsec_nanos() % 1_000_000 != 0 {
        return Err(bad("at", "is finer than a millisecond"));
    }
    u64::try_from(d.as_millis()).map_err(|_| bad("at", "is out of range"))
}

/// A signet record's nonce: `N` decoded, 32 bytes.
fn signet_nonce(text: &str) -> Result<[u8; NONCE_LEN], EvidenceError> {
    let n = b64url_decode("N", text, NONCE_LEN).map_err(|e| bad("N", e.to_string()))?;
    <[u8; NONCE_LEN]>::try_from(n.as_slice())
        .map_err(|_| bad("N", format!("must be {NONCE_LEN} bytes, not {}", n.len())))
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
    /// The transaction id (base64url), for signet records.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transaction_id: Option<String>,
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
    /// When signet verified the approval (RFC 3339 UTC), for signet
    /// records.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verified_at: Option<String>,
}

/// Verifies a record. `rp_id`, when given, must be the one the
/// authenticator data names; a signet record's authenticator data is
/// always checked against its own `rp`, which must then also be `rp_id`.
pub fn verify_record(record: &LogRecord, rp_id: Option<&str>) -> Result<Verified, EvidenceError> {
    let (expected, rp_id, challenge_from) = match &record.signet {
        None => (
            airlock_challenge(&record.transaction, &record.nonce).to_vec(),
            rp_id,
            "T and N: the transaction or the nonce differs from what was signed",
        ),
        Some(m) => {
            if let Some(given) = rp_id
                && given != m.rp_id
            {
                return Err(bad(
                    "rp",
                    format!(
                        "is {:?}, not {given:?}",
                        crate::flows::truncate(&m.rp_id, 64)
                    ),
                ));
            }
            let nonce = signet_nonce(&record.nonce)?;
            (
                transaction::challenge(&nonce, record.transaction.as_bytes()).to_vec(),
                Some(m.rp_id.as_str()),
                "T and N (signet's transaction challenge): the transaction details or the \
                 nonce differ from what was signed",
            )
        }
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
            challenge_from,
        },
    )?;
    Ok(Verified {
        format: record.format().as_str(),
        transaction_id: record.signet.as_ref().map(|m| b64url(&m.transaction_id)),
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
        verified_at: record
            .signet
            .as_ref()
            .map(|m| crate::rfc3339::format_ms(m.verified_ms)),
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

    /// A line signet wrote (a soft authenticator's approval, kept so the
    /// format cannot drift unnoticed).
    const SIGNET_SAMPLE: &str = include_str!("../tests/data/signet-log-sample.jsonl");

    #[test]
    fn the_signet_sample_verifies_and_is_written_back_byte_for_byte() {
        let line = SIGNET_SAMPLE.trim_end();
        let r = LogRecord::parse(line).expect("parse");
        assert_eq!(r.format(), Format::Signet);
        let v = verify_record(&r, Some("bank.example")).expect("verifies");
        assert_eq!(v.format, "signet-verification-log");
        assert_eq!(v.transaction_id.as_deref(), Some("oKGio6SlpqeoqaqrrK2urw"));
        assert_eq!(v.verified_at.as_deref(), Some("2027-01-15T08:00:00.123Z"));
        assert!(v.transaction.contains("Müller & Söhne AG"), "{v:?}");
        assert_eq!(v.origin, "https://bank.example");
        assert_eq!(r.to_line().expect("line"), line);
        // The nonce is used decoded: 32 bytes.
        let nonce: [u8; NONCE_LEN] = core::array::from_fn(|i| i as u8 * 7 + 3);
        assert_eq!(r.nonce, b64url(&nonce));
        assert_eq!(
            v.challenge,
            b64url(&transaction::challenge(&nonce, r.transaction.as_bytes()))
        );
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

#[cfg(all(test, feature = "testkit"))]
mod signet_tests {
    use super::*;

    const RP: &str = "bank.example";

    /// A real approval by a soft authenticator, as signet logs it.
    fn approval() -> LogRecord {
        crate::testkit::evidence::signet_log_record(1, "1500.00", RP)
    }

    fn edited(line: &str, edit: impl FnOnce(&mut Map<String, Value>)) -> String {
        let mut v: Map<String, Value> = serde_json::from_str(line).expect("json");
        edit(&mut v);
        Value::Object(v).to_string()
    }

    #[test]
    fn a_signet_line_verifies() {
        let r = approval();
        let line = r.to_line().expect("line");
        let parsed = LogRecord::parse(&line).expect("parse");
        assert_eq!(parsed.format(), Format::Signet);
        for rp in [None, Some(RP)] {
            let v = verify_record(&parsed, rp).expect("verifies");
            assert_eq!(v.format, "signet-verification-log");
            assert_eq!(v.transaction_id.as_deref(), Some(b64url(&[1; 16]).as_str()));
            assert_eq!(v.verified_at.as_deref(), Some("2027-01-15T08:00:00.123Z"));
            assert!(v.transaction.contains(r#""amount":"1500.00""#), "{v:?}");
            assert_eq!(v.origin, "https://bank.example");
            assert_eq!(v.rp_id_hash, crate::hex::encode(&sha256(RP.as_bytes())));
            assert_eq!(v.algorithm, -7);
        }
        let json = serde_json::to_value(verify_record(&parsed, None).expect("v")).expect("json");
        assert_eq!(json["transactionId"], b64url(&[1; 16]));
        assert_eq!(json["verifiedAt"], "2027-01-15T08:00:00.123Z");
        // Airlock's verdicts carry neither.
        let airlock = LogRecord::parse(tests::AIRLOCK_SAMPLE).expect("parse");
        let json = serde_json::to_value(verify_record(&airlock, None).expect("v")).expect("json");
        assert!(json.get("transactionId").is_none() && json.get("verifiedAt").is_none());
    }

    #[test]
    fn lines_round_trip_with_their_members_in_order() {
        let r = approval();
        let line = r.to_line().expect("line");
        assert!(!line.contains('\n'), "{line}");
        assert_eq!(LogRecord::parse(&line).expect("parse"), r);
        // Member order as documented (serde_json's map would sort them).
        let order: Vec<usize> = ["format", "tx", "rp", "at", "S", "T", "CAD", "CCD", "N", "P"]
            .iter()
            .map(|m| line.find(&format!("\"{m}\":")).expect(m))
            .collect();
        assert!(order.is_sorted(), "{line}");
        assert!(line.starts_with(r#"{"format":"signet-verification-log/1","tx":"AQEBAQEBAQEBAQEBAQEBAQ","rp":"bank.example","at":"2027-01-15T08:00:00.123Z","S":""#), "{line}");
        // Airlock records are written with their six members.
        let airlock = LogRecord::parse(tests::AIRLOCK_SAMPLE).expect("parse");
        let line = airlock.to_line().expect("line");
        assert!(
            line.starts_with(r#"{"S":""#) && !line.contains("format"),
            "{line}"
        );
        assert_eq!(LogRecord::parse(&line).expect("parse"), airlock);
        // Another offset reads as the same instant; whole seconds as well.
        let line = r.to_line().expect("line");
        let shifted = line.replace("2027-01-15T08:00:00.123Z", "2027-01-15T09:00:00.123+01:00");
        assert_eq!(LogRecord::parse(&shifted).expect("parse"), r);
        let mut r = approval();
        if let Some(m) = r.signet.as_mut() {
            m.verified_ms = 1_800_000_000_000;
        }
        let line = r.to_line().expect("line");
        assert!(line.contains(r#""at":"2027-01-15T08:00:00Z""#), "{line}");
        assert_eq!(LogRecord::parse(&line).expect("parse"), r);
        // What could not be read back is not written.
        let mut r = approval();
        r.nonce = b64url(&[5u8; 31]);
        assert_eq!(r.to_line().unwrap_err().field, "N");
        let mut r = approval();
        r.transaction.clear();
        assert_eq!(r.to_line().unwrap_err().field, "T");
    }

    #[test]
    fn any_change_to_what_was_signed_is_refused() {
        let r = approval();
        // Each byte of T.
        for i in 0..r.transaction.len() {
            let mut t = r.clone();
            let mut bytes = t.transaction.into_bytes();
            bytes[i] ^= 0x01;
            t.transaction = String::from_utf8_lossy(&bytes).into_owned();
            assert_eq!(
                verify_record(&t, None).unwrap_err().field,
                "CCD.challenge",
                "T byte {i}"
            );
        }
        // Each bit of N's bytes.
        let nonce = b64url_decode("N", &r.nonce, 32).expect("nonce");
        for i in 0..nonce.len() * 8 {
            let mut n = nonce.clone();
            n[i / 8] ^= 1 << (i % 8);
            let mut t = r.clone();
            t.nonce = b64url(&n);
            assert_eq!(
                verify_record(&t, None).unwrap_err().field,
                "CCD.challenge",
                "N bit {i}"
            );
        }
        // Each byte of CAD and CCD, and of S.
        for i in 0..r.authenticator_data.len() {
            let mut t = r.clone();
            t.authenticator_data[i] ^= 0x01;
            assert!(verify_record(&t, None).is_err(), "CAD byte {i}");
        }
        for i in 0..r.client_data_json.len() {
            let mut t = r.clone();
            let mut bytes = t.client_data_json.into_bytes();
            bytes[i] ^= 0x01;
            t.client_data_json = String::from_utf8_lossy(&bytes).into_owned();
            assert!(verify_record(&t, None).is_err(), "CCD byte {i}");
        }
        for i in 0..r.signature.len() {
            let mut t = r.clone();
            t.signature[i] ^= 0x01;
            assert!(verify_record(&t, None).is_err(), "S byte {i}");
        }
        let mut t = r.clone();
        t.authenticator_data[36] ^= 1; // the counter
        assert_eq!(verify_record(&t, None).unwrap_err().field, "S");
        let mut t = r.clone();
        t.authenticator_data[0] ^= 1; // the RP ID hash
        assert_eq!(verify_record(&t, None).unwrap_err().field, "CAD.rpIdHash");
        let mut t = r.clone();
        t.client_data_json = t.client_data_json.replace("bank.example", "bank.exampla");
        assert_eq!(verify_record(&t, None).unwrap_err().field, "S");
        let mut t = r.clone();
        let last = t.signature.len() - 1;
        t.signature[last] ^= 1;
        assert_eq!(verify_record(&t, None).unwrap_err().field, "S");
        // The record's own rp is always checked against CAD.
        let mut t = r.clone();
        if let Some(m) = t.signet.as_mut() {
            m.rp_id = "evil.example".into();
        }
        assert_eq!(verify_record(&t, None).unwrap_err().field, "CAD.rpIdHash");
        // The tx id and the time are not signed by the authenticator: they
        // are what signet logged, and a change to them still verifies.
        let mut t = r.clone();
        if let Some(m) = t.signet.as_mut() {
            m.transaction_id = [2; 16];
        }
        assert!(verify_record(&t, None).is_ok());
    }

    #[test]
    fn another_rp_id_is_refused_naming_rp() {
        let r = approval();
        let e = verify_record(&r, Some("evil.example")).unwrap_err();
        assert_eq!(e.field, "rp", "{e}");
        assert!(e.reason.contains("evil.example"), "{e}");
    }

    #[test]
    fn malformed_signet_lines_name_the_member() {
        let line = approval().to_line().expect("line");
        let cases: Vec<(String, &str)> = vec![
            (
                edited(&line, |o| {
                    o.insert("format".into(), "signet-verification-log/2".into());
                }),
                "format",
            ),
            (
                edited(&line, |o| {
                    o.insert("format".into(), Value::from(1));
                }),
                "format",
            ),
            (
                edited(&line, |o| {
                    o.insert("credential".into(), "x".into());
                }),
                "credential",
            ),
            (
                edited(&line, |o| {
                    o.insert("tx".into(), b64url(&[1; 15]).into());
                }),
                "tx",
            ),
            (
                edited(&line, |o| {
                    o.insert("tx".into(), b64url(&[1; 17]).into());
                }),
                "tx",
            ),
            (
                edited(&line, |o| {
                    o.remove("tx");
                }),
                "tx",
            ),
            (
                edited(&line, |o| {
                    o.insert("rp".into(), "".into());
                }),
                "rp",
            ),
            (
                edited(&line, |o| {
                    o.insert("rp".into(), "a".repeat(254).into());
                }),
                "rp",
            ),
            (
                edited(&line, |o| {
                    o.insert("at".into(), "2027-01-15 08:00:00Z".into());
                }),
                "at",
            ),
            (
                edited(&line, |o| {
                    o.insert("at".into(), "1969-12-31T23:59:59Z".into());
                }),
                "at",
            ),
            (
                edited(&line, |o| {
                    o.insert("at".into(), "2027-01-15T08:00:00.1234Z".into());
                }),
                "at",
            ),
            (
                edited(&line, |o| {
                    o.insert("N".into(), b64url(&[5; 31]).into());
                }),
                "N",
            ),
            (
                edited(&line, |o| {
                    o.insert("N".into(), "not base64!".into());
                }),
                "N",
            ),
            (
                edited(&line, |o| {
                    o.remove("P");
                }),
                "P",
            ),
            // Signet's members without format are not an Airlock record
            // (the first in sorted order is named).
            (
                edited(&line, |o| {
                    o.remove("format");
                }),
                "at",
            ),
        ];
        for (text, field) in cases {
            let e = LogRecord::parse(&text).unwrap_err();
            assert_eq!(e.field, field, "{text}: {e}");
        }
        assert!(
            LogRecord::parse(&edited(&line, |o| {
                o.insert("rp".into(), "a".repeat(253).into());
            }))
            .is_ok()
        );
    }
}
