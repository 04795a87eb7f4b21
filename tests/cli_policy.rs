//! `signet policy check|explain` through the binary, with the real 2021
//! production MDS catalog for explain.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn signet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_signet"))
        .args(args)
        .output()
        .expect("run signet")
}

fn json_of(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

#[test]
fn check_reports_version_and_hash_or_the_line_at_fault() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "version = \"bank-1\"\n[registration]\ntier4 = \"reject\"\n",
    )
    .expect("write");
    let report = json_of(&signet(&[
        "policy",
        "check",
        good.to_str().expect("path"),
        "--json",
    ]));
    assert_eq!(report["version"], "bank-1");
    assert_eq!(report["registration"][3], "reject");
    assert_eq!(report["sha256"].as_str().map(str::len), Some(64));

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "version = \"bank-2\"\n\n[[aaguid]]\naaguid = \"not-a-uuid\"\ntier = 2\n",
    )
    .expect("write");
    let out = signet(&["policy", "check", bad.to_str().expect("path")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("line 3") && stderr.contains("not a UUID"),
        "{stderr}"
    );

    let builtin = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src/policy/builtin-policy.toml"
    );
    assert!(signet(&["policy", "check", builtin]).status.success());
}

#[test]
fn explain_uses_the_installed_catalog() {
    let mds = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/vectors/mds"
    ));
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let d = data.to_str().expect("path");
    let out = signet(&[
        "mds",
        "import",
        mds.join("blob.jwt").to_str().expect("path"),
        "--at",
        "2021-11-15T00:00:00Z",
        "--data-dir",
        d,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let explain = |aaguid: &str, extra: &[&str]| -> Value {
        let mut args = vec![
            "policy",
            "explain",
            "--aaguid",
            aaguid,
            "--data-dir",
            d,
            "--json",
        ];
        args.extend_from_slice(extra);
        json_of(&signet(&args))
    };
    // YubiKey 5 Series: certified L1, secure element. Attested and
    // device-bound it is tier 2 (tier 1 needs L2 under the built-in policy).
    let yubikey = "cb69481e-8ff7-4039-93ec-0a2729a154a8";
    let a = explain(yubikey, &["--attested"]);
    assert_eq!(a["tier"], 2, "{a}");
    assert_eq!(a["model"], "YubiKey  5 Series");
    assert!(a["reasons"].to_string().contains("below L2"), "{a}");
    // The same AAGUID without a verified chain is self-asserted: tier 3.
    assert_eq!(explain(yubikey, &[])["tier"], 3);
    // Windows Hello's software authenticator, attested: tier 3.
    let a = explain("6028b017-b1d4-4c02-b4b3-afcdafc96bb2", &["--attested"]);
    assert_eq!(a["tier"], 3, "{a}");
    assert!(a["reasons"].to_string().contains("software"), "{a}");
    // Unknown to the catalog: tier 4, accepted marked by the built-in policy.
    let a = explain("00000000-0000-0000-0000-0000000000ff", &["--attested"]);
    assert_eq!(a["tier"], 4);
    assert_eq!(a["registration"], "accept-marked");

    // A bank policy with tier 1 from L1 makes the attested YubiKey tier 1.
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "version = \"l1\"\n[tier1]\nmin_certification = \"L1\"\n",
    )
    .expect("write");
    let a = explain(
        yubikey,
        &["--attested", "--policy", policy.to_str().expect("path")],
    );
    assert_eq!(a["tier"], 1, "{a}");
    assert_eq!(a["policyVersion"], "l1");
    // Synced (BE) cannot be tier 1 while tier1.device_bound holds.
    let a = explain(
        yubikey,
        &[
            "--attested",
            "--be",
            "--policy",
            policy.to_str().expect("path"),
        ],
    );
    assert_eq!(a["tier"], 2, "{a}");

    let out = signet(&["policy", "explain", "--aaguid", "zz"]);
    assert_eq!(out.status.code(), Some(1));
}
