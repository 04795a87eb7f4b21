//! A private swtpm (TPM 2.0 simulator) per test, on free loopback ports, with
//! its state in a temporary directory that lives as long as the fixture.
//!
//! swtpm serves one client connection at a time, so tests that share an
//! instance between two backends would queue behind each other: every test
//! starts its own.

use std::fs::{File, OpenOptions};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use signet::keys::profile::TpmSettings;

/// How long a freshly started swtpm may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Different port pairs tried before giving up (another process may grab a
/// port between our probe and swtpm's bind).
const START_ATTEMPTS: usize = 8;

pub struct Swtpm {
    dir: tempfile::TempDir,
    child: Option<Child>,
    pid: u32,
    port: u16,
}

impl Swtpm {
    /// Starts an swtpm with fresh state; panics (failing the test) if none
    /// can be started.
    pub fn start() -> Swtpm {
        let dir = tempfile::tempdir().expect("swtpm temp dir");
        std::fs::create_dir(dir.path().join("state")).expect("swtpm state dir");
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let Some(port) = free_port_pair() else {
                failures.push("no free loopback port pair".to_string());
                continue;
            };
            match spawn(dir.path(), port, START_TIMEOUT) {
                Ok(child) => {
                    return Swtpm {
                        pid: child.id(),
                        child: Some(child),
                        dir,
                        port,
                    };
                }
                Err(e) => failures.push(format!("port {port}: {e}")),
            }
        }
        panic!("could not start swtpm: {}", failures.join("; "));
    }

    /// Backend settings for this instance: no auth value, keys inside the
    /// fixture's directory.
    pub fn settings(&self) -> TpmSettings {
        TpmSettings {
            tcti: self.tcti(),
            key_dir: self.key_dir(),
            auth: None,
        }
    }

    /// Writes an HSM profile for this instance into the fixture's directory
    /// (as `scripts/swtpm-up` does for a shell) and returns its path: what
    /// `signet hsm ...` and a server's `keys.profile` take.
    pub fn write_profile(&self) -> PathBuf {
        let path = self.dir.path().join("profile.toml");
        std::fs::write(
            &path,
            format!(
                "backend = \"tpm\"\n[tpm]\ntcti = \"{}\"\nkey_dir = \"{}\"\n",
                self.tcti(),
                self.key_dir().display()
            ),
        )
        .expect("write swtpm profile");
        path
    }

    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    pub fn key_dir(&self) -> PathBuf {
        self.dir.path().join("keys")
    }

    /// The fixture's temporary directory (state, log, keys).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// SIGKILLs swtpm (a crash, not a shutdown) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts swtpm again on the same ports with the same state, as after a
    /// crash and restart. Retries for a while in case the old sockets are
    /// still being torn down.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match spawn(self.dir.path(), self.port, START_TIMEOUT) {
                Ok(child) => {
                    self.pid = child.id();
                    self.child = Some(child);
                    return;
                }
                Err(e) if Instant::now() >= deadline => {
                    panic!("could not restart swtpm on port {}: {e}", self.port)
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port P with P+1 free too (swtpm's control channel), both on 127.0.0.1.
fn free_port_pair() -> Option<u16> {
    for _ in 0..50 {
        let first = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).ok()?;
        let port = first.local_addr().ok()?.port();
        if port == u16::MAX {
            continue;
        }
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port + 1)).is_ok() {
            return Some(port);
        }
    }
    None
}

fn spawn(dir: &Path, port: u16, timeout: Duration) -> Result<Child, String> {
    let log_path = dir.join("swtpm.log");
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| format!("open {}: {e}", log_path.display()))?;
    let log2 = log.try_clone().map_err(|e| e.to_string())?;
    let state = dir.join("state");
    let mut child = Command::new("swtpm")
        .arg("socket")
        .arg("--tpmstate")
        .arg(format!("dir={}", state.display()))
        .arg("--tpm2")
        .arg("--server")
        .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
        .arg("--ctrl")
        .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
        .arg("--flags")
        .arg("not-need-init,startup-clear")
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log2))
        .spawn()
        .map_err(|e| format!("cannot run swtpm (is it installed?): {e}"))?;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("swtpm exited ({status}): {}", tail(&log_path)));
        }
        // swtpm serves one connection at a time; this probe closes at once.
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(child);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "not accepting after {timeout:?}: {}",
                tail(&log_path)
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn tail(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut f) = File::open(path) {
        use std::io::Read;
        let _ = f.read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().rev().take(5).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}
