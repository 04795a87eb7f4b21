//! Authenticator data (WebAuthn §6.1): rpIdHash, flags, signCount, attested
//! credential data and extensions, with every length checked before use and
//! no byte left over.

use super::cose_key::CredentialPublicKey;
use super::{Error, RelyingParty, UserVerification, limits};

const FIELD: &str = "authenticatorData";

/// The flags byte, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Flags {
    /// User present (bit 0).
    pub up: bool,
    /// User verified (bit 2).
    pub uv: bool,
    /// Backup eligible (bit 3).
    pub be: bool,
    /// Backed up (bit 4).
    pub bs: bool,
    /// Attested credential data included (bit 6).
    pub at: bool,
    /// Extension data included (bit 7).
    pub ed: bool,
}

impl Flags {
    pub fn from_byte(b: u8) -> Flags {
        Flags {
            up: b & 0x01 != 0,
            uv: b & 0x04 != 0,
            be: b & 0x08 != 0,
            bs: b & 0x10 != 0,
            at: b & 0x40 != 0,
            ed: b & 0x80 != 0,
        }
    }
}

/// Attested credential data (§6.5.1).
#[derive(Clone, Debug)]
pub struct AttestedCredential {
    pub aaguid: [u8; 16],
    pub credential_id: Vec<u8>,
    pub public_key: CredentialPublicKey,
}

/// Parsed authenticator data. `raw` keeps the exact bytes: signatures cover them.
#[derive(Clone, Debug)]
pub struct AuthenticatorData {
    pub raw: Vec<u8>,
    pub rp_id_hash: [u8; 32],
    pub flags: Flags,
    pub sign_count: u32,
    pub attested: Option<AttestedCredential>,
    /// The extensions CBOR map, as its exact bytes.
    pub extensions: Option<Vec<u8>>,
}

impl AuthenticatorData {
    /// Parses `raw` in full. `field` is the JSON path it came from, used in errors.
    pub fn parse(raw: &[u8], field: &str) -> Result<AuthenticatorData, Error> {
        let field = if field.is_empty() { FIELD } else { field };
        if raw.is_empty() {
            return Err(Error::Empty {
                field: field.to_string(),
            });
        }
        if raw.len() > limits::AUTHENTICATOR_DATA {
            return Err(Error::TooLarge {
                field: field.to_string(),
                limit: limits::AUTHENTICATOR_DATA,
            });
        }
        if raw.len() < 37 {
            return Err(Error::malformed(
                field,
                format!("{} bytes, at least 37 needed", raw.len()),
            ));
        }
        let mut rp_id_hash = [0u8; 32];
        rp_id_hash.copy_from_slice(&raw[..32]);
        let flags = Flags::from_byte(raw[32]);
        let sign_count = u32::from_be_bytes([raw[33], raw[34], raw[35], raw[36]]);
        let mut rest = &raw[37..];

        let attested = if flags.at {
            if rest.len() < 18 {
                return Err(Error::malformed(
                    format!("{field}.attestedCredentialData"),
                    "AT flag set but attested credential data is truncated",
                ));
            }
            let mut aaguid = [0u8; 16];
            aaguid.copy_from_slice(&rest[..16]);
            let id_len = u16::from_be_bytes([rest[16], rest[17]]) as usize;
            rest = &rest[18..];
            if id_len == 0 {
                return Err(Error::Empty {
                    field: format!("{field}.attestedCredentialData.credentialId"),
                });
            }
            if id_len > limits::CREDENTIAL_ID {
                return Err(Error::TooLarge {
                    field: format!("{field}.attestedCredentialData.credentialId"),
                    limit: limits::CREDENTIAL_ID,
                });
            }
            if rest.len() < id_len {
                return Err(Error::malformed(
                    format!("{field}.attestedCredentialData.credentialId"),
                    "length exceeds the data",
                ));
            }
            let credential_id = rest[..id_len].to_vec();
            rest = &rest[id_len..];
            let key_len = cbor_item_len(
                rest,
                &format!("{field}.attestedCredentialData.credentialPublicKey"),
            )?;
            let public_key = CredentialPublicKey::from_cose(
                &rest[..key_len],
                &format!("{field}.attestedCredentialData.credentialPublicKey"),
            )?;
            rest = &rest[key_len..];
            Some(AttestedCredential {
                aaguid,
                credential_id,
                public_key,
            })
        } else {
            None
        };

        let extensions = if flags.ed {
            let len = cbor_item_len(rest, &format!("{field}.extensions"))?;
            let bytes = &rest[..len];
            match ciborium::de::from_reader::<ciborium::Value, _>(bytes) {
                Ok(ciborium::Value::Map(_)) => {}
                _ => {
                    return Err(Error::WrongType {
                        field: format!("{field}.extensions"),
                        expected: "a CBOR map",
                    });
                }
            }
            rest = &rest[len..];
            Some(bytes.to_vec())
        } else {
            None
        };

        if !rest.is_empty() {
            return Err(Error::malformed(
                field,
                format!(
                    "{} bytes left over after the {}",
                    rest.len(),
                    if flags.ed {
                        "extensions"
                    } else if flags.at {
                        "attested credential data (AT set without ED, or trailing bytes)"
                    } else {
                        "fixed fields (attested data without the AT flag, or trailing bytes)"
                    }
                ),
            ));
        }
        Ok(AuthenticatorData {
            raw: raw.to_vec(),
            rp_id_hash,
            flags,
            sign_count,
            attested,
            extensions,
        })
    }
}

impl AuthenticatorData {
    /// The checks both ceremonies make (§7.1 steps 13-17, §7.2 steps 15-18):
    /// the rpIdHash, user presence and verification as required, and BS
    /// only with BE.
    pub fn check(
        &self,
        rp: &RelyingParty,
        uv: UserVerification,
        require_up: bool,
        field: &str,
    ) -> Result<(), Error> {
        if self.rp_id_hash != rp.rp_id_hash() {
            return Err(Error::mismatch(
                format!("{field}.rpIdHash"),
                format!("is not SHA-256 of the RP ID {:?}", rp.id),
            ));
        }
        if require_up && !self.flags.up {
            return Err(Error::policy(
                format!("{field}.flags.UP"),
                "user presence is required",
            ));
        }
        if uv == UserVerification::Required && !self.flags.uv {
            return Err(Error::policy(
                format!("{field}.flags.UV"),
                "user verification is required",
            ));
        }
        if self.flags.bs && !self.flags.be {
            return Err(Error::malformed(
                format!("{field}.flags.BS"),
                "backed up (BS) without backup eligibility (BE)",
            ));
        }
        Ok(())
    }
}

/// The length in bytes of the single CBOR data item at the start of `data`.
/// ciborium reads from the slice and advances it, so what it consumed is the
/// item; its recursion limit bounds nesting, and reads past the data fail
/// instead of allocating what a header merely declares.
pub fn cbor_item_len(data: &[u8], field: &str) -> Result<usize, Error> {
    if data.is_empty() {
        return Err(Error::Missing {
            field: field.to_string(),
        });
    }
    let mut reader = data;
    ciborium::de::from_reader_with_recursion_limit::<ciborium::Value, _>(
        &mut reader,
        limits::NESTING,
    )
    .map_err(|e| Error::malformed(field, format!("CBOR: {e}")))?;
    Ok(data.len() - reader.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(flags: u8) -> Vec<u8> {
        let mut v = vec![0u8; 32];
        v.push(flags);
        v.extend_from_slice(&7u32.to_be_bytes());
        v
    }

    #[test]
    fn fixed_fields_and_flags() {
        let d = AuthenticatorData::parse(&base(0x1d), "").unwrap();
        assert!(d.flags.up && d.flags.uv && d.flags.be && d.flags.bs && !d.flags.at);
        assert_eq!(d.sign_count, 7);
    }

    #[test]
    fn rejects_short_leftover_and_flag_disagreement() {
        assert!(matches!(
            AuthenticatorData::parse(&[], ""),
            Err(Error::Empty { .. })
        ));
        assert!(AuthenticatorData::parse(&[0u8; 36], "").is_err());
        let mut extra = base(0x01);
        extra.push(0);
        let e = AuthenticatorData::parse(&extra, "").unwrap_err();
        assert!(e.to_string().contains("left over"), "{e}");
        // AT set without attested data.
        assert!(AuthenticatorData::parse(&base(0x41), "").is_err());
        // ED set with an empty map: accepted; ED with a non-map: refused.
        let mut ed = base(0x81);
        ed.push(0xa0);
        assert!(
            AuthenticatorData::parse(&ed, "")
                .unwrap()
                .extensions
                .is_some()
        );
        let mut ed_bad = base(0x81);
        ed_bad.push(0x01);
        assert!(AuthenticatorData::parse(&ed_bad, "").is_err());
    }

    #[test]
    fn cbor_lengths_are_bounded_by_the_data() {
        // A map claiming 2^32 entries in 10 bytes.
        let lie = [0xbb, 0, 0, 0, 1, 0, 0, 0, 0, 0];
        assert!(cbor_item_len(&lie, "x").is_err());
        // A byte string claiming 2^63 bytes.
        let big = [0x5b, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        assert!(cbor_item_len(&big, "x").is_err());
        // Deep nesting.
        let deep = vec![0x81; 100];
        assert!(cbor_item_len(&deep, "x").is_err());
        assert_eq!(cbor_item_len(&[0xa1, 0x01, 0x02, 0xff], "x").unwrap(), 3);
        assert!(matches!(
            cbor_item_len(&[], "x"),
            Err(Error::Missing { .. })
        ));
    }
}
