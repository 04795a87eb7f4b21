//! The PostgreSQL that `scripts/test` starts (`scripts/pg-up`) and the
//! `TestDb` fixture are what the store tests rely on: a database per test
//! that really goes away, and a server that takes TLS only and whose
//! certificate verifies against `SIGNET_TEST_PG_CA` and nothing else.

mod common;

use std::process::Command;

use common::postgres::TestDb;

#[test]
fn a_test_database_is_usable_over_tls_and_gone_after_drop() {
    let db = TestDb::new();
    assert!(db.name.starts_with("signet_t_"), "{}", db.name);
    assert_eq!(
        db.url(),
        format!(
            "postgresql://{}@{}:{}/{}",
            db.user, db.host, db.port, db.name
        )
    );
    assert!(!db.url().contains(&db.password()), "no password in the URL");

    assert_eq!(
        db.psql(
            "CREATE TABLE t (id int PRIMARY KEY, v text NOT NULL);
             INSERT INTO t VALUES (1, 'eins'), (2, 'zwei ✓');
             SELECT id, v FROM t ORDER BY id;"
        ),
        "1|eins\n2|zwei ✓\n"
    );
    assert_eq!(
        db.psql(
            "SELECT ssl, current_user, current_database(), pg_encoding_to_char(encoding) \
             FROM pg_stat_ssl, pg_database \
             WHERE pid = pg_backend_pid() AND datname = current_database();"
        ),
        format!("t|{}|{}|UTF8\n", db.user, db.name),
        "the session is TLS, as the test role, in the test's database"
    );
    assert_eq!(
        db.psql(&format!(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '{}';",
            db.name
        )),
        format!("{}\n", db.user),
        "the test role owns its database"
    );

    let other = TestDb::new();
    assert_ne!(other.name, db.name);
    let exists = format!(
        "SELECT count(*) FROM pg_database WHERE datname = '{}';",
        db.name
    );
    assert_eq!(other.psql(&exists), "1\n");
    // A leaked session must not keep the database from being dropped.
    let mut leaked = db
        .psql_command(&db.conninfo("verify-full"))
        .args(["-c", "SELECT pg_sleep(60)"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run psql");
    wait_for_session(&other, &db.name);
    drop(db);
    assert_eq!(
        other.psql(&exists),
        "0\n",
        "the database is gone after drop"
    );
    let status = leaked.wait().expect("wait for psql");
    assert!(!status.success(), "the leaked session was terminated");
}

/// Waits until a backend is connected to DBNAME.
fn wait_for_session(db: &TestDb, dbname: &str) {
    let sql = format!("SELECT count(*) FROM pg_stat_activity WHERE datname = '{dbname}';");
    for _ in 0..200 {
        if db.psql(&sql) != "0\n" {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("no session in {dbname} after 10 s");
}

#[test]
fn a_connection_without_tls_is_refused() {
    let db = TestDb::new();
    let out = db.run_psql(&db.conninfo("disable"), "SELECT 1;");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "sslmode=disable was accepted: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr.contains("no pg_hba.conf entry") && stderr.contains("no encryption"),
        "refused, but not by pg_hba.conf for lack of TLS: {stderr}"
    );

    // The same role, password and database with TLS (not verifying the
    // certificate): accepted, so the refusal above is for TLS alone.
    let out = db.run_psql(
        &db.conninfo("require"),
        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid();",
    );
    assert!(
        out.status.success(),
        "sslmode=require: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "t\n");
}

#[test]
fn the_server_certificate_does_not_verify_against_another_ca() {
    let db = TestDb::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("other.key");
    let cert = dir.path().join("other-ca.pem");
    // A self-signed CA for the same names, unrelated to the server's.
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "basicConstraints=critical,CA:true"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl req: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let wrong = TestDb {
        name: String::new(), // nothing to drop
        host: db.host.clone(),
        port: db.port,
        user: db.user.clone(),
        password_file: db.password_file.clone(),
        ca: cert,
    };
    let out = wrong.run_psql(&wrong.conninfo_for(&db.name, "verify-full"), "SELECT 1;");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "verify-full accepted a server certificate of another CA"
    );
    assert!(
        stderr.contains("certificate verify failed"),
        "failed, but not in certificate verification: {stderr}"
    );

    // The right CA, but a host name the certificate does not carry (the
    // same address: libpq's later keywords win).
    let out = db.run_psql(
        &format!(
            "{} host=signet.invalid hostaddr={}",
            db.conninfo("verify-full"),
            db.host
        ),
        "SELECT 1;",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "verify-full accepted a certificate for another name"
    );
    assert!(
        stderr.contains("does not match host name"),
        "failed, but not for the host name: {stderr}"
    );

    // And the right CA verifies.
    assert_eq!(db.psql("SELECT 1;"), "1\n");
}
