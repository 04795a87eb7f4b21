//! `signet store copy`: an appliance moved from sled to PostgreSQL. A real
//! service writes a sled store (a passkey, logins, a payment with its
//! receipt, spent ceremonies, an audit chain), is stopped, and its store is
//! copied with the CLI into an empty, migrated database. The copy reports
//! every table verified; the same service started again on the database
//! logs the passkey in, serves the receipt, refuses the spent ceremony and
//! extends the same audit chain. A second copy into the now full database,
//! and every malformed argument, are refused without writing anything.

#![cfg(feature = "testkit")]

mod common;

use std::process::Command;

use serde_json::{Value, json};
use signet::store::PgStore;

use common::load::{self, Api, assertion, slug};
use common::postgres::TestDb;
use common::server::{SignetServer, signet_bin, store_postgres};

fn copy(from: &str, db: &TestDb, extra: &[&str]) -> std::process::Output {
    Command::new(signet_bin())
        .args(["store", "copy", "--from", from])
        .arg("--to")
        .arg(format!("postgres:{}", db.url()))
        .arg("--password-file")
        .arg(&db.password_file)
        .arg("--ca")
        .arg(&db.ca)
        .args(extra)
        .output()
        .expect("run signet store copy")
}

#[test]
fn a_sled_appliance_moves_to_postgres_and_carries_on() {
    let mut server = SignetServer::start();
    let api = Api::new(&server, "rp");
    let (mut auth, registered) = load::register(&api, &api, "mover");
    let login_options = api.expect(
        "/v1/authentications/options",
        &json!({"user": {"name": "mover"}}),
        200,
    );
    let spent = json!({
        "ceremonyId": login_options["ceremonyId"],
        "credential": assertion(&mut auth, &login_options["publicKey"]),
    });
    api.expect("/v1/authentications/verify", &spent, 200);
    let tx = api.expect(
        "/v1/transactions",
        &load::payment("mover", "42.00", "COPY-1"),
        201,
    );
    let tx_id = tx["transactionId"]
        .as_str()
        .expect("transactionId")
        .to_string();
    let approved = api.expect(
        &format!("/v1/transactions/{tx_id}/approval"),
        &json!({"credential": assertion(&mut auth, &tx["publicKey"])}),
        200,
    );
    // A live ceremony too: it must still be usable after the move.
    let pending = api.expect(
        "/v1/authentications/options",
        &json!({"user": {"name": "mover"}}),
        200,
    );
    let before = load::audit_entries(&Api::new(&server, "auditor"));
    let (status, log) = server.stop();
    assert!(status.success(), "{log}");

    let db = TestDb::new();
    PgStore::migrate(&common::pg_store::options(&db), 1).expect("migrate");
    let from = format!("sled:{}", server.data_dir().display());
    let out = copy(&from, &db, &["--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let tables = report["tables"].as_array().expect("tables");
    assert_eq!(tables.len(), 9, "{report}");
    for t in tables {
        assert_eq!(t["matches"], true, "{t}");
        assert_eq!(t["source"], t["target"], "{t}");
    }
    let count = |name: &str| {
        tables
            .iter()
            .find(|t| t["table"] == name)
            .and_then(|t| t["target"].as_u64())
            .unwrap_or_else(|| panic!("no {name} in {report}"))
    };
    assert_eq!(
        (count("users"), count("credentials"), count("transactions")),
        (1, 1, 1)
    );
    assert_eq!(count("audit"), before.len() as u64);
    // Two ceremonies spent (registration, login) and one live.
    assert!(count("one_time") >= 3, "{report}");

    // A second copy finds the database full and writes nothing.
    let out = copy(&from, &db, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("already holds") && stderr.contains("nothing was written"),
        "{stderr}"
    );
    assert_eq!(db.psql("SELECT count(*) FROM users"), "1\n");

    // The same service, started again on the database.
    let text = std::fs::read_to_string(&server.config).expect("config");
    let text = text.replacen(
        "[store]\ndata_dir = \"data\"\n",
        &format!("[store]\n{}", store_postgres(&db)),
        1,
    );
    std::fs::write(&server.config, text).expect("config");
    server.spawn();
    let api = Api::new(&server, "rp");
    let (status, answer) = api
        .post("/v1/authentications/verify", &spent)
        .expect("replay");
    assert_eq!(
        (status, slug(&answer)),
        (409, "ceremony-consumed"),
        "{answer}"
    );
    let login = json!({
        "ceremonyId": pending["ceremonyId"],
        "credential": assertion(&mut auth, &pending["publicKey"]),
    });
    let verified = api.expect("/v1/authentications/verify", &login, 200);
    assert_eq!(verified["userId"], registered["userId"]);
    let (status, receipt) = api
        .get(&format!("/v1/transactions/{tx_id}/receipt"))
        .expect("receipt");
    assert_eq!(status, 200, "{receipt}");
    assert_eq!(receipt["receipt"], approved["receipt"]);
    let after = load::audit_entries(&Api::new(&server, "auditor"));
    assert!(after.len() > before.len());
    assert_eq!(
        &after[..before.len()],
        &before[..],
        "the copied chain is the chain"
    );
    assert_eq!(
        after[before.len()]["prevHash"],
        before[before.len() - 1]["hash"],
        "new entries extend it"
    );
}

#[test]
fn bad_copy_arguments_are_refused() {
    let db = TestDb::new();
    let empty = tempfile::tempdir().expect("tempdir");
    let cases: [(String, &str); 3] = [
        (format!("{}", empty.path().display()), "is not sled:DIR"),
        (
            format!("sled:{}", empty.path().display()),
            "no signet store there",
        ),
        (format!("postgres:{}", db.url()), "is not sled:DIR"),
    ];
    for (from, want) in cases {
        let out = copy(&from, &db, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{from}: {stderr}");
        assert!(stderr.contains(want), "{from}: {stderr}");
    }
    let out = Command::new(signet_bin())
        .args(["store", "copy", "--from", "sled:/nonexistent", "--to"])
        .arg(format!("mysql:{}", db.url()))
        .arg("--password-file")
        .arg(&db.password_file)
        .arg("--ca")
        .arg(&db.ca)
        .output()
        .expect("run");
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not postgres:URL"));
}
