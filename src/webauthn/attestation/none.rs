//! `none` (§8.7): no statement at all. A non-empty attStmt under `none` is
//! refused: it is how a full statement relabelled `none` would arrive.

use ciborium::Value;

use super::{AttestationType, Statement, Verified};
use crate::webauthn::Error;

pub fn verify(stmt: &Statement<'_>) -> Result<Verified, Error> {
    match stmt.att_stmt {
        Value::Map(m) if m.is_empty() => Ok(Verified {
            attestation_type: AttestationType::None,
            trust_path: Vec::new(),
            root_in_path_allowed: false,
        }),
        _ => Err(Error::malformed(
            "response.attestationObject.attStmt",
            "must be an empty map for fmt \"none\"",
        )),
    }
}
