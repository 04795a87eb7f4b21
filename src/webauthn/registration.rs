//! Registration ceremony verification, WebAuthn Level 3 §7.1, step by step.

use std::time::SystemTime;

use ciborium::Value;

use super::attestation::{self, AttestationPolicy, AttestationType, Statement};
use super::authenticator_data::{AuthenticatorData, Flags};
use super::certpath::{self, Cert, PathOptions};
use super::client_data::{CeremonyType, ClientData};
use super::cose_key::CredentialPublicKey;
use super::response::RegistrationResponse;
use super::{Error, RelyingParty, UserVerification, limits};

const AO: &str = "response.attestationObject";

/// What the relying party expects of this registration.
pub struct Expectation<'a> {
    pub rp: &'a RelyingParty,
    /// The challenge issued for this ceremony (raw bytes).
    pub challenge: &'a [u8],
    pub user_verification: UserVerification,
    /// User presence is required unless the ceremony was a conditional
    /// create (WebAuthn L3 §7.1 step 14 allows UP=0 then).
    pub require_user_presence: bool,
    pub policy: &'a AttestationPolicy,
    /// Trust anchors for attestation chains. Empty: the statement and its
    /// chain are still verified, but nothing is anchored.
    pub trust_anchors: &'a [Cert],
    pub now: SystemTime,
}

/// A verified registration: everything the caller stores and reports.
#[derive(Clone, Debug)]
pub struct Registration {
    pub fmt: String,
    pub attestation_type: AttestationType,
    pub aaguid: [u8; 16],
    pub credential_id: Vec<u8>,
    pub public_key: CredentialPublicKey,
    pub sign_count: u32,
    pub flags: Flags,
    /// The attestation certificates, leaf first (DER).
    pub trust_path: Vec<Cert>,
    /// True only when the chain was validated to one of the trust anchors.
    pub anchored: bool,
    /// Authenticator extension outputs (CBOR map bytes).
    pub extensions: Option<Vec<u8>>,
    pub client_extension_results: serde_json::Value,
    pub transports: Vec<String>,
}

/// The decoded attestation object: `{fmt, attStmt, authData}`.
pub struct AttestationObject {
    pub fmt: String,
    pub att_stmt: Value,
    pub auth_data: AuthenticatorData,
}

impl AttestationObject {
    pub fn parse(bytes: &[u8]) -> Result<AttestationObject, Error> {
        if bytes.is_empty() {
            return Err(Error::Empty { field: AO.into() });
        }
        if bytes.len() > limits::ATTESTATION_OBJECT {
            return Err(Error::TooLarge {
                field: AO.into(),
                limit: limits::ATTESTATION_OBJECT,
            });
        }
        // One decode: ciborium advances the slice, so what is left over is
        // what follows the map.
        let mut rest = bytes;
        let value: Value =
            ciborium::de::from_reader_with_recursion_limit(&mut rest, limits::NESTING)
                .map_err(|e| Error::malformed(AO, format!("CBOR: {e}")))?;
        if !rest.is_empty() {
            return Err(Error::malformed(
                AO,
                format!("{} bytes after the CBOR map", rest.len()),
            ));
        }
        let Value::Map(entries) = &value else {
            return Err(Error::WrongType {
                field: AO.into(),
                expected: "a CBOR map",
            });
        };
        // Exactly the three members, once each: with a repeated key, two
        // readers of the same bytes could see two different statements.
        let mut seen = [false; 3];
        for (k, _) in entries {
            let Value::Text(name) = k else {
                return Err(Error::malformed(AO, "a map key is not a text string"));
            };
            let slot = match name.as_str() {
                "fmt" => 0,
                "attStmt" => 1,
                "authData" => 2,
                other => return Err(Error::malformed(AO, format!("unknown member {other:?}"))),
            };
            if std::mem::replace(&mut seen[slot], true) {
                return Err(Error::malformed(
                    format!("{AO}.{name}"),
                    "appears more than once",
                ));
            }
        }
        let fmt = match attestation::map_get(&value, "fmt") {
            None => {
                return Err(Error::Missing {
                    field: format!("{AO}.fmt"),
                });
            }
            Some(Value::Text(t)) if t.is_empty() => {
                return Err(Error::Empty {
                    field: format!("{AO}.fmt"),
                });
            }
            Some(Value::Text(t)) => t.clone(),
            Some(_) => {
                return Err(Error::WrongType {
                    field: format!("{AO}.fmt"),
                    expected: "a text string",
                });
            }
        };
        let att_stmt = match attestation::map_get(&value, "attStmt") {
            None => {
                return Err(Error::Missing {
                    field: format!("{AO}.attStmt"),
                });
            }
            Some(v @ Value::Map(_)) => v.clone(),
            // compound (L3 §8.9) carries an array of statements.
            Some(v @ Value::Array(_)) if fmt == "compound" => v.clone(),
            Some(_) => {
                return Err(Error::WrongType {
                    field: format!("{AO}.attStmt"),
                    expected: "a CBOR map",
                });
            }
        };
        let auth_data = match attestation::map_get(&value, "authData") {
            None => {
                return Err(Error::Missing {
                    field: format!("{AO}.authData"),
                });
            }
            Some(Value::Bytes(b)) => AuthenticatorData::parse(b, &format!("{AO}.authData"))?,
            Some(_) => {
                return Err(Error::WrongType {
                    field: format!("{AO}.authData"),
                    expected: "a byte string",
                });
            }
        };
        Ok(AttestationObject {
            fmt,
            att_stmt,
            auth_data,
        })
    }
}

/// Verifies a registration response against what was expected (§7.1).
pub fn verify(
    response: &RegistrationResponse,
    exp: &Expectation<'_>,
) -> Result<Registration, Error> {
    // Steps 5-10: client data.
    let client_data = ClientData::parse(&response.client_data_json)?;
    client_data.check(&[CeremonyType::Create], exp.challenge, exp.rp)?;

    // Step 12: decode the attestation object.
    let object = AttestationObject::parse(&response.attestation_object)?;
    let auth = &object.auth_data;
    let ad = format!("{AO}.authData");

    // Steps 13-17: rpIdHash and flags.
    auth.check(
        exp.rp,
        exp.user_verification,
        exp.require_user_presence,
        &ad,
    )?;
    let Some(attested) = &auth.attested else {
        return Err(Error::Missing {
            field: format!("{ad}.attestedCredentialData (AT flag not set)"),
        });
    };
    if response.id != attested.credential_id {
        return Err(Error::mismatch(
            "id",
            "is not the credential id in the authenticator data",
        ));
    }
    // Step 18: the credential algorithm is one we asked for.
    if !exp.rp.algorithms.contains(&attested.public_key.alg) {
        return Err(Error::Algorithm {
            field: format!("{ad}.attestedCredentialData.credentialPublicKey.alg(3)"),
            alg: attested.public_key.alg.id(),
            reason: "is not an accepted credential algorithm",
        });
    }

    // Steps 20-22: the attestation statement, then its trust path.
    let stmt = Statement {
        fmt: &object.fmt,
        att_stmt: &object.att_stmt,
        auth_data: auth,
        client_data_hash: &client_data.hash,
        policy: exp.policy,
        now: exp.now,
    };
    let verified = attestation::verify(&stmt)?;
    let anchored = if verified.trust_path.is_empty() {
        false
    } else {
        let opts = PathOptions {
            allow_root_in_chain: verified.root_in_path_allowed || exp.policy.allow_root_in_x5c,
        };
        certpath::validate(&verified.trust_path, exp.trust_anchors, exp.now, &opts)?.anchored
    };

    Ok(Registration {
        fmt: object.fmt.clone(),
        attestation_type: verified.attestation_type,
        aaguid: attested.aaguid,
        credential_id: attested.credential_id.clone(),
        public_key: attested.public_key.clone(),
        sign_count: auth.sign_count,
        flags: auth.flags,
        trust_path: verified.trust_path,
        anchored,
        extensions: auth.extensions.clone(),
        client_extension_results: response.client_extension_results.clone(),
        transports: response.transports.clone(),
    })
}
