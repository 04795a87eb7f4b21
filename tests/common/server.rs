//! A real `signet serve` process for integration tests: its own key device
//! (a SoftHSM token by default, or an swtpm: [`SignetServer::start_on`]),
//! keys provisioned with `signet hsm init`, its own test PKI, a config in a
//! temporary directory, port 0 on 127.0.0.1 (the server prints the port it
//! got), stopped by PID with SIGTERM on drop.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::pki::{self, TestPki};
use super::postgres::TestDb;
use super::softhsm::SoftHsm;
use super::swtpm::Swtpm;

pub const RP_ID: &str = "localhost";
pub const ORIGIN: &str = "https://localhost";

/// The `[[clients]]` rules every test server has: one per role by SAN URI.
pub const ROLES: [&str; 4] = ["rp", "officer", "auditor", "monitor"];

pub fn signet_bin() -> &'static str {
    env!("CARGO_BIN_EXE_signet")
}

/// `signet serve` refuses euid 0 unless allowed. The tests run as whatever
/// user CI has (root in a throwaway container on some machines), so a
/// spawned server is allowed root only when the tests run as root: as any
/// other user it takes the default path.
pub fn allow_root_if_root(cmd: &mut Command) -> &mut Command {
    if signet::process::euid() == 0 {
        cmd.env("SIGNET_ALLOW_ROOT", "1");
    } else {
        cmd.env_remove("SIGNET_ALLOW_ROOT");
    }
    cmd
}

/// The key device a test server runs on.
pub enum KeyDevice {
    SoftHsm(SoftHsm),
    /// An swtpm, and the profile naming it (written beside the fixture's
    /// state, keys in the fixture's key directory).
    Swtpm {
        tpm: Swtpm,
        profile: PathBuf,
    },
    /// Another server's device, through its profile: instances of one
    /// deployment sign with the same keys (an HSM cluster, or partitions
    /// holding the same keys). The other fixture keeps the device alive.
    Shared {
        profile: PathBuf,
    },
}

impl KeyDevice {
    /// A fresh SoftHSM token.
    pub fn softhsm() -> KeyDevice {
        KeyDevice::SoftHsm(SoftHsm::new())
    }

    /// A fresh swtpm and a profile for it.
    pub fn swtpm() -> KeyDevice {
        let tpm = Swtpm::start();
        let profile = tpm.write_profile();
        KeyDevice::Swtpm { tpm, profile }
    }

    /// The HSM profile `signet hsm ...` and the server's `keys.profile` use.
    pub fn profile_path(&self) -> PathBuf {
        match self {
            KeyDevice::SoftHsm(hsm) => hsm.profile_path(),
            KeyDevice::Swtpm { profile, .. } | KeyDevice::Shared { profile } => profile.clone(),
        }
    }

    /// The swtpm, for tests that kill and restart it; panics on SoftHSM.
    pub fn swtpm_mut(&mut self) -> &mut Swtpm {
        match self {
            KeyDevice::Swtpm { tpm, .. } => tpm,
            KeyDevice::SoftHsm(_) | KeyDevice::Shared { .. } => {
                panic!("this test server runs on SoftHSM or a shared device, not its own swtpm")
            }
        }
    }
}

/// Most tests run on SoftHSM and reach the token as `server.hsm.label`,
/// `server.hsm.token_store_dir()`, ...: those keep working. On an swtpm
/// server they panic, naming the mix-up.
impl std::ops::Deref for KeyDevice {
    type Target = SoftHsm;
    fn deref(&self) -> &SoftHsm {
        match self {
            KeyDevice::SoftHsm(hsm) => hsm,
            KeyDevice::Swtpm { .. } => panic!("this test server runs on swtpm, not SoftHSM"),
            KeyDevice::Shared { .. } => panic!("this test server shares another's key device"),
        }
    }
}

pub struct SignetServer {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub pki: TestPki,
    pub hsm: KeyDevice,
    pub config: PathBuf,
    child: Option<Child>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl SignetServer {
    /// A server with the default test configuration.
    pub fn start() -> SignetServer {
        SignetServer::start_with("")
    }

    /// A server whose config has `extra` TOML appended (e.g. a `[limits]`
    /// table).
    pub fn start_with(extra: &str) -> SignetServer {
        SignetServer::start_on(KeyDevice::softhsm(), extra)
    }

    /// A server on `hsm` (its keys provisioned here with `signet hsm
    /// init`), with `extra` TOML appended to the config.
    pub fn start_on(hsm: KeyDevice, extra: &str) -> SignetServer {
        SignetServer::start_custom(hsm, STORE_SLED, extra)
    }

    /// A server on a fresh SoftHSM token whose store is the PostgreSQL
    /// database `db`, migrated first with `signet store migrate`.
    pub fn start_on_postgres(db: &TestDb, extra: &str) -> SignetServer {
        SignetServer::start_custom(KeyDevice::softhsm(), &store_postgres(db), extra)
    }

    /// A second instance of this server's deployment: the same key device
    /// and PostgreSQL database (`db`, which this server must use), its own
    /// listener, PKI and data directory.
    pub fn sibling(&self, db: &TestDb, extra: &str) -> SignetServer {
        let hsm = KeyDevice::Shared {
            profile: self.hsm.profile_path(),
        };
        SignetServer::start_custom(hsm, &store_postgres(db), extra)
    }

    /// `store` is the `[store]` table's body (and any sub-table).
    fn start_custom(hsm: KeyDevice, store: &str, extra: &str) -> SignetServer {
        if !matches!(hsm, KeyDevice::Shared { .. }) {
            hsm_init(&hsm.profile_path());
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = pki::generate(&dir.path().join("pki"));
        let config = dir.path().join("signet.toml");
        std::fs::write(
            &config,
            config_text_with_store(&hsm.profile_path(), store, extra),
        )
        .expect("write config");
        if store.contains("[store.postgres]") {
            let out = allow_root_if_root(&mut Command::new(signet_bin()))
                .args(["store", "migrate", "--config"])
                .arg(&config)
                .output()
                .expect("run signet store migrate");
            assert!(
                out.status.success(),
                "signet store migrate: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut server = SignetServer {
            addr: "127.0.0.1:0".parse().expect("addr"),
            dir,
            pki,
            hsm,
            config,
            child: None,
            stderr: None,
        };
        server.spawn();
        server
    }

    /// Starts the server again after [`SignetServer::stop`], on the same
    /// config, store and token.
    pub fn spawn(&mut self) {
        let mut child = allow_root_if_root(&mut Command::new(signet_bin()))
            .args(["serve", "--config"])
            .arg(&self.config)
            .env_remove("SIGNET_LISTEN")
            .env_remove("SIGNET_DATA_DIR")
            .env_remove("SIGNET_RP_ID")
            .env_remove("SIGNET_RP_ORIGINS")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn signet serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut stderr = child.stderr.take().expect("stderr");
        self.stderr = Some(std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        }));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep draining so the server never blocks on a full pipe.
            for _ in lines {}
        });
        self.child = Some(child);
        let line = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(l) => l,
            Err(_) => {
                let log = self.stop_and_log();
                panic!("signet serve did not start; stderr:\n{log}");
            }
        };
        let addr = line
            .strip_prefix("signet: listening on https://")
            .unwrap_or_else(|| panic!("unexpected first line: {line}"));
        self.addr = addr.parse().expect("listen address");
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let client = self.client("monitor");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = client.get(self.url("/readyz")).send()
                && r.status().is_success()
            {
                return;
            }
            assert!(Instant::now() < deadline, "signet never became ready");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("running")
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }

    pub fn base_url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A keep-alive HTTPS client presenting `<name>.pem` from the test PKI.
    pub fn client(&self, name: &str) -> reqwest::blocking::Client {
        client_with(pki::client_config(&self.pki, name), self.addr)
    }

    /// A client presenting no certificate.
    pub fn client_without_cert(&self) -> reqwest::blocking::Client {
        client_with(pki::client_config_no_cert(&self.pki), self.addr)
    }

    /// POSTs JSON as `role`; returns status and body (JSON, or Null).
    pub fn post(&self, role: &str, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .client(role)
            .post(self.url(path))
            .json(body)
            .send()
            .expect("request");
        read(r)
    }

    /// PUTs JSON as `role`; returns status and body (JSON, or Null).
    pub fn put(&self, role: &str, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .client(role)
            .put(self.url(path))
            .json(body)
            .send()
            .expect("request");
        read(r)
    }

    /// Sends `signal` (e.g. "HUP") to the running server.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// The directory holding the config, the PKI and the store.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn get(&self, role: &str, path: &str) -> (u16, Value) {
        let r = self
            .client(role)
            .get(self.url(path))
            .send()
            .expect("request");
        read(r)
    }

    /// SIGTERM, wait for exit; returns the exit status and stderr.
    pub fn stop(&mut self) -> (std::process::ExitStatus, String) {
        let mut child = self.child.take().expect("running");
        terminate(child.id());
        let status = wait_timeout(&mut child, Duration::from_secs(30)).unwrap_or_else(|| {
            let _ = child.kill();
            child.wait().expect("wait after kill")
        });
        let log = self
            .stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        (status, log)
    }

    fn stop_and_log(&mut self) -> String {
        self.stop().1
    }

    /// Stops and starts again on the same config, store and token.
    pub fn restart(&mut self) {
        let (status, log) = self.stop();
        assert!(status.success(), "signet exited with {status}: {log}");
        self.spawn();
    }
}

impl Drop for SignetServer {
    fn drop(&mut self) {
        if self.child.is_some() {
            let (_, log) = self.stop();
            // A failing test shows what the server said.
            if std::thread::panicking() {
                eprintln!("---- signet serve stderr ----\n{log}");
            }
        }
    }
}

/// `signet hsm init --profile PROFILE`: creates the missing role keys, as
/// an officer provisioning a device does; panics (failing the test) if it
/// fails.
pub fn hsm_init(profile: &Path) {
    if let Err(e) = try_hsm_init(profile) {
        panic!("hsm init: {e}");
    }
}

/// `signet hsm init --profile PROFILE`; its stderr if it fails.
pub fn try_hsm_init(profile: &Path) -> Result<(), String> {
    let out = Command::new(signet_bin())
        .args(["hsm", "init", "--profile"])
        .arg(profile)
        .output()
        .expect("run signet hsm init");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

pub fn terminate(pid: u32) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
}

pub fn wait_timeout(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn client_with(tls: rustls::ClientConfig, addr: SocketAddr) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .use_preconfigured_tls(tls)
        .resolve("localhost", addr)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("HTTP client")
}

pub fn read(r: reqwest::blocking::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let text = r.text().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The `[store]` table of the default test configuration.
const STORE_SLED: &str = "data_dir = \"data\"\n";

/// A `[store]` table for the PostgreSQL database `db` (the data directory
/// then holds only the instance's local files). A request may wait 20 s for
/// a free connection: the races send 1000 requests at once to a pool of 16
/// on a loaded 2-core machine, and they test who wins, not capacity.
pub fn store_postgres(db: &TestDb) -> String {
    format!(
        "data_dir = \"data\"\nbackend = \"postgres\"\n\n[store.postgres]\nurl = \"{}\"\npassword_file = \"{}\"\nca = \"{}\"\npool_size = 16\nconnect_timeout_ms = 20000\n",
        db.url(),
        db.password_file.display(),
        db.ca.display()
    )
}

pub fn config_text(profile: &Path, extra: &str) -> String {
    config_text_with_store(profile, STORE_SLED, extra)
}

fn config_text_with_store(profile: &Path, store: &str, extra: &str) -> String {
    let mut clients = String::new();
    for role in ROLES {
        clients.push_str(&format!(
            "[[clients]]\nname = \"test-{role}\"\nrole = \"{role}\"\nsan_uri = \"{}\"\n\n",
            pki::role_uri(role)
        ));
    }
    format!(
        r#"[server]
listen = "127.0.0.1:0"
shutdown_grace_ms = 10000

[tls]
cert = "pki/server.pem"
key = "pki/server.key"
client_ca = "pki/ca.pem"
crls = ["pki/ca.crl"]

{clients}
[rp]
id = "{RP_ID}"
name = "signet test bank"
origins = ["{ORIGIN}"]

[store]
{store}
[keys]
profile = "{}"

[audit]
checkpoint_every = 10

{extra}
"#,
        profile.display()
    )
}
