//! Transaction approval over the API of a real `signet serve`: the routes
//! and their roles, a whole approval through the network whose receipt and
//! verification log an auditor then verifies offline with the `signet`
//! binary, the problem types of refusals (replay, step-up, cancellation,
//! receipts of pending transactions, unknown and malformed ids), the audit
//! trail, and concurrent answers to one transaction.

#![cfg(feature = "testkit")]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};
use signet::keys::EcPublicKey;
use signet::testkit::{Ceremony, SoftAuthenticator};
use signet::webauthn::{CoseAlgorithm, b64url, b64url_decode};

use common::ceremony::register;
use common::server::{ORIGIN, RP_ID, SignetServer, signet_bin};

const PROBLEM: &str = "urn:signet:problem:";
const STRONG: &str = "11111111-1111-4111-8111-111111111111";
const WEAK: &str = "33333333-3333-4333-8333-333333333333";

/// tests/data/transaction-policy.toml: tiers by AAGUID without attestation
/// (STRONG tier 1, WEAK tier 3), and a payment action that asks for tier 3,
/// and tier 1 from 1000 CHF.
const POLICY: &str = include_str!("data/transaction-policy.toml");

/// A running server with the policy above and a verification log, and the
/// directory holding both (outside the server's own directory, given as
/// absolute paths: relative ones would resolve against the config's
/// directory).
struct Fixture {
    server: SignetServer,
    files: tempfile::TempDir,
}

impl Fixture {
    fn start() -> Fixture {
        let files = tempfile::tempdir().expect("tempdir");
        let policy = files.path().join("policy.toml");
        std::fs::write(&policy, POLICY).expect("write policy");
        let log = files.path().join("verification.jsonl");
        let server = SignetServer::start_with(&format!(
            "[policy]\nfile = \"{}\"\n\n[transactions]\nverification_log = \"{}\"\n",
            policy.display(),
            log.display()
        ));
        Fixture { server, files }
    }

    fn log_path(&self) -> PathBuf {
        self.files.path().join("verification.jsonl")
    }

    /// A passkey of the model `model` registered for `name` over the API.
    fn passkey(&self, name: &str, model: &str) -> SoftAuthenticator {
        let mut auth = SoftAuthenticator::new(CoseAlgorithm::Es256);
        auth.aaguid = aaguid(model);
        let (status, answer, auth) = register(&self.server, &json!({"user": {"name": name}}), auth);
        assert_eq!(status, 200, "{answer}");
        auth
    }

    /// Creates a transaction as `rp`; it must answer 201.
    fn create(&self, body: &Value) -> Value {
        let (status, tx) = self.server.post("rp", "/v1/transactions", body);
        assert_eq!(status, 201, "{tx}");
        assert_eq!(tx["state"], "pending", "{tx}");
        tx
    }

    fn approve(&self, tx: &Value, body: &Value) -> (u16, Value) {
        self.server.post("rp", &path(tx, "/approval"), body)
    }
}

fn aaguid(text: &str) -> [u8; 16] {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex");
    }
    out
}

fn id(tx: &Value) -> &str {
    tx["transactionId"].as_str().expect("transactionId")
}

fn path(tx: &Value, rest: &str) -> String {
    format!("/v1/transactions/{}{rest}", id(tx))
}

fn payment(amount: &str) -> Value {
    json!({
        "user": {"name": "alice"},
        "details": {
            "type": "payment", "amount": amount, "currency": "CHF",
            "payee": {"name": "ACME AG", "iban": "CH9300762011623852957"},
            "reference": "INV-2026-0042"
        }
    })
}

/// The approval body: `auth` signs the challenge of the creation answer's
/// request options, as the browser would.
fn answer(auth: &mut SoftAuthenticator, tx: &Value) -> Value {
    let challenge = b64url_decode(
        "challenge",
        tx["publicKey"]["challenge"].as_str().expect("challenge"),
        64,
    )
    .expect("challenge");
    let parts = auth.assert(&Ceremony::new(RP_ID, ORIGIN, &challenge));
    json!({ "credential": parts.to_json() })
}

fn problem_type(answer: &Value) -> &str {
    answer["type"]
        .as_str()
        .and_then(|t| t.strip_prefix(PROBLEM))
        .unwrap_or_default()
}

fn assert_problem(status: u16, body: &Value, want: u16, slug: &str) {
    assert_eq!((status, problem_type(body)), (want, slug), "{body}");
    assert_eq!(body["status"], want, "{body}");
}

fn signet(args: &[&str]) -> Output {
    Command::new(signet_bin())
        .args(args)
        .output()
        .expect("run signet")
}

fn evidence_verify(file: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["evidence", "verify", file.to_str().expect("path")];
    args.extend_from_slice(extra);
    signet(&args)
}

fn text(out: &Output) -> String {
    format!(
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn only_rp_creates_approves_and_cancels_while_officers_and_auditors_read() {
    let fx = Fixture::start();
    let s = &fx.server;
    let mut auth = fx.passkey("alice", WEAK);
    let tx = fx.create(&payment("25.00"));
    let body = answer(&mut auth, &tx);

    for role in ["officer", "auditor", "monitor"] {
        let (status, refused) = s.post(role, "/v1/transactions", &payment("25.00"));
        assert_problem(status, &refused, 403, "forbidden");
        let (status, refused) = s.post(role, &path(&tx, "/approval"), &body);
        assert_problem(status, &refused, 403, "forbidden");
        let (status, refused) = s.post(role, &path(&tx, "/cancel"), &json!({}));
        assert_problem(status, &refused, 403, "forbidden");
    }
    // None of that touched the transaction.
    let (status, shown) = s.get("auditor", &path(&tx, ""));
    assert_eq!(status, 200, "{shown}");
    assert_eq!(
        (shown["state"].as_str(), shown["attempts"].as_u64()),
        (Some("pending"), Some(0))
    );

    let (status, approved) = fx.approve(&tx, &body);
    assert_eq!(status, 200, "{approved}");
    for role in ["rp", "officer", "auditor"] {
        let (status, shown) = s.get(role, &path(&tx, ""));
        assert_eq!(status, 200, "{role}: {shown}");
        assert_eq!(shown["state"], "approved", "{role}");
        let (status, receipt) = s.get(role, &path(&tx, "/receipt"));
        assert_eq!(status, 200, "{role}: {receipt}");
        assert_eq!(receipt["receipt"], approved["receipt"], "{role}");
    }
    for rest in ["", "/receipt"] {
        let (status, refused) = s.get("monitor", &path(&tx, rest));
        assert_problem(status, &refused, 403, "forbidden");
    }
    // Only rp cancels: a second transaction stays pending until it does.
    let other = fx.create(&payment("30.00"));
    for role in ["officer", "auditor"] {
        let (status, refused) = s.post(role, &path(&other, "/cancel"), &json!({}));
        assert_problem(status, &refused, 403, "forbidden");
    }
    let (status, cancelled) = s.post("rp", &path(&other, "/cancel"), &json!({}));
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["state"], "cancelled");
}

#[test]
fn an_approval_over_the_network_verifies_offline_with_the_exported_key() {
    let fx = Fixture::start();
    let s = &fx.server;
    let mut auth = fx.passkey("alice", WEAK);
    let tx = fx.create(&payment("250.00"));
    assert_eq!(tx["action"], "payment");
    assert_eq!(tx["requirement"]["minTier"], 3);
    assert_eq!(tx["publicKey"]["challenge"], tx["challenge"]);
    assert_eq!(
        tx["publicKey"]["allowCredentials"][0]["id"],
        b64url(&auth.credential_id)
    );
    let (status, approved) = fx.approve(&tx, &answer(&mut auth, &tx));
    assert_eq!(status, 200, "{approved}");
    assert_eq!(approved["state"], "approved");
    assert_eq!(approved["tier"], 3);
    assert_eq!(approved["policyVersion"], "tx-test-1");
    assert_eq!(approved["ceremony"], "webauthn.get");

    let (status, receipt) = s.get("auditor", &path(&tx, "/receipt"));
    assert_eq!(status, 200, "{receipt}");
    assert_eq!(receipt["format"], "cose-sign1");
    assert_eq!(receipt["kid"], approved["receiptKid"]);
    assert_eq!(receipt["transactionId"], tx["transactionId"]);
    let bytes = b64url_decode(
        "receipt",
        receipt["receipt"].as_str().expect("receipt"),
        1 << 16,
    )
    .expect("base64url receipt");
    let (_, shown) = s.get("auditor", &path(&tx, ""));
    assert_eq!(
        shown["approval"]["receiptSha256"],
        signet::hex::encode(&signet::keys::sha256(&bytes))
    );

    // The auditor exports the approval-countersign public key with the
    // officer's CLI, from the same token the running server uses.
    let out = signet(&[
        "hsm",
        "export",
        "--profile",
        s.hsm.profile_path().to_str().expect("profile"),
        "--role",
        "approval-countersign",
        "--format",
        "pem",
    ]);
    assert!(out.status.success(), "hsm export: {}", text(&out));
    let pem = String::from_utf8(out.stdout).expect("PEM text");
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"), "{pem}");
    // It is the key GET /v1/keys lists under the receipt's kid.
    let (_, keys) = s.get("auditor", "/v1/keys");
    let listed = keys["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["role"] == "approval-countersign" && k["kid"] == receipt["kid"])
        .unwrap_or_else(|| panic!("the receipt's kid is not listed: {keys}"));
    let xy = |m: &str| b64url_decode(m, listed["jwk"][m].as_str().expect(m), 64).expect(m);
    let from_api = EcPublicKey::from_xy(&xy("x"), &xy("y")).expect("P-256");
    assert_eq!(pem.trim_end(), from_api.pem().trim_end());

    let dir = tempfile::tempdir().expect("tempdir");
    let key_file = dir.path().join("approval-countersign.pem");
    std::fs::write(&key_file, &pem).expect("write key");
    let key = key_file.to_str().expect("path");
    // The API's answer as saved, and the raw COSE bytes: both verify.
    let answer_file = dir.path().join("receipt.json");
    std::fs::write(&answer_file, receipt.to_string()).expect("write");
    let raw_file = dir.path().join("receipt.cose");
    std::fs::write(&raw_file, &bytes).expect("write");
    for file in [&answer_file, &raw_file] {
        let out = evidence_verify(file, &["--key", key, "--json", "--rp-id", RP_ID]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let v: Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(v["valid"], true, "{v}");
        assert_eq!(v["transactionId"], tx["transactionId"], "{v}");
        assert_eq!(v["transaction"], tx["canonicalDetails"], "{v}");
        assert_eq!(v["credentialId"], b64url(&auth.credential_id), "{v}");
        assert_eq!(v["tier"], 3, "{v}");
    }

    // One byte changed anywhere after the COSE tag: invalid, exit 1.
    for at in [1, 7, bytes.len() / 3, bytes.len() / 2, bytes.len() - 1] {
        let mut changed = bytes.clone();
        changed[at] ^= 0x01;
        let file = dir.path().join(format!("changed-{at}.cose"));
        std::fs::write(&file, &changed).expect("write");
        let out = evidence_verify(&file, &["--key", key]);
        assert_eq!(out.status.code(), Some(1), "byte {at}: {}", text(&out));
    }
    // Another key, or no key at all.
    let other = dir.path().join("other.pem");
    let stranger = p256::SecretKey::from_slice(&[7; 32]).expect("key");
    let stranger = EcPublicKey::from_p256(&stranger.public_key());
    std::fs::write(&other, stranger.pem()).expect("write");
    let out = evidence_verify(&raw_file, &["--key", other.to_str().expect("path")]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let out = evidence_verify(&raw_file, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--key"),
        "{}",
        text(&out)
    );
}

#[test]
fn the_verification_log_verifies_offline_line_by_line_and_is_private() {
    let fx = Fixture::start();
    let mut weak = fx.passkey("alice", WEAK);
    let mut strong = fx.passkey("alice", STRONG);
    let small = fx.create(&payment("12.50"));
    let large = fx.create(&payment("4200.00"));
    assert_eq!(large["requirement"]["minTier"], 1);
    let (status, first) = fx.approve(&small, &answer(&mut weak, &small));
    assert_eq!(status, 200, "{first}");
    let (status, second) = fx.approve(&large, &answer(&mut strong, &large));
    assert_eq!(status, 200, "{second}");

    let log = fx.log_path();
    let lines = std::fs::read_to_string(&log).expect("log");
    assert_eq!(lines.lines().count(), 2, "{lines}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&log)
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }

    let out = evidence_verify(&log, &["--rp-id", RP_ID]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let shown = String::from_utf8_lossy(&out.stdout);
    for (line, tx) in [(1, &small), (2, &large)] {
        assert!(
            shown.contains(&format!("line {line}: valid signet-verification-log")),
            "{shown}"
        );
        assert!(shown.contains(id(tx)), "{shown}");
    }
    let out = evidence_verify(&log, &["--rp-id", RP_ID, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["valid"], true, "{v}");
    let records = v["records"].as_array().expect("records");
    assert_eq!(records.len(), 2, "{v}");
    for (record, tx) in records.iter().zip([&small, &large]) {
        assert_eq!(record["valid"], true, "{record}");
        assert_eq!(record["transactionId"], tx["transactionId"], "{record}");
        assert_eq!(record["transaction"], tx["canonicalDetails"], "{record}");
    }
    // Another RP's name: every line is refused.
    let out = evidence_verify(&log, &["--rp-id", "bank.example"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
}

#[test]
fn refusals_answer_with_their_problem_types_and_are_audited_in_order() {
    let fx = Fixture::start();
    let s = &fx.server;
    let mut weak = fx.passkey("alice", WEAK);

    // Only a weak credential: a large payment is refused at creation.
    let (status, step) = s.post("rp", "/v1/transactions", &payment("5000.00"));
    assert_problem(status, &step, 403, "step-up-required");
    assert_eq!(step["tiers"], json!([1]), "{step}");
    assert_eq!(step["tier"], 3, "{step}");

    // Approved, then the same body replayed.
    let tx = fx.create(&payment("250.00"));
    let (status, receipt) = s.get("auditor", &path(&tx, "/receipt"));
    assert_problem(status, &receipt, 409, "transaction-not-approved");
    assert_eq!(receipt["field"], "transactionId");
    let body = answer(&mut weak, &tx);
    let (status, approved) = fx.approve(&tx, &body);
    assert_eq!(status, 200, "{approved}");
    let (status, replay) = fx.approve(&tx, &body);
    assert_problem(status, &replay, 409, "transaction-approved");
    let (status, refused) = s.post("rp", &path(&tx, "/cancel"), &json!({}));
    assert_problem(status, &refused, 409, "transaction-approved");

    // A credential below the tier: step-up, and the transaction waits for
    // a stronger one.
    let mut strong = fx.passkey("alice", STRONG);
    let large = fx.create(&payment("5000.00"));
    assert_eq!(large["requirement"]["threshold"], "at least 1000.00 CHF");
    let (status, step) = fx.approve(&large, &answer(&mut weak, &large));
    assert_problem(status, &step, 403, "step-up-required");
    assert_eq!(step["tiers"], json!([1]), "{step}");
    assert_eq!(step["tier"], 3, "{step}");
    assert_eq!(step["action"], "payment", "{step}");
    assert_eq!(step["policyVersion"], "tx-test-1", "{step}");
    assert_eq!(step["credentialId"], b64url(&weak.credential_id), "{step}");
    let (_, shown) = s.get("rp", &path(&large, ""));
    assert_eq!(
        (shown["state"].as_str(), shown["attempts"].as_u64()),
        (Some("pending"), Some(0))
    );
    let (status, approved) = fx.approve(&large, &answer(&mut strong, &large));
    assert_eq!(status, 200, "{approved}");
    assert_eq!(approved["tier"], 1);

    // Cancelled: the answer is refused; cancelling again answers the same.
    let cancelled = fx.create(&payment("10.00"));
    let reason = json!({"reason": "the user hung up"});
    let (status, c) = s.post("rp", &path(&cancelled, "/cancel"), &reason);
    assert_eq!(status, 200, "{c}");
    assert_eq!(
        (c["state"].as_str(), c["closedReason"].as_str()),
        (Some("cancelled"), Some("the user hung up"))
    );
    let (status, again) = s.post("rp", &path(&cancelled, "/cancel"), &json!({}));
    assert_eq!(
        (status, again["state"].as_str()),
        (200, Some("cancelled")),
        "{again}"
    );
    let (status, closed) = fx.approve(&cancelled, &answer(&mut weak, &cancelled));
    assert_problem(status, &closed, 409, "transaction-closed");
    let (status, receipt) = s.get("officer", &path(&cancelled, "/receipt"));
    assert_problem(status, &receipt, 409, "transaction-not-approved");

    // Unknown and malformed ids, on every route that takes one.
    let unknown = b64url(&[9u8; 16]);
    for (method, rest) in [
        ("get", ""),
        ("get", "/receipt"),
        ("post", "/cancel"),
        ("post", "/approval"),
    ] {
        let at = format!("/v1/transactions/{unknown}{rest}");
        let (status, missing) = match method {
            "get" => s.get("rp", &at),
            _ => s.post(
                "rp",
                &at,
                &if rest == "/approval" {
                    body.clone()
                } else {
                    json!({})
                },
            ),
        };
        assert_problem(status, &missing, 404, "not-found");
        assert_eq!(missing["field"], "transactionId", "{at}");
        for bad in ["short", "AAAAAAAAAAAAAAAAAAAAAAAA", "not*base64url*at*all!"] {
            let at = format!("/v1/transactions/{bad}{rest}");
            let (status, invalid) = match method {
                "get" => s.get("rp", &at),
                _ => s.post("rp", &at, &json!({})),
            };
            assert_problem(status, &invalid, 400, "invalid-request");
            assert_eq!(invalid["field"], "transactionId", "{at}: {invalid}");
        }
    }

    // The audit log tells each transaction's story, in order.
    let (status, page) = s.get("auditor", "/v1/audit?limit=1000");
    assert_eq!(status, 200, "{page}");
    let story = |tx: &Value| -> Vec<String> {
        page["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .filter(|e| e["event"]["subject"] == tx["transactionId"])
            .map(|e| e["event"]["event"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    assert_eq!(
        story(&tx),
        [
            "transaction.created",
            "transaction.approved",
            "transaction.refused"
        ],
        "{page}"
    );
    assert_eq!(
        story(&large),
        [
            "transaction.created",
            "transaction.step_up_required",
            "transaction.approved"
        ]
    );
    assert_eq!(
        story(&cancelled),
        [
            "transaction.created",
            "transaction.cancelled",
            "transaction.refused"
        ]
    );
}

#[test]
fn concurrent_approvals_over_the_network_approve_once() {
    let fx = Fixture::start();
    let mut auth = fx.passkey("alice", WEAK);
    let tx = fx.create(&payment("99.00"));
    let body = answer(&mut auth, &tx);
    let at = path(&tx, "/approval");
    let results: Vec<(u16, Value)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let (server, at, body) = (&fx.server, &at, &body);
                scope.spawn(move || server.post("rp", at, body))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let approved: Vec<&Value> = results
        .iter()
        .filter(|(status, _)| *status == 200)
        .map(|(_, v)| v)
        .collect();
    assert_eq!(approved.len(), 1, "{results:?}");
    for (status, refused) in results.iter().filter(|(s, _)| *s != 200) {
        assert!(
            (*status, problem_type(refused)) == (409, "transaction-approved")
                || (*status, problem_type(refused)) == (400, "credential-counter"),
            "{status}: {refused}"
        );
    }
    // The one approval is the one stored, and its receipt the one served.
    let (_, shown) = fx.server.get("auditor", &path(&tx, ""));
    assert_eq!(shown["state"], "approved");
    let (_, receipt) = fx.server.get("auditor", &path(&tx, "/receipt"));
    assert_eq!(receipt["receipt"], approved[0]["receipt"]);
    // Every line the race left in the verification log is a genuine
    // assertion (the receipt, not the log, says which one counted).
    let out = evidence_verify(&fx.log_path(), &["--rp-id", RP_ID]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}
