//! Connecting signet's PostgreSQL store to a [`TestDb`].

use std::time::Duration;

use signet::store::postgres_store::{DEFAULT_TOMBSTONE_GRACE_MS, PgOptions};
use zeroize::Zeroizing;

use super::postgres::TestDb;

/// The options signet builds from `[store.postgres]`, for `db`.
pub fn options(db: &TestDb) -> PgOptions {
    let password = std::fs::read_to_string(&db.password_file).expect("read the password file");
    let ca = std::fs::read(&db.ca).expect("read the database CA");
    PgOptions {
        url: db.url(),
        password: Zeroizing::new(password.trim_end().to_string()),
        tls: signet::store::pg_tls::client_config(&ca).expect("database CA"),
        pool_size: 8,
        connect_timeout: Duration::from_secs(10),
        tombstone_grace_ms: DEFAULT_TOMBSTONE_GRACE_MS,
    }
}
