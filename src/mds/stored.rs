//! The stored form of one catalog entry: JSON with the entry's identifiers,
//! its metadata statement (without icons) and its status reports. Written
//! once per entry at install, read at each registration of that model, so
//! a registration never parses a whole BLOB.

use serde_json::{Map, Value, json};

use super::MdsError;
use super::blob::Entry;
use crate::webauthn::certpath::Cert;

/// Statement members dropped before storing: large, and unused by a server.
pub const DROPPED_MEMBERS: [&str; 2] = ["icon", "tcDisplayPNGCharacteristics"];

/// Attestation roots read back from one stored entry, at most.
const ROOTS_MAX: usize = 32;

/// The stored JSON of `e`.
pub fn encode(e: &Entry) -> Result<Vec<u8>, MdsError> {
    let mut doc = Map::new();
    if let Some(text) = e.aaguid_text() {
        doc.insert("aaguid".into(), json!(text));
    }
    if let Some(aaid) = &e.aaid {
        doc.insert("aaid".into(), json!(aaid));
    }
    if !e.attestation_certificate_key_identifiers.is_empty() {
        doc.insert(
            "attestationCertificateKeyIdentifiers".into(),
            json!(key_id_texts(e)),
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
    serde_json::to_vec(&Value::Object(doc))
        .map_err(|err| MdsError::payload(format!("entries[{}]", e.index), err.to_string()))
}

/// The entry's attestation certificate key identifiers as lowercase hex,
/// as MDS writes them and the store indexes them.
pub fn key_id_texts(e: &Entry) -> Vec<String> {
    e.attestation_certificate_key_identifiers
        .iter()
        .map(|k| crate::hex::encode(k))
        .collect()
}

/// What registration needs from a stored entry.
#[derive(Clone, Debug)]
pub struct Known {
    pub description: Option<String>,
    /// The attestation roots that parse; the others are left out, as at
    /// install.
    pub roots: Vec<Cert>,
    /// `(status, effectiveDate)` of every report, in the BLOB's order.
    pub statuses: Vec<(String, Option<String>)>,
    /// MDS names: `basic_full`, `basic_surrogate`, `attca`, `anonca`, `none`.
    pub attestation_types: Vec<String>,
    /// MDS names, e.g. `secp256r1_ecdsa_sha256_raw`.
    pub authentication_algorithms: Vec<String>,
    /// `hardware`, `secure_element`, `tee`, `software`, ...
    pub key_protection: Vec<String>,
    /// `internal`, `external`, `wired`, ...
    pub attachment_hint: Vec<String>,
}

impl Known {
    /// The certification level of the newest `FIDO_CERTIFIED*` report
    /// (`L1`, `L1plus`, `L2`, ...), by effective date; `None` if never
    /// certified or if a later report is `NOT_FIDO_CERTIFIED`.
    pub fn certification_level(&self) -> Option<String> {
        let mut reports: Vec<&(String, Option<String>)> = self
            .statuses
            .iter()
            .filter(|(s, _)| s.starts_with("FIDO_CERTIFIED") || s == "NOT_FIDO_CERTIFIED")
            .collect();
        reports.sort_by(|a, b| a.1.cmp(&b.1));
        let (status, _) = reports.last()?;
        match status.as_str() {
            "NOT_FIDO_CERTIFIED" => None,
            "FIDO_CERTIFIED" => Some("L1".to_string()),
            s => s.strip_prefix("FIDO_CERTIFIED_").map(str::to_string),
        }
    }
}

impl Known {
    /// Reads a stored entry. Members of the wrong type are read as absent:
    /// the entry was verified and written by signet itself.
    pub fn decode(bytes: &[u8]) -> Result<Known, MdsError> {
        let doc: Value = serde_json::from_slice(bytes)
            .map_err(|e| MdsError::payload("stored entry", e.to_string()))?;
        let st = &doc["metadataStatement"];
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        let roots = st["attestationRootCertificates"]
            .as_array()
            .map(|a| {
                a.iter()
                    .take(ROOTS_MAX)
                    .enumerate()
                    .filter_map(|(i, v)| {
                        let text: String = v.as_str()?.split_whitespace().collect();
                        let der = base64::Engine::decode(
                            &base64::engine::general_purpose::STANDARD,
                            text,
                        )
                        .ok()?;
                        Cert::parse(&der, format!("metadata attestationRootCertificates[{i}]")).ok()
                    })
                    .collect()
            })
            .unwrap_or_default();
        let statuses = doc["statusReports"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|r| {
                        Some((
                            r["status"].as_str()?.to_string(),
                            r["effectiveDate"].as_str().map(str::to_string),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Known {
            description: st["description"].as_str().map(str::to_string),
            roots,
            statuses,
            attestation_types: strings(&st["attestationTypes"]),
            authentication_algorithms: strings(&st["authenticationAlgorithms"]),
            key_protection: strings(&st["keyProtection"]),
            attachment_hint: strings(&st["attachmentHint"]),
        })
    }
}
