//! `signet mds import|status|show` on the real MDS3 BLOBs in
//! ../shared/vectors/mds, through the binary, into a real store.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::Engine;
use serde_json::Value;
use signet::audit::decode_body;
use signet::store::{SledStore, Store};

fn mds(name: &str) -> PathBuf {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/vectors/mds"
    ))
    .join(name)
}

fn signet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_signet"))
        .args(args)
        .output()
        .expect("run signet")
}

fn json_of(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON output")
}

fn refused(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
}

/// The BLOB's payload, decoded here independently of signet.
fn payload(name: &str) -> Value {
    let text = std::fs::read_to_string(mds(name)).expect("read BLOB");
    let part = text.trim().split('.').nth(1).expect("payload part");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .expect("base64url payload");
    serde_json::from_slice(&bytes).expect("payload JSON")
}

fn production_import(dir: &str) -> Output {
    signet(&[
        "mds",
        "import",
        mds("blob.jwt").to_str().expect("path"),
        "--crl",
        mds("root-r3.crl").to_str().expect("path"),
        "--crl",
        mds("gsextendvalsha2g3r3.crl").to_str().expect("path"),
        "--at",
        "2021-11-15T00:00:00Z",
        "--data-dir",
        dir,
        "--json",
    ])
}

#[test]
fn the_production_blob_installs_and_is_looked_up_by_aaguid() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let d = dir.to_str().expect("path");

    let report = json_of(&production_import(d));
    assert_eq!(report["no"], 9);
    assert_eq!(report["entries"], 98);
    assert_eq!(report["next_update"], "2021-12-01");
    assert_eq!(report["revocation_checked"], true);
    assert_eq!(report["previous_no"], Value::Null);
    assert_eq!(
        std::fs::read(dir.join("mds/blob.jwt")).expect("last good BLOB"),
        std::fs::read(mds("blob.jwt")).expect("BLOB")
    );

    let status = json_of(&signet(&["mds", "status", "--data-dir", d, "--json"]));
    assert_eq!(status["no"], 9);
    assert_eq!(status["entries"], 98);
    assert_eq!(status["nextUpdate"], "2021-12-01T00:00:00Z");
    assert_eq!(status["lastError"], Value::Null);

    // Every AAGUID of the BLOB is found, with its own statement.
    let expected = payload("blob.jwt");
    let with_aaguid: Vec<&Value> = expected["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["aaguid"].is_string())
        .collect();
    assert_eq!(with_aaguid.len(), 46);
    for e in with_aaguid.iter().take(5) {
        let aaguid = e["aaguid"].as_str().expect("aaguid");
        let shown = json_of(&signet(&["mds", "show", aaguid, "--data-dir", d, "--json"]));
        assert_eq!(shown["aaguid"], aaguid);
        assert_eq!(
            shown["metadataStatement"]["description"],
            e["metadataStatement"]["description"]
        );
        assert!(
            shown["metadataStatement"].get("icon").is_none(),
            "icons are dropped"
        );
        assert_eq!(
            shown["statusReports"][0]["status"],
            e["statusReports"][0]["status"]
        );
    }
    // The same without dashes and in capitals; and the text view.
    let first = with_aaguid[0]["aaguid"].as_str().expect("aaguid");
    let plain = first.replace('-', "").to_uppercase();
    let text = signet(&["mds", "show", &plain, "--data-dir", d]);
    assert!(text.status.success());
    assert!(String::from_utf8_lossy(&text.stdout).contains(first));

    // Replaying the same BLOB is refused, recorded, and changes nothing.
    refused(&production_import(d), "not newer than the held no 9");
    let status = json_of(&signet(&["mds", "status", "--data-dir", d, "--json"]));
    assert_eq!(status["no"], 9);
    assert!(
        status["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("not newer")),
        "{status}"
    );

    // Today the 2021 BLOB's signer has expired; a day after its
    // nextUpdate it is stale; with the conformance root its chain fails.
    let blob = mds("blob.jwt");
    let blob = blob.to_str().expect("path");
    refused(
        &signet(&["mds", "import", blob, "--data-dir", d]),
        "expired",
    );
    refused(
        &signet(&[
            "mds",
            "import",
            blob,
            "--at",
            "2021-12-02T00:00:00Z",
            "--data-dir",
            d,
        ]),
        "stale",
    );
    refused(
        &signet(&[
            "mds",
            "import",
            mds("blob.jwt").to_str().expect("path"),
            "--root",
            mds("conformance-mds3-root.pem").to_str().expect("path"),
            "--at",
            "2021-11-15T00:00:00Z",
            "--data-dir",
            d,
        ]),
        "chain",
    );

    // The conformance BLOB (no 42) replaces the whole catalog.
    let report = json_of(&signet(&[
        "mds",
        "import",
        mds("test-blob.jwt").to_str().expect("path"),
        "--root",
        mds("conformance-mds3-root.pem").to_str().expect("path"),
        "--at",
        "2022-11-08T00:00:00Z",
        "--data-dir",
        d,
        "--json",
    ]));
    assert_eq!(report["no"], 42);
    assert_eq!(report["previous_no"], 9);
    assert_eq!(report["entries"], 200);
    refused(
        &signet(&["mds", "show", first, "--data-dir", d]),
        "no metadata entry",
    );

    // Both installs are in the audit log as officer actions.
    let store = SledStore::open(&dir).expect("open store");
    let events: Vec<String> = store
        .audit_range(1, 100)
        .expect("audit")
        .iter()
        .map(|e| decode_body(&e.body).expect("event").event)
        .collect();
    // The conformance BLOB newly refuses 8 models (compromise and bypass
    // reports); each status change is audited after its install.
    assert_eq!(&events[..2], ["mds.installed", "mds.installed"]);
    assert_eq!(events.len(), 10, "{events:?}");
    assert!(
        events[2..].iter().all(|e| e == "mds.status_changed"),
        "{events:?}"
    );
}

#[test]
fn bad_arguments_are_refused_with_a_clear_message() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path().join("data");
    let d = d.to_str().expect("path");
    refused(
        &signet(&["mds", "status", "--data-dir", d]),
        "no signet store there",
    );
    refused(
        &signet(&["mds", "show", "not-a-uuid", "--data-dir", d]),
        "expected a UUID",
    );
    let garbage = tmp.path().join("garbage.jwt");
    std::fs::write(&garbage, b"a.b").expect("write");
    refused(
        &signet(&[
            "mds",
            "import",
            garbage.to_str().expect("path"),
            "--data-dir",
            d,
        ]),
        "JWS",
    );
    refused(
        &signet(&[
            "mds",
            "import",
            mds("blob.jwt").to_str().expect("path"),
            "--crl",
            garbage.to_str().expect("path"),
            "--data-dir",
            d,
        ]),
        "--crl",
    );
    // Neither --data-dir nor --config: a usage error.
    let out = signet(&["mds", "status"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn config_names_the_data_directory() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = tmp.path().join("signet.toml");
    std::fs::write(
        &config,
        r#"
[tls]
cert = "pki/server.pem"
key = "pki/server.key"
client_ca = "pki/ca.pem"
[[clients]]
name = "core"
role = "rp"
san_uri = "urn:signet:role:rp"
[rp]
id = "localhost"
origins = ["https://localhost"]
[store]
data_dir = "state"
[keys]
profile = "softhsm/profile.toml"
"#,
    )
    .expect("write config");
    let c = config.to_str().expect("path");
    let out = signet(&[
        "mds",
        "import",
        mds("test-blob.jwt").to_str().expect("path"),
        "--root",
        mds("conformance-mds3-root.pem").to_str().expect("path"),
        "--at",
        "2022-11-08T00:00:00Z",
        "--config",
        c,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("and 95 more") || text.contains("warning"),
        "{text}"
    );
    assert!(tmp.path().join("state/db").is_file());
    let status = json_of(&signet(&["mds", "status", "--config", c, "--json"]));
    assert_eq!(status["no"], 42);
}
