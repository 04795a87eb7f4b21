//! Listing and deleting a user's passkeys.

use serde_json::{Value, json};
use std::time::SystemTime;

use super::{FlowError, Services, b64_field, unix_ms, uuid_text};
use crate::audit::AuditEvent;
use crate::rfc3339::format_ms;
use crate::store::{CredentialRecord, limits};
use crate::webauthn::b64url;

/// One credential as the API shows it (no public key: core banking has no
/// use for it, and what it does not hold it cannot leak).
pub fn credential_json(c: &CredentialRecord) -> Value {
    json!({
        "credentialId": b64url(&c.id),
        "userId": b64url(&c.user_id),
        "aaguid": uuid_text(&c.aaguid),
        "fmt": c.fmt,
        "attestationType": c.attestation_type,
        "signCount": c.sign_count,
        "backupEligible": c.backup_eligible,
        "backupState": c.backup_state,
        "transports": c.transports,
        "createdAt": format_ms(c.created_ms),
        "lastUsedAt": c.last_used_ms.map(format_ms),
        "flagged": c.flagged,
        "deviceId": c.device_id.as_deref().map(b64url),
        "disabled": c.disabled,
        "tier": c.tier,
        "tierReasons": c.tier_reasons,
        "marked": c.marked,
        "policyVersion": c.policy_version,
    })
}

/// `GET /v1/users/{userId}/credentials`.
pub fn list(s: &Services, user_id_text: &str) -> Result<Value, FlowError> {
    let user_id = b64_field(user_id_text, "userId", 1, limits::USER_ID_MAX)?;
    let user = s.store.user_by_id(&user_id)?.ok_or(FlowError::NotFound {
        what: "user",
        field: "userId".into(),
    })?;
    let creds = s.store.credentials_by_user(&user.id)?;
    Ok(json!({
        "userId": b64url(&user.id),
        "userName": user.name,
        "displayName": user.display_name,
        "credentials": creds.iter().map(credential_json).collect::<Vec<_>>(),
    }))
}

/// `DELETE /v1/credentials/{id}`. Audited before it is acknowledged.
pub fn delete(s: &Services, id_text: &str, actor: &str, now: SystemTime) -> Result<(), FlowError> {
    let id = b64_field(id_text, "credentialId", 1, limits::CREDENTIAL_ID_MAX)?;
    let Some(cred) = s.store.credential(&id)? else {
        return Err(FlowError::NotFound {
            what: "credential",
            field: "credentialId".into(),
        });
    };
    if !s.store.delete_credential(&id)? {
        // Deleted concurrently: the other request audited it.
        return Err(FlowError::NotFound {
            what: "credential",
            field: "credentialId".into(),
        });
    }
    let now_ms = unix_ms(now);
    s.record(
        AuditEvent::new(now_ms, actor, "credential.deleted", b64url(&id)).with_detail(json!({
            "userId": b64url(&cred.user_id),
            "aaguid": uuid_text(&cred.aaguid),
        })),
    )
}
