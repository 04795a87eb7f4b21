//! `signet serve` as a process that holds secrets: no core dumps, the PIN
//! in no log at any level (nor in the store), and no start when a private
//! key, or a file that decides whom signet trusts, is open to others.

#![cfg(feature = "testkit")]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;
use signet::testkit::SoftAuthenticator;
use signet::webauthn::CoseAlgorithm;

use common::ceremony::{authenticate, register};
use common::server::{ORIGIN, RP_ID, SignetServer, allow_root_if_root, signet_bin, wait_timeout};
use common::softhsm::PIN;

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Every file below `dir`, recursively.
fn files_below(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            files_below(&path, out);
        } else {
            out.push(path);
        }
    }
}

#[test]
fn serve_runs_without_core_dumps() {
    let s = SignetServer::start();
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", s.pid())).expect("limits");
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .expect("core limit line");
    let fields: Vec<&str> = core.split_whitespace().collect();
    // "Max core file size  0  0  bytes": soft and hard limit.
    assert_eq!(&fields[4..6], ["0", "0"], "{core}");
}

#[test]
fn the_pin_reaches_no_log_at_any_level_nor_the_store() {
    // SAFETY: no other thread of this test process exists yet; the server
    // inherits the variable and RUST_LOG outranks the configured level.
    unsafe { std::env::set_var("RUST_LOG", "trace") };
    let mut s = SignetServer::start();
    let (status, answer, mut auth) = register(
        &s,
        &json!({"user": {"name": "alice"}}),
        SoftAuthenticator::new(CoseAlgorithm::Es256),
    );
    assert_eq!(status, 200, "{answer}");
    let (status, options) = s.post(
        "rp",
        "/v1/authentications/options",
        &json!({"user": {"name": "alice"}}),
    );
    assert_eq!(status, 200, "{options}");
    let (status, answer) = authenticate(&s, &options, &mut auth);
    assert_eq!(status, 200, "{answer}");
    // An approval signs its receipt in the HSM.
    let (status, tx) = s.post(
        "rp",
        "/v1/transactions",
        &json!({"user": {"name": "alice"},
                "details": {"type": "payment", "amount": "10.00", "currency": "CHF", "payee": "ACME"}}),
    );
    assert_eq!(status, 201, "{tx}");
    let credential = signet::testkit::browser::get(&mut auth, RP_ID, &tx["publicKey"], ORIGIN)
        .expect("assertion");
    let id = tx["transactionId"].as_str().expect("id");
    let (status, approved) = s.post(
        "rp",
        &format!("/v1/transactions/{id}/approval"),
        &json!({"credential": credential}),
    );
    assert_eq!(status, 200, "{approved}");
    // A restart logs in to the token again.
    s.restart();
    let (status, _) = s.get("monitor", "/readyz");
    assert_eq!(status, 200);
    let (status, log) = s.stop();
    assert!(status.success(), "{log}");
    assert!(
        log.contains("TRACE") || log.contains("\"level\":\"TRACE\""),
        "the server did not log at trace level:\n{log}"
    );
    assert!(!log.contains(PIN), "the PIN is in the log");

    let mut files = Vec::new();
    files_below(&s.data_dir(), &mut files);
    assert!(!files.is_empty());
    for file in files {
        let bytes = std::fs::read(&file).expect("read store file");
        assert!(
            !bytes.windows(PIN.len()).any(|w| w == PIN.as_bytes()),
            "the PIN is in {}",
            file.display()
        );
    }

    // Officer commands at trace level, too.
    for args in [
        vec!["hsm", "list"],
        vec![
            "hsm",
            "export",
            "--role",
            "token-signing",
            "--format",
            "pem",
        ],
    ] {
        let out = Command::new(signet_bin())
            .args(&args)
            .arg("--profile")
            .arg(s.hsm.profile_path())
            .args(["--log", "trace"])
            .output()
            .expect("run officer command");
        assert!(out.status.success(), "{args:?}: {out:?}");
        for stream in [&out.stdout, &out.stderr] {
            let text = String::from_utf8_lossy(stream);
            assert!(!text.contains(PIN), "{args:?} printed the PIN");
        }
    }
}

/// `signet serve --config CONFIG [--check]`: its exit code and stderr; a
/// serve that does not exit within 30 s is killed and reported as such.
fn serve(config: &Path, check: bool) -> (Option<i32>, String) {
    let mut cmd = Command::new(signet_bin());
    allow_root_if_root(&mut cmd);
    cmd.args(["serve", "--config"]).arg(config);
    if check {
        cmd.arg("--check");
    }
    run_serve(cmd)
}

/// Runs a prepared `signet serve` command: its exit code and stderr; one
/// that does not exit within 30 s is killed and reported as such.
fn run_serve(mut cmd: Command) -> (Option<i32>, String) {
    let mut child = cmd
        .env_remove("SIGNET_LISTEN")
        .env_remove("SIGNET_DATA_DIR")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn serve");
    let status = wait_timeout(&mut child, Duration::from_secs(30));
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut stderr);
    }
    (status.and_then(|s| s.code()), stderr)
}

#[test]
fn serve_refuses_keys_and_trust_files_open_to_others() {
    let mut s = SignetServer::start();
    let (status, log) = s.stop();
    assert!(status.success(), "{log}");
    let dir = s.dir().to_path_buf();
    let config = s.config.clone();
    assert_eq!(serve(&config, true).0, Some(0));

    // Group read of the key is allowed (root:signet 0640, as packaging/
    // installs it); so are files others may only read.
    chmod(&dir.join("pki/server.key"), 0o640);
    assert_eq!(serve(&config, true).0, Some(0));
    chmod(&dir.join("pki/server.key"), 0o600);

    let cases: [(&Path, u32, &str, &str); 5] = [
        (&dir.join("pki/server.key"), 0o644, "tls.key", "chmod 640"),
        (&config, 0o666, "config", "chmod go-w"),
        (
            &dir.join("pki/ca.pem"),
            0o664,
            "tls.client_ca",
            "chmod go-w",
        ),
        (&dir.join("pki/ca.crl"), 0o646, "tls.crls[0]", "chmod go-w"),
        (&s.hsm.profile_path(), 0o666, "keys.profile", "chmod go-w"),
    ];
    for (file, mode, key, fix) in cases {
        let before = std::fs::metadata(file).expect("stat").permissions().mode() & 0o777;
        chmod(file, mode);
        for check in [true, false] {
            let (code, stderr) = serve(&config, check);
            assert_eq!(code, Some(1), "{key} at {mode:o} (check {check}): {stderr}");
            assert!(
                stderr.contains(&format!("{key}: ")) && stderr.contains(fix),
                "{key}: {stderr}"
            );
        }
        chmod(file, before);
    }

    // The PIN file is read when the key device opens: serve refuses it.
    let pin = s.hsm.pin_file();
    chmod(&pin, 0o644);
    let (code, stderr) = serve(&config, false);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("PIN file") && stderr.contains("chmod 600"),
        "{stderr}"
    );
    chmod(&pin, 0o600);

    // All restored: it starts again.
    s.spawn();
    let (status, _) = s.get("monitor", "/readyz");
    assert_eq!(status, 200);
}

#[test]
fn serve_refuses_root_unless_told() {
    let mut s = SignetServer::start();
    let (status, log) = s.stop();
    assert!(status.success(), "{log}");
    let config = s.config.clone();
    // A PIN file others may read is refused only after the root check, so
    // its error shows that serve went past that check.
    let pin = s.hsm.pin_file();
    chmod(&pin, 0o644);
    let serve_as_is = |flag: Option<&str>, env: Option<&str>| {
        let mut cmd = Command::new(signet_bin());
        cmd.args(["serve", "--config"]).arg(&config);
        cmd.args(flag);
        match env {
            Some(v) => cmd.env("SIGNET_ALLOW_ROOT", v),
            None => cmd.env_remove("SIGNET_ALLOW_ROOT"),
        };
        run_serve(cmd)
    };
    let past_root_check = |(code, stderr): (Option<i32>, String)| {
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains("PIN file"), "{stderr}");
    };

    if signet::process::euid() == 0 {
        for env in [None, Some("0"), Some("false"), Some("no")] {
            let (code, stderr) = serve_as_is(None, env);
            assert_eq!(code, Some(1), "SIGNET_ALLOW_ROOT={env:?}: {stderr}");
            assert!(
                stderr.contains("refusing to run as root") && stderr.contains("--allow-root"),
                "{stderr}"
            );
            assert!(!stderr.contains("PIN file"), "{stderr}");
        }
        // --check reads no secret: it validates as root too.
        let mut check = Command::new(signet_bin());
        check
            .args(["serve", "--check", "--config"])
            .arg(&config)
            .env_remove("SIGNET_ALLOW_ROOT");
        chmod(&pin, 0o600);
        assert_eq!(run_serve(check).0, Some(0));
        chmod(&pin, 0o644);
    } else {
        // Not root: nothing to allow, and the default path goes on.
        past_root_check(serve_as_is(None, None));
    }
    past_root_check(serve_as_is(Some("--allow-root"), None));
    past_root_check(serve_as_is(None, Some("1")));
    past_root_check(serve_as_is(None, Some("true")));

    chmod(&pin, 0o600);
    s.spawn();
    assert_eq!(s.get("monitor", "/readyz").0, 200);
}
