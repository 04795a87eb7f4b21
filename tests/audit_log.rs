//! The audit log end to end: [`AuditLog`] over a real sled store with
//! checkpoints signed on a SoftHSM token, tampering with the store's raw
//! records, and `signet audit verify` on what the officer's CLI appended.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use common::Device as _;
use common::softhsm::SoftHsm;
use serde_json::{Value, json};
use signet::audit::{AuditEvent, AuditLog, CheckpointPolicy, Reason, checkpoint_keys, decode_body};
use signet::store::sled_store::{SEGMENT_SIZE, trees};
use signet::store::{AuditEntry, SledStore, Store};

const T0: u64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

fn event(i: u64) -> AuditEvent {
    AuditEvent::new(
        T0 + i,
        "CN=core-banking.example,O=Example Bank",
        "credential.registered",
        format!("cred-{i}"),
    )
    .with_detail(json!({ "n": i }))
}

fn open_log(dir: &Path, every_records: u64) -> AuditLog {
    let store = SledStore::open(dir).unwrap();
    AuditLog::new(
        Arc::new(store),
        CheckpointPolicy {
            every_records,
            every_ms: 0,
        },
    )
}

#[test]
fn appends_checkpoint_every_thousand_and_verify_in_pages() {
    let hsm = SoftHsm::new();
    let ring = hsm.ring();
    ring.init().unwrap();
    let keys = checkpoint_keys(&ring.list().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(dir.path(), 1000);

    for i in 1..=2500 {
        let entry = log.append(&event(i), Some(&ring)).unwrap();
        assert_eq!(entry.seq, i);
    }
    let seqs = |log: &AuditLog| -> Vec<u64> {
        log.store()
            .checkpoints(1, 100)
            .unwrap()
            .iter()
            .map(|c| c.seq)
            .collect()
    };
    assert_eq!(seqs(&log), [1000, 2000]);

    let report = log.verify(&keys).unwrap();
    assert!(report.is_intact(), "{report}");
    assert_eq!(report.records, 2500);
    assert_eq!(report.last_seq, 2500);
    assert_eq!(report.checkpoints_verified, 2);
    assert_eq!(report.covered_seq, 2000);

    // The timer's call covers the quiet tail, once.
    let tail = log.checkpoint_now(&ring, T0 + 10_000).unwrap().unwrap();
    assert_eq!(tail.seq, 2500);
    assert!(log.checkpoint_now(&ring, T0 + 20_000).unwrap().is_none());
    assert_eq!(seqs(&log), [1000, 2000, 2500]);
    let report = log.verify(&keys).unwrap();
    assert!(report.is_intact(), "{report}");
    assert_eq!(report.checkpoints_verified, 3);
    assert_eq!(report.covered_seq, 2500);
}

/// Opens the closed store's sled database directly, as an attacker with
/// file access would.
fn raw_db(dir: &Path) -> sled::Db {
    sled::Config::new()
        .path(dir)
        .segment_size(SEGMENT_SIZE)
        .open()
        .unwrap()
}

#[test]
fn a_body_altered_in_the_raw_store_is_reported_at_its_seq() {
    let hsm = SoftHsm::new();
    let ring = hsm.ring();
    ring.init().unwrap();
    let keys = checkpoint_keys(&ring.list().unwrap());
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open_log(dir.path(), 10);
        for i in 1..=30 {
            log.append(&event(i), Some(&ring)).unwrap();
        }
        assert!(log.verify(&keys).unwrap().is_intact());
    }

    {
        let db = raw_db(dir.path());
        let audit = db.open_tree(trees::AUDIT).unwrap();
        let key = 15u64.to_be_bytes();
        let value = audit.get(key).unwrap().unwrap();
        // Records are CBOR `[version, AuditEntry]` (see src/store/mod.rs).
        let (version, mut entry): (u16, AuditEntry) =
            ciborium::from_reader(value.as_ref()).unwrap();
        let at = entry.body.iter().position(|&b| b == b'E').unwrap();
        entry.body[at] = b'F'; // "Example Bank" -> "Fxample Bank"
        let mut tampered = Vec::new();
        ciborium::into_writer(&(version, &entry), &mut tampered).unwrap();
        audit.insert(key, tampered).unwrap();
        db.flush().unwrap();
    }

    let log = open_log(dir.path(), 10);
    let altered = log.store().audit_range(15, 1).unwrap().remove(0);
    assert!(
        decode_body(&altered.body)
            .unwrap()
            .actor
            .contains("Fxample")
    );
    let report = log.verify(&keys).unwrap();
    let first = report.first_broken.as_ref().unwrap();
    assert_eq!(first.seq, 15, "{report}");
    assert!(matches!(first.reason, Reason::Hash { .. }), "{report}");
    // The altered record is reported alone; the checkpoints still verify.
    assert_eq!(report.findings.len(), 1, "{report}");
    assert_eq!(report.checkpoints_verified, 3);
    assert_eq!(report.records, 30);
}

// ---- the CLI ----

/// A token made by `scripts/softhsm-init`, as in tests/cli_hsm.rs.
struct Token {
    dir: tempfile::TempDir,
}

impl Token {
    fn new() -> Token {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(repo().join("scripts/softhsm-init"))
            .arg(dir.path().join("hsm"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "softhsm-init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Token { dir }
    }
    fn profile(&self) -> PathBuf {
        self.dir.path().join("hsm/profile.toml")
    }
    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
    /// An `hsm` command on this token, audited in the data directory.
    fn officer(&self, args: &[&str]) -> Value {
        let profile = self.profile();
        let data = self.data_dir();
        let mut all = args.to_vec();
        all.extend([
            "--profile",
            profile.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
            "--json",
        ]);
        let out = signet(&all);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }
    /// `audit verify` on the data directory with extra arguments.
    fn verify(&self, extra: &[&str]) -> Output {
        let data = self.data_dir();
        let mut all = vec!["audit", "verify", "--data-dir", data.to_str().unwrap()];
        all.extend(extra);
        signet(&all)
    }
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn signet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_signet"))
        .args(args)
        .env_remove("SOFTHSM2_CONF")
        .env("USER", "alice")
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout_json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn officer_actions_are_audited_and_verified_by_the_cli() {
    let t = Token::new();
    let profile = t.profile();
    let profile = profile.to_str().unwrap();

    let init = t.officer(&["hsm", "init"]);
    assert_eq!(init["created"].as_array().unwrap().len(), 4);
    let rotated = t.officer(&["hsm", "rotate", "--role", "token-signing"]);
    assert_eq!(rotated["version"], 2);

    // With the device's keys.
    let out = t.verify(&["--profile", profile, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report = stdout_json(&out);
    assert_eq!(report["intact"], true, "{report}");
    assert_eq!(report["records"], 5, "{report}");
    assert_eq!(report["last_seq"], 5);
    assert_eq!(report["first_broken"], Value::Null);
    // Every officer action is checkpointed at once.
    assert_eq!(report["checkpoints_verified"], 5, "{report}");

    // With the exported public key instead.
    let export = signet(&[
        "hsm",
        "export",
        "--role",
        "audit-checkpoint",
        "--profile",
        profile,
    ]);
    assert!(export.status.success(), "{}", stderr(&export));
    let pem = t.dir.path().join("audit-checkpoint.pem");
    std::fs::write(&pem, &export.stdout).unwrap();
    let out = t.verify(&["--checkpoint-key", pem.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout_json(&out)["checkpoints_verified"], 5);

    // Text output.
    let out = t.verify(&["--checkpoint-key", pem.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("records: 5") && text.ends_with("intact\n"),
        "{text}"
    );

    // With no keys, the first checkpoint is signed by an unknown key.
    let checkpoint_kid = init["created"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["role"] == "audit-checkpoint")
        .unwrap()["kid"]
        .as_str()
        .unwrap()
        .to_string();
    let out = t.verify(&["--json"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("seq 1") && err.contains(&checkpoint_kid),
        "{err}"
    );
    let report = stdout_json(&out);
    assert_eq!(report["intact"], false);
    assert_eq!(report["first_broken"]["seq"], 1);

    // Retiring is audited too; the records say who did what to which key.
    let old_kid = init["created"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["role"] == "token-signing")
        .unwrap()["kid"]
        .as_str()
        .unwrap()
        .to_string();
    t.officer(&["hsm", "retire", "--kid", &old_kid]);
    let store = SledStore::open(&t.data_dir()).unwrap();
    let events: Vec<AuditEvent> = store
        .audit_range(1, 100)
        .unwrap()
        .iter()
        .map(|e| decode_body(&e.body).unwrap())
        .collect();
    drop(store);
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        names,
        [
            "key.created",
            "key.created",
            "key.created",
            "key.created",
            "key.rotated",
            "key.retired"
        ]
    );
    assert!(events.iter().all(|e| e.actor == "cli:officer:alice"));
    assert_eq!(events[4].subject, rotated["kid"].as_str().unwrap());
    assert_eq!(
        events[4].detail,
        json!({ "role": "token-signing", "version": 2, "label": "signet:token-signing:v2" })
    );
    assert_eq!(events[5].subject, old_kid);
    let out = t.verify(&["--profile", profile, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout_json(&out)["records"], 6);
}

#[test]
fn audit_verify_refuses_a_missing_store_and_bad_usage() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nothing-here");
    let out = signet(&["audit", "verify", "--data-dir", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no signet store"), "{}", stderr(&out));
    assert!(!missing.exists(), "verify must not create a store");

    let out = signet(&["audit", "verify"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));

    let not_pem = dir.path().join("key.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let out = signet(&[
        "audit",
        "verify",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--checkpoint-key",
        not_pem.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no PEM public key"),
        "{}",
        stderr(&out)
    );
}
