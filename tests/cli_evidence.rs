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

mod receipts {
    use super::*;
    use p256::ecdsa::signature::Signer;
    use signet::keys::{EcPublicKey, EcdsaSignature, Kid};
    use signet::receipt::Receipt;
    use signet::testkit::{Ceremony, SoftAuthenticator};
    use signet::transaction::Details;
    use signet::webauthn::{CoseAlgorithm, b64url};

    /// A receipt for a real soft-authenticator approval, countersigned by
    /// the key made from `seed`; and that key's SPKI PEM.
    fn receipt(seed: u8) -> (Vec<u8>, String, p256::SecretKey) {
        let details = Details::parse(&serde_json::json!({
            "type": "payment", "amount": "99.95", "currency": "EUR"
        }))
        .expect("details");
        let nonce = [9u8; 32];
        let challenge = details.challenge(&nonce);
        let mut auth = SoftAuthenticator::new(CoseAlgorithm::Es256);
        let parts = auth.assert(&Ceremony::new(
            "bank.example",
            "https://bank.example",
            &challenge,
        ));
        let r = Receipt {
            transaction_id: [2; 16],
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
            tier: 2,
            policy_version: "bank-7".into(),
            verified_ms: 1_800_000_000_000,
        };
        let secret = p256::SecretKey::from_slice(&[seed; 32]).expect("key");
        let public = EcPublicKey::from_p256(&secret.public_key());
        let (tbs, unsigned) = r.to_be_signed(&Kid::of(&public)).expect("tbs");
        let sig: p256::ecdsa::Signature = p256::ecdsa::SigningKey::from(&secret).sign(&tbs);
        let bytes = Receipt::finish(
            unsigned,
            &EcdsaSignature::from_raw(&sig.to_bytes()).expect("raw"),
        )
        .expect("finish");
        (bytes, public.pem(), secret)
    }

    #[test]
    fn a_receipt_verifies_with_the_countersign_key_in_every_encoding() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (bytes, pem, secret) = receipt(3);
        let key = dir.path().join("countersign.pem");
        std::fs::write(&key, &pem).expect("write key");
        let raw = dir.path().join("receipt.cose");
        std::fs::write(&raw, &bytes).expect("write");
        let text = dir.path().join("receipt.txt");
        std::fs::write(&text, format!("{}\n", b64url(&bytes))).expect("write");
        let json = dir.path().join("receipt.json");
        std::fs::write(
            &json,
            serde_json::json!({"receipt": b64url(&bytes)}).to_string(),
        )
        .expect("write");
        for file in [&raw, &text, &json] {
            let out = evidence(
                &[
                    "verify",
                    "--key",
                    key.to_str().expect("p"),
                    file.to_str().expect("p"),
                ],
                None,
            );
            assert_eq!(out.status.code(), Some(0), "{}", super::text(&out));
            assert!(super::text(&out).contains("valid signet receipt"));
        }
        let out = evidence(
            &[
                "verify",
                "--json",
                "--rp-id",
                "bank.example",
                "--key",
                key.to_str().expect("p"),
                "-",
            ],
            Some(&b64url(&bytes)),
        );
        let v: Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(v["valid"], true, "{v}");
        assert_eq!(v["tier"], 2);
        assert!(v["transaction"].as_str().expect("t").contains("99.95"));

        // A certificate of the key works as well as the bare key.
        let pkcs8 = {
            use p256::pkcs8::EncodePrivateKey;
            secret.to_pkcs8_der().expect("pkcs8")
        };
        let kp = rcgen::KeyPair::try_from(pkcs8.as_bytes()).expect("keypair");
        let cert = rcgen::CertificateParams::new(vec!["countersign".into()])
            .expect("params")
            .self_signed(&kp)
            .expect("cert");
        let cert_file = dir.path().join("countersign.crt");
        std::fs::write(&cert_file, cert.pem()).expect("write cert");
        let out = evidence(
            &[
                "verify",
                "--cert",
                cert_file.to_str().expect("p"),
                raw.to_str().expect("p"),
            ],
            None,
        );
        assert_eq!(out.status.code(), Some(0), "{}", super::text(&out));
    }

    #[test]
    fn a_receipt_with_another_key_or_without_one_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (bytes, _, _) = receipt(3);
        let (_, other_pem, _) = receipt(4);
        let key = dir.path().join("other.pem");
        std::fs::write(&key, other_pem).expect("write");
        let out = evidence(
            &["verify", "--json", "--key", key.to_str().expect("p"), "-"],
            Some(&b64url(&bytes)),
        );
        assert_eq!(out.status.code(), Some(1));
        let v: Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(v["field"], "receipt.signature");
        let out = evidence(
            &[
                "verify",
                "--rp-id",
                "evil.example",
                "--key",
                key.to_str().expect("p"),
                "-",
            ],
            Some(&b64url(&receipt(4).0)),
        );
        assert_eq!(out.status.code(), Some(1));
        assert!(super::text(&out).contains("receipt.rp"));
        // No key: usage.
        let out = evidence(&["verify", "-"], Some(&b64url(&bytes)));
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains("--key or --cert"));
    }
}

mod signet_lines {
    use super::*;
    use signet::webauthn::b64url;

    /// signet's verification-log line for a real soft-authenticator
    /// approval of `amount` CHF, transaction id `[tx; 16]`.
    fn line(tx: u8, amount: &str) -> String {
        signet::testkit::evidence::signet_log_record(tx, amount, "bank.example")
            .to_line()
            .expect("line")
    }

    fn write(dir: &tempfile::TempDir, name: &str, lines: &[&str]) -> String {
        let file = dir.path().join(name);
        std::fs::write(&file, lines.join("\n") + "\n").expect("write");
        file.to_str().expect("path").to_string()
    }

    #[test]
    fn a_log_of_signet_lines_verifies() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (one, two) = (line(1, "1500.00"), line(2, "20.50"));
        let file = write(&dir, "verification.jsonl", &[&one, &two]);
        let out = evidence(&["verify", &file], None);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let shown = text(&out);
        for (n, tx, amount) in [
            (1, b64url(&[1; 16]), "1500.00"),
            (2, b64url(&[2; 16]), "20.50"),
        ] {
            let expected = format!("line {n}: valid signet-verification-log: transaction {tx} ");
            assert!(shown.contains(&expected), "{shown}");
            assert!(shown.contains(amount), "{shown}");
        }
        assert!(
            shown.contains("verified by signet at 2027-01-15T08:00:00.123Z"),
            "{shown}"
        );

        let out = evidence(
            &["verify", "--json", "--rp-id", "bank.example", &file],
            None,
        );
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let v: Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(v["valid"], true, "{v}");
        assert_eq!(v["records"][1]["line"], 2);
        assert_eq!(v["records"][1]["format"], "signet-verification-log");
        assert_eq!(v["records"][1]["transactionId"], b64url(&[2; 16]));
        assert_eq!(v["records"][1]["verifiedAt"], "2027-01-15T08:00:00.123Z");

        // Another RP ID than the lines': refused, naming rp.
        let out = evidence(
            &["verify", "--json", "--rp-id", "evil.example", &file],
            None,
        );
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        let v: Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(v["records"][0]["field"], "rp", "{v}");
    }

    #[test]
    fn a_tampered_second_line_is_invalid_and_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let one = line(1, "1500.00");
        let two = line(2, "20.50");
        assert!(two.contains("20.50"));
        let two = two.replacen("20.50", "2050.00", 1);
        let file = write(&dir, "tampered.jsonl", &[&one, &two]);
        let out = evidence(&["verify", &file], None);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        let shown = text(&out);
        assert!(
            shown.contains("line 1: valid signet-verification-log"),
            "{shown}"
        );
        assert!(shown.contains("line 2: invalid: CCD.challenge"), "{shown}");
        let out = evidence(&["verify", "--json", &file], None);
        assert_eq!(out.status.code(), Some(1));
        let v: Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(v["valid"], false);
        assert_eq!(v["records"][0]["valid"], true);
        assert_eq!(v["records"][1]["line"], 2);
        assert_eq!(v["records"][1]["field"], "CCD.challenge", "{v}");
    }

    #[test]
    fn airlock_records_and_signet_lines_mix_in_one_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let signet = line(3, "99.00");
        let stored = include_str!("data/signet-log-sample.jsonl").trim_end();
        let file = write(&dir, "mixed.jsonl", &[SAMPLE.trim(), &signet, stored]);
        let out = evidence(&["verify", "--json", &file], None);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let v: Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(v["valid"], true, "{v}");
        assert_eq!(v["records"][0]["format"], "airlock-verification-log");
        assert!(v["records"][0].get("transactionId").is_none(), "{v}");
        assert_eq!(v["records"][1]["format"], "signet-verification-log");
        assert_eq!(v["records"][2]["format"], "signet-verification-log");
        assert_eq!(v["records"][2]["transactionId"], "oKGio6SlpqeoqaqrrK2urw");
        // One RP ID for both: the Airlock record's is localhost, so
        // --rp-id bank.example fails it and passes the signet lines.
        let out = evidence(
            &["verify", "--json", "--rp-id", "bank.example", &file],
            None,
        );
        assert_eq!(out.status.code(), Some(1));
        let v: Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(v["records"][0]["field"], "CAD.rpIdHash", "{v}");
        assert_eq!(v["records"][1]["valid"], true, "{v}");
        assert_eq!(v["records"][2]["valid"], true, "{v}");
    }
}
