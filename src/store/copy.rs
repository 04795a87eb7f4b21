//! Moving an appliance's store from sled to PostgreSQL (`signet store
//! copy`), verified.
//!
//! The source is read record by record ([`Item`]) and written into the
//! target inside one database transaction, so a failed copy leaves the
//! target as empty as it was. Then each table is read back from the target
//! and compared with what was read from the source: the number of records
//! and a SHA-256 over the records' canonical encodings, taken in sorted
//! order so that neither side's key order matters. A difference is an
//! error naming the table.

use serde::Serialize;

use super::{
    AuditEntry, Checkpoint, CredentialRecord, DeviceRecord, MetadataEntry, MetadataStatus, OneTime,
    PairingRecord, StoreError, TransactionRecord, User, encode_record,
};

/// Takes one record; an error stops the walk.
pub type Visit<'a> = dyn FnMut(Item) -> Result<(), StoreError> + 'a;

/// Walks a store, handing every record to the visitor.
pub type Source<'a> = dyn FnMut(&mut Visit<'_>) -> Result<(), StoreError> + 'a;

/// One record of a store, as it is copied.
pub enum Item {
    User(User),
    Credential(CredentialRecord),
    Device(DeviceRecord),
    Transaction(TransactionRecord),
    Pairing(PairingRecord),
    OneTime(OneTimeRow),
    Audit(AuditEntry),
    Checkpoint(Checkpoint),
    /// The installed catalog's status (at most one).
    MetadataStatus(MetadataStatus),
    /// An entry of the installed catalog, with its position in it.
    MetadataEntry(u32, MetadataEntry),
}

/// A one-time object, live or spent. What a backend keeps of a spent one
/// is its tombstone: how it was spent, when, and when it may be purged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OneTimeRow {
    pub kind: u8,
    #[serde(with = "serde_bytes_vec")]
    pub id: Vec<u8>,
    pub state: OneTimeState,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum OneTimeState {
    Live {
        expires_ms: u64,
        #[serde(with = "serde_bytes_vec")]
        body: Vec<u8>,
    },
    Consumed {
        at_ms: u64,
        purge_ms: u64,
    },
    Expired {
        at_ms: u64,
        purge_ms: u64,
    },
}

impl OneTimeRow {
    pub fn kind(&self) -> Option<OneTime> {
        OneTime::from_tag(self.kind)
    }
}

mod serde_bytes_vec {
    pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }
}

/// The tables compared, in the order reported.
pub const TABLES: [&str; 9] = [
    "users",
    "credentials",
    "devices",
    "transactions",
    "pairings",
    "one_time",
    "audit",
    "checkpoints",
    "metadata",
];

impl Item {
    /// Which of [`TABLES`] the record belongs to, and its canonical bytes.
    pub fn canonical(&self) -> Result<(usize, Vec<u8>), StoreError> {
        Ok(match self {
            Item::User(r) => (0, encode_record(r)?),
            Item::Credential(r) => (1, encode_record(r)?),
            Item::Device(r) => (2, encode_record(r)?),
            Item::Transaction(r) => (3, encode_record(r)?),
            Item::Pairing(r) => (4, encode_record(r)?),
            Item::OneTime(r) => (5, encode_record(r)?),
            Item::Audit(r) => (6, encode_record(r)?),
            Item::Checkpoint(r) => (7, encode_record(r)?),
            Item::MetadataStatus(r) => {
                // The generation is each backend's own bookkeeping.
                let mut r = r.clone();
                r.generation = 0;
                (8, encode_record(&r)?)
            }
            Item::MetadataEntry(i, r) => (8, encode_record(&(i, r))?),
        })
    }
}

/// Counts and digests per table, as one side reads them.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    digests: [Vec<[u8; 32]>; TABLES.len()],
}

impl Tally {
    pub fn add(&mut self, item: &Item) -> Result<(), StoreError> {
        let (table, bytes) = item.canonical()?;
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes);
        let mut one = [0u8; 32];
        one.copy_from_slice(d.as_ref());
        self.digests[table].push(one);
        Ok(())
    }

    /// Per table: (name, count, SHA-256 of the sorted record digests).
    pub fn summary(&self) -> Vec<(&'static str, u64, [u8; 32])> {
        TABLES
            .iter()
            .zip(&self.digests)
            .map(|(name, digests)| {
                let mut sorted = digests.clone();
                sorted.sort_unstable();
                let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
                for d in &sorted {
                    ctx.update(d);
                }
                let mut sum = [0u8; 32];
                sum.copy_from_slice(ctx.finish().as_ref());
                (*name, sorted.len() as u64, sum)
            })
            .collect()
    }
}

/// One table's verdict.
#[derive(Clone, Debug, Serialize)]
pub struct TableReport {
    pub table: &'static str,
    pub source: u64,
    pub target: u64,
    #[serde(serialize_with = "hex_digest")]
    pub sha256: [u8; 32],
    pub matches: bool,
}

fn hex_digest<S: serde::Serializer>(d: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::hex::encode(d))
}

/// Compares both sides; `Conflict` naming every table that differs.
pub fn compare(source: &Tally, target: &Tally) -> Result<Vec<TableReport>, StoreError> {
    let reports: Vec<TableReport> = source
        .summary()
        .into_iter()
        .zip(target.summary())
        .map(|((table, n, a), (_, m, b))| TableReport {
            table,
            source: n,
            target: m,
            sha256: a,
            matches: n == m && a == b,
        })
        .collect();
    let bad: Vec<String> = reports
        .iter()
        .filter(|r| !r.matches)
        .map(|r| format!("{} ({} read, {} written)", r.table, r.source, r.target))
        .collect();
    if bad.is_empty() {
        Ok(reports)
    } else {
        Err(StoreError::Conflict {
            detail: format!("the copy differs from its source in {}", bad.join(", ")),
        })
    }
}
