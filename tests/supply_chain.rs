//! deny.toml's rules bite. scripts/test runs `cargo deny check` on signet's
//! own tree; this shows the same configuration refusing what it is there to
//! refuse: a second TLS stack (a crate named on the ban list) and a copyleft
//! licence, in a probe crate built beside it. The probe's dependencies are
//! local path crates, so no registry or network is involved.

use std::path::Path;
use std::process::{Command, Output};

fn write_crate(dir: &Path, name: &str, license: &str, dependencies: &str) {
    std::fs::create_dir_all(dir.join("src")).expect("mkdir");
    std::fs::write(dir.join("src/lib.rs"), "").expect("lib.rs");
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"{name}\"\nversion = \"0.9.0\"\nedition = \"2021\"\n\
             license = \"{license}\"\npublish = false\n\n[dependencies]\n{dependencies}"
        ),
    )
    .expect("Cargo.toml");
}

fn deny(manifest_dir: &Path, check: &str) -> Output {
    Command::new("cargo")
        .args(["deny", "--log-level", "error", "check", check])
        .current_dir(manifest_dir)
        .output()
        .expect("run cargo deny (scripts/setup installs it)")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn deny_toml_refuses_a_second_tls_stack_and_copyleft() {
    let work = tempfile::tempdir().expect("tempdir");
    let root = work.path();
    // Dependencies of the probe: not publish = false, so their licences count.
    for (name, license) in [("openssl-sys", "MIT"), ("gplcrate", "GPL-3.0-only")] {
        write_crate(&root.join(name), name, license, "");
        let manifest = root.join(name).join("Cargo.toml");
        let text = std::fs::read_to_string(&manifest).expect("read");
        std::fs::write(&manifest, text.replace("publish = false\n", "")).expect("write");
    }
    let probe = root.join("probe");
    write_crate(
        &probe,
        "probe",
        "MIT",
        "openssl-sys = { path = \"../openssl-sys\", version = \"0.9\" }\n\
         gplcrate = { path = \"../gplcrate\", version = \"0.9\" }\n",
    );
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/deny.toml"),
        probe.join("deny.toml"),
    )
    .expect("copy deny.toml");
    let lock = Command::new("cargo")
        .args(["generate-lockfile", "--offline"])
        .current_dir(&probe)
        .output()
        .expect("cargo generate-lockfile");
    assert!(lock.status.success(), "{}", text(&lock));

    let bans = deny(&probe, "bans");
    assert!(!bans.status.success(), "{}", text(&bans));
    assert!(
        text(&bans).contains("crate 'openssl-sys = 0.9.0' is explicitly banned"),
        "{}",
        text(&bans)
    );
    let licenses = deny(&probe, "licenses");
    assert!(!licenses.status.success(), "{}", text(&licenses));
    assert!(
        text(&licenses).contains("GPL-3.0-only"),
        "{}",
        text(&licenses)
    );
    // Path crates are not an unknown source.
    let sources = deny(&probe, "sources");
    assert!(sources.status.success(), "{}", text(&sources));
}

#[test]
fn signets_own_tree_passes_deny_toml() {
    let out = deny(Path::new(env!("CARGO_MANIFEST_DIR")), "bans");
    assert!(out.status.success(), "{}", text(&out));
    for check in ["licenses", "sources"] {
        let out = deny(Path::new(env!("CARGO_MANIFEST_DIR")), check);
        assert!(out.status.success(), "{check}: {}", text(&out));
    }
}
