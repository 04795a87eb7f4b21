//! The MDS3 BLOB: a compact JWS verified by [`verify`], and its entries as a
//! [`Catalog`].
//!
//! # Decisions
//!
//! - **Algorithms.** RS256, ES256 and PS256 only (what MDS3 signers use).
//!   `none` and the HMAC algorithms are refused by name: an unsigned BLOB, or
//!   one "signed" with a key anybody can derive from the header, proves
//!   nothing. ES256 signatures in JWS are the raw 64-byte `r || s`
//!   (RFC 7518 §3.4); they are converted to DER before verification, and the
//!   key must be P-256.
//! - **Keys come from `x5c` only.** `x5u` and `jku` (we never fetch) and `jwk`
//!   (a second key source) are refused, as is any `crit` (no JWS extension is
//!   understood here, RFC 7515 §4.1.11).
//! - **The chain** is `x5c` as sent, validated with
//!   [`certpath::validate`] at the given time to one of the pinned roots. The
//!   root need not be in `x5c`; if it is, it must be last and be a pinned
//!   root, and `x5c` must hold at least one certificate below it (a root
//!   does not sign BLOBs). The signer's keyUsage, when present, must allow
//!   digitalSignature.
//! - **Revocation.** With no CRLs given, nothing is checked and the result
//!   says `revocation_checked: false`. With any CRL given, every certificate
//!   of the chain below the root needs a CRL from its issuer that covers it
//!   ([`MdsError::NoCrl`] otherwise): a production caller fetches the CRLs
//!   named by the chain and gives them all, and a missing one is a failure,
//!   not a silent gap. Each such CRL must verify with the issuer's key (the
//!   next certificate of the chain, or the root), the issuer must allow
//!   cRLSign, and the CRL must be current by the timing rule of
//!   [`super::crl`] (nextUpdate not before `at`, or published after `at`). A
//!   listed serial is [`MdsError::Revoked`].
//! - **Order.** The JWS shape first (all three parts decoded), then
//!   authenticity (signature, chain, revocation), then the payload JSON is
//!   read, then freshness: the payload is never interpreted before its
//!   signer is known, and [`MdsError::Stale`] means "authentic but out of
//!   date".
//! - **Bad entries refuse the whole BLOB.** A validly signed BLOB with an
//!   entry that does not parse (an AAGUID that is not a UUID, a member of
//!   the wrong JSON type, a root that is not base64, two entries claiming
//!   the same AAGUID) is an MDS failure. Installing the rest would silently
//!   drop that authenticator's status reports, which may be the compromise
//!   notice that matters; keeping the previously held BLOB and alerting is
//!   the safe outcome. Unknown fields are ignored (the format grows), but
//!   known fields must have their specified types.
//! - **One exception: an attestation root that is base64 but not a
//!   certificate** this engine's strict X.509 parser accepts. FIDO's own
//!   conformance BLOB carries one (a root with notBefore 2017-02-29, a date
//!   that does not exist). The root is a vendor's artifact passed through,
//!   not the MDS format; refusing the BLOB for it would block every other
//!   update, compromise notices included. So the entry is kept, the root is
//!   left out of [`Statement::attestation_root_certificates`] (an
//!   attestation that needs it fails to chain: the loss is closed, never
//!   open), and it is listed in [`Statement::rejected_roots`] and
//!   [`Blob::warnings`] with the entry and root index, for the operator.
//! - **Freshness.** `nextUpdate` is a date; the BLOB is current through that
//!   whole day (UTC) and [`MdsError::Stale`] from the next day on.
//!   [`verify`] refuses a stale BLOB: to examine an archived one, verify it
//!   at a time it was current (the certificates and CRLs are judged at that
//!   time too). A held BLOB ages; [`Blob::check_fresh`] re-judges it later.
//! - **Replay.** [`check_newer`]: the serial `no` must strictly increase over
//!   the held one, so an older, validly signed BLOB cannot undo a newer one.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::crl::Crl;
use super::{MdsError, hex_upper, limits};
use crate::webauthn::CoseAlgorithm;
use crate::webauthn::certpath::{self, Cert, PathOptions};
use crate::webauthn::cose_key::{Curve, VerifyingKey};

/// The JWS algorithms a BLOB may be signed with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JwsAlgorithm {
    Rs256,
    Es256,
    Ps256,
}

impl JwsAlgorithm {
    pub fn name(self) -> &'static str {
        match self {
            JwsAlgorithm::Rs256 => "RS256",
            JwsAlgorithm::Es256 => "ES256",
            JwsAlgorithm::Ps256 => "PS256",
        }
    }

    fn cose(self) -> CoseAlgorithm {
        match self {
            JwsAlgorithm::Rs256 => CoseAlgorithm::Rs256,
            JwsAlgorithm::Es256 => CoseAlgorithm::Es256,
            JwsAlgorithm::Ps256 => CoseAlgorithm::Ps256,
        }
    }
}

/// A verified BLOB.
#[derive(Clone, Debug)]
pub struct Blob {
    /// The serial number; each new BLOB has a greater one.
    pub no: u64,
    /// `nextUpdate` as written (`YYYY-MM-DD`).
    pub next_update: String,
    /// The start (00:00:00Z) of the `nextUpdate` day.
    pub next_update_time: SystemTime,
    pub legal_header: Option<String>,
    pub alg: JwsAlgorithm,
    /// Subject of `x5c[0]`, the signer.
    pub signer_subject: String,
    /// Subjects from the signer up to the root.
    pub chain_subjects: Vec<String>,
    /// Whether the chain was checked against CRLs (false when none were given).
    pub revocation_checked: bool,
    pub catalog: Catalog,
    /// What was accepted but left out: each rejected attestation root, as a
    /// [`MdsError::Payload`] naming `entries[i]...attestationRootCertificates[k]`.
    pub warnings: Vec<MdsError>,
}

impl Blob {
    /// Stale from the day after `nextUpdate` (UTC) on.
    pub fn is_stale(&self, at: SystemTime) -> bool {
        at >= self.next_update_time + ONE_DAY
    }

    /// [`MdsError::Stale`] when [`Blob::is_stale`].
    pub fn check_fresh(&self, at: SystemTime) -> Result<(), MdsError> {
        if self.is_stale(at) {
            return Err(MdsError::Stale {
                next_update: self.next_update.clone(),
            });
        }
        Ok(())
    }

    pub fn entries(&self) -> &[Entry] {
        self.catalog.entries()
    }
}

const ONE_DAY: Duration = Duration::from_secs(86_400);

/// One authenticator model (`MetadataBLOBPayloadEntry`).
#[derive(Clone, Debug)]
pub struct Entry {
    /// Position in the BLOB's `entries`.
    pub index: usize,
    /// FIDO2 authenticators.
    pub aaguid: Option<[u8; 16]>,
    /// UAF authenticators (`vendor#model`, hex).
    pub aaid: Option<String>,
    /// U2F authenticators: key identifiers of their attestation certificates.
    pub attestation_certificate_key_identifiers: Vec<Vec<u8>>,
    pub statement: Option<Statement>,
    /// In the BLOB's order, which is not chronological.
    pub status_reports: Vec<StatusReport>,
    pub time_of_last_status_change: Option<String>,
}

impl Entry {
    /// The report with the latest `effectiveDate`; among equal dates the
    /// later one in the list; reports without a date count as oldest.
    pub fn latest_status(&self) -> Option<&StatusReport> {
        self.status_reports
            .iter()
            .max_by_key(|r| r.effective_date.as_deref())
    }

    /// The AAGUID as UUID text, if the entry has one.
    pub fn aaguid_text(&self) -> Option<String> {
        self.aaguid.as_ref().map(crate::webauthn::uuid_text)
    }
}

/// A metadata statement: the whole JSON, and the fields policy reads.
#[derive(Clone, Debug)]
pub struct Statement {
    pub json: Value,
    pub description: Option<String>,
    pub authenticator_version: Option<u64>,
    /// `uaf`, `u2f` or `fido2`.
    pub protocol_family: Option<String>,
    pub attestation_types: Vec<String>,
    pub authentication_algorithms: Vec<String>,
    /// The attestation roots that parsed (strict DER X.509).
    pub attestation_root_certificates: Vec<Cert>,
    /// Roots that are valid base64 but not a certificate this engine
    /// accepts; left out of `attestation_root_certificates` (see the module
    /// docs) and listed in [`Blob::warnings`].
    pub rejected_roots: Vec<RejectedRoot>,
    pub key_protection: Vec<String>,
    pub matcher_protection: Vec<String>,
    pub attachment_hint: Vec<String>,
}

/// An attestation root left out of its statement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RejectedRoot {
    /// Position in `attestationRootCertificates`.
    pub index: usize,
    pub der: Vec<u8>,
    /// A [`MdsError::Payload`] naming the entry and the root.
    pub reason: MdsError,
}

/// One status report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusReport {
    /// `FIDO_CERTIFIED_L1`, `REVOKED`, `ATTESTATION_KEY_COMPROMISE`, ...
    pub status: String,
    /// `YYYY-MM-DD`.
    pub effective_date: Option<String>,
    /// The level a `FIDO_CERTIFIED_*` status names (`L1`, `L2plus`, ...).
    /// MDS3 has no separate field for it; a `certificationLevel` member, if
    /// a BLOB carries one, wins.
    pub certification_level: Option<String>,
    pub authenticator_version: Option<u64>,
    pub certificate_number: Option<String>,
    pub url: Option<String>,
}

/// The entries, indexed by each kind of identifier. Identifiers are unique
/// across the catalog (a BLOB that repeats one is refused).
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    entries: Vec<Entry>,
    aaguid: HashMap<[u8; 16], usize>,
    key_id: HashMap<Vec<u8>, usize>,
    /// Lowercase.
    aaid: HashMap<String, usize>,
}

impl Catalog {
    /// Indexes `entries`; an identifier claimed twice is a payload error
    /// naming the second entry.
    pub fn new(entries: Vec<Entry>) -> Result<Catalog, MdsError> {
        fn claim<K: std::hash::Hash + Eq>(
            map: &mut HashMap<K, usize>,
            key: K,
            i: usize,
            field: &str,
        ) -> Result<(), MdsError> {
            match map.insert(key, i) {
                Some(first) if first != i => Err(MdsError::payload(
                    format!("entries[{i}].{field}"),
                    format!("the same identifier as entries[{first}]"),
                )),
                _ => Ok(()),
            }
        }
        let mut catalog = Catalog::default();
        for (i, entry) in entries.iter().enumerate() {
            if let Some(aaguid) = entry.aaguid {
                claim(&mut catalog.aaguid, aaguid, i, "aaguid")?;
            }
            if let Some(aaid) = &entry.aaid {
                claim(&mut catalog.aaid, aaid.to_ascii_lowercase(), i, "aaid")?;
            }
            for (k, id) in entry
                .attestation_certificate_key_identifiers
                .iter()
                .enumerate()
            {
                claim(
                    &mut catalog.key_id,
                    id.clone(),
                    i,
                    &format!("attestationCertificateKeyIdentifiers[{k}]"),
                )?;
            }
        }
        catalog.entries = entries;
        Ok(catalog)
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn by_aaguid(&self, aaguid: &[u8; 16]) -> Option<&Entry> {
        self.aaguid.get(aaguid).map(|&i| &self.entries[i])
    }

    /// By attestation certificate key identifier (the bytes, not hex).
    pub fn by_key_id(&self, key_id: &[u8]) -> Option<&Entry> {
        self.key_id.get(key_id).map(|&i| &self.entries[i])
    }

    /// By AAID, case-insensitively.
    pub fn by_aaid(&self, aaid: &str) -> Option<&Entry> {
        self.aaid
            .get(&aaid.to_ascii_lowercase())
            .map(|&i| &self.entries[i])
    }
}

/// Whether a BLOB may replace the held one: its `no` must be greater.
pub fn check_newer(held_no: Option<u64>, blob: &Blob) -> Result<(), MdsError> {
    match held_no {
        Some(held) if blob.no <= held => Err(MdsError::NotNewer { held, got: blob.no }),
        _ => Ok(()),
    }
}

/// Verifies an MDS3 BLOB at `at` against the pinned `roots` and the given
/// `crls`, and reads its entries. See the module docs for every rule.
pub fn verify(jwt: &[u8], roots: &[Cert], crls: &[Crl], at: SystemTime) -> Result<Blob, MdsError> {
    if jwt.len() > limits::BLOB {
        return Err(MdsError::TooLarge {
            field: "blob".to_string(),
            limit: limits::BLOB,
        });
    }
    let jws = Compact::split(jwt)?;
    let header = Header::parse(jws.header)?;
    let payload = decode_part("payload", jws.payload, limits::BLOB)?;
    let signature = decode_part("signature", jws.signature, limits::SIGNATURE)?;
    verify_signature(&header, jws.signing_input, &signature)?;
    let chain = check_chain(&header.x5c, roots, at)?;
    let revocation_checked = check_revocation(&chain, crls, at)?;
    let payload = Payload::parse(&payload)?;
    let blob = Blob {
        no: payload.no,
        next_update: payload.next_update,
        next_update_time: payload.next_update_time,
        legal_header: payload.legal_header,
        alg: header.alg,
        signer_subject: header.x5c[0].subject(),
        chain_subjects: chain.subjects,
        revocation_checked,
        warnings: payload
            .catalog
            .entries()
            .iter()
            .filter_map(|e| e.statement.as_ref())
            .flat_map(|s| s.rejected_roots.iter().map(|r| r.reason.clone()))
            .collect(),
        catalog: payload.catalog,
    };
    blob.check_fresh(at)?;
    Ok(blob)
}

// ---------------------------------------------------------------------------
// JWS

/// The three parts of a compact JWS, as text.
struct Compact<'a> {
    header: &'a str,
    payload: &'a str,
    signature: &'a str,
    /// `header '.' payload`, the bytes signed.
    signing_input: &'a [u8],
}

impl<'a> Compact<'a> {
    fn split(jwt: &'a [u8]) -> Result<Compact<'a>, MdsError> {
        let blob_err = |reason: &str| MdsError::Jws {
            part: "blob",
            reason: reason.to_string(),
        };
        // A downloaded file may end with a newline; nothing else is trimmed.
        let jwt = jwt.trim_ascii_end();
        let text = std::str::from_utf8(jwt).map_err(|_| blob_err("not ASCII text"))?;
        if !text.is_ascii() {
            return Err(blob_err("not ASCII text"));
        }
        let parts: Vec<&str> = text.split('.').collect();
        let [header, payload, signature] = parts[..] else {
            return Err(MdsError::Jws {
                part: "blob",
                reason: format!(
                    "{} parts; a compact JWS has 3 (header.payload.signature)",
                    parts.len()
                ),
            });
        };
        for (part, text) in [
            ("header", header),
            ("payload", payload),
            ("signature", signature),
        ] {
            if text.is_empty() {
                return Err(MdsError::Jws {
                    part,
                    reason: "empty".to_string(),
                });
            }
        }
        Ok(Compact {
            header,
            payload,
            signature,
            signing_input: &jwt[..header.len() + 1 + payload.len()],
        })
    }
}

/// Strict unpadded base64url (RFC 7515 §2), bounded before decoding.
fn decode_part(part: &'static str, text: &str, limit: usize) -> Result<Vec<u8>, MdsError> {
    if text.len() > limit.div_ceil(3) * 4 {
        return Err(MdsError::TooLarge {
            field: part.to_string(),
            limit,
        });
    }
    URL_SAFE_NO_PAD.decode(text).map_err(|e| MdsError::Jws {
        part,
        reason: format!("not unpadded base64url: {e}"),
    })
}

/// Standard base64 as x5c and attestationRootCertificates carry it; padding
/// may be omitted.
const STANDARD_LENIENT_PAD: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// The header fields this module reads; the rest are ignored. Named fields
/// make a repeated one an error rather than "last one wins".
#[derive(Deserialize)]
struct RawHeader {
    alg: Option<Value>,
    typ: Option<Value>,
    x5c: Option<Value>,
    x5u: Option<Value>,
    jku: Option<Value>,
    jwk: Option<Value>,
    crit: Option<Value>,
}

struct Header {
    alg: JwsAlgorithm,
    x5c: Vec<Cert>,
}

/// Why a JSON document was not read.
enum JsonError {
    /// Not JSON, or not an object.
    Syntax(String),
    /// JSON, but not the expected shape (a repeated field, a wrong type).
    Data(String),
}

/// Reads a JSON object into `T`. The first byte is checked because serde
/// would also map an array onto a struct.
fn json_object<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> Result<T, JsonError> {
    if bytes.trim_ascii_start().first() != Some(&b'{') {
        return Err(JsonError::Syntax("not a JSON object".to_string()));
    }
    serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => JsonError::Data(e.to_string()),
        _ => JsonError::Syntax(format!("not JSON: {e}")),
    })
}

impl Header {
    fn parse(text: &str) -> Result<Header, MdsError> {
        let bytes = decode_part("header", text, limits::HEADER)?;
        let raw: RawHeader = json_object(&bytes).map_err(|e| MdsError::Jws {
            part: "header",
            reason: match e {
                JsonError::Syntax(reason) | JsonError::Data(reason) => reason,
            },
        })?;
        let alg = match &raw.alg {
            None => return Err(MdsError::header("alg", "missing")),
            Some(Value::String(alg)) => match alg.as_str() {
                "RS256" => JwsAlgorithm::Rs256,
                "ES256" => JwsAlgorithm::Es256,
                "PS256" => JwsAlgorithm::Ps256,
                "none" => {
                    return Err(MdsError::header(
                        "alg",
                        "\"none\" is refused: an unsigned BLOB proves nothing",
                    ));
                }
                other => {
                    return Err(MdsError::header(
                        "alg",
                        format!("{other:?} is not accepted (RS256, ES256 or PS256)"),
                    ));
                }
            },
            Some(_) => return Err(MdsError::header("alg", "expected a string")),
        };
        match &raw.typ {
            None => {}
            Some(Value::String(t)) if t.eq_ignore_ascii_case("JWT") => {}
            Some(other) => {
                return Err(MdsError::header("typ", format!("{other} is not \"JWT\"")));
            }
        }
        if raw.crit.is_some() {
            return Err(MdsError::header(
                "crit",
                "critical header extensions are not supported",
            ));
        }
        for (field, present) in [("x5u", raw.x5u.is_some()), ("jku", raw.jku.is_some())] {
            if present {
                return Err(MdsError::header(
                    field,
                    "keys are never fetched from a URL; the chain must be in x5c",
                ));
            }
        }
        if raw.jwk.is_some() {
            return Err(MdsError::header(
                "jwk",
                "a key beside x5c is refused: the signer is x5c[0]",
            ));
        }
        let items = match &raw.x5c {
            None => return Err(MdsError::header("x5c", "missing")),
            Some(Value::Array(items)) => items,
            Some(_) => {
                return Err(MdsError::header(
                    "x5c",
                    "expected an array of base64 certificates",
                ));
            }
        };
        if items.is_empty() {
            return Err(MdsError::header("x5c", "empty"));
        }
        if items.len() > limits::X5C_CERTS {
            return Err(MdsError::TooLarge {
                field: "header x5c".to_string(),
                limit: limits::X5C_CERTS,
            });
        }
        let x5c = items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let field = format!("x5c[{i}]");
                let Value::String(b64) = item else {
                    return Err(MdsError::header(field, "expected a base64 string"));
                };
                let der = STANDARD_LENIENT_PAD
                    .decode(b64)
                    .map_err(|e| MdsError::header(&field, format!("not base64: {e}")))?;
                Cert::parse(&der, format!("header.{field}"))
                    .map_err(|e| MdsError::header(&field, e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Header { alg, x5c })
    }
}

fn verify_signature(header: &Header, input: &[u8], signature: &[u8]) -> Result<(), MdsError> {
    let key = header.x5c[0]
        .public_key()
        .map_err(|e| MdsError::header("x5c[0]", e.to_string()))?;
    let alg = header.alg;
    let mismatch = |held: &str| {
        MdsError::header(
            "alg",
            format!("{} does not fit x5c[0]'s {held} key", alg.name()),
        )
    };
    let der_signature;
    let signature = match (alg, &key) {
        (
            JwsAlgorithm::Es256,
            VerifyingKey::Ec {
                curve: Curve::P256, ..
            },
        ) => {
            der_signature = raw_ecdsa_to_der(signature).ok_or_else(|| MdsError::Jws {
                part: "signature",
                reason: "an ES256 signature is 64 bytes (r || s), both non-zero".to_string(),
            })?;
            der_signature.as_slice()
        }
        (JwsAlgorithm::Rs256 | JwsAlgorithm::Ps256, VerifyingKey::Rsa { .. }) => signature,
        (_, VerifyingKey::Ec { .. }) => return Err(mismatch("EC")),
        (_, VerifyingKey::Rsa { .. }) => return Err(mismatch("RSA")),
        (_, VerifyingKey::Ed25519 { .. }) => return Err(mismatch("Ed25519")),
    };
    key.verify(alg.cose(), input, signature, "signature")
        .map_err(|e| match e {
            crate::webauthn::Error::BadSignature { .. } => MdsError::Signature,
            other => MdsError::header("alg", other.to_string()),
        })
}

/// JWS ECDSA `r || s` (RFC 7518 §3.4) to the DER `Ecdsa-Sig-Value` that
/// the verifier takes. `None` unless 64 bytes with non-zero r and s.
fn raw_ecdsa_to_der(raw: &[u8]) -> Option<Vec<u8>> {
    if raw.len() != 64 {
        return None;
    }
    let integer = |half: &[u8]| -> Option<Vec<u8>> {
        let first = half.iter().position(|b| *b != 0)?;
        let mut out = vec![0x02];
        let magnitude = &half[first..];
        let pad = magnitude[0] & 0x80 != 0;
        out.push((magnitude.len() + usize::from(pad)) as u8);
        if pad {
            out.push(0);
        }
        out.extend_from_slice(magnitude);
        Some(out)
    };
    let r = integer(&raw[..32])?;
    let s = integer(&raw[32..])?;
    let mut der = vec![0x30, (r.len() + s.len()) as u8];
    der.extend(r);
    der.extend(s);
    Some(der)
}

// ---------------------------------------------------------------------------
// Chain and revocation

/// The validated chain: each certificate below the root with its issuer.
struct Chain<'a> {
    subjects: Vec<String>,
    links: Vec<(&'a Cert, &'a Cert)>,
}

/// Same name and key: the pinned root, or a copy of it (validate checks
/// that a copy is self-signed by that key).
fn is_pinned(root: &Cert, cert: &Cert) -> bool {
    root.der == cert.der
        || (root.tbs().subject() == cert.tbs().subject()
            && root.tbs().subject_public_key_info() == cert.tbs().subject_public_key_info())
}

fn check_chain<'a>(
    x5c: &'a [Cert],
    roots: &'a [Cert],
    at: SystemTime,
) -> Result<Chain<'a>, MdsError> {
    if roots.is_empty() {
        return Err(MdsError::Chain("no trust root was given".to_string()));
    }
    let last = x5c.len().saturating_sub(1);
    let mut pinned_top = None;
    for (i, cert) in x5c.iter().enumerate() {
        if !cert.is_self_issued() {
            continue;
        }
        let root = roots.iter().find(|r| is_pinned(r, cert));
        match root {
            Some(root) if i == last && i > 0 => pinned_top = Some(root),
            Some(_) if i == 0 => {
                return Err(MdsError::Chain(
                    "header.x5c[0] is the root itself: a BLOB must be signed by a certificate issued under it"
                        .to_string(),
                ));
            }
            _ => {
                return Err(MdsError::Chain(format!(
                    "header.x5c[{i}] is self-issued ({}) and not the pinned root at the end of the chain",
                    cert.subject()
                )));
            }
        }
    }
    // A pinned certificate that is not self-issued (an operator who pins an
    // intermediate) ends the chain when sent as is.
    if pinned_top.is_none() && last > 0 {
        pinned_top = roots.iter().find(|r| r.der == x5c[last].der);
    }
    let path = certpath::validate(
        x5c,
        roots,
        at,
        &PathOptions {
            allow_root_in_chain: true,
        },
    )
    .map_err(|e| MdsError::Chain(e.to_string()))?;
    if !path.anchored {
        return Err(MdsError::Chain(
            "x5c does not lead to a pinned root".to_string(),
        ));
    }
    if let Some(usage) = x5c[0]
        .key_usage()
        .map_err(|e| MdsError::Chain(e.to_string()))?
        && !usage.digital_signature()
    {
        return Err(MdsError::Chain(
            "header.x5c[0]: keyUsage does not allow digitalSignature".to_string(),
        ));
    }

    let below: &[Cert] = match pinned_top {
        Some(_) => &x5c[..last],
        None => x5c,
    };
    let Some(top) = below.last() else {
        return Err(MdsError::Chain("no certificate below the root".to_string()));
    };
    // The anchor validate used: the pinned copy's root, or the root that
    // signed the top certificate.
    let anchor = match pinned_top {
        Some(root) => root,
        None => roots
            .iter()
            .filter(|r| r.tbs().subject() == top.tbs().issuer())
            .find(|r| {
                r.public_key()
                    .is_ok_and(|key| top.verify_signed_by(&key).is_ok())
            })
            .ok_or_else(|| MdsError::Chain("the issuing root was not found".to_string()))?,
    };
    let links = below
        .iter()
        .enumerate()
        .map(|(i, cert)| (cert, below.get(i + 1).unwrap_or(anchor)))
        .collect();
    Ok(Chain {
        subjects: path.subjects,
        links,
    })
}

fn check_revocation(chain: &Chain<'_>, crls: &[Crl], at: SystemTime) -> Result<bool, MdsError> {
    if crls.is_empty() {
        return Ok(false);
    }
    for &(cert, issuer) in &chain.links {
        let covering: Vec<(usize, &Crl)> = crls
            .iter()
            .enumerate()
            .filter(|(_, crl)| crl.covers(cert))
            .collect();
        if covering.is_empty() {
            return Err(MdsError::NoCrl {
                subject: cert.subject(),
                issuer: cert.issuer(),
            });
        }
        let key = issuer
            .public_key()
            .map_err(|e| MdsError::Chain(e.to_string()))?;
        let crl_sign = issuer
            .key_usage()
            .map_err(|e| MdsError::Chain(e.to_string()))?
            .is_none_or(|usage| usage.crl_sign());
        for (j, crl) in covering {
            if !crl_sign {
                return Err(MdsError::crl(
                    Some(j),
                    format!(
                        "its issuer {} may not sign CRLs (keyUsage lacks cRLSign)",
                        issuer.subject()
                    ),
                ));
            }
            crl.verify_signed_by(&key).map_err(|e| match e {
                MdsError::Crl { reason, .. } => {
                    MdsError::crl(Some(j), format!("{reason} ({})", issuer.subject()))
                }
                other => other,
            })?;
            if !crl.is_current_at(at) {
                return Err(MdsError::crl(
                    Some(j),
                    format!(
                        "not current at {}: published {} and its nextUpdate {} has passed",
                        crate::rfc3339::format(at),
                        crate::rfc3339::format(crl.this_update()),
                        crl.next_update()
                            .map_or_else(|| "(none)".to_string(), crate::rfc3339::format),
                    ),
                ));
            }
            let serial = cert.tbs().serial_number().as_bytes();
            if crl.is_revoked(serial) {
                return Err(MdsError::Revoked {
                    subject: cert.subject(),
                    serial: hex_upper(serial),
                    crl: j,
                });
            }
        }
    }
    Ok(true)
}

// ---------------------------------------------------------------------------
// Payload

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawPayload {
    legal_header: Option<Value>,
    no: Option<Value>,
    next_update: Option<Value>,
    entries: Option<Entries>,
}

/// At most [`limits::ENTRIES`] entries are kept; more are counted, not stored.
struct Entries {
    items: Vec<Value>,
    overflow: bool,
}

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Entries, D::Error> {
        struct Bounded;
        impl<'de> serde::de::Visitor<'de> for Bounded {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of entries")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Entries, A::Error> {
                let mut items = Vec::new();
                while items.len() < limits::ENTRIES {
                    match seq.next_element::<Value>()? {
                        Some(item) => items.push(item),
                        None => {
                            return Ok(Entries {
                                items,
                                overflow: false,
                            });
                        }
                    }
                }
                let mut overflow = false;
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
                    overflow = true;
                }
                Ok(Entries { items, overflow })
            }
        }
        d.deserialize_seq(Bounded)
    }
}

struct Payload {
    no: u64,
    next_update: String,
    next_update_time: SystemTime,
    legal_header: Option<String>,
    catalog: Catalog,
}

impl Payload {
    fn parse(bytes: &[u8]) -> Result<Payload, MdsError> {
        let raw: RawPayload = json_object(bytes).map_err(|e| match e {
            JsonError::Data(reason) => MdsError::payload("(document)", reason),
            JsonError::Syntax(reason) => MdsError::Jws {
                part: "payload",
                reason,
            },
        })?;
        let no = match &raw.no {
            None => return Err(MdsError::payload("no", "missing")),
            Some(v) => v
                .as_u64()
                .filter(|n| *n > 0)
                .ok_or_else(|| MdsError::payload("no", format!("{v} is not a positive integer")))?,
        };
        let next_update = match &raw.next_update {
            None => return Err(MdsError::payload("nextUpdate", "missing")),
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(MdsError::payload("nextUpdate", "expected a date string")),
        };
        let next_update_time = parse_date("nextUpdate", &next_update)?;
        let legal_header = match raw.legal_header {
            None => None,
            Some(Value::String(s)) => Some(s),
            Some(_) => return Err(MdsError::payload("legalHeader", "expected a string")),
        };
        let Some(entries) = raw.entries else {
            return Err(MdsError::payload("entries", "missing"));
        };
        if entries.overflow {
            return Err(MdsError::TooLarge {
                field: "payload entries".to_string(),
                limit: limits::ENTRIES,
            });
        }
        let entries = entries
            .items
            .into_iter()
            .enumerate()
            .map(|(i, v)| parse_entry(i, v))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Payload {
            no,
            next_update,
            next_update_time,
            legal_header,
            catalog: Catalog::new(entries)?,
        })
    }
}

/// A strict `YYYY-MM-DD`, as its day's start in UTC.
fn parse_date(field: &str, text: &str) -> Result<SystemTime, MdsError> {
    let b = text.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return Err(MdsError::payload(
            field,
            format!("{text:?} is not a YYYY-MM-DD date"),
        ));
    }
    crate::rfc3339::parse(&format!("{text}T00:00:00Z"))
        .map_err(|_| MdsError::payload(field, format!("{text:?} is not a valid date")))
}

fn parse_uuid(field: &str, text: &str) -> Result<[u8; 16], MdsError> {
    let bad = || MdsError::payload(field, format!("{text:?} is not a UUID"));
    let b = text.as_bytes();
    if b.len() != 36 || [8, 13, 18, 23].iter().any(|&i| b[i] != b'-') {
        return Err(bad());
    }
    let aaguid = crate::webauthn::parse_uuid(text).ok_or_else(bad)?;
    if aaguid == [0; 16] {
        return Err(MdsError::payload(
            field,
            "the nil AAGUID identifies no authenticator model",
        ));
    }
    Ok(aaguid)
}

fn check_aaid(field: &str, text: &str) -> Result<String, MdsError> {
    let b = text.as_bytes();
    let ok = b.len() == 9
        && b[4] == b'#'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || c.is_ascii_hexdigit());
    if !ok {
        return Err(MdsError::payload(
            field,
            format!("{text:?} is not an AAID (4 hex digits '#' 4 hex digits)"),
        ));
    }
    Ok(text.to_string())
}

/// Typed reads of an object's members; a member that is absent or null is `None`.
struct Members<'a> {
    map: &'a Map<String, Value>,
    path: String,
}

impl Members<'_> {
    fn field(&self, key: &str) -> String {
        format!("{}.{key}", self.path)
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn string(&self, key: &str) -> Result<Option<String>, MdsError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(MdsError::payload(self.field(key), "expected a string")),
        }
    }

    fn unsigned(&self, key: &str) -> Result<Option<u64>, MdsError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| {
                MdsError::payload(self.field(key), "expected a non-negative integer")
            }),
        }
    }

    fn array(&self, key: &str, limit: usize) -> Result<&[Value], MdsError> {
        match self.get(key) {
            None => Ok(&[]),
            Some(Value::Array(items)) if items.len() > limit => Err(MdsError::TooLarge {
                field: format!("payload {}", self.field(key)),
                limit,
            }),
            Some(Value::Array(items)) => Ok(items),
            Some(_) => Err(MdsError::payload(self.field(key), "expected an array")),
        }
    }

    fn strings(&self, key: &str) -> Result<Vec<String>, MdsError> {
        self.array(key, limits::STRINGS)?
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.clone()),
                _ => Err(MdsError::payload(
                    format!("{}[{i}]", self.field(key)),
                    "expected a string",
                )),
            })
            .collect()
    }

    fn date(&self, key: &str) -> Result<Option<String>, MdsError> {
        let date = self.string(key)?;
        if let Some(d) = &date {
            parse_date(&self.field(key), d)?;
        }
        Ok(date)
    }

    fn aaguid(&self) -> Result<Option<[u8; 16]>, MdsError> {
        self.string("aaguid")?
            .map(|s| parse_uuid(&self.field("aaguid"), &s))
            .transpose()
    }

    fn aaid(&self) -> Result<Option<String>, MdsError> {
        self.string("aaid")?
            .map(|s| check_aaid(&self.field("aaid"), &s))
            .transpose()
    }
}

fn parse_entry(index: usize, value: Value) -> Result<Entry, MdsError> {
    let path = format!("entries[{index}]");
    let Value::Object(mut map) = value else {
        return Err(MdsError::payload(path, "expected an object"));
    };
    let statement_json = map.remove("metadataStatement").filter(|v| !v.is_null());
    let m = Members { map: &map, path };

    let aaguid = m.aaguid()?;
    let aaid = m.aaid()?;
    let key_field = m.field("attestationCertificateKeyIdentifiers");
    let key_ids = m
        .array(
            "attestationCertificateKeyIdentifiers",
            limits::KEY_IDENTIFIERS,
        )?
        .iter()
        .enumerate()
        .map(|(k, v)| {
            let field = format!("{key_field}[{k}]");
            let Value::String(text) = v else {
                return Err(MdsError::payload(field, "expected a hex string"));
            };
            match crate::hex::decode(text) {
                Some(id) if !id.is_empty() && id.len() <= limits::KEY_IDENTIFIER => Ok(id),
                _ => Err(MdsError::payload(
                    field,
                    format!(
                        "{text:?} is not a key identifier (hex, 1 to {} bytes)",
                        limits::KEY_IDENTIFIER
                    ),
                )),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    if aaguid.is_none() && aaid.is_none() && key_ids.is_empty() {
        return Err(MdsError::payload(
            m.path.clone(),
            "names no authenticator: aaguid, aaid or attestationCertificateKeyIdentifiers is required",
        ));
    }

    let statement = statement_json
        .map(|json| parse_statement(&m.field("metadataStatement"), json, aaguid, aaid.as_deref()))
        .transpose()?;

    if m.get("statusReports").is_none() {
        return Err(MdsError::payload(m.field("statusReports"), "missing"));
    }
    let reports_field = m.field("statusReports");
    let status_reports = m
        .array("statusReports", limits::STATUS_REPORTS)?
        .iter()
        .enumerate()
        .map(|(k, v)| parse_status_report(&format!("{reports_field}[{k}]"), v))
        .collect::<Result<Vec<_>, _>>()?;

    Ok(Entry {
        index,
        aaguid,
        aaid,
        attestation_certificate_key_identifiers: key_ids,
        statement,
        status_reports,
        time_of_last_status_change: m.date("timeOfLastStatusChange")?,
    })
}

/// A metadata statement; its own `aaguid` / `aaid`, when present, must be
/// the entry's.
fn parse_statement(
    path: &str,
    json: Value,
    aaguid: Option<[u8; 16]>,
    aaid: Option<&str>,
) -> Result<Statement, MdsError> {
    let Value::Object(map) = &json else {
        return Err(MdsError::payload(path, "expected an object"));
    };
    let m = Members {
        map,
        path: path.to_string(),
    };
    let own_aaguid = m.aaguid()?;
    if own_aaguid.is_some() && own_aaguid != aaguid {
        return Err(MdsError::payload(
            m.field("aaguid"),
            "differs from the entry's aaguid",
        ));
    }
    let own_aaid = m.aaid()?;
    if let Some(own) = &own_aaid
        && !aaid.is_some_and(|a| a.eq_ignore_ascii_case(own))
    {
        return Err(MdsError::payload(
            m.field("aaid"),
            "differs from the entry's aaid",
        ));
    }
    let roots_field = m.field("attestationRootCertificates");
    let mut attestation_root_certificates = Vec::new();
    let mut rejected_roots = Vec::new();
    for (k, v) in m
        .array("attestationRootCertificates", limits::ROOTS_PER_STATEMENT)?
        .iter()
        .enumerate()
    {
        let field = format!("{roots_field}[{k}]");
        let Value::String(b64) = v else {
            return Err(MdsError::payload(field, "expected a base64 string"));
        };
        // Production BLOBs wrap some of these strings in line breaks.
        let b64: String = b64.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        let der = STANDARD_LENIENT_PAD
            .decode(&b64)
            .map_err(|e| MdsError::payload(&field, format!("not base64: {e}")))?;
        match Cert::parse(&der, &field) {
            Ok(cert) => attestation_root_certificates.push(cert),
            Err(e) => {
                let why = match e {
                    crate::webauthn::Error::Malformed { reason, .. } => reason,
                    other => other.to_string(),
                };
                rejected_roots.push(RejectedRoot {
                    index: k,
                    der,
                    reason: MdsError::payload(&field, format!("left out: {why}")),
                });
            }
        }
    }
    Ok(Statement {
        description: m.string("description")?,
        authenticator_version: m.unsigned("authenticatorVersion")?,
        protocol_family: m.string("protocolFamily")?,
        attestation_types: m.strings("attestationTypes")?,
        authentication_algorithms: m.strings("authenticationAlgorithms")?,
        attestation_root_certificates,
        rejected_roots,
        key_protection: m.strings("keyProtection")?,
        matcher_protection: m.strings("matcherProtection")?,
        attachment_hint: m.strings("attachmentHint")?,
        json,
    })
}

fn parse_status_report(path: &str, value: &Value) -> Result<StatusReport, MdsError> {
    let Value::Object(map) = value else {
        return Err(MdsError::payload(path, "expected an object"));
    };
    let m = Members {
        map,
        path: path.to_string(),
    };
    let status = match m.string("status")? {
        Some(s) if !s.is_empty() => s,
        Some(_) => return Err(MdsError::payload(m.field("status"), "empty")),
        None => return Err(MdsError::payload(m.field("status"), "missing")),
    };
    let certification_level = match m.string("certificationLevel")? {
        Some(level) => Some(level),
        None => status.strip_prefix("FIDO_CERTIFIED_").map(str::to_string),
    };
    Ok(StatusReport {
        effective_date: m.date("effectiveDate")?,
        certification_level,
        authenticator_version: m.unsigned("authenticatorVersion")?,
        certificate_number: m.string("certificateNumber")?,
        url: m.string("url")?,
        status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_ecdsa_signatures_become_der() {
        let mut raw = [0u8; 64];
        raw[31] = 1; // r = 1
        raw[32] = 0x80; // s has its high bit set: a zero byte is prefixed
        let der = raw_ecdsa_to_der(&raw).unwrap();
        let mut expected = vec![0x30, 3 + 35, 0x02, 0x01, 0x01, 0x02, 33, 0x00, 0x80];
        expected.extend_from_slice(&[0; 31]);
        assert_eq!(der, expected);
        // Zero r or s, or the wrong length, is no signature.
        assert_eq!(raw_ecdsa_to_der(&[0; 64]), None);
        let mut zero_s = [1u8; 64];
        zero_s[32..].fill(0);
        assert_eq!(raw_ecdsa_to_der(&zero_s), None);
        assert_eq!(raw_ecdsa_to_der(&[1; 63]), None);
        assert_eq!(raw_ecdsa_to_der(&[1; 72]), None);
        // Full-width values.
        let der = raw_ecdsa_to_der(&[0xff; 64]).unwrap();
        assert_eq!(der.len(), 2 + 2 * 35);
    }

    #[test]
    fn identifiers_are_strict() {
        let id = parse_uuid("f", "0123ABCD-4567-89ef-0123-456789abcdef").unwrap();
        assert_eq!(id[0], 0x01);
        assert_eq!(id[15], 0xef);
        for bad in [
            "0123abcd-4567-89ef-0123-456789abcde",
            "0123abcd-4567-89ef-0123-456789abcdeg",
            "0123abcd+4567-89ef-0123-456789abcdef",
            "{0123abcd-4567-89ef-0123-456789abcd}",
            "00000000-0000-0000-0000-000000000000",
            "0123abcd-4567-89ef-0123-456789abcdé",
        ] {
            assert!(parse_uuid("f", bad).is_err(), "{bad}");
        }
        assert_eq!(check_aaid("f", "4e4e#4006").unwrap(), "4e4e#4006");
        for bad in [
            "4e4e4006",
            "4e4e#400",
            "4e4g#4006",
            "#4e4e4006",
            "4e4e#40066",
        ] {
            assert!(check_aaid("f", bad).is_err(), "{bad}");
        }
        assert_eq!(crate::hex::decode("00fFa0"), Some(vec![0, 0xff, 0xa0]));
        assert_eq!(crate::hex::decode("abc"), None);
        assert_eq!(crate::hex::decode("zz"), None);
        assert_eq!(crate::hex::decode("+1"), None);
    }

    #[test]
    fn dates_are_strict() {
        assert_eq!(
            parse_date("d", "2021-12-01").unwrap(),
            crate::rfc3339::parse("2021-12-01T00:00:00Z").unwrap()
        );
        for bad in [
            "2021-12-1",
            "2021/12/01",
            "2021-13-01",
            "2021-02-29",
            "2021-12-01Z",
            "20211201",
            "",
        ] {
            assert!(parse_date("d", bad).is_err(), "{bad}");
        }
    }

    fn report(status: &str, date: Option<&str>) -> StatusReport {
        StatusReport {
            status: status.into(),
            effective_date: date.map(str::to_string),
            certification_level: None,
            authenticator_version: None,
            certificate_number: None,
            url: None,
        }
    }

    fn entry(index: usize, aaguid: Option<[u8; 16]>, reports: Vec<StatusReport>) -> Entry {
        Entry {
            index,
            aaguid,
            aaid: None,
            attestation_certificate_key_identifiers: Vec::new(),
            statement: None,
            status_reports: reports,
            time_of_last_status_change: None,
        }
    }

    #[test]
    fn the_latest_status_is_by_date_then_position() {
        let e = entry(
            0,
            None,
            vec![
                report("B", Some("2021-03-05")),
                report("undated", None),
                report("A", Some("2019-12-04")),
            ],
        );
        assert_eq!(e.latest_status().unwrap().status, "B");
        let tie = entry(
            0,
            None,
            vec![
                report("first", Some("2020-01-01")),
                report("second", Some("2020-01-01")),
            ],
        );
        assert_eq!(tie.latest_status().unwrap().status, "second");
        assert!(entry(0, None, vec![]).latest_status().is_none());
    }

    #[test]
    fn catalog_refuses_a_repeated_identifier() {
        let a = [1; 16];
        let catalog = Catalog::new(vec![
            entry(0, Some(a), vec![]),
            entry(1, Some([2; 16]), vec![]),
        ])
        .unwrap();
        assert_eq!(catalog.by_aaguid(&[2; 16]).unwrap().index, 1);
        assert!(catalog.by_key_id(b"x").is_none());
        assert_eq!(catalog.len(), 2);
        let err =
            Catalog::new(vec![entry(0, Some(a), vec![]), entry(1, Some(a), vec![])]).unwrap_err();
        assert_eq!(
            err,
            MdsError::payload("entries[1].aaguid", "the same identifier as entries[0]")
        );
        // The same key identifier twice in one entry is harmless.
        let mut e = entry(0, None, vec![]);
        e.attestation_certificate_key_identifiers = vec![vec![7], vec![7]];
        assert!(Catalog::new(vec![e]).unwrap().by_key_id(&[7]).is_some());
    }

    #[test]
    fn freshness_and_serials() {
        let blob = Blob {
            no: 5,
            next_update: "2021-12-01".into(),
            next_update_time: parse_date("d", "2021-12-01").unwrap(),
            legal_header: None,
            alg: JwsAlgorithm::Es256,
            signer_subject: String::new(),
            chain_subjects: Vec::new(),
            revocation_checked: false,
            catalog: Catalog::default(),
            warnings: Vec::new(),
        };
        let t = |s: &str| crate::rfc3339::parse(s).unwrap();
        assert!(!blob.is_stale(t("2021-11-30T00:00:00Z")));
        assert!(!blob.is_stale(t("2021-12-01T23:59:59.999Z")));
        assert!(blob.is_stale(t("2021-12-02T00:00:00Z")));
        assert_eq!(
            blob.check_fresh(t("2022-01-01T00:00:00Z"))
                .unwrap_err()
                .kind(),
            "stale"
        );
        assert!(check_newer(None, &blob).is_ok());
        assert!(check_newer(Some(4), &blob).is_ok());
        assert_eq!(
            check_newer(Some(5), &blob).unwrap_err(),
            MdsError::NotNewer { held: 5, got: 5 }
        );
    }

    #[test]
    fn compact_splitting() {
        let c = Compact::split(b"aGk.e30.c2ln\n").unwrap();
        assert_eq!((c.header, c.payload, c.signature), ("aGk", "e30", "c2ln"));
        assert_eq!(c.signing_input, b"aGk.e30");
        for (bad, part) in [
            (&b"a.b"[..], "blob"),
            (b"a.b.c.d", "blob"),
            (b".b.c", "header"),
            (b"a.b.", "signature"),
            (b"a.\xffb.c", "blob"),
        ] {
            match Compact::split(bad) {
                Err(MdsError::Jws { part: p, .. }) => assert_eq!(p, part),
                Err(other) => panic!("{other:?}"),
                Ok(_) => panic!("accepted"),
            }
        }
        assert!(decode_part("payload", "e30=", 100).is_err());
        assert!(decode_part("payload", "e3+", 100).is_err());
        assert_eq!(decode_part("payload", "e30", 100).unwrap(), b"{}");
        assert!(matches!(
            decode_part("payload", "AAAAAAAA", 3),
            Err(MdsError::TooLarge { .. })
        ));
    }
}
