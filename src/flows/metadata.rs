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

use serde_json::{Map, Value, json};

use super::unix_ms;
use crate::mds::MdsError;
use crate::mds::blob::{self, Blob, Entry};
use crate::mds::crl::Crl;
use crate::store::{CatalogInfo, MetadataEntry, Store, StoreError, limits};
use crate::webauthn::certpath::Cert;

/// Where the last good BLOB is kept, under the data directory.
pub const LAST_GOOD: &str = "mds/blob.jwt";

/// Statement members dropped before storing: large, and unused by a server.
const DROPPED_MEMBERS: [&str; 2] = ["icon", "tcDisplayPNGCharacteristics"];

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

/// One catalog entry as stored: identifiers, the statement without its
/// dropped members, and the status reports.
pub fn stored_entry(e: &Entry) -> Result<MetadataEntry, MetadataError> {
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let key_ids: Vec<String> = e
        .attestation_certificate_key_identifiers
        .iter()
        .map(|k| hex(k))
        .collect();
    let mut doc = Map::new();
    if let Some(text) = e.aaguid_text() {
        doc.insert("aaguid".into(), json!(text));
    }
    if let Some(aaid) = &e.aaid {
        doc.insert("aaid".into(), json!(aaid));
    }
    if !key_ids.is_empty() {
        doc.insert(
            "attestationCertificateKeyIdentifiers".into(),
            json!(key_ids),
        );
    }
    if let Some(statement) = &e.statement {
        let mut json = statement.json.clone();
        if let Some(obj) = json.as_object_mut() {
            for member in DROPPED_MEMBERS {
                obj.remove(member);
            }
        }
        doc.insert("metadataStatement".into(), json);
    }
    let reports: Vec<Value> = e
        .status_reports
        .iter()
        .map(|r| {
            json!({
                "status": r.status,
                "effectiveDate": r.effective_date,
                "certificationLevel": r.certification_level,
                "authenticatorVersion": r.authenticator_version,
                "certificateNumber": r.certificate_number,
                "url": r.url,
            })
        })
        .collect();
    doc.insert("statusReports".into(), Value::Array(reports));
    if let Some(t) = &e.time_of_last_status_change {
        doc.insert("timeOfLastStatusChange".into(), json!(t));
    }
    let entry = serde_json::to_vec(&Value::Object(doc)).map_err(|err| MetadataError::Entry {
        index: e.index,
        reason: err.to_string(),
    })?;
    if entry.len() > limits::METADATA_ENTRY_MAX {
        return Err(MetadataError::Entry {
            index: e.index,
            reason: format!(
                "{} bytes after dropping {}, more than the {} a catalog entry may hold",
                entry.len(),
                DROPPED_MEMBERS.join(" and "),
                limits::METADATA_ENTRY_MAX
            ),
        });
    }
    Ok(MetadataEntry {
        aaguid: e.aaguid.map(|a| a.to_vec()),
        aaid: e.aaid.clone(),
        key_ids,
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
