//! Installing a FIDO Metadata Service BLOB into the store: verified, fresh,
//! newer than the installed one, then the whole catalog replaced at once and
//! the BLOB kept on disk as the last good one.
//!
//! The catalog is stored entry by entry, as JSON, so that registration
//! (issue 5's next step) reads one entry by AAGUID or key identifier without
//! parsing a 2 MB BLOB. Icons are dropped on the way in: they are the only
//! large member, and a server has no use for them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::unix_ms;
use crate::mds::blob::{self, Blob, Entry};
use crate::mds::crl::Crl;
use crate::mds::stored::Known;
use crate::mds::{MdsError, stored};
use crate::store::{CatalogInfo, MetadataEntry, Store, StoreError, limits};
use crate::webauthn::certpath::{self, Cert};
use crate::webauthn::registration::AttestationObject;
use crate::webauthn::response::RegistrationResponse;

/// Where the last good BLOB is kept, under the data directory.
pub const LAST_GOOD: &str = "mds/blob.jwt";

#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error(transparent)]
    Blob(#[from] MdsError),
    #[error("entries[{index}]: {reason}")]
    Entry { index: usize, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What an installation did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InstallReport {
    pub no: u64,
    pub next_update: String,
    pub entries: usize,
    pub previous_no: Option<u64>,
    pub revocation_checked: bool,
    pub signer: String,
    /// Accepted but noted: attestation roots left out of their statement.
    pub warnings: Vec<String>,
    pub saved_to: PathBuf,
}

/// A BLOB to install and what to verify it with.
pub struct BlobInput<'a> {
    /// The compact JWS.
    pub jwt: &'a [u8],
    pub roots: &'a [Cert],
    pub crls: &'a [Crl],
    /// The time to verify at: now, or an archived BLOB's own time.
    pub at: SystemTime,
    /// A file name or URL, for the status and the audit log.
    pub source: &'a str,
}

/// Verifies the BLOB as of `input.at` and installs it. `now` stamps the
/// store's status. On any refusal the failure is recorded in the store's
/// metadata status (the installed catalog stays) and returned.
pub fn install(
    store: &dyn Store,
    data_dir: &Path,
    input: &BlobInput<'_>,
    now: SystemTime,
) -> Result<InstallReport, MetadataError> {
    let result = try_install(store, data_dir, input, now);
    if let Err(e) = &result
        && let Err(record) =
            store.record_metadata_failure(unix_ms(now), &format!("{}: {e}", input.source))
    {
        tracing::warn!(error = %record, "could not record the metadata failure");
    }
    result
}

fn try_install(
    store: &dyn Store,
    data_dir: &Path,
    input: &BlobInput<'_>,
    now: SystemTime,
) -> Result<InstallReport, MetadataError> {
    let BlobInput {
        jwt,
        roots,
        crls,
        at,
        source,
    } = *input;
    let blob = blob::verify(jwt, roots, crls, at)?;
    blob.check_fresh(at)?;
    let previous_no = store.metadata_status()?.catalog.map(|c| c.no);
    blob::check_newer(previous_no, &blob)?;
    let entries = blob
        .entries()
        .iter()
        .map(stored_entry)
        .collect::<Result<Vec<_>, _>>()?;
    let info = CatalogInfo {
        no: blob.no,
        next_update_ms: unix_ms(blob.next_update_time),
        entries: entries.len() as u64,
        installed_ms: unix_ms(now),
        source: crate::store::bounded_text(source),
        blob_sha256: crate::keys::sha256(jwt),
    };
    store.replace_metadata(&info, &entries)?;
    let saved_to = data_dir.join(LAST_GOOD);
    save_atomically(&saved_to, jwt)?;
    Ok(report(&blob, previous_no, saved_to))
}

fn report(blob: &Blob, previous_no: Option<u64>, saved_to: PathBuf) -> InstallReport {
    InstallReport {
        no: blob.no,
        next_update: blob.next_update.clone(),
        entries: blob.entries().len(),
        previous_no,
        revocation_checked: blob.revocation_checked,
        signer: blob.signer_subject.clone(),
        warnings: blob.warnings.iter().map(ToString::to_string).collect(),
        saved_to,
    }
}

/// One catalog entry as the store keeps it (see [`crate::mds::stored`]).
pub fn stored_entry(e: &Entry) -> Result<MetadataEntry, MetadataError> {
    let entry = stored::encode(e)?;
    if entry.len() > limits::METADATA_ENTRY_MAX {
        return Err(MetadataError::Entry {
            index: e.index,
            reason: format!(
                "{} bytes after dropping {}, more than the {} a catalog entry may hold",
                entry.len(),
                stored::DROPPED_MEMBERS.join(" and "),
                limits::METADATA_ENTRY_MAX
            ),
        });
    }
    Ok(MetadataEntry {
        aaguid: e.aaguid.map(|a| a.to_vec()),
        aaid: e.aaid.clone(),
        key_ids: stored::key_id_texts(e),
        entry,
    })
}

/// Writes `bytes` to `path` so that a crash leaves the old file or the new
/// one, never a torn one: a temporary file beside it, fsync, rename, fsync
/// of the directory.
fn save_atomically(path: &Path, bytes: &[u8]) -> Result<(), MetadataError> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| MetadataError::Io { path: p, source }
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = path.with_extension("jwt.tmp");
    {
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io(path))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

/// The stored metadata of the model that made this registration: by AAGUID,
/// or, for U2F authenticators (zero AAGUID), by the key identifier of the
/// attestation certificate (SHA-1 of its subjectPublicKey, as MDS defines
/// it). `None` when the catalog has no entry, or when the response is too
/// malformed to tell; the engine then reports what is wrong with it.
pub fn lookup(
    store: &dyn Store,
    response: &RegistrationResponse,
) -> Result<Option<Known>, MetadataError> {
    let Ok(object) = AttestationObject::parse(&response.attestation_object) else {
        return Ok(None);
    };
    let Some(attested) = &object.auth_data.attested else {
        return Ok(None);
    };
    let entry = if attested.aaguid != [0; 16] {
        store.metadata_by_aaguid(&attested.aaguid)?
    } else {
        match attestation_key_id(&object.att_stmt) {
            Some(key_id) => store.metadata_by_key_id(&key_id)?,
            None => None,
        }
    };
    match entry {
        Some(e) => Ok(Some(Known::decode(&e.entry)?)),
        None => Ok(None),
    }
}

/// SHA-1 of the subjectPublicKey of `attStmt.x5c[0]`.
fn attestation_key_id(att_stmt: &ciborium::Value) -> Option<Vec<u8>> {
    let ciborium::Value::Map(members) = att_stmt else {
        return None;
    };
    let x5c = members
        .iter()
        .find(|(k, _)| k.as_text() == Some("x5c"))
        .map(|(_, v)| v)?;
    let chain = certpath::parse_x5c(x5c, "attStmt.x5c").ok()?;
    let leaf = chain.first()?;
    let key = leaf
        .tbs()
        .subject_public_key_info()
        .subject_public_key
        .raw_bytes();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, key);
    Some(digest.as_ref().to_vec())
}
