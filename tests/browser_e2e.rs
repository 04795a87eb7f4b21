//! signet in a real browser, the way a newcomer tries it: `scripts/dev-up
//! --demo` brings up signet on a fresh SoftHSM token and dev PKI and the
//! demo bank (`examples/demo-bank`) relaying to it, and headless Debian
//! Chromium (`/usr/bin/chromium`, driven by playwright-core from
//! `tests/e2e/`) with the DevTools Protocol's virtual authenticators uses
//! the demo bank's pages.
//!
//! `tests/e2e/run.mjs` does the browsing and the checks: a CTAP2 platform
//! authenticator registers (`packed`) and logs in, a U2F key registers
//! (`fido-u2f`) and logs in, a payment is approved and its downloaded
//! receipt verifies with `signet evidence verify` against the key dev-up
//! exported (and a tampered copy does not), and a desktop logs in by QR
//! code with a phone's passkey, once. This test runs `scripts/dev-up --demo`
//! into a temporary directory with the signet and demo-bank binaries cargo
//! built (`--bin`, `--demo-bin`) and free ports, checks that it announces
//! the demo bank and that the bank serves its page, installs
//! playwright-core with `npm ci` into `tests/e2e/node_modules` when it is
//! missing, runs the script and asserts its exit code; both services are
//! stopped by their PID files, also when the test fails. Chromium, Node.js
//! and npm come from `scripts/setup`.

mod common;

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::dev_up::{DevUp, free_port};
use common::server::{signet_bin, wait_timeout};

const CHROMIUM: &str = "/usr/bin/chromium";
/// The whole browser run; each of its steps has its own, shorter limit.
const E2E_LIMIT: Duration = Duration::from_secs(300);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
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

/// `scripts/dev-up --demo` into DIR, as a newcomer runs it, with the
/// binaries cargo built for this test; it must announce the demo bank.
fn dev_up_demo(dir: &Path, port: u16, demo_port: u16) -> DevUp {
    let demo_port = demo_port.to_string();
    let demo_bin = demo_bank_bin();
    let services = DevUp::start(
        dir,
        port,
        &[
            OsStr::new("--demo"),
            OsStr::new("--demo-port"),
            OsStr::new(&demo_port),
            OsStr::new("--demo-bin"),
            demo_bin.as_os_str(),
        ],
    );
    let announced = format!("Demo bank:      http://localhost:{demo_port} ");
    assert!(
        services.stdout.lines().any(|l| l.starts_with(&announced)),
        "dev-up did not announce the demo bank ({announced:?})"
    );
    services
}

/// `GET /` from the demo bank, the whole HTTP response as text.
fn get_page(port: u16) -> String {
    let mut stream = TcpStream::connect(("localhost", port))
        .unwrap_or_else(|e| panic!("connect to localhost:{port}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    write!(
        stream,
        "GET / HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n\r\n"
    )
    .expect("send GET /");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the demo page");
    response
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

    // The newcomer's path: scripts/dev-up --demo provisions signet (SoftHSM
    // token, dev PKI, the demo's policy, its FIDO metadata for Chromium's
    // virtual authenticators, the demo origin in rp.origins), exports the
    // countersigning key and starts signet and the demo bank.
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let demo_port = loop {
        let p = free_port();
        if p != port {
            break p;
        }
    };
    let services = dev_up_demo(dir.path(), port, demo_port);
    let demo_url = format!("http://localhost:{demo_port}");
    let page = get_page(demo_port);
    assert!(
        page.starts_with("HTTP/1.1 200 ") && page.contains("<title>signet demo bank</title>"),
        "GET {demo_url}/ did not serve the demo page:\n{page}"
    );
    let pem = services.dir.join("keys/approval-countersign.pem");
    assert!(pem.is_file(), "dev-up did not export {}", pem.display());

    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser-e2e");
    let _ = std::fs::remove_dir_all(&artifacts);
    std::fs::create_dir_all(&artifacts).expect("artifacts dir");
    println!(
        "browser_e2e: scripts/dev-up --demo in {}: demo bank {demo_url} -> signet https://localhost:{port}; screenshots of failing steps: {}",
        services.dir.display(),
        artifacts.display()
    );

    let mut node = Command::new("node")
        .arg(e2e.join("run.mjs"))
        .current_dir(&e2e)
        .env("DEMO_URL", &demo_url)
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
    // On failure the guard prints dev-up's output and both logs.
    let status = status.unwrap_or_else(|| panic!("run.mjs did not finish in {E2E_LIMIT:?}"));
    assert!(
        status.success(),
        "run.mjs exited with {status}; screenshots in {}",
        artifacts.display()
    );
    assert!(out.contains("e2e: all "), "{out}");
}
