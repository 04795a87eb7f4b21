//! Creation and request options as WebAuthn Level 3 JSON
//! (`PublicKeyCredentialCreationOptionsJSON`, §5.4 and §5.1.10 `parseCreationOptionsFromJSON`;
//! `PublicKeyCredentialRequestOptionsJSON`, §5.5), ready for a browser's
//! `PublicKeyCredential.parse*OptionsFromJSON()` or the conformance API.
//!
//! The builders are pure: the caller draws the challenge (see
//! [`new_challenge`]) and stores it, because verification needs the same
//! bytes later and the engine keeps no state. Every input is validated and a
//! refusal names the JSON member it concerns, as the verifiers do.

use serde::Serialize;
use serde_json::{Map, Value};

use super::{Error, RelyingParty, UserVerification, b64url, limits};

/// Fewer than 16 bytes of challenge is below what WebAuthn §13.4.3 requires to
/// make replay guessing infeasible.
pub const CHALLENGE_MIN: usize = 16;
/// The conformance API issues 16 to 64 bytes; more only grows every request.
pub const CHALLENGE_MAX: usize = 64;
/// WebAuthn §5.4.3: a user handle is 1 to 64 bytes.
pub const USER_ID_MAX: usize = 64;
/// Authenticators store at least 64 bytes of a name and may truncate the
/// rest; 256 leaves room for long display names without inviting abuse.
pub const NAME_MAX: usize = 256;
/// The shortest and longest ceremony timeouts accepted (milliseconds): the
/// ends of the ranges WebAuthn §15.1 recommends, so a user who needs more time
/// (accessibility) is not cut off and a ceremony does not linger for hours.
pub const TIMEOUT_MIN_MS: u32 = 30_000;
pub const TIMEOUT_MAX_MS: u32 = 600_000;
/// The extensions object, serialized: a largeBlob write can be a few KiB.
pub const EXTENSIONS_JSON_MAX: usize = 16 * 1024;
/// A transport name (`usb`, `smart-card`, ...). Unknown names are passed on,
/// because clients ignore transports they do not know (§5.8.4) and new ones
/// appear; only their size is bounded.
pub const TRANSPORT_MAX: usize = 32;
pub const TRANSPORTS_MAX: usize = 16;

/// Attestation statement format identifiers registered with IANA
/// (WebAuthn §8). `attestationFormats` may name only these.
pub const ATTESTATION_FORMATS: [&str; 8] = [
    "packed",
    "tpm",
    "android-key",
    "android-safetynet",
    "fido-u2f",
    "apple",
    "none",
    "compound",
];

/// Draws a fresh 32-byte challenge from the system generator.
///
/// This is the one function in the engine that is not pure: everything else
/// takes the challenge as an argument so that it can be stored first and
/// tests can fix it. A generator failure is reported rather than papered
/// over, since a predictable challenge would defeat replay protection.
pub fn new_challenge() -> Result<[u8; 32], Error> {
    let mut challenge = [0u8; 32];
    aws_lc_rs::rand::fill(&mut challenge)
        .map_err(|_| Error::policy("challenge", "the system random generator failed"))?;
    Ok(challenge)
}

/// `PublicKeyCredentialRpEntity`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PublicKeyCredentialRpEntity {
    pub id: String,
    pub name: String,
}

/// `PublicKeyCredentialUserEntityJSON`: `id` is the user handle, base64url.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PublicKeyCredentialUserEntityJSON {
    pub id: String,
    pub name: String,
    pub display_name: String,
}

/// `PublicKeyCredentialParameters`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PublicKeyCredentialParameters {
    #[serde(rename = "type")]
    pub type_: &'static str,
    pub alg: i64,
}

/// `PublicKeyCredentialDescriptorJSON`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PublicKeyCredentialDescriptorJSON {
    #[serde(rename = "type")]
    pub type_: &'static str,
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transports: Option<Vec<String>>,
}

/// `AuthenticatorAttachment`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthenticatorAttachment {
    Platform,
    CrossPlatform,
}

/// `ResidentKeyRequirement`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ResidentKeyRequirement {
    #[default]
    Discouraged,
    Preferred,
    Required,
}

/// `AttestationConveyancePreference`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttestationConveyance {
    #[default]
    None,
    Indirect,
    Direct,
    Enterprise,
}

/// `PublicKeyCredentialHint` (L3 §5.8.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Hint {
    SecurityKey,
    ClientDevice,
    Hybrid,
}

/// `AuthenticatorSelectionCriteria`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthenticatorSelectionCriteria {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authenticator_attachment: Option<AuthenticatorAttachment>,
    pub resident_key: ResidentKeyRequirement,
    /// Level 1 clients read only this member; L3 §5.4.4 requires it to be
    /// true exactly when `residentKey` is `required`.
    pub require_resident_key: bool,
    pub user_verification: UserVerification,
}

/// `PublicKeyCredentialCreationOptionsJSON`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PublicKeyCredentialCreationOptionsJSON {
    pub rp: PublicKeyCredentialRpEntity,
    pub user: PublicKeyCredentialUserEntityJSON,
    pub challenge: String,
    pub pub_key_cred_params: Vec<PublicKeyCredentialParameters>,
    pub timeout: u32,
    /// Always present, empty or not: the conformance API expects it.
    pub exclude_credentials: Vec<PublicKeyCredentialDescriptorJSON>,
    pub authenticator_selection: AuthenticatorSelectionCriteria,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hints: Vec<Hint>,
    pub attestation: AttestationConveyance,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub attestation_formats: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extensions: Option<Map<String, Value>>,
}

/// `PublicKeyCredentialRequestOptionsJSON`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PublicKeyCredentialRequestOptionsJSON {
    pub challenge: String,
    pub timeout: u32,
    pub rp_id: String,
    /// Empty asks for a discoverable credential; kept in the JSON either way
    /// because the conformance API expects the member.
    pub allow_credentials: Vec<PublicKeyCredentialDescriptorJSON>,
    pub user_verification: UserVerification,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hints: Vec<Hint>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extensions: Option<Map<String, Value>>,
}

/// The account a credential is created for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserEntity {
    /// The user handle: opaque, 1 to 64 bytes, without personal data (§14.6.1).
    pub id: Vec<u8>,
    pub name: String,
    pub display_name: String,
}

/// A credential to exclude (creation) or allow (request), as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialDescriptor {
    pub id: Vec<u8>,
    /// As returned by `getTransports()` at registration; may be empty.
    pub transports: Vec<String>,
}

/// Builds creation options; [`CreationOptionsBuilder::build`] validates.
#[derive(Clone, Debug)]
pub struct CreationOptionsBuilder<'a> {
    rp: &'a RelyingParty,
    rp_name: &'a str,
    user: &'a UserEntity,
    challenge: &'a [u8],
    timeout_ms: Option<u32>,
    exclude_credentials: Vec<CredentialDescriptor>,
    attachment: Option<AuthenticatorAttachment>,
    resident_key: ResidentKeyRequirement,
    user_verification: UserVerification,
    hints: Vec<Hint>,
    attestation: AttestationConveyance,
    attestation_formats: Vec<String>,
    extensions: Option<Value>,
}

impl<'a> CreationOptionsBuilder<'a> {
    /// `rp_name` is the human-palatable name shown by the authenticator;
    /// `challenge` the bytes the caller stored for this ceremony.
    pub fn new(
        rp: &'a RelyingParty,
        rp_name: &'a str,
        user: &'a UserEntity,
        challenge: &'a [u8],
    ) -> Self {
        CreationOptionsBuilder {
            rp,
            rp_name,
            user,
            challenge,
            timeout_ms: None,
            exclude_credentials: Vec::new(),
            attachment: None,
            resident_key: ResidentKeyRequirement::default(),
            user_verification: UserVerification::default(),
            hints: Vec::new(),
            attestation: AttestationConveyance::default(),
            attestation_formats: Vec::new(),
            extensions: None,
        }
    }

    pub fn timeout_ms(mut self, ms: u32) -> Self {
        self.timeout_ms = Some(ms);
        self
    }

    /// The user's existing credentials, so an authenticator already holding
    /// one is not registered twice.
    pub fn exclude_credentials(
        mut self,
        credentials: impl IntoIterator<Item = CredentialDescriptor>,
    ) -> Self {
        self.exclude_credentials = credentials.into_iter().collect();
        self
    }

    pub fn authenticator_attachment(mut self, attachment: AuthenticatorAttachment) -> Self {
        self.attachment = Some(attachment);
        self
    }

    pub fn resident_key(mut self, requirement: ResidentKeyRequirement) -> Self {
        self.resident_key = requirement;
        self
    }

    pub fn user_verification(mut self, uv: UserVerification) -> Self {
        self.user_verification = uv;
        self
    }

    pub fn hints(mut self, hints: impl IntoIterator<Item = Hint>) -> Self {
        self.hints = hints.into_iter().collect();
        self
    }

    pub fn attestation(mut self, conveyance: AttestationConveyance) -> Self {
        self.attestation = conveyance;
        self
    }

    pub fn attestation_formats<S: Into<String>>(
        mut self,
        formats: impl IntoIterator<Item = S>,
    ) -> Self {
        self.attestation_formats = formats.into_iter().map(Into::into).collect();
        self
    }

    /// Client extension inputs (credProps, credProtect, prf, largeBlob, ...),
    /// passed through as given: a JSON object, bounded in size and depth.
    pub fn extensions(mut self, extensions: Value) -> Self {
        self.extensions = Some(extensions);
        self
    }

    pub fn build(self) -> Result<PublicKeyCredentialCreationOptionsJSON, Error> {
        let rp = rp_entity(self.rp, self.rp_name)?;
        let user = user_entity(self.user)?;
        let challenge = challenge(self.challenge)?;
        let pub_key_cred_params = credential_parameters(self.rp)?;
        let timeout = timeout(self.timeout_ms, self.user_verification)?;
        let exclude_credentials = descriptors(&self.exclude_credentials, "excludeCredentials")?;
        let attestation_formats = attestation_formats(&self.attestation_formats)?;
        let extensions = extensions(self.extensions)?;
        Ok(PublicKeyCredentialCreationOptionsJSON {
            rp,
            user,
            challenge,
            pub_key_cred_params,
            timeout,
            exclude_credentials,
            authenticator_selection: AuthenticatorSelectionCriteria {
                authenticator_attachment: self.attachment,
                resident_key: self.resident_key,
                require_resident_key: self.resident_key == ResidentKeyRequirement::Required,
                user_verification: self.user_verification,
            },
            hints: dedup(self.hints),
            attestation: self.attestation,
            attestation_formats,
            extensions,
        })
    }
}

/// Builds request options; [`RequestOptionsBuilder::build`] validates.
#[derive(Clone, Debug)]
pub struct RequestOptionsBuilder<'a> {
    rp: &'a RelyingParty,
    challenge: &'a [u8],
    timeout_ms: Option<u32>,
    allow_credentials: Vec<CredentialDescriptor>,
    user_verification: UserVerification,
    hints: Vec<Hint>,
    extensions: Option<Value>,
}

impl<'a> RequestOptionsBuilder<'a> {
    pub fn new(rp: &'a RelyingParty, challenge: &'a [u8]) -> Self {
        RequestOptionsBuilder {
            rp,
            challenge,
            timeout_ms: None,
            allow_credentials: Vec::new(),
            user_verification: UserVerification::default(),
            hints: Vec::new(),
            extensions: None,
        }
    }

    pub fn timeout_ms(mut self, ms: u32) -> Self {
        self.timeout_ms = Some(ms);
        self
    }

    /// The credentials the user may answer with; none asks the authenticator
    /// for a discoverable credential (the verifier then requires userHandle).
    pub fn allow_credentials(
        mut self,
        credentials: impl IntoIterator<Item = CredentialDescriptor>,
    ) -> Self {
        self.allow_credentials = credentials.into_iter().collect();
        self
    }

    pub fn user_verification(mut self, uv: UserVerification) -> Self {
        self.user_verification = uv;
        self
    }

    pub fn hints(mut self, hints: impl IntoIterator<Item = Hint>) -> Self {
        self.hints = hints.into_iter().collect();
        self
    }

    /// Client extension inputs (prf, largeBlob, appid, ...): see
    /// [`CreationOptionsBuilder::extensions`].
    pub fn extensions(mut self, extensions: Value) -> Self {
        self.extensions = Some(extensions);
        self
    }

    pub fn build(self) -> Result<PublicKeyCredentialRequestOptionsJSON, Error> {
        let rp_id = rp_id(self.rp)?;
        let challenge = challenge(self.challenge)?;
        let timeout = timeout(self.timeout_ms, self.user_verification)?;
        let allow_credentials = descriptors(&self.allow_credentials, "allowCredentials")?;
        let extensions = extensions(self.extensions)?;
        Ok(PublicKeyCredentialRequestOptionsJSON {
            challenge,
            timeout,
            rp_id,
            allow_credentials,
            user_verification: self.user_verification,
            hints: dedup(self.hints),
            extensions,
        })
    }
}

fn text(field: &str, value: &str, max: usize) -> Result<String, Error> {
    if value.is_empty() {
        return Err(Error::Empty {
            field: field.into(),
        });
    }
    if value.len() > max {
        return Err(Error::TooLarge {
            field: field.into(),
            limit: max,
        });
    }
    Ok(value.to_string())
}

fn bounded_text(field: &str, value: &str, max: usize) -> Result<String, Error> {
    if value.len() > max {
        return Err(Error::TooLarge {
            field: field.into(),
            limit: max,
        });
    }
    Ok(value.to_string())
}

fn rp_id(rp: &RelyingParty) -> Result<String, Error> {
    // 253 bytes: the longest DNS name.
    text("rp.id", &rp.id, 253)
}

fn rp_entity(rp: &RelyingParty, name: &str) -> Result<PublicKeyCredentialRpEntity, Error> {
    Ok(PublicKeyCredentialRpEntity {
        id: rp_id(rp)?,
        name: text("rp.name", name, NAME_MAX)?,
    })
}

fn user_entity(user: &UserEntity) -> Result<PublicKeyCredentialUserEntityJSON, Error> {
    if user.id.is_empty() {
        return Err(Error::Empty {
            field: "user.id".into(),
        });
    }
    if user.id.len() > USER_ID_MAX {
        return Err(Error::TooLarge {
            field: "user.id".into(),
            limit: USER_ID_MAX,
        });
    }
    Ok(PublicKeyCredentialUserEntityJSON {
        id: b64url(&user.id),
        name: text("user.name", &user.name, NAME_MAX)?,
        // WebAuthn L3 §5.4.3 lets displayName be empty (the user may not
        // have one); only its length is bounded.
        display_name: bounded_text("user.displayName", &user.display_name, NAME_MAX)?,
    })
}

fn challenge(bytes: &[u8]) -> Result<String, Error> {
    if bytes.len() < CHALLENGE_MIN {
        return Err(Error::malformed(
            "challenge",
            format!(
                "{} bytes; at least {CHALLENGE_MIN} random bytes are required",
                bytes.len()
            ),
        ));
    }
    if bytes.len() > CHALLENGE_MAX {
        return Err(Error::TooLarge {
            field: "challenge".into(),
            limit: CHALLENGE_MAX,
        });
    }
    Ok(b64url(bytes))
}

/// In the relying party's preference order; a repeated algorithm is listed once.
fn credential_parameters(rp: &RelyingParty) -> Result<Vec<PublicKeyCredentialParameters>, Error> {
    let mut params: Vec<PublicKeyCredentialParameters> = Vec::with_capacity(rp.algorithms.len());
    for alg in &rp.algorithms {
        if !params.iter().any(|p| p.alg == alg.id()) {
            params.push(PublicKeyCredentialParameters {
                type_: "public-key",
                alg: alg.id(),
            });
        }
    }
    if params.is_empty() {
        // An empty list would make clients fall back to ES256 and RS256
        // (§5.1.3 step 10), which the verifier would then refuse.
        return Err(Error::Empty {
            field: "pubKeyCredParams".into(),
        });
    }
    Ok(params)
}

fn timeout(requested: Option<u32>, uv: UserVerification) -> Result<u32, Error> {
    let ms = requested.unwrap_or(match uv {
        // §15.1: 30 s to 3 min without user verification, 5 to 10 min with it.
        UserVerification::Discouraged => 120_000,
        UserVerification::Required | UserVerification::Preferred => 300_000,
    });
    if !(TIMEOUT_MIN_MS..=TIMEOUT_MAX_MS).contains(&ms) {
        return Err(Error::malformed(
            "timeout",
            format!("{ms} ms is outside {TIMEOUT_MIN_MS} to {TIMEOUT_MAX_MS} ms"),
        ));
    }
    Ok(ms)
}

fn descriptors(
    list: &[CredentialDescriptor],
    name: &str,
) -> Result<Vec<PublicKeyCredentialDescriptorJSON>, Error> {
    list.iter()
        .enumerate()
        .map(|(i, d)| {
            let field = format!("{name}[{i}]");
            if d.id.is_empty() {
                return Err(Error::Empty {
                    field: format!("{field}.id"),
                });
            }
            if d.id.len() > limits::CREDENTIAL_ID {
                return Err(Error::TooLarge {
                    field: format!("{field}.id"),
                    limit: limits::CREDENTIAL_ID,
                });
            }
            if d.transports.len() > TRANSPORTS_MAX {
                return Err(Error::TooLarge {
                    field: format!("{field}.transports"),
                    limit: TRANSPORTS_MAX,
                });
            }
            let transports = d
                .transports
                .iter()
                .enumerate()
                .map(|(j, t)| text(&format!("{field}.transports[{j}]"), t, TRANSPORT_MAX))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(PublicKeyCredentialDescriptorJSON {
                type_: "public-key",
                id: b64url(&d.id),
                // Omitted rather than empty: an empty list is not "any transport"
                // to every client.
                transports: (!transports.is_empty()).then_some(dedup(transports)),
            })
        })
        .collect()
}

fn attestation_formats(formats: &[String]) -> Result<Vec<String>, Error> {
    for (i, f) in formats.iter().enumerate() {
        if !ATTESTATION_FORMATS.contains(&f.as_str()) {
            return Err(Error::malformed(
                format!("attestationFormats[{i}]"),
                format!(
                    "{:?} is not a registered attestation format",
                    f.chars().take(64).collect::<String>()
                ),
            ));
        }
    }
    Ok(dedup(formats.to_vec()))
}

fn extensions(value: Option<Value>) -> Result<Option<Map<String, Value>>, Error> {
    let Some(value) = value else {
        return Ok(None);
    };
    let Value::Object(map) = value else {
        return Err(Error::WrongType {
            field: "extensions".into(),
            expected: "a JSON object",
        });
    };
    // Depth first: serializing an arbitrarily deep value would recurse as deep.
    for (name, v) in &map {
        if depth_exceeds(v, limits::NESTING - 1) {
            return Err(Error::malformed(
                format!("extensions.{name}"),
                format!("nested deeper than {} levels", limits::NESTING),
            ));
        }
    }
    let size = serde_json::to_vec(&map)
        .map_err(|e| Error::malformed("extensions", e))?
        .len();
    if size > EXTENSIONS_JSON_MAX {
        return Err(Error::TooLarge {
            field: "extensions".into(),
            limit: EXTENSIONS_JSON_MAX,
        });
    }
    Ok(Some(map))
}

/// True when `v` nests more than `budget` containers deep. Stops descending
/// once over budget, so the recursion itself is bounded.
fn depth_exceeds(v: &Value, budget: usize) -> bool {
    match v {
        Value::Array(items) => budget == 0 || items.iter().any(|i| depth_exceeds(i, budget - 1)),
        Value::Object(members) => {
            budget == 0 || members.values().any(|i| depth_exceeds(i, budget - 1))
        }
        _ => false,
    }
}

fn dedup<T: PartialEq>(items: Vec<T>) -> Vec<T> {
    let mut out: Vec<T> = Vec::with_capacity(items.len());
    for item in items {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::webauthn::CoseAlgorithm;

    fn rp() -> RelyingParty {
        RelyingParty::new("bank.example", vec!["https://bank.example".into()])
    }

    fn user() -> UserEntity {
        UserEntity {
            id: vec![7; 16],
            name: "alice@bank.example".into(),
            display_name: "Alice".into(),
        }
    }

    const CHALLENGE: [u8; 32] = [0x5a; 32];

    fn to_json<T: Serialize>(v: &T) -> Value {
        serde_json::to_value(v).unwrap()
    }

    #[test]
    fn creation_options_have_the_level_3_json_shape() {
        let rp = rp();
        let user = user();
        let options = CreationOptionsBuilder::new(&rp, "Example Bank", &user, &CHALLENGE)
            .exclude_credentials([CredentialDescriptor {
                id: vec![1, 2, 3],
                transports: vec!["usb".into(), "nfc".into(), "usb".into()],
            }])
            .authenticator_attachment(AuthenticatorAttachment::CrossPlatform)
            .resident_key(ResidentKeyRequirement::Required)
            .user_verification(UserVerification::Required)
            .hints([Hint::SecurityKey, Hint::Hybrid])
            .attestation(AttestationConveyance::Direct)
            .attestation_formats(["packed", "tpm"])
            .extensions(json!({"credProps": true, "credProtect": {"credentialProtectionPolicy": "userVerificationRequired"}}))
            .build()
            .unwrap();
        assert_eq!(
            to_json(&options),
            json!({
                "rp": {"id": "bank.example", "name": "Example Bank"},
                "user": {"id": "BwcHBwcHBwcHBwcHBwcHBw", "name": "alice@bank.example", "displayName": "Alice"},
                "challenge": b64url(&CHALLENGE),
                "pubKeyCredParams": [
                    {"type": "public-key", "alg": -7},
                    {"type": "public-key", "alg": -8},
                    {"type": "public-key", "alg": -35},
                    {"type": "public-key", "alg": -36},
                    {"type": "public-key", "alg": -37},
                    {"type": "public-key", "alg": -257},
                ],
                "timeout": 300000,
                "excludeCredentials": [{"type": "public-key", "id": "AQID", "transports": ["usb", "nfc"]}],
                "authenticatorSelection": {
                    "authenticatorAttachment": "cross-platform",
                    "residentKey": "required",
                    "requireResidentKey": true,
                    "userVerification": "required",
                },
                "hints": ["security-key", "hybrid"],
                "attestation": "direct",
                "attestationFormats": ["packed", "tpm"],
                "extensions": {"credProps": true, "credProtect": {"credentialProtectionPolicy": "userVerificationRequired"}},
            })
        );
    }

    #[test]
    fn defaults_omit_optional_members_and_echo_none() {
        let rp = rp();
        let user = user();
        let v = to_json(
            &CreationOptionsBuilder::new(&rp, "Example Bank", &user, &CHALLENGE)
                .build()
                .unwrap(),
        );
        let obj = v.as_object().unwrap();
        for absent in ["hints", "attestationFormats", "extensions"] {
            assert!(!obj.contains_key(absent), "{absent} in {v}");
        }
        assert_eq!(v["attestation"], "none");
        assert_eq!(v["excludeCredentials"], json!([]));
        assert_eq!(
            v["authenticatorSelection"],
            json!({"residentKey": "discouraged", "requireResidentKey": false, "userVerification": "preferred"})
        );
        // requireResidentKey follows residentKey only when it is required.
        let preferred = CreationOptionsBuilder::new(&rp, "Example Bank", &user, &CHALLENGE)
            .resident_key(ResidentKeyRequirement::Preferred)
            .build()
            .unwrap();
        assert!(!preferred.authenticator_selection.require_resident_key);
    }

    #[test]
    fn pub_key_cred_params_follow_the_relying_party_order() {
        let mut rp = rp();
        rp.algorithms = vec![CoseAlgorithm::Rs1, CoseAlgorithm::Es256, CoseAlgorithm::Rs1];
        let user = user();
        let options = CreationOptionsBuilder::new(&rp, "Example Bank", &user, &CHALLENGE)
            .build()
            .unwrap();
        let algs: Vec<i64> = options.pub_key_cred_params.iter().map(|p| p.alg).collect();
        assert_eq!(algs, [-65535, -7]);
        rp.algorithms.clear();
        let err = CreationOptionsBuilder::new(&rp, "Example Bank", &user, &CHALLENGE)
            .build()
            .unwrap_err();
        assert_eq!((err.field(), err.kind()), ("pubKeyCredParams", "empty"));
    }

    #[test]
    fn user_entity_is_bounded() {
        let rp = rp();
        let cases: [(UserEntity, &str, &str); 6] = [
            (
                UserEntity {
                    id: vec![],
                    ..user()
                },
                "user.id",
                "empty",
            ),
            (
                UserEntity {
                    id: vec![1; 65],
                    ..user()
                },
                "user.id",
                "too_large",
            ),
            (
                UserEntity {
                    name: String::new(),
                    ..user()
                },
                "user.name",
                "empty",
            ),
            (
                UserEntity {
                    name: "n".repeat(257),
                    ..user()
                },
                "user.name",
                "too_large",
            ),
            // 86 three-byte characters: 258 bytes although only 86 characters.
            (
                UserEntity {
                    display_name: "€".repeat(86),
                    ..user()
                },
                "user.displayName",
                "too_large",
            ),
            (
                UserEntity {
                    id: vec![1; 65],
                    name: String::new(),
                    ..user()
                },
                "user.id",
                "too_large",
            ),
        ];
        for (user, field, kind) in cases {
            let err = CreationOptionsBuilder::new(&rp, "Example Bank", &user, &CHALLENGE)
                .build()
                .unwrap_err();
            assert_eq!((err.field(), err.kind()), (field, kind), "{err}");
        }
        let edge = UserEntity {
            id: vec![1; 64],
            name: "n".repeat(256),
            display_name: "d".repeat(256),
        };
        CreationOptionsBuilder::new(&rp, "Example Bank", &edge, &CHALLENGE)
            .build()
            .unwrap();
        let err = CreationOptionsBuilder::new(&rp, "", &edge, &CHALLENGE)
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "rp.name");
    }

    #[test]
    fn challenge_is_16_to_64_bytes() {
        let rp = rp();
        let user = user();
        for (len, ok) in [
            (0, false),
            (15, false),
            (16, true),
            (32, true),
            (64, true),
            (65, false),
        ] {
            let challenge = vec![9u8; len];
            let created =
                CreationOptionsBuilder::new(&rp, "Example Bank", &user, &challenge).build();
            let requested = RequestOptionsBuilder::new(&rp, &challenge).build();
            for result in [created.map(|o| o.challenge), requested.map(|o| o.challenge)] {
                match result {
                    Ok(text) => {
                        assert!(ok, "{len} bytes accepted");
                        assert_eq!(text, b64url(&challenge));
                    }
                    Err(err) => {
                        assert!(!ok, "{len} bytes refused: {err}");
                        assert_eq!(err.field(), "challenge");
                    }
                }
            }
        }
    }

    #[test]
    fn timeouts_are_bounded_and_default_by_user_verification() {
        let rp = rp();
        for (ms, ok) in [
            (29_999, false),
            (30_000, true),
            (600_000, true),
            (600_001, false),
            (0, false),
        ] {
            let result = RequestOptionsBuilder::new(&rp, &CHALLENGE)
                .timeout_ms(ms)
                .build();
            assert_eq!(result.is_ok(), ok, "{ms}");
            if let Err(err) = result {
                assert_eq!(err.field(), "timeout");
            }
        }
        let discouraged = RequestOptionsBuilder::new(&rp, &CHALLENGE)
            .user_verification(UserVerification::Discouraged)
            .build()
            .unwrap();
        assert_eq!(discouraged.timeout, 120_000);
        assert_eq!(
            RequestOptionsBuilder::new(&rp, &CHALLENGE)
                .build()
                .unwrap()
                .timeout,
            300_000
        );
    }

    #[test]
    fn request_options_have_the_level_3_json_shape() {
        let rp = rp();
        let options = RequestOptionsBuilder::new(&rp, &CHALLENGE)
            .timeout_ms(60_000)
            .allow_credentials([
                CredentialDescriptor {
                    id: vec![0xff; 3],
                    transports: vec![],
                },
                CredentialDescriptor {
                    id: vec![1],
                    transports: vec!["internal".into(), "hybrid".into()],
                },
            ])
            .user_verification(UserVerification::Required)
            .hints([Hint::ClientDevice, Hint::ClientDevice])
            .extensions(json!({"prf": {"eval": {"first": "AAAA"}}, "largeBlob": {"read": true}}))
            .build()
            .unwrap();
        assert_eq!(
            to_json(&options),
            json!({
                "challenge": b64url(&CHALLENGE),
                "timeout": 60000,
                "rpId": "bank.example",
                "allowCredentials": [
                    {"type": "public-key", "id": "____"},
                    {"type": "public-key", "id": "AQ", "transports": ["internal", "hybrid"]},
                ],
                "userVerification": "required",
                "hints": ["client-device"],
                "extensions": {"prf": {"eval": {"first": "AAAA"}}, "largeBlob": {"read": true}},
            })
        );
        let discoverable = to_json(&RequestOptionsBuilder::new(&rp, &CHALLENGE).build().unwrap());
        assert_eq!(discoverable["allowCredentials"], json!([]));
        assert_eq!(discoverable["userVerification"], "preferred");
        assert!(discoverable.get("hints").is_none() && discoverable.get("extensions").is_none());
    }

    #[test]
    fn descriptors_are_checked_by_index() {
        let rp = rp();
        let good = CredentialDescriptor {
            id: vec![1],
            transports: vec![],
        };
        let cases = [
            (
                CredentialDescriptor {
                    id: vec![],
                    ..good.clone()
                },
                "allowCredentials[1].id",
                "empty",
            ),
            (
                CredentialDescriptor {
                    id: vec![0; 1024],
                    ..good.clone()
                },
                "allowCredentials[1].id",
                "too_large",
            ),
            (
                CredentialDescriptor {
                    transports: vec!["usb".into(), String::new()],
                    ..good.clone()
                },
                "allowCredentials[1].transports[1]",
                "empty",
            ),
            (
                CredentialDescriptor {
                    transports: vec!["x".repeat(33)],
                    ..good.clone()
                },
                "allowCredentials[1].transports[0]",
                "too_large",
            ),
            (
                CredentialDescriptor {
                    transports: vec!["usb".into(); 17],
                    ..good.clone()
                },
                "allowCredentials[1].transports",
                "too_large",
            ),
        ];
        for (bad, field, kind) in cases {
            let err = RequestOptionsBuilder::new(&rp, &CHALLENGE)
                .allow_credentials([good.clone(), bad])
                .build()
                .unwrap_err();
            assert_eq!((err.field(), err.kind()), (field, kind), "{err}");
        }
        // The same check guards excludeCredentials, under its own name.
        let user = user();
        let err = CreationOptionsBuilder::new(&rp, "Example Bank", &user, &CHALLENGE)
            .exclude_credentials([CredentialDescriptor {
                id: vec![],
                transports: vec![],
            }])
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "excludeCredentials[0].id");
        // A transport this engine does not know is passed on (clients ignore it).
        let future = RequestOptionsBuilder::new(&rp, &CHALLENGE)
            .allow_credentials([CredentialDescriptor {
                id: vec![1],
                transports: vec!["quantum-link".into()],
            }])
            .build()
            .unwrap();
        assert_eq!(
            future.allow_credentials[0].transports,
            Some(vec!["quantum-link".to_string()])
        );
    }

    #[test]
    fn attestation_formats_must_be_registered() {
        let rp = rp();
        let user = user();
        let err = CreationOptionsBuilder::new(&rp, "Example Bank", &user, &CHALLENGE)
            .attestation(AttestationConveyance::Enterprise)
            .attestation_formats(["packed", "x-vendor"])
            .build()
            .unwrap_err();
        assert_eq!(
            (err.field(), err.kind()),
            ("attestationFormats[1]", "malformed")
        );
        let ok = CreationOptionsBuilder::new(&rp, "Example Bank", &user, &CHALLENGE)
            .attestation(AttestationConveyance::Enterprise)
            .attestation_formats(ATTESTATION_FORMATS)
            .build()
            .unwrap();
        assert_eq!(to_json(&ok)["attestation"], "enterprise");
        assert_eq!(ok.attestation_formats.len(), ATTESTATION_FORMATS.len());
    }

    #[test]
    fn extensions_must_be_a_bounded_object() {
        let rp = rp();
        let err = RequestOptionsBuilder::new(&rp, &CHALLENGE)
            .extensions(json!([1]))
            .build()
            .unwrap_err();
        assert_eq!((err.field(), err.kind()), ("extensions", "wrong_type"));

        let big = json!({"largeBlob": {"write": "A".repeat(EXTENSIONS_JSON_MAX)}});
        let err = RequestOptionsBuilder::new(&rp, &CHALLENGE)
            .extensions(big)
            .build()
            .unwrap_err();
        assert_eq!((err.field(), err.kind()), ("extensions", "too_large"));

        let mut deep = json!(1);
        for _ in 0..limits::NESTING {
            deep = json!([deep]);
        }
        let err = RequestOptionsBuilder::new(&rp, &CHALLENGE)
            .extensions(json!({ "x-deep": deep }))
            .build()
            .unwrap_err();
        assert_eq!(
            (err.field(), err.kind()),
            ("extensions.x-deep", "malformed")
        );

        // One level less fits: the object itself is the first level.
        let mut fits = json!(1);
        for _ in 0..limits::NESTING - 1 {
            fits = json!([fits]);
        }
        RequestOptionsBuilder::new(&rp, &CHALLENGE)
            .extensions(json!({ "x-deep": fits }))
            .build()
            .unwrap();
        // Any extension is passed through untouched.
        let user = user();
        let ext = json!({"prf": {}, "largeBlob": {"support": "preferred"}, "x-unknown": [1, "two", null]});
        let options = CreationOptionsBuilder::new(&rp, "Example Bank", &user, &CHALLENGE)
            .extensions(ext.clone())
            .build()
            .unwrap();
        assert_eq!(Value::Object(options.extensions.unwrap()), ext);
    }

    #[test]
    fn new_challenges_differ() {
        let a = new_challenge().unwrap();
        let b = new_challenge().unwrap();
        assert_ne!(a, b);
        assert!(a.len() >= CHALLENGE_MIN);
        let rp = rp();
        RequestOptionsBuilder::new(&rp, &a).build().unwrap();
    }

    #[test]
    fn display_name_may_be_empty_as_level_3_allows() {
        let rp = RelyingParty::new("bank.example", vec!["https://bank.example".into()]);
        let user = UserEntity {
            display_name: String::new(),
            ..user()
        };
        let options = CreationOptionsBuilder::new(&rp, "Bank", &user, &[9u8; 32])
            .build()
            .unwrap();
        let json = serde_json::to_value(&options).unwrap();
        assert_eq!(json["user"]["displayName"], "");
    }
}
