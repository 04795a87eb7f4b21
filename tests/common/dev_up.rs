//! `scripts/dev-up` as a test runs it: into a temporary directory, on free
//! ports, with the binaries cargo built (`--bin`). What it started is
//! stopped by its PID files when the [`DevUp`] is dropped, also when the
//! test panics (then with dev-up's output and the tails of the logs).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::server::{signet_bin, terminate};

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// The services one dev-up directory runs: signet (`DIR/signet.pid`) and,
/// with `--demo`, the demo bank (`DIR/demo-bank.pid`).
pub struct DevUp {
    /// DIR as dev-up resolves it (`pwd -P`), which it prints and the PID
    /// checks look for in command lines.
    pub dir: PathBuf,
    pub port: u16,
    /// The last run's stdout.
    pub stdout: String,
    /// Every run's stdout and stderr, printed when the test fails.
    output: String,
}

impl DevUp {
    /// `scripts/dev-up --dir DIR --port PORT --bin <this build's signet>
    /// EXTRA...`, which must succeed.
    pub fn start<S: AsRef<OsStr>>(dir: &Path, port: u16, extra: &[S]) -> DevUp {
        std::fs::create_dir_all(dir).expect("dev-up dir");
        let mut up = DevUp {
            dir: std::fs::canonicalize(dir).expect("dev-up dir"),
            port,
            stdout: String::new(),
            output: String::new(),
        };
        up.rerun(extra);
        up
    }

    /// dev-up again on the same directory and port (it restarts what it
    /// started); returns its stdout.
    pub fn rerun<S: AsRef<OsStr>>(&mut self, extra: &[S]) -> &str {
        let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/dev-up"))
            .arg("--dir")
            .arg(&self.dir)
            .args(["--port", &self.port.to_string(), "--bin", signet_bin()])
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .expect("run scripts/dev-up");
        self.stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        self.output.push_str(&self.stdout);
        self.output.push_str(&String::from_utf8_lossy(&out.stderr));
        assert!(
            out.status.success(),
            "scripts/dev-up exited with {}",
            out.status
        );
        &self.stdout
    }

    /// The PID in DIR/NAME, if any.
    pub fn pid(&self, name: &str) -> Option<u32> {
        std::fs::read_to_string(self.dir.join(name))
            .ok()
            .and_then(|p| p.trim().parse().ok())
    }

    /// The last `lines` lines of DIR/LOG.
    pub fn log_tail(&self, log: &str, lines: usize) -> String {
        let text = std::fs::read_to_string(self.dir.join(log)).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Stops the process DIR/NAME names: SIGTERM, up to 10 s for it to
    /// exit, then SIGKILL. Only a process whose command line names DIR is
    /// signalled (the PID may have been reused).
    fn stop(&self, name: &str) {
        let Some(pid) = self.pid(name) else {
            return;
        };
        let ours = || {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&*self.dir.to_string_lossy()))
        };
        // Not our child (dev-up started it in the background): it has
        // exited once it is gone or a zombie.
        let alive = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                stat.rsplit_once(") ")
                    .is_some_and(|(_, rest)| !rest.starts_with('Z'))
            })
        };
        if !alive() || !ours() {
            return;
        }
        terminate(pid);
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if alive() && ours() {
            eprintln!("dev-up: {name}: pid {pid} ignored SIGTERM; SIGKILL");
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

impl Drop for DevUp {
    fn drop(&mut self) {
        self.stop("demo-bank.pid");
        self.stop("signet.pid");
        if std::thread::panicking() {
            println!(
                "---- scripts/dev-up (stdout, then stderr, per run) ----\n{}",
                self.output
            );
            for log in ["signet.log", "demo-bank.log"] {
                println!("---- {log}: last lines ----\n{}", self.log_tail(log, 40));
            }
        }
    }
}
