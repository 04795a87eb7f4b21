//! Installing a FIDO Metadata Service BLOB into the store: verified, fresh,
//! newer than the installed one, then the whole catalog replaced at once and
//! the BLOB kept on disk as the last good one. [`refresh`] downloads it first
//! (conditionally, with the validators kept beside the last good BLOB).
//!
//! The catalog is stored entry by entry, as JSON, so that registration
//! (issue 5's next step) reads one entry by AAGUID or key identifier without
//! parsing a 2 MB BLOB. Icons are dropped on the way in: they are the only
//! large member, and a server has no use for them.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::{unix_ms, uuid_text};
use crate::audit::AuditEvent;
use crate::config::MdsSettings;
use crate::mds::blob::{self, Blob, Entry};
use crate::mds::crl::Crl;
use crate::mds::fetch::{self, FetchError, FetchOptions, Fetched, Validators};
use crate::mds::stored::Known;
use crate::mds::{MdsError, stored};
use crate::policy::metadata::refusing_status;
use crate::store::{CatalogInfo, MetadataEntry, Store, StoreError, limits};
use crate::webauthn::certpath::{self, Cert};
use crate::webauthn::registration::AttestationObject;
use crate::webauthn::response::RegistrationResponse;

/// Where the last good BLOB is kept, under the data directory.
pub const LAST_GOOD: &str = "mds/blob.jwt";
/// Beside it: the URL it was fetched from and that response's `ETag` and
/// `Last-Modified` (JSON), for the next conditional request.
pub const VALIDATORS: &str = "mds/blob.etag";
/// Largest root or CRL file read by [`load_roots`] and [`load_crl`].
const PKI_FILE_MAX: u64 = 4 * 1024 * 1024;

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
    /// Downloading the BLOB failed (the error names the URL).
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// A trust root or CRL file: `key` is the setting or flag that named it
    /// (`mds.root`, `mds.crls[1]`, `--crl`).
    #[error("{key}: {}: {reason}", path.display())]
    Trust {
        key: String,
        path: PathBuf,
        reason: String,
    },
    /// Recording a status change or a flagged credential failed.
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditLogError),
}

/// A model whose metadata newly reports a status that refuses it
/// (compromise, UV bypass, REVOKED): not refused by the catalog before.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NewlyRefused {
    pub aaguid: String,
    #[serde(skip)]
    pub aaguid_bytes: [u8; 16],
    pub status: String,
    pub effective_date: Option<String>,
    pub model: Option<String>,
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
    /// Models this catalog refuses that the previous one did not; their
    /// credentials are flagged by [`flag_newly_refused`].
    pub newly_refused: Vec<NewlyRefused>,
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
            store.record_metadata_attempt(unix_ms(now), Some(&format!("{}: {e}", input.source)))
    {
        tracing::warn!(error = %record, "could not record the metadata failure");
    }
    result
}

/// What a [`refresh`] did.
#[derive(Debug)]
pub enum RefreshOutcome {
    /// A newer BLOB was verified and installed.
    Installed(InstallReport),
    /// The held catalog is current: the server answered 304, or served a
    /// valid BLOB with the installed serial number.
    NotModified { no: Option<u64> },
}

/// Fetches the BLOB from `settings.url` (through `settings.proxy`, which
/// replaces `options.proxy`) and installs it as [`install`] does, verified
/// with `roots` and `crls` as of `now`. The request is conditional when the
/// validators kept beside the last good BLOB belong to the installed catalog
/// and to this URL. A failure (download or verification) is recorded in the
/// store's metadata status and returned; the installed catalog stays.
pub fn refresh(
    store: &dyn Store,
    data_dir: &Path,
    settings: &MdsSettings,
    roots: &[Cert],
    crls: &[Crl],
    options: &FetchOptions,
    now: SystemTime,
) -> Result<RefreshOutcome, MetadataError> {
    let result = try_refresh(store, data_dir, settings, roots, crls, options, now);
    if let Err(e) = &result
        && let Err(record) =
            store.record_metadata_attempt(unix_ms(now), Some(&refresh_failure(e, settings)))
    {
        tracing::warn!(error = %record, "could not record the metadata failure");
    }
    result
}

/// The failure as recorded: fetch errors name the URL themselves.
fn refresh_failure(e: &MetadataError, settings: &MdsSettings) -> String {
    match e {
        MetadataError::Fetch(_) => e.to_string(),
        _ => format!("{}: {e}", settings.url),
    }
}

fn try_refresh(
    store: &dyn Store,
    data_dir: &Path,
    settings: &MdsSettings,
    roots: &[Cert],
    crls: &[Crl],
    options: &FetchOptions,
    now: SystemTime,
) -> Result<RefreshOutcome, MetadataError> {
    let held = store.metadata_status()?.catalog;
    let previous = held
        .as_ref()
        .filter(|_| data_dir.join(LAST_GOOD).is_file())
        .and_then(|c| load_validators(data_dir, &settings.url, &c.blob_sha256))
        .unwrap_or_default();
    let options = FetchOptions {
        proxy: settings.proxy.clone(),
        ..options.clone()
    };
    let (jwt, validators) = match fetch::fetch(&settings.url, &previous, &options)? {
        Fetched::NotModified { .. } => {
            store.record_metadata_attempt(unix_ms(now), None)?;
            return Ok(RefreshOutcome::NotModified {
                no: held.map(|c| c.no),
            });
        }
        Fetched::Body {
            bytes, validators, ..
        } => (bytes, validators),
    };
    let input = BlobInput {
        jwt: &jwt,
        roots,
        crls,
        at: now,
        source: &settings.url,
    };
    let outcome = match try_install(store, data_dir, &input, now) {
        Ok(report) => RefreshOutcome::Installed(report),
        // MDS often serves the same BLOB again without validators.
        Err(MetadataError::Blob(MdsError::NotNewer { held, got })) if held == got => {
            store.record_metadata_attempt(unix_ms(now), None)?;
            RefreshOutcome::NotModified { no: Some(held) }
        }
        Err(e) => return Err(e),
    };
    if let Some(catalog) = store.metadata_status()?.catalog {
        save_validators(data_dir, &settings.url, &catalog.blob_sha256, validators);
    }
    Ok(outcome)
}

/// The validators file as written.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct SavedValidators {
    url: String,
    /// Hex SHA-256 of the installed BLOB they were kept for.
    blob_sha256: String,
    #[serde(flatten)]
    validators: Validators,
}

fn load_validators(data_dir: &Path, url: &str, blob_sha256: &[u8; 32]) -> Option<Validators> {
    let path = data_dir.join(VALIDATORS);
    let mut text = Vec::new();
    std::fs::File::open(&path)
        .ok()?
        .take(64 * 1024)
        .read_to_end(&mut text)
        .ok()?;
    let saved: SavedValidators = match serde_json::from_slice(&text) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable MDS validators");
            return None;
        }
    };
    (saved.url == url && saved.blob_sha256 == crate::audit::hex(blob_sha256))
        .then_some(saved.validators)
}

/// Best effort: without the file the next request is unconditional.
fn save_validators(data_dir: &Path, url: &str, blob_sha256: &[u8; 32], validators: Validators) {
    let path = data_dir.join(VALIDATORS);
    let result = if validators.is_empty() {
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(MetadataError::Io {
                path: path.clone(),
                source: e,
            }),
            _ => Ok(()),
        }
    } else {
        let saved = SavedValidators {
            url: url.to_string(),
            blob_sha256: crate::audit::hex(blob_sha256),
            validators,
        };
        serde_json::to_vec_pretty(&saved)
            .map_err(|e| MetadataError::Io {
                path: path.clone(),
                source: e.into(),
            })
            .and_then(|bytes| save_atomically(&path, &bytes))
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, "could not keep the MDS validators");
    }
}

/// The trust roots in `path` (PEM or DER), or the built-in FIDO MDS root
/// when `None`. `key` names the setting or flag in errors.
pub fn load_roots(path: Option<&Path>, key: &str) -> Result<Vec<Cert>, MetadataError> {
    match path {
        None => Ok(crate::mds::parse_roots(
            crate::mds::FIDO_MDS_ROOT,
            "built-in MDS root",
        )?),
        Some(p) => crate::mds::parse_roots(&read_pki(p, key)?, key).map_err(|e| trust(key, p, e)),
    }
}

/// The CRL in `path` (PEM or DER). `key` names the setting or flag in errors.
pub fn load_crl(path: &Path, key: &str) -> Result<Crl, MetadataError> {
    Crl::parse(&read_pki(path, key)?).map_err(|e| trust(key, path, e))
}

fn trust(key: &str, path: &Path, reason: impl std::fmt::Display) -> MetadataError {
    MetadataError::Trust {
        key: key.to_string(),
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn read_pki(path: &Path, key: &str) -> Result<Vec<u8>, MetadataError> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(PKI_FILE_MAX + 1).read_to_end(&mut bytes))
        .map_err(|e| trust(key, path, e))?;
    if bytes.len() as u64 > PKI_FILE_MAX {
        return Err(trust(
            key,
            path,
            format!("larger than {PKI_FILE_MAX} bytes"),
        ));
    }
    Ok(bytes)
}

/// The audit event of an installation (`mds.installed`), by `actor`.
pub fn installed_event(
    report: &InstallReport,
    source: &str,
    actor: &str,
    now: SystemTime,
) -> AuditEvent {
    AuditEvent::new(
        unix_ms(now),
        actor,
        "mds.installed",
        format!("no {}", report.no),
    )
    .with_detail(serde_json::json!({
        "no": report.no,
        "previousNo": report.previous_no,
        "nextUpdate": report.next_update,
        "entries": report.entries,
        "source": source,
        "revocationChecked": report.revocation_checked,
    }))
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
    let newly_refused = newly_refused(store, &entries)?;
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
    let mut report = report(&blob, previous_no, saved_to);
    report.newly_refused = newly_refused;
    Ok(report)
}

/// The models `entries` refuse that the installed catalog does not (read
/// before it is replaced): the status diff of an update.
pub fn newly_refused(
    store: &dyn Store,
    entries: &[MetadataEntry],
) -> Result<Vec<NewlyRefused>, MetadataError> {
    let mut out = Vec::new();
    for e in entries {
        let Some(aaguid) = e
            .aaguid
            .as_deref()
            .and_then(|a| <[u8; 16]>::try_from(a).ok())
        else {
            continue;
        };
        let known = Known::decode(&e.entry)?;
        let Some((status, date)) = refusing_status(&known) else {
            continue;
        };
        let before = match store.metadata_by_aaguid(&aaguid)? {
            Some(old) => refusing_status(&Known::decode(&old.entry)?).is_some(),
            None => false,
        };
        if !before {
            out.push(NewlyRefused {
                aaguid: crate::webauthn::uuid_text(&aaguid),
                aaguid_bytes: aaguid,
                status: status.clone(),
                effective_date: date.clone(),
                model: known.description.clone(),
            });
        }
    }
    Ok(out)
}

/// Reacts to a catalog update without manual steps: every credential of a
/// newly refused model is flagged (refused at authentication from then on)
/// and each change is audited, which is also what `GET /v1/events` serves
/// to core banking. Registrations of those models are already refused by
/// the registration policy, which reads the installed catalog. Returns how
/// many credentials were flagged.
pub fn flag_newly_refused(
    store: &dyn Store,
    audit: &crate::audit::AuditLog,
    ring: Option<&crate::keys::KeyRing>,
    refused: &[NewlyRefused],
    actor: &str,
    now: SystemTime,
) -> Result<usize, MetadataError> {
    let now_ms = unix_ms(now);
    for r in refused {
        audit.append(
            &AuditEvent::new(now_ms, actor, "mds.status_changed", r.aaguid.clone()).with_detail(
                serde_json::json!({
                    "aaguid": r.aaguid, "status": r.status,
                    "effectiveDate": r.effective_date, "model": r.model,
                }),
            ),
            ring,
        )?;
    }
    flag_refused(store, audit, ring, actor, now)
}

/// Flags every unflagged credential whose model the installed catalog
/// refuses, auditing each. It looks at the catalog as it is, not at what
/// changed, so it is idempotent: run after every refresh (installed or
/// not modified), it completes a run that a crash or a full disk cut short.
pub fn flag_refused(
    store: &dyn Store,
    audit: &crate::audit::AuditLog,
    ring: Option<&crate::keys::KeyRing>,
    actor: &str,
    now: SystemTime,
) -> Result<usize, MetadataError> {
    const PAGE: usize = 256;
    let now_ms = unix_ms(now);
    let mut verdicts: std::collections::HashMap<ModelKey, Option<String>> =
        std::collections::HashMap::new();
    let mut flagged = 0;
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = store.credentials_after(after.as_deref(), PAGE)?;
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        for credential in page.iter().filter(|c| c.flagged.is_none()) {
            let key = model_key(credential);
            let reason = match verdicts.get(&key) {
                Some(r) => r.clone(),
                None => {
                    let r = lookup_credential(store, credential)?
                        .and_then(|k| crate::policy::metadata::refusal_reason(&k));
                    verdicts.insert(key, r.clone());
                    r
                }
            };
            let Some(reason) = reason else { continue };
            store.set_credential_flag(&credential.id, Some(&reason))?;
            audit.append(
                &AuditEvent::new(
                    now_ms,
                    actor,
                    "credential.flagged",
                    crate::webauthn::b64url(&credential.id),
                )
                .with_detail(serde_json::json!({
                    "credentialId": crate::webauthn::b64url(&credential.id),
                    "userId": crate::webauthn::b64url(&credential.user_id),
                    "aaguid": uuid_text(&credential.aaguid),
                    "reason": reason,
                })),
                ring,
            )?;
            flagged += 1;
        }
    }
    Ok(flagged)
}

fn report(blob: &Blob, previous_no: Option<u64>, saved_to: PathBuf) -> InstallReport {
    InstallReport {
        newly_refused: Vec::new(),
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

fn save_atomically(path: &Path, bytes: &[u8]) -> Result<(), MetadataError> {
    super::write_atomically(path, bytes)
        .map_err(|(path, source)| MetadataError::Io { path, source })
}

/// The stored metadata of the model that made this registration: by AAGUID,
/// or, for U2F authenticators (zero AAGUID), by the key identifier of the
/// attestation certificate (SHA-1 of its subjectPublicKey, as MDS defines
/// it), which is returned too so the credential can keep it. `None` when
/// the catalog has no entry, or when the response is too malformed to tell;
/// the engine then reports what is wrong with it.
pub fn lookup(
    store: &dyn Store,
    response: &RegistrationResponse,
) -> Result<Option<Found>, MetadataError> {
    let Ok(object) = AttestationObject::parse(&response.attestation_object) else {
        return Ok(None);
    };
    let Some(attested) = &object.auth_data.attested else {
        return Ok(None);
    };
    let key_id = if attested.aaguid == [0; 16] {
        attestation_key_id(&object.att_stmt)
    } else {
        None
    };
    Ok(catalog_entry(store, &attested.aaguid, key_id.as_deref())?
        .map(|known| Found { known, key_id }))
}

/// A registering model's catalog entry, and the attestation key
/// identifier it was found by (U2F models, which have no AAGUID).
pub struct Found {
    pub known: Known,
    pub key_id: Option<Vec<u8>>,
}

/// What identifies a credential's model in the catalog: its AAGUID, and
/// for U2F models the attestation key identifier.
pub type ModelKey = ([u8; 16], Option<Vec<u8>>);

pub fn model_key(credential: &crate::store::CredentialRecord) -> ModelKey {
    (credential.aaguid, credential.metadata_key_id.clone())
}

/// The stored metadata of a registered credential's model, as the catalog
/// has it now (it changes with every MDS update).
pub fn lookup_credential(
    store: &dyn Store,
    credential: &crate::store::CredentialRecord,
) -> Result<Option<Known>, MetadataError> {
    catalog_entry(
        store,
        &credential.aaguid,
        credential.metadata_key_id.as_deref(),
    )
}

fn catalog_entry(
    store: &dyn Store,
    aaguid: &[u8; 16],
    key_id: Option<&[u8]>,
) -> Result<Option<Known>, MetadataError> {
    let entry = if *aaguid != [0; 16] {
        store.metadata_by_aaguid(aaguid)?
    } else {
        match key_id {
            Some(k) => store.metadata_by_key_id(k)?,
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
