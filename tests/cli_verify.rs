//! `signet verify` and `signet speed`, driven as a support engineer would:
//! the real binary on the shared WebAuthn vectors, given what a browser's
//! `toJSON()` would have produced for each.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/vectors/");

fn vector_path(name: &str) -> PathBuf {
    let path = PathBuf::from(VECTORS).join(name);
    assert!(
        path.exists(),
        "test vector {} is missing: these tests need the shared corpus at {VECTORS}",
        path.display()
    );
    path
}

fn vector(name: &str) -> Value {
    let path = vector_path(name);
    let text = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("reading test vector {}: {e}", path.display()));
    serde_json::from_slice(&text)
        .unwrap_or_else(|e| panic!("test vector {} is not JSON: {e}", path.display()))
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("vector has no string {key:?}"))
}

/// What `PublicKeyCredential.toJSON()` returns for the ceremony in `v`.
fn browser_json(v: &Value) -> Vec<u8> {
    let mut response = json!({ "clientDataJSON": v["clientDataJSON"] });
    if v["kind"] == "registration" {
        response["attestationObject"] = v["attestationObject"].clone();
    } else {
        response["authenticatorData"] = v["authenticatorData"].clone();
        response["signature"] = v["signature"].clone();
        if v["userHandle"].is_string() {
            response["userHandle"] = v["userHandle"].clone();
        }
    }
    serde_json::to_vec(&json!({
        "id": v["credentialId"],
        "rawId": v["credentialId"],
        "type": "public-key",
        "response": response,
        "clientExtensionResults": {},
    }))
    .unwrap()
}

fn signet(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_signet"))
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        // The child may refuse early and close its end; that is its answer.
        let _ = child.stdin.take().unwrap().write_all(input);
    }
    child.wait_with_output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn verdict(out: &Output) -> Value {
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// A rejection: exit 1 and exactly one line, `signet: <field>: <reason>`.
fn rejection(out: &Output) -> String {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(
        out.stdout.is_empty(),
        "stdout on rejection: {:?}",
        out.stdout
    );
    assert_eq!(err.lines().count(), 1, "not one line: {err:?}");
    assert!(err.starts_with("signet: "), "{err}");
    err
}

/// A vector's browser JSON in a temporary file, kept alive by the returned guard.
struct Input {
    _dir: tempfile::TempDir,
    path: String,
}

fn input(v: &Value) -> Input {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("credential.json");
    std::fs::write(&path, browser_json(v)).unwrap();
    Input {
        path: path.to_str().unwrap().to_string(),
        _dir: dir,
    }
}

/// `verify registration` for a vector, with its own RP, origin and challenge.
fn register(v: &Value, file: &str, extra: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut args = vec![
        "verify",
        "registration",
        "--rp-id",
        text(v, "rpId"),
        "--origin",
        text(v, "origin"),
        "--challenge",
        text(v, "challenge"),
    ];
    args.extend_from_slice(extra);
    args.push(file);
    signet(&args, stdin)
}

fn assert_matches_vector(got: &Value, v: &Value) {
    for key in [
        "fmt",
        "aaguid",
        "credentialId",
        "credentialPublicKey",
        "signCount",
        "flags",
        "coseAlg",
    ] {
        assert_eq!(got[key], v[key], "{key}");
    }
}

#[test]
fn none_registration_reports_what_the_vector_says() {
    let v = vector("w3c/none-es256.registration.json");
    let file = input(&v);
    let got = verdict(&register(&v, &file.path, &[], None));
    assert_matches_vector(&got, &v);
    assert_eq!(got["attestationType"], "none");
    assert_eq!(got["trustPath"], json!([]));
    assert_eq!(got["anchored"], false);
}

#[test]
fn registration_from_stdin() {
    let v = vector("w3c/none-es256.registration.json");
    let got = verdict(&register(&v, "-", &[], Some(&browser_json(&v))));
    assert_matches_vector(&got, &v);
}

#[test]
fn mutated_challenge_is_refused_naming_the_field() {
    let v = vector("w3c/none-es256.registration.json");
    let file = input(&v);
    let mut other = text(&v, "challenge").to_string();
    let flipped = if other.starts_with('A') { "B" } else { "A" };
    other.replace_range(..1, flipped);
    let out = signet(
        &[
            "verify",
            "registration",
            "--rp-id",
            "example.org",
            "--origin",
            "https://example.org",
            "--challenge",
            &other,
            &file.path,
        ],
        None,
    );
    let err = rejection(&out);
    assert!(
        err.starts_with("signet: response.clientDataJSON.challenge: "),
        "{err}"
    );
}

#[test]
fn wrong_origin_is_refused_naming_the_field() {
    let v = vector("w3c/none-es256.registration.json");
    let file = input(&v);
    let out = signet(
        &[
            "verify",
            "registration",
            "--rp-id",
            "example.org",
            "--origin",
            "https://example.org.evil.example",
            "--challenge",
            text(&v, "challenge"),
            &file.path,
        ],
        None,
    );
    let err = rejection(&out);
    assert!(
        err.starts_with("signet: response.clientDataJSON.origin: "),
        "{err}"
    );
}

#[test]
fn several_origins_any_one_matches() {
    let v = vector("w3c/none-es256.registration.json");
    let file = input(&v);
    let out = signet(
        &[
            "verify",
            "registration",
            "--rp-id",
            "example.org",
            "--origin",
            "https://login.example.org",
            "--origin",
            "https://example.org",
            "--challenge",
            text(&v, "challenge"),
            &file.path,
        ],
        None,
    );
    verdict(&out);
}

#[test]
fn cross_origin_needs_the_flag() {
    let v = vector("w3c/none-es256-crossOrigin.registration.json");
    let file = input(&v);
    let err = rejection(&register(&v, &file.path, &[], None));
    assert!(
        err.starts_with("signet: response.clientDataJSON.crossOrigin: "),
        "{err}"
    );
    let got = verdict(&register(&v, &file.path, &["--allow-cross-origin"], None));
    assert_matches_vector(&got, &v);
}

#[test]
fn require_uv_refuses_a_ceremony_without_uv() {
    let v = vector("w3c/none-es256.registration.json");
    let file = input(&v);
    let err = rejection(&register(&v, &file.path, &["--require-uv"], None));
    assert!(err.contains(".flags.UV: "), "{err}");
}

#[test]
fn usage_errors_exit_2() {
    let v = vector("w3c/none-es256.registration.json");
    let file = input(&v);
    for extra in [
        &["--no-such-flag"][..],
        &["--challenge-typo", "x"],
        &["--root"],
    ] {
        let out = register(&v, &file.path, extra, None);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {}", stderr(&out));
    }
    // A challenge that is not base64url is a usage error too.
    let out = signet(
        &[
            "verify",
            "registration",
            "--rp-id",
            "example.org",
            "--origin",
            "https://example.org",
            "--challenge",
            "not base64!",
            &file.path,
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    // --origin is required.
    let out = signet(
        &[
            "verify",
            "registration",
            "--rp-id",
            "example.org",
            "--challenge",
            "AQID",
            &file.path,
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = signet(&["verify", "assertion", "--credential-key", "AQID"], None);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn unreadable_and_oversized_input_is_one_line() {
    let v = vector("w3c/none-es256.registration.json");
    let err = rejection(&register(&v, "/nonexistent/credential.json", &[], None));
    assert!(err.contains("/nonexistent/credential.json"), "{err}");
    let big = vec![b' '; 1024 * 1024 + 1];
    let err = rejection(&register(&v, "-", &[], Some(&big)));
    assert!(err.starts_with("signet: stdin: larger than"), "{err}");
    let err = rejection(&register(&v, "-", &[], Some(b"[]")));
    assert!(err.starts_with("signet: credential: "), "{err}");
}

fn assertion_args<'a>(v: &'a Value, key: &'a str) -> Vec<&'a str> {
    vec![
        "verify",
        "assertion",
        "--rp-id",
        text(v, "rpId"),
        "--origin",
        text(v, "origin"),
        "--challenge",
        text(v, "challenge"),
        "--credential-key",
        key,
    ]
}

#[test]
fn none_assertion_verifies_with_the_registered_key() {
    let reg = vector("w3c/none-es256.registration.json");
    let v = vector("w3c/none-es256.authentication.json");
    let file = input(&v);
    let mut args = assertion_args(&v, text(&reg, "credentialPublicKey"));
    args.extend(["--backup-eligible", &file.path]);
    let got = verdict(&signet(&args, None));
    assert_eq!(got["credentialId"], v["credentialId"]);
    assert_eq!(got["signCount"], v["signCount"]);
    assert_eq!(got["flags"], v["flags"]);
    assert_eq!(got["userVerified"], v["flags"]["UV"]);
    assert_eq!(got["backupState"], v["flags"]["BS"]);

    // The same through stdin.
    let mut args = assertion_args(&v, text(&reg, "credentialPublicKey"));
    args.extend(["--backup-eligible", "-"]);
    assert_eq!(verdict(&signet(&args, Some(&browser_json(&v)))), got);
}

#[test]
fn assertion_refusals_name_their_field() {
    let reg = vector("w3c/none-es256.registration.json");
    let v = vector("w3c/none-es256.authentication.json");
    let file = input(&v);
    let key = text(&reg, "credentialPublicKey");
    let cases: [(&[&str], &str); 4] = [
        // BE was set at registration; claiming it was not is a change.
        (&[], "response.authenticatorData.flags.BE"),
        (
            &["--backup-eligible", "--sign-count", "5"],
            "response.authenticatorData.signCount",
        ),
        (
            &["--backup-eligible", "--user-handle", "AQID"],
            "response.userHandle",
        ),
        (
            &["--backup-eligible", "--require-uv"],
            "response.authenticatorData.flags.UV",
        ),
    ];
    for (extra, field) in cases {
        let mut args = assertion_args(&v, key);
        args.extend_from_slice(extra);
        args.push(&file.path);
        let err = rejection(&signet(&args, None));
        assert!(
            err.starts_with(&format!("signet: {field}: ")),
            "{extra:?}: {err}"
        );
    }
    // Another credential's key: the signature does not verify.
    let other = vector("w3c/packed-es256.registration.json");
    let mut args = assertion_args(&v, text(&other, "credentialPublicKey"));
    args.extend(["--backup-eligible", &file.path]);
    let err = rejection(&signet(&args, None));
    assert!(err.starts_with("signet: response.signature: "), "{err}");
}

#[test]
fn packed_registration_anchors_only_to_its_root() {
    let v = vector("w3c/packed-es256.registration.json");
    let file = input(&v);
    let at = text(&v, "verify_time");
    let root = vector_path("w3c/attestation_ca_cert.pem");
    let root = root.to_str().unwrap();

    let got = verdict(&register(
        &v,
        &file.path,
        &["--root", root, "--at", at],
        None,
    ));
    assert_matches_vector(&got, &v);
    assert_eq!(got["anchored"], true);
    // Packed cannot tell Basic from AttCA; the engine may report either.
    assert!(
        ["basic", "attca"].contains(&got["attestationType"].as_str().unwrap_or("")),
        "{got}"
    );
    assert_eq!(got["verifiedAt"], at);
    let path = got["trustPath"].as_array().unwrap();
    assert_eq!(path.len(), 1, "{path:?}");
    assert!(
        path[0]
            .as_str()
            .unwrap()
            .contains("CN=WebAuthn test vectors"),
        "{path:?}"
    );

    // Without roots the statement is still verified, but nothing is anchored.
    let got = verdict(&register(&v, &file.path, &["--at", at], None));
    assert_matches_vector(&got, &v);
    assert_eq!(got["anchored"], false);

    // A root the chain does not lead to is a rejection.
    let apple = vector_path("devices/roots/apple-webauthn-root-ca.pem");
    rejection(&register(
        &v,
        &file.path,
        &["--root", apple.to_str().unwrap(), "--at", at],
        None,
    ));
}

#[test]
fn roots_must_be_pem_certificates() {
    let v = vector("w3c/none-es256.registration.json");
    let file = input(&v);
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "no certificate here\n").unwrap();
    let err = rejection(&register(
        &v,
        &file.path,
        &["--root", empty.to_str().unwrap()],
        None,
    ));
    assert!(err.starts_with("signet: --root "), "{err}");
    let key = dir.path().join("key.pem");
    std::fs::write(
        &key,
        "-----BEGIN PRIVATE KEY-----\nAQID\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let err = rejection(&register(
        &v,
        &file.path,
        &["--root", key.to_str().unwrap()],
        None,
    ));
    assert!(err.contains("not a CERTIFICATE"), "{err}");
    // A root file is read with a bound, not whole: a wrong path (a disk
    // image, a log) is refused with a size error instead of filling memory.
    let huge = dir.path().join("huge.pem");
    std::fs::write(&huge, vec![b'A'; 1024 * 1024 + 1]).unwrap();
    let err = rejection(&register(
        &v,
        &file.path,
        &["--root", huge.to_str().unwrap()],
        None,
    ));
    assert!(err.starts_with("signet: --root "), "{err}");
    assert!(err.contains("larger than 1048576 bytes"), "{err}");
    // Several certificates in one file, with text around them, are all read.
    let ca = std::fs::read_to_string(vector_path("w3c/attestation_ca_cert.pem")).unwrap();
    let apple =
        std::fs::read_to_string(vector_path("devices/roots/apple-webauthn-root-ca.pem")).unwrap();
    let bundle = dir.path().join("bundle.pem");
    std::fs::write(&bundle, format!("W3C test CA\n{ca}\nApple\n{apple}")).unwrap();
    verdict(&register(
        &v,
        &file.path,
        &["--root", bundle.to_str().unwrap()],
        None,
    ));
}

/// The `--at` parser, seen through the time the verdict reports.
#[test]
fn at_is_strict_rfc3339() {
    let v = vector("w3c/none-es256.registration.json");
    let file = input(&v);
    for (given, reported) in [
        ("2025-01-01T00:00:00Z", "2025-01-01T00:00:00Z"),
        ("2024-02-29T23:30:00.25-01:00", "2024-03-01T00:30:00.25Z"),
        ("2000-03-01t00:00:00+05:30", "2000-02-29T18:30:00Z"),
        ("1969-12-31T23:59:59.5z", "1969-12-31T23:59:59.5Z"),
        (
            "1970-01-01T00:00:00.123456789123Z",
            "1970-01-01T00:00:00.123456789Z",
        ),
        ("2021-04-11T13:37:18-00:00", "2021-04-11T13:37:18Z"),
        ("9999-12-31T23:59:59Z", "9999-12-31T23:59:59Z"),
        ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00Z"),
    ] {
        let got = verdict(&register(&v, &file.path, &["--at", given], None));
        assert_eq!(got["verifiedAt"], reported, "{given}");
    }
    for bad in [
        "",
        "2025-01-01",
        "2025-01-01T00:00:00",
        "2025-01-01 00:00:00Z",
        "2025-1-01T00:00:00Z",
        "25-01-01T00:00:00Z",
        "2025-13-01T00:00:00Z",
        "2025-00-01T00:00:00Z",
        "2025-04-31T00:00:00Z",
        "2023-02-29T00:00:00Z",
        "1900-02-29T00:00:00Z",
        "2025-01-01T24:00:00Z",
        "2025-01-01T00:60:00Z",
        "2025-12-31T23:59:60Z",
        "2025-01-01T00:00:00.Z",
        "2025-01-01T00:00:00+0100",
        "2025-01-01T00:00:00+24:00",
        "2025-01-01T00:00:00Z ",
        "2025-01-01T00:00:00ZZ",
        "+2025-01-01T00:00:00Z",
        "2025-01-01T00:00Z",
        "２025-01-01T00:00:00Z",
    ] {
        let out = register(&v, &file.path, &["--at", bad], None);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("--at"), "{bad:?}: {}", stderr(&out));
    }
}

#[test]
fn speed_reports_three_rates() {
    let out = signet(&["speed", "--seconds", "1", "--json"], None);
    let got = verdict(&out);
    for key in [
        "assertion_verify_per_s",
        "registration_verify_per_s",
        "floor_p256_verify_per_s",
    ] {
        let rate = got[key].as_f64().unwrap_or_else(|| panic!("{key}: {got}"));
        assert!(rate > 0.0, "{key}: {got}");
    }
    assert!(got["assertion_ratio"].as_f64().is_some(), "{got}");
    assert!(got["registration_ratio"].as_f64().is_some(), "{got}");
    assert!(got["seconds"].as_f64().is_some_and(|s| s > 0.0), "{got}");
}
