//! `signet authenticator` on its own (no server): what it answers, what it
//! keeps, and every input it refuses without touching its state. The README
//! tour (tests/readme_tour.rs) shows signet accepting what it answers.

#![cfg(feature = "testkit")]

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::{Value, json};
use signet::webauthn::b64url;

/// Runs `signet authenticator ARGS` with `stdin`: (exit code, stdout, stderr).
fn authenticator(args: &[&str], state: &Path, stdin: &str) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_signet"))
        .arg("authenticator")
        .args(args)
        .arg("--state")
        .arg(state)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run signet authenticator");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn creation_answer() -> Value {
    json!({
        "ceremonyId": "c-1",
        "publicKey": {
            "rp": {"id": "localhost", "name": "dev"},
            "user": {"id": b64url(b"user-handle-1"), "name": "alice@example.com", "displayName": "Alice"},
            "challenge": b64url(&[1; 32]),
            "pubKeyCredParams": [{"type": "public-key", "alg": -7}],
        }
    })
}

fn request(allow: Option<&str>, rp_id: &str) -> Value {
    let allow: Vec<Value> = allow
        .map(|id| json!({"type": "public-key", "id": id}))
        .into_iter()
        .collect();
    json!({
        "ceremonyId": "c-2",
        "publicKey": {"challenge": b64url(&[2; 32]), "rpId": rp_id, "allowCredentials": allow}
    })
}

fn state_of(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).expect("read state")).expect("state JSON")
}

fn client_data(credential: &Value) -> Value {
    let text = credential["response"]["clientDataJSON"]
        .as_str()
        .expect("clientDataJSON");
    let bytes = signet::webauthn::b64url_decode("clientDataJSON", text, 4096).expect("b64url");
    serde_json::from_slice(&bytes).expect("client data JSON")
}

#[test]
fn create_answers_the_ceremony_and_keeps_the_credential_private() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("alice.json");
    let (code, stdout, stderr) = authenticator(&["create"], &state, &creation_answer().to_string());
    assert_eq!(code, 0, "{stderr}");
    let body: Value = serde_json::from_str(&stdout).expect("JSON body");
    assert_eq!(body["ceremonyId"], "c-1");
    let credential = &body["credential"];
    assert_eq!(credential["type"], "public-key");
    assert_eq!(credential["id"], credential["rawId"]);
    assert!(credential["response"]["attestationObject"].is_string());
    let cd = client_data(credential);
    assert_eq!(cd["type"], "webauthn.create");
    assert_eq!(cd["origin"], "https://localhost");
    assert_eq!(cd["challenge"], b64url(&[1; 32]));
    assert!(stderr.contains("alice@example.com"), "{stderr}");

    let mode = std::fs::metadata(&state)
        .expect("state")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the state file holds a private key");
    let kept = state_of(&state);
    assert_eq!(kept["format"], "signet-soft-authenticator/1");
    assert_eq!(kept["credentialId"], credential["id"]);
    assert_eq!(kept["userHandle"], b64url(b"user-handle-1"));
    assert_eq!(kept["signCount"], 0);

    // A second create never overwrites a credential.
    let before = std::fs::read(&state).expect("read");
    let (code, _, stderr) = authenticator(&["create"], &state, &creation_answer().to_string());
    assert_eq!(code, 1);
    assert!(stderr.contains("exists"), "{stderr}");
    assert_eq!(std::fs::read(&state).expect("read"), before);

    // packed self attestation, another origin
    let other = dir.path().join("bob.json");
    let (code, stdout, stderr) = authenticator(
        &[
            "create",
            "--attestation",
            "packed",
            "--origin",
            "https://localhost:8443",
        ],
        &other,
        &creation_answer()["publicKey"].to_string(),
    );
    assert_eq!(code, 0, "{stderr}");
    let body: Value = serde_json::from_str(&stdout).expect("JSON body");
    assert!(body.get("ceremonyId").is_none(), "bare options: {body}");
    assert_eq!(
        client_data(&body["credential"])["origin"],
        "https://localhost:8443"
    );
    assert!(stderr.contains("packed attestation"), "{stderr}");
}

#[test]
fn get_signs_only_for_its_credential_and_never_reuses_a_counter() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("alice.json");
    let (code, stdout, stderr) = authenticator(&["create"], &state, &creation_answer().to_string());
    assert_eq!(code, 0, "{stderr}");
    let created: Value = serde_json::from_str(&stdout).expect("JSON");
    let id = created["credential"]["id"]
        .as_str()
        .expect("id")
        .to_string();

    for expected in [1, 2] {
        let (code, stdout, stderr) = authenticator(
            &["get"],
            &state,
            &request(Some(&id), "localhost").to_string(),
        );
        assert_eq!(code, 0, "{stderr}");
        let body: Value = serde_json::from_str(&stdout).expect("JSON");
        assert_eq!(body["ceremonyId"], "c-2");
        assert_eq!(body["credential"]["id"], id);
        assert_eq!(
            body["credential"]["response"]["userHandle"],
            b64url(b"user-handle-1")
        );
        let cd = client_data(&body["credential"]);
        assert_eq!(cd["type"], "webauthn.get");
        assert_eq!(cd["origin"], "https://localhost", "the origin create used");
        assert_eq!(state_of(&state)["signCount"], expected);
    }
    // A discoverable request (no allow list) and a transaction (no ceremonyId).
    let bare = json!({"transactionId": "t", "publicKey": {"challenge": b64url(&[3; 32])}});
    let (code, stdout, stderr) = authenticator(&["get"], &state, &bare.to_string());
    assert_eq!(code, 0, "{stderr}");
    let body: Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(body.as_object().map(|o| o.len()), Some(1), "{body}");
    assert_eq!(state_of(&state)["signCount"], 3);

    // Refusals name the member and leave the counter alone.
    let other = b64url(b"another credential");
    let mut no_challenge = request(None, "localhost");
    no_challenge["publicKey"]
        .as_object_mut()
        .expect("object")
        .remove("challenge");
    for (input, named) in [
        (
            request(Some(&other), "localhost"),
            "publicKey.allowCredentials",
        ),
        (request(None, "bank.example"), "publicKey.rpId"),
        (no_challenge, "publicKey.challenge"),
        (json!({"ceremonyId": "c"}), "not WebAuthn options"),
        (
            json!({"type": "urn:signet:problem:step-up-required", "status": 403}),
            "signet answered a problem",
        ),
    ] {
        let (code, stdout, stderr) = authenticator(&["get"], &state, &input.to_string());
        assert_eq!(code, 1, "{input}: {stdout}");
        assert!(stdout.is_empty(), "{input}: {stdout}");
        assert!(stderr.contains(named), "{input}: {stderr}");
        assert_eq!(state_of(&state)["signCount"], 3);
    }
    let (code, _, stderr) = authenticator(&["get"], &state, "not json");
    assert_eq!(code, 1);
    assert!(stderr.contains("stdin: not JSON"), "{stderr}");

    // A state file that is not one, or is missing, is named.
    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, r#"{"format": "something-else/1"}"#).expect("write");
    let (code, _, stderr) =
        authenticator(&["get"], &broken, &request(None, "localhost").to_string());
    assert_eq!(code, 1);
    assert!(stderr.contains("broken.json"), "{stderr}");
    let missing = dir.path().join("missing.json");
    let (code, _, stderr) =
        authenticator(&["get"], &missing, &request(None, "localhost").to_string());
    assert_eq!(code, 1);
    assert!(stderr.contains("missing.json"), "{stderr}");
}
