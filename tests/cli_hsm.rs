//! The officer's CLI, driven as an officer would: the real `signet` binary on
//! a token made by `scripts/softhsm-init`, cross-checked with OpenSC's
//! `pkcs11-tool`, which knows nothing of signet.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

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
    fn home(&self) -> PathBuf {
        self.dir.path().join("hsm")
    }
    fn profile(&self) -> PathBuf {
        self.home().join("profile.toml")
    }
    fn signet(&self, args: &[&str]) -> Output {
        let mut all: Vec<&str> = args.to_vec();
        let profile = self.profile();
        all.push("--profile");
        all.push(profile.to_str().unwrap());
        signet(&all)
    }
    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.signet(&all);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn signet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_signet"))
        .args(args)
        .env_remove("SOFTHSM2_CONF")
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn openssl(args: &[&str], input: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn officer_provisions_lists_rotates_retires_and_exports() {
    let t = Token::new();
    let first = t.signet(&["hsm", "init"]);
    assert!(first.status.success(), "{}", stderr(&first));
    let text = String::from_utf8_lossy(&first.stdout);
    assert!(text.contains("4 created, 0 already present"), "{text}");
    let again = t.json(&["hsm", "init"]);
    assert_eq!(again["created"].as_array().unwrap().len(), 0);
    assert_eq!(again["existing"].as_array().unwrap().len(), 4);

    let keys = t.json(&["hsm", "list"]);
    let keys = keys.as_array().unwrap();
    assert_eq!(keys.len(), 4);
    for k in keys {
        assert_eq!(k["status"], "active", "{k}");
        assert_eq!(k["sensitive"], true, "{k}");
        assert_eq!(k["extractable"], false, "{k}");
        assert_eq!(k["never_extractable"], true, "{k}");
        assert_eq!(k["curve"], "P-256");
    }
    let table = String::from_utf8_lossy(&t.signet(&["hsm", "list"]).stdout).into_owned();
    assert!(
        table.contains("NEVER_EXTRACTABLE") && table.contains("signet:audit-checkpoint:v1"),
        "{table}"
    );

    // Rotation: v2 active, v1 verify-only; the active key cannot be retired.
    let old_kid = keys.iter().find(|k| k["role"] == "token-signing").unwrap()["kid"]
        .as_str()
        .unwrap()
        .to_string();
    let rotated = t.json(&["hsm", "rotate", "--role", "token-signing"]);
    assert_eq!(rotated["version"], 2);
    assert_eq!(rotated["status"], "active");
    let new_kid = rotated["kid"].as_str().unwrap().to_string();
    let refused = t.signet(&["hsm", "retire", "--kid", &new_kid]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains("rotate the role before retiring"),
        "{}",
        stderr(&refused)
    );
    let retired = t.json(&["hsm", "retire", "--kid", &old_kid]);
    assert_eq!(retired["status"], "retired");

    // Exports: the PEM, JWK and COSE forms all carry the new active key.
    let pem = String::from_utf8(
        t.signet(&["hsm", "export", "--role", "token-signing"])
            .stdout,
    )
    .unwrap();
    let parsed = openssl(&["pkey", "-pubin", "-noout", "-text"], &pem);
    assert!(
        parsed.status.success(),
        "openssl rejects the PEM: {}",
        stderr(&parsed)
    );
    assert!(String::from_utf8_lossy(&parsed.stdout).contains("prime256v1"));
    let jwk: Value = serde_json::from_slice(
        &t.signet(&[
            "hsm",
            "export",
            "--role",
            "token-signing",
            "--format",
            "jwk",
        ])
        .stdout,
    )
    .unwrap();
    assert_eq!(jwk["kid"], new_kid.as_str());
    assert_eq!(jwk["crv"], "P-256");
    let cose = t.signet(&[
        "hsm",
        "export",
        "--role",
        "token-encryption",
        "--format",
        "cose",
    ]);
    assert!(cose.status.success());
    assert!(!String::from_utf8_lossy(&cose.stdout).trim().is_empty());

    // A CSR and a certificate that openssl accepts and verifies.
    let csr = String::from_utf8(
        t.signet(&[
            "hsm",
            "csr",
            "--role",
            "approval-countersign",
            "--subject",
            "CN=signet approvals,O=Example Bank,C=CH",
        ])
        .stdout,
    )
    .unwrap();
    let verified = openssl(&["req", "-verify", "-noout", "-subject"], &csr);
    assert!(verified.status.success(), "CSR: {}", stderr(&verified));
    assert!(String::from_utf8_lossy(&verified.stdout).contains("signet approvals"));
    let cert = String::from_utf8(
        t.signet(&[
            "hsm",
            "self-cert",
            "--role",
            "audit-checkpoint",
            "--subject",
            "CN=signet audit",
            "--days",
            "30",
        ])
        .stdout,
    )
    .unwrap();
    let dir = t.dir.path();
    std::fs::write(dir.join("cert.pem"), &cert).unwrap();
    let ok = Command::new("openssl")
        .args(["verify", "-check_ss_sig", "-CAfile"])
        .arg(dir.join("cert.pem"))
        .arg(dir.join("cert.pem"))
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "self-cert: {}",
        String::from_utf8_lossy(&ok.stdout)
    );
    let enc_csr = t.signet(&[
        "hsm",
        "csr",
        "--role",
        "token-encryption",
        "--subject",
        "CN=x",
    ]);
    assert_eq!(enc_csr.status.code(), Some(1));
    assert!(
        stderr(&enc_csr).contains("cannot be used for signing"),
        "{}",
        stderr(&enc_csr)
    );
}

#[test]
fn pkcs11_tool_agrees_keys_are_sensitive_and_never_extractable() {
    let t = Token::new();
    assert!(t.signet(&["hsm", "init"]).status.success());
    let pin = std::fs::read_to_string(t.home().join("pin")).unwrap();
    let out = Command::new("pkcs11-tool")
        .args([
            "--module",
            "/usr/lib/softhsm/libsofthsm2.so",
            "--token-label",
            "signet",
            "--login",
        ])
        .args([
            "--pin",
            "env:SIGNET_TEST_PIN",
            "--list-objects",
            "--type",
            "privkey",
        ])
        .env("SIGNET_TEST_PIN", pin.trim())
        .env("SOFTHSM2_CONF", t.home().join("softhsm2.conf"))
        .output()
        .unwrap();
    assert!(out.status.success(), "pkcs11-tool: {}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let objects: Vec<&str> = text.split("Private Key Object").skip(1).collect();
    assert_eq!(objects.len(), 4, "{text}");
    for o in objects {
        assert!(o.contains("label:      signet:"), "{o}");
        // Least privilege, as the token itself reports it.
        let usage = o
            .lines()
            .find(|l| l.trim_start().starts_with("Usage:"))
            .unwrap()
            .trim();
        if o.contains("signet:token-encryption:") {
            assert_eq!(usage, "Usage:      derive", "{o}");
        } else {
            assert_eq!(usage, "Usage:      sign", "{o}");
        }
        assert!(o.contains("sensitive"), "not sensitive: {o}");
        assert!(o.contains("never extractable"), "extractable: {o}");
        assert!(o.contains("local"), "not generated on the token: {o}");
    }
}

#[test]
fn officer_errors_are_one_clear_line() {
    let t = Token::new();
    let home = t.home();
    let profile_text = std::fs::read_to_string(t.profile()).unwrap();
    let write_profile = |name: &str, text: String| -> PathBuf {
        let p = home.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let run = |profile: &Path| signet(&["hsm", "list", "--profile", profile.to_str().unwrap()]);
    let one_line = |out: &Output, needle: &str| {
        assert_eq!(out.status.code(), Some(1), "{}", stderr(out));
        let err = stderr(out);
        assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
        assert!(err.contains(needle), "{needle:?} not in {err}");
    };

    // Wrong PIN: named, never echoed.
    let bad_pin = home.join("bad-pin");
    std::fs::write(&bad_pin, "123456789-wrong").unwrap();
    std::fs::set_permissions(&bad_pin, std::fs::Permissions::from_mode(0o600)).unwrap();
    let p = write_profile(
        "wrong-pin.toml",
        profile_text.replace(
            &format!("{}/pin", home.display()),
            bad_pin.to_str().unwrap(),
        ),
    );
    let out = run(&p);
    one_line(&out, "wrong PIN");
    assert!(!stderr(&out).contains("123456789-wrong"));

    // PIN file too open.
    std::fs::set_permissions(&bad_pin, std::fs::Permissions::from_mode(0o644)).unwrap();
    one_line(&run(&p), "chmod 600");

    // Token not found: the present ones are listed.
    let p = write_profile(
        "no-token.toml",
        profile_text.replace("token_label = \"signet\"", "token_label = \"missing\""),
    );
    let out = run(&p);
    one_line(&out, "token not found");
    assert!(stderr(&out).contains("\"signet\""), "{}", stderr(&out));

    // Module not found.
    let p = write_profile(
        "no-module.toml",
        profile_text.replace("/usr/lib/softhsm/libsofthsm2.so", "/opt/none/libpkcs11.so"),
    );
    one_line(&run(&p), "/opt/none/libpkcs11.so");

    // Unreadable PIN file.
    let p = write_profile(
        "no-pin.toml",
        profile_text.replace(&format!("{}/pin", home.display()), "/nonexistent/pin"),
    );
    one_line(&run(&p), "/nonexistent/pin");

    // TPM unreachable.
    let p = write_profile(
        "tpm.toml",
        format!(
            "backend = \"tpm\"\n[tpm]\ntcti = \"swtpm:host=127.0.0.1,port=1\"\nkey_dir = \"{}/tpm-keys\"\n",
            home.display()
        ),
    );
    one_line(&run(&p), "TPM unreachable");

    // Unknown role and bad kid are usage errors (exit 2).
    let profile = t.profile();
    let out = signet(&[
        "hsm",
        "rotate",
        "--profile",
        profile.to_str().unwrap(),
        "--role",
        "master-key",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("unknown role"), "{}", stderr(&out));
    let out = signet(&[
        "hsm",
        "retire",
        "--profile",
        profile.to_str().unwrap(),
        "--kid",
        "nope",
    ]);
    assert_eq!(out.status.code(), Some(2));
    // Unknown kid of the right shape: a runtime error naming it.
    let out = signet(&[
        "hsm",
        "retire",
        "--profile",
        profile.to_str().unwrap(),
        "--kid",
        "AAAAAAAAAAAAAAAAAAAAAA",
    ]);
    one_line(&out, "no key with kid AAAAAAAAAAAAAAAAAAAAAA");
}

#[test]
fn the_same_four_keys_on_swtpm_through_the_profile_swtpm_up_writes() {
    let dir = tempfile::tempdir().unwrap();
    let tpm = dir.path().join("tpm");
    let up = Command::new(repo().join("scripts/swtpm-up"))
        .arg(&tpm)
        .output()
        .unwrap();
    assert!(up.status.success(), "swtpm-up: {}", stderr(&up));
    let down = || {
        Command::new(repo().join("scripts/swtpm-down"))
            .arg(&tpm)
            .output()
            .unwrap()
    };
    let profile = tpm.join("profile.toml");
    let run = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--profile", profile.to_str().unwrap(), "--json"]);
        signet(&all)
    };
    let init = run(&["hsm", "init"]);
    let list = run(&["hsm", "list"]);
    let stopped = down();
    assert!(init.status.success(), "init: {}", stderr(&init));
    assert!(list.status.success(), "list: {}", stderr(&list));
    assert!(stopped.status.success(), "swtpm-down: {}", stderr(&stopped));
    let keys: Value = serde_json::from_slice(&list.stdout).unwrap();
    let keys = keys.as_array().unwrap();
    let mut roles: Vec<_> = keys.iter().map(|k| k["role"].as_str().unwrap()).collect();
    roles.sort();
    assert_eq!(
        roles,
        [
            "approval-countersign",
            "audit-checkpoint",
            "token-encryption",
            "token-signing"
        ]
    );
    for k in keys {
        assert_eq!(k["sensitive"], true, "{k}");
        assert_eq!(k["never_extractable"], true, "{k}");
        assert_eq!(k["extractable"], false, "{k}");
        assert_eq!(k["status"], "active");
    }
    // The swtpm is gone: the CLI says so in one line.
    let gone = run(&["hsm", "list"]);
    assert_eq!(gone.status.code(), Some(1));
    assert!(
        stderr(&gone).contains("TPM unreachable"),
        "{}",
        stderr(&gone)
    );
}
