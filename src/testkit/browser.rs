//! What a browser does between signet's options and the verify request:
//! read `PublicKeyCredentialCreationOptionsJSON` or
//! `PublicKeyCredentialRequestOptionsJSON`, run a [`SoftAuthenticator`], and
//! answer with the credential's `toJSON()`. `signet device-sim`, `signet
//! authenticator` and the tests share it.
//!
//! Like [`super::device`], these return errors instead of panicking: the
//! options come from a server under test, and a browser refuses options it
//! cannot honour rather than answering something else.

use serde_json::Value;

use super::{Attestation, Ceremony, SoftAuthenticator};
use crate::webauthn::{CoseAlgorithm, b64url, b64url_decode};

/// Options a browser would refuse, naming the member at fault.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct OptionsError {
    /// The member, as a path below the options (`challenge`, `rp.id`, ...).
    pub field: String,
    pub reason: String,
}

impl OptionsError {
    fn new(field: &str, reason: impl Into<String>) -> OptionsError {
        OptionsError {
            field: field.to_string(),
            reason: reason.into(),
        }
    }
}

/// WebAuthn caps neither, but every authenticator does; these are the
/// engine's own limits.
const CHALLENGE_MAX: usize = 64;
const USER_ID_MAX: usize = 64;
const CREDENTIAL_ID_MAX: usize = 1023;

fn text<'a>(options: &'a Value, field: &str) -> Result<&'a str, OptionsError> {
    let pointer = format!("/{}", field.replace('.', "/"));
    options
        .pointer(&pointer)
        .and_then(Value::as_str)
        .ok_or_else(|| OptionsError::new(field, "is missing or not a string"))
}

fn bytes(options: &Value, field: &str, limit: usize) -> Result<Vec<u8>, OptionsError> {
    b64url_decode(field, text(options, field)?, limit)
        .map_err(|e| OptionsError::new(field, e.to_string()))
}

fn challenge(options: &Value) -> Result<Vec<u8>, OptionsError> {
    let challenge = bytes(options, "challenge", CHALLENGE_MAX)?;
    // WebAuthn §13.4.3: at least 16 random bytes.
    if challenge.len() < 16 {
        return Err(OptionsError::new(
            "challenge",
            format!("is {} bytes; at least 16 are required", challenge.len()),
        ));
    }
    Ok(challenge)
}

/// `navigator.credentials.create()`: a fresh ES256 credential for the
/// options' user on `origin`, attested as `attestation`. Returns the
/// authenticator (holding the credential, for later assertions) and the
/// `RegistrationResponseJSON`.
pub fn create(
    options: &Value,
    origin: &str,
    attestation: &Attestation<'_>,
) -> Result<(SoftAuthenticator, Value), OptionsError> {
    let challenge = challenge(options)?;
    let rp_id = text(options, "rp.id")?;
    let user_handle = bytes(options, "user.id", USER_ID_MAX)?;
    if user_handle.is_empty() {
        return Err(OptionsError::new("user.id", "is empty"));
    }
    // §5.4 createCredential step 10: an empty list means ES256 and RS256.
    if let Some(params) = options.get("pubKeyCredParams") {
        let params = params
            .as_array()
            .ok_or_else(|| OptionsError::new("pubKeyCredParams", "is not a list"))?;
        let es256 = params.iter().any(|p| {
            p.get("type").and_then(Value::as_str) == Some("public-key")
                && p.get("alg").and_then(Value::as_i64) == Some(CoseAlgorithm::Es256.id())
        });
        if !params.is_empty() && !es256 {
            return Err(OptionsError::new(
                "pubKeyCredParams",
                "does not offer ES256 (-7), the only algorithm this authenticator has",
            ));
        }
    }
    let mut auth = SoftAuthenticator::new(CoseAlgorithm::Es256);
    auth.user_handle = user_handle;
    let parts = auth.register(&Ceremony::new(rp_id, origin, &challenge), attestation);
    Ok((auth, parts.to_json()))
}

/// `navigator.credentials.get()` with the credential `auth` holds for
/// `rp_id`: refused when the options name another RP or an allow list
/// without this credential. Advances the counter; returns the
/// `AuthenticationResponseJSON`.
pub fn get(
    auth: &mut SoftAuthenticator,
    rp_id: &str,
    options: &Value,
    origin: &str,
) -> Result<Value, OptionsError> {
    let challenge = challenge(options)?;
    // rpId is optional in request options: the caller's effective domain.
    if options.get("rpId").is_some() {
        let asked = text(options, "rpId")?;
        if asked != rp_id {
            return Err(OptionsError::new(
                "rpId",
                format!(
                    "is {}; this credential is for {rp_id}",
                    crate::files::one_line(asked)
                ),
            ));
        }
    }
    if let Some(allowed) = options.get("allowCredentials") {
        let allowed = allowed
            .as_array()
            .ok_or_else(|| OptionsError::new("allowCredentials", "is not a list"))?;
        let mut listed = false;
        for (i, descriptor) in allowed.iter().enumerate() {
            let id = bytes(descriptor, "id", CREDENTIAL_ID_MAX)
                .map_err(|e| OptionsError::new(&format!("allowCredentials[{i}].id"), e.reason))?;
            listed |= id == auth.credential_id;
        }
        if !allowed.is_empty() && !listed {
            return Err(OptionsError::new(
                "allowCredentials",
                format!(
                    "does not list this authenticator's credential {}",
                    b64url(&auth.credential_id)
                ),
            ));
        }
    }
    Ok(auth
        .assert(&Ceremony::new(rp_id, origin, &challenge))
        .to_json())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn creation() -> Value {
        json!({
            "rp": {"id": "localhost", "name": "dev"},
            "user": {"id": b64url(b"user-1"), "name": "alice", "displayName": "Alice"},
            "challenge": b64url(&[7; 32]),
            "pubKeyCredParams": [{"type": "public-key", "alg": -7}],
        })
    }

    #[test]
    fn create_names_each_bad_member() {
        let cases: [(&str, Value); 6] = [
            ("challenge", json!(null)),
            ("challenge", json!(b64url(&[1; 8]))),
            ("challenge", json!("not base64url!")),
            ("rp", json!({})),
            ("user", json!({"id": ""})),
            (
                "pubKeyCredParams",
                json!([{"type": "public-key", "alg": -257}]),
            ),
        ];
        for (member, value) in cases {
            let mut options = creation();
            options[member] = value;
            let e = create(&options, "https://localhost", &Attestation::None).expect_err(member);
            assert!(e.field.starts_with(member), "{member}: {e}");
        }
    }

    #[test]
    fn get_answers_only_for_its_own_credential_and_rp() {
        let (mut auth, registration) =
            create(&creation(), "https://localhost", &Attestation::None).expect("create");
        let id = registration["id"].as_str().expect("id").to_string();
        let request = |allow: Value, rp: &str| json!({"challenge": b64url(&[9; 32]), "rpId": rp, "allowCredentials": allow});
        let ok = get(
            &mut auth,
            "localhost",
            &request(json!([{"type": "public-key", "id": id}]), "localhost"),
            "https://localhost",
        )
        .expect("listed");
        assert_eq!(ok["id"], json!(id));
        assert_eq!(auth.sign_count, 1);
        get(
            &mut auth,
            "localhost",
            &request(json!([]), "localhost"),
            "https://localhost",
        )
        .expect("discoverable");
        let other = json!([{"type": "public-key", "id": b64url(b"other")}]);
        let e = get(
            &mut auth,
            "localhost",
            &request(other, "localhost"),
            "https://localhost",
        )
        .expect_err("not listed");
        assert_eq!(e.field, "allowCredentials");
        let e = get(
            &mut auth,
            "localhost",
            &request(json!([]), "bank.example"),
            "https://x",
        )
        .expect_err("other rp");
        assert_eq!(e.field, "rpId");
        assert_eq!(auth.sign_count, 2, "refusals do not count");
    }
}
