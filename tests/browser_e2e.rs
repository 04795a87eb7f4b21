//! signet in a real browser: headless Debian Chromium (`/usr/bin/chromium`,
//! driven by playwright-core from `tests/e2e/`) with the DevTools Protocol's
//! virtual authenticators, through the demo bank (`examples/demo-bank`)
//! relaying to a real `signet serve` on a fresh SoftHSM token and test PKI.
//!
//! `tests/e2e/run.mjs` does the browsing and the checks: a CTAP2 platform
//! authenticator registers (`packed`) and logs in, a U2F key registers
//! (`fido-u2f`) and logs in, a payment is approved and its downloaded
//! receipt verifies with `signet evidence verify` (and a tampered copy does
//! not), and a desktop logs in by QR code with a phone's passkey, once.
//! This test starts the services, installs playwright-core with `npm ci`
//! into `tests/e2e/node_modules` when it is missing, runs the script and
//! asserts its exit code. Chromium, Node.js and npm come from
//! `scripts/setup`.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::server::{SignetServer, signet_bin, terminate, wait_timeout};

const CHROMIUM: &str = "/usr/bin/chromium";
/// The whole browser run; each of its steps has its own, shorter limit.
const E2E_LIMIT: Duration = Duration::from_secs(300);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A port on 127.0.0.1 that was free a moment ago: the demo bank's origin
/// must be in signet's rp.origins before the demo bank starts.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// The demo bank example, as cargo built it next to the signet binary
/// (`cargo test` and nextest build examples), else built now.
fn demo_bank_bin() -> PathBuf {
    let profile_dir = Path::new(signet_bin()).parent().expect("target dir");
    let bin = profile_dir.join("examples").join("demo-bank");
    if !bin.is_file() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build
            .current_dir(repo())
            .args(["build", "--example", "demo-bank"]);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo build --example demo-bank");
        assert!(status.success(), "cargo build --example demo-bank failed");
    }
    assert!(bin.is_file(), "no demo bank binary at {}", bin.display());
    bin
}

/// The running demo bank, stopped by PID when dropped.
struct DemoBank {
    child: Child,
    url: String,
    log: Option<std::thread::JoinHandle<String>>,
}

impl DemoBank {
    fn start(port: u16, server: &SignetServer) -> DemoBank {
        let mut child = Command::new(demo_bank_bin())
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--signet")
            .arg(server.base_url())
            .arg("--ca")
            .arg(&server.pki.ca_cert)
            .arg("--cert")
            .arg(server.pki.cert("rp"))
            .arg("--key")
            .arg(server.pki.key("rp"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the demo bank");
        let stdout = child.stdout.take().expect("stdout");
        let mut stderr = child.stderr.take().expect("stderr");
        let log = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        });
        let mut bank = DemoBank {
            child,
            url: format!("http://localhost:{port}"),
            log: Some(log),
        };
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => assert!(
                line.starts_with(&format!("demo-bank: listening on {}", bank.url)),
                "demo bank said: {line}"
            ),
            Err(_) => panic!("the demo bank did not start: {}", bank.stop()),
        }
        bank
    }

    /// SIGTERM by PID (SIGKILL after 10 s); what it wrote on stderr.
    fn stop(&mut self) -> String {
        terminate(self.child.id());
        if wait_timeout(&mut self.child, Duration::from_secs(10)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        self.log
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default()
    }
}

impl Drop for DemoBank {
    fn drop(&mut self) {
        if self.log.is_some() {
            let log = self.stop();
            if std::thread::panicking() && !log.is_empty() {
                eprintln!("---- demo bank stderr ----\n{log}");
            }
        }
    }
}

fn require_tool(path: &str, what: &str) {
    let found = Command::new(path)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "{what} ({path}) is missing: scripts/setup installs it (Debian packages chromium, nodejs, npm)"
    );
}

/// `npm ci` into tests/e2e/node_modules, unless the pinned playwright-core
/// is already there.
fn npm_ci(e2e: &Path) {
    let lock: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(e2e.join("package-lock.json")).expect("read package-lock.json"),
    )
    .expect("package-lock.json");
    let pinned = lock["packages"]["node_modules/playwright-core"]["version"]
        .as_str()
        .expect("playwright-core in package-lock.json")
        .to_string();
    let installed = std::fs::read_to_string(e2e.join("node_modules/playwright-core/package.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["version"].as_str().map(str::to_string));
    if installed.as_deref() == Some(pinned.as_str()) {
        return;
    }
    println!(
        "browser_e2e: npm ci in {} (playwright-core {pinned})",
        e2e.display()
    );
    let out = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(e2e)
        .output()
        .expect("run npm ci");
    assert!(
        out.status.success(),
        "npm ci failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The public key receipts are verified with, exported from the server's
/// token as an auditor would (`signet hsm export`).
fn countersign_pem(server: &SignetServer, dir: &Path) -> PathBuf {
    let out = Command::new(signet_bin())
        .args([
            "hsm",
            "export",
            "--role",
            "approval-countersign",
            "--format",
            "pem",
        ])
        .arg("--profile")
        .arg(server.hsm.profile_path())
        .output()
        .expect("run signet hsm export");
    assert!(
        out.status.success(),
        "hsm export: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pem = dir.join("approval-countersign.pem");
    std::fs::write(&pem, &out.stdout).expect("write countersign PEM");
    pem
}

#[test]
fn the_demo_bank_in_headless_chromium_registers_logs_in_approves_and_pairs() {
    require_tool(CHROMIUM, "Chromium");
    require_tool("node", "Node.js");
    let version = Command::new("node")
        .arg("--version")
        .output()
        .expect("node --version");
    let version = String::from_utf8_lossy(&version.stdout).trim().to_string();
    let major: u32 = version
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    assert!(
        major >= 18,
        "node {version}: tests/e2e's playwright-core needs Node.js 18 or later (Debian 12 has 18)"
    );
    require_tool("npm", "npm");
    let e2e = repo().join("tests/e2e");
    npm_ci(&e2e);

    // signet with the demo policy, and the demo bank's origin among its
    // origins (http is allowed for localhost; the config is rewritten and the
    // server restarted, since the test server clears SIGNET_RP_ORIGINS).
    let port = free_port();
    let origin = format!("http://localhost:{port}");
    let policy = repo().join("examples/demo-bank/policy.toml");
    let mut server =
        SignetServer::start_with(&format!("[policy]\nfile = \"{}\"\n", policy.display()));
    let config = std::fs::read_to_string(&server.config).expect("read config");
    let origins = "origins = [\"https://localhost\"]";
    assert!(config.contains(origins), "{config}");
    let config = config.replace(
        origins,
        &format!("origins = [\"https://localhost\", \"{origin}\"]"),
    );
    std::fs::write(&server.config, config).expect("write config");
    let (status, log) = server.stop();
    assert!(status.success(), "signet exited with {status}: {log}");
    // The demo's FIDO metadata: it pins the self-signed batch certificate
    // of Chromium's virtual authenticators, which signet otherwise refuses
    // in x5c. Installed with the service stopped, as an officer would.
    let files = tempfile::tempdir().expect("tempdir");
    let out = Command::new(demo_bank_bin())
        .arg("--write-mds")
        .arg(files.path())
        .output()
        .expect("run demo-bank --write-mds");
    assert!(
        out.status.success(),
        "demo-bank --write-mds: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(signet_bin())
        .args(["mds", "import"])
        .arg(files.path().join("mds-blob.jwt"))
        .arg("--root")
        .arg(files.path().join("mds-root.pem"))
        .arg("--config")
        .arg(&server.config)
        .output()
        .expect("run signet mds import");
    assert!(
        out.status.success(),
        "signet mds import: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    server.spawn();

    let pem = countersign_pem(&server, files.path());
    let mut bank = DemoBank::start(port, &server);
    assert_eq!(bank.url, origin);

    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser-e2e");
    let _ = std::fs::remove_dir_all(&artifacts);
    std::fs::create_dir_all(&artifacts).expect("artifacts dir");
    println!(
        "browser_e2e: demo bank {} -> signet {}; screenshots of failing steps: {}",
        bank.url,
        server.base_url(),
        artifacts.display()
    );

    let mut node = Command::new("node")
        .arg(e2e.join("run.mjs"))
        .current_dir(&e2e)
        .env("DEMO_URL", &bank.url)
        .env("SIGNET_BIN", signet_bin())
        .env("COUNTERSIGN_PEM", &pem)
        .env("CHROMIUM", CHROMIUM)
        .env("E2E_ARTIFACTS", &artifacts)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run node tests/e2e/run.mjs");
    let mut stdout = node.stdout.take().expect("stdout");
    let mut stderr = node.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let status = wait_timeout(&mut node, E2E_LIMIT);
    if status.is_none() {
        // Node and the browsers it started: node's own process first, by PID.
        let _ = node.kill();
        let _ = node.wait();
    }
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    println!("---- tests/e2e/run.mjs ----\n{out}");
    if !err.is_empty() {
        println!("---- tests/e2e/run.mjs stderr ----\n{err}");
    }
    let bank_log = bank.stop();
    let status = status.unwrap_or_else(|| panic!("run.mjs did not finish in {E2E_LIMIT:?}"));
    if !status.success() {
        println!("---- demo bank stderr ----\n{bank_log}");
    }
    assert!(
        status.success(),
        "run.mjs exited with {status}; screenshots in {}",
        artifacts.display()
    );
    assert!(out.contains("e2e: all "), "{out}");
}
