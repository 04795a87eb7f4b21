//! The PostgreSQL backend: several signet instances on one database.
//!
//! Every [`Store`] method is one SQL transaction on a pooled connection,
//! and nothing is held in memory between calls, so instances share nothing
//! but the database. What makes that safe:
//!
//! * **One-time objects** are consumed by one `UPDATE ... WHERE state = 0`
//!   on a row locked `FOR UPDATE`: of any number of concurrent consumers on
//!   any number of instances, one sees the live row, the others see the
//!   tombstone it left.
//! * **Compare-and-swap** (devices, transactions, pairings, counters) reads
//!   the row `FOR UPDATE`, applies the same rules as the embedded backend
//!   (`store::check_swap`, `store::advance_counter`) and writes it back in the same
//!   transaction.
//! * **The audit chain** stays one chain: every append locks the single
//!   `audit_head` row, so the sequence number and previous hash are assigned
//!   inside the database transaction.
//! * **Durability** is PostgreSQL's: a commit returns once its WAL is
//!   flushed (and, with `synchronous_standby_names`, replicated). signet
//!   refuses a server with `fsync` or `synchronous_commit` off, since an
//!   acknowledged write could then be lost.
//!
//! Records are the same CBOR envelopes the sled backend stores; columns
//! beside them hold only keys and what SQL must index. The schema lives in
//! `migrations/postgres/` and is applied by `signet store migrate`;
//! [`PgStore::connect`] refuses a database whose schema is missing, older
//! or newer than this build's.

use std::time::Duration;

use postgres::error::SqlState;
use postgres::{Client, Row, Transaction};
use r2d2::PooledConnection;
use r2d2_postgres::PostgresConnectionManager;
use zeroize::Zeroizing;

use super::copy::{Item, OneTimeRow, OneTimeState, Source, TableReport, Tally, compare};
use super::pg_tls::MakeRustlsConnect;
use super::{
    AUDIT_GENESIS_PREV_HASH, AuditBuilder, AuditEntry, CatalogInfo, Checkpoint, CredentialRecord,
    DeviceId, DeviceRecord, MetadataEntry, MetadataStatus, OneTime, PairingId, PairingRecord,
    Revised, Store, StoreError, TransactionId, TransactionRecord, User, advance_counter,
    bounded_text, check_binding, check_catalog, check_credential_id, check_flag_reason,
    check_new_device, check_new_pairing, check_new_transaction, check_one_time, check_swap,
    decode_record, encode_record, hex, pairing_approval, transaction_approval,
};

/// The schema version this build reads and writes (the highest migration).
pub const SCHEMA_VERSION: i32 = 1;

/// The migrations, in order: (version, name, SQL).
pub const MIGRATIONS: &[(i32, &str, &str)] = &[(
    1,
    "initial",
    include_str!("../../migrations/postgres/0001_initial.sql"),
)];

/// Long enough for a client retrying the next morning to be told "already
/// used" (see the sled backend's constant of the same name).
pub const DEFAULT_TOMBSTONE_GRACE_MS: u64 = 24 * 60 * 60 * 1000;

/// One-time object states in `one_time.state`.
const LIVE: i16 = 0;
const CONSUMED: i16 = 1;
const EXPIRED: i16 = 2;

type Manager = PostgresConnectionManager<MakeRustlsConnect>;
type Conn = PooledConnection<Manager>;

/// How to reach the database.
pub struct PgOptions {
    /// `postgresql://USER@HOST:PORT/DATABASE` (no password: see `password`).
    pub url: String,
    /// Read from `store.postgres.password_file`; zeroized when dropped.
    pub password: Zeroizing<String>,
    /// Verifies the server's certificate (TLS is always on).
    pub tls: rustls::ClientConfig,
    /// Connections kept open at most.
    pub pool_size: u32,
    /// How long a request waits for a free connection (and a new connection
    /// for the server) before failing.
    pub connect_timeout: Duration,
    pub tombstone_grace_ms: u64,
}

pub struct PgStore {
    pool: r2d2::Pool<Manager>,
    tombstone_grace_ms: u64,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("tombstone_grace_ms", &self.tombstone_grace_ms)
            .finish_non_exhaustive()
    }
}

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> StoreError {
        // A connection that broke, or a server that is shutting down,
        // starting, or out of connections, is a wait, not a fault: the
        // request is answered 503 and may be retried.
        let unavailable = e.is_closed()
            || e.as_db_error().is_none() && e.code().is_none()
            || [
                SqlState::ADMIN_SHUTDOWN,
                SqlState::CRASH_SHUTDOWN,
                SqlState::CANNOT_CONNECT_NOW,
                SqlState::TOO_MANY_CONNECTIONS,
                SqlState::READ_ONLY_SQL_TRANSACTION,
            ]
            .iter()
            .any(|c| e.code() == Some(c));
        // postgres::Error's Display names the step ("error performing TLS
        // handshake"); the cause (an unknown issuer, a refused password) is
        // in its sources, and an operator needs both.
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            let more = cause.to_string();
            if !text.contains(&more) {
                text = format!("{text}: {more}");
            }
            source = cause.source();
        }
        if unavailable {
            StoreError::Unavailable { detail: text }
        } else {
            StoreError::Backend(text.into())
        }
    }
}

impl From<r2d2::Error> for StoreError {
    fn from(e: r2d2::Error) -> StoreError {
        StoreError::Unavailable {
            detail: format!("no database connection: {e}"),
        }
    }
}

fn config_error(detail: impl Into<String>) -> StoreError {
    StoreError::Invalid {
        field: "store.postgres.url",
        detail: detail.into(),
    }
}

/// The connection manager for `options`: its URL checked, TLS required.
fn manager(options: &PgOptions) -> Result<Manager, StoreError> {
    let mut config: postgres::Config = options
        .url
        .parse()
        .map_err(|e: postgres::Error| config_error(e.to_string()))?;
    if config.get_password().is_some() {
        return Err(config_error(
            "carries a password; put it in store.postgres.password_file",
        ));
    }
    if config.get_user().is_none() || config.get_dbname().is_none() {
        return Err(config_error("must name the user and the database"));
    }
    config
        .password(options.password.as_bytes())
        .ssl_mode(postgres::config::SslMode::Require)
        .connect_timeout(options.connect_timeout)
        .application_name("signet");
    Ok(PostgresConnectionManager::new(
        config,
        MakeRustlsConnect::new(options.tls.clone()),
    ))
}

/// Opens one connection directly: its error is the server's or the TLS
/// layer's own, at once, where the pool would retry until its timeout and
/// then report only that it timed out.
fn first_connection(manager: &Manager) -> Result<Client, StoreError> {
    Ok(r2d2::ManageConnection::connect(manager)?)
}

/// The pool over `manager`; connections open on first use and are checked
/// before each use, so one the server closed (a failover, a restart) is
/// replaced instead of failing a request.
fn pool(manager: Manager, options: &PgOptions) -> r2d2::Pool<Manager> {
    r2d2::Pool::builder()
        .max_size(options.pool_size)
        .min_idle(Some(0))
        .connection_timeout(options.connect_timeout)
        .test_on_check_out(true)
        .build_unchecked(manager)
}

impl PgStore {
    /// Connects and checks the database: its schema is this build's, and
    /// the server does not acknowledge commits before they are durable.
    pub fn connect(options: &PgOptions) -> Result<PgStore, StoreError> {
        let manager = manager(options)?;
        let mut conn = first_connection(&manager)?;
        check_durability(&mut conn)?;
        let store = PgStore {
            pool: pool(manager, options),
            tombstone_grace_ms: options.tombstone_grace_ms,
        };
        match schema_version(&mut conn)? {
            None => Err(StoreError::Invalid {
                field: "store.postgres",
                detail: "the database has no signet schema; run `signet store migrate`".into(),
            }),
            Some(v) if v > SCHEMA_VERSION => Err(StoreError::UnsupportedVersion {
                found: u32::try_from(v).unwrap_or(u32::MAX),
                supported: SCHEMA_VERSION as u32,
            }),
            Some(v) if v < SCHEMA_VERSION => Err(StoreError::Invalid {
                field: "store.postgres",
                detail: format!(
                    "the database has schema version {v}, this build needs {SCHEMA_VERSION}; run `signet store migrate`"
                ),
            }),
            Some(_) => Ok(store),
        }
    }

    /// Applies the migrations the database lacks, each in its own
    /// transaction, under an advisory lock so that two instances migrating
    /// at once apply each migration once. Returns the versions applied.
    pub fn migrate(options: &PgOptions, now_ms: u64) -> Result<Vec<i32>, StoreError> {
        let mut conn = first_connection(&manager(options)?)?;
        check_durability(&mut conn)?;
        let mut tx = conn.transaction()?;
        // A constant key: "signet" in ASCII.
        tx.execute("SELECT pg_advisory_xact_lock(115105103110101116)", &[])?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS signet_schema (
                 version     integer PRIMARY KEY,
                 name        text    NOT NULL,
                 applied_ms  bigint  NOT NULL
             )",
        )?;
        let current: i32 = tx
            .query_one("SELECT coalesce(max(version), 0) FROM signet_schema", &[])?
            .get(0);
        if current > SCHEMA_VERSION {
            return Err(StoreError::UnsupportedVersion {
                found: u32::try_from(current).unwrap_or(u32::MAX),
                supported: SCHEMA_VERSION as u32,
            });
        }
        let mut applied = Vec::new();
        for &(version, name, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
            tx.batch_execute(sql)?;
            tx.execute(
                "INSERT INTO signet_schema (version, name, applied_ms) VALUES ($1, $2, $3)",
                &[&version, &name, &ms(now_ms, "now")?],
            )?;
            applied.push(version);
        }
        tx.commit()?;
        Ok(applied)
    }

    fn conn(&self) -> Result<Conn, StoreError> {
        Ok(self.pool.get()?)
    }

    fn purge_at(&self, expires_ms: u64) -> u64 {
        expires_ms.saturating_add(self.tombstone_grace_ms)
    }

    /// Runs `f` in a transaction and commits; an error rolls back.
    fn in_tx<R>(
        &self,
        f: impl FnOnce(&mut Transaction<'_>) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction()?;
        let r = f(&mut tx)?;
        tx.commit()?;
        Ok(r)
    }

    /// Reads, changes and writes back one credential in one transaction.
    fn update_credential(
        &self,
        id: &[u8],
        change: impl FnOnce(&mut CredentialRecord) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.in_tx(|tx| {
            let mut record = credential_for_update(tx, id)?;
            change(&mut record)?;
            write_credential(tx, &record)
        })
    }

    /// `record` swapped in, and the credential's counter moved, in one
    /// transaction: a verified assertion and what it approves commit
    /// together or not at all.
    fn swap_with_counter<R: Revised + serde::Serialize>(
        &self,
        record: &R,
        credential_id: &[u8],
        (new_sign_count, backup_state, used_ms): (u32, bool, u64),
    ) -> Result<(), StoreError> {
        let value = encode_record(record)?;
        self.in_tx(|tx| {
            swap(tx, record, &value)?;
            let mut credential = credential_for_update(tx, credential_id)?;
            advance_counter(&mut credential, new_sign_count, backup_state, used_ms)?;
            write_credential(tx, &credential)
        })
    }

    fn insert_revised<R: Revised + serde::Serialize>(
        &self,
        record: &R,
        what: &'static str,
    ) -> Result<(), StoreError> {
        let value = encode_record(record)?;
        let sql = format!("INSERT INTO {} (id, record) VALUES ($1, $2)", R::TREE);
        let mut conn = self.conn()?;
        match conn.execute(sql.as_str(), &[&record.key(), &value]) {
            Ok(_) => Ok(()),
            Err(e) if unique_violation(&e) => Err(StoreError::Exists { what }),
            Err(e) => Err(e.into()),
        }
    }

    fn get_revised<R: Revised>(&self, id: &[u8]) -> Result<Option<R>, StoreError> {
        let sql = format!("SELECT record FROM {} WHERE id = $1", R::TREE);
        let mut conn = self.conn()?;
        let Some(row) = conn.query_opt(sql.as_str(), &[&id])? else {
            return Ok(None);
        };
        let record: R = decode_record(R::TREE, id, row.get::<_, &[u8]>(0))?;
        if record.key() != id {
            return Err(corrupt(
                R::TREE,
                id,
                "record carries another id than its key",
            ));
        }
        Ok(Some(record))
    }

    fn update_revised<R: Revised + serde::Serialize>(&self, record: &R) -> Result<(), StoreError> {
        let value = encode_record(record)?;
        self.in_tx(|tx| swap(tx, record, &value))
    }
}

/// Refuses a server that acknowledges commits before they are durable.
fn check_durability(conn: &mut Client) -> Result<(), StoreError> {
    for (setting, refused) in [("fsync", "off"), ("synchronous_commit", "off")] {
        let value: String = conn.query_one(&format!("SHOW {setting}"), &[])?.get(0);
        if value == refused {
            return Err(StoreError::Invalid {
                field: "store.postgres",
                detail: format!(
                    "the server runs with {setting} = {value}: an acknowledged write could be lost; turn it on"
                ),
            });
        }
    }
    Ok(())
}

/// The database's schema version; `None` when it has no signet schema.
fn schema_version(conn: &mut Client) -> Result<Option<i32>, StoreError> {
    let exists: bool = conn
        .query_one("SELECT to_regclass('signet_schema') IS NOT NULL", &[])?
        .get(0);
    if !exists {
        return Ok(None);
    }
    let row = conn.query_one("SELECT max(version) FROM signet_schema", &[])?;
    Ok(row.get::<_, Option<i32>>(0))
}

fn unique_violation(e: &postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNIQUE_VIOLATION)
}

fn constraint(e: &postgres::Error) -> Option<&str> {
    e.as_db_error().and_then(|d| d.constraint())
}

fn corrupt(table: &'static str, key: &[u8], detail: &str) -> StoreError {
    StoreError::Corrupt {
        tree: table,
        key: hex(key),
        detail: detail.into(),
    }
}

/// Times and counts are unsigned in signet and `bigint` in SQL.
fn ms(value: u64, field: &'static str) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::Invalid {
        field,
        detail: "beyond the range the database stores".into(),
    })
}

fn unsigned(table: &'static str, key: &[u8], value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| corrupt(table, key, "negative time or sequence number"))
}

fn limit(value: usize) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn credential_for_update(
    tx: &mut Transaction<'_>,
    id: &[u8],
) -> Result<CredentialRecord, StoreError> {
    let Some(row) = tx.query_opt(
        "SELECT record FROM credentials WHERE id = $1 FOR UPDATE",
        &[&id],
    )?
    else {
        return Err(StoreError::NotFound { what: "credential" });
    };
    decode_credential(id, &row)
}

fn decode_credential(id: &[u8], row: &Row) -> Result<CredentialRecord, StoreError> {
    let record: CredentialRecord = decode_record("credentials", id, row.get::<_, &[u8]>(0))?;
    if record.id != id {
        return Err(corrupt(
            "credentials",
            id,
            "record carries another id than its key",
        ));
    }
    Ok(record)
}

/// Writes back a credential read `FOR UPDATE` (its id and user never change).
fn write_credential(tx: &mut Transaction<'_>, record: &CredentialRecord) -> Result<(), StoreError> {
    let value = encode_record(record)?;
    tx.execute(
        "UPDATE credentials SET record = $2 WHERE id = $1",
        &[&record.id, &value],
    )?;
    Ok(())
}

fn insert_credential_row(
    tx: &mut Transaction<'_>,
    credential: &CredentialRecord,
) -> Result<(), StoreError> {
    let value = encode_record(credential)?;
    let aaguid: &[u8] = &credential.aaguid;
    match tx.execute(
        "INSERT INTO credentials (id, user_id, aaguid, record) VALUES ($1, $2, $3, $4)",
        &[&credential.id, &credential.user_id, &aaguid, &value],
    ) {
        Ok(_) => Ok(()),
        Err(e) if unique_violation(&e) => Err(StoreError::Exists {
            what: "credential id",
        }),
        Err(e) if e.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION) => {
            Err(StoreError::NotFound { what: "user" })
        }
        Err(e) => Err(e.into()),
    }
}

/// Writes `record` (encoded as `value`) over the stored one if the rules
/// allow it and that one has the revision before it.
fn swap<R: Revised>(tx: &mut Transaction<'_>, record: &R, value: &[u8]) -> Result<(), StoreError> {
    let key = record.key();
    let select = format!("SELECT record FROM {} WHERE id = $1 FOR UPDATE", R::TREE);
    let Some(row) = tx.query_opt(select.as_str(), &[&key])? else {
        return Err(StoreError::NotFound { what: R::WHAT });
    };
    let stored: R = decode_record(R::TREE, key, row.get::<_, &[u8]>(0))?;
    check_swap(key, &stored, record)?;
    let update = format!("UPDATE {} SET record = $2 WHERE id = $1", R::TREE);
    tx.execute(update.as_str(), &[&key, &value])?;
    Ok(())
}

fn decode_audit(row: &Row) -> Result<AuditEntry, StoreError> {
    let seq: i64 = row.get(0);
    let key = seq.to_be_bytes();
    let entry: AuditEntry = decode_record("audit", &key, row.get::<_, &[u8]>(1))?;
    if i64::try_from(entry.seq).ok() != Some(seq) {
        return Err(corrupt(
            "audit",
            &key,
            "entry carries another seq than its key",
        ));
    }
    Ok(entry)
}

fn decode_checkpoint(row: &Row) -> Result<Checkpoint, StoreError> {
    let seq: i64 = row.get(0);
    let key = seq.to_be_bytes();
    let checkpoint: Checkpoint = decode_record("checkpoints", &key, row.get::<_, &[u8]>(1))?;
    if i64::try_from(checkpoint.seq).ok() != Some(seq) {
        return Err(corrupt(
            "checkpoints",
            &key,
            "checkpoint carries another seq than its key",
        ));
    }
    Ok(checkpoint)
}

fn spent_error(kind: OneTime, state: i16) -> StoreError {
    match state {
        EXPIRED => StoreError::Expired { what: kind.name() },
        _ => StoreError::AlreadyConsumed { what: kind.name() },
    }
}

fn metadata_status_in(
    conn: &mut impl postgres::GenericClient,
    lock: bool,
) -> Result<MetadataStatus, StoreError> {
    let sql = if lock {
        "SELECT generation, record FROM mds_status FOR UPDATE"
    } else {
        "SELECT generation, record FROM mds_status"
    };
    let row = conn.query_one(sql, &[])?;
    let generation: i64 = row.get(0);
    let record: Option<&[u8]> = row.get(1);
    let status = match record {
        Some(bytes) => decode_record("mds_status", b"status", bytes)?,
        None => MetadataStatus::default(),
    };
    if i64::try_from(status.generation).ok() != Some(generation) {
        return Err(corrupt(
            "mds_status",
            b"status",
            "status names another generation than its row",
        ));
    }
    Ok(status)
}

fn write_metadata_status(
    tx: &mut Transaction<'_>,
    status: &MetadataStatus,
) -> Result<(), StoreError> {
    let value = encode_record(status)?;
    tx.execute(
        "UPDATE mds_status SET generation = $1, record = $2",
        &[&ms(status.generation, "metadata generation")?, &value],
    )?;
    Ok(())
}

impl PgStore {
    fn metadata_lookup(&self, sql: &str, key: &[u8]) -> Result<Option<MetadataEntry>, StoreError> {
        // One statement: the status row and the entry are read from one
        // snapshot, so a lookup sees one catalog or the other.
        let mut conn = self.conn()?;
        let Some(row) = conn.query_opt(sql, &[&key])? else {
            return Ok(None);
        };
        Ok(Some(decode_record(
            "mds_entries",
            key,
            row.get::<_, &[u8]>(0),
        )?))
    }
}

impl PgStore {
    /// Copies what `source` visits into this database and verifies it, in
    /// one transaction: the database must hold no signet data yet, and the
    /// copy commits only when every table read back matches what was read
    /// from the source (count and digest; see `store::copy`).
    pub fn import(&self, source: &mut Source<'_>) -> Result<Vec<TableReport>, StoreError> {
        let grace = self.tombstone_grace_ms;
        self.in_tx(|tx| {
            let held: i64 = tx
                .query_one(
                    "SELECT (SELECT count(*) FROM users) + (SELECT count(*) FROM credentials)
                          + (SELECT count(*) FROM devices) + (SELECT count(*) FROM transactions)
                          + (SELECT count(*) FROM pairings) + (SELECT count(*) FROM one_time)
                          + (SELECT count(*) FROM audit)
                          + (SELECT count(*) FROM mds_status WHERE record IS NOT NULL)",
                    &[],
                )?
                .get(0);
            if held != 0 {
                return Err(StoreError::Conflict {
                    detail: format!(
                        "the target database already holds {held} signet records; copy into an empty, migrated database"
                    ),
                });
            }
            let mut read = Tally::default();
            let mut head: Option<(i64, [u8; 32])> = None;
            source(&mut |item| {
                read.add(&item)?;
                if let Item::Audit(e) = &item {
                    head = Some((ms(e.seq, "audit seq")?, e.hash));
                }
                insert_item(tx, &item, grace)
            })?;
            if let Some((seq, hash)) = head {
                let hash: &[u8] = &hash;
                tx.execute(
                    "UPDATE audit_head SET seq = $1, hash = $2",
                    &[&seq, &hash],
                )?;
            }
            let written = read_back(tx)?;
            compare(&read, &written)
        })
    }
}

/// The metadata generation a copied catalog gets.
const COPIED_GENERATION: i64 = 1;

fn insert_item(tx: &mut Transaction<'_>, item: &Item, grace: u64) -> Result<(), StoreError> {
    fn revised<R: Revised + serde::Serialize>(
        tx: &mut Transaction<'_>,
        r: &R,
    ) -> Result<(), StoreError> {
        let sql = format!("INSERT INTO {} (id, record) VALUES ($1, $2)", R::TREE);
        tx.execute(sql.as_str(), &[&r.key(), &encode_record(r)?])?;
        Ok(())
    }
    match item {
        Item::User(u) => {
            tx.execute(
                "INSERT INTO users (id, name, record) VALUES ($1, $2, $3)",
                &[&u.id, &u.name, &encode_record(u)?],
            )?;
        }
        Item::Credential(c) => insert_credential_row(tx, c)?,
        Item::Device(r) => revised(tx, r)?,
        Item::Transaction(r) => revised(tx, r)?,
        Item::Pairing(r) => revised(tx, r)?,
        Item::OneTime(row) => {
            let kind = i16::from(row.kind);
            let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
            let (state, expires, purge, spent, body): (i16, i64, i64, Option<i64>, Option<&[u8]>) =
                match &row.state {
                    OneTimeState::Live { expires_ms, body } => (
                        LIVE,
                        clamp(*expires_ms),
                        clamp(expires_ms.saturating_add(grace)),
                        None,
                        Some(body),
                    ),
                    OneTimeState::Consumed { at_ms, purge_ms } => (
                        CONSUMED,
                        clamp(*at_ms),
                        clamp(*purge_ms),
                        Some(clamp(*at_ms)),
                        None,
                    ),
                    OneTimeState::Expired { at_ms, purge_ms } => (
                        EXPIRED,
                        clamp(*at_ms),
                        clamp(*purge_ms),
                        Some(clamp(*at_ms)),
                        None,
                    ),
                };
            tx.execute(
                "INSERT INTO one_time (kind, id, state, expires_ms, purge_ms, spent_ms, body)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[&kind, &row.id, &state, &expires, &purge, &spent, &body],
            )?;
        }
        Item::Audit(e) => {
            tx.execute(
                "INSERT INTO audit (seq, record) VALUES ($1, $2)",
                &[&ms(e.seq, "audit seq")?, &encode_record(e)?],
            )?;
        }
        Item::Checkpoint(c) => {
            tx.execute(
                "INSERT INTO checkpoints (seq, record) VALUES ($1, $2)",
                &[&ms(c.seq, "checkpoint seq")?, &encode_record(c)?],
            )?;
        }
        Item::MetadataEntry(index, entry) => {
            let idx = i32::try_from(*index).map_err(|_| StoreError::TooLarge {
                field: "metadata entries",
                limit: super::limits::METADATA_ENTRIES_MAX,
            })?;
            let g = COPIED_GENERATION;
            tx.execute(
                "INSERT INTO mds_entries (generation, idx, record) VALUES ($1, $2, $3)",
                &[&g, &idx, &encode_record(entry)?],
            )?;
            if let Some(aaguid) = &entry.aaguid {
                tx.execute(
                    "INSERT INTO mds_by_aaguid (generation, aaguid, idx) VALUES ($1, $2, $3)",
                    &[&g, aaguid, &idx],
                )?;
            }
            for key_id in &entry.key_ids {
                tx.execute(
                    "INSERT INTO mds_by_key_id (generation, key_id, idx) VALUES ($1, $2, $3)",
                    &[&g, key_id, &idx],
                )?;
            }
        }
        Item::MetadataStatus(status) => {
            let mut status = status.clone();
            status.generation = COPIED_GENERATION as u64;
            write_metadata_status(tx, &status)?;
        }
    }
    Ok(())
}

/// Everything the database holds, tallied as `store::copy` compares it.
fn read_back(tx: &mut Transaction<'_>) -> Result<Tally, StoreError> {
    fn rows(
        tx: &mut Transaction<'_>,
        sql: &str,
        mut f: impl FnMut(&Row) -> Result<Item, StoreError>,
        tally: &mut Tally,
    ) -> Result<(), StoreError> {
        use postgres::fallible_iterator::FallibleIterator;
        let mut it = tx.query_raw(sql, std::iter::empty::<i32>())?;
        while let Some(row) = it.next()? {
            tally.add(&f(&row)?)?;
        }
        Ok(())
    }
    /// Every `(id, record)` of `table`, decoded as `T` and wrapped as an item.
    fn records<T: serde::de::DeserializeOwned>(
        tx: &mut Transaction<'_>,
        table: &'static str,
        wrap: fn(T) -> Item,
        tally: &mut Tally,
    ) -> Result<(), StoreError> {
        let sql = format!("SELECT id, record FROM {table}");
        rows(
            tx,
            &sql,
            |r| Ok(wrap(decode_record(table, r.get(0), r.get::<_, &[u8]>(1))?)),
            tally,
        )
    }
    let mut t = Tally::default();
    records(tx, "users", Item::User, &mut t)?;
    records(tx, "credentials", Item::Credential, &mut t)?;
    records(tx, "devices", Item::Device, &mut t)?;
    records(tx, "transactions", Item::Transaction, &mut t)?;
    records(tx, "pairings", Item::Pairing, &mut t)?;
    rows(
        tx,
        "SELECT kind, id, state, expires_ms, purge_ms, spent_ms, body FROM one_time",
        |r| {
            let id: Vec<u8> = r.get(1);
            let at = |v: Option<i64>| unsigned("one_time", &id, v.unwrap_or(-1));
            let kind = u8::try_from(r.get::<_, i16>(0))
                .map_err(|_| corrupt("one_time", &id, "kind out of range"))?;
            let state = match r.get::<_, i16>(2) {
                LIVE => OneTimeState::Live {
                    expires_ms: unsigned("one_time", &id, r.get(3))?,
                    body: r.get::<_, Option<Vec<u8>>>(6).ok_or_else(|| {
                        corrupt("one_time", &id, "a live object without its body")
                    })?,
                },
                CONSUMED => OneTimeState::Consumed {
                    at_ms: at(r.get(5))?,
                    purge_ms: unsigned("one_time", &id, r.get(4))?,
                },
                _ => OneTimeState::Expired {
                    at_ms: at(r.get(5))?,
                    purge_ms: unsigned("one_time", &id, r.get(4))?,
                },
            };
            Ok(Item::OneTime(OneTimeRow { kind, id, state }))
        },
        &mut t,
    )?;
    rows(
        tx,
        "SELECT seq, record FROM audit",
        |r| Ok(Item::Audit(decode_audit(r)?)),
        &mut t,
    )?;
    rows(
        tx,
        "SELECT seq, record FROM checkpoints",
        |r| Ok(Item::Checkpoint(decode_checkpoint(r)?)),
        &mut t,
    )?;
    let status = metadata_status_in(tx, false)?;
    if status.catalog.is_some() {
        let sql = format!(
            "SELECT idx, record FROM mds_entries WHERE generation = {}",
            ms(status.generation, "metadata generation")?
        );
        rows(
            tx,
            &sql,
            |r| {
                let idx = u32::try_from(r.get::<_, i32>(0))
                    .map_err(|_| corrupt("mds_entries", b"idx", "negative index"))?;
                Ok(Item::MetadataEntry(
                    idx,
                    decode_record("mds_entries", &idx.to_be_bytes(), r.get::<_, &[u8]>(1))?,
                ))
            },
            &mut t,
        )?;
        t.add(&Item::MetadataStatus(status))?;
    }
    Ok(t)
}

impl Store for PgStore {
    fn put_user(&self, user: &User) -> Result<(), StoreError> {
        user.validate()?;
        let value = encode_record(user)?;
        let mut conn = self.conn()?;
        match conn.execute(
            "INSERT INTO users (id, name, record) VALUES ($1, $2, $3)",
            &[&user.id, &user.name, &value],
        ) {
            Ok(_) => Ok(()),
            Err(e) if unique_violation(&e) => Err(StoreError::Exists {
                what: if constraint(&e) == Some("users_name_key") {
                    "user name"
                } else {
                    "user id"
                },
            }),
            Err(e) => Err(e.into()),
        }
    }

    fn user_by_id(&self, id: &[u8]) -> Result<Option<User>, StoreError> {
        let mut conn = self.conn()?;
        let Some(row) = conn.query_opt("SELECT record FROM users WHERE id = $1", &[&id])? else {
            return Ok(None);
        };
        let user: User = decode_record("users", id, row.get::<_, &[u8]>(0))?;
        if user.id != id {
            return Err(corrupt(
                "users",
                id,
                "record carries another id than its key",
            ));
        }
        Ok(Some(user))
    }

    fn user_by_name(&self, name: &str) -> Result<Option<User>, StoreError> {
        let mut conn = self.conn()?;
        let Some(row) = conn.query_opt("SELECT id, record FROM users WHERE name = $1", &[&name])?
        else {
            return Ok(None);
        };
        let id: &[u8] = row.get(0);
        let user: User = decode_record("users", id, row.get::<_, &[u8]>(1))?;
        if user.name != name || user.id != id {
            return Err(corrupt(
                "users",
                name.as_bytes(),
                "the name column names a user with another name",
            ));
        }
        Ok(Some(user))
    }

    fn insert_credential(&self, credential: &CredentialRecord) -> Result<(), StoreError> {
        credential.validate()?;
        self.in_tx(|tx| insert_credential_row(tx, credential))
    }

    fn credential(&self, id: &[u8]) -> Result<Option<CredentialRecord>, StoreError> {
        let mut conn = self.conn()?;
        let Some(row) = conn.query_opt("SELECT record FROM credentials WHERE id = $1", &[&id])?
        else {
            return Ok(None);
        };
        Ok(Some(decode_credential(id, &row)?))
    }

    fn credentials_by_user(&self, user_id: &[u8]) -> Result<Vec<CredentialRecord>, StoreError> {
        let mut conn = self.conn()?;
        let rows = conn.query(
            "SELECT id, record FROM credentials WHERE user_id = $1 ORDER BY id",
            &[&user_id],
        )?;
        rows.iter()
            .map(|row| {
                let id: &[u8] = row.get(0);
                let record: CredentialRecord =
                    decode_record("credentials", id, row.get::<_, &[u8]>(1))?;
                if record.id != id || record.user_id != user_id {
                    return Err(corrupt(
                        "credentials",
                        id,
                        "record carries another id or user than its row",
                    ));
                }
                Ok(record)
            })
            .collect()
    }

    fn delete_credential(&self, id: &[u8]) -> Result<bool, StoreError> {
        let mut conn = self.conn()?;
        Ok(conn.execute("DELETE FROM credentials WHERE id = $1", &[&id])? > 0)
    }

    fn update_after_assertion(
        &self,
        id: &[u8],
        new_sign_count: u32,
        backup_state: bool,
        used_ms: u64,
    ) -> Result<(), StoreError> {
        check_credential_id(id)?;
        self.update_credential(id, |record| {
            advance_counter(record, new_sign_count, backup_state, used_ms)
        })
    }

    fn set_credential_flag(&self, id: &[u8], reason: Option<&str>) -> Result<(), StoreError> {
        check_credential_id(id)?;
        check_flag_reason(reason)?;
        self.update_credential(id, |record| {
            record.flagged = reason.map(str::to_owned);
            Ok(())
        })
    }

    fn credential_ids_with_aaguid(&self, aaguid: &[u8; 16]) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut conn = self.conn()?;
        let aaguid: &[u8] = aaguid;
        let rows = conn.query(
            "SELECT id FROM credentials WHERE aaguid = $1 ORDER BY id",
            &[&aaguid],
        )?;
        Ok(rows.iter().map(|r| r.get::<_, Vec<u8>>(0)).collect())
    }

    fn credentials_after(
        &self,
        after: Option<&[u8]>,
        limit_to: usize,
    ) -> Result<Vec<CredentialRecord>, StoreError> {
        let mut conn = self.conn()?;
        let rows = match after {
            Some(a) => conn.query(
                "SELECT id, record FROM credentials WHERE id > $1 ORDER BY id LIMIT $2",
                &[&a, &limit(limit_to)],
            )?,
            None => conn.query(
                "SELECT id, record FROM credentials ORDER BY id LIMIT $1",
                &[&limit(limit_to)],
            )?,
        };
        rows.iter()
            .map(|row| {
                let id: &[u8] = row.get(0);
                let record: CredentialRecord =
                    decode_record("credentials", id, row.get::<_, &[u8]>(1))?;
                if record.id != id {
                    return Err(corrupt(
                        "credentials",
                        id,
                        "record carries another id than its key",
                    ));
                }
                Ok(record)
            })
            .collect()
    }

    fn insert_device(&self, device: &DeviceRecord) -> Result<(), StoreError> {
        check_new_device(device)?;
        self.insert_revised(device, "device id")
    }

    fn device(&self, id: &DeviceId) -> Result<Option<DeviceRecord>, StoreError> {
        self.get_revised(id)
    }

    fn update_device(&self, device: &DeviceRecord) -> Result<(), StoreError> {
        device.validate()?;
        self.update_revised(device)
    }

    fn bind_device(
        &self,
        device: &DeviceRecord,
        user: &User,
        credential: &CredentialRecord,
    ) -> Result<(), StoreError> {
        check_binding(device, user, credential)?;
        let device_value = encode_record(device)?;
        let user_value = encode_record(user)?;
        self.in_tx(|tx| {
            swap(tx, device, &device_value)?;
            // Created unless it exists; a concurrent binding of the same
            // new user waits on the insert and then finds it.
            tx.execute(
                "INSERT INTO users (id, name, record) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                &[&user.id, &user.name, &user_value],
            )?;
            let rows = tx.query(
                "SELECT id, name FROM users WHERE id = $1 OR name = $2",
                &[&user.id, &user.name],
            )?;
            let same = rows.len() == 1
                && rows[0].get::<_, &[u8]>(0) == user.id.as_slice()
                && rows[0].get::<_, &str>(1) == user.name;
            if !same {
                return Err(StoreError::Conflict {
                    detail: "the user name or id belongs to another user".into(),
                });
            }
            insert_credential_row(tx, credential)
        })
    }

    fn revoke_device(&self, device: &DeviceRecord, reason: &str) -> Result<(), StoreError> {
        device.validate()?;
        check_flag_reason(Some(reason))?;
        let value = encode_record(device)?;
        self.in_tx(|tx| {
            swap(tx, device, &value)?;
            for id in &device.credential_ids {
                let record = match credential_for_update(tx, id) {
                    Ok(r) => r,
                    // Deleted by an officer meanwhile.
                    Err(StoreError::NotFound { .. }) => continue,
                    Err(e) => return Err(e),
                };
                if record.disabled.is_none() {
                    let mut record = record;
                    record.disabled = Some(reason.to_string());
                    write_credential(tx, &record)?;
                }
            }
            Ok(())
        })
    }

    fn insert_transaction(&self, transaction: &TransactionRecord) -> Result<(), StoreError> {
        check_new_transaction(transaction)?;
        self.insert_revised(transaction, "transaction id")
    }

    fn transaction(&self, id: &TransactionId) -> Result<Option<TransactionRecord>, StoreError> {
        self.get_revised(id)
    }

    fn update_transaction(&self, transaction: &TransactionRecord) -> Result<(), StoreError> {
        transaction.validate()?;
        self.update_revised(transaction)
    }

    fn approve_transaction(
        &self,
        transaction: &TransactionRecord,
        new_sign_count: u32,
        backup_state: bool,
    ) -> Result<(), StoreError> {
        let approval = transaction_approval(transaction)?;
        self.swap_with_counter(
            transaction,
            &approval.credential_id,
            (new_sign_count, backup_state, approval.approved_ms),
        )
    }

    fn insert_pairing(&self, pairing: &PairingRecord) -> Result<(), StoreError> {
        check_new_pairing(pairing)?;
        self.insert_revised(pairing, "pairing id")
    }

    fn pairing(&self, id: &PairingId) -> Result<Option<PairingRecord>, StoreError> {
        self.get_revised(id)
    }

    fn update_pairing(&self, pairing: &PairingRecord) -> Result<(), StoreError> {
        pairing.validate()?;
        self.update_revised(pairing)
    }

    fn approve_pairing(
        &self,
        pairing: &PairingRecord,
        new_sign_count: u32,
        backup_state: bool,
    ) -> Result<(), StoreError> {
        let approval = pairing_approval(pairing)?;
        self.swap_with_counter(
            pairing,
            &approval.credential_id,
            (new_sign_count, backup_state, approval.approved_ms),
        )
    }

    fn put_one_time(
        &self,
        kind: OneTime,
        id: &[u8],
        expires_ms: u64,
        body: &[u8],
    ) -> Result<(), StoreError> {
        check_one_time(id, body)?;
        let tag = i16::from(kind.tag());
        // Past i64::MAX milliseconds (292 million years) is "never" either way.
        let expires = i64::try_from(expires_ms).unwrap_or(i64::MAX);
        let purge = i64::try_from(self.purge_at(expires_ms)).unwrap_or(i64::MAX);
        let mut conn = self.conn()?;
        match conn.execute(
            "INSERT INTO one_time (kind, id, state, expires_ms, purge_ms, body)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[&tag, &id, &LIVE, &expires, &purge, &body],
        ) {
            Ok(_) => Ok(()),
            Err(e) if unique_violation(&e) => Err(StoreError::Exists { what: kind.name() }),
            Err(e) => Err(e.into()),
        }
    }

    fn consume_one_time(
        &self,
        kind: OneTime,
        id: &[u8],
        now_ms: u64,
    ) -> Result<Vec<u8>, StoreError> {
        let tag = i16::from(kind.tag());
        let now = ms(now_ms, "now")?;
        let mut conn = self.conn()?;
        // The row lock makes concurrent consumers queue; each re-reads the
        // row after the one before it commits, and only the first still
        // finds it live. An expired object is spent as well, so every later
        // attempt gets the same answer.
        let taken = conn.query_opt(
            "WITH live AS (
                 SELECT kind, id, body, expires_ms FROM one_time
                 WHERE kind = $1 AND id = $2 AND state = 0
                 FOR UPDATE
             )
             UPDATE one_time o
             SET state = CASE WHEN $3 >= live.expires_ms THEN 2 ELSE 1 END,
                 spent_ms = $3,
                 body = NULL
             FROM live
             WHERE o.kind = live.kind AND o.id = live.id
             RETURNING o.state, live.body",
            &[&tag, &id, &now],
        )?;
        if let Some(row) = taken {
            let state: i16 = row.get(0);
            return match state {
                CONSUMED => Ok(row.get::<_, Vec<u8>>(1)),
                other => Err(spent_error(kind, other)),
            };
        }
        match conn.query_opt(
            "SELECT state FROM one_time WHERE kind = $1 AND id = $2",
            &[&tag, &id],
        )? {
            None => Err(StoreError::NotFound { what: kind.name() }),
            Some(row) => Err(spent_error(kind, row.get(0))),
        }
    }

    fn peek_one_time(&self, kind: OneTime, id: &[u8], now_ms: u64) -> Result<Vec<u8>, StoreError> {
        let tag = i16::from(kind.tag());
        let mut conn = self.conn()?;
        let Some(row) = conn.query_opt(
            "SELECT state, expires_ms, body FROM one_time WHERE kind = $1 AND id = $2",
            &[&tag, &id],
        )?
        else {
            return Err(StoreError::NotFound { what: kind.name() });
        };
        let state: i16 = row.get(0);
        if state != LIVE {
            return Err(spent_error(kind, state));
        }
        let expires = unsigned("one_time", id, row.get(1))?;
        if now_ms >= expires {
            return Err(StoreError::Expired { what: kind.name() });
        }
        let body: Option<Vec<u8>> = row.get(2);
        body.ok_or_else(|| corrupt("one_time", id, "a live object without its body"))
    }

    fn sweep_expired(&self, now_ms: u64, max: usize) -> Result<usize, StoreError> {
        let now = ms(now_ms, "now")?;
        let mut conn = self.conn()?;
        // SKIP LOCKED: instances sweeping at once share the work instead of
        // queueing on the same rows, and a consumer's lock is never waited on.
        let expired = conn.execute(
            "UPDATE one_time SET state = 2, spent_ms = $1, body = NULL
             WHERE (kind, id) IN (
                 SELECT kind, id FROM one_time
                 WHERE state = 0 AND expires_ms <= $1
                 ORDER BY expires_ms LIMIT $2
                 FOR UPDATE SKIP LOCKED
             )",
            &[&now, &limit(max)],
        )?;
        let room = max.saturating_sub(usize::try_from(expired).unwrap_or(max));
        let purged = conn.execute(
            "DELETE FROM one_time
             WHERE (kind, id) IN (
                 SELECT kind, id FROM one_time
                 WHERE state <> 0 AND purge_ms <= $1
                 ORDER BY purge_ms LIMIT $2
                 FOR UPDATE SKIP LOCKED
             )",
            &[&now, &limit(room)],
        )?;
        Ok(usize::try_from(expired + purged).unwrap_or(usize::MAX))
    }

    fn tombstone_grace_ms(&self) -> u64 {
        self.tombstone_grace_ms
    }

    fn append_audit(&self, build: &mut AuditBuilder<'_>) -> Result<AuditEntry, StoreError> {
        self.in_tx(|tx| {
            let head = tx.query_one("SELECT seq, hash FROM audit_head FOR UPDATE", &[])?;
            let last: i64 = head.get(0);
            let last_hash: &[u8] = head.get(1);
            let (seq, prev_hash) = if last == 0 {
                (1u64, AUDIT_GENESIS_PREV_HASH)
            } else {
                let hash: [u8; 32] = last_hash
                    .try_into()
                    .map_err(|_| corrupt("audit_head", b"head", "hash is not 32 bytes"))?;
                let last = unsigned("audit_head", b"head", last)?;
                let seq = last
                    .checked_add(1)
                    .ok_or_else(|| corrupt("audit_head", b"head", "sequence space exhausted"))?;
                (seq, hash)
            };
            let entry = build(seq, prev_hash)?;
            entry.check_assigned(seq, &prev_hash)?;
            let value = encode_record(&entry)?;
            let seq_sql = ms(seq, "audit seq")?;
            tx.execute(
                "INSERT INTO audit (seq, record) VALUES ($1, $2)",
                &[&seq_sql, &value],
            )?;
            let hash: &[u8] = &entry.hash;
            tx.execute(
                "UPDATE audit_head SET seq = $1, hash = $2",
                &[&seq_sql, &hash],
            )?;
            Ok(entry)
        })
    }

    fn audit_range(&self, from_seq: u64, limit_to: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let from = i64::try_from(from_seq).unwrap_or(i64::MAX);
        let mut conn = self.conn()?;
        let rows = conn.query(
            "SELECT seq, record FROM audit WHERE seq >= $1 ORDER BY seq LIMIT $2",
            &[&from, &limit(limit_to)],
        )?;
        rows.iter().map(decode_audit).collect()
    }

    fn audit_last(&self) -> Result<Option<AuditEntry>, StoreError> {
        let mut conn = self.conn()?;
        conn.query_opt(
            "SELECT seq, record FROM audit ORDER BY seq DESC LIMIT 1",
            &[],
        )?
        .as_ref()
        .map(decode_audit)
        .transpose()
    }

    fn put_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), StoreError> {
        checkpoint.validate()?;
        let value = encode_record(checkpoint)?;
        let seq = ms(checkpoint.seq, "checkpoint seq")?;
        self.in_tx(|tx| {
            let Some(row) = tx.query_opt(
                "SELECT seq, record FROM audit WHERE seq = $1 FOR SHARE",
                &[&seq],
            )?
            else {
                return Err(StoreError::Conflict {
                    detail: format!("no audit entry {} to checkpoint", checkpoint.seq),
                });
            };
            let entry = decode_audit(&row)?;
            if entry.hash != checkpoint.hash {
                return Err(StoreError::Conflict {
                    detail: format!(
                        "checkpoint hash differs from audit entry {}",
                        checkpoint.seq
                    ),
                });
            }
            match tx.execute(
                "INSERT INTO checkpoints (seq, record) VALUES ($1, $2)",
                &[&seq, &value],
            ) {
                Ok(_) => Ok(()),
                Err(e) if unique_violation(&e) => Err(StoreError::Exists { what: "checkpoint" }),
                Err(e) => Err(e.into()),
            }
        })
    }

    fn checkpoints(&self, from_seq: u64, limit_to: usize) -> Result<Vec<Checkpoint>, StoreError> {
        let from = i64::try_from(from_seq).unwrap_or(i64::MAX);
        let mut conn = self.conn()?;
        let rows = conn.query(
            "SELECT seq, record FROM checkpoints WHERE seq >= $1 ORDER BY seq LIMIT $2",
            &[&from, &limit(limit_to)],
        )?;
        rows.iter().map(decode_checkpoint).collect()
    }

    fn last_checkpoint(&self) -> Result<Option<Checkpoint>, StoreError> {
        let mut conn = self.conn()?;
        conn.query_opt(
            "SELECT seq, record FROM checkpoints ORDER BY seq DESC LIMIT 1",
            &[],
        )?
        .as_ref()
        .map(decode_checkpoint)
        .transpose()
    }

    fn replace_metadata(
        &self,
        catalog: &CatalogInfo,
        entries: &[MetadataEntry],
    ) -> Result<(), StoreError> {
        check_catalog(catalog, entries)?;
        self.in_tx(|tx| {
            // The status row's lock makes replacements take turns across
            // instances; readers keep reading the old generation until the
            // commit.
            let held = metadata_status_in(tx, true)?;
            if let Some(installed) = &held.catalog
                && catalog.no <= installed.no
            {
                return Err(StoreError::Conflict {
                    detail: format!(
                        "metadata BLOB no {} is not newer than the installed no {}",
                        catalog.no, installed.no
                    ),
                });
            }
            let generation = held.generation + 1;
            let g = ms(generation, "metadata generation")?;
            let insert_entry = tx
                .prepare("INSERT INTO mds_entries (generation, idx, record) VALUES ($1, $2, $3)")?;
            let insert_aaguid = tx.prepare(
                "INSERT INTO mds_by_aaguid (generation, aaguid, idx) VALUES ($1, $2, $3)",
            )?;
            let insert_key_id = tx.prepare(
                "INSERT INTO mds_by_key_id (generation, key_id, idx) VALUES ($1, $2, $3)",
            )?;
            for (i, entry) in entries.iter().enumerate() {
                let idx = i32::try_from(i).map_err(|_| StoreError::TooLarge {
                    field: "metadata entries",
                    limit: super::limits::METADATA_ENTRIES_MAX,
                })?;
                tx.execute(&insert_entry, &[&g, &idx, &encode_record(entry)?])?;
                if let Some(aaguid) = &entry.aaguid {
                    tx.execute(&insert_aaguid, &[&g, aaguid, &idx])?;
                }
                for key_id in &entry.key_ids {
                    tx.execute(&insert_key_id, &[&g, key_id, &idx])?;
                }
            }
            write_metadata_status(
                tx,
                &MetadataStatus {
                    catalog: Some(catalog.clone()),
                    generation,
                    last_attempt_ms: Some(catalog.installed_ms),
                    last_error: None,
                },
            )?;
            for table in ["mds_entries", "mds_by_aaguid", "mds_by_key_id"] {
                let sql = format!("DELETE FROM {table} WHERE generation <> $1");
                tx.execute(sql.as_str(), &[&g])?;
            }
            Ok(())
        })
    }

    fn metadata_status(&self) -> Result<MetadataStatus, StoreError> {
        let mut conn = self.conn()?;
        metadata_status_in(&mut *conn, false)
    }

    fn record_metadata_attempt(&self, when_ms: u64, error: Option<&str>) -> Result<(), StoreError> {
        let error = error.map(bounded_text);
        self.in_tx(|tx| {
            let mut status = metadata_status_in(tx, true)?;
            status.last_attempt_ms = Some(when_ms);
            status.last_error = error;
            write_metadata_status(tx, &status)
        })
    }

    fn metadata_by_aaguid(&self, aaguid: &[u8; 16]) -> Result<Option<MetadataEntry>, StoreError> {
        self.metadata_lookup(
            "SELECT e.record FROM mds_status s
             JOIN mds_by_aaguid a ON a.generation = s.generation
             JOIN mds_entries e ON e.generation = a.generation AND e.idx = a.idx
             WHERE s.record IS NOT NULL AND a.aaguid = $1",
            &aaguid[..],
        )
    }

    fn metadata_by_key_id(&self, key_id: &[u8]) -> Result<Option<MetadataEntry>, StoreError> {
        if key_id.is_empty() || key_id.len() > super::limits::KEY_ID_MAX {
            return Ok(None);
        }
        let text = crate::hex::encode(key_id);
        let mut conn = self.conn()?;
        let Some(row) = conn.query_opt(
            "SELECT e.record FROM mds_status s
             JOIN mds_by_key_id k ON k.generation = s.generation
             JOIN mds_entries e ON e.generation = k.generation AND e.idx = k.idx
             WHERE s.record IS NOT NULL AND k.key_id = $1",
            &[&text],
        )?
        else {
            return Ok(None);
        };
        Ok(Some(decode_record(
            "mds_entries",
            key_id,
            row.get::<_, &[u8]>(0),
        )?))
    }

    /// Every acknowledged write was committed, and a commit is durable
    /// (see the module documentation); this only proves the database
    /// still answers.
    fn flush(&self) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        conn.execute("SELECT 1", &[])?;
        Ok(())
    }
}
