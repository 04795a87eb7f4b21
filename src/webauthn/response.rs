//! The JSON that browsers' `PublicKeyCredential.toJSON()` produce
//! (`RegistrationResponseJSON`, `AuthenticationResponseJSON`), read member by
//! member so that each missing, mistyped, empty or non-base64url member is
//! reported by name.

use serde_json::{Map, Value};

use super::{Error, b64url_decode, limits};

/// A registration response, decoded.
#[derive(Clone, Debug)]
pub struct RegistrationResponse {
    pub id: Vec<u8>,
    pub client_data_json: Vec<u8>,
    pub attestation_object: Vec<u8>,
    pub transports: Vec<String>,
    pub authenticator_attachment: Option<String>,
    pub client_extension_results: Value,
}

/// An authentication (assertion) response, decoded.
#[derive(Clone, Debug)]
pub struct AuthenticationResponse {
    pub id: Vec<u8>,
    pub client_data_json: Vec<u8>,
    pub authenticator_data: Vec<u8>,
    pub signature: Vec<u8>,
    pub user_handle: Option<Vec<u8>>,
    pub authenticator_attachment: Option<String>,
    pub client_extension_results: Value,
}

fn member<'a>(obj: &'a Map<String, Value>, name: &str, path: &str) -> Result<&'a Value, Error> {
    match obj.get(name) {
        None | Some(Value::Null) => Err(Error::Missing {
            field: format!("{path}{name}"),
        }),
        Some(v) => Ok(v),
    }
}

fn object<'a>(v: &'a Value, field: &str) -> Result<&'a Map<String, Value>, Error> {
    v.as_object().ok_or_else(|| Error::WrongType {
        field: field.to_string(),
        expected: "an object",
    })
}

/// A required base64url member.
fn b64_member(
    obj: &Map<String, Value>,
    name: &str,
    path: &str,
    limit: usize,
) -> Result<Vec<u8>, Error> {
    let field = format!("{path}{name}");
    match member(obj, name, path)? {
        Value::String(s) if s.is_empty() => Err(Error::Empty { field }),
        Value::String(s) => b64url_decode(&field, s, limit),
        _ => Err(Error::WrongType {
            field,
            expected: "a base64url string",
        }),
    }
}

/// `id`, `rawId` (must agree with `id` when present) and `type`.
fn envelope(obj: &Map<String, Value>) -> Result<Vec<u8>, Error> {
    let id = b64_member(obj, "id", "", limits::CREDENTIAL_ID)?;
    if obj.get("rawId").is_some_and(|v| !v.is_null()) {
        let raw = b64_member(obj, "rawId", "", limits::CREDENTIAL_ID)?;
        if raw != id {
            return Err(Error::mismatch("rawId", "differs from id"));
        }
    }
    match member(obj, "type", "")? {
        Value::String(t) if t == "public-key" => {}
        Value::String(t) if t.is_empty() => {
            return Err(Error::Empty {
                field: "type".into(),
            });
        }
        Value::String(t) => {
            return Err(Error::mismatch(
                "type",
                format!("{t:?} is not \"public-key\""),
            ));
        }
        _ => {
            return Err(Error::WrongType {
                field: "type".into(),
                expected: "a string",
            });
        }
    }
    Ok(id)
}

fn extension_results(obj: &Map<String, Value>) -> Result<Value, Error> {
    // toJSON() calls it clientExtensionResults; the conformance API
    // getClientExtensionResults.
    for name in ["clientExtensionResults", "getClientExtensionResults"] {
        match obj.get(name) {
            None | Some(Value::Null) => continue,
            Some(v @ Value::Object(_)) => return Ok(v.clone()),
            Some(_) => {
                return Err(Error::WrongType {
                    field: name.into(),
                    expected: "an object",
                });
            }
        }
    }
    Ok(Value::Object(Map::new()))
}

fn attachment(obj: &Map<String, Value>) -> Result<Option<String>, Error> {
    match obj.get("authenticatorAttachment") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Error::WrongType {
            field: "authenticatorAttachment".into(),
            expected: "a string",
        }),
    }
}

fn parse_document(json: &[u8]) -> Result<Map<String, Value>, Error> {
    if json.len() > limits::RESPONSE_JSON {
        return Err(Error::TooLarge {
            field: "credential".into(),
            limit: limits::RESPONSE_JSON,
        });
    }
    let v: Value = serde_json::from_slice(json)
        .map_err(|e| Error::malformed("credential", format!("not JSON: {e}")))?;
    match v {
        Value::Object(m) => Ok(m),
        _ => Err(Error::WrongType {
            field: "credential".into(),
            expected: "an object",
        }),
    }
}

/// The members both responses share: the credential object, its id (after
/// the envelope checks), the `response` object and `clientDataJSON`.
#[allow(clippy::type_complexity)]
fn common(
    v: &Value,
) -> Result<(&Map<String, Value>, Vec<u8>, &Map<String, Value>, Vec<u8>), Error> {
    let obj = object(v, "credential")?;
    let id = envelope(obj)?;
    let response = object(member(obj, "response", "")?, "response")?;
    let client_data_json = b64_member(
        response,
        "clientDataJSON",
        "response.",
        limits::CLIENT_DATA_JSON,
    )?;
    Ok((obj, id, response, client_data_json))
}

impl RegistrationResponse {
    pub fn from_json(json: &[u8]) -> Result<RegistrationResponse, Error> {
        Self::from_value(&Value::Object(parse_document(json)?))
    }

    pub fn from_value(v: &Value) -> Result<RegistrationResponse, Error> {
        let (obj, id, response, client_data_json) = common(v)?;
        let attestation_object = b64_member(
            response,
            "attestationObject",
            "response.",
            limits::ATTESTATION_OBJECT,
        )?;
        let transports = match response.get("transports") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .take(16)
                .filter_map(|t| t.as_str().map(str::to_string))
                .collect(),
            Some(_) => {
                return Err(Error::WrongType {
                    field: "response.transports".into(),
                    expected: "an array of strings",
                });
            }
        };
        Ok(RegistrationResponse {
            id,
            client_data_json,
            attestation_object,
            transports,
            authenticator_attachment: attachment(obj)?,
            client_extension_results: extension_results(obj)?,
        })
    }
}

impl AuthenticationResponse {
    pub fn from_json(json: &[u8]) -> Result<AuthenticationResponse, Error> {
        Self::from_value(&Value::Object(parse_document(json)?))
    }

    pub fn from_value(v: &Value) -> Result<AuthenticationResponse, Error> {
        let (obj, id, response, client_data_json) = common(v)?;
        let authenticator_data = b64_member(
            response,
            "authenticatorData",
            "response.",
            limits::AUTHENTICATOR_DATA,
        )?;
        let signature = b64_member(response, "signature", "response.", limits::SIGNATURE)?;
        let user_handle = match response.get("userHandle") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => Some(Vec::new()),
            Some(Value::String(s)) => Some(b64url_decode(
                "response.userHandle",
                s,
                limits::USER_HANDLE,
            )?),
            Some(_) => {
                return Err(Error::WrongType {
                    field: "response.userHandle".into(),
                    expected: "a base64url string",
                });
            }
        };
        Ok(AuthenticationResponse {
            id,
            client_data_json,
            authenticator_data,
            signature,
            user_handle,
            authenticator_attachment: attachment(obj)?,
            client_extension_results: extension_results(obj)?,
        })
    }
}
