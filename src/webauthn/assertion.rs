//! Authentication ceremony verification, WebAuthn Level 3 §7.2, step by step.

use super::authenticator_data::{AuthenticatorData, Flags};
use super::client_data::{CeremonyType, ClientData};
use super::cose_key::CredentialPublicKey;
use super::response::AuthenticationResponse;
use super::{Error, RelyingParty, UserVerification, constant_time_eq};

/// What the relying party holds about the credential.
pub struct StoredCredential<'a> {
    pub id: &'a [u8],
    pub public_key: &'a CredentialPublicKey,
    pub sign_count: u32,
    /// BE as recorded at registration: it may not change afterwards.
    pub backup_eligible: bool,
    /// The user handle the credential was registered for.
    pub user_handle: &'a [u8],
}

/// What the relying party expects of this assertion.
pub struct Expectation<'a> {
    pub rp: &'a RelyingParty,
    pub challenge: &'a [u8],
    pub user_verification: UserVerification,
    pub require_user_presence: bool,
    /// The request had no allowCredentials: the authenticator chose a
    /// discoverable credential and must say whose it is (userHandle).
    pub discoverable: bool,
    /// Accept `payment.get` client data (Secure Payment Confirmation).
    pub allow_payment: bool,
}

/// A verified assertion.
#[derive(Clone, Debug)]
pub struct Assertion {
    pub credential_id: Vec<u8>,
    /// The new counter to store.
    pub sign_count: u32,
    pub flags: Flags,
    pub user_verified: bool,
    pub backup_state: bool,
    pub extensions: Option<Vec<u8>>,
    pub client_data: ClientData,
    pub client_extension_results: serde_json::Value,
}

/// Verifies an assertion for a credential the caller looked up by `response.id`.
pub fn verify(
    response: &AuthenticationResponse,
    credential: &StoredCredential<'_>,
    exp: &Expectation<'_>,
) -> Result<Assertion, Error> {
    // Steps 5-6: the credential and its owner.
    if !constant_time_eq(&response.id, credential.id) {
        return Err(Error::mismatch(
            "id",
            "is not the credential being verified",
        ));
    }
    match &response.user_handle {
        Some(h) if h.is_empty() && exp.discoverable => {
            return Err(Error::Empty {
                field: "response.userHandle".into(),
            });
        }
        Some(h) if !h.is_empty() && !constant_time_eq(h, credential.user_handle) => {
            return Err(Error::mismatch(
                "response.userHandle",
                "is not the user the credential belongs to",
            ));
        }
        None if exp.discoverable => {
            return Err(Error::Missing {
                field: "response.userHandle".into(),
            });
        }
        _ => {}
    }

    // Steps 10-13: client data.
    let client_data = ClientData::parse(&response.client_data_json)?;
    let types: &[CeremonyType] = if exp.allow_payment {
        &[CeremonyType::Get, CeremonyType::PaymentGet]
    } else {
        &[CeremonyType::Get]
    };
    client_data.check(types, exp.challenge, exp.rp)?;

    // Steps 14-18: authenticator data.
    let ad = "response.authenticatorData";
    let auth = AuthenticatorData::parse(&response.authenticator_data, ad)?;
    auth.check(exp.rp, exp.user_verification, exp.require_user_presence, ad)?;
    if auth.flags.be != credential.backup_eligible {
        return Err(Error::mismatch(
            format!("{ad}.flags.BE"),
            "backup eligibility changed since registration",
        ));
    }

    // Steps 19-20: the signature over authenticatorData || SHA-256(clientDataJSON).
    let mut signed = Vec::with_capacity(auth.raw.len() + 32);
    signed.extend_from_slice(&auth.raw);
    signed.extend_from_slice(&client_data.hash);
    credential
        .public_key
        .verify(&signed, &response.signature, "response.signature")?;

    // Step 22: the counter. Zero on both sides means the authenticator does
    // not count; otherwise it must grow.
    if (auth.sign_count != 0 || credential.sign_count != 0)
        && auth.sign_count <= credential.sign_count
    {
        return Err(Error::CounterNotIncreased {
            stored: credential.sign_count,
            received: auth.sign_count,
        });
    }

    Ok(Assertion {
        credential_id: response.id.clone(),
        sign_count: auth.sign_count,
        flags: auth.flags,
        user_verified: auth.flags.uv,
        backup_state: auth.flags.bs,
        extensions: auth.extensions,
        client_data,
        client_extension_results: response.client_extension_results.clone(),
    })
}
