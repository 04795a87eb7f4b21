//! `signet evidence`: offline verification of approval evidence, for
//! auditors and dispute handling, with no service, store or key device.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use serde_json::{Value, json};
use signet::evidence::{self, EvidenceError, LogRecord};

/// A file of records is read up to this size.
const FILE_MAX: u64 = 16 * 1024 * 1024;

#[derive(Subcommand)]
pub enum EvidenceCommand {
    /// Verify approval evidence offline. FILE is either a signet receipt
    /// (COSE_Sign1 bytes, their base64url text, or `{"receipt": "..."}`),
    /// checked with the approval-countersign key (--key or --cert) and then
    /// the assertion it vouches for; or verification-log records (one JSON
    /// object, or one per line), checked by their own public key, the
    /// challenge re-derived from the transaction and the nonce, and user
    /// presence. signet's own verification-log lines (`"format":
    /// "signet-verification-log/1"`, with the transaction id, RP ID and
    /// time; their RP ID is always checked) and records in Airlock IAM's
    /// format (S, T, CAD, CCD, N, P) are recognised, mixed in one file if
    /// need be, so a bank migrating from Airlock verifies its archive with
    /// this tool too. The logs hold the transactions (payees, amounts):
    /// handle them as such. `-` reads stdin. Exit 0: valid; 1: invalid
    /// (the line and member at fault named); 2: usage, or FILE
    /// unreadable.
    #[command(after_help = "Examples:\n  \
        signet evidence verify approval.json\n  \
        signet evidence verify --rp-id bank.example --json approvals.log\n  \
        signet evidence verify verification-log.jsonl\n  \
        signet evidence verify --key approval-countersign.pem receipt.cose")]
    Verify {
        file: PathBuf,
        /// The approval-countersign public key (SPKI PEM, as `signet hsm
        /// export --format pem` prints it), for receipts.
        #[arg(long, value_name = "PEM", conflicts_with = "cert")]
        key: Option<PathBuf>,
        /// A certificate of the approval-countersign key (PEM), for receipts.
        #[arg(long, value_name = "PEM")]
        cert: Option<PathBuf>,
        /// Also check that the authenticator data names this RP ID (a
        /// signet line's is always checked against its own `rp`, which must
        /// then be this one).
        #[arg(long, value_name = "ID")]
        rp_id: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(command: EvidenceCommand) -> ExitCode {
    let EvidenceCommand::Verify {
        file,
        key,
        cert,
        rp_id,
        json,
    } = command;
    let usage = |e: String| {
        eprintln!("signet: {e}");
        ExitCode::from(2)
    };
    let bytes = match read(&file) {
        Ok(b) => b,
        Err(e) => return usage(e),
    };
    if let Some(receipt) = receipt_bytes(&bytes) {
        let key = match (key, cert) {
            (Some(k), None) => countersign_key(&k, false),
            (None, Some(c)) => countersign_key(&c, true),
            _ => Err(
                "a receipt is verified with the approval-countersign key: give --key or --cert"
                    .into(),
            ),
        };
        let key = match key {
            Ok(k) => k,
            Err(e) => return usage(e),
        };
        return report_receipt(
            signet::receipt::verify(&receipt, &key),
            rp_id.as_deref(),
            json,
        );
    }
    let Ok(text) = String::from_utf8(bytes) else {
        return usage(format!(
            "{}: neither a receipt nor UTF-8 text",
            file.display()
        ));
    };
    let results = verify_all(&text, rp_id.as_deref());
    let valid = !results.is_empty() && results.iter().all(|(_, r)| r.is_ok());
    if json {
        let records: Vec<Value> = results
            .iter()
            .map(|(line, r)| match r {
                Ok(v) => {
                    let mut o = json!({ "line": line, "valid": true });
                    if let (Value::Object(o), Ok(Value::Object(v))) =
                        (&mut o, serde_json::to_value(v))
                    {
                        o.extend(v);
                    }
                    o
                }
                Err(e) => json!({
                    "line": line, "valid": false, "field": e.field, "reason": e.reason,
                }),
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "valid": valid, "records": records }))
                .unwrap_or_default()
        );
    } else {
        if results.is_empty() {
            println!("invalid: {}: holds no record", file.display());
        }
        for (line, r) in &results {
            match r {
                Ok(v) => println!(
                    "line {line}: valid {}: transaction {}{} approved on {} ({}, user \
                     {}verified, counter {}){}, key sha256 {}",
                    v.format,
                    v.transaction_id
                        .as_ref()
                        .map(|id| format!("{id} "))
                        .unwrap_or_default(),
                    signet::files::one_line(&v.transaction),
                    signet::files::one_line(&v.origin),
                    v.ceremony,
                    if v.user_verified { "" } else { "not " },
                    v.sign_count,
                    v.verified_at
                        .as_ref()
                        .map(|at| format!(", verified by signet at {at}"))
                        .unwrap_or_default(),
                    v.key_sha256
                ),
                Err(e) => println!(
                    "line {line}: invalid: {}",
                    signet::files::one_line(&e.to_string())
                ),
            }
        }
    }
    if valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn read(file: &Path) -> Result<Vec<u8>, String> {
    if file == Path::new("-") {
        signet::files::read_limited(std::io::stdin().lock(), FILE_MAX, "stdin")
    } else {
        signet::files::read_bounded(file, FILE_MAX)
    }
}

/// A receipt's COSE bytes, if FILE holds one: raw (CBOR tag 18), as
/// base64url text, or as the `receipt` member of a JSON object.
fn receipt_bytes(bytes: &[u8]) -> Option<Vec<u8>> {
    if bytes.first() == Some(&0xd2) {
        return Some(bytes.to_vec());
    }
    let text = std::str::from_utf8(bytes).ok()?.trim();
    let encoded = match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(o)) => o.get("receipt")?.as_str()?.to_string(),
        Ok(_) => return None,
        Err(_) => text.to_string(),
    };
    let decoded =
        signet::webauthn::b64url_decode("receipt", &encoded, signet::receipt::RECEIPT_MAX).ok()?;
    (decoded.first() == Some(&0xd2)).then_some(decoded)
}

/// The approval-countersign public key from an SPKI PEM or a certificate.
fn countersign_key(path: &Path, certificate: bool) -> Result<signet::keys::EcPublicKey, String> {
    use p256::pkcs8::DecodePublicKey;
    let pem = String::from_utf8(signet::files::read_bounded(path, 64 * 1024)?)
        .map_err(|_| format!("{}: not PEM text", path.display()))?;
    let spki = if certificate {
        use der::{DecodePem, Encode};
        let cert = x509_cert::Certificate::from_pem(pem.as_bytes())
            .map_err(|e| format!("{}: not a PEM certificate: {e}", path.display()))?;
        cert.tbs_certificate()
            .subject_public_key_info()
            .to_der()
            .map_err(|e| format!("{}: {e}", path.display()))?
    } else {
        let blocks = signet::mds::pem_blocks(&pem, "PUBLIC KEY")
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let [der] = <[Vec<u8>; 1]>::try_from(blocks)
            .map_err(|_| format!("{}: must hold one PUBLIC KEY", path.display()))?;
        der
    };
    p256::PublicKey::from_public_key_der(&spki)
        .map(|k| signet::keys::EcPublicKey::from_p256(&k))
        .map_err(|e| format!("{}: not a P-256 public key: {e}", path.display()))
}

fn report_receipt(
    verdict: Result<signet::receipt::VerifiedReceipt, EvidenceError>,
    rp_id: Option<&str>,
    json: bool,
) -> ExitCode {
    let verdict = verdict.and_then(|v| match rp_id {
        Some(rp) if rp != v.rp_id => Err(EvidenceError {
            field: "receipt.rp".into(),
            reason: format!("is {:?}, not {rp:?}", v.rp_id),
        }),
        _ => Ok(v),
    });
    if json {
        let out = match &verdict {
            Ok(v) => {
                let mut o = json!({ "valid": true });
                if let (Value::Object(o), Ok(Value::Object(v))) = (&mut o, serde_json::to_value(v))
                {
                    o.extend(v);
                }
                o
            }
            Err(e) => json!({ "valid": false, "field": e.field, "reason": e.reason }),
        };
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else {
        match &verdict {
            Ok(v) => println!(
                "valid signet receipt (countersigned by {}): transaction {} {} approved on {} \
                 with credential {} (tier {}, policy {}, user {}verified, counter {}) at {}",
                v.kid,
                v.transaction_id,
                signet::files::one_line(&v.transaction),
                signet::files::one_line(&v.origin),
                v.credential_id,
                v.tier,
                signet::files::one_line(&v.policy_version),
                if v.user_verified { "" } else { "not " },
                v.sign_count,
                v.verified_at
            ),
            Err(e) => println!("invalid: {}", signet::files::one_line(&e.to_string())),
        }
    }
    if verdict.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// One record (a whole-file JSON object, pretty-printed or not) or one
/// per non-empty line, each with its line number.
fn verify_all(
    text: &str,
    rp_id: Option<&str>,
) -> Vec<(usize, Result<evidence::Verified, EvidenceError>)> {
    let verify = |t: &str| LogRecord::parse(t).and_then(|r| evidence::verify_record(&r, rp_id));
    if serde_json::from_str::<Value>(text).is_ok_and(|v| v.is_object()) {
        let first = text.lines().position(|l| !l.trim().is_empty()).unwrap_or(0);
        return vec![(first + 1, verify(text))];
    }
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| (i + 1, verify(l)))
        .collect()
}
