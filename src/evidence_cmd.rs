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
    /// Verify verification-log records offline: the signature with the
    /// record's public key, the challenge re-derived from the transaction
    /// and the nonce, and user presence. FILE holds one record (a JSON
    /// object) or a log of them (one per line); `-` reads stdin. Records in
    /// Airlock IAM's format (S, T, CAD, CCD, N, P) are recognised, so a bank
    /// migrating from Airlock verifies its archive with this tool.
    /// Exit 0: every record valid; 1: one or more invalid (each named with
    /// its line and the member at fault); 2: usage, or FILE unreadable.
    #[command(after_help = "Examples:\n  \
        signet evidence verify approval.json\n  \
        signet evidence verify --rp-id bank.example --json approvals.log")]
    Verify {
        file: PathBuf,
        /// Also check that the authenticator data names this RP ID.
        #[arg(long, value_name = "ID")]
        rp_id: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(command: EvidenceCommand) -> ExitCode {
    let EvidenceCommand::Verify { file, rp_id, json } = command;
    let text = match read(&file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("signet: {e}");
            return ExitCode::from(2);
        }
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
                    "line {line}: valid {}: transaction {} approved on {} ({}, user {}verified, \
                     counter {}), key sha256 {}",
                    v.format,
                    signet::files::one_line(&v.transaction),
                    signet::files::one_line(&v.origin),
                    v.ceremony,
                    if v.user_verified { "" } else { "not " },
                    v.sign_count,
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

fn read(file: &Path) -> Result<String, String> {
    let bytes = if file == Path::new("-") {
        signet::files::read_limited(std::io::stdin().lock(), FILE_MAX, "stdin")?
    } else {
        signet::files::read_bounded(file, FILE_MAX)?
    };
    String::from_utf8(bytes).map_err(|_| format!("{}: not UTF-8 text", file.display()))
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
