//! `signet evidence verify` on verification-log records: Airlock IAM's
//! sample record verifies, any change to what was signed does not, and the
//! exit codes say which (0 valid, 1 invalid, 2 usage).

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use common::server::signet_bin;

const SAMPLE: &str = include_str!("data/airlock-log-record.json");

fn evidence(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(signet_bin())
        .arg("evidence")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run signet evidence");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
    }
    drop(child.stdin.take());
    child.wait_with_output().expect("wait")
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn tampered(from: &str, to: &str) -> String {
    assert!(SAMPLE.contains(from), "{from}");
    SAMPLE.replacen(from, to, 1)
}

#[test]
fn the_airlock_sample_verifies_and_reports_what_was_approved() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("record.json");
    std::fs::write(&file, SAMPLE).expect("write");
    let out = evidence(&["verify", file.to_str().expect("path")], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let shown = text(&out);
    assert!(shown.contains("valid airlock-verification-log"), "{shown}");
    assert!(shown.contains(r#""amount":"300000000""#), "{shown}");

    let out = evidence(
        &["verify", "--json", "--rp-id", "localhost", "-"],
        Some(SAMPLE),
    );
    assert_eq!(out.status.code(), Some(0));
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["valid"], true);
    assert_eq!(v["records"][0]["userVerified"], true);
    assert_eq!(v["records"][0]["signCount"], 2);
    assert_eq!(v["records"][0]["origin"], "https://localhost");
}

#[test]
fn any_change_to_the_transaction_or_the_nonce_is_invalid() {
    for (from, to, field) in [
        ("300000000", "300000001", "CCD.challenge"),
        (r#"\"CHF\""#, r#"\"EUR\""#, "CCD.challenge"),
        ("PsJaxWAf", "PsJaxWAg", "CCD.challenge"),
        ("MEUCIA-h", "MEUCIA-i", "S"),
        ("SZYN5YgO", "SZYN5YgP", "CAD.rpIdHash"),
    ] {
        let record = tampered(from, to);
        let out = evidence(
            &["verify", "--json", "--rp-id", "localhost", "-"],
            Some(&record),
        );
        assert_eq!(out.status.code(), Some(1), "{from}: {}", text(&out));
        let v: Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(v["valid"], false);
        assert_eq!(v["records"][0]["field"], field, "{from}: {v}");
    }
}

#[test]
fn a_log_is_verified_line_by_line() {
    let bad = tampered("300000000", "900000000");
    let log = format!("{}\n\n{}\n{}\n", SAMPLE.trim(), bad.trim(), SAMPLE.trim());
    let out = evidence(&["verify", "-"], Some(&log));
    assert_eq!(out.status.code(), Some(1));
    let shown = text(&out);
    assert!(shown.contains("line 1: valid"), "{shown}");
    assert!(shown.contains("line 3: invalid: CCD.challenge"), "{shown}");
    assert!(shown.contains("line 4: valid"), "{shown}");
    // Garbage lines are invalid records, not a crash.
    let out = evidence(&["verify", "-"], Some("not json\n{\"S\": 1}\n"));
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("line 2: invalid: S: must be a string"));
    // Nothing at all is not valid evidence.
    let out = evidence(&["verify", "-"], Some(""));
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn usage_errors_exit_2() {
    let out = evidence(&["verify"], None);
    assert_eq!(out.status.code(), Some(2));
    let out = evidence(&["verify", "/nonexistent/evidence.json"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/evidence.json"));
    let out = evidence(&["verify", "--bogus", "-"], Some(SAMPLE));
    assert_eq!(out.status.code(), Some(2));
}
