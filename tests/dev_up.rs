//! `scripts/dev-up` from a clean directory: it provisions, starts signet,
//! and the curl command it prints works, and so (with the testkit feature)
//! does the `signet device-sim` command it prints. Rerunning it restarts
//! the server on the same state.

mod common;

use std::process::Command;

use common::dev_up::{DevUp, free_port};

#[test]
fn dev_up_starts_a_server_the_printed_curl_reaches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let mut up = DevUp::start(dir.path(), port, &[] as &[&str]);
    let stdout = up.stdout.clone();
    let curl = stdout
        .lines()
        .rfind(|l| l.starts_with("curl "))
        .unwrap_or_else(|| panic!("no curl line in:\n{stdout}"));
    assert!(
        curl.contains(&format!("https://localhost:{port}/")),
        "{curl}"
    );
    let run = |cmd: &str| {
        let out = Command::new("bash")
            .args(["-c", cmd])
            .output()
            .expect("curl");
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON answer");
        v
    };
    let answer = run(curl);
    assert!(answer["ceremonyId"].is_string(), "{answer}");
    assert_eq!(answer["publicKey"]["rp"]["id"], "localhost");
    // serve refuses root unless told: dev-up tells it, and says so, only
    // when it runs as root.
    assert_eq!(
        stdout.contains("signet serve gets --allow-root"),
        signet::process::euid() == 0,
        "{stdout}"
    );

    // Rerun: the first server is stopped, a new one serves the same store.
    let first_pid = up.pid("signet.pid").expect("pid");
    let stdout = up.rerun(&[] as &[&str]).to_string();
    assert!(stdout.contains("stop the running signet"), "{stdout}");
    let second_pid = up.pid("signet.pid").expect("pid");
    assert_ne!(first_pid, second_pid);
    let answer = run(curl);
    assert!(answer["ceremonyId"].is_string(), "{answer}");

    #[cfg(feature = "testkit")]
    device_sim::binds_a_device(&stdout, dir.path(), port);

    // Without a client certificate the same URL is refused in the handshake.
    let no_cert = format!(
        "curl -sS --cacert {}/pki/ca.pem https://localhost:{port}/healthz",
        dir.path().display()
    );
    let out = Command::new("bash")
        .args(["-c", &no_cert])
        .output()
        .expect("curl");
    assert!(!out.status.success(), "served without a client certificate");
}

/// `signet device-sim` against the dev-up server: the command dev-up
/// prints binds a device, `--json` says so in JSON, and a dev directory
/// without the pinned keys is refused naming them.
#[cfg(feature = "testkit")]
mod device_sim {
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;
    use std::process::{Command, Output};

    fn text(out: &Output) -> String {
        format!(
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    fn sim(server: &str, dev_dir: &Path, extra: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_signet"))
            .args(["device-sim", "--server", server, "--dev-dir"])
            .arg(dev_dir)
            .args(extra)
            .output()
            .expect("run signet device-sim")
    }

    pub fn binds_a_device(dev_up_stdout: &str, dir: &Path, port: u16) {
        // dev-up prints DIR resolved (pwd -P).
        let dir = &std::fs::canonicalize(dir).expect("dev dir");
        let server = format!("https://localhost:{port}");
        // The keys dev-up exported (pinned by apps, or checking receipts):
        // readable by anyone, one SPKI each.
        let keys = dir.join("keys");
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&keys), 0o755);
        for role in ["token-signing", "token-encryption", "approval-countersign"] {
            let pem = keys.join(format!("{role}.pem"));
            assert_eq!(mode(&pem), 0o644, "{}", pem.display());
            let text = std::fs::read_to_string(&pem).expect("pinned key");
            assert!(text.starts_with("-----BEGIN PUBLIC KEY-----"), "{text}");
            assert!(
                dev_up_stdout.contains(&pem.display().to_string()),
                "{dev_up_stdout}"
            );
        }

        // The command dev-up printed, as printed.
        let command = dev_up_stdout
            .lines()
            .rfind(|l| l.contains(" device-sim --server "))
            .unwrap_or_else(|| panic!("no device-sim line in:\n{dev_up_stdout}"));
        assert!(
            command.ends_with(&format!(
                " device-sim --server {server} --dev-dir {}",
                dir.display()
            )),
            "{command}"
        );
        let out = Command::new("bash")
            .args(["-c", command])
            .output()
            .expect("run the printed device-sim command");
        assert!(out.status.success(), "{}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let last = stdout.lines().last().unwrap_or_default();
        let bound = last
            .strip_prefix("device-sim: device ")
            .and_then(|rest| rest.split_once(" is bound (credential "))
            .and_then(|(device, rest)| {
                let (credential, user) = rest.strip_suffix(')')?.split_once(", user ")?;
                Some((device, credential, user))
            });
        let Some((device, credential, user)) = bound else {
            panic!("last line is not the bound line: {last:?}\n{}", text(&out));
        };
        assert!(!device.is_empty() && !credential.is_empty(), "{last}");
        assert!(
            user.starts_with("device-sim-") && user.ends_with("@example.com"),
            "{last}"
        );
        for step in [
            "enroll",
            "verify identity",
            "open token",
            "check options",
            "register",
            "login",
        ] {
            assert!(
                stdout.contains(&format!("device-sim: {step}: ok")),
                "no {step} line:\n{stdout}"
            );
        }

        // --json: one object, for another user named on the command line.
        let out = sim(&server, dir, &["--json", "--user", "json-sim@example.com"]);
        assert!(out.status.success(), "{}", text(&out));
        let answer: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
        assert_eq!(answer["state"], "bound", "{answer}");
        assert_eq!(answer["user"], "json-sim@example.com", "{answer}");
        assert!(
            answer["deviceId"].as_str().is_some_and(|d| d != device),
            "{answer}"
        );
        assert!(answer["credentialId"].is_string(), "{answer}");
        assert!(
            answer["steps"].as_array().is_some_and(|s| s.len() >= 8),
            "{answer}"
        );

        // A dev directory with the client certificate but no pinned keys.
        let bare = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(bare.path().join("pki")).expect("mkdir");
        for name in ["ca.pem", "rp.pem", "rp.key"] {
            std::fs::copy(
                dir.join("pki").join(name),
                bare.path().join("pki").join(name),
            )
            .expect("copy");
        }
        let out = sim(&server, bare.path(), &[]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.starts_with("device-sim: dev dir: failed: "),
            "{stderr}"
        );
        assert!(stderr.contains("keys/token-signing.pem"), "{stderr}");
        assert!(stderr.contains("scripts/dev-up"), "{stderr}");
        assert!(out.stdout.is_empty(), "{}", text(&out));
    }
}
