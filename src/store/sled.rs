//! The embedded [`Store`]: one sled database under the data directory, one
//! tree per kind of record.
//!
//! Every write that touches more than one key is a sled transaction. sled
//! serializes transactions behind a process-wide lock that plain reads also
//! respect, so a transaction is atomic for every reader and writer of the
//! store, and a reader never sees half of one. Reads that span trees (a name
//! index and the record it names) run as read-only transactions for the same
//! reason. sled locks the database directory, so one process owns it.
//!
//! Trees and keys ([`trees`]):
//!
//! | tree | key | value |
//! |---|---|---|
//! | `users` | user id | [`User`] |
//! | `users_by_name` | name (UTF-8) | user id |
//! | `credentials` | credential id | [`CredentialRecord`] |
//! | `credentials_by_user` | `len(user id) ‖ user id ‖ credential id` | empty |
//! | `devices` | device id | [`DeviceRecord`] |
//! | `transactions` | transaction id | [`TransactionRecord`] |
//! | `pairings` | pairing id | [`PairingRecord`] |
//! | `one_time` | `kind tag ‖ id` | expiry and body |
//! | `tombstones` | `kind tag ‖ id` | consumed/expired, when, purge time |
//! | `expiry` | `time (BE u64) ‖ live/tombstone ‖ kind tag ‖ id` | empty |
//! | `audit` | seq (BE u64) | [`AuditEntry`] |
//! | `checkpoints` | seq (BE u64) | [`Checkpoint`] |
//! | `meta` | `schema` | format name and schema version |
//! | `meta` | `mds_status` | [`MetadataStatus`] |
//! | `mds` | `e ‖ generation (BE u64) ‖ index (BE u32)` | [`MetadataEntry`] |
//! | `mds` | `a ‖ generation ‖ aaguid` | index |
//! | `mds` | `k ‖ generation ‖ key id (hex)` | index |
//!
//! The metadata catalog is replaced whole: the new entries are written under
//! a new generation, invisible until `mds_status` names it, and the switch
//! is one write. Lookups read `mds_status` and the entry in one read-only
//! transaction, so they see one generation or the other, never a mix.
//!
//! Durability: sled's own `flush` is not enough on Linux (see `durable` and
//! [`SEGMENT_SIZE`]); every acknowledged write goes through [`GroupCommit`]
//! to a `flush` plus an fdatasync of sled's log file.
//!
//! The length prefix in `credentials_by_user` makes one user's prefix never a
//! prefix of another user's keys. The `expiry` index is ordered by time so the
//! sweeper reads only what is due, never the whole store.

use std::path::Path;
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use sled::{IVec, Tree};

use super::copy::{Item, OneTimeRow, OneTimeState, Visit};
use super::{
    AUDIT_GENESIS_PREV_HASH, AuditBuilder, AuditEntry, CatalogInfo, Checkpoint, CredentialRecord,
    DeviceId, DeviceRecord, GroupCommit, MetadataEntry, MetadataStatus, OneTime, PairingId,
    PairingRecord, Revised, Store, StoreError, TransactionId, TransactionRecord, User,
    advance_counter, bounded_text, check_binding, check_catalog, check_credential_id,
    check_flag_reason, check_new_device, check_new_pairing, check_new_transaction, check_one_time,
    check_swap, decode_record, encode_record, hex, pairing_approval, transaction_approval,
};

/// Tree names, public so tests (and forensic tools) can reach the raw data.
pub mod trees {
    pub const USERS: &str = "users";
    pub const USERS_BY_NAME: &str = "users_by_name";
    pub const CREDENTIALS: &str = "credentials";
    pub const CREDENTIALS_BY_USER: &str = "credentials_by_user";
    pub const DEVICES: &str = "devices";
    pub const TRANSACTIONS: &str = "transactions";
    pub const PAIRINGS: &str = "pairings";
    pub const ONE_TIME: &str = "one_time";
    pub const TOMBSTONES: &str = "tombstones";
    pub const EXPIRY: &str = "expiry";
    pub const AUDIT: &str = "audit";
    pub const CHECKPOINTS: &str = "checkpoints";
    pub const META: &str = "meta";
    pub const MDS: &str = "mds";
    /// Key of the schema marker in [`META`].
    pub const SCHEMA_KEY: &[u8] = b"schema";
    /// Key of the metadata status in [`META`].
    pub const MDS_STATUS_KEY: &[u8] = b"mds_status";
}

/// Written into `meta` on first open.
pub const SCHEMA_FORMAT: &str = "signet-store";
/// Schema version this build reads and writes. A store marked with a higher
/// version is refused rather than misread.
pub const SCHEMA_VERSION: u32 = 1;

/// sled's segment (I/O buffer) size. sled writes any page image larger than
/// a quarter segment to its own file under `blobs/` and never fsyncs those
/// files, so a power cut could leave a durable log entry pointing at a lost
/// blob. A leaf node holds about 17 records before it splits; with 8 MiB
/// segments the blob threshold is 2 MiB, above 17 of the largest records
/// [`limits`](super::limits) admit (68 KiB), so no page ever becomes a blob
/// (`tests/store.rs` checks this). sled refuses to reopen a store with another
/// segment size: this value is part of the on-disk format.
pub const SEGMENT_SIZE: usize = 8 * 1024 * 1024;

/// sled's page cache. sled's default is 1 GiB, so a busy service's resident
/// memory would grow with the store towards that; an appliance must have a
/// memory bound its operators can plan for. The working set (live one-time
/// objects, recent credentials) is a few MiB; older pages are read back
/// from the page cache of the kernel, which a host can spare or reclaim.
pub const CACHE_CAPACITY: u64 = 64 * 1024 * 1024;

/// Long enough to cover clock adjustments and a client retrying the next
/// morning (it is told "already used", not "unknown"); a tombstone is about a
/// hundred bytes, so a day of them stays small.
pub const DEFAULT_TOMBSTONE_GRACE_MS: u64 = 24 * 60 * 60 * 1000;

#[derive(Clone, Debug)]
pub struct SledOptions {
    /// See [`Store::tombstone_grace_ms`].
    pub tombstone_grace_ms: u64,
}

impl Default for SledOptions {
    fn default() -> SledOptions {
        SledOptions {
            tombstone_grace_ms: DEFAULT_TOMBSTONE_GRACE_MS,
        }
    }
}

pub struct SledStore {
    db: sled::Db,
    /// sled's log file, opened again only to fsync it (see `durable`).
    log_file: std::fs::File,
    users: Tree,
    users_by_name: Tree,
    credentials: Tree,
    credentials_by_user: Tree,
    devices: Tree,
    transactions: Tree,
    pairings: Tree,
    one_time: Tree,
    tombstones: Tree,
    expiry: Tree,
    audit: Tree,
    checkpoints: Tree,
    meta: Tree,
    mds: Tree,
    commit: GroupCommit,
    /// One catalog replacement at a time (it spans many sled operations).
    mds_replace: Mutex<()>,
    /// Serializes audit appends: read the last entry, build, insert. Plain
    /// sled reads cannot run inside a sled transaction, and `build` should
    /// not run under sled's global transaction lock either.
    audit_append: Mutex<()>,
    tombstone_grace_ms: u64,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore")
            .field("tombstone_grace_ms", &self.tombstone_grace_ms)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize, Deserialize)]
struct LiveObject {
    expires_ms: u64,
    #[serde(with = "super::serde_bytes_compat")]
    body: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Spent {
    Consumed,
    Expired,
}

#[derive(Serialize, Deserialize)]
struct Tombstone {
    state: Spent,
    at_ms: u64,
    purge_ms: u64,
}

#[derive(Serialize, Deserialize)]
struct SchemaMarker {
    format: String,
    version: u32,
}

/// What an `expiry` entry points at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Due {
    Live = 0,
    Tombstone = 1,
}

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

fn abort<T>(error: StoreError) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(error))
}

fn tx_error(error: TransactionError<StoreError>) -> StoreError {
    match error {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => e.into(),
    }
}

/// Inside a transaction closure, a decoding failure aborts the transaction.
fn decode_tx<T: serde::de::DeserializeOwned>(
    tree: &'static str,
    key: &[u8],
    bytes: &[u8],
) -> TxResult<T> {
    decode_record(tree, key, bytes).map_err(ConflictableTransactionError::Abort)
}

/// Writes `record` (encoded as `value`) over the stored one if that one has
/// the revision before it.
fn swap<R: Revised>(
    tree: &sled::transaction::TransactionalTree,
    record: &R,
    value: &[u8],
) -> TxResult<()> {
    let key = record.key();
    let Some(bytes) = tree.get(key)? else {
        return abort(StoreError::NotFound { what: R::WHAT });
    };
    let stored: R = decode_tx(R::TREE, key, &bytes)?;
    check_swap(key, &stored, record).map_err(ConflictableTransactionError::Abort)?;
    tree.insert(key, value)?;
    Ok(())
}

fn corrupt(tree: &'static str, key: &[u8], detail: &str) -> StoreError {
    StoreError::Corrupt {
        tree,
        key: hex(key),
        detail: detail.into(),
    }
}

impl From<sled::Error> for StoreError {
    fn from(error: sled::Error) -> StoreError {
        match error {
            sled::Error::Io(e) => StoreError::Io(e),
            sled::Error::Corruption { at, .. } => StoreError::Corrupt {
                tree: "sled log",
                key: at.map(|p| format!("{p:?}")).unwrap_or_default(),
                detail: "sled detected corruption in its files".into(),
            },
            other => StoreError::Backend(Box::new(other)),
        }
    }
}

fn by_user_prefix(user_id: &[u8]) -> Option<Vec<u8>> {
    let len = u8::try_from(user_id.len()).ok().filter(|&l| l > 0)?;
    let mut key = Vec::with_capacity(1 + user_id.len());
    key.push(len);
    key.extend_from_slice(user_id);
    Some(key)
}

fn by_user_key(user_id: &[u8], credential_id: &[u8]) -> Option<Vec<u8>> {
    let mut key = by_user_prefix(user_id)?;
    key.extend_from_slice(credential_id);
    Some(key)
}

fn one_time_key(kind: OneTime, id: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + id.len());
    key.push(kind.tag());
    key.extend_from_slice(id);
    key
}

fn expiry_key(at_ms: u64, due: Due, object_key: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(9 + object_key.len());
    key.extend_from_slice(&at_ms.to_be_bytes());
    key.push(due as u8);
    key.extend_from_slice(object_key);
    key
}

fn parse_expiry_key(key: &[u8]) -> Option<(u64, Due, &[u8])> {
    let (at, rest) = key.split_first_chunk::<8>()?;
    let (&due, object_key) = rest.split_first()?;
    let due = match due {
        0 => Due::Live,
        1 => Due::Tombstone,
        _ => return None,
    };
    // An object key is a known kind tag and a non-empty id.
    let (&tag, id) = object_key.split_first()?;
    OneTime::from_tag(tag)?;
    if id.is_empty() {
        return None;
    }
    Some((u64::from_be_bytes(*at), due, object_key))
}

fn seq_of(tree: &'static str, key: &[u8]) -> Result<u64, StoreError> {
    let bytes: [u8; 8] = key
        .try_into()
        .map_err(|_| corrupt(tree, key, "key is not an 8-byte sequence number"))?;
    Ok(u64::from_be_bytes(bytes))
}

/// How long `open` waits for the directory's lock. A store closed in this
/// process lets go of it only when sled's background I/O threads finish
/// with it (tens of milliseconds), and a restarted service may meet its
/// predecessor still exiting; another process that keeps the store open
/// gets the lock error after this.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens sled, waiting up to [`LOCK_WAIT`] for the directory's lock.
fn open_locked(dir: &Path) -> Result<sled::Db, StoreError> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match sled::Config::new()
            .path(dir)
            .segment_size(SEGMENT_SIZE)
            .cache_capacity(CACHE_CAPACITY)
            .open()
        {
            Ok(db) => return Ok(db),
            // sled reports the lock only as text.
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// A record must carry the key it is stored under; anything else means bytes
/// were moved or overwritten outside the store.
fn check_identity(tree: &'static str, key: &[u8], stored: &[u8]) -> Result<(), StoreError> {
    if key == stored {
        Ok(())
    } else {
        Err(corrupt(tree, key, "record carries another id than its key"))
    }
}

impl SledStore {
    /// `record` swapped in as by `swap`, and the credential's counter
    /// moved (`(sign count, backup state, used at)`), in one sled
    /// transaction: a verified assertion and what it approves commit
    /// together or not at all.
    fn swap_with_counter<R: Revised + Serialize>(
        &self,
        tree: &Tree,
        record: &R,
        credential_id: &[u8],
        (new_sign_count, backup_state, used_ms): (u32, bool, u64),
    ) -> Result<(), StoreError> {
        let value = encode_record(record)?;
        let id = credential_id;
        (tree, &self.credentials)
            .transaction(|(records, credentials)| -> TxResult<()> {
                swap(records, record, &value)?;
                let Some(bytes) = credentials.get(id)? else {
                    return abort(StoreError::NotFound { what: "credential" });
                };
                let mut stored: CredentialRecord = decode_tx(trees::CREDENTIALS, id, &bytes)?;
                check_identity(trees::CREDENTIALS, id, &stored.id)
                    .map_err(ConflictableTransactionError::Abort)?;
                advance_counter(&mut stored, new_sign_count, backup_state, used_ms)
                    .map_err(ConflictableTransactionError::Abort)?;
                let v = encode_record(&stored).map_err(ConflictableTransactionError::Abort)?;
                credentials.insert(id, v)?;
                Ok(())
            })
            .map_err(tx_error)?;
        self.durable()
    }

    /// Opens (creating if needed) the store in `dir`.
    pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
        SledStore::open_with(dir, SledOptions::default())
    }

    pub fn open_with(dir: &Path, options: SledOptions) -> Result<SledStore, StoreError> {
        prepare_dir(dir)?;
        let db = open_locked(dir)?;
        // fsync works on the inode, so a read-only handle flushes sled's
        // writes too.
        let log_file = std::fs::File::open(dir.join("db"))?;
        let tree = |name: &str| db.open_tree(name);
        let store = SledStore {
            users: tree(trees::USERS)?,
            users_by_name: tree(trees::USERS_BY_NAME)?,
            credentials: tree(trees::CREDENTIALS)?,
            credentials_by_user: tree(trees::CREDENTIALS_BY_USER)?,
            devices: tree(trees::DEVICES)?,
            transactions: tree(trees::TRANSACTIONS)?,
            pairings: tree(trees::PAIRINGS)?,
            one_time: tree(trees::ONE_TIME)?,
            tombstones: tree(trees::TOMBSTONES)?,
            expiry: tree(trees::EXPIRY)?,
            audit: tree(trees::AUDIT)?,
            checkpoints: tree(trees::CHECKPOINTS)?,
            meta: tree(trees::META)?,
            mds: tree(trees::MDS)?,
            mds_replace: Mutex::new(()),
            db,
            log_file,
            commit: GroupCommit::new(),
            audit_append: Mutex::new(()),
            tombstone_grace_ms: options.tombstone_grace_ms,
        };
        store.check_schema()?;
        sync_entries(dir)?;
        Ok(store)
    }

    fn check_schema(&self) -> Result<(), StoreError> {
        if let Some(bytes) = self.meta.get(trees::SCHEMA_KEY)? {
            let marker: SchemaMarker = ciborium::from_reader(bytes.as_ref()).map_err(|e| {
                corrupt(
                    trees::META,
                    trees::SCHEMA_KEY,
                    &format!("undecodable schema marker: {e}"),
                )
            })?;
            if marker.format != SCHEMA_FORMAT {
                return Err(corrupt(
                    trees::META,
                    trees::SCHEMA_KEY,
                    &format!("not a signet store (format {:?})", marker.format),
                ));
            }
            if marker.version > SCHEMA_VERSION {
                return Err(StoreError::UnsupportedVersion {
                    found: marker.version,
                    supported: SCHEMA_VERSION,
                });
            }
            if marker.version < 1 {
                return Err(corrupt(
                    trees::META,
                    trees::SCHEMA_KEY,
                    "schema version 0 was never written",
                ));
            }
            return Ok(());
        }
        // Data without a marker did not come from this code: refuse it rather
        // than stamp it as ours.
        let data_trees = [
            &self.users,
            &self.users_by_name,
            &self.credentials,
            &self.credentials_by_user,
            &self.one_time,
            &self.tombstones,
            &self.expiry,
            &self.audit,
            &self.checkpoints,
        ];
        if data_trees.iter().any(|t| !t.is_empty()) || !self.meta.is_empty() {
            return Err(corrupt(
                trees::META,
                trees::SCHEMA_KEY,
                "schema marker missing from a non-empty store",
            ));
        }
        let mut marker = Vec::new();
        ciborium::into_writer(
            &SchemaMarker {
                format: SCHEMA_FORMAT.into(),
                version: SCHEMA_VERSION,
            },
            &mut marker,
        )
        .map_err(|e| StoreError::Backend(format!("encoding the schema marker: {e}").into()))?;
        self.meta.insert(trees::SCHEMA_KEY, marker)?;
        self.durable()
    }

    /// Returns once everything written before the call is on disk, sharing
    /// the fsync with concurrent writers.
    fn durable(&self) -> Result<(), StoreError> {
        self.commit.commit(|| {
            self.db.flush()?;
            // On Linux sled's flush ends in sync_file_range, which neither
            // flushes the drive's write cache nor records the file's new
            // length; only fdatasync makes the write survive a power cut.
            self.log_file.sync_data()?;
            Ok(())
        })
    }

    /// Removes every catalog key of a generation other than `keep`: what an
    /// interrupted replacement left, or the catalog just replaced. Not
    /// flushed: losing it in a crash only means doing it again.
    fn clear_metadata_except(&self, keep: u64) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for item in self.mds.iter().keys() {
            let key = item?;
            let generation = key
                .get(1..9)
                .and_then(|g| g.try_into().ok())
                .map(u64::from_be_bytes);
            if generation != Some(keep) {
                batch.remove(key);
            }
        }
        self.mds.apply_batch(batch)?;
        Ok(())
    }

    fn metadata_lookup(
        &self,
        index_key: &dyn Fn(u64) -> Vec<u8>,
    ) -> Result<Option<MetadataEntry>, StoreError> {
        (&self.meta, &self.mds)
            .transaction(|(meta, mds)| -> TxResult<Option<MetadataEntry>> {
                let Some(bytes) = meta.get(trees::MDS_STATUS_KEY)? else {
                    return Ok(None);
                };
                let status: MetadataStatus = decode_tx(trees::META, trees::MDS_STATUS_KEY, &bytes)?;
                if status.catalog.is_none() {
                    return Ok(None);
                }
                let key = index_key(status.generation);
                let Some(index) = mds.get(&key)? else {
                    return Ok(None);
                };
                let Ok(index) = <[u8; 4]>::try_from(index.as_ref()) else {
                    return abort(corrupt(trees::MDS, &key, "index is not 4 bytes"));
                };
                let entry_key = mds_key(b'e', status.generation, &index);
                let Some(bytes) = mds.get(&entry_key)? else {
                    return abort(corrupt(trees::MDS, &key, "index points at a missing entry"));
                };
                Ok(Some(decode_tx(trees::MDS, &entry_key, &bytes)?))
            })
            .map_err(tx_error)
    }

    /// Reads, changes and writes back one credential as one transaction.
    fn update_credential(
        &self,
        id: &[u8],
        change: impl Fn(&mut CredentialRecord) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.credentials
            .transaction(|credentials| -> TxResult<()> {
                let Some(bytes) = credentials.get(id)? else {
                    return abort(StoreError::NotFound { what: "credential" });
                };
                let mut record: CredentialRecord = decode_tx(trees::CREDENTIALS, id, &bytes)?;
                check_identity(trees::CREDENTIALS, id, &record.id)
                    .map_err(ConflictableTransactionError::Abort)?;
                change(&mut record).map_err(ConflictableTransactionError::Abort)?;
                let value = encode_record(&record).map_err(ConflictableTransactionError::Abort)?;
                credentials.insert(id, value)?;
                Ok(())
            })
            .map_err(tx_error)?;
        self.durable()
    }

    fn purge_at(&self, expires_ms: u64) -> u64 {
        expires_ms.saturating_add(self.tombstone_grace_ms)
    }

    /// Handles one due `expiry` entry. Returns a note when the entry was
    /// dropped without acting on it, for the log.
    fn sweep_entry(&self, key: &[u8], now_ms: u64) -> Result<Option<&'static str>, StoreError> {
        let parsed = parse_expiry_key(key);
        (&self.one_time, &self.tombstones, &self.expiry)
            .transaction(|(live, tombs, expiry)| -> TxResult<Option<&'static str>> {
                expiry.remove(key)?;
                let Some((at_ms, due, object_key)) = parsed else {
                    return Ok(Some("malformed expiry index key"));
                };
                match due {
                    Due::Live => {
                        let Some(bytes) = live.get(object_key)? else {
                            return Ok(Some("expiry entry for a missing object"));
                        };
                        // A corrupt object stays for inspection (consuming it
                        // reports Corrupt); only its index entry goes, so the
                        // sweeper does not trip over it forever.
                        let Ok(object) =
                            decode_record::<LiveObject>(trees::ONE_TIME, object_key, &bytes)
                        else {
                            return Ok(Some("undecodable one-time object left in place"));
                        };
                        if object.expires_ms != at_ms {
                            return Ok(Some("expiry entry disagrees with its object"));
                        }
                        let purge_ms = self.purge_at(object.expires_ms);
                        let tombstone = Tombstone {
                            state: Spent::Expired,
                            at_ms: now_ms,
                            purge_ms,
                        };
                        let value = encode_record(&tombstone)
                            .map_err(ConflictableTransactionError::Abort)?;
                        live.remove(object_key)?;
                        tombs.insert(object_key, value)?;
                        expiry.insert(
                            expiry_key(purge_ms, Due::Tombstone, object_key),
                            IVec::default(),
                        )?;
                        Ok(None)
                    }
                    Due::Tombstone => {
                        let Some(bytes) = tombs.get(object_key)? else {
                            return Ok(Some("expiry entry for a missing tombstone"));
                        };
                        let Ok(tombstone) =
                            decode_record::<Tombstone>(trees::TOMBSTONES, object_key, &bytes)
                        else {
                            return Ok(Some("undecodable tombstone left in place"));
                        };
                        if tombstone.purge_ms != at_ms {
                            return Ok(Some("expiry entry disagrees with its tombstone"));
                        }
                        tombs.remove(object_key)?;
                        Ok(None)
                    }
                }
            })
            .map_err(tx_error)
    }

    fn decode_audit(key: &[u8], value: &[u8]) -> Result<AuditEntry, StoreError> {
        let seq = seq_of(trees::AUDIT, key)?;
        let entry: AuditEntry = decode_record(trees::AUDIT, key, value)?;
        if entry.seq != seq {
            return Err(corrupt(
                trees::AUDIT,
                key,
                "entry carries another seq than its key",
            ));
        }
        Ok(entry)
    }

    fn decode_checkpoint(key: &[u8], value: &[u8]) -> Result<Checkpoint, StoreError> {
        let seq = seq_of(trees::CHECKPOINTS, key)?;
        let checkpoint: Checkpoint = decode_record(trees::CHECKPOINTS, key, value)?;
        if checkpoint.seq != seq {
            return Err(corrupt(
                trees::CHECKPOINTS,
                key,
                "checkpoint carries another seq than its key",
            ));
        }
        Ok(checkpoint)
    }
}

impl SledStore {
    /// Every record, tree by tree, for `signet store copy`. The store is
    /// locked by this process, so nothing changes during the walk.
    pub fn export(&self, visit: &mut Visit<'_>) -> Result<(), StoreError> {
        fn each<T: serde::de::DeserializeOwned>(
            tree: &Tree,
            name: &'static str,
            mut f: impl FnMut(T) -> Result<(), StoreError>,
        ) -> Result<(), StoreError> {
            for item in tree.iter() {
                let (key, value) = item?;
                f(decode_record(name, &key, &value)?)?;
            }
            Ok(())
        }
        each(&self.users, trees::USERS, |r| visit(Item::User(r)))?;
        each(&self.credentials, trees::CREDENTIALS, |r| {
            visit(Item::Credential(r))
        })?;
        each(&self.devices, trees::DEVICES, |r| visit(Item::Device(r)))?;
        each(&self.transactions, trees::TRANSACTIONS, |r| {
            visit(Item::Transaction(r))
        })?;
        each(&self.pairings, trees::PAIRINGS, |r| visit(Item::Pairing(r)))?;
        for (tree, name) in [
            (&self.one_time, trees::ONE_TIME),
            (&self.tombstones, trees::TOMBSTONES),
        ] {
            for item in tree.iter() {
                let (key, value) = item?;
                let (&kind, id) = key
                    .split_first()
                    .ok_or_else(|| corrupt(name, &key, "empty key"))?;
                let state = if name == trees::ONE_TIME {
                    let o: LiveObject = decode_record(name, &key, &value)?;
                    OneTimeState::Live {
                        expires_ms: o.expires_ms,
                        body: o.body,
                    }
                } else {
                    let t: Tombstone = decode_record(name, &key, &value)?;
                    match t.state {
                        Spent::Consumed => OneTimeState::Consumed {
                            at_ms: t.at_ms,
                            purge_ms: t.purge_ms,
                        },
                        Spent::Expired => OneTimeState::Expired {
                            at_ms: t.at_ms,
                            purge_ms: t.purge_ms,
                        },
                    }
                };
                visit(Item::OneTime(OneTimeRow {
                    kind,
                    id: id.to_vec(),
                    state,
                }))?;
            }
        }
        for item in self.audit.iter() {
            let (key, value) = item?;
            visit(Item::Audit(SledStore::decode_audit(&key, &value)?))?;
        }
        for item in self.checkpoints.iter() {
            let (key, value) = item?;
            visit(Item::Checkpoint(SledStore::decode_checkpoint(
                &key, &value,
            )?))?;
        }
        let status = self.metadata_status()?;
        if status.catalog.is_some() {
            let prefix = mds_key(b'e', status.generation, &[]);
            for item in self.mds.scan_prefix(&prefix) {
                let (key, value) = item?;
                let index = key
                    .get(prefix.len()..)
                    .and_then(|i| <[u8; 4]>::try_from(i).ok())
                    .map(u32::from_be_bytes)
                    .ok_or_else(|| corrupt(trees::MDS, &key, "entry key without its index"))?;
                visit(Item::MetadataEntry(
                    index,
                    decode_record(trees::MDS, &key, &value)?,
                ))?;
            }
            visit(Item::MetadataStatus(status))?;
        }
        Ok(())
    }
}

fn prepare_dir(dir: &Path) -> Result<(), StoreError> {
    Ok(crate::files::ensure_private_dir(dir)?)
}

/// sled neither fsyncs its `conf` file nor the directory that names its
/// files; without this a power cut soon after the first open could lose the
/// store's files themselves.
fn sync_entries(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir.join("conf"))?.sync_all()?;
    #[cfg(unix)]
    {
        std::fs::File::open(dir)?.sync_all()?;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::File::open(parent)?.sync_all()?;
        }
    }
    Ok(())
}

impl Store for SledStore {
    fn put_user(&self, user: &User) -> Result<(), StoreError> {
        user.validate()?;
        let value = encode_record(user)?;
        (&self.users, &self.users_by_name)
            .transaction(|(users, by_name)| -> TxResult<()> {
                if users.get(&user.id)?.is_some() {
                    return abort(StoreError::Exists { what: "user id" });
                }
                if by_name.get(user.name.as_bytes())?.is_some() {
                    return abort(StoreError::Exists { what: "user name" });
                }
                users.insert(user.id.as_slice(), value.as_slice())?;
                by_name.insert(user.name.as_bytes(), user.id.as_slice())?;
                Ok(())
            })
            .map_err(tx_error)?;
        self.durable()
    }

    fn user_by_id(&self, id: &[u8]) -> Result<Option<User>, StoreError> {
        let Some(bytes) = self.users.get(id)? else {
            return Ok(None);
        };
        let user: User = decode_record(trees::USERS, id, &bytes)?;
        check_identity(trees::USERS, id, &user.id)?;
        Ok(Some(user))
    }

    fn user_by_name(&self, name: &str) -> Result<Option<User>, StoreError> {
        (&self.users_by_name, &self.users)
            .transaction(|(by_name, users)| -> TxResult<Option<User>> {
                let Some(id) = by_name.get(name.as_bytes())? else {
                    return Ok(None);
                };
                let Some(bytes) = users.get(&id)? else {
                    return abort(corrupt(
                        trees::USERS_BY_NAME,
                        name.as_bytes(),
                        "name index points at a missing user",
                    ));
                };
                let user: User = decode_tx(trees::USERS, &id, &bytes)?;
                if user.name != name || user.id != id.as_ref() {
                    return abort(corrupt(
                        trees::USERS_BY_NAME,
                        name.as_bytes(),
                        "name index points at a user with another name",
                    ));
                }
                Ok(Some(user))
            })
            .map_err(tx_error)
    }

    fn insert_credential(&self, credential: &CredentialRecord) -> Result<(), StoreError> {
        credential.validate()?;
        let value = encode_record(credential)?;
        let index_key =
            by_user_key(&credential.user_id, &credential.id).ok_or(StoreError::Invalid {
                field: "user id",
                detail: "not a valid user handle".into(),
            })?;
        (&self.users, &self.credentials, &self.credentials_by_user)
            .transaction(|(users, credentials, by_user)| -> TxResult<()> {
                if users.get(&credential.user_id)?.is_none() {
                    return abort(StoreError::NotFound { what: "user" });
                }
                if credentials.get(&credential.id)?.is_some() {
                    return abort(StoreError::Exists {
                        what: "credential id",
                    });
                }
                credentials.insert(credential.id.as_slice(), value.as_slice())?;
                by_user.insert(index_key.as_slice(), IVec::default())?;
                Ok(())
            })
            .map_err(tx_error)?;
        self.durable()
    }

    fn credential(&self, id: &[u8]) -> Result<Option<CredentialRecord>, StoreError> {
        let Some(bytes) = self.credentials.get(id)? else {
            return Ok(None);
        };
        let record: CredentialRecord = decode_record(trees::CREDENTIALS, id, &bytes)?;
        check_identity(trees::CREDENTIALS, id, &record.id)?;
        Ok(Some(record))
    }

    fn credentials_by_user(&self, user_id: &[u8]) -> Result<Vec<CredentialRecord>, StoreError> {
        let Some(prefix) = by_user_prefix(user_id) else {
            return Ok(Vec::new());
        };
        // sled transactions cannot scan, so collect the ids first and then
        // read index entries and records together; an id deleted in between
        // is skipped, an index entry without its record is corruption.
        let mut ids = Vec::new();
        for item in self.credentials_by_user.scan_prefix(&prefix) {
            let (key, _) = item?;
            ids.push(key.subslice(prefix.len(), key.len() - prefix.len()));
        }
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        (&self.credentials_by_user, &self.credentials)
            .transaction(
                |(by_user, credentials)| -> TxResult<Vec<CredentialRecord>> {
                    let mut records = Vec::with_capacity(ids.len());
                    for id in &ids {
                        let mut index_key = prefix.clone();
                        index_key.extend_from_slice(id);
                        if by_user.get(&index_key)?.is_none() {
                            continue;
                        }
                        let Some(bytes) = credentials.get(id)? else {
                            return abort(corrupt(
                                trees::CREDENTIALS_BY_USER,
                                &index_key,
                                "index entry for a missing credential",
                            ));
                        };
                        let record: CredentialRecord = decode_tx(trees::CREDENTIALS, id, &bytes)?;
                        if record.id != id.as_ref() || record.user_id != user_id {
                            return abort(corrupt(
                                trees::CREDENTIALS_BY_USER,
                                &index_key,
                                "index entry for a credential of another user",
                            ));
                        }
                        records.push(record);
                    }
                    Ok(records)
                },
            )
            .map_err(tx_error)
    }

    fn delete_credential(&self, id: &[u8]) -> Result<bool, StoreError> {
        let existed = (&self.credentials, &self.credentials_by_user)
            .transaction(|(credentials, by_user)| -> TxResult<bool> {
                let Some(bytes) = credentials.remove(id)? else {
                    return Ok(false);
                };
                // Aborting on a corrupt record also undoes the removal: the
                // index entry could not be found without it.
                let record: CredentialRecord = decode_tx(trees::CREDENTIALS, id, &bytes)?;
                let Some(index_key) = by_user_key(&record.user_id, id) else {
                    return abort(corrupt(
                        trees::CREDENTIALS,
                        id,
                        "record carries an invalid user id",
                    ));
                };
                by_user.remove(index_key)?;
                Ok(true)
            })
            .map_err(tx_error)?;
        if existed {
            self.durable()?;
        }
        Ok(existed)
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

    fn credential_ids_with_aaguid(&self, aaguid: &[u8; 16]) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut ids = Vec::new();
        for item in self.credentials.iter() {
            let (key, bytes) = item?;
            let record: CredentialRecord = decode_record(trees::CREDENTIALS, &key, &bytes)?;
            if &record.aaguid == aaguid {
                ids.push(record.id);
            }
        }
        Ok(ids)
    }

    fn credentials_after(
        &self,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<CredentialRecord>, StoreError> {
        use std::ops::Bound;
        let start = match after {
            Some(a) => Bound::Excluded(a.to_vec()),
            None => Bound::Unbounded,
        };
        let mut out = Vec::new();
        for item in self
            .credentials
            .range::<Vec<u8>, _>((start, Bound::Unbounded))
            .take(limit)
        {
            let (key, bytes) = item?;
            let record: CredentialRecord = decode_record(trees::CREDENTIALS, &key, &bytes)?;
            check_identity(trees::CREDENTIALS, &key, &record.id)?;
            out.push(record);
        }
        Ok(out)
    }

    fn set_credential_flag(&self, id: &[u8], reason: Option<&str>) -> Result<(), StoreError> {
        check_credential_id(id)?;
        check_flag_reason(reason)?;
        self.update_credential(id, |record| {
            record.flagged = reason.map(str::to_owned);
            Ok(())
        })
    }

    fn insert_device(&self, device: &DeviceRecord) -> Result<(), StoreError> {
        check_new_device(device)?;
        let value = encode_record(device)?;
        self.devices
            .compare_and_swap(device.id, None as Option<&[u8]>, Some(value))?
            .map_err(|_| StoreError::Exists { what: "device id" })?;
        self.durable()
    }

    fn device(&self, id: &DeviceId) -> Result<Option<DeviceRecord>, StoreError> {
        let Some(bytes) = self.devices.get(id)? else {
            return Ok(None);
        };
        let record: DeviceRecord = decode_record(trees::DEVICES, id, &bytes)?;
        check_identity(trees::DEVICES, id, &record.id)?;
        Ok(Some(record))
    }

    fn update_device(&self, device: &DeviceRecord) -> Result<(), StoreError> {
        device.validate()?;
        let value = encode_record(device)?;
        self.devices
            .transaction(|devices| swap(devices, device, &value))
            .map_err(tx_error)?;
        self.durable()
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
        let credential_value = encode_record(credential)?;
        let index_key =
            by_user_key(&credential.user_id, &credential.id).ok_or(StoreError::Invalid {
                field: "user id",
                detail: "not a valid user handle".into(),
            })?;
        (
            &self.devices,
            &self.users,
            &self.users_by_name,
            &self.credentials,
            &self.credentials_by_user,
        )
            .transaction(
                |(devices, users, by_name, credentials, by_user)| -> TxResult<()> {
                    swap(devices, device, &device_value)?;
                    match (users.get(&user.id)?, by_name.get(user.name.as_bytes())?) {
                        (None, None) => {
                            users.insert(user.id.as_slice(), user_value.as_slice())?;
                            by_name.insert(user.name.as_bytes(), user.id.as_slice())?;
                        }
                        (Some(_), Some(id)) if id.as_ref() == user.id.as_slice() => {}
                        _ => {
                            return abort(StoreError::Conflict {
                                detail: "the user name or id belongs to another user".into(),
                            });
                        }
                    }
                    if credentials.get(&credential.id)?.is_some() {
                        return abort(StoreError::Exists {
                            what: "credential id",
                        });
                    }
                    credentials.insert(credential.id.as_slice(), credential_value.as_slice())?;
                    by_user.insert(index_key.as_slice(), IVec::default())?;
                    Ok(())
                },
            )
            .map_err(tx_error)?;
        self.durable()
    }

    fn revoke_device(&self, device: &DeviceRecord, reason: &str) -> Result<(), StoreError> {
        device.validate()?;
        check_flag_reason(Some(reason))?;
        let value = encode_record(device)?;
        (&self.devices, &self.credentials)
            .transaction(|(devices, credentials)| -> TxResult<()> {
                swap(devices, device, &value)?;
                for id in &device.credential_ids {
                    let Some(bytes) = credentials.get(id)? else {
                        continue; // deleted by an officer meanwhile
                    };
                    let mut record: CredentialRecord = decode_tx(trees::CREDENTIALS, id, &bytes)?;
                    if record.disabled.is_none() {
                        record.disabled = Some(reason.to_string());
                        let v =
                            encode_record(&record).map_err(ConflictableTransactionError::Abort)?;
                        credentials.insert(id.as_slice(), v)?;
                    }
                }
                Ok(())
            })
            .map_err(tx_error)?;
        self.durable()
    }

    fn insert_transaction(&self, transaction: &TransactionRecord) -> Result<(), StoreError> {
        check_new_transaction(transaction)?;
        let value = encode_record(transaction)?;
        self.transactions
            .compare_and_swap(transaction.id, None as Option<&[u8]>, Some(value))?
            .map_err(|_| StoreError::Exists {
                what: "transaction id",
            })?;
        self.durable()
    }

    fn transaction(&self, id: &TransactionId) -> Result<Option<TransactionRecord>, StoreError> {
        let Some(bytes) = self.transactions.get(id)? else {
            return Ok(None);
        };
        let record: TransactionRecord = decode_record(trees::TRANSACTIONS, id, &bytes)?;
        check_identity(trees::TRANSACTIONS, id, &record.id)?;
        Ok(Some(record))
    }

    fn update_transaction(&self, transaction: &TransactionRecord) -> Result<(), StoreError> {
        transaction.validate()?;
        let value = encode_record(transaction)?;
        self.transactions
            .transaction(|tree| swap(tree, transaction, &value))
            .map_err(tx_error)?;
        self.durable()
    }

    fn approve_transaction(
        &self,
        transaction: &TransactionRecord,
        new_sign_count: u32,
        backup_state: bool,
    ) -> Result<(), StoreError> {
        let approval = transaction_approval(transaction)?;
        self.swap_with_counter(
            &self.transactions,
            transaction,
            &approval.credential_id,
            (new_sign_count, backup_state, approval.approved_ms),
        )
    }

    fn insert_pairing(&self, pairing: &PairingRecord) -> Result<(), StoreError> {
        check_new_pairing(pairing)?;
        let value = encode_record(pairing)?;
        self.pairings
            .compare_and_swap(pairing.id, None as Option<&[u8]>, Some(value))?
            .map_err(|_| StoreError::Exists { what: "pairing id" })?;
        self.durable()
    }

    fn pairing(&self, id: &PairingId) -> Result<Option<PairingRecord>, StoreError> {
        let Some(bytes) = self.pairings.get(id)? else {
            return Ok(None);
        };
        let record: PairingRecord = decode_record(trees::PAIRINGS, id, &bytes)?;
        check_identity(trees::PAIRINGS, id, &record.id)?;
        Ok(Some(record))
    }

    fn update_pairing(&self, pairing: &PairingRecord) -> Result<(), StoreError> {
        pairing.validate()?;
        let value = encode_record(pairing)?;
        self.pairings
            .transaction(|tree| swap(tree, pairing, &value))
            .map_err(tx_error)?;
        self.durable()
    }

    fn approve_pairing(
        &self,
        pairing: &PairingRecord,
        new_sign_count: u32,
        backup_state: bool,
    ) -> Result<(), StoreError> {
        let approval = pairing_approval(pairing)?;
        self.swap_with_counter(
            &self.pairings,
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
        let key = one_time_key(kind, id);
        let value = encode_record(&LiveObject {
            expires_ms,
            body: body.to_vec(),
        })?;
        let due = expiry_key(expires_ms, Due::Live, &key);
        (&self.one_time, &self.tombstones, &self.expiry)
            .transaction(|(live, tombs, expiry)| -> TxResult<()> {
                if live.get(&key)?.is_some() || tombs.get(&key)?.is_some() {
                    return abort(StoreError::Exists { what: kind.name() });
                }
                live.insert(key.as_slice(), value.as_slice())?;
                expiry.insert(due.as_slice(), IVec::default())?;
                Ok(())
            })
            .map_err(tx_error)?;
        self.durable()
    }

    fn consume_one_time(
        &self,
        kind: OneTime,
        id: &[u8],
        now_ms: u64,
    ) -> Result<Vec<u8>, StoreError> {
        enum Outcome {
            Taken(Vec<u8>),
            Spent(Spent),
        }
        let key = one_time_key(kind, id);
        let outcome = (&self.one_time, &self.tombstones, &self.expiry)
            .transaction(|(live, tombs, expiry)| -> TxResult<Outcome> {
                let Some(bytes) = live.get(&key)? else {
                    let Some(bytes) = tombs.get(&key)? else {
                        return abort(StoreError::NotFound { what: kind.name() });
                    };
                    let tombstone: Tombstone = decode_tx(trees::TOMBSTONES, &key, &bytes)?;
                    return Ok(Outcome::Spent(tombstone.state));
                };
                let object: LiveObject = decode_tx(trees::ONE_TIME, &key, &bytes)?;
                // An expired object is spent as well: turning it into a
                // tombstone now gives every later attempt the same answer.
                let state = if now_ms >= object.expires_ms {
                    Spent::Expired
                } else {
                    Spent::Consumed
                };
                let purge_ms = self.purge_at(object.expires_ms);
                let tombstone = encode_record(&Tombstone {
                    state,
                    at_ms: now_ms,
                    purge_ms,
                })
                .map_err(ConflictableTransactionError::Abort)?;
                live.remove(key.as_slice())?;
                expiry.remove(expiry_key(object.expires_ms, Due::Live, &key))?;
                tombs.insert(key.as_slice(), tombstone)?;
                expiry.insert(expiry_key(purge_ms, Due::Tombstone, &key), IVec::default())?;
                Ok(match state {
                    Spent::Consumed => Outcome::Taken(object.body),
                    Spent::Expired => Outcome::Spent(Spent::Expired),
                })
            })
            .map_err(tx_error)?;
        match outcome {
            Outcome::Taken(body) => {
                self.durable()?;
                Ok(body)
            }
            Outcome::Spent(Spent::Consumed) => {
                Err(StoreError::AlreadyConsumed { what: kind.name() })
            }
            Outcome::Spent(Spent::Expired) => Err(StoreError::Expired { what: kind.name() }),
        }
    }

    fn peek_one_time(&self, kind: OneTime, id: &[u8], now_ms: u64) -> Result<Vec<u8>, StoreError> {
        let key = one_time_key(kind, id);
        // Two plain reads suffice: consumption swaps object for tombstone in
        // one transaction, so a missing object has its tombstone by now.
        if let Some(bytes) = self.one_time.get(&key)? {
            let object: LiveObject = decode_record(trees::ONE_TIME, &key, &bytes)?;
            if now_ms >= object.expires_ms {
                return Err(StoreError::Expired { what: kind.name() });
            }
            return Ok(object.body);
        }
        match self.tombstones.get(&key)? {
            None => Err(StoreError::NotFound { what: kind.name() }),
            Some(bytes) => {
                let tombstone: Tombstone = decode_record(trees::TOMBSTONES, &key, &bytes)?;
                Err(match tombstone.state {
                    Spent::Consumed => StoreError::AlreadyConsumed { what: kind.name() },
                    Spent::Expired => StoreError::Expired { what: kind.name() },
                })
            }
        }
    }

    fn sweep_expired(&self, now_ms: u64, max: usize) -> Result<usize, StoreError> {
        // Collect first: handling an entry inserts a tombstone entry further
        // along the same index, which an open iterator could run into.
        let mut due: Vec<IVec> = Vec::new();
        for item in self.expiry.iter() {
            if due.len() >= max {
                break;
            }
            let (key, _) = item?;
            if parse_expiry_key(&key).is_some_and(|(at_ms, _, _)| at_ms > now_ms) {
                break;
            }
            due.push(key);
        }
        for key in &due {
            if let Some(note) = self.sweep_entry(key, now_ms)? {
                tracing::warn!(key = %hex(key), "store sweeper: {note}");
            }
        }
        Ok(due.len())
    }

    fn tombstone_grace_ms(&self) -> u64 {
        self.tombstone_grace_ms
    }

    fn append_audit(&self, build: &mut AuditBuilder<'_>) -> Result<AuditEntry, StoreError> {
        let appending = self
            .audit_append
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (seq, prev_hash) = match self.audit.last()? {
            None => (1, AUDIT_GENESIS_PREV_HASH),
            Some((key, value)) => {
                let last = SledStore::decode_audit(&key, &value)?;
                let seq = last.seq.checked_add(1).ok_or_else(|| {
                    corrupt(trees::AUDIT, &key, "sequence number space exhausted")
                })?;
                (seq, last.hash)
            }
        };
        let entry = build(seq, prev_hash)?;
        entry.check_assigned(seq, &prev_hash)?;
        let value = encode_record(&entry)?;
        let key = seq.to_be_bytes();
        if self
            .audit
            .compare_and_swap(key, None::<&[u8]>, Some(value))?
            .is_err()
        {
            // Only possible if something wrote the tree behind the lock.
            return Err(StoreError::Conflict {
                detail: format!("audit entry {seq} appeared during the append"),
            });
        }
        // Released before the flush so the next append can join this one's
        // fsync; a later entry is never durable without this one, since the
        // log is flushed in order.
        drop(appending);
        self.durable()?;
        Ok(entry)
    }

    fn audit_range(&self, from_seq: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        self.audit
            .range(from_seq.to_be_bytes()..)
            .take(limit)
            .map(|item| {
                let (key, value) = item?;
                SledStore::decode_audit(&key, &value)
            })
            .collect()
    }

    fn audit_last(&self) -> Result<Option<AuditEntry>, StoreError> {
        self.audit
            .last()?
            .map(|(key, value)| SledStore::decode_audit(&key, &value))
            .transpose()
    }

    fn put_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), StoreError> {
        checkpoint.validate()?;
        let value = encode_record(checkpoint)?;
        let key = checkpoint.seq.to_be_bytes();
        (&self.audit, &self.checkpoints)
            .transaction(|(audit, checkpoints)| -> TxResult<()> {
                let Some(bytes) = audit.get(key)? else {
                    return abort(StoreError::Conflict {
                        detail: format!("no audit entry {} to checkpoint", checkpoint.seq),
                    });
                };
                let entry: AuditEntry = decode_tx(trees::AUDIT, &key, &bytes)?;
                if entry.hash != checkpoint.hash {
                    return abort(StoreError::Conflict {
                        detail: format!(
                            "checkpoint hash differs from audit entry {}",
                            checkpoint.seq
                        ),
                    });
                }
                if checkpoints.get(key)?.is_some() {
                    return abort(StoreError::Exists { what: "checkpoint" });
                }
                checkpoints.insert(&key[..], value.as_slice())?;
                Ok(())
            })
            .map_err(tx_error)?;
        self.durable()
    }

    fn checkpoints(&self, from_seq: u64, limit: usize) -> Result<Vec<Checkpoint>, StoreError> {
        self.checkpoints
            .range(from_seq.to_be_bytes()..)
            .take(limit)
            .map(|item| {
                let (key, value) = item?;
                SledStore::decode_checkpoint(&key, &value)
            })
            .collect()
    }

    fn last_checkpoint(&self) -> Result<Option<Checkpoint>, StoreError> {
        self.checkpoints
            .last()?
            .map(|(key, value)| SledStore::decode_checkpoint(&key, &value))
            .transpose()
    }

    fn replace_metadata(
        &self,
        catalog: &CatalogInfo,
        entries: &[MetadataEntry],
    ) -> Result<(), StoreError> {
        check_catalog(catalog, entries)?;
        let _one = self
            .mds_replace
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let held = self.metadata_status()?;
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
        self.clear_metadata_except(held.generation)?;

        // check_catalog refused duplicate AAGUIDs and key ids.
        let mut batch = sled::Batch::default();
        for (i, entry) in entries.iter().enumerate() {
            let index = u32::try_from(i)
                .map_err(|_| StoreError::TooLarge {
                    field: "metadata entries",
                    limit: super::limits::METADATA_ENTRIES_MAX,
                })?
                .to_be_bytes();
            batch.insert(mds_key(b'e', generation, &index), encode_record(entry)?);
            if let Some(aaguid) = &entry.aaguid {
                batch.insert(mds_key(b'a', generation, aaguid), &index);
            }
            for key_id in &entry.key_ids {
                batch.insert(mds_key(b'k', generation, key_id.as_bytes()), &index);
            }
        }
        self.mds.apply_batch(batch)?;
        // The entries are durable before anything points at them.
        self.durable()?;

        let status = encode_record(&MetadataStatus {
            catalog: Some(catalog.clone()),
            generation,
            last_attempt_ms: Some(catalog.installed_ms),
            last_error: None,
        })?;
        self.meta
            .transaction(|meta| -> TxResult<()> {
                let current: MetadataStatus = match meta.get(trees::MDS_STATUS_KEY)? {
                    Some(b) => decode_tx(trees::META, trees::MDS_STATUS_KEY, &b)?,
                    None => MetadataStatus::default(),
                };
                if current.generation != held.generation {
                    return abort(StoreError::Conflict {
                        detail: "the metadata catalog changed during the replacement".into(),
                    });
                }
                meta.insert(trees::MDS_STATUS_KEY, status.as_slice())?;
                Ok(())
            })
            .map_err(tx_error)?;
        self.durable()?;
        self.clear_metadata_except(generation)
    }

    fn metadata_status(&self) -> Result<MetadataStatus, StoreError> {
        match self.meta.get(trees::MDS_STATUS_KEY)? {
            Some(bytes) => decode_record(trees::META, trees::MDS_STATUS_KEY, &bytes),
            None => Ok(MetadataStatus::default()),
        }
    }

    fn record_metadata_attempt(&self, when_ms: u64, error: Option<&str>) -> Result<(), StoreError> {
        let error = error.map(bounded_text);
        self.meta
            .transaction(|meta| -> TxResult<()> {
                let mut status: MetadataStatus = match meta.get(trees::MDS_STATUS_KEY)? {
                    Some(b) => decode_tx(trees::META, trees::MDS_STATUS_KEY, &b)?,
                    None => MetadataStatus::default(),
                };
                status.last_attempt_ms = Some(when_ms);
                status.last_error = error.clone();
                let value = encode_record(&status).map_err(ConflictableTransactionError::Abort)?;
                meta.insert(trees::MDS_STATUS_KEY, value)?;
                Ok(())
            })
            .map_err(tx_error)?;
        self.durable()
    }

    fn metadata_by_aaguid(&self, aaguid: &[u8; 16]) -> Result<Option<MetadataEntry>, StoreError> {
        self.metadata_lookup(&|generation| mds_key(b'a', generation, aaguid))
    }

    fn metadata_by_key_id(&self, key_id: &[u8]) -> Result<Option<MetadataEntry>, StoreError> {
        if key_id.is_empty() || key_id.len() > super::limits::KEY_ID_MAX {
            return Ok(None);
        }
        let text = crate::hex::encode(key_id);
        self.metadata_lookup(&|generation| mds_key(b'k', generation, text.as_bytes()))
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.durable()
    }
}

/// `tag ‖ generation (BE) ‖ rest`: keys of one generation share a prefix.
fn mds_key(tag: u8, generation: u64, rest: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(9 + rest.len());
    key.push(tag);
    key.extend_from_slice(&generation.to_be_bytes());
    key.extend_from_slice(rest);
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_user_prefixes_never_overlap() {
        // User "a" with credential "bc" must not show up under user "ab".
        let a = by_user_key(b"a", b"bc").unwrap();
        let ab = by_user_prefix(b"ab").unwrap();
        assert!(!a.starts_with(&ab));
        assert_eq!(by_user_prefix(b""), None);
        assert_eq!(by_user_prefix(&[0; 256]), None);
    }

    #[test]
    fn expiry_keys_sort_by_time_and_parse_back() {
        let object = one_time_key(OneTime::Pairing, b"id");
        let early = expiry_key(5, Due::Tombstone, &object);
        let late = expiry_key(256, Due::Live, &object);
        assert!(early < late);
        assert_eq!(
            parse_expiry_key(&late),
            Some((256, Due::Live, object.as_slice()))
        );
        assert_eq!(parse_expiry_key(b"short"), None);
        let mut bad_due = late.clone();
        bad_due[8] = 7;
        assert_eq!(parse_expiry_key(&bad_due), None);
        assert_eq!(parse_expiry_key(&expiry_key(1, Due::Live, &[1])), None);
    }
}
