//! `clientDataJSON` (WebAuthn §5.8.1): parsed as JSON, never matched as
//! bytes (browsers escape slashes, reorder members and add their own), then
//! checked against the ceremony.

use serde_json::Value;

use super::{Error, RelyingParty, b64url_decode, constant_time_eq, limits};

const FIELD: &str = "response.clientDataJSON";

/// What the client says the ceremony was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CeremonyType {
    /// `webauthn.create`
    Create,
    /// `webauthn.get`
    Get,
    /// `payment.get` (Secure Payment Confirmation)
    PaymentGet,
}

impl CeremonyType {
    pub fn as_str(self) -> &'static str {
        match self {
            CeremonyType::Create => "webauthn.create",
            CeremonyType::Get => "webauthn.get",
            CeremonyType::PaymentGet => "payment.get",
        }
    }
}

/// A JSON object whose member names are unique, read in one pass.
struct UniqueObject(serde_json::Map<String, Value>);

impl<'de> serde::Deserialize<'de> for UniqueObject {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = UniqueObject;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<UniqueObject, A::Error> {
                let mut obj = serde_json::Map::new();
                while let Some(key) = map.next_key::<String>()? {
                    if obj.contains_key(&key) {
                        return Err(serde::de::Error::custom(format_args!(
                            "member {key:?} appears more than once"
                        )));
                    }
                    let value = map.next_value::<Value>()?;
                    obj.insert(key, value);
                }
                Ok(UniqueObject(obj))
            }
        }
        d.deserialize_map(Visitor)
    }
}

/// Parsed client data. `hash` is SHA-256 over the exact bytes received.
#[derive(Clone, Debug)]
pub struct ClientData {
    pub hash: [u8; 32],
    pub ceremony: String,
    pub challenge: Vec<u8>,
    pub origin: String,
    pub cross_origin: bool,
    pub top_origin: Option<String>,
    /// The `payment` member of a `payment.get` ceremony, returned to the
    /// caller so the transaction flow can check it.
    pub payment: Option<Value>,
}

fn string_member<'a>(
    obj: &'a serde_json::Map<String, Value>,
    name: &str,
) -> Result<&'a str, Error> {
    match obj.get(name) {
        None | Some(Value::Null) => Err(Error::Missing {
            field: format!("{FIELD}.{name}"),
        }),
        Some(Value::String(s)) if s.is_empty() => Err(Error::Empty {
            field: format!("{FIELD}.{name}"),
        }),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(Error::WrongType {
            field: format!("{FIELD}.{name}"),
            expected: "a string",
        }),
    }
}

impl ClientData {
    pub fn parse(raw: &[u8]) -> Result<ClientData, Error> {
        if raw.is_empty() {
            return Err(Error::Empty {
                field: FIELD.to_string(),
            });
        }
        if raw.len() > limits::CLIENT_DATA_JSON {
            return Err(Error::TooLarge {
                field: FIELD.to_string(),
                limit: limits::CLIENT_DATA_JSON,
            });
        }
        // serde_json alone keeps the last of repeated members; another
        // reader (an auditor's tool re-checking a receipt) may keep the
        // first. UniqueObject refuses repeats in the same single pass.
        let obj = match serde_json::from_slice::<UniqueObject>(raw) {
            Ok(UniqueObject(obj)) => obj,
            Err(e) if e.is_data() && e.to_string().contains("a JSON object") => {
                return Err(Error::WrongType {
                    field: FIELD.to_string(),
                    expected: "a JSON object",
                });
            }
            Err(e) => return Err(Error::malformed(FIELD, format!("not JSON: {e}"))),
        };
        let ceremony = string_member(&obj, "type")?.to_string();
        let challenge_text = string_member(&obj, "challenge")?;
        let challenge = b64url_decode(&format!("{FIELD}.challenge"), challenge_text, 1024)?;
        let origin = string_member(&obj, "origin")?.to_string();
        let cross_origin = match obj.get("crossOrigin") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(Error::WrongType {
                    field: format!("{FIELD}.crossOrigin"),
                    expected: "a boolean",
                });
            }
        };
        let top_origin = match obj.get("topOrigin") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                return Err(Error::WrongType {
                    field: format!("{FIELD}.topOrigin"),
                    expected: "a string",
                });
            }
        };
        // Token binding is obsolete, but a client that sends it must send it
        // well-formed (WebAuthn L2 §5.8.1; conformance checks this).
        if let Some(tb) = obj.get("tokenBinding") {
            let Value::Object(tb) = tb else {
                return Err(Error::WrongType {
                    field: format!("{FIELD}.tokenBinding"),
                    expected: "an object",
                });
            };
            match tb.get("status") {
                Some(Value::String(s))
                    if ["present", "supported", "not-supported"].contains(&s.as_str()) => {}
                Some(Value::String(s)) => {
                    return Err(Error::malformed(
                        format!("{FIELD}.tokenBinding.status"),
                        format!("{s:?} is not present, supported or not-supported"),
                    ));
                }
                Some(_) => {
                    return Err(Error::WrongType {
                        field: format!("{FIELD}.tokenBinding.status"),
                        expected: "a string",
                    });
                }
                None => {
                    return Err(Error::Missing {
                        field: format!("{FIELD}.tokenBinding.status"),
                    });
                }
            }
        }
        let payment = obj.get("payment").cloned();
        Ok(ClientData {
            hash: crate::keys::sha256(raw),
            ceremony,
            challenge,
            origin,
            cross_origin,
            top_origin,
            payment,
        })
    }

    /// Checks type, challenge and origin (§7.1 steps 7-9, §7.2 steps 11-13).
    pub fn check(
        &self,
        expected: &[CeremonyType],
        challenge: &[u8],
        rp: &RelyingParty,
    ) -> Result<(), Error> {
        if !expected.iter().any(|t| t.as_str() == self.ceremony) {
            let names: Vec<_> = expected.iter().map(|t| t.as_str()).collect();
            return Err(Error::mismatch(
                format!("{FIELD}.type"),
                format!("{:?} is not {}", self.ceremony, names.join(" or ")),
            ));
        }
        if !constant_time_eq(&self.challenge, challenge) {
            return Err(Error::mismatch(
                format!("{FIELD}.challenge"),
                "is not the challenge issued for this ceremony",
            ));
        }
        if !rp.origins.iter().any(|o| o == &self.origin) {
            return Err(Error::mismatch(
                format!("{FIELD}.origin"),
                format!("{:?} is not an allowed origin", self.origin),
            ));
        }
        if self.cross_origin && !rp.allow_cross_origin {
            return Err(Error::policy(
                format!("{FIELD}.crossOrigin"),
                "cross-origin ceremonies are not allowed",
            ));
        }
        if let Some(top) = &self.top_origin {
            if !self.cross_origin {
                return Err(Error::mismatch(
                    format!("{FIELD}.topOrigin"),
                    "present although crossOrigin is not true",
                ));
            }
            if !rp.top_origins.is_empty() && !rp.top_origins.iter().any(|o| o == top) {
                return Err(Error::mismatch(
                    format!("{FIELD}.topOrigin"),
                    format!("{top:?} is not an allowed top-level origin"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rp() -> RelyingParty {
        RelyingParty::new("example.org", vec!["https://example.org".into()])
    }

    #[test]
    fn tolerates_escaped_slashes_and_unknown_members() {
        let raw = br#"{"type":"webauthn.get","challenge":"AQID","origin":"https:\/\/example.org","other_keys_can_be_added_here":"x","hashAlgorithm":"SHA-256"}"#;
        let cd = ClientData::parse(raw).unwrap();
        cd.check(&[CeremonyType::Get], &[1, 2, 3], &rp()).unwrap();
        let err = cd
            .check(&[CeremonyType::Create], &[1, 2, 3], &rp())
            .unwrap_err();
        assert_eq!(err.field(), "response.clientDataJSON.type");
        let err = cd
            .check(&[CeremonyType::Get], &[1, 2, 4], &rp())
            .unwrap_err();
        assert_eq!(err.field(), "response.clientDataJSON.challenge");
    }

    #[test]
    fn each_member_is_checked_for_presence_and_type() {
        let cases: [(&[u8], &str); 9] = [
            (br#"{"challenge":"AQID","origin":"https://example.org"}"#, "type: missing"),
            (br#"{"type":1,"challenge":"AQID","origin":"https://example.org"}"#, "type: expected a string"),
            (br#"{"type":"","challenge":"AQID","origin":"https://example.org"}"#, "type: empty"),
            (br#"{"type":"webauthn.get","origin":"https://example.org"}"#, "challenge: missing"),
            (br#"{"type":"webauthn.get","challenge":"!!","origin":"https://example.org"}"#, "challenge: not base64url"),
            (br#"{"type":"webauthn.get","challenge":"AQID"}"#, "origin: missing"),
            (br#"{"type":"webauthn.get","challenge":"AQID","origin":"https://example.org","tokenBinding":"x"}"#, "tokenBinding: expected an object"),
            (br#"{"type":"webauthn.get","challenge":"AQID","origin":"https://example.org","tokenBinding":{}}"#, "tokenBinding.status: missing"),
            (br#"{"type":"webauthn.get","challenge":"AQID","origin":"https://example.org","tokenBinding":{"status":"rubbish"}}"#, "is not present, supported or not-supported"),
        ];
        for (raw, needle) in cases {
            let err = ClientData::parse(raw).unwrap_err().to_string();
            assert!(
                err.contains(needle),
                "{}: {err}",
                String::from_utf8_lossy(raw)
            );
        }
        assert!(ClientData::parse(b"[]").is_err());
        let dup = br#"{"type":"webauthn.create","type":"webauthn.get","challenge":"AQID","origin":"https://example.org"}"#;
        assert!(
            ClientData::parse(dup)
                .unwrap_err()
                .to_string()
                .contains("more than once")
        );
        assert!(ClientData::parse(b"").is_err());
        assert!(ClientData::parse(&[b' '; 9000]).is_err());
    }

    #[test]
    fn origins_and_cross_origin_follow_configuration() {
        let raw = br#"{"type":"webauthn.get","challenge":"AQID","origin":"https://evil.example"}"#;
        let err = ClientData::parse(raw)
            .unwrap()
            .check(&[CeremonyType::Get], &[1, 2, 3], &rp())
            .unwrap_err();
        assert_eq!(err.field(), "response.clientDataJSON.origin");
        let raw = br#"{"type":"webauthn.get","challenge":"AQID","origin":"https://example.org","crossOrigin":true,"topOrigin":"https://example.com"}"#;
        let cd = ClientData::parse(raw).unwrap();
        assert!(cd.check(&[CeremonyType::Get], &[1, 2, 3], &rp()).is_err());
        let mut allowing = rp();
        allowing.allow_cross_origin = true;
        cd.check(&[CeremonyType::Get], &[1, 2, 3], &allowing)
            .unwrap();
        allowing.top_origins = vec!["https://other.example".into()];
        assert!(
            cd.check(&[CeremonyType::Get], &[1, 2, 3], &allowing)
                .is_err()
        );
    }
}
