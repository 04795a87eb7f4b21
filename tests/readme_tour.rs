//! The README's "Ten-minute tour", run as written: `scripts/dev-up` brings
//! up signet, then the tour's shell blocks run in order in one bash with
//! `set -euo pipefail`, so any command that fails, any refusal that does not
//! come, stops the tour. Only what makes it private to this test changes: the
//! dev directory (a temporary one instead of `$PWD/var/dev`), the port (a
//! free one instead of 8443) and the signet binary (this build's instead of
//! `$PWD/target/release`'s). The tour's output is then checked step by step.

#![cfg(feature = "testkit")]

mod common;

use std::process::Command;

use common::dev_up::{DevUp, free_port};
use common::docs::{fenced_blocks, repo_file, repo_path, section};

/// `text` with `from` replaced by `to`, which must occur exactly once (so
/// the README cannot drift away from what this test substitutes).
fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "the tour's first block should contain {from:?} exactly once:\n{text}"
    );
    text.replacen(from, to, 1)
}

#[test]
fn the_readme_tour_runs_as_written() {
    let readme = repo_file("README.md");
    let tour = section(&readme, "## Ten-minute tour");
    let blocks = fenced_blocks(tour, "sh");
    assert_eq!(blocks.len(), 7, "setup and six steps:\n{tour}");

    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path().join("dev");
    let port = free_port();
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_signet"));
    let bin_dir = bin.parent().expect("binary directory");

    // The tour's first line, with this test's directory, port and binary.
    let setup = &blocks[0];
    let first = setup.lines().next().expect("first line");
    assert!(
        first.starts_with("scripts/dev-up ") || first == "scripts/dev-up",
        "the tour starts with scripts/dev-up: {first}"
    );
    let up = DevUp::start(&dir, port, &[] as &[&str]);
    let setup = setup.split_once('\n').expect("more than one line").1;
    let setup = replace_once(setup, "\"$PWD/var/dev\"", &format!("{:?}", up.dir));
    let setup = replace_once(&setup, ":8443", &format!(":{port}"));
    let setup = replace_once(
        &setup,
        "\"$PWD/target/release:$PATH\"",
        &format!("\"{}:$PATH\"", bin_dir.display()),
    );
    let mut script = String::from("set -euo pipefail\n");
    script.push_str(&setup);
    for (i, block) in blocks[1..].iter().enumerate() {
        script.push_str(&format!("echo '@@ step {}'\n", i + 1));
        script.push_str(block);
    }
    script.push_str("echo '@@ end'\n");

    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(repo_path(""))
        // The tour's `mktemp -d` lands in this test's directory.
        .env("TMPDIR", work.path())
        .output()
        .expect("run bash");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let context = format!(
        "---- script ----\n{script}\n---- stdout ----\n{stdout}\n---- stderr ----\n{stderr}"
    );
    assert!(out.status.success(), "the tour failed:\n{context}");

    let steps: Vec<&str> = stdout.split("@@ step ").skip(1).collect();
    assert_eq!(steps.len(), 6, "{context}");
    assert!(steps[5].contains("@@ end"), "{context}");
    let expect = |step: usize, wanted: &[&str]| {
        for w in wanted {
            assert!(
                steps[step - 1].contains(w),
                "step {step} lacks {w:?}:\n{context}"
            );
        }
    };
    // 1. registered, marked tier 4 (attestation none)
    expect(
        1,
        &[
            r#""userName": "alice@example.com""#,
            r#""fmt": "none""#,
            r#""tier": 4"#,
            r#""decision": "accept-marked""#,
        ],
    );
    // 2. logged in once; the replay is refused with the problem's body
    expect(
        2,
        &[
            r#""signCount": 1"#,
            r#""decision": "allow""#,
            "urn:signet:problem:ceremony-consumed",
            "(refused: a challenge is answered once)",
        ],
    );
    // 3. approved; the receipt verifies, the forged copy does not
    expect(
        3,
        &[
            "payment: 1500.00 CHF to ACME AG",
            r#""state": "approved""#,
            "valid signet receipt",
            // what is wrong with the forged copy, named
            "invalid: receipt.signature: does not verify",
            "(refused: forged)",
        ],
    );
    // 4. the device is bound and its passkey logged in
    expect(
        4,
        &["device-sim: login: ok", "is bound", "user bob@example.com"],
    );
    // 5. the QR login: claimed, approved, consumed once
    expect(
        5,
        &[
            "https://localhost/pair#pairing=",
            "Log in on Firefox on Windows in Zurich (203.0.113.7)?",
            r#""state": "approved""#,
            r#""revision": 3"#,
            r#""userName": "alice@example.com""#,
            "urn:signet:problem:pairing-consumed",
            "(refused: a login is taken once)",
        ],
    );
    // 6. the audit trail has each step, refusals included, in order
    let audit: Vec<&str> = steps[5]
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    let mut at = 0;
    for event in [
        "credential.registered",
        "authentication.verified",
        "transaction.approved",
        "pairing.claimed",
        "pairing.approved",
        "pairing.consumed",
        "pairing.consume_refused",
    ] {
        let found = audit[at..]
            .iter()
            .position(|e| *e == event)
            .unwrap_or_else(|| {
                panic!("audit lacks {event} after entry {at}: {audit:?}\n{context}")
            });
        at += found + 1;
    }
    // No secret of the pairing was on a command line: they went in header files.
    assert!(!script.contains("-H \"Signet-"), "{script}");
}
