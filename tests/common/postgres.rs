//! A fresh, empty PostgreSQL database per test, on the server that
//! `scripts/test` starts with `scripts/pg-up` (TLS only, SCRAM passwords, on
//! 127.0.0.1), driven with the `psql` command-line client.
//!
//! The server is described by the `SIGNET_TEST_PG_*` variables of
//! `DIR/env` (written by `scripts/pg-up DIR`): host, port, role (`signet`,
//! which may create databases), the file holding its password and the CA
//! the server's certificate chains to. Every connection made here is
//! `sslmode=verify-full` against that CA, and the password reaches `psql`
//! through `PGPASSWORD`, never its command line. SQL goes to `psql` on stdin.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

pub const HOST_VAR: &str = "SIGNET_TEST_PG_HOST";
pub const PORT_VAR: &str = "SIGNET_TEST_PG_PORT";
pub const USER_VAR: &str = "SIGNET_TEST_PG_USER";
pub const PASSWORD_FILE_VAR: &str = "SIGNET_TEST_PG_PASSWORD_FILE";
pub const CA_VAR: &str = "SIGNET_TEST_PG_CA";
pub const ADMIN_PASSWORD_FILE_VAR: &str = "SIGNET_TEST_PG_ADMIN_PASSWORD_FILE";
pub const DIR_VAR: &str = "SIGNET_TEST_PG_DIR";

/// The variables `TestDb` needs.
const REQUIRED: [&str; 5] = [HOST_VAR, PORT_VAR, USER_VAR, PASSWORD_FILE_VAR, CA_VAR];

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Whether the `SIGNET_TEST_PG_*` variables name a server (`scripts/test`
/// sets them; so does sourcing `DIR/env` after `scripts/pg-up DIR`).
pub fn configured() -> bool {
    REQUIRED
        .iter()
        .all(|var| std::env::var_os(var).is_some_and(|v| !v.is_empty()))
}

fn var(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{name} is not set: the PostgreSQL tests need the server that scripts/test starts \
             (with scripts/pg-up); run them through scripts/test, or start one with \
             `scripts/pg-up DIR` and export its variables with `set -a; . DIR/env; set +a`"
        ),
    }
}

/// A fresh, empty database on the PostgreSQL that scripts/test started
/// (scripts/pg-up), owned by the test role and dropped on Drop.
pub struct TestDb {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password_file: PathBuf,
    pub ca: PathBuf,
}

impl TestDb {
    /// Creates a database with a name no other test (process) uses:
    /// `CREATE DATABASE signet_t_<pid>_<n>_<nanos> OWNER signet`, as the
    /// test role over TLS. Panics when the server is not configured or
    /// refuses.
    pub fn new() -> TestDb {
        let port = var(PORT_VAR);
        let mut db = TestDb {
            name: String::new(),
            host: var(HOST_VAR),
            port: port
                .parse()
                .unwrap_or_else(|_| panic!("{PORT_VAR} is not a port: {port:?}")),
            user: var(USER_VAR),
            password_file: PathBuf::from(var(PASSWORD_FILE_VAR)),
            ca: PathBuf::from(var(CA_VAR)),
        };
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos();
        let name = format!(
            "signet_t_{}_{}_{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let out = db.run_psql(
            &db.conninfo_for("postgres", "verify-full"),
            &format!(
                "CREATE DATABASE {} OWNER {};",
                quote_ident(&name),
                quote_ident(&db.user)
            ),
        );
        check(&out, &format!("CREATE DATABASE {name}"));
        db.name = name;
        db
    }

    /// `postgresql://USER@HOST:PORT/NAME`: no password (that is in
    /// `password_file`) and no TLS parameters (the CA is `ca`).
    pub fn url(&self) -> String {
        format!(
            "postgresql://{}@{}:{}/{}",
            self.user, self.host, self.port, self.name
        )
    }

    /// The test role's password, from `password_file`.
    pub fn password(&self) -> String {
        let text = std::fs::read_to_string(&self.password_file).unwrap_or_else(|e| {
            panic!(
                "read the PostgreSQL password file {}: {e}",
                self.password_file.display()
            )
        });
        text.trim_end_matches(['\r', '\n']).to_owned()
    }

    /// A libpq connection string for this database with SSLMODE
    /// (`verify-full` with `sslrootcert` = `ca` checks the server's
    /// certificate and host name).
    pub fn conninfo(&self, sslmode: &str) -> String {
        self.conninfo_for(&self.name, sslmode)
    }

    /// A libpq connection string for DBNAME on the same server.
    pub fn conninfo_for(&self, dbname: &str, sslmode: &str) -> String {
        format!(
            "host={} port={} user={} dbname={} sslmode={} sslrootcert={} \
             connect_timeout=10 application_name=signet-tests",
            conninfo_value(&self.host),
            self.port,
            conninfo_value(&self.user),
            conninfo_value(dbname),
            conninfo_value(sslmode),
            conninfo_value(&self.ca.to_string_lossy()),
        )
    }

    /// A `psql` for CONNINFO with the test role's password in `PGPASSWORD`,
    /// no `~/.psqlrc`, unaligned tuples-only output, stopping at the first
    /// error; give it SQL on stdin (see `run_psql`).
    pub fn psql_command(&self, conninfo: &str) -> Command {
        let mut cmd = Command::new("psql");
        cmd.args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-d", conninfo])
            .env("PGPASSWORD", self.password())
            .env_remove("PGPASSFILE")
            .env_remove("PGSERVICE")
            .env_remove("PGOPTIONS");
        cmd
    }

    /// Runs SQL (on stdin) with `psql` for CONNINFO; the output whatever
    /// the exit status.
    pub fn run_psql(&self, conninfo: &str, sql: &str) -> Output {
        let mut child = self
            .psql_command(conninfo)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run psql (the PostgreSQL client; scripts/setup installs it)");
        let mut stdin = child.stdin.take().expect("psql stdin");
        let sql = sql.to_owned();
        // A thread, so that a big result cannot block psql while we write.
        let writer = std::thread::spawn(move || {
            // psql may exit early (connection refused): a broken pipe is
            // reported by its exit status and stderr instead.
            let _ = stdin.write_all(sql.as_bytes());
        });
        let out = child.wait_with_output().expect("wait for psql");
        writer.join().expect("psql stdin writer");
        out
    }

    /// Runs SQL in this database as the test role over TLS and returns
    /// psql's stdout (`-At`: unaligned, tuples only, `|` between columns);
    /// panics with psql's stderr if anything fails.
    pub fn psql(&self, sql: &str) -> String {
        let out = self.run_psql(&self.conninfo("verify-full"), sql);
        check(&out, &format!("psql in {}", self.name));
        String::from_utf8(out.stdout).expect("psql output is UTF-8")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if self.name.is_empty() {
            return;
        }
        // FORCE: a connection the test leaked must not keep the database.
        let _ = self.run_psql(
            &self.conninfo_for("postgres", "verify-full"),
            &format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE);",
                quote_ident(&self.name)
            ),
        );
    }
}

fn check(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim_end()
    );
}

/// An SQL identifier in double quotes.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A libpq connection-string value in single quotes.
fn conninfo_value(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}
