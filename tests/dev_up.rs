//! `scripts/dev-up` from a clean directory: it provisions, starts signet,
//! and the curl command it prints works. Rerunning it restarts the server
//! on the same state.

use std::process::Command;
use std::time::Duration;

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn dev_up(dir: &std::path::Path, port: u16) -> String {
    let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/dev-up"))
        .arg("--dir")
        .arg(dir)
        .args([
            "--port",
            &port.to_string(),
            "--bin",
            env!("CARGO_BIN_EXE_signet"),
        ])
        .output()
        .expect("run dev-up");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "dev-up failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

struct StopOnDrop(std::path::PathBuf);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(&self.0) {
            let _ = Command::new("kill").args(["-TERM", pid.trim()]).status();
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

#[test]
fn dev_up_starts_a_server_the_printed_curl_reaches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let _stop = StopOnDrop(dir.path().join("signet.pid"));
    let stdout = dev_up(dir.path(), port);
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

    // Rerun: the first server is stopped, a new one serves the same store.
    let first_pid = std::fs::read_to_string(dir.path().join("signet.pid")).expect("pid");
    let stdout = dev_up(dir.path(), port);
    assert!(stdout.contains("stop the running signet"), "{stdout}");
    let second_pid = std::fs::read_to_string(dir.path().join("signet.pid")).expect("pid");
    assert_ne!(first_pid, second_pid);
    let answer = run(curl);
    assert!(answer["ceremonyId"].is_string(), "{answer}");

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
