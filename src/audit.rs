//! The audit log: every state change and every officer action, appended to a
//! hash chain, with checkpoints signed by the `audit-checkpoint` key.
//!
//! # Model
//!
//! This module is pure: it encodes, hashes, signs through a [`KeyRing`] and
//! verifies; it neither stores nor reads the clock. The store assigns `seq`
//! and `prev_hash` inside its own write transaction (sled today, PostgreSQL
//! later) and calls [`build_entry`] there, so two writers can never fork the
//! chain. [`build_entry`] is deterministic, so a store may call it again when
//! it retries a transaction.
//!
//! The sections below are normative: an auditor can re-implement the verifier
//! from them alone.
//!
//! # Record
//!
//! A record is `(seq, prev_hash, hash, body)`:
//!
//! * `seq`: 1 for the first record, then one more per record, no gaps.
//! * `prev_hash`: the `hash` of record `seq - 1`; 32 zero bytes for record 1.
//! * `body`: the event in its canonical encoding (next section).
//! * `hash`:
//!
//! ```text
//! hash = SHA-256( "signet-audit-entry-v1" || 0x00
//!                 || u64be(seq)
//!                 || prev_hash
//!                 || SHA-256(body) )
//! ```
//!
//! `"signet-audit-entry-v1"` is those 21 ASCII bytes, `0x00` one zero byte,
//! `u64be` eight bytes big-endian, `||` concatenation: the preimage is always
//! 94 bytes. Every part has a fixed length, so two different records never
//! share a preimage. The tag keeps these hashes apart from any other SHA-256
//! signet computes, and ends in a zero byte so that neither of this module's
//! tags is a prefix of the other. The body is hashed first to keep the
//! preimage fixed-size whatever the body's length.
//!
//! # Body, format version 1
//!
//! The body is UTF-8 JSON, the object
//!
//! ```text
//! {"actor":A,"detail":D,"event":E,"subject":S,"time_ms":T,"v":1}
//! ```
//!
//! serialized by RFC 8785 (JSON Canonicalization Scheme), restricted to values
//! for which JCS needs no floating-point formatting:
//!
//! * no whitespace outside strings;
//! * the members of every object ordered by name, names compared as sequences
//!   of UTF-16 code units (RFC 8785 §3.2.3; for ASCII names this is byte
//!   order); names are unique;
//! * numbers are integers from -(2^53 - 1) to 2^53 - 1, written in decimal
//!   with `-` for negatives and no leading zero, plus sign, fraction or
//!   exponent; any other number (`1.5`, `1e3`, `2^53`) is refused, because
//!   beyond 2^53 an ECMAScript-based JCS implementation could not reproduce
//!   the digits;
//! * strings: `"` and `\` as `\"` and `\\`; U+0008, U+0009, U+000A, U+000C,
//!   U+000D as `\b`, `\t`, `\n`, `\f`, `\r`; every other code point below
//!   U+0020 as `\u00xx` with lowercase hex; everything else (`/`, DEL, all
//!   non-ASCII) as its UTF-8 bytes;
//! * `true`, `false` and `null` as such.
//!
//! Any RFC 8785 implementation therefore produces the same bytes from the
//! same value. JSON rather than deterministic CBOR because the log is read by
//! people and served as JSON by `GET /v1/audit`, so a body can be shown and
//! re-hashed as it is; RFC 8785 is also the canonicalization the design
//! prescribes for transactions, and has libraries in every language an
//! auditor might use.
//!
//! The members:
//!
//! | name | value |
//! |---|---|
//! | `v` | the format version, `1`; any change to this section or to the hashes bumps it, and a verifier refuses versions it does not know |
//! | `time_ms` | when the event happened, milliseconds since the Unix epoch (UTC), from the writer's clock, at most 2^53 - 1 |
//! | `actor` | who acted: the client identity (mTLS certificate subject, `cli:<officer>`), 1 to 1024 bytes |
//! | `event` | what happened, e.g. `credential.registered`, `key.rotated`: 1 to 64 bytes of `a-z`, `0-9`, `.`, `_`, `-` |
//! | `subject` | what it happened to (credential id in base64url, kid, device id), 0 to 2048 bytes |
//! | `detail` | any further facts as a JSON value (`null` if none), at most 8 levels of nested arrays and objects |
//!
//! A whole body is at most 16384 bytes. A body is valid only if it is exactly
//! the encoding of the event it decodes to: a verifier re-encodes and compares
//! the bytes, so every event has exactly one body.
//!
//! # Checkpoints
//!
//! A checkpoint states that at `time_ms` the chain's record `seq` had hash `H`:
//!
//! ```text
//! message   = "signet-audit-checkpoint-v1" || 0x00 || u64be(seq) || H || u64be(time_ms)
//! signature = ECDSA P-256 with SHA-256 over message, as 64 bytes r || s
//! kid       = the signing key's id (crate::keys::Kid: base64url of the first
//!             16 bytes of SHA-256 over its DER SubjectPublicKeyInfo)
//! ```
//!
//! The message is 75 bytes; `r` and `s` are each 32 bytes big-endian,
//! left-padded with zeros. Raw `r || s` rather than DER: it is what both key
//! backends return, has a fixed length, and is the ES256 form of JOSE and
//! COSE. The time is signed so it cannot be moved afterwards: a checkpoint
//! bounds when the records before it existed.
//!
//! Checkpoints are what make the chain tamper-evident. Without one, anyone
//! who can write to the store could rewrite the chain's tail and recompute
//! every hash. Rewriting any record at or before a checkpoint changes the
//! hash that checkpoint signed; deleting records after a checkpoint leaves a
//! checkpoint beyond the end of the chain, which the verifier reports as
//! truncation. Records after the newest checkpoint are protected by the chain
//! alone, so checkpoint often ([`CheckpointPolicy`]) and export checkpoints
//! off the appliance: an exported checkpoint given back to the verifier still
//! proves truncation when the store's own copies were deleted too.
//!
//! # Verification
//!
//! [`verify_chain`] reads the records once, in order, in constant memory, and
//! checks for every record, in this order:
//!
//! 1. its `seq` is one more than the previous record's (1 for the first);
//! 2. its `prev_hash` is the stored `hash` of the previous record (32 zero
//!    bytes for record 1);
//! 3. its stored `hash` equals the hash recomputed from `seq`, `prev_hash` and
//!    `body`;
//! 4. its body decodes as format version 1 and is canonical;
//!
//! and for every checkpoint:
//!
//! 5. its kid is one of the given `audit-checkpoint` keys and its signature
//!    verifies (an unknown kid is a failure, not a skip);
//! 6. the chain has a record at its `seq`, and that record's recomputed hash is
//!    the checkpoint's hash. A validly signed checkpoint beyond the last
//!    record means records were removed.
//!
//! Record times are not required to increase: they come from the writers'
//! clocks, which may step; the order is `seq`.
//!
//! The verifier does not stop at the first finding: each record is checked on
//! its own, so a single altered record is reported alone rather than as the
//! start of a broken tail. The first finding is the first broken record: all
//! records and checkpoints before its `seq` verified.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::keys::{EcPublicKey, EcdsaSignature, KeyError, KeyInfo, KeyRing, Role, sha256};
use crate::store::{AuditEntry, Checkpoint, Store, StoreError};

/// The body format version written into every body as `v`.
pub const FORMAT_VERSION: u64 = 1;

/// The `prev_hash` of record 1.
pub const GENESIS_PREV_HASH: [u8; 32] = [0; 32];

const ENTRY_TAG: &[u8] = b"signet-audit-entry-v1\0";
const CHECKPOINT_TAG: &[u8] = b"signet-audit-checkpoint-v1\0";

/// Largest encoded body, in bytes.
pub const MAX_BODY_LEN: usize = 16 * 1024;
/// Longest `actor`, in bytes: certificate subjects can be long.
pub const MAX_ACTOR_LEN: usize = 1024;
/// Longest `subject`, in bytes: room for the longest WebAuthn credential id
/// (1023 bytes, 1364 in base64url), so every id is logged as itself.
pub const MAX_SUBJECT_LEN: usize = 2048;
/// Longest `event` name, in bytes.
pub const MAX_EVENT_LEN: usize = 64;
/// Deepest nesting of arrays and objects in `detail`.
pub const MAX_DETAIL_DEPTH: usize = 8;
/// Largest magnitude of a number in a body (and of `time_ms`): 2^53 - 1.
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;
/// Findings kept in a [`VerifyReport`]; the rest are counted, so a chain of
/// any length verifies in bounded memory.
pub const MAX_FINDINGS: usize = 100;

/// One audited fact: who did what to which subject, when.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AuditEvent {
    pub time_ms: u64,
    pub actor: String,
    pub event: String,
    pub subject: String,
    pub detail: Value,
}

impl AuditEvent {
    /// An event with no detail (`null`).
    pub fn new(
        time_ms: u64,
        actor: impl Into<String>,
        event: impl Into<String>,
        subject: impl Into<String>,
    ) -> AuditEvent {
        AuditEvent {
            time_ms,
            actor: actor.into(),
            event: event.into(),
            subject: subject.into(),
            detail: Value::Null,
        }
    }

    pub fn with_detail(mut self, detail: Value) -> AuditEvent {
        self.detail = detail;
        self
    }
}

/// Why an event could not be logged or a checkpoint signed.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit event: {0}")]
    InvalidEvent(String),
    #[error("audit body: {0}")]
    InvalidBody(String),
    #[error("audit chain position: {0}")]
    InvalidPosition(String),
    #[error("audit checkpoint signing: {0}")]
    Key(#[from] KeyError),
}

/// The canonical body of `event` (format version 1, see the module doc).
pub fn encode_body(event: &AuditEvent) -> Result<Vec<u8>, AuditError> {
    check_event(event)?;
    let mut out = Vec::with_capacity(256);
    // Written out by hand in the canonical member order, so the order is
    // visible here rather than implied by a sort.
    out.extend_from_slice(b"{\"actor\":");
    write_string(&mut out, &event.actor);
    out.extend_from_slice(b",\"detail\":");
    write_value(&mut out, &event.detail, MAX_DETAIL_DEPTH)?;
    out.extend_from_slice(b",\"event\":");
    write_string(&mut out, &event.event);
    out.extend_from_slice(b",\"subject\":");
    write_string(&mut out, &event.subject);
    out.extend_from_slice(b",\"time_ms\":");
    out.extend_from_slice(event.time_ms.to_string().as_bytes());
    out.extend_from_slice(b",\"v\":");
    out.extend_from_slice(FORMAT_VERSION.to_string().as_bytes());
    out.push(b'}');
    check_size(&out)?;
    Ok(out)
}

/// The event in a body. Refuses unknown versions and any body that is not
/// exactly the canonical encoding of what it decodes to.
pub fn decode_body(body: &[u8]) -> Result<AuditEvent, AuditError> {
    let bad = |m: String| AuditError::InvalidBody(m);
    if body.len() > MAX_BODY_LEN {
        return Err(bad(format!("longer than {MAX_BODY_LEN} bytes")));
    }
    // Parsed generically first so that a newer version is reported as such
    // rather than as an unknown member.
    let mut value: Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("not JSON: {e}")))?;
    let version = match &mut value {
        Value::Object(members) => members.remove("v"),
        _ => return Err(bad("not a JSON object".into())),
    };
    match version.as_ref().and_then(Value::as_u64) {
        Some(FORMAT_VERSION) => {}
        Some(v) => return Err(bad(format!("unsupported format version {v}"))),
        None => return Err(bad("no integer format version \"v\"".into())),
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Wire {
        time_ms: u64,
        actor: String,
        event: String,
        subject: String,
        detail: Value,
    }
    let wire: Wire = serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
    let event = AuditEvent {
        time_ms: wire.time_ms,
        actor: wire.actor,
        event: wire.event,
        subject: wire.subject,
        detail: wire.detail,
    };
    let canonical = encode_body(&event).map_err(|e| match e {
        AuditError::InvalidEvent(m) => bad(m),
        other => other,
    })?;
    if canonical != body {
        return Err(bad("not in canonical form".into()));
    }
    Ok(event)
}

/// The record hash (see the module doc).
pub fn entry_hash(seq: u64, prev_hash: &[u8; 32], body: &[u8]) -> [u8; 32] {
    let mut preimage = [0u8; 94];
    let (tag, rest) = preimage.split_at_mut(ENTRY_TAG.len());
    tag.copy_from_slice(ENTRY_TAG);
    rest[..8].copy_from_slice(&seq.to_be_bytes());
    rest[8..40].copy_from_slice(prev_hash);
    rest[40..72].copy_from_slice(&sha256(body));
    sha256(&preimage)
}

/// The body and hash of record `seq`, for the store to persist with `seq`
/// and `prev_hash`. Call it inside the transaction that assigned them.
pub fn build_entry(
    seq: u64,
    prev_hash: [u8; 32],
    event: &AuditEvent,
) -> Result<(Vec<u8>, [u8; 32]), AuditError> {
    if seq == 0 {
        return Err(AuditError::InvalidPosition(
            "sequence numbers start at 1".into(),
        ));
    }
    // A store bug here would make the whole chain unverifiable from record 1.
    if seq == 1 && prev_hash != GENESIS_PREV_HASH {
        return Err(AuditError::InvalidPosition(
            "record 1 must follow the all-zero genesis hash".into(),
        ));
    }
    let body = encode_body(event)?;
    let hash = entry_hash(seq, &prev_hash, &body);
    Ok((body, hash))
}

/// The bytes a checkpoint signs (see the module doc).
pub fn checkpoint_message(seq: u64, hash: &[u8; 32], time_ms: u64) -> Vec<u8> {
    let mut message = Vec::with_capacity(CHECKPOINT_TAG.len() + 48);
    message.extend_from_slice(CHECKPOINT_TAG);
    message.extend_from_slice(&seq.to_be_bytes());
    message.extend_from_slice(hash);
    message.extend_from_slice(&time_ms.to_be_bytes());
    message
}

/// A signed statement that record `seq` had `hash` at `time_ms`. Field for
/// field what the store persists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedCheckpoint {
    pub seq: u64,
    pub hash: [u8; 32],
    /// The signing key's [`crate::keys::Kid`] as text.
    pub kid: String,
    /// Raw `r || s`, 64 bytes.
    pub signature: Vec<u8>,
    pub time_ms: u64,
}

/// Signs a checkpoint with the active `audit-checkpoint` key. Blocks on the
/// key device: call it off the async reactor.
pub fn sign_checkpoint(
    keys: &KeyRing,
    seq: u64,
    hash: [u8; 32],
    time_ms: u64,
) -> Result<SignedCheckpoint, AuditError> {
    if seq == 0 {
        return Err(AuditError::InvalidPosition(
            "there is no record 0 to checkpoint".into(),
        ));
    }
    let message = checkpoint_message(seq, &hash, time_ms);
    let (kid, signature) = keys.sign(Role::AuditCheckpoint, &message)?;
    Ok(SignedCheckpoint {
        seq,
        hash,
        kid: kid.to_string(),
        signature: signature.raw().to_vec(),
        time_ms,
    })
}

/// Checks a checkpoint's kid and signature, not its place in the chain.
pub fn verify_checkpoint_signature(
    checkpoint: &SignedCheckpoint,
    keys: &HashMap<String, EcPublicKey>,
) -> Result<(), Reason> {
    let Some(public) = keys.get(&checkpoint.kid) else {
        return Err(Reason::CheckpointUnknownKey {
            kid: checkpoint.kid.clone(),
        });
    };
    let bad = || Reason::CheckpointSignature {
        kid: checkpoint.kid.clone(),
    };
    let signature = EcdsaSignature::from_raw(&checkpoint.signature).map_err(|_| bad())?;
    let message = checkpoint_message(checkpoint.seq, &checkpoint.hash, checkpoint.time_ms);
    if public.verify(&message, &signature) {
        Ok(())
    } else {
        Err(bad())
    }
}

/// The verification keys for checkpoints: every `audit-checkpoint` version,
/// retired ones included, because retiring disables signing from then on and
/// does not void what the key signed before.
pub fn checkpoint_keys(keys: &[KeyInfo]) -> HashMap<String, EcPublicKey> {
    keys.iter()
        .filter(|k| k.role == Role::AuditCheckpoint)
        .map(|k| (k.kid.to_string(), k.public.clone()))
        .collect()
}

/// When to sign the next checkpoint: after `every_records` records or
/// `every_ms` milliseconds since the last one, whichever comes first; 0
/// disables that trigger.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointPolicy {
    pub every_records: u64,
    pub every_ms: u64,
}

impl Default for CheckpointPolicy {
    fn default() -> CheckpointPolicy {
        CheckpointPolicy {
            every_records: 1000,
            every_ms: 60_000,
        }
    }
}

impl CheckpointPolicy {
    /// True when record `seq` (the chain's head) should be checkpointed now.
    /// With no checkpoint yet, pass 0 and 0. Call it after each append, and
    /// from a timer with the current head, so that a quiet log's last records
    /// are checkpointed too. Never due twice for the same head.
    pub fn due(
        &self,
        last_checkpoint_seq: u64,
        last_checkpoint_time_ms: u64,
        seq: u64,
        now_ms: u64,
    ) -> bool {
        if seq <= last_checkpoint_seq {
            return false;
        }
        let by_count = self.every_records > 0 && seq - last_checkpoint_seq >= self.every_records;
        let by_time =
            self.every_ms > 0 && now_ms.saturating_sub(last_checkpoint_time_ms) >= self.every_ms;
        by_count || by_time
    }
}

/// A record as the store holds it: `(seq, prev_hash, hash, body)`.
pub type RawRecord = (u64, [u8; 32], [u8; 32], Vec<u8>);

/// What is wrong at a place in the chain.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Reason {
    #[error(
        "expected record {expected}, found record {found} (records missing, duplicated or out of order)"
    )]
    Sequence { expected: u64, found: u64 },
    #[error("prev_hash {} is not the hash of the previous record, {}", hex(.found), hex(.expected))]
    PrevHash { expected: [u8; 32], found: [u8; 32] },
    #[error("stored hash {} differs from the recomputed {}: the record was altered", hex(.stored), hex(.computed))]
    Hash {
        stored: [u8; 32],
        computed: [u8; 32],
    },
    #[error("body: {0}")]
    Body(String),
    #[error("checkpoint signed by unknown key {kid}")]
    CheckpointUnknownKey { kid: String },
    #[error("checkpoint signature by key {kid} does not verify")]
    CheckpointSignature { kid: String },
    #[error("checkpoint by key {kid} certifies hash {}, the chain has {}", hex(.signed), hex(.chain))]
    CheckpointHash {
        kid: String,
        signed: [u8; 32],
        chain: [u8; 32],
    },
    #[error("checkpoint by key {kid} certifies this record, which is missing from the chain")]
    CheckpointRecordMissing { kid: String },
    #[error(
        "checkpoint by key {kid} certifies record {checkpoint_seq}, but the chain ends at record {last_seq}: records were removed"
    )]
    Truncated {
        kid: String,
        checkpoint_seq: u64,
        last_seq: u64,
    },
    #[error("cannot read the record: {0}; verification stopped")]
    Read(String),
}

/// A finding: `seq` is the first record it puts in doubt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Broken {
    pub seq: u64,
    pub reason: Reason,
}

impl fmt::Display for Broken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "seq {}: {}", self.seq, self.reason)
    }
}

/// The outcome of [`verify_chain`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    /// Records read.
    pub records: u64,
    /// Checkpoints given.
    pub checkpoints: u64,
    /// Checkpoints whose signature and hash both verified.
    pub checkpoints_verified: u64,
    /// Highest seq certified by a verified checkpoint (0 if none): the
    /// records after it are protected by the chain alone.
    pub covered_seq: u64,
    /// The first finding in chain order; `None` when the chain is intact.
    pub first_broken: Option<Broken>,
    /// The first [`MAX_FINDINGS`] findings in chain order, `first_broken`
    /// included.
    pub findings: Vec<Broken>,
    /// Findings beyond [`MAX_FINDINGS`], counted only.
    pub findings_omitted: u64,
    /// Seq of the last record read (0 for an empty chain).
    pub last_seq: u64,
    /// Recomputed hash of the last record read (the genesis hash for an
    /// empty chain).
    pub last_hash: [u8; 32],
}

impl VerifyReport {
    pub fn is_intact(&self) -> bool {
        self.first_broken.is_none()
    }

    fn add(&mut self, seq: u64, reason: Reason) {
        let finding = Broken { seq, reason };
        if self.first_broken.is_none() {
            self.first_broken = Some(finding.clone());
        }
        if self.findings.len() < MAX_FINDINGS {
            self.findings.push(finding);
        } else {
            self.findings_omitted += 1;
        }
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "records: {}, last seq {}, head hash {}",
            self.records,
            self.last_seq,
            hex(&self.last_hash)
        )?;
        write!(
            f,
            "checkpoints: {} of {} verified",
            self.checkpoints_verified, self.checkpoints
        )?;
        if self.covered_seq > 0 {
            write!(f, ", covering records up to {}", self.covered_seq)?;
        }
        if self.last_seq > self.covered_seq {
            write!(
                f,
                "; records {}..={} not yet covered by a checkpoint",
                self.covered_seq + 1,
                self.last_seq
            )?;
        }
        writeln!(f)?;
        for finding in &self.findings {
            writeln!(f, "broken: {finding}")?;
        }
        if self.findings_omitted > 0 {
            writeln!(
                f,
                "broken: {} more findings not listed",
                self.findings_omitted
            )?;
        }
        match &self.first_broken {
            None => write!(f, "intact"),
            Some(first) => write!(f, "first broken record: seq {}", first.seq),
        }
    }
}

/// Verifies a chain and its checkpoints (see "Verification" in the module
/// doc). `records` must come in seq order, as the store reads them; they are
/// streamed, never collected. `keys` maps kid text to the `audit-checkpoint`
/// public keys ([`checkpoint_keys`]); a checkpoint by any other key fails.
pub fn verify_chain<I, E>(
    records: I,
    checkpoints: &[SignedCheckpoint],
    keys: &HashMap<String, EcPublicKey>,
) -> VerifyReport
where
    I: IntoIterator<Item = Result<RawRecord, E>>,
    E: fmt::Display,
{
    let mut report = VerifyReport {
        records: 0,
        checkpoints: checkpoints.len() as u64,
        checkpoints_verified: 0,
        covered_seq: 0,
        first_broken: None,
        findings: Vec::new(),
        findings_omitted: 0,
        last_seq: 0,
        last_hash: GENESIS_PREV_HASH,
    };
    let mut ordered: Vec<&SignedCheckpoint> = checkpoints.iter().collect();
    ordered.sort_by_key(|c| c.seq);
    let mut pending = ordered.into_iter().peekable();
    // (seq, stored hash) of the previous record. Links are checked against
    // the stored hash so that one altered record is one finding, not two.
    let mut previous: Option<(u64, [u8; 32])> = None;

    for item in records {
        let (expected_seq, expected_prev) = match previous {
            None => (1, GENESIS_PREV_HASH),
            Some((seq, hash)) => (seq.saturating_add(1), hash),
        };
        let (seq, prev_hash, stored, body) = match item {
            Ok(record) => record,
            Err(e) => {
                // Records past an unreadable one cannot be placed, and
                // checkpoints past it would be misreported as truncation.
                report.add(expected_seq, Reason::Read(e.to_string()));
                return report;
            }
        };
        report.records += 1;

        if seq != expected_seq {
            report.add(
                expected_seq,
                Reason::Sequence {
                    expected: expected_seq,
                    found: seq,
                },
            );
        } else if prev_hash != expected_prev {
            report.add(
                seq,
                Reason::PrevHash {
                    expected: expected_prev,
                    found: prev_hash,
                },
            );
        }
        let computed = entry_hash(seq, &prev_hash, &body);
        if computed != stored {
            report.add(seq, Reason::Hash { stored, computed });
        }
        if let Err(e) = decode_body(&body) {
            let detail = match e {
                AuditError::InvalidBody(m) | AuditError::InvalidEvent(m) => m,
                other => other.to_string(),
            };
            report.add(seq, Reason::Body(detail));
        }

        while let Some(checkpoint) = pending.next_if(|c| c.seq <= seq) {
            if let Err(reason) = verify_checkpoint_signature(checkpoint, keys) {
                report.add(checkpoint.seq, reason);
            } else if checkpoint.seq < seq {
                report.add(
                    checkpoint.seq,
                    Reason::CheckpointRecordMissing {
                        kid: checkpoint.kid.clone(),
                    },
                );
            } else if checkpoint.hash != computed {
                report.add(
                    seq,
                    Reason::CheckpointHash {
                        kid: checkpoint.kid.clone(),
                        signed: checkpoint.hash,
                        chain: computed,
                    },
                );
            } else {
                report.checkpoints_verified += 1;
                report.covered_seq = report.covered_seq.max(seq);
            }
        }

        previous = Some((seq, stored));
        report.last_seq = seq;
        report.last_hash = computed;
    }

    for checkpoint in pending {
        match verify_checkpoint_signature(checkpoint, keys) {
            Err(reason) => report.add(checkpoint.seq, reason),
            Ok(()) => {
                let seq = report.last_seq.saturating_add(1);
                report.add(
                    seq,
                    Reason::Truncated {
                        kid: checkpoint.kid.clone(),
                        checkpoint_seq: checkpoint.seq,
                        last_seq: report.last_seq,
                    },
                );
            }
        }
    }
    report
}

/// Lowercase hex, as hashes are shown to auditors.
pub use crate::hex::encode as hex;

fn check_event(event: &AuditEvent) -> Result<(), AuditError> {
    let bad = |m: String| Err(AuditError::InvalidEvent(m));
    if event.time_ms > MAX_SAFE_INTEGER {
        return bad(format!("time_ms {} is beyond 2^53 - 1", event.time_ms));
    }
    if event.actor.is_empty() || event.actor.len() > MAX_ACTOR_LEN {
        return bad(format!(
            "actor must be 1 to {MAX_ACTOR_LEN} bytes, is {}",
            event.actor.len()
        ));
    }
    let name_ok = event
        .event
        .bytes()
        .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-'));
    if event.event.is_empty() || event.event.len() > MAX_EVENT_LEN || !name_ok {
        return bad(format!(
            "event name {:?} must be 1 to {MAX_EVENT_LEN} bytes of a-z, 0-9, '.', '_', '-'",
            event.event.chars().take(80).collect::<String>()
        ));
    }
    if event.subject.len() > MAX_SUBJECT_LEN {
        return bad(format!(
            "subject must be at most {MAX_SUBJECT_LEN} bytes, is {}",
            event.subject.len()
        ));
    }
    Ok(())
}

fn check_size(body: &[u8]) -> Result<(), AuditError> {
    if body.len() > MAX_BODY_LEN {
        return Err(AuditError::InvalidEvent(format!(
            "body longer than {MAX_BODY_LEN} bytes"
        )));
    }
    Ok(())
}

/// RFC 8785 for the value subset of the module doc. `levels` is how many more
/// arrays or objects may be entered.
fn write_value(out: &mut Vec<u8>, value: &Value, levels: usize) -> Result<(), AuditError> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            let safe = match (n.as_i64(), n.as_u64()) {
                (Some(i), _) => i.unsigned_abs() <= MAX_SAFE_INTEGER,
                (None, Some(u)) => u <= MAX_SAFE_INTEGER,
                (None, None) => false,
            };
            if !safe {
                return Err(AuditError::InvalidEvent(format!(
                    "detail number {n} is not an integer within ±(2^53 - 1)"
                )));
            }
            out.extend_from_slice(n.to_string().as_bytes());
        }
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            let levels = enter(levels)?;
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, item, levels)?;
                // Stop early rather than encode an oversized detail in full.
                check_size(out)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let levels = enter(levels)?;
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
            out.push(b'{');
            for (i, (name, item)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(out, name);
                out.push(b':');
                write_value(out, item, levels)?;
                check_size(out)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

fn enter(levels: usize) -> Result<usize, AuditError> {
    levels.checked_sub(1).ok_or_else(|| {
        AuditError::InvalidEvent(format!(
            "detail nests deeper than {MAX_DETAIL_DEPTH} arrays or objects"
        ))
    })
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\u{08}' => out.extend_from_slice(b"\\b"),
            '\t' => out.extend_from_slice(b"\\t"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\u{0c}' => out.extend_from_slice(b"\\f"),
            '\r' => out.extend_from_slice(b"\\r"),
            c if u32::from(c) < 0x20 => {
                out.extend_from_slice(b"\\u00");
                out.extend_from_slice(hex(&[c as u8]).as_bytes());
            }
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

// ---- the log over a store ----

/// Entries per [`Store::audit_range`] call while verifying: large enough that
/// a million-record chain takes a thousand reads, small enough that a page of
/// the largest bodies stays a few megabytes.
pub const VERIFY_PAGE: usize = 1000;

/// Why [`AuditLog`] could not append, checkpoint or verify. Separate from
/// [`AuditError`], which is this module's pure logic and knows no store.
#[derive(Debug, thiserror::Error)]
pub enum AuditLogError {
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error("audit store: {0}")]
    Store(StoreError),
}

impl From<StoreError> for AuditLogError {
    /// Recovers an [`AuditError`] that [`audit_to_store`] wrapped to pass it
    /// through the store's `build` callback, so a refused event is reported
    /// as such and not as a store failure.
    fn from(error: StoreError) -> AuditLogError {
        match error {
            StoreError::Backend(inner) => match inner.downcast::<AuditError>() {
                Ok(audit) => AuditLogError::Audit(*audit),
                Err(other) => AuditLogError::Store(StoreError::Backend(other)),
            },
            other => AuditLogError::Store(other),
        }
    }
}

/// An [`AuditError`] raised inside [`Store::append_audit`]'s `build`
/// callback, which can only return a [`StoreError`]. [`AuditLogError`]'s
/// `From<StoreError>` unwraps it again.
pub fn audit_to_store(error: AuditError) -> StoreError {
    StoreError::Backend(Box::new(error))
}

impl From<SignedCheckpoint> for Checkpoint {
    fn from(c: SignedCheckpoint) -> Checkpoint {
        Checkpoint {
            seq: c.seq,
            hash: c.hash,
            kid: c.kid,
            signature: c.signature,
            time_ms: c.time_ms,
        }
    }
}

impl From<Checkpoint> for SignedCheckpoint {
    fn from(c: Checkpoint) -> SignedCheckpoint {
        SignedCheckpoint {
            seq: c.seq,
            hash: c.hash,
            kid: c.kid,
            signature: c.signature,
            time_ms: c.time_ms,
        }
    }
}

impl From<AuditEntry> for RawRecord {
    fn from(e: AuditEntry) -> RawRecord {
        (e.seq, e.prev_hash, e.hash, e.body)
    }
}

/// The audit log: appends events to a [`Store`]'s chain, checkpoints it
/// under a [`CheckpointPolicy`], and verifies it. Holds no state of its own
/// beyond the store, so any number of instances may share one store.
pub struct AuditLog {
    store: Arc<dyn Store>,
    policy: CheckpointPolicy,
}

impl fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditLog")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    pub fn new(store: Arc<dyn Store>, policy: CheckpointPolicy) -> AuditLog {
        AuditLog { store, policy }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn policy(&self) -> CheckpointPolicy {
        self.policy
    }

    /// Appends `event` and, when `ring` is given and the policy says so,
    /// checkpoints the new head at the event's time. Blocks on the store's
    /// fsync and on the key device: call it off the async reactor.
    ///
    /// Returns the entry once it is durable. A checkpoint that then fails is
    /// logged as a warning and not returned as an error: the entry is already
    /// in the chain, and a caller told "failed" would log the event twice on
    /// retry. The next append or [`AuditLog::checkpoint_now`] finds the
    /// checkpoint still due and covers the entry.
    pub fn append(
        &self,
        event: &AuditEvent,
        ring: Option<&KeyRing>,
    ) -> Result<AuditEntry, AuditLogError> {
        let entry = self.store.append_audit(&mut |seq, prev_hash| {
            let (body, hash) = build_entry(seq, prev_hash, event).map_err(audit_to_store)?;
            Ok(AuditEntry {
                seq,
                prev_hash,
                hash,
                body,
            })
        })?;
        if let Some(ring) = ring
            && let Err(e) = self.checkpoint_if_due(ring, &entry, event.time_ms)
        {
            tracing::warn!(
                seq = entry.seq,
                error = %e,
                "audit entry appended but not checkpointed; retried at the next append or timer"
            );
        }
        Ok(entry)
    }

    fn checkpoint_if_due(
        &self,
        ring: &KeyRing,
        entry: &AuditEntry,
        now_ms: u64,
    ) -> Result<(), AuditLogError> {
        let (last_seq, last_time) = self
            .store
            .last_checkpoint()?
            .map_or((0, 0), |c| (c.seq, c.time_ms));
        if !self.policy.due(last_seq, last_time, entry.seq, now_ms) {
            return Ok(());
        }
        let signed = sign_checkpoint(ring, entry.seq, entry.hash, now_ms)?;
        self.put(signed).map(|_| ())
    }

    /// Checkpoints the chain's head at `now_ms` unless it already is; `None`
    /// when there was nothing to do. For a timer, so that the records after
    /// the last policy-triggered checkpoint do not stay protected by the
    /// chain alone while the log is quiet.
    pub fn checkpoint_now(
        &self,
        ring: &KeyRing,
        now_ms: u64,
    ) -> Result<Option<SignedCheckpoint>, AuditLogError> {
        let Some(head) = self.store.audit_last()? else {
            return Ok(None);
        };
        if let Some(last) = self.store.last_checkpoint()?
            && last.seq >= head.seq
        {
            return Ok(None);
        }
        let signed = sign_checkpoint(ring, head.seq, head.hash, now_ms)?;
        self.put(signed)
    }

    /// Stores a checkpoint; `None` if another writer checkpointed the same
    /// record first, which leaves that record just as covered.
    fn put(&self, signed: SignedCheckpoint) -> Result<Option<SignedCheckpoint>, AuditLogError> {
        match self.store.put_checkpoint(&Checkpoint::from(signed.clone())) {
            Ok(()) => Ok(Some(signed)),
            Err(StoreError::Exists { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// [`verify_store`] on this log's store.
    pub fn verify(
        &self,
        keys: &HashMap<String, EcPublicKey>,
    ) -> Result<VerifyReport, AuditLogError> {
        verify_store(self.store.as_ref(), keys)
    }
}

/// Verifies the chain and checkpoints held by `store` with [`verify_chain`],
/// reading the chain [`VERIFY_PAGE`] records at a time so memory stays
/// bounded however long it is. A record that cannot be read ends the check
/// as a [`Reason::Read`] finding; only failing to load the checkpoints is an
/// error.
///
/// The checkpoints are loaded before the chain is read: a writer appending
/// meanwhile then only adds records past the newest checkpoint seen, never a
/// checkpoint past the records read, which would look like truncation.
pub fn verify_store(
    store: &dyn Store,
    keys: &HashMap<String, EcPublicKey>,
) -> Result<VerifyReport, AuditLogError> {
    let mut checkpoints: Vec<SignedCheckpoint> = Vec::new();
    let mut from = 1;
    loop {
        let page = store.checkpoints(from, VERIFY_PAGE)?;
        let full = page.len() == VERIFY_PAGE;
        let Some(next) = page.last().and_then(|c| c.seq.checked_add(1)) else {
            break;
        };
        checkpoints.extend(page.into_iter().map(SignedCheckpoint::from));
        if !full {
            break;
        }
        from = next;
    }
    Ok(verify_chain(StorePages::new(store), &checkpoints, keys))
}

/// The chain of a store as an iterator, one [`Store::audit_range`] page at a
/// time. Ends after the first read error, which it yields.
struct StorePages<'a> {
    store: &'a dyn Store,
    /// The seq to read from next; `None` once the chain is exhausted.
    next: Option<u64>,
    page: std::vec::IntoIter<AuditEntry>,
}

impl<'a> StorePages<'a> {
    fn new(store: &'a dyn Store) -> StorePages<'a> {
        StorePages {
            store,
            next: Some(1),
            page: Vec::new().into_iter(),
        }
    }
}

impl Iterator for StorePages<'_> {
    type Item = Result<RawRecord, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(entry) = self.page.next() {
            return Some(Ok(entry.into()));
        }
        let from = self.next?;
        match self.store.audit_range(from, VERIFY_PAGE) {
            Ok(page) => {
                // Continue after the last seq returned, not after `from +
                // len`, so a gap in the chain is passed to the verifier
                // rather than skipped over or read twice.
                self.next = match page.last() {
                    Some(last) if page.len() == VERIFY_PAGE => last.seq.checked_add(1),
                    _ => None,
                };
                self.page = page.into_iter();
                self.page.next().map(|e| Ok(e.into()))
            }
            Err(e) => {
                self.next = None;
                Some(Err(e))
            }
        }
    }
}

impl VerifyReport {
    /// The report as JSON, as `signet audit verify --json` prints it. Hashes
    /// are lowercase hex; reasons are their display text.
    pub fn to_json(&self) -> Value {
        let finding =
            |b: &Broken| serde_json::json!({ "seq": b.seq, "reason": b.reason.to_string() });
        serde_json::json!({
            "intact": self.is_intact(),
            "records": self.records,
            "last_seq": self.last_seq,
            "last_hash": hex(&self.last_hash),
            "checkpoints": self.checkpoints,
            "checkpoints_verified": self.checkpoints_verified,
            "covered_seq": self.covered_seq,
            "first_broken": self.first_broken.as_ref().map(finding),
            "findings": self.findings.iter().map(finding).collect::<Vec<_>>(),
            "findings_omitted": self.findings_omitted,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{DeviceAttributes, KeyBackend, Kid, SharedSecret, StoredKey, key_label};
    use p256::ecdsa::SigningKey;
    use p256::ecdsa::signature::Signer as _;
    use serde_json::json;
    use std::sync::Arc;

    const T0: u64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

    struct TestSigner {
        key: SigningKey,
        kid: String,
        public: EcPublicKey,
    }

    fn test_signer(seed: u8) -> TestSigner {
        let secret = p256::SecretKey::from_slice(&[seed; 32]).unwrap();
        let public = EcPublicKey::from_p256(&secret.public_key());
        TestSigner {
            key: SigningKey::from_slice(&[seed; 32]).unwrap(),
            kid: Kid::of(&public).to_string(),
            public,
        }
    }

    impl TestSigner {
        fn keys(&self) -> HashMap<String, EcPublicKey> {
            HashMap::from([(self.kid.clone(), self.public.clone())])
        }

        fn checkpoint(&self, seq: u64, hash: [u8; 32], time_ms: u64) -> SignedCheckpoint {
            let sig: p256::ecdsa::Signature =
                self.key.sign(&checkpoint_message(seq, &hash, time_ms));
            let raw = EcdsaSignature::from_raw(&sig.to_bytes()).unwrap();
            SignedCheckpoint {
                seq,
                hash,
                kid: self.kid.clone(),
                signature: raw.raw().to_vec(),
                time_ms,
            }
        }
    }

    fn event(seq: u64) -> AuditEvent {
        AuditEvent::new(
            T0 + seq * 1000,
            "CN=core-banking.example,O=Example Bank",
            "credential.registered",
            format!("cred-{seq}"),
        )
        .with_detail(json!({"tier": seq % 4, "flags": ["uv", "be"]}))
    }

    fn record(seq: u64, prev_hash: [u8; 32]) -> RawRecord {
        let (body, hash) = build_entry(seq, prev_hash, &event(seq)).unwrap();
        (seq, prev_hash, hash, body)
    }

    fn build_chain(n: u64) -> Vec<RawRecord> {
        let mut records = Vec::new();
        let mut prev = GENESIS_PREV_HASH;
        for seq in 1..=n {
            let r = record(seq, prev);
            prev = r.2;
            records.push(r);
        }
        records
    }

    /// 1000 records, a checkpoint every 100.
    fn fixture() -> (Vec<RawRecord>, Vec<SignedCheckpoint>, TestSigner) {
        let signer = test_signer(7);
        let records = build_chain(1000);
        let checkpoints = records
            .iter()
            .filter(|r| r.0 % 100 == 0)
            .map(|r| signer.checkpoint(r.0, r.2, T0 + r.0 * 1000 + 1))
            .collect();
        (records, checkpoints, signer)
    }

    fn verify(
        records: &[RawRecord],
        checkpoints: &[SignedCheckpoint],
        keys: &HashMap<String, EcPublicKey>,
    ) -> VerifyReport {
        verify_chain(
            records.iter().cloned().map(Ok::<_, String>),
            checkpoints,
            keys,
        )
    }

    fn first(report: &VerifyReport) -> &Broken {
        report.first_broken.as_ref().expect("a finding")
    }

    // ---- canonical encoding ----

    fn golden_event() -> AuditEvent {
        AuditEvent::new(
            T0,
            "CN=core-banking.example,O=Example Bank",
            "credential.registered",
            "AAECAwQFBgcICQoLDA0ODw",
        )
        .with_detail(json!({
            "tier": 2,
            "aaguid": "08987058-cadc-4b81-b6e1-30de50dcbe96",
            "flags": ["uv", "be"],
            "note": "é €\n\t\"\\/\u{1}\u{1f}\u{7f}😀",
            "count": -42,
            "ok": true,
            "none": null,
        }))
    }

    // Computed independently from the module doc (Python: json.dumps with
    // sort_keys, ensure_ascii=False, separators=(",", ":"), then hashlib),
    // so a change here means the format changed: bump FORMAT_VERSION.
    // The body reads:
    // {"actor":"CN=core-banking.example,O=Example Bank","detail":{"aaguid":"08987058-cadc-4b81-b6e1-30de50dcbe96","count":-42,"flags":["uv","be"],"none":null,"note":"é €\n\t\"\\/\u0001\u001f<DEL>😀","ok":true,"tier":2},"event":"credential.registered","subject":"AAECAwQFBgcICQoLDA0ODw","time_ms":1767225600000,"v":1}
    const GOLDEN_BODY_HEX: &str = "7b226163746f72223a22434e3d636f72652d62616e6b696e672e6578616d706c652c4f3d4578616d706c652042616e6b222c2264657461696c223a7b22616167756964223a2230383938373035382d636164632d346238312d623665312d333064653530646362653936222c22636f756e74223a2d34322c22666c616773223a5b227576222c226265225d2c226e6f6e65223a6e756c6c2c226e6f7465223a22c3a920e282ac5c6e5c745c225c5c2f5c75303030315c75303031667ff09f9880222c226f6b223a747275652c2274696572223a327d2c226576656e74223a2263726564656e7469616c2e72656769737465726564222c227375626a656374223a2241414543417751464267634943516f4c4441304f4477222c2274696d655f6d73223a313736373232353630303030302c2276223a317d";
    const GOLDEN_HASH_HEX: &str =
        "b7bdbcb2bf45f8f9952884eb3de5ba77b95f16b25aefab23fd655e2e4d4cca88";
    const GOLDEN_CHECKPOINT_MESSAGE_HEX: &str = "7369676e65742d61756469742d636865636b706f696e742d7631000000000000000001b7bdbcb2bf45f8f9952884eb3de5ba77b95f16b25aefab23fd655e2e4d4cca880000019b76daabe8";

    #[test]
    fn encoding_and_hashes_match_the_golden_bytes() {
        let (body, hash) = build_entry(1, GENESIS_PREV_HASH, &golden_event()).unwrap();
        assert_eq!(hex(&body), GOLDEN_BODY_HEX);
        assert_eq!(hex(&hash), GOLDEN_HASH_HEX);
        assert_eq!(
            hex(&checkpoint_message(1, &hash, T0 + 1000)),
            GOLDEN_CHECKPOINT_MESSAGE_HEX
        );
        assert_eq!(checkpoint_message(1, &hash, T0).len(), 75);
        assert_eq!(decode_body(&body).unwrap(), golden_event());
    }

    #[test]
    fn members_sort_by_utf16_code_units_as_in_rfc_8785() {
        // RFC 8785 §3.2.3's example: UTF-16 order puts U+1F600 (a surrogate
        // pair, 0xD83D...) before U+FB33, unlike UTF-8 or code point order.
        let detail = json!({
            "\u{20ac}": "Euro Sign",
            "\r": "Carriage Return",
            "\u{fb33}": "Hebrew Letter Dalet With Dagesh",
            "1": "One",
            "\u{1f600}": "Emoji: Grinning Face",
            "\u{80}": "Control",
            "\u{f6}": "Latin Small Letter O With Diaeresis",
        });
        let mut out = Vec::new();
        write_value(&mut out, &detail, MAX_DETAIL_DEPTH).unwrap();
        let names: Vec<String> = {
            let text = String::from_utf8(out).unwrap();
            let mut names = Vec::new();
            let mut rest = text.as_str();
            while let Some(i) = rest.find("\":\"") {
                let start = rest[..i].rfind('"').unwrap();
                names.push(rest[start + 1..i].to_string());
                rest = &rest[i + 3..];
                rest = &rest[rest.find('"').unwrap() + 1..];
            }
            names
        };
        assert_eq!(
            names,
            [
                "\\r",
                "1",
                "\u{80}",
                "\u{f6}",
                "\u{20ac}",
                "\u{1f600}",
                "\u{fb33}"
            ]
        );
    }

    #[test]
    fn strings_escape_as_jcs_does() {
        // serde_json escapes exactly as ECMAScript's JSON.stringify (and so
        // JCS) for valid Unicode; compare every ASCII character and a few others.
        let mut all: String = (0u8..0x80).map(char::from).collect();
        all.push_str("é€\u{2028}\u{fffd}😀");
        let mut out = Vec::new();
        write_string(&mut out, &all);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            serde_json::to_string(&all).unwrap()
        );
    }

    #[test]
    fn encoding_refuses_values_outside_the_subset() {
        let with = |detail: Value| encode_body(&event(1).with_detail(detail));
        let max = MAX_SAFE_INTEGER as i64;
        assert!(with(json!(max)).is_ok());
        assert!(with(json!(-max)).is_ok());
        assert!(with(json!(max + 1)).is_err());
        assert!(with(json!(-max - 1)).is_err());
        assert!(with(json!(u64::MAX)).is_err());
        assert!(with(json!(1.5)).is_err());
        assert!(with(json!(1.0)).is_err());
        let nested = |depth: usize| (0..depth).fold(json!(0), |v, _| json!([v]));
        assert!(with(nested(MAX_DETAIL_DEPTH)).is_ok());
        assert!(with(nested(MAX_DETAIL_DEPTH + 1)).is_err());
        assert!(with(json!("x".repeat(MAX_BODY_LEN))).is_err());
        assert!(with(json!(vec!["abcdefgh"; MAX_BODY_LEN / 8])).is_err());

        let mut e = event(1);
        e.time_ms = MAX_SAFE_INTEGER + 1;
        assert!(encode_body(&e).is_err());
        for name in ["", "Credential.registered", "credential registered", "é"] {
            let mut e = event(1);
            e.event = name.into();
            assert!(encode_body(&e).is_err(), "{name:?}");
        }
        let mut e = event(1);
        e.event = "a".repeat(MAX_EVENT_LEN + 1);
        assert!(encode_body(&e).is_err());
        let mut e = event(1);
        e.actor = String::new();
        assert!(encode_body(&e).is_err());
        let mut e = event(1);
        e.subject = "s".repeat(MAX_SUBJECT_LEN + 1);
        assert!(encode_body(&e).is_err());
        let mut e = event(1);
        e.subject = String::new();
        assert!(encode_body(&e).is_ok());
    }

    #[test]
    fn decoding_refuses_anything_but_the_canonical_body() {
        let body = String::from_utf8(encode_body(&event(3)).unwrap()).unwrap();
        assert!(decode_body(body.as_bytes()).is_ok());
        let variants = [
            body.replace(",\"event\"", ", \"event\""),
            body.replace("\"v\":1}", "\"v\":1}\n"),
            body.replace("{\"actor\"", "{\"v\":1,\"actor\"")
                .replace(",\"v\":1}", "}"),
            body.replace("\"v\":1}", "\"v\":1,\"extra\":0}"),
            body.replace("\"v\":1}", "\"v\":1,\"v\":1}"),
            body.replace("\"actor\":", "\"actor\":\"x\",\"actor\":"),
            body.replace("\"tier\":3", "\"tier\":3.0"),
            body.replace("\"tier\":3", "\"tier\":3e0"),
            body.replace("\"cred-3\"", "\"cred\\u002d3\""),
            body.replace(",\"v\":1}", "}"),
            body.replace(",\"detail\":{\"flags\":[\"uv\",\"be\"],\"tier\":3}", ""),
            "[]".to_string(),
            "not json".to_string(),
        ];
        for variant in &variants {
            assert_ne!(variant, &body);
            assert!(decode_body(variant.as_bytes()).is_err(), "{variant}");
        }
        let v2 = body.replace("\"v\":1}", "\"v\":2}");
        let err = decode_body(v2.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("unsupported format version 2"), "{err}");
    }

    #[test]
    fn build_entry_refuses_impossible_positions() {
        assert!(build_entry(0, GENESIS_PREV_HASH, &event(1)).is_err());
        assert!(build_entry(1, [1; 32], &event(1)).is_err());
        assert!(build_entry(2, [1; 32], &event(2)).is_ok());
    }

    // ---- chain verification ----

    #[test]
    fn chain_of_1000_verifies_clean() {
        let (records, checkpoints, signer) = fixture();
        let report = verify(&records, &checkpoints, &signer.keys());
        assert!(report.is_intact(), "{report}");
        assert_eq!(report.records, 1000);
        assert_eq!(report.checkpoints, 10);
        assert_eq!(report.checkpoints_verified, 10);
        assert_eq!(report.covered_seq, 1000);
        assert_eq!(report.last_seq, 1000);
        assert_eq!(report.last_hash, records[999].2);
        assert!(report.findings.is_empty());
        let text = report.to_string();
        assert!(text.contains("records: 1000, last seq 1000"), "{text}");
        assert!(
            text.contains("10 of 10 verified, covering records up to 1000"),
            "{text}"
        );
        assert!(text.ends_with("intact"), "{text}");
    }

    #[test]
    fn records_stream_without_being_collected() {
        let signer = test_signer(7);
        let mut prev = GENESIS_PREV_HASH;
        let lazy = (1..=1000u64).map(move |seq| {
            let r = record(seq, prev);
            prev = r.2;
            Ok::<_, String>(r)
        });
        let head = build_chain(1000)[999].2;
        let checkpoints = [signer.checkpoint(1000, head, T0)];
        let report = verify_chain(lazy, &checkpoints, &signer.keys());
        assert!(report.is_intact(), "{report}");
        assert_eq!(report.checkpoints_verified, 1);
    }

    #[test]
    fn an_empty_chain_is_intact_unless_a_checkpoint_says_otherwise() {
        let signer = test_signer(7);
        let report = verify(&[], &[], &signer.keys());
        assert!(report.is_intact());
        assert_eq!((report.last_seq, report.last_hash), (0, GENESIS_PREV_HASH));

        let checkpoints = [signer.checkpoint(1, [9; 32], T0)];
        let report = verify(&[], &checkpoints, &signer.keys());
        assert_eq!(first(&report).seq, 1);
        assert!(matches!(
            first(&report).reason,
            Reason::Truncated {
                checkpoint_seq: 1,
                last_seq: 0,
                ..
            }
        ));
    }

    #[test]
    fn an_altered_body_byte_is_reported_alone() {
        let (mut records, checkpoints, signer) = fixture();
        records[436].3[10] ^= 1; // "CN=..." becomes "BN=...": still a canonical body
        let report = verify(&records, &checkpoints, &signer.keys());
        assert_eq!(report.findings.len(), 1, "{report}");
        assert_eq!(first(&report).seq, 437);
        assert!(
            matches!(first(&report).reason, Reason::Hash { stored, .. } if stored == records[436].2)
        );
        assert!(report.to_string().contains("the record was altered"));
        assert_eq!(report.checkpoints_verified, 10);
    }

    #[test]
    fn an_altered_body_at_a_checkpoint_also_fails_the_checkpoint() {
        let (mut records, checkpoints, signer) = fixture();
        records[499].3[10] ^= 1;
        let report = verify(&records, &checkpoints, &signer.keys());
        let reasons: Vec<_> = report.findings.iter().map(|b| (b.seq, &b.reason)).collect();
        assert_eq!(reasons.len(), 2, "{report}");
        assert!(matches!(reasons[0], (500, Reason::Hash { .. })));
        assert!(matches!(reasons[1], (500, Reason::CheckpointHash { .. })));
    }

    #[test]
    fn a_rewritten_tail_is_caught_by_the_next_checkpoint() {
        // Someone with write access but no key alters record 437 and
        // recomputes every later hash: the links hold, the checkpoints do not.
        let (mut records, checkpoints, signer) = fixture();
        let mut altered = event(437);
        altered.actor = "CN=someone-else".into();
        let mut prev = records[435].2;
        for seq in 437..=1000u64 {
            let e = if seq == 437 {
                altered.clone()
            } else {
                event(seq)
            };
            let (body, hash) = build_entry(seq, prev, &e).unwrap();
            records[seq as usize - 1] = (seq, prev, hash, body);
            prev = hash;
        }
        let report = verify(&records, &checkpoints, &signer.keys());
        assert_eq!(first(&report).seq, 500, "{report}");
        assert!(matches!(
            first(&report).reason,
            Reason::CheckpointHash { .. }
        ));
        assert_eq!(report.findings.len(), 6);
        assert_eq!(report.checkpoints_verified, 4);
        assert_eq!(report.covered_seq, 400);
    }

    #[test]
    fn an_altered_prev_hash_is_reported() {
        let (mut records, checkpoints, signer) = fixture();
        records[436].1[0] ^= 1;
        let report = verify(&records, &checkpoints, &signer.keys());
        assert_eq!(first(&report).seq, 437, "{report}");
        assert!(
            matches!(first(&report).reason, Reason::PrevHash { expected, .. } if expected == records[435].2)
        );
        // The record's own hash covered the old prev_hash too.
        assert!(matches!(
            report.findings[1],
            Broken {
                seq: 437,
                reason: Reason::Hash { .. }
            }
        ));
        assert_eq!(report.findings.len(), 2);
    }

    #[test]
    fn a_dropped_record_is_a_sequence_gap() {
        let (mut records, checkpoints, signer) = fixture();
        records.remove(436);
        let report = verify(&records, &checkpoints, &signer.keys());
        assert_eq!(
            report.findings,
            vec![Broken {
                seq: 437,
                reason: Reason::Sequence {
                    expected: 437,
                    found: 438
                }
            }],
            "{report}"
        );
        assert_eq!(report.records, 999);
    }

    #[test]
    fn a_dropped_checkpointed_record_fails_its_checkpoint_too() {
        let (mut records, checkpoints, signer) = fixture();
        records.remove(299);
        let report = verify(&records, &checkpoints, &signer.keys());
        assert_eq!(report.findings.len(), 2, "{report}");
        assert!(matches!(
            first(&report).reason,
            Reason::Sequence {
                expected: 300,
                found: 301
            }
        ));
        assert!(matches!(
            report.findings[1],
            Broken {
                seq: 300,
                reason: Reason::CheckpointRecordMissing { .. }
            }
        ));
        assert_eq!(report.checkpoints_verified, 9);
    }

    #[test]
    fn reordered_records_are_reported_where_the_order_breaks() {
        let (mut records, checkpoints, signer) = fixture();
        records.swap(436, 437);
        let report = verify(&records, &checkpoints, &signer.keys());
        assert_eq!(
            first(&report),
            &Broken {
                seq: 437,
                reason: Reason::Sequence {
                    expected: 437,
                    found: 438
                }
            },
            "{report}"
        );
    }

    #[test]
    fn an_altered_checkpoint_signature_is_reported() {
        let (records, mut checkpoints, signer) = fixture();
        checkpoints[2].signature[5] ^= 1;
        let report = verify(&records, &checkpoints, &signer.keys());
        assert_eq!(
            report.findings,
            vec![Broken {
                seq: 300,
                reason: Reason::CheckpointSignature {
                    kid: signer.kid.clone()
                }
            }],
            "{report}"
        );
        assert_eq!(report.checkpoints_verified, 9);

        // The time is signed too.
        checkpoints[2] = signer.checkpoint(300, records[299].2, T0);
        checkpoints[2].time_ms += 1;
        let report = verify(&records, &checkpoints, &signer.keys());
        assert!(matches!(
            first(&report),
            Broken {
                seq: 300,
                reason: Reason::CheckpointSignature { .. }
            }
        ));

        checkpoints[2].signature.truncate(63);
        let report = verify(&records, &checkpoints, &signer.keys());
        assert!(matches!(
            first(&report).reason,
            Reason::CheckpointSignature { .. }
        ));
    }

    #[test]
    fn a_checkpoint_by_an_unknown_key_is_a_failure() {
        let (records, mut checkpoints, signer) = fixture();
        let stranger = test_signer(9);
        checkpoints[3] = stranger.checkpoint(400, records[399].2, T0);
        let report = verify(&records, &checkpoints, &signer.keys());
        assert_eq!(
            first(&report),
            &Broken {
                seq: 400,
                reason: Reason::CheckpointUnknownKey {
                    kid: stranger.kid.clone()
                }
            },
            "{report}"
        );
        assert!(report.to_string().contains("unknown key"));

        // A stranger's signature under a known kid fails as a bad signature.
        checkpoints[3].kid = signer.kid.clone();
        let report = verify(&records, &checkpoints, &signer.keys());
        assert!(matches!(
            first(&report),
            Broken {
                seq: 400,
                reason: Reason::CheckpointSignature { .. }
            }
        ));
    }

    #[test]
    fn a_checkpoint_over_another_hash_is_reported() {
        let (records, mut checkpoints, signer) = fixture();
        checkpoints[4] = signer.checkpoint(500, records[498].2, T0);
        let report = verify(&records, &checkpoints, &signer.keys());
        assert_eq!(
            report.findings,
            vec![Broken {
                seq: 500,
                reason: Reason::CheckpointHash {
                    kid: signer.kid.clone(),
                    signed: records[498].2,
                    chain: records[499].2,
                }
            }],
            "{report}"
        );
    }

    #[test]
    fn a_truncated_chain_is_caught_by_a_later_checkpoint() {
        let (records, checkpoints, signer) = fixture();
        let report = verify(&records[..950], &checkpoints, &signer.keys());
        assert_eq!(
            report.findings,
            vec![Broken {
                seq: 951,
                reason: Reason::Truncated {
                    kid: signer.kid.clone(),
                    checkpoint_seq: 1000,
                    last_seq: 950,
                }
            }],
            "{report}"
        );
        assert_eq!(report.covered_seq, 900);
        assert!(
            report
                .to_string()
                .contains("records 901..=950 not yet covered")
        );
    }

    #[test]
    fn a_non_canonical_body_with_a_matching_hash_is_reported() {
        let (mut records, checkpoints, signer) = fixture();
        let body = String::from_utf8(records[0].3.clone())
            .unwrap()
            .replace(",\"v\"", ", \"v\"");
        let hash = entry_hash(1, &GENESIS_PREV_HASH, body.as_bytes());
        records[0] = (1, GENESIS_PREV_HASH, hash, body.into_bytes());
        records[1].1 = hash;
        records[1].2 = entry_hash(2, &hash, &records[1].3);
        let report = verify(&records[..2], &checkpoints[..0], &signer.keys());
        assert_eq!(report.findings.len(), 1, "{report}");
        assert!(matches!(&first(&report).reason, Reason::Body(m) if m.contains("canonical")));
    }

    #[test]
    fn an_unreadable_record_stops_verification() {
        let (records, checkpoints, signer) = fixture();
        let items = records.iter().cloned().map(|r| {
            if r.0 == 600 {
                Err("checksum mismatch")
            } else {
                Ok(r)
            }
        });
        let report = verify_chain(items, &checkpoints, &signer.keys());
        assert_eq!(report.records, 599);
        assert_eq!(
            report.findings,
            vec![Broken {
                seq: 600,
                reason: Reason::Read("checksum mismatch".into())
            }],
            "{report}"
        );
        assert_eq!(report.checkpoints_verified, 5);
    }

    #[test]
    fn findings_are_bounded() {
        let (mut records, checkpoints, signer) = fixture();
        for r in &mut records {
            r.3[10] ^= 1;
        }
        let report = verify(&records, &checkpoints, &signer.keys());
        assert_eq!(report.findings.len(), MAX_FINDINGS);
        assert_eq!(report.findings_omitted, 1010 - MAX_FINDINGS as u64);
        assert_eq!(first(&report).seq, 1);
        let text = report.to_string();
        assert_eq!(
            text.lines()
                .filter(|l| l.starts_with("broken: seq"))
                .count(),
            MAX_FINDINGS
        );
        assert!(
            text.contains("broken: 910 more findings not listed"),
            "{text}"
        );
        assert!(text.ends_with("first broken record: seq 1"), "{text}");
    }

    // ---- checkpoint policy ----

    #[test]
    fn checkpoints_are_due_by_count_or_by_time() {
        let policy = CheckpointPolicy {
            every_records: 100,
            every_ms: 60_000,
        };
        assert!(policy.due(0, 0, 1, T0)); // the first record is anchored at once
        assert!(!policy.due(100, T0, 150, T0 + 59_999));
        assert!(policy.due(100, T0, 150, T0 + 60_000));
        assert!(policy.due(100, T0, 200, T0 + 1));
        assert!(!policy.due(100, T0, 100, T0 + 600_000)); // nothing new to certify
        assert!(!policy.due(100, T0, 150, T0 - 5)); // clock stepped back

        let count_only = CheckpointPolicy {
            every_records: 10,
            every_ms: 0,
        };
        assert!(!count_only.due(0, 0, 9, T0));
        assert!(count_only.due(0, 0, 10, T0));
        let never = CheckpointPolicy {
            every_records: 0,
            every_ms: 0,
        };
        assert!(!never.due(0, 0, 1_000_000, T0));
    }

    // ---- signing through a KeyRing ----

    /// A key device that is only an in-memory P-256 key per role, to run
    /// the KeyRing signing path without SoftHSM.
    struct MemoryBackend {
        keys: Vec<(StoredKey, SigningKey)>,
    }

    impl MemoryBackend {
        fn new(roles: &[(Role, u8)]) -> MemoryBackend {
            let keys = roles
                .iter()
                .map(|&(role, seed)| {
                    let signer = test_signer(seed);
                    let stored = StoredKey {
                        kid: Kid::of(&signer.public),
                        role,
                        version: 1,
                        label: key_label(role, 1),
                        retired: false,
                        public: signer.public,
                        attributes: DeviceAttributes::default(),
                    };
                    (stored, signer.key)
                })
                .collect();
            MemoryBackend { keys }
        }
    }

    impl KeyBackend for MemoryBackend {
        fn describe(&self) -> String {
            "in-memory test keys".into()
        }
        fn list(&self) -> Result<Vec<StoredKey>, KeyError> {
            Ok(self.keys.iter().map(|(k, _)| k.clone()).collect())
        }
        fn generate(&self, _: Role, _: u32) -> Result<StoredKey, KeyError> {
            Err(KeyError::Io("not supported".into()))
        }
        fn sign_digest(&self, kid: &Kid, digest: &[u8; 32]) -> Result<EcdsaSignature, KeyError> {
            use p256::ecdsa::signature::hazmat::PrehashSigner;
            let (_, key) = self
                .keys
                .iter()
                .find(|(k, _)| &k.kid == kid)
                .ok_or(KeyError::KeyNotFound(*kid))?;
            let sig: p256::ecdsa::Signature = key
                .sign_prehash(digest)
                .map_err(|e| KeyError::Io(e.to_string()))?;
            EcdsaSignature::from_raw(&sig.to_bytes())
        }
        fn ecdh(&self, _: &Kid, _: &EcPublicKey) -> Result<SharedSecret, KeyError> {
            Err(KeyError::Io("not supported".into()))
        }
        fn retire(&self, _: &Kid) -> Result<(), KeyError> {
            Err(KeyError::Io("not supported".into()))
        }
        fn ping(&self) -> Result<(), KeyError> {
            Ok(())
        }
    }

    #[test]
    fn checkpoints_signed_through_the_key_ring_verify() {
        let ring = KeyRing::new(Arc::new(MemoryBackend::new(&[
            (Role::TokenSigning, 3),
            (Role::AuditCheckpoint, 4),
        ])));
        let keys = checkpoint_keys(&ring.list().unwrap());
        assert_eq!(
            keys.len(),
            1,
            "only audit-checkpoint keys verify checkpoints"
        );
        assert!(keys.contains_key(&test_signer(4).kid));

        let records = build_chain(250);
        let policy = CheckpointPolicy {
            every_records: 100,
            every_ms: 0,
        };
        let mut checkpoints: Vec<SignedCheckpoint> = Vec::new();
        for r in &records {
            let (last_seq, last_time) = checkpoints.last().map_or((0, 0), |c| (c.seq, c.time_ms));
            if policy.due(last_seq, last_time, r.0, T0 + r.0) {
                checkpoints.push(sign_checkpoint(&ring, r.0, r.2, T0 + r.0).unwrap());
            }
        }
        assert_eq!(
            checkpoints.iter().map(|c| c.seq).collect::<Vec<_>>(),
            [100, 200]
        );
        assert_eq!(checkpoints[0].signature.len(), 64);
        let report = verify(&records, &checkpoints, &keys);
        assert!(report.is_intact(), "{report}");
        assert_eq!(report.checkpoints_verified, 2);
        assert!(sign_checkpoint(&ring, 0, [0; 32], T0).is_err());

        // The token-signing key is not a checkpoint key, even on the same ring.
        let token_key = test_signer(3);
        let forged = token_key.checkpoint(250, records[249].2, T0);
        let report = verify(&records, &[forged], &keys);
        assert!(matches!(
            first(&report).reason,
            Reason::CheckpointUnknownKey { .. }
        ));
    }

    // ---- the log over a store ----

    fn sled_log(every_records: u64) -> (tempfile::TempDir, AuditLog) {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::SledStore::open(&dir.path().join("store")).unwrap();
        let policy = CheckpointPolicy {
            every_records,
            every_ms: 0,
        };
        (dir, AuditLog::new(Arc::new(store), policy))
    }

    fn checkpoint_ring() -> KeyRing {
        KeyRing::new(Arc::new(MemoryBackend::new(&[(Role::AuditCheckpoint, 4)])))
    }

    #[test]
    fn the_log_checkpoints_by_policy_and_on_demand() {
        let (_dir, log) = sled_log(10);
        let ring = checkpoint_ring();
        for seq in 1..=25 {
            let entry = log.append(&event(seq), Some(&ring)).unwrap();
            assert_eq!(entry.seq, seq);
        }
        let seqs = |log: &AuditLog| -> Vec<u64> {
            log.store()
                .checkpoints(1, 100)
                .unwrap()
                .iter()
                .map(|c| c.seq)
                .collect()
        };
        assert_eq!(seqs(&log), [10, 20]);

        let tail = log.checkpoint_now(&ring, T0 + 99_000).unwrap().unwrap();
        assert_eq!((tail.seq, tail.time_ms), (25, T0 + 99_000));
        assert!(log.checkpoint_now(&ring, T0 + 99_001).unwrap().is_none());
        assert_eq!(seqs(&log), [10, 20, 25]);

        let keys = checkpoint_keys(&ring.list().unwrap());
        let report = log.verify(&keys).unwrap();
        assert!(report.is_intact(), "{report}");
        assert_eq!(report.records, 25);
        assert_eq!(report.checkpoints_verified, 3);
        assert_eq!(report.covered_seq, 25);
        assert_eq!(report.to_json()["intact"], true);

        // Without the key the same checkpoints are findings.
        let report = log.verify(&HashMap::new()).unwrap();
        assert_eq!(first(&report).seq, 10);
        assert_eq!(report.to_json()["first_broken"]["seq"], 10);
    }

    #[test]
    fn checkpoint_now_on_an_empty_log_does_nothing() {
        let (_dir, log) = sled_log(10);
        assert!(
            log.checkpoint_now(&checkpoint_ring(), T0)
                .unwrap()
                .is_none()
        );
        let report = log.verify(&HashMap::new()).unwrap();
        assert!(report.is_intact());
        assert_eq!(report.records, 0);
    }

    #[test]
    fn a_refused_event_is_an_audit_error_and_appends_nothing() {
        let (_dir, log) = sled_log(1);
        let mut bad = event(1);
        bad.actor.clear();
        let err = log.append(&bad, None).unwrap_err();
        assert!(
            matches!(err, AuditLogError::Audit(AuditError::InvalidEvent(_))),
            "{err:?}"
        );
        assert!(log.store().audit_last().unwrap().is_none());

        // A store error that is not a wrapped audit error stays a store error.
        let err = AuditLogError::from(StoreError::Backend("disk on fire".into()));
        assert!(matches!(err, AuditLogError::Store(_)), "{err:?}");
    }

    #[test]
    fn an_append_whose_checkpoint_fails_still_succeeds() {
        let (_dir, log) = sled_log(1);
        // No audit-checkpoint key: signing fails after the entry is durable.
        let ring = KeyRing::new(Arc::new(MemoryBackend::new(&[(Role::TokenSigning, 3)])));
        let entry = log.append(&event(1), Some(&ring)).unwrap();
        assert_eq!(entry.seq, 1);
        assert!(log.store().last_checkpoint().unwrap().is_none());
        assert!(matches!(
            log.checkpoint_now(&ring, T0),
            Err(AuditLogError::Audit(AuditError::Key(_)))
        ));
        // The next append with a working key covers the pending record too.
        let ring = checkpoint_ring();
        log.append(&event(2), Some(&ring)).unwrap();
        assert_eq!(log.store().last_checkpoint().unwrap().unwrap().seq, 2);
    }

    #[test]
    fn checkpoints_convert_to_and_from_the_store_record() {
        let signer = test_signer(7);
        let signed = signer.checkpoint(3, [9; 32], T0);
        let stored = Checkpoint::from(signed.clone());
        assert_eq!(stored.kid, signed.kid);
        assert_eq!(SignedCheckpoint::from(stored), signed);
    }
}
